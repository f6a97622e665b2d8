#pragma once
// The fused forward kernel (docs/design.md, "The fused CUDA kernels"; docs/method.md sections 1
// and 2): FlashAttention-2's algorithm with the sink added once after the last key tile, the
// output gate and the router value in the epilogue. One template, specialised by the policy
// bundle Attn, written only against the primitive layer (sinkmoe::arch), so that the same source
// runs on the GPU (nvcc, fused/launch.cuh) and in the host emulation of the tests.
//
// Grid (query tiles, Hq, sequences); a block of 4 warps owns forward_traits::block_q query rows
// of one head of one sequence (traits.hpp: tile shapes, what stays in registers, shared layout).
// Per key tile the mask policy does not call empty (policy/tiles.hpp):
//   S = Q K^T (mma.sync, ldmatrix), transform and mask (score_tile.hpp), online softmax
//   (online_softmax.hpp), O += P V with P rounded to Element and reused in registers.
// The pipeline holds one K and one V tile: V(i) streams in while S is computed, K(i + 1) while
// the softmax and P V(i) are; two barriers per tile separate the readers of each buffer from
// its next writer.
//
// Numerics: scores in fp32; a linear score's scale is folded into the exponent (exp2 of
// x scale log2 e - shift); P rounded to Element before P V, row sums from the fp32 P; out
// rounded once, after the gate. lse is base e and includes the sink. Empty rows: out = 0, G = 0,
// lse = the sink logit or -inf, never NaN.

#include <cstddef>
#include <cstdint>
#include <sinkmoe/cuda/arch/arch.hpp>
#include <sinkmoe/cuda/fused/common.hpp>
#include <sinkmoe/cuda/fused/forward_epilogue.hpp>
#include <sinkmoe/cuda/fused/online_softmax.hpp>
#include <sinkmoe/cuda/fused/params.hpp>
#include <sinkmoe/cuda/fused/score_tile.hpp>
#include <sinkmoe/cuda/fused/tile_copy.hpp>
#include <sinkmoe/cuda/fused/traits.hpp>
#include <sinkmoe/cuda/fused/warp_mma.hpp>
#include <sinkmoe/policy/tiles.hpp>
#include <type_traits>

namespace sinkmoe::fused {

/// The fused forward kernel: Kernel{}(params) in every thread of a forward_geometry grid.
template <class Attn, arch::half_precision Element, int HeadDim>
struct forward_kernel {
  using traits = forward_traits<HeadDim>;
  using mask_type = typename Attn::mask_type;
  using score_type = typename Attn::score_type;
  static constexpr int M = traits::m_tiles, N = traits::s_tiles, O = traits::o_tiles;
  static constexpr int k_max_threads = k_threads;  ///< launch bounds (launch.hpp)
  static constexpr int k_min_blocks = traits::min_blocks;
  static constexpr std::size_t smem_bytes = traits::smem_bytes;
  static_assert(sizeof(Element) == 2, "the shared layout holds 16-bit elements");
  using q_tile = typename traits::q_tile;
  using kv_tile = typename traits::kv_tile;
  /// Q's fragments, when they stay in registers (traits::q_in_registers).
  using q_frags = std::conditional_t<traits::q_in_registers, std::uint32_t[traits::d_steps][M][4],
                                     std::uint32_t[1]>;

  SINKMOE_DEVICE void operator()(const forward_params<Element>& p) const {
    const forward_block b = forward_block::of(p);
    if (b.empty()) return;  // block-uniform: the grid covers the longest sequence
    const sequence_coord& s = b.s;
    const int h = b.h, q0 = b.q0, rows = b.rows;
    const int hk = h / p.shape.group_size();
    const int warp_row0 = arch::warp_id() * traits::warp_rows;
    const mask_type mask(p.params, s.tq, s.tk);
    const score_type score(p.params, HeadDim);
    const float score_to_natural = score_type::is_linear ? static_cast<float>(score.scale()) : 1.0f;
    const key_tile_walk<mask_type> tiles(mask, q0, q0 + rows, s.tk, traits::block_k);
    Element* const q_smem = arch::dynamic_smem<Element>();
    Element* const k_smem = q_smem + traits::k_offset;
    Element* const v_smem = q_smem + traits::v_offset;
    const auto load_k = [&](int k0) {
      tile_copy<kv_tile>::issue(k_smem, p.k, s.batch, hk, s.k_begin + k0, tiles.cols(k0), p.k.data);
    };

    // Prologue: Q and the first K tile, one group.
    tile_copy<q_tile>::issue(q_smem, p.q, s.batch, h, s.q_begin + q0, rows, p.q.data);
    const int first = tiles.first();
    if (tiles.visits(first)) load_k(first);
    arch::cp_async_commit_group();

    q_frags q_frag;
    online_softmax<M> softmax(score_to_natural * 1.4426950408889634f);
    float acc_o[M][O][4] = {};
    // Key 0's score per row (vanilla's sink, the first-key mass): -inf until the tile holding key
    // 0 writes it; the lane of each row that holds column 0 writes and later reads it.
    float* const first_key = first_key_scores(q_smem);
    const bool wants_first_key = Attn::sink_type::first_key_is_sink || p.first_key_mass;
    if (wants_first_key && arch::lane_id() % 4 == 0)
      for (int m = 0; m < M; ++m)
        for (int r = 0; r < 2; ++r)
          arch::store_shared(first_key + warp_row0 + score_tile::row_of(m, 2 * r),
                             math::neg_inf<float>());

    for (int k0 = first; tiles.visits(k0); k0 = tiles.next(k0)) {
      arch::cp_async_wait_group<0>();  // K(k0), and Q before the first tile, have landed
      arch::sync_block();              // for every thread; every warp is done with V
      tile_copy<kv_tile>::issue(v_smem, p.v, s.batch, hk, s.k_begin + k0, tiles.cols(k0), p.v.data);
      arch::cp_async_commit_group();

      float acc_s[M][N][4] = {};
      if constexpr (traits::q_in_registers) {
        if (k0 == first) warp_mma::load_a_all<q_tile, M>(q_frag, q_smem, warp_row0);
        warp_mma::frags_by_rows<kv_tile>(acc_s, q_frag, k_smem, 0);
      } else {
        warp_mma::rows_by_rows<q_tile, kv_tile>(acc_s, q_smem, warp_row0, k_smem, 0);
      }
      score_tile::transform_and_mask(acc_s, score, mask, q0 + warp_row0, k0, tiles.cols(k0),
                                     tiles.kind(k0));
      if (wants_first_key && k0 == 0 && arch::lane_id() % 4 == 0)
        for (int m = 0; m < M; ++m)
          for (int r = 0; r < 2; ++r)
            arch::store_shared(first_key + warp_row0 + score_tile::row_of(m, 2 * r),
                               acc_s[m][0][2 * r] * score_to_natural);

      arch::cp_async_wait_group<0>();  // V(k0) has landed
      arch::sync_block();              // for every thread; every warp is done with K(k0)
      const int next = tiles.next(k0);
      if (tiles.visits(next)) load_k(next);
      arch::cp_async_commit_group();

      softmax.step(acc_s, acc_o);
      warp_mma::acc_by_rows<kv_tile>(acc_o, acc_s, v_smem, 0);
    }
    if (!tiles.visits(first)) {  // no key tile: the epilogue reuses Q rows other threads copied
      arch::cp_async_wait_all();
      arch::sync_block();
    }
    // The block's coordinates are derived again rather than kept live across the key loop.
    forward_epilogue<Attn, traits>(p, forward_block::of(p), softmax, acc_o, q_smem, first_key,
                                   wants_first_key);
  }

  /// Where key 0's scores sit in the block's shared memory.
  SINKMOE_DEVICE static float* first_key_scores(Element* smem) {
    return reinterpret_cast<float*>(reinterpret_cast<unsigned char*>(smem) +
                                    traits::first_key_offset_bytes);
  }
};

/// Grid, block and shared memory of forward_kernel<Attn, Element, HeadDim> for a validated
/// problem whose longest sequence has max_tq query rows.
template <class Kernel>
launch_geometry forward_geometry(const problem_shape& shape, int max_tq) {
  require_grid_limits("forward", shape.q_heads, shape.num_seqs);
  constexpr int block_q = Kernel::traits::block_q;
  const unsigned q_tiles = static_cast<unsigned>((max_tq + block_q - 1) / block_q);
  return {arch::index3(q_tiles, static_cast<unsigned>(shape.q_heads),
                       static_cast<unsigned>(shape.num_seqs)),
          arch::index3(k_threads), Kernel::smem_bytes};
}

}  // namespace sinkmoe::fused
