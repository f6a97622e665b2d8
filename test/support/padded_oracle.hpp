// The fp64 reference of a padded batch (forward_args::seqlens): the oracle of reference.hpp,
// which knows nothing of padding, run on each sequence's real rows alone, its results placed at
// those rows and the padding values everywhere else (out 0, lse the sink logit or -inf, G 0, not
// counted, zero gradients), with the balancing loss over the whole batch. Shared by the host and
// the emulated padding suites.
#pragma once

#include <cstddef>
#include <limits>
#include <random>
#include <sinkmoe/args.hpp>
#include <string>
#include <vector>

#include "support/host_checks.hpp"
#include "support/library_runner.hpp"
#include "support/reference.hpp"

namespace sinkmoe::testing::padded {

namespace ck = sinkmoe::testing::checks;
using ref::gate_kind;
using ref::sink_kind;

struct lengths {
  int tq, tk;  // padded T of queries and keys
  std::vector<int> q, k;
};

/// Real rows [begin, begin + count) of one sequence, as the library places them.
struct rows_at {
  int begin, count;
};
inline rows_at real_rows_of(int length, int total, sinkmoe::padding_side side) {
  return {side == sinkmoe::padding_side::left ? total - length : 0, length};
}

/// One padded problem, and each sequence cut out of it as an unpadded B = 1 problem.
struct padded_problem {
  ref::config cfg;  // B sequences, padded Tq / Tk
  lengths lens;
  sinkmoe::padding_side side;
  ref::inputs in;
  ref::cotangents ct;
};

struct sequence_problem {
  ref::config cfg;
  ref::inputs in;
  ref::cotangents ct;
  rows_at q, k;
};

inline sequence_problem cut(const padded_problem& p, int b) {
  const ref::config& c = p.cfg;
  const int D = c.D, dg = ck::gate_dim(c);
  sequence_problem r;
  r.q = real_rows_of(p.lens.q[b], c.Tq, p.side);
  r.k = real_rows_of(p.lens.k[b], c.Tk, p.side);
  r.cfg = c;
  r.cfg.B = 1;
  r.cfg.Tq = r.q.count;
  r.cfg.Tk = r.k.count;
  const auto rows = [](const std::vector<double>& x, std::size_t first_row, int count,
                       std::size_t width) {
    return std::vector<double>(x.begin() + first_row * width,
                               x.begin() + (first_row + count) * width);
  };
  const std::size_t qw = std::size_t(c.Hq) * D, kw = std::size_t(c.Hkv) * D;
  r.in.q = rows(p.in.q, std::size_t(b) * c.Tq + r.q.begin, r.q.count, qw);
  r.in.k = rows(p.in.k, std::size_t(b) * c.Tk + r.k.begin, r.k.count, kw);
  r.in.v = rows(p.in.v, std::size_t(b) * c.Tk + r.k.begin, r.k.count, kw);
  r.in.sinks = p.in.sinks;
  if (c.gate != gate_kind::none)
    r.in.gate_logits = rows(p.in.gate_logits, std::size_t(b) * c.Tq + r.q.begin, r.q.count,
                            std::size_t(c.Hq) * dg);
  r.ct.dout = rows(p.ct.dout, std::size_t(b) * c.Tq + r.q.begin, r.q.count, qw);
  for (int h = 0; h < c.Hq; ++h)
    for (int t = 0; t < r.q.count; ++t) {
      const std::size_t at = (std::size_t(b) * c.Hq + h) * c.Tq + r.q.begin + t;
      r.ct.dlse.push_back(p.ct.dlse[at]);
      r.ct.drouter.push_back(p.ct.drouter[at]);
    }
  return r;
}

/// What the padded batch must give: the oracle per sequence at its real rows, the padding values
/// elsewhere, and the balancing loss over the whole batch (lambda > 0: its dL/dG joins drouter).
struct expected {
  library_result r;
  double balance_loss = 0;
  std::vector<double> balance_drouter;  // [B, Hq, Tq]
};

inline expected oracle(const padded_problem& p, double lambda) {
  const ref::config& c = p.cfg;
  const int B = c.B, Tq = c.Tq, Tk = c.Tk, Hq = c.Hq, Hkv = c.Hkv, D = c.D, dg = ck::gate_dim(c);
  const double pad_lse = c.sink == sink_kind::learned ? 0.0 /*per head below*/
                         : c.sink == sink_kind::fixed ? c.fixed_sink
                                                      : -std::numeric_limits<double>::infinity();
  expected e;
  library_result& w = e.r;
  w.out.assign(std::size_t(B) * Tq * Hq * D, 0.0);
  w.lse.assign(std::size_t(B) * Hq * Tq, pad_lse);
  if (c.sink == sink_kind::learned)
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < Hq; ++h)
        for (int t = 0; t < Tq; ++t) w.lse[(std::size_t(b) * Hq + h) * Tq + t] = p.in.sinks[h];
  w.router.assign(w.lse.size(), 0.0);
  w.counted.assign(std::size_t(B) * Tq, 0);

  // Forward per sequence; then the batch's balancing loss over the concatenated real rows.
  std::vector<sequence_problem> seqs;
  std::vector<ref::forward_result> fwd;
  int total = 0;
  for (int b = 0; b < B; ++b) {
    seqs.push_back(cut(p, b));
    fwd.push_back(ref::forward(seqs.back().cfg, seqs.back().in));
    total += seqs.back().q.count;
  }
  ref::config flat = c;
  flat.B = 1;
  flat.Tq = total;
  std::vector<double> flat_router(std::size_t(Hq) * total);
  std::vector<int> flat_counted;
  for (int b = 0, offset = 0; b < B; offset += seqs[b].q.count, ++b) {
    const sequence_problem& s = seqs[b];
    for (int h = 0; h < Hq; ++h)
      for (int t = 0; t < s.q.count; ++t) {
        const std::size_t at = (std::size_t(b) * Hq + h) * Tq + s.q.begin + t;
        const std::size_t from = std::size_t(h) * s.q.count + t;
        w.lse[at] = fwd[b].lse[from];
        w.router[at] = fwd[b].router[from];
        flat_router[std::size_t(h) * total + offset + t] = fwd[b].router[from];
      }
    for (int t = 0; t < s.q.count; ++t) {
      w.counted[std::size_t(b) * Tq + s.q.begin + t] = fwd[b].counted[t];
      flat_counted.push_back(fwd[b].counted[t]);
      for (int i = 0; i < Hq * D; ++i)
        w.out[(std::size_t(b) * Tq + s.q.begin + t) * Hq * D + i] =
            fwd[b].out[std::size_t(t) * Hq * D + i];
    }
  }
  const ref::balance_result bal =
      ref::balance(flat, flat_router, flat_counted, ref::balance_config{lambda});
  e.balance_loss = bal.loss;
  e.balance_drouter.assign(w.router.size(), 0.0);

  // Backward per sequence with the cotangents plus the balance gradient of its rows.
  w.dq.assign(w.out.size(), 0.0);
  w.dk.assign(std::size_t(B) * Tk * Hkv * D, 0.0);
  w.dv = w.dk;
  w.dsinks.assign(c.sink == sink_kind::learned ? Hq : 0, 0.0);
  if (c.gate != gate_kind::none) w.dgate.assign(std::size_t(B) * Tq * Hq * dg, 0.0);
  for (int b = 0, offset = 0; b < B; offset += seqs[b].q.count, ++b) {
    sequence_problem& s = seqs[b];
    for (int h = 0; h < Hq; ++h)
      for (int t = 0; t < s.q.count; ++t) {
        const double g = bal.drouter[std::size_t(h) * total + offset + t];
        s.ct.drouter[std::size_t(h) * s.q.count + t] += g;
        e.balance_drouter[(std::size_t(b) * Hq + h) * Tq + s.q.begin + t] = g;
      }
    const ref::gradients g = ref::backward(s.cfg, s.in, s.ct);
    for (int t = 0; t < s.q.count; ++t) {
      for (int i = 0; i < Hq * D; ++i)
        w.dq[(std::size_t(b) * Tq + s.q.begin + t) * Hq * D + i] =
            g.dq[std::size_t(t) * Hq * D + i];
      for (int i = 0; i < Hq * dg && c.gate != gate_kind::none; ++i)
        w.dgate[(std::size_t(b) * Tq + s.q.begin + t) * Hq * dg + i] =
            g.dgate[std::size_t(t) * Hq * dg + i];
    }
    for (int j = 0; j < s.k.count; ++j)
      for (int i = 0; i < Hkv * D; ++i) {
        w.dk[(std::size_t(b) * Tk + s.k.begin + j) * Hkv * D + i] =
            g.dk[std::size_t(j) * Hkv * D + i];
        w.dv[(std::size_t(b) * Tk + s.k.begin + j) * Hkv * D + i] =
            g.dv[std::size_t(j) * Hkv * D + i];
      }
    for (std::size_t h = 0; h < w.dsinks.size(); ++h) w.dsinks[h] += g.dsinks[h];
  }
  return e;
}

inline padded_problem make_padded(const ref::config& base, const lengths& lens,
                                  sinkmoe::padding_side side, std::mt19937_64& rng) {
  padded_problem p;
  p.cfg = base;
  p.cfg.B = int(lens.q.size());
  p.cfg.Tq = lens.tq;
  p.cfg.Tk = lens.tk;
  p.lens = lens;
  p.side = side;
  p.in = ck::make_inputs(p.cfg, rng);  // padding rows hold random values: they must not matter
  p.ct = ck::make_cotangents(p.cfg, rng);
  return p;
}

inline std::string describe(const padded_problem& p) {
  std::string s =
      ck::describe(p.cfg) + (p.side == sinkmoe::padding_side::left ? " left" : " right");
  s += " q_len";
  for (int x : p.lens.q) s += " " + std::to_string(x);
  s += " k_len";
  for (int x : p.lens.k) s += " " + std::to_string(x);
  return s;
}

}  // namespace sinkmoe::testing::padded
