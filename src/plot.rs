//! The run's plots, drawn with `plotters` into an in-memory bitmap and written as PNG: the
//! loss curve (raw and smoothed, log scale, epoch boundaries) and the evaluation curve (the
//! Fréchet distance per epoch beside its real-vs-real reference). The font (DejaVu Sans) is
//! embedded, so plots have their labels on machines without any system font.

use anyhow::{anyhow, Result};
use image::{DynamicImage, RgbImage};
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

/// Width and height of every plot, in pixels.
pub const SIZE: (u32, u32) = (960, 540);
const RAW: RGBColor = RGBColor(175, 175, 175);
const SMOOTH: RGBColor = RGBColor(30, 90, 200);
const REFERENCE: RGBColor = RGBColor(200, 80, 40);
const EPOCH: RGBColor = RGBColor(240, 190, 140);
const MESH: RGBColor = RGBColor(236, 236, 236);

fn font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    ok.then_some(()).ok_or_else(|| anyhow!("the embedded font did not load"))
}

/// A trailing moving average over about 1/25 of the points (at least 2 once there are 10).
pub fn smoothed(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let k = if points.len() < 10 { 1 } else { (points.len() / 25).max(2) };
    (0..points.len())
        .map(|i| {
            let w = &points[i.saturating_sub(k - 1)..=i];
            (points[i].0, w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64)
        })
        .collect()
}

/// A tick label with three significant digits (`0.158`, `25.1`, `398`).
fn sig3(v: f64) -> String {
    match v.abs() {
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        a if a >= 1.0 => format!("{v:.2}"),
        _ => format!("{v:.3}"),
    }
}

/// `[lo, hi]` padded so that a single value or a flat curve still gets a visible range.
fn padded(lo: f64, hi: f64, log: bool) -> (f64, f64) {
    match (log, lo < hi) {
        (true, true) => (lo / 1.15, hi * 1.15),
        (true, false) => (lo / 2.0, hi * 2.0),
        (false, true) => (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)),
        (false, false) => (lo - 1.0, hi + 1.0),
    }
}

fn bounds(points: &[(f64, f64)]) -> Option<((f64, f64), (f64, f64))> {
    let first = points.first()?;
    Some(points.iter().fold(((first.0, first.0), (first.1, first.1)), |((x0, x1), (y0, y1)), (x, y)| {
        ((x0.min(*x), x1.max(*x)), (y0.min(*y), y1.max(*y)))
    }))
}

type Chart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// The legend box of a chart's labelled series.
fn legend<'a>(chart: &mut Chart<'a, 'a>) -> Result<()> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    Ok(())
}

/// Writes the bitmap drawn by `draw` to `path` (atomically).
fn render(
    path: &Path,
    draw: impl FnOnce(DrawingArea<BitMapBackend, plotters::coord::Shift>) -> Result<()>,
) -> Result<()> {
    font()?;
    let (w, h) = SIZE;
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, SIZE).into_drawing_area();
        draw(root.clone())?;
        root.present().map_err(|e| anyhow!("drawing {}: {e}", path.display()))?;
    }
    let img = RgbImage::from_raw(w, h, buf).ok_or_else(|| anyhow!("plot buffer has the wrong size"))?;
    crate::grid::save_png(&DynamicImage::ImageRgb8(img), path)
}

/// The training loss: raw and smoothed on a log scale over the steps, a light line at each
/// epoch end in `epoch_ends`, titled `title`. Non-finite and non-positive losses are left out.
pub fn save_loss_plot(title: &str, points: &[(i64, f64)], epoch_ends: &[i64], path: &Path) -> Result<()> {
    let pts: Vec<(f64, f64)> =
        points.iter().filter(|(_, l)| l.is_finite() && *l > 0.0).map(|&(s, l)| (s as f64, l)).collect();
    render(path, |root| {
        let Some(((x0, x1), (y0, y1))) = bounds(&pts) else {
            let style = ("sans-serif", 24).into_font().color(&BLACK);
            root.draw_text(&format!("{title}: no loss logged yet"), &style, (40, 40))?;
            return Ok(());
        };
        let (x0, x1) = padded(x0, x1, false);
        let (y0, y1) = padded(y0, y1, true);
        // The y axis holds log10(loss), labelled with the loss itself.
        let (l0, l1) = (y0.log10(), y1.log10());
        let log = |v: &[(f64, f64)]| -> Vec<(f64, f64)> { v.iter().map(|&(x, y)| (x, y.log10())).collect() };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(80)
            .build_cartesian_2d(x0..x1, l0..l1)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss (log scale)")
            .y_labels(10)
            .x_labels(10)
            .y_label_formatter(&|v| sig3(10f64.powf(*v)))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .light_line_style(MESH)
            .axis_desc_style(("sans-serif", 18))
            .label_style(("sans-serif", 15))
            .draw()?;
        let ends: Vec<f64> = epoch_ends.iter().map(|&e| e as f64).filter(|&e| e > x0 && e < x1).collect();
        for (i, &e) in ends.iter().enumerate() {
            let line = chart.draw_series(LineSeries::new([(e, l0), (e, l1)], EPOCH.stroke_width(1)))?;
            if i == 0 {
                line.label("epoch end").legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], EPOCH.stroke_width(2)));
            }
        }
        chart
            .draw_series(LineSeries::new(log(&pts), RAW.stroke_width(1)))?
            .label("loss")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RAW.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(log(&smoothed(&pts)), SMOOTH.stroke_width(2)))?
            .label("moving average")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], SMOOTH.stroke_width(2)));
        if pts.len() == 1 {
            chart.draw_series(log(&pts).into_iter().map(|p| Circle::new(p, 4, SMOOTH.filled())))?;
        }
        legend(&mut chart)
    })
}

/// Evaluations during training: the Fréchet distance of the samples and of other real
/// images (the reference) per epoch, as `(epoch, samples, real)`.
pub fn save_eval_plot(title: &str, rows: &[(i64, f64, f64)], path: &Path) -> Result<()> {
    let rows: Vec<(f64, f64, f64)> = rows
        .iter()
        .filter(|r| r.1.is_finite() && r.2.is_finite())
        .map(|&(e, s, r)| (e as f64, s.max(1e-6), r.max(1e-6)))
        .collect();
    render(path, |root| {
        let all: Vec<(f64, f64)> = rows.iter().flat_map(|&(e, s, r)| [(e, s), (e, r)]).collect();
        let Some(((x0, x1), (y0, y1))) = bounds(&all) else {
            let style = ("sans-serif", 24).into_font().color(&BLACK);
            root.draw_text(&format!("{title}: no evaluation yet"), &style, (40, 40))?;
            return Ok(());
        };
        let (x0, x1) = (x0 - 0.5, x1 + 0.5);
        let (y0, y1) = padded(y0, y1, true);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(80)
            .build_cartesian_2d(x0..x1, y0.log10()..y1.log10())?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("Fréchet distance (log scale)")
            .y_labels(10)
            .x_labels(((x1 - x0) as usize + 1).min(12))
            // Whole epochs only.
            .x_label_formatter(&|v| if (v - v.round()).abs() < 1e-6 { format!("{v:.0}") } else { String::new() })
            .y_label_formatter(&|v| sig3(10f64.powf(*v)))
            .light_line_style(MESH)
            .axis_desc_style(("sans-serif", 18))
            .label_style(("sans-serif", 15))
            .draw()?;
        let samples: Vec<(f64, f64)> = rows.iter().map(|r| (r.0, r.1.log10())).collect();
        let real: Vec<(f64, f64)> = rows.iter().map(|r| (r.0, r.2.log10())).collect();
        chart
            .draw_series(LineSeries::new(samples.iter().copied(), SMOOTH.stroke_width(2)))?
            .label("samples vs test images")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], SMOOTH.stroke_width(2)));
        chart.draw_series(samples.iter().map(|&p| Circle::new(p, 4, SMOOTH.filled())))?;
        chart
            .draw_series(LineSeries::new(real.iter().copied(), REFERENCE.stroke_width(1)))?
            .label("real vs real (reference)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], REFERENCE.stroke_width(2)));
        legend(&mut chart)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(share of non-white pixels, pixels close to the smoothed curve's blue)`.
    fn ink(path: &Path) -> (f64, usize) {
        let img = image::open(path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), SIZE);
        let n = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        let blue = img.pixels().filter(|p| p.0[2] > 150 && p.0[0] < 90 && p.0[1] < 130).count();
        (n as f64 / (SIZE.0 * SIZE.1) as f64, blue)
    }

    #[test]
    fn loss_plots_have_ink_and_the_curve_for_1_2_and_10000_points_and_a_flat_curve() {
        let dir = tempfile::tempdir().unwrap();
        let many: Vec<(i64, f64)> = (1..=10_000).map(|s| (s, 1.0 / (1.0 + s as f64 / 100.0) + 0.02)).collect();
        let cases: [(&str, Vec<(i64, f64)>); 4] = [
            ("one", vec![(10, 0.5)]),
            ("two", vec![(10, 0.5), (20, 0.25)]),
            ("many", many),
            ("flat", (1..=50).map(|s| (s, 0.3)).collect()),
        ];
        for (name, pts) in cases {
            let path = dir.path().join(format!("{name}.png"));
            save_loss_plot("run", &pts, &[2000, 4000], &path).unwrap();
            let (share, blue) = ink(&path);
            // Axes, ticks, labels and the title; not a blank or a filled picture.
            assert!(share > 0.01 && share < 0.5, "{name}: {share}");
            assert!(blue > 20, "{name}: the smoothed curve has {blue} blue pixels");
        }
    }

    #[test]
    fn empty_inputs_still_write_a_labelled_picture() {
        let dir = tempfile::tempdir().unwrap();
        save_loss_plot("run", &[(1, f64::NAN)], &[], &dir.path().join("l.png")).unwrap();
        save_eval_plot("run", &[], &dir.path().join("e.png")).unwrap();
        for f in ["l.png", "e.png"] {
            let (share, _) = ink(&dir.path().join(f));
            assert!(share > 0.0005 && share < 0.05, "{f}: {share}");
        }
    }

    #[test]
    fn eval_plot_draws_both_series() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("eval.png");
        save_eval_plot("run", &[(1, 30.0, 1.0), (2, 12.0, 1.1), (3, 6.0, 0.9)], &path).unwrap();
        let (share, blue) = ink(&path);
        assert!(share > 0.01 && blue > 20, "{share} {blue}");
        let img = image::open(&path).unwrap().to_rgb8();
        assert!(img.pixels().any(|p| p.0 == [200, 80, 40]), "the reference line is missing");
    }

    #[test]
    fn tick_labels_have_three_significant_digits() {
        assert_eq!([sig3(0.15849), sig3(1.0), sig3(25.119), sig3(398.1)], ["0.158", "1.00", "25.1", "398"]);
    }

    #[test]
    fn moving_average_golden() {
        let pts: Vec<(f64, f64)> = (0..100).map(|i| (i as f64, if i % 2 == 0 { 1.0 } else { 3.0 })).collect();
        let avg = smoothed(&pts);
        assert_eq!(avg.len(), 100);
        // A window of 4: the first points average what there is.
        assert_eq!(avg[0], (0.0, 1.0));
        assert_eq!(avg[1], (1.0, 2.0));
        assert_eq!(avg[2], (2.0, 5.0 / 3.0));
        assert_eq!(avg[99], (99.0, 2.0));
        assert_eq!(smoothed(&pts[..5]), pts[..5].to_vec());
    }
}
