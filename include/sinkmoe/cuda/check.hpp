#pragma once
// The one checking macro of the CUDA backend (docs/design.md section 10): every CUDA runtime call
// goes through SINKMOE_CUDA_CHECK, which throws sinkmoe::error naming the call on failure.

#include <sinkmoe/core/config.hpp>
#include <sinkmoe/core/error.hpp>

#if !SINKMOE_HAS_CUDA
#error "sinkmoe/cuda/check.hpp needs the CUDA runtime headers (nvcc, or define SINKMOE_HAS_CUDA=1)"
#endif

#include <cuda_runtime_api.h>

namespace sinkmoe::detail {

/// Throws sinkmoe::error for a failed CUDA call: the call's text, the error's name and
/// description, and where.
inline void check_cuda_status(cudaError_t status, const char* call, const char* file, int line) {
  if (status == cudaSuccess) return;
  throw error(concat("CUDA call ", call, " failed: ", cudaGetErrorName(status), " (",
                     cudaGetErrorString(status), ") at ", file, ":", line));
}

}  // namespace sinkmoe::detail

/// Evaluates a cudaError_t expression; throws sinkmoe::error naming it unless it is cudaSuccess.
#define SINKMOE_CUDA_CHECK(call) \
  ::sinkmoe::detail::check_cuda_status((call), #call, __FILE__, __LINE__)
