// Host backward (exec::host):
//  - double gradients (dq, dk, dv, dsinks, dgate) against the oracle's analytic backward, with
//    random cotangents on out, lse and router at once (and each alone), over every policy
//    combination and the shape features of docs/design.md section 7 (GQA, Tq != Tk, tile-boundary
//    lengths, windows, D); strided views (interleaved [q | gate], [k | v]) with gradient buffers
//    that start as NaN (overwritten, not accumulated);
//  - central finite differences in fp64 on the LIBRARY itself (not the oracle) of
//    L = sum(out dout) + sum(lse dlse, finite lse) + sum(G drouter) + balance loss
//    (balance::importance_cv2, lambda 0.1, shared heads 0 and 1), every sink/gate/route/mask and
//    the soft-cap;
//  - float gradients by FlashAttention's rule (2 x the error of a naive float backward + atol);
//  - determinism (threads 1/2/3, repeated runs, bitwise), empty rows and extreme sinks/gates;
//  - gradient identities: fixed == uniform learned sink; a learned sink is a zero-value key.
#define BOOST_TEST_MODULE host_backward
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <span>
#include <sstream>
#include <vector>

#include <sinkmoe/sinkmoe.hpp>

#include "support/host_checks.hpp"
#include "support/library_runner.hpp"
#include "support/naive.hpp"
#include "support/reference.hpp"

namespace st = sinkmoe::testing;
namespace ref = sinkmoe::testing::ref;
namespace ck = sinkmoe::testing::checks;
using ref::gate_kind;
using ref::mask_kind;
using ref::route_kind;
using ref::sink_kind;

namespace {

constexpr double k_grad_rtol64 = 1e-9;  // fp64 gradients vs the oracle, scale-aware
constexpr double fixed_sink_pool[] = {-30, 0, 5, 30};

/// Double gradients of the library vs the oracle's analytic backward.
void check_gradients_double(const ref::config& c, const ref::inputs& in, const ref::cotangents& ct,
                            bool softcap = false, int threads = 0) {
  const ref::gradients want = ref::backward(c, in, ct);
  const st::library_result got =
      st::run_library<double>(c, in, ct, {.threads = threads > 0 ? threads : ck::next_threads(),
                                          .softcap = softcap});
  ck::check_scaled("double dq", got.dq, want.dq, k_grad_rtol64);
  ck::check_scaled("double dk", got.dk, want.dk, k_grad_rtol64);
  ck::check_scaled("double dv", got.dv, want.dv, k_grad_rtol64);
  ck::check_finite("double dq", got.dq);
  ck::check_finite("double dk", got.dk);
  ck::check_finite("double dv", got.dv);
  if (c.sink == sink_kind::learned) {
    ck::check_scaled("double dsinks", got.dsinks, want.dsinks, k_grad_rtol64);
    ck::check_finite("double dsinks", got.dsinks);
  }
  if (c.gate != gate_kind::none) {
    ck::check_scaled("double dgate", got.dgate, want.dgate, k_grad_rtol64);
    ck::check_finite("double dgate", got.dgate);
  }
}

/// Float gradients by FlashAttention's rule: err(library float) <= 2 err(naive float) + atol,
/// per tensor, atol = 1e-6 (about 8 float ulp) of the tensor's magnitude (test/support/naive.hpp
/// holds the naive float backward: the oracle's reverse mode evaluated in float). The atol is
/// a little wider than the forward's 5 ulp: gradient entries are sums over up to B x Tq rows (dk,
/// dv, dsinks) that the library reduces in another order (tiles, per-sequence partials) than the
/// naive loop, and a float sum of N terms carries ~sqrt(N) ulp of rounding.
void check_gradients_float(const ref::config& c, const ref::inputs& in, const ref::cotangents& ct,
                           bool softcap = false) {
  const ref::gradients want = ref::backward(c, in, ct);
  const ref::gradients naive = st::naive::backward<float>(c, in, ct);
  const st::library_result got =
      st::run_library<float>(c, in, ct, {.threads = ck::next_threads(), .softcap = softcap});
  ck::check_fa_rule("float dq", got.dq, naive.dq, want.dq);
  ck::check_fa_rule("float dk", got.dk, naive.dk, want.dk);
  ck::check_fa_rule("float dv", got.dv, naive.dv, want.dv);
  if (c.sink == sink_kind::learned) ck::check_fa_rule("float dsinks", got.dsinks, naive.dsinks, want.dsinks);
  if (c.gate != gate_kind::none) ck::check_fa_rule("float dgate", got.dgate, naive.dgate, want.dgate);
}

// ---- The finite-difference loss, evaluated on the library ----

/// Balance loss of one layer from the library's router and counted tokens; writes dL/dG when
/// drouter is given.
double balance_on_library(const ref::config& c, const st::library_result& f,
                          const sinkmoe::balance::importance_cv2& reg,
                          std::vector<double>* drouter = nullptr) {
  std::vector<std::uint8_t> counted(f.counted.begin(), f.counted.end());
  const sinkmoe::balance::layer_input<double> layer{{f.router.data(), {c.B, c.Hq, c.Tq}},
                                                    {counted.data(), {c.B, c.Tq}}};
  const sinkmoe::exec::host ex{1};
  if (!drouter) return reg.forward<double>(ex, std::span(&layer, 1)).loss;
  drouter->assign(f.router.size(), 0.0);
  const sinkmoe::tensor_view<double, 3> view{drouter->data(), {c.B, c.Hq, c.Tq}};
  return reg.forward_backward<double>(ex, std::span(&layer, 1), std::span(&view, 1)).loss;
}

struct fd_problem {
  ref::config cfg;
  ref::cotangents ct;
  sinkmoe::balance::importance_cv2 reg;
  bool softcap = false;
};

/// L = sum(out dout) + sum(lse dlse over finite lse) + sum(G drouter) + balance loss, all from
/// the library's double forward.
double library_loss(const fd_problem& p, const ref::inputs& in) {
  const st::library_result f =
      st::run_library<double>(p.cfg, in, {}, {.backward = false, .threads = 1, .softcap = p.softcap});
  double l = 0;
  for (std::size_t i = 0; i < f.out.size(); ++i) l += f.out[i] * p.ct.dout[i];
  for (std::size_t i = 0; i < f.lse.size(); ++i)
    if (std::isfinite(f.lse[i])) l += f.lse[i] * p.ct.dlse[i];
  for (std::size_t i = 0; i < f.router.size(); ++i) l += f.router[i] * p.ct.drouter[i];
  return l + balance_on_library(p.cfg, f, p.reg);
}

/// The library's gradient of library_loss: backward with drouter = cotangent + balance gradient.
st::library_result library_gradient(const fd_problem& p, const ref::inputs& in) {
  const st::library_result f =
      st::run_library<double>(p.cfg, in, {}, {.backward = false, .threads = 1, .softcap = p.softcap});
  std::vector<double> bal;
  balance_on_library(p.cfg, f, p.reg, &bal);
  ref::cotangents all = p.ct;
  for (std::size_t i = 0; i < bal.size(); ++i) all.drouter[i] += bal[i];
  return st::run_library<double>(p.cfg, in, all, {.threads = 1, .softcap = p.softcap});
}

constexpr double k_fd_step = 1e-5;
constexpr double k_fd_rtol = 1e-6;

/// Central differences of library_loss in the entries `which` of one input tensor, compared with
/// `analytic`: |fd - g| <= k_fd_rtol * max(1, |g|). Returns the number of mismatches.
std::size_t fd_mismatches(const fd_problem& p, const ref::inputs& in,
                          std::vector<double> ref::inputs::*tensor,
                          const std::vector<double>& analytic, const std::vector<std::size_t>& which,
                          std::string* first = nullptr) {
  ref::inputs x = in;
  std::size_t bad = 0;
  std::ostringstream os;
  os.precision(12);
  for (std::size_t i : which) {
    const double saved = (x.*tensor)[i];
    (x.*tensor)[i] = saved + k_fd_step;
    const double lp = library_loss(p, x);
    (x.*tensor)[i] = saved - k_fd_step;
    const double lm = library_loss(p, x);
    (x.*tensor)[i] = saved;
    const double fd = (lp - lm) / (2 * k_fd_step);
    if (!(std::abs(fd - analytic[i]) <= k_fd_rtol * std::max(1.0, std::abs(analytic[i])))) {
      if (bad < 3) os << " [" << i << "] fd " << fd << " analytic " << analytic[i] << ";";
      ++bad;
    }
  }
  if (first) *first = os.str();
  return bad;
}

/// All indices of a tensor, or `limit` random ones when it is larger.
std::vector<std::size_t> entries(std::size_t n, std::size_t limit, std::mt19937_64& rng) {
  std::vector<std::size_t> idx(n);
  for (std::size_t i = 0; i < n; ++i) idx[i] = i;
  if (n > limit) {
    std::shuffle(idx.begin(), idx.end(), rng);
    idx.resize(limit);
  }
  return idx;
}

/// Finite differences on every input tensor of one problem.
void check_fd(const fd_problem& p, const ref::inputs& in, std::size_t limit, std::mt19937_64& rng) {
  const st::library_result g = library_gradient(p, in);
  auto run = [&](const char* what, std::vector<double> ref::inputs::*tensor,
                 const std::vector<double>& analytic) {
    BOOST_TEST_REQUIRE(analytic.size() == (in.*tensor).size(), what << ": gradient size");
    std::string first;
    const std::size_t bad =
        fd_mismatches(p, in, tensor, analytic, entries(analytic.size(), limit, rng), &first);
    BOOST_TEST(bad == 0u, what << ": " << bad << " entries differ from central differences:" << first);
  };
  run("dq", &ref::inputs::q, g.dq);
  run("dk", &ref::inputs::k, g.dk);
  run("dv", &ref::inputs::v, g.dv);
  if (p.cfg.sink == sink_kind::learned) run("dsinks", &ref::inputs::sinks, g.dsinks);
  if (p.cfg.gate != gate_kind::none) run("dgate", &ref::inputs::gate_logits, g.dgate);
  // The same loss through the oracle (its own balance implementation): the library's gradient
  // including the balance term matches too.
  {
    const ref::gradients want = ref::total_gradients(
        p.cfg, in, p.ct, {.lambda = p.reg.lambda, .shared_heads = p.reg.shared_heads});
    ck::check_scaled("total dq vs oracle", g.dq, want.dq, k_grad_rtol64);
    ck::check_scaled("total dk vs oracle", g.dk, want.dk, k_grad_rtol64);
    ck::check_scaled("total dv vs oracle", g.dv, want.dv, k_grad_rtol64);
    if (p.cfg.sink == sink_kind::learned)
      ck::check_scaled("total dsinks vs oracle", g.dsinks, want.dsinks, k_grad_rtol64);
    if (p.cfg.gate != gate_kind::none)
      ck::check_scaled("total dgate vs oracle", g.dgate, want.dgate, k_grad_rtol64);
  }
}

/// Moderate inputs for finite differences (extremes make the loss flat, hiding errors).
ck::input_options fd_inputs() {
  ck::input_options o;
  o.sink_pool = {-2, 0, 1.5};
  o.sink_special_prob = 0.5;
  o.gate_pool = {0};
  o.gate_special_prob = 0.1;
  return o;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(oracle_agreement)

// Every policy combination on two shapes (one crossing key tiles with Tq != Tk, GQA 1 and 2).
BOOST_AUTO_TEST_CASE(every_policy_combination) {
  const ck::shape shapes[] = {
      {1, 17, 17, 4, 2, 16, 3, 2},
      {3, 64, 130, 2, 2, 16, 64, 1},
  };
  std::mt19937_64 rng(2001);
  int index = 0;
  for (const ck::combo& cb : ck::all_combos())
    for (const ck::shape& s : shapes) {
      const ref::config c = ck::make_config(cb, s, fixed_sink_pool[index++ % 4]);
      const ref::inputs in = ck::make_inputs(c, rng);
      const ref::cotangents ct = ck::make_cotangents(c, rng);
      BOOST_TEST_CONTEXT(ck::describe(c)) {
        check_gradients_double(c, in, ct);
        check_gradients_float(c, in, ct);
      }
    }
}

// Shape features on a few combinations: tile-boundary lengths 1/63/64/65/130 in every (Tq, Tk)
// pair, GQA 1/2/4 x D 16/64/128, windows 1/3/64 on long rows, B 1 and 3.
BOOST_AUTO_TEST_CASE(shape_features) {
  const ck::combo combos[] = {
      {sink_kind::learned, gate_kind::elementwise, mask_kind::sliding_window, route_kind::product},
      {sink_kind::none, gate_kind::none, mask_kind::causal, route_kind::sink_mass},
      {sink_kind::fixed, gate_kind::headwise, mask_kind::streaming, route_kind::output_gate},
      {sink_kind::learned, gate_kind::headwise, mask_kind::causal, route_kind::sink_mass},
  };
  const int lengths[] = {1, 63, 64, 65, 130};
  const int windows[] = {1, 3, 64};
  std::vector<ck::shape> shapes;
  int i = 0;
  for (int tq : lengths)
    for (int tk : lengths) {
      shapes.push_back({1 + 2 * (i % 2), tq, tk, 2, 1, 16, windows[i % 3], 1 + i % 2});
      ++i;
    }
  for (int d : {16, 64, 128})
    for (int ratio : {1, 2, 4}) shapes.push_back({1, 65, 64, 4, 4 / ratio, d, 3, 1});
  for (int w : windows)
    for (auto [tq, tk] : {std::pair{130, 130}, std::pair{17, 130}})
      shapes.push_back({1, tq, tk, 2, 2, 16, w, 2});
  std::mt19937_64 rng(2002);
  int index = 0;
  for (const ck::combo& cb : combos)
    for (const ck::shape& s : shapes) {
      const ref::config c = ck::make_config(cb, s, fixed_sink_pool[index++ % 4]);
      const ref::inputs in = ck::make_inputs(c, rng);
      const ref::cotangents ct = ck::make_cotangents(c, rng);
      BOOST_TEST_CONTEXT(ck::describe(c)) {
        check_gradients_double(c, in, ct);
        if (index % 3 == 0) check_gradients_float(c, in, ct);
      }
    }
}

// Top-left alignment and the soft-cap, every sink x gate with the deduced route.
BOOST_AUTO_TEST_CASE(top_left_and_softcap) {
  std::mt19937_64 rng(2003);
  int index = 0;
  for (auto sk : ck::all_sinks)
    for (auto g : ck::all_gates) {
      for (auto m : {mask_kind::causal, mask_kind::sliding_window, mask_kind::streaming})
        for (auto [tq, tk] : {std::pair{17, 70}, std::pair{70, 17}}) {
          const ck::shape s{1, tq, tk, 2, 1, 16, 3, 2, /*top_left*/ true};
          const ref::config c =
              ck::make_config({sk, g, m, ck::deduced_route(g)}, s, fixed_sink_pool[index++ % 4]);
          const ref::inputs in = ck::make_inputs(c, rng);
          const ref::cotangents ct = ck::make_cotangents(c, rng);
          BOOST_TEST_CONTEXT(ck::describe(c)) { check_gradients_double(c, in, ct); }
        }
      for (double cap : {1.5, 5.0}) {
        ref::config c = ck::make_config({sk, g, mask_kind::causal, ck::deduced_route(g)},
                                        {2, 33, 70, 4, 2, 16}, fixed_sink_pool[index++ % 4]);
        c.softcap = cap;
        const ref::inputs in = ck::make_inputs(c, rng, {.q_scale = 4.0});
        const ref::cotangents ct = ck::make_cotangents(c, rng);
        BOOST_TEST_CONTEXT(ck::describe(c)) {
          check_gradients_double(c, in, ct, /*softcap*/ true);
          check_gradients_float(c, in, ct, /*softcap*/ true);
        }
      }
    }
}

// Each cotangent alone (out only, lse only, router only): every term has its own gradient path,
// and the library must not need the others to be given (optional drouter / dlse views).
BOOST_AUTO_TEST_CASE(each_cotangent_alone) {
  std::mt19937_64 rng(2004);
  int index = 0;
  for (const ck::combo& cb : ck::all_combos()) {
    const ref::config c = ck::make_config(cb, {1, 17, 40, 2, 1, 16, 3, 1}, fixed_sink_pool[index++ % 4]);
    const ref::inputs in = ck::make_inputs(c, rng);
    const ref::cotangents all = ck::make_cotangents(c, rng);
    for (int which = 0; which < 3; ++which) {
      ref::cotangents ct;
      ct.dout.assign(all.dout.size(), 0.0);  // the runner always passes dout (required)
      if (which == 0) ct.dout = all.dout;
      if (which == 1) ct.dlse = all.dlse;
      if (which == 2) ct.drouter = all.drouter;
      const char* const names[] = {"out", "lse", "router"};
      BOOST_TEST_CONTEXT(ck::describe(c) << " cotangent on " << names[which]) {
        check_gradients_double(c, in, ct);
      }
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// Strided views (docs/design.md section 4): Qwen3-Next's interleaved [q | gate] projection, k and v
// interleaved in one buffer, padded out/dout rows, lse/router/dlse/drouter stored [B, Tq, H],
// sinks and dsinks with stride 2, dq/dgate interleaved like q/gate, dk/dv like k/v. Same values
// as the contiguous run through the runner, and the oracle's. Gradient buffers start as NaN and
// a second backward on them gives the same bits (overwritten, not accumulated).
namespace {

template <class Attn>
void run_strided(const ref::config& c, std::mt19937_64& rng) {
  using sinkmoe::index_t;
  const int B = c.B, Tq = c.Tq, Tk = c.Tk, H = c.Hq, Hkv = c.Hkv, D = c.D, G = ck::gate_dim(c);
  const bool gated = c.gate != gate_kind::none;
  const ref::inputs in = ck::make_inputs(c, rng);
  const ref::cotangents ct = ck::make_cotangents(c, rng);
  const int W = D + (gated ? G : 0);  // projection row: [q | gate]
  std::vector<double> proj(std::size_t(B) * Tq * H * W), kv(std::size_t(B) * Tk * Hkv * 2 * D);
  std::vector<double> sinks(2 * H, 99.0);
  const int PO = D + 3;  // padded out rows
  std::vector<double> out(std::size_t(B) * Tq * H * PO, -7.0), dout(out.size(), 0.0);
  std::vector<double> lse(std::size_t(B) * Tq * H), router(lse.size()), dlse(lse.size()), drouter(lse.size());
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < Tq; ++t)
      for (int h = 0; h < H; ++h) {
        const std::size_t src = ((std::size_t(b) * Tq + t) * H + h), row = src * W;
        for (int d = 0; d < D; ++d) proj[row + d] = in.q[src * D + d];
        for (int g = 0; gated && g < G; ++g) proj[row + D + g] = in.gate_logits[src * G + g];
        for (int d = 0; d < D; ++d) dout[src * PO + d] = ct.dout[src * D + d];
        const std::size_t ri = (std::size_t(b) * H + h) * Tq + t, si = (std::size_t(b) * Tq + t) * H + h;
        dlse[si] = ct.dlse[ri];
        drouter[si] = ct.drouter[ri];
      }
  for (std::size_t r = 0; r < std::size_t(B) * Tk * Hkv; ++r)
    for (int d = 0; d < D; ++d) {
      kv[r * 2 * D + d] = in.k[r * D + d];
      kv[r * 2 * D + D + d] = in.v[r * D + d];
    }
  for (int h = 0; h < H && !in.sinks.empty(); ++h) sinks[2 * h] = in.sinks[h];

  const std::array<index_t, 4> proj_stride{index_t(Tq) * H * W, index_t(H) * W, W, 1};
  const std::array<index_t, 4> kv_stride{index_t(Tk) * Hkv * 2 * D, index_t(Hkv) * 2 * D, 2 * D, 1};
  const std::array<index_t, 4> out_stride{index_t(Tq) * H * PO, index_t(H) * PO, PO, 1};
  const std::array<index_t, 3> stat_stride{index_t(Tq) * H, 1, H};  // [B, H, Tq] view of [B, Tq, H]
  sinkmoe::forward_args<double> fa;
  fa.q = {proj.data(), {B, Tq, H, D}, proj_stride};
  fa.k = {kv.data(), {B, Tk, Hkv, D}, kv_stride};
  fa.v = {kv.data() + D, {B, Tk, Hkv, D}, kv_stride};
  if (c.sink == sink_kind::learned) fa.sinks = {sinks.data(), {H}, {2}};
  if (gated) fa.gate_logits = {proj.data() + D, {B, Tq, H, G}, proj_stride};
  fa.out = {out.data(), {B, Tq, H, D}, out_stride};
  fa.lse = {lse.data(), {B, H, Tq}, stat_stride};
  fa.router = {router.data(), {B, H, Tq}, stat_stride};
  fa.params.scale = c.scale;
  fa.params.alignment = c.top_left ? sinkmoe::causal_alignment::top_left : sinkmoe::causal_alignment::bottom_right;
  if (c.mask == mask_kind::sliding_window || c.mask == mask_kind::streaming) fa.params.window = c.window;
  if (c.mask == mask_kind::streaming) fa.params.sink_tokens = c.sink_tokens;
  if (c.sink == sink_kind::fixed) fa.params.fixed_sink = c.fixed_sink;
  Attn::forward(sinkmoe::exec::host{2}, fa);

  // Gradients are overwritten, not accumulated: start from NaN everywhere (a gradient the
  // backward forgets to write, e.g. a key no query sees or an empty row's dq, stays NaN).
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> dproj(proj.size(), nan), dkv(kv.size(), nan), dsinks(2 * H, nan);
  sinkmoe::backward_args<double> ba;
  ba.dout = {dout.data(), {B, Tq, H, D}, out_stride};
  ba.drouter = {drouter.data(), {B, H, Tq}, stat_stride};
  ba.dlse = {dlse.data(), {B, H, Tq}, stat_stride};
  ba.dq = {dproj.data(), {B, Tq, H, D}, proj_stride};
  ba.dk = {dkv.data(), {B, Tk, Hkv, D}, kv_stride};
  ba.dv = {dkv.data() + D, {B, Tk, Hkv, D}, kv_stride};
  if (c.sink == sink_kind::learned) ba.dsinks = {dsinks.data(), {H}, {2}};
  if (gated) ba.dgate_logits = {dproj.data() + D, {B, Tq, H, G}, proj_stride};
  Attn::backward(sinkmoe::exec::host{2}, fa, ba);
  const std::vector<double> dproj_once = dproj, dkv_once = dkv, dsinks_once = dsinks;
  Attn::backward(sinkmoe::exec::host{1}, fa, ba);  // again, on the written buffers
  ck::check_bitwise("second backward dq/dgate", dproj, dproj_once);
  ck::check_bitwise("second backward dk/dv", dkv, dkv_once);
  ck::check_bitwise("second backward dsinks", dsinks, dsinks_once);

  // Gather back to the oracle's contiguous layouts.
  st::library_result got;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int t = 0; t < Tq; ++t) {
        got.lse.push_back(fa.lse(b, h, t));
        got.router.push_back(fa.router(b, h, t));
      }
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < Tq; ++t)
      for (int h = 0; h < H; ++h) {
        for (int d = 0; d < D; ++d) got.out.push_back(fa.out(b, t, h, d));
        for (int d = 0; d < D; ++d) got.dq.push_back(ba.dq(b, t, h, d));
        for (int g = 0; gated && g < G; ++g) got.dgate.push_back(ba.dgate_logits(b, t, h, g));
        for (int d = D; d < PO; ++d)
          BOOST_TEST(out[((std::size_t(b) * Tq + t) * H + h) * PO + d] == -7.0, "out padding written");
      }
  for (int b = 0; b < B; ++b)
    for (int j = 0; j < Tk; ++j)
      for (int h = 0; h < Hkv; ++h)
        for (int d = 0; d < D; ++d) {
          got.dk.push_back(ba.dk(b, j, h, d));
          got.dv.push_back(ba.dv(b, j, h, d));
        }
  const ref::forward_result want = ref::forward(c, in);
  const ref::gradients gw = ref::backward(c, in, ct);
  ck::check_rel("strided out", got.out, want.out, 1e-10);
  ck::check_rel("strided lse", got.lse, want.lse, 1e-10);
  ck::check_rel("strided router", got.router, want.router, 1e-10);
  ck::check_scaled("strided dq", got.dq, gw.dq, k_grad_rtol64);
  ck::check_scaled("strided dk", got.dk, gw.dk, k_grad_rtol64);
  ck::check_scaled("strided dv", got.dv, gw.dv, k_grad_rtol64);
  if (gated) ck::check_scaled("strided dgate", got.dgate, gw.dgate, k_grad_rtol64);
  if (c.sink == sink_kind::learned) {
    std::vector<double> ds;
    for (int h = 0; h < H; ++h) {
      ds.push_back(dsinks[2 * h]);
      BOOST_TEST(std::isnan(dsinks[2 * h + 1]), "dsinks gap written");
    }
    ck::check_scaled("strided dsinks", ds, gw.dsinks, k_grad_rtol64);
  }
  // The contiguous run through the runner gives the same values.
  const st::library_result flat = st::run_library<double>(c, in, ct, {.threads = 1});
  ck::check_rel("strided vs contiguous out", got.out, flat.out, 1e-14);
  ck::check_scaled("strided vs contiguous dq", got.dq, flat.dq, 1e-14);
}

}  // namespace

BOOST_AUTO_TEST_CASE(strided_views) {
  using namespace sinkmoe;
  std::mt19937_64 rng(2005);
  const ck::shape s{2, 17, 70, 4, 2, 16, 5, 2};
  // Tq > Tk: empty causal rows (dq = dgate = 0 there); top-left Tq < Tk: keys no query sees.
  run_strided<attention<sink::learned, gate::elementwise, mask::causal>>(
      ck::make_config({sink_kind::learned, gate_kind::elementwise, mask_kind::causal, route_kind::output_gate},
                      {2, 70, 17, 4, 2, 16}), rng);
  run_strided<attention<sink::none, gate::headwise, mask::causal, route::product>>(
      ck::make_config({sink_kind::none, gate_kind::headwise, mask_kind::causal, route_kind::product},
                      {1, 17, 70, 4, 1, 16, 3, 1, /*top_left*/ true}), rng);
  run_strided<attention<sink::learned, gate::elementwise, mask::causal, route::product>>(
      ck::make_config({sink_kind::learned, gate_kind::elementwise, mask_kind::causal, route_kind::product}, s), rng);
  run_strided<attention<sink::learned, gate::headwise, mask::sliding_window>>(
      ck::make_config({sink_kind::learned, gate_kind::headwise, mask_kind::sliding_window, route_kind::output_gate}, s), rng);
  run_strided<attention<sink::none, gate::none, mask::streaming>>(
      ck::make_config({sink_kind::none, gate_kind::none, mask_kind::streaming, route_kind::sink_mass}, s), rng);
  run_strided<attention<sink::fixed, gate::elementwise, mask::none>>(
      ck::make_config({sink_kind::fixed, gate_kind::elementwise, mask_kind::none, route_kind::output_gate}, s, 5.0), rng);
}

BOOST_AUTO_TEST_SUITE(finite_differences)

// Every policy combination on two tiny shapes: one with Tq < Tk, a window and 2 heads (every
// entry of every input perturbed), one with B = 2, Tq > Tk (empty causal rows, where the sink's
// gradient is dlse) and 3 heads sharing one KV head (12 random entries per tensor). Balance with
// shared_heads 0 on the first shape and 1 on the second. (Each library call costs whole 64 x 64
// tiles, so the shapes stay small.)
BOOST_AUTO_TEST_CASE(every_combination_tiny) {
  const ck::shape shapes[] = {{1, 3, 5, 2, 1, 4, 2, 1}, {2, 5, 3, 3, 1, 4, 2, 1}};
  const std::size_t limits[] = {1000, 12};
  std::mt19937_64 rng(2101);
  int index = 0;
  for (const ck::combo& cb : ck::all_combos())
    for (int si = 0; si < 2; ++si) {
      fd_problem p;
      p.cfg = ck::make_config(cb, shapes[si], std::array{-1.0, 0.0, 0.7}[index++ % 3]);
      p.reg = {.lambda = 0.1, .shared_heads = si};
      const ref::inputs in = ck::make_inputs(p.cfg, rng, fd_inputs());
      p.ct = ck::make_cotangents(p.cfg, rng);
      BOOST_TEST_CONTEXT(ck::describe(p.cfg) << " shared_heads=" << si) {
        check_fd(p, in, limits[si], rng);
      }
    }
}

// The soft-cap (mask causal, deduced route) for every sink x gate.
BOOST_AUTO_TEST_CASE(softcap_tiny) {
  std::mt19937_64 rng(2102);
  int index = 0;
  for (auto sk : ck::all_sinks)
    for (auto g : ck::all_gates)
      for (int si = 0; si < 2; ++si) {
        fd_problem p;
        p.cfg = ck::make_config({sk, g, mask_kind::causal, ck::deduced_route(g)},
                                {1, 3, 5, 4, 2, 4}, std::array{-1.0, 0.0, 0.7}[index++ % 3]);
        p.cfg.softcap = 1.5;
        p.softcap = true;
        p.reg = {.lambda = 0.1, .shared_heads = si};
        auto opts = fd_inputs();
        opts.q_scale = 3.0;
        const ref::inputs in = ck::make_inputs(p.cfg, rng, opts);
        p.ct = ck::make_cotangents(p.cfg, rng);
        BOOST_TEST_CONTEXT(ck::describe(p.cfg) << " shared_heads=" << si) { check_fd(p, in, 1000, rng); }
      }
}

// Larger rows that cross the 64-key tile boundary, GQA 2; 30 random entries per tensor.
BOOST_AUTO_TEST_CASE(tile_crossing_sampled) {
  const ck::combo combos[] = {
      {sink_kind::learned, gate_kind::elementwise, mask_kind::sliding_window, route_kind::product},
      {sink_kind::none, gate_kind::headwise, mask_kind::causal, route_kind::product},
      {sink_kind::fixed, gate_kind::none, mask_kind::streaming, route_kind::sink_mass},
      {sink_kind::learned, gate_kind::headwise, mask_kind::none, route_kind::output_gate},
      {sink_kind::none, gate_kind::none, mask_kind::sliding_window, route_kind::sink_mass},
  };
  std::mt19937_64 rng(2103);
  int index = 0;
  for (const ck::combo& cb : combos) {
    fd_problem p;
    p.cfg = ck::make_config(cb, {1, 17, 70, 4, 2, 16, 66, 2}, 0.5);
    p.reg = {.lambda = 0.1, .shared_heads = index++ % 2};
    const ref::inputs in = ck::make_inputs(p.cfg, rng, fd_inputs());
    p.ct = ck::make_cotangents(p.cfg, rng);
    BOOST_TEST_CONTEXT(ck::describe(p.cfg) << " shared_heads=" << p.reg.shared_heads) {
      check_fd(p, in, 30, rng);
    }
  }
}

// The finite-difference comparison can fail: a gradient off by 1e-5 in one entry is caught.
BOOST_AUTO_TEST_CASE(detects_wrong_gradients) {
  std::mt19937_64 rng(2104);
  fd_problem p;
  p.cfg = ck::make_config({sink_kind::learned, gate_kind::headwise, mask_kind::causal,
                           route_kind::product}, {1, 3, 5, 4, 2, 4});
  p.reg = {.lambda = 0.1, .shared_heads = 0};
  const ref::inputs in = ck::make_inputs(p.cfg, rng, fd_inputs());
  p.ct = ck::make_cotangents(p.cfg, rng);
  const st::library_result g = library_gradient(p, in);
  const std::vector<std::size_t> all_sinks{0, 1, 2, 3};
  BOOST_TEST(fd_mismatches(p, in, &ref::inputs::sinks, g.dsinks, all_sinks) == 0u);
  auto wrong = g.dsinks;
  wrong[2] += 1e-5 * std::max(1.0, std::abs(wrong[2]));
  BOOST_TEST(fd_mismatches(p, in, &ref::inputs::sinks, wrong, all_sinks) == 1u);
  // Dropping the balance gradient from the backward is caught too.
  fd_problem no_balance = p;
  no_balance.reg.lambda = 0;
  const st::library_result g0 = library_gradient(no_balance, in);
  BOOST_TEST(fd_mismatches(p, in, &ref::inputs::sinks, g0.dsinks, all_sinks) > 0u);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(edge_cases)

// Empty rows (Tq > Tk causal, a window past the keys, streaming) and extreme sinks (+-30, +-80)
// and gates (+-20, +-60, +-100): gradients are finite and match the oracle (double) or satisfy
// the FlashAttention rule (float).
BOOST_AUTO_TEST_CASE(empty_rows_and_extremes) {
  struct masked {
    mask_kind mask;
    ck::shape s;
  };
  const masked cases[] = {
      {mask_kind::causal, {2, 17, 5, 4, 2, 16}},
      {mask_kind::sliding_window, {1, 70, 17, 2, 1, 16, 3, 1, /*top_left*/ true}},
      {mask_kind::streaming, {1, 17, 5, 2, 1, 16, 2, 1}},
      {mask_kind::none, {2, 17, 40, 4, 2, 16}},
  };
  ck::input_options extreme;
  extreme.sink_pool = {-80, -30, 30, 80};
  extreme.sink_special_prob = 0.8;
  extreme.gate_pool = {-100, -60, -20, 20, 60, 100};
  extreme.gate_special_prob = 0.7;
  extreme.q_scale = 4.0;
  const double fixed_pool[] = {-80, -30, 30, 80};
  std::mt19937_64 rng(2201);
  int index = 0;
  for (const masked& mc : cases)
    for (const ck::combo& cb : ck::all_combos()) {
      if (cb.mask != mask_kind::causal) continue;  // sink x gate x route
      for (bool use_extreme : {false, true}) {
        const ref::config c =
            ck::make_config({cb.sink, cb.gate, mc.mask, cb.route}, mc.s,
                            use_extreme ? fixed_pool[index % 4] : fixed_sink_pool[index % 4]);
        ++index;
        const ref::inputs in = use_extreme ? ck::make_inputs(c, rng, extreme) : ck::make_inputs(c, rng);
        const ref::cotangents ct = ck::make_cotangents(c, rng);
        BOOST_TEST_CONTEXT(ck::describe(c) << (use_extreme ? " extreme" : "")) {
          check_gradients_double(c, in, ct);
          check_gradients_float(c, in, ct);
          const auto gf = st::run_library<float>(c, in, ct, {.threads = 1});
          ck::check_finite("float dq", gf.dq);
          ck::check_finite("float dk", gf.dk);
          ck::check_finite("float dv", gf.dv);
          ck::check_finite("float dsinks", gf.dsinks);
          ck::check_finite("float dgate", gf.dgate);
        }
      }
    }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(determinism)

// Float backward: bitwise identical for 1, 2 and 3 threads and across repeated runs, dsinks
// included (dK/dV over the GQA group and dsinks over the batch are reduced in a fixed order).
BOOST_AUTO_TEST_CASE(float_backward_is_deterministic) {
  const ck::combo combos[] = {
      {sink_kind::learned, gate_kind::elementwise, mask_kind::sliding_window, route_kind::product},
      {sink_kind::learned, gate_kind::none, mask_kind::causal, route_kind::sink_mass},
      {sink_kind::none, gate_kind::headwise, mask_kind::streaming, route_kind::product},
      {sink_kind::fixed, gate_kind::elementwise, mask_kind::none, route_kind::output_gate},
  };
  std::mt19937_64 rng(2301);
  for (const ck::combo& cb : combos) {
    const ref::config c = ck::make_config(cb, {3, 130, 130, 4, 1, 64, 64, 2}, 5.0);
    const ref::inputs in = ck::make_inputs(c, rng);
    const ref::cotangents ct = ck::make_cotangents(c, rng);
    BOOST_TEST_CONTEXT(ck::describe(c)) {
      const auto base = st::run_library<float>(c, in, ct, {.threads = 1});
      for (int threads : {1, 2, 3}) {
        const auto again = st::run_library<float>(c, in, ct, {.threads = threads});
        BOOST_TEST_CONTEXT("threads " << threads) {
          ck::check_bitwise("dq", again.dq, base.dq);
          ck::check_bitwise("dk", again.dk, base.dk);
          ck::check_bitwise("dv", again.dv, base.dv);
          ck::check_bitwise("dsinks", again.dsinks, base.dsinks);
          ck::check_bitwise("dgate", again.dgate, base.dgate);
        }
      }
      if (c.sink == sink_kind::learned) BOOST_TEST(base.dsinks.size() == std::size_t(c.Hq));
    }
  }
}

// With fewer (sequence, head) pairs than threads the backward splits its work across key tiles
// and then query tiles (seven tile products instead of five); it must still give the one-task-
// per-head schedule's bits (1 thread), for every mask kind, vanilla's key-0 term and GQA.
BOOST_AUTO_TEST_CASE(split_schedule_is_bitwise_the_per_head_schedule) {
  const ck::combo combos[] = {
      {sink_kind::none, gate_kind::none, mask_kind::causal, route_kind::sink_mass},
      {sink_kind::learned, gate_kind::elementwise, mask_kind::sliding_window, route_kind::product},
      {sink_kind::none, gate_kind::headwise, mask_kind::streaming, route_kind::product},
      {sink_kind::fixed, gate_kind::none, mask_kind::none, route_kind::sink_mass},
  };
  std::mt19937_64 rng(2302);
  for (const ck::combo& cb : combos) {
    const ref::config c = ck::make_config(cb, {1, 200, 200, 2, 1, 64, 70, 2}, 1.5);
    const ref::inputs in = ck::make_inputs(c, rng);
    const ref::cotangents ct = ck::make_cotangents(c, rng);
    BOOST_TEST_CONTEXT(ck::describe(c)) {
      const auto base = st::run_library<float>(c, in, ct, {.threads = 1});
      for (int threads : {3, 8}) {  // 2 (sequence, head) pairs: both take the split schedule
        const auto split = st::run_library<float>(c, in, ct, {.threads = threads});
        BOOST_TEST_CONTEXT("threads " << threads) {
          ck::check_bitwise("out", split.out, base.out);
          ck::check_bitwise("dq", split.dq, base.dq);
          ck::check_bitwise("dk", split.dk, base.dk);
          ck::check_bitwise("dv", split.dv, base.dv);
          ck::check_bitwise("dsinks", split.dsinks, base.dsinks);
          ck::check_bitwise("dgate", split.dgate, base.dgate);
        }
      }
    }
  }
}

// Tiles the mask cuts run the tile products only over the scores some query sees and the keys
// in each row's hull (host/forward.hpp, host/backward.hpp). Two custom masks with causal's
// visibility send every tile down that path: one classifies every non-empty tile as partial,
// the other also gives the loosest legal hull (every key). Both skip different sets of exactly-
// zero terms than mask::causal does, so all three must agree bit for bit, on both backward
// schedules.
template <bool LooseHull>
struct causal_all_cut {
  static constexpr const char* name = "causal_all_cut";
  sinkmoe::mask::causal inner;
  int tk = 0;
  causal_all_cut(const sinkmoe::attention_params& p, sinkmoe::index_t tq, sinkmoe::index_t tk_)
      : inner(p, tq, tk_), tk(static_cast<int>(tk_)) {}
  bool visible(int t, int j) const { return inner.visible(t, j); }
  sinkmoe::key_span key_range(int t) const {
    return LooseHull ? sinkmoe::key_span{0, tk} : inner.key_range(t);
  }
  sinkmoe::tile_kind tile_class(int q0, int q1, int k0, int k1) const {
    return inner.tile_class(q0, q1, k0, k1) == sinkmoe::tile_kind::empty
               ? sinkmoe::tile_kind::empty
               : sinkmoe::tile_kind::partial;
  }
  static void validate(const sinkmoe::attention_params& p) { sinkmoe::mask::causal::validate(p); }
};
static_assert(sinkmoe::mask_policy<causal_all_cut<true>>);

template <class Mask>
std::vector<std::vector<double>> run_sink_attention(int tq, int tk, int threads) {
  constexpr int H = 2, D = 64;
  std::mt19937 rng(2303);
  std::normal_distribution<float> normal(0.0f, 1.5f);
  auto random = [&](std::size_t n) {
    std::vector<float> x(n);
    for (float& e : x) e = normal(rng);
    return x;
  };
  std::vector<float> q = random(std::size_t(tq) * H * D), k = random(std::size_t(tk) * H * D),
                     v = random(std::size_t(tk) * H * D), sinks = random(H),
                     dout = random(std::size_t(tq) * H * D);
  std::vector<float> out(q.size()), lse(std::size_t(H) * tq), router(lse.size()), dq(q.size()),
      dk(k.size()), dv(v.size()), dsinks(H);
  using Attn = sinkmoe::attention<sinkmoe::sink::learned, sinkmoe::gate::none, Mask>;
  sinkmoe::forward_args<float> fa;
  fa.q = {q.data(), {1, tq, H, D}};
  fa.k = {k.data(), {1, tk, H, D}};
  fa.v = {v.data(), {1, tk, H, D}};
  fa.sinks = {sinks.data(), {H}};
  fa.out = {out.data(), {1, tq, H, D}};
  fa.lse = {lse.data(), {1, H, tq}};
  fa.router = {router.data(), {1, H, tq}};
  Attn::forward(sinkmoe::exec::host{threads}, fa);
  sinkmoe::backward_args<float> ba;
  ba.dout = {dout.data(), {1, tq, H, D}};
  ba.dq = {dq.data(), {1, tq, H, D}};
  ba.dk = {dk.data(), {1, tk, H, D}};
  ba.dv = {dv.data(), {1, tk, H, D}};
  ba.dsinks = {dsinks.data(), {H}};
  Attn::backward(sinkmoe::exec::host{threads}, fa, ba);
  std::vector<std::vector<double>> results;  // widened exactly, for check_bitwise
  for (const auto* x : {&out, &lse, &router, &dq, &dk, &dv, &dsinks})
    results.emplace_back(x->begin(), x->end());
  return results;
}

BOOST_AUTO_TEST_CASE(cut_tiles_keep_the_bits) {
  const char* names[] = {"out", "lse", "router", "dq", "dk", "dv", "dsinks"};
  for (auto [tq, tk] : {std::pair{200, 200}, std::pair{130, 257}, std::pair{257, 100}})
    for (int threads : {1, 8}) {  // 2 (sequence, head) pairs: 8 threads take the split schedule
      const auto want = run_sink_attention<sinkmoe::mask::causal>(tq, tk, threads);
      const auto cut = run_sink_attention<causal_all_cut<false>>(tq, tk, threads);
      const auto loose = run_sink_attention<causal_all_cut<true>>(tq, tk, threads);
      BOOST_TEST_CONTEXT("Tq " << tq << " Tk " << tk << " threads " << threads) {
        for (std::size_t i = 0; i < want.size(); ++i) {
          ck::check_bitwise(names[i], cut[i], want[i]);
          ck::check_bitwise(names[i], loose[i], want[i]);
        }
      }
    }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(identities)

// sink::fixed with b and sink::learned with every b_h = b give the same dq, dk, dv and dgate
// bit for bit.
BOOST_AUTO_TEST_CASE(fixed_sink_equals_uniform_learned_sink) {
  std::mt19937_64 rng(2401);
  int index = 0;
  for (const ck::combo& cb : ck::all_combos()) {
    if (cb.sink != sink_kind::fixed) continue;
    const ref::config fc = ck::make_config(cb, {2, 17, 70, 4, 2, 16, 3, 1}, fixed_sink_pool[index++ % 4]);
    ref::config lc = fc;
    lc.sink = sink_kind::learned;
    ref::inputs in = ck::make_inputs(fc, rng);
    in.sinks.assign(fc.Hq, fc.fixed_sink);
    const ref::cotangents ct = ck::make_cotangents(fc, rng);
    BOOST_TEST_CONTEXT(ck::describe(fc)) {
      const auto f = st::run_library<float>(fc, in, ct, {.threads = 1});
      const auto l = st::run_library<float>(lc, in, ct, {.threads = 1});
      ck::check_bitwise("dq", f.dq, l.dq);
      ck::check_bitwise("dk", f.dk, l.dk);
      ck::check_bitwise("dv", f.dv, l.dv);
      ck::check_bitwise("dgate", f.dgate, l.dgate);
    }
  }
}

// A learned sink is a zero-value key with score b_h (see test_host_forward): vanilla attention
// over [key0 | keys] with q[..., D-1] = 1, k0 = b_h / scale e_{D-1}, v0 = 0 has the same
// gradients: dq (but its last channel, which only key 0 feeds), dk and dv of the real keys, and
// dsinks_h = dk0[h, D-1] / scale summed over the batch. Cotangents on out, lse and G.
BOOST_AUTO_TEST_CASE(learned_sink_is_a_zero_value_key) {
  std::mt19937_64 rng(2402);
  for (auto [sink_mask, vanilla_mask] : {std::pair{mask_kind::none, mask_kind::none},
                                         std::pair{mask_kind::causal, mask_kind::causal},
                                         std::pair{mask_kind::sliding_window, mask_kind::streaming}})
    for (auto g : ck::all_gates)
      for (auto r : {route_kind::sink_mass, route_kind::output_gate, route_kind::product}) {
        if (g == gate_kind::none && r != route_kind::sink_mass) continue;
        const int B = 2, Tq = 17, Tk = 30, H = 3, D = 16, window = 5;
        const ref::config sc =
            ck::make_config({sink_kind::learned, g, sink_mask, r}, {B, Tq, Tk, H, H, D, window, 1});
        const ref::config vc =
            ck::make_config({sink_kind::none, g, vanilla_mask, r}, {B, Tq, Tk + 1, H, H, D, window, 1});
        ck::input_options o;
        o.sink_pool = {-3, 0, 2};
        ref::inputs in = ck::make_inputs(sc, rng, o);
        for (std::size_t i = D - 1; i < in.q.size(); i += D) in.q[i] = 1.0;
        for (std::size_t i = D - 1; i < in.k.size(); i += D) in.k[i] = 0.0;
        ref::inputs vin = in;
        vin.sinks.clear();
        vin.k.clear();
        vin.v.clear();
        const std::size_t row = std::size_t(Tk) * H * D;
        for (int b = 0; b < B; ++b) {
          for (int h = 0; h < H; ++h)
            for (int d = 0; d < D; ++d) {
              vin.k.push_back(d == D - 1 ? in.sinks[h] / sc.scale : 0.0);
              vin.v.push_back(0.0);
            }
          vin.k.insert(vin.k.end(), in.k.begin() + b * row, in.k.begin() + (b + 1) * row);
          vin.v.insert(vin.v.end(), in.v.begin() + b * row, in.v.begin() + (b + 1) * row);
        }
        const ref::cotangents ct = ck::make_cotangents(sc, rng);
        BOOST_TEST_CONTEXT(ck::describe(sc) << " vs " << ck::describe(vc)) {
          const auto w = st::run_library<double>(sc, in, ct, {.threads = 1});
          const auto v = st::run_library<double>(vc, vin, ct, {.threads = 1});
          std::vector<double> dq_w, dq_v, dk_v, dv_v, dsinks_v(H, 0.0);
          for (std::size_t i = 0; i < w.dq.size(); ++i)
            if (i % D != std::size_t(D - 1)) {
              dq_w.push_back(w.dq[i]);
              dq_v.push_back(v.dq[i]);
            }
          const std::size_t vrow = std::size_t(Tk + 1) * H * D;
          for (int b = 0; b < B; ++b) {
            for (int h = 0; h < H; ++h) dsinks_v[h] += v.dk[b * vrow + h * D + D - 1] / sc.scale;
            dk_v.insert(dk_v.end(), v.dk.begin() + b * vrow + H * D, v.dk.begin() + (b + 1) * vrow);
            dv_v.insert(dv_v.end(), v.dv.begin() + b * vrow + H * D, v.dv.begin() + (b + 1) * vrow);
          }
          // The real keys' last channel: the sink model's dk there is scale * sum dS q[D-1] too.
          ck::check_scaled("dq", dq_w, dq_v, 1e-11);
          ck::check_scaled("dk", w.dk, dk_v, 1e-11);
          ck::check_scaled("dv", w.dv, dv_v, 1e-11);
          ck::check_scaled("dsinks", w.dsinks, dsinks_v, 1e-11);
          if (g != gate_kind::none) ck::check_scaled("dgate", w.dgate, v.dgate, 1e-11);
        }
      }
}

BOOST_AUTO_TEST_SUITE_END()
