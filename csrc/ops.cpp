// Small libtorch calls that tch does not expose: the autocast dtype per device type, enabling
// CPU autocast, dropping a tensor's gradient (as `param.grad = None` does in PyTorch), and
// whether oneDNN runs bf16 on this CPU (PyTorch's torch.ops.mkldnn._is_mkldnn_bf16_supported),
// and Adam/AdamW over all parameters in libtorch's fused kernel.
// Tensors arrive as tch's `at::Tensor*` handles. No C++ exception crosses this boundary.

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <string>
#include <vector>

#include "guarded.h"

namespace {
at::DeviceType device_type(int cuda) { return cuda ? at::kCUDA : at::kCPU; }
}  // namespace

extern "C" {

// Sets the dtype autocast casts to on the CPU (cuda = 0) or CUDA (cuda = 1); `dtype` is a
// c10::ScalarType code (5 = Half, 15 = BFloat16). Returns 0, or -1 on an error.
int ddpm_autocast_set_dtype(int cuda, int dtype) {
  try {
    at::autocast::set_autocast_dtype(device_type(cuda), static_cast<at::ScalarType>(dtype));
    return 0;
  } catch (...) {
    return -1;
  }
}

// The c10::ScalarType code autocast casts to on that device type, or -1 on an error.
int ddpm_autocast_get_dtype(int cuda) {
  try {
    return static_cast<int>(at::autocast::get_autocast_dtype(device_type(cuda)));
  } catch (...) {
    return -1;
  }
}

// Enables or disables autocast on that device type; returns the previous state (0/1), or -1.
int ddpm_autocast_set_enabled(int cuda, int enabled) {
  try {
    bool was = at::autocast::is_autocast_enabled(device_type(cuda));
    at::autocast::set_autocast_enabled(device_type(cuda), enabled != 0);
    return was ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

// Drops the gradient of `t` (it becomes undefined, so an optimizer skips the tensor).
int ddpm_tensor_reset_grad(at::Tensor* t) {
  try {
    t->mutable_grad().reset();
    return 0;
  } catch (...) {
    return -1;
  }
}

// 1 when oneDNN supports bf16 on this CPU (AVX512-BF16, AMX or the like), 0 when not, -1 when
// the op is missing from this libtorch.
int ddpm_mkldnn_bf16_supported() {
  try {
    auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_is_mkldnn_bf16_supported", "");
    return op.typed<bool()>().call() ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

// One Adam (decoupled = 0) or AdamW (decoupled = 1) update of n parameters in libtorch's fused
// kernel, the one torch.optim.Adam(fused=True) calls: params, grads, exp_avgs and exp_avg_sqs
// hold n handles each, `step` is a float32 tensor on the parameters' device holding the step
// count of this update (bias correction). `lr_tensor`, when not null, is a float32 0-dim tensor on
// the parameters' device holding the learning rate in place of `lr` (libtorch's tensor-lr
// overload: the value is read by the kernel, so a CUDA graph replays it with the current rate).
// Returns 0, or 1 with the error in err (e.g. where the op has no kernel for the device or dtype;
// nothing was changed then).
int ddpm_fused_adam(at::Tensor** params, at::Tensor** grads, at::Tensor** exp_avgs, at::Tensor** exp_avg_sqs,
                    at::Tensor* step, at::Tensor* lr_tensor, int n, double lr, double beta1, double beta2,
                    double weight_decay, double eps, int decoupled, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> p, g, m, v, steps;
    p.reserve(n);
    g.reserve(n);
    m.reserve(n);
    v.reserve(n);
    steps.reserve(n);
    for (int i = 0; i < n; ++i) {
      p.push_back(*params[i]);
      g.push_back(*grads[i]);
      m.push_back(*exp_avgs[i]);
      v.push_back(*exp_avg_sqs[i]);
      steps.push_back(*step);
    }
    if (lr_tensor && decoupled) {
      at::_fused_adamw_(p, g, m, v, {}, steps, *lr_tensor, beta1, beta2, weight_decay, eps, false, false);
    } else if (lr_tensor) {
      at::_fused_adam_(p, g, m, v, {}, steps, *lr_tensor, beta1, beta2, weight_decay, eps, false, false);
    } else if (decoupled) {
      at::_fused_adamw_(p, g, m, v, {}, steps, lr, beta1, beta2, weight_decay, eps, false, false);
    } else {
      at::_fused_adam_(p, g, m, v, {}, steps, lr, beta1, beta2, weight_decay, eps, false, false);
    }
  });
}
}
