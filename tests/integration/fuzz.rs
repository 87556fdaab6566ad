//! Fuzz-style checks of the readers of what a user hands ddpm: the YAML loader with `--set`,
//! the safetensors checkpoint reader (metadata included) with the model it describes, and the
//! npz reader of FID statistics and reference images. Valid files are mutated at random
//! (seeded, so a failure repeats) and every reader must give a result or an error, never a
//! panic. A few hundred inputs per reader, a few seconds each: the slow tier runs them.

use ddpm::checkpoint::{self, Checkpoint, ModelInfo};
use ddpm::config::Config;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// xorshift64*: a seeded stream of numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// 1 to 4 random edits of `bytes`: a byte changed (to one of `alphabet` half the time), a byte
/// inserted, a run deleted or repeated, the end cut. `focus`: edits fall within the first
/// `focus` bytes (a file's header) three times in four.
fn mutate(bytes: &[u8], rng: &mut Rng, alphabet: &[u8], focus: usize) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for _ in 0..1 + rng.below(4) {
        let span = if rng.below(4) < 3 { focus.min(b.len()) } else { b.len() };
        let at = rng.below(span.max(1));
        let pick = |rng: &mut Rng| match rng.below(2) {
            0 if !alphabet.is_empty() => alphabet[rng.below(alphabet.len())],
            _ => rng.next() as u8,
        };
        match rng.below(5) {
            0 if at < b.len() => b[at] = pick(rng),
            1 => {
                let c = pick(rng);
                b.insert(at.min(b.len()), c)
            }
            2 if at < b.len() => {
                let end = (at + 1 + rng.below(16)).min(b.len());
                b.drain(at..end);
            }
            3 if at < b.len() => {
                let end = (at + 1 + rng.below(16)).min(b.len());
                let run: Vec<u8> = b[at..end].to_vec();
                b.splice(at..at, run);
            }
            _ => b.truncate(at),
        }
    }
    b
}

/// Runs `f`; a panic fails the test with the input that caused it.
fn never_panics(what: &str, input: &dyn std::fmt::Debug, f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        panic!("{what} panicked on {input:?}");
    }
}

#[test]
#[ignore = "slow: fuzz-style checks of the readers"]
fn the_yaml_loader_with_set_never_panics() {
    let base = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("options.yml")).unwrap();
    let mut rng = Rng(0x5eed_0001);
    let keys = ["train.lr", "network.channels", "sample.steps", "train", "dataset.image_size", "a.b.c", "", "."];
    let values = ["[", "{a: 1}", "null", "-1", "1e400", "'x'", "[1, [2, [3]]]", "~", "!!binary x", "&a *a", "[4, 8]"];
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..400 {
        let text = String::from_utf8_lossy(&mutate(&base, &mut rng, b"[]{}:-'\"\n #&*!|>%@`,?0123456789", base.len()))
            .into_owned();
        let set: Vec<(String, String)> = (0..rng.below(3))
            .map(|_| (keys[rng.below(keys.len())].to_string(), values[rng.below(values.len())].to_string()))
            .collect();
        never_panics("Config::from_yaml_str", &(&text, &set), || match Config::from_yaml_str(&text, "fuzz", &set) {
            Ok(_) => ok += 1,
            Err(_) => refused += 1,
        });
    }
    // The mutations reach both outcomes.
    assert!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");
}

#[test]
#[ignore = "slow: fuzz-style checks of the readers"]
fn the_checkpoint_reader_and_loader_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::from_yaml_str("network:\n  channels: [4, 8]\n  pe_dim: 8\nddpm:\n  n_steps: 20\n", "fuzz", &[])
        .unwrap();
    let info = ModelInfo::from_config(&cfg);
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = ddpm::model::build(&vs, &cfg.network, cfg.image_shape(), 20);
    let good = dir.path().join("good.safetensors");
    checkpoint::save(&vs, &info, &good).unwrap();
    let base = std::fs::read(&good).unwrap();
    let header = 8 + u64::from_le_bytes(base[..8].try_into().unwrap()) as usize;
    let mut rng = Rng(0x5eed_0002);
    let path = dir.path().join("fuzzed.safetensors");
    let (mut ok, mut refused) = (0, 0);
    for i in 0..300 {
        let bytes = mutate(&base, &mut rng, b"{}[]\":,0123456789-eE", header);
        std::fs::write(&path, &bytes).unwrap();
        never_panics("Checkpoint::read and load_model", &i, || {
            let read = Checkpoint::read(&path).map(|c| c.shapes().map(|_| ()));
            match read.and_then(|_| checkpoint::load_model(&path, &info, Device::Cpu, false, false)) {
                Ok(_) => ok += 1,
                Err(_) => refused += 1,
            }
        });
    }
    assert!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");
}

#[test]
#[ignore = "slow: fuzz-style checks of the readers"]
fn the_npz_readers_never_panic() {
    use ddpm::score::fid;
    let dir = tempfile::tempdir().unwrap();
    let f = (Kind::Double, Device::Cpu);
    let stats = dir.path().join("stats.npz");
    Tensor::write_npz(&[("mu", &Tensor::zeros([2048], f)), ("sigma", &Tensor::eye(2048, f))], &stats).unwrap();
    let images = dir.path().join("images.npz");
    let px = Tensor::randint(255, [4, 8, 8, 3], (Kind::Uint8, Device::Cpu));
    Tensor::write_npz(&[("arr_0", &px)], &images).unwrap();
    let mut rng = Rng(0x5eed_0003);
    let path = dir.path().join("fuzzed.npz");
    let (mut ok, mut refused) = (0, 0);
    for (base, n) in [(std::fs::read(&stats).unwrap(), 150), (std::fs::read(&images).unwrap(), 150)] {
        for i in 0..n {
            // The zip's local header and the npy header sit in the first 200 bytes.
            std::fs::write(&path, mutate(&base, &mut rng, b"{}()'\":,<|0123456789", 200)).unwrap();
            never_panics("fid::load_reference", &i, || match fid::load_reference(&path) {
                Ok(_) => ok += 1,
                Err(_) => refused += 1,
            });
        }
    }
    assert!(refused > 0, "ok {ok}, refused {refused}");
}
