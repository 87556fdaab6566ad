//! `options.yml`: loading, command-line overrides and validation. The sections of the commands
//! live here ([`TrainConfig`] in `train.rs`, [`SampleConfig`] in `sample.rs`, [`EvalConfig`]
//! in `eval.rs`), those that describe data and model beside the code they describe
//! ([`DatasetConfig`] in `data`, [`NetworkConfig`] in `model`, [`ScheduleConfig`] in
//! `diffusion`); each validates its own keys, and this module puts them together. Nothing here
//! imports a command.
//!
//! Loading goes through a `serde_yaml::Value` first so that unknown keys can be reported with
//! the nearest valid key, YAML tags such as `!!float 1e-3` are accepted, and `--set key=value`
//! overrides are merged before the typed structs are built.

pub mod eval;
pub mod sample;
pub mod train;
mod tree;

use crate::data::DatasetConfig;
use crate::diffusion::ScheduleConfig;
use crate::error::usage as bad;
use crate::model::config::NetworkKind;
use crate::model::NetworkConfig;
use eval::EvalConfig;
use sample::SampleConfig;
use serde::{Deserialize, Serialize};
use serde_yaml::Value;
use std::path::Path;
use train::TrainConfig;
pub use tree::edit_distance;
use tree::{check_keys, check_nesting, describe_type_error, set_path, short, strip_tags};

/// The largest config file read: a YAML file of settings is a few kilobytes.
const MAX_CONFIG_BYTES: u64 = 4_000_000;

/// `channels_last`: the memory format of the network's weights and images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelsLast {
    /// Channels-last wherever it was measured faster: on the CPU for everything, on CUDA for
    /// training; NCHW for sampling and evaluation on CUDA.
    Auto,
    On,
    Off,
}

impl ChannelsLast {
    /// The format of the network being trained on `device`.
    pub fn for_training(self, _device: tch::Device) -> bool {
        self != ChannelsLast::Off
    }

    /// The format of a network loaded for sampling or evaluation on `device`.
    pub fn for_sampling(self, device: tch::Device) -> bool {
        match self {
            ChannelsLast::Auto => !device.is_cuda(),
            ChannelsLast::On => true,
            ChannelsLast::Off => false,
        }
    }
}

impl Serialize for ChannelsLast {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ChannelsLast::Auto => s.serialize_str("auto"),
            ChannelsLast::On => s.serialize_bool(true),
            ChannelsLast::Off => s.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for ChannelsLast {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ChannelsLast;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false or auto")
            }
            fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<ChannelsLast, E> {
                Ok(if b { ChannelsLast::On } else { ChannelsLast::Off })
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ChannelsLast, E> {
                match s.to_ascii_lowercase().as_str() {
                    "auto" => Ok(ChannelsLast::Auto),
                    "true" => Ok(ChannelsLast::On),
                    "false" => Ok(ChannelsLast::Off),
                    _ => Err(E::custom(format!("{s:?} is not allowed: use true, false or auto"))),
                }
            }
        }
        d.deserialize_any(V)
    }
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
    /// Convolutions in the channels-last memory format (NHWC strides): `true`, `false`, or
    /// `auto` (channels-last, except for sampling and evaluation on CUDA).
    pub channels_last: ChannelsLast,
    /// CPU training in this many compute streams (1 or 2; 0 = 2 on a CPU with two or more
    /// threads, unless the network uses dropout or the run is data-parallel).
    pub streams: usize,
    pub dataset: DatasetConfig,
    pub ddpm: ScheduleConfig,
    pub network: NetworkConfig,
    pub train: TrainConfig,
    pub sample: SampleConfig,
    pub eval: EvalConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            device: "auto".into(),
            seed: 0,
            threads: 0,
            channels_last: ChannelsLast::Auto,
            streams: 0,
            dataset: DatasetConfig::default(),
            ddpm: ScheduleConfig::default(),
            network: NetworkConfig::default(),
            train: TrainConfig::default(),
            sample: SampleConfig::default(),
            eval: EvalConfig::default(),
        }
    }
}

impl Config {
    /// Reads, merges `overrides` (`key.path=value`), validates.
    pub fn load(path: &Path, overrides: &[(String, String)]) -> anyhow::Result<Self> {
        let bytes = crate::fsutil::read_regular(path, MAX_CONFIG_BYTES).map_err(|e| {
            bad(format!("cannot read config file {}: {e} (pass another with --config PATH)", path.display()))
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            bad(format!(
                "config file {}: not UTF-8 text (byte {}); is it a YAML file?",
                path.display(),
                e.utf8_error().valid_up_to()
            ))
        })?;
        Self::from_yaml_str(&text, &path.display().to_string(), overrides)
    }

    /// Parses YAML text; `origin` names the source in messages.
    pub fn from_yaml_str(text: &str, origin: &str, overrides: &[(String, String)]) -> anyhow::Result<Self> {
        check_nesting(text).map_err(|m| bad(format!("{origin}: {m}")))?;
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
        let kind = network_kind(&mut value).map_err(|m| blame(m, origin, overrides))?;
        let mut schema = serde_yaml::to_value(Config::default()).expect("default config serialises");
        let network = NetworkConfig::default_of(kind);
        schema["network"] = serde_yaml::to_value(network).expect("default network serialises");
        check_keys(&value, &schema, "").map_err(|m| {
            // The network's keys depend on its kind: say which kind's keys were checked.
            let m = m.replacen("' (did you mean", &format!("' for network kind {kind} (did you mean"), 1).replacen(
                "valid keys in network:",
                &format!("valid keys for kind {kind}:"),
                1,
            );
            bad(format!("{origin}: {m}"))
        })?;
        // The tagged network section is read on its own: serde reports no key path inside it.
        let mut network = value.as_mapping_mut().and_then(|m| m.remove("network")).unwrap_or(Value::Null);
        if let Some(m) = network.as_mapping_mut() {
            m.remove("kind");
        }
        let blamed = |m: String| blame(m, origin, overrides);
        let mut cfg: Config = typed(value, "").map_err(blamed)?;
        cfg.network = match kind {
            NetworkKind::Unet => NetworkConfig::Unet(typed(network, "network.").map_err(blamed)?),
            NetworkKind::Demo => NetworkConfig::Demo(typed(network, "network.").map_err(blamed)?),
        };
        cfg.validate().map_err(blamed)?;
        Ok(cfg)
    }

    /// Image shape `[C, H, W]` of the configured dataset.
    pub fn image_shape(&self) -> [i64; 3] {
        self.dataset.image_shape()
    }

    fn validate(&self) -> Result<(), String> {
        crate::device::parse_device(&self.device).map_err(|m| format!("device = {:?}: {m}", self.device))?;
        if self.threads > 4096 {
            return Err(format!(
                "threads = {} is not allowed: 0 (libtorch's default: all cores) or at most 4096",
                self.threads
            ));
        }
        if self.streams > 2 {
            return Err(format!("streams = {} is not allowed: 0 (automatic), 1 or 2", self.streams));
        }
        self.dataset.validate()?;
        self.ddpm.validate()?;
        self.network.validate(self.image_shape())?;
        self.train.validate()?;
        self.sample.validate(self.ddpm.n_steps)
    }

    /// The resolved configuration as YAML (written to `run_dir/config.yml`).
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_default()
    }
}

/// Deserialises a tree into `T`; type errors name the key (`prefix` + its path in the tree).
fn typed<T: serde::de::DeserializeOwned>(value: Value, prefix: &str) -> Result<T, String> {
    let value = if value.is_null() { Value::Mapping(Default::default()) } else { value };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.inner().to_string();
        describe_type_error(&format!("{prefix}{}: {inner}", e.path()))
    })
}

/// A message about the key it starts with (or the keys of a pair, `ddpm.min_beta/max_beta`),
/// blamed on where that key's value came from: the command line when a flag or `--set` gave
/// it, else the config file.
fn blame(message: String, origin: &str, overrides: &[(String, String)]) -> anyhow::Error {
    let subject = message.split([' ', ':', '[']).next().unwrap_or_default();
    let (section, _) = subject.rsplit_once('.').unwrap_or(("", subject));
    let names: Vec<String> = subject
        .split('/')
        .enumerate()
        .map(|(i, n)| if i == 0 || section.is_empty() { n.to_string() } else { format!("{section}.{n}") })
        .collect();
    match overrides.iter().rev().find(|(k, _)| names.contains(k)) {
        Some((k, v)) => bad(format!("on the command line ({k}={v}, from a flag or --set): {message}")),
        None => bad(format!("{origin}: {message}")),
    }
}

/// The network kind of a configuration tree (`demo` when the section does not say), written
/// into the tree so the tagged section parses.
fn network_kind(value: &mut Value) -> Result<NetworkKind, String> {
    let Some(root) = value.as_mapping_mut() else { return Ok(NetworkKind::Demo) };
    let section = root.entry(Value::from("network")).or_insert_with(|| Value::Mapping(Default::default()));
    if section.is_null() {
        *section = Value::Mapping(Default::default());
    }
    let Some(network) = section.as_mapping_mut() else {
        return Err(format!("network must be a section of keys, not {}", short(section)));
    };
    let kinds = crate::model::config::KINDS;
    let kind = match network.get("kind") {
        None => "demo".to_string(),
        Some(Value::String(s)) => s.to_lowercase(),
        Some(other) => short(other),
    };
    let parsed = kinds.contains(&kind.as_str()).then(|| kind.parse::<NetworkKind>().ok()).flatten();
    let Some(parsed) = parsed else {
        return Err(format!("network.kind = {kind:?} is not allowed: use {}", crate::choice::one_of(kinds)));
    };
    network.insert(Value::from("kind"), Value::from(parsed.as_str()));
    Ok(parsed)
}
