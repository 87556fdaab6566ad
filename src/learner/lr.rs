//! The learning rate over a run: warm-up, then the configured decay.

use crate::config::train::{LrSchedule, TrainConfig};

/// The learning rate of update `done` (0-based) of a run of `total` steps: the paper's linear
/// warm-up `min(1, done / warmup_steps)`, then `train.lr_schedule` from the end of the warm-up
/// to the last step: constant, cosine `(1 + cos(pi p)) / 2` or linear `1 - p`, with p the share
/// of the decay done.
pub fn lr_at(t: &TrainConfig, done: i64, total: i64) -> f64 {
    let warm = if t.warmup_steps > 0 { (done as f64 / t.warmup_steps as f64).min(1.0) } else { 1.0 };
    let span = total - t.warmup_steps;
    let p = if span > 0 { ((done - t.warmup_steps) as f64 / span as f64).clamp(0.0, 1.0) } else { 0.0 };
    let decay = match t.lr_schedule {
        LrSchedule::Constant => 1.0,
        LrSchedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
        LrSchedule::Linear => 1.0 - p,
    };
    t.lr * warm * decay
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_rate_schedules() {
        let mut t = TrainConfig { lr: 1.0, warmup_steps: 0, ..Default::default() };
        assert_eq!((0..5).map(|d| lr_at(&t, d, 4)).collect::<Vec<_>>(), [1.0; 5]);
        t.lr_schedule = LrSchedule::Linear;
        // Over 4 steps: 1, 3/4, 1/2, 1/4; past the end 0.
        assert_eq!((0..5).map(|d| lr_at(&t, d, 4)).collect::<Vec<_>>(), [1.0, 0.75, 0.5, 0.25, 0.0]);
        t.lr_schedule = LrSchedule::Cosine;
        let cos: Vec<f64> = (0..5).map(|d| lr_at(&t, d, 4)).collect();
        let want = [
            1.0,
            0.5 + 0.5 * (std::f64::consts::PI / 4.0).cos(),
            0.5,
            0.5 - 0.5 * (std::f64::consts::PI / 4.0).cos(),
            0.0,
        ];
        assert!(cos.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-15), "{cos:?}");
        // Warm-up first (update 0 has lr 0, as in the paper), the decay after it.
        t.warmup_steps = 2;
        t.lr_schedule = LrSchedule::Linear;
        assert_eq!((0..6).map(|d| lr_at(&t, d, 6)).collect::<Vec<_>>(), [0.0, 0.5, 1.0, 0.75, 0.5, 0.25]);
        // No decay span (total 0: not set): warm-up only.
        assert_eq!(lr_at(&t, 5, 0), 1.0);
    }
}
