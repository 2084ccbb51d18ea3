// core links libtorch like every other crate (build/link_libtorch.rs) and also
// compiles csrc/torch_ext.cpp, a one-function shim over libtorch's C++ API.
#[path = "../build/link_libtorch.rs"]
mod link;

fn main() {
    let lib = link::link_libtorch();
    println!("cargo:rerun-if-changed=csrc/torch_ext.cpp");
    let include = std::path::Path::new(&lib)
        .parent()
        .expect("libtorch lib folder has a parent")
        .join("include");
    cc::Build::new()
        .cpp(true)
        .file("csrc/torch_ext.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .compile("m3ret_torch_ext");
}
