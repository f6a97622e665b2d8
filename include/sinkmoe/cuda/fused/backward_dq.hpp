#pragma once
// The dQ pass of the fused backward (docs/method.md section 5): the forward's structure. Grid
// (query tiles, Hq, sequences); a block owns dq_traits::block_q query rows of one head, keeps Q
// and dO in shared memory, and streams the key tiles the mask does not call empty
// (policy/tiles.hpp) through two stages of K and V: S = Q K^T and dP = dO V^T, P and dS
// recomputed from the forward's lse and the preprocess's row terms (score_tile.hpp), dQ += dS K.
// Splitting dQ from dK/dV recomputes S and dP (7 tile products per tile pair instead of
// FlashAttention-2's 5) but needs no float atomics: every output is written once, in a fixed
// order, so the backward is bitwise reproducible.

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

/// The dQ kernel (file comment).
template <class Mask, class Score, bool Key0Sink, arch::half_precision Element, int HeadDim>
struct backward_dq_kernel {
  using traits = dq_traits<HeadDim>;
  using q_tile = typename traits::q_tile;
  using kv_tile = typename traits::kv_tile;
  static constexpr int M = traits::m_tiles, N = traits::s_tiles, O = traits::o_tiles;
  static constexpr int k_max_threads = k_threads;
  static constexpr int k_min_blocks = traits::min_blocks;
  static constexpr std::size_t smem_bytes = traits::smem_elements * sizeof(Element);

  SINKMOE_DEVICE void operator()(const backward_params<Element>& p) const {
    constexpr float k_log2e = 1.4426950408889634f;
    const int h = static_cast<int>(arch::block_index().y);
    const sequence_coord s = sequence_of(p, static_cast<int>(arch::block_index().z));
    const int q0 = static_cast<int>(arch::block_index().x) * traits::block_q;
    if (q0 >= s.tq) return;  // block-uniform
    const int rows = math::min(traits::block_q, s.tq - q0);
    const int hk = h / p.shape.group_size();
    const int warp_row0 = arch::warp_id() * traits::warp_rows;
    const Mask mask(p.params, s.tq, s.tk);
    const Score score(p.params, HeadDim);
    const float score_to_natural = Score::is_linear ? static_cast<float>(score.scale()) : 1.0f;
    const key_tile_walk<Mask> tiles(mask, q0, q0 + rows, s.tk, traits::block_k);
    Element* const q_smem = arch::dynamic_smem<Element>();
    Element* const do_smem = q_smem + traits::do_offset;
    Element* const k_smem = q_smem + traits::k_offset;  // [2] stages
    Element* const v_smem = q_smem + traits::v_offset;  // [2] stages
    const auto load_kv = [&](int k0, int stage) {
      tile_copy<kv_tile>::issue(k_smem + stage * kv_tile::elements, p.k, s.batch, hk,
                                s.k_begin + k0, tiles.cols(k0), p.k.data);
      tile_copy<kv_tile>::issue(v_smem + stage * kv_tile::elements, p.v, s.batch, hk,
                                s.k_begin + k0, tiles.cols(k0), p.v.data);
    };

    // The thread's 2 M rows: lse in log2 units (+inf for padding rows and rows without a visible
    // key, so that P = 0), the row term D and the key-0 term; loaded once, before the pipeline.
    float lse_log2[2 * M], term[2 * M], key0[2 * M];
    SINKMOE_ARCH_UNROLL
    for (int i = 0; i < 2 * M; ++i) {
      const int row_local = warp_row0 + score_tile::row_of(i / 2, 2 * (i % 2));
      lse_log2[i] = -math::neg_inf<float>();
      term[i] = key0[i] = 0.0f;
      if (row_local < rows) {
        const index_t row = s.q_begin + q0 + row_local;
        const float lse = arch::load_global(p.lse.at(s.batch, h, row));
        if (math::is_finite(lse)) lse_log2[i] = lse * k_log2e;
        term[i] = arch::load_global(p.row_term.at(s.batch, h, row));
        if constexpr (Key0Sink) key0[i] = arch::load_global(p.key0_term.at(s.batch, h, row));
      }
    }

    // Prologue: Q and dO (one group), then the first key tile (one group).
    tile_copy<q_tile>::issue(q_smem, p.q, s.batch, h, s.q_begin + q0, rows, p.q.data);
    tile_copy<q_tile>::issue(do_smem, p.d_attn, s.batch, h, s.q_begin + q0, rows, p.d_attn.data);
    arch::cp_async_commit_group();
    const int first = tiles.first();
    if (tiles.visits(first)) load_kv(first, 0);
    arch::cp_async_commit_group();

    float acc_dq[M][O][4] = {};
    int stage = 0;
    for (int k0 = first; tiles.visits(k0); stage ^= 1) {
      const tile_kind kind = tiles.kind(k0);
      const int cols = tiles.cols(k0);
      const int next = tiles.next(k0);
      if (tiles.visits(next)) load_kv(next, stage ^ 1);
      arch::cp_async_commit_group();
      arch::cp_async_wait_group<1>();  // Q, dO and this key tile have landed
      arch::sync_block();
      const Element* const k_stage = k_smem + stage * kv_tile::elements;
      const Element* const v_stage = v_smem + stage * kv_tile::elements;

      float s_acc[M][N][4] = {}, dp_acc[M][N][4] = {};
      warp_mma::rows_by_rows<q_tile, kv_tile>(s_acc, q_smem, warp_row0, k_stage, 0);
      warp_mma::rows_by_rows<q_tile, kv_tile>(dp_acc, do_smem, warp_row0, v_stage, 0);
      score_tile::recompute_p_ds<Key0Sink>(
          s_acc, dp_acc, score, mask, score_to_natural * k_log2e,
          kind == tile_kind::partial || cols < traits::block_k, kind == tile_kind::partial, k0 == 0,
          [&](int m, int n, int i) {
            const int r = 2 * m + i / 2;
            const int col = score_tile::col_of(n, i);
            return score_tile::element_stats{q0 + warp_row0 + score_tile::row_of(m, i),
                                             k0 + col,
                                             col < cols,
                                             lse_log2[r],
                                             term[r],
                                             key0[r]};
          });
      warp_mma::acc_by_rows<kv_tile>(acc_dq, dp_acc, k_stage, 0);  // dQ += dS K
      arch::sync_block();  // every warp is done with this stage before it is refilled
      k0 = next;
    }
    if (!tiles.visits(first)) {  // no key tile: the store stages through Q rows others copied
      arch::cp_async_wait_all();
      arch::sync_block();
    }
    warp_mma::store_rows<q_tile>(acc_dq, score_to_natural, q_smem, warp_row0,
                                 p.dq.at(s.batch, s.q_begin + q0 + warp_row0, h), p.dq.stride[1],
                                 rows - warp_row0);
  }
};

}  // namespace sinkmoe::fused
