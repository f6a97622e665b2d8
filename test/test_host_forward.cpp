// Host forward (exec::host) against the independent fp64 oracle (test/support/reference.hpp):
//  - every policy combination (sink x gate x mask x route, 84) on a few shapes, and every shape
//    feature of docs/design.md section 7 (B, Tq != Tk, GQA, D, windows, sinks, gates) on a few
//    combinations (plus odd head dims and a non-default scale); double to 1e-10 relative (out,
//    lse, router, first_key_mass, counted tokens), float by FlashAttention's rule
//    (err <= 2 x naive float err + atol, test/support/naive.hpp);
//  - soft-cap, top-left alignment, empty rows, Tq = 0, Tk = 0, extreme sinks and gates;
//  - identities of docs/method.md section 2 (sink -> -inf is vanilla; sink output = vanilla
//    output x sigmoid(LSE_keys - b), to relative precision for collapsed heads; a learned sink is
//    a zero-value key; fixed == learned) and mask reductions (unbounded windows are causal,
//    streaming without sink tokens is the sliding window);
//  - results do not depend on the thread count.
#define BOOST_TEST_MODULE host_forward
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <type_traits>
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

constexpr double k_rtol64 = 1e-10;  // fp64 results vs the oracle (docs/design.md section 7)
// Float results: FlashAttention's rule, err <= 2 x naive float err + atol, atol = 6e-7 (5 float
// ulp) of the tensor's magnitude (see checks::check_fa_rule).
constexpr double k_fa_atol_rel = 6e-7;
constexpr double fixed_sink_pool[] = {-30, 0, 5, 30};

/// P[t, key 0] = exp(s[t, 0] - lse) from the oracle's lse (0 when key 0 is hidden): what
/// forward_args::first_key_mass holds (Gu et al.'s sink metric).
std::vector<double> first_key_mass(const ref::config& c, const ref::inputs& in,
                                   const std::vector<double>& lse) {
  std::vector<double> r(lse.size(), 0.0);
  const int group = c.Hq / c.Hkv;
  for (int b = 0; b < c.B; ++b)
    for (int h = 0; h < c.Hq; ++h)
      for (int t = 0; t < c.Tq; ++t) {
        if (c.Tk == 0 || !ref::visible(c, t, 0)) continue;
        double dot = 0;
        for (int d = 0; d < c.D; ++d)
          dot += in.q[((std::size_t(b) * c.Tq + t) * c.Hq + h) * c.D + d] *
                 in.k[(std::size_t(b) * c.Tk * c.Hkv + h / group) * c.D + d];
        double s0 = c.scale * dot;
        if (c.softcap > 0) s0 = c.softcap * std::tanh(s0 / c.softcap);
        const std::size_t ri = (std::size_t(b) * c.Hq + h) * c.Tq + t;
        r[ri] = std::exp(s0 - lse[ri]);
      }
  return r;
}

struct forward_check_options {
  bool softcap = false;
  bool check_float = true;
  int threads = 0;  ///< 0: ck::next_threads()
};

/// Forward of one config in double (vs the oracle, 1e-10) and float (FlashAttention's rule).
/// Returns the oracle's result for further checks.
ref::forward_result check_forward(const ref::config& c, const ref::inputs& in,
                                  const forward_check_options& o = {}) {
  const ref::forward_result want = ref::forward(c, in);
  const st::run_options run{.backward = false,
                            .threads = o.threads > 0 ? o.threads : ck::next_threads(),
                            .softcap = o.softcap};
  const st::library_result got = st::run_library<double>(c, in, {}, run);
  ck::check_rel("double out", got.out, want.out, k_rtol64);
  ck::check_rel("double lse", got.lse, want.lse, k_rtol64);
  ck::check_rel("double router", got.router, want.router, k_rtol64);
  BOOST_TEST(got.counted == want.counted, "counted tokens differ from the oracle");
  ck::check_rel("double first_key_mass", got.first_key_mass, first_key_mass(c, in, want.lse), k_rtol64);
  ck::check_finite("double out", got.out);
  ck::check_finite("double router", got.router);
  if (o.check_float) {
    const st::library_result gf = st::run_library<float>(c, in, {}, run);
    const ref::forward_result nf = st::naive::forward<float>(c, in);
    ck::check_fa_rule("float out", gf.out, nf.out, want.out, k_fa_atol_rel);
    ck::check_fa_rule("float lse", gf.lse, nf.lse, want.lse, k_fa_atol_rel);
    // The oracle's G = 1 - A is exact only to ~1e-16 absolute (the library's sigmoid form is
    // better for collapsed heads, G ~ 1e-30): absolute floor 1e-15.
    ck::check_fa_rule("float router", gf.router, nf.router, want.router, k_fa_atol_rel, 1e-15);
    BOOST_TEST(gf.counted == want.counted, "float: counted tokens differ from the oracle");
    ck::check_finite("float out", gf.out);
    ck::check_finite("float router", gf.router);
  }
  return want;
}

/// The sink logit of query head h (-inf for vanilla).
double sink_logit(const ref::config& c, const ref::inputs& in, int h) {
  if (c.sink == sink_kind::learned) return in.sinks[h];
  if (c.sink == sink_kind::fixed) return c.fixed_sink;
  return -std::numeric_limits<double>::infinity();
}

/// Empty rows (no visible key): out = 0, G = 0 and lse = the sink logit (or -inf), exactly.
/// Returns the number of empty rows seen.
int check_empty_rows_exact(const ref::config& c, const ref::inputs& in,
                           const st::library_result& got, bool is_float) {
  int empty = 0;
  for (int t = 0; t < c.Tq; ++t) {
    bool any = false;
    for (int j = 0; j < c.Tk && !any; ++j) any = ref::visible(c, t, j);
    if (any) continue;
    ++empty;
    for (int b = 0; b < c.B; ++b)
      for (int h = 0; h < c.Hq; ++h) {
        const std::size_t ri = (std::size_t(b) * c.Hq + h) * c.Tq + t;
        double want_lse = sink_logit(c, in, h);
        if (is_float) want_lse = double(float(want_lse));
        BOOST_TEST(got.lse[ri] == want_lse, "empty row t=" << t << " h=" << h << ": lse "
                                                           << got.lse[ri] << " != " << want_lse);
        BOOST_TEST(got.router[ri] == 0.0, "empty row t=" << t << " h=" << h << ": router "
                                                         << got.router[ri]);
        const std::size_t oi = ((std::size_t(b) * c.Tq + t) * c.Hq + h) * c.D;
        for (int d = 0; d < c.D; ++d)
          if (got.out[oi + d] != 0.0) {
            BOOST_TEST(got.out[oi + d] == 0.0, "empty row t=" << t << " h=" << h << ": out["
                                                              << d << "] = " << got.out[oi + d]);
            break;
          }
      }
  }
  return empty;
}

/// True when two results differ by more than 1e-6 of their magnitude (or in a non-finite entry):
/// used to show that a variant (alignment, soft-cap) really changes the result.
bool differs(const std::vector<double>& a, const std::vector<double>& b) {
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::isfinite(a[i]) != std::isfinite(b[i])) return true;
  return ck::max_err(a, b) > 1e-6 * ck::max_abs_finite(b);
}

double sigmoid(double x) {
  return x >= 0 ? 1.0 / (1.0 + std::exp(-x)) : std::exp(x) / (1.0 + std::exp(x));
}

double logaddexp(double a, double b) {
  const double hi = std::max(a, b), lo = std::min(a, b);
  if (hi == -std::numeric_limits<double>::infinity()) return hi;
  return hi + std::log1p(std::exp(lo - hi));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(oracle_agreement)

BOOST_AUTO_TEST_CASE(combination_list_is_complete) {
  const auto combos = ck::all_combos();
  BOOST_TEST(combos.size() == 84u);  // 3 sinks x (1 + 2 gates x 3 routes) x 4 masks
}

// Every policy combination on three shapes that between them cross key tiles (130 > 64),
// have Tq != Tk both ways (empty causal rows for Tq > Tk), GQA 1/2/4, B 1/3, D 16/64, windows
// 1/3/64 and streaming sink tokens 1-3.
BOOST_AUTO_TEST_CASE(every_policy_combination) {
  const ck::shape shapes[] = {
      {1, 17, 17, 4, 2, 16, /*window*/ 3, /*sink_tokens*/ 2},
      {3, 64, 130, 2, 2, 16, 64, 1},
      {1, 130, 17, 4, 1, 64, 1, 3},
  };
  std::mt19937_64 rng(1001);
  int index = 0;
  for (const ck::combo& cb : ck::all_combos())
    for (const ck::shape& s : shapes) {
      const ref::config c = ck::make_config(cb, s, fixed_sink_pool[index++ % 4]);
      const ref::inputs in = ck::make_inputs(c, rng);
      BOOST_TEST_CONTEXT(ck::describe(c)) { check_forward(c, in); }
    }
}

// Each shape feature of docs/design.md section 7 on a few policy combinations.
BOOST_AUTO_TEST_CASE(shape_features) {
  const ck::combo combos[] = {
      {sink_kind::learned, gate_kind::elementwise, mask_kind::sliding_window, route_kind::product},
      {sink_kind::none, gate_kind::none, mask_kind::causal, route_kind::sink_mass},
      {sink_kind::fixed, gate_kind::headwise, mask_kind::streaming, route_kind::output_gate},
      {sink_kind::learned, gate_kind::none, mask_kind::none, route_kind::sink_mass},
      {sink_kind::none, gate_kind::headwise, mask_kind::causal, route_kind::product},
  };
  const int lengths[] = {1, 2, 3, 17, 64, 130};
  const int windows[] = {1, 3, 64};
  std::vector<ck::shape> shapes;
  int i = 0;
  for (int tq : lengths)  // every (Tq, Tk) pair, Tq != Tk included
    for (int tk : lengths) {
      shapes.push_back({1 + 2 * (i % 2), tq, tk, 2, 1, 16, windows[i % 3], 1 + i % 2});
      ++i;
    }
  for (int d : {16, 64, 128})  // head dims x GQA ratios 1, 2, 4
    for (int ratio : {1, 2, 4}) shapes.push_back({1, 65, 70, 4, 4 / ratio, d, 3, 1});
  for (int w : windows)  // windows on long rows
    for (auto [tq, tk] : {std::pair{130, 130}, std::pair{17, 130}, std::pair{130, 64}})
      shapes.push_back({1, tq, tk, 2, 2, 16, w, 2});
  for (int d : {1, 5, 80})  // head dims off the 16-column register block
    shapes.push_back({2, 33, 70, 4, 2, d, 3, 1});
  std::mt19937_64 rng(1002);
  int index = 0;
  for (const ck::combo& cb : combos)
    for (const ck::shape& s : shapes) {
      ref::config c = ck::make_config(cb, s, fixed_sink_pool[index++ % 4]);
      if (index % 3 == 0) c.scale = 0.3;  // a scale other than 1/sqrt(D) (params.scale)
      const ref::inputs in = ck::make_inputs(c, rng);
      BOOST_TEST_CONTEXT(ck::describe(c)) { check_forward(c, in); }
    }
}

// Causal alignment top-left (query t sees j <= t) for every masked combination with a deduced
// route, on Tq != Tk both ways.
BOOST_AUTO_TEST_CASE(top_left_alignment) {
  std::mt19937_64 rng(1003);
  int index = 0;
  for (auto sk : ck::all_sinks)
    for (auto g : ck::all_gates)
      for (auto m : {mask_kind::causal, mask_kind::sliding_window, mask_kind::streaming})
        for (auto [tq, tk] : {std::pair{17, 130}, std::pair{130, 17}, std::pair{3, 64},
                              std::pair{64, 3}}) {
          const ck::shape s{1 + 2 * (index % 2), tq, tk, 2, 1, 16, 3, 2, /*top_left*/ true};
          const ref::config c =
              ck::make_config({sk, g, m, ck::deduced_route(g)}, s, fixed_sink_pool[index++ % 4]);
          const ref::inputs in = ck::make_inputs(c, rng);
          BOOST_TEST_CONTEXT(ck::describe(c)) {
            check_forward(c, in);
            // Top-left and bottom-right differ when Tq != Tk: the test must see the alignment.
            ref::config br = c;
            br.top_left = false;
            const ref::forward_result want_br = ref::forward(br, in);
            const st::library_result got =
                st::run_library<double>(c, in, {}, {.backward = false, .threads = 1});
            BOOST_TEST((differs(got.out, want_br.out) || differs(got.lse, want_br.lse)),
                       "top-left result equals the bottom-right one");
          }
        }
}

// score::softcap (s = cap tanh(scale q.k / cap)) for every sink x gate, mask causal, deduced
// route; q is scaled up so that the cap bites.
BOOST_AUTO_TEST_CASE(softcap) {
  std::mt19937_64 rng(1004);
  int index = 0;
  for (auto sk : ck::all_sinks)
    for (auto g : ck::all_gates)
      for (double cap : {1.5, 5.0})
        for (const ck::shape& s : {ck::shape{1, 17, 64, 2, 1, 16}, ck::shape{3, 130, 17, 4, 2, 64}}) {
          ref::config c = ck::make_config({sk, g, mask_kind::causal, ck::deduced_route(g)}, s,
                                          fixed_sink_pool[index++ % 4]);
          c.softcap = cap;
          const ref::inputs in = ck::make_inputs(c, rng, {.q_scale = 4.0});
          BOOST_TEST_CONTEXT(ck::describe(c)) {
            check_forward(c, in, {.softcap = true});
            // The cap must change the result (so the runner really used score::softcap).
            ref::config plain = c;
            plain.softcap = 0;
            const ref::forward_result want_plain = ref::forward(plain, in);
            const st::library_result got =
                st::run_library<double>(c, in, {}, {.backward = false, .threads = 1, .softcap = true});
            BOOST_TEST(differs(got.out, want_plain.out),
                       "soft-capped output equals the uncapped one");
          }
        }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(edge_cases)

// Rows with no visible key: causal with Tq > Tk (bottom-right), a sliding window past the keys
// (top-left, Tq > Tk + window), streaming with Tq > Tk; every sink x gate x route.
BOOST_AUTO_TEST_CASE(empty_rows) {
  struct masked {
    mask_kind mask;
    ck::shape s;
  };
  const masked cases[] = {
      {mask_kind::causal, {3, 17, 5, 4, 2, 16}},
      {mask_kind::causal, {1, 130, 3, 2, 1, 64}},
      {mask_kind::sliding_window, {1, 130, 17, 2, 1, 16, 3, 1, /*top_left*/ true}},
      {mask_kind::sliding_window, {3, 20, 2, 2, 2, 16, 1, 1}},
      {mask_kind::streaming, {1, 17, 5, 2, 1, 16, 2, 1}},
      {mask_kind::streaming, {1, 80, 17, 2, 1, 16, 3, 0, /*top_left*/ true}},
  };
  std::mt19937_64 rng(1005);
  int index = 0;
  for (const masked& mc : cases)
    for (const ck::combo& cb : ck::all_combos()) {
      if (cb.mask != mask_kind::causal) continue;  // use the combo list for sink x gate x route
      const ref::config c =
          ck::make_config({cb.sink, cb.gate, mc.mask, cb.route}, mc.s, fixed_sink_pool[index++ % 4]);
      const ref::inputs in = ck::make_inputs(c, rng);
      BOOST_TEST_CONTEXT(ck::describe(c)) {
        check_forward(c, in);
        const st::library_result got = st::run_library<double>(c, in, {}, {.backward = false, .threads = 1});
        const int empty = check_empty_rows_exact(c, in, got, false);
        BOOST_TEST(empty > 0, "the case has no empty row");
        const st::library_result gf = st::run_library<float>(c, in, {}, {.backward = false, .threads = 1});
        check_empty_rows_exact(c, in, gf, true);
      }
    }
}

// Tk = 0 (no keys at all; k and v have null data, as an empty std::vector gives): every row is
// empty.
template <class Attn>
void run_zero_keys(double sink) {
  constexpr int B = 2, Tq = 3, H = 2, D = 16;
  std::vector<double> q(B * Tq * H * D, 0.5), out(q.size(), 7.0), z(B * Tq * H * D, 1.0);
  std::vector<double> lse(B * H * Tq, 7.0), router(lse.size(), 7.0), sinks(H, sink);
  sinkmoe::forward_args<double> fa;
  fa.q = {q.data(), {B, Tq, H, D}};
  fa.k = {nullptr, {B, 0, H, D}};
  fa.v = {nullptr, {B, 0, H, D}};
  if constexpr (Attn::sink_type::needs_sinks_tensor) fa.sinks = {sinks.data(), {H}};
  if constexpr (Attn::gate_type::enabled)
    fa.gate_logits = {z.data(), {B, Tq, H, Attn::gate_type::logit_dim(D)}};
  fa.out = {out.data(), {B, Tq, H, D}};
  fa.lse = {lse.data(), {B, H, Tq}};
  fa.router = {router.data(), {B, H, Tq}};
  if constexpr (std::is_same_v<typename Attn::sink_type, sinkmoe::sink::fixed>) fa.params.fixed_sink = sink;
  if constexpr (std::is_same_v<typename Attn::mask_type, sinkmoe::mask::sliding_window>) fa.params.window = 2;
  Attn::forward(sinkmoe::exec::host{2}, fa);
  const double want_lse = Attn::sink_type::has_logit ? sink : -std::numeric_limits<double>::infinity();
  for (double x : out) BOOST_TEST(x == 0.0);
  for (double x : lse) BOOST_TEST(x == want_lse);
  for (double x : router) BOOST_TEST(x == 0.0);
  std::vector<std::uint8_t> counted(B * Tq, 9);
  Attn::counted_tokens(fa, sinkmoe::tensor_view<std::uint8_t, 2>{counted.data(), {B, Tq}});
  for (auto x : counted) BOOST_TEST(x == 0);
}

// Tq = 0 (no queries): forward writes nothing and does not fail; backward (dk, dv, dsinks
// overwritten with zeros).
template <class Attn>
void run_zero_queries() {
  constexpr int B = 2, Tk = 5, H = 2, D = 16;
  std::vector<double> q_dummy(1, 3.0), k(B * Tk * H * D, 0.5), v(k.size(), 0.25), sinks(H, 1.0);
  std::vector<double> dk(k.size(), 9.0), dv(k.size(), 9.0), dsinks(H, 9.0);
  sinkmoe::forward_args<double> fa;
  fa.q = {nullptr, {B, 0, H, D}};  // zero extent: null data is allowed
  fa.k = {k.data(), {B, Tk, H, D}};
  fa.v = {v.data(), {B, Tk, H, D}};
  if constexpr (Attn::sink_type::needs_sinks_tensor) fa.sinks = {sinks.data(), {H}};
  if constexpr (Attn::gate_type::enabled)
    fa.gate_logits = {nullptr, {B, 0, H, Attn::gate_type::logit_dim(D)}};
  fa.out = {q_dummy.data(), {B, 0, H, D}};  // non-null works as well
  fa.lse = {q_dummy.data(), {B, H, 0}};
  fa.router = {q_dummy.data(), {B, H, 0}};
  Attn::forward(sinkmoe::exec::host{2}, fa);
  BOOST_TEST(q_dummy[0] == 3.0);
  sinkmoe::backward_args<double> ba;
  ba.dout = {nullptr, {B, 0, H, D}};
  ba.dq = {q_dummy.data(), {B, 0, H, D}};
  ba.dk = {dk.data(), {B, Tk, H, D}};
  ba.dv = {dv.data(), {B, Tk, H, D}};
  if constexpr (Attn::sink_type::trainable) ba.dsinks = {dsinks.data(), {H}};
  if constexpr (Attn::gate_type::enabled)
    ba.dgate_logits = {q_dummy.data(), {B, 0, H, Attn::gate_type::logit_dim(D)}};
  Attn::backward(sinkmoe::exec::host{2}, fa, ba);
  BOOST_TEST(q_dummy[0] == 3.0);
  for (double x : dk) BOOST_TEST(x == 0.0);
  for (double x : dv) BOOST_TEST(x == 0.0);
  if constexpr (Attn::sink_type::trainable)
    for (double x : dsinks) BOOST_TEST(x == 0.0);
}

BOOST_AUTO_TEST_CASE(zero_queries) {
  using namespace sinkmoe;
  run_zero_queries<attention<sink::none, gate::none, mask::causal>>();
  run_zero_queries<attention<sink::learned, gate::elementwise, mask::none, route::product>>();
}

BOOST_AUTO_TEST_CASE(zero_keys) {
  using namespace sinkmoe;
  run_zero_keys<attention<sink::none, gate::none, mask::none>>(0.0);
  run_zero_keys<attention<sink::learned, gate::headwise, mask::causal>>(2.5);
  run_zero_keys<attention<sink::fixed, gate::elementwise, mask::sliding_window, route::product>>(-3.0);
}

// Huge and tiny sinks (+-30, +-80) and gates (+-20, +-60, +-100), with peaky scores: the oracle
// agrees, nothing is NaN or inf in out/router, lse is finite or -inf exactly as the oracle says.
BOOST_AUTO_TEST_CASE(extreme_sinks_and_gates) {
  ck::input_options opts;
  opts.sink_pool = {-80, -30, 30, 80};
  opts.sink_special_prob = 1.0;
  opts.gate_pool = {-100, -60, -20, 20, 60, 100};
  opts.gate_special_prob = 0.8;
  const double fixed_pool[] = {-80, -30, 30, 80};
  std::mt19937_64 rng(1006);
  int index = 0;
  for (double q_scale : {1.0, 8.0})
    for (const ck::combo& cb : ck::all_combos()) {
      const ck::shape s{2, 17, 40, 4, 2, 16, 3, 1};
      const ref::config c = ck::make_config(cb, s, fixed_pool[index++ % 4]);
      opts.q_scale = q_scale;
      const ref::inputs in = ck::make_inputs(c, rng, opts);
      BOOST_TEST_CONTEXT(ck::describe(c) << " q_scale=" << q_scale) { check_forward(c, in); }
    }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(identities)

// A learned sink at -80 contributes exp(-80 - lse) ~ 1e-36: the result is vanilla attention's
// (out, lse; and G when the route reads only the gate). Rows are never empty here (Tq <= Tk).
BOOST_AUTO_TEST_CASE(very_negative_sink_is_vanilla) {
  std::mt19937_64 rng(1101);
  for (auto g : ck::all_gates)
    for (auto m : ck::all_masks) {
      const ck::shape s{2, 17, 40, 4, 2, 16, 3, 1};
      const ref::config vc = ck::make_config({sink_kind::none, g, m, ck::deduced_route(g)}, s);
      ref::config sc = vc;
      sc.sink = sink_kind::learned;
      ref::inputs in = ck::make_inputs(vc, rng);
      in.sinks.assign(s.Hq, -80.0);
      BOOST_TEST_CONTEXT(ck::describe(sc)) {
        const auto v = st::run_library<double>(vc, in, {}, {.backward = false, .threads = 1});
        const auto w = st::run_library<double>(sc, in, {}, {.backward = false, .threads = 1});
        ck::check_rel("out", w.out, v.out, 1e-12);
        ck::check_rel("lse", w.lse, v.lse, 1e-12);
        if (g != gate_kind::none) ck::check_rel("router (output gate)", w.router, v.router, 1e-12);
        else for (double x : w.router) BOOST_TEST(std::abs(x - 1.0) <= 1e-30);  // G = 1 - ~0
      }
    }
}

// docs/method.md section 2: sink output = vanilla output x sigmoid(LSE_keys - b), G = the same
// sigmoid, lse = logaddexp(LSE_keys, b), where LSE_keys is the lse of the run without a sink. With
// a gate, the gated outputs relate the same way, and route::product's G = gate x sigmoid. Every
// mask; Tq > Tk so that causal rows are empty.
BOOST_AUTO_TEST_CASE(sink_output_is_vanilla_times_sigmoid) {
  std::mt19937_64 rng(1102);
  int index = 0;
  for (auto sk : {sink_kind::learned, sink_kind::fixed})
    for (auto g : ck::all_gates)
      for (auto m : ck::all_masks) {
        const ck::shape s{3, 40, 33, 4, 2, 16, 3, 2};
        const ref::route_kind vr = ck::deduced_route(g);
        const ref::route_kind sr = g == gate_kind::none ? route_kind::sink_mass : route_kind::product;
        const ref::config vc = ck::make_config({sink_kind::none, g, m, vr}, s);
        const double pool[] = {-30, 0, 5, 30, 80};
        const ref::config sc = ck::make_config({sk, g, m, sr}, s, pool[index++ % 5]);
        ref::inputs in = ck::make_inputs(sc, rng, {.sink_pool = {-30, 0, 5, 30, 80}});
        BOOST_TEST_CONTEXT(ck::describe(sc)) {
          const auto v = st::run_library<double>(vc, in, {}, {.backward = false, .threads = 1});
          const auto w = st::run_library<double>(sc, in, {}, {.backward = false, .threads = 1});
          std::vector<double> out(v.out.size()), lse(v.lse.size()), router(v.lse.size());
          for (int b = 0; b < s.B; ++b)
            for (int h = 0; h < s.Hq; ++h)
              for (int t = 0; t < s.Tq; ++t) {
                const std::size_t ri = (std::size_t(b) * s.Hq + h) * s.Tq + t;
                const double beta = sink_logit(sc, in, h);
                const double keep = v.lse[ri] == -std::numeric_limits<double>::infinity()
                                        ? 0.0 : sigmoid(v.lse[ri] - beta);
                lse[ri] = logaddexp(v.lse[ri], beta);
                // vanilla G with a gate is the gate value; product multiplies it by 1 - A.
                router[ri] = g == gate_kind::none ? keep : v.router[ri] * keep;
                for (int d = 0; d < s.D; ++d) {
                  const std::size_t oi = ((std::size_t(b) * s.Tq + t) * s.Hq + h) * s.D + d;
                  out[oi] = v.out[oi] * keep;
                }
              }
          ck::check_rel("out", w.out, out, 1e-12);
          ck::check_rel("lse", w.lse, lse, 1e-12);
          ck::check_rel("router", w.router, router, 1e-12);
          // Relative precision for collapsed heads (b >> LSE_keys, G ~ 1e-30): G and the output
          // keep their relative accuracy, since the same key sums are only rescaled.
          const auto relative = [](double want) { return 1e-12 * std::abs(want) + 1e-300; };
          ck::check_entrywise("out (relative)", w.out, out, relative);
          ck::check_entrywise("router (relative)", w.router, router, relative);
        }
      }
}

// sink::fixed with b is sink::learned with every b_h = b, bit for bit (same code path).
BOOST_AUTO_TEST_CASE(fixed_sink_equals_uniform_learned_sink) {
  std::mt19937_64 rng(1103);
  int index = 0;
  for (const ck::combo& cb : ck::all_combos()) {
    if (cb.sink != sink_kind::fixed) continue;
    const ck::shape s{2, 17, 70, 4, 2, 16, 3, 1};
    const ref::config fc = ck::make_config(cb, s, fixed_sink_pool[index++ % 4]);
    ref::config lc = fc;
    lc.sink = sink_kind::learned;
    ref::inputs in = ck::make_inputs(fc, rng);
    in.sinks.assign(s.Hq, fc.fixed_sink);
    BOOST_TEST_CONTEXT(ck::describe(fc)) {
      for (bool use_float : {false, true}) {
        const auto f = use_float ? st::run_library<float>(fc, in, {}, {.backward = false, .threads = 1})
                                 : st::run_library<double>(fc, in, {}, {.backward = false, .threads = 1});
        const auto l = use_float ? st::run_library<float>(lc, in, {}, {.backward = false, .threads = 1})
                                 : st::run_library<double>(lc, in, {}, {.backward = false, .threads = 1});
        ck::check_bitwise("out", f.out, l.out);
        ck::check_bitwise("lse", f.lse, l.lse);
        ck::check_bitwise("router", f.router, l.router);
      }
    }
  }
}

// A learned sink is a zero-value key whose score is b: vanilla attention over Tk + 1 keys, key 0
// built so that its score is b_h for every query (q[..., D-1] = 1, k0 = b_h / scale e_{D-1}, the
// real keys have k[..., D-1] = 0, v0 = 0), gives the sink attention's out and lse, and vanilla G =
// 1 - P[t, 0] is the sink's G = 1 - A. mask::none and causal (bottom-right) map directly; a sliding
// window with a sink maps to StreamingLLM with one sink token and the same window.
BOOST_AUTO_TEST_CASE(learned_sink_is_a_zero_value_key) {
  std::mt19937_64 rng(1104);
  struct mapping {
    mask_kind sink_mask, vanilla_mask;
  };
  for (const mapping mp : {mapping{mask_kind::none, mask_kind::none},
                           mapping{mask_kind::causal, mask_kind::causal},
                           mapping{mask_kind::sliding_window, mask_kind::streaming}})
    for (auto g : ck::all_gates)
      for (auto r : {route_kind::sink_mass, route_kind::output_gate, route_kind::product}) {
        if (g == gate_kind::none && r != route_kind::sink_mass) continue;
        const int B = 2, Tq = 17, Tk = 30, H = 3, D = 16, window = 5;
        ref::config sc = ck::make_config({sink_kind::learned, g, mp.sink_mask, r},
                                         {B, Tq, Tk, H, H, D, window, 1});
        if (mp.sink_mask == mask_kind::sliding_window) sc.sink_tokens = 0;
        ref::config vc = ck::make_config({sink_kind::none, g, mp.vanilla_mask, r},
                                         {B, Tq, Tk + 1, H, H, D, window, 1});
        ref::inputs in = ck::make_inputs(sc, rng);
        for (std::size_t i = D - 1; i < in.q.size(); i += D) in.q[i] = 1.0;
        for (std::size_t i = D - 1; i < in.k.size(); i += D) in.k[i] = 0.0;
        ref::inputs vin = in;
        vin.sinks.clear();
        vin.k.clear();
        vin.v.clear();
        for (int b = 0; b < B; ++b) {
          for (int h = 0; h < H; ++h)  // key 0: score b_h, value 0
            for (int d = 0; d < D; ++d) {
              vin.k.push_back(d == D - 1 ? in.sinks[h] / sc.scale : 0.0);
              vin.v.push_back(0.0);
            }
          const std::size_t row = std::size_t(Tk) * H * D;
          vin.k.insert(vin.k.end(), in.k.begin() + b * row, in.k.begin() + (b + 1) * row);
          vin.v.insert(vin.v.end(), in.v.begin() + b * row, in.v.begin() + (b + 1) * row);
        }
        BOOST_TEST_CONTEXT(ck::describe(sc) << " vs " << ck::describe(vc)) {
          const auto w = st::run_library<double>(sc, in, {}, {.backward = false, .threads = 1});
          const auto v = st::run_library<double>(vc, vin, {}, {.backward = false, .threads = 1});
          ck::check_rel("out", w.out, v.out, 1e-12);
          ck::check_rel("lse", w.lse, v.lse, 1e-12);
          ck::check_rel("router", w.router, v.router, 1e-12);
        }
      }
}

// Mask reductions: a sliding window or StreamingLLM window of INT_MAX ("unbounded") is causal;
// streaming without sink tokens is the sliding window; streaming whose sink tokens cover every key
// is causal. The library's reduced mask against the oracle's plain one (out, lse, router, counted
// and the gradients), both alignments, Tq != Tk both ways.
BOOST_AUTO_TEST_CASE(mask_reductions) {
  struct reduction {
    mask_kind lib_mask;
    int window, sink_tokens;  // given to the library (-1: Tk + 5)
    mask_kind oracle_mask;
  };
  constexpr int unbounded = std::numeric_limits<int>::max();
  const reduction reductions[] = {
      {mask_kind::sliding_window, unbounded, 0, mask_kind::causal},
      {mask_kind::streaming, unbounded, 2, mask_kind::causal},
      {mask_kind::streaming, 3, 0, mask_kind::sliding_window},
      {mask_kind::streaming, 3, -1, mask_kind::causal},
  };
  std::mt19937_64 rng(1105);
  int index = 0;
  for (const reduction& r : reductions)
    for (auto sk : ck::all_sinks)
      for (auto g : ck::all_gates)
        for (auto [tq, tk] : {std::pair{17, 70}, std::pair{70, 17}})
          for (bool top_left : {false, true}) {
            ref::config oc = ck::make_config({sk, g, r.oracle_mask, ck::deduced_route(g)},
                                             {1 + 2 * (index % 2), tq, tk, 4, 2, 16, 3, 0, top_left},
                                             fixed_sink_pool[index % 4]);
            ++index;
            ref::config lc = oc;
            lc.mask = r.lib_mask;
            lc.window = r.window;
            lc.sink_tokens = r.sink_tokens < 0 ? tk + 5 : r.sink_tokens;
            const ref::inputs in = ck::make_inputs(oc, rng);
            const ref::cotangents ct = ck::make_cotangents(oc, rng);
            BOOST_TEST_CONTEXT(ck::describe(lc) << " vs oracle " << ck::describe(oc)) {
              const ref::forward_result want = ref::forward(oc, in);
              const ref::gradients gw = ref::backward(oc, in, ct);
              const auto got = st::run_library<double>(lc, in, ct, {.threads = 1});
              ck::check_rel("out", got.out, want.out, k_rtol64);
              ck::check_rel("lse", got.lse, want.lse, k_rtol64);
              ck::check_rel("router", got.router, want.router, k_rtol64);
              BOOST_TEST(got.counted == want.counted);
              ck::check_scaled("dq", got.dq, gw.dq, 1e-9);
              ck::check_scaled("dk", got.dk, gw.dk, 1e-9);
              ck::check_scaled("dv", got.dv, gw.dv, 1e-9);
              ck::check_scaled("dsinks", got.dsinks, gw.dsinks, 1e-9);
              ck::check_scaled("dgate", got.dgate, gw.dgate, 1e-9);
            }
          }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(determinism)

// exec::host results are bitwise identical for 1, 2 and 3 threads (tasks never share sums).
BOOST_AUTO_TEST_CASE(thread_count_does_not_change_results) {
  const ck::combo combos[] = {
      {sink_kind::learned, gate_kind::elementwise, mask_kind::sliding_window, route_kind::product},
      {sink_kind::none, gate_kind::none, mask_kind::causal, route_kind::sink_mass},
      {sink_kind::fixed, gate_kind::headwise, mask_kind::streaming, route_kind::output_gate},
      {sink_kind::learned, gate_kind::none, mask_kind::none, route_kind::sink_mass},
  };
  std::mt19937_64 rng(1201);
  for (const ck::combo& cb : combos) {
    const ref::config c = ck::make_config(cb, {3, 130, 130, 4, 2, 64, 64, 2}, 5.0);
    const ref::inputs in = ck::make_inputs(c, rng);
    BOOST_TEST_CONTEXT(ck::describe(c)) {
      const auto one = st::run_library<float>(c, in, {}, {.backward = false, .threads = 1});
      for (int threads : {2, 3}) {
        const auto many = st::run_library<float>(c, in, {}, {.backward = false, .threads = threads});
        ck::check_bitwise("float out", many.out, one.out);
        ck::check_bitwise("float lse", many.lse, one.lse);
        ck::check_bitwise("float router", many.router, one.router);
      }
      const auto d1 = st::run_library<double>(c, in, {}, {.backward = false, .threads = 1});
      const auto d2 = st::run_library<double>(c, in, {}, {.backward = false, .threads = 2});
      ck::check_bitwise("double out", d2.out, d1.out);
      ck::check_bitwise("double lse", d2.lse, d1.lse);
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(workspace)

namespace hd = sinkmoe::host::detail;

// Scratch frames nest, hand out 64-byte aligned disjoint blocks, give them back at scope exit,
// and the outermost frame grows the thread's block to the largest demand, so that the same
// allocations in the next frame come from the block (same addresses, nothing allocated).
BOOST_AUTO_TEST_CASE(frames_nest_reuse_and_grow) {
  sinkmoe::host::release_workspace();
  std::vector<void*> previous;
  for (int round = 0; round < 3; ++round) {  // 0: overflow blocks; then the grown block
    hd::scratch_frame outer;
    float* a = outer.take<float>(1000);
    double* b = outer.take<double>(3);
    std::vector<void*> seen{a, b};
    {
      hd::scratch_frame inner;
      seen.push_back(inner.take<float>(5000));
    }
    {
      hd::scratch_frame inner;  // the inner frame's space is free again: same address
      seen.push_back(inner.take<float>(5000));
    }
    for (void* p : seen) BOOST_TEST(reinterpret_cast<std::uintptr_t>(p) % 64 == 0u);
    if (round >= 1) {  // one block: disjoint, in order; the inner frames' space reused
      BOOST_TEST(static_cast<void*>(b) >= static_cast<void*>(a + 1000));
      BOOST_TEST(seen[2] >= static_cast<void*>(b + 3));
      BOOST_TEST(seen[2] == seen[3]);
    }
    if (round == 2) BOOST_TEST(seen == previous);  // the grown block, the same places each time
    previous = seen;
  }
  BOOST_TEST(sinkmoe::host::workspace_bytes() >= (1000 + 5000) * sizeof(float));
}

// A forward call leaves its scratch cached, release_workspace frees it, and the next call
// (which allocates again) gives bitwise the same results.
BOOST_AUTO_TEST_CASE(release_frees_the_cache_and_results_do_not_change) {
  std::mt19937_64 rng(1401);
  const ref::config c = ck::make_config(
      {sink_kind::learned, gate_kind::none, mask_kind::causal, route_kind::sink_mass},
      {2, 150, 150, 4, 2, 64}, 0.0);
  const ref::inputs in = ck::make_inputs(c, rng);
  const auto before = st::run_library<float>(c, in, {}, {.backward = false, .threads = 2});
  BOOST_TEST(sinkmoe::host::workspace_bytes() > 0u);
  BOOST_TEST(sinkmoe::host::release_workspace() > 0u);
  BOOST_TEST(sinkmoe::host::workspace_bytes() == 0u);
  const auto after = st::run_library<float>(c, in, {}, {.backward = false, .threads = 2});
  ck::check_bitwise("out", after.out, before.out);
  ck::check_bitwise("lse", after.lse, before.lse);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// The comparisons used above can fail: a 1e-9 relative error in one output entry, or a float
// result twice as wrong as the naive one, is caught.
BOOST_AUTO_TEST_CASE(comparisons_detect_small_errors) {
  std::mt19937_64 rng(1301);
  const ref::config c = ck::make_config(
      {sink_kind::learned, gate_kind::headwise, mask_kind::causal, route_kind::product},
      {1, 17, 17, 2, 1, 16}, 0.0);
  const ref::inputs in = ck::make_inputs(c, rng);
  const ref::forward_result want = ref::forward(c, in);
  auto got = st::run_library<double>(c, in, {}, {.backward = false, .threads = 1});
  BOOST_TEST(ck::rel_mismatches(got.out, want.out, k_rtol64) == 0u);
  got.out[5] += 1e-9 * std::max(1.0, std::abs(got.out[5]));
  BOOST_TEST(ck::rel_mismatches(got.out, want.out, k_rtol64) == 1u);
  got.lse[3] = -std::numeric_limits<double>::infinity();
  BOOST_TEST(ck::rel_mismatches(got.lse, want.lse, k_rtol64) == 1u);

  const auto gf = st::run_library<float>(c, in, {}, {.backward = false, .threads = 1});
  const auto nf = st::naive::forward<float>(c, in);
  BOOST_TEST(ck::fa_rule_holds(gf.out, nf.out, want.out, k_fa_atol_rel));
  auto worse = gf.out;
  const double err_naive = ck::max_err(nf.out, want.out);
  worse[7] = want.out[7] + 2 * err_naive + 2 * ck::fa_atol(want.out, k_fa_atol_rel);
  BOOST_TEST(!ck::fa_rule_holds(worse, nf.out, want.out, k_fa_atol_rel));
}
