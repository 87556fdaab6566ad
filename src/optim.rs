//! Adam and AdamW on plain tensors (Kingma & Ba 2015; Loshchilov & Hutter 2019), written out
//! because tch's optimizers do not expose their moments, and exact resume needs them saved.
//! The update is PyTorch's `torch.optim.Adam` (non-amsgrad, non-fused) step for step.

use std::collections::BTreeMap;
use tch::{nn, Tensor};

extern "C" {
    // csrc/ops.cpp
    fn ddpm_tensor_reset_grad(t: *mut torch_sys::C_tensor) -> std::os::raw::c_int;
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
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, decoupled: false }
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
}

impl Adam {
    pub fn new(vs: &nn::VarStore, lr: f64, cfg: AdamConfig) -> Self {
        let params = crate::model::trainable_sorted(vs);
        let exp_avg = params.iter().map(|(_, p)| p.zeros_like()).collect();
        let exp_avg_sq = params.iter().map(|(_, p)| p.zeros_like()).collect();
        Self { cfg, lr, step: 0, params, exp_avg, exp_avg_sq }
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

    /// One update from the current gradients.
    pub fn step(&mut self) {
        let _guard = tch::no_grad_guard();
        self.step += 1;
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
