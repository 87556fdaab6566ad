//! Data-parallel training across processes on libtorch's own distributed engine (c10d): a
//! TCPStore rendezvous, a gloo process group on the CPU or NCCL on GPUs, bucketed all-reduce,
//! and broadcast, through the small C++ shim in `csrc/dist.cpp`.
//!
//! Processes find each other the torchrun way, from `RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
//! `MASTER_ADDR` and `MASTER_PORT`; [`launch`] starts N local workers with those set
//! (`ddpm train --nproc N`).

mod env;
mod launch;

pub use env::{env_rank, join, set_up_worker, DistEnv};
pub use launch::{args_without_nproc, launch};

use crate::error::UsageError;
use anyhow::{bail, Context, Result};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::time::Duration;
use tch::{Device, Tensor};

/// Largest flat buffer of one all-reduce or broadcast.
const BUCKET_BYTES: i64 = 25 << 20;
const ERR_LEN: usize = 1024;

#[cfg(not(ddpm_no_dist))]
mod ffi {
    use std::ffi::{c_char, c_int, c_void};
    use torch_sys::C_tensor;
    extern "C" {
        pub fn ddpm_dist_new(
            backend: *const c_char,
            host: *const c_char,
            port: c_int,
            rank: c_int,
            world: c_int,
            timeout_ms: i64,
            err: *mut c_char,
            errlen: usize,
        ) -> *mut c_void;
        pub fn ddpm_dist_allreduce_mean(
            g: *mut c_void,
            ts: *const *const C_tensor,
            n: c_int,
            bucket_bytes: i64,
            err: *mut c_char,
            errlen: usize,
        ) -> c_int;
        pub fn ddpm_dist_broadcast(
            g: *mut c_void,
            ts: *const *const C_tensor,
            n: c_int,
            root: c_int,
            bucket_bytes: i64,
            err: *mut c_char,
            errlen: usize,
        ) -> c_int;
        pub fn ddpm_dist_free(g: *mut c_void);
    }
}

/// A process group: every collective is called by all ranks in the same order.
pub struct ProcessGroup {
    handle: *mut c_void,
    pub rank: usize,
    pub world_size: usize,
    pub backend: String,
    /// The CUDA device NCCL stages CPU tensors on (cuda:LOCAL_RANK, the one the caller picked).
    staging: Device,
}

fn message(buf: &[c_char]) -> String {
    unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

impl ProcessGroup {
    /// The group of a torchrun-style environment on `device`, with the backend and timeout
    /// the environment asks for ([`backend`], [`timeout`]).
    pub fn from_env(env: &DistEnv, device: Device) -> Result<ProcessGroup> {
        Self::new(env, &backend(device)?, timeout()?)
    }

    /// Rendezvous at `env.master_addr:env.master_port` (rank 0 serves the store) and make a
    /// `backend` ("gloo" or "nccl") group; `timeout` bounds the rendezvous and every collective.
    pub fn new(env: &DistEnv, backend: &str, timeout: Duration) -> Result<ProcessGroup> {
        #[cfg(ddpm_no_dist)]
        {
            let _ = timeout;
            bail!(
                "this ddpm was built without distributed training (gloo's headers were missing at build time: \
                 install libgloo-dev, e.g. with scripts/setup.sh, then rebuild); cannot start rank {} of {} ({backend})",
                env.rank,
                env.world_size
            );
        }
        #[cfg(not(ddpm_no_dist))]
        {
            let b = CString::new(backend)?;
            let host = CString::new(env.master_addr.as_str())?;
            let mut err = vec![0 as c_char; ERR_LEN];
            let handle = unsafe {
                ffi::ddpm_dist_new(
                    b.as_ptr(),
                    host.as_ptr(),
                    env.master_port as c_int,
                    env.rank as c_int,
                    env.world_size as c_int,
                    timeout.as_millis() as i64,
                    err.as_mut_ptr(),
                    ERR_LEN,
                )
            };
            if handle.is_null() {
                bail!(
                    "rank {}: cannot join the {backend} process group of {} at {}:{}: {}",
                    env.rank,
                    env.world_size,
                    env.master_addr,
                    env.master_port,
                    message(&err)
                );
            }
            Ok(ProcessGroup {
                handle,
                rank: env.rank,
                world_size: env.world_size,
                backend: backend.to_string(),
                staging: Device::Cuda(env.local_rank),
            })
        }
    }

    fn check(&self, what: &str, rc: c_int, err: &[c_char]) -> Result<()> {
        if rc != 0 {
            bail!(
                "rank {} of {}: {what} failed: {} (another worker probably stopped or died)",
                self.rank,
                self.world_size,
                message(err)
            );
        }
        Ok(())
    }

    /// Runs `f` on `tensors`, with a CUDA copy in place of each CPU tensor when the backend is
    /// NCCL (which moves CUDA tensors only, while the run's position lives on the CPU), and copies
    /// the results back.
    #[cfg(not(ddpm_no_dist))]
    fn staged(&self, tensors: &[&Tensor], f: impl FnOnce(&[&Tensor]) -> Result<()>) -> Result<()> {
        if self.backend != "nccl" || tensors.iter().all(|t| t.device().is_cuda()) {
            return f(tensors);
        }
        let device = tensors.iter().map(|t| t.device()).find(|d| d.is_cuda()).unwrap_or(self.staging);
        let copies: Vec<Option<Tensor>> =
            tensors.iter().map(|t| (!t.device().is_cuda()).then(|| t.to_device(device))).collect();
        let staged: Vec<&Tensor> = tensors.iter().zip(&copies).map(|(t, c)| c.as_ref().unwrap_or(t)).collect();
        f(&staged)?;
        let _guard = tch::no_grad_guard();
        for (t, c) in tensors.iter().zip(&copies) {
            if let Some(c) = c {
                t.shallow_clone().f_copy_(c)?;
            }
        }
        Ok(())
    }

    /// Replaces each tensor by its mean over all ranks.
    pub fn all_reduce_mean(&self, tensors: &[&Tensor]) -> Result<()> {
        #[cfg(not(ddpm_no_dist))]
        return self.staged(tensors, |tensors| {
            let ptrs: Vec<*const torch_sys::C_tensor> = tensors.iter().map(|t| t.as_ptr()).collect();
            let mut err = vec![0 as c_char; ERR_LEN];
            let rc = unsafe {
                ffi::ddpm_dist_allreduce_mean(
                    self.handle,
                    ptrs.as_ptr(),
                    ptrs.len() as c_int,
                    BUCKET_BYTES,
                    err.as_mut_ptr(),
                    ERR_LEN,
                )
            };
            self.check("all-reduce", rc, &err)
        });
        #[cfg(ddpm_no_dist)]
        {
            let _ = tensors;
            bail!("built without distributed training")
        }
    }

    /// Copies rank `root`'s tensors into everyone's.
    pub fn broadcast(&self, tensors: &[&Tensor], root: usize) -> Result<()> {
        #[cfg(not(ddpm_no_dist))]
        return self.staged(tensors, |tensors| {
            let ptrs: Vec<*const torch_sys::C_tensor> = tensors.iter().map(|t| t.as_ptr()).collect();
            let mut err = vec![0 as c_char; ERR_LEN];
            let rc = unsafe {
                ffi::ddpm_dist_broadcast(
                    self.handle,
                    ptrs.as_ptr(),
                    ptrs.len() as c_int,
                    root as c_int,
                    BUCKET_BYTES,
                    err.as_mut_ptr(),
                    ERR_LEN,
                )
            };
            self.check("broadcast", rc, &err)
        });
        #[cfg(ddpm_no_dist)]
        {
            let _ = (tensors, root);
            bail!("built without distributed training")
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        #[cfg(not(ddpm_no_dist))]
        unsafe {
            ffi::ddpm_dist_free(self.handle)
        }
    }
}

/// The collective backend of a data-parallel run: `DDPM_DIST_BACKEND` (gloo or nccl), else
/// NCCL on GPUs and gloo on the CPU.
pub fn backend(device: Device) -> Result<String> {
    let backend = match std::env::var("DDPM_DIST_BACKEND") {
        Ok(b) if b == "gloo" || b == "nccl" => b,
        Ok(b) => bail!(UsageError(format!("DDPM_DIST_BACKEND={b:?}: expected gloo or nccl"))),
        Err(_) if device.is_cuda() => "nccl".into(),
        Err(_) => "gloo".into(),
    };
    if backend == "nccl" && !device.is_cuda() {
        bail!(UsageError("DDPM_DIST_BACKEND=nccl needs a CUDA device (use gloo on the CPU)".into()));
    }
    Ok(backend)
}

/// How long a rendezvous or a collective may wait for the other ranks: `DDPM_DIST_TIMEOUT`
/// seconds (default 1800: rank 0 samples the epoch's grid while the others wait).
pub fn timeout() -> Result<Duration> {
    match std::env::var("DDPM_DIST_TIMEOUT") {
        Err(_) => Ok(Duration::from_secs(1800)),
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| *s > 0.0 && s.is_finite())
            .map(Duration::from_secs_f64)
            .with_context(|| format!("DDPM_DIST_TIMEOUT={v:?}: expected seconds > 0")),
    }
}
