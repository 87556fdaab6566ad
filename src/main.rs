//! `ddpm`: parse the command line, set up logging, run, print the error chain.

use clap::Parser;
use ddpm::cli::{Cli, Command, EditArgs, EvalArgs, Metric, SampleArgs, TrainArgs};
use ddpm::config::Config;
use ddpm::error::{self, Interrupted};
use ddpm::sample::{LabelChoice, SampleRequest};
use ddpm::train::TrainOptions;
use std::process::ExitCode;

/// Writes a command's output to stdout; a reader that went away (`| head`) is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    if let Some(done) = run_without_config(cli) {
        return done;
    }
    let cfg = load_config(cli)?;
    ddpm::model::fused::set_enabled(cfg.sample.freeze);
    match &cli.command {
        Command::Train(TrainArgs { nproc: Some(n), .. })
        | Command::Eval(EvalArgs { nproc: Some(n), .. })
        | Command::Sample(SampleArgs { nproc: Some(n), .. })
            if std::env::var_os("WORLD_SIZE").is_none() =>
        {
            if matches!(cli.command, Command::Sample(_)) {
                ddpm::sample::check_nproc(&cfg, *n)?;
            }
            // Grace for the other workers to notice a failed one before they are killed.
            ddpm::dist::launch(*n, std::time::Duration::from_secs(30))?;
        }
        Command::Train(a) => {
            ddpm::train::train(&cfg, TrainOptions { resume: a.resume, overwrite: a.overwrite })?;
        }
        Command::Eval(a) => run_eval(&cfg, a)?,
        Command::Bench(a) => {
            let r = ddpm::bench::run(&cfg, a.repeats.max(1), a.epoch_steps, &a.batches, !a.no_sampling)?;
            emit(&format!("{}\n", ddpm::bench::table(&r)))?;
            if let Some(p) = &a.json {
                ddpm::bench::write_json(&r, p)?;
            }
        }
        Command::Sample(a) => run_sample(&cfg, a)?,
        Command::Edit(a) => run_edit(&cfg, a)?,
        Command::Info(_) | Command::Completions(_) => {}
    }
    Ok(())
}

/// The commands that need no configuration (`info`, `completions`); None for the others.
fn run_without_config(cli: &Cli) -> Option<anyhow::Result<()>> {
    match &cli.command {
        Command::Info(a) => Some(ddpm::info::info(&a.path).and_then(|report| match a.json {
            true => emit(&format!("{}\n", serde_json::to_string_pretty(&report)?)),
            false => emit(&ddpm::info::table(&report)),
        })),
        Command::Completions(a) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(a.shell, &mut cmd, "ddpm", &mut script);
            Some(emit(&String::from_utf8_lossy(&script)))
        }
        _ => None,
    }
}

/// `--config` with the overrides; `sample --checkpoint PATH` needs no config file, since the
/// checkpoint describes its model.
fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let overrides = cli.overrides();
    match &cli.command {
        Command::Sample(SampleArgs { reverse: r, .. }) | Command::Edit(EditArgs { reverse: r, .. })
            if r.checkpoint.is_some() && !cli.config.exists() =>
        {
            Config::from_yaml_str("{}", "defaults", &overrides)
        }
        _ => Config::load(&cli.config, &overrides),
    }
}

/// `ddpm eval`: the CNN metric or FID. Ranks other than 0 of a data-parallel evaluation return
/// no result and print nothing.
fn run_eval(cfg: &Config, a: &EvalArgs) -> anyhow::Result<()> {
    let req = ddpm::eval::EvalRequest {
        checkpoint: a.checkpoint.clone(),
        samples: a.samples.clone(),
        n: a.n,
        json: a.json.clone(),
        inception: a.inception.clone(),
        reference: a.reference.clone(),
        inception_any_weights: a.inception_any_weights,
        real_vs_real: a.real_vs_real,
    };
    match a.metric {
        Metric::Cnn if a.real_vs_real => Err(error::UsageError(
            "--real-vs-real goes with --metric fid (the CNN metric prints its real-vs-real column always)".into(),
        )
        .into()),
        Metric::Fid => match ddpm::eval::eval_fid(cfg, &req)? {
            Some(r) => emit(&format!("{}\n", ddpm::eval::fid_table(&r))),
            None => Ok(()),
        },
        Metric::Cnn => match ddpm::eval::eval(cfg, &req)? {
            Some(r) => emit(&format!("{}\n", ddpm::eval::table(&r))),
            None => Ok(()),
        },
    }
}

/// `ddpm sample`.
fn run_sample(cfg: &Config, a: &SampleArgs) -> anyhow::Result<()> {
    let label = a.reverse.label.as_deref().map(str::parse::<LabelChoice>).transpose()?;
    let req = SampleRequest {
        checkpoint: a.reverse.checkpoint.clone(),
        out: a.out.clone(),
        save_tensor: a.save_tensor.clone(),
        label,
        guidance_given: a.reverse.guidance.is_some(),
        process: a.process,
        resume: a.resume,
    };
    ddpm::sample::sample(cfg, &req)?;
    Ok(())
}

/// `ddpm edit`.
fn run_edit(cfg: &Config, a: &EditArgs) -> anyhow::Result<()> {
    let r = &a.reverse;
    let req = ddpm::edit::EditRequest {
        mode: a.mode,
        input: a.input.clone(),
        to: a.to.clone(),
        seeds: a.seeds.clone(),
        n: a.n,
        mask: a.mask.clone(),
        strengths: a.strength.clone(),
        resample: a.resample,
        frames: a.frames,
        out: a.out.clone(),
        save_tensor: a.save_tensor.clone(),
        checkpoint: r.checkpoint.clone(),
        label: r.label.as_deref().map(str::parse::<LabelChoice>).transpose()?,
        guidance_given: r.guidance.is_some(),
        sampler_given: r.sampler.clone(),
        eta_given: r.eta,
    };
    let report = ddpm::edit::edit(cfg, &req)?;
    if let Some((rms, max)) = report.reconstruction {
        emit(&format!("reconstruction error: rms {rms:.4}, largest {max:.4} (pixels in [0, 1])\n"))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Workers other than rank 0 of a data-parallel run log warnings and errors only.
    let rank = ddpm::dist::env_rank();
    ddpm::logging::init(cli.verbose, rank > 0);
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let _ = ddpm::logging::bars().clear();
            match (err.downcast_ref::<Interrupted>(), rank) {
                (Some(i), _) => eprintln!("{}", i.message),
                (None, 0) => eprintln!("error: {err:#}"),
                (None, r) => eprintln!("error: rank {r}: {err:#}"),
            }
            ExitCode::from(error::exit_code(&err))
        }
    }
}
