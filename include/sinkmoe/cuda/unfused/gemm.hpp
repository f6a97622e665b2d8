#pragma once
// The GEMM the unfused attention path asks for (docs/design.md section 5), as a plain description
// that compiles without the CUDA toolkit: the algorithm (unfused/algorithm.hpp) is written once
// against it, and a provider executes it -- blaslt::context (cuBLASLt) on the GPU
// (unfused/unfused.cuh), plain loops in the tests (test/support/unfused_host_gemm.hpp).
//
// Semantics (those of blaslt::matmul_desc): for each batch b,
//   D[b] = alpha * op(A[b]) * op(B[b]) + beta * C[b]
// all ROW-MAJOR with ld = row stride in elements; matrix b sits at pointer + b * batch_stride;
// op(A) is m x k (A is stored k x m when transpose_a), op(B) is k x n (stored n x k when
// transpose_b), D is m x n. fp32 compute; D is rounded once to d_type. The algorithm never
// issues a GEMM with m, n, k or batch equal to 0.

#include <sinkmoe/cuda/blaslt/desc.hpp>

namespace sinkmoe::unfused {

/// Element types of GEMM operands.
using element_kind = blaslt::dtype;

/// One strided-batched GEMM (header comment): cuBLASLt's row-major description itself, which is
/// host-only C++ (blaslt/desc.hpp), so that the host provider validates exactly what the GPU
/// provider would be given. The algorithm uses no epilogue.
using gemm_desc = blaslt::matmul_desc;

/// Rows and columns of the stored A and B of a description (before op()).
struct stored_extent {
  int rows, cols;
};
inline stored_extent stored_a(const gemm_desc& g) {
  return g.transpose_a ? stored_extent{g.k, g.m} : stored_extent{g.m, g.k};
}
inline stored_extent stored_b(const gemm_desc& g) {
  return g.transpose_b ? stored_extent{g.n, g.k} : stored_extent{g.k, g.n};
}

}  // namespace sinkmoe::unfused
