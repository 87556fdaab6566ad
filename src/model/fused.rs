//! Inference with oneDNN-fused convolutions on the CPU (`sample.freeze`): where no gradient is
//! recorded and CPU autocast is off, the demo network's blocks run conv + ReLU and
//! conv + residual add + ReLU as single oneDNN calls (`mkldnn::_convolution_pointwise` and its
//! binary form, what inductor's CPU freezing emits), and the paper UNet's residual blocks their
//! last conv + residual add, through `csrc/fused_conv.cpp`. The results equal the unfused calls
//! (the same oneDNN convolution, the additions done in its epilogue). Training, CUDA, bf16 and
//! any failure of the fused call (one warning) take the plain path.

use std::ffi::{c_char, c_int};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tch::{nn, Device, Kind, Tensor};
use torch_sys::C_tensor;

extern "C" {
    fn ddpm_inference_fusable() -> c_int;
    fn ddpm_conv_fused(
        x: *const C_tensor,
        w: *const C_tensor,
        b: *const C_tensor,
        other: *const C_tensor,
        padding: i64,
        relu: c_int,
        out: *mut *mut C_tensor,
        err: *mut c_char,
        errlen: usize,
    ) -> c_int;
}

static ENABLED: AtomicBool = AtomicBool::new(true);
static CALLS: AtomicUsize = AtomicUsize::new(0);

/// Fused calls made so far in this process.
pub fn calls() -> usize {
    CALLS.load(Ordering::Relaxed)
}

/// Turns the fused path on or off for this process (`sample.freeze`).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether a forward on `xs` may take the fused path now.
pub fn usable(xs: &Tensor) -> bool {
    ENABLED.load(Ordering::Relaxed)
        && xs.device() == Device::Cpu
        && xs.kind() == Kind::Float
        && unsafe { ddpm_inference_fusable() } == 1
}

/// `relu?(conv(x) [+ other])` in one oneDNN call (stride 1, no dilation or groups); `None`
/// (after a warning, with the fused path switched off) where the call fails.
pub fn conv(x: &Tensor, c: &nn::Conv2D, padding: i64, other: Option<&Tensor>, relu: bool) -> Option<Tensor> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    let mut err = vec![0 as c_char; 512];
    let null = std::ptr::null();
    let rc = unsafe {
        ddpm_conv_fused(
            x.as_ptr(),
            c.ws.as_ptr(),
            c.bs.as_ref().map_or(null, |b| b.as_ptr()),
            other.map_or(null, |o| o.as_ptr()),
            padding,
            relu as c_int,
            &mut out,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc != 0 || out.is_null() {
        let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
        tracing::warn!("fused convolutions are off for this run (sample.freeze): {msg}");
        set_enabled(false);
        return None;
    }
    CALLS.fetch_add(1, Ordering::Relaxed);
    Some(unsafe { Tensor::from_ptr(out) })
}
