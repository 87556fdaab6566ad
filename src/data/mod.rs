//! Datasets held in memory as `u8 [N, C, H, W]` images with `i64 [N]` labels; the conversion
//! to float in [-1, 1] happens per batch on the training device.

mod background;
pub mod cifar;
pub mod download;
pub mod folder;
pub mod idx;
mod walk;

pub use background::Background;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

crate::choice! {
    /// The datasets the tool reads (`dataset.name`; also written `MNIST`, `FashionMNIST`,
    /// `fashion_mnist`, `CIFAR-10`, ...).
    pub enum DatasetName {
        Mnist = "mnist",
        FashionMnist = "fashion-mnist" | "fmnist",
        Cifar10 = "cifar10" | "cifar",
        /// Any folder of pictures (`dataset.path`).
        Folder = "folder" | "images",
    }
}

impl DatasetName {
    /// Image shape `[C, H, W]` of the built-in sets (None for a folder: its keys say).
    pub fn image_shape(self) -> Option<[i64; 3]> {
        match self {
            Self::Mnist | Self::FashionMnist => Some([1, 28, 28]),
            Self::Cifar10 => Some([3, 32, 32]),
            Self::Folder => None,
        }
    }
}

/// `dataset.image_size`: one side for square pictures, or `[height, width]`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
#[serde(untagged)]
pub enum ImageSize {
    Square(i64),
    Rect([i64; 2]),
}

impl<'de> Deserialize<'de> for ImageSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Square(i64),
            Rect([i64; 2]),
        }
        Ok(match Raw::deserialize(d) {
            Ok(Raw::Square(s)) => Self::Square(s),
            Ok(Raw::Rect(r)) => Self::Rect(r),
            Err(_) => {
                return Err(<D::Error as serde::de::Error>::custom(
                    "expected one side in pixels (e.g. 64) or [height, width] (e.g. [28, 40])",
                ))
            }
        })
    }
}

impl ImageSize {
    /// `[height, width]`.
    pub fn hw(self) -> [i64; 2] {
        match self {
            Self::Square(s) => [s, s],
            Self::Rect(r) => r,
        }
    }
}

/// The `dataset:` section of options.yml.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DatasetConfig {
    /// `mnist`, `fashion-mnist`, `cifar10` (also the folder under `root`), or `folder`.
    pub name: DatasetName,
    /// Folder that holds `<name>/` (or torchvision's `MNIST/raw/` layout), and a folder
    /// dataset's cache (`folder-cache/`).
    pub root: PathBuf,
    /// Download missing files from the official mirrors.
    pub download: bool,
    /// `folder`: the pictures, searched recursively; first-level subfolders are the classes.
    pub path: PathBuf,
    /// `folder`: the size pictures are brought to, `64` or `[height, width]`.
    pub image_size: ImageSize,
    /// `folder`: 1 (grayscale) or 3 (RGB); other pictures are converted.
    pub channels: i64,
    /// `folder`: `center-crop`, `pad` or `stretch`.
    pub resize: folder::Resize,
    /// `folder`: what shows through transparent pixels (and fills `pad`'s borders): `white`,
    /// `black`, `gray` or `#rrggbb`.
    pub background: Background,
    /// `folder`: the share of pictures held out of training for `ddpm eval` (0: none, and eval
    /// compares with the training pictures).
    pub eval_split: f64,
}

impl Default for DatasetConfig {
    fn default() -> Self {
        Self {
            name: DatasetName::Mnist,
            root: "data".into(),
            download: true,
            path: PathBuf::new(),
            image_size: ImageSize::Square(64),
            channels: 3,
            resize: folder::Resize::CenterCrop,
            background: Background::WHITE,
            eval_split: 0.0,
        }
    }
}

impl DatasetConfig {
    /// The name under which what is derived from this data set is cached beside it (the CNN
    /// metric's classifier, the FID reference statistics): the data set's name, and for a
    /// folder `folder-<its name>-<digest of its path, picture shape, resize, background and
    /// eval split>`,
    /// so that two folders of the same name never share a cache.
    pub fn cache_name(&self) -> String {
        match self.name {
            DatasetName::Folder => {
                let key = format!(
                    "{}|{:?}|{}|{}|{}",
                    self.path.display(),
                    self.image_shape(),
                    self.resize.as_str(),
                    self.background,
                    self.eval_split
                );
                let stem = self.path.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
                format!("folder-{stem}-{:016x}", crate::fsutil::fnv1a(key.as_bytes()))
            }
            n => n.as_str().to_string(),
        }
    }

    /// `[C, H, W]` of the configured set.
    pub fn image_shape(&self) -> [i64; 3] {
        self.name.image_shape().unwrap_or_else(|| {
            let [h, w] = self.image_size.hw();
            [self.channels, h, w]
        })
    }

    pub fn validate(&self) -> Result<(), String> {
        let [h, w] = self.image_size.hw();
        if h < 1 || w < 1 || h > 4096 || w > 4096 {
            return Err(format!(
                "dataset.image_size = {:?} is not allowed: a side of 1..=4096 pixels, e.g. 64 or [28, 40]",
                self.image_size.hw()
            ));
        }
        if self.channels != 1 && self.channels != 3 {
            return Err(format!("dataset.channels = {} is not allowed: 1 (grayscale) or 3 (RGB)", self.channels));
        }
        if !(0.0..1.0).contains(&self.eval_split) {
            return Err(format!(
                "dataset.eval_split = {} is not allowed: a share in [0, 1), e.g. 0.05",
                self.eval_split
            ));
        }
        if self.name == DatasetName::Folder && self.path.as_os_str().is_empty() {
            return Err("dataset.path is not set: dataset.name: folder reads the pictures under that folder".into());
        }
        Ok(())
    }
}

/// Which part of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// Images and labels in memory.
#[derive(Debug)]
pub struct ImageDataset {
    /// `u8 [N, C, H, W]`, on the CPU.
    pub images: Tensor,
    /// `i64 [N]`.
    pub labels: Tensor,
    pub class_names: Vec<String>,
}

impl ImageDataset {
    pub fn len(&self) -> i64 {
        self.images.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `[C, H, W]`.
    pub fn image_shape(&self) -> [i64; 3] {
        let s = self.images.size();
        [s[1], s[2], s[3]]
    }

    /// Images at `idx` (an `i64` index tensor), as float in [-1, 1] on `device`.
    pub fn batch(&self, idx: &Tensor, device: Device) -> Tensor {
        to_signed_unit(&self.images.index_select(0, idx).to_device(device))
    }
}

/// `u8` pixels -> float in [-1, 1]: `x / 127.5 - 1`.
pub fn to_signed_unit(xs: &Tensor) -> Tensor {
    xs.to_kind(Kind::Float) / 127.5 - 1.0
}

/// Class names, in label order.
pub fn class_names(name: DatasetName) -> Vec<String> {
    let names: &[&str] = match name {
        DatasetName::Mnist => &["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
        DatasetName::FashionMnist => {
            &["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
        }
        DatasetName::Cifar10 => {
            &["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
        }
        DatasetName::Folder => &[],
    };
    names.iter().map(|s| s.to_string()).collect()
}

/// Loads a split of the configured dataset, downloading missing files when allowed.
pub fn load(cfg: &DatasetConfig, split: Split) -> Result<ImageDataset> {
    let ds = load_unchecked(cfg, split)?;
    check_loaded(&ds, cfg)?;
    Ok(ds)
}

/// What every reader's result must hold before it reaches a network: at least one image, and
/// labels within the data set's classes (an out-of-range label would index past the class
/// embedding of a conditional model).
fn check_loaded(ds: &ImageDataset, cfg: &DatasetConfig) -> Result<()> {
    let what = match cfg.name {
        DatasetName::Folder => format!("dataset.path {}", cfg.path.display()),
        n => format!("{} under {}", n.as_str(), cfg.root.display()),
    };
    if ds.is_empty() {
        anyhow::bail!(crate::error::UsageError(format!("{what}: the data set holds no images")));
    }
    let classes = ds.class_names.len() as i64;
    if classes > 0 {
        let (lo, hi) = (ds.labels.min().int64_value(&[]), ds.labels.max().int64_value(&[]));
        if lo < 0 || hi >= classes {
            anyhow::bail!(crate::error::UsageError(format!(
                "{what}: labels run from {lo} to {hi}, outside its {classes} classes 0..{}",
                classes - 1
            )));
        }
    }
    Ok(())
}

fn load_unchecked(cfg: &DatasetConfig, split: Split) -> Result<ImageDataset> {
    let name = cfg.name;
    match name {
        DatasetName::Mnist | DatasetName::FashionMnist => {
            let dir = idx::locate(&cfg.root, name, split, cfg.download)?;
            let (img, lbl) = idx::file_names(split);
            let ds = idx::read_pair(&dir.join(img), &dir.join(lbl))?;
            Ok(ImageDataset { class_names: class_names(name), ..ds })
        }
        DatasetName::Cifar10 => {
            let dir = cifar::locate(&cfg.root, cfg.download)?;
            cifar::read_split(&dir, split)
        }
        DatasetName::Folder => Ok(folder::load(cfg, split)?.0),
    }
}

/// Candidate folders for a dataset under `root`, ours first, then torchvision's layout.
pub fn candidate_dirs(root: &std::path::Path, name: DatasetName) -> Vec<PathBuf> {
    match name {
        DatasetName::Mnist => vec![root.join("mnist"), root.join("MNIST/raw"), root.join("MNIST")],
        DatasetName::FashionMnist => {
            vec![root.join("fashion-mnist"), root.join("FashionMNIST/raw"), root.join("FashionMNIST")]
        }
        DatasetName::Cifar10 => vec![root.join("cifar-10-batches-bin"), root.join("cifar10/cifar-10-batches-bin")],
        DatasetName::Folder => Vec::new(),
    }
}
