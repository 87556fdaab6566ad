//! The Inception network of FID (Heusel et al. 2017) as pytorch-fid runs it: torchvision's
//! InceptionV3 layout with the TF-ported weights (`pt_inception-2015-12-05-6726825d.pth`) and
//! pytorch-fid's `FIDInceptionA/C/E` blocks (TensorFlow's average pool that leaves padding out
//! of the mean, and a max pool in the last block). Inputs are uint8-quantised images, scaled to
//! [0, 1], resized to 299x299 bilinearly (align_corners = false) and mapped to [-1, 1]; the
//! features are the 2048-d output of the final average pool, and the 1008 logits of `fc` (where
//! the weights have it) give the Inception Score.
//!
//! Parameter names are those of the official state dict (`Mixed_5b.branch1x1.conv.weight`,
//! `...bn.running_mean`, `fc.weight`), so the `.pth` or a safetensors conversion of it loads
//! directly.

use crate::error::UsageError;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::Path;
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

/// The first 8 hex digits of the official file's SHA-256 (torch.hub's check in pytorch-fid).
pub const WEIGHTS_SHA256_PREFIX: &str = "6726825d";
/// Where the official weights are published.
pub const WEIGHTS_URL: &str =
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth";

/// Conv (no bias) + BatchNorm (eps 0.001) + ReLU: torchvision's `BasicConv2d`.
struct BasicConv {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

impl BasicConv {
    fn new(p: nn::Path, cin: i64, cout: i64, k: [i64; 2], stride: i64, pad: [i64; 2]) -> Self {
        let cfg = nn::ConvConfigND { stride: [stride, stride], padding: pad, bias: false, ..Default::default() };
        let conv = nn::conv(&p / "conv", cin, cout, k, cfg);
        let bn = nn::batch_norm2d(&p / "bn", cout, nn::BatchNormConfig { eps: 0.001, ..Default::default() });
        Self { conv, bn }
    }

    fn sq(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, pad: i64) -> Self {
        Self::new(p, cin, cout, [k, k], stride, [pad, pad])
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.bn.forward_t(&x.apply(&self.conv), false).relu()
    }
}

/// TensorFlow's 3x3 average pool (stride 1, padding 1) without the padded zeros in the mean.
fn tf_avg_pool(x: &Tensor) -> Tensor {
    x.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None::<i64>)
}

fn max_pool(x: &Tensor, stride: i64) -> Tensor {
    x.max_pool2d([3, 3], [stride, stride], [0, 0], [1, 1], false)
}

struct BlockA {
    b1: BasicConv,
    b5: [BasicConv; 2],
    b3: [BasicConv; 3],
    pool: BasicConv,
}

impl BlockA {
    fn new(p: nn::Path, cin: i64, pool_features: i64) -> Self {
        Self {
            b1: BasicConv::sq(&p / "branch1x1", cin, 64, 1, 1, 0),
            b5: [
                BasicConv::sq(&p / "branch5x5_1", cin, 48, 1, 1, 0),
                BasicConv::sq(&p / "branch5x5_2", 48, 64, 5, 1, 2),
            ],
            b3: [
                BasicConv::sq(&p / "branch3x3dbl_1", cin, 64, 1, 1, 0),
                BasicConv::sq(&p / "branch3x3dbl_2", 64, 96, 3, 1, 1),
                BasicConv::sq(&p / "branch3x3dbl_3", 96, 96, 3, 1, 1),
            ],
            pool: BasicConv::sq(&p / "branch_pool", cin, pool_features, 1, 1, 0),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let b5 = self.b5[1].forward(&self.b5[0].forward(x));
        let b3 = self.b3[2].forward(&self.b3[1].forward(&self.b3[0].forward(x)));
        Tensor::cat(&[self.b1.forward(x), b5, b3, self.pool.forward(&tf_avg_pool(x))], 1)
    }
}

struct BlockB {
    b3: BasicConv,
    dbl: [BasicConv; 3],
}

impl BlockB {
    fn new(p: nn::Path, cin: i64) -> Self {
        Self {
            b3: BasicConv::sq(&p / "branch3x3", cin, 384, 3, 2, 0),
            dbl: [
                BasicConv::sq(&p / "branch3x3dbl_1", cin, 64, 1, 1, 0),
                BasicConv::sq(&p / "branch3x3dbl_2", 64, 96, 3, 1, 1),
                BasicConv::sq(&p / "branch3x3dbl_3", 96, 96, 3, 2, 0),
            ],
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let dbl = self.dbl[2].forward(&self.dbl[1].forward(&self.dbl[0].forward(x)));
        Tensor::cat(&[self.b3.forward(x), dbl, max_pool(x, 2)], 1)
    }
}

struct BlockC {
    b1: BasicConv,
    b7: [BasicConv; 3],
    dbl: [BasicConv; 5],
    pool: BasicConv,
}

impl BlockC {
    fn new(p: nn::Path, cin: i64, c7: i64) -> Self {
        let row = |q: nn::Path, i: i64, o: i64| BasicConv::new(q, i, o, [1, 7], 1, [0, 3]);
        let col = |q: nn::Path, i: i64, o: i64| BasicConv::new(q, i, o, [7, 1], 1, [3, 0]);
        Self {
            b1: BasicConv::sq(&p / "branch1x1", cin, 192, 1, 1, 0),
            b7: [
                BasicConv::sq(&p / "branch7x7_1", cin, c7, 1, 1, 0),
                row(&p / "branch7x7_2", c7, c7),
                col(&p / "branch7x7_3", c7, 192),
            ],
            dbl: [
                BasicConv::sq(&p / "branch7x7dbl_1", cin, c7, 1, 1, 0),
                col(&p / "branch7x7dbl_2", c7, c7),
                row(&p / "branch7x7dbl_3", c7, c7),
                col(&p / "branch7x7dbl_4", c7, c7),
                row(&p / "branch7x7dbl_5", c7, 192),
            ],
            pool: BasicConv::sq(&p / "branch_pool", cin, 192, 1, 1, 0),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let b7 = self.b7.iter().fold(x.shallow_clone(), |h, c| c.forward(&h));
        let dbl = self.dbl.iter().fold(x.shallow_clone(), |h, c| c.forward(&h));
        Tensor::cat(&[self.b1.forward(x), b7, dbl, self.pool.forward(&tf_avg_pool(x))], 1)
    }
}

struct BlockD {
    b3: [BasicConv; 2],
    b7: [BasicConv; 4],
}

impl BlockD {
    fn new(p: nn::Path, cin: i64) -> Self {
        Self {
            b3: [
                BasicConv::sq(&p / "branch3x3_1", cin, 192, 1, 1, 0),
                BasicConv::sq(&p / "branch3x3_2", 192, 320, 3, 2, 0),
            ],
            b7: [
                BasicConv::sq(&p / "branch7x7x3_1", cin, 192, 1, 1, 0),
                BasicConv::new(&p / "branch7x7x3_2", 192, 192, [1, 7], 1, [0, 3]),
                BasicConv::new(&p / "branch7x7x3_3", 192, 192, [7, 1], 1, [3, 0]),
                BasicConv::sq(&p / "branch7x7x3_4", 192, 192, 3, 2, 0),
            ],
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let b3 = self.b3[1].forward(&self.b3[0].forward(x));
        let b7 = self.b7.iter().fold(x.shallow_clone(), |h, c| c.forward(&h));
        Tensor::cat(&[b3, b7, max_pool(x, 2)], 1)
    }
}

struct BlockE {
    b1: BasicConv,
    b3: [BasicConv; 3],
    dbl: [BasicConv; 4],
    pool: BasicConv,
    /// pytorch-fid's `FIDInceptionE_2`: a max pool where the first E block averages.
    max_pool: bool,
}

impl BlockE {
    fn new(p: nn::Path, cin: i64, max_pool: bool) -> Self {
        let row = |q: nn::Path, i: i64, o: i64| BasicConv::new(q, i, o, [1, 3], 1, [0, 1]);
        let col = |q: nn::Path, i: i64, o: i64| BasicConv::new(q, i, o, [3, 1], 1, [1, 0]);
        Self {
            b1: BasicConv::sq(&p / "branch1x1", cin, 320, 1, 1, 0),
            b3: [
                BasicConv::sq(&p / "branch3x3_1", cin, 384, 1, 1, 0),
                row(&p / "branch3x3_2a", 384, 384),
                col(&p / "branch3x3_2b", 384, 384),
            ],
            dbl: [
                BasicConv::sq(&p / "branch3x3dbl_1", cin, 448, 1, 1, 0),
                BasicConv::sq(&p / "branch3x3dbl_2", 448, 384, 3, 1, 1),
                row(&p / "branch3x3dbl_3a", 384, 384),
                col(&p / "branch3x3dbl_3b", 384, 384),
            ],
            pool: BasicConv::sq(&p / "branch_pool", cin, 192, 1, 1, 0),
            max_pool,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.b3[0].forward(x);
        let b3 = Tensor::cat(&[self.b3[1].forward(&h), self.b3[2].forward(&h)], 1);
        let h = self.dbl[1].forward(&self.dbl[0].forward(x));
        let dbl = Tensor::cat(&[self.dbl[2].forward(&h), self.dbl[3].forward(&h)], 1);
        let pooled = match self.max_pool {
            true => x.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false),
            false => tf_avg_pool(x),
        };
        Tensor::cat(&[self.b1.forward(x), b3, dbl, self.pool.forward(&pooled)], 1)
    }
}

/// The FID Inception network with its weights.
pub struct Inception {
    vs: nn::VarStore,
    stem: Vec<BasicConv>,
    a: Vec<BlockA>,
    b: BlockB,
    c: Vec<BlockC>,
    d: BlockD,
    e: Vec<BlockE>,
    fc: Option<nn::Linear>,
}

/// Features of a batch: the 2048-d pool features and, with `fc`, the 1008 logits.
pub struct Outputs {
    pub pool: Tensor,
    pub logits: Option<Tensor>,
}

impl Inception {
    fn build(device: Device, with_fc: bool) -> Self {
        let vs = nn::VarStore::new(device);
        let p = vs.root();
        let stem = vec![
            BasicConv::sq(&p / "Conv2d_1a_3x3", 3, 32, 3, 2, 0),
            BasicConv::sq(&p / "Conv2d_2a_3x3", 32, 32, 3, 1, 0),
            BasicConv::sq(&p / "Conv2d_2b_3x3", 32, 64, 3, 1, 1),
            BasicConv::sq(&p / "Conv2d_3b_1x1", 64, 80, 1, 1, 0),
            BasicConv::sq(&p / "Conv2d_4a_3x3", 80, 192, 3, 1, 0),
        ];
        let a = vec![
            BlockA::new(&p / "Mixed_5b", 192, 32),
            BlockA::new(&p / "Mixed_5c", 256, 64),
            BlockA::new(&p / "Mixed_5d", 288, 64),
        ];
        let b = BlockB::new(&p / "Mixed_6a", 288);
        let c = [("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)]
            .into_iter()
            .map(|(n, c7)| BlockC::new(&p / n, 768, c7))
            .collect();
        let d = BlockD::new(&p / "Mixed_7a", 768);
        let e = vec![BlockE::new(&p / "Mixed_7b", 1280, false), BlockE::new(&p / "Mixed_7c", 2048, true)];
        let fc = with_fc.then(|| nn::linear(&p / "fc", 2048, 1008, Default::default()));
        Self { vs, stem, a, b, c, d, e, fc }
    }

    /// Loads the weights from `path` (the official `.pth`, or a safetensors conversion made by
    /// `scripts/python/fid_weights.py`). Unless `any_weights`, the file must be the official
    /// one: its SHA-256 (for a `.pth`), or the `source_sha256` a conversion records, must begin
    /// with [`WEIGHTS_SHA256_PREFIX`].
    pub fn load(path: &Path, device: Device, any_weights: bool) -> Result<Self> {
        if !path.exists() {
            bail!(UsageError(format!(
                "no Inception weights at {}: download {WEIGHTS_URL} (pytorch-fid's FID weights, 91 MB) and pass it with --inception \
                 (or eval.inception_weights); scripts/python/fid_weights.py converts it to safetensors",
                path.display()
            )));
        }
        let is_st = path.extension().is_some_and(|e| e == "safetensors");
        if !any_weights {
            let found = match is_st {
                true => safetensors_source_sha(path)?,
                false => crate::fsutil::sha256_file(path)?,
            };
            if !found.starts_with(WEIGHTS_SHA256_PREFIX) {
                bail!(UsageError(format!(
                    "{}: not pytorch-fid's FID Inception weights (SHA-256 {}, expected one beginning with {WEIGHTS_SHA256_PREFIX}: \
                     pt_inception-2015-12-05-6726825d.pth); FID with other weights is not comparable to anyone's",
                    path.display(),
                    if found.is_empty() { "unknown: no source_sha256 recorded".to_string() } else { found }
                )));
            }
        }
        let named: Vec<(String, Tensor)> = match is_st {
            true => Tensor::read_safetensors(path),
            false => Tensor::loadz_multi(path),
        }
        .map_err(|e| {
            UsageError(format!(
                "{}: cannot read the Inception weights ({}); a .pth saved by an old torch can be converted with \
                 scripts/python/fid_weights.py",
                path.display(),
                e.to_string().lines().next().unwrap_or("")
            ))
        })?;
        let named: HashMap<String, Tensor> = named.into_iter().collect();
        let mut net = Self::build(device, named.contains_key("fc.weight"));
        net.vs.freeze();
        let _guard = tch::no_grad_guard();
        for (name, mut var) in net.vs.variables() {
            let src = named.get(&name).with_context(|| {
                UsageError(format!(
                    "{}: the Inception weights lack '{name}' (a truncated or other file?)",
                    path.display()
                ))
            })?;
            if src.size() != var.size() {
                bail!(UsageError(format!(
                    "{}: '{name}' has shape {:?}, expected {:?}",
                    path.display(),
                    src.size(),
                    var.size()
                )));
            }
            var.copy_(&src.to_kind(Kind::Float));
        }
        Ok(net)
    }

    /// Features of images `[N, C, H, W]` in [0, 1] (C = 1 is repeated to RGB).
    pub fn forward(&self, x01: &Tensor) -> Outputs {
        let _guard = tch::no_grad_guard();
        let x = x01.to_device(self.vs.device()).to_kind(Kind::Float);
        let x = if x.size()[1] == 1 { x.repeat([1, 3, 1, 1]) } else { x };
        let x = x.upsample_bilinear2d([299, 299], false, None, None) * 2.0 - 1.0;
        let mut h = self.stem[0].forward(&x);
        h = self.stem[1].forward(&h);
        h = max_pool(&self.stem[2].forward(&h), 2);
        h = self.stem[3].forward(&h);
        h = max_pool(&self.stem[4].forward(&h), 2);
        for a in &self.a {
            h = a.forward(&h);
        }
        h = self.b.forward(&h);
        for c in &self.c {
            h = c.forward(&h);
        }
        h = self.d.forward(&h);
        for e in &self.e {
            h = e.forward(&h);
        }
        let pool = h.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        let logits = self.fc.as_ref().map(|fc| pool.apply(fc));
        Outputs { pool: pool.to_device(Device::Cpu), logits: logits.map(|l| l.to_device(Device::Cpu)) }
    }

    /// Whether the weights have the logits head (for the Inception Score).
    pub fn has_logits(&self) -> bool {
        self.fc.is_some()
    }

    /// Features of uint8 images `[N, C, H, W]` in batches, with a progress bar.
    pub fn features_u8(&self, images: &Tensor, batch: i64, label: &str) -> Outputs {
        let n = images.size()[0];
        let bar =
            crate::logging::progress_bar(n as u64, &format!("{label} [{{bar:30}}] {{pos}}/{{len}} images ETA {{eta}}"));
        let out = self.features_with(images, batch, &bar);
        bar.finish_and_clear();
        out
    }

    /// Features of uint8 images `[N, C, H, W]` in batches of `batch`, advancing `bar` by the
    /// images done.
    pub fn features_with(&self, images: &Tensor, batch: i64, bar: &indicatif::ProgressBar) -> Outputs {
        let n = images.size()[0];
        let (mut pools, mut logits) = (Vec::new(), Vec::new());
        let mut i = 0;
        while i < n {
            let b = batch.min(n - i);
            // Contiguous NCHW whatever the source layout (an npz is NHWC): the same kernels, the
            // same rounding.
            let out = self.forward(&(images.narrow(0, i, b).contiguous().to_kind(Kind::Float) / 255.0));
            pools.push(out.pool);
            if let Some(l) = out.logits {
                logits.push(l);
            }
            i += b;
            bar.inc(b as u64);
        }
        Outputs { pool: Tensor::cat(&pools, 0), logits: (!logits.is_empty()).then(|| Tensor::cat(&logits, 0)) }
    }
}

/// The `source_sha256` that `scripts/python/fid_weights.py` records in a conversion's metadata
/// (empty when absent).
fn safetensors_source_sha(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let meta = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| UsageError(format!("{}: not a safetensors file ({e})", path.display())))?;
    Ok(meta.1.metadata().as_ref().and_then(|m| m.get("source_sha256").cloned()).unwrap_or_default())
}
