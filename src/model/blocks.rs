//! The residual block of the DDPM paper's UNet (Ho et al. 2020, appendix B; the Wide-ResNet
//! block with GroupNorm): GroupNorm -> SiLU -> conv 3x3 -> + projection of the time embedding
//! -> GroupNorm -> SiLU -> dropout -> conv 3x3, plus a 1x1 skip when the channels change.

use super::ddpm_init::{conv2d, linear, zero_conv2d};
use tch::nn::{self, Module};
use tch::Tensor;

/// GroupNorm with PyTorch's defaults (eps 1e-5, affine).
pub fn group_norm(p: nn::Path, groups: i64, channels: i64) -> nn::GroupNorm {
    nn::group_norm(p, groups, channels, Default::default())
}

#[derive(Debug)]
pub struct ResBlock {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    temb_proj: nn::Linear,
    norm2: nn::GroupNorm,
    dropout: f64,
    conv2: nn::Conv2D,
    skip: Option<nn::Conv2D>,
}

impl ResBlock {
    pub fn new(p: &nn::Path, c_in: i64, c_out: i64, temb_dim: i64, groups: i64, dropout: f64) -> Self {
        Self {
            norm1: group_norm(p / "norm1", groups, c_in),
            conv1: conv2d(p / "conv1", c_in, c_out, 3, 1, 1),
            temb_proj: linear(p / "temb_proj", temb_dim, c_out),
            norm2: group_norm(p / "norm2", groups, c_out),
            dropout,
            conv2: zero_conv2d(p / "conv2", c_out, c_out, 3, 1, 1),
            skip: (c_in != c_out).then(|| conv2d(p / "skip", c_in, c_out, 1, 1, 0)),
        }
    }

    /// `xs: [N, C_in, H, W]`, `temb: [N, temb_dim]` -> `[N, C_out, H, W]`.
    pub fn forward(&self, xs: &Tensor, temb: &Tensor, train: bool) -> Tensor {
        let n = xs.size()[0];
        let h = xs.apply(&self.norm1).silu().apply(&self.conv1);
        let h = h + temb.silu().apply(&self.temb_proj).view([n, -1, 1, 1]);
        let h = h.apply(&self.norm2).silu().dropout(self.dropout, train);
        let skip = match &self.skip {
            Some(s) => s.forward(xs),
            None => xs.shallow_clone(),
        };
        // `sample.freeze`: conv2 and the residual add in one oneDNN call (the other
        // convolutions follow GroupNorm and SiLU, which oneDNN cannot fuse after them).
        if !train && super::fused::usable(&h) {
            if let Some(out) = super::fused::conv(&h, &self.conv2, 1, Some(&skip), false) {
                return out;
            }
        }
        h.apply(&self.conv2) + skip
    }
}
