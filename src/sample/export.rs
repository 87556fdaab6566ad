//! `ddpm sample --format png-dir | npz`: samples as the tools that score generators read them
//! (pytorch-fid and clean-fid read a folder of PNGs; guided-diffusion's evaluator and
//! torch-fidelity an `.npz` whose `arr_0` is `uint8 [N, H, W, C]`, with the labels in `arr_1`).
//!
//! The images are drawn in batches of `sample.batch_size`, batch `k` from noise seeded by
//! `(seed, k)` (by the process `k mod N` of a data-parallel export), and written as they come: PNGs straight into the folder, `.npz` batches into
//! `<out>.parts/` until the last one, when the archive is put together. `--resume` skips the
//! batches already written, so an interrupted export continued gives the same files as one
//! that ran through. A manifest (`ddpm-export.json` in the folder, `<out>.parts/manifest.json`)
//! holds the settings, and a resume with other settings is refused.

use crate::config::sample::Format;
use crate::diffusion_model::Model;
use crate::draw;
use crate::error::UsageError;
use crate::grid;
use crate::run_dir::files;
use crate::shard::Shard;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// An export to run.
pub struct Export<'a> {
    pub model: &'a Model,
    /// `i64 [n]` on the model's device, for a conditional model.
    pub labels: Option<&'a Tensor>,
    pub n: i64,
    pub batch: i64,
    pub seed: u64,
    pub sampler: &'a crate::diffusion::reverse::ReverseProcess,
    pub format: Format,
    pub out: &'a Path,
    pub resume: bool,
    /// What the export depends on (checkpoint, sampler settings, ...): a resume must match.
    pub settings: serde_json::Value,
}

/// The default output of a format under the run folder.
pub fn default_out(run_dir: &Path, format: Format) -> PathBuf {
    match format {
        Format::Grid => run_dir.join(files::SAMPLES_GRID),
        Format::PngDir => run_dir.join(files::SAMPLES_PNG_DIR),
        Format::Npz => run_dir.join(files::SAMPLES_NPZ),
    }
}

fn parts_dir(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".parts");
    PathBuf::from(s)
}

/// Runs the export, this process's share of it when `shard` is one of several (rank 0 checks
/// or writes the manifest first and puts the `.npz` together at the end); returns the number
/// of batches drawn now by all processes (the others were already there).
pub fn run(e: &Export, shard: &Shard) -> Result<i64> {
    let batch = e.batch.clamp(1, e.n.max(1));
    let batches = (e.n + batch - 1) / batch;
    let (work, manifest) = match e.format {
        Format::PngDir => (e.out.to_path_buf(), e.out.join("ddpm-export.json")),
        Format::Npz => (parts_dir(e.out), parts_dir(e.out).join("manifest.json")),
        Format::Grid => bail!("a grid is not an export"),
    };
    // The number of processes is not a setting: any number gives the same images.
    let mut settings = e.settings.clone();
    settings["n"] = e.n.into();
    settings["batch"] = batch.into();
    settings["seed"] = e.seed.into();
    settings["format"] = e.format.as_str().into();
    let prepared = match shard.is_main() {
        true => prepare(e, &work, &manifest, &settings).map(Some),
        false => Ok(None),
    };
    if !shard.agree(prepared.is_ok())? {
        prepared?;
        bail!("rank 0 could not start the export (its message says why)");
    }
    let _lock = prepared?;
    // A batch is done when its files are there whole (each is written atomically; one cut short
    // or replaced by hand is drawn again): every PNG decodes, at the model's size.
    let [c, h, w] = e.model.image_shape;
    let done = |k: i64| -> bool {
        let b = batch.min(e.n - k * batch);
        match e.format {
            Format::PngDir => (k * batch..k * batch + b).all(|i| {
                image::open(work.join(format!("{i:06}.png")))
                    .is_ok_and(|p| (p.width(), p.height()) == (w as u32, h as u32))
            }),
            _ => std::fs::metadata(work.join(format!("batch-{k:06}.u8")))
                .is_ok_and(|m| m.is_file() && m.len() == (b * c * h * w) as u64),
        }
    };
    let mine = shard.mine(batches);
    let todo: Vec<i64> = mine.iter().copied().filter(|&k| !done(k)).collect();
    if todo.len() < mine.len() {
        tracing::info!(
            "{}: {} of {} batches are there already, drawing the other {}",
            e.out.display(),
            mine.len() - todo.len(),
            mine.len(),
            todo.len()
        );
    }
    let images = |ks: &[i64]| ks.iter().map(|&k| batch.min(e.n - k * batch)).sum::<i64>() as u64;
    let bar =
        crate::logging::progress_bar(images(&mine), "exporting [{bar:30}] {pos}/{len} images {per_sec} ETA {eta}");
    bar.set_position(images(&mine) - images(&todo));
    for &k in &todo {
        let b = batch.min(e.n - k * batch);
        let xs = draw::draw_batch(e.model, e.labels, (k, k * batch, b), e.seed, e.sampler, true);
        match e.format {
            Format::PngDir => {
                for j in 0..b {
                    let path = work.join(format!("{:06}.png", k * batch + j));
                    grid::save_png(&grid::grid_image(&xs.narrow(0, j, 1), 1, 0)?, &path)?;
                }
            }
            _ => {
                let px = grid::to_pixels(&xs).permute([0, 2, 3, 1]).contiguous();
                let mut buf = vec![0u8; px.numel()];
                let len = buf.len();
                px.copy_data(&mut buf, len);
                crate::fsutil::write_atomic(&work.join(format!("batch-{k:06}.u8")), &buf)?;
            }
        }
        bar.inc(b as u64);
    }
    bar.finish_and_clear();
    let drawn = shard.sum(todo.len() as i64)?;
    if e.format == Format::Npz && shard.is_main() {
        write_npz(e.out, &work, batches, [e.n, h, w, c], e.labels)?;
        std::fs::remove_dir_all(&work).with_context(|| format!("cannot remove {}", work.display()))?;
    }
    Ok(drawn)
}

/// Checks the manifest of an export to resume, or writes the one of a new export; returns the
/// export folder's lock.
fn prepare(e: &Export, work: &Path, manifest: &Path, settings: &serde_json::Value) -> Result<crate::run_dir::RunLock> {
    if manifest.exists() {
        if !e.resume {
            bail!(UsageError(format!(
                "{} holds an export already: add --resume to continue it, or choose another --out",
                e.out.display()
            )));
        }
        let had: serde_json::Value = serde_json::from_slice(&std::fs::read(manifest)?)
            .with_context(|| format!("cannot read {}", manifest.display()))?;
        if had != *settings {
            bail!(UsageError(format!(
                "--resume: {} was exported with other settings ({}), not {}: continue it with those, or choose another --out",
                e.out.display(),
                had,
                settings
            )));
        }
    } else {
        if e.format == Format::Npz && e.out.exists() {
            bail!(UsageError(match e.resume {
                true => format!(
                    "--resume: {} is a finished export (its parts are gone), nothing to resume: choose another --out, or remove it to export again",
                    e.out.display()
                ),
                false => format!("{} exists: choose another --out or remove it", e.out.display()),
            }));
        }
        std::fs::create_dir_all(work).with_context(|| format!("cannot create {}", work.display()))?;
    }
    let lock = crate::run_dir::RunLock::acquire_export(work, e.out)?;
    if !manifest.exists() {
        crate::fsutil::write_atomic(manifest, settings.to_string().as_bytes())?;
    }
    crate::fsutil::remove_stale_temps(work);
    Ok(lock)
}

/// A `.npy` header (version 1.0) for a C-ordered array.
fn npy_header(descr: &str, shape: &[i64]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + dict + newline, padded to a multiple of 64.
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// CRC-32 (IEEE), as zip wants it.
struct Crc32(u32);

impl Crc32 {
    fn update(&mut self, data: &[u8]) {
        let mut c = !self.0;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 };
            }
        }
        self.0 = !c;
    }
}

/// Writes `arr_0` (and `arr_1` with the labels) as an uncompressed zip, as `numpy.savez`
/// does, from the batch files; atomically.
fn write_npz(out: &Path, parts: &Path, batches: i64, shape: [i64; 4], labels: Option<&Tensor>) -> Result<()> {
    let mut members: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    let mut data = vec![npy_header("|u1", &shape)];
    for k in 0..batches {
        let p = parts.join(format!("batch-{k:06}.u8"));
        data.push(std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?);
    }
    members.push(("arr_0.npy".into(), data));
    if let Some(l) = labels {
        let v = Vec::<i64>::try_from(&l.to_device(tch::Device::Cpu))?;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        members.push(("arr_1.npy".into(), vec![npy_header("<i8", &[v.len() as i64]), bytes]));
    }
    let total: usize = members.iter().map(|m| m.1.iter().map(Vec::len).sum::<usize>()).sum();
    if total as u64 >= u32::MAX as u64 - 4096 {
        bail!(UsageError(format!(
            "{}: {total} bytes are too many for an npz without zip64: use --format png-dir",
            out.display()
        )));
    }
    let tmp = crate::fsutil::temp_path(out);
    let written = (|| -> Result<()> {
        let f = std::fs::File::create(&tmp)?;
        let mut f = std::io::BufWriter::new(f);
        write_stored_zip(&mut f, &members)?;
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        // The parts stay, so `--resume` puts the archive together once there is room.
        return Err(e.context(format!("cannot write {} (as {})", out.display(), tmp.display())));
    }
    std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}

/// A zip archive of `members` (name, content in chunks), stored without compression.
fn write_stored_zip(f: &mut impl Write, members: &[(String, Vec<Vec<u8>>)]) -> Result<()> {
    let mut central = Vec::new();
    let mut offset = 0u32;
    for (name, chunks) in members {
        let mut crc = Crc32(0);
        let mut size = 0u32;
        for c in chunks {
            crc.update(c);
            size += c.len() as u32;
        }
        let entry = ZipEntry { name, crc: crc.0, size, offset };
        let local = entry.header(false);
        f.write_all(&local)?;
        for c in chunks {
            f.write_all(c)?;
        }
        central.extend(entry.header(true));
        offset += local.len() as u32 + size;
    }
    let mut end = Vec::new();
    end.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    end.extend_from_slice(&[0u8; 4]); // disk numbers
    end.extend_from_slice(&(members.len() as u16).to_le_bytes());
    end.extend_from_slice(&(members.len() as u16).to_le_bytes());
    end.extend_from_slice(&(central.len() as u32).to_le_bytes());
    end.extend_from_slice(&offset.to_le_bytes());
    end.extend_from_slice(&0u16.to_le_bytes());
    f.write_all(&central)?;
    f.write_all(&end)?;
    Ok(())
}

/// One stored member of a zip archive.
struct ZipEntry<'a> {
    name: &'a str,
    crc: u32,
    size: u32,
    /// Where its local header starts.
    offset: u32,
}

impl ZipEntry<'_> {
    /// The local file header, or the central directory's record of the member.
    fn header(&self, central: bool) -> Vec<u8> {
        let sig: u32 = if central { 0x0201_4b50 } else { 0x0403_4b50 };
        let mut h = Vec::new();
        h.extend_from_slice(&sig.to_le_bytes());
        if central {
            h.extend_from_slice(&20u16.to_le_bytes()); // made by
        }
        h.extend_from_slice(&20u16.to_le_bytes()); // needed to extract
        h.extend_from_slice(&0u16.to_le_bytes()); // flags
        h.extend_from_slice(&0u16.to_le_bytes()); // stored
        h.extend_from_slice(&0u16.to_le_bytes()); // time
        h.extend_from_slice(&0x21u16.to_le_bytes()); // date: 1980-01-01
        h.extend_from_slice(&self.crc.to_le_bytes());
        h.extend_from_slice(&self.size.to_le_bytes());
        h.extend_from_slice(&self.size.to_le_bytes());
        h.extend_from_slice(&(self.name.len() as u16).to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes()); // extra
        if central {
            h.extend_from_slice(&0u16.to_le_bytes()); // comment
            h.extend_from_slice(&0u16.to_le_bytes()); // disk
            h.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
            h.extend_from_slice(&0u32.to_le_bytes()); // external attributes
            h.extend_from_slice(&self.offset.to_le_bytes());
        }
        h.extend_from_slice(self.name.as_bytes());
        h
    }
}
