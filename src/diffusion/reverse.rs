//! The reverse process as users run it: DDPM ancestral sampling over all steps, DDIM or
//! DPM-Solver++(2M) over a subsequence, with classifier-free guidance for conditional models.

use super::ddim::{self, Spacing};
use super::ddpm::{DdpmScheduler, StepOptions};
use super::dpm_solver::DpmSolverPP;
use crate::model::Denoiser;
use tch::{Kind, Tensor};

crate::choice! {
    /// `sample.sampler`: the reverse process by name.
    pub enum SamplerKind {
        /// Ancestral DDPM over every training step.
        Ddpm = "ddpm",
        /// DDIM over a subsequence of the steps.
        Ddim = "ddim",
        /// DPM-Solver++(2M) over a subsequence of the steps.
        DpmSolverPP = "dpm-solver++" | "dpmsolver++" | "dpm-solver" | "dpmpp",
    }
}

/// Which reverse process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    /// Ancestral DDPM over every training step.
    Ddpm,
    /// DDIM over `steps` timesteps with noise scale `eta`.
    Ddim { steps: usize, eta: f64, spacing: Spacing },
    /// DPM-Solver++ of `order` 2 (2M) or 1 (= DDIM with eta 0) over `steps` timesteps.
    DpmSolverPP { steps: usize, spacing: Spacing, order: usize },
}

/// Everything the reverse process needs besides the network and the noise.
#[derive(Debug, Clone, Copy)]
pub struct ReverseProcess {
    pub sampler: Sampler,
    pub opts: StepOptions,
    /// Classifier-free guidance weight w: `eps_u + w (eps_c - eps_u)`; 1 = purely conditional.
    pub guidance: f64,
    /// Run the network under bfloat16 autocast (where the device runs bf16; fp32 elsewhere).
    pub bf16: bool,
    /// On CUDA, replay the network from CUDA graphs (fp32 only: autocast's weight cache and
    /// graphs do not mix).
    pub cuda_graphs: bool,
}

/// The noise prediction, guided when labels are given and `w != 1`. Both halves are evaluated
/// in one batched forward.
pub fn predict_eps(net: &dyn Denoiser, x: &Tensor, t: &Tensor, labels: Option<&Tensor>, w: f64) -> Tensor {
    match labels {
        None => net.forward(x, t, None),
        Some(y) if w == 1.0 => net.forward(x, t, Some(y)),
        Some(y) => {
            let n = x.size()[0];
            let null = y.full_like(net.num_classes());
            let out =
                net.forward(&Tensor::cat(&[x, x], 0), &Tensor::cat(&[t, t], 0), Some(&Tensor::cat(&[y, &null], 0)));
            let (eps_c, eps_u) = (out.narrow(0, 0, n), out.narrow(0, n, n));
            &eps_u + (eps_c - &eps_u) * w
        }
    }
}

/// The timesteps visited, descending.
pub fn visited_steps(ddpm: &DdpmScheduler, sampler: Sampler) -> Vec<usize> {
    let n = ddpm.schedule.n_steps();
    let mut ts = match sampler {
        Sampler::Ddpm => (0..n).collect(),
        Sampler::Ddim { steps, spacing, .. } => ddim::timesteps(n, steps, spacing),
        // `steps + 1` points spread like DDIM's, the lowest (t = 0) dropped: the last step goes
        // from the lowest visited t to sigma = 0 (diffusers' linspace spacing, final sigma zero).
        Sampler::DpmSolverPP { steps, spacing, .. } => {
            let mut ts = ddim::timesteps(n, (steps + 1).min(n), spacing);
            if ts.len() > steps {
                ts.remove(0);
            }
            ts
        }
    };
    ts.reverse();
    ts
}

/// The reverse process one step at a time: the network, the visited timesteps and the
/// solver's memory (DPM-Solver++'s previous estimate). Edits (image-to-image, inpainting) run
/// their own loops over it.
pub struct Stepper<'a> {
    net: &'a dyn Denoiser,
    ddpm: &'a DdpmScheduler,
    labels: Option<&'a Tensor>,
    cfg: &'a ReverseProcess,
    solver: DpmSolverPP,
    /// The timesteps visited, descending.
    pub ts: Vec<usize>,
    /// Advanced by one at every step (hidden unless set).
    pub bar: indicatif::ProgressBar,
}

impl<'a> Stepper<'a> {
    pub fn new(
        net: &'a dyn Denoiser,
        ddpm: &'a DdpmScheduler,
        labels: Option<&'a Tensor>,
        cfg: &'a ReverseProcess,
    ) -> Self {
        let solver = match cfg.sampler {
            Sampler::DpmSolverPP { order, .. } => DpmSolverPP::new(order),
            _ => DpmSolverPP::new(1),
        };
        let (ts, bar) = (visited_steps(ddpm, cfg.sampler), indicatif::ProgressBar::hidden());
        Stepper { net, ddpm, labels, cfg, solver, ts, bar }
    }

    /// The level after step `i`: the next visited timestep, None past t = 0.
    pub fn prev(&self, i: usize) -> Option<usize> {
        self.ts.get(i + 1).copied()
    }

    /// `x` at timestep `ts[i]` one step down, to [`Stepper::prev`].
    pub fn step(&mut self, i: usize, x: &Tensor) -> Tensor {
        let _guard = tch::no_grad_guard();
        let (t, prev, cfg) = (self.ts[i], self.prev(i), self.cfg);
        let tt = Tensor::full([x.size()[0]], t as i64, (Kind::Int64, x.device()));
        let eps = predict_eps(self.net, x, &tt, self.labels, cfg.guidance);
        self.bar.inc(1);
        match cfg.sampler {
            Sampler::Ddpm => {
                let z = if t > 0 { x.randn_like() } else { x.zeros_like() };
                self.ddpm.step(&eps, t, x, &z, cfg.opts)
            }
            Sampler::Ddim { eta, .. } => {
                let z = if eta > 0.0 && prev.is_some() { x.randn_like() } else { x.zeros_like() };
                ddim::step(&self.ddpm.schedule, &eps, x, (t, prev), &z, eta, cfg.opts.clip_x0)
            }
            Sampler::DpmSolverPP { .. } => self.solver.step(&self.ddpm.schedule, &eps, x, (t, prev), cfg.opts.clip_x0),
        }
    }
}

/// Runs the reverse process from `noise`; `on_step(i, t, &x)` follows each step.
pub fn sample(
    net: &dyn Denoiser,
    ddpm: &DdpmScheduler,
    noise: Tensor,
    labels: Option<&Tensor>,
    cfg: &ReverseProcess,
    mut on_step: impl FnMut(usize, usize, &Tensor),
) -> Tensor {
    let mut stepper = Stepper::new(net, ddpm, labels, cfg);
    let mut x = noise;
    for i in 0..stepper.ts.len() {
        x = stepper.step(i, &x);
        on_step(i, stepper.ts[i], &x);
    }
    x
}
