//! options.yml: every validation rule and its message.

use ddpm::config::Config;
use ddpm::data::DatasetName;
use ddpm::model::{DemoConfig, NetworkConfig};

fn demo(cfg: &Config) -> &DemoConfig {
    match &cfg.network {
        NetworkConfig::Demo(d) => d,
        other => panic!("expected the demo network, got {other:?}"),
    }
}

fn load(yml: &str) -> Result<Config, String> {
    Config::from_yaml_str(yml, "test.yml", &[]).map_err(|e| format!("{e:#}"))
}

fn err(yml: &str) -> String {
    load(yml).expect_err(&format!("expected an error for:\n{yml}"))
}

#[test]
fn shipped_options_yml_parses_to_the_demo_settings() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/options.yml")).unwrap();
    let cfg = load(&text).unwrap();
    assert_eq!(cfg.device, "cuda:0");
    assert_eq!(cfg.dataset.name, DatasetName::Mnist);
    assert_eq!(cfg.ddpm.n_steps, 1000);
    assert_eq!((cfg.ddpm.min_beta, cfg.ddpm.max_beta), (1e-4, 0.02));
    assert_eq!(demo(&cfg).channels, vec![10, 20, 40, 80]);
    assert_eq!(demo(&cfg).pe_dim, 128);
    assert!(demo(&cfg).residual);
    assert_eq!((cfg.train.batch_size, cfg.train.n_epochs, cfg.train.lr), (512, 10, 1e-3));
    assert_eq!(cfg.train.run_dir, std::path::PathBuf::from("runs/mnist"));
    assert_eq!(cfg.sample.n_samples, 81);
    assert!(cfg.sample.simple_var);
}

#[test]
fn empty_file_gives_defaults() {
    assert_eq!(load("").unwrap(), Config::default());
}

#[test]
fn lr_spellings_all_parse() {
    for s in ["!!float 1e-3", "1e-3", "0.001", "1.0e-3"] {
        let cfg = load(&format!("train:\n  lr: {s}\n")).unwrap_or_else(|e| panic!("lr: {s}: {e}"));
        assert!((cfg.train.lr - 1e-3).abs() < 1e-15, "lr: {s} gave {}", cfg.train.lr);
    }
}

#[test]
fn dataset_names_as_demo_users_write_them() {
    for (s, want) in [
        ("MNIST", DatasetName::Mnist),
        ("mnist", DatasetName::Mnist),
        ("CIFAR-10", DatasetName::Cifar10),
        ("cifar10", DatasetName::Cifar10),
        ("FashionMNIST", DatasetName::FashionMnist),
        ("fashion-mnist", DatasetName::FashionMnist),
        ("Fashion_MNIST", DatasetName::FashionMnist),
    ] {
        assert_eq!(load(&format!("dataset:\n  name: {s}\n")).unwrap().dataset.name, want, "{s}");
    }
    let e = err("dataset:\n  name: imagenet\n");
    assert!(e.contains("dataset.name") && e.contains("imagenet") && e.contains("cifar10"), "{e}");
}

#[test]
fn unknown_key_names_it_and_the_nearest_valid_key() {
    let e = err("train:\n  lrr: 0.01\n");
    assert!(e.contains("unknown key 'train.lrr'") && e.contains("did you mean 'train.lr'"), "{e}");
    let e = err("netwrok:\n  pe_dim: 8\n");
    assert!(e.contains("'netwrok'") && e.contains("'network'"), "{e}");
    let e = err("sample:\n  nsamples: 4\n");
    assert!(e.contains("'sample.n_samples'"), "{e}");
}

#[test]
fn wrong_types_name_the_key_the_value_and_the_expected_type() {
    let e = err("train:\n  batch_size: lots\n");
    assert!(e.contains("train.batch_size") && e.contains("lots") && e.contains("integer"), "{e}");
    let e = err("network:\n  residual: maybe\n");
    assert!(e.contains("network.residual") && e.contains("maybe") && e.contains("bool"), "{e}");
    let e = err("network:\n  channels: 10\n");
    assert!(e.contains("network.channels") && e.contains("sequence"), "{e}");
    let e = err("train: 5\n");
    assert!(e.contains("train") && e.contains("section"), "{e}");
    let e = err("train:\n  cuda_graphs: sometimes\n");
    assert!(e.contains("train.cuda_graphs") && e.contains("sometimes") && e.contains("bool"), "{e}");
    let e = err("channels_last: sometimes\n");
    assert!(e.contains("channels_last") && e.contains("sometimes") && e.contains("true, false or auto"), "{e}");
    let e = err("channels_last: 2\n");
    assert!(e.contains("channels_last") && e.contains("true, false or auto"), "{e}");
}

/// `channels_last`: YAML booleans force the format everywhere; `auto` (the default) is
/// channels-last except for sampling and evaluation on CUDA; the written config reads back.
#[test]
fn channels_last_accepts_booleans_and_auto() {
    use ddpm::config::ChannelsLast;
    use tch::Device;
    let cuda = Device::Cuda(0);
    assert_eq!(Config::default().channels_last, ChannelsLast::Auto);
    for (yml, want, train, sample) in [
        ("channels_last: auto\n", ChannelsLast::Auto, [true, true], [true, false]),
        ("channels_last: true\n", ChannelsLast::On, [true, true], [true, true]),
        ("channels_last: false\n", ChannelsLast::Off, [false, false], [false, false]),
        ("channels_last: Auto\n", ChannelsLast::Auto, [true, true], [true, false]),
    ] {
        let cfg = load(yml).unwrap();
        let c = cfg.channels_last;
        assert_eq!(c, want, "{yml}");
        assert_eq!([c.for_training(Device::Cpu), c.for_training(cuda)], train, "{yml}");
        assert_eq!([c.for_sampling(Device::Cpu), c.for_sampling(cuda)], sample, "{yml}");
        let again = Config::from_yaml_str(&cfg.to_yaml(), "written.yml", &[]).unwrap();
        assert_eq!(again.channels_last, want, "{yml} after a round trip");
    }
}

#[test]
fn out_of_range_values_name_key_value_and_rule() {
    let cases = [
        ("ddpm:\n  n_steps: 0\n", "ddpm.n_steps = 0", "n_steps >= 1"),
        ("ddpm:\n  min_beta: 0.0\n", "min_beta", "0 < min_beta < max_beta < 1"),
        ("ddpm:\n  min_beta: 0.03\n", "0.03/0.02", "0 < min_beta < max_beta < 1"),
        ("ddpm:\n  max_beta: 1.5\n", "1.5", "0 < min_beta < max_beta < 1"),
        ("network:\n  channels: []\n", "network.channels = []", "non-empty"),
        ("network:\n  channels: [10, -2]\n", "[10, -2]", "positive"),
        ("network:\n  pe_dim: 7\n", "network.pe_dim = 7", "even"),
        ("network:\n  pe_dim: 0\n", "network.pe_dim = 0", "even number > 0"),
        ("network:\n  channels: [1, 2, 3, 4, 5, 6]\n", "network.channels", "halvings"),
        ("streams: 3\n", "streams = 3", "0 (automatic), 1 or 2"),
        ("train:\n  batch_size: 0\n", "train.batch_size = 0", "batch_size >= 1"),
        ("train:\n  n_epochs: 0\n", "train.n_epochs = 0", "n_epochs >= 1"),
        ("train:\n  lr: 0\n", "train.lr = 0", "lr > 0"),
        ("train:\n  lr: -1e-3\n", "train.lr = -0.001", "lr > 0"),
        ("train:\n  log_every: 0\n", "train.log_every = 0", ">= 1"),
        ("sample:\n  n_samples: 0\n", "sample.n_samples = 0", "n_samples >= 1"),
        ("sample:\n  batch_size: 0\n", "sample.batch_size = 0", ">= 1"),
        ("device: tpu\n", "device = \"tpu\"", "cuda:N"),
        ("device: cuda:x\n", "cuda:x", "cpu"),
    ];
    for (yml, key, rule) in cases {
        let e = err(yml);
        assert!(e.contains(key) && e.contains(rule), "for {yml:?}: {e}");
        assert!(e.starts_with("test.yml: "), "message names the file: {e}");
        assert_eq!(e.lines().count(), 1, "one line: {e}");
    }
}

#[test]
fn yaml_syntax_error_gives_line_and_column() {
    let e = err("train:\n  lr: 0.1\n  batch_size: [1, 2\n");
    assert!(e.contains("YAML syntax error at line"), "{e}");
    assert!(e.contains("column"), "{e}");
    let e = err("train:\n\tlr: 1\n");
    assert!(e.contains("line 2"), "{e}");
}

#[test]
fn missing_file_names_the_path_tried() {
    let e = Config::load(std::path::Path::new("/nonexistent/opts.yml"), &[]).unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains("/nonexistent/opts.yml") && e.contains("--config"), "{e}");
}

#[test]
fn overrides_apply_before_validation() {
    let o = |k: &str, v: &str| (k.to_string(), v.to_string());
    let cfg =
        Config::from_yaml_str("train:\n  lr: 0.1\n", "t", &[o("train.lr", "2e-4"), o("network.channels", "[8, 16]")])
            .unwrap();
    assert_eq!(cfg.train.lr, 2e-4);
    assert_eq!(demo(&cfg).channels, vec![8, 16]);
    let e = format!("{:#}", Config::from_yaml_str("", "t", &[o("train.batch_size", "0")]).unwrap_err());
    assert!(
        e.starts_with("on the command line (train.batch_size=0, from a flag or --set): train.batch_size = 0"),
        "{e}"
    );
    // A bad value from the file is the file's, whatever the command line set beside it.
    // (train.lr is given, and is a prefix of the bad key's name.)
    let e = Config::from_yaml_str("train:\n  lr_schedule: bogus\n", "t.yml", &[o("train.lr", "1e-3")]);
    let e = format!("{:#}", e.unwrap_err());
    assert!(e.starts_with("t.yml: train.lr_schedule"), "{e}");
    let e = format!("{:#}", Config::from_yaml_str("", "t", &[o("train.lrate", "1")]).unwrap_err());
    assert!(e.contains("did you mean 'train.lr'"), "{e}");
}

#[test]
fn a_bad_image_size_says_what_is_expected() {
    for bad in ["[1, 2, 3]", "abc", "{h: 3}", "[28, x]"] {
        let e = load(&format!("dataset:\n  name: folder\n  path: p\n  image_size: {bad}\n")).unwrap_err();
        assert!(e.starts_with("test.yml: dataset.image_size: expected one side in pixels"), "{bad}: {e}");
        assert!(e.contains("[height, width]") && !e.contains("untagged"), "{bad}: {e}");
    }
    assert_eq!(load("dataset:\n  image_size: [28, 40]\n").unwrap().dataset.image_size.hw(), [28, 40]);
}

#[test]
fn edit_distance_basics() {
    assert_eq!(ddpm::config::edit_distance("lrr", "lr"), 1);
    assert_eq!(ddpm::config::edit_distance("kitten", "sitting"), 3);
    assert_eq!(ddpm::config::edit_distance("", "abc"), 3);
}

/// Every leaf key of a section tree, as `a.b.c`.
fn leaf_keys(v: &serde_yaml::Value, prefix: &str, out: &mut Vec<String>) {
    match v.as_mapping() {
        Some(m) => {
            for (k, sub) in m {
                leaf_keys(sub, &format!("{prefix}{}.", k.as_str().unwrap()), out);
            }
        }
        None => out.push(prefix.trim_end_matches('.').to_string()),
    }
}

/// Every key of options.yml, for both network kinds, is validated: `-1` (a wrong type, or a
/// value out of range) is a one-line error that names the key.
#[test]
fn every_key_rejects_a_bad_value_by_name() {
    let mut keys = Vec::new();
    for kind in ["demo", "unet"] {
        let cfg = load(&format!("network:\n  kind: {kind}\n")).unwrap();
        leaf_keys(&serde_yaml::to_value(&cfg).unwrap(), "", &mut keys);
    }
    keys.sort();
    keys.dedup();
    assert!(keys.len() >= 45, "{keys:?}");
    for key in &keys {
        let kind = if ["base_channels", "channel_mults", "num_res_blocks", "attn_resolutions", "dropout", "groups"]
            .iter()
            .any(|k| key.ends_with(k))
        {
            "unet"
        } else {
            "demo"
        };
        let o = |k: &str, v: &str| (k.to_string(), v.to_string());
        let overrides = [o("network.kind", kind), o(key, "-1")];
        let e = match Config::from_yaml_str("", "test.yml", &overrides) {
            Ok(_) => panic!("{key} = -1 was accepted"),
            Err(e) => format!("{e:#}"),
        };
        let (section, name) = key.rsplit_once('.').unwrap_or(("", key));
        assert!(e.contains(name) && e.contains(section), "{key} = -1: {e}");
        // The value came from --set: the message blames the command line, not the file.
        let blamed = format!("on the command line ({key}=-1, from a flag or --set): ");
        assert!(e.starts_with(&blamed) && e.lines().count() == 1, "{key} = -1: {e}");
    }
}

/// Settings that take a name list the allowed names; the network's keys depend on its kind.
#[test]
fn choices_list_their_values_and_kinds_their_keys() {
    let cases = [
        ("train:\n  optimizer: sgd\n", "train.optimizer", "adam or adamw"),
        ("train:\n  precision: fp8\n", "train.precision", "fp32 or bf16"),
        ("train:\n  precision: fp16\n", "train.precision", "gradient scaler"),
        ("sample:\n  sampler: euler\n", "sample.sampler", "ddpm, ddim or dpm-solver++"),
        ("sample:\n  spacing: cosine\n", "sample.spacing", "uniform or quadratic"),
        ("network:\n  kind: vit\n", "network.kind", "demo or unet"),
        ("network:\n  kind: unet\n  channels: [8, 16]\n", "'network.channels' for network kind unet", "channel_mults"),
        ("network:\n  pe_dim: 16\n  groups: 8\n", "'network.groups' for network kind demo", "valid keys for kind demo"),
    ];
    for (yml, key, allowed) in cases {
        let e = err(yml);
        assert!(e.contains(key) && e.contains(allowed), "for {yml:?}: {e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
    // Names are case-insensitive and keep their aliases.
    let cfg =
        load("train:\n  optimizer: AdamW\n  precision: BF16\nsample:\n  sampler: DDIM\n  spacing: quad\n").unwrap();
    assert_eq!(cfg.train.optimizer, ddpm::config::train::Optimizer::AdamW);
    assert_eq!(cfg.train.precision, ddpm::precision::Precision::Bf16);
    assert_eq!(cfg.sample.sampler, ddpm::diffusion::reverse::SamplerKind::Ddim);
    assert_eq!(cfg.sample.spacing, ddpm::diffusion::ddim::Spacing::Quadratic);
    // config.yml holds the canonical names and reads back to the same config.
    let yml = cfg.to_yaml();
    assert!(yml.contains("optimizer: adamw") && yml.contains("sampler: ddim"), "{yml}");
    assert_eq!(load(&yml).unwrap(), cfg);
    let unet = load("network:\n  kind: unet\n  base_channels: 64\n").unwrap();
    assert!(matches!(&unet.network, NetworkConfig::Unet(u) if u.base_channels == 64 && u.groups == 32));
    assert_eq!(load(&unet.to_yaml()).unwrap(), unet);
}
