//! Noise schedules, computed once in f64 on the host: the linear betas of Ho et al. 2020
//! (sec. 4) and the cosine alpha-bar of Nichol & Dhariwal 2021 (eq. 17).

use serde::{Deserialize, Serialize};

crate::choice! {
    /// `ddpm.schedule`.
    pub enum BetaSchedule {
        /// `betas = linspace(min_beta, max_beta, n_steps)` (the paper's and the demo's).
        Linear = "linear",
        /// `abar(t) = f(t) / f(0)`, `f(t) = cos^2((t / T + s) / (1 + s) pi / 2)`, s = 0.008, betas
        /// clipped at 0.999 (improved-diffusion's `betas_for_alpha_bar`).
        Cosine = "cosine",
    }
}

/// The `ddpm:` section of options.yml: the schedule's kind, length and (linear) ends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    /// `linear` or `cosine` (checkpoints without it are linear).
    pub schedule: BetaSchedule,
    /// Diffusion steps T.
    pub n_steps: i64,
    /// Linear: beta_1.
    pub min_beta: f64,
    /// Linear: beta_T.
    pub max_beta: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self { schedule: BetaSchedule::Linear, n_steps: 1000, min_beta: 1e-4, max_beta: 0.02 }
    }
}

impl ScheduleConfig {
    /// The schedule these settings describe.
    pub fn build(&self) -> Schedule {
        match self.schedule {
            BetaSchedule::Linear => Schedule::linear(self.n_steps, self.min_beta, self.max_beta),
            BetaSchedule::Cosine => Schedule::cosine(self.n_steps, 0.008, 0.999),
        }
    }

    /// A one-line description for logs and reports.
    pub fn describe(&self) -> String {
        match self.schedule {
            BetaSchedule::Linear => {
                format!("linear betas {}..{} over {} steps", self.min_beta, self.max_beta, self.n_steps)
            }
            BetaSchedule::Cosine => format!("cosine (s = 0.008) over {} steps", self.n_steps),
        }
    }

    /// Checks the values; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.n_steps < 1 {
            return Err(format!("ddpm.n_steps = {} is not allowed: n_steps >= 1", self.n_steps));
        }
        let linear = self.schedule == BetaSchedule::Linear;
        if linear && !(self.min_beta > 0.0 && self.min_beta < self.max_beta && self.max_beta < 1.0) {
            return Err(format!(
                "ddpm.min_beta/max_beta = {}/{} is not allowed: 0 < min_beta < max_beta < 1",
                self.min_beta, self.max_beta
            ));
        }
        Ok(())
    }
}

/// `betas`, `alphas = 1 - betas`, `alphas_cumprod = cumprod(alphas)`.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub betas: Vec<f64>,
    pub alphas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
}

impl Schedule {
    /// `betas = linspace(min_beta, max_beta, n_steps)`.
    pub fn linear(n_steps: i64, min_beta: f64, max_beta: f64) -> Self {
        let n = n_steps.max(1) as usize;
        let betas: Vec<f64> = (0..n)
            .map(|i| if n == 1 { min_beta } else { min_beta + (max_beta - min_beta) * i as f64 / (n - 1) as f64 })
            .collect();
        Self::from_betas(betas)
    }

    /// Nichol & Dhariwal's cosine schedule: `beta_i = min(1 - abar((i + 1) / T) / abar(i / T),
    /// max_beta)` with `abar(t) = cos^2((t + s) / (1 + s) pi / 2)` (the ratio makes the f(0)
    /// normalisation cancel). The clip keeps the last step's `beta` below 1, so `alphas` and
    /// `alphas_cumprod` stay positive and every reverse-step term finite.
    pub fn cosine(n_steps: i64, s: f64, max_beta: f64) -> Self {
        let n = n_steps.max(1) as usize;
        let f = |t: f64| ((t + s) / (1.0 + s) * std::f64::consts::FRAC_PI_2).cos().powi(2);
        let betas =
            (0..n).map(|i| (1.0 - f((i + 1) as f64 / n as f64) / f(i as f64 / n as f64)).min(max_beta)).collect();
        Self::from_betas(betas)
    }

    fn from_betas(betas: Vec<f64>) -> Self {
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

    /// Golden values (improved-diffusion's formula, NumPy float64):
    /// ```python
    /// f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    /// betas = np.array([min(1 - f((i + 1) / 1000) / f(i / 1000), 0.999) for i in range(1000)])
    /// ab = np.cumprod(1 - betas)
    /// betas[0], ab[0], ab[499], ab[998], ab[999], betas[999]
    /// # 4.128422482196914e-05 0.999958715775178 0.4938435904406382 2.4287669070348544e-06
    /// # 2.4287669070348567e-09 0.999
    /// ```
    #[test]
    fn cosine_golden_numbers_and_a_finite_last_step() {
        let s = Schedule::cosine(1000, 0.008, 0.999);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1e-300) + 1e-18;
        assert!(close(s.betas[0], 4.128422482196914e-05), "{}", s.betas[0]);
        assert!(close(s.alphas_cumprod[0], 0.999958715775178));
        assert!((s.alphas_cumprod[499] - 0.4938435904406382).abs() < 1e-12);
        assert!((s.alphas_cumprod[998] / 2.4287669070348544e-06 - 1.0).abs() < 1e-9);
        assert!((s.alphas_cumprod[999] / 2.4287669070348567e-09 - 1.0).abs() < 1e-9);
        assert_eq!(s.betas[999], 0.999);
        for t in 0..1000 {
            let ab = s.alphas_cumprod[t];
            let terms = [1.0 / ab.sqrt(), (1.0 / ab - 1.0).sqrt(), s.posterior_variance(t), s.step_variance(t, true)];
            assert!(terms.iter().all(|x| x.is_finite()), "t = {t}: {terms:?}");
        }
        // The config builds it; linear stays the default and ignores nothing it used before.
        let cfg = ScheduleConfig { schedule: BetaSchedule::Cosine, ..Default::default() };
        assert_eq!(cfg.build().betas, s.betas);
        assert_eq!(ScheduleConfig::default().build().betas, Schedule::linear(1000, 1e-4, 0.02).betas);
        // Old checkpoints' metadata (no `schedule`) reads as linear.
        let old: ScheduleConfig =
            serde_json::from_str(r#"{"n_steps": 50, "min_beta": 0.001, "max_beta": 0.03}"#).unwrap();
        assert_eq!(old.schedule, BetaSchedule::Linear);
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
