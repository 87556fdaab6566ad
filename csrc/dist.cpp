// A thin C interface to libtorch's c10d engine for data-parallel training: a TCPStore
// rendezvous, a gloo (CPU) or NCCL (CUDA) process group, bucketed all-reduce and broadcast.
// Tensors arrive as tch's `at::Tensor*` handles. Every C++ exception stops here and
// comes back as a non-zero return value with its message in `err`.

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "guarded.h"

#ifdef DDPM_WITH_NCCL
#include "dist_nccl.h"
#endif

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  int rank;
  int world;
};

bool is_loopback(const std::string& host) {
  return host == "127.0.0.1" || host == "localhost" || host == "::1";
}

// Consecutive tensors of one dtype and device, up to `bucket_bytes` each.
std::vector<std::vector<at::Tensor>> buckets(at::Tensor** ts, int n, int64_t bucket_bytes) {
  std::vector<std::vector<at::Tensor>> out;
  int64_t bytes = 0;
  for (int i = 0; i < n; ++i) {
    const at::Tensor& t = *ts[i];
    int64_t b = t.numel() * static_cast<int64_t>(t.element_size());
    bool fresh = out.empty() || bytes + b > bucket_bytes || out.back().front().scalar_type() != t.scalar_type() ||
                 out.back().front().device() != t.device();
    if (fresh) {
      out.emplace_back();
      bytes = 0;
    }
    out.back().push_back(t);
    bytes += b;
  }
  return out;
}

at::Tensor flatten(const std::vector<at::Tensor>& ts) {
  std::vector<at::Tensor> flat;
  flat.reserve(ts.size());
  for (const auto& t : ts) flat.push_back(t.reshape({-1}));
  return at::cat(flat, 0);
}

void unflatten(const at::Tensor& flat, std::vector<at::Tensor>& ts) {
  int64_t offset = 0;
  for (auto& t : ts) {
    int64_t n = t.numel();
    t.copy_(flat.narrow(0, offset, n).view(t.sizes()));
    offset += n;
  }
}

}  // namespace

extern "C" {

// Rendezvous through a TCPStore at host:port (rank 0 serves it) and make the process group.
void* ddpm_dist_new(const char* backend, const char* host, int port, int rank, int world, int64_t timeout_ms,
                    char* err, size_t errlen) {
  Group* group = nullptr;
  int rc = guarded(err, errlen, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = rank == 0;
    opts.numWorkers = world;
    opts.waitWorkers = true;
    opts.timeout = timeout;
    std::string h = host;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(h, opts);
    auto store = c10::make_intrusive<c10d::PrefixStore>("ddpm", tcp);
    std::string b = backend;
    c10::intrusive_ptr<c10d::Backend> pg;
    if (b == "gloo") {
      auto options = c10d::ProcessGroupGloo::Options::create(timeout);
      const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
      if (ifname != nullptr && *ifname != '\0') {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      } else if (is_loopback(h)) {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      } else {
        options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
    } else if (b == "nccl") {
#ifdef DDPM_WITH_NCCL
      pg = ddpm_make_nccl(store, rank, world, timeout);
#else
      throw std::runtime_error("this ddpm was built without NCCL support (no CUDA/NCCL headers at build time)");
#endif
    } else {
      throw std::runtime_error("unknown backend '" + b + "' (expected gloo or nccl)");
    }
    group = new Group{tcp, pg, rank, world};
  });
  return rc == 0 ? group : nullptr;
}

// Sums the tensors over all ranks in place and divides by the world size (mean), in flat
// buckets of at most `bucket_bytes`.
int ddpm_dist_allreduce_mean(void* handle, at::Tensor** ts, int n, int64_t bucket_bytes, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    auto* g = static_cast<Group*>(handle);
    at::AutoGradMode no_grad(false);
    for (auto& bucket : buckets(ts, n, bucket_bytes)) {
      std::vector<at::Tensor> flat = {flatten(bucket)};
      g->backend->allreduce(flat)->wait();
      flat[0].div_(g->world);
      unflatten(flat[0], bucket);
    }
  });
}

// Copies rank `root`'s tensors into every other rank's, in flat buckets.
int ddpm_dist_broadcast(void* handle, at::Tensor** ts, int n, int root, int64_t bucket_bytes, char* err,
                        size_t errlen) {
  return guarded(err, errlen, [&] {
    auto* g = static_cast<Group*>(handle);
    at::AutoGradMode no_grad(false);
    for (auto& bucket : buckets(ts, n, bucket_bytes)) {
      std::vector<at::Tensor> flat = {flatten(bucket)};
      c10d::BroadcastOptions opts;
      opts.rootRank = root;
      g->backend->broadcast(flat, opts)->wait();
      if (g->rank != root) unflatten(flat[0], bucket);
    }
  });
}

void ddpm_dist_free(void* handle) {
  auto* g = static_cast<Group*>(handle);
  try {
    // What destroy_process_group() does: NCCL frees its communicators (and does not warn at exit).
    g->backend->shutdown();
    g->backend.reset();
    g->store.reset();
  } catch (...) {
  }
  delete g;
}

}  // extern "C"
