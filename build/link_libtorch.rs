// Build script shared by every package that links libtorch (core's tests, the
// extension, the trainer, the benches). See DESIGN.md, "Toolchain".
//
// - rpath to libtorch's lib folder: the postmaster's loader knows nothing of
//   LD_LIBRARY_PATH, so the extension must find libtorch on its own.
// - libtorch_cuda linked with --no-as-needed: nothing references it by symbol, so
//   the linker would drop it and CUDA would silently stay off. Except in the
//   extension (and the server's crate: `LOADS_CUDA_ON_FIRST_USE`): PostgreSQL
//   preloads the extension into the postmaster, every process of the cluster
//   inherits what its libraries set up at load, and libtorch_cuda's CUDA
//   libraries alone set up about 120 MiB (cuBLASLt's tables); there it is loaded
//   on first use instead (`m3ret_core::runtime`).
// - M3RET_LIBTORCH_CUDA: libtorch_cuda.so's path ("" if this libtorch has none),
//   for that loading.
// - M3RET_TORCH_VERSION: the PyTorch version of the libtorch we built against,
//   read from its version.py, reported at run time.
use std::path::Path;

/// The packages whose programs load libtorch_cuda on first use instead of linking
/// it: the extension (loaded into the postmaster) and the model server's crate
/// (whose tests check that loading, as the server does it).
const LOADS_CUDA_ON_FIRST_USE: [&str; 2] = ["m3ret", "m3ret-server"];

#[allow(dead_code)]
fn main() {
    let package = std::env::var("CARGO_PKG_NAME").unwrap_or_default();
    if LOADS_CUDA_ON_FIRST_USE.contains(&package.as_str()) {
        link_libtorch_with(Cuda::OnFirstUse);
    } else {
        link_libtorch();
    }
}

/// How a package gets libtorch's CUDA support.
#[allow(dead_code)]
pub enum Cuda {
    /// Linked: loaded with the program.
    Linked,
    /// Not linked: `m3ret_core::runtime` loads it before the first CUDA query.
    OnFirstUse,
}

/// Emits the link flags and the version, with libtorch_cuda linked; returns
/// libtorch's lib folder.
pub fn link_libtorch() -> String {
    link_libtorch_with(Cuda::Linked)
}

/// As [`link_libtorch`], with libtorch_cuda linked or not.
pub fn link_libtorch_with(cuda: Cuda) -> String {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=../build/link_libtorch.rs");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("torch-sys did not report libtorch's lib folder; run scripts/setup.sh and source scripts/env.sh");
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    let libtorch_cuda = Path::new(&lib).join("libtorch_cuda.so");
    let has_cuda = libtorch_cuda.exists();
    if has_cuda && matches!(cuda, Cuda::Linked) {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    let path = if has_cuda {
        libtorch_cuda.display().to_string()
    } else {
        String::new()
    };
    println!("cargo:rustc-env=M3RET_LIBTORCH_CUDA={path}");
    let version = Path::new(&lib)
        .parent()
        .map(|torch| torch.join("version.py"))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("__version__ = ")
                    .map(|v| v.trim_matches(['\'', '"']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=M3RET_TORCH_VERSION={version}");
    lib
}
