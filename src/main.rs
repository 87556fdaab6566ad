//! `ddpm`: parse the command line, set up logging, run, print the error chain.

use clap::Parser;
use ddpm::cli::{Cli, Command};
use ddpm::config::Config;
use ddpm::error::{self, Interrupted};
use ddpm::sample::{LabelChoice, SampleRequest};
use ddpm::train::TrainOptions;
use std::process::ExitCode;

fn run(cli: &Cli) -> anyhow::Result<()> {
    let overrides = cli.overrides();
    let cfg = match &cli.command {
        // `sample --checkpoint PATH` needs no config file: the checkpoint describes its model.
        Command::Sample(a) if a.checkpoint.is_some() && !cli.config.exists() => {
            Config::from_yaml_str("{}", "defaults", &overrides)?
        }
        _ => Config::load(&cli.config, &overrides)?,
    };
    match &cli.command {
        Command::Train(a) if a.nproc.is_some() && std::env::var_os("WORLD_SIZE").is_none() => {
            // Grace for the other workers to notice a failed one before they are killed.
            ddpm::dist::launch(a.nproc.unwrap_or(1), std::time::Duration::from_secs(30))?;
        }
        Command::Train(a) => {
            ddpm::train::train(&cfg, TrainOptions { resume: a.resume, overwrite: a.overwrite })?;
        }
        Command::Eval(a) => {
            let req = ddpm::eval::EvalRequest {
                checkpoint: a.checkpoint.clone(),
                samples: a.samples.clone(),
                n: a.n,
                json: a.json.clone(),
            };
            let r = ddpm::eval::eval(&cfg, &req)?;
            println!("{}", ddpm::eval::table(&r));
        }
        Command::Bench(a) => {
            let r = ddpm::bench::run(&cfg, a.repeats.max(1), a.epoch_steps, &a.batches, !a.no_sampling)?;
            println!("{}", ddpm::bench::table(&r));
            if let Some(p) = &a.json {
                ddpm::bench::write_json(&r, p)?;
            }
        }
        Command::Sample(a) => {
            let label = a.label.as_deref().map(str::parse::<LabelChoice>).transpose()?;
            let req = SampleRequest {
                checkpoint: a.checkpoint.clone(),
                out: a.out.clone(),
                save_tensor: a.save_tensor.clone(),
                label,
                guidance_given: a.guidance.is_some(),
                process: a.process,
            };
            ddpm::sample::sample(&cfg, &req)?;
        }
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
