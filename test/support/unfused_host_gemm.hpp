// A host stand-in for cuBLASLt in the tests of the unfused attention path: executes a
// sinkmoe::unfused::gemm_desc with plain loops (fp32 products summed in order over k, D rounded
// once to its type), after blaslt::validate and checks of its own (non-positive sizes, null
// operands, ld below the stored row length) so that an algorithm bug surfaces here too.
// Needs the primitive layer's storage types: include after sinkmoe/cuda/arch/emulation.hpp.
#pragma once

#include <cstdint>
#include <sinkmoe/core/error.hpp>
#include <sinkmoe/cuda/arch/float16.hpp>
#include <sinkmoe/cuda/unfused/gemm.hpp>
#include <vector>

namespace sinkmoe::testing {

/// unfused::gemm_desc on the host (file comment). Counts calls and multiply-adds.
struct host_gemm {
  std::uint64_t calls = 0;
  std::uint64_t multiply_adds = 0;

  static float load(const void* base, unfused::element_kind kind, std::int64_t i) {
    switch (kind) {
      case unfused::element_kind::f32:
        return static_cast<const float*>(base)[i];
      case unfused::element_kind::bf16:
        return arch::to_float(static_cast<const arch::bf16*>(base)[i]);
      case unfused::element_kind::f16:
        return arch::to_float(static_cast<const arch::fp16*>(base)[i]);
    }
    return 0.0f;
  }
  static void store(void* base, unfused::element_kind kind, std::int64_t i, float x) {
    switch (kind) {
      case unfused::element_kind::f32:
        static_cast<float*>(base)[i] = x;
        return;
      case unfused::element_kind::bf16:
        static_cast<arch::bf16*>(base)[i] = arch::from_float<arch::bf16>(x);
        return;
      case unfused::element_kind::f16:
        static_cast<arch::fp16*>(base)[i] = arch::from_float<arch::fp16>(x);
        return;
    }
  }

  void gemm(const unfused::gemm_desc& g) {
    using detail::require;
    blaslt::validate(g);  // what the cuBLASLt provider checks first
    require(g.epi == blaslt::epilogue::none, "host_gemm: no epilogue expected");
    require(g.m > 0 && g.n > 0 && g.k > 0 && g.batch > 0, "host_gemm: m, n, k, batch = ", g.m, ", ",
            g.n, ", ", g.k, ", ", g.batch, ": every size must be > 0");
    require(g.a != nullptr && g.b != nullptr && g.d != nullptr, "host_gemm: null operand");
    require(g.beta == 0.0f || g.c != nullptr, "host_gemm: beta != 0 without C");
    const unfused::stored_extent sa = unfused::stored_a(g), sb = unfused::stored_b(g);
    require(
        g.lda >= sa.cols && g.ldb >= sb.cols && g.ldd >= g.n && (g.beta == 0.0f || g.ldc >= g.n),
        "host_gemm: ld below the row length: lda ", g.lda, " (", sa.cols, "), ldb ", g.ldb, " (",
        sb.cols, "), ldd ", g.ldd, " (", g.n, ")");
    ++calls;
    std::vector<float> a(static_cast<std::size_t>(g.m) * g.k),
        b(static_cast<std::size_t>(g.k) * g.n);
    for (int batch = 0; batch < g.batch; ++batch) {
      const std::int64_t a0 = batch * g.batch_stride_a, b0 = batch * g.batch_stride_b;
      // op(A) as [m][k] and op(B) as [n][k] (k contiguous for the inner loop).
      for (int i = 0; i < g.m; ++i)
        for (int p = 0; p < g.k; ++p)
          a[std::size_t(i) * g.k + p] =
              load(g.a, g.a_type, a0 + (g.transpose_a ? p * g.lda + i : i * g.lda + p));
      for (int j = 0; j < g.n; ++j)
        for (int p = 0; p < g.k; ++p)
          b[std::size_t(j) * g.k + p] =
              load(g.b, g.b_type, b0 + (g.transpose_b ? j * g.ldb + p : p * g.ldb + j));
      for (int i = 0; i < g.m; ++i) {
        for (int j = 0; j < g.n; ++j) {
          float acc = 0.0f;
          const float* ar = &a[std::size_t(i) * g.k];
          const float* br = &b[std::size_t(j) * g.k];
          for (int p = 0; p < g.k; ++p) acc += ar[p] * br[p];
          float value = g.alpha * acc;
          if (g.beta != 0.0f)
            value += g.beta * load(g.c, g.d_type, batch * g.batch_stride_c + i * g.ldc + j);
          store(g.d, g.d_type, batch * g.batch_stride_d + i * g.ldd + j, value);
        }
      }
      multiply_adds += static_cast<std::uint64_t>(g.m) * g.n * g.k;
    }
  }
};

}  // namespace sinkmoe::testing
