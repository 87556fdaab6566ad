//! Self-attention over the positions of a feature map (the DDPM UNet's AttnBlock):
//! GroupNorm -> q, k, v by 1x1 convs -> softmax(q k^T / sqrt(C)) v -> 1x1 conv -> + input.
//! Written with matmul and softmax so it has a backward through tch.

use super::blocks::group_norm;
use super::ddpm_init::{conv2d, zero_conv2d};
use tch::{nn, Kind, Tensor};

#[derive(Debug)]
pub struct AttnBlock {
    norm: nn::GroupNorm,
    q: nn::Conv2D,
    k: nn::Conv2D,
    v: nn::Conv2D,
    proj_out: nn::Conv2D,
}

impl AttnBlock {
    pub fn new(p: &nn::Path, channels: i64, groups: i64) -> Self {
        Self {
            norm: group_norm(p / "norm", groups, channels),
            q: conv2d(p / "q", channels, channels, 1, 1, 0),
            k: conv2d(p / "k", channels, channels, 1, 1, 0),
            v: conv2d(p / "v", channels, channels, 1, 1, 0),
            proj_out: zero_conv2d(p / "proj_out", channels, channels, 1, 1, 0),
        }
    }

    pub fn forward(&self, xs: &Tensor) -> Tensor {
        let [n, c, h, w] = xs.size()[..] else { panic!("AttnBlock expects [N, C, H, W]") };
        let hs = xs.apply(&self.norm);
        let q = hs.apply(&self.q).view([n, c, h * w]).transpose(1, 2); // [N, HW, C]
        let k = hs.apply(&self.k).view([n, c, h * w]); // [N, C, HW]
        let v = hs.apply(&self.v).view([n, c, h * w]).transpose(1, 2); // [N, HW, C]
        let weights = (q.matmul(&k) * (c as f64).powf(-0.5)).softmax(-1, Kind::Float); // [N, HW, HW]
        let out = weights.matmul(&v).transpose(1, 2).reshape([n, c, h, w]);
        xs + out.apply(&self.proj_out)
    }
}
