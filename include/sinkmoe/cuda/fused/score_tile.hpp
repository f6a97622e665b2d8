#pragma once
// Score tiles of the fused kernels: the score transform and the mask on a warp's S accumulators
// (forward), and the recomputation of P and dS from them (backward; docs/method.md section 5).
//
// Accumulator element acc[m][n][i] is row 16 m + lane / 4 + 8 (i / 2), column 8 n + 2 (lane % 4)
// + i % 2 of the warp's tile (warp_mma.hpp). The per-element mask runs only on tiles the mask
// policy classifies as partial or that run past the sequence's keys (a block-uniform branch per
// tile); hidden entries become -inf in the exponent's argument, so the exponential runs for every
// element without a branch (exp2(-inf) = 0).

#include <sinkmoe/core/config.hpp>
#include <sinkmoe/core/numeric.hpp>
#include <sinkmoe/cuda/arch/arch.hpp>
#include <sinkmoe/cuda/arch/math.hpp>
#include <sinkmoe/policy/mask.hpp>

namespace sinkmoe::fused::score_tile {

/// The row of accumulator element (m, i) in the warp's tile, and its column in n-tile n.
SINKMOE_DEVICE inline int row_of(int m, int i) {
  return 16 * m + arch::lane_id() / 4 + 8 * (i / 2);
}
SINKMOE_DEVICE inline int col_of(int n, int i) { return 8 * n + 2 * (arch::lane_id() % 4) + i % 2; }

/// Forward: s[M][N] holds raw dots of sequence rows q_row0 + row_of(m, i) against keys
/// k0 + col_of(n, i) of a tile of `cols` keys; a non-linear score is transformed, hidden entries
/// (outside the tile's keys, or not Mask::visible on a partial tile) become -inf.
template <class Score, class Mask, int M, int N>
SINKMOE_DEVICE void transform_and_mask(float (&s)[M][N][4], const Score& score, const Mask& mask,
                                       int q_row0, int k0, int cols, tile_kind kind) {
  if constexpr (!Score::is_linear) {
    SINKMOE_ARCH_UNROLL
    for (int m = 0; m < M; ++m) SINKMOE_ARCH_UNROLL
    for (int n = 0; n < N; ++n) SINKMOE_ARCH_UNROLL
    for (int i = 0; i < 4; ++i) s[m][n][i] = score.transform(s[m][n][i]);
  }
  const bool partial = kind == tile_kind::partial;
  if (!partial && cols >= 8 * N) return;  // an interior tile: every entry is visible
  SINKMOE_ARCH_UNROLL
  for (int m = 0; m < M; ++m) SINKMOE_ARCH_UNROLL
  for (int n = 0; n < N; ++n) SINKMOE_ARCH_UNROLL
  for (int i = 0; i < 4; ++i) {
    const int col = col_of(n, i);
    const bool hidden = col >= cols || (partial && !mask.visible(q_row0 + row_of(m, i), k0 + col));
    s[m][n][i] = hidden ? math::neg_inf<float>() : s[m][n][i];
  }
}

/// What the backward recompute needs of one element: its query and key (sequence positions),
/// whether it lies inside the tile's rows and keys, and its row's statistics.
struct element_stats {
  int t;           ///< query row in the sequence
  int j;           ///< key in the sequence
  bool inside;     ///< a real query row and key of the tile
  float lse_log2;  ///< the forward's lse in log2 units (+inf for rows that must give P = 0)
  float term;      ///< D = Delta - gbar_sink A - dLSE
  float key0;      ///< gbar_sink A (vanilla sink)
};

/// Backward: s[M][N] holds raw dots, dp[M][N] dP; on return s holds P (fp32, 0 where hidden) and
/// dp holds dS = P (dP - D) (minus the vanilla key-0 term on key 0) times d(score)/d(q.k) for a
/// non-linear score. stats(m, n, i) gives the element_stats of an element; `check` (block-uniform:
/// a partial tile or one past the keys or rows) turns on the per-element visibility test,
/// `key0_tile` (the tile holds key 0 and the sink is key 0) the key-0 term.
template <bool Key0Sink, bool Checked, bool Key0Tile, class Score, class Mask, int M, int N,
          class Stats>
SINKMOE_DEVICE void recompute_p_ds_as(float (&s)[M][N][4], float (&dp)[M][N][4], const Score& score,
                                      const Mask& mask, float log2_scale, bool partial,
                                      Stats&& stats) {
  SINKMOE_ARCH_UNROLL
  for (int m = 0; m < M; ++m) SINKMOE_ARCH_UNROLL
  for (int n = 0; n < N; ++n) SINKMOE_ARCH_UNROLL
  for (int i = 0; i < 4; ++i) {
    const element_stats e = stats(m, n, i);
    float x = s[m][n][i], dscore = 1.0f;
    if constexpr (!Score::is_linear) {
      dscore = score.derivative(x);
      x = score.transform(x);
    }
    float arg = x * log2_scale - e.lse_log2;
    if constexpr (Checked)
      if (!(e.inside && (!partial || mask.visible(e.t, e.j)))) arg = math::neg_inf<float>();
    const float prob = arch::exp2_ftz(arg);
    float ds = prob * (dp[m][n][i] - e.term);
    if constexpr (Key0Sink)
      if (Key0Tile && e.j == 0 && prob != 0.0f) ds -= e.key0;
    if constexpr (!Score::is_linear) ds *= dscore;
    s[m][n][i] = prob;
    dp[m][n][i] = ds;
  }
}

/// Backward: s[M][N] holds raw dots, dp[M][N] dP; on return s holds P (fp32, 0 where hidden) and
/// dp holds dS = P (dP - D) (minus the vanilla key-0 term on key 0) times d(score)/d(q.k) for a
/// non-linear score. stats(m, n, i) gives the element_stats of an element; `check` (block-uniform:
/// a partial tile or one past the keys) selects the copy of the loop with the per-element
/// visibility test, so that interior tiles run without it; `key0_tile` (the tile holds key 0)
/// turns on the key-0 term.
template <bool Key0Sink, class Score, class Mask, int M, int N, class Stats>
SINKMOE_DEVICE void recompute_p_ds(float (&s)[M][N][4], float (&dp)[M][N][4], const Score& score,
                                   const Mask& mask, float log2_scale, bool check, bool partial,
                                   bool key0_tile, Stats&& stats) {
  // The tile holding key 0 is a boundary tile of its own (the vanilla sink's term), so interior
  // tiles run neither test.
  if (Key0Sink && key0_tile)
    recompute_p_ds_as<Key0Sink, true, true>(s, dp, score, mask, log2_scale, partial, stats);
  else if (check)
    recompute_p_ds_as<Key0Sink, true, false>(s, dp, score, mask, log2_scale, partial, stats);
  else
    recompute_p_ds_as<Key0Sink, false, false>(s, dp, score, mask, log2_scale, partial, stats);
}

}  // namespace sinkmoe::fused::score_tile
