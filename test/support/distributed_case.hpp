#pragma once
// Distributed balancing cases (test_balance_distributed, test_balance_mpi): one model's router
// values for a whole batch, the slice a rank holds under a (data x tensor x pipeline) parallel
// grid, and the check of a rank's distributed_cv2 result against importance_cv2 on one process
// over the concatenated batch.
//
// The grid: rank = (d * tp + t) * pp + p. Data-parallel rank d holds batch rows
// [row_begin(d), row_begin(d + 1)) (uneven: the first ranks get one more), and the last data
// rank's rows count no token when dp > 1 (a rank with no counted tokens); tensor-parallel rank t
// holds a contiguous, possibly uneven, range of heads; pipeline rank p a range of layers.

#include <boost/test/unit_test.hpp>
#include <cmath>
#include <cstdint>
#include <random>
#include <sinkmoe/balance/balance.hpp>
#include <sinkmoe/balance/distributed.hpp>
#include <string>
#include <vector>

namespace sinkmoe::testing::distributed {

namespace bal = sinkmoe::balance;

/// A parallel grid of dp x tp x pp ranks.
struct grid {
  int dp = 1, tp = 1, pp = 1;
  [[nodiscard]] int ranks() const { return dp * tp * pp; }
  [[nodiscard]] std::string name() const {
    return "dp" + std::to_string(dp) + " tp" + std::to_string(tp) + " pp" + std::to_string(pp);
  }
};

/// Every grid of `ranks` ranks (all factorisations dp * tp * pp).
inline std::vector<grid> grids_of(int ranks) {
  std::vector<grid> g;
  for (int dp = 1; dp <= ranks; ++dp)
    for (int tp = 1; dp * tp <= ranks; ++tp)
      if (ranks % (dp * tp) == 0) g.push_back({dp, tp, ranks / (dp * tp)});
  return g;
}

/// [begin, end) of part i when n items are split into `parts` contiguous ranges (the first
/// n % parts get one more).
inline std::pair<int, int> split(int n, int parts, int i) {
  const int base = n / parts, extra = n % parts;
  const int begin = i * base + std::min(i, extra);
  return {begin, begin + base + (i < extra ? 1 : 0)};
}

/// The whole model's router values and counted masks over the concatenated batch.
template <class F>
struct model_batch {
  int layers = 0, heads = 0, batch = 0, tokens = 0;
  std::vector<std::vector<F>> router;              ///< per layer [B, H, T]
  std::vector<std::vector<std::uint8_t>> counted;  ///< per layer [B, T]
};

/// Router values in (0, 1) with head-dependent means (so the CV and its gradient are not 0),
/// and counted masks with some uncounted tokens; rows of the last data rank uncounted when dp > 1.
template <class F>
model_batch<F> make_batch(const grid& g, unsigned seed) {
  model_batch<F> m;
  m.layers = 5;
  m.heads = 6;
  m.batch = 9;
  m.tokens = 9;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const auto [dead_begin, dead_end] =
      g.dp > 1 ? split(m.batch, g.dp, g.dp - 1) : std::pair<int, int>{m.batch, m.batch};
  for (int l = 0; l < m.layers; ++l) {
    std::vector<F> r(std::size_t(m.batch) * m.heads * m.tokens);
    for (int b = 0; b < m.batch; ++b)
      for (int h = 0; h < m.heads; ++h)
        for (int t = 0; t < m.tokens; ++t)
          r[(std::size_t(b) * m.heads + h) * m.tokens + t] =
              F(0.05 + 0.9 * u(rng) * (0.3 + 0.7 * double(h + l) / (m.heads + m.layers)));
    std::vector<std::uint8_t> c(std::size_t(m.batch) * m.tokens);
    for (int b = 0; b < m.batch; ++b)
      for (int t = 0; t < m.tokens; ++t)
        c[std::size_t(b) * m.tokens + t] =
            (b >= dead_begin && b < dead_end) ? 0 : (u(rng) < 0.8 ? 1 : 0);
    m.router.push_back(std::move(r));
    m.counted.push_back(std::move(c));
  }
  return m;
}

/// What one rank holds: its rows, heads and layers, copied into contiguous tensors.
template <class F>
struct rank_slice {
  int d = 0, t = 0, p = 0;
  std::pair<int, int> rows, heads, layers;
  std::vector<std::vector<F>> router, drouter;
  std::vector<std::vector<std::uint8_t>> counted;
  std::vector<bal::layer_input<F>> inputs;
  std::vector<tensor_view<F, 3>> drouter_views;

  [[nodiscard]] bal::rank_layout layout(const grid& g, const model_batch<F>& m) const {
    bal::rank_layout a;
    a.layers = layers.second - layers.first;
    a.heads = heads.second - heads.first;
    a.model_layers = m.layers;
    a.first_layer = layers.first;
    a.model_heads = m.heads;
    a.first_head = heads.first;
    a.ranks = g.ranks();
    a.gradient_average = g.dp;
    return a;
  }
};

template <class F>
rank_slice<F> slice_for(const grid& g, int rank, const model_batch<F>& m) {
  rank_slice<F> s;
  s.p = rank % g.pp;
  s.t = (rank / g.pp) % g.tp;
  s.d = rank / (g.pp * g.tp);
  s.rows = split(m.batch, g.dp, s.d);
  s.heads = split(m.heads, g.tp, s.t);
  s.layers = split(m.layers, g.pp, s.p);
  const int B = s.rows.second - s.rows.first, H = s.heads.second - s.heads.first;
  for (int l = s.layers.first; l < s.layers.second; ++l) {
    std::vector<F> r(std::size_t(B) * H * m.tokens);
    std::vector<std::uint8_t> c(std::size_t(B) * m.tokens);
    for (int b = 0; b < B; ++b) {
      for (int h = 0; h < H; ++h)
        for (int t = 0; t < m.tokens; ++t)
          r[(std::size_t(b) * H + h) * m.tokens + t] =
              m.router[l][(std::size_t(s.rows.first + b) * m.heads + s.heads.first + h) * m.tokens +
                          t];
      for (int t = 0; t < m.tokens; ++t)
        c[std::size_t(b) * m.tokens + t] =
            m.counted[l][std::size_t(s.rows.first + b) * m.tokens + t];
    }
    s.router.push_back(std::move(r));
    s.counted.push_back(std::move(c));
    s.drouter.emplace_back(std::size_t(B) * H * m.tokens, F(-7));  // poisoned
  }
  for (std::size_t l = 0; l < s.router.size(); ++l) {
    s.inputs.push_back(
        {{s.router[l].data(), {B, H, m.tokens}}, {s.counted[l].data(), {B, m.tokens}}});
    s.drouter_views.push_back({s.drouter[l].data(), {B, H, m.tokens}});
  }
  return s;
}

/// importance_cv2 on one process over the whole batch: the report and dL/dG per layer.
template <class F>
struct single_process_result {
  bal::report rep;
  std::vector<std::vector<F>> drouter;
};

template <class F>
single_process_result<F> single_process(const bal::importance_cv2& reg, const model_batch<F>& m) {
  single_process_result<F> r;
  std::vector<bal::layer_input<F>> inputs;
  std::vector<tensor_view<F, 3>> views;
  r.drouter.assign(std::size_t(m.layers), std::vector<F>(m.router[0].size()));
  for (int l = 0; l < m.layers; ++l) {
    inputs.push_back({{m.router[l].data(), {m.batch, m.heads, m.tokens}},
                      {m.counted[l].data(), {m.batch, m.tokens}}});
    views.push_back({r.drouter[l].data(), {m.batch, m.heads, m.tokens}});
  }
  r.rep = reg.forward_backward(exec::host{}, inputs, views);
  return r;
}

/// Relative closeness: |a - b| <= tol * max(1, |b|).
inline bool close(double a, double b, double tol) {
  return std::abs(a - b) <= tol * std::max(1.0, std::abs(b));
}

/// The checks of one rank's result: the loss and every metric of every layer as on one process,
/// and this rank's dL/dG equal to its slice of the single process's, times gradient_average
/// (relative to the layer's largest).
/// Returns the number of mismatches (also reported through BOOST_TEST).
template <class F>
int check_rank(const grid& g, const rank_slice<F>& s, const model_batch<F>& m,
               const bal::report& got, const single_process_result<F>& want, double tol) {
  int bad = 0;
  const auto expect = [&](bool ok, const std::string& what) {
    if (!ok) ++bad;
    BOOST_TEST(ok, g.name() << " rank (d" << s.d << " t" << s.t << " p" << s.p << "): " << what);
  };
  expect(close(got.loss, want.rep.loss, tol),
         "loss " + std::to_string(got.loss) + " vs " + std::to_string(want.rep.loss));
  expect(got.layers.size() == want.rep.layers.size(), "layer count");
  for (std::size_t l = 0; l < std::min(got.layers.size(), want.rep.layers.size()); ++l) {
    const auto &a = got.layers[l], &b = want.rep.layers[l];
    expect(a.tokens == b.tokens, "layer " + std::to_string(l) + " tokens");
    expect(close(a.cv, b.cv, tol) && close(a.balanced_cv, b.balanced_cv, tol) &&
               close(a.effective_heads, b.effective_heads, tol) && a.shared == b.shared,
           "layer " + std::to_string(l) + " metrics");
    for (std::size_t h = 0; h < b.importance.size(); ++h)
      expect(h < a.importance.size() && close(a.importance[h], b.importance[h], tol),
             "layer " + std::to_string(l) + " importance[" + std::to_string(h) + "]");
  }
  const int B = s.rows.second - s.rows.first, H = s.heads.second - s.heads.first;
  for (std::size_t ll = 0; ll < s.drouter.size(); ++ll) {
    const int l = s.layers.first + static_cast<int>(ll);
    // Relative to the layer's largest |dL/dG|: a head near the mean importance has a gradient
    // near 0, whose own relative error means nothing.
    double scale = 0.0;
    for (F x : want.drouter[l]) scale = std::max(scale, double(g.dp) * std::abs(double(x)));
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < H; ++h)
        for (int t = 0; t < m.tokens; ++t) {
          const double mine = s.drouter[ll][(std::size_t(b) * H + h) * m.tokens + t];
          const double full =
              double(g.dp) *
              double(want.drouter[l][(std::size_t(s.rows.first + b) * m.heads + s.heads.first + h) *
                                         m.tokens +
                                     t]);
          if (!(std::abs(mine - full) <= tol * scale)) {
            expect(false, "drouter layer " + std::to_string(l) + " (" + std::to_string(b) + ", " +
                              std::to_string(h) + ", " + std::to_string(t) +
                              "): " + std::to_string(mine) + " vs " + std::to_string(full));
            return bad;
          }
        }
  }
  return bad;
}

/// The regulariser of the cases: both shared-head selections are exercised by the callers.
inline bal::importance_cv2 regulariser(int shared_heads) {
  bal::importance_cv2 reg;
  reg.lambda = 0.37;
  reg.shared_heads = shared_heads;
  return reg;
}

}  // namespace sinkmoe::testing::distributed
