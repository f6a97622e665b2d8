#pragma once
// Head balancing on the GPU (docs/method.md section 4): the loss of
// balance::importance_cv2 (sinkmoe/balance/balance.hpp) as three kernels written only against
// the primitive layer sinkmoe::arch, plus the host-side pieces that validate, lay out the
// device workspace, build the kernels' parameters and read results back. The nvcc entry point
// is sinkmoe/cuda/balance.cuh (balance::device_balancer); tests run the same kernels through
// the host emulation (arch::emulated_launch) and compare them with importance_cv2.
//
// The same three steps as the host, each on the caller's stream, none synchronising:
//   accumulate_kernel   grid (heads, layers of a chunk), 256 threads: per layer and head, the
//                       sum of G over counted tokens and the counted-token count
//                       -> workspace.router_sum [L][H], workspace.token_count [L]
//                       (doubles: a data-parallel caller all-reduces them here, between steps)
//   evaluate_kernel     one block of 4 warps, a warp per layer: importance, shared heads (top m
//                       or the fixed set), CV, balanced CV, loss, effective heads, dormant
//                       fraction, and dL/dG per counted token of each head; then the total
//                       loss and mean CV -> workspace.importance, .shared, .layer_stats,
//                       .token_grad, .totals
//   router_grad_kernel  grid (blocks, layers of a chunk), 256 threads: drouter[b, h, t] =
//                       token_grad[h] on counted tokens, 0 elsewhere
//
// Why the primitive layer rather than CUB/Thrust: these kernels then run in the host emulation,
// so CI executes them (no GPU there), and they are deterministic by construction: every thread
// sums a fixed, strided set of tokens (fp32 inputs, double partial sums), the block combines
// the partials by a fixed shuffle butterfly and a fixed-order sum over warps, and the per-layer
// head statistics are summed by one lane in head order, as the host does (a layer has few heads:
// the serial sum costs nothing and keeps the host's order). No atomics, no float reordering
// between runs: results are bitwise repeatable. CUB's block reductions would do the same job
// on the GPU but cannot run in the emulation.
//
// Differences from the host implementation: the router values are fp32 in device memory; the
// counted-token mask is optional (empty: every token counts); per-block sums pass through fp32
// warp shuffles (relative error ~1e-7 against the host's double sums), the rest is double.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <sinkmoe/balance/balance.hpp>
#include <sinkmoe/core/error.hpp>
#include <sinkmoe/core/tensor_view.hpp>
#include <sinkmoe/cuda/arch/arch.hpp>
#include <span>
#include <vector>

namespace sinkmoe::balance::gpu {

inline constexpr int k_layers_per_launch = 16;  ///< layers per accumulate / router_grad launch
inline constexpr int k_reduce_threads = 256;    ///< threads of accumulate and router_grad blocks
inline constexpr int k_evaluate_warps = 4;      ///< warps of the evaluate block
inline constexpr int k_max_grad_blocks = 1024;  ///< router_grad blocks per layer (grid-stride)
inline constexpr int k_max_heads = 4096;        ///< heads per layer (evaluate's shared memory)

/// Per-layer statistics in workspace::layer_stats, k_stat_count doubles per layer.
enum layer_stat : int {
  stat_cv = 0,            ///< std / mean over all heads
  stat_balanced_cv,       ///< std / mean over the balanced heads
  stat_loss,              ///< lambda * n * balanced_cv^2
  stat_effective_heads,   ///< (sum Imp)^2 / sum Imp^2
  stat_dormant_fraction,  ///< share of heads with importance < dormant_threshold
  k_stat_count
};

/// Indices into workspace::totals.
enum total_stat : int { total_loss = 0, total_mean_cv, k_total_count };

/// The device buffers of one balancing state: pointers into one allocation (carve_workspace),
/// in device memory on the GPU and in host memory in the emulation.
struct workspace {
  int layers = 0;
  int heads = 0;
  double* router_sum = nullptr;   ///< [layers][heads] sum of G over counted tokens
  double* token_count = nullptr;  ///< [layers] counted tokens
  double* importance = nullptr;   ///< [layers][heads] mean G over counted tokens
  double* layer_stats = nullptr;  ///< [layers][k_stat_count]
  double* totals = nullptr;       ///< [k_total_count] loss (sum over layers), mean CV
  float* token_grad = nullptr;    ///< [layers][heads] dL/dG on a counted token of head h
  /// [layers][heads], 1 = shared head (left out of the loss). selection::fixed: written once
  /// from importance_cv2::fixed_shared and read by evaluate; top_m_each_step: written by evaluate.
  std::uint8_t* shared = nullptr;
};

/// Bytes of the one allocation behind a workspace of this size (doubles first, then floats,
/// then bytes, so that every array is aligned).
inline std::size_t workspace_bytes(int layers, int heads) {
  const std::size_t lh = std::size_t(layers) * std::size_t(heads);
  const std::size_t doubles = 2 * lh + std::size_t(layers) * (1 + k_stat_count) + k_total_count;
  return doubles * sizeof(double) + lh * sizeof(float) + lh;
}

/// The workspace whose arrays lie in [base, base + workspace_bytes(layers, heads)); base must be
/// 8-byte aligned.
inline workspace carve_workspace(void* base, int layers, int heads) {
  const std::size_t lh = std::size_t(layers) * std::size_t(heads);
  workspace ws;
  ws.layers = layers;
  ws.heads = heads;
  double* d = static_cast<double*>(base);
  ws.router_sum = d;
  ws.token_count = ws.router_sum + lh;
  ws.importance = ws.token_count + layers;
  ws.layer_stats = ws.importance + lh;
  ws.totals = ws.layer_stats + std::size_t(layers) * k_stat_count;
  ws.token_grad = reinterpret_cast<float*>(ws.totals + k_total_count);
  ws.shared = reinterpret_cast<std::uint8_t*>(ws.token_grad + lh);
  return ws;
}

/// The options of importance_cv2 the evaluate kernel needs (trivially copyable).
struct evaluate_options {
  double lambda = 0.0;
  int shared_heads = 0;
  bool fixed_selection = false;
  bool sample_std = false;
  double dormant_threshold = 0.1;
};

/// Validates reg for `layers` layers of `heads` heads as importance_cv2::evaluate does (same
/// messages) and returns what the kernel needs. Every option of importance_cv2 is supported.
inline evaluate_options make_evaluate_options(const importance_cv2& reg, int layers, int heads) {
  sinkmoe::detail::require(layers >= 1 && heads >= 1, "device balancing: ", layers, " layers x ",
                           heads, " heads; needs at least one of each");
  // The evaluate kernel keeps a layer's importances in shared memory (4 warps x 9 bytes a head).
  sinkmoe::detail::require(heads <= k_max_heads, "device balancing: ", heads, " heads; at most ",
                           k_max_heads, " per layer");
  sinkmoe::detail::require(std::isfinite(reg.lambda) && reg.lambda >= 0.0,
                           "importance_cv2.lambda = ", reg.lambda, ": must be finite and >= 0");
  sinkmoe::detail::require(std::isfinite(reg.dormant_threshold),
                           "importance_cv2.dormant_threshold = ", reg.dormant_threshold,
                           ": must be finite");
  evaluate_options o;
  o.lambda = reg.lambda;
  o.shared_heads = reg.shared_heads;
  o.fixed_selection = reg.selection == shared_selection::fixed;
  o.sample_std = reg.sample_std;
  o.dormant_threshold = reg.dormant_threshold;
  if (!o.fixed_selection) {
    sinkmoe::detail::require(reg.shared_heads >= 0 && reg.shared_heads < heads,
                             "importance_cv2.shared_heads = ", reg.shared_heads,
                             ": must be in [0, heads) with heads = ", heads);
  } else {
    sinkmoe::detail::require(static_cast<int>(reg.fixed_shared.size()) == layers,
                             "importance_cv2.fixed_shared: ", reg.fixed_shared.size(),
                             " layers given, ", layers, " expected");
    for (int l = 0; l < layers; ++l) {
      std::vector<int> ids = reg.fixed_shared[static_cast<std::size_t>(l)];
      for (int h : ids)
        sinkmoe::detail::require(h >= 0 && h < heads, "importance_cv2.fixed_shared[", l,
                                 "] holds head ", h, ", outside [0, ", heads, ")");
      std::sort(ids.begin(), ids.end());
      sinkmoe::detail::require(std::adjacent_find(ids.begin(), ids.end()) == ids.end() &&
                                   static_cast<int>(ids.size()) < heads,
                               "importance_cv2.fixed_shared[", l,
                               "]: head ids must be distinct and leave at least one head balanced");
    }
  }
  return o;
}

/// workspace::shared before the first evaluate: the fixed set of reg (validated by
/// make_evaluate_options), or all zero for per-step selection.
inline std::vector<std::uint8_t> initial_shared_mask(const importance_cv2& reg, int layers,
                                                     int heads) {
  std::vector<std::uint8_t> mask(std::size_t(layers) * std::size_t(heads), 0);
  if (reg.selection == shared_selection::fixed)
    for (int l = 0; l < layers; ++l)
      for (int h : reg.fixed_shared[static_cast<std::size_t>(l)])
        mask[std::size_t(l) * heads + h] = 1;
  return mask;
}

// ---- Validation of the per-call arguments ----

/// Checks the layer inputs against the workspace: one per layer, router [B, heads, Tq]
/// (non-null), counted empty or [B, Tq], at most 2^31 - 1 tokens per layer.
inline void check_inputs(std::span<const layer_input<float>> inputs, const workspace& ws) {
  sinkmoe::detail::require(inputs.size() == std::size_t(ws.layers),
                           "device balance inputs: ", inputs.size(),
                           " layers given, the balancer was built for ", ws.layers);
  for (std::size_t l = 0; l < inputs.size(); ++l) {
    const layer_input<float>& in = inputs[l];
    sinkmoe::detail::require(!in.router.empty(), "device balance inputs[", l, "].router is null");
    sinkmoe::detail::require(in.router.shape[0] >= 0 && in.router.shape[2] >= 0,
                             "device balance inputs[", l, "].router: shape ", in.router.shape,
                             " has a negative extent");
    sinkmoe::detail::require(in.router.shape[1] == ws.heads, "device balance inputs[", l,
                             "].router: ", in.router.shape[1],
                             " heads, the balancer was built for ", ws.heads);
    sinkmoe::detail::require(
        in.router.shape[0] * in.router.shape[2] <= std::numeric_limits<int>::max(),
        "device balance inputs[", l, "].router: ", in.router.shape[0] * in.router.shape[2],
        " tokens (B * Tq); at most 2^31 - 1 per layer");
    if (!in.counted.empty())
      sinkmoe::detail::require(
          in.counted.shape[0] == in.router.shape[0] && in.counted.shape[1] == in.router.shape[2],
          "device balance inputs[", l, "].counted: shape ", in.counted.shape,
          " does not match router [B, H, Tq] = ", in.router.shape);
  }
}

/// Checks the dL/dG outputs: one non-null view per layer, of the router's shape.
inline void check_drouter(std::span<const layer_input<float>> inputs,
                          std::span<const tensor_view<float, 3>> drouter) {
  sinkmoe::detail::require(drouter.size() == inputs.size(),
                           "device balance drouter: ", drouter.size(), " layers given, ",
                           inputs.size(), " expected");
  for (std::size_t l = 0; l < inputs.size(); ++l)
    sinkmoe::detail::require(!drouter[l].empty() && drouter[l].shape == inputs[l].router.shape,
                             "device balance drouter[", l, "]: shape ", drouter[l].shape,
                             drouter[l].empty() ? " (null)" : "", ", expected ",
                             inputs[l].router.shape);
}

// ---- Kernels ----

namespace detail {

/// sqrt in double on both sides (::sqrt is IEEE correctly rounded on the GPU and the host).
SINKMOE_HD inline double square_root(double x) { return ::sqrt(x); }

}  // namespace detail

/// One layer's inputs as accumulate_kernel and router_grad_kernel see them.
struct layer_slice {
  const float* router;  ///< [B, H, Tq] (accumulate), null in router_grad
  index_t router_stride[3];
  float* drouter;  ///< [B, H, Tq] (router_grad), null in accumulate
  index_t drouter_stride[3];
  const std::uint8_t* counted;  ///< [B, Tq], null: every token counts
  index_t counted_stride[2];
  index_t batch;
  index_t tokens;
  int layer;  ///< index into the workspace arrays
};

/// Parameters of accumulate_kernel and router_grad_kernel: up to k_layers_per_launch layers,
/// the one selected by block_index().y.
struct layers_params {
  layer_slice slice[k_layers_per_launch];
  workspace ws;
};

/// Sum of G over counted tokens and the counted-token count of one (layer, head) per block.
struct accumulate_kernel {
  static constexpr int k_max_threads = k_reduce_threads;
  static constexpr int k_min_blocks = 1;
  static constexpr int k_warps = k_reduce_threads / arch::k_warp_size;

  /// Shared memory: the warps' partial sums and counts.
  static constexpr std::size_t smem_bytes() { return k_warps * (sizeof(float) + sizeof(int)); }

  SINKMOE_DEVICE void operator()(const layers_params& p) const {
    const int head = static_cast<int>(arch::block_index().x);
    const layer_slice s = p.slice[arch::block_index().y];
    const index_t n = s.batch * s.tokens;
    // Fixed token set per thread: i = rank, rank + 256, ...; partial sums in double.
    double sum = 0.0;
    int count = 0;
    for (index_t i = arch::thread_rank(); i < n; i += k_reduce_threads) {
      const index_t b = i / s.tokens;
      const index_t t = i - b * s.tokens;
      if (s.counted == nullptr ||
          arch::load_global(s.counted + b * s.counted_stride[0] + t * s.counted_stride[1]) != 0) {
        sum += static_cast<double>(arch::load_global(s.router + b * s.router_stride[0] +
                                                     head * s.router_stride[1] +
                                                     t * s.router_stride[2]));
        ++count;
      }
    }
    float* warp_sums = arch::dynamic_smem<float>();
    int* warp_counts = reinterpret_cast<int*>(warp_sums + k_warps);
    const float warp_sum = arch::warp_reduce_sum(static_cast<float>(sum));
    const int warp_count = arch::warp_reduce_sum(count);
    if (arch::lane_id() == 0) {
      arch::store_shared(warp_sums + arch::warp_id(), warp_sum);
      arch::store_shared(warp_counts + arch::warp_id(), warp_count);
    }
    arch::sync_block();
    if (arch::thread_rank() == 0) {
      double total = 0.0;
      int total_count = 0;
      for (int w = 0; w < k_warps; ++w) {
        total += static_cast<double>(arch::load_shared(warp_sums + w));
        total_count += arch::load_shared(warp_counts + w);
      }
      arch::store_global(p.ws.router_sum + std::size_t(s.layer) * p.ws.heads + head, total);
      if (head == 0)
        arch::store_global(p.ws.token_count + s.layer, static_cast<double>(total_count));
    }
  }
};

/// Parameters of evaluate_kernel.
struct evaluate_params {
  workspace ws;
  evaluate_options options;
};

/// Importance, shared heads, CV, loss, head metrics and dL/dG per counted token, per layer (a
/// warp per layer), then the totals. The arithmetic follows importance_cv2::evaluate and
/// importance_grad step by step, in the same order.
struct evaluate_kernel {
  static constexpr int k_threads = k_evaluate_warps * arch::k_warp_size;
  static constexpr int k_max_threads = k_threads;
  static constexpr int k_min_blocks = 1;
  /// Per warp: 4 broadcast scalars, importance [heads] (double), shared flags [heads] (bytes).
  static constexpr int k_scalars = 4;

  static std::size_t smem_bytes(int heads) {
    const std::size_t per_warp_doubles = k_scalars + std::size_t(heads);
    const std::size_t per_warp_bytes = (std::size_t(heads) + 7) / 8 * 8;
    return k_evaluate_warps * (per_warp_doubles * sizeof(double) + per_warp_bytes);
  }

  SINKMOE_DEVICE void operator()(const evaluate_params& p) const {
    const workspace& ws = p.ws;
    const evaluate_options& o = p.options;
    const int heads = ws.heads;
    const int lane = arch::lane_id();
    const int warp = arch::warp_id();
    double* doubles = arch::dynamic_smem<double>();
    double* scalars = doubles + std::size_t(warp) * (k_scalars + heads);
    double* importance = scalars + k_scalars;
    std::uint8_t* flags = reinterpret_cast<std::uint8_t*>(doubles + std::size_t(k_evaluate_warps) *
                                                                        (k_scalars + heads)) +
                          std::size_t(warp) * ((std::size_t(heads) + 7) / 8 * 8);

    for (int l = warp; l < ws.layers; l += k_evaluate_warps) {
      const std::size_t row = std::size_t(l) * heads;
      const double tokens = arch::load_global(ws.token_count + l);
      for (int h = lane; h < heads; h += arch::k_warp_size) {
        const double imp = tokens > 0 ? arch::load_global(ws.router_sum + row + h) / tokens : 0.0;
        arch::store_shared(importance + h, imp);
        arch::store_global(ws.importance + row + h, imp);
      }
      arch::sync_warp();
      // Shared heads: the fixed set, or the top m by importance with ties to the lower id (the
      // head's place in the host's stable sort, most important first).
      for (int h = lane; h < heads; h += arch::k_warp_size) {
        bool shared;
        if (o.fixed_selection) {
          shared = arch::load_global(ws.shared + row + h) != 0;
        } else {
          const double mine = arch::load_shared(importance + h);
          int place = 0;
          for (int j = 0; j < heads; ++j) {
            const double other = arch::load_shared(importance + j);
            place += other > mine || (other == mine && j < h);
          }
          shared = place < o.shared_heads;
          arch::store_global(ws.shared + row + h, static_cast<std::uint8_t>(shared ? 1 : 0));
        }
        arch::store_shared(flags + h, static_cast<std::uint8_t>(shared ? 1 : 0));
      }
      arch::sync_warp();
      if (lane == 0) evaluate_layer(o, ws, l, tokens, importance, flags, scalars);
      arch::sync_warp();
      // importance_grad: lambda n dCV^2/dImp_h on balanced heads, 0 on shared ones.
      const double mean = arch::load_shared(scalars), var = arch::load_shared(scalars + 1),
                   denom = arch::load_shared(scalars + 2), n = arch::load_shared(scalars + 3);
      const bool has_grad = tokens > 0 && mean > 0 && n >= 2;
      for (int h = lane; h < heads; h += arch::k_warp_size) {
        double grad = 0.0;
        if (has_grad && arch::load_shared(flags + h) == 0) {
          const double dcv2 =
              2 * (arch::load_shared(importance + h) - mean) / denom / (mean * mean) -
              2 * var / (mean * mean * mean) / n;
          grad = o.lambda * n * dcv2;
        }
        arch::store_global(ws.token_grad + row + h,
                           tokens > 0 ? static_cast<float>(grad / tokens) : 0.0f);
      }
      // No sync_warp here: the next layer reuses this warp's shared memory, but a lane rewrites
      // only its own importance and flag slots before the next sync_warp, and lane 0 rewrites
      // the scalars only after two more (the mutation test found the barrier that stood here
      // redundant).
    }
    arch::sync_block();
    if (arch::thread_rank() == 0) {
      double loss = 0.0, mean_cv = 0.0;
      for (int l = 0; l < ws.layers; ++l) {
        loss += arch::load_global(ws.layer_stats + std::size_t(l) * k_stat_count + stat_loss);
        mean_cv +=
            arch::load_global(ws.layer_stats + std::size_t(l) * k_stat_count + stat_cv) / ws.layers;
      }
      arch::store_global(ws.totals + total_loss, loss);
      arch::store_global(ws.totals + total_mean_cv, mean_cv);
    }
  }

  /// std / mean over the heads selected by `pick` (population or sample std); 0 when n < 2 or
  /// the mean is not positive. importance_cv2::coefficient_of_variation's arithmetic.
  template <class Pick>
  SINKMOE_DEVICE static double coefficient_of_variation(const double* importance, int heads,
                                                        bool sample_std, Pick pick) {
    double n = 0.0, sum = 0.0;
    for (int h = 0; h < heads; ++h)
      if (pick(h)) {
        n += 1;
        sum += arch::load_shared(importance + h);
      }
    if (n < 2) return 0.0;
    const double mean = sum / n;
    if (mean <= 0) return 0.0;
    double ss = 0.0;
    for (int h = 0; h < heads; ++h)
      if (pick(h)) {
        const double deviation = arch::load_shared(importance + h) - mean;
        ss += deviation * deviation;
      }
    return detail::square_root(ss / (sample_std ? n - 1 : n)) / mean;
  }

  /// One layer's statistics (lane 0 of its warp): writes layer_stats and leaves the gradient's
  /// mean, variance, denominator and n in scalars[0..3].
  SINKMOE_DEVICE static void evaluate_layer(const evaluate_options& o, const workspace& ws, int l,
                                            double tokens, const double* importance,
                                            const std::uint8_t* flags, double* scalars) {
    const int heads = ws.heads;
    const auto all = [](int) { return true; };
    const auto balanced = [flags](int h) { return arch::load_shared(flags + h) == 0; };
    double* stats = ws.layer_stats + std::size_t(l) * k_stat_count;
    const double cv = coefficient_of_variation(importance, heads, o.sample_std, all);
    const double balanced_cv = coefficient_of_variation(importance, heads, o.sample_std, balanced);
    double n = 0.0, sum = 0.0, sum_sq = 0.0, dormant = 0.0;
    for (int h = 0; h < heads; ++h) {
      const double imp = arch::load_shared(importance + h);
      n += balanced(h) ? 1 : 0;
      sum += imp;
      sum_sq += imp * imp;
      dormant += imp < o.dormant_threshold ? 1 : 0;
    }
    arch::store_global(stats + stat_cv, cv);
    arch::store_global(stats + stat_balanced_cv, balanced_cv);
    arch::store_global(stats + stat_loss, o.lambda * n * balanced_cv * balanced_cv);
    arch::store_global(stats + stat_effective_heads, sum_sq > 0 ? sum * sum / sum_sq : 0.0);
    arch::store_global(stats + stat_dormant_fraction, dormant / heads);
    // importance_grad's mean (of Imp / n, summed in head order) and variance.
    double mean = 0.0;
    for (int h = 0; h < heads; ++h)
      if (balanced(h)) mean += arch::load_shared(importance + h) / n;
    const double denom = o.sample_std ? n - 1 : n;
    double ss = 0.0;
    for (int h = 0; h < heads; ++h)
      if (balanced(h)) {
        const double deviation = arch::load_shared(importance + h) - mean;
        ss += deviation * deviation;
      }
    arch::store_shared(scalars, mean);
    arch::store_shared(scalars + 1, tokens > 0 && mean > 0 && n >= 2 ? ss / denom : 0.0);
    arch::store_shared(scalars + 2, denom);
    arch::store_shared(scalars + 3, n);
  }
};

/// drouter[b, h, t] = token_grad[layer][h] on counted tokens, 0 elsewhere (grid-stride over the
/// layer's [B, H, Tq] elements, Tq fastest).
struct router_grad_kernel {
  static constexpr int k_max_threads = k_reduce_threads;
  static constexpr int k_min_blocks = 1;

  SINKMOE_DEVICE void operator()(const layers_params& p) const {
    const layer_slice s = p.slice[arch::block_index().y];
    const int heads = p.ws.heads;
    const index_t n = s.batch * heads * s.tokens;
    const index_t step = index_t(arch::grid_dim().x) * k_reduce_threads;
    const float* grad = p.ws.token_grad + std::size_t(s.layer) * heads;
    for (index_t i = index_t(arch::block_index().x) * k_reduce_threads + arch::thread_rank(); i < n;
         i += step) {
      const index_t t = i % s.tokens;
      const index_t bh = i / s.tokens;
      const index_t h = bh % heads;
      const index_t b = bh / heads;
      const bool counted =
          s.counted == nullptr ||
          arch::load_global(s.counted + b * s.counted_stride[0] + t * s.counted_stride[1]) != 0;
      arch::store_global(
          s.drouter + b * s.drouter_stride[0] + h * s.drouter_stride[1] + t * s.drouter_stride[2],
          counted ? arch::load_global(grad + h) : 0.0f);
    }
  }
};

// ---- Launch sequences (the nvcc launcher and the emulated tests share them) ----
//
// `launch` is called as launch(kernel_object, grid, block, smem_bytes, params): balance.cuh
// passes arch::launch on the caller's stream (checked), the tests arch::emulated_launch.

namespace detail {

inline layer_slice slice_of(const layer_input<float>& in, int layer) {
  layer_slice s{};
  s.router = in.router.data;
  for (int d = 0; d < 3; ++d) s.router_stride[d] = in.router.stride[d];
  s.counted = in.counted.data;  // null when not given: every token counts
  s.counted_stride[0] = in.counted.stride[0];
  s.counted_stride[1] = in.counted.stride[1];
  s.batch = in.router.shape[0];
  s.tokens = in.router.shape[2];
  s.layer = layer;
  return s;
}

}  // namespace detail

/// Enqueues accumulate_kernel over all layers (k_layers_per_launch per launch). Validates first.
template <class Launch>
void enqueue_accumulate(std::span<const layer_input<float>> inputs, const workspace& ws,
                        Launch&& launch) {
  check_inputs(inputs, ws);
  for (std::size_t first = 0; first < inputs.size(); first += k_layers_per_launch) {
    const int count =
        static_cast<int>(std::min<std::size_t>(k_layers_per_launch, inputs.size() - first));
    layers_params p{};
    p.ws = ws;
    for (int c = 0; c < count; ++c)
      p.slice[c] = detail::slice_of(inputs[first + c], static_cast<int>(first) + c);
    launch(accumulate_kernel{}, arch::index3(ws.heads, count), arch::index3(k_reduce_threads),
           accumulate_kernel::smem_bytes(), p);
  }
}

/// Enqueues evaluate_kernel (reads router_sum and token_count, writes everything else).
template <class Launch>
void enqueue_evaluate(const evaluate_options& options, const workspace& ws, Launch&& launch) {
  const evaluate_params p{ws, options};
  launch(evaluate_kernel{}, arch::index3(1), arch::index3(evaluate_kernel::k_threads),
         evaluate_kernel::smem_bytes(ws.heads), p);
}

/// Enqueues router_grad_kernel over all layers. Validates first.
template <class Launch>
void enqueue_router_grad(std::span<const layer_input<float>> inputs,
                         std::span<const tensor_view<float, 3>> drouter, const workspace& ws,
                         Launch&& launch) {
  check_inputs(inputs, ws);
  check_drouter(inputs, drouter);
  for (std::size_t first = 0; first < inputs.size(); first += k_layers_per_launch) {
    const int count =
        static_cast<int>(std::min<std::size_t>(k_layers_per_launch, inputs.size() - first));
    layers_params p{};
    p.ws = ws;
    index_t most = 0;
    for (int c = 0; c < count; ++c) {
      layer_slice& s = p.slice[c];
      s = detail::slice_of(inputs[first + c], static_cast<int>(first) + c);
      s.router = nullptr;
      s.drouter = drouter[first + c].data;
      for (int d = 0; d < 3; ++d) s.drouter_stride[d] = drouter[first + c].stride[d];
      most = std::max(most, s.batch * ws.heads * s.tokens);
    }
    const index_t blocks =
        std::clamp<index_t>((most + k_reduce_threads - 1) / k_reduce_threads, 1, k_max_grad_blocks);
    launch(router_grad_kernel{}, arch::index3(static_cast<unsigned>(blocks), count),
           arch::index3(k_reduce_threads), std::size_t{0}, p);
  }
}

// ---- Reading results (from a host copy of the workspace) ----

/// The sums as balance::importance_sums (host_copy: a workspace over host memory).
inline importance_sums read_sums(const workspace& host_copy) {
  importance_sums s;
  s.layers = host_copy.layers;
  s.heads = host_copy.heads;
  const std::size_t lh = std::size_t(s.layers) * s.heads;
  s.router_sum.assign(host_copy.router_sum, host_copy.router_sum + lh);
  s.token_count.assign(host_copy.token_count, host_copy.token_count + s.layers);
  return s;
}

/// The evaluate step's results as balance::report, as importance_cv2::evaluate returns them.
inline report read_report(const workspace& host_copy) {
  report rep;
  const int heads = host_copy.heads;
  rep.layers.resize(static_cast<std::size_t>(host_copy.layers));
  for (int l = 0; l < host_copy.layers; ++l) {
    layer_report& lr = rep.layers[static_cast<std::size_t>(l)];
    const std::size_t row = std::size_t(l) * heads;
    const double* stats = host_copy.layer_stats + std::size_t(l) * k_stat_count;
    lr.importance.assign(host_copy.importance + row, host_copy.importance + row + heads);
    for (int h = 0; h < heads; ++h)
      if (host_copy.shared[row + h] != 0) lr.shared.push_back(h);
    lr.cv = stats[stat_cv];
    lr.balanced_cv = stats[stat_balanced_cv];
    lr.loss = stats[stat_loss];
    lr.effective_heads = stats[stat_effective_heads];
    lr.dormant_fraction = stats[stat_dormant_fraction];
    lr.tokens = host_copy.token_count[l];
  }
  rep.loss = host_copy.totals[total_loss];
  rep.mean_cv = host_copy.totals[total_mean_cv];
  return rep;
}

/// Checks that host sums fit the workspace before they are loaded into it.
inline void check_sums(const importance_sums& sums, const workspace& ws) {
  sinkmoe::detail::require(sums.layers == ws.layers && sums.heads == ws.heads,
                           "importance_sums: ", sums.layers, " layers x ", sums.heads,
                           " heads, the balancer was built for ", ws.layers, " x ", ws.heads);
  sinkmoe::detail::require(
      sums.router_sum.size() == std::size_t(ws.layers) * std::size_t(ws.heads) &&
          sums.token_count.size() == std::size_t(ws.layers),
      "importance_sums: router_sum holds ", sums.router_sum.size(), " values and token_count ",
      sums.token_count.size(), ", expected ", ws.layers * ws.heads, " and ", ws.layers);
  for (double count : sums.token_count)
    sinkmoe::detail::require(count >= 0.0 && std::isfinite(count),
                             "importance_sums.token_count holds ", count,
                             ": counts must be finite and >= 0");
}

}  // namespace sinkmoe::balance::gpu
