// Checks of the unfused attention path (include/sinkmoe/cuda/unfused/) without a GPU: the
// algorithm runs with the host GEMM (support/unfused_host_gemm.hpp) in place of cuBLASLt and
// its row kernels through the fiber emulation of the primitive layer, forward and backward, on
// 16-bit inputs. It is compared with the CPU backend in fp64 on the same rounded inputs
// (through the test runner) under FlashAttention's rule (support/fused_forward_check.hpp):
//   max |unfused - fp64| <= 2 * max |naive16 - fp64| + atol     for every output tensor,
// where naive16 is the most direct fp32 computation that rounds where this path rounds: the
// forward of fused_check::naive16 (P rounded to 16 bits before P V, out rounded once), and
// naive16_backward below (dO = gate * dY, P and dS = P (dP - D) ds/d(q.k) rounded to 16 bits
// before their products, dq / dk / dv / d gate logits rounded once, fp32 sums).
// On top: no NaN anywhere (the workspace starts as all-ones bytes, a NaN in every type, so a read
// of something never written shows), every output written, nothing written into the padding
// after each row of out, dq, dk, dv or past the end of the workspace, and empty rows give out 0,
// G 0, lse = the sink logit or -inf exactly.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <memory>
#include <new>

#include "support/fused_forward_check.hpp"
// fused_forward_check.hpp includes the emulation first, as the primitive layer requires.
#include <sinkmoe/cuda/unfused/algorithm.hpp>

#include "support/emulation_ranges.hpp"
#include "support/output_digest.hpp"
#include "support/unfused_host_gemm.hpp"

namespace sinkmoe::testing::unfused_check {

namespace fc = fused_check;
namespace arch = sinkmoe::arch;

/// The unfused algorithm's device in the tests: host GEMMs, emulated row kernels. `ranges` are
/// the global memory the row kernels may touch (the call's tensors and the workspace; empty: not
/// checked).
struct emulated_device {
  host_gemm gemms;
  std::uint64_t launches = 0;
  std::vector<arch::global_range> ranges;
  void gemm(const unfused::gemm_desc& g) { gemms.gemm(g); }
  template <class Kernel, class Params>
  void launch(const unfused::launch_shape& s, const Params& params) {
    ++launches;
    arch::emulator em;
    em.globals = ranges;
    em.launch(s.grid, s.block, s.smem_bytes, Kernel{}, params);
  }
};

/// Workspace with a guard after it: all-ones bytes (NaN as float, bf16 and fp16) everywhere.
class guarded_workspace {
 public:
  static constexpr std::size_t k_guard = 1024;
  explicit guarded_workspace(std::size_t bytes)
      : bytes_(bytes),
        storage_(static_cast<std::byte*>(::operator new (bytes + k_guard, std::align_val_t{256}))) {
    std::memset(storage_.get(), 0xff, bytes + k_guard);
  }
  [[nodiscard]] std::byte* data() const { return storage_.get(); }
  [[nodiscard]] bool guard_intact() const {
    for (std::size_t i = 0; i < k_guard; ++i)
      if (storage_.get()[bytes_ + i] != std::byte{0xff}) return false;
    return true;
  }

 private:
  struct deleter {
    void operator()(std::byte* p) const { ::operator delete (p, std::align_val_t{256}); }
  };
  std::size_t bytes_;
  std::unique_ptr<std::byte, deleter> storage_;
};

/// Gradients in the reference layout (dq [B,Tq,Hq,D], dk / dv [B,Tk,Hkv,D], dsinks [Hq],
/// dgate [B,Tq,Hq,Dg]).
struct gradients {
  std::vector<double> dq, dk, dv, dsinks, dgate;
};

/// Cotangents for a problem: dout ~ N(0, 1) rounded to E, drouter ~ N(0, 1) and dlse ~ N(0, 1)
/// rounded to float (a loss on out, on G and on the lse at once, docs/method.md section 5).
template <class E>
ref::cotangents make_cotangents(const fc::problem& pb) {
  std::mt19937_64 rng(pb.spec.seed * 7919u + 17u);
  std::normal_distribution<double> normal(0.0, 1.0);
  const ref::config& c = pb.cfg;
  ref::cotangents ct;
  ct.dout.resize(std::size_t(pb.bt) * pb.tq_total * c.Hq * c.D);
  for (double& x : ct.dout) x = fc::round_to<E>(normal(rng));
  ct.drouter.resize(std::size_t(pb.bt) * c.Hq * pb.tq_total);
  ct.dlse.resize(ct.drouter.size());
  for (double& x : ct.drouter) x = static_cast<float>(normal(rng));
  for (double& x : ct.dlse) x = static_cast<float>(normal(rng));
  return ct;
}

/// What one unfused run produced, and whether its guards held.
struct unfused_run {
  fc::outputs forward;
  gradients grads;
  bool padding_intact = true;
  bool workspace_guard_intact = true;
  std::uint64_t gemm_calls = 0;
  std::uint64_t gemm_multiply_adds = 0;  ///< forward and backward together
};

inline constexpr int k_padding = 8;  ///< elements after every row of out, dq, dk, dv

/// Runs the unfused forward, then backward on the forward's out and lse. q (and an elementwise
/// gate) are interleaved per head as Qwen3-Next's [q | gate] projection, so the GEMMs see head
/// strides of 2D; out, dq, dk and dv rows carry k_padding elements.
template <class Attn, class E>
unfused_run run_unfused(const fc::problem& pb, const ref::cotangents& ct, int chunk_rows) {
  using Sink = typename Attn::sink_type;
  using Gate = typename Attn::gate_type;
  using Mask = typename Attn::mask_type;
  const ref::config& c = pb.cfg;
  const int D = c.D, Hq = c.Hq, Hkv = c.Hkv, B = pb.bt, TQ = pb.tq_total, TK = pb.tk_total;
  const int dg = std::is_same_v<Gate, gate::elementwise> ? D : 1;
  constexpr bool interleaved_gate = std::is_same_v<Gate, gate::elementwise>;
  const auto to_e = [](double x) { return arch::from_float<E>(static_cast<float>(x)); };
  const E sentinel = arch::from_bits<E>(fc::k_sentinel_bits);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::size_t q_rows = std::size_t(B) * TQ * Hq, k_rows = std::size_t(B) * TK * Hkv;

  const int q_row = interleaved_gate ? 2 * D : D;
  std::vector<E> q_buf(q_rows * q_row), k_buf(k_rows * D), v_buf(k_rows * D), z_buf;
  for (std::size_t r = 0; r < q_rows; ++r)
    for (int d = 0; d < D; ++d) q_buf[r * q_row + d] = to_e(pb.in.q[r * D + d]);
  for (std::size_t i = 0; i < k_buf.size(); ++i) k_buf[i] = to_e(pb.in.k[i]);
  for (std::size_t i = 0; i < v_buf.size(); ++i) v_buf[i] = to_e(pb.in.v[i]);
  std::vector<float> sinks(pb.in.sinks.begin(), pb.in.sinks.end());

  const int padded = D + k_padding;
  std::vector<E> out_buf(q_rows * padded, sentinel);
  // At least one element each, so that a zero-length problem still passes non-null views (a
  // null lse reads as "not written" to backward's validation).
  const std::size_t stat_count = std::max<std::size_t>(std::size_t(B) * Hq * TQ, 1);
  std::vector<float> lse(stat_count, nan), router(stat_count, nan), first_key(stat_count, nan);

  forward_args<E> a;
  a.q = {q_buf.data(), {B, TQ, Hq, D}, {index_t(TQ) * Hq * q_row, index_t(Hq) * q_row, q_row, 1}};
  a.k = {k_buf.data(), {B, TK, Hkv, D}};
  a.v = {v_buf.data(), {B, TK, Hkv, D}};
  if constexpr (std::is_same_v<Sink, sink::learned>) a.sinks = {sinks.data(), {Hq}};
  if constexpr (interleaved_gate) {
    for (std::size_t r = 0; r < q_rows; ++r)
      for (int d = 0; d < D; ++d) q_buf[r * q_row + D + d] = to_e(pb.in.gate_logits[r * D + d]);
    a.gate_logits = {q_buf.data() + D, {B, TQ, Hq, D}, a.q.stride};
  } else if constexpr (Gate::enabled) {
    z_buf.resize(pb.in.gate_logits.size());
    for (std::size_t i = 0; i < z_buf.size(); ++i) z_buf[i] = to_e(pb.in.gate_logits[i]);
    a.gate_logits = {z_buf.data(), {B, TQ, Hq, 1}};
  }
  a.out = {
      out_buf.data(), {B, TQ, Hq, D}, {index_t(TQ) * Hq * padded, index_t(Hq) * padded, padded, 1}};
  a.lse = {lse.data(), {B, Hq, TQ}};
  a.router = {router.data(), {B, Hq, TQ}};
  a.first_key_mass = {first_key.data(), {B, Hq, TQ}};
  a.params = fc::params_for<Sink, Mask>(pb);

  unfused_run run;
  emulated_device dev;
  {
    const problem_shape shape = unfused::validate_forward<Attn>(a);
    const std::size_t bytes = unfused::workspace_bytes(shape, chunk_rows, unfused::pass::forward);
    guarded_workspace ws(bytes);
    dev.ranges = emulator_for(forward_ranges(a), ws.data(), bytes).globals;
    unfused::forward<Attn>(dev, a, shape, ws.data(), chunk_rows);
    run.workspace_guard_intact = ws.guard_intact();
  }

  // Backward on the forward's out and lse.
  std::vector<E> dout_buf(q_rows * D), dq_buf(q_rows * padded, sentinel),
      dk_buf(k_rows * padded, sentinel), dv_buf(k_rows * padded, sentinel),
      dz_buf(q_rows * dg, sentinel);
  for (std::size_t i = 0; i < dout_buf.size(); ++i) dout_buf[i] = to_e(ct.dout[i]);
  std::vector<float> drouter(stat_count, 0.0f), dlse(stat_count, 0.0f),
      dsinks(std::size_t(Hq), nan);
  std::copy(ct.drouter.begin(), ct.drouter.end(), drouter.begin());
  std::copy(ct.dlse.begin(), ct.dlse.end(), dlse.begin());
  backward_args<E> g;
  g.dout = {dout_buf.data(), {B, TQ, Hq, D}};
  g.drouter = {drouter.data(), {B, Hq, TQ}};
  g.dlse = {dlse.data(), {B, Hq, TQ}};
  const auto padded_view = [&](std::vector<E>& buf, int T, int H) {
    return tensor_view<E, 4>{
        buf.data(), {B, T, H, D}, {index_t(T) * H * padded, index_t(H) * padded, padded, 1}};
  };
  g.dq = padded_view(dq_buf, TQ, Hq);
  g.dk = padded_view(dk_buf, TK, Hkv);
  g.dv = padded_view(dv_buf, TK, Hkv);
  if constexpr (Sink::trainable) g.dsinks = {dsinks.data(), {Hq}};
  if constexpr (Gate::enabled) g.dgate_logits = {dz_buf.data(), {B, TQ, Hq, dg}};
  {
    const problem_shape shape = unfused::validate_backward<Attn>(a, g);
    const std::size_t bytes = unfused::workspace_bytes(shape, chunk_rows, unfused::pass::backward);
    guarded_workspace ws(bytes);
    dev.ranges = emulator_for(backward_ranges(a, g), ws.data(), bytes).globals;
    unfused::backward<Attn>(dev, a, g, shape, ws.data(), chunk_rows);
    run.workspace_guard_intact = run.workspace_guard_intact && ws.guard_intact();
  }
  run.gemm_calls = dev.gemms.calls;
  run.gemm_multiply_adds = dev.gemms.multiply_adds;

  // Read back (rows only), and check the padding.
  const auto read_rows = [&](const std::vector<E>& buf, std::size_t rows, std::vector<double>& to) {
    to.resize(rows * D);
    for (std::size_t r = 0; r < rows; ++r) {
      for (int d = 0; d < D; ++d) to[r * D + d] = arch::to_float(buf[r * padded + d]);
      for (int d = D; d < padded; ++d)
        if (arch::to_bits(buf[r * padded + d]) != fc::k_sentinel_bits) run.padding_intact = false;
    }
  };
  read_rows(out_buf, q_rows, run.forward.out);
  const std::size_t stats = std::size_t(B) * Hq * TQ;
  run.forward.lse.assign(lse.begin(), lse.begin() + stats);
  run.forward.router.assign(router.begin(), router.begin() + stats);
  run.forward.first_key_mass.assign(first_key.begin(), first_key.begin() + stats);
  read_rows(dq_buf, q_rows, run.grads.dq);
  read_rows(dk_buf, k_rows, run.grads.dk);
  read_rows(dv_buf, k_rows, run.grads.dv);
  if constexpr (Sink::trainable) run.grads.dsinks.assign(dsinks.begin(), dsinks.end());
  if constexpr (Gate::enabled)
    for (const E& x : dz_buf) run.grads.dgate.push_back(arch::to_float(x));
  return run;
}

/// The naive 16-bit backward of the tolerance rule (header comment), on the naive forward's
/// out and lse. Visibility comes from the mask policy, the rest is written out from docs/method.md
/// section 5 in the reference's runtime kinds.
template <class Attn, class E>
gradients naive16_backward(const fc::problem& pb, const fc::outputs& fwd,
                           const ref::cotangents& ct) {
  using Sink = typename Attn::sink_type;
  using Mask = typename Attn::mask_type;
  const ref::config& c = pb.cfg;
  const int D = c.D, Hq = c.Hq, Hkv = c.Hkv, TQ = pb.tq_total, TK = pb.tk_total;
  const int dg = c.gate == ref::gate_kind::elementwise ? D : 1;
  const attention_params params = fc::params_for<Sink, Mask>(pb);
  const float scale = static_cast<float>(c.scale), cap = static_cast<float>(c.softcap);
  const auto r16 = [](float x) { return static_cast<float>(fc::round_to<E>(x)); };
  const auto sigmoid = [](float x) {
    return x >= 0 ? 1.0f / (1.0f + std::exp(-x)) : std::exp(x) / (1.0f + std::exp(x));
  };
  gradients gr;
  gr.dq.assign(std::size_t(pb.bt) * TQ * Hq * D, 0.0);
  std::vector<float> dk(std::size_t(pb.bt) * TK * Hkv * D, 0.0f), dv(dk.size(), 0.0f);
  std::vector<float> dsinks(std::size_t(Hq), 0.0f);
  if (c.gate != ref::gate_kind::none) gr.dgate.assign(std::size_t(pb.bt) * TQ * Hq * dg, 0.0);
  for (const fc::span& sp : pb.spans) {
    const Mask mask(params, sp.tq, sp.tk);
    for (int h = 0; h < Hq; ++h) {
      const int hk = h / (Hq / Hkv);
      float beta = -std::numeric_limits<float>::infinity();
      if (c.sink == ref::sink_kind::learned) beta = static_cast<float>(pb.in.sinks[h]);
      if (c.sink == ref::sink_kind::fixed) beta = static_cast<float>(c.fixed_sink);
      for (int t = 0; t < sp.tq; ++t) {
        const int row = sp.q_begin + t;
        const std::size_t qi = ((std::size_t(sp.b) * TQ + row) * Hq + h) * D;
        const std::size_t ri = (std::size_t(sp.b) * Hq + h) * TQ + row;
        const float lse = static_cast<float>(fwd.lse[ri]);
        std::vector<int> keys;
        std::vector<float> prob, deriv;
        for (int j = 0; j < sp.tk; ++j) {
          if (!mask.visible(t, j)) continue;
          const std::size_t ki = ((std::size_t(sp.b) * TK + sp.k_begin + j) * Hkv + hk) * D;
          float dot = 0.0f;
          for (int d = 0; d < D; ++d)
            dot += static_cast<float>(pb.in.q[qi + d]) * static_cast<float>(pb.in.k[ki + d]);
          float s = scale * dot, ds_ddot = scale;
          if (cap > 0.0f) {
            const float th = std::tanh(scale * dot / cap);
            s = cap * th;
            ds_ddot = scale * (1.0f - th * th);
          }
          keys.push_back(j);
          prob.push_back(std::exp(s - lse));
          deriv.push_back(ds_ddot);
        }
        const bool empty = keys.empty();
        float mass = 0.0f;
        if (c.sink == ref::sink_kind::none) {
          if (!keys.empty() && keys[0] == 0) mass = prob[0];
        } else if (std::isfinite(lse)) {
          mass = std::exp(beta - lse);
        }
        const float complement = 1.0f - mass;
        std::vector<float> gate(dg, 1.0f);
        float gate_value = 1.0f;
        const std::size_t zi = ((std::size_t(sp.b) * TQ + row) * Hq + h) * dg;
        if (c.gate != ref::gate_kind::none) {
          float sum = 0.0f;
          for (int i = 0; i < dg; ++i)
            sum += (gate[i] = sigmoid(static_cast<float>(pb.in.gate_logits[zi + i])));
          gate_value = sum / static_cast<float>(dg);
        }
        const float gbar = empty ? 0.0f : static_cast<float>(ct.drouter[ri]);
        float gbar_sink = gbar, gbar_gate = 0.0f;
        if (c.route == ref::route_kind::output_gate) std::swap(gbar_sink, gbar_gate);
        if (c.route == ref::route_kind::product) {
          gbar_sink = gbar * gate_value;
          gbar_gate = gbar * complement;
        }
        const float dlse = std::isfinite(lse) ? static_cast<float>(ct.dlse[ri]) : 0.0f;
        float delta = 0.0f;
        std::vector<float> d_o(D);
        for (int d = 0; d < D; ++d) {
          const float dy = static_cast<float>(ct.dout[qi + d]);
          const float y = static_cast<float>(fwd.out[qi + d]);
          delta += dy * y;
          d_o[d] = c.gate == ref::gate_kind::none ? dy : r16(gate[dg == 1 ? 0 : d] * dy);
        }
        if (c.gate == ref::gate_kind::headwise) {
          gr.dgate[zi] = r16((1.0f - gate[0]) * delta + gate[0] * (1.0f - gate[0]) * gbar_gate);
        } else if (c.gate == ref::gate_kind::elementwise) {
          for (int d = 0; d < D; ++d) {
            const float dy = static_cast<float>(ct.dout[qi + d]);
            const float y = static_cast<float>(fwd.out[qi + d]);
            gr.dgate[zi + d] = r16((1.0f - gate[d]) * dy * y +
                                   gate[d] * (1.0f - gate[d]) * gbar_gate / static_cast<float>(D));
          }
        }
        const float row_term = delta - gbar_sink * mass - dlse;
        if (c.sink == ref::sink_kind::learned)
          dsinks[h] += -mass * (delta + gbar_sink * complement - dlse);
        std::vector<float> dq(D, 0.0f);
        for (std::size_t i = 0; i < keys.size(); ++i) {
          const std::size_t ki = ((std::size_t(sp.b) * TK + sp.k_begin + keys[i]) * Hkv + hk) * D;
          float dpv = 0.0f;
          for (int d = 0; d < D; ++d) dpv += d_o[d] * static_cast<float>(pb.in.v[ki + d]);
          float ds = prob[i] * (dpv - row_term);
          if (c.sink == ref::sink_kind::none && keys[i] == 0) ds -= gbar_sink * mass;
          const float ds16 = r16(ds * deriv[i]), p16 = r16(prob[i]);
          for (int d = 0; d < D; ++d) {
            dq[d] += ds16 * static_cast<float>(pb.in.k[ki + d]);
            dk[ki + d] += ds16 * static_cast<float>(pb.in.q[qi + d]);
            dv[ki + d] += p16 * d_o[d];
          }
        }
        for (int d = 0; d < D; ++d) gr.dq[qi + d] = r16(dq[d]);
      }
    }
  }
  gr.dk.resize(dk.size());
  gr.dv.resize(dv.size());
  for (std::size_t i = 0; i < dk.size(); ++i) {
    gr.dk[i] = r16(dk[i]);
    gr.dv[i] = r16(dv[i]);
  }
  if (c.sink == ref::sink_kind::learned) gr.dsinks.assign(dsinks.begin(), dsinks.end());
  return gr;
}

/// One case end to end: unfused (emulated), fp64 CPU backend, naive16; every check of the
/// header comment. Returns the worst error ratio (fused_check::check_rule).
template <class Attn, class E>
double run_case(const fc::case_spec& spec, int head_dim, int chunk_rows) {
  using Sink = typename Attn::sink_type;
  using Gate = typename Attn::gate_type;
  using Mask = typename Attn::mask_type;
  using Route = typename Attn::route_type;
  static_assert(fc::runner_knows_mask<Mask>,
                "unfused_check: the fp64 runner needs a built-in mask");
  const fc::problem pb = fc::make_problem<Sink, Gate, Mask, Route, E>(spec, head_dim);
  const ref::cotangents ct = make_cotangents<E>(pb);
  std::string label = fc::describe<Attn, 64, E>(spec);
  label.replace(label.find(" D64"), 4, " D" + std::to_string(head_dim));
  label += " chunk " + std::to_string(chunk_rows);
  double worst = 0.0;
  BOOST_TEST_CONTEXT(label) {
    const unfused_run run = run_unfused<Attn, E>(pb, ct, chunk_rows);
    record_digest("unfused " + label,
                  {&run.forward.out, &run.forward.lse, &run.forward.router,
                   &run.forward.first_key_mass, &run.grads.dq, &run.grads.dk, &run.grads.dv,
                   &run.grads.dsinks, &run.grads.dgate});
    run_options opts;
    opts.backward = true;
    opts.threads = 1;
    opts.softcap = spec.softcap > 0.0;
    const library_result fp64 = run_library<double>(pb.cfg, pb.in, ct, opts);
    const fc::outputs naive = fc::naive16<Attn, E>(pb);
    const gradients naive_grads = naive16_backward<Attn, E>(pb, naive, ct);
    BOOST_TEST(run.padding_intact, "a row padding of out, dq, dk or dv was written");
    BOOST_TEST(run.workspace_guard_intact, "the workspace was written past its end");
    worst = std::max(worst, fc::check_rule<E>("out", run.forward.out, naive.out, fp64.out));
    worst = std::max(worst, fc::check_rule("lse", run.forward.lse, naive.lse, fp64.lse));
    worst =
        std::max(worst, fc::check_rule("router", run.forward.router, naive.router, fp64.router));
    worst = std::max(worst, fc::check_rule("first_key_mass", run.forward.first_key_mass,
                                           naive.first_key_mass, fp64.first_key_mass));
    fc::check_empty_rows<Attn>(pb, run.forward);
    worst = std::max(worst, fc::check_rule<E>("dq", run.grads.dq, naive_grads.dq, fp64.dq));
    worst = std::max(worst, fc::check_rule<E>("dk", run.grads.dk, naive_grads.dk, fp64.dk));
    worst = std::max(worst, fc::check_rule<E>("dv", run.grads.dv, naive_grads.dv, fp64.dv));
    if constexpr (Sink::trainable)
      worst = std::max(worst,
                       fc::check_rule("dsinks", run.grads.dsinks, naive_grads.dsinks, fp64.dsinks));
    if constexpr (Gate::enabled)
      worst = std::max(
          worst, fc::check_rule<E>("dgate_logits", run.grads.dgate, naive_grads.dgate, fp64.dgate));
  }
  return worst;
}

// ---- The policy product (one sink policy per translation unit) ----

/// Small shapes for every policy combination: Tq != Tk, tile-free odd lengths, GQA 1 and 2, both
/// causal alignments, empty rows (bottom-right causal with Tq > Tk), windows 1 / 3 / 8, sink
/// tokens, sinks and fixed sinks from the pools; chunks of 5 rows so Tq is not a multiple.
inline std::vector<fc::case_spec> product_shapes(unsigned seed) {
  std::vector<fc::case_spec> shapes = {
      //        B  Tq  Tk Hq Hkv top_left window sink_tokens fixed_sink q_scale
      fc::dense(2, 13, 19, 2, 1, false, 8, 2, 5.0, 2.0),
      fc::dense(1, 17, 6, 2, 2, false, 3, 1, 30.0),
      fc::dense(1, 1, 9, 2, 1, true, 1, 0, -30.0),
  };
  for (std::size_t i = 0; i < shapes.size(); ++i) shapes[i].seed = seed + static_cast<unsigned>(i);
  return shapes;
}

inline constexpr int k_product_head_dim = 16;
inline constexpr int k_product_chunk_rows = 5;

/// Every product shape for one policy combination (head dim 16, bf16, chunks of 5 rows).
template <class Sink, class Gate, class Mask, class Route>
fc::product_summary run_product_shapes(unsigned seed) {
  using attn = attention<Sink, Gate, Mask, Route>;
  fc::product_summary r{1, 0, 0.0};
  for (const fc::case_spec& s : product_shapes(seed)) {
    r.worst_ratio = std::max(
        r.worst_ratio, run_case<attn, arch::bf16>(s, k_product_head_dim, k_product_chunk_rows));
    ++r.cases;
  }
  BOOST_TEST_MESSAGE(Sink::name << "/" << Gate::name << "/" << Mask::name << "/" << Route::name
                                << ": worst err / (2 err_naive + atol) = " << r.worst_ratio);
  return r;
}

/// The unfused path on every mask and route for one sink and gate policy.
template <class Sink, class Gate>
fc::product_summary run_product_masks(unsigned seed) {
  return fc::for_each_mask_and_route<Sink, Gate>(
      seed, []<class S, class G, class M, class R>(unsigned s) {
        return run_product_shapes<S, G, M, R>(s);
      });
}

}  // namespace sinkmoe::testing::unfused_check
