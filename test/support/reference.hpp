// sinkmoe test oracle: an explicit-matrix fp64 reference of attention with sinks, output
// gates and head routing, and of the head load-balancing loss (docs/method.md sections 1-5).
//
// Written independently of include/sinkmoe: it includes nothing from the library and shares
// none of its policies. Every quantity is computed row by row from the explicit score vector
// (the sink is an appended softmax column with zero value, the gate is applied afterwards),
// and the backward pass is hand-written reverse mode over exactly that computation.
//
// Layouts (row-major, contiguous):
//   q [B,Tq,Hq,D]; k, v [B,Tk,Hkv,D]; sinks [Hq]; gate_logits [B,Tq,Hq,Dg], Dg = 1 or D;
//   out [B,Tq,Hq,D]; lse, router [B,Hq,Tq]; counted [B,Tq].
//   GQA: query head h reads kv head h / (Hq / Hkv).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

namespace sinkmoe::testing::ref {

enum class sink_kind { none, learned, fixed };  // none = vanilla: key 0 is the implicit sink
enum class gate_kind { none, headwise, elementwise };
enum class route_kind { sink_mass, output_gate, product };
enum class mask_kind { none, causal, sliding_window, streaming };

struct config {
  int B, Tq, Tk, Hq, Hkv, D;
  double scale;         // softmax scale (callers usually pass 1/sqrt(D))
  double softcap = 0;   // 0 = off; else s = softcap * tanh(scale * q.k / softcap)
  sink_kind sink = sink_kind::none;
  gate_kind gate = gate_kind::none;
  route_kind route = route_kind::sink_mass;
  mask_kind mask = mask_kind::none;
  int window = 0;
  int sink_tokens = 0;
  bool top_left = false;  // causal alignment; default bottom-right (offset Tk - Tq)
  double fixed_sink = 0;  // b for sink_kind::fixed (same for every head)
};

struct inputs { std::vector<double> q, k, v, sinks, gate_logits; };
struct forward_result { std::vector<double> out, lse, router; std::vector<int> counted; };
struct cotangents { std::vector<double> dout, dlse, drouter; };  // any may be empty = zero
struct gradients { std::vector<double> dq, dk, dv, dsinks, dgate; };

struct balance_config { double lambda; int shared_heads = 0; bool sample_std = false; };
struct balance_result {
  std::vector<double> importance;  // [Hq]
  double cv;
  double loss;
  std::vector<double> drouter;     // [B,Hq,Tq]
};

// Query t sits at t' = t + o, o = Tk - Tq (bottom-right) or 0 (top-left).
inline int position_offset(const config& c) { return c.top_left ? 0 : c.Tk - c.Tq; }

// none: every key; causal: j <= t'; sliding_window: t' - window < j <= t';
// streaming: j <= t' and (j > t' - window or j < sink_tokens).
inline bool visible(const config& c, int t, int j) {
  const int tp = t + position_offset(c);
  switch (c.mask) {
    case mask_kind::none: return true;
    case mask_kind::causal: return j <= tp;
    case mask_kind::sliding_window: return j <= tp && j > tp - c.window;
    case mask_kind::streaming: return j <= tp && (j > tp - c.window || j < c.sink_tokens);
  }
  return false;
}

namespace detail {

inline constexpr double neg_inf = -std::numeric_limits<double>::infinity();

inline double sigmoid(double x) {
  return x >= 0 ? 1.0 / (1.0 + std::exp(-x)) : std::exp(x) / (1.0 + std::exp(x));
}
inline double at(const std::vector<double>& v, std::size_t i) { return v.empty() ? 0.0 : v[i]; }
inline int gate_dim(const config& c) { return c.gate == gate_kind::elementwise ? c.D : 1; }
inline bool route_uses_sink(const config& c) { return c.route != route_kind::output_gate; }
inline bool route_uses_gate(const config& c) { return c.route != route_kind::sink_mass; }

inline void validate(const config& c, const inputs& in) {
  auto need = [](bool ok, const char* what) {
    if (!ok) throw std::invalid_argument(std::string("sinkmoe::testing::ref: ") + what);
  };
  need(c.B > 0 && c.Tq >= 0 && c.Tk >= 0 && c.Hq > 0 && c.Hkv > 0 && c.D > 0, "sizes");
  need(c.Hq % c.Hkv == 0, "Hq % Hkv");
  need(!(route_uses_gate(c) && c.gate == gate_kind::none), "gate route without a gate");
  const std::size_t nq = std::size_t(c.B) * c.Tq * c.Hq, nk = std::size_t(c.B) * c.Tk * c.Hkv;
  need(in.q.size() == nq * c.D, "q size");
  need(in.k.size() == nk * c.D && in.v.size() == nk * c.D, "k/v size");
  need(c.sink != sink_kind::learned || in.sinks.size() == std::size_t(c.Hq), "sinks size");
  need(c.gate == gate_kind::none || in.gate_logits.size() == nq * gate_dim(c), "gate size");
}

// Everything about one (b, h, t) row, kept for the backward pass.
struct row {
  std::vector<int> keys;       // visible keys j
  std::vector<double> th, p;   // tanh(raw/softcap) (softcap only), P[t,j] = exp(s - lse)
  double beta = neg_inf;       // sink logit b (-inf: no sink column)
  double lse = neg_inf;        // log(exp(b) + sum_j exp(s_j)), the sink included
  double a = 0;                // sink mass A: exp(b - lse), or P[t,0] for vanilla (0 if 0 hidden)
  bool empty = true;
  std::vector<double> o;       // ungated O = sum_j P v_j  [D]
  std::vector<double> g;       // sigmoid(z)  [Dg] (empty without gate)
  double gmean = 1;            // router part of the gate: g (headwise) or mean_c g_c
  double gsink = 0;            // 1 - A
  double router = 0;           // G
};

struct index {
  const config& c;
  std::size_t q(int b, int t, int h) const { return ((std::size_t(b) * c.Tq + t) * c.Hq + h) * c.D; }
  std::size_t kv(int b, int j, int h) const { return ((std::size_t(b) * c.Tk + j) * c.Hkv + h) * c.D; }
  std::size_t z(int b, int t, int h) const { return ((std::size_t(b) * c.Tq + t) * c.Hq + h) * gate_dim(c); }
  std::size_t r(int b, int h, int t) const { return (std::size_t(b) * c.Hq + h) * c.Tq + t; }
  int kvh(int h) const { return h / (c.Hq / c.Hkv); }
};

inline row compute_row(const config& c, const inputs& in, int b, int h, int t) {
  const index ix{c};
  row r;
  if (c.sink == sink_kind::learned) r.beta = in.sinks[h];
  if (c.sink == sink_kind::fixed) r.beta = c.fixed_sink;
  const double* q = &in.q[ix.q(b, t, h)];
  std::vector<double> s;
  for (int j = 0; j < c.Tk; ++j) {
    if (!visible(c, t, j)) continue;
    const double* k = &in.k[ix.kv(b, j, ix.kvh(h))];
    double raw = 0;
    for (int d = 0; d < c.D; ++d) raw += q[d] * k[d];
    raw *= c.scale;  // raw = scale * q.k
    if (c.softcap > 0) {  // s = cap * tanh(raw / cap)
      r.th.push_back(std::tanh(raw / c.softcap));
      s.push_back(c.softcap * r.th.back());
    } else {
      s.push_back(raw);
    }
    r.keys.push_back(j);
  }
  r.empty = r.keys.empty();
  // lse = log(exp(b) + sum_j exp(s_j)), computed around the max.
  double m = r.beta;
  for (double x : s) m = std::max(m, x);
  if (m != neg_inf) {
    double sum = r.beta == neg_inf ? 0.0 : std::exp(r.beta - m);
    for (double x : s) sum += std::exp(x - m);
    r.lse = m + std::log(sum);
  }
  r.o.assign(c.D, 0.0);
  if (c.gate != gate_kind::none) {
    const int dg = gate_dim(c);
    const double* z = &in.gate_logits[ix.z(b, t, h)];
    r.g.resize(dg);
    double sum = 0;
    for (int i = 0; i < dg; ++i) sum += (r.g[i] = sigmoid(z[i]));
    r.gmean = sum / dg;  // headwise: g; elementwise: mean_c sigmoid(z_c)
  }
  if (r.empty) return r;  // out = 0, lse = b or -inf, G = 0
  for (std::size_t i = 0; i < s.size(); ++i) {
    r.p.push_back(std::exp(s[i] - r.lse));  // P = exp(s - lse)
    const double* v = &in.v[ix.kv(b, r.keys[i], ix.kvh(h))];
    for (int d = 0; d < c.D; ++d) r.o[d] += r.p[i] * v[d];  // O = sum_j P v_j
  }
  if (c.sink == sink_kind::none)
    r.a = r.keys.front() == 0 ? r.p.front() : 0.0;  // A = P[t,0]
  else
    r.a = std::exp(r.beta - r.lse);                // A = exp(b - lse)
  r.gsink = 1.0 - r.a;
  switch (c.route) {
    case route_kind::sink_mass: r.router = r.gsink; break;            // G = 1 - A
    case route_kind::output_gate: r.router = r.gmean; break;          // G = g
    case route_kind::product: r.router = r.gmean * r.gsink; break;    // G = g (1 - A)
  }
  return r;
}

}  // namespace detail

// counted[b,t] = row has a visible key, and not (vanilla sink mass in the route and key 0 is the
// only key it sees): such a row puts all its mass on the sink, its G is trivially 0.
inline int is_counted(const config& c, int t) {
  int seen = 0;
  for (int j = 0; j < c.Tk; ++j) seen += visible(c, t, j) ? 1 : 0;
  const bool sink_only = c.sink == sink_kind::none && detail::route_uses_sink(c) && seen == 1 &&
                         visible(c, t, 0);
  return seen > 0 && !sink_only ? 1 : 0;
}

// Y = sigmoid(z) * O (or O without a gate), lse, router G, counted.
inline forward_result forward(const config& c, const inputs& in) {
  detail::validate(c, in);
  const detail::index ix{c};
  forward_result f;
  f.out.assign(std::size_t(c.B) * c.Tq * c.Hq * c.D, 0.0);
  f.lse.assign(std::size_t(c.B) * c.Hq * c.Tq, 0.0);
  f.router.assign(f.lse.size(), 0.0);
  f.counted.assign(std::size_t(c.B) * c.Tq, 0);
  for (int b = 0; b < c.B; ++b)
    for (int t = 0; t < c.Tq; ++t) {
      f.counted[std::size_t(b) * c.Tq + t] = is_counted(c, t);
      for (int h = 0; h < c.Hq; ++h) {
        const detail::row r = detail::compute_row(c, in, b, h, t);
        f.lse[ix.r(b, h, t)] = r.lse;
        f.router[ix.r(b, h, t)] = r.router;
        double* y = &f.out[ix.q(b, t, h)];
        for (int d = 0; d < c.D; ++d)
          y[d] = r.g.empty() ? r.o[d] : r.g[c.gate == gate_kind::elementwise ? d : 0] * r.o[d];
      }
    }
  return f;
}

// Reverse mode, per row, of L = sum(out*dout) + sum(lse*dlse, finite lse) + sum(G*drouter):
//   gate:   dO_c = g_c dY_c;  dz_c = g_c (1 - g_c) (dY_c O_c + dG/dg-part)
//             headwise dz = g(1-g)(sum_c dY_c O_c + gbar_g), elementwise adds gbar_g / D per c,
//             gbar_g = dG (output_gate) or dG * (1 - A) (product)
//   sink:   dA = -gbar_s, gbar_s = dG (sink_mass) or dG * gmean (product)
//   O:      dP_j = dO . v_j;  dv_j += P_j dO;  vanilla: dP_0 += dA
//   P, A:   P_j = exp(s_j - lse), A = exp(b - lse):
//             ds_j += P_j dP_j,  db += A dA,  dlse_tot = dlse - sum_j P_j dP_j - A dA
//   lse:    ds_j += P_j dlse_tot,  db += A_sink dlse_tot
//   scores: draw = ds (1 - tanh^2 with softcap);  dq += scale draw k_j;  dk_j += scale draw q
//   empty row: lse = b, so only db += dlse.
inline gradients backward(const config& c, const inputs& in, const cotangents& ct) {
  using detail::at;
  detail::validate(c, in);
  const detail::index ix{c};
  gradients gr;
  gr.dq.assign(in.q.size(), 0.0);
  gr.dk.assign(in.k.size(), 0.0);
  gr.dv.assign(in.v.size(), 0.0);
  if (c.sink == sink_kind::learned) gr.dsinks.assign(c.Hq, 0.0);
  if (c.gate != gate_kind::none) gr.dgate.assign(in.gate_logits.size(), 0.0);
  const bool ew = c.gate == gate_kind::elementwise;
  for (int b = 0; b < c.B; ++b)
    for (int t = 0; t < c.Tq; ++t)
      for (int h = 0; h < c.Hq; ++h) {
        const detail::row r = detail::compute_row(c, in, b, h, t);
        const std::size_t ri = ix.r(b, h, t), qi = ix.q(b, t, h);
        const double dlse = std::isfinite(r.lse) ? at(ct.dlse, ri) : 0.0;
        double dbeta = 0;
        if (r.empty) {
          dbeta = dlse;
        } else {
          const double dG = at(ct.drouter, ri);
          double gbar_g = 0, gbar_s = 0;
          if (c.route == route_kind::sink_mass) gbar_s = dG;
          if (c.route == route_kind::output_gate) gbar_g = dG;
          if (c.route == route_kind::product) { gbar_g = dG * r.gsink; gbar_s = dG * r.gmean; }
          std::vector<double> dO(c.D);
          for (int d = 0; d < c.D; ++d) dO[d] = at(ct.dout, qi + d);
          if (!r.g.empty()) {
            double* dz = &gr.dgate[ix.z(b, t, h)];
            double dyo = 0;
            for (int d = 0; d < c.D; ++d) {
              const int gi = ew ? d : 0;
              const double dy = dO[d];
              dO[d] = r.g[gi] * dy;
              if (ew) dz[d] += r.g[d] * (1 - r.g[d]) * (dy * r.o[d] + gbar_g / c.D);
              else dyo += dy * r.o[d];
            }
            if (!ew) dz[0] += r.g[0] * (1 - r.g[0]) * (dyo + gbar_g);
          }
          const double dA = -gbar_s;
          const std::size_t n = r.keys.size();
          std::vector<double> dP(n, 0.0), ds(n, 0.0);
          for (std::size_t i = 0; i < n; ++i) {
            const std::size_t vi = ix.kv(b, r.keys[i], ix.kvh(h));
            for (int d = 0; d < c.D; ++d) {
              dP[i] += dO[d] * in.v[vi + d];
              gr.dv[vi + d] += r.p[i] * dO[d];
            }
          }
          double dlse_tot = dlse;
          if (c.sink == sink_kind::none) {
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
          if (c.sink != sink_kind::none) dbeta += r.a * dlse_tot;
          for (std::size_t i = 0; i < n; ++i) {
            const double draw = c.softcap > 0 ? ds[i] * (1 - r.th[i] * r.th[i]) : ds[i];
            const std::size_t ki = ix.kv(b, r.keys[i], ix.kvh(h));
            for (int d = 0; d < c.D; ++d) {
              gr.dq[qi + d] += c.scale * draw * in.k[ki + d];
              gr.dk[ki + d] += c.scale * draw * in.q[qi + d];
            }
          }
        }
        if (c.sink == sink_kind::learned) gr.dsinks[h] += dbeta;
      }
  return gr;
}

// Imp[h] = (1/N) sum_{counted (b,t)} G[b,h,t], N = number of counted tokens.
// R = heads left after removing the top `shared_heads` by Imp (ties: lower index first), n = |R|.
// mu = mean_R Imp, var = sum_R (Imp - mu)^2 / (n, or n - 1 with sample_std), CV = sqrt(var)/mu,
// loss = lambda n CV^2.
// dloss/dImp[h] = lambda n (2 (Imp[h] - mu) / (den mu^2) - 2 var / (n mu^3)) for h in R, else 0
//   (population: (2 lambda / mu^2)(Imp[h] - mu (1 + CV^2)), docs/method.md section 5);
// drouter[b,h,t] = dloss/dImp[h] / N on counted tokens, else 0.
// Degenerate (no counted token, n == 0, n < 2 with sample std, or mu == 0): cv = loss = 0 and a
// zero gradient.
inline balance_result balance(const config& c, const std::vector<double>& router,
                              const std::vector<int>& counted, const balance_config& bc) {
  const detail::index ix{c};
  balance_result res;
  res.importance.assign(c.Hq, 0.0);
  res.cv = res.loss = 0;
  res.drouter.assign(std::size_t(c.B) * c.Hq * c.Tq, 0.0);
  long ncount = 0;
  for (int x : counted) ncount += x != 0;
  if (ncount == 0) return res;
  for (int b = 0; b < c.B; ++b)
    for (int t = 0; t < c.Tq; ++t)
      if (counted[std::size_t(b) * c.Tq + t])
        for (int h = 0; h < c.Hq; ++h) res.importance[h] += router[ix.r(b, h, t)];
  for (double& x : res.importance) x /= double(ncount);
  std::vector<int> order(c.Hq);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return res.importance[a] > res.importance[b]; });
  const int m = std::clamp(bc.shared_heads, 0, c.Hq);
  const std::vector<int> kept(order.begin() + m, order.end());
  const int n = int(kept.size());
  if (n == 0 || (bc.sample_std && n < 2)) return res;
  double mu = 0;
  for (int h : kept) mu += res.importance[h];
  mu /= n;
  if (mu == 0) return res;
  const double den = bc.sample_std ? n - 1 : n;
  double var = 0;
  for (int h : kept) var += (res.importance[h] - mu) * (res.importance[h] - mu);
  var /= den;
  res.cv = std::sqrt(var) / mu;
  res.loss = bc.lambda * n * var / (mu * mu);
  for (int h : kept) {
    const double dimp = bc.lambda * n *
        (2 * (res.importance[h] - mu) / (den * mu * mu) - 2 * var / (n * mu * mu * mu));
    for (int b = 0; b < c.B; ++b)
      for (int t = 0; t < c.Tq; ++t)
        if (counted[std::size_t(b) * c.Tq + t]) res.drouter[ix.r(b, h, t)] = dimp / double(ncount);
  }
  return res;
}

// The full scalar loss used by the tests:
// L = sum(out*dout) + sum(lse*dlse, finite lse) + sum(G*drouter) + balance loss.
inline double total_loss(const config& c, const inputs& in, const cotangents& ct,
                         const balance_config& bc) {
  const forward_result f = forward(c, in);
  double l = 0;
  for (std::size_t i = 0; i < f.out.size(); ++i) l += f.out[i] * detail::at(ct.dout, i);
  for (std::size_t i = 0; i < f.lse.size(); ++i)
    if (std::isfinite(f.lse[i])) l += f.lse[i] * detail::at(ct.dlse, i);
  for (std::size_t i = 0; i < f.router.size(); ++i) l += f.router[i] * detail::at(ct.drouter, i);
  return l + balance(c, f.router, f.counted, bc).loss;
}

// Gradient of total_loss: backward with drouter + the balance loss's drouter.
inline gradients total_gradients(const config& c, const inputs& in, const cotangents& ct,
                                 const balance_config& bc) {
  const forward_result f = forward(c, in);
  cotangents all = ct;
  const balance_result bal = balance(c, f.router, f.counted, bc);
  all.drouter.resize(f.router.size(), 0.0);  // empty = zero
  for (std::size_t i = 0; i < all.drouter.size(); ++i) all.drouter[i] += bal.drouter[i];
  return backward(c, in, all);
}

}  // namespace sinkmoe::testing::ref
