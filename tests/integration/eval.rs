//! `ddpm eval`'s numbers: the Fréchet distance against its closed form, the classifier score and
//! entropy on hand-made predictions, label fidelity, and the classifier on real MNIST.

use crate::common;

use ddpm::score::metrics::*;
use tch::{Device, Kind, Tensor};

fn t(v: &[f64], shape: &[i64]) -> Tensor {
    Tensor::from_slice(v).view(shape)
}

/// The tiny MNIST of `common` in `d/data`, with its training files copied as the test split
/// (the same kind of bars).
fn tiny_mnist_with_test_split(d: &std::path::Path, n: usize) {
    common::write_tiny_mnist(&d.join("data"), n);
    let m = d.join("data/mnist");
    std::fs::copy(m.join("train-images-idx3-ubyte"), m.join("t10k-images-idx3-ubyte")).unwrap();
    std::fs::copy(m.join("train-labels-idx1-ubyte"), m.join("t10k-labels-idx1-ubyte")).unwrap();
}

#[test]
fn frechet_distance_of_a_set_with_itself_is_zero_and_it_is_symmetric() {
    let _rng = common::rng_lock();
    tch::manual_seed(0);
    let a = Tensor::randn([500, 8], (Kind::Double, Device::Cpu));
    let b = Tensor::randn([500, 8], (Kind::Double, Device::Cpu)) * 1.5 + 0.3;
    assert!(frechet_distance_of(&a, &a) < 1e-8, "{}", frechet_distance_of(&a, &a));
    let (ab, ba) = (frechet_distance_of(&a, &b), frechet_distance_of(&b, &a));
    assert!((ab - ba).abs() < 1e-8 * ab.max(1.0), "{ab} vs {ba}");
    assert!(ab > 1.0);
}

/// Two Gaussians with diagonal covariances: FD = |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
#[test]
fn frechet_distance_of_two_gaussians_equals_the_closed_form() {
    let mu1 = t(&[0.0, 1.0, -2.0], &[3]);
    let mu2 = t(&[1.0, 1.0, 0.0], &[3]);
    let (a, b) = ([1.0, 4.0, 0.25], [9.0, 1.0, 0.25]);
    let s1 = Tensor::from_slice(&a).diag(0);
    let s2 = Tensor::from_slice(&b).diag(0);
    let want = 1.0 + 0.0 + 4.0 + (1.0f64 - 3.0).powi(2) + (2.0f64 - 1.0).powi(2) + 0.0;
    let got = frechet_distance(&mu1, &s1, &mu2, &s2);
    assert!((got - want).abs() < 1e-9, "{got} vs {want}");
    // A non-diagonal case against the 1-D-rotated version of the same pair: FD is invariant
    // under a rotation applied to both distributions.
    let r = t(&[0.6, -0.8, 0.0, 0.8, 0.6, 0.0, 0.0, 0.0, 1.0], &[3, 3]);
    let rot = |s: &Tensor| r.matmul(s).matmul(&r.transpose(0, 1));
    let got_r = frechet_distance(&r.matmul(&mu1), &rot(&s1), &r.matmul(&mu2), &rot(&s2));
    assert!((got_r - want).abs() < 1e-9, "{got_r} vs {want}");
}

#[test]
fn classifier_score_and_entropy_on_hand_made_predictions() {
    let k = 5;
    let even = Tensor::eye(k, (Kind::Double, Device::Cpu)).repeat([4, 1]); // one-hot, 4 per class
    assert!((classifier_score(&even) - k as f64).abs() < 1e-6);
    assert!((class_histogram_entropy(&even) - (k as f64).ln()).abs() < 1e-9);
    let single = Tensor::zeros([20, k], (Kind::Double, Device::Cpu)).index_fill(1, &Tensor::from_slice(&[2i64]), 1.0);
    assert!((classifier_score(&single) - 1.0).abs() < 1e-6);
    assert_eq!(class_histogram_entropy(&single), 0.0);
    let uniform = Tensor::full([10, k], 1.0 / k as f64, (Kind::Double, Device::Cpu));
    assert!((classifier_score(&uniform) - 1.0).abs() < 1e-6, "unsure predictions score 1");
}

#[test]
fn label_fidelity_on_hand_made_predictions() {
    let probs = t(&[0.9, 0.1, 0.2, 0.8, 0.6, 0.4, 0.3, 0.7], &[4, 2]);
    let labels = Tensor::from_slice(&[0i64, 1, 1, 1]);
    assert!((label_fidelity(&probs, &labels) - 0.75).abs() < 1e-12);
}

#[test]
#[ignore = "slow: trains a classifier on real MNIST"]
fn the_classifier_exceeds_98_percent_on_real_mnist() {
    let Some(root) = common::real_datasets() else { return };
    let cfg =
        ddpm::data::DatasetConfig { name: ddpm::data::DatasetName::Mnist, root, download: false, ..Default::default() };
    let train = ddpm::data::load(&cfg, ddpm::data::Split::Train).unwrap();
    let test = ddpm::data::load(&cfg, ddpm::data::Split::Test).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("clf.safetensors");
    let clf = ddpm::score::classifier::load_or_train(&cache, &train, &test, Device::Cpu).unwrap();
    let acc = clf.accuracy(&test);
    println!("classifier test accuracy {acc:.4}");
    assert!(acc >= 0.98, "test accuracy {acc}");
    // The cache is reused: loading gives the same accuracy without training.
    let again = ddpm::score::classifier::load_or_train(&cache, &train, &test, Device::Cpu).unwrap();
    assert_eq!(again.accuracy(&test), acc);
}

#[test]
fn eval_command_scores_saved_samples_beside_the_real_reference() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_mnist_with_test_split(d, 64);
    let cfg = common::tiny_config(d);
    let xs = ddpm::data::to_signed_unit(
        &ddpm::data::load(
            &ddpm::data::DatasetConfig {
                name: ddpm::data::DatasetName::Mnist,
                root: d.join("data"),
                download: false,
                ..Default::default()
            },
            ddpm::data::Split::Train,
        )
        .unwrap()
        .images
        .narrow(0, 0, 16),
    );
    // `ddpm eval --samples` of a tensor: its table and its JSON result.
    let eval = |name: &str, xs: &Tensor| -> (String, serde_json::Value) {
        let (samples, json) = (d.join(format!("{name}.safetensors")), d.join(format!("{name}.json")));
        Tensor::write_safetensors(&[("samples", xs)], &samples).unwrap();
        let (c, s, j) = (cfg.to_str().unwrap(), samples.to_str().unwrap(), json.to_str().unwrap());
        let o = common::ddpm(d, &["eval", "--config", c, "--samples", s, "--n", "16", "--json", j]);
        assert!(o.status.success(), "{}", common::stderr(&o));
        let r = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        (String::from_utf8_lossy(&o.stdout).into_owned(), r)
    };
    let (table, r) = eval("real", &xs);
    assert!(table.contains("Frechet distance") && table.contains("real vs real"), "{table}");
    for k in [
        "frechet_distance",
        "frechet_distance_real",
        "classifier_score",
        "classifier_score_real",
        "class_entropy",
        "n",
        "seed",
    ] {
        assert!(r.get(k).is_some(), "{k} missing: {r}");
    }
    // The samples are the reference images themselves: distance 0 up to the matrix square
    // root's rounding, far below the distance between two different real sets.
    let (fd, fd_real) = (r["frechet_distance"].as_f64().unwrap(), r["frechet_distance_real"].as_f64().unwrap());
    assert!(fd < 1e-2 && fd_real > 0.1, "identical sets {fd}, real vs real {fd_real}");
    // Uniform noise in [-1, 1] is far from bars.
    let (_, r) = eval("noise", &(Tensor::rand([16, 1, 28, 28], (Kind::Float, Device::Cpu)) * 2.0 - 1.0));
    let fd_noise = r["frechet_distance"].as_f64().unwrap();
    assert!(fd_noise > 10.0 * fd_real, "noise {fd_noise}, real vs real {fd_real}");
    assert!(d.join("data/ddpm-classifier-mnist.safetensors").exists(), "the classifier is cached beside the data");
    // 16 saved samples cannot give 40.
    let real = d.join("real.safetensors");
    let o =
        common::ddpm(d, &["eval", "--config", cfg.to_str().unwrap(), "--samples", real.to_str().unwrap(), "--n", "40"]);
    assert_eq!(o.status.code(), Some(2), "{}", common::stderr(&o));
}

#[test]
fn evaluation_during_training_goes_into_evals_jsonl_and_a_plot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_mnist_with_test_split(d, 48);
    let cfg = common::tiny_config(d);
    let o = common::ddpm(
        d,
        &[
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--set",
            "train.eval_every=1",
            "--set",
            "train.eval_samples=8",
            "--set",
            "train.grid_samples=0",
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let text = std::fs::read_to_string(d.join("run/evals.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2, "one eval per epoch");
    assert_eq!(rows[1]["epoch"], 2);
    assert_eq!(rows[0]["n"], 8);
    // Two epochs of a tiny model are far from the data: farther than two real sets are.
    for r in &rows {
        let (fd, fd_real) = (r["frechet_distance"].as_f64().unwrap(), r["frechet_distance_real"].as_f64().unwrap());
        assert!(fd.is_finite() && fd > fd_real, "samples {fd}, real vs real {fd_real}");
    }
    assert!(d.join("run/eval.png").exists());
}

#[test]
#[ignore = "slow: several processes"]
fn an_evaluation_shared_among_processes_scores_what_one_process_scores() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_mnist_with_test_split(d, 48);
    let cfg = common::tiny_config(d);
    let c = cfg.to_str().unwrap();
    let o = common::ddpm(d, &["train", "--config", c, "--max-steps", "4"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    // 10 samples in batches of 4 (three batches), DDIM in 5 steps; one libtorch thread per
    // process, as libtorch's reductions (the classifier, the statistics) round differently
    // with another number of threads (1e-7 relative).
    let eval = |extra: &[&str]| -> serde_json::Value {
        let json = d.join("r.json");
        let args =
            ["eval", "--config", c, "--n", "10", "--steps", "5", "--set", "sample.batch_size=4", "--set", "threads=1"];
        let o = common::ddpm(d, &[&args[..], &["--json", json.to_str().unwrap()], extra].concat());
        assert!(o.status.success(), "{extra:?}: {}", common::stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert_eq!(out.matches("Frechet distance").count(), 1, "one table, from rank 0: {out}");
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
    };
    let one = eval(&[]);
    let fd = one["frechet_distance"].as_f64().unwrap();
    assert!(fd.is_finite() && fd > 0.0, "{one}");
    for n in ["2", "3"] {
        let r = eval(&["--nproc", n]);
        for k in ["frechet_distance", "classifier_score", "class_entropy", "frechet_distance_real"] {
            assert_eq!(r[k], one[k], "--nproc {n}: {k} differs ({r} vs {one})");
        }
    }
    let rows = std::fs::read_to_string(d.join("run/evals.jsonl")).unwrap();
    assert_eq!(rows.lines().count(), 3, "one line per evaluation, written by rank 0: {rows}");
}

/// The FID reference statistics and the CNN metric's classifier are cached under one name per
/// data set: two folders of the same name get different caches, the same folder the same one.
#[test]
fn cached_references_are_keyed_by_the_whole_folder_not_its_name() {
    use ddpm::data::{DatasetConfig, DatasetName};
    let folder = |parent: &str| DatasetConfig {
        name: DatasetName::Folder,
        root: "cache-root".into(),
        path: std::path::Path::new(parent).join("pics"),
        ..Default::default()
    };
    let stem = |p: std::path::PathBuf| p.file_name().unwrap().to_string_lossy().to_string();
    let (a, b) = (folder("a"), folder("b"));
    let (fa, fb) =
        (stem(ddpm::eval::reference_cache(&a, 100, false)), stem(ddpm::eval::reference_cache(&b, 100, false)));
    assert_ne!(fa, fb, "two folders named pics share a FID reference");
    assert_eq!(fa, stem(ddpm::eval::reference_cache(&folder("a"), 100, false)));
    let (ca, cb) = (stem(ddpm::score::classifier_cache(&a)), stem(ddpm::score::classifier_cache(&b)));
    assert_ne!(ca, cb, "two folders named pics share a classifier");
    // One key for both caches of a data set.
    let key = a.cache_name();
    assert!(key.starts_with("folder-pics-"), "{key}");
    assert!(fa.contains(&key) && ca.contains(&key), "{fa} / {ca} / {key}");
    // The same folder at another picture size is another data set.
    let small = DatasetConfig { image_size: ddpm::data::ImageSize::Square(32), ..folder("a") };
    assert_ne!(small.cache_name(), key);
    // The built-in sets keep their plain names.
    let mnist = DatasetConfig::default();
    assert_eq!(stem(ddpm::eval::reference_cache(&mnist, 100, false)), "fid-stats-mnist-1x28x28-train-100-6726825d.npz");
    assert_eq!(stem(ddpm::score::classifier_cache(&mnist)), "ddpm-classifier-mnist.safetensors");
}
