// CUDA graphs for ddpm's sampling network (src/graph.rs): capture the kernels of one forward
// call on a side stream and replay them, what torch.cuda.graphs / torch.compile's
// "reduce-overhead" mode do. Compiled only where the CUDA runtime headers are present; every
// function reports failure through its return value and `err`, never by throwing.

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/core/Event.h>
#include <c10/cuda/CUDAStream.h>

#include <optional>

#include "guarded.h"

namespace {

struct Graph {
  at::cuda::CUDAGraph graph;
  c10::cuda::CUDAStream side;
  std::optional<c10::cuda::CUDAStream> previous;
  explicit Graph(c10::DeviceIndex device) : side(c10::cuda::getStreamFromPool(false, device)) {}
};

}  // namespace

extern "C" {

// A graph for `device` with its own side stream (nullptr and `err` on failure).
void* ddpm_graph_new(int device, char* err, size_t errlen) {
  Graph* g = nullptr;
  guarded(err, errlen, [&] { g = new Graph(static_cast<c10::DeviceIndex>(device)); });
  return g;
}

// Makes the side stream current (after it waits for the current stream's work): warm-up runs
// and the capture happen there, as torch.cuda.graph does.
int ddpm_graph_enter(void* handle, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    auto* g = static_cast<Graph*>(handle);
    auto current = c10::cuda::getCurrentCUDAStream(g->side.device_index());
    // c10's device-generic event (through libc10_cuda; no CUDA runtime symbols here).
    c10::Event ready(c10::DeviceType::CUDA);
    ready.record(current.unwrap());
    ready.block(g->side.unwrap());
    g->previous = current;
    c10::cuda::setCurrentCUDAStream(g->side);
  });
}

// Back to the stream that was current, which then waits for the side stream's work.
int ddpm_graph_exit(void* handle, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    auto* g = static_cast<Graph*>(handle);
    if (!g->previous) return;
    c10::Event done(c10::DeviceType::CUDA);
    done.record(g->side.unwrap());
    done.block(g->previous->unwrap());
    c10::cuda::setCurrentCUDAStream(*g->previous);
    g->previous.reset();
  });
}

int ddpm_graph_capture_begin(void* handle, char* err, size_t errlen) {
  return guarded(err, errlen, [&] { static_cast<Graph*>(handle)->graph.capture_begin(); });
}

int ddpm_graph_capture_end(void* handle, char* err, size_t errlen) {
  return guarded(err, errlen, [&] { static_cast<Graph*>(handle)->graph.capture_end(); });
}

// Replays the captured kernels on the current stream.
int ddpm_graph_replay(void* handle, char* err, size_t errlen) {
  return guarded(err, errlen, [&] { static_cast<Graph*>(handle)->graph.replay(); });
}

void ddpm_graph_free(void* handle) {
  try {
    delete static_cast<Graph*>(handle);
  } catch (...) {
  }
}

}  // extern "C"
