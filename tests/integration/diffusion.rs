//! The diffusion maths: the forward process and the DDPM reverse step against their closed
//! forms, DDIM, classifier-free guidance, and the EMA update.

use crate::common;

use ddpm::diffusion::ddim::{self, Spacing};
use ddpm::diffusion::ddpm::StepOptions;
use ddpm::diffusion::reverse::{self, ReverseProcess, Sampler};
use ddpm::diffusion::{DdpmScheduler, Schedule};
use ddpm::ema::Ema;
use ddpm::model::{self, Denoiser};
use ddpm::model::{DemoConfig, NetworkConfig};
use tch::{nn, Device, Kind, Tensor};

fn small_net(vs: &nn::VarStore, classes: i64) -> Box<dyn Denoiser> {
    let cfg = NetworkConfig::Demo(DemoConfig { channels: vec![4, 8], pe_dim: 8, residual: true, num_classes: classes });
    model::build(vs, &cfg, [1, 28, 28], 20)
}

#[test]
fn ema_update_exact_numbers_with_warm_up() {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut p = vs.root().zeros("w", &[2]);
    let mut evs = nn::VarStore::new(Device::Cpu);
    let _w = evs.root().zeros("w", &[2]);
    let mut ema = Ema::new(&vs, &mut evs, 0.9);
    // Warm-up: d_0 = min(0.9, 1/10) = 0.1, d_1 = 2/11, d_20 = min(0.9, 21/30 = 0.7) = 0.7,
    // d_1000 = 0.9.
    assert!((ema.decay_at(0) - 0.1).abs() < 1e-12);
    assert!((ema.decay_at(1) - 2.0 / 11.0).abs() < 1e-12);
    assert!((ema.decay_at(20) - 0.7).abs() < 1e-12);
    assert_eq!(ema.decay_at(1000), 0.9);
    tch::no_grad(|| p.copy_(&Tensor::from_slice(&[1.0f32, -2.0])));
    ema.update(0); // ema = 0 + (1 - 0.1) (p - 0) = 0.9 p
    let e = evs.variables()["w"].shallow_clone();
    assert!((e.double_value(&[0]) - 0.9).abs() < 1e-6 && (e.double_value(&[1]) + 1.8).abs() < 1e-6);
    ema.update(1000); // ema = 0.9 ema + 0.1 p = 0.81 + 0.1 = 0.91
    assert!((e.double_value(&[0]) - 0.91).abs() < 1e-6, "{}", e.double_value(&[0]));
    assert!((e.double_value(&[1]) + 1.82).abs() < 1e-6);
}

#[test]
fn ddim_with_eta_one_over_all_steps_equals_the_ddpm_fixed_small_step() {
    let _rng = common::rng_lock();
    let ddpm = DdpmScheduler::new(Schedule::linear(1000, 1e-4, 0.02), Device::Cpu);
    tch::manual_seed(2);
    let x = Tensor::randn([3, 1, 4, 4], (Kind::Float, Device::Cpu));
    let eps = Tensor::randn([3, 1, 4, 4], (Kind::Float, Device::Cpu));
    let z = Tensor::randn([3, 1, 4, 4], (Kind::Float, Device::Cpu));
    for t in [999usize, 500, 10, 1] {
        let a = ddpm.step(&eps, t, &x, &z, StepOptions { simple_var: false, clip_x0: false });
        let b = ddim::step(&ddpm.schedule, &eps, &x, (t, Some(t - 1)), &z, 1.0, false);
        let d = (a - b).abs().max().double_value(&[]);
        assert!(d < 1e-4, "t={t}: {d}");
    }
    // The last step (t = 0 -> x0) is the predicted x0 in both.
    let a = ddpm.step(&eps, 0, &x, &z, StepOptions { simple_var: false, clip_x0: false });
    let b = ddim::step(&ddpm.schedule, &eps, &x, (0, None), &z, 1.0, false);
    assert!((a - b).abs().max().double_value(&[]) < 1e-4);
}

/// Strided DDIM steps (t -> prev with prev < t - 1) against DDIM's eq. 12 written out in f64,
/// for eta 0, 0.5 and 1 and with the predicted x0 clipped: at t = 500 an x_t of 0.9 with
/// eps = -0.5 predicts x0 of about 4.9, which the clip brings to 1.
#[test]
fn ddim_strided_steps_match_equation_12() {
    let ddpm = DdpmScheduler::new(Schedule::linear(1000, 1e-4, 0.02), Device::Cpu);
    let s = &ddpm.schedule;
    let one = |v: f64| Tensor::from_slice(&[v as f32]).view([1, 1, 1, 1]);
    let (x, e, z) = (0.9f64, -0.5f64, 1.5f64);
    for (t, prev) in [(999usize, Some(979usize)), (500, Some(480)), (500, Some(0)), (40, None)] {
        for eta in [0.0, 0.5, 1.0] {
            for clip in [false, true] {
                let ab = s.alphas_cumprod[t];
                let abp = prev.map_or(1.0, |p| s.alphas_cumprod[p]);
                let mut x0 = (x - (1.0 - ab).sqrt() * e) / ab.sqrt();
                let mut eps = e;
                if clip {
                    x0 = x0.clamp(-1.0, 1.0);
                    eps = (x - ab.sqrt() * x0) / (1.0 - ab).sqrt();
                }
                let sigma = eta * ((1.0 - abp) / (1.0 - ab)).sqrt() * (1.0 - ab / abp).sqrt();
                let want = abp.sqrt() * x0 + (1.0 - abp - sigma * sigma).sqrt() * eps + sigma * z;
                let got = ddim::step(s, &one(e), &one(x), (t, prev), &one(z), eta, clip).double_value(&[0, 0, 0, 0]);
                assert!(
                    (got - want).abs() < 1e-4 * want.abs().max(1.0),
                    "t={t} prev={prev:?} eta={eta} clip={clip}: {got} vs {want}"
                );
            }
        }
    }
    // The clip matters in this case (x0 4.9 -> 1).
    let step = |clip| ddim::step(s, &one(e), &one(x), (500, Some(480)), &one(z), 0.0, clip).double_value(&[0, 0, 0, 0]);
    assert!((step(true) - step(false)).abs() > 0.1, "{} {}", step(true), step(false));
}

#[test]
fn ddim_eta_zero_is_deterministic_given_the_noise() {
    let _rng = common::rng_lock();
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = small_net(&vs, 0);
    let ddpm = DdpmScheduler::new(Schedule::linear(20, 1e-4, 0.02), Device::Cpu);
    let sc = ReverseProcess {
        sampler: Sampler::Ddim { steps: 5, eta: 0.0, spacing: Spacing::Uniform },
        opts: StepOptions { simple_var: true, clip_x0: false },
        guidance: 1.0,
        bf16: false,
        cuda_graphs: false,
    };
    let noise = Tensor::randn([2, 1, 28, 28], (Kind::Float, Device::Cpu));
    let mut visited = Vec::new();
    tch::manual_seed(10);
    let a = reverse::sample(net.as_ref(), &ddpm, noise.copy(), None, &sc, |_, t, _| visited.push(t));
    tch::manual_seed(99);
    let b = reverse::sample(net.as_ref(), &ddpm, noise.copy(), None, &sc, |_, _, _| {});
    assert!(a.equal(&b), "eta = 0 must not depend on the random generator");
    // round(i * 19 / 4) for i = 4..0.
    assert_eq!(visited, vec![19, 14, 10, 5, 0]);
    let sc1 = ReverseProcess { sampler: Sampler::Ddim { steps: 5, eta: 1.0, spacing: Spacing::Uniform }, ..sc };
    tch::manual_seed(10);
    let c = reverse::sample(net.as_ref(), &ddpm, noise.copy(), None, &sc1, |_, _, _| {});
    tch::manual_seed(99);
    let d = reverse::sample(net.as_ref(), &ddpm, noise, None, &sc1, |_, _, _| {});
    assert!(!c.equal(&d), "eta = 1 draws fresh noise");
}

#[test]
fn guidance_zero_is_unconditional_and_one_is_conditional() {
    let _rng = common::rng_lock();
    tch::manual_seed(4);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = small_net(&vs, 2);
    assert_eq!(net.num_classes(), 2);
    let x = Tensor::randn([3, 1, 28, 28], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[1i64, 10, 19]);
    let y = Tensor::from_slice(&[0i64, 1, 1]);
    let null = Tensor::from_slice(&[2i64, 2, 2]);
    let _g = tch::no_grad_guard();
    let cond = net.forward(&x, &t, Some(&y));
    let uncond = net.forward(&x, &t, Some(&null));
    assert!(!cond.allclose(&uncond, 1e-5, 1e-5, false), "labels must change the prediction");
    assert!(net.forward(&x, &t, None).allclose(&uncond, 1e-6, 1e-6, false), "None = the null class");
    let g0 = reverse::predict_eps(net.as_ref(), &x, &t, Some(&y), 0.0);
    let g1 = reverse::predict_eps(net.as_ref(), &x, &t, Some(&y), 1.0);
    let g3 = reverse::predict_eps(net.as_ref(), &x, &t, Some(&y), 3.0);
    assert!(g0.allclose(&uncond, 1e-5, 1e-5, false));
    assert!(g1.allclose(&cond, 1e-5, 1e-5, false));
    let want = &uncond + (&cond - &uncond) * 3.0;
    assert!(g3.allclose(&want, 1e-4, 1e-4, false));
}

#[test]
fn add_noise_has_the_right_mean_and_variance() {
    let _rng = common::rng_lock();
    tch::manual_seed(1);
    let ddpm = DdpmScheduler::new(Schedule::linear(1000, 1e-4, 0.02), Device::Cpu);
    let n = 20000;
    let x0 = Tensor::full([n, 1, 2, 2], 0.5, (Kind::Float, Device::Cpu));
    let noise = x0.randn_like();
    for t in [0i64, 499, 999] {
        let ts = Tensor::full([n], t, (Kind::Int64, Device::Cpu));
        let xt = ddpm.add_noise(&x0, &noise, &ts);
        let ab = ddpm.schedule.alphas_cumprod[t as usize];
        let mean = xt.mean(Kind::Double).double_value(&[]);
        let var = xt.var(true).double_value(&[]);
        assert!((mean - 0.5 * ab.sqrt()).abs() < 0.02, "t={t}: mean {mean}");
        assert!((var - (1.0 - ab)).abs() < 0.03 * (1.0 - ab) + 1e-4, "t={t}: var {var}");
    }
    // One t per sample: sample 0 at t=0, sample 1 at t=999.
    let x0 = Tensor::ones([2, 1, 1, 1], (Kind::Float, Device::Cpu));
    let z = Tensor::zeros([2, 1, 1, 1], (Kind::Float, Device::Cpu));
    let xt = ddpm.add_noise(&x0, &z, &Tensor::from_slice(&[0i64, 999]));
    assert!((xt.double_value(&[0, 0, 0, 0]) - 0.9999f64.sqrt()).abs() < 1e-6);
    assert!((xt.double_value(&[1, 0, 0, 0]) - 4.0358297653756754e-05f64.sqrt()).abs() < 1e-6);
}

#[test]
fn reverse_step_matches_the_closed_form() {
    let ddpm = DdpmScheduler::new(Schedule::linear(1000, 1e-4, 0.02), Device::Cpu);
    let s = &ddpm.schedule;
    let x = Tensor::from_slice(&[0.3f32]).view([1, 1, 1, 1]);
    let eps = Tensor::from_slice(&[-0.2f32]).view([1, 1, 1, 1]);
    let z = Tensor::from_slice(&[1.5f32]).view([1, 1, 1, 1]);
    for (t, simple) in [(500usize, true), (500, false), (0, true)] {
        let got =
            ddpm.step(&eps, t, &x, &z, StepOptions { simple_var: simple, clip_x0: false }).double_value(&[0, 0, 0, 0]);
        let (a, ab) = (s.alphas[t], s.alphas_cumprod[t]);
        let mean = (0.3 - (1.0 - a) / (1.0 - ab).sqrt() * -0.2) / a.sqrt();
        let var = if t == 0 {
            0.0
        } else if simple {
            s.betas[t]
        } else {
            s.posterior_variance(t)
        };
        let want = mean + var.sqrt() * 1.5;
        assert!((got - want).abs() < 1e-5, "t={t} simple={simple}: {got} vs {want}");
    }
    // clip_x0 with a consistent eps reproduces the posterior mean of the true x0.
    let t = 300;
    let (ab, abp, b, a) = (s.alphas_cumprod[t], s.alphas_cumprod[t - 1], s.betas[t], s.alphas[t]);
    let x0 = 0.4;
    let xt = ab.sqrt() * x0 + (1.0 - ab).sqrt() * -0.2;
    let x = Tensor::from_slice(&[xt as f32]).view([1, 1, 1, 1]);
    let zero = x.zeros_like();
    let got =
        ddpm.step(&eps, t, &x, &zero, StepOptions { simple_var: false, clip_x0: true }).double_value(&[0, 0, 0, 0]);
    let want = abp.sqrt() * b / (1.0 - ab) * x0 + a.sqrt() * (1.0 - abp) / (1.0 - ab) * xt;
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    // A predicted x0 of 1.7 is clamped to 1 before the posterior mean; without the clamp the
    // step lands 0.7 * abp.sqrt() * b / (1 - ab) (about 0.0018) higher.
    let xt = ab.sqrt() * 1.7 + (1.0 - ab).sqrt() * -0.2;
    let x = Tensor::from_slice(&[xt as f32]).view([1, 1, 1, 1]);
    let step = |clip| {
        ddpm.step(&eps, t, &x, &zero, StepOptions { simple_var: false, clip_x0: clip }).double_value(&[0, 0, 0, 0])
    };
    let want = abp.sqrt() * b / (1.0 - ab) * 1.0 + a.sqrt() * (1.0 - abp) / (1.0 - ab) * xt;
    assert!((step(true) - want).abs() < 1e-5, "clipped: {} vs {want}", step(true));
    let unclipped = abp.sqrt() * b / (1.0 - ab) * 1.7 + a.sqrt() * (1.0 - abp) / (1.0 - ab) * xt;
    assert!((step(false) - unclipped).abs() < 1e-5, "unclipped: {} vs {unclipped}", step(false));
    assert!((step(true) - step(false)).abs() > 1e-3, "clipping changed nothing");
}
