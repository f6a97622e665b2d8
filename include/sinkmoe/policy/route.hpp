#pragma once
// Route policies: what the router value G[t, h] is (docs/method.md section 2), and how its upstream
// gradient gbar splits between the sink path and the gate path in backward.
//
// Contract (checked by sinkmoe::route_policy):
//   static constexpr bool uses_sink, uses_gate
//   F router(F sink_complement, F gate_value)       G from (1 - A) and the gate's router value
//   void split(F gbar, F sink_complement, F gate_value, F& gbar_sink, F& gbar_gate)
// route::deduced is resolved by attention<> to output_gate when there is a gate, else sink_mass.

#include <sinkmoe/core/config.hpp>
#include <type_traits>

namespace sinkmoe::route {

/// G = 1 - (attention mass on the sink): the MoE reading of the sink (Vanilla, Sink).
struct sink_mass {
  static constexpr const char* name = "sink_mass";
  static constexpr bool uses_sink = true;
  static constexpr bool uses_gate = false;
  template <class F>
  SINKMOE_HD static F router(F sink_complement, F) {
    return sink_complement;
  }
  template <class F>
  SINKMOE_HD static void split(F gbar, F, F, F& gbar_sink, F& gbar_gate) {
    gbar_sink = gbar;
    gbar_gate = F(0);
  }
};

/// G = the output gate's router value (Gated attention).
struct output_gate {
  static constexpr const char* name = "output_gate";
  static constexpr bool uses_sink = false;
  static constexpr bool uses_gate = true;
  template <class F>
  SINKMOE_HD static F router(F, F gate_value) {
    return gate_value;
  }
  template <class F>
  SINKMOE_HD static void split(F gbar, F, F, F& gbar_sink, F& gbar_gate) {
    gbar_sink = F(0);
    gbar_gate = gbar;
  }
};

/// G = gate * (1 - A): both routers at once, for sink + gate models.
struct product {
  static constexpr const char* name = "product";
  static constexpr bool uses_sink = true;
  static constexpr bool uses_gate = true;
  template <class F>
  SINKMOE_HD static F router(F sink_complement, F gate_value) {
    return sink_complement * gate_value;
  }
  template <class F>
  SINKMOE_HD static void split(F gbar, F sink_complement, F gate_value, F& gbar_sink,
                               F& gbar_gate) {
    gbar_sink = gbar * gate_value;
    gbar_gate = gbar * sink_complement;
  }
};

/// Placeholder: output_gate when the attention has an output gate, sink_mass otherwise.
struct deduced {};

/// Resolves route::deduced against the gate policy; any other route is kept.
template <class Route, class Gate>
using resolve_t =
    std::conditional_t<std::is_same_v<Route, deduced>,
                       std::conditional_t<Gate::enabled, output_gate, sink_mass>, Route>;

}  // namespace sinkmoe::route
