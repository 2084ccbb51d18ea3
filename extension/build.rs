// The extension links libtorch as every other package does (build/link_libtorch.rs),
// but not libtorch_cuda: PostgreSQL loads a preloaded extension into the postmaster,
// whose every child inherits what the extension's libraries set up at load time.
// `m3ret_core::runtime` loads CUDA support in the one process that asks for a
// device (the model server, or a backend in backend mode).
#[path = "../build/link_libtorch.rs"]
mod link;

fn main() {
    link::link_libtorch_with(link::Cuda::OnFirstUse);
}
