//! The feature extractor of `ddpm eval`: a small CNN classifier trained on the dataset's train
//! split the first time it is needed, cached beside the data (with the md5 of the training
//! images it saw), and reused. Its 128-d penultimate activations are the features of the
//! Fréchet distance; its class probabilities feed the classifier score and label fidelity.

use crate::data::{download::md5_hex, ImageDataset};
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::path::Path;
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

pub const FEATURES: i64 = 128;
const FORMAT: &str = "ddpm-classifier/1";

/// conv 3x3 (32) -> ReLU -> max-pool -> conv 3x3 (64) -> ReLU -> max-pool -> linear (128) ->
/// ReLU (features) -> linear (classes).
pub struct Classifier {
    pub vs: nn::VarStore,
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl Classifier {
    pub fn new(device: Device, image_shape: [i64; 3], classes: i64) -> Self {
        let vs = nn::VarStore::new(device);
        let p = vs.root();
        let [c, h, w] = image_shape;
        let pad = nn::ConvConfig { padding: 1, ..Default::default() };
        let conv1 = nn::conv2d(&p / "conv1", c, 32, 3, pad);
        let conv2 = nn::conv2d(&p / "conv2", 32, 64, 3, pad);
        let fc1 = nn::linear(&p / "fc1", 64 * (h / 4) * (w / 4), FEATURES, Default::default());
        let fc2 = nn::linear(&p / "fc2", FEATURES, classes, Default::default());
        Self { vs, conv1, conv2, fc1, fc2 }
    }

    /// `xs` in [-1, 1] -> (features `[N, 128]`, logits `[N, classes]`).
    pub fn forward(&self, xs: &Tensor) -> (Tensor, Tensor) {
        let h = xs.apply(&self.conv1).relu().max_pool2d_default(2);
        let h = h.apply(&self.conv2).relu().max_pool2d_default(2).flatten(1, -1);
        let feats = self.fc1.forward(&h).relu();
        let logits = self.fc2.forward(&feats);
        (feats, logits)
    }

    /// Features and class probabilities of many images, in batches, under no_grad.
    pub fn embed(&self, xs: &Tensor) -> (Tensor, Tensor) {
        let _g = tch::no_grad_guard();
        let dev = self.vs.device();
        let (mut f, mut p) = (Vec::new(), Vec::new());
        for chunk in xs.split(500, 0) {
            let (feats, logits) = self.forward(&chunk.to_device(dev).to_kind(Kind::Float));
            f.push(feats.to_device(Device::Cpu));
            p.push(logits.softmax(-1, Kind::Float).to_device(Device::Cpu));
        }
        (Tensor::cat(&f, 0), Tensor::cat(&p, 0))
    }

    /// Accuracy on a dataset.
    pub fn accuracy(&self, ds: &ImageDataset) -> f64 {
        let xs = crate::data::to_signed_unit(&ds.images);
        let (_, probs) = self.embed(&xs);
        probs.argmax(-1, false).eq_tensor(&ds.labels).to_kind(Kind::Float).mean(Kind::Float).double_value(&[])
    }
}

/// md5 of a dataset's training images: ties a cached classifier to its data.
pub fn data_checksum(ds: &ImageDataset) -> String {
    let mut bytes = vec![0u8; ds.images.numel()];
    ds.images.flatten(0, -1).copy_data(&mut bytes, ds.images.numel());
    md5_hex(&bytes)
}

/// Trains a classifier: Adam 1e-3, batch 128, `epochs` passes, seeded.
pub fn train(train: &ImageDataset, device: Device, epochs: i64, seed: i64) -> Result<Classifier> {
    tch::manual_seed(seed);
    let classes = train.class_names.len().max(10) as i64;
    let clf = Classifier::new(device, train.image_shape(), classes);
    let mut opt = nn::Adam::default().build(&clf.vs, 1e-3)?;
    let n = train.len();
    let bar = crate::logging::progress_bar(
        (epochs * ((n + 127) / 128)) as u64,
        "classifier [{bar:30}] {pos}/{len} {msg} ETA {eta}",
    );
    for _ in 0..epochs {
        let perm = Tensor::randperm(n, (Kind::Int64, Device::Cpu));
        for (i, idx) in perm.split(128, 0).iter().enumerate() {
            let xs = train.batch(idx, device);
            let ys = train.labels.index_select(0, idx).to_device(device);
            let (_, logits) = clf.forward(&xs);
            let loss = logits.cross_entropy_for_logits(&ys);
            opt.backward_step(&loss);
            bar.inc(1);
            if i % 50 == 0 {
                bar.set_message(format!("loss {:.3}", loss.double_value(&[])));
            }
        }
    }
    bar.finish_and_clear();
    Ok(clf)
}

/// Loads the cached classifier for `train` from `path`, or trains one (and caches it) when
/// the cache is missing or was made from other data. Logs the test accuracy.
pub fn load_or_train(
    path: &Path,
    train_ds: &ImageDataset,
    test_ds: &ImageDataset,
    device: Device,
) -> Result<Classifier> {
    let sum = data_checksum(train_ds);
    if let Ok(ck) = crate::checkpoint::Checkpoint::read(path) {
        let meta = ck.metadata();
        if meta.get("format").map(String::as_str) == Some(FORMAT) && meta.get("data_md5") == Some(&sum) {
            let mut clf = Classifier::new(device, train_ds.image_shape(), train_ds.class_names.len().max(10) as i64);
            let tensors = ck.tensors()?;
            let _g = tch::no_grad_guard();
            for (name, mut var) in clf.vs.variables() {
                let t = tensors.get(&name).with_context(|| format!("{}: lacks '{name}'", path.display()))?;
                var.copy_(&t.to_device(device));
            }
            clf.vs.freeze();
            tracing::info!(
                "classifier {} (test accuracy {})",
                path.display(),
                meta.get("test_accuracy").map_or("?", |s| s)
            );
            return Ok(clf);
        }
        tracing::warn!("{} was made from other data: training a new classifier", path.display());
    }
    tracing::info!(
        "training the evaluation classifier on {} images (once; cached at {})",
        train_ds.len(),
        path.display()
    );
    let clf = train(train_ds, device, 2, 0)?;
    let acc = clf.accuracy(test_ds);
    tracing::info!("classifier test accuracy {:.2}%", acc * 100.0);
    let tensors = clf.vs.variables().into_iter().collect();
    let meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("data_md5".to_string(), sum),
        ("test_accuracy".to_string(), format!("{acc:.4}")),
    ]);
    if let Err(e) = crate::checkpoint::save_tensors(&tensors, meta, path) {
        tracing::warn!("could not cache the classifier: {e:#}");
    }
    Ok(clf)
}
