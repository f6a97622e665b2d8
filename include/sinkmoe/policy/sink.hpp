#pragma once
// Sink policies: where the attention mass that a head "declines" goes (docs/method.md sections
// 1-2).
//
// The backends keep the online-softmax state over real keys only and add a logit sink once,
// after the last key tile (lse_full = logaddexp(lse_keys, b)), so a split or tiled traversal can
// never count it twice. For sink::none (vanilla) key 0 is the implicit sink.
//
// Contract (checked by sinkmoe::sink_policy):
//   static constexpr bool has_logit          a logit b_h joins the softmax denominator (no value)
//   static constexpr bool first_key_is_sink  vanilla: the sink is key 0 of each sequence
//   static constexpr bool trainable          backward produces d(sinks)
//   static constexpr bool needs_sinks_tensor forward_args::sinks must be given
//   static F logit(const attention_params&, const F* sinks, index_t stride, int q_head)
//                                            b_h (only called when has_logit; sinks may be null
//                                            unless needs_sinks_tensor)
//   static void validate(const attention_params&)

#include <sinkmoe/core/config.hpp>
#include <sinkmoe/core/error.hpp>
#include <sinkmoe/core/numeric.hpp>
#include <sinkmoe/core/tensor_view.hpp>
#include <sinkmoe/params.hpp>

namespace sinkmoe::sink {

/// Vanilla attention: no extra logit; the first token acts as the sink, G = 1 - P[t, 0].
struct none {
  static constexpr const char* name = "none";
  static constexpr bool has_logit = false;
  static constexpr bool first_key_is_sink = true;
  static constexpr bool trainable = false;
  static constexpr bool needs_sinks_tensor = false;
  template <class F>
  SINKMOE_HD static F logit(const attention_params&, const F*, index_t, int) {
    return math::neg_inf<F>();
  }
  static void validate(const attention_params& p) {
    sinkmoe::detail::require(p.fixed_sink == 0.0, "params.fixed_sink = ", p.fixed_sink,
                             " given, but this sink policy has no fixed logit (use sink::fixed)");
  }
};

/// GPT-OSS: one learned fp32 logit per query head in the softmax denominator, not scaled by the
/// softmax scale. Trainable.
struct learned {
  static constexpr const char* name = "learned";
  static constexpr bool has_logit = true;
  static constexpr bool first_key_is_sink = false;
  static constexpr bool trainable = true;
  static constexpr bool needs_sinks_tensor = true;
  template <class F>
  SINKMOE_HD static F logit(const attention_params&, const F* sinks, index_t stride, int q_head) {
    return sinks[q_head * stride];
  }
  static void validate(const attention_params& p) { none::validate(p); }
};

/// A constant logit shared by every head (params.fixed_sink); 0 gives softmax-off-by-one
/// ("quiet attention"). Not trainable.
struct fixed {
  static constexpr const char* name = "fixed";
  static constexpr bool has_logit = true;
  static constexpr bool first_key_is_sink = false;
  static constexpr bool trainable = false;
  static constexpr bool needs_sinks_tensor = false;
  template <class F>
  SINKMOE_HD static F logit(const attention_params& p, const F*, index_t, int) {
    return static_cast<F>(p.fixed_sink);
  }
  static void validate(const attention_params& p) {
    sinkmoe::detail::require(math::is_finite(p.fixed_sink), "params.fixed_sink = ", p.fixed_sink,
                             ": sink::fixed needs a finite logit");
  }
};

// ---- Row formulas shared by every backend (docs/method.md section 5) ----

/// What a finished softmax row knows about its sink. sink_score is the logit b (logit sinks), the
/// score of key 0 (vanilla; -inf when key 0 is masked), or -inf when there is no sink at all.
template <class F>
struct row_sink {
  F lse_full;    ///< log-sum-exp over visible keys and the sink, base e
  F mass;        ///< A = exp(sink_score - lse_full): attention mass on the sink
  F complement;  ///< 1 - A, computed as -expm1 so that it keeps precision when A is near 1
};

/// Finishes a row: lse_keys is the log-sum-exp over visible keys (-inf for an empty row).
/// A logit sink uses the paper's cheap forms A = sigmoid(b - lse_keys), 1 - A =
/// sigmoid(lse_keys - b), which keep full relative precision for a head whose sink takes almost
/// all the mass (the collapsed heads balancing measures). The vanilla sink (key 0 already among
/// the keys) uses A = exp(s0 - lse), 1 - A = -expm1(s0 - lse).
template <class Sink, class F>
SINKMOE_HD inline row_sink<F> finish_row(F lse_keys, F sink_score) {
  row_sink<F> r;
  if constexpr (Sink::has_logit) {
    r.lse_full = math::logaddexp(lse_keys, sink_score);
    if (r.lse_full == math::neg_inf<F>()) {  // no key and a -inf sink: nothing at all
      r.mass = F(0);
      r.complement = F(1);
    } else {
      r.mass = math::sigmoid(sink_score - lse_keys);
      r.complement = math::sigmoid(lse_keys - sink_score);
    }
  } else {
    r.lse_full = lse_keys;
    r.mass = F(0);
    r.complement = F(1);
    if (sink_score != math::neg_inf<F>() && lse_keys != math::neg_inf<F>()) {
      const F log_mass = sink_score - lse_keys;
      r.mass = math::exp(log_mass);
      r.complement = -math::expm1(log_mass);
    }
  }
  return r;
}

/// The same row rebuilt in backward from the saved lse_full (lse_keys is not stored):
/// A = exp(sink_score - lse_full), 1 - A = -expm1(sink_score - lse_full); 0 and 1 when the sink
/// score or the row's lse is -inf.
template <class F>
SINKMOE_HD inline row_sink<F> row_from_lse(F lse_full, F sink_score) {
  row_sink<F> r{lse_full, F(0), F(1)};
  if (sink_score != math::neg_inf<F>() && lse_full != math::neg_inf<F>()) {
    r.mass = math::exp(sink_score - lse_full);
    r.complement = -math::expm1(sink_score - lse_full);
  }
  return r;
}

/// Backward row term D[t] = Delta[t] - gbar_sink[t] * A[t] - dLSE[t] (docs/method.md section 5):
/// the only change a sink (and a loss on G or on the LSE) makes to dS = P * (dP - D).
template <class F>
SINKMOE_HD inline F row_term(F delta, F gbar_sink, F mass, F dlse) {
  return delta - gbar_sink * mass - dlse;
}

/// One row's contribution to d(sink logit): -A * (Delta + gbar_sink * (1 - A) - dLSE).
template <class F>
SINKMOE_HD inline F logit_grad(F delta, F gbar_sink, F mass, F complement, F dlse) {
  return -mass * (delta + gbar_sink * complement - dlse);
}

}  // namespace sinkmoe::sink
