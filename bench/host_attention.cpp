// CPU benchmark of the host backend (docs/design.md section 9): forward and backward GFLOP/s of
// sinkmoe's tiled online-softmax kernels against a naive explicit-matrix implementation written
// here (float, same compiler flags, same thread count), the fraction of this machine's fp32 FMA
// peak (measured by a register-resident FMA kernel below), and the peak resident memory of each
// configuration.
//
// Every measurement runs in its own process (fork + exec of this binary with --child ...), so
// that its peak resident set (VmHWM) belongs to that configuration alone, and so that no OpenMP
// thread pool is ever live across a fork. The parent never enters an OpenMP region; it only
// collects one result line per child and prints one JSON object per measurement on stdout,
// then a Markdown table.
//
// FLOPs: forward 4 * B * Hq * (visible query-key pairs) * D (the exact pair count of the mask,
// so causal is about half of Tq * Tk); backward 2.5 x forward.
//
// Times are wall-clock, best of the repetitions. Build and CI machines are shared, so every
// measurement also reports its CPU utilisation (process CPU time / (wall time x threads); well
// below 1 means other processes held the cores) and the same figures computed from CPU time,
// which contention inflates much less. On an idle machine the two agree.
//
// PyTorch's CPU scaled_dot_product_attention (its flash-attention CPU kernel) is timed on the
// vanilla configurations by bench/torch_cpu_reference.py, run as a child between sinkmoe's own
// measurements, so the ratios come from one run on one machine; without torch the column says
// why it is empty.
//
// Usage: host_attention [--quick] [--threads N] [--max-reps N] [--rounds N]
//                       [--torch SCRIPT | --no-torch] [--only A,B]
//   --quick      T in {512, 2048} only and a smaller time budget per configuration
//   --threads N  threads for sinkmoe, the naive version, torch and the peak kernel (default 2)
//   --max-reps N upper bound on timed repetitions per configuration (default 5)
//   --rounds N   measure the whole matrix N times over and keep each configuration's best round
//                (default 1): every round times vanilla, sink, gated and torch within seconds of
//                each other, so a slow spell of a shared machine cannot land on one of them only
//   --torch S    the reference script (default: this source tree's bench/torch_cpu_reference.py)
//   --only A,B   only the configurations whose label ("forward vanilla/none D=64 T=2048") contains
//                A or B (e.g. --only "backward vanilla/none D=64")
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#if defined(__AVX__) && defined(__FMA__)
#include <immintrin.h>
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif

#include <sinkmoe/sinkmoe.hpp>

namespace {

constexpr int k_batch = 1;
constexpr int k_heads = 8;  // Hq = Hkv (no GQA)

// ---------------------------------------------------------------------------------------------
// Configuration and helpers
// ---------------------------------------------------------------------------------------------

enum class policy_id { vanilla_causal, vanilla_none, sink_causal, gated_causal };
enum class impl_id { sinkmoe, naive, torch };
enum class dir_id { forward, backward };

const char* policy_name(policy_id p) {
  switch (p) {
    case policy_id::vanilla_causal:
      return "vanilla/causal";
    case policy_id::vanilla_none:
      return "vanilla/none";
    case policy_id::sink_causal:
      return "sink.learned/causal";
    case policy_id::gated_causal:
      return "gated.elementwise/causal";
  }
  return "?";
}
bool policy_causal(policy_id p) { return p != policy_id::vanilla_none; }
bool policy_has_naive(policy_id p) {
  return p == policy_id::vanilla_causal || p == policy_id::vanilla_none;
}
/// PyTorch's CPU SDPA (bench/torch_cpu_reference.py) has no sinks or gates: vanilla only.
bool policy_has_torch(policy_id p) { return policy_has_naive(p); }
const char* impl_name(impl_id i) {
  return i == impl_id::sinkmoe ? "sinkmoe" : (i == impl_id::naive ? "naive" : "torch");
}
const char* dir_name(dir_id d) { return d == dir_id::forward ? "forward" : "backward"; }

std::optional<policy_id> parse_policy(const std::string& s) {
  for (policy_id p : {policy_id::vanilla_causal, policy_id::vanilla_none, policy_id::sink_causal,
                      policy_id::gated_causal})
    if (s == policy_name(p)) return p;
  return std::nullopt;
}

/// Exact forward FLOPs: 4 * D per visible (query, key) pair (QK^T and PV, 2 FLOPs per FMA).
double forward_flops(bool causal, int tq, int tk, int d) {
  double pairs = 0;
  for (int t = 0; t < tq; ++t)
    pairs += causal ? std::clamp(t + (tk - tq) + 1, 0, tk) : tk;  // bottom-right alignment
  return 4.0 * k_batch * k_heads * pairs * d;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// A field of /proc/self/status in KiB (VmRSS, VmHWM), or -1.
long proc_status_kib(const char* field) {
  std::ifstream status("/proc/self/status");
  std::string line;
  const std::size_t len = std::strlen(field);
  while (std::getline(status, line))
    if (line.compare(0, len, field) == 0 && line.size() > len && line[len] == ':')
      return std::strtol(line.c_str() + len + 1, nullptr, 10);
  return -1;
}

/// CPU time (user + system) of this process, all threads, in seconds.
double process_cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec);
}

struct timing {
  double best_ms = 0, median_ms = 0;
  double best_cpu_util = 0;  ///< CPU time / (wall time x threads) of the best repetition
  double best_cpu_ms = 0;    ///< least CPU time / threads over the repetitions
  int reps = 0;
};

/// Runs fn at least min_reps times, then again while the time spent is under budget_s, at most
/// max_reps times; best and median of the repetitions. The CPU utilisation of the best
/// repetition tells whether other processes took the cores (a shared machine): well below 1
/// means the wall time is inflated.
template <class Fn>
timing time_reps(Fn&& fn, int threads, int min_reps, int max_reps, double budget_s) {
  std::vector<double> ms;
  timing t;
  const auto start = std::chrono::steady_clock::now();
  while (static_cast<int>(ms.size()) < max_reps &&
         (static_cast<int>(ms.size()) < min_reps || seconds_since(start) < budget_s)) {
    const double cpu0 = process_cpu_seconds();
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    const double wall = seconds_since(t0);
    const double cpu = process_cpu_seconds() - cpu0;
    const double util = cpu / (wall * threads);
    if (ms.empty() || wall * 1e3 < *std::min_element(ms.begin(), ms.end())) t.best_cpu_util = util;
    if (ms.empty() || cpu * 1e3 / threads < t.best_cpu_ms) t.best_cpu_ms = cpu * 1e3 / threads;
    ms.push_back(wall * 1e3);
  }
  std::sort(ms.begin(), ms.end());
  t.reps = static_cast<int>(ms.size());
  t.best_ms = ms.front();
  t.median_ms =
      ms.size() % 2 ? ms[ms.size() / 2] : 0.5 * (ms[ms.size() / 2 - 1] + ms[ms.size() / 2]);
  return t;
}

/// Deterministic uniform values in [-amplitude, amplitude] (a 64-bit LCG; fast for 8M values).
void fill_uniform(std::vector<float>& x, std::uint64_t seed, float amplitude) {
  std::uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  for (float& v : x) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    const float unit = static_cast<float>(state >> 40) * (1.0f / 16777216.0f);  // [0, 1)
    v = amplitude * (2.0f * unit - 1.0f);
  }
}

// ---------------------------------------------------------------------------------------------
// Problem tensors ([B, T, H, D] row-major, B = 1, Hq = Hkv = 8). Only what a configuration
// needs is allocated, so the tensor bytes and the peak RSS belong to that configuration.
// ---------------------------------------------------------------------------------------------

struct problem {
  int t = 0, d = 0;
  bool gated = false, backward = false;
  std::vector<float> q, k, v, gate, sinks, out, lse, router;
  std::vector<float> dout, dq, dk, dv, dsinks, dgate;

  problem(int t_, int d_, bool gated_, bool backward_)
      : t(t_), d(d_), gated(gated_), backward(backward_) {
    const std::size_t n = static_cast<std::size_t>(k_batch) * t * k_heads * d;
    const std::size_t rows = static_cast<std::size_t>(k_batch) * k_heads * t;
    // Uniform [-sqrt 3, sqrt 3] has unit variance: scaled logits of std about 1.
    for (auto* x : {&q, &k, &v}) x->resize(n);
    fill_uniform(q, 1, 1.7320508f);
    fill_uniform(k, 2, 1.7320508f);
    fill_uniform(v, 3, 1.7320508f);
    sinks.resize(k_heads);
    for (int h = 0; h < k_heads; ++h) sinks[h] = -1.0f + 0.5f * h;
    if (gated) {
      gate.resize(n);
      fill_uniform(gate, 4, 3.0f);
    }
    out.assign(n, 0.0f);
    lse.assign(rows, 0.0f);
    router.assign(rows, 0.0f);
    if (backward) {
      dout.resize(n);
      fill_uniform(dout, 5, 1.0f);
      dq.assign(n, 0.0f);
      dk.assign(n, 0.0f);
      dv.assign(n, 0.0f);
      dsinks.assign(k_heads, 0.0f);
      if (gated) dgate.assign(n, 0.0f);
    }
  }

  [[nodiscard]] double tensor_bytes() const {
    std::size_t n = 0;
    for (const auto* x :
         {&q, &k, &v, &gate, &sinks, &out, &lse, &router, &dout, &dq, &dk, &dv, &dsinks, &dgate})
      n += x->size();
    return static_cast<double>(n) * sizeof(float);
  }
  [[nodiscard]] const float* row(const std::vector<float>& x, int time, int head) const {
    return x.data() + (static_cast<std::size_t>(time) * k_heads + head) * d;
  }
  [[nodiscard]] float* row(std::vector<float>& x, int time, int head) const {
    return x.data() + (static_cast<std::size_t>(time) * k_heads + head) * d;
  }
};

// ---------------------------------------------------------------------------------------------
// sinkmoe calls
// ---------------------------------------------------------------------------------------------

template <class Attn>
sinkmoe::forward_args<float> make_forward_args(problem& p) {
  using Gate = typename Attn::gate_type;
  const sinkmoe::index_t B = k_batch, T = p.t, H = k_heads, D = p.d;
  sinkmoe::forward_args<float> fa;
  fa.q = {p.q.data(), {B, T, H, D}};
  fa.k = {p.k.data(), {B, T, H, D}};
  fa.v = {p.v.data(), {B, T, H, D}};
  if constexpr (Attn::sink_type::needs_sinks_tensor) fa.sinks = {p.sinks.data(), {H}};
  if constexpr (Gate::enabled) fa.gate_logits = {p.gate.data(), {B, T, H, Gate::logit_dim(p.d)}};
  fa.out = {p.out.data(), {B, T, H, D}};
  fa.lse = {p.lse.data(), {B, H, T}};
  fa.router = {p.router.data(), {B, H, T}};
  return fa;
}

template <class Attn>
sinkmoe::backward_args<float> make_backward_args(problem& p) {
  using Gate = typename Attn::gate_type;
  const sinkmoe::index_t B = k_batch, T = p.t, H = k_heads, D = p.d;
  sinkmoe::backward_args<float> ba;
  ba.dout = {p.dout.data(), {B, T, H, D}};
  ba.dq = {p.dq.data(), {B, T, H, D}};
  ba.dk = {p.dk.data(), {B, T, H, D}};
  ba.dv = {p.dv.data(), {B, T, H, D}};
  if constexpr (Attn::sink_type::trainable) ba.dsinks = {p.dsinks.data(), {H}};
  if constexpr (Gate::enabled) ba.dgate_logits = {p.dgate.data(), {B, T, H, Gate::logit_dim(p.d)}};
  return ba;
}

template <class Attn>
void sinkmoe_forward(problem& p, int threads) {
  Attn::forward(sinkmoe::exec::host{threads}, make_forward_args<Attn>(p));
}
template <class Attn>
void sinkmoe_backward(problem& p, int threads) {
  Attn::backward(sinkmoe::exec::host{threads}, make_forward_args<Attn>(p),
                 make_backward_args<Attn>(p));
}

using vanilla_causal_t = sinkmoe::vanilla_attention<sinkmoe::mask::causal>;
using vanilla_none_t = sinkmoe::vanilla_attention<sinkmoe::mask::none>;
using sink_causal_t = sinkmoe::sink_attention<sinkmoe::mask::causal>;
using gated_causal_t = sinkmoe::gated_attention<sinkmoe::mask::causal, sinkmoe::gate::elementwise>;

void sinkmoe_run(policy_id pol, dir_id dir, problem& p, int threads) {
  const bool fwd = dir == dir_id::forward;
  switch (pol) {
    case policy_id::vanilla_causal:
      return fwd ? sinkmoe_forward<vanilla_causal_t>(p, threads)
                 : sinkmoe_backward<vanilla_causal_t>(p, threads);
    case policy_id::vanilla_none:
      return fwd ? sinkmoe_forward<vanilla_none_t>(p, threads)
                 : sinkmoe_backward<vanilla_none_t>(p, threads);
    case policy_id::sink_causal:
      return fwd ? sinkmoe_forward<sink_causal_t>(p, threads)
                 : sinkmoe_backward<sink_causal_t>(p, threads);
    case policy_id::gated_causal:
      return fwd ? sinkmoe_forward<gated_causal_t>(p, threads)
                 : sinkmoe_backward<gated_causal_t>(p, threads);
  }
}

// ---------------------------------------------------------------------------------------------
// Naive explicit-matrix vanilla attention (float). Per head, the full Tq x Tk score matrix is
// materialised; loops are the textbook ones, with `omp simd` on the D-long inner loops so the
// baseline is vectorised like the library (a scalar dot product would flatter the ratio).
// Masked pairs are skipped, not computed and discarded. Heads are spread over the threads.
// ---------------------------------------------------------------------------------------------

/// Keys [0, key_end) that query row t sees (Tq == Tk here, so bottom-right = top-left).
inline int naive_key_end(bool causal, int t, int tk) { return causal ? std::min(t + 1, tk) : tk; }

inline float dot(const float* a, const float* b, int d) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int c = 0; c < d; ++c) s += a[c] * b[c];
  return s;
}

void naive_forward(problem& p, bool causal, [[maybe_unused]] int threads) {
  const int T = p.t, D = p.d;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> probs(static_cast<std::size_t>(T) * T);  // this head's P = softmax(S)
#pragma omp for schedule(dynamic, 1)
    for (int h = 0; h < k_heads; ++h) {
      for (int i = 0; i < T; ++i) {
        float* s = probs.data() + static_cast<std::size_t>(i) * T;
        const int key_end = naive_key_end(causal, i, T);
        const float* qi = p.row(p.q, i, h);
        float row_max = -INFINITY;
        for (int j = 0; j < key_end; ++j) {
          s[j] = scale * dot(qi, p.row(p.k, j, h), D);
          row_max = std::max(row_max, s[j]);
        }
        float sum = 0.0f;
        for (int j = 0; j < key_end; ++j) {
          s[j] = std::exp(s[j] - row_max);
          sum += s[j];
        }
        const float inv = 1.0f / sum;
        for (int j = 0; j < key_end; ++j) s[j] *= inv;
        p.lse[static_cast<std::size_t>(h) * T + i] = row_max + std::log(sum);
        p.router[static_cast<std::size_t>(h) * T + i] = 1.0f - s[0];  // vanilla: G = 1 - P[t, 0]
      }
      for (int i = 0; i < T; ++i) {
        const float* s = probs.data() + static_cast<std::size_t>(i) * T;
        float* o = p.row(p.out, i, h);
        std::fill(o, o + D, 0.0f);
        const int key_end = naive_key_end(causal, i, T);
        for (int j = 0; j < key_end; ++j) {
          const float pij = s[j];
          const float* vj = p.row(p.v, j, h);
#pragma omp simd
          for (int c = 0; c < D; ++c) o[c] += pij * vj[c];
        }
      }
    }
  }
}

/// Gradients of out given dout, from the saved lse: P, dS = P (dP - Delta) materialised.
void naive_backward(problem& p, bool causal, [[maybe_unused]] int threads) {
  const int T = p.t, D = p.d;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> probs(static_cast<std::size_t>(T) * T), dscores(probs.size());
#pragma omp for schedule(dynamic, 1)
    for (int h = 0; h < k_heads; ++h) {
      for (int i = 0; i < T; ++i) {
        const int key_end = naive_key_end(causal, i, T);
        const float lse_i = p.lse[static_cast<std::size_t>(h) * T + i];
        const float* qi = p.row(p.q, i, h);
        const float* doi = p.row(p.dout, i, h);
        const float delta = dot(doi, p.row(p.out, i, h), D);
        float* prow = probs.data() + static_cast<std::size_t>(i) * T;
        float* dsrow = dscores.data() + static_cast<std::size_t>(i) * T;
        for (int j = 0; j < key_end; ++j)
          prow[j] = std::exp(scale * dot(qi, p.row(p.k, j, h), D) - lse_i);
        for (int j = 0; j < key_end; ++j)
          dsrow[j] = prow[j] * (dot(doi, p.row(p.v, j, h), D) - delta);
      }
      for (int i = 0; i < T; ++i) {  // dQ = scale * dS K
        const int key_end = naive_key_end(causal, i, T);
        const float* dsrow = dscores.data() + static_cast<std::size_t>(i) * T;
        float* dqi = p.row(p.dq, i, h);
        std::fill(dqi, dqi + D, 0.0f);
        for (int j = 0; j < key_end; ++j) {
          const float ds = dsrow[j];
          const float* kj = p.row(p.k, j, h);
#pragma omp simd
          for (int c = 0; c < D; ++c) dqi[c] += ds * kj[c];
        }
        for (int c = 0; c < D; ++c) dqi[c] *= scale;
      }
      for (int j = 0; j < T; ++j) {
        std::fill(p.row(p.dk, j, h), p.row(p.dk, j, h) + D, 0.0f);
        std::fill(p.row(p.dv, j, h), p.row(p.dv, j, h) + D, 0.0f);
      }
      for (int i = 0; i < T; ++i) {  // dK = scale * dS^T Q, dV = P^T dO
        const int key_end = naive_key_end(causal, i, T);
        const float* prow = probs.data() + static_cast<std::size_t>(i) * T;
        const float* dsrow = dscores.data() + static_cast<std::size_t>(i) * T;
        const float* qi = p.row(p.q, i, h);
        const float* doi = p.row(p.dout, i, h);
        for (int j = 0; j < key_end; ++j) {
          const float ds = scale * dsrow[j], pij = prow[j];
          float* dkj = p.row(p.dk, j, h);
          float* dvj = p.row(p.dv, j, h);
#pragma omp simd
          for (int c = 0; c < D; ++c) {
            dkj[c] += ds * qi[c];
            dvj[c] += pij * doi[c];
          }
        }
      }
    }
  }
}

void naive_run(policy_id pol, dir_id dir, problem& p, int threads) {
  const bool causal = policy_causal(pol);
  if (dir == dir_id::forward)
    naive_forward(p, causal, threads);
  else
    naive_backward(p, causal, threads);
}

// ---------------------------------------------------------------------------------------------
// fp32 FMA peak: 12 independent FMA chains per thread of the widest vector the build can issue
// (zmm with AVX-512, else ymm), all in registers (Zen 3: two FMA pipes of latency 4 need at
// least 8 chains in flight; Sapphire Rapids: two 512-bit pipes likewise).
// ---------------------------------------------------------------------------------------------

#if defined(__AVX512F__)
constexpr int k_peak_lanes = 16;
constexpr const char* k_peak_isa = "AVX-512 (zmm FMA, 16 lanes)";
#elif defined(__AVX__) && defined(__FMA__)
constexpr int k_peak_lanes = 8;
constexpr const char* k_peak_isa = "AVX2 (ymm FMA, 8 lanes)";
#else
constexpr int k_peak_lanes = 8;
constexpr const char* k_peak_isa = "generic 8-lane vectors (no FMA flags given)";
#endif
constexpr int k_peak_chains = 12;

/// CPU time of the calling thread in seconds.
double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

struct peak_result {
  double wall_gflops = 0;  ///< FLOPs of all threads over the wall time
  double cpu_gflops = 0;   ///< sum over threads of the thread's FLOPs over its own CPU time
};

peak_result peak_gflops_once(int threads, long iterations) {
  volatile float seed = 1.0f;
  double checksum = 0, cpu_gflops = 0;
  const double flops_per_thread =
      2.0 * k_peak_lanes * k_peak_chains * static_cast<double>(iterations);
  const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : checksum, cpu_gflops)
  {
    const double cpu0 = thread_cpu_seconds();
#if defined(__AVX512F__)
    __m512 acc[k_peak_chains];
    for (int c = 0; c < k_peak_chains; ++c) acc[c] = _mm512_set1_ps(seed * (1.0f + 0.01f * c));
    const __m512 mul = _mm512_set1_ps(seed * 0.99999f), add = _mm512_set1_ps(seed * 1e-6f);
    for (long it = 0; it < iterations; ++it) {
#pragma GCC unroll 12
      for (int c = 0; c < k_peak_chains; ++c) acc[c] = _mm512_fmadd_ps(acc[c], mul, add);
    }
    for (int c = 0; c < k_peak_chains; ++c) checksum += _mm512_reduce_add_ps(acc[c]);
#elif defined(__AVX__) && defined(__FMA__)
    __m256 acc[k_peak_chains];
    for (int c = 0; c < k_peak_chains; ++c) acc[c] = _mm256_set1_ps(seed * (1.0f + 0.01f * c));
    const __m256 mul = _mm256_set1_ps(seed * 0.99999f), add = _mm256_set1_ps(seed * 1e-6f);
    for (long it = 0; it < iterations; ++it) {
#pragma GCC unroll 12
      for (int c = 0; c < k_peak_chains; ++c) acc[c] = _mm256_fmadd_ps(acc[c], mul, add);
    }
    alignas(32) float lanes[8];
    for (int c = 0; c < k_peak_chains; ++c) {
      _mm256_store_ps(lanes, acc[c]);
      for (float x : lanes) checksum += x;
    }
#else
    typedef float v8f __attribute__((vector_size(32)));
    v8f acc[k_peak_chains];
    for (int c = 0; c < k_peak_chains; ++c) acc[c] = v8f{} + seed * (1.0f + 0.01f * c);
    const v8f mul = v8f{} + seed * 0.99999f, add = v8f{} + seed * 1e-6f;
    for (long it = 0; it < iterations; ++it) {
#pragma GCC unroll 12
      for (int c = 0; c < k_peak_chains; ++c) acc[c] = acc[c] * mul + add;
    }
    for (int c = 0; c < k_peak_chains; ++c)
      for (int l = 0; l < 8; ++l) checksum += acc[c][l];
#endif
    cpu_gflops += flops_per_thread / (thread_cpu_seconds() - cpu0) * 1e-9;
  }
  const double s = seconds_since(t0);
  if (checksum == 12345.678) std::fprintf(stderr, " ");  // keep the result observable
  return {flops_per_thread * threads / s * 1e-9, cpu_gflops};
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// --child measure <impl> <dir> <policy> <D> <T> <threads> <min_reps> <max_reps> <budget_s>
/// prints "best_ms median_ms reps vmhwm_kib baseline_kib tensor_bytes cpu_util cpu_ms"
int child_measure(char** argv) {
  const std::string impl_s = argv[0], dir_s = argv[1];
  const auto pol = parse_policy(argv[2]);
  const int d = std::atoi(argv[3]), t = std::atoi(argv[4]), threads = std::atoi(argv[5]);
  const int min_reps = std::atoi(argv[6]), max_reps = std::atoi(argv[7]);
  const double budget_s = std::atof(argv[8]);
  if (!pol) return 2;
  const impl_id impl = impl_s == "naive" ? impl_id::naive : impl_id::sinkmoe;
  const dir_id dir = dir_s == "backward" ? dir_id::backward : dir_id::forward;
  const long baseline_kib = proc_status_kib("VmRSS");

  problem p(t, d, *pol == policy_id::gated_causal, dir == dir_id::backward);
  auto run = [&](dir_id which) {
    if (impl == impl_id::naive)
      naive_run(*pol, which, p, threads);
    else
      sinkmoe_run(*pol, which, p, threads);
  };
  if (dir == dir_id::backward) run(dir_id::forward);  // out and lse, untimed
  const timing tm = time_reps([&] { run(dir); }, threads, min_reps, max_reps, budget_s);
  std::printf("%.6f %.6f %d %ld %ld %.0f %.4f %.6f\n", tm.best_ms, tm.median_ms, tm.reps,
              proc_status_kib("VmHWM"), baseline_kib, p.tensor_bytes(), tm.best_cpu_util,
              tm.best_cpu_ms);
  return 0;
}

/// --child peak <threads> : prints "gflops_1thread gflops_nthreads" by wall time, then the same
/// by CPU time
int child_peak(char** argv) {
  const int threads = std::atoi(argv[0]);
  const long iterations = 1L << 25;
  peak_result best1, best_n;
  for (int rep = 0; rep < 5; ++rep) {
    const peak_result one = peak_gflops_once(1, iterations),
                      many = peak_gflops_once(threads, iterations);
    best1.wall_gflops = std::max(best1.wall_gflops, one.wall_gflops);
    best1.cpu_gflops = std::max(best1.cpu_gflops, one.cpu_gflops);
    best_n.wall_gflops = std::max(best_n.wall_gflops, many.wall_gflops);
    best_n.cpu_gflops = std::max(best_n.cpu_gflops, many.cpu_gflops);
  }
  std::printf("%.3f %.3f %.3f %.3f\n", best1.wall_gflops, best_n.wall_gflops, best1.cpu_gflops,
              best_n.cpu_gflops);
  return 0;
}

/// Largest |a - b| over max |b| (b the reference).
double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, scale = 1e-30;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
  }
  return diff / scale;
}

/// --child check <threads> : sinkmoe vs naive on a small case, so the timed code computes the
/// same thing. Prints "max_rel_err" over out, lse, dq, dk, dv of vanilla causal and none.
int child_check(char** argv) {
  const int threads = std::atoi(argv[0]);
  double worst = 0;
  for (policy_id pol : {policy_id::vanilla_causal, policy_id::vanilla_none}) {
    for (int t : {130, 256}) {
      problem lib(t, 64, false, true), ref(t, 64, false, true);
      sinkmoe_run(pol, dir_id::forward, lib, threads);
      sinkmoe_run(pol, dir_id::backward, lib, threads);
      naive_run(pol, dir_id::forward, ref, threads);
      naive_run(pol, dir_id::backward, ref, threads);
      for (auto member : {&problem::out, &problem::lse, &problem::router, &problem::dq,
                          &problem::dk, &problem::dv})
        worst = std::max(worst, rel_diff(lib.*member, ref.*member));
    }
  }
  std::printf("%.3e\n", worst);
  return 0;
}

/// Runs `program` (searched on PATH) with `args` in a child process; returns its stdout (nullopt
/// on failure).
std::optional<std::string> run_program(const std::string& program,
                                       const std::vector<std::string>& args) {
  int fds[2];
  if (pipe(fds) != 0) return std::nullopt;
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = fork();
  if (pid < 0) return std::nullopt;
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    close(fds[0]);
    close(fds[1]);
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(program.c_str()));
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    if (program == "/proc/self/exe")
      execv(program.c_str(), argv.data());
    else
      execvp(program.c_str(), argv.data());
    _exit(127);
  }
  close(fds[1]);
  std::string out;
  char buf[512];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<std::size_t>(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return std::nullopt;
  return out;
}

/// Runs this binary with `args` in a child process; returns its stdout (nullopt on failure).
std::optional<std::string> run_child(const std::vector<std::string>& args) {
  return run_program("/proc/self/exe", args);
}

// ---------------------------------------------------------------------------------------------
// Parent: the measurement matrix, JSON lines, the table
// ---------------------------------------------------------------------------------------------

struct measurement {
  impl_id impl = impl_id::sinkmoe;
  dir_id dir = dir_id::forward;
  policy_id pol = policy_id::vanilla_causal;
  int d = 0, t = 0;
  bool ok = false;
  std::string skipped;
  double best_ms = 0, median_ms = 0, gflops = 0, peak_rss_mib = 0, baseline_rss_mib = 0,
         tensor_mib = 0, flops = 0, cpu_util = 0, cpu_ms = 0, gflops_cpu = 0;
  int reps = 0;
};

std::string json_number(double x, int precision = 3) {
  if (!std::isfinite(x)) return "null";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", precision, x);
  return buf;
}

/// Peak GFLOP/s of the bench kernel: by wall time and by CPU time, on 1 and on N threads.
struct peak_info {
  double wall1 = 0, wall_n = 0, cpu1 = 0, cpu_n = 0;
};

void print_json(const measurement& m, int threads, const peak_info& peak,
                std::optional<double> ratio, std::optional<double> ratio_cpu) {
  std::ostringstream js;
  js << "{\"name\":\"host_attention\",\"impl\":\"" << impl_name(m.impl) << "\",\"direction\":\""
     << dir_name(m.dir) << "\",\"policy\":\"" << policy_name(m.pol)
     << "\",\"shape\":{\"B\":" << k_batch << ",\"Hq\":" << k_heads << ",\"Hkv\":" << k_heads
     << ",\"Tq\":" << m.t << ",\"Tk\":" << m.t << ",\"D\":" << m.d
     << "},\"dtype\":\"float\",\"threads\":" << threads << ",\"flops\":" << json_number(m.flops, 0);
  if (!m.ok) {
    js << ",\"skipped\":\"" << m.skipped << "\"}";
  } else {
    js << ",\"time_ms\":" << json_number(m.best_ms) << ",\"median_ms\":" << json_number(m.median_ms)
       << ",\"reps\":" << m.reps << ",\"cpu_util\":" << json_number(m.cpu_util, 2)
       << ",\"gflops\":" << json_number(m.gflops, 2)
       << ",\"fraction_of_peak\":" << json_number(m.gflops / peak.wall_n, 4)
       << ",\"cpu_time_ms\":" << json_number(m.cpu_ms)
       << ",\"gflops_cpu_time\":" << json_number(m.gflops_cpu, 2)
       << ",\"fraction_of_peak_cpu_time\":" << json_number(m.gflops_cpu / peak.cpu_n, 4)
       << ",\"peak_rss_mib\":" << json_number(m.peak_rss_mib, 1)
       << ",\"baseline_rss_mib\":" << json_number(m.baseline_rss_mib, 1)
       << ",\"tensor_mib\":" << json_number(m.tensor_mib, 1)
       << ",\"tensor_bytes\":" << json_number(m.tensor_mib * (1 << 20), 0)
       << ",\"ratio_vs_naive\":" << (ratio ? json_number(*ratio, 2) : std::string("null"))
       << ",\"ratio_vs_naive_cpu_time\":"
       << (ratio_cpu ? json_number(*ratio_cpu, 2) : std::string("null")) << "}";
  }
  std::printf("%s\n", js.str().c_str());
  std::fflush(stdout);
}

struct options {
  bool quick = false;
  int threads = 2;
  int max_reps = 5;
  /// Passes over the whole matrix; each configuration keeps its best pass.
  int rounds = 1;
  /// bench/torch_cpu_reference.py (PyTorch's CPU SDPA, timed in the same run); "" to skip.
  std::string torch_script = SINKMOE_BENCH_TORCH_SCRIPT;
  /// Measure only configurations whose label ("forward vanilla/none D=64 T=2048") contains one
  /// of these (all when empty).
  std::vector<std::string> only;
};

/// Best of a few runs of the peak child (zeros if it failed).
peak_info measure_peak(const std::string& threads_s) {
  peak_info p;
  if (auto r = run_child({"--child", "peak", threads_s}))
    std::sscanf(r->c_str(), "%lf %lf %lf %lf", &p.wall1, &p.wall_n, &p.cpu1, &p.cpu_n);
  return p;
}

int parent_main(const options& opt) {
  const std::string threads_s = std::to_string(opt.threads);
  std::fprintf(stderr, "host_attention: %d threads%s; measuring the fp32 FMA peak with %s...\n",
               opt.threads, opt.quick ? ", quick" : "", k_peak_isa);
#if !defined(_OPENMP)
  std::fprintf(stderr, "host_attention: built without OpenMP, so everything runs on one thread\n");
#endif
  // The peak is measured before and after the matrix and the larger value is used: on a shared
  // machine a single measurement may catch the cores busy.
  const auto peak_start = measure_peak(threads_s);
  if (peak_start.wall_n <= 0) {
    std::fprintf(stderr, "host_attention: the peak kernel failed\n");
    return 1;
  }

  double check_err = -1;
  if (auto r = run_child({"--child", "check", threads_s})) check_err = std::atof(r->c_str());

  // PyTorch's CPU SDPA, when python3 can import torch: timed per configuration in a child, between
  // sinkmoe's own measurements.
  std::string torch_status = "skipped: no --torch script";
  bool use_torch = false;
  if (!opt.torch_script.empty()) {
    if (auto r = run_program("python3", {opt.torch_script, "probe"})) {
      use_torch = true;
      torch_status = r->substr(0, r->find('\n'));
    } else {
      torch_status = "skipped: python3 " + opt.torch_script +
                     " probe failed (torch not installed? `pip install torch`)";
    }
  }
  std::fprintf(stderr, "host_attention: PyTorch CPU SDPA reference: %s\n", torch_status.c_str());

  const std::vector<int> ds = {64, 128};
  const std::vector<int> ts =
      opt.quick ? std::vector<int>{512, 2048} : std::vector<int>{512, 2048, 8192};
  const std::vector<policy_id> pols = {policy_id::vanilla_causal, policy_id::vanilla_none,
                                       policy_id::sink_causal, policy_id::gated_causal};
  // Time budget per configuration: one repetition, then more while under the budget (and at most
  // --max-reps); the best is reported. Keeps the full matrix to a few minutes on 2 cores.
  const double budget_s = opt.quick ? 0.3 : 1.0;

  std::vector<measurement> results;
  // A configuration's measurement, or its better round's (--rounds).
  auto keep_best = [&](const measurement& m) {
    for (auto& kept : results)
      if (kept.impl == m.impl && kept.dir == m.dir && kept.pol == m.pol && kept.d == m.d &&
          kept.t == m.t) {
        if (m.ok && (!kept.ok || m.best_ms < kept.best_ms)) kept = m;
        return;
      }
    results.push_back(m);
  };
  const auto start = std::chrono::steady_clock::now();
  for (int round = 0; round < opt.rounds; ++round)
    for (int d : ds) {
      for (int t : ts) {
        for (dir_id dir : {dir_id::forward, dir_id::backward}) {
          for (policy_id pol : pols) {
            for (impl_id impl : {impl_id::naive, impl_id::sinkmoe, impl_id::torch}) {
              if (impl == impl_id::naive && !policy_has_naive(pol)) continue;
              // The naive reference is a correctness and scale anchor, not a ratio: one round.
              if (impl == impl_id::naive && round > 0) continue;
              if (impl == impl_id::torch && (!use_torch || !policy_has_torch(pol))) continue;
              if (!opt.only.empty()) {
                const std::string label = std::string(dir_name(dir)) + " " + policy_name(pol) +
                                          " D=" + std::to_string(d) + " T=" + std::to_string(t);
                if (std::none_of(opt.only.begin(), opt.only.end(), [&](const std::string& o) {
                      return label.find(o) != std::string::npos;
                    }))
                  continue;
              }
              measurement m;
              m.impl = impl;
              m.dir = dir;
              m.pol = pol;
              m.d = d;
              m.t = t;
              m.flops = forward_flops(policy_causal(pol), t, t, d) *
                        (dir == dir_id::backward ? 2.5 : 1.0);
              if (impl == impl_id::naive && t > 4096) {
                m.skipped = "O(T^2) memory: one " + std::to_string(std::size_t(t) * t * 4 >> 20) +
                            " MiB score matrix per head (two in backward) per thread";
                keep_best(m);
                continue;
              }
              std::fprintf(
                  stderr, "  %s%-7s %-8s %-24s D=%-3d T=%-5d ...",
                  opt.rounds > 1 ? ("round " + std::to_string(round + 1) + " ").c_str() : "",
                  impl_name(impl), dir_name(dir), policy_name(pol), d, t);
              const int min_reps =
                  1;  // then more while under the budget (one run of T=8192 is seconds)
              const auto r =
                  impl == impl_id::torch
                      ? run_program("python3",
                                    {opt.torch_script, "measure", dir_name(dir),
                                     policy_causal(pol) ? "causal" : "none", std::to_string(d),
                                     std::to_string(t), threads_s, std::to_string(opt.max_reps),
                                     json_number(budget_s)})
                      : run_child({"--child", "measure", impl_name(impl), dir_name(dir),
                                   policy_name(pol), std::to_string(d), std::to_string(t),
                                   threads_s, std::to_string(min_reps),
                                   std::to_string(opt.max_reps), json_number(budget_s)});
              long hwm = 0, base = 0;
              double bytes = 0;
              if (r && std::sscanf(r->c_str(), "%lf %lf %d %ld %ld %lf %lf %lf", &m.best_ms,
                                   &m.median_ms, &m.reps, &hwm, &base, &bytes, &m.cpu_util,
                                   &m.cpu_ms) == 8) {
                m.ok = true;
                m.gflops = m.flops / (m.best_ms * 1e-3) * 1e-9;
                m.gflops_cpu = m.flops / (m.cpu_ms * 1e-3) * 1e-9;
                m.peak_rss_mib = hwm / 1024.0;
                m.baseline_rss_mib = base / 1024.0;
                m.tensor_mib = bytes / (1 << 20);
                std::fprintf(stderr, " %9.2f ms %7.2f GFLOP/s %7.1f MiB  cpu %3.0f%%\n", m.best_ms,
                             m.gflops, m.peak_rss_mib, 100 * m.cpu_util);
              } else {
                m.skipped = "child process failed";
                std::fprintf(stderr, " failed\n");
              }
              keep_best(m);
            }
          }
        }
      }
    }
  const double total_s = seconds_since(start);
  const peak_info peak_end = measure_peak(threads_s);
  const peak_info peak{
      std::max(peak_start.wall1, peak_end.wall1), std::max(peak_start.wall_n, peak_end.wall_n),
      std::max(peak_start.cpu1, peak_end.cpu1), std::max(peak_start.cpu_n, peak_end.cpu_n)};

  auto find = [&](impl_id impl, dir_id dir, policy_id pol, int d, int t) -> const measurement* {
    for (const auto& m : results)
      if (m.impl == impl && m.dir == dir && m.pol == pol && m.d == d && m.t == t) return &m;
    return nullptr;
  };
  auto naive_of = [&](const measurement& m) -> const measurement* {
    if (m.impl != impl_id::sinkmoe || !m.ok) return nullptr;
    const measurement* n = find(impl_id::naive, m.dir, m.pol, m.d, m.t);
    return n && n->ok ? n : nullptr;
  };
  auto ratio_of = [&](const measurement& m) -> std::optional<double> {
    if (const measurement* n = naive_of(m)) return n->best_ms / m.best_ms;
    return std::nullopt;
  };
  auto ratio_cpu_of = [&](const measurement& m) -> std::optional<double> {
    if (const measurement* n = naive_of(m)) return n->cpu_ms / m.cpu_ms;
    return std::nullopt;
  };

  // ---- JSON, one object per measurement ----
  for (int threads : {1, opt.threads}) {
    const bool one = threads == 1;
    std::printf(
        "{\"name\":\"fma_peak\",\"dtype\":\"float\",\"isa\":\"%s\",\"threads\":%d,\"gflops\":%s,"
        "\"gflops_start\":%s,\"gflops_end\":%s,\"gflops_cpu_time\":%s}\n",
        k_peak_isa, threads, json_number(one ? peak.wall1 : peak.wall_n, 2).c_str(),
        json_number(one ? peak_start.wall1 : peak_start.wall_n, 2).c_str(),
        json_number(one ? peak_end.wall1 : peak_end.wall_n, 2).c_str(),
        json_number(one ? peak.cpu1 : peak.cpu_n, 2).c_str());
  }
  std::printf(
      "{\"name\":\"host_attention_check\",\"what\":\"max relative difference sinkmoe vs naive "
      "(out, lse, router, dq, dk, dv; vanilla causal and none; T in {130, 256}, D = 64)\","
      "\"max_rel_err\":%s}\n",
      check_err < 0 ? "null" : json_number(check_err, 9).c_str());
  for (const auto& m : results) print_json(m, opt.threads, peak, ratio_of(m), ratio_cpu_of(m));

  // ---- Table ----
  int contended = 0, measured = 0;
  for (const auto& m : results)
    if (m.ok) {
      ++measured;
      if (m.cpu_util < 0.9) ++contended;
    }
#if defined(_OPENMP)
  const char* openmp_note = "";
#else
  const char* openmp_note = " (built WITHOUT OpenMP: one thread)";
#endif
  std::printf("\n## host_attention: B=%d Hq=Hkv=%d float, %d threads%s, %s, best of %d round%s\n\n",
              k_batch, k_heads, opt.threads, openmp_note, opt.quick ? "quick" : "full", opt.rounds,
              opt.rounds > 1 ? "s" : "");
  std::printf(
      "fp32 FMA peak (bench kernel, %s, best of start and end): %.1f GFLOP/s on 1 thread, %.1f "
      "GFLOP/s on %d "
      "threads (start %.1f, end %.1f; by CPU time %.1f). sinkmoe vs naive check: max rel. diff "
      "%.1e. "
      "Matrix time %.0f s.\n",
      k_peak_isa, peak.wall1, peak.wall_n, opt.threads, peak_start.wall_n, peak_end.wall_n,
      peak.cpu_n, check_err, total_s);
  std::printf(
      "CPU %% = process CPU time / (wall time x threads) of the best repetition, sinkmoe / naive; "
      "%d of %d "
      "measurements ran below 90%%: other processes held the cores and their wall times are "
      "inflated. "
      "The (cpu) columns divide by CPU time instead of wall time (contention-robust; equal to the "
      "wall "
      "columns on an idle machine).\n\n",
      contended, measured);
  std::printf(
      "| dir | policy | D | T | sinkmoe ms | GFLOP/s | %% peak | naive ms | naive GFLOP/s | "
      "speedup | CPU %% | "
      "GFLOP/s (cpu) | %% peak (cpu) | speedup (cpu) | peak RSS MiB | naive RSS MiB | tensors MiB "
      "|\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (dir_id dir : {dir_id::forward, dir_id::backward})
    for (policy_id pol : pols)
      for (int d : ds)
        for (int t : ts) {
          const measurement* s = find(impl_id::sinkmoe, dir, pol, d, t);
          const measurement* n = find(impl_id::naive, dir, pol, d, t);
          if (!s) continue;
          if (!s->ok) {
            std::printf("| %s | %s | %d | %d | failed |||||||||||||\n", dir_name(dir),
                        policy_name(pol), d, t);
            continue;
          }
          std::string naive_ms = "-", naive_gf = "-", speedup = "-", speedup_cpu = "-",
                      naive_rss = "-";
          std::string util = json_number(100 * s->cpu_util, 0);
          if (n && n->ok) {
            naive_ms = json_number(n->best_ms, 1);
            naive_gf = json_number(n->gflops, 1);
            naive_rss = json_number(n->peak_rss_mib, 0);
            util += " / " + json_number(100 * n->cpu_util, 0);
            speedup = json_number(*ratio_of(*s), 2) + "x";
            speedup_cpu = json_number(*ratio_cpu_of(*s), 2) + "x";
          } else if (n) {
            naive_ms = "skipped: O(T^2) memory";
          }
          std::printf(
              "| %s | %s | %d | %d | %.1f | %.1f | %.0f%% | %s | %s | %s | %s | %.1f | %.0f%% | %s "
              "| %.0f | %s "
              "| %.1f |\n",
              dir_name(dir), policy_name(pol), d, t, s->best_ms, s->gflops,
              100.0 * s->gflops / peak.wall_n, naive_ms.c_str(), naive_gf.c_str(), speedup.c_str(),
              util.c_str(), s->gflops_cpu, 100.0 * s->gflops_cpu / peak.cpu_n, speedup_cpu.c_str(),
              s->peak_rss_mib, naive_rss.c_str(), s->tensor_mib);
        }

  // ---- Against PyTorch's CPU SDPA, and the sink and gate overheads ----
  std::printf("\n## sinkmoe vs PyTorch CPU SDPA (%s), %d threads\n\n", torch_status.c_str(),
              opt.threads);
  std::printf(
      "torch / sinkmoe: PyTorch's time over sinkmoe's (> 1: sinkmoe faster). sink, gated: "
      "sinkmoe vanilla causal's time over the policy's (>= 0.9 is the target).\n\n");
  std::printf(
      "| dir | mask | D | T | sinkmoe ms | torch ms | torch / sinkmoe | sink | gated | %% peak "
      "|\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  double worst_torch = 1e9, worst_overhead = 1e9, worst_big_fraction = 1e9;
  for (dir_id dir : {dir_id::forward, dir_id::backward})
    for (policy_id pol : {policy_id::vanilla_causal, policy_id::vanilla_none})
      for (int d : ds)
        for (int t : ts) {
          const measurement* s = find(impl_id::sinkmoe, dir, pol, d, t);
          if (!s || !s->ok) continue;
          const measurement* tr = find(impl_id::torch, dir, pol, d, t);
          std::string torch_ms = "-", ratio = "-", sink = "-", gated = "-";
          if (tr && tr->ok) {
            torch_ms = json_number(tr->best_ms, 1);
            ratio = json_number(tr->best_ms / s->best_ms, 2) + "x";
            worst_torch = std::min(worst_torch, tr->best_ms / s->best_ms);
          }
          if (pol == policy_id::vanilla_causal) {
            for (auto [other, text] : {std::pair{policy_id::sink_causal, &sink},
                                       std::pair{policy_id::gated_causal, &gated}}) {
              const measurement* o = find(impl_id::sinkmoe, dir, other, d, t);
              if (o && o->ok) {
                *text = json_number(s->best_ms / o->best_ms, 2) + "x";
                worst_overhead = std::min(worst_overhead, s->best_ms / o->best_ms);
              }
            }
          }
          if (t >= 2048) worst_big_fraction = std::min(worst_big_fraction, s->gflops / peak.wall_n);
          std::printf("| %s | %s | %d | %d | %.1f | %s | %s | %s | %s | %.0f%% |\n", dir_name(dir),
                      policy_causal(pol) ? "causal" : "none", d, t, s->best_ms, torch_ms.c_str(),
                      ratio.c_str(), sink.c_str(), gated.c_str(), 100.0 * s->gflops / peak.wall_n);
        }

  // ---- Targets (reported, not asserted) ----
  std::printf("\nTargets (reported, not asserted):\n");
  if (worst_torch < 1e9)
    std::printf("- vanilla vs PyTorch CPU SDPA, every shape: worst %.2fx (target >= 1.0x): %s\n",
                worst_torch, worst_torch >= 1.0 ? "met" : "NOT met");
  else
    std::printf("- vanilla vs PyTorch CPU SDPA: not measured (%s)\n", torch_status.c_str());
  if (worst_overhead < 1e9)
    std::printf("- sink and gated vs vanilla (causal): worst %.2fx (target >= 0.9x): %s\n",
                worst_overhead, worst_overhead >= 0.9 ? "met" : "NOT met");
  if (worst_big_fraction < 1e9)
    std::printf(
        "- vanilla fraction of the %s FMA peak at T >= 2048, forward and backward: worst %.0f%% "
        "(target >= 60%%): %s\n",
        k_peak_isa, 100 * worst_big_fraction, worst_big_fraction >= 0.6 ? "met" : "NOT met");
  for (policy_id pol : {policy_id::vanilla_causal, policy_id::vanilla_none})
    for (int d : ds) {
      const measurement* s = find(impl_id::sinkmoe, dir_id::forward, pol, d, 2048);
      if (!s) continue;
      if (auto r = ratio_of(*s))
        std::printf(
            "- forward %s D=%d T=2048 vs naive: %.2fx, by CPU time %.2fx (target >= 5x): %s\n",
            policy_name(pol), d, *r, *ratio_cpu_of(*s), *r >= 5 ? "met" : "NOT met");
    }
  double worst_fraction = 1e9, best_fraction = 0, worst_cpu = 1e9, best_cpu = 0;
  for (const auto& m : results)
    if (m.impl == impl_id::sinkmoe && m.dir == dir_id::forward && m.ok) {
      worst_fraction = std::min(worst_fraction, m.gflops / peak.wall_n);
      best_fraction = std::max(best_fraction, m.gflops / peak.wall_n);
      worst_cpu = std::min(worst_cpu, m.gflops_cpu / peak.cpu_n);
      best_cpu = std::max(best_cpu, m.gflops_cpu / peak.cpu_n);
    }
  if (best_fraction > 0)  // (no forward measured under --only otherwise)
    std::printf(
        "- forward fraction of the %d-thread FMA peak: %.0f%% .. %.0f%%, by CPU time %.0f%% .. "
        "%.0f%% "
        "(target >= 30%%): %s\n",
        opt.threads, 100 * worst_fraction, 100 * best_fraction, 100 * worst_cpu, 100 * best_cpu,
        worst_fraction >= 0.3 ? "met everywhere"
                              : (best_fraction >= 0.3 ? "met in part" : "NOT met"));
  double worst_rss = 0;
  for (const auto& m : results)
    if (m.impl == impl_id::sinkmoe && m.ok) worst_rss = std::max(worst_rss, m.peak_rss_mib);
  const int t_max = ts.back(), t_mid = ts[ts.size() - 2];
  std::printf(
      "- sinkmoe peak RSS, largest over all configurations (T <= %d): %.0f MiB (target: well under "
      "1 GiB): "
      "%s\n",
      t_max, worst_rss, worst_rss < 1024 ? "met" : "NOT met");
  for (dir_id dir : {dir_id::forward, dir_id::backward})
    for (int d : ds) {
      const measurement* hi = find(impl_id::sinkmoe, dir, policy_id::vanilla_none, d, t_max);
      const measurement* lo = find(impl_id::sinkmoe, dir, policy_id::vanilla_none, d, t_mid);
      if (hi && lo && hi->ok && lo->ok) {
        const double growth =
            (hi->peak_rss_mib - hi->baseline_rss_mib) / (lo->peak_rss_mib - lo->baseline_rss_mib);
        std::printf(
            "- memory %s vanilla/none D=%d, T %d -> %d: RSS above baseline grows %.2fx (linear: "
            "%dx)\n",
            dir_name(dir), d, t_mid, t_max, growth, t_max / t_mid);
      }
    }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 3 && std::strcmp(argv[1], "--child") == 0) {
    const std::string what = argv[2];
    if (what == "measure" && argc == 12) return child_measure(argv + 3);
    if (what == "peak" && argc == 4) return child_peak(argv + 3);
    if (what == "check" && argc == 4) return child_check(argv + 3);
    return 2;
  }
  options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      opt.quick = true;
    } else if (a == "--threads" && i + 1 < argc) {
      opt.threads = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--max-reps" && i + 1 < argc) {
      opt.max_reps = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--rounds" && i + 1 < argc) {
      opt.rounds = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--torch" && i + 1 < argc) {
      opt.torch_script = argv[++i];
    } else if (a == "--no-torch") {
      opt.torch_script.clear();
    } else if (a == "--only" && i + 1 < argc) {
      std::stringstream list(argv[++i]);
      for (std::string item; std::getline(list, item, ',');) opt.only.push_back(item);
    } else {
      std::fprintf(
          stderr,
          "usage: %s [--quick] [--threads N] [--max-reps N] [--rounds N] [--torch SCRIPT | "
          "--no-torch]\n"
          "  --quick      T in {512, 2048} only, smaller time budget\n"
          "  --threads N  threads (default 2)\n"
          "  --max-reps N timed repetitions per configuration at most (default 5)\n"
          "  --rounds N   passes over the whole matrix; each configuration keeps its best "
          "(default 1)\n"
          "  --torch S    PyTorch CPU SDPA reference script (default: bench/"
          "torch_cpu_reference.py; skipped when python3 cannot import torch)\n"
          "  --no-torch   no PyTorch reference\n"
          "  --only A,B   only configurations whose label (\"forward vanilla/none D=64 "
          "T=2048\") contains A or B\n",
          argv[0]);
      return a == "--help" || a == "-h" ? 0 : 2;
    }
  }
  return parent_main(opt);
}
