// Variable-length batches (forward_args::varlen, FlashAttention's cu_seqlens): three sequences
// of different lengths packed in one B = 1 tensor give, row for row, what each sequence gives
// alone: out, lse, router, counted tokens and every gradient (dsinks: the sum over sequences).
// Covered: a 0-length query sequence, a 0-length key sequence (every row empty; compared with the
// oracle, since the runner cannot pass an empty tensor alone), Tq != Tk both ways, key tiles
// crossed, every policy combination, top-left alignment, double and float.
#define BOOST_TEST_MODULE varlen
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <sinkmoe/sinkmoe.hpp>

#include "support/host_checks.hpp"
#include "support/library_runner.hpp"
#include "support/reference.hpp"

namespace st = sinkmoe::testing;
namespace ref = sinkmoe::testing::ref;
namespace ck = sinkmoe::testing::checks;
using ref::gate_kind;
using ref::mask_kind;
using ref::route_kind;
using ref::sink_kind;

namespace {

struct packing {
  std::vector<int> q_len, k_len;
};

/// A packed problem and its per-sequence pieces.
struct packed_problem {
  ref::config cfg;  // B = number of sequences; Tq/Tk unused by run_library_varlen
  packing lens;
  ref::inputs in;    // packed [1, total, H, D]
  ref::cotangents ct;
  int total_q = 0, total_k = 0;
  std::vector<int> q_off, k_off;
};

packed_problem make_packed(const ref::config& base, const packing& lens, std::mt19937_64& rng) {
  packed_problem p;
  p.cfg = base;
  p.cfg.B = int(lens.q_len.size());
  p.lens = lens;
  p.q_off.push_back(0);
  p.k_off.push_back(0);
  for (std::size_t s = 0; s < lens.q_len.size(); ++s) {
    p.q_off.push_back(p.q_off.back() + lens.q_len[s]);
    p.k_off.push_back(p.k_off.back() + lens.k_len[s]);
  }
  p.total_q = p.q_off.back();
  p.total_k = p.k_off.back();
  // Inputs and cotangents of a B = 1 problem with the total lengths.
  ref::config flat = base;
  flat.B = 1;
  flat.Tq = p.total_q;
  flat.Tk = p.total_k;
  p.in = ck::make_inputs(flat, rng);
  p.ct = ck::make_cotangents(flat, rng);
  return p;
}

/// Sequence s alone: config, inputs and cotangents cut out of the packed ones.
struct sequence_problem {
  ref::config cfg;
  ref::inputs in;
  ref::cotangents ct;
};

sequence_problem cut(const packed_problem& p, int s) {
  const ref::config& c = p.cfg;
  const int tq = p.lens.q_len[s], tk = p.lens.k_len[s], D = c.D, dg = ck::gate_dim(c);
  sequence_problem r;
  r.cfg = c;
  r.cfg.B = 1;
  r.cfg.Tq = tq;
  r.cfg.Tk = tk;
  auto rows = [](const std::vector<double>& x, int first, int count, std::size_t width) {
    return std::vector<double>(x.begin() + first * width, x.begin() + (first + count) * width);
  };
  r.in.q = rows(p.in.q, p.q_off[s], tq, std::size_t(c.Hq) * D);
  r.in.k = rows(p.in.k, p.k_off[s], tk, std::size_t(c.Hkv) * D);
  r.in.v = rows(p.in.v, p.k_off[s], tk, std::size_t(c.Hkv) * D);
  r.in.sinks = p.in.sinks;
  if (c.gate != gate_kind::none) r.in.gate_logits = rows(p.in.gate_logits, p.q_off[s], tq, std::size_t(c.Hq) * dg);
  r.ct.dout = rows(p.ct.dout, p.q_off[s], tq, std::size_t(c.Hq) * D);
  for (int h = 0; h < c.Hq; ++h)
    for (int t = 0; t < tq; ++t) {
      r.ct.dlse.push_back(p.ct.dlse[std::size_t(h) * p.total_q + p.q_off[s] + t]);
      r.ct.drouter.push_back(p.ct.drouter[std::size_t(h) * p.total_q + p.q_off[s] + t]);
    }
  return r;
}

/// What sequence s gives alone: the library (B = 1) when both lengths are positive, else the
/// oracle (the runner cannot hand the library an empty tensor: std::vector has no data then).
st::library_result alone(const sequence_problem& sp, bool use_float) {
  if (sp.cfg.Tq > 0 && sp.cfg.Tk > 0)
    return use_float ? st::run_library<float>(sp.cfg, sp.in, sp.ct, {.threads = 1})
                     : st::run_library<double>(sp.cfg, sp.in, sp.ct, {.threads = 1});
  st::library_result r;
  const ref::forward_result f = ref::forward(sp.cfg, sp.in);
  const ref::gradients g = ref::backward(sp.cfg, sp.in, sp.ct);
  r.out = f.out;
  r.lse = f.lse;
  r.router = f.router;
  r.counted = f.counted;
  r.dq = g.dq;
  r.dk = g.dk;
  r.dv = g.dv;
  r.dsinks = g.dsinks;
  r.dgate = g.dgate;
  if (use_float) {  // the float library rounds lse to float; everything else is 0 or exact here
    for (double& x : r.lse) x = double(float(x));
    for (double& x : r.dsinks) x = double(float(x));
  }
  return r;
}

/// Packed result vs the concatenation of the per-sequence results.
void check_packed(const packed_problem& p, bool use_float) {
  const ref::config& c = p.cfg;
  const int D = c.D, dg = ck::gate_dim(c);
  const st::library_result got =
      use_float ? st::run_library_varlen<float>(c, p.lens.q_len, p.lens.k_len, p.in, p.ct,
                                                {.threads = ck::next_threads()})
                : st::run_library_varlen<double>(c, p.lens.q_len, p.lens.k_len, p.in, p.ct,
                                                 {.threads = ck::next_threads()});
  st::library_result want;
  want.lse.assign(std::size_t(c.Hq) * p.total_q, 0.0);
  want.router = want.lse;
  want.dsinks.assign(c.sink == sink_kind::learned ? c.Hq : 0, 0.0);
  for (int s = 0; s < c.B; ++s) {
    const sequence_problem sp = cut(p, s);
    const st::library_result a = alone(sp, use_float);
    const int tq = sp.cfg.Tq;
    want.out.insert(want.out.end(), a.out.begin(), a.out.end());
    want.dq.insert(want.dq.end(), a.dq.begin(), a.dq.end());
    want.dk.insert(want.dk.end(), a.dk.begin(), a.dk.end());
    want.dv.insert(want.dv.end(), a.dv.begin(), a.dv.end());
    want.dgate.insert(want.dgate.end(), a.dgate.begin(), a.dgate.end());
    want.counted.insert(want.counted.end(), a.counted.begin(), a.counted.end());
    for (int h = 0; h < c.Hq; ++h)
      for (int t = 0; t < tq; ++t) {
        want.lse[std::size_t(h) * p.total_q + p.q_off[s] + t] = a.lse[std::size_t(h) * tq + t];
        want.router[std::size_t(h) * p.total_q + p.q_off[s] + t] = a.router[std::size_t(h) * tq + t];
      }
    for (std::size_t h = 0; h < want.dsinks.size(); ++h) want.dsinks[h] += a.dsinks[h];
  }
  BOOST_TEST_REQUIRE(want.out.size() == std::size_t(p.total_q) * c.Hq * D);
  BOOST_TEST_REQUIRE(want.dgate.size() == (c.gate == gate_kind::none ? 0 : std::size_t(p.total_q) * c.Hq * dg));
  // Each sequence's arithmetic is the same packed or alone; allow rounding (the float dsinks sum
  // over sequences is done in a different order here).
  const double rtol = use_float ? 1e-6 : 1e-12;
  ck::check_rel("out", got.out, want.out, rtol);
  ck::check_rel("lse", got.lse, want.lse, rtol);
  ck::check_rel("router", got.router, want.router, rtol);
  BOOST_TEST(got.counted == want.counted, "counted tokens differ");
  ck::check_scaled("dq", got.dq, want.dq, rtol);
  ck::check_scaled("dk", got.dk, want.dk, rtol);
  ck::check_scaled("dv", got.dv, want.dv, rtol);
  ck::check_scaled("dsinks", got.dsinks, want.dsinks, rtol);
  ck::check_scaled("dgate", got.dgate, want.dgate, rtol);
  // Keys of a sequence without queries get no gradient at all.
  for (int s = 0; s < c.B; ++s)
    if (p.lens.q_len[s] == 0)
      for (std::size_t i = std::size_t(p.k_off[s]) * c.Hkv * D; i < std::size_t(p.k_off[s + 1]) * c.Hkv * D; ++i) {
        if (got.dk[i] != 0.0 || got.dv[i] != 0.0) {
          BOOST_TEST(false, "sequence " << s << " has no query but dk/dv[" << i << "] != 0");
          break;
        }
      }
}

const packing packings[] = {
    {{5, 0, 17}, {5, 7, 23}},      // a 0-length query sequence; Tq != Tk
    {{70, 3, 0}, {66, 130, 4}},    // key tiles crossed; Tq > Tk (empty causal rows); Tq = 0 last
    {{17, 4, 9}, {17, 0, 30}},     // a 0-length key sequence (every row empty)
};

}  // namespace

// Every policy combination, each packing, double (to 1e-12 of the sequence run alone).
BOOST_AUTO_TEST_CASE(every_combination_matches_sequences_alone) {
  std::mt19937_64 rng(3001);
  int index = 0;
  for (const ck::combo& cb : ck::all_combos())
    for (const packing& pk : packings) {
      const double fixed[] = {-30, 0, 5, 30};
      const ref::config base = ck::make_config(cb, {1, 0, 0, 4, 2, 16, 3 + index % 2 * 61, 2},
                                               fixed[index % 4]);
      ++index;
      const packed_problem p = make_packed(base, pk, rng);
      BOOST_TEST_CONTEXT(ck::describe(p.cfg) << " q_len " << pk.q_len[0] << ',' << pk.q_len[1] << ','
                                             << pk.q_len[2] << " k_len " << pk.k_len[0] << ','
                                             << pk.k_len[1] << ',' << pk.k_len[2]) {
        check_packed(p, false);
      }
    }
}

// Float, and top-left alignment, on the combinations the brief names: causal bottom-right,
// sliding window, learned sink, elementwise gate.
BOOST_AUTO_TEST_CASE(float_and_top_left) {
  const ck::combo combos[] = {
      {sink_kind::none, gate_kind::none, mask_kind::causal, route_kind::sink_mass},
      {sink_kind::learned, gate_kind::none, mask_kind::sliding_window, route_kind::sink_mass},
      {sink_kind::learned, gate_kind::elementwise, mask_kind::causal, route_kind::product},
      {sink_kind::fixed, gate_kind::headwise, mask_kind::streaming, route_kind::output_gate},
      {sink_kind::none, gate_kind::elementwise, mask_kind::sliding_window, route_kind::product},
  };
  std::mt19937_64 rng(3002);
  for (const ck::combo& cb : combos)
    for (const packing& pk : packings)
      for (bool top_left : {false, true}) {
        const ref::config base = ck::make_config(cb, {1, 0, 0, 4, 2, 16, 3, 1, top_left}, 5.0);
        const packed_problem p = make_packed(base, pk, rng);
        BOOST_TEST_CONTEXT(ck::describe(p.cfg) << " q_len0 " << pk.q_len[0]) {
          check_packed(p, true);
          if (top_left) check_packed(p, false);
        }
      }
}

// The packed run must not equal a run that ignores the boundaries: a B = 1 problem over all rows
// differs (the check above can fail).
BOOST_AUTO_TEST_CASE(boundaries_matter) {
  std::mt19937_64 rng(3003);
  const ref::config base = ck::make_config(
      {sink_kind::learned, gate_kind::none, mask_kind::none, route_kind::sink_mass}, {1, 0, 0, 2, 1, 16});
  const packed_problem p = make_packed(base, packings[0], rng);
  const auto got = st::run_library_varlen<double>(p.cfg, p.lens.q_len, p.lens.k_len, p.in, p.ct);
  ref::config whole = base;
  whole.Tq = p.total_q;
  whole.Tk = p.total_k;
  const auto flat = st::run_library<double>(whole, p.in, p.ct, {.threads = 1});
  BOOST_TEST(ck::rel_mismatches(got.out, flat.out, 1e-6) > 0u);
  // ...while the oracle per sequence agrees with the packed run (to the fp64 rule).
  for (int s = 0; s < p.cfg.B; ++s) {
    const sequence_problem sp = cut(p, s);
    const ref::forward_result f = ref::forward(sp.cfg, sp.in);
    std::vector<double> out(got.out.begin() + std::size_t(p.q_off[s]) * base.Hq * base.D,
                            got.out.begin() + std::size_t(p.q_off[s + 1]) * base.Hq * base.D);
    ck::check_rel("out of sequence " + std::to_string(s), out, f.out, 1e-10);
  }
}
