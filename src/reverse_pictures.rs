//! Pictures of the reverse process: one PNG with a row per sample and a column per snapshot
//! (pure noise first, the final sample last), and an animated GIF of the whole grid.

use crate::fsutil::write_atomic;
use crate::grid;
use anyhow::{Context, Result};
use image::codecs::gif::{GifEncoder, Repeat};
use image::{Delay, Frame};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// `out.png` -> `out.process.png`, `out.process.gif`.
pub fn paths(out: &Path) -> (PathBuf, PathBuf) {
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("samples");
    (out.with_file_name(format!("{stem}.process.png")), out.with_file_name(format!("{stem}.process.gif")))
}

/// Writes `frames` (each `[N, C, H, W]`, in time order) beside `out`.
pub fn write(frames: &[Tensor], out: &Path, pad: i64) -> Result<(PathBuf, PathBuf)> {
    let (png, gif) = paths(out);
    let f = frames.len() as i64;
    // [F, N, C, H, W] -> [N, F, C, H, W] -> rows of samples, columns of snapshots.
    let stacked = Tensor::stack(frames, 0).transpose(0, 1).contiguous();
    let s = stacked.size();
    let tiles = stacked.view([s[0] * s[1], s[2], s[3], s[4]]);
    grid::save_png(&grid::grid_image(&tiles, f, pad)?, &png)?;

    write_gif(frames, &gif, pad)?;
    Ok((png, gif))
}

/// An animated GIF of `frames` (each `[N, C, H, W]`, a grid per frame), 0.2 s apart, the last
/// held for 2 s.
pub fn write_gif(frames: &[Tensor], gif: &Path, pad: i64) -> Result<()> {
    let mut bytes = Vec::new();
    {
        let mut enc = GifEncoder::new_with_speed(&mut bytes, 10);
        enc.set_repeat(Repeat::Infinite).context("GIF")?;
        let n = frames[0].size()[0];
        for (i, x) in frames.iter().enumerate() {
            let img = grid::grid_image(x, grid::default_cols(n), pad)?.to_rgba8();
            let ms = if i + 1 == frames.len() { 2000 } else { 200 };
            enc.encode_frame(Frame::from_parts(img, 0, 0, Delay::from_numer_denom_ms(ms, 1)))
                .context("encoding GIF")?;
        }
    }
    write_atomic(gif, &bytes).with_context(|| format!("writing {}", gif.display()))
}
