#pragma once
// The CPU backend's inner loops: register-blocked tile products and the row operations of the
// online softmax (max, exp and sum, scale), on the widest vectors the build targets. Tiles are
// small, fixed-size, zero-padded row-major buffers whose widths are multiples of 16, so every
// loop here runs on whole vectors (build with -O3 -march=native, or at least -mavx2 -mfma).
//
// Three paths, chosen at compile time:
//  - AVX-512 (-mavx512f): 16-lane vectors; tile products in 6 x 64 register blocks (24 zmm
//    accumulators, 4 for a row of B, one broadcast: 29 of the 32 registers), 6 x 32 and 6 x 16
//    tails; SINKMOE_NO_AVX512 keeps the AVX2 path;
//  - AVX2 (-mavx2 -mfma): 8-lane vectors; 6 x 16 blocks (12 ymm accumulators of 16);
//  - generic: plain loops (double, and other targets).
// The float paths give bitwise identical results: every C element sums its k products in
// ascending k with one FMA each, and the row reductions sum 16 partial sums (element j into
// lane j mod 16) by the same fixed tree whatever the vector width.

#include <bit>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <cstdint>
#include <sinkmoe/core/numeric.hpp>
#include <type_traits>

namespace sinkmoe::host::detail {

inline constexpr int k_col_block = 16;  ///< tile widths are multiples of this
inline constexpr int k_row_block = 6;   ///< rows per register block of the float paths

/// Rounds a head dimension up to a multiple of the column block (tile buffers are padded).
constexpr int padded_dim(int d) { return (d + k_col_block - 1) / k_col_block * k_col_block; }

// SINKMOE_HOST_VECTOR_EXT: GCC/Clang vector extensions on an AVX target. The float paths are
// then written a vector at a time, so no auto-vectoriser decision (GCC prefers 256-bit vectors
// even on AVX-512 machines) can leave them narrow or scalar.
#if defined(__GNUC__) && defined(__AVX__) && !defined(SINKMOE_NO_VECTOR_EXT)
#define SINKMOE_HOST_VECTOR_EXT 1
#if defined(__AVX512F__) && !defined(SINKMOE_NO_AVX512)
#define SINKMOE_HOST_AVX512 1
#else
#define SINKMOE_HOST_AVX512 0
#endif
typedef float v8f __attribute__((vector_size(32)));
typedef std::int32_t v8i __attribute__((vector_size(32)));
typedef float v16f __attribute__((vector_size(64)));
typedef std::int32_t v16i __attribute__((vector_size(64)));

/// Unaligned loads and stores of a vector V.
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
inline v16f load16(const float* p) { return load_vec<v16f>(p); }
inline void store16(float* p, v16f v) { store_vec(p, v); }

/// *p in every lane. The brace form compiles to vbroadcastss from memory, a load-port uop;
/// `V{} + x` adds and shuffles on the ports the FMAs need (it halved the AVX-512 kernel's rate).
template <class V>
inline V splat(const float* p) {
  const float x = *p;
  if constexpr (sizeof(V) == 64)
    return V{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
  else
    return V{x, x, x, x, x, x, x, x};
}

/// C[R][W * NV] (= or +=) A[R][k] * B[k][W * NV], W the lanes of V: R * NV accumulators in
/// registers. A's element (r, kk) is a[r * a_row + kk * a_col]: (lda, 1) for A stored by rows,
/// (1, lda) for A stored transposed.
template <class V, int R, int NV, bool Accumulate>
inline void gemm_micro(const float* a, int a_row, int a_col, const float* b, int ldb, int k,
                       float* c, int ldc) {
  constexpr int W = sizeof(V) / sizeof(float);
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = Accumulate ? load_vec<V>(c + r * ldc + W * v) : V{};
  for (int kk = 0; kk < k; ++kk) {
    V bv[NV];
    for (int v = 0; v < NV; ++v) {
      bv[v] = load_vec<V>(b + kk * ldb + W * v);
      // Keeps B in registers: GCC otherwise re-reads it as a memory operand of every FMA, and
      // the kernel becomes load-bound.
      asm("" : "+v"(bv[v]));
    }
    for (int r = 0; r < R; ++r) {
      const V av = splat<V>(a + r * a_row + kk * a_col);
      for (int v = 0; v < NV; ++v) acc[r][v] += av * bv[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) store_vec(c + r * ldc + W * v, acc[r][v]);
}

/// Columns [j0, j0 + W * NV) of C for all M rows: full k_row_block blocks, then the M mod 6 rest.
template <class V, int M, int NV, bool Accumulate>
inline void gemm_panel(const float* a, int a_row, int a_col, const float* b, int ldb, int k,
                       float* c, int ldc) {
  constexpr int R = k_row_block, full = M / R * R;
  for (int i0 = 0; i0 < full; i0 += R)
    gemm_micro<V, R, NV, Accumulate>(a + i0 * a_row, a_row, a_col, b, ldb, k, c + i0 * ldc, ldc);
  if constexpr (M % R != 0)
    gemm_micro<V, M % R, NV, Accumulate>(a + full * a_row, a_row, a_col, b, ldb, k, c + full * ldc,
                                         ldc);
}

/// C[M][n] (= or +=) A[M][k] * B[k][n], n a multiple of 16: 64-column panels (AVX-512) with 32-
/// and 16-column tails, or 16-column panels (AVX2). Panels outer, so a panel of B stays in L1
/// while the row blocks of A stream past it.
template <int M, bool Accumulate>
inline void gemm_f32(const float* a, int a_row, int a_col, const float* b, int ldb, int k, float* c,
                     int ldc, int n) {
  int j0 = 0;
#if SINKMOE_HOST_AVX512
  for (; j0 + 64 <= n; j0 += 64)
    gemm_panel<v16f, M, 4, Accumulate>(a, a_row, a_col, b + j0, ldb, k, c + j0, ldc);
  if (j0 + 32 <= n) {
    gemm_panel<v16f, M, 2, Accumulate>(a, a_row, a_col, b + j0, ldb, k, c + j0, ldc);
    j0 += 32;
  }
  if (j0 < n) gemm_panel<v16f, M, 1, Accumulate>(a, a_row, a_col, b + j0, ldb, k, c + j0, ldc);
#else
  for (; j0 < n; j0 += 16)
    gemm_panel<v8f, M, 2, Accumulate>(a, a_row, a_col, b + j0, ldb, k, c + j0, ldc);
#endif
}

/// Transposes a W x W block (W the lanes of V): dst[c * ld_dst + r] = src[r * ld_src + c] *
/// factor. log2(W) rounds of interleaving rows i and i + W/2 (each round rotates the bits of
/// (row, column) by one), so no element goes through memory on the way.
template <class V>
inline void transpose_block(const float* src, std::ptrdiff_t ld_src, float factor, float* dst,
                            std::ptrdiff_t ld_dst) {
  constexpr int W = sizeof(V) / sizeof(float);
  V rows[W], next[W];
  for (int r = 0; r < W; ++r) rows[r] = load_vec<V>(src + r * ld_src);
  for (int round = 1; round < W; round *= 2) {
    for (int i = 0; i < W / 2; ++i) {
      if constexpr (W == 16) {
        next[2 * i] = __builtin_shufflevector(rows[i], rows[i + 8], 0, 16, 1, 17, 2, 18, 3, 19, 4,
                                              20, 5, 21, 6, 22, 7, 23);
        next[2 * i + 1] = __builtin_shufflevector(rows[i], rows[i + 8], 8, 24, 9, 25, 10, 26, 11,
                                                  27, 12, 28, 13, 29, 14, 30, 15, 31);
      } else {
        next[2 * i] = __builtin_shufflevector(rows[i], rows[i + 4], 0, 8, 1, 9, 2, 10, 3, 11);
        next[2 * i + 1] = __builtin_shufflevector(rows[i], rows[i + 4], 4, 12, 5, 13, 6, 14, 7, 15);
      }
    }
    for (int r = 0; r < W; ++r) rows[r] = next[r];
  }
  for (int c = 0; c < W; ++c) store_vec(dst + c * ld_dst, rows[c] * factor);
}
#else
#define SINKMOE_HOST_VECTOR_EXT 0
#define SINKMOE_HOST_AVX512 0
#endif

/// dst[c * ld_dst + r] = src[r * ld_src + c] * factor for r < rows, c < cols: vector blocks where
/// whole, element by element at the edges.
template <class F, class T>
inline void transpose_scaled(const T* src, std::ptrdiff_t ld_src, int rows, int cols, F factor,
                             F* dst, std::ptrdiff_t ld_dst) {
  int r0 = 0, c0 = 0;
#if SINKMOE_HOST_VECTOR_EXT
  if constexpr (std::is_same_v<F, float> && std::is_same_v<T, float>) {
    using V = std::conditional_t<SINKMOE_HOST_AVX512 == 1, v16f, v8f>;
    constexpr int W = sizeof(V) / sizeof(float);
    const int full_rows = rows / W * W, full_cols = cols / W * W;
    for (int r = 0; r < full_rows; r += W)
      for (int c = 0; c < full_cols; c += W)
        transpose_block<V>(src + r * ld_src + c, ld_src, factor, dst + c * ld_dst + r, ld_dst);
    r0 = full_rows;
    c0 = full_cols;
    // The right edge of the full row blocks; the bottom edge below covers the rest.
    for (int c = c0; c < cols; ++c)
      for (int r = 0; r < r0; ++r) dst[c * ld_dst + r] = src[r * ld_src + c] * factor;
  }
#endif
  (void)c0;
  for (int c = 0; c < cols; ++c)
    for (int r = r0; r < rows; ++r) dst[c * ld_dst + r] = to_accum<F>(src[r * ld_src + c]) * factor;
}

/// C[M][n] (= or +=) A[M][k] * B[k][n] (A's element (i, kk) at a[i * a_row + kk * a_col]; row
/// strides ldb, ldc; n a multiple of 16). Float on an AVX target takes the vector path;
/// everything else (double, other targets) these loops. Every C element sums its k products in
/// ascending kk order, on every path and for either layout of A.
template <int M, bool Accumulate, class F>
inline void gemm_tile(const F* a, int a_row, int a_col, const F* b, int ldb, int k, F* c, int ldc,
                      int n) {
#if SINKMOE_HOST_VECTOR_EXT
  if constexpr (std::is_same_v<F, float>) {
    gemm_f32<M, Accumulate>(a, a_row, a_col, b, ldb, k, c, ldc, n);
    return;
  }
#endif
  constexpr int RB = 4;
  static_assert(M % RB == 0);
  for (int i0 = 0; i0 < M; i0 += RB) {
    for (int j0 = 0; j0 < n; j0 += k_col_block) {
      F acc[RB][k_col_block] = {};
      if constexpr (Accumulate)
        for (int r = 0; r < RB; ++r)
          for (int j = 0; j < k_col_block; ++j) acc[r][j] = c[(i0 + r) * ldc + j0 + j];
      for (int kk = 0; kk < k; ++kk) {
        const F* b_row = b + kk * ldb + j0;
        for (int r = 0; r < RB; ++r) {
          const F a_value = a[(i0 + r) * a_row + kk * a_col];
          SINKMOE_OMP_SIMD()
          for (int j = 0; j < k_col_block; ++j) acc[r][j] += a_value * b_row[j];
        }
      }
      for (int r = 0; r < RB; ++r)
        for (int j = 0; j < k_col_block; ++j) c[(i0 + r) * ldc + j0 + j] = acc[r][j];
    }
  }
}

/// Where a mask cuts a pair of tiles, [BK keys] x [BQ queries]: per key row, the query columns
/// [query_lo, query_hi) (multiples of 16) that see it; per query row, the keys [key_lo, key_hi) of
/// its hull. Products over a cut tile skip the rest, whose terms are exactly zero (host/forward.hpp
/// measures it from the mask).
template <int BK, int BQ>
struct tile_cut {
  int query_lo[BK], query_hi[BK], key_lo[BQ], key_hi[BQ];
};

/// gemm_tile over part of C: the block of rows [i0, i1) (the register block, path-dependent)
/// computes only the columns [min col_lo, max col_hi) of its rows, and sums only the depth terms
/// [min k_lo, max k_hi) of its rows (the caller guarantees the others are zero); a null pair
/// means every column, or all k terms. Columns a block skips are set to `fill` when not
/// accumulating and left as they are otherwise. Every computed element sums its products in
/// ascending k, as gemm_tile does, so the terms it keeps give the same bits. Column bounds are
/// multiples of 16; a row with an empty range needs nothing.
template <int M, bool Accumulate, class F>
inline void gemm_tile_ranged(const F* a, int a_row, int a_col, const F* b, int ldb, int k, F* c,
                             int ldc, int n, const int* col_lo, const int* col_hi, const int* k_lo,
                             const int* k_hi, F fill) {
  auto block = [&](int i0, int i1, auto compute) {
    int c0 = n, c1 = 0, kb = k, ke = 0;
    for (int i = i0; i < i1; ++i) {
      const int lo = col_lo ? col_lo[i] : 0, hi = col_lo ? col_hi[i] : n;
      const int first = k_lo ? k_lo[i] : 0, last = k_lo ? k_hi[i] : k;
      if (lo < hi && first < last) {
        c0 = lo < c0 ? lo : c0;
        c1 = hi > c1 ? hi : c1;
        kb = first < kb ? first : kb;
        ke = last > ke ? last : ke;
      }
    }
    if (c0 >= c1) c0 = c1 = 0;
    if constexpr (!Accumulate)
      for (int i = i0; i < i1; ++i) {
        for (int j = 0; j < c0; ++j) c[i * ldc + j] = fill;
        for (int j = c1; j < n; ++j) c[i * ldc + j] = fill;
      }
    if (c0 < c1)
      compute(a + i0 * a_row + kb * a_col, b + kb * ldb + c0, ke - kb, c + i0 * ldc + c0, c1 - c0);
  };
#if SINKMOE_HOST_VECTOR_EXT
  if constexpr (std::is_same_v<F, float>) {
    constexpr int R = k_row_block, full = M / R * R;
    for (int i0 = 0; i0 < full; i0 += R)
      block(i0, i0 + R, [&](const float* ab, const float* bb, int kk, float* cb, int width) {
        gemm_f32<R, Accumulate>(ab, a_row, a_col, bb, ldb, kk, cb, ldc, width);
      });
    if constexpr (M % R != 0)
      block(full, M, [&](const float* ab, const float* bb, int kk, float* cb, int width) {
        gemm_f32<M % R, Accumulate>(ab, a_row, a_col, bb, ldb, kk, cb, ldc, width);
      });
    return;
  }
#endif
  constexpr int RB = 4;
  static_assert(M % RB == 0);
  for (int i0 = 0; i0 < M; i0 += RB)
    block(i0, i0 + RB, [&](const F* ab, const F* bb, int kk, F* cb, int width) {
      gemm_tile<RB, Accumulate>(ab, a_row, a_col, bb, ldb, kk, cb, ldc, width);
    });
}

// The tile products below are not inlined: one copy per tile shape serves every policy
// instantiation (compile time), and a call per tile costs nothing next to its multiply-adds.

/// C[M][N] = A[M][ld] * Bt[ld][N] over the first `depth` columns of A (B stored transposed).
/// With a cut (keys by rows), row i needs only the columns [query_lo[i], query_hi[i]); the
/// columns its register block skips are set to `fill`.
template <int M, int N, class F>
[[gnu::noinline]] void tile_matmul_bt(const F* a, int ld, const F* bt, int depth, F* c,
                                      const tile_cut<M, N>* cut = nullptr, F fill = F(0)) {
  static_assert(N % k_col_block == 0);
  if (cut == nullptr) return gemm_tile<M, false>(a, ld, 1, bt, N, depth, c, N, N);
  gemm_tile_ranged<M, false>(a, ld, 1, bt, N, depth, c, N, N, cut->query_lo, cut->query_hi, nullptr,
                             nullptr, fill);
}

/// C[M][ld] += A[M][N] * B[N][ld] over the first `width` (a multiple of the column block)
/// columns of B and C.
/// With a cut (keys by rows), row i sums only the terms [query_lo[i], query_hi[i]) (the others
/// are zero).
template <int M, int N, class F>
[[gnu::noinline]] void tile_matmul_acc(const F* a, const F* b, int ld, int width, F* c,
                                       const tile_cut<M, N>* cut = nullptr) {
  if (cut == nullptr) return gemm_tile<M, true>(a, N, 1, b, ld, N, c, ld, width);
  gemm_tile_ranged<M, true>(a, N, 1, b, ld, N, c, ld, width, nullptr, nullptr, cut->query_lo,
                            cut->query_hi, F(0));
}

/// C[M][ld] += At^T * B[N][ld] for At stored [N][M] (so no transpose is written), over the first
/// `width` columns: the backward's dV += P^T dO and dK += dS^T Q.
/// With a cut (queries by rows), row i sums only the keys [key_lo[i], key_hi[i]) (the others are
/// zero: probabilities of masked keys).
template <int M, int N, class F>
[[gnu::noinline]] void tile_matmul_at_acc(const F* at, const F* b, int ld, int width, F* c,
                                          const tile_cut<N, M>* cut = nullptr) {
  if (cut == nullptr) return gemm_tile<M, true>(at, 1, M, b, ld, N, c, ld, width);
  gemm_tile_ranged<M, true>(at, 1, M, b, ld, N, c, ld, width, nullptr, nullptr, cut->key_lo,
                            cut->key_hi, F(0));
}

/// exp for float as straight-line arithmetic (math::exp_poly: Cephes' polynomial, about 1 ulp,
/// exactly 0 below -87); double keeps the C library's.
inline float exp_fast(float x) { return math::exp_poly(x); }
inline double exp_fast(double x) { return math::exp(x); }

#if SINKMOE_HOST_VECTOR_EXT
/// exp_poly on every lane of a V (8 or 16 floats) with lanes of I: the same operations per lane
/// as the scalar version, so the same values.
template <class V, class I>
inline V exp_lanes(V x) {
  const V lo = V{} - 87.0f, hi = V{} + 88.0f;
  V clamped = x < lo ? lo : x;
  clamped = clamped > hi ? hi : clamped;
  V n;
  const V p = math::exp_poly_core(clamped, n);
#if SINKMOE_HOST_AVX512
  if constexpr (sizeof(V) == 64) {
    // p 2^n in one vscalefps (exact, as the multiply by the built power of two below), zero
    // where x < -87: three integer operations fewer in the softmax's inner loop.
    const __mmask16 keep = _mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ);
    return V(_mm512_maskz_scalef_ps(keep, __m512(p), __m512(n)));
  }
#endif
  const I bits = (__builtin_convertvector(n, I) + 127) << 23;
  const V result = p * std::bit_cast<V>(bits);
  return x < lo ? V{} : result;
}
#endif

/// Sixteen consecutive floats, one zmm (AVX-512) or two ymm (AVX2) or an array (generic), with
/// the lane-wise operations the row loops need. Reductions (sum, max) fold lanes j and j + 8,
/// then j + 4, j + 2, j + 1: the same tree on every path, so sums are bitwise path-independent.
struct lanes16 {
#if SINKMOE_HOST_AVX512
  v16f v;
  static lanes16 load(const float* p) { return {load16(p)}; }
  void store(float* p) const { store16(p, v); }
  static lanes16 splat(float x) { return {v16f{} + x}; }
  friend lanes16 operator+(lanes16 a, lanes16 b) { return {a.v + b.v}; }
  friend lanes16 operator-(lanes16 a, lanes16 b) { return {a.v - b.v}; }
  friend lanes16 operator*(lanes16 a, lanes16 b) { return {a.v * b.v}; }
  friend lanes16 max(lanes16 a, lanes16 b) { return {a.v > b.v ? a.v : b.v}; }
  friend lanes16 replace_neg_inf(lanes16 a, lanes16 by) {
    return {a.v == v16f{} - __builtin_huge_valf() ? by.v : a.v};
  }
  friend lanes16 exp(lanes16 a) { return {exp_lanes<v16f, v16i>(a.v)}; }
  v8f low() const { return __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7); }
  v8f high() const { return __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15); }
#elif SINKMOE_HOST_VECTOR_EXT
  v8f lo, hi;
  static lanes16 load(const float* p) { return {load8(p), load8(p + 8)}; }
  void store(float* p) const { store8(p, lo), store8(p + 8, hi); }
  static lanes16 splat(float x) { return {v8f{} + x, v8f{} + x}; }
  friend lanes16 operator+(lanes16 a, lanes16 b) { return {a.lo + b.lo, a.hi + b.hi}; }
  friend lanes16 operator-(lanes16 a, lanes16 b) { return {a.lo - b.lo, a.hi - b.hi}; }
  friend lanes16 operator*(lanes16 a, lanes16 b) { return {a.lo * b.lo, a.hi * b.hi}; }
  friend lanes16 max(lanes16 a, lanes16 b) {
    return {a.lo > b.lo ? a.lo : b.lo, a.hi > b.hi ? a.hi : b.hi};
  }
  friend lanes16 replace_neg_inf(lanes16 a, lanes16 by) {
    const v8f neg_inf = v8f{} - __builtin_huge_valf();
    return {a.lo == neg_inf ? by.lo : a.lo, a.hi == neg_inf ? by.hi : a.hi};
  }
  friend lanes16 exp(lanes16 a) { return {exp_lanes<v8f, v8i>(a.lo), exp_lanes<v8f, v8i>(a.hi)}; }
  v8f low() const { return lo; }
  v8f high() const { return hi; }
#else
  float v[16];
  static lanes16 load(const float* p) {
    lanes16 r;
    for (int j = 0; j < 16; ++j) r.v[j] = p[j];
    return r;
  }
  void store(float* p) const {
    for (int j = 0; j < 16; ++j) p[j] = v[j];
  }
  static lanes16 splat(float x) {
    lanes16 r;
    for (float& e : r.v) e = x;
    return r;
  }
  template <class Op>
  static lanes16 zip(const lanes16& a, const lanes16& b, Op op) {
    lanes16 r;
    for (int j = 0; j < 16; ++j) r.v[j] = op(a.v[j], b.v[j]);
    return r;
  }
  friend lanes16 operator+(lanes16 a, lanes16 b) {
    return zip(a, b, [](float x, float y) { return x + y; });
  }
  friend lanes16 operator-(lanes16 a, lanes16 b) {
    return zip(a, b, [](float x, float y) { return x - y; });
  }
  friend lanes16 operator*(lanes16 a, lanes16 b) {
    return zip(a, b, [](float x, float y) { return x * y; });
  }
  friend lanes16 max(lanes16 a, lanes16 b) {
    return zip(a, b, [](float x, float y) { return x > y ? x : y; });
  }
  friend lanes16 replace_neg_inf(lanes16 a, lanes16 by) {
    return zip(a, by, [](float x, float y) { return x == -__builtin_huge_valf() ? y : x; });
  }
  friend lanes16 exp(lanes16 a) {
    for (float& e : a.v) e = math::exp_poly(e);
    return a;
  }
#endif

  /// Sum of the 16 lanes by the fixed tree.
  float sum() const {
    return fold([](float x, float y) { return x + y; });
  }
  /// Largest lane (no NaN in the row loops: masked entries are -inf).
  float max_lane() const {
    return fold([](float x, float y) { return x > y ? x : y; });
  }

 private:
  template <class Op>
  float fold(Op op) const {
    float t[16];
    store(t);
    for (int width = 8; width >= 1; width /= 2)
      for (int j = 0; j < width; ++j) t[j] = op(t[j], t[j + width]);
    return t[0];
  }
};

// Row operations of the online softmax over n elements, n a multiple of 16. Float runs them on
// lanes16; double on plain loops with the same association (16 partial sums, fixed tree).

/// max_j x[j].
template <class F>
inline F row_max(const F* x, int n) {
  if constexpr (std::is_same_v<F, float>) {
    lanes16 m = lanes16::load(x);
    for (int j = 16; j < n; j += 16) m = max(m, lanes16::load(x + j));
    return m.max_lane();
  } else {
    F m = math::neg_inf<F>();
    for (int j = 0; j < n; ++j) m = x[j] > m ? x[j] : m;
    return m;
  }
}

/// Folds 16 partial sums by the lanes16 tree.
template <class F>
inline F fold16(F* t) {
  for (int width = 8; width >= 1; width /= 2)
    for (int j = 0; j < width; ++j) t[j] += t[j + width];
  return t[0];
}

/// sum_c x[c] y[c] over n elements (any n) of two rows of any element types, summed as F in 16
/// partial sums folded by fold16: vectorisable, where one running sum is a chain of n dependent
/// multiply-adds, and the same association on every path.
template <class F, class X, class Y>
inline F dot_row(const X* x, const Y* y, int n) {
  F part[16] = {};
  int c = 0;
  for (; c + 16 <= n; c += 16)
    for (int j = 0; j < 16; ++j) part[j] += to_accum<F>(x[c + j]) * to_accum<F>(y[c + j]);
  for (int j = 0; c + j < n; ++j) part[j] += to_accum<F>(x[c + j]) * to_accum<F>(y[c + j]);
  return fold16(part);
}

/// out[j] = exp(x[j] - shift) (0 where x[j] = -inf); returns sum_j out[j].
template <class F>
inline F exp_row_sum(const F* x, F shift, int n, F* out) {
  if constexpr (std::is_same_v<F, float>) {
    const lanes16 s = lanes16::splat(shift);
    lanes16 sum = lanes16::splat(0.0f);
    for (int j = 0; j < n; j += 16) {
      const lanes16 e = exp(lanes16::load(x + j) - s);
      e.store(out + j);
      sum = sum + e;
    }
    return sum.sum();
  } else {
    F part[16] = {};
    for (int j = 0; j < n; ++j) {
      out[j] = math::exp_shifted(x[j], shift);
      part[j % 16] += out[j];
    }
    return fold16(part);
  }
}

/// x[j] *= factor.
template <class F>
inline void scale_row(F* x, int n, F factor) {
  if constexpr (std::is_same_v<F, float>) {
    const lanes16 f = lanes16::splat(factor);
    for (int j = 0; j < n; j += 16) (lanes16::load(x + j) * f).store(x + j);
  } else {
    for (int j = 0; j < n; ++j) x[j] *= factor;
  }
}

/// out[j] = exp(x[j] - shift) for a row (0 where x[j] = -inf).
template <class F>
inline void exp_row(const F* in, F shift, int n, F* out) {
  if constexpr (std::is_same_v<F, float>) {
    const lanes16 s = lanes16::splat(shift);
    int j = 0;
    for (; j + 16 <= n; j += 16) exp(lanes16::load(in + j) - s).store(out + j);
    for (; j < n; ++j) out[j] = math::exp_poly(in[j] - shift);
  } else {
    for (int j = 0; j < n; ++j) out[j] = math::exp_shifted(in[j], shift);
  }
}

/// The online-softmax step of one key tile over a transposed score tile st[BK][BQ] (keys by
/// rows, queries by lanes): per query column i, new max m' = max(m_i, max_j st[j][i]), then
/// st[j][i] <- exp(st[j][i] - m') (P^T, in place), sum_i <- sum_i e^(m_i - m') + sum_j P^T[j][i],
/// and rescale[i] = e^(m_i - m') for the output accumulator. A column that has seen nothing yet
/// (m' = -inf) keeps P = 0 and sum = 0. Sums run over j in order in each lane: the same on every
/// path and for every vector width.
template <int BK, int BQ, class F>
void softmax_tile_columns(F* st, F* row_max, F* row_sum, F* rescale) {
  static_assert(BQ % 16 == 0);
  if constexpr (std::is_same_v<F, float>) {
    // All BQ / 16 column chunks advance together along the keys: that many independent max and
    // sum chains (one chain is bound by the add's latency).
    constexpr int NC = BQ / 16;
    const lanes16 zero = lanes16::splat(0.0f);
    lanes16 tile_max[NC], shift[NC], sum[NC];
    for (int c = 0; c < NC; ++c) tile_max[c] = lanes16::load(row_max + 16 * c);
    for (int j = 0; j < BK; ++j)
      for (int c = 0; c < NC; ++c)
        tile_max[c] = max(tile_max[c], lanes16::load(st + j * BQ + 16 * c));
    for (int c = 0; c < NC; ++c) {
      // exp(x - shift) with shift = 0 where nothing is visible yet: exp(-inf) = 0, never NaN.
      shift[c] = replace_neg_inf(tile_max[c], zero);
      sum[c] = zero;
    }
    for (int j = 0; j < BK; ++j)
      for (int c = 0; c < NC; ++c) {
        const lanes16 p = exp(lanes16::load(st + j * BQ + 16 * c) - shift[c]);
        p.store(st + j * BQ + 16 * c);
        sum[c] = sum[c] + p;
      }
    for (int c = 0; c < NC; ++c) {
      const lanes16 factor = exp(lanes16::load(row_max + 16 * c) - shift[c]);
      (lanes16::load(row_sum + 16 * c) * factor + sum[c]).store(row_sum + 16 * c);
      tile_max[c].store(row_max + 16 * c);
      factor.store(rescale + 16 * c);
    }
  } else {
    for (int i = 0; i < BQ; ++i) {
      F new_max = row_max[i];
      for (int j = 0; j < BK; ++j) new_max = math::max(new_max, st[j * BQ + i]);
      const F shift = new_max == math::neg_inf<F>() ? F(0) : new_max;
      F sum = F(0);
      for (int j = 0; j < BK; ++j) {
        st[j * BQ + i] = math::exp(st[j * BQ + i] - shift);
        sum += st[j * BQ + i];
      }
      rescale[i] = math::exp(row_max[i] - shift);
      row_sum[i] = row_sum[i] * rescale[i] + sum;
      row_max[i] = new_max;
    }
  }
}

/// The backward's P^T and dS^T of a pair over transposed tiles st[BK][BQ] (S^T, becomes P^T)
/// and dpt[BK][BQ] (dP^T, becomes dS^T): P = exp(S - lse_i), dS = P (dP - D_i), with the row
/// statistics lse and D of query i along the lanes. A masked entry holds S = -inf (or its row
/// lse = +inf) and gets P = 0, dS = 0.
template <int BK, int BQ, class F>
void softmax_grad_columns(F* st, F* dpt, const F* lse, const F* row_term) {
  static_assert(BQ % 16 == 0);
  if constexpr (std::is_same_v<F, float>) {
    constexpr int NC = BQ / 16;
    lanes16 l[NC], rt[NC];
    for (int c = 0; c < NC; ++c) {
      l[c] = lanes16::load(lse + 16 * c);
      rt[c] = lanes16::load(row_term + 16 * c);
    }
    for (int j = 0; j < BK; ++j)
      for (int c = 0; c < NC; ++c) {
        const int at = j * BQ + 16 * c;
        const lanes16 p = exp(lanes16::load(st + at) - l[c]);
        p.store(st + at);
        (p * (lanes16::load(dpt + at) - rt[c])).store(dpt + at);
      }
  } else {
    for (int j = 0; j < BK; ++j)
      for (int i = 0; i < BQ; ++i) {
        const F p = math::exp(st[j * BQ + i] - lse[i]);
        st[j * BQ + i] = p;
        dpt[j * BQ + i] = p * (dpt[j * BQ + i] - row_term[i]);
      }
  }
}

}  // namespace sinkmoe::host::detail
