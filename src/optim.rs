//! Adam and AdamW on plain tensors (Kingma & Ba 2015; Loshchilov & Hutter 2019), written out
//! because tch's optimizers do not expose their moments, and exact resume needs them saved.
//! The update is PyTorch's `torch.optim.Adam` (non-amsgrad) step for step: by default in
//! libtorch's fused kernel (`fused=True` in PyTorch: one call for all parameters instead of about
//! nine kernels per parameter tensor, which is what bounds a small network's step on a GPU), and
//! written out per tensor where that kernel is unavailable or `fused` is off. Both paths are
//! checked against `torch.optim.Adam`/`AdamW` on the same gradients
//! (`tests/integration/optimizer.rs`). One step count serves every parameter, where PyTorch
//! counts per parameter: the same wherever each parameter gets a gradient on every step or on
//! none, as in ddpm's networks (a parameter that got a gradient on only some steps would be
//! bias-corrected by the shared count).

use std::collections::BTreeMap;
use tch::{nn, Tensor};

extern "C" {
    // csrc/ops.cpp
    fn ddpm_tensor_reset_grad(t: *mut torch_sys::C_tensor) -> std::os::raw::c_int;
    #[allow(clippy::too_many_arguments)]
    fn ddpm_fused_adam(
        params: *const *mut torch_sys::C_tensor,
        grads: *const *mut torch_sys::C_tensor,
        exp_avgs: *const *mut torch_sys::C_tensor,
        exp_avg_sqs: *const *mut torch_sys::C_tensor,
        step: *mut torch_sys::C_tensor,
        lr_tensor: *mut torch_sys::C_tensor,
        n: std::os::raw::c_int,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        decoupled: std::os::raw::c_int,
        err: *mut std::os::raw::c_char,
        errlen: usize,
    ) -> std::os::raw::c_int;
}

/// Drops the gradient of `t` (PyTorch's `param.grad = None`): it becomes undefined, so a
/// backward assigns a fresh one and an optimizer skips a parameter that got none.
pub fn reset_grad(t: &Tensor) {
    unsafe {
        ddpm_tensor_reset_grad(t.as_ptr() as *mut torch_sys::C_tensor);
    }
}

/// Hyper-parameters.
#[derive(Debug, Clone, Copy)]
pub struct AdamConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// AdamW: weight decay applied to the weights directly instead of added to the gradient.
    pub decoupled: bool,
    /// Update all parameters in libtorch's fused kernel (falls back to the per-tensor update,
    /// with a warning, where the kernel is unavailable).
    pub fused: bool,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, decoupled: false, fused: true }
    }
}

/// Adam over the trainable variables of a store, by name.
pub struct Adam {
    pub cfg: AdamConfig,
    pub lr: f64,
    /// Optimizer steps taken (for bias correction).
    pub step: i64,
    params: Vec<(String, Tensor)>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    /// The fused kernel's step count on the parameters' device, with the host step it holds
    /// (kept there so that an update needs no host-to-device copy).
    step_tensor: Option<(i64, Tensor)>,
}

impl Adam {
    pub fn new(vs: &nn::VarStore, lr: f64, cfg: AdamConfig) -> Self {
        let params = crate::model::trainable_sorted(vs);
        let exp_avg = params.iter().map(|(_, p)| p.zeros_like()).collect();
        let exp_avg_sq = params.iter().map(|(_, p)| p.zeros_like()).collect();
        Self { cfg, lr, step: 0, params, exp_avg, exp_avg_sq, step_tensor: None }
    }

    /// Drops every gradient (PyTorch's `zero_grad(set_to_none=True)`): a parameter that gets
    /// no gradient in the next backward keeps none and is not moved by the next step, where a
    /// zeroed gradient would still let the moments move it.
    pub fn zero_grad(&mut self) {
        for (_, p) in &self.params {
            reset_grad(p);
        }
    }

    /// The gradient of every parameter, in a fixed order (zeros standing in for a parameter
    /// that got none), for averaging across processes.
    pub fn grads(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .map(|(_, p)| {
                let g = p.grad();
                if g.defined() {
                    g
                } else {
                    p.zeros_like()
                }
            })
            .collect()
    }

    /// The parameters and both moments, in a fixed order (for broadcasting the whole state).
    pub fn tensors(&self) -> Vec<&Tensor> {
        self.params.iter().map(|(_, p)| p).chain(self.exp_avg.iter()).chain(self.exp_avg_sq.iter()).collect()
    }

    /// Global L2 norm of the gradients (a 0-dim tensor, no host sync).
    pub fn grad_norm(&self) -> Tensor {
        let norms: Vec<Tensor> = self
            .params
            .iter()
            .map(|(_, p)| p.grad())
            .filter(|g| g.defined())
            .map(|g| g.square().sum(g.kind()))
            .collect();
        Tensor::stack(&norms, 0).sum(tch::Kind::Float).sqrt()
    }

    /// Scales gradients so their global norm is at most `max_norm` (torch's clip_grad_norm_).
    pub fn clip_grad_norm(&mut self, max_norm: f64) {
        let _guard = tch::no_grad_guard();
        let scale = (self.grad_norm() + 1e-6).reciprocal().g_mul_scalar(max_norm).clamp_max(1.0);
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.g_mul_(&scale);
            }
        }
    }

    /// Whether updates go through the fused kernel (false after a fallback).
    pub fn is_fused(&self) -> bool {
        self.cfg.fused
    }

    /// One update from the current gradients.
    pub fn step(&mut self) {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        if self.cfg.fused {
            match self.fused_step() {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!("libtorch's fused Adam is unavailable here ({e}): using the per-tensor update");
                    self.cfg.fused = false;
                }
            }
        }
        self.loop_step();
    }

    /// The update of every parameter that has a gradient in one fused call.
    fn fused_step(&mut self) -> Result<(), String> {
        let Some(device) = self.params.iter().find(|(_, p)| p.grad().defined()).map(|(_, p)| p.device()) else {
            return Ok(());
        };
        let mut step_tensor = match self.step_tensor.take() {
            Some((s, mut t)) if s == self.step - 1 && t.device() == device => {
                let _ = t.g_add_scalar_(1.0);
                t
            }
            _ => Tensor::from(self.step as f32).to_device(device),
        };
        self.fused_call(&mut step_tensor, None)?;
        self.step_tensor = Some((self.step, step_tensor));
        Ok(())
    }

    /// One update in the fused kernel with the learning rate and the step count read from
    /// float32 0-dim tensors on the parameters' device (no host value enters the kernels, so a
    /// CUDA graph that captured this call replays it with whatever the tensors hold). The host
    /// step count is not advanced: the caller counts the update.
    pub fn step_from_tensors(&mut self, lr: &Tensor, step: &mut Tensor) -> Result<(), String> {
        let _guard = tch::no_grad_guard();
        self.fused_call(step, Some(lr))
    }

    fn fused_call(&self, step_tensor: &mut Tensor, lr_tensor: Option<&Tensor>) -> Result<(), String> {
        let mut grads = Vec::with_capacity(self.params.len());
        let mut idx = Vec::with_capacity(self.params.len());
        for (i, (_, p)) in self.params.iter().enumerate() {
            let g = p.grad();
            if g.defined() {
                grads.push(g);
                idx.push(i);
            }
        }
        if idx.is_empty() {
            return Ok(());
        }
        let ptrs = |ts: Vec<&Tensor>| -> Vec<*mut torch_sys::C_tensor> {
            ts.into_iter().map(|t| t.as_ptr() as *mut torch_sys::C_tensor).collect()
        };
        let params = ptrs(idx.iter().map(|&i| &self.params[i].1).collect());
        let grads_p = ptrs(grads.iter().collect());
        let exp_avg = ptrs(idx.iter().map(|&i| &self.exp_avg[i]).collect());
        let exp_avg_sq = ptrs(idx.iter().map(|&i| &self.exp_avg_sq[i]).collect());
        let lr_ptr = lr_tensor.map_or(std::ptr::null_mut(), |t| t.as_ptr() as *mut torch_sys::C_tensor);
        let mut err = vec![0 as std::os::raw::c_char; 512];
        let c = self.cfg;
        let rc = unsafe {
            ddpm_fused_adam(
                params.as_ptr(),
                grads_p.as_ptr(),
                exp_avg.as_ptr(),
                exp_avg_sq.as_ptr(),
                step_tensor.as_mut_ptr(),
                lr_ptr,
                idx.len() as std::os::raw::c_int,
                self.lr,
                c.beta1,
                c.beta2,
                c.weight_decay,
                c.eps,
                c.decoupled as std::os::raw::c_int,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if rc != 0 {
            let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
            return Err(msg.lines().next().unwrap_or("").to_string());
        }
        Ok(())
    }

    /// The update written out per parameter tensor (PyTorch's single-tensor Adam).
    fn loop_step(&mut self) {
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2_sqrt = (1.0 - c.beta2.powi(self.step as i32)).sqrt();
        for (i, (_, p)) in self.params.iter_mut().enumerate() {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let g = if c.weight_decay != 0.0 && !c.decoupled { &g + &*p * c.weight_decay } else { g };
            if c.weight_decay != 0.0 && c.decoupled {
                let _ = p.g_mul_scalar_(1.0 - self.lr * c.weight_decay);
            }
            let _ = self.exp_avg[i].lerp_(&g, 1.0 - c.beta1);
            let _ = self.exp_avg_sq[i].g_mul_scalar_(c.beta2).addcmul_(&g, &(&g * (1.0 - c.beta2)));
            let denom = (self.exp_avg_sq[i].sqrt() / bc2_sqrt) + c.eps;
            let _ = p.addcdiv_(&(&self.exp_avg[i] * (-self.lr / bc1)), &denom);
        }
    }

    /// `backward`, `step`, `zero_grad` in the order tch's `backward_step` uses.
    pub fn backward_step(&mut self, loss: &Tensor) {
        self.zero_grad();
        loss.backward();
        self.step();
    }

    /// The moments by parameter name: `exp_avg.<name>`, `exp_avg_sq.<name>`.
    pub fn state(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.insert(format!("exp_avg.{name}"), self.exp_avg[i].shallow_clone());
            out.insert(format!("exp_avg_sq.{name}"), self.exp_avg_sq[i].shallow_clone());
        }
        out
    }

    /// Restores the moments saved by [`Adam::state`]; every one must be present with its shape.
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>, step: i64) -> Result<(), String> {
        let _guard = tch::no_grad_guard();
        for (i, (name, p)) in self.params.iter().enumerate() {
            for (key, dst) in [
                (format!("exp_avg.{name}"), &mut self.exp_avg[i]),
                (format!("exp_avg_sq.{name}"), &mut self.exp_avg_sq[i]),
            ] {
                let src = state.get(&key).ok_or_else(|| format!("optimizer state lacks '{key}'"))?;
                if src.size() != p.size() {
                    return Err(format!("optimizer state '{key}' has shape {:?}, expected {:?}", src.size(), p.size()));
                }
                dst.copy_(src);
            }
        }
        self.step = step;
        Ok(())
    }
}
