//! Facts about the libtorch this build runs on, for `m3ret-train info` and
//! `m3ret_runtime_info()`.

/// The PyTorch version of the libtorch this binary was linked against
/// (read from its `version.py` at build time), e.g. "2.11.0+cu130".
pub const TORCH_VERSION: &str = env!("M3RET_TORCH_VERSION");

/// How many CUDA devices libtorch can use (0 when none, or a CPU-only build).
/// Initialises CUDA: never call it before a PostgreSQL backend has forked.
pub fn cuda_device_count() -> usize {
    if tch::Cuda::is_available() {
        tch::Cuda::device_count().max(0) as usize
    } else {
        0
    }
}
