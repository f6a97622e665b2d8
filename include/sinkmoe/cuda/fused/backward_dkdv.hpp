#pragma once
// The dK/dV pass of the fused backward (docs/method.md section 5).
//
// Grid (key tiles, Hkv, sequences x splits); a block owns dkdv_traits::block_k keys of one KV
// head (warp w: keys warp_keys * w ..), keeps K and V in shared memory, and walks the items
// (query head of the GQA group, query tile) that see its keys (policy/tiles.hpp), streaming Q,
// dO and the items' row statistics through two stages. It computes the transposed tiles
// S^T = K Q^T and dP^T = V dO^T, so that P^T and dS^T are already mma A fragments for
// dV += P^T dO and dK += dS^T Q; dK and dV of the key tile are summed over the GQA group in
// registers, in a fixed order.
//
// When the key tiles alone would leave most of the GPU idle (MQA, small B x Hkv), the host
// splits each block's items into `dkdv_splits` contiguous ranges run by different blocks; each
// writes fp32 partials and dkdv_reduce_kernel sums them in split order: still deterministic.

#include <cstddef>
#include <sinkmoe/core/config.hpp>
#include <sinkmoe/core/numeric.hpp>
#include <sinkmoe/cuda/arch/arch.hpp>
#include <sinkmoe/cuda/fused/common.hpp>
#include <sinkmoe/cuda/fused/params.hpp>
#include <sinkmoe/cuda/fused/score_tile.hpp>
#include <sinkmoe/cuda/fused/tile_copy.hpp>
#include <sinkmoe/cuda/fused/traits.hpp>
#include <sinkmoe/cuda/fused/warp_mma.hpp>
#include <sinkmoe/policy/tiles.hpp>

namespace sinkmoe::fused {

/// The dK/dV kernel (file comment). Main kernels are shared by policy bundles with the same
/// mask, score and key-0 sink (backward_kernels).
template <class Mask, class Score, bool Key0Sink, arch::half_precision Element, int HeadDim>
struct backward_dkdv_kernel {
  using traits = dkdv_traits<HeadDim>;
  using kv_tile = typename traits::kv_tile;
  using q_tile = typename traits::q_tile;
  static constexpr int M = traits::m_tiles, P = traits::pass_tiles, O = traits::o_tiles;
  static constexpr int k_max_threads = k_threads;
  static constexpr int k_min_blocks = traits::min_blocks;
  static constexpr std::size_t smem_bytes = traits::smem_bytes;

  SINKMOE_DEVICE void operator()(const backward_params<Element>& p) const {
    constexpr float k_log2e = 1.4426950408889634f;
    const int k0 = static_cast<int>(arch::block_index().x) * traits::block_k;
    const int hk = static_cast<int>(arch::block_index().y);
    const int seq = static_cast<int>(arch::block_index().z) / p.dkdv_splits;
    const int split = static_cast<int>(arch::block_index().z) % p.dkdv_splits;
    const sequence_coord s = sequence_of(p, seq);
    if (k0 >= s.tk) return;  // block-uniform
    const int cols = math::min(traits::block_k, s.tk - k0);
    const int warp_key0 = arch::warp_id() * traits::warp_keys;
    const int group = p.shape.group_size();
    const Mask mask(p.params, s.tq, s.tk);
    const Score score(p.params, HeadDim);
    const float score_to_natural = Score::is_linear ? static_cast<float>(score.scale()) : 1.0f;
    const query_tile_walk<Mask> walk{mask, k0, k0 + cols, s.tq, traits::block_q};
    // This block's items: split `split` of the (group member, query tile) pairs, member major.
    const int items = group * walk.tiles();
    const int per_split = (items + p.dkdv_splits - 1) / p.dkdv_splits;
    const int item_begin = math::min(items, split * per_split);
    const int item_end = math::min(items, item_begin + per_split);
    const auto next_item = [&](int item) {
      while (item < item_end && walk.kind(item % walk.tiles()) == tile_kind::empty) ++item;
      return item;
    };

    Element* const k_smem = arch::dynamic_smem<Element>();
    Element* const v_smem = k_smem + traits::v_offset;
    Element* const q_smem = k_smem + traits::q_offset;    // [2] stages
    Element* const do_smem = k_smem + traits::do_offset;  // [2] stages
    float* const stat_smem = reinterpret_cast<float*>(reinterpret_cast<unsigned char*>(k_smem) +
                                                      traits::stat_offset_bytes);

    // An item's Q and dO rows stream in by cp.async; its rows' statistics (item_stats) are loaded
    // into registers when its copies are issued and stored to shared memory after the current
    // item's compute, so their global latency hides behind it.
    item_stats stats;
    const auto issue_item = [&](int item, int stage) {
      const int h = hk * group + item / walk.tiles();
      const int qt = item % walk.tiles();
      const int q0 = qt * traits::block_q, rows = walk.rows(qt);
      tile_copy<q_tile>::issue(q_smem + stage * q_tile::elements, p.q, s.batch, h, s.q_begin + q0,
                               rows, p.q.data);
      tile_copy<q_tile>::issue(do_smem + stage * q_tile::elements, p.d_attn, s.batch, h,
                               s.q_begin + q0, rows, p.d_attn.data);
      stats.load(p, s, h, q0, rows);
    };

    // Prologue: K and V, then the first item, one group each.
    tile_copy<kv_tile>::issue(k_smem, p.k, s.batch, hk, s.k_begin + k0, cols, p.k.data);
    tile_copy<kv_tile>::issue(v_smem, p.v, s.batch, hk, s.k_begin + k0, cols, p.v.data);
    arch::cp_async_commit_group();
    const int first = next_item(item_begin);
    if (first < item_end) {
      issue_item(first, 0);
      stats.store(stat_smem);
    }
    arch::cp_async_commit_group();

    float acc_dk[M][O][4] = {}, acc_dv[M][O][4] = {};
    int stage = 0;
    for (int item = first; item < item_end; stage ^= 1) {
      const int qt = item % walk.tiles();
      const int item_next = next_item(item + 1);
      if (item_next < item_end) issue_item(item_next, stage ^ 1);
      arch::cp_async_commit_group();
      arch::cp_async_wait_group<1>();  // K, V and this item have landed
      arch::sync_block();
      const tile_shape item_shape{qt * traits::block_q, walk.rows(qt), k0, cols, walk.kind(qt)};
      accumulate_item(acc_dk, acc_dv, k_smem, v_smem, q_smem + stage * q_tile::elements,
                      do_smem + stage * q_tile::elements, stat_smem + stage * traits::stat_floats,
                      item_shape, mask, score, score_to_natural * k_log2e);
      if (item_next < item_end) stats.store(stat_smem + (stage ^ 1) * traits::stat_floats);
      arch::sync_block();  // every warp is done with this stage before it is refilled
      item = item_next;
    }
    if (first >= item_end) {  // no item: the stores stage through K and V rows others copied
      arch::cp_async_wait_all();
      arch::sync_block();
    }

    const int valid_keys = cols - warp_key0;
    const index_t key_row = s.k_begin + k0 + warp_key0;
    if (p.dkdv_partial == nullptr) {
      warp_mma::store_rows<kv_tile>(acc_dk, score_to_natural, k_smem, warp_key0,
                                    p.dk.at(s.batch, key_row, hk), p.dk.stride[1], valid_keys);
      warp_mma::store_rows<kv_tile>(acc_dv, 1.0f, v_smem, warp_key0, p.dv.at(s.batch, key_row, hk),
                                    p.dv.stride[1], valid_keys);
    } else {
      store_partials(p, split, s.batch, key_row, hk, valid_keys, acc_dk, acc_dv);
    }
  }

  /// The rows of an item against the block's keys.
  struct tile_shape {
    int q0, rows;  ///< the item's query rows in the sequence
    int k0, cols;  ///< the block's keys
    tile_kind kind;
  };

  /// This thread's row of an item (rank < block_q): lse in log2 units (+inf for padding rows and
  /// rows without a visible key, so that P = 0), the row term D and the key-0 term.
  struct item_stats {
    float lse_log2 = 0.0f, term = 0.0f, key0 = 0.0f;
    SINKMOE_DEVICE void load(const backward_params<Element>& p, const sequence_coord& s, int h,
                             int q0, int rows) {
      const int r = arch::thread_rank();
      lse_log2 = -math::neg_inf<float>();
      term = key0 = 0.0f;
      if (r >= rows) return;
      const index_t row = s.q_begin + q0 + r;
      const float lse = arch::load_global(p.lse.at(s.batch, h, row));
      if (math::is_finite(lse)) lse_log2 = lse * 1.4426950408889634f;
      term = arch::load_global(p.row_term.at(s.batch, h, row));
      if constexpr (Key0Sink) key0 = arch::load_global(p.key0_term.at(s.batch, h, row));
    }
    /// Into one stage of the statistics: [lse_log2 | D | key-0 term], block_q each.
    SINKMOE_DEVICE void store(float* stage) const {
      const int r = arch::thread_rank();
      if (r >= traits::block_q) return;
      arch::store_shared(stage + r, lse_log2);
      arch::store_shared(stage + traits::block_q + r, term);
      arch::store_shared(stage + 2 * traits::block_q + r, key0);
    }
  };

  /// One item's products for the warp's keys, pass_q queries at a time (fewer live registers):
  /// S^T = K Q^T and dP^T = V dO^T, P^T and dS^T recomputed in place, dV += P^T dO and
  /// dK += dS^T Q.
  SINKMOE_DEVICE static void accumulate_item(float (&acc_dk)[M][O][4], float (&acc_dv)[M][O][4],
                                             const Element* k_smem, const Element* v_smem,
                                             const Element* q_stage, const Element* do_stage,
                                             const float* st, const tile_shape& t, const Mask& mask,
                                             const Score& score, float log2_scale) {
    const int warp_key0 = arch::warp_id() * traits::warp_keys;
    const bool partial = t.kind == tile_kind::partial;
    const bool check = partial || t.cols < traits::block_k;
    SINKMOE_ARCH_UNROLL
    for (int h0 = 0; h0 < traits::block_q; h0 += traits::pass_q) {
      if (h0 >= t.rows) break;  // block-uniform
      float st_acc[M][P][4] = {}, dpt_acc[M][P][4] = {};
      warp_mma::rows_by_rows<kv_tile, q_tile>(st_acc, k_smem, warp_key0, q_stage, h0);
      warp_mma::rows_by_rows<kv_tile, q_tile>(dpt_acc, v_smem, warp_key0, do_stage, h0);
      score_tile::recompute_p_ds<Key0Sink>(
          st_acc, dpt_acc, score, mask, log2_scale, check, partial, t.k0 == 0,
          [&](int m, int n, int i) {
            const int key_local = warp_key0 + score_tile::row_of(m, i);
            const int query_local = h0 + score_tile::col_of(n, i);
            return score_tile::element_stats{
                t.q0 + query_local,
                t.k0 + key_local,
                key_local < t.cols && query_local < t.rows,
                arch::load_shared(st + query_local),
                arch::load_shared(st + traits::block_q + query_local),
                Key0Sink ? arch::load_shared(st + 2 * traits::block_q + query_local) : 0.0f};
          });
      warp_mma::acc_by_rows<q_tile>(acc_dv, st_acc, do_stage, h0);
      warp_mma::acc_by_rows<q_tile>(acc_dk, dpt_acc, q_stage, h0);
    }
  }

  /// fp32 partials [split][b][key][hk][dK | dV][D] of the warp's keys, for dkdv_reduce_kernel.
  SINKMOE_DEVICE static void store_partials(const backward_params<Element>& p, int split, int b,
                                            index_t key_row, int hk, int valid_keys,
                                            const float (&acc_dk)[M][O][4],
                                            const float (&acc_dv)[M][O][4]) {
    const int lane = arch::lane_id();
    const index_t per_key = 2 * static_cast<index_t>(HeadDim);
    const index_t per_split = static_cast<index_t>(p.shape.batch) * p.shape.tk * p.shape.kv_heads;
    SINKMOE_ARCH_UNROLL
    for (int m = 0; m < M; ++m) SINKMOE_ARCH_UNROLL
    for (int r = 0; r < 2; ++r) {
      const int key = 16 * m + lane / 4 + 8 * r;
      if (key >= valid_keys) continue;
      float* const base =
          p.dkdv_partial +
          ((split * per_split +
            (static_cast<index_t>(b) * p.shape.tk + key_row + key) * p.shape.kv_heads + hk) *
           per_key);
      SINKMOE_ARCH_UNROLL
      for (int n = 0; n < O; ++n) {
        const int c = 8 * n + 2 * (lane % 4);
        arch::store_global(base + c, acc_dk[m][n][2 * r]);
        arch::store_global(base + c + 1, acc_dk[m][n][2 * r + 1]);
        arch::store_global(base + HeadDim + c, acc_dv[m][n][2 * r]);
        arch::store_global(base + HeadDim + c + 1, acc_dv[m][n][2 * r + 1]);
      }
    }
  }
};

/// Sums the dK/dV partials of the splits in split order and writes dk (times the linear score's
/// scale) and dv: one thread per (key row, KV head, channel pair), grid-stride.
template <arch::half_precision Element>
struct dkdv_reduce_kernel {
  static constexpr int k_max_threads = 256;
  static constexpr int k_min_blocks = 1;
  static constexpr std::size_t smem_bytes = 0;

  SINKMOE_DEVICE void operator()(const backward_params<Element>& p, float dk_scale) const {
    const int d = p.shape.head_dim;
    const index_t rows = static_cast<index_t>(p.shape.batch) * p.shape.tk * p.shape.kv_heads;
    const index_t total = rows * (d / 2);
    const index_t step = static_cast<index_t>(arch::grid_dim().x) * k_max_threads;
    for (index_t i =
             static_cast<index_t>(arch::block_index().x) * k_max_threads + arch::thread_rank();
         i < total; i += step) {
      const index_t row = i / (d / 2);  // (b * Tk + key) * Hkv + hk
      const int c = 2 * static_cast<int>(i % (d / 2));
      float dk[2] = {0.0f, 0.0f}, dv[2] = {0.0f, 0.0f};
      for (int split = 0; split < p.dkdv_splits; ++split) {
        const float* src = p.dkdv_partial + ((split * rows + row) * 2 * d);
        for (int e = 0; e < 2; ++e) {
          dk[e] += arch::load_global(src + c + e);
          dv[e] += arch::load_global(src + d + c + e);
        }
      }
      const int hk = static_cast<int>(row % p.shape.kv_heads);
      const index_t bk = row / p.shape.kv_heads;
      const int b = static_cast<int>(bk / p.shape.tk), key = static_cast<int>(bk % p.shape.tk);
      arch::store_global(reinterpret_cast<std::uint32_t*>(p.dk.at(b, key, hk) + c),
                         arch::pack2<Element>(dk[0] * dk_scale, dk[1] * dk_scale));
      arch::store_global(reinterpret_cast<std::uint32_t*>(p.dv.at(b, key, hk) + c),
                         arch::pack2<Element>(dv[0], dv[1]));
    }
  }
};

}  // namespace sinkmoe::fused
