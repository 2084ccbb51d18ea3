//! Mixed precision on CUDA: bf16 autocast, as the paper trains.

extern "C" {
    fn m3ret_set_cuda_autocast_bf16();
}

/// Runs `f` under CUDA autocast in bfloat16 (on the CPU, `f` runs as it is).
pub fn bf16_autocast<T>(on_cuda: bool, f: impl FnOnce() -> T) -> T {
    if !on_cuda {
        return f();
    }
    // SAFETY: sets a process-wide libtorch setting; no pointers involved.
    unsafe { m3ret_set_cuda_autocast_bf16() };
    tch::autocast(true, f)
}
