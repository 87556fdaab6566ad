//! Mixed precision: `train.precision: bf16` runs the forward pass under autocast with bfloat16
//! on CUDA and, where oneDNN supports bf16 (AVX512-BF16, AMX), on the CPU. tch's own
//! `tch::autocast` only switches CUDA autocast on and leaves its dtype at libtorch's default,
//! float16, which without a gradient scaler is what gives diffusion models NaN losses; here the
//! dtype is set explicitly through the C++ shim (`csrc/ops.cpp`).

use anyhow::{bail, Result};
use tch::{Device, Kind};

crate::choice! {
    /// `train.precision` and `sample.precision`.
    pub enum Precision {
        Fp32 = "fp32" | "float32",
        /// bfloat16 autocast on CUDA, and on CPUs where oneDNN supports bf16.
        Bf16 = "bf16" | "bfloat16",
    }
    hint = precision_hint;
}

fn precision_hint(key: &str) -> Option<String> {
    matches!(key, "fp16" | "float16" | "half").then(|| {
        "float16 needs a gradient scaler that ddpm does not have, and diffusion training without one \
         diverges: use bf16 or fp32"
            .to_string()
    })
}

mod ffi {
    use std::os::raw::c_int;
    extern "C" {
        pub fn ddpm_autocast_set_dtype(cuda: c_int, dtype: c_int) -> c_int;
        pub fn ddpm_autocast_get_dtype(cuda: c_int) -> c_int;
        pub fn ddpm_autocast_set_enabled(cuda: c_int, enabled: c_int) -> c_int;
        pub fn ddpm_mkldnn_bf16_supported() -> c_int;
    }
}

/// c10::ScalarType codes of the kinds autocast can use.
fn kind_code(kind: Kind) -> Option<i32> {
    match kind {
        Kind::Half => Some(5),
        Kind::Float => Some(6),
        Kind::BFloat16 => Some(15),
        _ => None,
    }
}

fn code_kind(code: i32) -> Option<Kind> {
    [Kind::Half, Kind::Float, Kind::BFloat16].into_iter().find(|k| kind_code(*k) == Some(code))
}

/// The dtype autocast casts to on the CPU or on CUDA.
pub fn autocast_dtype(cuda: bool) -> Option<Kind> {
    code_kind(unsafe { ffi::ddpm_autocast_get_dtype(cuda as i32) })
}

/// Sets the dtype autocast casts to on the CPU or on CUDA.
pub fn set_autocast_dtype(cuda: bool, kind: Kind) -> Result<()> {
    let Some(code) = kind_code(kind) else { bail!("autocast cannot use {kind:?}") };
    if unsafe { ffi::ddpm_autocast_set_dtype(cuda as i32, code) } != 0 {
        bail!("libtorch refused autocast dtype {kind:?}");
    }
    Ok(())
}

/// Whether bf16 autocast runs on `device`: on CUDA, and on CPUs whose oneDNN runs bf16
/// (elsewhere a bf16 run falls back to fp32 with a warning).
pub fn bf16_available(device: Device) -> bool {
    device.is_cuda() || cpu_supports_bf16()
}

/// Whether oneDNN runs bf16 on this CPU (what `torch.ops.mkldnn._is_mkldnn_bf16_supported()`
/// answers in PyTorch).
pub fn cpu_supports_bf16() -> bool {
    unsafe { ffi::ddpm_mkldnn_bf16_supported() == 1 }
}

/// Runs `f` under bfloat16 autocast on `device`'s type (CPU or CUDA), then restores the
/// previous autocast state. The dtype is set to bfloat16 first, on CUDA as well.
pub fn with_bf16_autocast<T>(device: Device, f: impl FnOnce() -> T) -> Result<T> {
    let cuda = device.is_cuda() as i32;
    set_autocast_dtype(device.is_cuda(), Kind::BFloat16)?;
    let prev = unsafe { ffi::ddpm_autocast_set_enabled(cuda, 1) };
    if prev < 0 {
        bail!("libtorch refused to enable autocast on {device:?}");
    }
    unsafe { torch_sys::at_autocast_increment_nesting() };
    let out = f();
    unsafe {
        if torch_sys::at_autocast_decrement_nesting() == 0 {
            torch_sys::at_autocast_clear_cache();
        }
        ffi::ddpm_autocast_set_enabled(cuda, prev);
    }
    Ok(out)
}
