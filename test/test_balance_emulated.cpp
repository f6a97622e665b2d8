// Device-side head balancing (include/sinkmoe/cuda/balance_kernels.hpp, the kernels behind
// balance::device_balancer in sinkmoe/cuda/balance.cuh) run through the host emulation of the
// primitive layer (support/gpu_balance_emulation.hpp), against the host's importance_cv2:
//  - sums, importance, shared heads, CV, balanced CV, loss, metrics and dL/dG match the host to
//    float tolerance across options (lambda, shared heads 0/1/H-1, fixed sets, sample std,
//    dormant threshold), Hq 1/8/16, several layers, odd token counts, counted masks with padded
//    tails and dropped tokens, and without a counted mask (every token counts);
//  - on the host's own sums, evaluate matches importance_cv2::evaluate to 1e-12 and dL/dG to a
//    float ulp (the kernel follows the host's arithmetic order);
//  - more layers than one launch takes (chunks), long sequences, strided views (drouter padding
//    untouched), data-parallel halves whose sums are added before evaluate;
//  - degenerate layers (no counted token, all-zero router): zeros, never NaN;
//  - bitwise repeatability (same balancer twice, and a fresh one);
//  - argument errors name the argument and leave outputs and workspace untouched.
#define BOOST_TEST_MODULE balance_emulated
#include <algorithm>
#include <boost/test/unit_test.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "support/gpu_balance_emulation.hpp"

namespace sm = sinkmoe;
namespace bal = sinkmoe::balance;
using sinkmoe::testing::emulated_balancer;

namespace {

/// One layer: router [B, H, T] and counted [B, T], contiguous, owned.
struct layer_data {
  int B = 0, H = 0, T = 0;
  std::vector<float> router;
  std::vector<std::uint8_t> counted;

  bal::layer_input<float> input(bool with_counted = true) const {
    bal::layer_input<float> in{{router.data(), {B, H, T}}, {}};
    if (with_counted) in.counted = {counted.data(), {B, T}};
    return in;
  }
};

/// Router values with a per-head offset (spaced so top-m selection has clear margins) plus
/// noise; counted: each sequence has a random length (a padded tail that does not count) and
/// about 1 in 5 tokens of the rest dropped.
layer_data random_layer(std::mt19937& rng, int B, int H, int T) {
  layer_data L;
  L.B = B, L.H = H, L.T = T;
  std::vector<int> perm(H);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::uniform_real_distribution<float> noise(0.0f, 0.2f);
  L.router.resize(std::size_t(B) * H * T);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int t = 0; t < T; ++t)
        L.router[(std::size_t(b) * H + h) * T + t] = 0.12f + 0.7f / H * perm[h] + noise(rng);
  L.counted.assign(std::size_t(B) * T, 0);
  std::bernoulli_distribution keep(0.8);
  for (int b = 0; b < B; ++b) {
    const int length = std::uniform_int_distribution<int>(1, T)(rng);
    for (int t = 0; t < length; ++t) L.counted[std::size_t(b) * T + t] = keep(rng) ? 1 : 0;
    L.counted[std::size_t(b) * T] = 1;
  }
  return L;
}

/// Host inputs (counted always given: all ones stands for "every token counts").
std::vector<bal::layer_input<float>> host_inputs(std::vector<layer_data>& layers,
                                                 bool with_counted) {
  std::vector<bal::layer_input<float>> in;
  for (auto& L : layers) {
    if (!with_counted) std::fill(L.counted.begin(), L.counted.end(), std::uint8_t{1});
    in.push_back(L.input(true));
  }
  return in;
}

std::vector<bal::layer_input<float>> device_inputs(const std::vector<layer_data>& layers,
                                                   bool with_counted) {
  std::vector<bal::layer_input<float>> in;
  for (const auto& L : layers) in.push_back(L.input(with_counted));
  return in;
}

/// dL/dG buffers, one per layer, filled with `fill`.
struct grads {
  std::vector<std::vector<float>> data;
  std::vector<sm::tensor_view<float, 3>> views;
  grads(const std::vector<layer_data>& layers, float fill) {
    data.reserve(layers.size());
    for (const auto& L : layers) {
      data.emplace_back(L.router.size(), fill);
      views.push_back({data.back().data(), {L.B, L.H, L.T}});
    }
  }
  std::span<const sm::tensor_view<float, 3>> span() const { return views; }
};

bool close(double got, double want, double rtol, double floor) {
  if (std::isnan(got) || std::isnan(want)) return false;
  return std::abs(got - want) <= rtol * std::max(std::abs(want), floor);
}

/// Entries of got off want by more than rtol (relative to max(|want|, 1e-3 max |want|));
/// entries exactly 0 in want must be exactly 0.
template <class T>
std::size_t mismatches(const std::vector<T>& got, const std::vector<T>& want, double rtol,
                       std::string& first) {
  if (got.size() != want.size()) return std::max(got.size(), want.size()) + 1;
  double scale = 0;
  for (T w : want) scale = std::max(scale, std::abs(double(w)));
  std::size_t bad = 0;
  std::ostringstream os;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const bool ok = want[i] == 0 ? got[i] == 0 : close(got[i], want[i], rtol, 1e-3 * scale);
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

#define CHECK_CLOSE(got, want, rtol)               \
  BOOST_TEST(close((got), (want), (rtol), 1e-300), \
             #got " = " << (got) << ", " #want " = " << (want))

/// Device report vs host report: values to rtol, shared sets and token counts exactly.
void check_report(const bal::report& got, const bal::report& want, double rtol) {
  BOOST_TEST_REQUIRE(got.layers.size() == want.layers.size());
  for (std::size_t l = 0; l < want.layers.size(); ++l) {
    BOOST_TEST_CONTEXT("layer " << l) {
      const bal::layer_report& g = got.layers[l];
      const bal::layer_report& w = want.layers[l];
      CHECK_VEC(g.importance, w.importance, rtol);
      BOOST_TEST(g.shared == w.shared);
      BOOST_TEST(g.tokens == w.tokens);
      // CV and loss are 0 by definition for fewer than 2 heads or no tokens: exact there.
      BOOST_TEST(close(g.cv, w.cv, rtol, 1e-12), "cv " << g.cv << " vs " << w.cv);
      BOOST_TEST(close(g.balanced_cv, w.balanced_cv, rtol, 1e-12),
                 "balanced_cv " << g.balanced_cv << " vs " << w.balanced_cv);
      BOOST_TEST(close(g.loss, w.loss, 2 * rtol, 1e-12), "loss " << g.loss << " vs " << w.loss);
      BOOST_TEST(close(g.effective_heads, w.effective_heads, rtol, 1e-12),
                 "effective_heads " << g.effective_heads << " vs " << w.effective_heads);
      BOOST_TEST(g.dormant_fraction == w.dormant_fraction);
    }
  }
  BOOST_TEST(close(got.loss, want.loss, 2 * rtol, 1e-12),
             "total loss " << got.loss << " vs " << want.loss);
  BOOST_TEST(close(got.mean_cv, want.mean_cv, rtol, 1e-12),
             "mean_cv " << got.mean_cv << " vs " << want.mean_cv);
}

/// Float tolerance of a device result whose sums went through fp32 shuffles.
constexpr double k_rtol = 2e-5;

/// Runs reg on the host and on the emulated device over the same layers; compares all.
void compare_with_host(const bal::importance_cv2& reg, std::vector<layer_data> layers,
                       bool with_counted) {
  const int L = static_cast<int>(layers.size()), H = layers[0].H;
  const auto din = device_inputs(layers, with_counted);
  const auto hin = host_inputs(layers, with_counted);  // all-ones masks when !with_counted
  grads host_grad(layers, 12345.0f);
  const bal::report want = reg.forward_backward<float>(
      sm::exec::host{1}, std::span<const bal::layer_input<float>>(hin), host_grad.span());
  const bal::importance_sums want_sums =
      bal::accumulate(sm::exec::host{1}, std::span<const bal::layer_input<float>>(hin));

  emulated_balancer dev(reg, L, H);
  dev.poison();
  grads dev_grad(layers, std::numeric_limits<float>::quiet_NaN());
  dev.forward_backward(din, dev_grad.span());

  const bal::importance_sums got_sums = dev.sums();
  CHECK_VEC(got_sums.router_sum, want_sums.router_sum, k_rtol);
  BOOST_TEST(got_sums.token_count == want_sums.token_count);
  check_report(dev.report(), want, k_rtol);
  for (int l = 0; l < L; ++l) BOOST_TEST_CONTEXT("drouter layer " << l) {
      CHECK_VEC(dev_grad.data[l], host_grad.data[l], k_rtol);
    }
}

}  // namespace

BOOST_AUTO_TEST_CASE(matches_host_across_options_heads_and_masks) {
  std::mt19937 rng(7);
  for (int H : {1, 8, 16}) {
    std::vector<bal::importance_cv2> options;
    options.push_back({.lambda = 0.37, .shared_heads = 0});
    if (H > 1) {
      options.push_back({.lambda = 1e-2, .shared_heads = 1, .sample_std = true});
      options.push_back({.lambda = 0.5, .shared_heads = H - 1});  // n = 1: CV 0 by definition
      options.push_back({.lambda = 2.0, .shared_heads = 2 % H, .dormant_threshold = 0.5});
    }
    bal::importance_cv2 fixed{.lambda = 0.25, .selection = bal::shared_selection::fixed};
    fixed.fixed_shared = {{}, {}, {}};
    if (H > 1) fixed.fixed_shared = {{}, {0}, {H - 1}};
    if (H > 2) fixed.fixed_shared[2] = {H - 1, 1};
    options.push_back(fixed);
    for (std::size_t o = 0; o < options.size(); ++o)
      for (bool with_counted : {true, false}) {
        BOOST_TEST_CONTEXT("H " << H << " option set " << o << " counted mask "
                                << (with_counted ? "given" : "omitted")) {
          // Odd and tile-unfriendly token counts: 1, 7 and 300 (more than 256 per block).
          std::vector<layer_data> layers = {random_layer(rng, 3, H, 7), random_layer(rng, 1, H, 1),
                                            random_layer(rng, 2, H, 300)};
          compare_with_host(options[o], layers, with_counted);
        }
      }
  }
}

BOOST_AUTO_TEST_CASE(evaluate_on_host_sums_matches_host_arithmetic) {
  std::mt19937 rng(11);
  for (bool sample : {false, true}) {
    std::vector<layer_data> layers = {random_layer(rng, 2, 16, 33), random_layer(rng, 3, 16, 9)};
    const bal::importance_cv2 reg{.lambda = 0.1, .shared_heads = 3, .sample_std = sample};
    const auto in = host_inputs(layers, true);
    const std::span<const bal::layer_input<float>> span_in(in);
    const bal::importance_sums sums = bal::accumulate(sm::exec::host{1}, span_in);
    const bal::report want = reg.evaluate(sums);
    grads host_grad(layers, 0.0f);
    reg.router_grad<float>(sm::exec::host{1}, want, span_in, host_grad.span());

    emulated_balancer dev(reg, 2, 16);
    dev.poison();
    dev.load_sums(sums);
    dev.evaluate();
    grads dev_grad(layers, std::numeric_limits<float>::quiet_NaN());
    dev.router_grad(span_in, dev_grad.span());
    check_report(dev.report(), want, 1e-12);
    // dL/dG: the same double arithmetic, rounded to float once: at most one float ulp apart.
    for (std::size_t l = 0; l < layers.size(); ++l)
      CHECK_VEC(dev_grad.data[l], host_grad.data[l], std::ldexp(1.0, -23));
  }
}

BOOST_AUTO_TEST_CASE(more_layers_than_one_launch_and_long_sequences) {
  std::mt19937 rng(13);
  std::vector<layer_data> layers;
  for (int l = 0; l < sm::balance::gpu::k_layers_per_launch + 3; ++l)
    layers.push_back(random_layer(rng, 1 + l % 3, 2, 1 + 5 * l));
  layers.push_back(random_layer(rng, 2, 2, 1500));  // many tokens per thread
  compare_with_host({.lambda = 0.3}, layers, true);
  compare_with_host({.lambda = 0.3, .sample_std = true}, layers, false);
}

BOOST_AUTO_TEST_CASE(strided_views_and_drouter_padding) {
  std::mt19937 rng(17);
  const int B = 2, H = 8, T = 37, pad = 3;
  std::vector<layer_data> layers = {random_layer(rng, B, H, T)};
  const layer_data& L = layers[0];
  // Router stored [B, T, H] (token-major), counted stored [T, B], drouter rows padded.
  std::vector<float> router_bth(L.router.size());
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int t = 0; t < T; ++t)
        router_bth[(std::size_t(b) * T + t) * H + h] = L.router[(std::size_t(b) * H + h) * T + t];
  std::vector<std::uint8_t> counted_tb(L.counted.size());
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t)
      counted_tb[std::size_t(t) * B + b] = L.counted[std::size_t(b) * T + t];
  const bal::layer_input<float> strided{{router_bth.data(), {B, H, T}, {sm::index_t(T) * H, 1, H}},
                                        {counted_tb.data(), {B, T}, {1, B}}};
  const float sentinel = -777.0f;
  std::vector<float> drouter(std::size_t(B) * H * (T + pad), sentinel);
  const sm::tensor_view<float, 3> drouter_view{
      drouter.data(), {B, H, T}, {sm::index_t(H) * (T + pad), T + pad, 1}};

  const bal::importance_cv2 reg{.lambda = 0.2, .shared_heads = 1};
  emulated_balancer dev(reg, 1, H);
  dev.forward_backward(std::span(&strided, 1), std::span(&drouter_view, 1));

  const auto hin = host_inputs(layers, true);
  grads host_grad(layers, 0.0f);
  const bal::report want = reg.forward_backward<float>(
      sm::exec::host{1}, std::span<const bal::layer_input<float>>(hin), host_grad.span());
  check_report(dev.report(), want, k_rtol);
  std::vector<float> got(L.router.size());
  std::size_t padding_changed = 0;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      const std::size_t row = (std::size_t(b) * H + h) * (T + pad);
      for (int t = 0; t < T; ++t) got[(std::size_t(b) * H + h) * T + t] = drouter[row + t];
      for (int t = T; t < T + pad; ++t) padding_changed += drouter[row + t] != sentinel;
    }
  CHECK_VEC(got, host_grad.data[0], k_rtol);
  BOOST_TEST(padding_changed == 0u);
}

BOOST_AUTO_TEST_CASE(data_parallel_halves_summed_before_evaluate) {
  std::mt19937 rng(19);
  const int H = 8, T = 41;
  std::vector<layer_data> whole = {random_layer(rng, 4, H, T), random_layer(rng, 4, H, T)};
  const bal::importance_cv2 reg{.lambda = 0.05, .shared_heads = 2};
  // Halves: sequences 0-1 and 2-3 of every layer (views into the whole batch).
  std::vector<bal::layer_input<float>> half[2];
  std::vector<sm::tensor_view<float, 3>> half_grad[2];
  grads dev_grad(whole, std::numeric_limits<float>::quiet_NaN());
  for (int r = 0; r < 2; ++r)
    for (std::size_t l = 0; l < whole.size(); ++l) {
      const layer_data& L = whole[l];
      half[r].push_back({{L.router.data() + std::size_t(2 * r) * H * T, {2, H, T}},
                         {L.counted.data() + std::size_t(2 * r) * T, {2, T}}});
      half_grad[r].push_back({dev_grad.data[l].data() + std::size_t(2 * r) * H * T, {2, H, T}});
    }
  emulated_balancer rank0(reg, 2, H), rank1(reg, 2, H), reduced(reg, 2, H);
  rank0.accumulate(half[0]);
  rank1.accumulate(half[1]);
  bal::importance_sums sums = rank0.sums();
  const bal::importance_sums other = rank1.sums();
  for (std::size_t i = 0; i < sums.router_sum.size(); ++i)
    sums.router_sum[i] += other.router_sum[i];
  for (std::size_t i = 0; i < sums.token_count.size(); ++i)
    sums.token_count[i] += other.token_count[i];
  reduced.load_sums(sums);
  reduced.evaluate();
  reduced.router_grad(half[0], half_grad[0]);
  reduced.router_grad(half[1], half_grad[1]);

  const auto hin = host_inputs(whole, true);
  grads host_grad(whole, 0.0f);
  const bal::report want = reg.forward_backward<float>(
      sm::exec::host{1}, std::span<const bal::layer_input<float>>(hin), host_grad.span());
  check_report(reduced.report(), want, k_rtol);
  for (std::size_t l = 0; l < whole.size(); ++l)
    CHECK_VEC(dev_grad.data[l], host_grad.data[l], k_rtol);
}

BOOST_AUTO_TEST_CASE(degenerate_layers_give_zeros_not_nan) {
  std::mt19937 rng(23);
  const int H = 4;
  std::vector<layer_data> layers = {random_layer(rng, 2, H, 9), random_layer(rng, 2, H, 9),
                                    random_layer(rng, 1, H, 5)};
  std::fill(layers[0].counted.begin(), layers[0].counted.end(), std::uint8_t{0});  // no token
  std::fill(layers[1].router.begin(), layers[1].router.end(), 0.0f);               // all-zero G
  const bal::importance_cv2 reg{.lambda = 1.0, .shared_heads = 1};
  emulated_balancer dev(reg, 3, H);
  dev.poison();
  grads dev_grad(layers, std::numeric_limits<float>::quiet_NaN());
  dev.forward_backward(device_inputs(layers, true), dev_grad.span());
  const bal::report got = dev.report();
  for (int l : {0, 1}) {
    BOOST_TEST(got.layers[l].loss == 0.0);
    BOOST_TEST(got.layers[l].cv == 0.0);
    BOOST_TEST(got.layers[l].effective_heads == 0.0);
    BOOST_TEST(std::all_of(dev_grad.data[l].begin(), dev_grad.data[l].end(),
                           [](float g) { return g == 0.0f; }));
  }
  BOOST_TEST(got.layers[0].tokens == 0.0);
  BOOST_TEST(got.layers[2].loss > 0.0);
  BOOST_TEST(std::isfinite(got.loss));
  BOOST_TEST(got.loss == got.layers[2].loss);
  compare_with_host(reg, layers, true);
}

BOOST_AUTO_TEST_CASE(bitwise_repeatable) {
  std::mt19937 rng(29);
  std::vector<layer_data> layers = {random_layer(rng, 3, 16, 300), random_layer(rng, 2, 16, 65)};
  const bal::importance_cv2 reg{.lambda = 0.01, .shared_heads = 2};
  const auto in = device_inputs(layers, true);
  const auto run = [&](emulated_balancer& dev) {
    dev.poison();
    grads g(layers, std::numeric_limits<float>::quiet_NaN());
    dev.forward_backward(in, g.span());
    std::vector<unsigned char> bits = dev.bytes();
    for (const auto& d : g.data) {
      const auto* p = reinterpret_cast<const unsigned char*>(d.data());
      bits.insert(bits.end(), p, p + d.size() * sizeof(float));
    }
    return bits;
  };
  emulated_balancer a(reg, 2, 16), b(reg, 2, 16);
  const std::vector<unsigned char> first = run(a);
  BOOST_TEST((run(a) == first), "the same balancer gave different bits on a second run");
  BOOST_TEST((run(b) == first), "a fresh balancer gave different bits");
}

BOOST_AUTO_TEST_CASE(argument_errors_name_the_argument_and_write_nothing) {
  std::mt19937 rng(31);
  const int H = 4;
  std::vector<layer_data> layers = {random_layer(rng, 2, H, 5), random_layer(rng, 2, H, 6)};
  const auto good = device_inputs(layers, true);
  const auto throws_with = [](auto&& call, const std::string& needle) {
    try {
      call();
    } catch (const sm::error& e) {
      const std::string what = e.what();
      BOOST_TEST(what.find(needle) != std::string::npos,
                 "message \"" << what << "\" does not name " << needle);
      return;
    }
    BOOST_ERROR("no sinkmoe::error for " << needle);
  };

  // Options, checked when the balancer is built.
  throws_with([] { emulated_balancer({.lambda = -1.0}, 2, H); }, "importance_cv2.lambda");
  throws_with([] { emulated_balancer({.lambda = std::nan("")}, 2, H); }, "importance_cv2.lambda");
  throws_with([] { emulated_balancer({.lambda = 1.0, .shared_heads = H}, 2, H); },
              "importance_cv2.shared_heads");
  throws_with([] { emulated_balancer({.lambda = 1.0, .shared_heads = -1}, 2, H); },
              "importance_cv2.shared_heads");
  throws_with([] { emulated_balancer({.lambda = 1.0}, 0, H); }, "0 layers");
  throws_with([] { emulated_balancer({.lambda = 1.0}, 2, 0); }, "0 heads");
  throws_with([] { emulated_balancer({.lambda = 1.0}, 1, 4097); }, "4097 heads; at most 4096");
  throws_with(
      [] {
        emulated_balancer(
            {.lambda = 1, .selection = bal::shared_selection::fixed, .fixed_shared = {{0}}}, 2, H);
      },
      "importance_cv2.fixed_shared: 1 layers given");
  throws_with(
      [] {
        emulated_balancer(
            {.lambda = 1, .selection = bal::shared_selection::fixed, .fixed_shared = {{0}, {H}}}, 2,
            H);
      },
      "importance_cv2.fixed_shared[1] holds head");
  throws_with(
      [] {
        emulated_balancer(
            {.lambda = 1, .selection = bal::shared_selection::fixed, .fixed_shared = {{1, 1}, {}}},
            2, H);
      },
      "importance_cv2.fixed_shared[0]: head ids must be distinct");
  throws_with(
      [] {
        emulated_balancer({.lambda = 1,
                           .selection = bal::shared_selection::fixed,
                           .fixed_shared = {{0, 1, 2, 3}, {}}},
                          2, H);
      },
      "leave at least one head balanced");

  // Per-call arguments: checked before any launch (workspace and drouter stay as they were).
  emulated_balancer dev({.lambda = 1.0, .shared_heads = 1}, 2, H);
  dev.poison();
  const std::vector<unsigned char> before = dev.bytes();
  const float sentinel = -5.0f;
  grads g(layers, sentinel);
  const auto untouched = [&] {
    BOOST_TEST((dev.bytes() == before), "the workspace changed");
    for (const auto& d : g.data)
      BOOST_TEST(std::all_of(d.begin(), d.end(), [&](float x) { return x == sentinel; }));
  };
  throws_with([&] { dev.forward_backward(std::span(good.data(), 1), g.span()); },
              "device balance inputs: 1 layers given");
  auto bad = good;
  bad[1].router.data = nullptr;
  throws_with([&] { dev.forward_backward(bad, g.span()); }, "inputs[1].router is null");
  bad = good;
  bad[0].router.shape[1] = H + 1;
  throws_with([&] { dev.forward_backward(bad, g.span()); }, "inputs[0].router: 5 heads");
  bad = good;
  bad[1].counted.shape = {2, 7};
  throws_with([&] { dev.forward_backward(bad, g.span()); }, "inputs[1].counted: shape [2, 7]");
  bad = good;
  bad[0].router.shape = {-1, H, 5};
  throws_with([&] { dev.forward_backward(bad, g.span()); }, "negative extent");
  auto bad_grad = g.views;
  bad_grad[1].shape = {2, H, 5};
  throws_with([&] { dev.forward_backward(good, bad_grad); }, "drouter[1]: shape [2, 4, 5]");
  bad_grad = g.views;
  bad_grad[0].data = nullptr;
  throws_with([&] { dev.forward_backward(good, bad_grad); }, "drouter[0]");
  throws_with([&] { dev.forward_backward(good, std::span(g.views.data(), 1)); },
              "drouter: 1 layers given");
  throws_with([&] { dev.router_grad(good, std::span(g.views.data(), 1)); },
              "drouter: 1 layers given");
  throws_with([&] { dev.accumulate(std::span(good.data(), 1)); }, "1 layers given");
  bal::importance_sums sums = dev.sums();
  sums.token_count[0] = -1;
  throws_with([&] { dev.load_sums(sums); }, "importance_sums.token_count");
  sums = dev.sums();
  sums.heads = H + 1;
  throws_with([&] { dev.load_sums(sums); }, "importance_sums: 2 layers x 5 heads");
  untouched();
}
