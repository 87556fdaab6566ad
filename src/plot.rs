//! A small loss-curve PNG: raw losses in light grey, a moving average in blue, on a log scale,
//! with horizontal grid lines at each power of ten. Drawn by hand to keep dependencies small.

use anyhow::Result;
use image::{DynamicImage, Rgb, RgbImage};
use std::path::Path;

const W: u32 = 800;
const H: u32 = 400;
const M: u32 = 20;

fn line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: Rgb<u8>) {
    let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
    for i in 0..=steps {
        let f = i as f64 / steps as f64;
        let (x, y) = (x0 + (x1 - x0) * f, y0 + (y1 - y0) * f);
        if x >= 0.0 && y >= 0.0 && (x as u32) < W && (y as u32) < H {
            img.put_pixel(x as u32, y as u32, c);
        }
    }
}

/// Draws `(step, loss)` points to `path`.
pub fn save_loss_curve(points: &[(i64, f64)], path: &Path) -> Result<()> {
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let pts: Vec<(i64, f64)> = points.iter().copied().filter(|(_, l)| l.is_finite() && *l > 0.0).collect();
    if pts.len() >= 2 {
        let (s0, s1) = (pts[0].0 as f64, pts[pts.len() - 1].0.max(pts[0].0 + 1) as f64);
        let lo = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min).log10().floor();
        let hi = pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max).log10().ceil().max(lo + 1.0);
        let to_xy = |s: f64, l: f64| {
            let x = M as f64 + (s - s0) / (s1 - s0) * (W - 2 * M) as f64;
            let y = (H - M) as f64 - (l.log10() - lo) / (hi - lo) * (H - 2 * M) as f64;
            (x, y)
        };
        let mut decade = lo;
        while decade <= hi {
            let y = to_xy(s0, 10f64.powf(decade)).1;
            line(&mut img, (M as f64, y), ((W - M) as f64, y), Rgb([220, 220, 220]));
            decade += 1.0;
        }
        line(&mut img, (M as f64, M as f64), (M as f64, (H - M) as f64), Rgb([0, 0, 0]));
        for w in pts.windows(2) {
            line(&mut img, to_xy(w[0].0 as f64, w[0].1), to_xy(w[1].0 as f64, w[1].1), Rgb([190, 190, 190]));
        }
        let k = (pts.len() / 50).max(1);
        let avg: Vec<(f64, f64)> = pts
            .windows(k)
            .map(|w| (w[w.len() - 1].0 as f64, w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64))
            .collect();
        for w in avg.windows(2) {
            line(&mut img, to_xy(w[0].0, w[0].1), to_xy(w[1].0, w[1].1), Rgb([30, 90, 200]));
        }
    }
    crate::grid::save_png(&DynamicImage::ImageRgb8(img), path)
}
