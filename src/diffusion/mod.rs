//! The diffusion maths: the noise schedule and the DDPM forward and reverse processes.

pub mod ddpm;
pub mod schedule;

pub use ddpm::Ddpm;
pub use schedule::Schedule;
