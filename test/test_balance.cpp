// sinkmoe::balance (docs/method.md sections 3-5) against the independent fp64 oracle ref::balance,
// and its own promises:
//  - importance, balanced CV, loss and dL/dG per layer equal the oracle's (random routers and
//    counted masks, several layers, 0/1/2/H-1 shared heads, population and sample std);
//  - a fixed shared set equal to the top-m reproduces top-m selection; any other set balances
//    exactly the other heads and gets an exactly-zero gradient;
//  - data parallel: accumulate() on two halves, sums all-reduced, evaluate() and router_grad()
//    reproduce the whole-batch result;
//  - metrics on hand-made importances (effective heads, dormant fraction, CV, loss), degenerate
//    inputs (no counted token, all-zero router) without NaN;
//  - sum_h dL/dImp_h = -2 lambda n CV^2 / mu; dL/dG matches central differences of the loss;
//  - first_token_sink_fraction (Gu et al., threshold 0.3) on hand-made data;
//  - results do not depend on the thread count (bitwise);
//  - head_metrics() on hand-computed sums (several dormant thresholds, a layer with no counted
//    token), bitwise equal to evaluate()'s fields, and its argument checks;
//  - the range overloads (std::vector, std::array, C array, std::span; F deduced) give bitwise the
//    results of the span calls.
#define BOOST_TEST_MODULE balance
#include <algorithm>
#include <array>
#include <boost/test/unit_test.hpp>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <sinkmoe/sinkmoe.hpp>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "support/reference.hpp"

namespace sm = sinkmoe;
namespace bal = sinkmoe::balance;
namespace ref = sinkmoe::testing::ref;

namespace {

/// One layer's router values [B, H, T] and counted mask [B, T], owned.
struct layer_data {
  int B, H, T;
  std::vector<double> router;
  std::vector<std::uint8_t> counted;

  bal::layer_input<double> input() const {
    return {{router.data(), {B, H, T}}, {counted.data(), {B, T}}};
  }
  ref::config oracle_config() const {
    ref::config c{};
    c.B = B, c.Tq = T, c.Tk = T, c.Hq = H, c.Hkv = 1, c.D = 1, c.scale = 1;
    return c;
  }
  std::vector<int> counted_int() const { return {counted.begin(), counted.end()}; }
};

/// Random router in (0, 1) with a per-head bias spaced `spread` apart (so top-m selection has
/// clear margins), and a counted mask with about 1 in 4 tokens left out.
layer_data random_layer(std::mt19937& rng, int B, int H, int T, double spread = 0.08) {
  layer_data L{B, H, T, {}, {}};
  std::uniform_real_distribution<double> u(0.0, 0.3);
  std::vector<int> perm(H);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  L.router.resize(std::size_t(B) * H * T);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int t = 0; t < T; ++t)
        L.router[(std::size_t(b) * H + h) * T + t] = 0.1 + spread * perm[h] + u(rng);
  L.counted.resize(std::size_t(B) * T);
  std::bernoulli_distribution keep(0.75);
  for (auto& c : L.counted) c = keep(rng) ? 1 : 0;
  L.counted[0] = 1;
  return L;
}

std::vector<bal::layer_input<double>> inputs_of(const std::vector<layer_data>& layers) {
  std::vector<bal::layer_input<double>> in;
  for (const auto& l : layers) in.push_back(l.input());
  return in;
}

/// Output buffers for dL/dG, one per layer, pre-filled with a sentinel.
struct grad_buffers {
  std::vector<std::vector<double>> data;
  std::vector<sm::tensor_view<double, 3>> views;
  explicit grad_buffers(const std::vector<layer_data>& layers, double fill = 12345.0) {
    data.reserve(layers.size());
    for (const auto& l : layers) {
      data.emplace_back(l.router.size(), fill);
      views.push_back({data.back().data(), {l.B, l.H, l.T}});
    }
  }
};

double rel_err(double got, double want, double floor) {
  return std::abs(got - want) / std::max(std::abs(want), floor);
}

/// Entries differing by more than rtol relative (floor: rtol-relative to the largest |want|);
/// entries the oracle has at exactly 0 must be exactly 0.
std::size_t mismatches(const std::vector<double>& got, const std::vector<double>& want, double rtol,
                       std::string& first) {
  if (got.size() != want.size()) return std::max(got.size(), want.size()) + 1;
  double scale = 0;
  for (double w : want) scale = std::max(scale, std::abs(w));
  std::size_t bad = 0;
  std::ostringstream os;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const bool ok = want[i] == 0 ? got[i] == 0 : rel_err(got[i], want[i], 1e-3 * scale) <= rtol;
    if (!ok && bad++ < 3) os << " [" << i << "] got " << got[i] << " want " << want[i] << ";";
  }
  first = os.str();
  return bad;
}

#define CHECK_VEC(got, want, rtol)                                                      \
  do {                                                                                  \
    std::string first_;                                                                 \
    const std::size_t bad_ = mismatches((got), (want), (rtol), first_);                 \
    BOOST_TEST(bad_ == 0u, #got " vs " #want ": " << bad_ << " mismatches:" << first_); \
  } while (0)

/// The top-m heads by importance (ties to the lower id), sorted: the oracle's convention.
std::vector<int> top_m(const std::vector<double>& imp, int m) {
  std::vector<int> ids(imp.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](int a, int b) { return imp[a] > imp[b]; });
  ids.resize(m);
  std::sort(ids.begin(), ids.end());
  return ids;
}

/// CV over a set (population or sample); 0 when degenerate (the oracle's convention).
double cv_of(const std::vector<double>& x, bool sample) {
  const double n = double(x.size());
  if (n < 2) return 0;
  const double mu = std::accumulate(x.begin(), x.end(), 0.0) / n;
  if (mu <= 0) return 0;
  double ss = 0;
  for (double v : x) ss += (v - mu) * (v - mu);
  return std::sqrt(ss / (sample ? n - 1 : n)) / mu;
}

bal::importance_sums make_sums(const std::vector<std::vector<double>>& importance, double tokens) {
  bal::importance_sums s;
  s.layers = int(importance.size());
  s.heads = int(importance[0].size());
  for (const auto& layer : importance) {
    for (double x : layer) s.router_sum.push_back(x * tokens);
    s.token_count.push_back(tokens);
  }
  return s;
}

}  // namespace

BOOST_AUTO_TEST_CASE(matches_oracle_over_layers_shared_heads_and_std) {
  std::mt19937 rng(2024);
  int cases = 0;
  for (int H : {4, 7})
    for (int shared : {0, 1, 2, H - 1})
      for (bool sample : {false, true}) {
        const int B = 3, T = 6;
        std::vector<layer_data> layers;
        for (int l = 0; l < 3; ++l) layers.push_back(random_layer(rng, B, H, T));
        const bal::importance_cv2 reg{.lambda = 0.37, .shared_heads = shared, .sample_std = sample};
        const auto in = inputs_of(layers);
        grad_buffers grads(layers);
        const bal::report rep = reg.forward_backward<double>(
            sm::exec::host{2}, std::span<const bal::layer_input<double>>(in),
            std::span<const sm::tensor_view<double, 3>>(grads.views));
        ++cases;
        BOOST_TEST_CONTEXT("H=" << H << " shared=" << shared << " sample_std=" << sample) {
          BOOST_TEST_REQUIRE(rep.layers.size() == 3u);
          double loss = 0, mean_cv = 0;
          for (int l = 0; l < 3; ++l) {
            BOOST_TEST_CONTEXT("layer " << l) {
              const layer_data& L = layers[l];
              const ref::balance_result want = ref::balance(
                  L.oracle_config(), L.router, L.counted_int(), {0.37, shared, sample});
              const ref::balance_result want_all =
                  ref::balance(L.oracle_config(), L.router, L.counted_int(), {0.37, 0, sample});
              const bal::layer_report& got = rep.layers[l];
              CHECK_VEC(got.importance, want.importance, 1e-12);
              // The oracle's cv is over the balanced heads: the library's balanced_cv. The
              // library's cv is over all heads: the oracle's cv with no shared heads.
              BOOST_TEST(rel_err(got.balanced_cv, want.cv, 1e-300) <= 1e-12,
                         "balanced_cv " << got.balanced_cv << " vs " << want.cv);
              BOOST_TEST(rel_err(got.cv, want_all.cv, 1e-300) <= 1e-12,
                         "cv " << got.cv << " vs " << want_all.cv);
              BOOST_TEST(rel_err(got.loss, want.loss, 1e-300) <= 1e-12,
                         "loss " << got.loss << " vs " << want.loss);
              BOOST_TEST(got.shared == top_m(want.importance, shared));
              const long n_counted = std::count(L.counted.begin(), L.counted.end(), 1);
              BOOST_TEST(got.tokens == double(n_counted));
              CHECK_VEC(grads.data[l], want.drouter, 1e-12);
              loss += want.loss;
              mean_cv += want_all.cv / 3;
            }
          }
          BOOST_TEST(rel_err(rep.loss, loss, 1e-300) <= 1e-12,
                     "total " << rep.loss << " vs " << loss);
          BOOST_TEST(rel_err(rep.mean_cv, mean_cv, 1e-300) <= 1e-12);
          BOOST_TEST((rep.loss > 0) == (H - shared >= 2));  // n = 1: CV 0 by definition
        }
      }
  BOOST_TEST(cases == 16);
}

// Float routers: the same results to float precision (dL/dG is written in float).
BOOST_AUTO_TEST_CASE(float_router_matches_oracle) {
  std::mt19937 rng(5);
  const layer_data L = random_layer(rng, 2, 5, 9);
  std::vector<float> router_f(L.router.begin(), L.router.end());
  std::vector<double> router_rounded(router_f.begin(), router_f.end());
  std::vector<float> grad(L.router.size(), 12345.0f);
  const bal::layer_input<float> in{{router_f.data(), {2, 5, 9}}, {L.counted.data(), {2, 9}}};
  const sm::tensor_view<float, 3> gv{grad.data(), {2, 5, 9}};
  const bal::importance_cv2 reg{.lambda = 1e-2, .shared_heads = 1};
  const auto rep =
      reg.forward_backward<float>(sm::exec::host{2}, std::span(&in, 1), std::span(&gv, 1));
  const auto want =
      ref::balance(L.oracle_config(), router_rounded, L.counted_int(), {1e-2, 1, false});
  CHECK_VEC(rep.layers[0].importance, want.importance, 1e-12);  // summed in double
  BOOST_TEST(rel_err(rep.loss, want.loss, 1e-300) <= 1e-12);
  CHECK_VEC(std::vector<double>(grad.begin(), grad.end()), want.drouter, 1e-6);
}

BOOST_AUTO_TEST_CASE(fixed_shared_selection) {
  std::mt19937 rng(11);
  const int B = 2, H = 6, T = 7;
  std::vector<layer_data> layers{random_layer(rng, B, H, T), random_layer(rng, B, H, T)};
  const auto in = inputs_of(layers);
  const auto in_span = std::span<const bal::layer_input<double>>(in);
  const bal::importance_cv2 top{.lambda = 0.5, .shared_heads = 2};
  grad_buffers g_top(layers);
  const auto rep_top = top.forward_backward<double>(
      sm::exec::host{2}, in_span, std::span<const sm::tensor_view<double, 3>>(g_top.views));

  // The same ids, given: bitwise the same report and gradient.
  bal::importance_cv2 fixed{.lambda = 0.5, .selection = bal::shared_selection::fixed};
  fixed.fixed_shared = {rep_top.layers[0].shared, rep_top.layers[1].shared};
  // Order of the given ids does not matter.
  std::reverse(fixed.fixed_shared[1].begin(), fixed.fixed_shared[1].end());
  grad_buffers g_fix(layers);
  const auto rep_fix = fixed.forward_backward<double>(
      sm::exec::host{2}, in_span, std::span<const sm::tensor_view<double, 3>>(g_fix.views));
  BOOST_TEST(rep_fix.loss == rep_top.loss);
  for (int l = 0; l < 2; ++l) {
    BOOST_TEST(rep_fix.layers[l].shared == rep_top.layers[l].shared);
    BOOST_TEST(rep_fix.layers[l].balanced_cv == rep_top.layers[l].balanced_cv);
    BOOST_TEST(g_fix.data[l] == g_top.data[l]);
  }

  // Other ids: the balanced set is exactly the complement, and the gradient on the given ids is 0.
  bal::importance_cv2 other{.lambda = 0.5, .selection = bal::shared_selection::fixed};
  // Layer 0: the two least important heads; layer 1: the least important one.
  const auto least = [&](int l, int m) {
    std::vector<double> neg = rep_top.layers[l].importance;
    for (double& x : neg) x = -x;
    return top_m(neg, m);
  };
  other.fixed_shared = {least(0, 2), least(1, 1)};
  for (int l = 0; l < 2; ++l)  // make sure the sets differ from the top-m
    BOOST_TEST_REQUIRE(other.fixed_shared[l] != rep_top.layers[l].shared);
  grad_buffers g_other(layers);
  const auto rep_other = other.forward_backward<double>(
      sm::exec::host{2}, in_span, std::span<const sm::tensor_view<double, 3>>(g_other.views));
  BOOST_TEST(rep_other.loss != rep_top.loss);
  double loss = 0;
  for (int l = 0; l < 2; ++l) {
    BOOST_TEST_CONTEXT("layer " << l) {
      const auto& lr = rep_other.layers[l];
      BOOST_TEST(lr.shared == other.fixed_shared[l]);
      std::vector<double> balanced;
      for (int h = 0; h < H; ++h)
        if (!std::count(lr.shared.begin(), lr.shared.end(), h))
          balanced.push_back(lr.importance[h]);
      const double cv = cv_of(balanced, false);
      BOOST_TEST(rel_err(lr.balanced_cv, cv, 1e-300) <= 1e-13);
      BOOST_TEST(rel_err(lr.loss, 0.5 * balanced.size() * cv * cv, 1e-300) <= 1e-13);
      loss += lr.loss;
      const layer_data& L = layers[l];
      long nonzero = 0;
      for (int b = 0; b < B; ++b)
        for (int h = 0; h < H; ++h)
          for (int t = 0; t < T; ++t) {
            const double gval = g_other.data[l][(std::size_t(b) * H + h) * T + t];
            const bool is_shared = std::count(lr.shared.begin(), lr.shared.end(), h) != 0;
            if (is_shared || !L.counted[std::size_t(b) * T + t]) {
              BOOST_TEST(gval == 0.0);  // exactly zero, not just small
            } else {
              nonzero += gval != 0.0;
            }
          }
      BOOST_TEST(nonzero > 0);
    }
  }
  BOOST_TEST(rel_err(rep_other.loss, loss, 1e-300) <= 1e-15);

  // Its gradient is the gradient of its loss (no selection flips under a fixed set).
  const double h = 1e-6;
  std::vector<layer_data> pert = layers;
  for (std::size_t i :
       {std::size_t(1), std::size_t(T + 2), std::size_t(5 * T + 3), std::size_t(H * T + 4)}) {
    const double saved = pert[0].router[i];
    pert[0].router[i] = saved + h;
    const double lp =
        other
            .forward<double>(sm::exec::host{1},
                             std::span<const bal::layer_input<double>>(inputs_of(pert)))
            .loss;
    pert[0].router[i] = saved - h;
    const double lm =
        other
            .forward<double>(sm::exec::host{1},
                             std::span<const bal::layer_input<double>>(inputs_of(pert)))
            .loss;
    pert[0].router[i] = saved;
    const double fd = (lp - lm) / (2 * h);
    BOOST_TEST(std::abs(g_other.data[0][i] - fd) <= 1e-8 * std::max(1.0, std::abs(fd)),
               "entry " << i << ": " << g_other.data[0][i] << " vs fd " << fd);
  }
}

// Data-parallel: two ranks each accumulate half of the batch; the sums are all-reduced; every
// rank evaluates the same report and writes the gradient of its own half.
BOOST_AUTO_TEST_CASE(data_parallel_halves_equal_whole_batch) {
  std::mt19937 rng(99);
  const int B = 4, H = 5, T = 6;
  std::vector<layer_data> layers{random_layer(rng, B, H, T), random_layer(rng, B, H, T)};
  const bal::importance_cv2 reg{.lambda = 0.1, .shared_heads = 1};
  const auto whole = inputs_of(layers);
  const auto whole_span = std::span<const bal::layer_input<double>>(whole);
  const bal::importance_sums sums_whole = bal::accumulate<double>(sm::exec::host{2}, whole_span);
  const bal::report rep_whole = reg.evaluate(sums_whole);
  grad_buffers g_whole(layers);
  reg.router_grad<double>(sm::exec::host{2}, rep_whole, whole_span,
                          std::span<const sm::tensor_view<double, 3>>(g_whole.views));

  // Rank r owns batch rows [2r, 2r + 2): views into the same buffers.
  std::vector<bal::layer_input<double>> half[2];
  for (int r = 0; r < 2; ++r)
    for (const auto& L : layers)
      half[r].push_back({{L.router.data() + std::size_t(2 * r) * H * T, {2, H, T}},
                         {L.counted.data() + std::size_t(2 * r) * T, {2, T}}});
  bal::importance_sums reduced = bal::accumulate<double>(
      sm::exec::host{1}, std::span<const bal::layer_input<double>>(half[0]));
  const bal::importance_sums other = bal::accumulate<double>(
      sm::exec::host{1}, std::span<const bal::layer_input<double>>(half[1]));
  BOOST_TEST_REQUIRE(reduced.router_sum.size() == other.router_sum.size());
  for (std::size_t i = 0; i < reduced.router_sum.size(); ++i)
    reduced.router_sum[i] += other.router_sum[i];
  for (std::size_t i = 0; i < reduced.token_count.size(); ++i)
    reduced.token_count[i] += other.token_count[i];

  BOOST_TEST(reduced.token_count == sums_whole.token_count);
  std::string first;
  BOOST_TEST(mismatches(reduced.router_sum, sums_whole.router_sum, 1e-14, first) == 0u, first);
  const bal::report rep = reg.evaluate(reduced);
  BOOST_TEST(rel_err(rep.loss, rep_whole.loss, 1e-300) <= 1e-12);
  BOOST_TEST(rel_err(rep.mean_cv, rep_whole.mean_cv, 1e-300) <= 1e-12);
  for (int l = 0; l < 2; ++l) {
    CHECK_VEC(rep.layers[l].importance, rep_whole.layers[l].importance, 1e-13);
    BOOST_TEST(rep.layers[l].shared == rep_whole.layers[l].shared);
  }
  // Each rank's gradient for its half equals the whole-batch gradient's rows.
  for (int r = 0; r < 2; ++r) {
    std::vector<std::vector<double>> buf(2, std::vector<double>(std::size_t(2) * H * T, 12345.0));
    std::vector<sm::tensor_view<double, 3>> views{{buf[0].data(), {2, H, T}},
                                                  {buf[1].data(), {2, H, T}}};
    reg.router_grad<double>(sm::exec::host{1}, rep,
                            std::span<const bal::layer_input<double>>(half[r]),
                            std::span<const sm::tensor_view<double, 3>>(views));
    for (int l = 0; l < 2; ++l) {
      const auto begin = g_whole.data[l].begin() + std::ptrdiff_t(2 * r) * H * T;
      CHECK_VEC(buf[l], std::vector<double>(begin, begin + std::ptrdiff_t(2) * H * T), 1e-12);
    }
  }
}

BOOST_AUTO_TEST_CASE(metrics_on_hand_made_importance) {
  const bal::importance_cv2 reg{.lambda = 1.0};
  // All heads equal: H effective heads, CV 0, loss 0, none dormant.
  {
    const auto rep = reg.evaluate(make_sums({{0.5, 0.5, 0.5, 0.5}}, 4));
    const auto& lr = rep.layers[0];
    BOOST_TEST(lr.effective_heads == 4.0, boost::test_tools::tolerance(1e-15));
    BOOST_TEST(lr.cv == 0.0);
    BOOST_TEST(lr.balanced_cv == 0.0);
    BOOST_TEST(lr.loss == 0.0);
    BOOST_TEST(lr.dormant_fraction == 0.0);
    BOOST_TEST(lr.tokens == 4.0);
    BOOST_TEST(lr.importance == (std::vector<double>{0.5, 0.5, 0.5, 0.5}));
    BOOST_TEST(rep.loss == 0.0);
  }
  // One working head of four ("nominally 4, effectively 1").
  {
    const auto rep = reg.evaluate(make_sums({{1.0, 0.0, 0.0, 0.0}}, 2));
    const auto& lr = rep.layers[0];
    BOOST_TEST(lr.effective_heads == 1.0, boost::test_tools::tolerance(1e-15));
    BOOST_TEST(lr.dormant_fraction == 0.75);
    BOOST_TEST(lr.cv == std::sqrt(3.0), boost::test_tools::tolerance(1e-14));  // population
    BOOST_TEST(lr.loss == 4 * 3.0, boost::test_tools::tolerance(1e-14));       // lambda n CV^2
    bal::importance_cv2 sample = reg;
    sample.sample_std = true;
    const auto rs = sample.evaluate(make_sums({{1.0, 0.0, 0.0, 0.0}}, 2));
    BOOST_TEST(rs.layers[0].cv == 2.0, boost::test_tools::tolerance(1e-14));  // std 0.5, mean 0.25
    BOOST_TEST(rs.layers[0].loss == 16.0, boost::test_tools::tolerance(1e-14));
    // One shared head (the working one): the rest are balanced (all 0: CV 0 by definition).
    bal::importance_cv2 shared = reg;
    shared.shared_heads = 1;
    const auto r1 = shared.evaluate(make_sums({{1.0, 0.0, 0.0, 0.0}}, 2));
    BOOST_TEST(r1.layers[0].shared == std::vector<int>{0});
    BOOST_TEST(r1.layers[0].balanced_cv == 0.0);
    BOOST_TEST(r1.layers[0].loss == 0.0);
    BOOST_TEST(r1.layers[0].cv == std::sqrt(3.0), boost::test_tools::tolerance(1e-14));
  }
  // Mixed, two layers; threshold moves the dormant count.
  {
    const std::vector<double> imp{0.05, 0.5, 0.5, 0.95};
    const auto rep = reg.evaluate(make_sums({imp, {0.2, 0.4, 0.6, 0.8}}, 3));
    const auto& lr = rep.layers[0];
    BOOST_TEST(lr.effective_heads == 4.0 / 1.405, boost::test_tools::tolerance(1e-13));
    BOOST_TEST(lr.dormant_fraction == 0.25);
    const double cv0 = cv_of(imp, false), cv1 = cv_of({0.2, 0.4, 0.6, 0.8}, false);
    BOOST_TEST(lr.cv == cv0, boost::test_tools::tolerance(1e-13));
    BOOST_TEST(rep.loss == 4 * cv0 * cv0 + 4 * cv1 * cv1, boost::test_tools::tolerance(1e-13));
    BOOST_TEST(rep.mean_cv == (cv0 + cv1) / 2, boost::test_tools::tolerance(1e-13));
    BOOST_TEST(rep.layers[1].effective_heads == 4.0 / 1.2 * 1.0,
               boost::test_tools::tolerance(1e-13));
    bal::importance_cv2 high = reg;
    high.dormant_threshold = 0.6;
    BOOST_TEST(high.evaluate(make_sums({imp}, 3)).layers[0].dormant_fraction == 0.75);
    // lambda scales the loss linearly and nothing else.
    bal::importance_cv2 tenth = reg;
    tenth.lambda = 0.1;
    const auto r10 = tenth.evaluate(make_sums({imp}, 3));
    BOOST_TEST(r10.loss == 0.1 * 4 * cv0 * cv0, boost::test_tools::tolerance(1e-13));
    BOOST_TEST(r10.layers[0].cv == lr.cv);
  }
}

BOOST_AUTO_TEST_CASE(degenerate_inputs_give_zero_and_no_nan) {
  const int B = 2, H = 4, T = 5;
  const bal::importance_cv2 reg{.lambda = 1.0, .shared_heads = 1};
  std::mt19937 rng(3);
  // No counted token.
  {
    layer_data L = random_layer(rng, B, H, T);
    std::fill(L.counted.begin(), L.counted.end(), 0);
    grad_buffers g({L});
    const auto in = L.input();
    const auto rep = reg.forward_backward<double>(
        sm::exec::host{2}, std::span(&in, 1), std::span<const sm::tensor_view<double, 3>>(g.views));
    const auto& lr = rep.layers[0];
    BOOST_TEST(rep.loss == 0.0);
    BOOST_TEST(lr.tokens == 0.0);
    BOOST_TEST(lr.importance == std::vector<double>(H, 0.0));
    BOOST_TEST(lr.cv == 0.0);
    BOOST_TEST(lr.balanced_cv == 0.0);
    BOOST_TEST(lr.effective_heads == 0.0);
    BOOST_TEST(!std::isnan(rep.mean_cv));
    BOOST_TEST(g.data[0] == std::vector<double>(L.router.size(), 0.0));  // written, all zero
  }
  // Router identically zero (every head fully collapsed onto the sink): mean G = 0.
  {
    layer_data L = random_layer(rng, B, H, T);
    std::fill(L.router.begin(), L.router.end(), 0.0);
    grad_buffers g({L});
    const auto in = L.input();
    const auto rep = reg.forward_backward<double>(
        sm::exec::host{2}, std::span(&in, 1), std::span<const sm::tensor_view<double, 3>>(g.views));
    BOOST_TEST(rep.loss == 0.0);
    BOOST_TEST(rep.layers[0].cv == 0.0);
    BOOST_TEST(rep.layers[0].effective_heads == 0.0);
    BOOST_TEST(rep.layers[0].dormant_fraction == 1.0);
    BOOST_TEST(g.data[0] == std::vector<double>(L.router.size(), 0.0));
    const auto want = ref::balance(L.oracle_config(), L.router, L.counted_int(), {1.0, 1, false});
    BOOST_TEST(want.loss == 0.0);
  }
  // Sample std with a single balanced head: CV 0, zero gradient (oracle agrees).
  {
    const layer_data L = random_layer(rng, B, H, T);
    bal::importance_cv2 one{.lambda = 1.0, .shared_heads = H - 1, .sample_std = true};
    grad_buffers g({L});
    const auto in = L.input();
    const auto rep = one.forward_backward<double>(
        sm::exec::host{2}, std::span(&in, 1), std::span<const sm::tensor_view<double, 3>>(g.views));
    BOOST_TEST(rep.loss == 0.0);
    BOOST_TEST(rep.layers[0].balanced_cv == 0.0);
    BOOST_TEST(rep.layers[0].cv > 0.0);
    BOOST_TEST(g.data[0] == std::vector<double>(L.router.size(), 0.0));
  }
}

// docs/method.md section 5: sum_h dL/dImp_h = -2 lambda n CV^2 / mu (population std), and the
// per-head form (2 lambda / mu^2) (Imp_h - mu (1 + CV^2)).
BOOST_AUTO_TEST_CASE(importance_gradient_identity) {
  std::mt19937 rng(17);
  std::uniform_real_distribution<double> u(0.05, 0.95);
  for (int shared : {0, 1, 3})
    for (int trial = 0; trial < 5; ++trial) {
      std::vector<double> imp(8);
      for (auto& x : imp) x = u(rng);
      const double lambda = 0.3;
      const bal::importance_cv2 reg{.lambda = lambda, .shared_heads = shared};
      const auto rep = reg.evaluate(make_sums({imp}, 10));
      const auto& lr = rep.layers[0];
      const std::vector<double> g = reg.importance_grad(lr);
      std::vector<double> balanced;
      for (int h = 0; h < 8; ++h)
        if (!std::count(lr.shared.begin(), lr.shared.end(), h)) balanced.push_back(imp[h]);
      const double n = double(balanced.size());
      const double mu = std::accumulate(balanced.begin(), balanced.end(), 0.0) / n;
      const double cv = lr.balanced_cv;
      BOOST_TEST(std::accumulate(g.begin(), g.end(), 0.0) == -2 * lambda * n * cv * cv / mu,
                 boost::test_tools::tolerance(1e-12));
      BOOST_TEST(std::accumulate(g.begin(), g.end(), 0.0) < 0);
      for (int h = 0; h < 8; ++h) {
        const bool is_shared = std::count(lr.shared.begin(), lr.shared.end(), h) != 0;
        const double want =
            is_shared ? 0.0 : 2 * lambda / (mu * mu) * (imp[h] - mu * (1 + cv * cv));
        if (is_shared) {
          BOOST_TEST(g[h] == 0.0);
        } else {
          BOOST_TEST(std::abs(g[h] - want) <= 1e-12 * std::max(1.0, std::abs(want)));
        }
      }
    }
}

// dL/dG against central differences of evaluate().loss (through accumulate), top-m selection with
// clear margins so no perturbation flips the shared set.
BOOST_AUTO_TEST_CASE(router_gradient_matches_finite_differences) {
  std::mt19937 rng(23);
  for (bool sample : {false, true})
    for (int shared : {0, 2}) {
      const int B = 2, H = 5, T = 4;
      std::vector<layer_data> layers{random_layer(rng, B, H, T, 0.1),
                                     random_layer(rng, B, H, T, 0.1)};
      const bal::importance_cv2 reg{.lambda = 0.7, .shared_heads = shared, .sample_std = sample};
      grad_buffers g(layers);
      const auto in = inputs_of(layers);
      reg.forward_backward<double>(sm::exec::host{2}, std::span<const bal::layer_input<double>>(in),
                                   std::span<const sm::tensor_view<double, 3>>(g.views));
      const auto loss_of = [&](const std::vector<layer_data>& ls) {
        const auto i = inputs_of(ls);
        return reg.forward<double>(sm::exec::host{1}, std::span<const bal::layer_input<double>>(i))
            .loss;
      };
      std::vector<layer_data> pert = layers;
      const double h = 1e-6;
      long checked = 0, nonzero = 0;
      for (int l = 0; l < 2; ++l)
        for (std::size_t i = 0; i < pert[l].router.size(); ++i) {
          const double saved = pert[l].router[i];
          pert[l].router[i] = saved + h;
          const double lp = loss_of(pert);
          pert[l].router[i] = saved - h;
          const double lm = loss_of(pert);
          pert[l].router[i] = saved;
          const double fd = (lp - lm) / (2 * h);
          const double got = g.data[l][i];
          ++checked;
          nonzero += got != 0;
          BOOST_TEST(std::abs(got - fd) <= 1e-7 * std::max(1e-3, std::abs(fd)),
                     "sample=" << sample << " shared=" << shared << " layer " << l << " entry " << i
                               << ": " << got << " vs fd " << fd);
        }
      BOOST_TEST(checked == 2L * B * H * T);
      BOOST_TEST(nonzero > checked / 3);
    }
}

BOOST_AUTO_TEST_CASE(first_token_sink_fraction_hand_made) {
  const int B = 1, H = 4, T = 3;
  // Layer 0: mean first-key mass per head over the counted tokens 0 and 2: 0.1, 0.31, 0.29, 0.9.
  // Token 1 is not counted and would push head 0 over the threshold.
  std::vector<double> m0 = {0.1,  5.0, 0.1,   // head 0
                            0.31, 0.0, 0.31,  // head 1
                            0.28, 0.0, 0.30,  // head 2
                            1.0,  0.0, 0.8};  // head 3
  // Layer 1: every head at 0.5.
  std::vector<double> m1(std::size_t(H) * T, 0.5);
  std::vector<std::uint8_t> counted{1, 0, 1};
  std::vector<bal::layer_input<double>> in{{{m0.data(), {B, H, T}}, {counted.data(), {B, T}}},
                                           {{m1.data(), {B, H, T}}, {counted.data(), {B, T}}}};
  const auto f =
      bal::first_token_sink_fraction<double>(std::span<const bal::layer_input<double>>(in));
  BOOST_TEST(f == (std::vector<double>{0.5, 1.0}));
  const auto f_hi =
      bal::first_token_sink_fraction<double>(std::span<const bal::layer_input<double>>(in), 0.95);
  BOOST_TEST(f_hi == (std::vector<double>{0.0, 0.0}));
  const auto f_lo =
      bal::first_token_sink_fraction<double>(std::span<const bal::layer_input<double>>(in), 0.05);
  BOOST_TEST(f_lo == (std::vector<double>{1.0, 1.0}));
  // No counted tokens: 0, not NaN.
  std::vector<std::uint8_t> none(T, 0);
  std::vector<bal::layer_input<double>> empty{{{m1.data(), {B, H, T}}, {none.data(), {B, T}}}};
  const auto f0 =
      bal::first_token_sink_fraction<double>(std::span<const bal::layer_input<double>>(empty));
  BOOST_TEST(f0 == std::vector<double>{0.0});
}

BOOST_AUTO_TEST_CASE(results_do_not_depend_on_threads) {
  std::mt19937 rng(31);
  std::vector<layer_data> layers;
  for (int l = 0; l < 4; ++l) layers.push_back(random_layer(rng, 3, 6, 50));
  const auto in = inputs_of(layers);
  const bal::importance_cv2 reg{.lambda = 0.05, .shared_heads = 2, .sample_std = true};
  bal::report reps[3];
  std::vector<grad_buffers> grads;
  const int threads[3] = {1, 2, 3};
  for (int k = 0; k < 3; ++k) {
    grads.emplace_back(layers);
    reps[k] = reg.forward_backward<double>(
        sm::exec::host{threads[k]}, std::span<const bal::layer_input<double>>(in),
        std::span<const sm::tensor_view<double, 3>>(grads[k].views));
  }
  for (int k = 1; k < 3; ++k) {
    BOOST_TEST_CONTEXT("threads " << threads[k] << " vs 1") {
      BOOST_TEST(reps[k].loss == reps[0].loss);  // bitwise
      BOOST_TEST(reps[k].mean_cv == reps[0].mean_cv);
      for (std::size_t l = 0; l < layers.size(); ++l) {
        BOOST_TEST(reps[k].layers[l].importance == reps[0].layers[l].importance);
        BOOST_TEST(reps[k].layers[l].shared == reps[0].layers[l].shared);
        BOOST_TEST(reps[k].layers[l].cv == reps[0].layers[l].cv);
        BOOST_TEST(grads[k].data[l] == grads[0].data[l]);
      }
    }
  }
  BOOST_TEST(reps[0].loss > 0);
}

// 2 layers x 4 heads. Layer 0: 10 counted tokens, importance {0.05, 0.15, 0.3, 0.5}: head 0 is
// dormant under 0.1, head 1 under 0.2 only. Layer 1: no counted token.
BOOST_AUTO_TEST_CASE(head_metrics_hand_computed) {
  bal::importance_sums sums;
  sums.layers = 2, sums.heads = 4;
  sums.router_sum = {0.5, 1.5, 3.0, 5.0, 0.0, 0.0, 0.0, 0.0};
  sums.token_count = {10, 0};
  const bal::head_metrics_report m = bal::head_metrics(sums, {0.1, 0.2});
  BOOST_TEST(m.dormant_thresholds == (std::vector<double>{0.1, 0.2}));
  BOOST_TEST_REQUIRE(m.layers.size() == 2u);
  const auto tol = boost::test_tools::tolerance(1e-14);
  const auto& l0 = m.layers[0];
  BOOST_TEST(l0.tokens == 10.0);
  BOOST_TEST(l0.importance == (std::vector<double>{0.05, 0.15, 0.3, 0.5}), tol);
  // mean 0.25; squared deviations 0.04 + 0.01 + 0.0025 + 0.0625 = 0.115.
  const double cv0 = std::sqrt(0.115 / 4) / 0.25, scv0 = std::sqrt(0.115 / 3) / 0.25;
  BOOST_TEST(l0.cv == cv0, tol);
  BOOST_TEST(l0.sample_cv == scv0, tol);
  BOOST_TEST(l0.effective_heads == 1.0 / 0.365, tol);  // (sum 1)^2 / sum of squares 0.365
  BOOST_TEST(l0.dormant_fraction == (std::vector<double>{0.25, 0.5}));
  const auto& l1 = m.layers[1];
  BOOST_TEST(l1.tokens == 0.0);
  BOOST_TEST(l1.importance == std::vector<double>(4, 0.0));
  BOOST_TEST(l1.cv == 0.0);
  BOOST_TEST(l1.sample_cv == 0.0);
  BOOST_TEST(l1.effective_heads == 0.0);
  BOOST_TEST(l1.dormant_fraction == (std::vector<double>{1.0, 1.0}));
  BOOST_TEST(m.mean_cv == cv0 / 2, tol);
  BOOST_TEST(m.mean_sample_cv == scv0 / 2, tol);
  BOOST_TEST(m.mean_effective_heads == 0.5 / 0.365, tol);
  BOOST_TEST(m.mean_dormant_fraction == (std::vector<double>{0.625, 0.75}));
  // Default: the single threshold 0.1; a span of thresholds; none at all.
  const auto d = bal::head_metrics(sums);
  BOOST_TEST(d.dormant_thresholds == std::vector<double>{0.1});
  BOOST_TEST(d.layers[0].dormant_fraction == std::vector<double>{0.25});
  const std::array<double, 3> t{0.2, 0.0, 1.0};  // order kept, need not be sorted
  const auto a = bal::head_metrics(sums, t);
  BOOST_TEST(a.layers[0].dormant_fraction == (std::vector<double>{0.5, 0.0, 1.0}));
  BOOST_TEST(a.layers[0].cv == l0.cv);
  BOOST_TEST(bal::head_metrics(sums, {}).layers[0].dormant_fraction.empty());
}

// One source for the formulas: every metric field of evaluate() equals head_metrics() bitwise.
BOOST_AUTO_TEST_CASE(head_metrics_equal_evaluate_fields) {
  std::mt19937 rng(41);
  std::vector<layer_data> layers;
  for (int l = 0; l < 3; ++l) layers.push_back(random_layer(rng, 2, 6, 8, 0.05));
  bal::importance_sums sums = bal::accumulate<double>(
      sm::exec::host{1}, std::span<const bal::layer_input<double>>(inputs_of(layers)));
  sums.token_count.push_back(0);  // and a layer with no counted token
  sums.router_sum.insert(sums.router_sum.end(), 6, 0.0);
  ++sums.layers;
  const bal::head_metrics_report m = bal::head_metrics(sums, {0.1, 0.3});
  for (bool sample : {false, true})
    for (int k = 0; k < 2; ++k) {
      BOOST_TEST_CONTEXT("sample_std=" << sample << " threshold " << m.dormant_thresholds[k]) {
        const bal::importance_cv2 reg{.lambda = 0.2,
                                      .shared_heads = 1,
                                      .sample_std = sample,
                                      .dormant_threshold = m.dormant_thresholds[k]};
        const bal::report rep = reg.evaluate(sums);
        BOOST_TEST(rep.mean_cv == (sample ? m.mean_sample_cv : m.mean_cv));
        for (int l = 0; l < sums.layers; ++l) {
          const auto& lr = rep.layers[l];
          const auto& hm = m.layers[l];
          BOOST_TEST(lr.importance == hm.importance);
          BOOST_TEST(lr.cv == (sample ? hm.sample_cv : hm.cv));
          BOOST_TEST(lr.effective_heads == hm.effective_heads);
          BOOST_TEST(lr.dormant_fraction == hm.dormant_fraction[k]);
          BOOST_TEST(lr.tokens == hm.tokens);
        }
      }
    }
  // Some fraction actually differs between the two thresholds (the check above is not vacuous).
  BOOST_TEST(m.mean_dormant_fraction[0] < m.mean_dormant_fraction[1]);
}

namespace {
/// Runs f, which must throw sinkmoe::error whose message holds every one of `parts`.
void throws_naming(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    BOOST_ERROR("no exception; expected one naming " << parts[0]);
  } catch (const sm::error& e) {
    const std::string what = e.what();
    for (const auto& p : parts)
      BOOST_TEST(what.find(p) != std::string::npos, "'" << what << "' lacks '" << p << "'");
  }
}
}  // namespace

BOOST_AUTO_TEST_CASE(head_metrics_validates_sums_and_thresholds) {
  const bal::importance_sums good = make_sums({{0.1, 0.2}, {0.3, 0.4}}, 5);
  BOOST_TEST(bal::head_metrics(good).layers.size() == 2u);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  const bal::importance_cv2 reg{.lambda = 0.1};
  // The sums checks are shared with evaluate(): same messages from both.
  const std::vector<std::pair<std::function<void(bal::importance_sums&)>, std::vector<std::string>>>
      sums_cases = {
          {[](auto& s) { s.router_sum.push_back(1.0); },
           {"importance_sums: router_sum holds 5 values", "expected 4 and 2"}},
          {[](auto& s) { s.token_count.pop_back(); },
           {"importance_sums: router_sum holds 4 values and token_count 1"}},
          {[](auto& s) { s.token_count[1] = -1; }, {"importance_sums.token_count holds -1"}},
          {[&](auto& s) { s.token_count[0] = nan; }, {"importance_sums.token_count holds nan"}},
          {[](auto& s) { s.heads = 0; }, {"importance_sums: 2 layers x 0 heads"}},
          {[](auto& s) { s.layers = 0; }, {"importance_sums: 0 layers x 2 heads"}},
      };
  for (const auto& [mutate, parts] : sums_cases) {
    bal::importance_sums bad = good;
    mutate(bad);
    throws_naming([&] { (void)bal::head_metrics(bad, {0.1}); }, parts);
    throws_naming([&] { (void)reg.evaluate(bad); }, parts);
  }
  throws_naming(
      [&] {
        (void)bal::head_metrics(good, {0.1, nan});
      },
      {"head_metrics: dormant_thresholds[1] = nan", "finite"});
  const std::vector<double> t{-inf, 0.5};
  throws_naming([&] { (void)bal::head_metrics(good, t); },
                {"head_metrics: dormant_thresholds[0] = -inf", "finite"});
  bal::importance_cv2 nan_threshold = reg;
  nan_threshold.dormant_threshold = nan;
  throws_naming([&] { (void)nan_threshold.evaluate(good); },
                {"importance_cv2.dormant_threshold = nan", "finite"});
}

// The range overloads deduce F and forward to the span versions: bitwise the same results.
BOOST_AUTO_TEST_CASE(range_overloads_match_span_calls) {
  std::mt19937 rng(57);
  std::vector<layer_data> layers{random_layer(rng, 2, 5, 6), random_layer(rng, 2, 5, 6)};
  const bal::importance_cv2 reg{.lambda = 0.3, .shared_heads = 1};
  const sm::exec::host ex{2};
  const std::vector<bal::layer_input<double>> vec = inputs_of(layers);
  const std::array<bal::layer_input<double>, 2> arr{vec[0], vec[1]};
  const bal::layer_input<double> carr[2] = {vec[0], vec[1]};
  const std::span<const bal::layer_input<double>> span(vec);

  grad_buffers g_ref(layers);
  const bal::report want = reg.forward_backward<double>(
      ex, span, std::span<const sm::tensor_view<double, 3>>(g_ref.views));
  const bal::importance_sums sums_want = bal::accumulate<double>(ex, span);

  const auto same_report = [&](const bal::report& got) {
    BOOST_TEST(got.loss == want.loss);
    BOOST_TEST(got.mean_cv == want.mean_cv);
    for (std::size_t l = 0; l < 2; ++l) {
      BOOST_TEST(got.layers[l].importance == want.layers[l].importance);
      BOOST_TEST(got.layers[l].shared == want.layers[l].shared);
    }
  };
  const auto same_sums = [&](const bal::importance_sums& got) {
    BOOST_TEST(got.router_sum == sums_want.router_sum);
    BOOST_TEST(got.token_count == sums_want.token_count);
  };
  same_sums(bal::accumulate(ex, vec));
  same_sums(bal::accumulate(ex, arr));
  same_sums(bal::accumulate(ex, carr));
  same_sums(bal::accumulate(ex, span));               // the span version itself, F deduced
  same_sums(bal::accumulate(ex, std::span(vec)));     // span<layer_input<double>>: non-const
  same_sums(bal::accumulate(ex, inputs_of(layers)));  // an rvalue vector
  same_report(reg.forward(ex, vec));
  same_report(reg.forward(ex, arr));

  {  // forward_backward with vector / array / span of drouter views
    grad_buffers g(layers);
    same_report(reg.forward_backward(ex, vec, g.views));
    for (std::size_t l = 0; l < 2; ++l) BOOST_TEST(g.data[l] == g_ref.data[l]);
  }
  {
    grad_buffers g(layers);
    const std::array<sm::tensor_view<double, 3>, 2> views{g.views[0], g.views[1]};
    same_report(reg.forward_backward(ex, arr, views));
    for (std::size_t l = 0; l < 2; ++l) BOOST_TEST(g.data[l] == g_ref.data[l]);
  }
  {
    grad_buffers g(layers);
    same_report(reg.forward_backward(ex, span, std::span(g.views)));
    for (std::size_t l = 0; l < 2; ++l) BOOST_TEST(g.data[l] == g_ref.data[l]);
  }
  {
    grad_buffers g(layers);
    same_report(reg.forward_backward(ex, carr, g.views));
    for (std::size_t l = 0; l < 2; ++l) BOOST_TEST(g.data[l] == g_ref.data[l]);
  }
  {
    grad_buffers g(layers);
    reg.router_grad(ex, want, arr, g.views);
    for (std::size_t l = 0; l < 2; ++l) BOOST_TEST(g.data[l] == g_ref.data[l]);
  }
  BOOST_TEST(bal::first_token_sink_fraction(vec, 0.4) ==
             bal::first_token_sink_fraction<double>(span, 0.4));
  BOOST_TEST(bal::first_token_sink_fraction(arr) == bal::first_token_sink_fraction<double>(span));

  // The example: float inputs in an rvalue std::vector, F = float deduced.
  std::vector<float> router_f(layers[0].router.begin(), layers[0].router.end());
  const bal::importance_sums sf =
      bal::accumulate(ex, std::vector<bal::layer_input<float>>{
                              {{router_f.data(), {2, 5, 6}}, {layers[0].counted.data(), {2, 6}}}});
  BOOST_TEST(sf.layers == 1);
  BOOST_TEST(sf.token_count[0] == sums_want.token_count[0]);
}
