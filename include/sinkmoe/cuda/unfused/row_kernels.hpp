#pragma once
// Row kernels of the unfused attention path (docs/design.md section 5): everything between the
// GEMMs of unfused/algorithm.hpp, written only against the primitive layer sinkmoe::arch and the
// policy hooks (the single semantic source shared with host/forward.hpp and host/backward.hpp),
// so that the same source runs on the GPU (nvcc, arch::launch) and in the host emulation of the
// tests (g++, arch::emulated_launch).
//
// A launch works on one chunk of one sequence: query rows [q0, q0 + rows) of batch entry b, and
// the key columns [key_begin, key_begin + key_count) the chunk may see (the hull of the rows'
// Mask::key_range). Per-chunk buffers are [Hq][rows][ld] (scores, probabilities) or
// [Hq][rows][D] (O, dO) in workspace memory; "row id" = h * rows + r.
//
//   forward_rows_kernel      warp per row: S -> Score::transform, Mask::visible, two-pass
//                            softmax over real keys, the sink added once by sink::finish_row,
//                            P = exp(s - lse_full) rounded to Element (already normalised, so
//                            O = P V needs no rescaling), row statistics (docs/method.md section 2)
//   forward_epilogue_kernel  thread per row: Gate::forward_row on the fp32 O row, out, lse,
//                            router value (Route::router), first-key mass
//   backward_rows_kernel     thread per row (docs/method.md section 5): Gate::backward_row (dO and
//                            d gate logits), Delta, D = sink::row_term(...), the vanilla key-0
//                            term, one d(sink) term per row (sink::logit_grad)
//   backward_scores_kernel   warp per row: P recomputed from the saved lse, dS = P (dP - D)
//                            (minus the vanilla key-0 term), times Score::derivative, P and dS
//                            rounded to Element for the GEMMs
//   dsinks_kernel            block per head: fixed-order sum of the per-row d(sink) terms
//   zero_matrix_kernel, store_accumulator_kernel   fills and fp32 -> Element stores
//
// The thread-per-row kernels call the gate hooks on whole fp32 rows staged in workspace memory,
// so any gate policy that follows the contract of policy/gate.hpp works unchanged.

#include <cstdint>
#include <sinkmoe/args.hpp>
#include <sinkmoe/core/numeric.hpp>
#include <sinkmoe/cuda/arch/arch.hpp>
#include <sinkmoe/params.hpp>
#include <sinkmoe/policy/mask.hpp>
#include <sinkmoe/policy/rowwise.hpp>
#include <sinkmoe/policy/sink.hpp>
#include <sinkmoe/policy/tiles.hpp>

namespace sinkmoe::unfused {

inline constexpr int k_row_warps = 4;  ///< warps (rows) per block of the warp-per-row kernels
inline constexpr int k_row_threads = k_row_warps * arch::k_warp_size;
inline constexpr int k_thread_rows = 128;          ///< rows per block of the thread-per-row kernels
inline constexpr int k_elementwise_threads = 256;  ///< threads per block of the fill kernels
inline constexpr int k_reduce_threads = 256;       ///< threads per block of dsinks_kernel

/// What the forward rows kernel learned about a row, for the epilogue.
struct row_stats {
  float lse;             ///< log-sum-exp over visible keys and the sink, base e
  float complement;      ///< 1 - A (sink mass)
  float first_key_mass;  ///< P[t, key 0]
  int empty;             ///< 1 when the row sees no key
};

/// The chunk a launch works on (header comment).
struct chunk_geometry {
  int batch = 0;      ///< b
  int q0 = 0;         ///< first query row of the chunk, within its sequence
  int rows = 0;       ///< query rows in the chunk
  int key_begin = 0;  ///< first key column held in the [Hq][rows][ld] buffers, in the sequence
  int key_count = 0;  ///< key columns held
  index_t ld = 0;     ///< row stride of those buffers, in elements
  int q_offset = 0;   ///< tensor row of the sequence's first query row (varlen, left padding)
  int k_offset = 0;   ///< tensor row of the sequence's first key
  int seq_tq = 0;     ///< the sequence's query rows and keys (what its mask sees)
  int seq_tk = 0;
  [[nodiscard]] SINKMOE_HD int total_rows(int q_heads) const { return q_heads * rows; }
};

/// Strides {b, t, h} of a [B, T, H, D] tensor, or {b, h, t} of a [B, H, T] one (0 when absent).
struct strides3 {
  index_t s[3] = {0, 0, 0};
  [[nodiscard]] SINKMOE_HD index_t at(index_t i0, index_t i1, index_t i2) const {
    return i0 * s[0] + i1 * s[1] + i2 * s[2];
  }
};

template <class T, int R>
strides3 strides_of(const tensor_view<T, R>& view) {
  strides3 r;
  if (!view.empty())
    for (int i = 0; i < 3; ++i) r.s[i] = view.stride[i];
  return r;
}

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------

template <class Element>
struct forward_rows_params {
  float* scores;       ///< [Hq][rows][ld] raw q.k (GEMM output); rewritten as masked logits
  Element* probs;      ///< [Hq][rows][ld] P, the A operand of O = P V
  row_stats* stats;    ///< [Hq][rows]
  const float* sinks;  ///< sink::learned: [Hq]
  index_t sinks_stride;
  problem_shape shape;
  attention_params params;
  chunk_geometry chunk;
};

/// Softmax rows of one chunk, a warp per row (file comment). Logits stay fp32; P is rounded to
/// Element once (as the fused kernel and FlashAttention do before P V).
template <class Attn, class Element>
struct forward_rows_kernel {
  using sink_type = typename Attn::sink_type;
  using mask_type = typename Attn::mask_type;
  using score_type = typename Attn::score_type;
  static constexpr int k_max_threads = k_row_threads;
  static constexpr int k_min_blocks = 1;

  SINKMOE_DEVICE void operator()(const forward_rows_params<Element>& p) const {
    const float neg_inf = math::neg_inf<float>();
    const chunk_geometry& c = p.chunk;
    const int row_id = static_cast<int>(arch::block_index().x) * k_row_warps + arch::warp_id();
    if (row_id >= c.total_rows(p.shape.q_heads)) return;  // warp-uniform
    const int lane = arch::lane_id();
    const int h = row_id / c.rows;
    const int t = c.q0 + row_id % c.rows;
    const mask_type mask(p.params, c.seq_tq, c.seq_tk);
    const score_type score(p.params, p.shape.head_dim);
    float* const s = p.scores + static_cast<index_t>(row_id) * c.ld;
    Element* const prob = p.probs + static_cast<index_t>(row_id) * c.ld;

    // Pass 1: logits (transform, mask) and the row maximum.
    float row_max = neg_inf;
    for (int col = lane; col < c.key_count; col += arch::k_warp_size) {
      float x = score.transform(arch::load_global(s + col));
      if (!mask.visible(t, c.key_begin + col)) x = neg_inf;
      arch::store_global(s + col, x);
      row_max = math::max(row_max, x);
    }
    row_max = arch::warp_reduce_max(row_max);
    // Pass 2: sum over real keys; a row that sees nothing keeps sum 0 (never NaN).
    float row_sum = 0.0f;
    if (row_max != neg_inf)
      for (int col = lane; col < c.key_count; col += arch::k_warp_size)
        row_sum += math::exp(arch::load_global(s + col) - row_max);
    row_sum = arch::warp_reduce_sum(row_sum);

    // Vanilla's sink is key 0 (its logit after masking; -inf when hidden or not held).
    float first_key = neg_inf;
    if (lane == 0 && c.key_begin == 0 && c.key_count > 0) first_key = arch::load_global(s);
    first_key = arch::shfl_idx(first_key, 0);
    const float sink_score =
        rowwise::sink_score<sink_type>(p.params, p.sinks, p.sinks_stride, h, first_key);
    const rowwise::forward_row<float> fr =
        rowwise::finish_forward_row<sink_type>(row_max, row_sum, sink_score);
    const bool empty_row = fr.empty;

    // Pass 3: P = exp(s - lse_full), the sink's share left out (it has no value).
    for (int col = lane; col < c.key_count; col += arch::k_warp_size)
      arch::store_global(prob + col,
                         arch::from_float<Element>(
                             empty_row ? 0.0f : math::exp(arch::load_global(s + col) - fr.lse)));
    if (lane == 0) {
      arch::store_global(&p.stats[row_id].lse, fr.lse);
      arch::store_global(&p.stats[row_id].complement, fr.sink_complement);
      arch::store_global(&p.stats[row_id].first_key_mass, math::exp_shifted(first_key, fr.lse));
      arch::store_global(&p.stats[row_id].empty, empty_row ? 1 : 0);
    }
  }
};

template <class Element>
struct forward_epilogue_params {
  const float* o;    ///< [Hq][rows][D] normalised O (GEMM output)
  float* o_scratch;  ///< [Hq][rows][D] O, then gated in place by the gate hook
  float* z_scratch;  ///< [Hq][rows][gate_dim] gate logits as fp32 (null without a gate)
  const row_stats* stats;
  const Element* gate_logits;
  strides3 gate_stride;
  Element* out;
  strides3 out_stride;
  float* lse;  ///< optional outputs: null when not requested
  strides3 lse_stride;
  float* router;
  strides3 router_stride;
  float* first_key_mass;
  strides3 first_key_mass_stride;
  problem_shape shape;
  chunk_geometry chunk;
};

/// Output epilogue, a thread per row: out = Gate(O), lse, G = Route::router(1 - A, gate value)
/// (0 for an empty row), first-key mass.
template <class Attn, class Element>
struct forward_epilogue_kernel {
  using gate_type = typename Attn::gate_type;
  using route_type = typename Attn::route_type;
  static constexpr int k_max_threads = k_thread_rows;
  static constexpr int k_min_blocks = 1;

  SINKMOE_DEVICE void operator()(const forward_epilogue_params<Element>& p) const {
    const chunk_geometry& c = p.chunk;
    const int row_id =
        static_cast<int>(arch::block_index().x) * k_thread_rows + arch::thread_rank();
    if (row_id >= c.total_rows(p.shape.q_heads)) return;
    const int d = p.shape.head_dim, dg = p.shape.gate_dim;
    const int h = row_id / c.rows;
    const int t = c.q0 + row_id % c.rows;  // in the sequence; its tensor row:
    const int row = c.q_offset + t;
    const int b = c.batch;
    // The gate hook works on a copy of the row: the kernel leaves its inputs as they were.
    const float* const o_in = p.o + static_cast<index_t>(row_id) * d;
    float* const o_row = p.o_scratch + static_cast<index_t>(row_id) * d;
    for (int i = 0; i < d; ++i) arch::store_global(o_row + i, arch::load_global(o_in + i));
    float* z = nullptr;
    if constexpr (gate_type::enabled) {
      z = p.z_scratch + static_cast<index_t>(row_id) * dg;
      const Element* z_src = p.gate_logits + p.gate_stride.at(b, row, h);
      for (int i = 0; i < dg; ++i)
        arch::store_global(z + i, arch::to_float(arch::load_global(z_src + i)));
    }
    // (plain accesses of the workspace row inside the hook)
    const float gate_value = gate_type::forward_row(o_row, d, z);
    Element* const out_row = p.out + p.out_stride.at(b, row, h);
    for (int i = 0; i < d; ++i)
      arch::store_global(out_row + i, arch::from_float<Element>(arch::load_global(o_row + i)));
    const row_stats* st = p.stats + row_id;
    if (p.lse != nullptr)
      arch::store_global(p.lse + p.lse_stride.at(b, h, row), arch::load_global(&st->lse));
    if (p.router != nullptr)
      arch::store_global(p.router + p.router_stride.at(b, h, row),
                         arch::load_global(&st->empty) != 0
                             ? 0.0f
                             : route_type::router(arch::load_global(&st->complement), gate_value));
    if (p.first_key_mass != nullptr)
      arch::store_global(p.first_key_mass + p.first_key_mass_stride.at(b, h, row),
                         arch::load_global(&st->first_key_mass));
  }
};

// ---------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------

template <class Element>
struct backward_rows_params {
  const Element* dout;
  strides3 dout_stride;
  const Element* out;
  strides3 out_stride;
  const Element* gate_logits;
  strides3 gate_stride;
  Element* dgate_logits;
  strides3 dgate_stride;
  const Element* q;  ///< vanilla: the key-0 score is recomputed from q and k
  strides3 q_stride;
  const Element* k;
  strides3 k_stride;
  const float* sinks;
  index_t sinks_stride;
  const float* lse;
  strides3 lse_stride;
  const float* drouter;  ///< optional (null: 0)
  strides3 drouter_stride;
  const float* dlse;  ///< optional (null: 0)
  strides3 dlse_stride;
  float* dy_scratch;    ///< [Hq][rows][D] fp32 rows for the gate hook
  float* y_scratch;     ///< [Hq][rows][D]
  float* do_scratch;    ///< [Hq][rows][D]
  float* z_scratch;     ///< [Hq][rows][gate_dim] (null without a gate)
  float* dz_scratch;    ///< [Hq][rows][gate_dim]
  Element* d_attn_out;  ///< [Hq][rows][D] dO rounded to Element: the operand of dV and dP
  float* row_term;      ///< [Hq][rows] D = Delta - gbar_sink A - dLSE
  float* key0_term;     ///< [Hq][rows] gbar_sink A (vanilla only, else 0)
  float* dsink_rows;    ///< [Hq][B * Tq] per-row d(sink) terms (trainable sinks), else null
  problem_shape shape;
  attention_params params;
  chunk_geometry chunk;
};

/// Backward row preprocess, a thread per row (docs/method.md section 5; host/backward.hpp step 1).
template <class Attn, class Element>
struct backward_rows_kernel {
  using sink_type = typename Attn::sink_type;
  using gate_type = typename Attn::gate_type;
  using mask_type = typename Attn::mask_type;
  using route_type = typename Attn::route_type;
  using score_type = typename Attn::score_type;
  static constexpr int k_max_threads = k_thread_rows;
  static constexpr int k_min_blocks = 1;

  SINKMOE_DEVICE void operator()(const backward_rows_params<Element>& p) const {
    const float neg_inf = math::neg_inf<float>();
    const chunk_geometry& c = p.chunk;
    const int row_id =
        static_cast<int>(arch::block_index().x) * k_thread_rows + arch::thread_rank();
    if (row_id >= c.total_rows(p.shape.q_heads)) return;
    const int d = p.shape.head_dim, dg = p.shape.gate_dim;
    const int h = row_id / c.rows;
    const int t = c.q0 + row_id % c.rows;  // in the sequence; its tensor row:
    const int row = c.q_offset + t;
    const int b = c.batch;
    const int hk = h / (p.shape.q_heads / p.shape.kv_heads);  // GQA
    const mask_type mask(p.params, c.seq_tq, c.seq_tk);
    const score_type score(p.params, d);
    const bool empty_row = !row_has_visible_key(mask, t);
    const float lse = arch::load_global(p.lse + p.lse_stride.at(b, h, row));

    float key0_score = neg_inf;  // vanilla's sink: the score of key 0, where visible
    if constexpr (sink_type::first_key_is_sink) {
      if (c.seq_tk > 0 && mask.visible(t, 0)) {
        const Element* q_row = p.q + p.q_stride.at(b, row, h);
        const Element* k_row = p.k + p.k_stride.at(b, c.k_offset, hk);
        float dot = 0.0f;
        for (int i = 0; i < d; ++i)
          dot += arch::to_float(arch::load_global(q_row + i)) *
                 arch::to_float(arch::load_global(k_row + i));
        key0_score = score.transform(dot);
      }
    }
    const float sink_score =
        rowwise::sink_score<sink_type>(p.params, p.sinks, p.sinks_stride, h, key0_score);

    float* const dy = p.dy_scratch + static_cast<index_t>(row_id) * d;
    float* const y = p.y_scratch + static_cast<index_t>(row_id) * d;
    float* const d_o = p.do_scratch + static_cast<index_t>(row_id) * d;
    float* z = nullptr;
    float* dz = nullptr;
    if constexpr (gate_type::enabled) {
      z = p.z_scratch + static_cast<index_t>(row_id) * dg;
      dz = p.dz_scratch + static_cast<index_t>(row_id) * dg;
      const Element* z_src = p.gate_logits + p.gate_stride.at(b, row, h);
      for (int i = 0; i < dg; ++i)
        arch::store_global(z + i, arch::to_float(arch::load_global(z_src + i)));
    }
    const float gate_value = gate_type::router_value(z, d);
    const float gbar = (p.drouter == nullptr || empty_row)
                           ? 0.0f
                           : arch::load_global(p.drouter + p.drouter_stride.at(b, h, row));
    const float dlse =
        p.dlse == nullptr ? 0.0f : arch::load_global(p.dlse + p.dlse_stride.at(b, h, row));

    const Element* dout_row = p.dout + p.dout_stride.at(b, row, h);
    const Element* out_row = p.out + p.out_stride.at(b, row, h);
    float delta = 0.0f;
    for (int i = 0; i < d; ++i) {
      const float dy_i = arch::to_float(arch::load_global(dout_row + i));
      const float y_i = arch::to_float(arch::load_global(out_row + i));
      arch::store_global(dy + i, dy_i);
      arch::store_global(y + i, y_i);
      delta += dy_i * y_i;  // sum_c dO_c O_c = sum_c dY_c Y_c for every gate
    }
    const rowwise::backward_row<float> br = rowwise::backward_row_terms<sink_type, route_type>(
        delta, lse, sink_score, gate_value, gbar, dlse);
    // The gate hook works on the fp32 rows (plain accesses of the workspace rows).
    gate_type::backward_row(dy, y, d_o, d, z, br.gbar_gate, dz);
    Element* const d_attn_out = p.d_attn_out + static_cast<index_t>(row_id) * d;
    for (int i = 0; i < d; ++i)
      arch::store_global(d_attn_out + i, arch::from_float<Element>(arch::load_global(d_o + i)));
    if constexpr (gate_type::enabled) {
      Element* dz_dst = p.dgate_logits + p.dgate_stride.at(b, row, h);
      for (int i = 0; i < dg; ++i)
        arch::store_global(dz_dst + i, arch::from_float<Element>(arch::load_global(dz + i)));
    }
    arch::store_global(p.row_term + row_id, br.row_term);
    arch::store_global(p.key0_term + row_id, br.key0_term);
    if constexpr (sink_type::trainable)
      arch::store_global(p.dsink_rows + static_cast<index_t>(h) * p.shape.batch * p.shape.tq +
                             static_cast<index_t>(b) * p.shape.tq + row,
                         br.dsink);
  }
};

template <class Element>
struct backward_scores_params {
  const float* scores;  ///< [Hq][rows][ld] raw q.k (GEMM output)
  const float* dp;      ///< [Hq][rows][ld] dP = dO V^T (GEMM output)
  Element* probs;       ///< [Hq][rows][ld] P for dV = P^T dO
  Element* ds;          ///< [Hq][rows][ld] dS d(s)/d(q.k) for dQ and dK
  const float* lse;
  strides3 lse_stride;
  const float* row_term;
  const float* key0_term;
  problem_shape shape;
  attention_params params;
  chunk_geometry chunk;
};

/// dS rows, a warp per row: P = exp(s - lse) on visible keys, dS = P (dP - D), the vanilla
/// sink's -gbar A on key 0 (docs/method.md section 5), times Score::derivative (the scale for a
/// linear score, so dQ = dS K and dK = dS^T Q need no further factor).
template <class Attn, class Element>
struct backward_scores_kernel {
  using sink_type = typename Attn::sink_type;
  using mask_type = typename Attn::mask_type;
  using score_type = typename Attn::score_type;
  static constexpr int k_max_threads = k_row_threads;
  static constexpr int k_min_blocks = 1;

  SINKMOE_DEVICE void operator()(const backward_scores_params<Element>& p) const {
    const chunk_geometry& c = p.chunk;
    const int row_id = static_cast<int>(arch::block_index().x) * k_row_warps + arch::warp_id();
    if (row_id >= c.total_rows(p.shape.q_heads)) return;
    const int lane = arch::lane_id();
    const int h = row_id / c.rows;
    const int t = c.q0 + row_id % c.rows;
    const mask_type mask(p.params, c.seq_tq, c.seq_tk);
    const score_type score(p.params, p.shape.head_dim);
    const float lse = arch::load_global(p.lse + p.lse_stride.at(c.batch, h, c.q_offset + t));
    const float row_term = arch::load_global(p.row_term + row_id);
    const float key0_term = arch::load_global(p.key0_term + row_id);
    const index_t at = static_cast<index_t>(row_id) * c.ld;
    for (int col = lane; col < c.key_count; col += arch::k_warp_size) {
      const int j = c.key_begin + col;
      const float raw = arch::load_global(p.scores + at + col);
      const float prob = mask.visible(t, j) ? math::exp(score.transform(raw) - lse) : 0.0f;
      float ds = prob * (arch::load_global(p.dp + at + col) - row_term);
      if constexpr (sink_type::first_key_is_sink)
        if (j == 0 && prob != 0.0f) ds -= key0_term;
      ds *= score.derivative(raw);
      arch::store_global(p.probs + at + col, arch::from_float<Element>(prob));
      arch::store_global(p.ds + at + col, arch::from_float<Element>(ds));
    }
  }
};

struct dsinks_params {
  const float* dsink_rows;  ///< [Hq][count]
  index_t count;            ///< B * Tq
  float* dsinks;
  index_t dsinks_stride;
};

/// d(sink logit) per head: block h sums its row terms in a fixed order (a strided per-thread
/// sum, then a shared-memory tree), so the result does not depend on scheduling.
struct dsinks_kernel {
  static constexpr int k_max_threads = k_reduce_threads;
  static constexpr int k_min_blocks = 1;
  static constexpr std::size_t smem_bytes = k_reduce_threads * sizeof(float);

  SINKMOE_DEVICE void operator()(const dsinks_params& p) const {
    const int h = static_cast<int>(arch::block_index().x);
    const int rank = arch::thread_rank();
    float* const partial = arch::dynamic_smem<float>();
    const float* rows = p.dsink_rows + static_cast<index_t>(h) * p.count;
    float sum = 0.0f;
    for (index_t i = rank; i < p.count; i += k_reduce_threads) sum += arch::load_global(rows + i);
    arch::store_shared(partial + rank, sum);
    arch::sync_block();
    for (int half = k_reduce_threads / 2; half > 0; half /= 2) {
      if (rank < half)
        arch::store_shared(partial + rank, arch::load_shared(partial + rank) +
                                               arch::load_shared(partial + rank + half));
      arch::sync_block();
    }
    if (rank == 0)
      arch::store_global(p.dsinks + static_cast<index_t>(h) * p.dsinks_stride,
                         arch::load_shared(partial));
  }
};

// ---------------------------------------------------------------------------------------------
// Fills and stores
// ---------------------------------------------------------------------------------------------

template <class T>
struct zero_matrix_params {
  T* d;
  int batch, rows, cols;
  index_t ld, batch_stride;
};

/// D[b][r][c] = 0 over a strided batch of matrices (grid-stride loop).
template <class T>
struct zero_matrix_kernel {
  SINKMOE_DEVICE void operator()(const zero_matrix_params<T>& p) const {
    const index_t total = static_cast<index_t>(p.batch) * p.rows * p.cols;
    const index_t step = static_cast<index_t>(arch::grid_dim().x) * k_elementwise_threads;
    for (index_t i = static_cast<index_t>(arch::block_index().x) * k_elementwise_threads +
                     arch::thread_rank();
         i < total; i += step) {
      const index_t col = i % p.cols, row = (i / p.cols) % p.rows, b = i / p.cols / p.rows;
      arch::store_global(p.d + b * p.batch_stride + row * p.ld + col, arch::from_float<T>(0.0f));
    }
  }
};

template <class Element>
struct store_accumulator_params {
  const float* acc;  ///< [Hkv][Tk][D] fp32
  Element* dst;      ///< [B, Tk, Hkv, D] at batch entry `batch`
  strides3 dst_stride;
  int batch, tk, kv_heads, head_dim;
};

/// dst(b, j, hk, c) = Element(acc[hk][j][c]) (grid-stride loop).
template <class Element>
struct store_accumulator_kernel {
  SINKMOE_DEVICE void operator()(const store_accumulator_params<Element>& p) const {
    const index_t total = static_cast<index_t>(p.kv_heads) * p.tk * p.head_dim;
    const index_t step = static_cast<index_t>(arch::grid_dim().x) * k_elementwise_threads;
    for (index_t i = static_cast<index_t>(arch::block_index().x) * k_elementwise_threads +
                     arch::thread_rank();
         i < total; i += step) {
      const index_t col = i % p.head_dim, j = (i / p.head_dim) % p.tk, hk = i / p.head_dim / p.tk;
      arch::store_global(p.dst + p.dst_stride.at(p.batch, j, hk) + col,
                         arch::from_float<Element>(arch::load_global(p.acc + i)));
    }
  }
};

}  // namespace sinkmoe::unfused
