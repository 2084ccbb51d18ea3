// The one libtorch call tch 0.24 does not expose: the dtype of CUDA autocast.
// tch::autocast runs in float16 by default; the paper trains in bfloat16.
#include <ATen/autocast_mode.h>

extern "C" void m3ret_set_cuda_autocast_bf16() {
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
}
