//! N images split across the processes of a data-parallel `ddpm sample` or `ddpm eval`
//! (`--nproc N`, or a torchrun-style launch): the images come in global batches of a fixed
//! size, batch `k` belongs to rank `k mod world`, and every batch is computed from its global
//! index alone (its noise is seeded by `(seed, k)`), so the result does not depend on how
//! many processes share the work. Outputs (features, images) are gathered back in global
//! order with one broadcast per rank.

use crate::dist::ProcessGroup;
use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

/// This process's part of the work.
pub struct Shard {
    pub rank: usize,
    pub world: usize,
    group: Option<ProcessGroup>,
}

/// The shape of one row of an output (without the leading image dimension) and its kind.
#[derive(Debug, Clone)]
pub struct RowSpec {
    pub shape: Vec<i64>,
    pub kind: Kind,
}

impl Shard {
    /// One process doing everything.
    pub fn single() -> Shard {
        Shard { rank: 0, world: 1, group: None }
    }

    /// The shard of a torchrun-style environment (a single one without it). Sets libtorch's
    /// threads (`threads`, or the cores shared among the local workers) and returns the device
    /// to use: `cuda:LOCAL_RANK` when `device` is a GPU.
    pub fn from_env(threads: usize, device: Device) -> Result<(Shard, Device)> {
        let (joined, device) = crate::dist::join(threads, device)?;
        Ok(match joined {
            None => (Shard::single(), device),
            Some((e, group)) => {
                if e.rank == 0 {
                    tracing::info!("{} processes ({}), the images split by batches", e.world_size, group.backend);
                }
                (Shard { rank: e.rank, world: e.world_size, group: Some(group) }, device)
            }
        })
    }

    /// Rank 0, the one that writes results.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// The global batches of this rank among `batches`, in order.
    pub fn mine(&self, batches: i64) -> Vec<i64> {
        (self.rank as i64..batches).step_by(self.world).collect()
    }

    /// How many of `n` images in batches of `batch` this rank handles.
    pub fn images_of(&self, n: i64, batch: i64) -> i64 {
        let batch = batch.clamp(1, n.max(1));
        self.mine((n + batch - 1) / batch).iter().map(|&k| batch.min(n - k * batch)).sum()
    }

    /// Waits for every rank.
    pub fn barrier(&self) -> Result<()> {
        if let Some(g) = &self.group {
            g.all_reduce_mean(&[&Tensor::zeros([1], (Kind::Float, Device::Cpu))])?;
        }
        Ok(())
    }

    /// The sum of `x` over all ranks (a barrier too).
    pub fn sum(&self, x: i64) -> Result<i64> {
        match &self.group {
            None => Ok(x),
            Some(g) => {
                let t = Tensor::from_slice(&[x as f64]);
                g.all_reduce_mean(&[&t])?;
                Ok((t.double_value(&[0]) * self.world as f64).round() as i64)
            }
        }
    }

    /// Rank 0's `ok` on every rank: the others learn whether rank 0 could go on (its error is
    /// its own to report).
    pub fn agree(&self, ok: bool) -> Result<bool> {
        match &self.group {
            None => Ok(ok),
            Some(g) => {
                let t = Tensor::from_slice(&[ok as i64]);
                g.broadcast(&[&t], 0)?;
                Ok(t.int64_value(&[0]) == 1)
            }
        }
    }

    /// Runs `f(k, start, len)` on this rank's batches of `n` images in batches of `batch` and
    /// returns, on every rank, each output of `f` for all `n` images in global order (on the
    /// CPU). `rows` describes the outputs, so that a rank without a batch knows their shapes.
    pub fn map_batches(
        &self,
        n: i64,
        batch: i64,
        rows: &[RowSpec],
        mut f: impl FnMut(i64, i64, i64) -> Result<Vec<Tensor>>,
    ) -> Result<Vec<Tensor>> {
        let batch = batch.clamp(1, n.max(1));
        let batches = (n + batch - 1) / batch;
        let len_of = |k: i64| batch.min(n - k * batch);
        let mut mine: Vec<Vec<Tensor>> = Vec::new();
        for k in self.mine(batches) {
            let out = f(k, k * batch, len_of(k))?;
            if out.len() != rows.len() {
                bail!("internal: a batch gave {} outputs, not {}", out.len(), rows.len());
            }
            mine.push(out.into_iter().map(|t| t.to_device(Device::Cpu)).collect());
        }
        let mut gathered = Vec::with_capacity(rows.len());
        for (j, spec) in rows.iter().enumerate() {
            let own: Vec<&Tensor> = mine.iter().map(|o| &o[j]).collect();
            let Some(group) = &self.group else {
                gathered.push(match own.is_empty() {
                    true => Tensor::empty([&[0][..], &spec.shape].concat(), (spec.kind, Device::Cpu)),
                    false => Tensor::cat(&own, 0),
                });
                continue;
            };
            let all = Tensor::empty([&[n][..], &spec.shape].concat(), (spec.kind, Device::Cpu));
            for root in 0..self.world {
                let theirs: Vec<i64> = (root as i64..batches).step_by(self.world).collect();
                let count: i64 = theirs.iter().map(|&k| len_of(k)).sum();
                if count == 0 {
                    continue;
                }
                let buf = match root == self.rank {
                    true => Tensor::cat(&own, 0).to_kind(spec.kind).contiguous(),
                    false => Tensor::empty([&[count][..], &spec.shape].concat(), (spec.kind, Device::Cpu)),
                };
                if buf.size()[1..] != spec.shape[..] {
                    bail!("internal: rows of shape {:?}, expected {:?}", &buf.size()[1..], spec.shape);
                }
                group.broadcast(&[&buf], root)?;
                let mut off = 0;
                for k in theirs {
                    all.narrow(0, k * batch, len_of(k)).copy_(&buf.narrow(0, off, len_of(k)));
                    off += len_of(k);
                }
            }
            gathered.push(all);
        }
        Ok(gathered)
    }
}
