//! `dataset.name: folder`: the reader against the IDX reader on real MNIST written out as PNGs,
//! every picture format and kind in one folder, resize modes by hand-made pictures, the cache,
//! classes from subfolders, every bad folder with its message, and training and sampling at
//! other sizes with both networks.

use crate::common;

use ddpm::data::folder::{self, Resize};
use ddpm::data::{Background, DatasetConfig, DatasetName, ImageSize, Split};
use image::{GrayImage, ImageBuffer, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use std::path::Path;
use tch::Tensor;

fn folder_cfg(path: &Path, root: &Path, size: ImageSize, channels: i64) -> DatasetConfig {
    DatasetConfig {
        name: DatasetName::Folder,
        root: root.to_path_buf(),
        path: path.to_path_buf(),
        image_size: size,
        channels,
        ..Default::default()
    }
}

fn bytes(t: &Tensor) -> Vec<u8> {
    Vec::<u8>::try_from(t.flatten(0, -1)).unwrap()
}

#[test]
fn folder_of_mnist_pngs_reads_like_the_idx_files() {
    let Some(real) = common::real_datasets() else { return };
    let idx = ddpm::data::load(
        &DatasetConfig { name: DatasetName::Mnist, root: real, download: false, ..Default::default() },
        Split::Train,
    )
    .unwrap();
    let n: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let pics = dir.path().join("pics");
    let labels = Vec::<i64>::try_from(idx.labels.narrow(0, 0, n as i64)).unwrap();
    for (i, y) in labels.iter().enumerate() {
        let img = GrayImage::from_raw(28, 28, bytes(&idx.images.get(i as i64))).unwrap();
        let d = pics.join(y.to_string());
        std::fs::create_dir_all(&d).unwrap();
        img.save(d.join(format!("{i:05}.png"))).unwrap();
    }
    let cfg = folder_cfg(&pics, &dir.path().join("cache"), ImageSize::Square(28), 1);
    let (ds, stats) = folder::load(&cfg, Split::Train).unwrap();
    assert_eq!(stats.decoded, n);
    assert!(stats.skipped.is_empty());
    assert_eq!(ds.images.size(), [n as i64, 1, 28, 28]);
    assert_eq!(ds.class_names, (0..10).map(|d| d.to_string()).collect::<Vec<_>>());
    // The folder's order: by class folder, then file name.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (labels[i], i));
    let order_t = Tensor::from_slice(&order.iter().map(|&i| i as i64).collect::<Vec<_>>());
    assert_eq!(bytes(&ds.images), bytes(&idx.images.narrow(0, 0, n as i64).index_select(0, &order_t)));
    assert_eq!(Vec::<i64>::try_from(&ds.labels).unwrap(), order.iter().map(|&i| labels[i]).collect::<Vec<_>>());
}

/// Writes one picture of each kind (all 20x20) plus a corrupt one and a text file.
fn write_mixed(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    RgbImage::from_pixel(20, 20, Rgb([255, 0, 0])).save(dir.join("a_rgb.png")).unwrap();
    RgbaImage::from_pixel(20, 20, Rgba([0, 255, 0, 40])).save(dir.join("b_rgba.png")).unwrap();
    GrayImage::from_pixel(20, 20, Luma([128])).save(dir.join("c_gray.png")).unwrap();
    ImageBuffer::<Rgb<u16>, Vec<u16>>::from_pixel(20, 20, Rgb([65535, 0, 65535]))
        .save(dir.join("d_16bit.png"))
        .unwrap();
    RgbImage::from_pixel(20, 20, Rgb([0, 0, 255])).save(dir.join("e_blue.jpg")).unwrap();
    RgbImage::from_pixel(20, 20, Rgb([10, 20, 30])).save(dir.join("f_bmp.bmp")).unwrap();
    // GIF is a palette format.
    RgbaImage::from_pixel(20, 20, Rgba([255, 255, 0, 255])).save(dir.join("g_palette.gif")).unwrap();
    crate::transparent::palette_png(&dir.join("g_palette2.png"), [7, 77, 177], None);
    std::fs::write(dir.join("h_corrupt.png"), b"\x89PNG\r\n\x1a\nthis is not a picture").unwrap();
    std::fs::write(dir.join("notes.txt"), b"not a picture").unwrap();
}

#[test]
fn every_picture_kind_is_read_converted_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let pics = dir.path().join("mixed");
    write_mixed(&pics);
    let cfg = folder_cfg(&pics, &dir.path().join("cache"), ImageSize::Square(16), 3);
    let (ds, stats) = folder::load(&cfg, Split::Train).unwrap();
    assert_eq!(ds.images.size(), [8, 3, 16, 16]);
    assert_eq!(stats.skipped.len(), 1, "{:?}", stats.skipped);
    assert_eq!(stats.skipped[0].0, "h_corrupt.png");
    assert_eq!(stats.ignored, 1);
    assert!(ds.class_names.is_empty(), "pictures directly in the folder: no classes");
    // The middle pixel of each (constant pictures stay constant through the resize).
    let px = |i: i64| -> Vec<u8> { bytes(&ds.images.get(i).select(1, 8).select(1, 8)) };
    assert_eq!(px(0), [255, 0, 0]);
    assert_eq!(px(1), [215, 255, 215], "alpha 40 of 255 over white");
    assert_eq!(px(2), [128, 128, 128], "gray expanded");
    assert_eq!(px(3), [255, 0, 255], "16 bits scaled to 8");
    let blue = px(4);
    assert!(blue[0] < 8 && blue[1] < 8 && blue[2] > 245, "jpeg {blue:?}");
    assert_eq!(px(5), [10, 20, 30]);
    assert_eq!(px(6), [255, 255, 0]);
    assert_eq!(px(7), [7, 77, 177], "palette PNG");
    // The same folder as grayscale: one channel.
    let gray = folder_cfg(&pics, &dir.path().join("cache"), ImageSize::Rect([8, 12]), 1);
    let (g, _) = folder::load(&gray, Split::Train).unwrap();
    assert_eq!(g.images.size(), [8, 1, 8, 12]);
    assert_eq!(bytes(&g.images.get(2).select(1, 4).select(1, 6)), [128]);
}

#[test]
fn resize_modes_crop_pad_and_stretch() {
    // 40 wide, 20 high: the left quarter white, the rest black.
    let img = GrayImage::from_fn(40, 20, |x, _| Luma([if x < 10 { 255 } else { 0 }]));
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("wide.png");
    img.save(&p).unwrap();
    let look = |resize, background| folder::Look { shape: [1, 20, 20], resize, background };
    let at = |v: &[u8], y: usize, x: usize| v[y * 20 + x];
    // Crop: no scaling (the height fits), the middle 20 columns are all black.
    let crop = folder::decode(&p, look(Resize::CenterCrop, Background::WHITE)).unwrap();
    assert_eq!(crop.iter().map(|&v| v as u32).sum::<u32>(), 0);
    // Pad: scaled to 20x10 and centred: bands of the background above and below, white at the left.
    let pad = folder::decode(&p, look(Resize::Pad, Background::BLACK)).unwrap();
    assert!((0..5).all(|y| (0..20).all(|x| at(&pad, y, x) == 0)) && (15..20).all(|y| at(&pad, y, 3) == 0));
    assert!(at(&pad, 10, 1) > 240 && at(&pad, 10, 15) < 10);
    let grey_pad = folder::decode(&p, look(Resize::Pad, Background::GRAY)).unwrap();
    assert!((0..5).all(|y| (0..20).all(|x| at(&grey_pad, y, x) == 128)) && at(&grey_pad, 10, 15) < 10);
    // Stretch: the white quarter is 5 columns wide, full height.
    let st = folder::decode(&p, look(Resize::Stretch, Background::WHITE)).unwrap();
    assert!(at(&st, 0, 1) > 240 && at(&st, 19, 2) > 240 && at(&st, 10, 12) < 10);
}

#[test]
fn the_cache_is_reused_and_rebuilt_when_a_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let pics = dir.path().join("pics");
    std::fs::create_dir_all(&pics).unwrap();
    for i in 0..5u8 {
        GrayImage::from_pixel(10, 10, Luma([i * 40])).save(pics.join(format!("{i}.png"))).unwrap();
    }
    let cfg = folder_cfg(&pics, dir.path(), ImageSize::Square(10), 1);
    let (a, s1) = folder::load(&cfg, Split::Train).unwrap();
    assert_eq!(s1.decoded, 5);
    assert!(s1.cache.exists() && s1.cache.starts_with(dir.path().join("folder-cache")));
    let (b, s2) = folder::load(&cfg, Split::Train).unwrap();
    assert_eq!(s2.decoded, 0, "the second load decodes nothing");
    assert_eq!(bytes(&a.images), bytes(&b.images));
    // Another size is another cache entry.
    let (_, s3) = folder::load(&folder_cfg(&pics, dir.path(), ImageSize::Square(8), 1), Split::Train).unwrap();
    assert_eq!(s3.decoded, 5);
    // A changed file (size and time) rebuilds it.
    std::thread::sleep(std::time::Duration::from_millis(20));
    RgbImage::from_pixel(12, 12, Rgb([200, 200, 200])).save(pics.join("3.png")).unwrap();
    let (c, s4) = folder::load(&cfg, Split::Train).unwrap();
    assert_eq!(s4.decoded, 5);
    assert_eq!(bytes(&c.images.get(3).select(1, 5).select(1, 5)), [200]);
}

#[test]
fn subfolders_are_classes_and_eval_split_holds_out_pictures() {
    let dir = tempfile::tempdir().unwrap();
    let pics = dir.path().join("pets");
    for (class, n) in [("dogs", 30), ("cats", 20)] {
        std::fs::create_dir_all(pics.join(class).join("nested")).unwrap();
        for i in 0..n {
            let sub = if i % 2 == 0 { pics.join(class) } else { pics.join(class).join("nested") };
            GrayImage::from_pixel(8, 8, Luma([i as u8])).save(sub.join(format!("{i}.png"))).unwrap();
        }
    }
    let mut cfg = folder_cfg(&pics, dir.path(), ImageSize::Square(8), 1);
    let (all, _) = folder::load(&cfg, Split::Train).unwrap();
    assert_eq!(all.class_names, ["cats", "dogs"]);
    let counts = all.labels.bincount::<Tensor>(None, 2);
    assert_eq!(Vec::<i64>::try_from(&counts).unwrap(), [20, 30]);
    cfg.eval_split = 0.3;
    let (train, _) = folder::load(&cfg, Split::Train).unwrap();
    let (test, _) = folder::load(&cfg, Split::Test).unwrap();
    assert_eq!(train.len() + test.len(), 50);
    assert!(test.len() >= 5 && test.len() <= 25, "held out {}", test.len());
    let (files, _) = folder::list(&pics).unwrap();
    let expected = files.iter().filter(|f| folder::is_held_out(f, 0.3)).count() as i64;
    assert_eq!(test.len(), expected);
    // With no split, evaluation compares with the training pictures.
    cfg.eval_split = 0.0;
    assert_eq!(folder::load(&cfg, Split::Test).unwrap().0.len(), 50);
}

fn folder_yaml(dir: &Path, pics: &Path, size: &str, channels: i64, network: &str, extra: &str) -> std::path::PathBuf {
    let yml = format!(
        "device: cpu\nseed: 1\ndataset:\n  name: folder\n  path: {pics}\n  image_size: {size}\n  channels: {channels}\n  root: {root}\n\
         ddpm:\n  n_steps: 20\nnetwork:\n{network}\n\
         train:\n  batch_size: 4\n  n_epochs: 1\n  max_steps: 3\n  run_dir: {run}\n  grid_samples: 4\n  grid_steps: 5\n  keep_checkpoints: 0\n{extra}\
         sample:\n  n_samples: 4\n  sampler: ddim\n  steps: 5\n",
        pics = pics.display(),
        root = dir.join("data").display(),
        run = dir.join("run").display()
    );
    let path = dir.join("folder.yml");
    std::fs::write(&path, yml).unwrap();
    path
}

#[test]
fn other_sizes_train_and_sample_with_both_networks() {
    let demo = "  kind: demo\n  channels: [4, 8]\n  pe_dim: 8";
    let unet14 = "  kind: unet\n  base_channels: 8\n  channel_mults: [1, 2]\n  num_res_blocks: 1\n  attn_resolutions: [14]\n  groups: 4";
    let unet32 = unet14.replace("[14]", "[32]");
    for (size, channels, net, hw) in [
        ("[28, 40]", 1, demo, [28, 40]),
        ("[28, 40]", 1, unet14, [28, 40]),
        ("64", 3, demo, [64, 64]),
        ("64", 3, unet32.as_str(), [64, 64]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let pics = dir.path().join("pics");
        std::fs::create_dir_all(&pics).unwrap();
        for i in 0..8u32 {
            RgbImage::from_fn(50, 36, |x, y| Rgb([(x * 5) as u8, (y * 7) as u8, (i * 30) as u8]))
                .save(pics.join(format!("{i}.jpg")))
                .unwrap();
        }
        let cfg = folder_yaml(dir.path(), &pics, size, channels, net, "");
        let cfg_s = cfg.to_str().unwrap();
        let o = common::ddpm(dir.path(), &["train", "--config", cfg_s]);
        assert!(o.status.success(), "{size} {net}: {}", common::stderr(&o));
        let out = dir.path().join("s.png");
        let o = common::ddpm(dir.path(), &["sample", "--config", cfg_s, "--out", out.to_str().unwrap()]);
        assert!(o.status.success(), "{size} {net}: {}", common::stderr(&o));
        let img = image::open(&out).unwrap();
        // A 2x2 grid without padding.
        assert_eq!((img.height(), img.width()), (2 * hw[0] as u32, 2 * hw[1] as u32), "{size}");
    }
}

#[test]
fn bad_folders_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let demo = "  kind: demo\n  channels: [4, 8]\n  pe_dim: 8";
    let run = |pics: &Path, extra: &str, net: &str| {
        let cfg = folder_yaml(dir.path(), pics, "16", 1, net, extra);
        let o = common::ddpm(dir.path(), &["train", "--config", cfg.to_str().unwrap(), "--overwrite"]);
        (o.status.code(), common::stderr(&o))
    };
    let expect = |(code, err): (Option<i32>, String), needle: &str| {
        assert_eq!(code, Some(2), "{err}");
        let last = err.lines().last().unwrap_or("");
        assert!(last.starts_with("error: ") && last.contains(needle), "{needle}: {err}");
        assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");
    };
    expect(run(&dir.path().join("nowhere"), "", demo), "no such folder");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("readme.txt"), "x").unwrap();
    expect(run(&empty, "", demo), "no pictures found");
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    for i in 0..3 {
        std::fs::write(broken.join(format!("{i}.jpg")), b"garbage").unwrap();
    }
    expect(run(&broken, "", demo), "none of the 3 picture files could be read");
    let few = dir.path().join("few");
    std::fs::create_dir_all(&few).unwrap();
    for i in 0..3u8 {
        GrayImage::from_pixel(16, 16, Luma([i])).save(few.join(format!("{i}.png"))).unwrap();
    }
    expect(run(&few, "", demo), "fewer than train.batch_size = 4");
    // Conditional network on a folder without classes, and with the wrong count.
    let many = dir.path().join("many");
    for c in ["a", "b", "c"] {
        std::fs::create_dir_all(many.join(c)).unwrap();
        for i in 0..2u8 {
            GrayImage::from_pixel(16, 16, Luma([i])).save(many.join(c).join(format!("{i}.png"))).unwrap();
        }
    }
    expect(
        run(&many, "", &format!("{demo}\n  num_classes: 2")),
        "has 3 classes (a, b, c): set network.num_classes to 3",
    );
    // The demo network's levels cannot halve 6 pixels 3 times... a clear config error.
    let cfg = folder_yaml(dir.path(), &few, "[6, 6]", 1, "  kind: demo\n  channels: [4, 8, 16, 32]\n  pe_dim: 8", "");
    let o = common::ddpm(dir.path(), &["train", "--config", cfg.to_str().unwrap(), "--overwrite"]);
    assert_eq!(o.status.code(), Some(2), "{}", common::stderr(&o));
    assert!(common::stderr(&o).contains("6x6"), "{}", common::stderr(&o));
    // Attention at a size no level has: said, and training goes on.
    let unet = "  kind: unet\n  base_channels: 8\n  channel_mults: [1, 2]\n  num_res_blocks: 1\n  attn_resolutions: [16]\n  groups: 4";
    let cfg = folder_yaml(dir.path(), &many, "[28, 40]", 1, unet, "");
    let o = common::ddpm(dir.path(), &["train", "--config", cfg.to_str().unwrap(), "--overwrite"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(
        common::stderr(&o)
            .contains("[16] is no level of this network on 28x40 images (its feature maps are [28, 14] high)"),
        "{}",
        common::stderr(&o)
    );
}

#[test]
fn a_conditional_model_on_class_folders_samples_a_class_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let pics = dir.path().join("shapes");
    for (k, c) in ["circle", "square", "triangle"].iter().enumerate() {
        std::fs::create_dir_all(pics.join(c)).unwrap();
        for i in 0..4u8 {
            GrayImage::from_pixel(16, 16, Luma([k as u8 * 80 + i]))
                .save(pics.join(c).join(format!("{i}.png")))
                .unwrap();
        }
    }
    let net = "  kind: demo\n  channels: [4, 8]\n  pe_dim: 8\n  num_classes: 3";
    let cfg = folder_yaml(dir.path(), &pics, "16", 1, net, "");
    let cfg = cfg.to_str().unwrap();
    let o = common::ddpm(dir.path(), &["train", "--config", cfg]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let out = dir.path().join("sq.png");
    let o = common::ddpm(dir.path(), &["sample", "--config", cfg, "--label", "square", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(out.exists());
    let o = common::ddpm(dir.path(), &["sample", "--config", cfg, "--label", "zebra"]);
    assert_eq!(o.status.code(), Some(2));
    let err = common::stderr(&o);
    assert!(err.contains("--label \"zebra\" is not a class") && err.contains("circle, square, triangle"), "{err}");
}

/// A JPEG cut short decodes (the decoder fills the rest with grey) but is no picture: it is
/// skipped with the others that cannot be read, named, never trained on with a grey half.
#[test]
fn a_truncated_jpeg_is_skipped_not_read_with_a_grey_half() {
    let dir = tempfile::tempdir().unwrap();
    let pics = dir.path().join("pics");
    std::fs::create_dir_all(&pics).unwrap();
    let noisy = RgbImage::from_fn(64, 64, |x, y| Rgb([(x * 4) as u8, (y * 4) as u8, ((x * y) % 256) as u8]));
    for i in 0..3 {
        noisy.save(pics.join(format!("{i}.jpg"))).unwrap();
    }
    let whole = std::fs::read(pics.join("0.jpg")).unwrap();
    std::fs::write(pics.join("1.jpg"), &whole[..whole.len() * 2 / 3]).unwrap();
    let mut cfg = folder_cfg(&pics, &dir.path().join("cache"), ImageSize::Square(64), 3);
    cfg.eval_split = 0.0;
    let (ds, stats) = folder::load(&cfg, Split::Train).unwrap();
    assert_eq!(ds.images.size()[0], 2, "{:?}", stats.skipped);
    assert_eq!(stats.skipped.len(), 1);
    assert_eq!(stats.skipped[0].0, "1.jpg");
    assert!(stats.skipped[0].1.contains("truncated JPEG"), "{:?}", stats.skipped);
}
