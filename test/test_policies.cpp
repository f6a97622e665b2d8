// Unit tests of the policy hooks themselves (docs/design.md section 3, docs/method.md sections
// 1-5):
//  masks   visible() against the oracle's ref::visible; key_range() holds every visible key (and,
//          for the built-ins, starts and ends on a visible key); tile_class() over every
//          rectangle of small grids and over 64-wide backend tiles: conservative for any mask
//          (full => all visible, empty => none), exact for the built-ins;
//  score   scaled and softcap transform / derivative (finite differences), default scale;
//  sink    finish_row (lse_full, mass, complement) on finite and infinite inputs, row_term and
//          logit_grad against hand values;
//  gate    forward_row / router_value / backward_row against finite differences in double,
//          extreme logits without NaN;
//  route   router and split; route::deduced; attention<>::excludes_sink_only_queries; the aliases.
#define BOOST_TEST_MODULE policies
#include <algorithm>
#include <boost/test/unit_test.hpp>
#include <cmath>
#include <cstring>
#include <iomanip>
#include <limits>
#include <random>
#include <sinkmoe/sinkmoe.hpp>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "support/reference.hpp"

namespace sm = sinkmoe;
namespace ref = sinkmoe::testing::ref;

namespace {

// ---------------------------------------------------------------------------------------------
// Masks
// ---------------------------------------------------------------------------------------------

/// One mask configuration: the library's params and the oracle's config describing the same mask.
struct mask_case {
  ref::mask_kind kind;
  int tq, tk, window, sink_tokens;
  bool top_left;

  sm::attention_params params() const {
    sm::attention_params p;
    p.window = window;
    p.sink_tokens = sink_tokens;
    p.alignment = top_left ? sm::causal_alignment::top_left : sm::causal_alignment::bottom_right;
    return p;
  }
  ref::config oracle() const {
    ref::config c{};
    c.B = 1, c.Tq = tq, c.Tk = tk, c.Hq = 1, c.Hkv = 1, c.D = 1, c.scale = 1;
    c.mask = kind, c.window = window, c.sink_tokens = sink_tokens, c.top_left = top_left;
    return c;
  }
  std::string describe() const {
    static const char* names[] = {"none", "causal", "sliding_window", "streaming"};
    std::ostringstream os;
    os << "mask::" << names[int(kind)] << " tq=" << tq << " tk=" << tk << " window=" << window
       << " sink_tokens=" << sink_tokens << (top_left ? " top_left" : " bottom_right");
    return os.str();
  }
};

/// Every built-in mask over a grid of shapes (tq > tk, tq < tk, tq == tk, single rows/keys,
/// no keys), both alignments, windows 1, 2, 3, >= tk, and sink token counts 0..tk+1.
std::vector<mask_case> small_mask_cases() {
  const std::vector<std::pair<int, int>> shapes = {{1, 1}, {1, 6}, {6, 1},  {4, 9}, {9, 4},
                                                   {7, 7}, {3, 0}, {2, 11}, {11, 3}};
  std::vector<mask_case> cases;
  for (auto [tq, tk] : shapes)
    for (bool top_left : {false, true}) {
      cases.push_back({ref::mask_kind::none, tq, tk, 0, 0, top_left});
      cases.push_back({ref::mask_kind::causal, tq, tk, 0, 0, top_left});
      for (int window : {1, 2, 3, tk, tk + 4}) {
        if (window < 1) continue;
        cases.push_back({ref::mask_kind::sliding_window, tq, tk, window, 0, top_left});
        for (int sinks : {0, 1, 2, tk, tk + 1})
          cases.push_back({ref::mask_kind::streaming, tq, tk, window, sinks, top_left});
      }
    }
  return cases;
}

/// Larger shapes for the backend's 64-row / 64-key tiles.
std::vector<mask_case> large_mask_cases() {
  std::vector<mask_case> cases;
  for (auto [tq, tk] : std::vector<std::pair<int, int>>{{130, 130}, {64, 200}, {200, 70}, {1, 130}})
    for (bool top_left : {false, true}) {
      cases.push_back({ref::mask_kind::none, tq, tk, 0, 0, top_left});
      cases.push_back({ref::mask_kind::causal, tq, tk, 0, 0, top_left});
      for (int window : {1, 3, 64, 65, 128, 300}) {
        cases.push_back({ref::mask_kind::sliding_window, tq, tk, window, 0, top_left});
        for (int sinks : {0, 1, 4, 64, 70})
          cases.push_back({ref::mask_kind::streaming, tq, tk, window, sinks, top_left});
      }
    }
  return cases;
}

/// Results of running every mask check on one configuration.
struct mask_findings {
  long visible_mismatch = 0;     // visible() != ref::visible
  long range_misses = 0;         // a visible key outside key_range(t)
  long range_out_of_bounds = 0;  // non-empty key_range(t) not inside [0, tk)
  long range_loose = 0;          // non-empty key_range(t) whose first or last key is not visible
  long tile_unsound = 0;         // full with a hidden pair, or empty with a visible pair
  long tile_inexact = 0;         // all visible but not full, or none visible but not empty
  long tiles = 0;
  std::string first_unsound, first_inexact, first_loose;
};

template <class Mask>
void check_tile(const Mask& m, const ref::config& c, int q0, int q1, int k0, int k1,
                mask_findings& f) {
  long vis = 0;
  for (int t = q0; t < q1; ++t)
    for (int j = k0; j < k1; ++j) vis += ref::visible(c, t, j) ? 1 : 0;
  const long area = long(q1 - q0) * (k1 - k0);
  const sm::tile_kind kind = m.tile_class(q0, q1, k0, k1);
  ++f.tiles;
  const auto where = [&] {
    static const char* kinds[] = {"empty", "partial", "full"};
    std::ostringstream os;
    os << "tile rows [" << q0 << "," << q1 << ") keys [" << k0 << "," << k1 << "): " << vis
       << " of " << area << " visible, tile_class " << kinds[int(kind)];
    return os.str();
  };
  if ((kind == sm::tile_kind::full && vis != area) || (kind == sm::tile_kind::empty && vis != 0)) {
    if (f.tile_unsound++ == 0) f.first_unsound = where();
  }
  const sm::tile_kind exact = vis == area
                                  ? sm::tile_kind::full
                                  : (vis == 0 ? sm::tile_kind::empty : sm::tile_kind::partial);
  if (kind != exact && f.tile_inexact++ == 0) f.first_inexact = where();
}

template <class Mask>
mask_findings run_mask_checks(const mask_case& mc, bool all_rectangles) {
  const Mask m(mc.params(), mc.tq, mc.tk);
  const ref::config c = mc.oracle();
  mask_findings f;
  for (int t = 0; t < mc.tq; ++t) {
    const sm::key_span r = m.key_range(t);
    for (int j = 0; j < mc.tk; ++j) {
      const bool want = ref::visible(c, t, j);
      if (bool(m.visible(t, j)) != want) ++f.visible_mismatch;
      if (want && !(j >= r.begin && j < r.end)) ++f.range_misses;
    }
    if (!r.empty()) {
      if (r.begin < 0 || r.end > mc.tk)
        ++f.range_out_of_bounds;
      else if (!ref::visible(c, t, r.begin) || !ref::visible(c, t, r.end - 1)) {
        if (f.range_loose++ == 0) {
          std::ostringstream os;
          os << "row " << t << ": key_range [" << r.begin << "," << r.end << ")";
          f.first_loose = os.str();
        }
      }
    }
  }
  if (all_rectangles) {
    for (int q0 = 0; q0 < mc.tq; ++q0)
      for (int q1 = q0 + 1; q1 <= mc.tq; ++q1)
        for (int k0 = 0; k0 < mc.tk; ++k0)
          for (int k1 = k0 + 1; k1 <= mc.tk; ++k1) check_tile(m, c, q0, q1, k0, k1, f);
  } else {
    // The backend's tiling (64 x 64, last tile short), plus 1..5-wide tiles at every offset
    // along the diagonal band where the classes change.
    for (int q0 = 0; q0 < mc.tq; q0 += 64)
      for (int k0 = 0; k0 < mc.tk; k0 += 64)
        check_tile(m, c, q0, std::min(q0 + 64, mc.tq), k0, std::min(k0 + 64, mc.tk), f);
    for (int size = 1; size <= 5; ++size)
      for (int q0 = 0; q0 + size <= mc.tq; q0 += 7)
        for (int k0 = 0; k0 + size <= mc.tk; ++k0)
          check_tile(m, c, q0, q0 + size, k0, k0 + size, f);
  }
  return f;
}

/// Every check on every configuration, computed once and shared by the test cases below.
struct mask_result {
  mask_case config;
  mask_findings findings;
  bool large;
};

const std::vector<mask_result>& all_mask_results() {
  static const std::vector<mask_result> results = [] {
    std::vector<mask_result> out;
    for (bool large : {false, true})
      for (const mask_case& mc : large ? large_mask_cases() : small_mask_cases()) {
        mask_findings f;
        switch (mc.kind) {
          case ref::mask_kind::none:
            f = run_mask_checks<sm::mask::none>(mc, !large);
            break;
          case ref::mask_kind::causal:
            f = run_mask_checks<sm::mask::causal>(mc, !large);
            break;
          case ref::mask_kind::sliding_window:
            f = run_mask_checks<sm::mask::sliding_window>(mc, !large);
            break;
          case ref::mask_kind::streaming:
            f = run_mask_checks<sm::mask::streaming>(mc, !large);
            break;
        }
        out.push_back({mc, f, large});
      }
    return out;
  }();
  return results;
}

template <class F>
void for_each_mask(F&& report) {
  for (const mask_result& r : all_mask_results()) report(r.config, r.findings);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(mask_hooks)

BOOST_AUTO_TEST_CASE(visible_matches_oracle_and_key_range_holds_every_visible_key) {
  long configs = 0;
  for_each_mask([&](const mask_case& mc, const mask_findings& f) {
    ++configs;
    BOOST_TEST_CONTEXT(mc.describe()) {
      BOOST_TEST(f.visible_mismatch == 0);
      BOOST_TEST(f.range_misses == 0);
      BOOST_TEST(f.range_out_of_bounds == 0);
    }
  });
  BOOST_TEST(configs > 300);
}

// The contract: tile_class() may say "partial" for any tile, but "full" must mean every pair is
// visible (the backend then skips visible()) and "empty" that none is (the tile is skipped).
BOOST_AUTO_TEST_CASE(tile_class_is_conservative) {
  long tiles = 0;
  for_each_mask([&](const mask_case& mc, const mask_findings& f) {
    tiles += f.tiles;
    BOOST_TEST(f.tile_unsound == 0, mc.describe() << ": " << f.tile_unsound
                                                  << " unsound tiles, first " << f.first_unsound);
  });
  BOOST_TEST(tiles > 100000);
}

namespace {
const char* const k_mask_names[] = {"none", "causal", "sliding_window", "streaming"};

/// Per built-in mask: how many configurations violate `bad`, and the first one.
template <class Bad, class Describe>
void expect_no_config(Bad&& bad, Describe&& describe) {
  long configs[4] = {}, failing[4] = {};
  std::string first[4];
  for_each_mask([&](const mask_case& mc, const mask_findings& f) {
    const int k = int(mc.kind);
    ++configs[k];
    if (bad(f) && failing[k]++ == 0) first[k] = mc.describe() + ": " + describe(f);
  });
  for (int k = 0; k < 4; ++k) {
    BOOST_TEST(configs[k] > 0);
    BOOST_TEST(failing[k] == 0, "mask::" << k_mask_names[k] << ": " << failing[k] << " of "
                                         << configs[k] << " configurations; first: " << first[k]);
  }
}
}  // namespace

// For the built-in masks the classification is exact, so no tile is processed with per-element
// masking that did not need it, and no all-hidden tile is visited.
BOOST_AUTO_TEST_CASE(builtin_tile_class_is_exact) {
  expect_no_config([](const mask_findings& f) { return f.tile_inexact != 0; },
                   [](const mask_findings& f) {
                     return std::to_string(f.tile_inexact) + " inexact tiles, first " +
                            f.first_inexact;
                   });
}

// For the built-ins key_range(t) is the tight hull: its first and last keys are visible.
BOOST_AUTO_TEST_CASE(builtin_key_range_is_tight) {
  expect_no_config([](const mask_findings& f) { return f.range_loose != 0; },
                   [](const mask_findings& f) {
                     return std::to_string(f.range_loose) + " loose rows, first " + f.first_loose;
                   });
}

// A window wider than any position is the same as an unbounded one: window = INT_MAX ("no
// limit") must behave exactly like window = tq + tk. With bottom-right alignment and tq > tk the
// first rows have negative positions, and pos - window overflows int (UB; -fsanitize=undefined
// reports it). In a plain build the wrapped value makes tile_class() call a tile with visible
// pairs "empty", so the backend skips keys those rows should see.
BOOST_AUTO_TEST_CASE(huge_window_equals_unbounded_window) {
  long mismatches = 0, checks = 0;
  std::string first;
  for (auto [tq, tk] : std::vector<std::pair<int, int>>{{5, 2}, {9, 4}, {3, 3}, {2, 6}})
    for (bool top_left : {false, true})
      for (int sinks : {0, 1}) {
        sm::attention_params huge, wide;
        huge.window = std::numeric_limits<int>::max();
        wide.window = tq + tk;
        huge.alignment = wide.alignment =
            top_left ? sm::causal_alignment::top_left : sm::causal_alignment::bottom_right;
        huge.sink_tokens = wide.sink_tokens = sinks;
        const auto compare = [&](const auto& a, const auto& b, const char* name) {
          const auto note = [&](const std::string& what) {
            if (mismatches++ == 0)
              first = std::string(name) + " tq=" + std::to_string(tq) +
                      " tk=" + std::to_string(tk) + (top_left ? " top_left" : " bottom_right") +
                      " sink_tokens=" + std::to_string(sinks) + ": " + what;
          };
          for (int t = 0; t < tq; ++t) {
            const sm::key_span ra = a.key_range(t), rb = b.key_range(t);
            ++checks;
            if (ra.empty() != rb.empty() ||
                (!ra.empty() && (ra.begin != rb.begin || ra.end != rb.end)))
              note("key_range(" + std::to_string(t) + ") differs");
            for (int j = 0; j < tk; ++j)
              if (a.visible(t, j) != b.visible(t, j))
                note("visible(" + std::to_string(t) + ", " + std::to_string(j) + ") differs");
          }
          for (int q0 = 0; q0 < tq; ++q0)
            for (int k0 = 0; k0 < tk; ++k0) {
              ++checks;
              const auto ka = a.tile_class(q0, tq, k0, tk), kb = b.tile_class(q0, tq, k0, tk);
              if (ka != kb)
                note("tile_class(" + std::to_string(q0) + ", " + std::to_string(tq) + ", " +
                     std::to_string(k0) + ", " + std::to_string(tk) +
                     ") = " + std::to_string(int(ka)) + " with INT_MAX, " +
                     std::to_string(int(kb)) + " with window tq + tk (0 empty, 2 full)");
            }
        };
        if (sinks == 0)
          compare(sm::mask::sliding_window(huge, tq, tk), sm::mask::sliding_window(wide, tq, tk),
                  "sliding_window");
        compare(sm::mask::streaming(huge, tq, tk), sm::mask::streaming(wide, tq, tk), "streaming");
      }
  BOOST_TEST(checks > 100);
  BOOST_TEST(mismatches == 0, mismatches << " mismatches; first: " << first);
}

// Spot values that pin the alignment convention itself (not only agreement with the oracle).
BOOST_AUTO_TEST_CASE(alignment_hand_values) {
  sm::attention_params p;  // bottom-right: query t sees j <= t + (tk - tq)
  const sm::mask::causal br(p, 2, 5);
  BOOST_TEST(br.visible(0, 3));
  BOOST_TEST(!br.visible(0, 4));
  BOOST_TEST(br.visible(1, 4));
  BOOST_TEST(br.key_range(0).end == 4);
  p.alignment = sm::causal_alignment::top_left;
  const sm::mask::causal tl(p, 2, 5);
  BOOST_TEST(tl.visible(0, 0));
  BOOST_TEST(!tl.visible(0, 1));
  BOOST_TEST(tl.key_range(1).end == 2);
  // tq > tk, bottom-right: the first tq - tk queries see nothing.
  sm::attention_params q;
  const sm::mask::causal over(q, 5, 2);
  BOOST_TEST(over.key_range(2).empty());
  BOOST_TEST(!over.visible(2, 0));
  BOOST_TEST(over.visible(3, 0));
  BOOST_TEST((over.tile_class(0, 3, 0, 2) == sm::tile_kind::empty));
  // GPT-OSS window of 3: query 5 of 8 sees keys 3, 4, 5.
  sm::attention_params w;
  w.window = 3;
  const sm::mask::sliding_window sw(w, 8, 8);
  BOOST_TEST(sw.key_range(5).begin == 3);
  BOOST_TEST(sw.key_range(5).end == 6);
  BOOST_TEST(!sw.visible(5, 2));
  // StreamingLLM: plus the first 2 tokens.
  w.sink_tokens = 2;
  const sm::mask::streaming st(w, 8, 8);
  BOOST_TEST(st.visible(5, 0));
  BOOST_TEST(st.visible(5, 1));
  BOOST_TEST(!st.visible(5, 2));
  BOOST_TEST(st.visible(5, 3));
  BOOST_TEST(!st.visible(0, 1));  // still causal
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// Score
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(score_hooks)

BOOST_AUTO_TEST_CASE(default_scale_is_inverse_sqrt_head_dim) {
  sm::attention_params p;
  for (int d : {1, 16, 64, 128, 7}) {
    BOOST_TEST(sm::score::scaled(p, d).scale() == 1.0 / std::sqrt(double(d)));
    BOOST_TEST(sm::score::softcap(p, d).scale() == 1.0 / std::sqrt(double(d)));
  }
  p.scale = 0.3;
  BOOST_TEST(sm::score::scaled(p, 64).scale() == 0.3);
  BOOST_TEST(sm::score::softcap(p, 64).scale() == 0.3);
}

BOOST_AUTO_TEST_CASE(scaled_transform_and_derivative) {
  sm::attention_params p;
  const sm::score::scaled s(p, 16);  // scale 0.25
  BOOST_TEST(sm::score::scaled::is_linear);
  BOOST_TEST(s.transform(2.0) == 0.5);
  BOOST_TEST(s.transform(-8.0f) == -2.0f);
  BOOST_TEST(s.derivative(123.0) == 0.25);
  BOOST_TEST(s.derivative(-5.0f) == 0.25f);
  static_assert(std::is_same_v<decltype(s.transform(1.0f)), float>);
  static_assert(std::is_same_v<decltype(s.transform(1.0)), double>);
}

BOOST_AUTO_TEST_CASE(softcap_transform_and_derivative_match_finite_differences) {
  sm::attention_params p;
  p.scale = 0.5;
  p.softcap = 5.0;
  const sm::score::softcap s(p, 64);
  BOOST_TEST(!sm::score::softcap::is_linear);
  for (double x : {-40.0, -7.0, -1.0, 0.0, 0.3, 2.0, 9.0, 33.0}) {
    BOOST_TEST_CONTEXT("dot " << x) {
      BOOST_TEST(s.transform(x) == 5.0 * std::tanh(0.5 * x / 5.0),
                 boost::test_tools::tolerance(1e-15));
      const double h = 1e-5;
      const double fd = (s.transform(x + h) - s.transform(x - h)) / (2 * h);
      BOOST_TEST(std::abs(s.derivative(x) - fd) <= 1e-9 * std::max(1.0, std::abs(fd)));
      BOOST_TEST(std::abs(double(s.transform(float(x))) - s.transform(x)) <= 1e-5);
      BOOST_TEST(std::abs(double(s.derivative(float(x))) - s.derivative(x)) <= 1e-6);
      BOOST_TEST(std::abs(s.transform(x)) < 5.0);
    }
  }
  // Saturation: bounded by the cap, derivative to 0, no NaN.
  BOOST_TEST(s.transform(1e30) == 5.0);
  BOOST_TEST(s.transform(-1e30f) == -5.0f);
  BOOST_TEST(s.derivative(1e30) == 0.0);
  BOOST_TEST(!std::isnan(s.derivative(1e30f)));
  BOOST_TEST(s.derivative(0.0) == 0.5);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// Sink
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(sink_hooks)

namespace {
template <class F>
void check_row(F lse_keys, F sink, F eps) {
  const double inf = std::numeric_limits<double>::infinity();
  BOOST_TEST_CONTEXT("lse_keys " << lse_keys << " sink " << sink << " (" << sizeof(F) << "-byte)") {
    // Logit sinks (learned and fixed share the row formula).
    for (bool learned : {true, false}) {
      const auto r = learned ? sm::sink::finish_row<sm::sink::learned>(lse_keys, sink)
                             : sm::sink::finish_row<sm::sink::fixed>(lse_keys, sink);
      BOOST_TEST(!std::isnan(r.lse_full));
      BOOST_TEST(!std::isnan(r.mass));
      BOOST_TEST(!std::isnan(r.complement));
      const double a = double(lse_keys), b = double(sink);
      const double want_lse =
          std::max(a, b) == -inf
              ? -inf
              : std::max(a, b) + std::log1p(std::exp(std::min(a, b) - std::max(a, b)));
      if (std::isinf(want_lse)) {
        BOOST_TEST(r.lse_full == F(want_lse));
      } else {
        BOOST_TEST(std::abs(double(r.lse_full) - want_lse) <=
                   double(eps) * std::max(1.0, std::abs(want_lse)));
      }
      BOOST_TEST(r.mass >= F(0));
      BOOST_TEST(r.mass <= F(1));
      BOOST_TEST(r.complement >= F(0));
      BOOST_TEST(r.complement <= F(1));
      BOOST_TEST(std::abs(double(r.mass) + double(r.complement) - 1.0) <= double(eps));
      // A = exp(b - lse_full) = sigmoid(b - lse_keys).
      const double want_mass = b == -inf ? 0.0 : (a == -inf ? 1.0 : 1.0 / (1.0 + std::exp(a - b)));
      BOOST_TEST(std::abs(double(r.mass) - want_mass) <= double(eps));
    }
    // Vanilla: no logit joins the denominator; the sink score is key 0's score (<= lse_keys).
    if (sink <= lse_keys) {
      const auto r = sm::sink::finish_row<sm::sink::none>(lse_keys, sink);
      BOOST_TEST(r.lse_full == lse_keys);
      const double want_mass =
          double(sink) == -inf ? 0.0 : std::exp(double(sink) - double(lse_keys));
      BOOST_TEST(std::abs(double(r.mass) - want_mass) <= double(eps));
      BOOST_TEST(std::abs(double(r.mass) + double(r.complement) - 1.0) <= double(eps));
    }
  }
}
}  // namespace

BOOST_AUTO_TEST_CASE(finish_row_on_finite_and_infinite_inputs) {
  const double inf = std::numeric_limits<double>::infinity();
  for (double lk : {-inf, -80.0, -3.0, 0.0, 1.5, 80.0})
    for (double s : {-inf, -80.0, -30.0, -1.0, 0.0, 0.7, 5.0, 30.0, 80.0}) {
      check_row<double>(lk, s, 1e-14);
      check_row<float>(float(lk), float(s), 2e-6f);
    }
}

BOOST_AUTO_TEST_CASE(finish_row_hand_values) {
  const double inf = std::numeric_limits<double>::infinity();
  // Empty row with a logit sink: lse = b, all mass on the sink.
  auto r = sm::sink::finish_row<sm::sink::learned>(-inf, 2.0);
  BOOST_TEST(r.lse_full == 2.0);
  BOOST_TEST(r.mass == 1.0);
  BOOST_TEST(r.complement == 0.0);
  // Empty row without a sink: lse = -inf, no NaN.
  r = sm::sink::finish_row<sm::sink::none>(-inf, -inf);
  BOOST_TEST(r.lse_full == -inf);
  BOOST_TEST(r.mass == 0.0);
  BOOST_TEST(r.complement == 1.0);
  // Softmax-off-by-one: b = 0, lse_keys = log 3 -> lse_full = log 4, A = 1/4.
  r = sm::sink::finish_row<sm::sink::fixed>(std::log(3.0), 0.0);
  BOOST_TEST(r.lse_full == std::log(4.0), boost::test_tools::tolerance(1e-15));
  BOOST_TEST(r.mass == 0.25, boost::test_tools::tolerance(1e-15));
  BOOST_TEST(r.complement == 0.75, boost::test_tools::tolerance(1e-15));
  // Vanilla: key 0 holds e^1 of e^1 + e^2 + e^0.
  const double lse = std::log(std::exp(1.0) + std::exp(2.0) + 1.0);
  r = sm::sink::finish_row<sm::sink::none>(lse, 1.0);
  BOOST_TEST(r.lse_full == lse);
  BOOST_TEST(r.mass == std::exp(1.0) / (std::exp(1.0) + std::exp(2.0) + 1.0),
             boost::test_tools::tolerance(1e-14));
}

// G = 1 - A is the router value: for a head whose sink takes nearly all the mass (the collapsed
// heads the balancing loss is about) the complement must keep its relative precision; the
// paper's cheap form is sigmoid(lse_keys - b) (docs/method.md section 2). sink.hpp promises this
// ("computed as -expm1 so that it keeps precision when A is near 1").
BOOST_AUTO_TEST_CASE(complement_keeps_relative_precision_when_the_sink_takes_almost_all_mass) {
  for (double gap : {5.0, 10.0, 20.0, 30.0}) {
    const double b = 3.0 + gap, lk = 3.0;
    const double want = 1.0 / (1.0 + std::exp(b - lk));  // sigmoid(lse_keys - b)
    const auto rd = sm::sink::finish_row<sm::sink::learned>(lk, b);
    BOOST_TEST(std::abs(rd.complement - want) <= 1e-12 * want,
               "double, b - lse_keys = " << gap << ": complement " << std::setprecision(17)
                                         << rd.complement << " want " << want << ", rel err "
                                         << std::abs(rd.complement - want) / want);
    if (gap <= 20.0) {
      const auto rf = sm::sink::finish_row<sm::sink::learned>(float(lk), float(b));
      BOOST_TEST(std::abs(double(rf.complement) - want) <= 1e-5 * want,
                 "float, b - lse_keys = " << gap << ": complement " << std::setprecision(9)
                                          << rf.complement << " want " << want << ", rel err "
                                          << std::abs(double(rf.complement) - want) / want);
    }
  }
}

BOOST_AUTO_TEST_CASE(row_term_and_logit_grad_hand_values) {
  // D = Delta - gbar * A - dLSE
  BOOST_TEST(sm::sink::row_term(0.5, 2.0, 0.25, 0.1) == 0.5 - 0.5 - 0.1,
             boost::test_tools::tolerance(1e-15));
  BOOST_TEST(sm::sink::row_term(1.0f, 0.0f, 0.9f, 0.0f) == 1.0f);
  BOOST_TEST(sm::sink::row_term(-2.0, 4.0, 0.5, -1.0) == -2.0 - 2.0 + 1.0);
  // db = -A (Delta + gbar (1 - A) - dLSE)
  BOOST_TEST(sm::sink::logit_grad(0.5, 2.0, 0.25, 0.75, 0.1) == -0.25 * (0.5 + 1.5 - 0.1),
             boost::test_tools::tolerance(1e-15));
  BOOST_TEST(sm::sink::logit_grad(1.0, 0.0, 0.0, 1.0, 3.0) == 0.0);
  BOOST_TEST(sm::sink::logit_grad(-1.0f, 2.0f, 0.5f, 0.5f, 0.0f) == -0.5f * (-1.0f + 1.0f));
  // Cross-check against finite differences of the row loss they summarise, keys held fixed:
  // O = (1 - A) * Otilde, so with L = w.O + c_lse * lse_full + gbar * (1 - A):
  // Delta = w.O, dL/db = -A (Delta + gbar (1 - A) - c_lse) = logit_grad(Delta, gbar, A, 1 - A,
  // c_lse).
  const double lk = 0.4, b = -0.3, gbar = 1.7, c_lse = 0.6, w_dot_otilde = -0.9, h = 1e-6;
  auto loss = [&](double bb) {
    const auto r = sm::sink::finish_row<sm::sink::learned>(lk, bb);
    return w_dot_otilde * r.complement + c_lse * r.lse_full + gbar * r.complement;
  };
  const auto r = sm::sink::finish_row<sm::sink::learned>(lk, b);
  const double fd = (loss(b + h) - loss(b - h)) / (2 * h);
  const double delta = w_dot_otilde * r.complement;
  const double lib = sm::sink::logit_grad(delta, gbar, r.mass, r.complement, c_lse);
  BOOST_TEST(std::abs(lib - fd) <= 1e-8, "logit_grad " << lib << " vs finite difference " << fd);
}

BOOST_AUTO_TEST_CASE(sink_traits_and_logits) {
  sm::attention_params p;
  p.fixed_sink = -1.25;
  const float sinks_f[] = {0.5f, 9.0f, -2.0f, 7.0f};
  const double sinks_d[] = {0.5, 9.0, -2.0, 7.0};
  BOOST_TEST(sm::sink::learned::logit(p, sinks_f, 2, 1) == -2.0f);  // strided: head 1 -> [2]
  BOOST_TEST(sm::sink::learned::logit(p, sinks_d, 1, 3) == 7.0);
  BOOST_TEST(sm::sink::fixed::logit(p, static_cast<const double*>(nullptr), 1, 5) == -1.25);
  BOOST_TEST(std::isinf(sm::sink::none::logit(p, sinks_f, 1, 0)));
  static_assert(sm::sink::none::first_key_is_sink && !sm::sink::none::has_logit);
  static_assert(sm::sink::learned::trainable && sm::sink::learned::needs_sinks_tensor);
  static_assert(!sm::sink::fixed::trainable && !sm::sink::fixed::needs_sinks_tensor &&
                sm::sink::fixed::has_logit);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// Gate
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(gate_hooks)

namespace {

constexpr int k_d = 5;

/// Scalar loss L = sum_c w_c Y_c + gbar * router_value(z), Y = forward_row(O, z).
template <class Gate>
double gate_loss(const std::vector<double>& o, const std::vector<double>& z,
                 const std::vector<double>& w, double gbar) {
  std::vector<double> y = o;
  const double g = Gate::forward_row(y.data(), k_d, z.data());
  BOOST_TEST(g == Gate::router_value(z.data(), k_d));
  double l = gbar * g;
  for (int c = 0; c < k_d; ++c) l += w[c] * y[c];
  return l;
}

template <class Gate>
void check_gate_fd(const std::vector<double>& z_in) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> u(-1.5, 1.5);
  std::vector<double> o(k_d), w(k_d);
  for (auto& x : o) x = u(rng);
  for (auto& x : w) x = u(rng);
  std::vector<double> z = z_in;
  const double gbar = 0.8;
  const int dz_n = Gate::logit_dim(k_d);

  std::vector<double> y = o;
  Gate::forward_row(y.data(), k_d, z.data());
  std::vector<double> d_attn(k_d, -99.0), dz(std::max(dz_n, 1), -99.0);
  Gate::backward_row(w.data(), y.data(), d_attn.data(), k_d, z.data(), gbar, dz.data());

  const double h = 1e-6;
  for (int c = 0; c < k_d; ++c) {  // dL/dO_c
    auto op = o, om = o;
    op[c] += h, om[c] -= h;
    const double fd = (gate_loss<Gate>(op, z, w, gbar) - gate_loss<Gate>(om, z, w, gbar)) / (2 * h);
    BOOST_TEST(std::abs(d_attn[c] - fd) <= 1e-8,
               Gate::name << " dO[" << c << "] " << d_attn[c] << " fd " << fd);
  }
  for (int i = 0; i < dz_n; ++i) {  // dL/dz_i
    auto zp = z, zm = z;
    zp[i] += h, zm[i] -= h;
    const double fd = (gate_loss<Gate>(o, zp, w, gbar) - gate_loss<Gate>(o, zm, w, gbar)) / (2 * h);
    BOOST_TEST(std::abs(dz[i] - fd) <= 1e-8,
               Gate::name << " dz[" << i << "] " << dz[i] << " fd " << fd);
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(none_passes_through) {
  std::vector<double> o{1, -2, 3, 4, 5}, dy{0.5, 0.25, -1, 2, 3}, d(5, 0);
  BOOST_TEST(sm::gate::none::forward_row(o.data(), 5, static_cast<const double*>(nullptr)) == 1.0);
  BOOST_TEST(o == (std::vector<double>{1, -2, 3, 4, 5}));
  BOOST_TEST(sm::gate::none::router_value(static_cast<const double*>(nullptr), 5) == 1.0);
  sm::gate::none::backward_row(dy.data(), o.data(), d.data(), 5,
                               static_cast<const double*>(nullptr), 3.0,
                               static_cast<double*>(nullptr));
  BOOST_TEST(d == dy);
  BOOST_TEST(sm::gate::none::logit_dim(64) == 0);
  BOOST_TEST(sm::gate::headwise::logit_dim(64) == 1);
  BOOST_TEST(sm::gate::elementwise::logit_dim(64) == 64);
}

BOOST_AUTO_TEST_CASE(headwise_forward_hand_values) {
  std::vector<double> o{2, -4, 1, 0, 8};
  const double z = std::log(3.0);  // sigmoid = 3/4
  const double g = sm::gate::headwise::forward_row(o.data(), 5, &z);
  BOOST_TEST(g == 0.75, boost::test_tools::tolerance(1e-15));
  BOOST_TEST(o[0] == 1.5, boost::test_tools::tolerance(1e-15));
  BOOST_TEST(o[4] == 6.0, boost::test_tools::tolerance(1e-15));
}

BOOST_AUTO_TEST_CASE(elementwise_router_is_channel_mean) {
  const std::vector<double> z{0.0, std::log(3.0), -std::log(3.0), 100.0, -100.0};
  const double want = (0.5 + 0.75 + 0.25 + 1.0 + 0.0) / 5;
  BOOST_TEST(sm::gate::elementwise::router_value(z.data(), 5) == want,
             boost::test_tools::tolerance(1e-14));
  std::vector<double> o(5, 2.0);
  BOOST_TEST(sm::gate::elementwise::forward_row(o.data(), 5, z.data()) == want,
             boost::test_tools::tolerance(1e-14));
  BOOST_TEST(o[1] == 1.5, boost::test_tools::tolerance(1e-15));
  BOOST_TEST(o[4] < 1e-40);
}

BOOST_AUTO_TEST_CASE(backward_matches_finite_differences) {
  check_gate_fd<sm::gate::none>({});
  for (double z0 : {-3.0, -0.2, 0.0, 1.1, 4.0}) check_gate_fd<sm::gate::headwise>({z0});
  check_gate_fd<sm::gate::elementwise>({-3.0, -0.2, 0.0, 1.1, 4.0});
  check_gate_fd<sm::gate::elementwise>({2.5, 2.5, -1.0, 0.3, -6.0});
}

// A gate's backward takes sigmoid(z) and 1 - sigmoid(z) from sigmoid_both (one exponential on the
// host's float path): each must be the bits sigmoid(z) and sigmoid(-z) give, signed zeros,
// infinities and the clamps of exp_poly included.
template <class F>
void check_sigmoid_both_bits() {
  std::vector<F> xs;
  using limits = std::numeric_limits<F>;
  for (F v : {F(0), F(1e-30), F(0.5), F(3), F(86.9), F(87.5), F(89), F(1e4), limits::infinity(),
              limits::denorm_min(), limits::max()}) {
    xs.push_back(v);
    xs.push_back(-v);
  }
  std::mt19937 rng(5);
  std::uniform_real_distribution<F> u(F(-30), F(30));
  for (int i = 0; i < 2000; ++i) xs.push_back(u(rng));
  for (F x : xs) {
    BOOST_TEST_CONTEXT("x = " << std::setprecision(17) << x) {
      const sm::math::sigmoid_pair<F> both = sm::math::sigmoid_both(x);
      const F value = sm::math::sigmoid(x), complement = sm::math::sigmoid(-x);
      BOOST_TEST(std::memcmp(&both.value, &value, sizeof(F)) == 0);
      BOOST_TEST(std::memcmp(&both.complement, &complement, sizeof(F)) == 0);
    }
  }
}

BOOST_AUTO_TEST_CASE(sigmoid_both_is_two_sigmoids_bit_for_bit) {
  check_sigmoid_both_bits<float>();
  check_sigmoid_both_bits<double>();
}

BOOST_AUTO_TEST_CASE(extreme_logits_give_no_nan) {
  for (double zz : {-100.0, 100.0, -1e4, 1e4}) {
    BOOST_TEST_CONTEXT("z = " << zz) {
      const std::vector<float> zf(4, float(zz));
      const std::vector<double> zd(4, zz);
      const std::vector<float> dyf{1, -2, 3, -4};
      std::vector<float> of{1, 2, 3, 4}, dof(4), dzf(4);
      const float gh = sm::gate::headwise::forward_row(of.data(), 4, zf.data());
      BOOST_TEST(gh == (zz > 0 ? 1.0f : 0.0f), boost::test_tools::tolerance(1e-30f));
      sm::gate::headwise::backward_row(dyf.data(), of.data(), dof.data(), 4, zf.data(), 2.0f,
                                       dzf.data());
      for (int c = 0; c < 4; ++c) BOOST_TEST(!std::isnan(dof[c]));
      BOOST_TEST(std::isfinite(dzf[0]));
      BOOST_TEST(std::abs(dzf[0]) < 1e-30f);  // g (1 - g) ~ e^-100 and (1 - g) Y ~ 0
      std::vector<float> oe{1, 2, 3, 4}, doe(4), dze(4);
      const float ge = sm::gate::elementwise::forward_row(oe.data(), 4, zf.data());
      BOOST_TEST(ge == (zz > 0 ? 1.0f : 0.0f), boost::test_tools::tolerance(1e-30f));
      sm::gate::elementwise::backward_row(dyf.data(), oe.data(), doe.data(), 4, zf.data(), 2.0f,
                                          dze.data());
      for (int c = 0; c < 4; ++c) {
        BOOST_TEST(std::isfinite(doe[c]));
        BOOST_TEST(std::isfinite(dze[c]));
        BOOST_TEST(std::abs(dze[c]) < 1e-30f);
      }
      std::vector<double> od{1, 2, 3, 4};
      const double gd = sm::gate::elementwise::forward_row(od.data(), 4, zd.data());
      BOOST_TEST(std::isfinite(gd));
      BOOST_TEST(std::isfinite(sm::gate::headwise::router_value(zd.data(), 1)));
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// Route and composition
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(route_and_composition)

BOOST_AUTO_TEST_CASE(router_and_split) {
  const double c = 0.8, g = 0.25, gbar = 2.0;
  double gs = -1, gg = -1;
  BOOST_TEST(sm::route::sink_mass::router(c, g) == 0.8);
  sm::route::sink_mass::split(gbar, c, g, gs, gg);
  BOOST_TEST(gs == 2.0);
  BOOST_TEST(gg == 0.0);
  BOOST_TEST(sm::route::output_gate::router(c, g) == 0.25);
  sm::route::output_gate::split(gbar, c, g, gs, gg);
  BOOST_TEST(gs == 0.0);
  BOOST_TEST(gg == 2.0);
  BOOST_TEST(sm::route::product::router(c, g) == 0.2, boost::test_tools::tolerance(1e-15));
  sm::route::product::split(gbar, c, g, gs, gg);
  BOOST_TEST(gs == 0.5);                                       // dG/d(1-A) = g
  BOOST_TEST(gg == 1.6, boost::test_tools::tolerance(1e-15));  // dG/d(gate) = 1 - A
  float fs = -1, fg = -1;
  sm::route::product::split(1.0f, 0.5f, 0.5f, fs, fg);
  BOOST_TEST(fs == 0.5f);
  BOOST_TEST(fg == 0.5f);
  static_assert(sm::route::sink_mass::uses_sink && !sm::route::sink_mass::uses_gate);
  static_assert(!sm::route::output_gate::uses_sink && sm::route::output_gate::uses_gate);
  static_assert(sm::route::product::uses_sink && sm::route::product::uses_gate);
}

BOOST_AUTO_TEST_CASE(deduced_route) {
  using namespace sm;
  static_assert(std::is_same_v<route::resolve_t<route::deduced, gate::none>, route::sink_mass>);
  static_assert(
      std::is_same_v<route::resolve_t<route::deduced, gate::headwise>, route::output_gate>);
  static_assert(
      std::is_same_v<route::resolve_t<route::deduced, gate::elementwise>, route::output_gate>);
  static_assert(std::is_same_v<route::resolve_t<route::product, gate::headwise>, route::product>);
  static_assert(
      std::is_same_v<route::resolve_t<route::sink_mass, gate::elementwise>, route::sink_mass>);
  static_assert(std::is_same_v<attention<sink::learned, gate::none, mask::causal>::route_type,
                               route::sink_mass>);
  static_assert(std::is_same_v<attention<sink::learned, gate::headwise, mask::causal>::route_type,
                               route::output_gate>);
  BOOST_TEST((std::is_same_v<
              attention<sink::none, gate::elementwise, mask::none, route::product>::route_type,
              route::product>));
}

BOOST_AUTO_TEST_CASE(excludes_sink_only_queries) {
  using namespace sm;
  // Vanilla: key 0 is the sink and G = 1 - P[t, 0]; the first query's G is structurally 0.
  BOOST_TEST(vanilla_attention<>::excludes_sink_only_queries);
  BOOST_TEST((attention<sink::none, gate::none, mask::sliding_window>::excludes_sink_only_queries));
  // A logit sink: the first query has a real router value.
  BOOST_TEST(!sink_attention<>::excludes_sink_only_queries);
  BOOST_TEST(!(attention<sink::fixed, gate::none, mask::causal>::excludes_sink_only_queries));
  // Gated: G is the gate, not the sink mass.
  BOOST_TEST(!gated_attention<>::excludes_sink_only_queries);
  BOOST_TEST(!(gated_attention<mask::causal, gate::headwise>::excludes_sink_only_queries));
  // Product with a vanilla sink still multiplies by 1 - P[t, 0] = 0 at the first query.
  BOOST_TEST(
      (attention<sink::none, gate::headwise, mask::causal, route::product>::excludes_sink_only_queries));
  BOOST_TEST(!(attention<sink::learned, gate::headwise, mask::causal,
                         route::product>::excludes_sink_only_queries));
}

BOOST_AUTO_TEST_CASE(aliases_have_expected_policies) {
  using namespace sm;
  using V = vanilla_attention<>;
  using S = sink_attention<>;
  using G = gated_attention<>;
  static_assert(std::is_same_v<V::sink_type, sink::none> &&
                std::is_same_v<V::gate_type, gate::none> &&
                std::is_same_v<V::mask_type, mask::causal> &&
                std::is_same_v<V::route_type, route::sink_mass> &&
                std::is_same_v<V::score_type, score::scaled>);
  static_assert(std::is_same_v<S::sink_type, sink::learned> &&
                std::is_same_v<S::gate_type, gate::none> &&
                std::is_same_v<S::mask_type, mask::causal> &&
                std::is_same_v<S::route_type, route::sink_mass>);
  static_assert(std::is_same_v<G::sink_type, sink::none> &&
                std::is_same_v<G::gate_type, gate::elementwise> &&
                std::is_same_v<G::mask_type, mask::causal> &&
                std::is_same_v<G::route_type, route::output_gate>);
  static_assert(std::is_same_v<vanilla_attention<mask::streaming>::mask_type, mask::streaming>);
  static_assert(
      std::is_same_v<sink_attention<mask::sliding_window>::mask_type, mask::sliding_window>);
  static_assert(
      std::is_same_v<gated_attention<mask::none, gate::headwise>::gate_type, gate::headwise>);
  BOOST_TEST((std::is_same_v<V, attention<sink::none, gate::none, mask::causal>>));
  BOOST_TEST((std::is_same_v<S, attention<sink::learned, gate::none, mask::causal>>));
  BOOST_TEST((std::is_same_v<G, attention<sink::none, gate::elementwise, mask::causal>>));
}

BOOST_AUTO_TEST_SUITE_END()
