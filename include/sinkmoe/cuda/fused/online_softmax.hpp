#pragma once
// The online softmax of the fused forward (docs/method.md section 1): per row the running maximum
// of the raw scores and the partial sum of exponentials over real keys, the rescaling of the
// output accumulator when the maximum moves, and the finish that hands the row to
// rowwise::finish_forward_row, which adds the sink once.
//
// A thread holds 2 M rows (rows lane / 4 and lane / 4 + 8 of each of the warp's M row blocks):
// row i = 2 m + r. The 4 lanes sharing a row reduce the maximum with 4-lane shuffles each tile;
// the sums stay per lane until finish(). Exponentials are exp2 of x * log2_scale - shift (x the
// raw dot for a linear score, whose scale is folded into log2_scale; the transformed score
// otherwise). A row that has seen nothing keeps shift 0, so exp2(-inf) = 0 and never NaN.

#include <sinkmoe/core/config.hpp>
#include <sinkmoe/core/numeric.hpp>
#include <sinkmoe/cuda/arch/arch.hpp>
#include <sinkmoe/cuda/arch/math.hpp>

namespace sinkmoe::fused {

/// Online-softmax state of a thread's 2 M rows (file comment).
template <int M>
struct online_softmax {
  static constexpr int rows = 2 * M;
  float row_max[rows];  ///< running maximum of x (raw units)
  float row_sum[rows];  ///< sum over this lane's columns of exp2(x log2_scale - max log2_scale)
  float log2_scale;     ///< log2(e) times the natural-log score per unit of x

  SINKMOE_DEVICE explicit online_softmax(float log2_scale_) : log2_scale(log2_scale_) {
    SINKMOE_ARCH_UNROLL
    for (int i = 0; i < rows; ++i) {
      row_max[i] = math::neg_inf<float>();
      row_sum[i] = 0.0f;
    }
  }

  /// One key tile: s[M][N] (masked scores) becomes P (unnormalised, fp32); acc_o[M][O] is
  /// rescaled to the new maxima.
  template <int N, int O>
  SINKMOE_DEVICE void step(float (&s)[M][N][4], float (&acc_o)[M][O][4]) {
    SINKMOE_ARCH_UNROLL
    for (int m = 0; m < M; ++m) {
      SINKMOE_ARCH_UNROLL
      for (int r = 0; r < 2; ++r) {
        const int i = 2 * m + r;
        float tile_max = math::neg_inf<float>();
        SINKMOE_ARCH_UNROLL
        for (int n = 0; n < N; ++n)
          tile_max = math::max(tile_max, math::max(s[m][n][2 * r], s[m][n][2 * r + 1]));
        tile_max = arch::warp_reduce_max<4>(tile_max);
        const float new_max = math::max(row_max[i], tile_max);
        const float shift = new_max == math::neg_inf<float>() ? 0.0f : new_max * log2_scale;
        const float rescale = arch::exp2_ftz(row_max[i] * log2_scale - shift);
        row_max[i] = new_max;
        float tile_sum = 0.0f;
        SINKMOE_ARCH_UNROLL
        for (int n = 0; n < N; ++n) {
          SINKMOE_ARCH_UNROLL
          for (int e = 0; e < 2; ++e) {
            const float prob = arch::exp2_ftz(s[m][n][2 * r + e] * log2_scale - shift);
            s[m][n][2 * r + e] = prob;
            tile_sum += prob;
          }
        }
        row_sum[i] = row_sum[i] * rescale + tile_sum;
        SINKMOE_ARCH_UNROLL
        for (int n = 0; n < O; ++n) {
          acc_o[m][n][2 * r] *= rescale;
          acc_o[m][n][2 * r + 1] *= rescale;
        }
      }
    }
  }

  /// After the last tile: row sums over all four lanes of a row (every lane gets them).
  SINKMOE_DEVICE void finish() {
    SINKMOE_ARCH_UNROLL
    for (int i = 0; i < rows; ++i) row_sum[i] = arch::warp_reduce_sum<4>(row_sum[i]);
  }
};

}  // namespace sinkmoe::fused
