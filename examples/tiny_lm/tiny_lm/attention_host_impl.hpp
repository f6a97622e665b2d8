#pragma once
// Builds attention_kernels tables from attention<...> types; included by the
// attention_host_*.cpp translation units only (this is where the library's kernels compile).

#include <sinkmoe/sinkmoe.hpp>

#include "tiny_lm/attention_backend.hpp"

namespace tiny_lm::detail {

/// The attention<...> type of a mechanism. sink-gated routes through route::product:
/// G = (mean gate) * (1 - sink mass), so both ways a head can switch itself off are balanced.
template <mechanism M, class Mask>
struct attention_for;
template <class Mask>
struct attention_for<mechanism::vanilla, Mask> {
  using type = sinkmoe::attention<sinkmoe::sink::none, sinkmoe::gate::none, Mask>;
};
template <class Mask>
struct attention_for<mechanism::sink, Mask> {
  using type = sinkmoe::attention<sinkmoe::sink::learned, sinkmoe::gate::none, Mask>;
};
template <class Mask>
struct attention_for<mechanism::gated, Mask> {
  using type = sinkmoe::attention<sinkmoe::sink::none, sinkmoe::gate::elementwise, Mask>;
};
template <class Mask>
struct attention_for<mechanism::gated_headwise, Mask> {
  using type = sinkmoe::attention<sinkmoe::sink::none, sinkmoe::gate::headwise, Mask>;
};
template <class Mask>
struct attention_for<mechanism::sink_gated, Mask> {
  using type = sinkmoe::attention<sinkmoe::sink::learned, sinkmoe::gate::elementwise, Mask,
                                  sinkmoe::route::product>;
};

template <class Attn, class T>
void counted_tokens_thunk(const sinkmoe::forward_args<T>& args,
                          sinkmoe::tensor_view<std::uint8_t, 2> counted) {
  Attn::counted_tokens(args, counted);
}

template <mechanism M, class Mask, class T>
attention_kernels<T> make_kernels() {
  using Attn = typename attention_for<M, Mask>::type;
  static const std::string name =
      std::string("attention<sink::") + Attn::sink_type::name + ", gate::" + Attn::gate_type::name +
      ", mask::" + Attn::mask_type::name + ", route::" + Attn::route_type::name + ">";
  return {name.c_str(), Attn::excludes_sink_only_queries, &Attn::template forward<T>,
          &Attn::template backward<T>, &counted_tokens_thunk<Attn, T>};
}

}  // namespace tiny_lm::detail
