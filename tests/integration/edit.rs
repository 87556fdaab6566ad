//! `ddpm edit` through the binary on a tiny trained model: strength 0 is the input, inpainting
//! keeps every known pixel, inversion reconstructs, interpolation's ends are the endpoints' own
//! samples, and every bad input is one line, exit 2, nothing written.

use crate::common;
use std::path::Path;
use tch::Tensor;

/// A tiny model trained on the bars data set with a 100-step schedule; returns its config.
fn trained(d: &Path) -> String {
    common::write_tiny_mnist(&d.join("data"), 32);
    let cfg = common::tiny_config(d);
    let o = common::ddpm(d, &["train", "--config", cfg.to_str().unwrap(), "--set", "ddpm.n_steps=100"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let text = std::fs::read_to_string(&cfg).unwrap().replace("n_steps: 20", "n_steps: 100");
    std::fs::write(&cfg, text).unwrap();
    cfg.to_string_lossy().into_owned()
}

/// Runs `ddpm edit ARGS` with the config; asserts success; returns stdout.
fn edit(d: &Path, cfg: &str, args: &[&str]) -> String {
    let mut all = vec!["edit", "--config", cfg];
    all.extend_from_slice(args);
    let o = common::ddpm(d, &all);
    assert!(o.status.success(), "{all:?}: {}", common::stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn samples(path: &Path) -> Tensor {
    Tensor::read_safetensors(path).unwrap().into_iter().find(|(k, _)| k == "samples").unwrap().1
}

/// The first `n` training pictures as the model sees them, in [-1, 1].
fn inputs(cfg: &str, n: i64) -> Tensor {
    let cfg = ddpm::config::Config::load(Path::new(cfg), &[]).unwrap();
    let ds = ddpm::data::load(&cfg.dataset, ddpm::data::Split::Train).unwrap();
    ddpm::data::to_signed_unit(&ds.images.narrow(0, 0, n))
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn strength_zero_is_the_input_and_inpainting_keeps_every_known_pixel() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = trained(d);
    let x = inputs(&cfg, 4);
    let base = ["--input", "dataset:train", "-n", "4"];
    edit(
        d,
        &cfg,
        &[&base[..], &["img2img", "--strength", "0,0.6", "--save-tensor", "i.safetensors", "-o", "i.png"]].concat(),
    );
    let out = samples(&d.join("i.safetensors"));
    assert_eq!(out.size(), [8, 1, 28, 28]);
    assert_eq!(out.narrow(0, 0, 4), x, "strength 0 changed the input");
    assert!(max_diff(&out.narrow(0, 4, 4), &x) > 0.1, "strength 0.6 left the input as it was");
    // Rows: the inputs, then one per strength.
    assert_eq!(image::image_dimensions(d.join("i.png")).unwrap(), (4 * 28, 3 * 28));
    for (sampler, resample) in [("ddim", "1"), ("ddpm", "3")] {
        let args = [
            "inpaint",
            "--mask",
            "bottom-half",
            "--sampler",
            sampler,
            "--resample",
            resample,
            "--save-tensor",
            "p.safetensors",
            "-o",
            "p.png",
        ];
        edit(d, &cfg, &[&base[..], &args].concat());
        let out = samples(&d.join("p.safetensors"));
        assert_eq!(out.narrow(2, 0, 14), x.narrow(2, 0, 14), "{sampler}: a known pixel changed");
        assert!(max_diff(&out.narrow(2, 14, 14), &x.narrow(2, 14, 14)) > 0.1, "{sampler}: nothing regenerated");
        assert_eq!(image::image_dimensions(d.join("p.png")).unwrap(), (4 * 28, 3 * 28));
    }
    // A mask PNG: white = regenerate (the left 10 columns).
    let mask = image::GrayImage::from_fn(28, 28, |x, _| image::Luma([if x < 10 { 255 } else { 0 }]));
    mask.save(d.join("mask.png")).unwrap();
    edit(
        d,
        &cfg,
        &[&base[..], &["inpaint", "--mask", "mask.png", "--save-tensor", "m.safetensors", "-o", "m.png"]].concat(),
    );
    let out = samples(&d.join("m.safetensors"));
    assert_eq!(out.narrow(3, 10, 18), x.narrow(3, 10, 18), "a pixel outside the PNG mask changed");
}

#[test]
fn inversion_reconstructs_and_interpolation_ends_are_the_endpoints_samples() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = trained(d);
    let x = inputs(&cfg, 4);
    let said = edit(
        d,
        &cfg,
        &[
            "invert",
            "--input",
            "dataset:train",
            "-n",
            "4",
            "--steps",
            "100",
            "--save-tensor",
            "r.safetensors",
            "-o",
            "r.png",
        ],
    );
    let rms: f64 = said.split("rms ").nth(1).and_then(|s| s.split(',').next()).unwrap().parse().unwrap();
    let back = samples(&d.join("r.safetensors"));
    let measured = ((&back - &x) / 2.0).square().mean(tch::Kind::Float).sqrt().double_value(&[]);
    assert!((rms - measured).abs() < 1e-3, "printed rms {rms}, measured {measured}");
    assert!(rms < 0.02, "DDIM inversion over 100 steps reconstructs within 2% rms: {said}");
    // Interpolation between two seeds: the ends are `ddpm sample`'s DDIM (eta 0) draws of them.
    let steps = ["--sampler", "ddim", "--eta", "0", "--steps", "20"];
    edit(
        d,
        &cfg,
        &[
            &["interpolate", "--seeds", "3,7", "--frames", "5", "--save-tensor", "f.safetensors", "-o", "f.png"][..],
            &steps,
        ]
        .concat(),
    );
    let frames = samples(&d.join("f.safetensors"));
    assert_eq!(frames.size(), [5, 1, 28, 28]);
    assert!(d.join("f.gif").is_file() && image::image_dimensions(d.join("f.png")).unwrap() == (5 * 28, 28));
    for (seed, k) in [("3", 0), ("7", 4)] {
        let args =
            ["sample", "--config", &cfg, "--seed", seed, "-n", "1", "--save-tensor", "s.safetensors", "-o", "s.png"];
        let o = common::ddpm(d, &[&args[..], &steps].concat());
        assert!(o.status.success(), "{}", common::stderr(&o));
        let own = samples(&d.join("s.safetensors"));
        assert!(max_diff(&frames.narrow(0, k, 1), &own) < 1e-4, "frame {k} is not seed {seed}'s sample");
    }
    assert!(max_diff(&frames.narrow(0, 2, 1), &frames.narrow(0, 0, 1)) > 0.05, "the middle frame is an end");
    // Between two pictures, through their inverted noise: the ends reconstruct them.
    let png = |i: i64, name: &str| {
        let px = ((x.get(i).get(0) + 1.0) * 127.5).round().to_kind(tch::Kind::Uint8);
        let v = Vec::<u8>::try_from(&px.flatten(0, -1)).unwrap();
        image::GrayImage::from_raw(28, 28, v).unwrap().save(d.join(name)).unwrap();
    };
    png(0, "a.png");
    png(1, "b.png");
    edit(
        d,
        &cfg,
        &[
            "interpolate",
            "--input",
            "a.png",
            "--to",
            "b.png",
            "--frames",
            "4",
            "--steps",
            "100",
            "--save-tensor",
            "ab.safetensors",
            "-o",
            "ab.png",
        ],
    );
    let ab = samples(&d.join("ab.safetensors"));
    assert!(max_diff(&ab.narrow(0, 0, 1), &x.narrow(0, 0, 1)) < 0.25, "the first frame is not a.png");
    assert!(max_diff(&ab.narrow(0, 3, 1), &x.narrow(0, 1, 1)) < 0.25, "the last frame is not b.png");
}

#[test]
fn bad_edit_inputs_are_one_line_errors_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = trained(d);
    image::GrayImage::new(20, 28).save(d.join("small-mask.png")).unwrap();
    image::GrayImage::new(28, 28).save(d.join("black-mask.png")).unwrap();
    image::GrayImage::new(28, 28).save(d.join("pic.png")).unwrap();
    std::fs::write(d.join("lie.png"), b"not a picture").unwrap();
    let input = ["--input", "pic.png"];
    let cases: &[(&[&str], &[&str])] = &[
        (&["inpaint", "--mask", "small-mask.png"], &["small-mask.png is 20x28", "28x28"]),
        (&["inpaint", "--mask", "black-mask.png"], &["regenerates nothing"]),
        (&["inpaint", "--mask", "lower-half"], &["lower-half", "bottom-half"]),
        (&["inpaint"], &["needs --mask"]),
        (&["img2img", "--strength", "1.5"], &["--strength 1.5", "[0, 1]"]),
        (&["img2img", "--strength", "-0.1"], &["--strength -0.1"]),
        (&["img2img", "--mask", "bottom-half"], &["--mask goes with `ddpm edit inpaint`"]),
        (&["img2img", "--label", "3"], &["--label", "unconditional"]),
        (&["img2img", "--guidance", "2"], &["--guidance", "unconditional"]),
        (&["invert", "--sampler", "ddpm"], &["--sampler ddpm", "DDIM with eta 0"]),
        (&["invert", "--eta", "1"], &["--eta 1"]),
        (&["interpolate"], &["two ends"]),
        (&["interpolate", "--seeds", "1,2", "--frames", "1"], &["--frames 1"]),
        (&["img2img", "-n", "0"], &["-n 0"]),
        (
            &["inpaint", "--mask", "center", "--resample", "2", "--sampler", "dpm-solver++"],
            &["--resample 2", "DPM-Solver++"],
        ),
    ];
    let run = |args: &[&str], needles: &[&str]| {
        let mut all = vec!["edit", "--config", &cfg];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "out.png"]);
        let o = common::ddpm(d, &all);
        let err = common::stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("{args:?}: {err}"));
        for n in needles {
            assert!(line.contains(n), "{args:?}: {n:?} not in {line:?}");
        }
        assert!(!err.contains("panicked") && !d.join("out.png").exists(), "{args:?}: {err}");
    };
    for (args, needles) in cases {
        let args: Vec<&str> = match args[0] {
            "interpolate" => args.to_vec(),
            _ => [&args[..1], &input[..], &args[1..]].concat(),
        };
        run(&args, needles);
    }
    run(&["img2img", "--input", "lie.png"], &["cannot read", "lie.png"]);
    run(&["img2img", "--input", "missing.png"], &["--input missing.png", "cannot read"]);
    run(&["img2img", "--input", "dataset:valid"], &["dataset:test or dataset:train"]);
    // A FIFO named like a picture, as input or mask, is refused before it is opened.
    let fifo = d.join("fifo.png");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    run(&["img2img", "--input", "fifo.png"], &["--input fifo.png", "not a regular file"]);
    run(&["inpaint", "--input", "pic.png", "--mask", "fifo.png"], &["--mask fifo.png", "not a regular file"]);
    // The output may not be the input picture.
    let o = common::ddpm(d, &["edit", "--config", &cfg, "img2img", "--input", "pic.png", "-o", "pic.png"]);
    assert_eq!(o.status.code(), Some(2), "{}", common::stderr(&o));
    assert!(common::stderr(&o).contains("it is (or lies inside) the input"), "{}", common::stderr(&o));
    assert_eq!(image::open(d.join("pic.png")).unwrap().width(), 28);
}

/// How many of `xs` are horizontal bars (their row means vary more than their column means).
fn horizontal(xs: &Tensor) -> i64 {
    let rows = xs.mean_dim(3, false, tch::Kind::Float).var_dim(2, true, false);
    let cols = xs.mean_dim(2, false, tch::Kind::Float).var_dim(2, true, false);
    rows.gt_tensor(&cols).sum(tch::Kind::Int64).int64_value(&[])
}

/// A class-conditional model asked for a class moves the pictures towards it: the bars data
/// set's vertical (class 0) and horizontal (class 1) bars come back horizontal far more often
/// when image-to-image asks for class 1 than when it asks for class 0.
#[test]
#[ignore = "slow: trains a conditional model"]
fn a_conditional_edit_moves_pictures_towards_the_asked_class() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::write_tiny_mnist(&d.join("data"), 256);
    let cfg = common::tiny_config(d);
    let c = cfg.to_str().unwrap();
    let sets = [
        "network.num_classes=2",
        "train.n_epochs=8",
        "network.channels=[8, 16]",
        "ddpm.n_steps=100",
        "ddpm.max_beta=0.2",
    ];
    let mut args = vec!["train", "--config", c];
    sets.iter().for_each(|s| args.extend_from_slice(&["--set", s]));
    let o = common::ddpm(d, &args);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let run = d.join("run/config.yml");
    let r = run.to_str().unwrap();
    let mut count = Vec::new();
    for label in ["0", "1"] {
        let t = format!("l{label}.safetensors");
        let args = ["img2img", "--input", "dataset:train", "-n", "64", "--strength", "0.7", "--label", label];
        edit(d, r, &[&args[..], &["--guidance", "2", "--save-tensor", &t, "-o", "l.png"]].concat());
        count.push(horizontal(&samples(&d.join(&t))));
    }
    let inputs = horizontal(&inputs(c, 64));
    assert_eq!(inputs, 32, "half the inputs are horizontal bars");
    assert!(
        count[1] >= count[0] + 16,
        "asked for class 1, {} of 64 are horizontal; for class 0, {}",
        count[1],
        count[0]
    );
}
