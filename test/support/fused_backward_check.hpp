// Checks of the fused backward kernels under the host emulation (test_fused_backward_emulated*):
// the problem of support/fused_forward_check.hpp, run through the emulated fused forward (for the
// out and lse the backward consumes, exactly as on the GPU) and the emulated fused backward,
// with random cotangents for out, the router values G and the lse; compared with the CPU backend
// in fp64 on the same 16-bit-rounded inputs and a naive 16-bit backward.
//
// The fp64 side is the CPU backend through the test runner, or called directly for masks the
// runner does not know (support/test_masks.hpp).
//
// Tolerance: FlashAttention's rule per gradient (dq, dk, dv, d(sinks), d(gate logits)):
//   max |kernel - fp64| <= 2 * max |naive16 - fp64| + atol   (atol: 8 fp32 ulps of max |fp64|)
// naive16 is the most direct computation that rounds where the kernels do: it starts from the
// fused forward's own out and lse (so both carry the same forward rounding), recomputes P in fp32,
// runs the gate and row terms in fp32 (through the policy hooks: the fp64 side is the CPU
// backend, checked against the independent oracle elsewhere), rounds dO of a gated policy, P
// (for dV) and dS (for dQ, dK) to 16 bits, accumulates in fp32 and rounds the outputs once.
// On top: no NaN in any gradient (outputs start as NaN bit patterns, the workspace as NaN).
#pragma once

#include "support/fused_backward_emulation.hpp"
// (first: selects the emulated primitive layer)
#include "support/fused_forward_check.hpp"

namespace sinkmoe::testing::fused_check {

/// Gradients in the reference layout: dq [Bt, TQ, Hq, D], dk / dv [Bt, TK, Hkv, D], dsinks [Hq],
/// dgate [Bt, TQ, Hq, Dg].
struct gradient_set {
  std::vector<double> dq, dk, dv, dsinks, dgate;
  std::vector<double> out, lse;  ///< the forward the gradients were computed from (kernels only)
  arch::emulation_stats backward_stats;  ///< the backward launches' counters (kernels only)
};

/// Cotangents: dout ~ N(0, 1) rounded to E, drouter and dlse ~ N(0, 1) as fp32 values.
template <class E>
ref::cotangents make_cotangents(const problem& pb, unsigned seed) {
  std::mt19937_64 rng(seed * 7919u + 17u);
  std::normal_distribution<double> normal(0.0, 1.0);
  ref::cotangents ct;
  const std::size_t rows = std::size_t(pb.bt) * pb.tq_total * pb.cfg.Hq;
  ct.dout.resize(rows * pb.cfg.D);
  for (double& x : ct.dout) x = round_to<E>(normal(rng));
  ct.drouter.resize(rows);
  for (double& x : ct.drouter) x = static_cast<float>(normal(rng));
  ct.dlse.resize(rows);
  for (double& x : ct.dlse) x = static_cast<float>(normal(rng));
  return ct;
}

/// The fused forward then the fused backward, emulated. out rows, dq, dk, dv and dgate start as
/// NaN bit patterns, the statistics as NaN.
template <class Attn, int HeadDim, class E>
gradient_set run_backward_kernels(const problem& pb, const ref::cotangents& ct) {
  using Sink = typename Attn::sink_type;
  using Gate = typename Attn::gate_type;
  using Mask = typename Attn::mask_type;
  const ref::config& c = pb.cfg;
  const int D = HeadDim, Hq = c.Hq, Hkv = c.Hkv, B = pb.bt, TQ = pb.tq_total, TK = pb.tk_total;
  const int dg = Gate::logit_dim(D);
  const auto to_e = [](double x) { return arch::from_float<E>(static_cast<float>(x)); };
  const auto convert = [&](const std::vector<double>& x) {
    std::vector<E> y(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) y[i] = to_e(x[i]);
    return y;
  };
  const std::vector<E> q = convert(pb.in.q), k = convert(pb.in.k), v = convert(pb.in.v),
                       z = convert(pb.in.gate_logits), dout = convert(ct.dout);
  const std::vector<float> sinks(pb.in.sinks.begin(), pb.in.sinks.end());
  const std::vector<float> drouter(ct.drouter.begin(), ct.drouter.end());
  const std::vector<float> dlse(ct.dlse.begin(), ct.dlse.end());
  const E sentinel = arch::from_bits<E>(k_sentinel_bits);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<E> out(q.size(), sentinel), dq(q.size(), sentinel), dk(k.size(), sentinel),
      dv(v.size(), sentinel), dz(z.size(), sentinel);
  std::vector<float> lse(std::size_t(B) * Hq * TQ, nan), dsinks(std::size_t(Hq), nan);

  forward_args<E> a;
  a.q = {q.data(), {B, TQ, Hq, D}};
  a.k = {k.data(), {B, TK, Hkv, D}};
  a.v = {v.data(), {B, TK, Hkv, D}};
  if constexpr (std::is_same_v<Sink, sink::learned>) a.sinks = {sinks.data(), {Hq}};
  if constexpr (Gate::enabled) a.gate_logits = {z.data(), {B, TQ, Hq, dg}};
  a.out = {out.data(), {B, TQ, Hq, D}};
  a.lse = {lse.data(), {B, Hq, TQ}};
  a.params = params_for<Sink, Mask>(pb);
  if (pb.spec.varlen())
    a.varlen = {pb.cu_q.data(), pb.cu_k.data(), static_cast<int>(pb.cu_q.size()) - 1};
  emulated_fused_forward<Attn, HeadDim>(a);

  backward_args<E> g;
  g.dout = {dout.data(), {B, TQ, Hq, D}};
  g.drouter = {drouter.data(), {B, Hq, TQ}};
  g.dlse = {dlse.data(), {B, Hq, TQ}};
  g.dq = {dq.data(), {B, TQ, Hq, D}};
  g.dk = {dk.data(), {B, TK, Hkv, D}};
  g.dv = {dv.data(), {B, TK, Hkv, D}};
  if constexpr (Sink::trainable) g.dsinks = {dsinks.data(), {Hq}};
  if constexpr (Gate::enabled) g.dgate_logits = {dz.data(), {B, TQ, Hq, dg}};
  const arch::emulation_stats stats = emulated_fused_backward<Attn, HeadDim>(a, g);

  const auto back = [](const std::vector<E>& x) {
    std::vector<double> y(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) y[i] = arch::to_float(x[i]);
    return y;
  };
  gradient_set r;
  r.dq = back(dq);
  r.dk = back(dk);
  r.dv = back(dv);
  r.dgate = back(dz);
  r.out = back(out);
  if constexpr (Sink::trainable) r.dsinks.assign(dsinks.begin(), dsinks.end());
  r.lse.assign(lse.begin(), lse.end());
  r.backward_stats = stats;
  return r;
}

/// The fp64 CPU backend's gradients (through the test runner).
inline gradient_set reference_gradients_fp64(const problem& pb, const ref::cotangents& ct) {
  run_options opts;
  opts.backward = true;
  opts.threads = 1;
  opts.softcap = pb.spec.softcap > 0.0;
  const library_result r =
      pb.spec.varlen()
          ? run_library_varlen<double>(pb.cfg, pb.spec.q_len, pb.spec.k_len, pb.in, ct, opts)
          : run_library<double>(pb.cfg, pb.in, ct, opts);
  gradient_set g;
  g.dq = r.dq;
  g.dk = r.dk;
  g.dv = r.dv;
  g.dsinks = r.dsinks;
  g.dgate = r.dgate;
  return g;
}

/// The fp64 CPU backend's gradients called directly (any policies, e.g. masks the runner does
/// not know; instantiates host::forward / backward<double>).
template <class Attn>
gradient_set reference_gradients_fp64_direct(const problem& pb, const ref::cotangents& ct) {
  using Sink = typename Attn::sink_type;
  using Gate = typename Attn::gate_type;
  using Mask = typename Attn::mask_type;
  const ref::config& c = pb.cfg;
  const int D = c.D, Hq = c.Hq, Hkv = c.Hkv, B = pb.bt, TQ = pb.tq_total, TK = pb.tk_total;
  const int dg = Gate::logit_dim(D);
  const std::vector<double>& q = pb.in.q;
  std::vector<double> out(q.size()), lse(std::size_t(B) * Hq * TQ);
  gradient_set r;
  r.dq.resize(q.size());
  r.dk.resize(pb.in.k.size());
  r.dv.resize(pb.in.v.size());
  r.dgate.resize(pb.in.gate_logits.size());
  r.dsinks.resize(Sink::trainable ? std::size_t(Hq) : 0u);
  forward_args<double> a;
  a.q = {q.data(), {B, TQ, Hq, D}};
  a.k = {pb.in.k.data(), {B, TK, Hkv, D}};
  a.v = {pb.in.v.data(), {B, TK, Hkv, D}};
  if constexpr (std::is_same_v<Sink, sink::learned>) a.sinks = {pb.in.sinks.data(), {Hq}};
  if constexpr (Gate::enabled) a.gate_logits = {pb.in.gate_logits.data(), {B, TQ, Hq, dg}};
  a.out = {out.data(), {B, TQ, Hq, D}};
  a.lse = {lse.data(), {B, Hq, TQ}};
  a.params = params_for<Sink, Mask>(pb);
  if (pb.spec.varlen())
    a.varlen = {pb.cu_q.data(), pb.cu_k.data(), static_cast<int>(pb.cu_q.size()) - 1};
  Attn::forward(exec::host{1}, a);
  backward_args<double> g;
  g.dout = {ct.dout.data(), {B, TQ, Hq, D}};
  g.drouter = {ct.drouter.data(), {B, Hq, TQ}};
  g.dlse = {ct.dlse.data(), {B, Hq, TQ}};
  g.dq = {r.dq.data(), {B, TQ, Hq, D}};
  g.dk = {r.dk.data(), {B, TK, Hkv, D}};
  g.dv = {r.dv.data(), {B, TK, Hkv, D}};
  if constexpr (Sink::trainable) g.dsinks = {r.dsinks.data(), {Hq}};
  if constexpr (Gate::enabled) g.dgate_logits = {r.dgate.data(), {B, TQ, Hq, dg}};
  Attn::backward(exec::host{1}, a, g);
  return r;
}

/// The naive 16-bit backward of the tolerance rule (header comment), from the forward outputs
/// fwd (out rounded to 16 bits, lse in fp32).
template <class Attn, class E>
gradient_set naive16_backward(const problem& pb, const ref::cotangents& ct, const outputs& fwd) {
  using Sink = typename Attn::sink_type;
  using Gate = typename Attn::gate_type;
  using Mask = typename Attn::mask_type;
  using Route = typename Attn::route_type;
  using Score = typename Attn::score_type;
  const ref::config& c = pb.cfg;
  const int D = c.D, Hq = c.Hq, Hkv = c.Hkv, TQ = pb.tq_total, TK = pb.tk_total;
  const int dg = Gate::logit_dim(D);
  const attention_params params = params_for<Sink, Mask>(pb);
  const Score score(params, D);
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const auto r16 = [](float x) { return static_cast<float>(round_to<E>(x)); };

  std::vector<float> dq(fwd.out.size(), 0.0f), dk(pb.in.k.size(), 0.0f), dv(dk.size(), 0.0f),
      dz(std::size_t(pb.bt) * TQ * Hq * dg, 0.0f), dsinks(std::size_t(Hq), 0.0f);
  for (const span& sp : pb.spans) {
    const Mask mask(params, sp.tq, sp.tk);
    for (int h = 0; h < Hq; ++h) {
      const int hk = h / (Hq / Hkv);
      float sink_logit = neg_inf;
      if (c.sink == ref::sink_kind::learned) sink_logit = static_cast<float>(pb.in.sinks[h]);
      if (c.sink == ref::sink_kind::fixed) sink_logit = static_cast<float>(c.fixed_sink);
      for (int t = 0; t < sp.tq; ++t) {
        const int row = sp.q_begin + t;
        const std::size_t qi = ((std::size_t(sp.b) * TQ + row) * Hq + h) * D;
        const std::size_t ri = (std::size_t(sp.b) * Hq + h) * TQ + row;
        const float lse = static_cast<float>(fwd.lse[ri]);
        std::vector<int> keys;
        std::vector<float> dots;
        float key0_score = neg_inf;
        for (int j = 0; j < sp.tk; ++j) {
          if (!mask.visible(t, j)) continue;
          const std::size_t ki = ((std::size_t(sp.b) * TK + sp.k_begin + j) * Hkv + hk) * D;
          float dot = 0.0f;
          for (int d = 0; d < D; ++d)
            dot += static_cast<float>(pb.in.q[qi + d]) * static_cast<float>(pb.in.k[ki + d]);
          if (j == 0) key0_score = score.transform(dot);
          keys.push_back(j);
          dots.push_back(dot);
        }
        const bool empty = keys.empty();
        std::vector<float> dy(D), y(D), d_attn(D), z(std::max(dg, 1), 0.0f), dzr(z.size());
        float delta = 0.0f;
        for (int d = 0; d < D; ++d) {
          dy[d] = static_cast<float>(ct.dout[qi + d]);
          y[d] = static_cast<float>(fwd.out[qi + d]);
          delta += dy[d] * y[d];
        }
        const std::size_t zi = ((std::size_t(sp.b) * TQ + row) * Hq + h) * dg;
        for (int i = 0; i < dg; ++i) z[i] = static_cast<float>(pb.in.gate_logits[zi + i]);
        const float sink_score = Sink::first_key_is_sink ? key0_score : sink_logit;
        const sink::row_sink<float> rs = sink::row_from_lse(lse, sink_score);
        const float gate_value = Gate::router_value(z.data(), D);
        const float gbar = empty ? 0.0f : static_cast<float>(ct.drouter[ri]);
        float gbar_sink = 0.0f, gbar_gate = 0.0f;
        Route::split(gbar, rs.complement, gate_value, gbar_sink, gbar_gate);
        const float dlse = std::isfinite(lse) ? static_cast<float>(ct.dlse[ri]) : 0.0f;
        Gate::backward_row(dy.data(), y.data(), d_attn.data(), D, z.data(), gbar_gate, dzr.data());
        if constexpr (Gate::enabled) {
          for (int d = 0; d < D; ++d) d_attn[d] = r16(d_attn[d]);
          for (int i = 0; i < dg; ++i) dz[zi + i] = dzr[i];
        }
        const float term = sink::row_term(delta, gbar_sink, rs.mass, dlse);
        if constexpr (Sink::trainable)
          dsinks[h] += sink::logit_grad(delta, gbar_sink, rs.mass, rs.complement, dlse);
        for (std::size_t i = 0; i < keys.size(); ++i) {
          const int j = keys[i];
          const std::size_t ki = ((std::size_t(sp.b) * TK + sp.k_begin + j) * Hkv + hk) * D;
          const float prob = std::isfinite(lse) ? std::exp(score.transform(dots[i]) - lse) : 0.0f;
          float dp = 0.0f;
          for (int d = 0; d < D; ++d) dp += d_attn[d] * static_cast<float>(pb.in.v[ki + d]);
          float ds = prob * (dp - term);
          if (Sink::first_key_is_sink && j == 0 && prob != 0.0f) ds -= gbar_sink * rs.mass;
          ds = r16(ds * static_cast<float>(score.derivative(dots[i])));
          const float p16 = r16(prob);
          for (int d = 0; d < D; ++d) {
            dv[ki + d] += p16 * d_attn[d];
            dk[ki + d] += ds * static_cast<float>(pb.in.q[qi + d]);
            dq[qi + d] += ds * static_cast<float>(pb.in.k[ki + d]);
          }
        }
      }
    }
  }
  const auto out16 = [&](const std::vector<float>& x) {
    std::vector<double> y(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) y[i] = round_to<E>(x[i]);
    return y;
  };
  gradient_set r;
  r.dq = out16(dq);
  r.dk = out16(dk);
  r.dv = out16(dv);
  r.dgate = out16(dz);
  if constexpr (Sink::trainable) r.dsinks.assign(dsinks.begin(), dsinks.end());
  return r;
}

/// Runs one backward case end to end: kernels (emulated), fp64 CPU backend, naive16; all checks.
/// Returns the worst error ratio err_kernel / (2 err_naive + atol).
template <class Attn, int HeadDim, class E>
double run_backward_case(const case_spec& spec, const std::string& label) {
  using Sink = typename Attn::sink_type;
  using Gate = typename Attn::gate_type;
  using Mask = typename Attn::mask_type;
  using Route = typename Attn::route_type;
  const problem pb = make_problem<Sink, Gate, Mask, Route, E>(spec, HeadDim);
  const ref::cotangents ct = make_cotangents<E>(pb, spec.seed);
  double worst = 0.0;
  BOOST_TEST_CONTEXT("backward " << label) {
    const gradient_set kernel = run_backward_kernels<Attn, HeadDim, E>(pb, ct);
    record_digest("backward " + label, {&kernel.dq, &kernel.dk, &kernel.dv, &kernel.dgate,
                                        &kernel.dsinks, &kernel.out, &kernel.lse});
    gradient_set fp64;
    if constexpr (runner_knows_mask<Mask>)
      fp64 = reference_gradients_fp64(pb, ct);
    else
      fp64 = reference_gradients_fp64_direct<Attn>(pb, ct);
    // The naive backward starts from the kernels' own forward (out, lse), so that both carry the
    // same forward rounding and the rule compares the backward arithmetic alone.
    outputs kernel_forward;
    kernel_forward.out = kernel.out;
    kernel_forward.lse = kernel.lse;
    const gradient_set naive = naive16_backward<Attn, E>(pb, ct, kernel_forward);
    worst = std::max(worst, check_rule<E>("dq", kernel.dq, naive.dq, fp64.dq));
    worst = std::max(worst, check_rule<E>("dk", kernel.dk, naive.dk, fp64.dk));
    worst = std::max(worst, check_rule<E>("dv", kernel.dv, naive.dv, fp64.dv));
    if constexpr (Sink::trainable)
      worst = std::max(worst, check_rule("dsinks", kernel.dsinks, naive.dsinks, fp64.dsinks));
    if constexpr (Gate::enabled)
      worst = std::max(worst, check_rule<E>("dgate_logits", kernel.dgate, naive.dgate, fp64.dgate));
  }
  return worst;
}

/// Every product shape for one policy combination at HeadDim 64, bf16.
template <class Sink, class Gate, class Mask, class Route>
product_summary run_backward_product_shapes(unsigned seed) {
  using attn = attention<Sink, Gate, Mask, Route>;
  product_summary r{1, 0, 0.0};
  for (const case_spec& s : product_shapes(seed)) {
    r.worst_ratio = std::max(r.worst_ratio, run_backward_case<attn, 64, arch::bf16>(
                                                s, describe<attn, 64, arch::bf16>(s)));
    ++r.cases;
  }
  BOOST_TEST_MESSAGE("backward " << Sink::name << "/" << Gate::name << "/" << Mask::name << "/"
                                 << Route::name << ": worst err_kernel / (2 err_naive + atol) = "
                                 << r.worst_ratio);
  return r;
}

/// The backward kernels on every mask and route for one sink and gate policy.
template <class Sink, class Gate>
product_summary run_backward_product_masks(unsigned seed) {
  return for_each_mask_and_route<Sink, Gate>(seed,
                                             []<class S, class G, class M, class R>(unsigned s) {
                                               return run_backward_product_shapes<S, G, M, R>(s);
                                             });
}

}  // namespace sinkmoe::testing::fused_check
