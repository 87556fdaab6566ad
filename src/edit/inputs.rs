//! What `ddpm edit` works on: pictures from a file, a folder, an `.npz` or the configured data
//! set, brought to the model's shape as the folder data set brings its pictures; and the
//! inpainting mask, from a PNG or a named region.

use crate::config::Config;
use crate::data::{self, folder, Split};
use crate::error::UsageError;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// The most pictures one edit takes.
pub const MAX_PICTURES: i64 = 256;

/// Where the pictures come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// One picture file.
    File(PathBuf),
    /// Every picture in a folder (searched recursively, in name order).
    Folder(PathBuf),
    /// `arr_0` of an `.npz`, `uint8 [N, H, W, C]`.
    Npz(PathBuf),
    /// The configured data set's split (`dataset:test`, `dataset:train`).
    Dataset(Split),
}

impl Source {
    /// `--input` / `--to`: `dataset:test`, `dataset:train`, or a path that must exist.
    pub fn parse(flag: &str, s: &str) -> Result<Source> {
        match s {
            "dataset:test" => return Ok(Source::Dataset(Split::Test)),
            "dataset:train" => return Ok(Source::Dataset(Split::Train)),
            _ if s.starts_with("dataset:") => {
                bail!(UsageError(format!("{flag} {s}: a data set's pictures are dataset:test or dataset:train")))
            }
            _ => {}
        }
        let p = PathBuf::from(s);
        let meta = std::fs::metadata(&p).map_err(|e| UsageError(format!("{flag} {s}: cannot read it: {e}")))?;
        if meta.is_dir() {
            return Ok(Source::Folder(p));
        }
        // A FIFO or device would block the decoder or never end.
        crate::fsutil::check_regular(&p).map_err(|e| UsageError(format!("{flag} {s}: cannot read it: {e}")))?;
        Ok(match () {
            _ if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("npz")) => Source::Npz(p),
            _ => Source::File(p),
        })
    }

    /// The file or folder, if the pictures come from one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Source::File(p) | Source::Folder(p) | Source::Npz(p) => Some(p),
            Source::Dataset(_) => None,
        }
    }
}

/// Up to `n` pictures of `src` as `u8 [N, C, H, W]` of the model's `shape`, with their data
/// set labels where they come from the data set.
pub fn load(cfg: &Config, src: &Source, shape: [i64; 3], n: i64) -> Result<(Tensor, Option<Tensor>)> {
    let look = folder::Look { shape, resize: cfg.dataset.resize, background: cfg.dataset.background };
    let decode =
        |p: &Path| folder::decode(p, look).map_err(|e| UsageError(format!("cannot read {}: {e}", p.display())));
    let [c, h, w] = shape;
    Ok(match src {
        Source::File(p) => (Tensor::from_slice(&decode(p)?).view([1, c, h, w]), None),
        Source::Folder(dir) => {
            let (files, _) = folder::list(dir)?;
            if files.is_empty() {
                bail!(UsageError(format!("{}: no pictures found (PNG, JPEG, ...)", dir.display())));
            }
            let mut bytes = Vec::new();
            for f in files.iter().take(n as usize) {
                bytes.extend(decode(&dir.join(f))?);
            }
            (Tensor::from_slice(&bytes).view([-1, c, h, w]), None)
        }
        Source::Npz(p) => {
            let px = crate::score::fid::load_images(p)?;
            let got = px.size();
            if got[1..] != shape[..] {
                bail!(UsageError(format!(
                    "{}: arr_0 holds {got:?} pictures as [N, C, H, W]; the model draws {shape:?}",
                    p.display()
                )));
            }
            (px.narrow(0, 0, n.min(got[0])), None)
        }
        Source::Dataset(split) => {
            let ds = data::load(&cfg.dataset, *split)?;
            if ds.image_shape() != shape {
                bail!(UsageError(format!(
                    "the configured data set's pictures are {:?}, the model's {shape:?}: pass the model's config",
                    ds.image_shape()
                )));
            }
            let k = n.min(ds.len());
            (ds.images.narrow(0, 0, k), Some(ds.labels.narrow(0, 0, k)))
        }
    })
}

/// The named regions of `--mask`.
pub const REGIONS: [&str; 6] = ["top-half", "bottom-half", "left-half", "right-half", "center", "border"];

/// `--mask`: `f32 [1, 1, H, W]`, 1 where the picture is regenerated. A PNG must have the
/// model's size (white, above mid-grey, = regenerate); a mask with nothing to regenerate is
/// an error.
pub fn mask(spec: &str, [_, h, w]: [i64; 3]) -> Result<Tensor> {
    let (ys, xs) = (
        Tensor::arange(h, (Kind::Int64, tch::Device::Cpu)).view([h, 1]),
        Tensor::arange(w, (Kind::Int64, tch::Device::Cpu)).view([1, w]),
    );
    let region = |name: &str| -> Option<Tensor> {
        Some(match name {
            "top-half" => ys.lt(h / 2).expand([h, w], false),
            "bottom-half" => ys.ge(h / 2).expand([h, w], false),
            "left-half" => xs.lt(w / 2).expand([h, w], false),
            "right-half" => xs.ge(w / 2).expand([h, w], false),
            "center" | "border" => {
                let inside = ys
                    .ge(h / 4)
                    .logical_and(&ys.lt(h - h / 4))
                    .logical_and(&xs.ge(w / 4).logical_and(&xs.lt(w - w / 4)));
                if name == "center" {
                    inside
                } else {
                    inside.logical_not()
                }
            }
            _ => return None,
        })
    };
    let m = match region(spec) {
        Some(m) => m,
        None => {
            let p = Path::new(spec);
            if !p.exists() {
                bail!(UsageError(format!("--mask {spec}: no such file, and not a region ({})", REGIONS.join(", "))));
            }
            crate::fsutil::check_regular(p).map_err(|e| UsageError(format!("--mask {spec}: cannot read it: {e}")))?;
            let dims =
                image::image_dimensions(p).map_err(|e| UsageError(format!("--mask {spec}: cannot read it: {e}")))?;
            if dims != (w as u32, h as u32) {
                bail!(UsageError(format!(
                    "--mask {spec} is {}x{} (width x height); the model's pictures are {w}x{h}",
                    dims.0, dims.1
                )));
            }
            let look =
                folder::Look { shape: [1, h, w], resize: folder::Resize::Stretch, background: data::Background::BLACK };
            let px = folder::decode(p, look).map_err(|e| UsageError(format!("--mask {spec}: cannot read it: {e}")))?;
            Tensor::from_slice(&px).view([h, w]).gt(127)
        }
    };
    if m.sum(Kind::Int64).int64_value(&[]) == 0 {
        bail!(UsageError(format!(
            "--mask {spec} regenerates nothing (no pixel above mid-grey): white marks what to redraw"
        )));
    }
    Ok(m.to_kind(Kind::Float).view([1, 1, h, w]))
}
