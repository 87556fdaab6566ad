//! `ddpm sample --format png-dir | npz`: numpy reads the npz with the right dtype, shape and
//! values (the same pixels as the PNG folder), and an export killed half-way and resumed equals
//! one that ran through, byte for byte.

use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};

fn trained(dir: &Path) -> String {
    common::write_tiny_mnist(&dir.join("data"), 64);
    let cfg = common::tiny_config(dir);
    let o = common::ddpm(dir, &["train", "--config", cfg.to_str().unwrap(), "--max-steps", "4"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    cfg.to_str().unwrap().to_string()
}

fn export(dir: &Path, cfg: &str, format: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["sample", "--config", cfg, "--format", format, "--out", out.to_str().unwrap()];
    args.extend_from_slice(&["--n-samples", "10", "--batch-size", "4", "--sampler", "ddim", "--steps", "5"]);
    args.extend_from_slice(extra);
    common::ddpm(dir, &args)
}

fn pngs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().to_string(), std::fs::read(e.path()).unwrap()))
        .filter(|(n, _)| n.ends_with(".png"))
        .collect();
    v.sort();
    v
}

#[test]
fn npz_reads_in_numpy_like_the_png_folder() {
    let Some(py) = common::venv_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = trained(dir.path());
    let npz = dir.path().join("s.npz");
    let o = export(dir.path(), &cfg, "npz", &npz, &[]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(!dir.path().join("s.npz.parts").exists(), "the parts are removed");
    let folder = dir.path().join("pngs");
    let o = export(dir.path(), &cfg, "png-dir", &folder, &[]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let files = pngs(&folder);
    assert_eq!(files.iter().map(|f| f.0.as_str()).collect::<Vec<_>>()[..3], ["000000.png", "000001.png", "000002.png"]);
    assert_eq!(files.len(), 10);
    // The PNGs' pixels, in order, as numpy should see arr_0.
    let mut expected = Vec::new();
    for (name, _) in &files {
        expected.extend(image::open(folder.join(name)).unwrap().to_luma8().into_raw());
    }
    let script = format!(
        "import numpy as np, sys\nz = np.load(r'{}')\nprint(sorted(z.files), z['arr_0'].dtype, z['arr_0'].shape)\nsys.stdout.buffer.write(z['arr_0'].tobytes())",
        npz.display()
    );
    let o = Command::new(py).args(["-c", &script]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let nl = o.stdout.iter().position(|&b| b == b'\n').unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout[..nl]), "['arr_0'] uint8 (10, 28, 28, 1)");
    assert_eq!(&o.stdout[nl + 1..], &expected[..]);
    assert!(expected.iter().any(|&v| v > 0) && expected.iter().any(|&v| v < 255));
    // A second export to the same place is refused without --resume.
    let o = export(dir.path(), &cfg, "png-dir", &folder, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(common::stderr(&o).contains("add --resume"), "{}", common::stderr(&o));
}

#[test]
fn a_killed_export_resumed_equals_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = trained(dir.path());
    for format in ["npz", "png-dir"] {
        let name = |stem: &str| if format == "npz" { format!("{stem}.npz") } else { format!("{stem}-png") };
        let whole = dir.path().join(name("whole"));
        let o = export(dir.path(), &cfg, format, &whole, &[]);
        assert!(o.status.success(), "{}", common::stderr(&o));
        // Killed after its first batch (writes slowed down so that it is caught half-way).
        let cut = dir.path().join(name("cut"));
        let work = if format == "npz" { dir.path().join("cut.npz.parts") } else { cut.clone() };
        let first = if format == "npz" { work.join("batch-000000.u8") } else { work.join("000003.png") };
        let mut child = Command::new(env!("CARGO_BIN_EXE_ddpm"))
            .args(["sample", "--config", &cfg, "--format", format, "--out", cut.to_str().unwrap()])
            .args(["--n-samples", "10", "--batch-size", "4", "--sampler", "ddim", "--steps", "5"])
            .env("DDPM_SLOW_SAVE_MS", "300")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t0 = std::time::Instant::now();
        while !first.exists() && t0.elapsed().as_secs() < 60 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(first.exists(), "{format}: the first batch never came");
        assert!(!dir.path().join("cut.npz").exists() || format != "npz", "killed before the end");
        // Other settings are refused; the same ones continue.
        let o = export(dir.path(), &cfg, format, &cut, &["--resume", "--seed", "9"]);
        assert_eq!(o.status.code(), Some(2), "{}", common::stderr(&o));
        assert!(common::stderr(&o).contains("other settings"), "{}", common::stderr(&o));
        let o = export(dir.path(), &cfg, format, &cut, &["--resume"]);
        assert!(o.status.success(), "{}", common::stderr(&o));
        let err = common::stderr(&o);
        assert!(err.contains("batches are there already"), "{format}: nothing was skipped: {err}");
        if format == "npz" {
            assert_eq!(std::fs::read(&whole).unwrap(), std::fs::read(&cut).unwrap(), "npz differs");
        } else {
            assert_eq!(pngs(&whole), pngs(&cut), "png folders differ");
        }
    }
}

#[test]
fn exports_are_locked_checked_whole_and_never_replaced_when_finished() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = trained(d);
    // A finished npz: --resume has nothing to continue and leaves it as it is.
    let npz = d.join("s.npz");
    assert!(export(d, &cfg, "npz", &npz, &[]).status.success());
    let before = std::fs::read(&npz).unwrap();
    let o = export(d, &cfg, "npz", &npz, &["--resume", "--seed", "9"]);
    assert_eq!(o.status.code(), Some(2), "{}", common::stderr(&o));
    assert!(common::stderr(&o).contains("finished export"), "{}", common::stderr(&o));
    assert_eq!(std::fs::read(&npz).unwrap(), before, "a finished export was replaced");
    // A PNG cut short and one of another size are drawn again by --resume.
    let (whole, folder) = (d.join("whole-png"), d.join("png"));
    assert!(export(d, &cfg, "png-dir", &whole, &[]).status.success());
    assert!(export(d, &cfg, "png-dir", &folder, &[]).status.success());
    let first = std::fs::read(folder.join("000001.png")).unwrap();
    std::fs::write(folder.join("000001.png"), &first[..first.len() / 2]).unwrap();
    image::GrayImage::new(5, 5).save(folder.join("000009.png")).unwrap();
    let o = export(d, &cfg, "png-dir", &folder, &["--resume"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(common::stderr(&o).contains("1 of 3 batches are there already"), "{}", common::stderr(&o));
    assert_eq!(pngs(&whole), pngs(&folder), "the damaged files were not drawn again");
    // A live process holding the folder's lock: refused; a dead one's lock is taken over.
    let lock = folder.join(".lock");
    std::fs::write(&lock, format!("{}\n", std::process::id())).unwrap();
    let o = export(d, &cfg, "png-dir", &folder, &["--resume"]);
    assert_eq!(o.status.code(), Some(2), "{}", common::stderr(&o));
    assert!(common::stderr(&o).contains("being exported by a live process"), "{}", common::stderr(&o));
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    std::fs::write(&lock, format!("{}\n", gone.id())).unwrap();
    let o = export(d, &cfg, "png-dir", &folder, &["--resume"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(!lock.exists(), "the lock is removed when the export ends");
}

#[test]
#[ignore = "slow: several processes"]
fn exports_are_the_same_for_any_number_of_processes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = trained(d);
    // 10 images in batches of 4: three batches, so 4 processes leave one without work.
    let one = d.join("one.npz");
    let o = export(d, &cfg, "npz", &one, &[]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let bytes = std::fs::read(&one).unwrap();
    for n in ["2", "3", "4"] {
        let out = d.join(format!("nproc{n}.npz"));
        let o = export(d, &cfg, "npz", &out, &["--nproc", n]);
        assert!(o.status.success(), "--nproc {n}: {}", common::stderr(&o));
        assert!(bytes == std::fs::read(&out).unwrap(), "--nproc {n}: the npz differs from one process's");
        assert!(!d.join(format!("nproc{n}.npz.parts")).exists(), "the parts are removed");
    }
    // Rank 0 refuses to overwrite an export; the other rank stops too, and the message says why.
    let o = export(d, &cfg, "npz", &one, &["--nproc", "2"]);
    assert_eq!(o.status.code(), Some(2), "{}", common::stderr(&o));
    let err = common::stderr(&o);
    assert!(err.contains("exists: choose another --out") && err.contains("rank 0 could not start the export"), "{err}");
    assert!(bytes == std::fs::read(&one).unwrap(), "the refused export touched the file");
    // A PNG folder from 3 processes, half of it lost, resumed by 2 processes: the same files
    // as one process writes.
    let single = d.join("single");
    let o = export(d, &cfg, "png-dir", &single, &[]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let shared = d.join("shared");
    let o = export(d, &cfg, "png-dir", &shared, &["--nproc", "3"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_eq!(pngs(&single), pngs(&shared), "3 processes wrote other PNGs");
    for i in [0, 5, 9] {
        std::fs::remove_file(shared.join(format!("{i:06}.png"))).unwrap();
    }
    let o = export(d, &cfg, "png-dir", &shared, &["--nproc", "2", "--resume"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_eq!(pngs(&single), pngs(&shared), "the resumed folder differs");
    // A grid is not shared among processes: refused before any worker starts.
    let o = common::ddpm(d, &["sample", "--config", &cfg, "--nproc", "2"]);
    assert_eq!(o.status.code(), Some(2), "{}", common::stderr(&o));
    let err = common::stderr(&o);
    assert!(err.contains("a grid is drawn by one process") && err.contains("--format png-dir"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

#[test]
fn fused_and_plain_convolutions_draw_the_same_grid() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = trained(d);
    let grid = |freeze: &str| -> Vec<u8> {
        let out = d.join(format!("freeze-{freeze}.png"));
        let args = ["sample", "--config", &cfg, "--sampler", "ddim", "--steps", "5", "--out", out.to_str().unwrap()];
        let o = common::ddpm(d, &[&args[..], &["--set", &format!("sample.freeze={freeze}")]].concat());
        assert!(o.status.success(), "{}", common::stderr(&o));
        std::fs::read(out).unwrap()
    };
    assert!(grid("true") == grid("false"), "sample.freeze changed the samples");
    let o = common::ddpm(d, &["sample", "--config", &cfg, "--set", "sample.freeze=sometimes"]);
    assert_eq!(o.status.code(), Some(2), "{}", common::stderr(&o));
    assert!(common::stderr(&o).contains("sample.freeze"), "{}", common::stderr(&o));
}
