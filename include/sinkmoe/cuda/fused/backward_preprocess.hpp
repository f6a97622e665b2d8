#pragma once
// The preprocess of the fused backward (docs/method.md section 5): everything the sink, gate and
// route policies mean in backward happens here, one warp per query row, so that the main kernels
// depend only on the mask, the score and whether key 0 is the sink.
//
// Per row: Delta = sum_c dY_c Y_c; the router gradient split by the route and the row terms
// D = Delta - gbar_sink A - dLSE and the key-0 term (rowwise::backward_row_terms); the gate
// backward on 2-channel slices (dO into the workspace, d(gate logits)); and each block's
// d(sink) partial, summed over its rows in a fixed order.
//
// Grid (query tiles of k_rows_per_block rows, Hq, sequences) of 4 warps; warp w handles rows
// 16 w .. 16 w + 15 of the tile, lane l holding channels 64 i + 2 l, + 1 (4-byte pair loads).
// The gate backward runs on those slices with the slice's share of the router gradient,
// gbar * 2 / D: backward_row is linear in gbar (policy/gate.hpp), so an elementwise gate gets
// its per-channel dz exactly and a headwise gate's single dz is the sum of its slices' dz.

#include <cstdint>
#include <sinkmoe/core/config.hpp>
#include <sinkmoe/core/numeric.hpp>
#include <sinkmoe/cuda/arch/arch.hpp>
#include <sinkmoe/cuda/fused/common.hpp>
#include <sinkmoe/cuda/fused/params.hpp>
#include <sinkmoe/cuda/fused/traits.hpp>
#include <sinkmoe/policy/gate.hpp>
#include <sinkmoe/policy/rowwise.hpp>

namespace sinkmoe::fused {

/// Query rows per preprocess block (and per d(sink) partial).
inline constexpr int k_preprocess_rows = 64;

namespace detail {

/// True when query row t sees at least one key: the mask's key range, 32 keys at a time (one
/// step for the built-in masks, whose key_range is exact). Warp-uniform.
template <class Mask>
SINKMOE_DEVICE inline bool row_sees_a_key(const Mask& mask, int t) {
  const key_span range = mask.key_range(t);
  for (int j0 = range.begin; j0 < range.end; j0 += arch::k_warp_size) {
    const int j = j0 + arch::lane_id();
    if (arch::warp_reduce_max((j < range.end && mask.visible(t, j)) ? 1 : 0) != 0) return true;
  }
  return false;
}

}  // namespace detail

/// The preprocess kernel (file comment).
template <class Attn, arch::half_precision Element, int HeadDim>
struct backward_preprocess_kernel {
  using sink_type = typename Attn::sink_type;
  using gate_type = typename Attn::gate_type;
  using mask_type = typename Attn::mask_type;
  using route_type = typename Attn::route_type;
  using score_type = typename Attn::score_type;
  static_assert(HeadDim % 64 == 0, "backward_preprocess_kernel: HeadDim must be a multiple of 64");
  static constexpr int k_max_threads = k_threads;
  static constexpr int k_min_blocks = 1;
  static constexpr int k_pairs = HeadDim / 64;  ///< channel pairs per lane
  static constexpr int k_gate_dim = gate_type::logit_dim(HeadDim);
  static constexpr std::size_t smem_bytes = k_warps * sizeof(float);

  SINKMOE_DEVICE void operator()(const backward_params<Element>& p) const {
    const int q_tile = static_cast<int>(arch::block_index().x);
    const int h = static_cast<int>(arch::block_index().y);
    const int seq = static_cast<int>(arch::block_index().z);
    const int warp = arch::warp_id(), lane = arch::lane_id();
    const sequence_coord s = sequence_of(p, seq);
    const int q0 = q_tile * k_preprocess_rows;
    float* const dsink_slot =
        p.dsink_partial == nullptr
            ? nullptr
            : p.dsink_partial + (static_cast<index_t>(h) * p.shape.num_seqs + seq) * p.q_tiles +
                  q_tile;
    if (q0 >= s.tq) {  // block-uniform; the partial still has to be defined
      if (dsink_slot != nullptr && arch::thread_rank() == 0) arch::store_global(dsink_slot, 0.0f);
      return;
    }
    const int hk = h / p.shape.group_size();
    const mask_type mask(p.params, s.tq, s.tk);
    const score_type score(p.params, HeadDim);

    float warp_dsink = 0.0f;  // identical in every lane: row values are warp-reduced
    for (int i = 0; i < 16; ++i) {
      const int t = q0 + warp * 16 + i;
      if (t >= s.tq) break;  // warp-uniform
      const index_t row = s.q_begin + t;

      float dy[k_pairs][2], y[k_pairs][2], z[k_pairs][2];
      const float delta = load_row(p, s, row, h, dy, y, z);
      const bool empty_row = !detail::row_sees_a_key(mask, t);
      float key0_score = math::neg_inf<float>();  // vanilla's sink, where key 0 is visible
      if constexpr (sink_type::first_key_is_sink)
        if (s.tk > 0 && mask.visible(t, 0)) key0_score = first_key_score(p, s, row, h, hk, score);
      const float sink_score =
          rowwise::sink_score<sink_type>(p.params, p.sinks, p.sinks_stride, h, key0_score);
      const float lse = arch::load_global(p.lse.at(s.batch, h, row));
      const float gbar =
          (!p.drouter || empty_row) ? 0.0f : arch::load_global(p.drouter.at(s.batch, h, row));
      const float dlse = !p.dlse ? 0.0f : arch::load_global(p.dlse.at(s.batch, h, row));
      const rowwise::backward_row<float> br = rowwise::backward_row_terms<sink_type, route_type>(
          delta, lse, sink_score, gate_router_value(z), gbar, dlse);
      if constexpr (gate_type::enabled) gate_backward(p, s, row, h, dy, y, z, br.gbar_gate);
      if (lane == 0) {
        arch::store_global(p.row_term.at(s.batch, h, row), br.row_term);
        if constexpr (sink_type::first_key_is_sink)
          arch::store_global(p.key0_term.at(s.batch, h, row), br.key0_term);
      }
      if constexpr (sink_type::trainable) warp_dsink += br.dsink;
    }

    // This block's d(sink) partial: warps in order (fixed, so deterministic).
    if constexpr (sink_type::trainable) {
      float* const warp_sums = arch::dynamic_smem<float>();
      if (lane == 0) arch::store_shared(warp_sums + warp, warp_dsink);
      arch::sync_block();
      if (arch::thread_rank() == 0) {
        float total = 0.0f;
        for (int w = 0; w < k_warps; ++w) total += arch::load_shared(warp_sums + w);
        arch::store_global(dsink_slot, total);
      }
    }
  }

  /// A row's slices of dY, Y and the gate logits (4-byte pair loads); returns Delta =
  /// sum_c dY_c Y_c, reduced over the warp.
  SINKMOE_DEVICE static float load_row(const backward_params<Element>& p, const sequence_coord& s,
                                       index_t row, int h, float (&dy)[k_pairs][2],
                                       float (&y)[k_pairs][2], float (&z)[k_pairs][2]) {
    const int lane = arch::lane_id();
    const Element* z_row = gate_type::enabled ? p.gate_logits.at(s.batch, row, h) : nullptr;
    float dot_dy_y = 0.0f;
    SINKMOE_ARCH_UNROLL
    for (int j = 0; j < k_pairs; ++j) {
      const int c = 64 * j + 2 * lane;
      load_pair(p.dout.at(s.batch, row, h), c, dy[j]);
      load_pair(p.out.at(s.batch, row, h), c, y[j]);
      dot_dy_y += dy[j][0] * y[j][0];
      dot_dy_y += dy[j][1] * y[j][1];
      z[j][0] = z[j][1] = 0.0f;
      if constexpr (k_gate_dim == HeadDim) load_pair(z_row, c, z[j]);
      if constexpr (k_gate_dim == 1) z[j][0] = arch::to_float(arch::load_global(z_row));
    }
    return arch::warp_reduce_sum(dot_dy_y);
  }

  /// Vanilla's sink score: q . k_0 reduced over the warp, through the score transform.
  SINKMOE_DEVICE static float first_key_score(const backward_params<Element>& p,
                                              const sequence_coord& s, index_t row, int h, int hk,
                                              const score_type& score) {
    float dot = 0.0f;
    SINKMOE_ARCH_UNROLL
    for (int j = 0; j < k_pairs; ++j) {
      float qv[2], kv[2];
      load_pair(p.q.at(s.batch, row, h), 64 * j + 2 * arch::lane_id(), qv);
      load_pair(p.k.at(s.batch, s.k_begin, hk), 64 * j + 2 * arch::lane_id(), kv);
      dot += qv[0] * kv[0] + qv[1] * kv[1];
    }
    return score.transform(arch::warp_reduce_sum(dot));
  }

  /// The gate's router value of the row from its slices (route::product's split needs it).
  SINKMOE_DEVICE static float gate_router_value(const float (&z)[k_pairs][2]) {
    if constexpr (gate_type::slices == slice_router::channel_mean) {
      float slice_sum = 0.0f;
      SINKMOE_ARCH_UNROLL
      for (int j = 0; j < k_pairs; ++j) slice_sum += 2.0f * gate_type::router_value(z[j], 2);
      return arch::warp_reduce_sum(slice_sum) / static_cast<float>(HeadDim);
    } else {
      return gate_type::router_value(z[0], 1);
    }
  }

  /// The gate backward on the slices with each slice's share 2 / D of gbar_gate: dO (ungated)
  /// into the workspace, dz into dgate_logits.
  SINKMOE_DEVICE static void gate_backward(const backward_params<Element>& p,
                                           const sequence_coord& s, index_t row, int h,
                                           const float (&dy)[k_pairs][2],
                                           const float (&y)[k_pairs][2],
                                           const float (&z)[k_pairs][2], float gbar_gate) {
    const int lane = arch::lane_id();
    const float gbar_per_slice = gbar_gate * (2.0f / static_cast<float>(HeadDim));
    Element* const grad_row =
        p.grad_attn +
        ((static_cast<index_t>(s.batch) * p.shape.tq + row) * p.shape.q_heads + h) * HeadDim;
    Element* const dz_row = p.dgate_logits.at(s.batch, row, h);
    float dz_sum = 0.0f;
    SINKMOE_ARCH_UNROLL
    for (int j = 0; j < k_pairs; ++j) {
      const int c = 64 * j + 2 * lane;
      float d_attn[2], dz[2] = {0.0f, 0.0f};
      gate_type::backward_row(dy[j], y[j], d_attn, 2, z[j], gbar_per_slice, dz);
      arch::store_global(reinterpret_cast<std::uint32_t*>(grad_row + c),
                         arch::pack2<Element>(d_attn[0], d_attn[1]));
      if constexpr (k_gate_dim == HeadDim)
        arch::store_global(reinterpret_cast<std::uint32_t*>(dz_row + c),
                           arch::pack2<Element>(dz[0], dz[1]));
      else
        dz_sum += dz[0];
    }
    if constexpr (k_gate_dim == 1) {
      dz_sum = arch::warp_reduce_sum(dz_sum);
      if (lane == 0) arch::store_global(dz_row, arch::from_float<Element>(dz_sum));
    }
  }
};

}  // namespace sinkmoe::fused
