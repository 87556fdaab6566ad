//! The IDX format of MNIST and Fashion-MNIST, gzipped or not.
//!
//! Images: magic 0x00000803, then N, rows, cols (big-endian u32), then N*rows*cols bytes.
//! Labels: magic 0x00000801, then N, then N bytes.

use super::DatasetName;
use super::{download, ImageDataset, Split};
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::Tensor;

const IMAGES_MAGIC: u32 = 0x0803;
const LABELS_MAGIC: u32 = 0x0801;

/// Official file names of a split: (images, labels).
pub fn file_names(split: Split) -> (&'static str, &'static str) {
    match split {
        Split::Train => ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        Split::Test => ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
}

/// Reads `path`, or `path.gz` when only the gzipped file is there, uncompressed.
pub fn read_maybe_gz(path: &Path) -> Result<(PathBuf, Vec<u8>)> {
    let gz = PathBuf::from(format!("{}.gz", path.display()));
    let (used, raw) =
        if path.exists() { (path.to_path_buf(), std::fs::read(path)) } else { (gz.clone(), std::fs::read(&gz)) };
    let raw = raw.with_context(|| format!("reading {}", used.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("{}: not a valid gzip file", used.display()))?;
        Ok((used, out))
    } else {
        Ok((used, raw))
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Parses an IDX image file: returns (n, rows, cols, pixels).
pub fn parse_images(file: &Path, bytes: &[u8]) -> Result<(usize, usize, usize, Vec<u8>)> {
    if bytes.len() < 16 {
        bail!("{}: {} bytes is too short for an IDX image header (16 bytes)", file.display(), bytes.len());
    }
    let magic = be_u32(bytes, 0);
    if magic != IMAGES_MAGIC {
        bail!("{}: bad magic number 0x{magic:08x}, expected 0x{IMAGES_MAGIC:08x} (IDX images)", file.display());
    }
    let (n, rows, cols) = (be_u32(bytes, 4) as usize, be_u32(bytes, 8) as usize, be_u32(bytes, 12) as usize);
    if rows == 0 || cols == 0 || rows > 4096 || cols > 4096 {
        bail!("{}: implausible image size {rows}x{cols} in the header", file.display());
    }
    let want = 16 + n * rows * cols;
    if bytes.len() != want {
        bail!(
            "{}: file has {} bytes but its header ({n} images of {rows}x{cols}) needs {want}{}",
            file.display(),
            bytes.len(),
            if bytes.len() < want { " (truncated?)" } else { "" }
        );
    }
    Ok((n, rows, cols, bytes[16..].to_vec()))
}

/// Parses an IDX label file.
pub fn parse_labels(file: &Path, bytes: &[u8]) -> Result<Vec<u8>> {
    if bytes.len() < 8 {
        bail!("{}: {} bytes is too short for an IDX label header (8 bytes)", file.display(), bytes.len());
    }
    let magic = be_u32(bytes, 0);
    if magic != LABELS_MAGIC {
        bail!("{}: bad magic number 0x{magic:08x}, expected 0x{LABELS_MAGIC:08x} (IDX labels)", file.display());
    }
    let n = be_u32(bytes, 4) as usize;
    if bytes.len() != 8 + n {
        bail!("{}: file has {} bytes but its header ({n} labels) needs {}", file.display(), bytes.len(), 8 + n);
    }
    Ok(bytes[8..].to_vec())
}

/// Reads an image file and its label file into a dataset (class names left empty).
pub fn read_pair(images: &Path, labels: &Path) -> Result<ImageDataset> {
    let (img_file, img_bytes) = read_maybe_gz(images)?;
    let (lbl_file, lbl_bytes) = read_maybe_gz(labels)?;
    let (n, rows, cols, pixels) = parse_images(&img_file, &img_bytes)?;
    let lbl = parse_labels(&lbl_file, &lbl_bytes)?;
    if lbl.len() != n {
        bail!("{} has {n} images but {} has {} labels", img_file.display(), lbl_file.display(), lbl.len());
    }
    let images = Tensor::from_slice(&pixels).view([n as i64, 1, rows as i64, cols as i64]);
    let labels = Tensor::from_slice(&lbl).to_kind(tch::Kind::Int64);
    Ok(ImageDataset { images, labels, class_names: Vec::new() })
}

fn has_split(dir: &Path, split: Split) -> bool {
    let (img, lbl) = file_names(split);
    [img, lbl].iter().all(|f| dir.join(f).exists() || dir.join(format!("{f}.gz")).exists())
}

/// Finds the folder that holds a split's files under `root`, downloading when allowed.
pub fn locate(root: &Path, name: DatasetName, split: Split, allow_download: bool) -> Result<PathBuf> {
    let dirs = super::candidate_dirs(root, name);
    if let Some(d) = dirs.iter().find(|d| has_split(d, split)) {
        return Ok(d.clone());
    }
    let dest = dirs[0].clone();
    let (img, lbl) = file_names(split);
    let needed = [img, lbl];
    if allow_download {
        download::fetch_idx(name, &dest, &needed)?;
        return Ok(dest);
    }
    bail!(
        "{} files not found: need {} (gzipped or not) in {} (or {}); set dataset.download: true, or run scripts/setup.sh --data {}",
        name.as_str(),
        needed.join(" and "),
        dest.display(),
        dirs[1].display(),
        name.as_str()
    )
}
