#pragma once
// cuBLAS / cuBLASLt status codes as sinkmoe::error: SINKMOE_CUBLAS_CHECK(call, shapes) throws
// with the call's text, the status name and the shapes of the GEMM. Needs only the toolkit's
// headers (any C++ compiler with the CUDA include directory; link nothing for this header).

#include <cublasLt.h>

#include <sinkmoe/core/error.hpp>
#include <string>
#include <string_view>

namespace sinkmoe::blaslt {

/// The enumerator's name, e.g. "CUBLAS_STATUS_NOT_SUPPORTED" (cublasGetStatusName lives in
/// libcublas, which cuBLASLt users need not link).
constexpr std::string_view status_name(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR:
      return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR:
      return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return "unknown cublasStatus_t";
}

namespace detail {

/// Throws sinkmoe::error for a failed cuBLAS(Lt) call: its text, the status name and number,
/// the shapes it was given, and where.
inline void check_cublas_status(cublasStatus_t status, const char* call, std::string_view shapes,
                                const char* file, int line) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  throw error(sinkmoe::detail::concat("cuBLASLt call ", call, " failed: ", status_name(status),
                                      " (", static_cast<int>(status), ") for ", shapes, " at ",
                                      file, ":", line));
}

}  // namespace detail
}  // namespace sinkmoe::blaslt

/// Evaluates a cublasStatus_t expression; unless it is CUBLAS_STATUS_SUCCESS, throws
/// sinkmoe::error naming the call, the status and `shapes` (anything convertible to
/// std::string_view, e.g. blaslt::describe(desc)).
#define SINKMOE_CUBLAS_CHECK(call, shapes) \
  ::sinkmoe::blaslt::detail::check_cublas_status((call), #call, (shapes), __FILE__, __LINE__)
