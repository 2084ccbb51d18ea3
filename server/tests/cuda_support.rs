//! The model server's process gets libtorch's CUDA support by loading it, not by
//! linking it (this crate's tests are linked as the extension is: see
//! `LOADS_CUDA_ON_FIRST_USE` in build/link_libtorch.rs). Checked without a GPU:
//! what matters is that, loaded before the first CUDA query, libtorch_cuda's hooks
//! are the ones libtorch answers with; on a GPU machine they then find the devices.
//! One test in its own binary: libtorch fixes its CUDA hooks once per process.

use m3ret_core::runtime::{load_libtorch_cuda_library, LIBTORCH_CUDA};
use m3ret_core::torch_ext::cuda_hooks_registered;

fn maps_libtorch_cuda() -> bool {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .contains("libtorch_cuda.so")
}

#[test]
fn libtorch_cuda_loaded_on_first_use_answers_libtorchs_cuda_queries() {
    assert!(
        !maps_libtorch_cuda(),
        "the test binary must not link libtorch_cuda"
    );
    if LIBTORCH_CUDA.is_empty() {
        // A CPU-only libtorch: nothing to load, and libtorch says so.
        assert!(!cuda_hooks_registered());
        return;
    }
    load_libtorch_cuda_library().unwrap();
    assert!(maps_libtorch_cuda());
    assert!(
        cuda_hooks_registered(),
        "libtorch answers CUDA queries with its CPU-only stand-in after loading {LIBTORCH_CUDA}"
    );
}
