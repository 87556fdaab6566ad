//! The reverse-process flags `ddpm sample` and `ddpm edit` share.

use clap::Args;

#[derive(Debug, Args)]
pub struct ReverseArgs {
    /// Checkpoint to sample from; its metadata rebuilds the model, so no config is needed.
    /// Default: <train.run_dir>/checkpoints/latest.safetensors.
    #[arg(long, value_name = "PATH")]
    pub checkpoint: Option<std::path::PathBuf>,
    /// Reverse process: ddpm (ancestral, every step), ddim, or dpm-solver++ (DPM-Solver++(2M),
    /// 20 steps unless --steps says otherwise) (sample.sampler).
    #[arg(long, value_parser = ["ddpm", "ddim", "dpm-solver++"])]
    pub sampler: Option<String>,
    /// DDIM or DPM-Solver++ steps (sample.steps); implies --sampler ddim when given alone.
    #[arg(long)]
    pub steps: Option<i64>,
    /// DDIM noise scale: 0 = deterministic, 1 = DDPM-like (sample.eta).
    #[arg(long)]
    pub eta: Option<f64>,
    /// DDIM timestep spacing: uniform or quadratic (sample.spacing).
    #[arg(long, value_parser = ["uniform", "quadratic"])]
    pub spacing: Option<String>,
    /// Conditional models: the class to draw (0-based number or its name, e.g. a folder
    /// dataset's subfolder), or `all` for one row per class (`ddpm sample` only).
    #[arg(long, value_name = "N|NAME|all")]
    pub label: Option<String>,
    /// Classifier-free guidance weight w (sample.guidance): eps_u + w (eps_c - eps_u);
    /// 0 = unconditional, 1 = conditional without guidance.
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Use the raw weights even when the checkpoint has EMA weights.
    #[arg(long)]
    pub no_ema: bool,
    /// Images denoised at once (sample.batch_size); larger n is done in batches.
    #[arg(long)]
    pub batch_size: Option<i64>,
    /// Pixels between tiles in the grid (sample.padding).
    #[arg(long)]
    pub padding: Option<i64>,
}

impl ReverseArgs {
    /// The flags as `sample.*` overrides.
    pub fn overrides(&self, put: &mut impl FnMut(&str, Option<String>)) {
        let sampler = self.sampler.clone().or_else(|| self.steps.map(|_| "ddim".to_string()));
        put("sample.sampler", sampler);
        put("sample.steps", steps_for(self.sampler.as_deref(), self.steps));
        put("sample.eta", self.eta.map(|v| v.to_string()));
        put("sample.spacing", self.spacing.clone());
        put("sample.guidance", self.guidance.map(|v| v.to_string()));
        put("sample.ema", self.no_ema.then(|| "false".to_string()));
        put("sample.batch_size", self.batch_size.map(|v| v.to_string()));
        put("sample.padding", self.padding.map(|v| v.to_string()));
    }
}

/// `--steps`, or 20 for `--sampler dpm-solver++` given without it (the solver's usual count).
pub fn steps_for(sampler: Option<&str>, steps: Option<i64>) -> Option<String> {
    match (sampler, steps) {
        (_, Some(n)) => Some(n.to_string()),
        (Some("dpm-solver++"), None) => Some("20".into()),
        _ => None,
    }
}
