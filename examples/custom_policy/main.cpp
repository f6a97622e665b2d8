// A user-defined policy plugged into sinkmoe without touching the library.
//
// chunked_causal<Chunk>: Llama-4-style chunked local attention. Query t (absolute position
// t' = t + Tk - Tq) sees the keys of its own chunk up to itself: floor(j / C) == floor(t' / C)
// and j <= t'. The mask policy contract (include/sinkmoe/policy/mask.hpp) asks for visibility,
// the hull of visible keys, and a classification of whole tiles so backends can skip empty
// tiles and skip per-element tests on full ones.
//
// head_slope_sink<Millis>: a fixed, untrained sink logit that falls with the head index,
// b_h = -h * Millis / 1000, so later heads keep more of their output (a per-head prior).
//
// The program checks the new policies against built-ins: chunked_causal with a chunk longer
// than the sequence must equal mask::causal, and head_slope_sink with slope 0 must equal
// sink::fixed with logit 0. It returns non-zero on a mismatch (it runs as a test).
#include <cmath>
#include <cstdio>
#include <random>
#include <sinkmoe/sinkmoe.hpp>
#include <vector>

template <int Chunk>
struct chunked_causal {
  static_assert(Chunk >= 1, "chunk length must be positive");
  static constexpr const char* name = "chunked_causal";
  int tk = 0;
  int offset = 0;
  SINKMOE_HD chunked_causal(const sinkmoe::attention_params&, int tq, int tk_)
      : tk(tk_), offset(tk_ - tq) {}
  SINKMOE_HD bool visible(int t, int j) const {
    const int pos = t + offset;
    return j <= pos && j >= chunk_start(pos);
  }
  SINKMOE_HD sinkmoe::key_span key_range(int t) const {
    const int pos = t + offset;
    if (pos < 0) return {0, 0};
    return {chunk_start(pos), pos + 1 < tk ? pos + 1 : tk};
  }
  SINKMOE_HD sinkmoe::tile_kind tile_class(int q0, int q1, int k0, int k1) const {
    const int first = q0 + offset, last = q1 - 1 + offset;
    if (k0 > last || k1 - 1 < chunk_start(first)) return sinkmoe::tile_kind::empty;
    // Full only if every row's chunk starts at or before k0 and every key is causal for row q0.
    if (k1 - 1 <= first && chunk_start(last) <= k0) return sinkmoe::tile_kind::full;
    return sinkmoe::tile_kind::partial;
  }
  static void validate(const sinkmoe::attention_params& p) {
    if (p.window != 0 || p.sink_tokens != 0)
      throw sinkmoe::error("params.window / params.sink_tokens are not used by chunked_causal");
  }

 private:
  SINKMOE_HD static int chunk_start(int pos) { return pos < 0 ? 0 : pos / Chunk * Chunk; }
};

template <int Millis>
struct head_slope_sink {
  static constexpr const char* name = "head_slope";
  static constexpr bool has_logit = true;
  static constexpr bool first_key_is_sink = false;
  static constexpr bool trainable = false;
  static constexpr bool needs_sinks_tensor = false;
  template <class F>
  SINKMOE_HD static F logit(const sinkmoe::attention_params&, const F*, sinkmoe::index_t,
                            int head) {
    return -F(head) * F(Millis) / F(1000);
  }
  static void validate(const sinkmoe::attention_params&) {}
};

static_assert(sinkmoe::mask_policy<chunked_causal<16>>);
static_assert(sinkmoe::sink_policy<head_slope_sink<500>>);

namespace {

constexpr int B = 1, T = 96, H = 4, D = 32;

struct problem {
  std::vector<float> q, k, v, out, lse, router;
  problem()
      : q(std::size_t(B) * T * H * D),
        k(q.size()),
        v(q.size()),
        out(q.size()),
        lse(std::size_t(B) * H * T),
        router(lse.size()) {
    std::mt19937 rng(7);
    std::normal_distribution<float> n;
    for (auto* t : {&q, &k, &v})
      for (float& x : *t) x = n(rng);
  }
  sinkmoe::forward_args<float> args() {
    sinkmoe::forward_args<float> fa;
    fa.q = {q.data(), {B, T, H, D}};
    fa.k = {k.data(), {B, T, H, D}};
    fa.v = {v.data(), {B, T, H, D}};
    fa.out = {out.data(), {B, T, H, D}};
    fa.lse = {lse.data(), {B, H, T}};
    fa.router = {router.data(), {B, H, T}};
    return fa;
  }
};

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  float m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::fmax(m, std::fabs(a[i] - b[i]));
  return m;
}

}  // namespace

int main() {
  const sinkmoe::exec::host exec{};
  int failures = 0;

  // 1. A chunk longer than the sequence is plain causal attention.
  problem custom, builtin;
  using chunked_long =
      sinkmoe::attention<head_slope_sink<0>, sinkmoe::gate::none, chunked_causal<1024>>;
  using causal_fixed =
      sinkmoe::attention<sinkmoe::sink::fixed, sinkmoe::gate::none, sinkmoe::mask::causal>;
  chunked_long::forward(exec, custom.args());
  causal_fixed::forward(exec, builtin.args());  // fixed_sink defaults to 0 = head_slope_sink<0>
  const float diff = max_abs_diff(custom.out, builtin.out);
  std::printf(
      "chunked_causal<1024> + head_slope_sink<0> vs causal + fixed sink 0: max |diff| = %g\n",
      diff);
  failures += diff > 1e-6f;

  // 2. Real chunks of 16 with a per-head sink slope: router importance per head.
  using chunked = sinkmoe::attention<head_slope_sink<750>, sinkmoe::gate::none, chunked_causal<16>>;
  problem p;
  auto fa = p.args();
  chunked::forward(exec, fa);
  std::vector<std::uint8_t> counted(std::size_t(B) * T);
  chunked::counted_tokens(fa, {counted.data(), {B, T}});
  const sinkmoe::balance::importance_cv2 balance{.lambda = 0.01};
  const sinkmoe::balance::layer_input<float> layer{fa.router, {counted.data(), {B, T}}};
  const auto rep = balance.forward(exec, std::span(&layer, 1));
  std::printf("chunked_causal<16> + head_slope_sink<750>: importance per head:");
  for (double imp : rep.layers[0].importance) std::printf(" %.3f", imp);
  std::printf("  (CV %.3f)\n", rep.layers[0].cv);
  // The sink logit falls with the head index, so importance must rise with it.
  for (std::size_t h = 1; h < rep.layers[0].importance.size(); ++h)
    failures += !(rep.layers[0].importance[h] > rep.layers[0].importance[h - 1]);

  // 3. Rows in the same chunk attend only within it: query 16 (chunk start) sees only key 16.
  // Its output equals v[16] scaled by its non-sink mass.
  const int t = 16, h = 0;
  const float g = p.router[std::size_t(h) * T + t];
  float worst = 0;
  for (int c = 0; c < D; ++c)
    worst = std::fmax(worst, std::fabs(p.out[(std::size_t(t) * H + h) * D + c] -
                                       g * p.v[(std::size_t(t) * H + h) * D + c]));
  std::printf("chunk start row: max |out - G v| = %g\n", worst);
  failures += worst > 1e-5f;

  std::printf(failures ? "FAILED (%d checks)\n" : "all checks passed\n", failures);
  return failures ? 1 : 0;
}
