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

// CPU autocast in bfloat16 (PyTorch's torch.autocast("cpu", torch.bfloat16)), which
// tch does not expose: enter returns whether it was on before, for exit to restore.
// The state is the calling thread's.
extern "C" bool m3ret_cpu_autocast_bf16_enter() {
    bool was = at::autocast::is_autocast_enabled(at::kCPU);
    at::autocast::set_autocast_enabled(at::kCPU, true);
    at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
    at::autocast::increment_nesting();
    return was;
}

extern "C" void m3ret_cpu_autocast_exit(bool was) {
    if (at::autocast::decrement_nesting() == 0) {
        at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(at::kCPU, was);
}

extern "C" bool m3ret_cpu_autocast_enabled() {
    return at::autocast::is_autocast_enabled(at::kCPU);
}

// Turns CPU autocast off on this thread (for a computation that needs f32, such as a
// Cholesky factor); returns whether it was on, for m3ret_cpu_autocast_restore.
extern "C" bool m3ret_cpu_autocast_suspend() {
    bool was = at::autocast::is_autocast_enabled(at::kCPU);
    at::autocast::set_autocast_enabled(at::kCPU, false);
    return was;
}

extern "C" void m3ret_cpu_autocast_restore(bool was) {
    at::autocast::set_autocast_enabled(at::kCPU, was);
}
