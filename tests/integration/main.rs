//! The integration tests, in one crate (one link against libtorch): the real binary on tiny
//! data, golden numbers, round trips, tiny models that must learn, and every bad input with its
//! message. Tests of the slow tier (long trainings, signals, several processes, PyTorch
//! replays) are marked `#[ignore = "slow: ..."]`: `cargo test` runs the fast tier,
//! `cargo test -- --include-ignored` (what `scripts/test.sh` and CI run) runs both.

mod common;

mod bench;
mod cli;
mod config;
mod data;
mod diffusion;
mod dist;
mod edit;
mod eval;
mod export;
mod fid;
mod folder;
mod fuzz;
mod gpu_scripts;
mod hostile;
mod inspect;
mod layout;
mod networks;
mod optimizer;
mod parity;
mod precision;
mod recipe;
mod reliability;
mod solvers;
mod transparent;
mod unet;
