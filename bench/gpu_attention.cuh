#pragma once
// Shared pieces of the GPU attention benchmark (bench/gpu_attention.cu is the driver; every
// policy's kernels are instantiated in its own translation unit, gpu_attention_policies.cu built
// once per policy, so that nvcc compiles them in parallel). nvcc only.
//
// One measured row = (backend, policy, mask, head dim, T, direction). Tensors are bf16 in the
// [B, T, H, D] layout with Hq = Hkv = H; lse / router / drouter are fp32 [B, H, T].
//
// FLOPs are counted as FlashAttention's benchmarks count them (benchmark_flash_attention.py):
//   forward  = 4 * B * H * T * T * D, halved when causal   (two T x T x D products, 2 FLOP/FMA)
//   backward = 2.5 * forward                                (five products; the forward's two
//                                                            recomputed ones are not counted)
// Sink, gate and router work is not counted: the same FLOP count for every policy, so a policy's
// TFLOP/s ratio to vanilla is its time overhead.

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <sinkmoe/args.hpp>
#include <sinkmoe/attention.hpp>
#include <sinkmoe/core/error.hpp>
#include <sinkmoe/cuda/arch/arch.hpp>
#include <sinkmoe/cuda/check.hpp>
#include <sinkmoe/cuda/exec.hpp>
#include <sinkmoe/cuda/forward.cuh>
#include <string>
#include <utility>
#include <vector>

#if __has_include(<sinkmoe/cuda/backward.cuh>)
#include <sinkmoe/cuda/backward.cuh>
#define SINKMOE_BENCH_HAS_BACKWARD 1
#else
#define SINKMOE_BENCH_HAS_BACKWARD 0
#endif

// The unfused cuBLASLt path joins as a second backend when both of its headers exist.
#if __has_include(<sinkmoe/cuda/blaslt/matmul.cuh>)
#include <sinkmoe/cuda/blaslt/matmul.cuh>
#define SINKMOE_BENCH_HAS_BLASLT 1
#else
#define SINKMOE_BENCH_HAS_BLASLT 0
#endif
// SINKMOE_BENCH_DISABLE_UNFUSED (CMake: -DSINKMOE_BENCH_UNFUSED=OFF) leaves it out.
#if SINKMOE_BENCH_HAS_BLASLT && !defined(SINKMOE_BENCH_DISABLE_UNFUSED) && \
    __has_include(<sinkmoe/cuda/unfused/unfused.cuh>)
#include <sinkmoe/cuda/unfused/unfused.cuh>
#define SINKMOE_BENCH_HAS_UNFUSED 1
#else
#define SINKMOE_BENCH_HAS_UNFUSED 0
#endif

namespace sinkmoe::bench {

using element = arch::bf16;

// ---------------------------------------------------------------------------------------------
// The benchmark matrix
// ---------------------------------------------------------------------------------------------

enum class policy_id : int { vanilla = 0, sink = 1, gated = 2, sink_gated = 3 };
inline constexpr int k_policy_count = 4;

inline const char* policy_name(policy_id p) {
  switch (p) {
    case policy_id::vanilla:
      return "vanilla";
    case policy_id::sink:
      return "sink";
    case policy_id::gated:
      return "gated";
    case policy_id::sink_gated:
      return "sink+gated";
  }
  return "?";
}

/// The attention<> bundle of each benchmarked policy. Vanilla is plain softmax attention (its
/// router output is not requested: it is the baseline the others' overhead is measured against);
/// the others write the router values G and take dL/dG in the backward.
///   sink:        learned sink logit per head (GPT-OSS), G = 1 - sink mass
///   gated:       elementwise sigmoid output gate (Qwen3-Next), G = mean gate
///   sink+gated:  both, G = product of the two
template <policy_id P, class Mask>
struct policy_bundle;
template <class Mask>
struct policy_bundle<policy_id::vanilla, Mask> {
  using type = attention<sink::none, gate::none, Mask>;
};
template <class Mask>
struct policy_bundle<policy_id::sink, Mask> {
  using type = attention<sink::learned, gate::none, Mask>;
};
template <class Mask>
struct policy_bundle<policy_id::gated, Mask> {
  using type = attention<sink::none, gate::elementwise, Mask>;
};
template <class Mask>
struct policy_bundle<policy_id::sink_gated, Mask> {
  using type = attention<sink::learned, gate::elementwise, Mask, route::product>;
};

/// One shape of the matrix.
struct shape_config {
  int batch = 0, seq_len = 0, heads = 0, head_dim = 0;
  bool causal = false;
  [[nodiscard]] std::int64_t tokens() const { return static_cast<std::int64_t>(batch) * seq_len; }
  /// FlashAttention's forward count (see the top of this file).
  [[nodiscard]] double forward_flops() const {
    const double f = 4.0 * batch * heads * static_cast<double>(seq_len) * seq_len * head_dim;
    return causal ? f / 2.0 : f;
  }
  [[nodiscard]] double backward_flops() const { return 2.5 * forward_flops(); }
};

struct bench_options {
  int warmup = 3;  ///< untimed calls before timing
  int runs = 10;   ///< timed calls; the median is reported
};

/// One measured (or failed / skipped) row.
struct measurement {
  std::string backend;  ///< "fused" or "unfused"
  policy_id policy = policy_id::vanilla;
  shape_config shape;
  std::string direction;  ///< "forward" or "backward"
  std::string status;     ///< "ok", "skipped" or "error"
  std::string detail;     ///< why skipped / the error message
  double ms_median = 0, ms_min = 0, ms_max = 0;
  int runs = 0;
  double tflops = 0;                    ///< FLOPs / median time
  std::int64_t io_bytes = 0;            ///< tensors the call reads or writes (allocated here)
  std::int64_t workspace_bytes = 0;     ///< device memory the call itself took (peak)
  std::int64_t nonfinite_outputs = -1;  ///< NaN/inf found in the outputs after timing (-1: not
                                        ///< checked)
};

// ---------------------------------------------------------------------------------------------
// Device memory
// ---------------------------------------------------------------------------------------------

/// An owning cudaMalloc'd buffer of n elements of T.
template <class T>
class device_buffer {
 public:
  device_buffer() = default;
  explicit device_buffer(std::size_t n) : size_(n) {
    if (n > 0) SINKMOE_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&data_), n * sizeof(T)));
  }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  device_buffer(device_buffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  device_buffer& operator=(device_buffer&& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
    return *this;
  }
  ~device_buffer() {
    if (data_ != nullptr) cudaFree(data_);  // no throw from a destructor; errors surface later
  }
  [[nodiscard]] T* data() const { return data_; }
  [[nodiscard]] std::size_t size() const { return size_; }
  [[nodiscard]] std::size_t bytes() const { return size_ * sizeof(T); }

 private:
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

/// Fills a buffer with N(mean, stddev^2)-distributed values from a counter-based hash of
/// (seed, index): fresh, reproducible, never all zeros (zeros can time faster than real data).
void fill_normal(element* data, std::size_t n, std::uint64_t seed, float stddev,
                 cudaStream_t stream);
void fill_normal(float* data, std::size_t n, std::uint64_t seed, float stddev, float mean,
                 cudaStream_t stream);
/// Number of NaN / inf values in the buffer (synchronises the stream).
std::int64_t count_nonfinite(const element* data, std::size_t n, cudaStream_t stream);
std::int64_t count_nonfinite(const float* data, std::size_t n, cudaStream_t stream);

/// Every tensor of the largest shape the matrix uses: the matrix keeps B * T * H * D constant
/// (16k tokens x 2048 channels), so one set of buffers serves every row.
struct workspace {
  std::size_t elements = 0;   ///< B * T * H * D
  std::size_t row_stats = 0;  ///< B * H * T (largest)
  std::size_t heads = 0;      ///< largest H
  device_buffer<element> q, k, v, gate_logits, out, dout, dq, dk, dv, dgate_logits;
  device_buffer<float> lse, router, drouter, sinks, dsinks;
  cudaStream_t stream = nullptr;
};

// ---------------------------------------------------------------------------------------------
// Timing and memory
// ---------------------------------------------------------------------------------------------

struct timing {
  double ms_median = 0, ms_min = 0, ms_max = 0;
  int runs = 0;
};

/// Times `call` with CUDA events on `stream`: `warmup` untimed calls, then `runs` calls, each
/// between its own pair of events; returns the median (and extremes) of the per-call times.
template <class F>
timing time_on_stream(F&& call, const bench_options& options, cudaStream_t stream) {
  for (int i = 0; i < options.warmup; ++i) call();
  const int runs = std::max(options.runs, 1);
  std::vector<cudaEvent_t> events(2 * static_cast<std::size_t>(runs));
  for (auto& e : events) SINKMOE_CUDA_CHECK(cudaEventCreate(&e));
  struct destroy_events {
    std::vector<cudaEvent_t>& events;
    ~destroy_events() {
      for (auto e : events) cudaEventDestroy(e);
    }
  } guard{events};
  for (int i = 0; i < runs; ++i) {
    SINKMOE_CUDA_CHECK(cudaEventRecord(events[2 * i], stream));
    call();
    SINKMOE_CUDA_CHECK(cudaEventRecord(events[2 * i + 1], stream));
  }
  SINKMOE_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<double> ms(static_cast<std::size_t>(runs));
  for (int i = 0; i < runs; ++i) {
    float elapsed = 0;
    SINKMOE_CUDA_CHECK(cudaEventElapsedTime(&elapsed, events[2 * i], events[2 * i + 1]));
    ms[static_cast<std::size_t>(i)] = elapsed;
  }
  std::sort(ms.begin(), ms.end());
  const std::size_t mid = ms.size() / 2;
  const double median = ms.size() % 2 ? ms[mid] : 0.5 * (ms[mid - 1] + ms[mid]);
  return {median, ms.front(), ms.back(), runs};
}

/// Device memory one call takes beyond what the benchmark allocated: the growth of the stream
/// allocator's used-memory high-water mark (cudaMallocAsync workspaces, even when freed before
/// the call returns) plus the growth of cudaMalloc'd memory still held when it returns (cached
/// workspaces). A cudaMalloc + cudaFree pair inside the call is not seen. Call it after one
/// untimed call, so that lazy module loading is not counted.
template <class F>
std::int64_t device_memory_taken(F&& call, cudaStream_t stream) {
  int device = 0;
  SINKMOE_CUDA_CHECK(cudaGetDevice(&device));
  cudaMemPool_t pool{};
  SINKMOE_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
  SINKMOE_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::uint64_t used_before = 0, reserved_before = 0;
  SINKMOE_CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used_before));
  SINKMOE_CUDA_CHECK(
      cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &reserved_before));
  std::uint64_t reset = 0;
  SINKMOE_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &reset));
  std::size_t free_before = 0, total = 0;
  SINKMOE_CUDA_CHECK(cudaMemGetInfo(&free_before, &total));

  call();
  SINKMOE_CUDA_CHECK(cudaStreamSynchronize(stream));

  std::uint64_t used_high = 0, reserved_after = 0;
  SINKMOE_CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &used_high));
  SINKMOE_CUDA_CHECK(
      cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &reserved_after));
  std::size_t free_after = 0;
  SINKMOE_CUDA_CHECK(cudaMemGetInfo(&free_after, &total));
  const auto pool_peak =
      static_cast<std::int64_t>(used_high) - static_cast<std::int64_t>(used_before);
  // Memory that left the free list, less what the pool reserved for the async allocations.
  const auto held =
      (static_cast<std::int64_t>(free_before) - static_cast<std::int64_t>(free_after)) -
      (static_cast<std::int64_t>(reserved_after) - static_cast<std::int64_t>(reserved_before));
  return std::max<std::int64_t>(pool_peak, 0) + std::max<std::int64_t>(held, 0);
}

// ---------------------------------------------------------------------------------------------
// Views over the workspace for one shape
// ---------------------------------------------------------------------------------------------

template <class T>
tensor_view<T, 4> bthd(T* data, const shape_config& s) {
  return {data, {s.batch, s.seq_len, s.heads, s.head_dim}};
}
template <class T>
tensor_view<T, 3> bht(T* data, const shape_config& s) {
  return {data, {s.batch, s.heads, s.seq_len}};
}

/// Forward arguments of policy P over the workspace (optional tensors only where P uses them).
template <class Attn>
forward_args<element> make_forward_args(const workspace& ws, const shape_config& s,
                                        bool with_router) {
  forward_args<element> fa{};
  fa.q = bthd<const element>(ws.q.data(), s);
  fa.k = bthd<const element>(ws.k.data(), s);
  fa.v = bthd<const element>(ws.v.data(), s);
  if constexpr (std::is_same_v<typename Attn::sink_type, sink::learned>) {
    fa.sinks = tensor_view<const float, 1>{ws.sinks.data(), {s.heads}};
  }
  if constexpr (std::is_same_v<typename Attn::gate_type, gate::elementwise>) {
    fa.gate_logits = bthd<const element>(ws.gate_logits.data(), s);
  }
  fa.out = bthd<element>(ws.out.data(), s);
  fa.lse = bht<float>(ws.lse.data(), s);
  if (with_router) fa.router = bht<float>(ws.router.data(), s);
  return fa;
}

template <class Attn>
backward_args<element> make_backward_args(const workspace& ws, const shape_config& s,
                                          bool with_router) {
  backward_args<element> ba{};
  ba.dout = bthd<const element>(ws.dout.data(), s);
  if (with_router) ba.drouter = bht<const float>(ws.drouter.data(), s);
  ba.dq = bthd<element>(ws.dq.data(), s);
  ba.dk = bthd<element>(ws.dk.data(), s);
  ba.dv = bthd<element>(ws.dv.data(), s);
  if constexpr (std::is_same_v<typename Attn::sink_type, sink::learned>) {
    ba.dsinks = tensor_view<float, 1>{ws.dsinks.data(), {s.heads}};
  }
  if constexpr (std::is_same_v<typename Attn::gate_type, gate::elementwise>) {
    ba.dgate_logits = bthd<element>(ws.dgate_logits.data(), s);
  }
  return ba;
}

// ---------------------------------------------------------------------------------------------
// Backends: the calls the benchmark times, behind one small interface
// ---------------------------------------------------------------------------------------------

/// State of the unfused backend shared by every row: its cuBLASLt context (plans cached).
#if SINKMOE_BENCH_HAS_UNFUSED
struct unfused_state {
  blaslt::context context{};
};
#else
struct unfused_state {};
#endif

/// Why a backend's call is not in this build (nullptr: it is).
inline const char* fused_backward_missing() {
  return SINKMOE_BENCH_HAS_BACKWARD
             ? nullptr
             : "sinkmoe/cuda/backward.cuh was not present when the benchmark was built";
}
inline const char* unfused_missing() {
  return SINKMOE_BENCH_HAS_UNFUSED ? nullptr
                                   : "the unfused path is not in this build (its headers were "
                                     "absent, or SINKMOE_BENCH_UNFUSED=OFF)";
}

/// What the policy translation units export: timing of every row of one policy, and the
/// --check comparison against the CPU backend.
struct policy_entry {
  policy_id id;
  /// Appends the forward and backward rows of (backend, shape) for this policy.
  void (*measure)(const std::string& backend, const shape_config& shape, workspace& ws,
                  unfused_state* unfused, const bench_options& options,
                  std::vector<measurement>& rows);
  /// Runs a small problem of this policy, mask and head dim through the fused forward (and
  /// backward) and the CPU backend; returns an empty string when they agree, else what failed.
  std::string (*check)(int head_dim, bool causal, std::vector<std::string>& log);
};

policy_entry policy_entry_vanilla();
policy_entry policy_entry_sink();
policy_entry policy_entry_gated();
policy_entry policy_entry_sink_gated();

}  // namespace sinkmoe::bench
