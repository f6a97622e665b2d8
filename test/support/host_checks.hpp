// Shared helpers of the host-backend suites (test_host_forward, test_host_backward, test_varlen):
// policy combinations, shapes, seeded inputs, and value comparisons that report what differs.
// Include after <boost/test/unit_test.hpp> (the suite defines BOOST_TEST_MODULE first).
#pragma once

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "support/reference.hpp"

namespace sinkmoe::testing::checks {

// ---- Names ----

inline const char* name(ref::sink_kind s) {
  switch (s) {
    case ref::sink_kind::none: return "sink::none";
    case ref::sink_kind::learned: return "sink::learned";
    case ref::sink_kind::fixed: return "sink::fixed";
  }
  return "?";
}
inline const char* name(ref::gate_kind g) {
  switch (g) {
    case ref::gate_kind::none: return "gate::none";
    case ref::gate_kind::headwise: return "gate::headwise";
    case ref::gate_kind::elementwise: return "gate::elementwise";
  }
  return "?";
}
inline const char* name(ref::mask_kind m) {
  switch (m) {
    case ref::mask_kind::none: return "mask::none";
    case ref::mask_kind::causal: return "mask::causal";
    case ref::mask_kind::sliding_window: return "mask::sliding_window";
    case ref::mask_kind::streaming: return "mask::streaming";
  }
  return "?";
}
inline const char* name(ref::route_kind r) {
  switch (r) {
    case ref::route_kind::sink_mass: return "route::sink_mass";
    case ref::route_kind::output_gate: return "route::output_gate";
    case ref::route_kind::product: return "route::product";
  }
  return "?";
}

/// One line naming every field of a config, for BOOST_TEST_CONTEXT.
inline std::string describe(const ref::config& c) {
  std::ostringstream os;
  os << name(c.sink) << ' ' << name(c.gate) << ' ' << name(c.mask) << ' ' << name(c.route)
     << " B=" << c.B << " Tq=" << c.Tq << " Tk=" << c.Tk << " Hq=" << c.Hq << " Hkv=" << c.Hkv
     << " D=" << c.D << " scale=" << c.scale;
  if (c.mask == ref::mask_kind::sliding_window || c.mask == ref::mask_kind::streaming)
    os << " window=" << c.window;
  if (c.mask == ref::mask_kind::streaming) os << " sink_tokens=" << c.sink_tokens;
  if (c.mask != ref::mask_kind::none) os << (c.top_left ? " top_left" : " bottom_right");
  if (c.sink == ref::sink_kind::fixed) os << " fixed_sink=" << c.fixed_sink;
  if (c.softcap > 0) os << " softcap=" << c.softcap;
  return os.str();
}

// ---- Policy combinations and shapes ----

struct combo {
  ref::sink_kind sink;
  ref::gate_kind gate;
  ref::mask_kind mask;
  ref::route_kind route;
};

inline constexpr ref::sink_kind all_sinks[] = {ref::sink_kind::none, ref::sink_kind::learned,
                                                ref::sink_kind::fixed};
inline constexpr ref::gate_kind all_gates[] = {ref::gate_kind::none, ref::gate_kind::headwise,
                                                ref::gate_kind::elementwise};
inline constexpr ref::mask_kind all_masks[] = {ref::mask_kind::none, ref::mask_kind::causal,
                                                ref::mask_kind::sliding_window,
                                                ref::mask_kind::streaming};

/// The route attention<> deduces: output gate if there is one, else sink mass.
inline ref::route_kind deduced_route(ref::gate_kind g) {
  return g == ref::gate_kind::none ? ref::route_kind::sink_mass : ref::route_kind::output_gate;
}

/// Every valid (sink, gate, mask, route): 3 x (1 + 2 x 3) x 4 = 84 combinations.
inline std::vector<combo> all_combos() {
  std::vector<combo> r;
  for (auto s : all_sinks)
    for (auto g : all_gates)
      for (auto m : all_masks) {
        r.push_back({s, g, m, ref::route_kind::sink_mass});
        if (g != ref::gate_kind::none) {
          r.push_back({s, g, m, ref::route_kind::output_gate});
          r.push_back({s, g, m, ref::route_kind::product});
        }
      }
  return r;
}

struct shape {
  int B, Tq, Tk, Hq, Hkv, D;
  int window = 3;       // sliding_window / streaming
  int sink_tokens = 1;  // streaming
  bool top_left = false;
};

inline ref::config make_config(const combo& cb, const shape& s, double fixed_sink = 0.0) {
  ref::config c{s.B, s.Tq, s.Tk, s.Hq, s.Hkv, s.D, 1.0 / std::sqrt(double(s.D))};
  c.sink = cb.sink;
  c.gate = cb.gate;
  c.mask = cb.mask;
  c.route = cb.route;
  if (cb.mask == ref::mask_kind::sliding_window || cb.mask == ref::mask_kind::streaming)
    c.window = s.window;
  if (cb.mask == ref::mask_kind::streaming) c.sink_tokens = s.sink_tokens;
  c.top_left = s.top_left;
  if (cb.sink == ref::sink_kind::fixed) c.fixed_sink = fixed_sink;
  return c;
}

// ---- Inputs ----

/// How random inputs are drawn. Every value is rounded to float, so that double and float runs
/// (and the oracle) see exactly the same inputs.
struct input_options {
  double q_scale = 1.0;                             ///< q ~ N(0, q_scale^2)
  std::vector<double> sink_pool{-30, 0, 5, 30};     ///< special sink logits (docs/design.md 7)
  double sink_special_prob = 0.6;                   ///< else sink ~ N(0, 2^2)
  std::vector<double> gate_pool{-20, 0, 20};        ///< special gate logits
  double gate_special_prob = 0.3;                   ///< else gate logit ~ N(0, 2^2)
};

inline double round_to_float(double x) { return double(float(x)); }

inline std::vector<double> normal_vector(std::mt19937_64& rng, std::size_t n, double sd = 1.0) {
  std::normal_distribution<double> nd(0.0, sd);
  std::vector<double> v(n);
  for (double& x : v) x = round_to_float(nd(rng));
  return v;
}

inline double pick(std::mt19937_64& rng, const std::vector<double>& pool, double prob, double sd) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  if (!pool.empty() && u(rng) < prob) {
    std::uniform_int_distribution<std::size_t> i(0, pool.size() - 1);
    return pool[i(rng)];
  }
  std::normal_distribution<double> nd(0.0, sd);
  return round_to_float(nd(rng));
}

inline int gate_dim(const ref::config& c) { return c.gate == ref::gate_kind::elementwise ? c.D : 1; }

inline ref::inputs make_inputs(const ref::config& c, std::mt19937_64& rng,
                               const input_options& o = {}) {
  ref::inputs in;
  const std::size_t nq = std::size_t(c.B) * c.Tq * c.Hq, nk = std::size_t(c.B) * c.Tk * c.Hkv;
  in.q = normal_vector(rng, nq * c.D, o.q_scale);
  in.k = normal_vector(rng, nk * c.D);
  in.v = normal_vector(rng, nk * c.D);
  if (c.sink == ref::sink_kind::learned) {
    in.sinks.resize(c.Hq);
    for (double& s : in.sinks) s = pick(rng, o.sink_pool, o.sink_special_prob, 2.0);
  }
  if (c.gate != ref::gate_kind::none) {
    in.gate_logits.resize(nq * gate_dim(c));
    for (double& z : in.gate_logits) z = pick(rng, o.gate_pool, o.gate_special_prob, 2.0);
  }
  return in;
}

/// Random cotangents on out, lse and router at once (each term has its own gradient path).
inline ref::cotangents make_cotangents(const ref::config& c, std::mt19937_64& rng) {
  ref::cotangents ct;
  ct.dout = normal_vector(rng, std::size_t(c.B) * c.Tq * c.Hq * c.D);
  ct.dlse = normal_vector(rng, std::size_t(c.B) * c.Hq * c.Tq);
  ct.drouter = normal_vector(rng, std::size_t(c.B) * c.Hq * c.Tq);
  return ct;
}

// ---- Threads ----

/// Thread count for the next library call: 2 for every eighth call, else 1. Results do not
/// depend on it (the determinism tests check that bitwise on large shapes); a single thread keeps
/// the bulk of the checks cheap when ctest runs suites in parallel on a 2-core machine, where
/// OpenMP's spinning barriers (OMP_WAIT_POLICY=active by default) otherwise waste most of the time
/// on tiny problems.
inline int next_threads() {
  static int calls = 0;
  return calls++ % 8 == 0 ? 2 : 1;
}

// ---- Comparisons ----

inline double max_abs_finite(const std::vector<double>& v) {
  double m = 0;
  for (double x : v)
    if (std::isfinite(x)) m = std::max(m, std::abs(x));
  return m;
}

inline bool all_finite(const std::vector<double>& v) {
  return std::all_of(v.begin(), v.end(), [](double x) { return std::isfinite(x); });
}

/// Non-finite expected values (-inf lse) must be matched exactly; NaN never passes.
inline bool same_nonfinite(double got, double want) {
  return !std::isnan(got) && !std::isnan(want) && got == want;
}

/// Outcome of an entrywise comparison.
struct comparison {
  std::size_t bad = 0;  ///< entries off
  double worst = 0;     ///< max err / tol over finite entries
  std::string first;    ///< the first few offenders
};

/// |got - want| <= tol(want) entrywise; non-finite expected values must match exactly.
template <class Tol>
comparison compare_entrywise(const std::vector<double>& got, const std::vector<double>& want,
                             Tol tol) {
  comparison r;
  if (got.size() != want.size()) {
    r.bad = std::max<std::size_t>(1, std::max(got.size(), want.size()));
    r.first = " sizes differ";
    return r;
  }
  std::ostringstream os;
  os.precision(17);
  for (std::size_t i = 0; i < want.size(); ++i) {
    bool ok;
    if (!std::isfinite(want[i]) || !std::isfinite(got[i])) {
      ok = same_nonfinite(got[i], want[i]);
    } else {
      const double err = std::abs(got[i] - want[i]);
      ok = err <= tol(want[i]);
      r.worst = std::max(r.worst, err / tol(want[i]));
    }
    if (!ok) {
      if (r.bad < 3) os << " [" << i << "] got " << got[i] << " want " << want[i] << ";";
      ++r.bad;
    }
  }
  r.first = os.str();
  return r;
}

template <class Tol>
void check_entrywise(const std::string& what, const std::vector<double>& got,
                     const std::vector<double>& want, Tol tol) {
  BOOST_TEST_REQUIRE(got.size() == want.size(),
                     what << ": size " << got.size() << " vs " << want.size());
  const comparison r = compare_entrywise(got, want, tol);
  BOOST_TEST(r.bad == 0u, what << ": " << r.bad << " of " << want.size()
                               << " entries off (worst err/tol " << r.worst << "):" << r.first);
}

/// Number of entries failing the fp64 rule |a - b| <= rtol * max(1, |b|).
inline std::size_t rel_mismatches(const std::vector<double>& got, const std::vector<double>& want,
                                  double rtol) {
  return compare_entrywise(got, want, [rtol](double w) { return rtol * std::max(1.0, std::abs(w)); }).bad;
}

/// fp64 rule: |a - b| <= rtol * max(1, |b|) per entry; -inf must match exactly.
inline void check_rel(const std::string& what, const std::vector<double>& got,
                      const std::vector<double>& want, double rtol) {
  check_entrywise(what, got, want, [rtol](double w) { return rtol * std::max(1.0, std::abs(w)); });
}

/// Scale-aware rule for gradients: |a - b| <= rtol * max(1, max|b|) over the whole tensor.
inline void check_scaled(const std::string& what, const std::vector<double>& got,
                         const std::vector<double>& want, double rtol) {
  const double tol = rtol * std::max(1.0, max_abs_finite(want));
  check_entrywise(what, got, want, [tol](double) { return tol; });
}

/// Max |x - ref| over entries where ref is finite.
inline double max_err(const std::vector<double>& x, const std::vector<double>& ref) {
  double e = 0;
  for (std::size_t i = 0; i < ref.size(); ++i)
    if (std::isfinite(ref[i])) {
      const double d = std::abs(x[i] - ref[i]);
      e = std::max(e, std::isnan(d) ? std::numeric_limits<double>::infinity() : d);
    }
  return e;
}

/// atol of FlashAttention's rule: atol_rel of the oracle tensor's magnitude, at least abs_floor.
/// The magnitude has no floor of 1, so a tensor of tiny values (e.g. the output behind a sink at
/// +30) is still checked to a few ulp of its own size. abs_floor defaults to 1e-36, where float
/// results lose precision to subnormals; a caller raises it where the oracle itself is only
/// accurate in absolute terms (the router G = 1 - A, exact to ~1e-16 in double).
inline double fa_atol(const std::vector<double>& oracle, double atol_rel, double abs_floor = 1e-36) {
  return std::max(atol_rel * max_abs_finite(oracle), abs_floor);
}

/// True when err(lib) <= 2 err(naive) + fa_atol(oracle, atol_rel, abs_floor) (see check_fa_rule).
inline bool fa_rule_holds(const std::vector<double>& lib, const std::vector<double>& naive,
                          const std::vector<double>& oracle, double atol_rel = 1e-6,
                          double abs_floor = 1e-36) {
  return max_err(lib, oracle) <= 2 * max_err(naive, oracle) + fa_atol(oracle, atol_rel, abs_floor);
}

/// FlashAttention's rule (docs/design.md section 7): err(lib) <= 2 err(naive) + atol, both max abs
/// errors against the fp64 oracle, atol = fa_atol(oracle, atol_rel, abs_floor). Float eps is
/// 1.19e-7, so atol_rel = 6e-7 is 5 ulp of the tensor's magnitude and 1e-6 about 8. Non-finite
/// oracle entries must be matched exactly, and nothing may be NaN.
inline void check_fa_rule(const std::string& what, const std::vector<double>& lib,
                          const std::vector<double>& naive, const std::vector<double>& oracle,
                          double atol_rel = 1e-6, double abs_floor = 1e-36) {
  BOOST_TEST_REQUIRE(lib.size() == oracle.size(), what << ": size " << lib.size() << " vs " << oracle.size());
  BOOST_TEST_REQUIRE(naive.size() == oracle.size(), what << ": naive size " << naive.size());
  std::size_t nonfinite_bad = 0;
  for (std::size_t i = 0; i < oracle.size(); ++i)
    if ((!std::isfinite(oracle[i]) || !std::isfinite(lib[i])) && !same_nonfinite(lib[i], oracle[i]))
      ++nonfinite_bad;
  BOOST_TEST(nonfinite_bad == 0u, what << ": " << nonfinite_bad << " non-finite mismatches");
  const double err_lib = max_err(lib, oracle), err_naive = max_err(naive, oracle);
  const double atol = fa_atol(oracle, atol_rel, abs_floor);
  BOOST_TEST(err_lib <= 2 * err_naive + atol, what << ": library error " << err_lib
                                                   << " > 2 x naive error " << err_naive
                                                   << " + atol " << atol);
}

/// Bitwise equality of two result vectors (both came from the same precision).
inline void check_bitwise(const std::string& what, const std::vector<double>& a,
                          const std::vector<double>& b) {
  BOOST_TEST_REQUIRE(a.size() == b.size(), what << ": size " << a.size() << " vs " << b.size());
  std::size_t bad = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(double)) != 0) ++bad;
  BOOST_TEST(bad == 0u, what << ": " << bad << " of " << a.size() << " entries not bitwise equal");
}

inline void check_finite(const std::string& what, const std::vector<double>& v) {
  std::size_t bad = 0;
  for (double x : v) bad += std::isfinite(x) ? 0 : 1;
  BOOST_TEST(bad == 0u, what << ": " << bad << " non-finite entries");
}

}  // namespace sinkmoe::testing::checks
