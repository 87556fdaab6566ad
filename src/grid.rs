//! Tensors in [-1, 1] -> PNG grids: ceil(sqrt(n)) columns, tiles row-major, optional padding,
//! grayscale for 1 channel and RGB for 3; pixel = clamp((x + 1) / 2 * 255), truncated like
//! the demo's `astype(uint8)`.

use crate::fsutil::write_atomic;
use anyhow::{bail, Context, Result};
use image::{DynamicImage, GrayImage, ImageFormat, RgbImage};
use std::io::Cursor;
use std::path::Path;
use tch::{Kind, Tensor};

/// `[N, C, H, W]` floats in [-1, 1] -> `u8` pixels on the CPU.
pub fn to_pixels(xs: &Tensor) -> Tensor {
    ((xs.to_kind(Kind::Float) + 1.0) / 2.0 * 255.0).clamp(0.0, 255.0).to_kind(Kind::Uint8).to_device(tch::Device::Cpu)
}

/// Lays `xs: [N, C, H, W]` out as a grid of `cols` columns, `pad` pixels apart (and around).
pub fn grid_image(xs: &Tensor, cols: i64, pad: i64) -> Result<DynamicImage> {
    let size = xs.size();
    let [n, c, h, w] = size[..] else { bail!("expected [N, C, H, W] images, got {size:?}") };
    if c != 1 && c != 3 {
        bail!("images with {c} channels cannot be written as PNG (1 or 3)");
    }
    let cols = cols.clamp(1, n.max(1));
    let rows = (n + cols - 1) / cols;
    let (gw, gh) = (cols * (w + pad) + pad, rows * (h + pad) + pad);
    let px = to_pixels(xs).permute([0, 2, 3, 1]).contiguous(); // [N, H, W, C]
    let mut src = vec![0u8; (n * h * w * c) as usize];
    let len = src.len();
    px.copy_data(&mut src, len);
    let mut buf = vec![0u8; (gw * gh * c) as usize];
    for i in 0..n {
        let (r, q) = (i / cols, i % cols);
        let (y0, x0) = (pad + r * (h + pad), pad + q * (w + pad));
        for y in 0..h {
            let from = ((i * h + y) * w * c) as usize;
            let to = (((y0 + y) * gw + x0) * c) as usize;
            buf[to..to + (w * c) as usize].copy_from_slice(&src[from..from + (w * c) as usize]);
        }
    }
    Ok(if c == 1 {
        DynamicImage::ImageLuma8(GrayImage::from_raw(gw as u32, gh as u32, buf).context("grid buffer")?)
    } else {
        DynamicImage::ImageRgb8(RgbImage::from_raw(gw as u32, gh as u32, buf).context("grid buffer")?)
    })
}

/// Columns for `n` tiles: ceil(sqrt(n)).
pub fn default_cols(n: i64) -> i64 {
    let mut c = (n as f64).sqrt().floor() as i64;
    while c * c < n {
        c += 1;
    }
    c.max(1)
}

/// An image encoded as PNG.
pub fn png_bytes(img: &DynamicImage) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    img.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png).context("encoding PNG")?;
    Ok(bytes)
}

/// Encodes an image as PNG and writes it atomically.
pub fn save_png(img: &DynamicImage, path: &Path) -> Result<()> {
    let bytes = png_bytes(img)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating folder {}", dir.display()))?;
    }
    write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))
}
