// Padded batches (forward_args::seqlens) on the host backend, against the fp64 oracle run on each
// sequence's real rows alone (test/support/reference.hpp, which knows nothing of padding):
//  - every mask, right and left padding, B = 4 with lengths 0, 1 and more, self-attention and a
//    KV cache (Tq < Tk), with a learned sink, a vanilla sink (the first real key, also under
//    left padding) and a gate; float and double; forward, backward and the balancing loss on
//    the whole batch (importance over every real token of every sequence);
//  - padding rows: out = 0, lse = the sink logit (-inf without one), G = 0, not counted, zero
//    dq and d(gate logits); padding keys: zero dk and dv; the padding's input values never matter;
//  - counted tokens decided by the mask (mask::none counts the first query, causal does not);
//  - lengths that are negative, longer than T, of the wrong shape, or given with varlen, and
//    varlen.num_seqs without offsets: sinkmoe::error naming the argument, nothing written;
//  - a padded batch without lengths is plain attention over every key (and differs).
#define BOOST_TEST_MODULE padding
#include <boost/test/unit_test.hpp>
#include <cmath>
#include <limits>
#include <random>
#include <sinkmoe/sinkmoe.hpp>
#include <string>
#include <vector>

#include "support/host_checks.hpp"
#include "support/library_runner.hpp"
#include "support/padded_oracle.hpp"
#include "support/reference.hpp"
#include "support/throws_naming.hpp"

namespace sm = sinkmoe;
namespace st = sinkmoe::testing;
namespace ref = sinkmoe::testing::ref;
namespace ck = sinkmoe::testing::checks;
using ref::gate_kind;
using ref::mask_kind;
using ref::route_kind;
using ref::sink_kind;

namespace {

using namespace sinkmoe::testing::padded;

/// The library's balancing loss and dL/dG on its own router values and counted tokens.
double library_balance(const ref::config& c, const st::library_result& fwd, double lambda,
                       std::vector<double>& drouter) {
  const int B = c.B, H = c.Hq, T = c.Tq;
  std::vector<std::uint8_t> counted(fwd.counted.begin(), fwd.counted.end());
  drouter.assign(fwd.router.size(), 0.0);
  const sm::balance::layer_input<double> layer{{fwd.router.data(), {B, H, T}},
                                               {counted.data(), {B, T}}};
  const sm::tensor_view<double, 3> grad{drouter.data(), {B, H, T}};
  const sm::balance::importance_cv2 reg{.lambda = lambda};
  return reg.forward_backward<double>(sm::exec::host{1}, std::span(&layer, 1), std::span(&grad, 1))
      .loss;
}

/// Runs the padded problem through the library (forward, balance, backward) and checks it.
void check_padded(const padded_problem& p, bool use_float, double lambda = 0.05) {
  const ref::config& c = p.cfg;
  const auto run = [&](const ref::cotangents& ct, bool backward) {
    const st::run_options opts{.backward = backward, .threads = ck::next_threads()};
    return use_float
               ? st::run_library_padded<float>(c, p.lens.q, p.lens.k, p.side, p.in, ct, opts)
               : st::run_library_padded<double>(c, p.lens.q, p.lens.k, p.side, p.in, ct, opts);
  };
  const expected want = oracle(p, lambda);
  const st::library_result fwd = run(p.ct, false);
  std::vector<double> balance_grad;
  const double loss = library_balance(c, fwd, lambda, balance_grad);
  ref::cotangents ct = p.ct;
  for (std::size_t i = 0; i < ct.drouter.size(); ++i) ct.drouter[i] += balance_grad[i];
  const st::library_result got = run(ct, true);

  const double rtol = use_float ? 2e-5 : 1e-10;
  ck::check_rel("out", got.out, want.r.out, rtol);
  ck::check_rel("lse", got.lse, want.r.lse, rtol);
  ck::check_rel("router", got.router, want.r.router, rtol);
  BOOST_TEST(got.counted == want.r.counted, "counted tokens differ");
  ck::check_rel("balance loss", {loss}, {want.balance_loss}, use_float ? 1e-4 : 1e-10);
  ck::check_scaled("balance dL/dG", balance_grad, want.balance_drouter, use_float ? 1e-4 : 1e-10);
  const double gtol = use_float ? 1e-4 : 1e-10;
  ck::check_scaled("dq", got.dq, want.r.dq, gtol);
  ck::check_scaled("dk", got.dk, want.r.dk, gtol);
  ck::check_scaled("dv", got.dv, want.r.dv, gtol);
  ck::check_scaled("dsinks", got.dsinks, want.r.dsinks, gtol);
  ck::check_scaled("dgate", got.dgate, want.r.dgate, gtol);
}

const lengths self_attention{7, 7, {7, 0, 1, 4}, {7, 0, 1, 4}};
const lengths kv_cache{3, 9, {3, 0, 1, 2}, {9, 2, 1, 5}};  // decode-style, Tq < Tk
const lengths key_tiles{5, 70, {5, 1, 0}, {70, 66, 3}};    // more than one 64-key tile

const sm::padding_side sides[] = {sm::padding_side::right, sm::padding_side::left};

}  // namespace

// Every mask x {vanilla, learned sink, fixed sink + headwise gate, vanilla + elementwise gate with
// the product route}, both sides, three length sets; double.
BOOST_AUTO_TEST_CASE(every_mask_and_side_matches_the_oracle_per_sequence) {
  std::mt19937_64 rng(4101);
  int cases = 0;
  for (mask_kind m : ck::all_masks)
    for (const ck::combo cb :
         {ck::combo{sink_kind::none, gate_kind::none, m, route_kind::sink_mass},
          ck::combo{sink_kind::learned, gate_kind::none, m, route_kind::sink_mass},
          ck::combo{sink_kind::fixed, gate_kind::headwise, m, route_kind::output_gate},
          ck::combo{sink_kind::none, gate_kind::elementwise, m, route_kind::product}})
      for (const lengths& lens : {self_attention, kv_cache, key_tiles})
        for (sm::padding_side side : sides) {
          const ref::config base = ck::make_config(cb, {1, 0, 0, 4, 2, 8, 3, 1}, 0.5);
          const padded_problem p = make_padded(base, lens, side, rng);
          BOOST_TEST_CONTEXT(describe(p)) { check_padded(p, false); }
          ++cases;
        }
  BOOST_TEST(cases == 4 * 4 * 3 * 2);
}

// Float on the same matrix, self-attention and KV-cache lengths.
BOOST_AUTO_TEST_CASE(float_matches_the_oracle_per_sequence) {
  std::mt19937_64 rng(4102);
  for (mask_kind m : ck::all_masks)
    for (const ck::combo cb :
         {ck::combo{sink_kind::none, gate_kind::none, m, route_kind::sink_mass},
          ck::combo{sink_kind::learned, gate_kind::elementwise, m, route_kind::output_gate}})
      for (const lengths& lens : {self_attention, kv_cache})
        for (sm::padding_side side : sides) {
          const ref::config base = ck::make_config(cb, {1, 0, 0, 2, 1, 16, 3, 1}, 0.5);
          const padded_problem p = make_padded(base, lens, side, rng);
          BOOST_TEST_CONTEXT(describe(p)) { check_padded(p, true); }
        }
}

// Left padding: the vanilla sink is the first real token, so a left-padded batch gives what
// the same sequences give right-padded, row for row (shifted), bitwise.
BOOST_AUTO_TEST_CASE(left_padding_equals_right_padding_shifted) {
  std::mt19937_64 rng(4103);
  const ref::config base =
      ck::make_config({sink_kind::none, gate_kind::none, mask_kind::causal, route_kind::sink_mass},
                      {1, 0, 0, 2, 1, 8});
  padded_problem right = make_padded(base, self_attention, sm::padding_side::right, rng);
  padded_problem left = right;
  left.side = sm::padding_side::left;
  // Move each sequence's real rows to the end.
  const ref::config& c = right.cfg;
  const std::size_t qw = std::size_t(c.Hq) * c.D, kw = std::size_t(c.Hkv) * c.D;
  for (int b = 0; b < c.B; ++b) {
    const int lq = right.lens.q[b], lk = right.lens.k[b];
    for (int t = 0; t < lq; ++t)
      for (std::size_t i = 0; i < qw; ++i) {
        left.in.q[(std::size_t(b) * c.Tq + c.Tq - lq + t) * qw + i] =
            right.in.q[(std::size_t(b) * c.Tq + t) * qw + i];
        left.ct.dout[(std::size_t(b) * c.Tq + c.Tq - lq + t) * qw + i] =
            right.ct.dout[(std::size_t(b) * c.Tq + t) * qw + i];
      }
    for (int j = 0; j < lk; ++j)
      for (std::size_t i = 0; i < kw; ++i) {
        left.in.k[(std::size_t(b) * c.Tk + c.Tk - lk + j) * kw + i] =
            right.in.k[(std::size_t(b) * c.Tk + j) * kw + i];
        left.in.v[(std::size_t(b) * c.Tk + c.Tk - lk + j) * kw + i] =
            right.in.v[(std::size_t(b) * c.Tk + j) * kw + i];
      }
    for (int h = 0; h < c.Hq; ++h)
      for (int t = 0; t < lq; ++t) {
        const std::size_t from = (std::size_t(b) * c.Hq + h) * c.Tq + t;
        left.ct.dlse[from + c.Tq - lq] = right.ct.dlse[from];
        left.ct.drouter[from + c.Tq - lq] = right.ct.drouter[from];
      }
  }
  const auto r =
      st::run_library_padded<double>(c, right.lens.q, right.lens.k, right.side, right.in, right.ct);
  const auto l =
      st::run_library_padded<double>(c, left.lens.q, left.lens.k, left.side, left.in, left.ct);
  for (int b = 0; b < c.B; ++b) {
    const int lq = right.lens.q[b];
    for (int t = 0; t < lq; ++t) {
      for (std::size_t i = 0; i < qw; ++i) {
        const std::size_t at_r = (std::size_t(b) * c.Tq + t) * qw + i;
        const std::size_t at_l = (std::size_t(b) * c.Tq + c.Tq - lq + t) * qw + i;
        BOOST_TEST_REQUIRE(l.out[at_l] == r.out[at_r]);
        BOOST_TEST_REQUIRE(l.dq[at_l] == r.dq[at_r]);
      }
      for (int h = 0; h < c.Hq; ++h) {
        const std::size_t at = (std::size_t(b) * c.Hq + h) * c.Tq + t;
        BOOST_TEST_REQUIRE(l.router[at + c.Tq - lq] == r.router[at]);
      }
      BOOST_TEST_REQUIRE(l.counted[std::size_t(b) * c.Tq + c.Tq - lq + t] ==
                         r.counted[std::size_t(b) * c.Tq + t]);
    }
  }
}

// The padding's values never reach a real output: two problems that differ only there give
// bitwise equal results.
BOOST_AUTO_TEST_CASE(padding_values_do_not_matter) {
  std::mt19937_64 rng(4104);
  for (sm::padding_side side : sides) {
    const ref::config base = ck::make_config(
        {sink_kind::learned, gate_kind::elementwise, mask_kind::none, route_kind::product},
        {1, 0, 0, 2, 1, 8});
    const padded_problem a = make_padded(base, kv_cache, side, rng);
    padded_problem b = a;
    const ref::config& c = a.cfg;
    for (int s = 0; s < c.B; ++s) {
      const rows_at q = real_rows_of(a.lens.q[s], c.Tq, side),
                    k = real_rows_of(a.lens.k[s], c.Tk, side);
      for (int t = 0; t < c.Tq; ++t)
        if (t < q.begin || t >= q.begin + q.count)
          for (int i = 0; i < c.Hq * c.D; ++i) {
            b.in.q[(std::size_t(s) * c.Tq + t) * c.Hq * c.D + i] = 1e3;
            b.ct.dout[(std::size_t(s) * c.Tq + t) * c.Hq * c.D + i] = -7;
          }
      for (int j = 0; j < c.Tk; ++j)
        if (j < k.begin || j >= k.begin + k.count)
          for (int i = 0; i < c.Hkv * c.D; ++i) {
            b.in.k[(std::size_t(s) * c.Tk + j) * c.Hkv * c.D + i] = 1e3;
            b.in.v[(std::size_t(s) * c.Tk + j) * c.Hkv * c.D + i] = std::nan("");
          }
    }
    const auto ra = st::run_library_padded<double>(c, a.lens.q, a.lens.k, side, a.in, a.ct);
    const auto rb = st::run_library_padded<double>(c, b.lens.q, b.lens.k, side, b.in, b.ct);
    ck::check_bitwise("out", rb.out, ra.out);
    ck::check_bitwise("lse", rb.lse, ra.lse);
    ck::check_bitwise("router", rb.router, ra.router);
    ck::check_bitwise("dq", rb.dq, ra.dq);
    ck::check_bitwise("dk", rb.dk, ra.dk);
    ck::check_bitwise("dv", rb.dv, ra.dv);
    ck::check_bitwise("dsinks", rb.dsinks, ra.dsinks);
    ck::check_bitwise("dgate", rb.dgate, ra.dgate);
  }
}

// Without lengths a padded batch is plain attention over every key: accepted, and different.
BOOST_AUTO_TEST_CASE(without_lengths_every_key_is_attended) {
  std::mt19937_64 rng(4105);
  const ref::config base = ck::make_config(
      {sink_kind::learned, gate_kind::none, mask_kind::causal, route_kind::sink_mass},
      {1, 0, 0, 2, 1, 8});
  const padded_problem p = make_padded(base, self_attention, sm::padding_side::right, rng);
  const auto padded = st::run_library_padded<double>(p.cfg, p.lens.q, p.lens.k, p.side, p.in, p.ct);
  const auto plain = st::run_library<double>(p.cfg, p.in, p.ct);
  const auto unpadded = st::run_library_padded<double>(p.cfg, {}, {}, p.side, p.in, p.ct);
  ck::check_bitwise("out (no lengths = plain)", unpadded.out, plain.out);
  BOOST_TEST(ck::rel_mismatches(padded.out, plain.out, 1e-6) > 0u);
}

// counted_tokens: a query is left out only when the vanilla sink is the only key it sees.
BOOST_AUTO_TEST_CASE(counted_tokens_follow_the_mask) {
  const int B = 2, T = 5, H = 1, D = 4;
  std::vector<float> q(B * T * H * D, 0.5f), kv(q.size(), 0.25f), out(q.size());
  std::vector<std::uint8_t> counted(B * T);
  const std::vector<std::int32_t> lens{3, 0};
  const auto counted_with = [&](auto attn, sm::attention_params params, bool padded,
                                sm::padding_side side = sm::padding_side::right) {
    using Attn = decltype(attn);
    sm::forward_args<float> fa;
    fa.q = {q.data(), {B, T, H, D}};
    fa.k = fa.v = {kv.data(), {B, T, H, D}};
    fa.out = {out.data(), {B, T, H, D}};
    fa.params = params;
    static const float sinks[H] = {0.0f};
    if constexpr (Attn::sink_type::needs_sinks_tensor) fa.sinks = {sinks, {H}};
    if (padded) fa.seqlens = {{lens.data(), {B}}, {lens.data(), {B}}, side};
    Attn::counted_tokens(fa, {counted.data(), {B, T}});
    return std::vector<int>(counted.begin(), counted.end());
  };
  using v_none = sm::vanilla_attention<sm::mask::none>;
  using v_causal = sm::vanilla_attention<sm::mask::causal>;
  using v_window = sm::vanilla_attention<sm::mask::sliding_window>;
  using v_stream = sm::vanilla_attention<sm::mask::streaming>;
  using s_causal = sm::sink_attention<sm::mask::causal>;
  // mask::none: the first query sees every key; it counts.
  BOOST_TEST((counted_with(v_none{}, {}, false) == std::vector<int>{1, 1, 1, 1, 1, 1, 1, 1, 1, 1}));
  // Causal: the first query sees the sink alone.
  BOOST_TEST(
      (counted_with(v_causal{}, {}, false) == std::vector<int>{0, 1, 1, 1, 1, 0, 1, 1, 1, 1}));
  // A window of 1: every query sees only itself; only the first one sees the sink alone.
  BOOST_TEST((counted_with(v_window{}, {.window = 1}, false) ==
              std::vector<int>{0, 1, 1, 1, 1, 0, 1, 1, 1, 1}));
  BOOST_TEST((counted_with(v_stream{}, {.window = 2, .sink_tokens = 1}, false) ==
              std::vector<int>{0, 1, 1, 1, 1, 0, 1, 1, 1, 1}));
  // A logit sink: every query with a key counts.
  BOOST_TEST(
      (counted_with(s_causal{}, {}, false) == std::vector<int>{1, 1, 1, 1, 1, 1, 1, 1, 1, 1}));
  // Padded: padding rows never count; the first real query is the one left out.
  BOOST_TEST(
      (counted_with(v_causal{}, {}, true) == std::vector<int>{0, 1, 1, 0, 0, 0, 0, 0, 0, 0}));
  BOOST_TEST((counted_with(v_causal{}, {}, true, sm::padding_side::left) ==
              std::vector<int>{0, 0, 0, 1, 1, 0, 0, 0, 0, 0}));
  BOOST_TEST((counted_with(v_none{}, {}, true, sm::padding_side::left) ==
              std::vector<int>{0, 0, 1, 1, 1, 0, 0, 0, 0, 0}));
  // Varlen: per packed sequence.
  {
    const std::vector<std::int32_t> cu{0, 2, 2, 5};
    sm::forward_args<float> fa;
    fa.q = {q.data(), {1, T, H, D}};
    fa.k = fa.v = {kv.data(), {1, T, H, D}};
    fa.out = {out.data(), {1, T, H, D}};
    fa.varlen = {cu.data(), cu.data(), 3};
    v_causal::counted_tokens(fa, {counted.data(), {1, T}});
    BOOST_TEST((std::vector<int>(counted.begin(), counted.begin() + T) ==
                std::vector<int>{0, 1, 0, 1, 1}));
  }
}

// Bad lengths: a sinkmoe::error naming the argument and the value; nothing written.
BOOST_AUTO_TEST_CASE(bad_lengths_are_refused) {
  const int B = 3, T = 4, H = 1, D = 4;
  std::vector<float> q(B * T * H * D, 0.5f), out(q.size(), 42.0f);
  const auto attempt = [&](std::vector<std::int32_t> lq, std::vector<std::int32_t> lk,
                           bool with_varlen = false, int num_seqs = 0) {
    sm::forward_args<float> fa;
    fa.q = fa.k = fa.v = {q.data(), {B, T, H, D}};
    fa.out = {out.data(), {B, T, H, D}};
    if (!lq.empty()) fa.seqlens.q = {lq.data(), {static_cast<sm::index_t>(lq.size())}};
    if (!lk.empty()) fa.seqlens.k = {lk.data(), {static_cast<sm::index_t>(lk.size())}};
    static const std::int32_t cu[] = {0, 4};
    if (with_varlen) fa.varlen = {cu, cu, 1};
    fa.varlen.num_seqs = with_varlen ? 1 : num_seqs;
    sm::vanilla_attention<sm::mask::causal>::forward(sm::exec::host{1}, fa);
  };
  BOOST_TEST(st::throws_naming(
      [&] {
        attempt({1, -1, 2}, {});
      },
      {"forward_args.seqlens.q[1] = -1"}));
  BOOST_TEST(st::throws_naming([&] { attempt({}, {4, 5, 0}); }, {"forward_args.seqlens.k[1] = 5"}));
  BOOST_TEST(st::throws_naming([&] { attempt({1, 2}, {}); }, {"forward_args.seqlens.q: shape"}));
  BOOST_TEST(st::throws_naming(
      [&] {
        attempt({1, 2, 3}, {}, true);
      },
      {"forward_args.seqlens given with varlen"}));
  BOOST_TEST(st::throws_naming([&] { attempt({}, {}, false, 2); },
                               {"varlen.num_seqs = 2 with null cu_seqlens_q"}));
  for (float x : out) BOOST_TEST_REQUIRE(x == 42.0f);
}
