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

// SINKMOE_HOST_VECTOR_EXT: GCC/Clang vector extensions on an AVX target (-mavx2 -mfma or
// -march=native). The float paths below are then written 8 lanes at a time, so no
// auto-vectoriser decision can leave them scalar; other builds use the generic loops.
#if defined(__GNUC__) && defined(__AVX__) && !defined(SINKMOE_NO_VECTOR_EXT)
#define SINKMOE_HOST_VECTOR_EXT 1
typedef float v8f __attribute__((vector_size(32)));
typedef std::int32_t v8i __attribute__((vector_size(32)));
/// Unaligned loads and stores of a vector V (v8f here, v16f on AVX-512).
template <class V>
inline V load_vec(const float* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
template <class V>
inline void store_vec(float* p, V v) {
  __builtin_memcpy(p, &v, sizeof v);
}
inline v8f load8(const float* p) { return load_vec<v8f>(p); }
inline void store8(float* p, v8f v) { store_vec(p, v); }

/// C[R][16] (= or +=) A[R][k] * B[k][16] (row stride ldb): 2R accumulators. A's element (r, kk)
/// is a[r * a_row + kk * a_col]: (lda, 1) for A stored by rows, (1, lda) for A stored transposed.
template <int R, bool Accumulate>
inline void gemm_micro_f32(const float* a, int a_row, int a_col, const float* b, int ldb, int k,
                           float* c, int ldc) {
  v8f c0[R], c1[R];
  for (int r = 0; r < R; ++r) {
    if constexpr (Accumulate) {
      c0[r] = load8(c + r * ldc);
      c1[r] = load8(c + r * ldc + 8);
    } else {
      c0[r] = v8f{};
      c1[r] = v8f{};
    }
  }
  for (int kk = 0; kk < k; ++kk) {
    v8f b0 = load8(b + kk * ldb), b1 = load8(b + kk * ldb + 8);
    // Keeps B in registers: GCC otherwise re-reads it as a memory operand of every FMA, and the
    // kernel becomes load-bound.
    asm("" : "+x"(b0), "+x"(b1));
    for (int r = 0; r < R; ++r) {
      const float as = a[r * a_row + kk * a_col];
      const v8f av = {as, as, as, as, as, as, as, as};
      c0[r] += av * b0;
      c1[r] += av * b1;
    }
  }
  for (int r = 0; r < R; ++r) {
    store8(c + r * ldc, c0[r]);
    store8(c + r * ldc + 8, c1[r]);
  }
}

// SINKMOE_HOST_AVX512: 16-lane vectors on an AVX-512 target (-mavx512f or -march=native on such
// a machine): a register block of 8 rows x 32 columns keeps 16 zmm accumulators, 2 for B and one
// broadcast of 32 registers (the AVX2 block holds 8 of 16). Each C element still sums its k
// products in the same order with the same FMAs, so results are bitwise those of the AVX2 and
// generic paths. SINKMOE_NO_AVX512 keeps the AVX2 path (tests build both).
#if defined(__AVX512F__) && !defined(SINKMOE_NO_AVX512)
#define SINKMOE_HOST_AVX512 1
typedef float v16f __attribute__((vector_size(64)));
typedef std::int32_t v16i __attribute__((vector_size(64)));
inline v16f load16(const float* p) { return load_vec<v16f>(p); }
inline void store16(float* p, v16f v) { store_vec(p, v); }

/// C[R][16 * Vectors] (= or +=) A[R][k] * B[k][16 * Vectors]: R * Vectors zmm accumulators.
template <int R, int Vectors, bool Accumulate>
inline void gemm_micro_f32_512(const float* a, int a_row, int a_col, const float* b, int ldb,
                               int k, float* c, int ldc) {
  v16f acc[R][Vectors];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < Vectors; ++v)
      acc[r][v] = Accumulate ? load16(c + r * ldc + 16 * v) : v16f{};
  for (int kk = 0; kk < k; ++kk) {
    v16f bv[Vectors];
    for (int v = 0; v < Vectors; ++v) {
      bv[v] = load16(b + kk * ldb + 16 * v);
      asm("" : "+v"(bv[v]));  // keep B in registers (see gemm_micro_f32)
    }
    for (int r = 0; r < R; ++r) {
      const v16f av = v16f{} + a[r * a_row + kk * a_col];
      for (int v = 0; v < Vectors; ++v) acc[r][v] += av * bv[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < Vectors; ++v) store16(c + r * ldc + 16 * v, acc[r][v]);
}
#else
#define SINKMOE_HOST_AVX512 0
#endif

/// C[M][n] (= or +=) A[M][k] * B[k][n], n a multiple of 16, A's element (i, kk) at
/// a[i * a_row + kk * a_col]: 8 x 32 blocks (and an 8 x 16 tail) on AVX-512, else 4 x 16 blocks.
template <int M, bool Accumulate>
inline void gemm_f32(const float* a, int a_row, int a_col, const float* b, int ldb, int k,
                     float* c, int ldc, int n) {
  static_assert(M % k_row_block == 0);
#if SINKMOE_HOST_AVX512
  if constexpr (M % 8 == 0) {
    int j0 = 0;
    for (; j0 + 32 <= n; j0 += 32)
      for (int i0 = 0; i0 < M; i0 += 8)
        gemm_micro_f32_512<8, 2, Accumulate>(a + i0 * a_row, a_row, a_col, b + j0, ldb, k,
                                             c + i0 * ldc + j0, ldc);
    for (; j0 < n; j0 += 16)
      for (int i0 = 0; i0 < M; i0 += 8)
        gemm_micro_f32_512<8, 1, Accumulate>(a + i0 * a_row, a_row, a_col, b + j0, ldb, k,
                                             c + i0 * ldc + j0, ldc);
    return;
  }
#endif
  for (int j0 = 0; j0 < n; j0 += k_col_block)
    for (int i0 = 0; i0 < M; i0 += k_row_block)
      gemm_micro_f32<k_row_block, Accumulate>(a + i0 * a_row, a_row, a_col, b + j0, ldb, k,
                                              c + i0 * ldc + j0, ldc);
}
#else
#define SINKMOE_HOST_VECTOR_EXT 0
#define SINKMOE_HOST_AVX512 0
#endif

/// C[M][n] (= or +=) A[M][k] * B[k][n] (A's element (i, kk) at a[i * a_row + kk * a_col]; row
/// strides ldb, ldc; n a multiple of the column block), in k_row_block x k_col_block register
/// blocks. Float on an AVX target takes the hand-vectorised path; everything else (double, other
/// targets) these generic loops. Every C element sums its k products in ascending kk order, on
/// every path and for either layout of A.
template <int M, bool Accumulate, class F>
inline void gemm_tile(const F* a, int a_row, int a_col, const F* b, int ldb, int k, F* c, int ldc,
                      int n) {
  static_assert(M % k_row_block == 0);
#if SINKMOE_HOST_VECTOR_EXT
  if constexpr (std::is_same_v<F, float>) {
    gemm_f32<M, Accumulate>(a, a_row, a_col, b, ldb, k, c, ldc, n);
    return;
  }
#endif
  for (int i0 = 0; i0 < M; i0 += k_row_block) {
    for (int j0 = 0; j0 < n; j0 += k_col_block) {
      F acc[k_row_block][k_col_block] = {};
      if constexpr (Accumulate)
        for (int r = 0; r < k_row_block; ++r)
          for (int j = 0; j < k_col_block; ++j) acc[r][j] = c[(i0 + r) * ldc + j0 + j];
      for (int kk = 0; kk < k; ++kk) {
        const F* b_row = b + kk * ldb + j0;
        for (int r = 0; r < k_row_block; ++r) {
          const F a_value = a[(i0 + r) * a_row + kk * a_col];
          SINKMOE_OMP_SIMD()
          for (int j = 0; j < k_col_block; ++j) acc[r][j] += a_value * b_row[j];
        }
      }
      for (int r = 0; r < k_row_block; ++r)
        for (int j = 0; j < k_col_block; ++j) c[(i0 + r) * ldc + j0 + j] = acc[r][j];
    }
  }
}

// The two tile products below are not inlined: one copy per tile shape serves every policy
// instantiation (compile time), and a call per tile costs nothing next to its multiply-adds.

/// C[M][N] = A[M][ld] * Bt[ld][N] over the first `depth` columns of A (B stored transposed).
template <int M, int N, class F>
[[gnu::noinline]] void tile_matmul_bt(const F* a, int ld, const F* bt, int depth, F* c) {
  static_assert(N % k_col_block == 0);
  gemm_tile<M, false>(a, ld, 1, bt, N, depth, c, N, N);
}

/// C[M][ld] += A[M][N] * B[N][ld] over the first `width` (a multiple of the column block)
/// columns of B and C.
template <int M, int N, class F>
[[gnu::noinline]] void tile_matmul_acc(const F* a, const F* b, int ld, int width, F* c) {
  gemm_tile<M, true>(a, N, 1, b, ld, N, c, ld, width);
}

/// C[M][ld] += At^T * B[N][ld] for At stored [N][M] (so no transpose is written), over the first
/// `width` columns: the backward's dV += P^T dO and dK += dS^T Q.
template <int M, int N, class F>
[[gnu::noinline]] void tile_matmul_at_acc(const F* at, const F* b, int ld, int width, F* c) {
  gemm_tile<M, true>(at, 1, M, b, ld, N, c, ld, width);
}

/// exp for float that the compiler vectorises (math::exp_poly: Cephes' polynomial, about 1 ulp,
/// exactly 0 below -87).
inline float exp_vectorizable(float x) { return math::exp_poly(x); }

#if SINKMOE_HOST_VECTOR_EXT
/// exp_vectorizable on every lane of a V (8 or 16 floats) with lanes of I, written lane-parallel
/// (see SINKMOE_HOST_VECTOR_EXT): the same operations per lane as the scalar version.
template <class V, class I>
inline V exp_lanes(V x) {
  const V lo = V{} - 87.0f, hi = V{} + 88.0f;
  V clamped = x < lo ? lo : x;
  clamped = clamped > hi ? hi : clamped;
  V n;
  const V p = math::exp_poly_core(clamped, n);
  const I bits = (__builtin_convertvector(n, I) + 127) << 23;
  const V result = p * std::bit_cast<V>(bits);
  return x < lo ? V{} : result;
}
inline v8f exp8(v8f x) { return exp_lanes<v8f, v8i>(x); }
#endif

/// out[j] = exp(in[j] - shift) for a row; float uses the vectorisable exp, double std::exp.
template <class F>
inline void exp_row(const F* in, F shift, int n, F* out) {
  if constexpr (std::is_same_v<F, float>) {
    int j = 0;
#if SINKMOE_HOST_AVX512
    for (; j + 16 <= n; j += 16) store16(out + j, exp_lanes<v16f, v16i>(load16(in + j) - shift));
#endif
#if SINKMOE_HOST_VECTOR_EXT
    for (; j + 8 <= n; j += 8) store8(out + j, exp8(load8(in + j) - shift));
#endif
    for (; j < n; ++j) out[j] = exp_vectorizable(in[j] - shift);
  } else {
    for (int j = 0; j < n; ++j) out[j] = math::exp_shifted(in[j], shift);
  }
}

}  // namespace sinkmoe::host::detail
