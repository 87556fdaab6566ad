//! Inception FID as pytorch-fid computes it: 2048-d pool features of uint8 images through
//! [`super::inception::Inception`], Gaussian statistics in f64 (mean and unbiased covariance),
//! and the Fréchet distance of [`super::metrics::frechet_distance`] (the matrix square root by
//! a symmetric eigendecomposition, which stays finite for singular covariances). Statistics
//! are stored as `.npz` files with `mu` and `sigma`, pytorch-fid's format, so either tool reads
//! the other's.
//!
//! Image sets come from ddpm's sample tensors (`samples`, float in [-1, 1], quantised to uint8
//! as a PNG would be), from an `.npz` whose `arr_0` is uint8 `[N, H, W, C]`, or from a folder of
//! pictures (all of one size).

use super::metrics;
use crate::data::folder;
use crate::error::UsageError;
use anyhow::{bail, Context, Result};
use std::path::Path;
use tch::{Kind, Tensor};

/// Writes the statistics of `feats: [N, D]` as pytorch-fid's `.npz` (`mu`, `sigma`, float64).
pub fn write_stats(path: &Path, feats: &Tensor) -> Result<()> {
    let (mu, sigma) = metrics::gaussian_stats(feats);
    write_mu_sigma(path, &mu, &sigma)
}

/// Writes `mu` and `sigma` as pytorch-fid's `.npz`, atomically.
pub fn write_mu_sigma(path: &Path, mu: &Tensor, sigma: &Tensor) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = crate::fsutil::temp_path(path).with_extension("npz");
    Tensor::write_npz(&[("mu", mu.to_kind(Kind::Double)), ("sigma", sigma.to_kind(Kind::Double))], &tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn read_npz(path: &Path) -> Result<Vec<(String, Tensor)>> {
    regular_file(path)?;
    // tch's reader unwraps some errors of a damaged archive: its panic becomes this error.
    let read = crate::error::quiet_catch(|| Tensor::read_npz(path))
        .map_err(|_| UsageError(format!("{}: not an .npz (a damaged zip archive)", path.display())))?;
    Ok(read.map_err(|e| {
        UsageError(format!("{}: not an .npz ({})", path.display(), e.to_string().lines().next().unwrap_or("")))
    })?)
}

/// `mu` and `sigma` of an `.npz`'s arrays, when it holds them.
fn stats_of(named: &[(String, Tensor)]) -> Option<(Tensor, Tensor)> {
    let get = |k: &str| named.iter().find(|(n, _)| n == k).map(|(_, t)| t.to_kind(Kind::Double));
    Some((get("mu")?, get("sigma")?))
}

/// Refuses what is not a regular file before a reader blocks on a FIFO or reads a device
/// without end.
fn regular_file(path: &Path) -> Result<()> {
    match crate::fsutil::check_regular(path) {
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => bail!(UsageError(format!("{}: {e}", path.display()))),
        _ => Ok(()),
    }
}

/// The width of the Inception pool features a FID reference describes.
pub const FEATURES: i64 = 2048;

/// Gaussian statistics a Fréchet distance can be computed from: `mu [D]`, `sigma [D, D]`
/// (`D` = `dims` when given), finite (an empty or NaN reference would give a number that means
/// nothing).
fn check_stats(path: &Path, (mu, sigma): (Tensor, Tensor), dims: Option<i64>) -> Result<(Tensor, Tensor)> {
    let finite = |t: &Tensor| t.isfinite().all().int64_value(&[]) == 1;
    let d = dims.unwrap_or(mu.size().first().copied().unwrap_or(0).max(1));
    if mu.size() != [d] || sigma.size() != [d, d] {
        bail!(UsageError(format!(
            "{}: mu is {:?} and sigma {:?}; statistics of {d} features are mu [{d}] and sigma [{d}, {d}]",
            path.display(),
            mu.size(),
            sigma.size()
        )));
    }
    if !finite(&mu) || !finite(&sigma) {
        bail!(UsageError(format!("{}: the statistics hold NaN or infinite values", path.display())));
    }
    Ok((mu, sigma))
}

/// Images a FID can be computed on: `[N >= 2, 1 or 3, H, W]`.
fn check_images(path: &Path, px: Tensor) -> Result<Tensor> {
    let s = px.size();
    if s.len() != 4 || s[0] < 2 || !(s[1] == 1 || s[1] == 3) || s[2] < 1 || s[3] < 1 {
        bail!(UsageError(format!(
            "{}: images of shape {s:?} (as [N, C, H, W]); expected at least 2 images of 1 or 3 channels",
            path.display()
        )));
    }
    Ok(px)
}

/// Reads `mu` and `sigma` from a pytorch-fid statistics file.
pub fn read_stats(path: &Path) -> Result<(Tensor, Tensor)> {
    match stats_of(&read_npz(path)?) {
        Some(st) => check_stats(path, st, None),
        None => bail!(UsageError(format!("{}: an .npz of statistics needs 'mu' and 'sigma'", path.display()))),
    }
}

/// A reference set: statistics, or images to compute them from.
pub enum Reference {
    Stats(Tensor, Tensor),
    Images(Tensor),
}

/// `--ref`: an `.npz` of statistics (`mu`, `sigma`), or images as [`load_images`] reads them;
/// an `.npz` is read once.
pub fn load_reference(path: &Path) -> Result<Reference> {
    if !path.is_dir() && path.extension().is_some_and(|e| e == "npz") {
        let named = read_npz(path)?;
        return Ok(match stats_of(&named) {
            Some(st) => {
                let (mu, sigma) = check_stats(path, st, Some(FEATURES))?;
                Reference::Stats(mu, sigma)
            }
            None => Reference::Images(check_images(path, npz_images(path, named)?)?),
        });
    }
    load_images(path).and_then(|px| check_images(path, px)).map(Reference::Images)
}

/// `arr_0` (uint8 NHWC) of an `.npz`'s arrays, as `[N, C, H, W]`.
fn npz_images(path: &Path, named: Vec<(String, Tensor)>) -> Result<Tensor> {
    let arr = named.into_iter().find(|(n, _)| n == "arr_0").map(|(_, t)| t);
    let arr = arr.with_context(|| UsageError(format!("{}: no 'arr_0' images in this .npz", path.display())))?;
    if arr.kind() != Kind::Uint8 || arr.dim() != 4 {
        bail!(UsageError(format!(
            "{}: arr_0 is {:?} {:?}; expected uint8 [N, H, W, C] images",
            path.display(),
            arr.kind(),
            arr.size()
        )));
    }
    Ok(arr.permute([0, 3, 1, 2]).contiguous())
}

/// The `samples` tensor of a file written by `ddpm sample --save-tensor` (float `[N, C, H, W]`
/// in about [-1, 1]).
pub fn read_sample_tensor(path: &Path) -> Result<Tensor> {
    regular_file(path)?;
    let named = Tensor::read_safetensors(path).with_context(|| format!("reading samples {}", path.display()))?;
    let xs = named.into_iter().find(|(k, _)| k == "samples").map(|(_, v)| v);
    let xs = xs.with_context(|| UsageError(format!("{}: no tensor named 'samples'", path.display())))?;
    let s = xs.size();
    if !xs.is_floating_point() || s.len() != 4 || s[0] < 1 || !(s[1] == 1 || s[1] == 3) {
        bail!(UsageError(format!(
            "{}: 'samples' is {:?} {s:?}; ddpm's samples are float [N, C, H, W] with 1 or 3 channels in [-1, 1]",
            path.display(),
            xs.kind()
        )));
    }
    if xs.isfinite().all().int64_value(&[]) == 0 {
        bail!(UsageError(format!("{}: the samples hold NaN or infinite values", path.display())));
    }
    Ok(xs)
}

/// uint8 images `[N, C, H, W]` from a ddpm sample tensor, an `.npz` (`arr_0`, NHWC) or a
/// folder of pictures (transparent ones on white).
pub fn load_images(path: &Path) -> Result<Tensor> {
    if path.is_dir() {
        let (files, _) = folder::list(path)?;
        let Some(first) = files.first() else {
            bail!(UsageError(format!("{}: no pictures found", path.display())));
        };
        let probe =
            image::open(path.join(first)).map_err(|e| UsageError(format!("{}: {e}", path.join(first).display())))?;
        let (w, h) = (probe.width() as i64, probe.height() as i64);
        let c = if probe.color().has_color() { 3 } else { 1 };
        let mut bytes = Vec::with_capacity(files.len() * (c * h * w) as usize);
        for f in &files {
            let look =
                folder::Look { shape: [c, h, w], resize: folder::Resize::Stretch, background: Default::default() };
            let b = folder::decode(&path.join(f), look)
                .map_err(|e| UsageError(format!("{}: {e}", path.join(f).display())))?;
            bytes.extend_from_slice(&b);
        }
        return Ok(Tensor::from_slice(&bytes).view([files.len() as i64, c, h, w]));
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "npz" => npz_images(path, read_npz(path)?),
        "safetensors" => Ok(crate::grid::to_pixels(&read_sample_tensor(path)?)),
        _ => bail!(UsageError(format!(
            "{}: expected a folder of pictures, an .npz (arr_0 uint8 NHWC, or mu/sigma statistics) or a .safetensors of samples",
            path.display()
        ))),
    }
}
