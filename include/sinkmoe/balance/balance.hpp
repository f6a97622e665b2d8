#pragma once
// Head load balancing (docs/method.md sections 3-5): per layer, head importance = mean router value
// over counted tokens; loss = lambda * sum_l n_l CV_l^2 over the balanced heads R_l (all heads
// minus the m shared ones); and its gradient dL/dG to feed each layer's backward.
//
// Three steps, so data-parallel callers can all-reduce in between:
//   accumulate()  -> importance_sums (per layer and head: sum of G, and counted tokens)
//   evaluate()    -> report (importance, CV, loss, head metrics, shared heads)
//   router_grad() -> dL/dG [B, H, Tq] per layer
// importance_cv2::forward_backward() runs all three on one process.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <sinkmoe/core/error.hpp>
#include <sinkmoe/core/numeric.hpp>
#include <sinkmoe/core/tensor_view.hpp>
#include <sinkmoe/exec.hpp>
#include <sinkmoe/host/parallel.hpp>
#include <span>
#include <vector>

namespace sinkmoe::balance {

/// One layer's router values and which query rows count (see attention::counted_tokens).
template <class F>
struct layer_input {
  tensor_view<const F, 3> router;              ///< [B, H, Tq]
  tensor_view<const std::uint8_t, 2> counted;  ///< [B, Tq], nonzero = counted
};

/// How the shared heads (left out of the loss) are chosen.
enum class shared_selection : std::uint8_t {
  top_m_each_step,  ///< the shared_heads most important heads of each layer, chosen every call
  fixed,            ///< the head ids in fixed_shared[layer], chosen once by the caller
};

/// Per-layer, per-head sums of router values and the per-layer counted-token count. Plain
/// doubles, so they can be all-reduced across data-parallel ranks before evaluate().
struct importance_sums {
  int layers = 0;
  int heads = 0;
  std::vector<double> router_sum;   ///< [layers][heads]
  std::vector<double> token_count;  ///< [layers]
};

/// Balancing and collapse metrics of one layer.
struct layer_report {
  std::vector<double> importance;  ///< mean G per head
  std::vector<int> shared;         ///< heads left out of the loss (sorted ids)
  double cv = 0;                ///< std / mean of importance over all heads (the paper's imbalance)
  double balanced_cv = 0;       ///< std / mean over the balanced heads (what the loss uses)
  double loss = 0;              ///< lambda * n * balanced_cv^2
  double effective_heads = 0;   ///< (sum Imp)^2 / sum Imp^2
  double dormant_fraction = 0;  ///< share of heads with importance < dormant_threshold
  double tokens = 0;            ///< counted tokens
};

/// Result of a balancing step over all layers.
struct report {
  double loss = 0;     ///< sum over layers
  double mean_cv = 0;  ///< mean over layers of layer_report::cv
  std::vector<layer_report> layers;
};

namespace validation {

/// Checks the layer inputs of a balancing call; returns the head count shared by all layers.
template <class F>
int check_layer_inputs(const exec::host& ex, std::span<const layer_input<F>> inputs) {
  sinkmoe::detail::require(ex.threads >= 0, "exec::host.threads = ", ex.threads, ": must be >= 0");
  sinkmoe::detail::require(!inputs.empty(), "balance inputs: no layers given");
  const index_t heads = inputs[0].router.empty() ? 0 : inputs[0].router.shape[1];
  for (std::size_t l = 0; l < inputs.size(); ++l) {
    const auto& in = inputs[l];
    sinkmoe::detail::require(!in.router.empty(), "balance inputs[", l, "].router is empty");
    sinkmoe::detail::require(in.router.shape[1] == heads && heads >= 1, "balance inputs[", l,
                             "].router: ", in.router.shape[1], " heads, layer 0 has ", heads);
    sinkmoe::detail::require(!in.counted.empty(), "balance inputs[", l, "].counted is empty");
    sinkmoe::detail::require(
        in.counted.shape[0] == in.router.shape[0] && in.counted.shape[1] == in.router.shape[2],
        "balance inputs[", l, "].counted: shape ", in.counted.shape,
        " does not match router [B, H, Tq] = ", in.router.shape);
  }
  return static_cast<int>(heads);
}

}  // namespace validation

/// Sums router values over counted tokens, per layer and head, in a fixed order (deterministic).
template <class F>
importance_sums accumulate(const exec::host& ex, std::span<const layer_input<F>> inputs) {
  importance_sums sums;
  sums.layers = static_cast<int>(inputs.size());
  sums.heads = validation::check_layer_inputs(ex, inputs);
  const int heads = sums.heads;
  sums.router_sum.assign(static_cast<std::size_t>(sums.layers * heads), 0.0);
  sums.token_count.assign(static_cast<std::size_t>(sums.layers), 0.0);
  host::detail::parallel_for(ex.threads, std::int64_t(sums.layers) * heads, [&](std::int64_t i) {
    const auto& in = inputs[static_cast<std::size_t>(i / heads)];
    const int h = static_cast<int>(i % heads);
    double total = 0, count = 0;
    for (index_t b = 0; b < in.router.shape[0]; ++b)
      for (index_t t = 0; t < in.router.shape[2]; ++t)
        if (in.counted(b, t) != 0) {
          total += static_cast<double>(in.router(b, h, t));
          count += 1;
        }
    sums.router_sum[static_cast<std::size_t>(i)] = total;
    if (h == 0) sums.token_count[static_cast<std::size_t>(i / heads)] = count;
  });
  return sums;
}

/// The importance-CV^2 regulariser (Shazeer et al. 2017's importance loss applied to heads).
struct importance_cv2 {
  double lambda = 0.0;   ///< loss weight
  int shared_heads = 0;  ///< m: heads per layer left out of the loss (fine-tuning)
  shared_selection selection = shared_selection::top_m_each_step;
  std::vector<std::vector<int>> fixed_shared{};  ///< per layer, with selection == fixed
  bool sample_std = false;         ///< CV with the sample std (n - 1) instead of the population std
  double dormant_threshold = 0.1;  ///< importance below this counts as a dormant head

  /// Importance, shared heads, CV, loss and head metrics from (possibly all-reduced) sums.
  [[nodiscard]] report evaluate(const importance_sums& sums) const {
    const int heads = sums.heads;
    detail::require(math::is_finite(lambda) && lambda >= 0.0, "importance_cv2.lambda = ", lambda,
                    ": must be finite and >= 0");
    detail::require(sums.layers >= 1 && heads >= 1, "importance_sums: ", sums.layers, " layers x ",
                    heads, " heads; needs at least one of each");
    detail::require(sums.router_sum.size() == std::size_t(sums.layers) * std::size_t(heads) &&
                        sums.token_count.size() == std::size_t(sums.layers),
                    "importance_sums: router_sum holds ", sums.router_sum.size(),
                    " values and token_count ", sums.token_count.size(), ", expected ",
                    sums.layers * heads, " and ", sums.layers);
    for (double count : sums.token_count)
      detail::require(count >= 0.0 && math::is_finite(count), "importance_sums.token_count holds ",
                      count, ": counts must be finite and >= 0");
    if (selection == shared_selection::top_m_each_step) {
      detail::require(shared_heads >= 0 && shared_heads < heads,
                      "importance_cv2.shared_heads = ", shared_heads,
                      ": must be in [0, heads) with heads = ", heads);
    } else {
      detail::require(static_cast<int>(fixed_shared.size()) == sums.layers,
                      "importance_cv2.fixed_shared: ", fixed_shared.size(), " layers given, ",
                      sums.layers, " expected");
    }
    report rep;
    rep.layers.resize(static_cast<std::size_t>(sums.layers));
    for (int l = 0; l < sums.layers; ++l) {
      layer_report& lr = rep.layers[static_cast<std::size_t>(l)];
      lr.tokens = sums.token_count[static_cast<std::size_t>(l)];
      lr.importance.resize(static_cast<std::size_t>(heads));
      for (int h = 0; h < heads; ++h)
        lr.importance[h] =
            lr.tokens > 0 ? sums.router_sum[static_cast<std::size_t>(l * heads + h)] / lr.tokens
                          : 0.0;
      lr.shared = select_shared(l, lr.importance);
      std::vector<double> balanced;
      for (int h = 0; h < heads; ++h)
        if (!std::binary_search(lr.shared.begin(), lr.shared.end(), h))
          balanced.push_back(lr.importance[h]);
      lr.cv = coefficient_of_variation(lr.importance);
      lr.balanced_cv = coefficient_of_variation(balanced);
      lr.loss = double(lambda) * double(balanced.size()) * lr.balanced_cv * lr.balanced_cv;
      const double sum = std::accumulate(lr.importance.begin(), lr.importance.end(), 0.0);
      const double sum_sq = std::inner_product(lr.importance.begin(), lr.importance.end(),
                                               lr.importance.begin(), 0.0);
      lr.effective_heads = sum_sq > 0 ? sum * sum / sum_sq : 0.0;
      lr.dormant_fraction =
          double(std::count_if(lr.importance.begin(), lr.importance.end(),
                               [&](double x) { return x < double(dormant_threshold); })) /
          heads;
      rep.loss += lr.loss;
      rep.mean_cv += lr.cv / sums.layers;
    }
    return rep;
  }

  /// dL/dImp[h] for one layer (0 for shared heads): the derivative of lambda n CV^2.
  [[nodiscard]] std::vector<double> importance_grad(const layer_report& lr) const {
    const int heads = static_cast<int>(lr.importance.size());
    std::vector<double> grad(static_cast<std::size_t>(heads), 0.0);
    std::vector<int> balanced;
    for (int h = 0; h < heads; ++h)
      if (!std::binary_search(lr.shared.begin(), lr.shared.end(), h)) balanced.push_back(h);
    const double n = double(balanced.size());
    double mean = 0;
    for (int h : balanced) mean += lr.importance[h] / n;
    if (lr.tokens <= 0 || mean <= 0 || n < 2) return grad;  // CV is 0 by definition there
    double ss = 0;
    for (int h : balanced) ss += (lr.importance[h] - mean) * (lr.importance[h] - mean);
    const double denom = sample_std ? n - 1 : n;
    const double var = ss / denom;
    // CV^2 = var / mean^2;  d var/dI_h = 2 (I_h - mean) / denom;  d mean/dI_h = 1 / n.
    for (int h : balanced) {
      const double dcv2 = 2 * (lr.importance[h] - mean) / denom / (mean * mean) -
                          2 * var / (mean * mean * mean) / n;
      grad[h] = double(lambda) * n * dcv2;
    }
    return grad;
  }

  /// Writes dL/dG for every layer: dL/dImp[h] / tokens on counted rows, 0 elsewhere.
  template <class F>
  void router_grad(const exec::host& ex, const report& rep, std::span<const layer_input<F>> inputs,
                   std::span<const tensor_view<F, 3>> drouter) const {
    const int heads = validation::check_layer_inputs(ex, inputs);
    detail::require(rep.layers.size() == inputs.size(), "balance report: ", rep.layers.size(),
                    " layers, inputs have ", inputs.size());
    for (std::size_t l = 0; l < rep.layers.size(); ++l)
      detail::require(rep.layers[l].importance.size() == std::size_t(heads),
                      "balance report.layers[", l, "]: ", rep.layers[l].importance.size(),
                      " heads, inputs have ", heads);
    detail::require(drouter.size() == inputs.size(), "balance drouter: ", drouter.size(),
                    " layers given, ", inputs.size(), " expected");
    for (std::size_t l = 0; l < inputs.size(); ++l)
      detail::require(!drouter[l].empty() && drouter[l].shape == inputs[l].router.shape,
                      "balance drouter[", l, "]: shape ", drouter[l].shape, ", expected ",
                      inputs[l].router.shape);
    for (std::size_t l = 0; l < inputs.size(); ++l) {
      const layer_report& lr = rep.layers[l];
      const std::vector<double> dimp = importance_grad(lr);
      const auto& in = inputs[l];
      const auto& out = drouter[l];
      const int heads = static_cast<int>(in.router.shape[1]);
      host::detail::parallel_for(ex.threads, in.router.shape[0] * heads, [&](std::int64_t i) {
        const index_t b = i / heads;
        const int h = static_cast<int>(i % heads);
        const F per_token = lr.tokens > 0 ? F(dimp[h] / lr.tokens) : F(0);
        for (index_t t = 0; t < in.router.shape[2]; ++t)
          out(b, h, t) = in.counted(b, t) != 0 ? per_token : F(0);
      });
    }
  }

  /// accumulate + evaluate + router_grad on one process; returns the loss and metrics.
  template <class F>
  report forward_backward(const exec::host& ex, std::span<const layer_input<F>> inputs,
                          std::span<const tensor_view<F, 3>> drouter) const {
    const importance_sums sums = accumulate(ex, inputs);
    report rep = evaluate(sums);
    router_grad(ex, rep, inputs, drouter);
    return rep;
  }
  /// accumulate + evaluate: the loss and metrics without a gradient.
  template <class F>
  report forward(const exec::host& ex, std::span<const layer_input<F>> inputs) const {
    return evaluate(accumulate(ex, inputs));
  }

  /// std / mean (population or sample std); 0 when the mean is not positive or n < 2.
  [[nodiscard]] double coefficient_of_variation(const std::vector<double>& x) const {
    const double n = double(x.size());
    if (n < 2) return 0.0;
    const double mean = std::accumulate(x.begin(), x.end(), 0.0) / n;
    if (mean <= 0) return 0.0;
    double ss = 0;
    for (double v : x) ss += (v - mean) * (v - mean);
    return std::sqrt(ss / (sample_std ? n - 1 : n)) / mean;
  }

 private:
  std::vector<int> select_shared(int layer, const std::vector<double>& importance) const {
    const int heads = static_cast<int>(importance.size());
    std::vector<int> ids;
    if (selection == shared_selection::fixed) {
      ids = fixed_shared[static_cast<std::size_t>(layer)];
      for (int h : ids)
        detail::require(h >= 0 && h < heads, "importance_cv2.fixed_shared[", layer, "] holds head ",
                        h, ", outside [0, ", heads, ")");
      std::sort(ids.begin(), ids.end());
      detail::require(std::adjacent_find(ids.begin(), ids.end()) == ids.end() &&
                          static_cast<int>(ids.size()) < heads,
                      "importance_cv2.fixed_shared[", layer,
                      "]: head ids must be distinct and leave at least one head balanced");
      return ids;
    }
    ids.resize(static_cast<std::size_t>(heads));
    std::iota(ids.begin(), ids.end(), 0);
    // Most important first; ties go to the lower head id, so the choice is deterministic.
    std::stable_sort(ids.begin(), ids.end(),
                     [&](int a, int b) { return importance[a] > importance[b]; });
    ids.resize(static_cast<std::size_t>(shared_heads));
    std::sort(ids.begin(), ids.end());
    return ids;
  }
};

/// Gu et al. (ICLR 2025) sink metric per layer: the share of heads whose mean attention on the
/// first key (forward_args::first_key_mass) over counted tokens exceeds `threshold` (0.3).
template <class F>
std::vector<double> first_token_sink_fraction(std::span<const layer_input<F>> first_key_mass,
                                              double threshold = 0.3) {
  const importance_sums sums = accumulate(exec::host{1}, first_key_mass);
  std::vector<double> fraction(static_cast<std::size_t>(sums.layers), 0.0);
  for (int l = 0; l < sums.layers; ++l) {
    const double tokens = sums.token_count[static_cast<std::size_t>(l)];
    int over = 0;
    for (int h = 0; h < sums.heads; ++h)
      if (tokens > 0 &&
          sums.router_sum[static_cast<std::size_t>(l * sums.heads + h)] / tokens > threshold)
        ++over;
    fraction[static_cast<std::size_t>(l)] = double(over) / sums.heads;
  }
  return fraction;
}

}  // namespace sinkmoe::balance
