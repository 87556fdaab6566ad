//! `ddpm edit`: a trained model used on pictures one has. Image-to-image (SDEdit), inpainting
//! (RePaint), DDIM inversion and interpolation, each written as a PNG grid with the inputs
//! beside the results (interpolation as a strip and a GIF), the plain results optionally as a
//! tensor file; the maths is in `diffusion/editing.rs`.

pub mod inputs;
mod run;

use crate::checkpoint;
use crate::config::Config;
use crate::draw::LabelChoice;
use crate::error::UsageError;
use anyhow::{bail, Result};
use inputs::Source;
use std::path::{Path, PathBuf};

/// What `ddpm edit` does with the pictures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Noise each picture to --strength and denoise it back (SDEdit): 0 keeps it, 1 draws a
    /// fresh sample; a comma list gives one row per strength.
    Img2img,
    /// Keep the pixels outside --mask, regenerate those inside (RePaint with --resample).
    Inpaint,
    /// DDIM inversion: each picture back to its noise, then drawn again from it; prints the
    /// reconstruction error.
    Invert,
    /// A smooth sequence between two pictures (--input, --to; through their inverted noise) or
    /// two seeds (--seeds A,B): spherical interpolation of the noise, as a strip PNG and a GIF.
    Interpolate,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Img2img => "img2img",
            Mode::Inpaint => "inpaint",
            Mode::Invert => "invert",
            Mode::Interpolate => "interpolate",
        }
    }
}

/// Everything `ddpm edit` was asked, beyond the configuration.
#[derive(Debug, Clone)]
pub struct EditRequest {
    pub mode: Mode,
    pub input: Option<String>,
    pub to: Option<String>,
    pub seeds: Vec<u64>,
    pub n: Option<i64>,
    pub mask: Option<String>,
    pub strengths: Vec<f64>,
    pub resample: usize,
    pub frames: i64,
    pub out: Option<PathBuf>,
    pub save_tensor: Option<PathBuf>,
    pub checkpoint: Option<PathBuf>,
    pub label: Option<LabelChoice>,
    /// `--guidance` given explicitly (an error for unconditional models).
    pub guidance_given: bool,
    /// `--sampler` and `--eta` as given (inversion and interpolation run DDIM with eta 0).
    pub sampler_given: Option<String>,
    pub eta_given: Option<f64>,
}

/// What an edit wrote and measured.
#[derive(Debug)]
pub struct EditReport {
    pub out: PathBuf,
    /// The GIF beside an interpolation's strip.
    pub gif: Option<PathBuf>,
    /// Inversion: the root-mean-square and largest reconstruction error, in pixel units of
    /// [0, 1].
    pub reconstruction: Option<(f64, f64)>,
}

impl EditRequest {
    /// The flags that go with another mode, and the values out of range, before anything is
    /// loaded.
    fn check(&self) -> Result<()> {
        let m = self.mode;
        let only = |given: bool, flag: &str, mode: Mode| -> Result<()> {
            match given && m != mode {
                true => {
                    bail!(UsageError(format!("{flag} goes with `ddpm edit {}`, not {}", mode.as_str(), m.as_str())))
                }
                false => Ok(()),
            }
        };
        only(self.mask.is_some(), "--mask", Mode::Inpaint)?;
        only(self.resample != 1, "--resample", Mode::Inpaint)?;
        only(!self.strengths.is_empty(), "--strength", Mode::Img2img)?;
        only(self.to.is_some(), "--to", Mode::Interpolate)?;
        only(!self.seeds.is_empty(), "--seeds", Mode::Interpolate)?;
        if let Some(s) = self.strengths.iter().find(|s| !(0.0..=1.0).contains(*s)) {
            bail!(UsageError(format!(
                "--strength {s} is outside [0, 1] (0 = the input unchanged, 1 = a fresh sample)"
            )));
        }
        if self.resample == 0 || self.resample > 100 {
            bail!(UsageError(format!(
                "--resample {} is not allowed: 1 (no resampling) to 100 (RePaint uses 10)",
                self.resample
            )));
        }
        if let Some(n) = self.n.filter(|&n| !(1..=inputs::MAX_PICTURES).contains(&n)) {
            bail!(UsageError(format!("-n {n} is not allowed: 1 to {} pictures", inputs::MAX_PICTURES)));
        }
        if self.label == Some(LabelChoice::All) {
            bail!(UsageError("--label all: an edit takes one class (a number or a name)".into()));
        }
        match m {
            Mode::Inpaint if self.mask.is_none() => bail!(UsageError(format!(
                "inpaint needs --mask: a PNG of the model's size (white = regenerate) or one of {}",
                inputs::REGIONS.join(", ")
            ))),
            Mode::Interpolate => self.check_interpolation(),
            _ if self.input.is_none() => {
                bail!(UsageError(format!("{} needs --input: a picture, a folder, an .npz or dataset:test", m.as_str())))
            }
            _ => Ok(()),
        }
    }

    fn check_interpolation(&self) -> Result<()> {
        if !(2..=64).contains(&self.frames) {
            bail!(UsageError(format!("--frames {} is not allowed: 2 to 64 (both ends included)", self.frames)));
        }
        if !self.seeds.is_empty() && self.seeds.len() != 2 {
            bail!(UsageError(format!("--seeds takes two seeds, A,B (got {})", self.seeds.len())));
        }
        match (self.seeds.is_empty(), self.input.is_some(), self.to.is_some()) {
            (false, false, false) => Ok(()),
            (true, true, true) => Ok(()),
            (false, _, _) => {
                bail!(UsageError("--seeds A,B interpolates between two noises: drop --input and --to".into()))
            }
            _ => bail!(UsageError("interpolate needs two ends: --input A.png --to B.png, or --seeds A,B".into())),
        }
    }
}

/// `ddpm edit`: check the request and the outputs, load the model and the pictures, edit,
/// write.
pub fn edit(cfg: &Config, req: &EditRequest) -> Result<EditReport> {
    req.check()?;
    let device = crate::device::resolve(&cfg.device)?;
    cfg.sample.check_precision(device)?;
    let hint = "train first (`ddpm train --config ...`) or pass --checkpoint PATH";
    let path = checkpoint::resolve_for_sampling(cfg, req.checkpoint.as_deref(), hint)?;
    let src = req.input.as_deref().map(|s| Source::parse("--input", s)).transpose()?;
    let to = req.to.as_deref().map(|s| Source::parse("--to", s)).transpose()?;
    let out = req.out.clone().unwrap_or_else(|| cfg.train.run_dir.join(format!("edit-{}.png", req.mode.as_str())));
    let gif = (req.mode == Mode::Interpolate).then(|| out.with_extension("gif"));
    let sources: Vec<&Path> = [&src, &to].into_iter().flatten().filter_map(|s| s.path()).collect();
    check_outputs(cfg, req, &out, gif.as_deref(), &sources)?;
    let loaded = checkpoint::load_for_sampling(cfg, &path, device)?;
    let job = run::Job::new(cfg, req, &loaded, &path)?;
    let reconstruction = job.run(cfg, req, src.as_ref(), to.as_ref(), (&out, gif.as_deref()))?;
    Ok(EditReport { out, gif, reconstruction })
}

/// The grid must be a `.png`, the tensor a `.safetensors`; none may replace a checkpoint, an
/// input picture, or lie in the training pictures.
fn check_outputs(cfg: &Config, req: &EditRequest, out: &Path, gif: Option<&Path>, sources: &[&Path]) -> Result<()> {
    use crate::run_dir::check_output_named as named;
    let inputs = (cfg.dataset.name == crate::data::DatasetName::Folder).then_some(cfg.dataset.path.as_path());
    let mut outs = vec![out.to_path_buf()];
    named(out, &["png"], "an edit's grid is a PNG picture", inputs)?;
    if let Some(g) = gif {
        named(g, &["gif"], "an interpolation's animation is a GIF", inputs)?;
        outs.push(g.to_path_buf());
    }
    if let Some(t) = &req.save_tensor {
        named(t, &["safetensors"], "--save-tensor writes a safetensors file", inputs)?;
        outs.push(t.clone());
    }
    for o in &outs {
        let o = o.canonicalize().unwrap_or_else(|_| o.clone());
        for s in sources {
            let s = s.canonicalize().unwrap_or_else(|_| s.to_path_buf());
            if o == s || o.starts_with(&s) {
                bail!(UsageError(format!(
                    "will not write {}: it is (or lies inside) the input {} (pick another path)",
                    o.display(),
                    s.display()
                )));
            }
        }
    }
    Ok(())
}
