//! CUDA graphs: a network this small is bound by kernel launches on a GPU, so kernels are
//! captured once (after warm-up runs on a side stream) and replayed from static input and output
//! tensors, as `torch.compile(mode="reduce-overhead")` does. [`CudaGraph`] is the graph itself
//! (the C++ side is `csrc/cuda_graph.cpp`); [`Graphed`] replays a network's forward call for
//! sampling (`sample.cuda_graphs`), one graph per input shape; the training step has its own
//! (`learner::step_graphs`). On the CPU, in builds without the CUDA headers, and after a capture that
//! failed (with one warning), the network runs as it is.

use crate::model::Denoiser;
use anyhow::{bail, Result};
use std::cell::{Cell, RefCell};
use tch::{Device, Kind, Tensor};

#[cfg(not(ddpm_no_cuda_graphs))]
mod ffi {
    use std::ffi::{c_char, c_int, c_void};
    extern "C" {
        pub fn ddpm_graph_new(device: c_int, err: *mut c_char, errlen: usize) -> *mut c_void;
        pub fn ddpm_graph_enter(g: *mut c_void, err: *mut c_char, errlen: usize) -> c_int;
        pub fn ddpm_graph_exit(g: *mut c_void, err: *mut c_char, errlen: usize) -> c_int;
        pub fn ddpm_graph_capture_begin(g: *mut c_void, err: *mut c_char, errlen: usize) -> c_int;
        pub fn ddpm_graph_capture_end(g: *mut c_void, err: *mut c_char, errlen: usize) -> c_int;
        pub fn ddpm_graph_replay(g: *mut c_void, err: *mut c_char, errlen: usize) -> c_int;
        pub fn ddpm_graph_free(g: *mut c_void);
    }
}

/// Whether this build can capture CUDA graphs at all.
pub fn available() -> bool {
    cfg!(not(ddpm_no_cuda_graphs))
}

/// One `at::cuda::CUDAGraph` with its side stream.
pub(crate) struct CudaGraph {
    #[cfg_attr(ddpm_no_cuda_graphs, allow(dead_code))]
    handle: *mut std::ffi::c_void,
}

/// What to do with a graph.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// Make the side stream current (after it waits for the current stream).
    Enter,
    /// Back to the previous stream, which waits for the side stream.
    Exit,
    Begin,
    End,
    Replay,
}

impl CudaGraph {
    pub(crate) fn new(device: usize) -> Result<CudaGraph> {
        #[cfg(not(ddpm_no_cuda_graphs))]
        {
            let mut err = vec![0 as std::ffi::c_char; 1024];
            let handle = unsafe { ffi::ddpm_graph_new(device as i32, err.as_mut_ptr(), err.len()) };
            if handle.is_null() {
                let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
                bail!("cannot make a CUDA graph on cuda:{device}: {msg}");
            }
            Ok(CudaGraph { handle })
        }
        #[cfg(ddpm_no_cuda_graphs)]
        bail!("this ddpm was built without the CUDA headers: no CUDA graphs (cuda:{device})")
    }

    fn step(&self, op: Op) -> Result<()> {
        #[cfg(not(ddpm_no_cuda_graphs))]
        {
            let f = match op {
                Op::Enter => ffi::ddpm_graph_enter,
                Op::Exit => ffi::ddpm_graph_exit,
                Op::Begin => ffi::ddpm_graph_capture_begin,
                Op::End => ffi::ddpm_graph_capture_end,
                Op::Replay => ffi::ddpm_graph_replay,
            };
            let mut err = vec![0 as std::ffi::c_char; 1024];
            if unsafe { f(self.handle, err.as_mut_ptr(), err.len()) } != 0 {
                let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
                bail!("CUDA graph {op:?}: {msg}");
            }
            Ok(())
        }
        #[cfg(ddpm_no_cuda_graphs)]
        bail!("CUDA graph {op:?}: not built")
    }

    /// Runs `f` with the graph's side stream current (it first waits for the current stream's
    /// work, and the current stream waits for its work after): warm-up runs and the capture
    /// happen there, as `torch.cuda.graph` does.
    pub(crate) fn on_side_stream<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.between(Op::Enter, Op::Exit, f)
    }

    /// Records the kernels `f` launches (on the side stream, see [`CudaGraph::on_side_stream`])
    /// instead of running them; the capture is ended whatever `f` does.
    pub(crate) fn capture<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.between(Op::Begin, Op::End, f)
    }

    /// `open`, `f`, then `close` whatever `f` did; the first error wins.
    fn between<T>(&self, open: Op, close: Op, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.step(open)?;
        let out = catching(f);
        let closed = self.step(close);
        let out = out?;
        closed?;
        Ok(out)
    }

    /// Launches the captured kernels on the current stream.
    pub(crate) fn replay(&self) -> Result<()> {
        self.step(Op::Replay)
    }
}

/// `f`'s result, with a libtorch error inside it (a panic in tch) turned into an error.
fn catching<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    run.unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(anyhow::anyhow!("libtorch failed: {}", msg.lines().next().unwrap_or("")))
    })
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        #[cfg(not(ddpm_no_cuda_graphs))]
        unsafe {
            ffi::ddpm_graph_free(self.handle)
        }
    }
}

/// A captured forward call: its static inputs and output.
struct Captured {
    graph: CudaGraph,
    x: Tensor,
    t: Tensor,
    y: Option<Tensor>,
    out: Tensor,
}

/// A network whose forward calls on a CUDA device are replayed from CUDA graphs, one per input
/// shape (the last, smaller batch of a set gets its own).
pub struct Graphed<'a> {
    inner: &'a dyn Denoiser,
    enabled: bool,
    captured: RefCell<Vec<Captured>>,
    failed: Cell<bool>,
}

/// Warm-up calls before a capture (cuDNN's algorithm choice and lazy initialisation happen
/// outside the graph).
pub(crate) const WARMUP: usize = 3;

impl<'a> Graphed<'a> {
    /// `enabled`: use graphs where the input is on a CUDA device.
    pub fn new(inner: &'a dyn Denoiser, enabled: bool) -> Self {
        Graphed { inner, enabled: enabled && available(), captured: RefCell::new(Vec::new()), failed: Cell::new(false) }
    }

    /// Graphs captured so far.
    pub fn graphs(&self) -> usize {
        self.captured.borrow().len()
    }

    fn replay(&self, xs: &Tensor, t: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        let mut caps = self.captured.borrow_mut();
        let same =
            |c: &Captured| c.x.size() == xs.size() && c.x.kind() == xs.kind() && c.y.is_some() == labels.is_some();
        let i = match caps.iter().position(same) {
            Some(i) => i,
            None => {
                caps.push(self.capture(xs, t, labels)?);
                caps.len() - 1
            }
        };
        let c = &caps[i];
        let _guard = tch::no_grad_guard();
        c.x.shallow_clone().f_copy_(xs)?;
        c.t.shallow_clone().f_copy_(t)?;
        if let (Some(sy), Some(y)) = (&c.y, labels) {
            sy.shallow_clone().f_copy_(y)?;
        }
        c.graph.replay()?;
        // The next replay overwrites `out`; multistep solvers keep earlier outputs.
        Ok(c.out.copy())
    }

    fn capture(&self, xs: &Tensor, t: &Tensor, labels: Option<&Tensor>) -> Result<Captured> {
        let Device::Cuda(device) = xs.device() else { bail!("CUDA graphs need a CUDA tensor") };
        let _guard = tch::no_grad_guard();
        let (x, t, y) = (xs.copy(), t.copy(), labels.map(Tensor::copy));
        let graph = CudaGraph::new(device)?;
        let out = graph.on_side_stream(|| {
            for _ in 0..WARMUP {
                let _ = self.inner.forward(&x, &t, y.as_ref());
            }
            graph.capture(|| Ok(self.inner.forward(&x, &t, y.as_ref())))
        })?;
        Ok(Captured { graph, x, t, y, out })
    }
}

impl Denoiser for Graphed<'_> {
    fn forward(&self, xs: &Tensor, t: &Tensor, labels: Option<&Tensor>) -> Tensor {
        if !self.enabled || self.failed.get() || !xs.device().is_cuda() || xs.kind() != Kind::Float {
            return self.inner.forward(xs, t, labels);
        }
        match self.replay(xs, t, labels) {
            Ok(out) => out,
            Err(e) => {
                tracing::warn!("CUDA graphs are off for this run: {e:#}");
                self.failed.set(true);
                self.captured.borrow_mut().clear();
                self.inner.forward(xs, t, labels)
            }
        }
    }

    fn num_classes(&self) -> i64 {
        self.inner.num_classes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A denoiser that doubles its input and counts its calls.
    struct Doubler(Cell<usize>);

    impl Denoiser for Doubler {
        fn forward(&self, xs: &Tensor, _t: &Tensor, _labels: Option<&Tensor>) -> Tensor {
            self.0.set(self.0.get() + 1);
            xs * 2.0
        }
        fn num_classes(&self) -> i64 {
            3
        }
    }

    #[test]
    fn on_the_cpu_the_network_runs_as_it_is() {
        let inner = Doubler(Cell::new(0));
        let g = Graphed::new(&inner, true);
        let x = Tensor::from_slice(&[1.0f32, -2.0]).reshape([2, 1, 1, 1]);
        let t = Tensor::from_slice(&[5i64, 5]);
        let out = g.forward(&x, &t, None);
        assert_eq!(Vec::<f32>::try_from(out.flatten(0, -1)).unwrap(), vec![2.0, -4.0]);
        assert_eq!((inner.0.get(), g.graphs(), g.num_classes()), (1, 0, 3), "one plain call, no capture");
    }
}
