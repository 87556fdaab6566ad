//! Noise-prediction networks.

pub mod attention;
pub mod blocks;
pub mod config;
pub mod ddpm_init;
pub mod demo;
pub mod embedding;
pub mod fused;
pub mod unet;

pub use config::{DemoConfig, NetworkConfig, UnetConfig};
use tch::{nn, Tensor};

/// A network that predicts the noise in `x_t` at timesteps `t`, optionally given class labels.
pub trait Denoiser {
    /// `xs: [N, C, H, W]`, `t: i64 [N]`, `labels: i64 [N]` (the null class `num_classes`
    /// means "unconditional") -> `[N, C, H, W]`. Unconditional networks ignore `labels`.
    fn forward(&self, xs: &Tensor, t: &Tensor, labels: Option<&Tensor>) -> Tensor;

    /// Number of classes for conditional generation (0 = unconditional).
    fn num_classes(&self) -> i64;

    /// Switches dropout on (training) or off (sampling; the default).
    fn set_training(&self, _on: bool) {}
}

impl Denoiser for unet::UNet {
    fn forward(&self, xs: &Tensor, t: &Tensor, labels: Option<&Tensor>) -> Tensor {
        unet::UNet::forward(self, xs, t, labels)
    }

    fn num_classes(&self) -> i64 {
        self.num_classes
    }

    fn set_training(&self, on: bool) {
        unet::UNet::set_training(self, on)
    }
}

impl Denoiser for demo::DemoUNet {
    fn forward(&self, xs: &Tensor, t: &Tensor, labels: Option<&Tensor>) -> Tensor {
        demo::DemoUNet::forward(self, xs, t, labels)
    }

    fn num_classes(&self) -> i64 {
        self.num_classes
    }
}

/// Builds the configured network under the root of `vs`.
pub fn build(vs: &nn::VarStore, cfg: &NetworkConfig, image_shape: [i64; 3], n_steps: i64) -> Box<dyn Denoiser> {
    match cfg {
        NetworkConfig::Demo(d) => Box::new(demo::DemoUNet::new(&vs.root(), d, image_shape, n_steps)),
        NetworkConfig::Unet(u) => Box::new(unet::UNet::new(&vs.root(), u, image_shape)),
    }
}

/// Number of trainable parameters in a store.
pub fn trainable_parameters(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
}

/// PyTorch's default initialisation (`kaiming_uniform_(a=sqrt(5))` for weights, the same
/// bound for biases): U(-1/sqrt(fan_in), 1/sqrt(fan_in)). tch's defaults differ, and the demo's
/// training behaviour (an initial loss near 1) depends on these.
fn torch_init(fan_in: i64) -> nn::Init {
    let b = 1.0 / (fan_in.max(1) as f64).sqrt();
    nn::Init::Uniform { lo: -b, up: b }
}

/// `nn.Conv2d(c_in, c_out, k, stride, padding)` with PyTorch's initialisation.
pub fn conv2d(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    let init = torch_init(c_in * k * k);
    nn::conv2d(
        p,
        c_in,
        c_out,
        k,
        nn::ConvConfig { stride, padding, ws_init: init, bs_init: init, ..Default::default() },
    )
}

/// `nn.ConvTranspose2d(c_in, c_out, k, stride)` with PyTorch's initialisation (fan-in taken
/// from the weight's second dimension, as PyTorch does).
pub fn conv_transpose2d(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64) -> nn::ConvTranspose2D {
    let init = torch_init(c_out * k * k);
    nn::conv_transpose2d(
        p,
        c_in,
        c_out,
        k,
        nn::ConvTransposeConfig { stride, ws_init: init, bs_init: init, ..Default::default() },
    )
}

/// `nn.Linear(i, o)` with PyTorch's initialisation.
pub fn linear(p: nn::Path, i: i64, o: i64) -> nn::Linear {
    let init = torch_init(i);
    nn::linear(p, i, o, nn::LinearConfig { ws_init: init, bs_init: Some(init), bias: true })
}

/// The same tensor with NHWC strides (libtorch's channels-last memory format: the logical
/// shape stays `[N, C, H, W]`), which lets oneDNN pick its faster convolution kernels.
pub fn channels_last(x: &Tensor) -> Tensor {
    if x.dim() == 4 {
        x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
    } else {
        x.shallow_clone()
    }
}

/// Moves every 4-D variable (the convolution weights) of `vs` to channels-last in place.
pub fn vs_to_channels_last(vs: &nn::VarStore) {
    let _guard = tch::no_grad_guard();
    for (_, mut v) in vs.variables() {
        if v.dim() == 4 {
            let cl = channels_last(&v);
            v.set_data(&cl);
        }
    }
}

/// The trainable variables of a store in name order (the order `Adam` keeps).
pub fn trainable_sorted(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let trainable = vs.trainable_variables();
    let mut v: Vec<(String, Tensor)> =
        vs.variables().into_iter().filter(|(_, t)| trainable.iter().any(|x| x.data_ptr() == t.data_ptr())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}
