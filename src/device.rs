//! Choosing where tensors live: `cpu`, `cuda`, `cuda:N` or `auto`.

use crate::error::UsageError;
use tch::{Cuda, Device};

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    Cpu,
    Auto,
    Cuda(usize),
}

/// Parses the `device` setting; the message says what is allowed.
pub fn parse_device(s: &str) -> Result<DeviceRequest, String> {
    let s = s.trim().to_lowercase();
    match s.as_str() {
        "cpu" => Ok(DeviceRequest::Cpu),
        "auto" => Ok(DeviceRequest::Auto),
        "cuda" | "gpu" => Ok(DeviceRequest::Cuda(0)),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(DeviceRequest::Cuda(n)),
            _ => Err("use cpu, cuda, cuda:N (N = 0, 1, ...) or auto".into()),
        },
    }
}

/// Resolves a request against the machine: CUDA asked for without any GPU warns once and
/// runs on the CPU; `cuda:N` beyond the GPUs present is an error that lists them.
pub fn resolve(s: &str) -> anyhow::Result<Device> {
    let req = parse_device(s).map_err(|m| UsageError(format!("device = {s:?}: {m}")))?;
    let gpus = if Cuda::is_available() { Cuda::device_count() as usize } else { 0 };
    Ok(match req {
        DeviceRequest::Cpu => Device::Cpu,
        DeviceRequest::Auto if gpus > 0 => Device::Cuda(0),
        DeviceRequest::Auto => Device::Cpu,
        DeviceRequest::Cuda(_) if gpus == 0 => {
            tracing::warn!("device {s} asked for, but CUDA is not available here: running on the CPU");
            Device::Cpu
        }
        DeviceRequest::Cuda(n) if n < gpus => Device::Cuda(n),
        DeviceRequest::Cuda(n) => {
            let have: Vec<String> = (0..gpus).map(|i| format!("cuda:{i}")).collect();
            return Err(UsageError(format!(
                "device = cuda:{n}, but this machine has {gpus} GPU(s): {} (or cpu)",
                have.join(", ")
            ))
            .into());
        }
    })
}

/// A short description for logs.
pub fn describe(device: Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}"),
    }
}
