#pragma once
// Register-blocked tile products and a vectorisable exp for the CPU backend. Tiles are small,
// fixed-size, zero-padded row-major buffers, so the compiler can keep the accumulators in
// vector registers (build with -O3 -march=native, or at least -mavx2 -mfma, for speed).

#include <bit>
#include <cstdint>
#include <sinkmoe/core/numeric.hpp>

namespace sinkmoe::host::detail {

inline constexpr int k_row_block = 4;   // rows per register block
inline constexpr int k_col_block = 16;  // columns per register block (two AVX2 float vectors)

/// Rounds a head dimension up to a multiple of the column block (tile buffers are padded).
constexpr int padded_dim(int d) { return (d + k_col_block - 1) / k_col_block * k_col_block; }

/// C[M][N] = A[M][ld] * Bt[ld][N] over the first `depth` columns of A (B stored transposed).
// Not inlined: one copy per tile shape serves every policy instantiation (compile time), and
// a call per tile costs nothing next to the tile's M*N*depth multiply-adds.
template <int M, int N, class F>
[[gnu::noinline]] void tile_matmul_bt(const F* a, int ld, const F* bt, int depth, F* c) {
  static_assert(M % k_row_block == 0 && N % k_col_block == 0);
  for (int i0 = 0; i0 < M; i0 += k_row_block) {
    for (int j0 = 0; j0 < N; j0 += k_col_block) {
      F acc[k_row_block][k_col_block] = {};
      for (int c0 = 0; c0 < depth; ++c0) {
        const F* b_row = bt + c0 * N + j0;
        for (int r = 0; r < k_row_block; ++r) {
          const F a_value = a[(i0 + r) * ld + c0];
#pragma omp simd
          for (int j = 0; j < k_col_block; ++j) acc[r][j] += a_value * b_row[j];
        }
      }
      for (int r = 0; r < k_row_block; ++r)
        for (int j = 0; j < k_col_block; ++j) c[(i0 + r) * N + j0 + j] = acc[r][j];
    }
  }
}

/// C[M][ld] += A[M][N] * B[N][ld] over the first `width` (a multiple of the column block)
/// columns of B and C.
template <int M, int N, class F>
[[gnu::noinline]] void tile_matmul_acc(const F* a, const F* b, int ld, int width, F* c) {
  static_assert(M % k_row_block == 0);
  for (int i0 = 0; i0 < M; i0 += k_row_block) {
    for (int c0 = 0; c0 < width; c0 += k_col_block) {
      F acc[k_row_block][k_col_block];
      for (int r = 0; r < k_row_block; ++r)
        for (int j = 0; j < k_col_block; ++j) acc[r][j] = c[(i0 + r) * ld + c0 + j];
      for (int n = 0; n < N; ++n) {
        const F* b_row = b + n * ld + c0;
        for (int r = 0; r < k_row_block; ++r) {
          const F a_value = a[(i0 + r) * N + n];
#pragma omp simd
          for (int j = 0; j < k_col_block; ++j) acc[r][j] += a_value * b_row[j];
        }
      }
      for (int r = 0; r < k_row_block; ++r)
        for (int j = 0; j < k_col_block; ++j) c[(i0 + r) * ld + c0 + j] = acc[r][j];
    }
  }
}

/// Out[N][M] = In[M][N].
template <int M, int N, class F>
inline void tile_transpose(const F* in, F* out) {
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) out[j * M + i] = in[i * N + j];
}

/// exp for float that the compiler vectorises: Cephes' polynomial after reduction by ln 2,
/// about 1 ulp; returns exactly 0 below -87 (so -inf and masked logits give 0, never NaN).
inline float exp_vectorizable(float x) {
  const float clamped = math::min(math::max(x, -87.0f), 88.0f);
  const float n = __builtin_floorf(clamped * 1.44269504088896341f + 0.5f);
  float r = clamped - n * 0.693359375f;
  r -= n * -2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  const float scale = std::bit_cast<float>((static_cast<std::int32_t>(n) + 127) << 23);
  return x < -87.0f ? 0.0f : p * scale;
}

/// out[j] = exp(in[j] - shift) for a row; float uses the vectorisable exp, double std::exp.
template <class F>
inline void exp_row(const F* in, F shift, int n, F* out) {
  if constexpr (std::is_same_v<F, float>) {
#pragma omp simd
    for (int j = 0; j < n; ++j) out[j] = exp_vectorizable(in[j] - shift);
  } else {
    for (int j = 0; j < n; ++j) out[j] = math::exp_shifted(in[j], shift);
  }
}

}  // namespace sinkmoe::host::detail
