// The NCCL backend, compiled only when the CUDA runtime and NCCL headers are present.
#pragma once
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>

c10::intrusive_ptr<c10d::Backend> ddpm_make_nccl(const c10::intrusive_ptr<c10d::Store>& store, int rank, int world,
                                                 std::chrono::milliseconds timeout);
