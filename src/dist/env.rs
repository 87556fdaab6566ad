//! The torchrun-style environment of a worker (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
//! `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`) and joining its process group: the one
//! set-up every data-parallel command (`train`, `sample`, `eval`) goes through.

use super::ProcessGroup;
use anyhow::{bail, Context, Result};
use tch::Device;

/// Where this process stands in a distributed run, from the torchrun environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    /// Workers on this machine (LOCAL_WORLD_SIZE; defaults to the world size).
    pub local_world_size: usize,
    pub master_addr: String,
    pub master_port: u16,
}

impl DistEnv {
    /// `None` when `WORLD_SIZE` is not set (a plain single-process run).
    pub fn from_env() -> Result<Option<DistEnv>> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<DistEnv>> {
        let Some(world) = get("WORLD_SIZE") else { return Ok(None) };
        let num = |key: &str, default: Option<usize>| -> Result<usize> {
            match get(key) {
                Some(v) => v.trim().parse().map_err(|_| {
                    anyhow::anyhow!("environment variable {key}={v:?} is not a number (torchrun-style launch)")
                }),
                None => default.with_context(|| format!("WORLD_SIZE is set but {key} is not (torchrun-style launch)")),
            }
        };
        let world_size: usize = world
            .trim()
            .parse()
            .ok()
            .filter(|&w| w >= 1)
            .with_context(|| format!("environment variable WORLD_SIZE={world:?} is not a number >= 1"))?;
        let rank = num("RANK", None)?;
        if rank >= world_size {
            bail!("RANK={rank} must be below WORLD_SIZE={world_size}");
        }
        let local_rank = num("LOCAL_RANK", Some(rank))?;
        let local_world_size = num("LOCAL_WORLD_SIZE", Some(world_size))?;
        let master_addr = get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port = num("MASTER_PORT", Some(29500))?;
        let master_port = u16::try_from(port)
            .ok()
            .filter(|&p| p > 0)
            .with_context(|| format!("MASTER_PORT={port} is not a TCP port"))?;
        Ok(Some(DistEnv { rank, world_size, local_rank, local_world_size, master_addr, master_port }))
    }
}

/// Sets libtorch's threads (`threads` when not 0; else, in a distributed run, the machine's
/// cores shared among its workers instead of each taking all of them) and returns the device
/// of this worker: `cuda:LOCAL_RANK` when `device` is a GPU.
pub fn set_up_worker(env: Option<&DistEnv>, threads: usize, device: Device) -> Device {
    match (env, threads) {
        (_, n) if n > 0 => tch::set_num_threads(n as i32),
        (Some(e), _) => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            tch::set_num_threads((cores / e.local_world_size.max(1)).max(1) as i32);
        }
        _ => {}
    }
    match (env, device) {
        (Some(e), Device::Cuda(_)) => Device::Cuda(e.local_rank),
        _ => device,
    }
}

/// The rank from the environment (0 when not distributed or not parseable), for logging set-up.
pub fn env_rank() -> usize {
    std::env::var("RANK").ok().and_then(|r| r.parse().ok()).unwrap_or(0)
}

/// Joins the process group of a torchrun-style environment, when there is one: sets libtorch's
/// threads and picks this worker's device ([`set_up_worker`]), then meets the other ranks.
/// Returns the environment and its group (None in a plain single-process run) and the device.
pub fn join(threads: usize, device: Device) -> Result<(Option<(DistEnv, ProcessGroup)>, Device)> {
    let env = DistEnv::from_env()?;
    let device = set_up_worker(env.as_ref(), threads, device);
    let joined = match env {
        None => None,
        Some(e) => {
            let group = ProcessGroup::from_env(&e, device)?;
            Some((e, group))
        }
    };
    Ok((joined, device))
}
