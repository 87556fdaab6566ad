//! The command line. The `///` docs here are the `--help` text.

mod edit;
mod reverse;

use clap::{Args, Parser, Subcommand};
pub use edit::{EditArgs, EditMode};
pub use reverse::ReverseArgs;
use std::path::PathBuf;

/// Train, sample and edit with DDPM image generators (MNIST, Fashion-MNIST, CIFAR-10, your own
/// pictures) on libtorch.
///
/// Everything is set in a YAML file (default: options.yml; every key is documented there and
/// in README.md). Flags override the file; `--set section.key=value` overrides any key.
///
/// Examples:
///   ddpm train --config options.yml
///   ddpm sample --n-samples 81 --out digits.png
///   ddpm train --set train.lr=2e-4 --epochs 20
///   ddpm edit inpaint --input dataset:test --mask bottom-half
#[derive(Debug, Parser)]
#[command(name = "ddpm", version, verbatim_doc_comment, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// The YAML configuration file.
    #[arg(long, short, global = true, default_value = "options.yml", value_name = "PATH")]
    pub config: PathBuf,
    /// Override any key of the configuration, e.g. `--set train.lr=2e-4` (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE", value_parser = parse_override)]
    pub overrides: Vec<(String, String)>,
    /// Run on this device instead of the configured one: cpu, cuda, cuda:N or auto.
    #[arg(long, global = true)]
    pub device: Option<String>,
    /// Seed for weights, noise and data order (training) or for the noise (sampling).
    #[arg(long, global = true)]
    pub seed: Option<u64>,
    /// Log debug messages too (RUST_LOG overrides the level).
    #[arg(long, short, global = true)]
    pub verbose: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train the network on the configured dataset; writes checkpoints, grids, logs and metrics
    /// into train.run_dir.
    Train(TrainArgs),
    /// Draw samples from a checkpoint (by default the run_dir's latest) into a PNG grid.
    Sample(SampleArgs),
    /// Use a trained model on pictures: image-to-image, inpainting, DDIM inversion and
    /// interpolation (`ddpm edit --help` has examples).
    Edit(EditArgs),
    /// Measure training and sampling speed and peak memory for the configured network and
    /// dataset shape (random weights; warm-up first, medians over repeats).
    Bench(BenchArgs),
    /// Score samples from a checkpoint (or a saved tensor) against the dataset's test split:
    /// a Fréchet distance of CNN-classifier features, a classifier score, the class-histogram
    /// entropy and label fidelity, each beside its real-vs-real reference.
    Eval(EvalArgs),
    /// Describe a checkpoint, or a run directory and its latest checkpoint: network and size,
    /// images, dataset and classes, schedule, epoch and step, EMA and training state, the last
    /// loss and evaluation, and the run's files. Needs no config file.
    Info(InfoArgs),
    /// Print a shell completion script: `ddpm completions bash > ~/.local/share/bash-completion/completions/ddpm`
    /// (zsh: into a folder of your $fpath as `_ddpm`; fish: ~/.config/fish/completions/ddpm.fish).
    Completions(CompletionsArgs),
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// A checkpoint (`.safetensors`) or a run directory.
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    #[arg(value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Checkpoint to evaluate (default: the run_dir's latest).
    #[arg(long, value_name = "PATH")]
    pub checkpoint: Option<PathBuf>,
    /// Evaluate saved samples instead: a tensor written by `ddpm sample --save-tensor`, or with
    /// --metric fid also an .npz (arr_0 uint8 NHWC) or a folder of pictures.
    #[arg(long, value_name = "PATH", conflicts_with = "checkpoint")]
    pub samples: Option<PathBuf>,
    /// Number of samples (and of real test images in each reference set).
    #[arg(long, short, default_value_t = 1000)]
    pub n: i64,
    /// Reverse process: ddpm, ddim or dpm-solver++ (sample.sampler).
    #[arg(long, value_parser = ["ddpm", "ddim", "dpm-solver++"])]
    pub sampler: Option<String>,
    /// DDIM or DPM-Solver++ steps (sample.steps); alone it implies --sampler ddim.
    #[arg(long)]
    pub steps: Option<i64>,
    /// Also write the result as JSON here.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// cnn (ddpm's own classifier features against the test split: MNIST-like sets) or fid
    /// (Inception FID as pytorch-fid computes it, with the Inception Score; needs --inception).
    #[arg(long, value_enum, default_value_t = Metric::Cnn)]
    pub metric: Metric,
    /// --metric fid: the FID Inception weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth
    /// or its safetensors conversion). Default: eval.inception_weights, else
    /// <dataset.root>/pt_inception-2015-12-05-6726825d.pth.
    #[arg(long, value_name = "PATH")]
    pub inception: Option<PathBuf>,
    /// --metric fid: the reference set: an .npz of statistics (mu, sigma) or of images (arr_0),
    /// a folder of pictures, or a .safetensors of samples. Default: N training images of the
    /// configured dataset (statistics cached under dataset.root).
    #[arg(long = "ref", value_name = "PATH")]
    pub reference: Option<PathBuf>,
    /// --metric fid: score N images of the dataset's test split instead of samples, against the
    /// same reference: the real-vs-real floor at this N, to read other FIDs at this N against.
    #[arg(long, conflicts_with_all = ["samples", "checkpoint"])]
    pub real_vs_real: bool,
    /// --metric fid: accept weights other than the official ones (the number is then not
    /// comparable with anyone's).
    #[arg(long)]
    pub inception_any_weights: bool,
    /// Share the work among N local processes (one GPU each on a multi-GPU machine; the cores
    /// shared on the CPU): batch k of sample.batch_size images is drawn by process k mod N
    /// from noise seeded by (seed, k), so the samples and the score are the same for any N.
    /// Rank 0 gathers the features and writes the result. torchrun-style launches work too.
    #[arg(long, value_name = "N")]
    pub nproc: Option<usize>,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Timed repeats per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Training steps of the real data loop timed to estimate one epoch (0 = skip; needs the
    /// dataset).
    #[arg(long, default_value_t = 20)]
    pub epoch_steps: i64,
    /// Also write the results as JSON here.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Batch sizes of the training-step measurement.
    #[arg(long, value_delimiter = ',', default_value = "128,512")]
    pub batches: Vec<i64>,
    /// Skip the sampling measurements (for large networks on slow machines).
    #[arg(long)]
    pub no_sampling: bool,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Number of epochs (train.n_epochs).
    #[arg(long)]
    pub epochs: Option<i64>,
    /// Images per optimizer step (train.batch_size).
    #[arg(long)]
    pub batch_size: Option<i64>,
    /// Adam learning rate (train.lr).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Stop after this many optimizer steps (train.max_steps; 0 = all epochs).
    #[arg(long)]
    pub max_steps: Option<i64>,
    /// Folder for checkpoints, grids, logs and metrics (train.run_dir).
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Continue the run in run_dir from its latest checkpoint: weights, EMA, optimizer moments,
    /// epoch and position in it, exactly as if it had never stopped.
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Start over in a run_dir that already holds a run, deleting its checkpoints, samples and
    /// metrics.
    #[arg(long)]
    pub overwrite: bool,
    /// Data-parallel training in N local processes (gloo on the CPU, NCCL on GPUs), each with
    /// 1/N of every batch; the cores are shared among them. Launchers such as torchrun, which
    /// set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT, work without it.
    #[arg(long, value_name = "N")]
    pub nproc: Option<usize>,
}

#[derive(Debug, Args)]
pub struct SampleArgs {
    /// How many images (sample.n_samples); the grid has ceil(sqrt(n)) columns.
    #[arg(long, short)]
    pub n_samples: Option<i64>,
    /// Where to write: the PNG grid (default <run_dir>/samples.png), the png-dir folder
    /// (default <run_dir>/samples-png/) or the .npz file (default <run_dir>/samples.npz).
    #[arg(long, short, value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// What to write (sample.format): grid (one PNG), png-dir (000000.png, ... for FID tools) or
    /// npz (arr_0 uint8 [N, H, W, C], arr_1 labels). Exports are written batch by batch.
    #[arg(long, value_parser = ["grid", "png-dir", "npz"])]
    pub format: Option<String>,
    /// Continue an interrupted png-dir or npz export (same settings; the result equals an
    /// uninterrupted one).
    #[arg(long)]
    pub resume: bool,
    /// Use beta_t as the reverse-step variance (the demo's default, "fixed large").
    #[arg(long, overrides_with = "no_simple_var")]
    pub simple_var: bool,
    /// Use the posterior variance ("fixed small") instead of beta_t.
    #[arg(long)]
    pub no_simple_var: bool,
    /// Clamp the predicted x0 to [-1, 1] at each step (sample.clip_x0).
    #[arg(long)]
    pub clip_x0: bool,
    /// Also write the raw samples (float [-1, 1], [N, C, H, W]) as safetensors to this path.
    #[arg(long, value_name = "PATH")]
    pub save_tensor: Option<PathBuf>,
    /// DDPM variance by name: fixed_large (beta_t, the demo's simple_var) or fixed_small
    /// (the posterior variance).
    #[arg(long, value_parser = ["fixed_large", "fixed_small"], conflicts_with_all = ["simple_var", "no_simple_var"])]
    pub variance: Option<String>,
    #[command(flatten)]
    pub reverse: ReverseArgs,
    /// Also write the reverse process: <out>.process.png (a row per sample, a column per
    /// snapshot) and <out>.process.gif.
    #[arg(long)]
    pub process: bool,
    /// --format png-dir or npz: share the export among N local processes (one GPU each on a
    /// multi-GPU machine): batch k is drawn by process k mod N from noise seeded by (seed, k),
    /// so the files are the same for any N, and --resume may use another N.
    #[arg(long, value_name = "N")]
    pub nproc: Option<usize>,
}

fn parse_override(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE (e.g. train.lr=2e-4), got '{s}'")),
    }
}

impl Cli {
    /// All overrides, flags first turned into `key=value` pairs: the one place where the
    /// command line meets the YAML.
    pub fn overrides(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                out.push((k.to_string(), v));
            }
        };
        put("device", self.device.clone());
        put("seed", self.seed.map(|s| s.to_string()));
        let q = |p: &PathBuf| serde_yaml::to_string(&p.display().to_string()).unwrap_or_default();
        match &self.command {
            Command::Train(a) => {
                put("train.n_epochs", a.epochs.map(|v| v.to_string()));
                put("train.batch_size", a.batch_size.map(|v| v.to_string()));
                put("train.lr", a.lr.map(|v| format!("{v:e}")));
                put("train.max_steps", a.max_steps.map(|v| v.to_string()));
                put("train.run_dir", a.run_dir.as_ref().map(q));
            }
            Command::Sample(a) => {
                put("sample.n_samples", a.n_samples.map(|v| v.to_string()));
                put("sample.format", a.format.clone());
                let var = match (a.simple_var, a.no_simple_var, a.variance.as_deref()) {
                    (true, _, _) | (_, _, Some("fixed_large")) => Some(true),
                    (_, true, _) | (_, _, Some("fixed_small")) => Some(false),
                    _ => None,
                };
                a.reverse.overrides(&mut put);
                put("sample.simple_var", var.map(|v| v.to_string()));
                put("sample.clip_x0", a.clip_x0.then(|| "true".to_string()));
            }
            Command::Edit(a) => a.reverse.overrides(&mut put),
            Command::Bench(_) | Command::Info(_) | Command::Completions(_) => {}
            Command::Eval(a) => {
                put("sample.sampler", a.sampler.clone().or_else(|| a.steps.map(|_| "ddim".to_string())));
                put("sample.steps", reverse::steps_for(a.sampler.as_deref(), a.steps));
            }
        }
        out.extend(self.overrides.iter().cloned());
        out
    }
}

/// `ddpm eval --metric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Metric {
    /// ddpm's own classifier features against the test split.
    Cnn,
    /// Inception FID as pytorch-fid computes it.
    Fid,
}
