//! The edits themselves, batch by batch: the model as a noise predictor, the labels, the
//! reverse process, and the grid each mode writes.

use super::inputs::{self, Source};
use super::{EditRequest, Mode};
use crate::checkpoint::LoadedModel;
use crate::config::Config;
use crate::diffusion::editing;
use crate::diffusion::prediction::AsEps;
use crate::diffusion::reverse::{visited_steps, ReverseProcess, Sampler, Stepper};
use crate::draw::{resolve_label_name, LabelChoice};
use crate::error::UsageError;
use crate::{grid, logging};
use anyhow::{bail, Context, Result};
use std::path::Path;
use tch::{Kind, Tensor};

/// An edit ready to run: the model, its reverse process and the label.
pub struct Job<'a> {
    loaded: &'a LoadedModel,
    process: ReverseProcess,
    label: Option<i64>,
    batch: i64,
    pad: i64,
    bar: indicatif::ProgressBar,
}

impl<'a> Job<'a> {
    pub fn new(cfg: &Config, req: &EditRequest, loaded: &'a LoadedModel, path: &Path) -> Result<Job<'a>> {
        let mut process = cfg.sample.sampler_config();
        if loaded.model.needs_x0_clipping() {
            process.opts.clip_x0 = true;
        }
        if matches!(req.mode, Mode::Invert | Mode::Interpolate) {
            process.sampler = deterministic(cfg, req)?;
        }
        if req.resample > 1 && matches!(process.sampler, Sampler::DpmSolverPP { .. }) {
            bail!(UsageError(format!(
                "--resample {}: DPM-Solver++ keeps its last estimate between steps, so its steps cannot be retaken; \
                 use --sampler ddpm (RePaint's) or ddim",
                req.resample
            )));
        }
        let label = match (resolve_label_name(req.label.as_ref(), loaded, path)?, loaded.model.num_classes()) {
            (Some(_), 0) => bail!(UsageError(format!(
                "--label: {} is an unconditional model (network.num_classes = 0)",
                path.display()
            ))),
            (None, 0) if req.guidance_given => bail!(UsageError(format!(
                "--guidance: {} is an unconditional model; guidance needs --label and a conditional model",
                path.display()
            ))),
            (Some(LabelChoice::One(y)), k) if y < 0 || y >= k => {
                bail!(UsageError(format!("--label {y} is outside the model's classes 0..{}", k - 1)))
            }
            (Some(LabelChoice::One(y)), _) => Some(y),
            _ => None,
        };
        match label {
            Some(_) => loaded.info.warn_untrained_null_class(path, process.guidance),
            None => process.guidance = 1.0,
        }
        let bar = indicatif::ProgressBar::hidden();
        Ok(Job { loaded, process, label, batch: cfg.sample.batch_size.max(1), pad: cfg.sample.padding, bar })
    }

    /// Runs the mode, writes the grid (and the GIF and tensor), logs what the classifier says
    /// where the pictures' classes are known; returns inversion's reconstruction error.
    pub fn run(
        mut self,
        cfg: &Config,
        req: &EditRequest,
        src: Option<&Source>,
        to: Option<&Source>,
        (out, gif): (&Path, Option<&Path>),
    ) -> Result<Option<(f64, f64)>> {
        let shape = self.loaded.model.image_shape;
        let default_n = if matches!(src, Some(Source::Dataset(_))) { 16 } else { inputs::MAX_PICTURES };
        let n = req.n.unwrap_or(default_n);
        let load = |s: &Source| -> Result<(Tensor, Option<Tensor>)> {
            let (px, labels) = inputs::load(cfg, s, shape, n)?;
            Ok((
                self.loaded.model.layout(crate::data::to_signed_unit(&px.to_device(self.loaded.model.device()))),
                labels,
            ))
        };
        let pictures = src.map(load).transpose()?;
        tch::manual_seed(cfg.seed as i64);
        let steps = visited_steps(&self.loaded.model.scheduler, self.process.sampler).len();
        let (x0, classes) = pictures.map_or((None, None), |(x, l)| (Some(x), l));
        let count = x0.as_ref().map_or(1, |x| x.size()[0]) as u64;
        let rounds = match req.mode {
            Mode::Img2img => req.strengths.len().max(1) as u64,
            Mode::Inpaint => req.resample as u64,
            Mode::Invert => 2,
            Mode::Interpolate => 2 + req.frames as u64,
        };
        self.bar = logging::progress_bar(
            rounds * count * steps as u64,
            "editing [{bar:30}] {pos}/{len} steps {per_sec} ETA {eta}",
        );
        let (tiles, cols, results, error) = match (req.mode, x0.as_ref()) {
            (Mode::Img2img, Some(x)) => self.img2img(x, &req.strengths),
            (Mode::Inpaint, Some(x)) => self.inpaint(x, req.mask.as_deref().unwrap_or_default(), req.resample)?,
            (Mode::Invert, Some(x)) => self.invert(x),
            (Mode::Interpolate, _) => {
                let ends = match to {
                    Some(t) => {
                        Some((x0.as_ref().context("interpolate: no --input pictures")?.shallow_clone(), load(t)?.0))
                    }
                    None => None,
                };
                self.interpolate(ends, &req.seeds, req.frames, gif)?
            }
            (m, None) => bail!(UsageError(format!("{} needs --input", m.as_str()))),
        };
        self.bar.finish_and_clear();
        grid::save_png(&grid::grid_image(&tiles, cols, self.pad)?, out)
            .with_context(|| format!("cannot write {}", out.display()))?;
        tracing::info!("wrote {}", out.display());
        if let Some(t) = &req.save_tensor {
            crate::draw::save_samples(&results, t)?;
        }
        if let (Some(classes), Some(x), Mode::Img2img | Mode::Inpaint) = (classes, x0.as_ref(), req.mode) {
            // Where the classifier cannot be had (no test split), the edit stands without it.
            if let Err(e) = self.report_classes(cfg, x, &results, &classes) {
                tracing::info!("no classifier report: {e:#}");
            }
        }
        Ok(error)
    }

    /// The model as a noise predictor.
    fn net(&self) -> AsEps<'_> {
        let m = &self.loaded.model;
        let bf16 = self.process.bf16 && crate::precision::bf16_available(m.device());
        AsEps { net: m.net.as_ref(), prediction: m.prediction, scheduler: &m.scheduler, bf16 }
    }

    fn labels(&self, len: i64) -> Option<Tensor> {
        self.label.map(|y| Tensor::full([len], y, (Kind::Int64, self.loaded.model.device())))
    }

    /// `f(start, len)` over batches of `n`, concatenated.
    fn batches(&self, n: i64, mut f: impl FnMut(i64, i64) -> Tensor) -> Tensor {
        let parts: Vec<Tensor> = (0..n).step_by(self.batch as usize).map(|s| f(s, self.batch.min(n - s))).collect();
        Tensor::cat(&parts, 0)
    }

    /// A stepper over the reverse process for `labels`.
    fn stepper<'s>(&'s self, net: &'s AsEps<'s>, labels: Option<&'s Tensor>) -> Stepper<'s> {
        let mut s = Stepper::new(net, &self.loaded.model.scheduler, labels, &self.process);
        s.bar = self.bar.clone();
        s
    }

    /// Rows: the inputs, then the results at each strength.
    fn img2img(&self, x0: &Tensor, strengths: &[f64]) -> Grid {
        let (n, net, sched) = (x0.size()[0], self.net(), &self.loaded.model.scheduler.schedule);
        let strengths = if strengths.is_empty() { &[0.5][..] } else { strengths };
        let mut rows = vec![x0.shallow_clone()];
        for &s in strengths {
            rows.push(self.batches(n, |start, len| {
                let (x, y, noise) = (x0.narrow(0, start, len), self.labels(len), self.loaded.model.noise(len));
                editing::img2img(&mut self.stepper(&net, y.as_ref()), sched, &x, s, &noise)
            }));
            tracing::info!("strength {s}: row {}", rows.len());
        }
        let results = Tensor::cat(&rows[1..], 0);
        (Tensor::cat(&rows, 0), n, results, None)
    }

    /// Rows: the inputs, the inputs with the region to regenerate in grey, the results.
    fn inpaint(&self, x0: &Tensor, mask: &str, resample: usize) -> Result<Grid> {
        let (n, net, sched) = (x0.size()[0], self.net(), &self.loaded.model.scheduler.schedule);
        let regen = inputs::mask(mask, self.loaded.model.image_shape)?.to_device(x0.device());
        let keep = regen.eq(0.0);
        let out = self.batches(n, |start, len| {
            let (x, y, noise) = (x0.narrow(0, start, len), self.labels(len), self.loaded.model.noise(len));
            editing::inpaint(&mut self.stepper(&net, y.as_ref()), sched, &x, &keep, &noise, resample)
        });
        let shown = x0.where_self(&keep.expand_as(x0), &x0.zeros_like());
        Ok((Tensor::cat(&[x0, &shown, &out], 0), n, out, None))
    }

    /// Rows: the inputs, their inverted noise, the pictures drawn from it; the error is logged.
    fn invert(&self, x0: &Tensor) -> Grid {
        let n = x0.size()[0];
        let noise = self.batches(n, |s, len| self.invert_batch(&x0.narrow(0, s, len)));
        let back = self.decode(&noise);
        let diff = (&back - x0).abs() / 2.0;
        let rmse = diff.square().mean(Kind::Float).sqrt().double_value(&[]);
        let max = diff.max().double_value(&[]);
        tracing::info!(
            "reconstruction error over {n} pictures ({} DDIM steps): rms {rmse:.4}, largest {max:.4} (pixel values in [0, 1]); PSNR {:.1} dB",
            visited_steps(&self.loaded.model.scheduler, self.process.sampler).len(),
            -20.0 * rmse.max(1e-12).log10()
        );
        let shown = (&noise / 2.0).clamp(-1.0, 1.0);
        (Tensor::cat(&[x0, &shown, &back], 0), n, back, Some((rmse, max)))
    }

    fn invert_batch(&self, x: &Tensor) -> Tensor {
        let (net, y) = (self.net(), self.labels(x.size()[0]));
        let ts = visited_steps(&self.loaded.model.scheduler, self.process.sampler);
        self.bar.inc((x.size()[0] as usize * ts.len()) as u64);
        editing::invert(&net, &self.loaded.model.scheduler.schedule, x, &ts, y.as_ref(), self.process.guidance)
    }

    /// The deterministic sampler from `noise`, in batches.
    fn decode(&self, noise: &Tensor) -> Tensor {
        let net = self.net();
        self.batches(noise.size()[0], |s, len| {
            let y = self.labels(len);
            let mut st = self.stepper(&net, y.as_ref());
            let mut x = noise.narrow(0, s, len);
            for i in 0..st.ts.len() {
                x = st.step(i, &x);
            }
            x
        })
    }

    /// Rows: one per pair of ends, `frames` pictures each; the GIF shows the frames in turn.
    fn interpolate(
        &self,
        ends: Option<(Tensor, Tensor)>,
        seeds: &[u64],
        frames: i64,
        gif: Option<&Path>,
    ) -> Result<Grid> {
        let (za, zb) = match ends {
            Some((a, b)) => {
                let p = a.size()[0].min(b.size()[0]);
                let (a, b) = (a.narrow(0, 0, p), b.narrow(0, 0, p));
                (
                    self.batches(p, |s, len| self.invert_batch(&a.narrow(0, s, len))),
                    self.batches(p, |s, len| self.invert_batch(&b.narrow(0, s, len))),
                )
            }
            None => {
                let noise_of = |seed: u64| {
                    tch::manual_seed(seed as i64);
                    self.loaded.model.noise(1)
                };
                (noise_of(seeds[0]), noise_of(seeds[1]))
            }
        };
        let p = za.size()[0];
        let path: Vec<Tensor> = (0..frames).map(|k| editing::slerp(&za, &zb, k as f64 / (frames - 1) as f64)).collect();
        // [frames, P, ...] -> [P, frames, ...]: a row per pair.
        let stacked = Tensor::stack(&path, 0).transpose(0, 1).contiguous();
        let s = stacked.size();
        let pictures = self.decode(&stacked.view([p * frames, s[2], s[3], s[4]]));
        if let Some(gif) = gif {
            let per: Vec<Tensor> =
                (0..frames).map(|k| pictures.view([p, frames, s[2], s[3], s[4]]).select(1, k)).collect();
            crate::reverse_pictures::write_gif(&per, gif, self.pad)?;
            tracing::info!("wrote {}", gif.display());
        }
        Ok((pictures.shallow_clone(), frames, pictures, None))
    }

    /// What ddpm eval's classifier says: how many results keep their picture's class, or
    /// (with --label) are of the asked class, beside the same count for the inputs.
    fn report_classes(&self, cfg: &Config, x0: &Tensor, results: &Tensor, classes: &Tensor) -> Result<()> {
        let device = self.loaded.model.device();
        let train = crate::data::load(&cfg.dataset, crate::data::Split::Train)?;
        let test = crate::data::load(&cfg.dataset, crate::data::Split::Test)?;
        let clf = crate::score::classifier_for(&cfg.dataset, &train, &test, device)?;
        let n = x0.size()[0];
        let predicted = |x: &Tensor| clf.embed(&x.contiguous()).1.argmax(-1, false);
        let (want, what) = match self.label {
            Some(y) => (Tensor::full([n], y, (Kind::Int64, tch::Device::Cpu)), format!("are classified as class {y}")),
            None => (classes.shallow_clone(), "keep their picture's class".to_string()),
        };
        let hits = |p: &Tensor| p.eq_tensor(&want).sum(Kind::Int64).int64_value(&[]);
        let per_row: Vec<String> =
            results.split(n, 0).iter().map(|r| format!("{} of {n}", hits(&predicted(r)))).collect();
        tracing::info!(
            "classifier: {} results {what} (the inputs: {} of {n})",
            per_row.join(", "),
            hits(&predicted(x0))
        );
        Ok(())
    }
}

/// Tiles (row-major), columns, the plain results, and inversion's error.
type Grid = (Tensor, i64, Tensor, Option<(f64, f64)>);

/// Inversion and interpolation run DDIM with eta 0 over `sample.steps`: refused when another
/// sampler or eta was asked for explicitly.
fn deterministic(cfg: &Config, req: &EditRequest) -> Result<Sampler> {
    let m = req.mode.as_str();
    if let Some(s) = req.sampler_given.as_deref().filter(|s| *s != "ddim") {
        bail!(UsageError(format!(
            "--sampler {s}: {m} runs DDIM with eta 0 (deterministic, so a picture maps to one noise and back); \
             use --sampler ddim or leave it out"
        )));
    }
    if let Some(e) = req.eta_given.filter(|&e| e != 0.0) {
        bail!(UsageError(format!("--eta {e}: {m} runs DDIM with eta 0 (deterministic); leave --eta out")));
    }
    let steps = cfg.sample.steps.max(1) as usize;
    if cfg.sample.sampler != crate::diffusion::reverse::SamplerKind::Ddim || cfg.sample.eta != 0.0 {
        tracing::info!("{m}: DDIM with eta 0 over {steps} steps (--steps to change)");
    }
    Ok(Sampler::Ddim { steps, eta: 0.0, spacing: cfg.sample.spacing })
}
