//! The teaching demo's UNet, parameter for parameter, so its PyTorch `state_dict` loads here
//! and ours loads there. For `channels = [c1, .., ck]`:
//!
//! 1. time: `pe(t)` from the frozen sinusoidal table;
//! 2. encoder level i (i = 1..k-1): `x + MLP_i(pe)` per channel -> 2 blocks -> skip -> 2x2
//!    stride-2 conv;
//! 3. middle: `x + Linear(pe)` -> 2 blocks to c_k;
//! 4. decoder level i (deepest first): 2x2 stride-2 transposed conv -> zero-pad to the skip's
//!    size -> concat [skip, up] -> `+ Linear(pe)` -> 2 blocks;
//! 5. 3x3 conv to the image's channels.

use super::config::DemoConfig;
use super::embedding::PositionalEncoding;
use super::{conv2d, conv_transpose2d, linear};
use tch::nn::{self, Module};
use tch::Tensor;

/// LayerNorm over (C, H, W) -> conv 3x3 -> ReLU -> conv 3x3 -> (+ input, through a 1x1 conv
/// when channels change, if residual) -> ReLU.
#[derive(Debug)]
pub struct UnetBlock {
    ln: nn::LayerNorm,
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
    residual: bool,
    residual_conv: Option<nn::Conv2D>,
}

impl UnetBlock {
    /// `shape = [C_in, H, W]` of the input.
    pub fn new(p: &nn::Path, shape: [i64; 3], c_in: i64, c_out: i64, residual: bool) -> Self {
        let ln = nn::layer_norm(p / "ln", shape.to_vec(), Default::default());
        let conv1 = conv2d(p / "conv1", c_in, c_out, 3, 1, 1);
        let conv2 = conv2d(p / "conv2", c_out, c_out, 3, 1, 1);
        let residual_conv = (residual && c_in != c_out).then(|| conv2d(p / "residual_conv", c_in, c_out, 1, 1, 0));
        Self { ln, conv1, conv2, residual, residual_conv }
    }

    pub fn forward(&self, xs: &Tensor) -> Tensor {
        if super::fused::usable(xs) {
            if let Some(out) = self.forward_fused(xs) {
                return out;
            }
        }
        let out = layer_norm(&self.ln, xs).apply(&self.conv1).relu().apply(&self.conv2);
        let out = match (self.residual, &self.residual_conv) {
            (false, _) => out,
            (true, Some(conv)) => out + xs.apply(conv),
            (true, None) => out + xs,
        };
        out.relu()
    }

    /// The same block in three oneDNN calls: conv1 + ReLU, the 1x1 residual conv (when the
    /// channels change), conv2 + residual + ReLU (conv2 + ReLU without the residual).
    fn forward_fused(&self, xs: &Tensor) -> Option<Tensor> {
        use super::fused::conv;
        let h = conv(&layer_norm(&self.ln, xs), &self.conv1, 1, None, true)?;
        let skip = match (self.residual, &self.residual_conv) {
            (false, _) => None,
            (true, Some(c)) => Some(conv(xs, c, 0, None, false)?),
            (true, None) => Some(xs.shallow_clone()),
        };
        conv(&h, &self.conv2, 1, skip.as_ref(), true)
    }
}

/// The block's LayerNorm over (C, H, W), without leaving channels-last: on an input with NHWC
/// strides it normalises the contiguous `[N, H, W, C]` view, the affine parameters permuted
/// alike, and hands back the NCHW view of the result. The statistics are over the same elements,
/// so this is the same function; plain `layer_norm` would first copy such an input to NCHW (and
/// its backward copy the gradient), and the next convolution copy it back.
fn layer_norm(ln: &nn::LayerNorm, xs: &Tensor) -> Tensor {
    let nhwc = xs.permute([0, 2, 3, 1]);
    if xs.is_contiguous() || !nhwc.is_contiguous() || ln.normalized_shape.len() != 3 {
        return ln.forward(xs);
    }
    let [c, h, w] = [ln.normalized_shape[0], ln.normalized_shape[1], ln.normalized_shape[2]];
    let perm = |t: &Option<Tensor>| t.as_ref().map(|t| t.permute([1, 2, 0]));
    let (ws, bs) = (perm(&ln.ws), perm(&ln.bs));
    let eps = nn::LayerNormConfig::default().eps;
    nhwc.layer_norm([h, w, c], ws.as_ref(), bs.as_ref(), eps, true).permute([0, 3, 1, 2])
}

#[derive(Debug)]
struct Level {
    pe_linear: Vec<nn::Linear>,
    blocks: [UnetBlock; 2],
    resample: Box<dyn Module>,
}

/// The demo network.
#[derive(Debug)]
pub struct DemoUNet {
    pe: PositionalEncoding,
    encoders: Vec<Level>,
    pe_mid: nn::Linear,
    mid: [UnetBlock; 2],
    decoders: Vec<Level>,
    conv_out: nn::Conv2D,
    /// Class embedding (`num_classes + 1` rows, the last one the null class) added to the time
    /// features; absent for unconditional networks, which then equal the demo's exactly.
    label_emb: Option<nn::Embedding>,
    pub num_classes: i64,
}

impl DemoUNet {
    /// Builds the network for images of `image_shape = [C, H, W]` under `p`.
    pub fn new(p: &nn::Path, cfg: &DemoConfig, image_shape: [i64; 3], n_steps: i64) -> Self {
        let [c, h, w] = image_shape;
        let chans = &cfg.channels;
        let k = chans.len();
        let hs: Vec<i64> = (0..k).map(|i| h >> i).collect();
        let ws: Vec<i64> = (0..k).map(|i| w >> i).collect();
        let pe_dim = cfg.pe_dim;
        let lin = |p: nn::Path, i, o| linear(p, i, o);
        let block = |p: nn::Path, shape, ci, co| UnetBlock::new(&p, shape, ci, co, cfg.residual);

        let mut encoders = Vec::new();
        let mut prev = c;
        for i in 0..k - 1 {
            let ch = chans[i];
            let pl = p / "pe_linears_en" / i;
            let enc = p / "encoders" / i;
            encoders.push(Level {
                pe_linear: vec![lin(&pl / 0, pe_dim, prev), lin(&pl / 2, prev, prev)],
                blocks: [block(&enc / 0, [prev, hs[i], ws[i]], prev, ch), block(&enc / 1, [ch, hs[i], ws[i]], ch, ch)],
                resample: Box::new(conv2d(p / "downs" / i, ch, ch, 2, 2, 0)),
            });
            prev = ch;
        }
        let pe_mid = lin(p / "pe_mid", pe_dim, prev);
        let top = chans[k - 1];
        let mid = [
            block(p / "mid" / 0, [prev, hs[k - 1], ws[k - 1]], prev, top),
            block(p / "mid" / 1, [top, hs[k - 1], ws[k - 1]], top, top),
        ];
        prev = top;
        let mut decoders = Vec::new();
        for (j, i) in (0..k - 1).rev().enumerate() {
            let ch = chans[i];
            let dec = p / "decoders" / j;
            decoders.push(Level {
                pe_linear: vec![lin(p / "pe_linears_de" / j, pe_dim, 2 * ch)],
                blocks: [
                    block(&dec / 0, [2 * ch, hs[i], ws[i]], 2 * ch, ch),
                    block(&dec / 1, [ch, hs[i], ws[i]], ch, ch),
                ],
                resample: Box::new(conv_transpose2d(p / "ups" / j, prev, ch, 2, 2)),
            });
            prev = ch;
        }
        let conv_out = conv2d(p / "conv_out", prev, c, 3, 1, 1);
        let pe = PositionalEncoding::new(&(p / "pe"), n_steps, pe_dim);
        let label_emb = (cfg.num_classes > 0).then(|| {
            let init = nn::EmbeddingConfig { ws_init: nn::Init::Randn { mean: 0.0, stdev: 1.0 }, ..Default::default() };
            nn::embedding(p / "label_emb", cfg.num_classes + 1, pe_dim, init)
        });
        Self { pe, encoders, pe_mid, mid, decoders, conv_out, label_emb, num_classes: cfg.num_classes }
    }

    /// Predicts the noise in `xs: [N, C, H, W]` at timesteps `t: i64 [N]`, for classes
    /// `labels: i64 [N]` when the network is conditional (None = the null class).
    pub fn forward(&self, xs: &Tensor, t: &Tensor, labels: Option<&Tensor>) -> Tensor {
        let n = xs.size()[0];
        let mut temb = self.pe.forward(t); // [N, pe_dim]
        if let Some(emb) = &self.label_emb {
            let null;
            let y = match labels {
                Some(y) => y,
                None => {
                    null = Tensor::full([n], self.num_classes, (tch::Kind::Int64, xs.device()));
                    &null
                }
            };
            temb = &temb + y.apply(emb);
        }
        let per_channel = |ys: Tensor| ys.view([n, -1, 1, 1]);
        let mut x = xs.shallow_clone();
        let mut skips = Vec::with_capacity(self.encoders.len());
        for level in &self.encoders {
            let pe = temb.apply(&level.pe_linear[0]).relu().apply(&level.pe_linear[1]);
            // Never `+=` here: on a tch Tensor that is an in-place add, and `x` starts as the
            // caller's input.
            x = &x + per_channel(pe);
            x = level.blocks[1].forward(&level.blocks[0].forward(&x));
            x = {
                let down = level.resample.forward(&x);
                skips.push(x);
                down
            };
        }
        x = &x + per_channel(temb.apply(&self.pe_mid));
        x = self.mid[1].forward(&self.mid[0].forward(&x));
        for (level, skip) in self.decoders.iter().zip(skips.iter().rev()) {
            let up = level.resample.forward(&x);
            // Zero-pad H and W to the skip's size (3 -> 6 -> 7 on MNIST), the difference split
            // as the demo's F.pad splits it, (d // 2, d - d // 2). The pads are given last
            // dimension first: W's pair, then H's.
            let (dh, dw) = (skip.size()[2] - up.size()[2], skip.size()[3] - up.size()[3]);
            let up =
                if dh != 0 || dw != 0 { up.constant_pad_nd([dw / 2, dw - dw / 2, dh / 2, dh - dh / 2]) } else { up };
            let cat = Tensor::cat(&[skip, &up], 1); // [N, 2 c_i, H_i, W_i]
            x = cat + per_channel(temb.apply(&level.pe_linear[0]));
            x = level.blocks[1].forward(&level.blocks[0].forward(&x));
        }
        x.apply(&self.conv_out)
    }
}
