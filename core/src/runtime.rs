//! Facts about the libtorch this build runs on, for `m3ret-train info` and
//! `m3ret_runtime_info()`, and the loading of its CUDA support.

use std::ffi::CString;
use std::sync::OnceLock;

/// The PyTorch version of the libtorch this binary was linked against
/// (read from its `version.py` at build time), e.g. "2.11.0+cu130".
pub const TORCH_VERSION: &str = env!("M3RET_TORCH_VERSION");

/// libtorch_cuda.so of the libtorch this binary was built against; empty when that
/// libtorch has no CUDA support.
pub const LIBTORCH_CUDA: &str = env!("M3RET_LIBTORCH_CUDA");

/// Whether libtorch's CUDA support is in this process (see [`load_cuda_support`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CudaSupport {
    Loaded,
    /// The libtorch this was built against is CPU-only.
    NoneInLibtorch,
    /// No NVIDIA driver on this machine, so no CUDA device: not loaded.
    NoDriver,
    /// The loader's message.
    LoadFailed(String),
}

/// Loads libtorch's CUDA support into this process if it can be of use, once.
///
/// The extension does not link libtorch_cuda (see build/link_libtorch.rs): it is
/// loaded here, in the process that asks for a device, and only where an NVIDIA
/// driver is (its CUDA libraries take about 120 MiB of memory at load). It must
/// come before the first CUDA query: libtorch looks up its CUDA hooks once, at
/// that query, and a process that asked before they were loaded stays without
/// CUDA. Every CUDA query of this workspace goes through [`cuda_device_count`],
/// which calls this first. Where libtorch_cuda is linked (the trainer, the tests),
/// loading it again only returns the loaded library.
pub fn load_cuda_support() -> CudaSupport {
    static LOADED: OnceLock<CudaSupport> = OnceLock::new();
    LOADED.get_or_init(load_libtorch_cuda).clone()
}

/// Where a machine with an NVIDIA driver has one of these (WSL2: /dev/dxg).
const DRIVER_PATHS: [&str; 4] = [
    "/dev/nvidiactl",
    "/dev/nvidia0",
    "/proc/driver/nvidia/version",
    "/dev/dxg",
];

/// Whether this machine has an NVIDIA driver (without loading anything).
pub fn nvidia_driver_present() -> bool {
    DRIVER_PATHS
        .iter()
        .any(|p| std::path::Path::new(p).exists())
}

fn load_libtorch_cuda() -> CudaSupport {
    if LIBTORCH_CUDA.is_empty() {
        return CudaSupport::NoneInLibtorch;
    }
    if !nvidia_driver_present() {
        return CudaSupport::NoDriver;
    }
    match load_libtorch_cuda_library() {
        Ok(()) => CudaSupport::Loaded,
        Err(e) => CudaSupport::LoadFailed(e),
    }
}

/// Loads libtorch_cuda.so ([`LIBTORCH_CUDA`]) into this process, driver or not
/// ([`load_cuda_support`] is the policy; this is the mechanism, tested on its own
/// where there is no GPU).
pub fn load_libtorch_cuda_library() -> Result<(), String> {
    let path = CString::new(LIBTORCH_CUDA).map_err(|_| format!("bad path {LIBTORCH_CUDA:?}"))?;
    // SAFETY: a NUL-terminated path; the handle is kept for the life of the
    // process (never dlclose'd: libtorch keeps pointers into the library).
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if !handle.is_null() {
        return Ok(());
    }
    // SAFETY: dlerror returns null or a NUL-terminated message that stays valid
    // until this thread's next dl* call.
    let message = unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown error".to_string()
        } else {
            std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    };
    Err(format!("cannot load {LIBTORCH_CUDA}: {message}"))
}

/// How many CUDA devices libtorch can use (0 when none, or a CPU-only build).
/// Initialises CUDA: never call it before a PostgreSQL backend has forked.
pub fn cuda_device_count() -> usize {
    if load_cuda_support() != CudaSupport::Loaded {
        return 0;
    }
    if tch::Cuda::is_available() {
        tch::Cuda::device_count().max(0) as usize
    } else {
        0
    }
}

/// What `m3ret_runtime_info()` and `m3ret-train info` say of CUDA support:
/// "loaded" (libtorch's CUDA library answers CUDA queries), or why it is not.
/// Loads it where it can be of use, as [`cuda_device_count`] does.
pub fn cuda_support() -> String {
    match load_cuda_support() {
        CudaSupport::Loaded if crate::torch_ext::cuda_hooks_registered() => "loaded".to_string(),
        CudaSupport::Loaded => {
            "loaded after libtorch had been asked about CUDA: not in use".to_string()
        }
        CudaSupport::NoneInLibtorch => "none in this libtorch (CPU-only)".to_string(),
        CudaSupport::NoDriver => "not loaded: no NVIDIA driver on this machine".to_string(),
        CudaSupport::LoadFailed(e) => e,
    }
}
