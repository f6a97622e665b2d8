// A naive explicit-matrix attention in a chosen precision F (float or double), for
// FlashAttention's tolerance rule (docs/design.md section 7): a library result in precision p
// passes when its error against the fp64 oracle is at most 2x the error of this naive
// computation in the same precision p, plus a small atol.
//
// Same math as the oracle (test/support/reference.hpp), computed in the most direct way in F:
// inputs are rounded to F once, every score, exponential, sum and product is done in F. It shares
// nothing with include/sinkmoe. Layouts and conventions are the oracle's; results come back as
// double (ref::forward_result / ref::gradients) so the same comparison code serves both.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include "support/reference.hpp"

namespace sinkmoe::testing::naive {

namespace detail {

template <class F>
F sigmoid(F x) {
  return x >= F(0) ? F(1) / (F(1) + std::exp(-x)) : std::exp(x) / (F(1) + std::exp(x));
}

template <class F>
std::vector<F> to(const std::vector<double>& x) {
  return std::vector<F>(x.begin(), x.end());
}

template <class F>
struct inputs_f {
  std::vector<F> q, k, v, sinks, z;
};

// One (b, h, t) row in precision F, kept for the backward pass.
template <class F>
struct row {
  std::vector<int> keys;
  std::vector<F> th, p;  // tanh(raw / cap) with soft-cap; P = exp(s - lse)
  F beta = -std::numeric_limits<F>::infinity();
  F lse = -std::numeric_limits<F>::infinity();
  F a = 0;  // sink mass
  std::vector<F> o, g;
  F gmean = 1, gsink = 0, router = 0;
  bool empty = true;
};

inline int gate_dim(const ref::config& c) { return c.gate == ref::gate_kind::elementwise ? c.D : 1; }

template <class F>
row<F> compute_row(const ref::config& c, const inputs_f<F>& in, int b, int h, int t) {
  const int hk = h / (c.Hq / c.Hkv);
  const F scale = F(c.scale), cap = F(c.softcap);
  row<F> r;
  if (c.sink == ref::sink_kind::learned) r.beta = in.sinks[h];
  if (c.sink == ref::sink_kind::fixed) r.beta = F(c.fixed_sink);
  const F* q = &in.q[((std::size_t(b) * c.Tq + t) * c.Hq + h) * c.D];
  std::vector<F> s;
  for (int j = 0; j < c.Tk; ++j) {
    if (!ref::visible(c, t, j)) continue;
    const F* k = &in.k[((std::size_t(b) * c.Tk + j) * c.Hkv + hk) * c.D];
    F dot = 0;
    for (int d = 0; d < c.D; ++d) dot += q[d] * k[d];
    const F raw = scale * dot;
    if (c.softcap > 0) {
      r.th.push_back(std::tanh(raw / cap));
      s.push_back(cap * r.th.back());
    } else {
      s.push_back(raw);
    }
    r.keys.push_back(j);
  }
  r.empty = r.keys.empty();
  F m = r.beta;
  for (F x : s) m = std::max(m, x);
  if (m != -std::numeric_limits<F>::infinity()) {
    F sum = r.beta == -std::numeric_limits<F>::infinity() ? F(0) : std::exp(r.beta - m);
    for (F x : s) sum += std::exp(x - m);
    r.lse = m + std::log(sum);
  }
  r.o.assign(c.D, F(0));
  if (c.gate != ref::gate_kind::none) {
    const int dg = gate_dim(c);
    const F* z = &in.z[((std::size_t(b) * c.Tq + t) * c.Hq + h) * dg];
    r.g.resize(dg);
    F sum = 0;
    for (int i = 0; i < dg; ++i) sum += (r.g[i] = sigmoid(z[i]));
    r.gmean = sum / F(dg);
  }
  if (r.empty) return r;
  for (std::size_t i = 0; i < s.size(); ++i) {
    r.p.push_back(std::exp(s[i] - r.lse));
    const F* v = &in.v[((std::size_t(b) * c.Tk + r.keys[i]) * c.Hkv + hk) * c.D];
    for (int d = 0; d < c.D; ++d) r.o[d] += r.p[i] * v[d];
  }
  if (c.sink == ref::sink_kind::none)
    r.a = r.keys.front() == 0 ? r.p.front() : F(0);
  else
    r.a = std::exp(r.beta - r.lse);
  r.gsink = F(1) - r.a;
  switch (c.route) {
    case ref::route_kind::sink_mass: r.router = r.gsink; break;
    case ref::route_kind::output_gate: r.router = r.gmean; break;
    case ref::route_kind::product: r.router = r.gmean * r.gsink; break;
  }
  return r;
}

template <class F>
inputs_f<F> convert(const ref::inputs& in) {
  return {to<F>(in.q), to<F>(in.k), to<F>(in.v), to<F>(in.sinks), to<F>(in.gate_logits)};
}

}  // namespace detail

/// out, lse and router computed naively in F (counted is left empty).
template <class F>
ref::forward_result forward(const ref::config& c, const ref::inputs& in_d) {
  const detail::inputs_f<F> in = detail::convert<F>(in_d);
  ref::forward_result f;
  f.out.assign(std::size_t(c.B) * c.Tq * c.Hq * c.D, 0.0);
  f.lse.assign(std::size_t(c.B) * c.Hq * c.Tq, 0.0);
  f.router.assign(f.lse.size(), 0.0);
  for (int b = 0; b < c.B; ++b)
    for (int t = 0; t < c.Tq; ++t)
      for (int h = 0; h < c.Hq; ++h) {
        const detail::row<F> r = detail::compute_row(c, in, b, h, t);
        const std::size_t ri = (std::size_t(b) * c.Hq + h) * c.Tq + t;
        f.lse[ri] = double(r.lse);
        f.router[ri] = double(r.router);
        const std::size_t oi = ((std::size_t(b) * c.Tq + t) * c.Hq + h) * c.D;
        for (int d = 0; d < c.D; ++d) {
          const F y = r.g.empty() ? r.o[d]
                                  : r.g[c.gate == ref::gate_kind::elementwise ? d : 0] * r.o[d];
          f.out[oi + d] = double(y);
        }
      }
  return f;
}

/// Reverse mode of L = sum(out*dout) + sum(lse*dlse over finite lse) + sum(G*drouter), naively
/// in F (the oracle's derivation, docs/method.md section 5, evaluated in F).
template <class F>
ref::gradients backward(const ref::config& c, const ref::inputs& in_d, const ref::cotangents& ct_d) {
  const detail::inputs_f<F> in = detail::convert<F>(in_d);
  const std::vector<F> dout = detail::to<F>(ct_d.dout), dlse_v = detail::to<F>(ct_d.dlse),
                       drouter = detail::to<F>(ct_d.drouter);
  auto at = [](const std::vector<F>& x, std::size_t i) { return x.empty() ? F(0) : x[i]; };
  const int dg = detail::gate_dim(c);
  const bool ew = c.gate == ref::gate_kind::elementwise;
  const F scale = F(c.scale);
  std::vector<F> dq(in.q.size(), F(0)), dk(in.k.size(), F(0)), dv(in.v.size(), F(0));
  std::vector<F> dsinks(c.sink == ref::sink_kind::learned ? c.Hq : 0, F(0));
  std::vector<F> dz(c.gate != ref::gate_kind::none ? in.z.size() : 0, F(0));
  for (int b = 0; b < c.B; ++b)
    for (int t = 0; t < c.Tq; ++t)
      for (int h = 0; h < c.Hq; ++h) {
        const int hk = h / (c.Hq / c.Hkv);
        const detail::row<F> r = detail::compute_row(c, in, b, h, t);
        const std::size_t ri = (std::size_t(b) * c.Hq + h) * c.Tq + t;
        const std::size_t qi = ((std::size_t(b) * c.Tq + t) * c.Hq + h) * c.D;
        const F dlse = std::isfinite(r.lse) ? at(dlse_v, ri) : F(0);
        F dbeta = 0;
        if (r.empty) {
          dbeta = dlse;
        } else {
          const F dG = at(drouter, ri);
          F gbar_g = 0, gbar_s = 0;
          if (c.route == ref::route_kind::sink_mass) gbar_s = dG;
          if (c.route == ref::route_kind::output_gate) gbar_g = dG;
          if (c.route == ref::route_kind::product) {
            gbar_g = dG * r.gsink;
            gbar_s = dG * r.gmean;
          }
          std::vector<F> dO(c.D);
          for (int d = 0; d < c.D; ++d) dO[d] = at(dout, qi + d);
          if (!r.g.empty()) {
            F* dzr = &dz[((std::size_t(b) * c.Tq + t) * c.Hq + h) * dg];
            F dyo = 0;
            for (int d = 0; d < c.D; ++d) {
              const F dy = dO[d];
              dO[d] = r.g[ew ? d : 0] * dy;
              if (ew)
                dzr[d] += r.g[d] * (F(1) - r.g[d]) * (dy * r.o[d] + gbar_g / F(c.D));
              else
                dyo += dy * r.o[d];
            }
            if (!ew) dzr[0] += r.g[0] * (F(1) - r.g[0]) * (dyo + gbar_g);
          }
          const std::size_t n = r.keys.size();
          std::vector<F> dP(n, F(0)), ds(n, F(0));
          for (std::size_t i = 0; i < n; ++i) {
            const std::size_t vi = ((std::size_t(b) * c.Tk + r.keys[i]) * c.Hkv + hk) * c.D;
            for (int d = 0; d < c.D; ++d) {
              dP[i] += dO[d] * in.v[vi + d];
              dv[vi + d] += r.p[i] * dO[d];
            }
          }
          const F dA = -gbar_s;
          F dlse_tot = dlse;
          if (c.sink == ref::sink_kind::none) {
            if (r.keys.front() == 0) dP[0] += dA;
          } else {
            dbeta += r.a * dA;
            dlse_tot -= r.a * dA;
          }
          for (std::size_t i = 0; i < n; ++i) {
            ds[i] += r.p[i] * dP[i];
            dlse_tot -= r.p[i] * dP[i];
          }
          for (std::size_t i = 0; i < n; ++i) ds[i] += r.p[i] * dlse_tot;
          if (c.sink != ref::sink_kind::none) dbeta += r.a * dlse_tot;
          for (std::size_t i = 0; i < n; ++i) {
            const F draw = c.softcap > 0 ? ds[i] * (F(1) - r.th[i] * r.th[i]) : ds[i];
            const std::size_t ki = ((std::size_t(b) * c.Tk + r.keys[i]) * c.Hkv + hk) * c.D;
            for (int d = 0; d < c.D; ++d) {
              dq[qi + d] += scale * draw * in.k[ki + d];
              dk[ki + d] += scale * draw * in.q[qi + d];
            }
          }
        }
        if (c.sink == ref::sink_kind::learned) dsinks[h] += dbeta;
      }
  auto back = [](const std::vector<F>& x) { return std::vector<double>(x.begin(), x.end()); };
  return {back(dq), back(dk), back(dv), back(dsinks), back(dz)};
}

}  // namespace sinkmoe::testing::naive
