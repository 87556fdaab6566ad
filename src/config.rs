//! `options.yml`: the serde types, their defaults, validation with messages that name the key,
//! the value and what is allowed, and command-line overrides applied in one place.
//!
//! Loading goes through a `serde_yaml::Value` first so that unknown keys can be reported with
//! the nearest valid key, YAML tags such as `!!float 1e-3` are accepted, and `--set key=value`
//! overrides are merged before the typed structs are built.

use serde::{Deserialize, Serialize};
use serde_yaml::Value;
use std::path::{Path, PathBuf};

/// A problem with the configuration or the command line: the binary exits with code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn bad(msg: impl Into<String>) -> anyhow::Error {
    ConfigError(msg.into()).into()
}

/// The whole of `options.yml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `cuda:N`, `cuda`, `cpu` or `auto`; CUDA requested without a GPU falls back to the CPU.
    pub device: String,
    /// Seed for weights, noise, timesteps and the data order.
    pub seed: u64,
    /// CPU threads for libtorch (0 = libtorch's default).
    pub threads: usize,
    /// Convolutions in the channels-last memory format (NHWC strides).
    pub channels_last: bool,
    /// CPU training in this many compute streams (1 or 2; 0 = 2 on a CPU with two or more
    /// threads, unless the network uses dropout or the run is data-parallel).
    pub streams: usize,
    pub dataset: DatasetConfig,
    pub ddpm: DdpmConfig,
    pub network: NetworkConfig,
    pub train: TrainConfig,
    pub sample: SampleConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DatasetConfig {
    /// `mnist`, `fashion-mnist` or `cifar10` (also written `MNIST`, `FashionMNIST`, `CIFAR-10`).
    pub name: String,
    /// Folder that holds `<name>/` (or torchvision's `MNIST/raw/` layout).
    pub root: PathBuf,
    /// Download missing files from the official mirrors.
    pub download: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DdpmConfig {
    pub n_steps: i64,
    pub min_beta: f64,
    pub max_beta: f64,
}

/// Which noise-prediction network.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NetworkKind {
    /// The teaching demo's LayerNorm UNet (`channels`, `pe_dim`, `residual`).
    Demo,
    /// The DDPM paper's GroupNorm/SiLU UNet with self-attention (`base_channels`,
    /// `channel_mults`, `num_res_blocks`, `attn_resolutions`, `dropout`, `groups`).
    Unet,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// `demo` or `unet`.
    pub kind: NetworkKind,
    pub channels: Vec<i64>,
    pub pe_dim: i64,
    pub residual: bool,
    /// Classes for conditional generation (0 = unconditional, the demo's network).
    pub num_classes: i64,
    /// unet: width of the first level.
    pub base_channels: i64,
    /// unet: width of each level as a multiple of base_channels.
    pub channel_mults: Vec<i64>,
    /// unet: residual blocks per level.
    pub num_res_blocks: i64,
    /// unet: feature-map sizes (e.g. 16) that get self-attention.
    pub attn_resolutions: Vec<i64>,
    /// unet: dropout inside the residual blocks.
    pub dropout: f64,
    /// unet: GroupNorm groups (every width must be divisible by it).
    pub groups: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub batch_size: i64,
    pub n_epochs: i64,
    pub lr: f64,
    /// Where checkpoints, grids, logs and metrics go.
    pub run_dir: PathBuf,
    /// Stop after this many optimizer steps (0 = run all epochs).
    pub max_steps: i64,
    /// Log the loss (metrics, TensorBoard, progress bar) every this many steps.
    pub log_every: i64,
    /// Samples in the grid written after each epoch (0 = no grid).
    pub grid_samples: i64,
    /// Per-epoch checkpoints to keep besides `latest` (0 = only `latest`).
    pub keep_checkpoints: i64,
    /// Decay of the exponential moving average of the weights (0 = no EMA). The decay used at
    /// step s is `min(ema_decay, (1 + s) / (10 + s))`, so short runs are not stuck near the
    /// initial weights.
    pub ema_decay: f64,
    /// For conditional networks: the share of labels replaced by the null class, so one model
    /// learns conditional and unconditional generation (classifier-free guidance).
    pub cond_drop_prob: f64,
    /// `adam` (L2 weight decay added to the gradient) or `adamw` (decoupled weight decay).
    pub optimizer: String,
    pub weight_decay: f64,
    /// Linear learning-rate warm-up over this many steps (0 = none).
    pub warmup_steps: i64,
    /// Clip the global gradient norm to this value (0 = no clipping).
    pub grad_clip: f64,
    /// Random horizontal flips of the training images.
    pub hflip: bool,
    /// `fp32` or `bf16` (bfloat16 autocast on CUDA, and on CPUs where oneDNN supports bf16;
    /// elsewhere training stays fp32, with a warning).
    pub precision: String,
    /// Evaluate every this many epochs (0 = never): `eval_samples` DDIM-50 samples scored like
    /// `ddpm eval`, appended to evals.jsonl and plotted in eval.png.
    pub eval_every: i64,
    pub eval_samples: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SampleConfig {
    pub n_samples: i64,
    /// The demo's variance: beta_t (true) or the posterior variance (false).
    pub simple_var: bool,
    /// Estimate x0, clamp it to [-1, 1] and step with the posterior mean.
    pub clip_x0: bool,
    /// Images denoised at once; larger counts are done in batches.
    pub batch_size: i64,
    /// Pixels between tiles in the PNG grid.
    pub padding: i64,
    /// `ddpm` (ancestral, every step) or `ddim`.
    pub sampler: String,
    /// DDIM: number of steps.
    pub steps: i64,
    /// DDIM: noise scale (0 = deterministic, 1 = DDPM's posterior variance).
    pub eta: f64,
    /// DDIM: `uniform` or `quadratic` timestep spacing.
    pub spacing: String,
    /// Classifier-free guidance weight for conditional models (1 = no guidance).
    pub guidance: f64,
    /// Use the EMA weights when the checkpoint has them.
    pub ema: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            device: "auto".into(),
            seed: 0,
            threads: 0,
            channels_last: true,
            streams: 0,
            dataset: DatasetConfig::default(),
            ddpm: DdpmConfig::default(),
            network: NetworkConfig::default(),
            train: TrainConfig::default(),
            sample: SampleConfig::default(),
        }
    }
}

impl Default for DatasetConfig {
    fn default() -> Self {
        Self { name: "mnist".into(), root: "data".into(), download: true }
    }
}

impl Default for DdpmConfig {
    fn default() -> Self {
        Self { n_steps: 1000, min_beta: 1e-4, max_beta: 0.02 }
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            kind: NetworkKind::Demo,
            channels: vec![10, 20, 40, 80],
            pe_dim: 128,
            residual: true,
            num_classes: 0,
            base_channels: 128,
            channel_mults: vec![1, 2, 2, 2],
            num_res_blocks: 2,
            attn_resolutions: vec![16],
            dropout: 0.1,
            groups: 32,
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            batch_size: 512,
            n_epochs: 10,
            lr: 1e-3,
            run_dir: "runs/mnist".into(),
            max_steps: 0,
            log_every: 10,
            grid_samples: 64,
            keep_checkpoints: 3,
            ema_decay: 0.999,
            cond_drop_prob: 0.1,
            optimizer: "adam".into(),
            weight_decay: 0.0,
            warmup_steps: 0,
            grad_clip: 0.0,
            hflip: false,
            precision: "fp32".into(),
            eval_every: 0,
            eval_samples: 1000,
        }
    }
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self {
            n_samples: 81,
            simple_var: true,
            clip_x0: false,
            batch_size: 256,
            padding: 0,
            sampler: "ddpm".into(),
            steps: 50,
            eta: 1.0,
            spacing: "uniform".into(),
            guidance: 2.0,
            ema: true,
        }
    }
}

/// The datasets the tool reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetName {
    Mnist,
    FashionMnist,
    Cifar10,
}

impl DatasetName {
    /// Accepts the spellings demo users write: `MNIST`, `FashionMNIST`, `fashion_mnist`,
    /// `CIFAR-10`, `cifar10`, ...
    pub fn parse(s: &str) -> Option<Self> {
        let key: String = s.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_lowercase();
        match key.as_str() {
            "mnist" => Some(Self::Mnist),
            "fashionmnist" | "fmnist" => Some(Self::FashionMnist),
            "cifar10" | "cifar" => Some(Self::Cifar10),
            _ => None,
        }
    }

    /// The canonical name, also the folder under `dataset.root`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mnist => "mnist",
            Self::FashionMnist => "fashion-mnist",
            Self::Cifar10 => "cifar10",
        }
    }

    /// Image shape `[C, H, W]`.
    pub fn image_shape(self) -> [i64; 3] {
        match self {
            Self::Mnist | Self::FashionMnist => [1, 28, 28],
            Self::Cifar10 => [3, 32, 32],
        }
    }
}

impl Config {
    /// Reads, merges `overrides` (`key.path=value`), validates.
    pub fn load(path: &Path, overrides: &[(String, String)]) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            bad(format!("cannot read config file {}: {e} (pass another with --config PATH)", path.display()))
        })?;
        Self::from_yaml_str(&text, &path.display().to_string(), overrides)
    }

    /// Parses YAML text; `origin` names the source in messages.
    pub fn from_yaml_str(text: &str, origin: &str, overrides: &[(String, String)]) -> anyhow::Result<Self> {
        let mut value: Value = serde_yaml::from_str(text).map_err(|e| {
            let loc = e.location().map(|l| format!(" at line {}, column {}", l.line(), l.column())).unwrap_or_default();
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            bad(format!("{origin}: YAML syntax error{loc}: {msg}"))
        })?;
        if value.is_null() {
            value = Value::Mapping(Default::default());
        }
        strip_tags(&mut value);
        for (key, raw) in overrides {
            set_path(&mut value, key, raw).map_err(|m| bad(format!("--set {key}={raw}: {m}")))?;
        }
        let schema = serde_yaml::to_value(Config::default()).expect("default config serialises");
        check_keys(&value, &schema, "").map_err(|m| bad(format!("{origin}: {m}")))?;
        let cfg: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let inner = e.inner().to_string();
            bad(format!("{origin}: {}", describe_type_error(&format!("{}: {inner}", e.path()))))
        })?;
        cfg.validate().map_err(|m| bad(format!("{origin}: {m}")))?;
        Ok(cfg)
    }

    /// The dataset, parsed (validation guarantees it is known).
    pub fn dataset_name(&self) -> DatasetName {
        DatasetName::parse(&self.dataset.name).unwrap_or(DatasetName::Mnist)
    }

    fn validate(&self) -> Result<(), String> {
        fn range(ok: bool, key: &str, value: impl std::fmt::Display, allowed: &str) -> Result<(), String> {
            if ok {
                Ok(())
            } else {
                Err(format!("{key} = {value} is not allowed: {allowed}"))
            }
        }
        crate::device::parse_device(&self.device).map_err(|m| format!("device = {:?}: {m}", self.device))?;
        if DatasetName::parse(&self.dataset.name).is_none() {
            return Err(format!(
                "dataset.name = {:?} is not a known dataset: use mnist, fashion-mnist or cifar10",
                self.dataset.name
            ));
        }
        range(self.streams <= 2, "streams", self.streams, "0 (automatic), 1 or 2")?;
        let d = &self.ddpm;
        range(d.n_steps >= 1, "ddpm.n_steps", d.n_steps, "n_steps >= 1")?;
        let betas_ok = d.min_beta > 0.0 && d.min_beta < d.max_beta && d.max_beta < 1.0;
        range(
            betas_ok,
            "ddpm.min_beta/max_beta",
            format!("{}/{}", d.min_beta, d.max_beta),
            "0 < min_beta < max_beta < 1",
        )?;
        let n = &self.network;
        range(
            !n.channels.is_empty() && n.channels.iter().all(|&c| c > 0),
            "network.channels",
            format!("{:?}", n.channels),
            "a non-empty list of positive integers, e.g. [10, 20, 40, 80]",
        )?;
        range(n.pe_dim > 0 && n.pe_dim % 2 == 0, "network.pe_dim", n.pe_dim, "an even number > 0")?;
        if n.kind == NetworkKind::Unet {
            range(n.base_channels > 0, "network.base_channels", n.base_channels, "base_channels > 0")?;
            range(
                !n.channel_mults.is_empty() && n.channel_mults.iter().all(|&m| m > 0),
                "network.channel_mults",
                format!("{:?}", n.channel_mults),
                "a non-empty list of positive integers, e.g. [1, 2, 2, 2]",
            )?;
            range(n.num_res_blocks >= 1, "network.num_res_blocks", n.num_res_blocks, "num_res_blocks >= 1")?;
            range((0.0..1.0).contains(&n.dropout), "network.dropout", n.dropout, "0 <= dropout < 1")?;
            let bad_width =
                n.channel_mults.iter().map(|m| m * n.base_channels).find(|w| n.groups < 1 || w % n.groups != 0);
            range(
                bad_width.is_none(),
                "network.groups",
                n.groups,
                &format!(
                    "a divisor of every width (base_channels x channel_mults; {} is not divisible)",
                    bad_width.unwrap_or(0)
                ),
            )?;
        }
        let [_, h, w] = self.dataset_name().image_shape();
        let levels = if n.kind == NetworkKind::Demo { n.channels.len() as u32 - 1 } else { 0 };
        range(
            h >> levels >= 1 && w >> levels >= 1,
            "network.channels",
            format!("{:?}", n.channels),
            &format!("{levels} halvings of a {h}x{w} image leave nothing; use fewer levels"),
        )?;
        let t = &self.train;
        range(t.batch_size >= 1, "train.batch_size", t.batch_size, "batch_size >= 1")?;
        range(t.n_epochs >= 1, "train.n_epochs", t.n_epochs, "n_epochs >= 1")?;
        range(t.lr > 0.0 && t.lr.is_finite(), "train.lr", t.lr, "lr > 0")?;
        range(t.max_steps >= 0, "train.max_steps", t.max_steps, "max_steps >= 0 (0 = no limit)")?;
        range(t.log_every >= 1, "train.log_every", t.log_every, "log_every >= 1")?;
        range(t.grid_samples >= 0, "train.grid_samples", t.grid_samples, "grid_samples >= 0 (0 = none)")?;
        range(t.keep_checkpoints >= 0, "train.keep_checkpoints", t.keep_checkpoints, "keep_checkpoints >= 0")?;
        range(!t.run_dir.as_os_str().is_empty(), "train.run_dir", "\"\"", "a folder path")?;
        let s = &self.sample;
        range(s.n_samples >= 1, "sample.n_samples", s.n_samples, "n_samples >= 1")?;
        range(s.batch_size >= 1, "sample.batch_size", s.batch_size, "batch_size >= 1")?;
        range(s.padding >= 0, "sample.padding", s.padding, "padding >= 0")?;
        range(
            ["ddpm", "ddim"].contains(&s.sampler.to_lowercase().as_str()),
            "sample.sampler",
            format!("{:?}", s.sampler),
            "ddpm or ddim",
        )?;
        let ddim = s.sampler.eq_ignore_ascii_case("ddim");
        range(
            s.steps >= 1 && (!ddim || s.steps <= d.n_steps),
            "sample.steps",
            s.steps,
            &format!("1 <= steps <= n_steps ({})", d.n_steps),
        )?;
        range((0.0..=1.0).contains(&s.eta), "sample.eta", s.eta, "0 <= eta <= 1")?;
        range(
            crate::diffusion::ddim::Spacing::parse(&s.spacing).is_some(),
            "sample.spacing",
            format!("{:?}", s.spacing),
            "uniform or quadratic",
        )?;
        range(s.guidance >= 0.0 && s.guidance.is_finite(), "sample.guidance", s.guidance, "guidance >= 0 (1 = none)")?;
        range(
            (0.0..=1.0).contains(&t.ema_decay) && t.ema_decay < 1.0,
            "train.ema_decay",
            t.ema_decay,
            "0 <= ema_decay < 1 (0 = no EMA)",
        )?;
        range(
            (0.0..1.0).contains(&t.cond_drop_prob),
            "train.cond_drop_prob",
            t.cond_drop_prob,
            "0 <= cond_drop_prob < 1",
        )?;
        range(n.num_classes >= 0, "network.num_classes", n.num_classes, "num_classes >= 0 (0 = unconditional)")?;
        range(
            ["adam", "adamw"].contains(&t.optimizer.to_lowercase().as_str()),
            "train.optimizer",
            format!("{:?}", t.optimizer),
            "adam or adamw",
        )?;
        if t.precision.eq_ignore_ascii_case("fp16") {
            return Err("train.precision = \"fp16\" is not supported (float16 needs a gradient scaler that ddpm does \
                        not have, and diffusion training without one diverges): use bf16 or fp32"
                .into());
        }
        range(
            ["fp32", "bf16"].contains(&t.precision.to_lowercase().as_str()),
            "train.precision",
            format!("{:?}", t.precision),
            "fp32 or bf16",
        )?;
        Ok(())
    }

    /// The resolved configuration as YAML (written to `run_dir/config.yml`).
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_default()
    }
}

/// Removes YAML tags (`!!float 1e-3` -> `1e-3`), so tagged values parse like plain ones.
fn strip_tags(v: &mut Value) {
    match v {
        Value::Tagged(t) => {
            let inner = std::mem::replace(&mut t.value, Value::Null);
            let tag = t.tag.to_string();
            *v = match (tag.trim_start_matches('!'), inner) {
                ("float", Value::String(s)) => s.parse::<f64>().map(Value::from).unwrap_or(Value::String(s)),
                ("int", Value::String(s)) => s.parse::<i64>().map(Value::from).unwrap_or(Value::String(s)),
                (_, other) => other,
            };
            strip_tags(v);
        }
        Value::Mapping(m) => m.values_mut().for_each(strip_tags),
        Value::Sequence(s) => s.iter_mut().for_each(strip_tags),
        _ => {}
    }
}

/// Applies `a.b.c=value` to the YAML tree; the value is parsed as YAML (so `2e-4`, `[8, 16]`,
/// `false` work).
fn set_path(root: &mut Value, key: &str, raw: &str) -> Result<(), String> {
    let parsed: Value = serde_yaml::from_str(raw).map_err(|e| format!("value is not YAML: {e}"))?;
    let mut node = root;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let map = node.as_mapping_mut().ok_or_else(|| format!("{} is not a section", parts[..i].join(".")))?;
        if i + 1 == parts.len() {
            map.insert(Value::from(*part), parsed);
            return Ok(());
        }
        node = map.entry(Value::from(*part)).or_insert_with(|| Value::Mapping(Default::default()));
    }
    Err("empty key".into())
}

/// Every key of `value` must exist in `schema` (the default config); a wrong one is named
/// with the closest valid key.
fn check_keys(value: &Value, schema: &Value, prefix: &str) -> Result<(), String> {
    let (Some(map), Some(known)) = (value.as_mapping(), schema.as_mapping()) else {
        if schema.is_mapping() && !value.is_mapping() && !value.is_null() {
            return Err(format!("{} must be a section of keys, not {}", prefix.trim_end_matches('.'), short(value)));
        }
        return Ok(());
    };
    for (k, v) in map {
        let name = k.as_str().map(str::to_string).unwrap_or_else(|| short(k));
        match known.get(k) {
            Some(sub) => check_keys(v, sub, &format!("{prefix}{name}."))?,
            None => {
                let keys: Vec<&str> = known.keys().filter_map(Value::as_str).collect();
                let nearest = keys.iter().min_by_key(|c| edit_distance(&name, c)).copied().unwrap_or("");
                let section =
                    if prefix.is_empty() { "top level".to_string() } else { prefix.trim_end_matches('.').to_string() };
                return Err(format!(
                    "unknown key '{prefix}{name}' (did you mean '{prefix}{nearest}'?; valid keys in {section}: {})",
                    keys.join(", ")
                ));
            }
        }
    }
    Ok(())
}

fn short(v: &Value) -> String {
    serde_yaml::to_string(v).unwrap_or_default().trim().to_string()
}

/// Turns serde_yaml's type errors into "key: got X, expected Y".
fn describe_type_error(msg: &str) -> String {
    let msg = msg.split(" at line ").next().unwrap_or(msg);
    match msg.split_once(": invalid type: ") {
        Some((key, rest)) => {
            let rest = rest
                .replace("expected i64", "expected an integer")
                .replace("expected u64", "expected a non-negative integer")
                .replace("expected f64", "expected a number")
                .replace("expected usize", "expected a non-negative integer");
            format!("{key} has the wrong type: got {rest}")
        }
        None => msg.to_string(),
    }
}

/// Levenshtein distance, for "did you mean".
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}
