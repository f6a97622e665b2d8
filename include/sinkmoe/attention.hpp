#pragma once
// attention<Sink, Gate, Mask, Route, Score>: composes the five policy slots (docs/design.md
// section 3) and dispatches to a backend. Vanilla, Sink and Gated attention are aliases over it.

#include <cstdint>
#include <sinkmoe/args.hpp>
#include <sinkmoe/core/error.hpp>
#include <sinkmoe/exec.hpp>
#include <sinkmoe/host/backward.hpp>
#include <sinkmoe/host/forward.hpp>
#include <sinkmoe/policy/concepts.hpp>
#include <sinkmoe/policy/gate.hpp>
#include <sinkmoe/policy/mask.hpp>
#include <sinkmoe/policy/route.hpp>
#include <sinkmoe/policy/score.hpp>
#include <sinkmoe/policy/sink.hpp>
#include <sinkmoe/policy/tiles.hpp>
#include <sinkmoe/validate.hpp>
#include <type_traits>

namespace sinkmoe {

/// The backend behind an execution tag other than exec::host: a backend's header specialises it
/// with static forward<Attn>(ex, args) and backward<Attn>(ex, args, grads) (exec::cuda:
/// <sinkmoe/cuda/fused.cuh>). Calling attention<>::forward with a tag whose backend header is
/// not included fails to compile (incomplete type).
template <class Exec>
struct backend;

/// Attention composed from policies. Route defaults to route::deduced (output gate if there is
/// one, else sink mass); Score defaults to the plain scaled dot product.
template <sink_policy Sink, gate_policy Gate, mask_policy Mask, class Route = route::deduced,
          score_policy Score = score::scaled>
struct attention {
  using sink_type = Sink;
  using gate_type = Gate;
  using mask_type = Mask;
  using route_type = route::resolve_t<Route, Gate>;
  using score_type = Score;
  static_assert(route_policy<route_type>, "Route does not satisfy sinkmoe::route_policy");
  static_assert(!route_type::uses_gate || Gate::enabled,
                "this route reads the output gate, but the gate policy is gate::none");

  /// True when a query whose only visible key is the sink has a router value that is
  /// structurally 0 (vanilla, route on the sink: the sink is the first real key), so balancing
  /// leaves such queries out (docs/method.md section 5). Which queries those are is the mask's
  /// call: the first query of a causal mask, none under mask::none with more than one key.
  static constexpr bool excludes_sink_only_queries =
      Sink::first_key_is_sink && route_type::uses_sink;

  /// Checks every argument; throws sinkmoe::error naming the first bad one. Writes nothing.
  template <class T>
  static problem_shape validate(const forward_args<T>& args) {
    return detail::validate_forward<Sink, Gate, Mask, Score>(args);
  }
  template <class T>
  static problem_shape validate(const forward_args<T>& args, const backward_args<T>& grads) {
    return detail::validate_backward<Sink, Gate, Mask, Score>(args, grads);
  }

  /// Writes out, and lse / router / first_key_mass where given.
  template <class T>
  static void forward(const exec::host& ex, const forward_args<T>& args) {
    detail::require(ex.threads >= 0, "exec::host.threads = ", ex.threads, ": must be >= 0");
    const problem_shape shape = validate(args);
    host::forward<attention>(ex, args, shape);
  }

  /// Writes dq, dk, dv (and dsinks, dgate_logits) from dout and the optional dL/dG (drouter,
  /// e.g. from balance) and dL/d(lse). Needs the forward's out and lse.
  template <class T>
  static void backward(const exec::host& ex, const forward_args<T>& args,
                       const backward_args<T>& grads) {
    detail::require(ex.threads >= 0, "exec::host.threads = ", ex.threads, ": must be >= 0");
    const problem_shape shape = validate(args, grads);
    host::backward<attention>(ex, args, grads, shape);
  }

  /// The same calls on another backend (exec::cuda{stream} with <sinkmoe/cuda/fused.cuh>): the
  /// same arguments, validation and semantics; see the backend's header for what it adds
  /// (element types, head dims, alignment, synchronisation).
  template <class Exec, class T>
  requires(!std::is_same_v<Exec, exec::host>) static void forward(const Exec& ex,
                                                                  const forward_args<T>& args) {
    backend<Exec>::template forward<attention>(ex, args);
  }
  template <class Exec, class T>
  requires(!std::is_same_v<Exec, exec::host>) static void backward(const Exec& ex,
                                                                   const forward_args<T>& args,
                                                                   const backward_args<T>& grads) {
    backend<Exec>::template backward<attention>(ex, args, grads);
  }

  /// Marks the query rows [B, Tq] whose router values count towards head importance: real rows
  /// (not padding) that see at least one key, minus the queries that see the vanilla sink alone
  /// (excludes_sink_only_queries), and (if given) where token_mask != 0. Writes every row.
  template <class T>
  static void counted_tokens(const forward_args<T>& args, tensor_view<std::uint8_t, 2> counted,
                             tensor_view<const std::uint8_t, 2> token_mask = {}) {
    const problem_shape shape = validate(args);
    detail::require_shape("counted_tokens.counted", counted, {shape.batch, shape.tq});
    if (!token_mask.empty())
      detail::require_shape("counted_tokens.token_mask", token_mask, {shape.batch, shape.tq});
    for (index_t b = 0; b < shape.batch; ++b)
      for (index_t t = 0; t < shape.tq; ++t) counted(b, t) = 0;  // padding stays 0
    for (int s = 0; s < shape.num_seqs; ++s) {
      const sequence_span span = sequence_at(shape, args, s);
      const Mask mask(args.params, span.tq, span.tk);
      for (int t = 0; t < span.tq; ++t) {
        const int row = span.q_begin + t;
        bool counts = row_has_visible_key(mask, t);
        if (excludes_sink_only_queries && row_sees_only_first_key(mask, t)) counts = false;
        if (!token_mask.empty() && token_mask(span.batch_index, row) == 0) counts = false;
        counted(span.batch_index, row) = counts ? 1 : 0;
      }
    }
  }
};

/// Vanilla softmax attention; the first token is the sink (G = 1 - P[t, 0]).
template <class Mask = mask::causal>
using vanilla_attention = attention<sink::none, gate::none, Mask>;
/// GPT-OSS sink attention: a learned logit per query head in the softmax denominator.
template <class Mask = mask::causal>
using sink_attention = attention<sink::learned, gate::none, Mask>;
/// Qwen3-Next gated attention: a sigmoid output gate (elementwise by default).
template <class Mask = mask::causal, class Gate = gate::elementwise>
using gated_attention = attention<sink::none, Gate, Mask>;

}  // namespace sinkmoe
