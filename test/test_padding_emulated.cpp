// Padded batches (forward_args::seqlens) through the host emulation of the exec::cuda paths (and
// the unfused path on varlen batches, which it now runs too): the fused kernels and the unfused
// path, bf16, head dim 64, right and left padding, B = 4 with
// lengths 0, 1 and more (and a sequence crossing a 64-key tile), forward and backward with the
// balancing loss's dL/dG in the cotangent, against the fp64 oracle run per sequence on the same
// bf16-rounded inputs (support/padded_oracle.hpp):
//  - real rows within a bf16 tolerance (3e-2 of the tensor's largest value: P and dS are rounded
//    to bf16 before their products, as FlashAttention does);
//  - padding rows exactly: out = 0, lse = the sink logit (-inf without one), G = 0, zero dq and
//    d(gate logits); padding keys: zero dk and dv (every output starts as NaN, so an unwritten
//    padding row fails too);
//  - the emulation's own checks on every launch (races, bounds of every tensor and of the
//    lengths, docs/emulation.md).
#include "support/fused_backward_emulation.hpp"
// The emulation comes first (the fused backward header includes it).
#define BOOST_TEST_MODULE padding_emulated
#include <boost/test/unit_test.hpp>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "support/fused_forward_emulation.hpp"
#include "support/padded_oracle.hpp"
#include "support/unfused_check.hpp"

namespace sm = sinkmoe;
namespace st = sinkmoe::testing;
namespace ref = sinkmoe::testing::ref;
namespace ck = sinkmoe::testing::checks;
namespace arch = sinkmoe::arch;
using namespace sinkmoe::testing::padded;
using E = arch::bf16;

namespace {

constexpr int k_head_dim = 64;
constexpr double k_rtol = 3e-2;
const float nan_f = std::numeric_limits<float>::quiet_NaN();

double round_bf16(double x) { return arch::to_float(arch::from_float<E>(static_cast<float>(x))); }

/// The problem's inputs and cotangents rounded to bf16 (the oracle then sees what the kernels see).
void round_to_bf16(padded_problem& p) {
  for (std::vector<double>* v : {&p.in.q, &p.in.k, &p.in.v, &p.in.gate_logits, &p.ct.dout})
    for (double& x : *v) x = round_bf16(x);
  for (double& x : p.in.sinks) x = double(float(x));
}

enum class path { fused, unfused };

/// Runs one path on p; with `cu` (offsets of a packed B = 1 batch) the batch is varlen, else
/// padded by p.lens.
template <class Attn>
st::library_result run_path(path which, const padded_problem& p, const ref::cotangents& ct,
                            const std::vector<std::int32_t>* cu = nullptr) {
  using Sink = typename Attn::sink_type;
  using Gate = typename Attn::gate_type;
  const ref::config& c = p.cfg;
  const int B = c.B, Tq = c.Tq, Tk = c.Tk, Hq = c.Hq, Hkv = c.Hkv, D = c.D, dg = ck::gate_dim(c);
  const auto to_e = [](const std::vector<double>& x, std::size_t n) {
    std::vector<E> r(n, arch::from_float<E>(0.0f));
    for (std::size_t i = 0; i < std::min(n, x.size()); ++i) r[i] = arch::from_float<E>(float(x[i]));
    return r;
  };
  const std::size_t nq = std::size_t(B) * Tq * Hq * D, nk = std::size_t(B) * Tk * Hkv * D,
                    nr = std::size_t(B) * Hq * Tq, nz = std::size_t(B) * Tq * Hq * dg;
  std::vector<E> q = to_e(p.in.q, nq), k = to_e(p.in.k, nk), v = to_e(p.in.v, nk),
                 z = to_e(p.in.gate_logits, nz);
  std::vector<E> out(nq, arch::from_float<E>(nan_f));
  std::vector<float> sinks(p.in.sinks.begin(), p.in.sinks.end()), lse(nr, nan_f), router(nr, nan_f);
  std::vector<std::int32_t> len_q(p.lens.q.begin(), p.lens.q.end()),
      len_k(p.lens.k.begin(), p.lens.k.end());

  sm::forward_args<E> fa;
  fa.q = {q.data(), {B, Tq, Hq, D}};
  fa.k = {k.data(), {B, Tk, Hkv, D}};
  fa.v = {v.data(), {B, Tk, Hkv, D}};
  if constexpr (Sink::needs_sinks_tensor) fa.sinks = {sinks.data(), {Hq}};
  if constexpr (Gate::enabled) fa.gate_logits = {z.data(), {B, Tq, Hq, dg}};
  fa.out = {out.data(), {B, Tq, Hq, D}};
  fa.lse = {lse.data(), {B, Hq, Tq}};
  fa.router = {router.data(), {B, Hq, Tq}};
  fa.params.scale = c.scale;
  if (c.mask == ref::mask_kind::sliding_window) fa.params.window = c.window;
  if (c.sink == ref::sink_kind::fixed) fa.params.fixed_sink = c.fixed_sink;
  if (cu != nullptr)
    fa.varlen = {cu->data(), cu->data() + cu->size() / 2, static_cast<int>(cu->size() / 2) - 1};
  else
    fa.seqlens = {{len_q.data(), {B}}, {len_k.data(), {B}}, p.side};

  std::vector<E> dout = to_e(ct.dout, nq), dq(nq, arch::from_float<E>(nan_f)),
                 dk(nk, arch::from_float<E>(nan_f)), dv(nk, arch::from_float<E>(nan_f)),
                 dz(nz, arch::from_float<E>(nan_f));
  std::vector<float> drouter(ct.drouter.begin(), ct.drouter.end()),
      dlse(ct.dlse.begin(), ct.dlse.end()), dsinks(std::size_t(Hq), nan_f);
  sm::backward_args<E> ba;
  ba.dout = {dout.data(), {B, Tq, Hq, D}};
  ba.drouter = {drouter.data(), {B, Hq, Tq}};
  ba.dlse = {dlse.data(), {B, Hq, Tq}};
  ba.dq = {dq.data(), {B, Tq, Hq, D}};
  ba.dk = {dk.data(), {B, Tk, Hkv, D}};
  ba.dv = {dv.data(), {B, Tk, Hkv, D}};
  if constexpr (Sink::trainable) ba.dsinks = {dsinks.data(), {Hq}};
  if constexpr (Gate::enabled) ba.dgate_logits = {dz.data(), {B, Tq, Hq, dg}};

  if (which == path::fused) {
    st::emulated_fused_forward<Attn, k_head_dim>(fa);
    st::emulated_fused_backward<Attn, k_head_dim>(fa, ba);
  } else {
    constexpr int chunk_rows = 3;  // several chunks per sequence
    st::unfused_check::emulated_device dev;
    {
      const sm::problem_shape shape = sm::unfused::validate_forward<Attn>(fa);
      const std::size_t bytes =
          sm::unfused::workspace_bytes(shape, chunk_rows, sm::unfused::pass::forward);
      st::unfused_check::guarded_workspace ws(bytes);
      dev.ranges = st::emulator_for(st::forward_ranges(fa), ws.data(), bytes).globals;
      sm::unfused::forward<Attn>(dev, fa, shape, ws.data(), chunk_rows);
      BOOST_TEST(ws.guard_intact());
    }
    {
      const sm::problem_shape shape = sm::unfused::validate_backward<Attn>(fa, ba);
      const std::size_t bytes =
          sm::unfused::workspace_bytes(shape, chunk_rows, sm::unfused::pass::backward);
      st::unfused_check::guarded_workspace ws(bytes);
      dev.ranges = st::emulator_for(st::backward_ranges(fa, ba), ws.data(), bytes).globals;
      sm::unfused::backward<Attn>(dev, fa, ba, shape, ws.data(), chunk_rows);
      BOOST_TEST(ws.guard_intact());
    }
  }
  const auto to_d = [](const auto& x) {
    std::vector<double> r(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) {
      if constexpr (std::is_same_v<std::decay_t<decltype(x[0])>, E>)
        r[i] = arch::to_float(x[i]);
      else
        r[i] = x[i];
    }
    return r;
  };
  st::library_result r;
  r.out = to_d(out);
  r.lse = to_d(lse);
  r.router = to_d(router);
  r.dq = to_d(dq);
  r.dk = to_d(dk);
  r.dv = to_d(dv);
  if constexpr (Sink::trainable) r.dsinks = to_d(dsinks);
  if constexpr (Gate::enabled) r.dgate = to_d(dz);
  return r;
}

/// Padding entries of `got` must equal `want` bitwise (they are exact constants); real entries
/// within the bf16 tolerance.
void check_path(const std::string& what, const std::vector<double>& got,
                const std::vector<double>& want, const std::vector<bool>& is_padding) {
  BOOST_TEST_REQUIRE(got.size() == want.size(), what << ": size");
  double scale = 1;
  for (double w : want)
    if (std::isfinite(w)) scale = std::max(scale, std::abs(w));
  std::size_t bad_real = 0, bad_padding = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const bool same = got[i] == want[i] || (std::isnan(got[i]) && std::isnan(want[i]));
    if (is_padding[i]) {
      bad_padding += same ? 0 : 1;
    } else if (!(std::isinf(want[i]) ? got[i] == want[i]
                                     : std::abs(got[i] - want[i]) <= k_rtol * scale)) {
      ++bad_real;
    }
  }
  BOOST_TEST(bad_real == 0u, what << ": " << bad_real << " real entries off");
  BOOST_TEST(bad_padding == 0u, what << ": " << bad_padding << " padding entries not exact");
}

/// Which entries of a [B, T, H, W] tensor (rows) or a [B, H, T] statistic are padding.
std::vector<bool> padding_of_rows(const padded_problem& p, bool keys, int heads, int width) {
  const ref::config& c = p.cfg;
  const int T = keys ? c.Tk : c.Tq;
  std::vector<bool> r;
  for (int b = 0; b < c.B; ++b) {
    const rows_at real = real_rows_of(keys ? p.lens.k[b] : p.lens.q[b], T, p.side);
    for (int t = 0; t < T; ++t)
      r.insert(r.end(), std::size_t(heads) * width, t < real.begin || t >= real.begin + real.count);
  }
  return r;
}
std::vector<bool> padding_of_stats(const padded_problem& p) {
  const ref::config& c = p.cfg;
  std::vector<bool> r;
  for (int b = 0; b < c.B; ++b) {
    const rows_at real = real_rows_of(p.lens.q[b], c.Tq, p.side);
    for (int h = 0; h < c.Hq; ++h)
      for (int t = 0; t < c.Tq; ++t) r.push_back(t < real.begin || t >= real.begin + real.count);
  }
  return r;
}

template <class Attn>
void check_padded(const ref::config& base, const lengths& lens, sm::padding_side side,
                  std::mt19937_64& rng) {
  padded_problem p = make_padded(base, lens, side, rng);
  round_to_bf16(p);
  const double lambda = 0.05;
  const expected want = oracle(p, lambda);
  ref::cotangents ct = p.ct;
  for (std::size_t i = 0; i < ct.drouter.size(); ++i) ct.drouter[i] += want.balance_drouter[i];
  const ref::config& c = p.cfg;
  const std::vector<bool> q_rows = padding_of_rows(p, false, c.Hq, c.D);
  const std::vector<bool> k_rows = padding_of_rows(p, true, c.Hkv, c.D);
  const std::vector<bool> z_rows = padding_of_rows(p, false, c.Hq, ck::gate_dim(c));
  const std::vector<bool> stats = padding_of_stats(p);
  for (path which : {path::fused, path::unfused}) {
    BOOST_TEST_CONTEXT(describe(p) << (which == path::fused ? " fused" : " unfused")) {
      const st::library_result got = run_path<Attn>(which, p, ct);
      check_path("out", got.out, want.r.out, q_rows);
      check_path("lse", got.lse, want.r.lse, stats);
      check_path("router", got.router, want.r.router, stats);
      check_path("dq", got.dq, want.r.dq, q_rows);
      check_path("dk", got.dk, want.r.dk, k_rows);
      check_path("dv", got.dv, want.r.dv, k_rows);
      check_path("dsinks", got.dsinks, want.r.dsinks, std::vector<bool>(got.dsinks.size(), false));
      if (c.gate != ref::gate_kind::none) check_path("dgate", got.dgate, want.r.dgate, z_rows);
    }
  }
}

/// The real rows of a padded [B, T, H, W] tensor (keys: the key side) packed into [1, total, H, W].
std::vector<double> pack_rows(const padded_problem& p, const std::vector<double>& x, bool keys,
                              std::size_t width) {
  const int T = keys ? p.cfg.Tk : p.cfg.Tq;
  std::vector<double> r;
  for (int b = 0; b < p.cfg.B; ++b) {
    const rows_at real = real_rows_of(keys ? p.lens.k[b] : p.lens.q[b], T, p.side);
    const auto first = x.begin() + (std::size_t(b) * T + real.begin) * width;
    r.insert(r.end(), first, first + std::size_t(real.count) * width);
  }
  return r;
}
/// The real rows of a [B, H, Tq] statistic packed into [1, H, total].
std::vector<double> pack_stats(const padded_problem& p, const std::vector<double>& x) {
  const ref::config& c = p.cfg;
  std::vector<double> r;
  for (int h = 0; h < c.Hq; ++h)
    for (int b = 0; b < c.B; ++b) {
      const rows_at real = real_rows_of(p.lens.q[b], c.Tq, p.side);
      for (int t = 0; t < real.count; ++t)
        r.push_back(x[(std::size_t(b) * c.Hq + h) * c.Tq + real.begin + t]);
    }
  return r;
}

/// The unfused path on a varlen batch (the same sequences packed, no padding) against the oracle.
template <class Attn>
void check_unfused_varlen(const ref::config& base, const lengths& lens, std::mt19937_64& rng) {
  padded_problem p = make_padded(base, lens, sm::padding_side::right, rng);
  round_to_bf16(p);
  const expected want = oracle(p, 0.0);
  const ref::config& c = p.cfg;
  const std::size_t qw = std::size_t(c.Hq) * c.D, kw = std::size_t(c.Hkv) * c.D;
  padded_problem packed = p;
  std::vector<std::int32_t> cu{0}, cu_k{0};
  for (int b = 0; b < c.B; ++b) {
    cu.push_back(cu.back() + lens.q[b]);
    cu_k.push_back(cu_k.back() + lens.k[b]);
  }
  packed.cfg.B = 1;
  packed.cfg.Tq = cu.back();
  packed.cfg.Tk = cu_k.back();
  packed.in.q = pack_rows(p, p.in.q, false, qw);
  packed.in.k = pack_rows(p, p.in.k, true, kw);
  packed.in.v = pack_rows(p, p.in.v, true, kw);
  if (c.gate != ref::gate_kind::none)
    packed.in.gate_logits =
        pack_rows(p, p.in.gate_logits, false, std::size_t(c.Hq) * ck::gate_dim(c));
  packed.ct.dout = pack_rows(p, p.ct.dout, false, qw);
  packed.ct.dlse = pack_stats(p, p.ct.dlse);
  packed.ct.drouter = pack_stats(p, p.ct.drouter);
  cu.insert(cu.end(), cu_k.begin(), cu_k.end());  // run_path's layout: q offsets, then k offsets
  BOOST_TEST_CONTEXT(describe(p) << " unfused varlen") {
    const st::library_result got = run_path<Attn>(path::unfused, packed, packed.ct, &cu);
    const auto none = [](std::size_t n) { return std::vector<bool>(n, false); };
    const std::vector<double> out = pack_rows(p, want.r.out, false, qw);
    check_path("out", got.out, out, none(out.size()));
    const std::vector<double> lse = pack_stats(p, want.r.lse);
    check_path("lse", got.lse, lse, none(lse.size()));
    check_path("router", got.router, pack_stats(p, want.r.router), none(lse.size()));
    check_path("dq", got.dq, pack_rows(p, want.r.dq, false, qw), none(out.size()));
    const std::vector<double> dk = pack_rows(p, want.r.dk, true, kw);
    check_path("dk", got.dk, dk, none(dk.size()));
    check_path("dv", got.dv, pack_rows(p, want.r.dv, true, kw), none(dk.size()));
    check_path("dsinks", got.dsinks, want.r.dsinks, none(got.dsinks.size()));
  }
}

const lengths self_attention{7, 7, {7, 0, 1, 4}, {7, 0, 1, 4}};
const lengths key_tiles{5, 70, {5, 1, 0, 2}, {70, 66, 3, 0}};
const sm::padding_side sides[] = {sm::padding_side::right, sm::padding_side::left};

}  // namespace

// Vanilla, causal: the sink is each sequence's first real key (left padding moves it).
BOOST_AUTO_TEST_CASE(vanilla_causal_matches_the_oracle) {
  std::mt19937_64 rng(4201);
  const ref::config base = ck::make_config({ref::sink_kind::none, ref::gate_kind::none,
                                            ref::mask_kind::causal, ref::route_kind::sink_mass},
                                           {1, 0, 0, 2, 1, k_head_dim});
  for (const lengths& lens : {self_attention, key_tiles})
    for (sm::padding_side side : sides)
      check_padded<sm::vanilla_attention<sm::mask::causal>>(base, lens, side, rng);
}

// GPT-OSS-like learned sink on a sliding window, with an elementwise gate (its dgate rows too).
BOOST_AUTO_TEST_CASE(learned_sink_sliding_window_gated_matches_the_oracle) {
  std::mt19937_64 rng(4202);
  const ref::config base =
      ck::make_config({ref::sink_kind::learned, ref::gate_kind::elementwise,
                       ref::mask_kind::sliding_window, ref::route_kind::output_gate},
                      {1, 0, 0, 2, 1, k_head_dim, 3});
  for (const lengths& lens : {self_attention, key_tiles})
    for (sm::padding_side side : sides)
      check_padded<
          sm::attention<sm::sink::learned, sm::gate::elementwise, sm::mask::sliding_window>>(
          base, lens, side, rng);
}

// The unfused path on variable-length batches (cu_seqlens), which it now runs sequence by
// sequence: a zero-length sequence, a one-row sequence, a sequence crossing a key tile.
BOOST_AUTO_TEST_CASE(unfused_varlen_matches_the_oracle) {
  std::mt19937_64 rng(4203);
  const ref::config vanilla = ck::make_config({ref::sink_kind::none, ref::gate_kind::none,
                                               ref::mask_kind::causal, ref::route_kind::sink_mass},
                                              {1, 0, 0, 2, 1, k_head_dim});
  const ref::config gated =
      ck::make_config({ref::sink_kind::learned, ref::gate_kind::elementwise,
                       ref::mask_kind::sliding_window, ref::route_kind::output_gate},
                      {1, 0, 0, 2, 1, k_head_dim, 3});
  for (const lengths& lens : {self_attention, key_tiles}) {
    check_unfused_varlen<sm::vanilla_attention<sm::mask::causal>>(vanilla, lens, rng);
    check_unfused_varlen<
        sm::attention<sm::sink::learned, sm::gate::elementwise, sm::mask::sliding_window>>(
        gated, lens, rng);
  }
}
