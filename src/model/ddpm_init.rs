//! The DDPM paper's initialisation for `network.kind: unet` (Ho et al. 2020, the official
//! `nn.py`: `default_init` = variance scaling 1.0, fan-avg, uniform; zero biases), with the
//! layers that close a residual branch zero-initialised (`init_scale=0` there, improved-
//! diffusion's `zero_module`): the second convolution of each residual block, the attention
//! output projection and the final convolution. So every residual branch starts as the identity
//! and a freshly built network outputs exactly zero. The demo network keeps PyTorch's defaults
//! (`super::conv2d`, `super::linear`).

use tch::nn;

/// U(-b, b) with `b = sqrt(3 / ((fan_in + fan_out) / 2))`.
fn fan_avg_uniform(fan_in: i64, fan_out: i64) -> nn::Init {
    let b = (3.0 / ((fan_in + fan_out) as f64 / 2.0).max(1.0)).sqrt();
    nn::Init::Uniform { lo: -b, up: b }
}

fn conv(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64, ws_init: nn::Init) -> nn::Conv2D {
    let cfg = nn::ConvConfig { stride, padding, ws_init, bs_init: nn::Init::Const(0.0), ..Default::default() };
    nn::conv2d(p, c_in, c_out, k, cfg)
}

/// A `k x k` convolution with fan-avg uniform weights and a zero bias.
pub fn conv2d(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    conv(p, c_in, c_out, k, stride, padding, fan_avg_uniform(c_in * k * k, c_out * k * k))
}

/// A convolution whose weights and bias start at zero (the end of a residual branch).
pub fn zero_conv2d(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    conv(p, c_in, c_out, k, stride, padding, nn::Init::Const(0.0))
}

/// A dense layer with fan-avg uniform weights and a zero bias.
pub fn linear(p: nn::Path, i: i64, o: i64) -> nn::Linear {
    nn::linear(
        p,
        i,
        o,
        nn::LinearConfig { ws_init: fan_avg_uniform(i, o), bs_init: Some(nn::Init::Const(0.0)), bias: true },
    )
}
