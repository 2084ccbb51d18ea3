// The libtorch calls tch 0.24 does not expose, one function each.
#include <ATen/autocast_mode.h>
#include <ATen/core/Tensor.h>

// The dtype of CUDA autocast: tch::autocast runs in float16; the paper trains in bfloat16.
extern "C" void m3ret_set_cuda_autocast_bf16() {
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
}

// Drops a tensor's gradient (PyTorch's zero_grad(set_to_none=True)): the next
// backward writes a fresh gradient instead of adding into a zeroed one.
// `t` is a tch Tensor's pointer, which is an at::Tensor*.
extern "C" void m3ret_clear_grad(at::Tensor* t) {
    t->mutable_grad().reset();
}
