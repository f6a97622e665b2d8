#pragma once
// The fused forward attention kernel (design.md section 5; paper.md sections 1, 2): one kernel
// template specialised by the policy bundle Attn, written only against the primitive layer
// sinkmoe::arch, so that the same source runs on the GPU (nvcc, through arch::launch) and in
// the host emulation of the tests (g++, through arch::emulated_launch).
//
// Structure (FlashAttention-2):
//   grid (query tiles, Hq, sequences); a block of 4 warps owns 64 query rows of one query head
//   of one sequence; warp w owns rows 16w .. 16w+15 of the tile.
//   Shared memory (dynamic, rows padded by 8 elements so that every row stays 16-byte aligned
//   and the 8 rows an ldmatrix reads fall in different banks):
//     Q tile [64][D+8], K tiles [2][64][D+8], V tiles [2][64][D+8]   (D = 64: 45 KiB, 128: 85 KiB)
//   Q is staged with cp.async once and kept in registers as mma A fragments (ldmatrix).
//   Key tiles of 64 stream through a two-stage cp.async pipeline (tile i+1 loads while tile i is
//   multiplied). Only tiles that Mask::tile_class does not call empty are visited, inside the
//   hull of the rows' Mask::key_range; per-element Mask::visible runs on every tile classified
//   partial (interior tiles included: the policy decides, never the kernel), and columns past
//   the sequence end are masked on every tile.
//   S = Q K^T: mma m16n8k16, B fragments from K (row-major [key][d] is the column-major B) by
//   ldmatrix. Online softmax in fp32 per row; the 4 lanes that share an accumulator row reduce
//   max and sum with 4-lane shuffles. P is rounded to Element and reused in registers as the A
//   fragment of O += P V (B fragments from V by ldmatrix .trans).
//
// Numerics (the same row formulas as host/forward.hpp, paper.md section 2):
//   A linear score folds its scale into the exponent: p = exp2(x * scale * log2 e - m * scale *
//   log2 e) with x = q.k in fp32 and m the running row maximum of x; the natural-log score is
//   s = scale * x. A non-linear score (soft-cap) transforms x first (x = Score::transform(q.k))
//   and uses a factor log2 e. Rows keep (m, l, O) over real keys only; the sink is added once,
//   after the last tile, by sink::finish_row (lse_full = logaddexp(lse_keys, b)); for
//   sink::none the score of key 0 (captured from the tile that starts at key 0, after masking)
//   is the sink score. out = Gate(O * exp(m - lse_full)); lse is base e and includes the sink.
//   Rounding points: Q, K, V and the gate logits are Element; S, the row statistics, O and the
//   gate are fp32; P is rounded to Element before P V (as FlashAttention); out is rounded to
//   Element once, after the gate. Row sums use the unrounded fp32 P.
//   Empty rows (no visible key): l = 0, out = 0, router G = 0, lse = the sink logit or -inf,
//   never NaN (exp2 of -inf is 0; a row whose maximum is still -inf uses shift 0).
//
// Gate epilogue: each thread holds 2 consecutive channels (columns 8n + 2c, +1) of its rows per
// n-tile; Gate::forward_row runs on those 2-channel slices, and gate_slice_router<Gate> says how
// the slices' returned router values combine (see there). A gate whose forward_row does not act
// channel by channel needs its own specialisation (a static_assert says so).
//
// Host side: make_forward_params() turns validated forward_args<Element> into the kernel's
// forward_params (raw pointers and strides) and checks what only this path needs (16-byte
// aligned Q, K, V and out rows for cp.async and the 16-byte output stores);
// forward_launch_geometry() gives grid, block and shared-memory size; dispatch_head_dim() is
// the one runtime-to-compile-time switch (head dims 64 and 128). The nvcc launcher is
// sinkmoe/cuda/forward.cuh; tests launch the same kernel through arch::emulated_launch.
//
// Resources (ptxas, CUDA 13.0, -O3): 167-176 registers at D = 64 and 223-231 at D = 128 on
// sm_80 / sm_90a, no spills; 45 / 85 KiB of shared memory per block.

#include <cstddef>
#include <cstdint>
#include <sinkmoe/args.hpp>
#include <sinkmoe/core/error.hpp>
#include <sinkmoe/core/numeric.hpp>
#include <sinkmoe/cuda/arch/arch.hpp>
#include <sinkmoe/params.hpp>
#include <sinkmoe/policy/gate.hpp>
#include <sinkmoe/policy/mask.hpp>
#include <sinkmoe/policy/sink.hpp>
#include <type_traits>

namespace sinkmoe::fused {

inline constexpr int k_block_q = 64;  ///< query rows per block
inline constexpr int k_block_k = 64;  ///< keys per key tile
inline constexpr int k_warps = 4;     ///< warps per block; warp w owns query rows 16w .. 16w+15
inline constexpr int k_threads = k_warps * arch::k_warp_size;

/// Everything the kernel reads: raw pointers, strides in elements ({b, t, h} for [B, T, H, D]
/// tensors, whose D stride is 1; {b, h, t} for [B, H, T] row statistics), the problem sizes and
/// the runtime policy parameters. Optional outputs are null. Trivially copyable (a kernel
/// argument).
template <class Element>
struct forward_params {
  const Element* q;
  index_t q_stride[3];
  const Element* k;
  index_t k_stride[3];
  const Element* v;
  index_t v_stride[3];
  const float* sinks;  ///< [Hq] (sink::learned), else null
  index_t sinks_stride;
  const Element* gate_logits;  ///< [B, Tq, Hq, 1 or D] (gated policies), else null
  index_t gate_stride[3];
  Element* out;
  index_t out_stride[3];
  float* lse;  ///< optional outputs: null when not requested
  index_t lse_stride[3];
  float* router;
  index_t router_stride[3];
  float* first_key_mass;
  index_t first_key_mass_stride[3];
  const std::int32_t* cu_seqlens_q;  ///< varlen offsets where the kernel runs, else null
  const std::int32_t* cu_seqlens_k;
  problem_shape shape;
  attention_params params;
};

/// How the fused epilogue combines the router values that Gate::forward_row returns for a
/// thread's 2-channel slices of a row into the row's gate router value.
enum class slice_reduction : std::uint8_t {
  any,          ///< every slice returns the row's value (headwise gate, no gate)
  channel_mean  ///< each slice returns the mean over its channels; the row value is the mean
                ///< over all D channels (elementwise gate)
};

/// Which slice_reduction a gate policy needs. Specialise for a custom gate whose forward_row
/// acts channel by channel (o_c depends on o_c and its logits only).
template <class Gate>
struct gate_slice_router {
  static_assert(!std::is_same_v<Gate, Gate>,
                "sinkmoe fused forward: this gate policy is not known to the fused kernel, which "
                "applies Gate::forward_row to 2-channel slices of a row; specialise "
                "sinkmoe::fused::gate_slice_router<Gate> (slice_reduction any or channel_mean) "
                "if its forward_row acts channel by channel");
};
template <>
struct gate_slice_router<gate::none> {
  static constexpr slice_reduction reduction = slice_reduction::any;
};
template <>
struct gate_slice_router<gate::headwise> {
  static constexpr slice_reduction reduction = slice_reduction::any;
};
template <>
struct gate_slice_router<gate::elementwise> {
  static constexpr slice_reduction reduction = slice_reduction::channel_mean;
};

namespace detail {

/// A 16-byte chunk, for vector copies between shared and global memory.
struct alignas(16) chunk16 {
  std::uint32_t word[4];
};

/// 2^x: exp2f (ex2 on the GPU); exactly 0 for -inf.
SINKMOE_HD inline float exp2_approx(float x) { return ::exp2f(x); }

/// Where sequence seq of a launch sits: its batch index, first rows and lengths (the varlen
/// offsets when the kernel has them, FlashAttention's cu_seqlens; else sequence = batch index).
struct sequence_rows {
  int batch, q_begin, tq, k_begin, tk;
};

template <class Params>
SINKMOE_DEVICE inline sequence_rows sequence_of(const Params& p, int seq) {
  if (p.cu_seqlens_q == nullptr) return {seq, 0, p.shape.tq, 0, p.shape.tk};
  const int q_begin = arch::load_global(p.cu_seqlens_q + seq);
  const int k_begin = arch::load_global(p.cu_seqlens_k + seq);
  return {0, q_begin, arch::load_global(p.cu_seqlens_q + seq + 1) - q_begin, k_begin,
          arch::load_global(p.cu_seqlens_k + seq + 1) - k_begin};
}

/// cp.async of rows [first_row, first_row + 64) of one head of a [B, T, H, D] tensor (base at
/// (batch, 0, head, 0)) into a shared tile with rows of HeadDim + 8 elements; rows from
/// valid_rows on are zero-filled (past a sequence end, or the next sequence of a varlen batch).
template <class Element, int HeadDim>
SINKMOE_DEVICE inline void load_tile(Element* dst, const Element* base, index_t row_stride,
                                     int first_row, int valid_rows, const Element* any_aligned) {
  constexpr int chunks_per_row = HeadDim / 8, smem_row = HeadDim + 8;
  for (int i = arch::thread_rank(); i < 64 * chunks_per_row; i += k_threads) {
    const int r = i / chunks_per_row, c = i % chunks_per_row;
    const bool valid = r < valid_rows;
    const Element* src =
        valid ? base + static_cast<index_t>(first_row + r) * row_stride + c * 8 : any_aligned;
    arch::cp_async_zfill(dst + r * smem_row + c * 8, src, valid);
  }
}

}  // namespace detail

/// The fused forward kernel: Kernel{}(params) in every thread of a (query tiles, Hq, sequences)
/// grid of 128-thread blocks with smem_bytes of dynamic shared memory.
template <class Attn, arch::half_precision Element, int HeadDim>
struct forward_kernel {
  using sink_type = typename Attn::sink_type;
  using gate_type = typename Attn::gate_type;
  using mask_type = typename Attn::mask_type;
  using route_type = typename Attn::route_type;
  using score_type = typename Attn::score_type;
  static_assert(HeadDim % 16 == 0 && HeadDim >= 16 && HeadDim <= 256,
                "forward_kernel: HeadDim must be a multiple of 16 in [16, 256]");

  static constexpr int k_max_threads = k_threads;  ///< launch bounds (launch.hpp)
  static constexpr int k_min_blocks = 1;
  static constexpr int k_row_stride = HeadDim + 8;  ///< shared-memory row, in elements
  static constexpr int k_tile_elements = k_block_q * k_row_stride;
  static constexpr int k_chunks_per_row = HeadDim / 8;  ///< 16-byte chunks per row
  static constexpr int k_d_steps = HeadDim / 16;        ///< k-steps of S = Q K^T
  static constexpr int k_s_tiles = k_block_k / 8;       ///< n-tiles of S per warp
  static constexpr int k_o_tiles = HeadDim / 8;         ///< n-tiles of O per warp
  static constexpr int k_gate_dim = gate_type::logit_dim(HeadDim);
  static constexpr slice_reduction k_gate_reduction = gate_slice_router<gate_type>::reduction;
  /// Dynamic shared memory per block: Q, two K stages, two V stages.
  static constexpr std::size_t smem_bytes =
      static_cast<std::size_t>(5 * k_tile_elements) * sizeof(Element);

  SINKMOE_DEVICE void operator()(const forward_params<Element>& p) const {
    constexpr float k_log2e = 1.4426950408889634f;
    const float neg_inf = math::neg_inf<float>();

    const int q_tile = static_cast<int>(arch::block_index().x);
    const int h = static_cast<int>(arch::block_index().y);
    const int seq = static_cast<int>(arch::block_index().z);
    const int warp = arch::warp_id();
    const int lane = arch::lane_id();
    const int group = lane / 4;      // accumulator row within the warp's 16 (and +8)
    const int quad_lane = lane % 4;  // accumulator column pair within an n-tile

    const detail::sequence_rows sequence = detail::sequence_of(p, seq);
    const int batch = sequence.batch, q_begin = sequence.q_begin, k_begin = sequence.k_begin;
    const int tq = sequence.tq, tk = sequence.tk;
    const int q0 = q_tile * k_block_q;
    if (q0 >= tq) return;  // uniform over the block: the grid covers the longest sequence
    const int rows = math::min(k_block_q, tq - q0);
    const int hk = h / (p.shape.q_heads / p.shape.kv_heads);  // GQA/MQA

    const mask_type mask(p.params, tq, tk);
    const score_type score(p.params, HeadDim);
    // Natural-log score per unit of x, and the factor that takes x to the exp2 domain.
    const float score_to_natural = score_type::is_linear ? static_cast<float>(score.scale()) : 1.0f;
    const float score_to_log2 = score_to_natural * k_log2e;

    Element* const q_smem = arch::dynamic_smem<Element>();
    Element* const k_smem = q_smem + k_tile_elements;
    Element* const v_smem = k_smem + 2 * k_tile_elements;

    const Element* const k_base = p.k + batch * p.k_stride[0] + hk * p.k_stride[2];
    const Element* const v_base = p.v + batch * p.v_stride[0] + hk * p.v_stride[2];
    const auto load_kv = [&](int k0, int stage) {
      const int valid = math::min(k_block_k, tk - k0);
      detail::load_tile<Element, HeadDim>(k_smem + stage * k_tile_elements, k_base, p.k_stride[1],
                                          k_begin + k0, valid, p.k);
      detail::load_tile<Element, HeadDim>(v_smem + stage * k_tile_elements, v_base, p.v_stride[1],
                                          k_begin + k0, valid, p.v);
    };

    // Keys any row of the tile may see: the hull of the rows' key ranges (host/forward.hpp).
    int hull_begin = 0x7fffffff, hull_end = 0;
    for (int t = q0; t < q0 + rows; ++t) {
      const key_span r = mask.key_range(t);
      if (r.empty()) continue;
      hull_begin = math::min(hull_begin, r.begin);
      hull_end = math::max(hull_end, r.end);
    }
    if (hull_begin >= hull_end) hull_begin = hull_end = 0;
    // The first key tile at or after k0 that the mask does not classify as empty (hull_end if
    // none). Every thread computes the same, so the pipeline's control flow is block-uniform.
    const auto tile_kind_at = [&](int k0) {
      return mask.tile_class(q0, q0 + rows, k0, k0 + math::min(k_block_k, tk - k0));
    };
    const auto next_tile = [&](int k0) {
      while (k0 < hull_end && tile_kind_at(k0) == tile_kind::empty) k0 += k_block_k;
      return k0;
    };

    // Prologue: Q (one group), then the first key tile (one group, possibly empty).
    detail::load_tile<Element, HeadDim>(q_smem, p.q + batch * p.q_stride[0] + h * p.q_stride[2],
                                        p.q_stride[1], q_begin + q0, rows, p.q);
    arch::cp_async_commit_group();
    int k0 = next_tile(hull_begin / k_block_k * k_block_k);
    if (k0 < hull_end) load_kv(k0, 0);
    arch::cp_async_commit_group();
    arch::cp_async_wait_group<1>();  // Q has landed (this thread's copies) ...
    arch::sync_block();              // ... and everyone's

    // Q as A fragments: lanes 0-15 address rows 0-15 of the warp's slice at column 16kk, lanes
    // 16-31 the same rows at 16kk + 8 (ldmatrix.hpp).
    std::uint32_t q_frag[k_d_steps][4];
    SINKMOE_ARCH_UNROLL
    for (int kk = 0; kk < k_d_steps; ++kk) {
      arch::ldmatrix_x4(
          q_frag[kk], q_smem + (warp * 16 + lane % 16) * k_row_stride + kk * 16 + (lane / 16) * 8);
    }

    // Per-thread row state for rows (group) and (group + 8) of the warp's slice: running max of
    // x, partial row sum over this thread's columns, first-key score (natural units).
    float acc_o[k_o_tiles][4];
    SINKMOE_ARCH_UNROLL
    for (int n = 0; n < k_o_tiles; ++n)
      acc_o[n][0] = acc_o[n][1] = acc_o[n][2] = acc_o[n][3] = 0.0f;
    float row_max[2] = {neg_inf, neg_inf};
    float row_sum[2] = {0.0f, 0.0f};
    float first_key[2] = {neg_inf, neg_inf};

    int stage = 0;
    while (k0 < hull_end) {
      const tile_kind kind = tile_kind_at(k0);
      const int cols = math::min(k_block_k, tk - k0);
      // Prefetch the next visited tile into the other stage (released by the barrier that
      // ended the previous iteration); an empty group keeps wait_group<1> uniform.
      const int k_next = next_tile(k0 + k_block_k);
      if (k_next < hull_end) load_kv(k_next, stage ^ 1);
      arch::cp_async_commit_group();
      arch::cp_async_wait_group<1>();  // tile k0 has landed
      arch::sync_block();
      const Element* const k_tile = k_smem + stage * k_tile_elements;
      const Element* const v_tile = v_smem + stage * k_tile_elements;

      // S = Q K^T. One ldmatrix.x4 gives the B fragments of two n-tiles (16 keys): matrices
      // (keys 0-7, d 0-7), (keys 0-7, d 8-15), (keys 8-15, d 0-7), (keys 8-15, d 8-15).
      float s[k_s_tiles][4];
      SINKMOE_ARCH_UNROLL
      for (int n = 0; n < k_s_tiles; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
      SINKMOE_ARCH_UNROLL
      for (int kk = 0; kk < k_d_steps; ++kk) {
        SINKMOE_ARCH_UNROLL
        for (int np = 0; np < k_s_tiles / 2; ++np) {
          std::uint32_t b[4];
          arch::ldmatrix_x4(b, k_tile + (np * 16 + lane % 8 + (lane / 16) * 8) * k_row_stride +
                                   kk * 16 + ((lane / 8) % 2) * 8);
          const std::uint32_t b_lo[2] = {b[0], b[1]};
          const std::uint32_t b_hi[2] = {b[2], b[3]};
          arch::mma_m16n8k16<Element>(s[2 * np], q_frag[kk], b_lo);
          arch::mma_m16n8k16<Element>(s[2 * np + 1], q_frag[kk], b_hi);
        }
      }

      // Score transform and masking. s[n][i]: row group + 8 (i / 2), key 8n + 2 quad_lane + i % 2.
      const bool partial = kind == tile_kind::partial;
      SINKMOE_ARCH_UNROLL
      for (int n = 0; n < k_s_tiles; ++n) {
        SINKMOE_ARCH_UNROLL
        for (int i = 0; i < 4; ++i) {
          const int col = n * 8 + 2 * quad_lane + (i % 2);
          const int t = q0 + warp * 16 + group + 8 * (i / 2);
          float x = s[n][i];
          if constexpr (!score_type::is_linear) x = score.transform(x);
          if (col >= cols || (partial && !mask.visible(t, k0 + col))) x = neg_inf;
          s[n][i] = x;
        }
      }
      if (k0 == 0 && quad_lane == 0) {  // vanilla's sink: key 0 (also feeds first_key_mass)
        first_key[0] = s[0][0] * score_to_natural;
        first_key[1] = s[0][2] * score_to_natural;
      }

      // Online softmax, per row: new max over the 4 lanes, rescale the old sum and O, P in fp32.
      SINKMOE_ARCH_UNROLL
      for (int r = 0; r < 2; ++r) {
        float tile_max = neg_inf;
        SINKMOE_ARCH_UNROLL
        for (int n = 0; n < k_s_tiles; ++n)
          tile_max = math::max(tile_max, math::max(s[n][2 * r], s[n][2 * r + 1]));
        tile_max = arch::warp_reduce_max<4>(tile_max);
        const float new_max = math::max(row_max[r], tile_max);
        // A row that has seen nothing yet keeps shift 0: exp2(-inf - 0) = 0, never NaN.
        const float shift = new_max == neg_inf ? 0.0f : new_max * score_to_log2;
        const float rescale = detail::exp2_approx(row_max[r] * score_to_log2 - shift);
        row_max[r] = new_max;
        float tile_sum = 0.0f;
        SINKMOE_ARCH_UNROLL
        for (int n = 0; n < k_s_tiles; ++n) {
          SINKMOE_ARCH_UNROLL
          for (int e = 0; e < 2; ++e) {
            const float prob = detail::exp2_approx(s[n][2 * r + e] * score_to_log2 - shift);
            s[n][2 * r + e] = prob;
            tile_sum += prob;
          }
        }
        row_sum[r] = row_sum[r] * rescale + tile_sum;
        SINKMOE_ARCH_UNROLL
        for (int n = 0; n < k_o_tiles; ++n) {
          acc_o[n][2 * r] *= rescale;
          acc_o[n][2 * r + 1] *= rescale;
        }
      }

      // O += P V. The S accumulators of n-tiles 2kc and 2kc+1 are exactly the A fragment of
      // keys [16kc, 16kc + 16); V's B fragments come from ldmatrix .trans (V is k-major).
      SINKMOE_ARCH_UNROLL
      for (int kc = 0; kc < k_s_tiles / 2; ++kc) {
        const std::uint32_t a[4] = {arch::pack2<Element>(s[2 * kc][0], s[2 * kc][1]),
                                    arch::pack2<Element>(s[2 * kc][2], s[2 * kc][3]),
                                    arch::pack2<Element>(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                                    arch::pack2<Element>(s[2 * kc + 1][2], s[2 * kc + 1][3])};
        SINKMOE_ARCH_UNROLL
        for (int dp = 0; dp < k_o_tiles / 2; ++dp) {
          std::uint32_t b[4];
          arch::ldmatrix_x4_trans(
              b, v_tile + (kc * 16 + lane % 8 + ((lane / 8) % 2) * 8) * k_row_stride + dp * 16 +
                     (lane / 16) * 8);
          const std::uint32_t b_lo[2] = {b[0], b[1]};
          const std::uint32_t b_hi[2] = {b[2], b[3]};
          arch::mma_m16n8k16<Element>(acc_o[2 * dp], a, b_lo);
          arch::mma_m16n8k16<Element>(acc_o[2 * dp + 1], a, b_hi);
        }
      }
      arch::sync_block();  // every warp is done with this stage before it is refilled
      k0 = k_next;
      stage ^= 1;
    }

    // Epilogue per row (paper.md section 2): add the sink once, normalise, gate, router value.
    // The output goes through the warp's own rows of the Q tile (no longer read) so that global
    // stores are 16-byte chunks of whole rows.
    SINKMOE_ARCH_UNROLL
    for (int r = 0; r < 2; ++r) {
      row_sum[r] = arch::warp_reduce_sum<4>(row_sum[r]);
      first_key[r] = arch::shfl_idx<4>(first_key[r], 0);
      const int row_local = warp * 16 + group + 8 * r;
      const bool valid = row_local < rows;
      const int t = q0 + row_local;
      const index_t row = q_begin + t;

      const bool empty_row = row_sum[r] == 0.0f;
      const float max_natural = row_max[r] * score_to_natural;
      const float lse_keys = empty_row ? neg_inf : max_natural + math::log(row_sum[r]);
      float sink_score = neg_inf;
      if constexpr (sink_type::has_logit)
        sink_score = sink_type::logit(p.params, p.sinks, p.sinks_stride, h);
      else if constexpr (sink_type::first_key_is_sink)
        sink_score = first_key[r];
      const sink::row_sink<float> rs = sink::finish_row<sink_type>(lse_keys, sink_score);
      const float normaliser = empty_row ? 0.0f : math::exp(max_natural - rs.lse_full);

      const Element* z_row = nullptr;
      float z_headwise = 0.0f;
      if constexpr (gate_type::enabled) {
        if (valid) {
          z_row = p.gate_logits + batch * p.gate_stride[0] + row * p.gate_stride[1] +
                  h * p.gate_stride[2];
          if constexpr (k_gate_dim == 1) z_headwise = arch::to_float(arch::load_global(z_row));
        }
      }
      float gate_value = 1.0f, gate_sum = 0.0f;
      Element* const staged = q_smem + row_local * k_row_stride;
      SINKMOE_ARCH_UNROLL
      for (int n = 0; n < k_o_tiles; ++n) {
        const int col = n * 8 + 2 * quad_lane;
        float slice[2] = {acc_o[n][2 * r] * normaliser, acc_o[n][2 * r + 1] * normaliser};
        float z[2] = {z_headwise, 0.0f};
        if constexpr (k_gate_dim == HeadDim) {
          if (z_row != nullptr) {
            z[0] = arch::to_float(arch::load_global(z_row + col));
            z[1] = arch::to_float(arch::load_global(z_row + col + 1));
          }
        }
        const float slice_value = gate_type::forward_row(slice, 2, z);
        if constexpr (k_gate_reduction == slice_reduction::channel_mean)
          gate_sum += 2.0f * slice_value;  // exact: forward_row returned (g0 + g1) / 2
        else
          gate_value = slice_value;
        arch::store_shared(reinterpret_cast<std::uint32_t*>(staged + col),
                           arch::pack2<Element>(slice[0], slice[1]));
      }
      if constexpr (k_gate_reduction == slice_reduction::channel_mean)
        gate_value = arch::warp_reduce_sum<4>(gate_sum) / static_cast<float>(HeadDim);

      if (valid && quad_lane == 0) {
        if (p.lse != nullptr)
          arch::store_global(
              p.lse + batch * p.lse_stride[0] + h * p.lse_stride[1] + row * p.lse_stride[2],
              rs.lse_full);
        if (p.router != nullptr)
          arch::store_global(p.router + batch * p.router_stride[0] + h * p.router_stride[1] +
                                 row * p.router_stride[2],
                             empty_row ? 0.0f : route_type::router(rs.complement, gate_value));
        if (p.first_key_mass != nullptr)
          arch::store_global(p.first_key_mass + batch * p.first_key_mass_stride[0] +
                                 h * p.first_key_mass_stride[1] + row * p.first_key_mass_stride[2],
                             math::exp_shifted(first_key[r], rs.lse_full));
      }
    }
    arch::sync_warp();  // the warp's staged rows are complete
    for (int i = lane; i < 16 * k_chunks_per_row; i += arch::k_warp_size) {
      const int row_local = warp * 16 + i / k_chunks_per_row, c = i % k_chunks_per_row;
      if (row_local >= rows) continue;
      Element* dst = p.out + batch * p.out_stride[0] +
                     static_cast<index_t>(q_begin + q0 + row_local) * p.out_stride[1] +
                     h * p.out_stride[2] + c * 8;
      arch::store_global(reinterpret_cast<detail::chunk16*>(dst),
                         arch::load_shared(reinterpret_cast<const detail::chunk16*>(
                             q_smem + row_local * k_row_stride + c * 8)));
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Host side: parameters and launch geometry (shared by the nvcc launcher and the emulated tests)
// ---------------------------------------------------------------------------------------------

namespace detail {

/// Each row of a [B, T, H, D] view must start `bytes`-aligned for the vector accesses of this
/// path (`what`): aligned data, B/T/H strides multiples of bytes / sizeof(T) elements. A view the
/// kernels cannot serve is refused here, before a misaligned access could fault on the GPU.
template <class T>
void require_aligned_rows(const char* name, const tensor_view<T, 4>& view, std::size_t bytes,
                          const char* what) {
  const index_t elements = static_cast<index_t>(bytes / sizeof(T));
  sinkmoe::detail::require(reinterpret_cast<std::uintptr_t>(view.data) % bytes == 0, name,
                           ": data must be ", bytes, "-byte aligned for exec::cuda (", what, ")");
  for (int dim = 0; dim < 3; ++dim) {
    sinkmoe::detail::require(view.shape[dim] <= 1 || view.stride[dim] % elements == 0, name,
                             ": stride ", view.stride, " must be a multiple of ", elements,
                             " elements (", bytes,
                             " bytes) on the B, T and H dimensions for exec::cuda (", what, ")");
  }
}

/// Q, K, V are read with 16-byte cp.async and rows of out, dQ, dK, dV written in 16-byte chunks.
template <class T>
void require_rows_16_byte_aligned(const char* name, const tensor_view<T, 4>& view) {
  require_aligned_rows(name, view, 16, "16-byte cp.async and stores");
}

/// An elementwise gate's d(gate logits) is written two elements at a time (32-bit stores).
template <class T>
void require_pairs_4_byte_aligned(const char* name, const tensor_view<T, 4>& view) {
  require_aligned_rows(name, view, 4, "2-element stores");
}

template <class T, int R>
void copy_strides(const tensor_view<T, R>& view, index_t (&out)[3]) {
  for (int i = 0; i < 3; ++i) out[i] = view.empty() ? 0 : view.stride[i];
}

}  // namespace detail

/// Kernel parameters from validated forward arguments (pointers where the kernel runs).
/// Throws sinkmoe::error when a row of Q, K, V or out is not 16-byte aligned.
template <arch::half_precision Element>
forward_params<Element> make_forward_params(const forward_args<Element>& a,
                                            const problem_shape& shape) {
  detail::require_rows_16_byte_aligned("forward_args.q", a.q);
  detail::require_rows_16_byte_aligned("forward_args.k", a.k);
  detail::require_rows_16_byte_aligned("forward_args.v", a.v);
  detail::require_rows_16_byte_aligned("forward_args.out", a.out);
  forward_params<Element> p{};
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
  p.router = a.router.data;
  detail::copy_strides(a.router, p.router_stride);
  p.first_key_mass = a.first_key_mass.data;
  detail::copy_strides(a.first_key_mass, p.first_key_mass_stride);
  p.cu_seqlens_q = a.varlen.cu_seqlens_q;
  p.cu_seqlens_k = a.varlen.cu_seqlens_k;
  p.shape = shape;
  p.params = a.params;
  return p;
}

/// Grid, block and dynamic shared memory of one launch.
struct launch_geometry {
  arch::index3 grid;
  arch::index3 block;
  std::size_t smem_bytes;
  /// False when there is no query row at all (nothing to launch).
  [[nodiscard]] bool empty() const { return grid.x == 0; }
};

/// Launch geometry of forward_kernel<Attn, Element, HeadDim> for a validated problem whose
/// longest sequence has max_tq query rows (Tq without varlen).
template <class Kernel>
launch_geometry forward_launch_geometry(const problem_shape& shape, int max_tq) {
  sinkmoe::detail::require(shape.q_heads <= 65535 && shape.num_seqs <= 65535,
                           "forward: Hq = ", shape.q_heads, ", sequences = ", shape.num_seqs,
                           ": exec::cuda launches at most 65535 of each");
  const unsigned q_tiles = static_cast<unsigned>((max_tq + k_block_q - 1) / k_block_q);
  return {arch::index3(q_tiles, static_cast<unsigned>(shape.q_heads),
                       static_cast<unsigned>(shape.num_seqs)),
          arch::index3(k_threads), Kernel::smem_bytes};
}

/// The head dims the fused forward is instantiated for (the one runtime-to-compile-time
/// dispatch of the CUDA backend, design.md section 3): calls f(std::integral_constant<int, D>)
/// for head_dim D in {64, 128}; any other head dim throws sinkmoe::error naming it and the list.
template <class F>
void dispatch_head_dim(int head_dim, F&& f) {
  switch (head_dim) {
    case 64:
      f(std::integral_constant<int, 64>{});
      return;
    case 128:
      f(std::integral_constant<int, 128>{});
      return;
    default:
      throw error(sinkmoe::detail::concat(
          "forward_args.q: head_dim = ", head_dim,
          " is not instantiated for exec::cuda (instantiated head dims: 64, 128)"));
  }
}

/// Longest query sequence of a validated problem whose cu_seqlens (if any) are host pointers.
inline int max_query_rows(const problem_shape& shape, const varlen_batch& varlen) {
  if (!varlen.enabled()) return shape.tq;
  int longest = 0;
  for (int s = 0; s < varlen.num_seqs; ++s)
    longest = math::max(longest, varlen.cu_seqlens_q[s + 1] - varlen.cu_seqlens_q[s]);
  return longest;
}

}  // namespace sinkmoe::fused
