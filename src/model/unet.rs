//! The DDPM paper's UNet (Ho et al. 2020, appendix B), `network.kind: unet`: GroupNorm/SiLU
//! residual blocks, self-attention at chosen resolutions, a sinusoidal time embedding followed
//! by an MLP with SiLU, configurable base width, channel multipliers, blocks per level and
//! dropout. With base 128, multipliers (1, 2, 2, 2), 2 blocks, attention at 16x16 and dropout
//! 0.1 it is the paper's 35.7M-parameter CIFAR-10 network.
//!
//! 1. `temb = MLP(sinusoid(t))` (+ a label embedding for conditional models);
//! 2. `conv_in`, then per level: `num_res_blocks` ResBlocks (+ attention), a stride-2 conv
//!    between levels; every output kept as a skip;
//! 3. middle: ResBlock, attention, ResBlock;
//! 4. per level, deepest first: `num_res_blocks + 1` ResBlocks on [x, skip] (+ attention),
//!    nearest upsampling to the next skip's size (so 28x28 works: 7 -> 4 -> 7) and a conv;
//! 5. GroupNorm, SiLU, conv 3x3 to the image's channels.

use super::attention::AttnBlock;
use super::blocks::{group_norm, ResBlock};
use super::config::UnetConfig;
use super::ddpm_init::{conv2d, linear, zero_conv2d};
use std::cell::Cell;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

#[derive(Debug)]
struct Stage {
    res: ResBlock,
    attn: Option<AttnBlock>,
}

impl Stage {
    fn forward(&self, xs: &Tensor, temb: &Tensor, train: bool) -> Tensor {
        let h = self.res.forward(xs, temb, train);
        match &self.attn {
            Some(a) => a.forward(&h),
            None => h,
        }
    }
}

#[derive(Debug)]
pub struct UNet {
    base: i64,
    temb_dense: [nn::Linear; 2],
    label_emb: Option<nn::Embedding>,
    conv_in: nn::Conv2D,
    /// Per level: its stages, then the downsampling conv (all levels but the last).
    down: Vec<(Vec<Stage>, Option<nn::Conv2D>)>,
    mid: (ResBlock, AttnBlock, ResBlock),
    /// Deepest level first: its stages, then the upsampling conv (all levels but the first).
    up: Vec<(Vec<Stage>, Option<nn::Conv2D>)>,
    norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
    pub num_classes: i64,
    training: Cell<bool>,
}

/// `[N]` timesteps -> `[N, dim]` sinusoidal features (the paper's `get_timestep_embedding`:
/// sin in the first half, cos in the second).
pub fn timestep_embedding(t: &Tensor, dim: i64) -> Tensor {
    let half = dim / 2;
    let scale = -(10000f64.ln()) / (half - 1).max(1) as f64;
    let freqs = (Tensor::arange(half, (Kind::Float, t.device())) * scale).exp(); // [half]
    let args = t.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0); // [N, half]
    let emb = Tensor::cat(&[args.sin(), args.cos()], 1);
    if dim % 2 == 1 {
        emb.constant_pad_nd([0, 1])
    } else {
        emb
    }
}

impl UNet {
    pub fn new(p: &nn::Path, cfg: &UnetConfig, image_shape: [i64; 3]) -> Self {
        let [c, h, _] = image_shape;
        let base = cfg.base_channels;
        let temb_dim = 4 * base;
        let (g, drop) = (cfg.groups, cfg.dropout);
        let levels = cfg.channel_mults.len();
        let chans: Vec<i64> = cfg.channel_mults.iter().map(|m| base * m).collect();
        // Spatial size of each level: stride-2 3x3 convs with padding 1 (28 -> 14 -> 7 -> 4).
        let mut sizes = vec![h];
        for _ in 1..levels {
            sizes.push((sizes[sizes.len() - 1] + 1) / 2);
        }
        let attn_at = |res: i64| cfg.attn_resolutions.contains(&res);
        let stage = |p: nn::Path, ci: i64, co: i64, res: i64| Stage {
            res: ResBlock::new(&(&p / "res"), ci, co, temb_dim, g, drop),
            attn: attn_at(res).then(|| AttnBlock::new(&(&p / "attn"), co, g)),
        };

        let mut skip_chans = vec![base];
        let mut down = Vec::new();
        let mut ch = base;
        for (i, &co) in chans.iter().enumerate() {
            let lp = p / "down" / i;
            let mut stages = Vec::new();
            for b in 0..cfg.num_res_blocks {
                stages.push(stage(&lp / b, ch, co, sizes[i]));
                ch = co;
                skip_chans.push(ch);
            }
            let ds = (i + 1 < levels).then(|| {
                skip_chans.push(ch);
                conv2d(&lp / "downsample", ch, ch, 3, 2, 1)
            });
            down.push((stages, ds));
        }
        let mp = p / "mid";
        let mid = (
            ResBlock::new(&(&mp / "res1"), ch, ch, temb_dim, g, drop),
            AttnBlock::new(&(&mp / "attn"), ch, g),
            ResBlock::new(&(&mp / "res2"), ch, ch, temb_dim, g, drop),
        );
        let mut up = Vec::new();
        for (i, &co) in chans.iter().enumerate().rev() {
            let lp = p / "up" / i;
            let mut stages = Vec::new();
            for b in 0..=cfg.num_res_blocks {
                let skip = skip_chans.pop().unwrap_or(base);
                stages.push(stage(&lp / b, ch + skip, co, sizes[i]));
                ch = co;
            }
            let us = (i > 0).then(|| conv2d(&lp / "upsample", ch, ch, 3, 1, 1));
            up.push((stages, us));
        }
        let label_emb = (cfg.num_classes > 0).then(|| {
            let init = nn::EmbeddingConfig { ws_init: nn::Init::Randn { mean: 0.0, stdev: 1.0 }, ..Default::default() };
            nn::embedding(p / "label_emb", cfg.num_classes + 1, temb_dim, init)
        });
        Self {
            base,
            temb_dense: [linear(p / "temb" / 0, base, temb_dim), linear(p / "temb" / 1, temb_dim, temb_dim)],
            label_emb,
            conv_in: conv2d(p / "conv_in", c, base, 3, 1, 1),
            down,
            mid,
            up,
            norm_out: group_norm(p / "norm_out", g, ch),
            conv_out: zero_conv2d(p / "conv_out", ch, c, 3, 1, 1),
            num_classes: cfg.num_classes,
            training: Cell::new(false),
        }
    }

    pub fn set_training(&self, on: bool) {
        self.training.set(on);
    }

    pub fn forward(&self, xs: &Tensor, t: &Tensor, labels: Option<&Tensor>) -> Tensor {
        let train = self.training.get();
        let n = xs.size()[0];
        // 1. time (and label) embedding
        let mut temb = timestep_embedding(t, self.base).apply(&self.temb_dense[0]).silu().apply(&self.temb_dense[1]);
        if let Some(emb) = &self.label_emb {
            let y = match labels {
                Some(y) => y.shallow_clone(),
                None => Tensor::full([n], self.num_classes, (Kind::Int64, xs.device())),
            };
            temb = &temb + y.apply(emb);
        }
        // 2. down path, keeping every output as a skip
        let mut h = xs.apply(&self.conv_in);
        let mut skips = vec![h.shallow_clone()];
        for (stages, ds) in &self.down {
            for s in stages {
                h = s.forward(&h, &temb, train);
                skips.push(h.shallow_clone());
            }
            if let Some(conv) = ds {
                h = conv.forward(&h);
                skips.push(h.shallow_clone());
            }
        }
        // 3. middle
        h = self.mid.0.forward(&h, &temb, train);
        h = self.mid.1.forward(&h);
        h = self.mid.2.forward(&h, &temb, train);
        // 4. up path
        for (stages, us) in &self.up {
            for s in stages {
                let skip = skips.pop().expect("one skip per up stage");
                h = s.forward(&Tensor::cat(&[&h, &skip], 1), &temb, train);
            }
            if let Some(conv) = us {
                let next = skips.last().expect("a skip below each upsampling").size();
                h = h.upsample_nearest2d([next[2], next[3]], None, None).apply(conv);
            }
        }
        // 5. output
        h.apply(&self.norm_out).silu().apply(&self.conv_out)
    }
}
