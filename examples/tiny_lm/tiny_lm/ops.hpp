#pragma once
// The non-attention layers of tiny_lm, forward and backward, on the CPU: a register-blocked
// GEMM (and the linear layer built on it), RMSNorm, GELU, softmax cross-entropy, embeddings.
// Every output element is computed by one thread in a fixed order, so results do not depend on
// the thread count (checkpoint resume is bit-exact at any --threads).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sinkmoe/host/tile_ops.hpp>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace tiny_lm::ops {

/// body(i) for i in [0, count) on up to `threads` threads (0: the OpenMP default). Dynamic
/// scheduling: on a busy machine a descheduled thread then holds one task, not half the loop.
template <class Body>
void parallel_for(int threads, std::int64_t count, Body&& body) {
#if defined(_OPENMP)
  const int team = threads > 0 ? threads : omp_get_max_threads();
  if (team > 1 && count > 1) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(team)
    for (std::int64_t i = 0; i < count; ++i) body(i);
    return;
  }
#endif
  for (std::int64_t i = 0; i < count; ++i) body(i);
}

/// body(begin, end) over [0, count) in blocks of `grain` items.
template <class Body>
void parallel_blocks(int threads, std::int64_t count, std::int64_t grain, Body&& body) {
  parallel_for(threads, (count + grain - 1) / grain, [&](std::int64_t block) {
    body(block * grain, std::min(count, (block + 1) * grain));
  });
}

/// C[M][N] = (accumulate ? C : 0) + op(A) B, row-major with leading dimensions, where op(A) is
/// A [M][K] or, with TransA, the transpose of A [K][M]. Tasks are blocks of 48 rows x 128
/// columns of C, run on sinkmoe's own CPU micro-kernels (host/tile_ops.hpp: AVX-512 or AVX2
/// register blocks, 16-column panels) where a block is whole; edges take the plain loops. Each
/// element sums over K in order with one multiply-add per term, so results do not depend on the
/// thread count.
template <bool TransA = false, class T>
void gemm(int threads, int m, int n, int k, const T* a, int lda, const T* b, int ldb, T* c, int ldc,
          bool accumulate) {
  constexpr int rb = 48, cb = 128;  // 48 = 8 micro-kernel blocks of 6 rows (3 of 16 for double)
  const int row_blocks = (m + rb - 1) / rb, col_blocks = (n + cb - 1) / cb;
  const int a_row = TransA ? 1 : lda, a_col = TransA ? lda : 1;
  parallel_for(threads, std::int64_t(row_blocks) * col_blocks, [&](std::int64_t task) {
    const int i0 = static_cast<int>(task / col_blocks) * rb;
    const int j0 = static_cast<int>(task % col_blocks) * cb;
    const int rows = std::min(rb, m - i0), cols = std::min(cb, n - j0);
    const T* a0 = a + std::int64_t(i0) * a_row;
    T* c0 = c + std::int64_t(i0) * ldc + j0;
    const int vector_cols = cols / 16 * 16;
    // Rows in blocks the micro-kernels take (48, then 12, then 4); at most 3 rows are left.
    const auto vector_rows = [&]<int R>(int r) {
      if (accumulate)
        sinkmoe::host::detail::gemm_tile<R, true>(a0 + std::int64_t(r) * a_row, a_row, a_col,
                                                  b + j0, ldb, k, c0 + std::int64_t(r) * ldc, ldc,
                                                  vector_cols);
      else
        sinkmoe::host::detail::gemm_tile<R, false>(a0 + std::int64_t(r) * a_row, a_row, a_col,
                                                   b + j0, ldb, k, c0 + std::int64_t(r) * ldc, ldc,
                                                   vector_cols);
    };
    int r = 0;
    if (vector_cols > 0) {
      if (rows == rb) {
        vector_rows.template operator()<rb>(0);
        r = rb;
      }
      for (; r + 12 <= rows; r += 12) vector_rows.template operator()<12>(r);
      for (; r + 4 <= rows; r += 4) vector_rows.template operator()<4>(r);
    }
    // The rest: the rows left above, and every row's columns past the last 16 (the same sums,
    // in order).
    const auto scalar = [&](int row, int j) {
      T acc = accumulate ? c0[std::int64_t(row) * ldc + j] : T(0);
      for (int p = 0; p < k; ++p)
        acc += a0[std::int64_t(row) * a_row + std::int64_t(p) * a_col] *
               b[std::int64_t(p) * ldb + j0 + j];
      c0[std::int64_t(row) * ldc + j] = acc;
    };
    for (int row = 0; row < rows; ++row)
      for (int j = row < r ? vector_cols : 0; j < cols; ++j) scalar(row, j);
  });
}

/// out[cols][rows] = in[rows][cols].
template <class T>
void transpose(int threads, int rows, int cols, const T* in, T* out) {
  constexpr int tile = 32;
  const int row_tiles = (rows + tile - 1) / tile, col_tiles = (cols + tile - 1) / tile;
  parallel_for(threads, std::int64_t(row_tiles) * col_tiles, [&](std::int64_t task) {
    const int r0 = static_cast<int>(task / col_tiles) * tile,
              c0 = static_cast<int>(task % col_tiles) * tile;
    for (int r = r0; r < std::min(rows, r0 + tile); ++r)
      for (int c = c0; c < std::min(cols, c0 + tile); ++c)
        out[std::int64_t(c) * rows + r] = in[std::int64_t(r) * cols + c];
  });
}

/// Linear layer without bias: y[n][out] = x[n][in] W[in][out].
template <class T>
void linear_forward(int threads, int n, int in, int out, const T* x, const T* w, T* y) {
  gemm(threads, n, out, in, x, in, w, out, y, out, false);
}

/// Its backward: dx = dy W^T (overwritten, or added when accumulate_dx), dW += x^T dy.
/// `scratch` holds W^T.
template <class T>
void linear_backward(int threads, int n, int in, int out, const T* x, const T* w, const T* dy,
                     T* dx, bool accumulate_dx, T* dw, std::vector<T>& scratch) {
  scratch.resize(std::size_t(in) * out);
  transpose(threads, in, out, w, scratch.data());  // W^T [out][in]
  gemm(threads, n, in, out, dy, out, scratch.data(), in, dx, in, accumulate_dx);
  gemm<true>(threads, in, out, n, x, in, dy, out, dw, out, true);  // x^T dy
}

inline constexpr double k_rms_eps = 1e-6;

/// RMSNorm: y = x / rms(x) * gain, rms = sqrt(mean(x^2) + eps); keeps rstd = 1 / rms per row.
template <class T>
void rmsnorm_forward(int threads, int n, int width, const T* x, const T* gain, T* y, T* rstd) {
  parallel_blocks(threads, n, 16, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      const T* xr = x + i * width;
      T* yr = y + i * width;
      T ss = T(0);
      for (int c = 0; c < width; ++c) ss += xr[c] * xr[c];
      const T r = T(1) / std::sqrt(ss / T(width) + T(k_rms_eps));
      rstd[i] = r;
      for (int c = 0; c < width; ++c) yr[c] = xr[c] * r * gain[c];
    }
  });
}

/// Its backward: with xhat = x * rstd and g = dy * gain,
/// dx += rstd * (g - xhat * mean(g * xhat)),  dgain += sum over rows of dy * xhat.
template <class T>
void rmsnorm_backward(int threads, int n, int width, const T* x, const T* gain, const T* rstd,
                      const T* dy, T* dx, T* dgain) {
  parallel_blocks(threads, n, 16, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      const T* xr = x + i * width;
      const T* dyr = dy + i * width;
      T* dxr = dx + i * width;
      const T r = rstd[i];
      T dot = T(0);
      for (int c = 0; c < width; ++c) dot += dyr[c] * gain[c] * xr[c] * r;
      const T mean = dot / T(width);
      for (int c = 0; c < width; ++c) dxr[c] += r * (dyr[c] * gain[c] - xr[c] * r * mean);
    }
  });
  // The gain gradient sums over rows: one pass in row order (deterministic).
  for (int i = 0; i < n; ++i) {
    const T* xr = x + std::int64_t(i) * width;
    const T* dyr = dy + std::int64_t(i) * width;
    const T r = rstd[i];
    for (int c = 0; c < width; ++c) dgain[c] += dyr[c] * xr[c] * r;
  }
}

/// GELU, tanh form: 0.5 u (1 + tanh(z)) with z = sqrt(2/pi) (u + 0.044715 u^3), computed as
/// u * sigmoid(2 z) (the same function; exp is several times cheaper than tanh).
template <class T>
void gelu_forward(int threads, std::int64_t count, const T* u, T* y) {
  constexpr T s2 = T(2 * 0.7978845608028654), c = T(0.044715);
  parallel_blocks(threads, count, 4096, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      const T x = u[i];
      y[i] = x / (T(1) + std::exp(-s2 * (x + c * x * x * x)));
    }
  });
}

/// Its backward: with g = sigmoid(2 z), d/du = g + u g (1 - g) 2 dz/du.
template <class T>
void gelu_backward(int threads, std::int64_t count, const T* u, const T* dy, T* du) {
  constexpr T s2 = T(2 * 0.7978845608028654), c = T(0.044715);
  parallel_blocks(threads, count, 4096, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      const T x = u[i];
      const T g = T(1) / (T(1) + std::exp(-s2 * (x + c * x * x * x)));
      du[i] = dy[i] * (g + x * g * (T(1) - g) * s2 * (T(1) + T(3) * c * x * x));
    }
  });
}

/// Totals of a cross-entropy pass.
struct ce_totals {
  double loss_sum = 0;  ///< sum of -log p(target) over rows
  std::int64_t rows = 0;
  std::int64_t correct = 0;  ///< argmax == target
  std::int64_t answers = 0;  ///< rows flagged as recall answers
  std::int64_t answers_correct = 0;
};

/// Softmax cross-entropy per row. Writes dlogits = (softmax - onehot) * dscale when given.
/// `row_loss` and `row_correct` are per-row scratch (size rows); totals are summed in order.
template <class T>
ce_totals cross_entropy(int threads, int rows, int vocab, const T* logits,
                        const std::uint8_t* target, const std::uint8_t* answer, T* dlogits,
                        T dscale, std::vector<double>& row_loss,
                        std::vector<std::uint8_t>& row_correct) {
  row_loss.resize(static_cast<std::size_t>(rows));
  row_correct.resize(static_cast<std::size_t>(rows));
  parallel_blocks(threads, rows, 8, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      const T* z = logits + i * vocab;
      T zmax = z[0];
      int arg = 0;
      for (int v = 1; v < vocab; ++v)
        if (z[v] > zmax) {
          zmax = z[v];
          arg = v;
        }
      T sum = T(0);
      for (int v = 0; v < vocab; ++v) sum += std::exp(z[v] - zmax);
      const T lse = zmax + std::log(sum);
      const int y = target[i];
      row_loss[static_cast<std::size_t>(i)] = static_cast<double>(lse - z[y]);
      row_correct[static_cast<std::size_t>(i)] = arg == y ? 1 : 0;
      if (dlogits) {
        T* d = dlogits + i * vocab;
        for (int v = 0; v < vocab; ++v) d[v] = std::exp(z[v] - lse) * dscale;
        d[y] -= dscale;
      }
    }
  });
  ce_totals totals;
  totals.rows = rows;
  for (int i = 0; i < rows; ++i) {
    totals.loss_sum += row_loss[static_cast<std::size_t>(i)];
    totals.correct += row_correct[static_cast<std::size_t>(i)];
    if (answer && answer[i]) {
      ++totals.answers;
      totals.answers_correct += row_correct[static_cast<std::size_t>(i)];
    }
  }
  return totals;
}

/// The token before position i of a [batch, seq] batch (position 0, BOS, is its own).
inline std::uint8_t previous_token(const std::uint8_t* tokens, std::int64_t i, int seq) {
  return i % seq == 0 ? tokens[i] : tokens[i - 1];
}

/// x[b, t] = token_embedding[token[b, t]] + position_embedding[t]
///           (+ shift_embedding[token[b, t - 1]] when shift_emb is given: the token shift).
template <class T>
void embed_forward(int threads, int batch, int seq, int width, const std::uint8_t* tokens,
                   const T* tok_emb, const T* shift_emb, const T* pos_emb, T* x) {
  parallel_blocks(
      threads, std::int64_t(batch) * seq, 64, [&](std::int64_t begin, std::int64_t end) {
        for (std::int64_t i = begin; i < end; ++i) {
          const T* e = tok_emb + std::int64_t(tokens[i]) * width;
          const T* p = pos_emb + (i % seq) * width;
          T* xr = x + i * width;
          for (int c = 0; c < width; ++c) xr[c] = e[c] + p[c];
          if (shift_emb) {
            const T* s = shift_emb + std::int64_t(previous_token(tokens, i, seq)) * width;
            for (int c = 0; c < width; ++c) xr[c] += s[c];
          }
        }
      });
}

/// Its backward (scatter-add, in row order).
template <class T>
void embed_backward(int batch, int seq, int width, const std::uint8_t* tokens, const T* dx,
                    T* dtok_emb, T* dshift_emb, T* dpos_emb) {
  for (std::int64_t i = 0; i < std::int64_t(batch) * seq; ++i) {
    T* de = dtok_emb + std::int64_t(tokens[i]) * width;
    T* dp = dpos_emb + (i % seq) * width;
    const T* dxr = dx + i * width;
    for (int c = 0; c < width; ++c) {
      de[c] += dxr[c];
      dp[c] += dxr[c];
    }
    if (dshift_emb) {
      T* ds = dshift_emb + std::int64_t(previous_token(tokens, i, seq)) * width;
      for (int c = 0; c < width; ++c) ds[c] += dxr[c];
    }
  }
}

}  // namespace tiny_lm::ops
