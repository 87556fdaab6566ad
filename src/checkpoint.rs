//! Checkpoints: safetensors files with the demo's parameter names, written atomically, whose
//! metadata carries the architecture so that a checkpoint alone rebuilds its model.
//!
//! Python: `safetensors.torch.load_file("latest.safetensors")` gives the demo's `state_dict`.

use crate::config::Config;
use crate::diffusion_model::{Model, ModelSpec};
use crate::fsutil::write_atomic;
use crate::model::NetworkConfig;
use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{nn, Kind, Tensor};

pub const FORMAT: &str = "ddpm-rs/1";

/// What a checkpoint says about the model it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// Network, schedule, image shape and class names: what rebuilds the model.
    pub spec: ModelSpec,
    pub dataset: String,
    /// The share of labels trained as the null class (`train.cond_drop_prob`); None in
    /// checkpoints written before it was recorded. 0 means guidance has no trained
    /// unconditional prediction to work with.
    pub cond_drop_prob: Option<f64>,
    pub epoch: i64,
    pub step: i64,
}

impl ModelInfo {
    /// The model described by a configuration, before any training.
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            spec: ModelSpec::from_config(cfg),
            dataset: cfg.dataset.name.as_str().to_string(),
            cond_drop_prob: Some(cfg.train.cond_drop_prob),
            epoch: 0,
            step: 0,
        }
    }

    /// The safetensors metadata a checkpoint carries (what [`Checkpoint::read`] reads back).
    pub fn to_metadata(&self) -> HashMap<String, String> {
        let j = |v: serde_json::Value| v.to_string();
        HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("network".to_string(), j(serde_json::to_value(&self.spec.network).unwrap_or_default())),
            ("ddpm".to_string(), j(serde_json::to_value(&self.spec.schedule).unwrap_or_default())),
            ("image_shape".to_string(), j(serde_json::json!(self.spec.image_shape))),
            ("dataset".to_string(), self.dataset.clone()),
            ("class_names".to_string(), j(serde_json::json!(self.spec.class_names))),
            ("prediction".to_string(), self.spec.prediction.to_string()),
            ("cond_drop_prob".to_string(), j(serde_json::json!(self.cond_drop_prob))),
            ("epoch".to_string(), self.epoch.to_string()),
            ("step".to_string(), self.step.to_string()),
        ])
    }

    fn from_metadata(path: &Path, m: &HashMap<String, String>) -> Result<Self> {
        let get = |k: &str| m.get(k).with_context(|| format!("{}: metadata has no '{k}' entry", path.display()));
        let parse = |k: &str| -> Result<serde_json::Value> {
            serde_json::from_str(get(k)?).with_context(|| format!("{}: metadata '{k}' is not JSON", path.display()))
        };
        let spec = ModelSpec {
            network: NetworkConfig::from_metadata(&parse("network")?)
                .map_err(|m| anyhow::anyhow!("{}: metadata 'network': {m}", path.display()))?,
            schedule: serde_json::from_value(parse("ddpm")?)
                .with_context(|| format!("{}: metadata 'ddpm'", path.display()))?,
            image_shape: serde_json::from_value(parse("image_shape")?)
                .with_context(|| format!("{}: metadata 'image_shape'", path.display()))?,
            class_names: serde_json::from_value(parse("class_names")?).unwrap_or_default(),
            // Checkpoints written before targets existed predict the noise.
            prediction: match m.get("prediction") {
                None => crate::diffusion::prediction::Prediction::Eps,
                Some(p) => p.parse().map_err(|e| anyhow::anyhow!("{}: metadata 'prediction': {e}", path.display()))?,
            },
        };
        check_spec(path, &spec)?;
        Ok(Self {
            spec,
            dataset: get("dataset")?.clone(),
            cond_drop_prob: m.get("cond_drop_prob").and_then(|v| serde_json::from_str(v).ok()).flatten(),
            epoch: get("epoch")?.parse().unwrap_or(0),
            step: get("step")?.parse().unwrap_or(0),
        })
    }
}

/// A model described by a file's metadata, held to the rules a config's is: 1 or 3 channels,
/// sides of 1..=4096 pixels, a network and a schedule that validate.
fn check_spec(path: &Path, spec: &ModelSpec) -> Result<()> {
    let bad = |what: &str, m: String| crate::error::UsageError(format!("{}: metadata '{what}': {m}", path.display()));
    let [c, h, w] = spec.image_shape;
    if !(c == 1 || c == 3) || !(1..=4096).contains(&h) || !(1..=4096).contains(&w) {
        bail!(bad(
            "image_shape",
            format!("{:?} is not an image ddpm makes (1 or 3 channels, sides of 1 to 4096)", spec.image_shape)
        ));
    }
    spec.network.validate(spec.image_shape).map_err(|m| bad("network", m))?;
    spec.schedule.validate().map_err(|m| bad("ddpm", m))?;
    Ok(())
}

/// The largest checkpoint file read (the paper's CIFAR-10 UNet with its Adam moments is about
/// 430 MB).
pub const MAX_CHECKPOINT_BYTES: u64 = 16_000_000_000;

/// Serialises every variable of `vs` (f32, CPU) with `info` as metadata and writes the file
/// atomically.
pub fn save(vs: &nn::VarStore, info: &ModelInfo, path: &Path) -> Result<()> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    save_tensors(&vars, info.to_metadata(), path)
}

/// Writes named tensors (as f32 unless they are i64) with string metadata, atomically.
pub fn save_tensors(tensors: &BTreeMap<String, Tensor>, metadata: HashMap<String, String>, path: &Path) -> Result<()> {
    let data = serialize_tensors(tensors, metadata).with_context(|| format!("serialising {}", path.display()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_atomic(path, &data).with_context(|| format!("saving checkpoint {}", path.display()))
}

/// The safetensors bytes of named tensors (f32 unless they are i64) with string metadata.
pub fn serialize_tensors(tensors: &BTreeMap<String, Tensor>, metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let mut buffers = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let (kind, dtype, width) =
            if t.kind() == Kind::Int64 { (Kind::Int64, Dtype::I64, 8) } else { (Kind::Float, Dtype::F32, 4) };
        let t = t.to_device(tch::Device::Cpu).to_kind(kind).contiguous();
        let mut bytes = vec![0u8; t.numel() * width];
        t.copy_data_u8(&mut bytes, t.numel());
        buffers.push((name.clone(), dtype, t.size().iter().map(|&d| d as usize).collect::<Vec<_>>(), bytes));
    }
    let views: Vec<(String, TensorView)> = buffers
        .iter()
        .map(|(n, dtype, shape, bytes)| Ok((n.clone(), TensorView::new(*dtype, shape.clone(), bytes)?)))
        .collect::<Result<_>>()?;
    Ok(safetensors::serialize(views, &Some(metadata))?)
}

/// The file beside a checkpoint that holds its EMA weights (`latest.ema.safetensors`) or its
/// training state (`latest.state.safetensors`).
pub fn companion(path: &Path, what: &str) -> PathBuf {
    let stem = path.file_name().and_then(|n| n.to_str()).unwrap_or("checkpoint").trim_end_matches(".safetensors");
    path.with_file_name(format!("{stem}.{what}.safetensors"))
}

/// A checkpoint read into memory.
pub struct Checkpoint {
    pub path: PathBuf,
    bytes: Vec<u8>,
    /// `None` for files without our metadata (e.g. the demo's own state_dict).
    pub info: Option<ModelInfo>,
}

impl Checkpoint {
    /// Reads and validates the safetensors header.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = crate::fsutil::read_regular(path, MAX_CHECKPOINT_BYTES)
            .map_err(|e| crate::error::UsageError(format!("cannot read checkpoint {}: {e}", path.display())))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "{}: not a valid safetensors checkpoint ({e}); truncated or another format?",
                path.display()
            )
        })?;
        SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: corrupt safetensors data ({e})", path.display()))?;
        let info = match meta.metadata() {
            Some(m) if m.get("format").map(String::as_str) == Some(FORMAT) => Some(ModelInfo::from_metadata(path, m)?),
            _ => None,
        };
        Ok(Self { path: path.to_path_buf(), bytes, info })
    }

    /// The file's metadata (empty when it has none).
    /// Every tensor's name and shape, in name order.
    pub fn shapes(&self) -> Result<Vec<(String, Vec<usize>)>> {
        let st = SafeTensors::deserialize(&self.bytes)?;
        let mut v: Vec<(String, Vec<usize>)> = st.tensors().into_iter().map(|(n, t)| (n, t.shape().to_vec())).collect();
        v.sort();
        Ok(v)
    }

    pub fn metadata(&self) -> HashMap<String, String> {
        SafeTensors::read_metadata(&self.bytes).ok().and_then(|(_, m)| m.metadata().clone()).unwrap_or_default()
    }

    /// Every tensor in the file, on the CPU.
    pub fn tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let st = SafeTensors::deserialize(&self.bytes)?;
        st.tensors()
            .into_iter()
            .map(|(name, view)| {
                let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
                let kind = match view.dtype() {
                    Dtype::F32 => Kind::Float,
                    Dtype::I64 => Kind::Int64,
                    other => bail!("{}: tensor '{name}' has unexpected dtype {other:?}", self.path.display()),
                };
                Ok((name, Tensor::from_data_size(view.data(), &shape, kind)))
            })
            .collect()
    }

    /// Copies the tensors into `vs`. Every trainable variable must be present with its shape;
    /// the frozen time table may be absent (it is recomputed).
    pub fn load_into(&self, vs: &mut nn::VarStore) -> Result<()> {
        let st = SafeTensors::deserialize(&self.bytes)?;
        let file = self.path.display();
        let _guard = tch::no_grad_guard();
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, mut var) in vars {
            let view = match st.tensor(&name) {
                Ok(v) => v,
                Err(_) if name == "pe.embedding.weight" => continue,
                Err(_) => bail!(
                    "{file}: has no tensor '{name}' that the network needs (another architecture? check the network section)"
                ),
            };
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            if shape != var.size() {
                bail!(
                    "{file}: tensor '{name}' has shape {:?} but the network expects {:?} (another architecture or image shape?)",
                    shape,
                    var.size()
                );
            }
            let kind = match view.dtype() {
                Dtype::F32 => Kind::Float,
                Dtype::F64 => Kind::Double,
                Dtype::F16 => Kind::Half,
                Dtype::BF16 => Kind::BFloat16,
                other => {
                    bail!("{file}: tensor '{name}' has dtype {other:?}; expected a float type")
                }
            };
            let t = Tensor::from_data_size(view.data(), &shape, kind);
            var.copy_(&t.to_kind(var.kind()).to_device(var.device()));
        }
        Ok(())
    }
}

/// Where a run directory keeps its checkpoints.
pub fn checkpoint_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// The newest checkpoint of a run.
pub fn latest_path(run_dir: &Path) -> PathBuf {
    checkpoint_dir(run_dir).join("latest.safetensors")
}

/// The checkpoint written at the end of an epoch.
pub fn epoch_path(run_dir: &Path, epoch: i64) -> PathBuf {
    checkpoint_dir(run_dir).join(format!("epoch-{epoch:04}.safetensors"))
}

/// Deletes all but the newest `keep` epochs' checkpoints, each with all its companions
/// (`epoch-NNNN.safetensors`, `.ema.`, ...); `latest` is never touched. Within an epoch the
/// weights go first, so a weights file never outlives its EMA.
pub fn rotate(run_dir: &Path, keep: usize) -> Result<()> {
    let dir = checkpoint_dir(run_dir);
    let mut epochs: BTreeMap<i64, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let epoch = name
            .strip_prefix("epoch-")
            .filter(|_| name.ends_with(".safetensors"))
            .and_then(|rest| rest.split('.').next())
            .and_then(|n| n.parse::<i64>().ok());
        if let Some(e) = epoch {
            epochs.entry(e).or_default().push(path);
        }
    }
    let excess = epochs.len().saturating_sub(keep);
    for (_, mut files) in epochs.into_iter().take(excess) {
        // The weights (shortest name) first, then the companions.
        files.sort_by_key(|p| p.as_os_str().len());
        for old in files {
            std::fs::remove_file(&old).with_context(|| format!("removing old checkpoint {}", old.display()))?;
        }
    }
    Ok(())
}

/// A checkpoint's model, ready to sample.
pub struct LoadedModel {
    pub model: Model,
    pub info: ModelInfo,
    /// Whether the EMA weights were loaded.
    pub ema: bool,
}

/// Loads a checkpoint onto `device`, preferring its EMA companion when `use_ema`; files
/// without our metadata (the demo's own `state_dict`) are taken to be `fallback`.
pub fn load_model(
    path: &Path,
    fallback: &ModelInfo,
    device: tch::Device,
    channels_last: bool,
    use_ema: bool,
) -> Result<LoadedModel> {
    let ckpt = Checkpoint::read(path)?;
    let info = match &ckpt.info {
        Some(i) => i.clone(),
        None => {
            tracing::info!("{} has no ddpm metadata: taking the network from the config", path.display());
            fallback.clone()
        }
    };
    // Weights are loaded before the conversion to channels-last (loading copies values only).
    let mut model = info.spec.build(device, false);
    let ema_path = companion(path, "ema");
    let ema = use_ema && ema_path.exists();
    let loaded_from = if ema { ema_path } else { path.to_path_buf() };
    match ema {
        true => Checkpoint::read(&loaded_from)?.load_into(&mut model.vs)?,
        false => ckpt.load_into(&mut model.vs)?,
    }
    check_finite(&loaded_from, &model.vs)?;
    if channels_last {
        crate::model::vs_to_channels_last(&model.vs);
        model.channels_last = true;
    }
    Ok(LoadedModel { model, info, ema })
}

/// The names of the variables of `vs` holding NaN or infinite values, sorted: what a save
/// refuses to write and a load refuses to sample.
pub fn non_finite(vs: &nn::VarStore) -> Vec<String> {
    let _guard = tch::no_grad_guard();
    let mut bad: Vec<String> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.is_floating_point() && t.isfinite().all().int64_value(&[]) == 0)
        .map(|(k, _)| k)
        .collect();
    bad.sort();
    bad
}

/// Refuses weights that are NaN or infinite (a diverged run saved by hand, a corrupted file):
/// they would draw NaN pictures without a word.
fn check_finite(path: &Path, vs: &nn::VarStore) -> Result<()> {
    let bad = non_finite(vs);
    if bad.is_empty() {
        return Ok(());
    }
    bail!(crate::error::UsageError(format!(
        "{}: {} weight tensor(s) hold NaN or infinite values (first: {}); the run diverged or the file is damaged: \
         sample an earlier checkpoint",
        path.display(),
        bad.len(),
        bad[0]
    )))
}

impl ModelInfo {
    /// Classifier-free guidance `eps_u + w (eps_c - eps_u)` needs the unconditional prediction
    /// `eps_u`, which only a model trained with label dropout (`cond_drop_prob > 0`) has
    /// learnt: warns when `guidance` would mix in an untrained one.
    pub fn warn_untrained_null_class(&self, path: &Path, guidance: f64) {
        if guidance != 1.0 && self.cond_drop_prob == Some(0.0) {
            tracing::warn!(
                "guidance {guidance}: {} was trained with train.cond_drop_prob 0, so its unconditional (null-class) \
                 prediction was never trained and guidance mixes in noise; use --guidance 1 (plain conditional sampling)",
                path.display()
            );
        }
    }
}

/// The checkpoint a command samples from: `explicit` (`--checkpoint`), else the run
/// directory's latest; a missing file is a usage error that ends with `hint`. `ddpm sample` and
/// `ddpm eval` both resolve and load ([`load_for_sampling`]) through here.
pub fn resolve_for_sampling(cfg: &Config, explicit: Option<&Path>, hint: &str) -> Result<PathBuf> {
    let path = explicit.map_or_else(|| latest_path(&cfg.train.run_dir), Path::to_path_buf);
    if !path.exists() {
        bail!(crate::error::UsageError(format!("no checkpoint at {}: {hint}", path.display())));
    }
    Ok(path)
}

/// Loads `path` on `device` as the configuration asks for sampling: its EMA weights
/// (`sample.ema`), the memory format for sampling, and the config's network for a file without
/// ddpm's metadata.
pub fn load_for_sampling(cfg: &Config, path: &Path, device: tch::Device) -> Result<LoadedModel> {
    let fallback = ModelInfo::from_config(cfg);
    load_model(path, &fallback, device, cfg.channels_last.for_sampling(device), cfg.sample.ema)
}
