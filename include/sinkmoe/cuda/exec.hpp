#pragma once
// The exec::cuda tag: where a call of the fused CUDA backend runs (docs/design.md section 5). Kept
// apart from sinkmoe/exec.hpp so that host-only builds never need the CUDA runtime headers.

#include <sinkmoe/core/config.hpp>

#if !SINKMOE_HAS_CUDA
#error "sinkmoe/cuda/exec.hpp needs the CUDA runtime headers (nvcc, or define SINKMOE_HAS_CUDA=1)"
#endif

#include <cuda_runtime_api.h>

namespace sinkmoe::exec {

/// The fused CUDA backend: kernels are enqueued on `stream` (null: the default stream). Calls
/// return without synchronising, except where a function says otherwise.
struct cuda {
  cudaStream_t stream = nullptr;
};

}  // namespace sinkmoe::exec
