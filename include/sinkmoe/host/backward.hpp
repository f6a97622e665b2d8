#pragma once
// CPU backward (docs/method.md section 5), FlashAttention-2 structure:
//  1. row preprocess per (sequence, query head): gate backward (dO, d gate logits), Delta,
//     the row term D = Delta - gbar_sink A - dLSE, the vanilla key-0 term, the d(sink) terms;
//     Q, Q^T, dO and dO^T staged per query tile;
//  2. per (key tile, query tile) pair: recompute P from the saved LSE, dS = P (dP - D),
//     dV += P^T dO, dK += dS^T Q, dQ += dS K;
//  3. deterministic reductions: dK/dV over the GQA group and d(sinks) over sequences, each in a
//     fixed order, so results do not depend on the thread count.
//
// As in the forward, scores are transposed (S^T = K Q^T, dP^T = V dO^T: keys by rows, queries
// by vector lanes), so P and dS come from lane-wise operations with the row statistics as
// vectors, and the five tile products read their operands without transposing a tile.
//
// Two schedules give bitwise the same results (each gradient tile sums the same products in the
// same order): with at least as many (sequence, head) pairs as threads, one task per pair walks
// key tiles outer and query tiles inner (five tile products per pair); with fewer, the work is
// split across key tiles (dK, dV) and then across query tiles (dQ, recomputing S and dP: seven
// products), so that a single long sequence still uses every thread.

#include <algorithm>
#include <cstdint>
#include <sinkmoe/args.hpp>
#include <sinkmoe/core/numeric.hpp>
#include <sinkmoe/exec.hpp>
#include <sinkmoe/host/forward.hpp>
#include <sinkmoe/host/parallel.hpp>
#include <sinkmoe/host/tile_ops.hpp>
#include <sinkmoe/host/workspace.hpp>
#include <sinkmoe/policy/rowwise.hpp>
#include <sinkmoe/policy/sink.hpp>
#include <sinkmoe/policy/tiles.hpp>
#include <vector>

namespace sinkmoe::host {

namespace detail {

/// What the pair loop needs of one (sequence, query head), staged by the row preprocess:
/// per query tile q (BQ rows, zero-padded), Q and dO by rows and transposed, and the row
/// statistics padded so that rows past the end give P = 0 (lse = +inf) and dS = 0.
template <class F, int BQ>
struct staged_rows {
  int tiles = 0, dp = 0;
  F* q = nullptr;        // [tiles][BQ][dp], scaled by a linear score's scale
  F* qt = nullptr;       // [tiles][dp][BQ]
  F* d_out = nullptr;    // [tiles][BQ][dp]: dO of the ungated output
  F* d_out_t = nullptr;  // [tiles][dp][BQ]
  F* lse = nullptr;      // [tiles * BQ]
  F* row_term = nullptr;
  F* key0_term = nullptr;

  void allocate(scratch_frame& scratch, int tq, int dp_) {
    tiles = (tq + BQ - 1) / BQ;
    dp = dp_;
    const std::size_t tile = static_cast<std::size_t>(BQ) * dp, n = tiles * tile;
    q = scratch.take<F>(4 * n);
    qt = q + n;
    d_out = qt + n;
    d_out_t = d_out + n;
    lse = scratch.take<F>(3 * static_cast<std::size_t>(tiles) * BQ);
    row_term = lse + tiles * BQ;
    key0_term = row_term + tiles * BQ;
  }
  [[nodiscard]] std::size_t tile_offset(int qt_index) const {
    return static_cast<std::size_t>(qt_index) * BQ * dp;
  }
};

/// P^T and dS^T of one (key tile, query tile) pair from S^T (in st) and dP^T (in dpt): st
/// becomes P^T, dpt becomes dS^T. A linear score runs on vectors, masked entries and keys past
/// the end set to -inf first; a soft-cap goes element by element. Masked entries get P = 0.
template <int BK, int BQ, class Sink, class Score, class Mask, class F>
void pair_probabilities(F* st, F* dpt, const F* lse, const F* row_term, const F* key0_term,
                        const Mask& mask, const Score& score, int q0, int rows, int k0, int cols,
                        tile_kind kind) {
  // Key 0's raw dots and dP, kept for the vanilla sink's term below (the passes overwrite them).
  F raw0[BQ], dp0[BQ];
  const bool key0_term_here = Sink::first_key_is_sink && k0 == 0;
  if (key0_term_here) {
    std::copy_n(st, BQ, raw0);
    std::copy_n(dpt, BQ, dp0);
  }
  if constexpr (Score::is_linear) {
    // Masked entries and keys past the end become -inf, so that the vector pass gives them
    // P = 0 and dS = 0 (rows past the end and rows without a visible key have lse = +inf).
    if (kind == tile_kind::partial) mask_tile<BQ>(mask, q0, rows, k0, cols, st);
    std::fill(st + cols * BQ, st + BK * BQ, math::neg_inf<F>());
    softmax_grad_columns<BK, BQ>(st, dpt, lse, row_term);
  } else {
    for (int j = 0; j < BK; ++j) {
      for (int i = 0; i < BQ; ++i) {
        const bool live =
            j < cols && i < rows && (kind == tile_kind::full || mask.visible(q0 + i, k0 + j));
        const F raw = st[j * BQ + i];
        const F p = live ? exp_fast(score.transform(raw) - lse[i]) : F(0);
        st[j * BQ + i] = p;
        dpt[j * BQ + i] = live ? p * (dpt[j * BQ + i] - row_term[i]) * score.derivative(raw) : F(0);
      }
    }
  }
  // The vanilla sink adds -gbar A on key 0 (docs/method.md section 5); a soft-cap then
  // multiplies by ds/d(dot) as elsewhere.
  if (key0_term_here) {
    for (int i = 0; i < rows; ++i) {
      const F p = st[i];
      if (p == F(0)) continue;
      F ds = p * (dp0[i] - row_term[i]) - key0_term[i];
      if constexpr (!Score::is_linear) ds *= score.derivative(raw0[i]);
      dpt[i] = ds;
    }
  }
}

}  // namespace detail

/// Backward pass of Attn on the CPU. Arguments are already validated.
template <class Attn, class T>
void backward(const exec::host& ex, const forward_args<T>& a, const backward_args<T>& g,
              const problem_shape& shape) {
  using F = accum_t<T>;
  using Sink = typename Attn::sink_type;
  using Gate = typename Attn::gate_type;
  using Mask = typename Attn::mask_type;
  using Route = typename Attn::route_type;
  using Score = typename Attn::score_type;
  constexpr int BQ = k_block_q, BK = k_block_k;
  using staged = detail::staged_rows<F, BQ>;

  const int d = shape.head_dim;
  const int dp = detail::padded_dim(d);
  const int group = shape.group_size();
  const int hq = shape.q_heads;
  const index_t sinks_stride = a.sinks.empty() ? 0 : a.sinks.stride[0];
  const F q_factor = Score::is_linear ? F(Score(a.params, d).scale()) : F(1);

  // Per-(query head) dK/dV partials [Hq][B * Tk rows][dp], summed over the group afterwards;
  // every row a sequence holds is written, the others (padding keys) are never read.
  const std::int64_t k_rows = static_cast<std::int64_t>(shape.batch) * shape.tk;
  detail::scratch_frame scratch;
  F* const dk_partial = scratch.take<F>(static_cast<std::size_t>(hq * k_rows * dp));
  F* const dv_partial = scratch.take<F>(static_cast<std::size_t>(hq * k_rows * dp));
  std::vector<F> dsink_partial(static_cast<std::size_t>(shape.num_seqs * hq), F(0));
  std::vector<std::uint8_t> key_row_real(static_cast<std::size_t>(k_rows), 0);
  for (int s = 0; s < shape.num_seqs; ++s) {
    const sequence_span span = sequence_at(shape, a, s);
    std::fill_n(key_row_real.begin() + static_cast<std::ptrdiff_t>(span.batch_index) * shape.tk +
                    span.k_begin,
                span.tk, std::uint8_t(1));
  }

  // ---- 1. Row preprocess of one (sequence, head) into `st` ----
  auto preprocess = [&](int seq, int h, staged& st) {
    const sequence_span span = sequence_at(shape, a, seq);
    const Mask mask(a.params, span.tq, span.tk);
    const Score score(a.params, d);
    const int hk = h / group, b = span.batch_index;
    const int tq = span.tq, tk = span.tk;
    detail::scratch_frame row_scratch;
    F* z = row_scratch.take<F>(static_cast<std::size_t>(std::max(shape.gate_dim, 1)) * 2 + 2 * d);
    F* dz = z + std::max(shape.gate_dim, 1);
    F* dy = dz + std::max(shape.gate_dim, 1);
    F* y = dy + d;
    F dsink_sum = F(0);
    for (int t = 0; t < st.tiles * BQ; ++t) {
      // The caller's rows of one head lie H * D apart, a new page each at H * D = 1024 floats,
      // which the hardware prefetchers do not follow: ask for a later row's (measured: AMD EPYC).
      if (const int ahead = t + detail::k_row_prefetch_distance; ahead < tq) {
        const int ahead_row = span.q_begin + ahead;
        detail::prefetch_rows(g.dout, b, ahead_row, 1, h, d);
        detail::prefetch_rows(a.out, b, ahead_row, 1, h, d);
        if constexpr (Gate::enabled)
          detail::prefetch_rows(a.gate_logits, b, ahead_row, 1, h, shape.gate_dim);
      }
      F* d_out_row = st.d_out + static_cast<std::size_t>(t) * dp;
      if (t >= tq) {  // rows past the end: P = exp(-inf) = 0, dS = 0, dO = 0
        st.lse[t] = -math::neg_inf<F>();
        st.row_term[t] = st.key0_term[t] = F(0);
        std::fill(d_out_row, d_out_row + dp, F(0));
        continue;
      }
      const int row = span.q_begin + t;
      const bool empty_row = !row_has_visible_key(mask, t);
      const F lse = a.lse(b, h, row);
      F key0_score = math::neg_inf<F>();  // vanilla's sink: the score of key 0, where visible
      if constexpr (Sink::first_key_is_sink) {
        if (tk > 0 && mask.visible(t, 0)) {
          const T* q_row = &a.q(b, row, h, 0);
          const T* k_row = &a.k(b, span.k_begin, hk, 0);
          key0_score = score.transform(detail::dot_row<F>(q_row, k_row, d));
        }
      }
      const F sink_score =
          rowwise::sink_score<Sink>(a.params, a.sinks.data, sinks_stride, h, key0_score);
      const F* gate_logits = z;
      if constexpr (Gate::enabled)
        gate_logits = detail::gate_row(a.gate_logits, b, row, h, shape.gate_dim, z);
      const F gate_value = Gate::router_value(gate_logits, d);
      const F gbar = (g.drouter.empty() || empty_row) ? F(0) : g.drouter(b, h, row);
      const F dlse_in = g.dlse.empty() ? F(0) : g.dlse(b, h, row);

      const T* dout_row = &g.dout(b, row, h, 0);
      const T* out_row = &a.out(b, row, h, 0);
      for (int c = 0; c < d; ++c) {
        dy[c] = to_accum<F>(dout_row[c]);
        y[c] = to_accum<F>(out_row[c]);
      }
      const F delta = detail::dot_row<F>(dy, y, d);  // sum_c dO_c O_c = sum_c dY_c Y_c, any gate
      const rowwise::backward_row<F> br = rowwise::backward_row_terms<Sink, Route>(
          delta, lse, sink_score, gate_value, gbar, dlse_in);
      Gate::backward_row(dy, y, d_out_row, d, gate_logits, br.gbar_gate, dz);
      std::fill(d_out_row + d, d_out_row + dp, F(0));
      if constexpr (Gate::enabled)
        for (int c = 0; c < shape.gate_dim; ++c)
          g.dgate_logits(b, row, h, c) = from_accum<T>(dz[c]);
      // A row that sees no key has no probability to recompute: +inf gives it P = 0 (its keys
      // are all masked, and -inf - (-inf) would be NaN).
      st.lse[t] = lse == math::neg_inf<F>() ? -lse : lse;
      st.row_term[t] = br.row_term;
      st.key0_term[t] = br.key0_term;
      if constexpr (Sink::trainable) dsink_sum += br.dsink;
    }
    dsink_partial[static_cast<std::size_t>(seq * hq + h)] = dsink_sum;
    for (int qt = 0; qt < st.tiles; ++qt) {
      const int rows = std::min(BQ, tq - qt * BQ);
      const std::size_t at = st.tile_offset(qt);
      detail::load_rows<BQ>(a.q, b, span.q_begin + qt * BQ, rows, h, d, dp, q_factor, st.q + at);
      detail::load_rows_transposed<BQ>(a.q, b, span.q_begin + qt * BQ, rows, h, d, dp, q_factor,
                                       st.qt + at);
      // d_out is already by rows: copy it into its tile slot's transpose.
      detail::transpose_scaled(st.d_out + at, dp, BQ, dp, F(1), st.d_out_t + at, BQ);
    }
  };

  // The P and dS of a pair, in pair_st (P^T) and pair_dpt (dS^T), from staged tiles. Returns
  // where the mask cuts the pair (measured into `measured`), or null for a full pair: its
  // products skip the rest, where P and dS are exactly 0, so the diagonal pair costs about half
  // a pair and every gradient keeps its bits (as in forward.hpp).
  using cut_type = detail::tile_cut<BK, BQ>;
  auto pair_terms = [&](const Mask& mask, const Score& score, const staged& st, int qt, int rows,
                        tile_kind kind, int k0, int cols, const F* k_tile, const F* v_tile,
                        F* pair_st, F* pair_dpt, cut_type& measured) -> const cut_type* {
    const std::size_t at = st.tile_offset(qt);
    const int q0 = qt * BQ;
    const cut_type* cut = nullptr;
    if (kind == tile_kind::partial) {
      detail::measure_cut(mask, q0, rows, k0, cols, measured);
      cut = &measured;
    }
    // Skipped scores are masked (-inf, P = 0); skipped dP are 0, so that dS = P (dP - D) stays 0.
    detail::tile_matmul_bt<BK, BQ>(k_tile, dp, st.qt + at, d, pair_st, cut, math::neg_inf<F>());
    detail::tile_matmul_bt<BK, BQ>(v_tile, dp, st.d_out_t + at, d, pair_dpt, cut, F(0));
    detail::pair_probabilities<BK, BQ, Sink, Score>(pair_st, pair_dpt, st.lse + q0,
                                                    st.row_term + q0, st.key0_term + q0, mask,
                                                    score, q0, rows, k0, cols, kind);
    return cut;
  };

  // Writes one key tile's dK/dV partials of query head h (zeros for a tile no query sees).
  auto store_key_tile = [&](const sequence_span& span, int h, int k0, int cols, const F* dk_acc,
                            const F* dv_acc) {
    const std::int64_t base =
        (static_cast<std::int64_t>(h) * k_rows +
         static_cast<std::int64_t>(span.batch_index) * shape.tk + span.k_begin + k0) *
        dp;
    if (dk_acc == nullptr) {
      std::fill_n(dk_partial + base, cols * dp, F(0));
      std::fill_n(dv_partial + base, cols * dp, F(0));
      return;
    }
    std::copy_n(dk_acc, cols * dp, dk_partial + base);
    std::copy_n(dv_acc, cols * dp, dv_partial + base);
  };

  // dK/dV of one key tile over every query tile that sees it; and, when dq_acc is given, dQ
  // accumulated as well (the one-task-per-head schedule).
  auto key_tile_pass = [&](const sequence_span& span, const Mask& mask, const Score& score, int h,
                           const staged& st, int k0, F* tiles, F* dq_acc) {
    const int cols = std::min(BK, span.tk - k0);
    const query_tile_walk<Mask> query_tiles{mask, k0, k0 + cols, span.tq, BQ};
    if (query_tiles.next_from(0) == query_tiles.tiles()) {  // no query sees these keys
      store_key_tile(span, h, k0, cols, nullptr, nullptr);
      return;
    }
    F* k_tile = tiles;             // [BK][dp]
    F* v_tile = k_tile + BK * dp;  // [BK][dp]
    F* dk_acc = v_tile + BK * dp;
    F* dv_acc = dk_acc + BK * dp;
    F* pair_st = dv_acc + BK * dp;  // [BK][BQ]
    F* pair_dpt = pair_st + BK * BQ;
    const int hk = h / group, b = span.batch_index;
    detail::load_rows<BK>(a.k, b, span.k_begin + k0, cols, hk, d, dp, F(1), k_tile);
    detail::load_rows<BK>(a.v, b, span.k_begin + k0, cols, hk, d, dp, F(1), v_tile);
    std::fill(dk_acc, dk_acc + 2 * BK * dp, F(0));
    cut_type measured;
    for (int qt = query_tiles.next_from(0); qt < query_tiles.tiles();
         qt = query_tiles.next_from(qt + 1)) {
      const cut_type* cut =
          pair_terms(mask, score, st, qt, query_tiles.rows(qt), query_tiles.kind(qt), k0, cols,
                     k_tile, v_tile, pair_st, pair_dpt, measured);
      const std::size_t at = st.tile_offset(qt);
      // dV += P^T dO, dK += dS^T Q (Q carries the scale), dQ += dS K.
      detail::tile_matmul_acc<BK, BQ>(pair_st, st.d_out + at, dp, dp, dv_acc, cut);
      detail::tile_matmul_acc<BK, BQ>(pair_dpt, st.q + at, dp, dp, dk_acc, cut);
      if (dq_acc != nullptr)
        detail::tile_matmul_at_acc<BQ, BK>(pair_dpt, k_tile, dp, dp, dq_acc + at, cut);
    }
    store_key_tile(span, h, k0, cols, dk_acc, dv_acc);
  };
  // K, V, dK and dV tiles [BK][dp], and the pair's two [BK][BQ] tiles.
  const std::size_t key_pass_elems = static_cast<std::size_t>(4 * BK * dp + 2 * BK * BQ);

  // dQ of one query tile over every key tile it sees (the split schedule), into dq_tile.
  auto query_tile_pass = [&](const sequence_span& span, const Mask& mask, const Score& score, int h,
                             const staged& st, int qt, F* tiles, F* dq_tile) {
    const int rows = std::min(BQ, span.tq - qt * BQ);
    F* k_tile = tiles;
    F* v_tile = k_tile + BK * dp;
    F* pair_st = v_tile + BK * dp;
    F* pair_dpt = pair_st + BK * BQ;
    const int hk = h / group, b = span.batch_index, q0 = qt * BQ;
    std::fill(dq_tile, dq_tile + BQ * dp, F(0));
    const key_tile_walk<Mask> key_tiles(mask, q0, q0 + rows, span.tk, BK);
    cut_type measured;
    for (int k0 = key_tiles.first(); key_tiles.visits(k0); k0 = key_tiles.next(k0)) {
      const int cols = key_tiles.cols(k0);
      detail::load_rows<BK>(a.k, b, span.k_begin + k0, cols, hk, d, dp, F(1), k_tile);
      detail::load_rows<BK>(a.v, b, span.k_begin + k0, cols, hk, d, dp, F(1), v_tile);
      const cut_type* cut = pair_terms(mask, score, st, qt, rows, key_tiles.kind(k0), k0, cols,
                                       k_tile, v_tile, pair_st, pair_dpt, measured);
      detail::tile_matmul_at_acc<BQ, BK>(pair_dpt, k_tile, dp, dp, dq_tile, cut);
    }
  };

  auto write_dq_rows = [&](const sequence_span& span, int h, int t0, int rows, const F* dq_rows) {
    const F dq_factor = q_factor;
    for (int t = 0; t < rows; ++t) {
      T* dq_row = &g.dq(span.batch_index, span.q_begin + t0 + t, h, 0);
      for (int c = 0; c < d; ++c)
        dq_row[c] = from_accum<T>(dq_rows[static_cast<std::size_t>(t) * dp + c] * dq_factor);
    }
  };

  // ---- 2. The pairs, on one of two schedules ----
  struct head_view {  // one (sequence, query head) task
    int seq, h;
    sequence_span span;
    Mask mask;
    Score score;
  };
  auto head_of = [&](std::int64_t task) {
    const int seq = static_cast<int>(task / hq);
    const sequence_span span = sequence_at(shape, a, seq);
    return head_view{seq, static_cast<int>(task % hq), span, Mask(a.params, span.tq, span.tk),
                     Score(a.params, d)};
  };
  const std::int64_t head_tasks = static_cast<std::int64_t>(shape.num_seqs) * hq;
  if (head_tasks >= detail::thread_count(ex.threads)) {
    detail::parallel_for(ex.threads, head_tasks, [&](std::int64_t task) {
      const head_view hv = head_of(task);
      detail::scratch_frame task_scratch;
      staged st;
      st.allocate(task_scratch, hv.span.tq, dp);
      preprocess(hv.seq, hv.h, st);
      F* dq_acc = task_scratch.take<F>(static_cast<std::size_t>(st.tiles) * BQ * dp);
      std::fill_n(dq_acc, static_cast<std::size_t>(st.tiles) * BQ * dp, F(0));
      F* tiles = task_scratch.take<F>(key_pass_elems);
      for (int k0 = 0; k0 < hv.span.tk; k0 += BK)
        key_tile_pass(hv.span, hv.mask, hv.score, hv.h, st, k0, tiles, dq_acc);
      write_dq_rows(hv.span, hv.h, 0, hv.span.tq, dq_acc);
    });
  } else {
    std::vector<staged> staged_heads(static_cast<std::size_t>(head_tasks));
    for (std::int64_t task = 0; task < head_tasks; ++task)
      staged_heads[task].allocate(scratch, sequence_at(shape, a, static_cast<int>(task / hq)).tq,
                                  dp);
    detail::parallel_for(ex.threads, head_tasks, [&](std::int64_t task) {
      preprocess(static_cast<int>(task / hq), static_cast<int>(task % hq), staged_heads[task]);
    });
    // (head task, tile) work lists for the key and the query passes.
    std::vector<std::pair<std::int64_t, int>> key_items, query_items;
    for (std::int64_t task = 0; task < head_tasks; ++task) {
      const sequence_span span = sequence_at(shape, a, static_cast<int>(task / hq));
      for (int k0 = 0; k0 < span.tk; k0 += BK) key_items.push_back({task, k0});
      for (int qt = 0; qt < staged_heads[task].tiles; ++qt) query_items.push_back({task, qt});
    }
    detail::parallel_for(
        ex.threads, static_cast<std::int64_t>(key_items.size()), [&](std::int64_t item) {
          const auto [task, k0] = key_items[item];
          const head_view hv = head_of(task);
          detail::scratch_frame task_scratch;
          F* tiles = task_scratch.take<F>(key_pass_elems);
          key_tile_pass(hv.span, hv.mask, hv.score, hv.h, staged_heads[task], k0, tiles, nullptr);
        });
    detail::parallel_for(
        ex.threads, static_cast<std::int64_t>(query_items.size()), [&](std::int64_t item) {
          const auto [task, qt] = query_items[item];
          const head_view hv = head_of(task);
          detail::scratch_frame task_scratch;
          F* tiles = task_scratch.take<F>(key_pass_elems);
          F* dq_tile = task_scratch.take<F>(static_cast<std::size_t>(BQ) * dp);
          query_tile_pass(hv.span, hv.mask, hv.score, hv.h, staged_heads[task], qt, tiles, dq_tile);
          write_dq_rows(hv.span, hv.h, qt * BQ, std::min(BQ, hv.span.tq - qt * BQ), dq_tile);
        });
  }

  // ---- 3. Deterministic reductions ----
  // Blocks of key rows per task: a row alone is too little work for the schedule's overhead.
  constexpr int rows_per_task = 64;
  const std::int64_t kv_rows = static_cast<std::int64_t>(shape.batch) * shape.tk;
  detail::parallel_for(
      ex.threads, (kv_rows + rows_per_task - 1) / rows_per_task, [&](std::int64_t block) {
        const std::int64_t end = std::min(kv_rows, (block + 1) * rows_per_task);
        for (std::int64_t flat_row = block * rows_per_task; flat_row < end; ++flat_row) {
          const int b = static_cast<int>(flat_row / shape.tk),
                    j = static_cast<int>(flat_row % shape.tk);
          const bool real = key_row_real[static_cast<std::size_t>(flat_row)] != 0;
          for (int hk = 0; hk < shape.kv_heads; ++hk) {
            T* dk_row = &g.dk(b, j, hk, 0);
            T* dv_row = &g.dv(b, j, hk, 0);
            if (!real) {  // a padding key: zero gradients
              std::fill_n(dk_row, d, T(0));
              std::fill_n(dv_row, d, T(0));
              continue;
            }
            const F* dk_first =
                dk_partial + (static_cast<std::int64_t>(hk * group) * k_rows + flat_row) * dp;
            const F* dv_first =
                dv_partial + (static_cast<std::int64_t>(hk * group) * k_rows + flat_row) * dp;
            const std::int64_t head_step = k_rows * dp;  // the next query head's partials
            for (int c = 0; c < d; ++c) {
              F dk_sum = F(0), dv_sum = F(0);
              for (int m = 0; m < group; ++m) {
                dk_sum += dk_first[m * head_step + c];
                dv_sum += dv_first[m * head_step + c];
              }
              dk_row[c] = from_accum<T>(dk_sum);
              dv_row[c] = from_accum<T>(dv_sum);
            }
          }
        }
      });
  // Padding query rows of a padded batch get zero gradients.
  for_each_padding_query_row(shape, a, [&](int b, int row) {
    for (int h = 0; h < hq; ++h) {
      std::fill_n(&g.dq(b, row, h, 0), d, T(0));
      if constexpr (Gate::enabled) std::fill_n(&g.dgate_logits(b, row, h, 0), shape.gate_dim, T(0));
    }
  });
  if constexpr (Sink::trainable) {
    for (int h = 0; h < hq; ++h) {
      F total = F(0);
      for (int s = 0; s < shape.num_seqs; ++s)
        total += dsink_partial[static_cast<std::size_t>(s * hq + h)];
      g.dsinks(h) = total;
    }
  }
}

}  // namespace sinkmoe::host
