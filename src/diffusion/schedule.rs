//! The linear-beta schedule (Ho et al. 2020, sec. 4), computed once in f64 on the host.

use serde::{Deserialize, Serialize};

/// The `ddpm:` section of options.yml: the linear-beta schedule's length and ends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Diffusion steps T.
    pub n_steps: i64,
    /// beta_1.
    pub min_beta: f64,
    /// beta_T.
    pub max_beta: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self { n_steps: 1000, min_beta: 1e-4, max_beta: 0.02 }
    }
}

impl ScheduleConfig {
    /// The schedule these settings describe.
    pub fn build(&self) -> Schedule {
        Schedule::linear(self.n_steps, self.min_beta, self.max_beta)
    }

    /// Checks the values; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.n_steps < 1 {
            return Err(format!("ddpm.n_steps = {} is not allowed: n_steps >= 1", self.n_steps));
        }
        if !(self.min_beta > 0.0 && self.min_beta < self.max_beta && self.max_beta < 1.0) {
            return Err(format!(
                "ddpm.min_beta/max_beta = {}/{} is not allowed: 0 < min_beta < max_beta < 1",
                self.min_beta, self.max_beta
            ));
        }
        Ok(())
    }
}

/// `betas = linspace(min_beta, max_beta, n_steps)`, `alphas = 1 - betas`,
/// `alphas_cumprod = cumprod(alphas)`.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub betas: Vec<f64>,
    pub alphas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
}

impl Schedule {
    pub fn linear(n_steps: i64, min_beta: f64, max_beta: f64) -> Self {
        let n = n_steps.max(1) as usize;
        let betas: Vec<f64> = (0..n)
            .map(|i| if n == 1 { min_beta } else { min_beta + (max_beta - min_beta) * i as f64 / (n - 1) as f64 })
            .collect();
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let alphas_cumprod = alphas
            .iter()
            .scan(1.0, |acc, a| {
                *acc *= a;
                Some(*acc)
            })
            .collect();
        Self { betas, alphas, alphas_cumprod }
    }

    pub fn n_steps(&self) -> usize {
        self.betas.len()
    }

    /// `alpha_bar_{t-1}`, with `alpha_bar_{-1} = 1`.
    pub fn alphas_cumprod_prev(&self, t: usize) -> f64 {
        if t == 0 {
            1.0
        } else {
            self.alphas_cumprod[t - 1]
        }
    }

    /// The posterior ("fixed small") variance `(1 - abar_{t-1}) / (1 - abar_t) * beta_t`
    /// (eq. 7); 0 at t = 0.
    pub fn posterior_variance(&self, t: usize) -> f64 {
        (1.0 - self.alphas_cumprod_prev(t)) / (1.0 - self.alphas_cumprod[t]) * self.betas[t]
    }

    /// The variance added at step t: `beta_t` (the demo's simple_var, "fixed large") or the
    /// posterior variance.
    pub fn step_variance(&self, t: usize, simple_var: bool) -> f64 {
        if simple_var {
            self.betas[t]
        } else {
            self.posterior_variance(t)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden values (PyTorch, float64):
    /// ```python
    /// b = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64); ab = torch.cumprod(1 - b, 0)
    /// ab[0], ab[499], ab[999]  # 0.9999, 0.07858724288177824, 4.0358297653756754e-05
    /// (1 - ab[486]) / (1 - ab[487]) * b[487]  # 0.009791571985690044
    /// ```
    #[test]
    fn schedule_golden_numbers() {
        let s = Schedule::linear(1000, 1e-4, 0.02);
        assert_eq!(s.betas.len(), 1000);
        assert!((s.betas[999] - 0.02).abs() < 1e-15);
        assert!((s.alphas_cumprod[0] - 0.9999).abs() < 1e-15);
        assert!((s.alphas_cumprod[499] - 0.07858724288177824).abs() < 1e-12);
        assert!((s.alphas_cumprod[999] - 4.0358297653756754e-05).abs() < 1e-15);
        assert!((s.posterior_variance(487) - 0.00979).abs() < 1e-5);
        assert!((s.posterior_variance(487) - 0.009791571985690044).abs() < 1e-12);
        assert_eq!(s.posterior_variance(0), 0.0);
        assert_eq!(s.step_variance(487, true), s.betas[487]);
    }

    #[test]
    fn config_validation_names_the_key() {
        assert!(ScheduleConfig::default().validate().is_ok());
        let e = ScheduleConfig { n_steps: 0, ..Default::default() }.validate().unwrap_err();
        assert!(e.contains("ddpm.n_steps = 0"), "{e}");
        let e = ScheduleConfig { min_beta: 0.03, ..Default::default() }.validate().unwrap_err();
        assert!(e.contains("0.03/0.02") && e.contains("min_beta < max_beta"), "{e}");
        assert_eq!(ScheduleConfig { n_steps: 10, ..Default::default() }.build().n_steps(), 10);
    }
}
