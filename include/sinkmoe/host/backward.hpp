#pragma once
// CPU backward (docs/method.md section 5), FlashAttention-2 structure:
//  1. row preprocess per (sequence, query head): gate backward (dO, d gate logits), Delta,
//     the row term D = Delta - gbar_sink A - dLSE, the vanilla key-0 term, the d(sink) terms;
//  2. key tiles outer, query tiles inner: recompute P from the saved LSE, dS = P (dP - D),
//     dV += P^T dO, dK += dS^T Q, dQ += dS K;
//  3. deterministic reductions: dK/dV over the GQA group and d(sinks) over sequences, each in a
//     fixed order, so results do not depend on the thread count.

#include <algorithm>
#include <cstdint>
#include <sinkmoe/args.hpp>
#include <sinkmoe/core/numeric.hpp>
#include <sinkmoe/exec.hpp>
#include <sinkmoe/host/forward.hpp>
#include <sinkmoe/host/parallel.hpp>
#include <sinkmoe/host/tile_ops.hpp>
#include <sinkmoe/policy/rowwise.hpp>
#include <sinkmoe/policy/sink.hpp>
#include <sinkmoe/policy/tiles.hpp>
#include <vector>

namespace sinkmoe::host {
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

  const int d = shape.head_dim;
  const int dp = detail::padded_dim(d);
  const int group = shape.group_size();
  const int hq = shape.q_heads;

  // Per-(query head) dK/dV partials [Hq][B * Tk rows][dp], summed over the group afterwards.
  const std::int64_t k_rows = static_cast<std::int64_t>(shape.batch) * shape.tk;
  std::vector<F> dk_partial(static_cast<std::size_t>(hq * k_rows * dp));
  std::vector<F> dv_partial(dk_partial.size());
  std::vector<F> dsink_partial(static_cast<std::size_t>(shape.num_seqs * hq), F(0));

  const std::int64_t task_count = static_cast<std::int64_t>(shape.num_seqs) * hq;
  detail::parallel_for(ex.threads, task_count, [&](std::int64_t task) {
    const int seq = static_cast<int>(task / hq), h = static_cast<int>(task % hq);
    const sequence_span span = sequence_at(shape, a, seq);
    const Mask mask(a.params, span.tq, span.tk);
    const Score score(a.params, d);
    const int hk = h / group, b = span.batch_index;
    const int tq = span.tq, tk = span.tk;

    // ---- 1. Row preprocess ----
    std::vector<F> d_out(static_cast<std::size_t>(std::max(tq, 1)) * dp, F(0));  // dO, padded
    std::vector<F> lse(static_cast<std::size_t>(tq)), row_term(lse.size()), key0_term(lse.size());
    std::vector<F> z(static_cast<std::size_t>(std::max(shape.gate_dim, 1)));
    std::vector<F> dz(z.size()), dy(static_cast<std::size_t>(d)), y(dy.size());
    const index_t sinks_stride = a.sinks.empty() ? 0 : a.sinks.stride[0];
    F dsink_sum = F(0);
    for (int t = 0; t < tq; ++t) {
      const int row = span.q_begin + t;
      const bool empty_row = !row_has_visible_key(mask, t);
      lse[t] = a.lse(b, h, row);
      F key0_score = math::neg_inf<F>();  // vanilla's sink: the score of key 0, where visible
      if constexpr (Sink::first_key_is_sink) {
        if (tk > 0 && mask.visible(t, 0)) {
          const T* q_row = &a.q(b, row, h, 0);
          const T* k_row = &a.k(b, span.k_begin, hk, 0);
          F dot = F(0);
          for (int c = 0; c < d; ++c) dot += to_accum<F>(q_row[c]) * to_accum<F>(k_row[c]);
          key0_score = score.transform(dot);
        }
      }
      const F sink_score =
          rowwise::sink_score<Sink>(a.params, a.sinks.data, sinks_stride, h, key0_score);
      if constexpr (Gate::enabled)
        detail::load_gate_row(a.gate_logits, b, row, h, shape.gate_dim, z.data());
      const F gate_value = Gate::router_value(z.data(), d);
      const F gbar = (g.drouter.empty() || empty_row) ? F(0) : g.drouter(b, h, row);
      const F dlse_in = g.dlse.empty() ? F(0) : g.dlse(b, h, row);

      const T* dout_row = &g.dout(b, row, h, 0);
      const T* out_row = &a.out(b, row, h, 0);
      F delta = F(0);
      for (int c = 0; c < d; ++c) {
        dy[c] = to_accum<F>(dout_row[c]);
        y[c] = to_accum<F>(out_row[c]);
        delta += dy[c] * y[c];  // sum_c dO_c O_c = sum_c dY_c Y_c for every gate
      }
      const rowwise::backward_row<F> br = rowwise::backward_row_terms<Sink, Route>(
          delta, lse[t], sink_score, gate_value, gbar, dlse_in);
      Gate::backward_row(dy.data(), y.data(), d_out.data() + static_cast<std::size_t>(t) * dp, d,
                         z.data(), br.gbar_gate, dz.data());
      if constexpr (Gate::enabled)
        for (int c = 0; c < shape.gate_dim; ++c)
          g.dgate_logits(b, row, h, c) = from_accum<T>(dz[c]);
      row_term[t] = br.row_term;
      key0_term[t] = br.key0_term;
      if constexpr (Sink::trainable) dsink_sum += br.dsink;
    }
    dsink_partial[static_cast<std::size_t>(seq * hq + h)] = dsink_sum;

    // ---- 2. Key tiles outer, query tiles inner ----
    std::vector<F> dq_acc(static_cast<std::size_t>((tq + BQ - 1) / BQ * BQ) * dp, F(0));
    std::vector<F> buffer(static_cast<std::size_t>(5 * BK * dp + 2 * BQ * dp + 3 * BQ * BK));
    F* k_tile = buffer.data();      // [BK][dp]
    F* kt_tile = k_tile + BK * dp;  // [dp][BK]
    F* vt_tile = kt_tile + dp * BK;
    F* dk_acc = vt_tile + dp * BK;  // [BK][dp]
    F* dv_acc = dk_acc + BK * dp;
    F* q_tile = dv_acc + BK * dp;  // [BQ][dp]
    F* do_tile = q_tile + BQ * dp;
    F* s_tile = do_tile + BQ * dp;  // [BQ][BK] raw dots, then dS
    F* p_tile = s_tile + BQ * BK;
    F* dp_tile = p_tile + BQ * BK;
    const F q_factor = Score::is_linear ? F(score.scale()) : F(1);

    for (int k0 = 0; k0 < tk; k0 += BK) {
      const int cols = std::min(BK, tk - k0);
      const query_tile_walk<Mask> query_tiles{mask, k0, k0 + cols, tq, BQ};
      if (query_tiles.next_from(0) == query_tiles.tiles()) continue;  // no query sees these keys
      detail::load_rows<BK>(a.k, b, span.k_begin + k0, cols, hk, d, dp, F(1), k_tile);
      detail::load_rows_transposed<BK>(a.k, b, span.k_begin + k0, cols, hk, d, dp, kt_tile);
      detail::load_rows_transposed<BK>(a.v, b, span.k_begin + k0, cols, hk, d, dp, vt_tile);
      std::fill(dk_acc, dk_acc + 2 * BK * dp, F(0));

      for (int qt = query_tiles.next_from(0); qt < query_tiles.tiles();
           qt = query_tiles.next_from(qt + 1)) {
        const int q0 = qt * BQ, rows = query_tiles.rows(qt);
        const tile_kind kind = query_tiles.kind(qt);
        detail::load_rows<BQ>(a.q, b, span.q_begin + q0, rows, h, d, dp, q_factor, q_tile);
        std::fill(do_tile, do_tile + BQ * dp, F(0));
        std::copy(d_out.begin() + static_cast<std::ptrdiff_t>(q0) * dp,
                  d_out.begin() + static_cast<std::ptrdiff_t>(q0 + rows) * dp, do_tile);
        detail::tile_matmul_bt<BQ, BK>(q_tile, dp, kt_tile, dp, s_tile);
        detail::tile_matmul_bt<BQ, BK>(do_tile, dp, vt_tile, dp, dp_tile);

        for (int i = 0; i < BQ; ++i) {
          F* s_row = s_tile + i * BK;
          F* p_row = p_tile + i * BK;
          if (i >= rows) {
            std::fill(p_row, p_row + BK, F(0));
            std::fill(s_row, s_row + BK, F(0));
            continue;
          }
          const int t = q0 + i;
          const F row_lse = lse[t], rt = row_term[t];
          // Full tiles (most of them) in a branch-free loop the compiler vectorises; the mask is
          // asked only on partial ones.
          if (kind == tile_kind::full && cols == BK) {
            SINKMOE_OMP_SIMD()
            for (int j = 0; j < BK; ++j)
              p_row[j] = (Score::is_linear ? s_row[j] : score.transform(s_row[j])) - row_lse;
          } else {
            for (int j = 0; j < BK; ++j) {
              const bool live = j < cols && (kind == tile_kind::full || mask.visible(t, k0 + j));
              const F logit = Score::is_linear ? s_row[j] : score.transform(s_row[j]);
              p_row[j] = live ? logit - row_lse : math::neg_inf<F>();
            }
          }
          detail::exp_row(p_row, F(0), BK, p_row);
          // dS = P (dP - D); the vanilla sink adds -gbar P[t,0] on key 0 (docs/method.md section
          // 5), after the loop so that it stays branch-free. A soft-cap then multiplies by
          // ds/d(dot); a linear score's scale is folded elsewhere.
          const F* dp_row = dp_tile + i * BK;
          const F raw_dot0 = s_row[0];
          SINKMOE_OMP_SIMD()
          for (int j = 0; j < BK; ++j) {
            F ds = p_row[j] * (dp_row[j] - rt);
            if constexpr (!Score::is_linear) ds *= score.derivative(s_row[j]);
            s_row[j] = ds;
          }
          if constexpr (Sink::first_key_is_sink) {
            if (k0 == 0 && p_row[0] != F(0)) {
              F ds = p_row[0] * (dp_row[0] - rt);
              ds -= key0_term[t];
              if constexpr (!Score::is_linear) ds *= score.derivative(raw_dot0);
              s_row[0] = ds;
            }
          }
        }
        // dV += P^T dO, dK += dS^T Q (Q carries the scale), dQ += dS K.
        detail::tile_matmul_at_acc<BK, BQ>(p_tile, do_tile, dp, dp, dv_acc);
        detail::tile_matmul_at_acc<BK, BQ>(s_tile, q_tile, dp, dp, dk_acc);
        // dq_acc is padded to whole query tiles; rows past the end get zeros from dS.
        detail::tile_matmul_acc<BQ, BK>(s_tile, k_tile, dp, dp,
                                        dq_acc.data() + static_cast<std::size_t>(q0) * dp);
      }
      const std::int64_t base = (static_cast<std::int64_t>(h) * k_rows +
                                 static_cast<std::int64_t>(b) * shape.tk + span.k_begin + k0) *
                                dp;
      std::copy(dk_acc, dk_acc + cols * dp, dk_partial.begin() + base);
      std::copy(dv_acc, dv_acc + cols * dp, dv_partial.begin() + base);
    }

    const F dq_factor = Score::is_linear ? F(score.scale()) : F(1);
    for (int t = 0; t < tq; ++t) {
      T* dq_row = &g.dq(b, span.q_begin + t, h, 0);
      for (int c = 0; c < d; ++c)
        dq_row[c] = from_accum<T>(dq_acc[static_cast<std::size_t>(t) * dp + c] * dq_factor);
    }
  });

  // ---- 3. Deterministic reductions ----
  const std::int64_t kv_rows = static_cast<std::int64_t>(shape.batch) * shape.tk * shape.kv_heads;
  detail::parallel_for(ex.threads, kv_rows, [&](std::int64_t r) {
    const int hk = static_cast<int>(r % shape.kv_heads);
    const std::int64_t flat_row = r / shape.kv_heads;  // b * Tk + key row
    const int b = static_cast<int>(flat_row / std::max(shape.tk, 1));
    const int j = static_cast<int>(flat_row % std::max(shape.tk, 1));
    T* dk_row = &g.dk(b, j, hk, 0);
    T* dv_row = &g.dv(b, j, hk, 0);
    for (int c = 0; c < d; ++c) {
      F dk_sum = F(0), dv_sum = F(0);
      for (int m = 0; m < group; ++m) {
        const std::int64_t at =
            (static_cast<std::int64_t>(hk * group + m) * k_rows + flat_row) * dp + c;
        dk_sum += dk_partial[static_cast<std::size_t>(at)];
        dv_sum += dv_partial[static_cast<std::size_t>(at)];
      }
      dk_row[c] = from_accum<T>(dk_sum);
      dv_row[c] = from_accum<T>(dv_sum);
    }
  });
  // Padding query rows of a padded batch get zero gradients (padding keys got them above: no
  // sequence writes their partials).
  for_each_padding_query_row(shape, a, [&](int b, int row) {
    for (int h = 0; h < hq; ++h) {
      std::fill_n(&g.dq(b, row, h, 0), d, T(0));
      if constexpr (Gate::enabled)
        std::fill_n(&g.dgate_logits(b, row, h, 0), shape.gate_dim, T(0));
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
