// Checks of the fused forward kernel under the host emulation (test_fused_forward_emulated*):
// builds a problem in 16-bit inputs, runs the kernel, the CPU backend in fp64 on the same
// 16-bit-rounded inputs, and a naive 16-bit computation, and compares them.
//
// Tolerance (FlashAttention's rule, docs/design.md section 7): for each of
// out, lse, router and first_key_mass,
//   max |kernel - fp64| <= 2 * max |naive16 - fp64| + atol
// where fp64 is the CPU backend (sinkmoe::attention<...>::forward(exec::host) in double through
// the test runner, or directly for policies the runner does not know) and naive16 is the most
// direct computation that rounds like the kernel: fp32 scores and softmax statistics, the
// normalised P rounded to the 16-bit element type before P V, fp32 accumulation, the gate in
// fp32, out rounded to 16 bits once. atol has two terms, the larger counts:
//  - 8 fp32 ulps of the largest |fp64| value of the tensor (at least of 1), for the fp32
//    outputs (lse, router, first_key_mass, dsinks), where only accumulation order separates
//    the naive from the kernel;
//  - for tensors stored in 16 bits (out, dq, dk, dv, d gate logits), FlashAttention's rounding
//    term 2 * max |fl(fl(ref + 0.3) - 0.3) - ref|, fl the rounding to the storage type and ref
//    the fp64 value rounded to it: the naive and the kernel round the same quantities, but a
//    different accumulation order can flip one intermediate rounding (a dS, a P) to the other
//    16-bit neighbour, and in a row that one term dominates (seen on an H200 and in the
//    emulation alike: fixed sink 5, D = 128, one query row's dq) the naive can happen to be
//    nearly exact where the kernel is a 16-bit ulp away.
// Non-finite reference values (lse = -inf of an empty row without a sink) must be matched
// exactly. On top: no NaN in any kernel output, every row written (outputs start as NaN),
// nothing written outside the rows (out carries 8 padding elements per row, checked bitwise),
// and empty rows give out = 0, router = 0 and lse = the sink logit or -inf exactly.
#pragma once

#include <boost/test/unit_test.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "support/fused_forward_emulation.hpp"
#include "support/output_digest.hpp"
#include "support/library_runner.hpp"
#include "support/reference.hpp"

namespace sinkmoe::testing::fused_check {

namespace arch = sinkmoe::arch;

// ---- Policy types to the runner's runtime kinds ----

template <class Sink>
constexpr ref::sink_kind sink_kind_of() {
  if constexpr (std::is_same_v<Sink, sink::none>) return ref::sink_kind::none;
  if constexpr (std::is_same_v<Sink, sink::learned>) return ref::sink_kind::learned;
  if constexpr (std::is_same_v<Sink, sink::fixed>) return ref::sink_kind::fixed;
}
template <class Gate>
constexpr ref::gate_kind gate_kind_of() {
  if constexpr (std::is_same_v<Gate, gate::none>) return ref::gate_kind::none;
  if constexpr (std::is_same_v<Gate, gate::headwise>) return ref::gate_kind::headwise;
  if constexpr (std::is_same_v<Gate, gate::elementwise>) return ref::gate_kind::elementwise;
}
template <class Route>
constexpr ref::route_kind route_kind_of() {
  if constexpr (std::is_same_v<Route, route::sink_mass>) return ref::route_kind::sink_mass;
  if constexpr (std::is_same_v<Route, route::output_gate>) return ref::route_kind::output_gate;
  if constexpr (std::is_same_v<Route, route::product>) return ref::route_kind::product;
}
/// The runner's mask kind, or none for a mask it does not know (then the harness calls the CPU
/// backend directly).
template <class Mask>
constexpr bool runner_knows_mask =
    std::is_same_v<Mask, mask::none> || std::is_same_v<Mask, mask::causal> ||
    std::is_same_v<Mask, mask::sliding_window> || std::is_same_v<Mask, mask::streaming>;
template <class Mask>
constexpr ref::mask_kind mask_kind_of() {
  if constexpr (std::is_same_v<Mask, mask::causal>) return ref::mask_kind::causal;
  if constexpr (std::is_same_v<Mask, mask::sliding_window>) return ref::mask_kind::sliding_window;
  if constexpr (std::is_same_v<Mask, mask::streaming>) return ref::mask_kind::streaming;
  return ref::mask_kind::none;
}

// ---- Problems ----

/// Sizes and runtime parameters of one case. Dense: B sequences of Tq queries and Tk keys.
/// Varlen: q_len / k_len give the sequences (B, Tq, Tk are then derived).
struct case_spec {
  int B = 1, Tq = 1, Tk = 1, Hq = 1, Hkv = 1;
  bool top_left = false;
  int window = 1;           ///< sliding_window / streaming
  int sink_tokens = 0;      ///< streaming
  double fixed_sink = 0.0;  ///< sink::fixed
  double q_scale = 1.0;     ///< q ~ N(0, q_scale^2): larger gives peakier softmax rows
  double softcap = 0.0;     ///< > 0: score::softcap
  std::vector<int> q_len, k_len;
  unsigned seed = 1;
  [[nodiscard]] bool varlen() const { return !q_len.empty(); }
};

/// One sequence of a problem: where its rows sit in the tensors.
struct span {
  int b, q_begin, tq, k_begin, tk;
};

/// A problem ready to run: config for the runner, tensors in [Bt, TQ, H, D] layout (dense: the
/// batch; varlen: Bt = 1 and the packed totals), inputs already rounded to the element type.
struct problem {
  case_spec spec;
  ref::config cfg;
  int bt = 1, tq_total = 0, tk_total = 0;
  std::vector<span> spans;
  std::vector<std::int32_t> cu_q, cu_k;
  ref::inputs in;
};

/// Outputs in the reference layout: out [Bt, TQ, Hq, D], statistics [Bt, Hq, TQ].
struct outputs {
  std::vector<double> out, lse, router, first_key_mass;
};

template <class E>
double round_to(double x) {
  return static_cast<double>(arch::to_float(arch::from_float<E>(static_cast<float>(x))));
}

/// Sinks and gates from the pools of docs/design.md section 7: sinks {-30, 0, 5, 30} (one per head,
/// rotated by the seed), gate logits {-20, 0, 20} for 30% of entries, else N(0, 2^2).
template <class Sink, class Gate, class Mask, class Route, class E>
problem make_problem(const case_spec& spec, int head_dim) {
  problem pb;
  pb.spec = spec;
  ref::config& c = pb.cfg;
  c.Hq = spec.Hq;
  c.Hkv = spec.Hkv;
  c.D = head_dim;
  c.scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  c.softcap = spec.softcap;
  c.sink = sink_kind_of<Sink>();
  c.gate = gate_kind_of<Gate>();
  c.route = route_kind_of<Route>();
  c.mask = mask_kind_of<Mask>();
  c.window = spec.window;
  c.sink_tokens = spec.sink_tokens;
  c.top_left = spec.top_left;
  c.fixed_sink = spec.fixed_sink;
  if (spec.varlen()) {
    c.B = static_cast<int>(spec.q_len.size());
    pb.bt = 1;
    pb.cu_q = {0};
    pb.cu_k = {0};
    for (std::size_t s = 0; s < spec.q_len.size(); ++s) {
      pb.spans.push_back({0, pb.cu_q.back(), spec.q_len[s], pb.cu_k.back(), spec.k_len[s]});
      pb.cu_q.push_back(pb.cu_q.back() + spec.q_len[s]);
      pb.cu_k.push_back(pb.cu_k.back() + spec.k_len[s]);
    }
    pb.tq_total = pb.cu_q.back();
    pb.tk_total = pb.cu_k.back();
  } else {
    c.B = spec.B;
    c.Tq = spec.Tq;
    c.Tk = spec.Tk;
    pb.bt = spec.B;
    pb.tq_total = spec.Tq;
    pb.tk_total = spec.Tk;
    for (int b = 0; b < spec.B; ++b) pb.spans.push_back({b, 0, spec.Tq, 0, spec.Tk});
  }

  std::mt19937_64 rng(spec.seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  const std::size_t nq = std::size_t(pb.bt) * pb.tq_total * c.Hq;
  const std::size_t nk = std::size_t(pb.bt) * pb.tk_total * c.Hkv;
  const auto fill = [&](std::vector<double>& x, std::size_t n, double sd) {
    x.resize(n);
    for (double& v : x) v = round_to<E>(sd * normal(rng));
  };
  fill(pb.in.q, nq * head_dim, spec.q_scale);
  fill(pb.in.k, nk * head_dim, 1.0);
  fill(pb.in.v, nk * head_dim, 1.0);
  const double sink_pool[] = {-30.0, 0.0, 5.0, 30.0};
  if (c.sink == ref::sink_kind::learned) {
    pb.in.sinks.resize(c.Hq);
    for (int h = 0; h < c.Hq; ++h) pb.in.sinks[h] = sink_pool[(h + spec.seed) % 4];
  }
  if (c.gate != ref::gate_kind::none) {
    const double gate_pool[] = {-20.0, 0.0, 20.0};
    const int dg = c.gate == ref::gate_kind::elementwise ? head_dim : 1;
    pb.in.gate_logits.resize(nq * dg);
    for (double& z : pb.in.gate_logits)
      z = uniform(rng) < 0.3 ? gate_pool[static_cast<int>(uniform(rng) * 3) % 3]
                             : round_to<E>(2.0 * normal(rng));
  }
  return pb;
}

/// The runtime parameters the runner would pass (validation rejects unused ones).
template <class Sink, class Mask>
attention_params params_for(const problem& pb) {
  attention_params p;
  p.scale = pb.cfg.scale;
  p.softcap = pb.spec.softcap;
  if constexpr (std::is_same_v<Mask, mask::sliding_window> || std::is_same_v<Mask, mask::streaming>)
    p.window = pb.spec.window;
  if constexpr (std::is_same_v<Mask, mask::streaming>) p.sink_tokens = pb.spec.sink_tokens;
  p.alignment = pb.spec.top_left ? causal_alignment::top_left : causal_alignment::bottom_right;
  if constexpr (std::is_same_v<Sink, sink::fixed>) p.fixed_sink = pb.spec.fixed_sink;
  return p;
}

// ---- The kernel, emulated ----

/// Element bits written before the launch into out (rows and padding) and, as a float NaN, into
/// the statistics: an unwritten value shows up as NaN, a write into the padding as a change.
inline constexpr std::uint16_t k_sentinel_bits = 0x7fc1;
inline constexpr int k_out_padding = 8;

struct kernel_run {
  outputs result;
  arch::emulation_stats stats;
  bool padding_intact = true;
};

template <class Attn, int HeadDim, class E>
kernel_run run_kernel(const problem& pb) {
  using Sink = typename Attn::sink_type;
  using Gate = typename Attn::gate_type;
  using Mask = typename Attn::mask_type;
  const ref::config& c = pb.cfg;
  const int D = HeadDim, Hq = c.Hq, Hkv = c.Hkv, B = pb.bt, TQ = pb.tq_total, TK = pb.tk_total;
  constexpr bool interleaved_gate = std::is_same_v<Gate, gate::elementwise>;
  const auto to_e = [](double x) { return arch::from_float<E>(static_cast<float>(x)); };

  // Q (and an elementwise gate) interleaved per head as Qwen3-Next's [q | gate] projection:
  // [B, TQ, Hq, 2D], q at channel 0, gate logits at channel D.
  const int q_row = interleaved_gate ? 2 * D : D;
  std::vector<E> q_buf(std::size_t(B) * TQ * Hq * q_row), k_buf(pb.in.k.size()),
      v_buf(pb.in.v.size());
  std::vector<E> z_buf;
  for (std::size_t r = 0; r < std::size_t(B) * TQ * Hq; ++r)
    for (int d = 0; d < D; ++d) q_buf[r * q_row + d] = to_e(pb.in.q[r * D + d]);
  for (std::size_t i = 0; i < k_buf.size(); ++i) k_buf[i] = to_e(pb.in.k[i]);
  for (std::size_t i = 0; i < v_buf.size(); ++i) v_buf[i] = to_e(pb.in.v[i]);
  std::vector<float> sinks(pb.in.sinks.begin(), pb.in.sinks.end());

  const E sentinel = arch::from_bits<E>(k_sentinel_bits);
  const int out_row = D + k_out_padding;
  std::vector<E> out_buf(std::size_t(B) * TQ * Hq * out_row, sentinel);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> lse(std::size_t(B) * Hq * TQ, nan), router(lse.size(), nan),
      first_key(lse.size(), nan);

  forward_args<E> a;
  a.q = {q_buf.data(), {B, TQ, Hq, D}, {index_t(TQ) * Hq * q_row, index_t(Hq) * q_row, q_row, 1}};
  a.k = {k_buf.data(), {B, TK, Hkv, D}};
  a.v = {v_buf.data(), {B, TK, Hkv, D}};
  if constexpr (std::is_same_v<Sink, sink::learned>) a.sinks = {sinks.data(), {Hq}};
  if constexpr (interleaved_gate) {
    for (std::size_t r = 0; r < std::size_t(B) * TQ * Hq; ++r)
      for (int d = 0; d < D; ++d) q_buf[r * q_row + D + d] = to_e(pb.in.gate_logits[r * D + d]);
    a.gate_logits = {q_buf.data() + D, {B, TQ, Hq, D}, a.q.stride};
  } else if constexpr (Gate::enabled) {
    z_buf.resize(pb.in.gate_logits.size());
    for (std::size_t i = 0; i < z_buf.size(); ++i) z_buf[i] = to_e(pb.in.gate_logits[i]);
    a.gate_logits = {z_buf.data(), {B, TQ, Hq, 1}};
  }
  a.out = {out_buf.data(),
           {B, TQ, Hq, D},
           {index_t(TQ) * Hq * out_row, index_t(Hq) * out_row, out_row, 1}};
  a.lse = {lse.data(), {B, Hq, TQ}};
  a.router = {router.data(), {B, Hq, TQ}};
  a.first_key_mass = {first_key.data(), {B, Hq, TQ}};
  a.params = params_for<Sink, Mask>(pb);
  if (pb.spec.varlen())
    a.varlen = {pb.cu_q.data(), pb.cu_k.data(), static_cast<int>(pb.cu_q.size()) - 1};

  kernel_run run;
  run.stats = emulated_fused_forward<Attn, HeadDim>(a);
  run.result.out.resize(std::size_t(B) * TQ * Hq * D);
  for (std::size_t r = 0; r < std::size_t(B) * TQ * Hq; ++r) {
    for (int d = 0; d < D; ++d)
      run.result.out[r * D + d] = arch::to_float(out_buf[r * out_row + d]);
    for (int d = D; d < out_row; ++d)
      if (arch::to_bits(out_buf[r * out_row + d]) != k_sentinel_bits) run.padding_intact = false;
  }
  run.result.lse.assign(lse.begin(), lse.end());
  run.result.router.assign(router.begin(), router.end());
  run.result.first_key_mass.assign(first_key.begin(), first_key.end());
  return run;
}

// ---- References ----

/// fp64 CPU backend through the test runner (built-in policies).
template <class Attn>
outputs reference_fp64(const problem& pb) {
  run_options opts;
  opts.backward = false;
  opts.threads = 1;
  opts.softcap = pb.spec.softcap > 0.0;
  const library_result r =
      pb.spec.varlen()
          ? run_library_varlen<double>(pb.cfg, pb.spec.q_len, pb.spec.k_len, pb.in, {}, opts)
          : run_library<double>(pb.cfg, pb.in, {}, opts);
  return {r.out, r.lse, r.router, r.first_key_mass};
}

/// fp64 CPU backend called directly (any policies; instantiates host::forward<double>).
template <class Attn>
outputs reference_fp64_direct(const problem& pb) {
  using Sink = typename Attn::sink_type;
  using Gate = typename Attn::gate_type;
  using Mask = typename Attn::mask_type;
  const ref::config& c = pb.cfg;
  const int D = c.D, Hq = c.Hq, Hkv = c.Hkv, B = pb.bt, TQ = pb.tq_total, TK = pb.tk_total;
  std::vector<double> q = pb.in.q, k = pb.in.k, v = pb.in.v, z = pb.in.gate_logits,
                      sinks = pb.in.sinks;
  outputs o;
  o.out.resize(q.size());
  o.lse.resize(std::size_t(B) * Hq * TQ);
  o.router.resize(o.lse.size());
  o.first_key_mass.resize(o.lse.size());
  forward_args<double> a;
  a.q = {q.data(), {B, TQ, Hq, D}};
  a.k = {k.data(), {B, TK, Hkv, D}};
  a.v = {v.data(), {B, TK, Hkv, D}};
  if constexpr (std::is_same_v<Sink, sink::learned>) a.sinks = {sinks.data(), {Hq}};
  if constexpr (Gate::enabled) a.gate_logits = {z.data(), {B, TQ, Hq, Gate::logit_dim(D)}};
  a.out = {o.out.data(), {B, TQ, Hq, D}};
  a.lse = {o.lse.data(), {B, Hq, TQ}};
  a.router = {o.router.data(), {B, Hq, TQ}};
  a.first_key_mass = {o.first_key_mass.data(), {B, Hq, TQ}};
  a.params = params_for<Sink, Mask>(pb);
  if (pb.spec.varlen())
    a.varlen = {pb.cu_q.data(), pb.cu_k.data(), static_cast<int>(pb.cu_q.size()) - 1};
  Attn::forward(exec::host{1}, a);
  return o;
}

/// The naive 16-bit computation of the tolerance rule (header comment). Visibility comes from
/// the mask policy itself (the fp64 backend has been checked against the independent oracle
/// elsewhere; here the question is the kernel's arithmetic and tiling).
template <class Attn, class E>
outputs naive16(const problem& pb) {
  using Sink = typename Attn::sink_type;
  using Mask = typename Attn::mask_type;
  const ref::config& c = pb.cfg;
  const int D = c.D, Hq = c.Hq, Hkv = c.Hkv, TQ = pb.tq_total, TK = pb.tk_total;
  const int dg = c.gate == ref::gate_kind::elementwise ? D : 1;
  const attention_params params = params_for<Sink, Mask>(pb);
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const float scale = static_cast<float>(c.scale), cap = static_cast<float>(c.softcap);
  const auto sigmoid = [](float x) {
    return x >= 0 ? 1.0f / (1.0f + std::exp(-x)) : std::exp(x) / (1.0f + std::exp(x));
  };
  outputs o;
  o.out.assign(std::size_t(pb.bt) * TQ * Hq * D, 0.0);
  o.lse.assign(std::size_t(pb.bt) * Hq * TQ, 0.0);
  o.router = o.first_key_mass = o.lse;
  for (const span& sp : pb.spans) {
    const Mask mask(params, sp.tq, sp.tk);
    for (int h = 0; h < Hq; ++h) {
      const int hk = h / (Hq / Hkv);
      float beta = neg_inf;
      if (c.sink == ref::sink_kind::learned) beta = static_cast<float>(pb.in.sinks[h]);
      if (c.sink == ref::sink_kind::fixed) beta = static_cast<float>(c.fixed_sink);
      for (int t = 0; t < sp.tq; ++t) {
        const int row = sp.q_begin + t;
        const std::size_t qi = ((std::size_t(sp.b) * TQ + row) * Hq + h) * D;
        std::vector<int> keys;
        std::vector<float> s;
        for (int j = 0; j < sp.tk; ++j) {
          if (!mask.visible(t, j)) continue;
          const std::size_t ki = ((std::size_t(sp.b) * TK + sp.k_begin + j) * Hkv + hk) * D;
          float dot = 0.0f;
          for (int d = 0; d < D; ++d)
            dot += static_cast<float>(pb.in.q[qi + d]) * static_cast<float>(pb.in.k[ki + d]);
          s.push_back(cap > 0.0f ? cap * std::tanh(scale * dot / cap) : scale * dot);
          keys.push_back(j);
        }
        float m = beta;
        for (float x : s) m = std::max(m, x);
        float lse = neg_inf;
        if (m != neg_inf) {
          float sum = beta == neg_inf ? 0.0f : std::exp(beta - m);
          for (float x : s) sum += std::exp(x - m);
          lse = m + std::log(sum);
        }
        const bool empty = keys.empty();
        std::vector<float> acc(D, 0.0f);
        float first_key = 0.0f, mass = 0.0f;
        for (std::size_t i = 0; i < keys.size(); ++i) {
          const float p = std::exp(s[i] - lse);
          if (keys[i] == 0) first_key = p;
          const float p16 = static_cast<float>(round_to<E>(p));
          const std::size_t vi = ((std::size_t(sp.b) * TK + sp.k_begin + keys[i]) * Hkv + hk) * D;
          for (int d = 0; d < D; ++d) acc[d] += p16 * static_cast<float>(pb.in.v[vi + d]);
        }
        mass = c.sink == ref::sink_kind::none
                   ? first_key
                   : (empty && beta == neg_inf ? 0.0f : std::exp(beta - lse));
        std::vector<float> g(dg, 1.0f);
        float gmean = 1.0f;
        if (c.gate != ref::gate_kind::none) {
          const std::size_t zi = ((std::size_t(sp.b) * TQ + row) * Hq + h) * dg;
          float sum = 0.0f;
          for (int i = 0; i < dg; ++i)
            sum += (g[i] = sigmoid(static_cast<float>(pb.in.gate_logits[zi + i])));
          gmean = sum / static_cast<float>(dg);
        }
        for (int d = 0; d < D; ++d) o.out[qi + d] = round_to<E>(g[dg == 1 ? 0 : d] * acc[d]);
        const std::size_t ri = (std::size_t(sp.b) * Hq + h) * TQ + row;
        o.lse[ri] = lse;
        const float complement = 1.0f - mass;
        float router = complement;
        if (c.route == ref::route_kind::output_gate) router = gmean;
        if (c.route == ref::route_kind::product) router = gmean * complement;
        o.router[ri] = empty ? 0.0 : router;
        o.first_key_mass[ri] = first_key;
      }
    }
  }
  return o;
}

// ---- Comparison ----

inline double max_abs_finite(const std::vector<double>& x) {
  double m = 0.0;
  for (double v : x)
    if (std::isfinite(v)) m = std::max(m, std::abs(v));
  return m;
}

/// FlashAttention's rounding term for a tensor stored as Storage (header comment); 0 for float.
template <class Storage>
double rounding_atol(const std::vector<double>& fp64) {
  if constexpr (std::is_same_v<Storage, float>) {
    return 0.0;
  } else {
    double worst = 0.0;
    for (double x : fp64) {
      if (!std::isfinite(x)) continue;
      const double ref = round_to<Storage>(x);
      worst =
          std::max(worst, std::abs(round_to<Storage>(round_to<Storage>(ref + 0.3) - 0.3) - ref));
    }
    return 2.0 * worst;
  }
}

/// FlashAttention's rule for one output tensor stored as Storage (float, or the 16-bit element
/// type: header comment). Returns the error ratio err_kernel / (2 err_naive + atol) for reporting.
template <class Storage = float>
double check_rule(const std::string& what, const std::vector<double>& kernel,
                  const std::vector<double>& naive, const std::vector<double>& fp64) {
  BOOST_TEST_REQUIRE(kernel.size() == fp64.size(), what << ": size");
  BOOST_TEST_REQUIRE(naive.size() == fp64.size(), what << ": naive size");
  double err_kernel = 0.0, err_naive = 0.0;
  std::size_t nan_count = 0, nonfinite_mismatch = 0, first_bad = 0;
  for (std::size_t i = 0; i < fp64.size(); ++i) {
    if (std::isnan(kernel[i])) {
      if (nan_count++ == 0) first_bad = i;
      continue;
    }
    if (!std::isfinite(fp64[i])) {
      if (kernel[i] != fp64[i] && nonfinite_mismatch++ == 0 && nan_count == 0) first_bad = i;
      continue;
    }
    err_kernel = std::max(err_kernel, std::abs(kernel[i] - fp64[i]));
    if (std::isfinite(naive[i])) err_naive = std::max(err_naive, std::abs(naive[i] - fp64[i]));
  }
  BOOST_TEST(nan_count == 0u, what << ": " << nan_count << " NaN (first at " << first_bad << ")");
  BOOST_TEST(nonfinite_mismatch == 0u, what << ": " << nonfinite_mismatch
                                            << " non-finite reference values not matched (first at "
                                            << first_bad << ": kernel " << kernel[first_bad]
                                            << ", fp64 " << fp64[first_bad] << ")");
  const double atol = std::max(8.0 * std::ldexp(std::max(1.0, max_abs_finite(fp64)), -24),
                               rounding_atol<Storage>(fp64));
  const double bound = 2.0 * err_naive + atol;
  BOOST_TEST(err_kernel <= bound, what << ": max |kernel - fp64| = " << err_kernel
                                       << " > 2 * max |naive16 - fp64| + atol = 2 * " << err_naive
                                       << " + " << atol);
  return err_kernel / bound;
}

/// Empty rows (no visible key): out = 0, router = 0, lse = the sink logit or -inf, exactly.
template <class Attn>
void check_empty_rows(const problem& pb, const outputs& k) {
  using Sink = typename Attn::sink_type;
  using Mask = typename Attn::mask_type;
  const ref::config& c = pb.cfg;
  const attention_params params = params_for<Sink, Mask>(pb);
  const int TQ = pb.tq_total;
  std::size_t empty_rows = 0, bad = 0;
  for (const span& sp : pb.spans) {
    const Mask mask(params, sp.tq, sp.tk);
    for (int t = 0; t < sp.tq; ++t) {
      bool any = false;
      for (int j = 0; j < sp.tk && !any; ++j) any = mask.visible(t, j);
      if (any) continue;
      for (int h = 0; h < c.Hq; ++h) {
        ++empty_rows;
        const std::size_t ri = (std::size_t(sp.b) * c.Hq + h) * TQ + sp.q_begin + t;
        const std::size_t oi = ((std::size_t(sp.b) * TQ + sp.q_begin + t) * c.Hq + h) * c.D;
        double want_lse = -std::numeric_limits<double>::infinity();
        if (c.sink == ref::sink_kind::learned) want_lse = static_cast<float>(pb.in.sinks[h]);
        if (c.sink == ref::sink_kind::fixed) want_lse = static_cast<float>(c.fixed_sink);
        bool ok = k.lse[ri] == want_lse && k.router[ri] == 0.0;
        for (int d = 0; d < c.D; ++d) ok = ok && k.out[oi + d] == 0.0;
        if (!ok && bad++ == 0)
          BOOST_TEST_MESSAGE("empty row seq b=" << sp.b << " t=" << t << " h=" << h << ": lse "
                                                << k.lse[ri] << " (want " << want_lse
                                                << "), router " << k.router[ri]);
      }
    }
  }
  BOOST_TEST(bad == 0u,
             bad << " of " << empty_rows << " empty rows are not (out 0, G 0, lse sink)");
}

/// What one case reports: the worst error ratio (see check_rule) and the emulation's counters.
struct case_result {
  double worst_ratio = 0.0;
  arch::emulation_stats stats;
};

/// Runs one case end to end: kernel (emulated), fp64 CPU backend, naive16; all checks.
template <class Attn, int HeadDim, class E>
case_result run_case(const case_spec& spec, const std::string& label) {
  using Sink = typename Attn::sink_type;
  using Gate = typename Attn::gate_type;
  using Mask = typename Attn::mask_type;
  using Route = typename Attn::route_type;
  const problem pb = make_problem<Sink, Gate, Mask, Route, E>(spec, HeadDim);
  BOOST_TEST_CONTEXT(label) {
    const kernel_run run = run_kernel<Attn, HeadDim, E>(pb);
    record_digest("forward " + label, {&run.result.out, &run.result.lse, &run.result.router,
                                       &run.result.first_key_mass});
    outputs fp64;
    if constexpr (runner_knows_mask<Mask>)
      fp64 = reference_fp64<Attn>(pb);
    else
      fp64 = reference_fp64_direct<Attn>(pb);
    const outputs naive = naive16<Attn, E>(pb);
    BOOST_TEST(run.padding_intact, "the kernel wrote into the padding after a row of out");
    double worst = 0.0;
    worst = std::max(worst, check_rule<E>("out", run.result.out, naive.out, fp64.out));
    worst = std::max(worst, check_rule("lse", run.result.lse, naive.lse, fp64.lse));
    worst = std::max(worst, check_rule("router", run.result.router, naive.router, fp64.router));
    worst = std::max(worst, check_rule("first_key_mass", run.result.first_key_mass,
                                       naive.first_key_mass, fp64.first_key_mass));
    check_empty_rows<Attn>(pb, run.result);
    return {worst, run.stats};
  }
  return {};
}

/// A readable label: policies, element type, head dim and the case's sizes.
template <class Attn, int HeadDim, class E>
std::string describe(const case_spec& s) {
  std::string l = std::string(Attn::sink_type::name) + "/" + Attn::gate_type::name + "/" +
                  Attn::mask_type::name + "/" + Attn::route_type::name + " " +
                  (std::is_same_v<E, arch::bf16> ? "bf16" : "fp16") + " D" +
                  std::to_string(HeadDim);
  if (s.varlen()) {
    l += " varlen q{";
    for (int x : s.q_len) l += std::to_string(x) + ",";
    l += "} k{";
    for (int x : s.k_len) l += std::to_string(x) + ",";
    l += "}";
  } else {
    l += " B" + std::to_string(s.B) + " Tq" + std::to_string(s.Tq) + " Tk" + std::to_string(s.Tk);
  }
  l += " Hq" + std::to_string(s.Hq) + " Hkv" + std::to_string(s.Hkv) + " window " +
       std::to_string(s.window) + " sink_tokens " + std::to_string(s.sink_tokens) + " fixed_sink " +
       std::to_string(s.fixed_sink) + (s.top_left ? " top-left" : "") +
       (s.softcap > 0 ? " softcap" : "") + " seed " + std::to_string(s.seed);
  return l;
}

// ---- The policy product (one sink policy per translation unit) ----

/// A dense case of the given sizes (other fields at their defaults).
inline case_spec dense(int B, int Tq, int Tk, int Hq, int Hkv) {
  case_spec s;
  s.B = B;
  s.Tq = Tq;
  s.Tk = Tk;
  s.Hq = Hq;
  s.Hkv = Hkv;
  return s;
}

/// A case with the mask and sink parameters set too.
inline case_spec dense(int B, int Tq, int Tk, int Hq, int Hkv, bool top_left, int window,
                       int sink_tokens, double fixed_sink, double q_scale = 1.0) {
  case_spec s = dense(B, Tq, Tk, Hq, Hkv);
  s.top_left = top_left;
  s.window = window;
  s.sink_tokens = sink_tokens;
  s.fixed_sink = fixed_sink;
  s.q_scale = q_scale;
  return s;
}

/// Shapes every policy combination runs (docs/design.md section 7's matrix, cut to what the
/// emulation affords): tile-boundary lengths 1, 63, 64, 65, 130 with Tq != Tk, GQA 1/2/4,
/// B 1-2, both causal alignments, windows 1/3/64, streaming sink tokens 0-4, fixed sinks
/// {-30, 0, 5, 30} (learned sinks take the same pool per head, see make_problem).
inline std::vector<case_spec> product_shapes(unsigned seed) {
  std::vector<case_spec> shapes = {
      //    B   Tq   Tk  Hq Hkv top_left window sink_tokens fixed_sink q_scale
      dense(1, 1, 64, 2, 2, false, 1, 1, -30.0),
      dense(2, 65, 130, 4, 2, false, 64, 4, 5.0, 3.0),
      // Bottom-right causal with Tq > Tk: the first 67 rows see no key (empty rows).
      dense(1, 130, 63, 4, 1, false, 3, 1, 30.0),
      dense(2, 63, 1, 2, 1, true, 1, 0, 0.0),
      dense(1, 64, 65, 4, 4, true, 3, 2, 0.0, 2.0),
  };
  for (std::size_t i = 0; i < shapes.size(); ++i) shapes[i].seed = seed + static_cast<unsigned>(i);
  return shapes;
}

/// What a run over part of the policy product did: the combinations and cases it ran and the
/// worst error ratio err_kernel / (2 err_naive + atol) of any check (at most 1 when all pass).
struct product_summary {
  int combinations = 0;
  int cases = 0;
  double worst_ratio = 0.0;
  void add(const product_summary& other) {
    combinations += other.combinations;
    cases += other.cases;
    worst_ratio = std::max(worst_ratio, other.worst_ratio);
  }
};

/// Calls run.template operator()<Sink, Gate, Mask, Route>(seed), which returns a
/// product_summary, for every mask and every valid route of one sink and gate policy: sink_mass
/// without a gate; output_gate (the deduced one), sink_mass and product with one. Seeds step by
/// 1000 per mask and 100 per route. Shared by the fused forward, fused backward and unfused
/// suites.
template <class Sink, class Gate, class Run>
product_summary for_each_mask_and_route(unsigned seed, Run&& run) {
  product_summary total;
  const auto routes = [&]<class Mask>(unsigned s) {
    if constexpr (Gate::enabled) {
      total.add(run.template operator()<Sink, Gate, Mask, route::output_gate>(s));
      total.add(run.template operator()<Sink, Gate, Mask, route::sink_mass>(s + 100));
      total.add(run.template operator()<Sink, Gate, Mask, route::product>(s + 200));
    } else {
      total.add(run.template operator()<Sink, Gate, Mask, route::sink_mass>(s));
    }
  };
  routes.template operator()<mask::none>(seed);
  routes.template operator()<mask::causal>(seed + 1000);
  routes.template operator()<mask::sliding_window>(seed + 2000);
  routes.template operator()<mask::streaming>(seed + 3000);
  return total;
}

/// Every product shape for one policy combination at HeadDim 64, bf16.
template <class Sink, class Gate, class Mask, class Route>
product_summary run_product_shapes(unsigned seed) {
  using attn = attention<Sink, Gate, Mask, Route>;
  product_summary r{1, 0, 0.0};
  for (const case_spec& s : product_shapes(seed)) {
    r.worst_ratio =
        std::max(r.worst_ratio,
                 run_case<attn, 64, arch::bf16>(s, describe<attn, 64, arch::bf16>(s)).worst_ratio);
    ++r.cases;
  }
  BOOST_TEST_MESSAGE(Sink::name << "/" << Gate::name << "/" << Mask::name << "/" << Route::name
                                << ": worst err_kernel / (2 err_naive + atol) = " << r.worst_ratio);
  return r;
}

/// The forward kernel on every mask and route for one sink and gate policy.
template <class Sink, class Gate>
product_summary run_product_masks(unsigned seed) {
  return for_each_mask_and_route<Sink, Gate>(seed,
                                             []<class S, class G, class M, class R>(unsigned s) {
                                               return run_product_shapes<S, G, M, R>(s);
                                             });
}

}  // namespace sinkmoe::testing::fused_check
