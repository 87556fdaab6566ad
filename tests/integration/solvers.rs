//! DPM-Solver++(2M): its first-order case is DDIM with eta 0 step for step, and on data whose
//! score is known in closed form it follows the probability-flow ODE more closely than DDIM
//! with the same number of steps. Also through the binary.

use crate::common;
use ddpm::diffusion::ddim::{self, Spacing};
use ddpm::diffusion::ddpm::StepOptions;
use ddpm::diffusion::dpm_solver::DpmSolverPP;
use ddpm::diffusion::reverse::{self, ReverseProcess, Sampler};
use ddpm::diffusion::{DdpmScheduler, Schedule};
use ddpm::model::{self, DemoConfig, Denoiser, NetworkConfig};
use tch::{nn, Device, Kind, Tensor};

fn process(sampler: Sampler) -> ReverseProcess {
    ReverseProcess {
        sampler,
        opts: StepOptions { simple_var: true, clip_x0: false },
        guidance: 1.0,
        bf16: false,
        cuda_graphs: false,
    }
}

#[test]
fn first_order_dpm_solver_is_ddim_with_eta_zero_step_for_step() {
    let _rng = common::rng_lock();
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = NetworkConfig::Demo(DemoConfig { channels: vec![4, 8], pe_dim: 8, residual: true, num_classes: 0 });
    let net = model::build(&vs, &cfg, [1, 28, 28], 100);
    let schedule = Schedule::linear(100, 1e-4, 0.02);
    let _g = tch::no_grad_guard();
    for clip in [false, true] {
        let mut first = DpmSolverPP::new(1);
        let mut second = DpmSolverPP::new(2);
        let mut x = Tensor::randn([3, 1, 28, 28], (Kind::Float, Device::Cpu));
        let mut y = x.copy();
        let path = [(99, Some(80)), (80, Some(51)), (51, Some(20)), (20, Some(3)), (3, None)];
        for (t, prev) in path {
            let tt = Tensor::full([3], t as i64, (Kind::Int64, Device::Cpu));
            let eps = net.forward(&x, &tt, None);
            let dpm = first.step(&schedule, &eps, &x, (t, prev), clip);
            let z = x.zeros_like();
            let want = ddim::step(&schedule, &eps, &x, (t, prev), &z, 0.0, clip);
            let d = (&dpm - &want).abs().max().double_value(&[]);
            assert!(d < 1e-4, "clip={clip} t={t}: {d}");
            // The second order changes every step after the first (but not the last).
            let eps_y = net.forward(&y, &tt, None);
            let y_next = second.step(&schedule, &eps_y, &y, (t, prev), clip);
            if t != 99 && prev.is_some() {
                assert!(
                    (&y_next - ddim::step(&schedule, &eps_y, &y, (t, prev), &z, 0.0, clip))
                        .abs()
                        .max()
                        .double_value(&[])
                        > 1e-4
                );
            }
            (x, y) = (dpm, y_next);
        }
    }
}

/// Data ~ N(mu, s^2) per pixel: `x_t ~ N(alpha mu, alpha^2 s^2 + sigma^2)` and the exact noise
/// prediction is `E[eps | x_t] = sigma (x_t - alpha mu) / (alpha^2 s^2 + sigma^2)`.
struct GaussianData {
    alphas_cumprod: Vec<f64>,
    mu: f64,
    s: f64,
}

impl Denoiser for GaussianData {
    fn forward(&self, xs: &Tensor, t: &Tensor, _labels: Option<&Tensor>) -> Tensor {
        let abar = self.alphas_cumprod[t.int64_value(&[0]) as usize];
        let (alpha, sigma) = (abar.sqrt(), (1.0 - abar).sqrt());
        (xs - alpha * self.mu) * (sigma / (alpha * alpha * self.s * self.s + sigma * sigma))
    }

    fn num_classes(&self) -> i64 {
        0
    }
}

#[test]
fn dpm_solver_follows_the_exact_ode_closer_than_ddim() {
    let _rng = common::rng_lock();
    tch::manual_seed(11);
    let schedule = Schedule::linear(1000, 1e-4, 0.02);
    let (mu, s) = (0.3, 0.5);
    let net = GaussianData { alphas_cumprod: schedule.alphas_cumprod.clone(), mu, s };
    let ddpm = DdpmScheduler::new(schedule.clone(), Device::Cpu);
    let x_top = Tensor::randn([512, 1, 4, 4], (Kind::Float, Device::Cpu));
    // The probability-flow ODE keeps (x_t - alpha_t mu) / sqrt(alpha_t^2 s^2 + sigma_t^2): its
    // solution at t = 0 from x at t = 999.
    let at = |t: usize| (schedule.alphas_cumprod[t].sqrt(), (1.0 - schedule.alphas_cumprod[t]).sqrt());
    let (a_top, s_top) = at(999);
    let z = (&x_top - a_top * mu) / (a_top * a_top * s * s + s_top * s_top).sqrt();
    let (a0, s0) = at(0);
    let x_t0 = &z * (a0 * a0 * s * s + s0 * s0).sqrt() + a0 * mu;
    // Both solvers end with the predicted x0 at t = 0, the posterior mean there.
    let exact = (&x_t0 - net.forward(&x_t0, &Tensor::from_slice(&[0i64]), None) * s0) / a0;
    let err = |s: Sampler| {
        let x = reverse::sample(&net, &ddpm, x_top.copy(), None, &process(s), |_, _, _| {});
        (x - &exact).abs().mean(Kind::Float).double_value(&[])
    };
    for steps in [10, 20] {
        let ddim = err(Sampler::Ddim { steps, eta: 0.0, spacing: Spacing::Uniform });
        let dpm = err(Sampler::DpmSolverPP { steps, spacing: Spacing::Uniform, order: 2 });
        // Measured: 10 steps 7.7e-2 vs 1.1e-1, 20 steps 1.8e-2 vs 5.5e-2.
        assert!(dpm < 0.8 * ddim, "{steps} steps: DPM-Solver++ error {dpm}, DDIM {ddim}");
        println!("{steps} steps: mean |error| DDIM {ddim:.2e}, DPM-Solver++(2M) {dpm:.2e}");
    }
    // Many steps converge on the exact solution.
    assert!(err(Sampler::DpmSolverPP { steps: 200, spacing: Spacing::Uniform, order: 2 }) < 1e-3);
}

#[test]
fn sample_with_dpm_solver_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_mnist(&dir.path().join("data"), 32);
    let cfg = common::tiny_config(dir.path());
    let cfg = cfg.to_str().unwrap();
    let out = common::ddpm(dir.path(), &["train", "--config", cfg, "--max-steps", "2"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let out = common::ddpm(dir.path(), &["sample", "--config", cfg, "--sampler", "dpm-solver++", "--steps", "8"]);
    let err = common::stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("with dpm-solver++ in 8 steps"), "{err}");
    // Without --steps the solver takes its usual 20, capped by this 20-step schedule.
    let out = common::ddpm(dir.path(), &["sample", "--config", cfg, "--sampler", "dpm-solver++"]);
    assert!(common::stderr(&out).contains("in 20 steps"), "{}", common::stderr(&out));
    assert!(image::open(dir.path().join("run/samples.png")).is_ok());
}
