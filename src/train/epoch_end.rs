//! What a run writes besides checkpoints: the loss rows of metrics.jsonl and TensorBoard at
//! each log step, and at the end of each epoch the loss plot, a grid of samples from the
//! (EMA) model, and every `eval_every` epochs a small evaluation.

use super::Trainer;
use crate::diffusion::ddim::Spacing;
use crate::diffusion::reverse::{ReverseProcess, Sampler};
use crate::draw::{self, Request};
use crate::run_dir::files;
use crate::tensorboard::EventWriter;
use crate::{fsutil, grid, plot};
use anyhow::{Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use tch::Tensor;

/// metrics.jsonl and the TensorBoard events (written by rank 0 only).
pub(super) struct Logs {
    metrics: File,
    tb: EventWriter,
}

impl Logs {
    pub(super) fn open(run_dir: &Path) -> Result<Self> {
        let metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(run_dir.join(files::METRICS))
            .with_context(|| format!("cannot write metrics into {}", run_dir.display()))?;
        Ok(Self { metrics, tb: EventWriter::create(&run_dir.join("tensorboard"))? })
    }

    /// One logged window: a metrics row and the loss and speed in TensorBoard.
    pub(super) fn window(&mut self, row: &serde_json::Value, step: i64, loss: f64, images_per_sec: f64) -> Result<()> {
        writeln!(self.metrics, "{row}").context("writing metrics.jsonl")?;
        self.tb.scalar("train/loss", step, loss)?;
        self.tb.scalar("train/images_per_sec", step, images_per_sec)
    }

    pub(super) fn epoch(&mut self, step: i64, epoch_loss: f64) -> Result<()> {
        self.tb.scalar("train/epoch_loss", step, epoch_loss)?;
        self.tb.flush()
    }

    pub(super) fn flush(&mut self) -> Result<()> {
        self.tb.flush()
    }

    /// The epoch's grid in TensorBoard's image tab.
    fn grid(&mut self, step: i64, img: &image::DynamicImage) -> Result<()> {
        let png = grid::png_bytes(img)?;
        self.tb.image("samples", step, &png, img.height(), img.width(), img.color().channel_count() as u32)?;
        self.tb.flush()
    }
}

impl Trainer<'_> {
    /// Rank 0's work at the end of an epoch (or of a run that stops inside one).
    pub(super) fn epoch_end(&mut self, epoch: i64, complete: bool, logs: &mut Logs) -> Result<()> {
        let c = self.cfg;
        // The other workers wait meanwhile: let rank 0 use the machine's cores.
        let threads = tch::get_num_threads();
        if self.dist.is_some() && c.threads == 0 {
            tch::set_num_threads(std::thread::available_parallelism().map_or(1, |n| n.get()) as i32);
        }
        self.save(complete)?;
        let spe = self.steps_per_epoch();
        let epoch_ends: Vec<i64> = (1..=epoch).map(|e| e * spe).collect();
        plot::save_loss_plot(
            &self.plot_title("training loss"),
            &self.curve,
            &epoch_ends,
            &self.run_dir.join(files::LOSS_PLOT),
        )?;
        if c.train.grid_samples > 0 {
            let img = self.write_grid(epoch)?;
            logs.grid(self.pos.step, &img)?;
        }
        if c.train.eval_every > 0 && epoch % c.train.eval_every == 0 {
            self.evaluate(epoch)?;
        }
        tch::set_num_threads(threads);
        Ok(())
    }

    /// `n` images from the EMA weights (if any) with the run's seed, without a progress bar.
    fn draw(&self, n: i64, labels: Option<&Tensor>, sampler: &ReverseProcess) -> Tensor {
        let c = self.cfg;
        let req = Request { n, labels, batch: c.sample.batch_size, seed: c.seed, sampler, progress: false };
        draw::draw(self.learner.sampling_model(), &req, None)
    }

    /// The per-epoch grid from the EMA weights (if any), with fixed noise and the grid's
    /// sampler (`train.grid_sampler`, `grid_steps`); conditional models get one row per class.
    fn write_grid(&self, epoch: i64) -> Result<image::DynamicImage> {
        let c = self.cfg;
        let model = self.learner.sampling_model();
        let classes = model.num_classes();
        let labels = (classes > 0)
            .then(|| draw::rows_of_labels(classes, (c.train.grid_samples + classes - 1) / classes, model.device()));
        let n = labels.as_ref().map_or(c.train.grid_samples, |l| l.size()[0]);
        // (Guidance only acts where there are labels.)
        let sc = c.sample.reverse_process(c.train.grid_sampler, c.train.grid_steps);
        let xs = self.draw(n, labels.as_ref(), &sc);
        let path = self.run_dir.join("samples").join(format!("epoch-{epoch:04}.png"));
        let cols = if classes > 0 { n / classes } else { grid::default_cols(n) };
        let img = grid::grid_image(&xs, cols, c.sample.padding)?;
        grid::save_png(&img, &path)?;
        tracing::info!("wrote {}", path.display());
        Ok(img)
    }

    /// A small evaluation (DDIM-50 from the EMA weights) appended to evals.jsonl and eval.png.
    fn evaluate(&self, epoch: i64) -> Result<()> {
        let Some((clf, test)) = &self.evaluator else { return Ok(()) };
        let c = self.cfg;
        let model = self.learner.sampling_model();
        let n = c.train.eval_samples.min(test.len() / 2);
        let classes = model.num_classes();
        let labels = draw::cycling_labels(n, classes, model.device());
        let sc = ReverseProcess {
            sampler: Sampler::Ddim { steps: 50, eta: c.sample.eta, spacing: Spacing::Uniform },
            ..c.sample.sampler_config()
        };
        let xs = self.draw(n, labels.as_ref(), &sc);
        let s = crate::score::score_samples(clf, test, &xs, labels.as_ref());
        tracing::info!(
            "eval at epoch {epoch}: Frechet distance {:.3} (real vs real {:.3}), classifier score {:.3}, class entropy {:.3}{}",
            s.frechet_distance,
            s.frechet_distance_real,
            s.classifier_score,
            s.class_entropy,
            s.label_fidelity.map_or(String::new(), |f| format!(", label fidelity {f:.3}"))
        );
        let row = serde_json::json!({
            "step": self.pos.step, "epoch": epoch, "sampler": "ddim", "steps": 50, "eta": c.sample.eta, "n": n, "seed": c.seed,
            "frechet_distance": s.frechet_distance, "frechet_distance_real": s.frechet_distance_real,
            "classifier_score": s.classifier_score, "classifier_score_real": s.classifier_score_real,
            "class_entropy": s.class_entropy, "class_entropy_real": s.class_entropy_real, "label_fidelity": s.label_fidelity,
        });
        let path = self.run_dir.join(files::EVALS);
        fsutil::append_line(&path, &row.to_string())?;
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let rows: Vec<(i64, f64, f64)> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| {
                Some((v["epoch"].as_i64()?, v["frechet_distance"].as_f64()?, v["frechet_distance_real"].as_f64()?))
            })
            .collect();
        plot::save_eval_plot(&self.plot_title("evaluation (DDIM-50)"), &rows, &self.run_dir.join(files::EVAL_PLOT))
    }

    /// `what` of this run: its folder, dataset and network kind.
    fn plot_title(&self, what: &str) -> String {
        let run =
            self.run_dir.file_name().map_or_else(|| self.run_dir.display().to_string(), |n| n.to_string_lossy().into());
        format!("{run}: {what} ({}, {} network)", self.cfg.dataset.name, self.cfg.network.kind())
    }
}
