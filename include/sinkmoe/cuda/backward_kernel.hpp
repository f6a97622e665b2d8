#pragma once
// The fused backward kernels (design.md section 5; paper.md section 5), written only against the
// primitive layer sinkmoe::arch like the forward kernel (forward_kernel.hpp), so that the same
// source runs on the GPU (nvcc, sinkmoe/cuda/backward.cuh) and in the host emulation of the
// tests (g++).
//
// Four launches, in stream order (FlashAttention-2's structure, with dQ in its own pass):
//   1. backward_preprocess_kernel<Attn>: one warp per query row. Gate backward (dO = dL/d of the
//      ungated output, d(gate logits)), Delta = sum_c dY_c Y_c, the router gradient gbar split by
//      the route, the row term D = Delta - gbar_sink A - dLSE, the vanilla key-0 term gbar_sink A,
//      and each block's d(sink logit) partial. Everything the sink, gate and route policies mean
//      in backward happens here.
//   2. backward_dkdv_kernel: grid (key tiles, Hkv, sequences); a block owns 64 keys of one KV
//      head, warp w keys 16w .. 16w+15, and visits every (query head of the GQA group, query
//      tile) pair the mask does not call empty, streaming Q, dO and the row statistics through
//      a two-stage cp.async pipeline. It computes transposed tiles S^T = K Q^T and dP^T = V dO^T
//      so that P^T and dS^T = P^T (dP^T - D) are already laid out as mma A fragments for
//      dV += P^T dO and dK += dS^T Q. dK and dV of a key tile are summed over the GQA group in
//      registers, in a fixed order.
//   3. backward_dq_kernel: grid (query tiles, Hq, sequences), the forward's structure: Q and dO
//      stay in shared memory, key tiles stream through the pipeline, dQ += dS K.
//   4. backward_dsink_kernel: one warp per head sums the preprocess partials in a fixed order.
// Splitting dQ from dK/dV recomputes S and dP once more (7 instead of 5 tile products per tile
// pair) but needs no float atomics and no dQ accumulator: every output is written by exactly one
// thread, in a fixed order, so results are bitwise reproducible (the deterministic mode is the
// only mode).
//
// The main kernels depend only on the mask, the score and whether key 0 is the sink (vanilla's
// key-0 term): the sink logit, the gate and the route act in the preprocess. Policy bundles that
// share those three share the main kernels (backward_main_kernels_for), which keeps the
// instantiation count (and nvcc time) down.
//
// Numerics: P is recomputed from the forward's lse (base e, sink included) in the exp2 domain;
// P^T is rounded to Element before dV += P^T dO, dS to Element before dK += dS^T Q and
// dQ += dS K (as FlashAttention-2); the gate backward and all row statistics are fp32; dO of a
// gated policy is rounded to Element once (it is an mma operand). A linear score's scale is
// applied to dK and dQ once, at the end; a soft-cap multiplies dS by ds/d(q.k). Rows without a
// visible key have P = 0 everywhere (their lse is -inf or the sink logit): nothing flows from
// them into dK, dV or dQ, and their router gradient is ignored, as the forward wrote G = 0.
//
// Resources (ptxas, CUDA 13.0, -O3, sm_90a): preprocess 48-72 registers; dK/dV 183-186 at D = 64
// and 246-247 at D = 128 (it runs each 64-query tile as two 32-query passes to stay there); dQ
// 218-228 and 242-244; no spills. Shared memory: dK/dV 56 / 104 KiB, dQ 54 / 102 KiB.
//
// Workspace (backward_workspace_layout, caller- or launcher-allocated device memory): dO of a
// gated policy [B, Tq, Hq, D] Element, the row terms [B, Hq, Tq] fp32 (twice for the vanilla
// sink), and the d(sink) partials [Hq, sequences, query tiles] fp32.

#include <cstddef>
#include <cstdint>
#include <sinkmoe/args.hpp>
#include <sinkmoe/core/error.hpp>
#include <sinkmoe/core/numeric.hpp>
#include <sinkmoe/cuda/arch/arch.hpp>
#include <sinkmoe/cuda/forward_kernel.hpp>
#include <sinkmoe/params.hpp>
#include <sinkmoe/policy/gate.hpp>
#include <sinkmoe/policy/mask.hpp>
#include <sinkmoe/policy/sink.hpp>
#include <type_traits>

namespace sinkmoe::fused {

/// Everything the backward kernels read and write: raw pointers and strides (as forward_params),
/// the workspace, sizes and runtime parameters. Optional inputs are null. Trivially copyable.
template <class Element>
struct backward_params {
  const Element* q;
  index_t q_stride[3];
  const Element* k;
  index_t k_stride[3];
  const Element* v;
  index_t v_stride[3];
  const float* sinks;  ///< [Hq] (sink::learned), else null
  index_t sinks_stride;
  const Element* gate_logits;  ///< gated policies, else null
  index_t gate_stride[3];
  const Element* out;  ///< the forward's (gated) output Y
  index_t out_stride[3];
  const float* lse;  ///< the forward's lse [B, Hq, Tq]
  index_t lse_stride[3];
  const Element* dout;  ///< dL/dY
  index_t dout_stride[3];
  const float* drouter;  ///< dL/dG [B, Hq, Tq], or null
  index_t drouter_stride[3];
  const float* dlse;  ///< dL/d(lse) [B, Hq, Tq], or null
  index_t dlse_stride[3];
  Element* dq;
  index_t dq_stride[3];
  Element* dk;
  index_t dk_stride[3];
  Element* dv;
  index_t dv_stride[3];
  float* dsinks;  ///< [Hq] (sink::learned), else null
  index_t dsinks_stride;
  Element* dgate_logits;  ///< gated policies, else null
  index_t dgate_stride[3];

  // Workspace, and what the main kernels read as dO: the ungated gradient (gated policies,
  // written by the preprocess into grad_attn) or dout itself.
  Element* grad_attn;  ///< [B, Tq, Hq, D] contiguous, gated policies only
  const Element* d_attn;
  index_t d_attn_stride[3];
  float* row_term;   ///< [B, Hq, Tq] contiguous: D = Delta - gbar_sink A - dLSE
  float* key0_term;  ///< [B, Hq, Tq]: gbar_sink A (vanilla sink only), else null
  index_t row_stat_stride[3];
  float* dsink_partial;  ///< [Hq, sequences, q_tiles] (trainable sinks only), else null
  int q_tiles;           ///< query tiles per sequence in dsink_partial

  const std::int32_t* cu_seqlens_q;  ///< varlen offsets where the kernels run, else null
  const std::int32_t* cu_seqlens_k;
  problem_shape shape;
  attention_params params;
};

namespace detail {

/// Element of a [B, T, H, D] tensor at (b, row, h, c).
template <class T>
SINKMOE_HD inline T* at4(T* base, const index_t (&stride)[3], index_t b, index_t row, index_t h,
                         index_t c = 0) {
  return base + b * stride[0] + row * stride[1] + h * stride[2] + c;
}

/// Element of a [B, H, T] statistic at (b, h, row).
template <class T>
SINKMOE_HD inline T* at3(T* base, const index_t (&stride)[3], index_t b, index_t h, index_t row) {
  return base + b * stride[0] + h * stride[1] + row * stride[2];
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// 1. Preprocess: the row terms (paper.md section 5)
// ---------------------------------------------------------------------------------------------

/// Grid (query tiles, Hq, sequences) of 128-thread blocks; warp w handles rows 16w .. 16w+15 of
/// the tile, one row at a time, lane l holding channels 64i + 2l, +1.
///
/// The gate backward runs on those 2-channel slices with the slice's share of the router
/// gradient, gbar * 2 / D: for a gate whose forward_row acts channel by channel
/// (gate_slice_router) backward_row is linear in gbar, so an elementwise gate gets its
/// per-channel dz exactly and a headwise gate's single dz is the sum of its slices' dz.
template <class Attn, arch::half_precision Element, int HeadDim>
struct backward_preprocess_kernel {
  using sink_type = typename Attn::sink_type;
  using gate_type = typename Attn::gate_type;
  using mask_type = typename Attn::mask_type;
  using route_type = typename Attn::route_type;
  using score_type = typename Attn::score_type;
  static_assert(HeadDim % 64 == 0 && HeadDim >= 64 && HeadDim <= 256,
                "backward_preprocess_kernel: HeadDim must be a multiple of 64 in [64, 256]");

  static constexpr int k_max_threads = k_threads;
  static constexpr int k_min_blocks = 1;
  static constexpr int k_pairs = HeadDim / 64;  ///< channel pairs per lane
  static constexpr int k_gate_dim = gate_type::logit_dim(HeadDim);
  static constexpr slice_reduction k_gate_reduction = gate_slice_router<gate_type>::reduction;
  static constexpr std::size_t smem_bytes = k_warps * sizeof(float);

  SINKMOE_DEVICE void operator()(const backward_params<Element>& p) const {
    const float neg_inf = math::neg_inf<float>();
    const int q_tile = static_cast<int>(arch::block_index().x);
    const int h = static_cast<int>(arch::block_index().y);
    const int seq = static_cast<int>(arch::block_index().z);
    const int warp = arch::warp_id();
    const int lane = arch::lane_id();
    const detail::sequence_rows s = detail::sequence_of(p, seq);
    const int q0 = q_tile * k_block_q;
    float* const dsink_slot =
        p.dsink_partial == nullptr
            ? nullptr
            : p.dsink_partial + (static_cast<index_t>(h) * p.shape.num_seqs + seq) * p.q_tiles +
                  q_tile;
    if (q0 >= s.tq) {  // block-uniform; the partial still has to be defined
      if (dsink_slot != nullptr && arch::thread_rank() == 0) arch::store_global(dsink_slot, 0.0f);
      return;
    }
    const int hk = h / (p.shape.q_heads / p.shape.kv_heads);
    const mask_type mask(p.params, s.tq, s.tk);
    const score_type score(p.params, HeadDim);
    float sink_logit = neg_inf;
    if constexpr (sink_type::has_logit)
      sink_logit = sink_type::logit(p.params, p.sinks, p.sinks_stride, h);
    const float gbar_per_slice = 2.0f / static_cast<float>(HeadDim);

    float warp_dsink = 0.0f;  // identical in every lane: row values are warp-reduced
    for (int i = 0; i < 16; ++i) {
      const int t = q0 + warp * 16 + i;
      if (t >= s.tq) break;  // warp-uniform
      const index_t row = s.q_begin + t;

      // The row's slices: dY and Y (Delta), the gate logits.
      float dy[k_pairs][2], y[k_pairs][2], z[k_pairs][2];
      float dot_dy_y = 0.0f;
      const Element* dout_row = detail::at4(p.dout, p.dout_stride, s.batch, row, h);
      const Element* out_row = detail::at4(p.out, p.out_stride, s.batch, row, h);
      const Element* z_row = nullptr;
      if constexpr (gate_type::enabled)
        z_row = detail::at4(p.gate_logits, p.gate_stride, s.batch, row, h);
      SINKMOE_ARCH_UNROLL
      for (int j = 0; j < k_pairs; ++j) {
        const int c = 64 * j + 2 * lane;
        SINKMOE_ARCH_UNROLL
        for (int e = 0; e < 2; ++e) {
          dy[j][e] = arch::to_float(arch::load_global(dout_row + c + e));
          y[j][e] = arch::to_float(arch::load_global(out_row + c + e));
          dot_dy_y += dy[j][e] * y[j][e];
          z[j][e] = 0.0f;
          if constexpr (k_gate_dim == HeadDim)
            z[j][e] = arch::to_float(arch::load_global(z_row + c + e));
        }
        if constexpr (k_gate_dim == 1) z[j][0] = arch::to_float(arch::load_global(z_row));
      }
      const float delta = arch::warp_reduce_sum(dot_dy_y);

      // Empty row (no visible key): scan the mask's key range 32 keys at a time (one step for
      // the built-in masks, whose key_range is exact).
      bool empty_row = true;
      const key_span range = mask.key_range(t);
      for (int j0 = range.begin; j0 < range.end && empty_row; j0 += arch::k_warp_size) {
        const int j = j0 + lane;
        const int seen = (j < range.end && mask.visible(t, j)) ? 1 : 0;
        empty_row = arch::warp_reduce_max(seen) == 0;
      }

      // The sink score: the logit, or vanilla's key-0 score (q . k_0 reduced over the warp).
      float sink_score = sink_logit;
      if constexpr (sink_type::first_key_is_sink) {
        sink_score = neg_inf;
        if (s.tk > 0 && mask.visible(t, 0)) {
          const Element* q_row = detail::at4(p.q, p.q_stride, s.batch, row, h);
          const Element* k_row = detail::at4(p.k, p.k_stride, s.batch, s.k_begin, hk);
          float dot = 0.0f;
          SINKMOE_ARCH_UNROLL
          for (int j = 0; j < k_pairs; ++j) {
            const int c = 64 * j + 2 * lane;
            dot += arch::to_float(arch::load_global(q_row + c)) *
                       arch::to_float(arch::load_global(k_row + c)) +
                   arch::to_float(arch::load_global(q_row + c + 1)) *
                       arch::to_float(arch::load_global(k_row + c + 1));
          }
          sink_score = score.transform(arch::warp_reduce_sum(dot));
        }
      }
      const float lse = arch::load_global(detail::at3(p.lse, p.lse_stride, s.batch, h, row));
      const sink::row_sink<float> rs = sink::row_from_lse(lse, sink_score);

      // The gate's router value (needed by route::product's split).
      float gate_value = 1.0f;
      if constexpr (k_gate_reduction == slice_reduction::channel_mean) {
        float slice_sum = 0.0f;
        SINKMOE_ARCH_UNROLL
        for (int j = 0; j < k_pairs; ++j) slice_sum += 2.0f * gate_type::router_value(z[j], 2);
        gate_value = arch::warp_reduce_sum(slice_sum) / static_cast<float>(HeadDim);
      } else {
        gate_value = gate_type::router_value(z[0], 1);
      }

      const float gbar =
          (p.drouter == nullptr || empty_row)
              ? 0.0f
              : arch::load_global(detail::at3(p.drouter, p.drouter_stride, s.batch, h, row));
      float gbar_sink = 0.0f, gbar_gate = 0.0f;
      route_type::split(gbar, rs.complement, gate_value, gbar_sink, gbar_gate);
      const float dlse =
          (p.dlse == nullptr || !math::is_finite(lse))
              ? 0.0f
              : arch::load_global(detail::at3(p.dlse, p.dlse_stride, s.batch, h, row));

      // Gate backward on the slices: dO (ungated) into the workspace, dz into dgate_logits.
      if constexpr (gate_type::enabled) {
        Element* grad_row =
            p.grad_attn +
            ((static_cast<index_t>(s.batch) * p.shape.tq + row) * p.shape.q_heads + h) * HeadDim;
        Element* dz_row = detail::at4(p.dgate_logits, p.dgate_stride, s.batch, row, h);
        float dz_sum = 0.0f;
        SINKMOE_ARCH_UNROLL
        for (int j = 0; j < k_pairs; ++j) {
          const int c = 64 * j + 2 * lane;
          float d_attn[2], dz[2] = {0.0f, 0.0f};
          gate_type::backward_row(dy[j], y[j], d_attn, 2, z[j], gbar_gate * gbar_per_slice, dz);
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

      if (lane == 0) {
        arch::store_global(detail::at3(p.row_term, p.row_stat_stride, s.batch, h, row),
                           sink::row_term(delta, gbar_sink, rs.mass, dlse));
        if constexpr (sink_type::first_key_is_sink)
          arch::store_global(detail::at3(p.key0_term, p.row_stat_stride, s.batch, h, row),
                             gbar_sink * rs.mass);
      }
      if constexpr (sink_type::trainable)
        warp_dsink += sink::logit_grad(delta, gbar_sink, rs.mass, rs.complement, dlse);
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
};

// ---------------------------------------------------------------------------------------------
// Shared pieces of the two main kernels
// ---------------------------------------------------------------------------------------------

namespace detail {

/// Compile-time facts both main kernels share.
template <class Element, int HeadDim>
struct tile_geometry {
  static_assert(HeadDim % 16 == 0 && HeadDim >= 16 && HeadDim <= 256,
                "fused backward: HeadDim must be a multiple of 16 in [16, 256]");
  static constexpr int row_stride = HeadDim + 8;  ///< shared-memory row, in elements
  static constexpr int tile_elements = k_block_q * row_stride;
  static constexpr int chunks_per_row = HeadDim / 8;
  static constexpr int d_steps = HeadDim / 16;  ///< k-steps over the head dim
  static constexpr int s_tiles = 64 / 8;        ///< n-tiles of a 64-wide score tile
  static constexpr int o_tiles = HeadDim / 8;   ///< n-tiles of a D-wide accumulator
};

/// acc[16 x 8 NTiles] += A[16 rows of a_tile from a_row0] . B^T where B is rows b_row0 ..
/// b_row0 + 8 NTiles of a [64][D] shared tile (its rows are the output columns): S = Q K^T,
/// S^T = K Q^T, dP = dO V^T, dP^T = V dO^T.
template <class Element, int HeadDim, int NTiles>
SINKMOE_DEVICE inline void product_rows_by_rows(float (&acc)[NTiles][4], const Element* a_tile,
                                                int a_row0, const Element* b_tile, int b_row0) {
  using geo = tile_geometry<Element, HeadDim>;
  static_assert(NTiles % 2 == 0, "n-tiles come in pairs (one ldmatrix.x4 each)");
  const int lane = arch::lane_id();
  SINKMOE_ARCH_UNROLL
  for (int kk = 0; kk < geo::d_steps; ++kk) {
    std::uint32_t a[4];
    arch::ldmatrix_x4(a,
                      a_tile + (a_row0 + lane % 16) * geo::row_stride + kk * 16 + (lane / 16) * 8);
    SINKMOE_ARCH_UNROLL
    for (int np = 0; np < NTiles / 2; ++np) {
      std::uint32_t b[4];
      arch::ldmatrix_x4(b, b_tile +
                               (b_row0 + np * 16 + lane % 8 + (lane / 16) * 8) * geo::row_stride +
                               kk * 16 + ((lane / 8) % 2) * 8);
      const std::uint32_t b_lo[2] = {b[0], b[1]};
      const std::uint32_t b_hi[2] = {b[2], b[3]};
      arch::mma_m16n8k16<Element>(acc[2 * np], a, b_lo);
      arch::mma_m16n8k16<Element>(acc[2 * np + 1], a, b_hi);
    }
  }
}

/// acc[16 x D] += X[16 x 8 NTiles] . B where X is a 16-row accumulator tile (rounded to
/// Element: it becomes the A fragments directly) and B rows b_row0 .. b_row0 + 8 NTiles of a
/// [64][D] shared tile (k-major): O += P V, dV += P^T dO, dK += dS^T Q, dQ += dS K.
template <class Element, int HeadDim, int NTiles>
SINKMOE_DEVICE inline void product_acc_by_tile(float (&acc)[HeadDim / 8][4],
                                               const float (&x)[NTiles][4], const Element* b_tile,
                                               int b_row0) {
  using geo = tile_geometry<Element, HeadDim>;
  const int lane = arch::lane_id();
  SINKMOE_ARCH_UNROLL
  for (int kc = 0; kc < NTiles / 2; ++kc) {
    const std::uint32_t a[4] = {arch::pack2<Element>(x[2 * kc][0], x[2 * kc][1]),
                                arch::pack2<Element>(x[2 * kc][2], x[2 * kc][3]),
                                arch::pack2<Element>(x[2 * kc + 1][0], x[2 * kc + 1][1]),
                                arch::pack2<Element>(x[2 * kc + 1][2], x[2 * kc + 1][3])};
    SINKMOE_ARCH_UNROLL
    for (int dp = 0; dp < geo::o_tiles / 2; ++dp) {
      std::uint32_t b[4];
      arch::ldmatrix_x4_trans(
          b, b_tile + (b_row0 + kc * 16 + lane % 8 + ((lane / 8) % 2) * 8) * geo::row_stride +
                 dp * 16 + (lane / 16) * 8);
      const std::uint32_t b_lo[2] = {b[0], b[1]};
      const std::uint32_t b_hi[2] = {b[2], b[3]};
      arch::mma_m16n8k16<Element>(acc[2 * dp], a, b_lo);
      arch::mma_m16n8k16<Element>(acc[2 * dp + 1], a, b_hi);
    }
  }
}

/// Writes a warp's 16 x D accumulator rows, times factor, as Element rows of a [B, T, H, D]
/// tensor: staged through the warp's own rows of a shared tile for 16-byte stores. Rows from
/// valid_rows (of the warp's 16) on are not written.
template <class Element, int HeadDim>
SINKMOE_DEVICE inline void store_rows(const float (&acc)[HeadDim / 8][4], float factor,
                                      Element* staging_tile, Element* dst_row0, index_t row_stride,
                                      int valid_rows) {
  using geo = tile_geometry<Element, HeadDim>;
  const int lane = arch::lane_id(), warp = arch::warp_id();
  const int group = lane / 4, quad_lane = lane % 4;
  Element* const warp_rows = staging_tile + warp * 16 * geo::row_stride;
  SINKMOE_ARCH_UNROLL
  for (int n = 0; n < geo::o_tiles; ++n) {
    const int col = n * 8 + 2 * quad_lane;
    SINKMOE_ARCH_UNROLL
    for (int r = 0; r < 2; ++r)
      arch::store_shared(
          reinterpret_cast<std::uint32_t*>(warp_rows + (group + 8 * r) * geo::row_stride + col),
          arch::pack2<Element>(acc[n][2 * r] * factor, acc[n][2 * r + 1] * factor));
  }
  arch::sync_warp();
  for (int i = lane; i < 16 * geo::chunks_per_row; i += arch::k_warp_size) {
    const int r = i / geo::chunks_per_row, c = i % geo::chunks_per_row;
    if (r >= valid_rows) continue;
    arch::store_global(
        reinterpret_cast<chunk16*>(dst_row0 + static_cast<index_t>(r) * row_stride + c * 8),
        arch::load_shared(
            reinterpret_cast<const chunk16*>(warp_rows + r * geo::row_stride + c * 8)));
  }
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// 2. dK and dV
// ---------------------------------------------------------------------------------------------

/// Grid (key tiles, Hkv, sequences) of 128-thread blocks. Shared memory: K and V tiles, two
/// stages of Q and dO tiles, two stages of the 64 rows' lse (log2 units), D and key-0 terms
/// (D = 64: 56 KiB, 128: 104 KiB).
template <class Mask, class Score, bool Key0Sink, arch::half_precision Element, int HeadDim>
struct backward_dkdv_kernel {
  using geo = detail::tile_geometry<Element, HeadDim>;
  static constexpr int k_max_threads = k_threads;
  static constexpr int k_min_blocks = 1;
  static constexpr int k_stat_floats = 3 * k_block_q;  ///< lse, D, key-0 term of one stage
  static constexpr int k_half = k_block_q / 2;         ///< queries per pass
  static constexpr int k_half_tiles = k_half / 8;      ///< n-tiles of a pass
  static constexpr std::size_t smem_bytes =
      static_cast<std::size_t>(6 * geo::tile_elements) * sizeof(Element) +
      2 * k_stat_floats * sizeof(float);

  SINKMOE_DEVICE void operator()(const backward_params<Element>& p) const {
    constexpr float k_log2e = 1.4426950408889634f;
    const float neg_inf = math::neg_inf<float>();
    const int k_tile_index = static_cast<int>(arch::block_index().x);
    const int hk = static_cast<int>(arch::block_index().y);
    const int seq = static_cast<int>(arch::block_index().z);
    const int rank = arch::thread_rank(), warp = arch::warp_id(), lane = arch::lane_id();
    const int group = lane / 4, quad_lane = lane % 4;

    const detail::sequence_rows s = detail::sequence_of(p, seq);
    const int k0 = k_tile_index * k_block_k;
    if (k0 >= s.tk) return;  // block-uniform
    const int cols = math::min(k_block_k, s.tk - k0);
    const int group_size = p.shape.q_heads / p.shape.kv_heads;
    const int q_tiles = (s.tq + k_block_q - 1) / k_block_q;
    const int items = group_size * q_tiles;  // (query head of the group, query tile) pairs

    const Mask mask(p.params, s.tq, s.tk);
    const Score score(p.params, HeadDim);
    const float score_to_natural = Score::is_linear ? static_cast<float>(score.scale()) : 1.0f;
    const float score_to_log2 = score_to_natural * k_log2e;

    Element* const k_smem = arch::dynamic_smem<Element>();
    Element* const v_smem = k_smem + geo::tile_elements;
    Element* const q_smem = v_smem + geo::tile_elements;       // [2] stages
    Element* const do_smem = q_smem + 2 * geo::tile_elements;  // [2] stages
    float* const stat_smem = reinterpret_cast<float*>(do_smem + 2 * geo::tile_elements);

    const auto tile_kind_of = [&](int item) {
      const int q0 = (item % q_tiles) * k_block_q;
      return mask.tile_class(q0, q0 + math::min(k_block_q, s.tq - q0), k0, k0 + cols);
    };
    const auto next_item = [&](int item) {
      while (item < items && tile_kind_of(item) == tile_kind::empty) ++item;
      return item;
    };
    // Stage an item: Q and dO rows (cp.async) and the rows' statistics (plain stores; the
    // barrier after the wait publishes them). Padding rows get lse = +inf, so P = 0 there, as in
    // rows without a visible key (lse -inf).
    const auto load_item = [&](int item, int stage) {
      const int h = hk * group_size + item / q_tiles;
      const int q0 = (item % q_tiles) * k_block_q;
      const int rows = math::min(k_block_q, s.tq - q0);
      detail::load_tile<Element, HeadDim>(q_smem + stage * geo::tile_elements,
                                          detail::at4(p.q, p.q_stride, s.batch, 0, h),
                                          p.q_stride[1], s.q_begin + q0, rows, p.q);
      detail::load_tile<Element, HeadDim>(do_smem + stage * geo::tile_elements,
                                          detail::at4(p.d_attn, p.d_attn_stride, s.batch, 0, h),
                                          p.d_attn_stride[1], s.q_begin + q0, rows, p.d_attn);
      float* const stats = stat_smem + stage * k_stat_floats;
      for (int r = rank; r < k_block_q; r += k_threads) {
        float lse_log2 = -neg_inf, term = 0.0f, key0 = 0.0f;
        if (r < rows) {
          const index_t row = s.q_begin + q0 + r;
          const float lse = arch::load_global(detail::at3(p.lse, p.lse_stride, s.batch, h, row));
          if (math::is_finite(lse)) lse_log2 = lse * k_log2e;
          term = arch::load_global(detail::at3(p.row_term, p.row_stat_stride, s.batch, h, row));
          if constexpr (Key0Sink)
            key0 = arch::load_global(detail::at3(p.key0_term, p.row_stat_stride, s.batch, h, row));
        }
        arch::store_shared(stats + r, lse_log2);
        arch::store_shared(stats + k_block_q + r, term);
        arch::store_shared(stats + 2 * k_block_q + r, key0);
      }
    };

    // Prologue: K and V (one group), then the first item (one group, possibly empty).
    detail::load_tile<Element, HeadDim>(k_smem, detail::at4(p.k, p.k_stride, s.batch, 0, hk),
                                        p.k_stride[1], s.k_begin + k0, cols, p.k);
    detail::load_tile<Element, HeadDim>(v_smem, detail::at4(p.v, p.v_stride, s.batch, 0, hk),
                                        p.v_stride[1], s.k_begin + k0, cols, p.v);
    arch::cp_async_commit_group();
    int item = next_item(0);
    if (item < items) load_item(item, 0);
    arch::cp_async_commit_group();

    float acc_dk[geo::o_tiles][4], acc_dv[geo::o_tiles][4];
    SINKMOE_ARCH_UNROLL
    for (int n = 0; n < geo::o_tiles; ++n) SINKMOE_ARCH_UNROLL
    for (int i = 0; i < 4; ++i) acc_dk[n][i] = acc_dv[n][i] = 0.0f;

    int stage = 0;
    while (item < items) {
      const int q0 = (item % q_tiles) * k_block_q;
      const int rows = math::min(k_block_q, s.tq - q0);
      const bool partial = tile_kind_of(item) == tile_kind::partial;
      const int item_next = next_item(item + 1);
      if (item_next < items) load_item(item_next, stage ^ 1);
      arch::cp_async_commit_group();
      arch::cp_async_wait_group<1>();  // K, V and this item have landed
      arch::sync_block();
      const Element* const q_tile = q_smem + stage * geo::tile_elements;
      const Element* const do_tile = do_smem + stage * geo::tile_elements;
      const float* const stats = stat_smem + stage * k_stat_floats;

      // Two halves of 32 queries (fewer live registers than one 64-wide pass; a half past the
      // tile's rows is skipped, block-uniformly).
      SINKMOE_ARCH_UNROLL
      for (int half = 0; half < 2; ++half) {
        const int h0 = half * k_half;
        if (h0 >= rows) break;
        // S^T = K Q^T and dP^T = V dO^T for the warp's 16 keys x 32 queries.
        // st[n][i]: key warp*16 + group + 8 (i / 2), query h0 + 8n + 2 quad_lane + i % 2.
        float st[k_half_tiles][4], dpt[k_half_tiles][4];
        SINKMOE_ARCH_UNROLL
        for (int n = 0; n < k_half_tiles; ++n) SINKMOE_ARCH_UNROLL
        for (int i = 0; i < 4; ++i) st[n][i] = dpt[n][i] = 0.0f;
        detail::product_rows_by_rows<Element, HeadDim>(st, k_smem, warp * 16, q_tile, h0);
        detail::product_rows_by_rows<Element, HeadDim>(dpt, v_smem, warp * 16, do_tile, h0);

        // P^T and dS^T = P^T (dP^T - D) in place (st becomes P^T, dpt becomes dS^T).
        SINKMOE_ARCH_UNROLL
        for (int n = 0; n < k_half_tiles; ++n) {
          SINKMOE_ARCH_UNROLL
          for (int i = 0; i < 4; ++i) {
            const int key_local = warp * 16 + group + 8 * (i / 2);
            const int query_local = h0 + n * 8 + 2 * quad_lane + (i % 2);
            const int key = k0 + key_local, t = q0 + query_local;
            float x = st[n][i], dscore = 1.0f;
            if constexpr (!Score::is_linear) {
              dscore = score.derivative(x);
              x = score.transform(x);
            }
            const bool live =
                key_local < cols && query_local < rows && (!partial || mask.visible(t, key));
            const float prob = live ? detail::exp2_approx(x * score_to_log2 -
                                                          arch::load_shared(stats + query_local))
                                    : 0.0f;
            float ds = prob * (dpt[n][i] - arch::load_shared(stats + k_block_q + query_local));
            if constexpr (Key0Sink)
              if (key == 0 && prob != 0.0f)
                ds -= arch::load_shared(stats + 2 * k_block_q + query_local);
            if constexpr (!Score::is_linear) ds *= dscore;
            st[n][i] = prob;
            dpt[n][i] = ds;
          }
        }

        // dV += P^T dO, dK += dS^T Q (rows h0 .. h0 + 31 of [64 queries][D] tiles, k-major).
        detail::product_acc_by_tile<Element, HeadDim>(acc_dv, st, do_tile, h0);
        detail::product_acc_by_tile<Element, HeadDim>(acc_dk, dpt, q_tile, h0);
      }
      arch::sync_block();  // every warp is done with this stage before it is refilled
      item = item_next;
      stage ^= 1;
    }
    arch::cp_async_wait_all();  // no item at all: K and V may still be landing
    arch::sync_block();

    // The warp's 16 keys: dK (scaled once) through the K tile, dV through the V tile.
    const int valid_keys = math::max(0, math::min(16, cols - warp * 16));
    detail::store_rows<Element, HeadDim>(
        acc_dk, score_to_natural, k_smem,
        detail::at4(p.dk, p.dk_stride, s.batch, s.k_begin + k0 + warp * 16, hk), p.dk_stride[1],
        valid_keys);
    detail::store_rows<Element, HeadDim>(
        acc_dv, 1.0f, v_smem,
        detail::at4(p.dv, p.dv_stride, s.batch, s.k_begin + k0 + warp * 16, hk), p.dv_stride[1],
        valid_keys);
  }
};

// ---------------------------------------------------------------------------------------------
// 3. dQ
// ---------------------------------------------------------------------------------------------

/// Grid (query tiles, Hq, sequences) of 128-thread blocks. Shared memory: Q and dO tiles, two
/// stages of K and V tiles (D = 64: 54 KiB, 128: 102 KiB).
template <class Mask, class Score, bool Key0Sink, arch::half_precision Element, int HeadDim>
struct backward_dq_kernel {
  using geo = detail::tile_geometry<Element, HeadDim>;
  static constexpr int k_max_threads = k_threads;
  static constexpr int k_min_blocks = 1;
  static constexpr std::size_t smem_bytes =
      static_cast<std::size_t>(6 * geo::tile_elements) * sizeof(Element);

  SINKMOE_DEVICE void operator()(const backward_params<Element>& p) const {
    constexpr float k_log2e = 1.4426950408889634f;
    const float neg_inf = math::neg_inf<float>();
    const int q_tile = static_cast<int>(arch::block_index().x);
    const int h = static_cast<int>(arch::block_index().y);
    const int seq = static_cast<int>(arch::block_index().z);
    const int warp = arch::warp_id(), lane = arch::lane_id();
    const int group = lane / 4, quad_lane = lane % 4;

    const detail::sequence_rows s = detail::sequence_of(p, seq);
    const int q0 = q_tile * k_block_q;
    if (q0 >= s.tq) return;  // block-uniform
    const int rows = math::min(k_block_q, s.tq - q0);
    const int hk = h / (p.shape.q_heads / p.shape.kv_heads);

    const Mask mask(p.params, s.tq, s.tk);
    const Score score(p.params, HeadDim);
    const float score_to_natural = Score::is_linear ? static_cast<float>(score.scale()) : 1.0f;
    const float score_to_log2 = score_to_natural * k_log2e;

    Element* const q_smem = arch::dynamic_smem<Element>();
    Element* const do_smem = q_smem + geo::tile_elements;
    Element* const k_smem = do_smem + geo::tile_elements;     // [2] stages
    Element* const v_smem = k_smem + 2 * geo::tile_elements;  // [2] stages

    const auto load_kv = [&](int k0, int stage) {
      const int valid = math::min(k_block_k, s.tk - k0);
      detail::load_tile<Element, HeadDim>(k_smem + stage * geo::tile_elements,
                                          detail::at4(p.k, p.k_stride, s.batch, 0, hk),
                                          p.k_stride[1], s.k_begin + k0, valid, p.k);
      detail::load_tile<Element, HeadDim>(v_smem + stage * geo::tile_elements,
                                          detail::at4(p.v, p.v_stride, s.batch, 0, hk),
                                          p.v_stride[1], s.k_begin + k0, valid, p.v);
    };

    // Key tiles as the forward visits them: the hull of the rows' key ranges, empty tiles
    // skipped.
    int hull_begin = 0x7fffffff, hull_end = 0;
    for (int t = q0; t < q0 + rows; ++t) {
      const key_span r = mask.key_range(t);
      if (r.empty()) continue;
      hull_begin = math::min(hull_begin, r.begin);
      hull_end = math::max(hull_end, r.end);
    }
    if (hull_begin >= hull_end) hull_begin = hull_end = 0;
    const auto tile_kind_at = [&](int k0) {
      return mask.tile_class(q0, q0 + rows, k0, k0 + math::min(k_block_k, s.tk - k0));
    };
    const auto next_tile = [&](int k0) {
      while (k0 < hull_end && tile_kind_at(k0) == tile_kind::empty) k0 += k_block_k;
      return k0;
    };

    // The thread's two rows: lse (log2 units; +inf for padding and rows without a visible
    // key, so that P = 0), the row term D and the key-0 term.
    float lse_log2[2], term[2], key0[2];
    SINKMOE_ARCH_UNROLL
    for (int r = 0; r < 2; ++r) {
      const int row_local = warp * 16 + group + 8 * r;
      lse_log2[r] = -neg_inf;
      term[r] = key0[r] = 0.0f;
      if (row_local < rows) {
        const index_t row = s.q_begin + q0 + row_local;
        const float lse = arch::load_global(detail::at3(p.lse, p.lse_stride, s.batch, h, row));
        if (math::is_finite(lse)) lse_log2[r] = lse * k_log2e;
        term[r] = arch::load_global(detail::at3(p.row_term, p.row_stat_stride, s.batch, h, row));
        if constexpr (Key0Sink)
          key0[r] = arch::load_global(detail::at3(p.key0_term, p.row_stat_stride, s.batch, h, row));
      }
    }

    detail::load_tile<Element, HeadDim>(q_smem, detail::at4(p.q, p.q_stride, s.batch, 0, h),
                                        p.q_stride[1], s.q_begin + q0, rows, p.q);
    detail::load_tile<Element, HeadDim>(do_smem,
                                        detail::at4(p.d_attn, p.d_attn_stride, s.batch, 0, h),
                                        p.d_attn_stride[1], s.q_begin + q0, rows, p.d_attn);
    arch::cp_async_commit_group();
    int k0 = next_tile(hull_begin / k_block_k * k_block_k);
    if (k0 < hull_end) load_kv(k0, 0);
    arch::cp_async_commit_group();

    float acc_dq[geo::o_tiles][4];
    SINKMOE_ARCH_UNROLL
    for (int n = 0; n < geo::o_tiles; ++n)
      acc_dq[n][0] = acc_dq[n][1] = acc_dq[n][2] = acc_dq[n][3] = 0.0f;

    int stage = 0;
    while (k0 < hull_end) {
      const bool partial = tile_kind_at(k0) == tile_kind::partial;
      const int cols = math::min(k_block_k, s.tk - k0);
      const int k_next = next_tile(k0 + k_block_k);
      if (k_next < hull_end) load_kv(k_next, stage ^ 1);
      arch::cp_async_commit_group();
      arch::cp_async_wait_group<1>();  // Q, dO and this key tile have landed
      arch::sync_block();
      const Element* const k_tile = k_smem + stage * geo::tile_elements;
      const Element* const v_tile = v_smem + stage * geo::tile_elements;

      // S = Q K^T, dP = dO V^T; sc[n][i]: row group + 8 (i / 2), key 8n + 2 quad_lane + i % 2.
      float sc[geo::s_tiles][4], dp[geo::s_tiles][4];
      SINKMOE_ARCH_UNROLL
      for (int n = 0; n < geo::s_tiles; ++n) SINKMOE_ARCH_UNROLL
      for (int i = 0; i < 4; ++i) sc[n][i] = dp[n][i] = 0.0f;
      detail::product_rows_by_rows<Element, HeadDim>(sc, q_smem, warp * 16, k_tile, 0);
      detail::product_rows_by_rows<Element, HeadDim>(dp, do_smem, warp * 16, v_tile, 0);

      SINKMOE_ARCH_UNROLL
      for (int n = 0; n < geo::s_tiles; ++n) {
        SINKMOE_ARCH_UNROLL
        for (int i = 0; i < 4; ++i) {
          const int r = i / 2;
          const int col = n * 8 + 2 * quad_lane + (i % 2);
          const int t = q0 + warp * 16 + group + 8 * r;
          float x = sc[n][i], dscore = 1.0f;
          if constexpr (!Score::is_linear) {
            dscore = score.derivative(x);
            x = score.transform(x);
          }
          const bool live = col < cols && (!partial || mask.visible(t, k0 + col));
          const float prob = live ? detail::exp2_approx(x * score_to_log2 - lse_log2[r]) : 0.0f;
          float ds = prob * (dp[n][i] - term[r]);
          if constexpr (Key0Sink)
            if (k0 + col == 0 && prob != 0.0f) ds -= key0[r];
          if constexpr (!Score::is_linear) ds *= dscore;
          dp[n][i] = ds;
        }
      }

      // dQ += dS K (K is [keys][D], k-major).
      detail::product_acc_by_tile<Element, HeadDim>(acc_dq, dp, k_tile, 0);
      arch::sync_block();  // every warp is done with this stage before it is refilled
      k0 = k_next;
      stage ^= 1;
    }
    arch::cp_async_wait_all();  // no key tile at all: Q and dO may still be landing
    arch::sync_block();

    const int valid_rows = math::max(0, math::min(16, rows - warp * 16));
    detail::store_rows<Element, HeadDim>(
        acc_dq, score_to_natural, q_smem,
        detail::at4(p.dq, p.dq_stride, s.batch, s.q_begin + q0 + warp * 16, h), p.dq_stride[1],
        valid_rows);
  }
};

// ---------------------------------------------------------------------------------------------
// 4. d(sinks): a fixed-order sum of the preprocess partials
// ---------------------------------------------------------------------------------------------

/// Grid (Hq) of one warp: lane l sums partials l, l + 32, ... in order, then a butterfly.
struct backward_dsink_kernel {
  static constexpr int k_max_threads = arch::k_warp_size;
  static constexpr int k_min_blocks = 1;
  static constexpr std::size_t smem_bytes = 0;

  template <class Element>
  SINKMOE_DEVICE void operator()(const backward_params<Element>& p) const {
    const int h = static_cast<int>(arch::block_index().x);
    const int count = p.shape.num_seqs * p.q_tiles;
    const float* partials = p.dsink_partial + static_cast<index_t>(h) * count;
    float sum = 0.0f;
    for (int i = arch::lane_id(); i < count; i += arch::k_warp_size)
      sum += arch::load_global(partials + i);
    sum = arch::warp_reduce_sum(sum);
    if (arch::lane_id() == 0) arch::store_global(p.dsinks + h * p.dsinks_stride, sum);
  }
};

// ---------------------------------------------------------------------------------------------
// Host side: kernel types, workspace, parameters, launch geometry
// ---------------------------------------------------------------------------------------------

/// The four kernels of Attn's backward at one element type and head dim.
template <class Attn, arch::half_precision Element, int HeadDim>
struct backward_kernels {
  using mask_type = typename Attn::mask_type;
  using score_type = typename Attn::score_type;
  static constexpr bool key0_sink = Attn::sink_type::first_key_is_sink;
  using preprocess = backward_preprocess_kernel<Attn, Element, HeadDim>;
  using dkdv = backward_dkdv_kernel<mask_type, score_type, key0_sink, Element, HeadDim>;
  using dq = backward_dq_kernel<mask_type, score_type, key0_sink, Element, HeadDim>;
  using dsink = backward_dsink_kernel;
};

/// Byte offsets of the workspace's parts (each 256-byte aligned) and its total size. A part the
/// policy does not need has size 0.
struct backward_workspace_layout {
  std::size_t grad_attn = 0, grad_attn_bytes = 0;
  std::size_t row_term = 0, key0_term = 0, row_stat_bytes = 0;
  std::size_t dsink_partial = 0, dsink_partial_bytes = 0;
  int q_tiles = 0;  ///< query tiles per sequence (the longest sequence's)
  std::size_t total_bytes = 0;
};

/// Workspace of Attn's fused backward for a validated problem whose longest sequence has max_tq
/// query rows (Tq without varlen).
template <class Attn, arch::half_precision Element>
backward_workspace_layout backward_workspace(const problem_shape& shape, int max_tq) {
  const auto align = [](std::size_t x) { return (x + 255) / 256 * 256; };
  backward_workspace_layout w;
  w.q_tiles = (max_tq + k_block_q - 1) / k_block_q;
  const std::size_t rows = static_cast<std::size_t>(shape.batch) * shape.tq * shape.q_heads;
  std::size_t at = 0;
  if constexpr (Attn::gate_type::enabled) {
    w.grad_attn = at;
    w.grad_attn_bytes = rows * shape.head_dim * sizeof(Element);
    at += align(w.grad_attn_bytes);
  }
  w.row_stat_bytes = rows * sizeof(float);
  w.row_term = at;
  at += align(w.row_stat_bytes);
  if constexpr (Attn::sink_type::first_key_is_sink) {
    w.key0_term = at;
    at += align(w.row_stat_bytes);
  }
  if constexpr (Attn::sink_type::trainable) {
    w.dsink_partial = at;
    w.dsink_partial_bytes =
        static_cast<std::size_t>(shape.q_heads) * shape.num_seqs * w.q_tiles * sizeof(float);
    at += align(w.dsink_partial_bytes);
  }
  w.total_bytes = at;
  return w;
}

/// Kernel parameters from validated arguments and a workspace of at least
/// backward_workspace<Attn, Element>(shape, max_tq).total_bytes bytes, 256-byte aligned (device
/// memory where the kernels run). Throws sinkmoe::error when a row of q, k, v, dout, dq, dk or
/// dv is not 16-byte aligned, an elementwise dgate_logits is not pair-aligned (4 bytes), or the
/// workspace is too small or misaligned.
template <class Attn, arch::half_precision Element>
backward_params<Element> make_backward_params(const forward_args<Element>& a,
                                              const backward_args<Element>& g,
                                              const problem_shape& shape, int max_tq,
                                              void* workspace, std::size_t workspace_bytes) {
  detail::require_rows_16_byte_aligned("forward_args.q", a.q);
  detail::require_rows_16_byte_aligned("forward_args.k", a.k);
  detail::require_rows_16_byte_aligned("forward_args.v", a.v);
  detail::require_rows_16_byte_aligned("backward_args.dout", g.dout);
  detail::require_rows_16_byte_aligned("backward_args.dq", g.dq);
  detail::require_rows_16_byte_aligned("backward_args.dk", g.dk);
  detail::require_rows_16_byte_aligned("backward_args.dv", g.dv);
  if (shape.gate_dim > 1)  // a gate logit per channel: the preprocess stores dz in pairs
    detail::require_pairs_4_byte_aligned("backward_args.dgate_logits", g.dgate_logits);
  const backward_workspace_layout w = backward_workspace<Attn, Element>(shape, max_tq);
  sinkmoe::detail::require(workspace_bytes >= w.total_bytes,
                           "backward workspace: ", workspace_bytes, " bytes given, ", w.total_bytes,
                           " needed");
  sinkmoe::detail::require(
      w.total_bytes == 0 ||
          (workspace != nullptr && reinterpret_cast<std::uintptr_t>(workspace) % 256 == 0),
      "backward workspace: must be non-null and 256-byte aligned");
  auto* const base = static_cast<unsigned char*>(workspace);

  backward_params<Element> p{};
  p.q = a.q.data;
  detail::copy_strides(a.q, p.q_stride);
  p.k = a.k.data;
  detail::copy_strides(a.k, p.k_stride);
  p.v = a.v.data;
  detail::copy_strides(a.v, p.v_stride);
  p.sinks = a.sinks.data;
  p.sinks_stride = a.sinks.empty() ? 0 : a.sinks.stride[0];
  p.gate_logits = a.gate_logits.data;
  detail::copy_strides(a.gate_logits, p.gate_stride);
  p.out = a.out.data;
  detail::copy_strides(a.out, p.out_stride);
  p.lse = a.lse.data;
  detail::copy_strides(a.lse, p.lse_stride);
  p.dout = g.dout.data;
  detail::copy_strides(g.dout, p.dout_stride);
  p.drouter = g.drouter.data;
  detail::copy_strides(g.drouter, p.drouter_stride);
  p.dlse = g.dlse.data;
  detail::copy_strides(g.dlse, p.dlse_stride);
  p.dq = g.dq.data;
  detail::copy_strides(g.dq, p.dq_stride);
  p.dk = g.dk.data;
  detail::copy_strides(g.dk, p.dk_stride);
  p.dv = g.dv.data;
  detail::copy_strides(g.dv, p.dv_stride);
  p.dsinks = g.dsinks.data;
  p.dsinks_stride = g.dsinks.empty() ? 0 : g.dsinks.stride[0];
  p.dgate_logits = g.dgate_logits.data;
  detail::copy_strides(g.dgate_logits, p.dgate_stride);

  const index_t tq = shape.tq, hq = shape.q_heads, dim = shape.head_dim;
  if constexpr (Attn::gate_type::enabled) {
    p.grad_attn = reinterpret_cast<Element*>(base + w.grad_attn);
    p.d_attn = p.grad_attn;
    p.d_attn_stride[0] = tq * hq * dim;
    p.d_attn_stride[1] = hq * dim;
    p.d_attn_stride[2] = dim;
  } else {
    p.d_attn = g.dout.data;
    detail::copy_strides(g.dout, p.d_attn_stride);
  }
  p.row_term = reinterpret_cast<float*>(base + w.row_term);
  if constexpr (Attn::sink_type::first_key_is_sink)
    p.key0_term = reinterpret_cast<float*>(base + w.key0_term);
  p.row_stat_stride[0] = hq * tq;
  p.row_stat_stride[1] = tq;
  p.row_stat_stride[2] = 1;
  if constexpr (Attn::sink_type::trainable)
    p.dsink_partial = reinterpret_cast<float*>(base + w.dsink_partial);
  p.q_tiles = w.q_tiles;
  p.cu_seqlens_q = a.varlen.cu_seqlens_q;
  p.cu_seqlens_k = a.varlen.cu_seqlens_k;
  p.shape = shape;
  p.params = a.params;
  return p;
}

/// Grids of the four launches (block sizes and shared memory come from the kernel types).
struct backward_launch_geometry {
  launch_geometry preprocess, dkdv, dq, dsink;
  bool trainable_sink = false;
};

/// Launch geometry of backward_kernels<Attn, Element, HeadDim> for a validated problem whose
/// longest sequences have max_tq query and max_tk key rows.
template <class Kernels, class Attn>
backward_launch_geometry backward_geometry(const problem_shape& shape, int max_tq, int max_tk) {
  sinkmoe::detail::require(shape.q_heads <= 65535 && shape.num_seqs <= 65535,
                           "backward: Hq = ", shape.q_heads, ", sequences = ", shape.num_seqs,
                           ": exec::cuda launches at most 65535 of each");
  const unsigned q_tiles = static_cast<unsigned>((max_tq + k_block_q - 1) / k_block_q);
  const unsigned k_tiles = static_cast<unsigned>((max_tk + k_block_k - 1) / k_block_k);
  const unsigned hq = static_cast<unsigned>(shape.q_heads);
  const unsigned seqs = static_cast<unsigned>(shape.num_seqs);
  backward_launch_geometry g;
  g.preprocess = {arch::index3(q_tiles, hq, seqs), arch::index3(k_threads),
                  Kernels::preprocess::smem_bytes};
  g.dkdv = {arch::index3(k_tiles, static_cast<unsigned>(shape.kv_heads), seqs),
            arch::index3(k_threads), Kernels::dkdv::smem_bytes};
  g.dq = {arch::index3(q_tiles, hq, seqs), arch::index3(k_threads), Kernels::dq::smem_bytes};
  g.trainable_sink = Attn::sink_type::trainable;
  g.dsink = {arch::index3(g.trainable_sink ? hq : 0u), arch::index3(arch::k_warp_size), 0};
  return g;
}

/// Longest key sequence of a validated problem whose cu_seqlens (if any) are host pointers.
inline int max_key_rows(const problem_shape& shape, const varlen_batch& varlen) {
  if (!varlen.enabled()) return shape.tk;
  int longest = 0;
  for (int s = 0; s < varlen.num_seqs; ++s)
    longest = math::max(longest, varlen.cu_seqlens_k[s + 1] - varlen.cu_seqlens_k[s]);
  return longest;
}

}  // namespace sinkmoe::fused
