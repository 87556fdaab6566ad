//! A record of the training trajectory for parity tests against PyTorch: with
//! `DDPM_TRACE_DIR=DIR`, `ddpm train` writes the initial weights (`init.safetensors`), each
//! step's inputs (`inputs-NNNNNN.safetensors`: the dataset indices of the batch, the images as
//! trained on (`x0`, after flips), `t`, the noise and, for conditional models, the labels after
//! label dropout; `after-NNNNNN.safetensors`: the loss) and, at the steps listed in `DDPM_TRACE_WEIGHTS` (default 1, 2, 9, 10 and every
//! step whose number ends in 99 or 00), the weights after the step, the gradients that produced them and Adam's
//! moments, so a replay can restart from any of those steps.
//! `scripts/python/replay_trace.py` replays the same steps with `torch.optim.Adam` and reports
//! where the two trajectories part.

use crate::checkpoint;
use crate::optim::Adam;
use anyhow::{Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use tch::{nn, Tensor};

pub struct Trace {
    dir: PathBuf,
    weight_steps: Option<Vec<i64>>,
}

impl Trace {
    /// The trace asked for by the environment, if any.
    pub fn from_env() -> Result<Option<Trace>> {
        let Some(dir) = std::env::var_os("DDPM_TRACE_DIR").map(PathBuf::from) else { return Ok(None) };
        std::fs::create_dir_all(&dir).with_context(|| format!("DDPM_TRACE_DIR: creating {}", dir.display()))?;
        let weight_steps = match std::env::var("DDPM_TRACE_WEIGHTS") {
            Err(_) => None,
            Ok(v) => Some(
                v.split(',')
                    .map(|s| s.trim().parse::<i64>())
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| format!("DDPM_TRACE_WEIGHTS={v:?}: expected comma-separated step numbers"))?,
            ),
        };
        Ok(Some(Trace { dir, weight_steps }))
    }

    fn wants_weights(&self, step: i64) -> bool {
        match &self.weight_steps {
            Some(v) => v.contains(&step),
            None => [1, 2, 9, 10].contains(&step) || step % 100 == 0 || step % 100 == 99,
        }
    }

    /// A plain write: a trace is a diagnostic record, not worth an fsync per step.
    fn write(&self, name: String, tensors: BTreeMap<String, Tensor>) -> Result<()> {
        let path = self.dir.join(name);
        let bytes = checkpoint::serialize_tensors(&tensors, HashMap::new())?;
        std::fs::write(&path, bytes).with_context(|| format!("DDPM_TRACE_DIR: writing {}", path.display()))
    }

    /// The weights before the first recorded step.
    pub fn initial(&self, step: i64, vs: &nn::VarStore) -> Result<()> {
        self.write(format!("init-{step:06}.safetensors"), vs.variables().into_iter().collect())
    }

    /// Step `step`'s inputs (1-based step number).
    pub fn inputs(
        &self,
        step: i64,
        idx: &Tensor,
        x0: &Tensor,
        t: &Tensor,
        noise: &Tensor,
        labels: Option<&Tensor>,
    ) -> Result<()> {
        let mut tensors = BTreeMap::from([
            ("idx".to_string(), idx.shallow_clone()),
            ("x0".to_string(), x0.shallow_clone()),
            ("t".to_string(), t.shallow_clone()),
            ("noise".to_string(), noise.shallow_clone()),
        ]);
        if let Some(y) = labels {
            tensors.insert("labels".to_string(), y.shallow_clone());
        }
        self.write(format!("inputs-{step:06}.safetensors"), tensors)
    }

    /// The loss of step `step` and, when asked for, the weights after it, its gradients and
    /// the optimizer's state.
    pub fn after_step(&self, step: i64, loss: &Tensor, vs: &nn::VarStore, opt: &Adam) -> Result<()> {
        let mut tensors = BTreeMap::from([("loss".to_string(), loss.shallow_clone())]);
        if self.wants_weights(step) {
            tensors.extend(opt.state());
            tensors.insert("adam_step".to_string(), Tensor::from(opt.step));
            for (name, v) in vs.variables() {
                let g = v.grad();
                if g.defined() {
                    tensors.insert(format!("grad.{name}"), g);
                }
                tensors.insert(format!("weight.{name}"), v);
            }
        }
        self.write(format!("after-{step:06}.safetensors"), tensors)
    }
}
