//! The demo UNet and checkpoints: golden numbers, shapes, the demo's parameter names, a model
//! that must learn, round trips, the fused and channels-last paths equal to the plain one.

use crate::common;

use ddpm::checkpoint::{self, Checkpoint, ModelInfo};
use ddpm::config::Config;
use ddpm::diffusion::{DdpmScheduler, Schedule};
use ddpm::model::{self, embedding::sinusoidal_table};
use ddpm::model::{DemoConfig, NetworkConfig};
use std::collections::BTreeMap;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Reduction, Tensor};

fn net_cfg(residual: bool) -> NetworkConfig {
    NetworkConfig::Demo(DemoConfig { channels: vec![10, 20, 40, 80], pe_dim: 128, residual, num_classes: 0 })
}

/// Reads `../shared/reference/unet_res.<name>.keys.tsv` (name, shape, trainable), or the same
/// list kept in tests/data/ when ../shared is absent.
fn reference_keys(name: &str) -> BTreeMap<String, (Vec<i64>, bool)> {
    let file = format!("unet_res.{name}.keys.tsv");
    let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference").join(&file);
    let local = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(&file);
    let text = std::fs::read_to_string(&shared).or_else(|_| std::fs::read_to_string(&local)).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let shape = f[1].trim_matches(|c| c == '[' || c == ']').split(", ").map(|d| d.parse().unwrap()).collect();
            (f[0].to_string(), (shape, f[2] == "yes"))
        })
        .collect()
}

fn our_keys(shape: [i64; 3]) -> (BTreeMap<String, (Vec<i64>, bool)>, nn::VarStore) {
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = model::build(&vs, &net_cfg(true), shape, 1000);
    let trainable: Vec<Tensor> = vs.trainable_variables();
    let keys = vs
        .variables()
        .into_iter()
        .map(|(k, t)| {
            let tr = trainable.iter().any(|x| x.data_ptr() == t.data_ptr());
            (k, (t.size(), tr))
        })
        .collect();
    (keys, vs)
}

#[test]
fn parameter_names_shapes_and_counts_equal_the_demo_state_dict() {
    for (name, shape, trainable, total) in
        [("mnist", [1, 28, 28], 543_950, 671_950), ("cifar10", [3, 32, 32], 586_256, 714_256)]
    {
        let (ours, vs) = our_keys(shape);
        let want = reference_keys(name);
        assert_eq!(ours, want, "{name}: names, shapes or trainability differ");
        assert_eq!(model::trainable_parameters(&vs), trainable, "{name}");
        let all: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
        assert_eq!(all, total, "{name}");
    }
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = model::build(&vs, &net_cfg(false), [1, 28, 28], 1000);
    assert_eq!(model::trainable_parameters(&vs), 535_320, "the demo's plain UNet");
}

#[test]
fn unet_output_shapes() {
    let _rng = common::rng_lock();
    tch::manual_seed(0);
    for shape in [[1, 28, 28], [3, 32, 32]] {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = model::build(&vs, &net_cfg(true), shape, 1000);
        let xs = Tensor::randn([3, shape[0], shape[1], shape[2]], (Kind::Float, Device::Cpu));
        let before = xs.copy();
        let out = tch::no_grad(|| net.forward(&xs, &Tensor::from_slice(&[0i64, 500, 999]), None));
        assert_eq!(out.size(), vec![3, shape[0], shape[1], shape[2]]);
        assert!(xs.equal(&before), "forward must not modify its input");
    }
}

/// Both networks at every image size the config accepts, in both orientations: the output has
/// the input's shape (the demo network pads its upsampled maps to the skip's H and W; on
/// non-square images of odd halvings these differ), and a size a network cannot take is a
/// config error that names the sizes.
#[test]
fn both_networks_take_every_size_the_config_accepts_in_both_orientations() {
    use ddpm::model::UnetConfig;
    let _rng = common::rng_lock();
    tch::manual_seed(0);
    let demo =
        NetworkConfig::Demo(DemoConfig { channels: vec![4, 8, 8, 8], pe_dim: 8, residual: true, num_classes: 0 });
    let unet = NetworkConfig::Unet(UnetConfig {
        base_channels: 8,
        channel_mults: vec![1, 2, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![],
        groups: 4,
        dropout: 0.0,
        ..Default::default()
    });
    let (mut built, mut refused) = (0, 0);
    for (h, w) in [(40, 28), (28, 28), (33, 17), (13, 29), (64, 8), (9, 10), (7, 5), (3, 12), (2, 16), (1, 1)] {
        for (h, w) in [(h, w), (w, h)] {
            for (cfg, c) in [(&demo, 1), (&unet, 3)] {
                let shape = [c, h, w];
                if let Err(m) = cfg.validate(shape) {
                    assert!(m.contains(&format!("{h}x{w}")), "{} refuses {h}x{w} without naming it: {m}", cfg.kind());
                    refused += 1;
                    continue;
                }
                let vs = nn::VarStore::new(Device::Cpu);
                let net = model::build(&vs, cfg, shape, 1000);
                let xs = Tensor::randn([2, c, h, w], (Kind::Float, Device::Cpu));
                let out = tch::no_grad(|| net.forward(&xs, &Tensor::from_slice(&[3i64, 700]), None));
                assert_eq!(out.size(), vec![2, c, h, w], "{} at {h}x{w}", cfg.kind());
                built += 1;
            }
        }
    }
    // The grid reaches both outcomes: most sizes build, the tiniest are refused by the demo's
    // three halvings.
    assert!(built >= 30 && refused >= 2, "built {built}, refused {refused}");
}

#[test]
fn sinusoidal_table_golden_values() {
    let t = sinusoidal_table(1000, 128);
    assert_eq!(t.size(), vec![1000, 128]);
    let at = |r: i64, c: i64| t.double_value(&[r, c]);
    assert_eq!(at(0, 0), 0.0); // sin(0)
    assert_eq!(at(0, 1), 1.0); // cos(0)
    assert!((at(1, 0) - 1f64.sin()).abs() < 1e-6);
    assert!((at(1, 1) - 1f64.cos()).abs() < 1e-6);
    // Column 2i = sin(t / 10000^(2i/128)); t = 500, i = 10.
    let arg = 500.0 / 10000f64.powf(20.0 / 128.0);
    assert!((at(500, 20) - arg.sin()).abs() < 1e-4);
    assert!((at(500, 21) - arg.cos()).abs() < 1e-4);
}

#[test]
fn a_small_model_overfits_a_fixed_batch() {
    let _rng = common::rng_lock();
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = NetworkConfig::Demo(DemoConfig { channels: vec![8, 16], pe_dim: 16, residual: true, num_classes: 0 });
    let net = model::build(&vs, &cfg, [1, 28, 28], 100);
    let ddpm = DdpmScheduler::new(Schedule::linear(100, 1e-4, 0.02), Device::Cpu);
    let mut opt = nn::Adam::default().build(&vs, 3e-3).unwrap();
    let x0 = (Tensor::rand([8, 1, 28, 28], (Kind::Float, Device::Cpu)) * 2.0 - 1.0).set_requires_grad(false);
    let t = Tensor::randint(100, [8], (Kind::Int64, Device::Cpu));
    let noise = x0.randn_like();
    let xt = ddpm.add_noise(&x0, &noise, &t);
    let mut losses = Vec::new();
    for _ in 0..150 {
        let loss = net.forward(&xt, &t, None).mse_loss(&noise, Reduction::Mean);
        opt.backward_step(&loss);
        losses.push(loss.double_value(&[]));
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(first > 0.5, "initial loss {first}");
    assert!(last < first / 10.0, "loss only fell from {first} to {last}");
}

#[test]
fn checkpoint_round_trip_gives_identical_output_and_metadata() {
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ck.safetensors");
    tch::manual_seed(5);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = Config {
        network: NetworkConfig::Demo(DemoConfig {
            channels: vec![6, 12, 24],
            pe_dim: 32,
            residual: true,
            num_classes: 0,
        }),
        ddpm: ddpm::diffusion::ScheduleConfig { n_steps: 50, ..Default::default() },
        ..Default::default()
    };
    let net = model::build(&vs, &cfg.network, [1, 28, 28], 50);
    let mut info = ModelInfo::from_config(&cfg);
    info.epoch = 3;
    info.step = 77;
    checkpoint::save(&vs, &info, &path).unwrap();

    let ck = Checkpoint::read(&path).unwrap();
    assert_eq!(ck.info.as_ref(), Some(&info));
    let mut rebuilt = ck.info.as_ref().unwrap().spec.build(Device::Cpu, false);
    ck.load_into(&mut rebuilt.vs).unwrap();
    let net2 = &rebuilt.net;
    let xs = Tensor::randn([2, 1, 28, 28], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[3i64, 40]);
    let (a, b) = tch::no_grad(|| (net.forward(&xs, &t, None), net2.forward(&xs, &t, None)));
    assert!(a.equal(&b), "outputs differ after a round trip");

    // Another architecture: the first tensor that does not fit is named with both shapes.
    let mut vs3 = nn::VarStore::new(Device::Cpu);
    let _n3 = model::build(&vs3, &net_cfg(true), [1, 28, 28], 50);
    let e = format!("{:#}", ck.load_into(&mut vs3).unwrap_err());
    assert!(e.contains("ck.safetensors") && e.contains("shape") && e.contains("expects"), "{e}");

    // Truncated and foreign files are refused with the path named.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = format!("{:#}", Checkpoint::read(&path).err().unwrap());
    assert!(e.contains("ck.safetensors") && e.contains("safetensors"), "{e}");
    std::fs::write(&path, b"PK\x03\x04 not a checkpoint").unwrap();
    assert!(Checkpoint::read(&path).is_err());
}

#[test]
fn rotation_keeps_the_newest_epochs() {
    // Each epoch has its weights, EMA and (for the test) a state companion; K epochs are kept
    // whole, whatever the file count.
    for keep in [0usize, 1, 3] {
        let dir = tempfile::tempdir().unwrap();
        let ck = checkpoint::checkpoint_dir(dir.path());
        std::fs::create_dir_all(&ck).unwrap();
        for e in 8..=12 {
            let w = checkpoint::epoch_path(dir.path(), e);
            std::fs::write(&w, b"x").unwrap();
            std::fs::write(checkpoint::companion(&w, "ema"), b"x").unwrap();
            std::fs::write(checkpoint::companion(&w, "state"), b"x").unwrap();
        }
        std::fs::write(checkpoint::latest_path(dir.path()), b"x").unwrap();
        std::fs::write(ck.join("notes.txt"), b"x").unwrap();
        checkpoint::rotate(dir.path(), keep).unwrap();
        let mut left: Vec<String> =
            std::fs::read_dir(&ck).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        let mut want: Vec<String> = (13 - keep as i64..=12)
            .flat_map(|e| ["safetensors", "ema.safetensors", "state.safetensors"].map(|x| format!("epoch-{e:04}.{x}")))
            .collect();
        want.extend(["latest.safetensors".to_string(), "notes.txt".to_string()]);
        want.sort();
        assert_eq!(left, want, "keep {keep}");
    }
}

/// `sample.freeze`: the demo network (plain and residual blocks, a 1x1 residual conv where the
/// channels change) gives the same output through the oneDNN-fused calls as through the plain
/// ones, and the fused calls are taken only where no gradient is recorded.
#[test]
fn fused_inference_equals_the_plain_network() {
    let _lock = common::rng_lock();
    for residual in [true, false] {
        tch::manual_seed(5);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = model::build(&vs, &net_cfg(residual), [1, 28, 28], 1000);
        let x = model::channels_last(&Tensor::randn([6, 1, 28, 28], (Kind::Float, Device::Cpu)));
        let t = Tensor::from_slice(&[0i64, 10, 200, 500, 900, 999]);
        // With gradients recorded: the plain path.
        let before = model::fused::calls();
        let with_grad = net.forward(&x, &t, None).detach();
        assert_eq!(model::fused::calls(), before, "a recorded forward took the fused path");
        let _guard = tch::no_grad_guard();
        model::fused::set_enabled(false);
        let plain = net.forward(&x, &t, None);
        assert_eq!(model::fused::calls(), before);
        model::fused::set_enabled(true);
        let fused = net.forward(&x, &t, None);
        // 14 blocks of two or three fused calls each.
        assert!(model::fused::calls() >= before + 28, "the fused path was not taken");
        let diff = (&fused - &plain).abs().max().double_value(&[]);
        assert!(diff <= 1e-5, "residual {residual}: fused and plain differ by {diff}");
        assert!((&with_grad - &plain).abs().max().double_value(&[]) <= 1e-5);
        assert!(plain.abs().max().double_value(&[]) > 1e-3, "a trivial output proves nothing");
    }
}

/// The demo blocks' LayerNorm on channels-last activations normalises the NHWC view in place of
/// copying to NCHW: the output and every parameter's gradient equal those of the same input in
/// NCHW, with LayerNorm weights made non-uniform so that a wrong permutation shows.
#[test]
fn channels_last_layer_norm_equals_the_nchw_one() {
    let _lock = common::rng_lock();
    tch::manual_seed(11);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = model::build(&vs, &net_cfg(true), [1, 28, 28], 1000);
    tch::no_grad(|| {
        for (name, mut v) in vs.variables() {
            if name.contains(".ln.") {
                let r = v.randn_like() * 0.5 + 1.0;
                v.copy_(&r);
            }
        }
    });
    let x = Tensor::randn([4, 1, 28, 28], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[3i64, 300, 600, 900]);
    let run = |input: &Tensor| {
        for v in vs.trainable_variables() {
            ddpm::optim::reset_grad(&v);
        }
        let out = net.forward(input, &t, None);
        out.square().mean(Kind::Float).backward();
        let mut grads: Vec<(String, Tensor)> =
            model::trainable_sorted(&vs).into_iter().map(|(k, v)| (k, v.grad().copy())).collect();
        grads.sort_by(|a, b| a.0.cmp(&b.0));
        (out.detach().contiguous(), grads)
    };
    let (plain, plain_grads) = run(&x);
    // Channels-last weights make every activation channels-last, as training runs.
    model::vs_to_channels_last(&vs);
    let (nhwc, nhwc_grads) = run(&model::channels_last(&x));
    let diff = (&nhwc - &plain).abs().max().double_value(&[]);
    assert!(diff <= 1e-5, "outputs differ by {diff}");
    let mut ln_grads = 0;
    for ((name, a), (_, b)) in plain_grads.iter().zip(&nhwc_grads) {
        let scale = a.abs().max().double_value(&[]).max(1e-3);
        let d = (a - b).abs().max().double_value(&[]);
        assert!(d <= 1e-4 * scale, "{name}: gradients differ by {d} (scale {scale})");
        ln_grads += name.contains(".ln.") as i32;
    }
    assert!(ln_grads >= 28, "only {ln_grads} LayerNorm gradients compared");
}
