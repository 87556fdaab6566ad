//! The demo's fixed sinusoidal time table, `n_steps x pe_dim`: column 2i is
//! `sin(t / 10000^(2i / pe_dim))`, column 2i+1 the matching `cos`. It is a saved, frozen
//! parameter (`pe.embedding.weight`) looked up by `t`.

use tch::{nn, Kind, Tensor};

/// The table as an `f32 [n_steps, pe_dim]` tensor on the CPU.
pub fn sinusoidal_table(n_steps: i64, pe_dim: i64) -> Tensor {
    let mut data = Vec::with_capacity((n_steps * pe_dim) as usize);
    for t in 0..n_steps {
        for i in 0..pe_dim / 2 {
            // Computed in f32 like the PyTorch demo (torch.linspace, float32 pow).
            let two_i = (2 * i) as f32;
            let freq = 10000f32.powf(two_i / pe_dim as f32);
            let arg = t as f32 / freq;
            data.push(arg.sin());
            data.push(arg.cos());
        }
    }
    Tensor::from_slice(&data).view([n_steps, pe_dim])
}

/// `pe.embedding`: a frozen lookup table.
#[derive(Debug)]
pub struct PositionalEncoding {
    pub table: Tensor,
}

impl PositionalEncoding {
    pub fn new(p: &nn::Path, n_steps: i64, pe_dim: i64) -> Self {
        let table = (p / "embedding").add("weight", sinusoidal_table(n_steps, pe_dim).to_device(p.device()), false);
        Self { table }
    }

    /// `t: i64 [N]` -> `[N, pe_dim]`.
    pub fn forward(&self, t: &Tensor) -> Tensor {
        self.table.index_select(0, &t.to_kind(Kind::Int64))
    }
}
