//! `ddpm`: train and sample denoising diffusion probabilistic models (Ho et al. 2020) on
//! libtorch, starting from the well-known teaching demo's UNet.
//!
//! Layers, bottom up (ARCHITECTURE.md; `tests/integration/layout.rs` checks them): support
//! ([`error`], [`dist`], [`grid`], ...), maths and data ([`model`], [`diffusion`], [`data`],
//! [`optim`], [`seed`]), configuration ([`config`]), the model and run files
//! ([`diffusion_model`], [`checkpoint`], [`learner`], [`draw`], [`score`]), the commands
//! ([`train`], [`sample`], [`eval`], [`bench`], [`info`]).

pub mod bench;
pub mod checkpoint;
pub mod choice;
pub mod cli;
pub mod config;
pub mod cuda_graph;
pub mod data;
pub mod device;
pub mod diffusion;
pub mod diffusion_model;
pub mod dist;
pub mod draw;
pub mod edit;
pub mod ema;
pub mod error;
pub mod eval;
pub mod fsutil;
pub mod grid;
pub mod info;
pub mod interrupt;
pub mod learner;
pub mod logging;
pub mod model;
pub mod optim;
pub mod plot;
pub mod precision;
pub mod reverse_pictures;
pub mod run_dir;
pub mod sample;
pub mod score;
pub mod seed;
pub mod shard;
pub mod tensorboard;
pub mod trace;
pub mod train;
