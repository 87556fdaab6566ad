//! The diffusion maths: the noise schedule and the DDPM forward and reverse processes.

pub mod ddim;
pub mod ddpm;
pub mod dpm_solver;
pub mod editing;
pub mod loss;
pub mod prediction;
pub mod reverse;
pub mod schedule;

pub use ddpm::DdpmScheduler;
pub use schedule::{BetaSchedule, Schedule, ScheduleConfig};
