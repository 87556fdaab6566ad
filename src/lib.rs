//! `ddpm`: train and sample denoising diffusion probabilistic models (Ho et al. 2020) on
//! libtorch, starting from the well-known teaching demo's UNet.
//!
//! Layers: [`data`] (readers) -> [`model`] (the network) -> [`diffusion`] (schedule, forward
//! and reverse process) -> [`train`] / [`sample`] (the commands), with [`checkpoint`] and
//! [`grid`] for what a run writes.

pub mod bench;
pub mod checkpoint;
pub mod choice;
pub mod cli;
pub mod config;
pub mod data;
pub mod device;
pub mod diffusion;
pub mod dist;
pub mod ema;
pub mod error;
pub mod eval;
pub mod fsutil;
pub mod generate;
pub mod graph;
pub mod grid;
pub mod info;
pub mod interrupt;
pub mod learner;
pub mod logging;
pub mod model;
pub mod optim;
pub mod plot;
pub mod precision;
pub mod process;
pub mod run_dir;
pub mod sample;
pub mod score;
pub mod seed;
pub mod shard;
pub mod spec;
pub mod tensorboard;
pub mod trace;
pub mod train;
