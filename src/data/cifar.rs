//! CIFAR-10's official binary version: `cifar-10-batches-bin/` with `data_batch_1.bin` ..
//! `data_batch_5.bin`, `test_batch.bin` and `batches.meta.txt`. A record is 1 label byte then
//! 3,072 pixel bytes: the 1,024 red values, then green, then blue, each plane row-major 32x32.

use super::{download, ImageDataset, Split};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const RECORD: usize = 1 + 3 * 32 * 32;

/// The files of a split.
pub fn file_names(split: Split) -> Vec<String> {
    match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".into()],
    }
}

/// Parses one batch file's bytes into (labels, pixels).
pub fn parse_batch(file: &Path, bytes: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
        bail!(
            "{}: {} bytes is not a whole number of CIFAR-10 records ({RECORD} bytes each: 1 label + 3072 pixels){}",
            file.display(),
            bytes.len(),
            if bytes.is_empty() { "" } else { " (truncated?)" }
        );
    }
    let n = bytes.len() / RECORD;
    let mut labels = Vec::with_capacity(n);
    let mut pixels = Vec::with_capacity(n * (RECORD - 1));
    for rec in bytes.chunks_exact(RECORD) {
        if rec[0] > 9 {
            bail!("{}: label {} in record {} is not a CIFAR-10 class (0..9)", file.display(), rec[0], labels.len());
        }
        labels.push(rec[0]);
        pixels.extend_from_slice(&rec[1..]);
    }
    Ok((labels, pixels))
}

/// Reads class names from `batches.meta.txt` (one per line), falling back to the official ones.
pub fn read_class_names(dir: &Path) -> Vec<String> {
    let official = super::class_names(super::DatasetName::Cifar10);
    match std::fs::read_to_string(dir.join("batches.meta.txt")) {
        Ok(text) => {
            let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
            if names.len() == 10 {
                names
            } else {
                official
            }
        }
        Err(_) => official,
    }
}

/// Reads a split from a `cifar-10-batches-bin` folder.
pub fn read_split(dir: &Path, split: Split) -> Result<ImageDataset> {
    let mut labels = Vec::new();
    let mut pixels = Vec::new();
    for name in file_names(split) {
        let path = dir.join(&name);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let (l, p) = parse_batch(&path, &bytes)?;
        labels.extend(l);
        pixels.extend(p);
    }
    let n = labels.len() as i64;
    Ok(ImageDataset {
        images: Tensor::from_slice(&pixels).view([n, 3, 32, 32]),
        labels: Tensor::from_slice(&labels).to_kind(tch::Kind::Int64),
        class_names: read_class_names(dir),
    })
}

fn complete(dir: &Path) -> bool {
    file_names(Split::Train).iter().chain(file_names(Split::Test).iter()).all(|f| dir.join(f).exists())
}

/// Finds `cifar-10-batches-bin` under `root`, downloading it when allowed.
pub fn locate(root: &Path, allow_download: bool) -> Result<PathBuf> {
    let dirs = super::candidate_dirs(root, super::DatasetName::Cifar10);
    if let Some(d) = dirs.iter().find(|d| complete(d)) {
        return Ok(d.clone());
    }
    if allow_download {
        download::fetch_cifar10(root)?;
        return Ok(dirs[0].clone());
    }
    bail!(
        "CIFAR-10 files not found: need {} with data_batch_1.bin .. data_batch_5.bin and test_batch.bin \
         (the official binary version, cifar-10-binary.tar.gz, unpacked there); or set dataset.download: true",
        dirs[0].display()
    )
}
