//! An exponential moving average of the weights, kept as a second copy of the network so the
//! per-epoch grids and `ddpm sample` can use it directly. The update runs under no_grad with
//! no host sync: `ema <- ema + (1 - d_s) (param - ema)`, `d_s = min(decay, (1 + s) / (10 + s))`.

use tch::{nn, Tensor};

/// The averaging of a store's variables into another store's.
pub struct Ema {
    pub decay: f64,
    /// `(averaged, trained)` variable pairs, in name order.
    pairs: Vec<(Tensor, Tensor)>,
}

impl Ema {
    /// `ema_vs` must hold a network built like the one in `vs`; it becomes a frozen copy of
    /// it, which [`Ema::update`] then moves towards `vs`'s variables.
    pub fn new(vs: &nn::VarStore, ema_vs: &mut nn::VarStore, decay: f64) -> Self {
        ema_vs.copy(vs).expect("EMA store built like the trained one");
        ema_vs.freeze();
        let src = vs.variables();
        let mut pairs: Vec<(String, Tensor, Tensor)> = ema_vs
            .variables()
            .into_iter()
            .filter_map(|(k, e)| src.get(&k).map(|p| (k, e, p.shallow_clone())))
            .collect();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        Self { decay, pairs: pairs.into_iter().map(|(_, e, p)| (e, p)).collect() }
    }

    /// The decay used after `step` optimizer steps (0-based), warm-up included.
    pub fn decay_at(&self, step: i64) -> f64 {
        self.decay.min((1.0 + step as f64) / (10.0 + step as f64))
    }

    /// The weight of the current weights in the update after `step` steps: `1 - decay_at(step)`.
    pub fn weight_at(&self, step: i64) -> f64 {
        1.0 - self.decay_at(step)
    }

    /// Moves the average towards the current weights.
    pub fn update(&mut self, step: i64) {
        let _guard = tch::no_grad_guard();
        let w = self.weight_at(step);
        for (e, p) in &mut self.pairs {
            let _ = e.lerp_(p, w);
        }
    }

    /// The same update with its weight read from a 0-dim tensor on the weights' device (what a
    /// CUDA graph replays with the current step's weight).
    pub fn update_by(&mut self, weight: &Tensor) {
        let _guard = tch::no_grad_guard();
        for (e, p) in &mut self.pairs {
            let _ = e.lerp_tensor_(p, weight);
        }
    }
}
