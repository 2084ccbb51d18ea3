//! The libtorch calls tch 0.24 does not expose (csrc/torch_ext.cpp).

extern "C" {
    fn m3ret_set_cuda_autocast_bf16();
    fn m3ret_cpu_autocast_bf16_enter() -> bool;
    fn m3ret_cpu_autocast_exit(was: bool);
    fn m3ret_cpu_autocast_enabled() -> bool;
    fn m3ret_cpu_autocast_suspend() -> bool;
    fn m3ret_cpu_autocast_restore(was: bool);
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

/// CPU autocast in bf16 on this thread while it lives (restored when dropped, on
/// unwind too): matrix products and convolutions in bf16, the rest in f32.
pub struct CpuBf16 {
    was: bool,
}

impl CpuBf16 {
    pub fn enter() -> CpuBf16 {
        // SAFETY: sets the calling thread's autocast state; no pointers involved.
        CpuBf16 {
            was: unsafe { m3ret_cpu_autocast_bf16_enter() },
        }
    }

    /// Whether CPU autocast is on on this thread.
    pub fn active() -> bool {
        // SAFETY: a query of the calling thread's autocast state.
        unsafe { m3ret_cpu_autocast_enabled() }
    }
}

impl Drop for CpuBf16 {
    fn drop(&mut self) {
        // SAFETY: as in enter().
        unsafe { m3ret_cpu_autocast_exit(self.was) }
    }
}

/// CPU autocast off on this thread while it lives, for a computation that must
/// stay f32 (a Cholesky factor of a Gram matrix); restored when dropped.
pub struct CpuF32 {
    was: bool,
}

impl CpuF32 {
    pub fn enter() -> CpuF32 {
        // SAFETY: sets the calling thread's autocast state; no pointers involved.
        CpuF32 {
            was: unsafe { m3ret_cpu_autocast_suspend() },
        }
    }
}

impl Drop for CpuF32 {
    fn drop(&mut self) {
        // SAFETY: as in enter().
        unsafe { m3ret_cpu_autocast_restore(self.was) }
    }
}

/// Runs `f` in `precision`: under CPU bf16 autocast for `Precision::Bf16` on the
/// CPU, under CUDA bf16 autocast on CUDA (as the paper trains), else as it is.
pub fn autocast<T>(
    device: tch::Device,
    precision: crate::precision::Precision,
    f: impl FnOnce() -> T,
) -> T {
    if device.is_cuda() {
        return bf16_autocast(true, f);
    }
    match precision {
        crate::precision::Precision::Bf16 => {
            let _on = CpuBf16::enter();
            f()
        }
        crate::precision::Precision::F32 => f(),
    }
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
