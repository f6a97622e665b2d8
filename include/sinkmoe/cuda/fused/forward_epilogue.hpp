#pragma once
// The epilogue of the fused forward (docs/method.md section 2): per row, the sink added once and
// the output normalised (rowwise::finish_forward_row), the gate applied, the router value, lse
// and first-key mass stored; the output staged through the warp's own rows of the Q tile (no
// longer read) so that it leaves in 16-byte chunks of whole rows.
//
// The gate acts on the 2-channel slices a thread holds (columns 8 n + 2 (lane % 4), + 1 of each
// n-tile): Gate::forward_row on each slice, and Gate::slices says how the slices' router values
// make the row's (policy/gate.hpp), so a gate policy is one struct for every backend.

#include <sinkmoe/core/config.hpp>
#include <sinkmoe/core/numeric.hpp>
#include <sinkmoe/cuda/arch/arch.hpp>
#include <sinkmoe/cuda/fused/online_softmax.hpp>
#include <sinkmoe/cuda/fused/params.hpp>
#include <sinkmoe/cuda/fused/warp_mma.hpp>
#include <sinkmoe/policy/gate.hpp>
#include <sinkmoe/policy/rowwise.hpp>

namespace sinkmoe::fused {

/// Where a forward block sits: its sequence, head and query rows.
struct forward_block {
  sequence_coord s;
  int h, q0, rows;
  [[nodiscard]] SINKMOE_DEVICE bool empty() const { return rows <= 0; }
  /// The calling block's (grid (query tiles of block_q, Hq, sequences)).
  template <class Params, int BlockQ = 128>
  SINKMOE_DEVICE static forward_block of(const Params& p) {
    forward_block b;
    b.s = sequence_of(p, static_cast<int>(arch::block_index().z));
    b.h = static_cast<int>(arch::block_index().y);
    b.q0 = static_cast<int>(arch::block_index().x) * BlockQ;
    b.rows = math::min(BlockQ, b.s.tq - b.q0);
    return b;
  }
};

/// Finishes and stores the block's rows (file comment). first_key holds key 0's score of each row
/// in natural units (-inf where unseen), written by the lane that holds column 0 (when
/// wants_first_key).
template <class Attn, class Traits, class Element, int M, int O>
SINKMOE_DEVICE void forward_epilogue(const forward_params<Element>& p, const forward_block& b,
                                     online_softmax<M>& softmax, float (&acc_o)[M][O][4],
                                     Element* staging, const float* first_key,
                                     bool wants_first_key) {
  using Sink = typename Attn::sink_type;
  using Gate = typename Attn::gate_type;
  using Route = typename Attn::route_type;
  using Score = typename Attn::score_type;
  constexpr int gate_dim = Gate::logit_dim(Traits::head_dim);
  const sequence_coord& s = b.s;
  const int h = b.h, q0 = b.q0, rows = b.rows;
  const int lane = arch::lane_id(), quad = lane % 4;
  const int warp_row0 = arch::warp_id() * Traits::warp_rows;
  const Score score(p.params, Traits::head_dim);
  const float score_to_natural = Score::is_linear ? static_cast<float>(score.scale()) : 1.0f;
  softmax.finish();
  if (wants_first_key) arch::sync_warp();  // the lanes holding column 0 wrote first_key
  SINKMOE_ARCH_UNROLL
  for (int m = 0; m < M; ++m) {
    // The gate logits of the thread's two rows, every pair loaded before any is used, so that
    // the loads are in flight together: loaded inside the loop below they would each wait for
    // the one before, one global-memory latency per 2 channels (the staging stores between
    // them may alias the logits, so the compiler cannot hoist them), which made the gated
    // forward twice as slow as the vanilla one on an H200.
    std::uint32_t z_pairs[2][gate_dim == Traits::head_dim ? O : 1] = {};
    float z_headwise[2] = {0.0f, 0.0f};
    if constexpr (Gate::enabled) {
      SINKMOE_ARCH_UNROLL
      for (int r = 0; r < 2; ++r) {
        const int row_local = warp_row0 + 16 * m + lane / 4 + 8 * r;
        if (row_local >= rows) continue;
        const Element* z_row = p.gate_logits.at(s.batch, s.q_begin + q0 + row_local, h);
        if constexpr (gate_dim == Traits::head_dim) {
          SINKMOE_ARCH_UNROLL
          for (int n = 0; n < O; ++n) z_pairs[r][n] = load_packed_pair(z_row, n * 8 + 2 * quad);
        } else {
          z_headwise[r] = arch::to_float(arch::load_global(z_row));
        }
      }
    }
    SINKMOE_ARCH_UNROLL
    for (int r = 0; r < 2; ++r) {
      const int i = 2 * m + r;
      const int row_local = warp_row0 + 16 * m + lane / 4 + 8 * r;
      const float key0_score =
          wants_first_key ? arch::load_shared(first_key + row_local) : math::neg_inf<float>();
      const bool valid = row_local < rows;
      const index_t row = s.q_begin + q0 + row_local;
      const float sink_score =
          rowwise::sink_score<Sink>(p.params, p.sinks, p.sinks_stride, h, key0_score);
      const rowwise::forward_row<float> fr = rowwise::finish_forward_row<Sink>(
          softmax.row_max[i] * score_to_natural, softmax.row_sum[i], sink_score);

      float gate_value = 1.0f, gate_sum = 0.0f;
      SINKMOE_ARCH_UNROLL
      for (int n = 0; n < O; ++n) {
        const int col = n * 8 + 2 * quad;
        float slice[2] = {acc_o[m][n][2 * r] * fr.normaliser,
                          acc_o[m][n][2 * r + 1] * fr.normaliser};
        float z[2] = {z_headwise[r], 0.0f};
        if constexpr (gate_dim == Traits::head_dim) {
          z[0] = arch::unpack<Element>(z_pairs[r][n], 0);
          z[1] = arch::unpack<Element>(z_pairs[r][n], 1);
        }
        const float slice_value = Gate::forward_row(slice, 2, z);
        if constexpr (Gate::slices == slice_router::channel_mean)
          gate_sum += 2.0f * slice_value;  // exact: forward_row returned (g0 + g1) / 2
        else
          gate_value = slice_value;
        warp_mma::stage_pair<typename Traits::q_tile>(staging, row_local, col, slice[0], slice[1]);
      }
      if constexpr (Gate::slices == slice_router::channel_mean)
        gate_value = arch::warp_reduce_sum<4>(gate_sum) / static_cast<float>(Traits::head_dim);

      if (valid && quad == 0) {
        if (p.lse) arch::store_global(p.lse.at(s.batch, h, row), fr.lse);
        if (p.router)
          arch::store_global(p.router.at(s.batch, h, row),
                             rowwise::router_value<Route>(fr, gate_value));
        if (p.first_key_mass)
          arch::store_global(p.first_key_mass.at(s.batch, h, row),
                             math::exp_shifted(key0_score, fr.lse));
      }
    }
  }
  arch::sync_warp();  // the warp's staged rows are complete
  warp_mma::copy_rows_out<typename Traits::q_tile, Traits::warp_rows>(
      staging, warp_row0, p.out.at(s.batch, s.q_begin + q0 + warp_row0, h), p.out.stride[1],
      rows - warp_row0);
}

}  // namespace sinkmoe::fused
