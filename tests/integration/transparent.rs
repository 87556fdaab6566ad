//! Transparent pictures in a folder data set: RGBA, grey-with-alpha, 16-bit and palette PNGs
//! with a tRNS chunk are composited onto `dataset.background`, so the colour stored under
//! alpha 0 never reaches the training data, nor the cache; and the emoji set as
//! `scripts/setup.sh --data emoji` lays it out, composited as PIL composites it.

use crate::common;
use ddpm::data::folder;
use ddpm::data::{Background, DatasetConfig, DatasetName, ImageSize, Split};
use image::{ImageBuffer, LumaA, Rgba, RgbaImage};
use std::path::Path;
use tch::Tensor;

/// A 20x20 palette PNG (colour type 3) whose every pixel is palette entry 1, written by hand
/// (the image crate does not write palette PNGs); `alpha` gives that entry a tRNS alpha.
pub fn palette_png(path: &Path, colour: [u8; 3], alpha: Option<u8>) {
    fn crc(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 };
            }
        }
        !c
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc(&body).to_be_bytes());
    }
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&20u32.to_be_bytes());
    ihdr.extend_from_slice(&20u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 3, 0, 0, 0]);
    let rows: Vec<u8> = (0..20).flat_map(|_| std::iter::once(0u8).chain(std::iter::repeat_n(1u8, 20))).collect();
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut z, &rows).unwrap();
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"PLTE", &[0, 0, 0, colour[0], colour[1], colour[2]]);
    if let Some(a) = alpha {
        chunk(&mut png, b"tRNS", &[255, a]);
    }
    chunk(&mut png, b"IDAT", &z.finish().unwrap());
    chunk(&mut png, b"IEND", &[]);
    std::fs::write(path, png).unwrap();
}

/// What the transparent pixels of the test pictures hide: it must never show.
const HIDDEN: [u8; 3] = [255, 0, 0];

/// Four 20x20 pictures, each with a transparent part storing [`HIDDEN`] (or grey 30).
fn write_transparent(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let [r, g, b] = HIDDEN;
    // RGBA: the left half opaque blue, the right half the hidden red at alpha 0.
    RgbaImage::from_fn(20, 20, |x, _| if x < 10 { Rgba([0, 0, 255, 255]) } else { Rgba([r, g, b, 0]) })
        .save(dir.join("a_rgba.png"))
        .unwrap();
    // Grey with alpha: the top half opaque grey 60, the bottom half grey 30 at alpha 0.
    ImageBuffer::<LumaA<u8>, Vec<u8>>::from_fn(20, 20, |_, y| if y < 10 { LumaA([60, 255]) } else { LumaA([30, 0]) })
        .save(dir.join("b_la.png"))
        .unwrap();
    // A palette PNG whose one colour, red, is made transparent by tRNS.
    palette_png(&dir.join("c_palette.png"), HIDDEN, Some(0));
    // 16-bit RGBA, all hidden red at alpha 0.
    ImageBuffer::<Rgba<u16>, Vec<u16>>::from_pixel(20, 20, Rgba([65535, 0, 0, 0]))
        .save(dir.join("d_rgba16.png"))
        .unwrap();
}

fn cfg(path: &Path, root: &Path, size: i64, channels: i64, background: Background) -> DatasetConfig {
    DatasetConfig {
        name: DatasetName::Folder,
        root: root.to_path_buf(),
        path: path.to_path_buf(),
        image_size: ImageSize::Square(size),
        channels,
        background,
        ..Default::default()
    }
}

/// `[N, H, W, C]` pixels as nested vectors.
fn pixels(images: &Tensor) -> Vec<Vec<Vec<Vec<u8>>>> {
    let t = images.permute([0, 2, 3, 1]).contiguous();
    let s = t.size();
    let flat = Vec::<u8>::try_from(t.flatten(0, -1)).unwrap();
    let (h, w, c) = (s[1] as usize, s[2] as usize, s[3] as usize);
    (0..s[0] as usize)
        .map(|n| (0..h).map(|y| (0..w).map(|x| flat[((n * h + y) * w + x) * c..][..c].to_vec()).collect()).collect())
        .collect()
}

#[test]
fn transparent_pixels_show_the_background_never_the_colour_under_them() {
    let dir = tempfile::tempdir().unwrap();
    let pics = dir.path().join("pics");
    write_transparent(&pics);
    for bg in [Background::WHITE, Background::BLACK, "#00ff00".parse().unwrap()] {
        let (ds, stats) = folder::load(&cfg(&pics, dir.path(), 20, 3, bg), Split::Train).unwrap();
        assert_eq!(stats.decoded, 4, "{bg}: a new background is decoded anew, not read from another's cache");
        let px = pixels(&ds.images);
        let bgv = bg.0.to_vec();
        for (y, x) in (0..20).flat_map(|y| (0..20).map(move |x| (y, x))) {
            assert_eq!(px[0][y][x], if x < 10 { vec![0, 0, 255] } else { bgv.clone() }, "{bg} rgba ({y}, {x})");
            assert_eq!(px[1][y][x], if y < 10 { vec![60, 60, 60] } else { bgv.clone() }, "{bg} grey+alpha ({y}, {x})");
            assert_eq!(px[2][y][x], bgv, "{bg} palette with tRNS ({y}, {x})");
            assert_eq!(px[3][y][x], bgv, "{bg} 16-bit rgba ({y}, {x})");
        }
        // The cache on disk holds the composited pictures too.
        let cached = Tensor::read_safetensors(&stats.cache).unwrap().remove(0).1;
        assert_eq!(pixels(&cached), px, "{bg}: cache {}", stats.cache.display());
        let again = folder::load(&cfg(&pics, dir.path(), 20, 3, bg), Split::Train).unwrap();
        assert_eq!((again.1.decoded, pixels(&again.0.images)), (0, px), "{bg}: served by its own cache");
    }
    // Grey: the background's grey level.
    let (g, _) = folder::load(&cfg(&pics, dir.path(), 20, 1, Background::WHITE), Split::Train).unwrap();
    let g = pixels(&g.images);
    assert_eq!((g[0][5][15][0], g[1][15][5][0], g[2][0][0][0], g[1][5][5][0]), (255, 255, 255, 60));
}

#[test]
fn shrinking_a_transparent_picture_bleeds_no_hidden_colour_into_its_edges() {
    // Blue on white shrunk to half: every pixel is a mix of blue and white (red == green),
    // none takes the red under the transparent half.
    let dir = tempfile::tempdir().unwrap();
    let pics = dir.path().join("pics");
    write_transparent(&pics);
    let (ds, _) = folder::load(&cfg(&pics, dir.path(), 10, 3, Background::WHITE), Split::Train).unwrap();
    let px = pixels(&ds.images);
    for row in &px[0] {
        for p in row {
            assert!(p[0].abs_diff(p[1]) <= 1 && p[2] >= 250, "a shrunk pixel {p:?} is not blue over white");
        }
    }
    assert!(px[0][5][2][0] < 10 && px[0][5][8][0] > 245, "blue stays at the left, white at the right: {:?}", px[0][5]);
}

#[test]
fn the_emoji_pictures_are_composited_as_pil_composites_them() {
    let (Some(emoji), Some(py)) = (common::emoji(), common::venv_python()) else { return };
    // A slice: the first 3 pictures of each category (both vendors' names sort apart, so some
    // categories give Google's, some Twitter's; the slice holds RGBA, LA and palette files).
    let dir = tempfile::tempdir().unwrap();
    let (slice, reference) = (dir.path().join("slice"), dir.path().join("pil"));
    let mut cats: Vec<String> = std::fs::read_dir(&emoji)
        .unwrap()
        .filter_map(|e| e.ok().filter(|e| e.path().is_dir()).map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    cats.sort();
    for cat in &cats {
        let mut files: Vec<_> = std::fs::read_dir(emoji.join(cat)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        std::fs::create_dir_all(slice.join(cat)).unwrap();
        for f in files.iter().take(3) {
            std::fs::copy(f, slice.join(cat).join(f.file_name().unwrap())).unwrap();
        }
    }
    let script = "import sys, pathlib\nfrom PIL import Image\nsrc, dst = map(pathlib.Path, sys.argv[1:])\n\
                  for f in sorted(src.rglob('*.png')):\n    im = Image.open(f).convert('RGBA')\n    \
                  white = Image.new('RGBA', im.size, (255, 255, 255, 255))\n    \
                  out = dst / f.relative_to(src)\n    out.parent.mkdir(parents=True, exist_ok=True)\n    \
                  Image.alpha_composite(white, im).convert('RGB').save(out)\n";
    let o = std::process::Command::new(py).arg("-c").arg(script).arg(&slice).arg(&reference).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (ours, stats) = folder::load(&cfg(&slice, dir.path(), 64, 3, Background::WHITE), Split::Train).unwrap();
    let (pil, _) = folder::load(&cfg(&reference, dir.path(), 64, 3, Background::WHITE), Split::Train).unwrap();
    assert_eq!((ours.len(), stats.skipped.len()), (3 * cats.len() as i64, 0));
    assert_eq!(ours.class_names, cats);
    assert_eq!(cats.len(), 10, "the emoji set has 10 categories: {cats:?}");
    let diff = (ours.images.to_kind(tch::Kind::Int) - pil.images.to_kind(tch::Kind::Int)).abs().max().int64_value(&[]);
    assert!(diff <= 1, "ddpm's compositing differs from PIL's by {diff} levels");
    // Most of an emoji is background: the corners are white.
    let px = pixels(&ours.images);
    let white = px.iter().filter(|p| p[0][0] == [255, 255, 255]).count();
    assert!(white * 10 >= px.len() * 8, "{white} of {} pictures have a white corner", px.len());
}

#[test]
#[ignore = "slow: trains the three emoji presets a few steps each"]
fn the_emoji_presets_train_and_sample_colour_on_a_slice() {
    let Some(emoji) = common::emoji() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 4 pictures of each category (the class count of the conditional presets).
    let slice = d.join("slice");
    for cat in std::fs::read_dir(&emoji).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()) {
        let mut files: Vec<_> = std::fs::read_dir(&cat).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let to = slice.join(cat.file_name().unwrap());
        std::fs::create_dir_all(&to).unwrap();
        for f in files.iter().rev().take(4) {
            std::fs::copy(f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
    for (preset, label) in
        [("emoji-32", None), ("emoji-32-conditional", Some("smileys-emotion")), ("emoji-64", Some("flags"))]
    {
        let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("configs/{preset}.yml"));
        let run = d.join(preset);
        let sets = [
            format!("dataset.path={}", slice.display()),
            format!("dataset.root={}", d.join("data").display()),
            "train.warmup_steps=0".into(),
            "train.grid_samples=0".into(),
            "train.precision=fp32".into(),
        ];
        let mut args: Vec<&str> = vec!["train", "--config", cfg.to_str().unwrap(), "--run-dir", run.to_str().unwrap()];
        args.extend(["--device", "cpu", "--batch-size", "8", "--max-steps", "3"]);
        for s in &sets {
            args.extend(["--set", s]);
        }
        let o = common::ddpm(d, &args);
        assert!(o.status.success(), "{preset}: {}", common::stderr(&o));
        let out = d.join(format!("{preset}.png"));
        let run_cfg = run.join("config.yml");
        let mut sample = vec!["sample", "--config", run_cfg.to_str().unwrap(), "--n-samples", "4", "--steps", "2"];
        sample.extend(["--out", out.to_str().unwrap()]);
        if let Some(l) = label {
            sample.extend(["--label", l]);
        }
        let o = common::ddpm(d, &sample);
        assert!(o.status.success(), "{preset}: {}", common::stderr(&o));
        let img = image::open(&out).unwrap();
        let side = if preset == "emoji-64" { 64 } else { 32 };
        assert!(img.color().has_color(), "{preset}: the grid is RGB");
        assert!(img.width() >= 2 * side && img.height() >= 2 * side, "{preset}: a 2x2 grid of {side}px tiles");
    }
}
