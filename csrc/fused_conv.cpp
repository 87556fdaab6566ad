// oneDNN-fused convolutions for inference on the CPU (src/model/fused.rs): the ops inductor's
// CPU freezing emits, `mkldnn::_convolution_pointwise` (conv + ReLU) and its binary form
// (conv + add + ReLU), called through the dispatcher in boxed form. No C++ exception crosses
// this boundary.

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>

#include <optional>
#include <string>
#include <vector>

#include "guarded.h"

extern "C" {

// 1 when a forward may use the fused calls: no gradient recorded and CPU autocast off.
int ddpm_inference_fusable() {
  return !at::GradMode::is_enabled() && !at::autocast::is_autocast_enabled(at::kCPU) ? 1 : 0;
}

// *out = relu?(conv2d(x, w, b, stride 1, `padding`) [+ other]), one oneDNN call. Returns 0, or 1
// with the error in err.
int ddpm_conv_fused(at::Tensor* x, at::Tensor* w, at::Tensor* b, at::Tensor* other, int64_t padding, int relu,
                    at::Tensor** out, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    static const auto unary = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_convolution_pointwise", "");
    static const auto binary =
        c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_convolution_pointwise", "binary");
    std::vector<int64_t> pad{padding, padding}, ones{1, 1};
    c10::IValue bias = b ? c10::IValue(*b) : c10::IValue();
    std::vector<c10::IValue> stack;
    if (other == nullptr) {
      stack = {*x, *w, bias, pad, ones, ones, int64_t{1}, std::string(relu ? "relu" : "none"),
               c10::List<std::optional<at::Scalar>>(), c10::IValue()};
      unary.callBoxed(&stack);
    } else {
      c10::IValue unary_attr = relu ? c10::IValue(std::string("relu")) : c10::IValue();
      stack = {*x, *other, *w, bias, pad, ones, ones, int64_t{1}, std::string("add"), c10::IValue(at::Scalar(1.0)),
               unary_attr, c10::List<std::optional<at::Scalar>>(), c10::IValue()};
      binary.callBoxed(&stack);
    }
    *out = new at::Tensor(stack.at(0).toTensor());
  });
}

}  // extern "C"
