#pragma once
// The per-row algebra every backend shares (docs/method.md sections 2 and 5): how a finished
// softmax row becomes lse, the output normaliser and the router value, and how a row's upstream
// gradients become the backward's row terms. The policy hooks (sink, gate, route) say what each
// mechanism means; these functions compose them once, so that the host backend, the fused
// kernels and the unfused row kernels cannot drift apart. SINKMOE_HD; F is float or double.

#include <sinkmoe/core/config.hpp>
#include <sinkmoe/core/numeric.hpp>
#include <sinkmoe/core/tensor_view.hpp>
#include <sinkmoe/params.hpp>
#include <sinkmoe/policy/sink.hpp>

namespace sinkmoe::rowwise {

/// The sink score of a row of query head h: the logit b_h (logit sinks), the score of key 0
/// (vanilla: first_key_score, -inf when key 0 is hidden or absent), or -inf (no sink).
template <class Sink, class F>
SINKMOE_HD F sink_score(const attention_params& p, const F* sinks, index_t sinks_stride, int h,
                        F first_key_score) {
  if constexpr (Sink::has_logit) {
    return Sink::logit(p, sinks, sinks_stride, h);
  } else if constexpr (Sink::first_key_is_sink) {
    return first_key_score;
  } else {
    return math::neg_inf<F>();
  }
}

/// A finished forward row.
template <class F>
struct forward_row {
  F lse;              ///< log-sum-exp over the visible keys and the sink, base e
  F normaliser;       ///< exp(row_max - lse): the factor of the unnormalised output
  F sink_complement;  ///< 1 - A, A the attention mass on the sink
  bool empty;         ///< no visible key: out = 0, G = 0
};

/// Finishes a row from its online-softmax state over real keys (row_max and row_sum in natural
/// log units: lse_keys = row_max + log(row_sum), row_sum = 0 for a row that saw nothing) and its
/// sink score: the sink is added here, once (sink::finish_row).
template <class Sink, class F>
SINKMOE_HD forward_row<F> finish_forward_row(F row_max, F row_sum, F sink_score) {
  const bool empty = row_sum == F(0);
  const F lse_keys = empty ? math::neg_inf<F>() : row_max + math::log(row_sum);
  const sink::row_sink<F> rs = sink::finish_row<Sink>(lse_keys, sink_score);
  return {rs.lse_full, empty ? F(0) : math::exp(row_max - rs.lse_full), rs.complement, empty};
}

/// The lse of a row that sees no key (a fully masked row, or a padding row of a padded batch):
/// the sink logit, or -inf without one. Its out, G and first-key mass are 0.
template <class Sink, class F>
SINKMOE_HD F empty_row_lse(const attention_params& p, const F* sinks, index_t sinks_stride, int h) {
  const F no_key = math::neg_inf<F>();
  return finish_forward_row<Sink>(no_key, F(0), sink_score<Sink>(p, sinks, sinks_stride, h, no_key))
      .lse;
}

/// The row's router value G: Route's combination of 1 - A and the gate's router value; 0 for an
/// empty row.
template <class Route, class F>
SINKMOE_HD F router_value(const forward_row<F>& row, F gate_value) {
  return row.empty ? F(0) : Route::router(row.sink_complement, gate_value);
}

/// What the backward needs of one row (docs/method.md section 5).
template <class F>
struct backward_row {
  F row_term;   ///< D = Delta - gbar_sink A - dLSE: dS = P (dP - D)
  F key0_term;  ///< gbar_sink A, subtracted from dS on key 0 (vanilla sink), else 0
  F gbar_gate;  ///< the gate's share of dL/dG, for Gate::backward_row
  F dsink;      ///< this row's d(sink logit) term (trainable sinks), else 0
};

/// The row terms from Delta = sum_c dY_c Y_c, the forward's lse, the sink score, the gate's
/// router value, dL/dG (0 for a row the forward left empty) and dL/d(lse) (ignored where lse is
/// infinite: the row has no probability mass to move).
template <class Sink, class Route, class F>
SINKMOE_HD backward_row<F> backward_row_terms(F delta, F lse, F sink_score, F gate_value, F gbar,
                                              F dlse) {
  const sink::row_sink<F> rs = sink::row_from_lse(lse, sink_score);
  F gbar_sink, gbar_gate;
  Route::split(gbar, rs.complement, gate_value, gbar_sink, gbar_gate);
  const F dlse_used = math::is_finite(lse) ? dlse : F(0);
  backward_row<F> r;
  r.row_term = sink::row_term(delta, gbar_sink, rs.mass, dlse_used);
  r.key0_term = Sink::first_key_is_sink ? gbar_sink * rs.mass : F(0);
  r.gbar_gate = gbar_gate;
  r.dsink = Sink::trainable ? sink::logit_grad(delta, gbar_sink, rs.mass, rs.complement, dlse_used)
                            : F(0);
  return r;
}

}  // namespace sinkmoe::rowwise
