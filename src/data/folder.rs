//! `dataset.name: folder`: the pictures under `dataset.path` (searched recursively), decoded
//! once in parallel, composited onto `dataset.background` where transparent, converted to
//! `dataset.channels`, resized to `dataset.image_size` as `dataset.resize` says, and cached as `u8 [N, C, H, W]` under `dataset.root/folder-cache/`,
//! keyed by the file list (names, sizes, modification times) and those settings, so a second
//! run reads memory at once. Labels are the first-level subfolder names, sorted, when every
//! picture lies in one; otherwise the set is unconditional. `dataset.eval_split` holds out a
//! share of the files (chosen by a hash of their relative path, so adding pictures does not
//! reshuffle the others) for `ddpm eval`.

pub use super::walk::{list, EXTENSIONS};
use super::{Background, DatasetConfig, ImageDataset, Split};
use crate::error::UsageError;
use crate::fsutil::fnv1a;
use anyhow::{bail, Context, Result};
use image::imageops::FilterType;
use image::{DynamicImage, ImageBuffer, Luma, Pixel, Rgb};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use tch::{Kind, Tensor};

crate::choice! {
    /// `dataset.resize`: how a picture of another shape becomes `image_size`.
    pub enum Resize {
        /// Shorter side resized to fit, then the middle cut out.
        CenterCrop = "center-crop" | "crop",
        /// Longer side resized to fit, then borders in `dataset.background`.
        Pad = "pad",
        /// Both sides resized, the aspect ratio lost.
        Stretch = "stretch",
    }
}

/// What [`load`] did, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadStats {
    /// Pictures decoded now (0 when the cache served them).
    pub decoded: usize,
    /// Files that could not be decoded, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Files with other extensions, ignored.
    pub ignored: usize,
    pub cache: PathBuf,
}

/// The folder's pictures of `split`, with [`LoadStats`].
pub fn load(cfg: &DatasetConfig, split: Split) -> Result<(ImageDataset, LoadStats)> {
    let dir = cfg.path.clone();
    if dir.as_os_str().is_empty() {
        bail!(UsageError("dataset.path is not set: dataset.name: folder reads the pictures under that folder".into()));
    }
    if !dir.is_dir() {
        bail!(UsageError(format!(
            "dataset.path {}: no such folder (dataset.name: folder reads the pictures under it)",
            dir.display()
        )));
    }
    let (files, ignored) = list(&dir)?;
    if files.is_empty() {
        bail!(UsageError(format!(
            "dataset.path {}: no pictures found (looked recursively for {})",
            dir.display(),
            EXTENSIONS.join(", ")
        )));
    }
    let [c, h, w] = cfg.image_shape();
    let look = Look { shape: [c, h, w], resize: cfg.resize, background: cfg.background };
    let key = cache_key(&dir, &files, look)?;
    let stem = dir.file_name().map(|s| s.to_string_lossy().replace(|ch: char| !ch.is_alphanumeric(), "_"));
    let cache = cfg.root.join("folder-cache").join(format!("{}-{key:016x}", stem.unwrap_or_default()));
    let mut stats = LoadStats { ignored, cache: cache.with_extension("safetensors"), ..Default::default() };
    let (images, kept, skipped) = match read_cache(&cache) {
        Some(hit) => {
            tracing::info!("{}: {} pictures from the cache {}", dir.display(), hit.1.len(), stats.cache.display());
            hit
        }
        None => {
            let (images, kept, skipped) = decode_all(&dir, &files, look)?;
            stats.decoded = kept.len();
            write_cache(&cache, &images, &kept, &skipped)?;
            (images, kept, skipped)
        }
    };
    stats.skipped = skipped;
    report_skipped(&dir, &stats, kept.is_empty())?;
    let (class_names, labels) = classes_of(&kept);
    let pick = split_indices(cfg, split, &kept)?;
    let idx = Tensor::from_slice(&pick);
    let ds = ImageDataset {
        images: images.index_select(0, &idx),
        labels: Tensor::from_slice(&labels).index_select(0, &idx),
        class_names,
    };
    Ok((ds, stats))
}

/// Warns about the files that could not be decoded; an error when none could be.
fn report_skipped(dir: &Path, stats: &LoadStats, none_kept: bool) -> Result<()> {
    if !stats.skipped.is_empty() {
        let first: Vec<String> = stats.skipped.iter().take(3).map(|(f, e)| format!("{f} ({e})")).collect();
        tracing::warn!(
            "{}: skipped {} unreadable file(s), e.g. {}",
            dir.display(),
            stats.skipped.len(),
            first.join("; ")
        );
    }
    if none_kept {
        bail!(UsageError(format!(
            "dataset.path {}: none of the {} picture files could be read (first: {} ({}))",
            dir.display(),
            stats.skipped.len(),
            stats.skipped[0].0,
            stats.skipped[0].1
        )));
    }
    Ok(())
}

/// The classes (first-level subfolders, when every picture lies in one; sorted) and each
/// picture's label (0 without classes).
fn classes_of(kept: &[String]) -> (Vec<String>, Vec<i64>) {
    let class_of = |f: &str| f.split_once('/').map(|(d, _)| d.to_string());
    let class_names: Vec<String> = match kept.iter().all(|f| class_of(f).is_some()) {
        true => {
            let mut names: Vec<String> = kept.iter().filter_map(|f| class_of(f)).collect();
            names.sort();
            names.dedup();
            names
        }
        false => Vec::new(),
    };
    let labels: Vec<i64> = kept
        .iter()
        .map(|f| class_of(f).and_then(|d| class_names.iter().position(|n| *n == d)).unwrap_or(0) as i64)
        .collect();
    (class_names, labels)
}

/// The pictures of `split`: all of them without an eval split, else those held out (test) or
/// those not (train).
fn split_indices(cfg: &DatasetConfig, split: Split, kept: &[String]) -> Result<Vec<i64>> {
    let held_out: Vec<bool> = kept.iter().map(|f| is_held_out(f, cfg.eval_split)).collect();
    let want_eval = split == Split::Test && cfg.eval_split > 0.0;
    let pick: Vec<i64> =
        (0..kept.len() as i64).filter(|&i| cfg.eval_split <= 0.0 || held_out[i as usize] == want_eval).collect();
    if pick.is_empty() {
        bail!(UsageError(format!(
            "dataset.path {}: dataset.eval_split = {} leaves no {} pictures out of {}",
            cfg.path.display(),
            cfg.eval_split,
            if want_eval { "held-out" } else { "training" },
            kept.len()
        )));
    }
    Ok(pick)
}

/// Whether a file (by relative path) is held out for evaluation at this share.
pub fn is_held_out(rel: &str, share: f64) -> bool {
    share > 0.0 && (fnv1a(rel.as_bytes()) % 1_000_000) < (share * 1e6) as u64
}

/// What a decoded picture looks like: its `[C, H, W]`, how it was fitted and what shows
/// through its transparent pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Look {
    pub shape: [i64; 3],
    pub resize: Resize,
    pub background: Background,
}

fn cache_key(dir: &Path, files: &[String], look: Look) -> Result<u64> {
    let mut text = format!("ddpm-folder-cache v2 {:?} {} {}\n", look.shape, look.resize.as_str(), look.background);
    for f in files {
        let meta = std::fs::metadata(dir.join(f)).with_context(|| format!("cannot read {}", dir.join(f).display()))?;
        let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        text.push_str(&format!("{f}\t{}\t{}\n", meta.len(), mtime.map_or(0, |d| d.as_nanos())));
    }
    Ok(fnv1a(text.as_bytes()))
}

type Decoded = (Tensor, Vec<String>, Vec<(String, String)>);

fn read_cache(stem: &Path) -> Option<Decoded> {
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(stem.with_extension("json")).ok()?).ok()?;
    let names = |k: &str| -> Option<Vec<String>> { serde_json::from_value(meta[k].clone()).ok() };
    let kept = names("files")?;
    let skipped: Vec<String> = names("skipped")?;
    let reasons: Vec<String> = names("reasons")?;
    let tensors = Tensor::read_safetensors(stem.with_extension("safetensors")).ok()?;
    let images = tensors.into_iter().find(|(k, _)| k == "images")?.1;
    (images.size()[0] == kept.len() as i64).then(|| (images, kept, skipped.into_iter().zip(reasons).collect()))
}

fn write_cache(stem: &Path, images: &Tensor, kept: &[String], skipped: &[(String, String)]) -> Result<()> {
    let dir = stem.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the cache folder {}", dir.display()))?;
    let st = stem.with_extension("safetensors");
    let tmp = stem.with_extension("safetensors.partial");
    if images.numel() > 0 {
        Tensor::write_safetensors(&[("images", images)], &tmp)
            .with_context(|| format!("cannot write the cache {}", tmp.display()))?;
        std::fs::rename(&tmp, &st).with_context(|| format!("cannot write the cache {}", st.display()))?;
    }
    let meta = serde_json::json!({
        "files": kept,
        "skipped": skipped.iter().map(|s| &s.0).collect::<Vec<_>>(),
        "reasons": skipped.iter().map(|s| &s.1).collect::<Vec<_>>(),
    });
    crate::fsutil::write_atomic(&stem.with_extension("json"), meta.to_string().as_bytes())
}

/// Decodes every file on all cores with a progress bar.
fn decode_all(dir: &Path, files: &[String], look: Look) -> Result<Decoded> {
    let [c, h, w] = look.shape;
    let bar = crate::logging::progress_bar(files.len() as u64, "decoding [{bar:30}] {pos}/{len} pictures ETA {eta}");
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(files.len()).max(1);
    let started = std::time::Instant::now();
    let mut results: Vec<(usize, std::result::Result<Vec<u8>, String>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= files.len() {
                            break;
                        }
                        out.push((i, decode(&dir.join(&files[i]), look)));
                        bar.inc(1);
                    }
                    out
                })
            })
            .collect();
        workers.into_iter().flat_map(|t| t.join().unwrap_or_default()).collect()
    });
    bar.finish_and_clear();
    results.sort_by_key(|r| r.0);
    let mut pixels = Vec::with_capacity(files.len() * (c * h * w) as usize);
    let (mut kept, mut skipped) = (Vec::new(), Vec::new());
    for (i, r) in results {
        match r {
            Ok(p) => {
                pixels.extend_from_slice(&p);
                kept.push(files[i].clone());
            }
            Err(e) => skipped.push((files[i].clone(), e)),
        }
    }
    tracing::info!(
        "{}: decoded {} pictures to {c}x{h}x{w} in {:.1} s",
        dir.display(),
        kept.len(),
        started.elapsed().as_secs_f64()
    );
    let images = Tensor::from_slice(&pixels).view([kept.len() as i64, c, h, w]).to_kind(Kind::Uint8);
    Ok((images, kept, skipped))
}

/// The largest side of a picture decoded, in pixels.
pub const MAX_SIDE: u32 = 16384;
/// The most memory one picture may decode to.
pub const MAX_DECODED_BYTES: u64 = 512 << 20;

/// One picture as `u8 [C, H, W]` bytes.
pub fn decode(path: &Path, look: Look) -> std::result::Result<Vec<u8>, String> {
    let mut reader =
        image::ImageReader::open(path).map_err(|e| e.to_string())?.with_guessed_format().map_err(|e| e.to_string())?;
    // A small file can describe a huge picture (a decompression bomb): refuse what would not
    // fit these bounds before decoding it.
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits);
    if reader.format() == Some(image::ImageFormat::Jpeg) && !ends_a_jpeg(path) {
        // The decoder fills what is missing with grey or black and calls it a picture.
        return Err("truncated JPEG (no end-of-image marker)".into());
    }
    let mut img = reader.decode().map_err(|e| e.to_string())?;
    if img.color().has_alpha() {
        img = DynamicImage::ImageRgb8(look.background.flatten(&img));
    }
    let ([c, h, w], bg) = (look.shape, look.background);
    let (h, w) = (h as u32, w as u32);
    Ok(match c {
        1 => planar(&fit(&img.to_luma8(), h, w, look.resize, Luma([bg.luma()]))),
        _ => planar(&fit(&img.to_rgb8(), h, w, look.resize, Rgb(bg.0))),
    })
}

/// Whether a JPEG file holds its end-of-image marker (FF D9) near its end (some writers pad
/// after it).
fn ends_a_jpeg(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else { return false };
    let len = f.metadata().map_or(0, |m| m.len());
    let mut tail = Vec::new();
    let read = f.seek(SeekFrom::Start(len.saturating_sub(4096))).and_then(|_| f.take(4096).read_to_end(&mut tail));
    read.is_ok() && tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

/// Resizes (Catmull-Rom, which also filters when shrinking) to `h x w` as `resize` says;
/// `pad`'s borders are `fill`.
fn fit<P>(img: &ImageBuffer<P, Vec<u8>>, h: u32, w: u32, resize: Resize, fill: P) -> ImageBuffer<P, Vec<u8>>
where
    P: Pixel<Subpixel = u8> + 'static,
{
    let (w0, h0) = img.dimensions();
    if (w0, h0) == (w, h) {
        return img.clone();
    }
    let filter = FilterType::CatmullRom;
    match resize {
        Resize::Stretch => image::imageops::resize(img, w, h, filter),
        Resize::CenterCrop => {
            let s = (w as f64 / w0 as f64).max(h as f64 / h0 as f64);
            let (rw, rh) = (((w0 as f64 * s).round() as u32).max(w), ((h0 as f64 * s).round() as u32).max(h));
            let big = image::imageops::resize(img, rw, rh, filter);
            image::imageops::crop_imm(&big, (rw - w) / 2, (rh - h) / 2, w, h).to_image()
        }
        Resize::Pad => {
            let s = (w as f64 / w0 as f64).min(h as f64 / h0 as f64);
            let (rw, rh) = (((w0 as f64 * s).round() as u32).clamp(1, w), ((h0 as f64 * s).round() as u32).clamp(1, h));
            let small = image::imageops::resize(img, rw, rh, filter);
            let mut out = ImageBuffer::<P, Vec<u8>>::from_pixel(w, h, fill);
            image::imageops::replace(&mut out, &small, ((w - rw) / 2) as i64, ((h - rh) / 2) as i64);
            out
        }
    }
}

/// HWC pixels -> CHW bytes.
fn planar<P: Pixel<Subpixel = u8>>(img: &ImageBuffer<P, Vec<u8>>) -> Vec<u8> {
    let (w, h) = img.dimensions();
    let c = P::CHANNEL_COUNT as usize;
    let raw = img.as_raw();
    let mut out = vec![0u8; raw.len()];
    let plane = (w * h) as usize;
    for (i, px) in raw.chunks_exact(c).enumerate() {
        for (k, v) in px.iter().enumerate() {
            out[k * plane + i] = *v;
        }
    }
    out
}
