// Checks of the fp64 test oracle (test/support/reference.hpp) itself:
//  a. against the nine independent reference vectors of test/data/reference_vectors.json;
//  b. its hand-written backward against central finite differences of its own forward + balance;
//  c. edge cases (empty rows), hand-computed balance values and the sink/vanilla identity.
#define BOOST_TEST_MODULE reference_oracle
#define BOOST_TEST_DYN_LINK
#include <boost/test/unit_test.hpp>

#include "support/reference.hpp"
#include "support/reference_vectors.hpp"

#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#ifndef SINKMOE_TEST_DATA_DIR
#error "SINKMOE_TEST_DATA_DIR must name the test data directory"
#endif

namespace ref = sinkmoe::testing::ref;
using sinkmoe::testing::ref_case;

namespace {

const std::vector<ref_case>& file_cases() {
  static const std::vector<ref_case> cases = sinkmoe::testing::load_reference_cases(
      std::string(SINKMOE_TEST_DATA_DIR) + "/reference_vectors.json");
  return cases;
}

bool close(double got, double want, double rtol) {
  if (std::isnan(got) || std::isnan(want)) return false;
  if (std::isinf(want) || std::isinf(got)) return got == want;
  return std::abs(got - want) <= rtol * std::max(1.0, std::abs(want));
}

// Number of entries that are not close; the first few are described in `first`.
template <class A, class B>
std::size_t mismatches(const std::vector<A>& got, const std::vector<B>& want, double rtol,
                       std::string* first = nullptr) {
  if (got.size() != want.size()) return std::max<std::size_t>(1, std::max(got.size(), want.size()));
  std::size_t bad = 0;
  std::ostringstream os;
  for (std::size_t i = 0; i < got.size(); ++i)
    if (!close(double(got[i]), double(want[i]), rtol)) {
      if (bad < 3) os << " [" << i << "] got " << got[i] << " want " << want[i] << ";";
      ++bad;
    }
  if (first) *first = os.str();
  return bad;
}

template <class A, class B>
void check_close(const std::string& what, const std::vector<A>& got, const std::vector<B>& want,
                 double rtol) {
  BOOST_TEST(got.size() == want.size(), what << ": size " << got.size() << " vs " << want.size());
  std::string first;
  const std::size_t bad = mismatches(got, want, rtol, &first);
  BOOST_TEST(bad == 0u, what << ": " << bad << " of " << want.size() << " differ:" << first);
}

bool all_finite(const std::vector<double>& v) {
  return std::all_of(v.begin(), v.end(), [](double x) { return std::isfinite(x); });
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

constexpr double file_rtol = 1e-9;

}  // namespace

// ---------------------------------------------------------------------------------------------
// a. The reference vectors file.

BOOST_AUTO_TEST_SUITE(reference_vectors)

BOOST_AUTO_TEST_CASE(file_covers_every_kind) {
  const auto& cases = file_cases();
  BOOST_TEST(cases.size() == 9u);
  std::set<int> sinks, gates, routes, masks;
  bool gqa = false, mqa = false, rect = false, shared = false;
  for (const ref_case& c : cases) {
    sinks.insert(int(c.cfg.sink));
    gates.insert(int(c.cfg.gate));
    routes.insert(int(c.cfg.route));
    masks.insert(int(c.cfg.mask));
    gqa |= c.cfg.Hkv > 1 && c.cfg.Hkv < c.cfg.Hq;
    mqa |= c.cfg.Hkv == 1 && c.cfg.Hq > 1;
    rect |= c.cfg.Tq != c.cfg.Tk;
    shared |= c.bal.shared_heads > 0;
    BOOST_TEST(c.gate_dim == (c.cfg.gate == ref::gate_kind::elementwise ? c.cfg.D
                              : c.cfg.gate == ref::gate_kind::headwise ? 1 : 0), c.name);
    BOOST_TEST(c.grad_sinks.empty() == (c.cfg.sink != ref::sink_kind::learned), c.name);
    BOOST_TEST(c.grad_gate_logits.empty() == (c.cfg.gate == ref::gate_kind::none), c.name);
  }
  BOOST_TEST(sinks.size() == 3u);
  BOOST_TEST(gates.size() == 3u);
  BOOST_TEST(routes.size() == 3u);
  BOOST_TEST(masks.size() == 4u);
  BOOST_TEST(gqa);
  BOOST_TEST(mqa);
  BOOST_TEST(rect);
  BOOST_TEST(shared);
}

BOOST_AUTO_TEST_CASE(forward_matches_file) {
  for (const ref_case& c : file_cases()) {
    BOOST_TEST_CONTEXT("case " << c.name) {
      const ref::forward_result f = ref::forward(c.cfg, c.in);
      check_close("out", f.out, c.out, file_rtol);
      check_close("lse", f.lse, c.lse, file_rtol);
      check_close("router", f.router, c.router, file_rtol);
      check_close("counted", f.counted, c.counted, 0.0);
    }
  }
}

BOOST_AUTO_TEST_CASE(balance_matches_file) {
  for (const ref_case& c : file_cases()) {
    BOOST_TEST_CONTEXT("case " << c.name) {
      const ref::forward_result f = ref::forward(c.cfg, c.in);
      const ref::balance_result b = ref::balance(c.cfg, f.router, f.counted, c.bal);
      check_close("importance", b.importance, c.importance, file_rtol);
      BOOST_TEST(close(b.loss, c.balance_loss, file_rtol), b.loss << " vs " << c.balance_loss);
      BOOST_TEST(b.loss > 0);
    }
  }
}

BOOST_AUTO_TEST_CASE(gradients_match_file) {
  for (const ref_case& c : file_cases()) {
    BOOST_TEST_CONTEXT("case " << c.name) {
      // drouter = the file's cotangent_router + the balance loss's gradient.
      const ref::forward_result f = ref::forward(c.cfg, c.in);
      const ref::balance_result b = ref::balance(c.cfg, f.router, f.counted, c.bal);
      ref::cotangents ct = c.cot;
      for (std::size_t i = 0; i < ct.drouter.size(); ++i) ct.drouter[i] += b.drouter[i];
      const ref::gradients g = ref::backward(c.cfg, c.in, ct);
      check_close("grad_q", g.dq, c.grad_q, file_rtol);
      check_close("grad_k", g.dk, c.grad_k, file_rtol);
      check_close("grad_v", g.dv, c.grad_v, file_rtol);
      check_close("grad_sinks", g.dsinks, c.grad_sinks, file_rtol);
      check_close("grad_gate_logits", g.dgate, c.grad_gate_logits, file_rtol);
      // total_gradients is the same composition.
      const ref::gradients t = ref::total_gradients(c.cfg, c.in, c.cot, c.bal);
      check_close("total_gradients dq", t.dq, c.grad_q, file_rtol);
    }
  }
}

// The comparison above is sensitive: a tiny perturbation of an input is detected.
BOOST_AUTO_TEST_CASE(comparison_detects_small_perturbations) {
  for (const ref_case& c : file_cases()) {
    BOOST_TEST_CONTEXT("case " << c.name) {
      ref::inputs in = c.in;
      in.q[0] *= 1 + 1e-6;
      in.v[0] += 1e-6;
      const ref::forward_result f = ref::forward(c.cfg, in);
      BOOST_TEST(mismatches(f.out, c.out, file_rtol) > 0u);
      const ref::gradients g = ref::total_gradients(c.cfg, in, c.cot, c.bal);
      BOOST_TEST(mismatches(g.dq, c.grad_q, file_rtol) > 0u);
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// b. Finite differences of the oracle's own loss.

namespace {

struct fd_case {
  const char* name;
  ref::config cfg;
  ref::balance_config bal;
};

ref::config make_config(int B, int Tq, int Tk, int Hq, int Hkv, int D, ref::sink_kind s,
                        ref::gate_kind g, ref::route_kind r, ref::mask_kind m, int window = 0,
                        int sink_tokens = 0, double softcap = 0, bool top_left = false,
                        double fixed_sink = 0) {
  ref::config c{B, Tq, Tk, Hq, Hkv, D, 1.0 / std::sqrt(double(D))};
  c.softcap = softcap;
  c.sink = s;
  c.gate = g;
  c.route = r;
  c.mask = m;
  c.window = window;
  c.sink_tokens = sink_tokens;
  c.top_left = top_left;
  c.fixed_sink = fixed_sink;
  return c;
}

std::vector<double> randn(std::size_t n, std::mt19937_64& rng, double sd = 1.0) {
  std::normal_distribution<double> d(0.0, sd);
  std::vector<double> v(n);
  for (double& x : v) x = d(rng);
  return v;
}

ref::inputs make_inputs(const ref::config& c, std::mt19937_64& rng) {
  ref::inputs in;
  const std::size_t nq = std::size_t(c.B) * c.Tq * c.Hq, nk = std::size_t(c.B) * c.Tk * c.Hkv;
  in.q = randn(nq * c.D, rng);
  in.k = randn(nk * c.D, rng);
  in.v = randn(nk * c.D, rng);
  if (c.sink == ref::sink_kind::learned) in.sinks = randn(c.Hq, rng);
  if (c.gate != ref::gate_kind::none)
    in.gate_logits = randn(nq * (c.gate == ref::gate_kind::elementwise ? c.D : 1), rng);
  return in;
}

ref::cotangents make_cotangents(const ref::config& c, std::mt19937_64& rng) {
  const std::size_t rows = std::size_t(c.B) * c.Hq * c.Tq;
  return {randn(rows * c.D, rng), randn(rows, rng), randn(rows, rng)};
}

using S = ref::sink_kind;
using G = ref::gate_kind;
using R = ref::route_kind;
using M = ref::mask_kind;

std::vector<fd_case> fd_cases() {
  return {
      {"vanilla_causal_gqa", make_config(2, 5, 7, 4, 2, 4, S::none, G::none, R::sink_mass, M::causal),
       {0.1, 1, false}},
      {"learned_sliding_softcap_mqa_empty_rows",
       make_config(2, 6, 4, 3, 1, 4, S::learned, G::none, R::sink_mass, M::sliding_window, 2, 0, 1.5),
       {0.2, 0, false}},
      {"fixed_full_headwise_product",
       make_config(1, 4, 6, 2, 1, 4, S::fixed, G::headwise, R::product, M::none, 0, 0, 0, false, 0.5),
       {0.1, 0, false}},
      {"learned_streaming_elementwise_softcap_sample_std",
       make_config(1, 7, 7, 4, 2, 4, S::learned, G::elementwise, R::output_gate, M::streaming, 2, 1, 2.0),
       {0.3, 2, true}},
      {"vanilla_elementwise_product_top_left_softcap",
       make_config(2, 5, 3, 2, 2, 4, S::none, G::elementwise, R::product, M::causal, 0, 0, 1.0, true),
       {0.1, 0, false}},
      {"vanilla_headwise_sliding_sink_mass",
       make_config(1, 6, 6, 3, 3, 4, S::none, G::headwise, R::sink_mass, M::sliding_window, 3),
       {0.1, 1, false}},
      {"learned_headwise_output_gate_causal_empty_rows",
       make_config(1, 7, 4, 4, 2, 4, S::learned, G::headwise, R::output_gate, M::causal),
       {0.1, 1, false}},
      {"vanilla_streaming_headwise_product_short_q",
       make_config(2, 3, 8, 2, 1, 4, S::none, G::headwise, R::product, M::streaming, 2, 2),
       {0.1, 0, true}},
      {"fixed_causal_elementwise_sink_mass_softcap",
       make_config(1, 5, 5, 2, 1, 4, S::fixed, G::elementwise, R::sink_mass, M::causal, 0, 0, 3.0, false, -0.7),
       {0.1, 0, false}},
  };
}

// Central differences of total_loss over every entry of `x`, compared with `analytic`.
void check_fd(const std::string& what, const ref::config& c, ref::inputs in,
              std::vector<double> ref::inputs::*member, const std::vector<double>& analytic,
              const ref::cotangents& ct, const ref::balance_config& bal) {
  constexpr double h = 1e-6, tol = 1e-6;
  std::vector<double>& x = in.*member;
  BOOST_TEST(analytic.size() == x.size(), what << " size");
  if (analytic.size() != x.size()) return;
  std::size_t bad = 0;
  std::ostringstream os;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double lp = ref::total_loss(c, in, ct, bal);
    x[i] = x0 - h;
    const double lm = ref::total_loss(c, in, ct, bal);
    x[i] = x0;
    const double fd = (lp - lm) / (2 * h);
    if (!(std::abs(fd - analytic[i]) <= tol * std::max(1.0, std::abs(analytic[i])))) {
      if (bad < 3) os << " [" << i << "] fd " << fd << " analytic " << analytic[i] << ";";
      ++bad;
    }
  }
  BOOST_TEST(bad == 0u, what << ": " << bad << " of " << x.size() << " differ:" << os.str());
}

}  // namespace

BOOST_AUTO_TEST_SUITE(finite_differences)

BOOST_AUTO_TEST_CASE(cases_cover_every_kind) {
  std::set<int> sinks, gates, routes, masks;
  bool softcap = false, plain = false, gqa = false, rect = false, shared = false, sample = false;
  for (const fd_case& f : fd_cases()) {
    sinks.insert(int(f.cfg.sink));
    gates.insert(int(f.cfg.gate));
    routes.insert(int(f.cfg.route));
    masks.insert(int(f.cfg.mask));
    (f.cfg.softcap > 0 ? softcap : plain) = true;
    gqa |= f.cfg.Hkv < f.cfg.Hq;
    rect |= f.cfg.Tq != f.cfg.Tk;
    shared |= f.bal.shared_heads > 0;
    sample |= f.bal.sample_std;
  }
  BOOST_TEST(sinks.size() == 3u);
  BOOST_TEST(gates.size() == 3u);
  BOOST_TEST(routes.size() == 3u);
  BOOST_TEST(masks.size() == 4u);
  BOOST_TEST((softcap && plain && gqa && rect && shared && sample));
}

BOOST_AUTO_TEST_CASE(backward_matches_central_differences) {
  std::mt19937_64 rng(20261128);
  for (const fd_case& f : fd_cases()) {
    BOOST_TEST_CONTEXT("case " << f.name) {
      const ref::inputs in = make_inputs(f.cfg, rng);
      const ref::cotangents ct = make_cotangents(f.cfg, rng);
      const ref::forward_result fw = ref::forward(f.cfg, in);
      const ref::balance_result bal = ref::balance(f.cfg, fw.router, fw.counted, f.bal);
      BOOST_TEST(bal.loss > 0);  // the balance path is exercised
      const ref::gradients g = ref::total_gradients(f.cfg, in, ct, f.bal);
      BOOST_TEST(max_abs(g.dq) > 0);
      BOOST_TEST(max_abs(g.dk) > 0);
      BOOST_TEST(max_abs(g.dv) > 0);
      check_fd("dq", f.cfg, in, &ref::inputs::q, g.dq, ct, f.bal);
      check_fd("dk", f.cfg, in, &ref::inputs::k, g.dk, ct, f.bal);
      check_fd("dv", f.cfg, in, &ref::inputs::v, g.dv, ct, f.bal);
      if (f.cfg.sink == ref::sink_kind::learned) {
        BOOST_TEST(max_abs(g.dsinks) > 0);
        check_fd("dsinks", f.cfg, in, &ref::inputs::sinks, g.dsinks, ct, f.bal);
      } else {
        BOOST_TEST(g.dsinks.empty());
      }
      if (f.cfg.gate != ref::gate_kind::none) {
        BOOST_TEST(max_abs(g.dgate) > 0);
        check_fd("dgate", f.cfg, in, &ref::inputs::gate_logits, g.dgate, ct, f.bal);
      } else {
        BOOST_TEST(g.dgate.empty());
      }
    }
  }
}

// The balance gradient alone, against differences in the router values, with shared heads and
// both std conventions; excluded heads and uncounted tokens get exactly zero.
BOOST_AUTO_TEST_CASE(balance_gradient_matches_central_differences) {
  std::mt19937_64 rng(7);
  const ref::config c = make_config(2, 5, 5, 5, 5, 4, S::none, G::none, R::sink_mass, M::causal);
  std::uniform_real_distribution<double> u(0.05, 0.95);
  std::vector<double> router(std::size_t(c.B) * c.Hq * c.Tq);
  for (double& x : router) x = u(rng);
  const std::vector<int> counted = {0, 1, 1, 0, 1, 1, 1, 0, 1, 1};
  for (int shared : {0, 2})
    for (bool sample : {false, true}) {
      BOOST_TEST_CONTEXT("shared " << shared << " sample " << sample) {
        const ref::balance_config bc{0.25, shared, sample};
        const ref::balance_result b = ref::balance(c, router, counted, bc);
        BOOST_TEST(b.loss > 0);
        std::vector<double> fd(router.size());
        for (std::size_t i = 0; i < router.size(); ++i) {
          std::vector<double> r = router;
          r[i] += 1e-6;
          const double lp = ref::balance(c, r, counted, bc).loss;
          r[i] -= 2e-6;
          const double lm = ref::balance(c, r, counted, bc).loss;
          fd[i] = (lp - lm) / 2e-6;
        }
        check_close("drouter", b.drouter, fd, 1e-7);
        // Excluded heads: the top `shared` by importance.
        std::vector<int> order(c.Hq);
        for (int h = 0; h < c.Hq; ++h) order[h] = h;
        std::stable_sort(order.begin(), order.end(),
                         [&](int x, int y) { return b.importance[x] > b.importance[y]; });
        for (int i = 0; i < shared; ++i)
          for (int bt = 0; bt < c.B; ++bt)
            for (int t = 0; t < c.Tq; ++t)
              BOOST_TEST(b.drouter[(std::size_t(bt) * c.Hq + order[i]) * c.Tq + t] == 0.0);
        // Paper identity (population std): sum_h dL/dImp[h] = -2 lambda n CV^2 / mu.
        if (!sample) {
          double sum = 0, mu = 0;
          const int n = c.Hq - shared;
          for (int i = shared; i < c.Hq; ++i) mu += b.importance[order[i]] / n;
          for (double x : b.drouter) sum += x;
          const double want = -2 * bc.lambda * n * b.cv * b.cv / mu;
          BOOST_TEST(std::abs(sum - want) <= 1e-12 * std::max(1.0, std::abs(want)));
        }
      }
    }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// c. Edge cases and hand-checked values.

BOOST_AUTO_TEST_SUITE(edge_cases)

// Causal with Tq > Tk (bottom-right): rows t < Tq - Tk see no key.
BOOST_AUTO_TEST_CASE(empty_rows_learned_sink) {
  std::mt19937_64 rng(11);
  const ref::config c = make_config(2, 5, 2, 2, 1, 4, S::learned, G::headwise, R::product, M::causal);
  const ref::inputs in = make_inputs(c, rng);
  const ref::forward_result f = ref::forward(c, in);
  const int empty_rows = c.Tq - c.Tk;  // t + (Tk - Tq) < 0
  for (int b = 0; b < c.B; ++b)
    for (int t = 0; t < c.Tq; ++t) {
      BOOST_TEST(f.counted[b * c.Tq + t] == (t < empty_rows ? 0 : 1));
      for (int h = 0; h < c.Hq; ++h) {
        const std::size_t r = (std::size_t(b) * c.Hq + h) * c.Tq + t;
        if (t < empty_rows) {
          BOOST_TEST(f.lse[r] == in.sinks[h]);
          BOOST_TEST(f.router[r] == 0.0);
          for (int d = 0; d < c.D; ++d) BOOST_TEST(f.out[((std::size_t(b) * c.Tq + t) * c.Hq + h) * c.D + d] == 0.0);
        } else {
          BOOST_TEST(f.router[r] > 0.0);
          BOOST_TEST(f.lse[r] > in.sinks[h]);
        }
      }
    }
  BOOST_TEST(all_finite(f.out));
  BOOST_TEST(all_finite(f.lse));
  // Full loss: gradients finite; the empty rows' q and gate logits get exactly zero.
  const ref::cotangents ct = make_cotangents(c, rng);
  const ref::gradients g = ref::total_gradients(c, in, ct, {0.1, 0, false});
  for (const auto* v : {&g.dq, &g.dk, &g.dv, &g.dsinks, &g.dgate}) BOOST_TEST(all_finite(*v));
  for (int b = 0; b < c.B; ++b)
    for (int t = 0; t < empty_rows; ++t)
      for (int h = 0; h < c.Hq; ++h) {
        BOOST_TEST(g.dgate[(std::size_t(b) * c.Tq + t) * c.Hq + h] == 0.0);
        for (int d = 0; d < c.D; ++d)
          BOOST_TEST(g.dq[((std::size_t(b) * c.Tq + t) * c.Hq + h) * c.D + d] == 0.0);
      }
  // Only dlse on the empty rows: d lse / d b = 1 there, nothing else moves.
  ref::cotangents only;
  only.dlse.assign(f.lse.size(), 0.0);
  std::vector<double> want(c.Hq, 0.0);
  for (int b = 0; b < c.B; ++b)
    for (int h = 0; h < c.Hq; ++h)
      for (int t = 0; t < empty_rows; ++t) {
        const double w = 0.5 + b + 2 * h + 0.25 * t;
        only.dlse[(std::size_t(b) * c.Hq + h) * c.Tq + t] = w;
        want[h] += w;
      }
  const ref::gradients e = ref::backward(c, in, only);
  check_close("dsinks", e.dsinks, want, 1e-14);
  BOOST_TEST(max_abs(e.dq) == 0.0);
  BOOST_TEST(max_abs(e.dk) == 0.0);
  BOOST_TEST(max_abs(e.dv) == 0.0);
  BOOST_TEST(max_abs(e.dgate) == 0.0);
}

// Vanilla sliding window with Tq > Tk: empty rows have lse = -inf, and a dlse entry on them
// (multiplying -inf) is ignored rather than producing NaN.
BOOST_AUTO_TEST_CASE(empty_rows_vanilla) {
  std::mt19937_64 rng(12);
  const ref::config c =
      make_config(1, 6, 3, 2, 2, 4, S::none, G::elementwise, R::output_gate, M::sliding_window, 2);
  const ref::inputs in = make_inputs(c, rng);
  const ref::forward_result f = ref::forward(c, in);
  const int empty_rows = c.Tq - c.Tk;
  for (int t = 0; t < c.Tq; ++t)
    for (int h = 0; h < c.Hq; ++h) {
      const std::size_t r = std::size_t(h) * c.Tq + t;
      if (t < empty_rows) {
        BOOST_TEST((std::isinf(f.lse[r]) && f.lse[r] < 0));
        BOOST_TEST(f.router[r] == 0.0);
        BOOST_TEST(f.counted[t] == 0);
      } else {
        BOOST_TEST(std::isfinite(f.lse[r]));
        BOOST_TEST(f.router[r] > 0.0);  // the output gate routes a non-empty row
        BOOST_TEST(f.counted[t] == 1);  // output_gate route: position 0 counts too
      }
    }
  BOOST_TEST(all_finite(f.out));
  BOOST_TEST(max_abs(std::vector<double>(f.out.begin(), f.out.begin() + empty_rows * c.Hq * c.D)) == 0.0);
  const ref::cotangents ct = make_cotangents(c, rng);  // dlse nonzero on the -inf rows too
  const ref::gradients g = ref::total_gradients(c, in, ct, {0.1, 0, false});
  for (const auto* v : {&g.dq, &g.dk, &g.dv, &g.dgate}) BOOST_TEST(all_finite(*v));
  BOOST_TEST(g.dsinks.empty());
  BOOST_TEST(max_abs(std::vector<double>(g.dgate.begin(), g.dgate.begin() + empty_rows * c.Hq * c.D)) == 0.0);
  BOOST_TEST(max_abs(g.dq) > 0.0);
  // A batch with no visible key at all: importance 0, loss 0, no NaN.
  const ref::config none = make_config(1, 3, 1, 2, 1, 4, S::none, G::none, R::sink_mass, M::causal);
  const ref::inputs in0 = make_inputs(none, rng);
  const ref::forward_result f0 = ref::forward(none, in0);
  // Only t = 2 sees a key, and it is position 0 under a vanilla sink-mass route: none counts.
  BOOST_TEST(f0.counted == std::vector<int>({0, 0, 0}));
  BOOST_TEST(f0.router[2] == 0.0);
  const ref::balance_result b0 = ref::balance(none, f0.router, f0.counted, {0.1, 0, false});
  BOOST_TEST(b0.loss == 0.0);
  BOOST_TEST(b0.importance == std::vector<double>({0.0, 0.0}));
}

// Vanilla: the first query (absolute position 0) only sees the sink key, G = 0, not counted;
// with an output-gate route it is counted.
BOOST_AUTO_TEST_CASE(first_token_counting) {
  std::mt19937_64 rng(13);
  const ref::config van = make_config(1, 3, 5, 2, 1, 4, S::none, G::headwise, R::product, M::causal);
  const ref::inputs in = make_inputs(van, rng);
  const ref::forward_result f = ref::forward(van, in);
  BOOST_TEST(f.counted == std::vector<int>({1, 1, 1}));  // positions 2, 3, 4
  ref::config early = van;
  early.Tq = 5;
  early.Tk = 5;
  const ref::inputs in5 = make_inputs(early, rng);
  const ref::forward_result f5 = ref::forward(early, in5);
  BOOST_TEST(f5.counted == std::vector<int>({0, 1, 1, 1, 1}));
  BOOST_TEST(f5.router[0] == 0.0);  // h = 0, t = 0: G = g * (1 - P[0,0]) = 0
  early.route = R::output_gate;
  BOOST_TEST(ref::forward(early, in5).counted == std::vector<int>({1, 1, 1, 1, 1}));
  early.sink = S::fixed;
  early.route = R::sink_mass;
  BOOST_TEST(ref::forward(early, in5).counted == std::vector<int>({1, 1, 1, 1, 1}));
}

// docs/method.md section 2: sink output = vanilla output * sigmoid(LSE_keys - b), G = that sigmoid.
BOOST_AUTO_TEST_CASE(sink_equals_scaled_vanilla) {
  std::mt19937_64 rng(14);
  ref::config c = make_config(2, 4, 6, 4, 2, 8, S::learned, G::none, R::sink_mass, M::causal);
  ref::inputs in = make_inputs(c, rng);
  in.sinks = {-30.0, 0.0, 1.5, 30.0};
  const ref::forward_result fs = ref::forward(c, in);
  ref::config v = c;
  v.sink = S::none;
  v.route = R::sink_mass;
  const ref::forward_result fv = ref::forward(v, in);
  std::size_t bad = 0;
  for (int b = 0; b < c.B; ++b)
    for (int t = 0; t < c.Tq; ++t)
      for (int h = 0; h < c.Hq; ++h) {
        const std::size_t r = (std::size_t(b) * c.Hq + h) * c.Tq + t;
        const double x = fv.lse[r] - in.sinks[h];
        const double sig = 1 / (1 + std::exp(-x));
        bad += !close(fs.router[r], sig, 1e-12);
        bad += !close(fs.lse[r], std::max(fv.lse[r], in.sinks[h]) +
                                     std::log1p(std::exp(-std::abs(x))), 1e-12);
        for (int d = 0; d < c.D; ++d) {
          const std::size_t o = ((std::size_t(b) * c.Tq + t) * c.Hq + h) * c.D + d;
          bad += !close(fs.out[o], fv.out[o] * sig, 1e-12);
        }
      }
  BOOST_TEST(bad == 0u);
  // A fixed sink at b behaves as a learned sink at b in every head.
  ref::config fx = c;
  fx.sink = S::fixed;
  fx.fixed_sink = 0.0;
  in.sinks.assign(c.Hq, 0.0);
  check_close("fixed out", ref::forward(fx, in).out, ref::forward(c, in).out, 0.0);
}

// Hand-computed balance: router [0.2, 0.6] on one token.
BOOST_AUTO_TEST_CASE(balance_hand_values) {
  const ref::config c = make_config(1, 1, 1, 2, 1, 4, S::learned, G::none, R::sink_mass, M::none);
  const std::vector<double> router = {0.2, 0.6};
  const std::vector<int> counted = {1};
  // Population: mu 0.4, std 0.2, CV 0.5, loss = lambda * 2 * 0.25.
  ref::balance_result b = ref::balance(c, router, counted, {0.1, 0, false});
  BOOST_CHECK_CLOSE(b.cv, 0.5, 1e-10);
  BOOST_CHECK_CLOSE(b.loss, 0.05, 1e-10);
  // dL/dImp = (2 lambda / mu^2)(Imp - mu (1 + CV^2)) = 1.25 * (Imp - 0.5).
  BOOST_CHECK_CLOSE(b.drouter[0], 1.25 * (0.2 - 0.5), 1e-10);
  BOOST_CHECK_CLOSE(b.drouter[1], 1.25 * (0.6 - 0.5), 1e-10);
  // Sample std: var 0.08, CV^2 0.5, loss = lambda * 2 * 0.5.
  b = ref::balance(c, router, counted, {0.1, 0, true});
  BOOST_CHECK_CLOSE(b.loss, 0.1, 1e-10);
  // One shared head: head 1 leaves, a single head has CV 0.
  b = ref::balance(c, router, counted, {0.1, 1, false});
  BOOST_TEST(b.loss == 0.0);
  BOOST_TEST(b.drouter == std::vector<double>({0.0, 0.0}));
  // Ties go to the lower index: with equal importance head 0 is the shared one.
  const ref::config c3 = make_config(1, 1, 1, 3, 1, 4, S::learned, G::none, R::sink_mass, M::none);
  b = ref::balance(c3, {0.5, 0.5, 0.1}, counted, {1.0, 1, false});
  BOOST_TEST(b.drouter[0] == 0.0);
  BOOST_TEST(b.drouter[1] != 0.0);
  // Remaining {0.5, 0.1}: mu 0.3, std 0.2, CV^2 = 4/9, loss = 2 * 4/9.
  BOOST_CHECK_CLOSE(b.loss, 8.0 / 9.0, 1e-10);
}

// Visibility rules of docs/method.md / docs/design.md section 4.
BOOST_AUTO_TEST_CASE(visibility) {
  ref::config c = make_config(1, 4, 10, 1, 1, 4, S::none, G::none, R::sink_mass, M::causal);
  // bottom-right: t' = t + 6
  BOOST_TEST(ref::visible(c, 0, 6));
  BOOST_TEST(!ref::visible(c, 0, 7));
  c.top_left = true;
  BOOST_TEST(ref::visible(c, 0, 0));
  BOOST_TEST(!ref::visible(c, 0, 1));
  c.top_left = false;
  c.mask = M::sliding_window;
  c.window = 3;  // t = 3, t' = 9: keys 7, 8, 9
  BOOST_TEST(!ref::visible(c, 3, 6));
  BOOST_TEST(ref::visible(c, 3, 7));
  BOOST_TEST(ref::visible(c, 3, 9));
  c.mask = M::streaming;
  c.sink_tokens = 2;
  BOOST_TEST(ref::visible(c, 3, 0));
  BOOST_TEST(ref::visible(c, 3, 1));
  BOOST_TEST(!ref::visible(c, 3, 2));
  BOOST_TEST(ref::visible(c, 3, 8));
  c.mask = M::none;
  BOOST_TEST(ref::visible(c, 0, 9));
}

BOOST_AUTO_TEST_SUITE_END()
