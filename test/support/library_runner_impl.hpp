#pragma once
// Implementation of library_runner.hpp, included by runner_*.cpp only.

#include <algorithm>
#include <sinkmoe/sinkmoe.hpp>
#include <stdexcept>
#include <type_traits>

#include "support/library_runner.hpp"

namespace sinkmoe::testing::detail {

template <class T>
struct type_tag {
  using type = T;
};

template <class F>
void dispatch_gate(ref::gate_kind g, F&& f) {
  switch (g) {
    case ref::gate_kind::none:
      return f(type_tag<gate::none>{});
    case ref::gate_kind::headwise:
      return f(type_tag<gate::headwise>{});
    case ref::gate_kind::elementwise:
      return f(type_tag<gate::elementwise>{});
  }
}
template <class F>
void dispatch_mask(ref::mask_kind m, F&& f) {
  switch (m) {
    case ref::mask_kind::none:
      return f(type_tag<mask::none>{});
    case ref::mask_kind::causal:
      return f(type_tag<mask::causal>{});
    case ref::mask_kind::sliding_window:
      return f(type_tag<mask::sliding_window>{});
    case ref::mask_kind::streaming:
      return f(type_tag<mask::streaming>{});
  }
}
template <class F>
void dispatch_route(ref::route_kind r, F&& f) {
  switch (r) {
    case ref::route_kind::sink_mass:
      return f(type_tag<route::sink_mass>{});
    case ref::route_kind::output_gate:
      return f(type_tag<route::output_gate>{});
    case ref::route_kind::product:
      return f(type_tag<route::product>{});
  }
}

/// A packed problem: sequence s owns rows [q_off[s], q_off[s+1]) of a B = 1 tensor when varlen.
/// A padded problem: batch entry b has len_q[b] / len_k[b] real rows, at the end `side` says.
struct layout {
  int batch, tq, tk;  // tensor dims (B = 1 and totals for varlen)
  std::vector<std::int32_t> cu_q, cu_k;
  std::vector<std::int32_t> len_q, len_k;
  padding_side side = padding_side::right;
};

template <class Attn, class T>
library_result run_with(const ref::config& c, const layout& lay, const ref::inputs& in,
                        const ref::cotangents& ct, const run_options& opts) {
  using A = accum_t<T>;
  const int B = lay.batch, Tq = lay.tq, Tk = lay.tk, Hq = c.Hq, Hkv = c.Hkv, D = c.D;
  const int Dg = c.gate == ref::gate_kind::elementwise ? D : 1;
  auto convert = [](const std::vector<double>& x, std::size_t n) {
    std::vector<T> r(n, T(0));
    for (std::size_t i = 0; i < std::min(n, x.size()); ++i) r[i] = static_cast<T>(x[i]);
    return r;
  };
  auto convert_accum = [](const std::vector<double>& x, std::size_t n) {
    std::vector<A> r(n, A(0));
    for (std::size_t i = 0; i < std::min(n, x.size()); ++i) r[i] = static_cast<A>(x[i]);
    return r;
  };
  const std::size_t nq = std::size_t(B) * Tq * Hq * D, nk = std::size_t(B) * Tk * Hkv * D,
                    nr = std::size_t(B) * Hq * Tq, nz = std::size_t(B) * Tq * Hq * Dg;
  std::vector<T> q = convert(in.q, nq), k = convert(in.k, nk), v = convert(in.v, nk);
  std::vector<T> z = convert(in.gate_logits, nz);
  std::vector<A> sinks = convert_accum(in.sinks, std::size_t(Hq));
  std::vector<T> out(nq);
  std::vector<A> lse(nr), router(nr), first_key(nr);

  forward_args<T> fa;
  fa.q = {q.data(), {B, Tq, Hq, D}};
  fa.k = {k.data(), {B, Tk, Hkv, D}};
  fa.v = {v.data(), {B, Tk, Hkv, D}};
  if (c.sink == ref::sink_kind::learned) fa.sinks = {sinks.data(), {Hq}};
  if (c.gate != ref::gate_kind::none) fa.gate_logits = {z.data(), {B, Tq, Hq, Dg}};
  fa.out = {out.data(), {B, Tq, Hq, D}};
  fa.lse = {lse.data(), {B, Hq, Tq}};
  fa.router = {router.data(), {B, Hq, Tq}};
  fa.first_key_mass = {first_key.data(), {B, Hq, Tq}};
  fa.params.scale = c.scale;
  if (opts.softcap) fa.params.softcap = c.softcap;
  if (c.mask == ref::mask_kind::sliding_window || c.mask == ref::mask_kind::streaming)
    fa.params.window = c.window;
  if (c.mask == ref::mask_kind::streaming) fa.params.sink_tokens = c.sink_tokens;
  fa.params.alignment = c.top_left ? causal_alignment::top_left : causal_alignment::bottom_right;
  if (c.sink == ref::sink_kind::fixed) fa.params.fixed_sink = c.fixed_sink;
  if (!lay.cu_q.empty())
    fa.varlen = {lay.cu_q.data(), lay.cu_k.data(), static_cast<int>(lay.cu_q.size()) - 1};
  if (!lay.len_q.empty()) fa.seqlens.q = {lay.len_q.data(), {B}};
  if (!lay.len_k.empty()) fa.seqlens.k = {lay.len_k.data(), {B}};
  fa.seqlens.side = lay.side;

  const exec::host ex{opts.threads};
  Attn::forward(ex, fa);
  library_result r;
  r.out.assign(out.begin(), out.end());
  r.lse.assign(lse.begin(), lse.end());
  r.router.assign(router.begin(), router.end());
  r.first_key_mass.assign(first_key.begin(), first_key.end());
  std::vector<std::uint8_t> counted(std::size_t(B) * Tq);
  Attn::counted_tokens(fa, tensor_view<std::uint8_t, 2>{counted.data(), {B, Tq}});
  r.counted.assign(counted.begin(), counted.end());
  if (!opts.backward) return r;

  std::vector<T> dout = convert(ct.dout, nq), dq(nq), dk(nk), dv(nk), dz(nz);
  std::vector<A> drouter = convert_accum(ct.drouter, nr), dlse = convert_accum(ct.dlse, nr),
                 dsinks(static_cast<std::size_t>(Hq));
  backward_args<T> ba;
  ba.dout = {dout.data(), {B, Tq, Hq, D}};
  if (!ct.drouter.empty()) ba.drouter = {drouter.data(), {B, Hq, Tq}};
  if (!ct.dlse.empty()) ba.dlse = {dlse.data(), {B, Hq, Tq}};
  ba.dq = {dq.data(), {B, Tq, Hq, D}};
  ba.dk = {dk.data(), {B, Tk, Hkv, D}};
  ba.dv = {dv.data(), {B, Tk, Hkv, D}};
  if (c.sink == ref::sink_kind::learned) ba.dsinks = {dsinks.data(), {Hq}};
  if (c.gate != ref::gate_kind::none) ba.dgate_logits = {dz.data(), {B, Tq, Hq, Dg}};
  Attn::backward(ex, fa, ba);
  r.dq.assign(dq.begin(), dq.end());
  r.dk.assign(dk.begin(), dk.end());
  r.dv.assign(dv.begin(), dv.end());
  if (c.sink == ref::sink_kind::learned) r.dsinks.assign(dsinks.begin(), dsinks.end());
  if (c.gate != ref::gate_kind::none) r.dgate.assign(dz.begin(), dz.end());
  return r;
}

/// Runs the combination for one sink policy (the other slots dispatched at run time).
template <class Sink, class T>
library_result run_for_sink(const ref::config& c, const layout& lay, const ref::inputs& in,
                            const ref::cotangents& ct, const run_options& opts) {
  library_result result;
  dispatch_gate(c.gate, [&](auto gate_tag) {
    using Gate = typename std::remove_cvref_t<decltype(gate_tag)>::type;
    dispatch_mask(c.mask, [&](auto mask_tag) {
      using Mask = typename std::remove_cvref_t<decltype(mask_tag)>::type;
      dispatch_route(c.route, [&](auto route_tag) {
        using Route = typename std::remove_cvref_t<decltype(route_tag)>::type;
        // The score slot is orthogonal to the others: soft-cap is instantiated for every sink
        // and gate under the causal mask and the deduced route only, to bound compile time.
        constexpr bool softcap_instantiated =
            std::is_same_v<Mask, mask::causal> &&
            std::is_same_v<Route, route::resolve_t<route::deduced, Gate>>;
        if constexpr (Route::uses_gate && !Gate::enabled) {
          throw std::invalid_argument("test config: route needs a gate");
        } else if (opts.softcap) {
          if constexpr (softcap_instantiated)
            result = run_with<attention<Sink, Gate, Mask, Route, score::softcap>, T>(c, lay, in, ct,
                                                                                     opts);
          else
            throw std::invalid_argument(
                "test runner: soft-cap is instantiated for mask causal with the deduced route "
                "only");
        } else {
          result = run_with<attention<Sink, Gate, Mask, Route>, T>(c, lay, in, ct, opts);
        }
      });
    });
  });
  return result;
}

}  // namespace sinkmoe::testing::detail
