// The libtorch calls tch 0.24 does not expose, one function each.
#include <ATen/autocast_mode.h>
#include <ATen/core/Tensor.h>
#include <ATen/detail/CUDAHooksInterface.h>

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

// Whether libtorch's CUDA hooks are those of libtorch_cuda (which has the CUDA
// runtime) rather than the CPU-only stand-in; libtorch fixes which on first use.
extern "C" bool m3ret_cuda_hooks_registered() {
    return at::detail::getCUDAHooks().hasCUDART();
}
