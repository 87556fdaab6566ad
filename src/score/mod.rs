//! How good are samples? Scores against real test images from a small CNN classifier trained
//! on the dataset (not the Inception network of papers): a Fréchet distance between its
//! features, a classifier score in the spirit of the Inception Score, the entropy of the
//! predicted-class histogram and, for conditional models, label fidelity; beside each, the
//! same number for other real test images, since these numbers depend strongly on N.

pub mod classifier;
pub mod fid;
pub mod inception;
pub mod metrics;

use crate::data::{self, DatasetConfig};
use anyhow::Result;
use tch::{Device, Tensor};

/// The numbers for one set of samples.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Scores {
    pub frechet_distance: f64,
    pub frechet_distance_real: f64,
    pub classifier_score: f64,
    pub classifier_score_real: f64,
    pub class_entropy: f64,
    pub class_entropy_real: f64,
    pub label_fidelity: Option<f64>,
}

/// Scores `xs` (`[N, C, H, W]` in [-1, 1]) against the first N test images, and N other test
/// images against the same for reference. Needs `2 N <= test.len()`.
pub fn score_samples(
    clf: &classifier::Classifier,
    test: &data::ImageDataset,
    xs: &Tensor,
    labels: Option<&Tensor>,
) -> Scores {
    let n = xs.size()[0];
    let real = |from: i64| data::to_signed_unit(&test.images.narrow(0, from, n));
    let (f_real, _) = clf.embed(&real(0));
    let (f_other, p_other) = clf.embed(&real(n));
    let (f_s, p_s) = clf.embed(&xs.to_device(Device::Cpu));
    Scores {
        frechet_distance: metrics::frechet_distance_of(&f_s, &f_real),
        frechet_distance_real: metrics::frechet_distance_of(&f_other, &f_real),
        classifier_score: metrics::classifier_score(&p_s),
        classifier_score_real: metrics::classifier_score(&p_other),
        class_entropy: metrics::class_histogram_entropy(&p_s),
        class_entropy_real: metrics::class_histogram_entropy(&p_other),
        label_fidelity: labels.map(|l| metrics::label_fidelity(&p_s, l)),
    }
}

/// The classifier for a configuration's dataset, cached beside the data.
pub fn classifier_for(
    dataset: &DatasetConfig,
    train: &data::ImageDataset,
    test: &data::ImageDataset,
    device: Device,
) -> Result<classifier::Classifier> {
    classifier::load_or_train(&classifier_cache(dataset), train, test, device)
}

/// Where the classifier of a data set is cached.
pub fn classifier_cache(dataset: &DatasetConfig) -> std::path::PathBuf {
    dataset.root.join(format!("ddpm-classifier-{}.safetensors", dataset.cache_name()))
}
