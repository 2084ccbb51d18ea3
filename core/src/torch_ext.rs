//! The libtorch calls tch 0.24 does not expose (csrc/torch_ext.cpp).

extern "C" {
    fn m3ret_set_cuda_autocast_bf16();
    fn m3ret_clear_grad(tensor: *mut torch_sys::C_tensor);
    fn m3ret_cuda_hooks_registered() -> bool;
}

/// Runs `f` under CUDA autocast in bfloat16, as the paper trains (on the CPU, `f`
/// runs as it is).
pub fn bf16_autocast<T>(on_cuda: bool, f: impl FnOnce() -> T) -> T {
    if !on_cuda {
        return f();
    }
    // SAFETY: sets a process-wide libtorch setting; no pointers involved.
    unsafe { m3ret_set_cuda_autocast_bf16() };
    tch::autocast(true, f)
}

/// Drops the gradient of `t` (set to None), so the next backward pass writes it
/// afresh: one pass over the gradients fewer than zeroing them.
pub fn clear_grad(t: &tch::Tensor) {
    // A second handle on the same at::Tensor impl: its grad is the variable's grad.
    let mut handle = t.shallow_clone();
    // SAFETY: `as_mut_ptr` is the live at::Tensor behind `handle`; resetting its
    // grad field touches nothing else.
    unsafe { m3ret_clear_grad(handle.as_mut_ptr()) };
}

/// Whether libtorch answers CUDA queries with libtorch_cuda's hooks (true) or its
/// CPU-only stand-in. The first call fixes which, for the life of the process: see
/// [`crate::runtime::load_cuda_support`].
pub fn cuda_hooks_registered() -> bool {
    // SAFETY: a query of libtorch's CUDA hooks, without arguments.
    unsafe { m3ret_cuda_hooks_registered() }
}
