// The CPU backend's vector-extension paths (host/tile_ops.hpp): this unit is compiled three
// times, with -mavx2 -mfma -mno-avx512f (SINKMOE_HOST_VECTOR_EXT: 8 lanes, 4 x 16 blocks), with
// -mavx512f (test_host_vector_paths_avx512, SINKMOE_HOST_AVX512: 16 lanes, 8 x 32 blocks and a
// 16-column tail) and with -mno-avx (test_host_vector_paths_generic: the portable loops), so each
// path's exp and tile products run here against the fp64 oracle whatever flags the other suites
// get (SINKMOE_NATIVE). Skipped on a CPU without the instructions.
#define BOOST_TEST_MODULE host_vector_paths
#include <algorithm>
#include <boost/test/unit_test.hpp>
#include <cmath>
#include <limits>
#include <random>
#include <sinkmoe/sinkmoe.hpp>

#include "support/reference.hpp"

namespace ref = sinkmoe::testing::ref;
namespace utf = boost::unit_test;

#if defined(SINKMOE_TEST_EXPECT_GENERIC)
static_assert(SINKMOE_HOST_VECTOR_EXT == 0, "this build must take the generic path");
#else
static_assert(SINKMOE_HOST_VECTOR_EXT == 1, "this unit must be built with AVX enabled");
#endif
#if defined(SINKMOE_TEST_EXPECT_AVX512)
static_assert(SINKMOE_HOST_AVX512 == 1, "this build must take the AVX-512 path");
#else
static_assert(SINKMOE_HOST_AVX512 == 0, "this build must take the AVX2 path");
#endif

namespace {

struct cpu_has_avx2 {
  boost::test_tools::assertion_result operator()(utf::test_unit_id) const {
#if SINKMOE_HOST_VECTOR_EXT
    bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    bool ok = true;  // the generic path runs anywhere
#endif
#if SINKMOE_HOST_AVX512
    ok = ok && __builtin_cpu_supports("avx512f");
#endif
    boost::test_tools::assertion_result r(ok);
    if (!ok) r.message() << "the CPU lacks the instructions this build uses (AVX2/FMA, AVX-512F)";
    return r;
  }
};

std::vector<double> random_vector(std::mt19937& rng, std::size_t n, double scale = 1.0) {
  std::normal_distribution<double> dist(0.0, scale);
  std::vector<double> v(n);
  for (double& x : v) x = dist(rng);
  return v;
}

double max_abs(const std::vector<double>& x) {
  double m = 0;
  for (double v : x) m = std::max(m, std::abs(v));
  return m;
}

template <class Attn>
void check_against_oracle(const ref::config& c, unsigned seed) {
  std::mt19937 rng(seed);
  ref::inputs in;
  in.q = random_vector(rng, std::size_t(c.B) * c.Tq * c.Hq * c.D);
  in.k = random_vector(rng, std::size_t(c.B) * c.Tk * c.Hkv * c.D);
  in.v = random_vector(rng, in.k.size());
  in.sinks = random_vector(rng, std::size_t(c.Hq), 2.0);
  ref::cotangents ct;
  ct.dout = random_vector(rng, in.q.size());
  ct.drouter = random_vector(rng, std::size_t(c.B) * c.Hq * c.Tq);
  const ref::forward_result want = ref::forward(c, in);
  const ref::gradients want_grad = ref::backward(c, in, ct);

  auto to_float = [](const std::vector<double>& x) {
    return std::vector<float>(x.begin(), x.end());
  };
  std::vector<float> q = to_float(in.q), k = to_float(in.k), v = to_float(in.v),
                     sinks = to_float(in.sinks), dout = to_float(ct.dout),
                     drouter = to_float(ct.drouter);
  std::vector<float> out(q.size()), lse(drouter.size()), router(drouter.size());
  std::vector<float> dq(q.size()), dk(k.size()), dv(v.size()), dsinks(sinks.size());
  const int B = c.B, Tq = c.Tq, Tk = c.Tk, Hq = c.Hq, Hkv = c.Hkv, D = c.D;
  sinkmoe::forward_args<float> fa;
  fa.q = {q.data(), {B, Tq, Hq, D}};
  fa.k = {k.data(), {B, Tk, Hkv, D}};
  fa.v = {v.data(), {B, Tk, Hkv, D}};
  if constexpr (Attn::sink_type::needs_sinks_tensor) fa.sinks = {sinks.data(), {Hq}};
  fa.out = {out.data(), {B, Tq, Hq, D}};
  fa.lse = {lse.data(), {B, Hq, Tq}};
  fa.router = {router.data(), {B, Hq, Tq}};
  fa.params.scale = c.scale;
  Attn::forward(sinkmoe::exec::host{2}, fa);
  sinkmoe::backward_args<float> ba;
  ba.dout = {dout.data(), {B, Tq, Hq, D}};
  ba.drouter = {drouter.data(), {B, Hq, Tq}};
  ba.dq = {dq.data(), {B, Tq, Hq, D}};
  ba.dk = {dk.data(), {B, Tk, Hkv, D}};
  ba.dv = {dv.data(), {B, Tk, Hkv, D}};
  if constexpr (Attn::sink_type::trainable) ba.dsinks = {dsinks.data(), {Hq}};
  Attn::backward(sinkmoe::exec::host{2}, fa, ba);

  // float against fp64: a bound a few hundred float ulps of the result's scale (the products
  // sum up to 130 keys and D = 64 channels).
  auto check = [](const char* what, const std::vector<float>& got,
                  const std::vector<double>& ref_values) {
    const double bound = 5e-5 * std::max(1.0, max_abs(ref_values));
    double worst = 0;
    for (std::size_t i = 0; i < got.size(); ++i)
      if (std::isfinite(ref_values[i]) || std::isfinite(got[i]))
        worst = std::max(worst, std::abs(double(got[i]) - ref_values[i]));
    BOOST_TEST(worst <= bound, what << ": max error " << worst << " > " << bound);
  };
  check("out", out, want.out);
  check("lse", lse, want.lse);
  check("router", router, want.router);
  check("dq", dq, want_grad.dq);
  check("dk", dk, want_grad.dk);
  check("dv", dv, want_grad.dv);
  if constexpr (Attn::sink_type::trainable) check("dsinks", dsinks, want_grad.dsinks);
}

}  // namespace

BOOST_AUTO_TEST_CASE(vector_exp_matches_std_exp, *utf::precondition(cpu_has_avx2())) {
  using namespace sinkmoe::host::detail;
  std::vector<float> in, out(8 * 2048);
  for (int i = 0; i < 8 * 2048; ++i) in.push_back(-100.0f + 188.0f * float(i) / (8 * 2048));
  in[3] = -std::numeric_limits<float>::infinity();
  exp_row(in.data(), 0.0f, int(in.size()), out.data());
  double worst_rel = 0;
  for (std::size_t i = 0; i < in.size(); ++i) {
    const double want = std::exp(double(in[i]));
    if (in[i] < -87.0f) {
      BOOST_TEST(out[i] == 0.0f, "exp(" << in[i] << ") must flush to 0");
      continue;
    }
    worst_rel = std::max(worst_rel, std::abs(out[i] - want) / want);
  }
  BOOST_TEST(worst_rel < 4e-7, "worst relative error " << worst_rel);
}

// The transposed load (16 x 16 or 8 x 8 register blocks where whole, elements at the edges)
// against the definition, for shapes on and off the block grid.
BOOST_AUTO_TEST_CASE(transpose_matches_definition, *utf::precondition(cpu_has_avx2())) {
  using sinkmoe::host::detail::transpose_scaled;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  for (int rows : {1, 8, 15, 16, 17, 40, 64})
    for (int cols : {1, 7, 16, 24, 33, 64, 80}) {
      const int ld_src = cols + 3, ld_dst = rows + 5;
      std::vector<float> src(std::size_t(rows) * ld_src), dst(std::size_t(cols) * ld_dst, -7.0f);
      for (float& x : src) x = dist(rng);
      transpose_scaled(src.data(), ld_src, rows, cols, 0.5f, dst.data(), ld_dst);
      int wrong = 0, touched = 0;
      for (int c = 0; c < cols; ++c)
        for (int r = 0; r < ld_dst; ++r) {
          const float got = dst[std::size_t(c) * ld_dst + r];
          if (r < rows)
            wrong += got != src[std::size_t(r) * ld_src + c] * 0.5f;
          else
            touched += got != -7.0f;  // past the rows: left alone
        }
      BOOST_TEST(wrong == 0, rows << " x " << cols << ": " << wrong << " wrong");
      BOOST_TEST(touched == 0, rows << " x " << cols << ": wrote past the rows");
    }
}

// Row reductions: max is exact; the sum follows the 16-lane tree (element j into lane j mod 16,
// then lanes j and j + 8, j + 4, j + 2, j + 1), so every path gives the same bits.
BOOST_AUTO_TEST_CASE(row_reductions_follow_the_lane_tree, *utf::precondition(cpu_has_avx2())) {
  using namespace sinkmoe::host::detail;
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> dist(-30.0f, 3.0f);
  for (int n : {16, 48, 64, 128}) {
    std::vector<float> x(n), p(n);
    for (float& v : x) v = dist(rng);
    x[n / 2] = -std::numeric_limits<float>::infinity();
    float want_max = -std::numeric_limits<float>::infinity();
    for (float v : x) want_max = std::max(want_max, v);
    BOOST_TEST(row_max(x.data(), n) == want_max);
    const float shift = 1.25f;
    const float sum = exp_row_sum(x.data(), shift, n, p.data());
    float lanes[16] = {};
    for (int j = 0; j < n; ++j) {
      BOOST_TEST(p[j] == sinkmoe::math::exp_poly(x[j] - shift));
      lanes[j % 16] += p[j];
    }
    for (int width = 8; width >= 1; width /= 2)
      for (int j = 0; j < width; ++j) lanes[j] += lanes[j + width];
    BOOST_TEST(sum == lanes[0], "n = " << n);
  }
  // dot_row (the backward's per-row dot products): product j into partial sum j mod 16, the same
  // tree; any n, the last partial sums short.
  for (int n : {5, 16, 48, 64, 80, 100, 128}) {
    std::vector<float> x(n), y(n);
    for (float& v : x) v = dist(rng);
    for (float& v : y) v = dist(rng);
    float lanes[16] = {};
    double exact = 0, magnitude = 0;
    for (int j = 0; j < n; ++j) {
      lanes[j % 16] += x[j] * y[j];
      exact += double(x[j]) * double(y[j]);
      magnitude += std::abs(double(x[j]) * double(y[j]));
    }
    for (int width = 8; width >= 1; width /= 2)
      for (int j = 0; j < width; ++j) lanes[j] += lanes[j + width];
    const float dot = dot_row<float>(x.data(), y.data(), n);
    BOOST_TEST(dot == lanes[0], "n = " << n);
    BOOST_TEST(std::abs(double(dot) - exact) <= 1e-6 * magnitude, "n = " << n);
  }
}

BOOST_AUTO_TEST_CASE(vanilla_causal_tile_boundaries, *utf::precondition(cpu_has_avx2())) {
  ref::config c{.B = 2, .Tq = 130, .Tk = 130, .Hq = 4, .Hkv = 2, .D = 64, .scale = 0.125};
  c.mask = ref::mask_kind::causal;
  check_against_oracle<sinkmoe::vanilla_attention<>>(c, 1);
}

BOOST_AUTO_TEST_CASE(learned_sink_unmasked_tq_ne_tk, *utf::precondition(cpu_has_avx2())) {
  ref::config c{.B = 1, .Tq = 65, .Tk = 127, .Hq = 2, .Hkv = 1, .D = 48, .scale = 0.144};
  c.sink = ref::sink_kind::learned;
  c.mask = ref::mask_kind::none;
  check_against_oracle<
      sinkmoe::attention<sinkmoe::sink::learned, sinkmoe::gate::none, sinkmoe::mask::none>>(c, 2);
}
