// Host side of the GPU test program (support/gpu_reference.hpp): problems, fp64 and naive
// 16-bit references and the FlashAttention rule, from the emulated suites' check headers.
// Compiled by g++ (these headers include the host emulation of the primitive layer, which nvcc
// must not see); nothing here launches or emulates a kernel.
#include "support/gpu_reference.hpp"

#include "support/fused_backward_check.hpp"

namespace sinkmoe::testing::gpu {

namespace {

namespace fc = fused_check;

/// Calls f(attention<...>{}, element type{}) for the runtime (policy, element).
template <class F>
decltype(auto) dispatch(policy p, element e, F&& f) {
  const auto with_element = [&](auto attn) -> decltype(auto) {
    if (e == element::bf16) return f(attn, arch::bf16{});
    return f(attn, arch::fp16{});
  };
  switch (p) {
    case policy::vanilla_causal:
      return with_element(attention<sink::none, gate::none, mask::causal>{});
    case policy::sink_sliding_window:
      return with_element(attention<sink::learned, gate::none, mask::sliding_window>{});
    case policy::gated_causal:
      return with_element(attention<sink::none, gate::elementwise, mask::causal>{});
    case policy::sink_gate_product:
      return with_element(attention<sink::learned, gate::headwise, mask::none, route::product>{});
    case policy::streaming_fixed_sink:
      break;
  }
  return with_element(attention<sink::fixed, gate::none, mask::streaming>{});
}

fc::case_spec to_case_spec(const spec& s) {
  fc::case_spec c;
  c.B = s.B;
  c.Tq = s.Tq;
  c.Tk = s.Tk;
  c.Hq = s.Hq;
  c.Hkv = s.Hkv;
  c.window = s.window;
  c.sink_tokens = s.sink_tokens;
  c.fixed_sink = s.fixed_sink;
  c.q_len = s.q_len;
  c.k_len = s.k_len;
  c.seed = s.seed;
  return c;
}

template <class Attn, class E>
fc::problem problem_of(const spec& s, int head_dim) {
  return fc::make_problem<typename Attn::sink_type, typename Attn::gate_type,
                          typename Attn::mask_type, typename Attn::route_type, E>(to_case_spec(s),
                                                                                  head_dim);
}

}  // namespace

const char* policy_name(policy p) {
  switch (p) {
    case policy::vanilla_causal:
      return "vanilla causal";
    case policy::sink_sliding_window:
      return "learned sink, sliding window";
    case policy::gated_causal:
      return "elementwise gate, causal";
    case policy::sink_gate_product:
      return "learned sink + headwise gate, route::product";
    case policy::streaming_fixed_sink:
      return "fixed sink, streaming";
  }
  return "?";
}

problem_data make_problem(policy p, element e, const spec& s, int head_dim) {
  return dispatch(p, e, [&](auto attn, auto element_tag) {
    using Attn = decltype(attn);
    using E = decltype(element_tag);
    const fc::problem pb = problem_of<Attn, E>(s, head_dim);
    const ref::cotangents ct = fc::make_cotangents<E>(pb, s.seed);
    problem_data d;
    d.bt = pb.bt;
    d.tq_total = pb.tq_total;
    d.tk_total = pb.tk_total;
    d.Hq = pb.cfg.Hq;
    d.Hkv = pb.cfg.Hkv;
    d.D = head_dim;
    d.dg = Attn::gate_type::logit_dim(head_dim);
    d.cu_q = pb.cu_q;
    d.cu_k = pb.cu_k;
    d.params = fc::params_for<typename Attn::sink_type, typename Attn::mask_type>(pb);
    d.q = pb.in.q;
    d.k = pb.in.k;
    d.v = pb.in.v;
    d.sinks = pb.in.sinks;
    d.gate_logits = pb.in.gate_logits;
    d.dout = ct.dout;
    d.drouter = ct.drouter;
    d.dlse = ct.dlse;
    return d;
  });
}

double check_forward(policy p, element e, const spec& s, int head_dim,
                     const forward_outputs& kernel) {
  return dispatch(p, e, [&](auto attn, auto element_tag) {
    using Attn = decltype(attn);
    using E = decltype(element_tag);
    const fc::problem pb = problem_of<Attn, E>(s, head_dim);
    const fc::outputs fp64 = fc::reference_fp64<Attn>(pb);
    const fc::outputs naive = fc::naive16<Attn, E>(pb);
    const fc::outputs got{kernel.out, kernel.lse, kernel.router, kernel.first_key_mass};
    double worst = 0.0;
    worst = std::max(worst, fc::check_rule<E>("out", got.out, naive.out, fp64.out));
    worst = std::max(worst, fc::check_rule("lse", got.lse, naive.lse, fp64.lse));
    worst = std::max(worst, fc::check_rule("router", got.router, naive.router, fp64.router));
    worst = std::max(worst, fc::check_rule("first_key_mass", got.first_key_mass,
                                           naive.first_key_mass, fp64.first_key_mass));
    fc::check_empty_rows<Attn>(pb, got);
    return worst;
  });
}

double check_backward(policy p, element e, const spec& s, int head_dim,
                      const forward_outputs& forward, const gradients& kernel) {
  return dispatch(p, e, [&](auto attn, auto element_tag) {
    using Attn = decltype(attn);
    using E = decltype(element_tag);
    const fc::problem pb = problem_of<Attn, E>(s, head_dim);
    const ref::cotangents ct = fc::make_cotangents<E>(pb, s.seed);
    const fc::gradient_set fp64 = fc::reference_gradients_fp64(pb, ct);
    fc::outputs kernel_forward;
    kernel_forward.out = forward.out;
    kernel_forward.lse = forward.lse;
    const fc::gradient_set naive = fc::naive16_backward<Attn, E>(pb, ct, kernel_forward);
    double worst = 0.0;
    worst = std::max(worst, fc::check_rule<E>("dq", kernel.dq, naive.dq, fp64.dq));
    worst = std::max(worst, fc::check_rule<E>("dk", kernel.dk, naive.dk, fp64.dk));
    worst = std::max(worst, fc::check_rule<E>("dv", kernel.dv, naive.dv, fp64.dv));
    if constexpr (Attn::sink_type::trainable)
      worst = std::max(worst, fc::check_rule("dsinks", kernel.dsinks, naive.dsinks, fp64.dsinks));
    if constexpr (Attn::gate_type::enabled)
      worst =
          std::max(worst, fc::check_rule<E>("dgate_logits", kernel.dgate, naive.dgate, fp64.dgate));
    return worst;
  });
}

}  // namespace sinkmoe::testing::gpu
