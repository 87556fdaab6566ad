//! Adam and AdamW (`ddpm::optim`): both of ddpm's paths (libtorch's fused kernel and the update
//! written out per tensor) against `torch.optim` itself, against each other and against
//! libtorch's C++ optimizers, and the state round trip that exact resume relies on.
//!
//! Every comparison hands the optimizers the *same* gradients. Two networks built alike and fed
//! alike need not produce bit-identical gradients on every CPU (the BLAS and convolution kernels
//! may sum in another order depending on where a tensor lies in memory), and Adam's step
//! `m / (sqrt(v) + eps)` turns the rounding noise of a parameter whose true gradient is about
//! zero (the demo network has such weights) into a step of up to `lr` in either direction: two
//! correct optimizers fed by two networks can then drift apart by a tenth of a step in a few
//! updates. With the gradients shared, what is left is float32 rounding of the same formula
//! in another order of operations: a few units in the last place per step, hence the 1e-6
//! tolerances below (the weights are of order 1 and move by up to 6e-2 in these tests).

use crate::common;

use ddpm::model::{self, Denoiser};
use ddpm::model::{DemoConfig, NetworkConfig};
use ddpm::optim::{Adam, AdamConfig};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

fn small_net(vs: &nn::VarStore) -> Box<dyn Denoiser> {
    let cfg = NetworkConfig::Demo(DemoConfig { channels: vec![4, 8], pe_dim: 8, residual: true, num_classes: 0 });
    model::build(vs, &cfg, [1, 28, 28], 20)
}

fn max_diff(a: &nn::VarStore, b: &nn::VarStore) -> f64 {
    let bv = b.variables();
    a.variables().iter().map(|(k, t)| (t - &bv[k]).abs().max().double_value(&[])).fold(0.0, f64::max)
}

/// Gives `b`'s parameters exactly the gradients `a`'s got (both must have run a backward that
/// reached the same parameters).
fn share_gradients(a: &nn::VarStore, b: &nn::VarStore) {
    let bv = b.variables();
    for (k, pa) in a.variables() {
        let (ga, mut gb) = (pa.grad(), bv[&k].grad());
        assert_eq!(ga.defined(), gb.defined(), "{k}: one network got a gradient, the other none");
        if ga.defined() {
            gb.copy_(&ga);
        }
    }
}

/// Gives `b` exactly `a`'s weights again after a compared step, so that each step starts from the
/// same weights: rounding then cannot compound through the network into the next gradients (nor
/// through coupled weight decay, `g + wd * p`, where it nearly cancels). The moments are left to
/// each optimizer: from the same gradients they stay within rounding of each other.
fn resync_weights(a: &nn::VarStore, b: &mut nn::VarStore) {
    b.copy(a).unwrap();
}

/// `steps` updates of two networks on one batch at the timesteps `t`: both backward, `b` given
/// `a`'s gradients, `opt(false)` steps both optimizers (`opt(true)` drops their gradients
/// first), the weights compared after each step, then `b` given `a`'s weights again.
fn lockstep(
    steps: usize,
    (vs_a, net_a): (&nn::VarStore, &dyn Denoiser),
    (vs_b, net_b): (&mut nn::VarStore, &dyn Denoiser),
    t: &Tensor,
    what: &str,
    mut opt: impl FnMut(bool),
) {
    let xs = Tensor::randn([t.size()[0], 1, 28, 28], (Kind::Float, Device::Cpu));
    for step in 1..=steps {
        opt(true);
        net_a.forward(&xs, t, None).square().mean(Kind::Float).backward();
        net_b.forward(&xs, t, None).square().mean(Kind::Float).backward();
        share_gradients(vs_a, vs_b);
        opt(false);
        let d = max_diff(vs_a, vs_b);
        assert!(d < 1e-6, "{what} weights differ by {d} after step {step}");
        resync_weights(vs_a, vs_b);
    }
}

/// The settings every comparison runs: Adam without and with (coupled, L2) weight decay, AdamW
/// without and with decoupled decay.
const SETTINGS: [(bool, f64); 4] = [(false, 0.0), (false, 0.01), (true, 0.0), (true, 0.05)];

/// Parameters of awkward sizes (37 and 5 are not multiples of a vector register, so the fused
/// kernel's scalar tail runs too), gradients of very different scales, and one parameter (`d`)
/// that never gets a gradient (skipped by both, as PyTorch skips `grad = None`).
const SHAPES: [(&str, &[i64], f64); 4] =
    [("a", &[37], 1.0), ("b", &[8, 3, 3, 3], 1e-3), ("c", &[1], 10.0), ("d", &[5], 0.1)];
const STEPS: i64 = 6;

/// Runs one setting through ddpm's two paths on given gradients and returns the tensors that
/// `scripts/python/adam_reference.py` reads.
fn adam_trajectories(decoupled: bool, wd: f64, lr: f64) -> Vec<(String, Tensor)> {
    tch::manual_seed(11);
    let mut out: Vec<(String, Tensor)> = vec![
        ("cfg.lr".into(), Tensor::from(lr)),
        ("cfg.weight_decay".into(), Tensor::from(wd)),
        ("cfg.decoupled".into(), Tensor::from(decoupled as i64 as f64)),
    ];
    let p0: Vec<Tensor> = SHAPES.iter().map(|(_, s, _)| Tensor::randn(*s, (Kind::Float, Device::Cpu))).collect();
    let grads: Vec<Vec<Option<Tensor>>> = (1..=STEPS)
        .map(|_| {
            SHAPES
                .iter()
                .map(|(n, s, scale)| (*n != "d").then(|| Tensor::randn(*s, (Kind::Float, Device::Cpu)) * *scale))
                .collect()
        })
        .collect();
    for ((n, _, _), p) in SHAPES.iter().zip(&p0) {
        out.push((format!("p0.{n}"), p.copy()));
    }
    for (step, gs) in (1..=STEPS).zip(&grads) {
        for ((n, _, _), g) in SHAPES.iter().zip(gs) {
            if let Some(g) = g {
                out.push((format!("grad.{step}.{n}"), g.copy()));
            }
        }
    }
    for (path, fused) in [("fused", true), ("loop", false)] {
        let vs = nn::VarStore::new(Device::Cpu);
        let params: Vec<Tensor> =
            SHAPES.iter().zip(&p0).map(|((n, s, _), p)| vs.root().var_copy(n, &p.reshape(*s))).collect();
        let mut opt = Adam::new(&vs, lr, AdamConfig { weight_decay: wd, decoupled, fused, ..Default::default() });
        for (step, gs) in (1..=STEPS).zip(&grads) {
            opt.zero_grad();
            // sum(p * g) has gradient g, exactly: the way to hand an optimizer a given gradient.
            let terms: Vec<Tensor> =
                params.iter().zip(gs).filter_map(|(p, g)| g.as_ref().map(|g| (p * g).sum(Kind::Float))).collect();
            Tensor::stack(&terms, 0).sum(Kind::Float).backward();
            opt.step();
            assert_eq!(opt.is_fused(), fused, "the fused kernel fell back on the CPU");
            let state = opt.state();
            for (n, _, _) in SHAPES {
                let p = vs.variables()[n].copy();
                out.push((format!("{path}.{step}.param.{n}"), p));
                for m in ["exp_avg", "exp_avg_sq"] {
                    out.push((format!("{path}.{step}.{m}.{n}"), state[&format!("{m}.{n}")].copy()));
                }
            }
        }
    }
    out
}

#[test]
fn both_adam_paths_follow_torch_optim() {
    let Some(py) = common::venv_python() else { return };
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (decoupled, wd) in SETTINGS {
        let file = dir.path().join(format!("adam-{decoupled}-{wd}.safetensors"));
        Tensor::write_safetensors(&adam_trajectories(decoupled, wd, 1e-2), &file).unwrap();
        files.push(file);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/python/adam_reference.py");
    let out = Command::new(py).arg(&script).args(&files).args(["--tol", "1e-6"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "ddpm's Adam differs from torch.optim:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every setting, both ddpm paths against both PyTorch implementations.
    assert_eq!(text.matches("max diff").count(), SETTINGS.len() * 4, "{text}");
}

#[test]
fn adam_matches_libtorch_adam_and_adamw() {
    let _rng = common::rng_lock();
    for (decoupled, wd) in SETTINGS {
        tch::manual_seed(0);
        let vs_a = nn::VarStore::new(Device::Cpu);
        let net_a = small_net(&vs_a);
        let mut vs_b = nn::VarStore::new(Device::Cpu);
        let net_b = small_net(&vs_b);
        vs_b.copy(&vs_a).unwrap();
        let mut ours = Adam::new(&vs_a, 1e-2, AdamConfig { weight_decay: wd, decoupled, ..Default::default() });
        let mut theirs = if decoupled {
            nn::AdamW { wd, ..Default::default() }.build(&vs_b, 1e-2).unwrap()
        } else {
            nn::Adam { wd, ..Default::default() }.build(&vs_b, 1e-2).unwrap()
        };
        let t = Tensor::from_slice(&[1i64, 5, 9, 19]);
        let what = format!("decoupled={decoupled} wd={wd}: ours and libtorch's");
        lockstep(5, (&vs_a, net_a.as_ref()), (&mut vs_b, net_b.as_ref()), &t, &what, |zero| match zero {
            true => {
                ours.zero_grad();
                theirs.zero_grad();
            }
            false => {
                ours.step();
                theirs.step();
            }
        });
        assert_eq!(ours.step, 5);
    }
}

#[test]
fn fused_adam_equals_the_per_tensor_update_and_skips_parameters_without_gradients() {
    let _rng = common::rng_lock();
    for (decoupled, wd) in SETTINGS {
        tch::manual_seed(3);
        let vs_a = nn::VarStore::new(Device::Cpu);
        let net_a = small_net(&vs_a);
        // A parameter the loss never uses: it gets no gradient and must not move.
        let unused_a = vs_a.root().randn("unused", &[5], 0.0, 1.0);
        let mut vs_b = nn::VarStore::new(Device::Cpu);
        let net_b = small_net(&vs_b);
        let _unused_b = vs_b.root().randn("unused", &[5], 0.0, 1.0);
        vs_b.copy(&vs_a).unwrap();
        let before = unused_a.copy();
        let cfg = AdamConfig { weight_decay: wd, decoupled, ..Default::default() };
        let mut fused = Adam::new(&vs_a, 1e-2, AdamConfig { fused: true, ..cfg });
        let mut plain = Adam::new(&vs_b, 1e-2, AdamConfig { fused: false, ..cfg });
        let t = Tensor::from_slice(&[0i64, 4, 11, 19]);
        let what = format!("decoupled={decoupled} wd={wd}: fused and per-tensor");
        lockstep(6, (&vs_a, net_a.as_ref()), (&mut vs_b, net_b.as_ref()), &t, &what, |zero| match zero {
            true => {
                fused.zero_grad();
                plain.zero_grad();
            }
            false => {
                fused.step();
                plain.step();
            }
        });
        assert!(fused.is_fused(), "the fused kernel fell back on the CPU");
        assert!(!plain.is_fused());
        let moved = (&unused_a - &before).abs().max().double_value(&[]);
        assert_eq!(moved, 0.0, "a parameter without a gradient moved");
        let (sa, sb) = (fused.state(), plain.state());
        for (k, v) in &sa {
            let dm = (v - &sb[k]).abs().max().double_value(&[]);
            assert!(dm < 1e-6, "{k} differs by {dm}");
        }
        assert_eq!(sa["exp_avg_sq.unused"].abs().sum(Kind::Float).double_value(&[]), 0.0);
    }
}

#[test]
fn adam_state_round_trip_continues_identically() {
    let _rng = common::rng_lock();
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = small_net(&vs);
    let mut opt = Adam::new(&vs, 1e-2, AdamConfig::default());
    let xs = Tensor::randn([2, 1, 28, 28], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[3i64, 7]);
    let loss = |n: &dyn Denoiser| n.forward(&xs, &t, None).square().mean(Kind::Float);
    for _ in 0..3 {
        opt.backward_step(&loss(net.as_ref()));
    }
    // A second copy restored from the first's weights and state.
    let mut vs2 = nn::VarStore::new(Device::Cpu);
    let net2 = small_net(&vs2);
    vs2.copy(&vs).unwrap();
    let mut opt2 = Adam::new(&vs2, 1e-2, AdamConfig::default());
    let state: BTreeMap<String, Tensor> = opt.state().into_iter().map(|(k, v)| (k, v.copy())).collect();
    opt2.load_state(&state, opt.step).unwrap();
    for _ in 0..3 {
        opt.backward_step(&loss(net.as_ref()));
        opt2.backward_step(&loss(net2.as_ref()));
    }
    assert_eq!(max_diff(&vs, &vs2), 0.0);
    let mut bad: BTreeMap<String, Tensor> = state.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
    let first = bad.keys().next().unwrap().clone();
    bad.remove(&first);
    assert!(opt2.load_state(&bad, 3).unwrap_err().contains("lacks"));
}
