// Small libtorch calls that tch does not expose: the autocast dtype per device type, enabling
// CPU autocast, dropping a tensor's gradient (as `param.grad = None` does in PyTorch), and
// whether oneDNN runs bf16 on this CPU (PyTorch's torch.ops.mkldnn._is_mkldnn_bf16_supported).
// Tensors arrive as tch's `at::Tensor*` handles. No C++ exception crosses this boundary.

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>

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
}
