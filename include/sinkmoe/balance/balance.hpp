#pragma once
// Head load balancing (docs/method.md sections 3-5): per layer, head importance = mean router value
// over counted tokens; loss = lambda * sum_l n_l CV_l^2 over the balanced heads R_l (all heads
// minus the m shared ones); and its gradient dL/dG to feed each layer's backward.
//
// Three steps, so data-parallel callers can all-reduce in between:
//   accumulate()  -> importance_sums (per layer and head: sum of G, and counted tokens)
//   evaluate()    -> report (importance, CV, loss, head metrics, shared heads)
//   router_grad() -> dL/dG [B, H, Tq] per layer
// importance_cv2::forward_backward() runs all three on one process. head_metrics() reads the
// collapse metrics from the same sums without a regulariser (monitoring, any thresholds).
// Every entry point taking layers takes any contiguous range of them (std::vector, std::array, C
// array, std::span), with F deduced.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <numeric>
#include <ranges>
#include <sinkmoe/core/error.hpp>
#include <sinkmoe/core/numeric.hpp>
#include <sinkmoe/core/tensor_view.hpp>
#include <sinkmoe/exec.hpp>
#include <sinkmoe/host/parallel.hpp>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

namespace sinkmoe::balance {

/// One layer's router values and which query rows count (see attention::counted_tokens).
template <class F>
struct layer_input {
  using scalar = F;
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

/// Collapse metrics of one layer (head_metrics()), over all its heads. A layer with no counted
/// token has importance 0: CV 0, effective heads 0, every head dormant under a positive threshold.
struct layer_head_metrics {
  std::vector<double> importance;        ///< mean G per head over counted tokens
  double cv = 0;                         ///< population std / mean of importance
  double sample_cv = 0;                  ///< sample std (n - 1) / mean of importance
  double effective_heads = 0;            ///< (sum Imp)^2 / sum Imp^2; 0 when all are 0
  std::vector<double> dormant_fraction;  ///< per threshold: share of heads with importance below
  double tokens = 0;                     ///< counted tokens
};

/// head_metrics() over all layers; means over all layers, those without counted tokens included
/// (as report::mean_cv), so check layers[l].tokens when some may be empty.
struct head_metrics_report {
  std::vector<double> dormant_thresholds;  ///< as given, in the given order
  std::vector<layer_head_metrics> layers;
  double mean_cv = 0;                         ///< equals report::mean_cv (population std)
  double mean_sample_cv = 0;                  ///< equals report::mean_cv with sample_std
  double mean_effective_heads = 0;            ///< mean of layers[l].effective_heads
  std::vector<double> mean_dormant_fraction;  ///< per threshold, mean over layers
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

/// Checks sums that may have been all-reduced by the caller: evaluate() and head_metrics() read
/// router_sum[l * heads + h] and token_count[l] for every layer and head.
inline void check_sums(const importance_sums& sums) {
  const int heads = sums.heads;
  sinkmoe::detail::require(sums.layers >= 1 && heads >= 1, "importance_sums: ", sums.layers,
                           " layers x ", heads, " heads; needs at least one of each");
  sinkmoe::detail::require(
      sums.router_sum.size() == std::size_t(sums.layers) * std::size_t(heads) &&
          sums.token_count.size() == std::size_t(sums.layers),
      "importance_sums: router_sum holds ", sums.router_sum.size(), " values and token_count ",
      sums.token_count.size(), ", expected ", sums.layers * heads, " and ", sums.layers);
  for (double count : sums.token_count)
    sinkmoe::detail::require(count >= 0.0 && math::is_finite(count),
                             "importance_sums.token_count holds ", count,
                             ": counts must be finite and >= 0");
}

/// Checks head_metrics() thresholds: a NaN would silently count no head as dormant.
inline void check_dormant_thresholds(std::span<const double> thresholds) {
  for (std::size_t i = 0; i < thresholds.size(); ++i)
    sinkmoe::detail::require(math::is_finite(thresholds[i]), "head_metrics: dormant_thresholds[", i,
                             "] = ", thresholds[i], ": must be finite");
}

/// True for layer_input<F>, the element type the range overloads accept.
template <class T>
inline constexpr bool is_layer_input = false;
template <class F>
inline constexpr bool is_layer_input<layer_input<F>> = true;

/// The span<const layer_input<F>> a range overload forwards to. A range of anything else stops
/// at the static_assert (and nowhere else: the fallback keeps the rest of the call compiling).
template <class R>
auto as_inputs(R&& inputs) {
  using value = std::ranges::range_value_t<R>;
  static_assert(std::ranges::contiguous_range<R> && std::ranges::sized_range<R>,
                "sinkmoe::balance: `inputs` must be a contiguous range (std::vector, std::array, "
                "C array, std::span) of balance::layer_input<F>");
  static_assert(is_layer_input<value>,
                "sinkmoe::balance: `inputs` must hold balance::layer_input<F> (F = float or "
                "double), one per layer");
  if constexpr (std::ranges::contiguous_range<R> && std::ranges::sized_range<R> &&
                is_layer_input<value>)
    return std::span<const value>(std::ranges::data(inputs), std::ranges::size(inputs));
  else
    return std::span<const layer_input<float>>{};
}

/// The span<const tensor_view<F, 3>> for drouter, F being the inputs' scalar.
template <class F, class R>
std::span<const tensor_view<F, 3>> as_drouter(R&& drouter) {
  using value = std::ranges::range_value_t<R>;
  static_assert(std::ranges::contiguous_range<R> && std::ranges::sized_range<R>,
                "sinkmoe::balance: `drouter` must be a contiguous range (std::vector, "
                "std::array, C array, std::span) of tensor_view<F, 3>");
  static_assert(std::is_same_v<value, tensor_view<F, 3>>,
                "sinkmoe::balance: `drouter` must hold tensor_view<F, 3> (writable, [B, H, Tq]) "
                "with the F of the inputs' layer_input<F>");
  if constexpr (std::ranges::contiguous_range<R> && std::ranges::sized_range<R> &&
                std::is_same_v<value, tensor_view<F, 3>>)
    return {std::ranges::data(drouter), std::ranges::size(drouter)};
  else
    return {};
}

/// Checks drouter against the inputs: one writable [B, H, Tq] view per layer, of the router's
/// shape.
template <class F>
void check_drouter(std::span<const layer_input<F>> inputs,
                   std::span<const tensor_view<F, 3>> drouter) {
  sinkmoe::detail::require(drouter.size() == inputs.size(), "balance drouter: ", drouter.size(),
                           " layers given, ", inputs.size(), " expected");
  for (std::size_t l = 0; l < inputs.size(); ++l)
    sinkmoe::detail::require(!drouter[l].empty() && drouter[l].shape == inputs[l].router.shape,
                             "balance drouter[", l, "]: shape ", drouter[l].shape, ", expected ",
                             inputs[l].router.shape);
}

/// F of the span<const layer_input<F>> that as_inputs returns.
template <class S>
using input_scalar = typename S::value_type::scalar;

}  // namespace validation

namespace formulas {

/// std / mean (population or sample std); 0 when the mean is not positive or n < 2.
inline double coefficient_of_variation(std::span<const double> x, bool sample_std) {
  const double n = double(x.size());
  if (n < 2) return 0.0;
  const double mean = std::accumulate(x.begin(), x.end(), 0.0) / n;
  if (mean <= 0) return 0.0;
  double ss = 0;
  for (double v : x) ss += (v - mean) * (v - mean);
  return std::sqrt(ss / (sample_std ? n - 1 : n)) / mean;
}

/// Layer l's metrics from checked sums: the one place evaluate() and head_metrics() get them.
inline layer_head_metrics of_layer(const importance_sums& sums, int l,
                                   std::span<const double> dormant_thresholds) {
  const int heads = sums.heads;
  layer_head_metrics m;
  m.tokens = sums.token_count[static_cast<std::size_t>(l)];
  m.importance.resize(static_cast<std::size_t>(heads));
  for (int h = 0; h < heads; ++h)
    m.importance[h] =
        m.tokens > 0 ? sums.router_sum[static_cast<std::size_t>(l * heads + h)] / m.tokens : 0.0;
  m.cv = coefficient_of_variation(m.importance, false);
  m.sample_cv = coefficient_of_variation(m.importance, true);
  const double sum = std::accumulate(m.importance.begin(), m.importance.end(), 0.0);
  const double sum_sq =
      std::inner_product(m.importance.begin(), m.importance.end(), m.importance.begin(), 0.0);
  m.effective_heads = sum_sq > 0 ? sum * sum / sum_sq : 0.0;
  for (double threshold : dormant_thresholds)
    m.dormant_fraction.push_back(double(std::count_if(m.importance.begin(), m.importance.end(),
                                                      [&](double x) { return x < threshold; })) /
                                 heads);
  return m;
}

}  // namespace formulas

namespace formulas {

/// dL/dG on one counted token of each head: dL/dImp[h] / tokens (Imp is a mean over the layer's
/// counted tokens), 0 for a layer without counted tokens.
inline std::vector<double> token_grad(std::vector<double> importance_grad, double tokens) {
  for (double& g : importance_grad) g = tokens > 0 ? g / tokens : 0.0;
  return importance_grad;
}

/// drouter[l](b, h, t) = token_grad[l][h] on counted tokens, 0 elsewhere, for checked inputs and
/// drouter (token_grad[l] holds one value per head of inputs[l]).
template <class F>
void write_router_grad(const exec::host& ex, std::span<const layer_input<F>> inputs,
                       std::span<const tensor_view<F, 3>> drouter,
                       std::span<const std::vector<double>> token_grad) {
  for (std::size_t l = 0; l < inputs.size(); ++l) {
    const auto& in = inputs[l];
    const auto& out = drouter[l];
    const int heads = static_cast<int>(in.router.shape[1]);
    host::detail::parallel_for(ex.threads, in.router.shape[0] * heads, [&](std::int64_t i) {
      const index_t b = i / heads;
      const int h = static_cast<int>(i % heads);
      const F per_token = F(token_grad[l][static_cast<std::size_t>(h)]);
      for (index_t t = 0; t < in.router.shape[2]; ++t)
        out(b, h, t) = in.counted(b, t) != 0 ? per_token : F(0);
    });
  }
}

}  // namespace formulas

/// Importance, CV (population and sample), effective heads and dormant fractions per layer, from
/// the sums the loss uses (so from all-reduced sums too), for any list of dormant thresholds. No
/// regulariser needed: for monitoring and for thresholds evaluate() does not report.
inline head_metrics_report head_metrics(const importance_sums& sums,
                                        std::span<const double> dormant_thresholds) {
  validation::check_sums(sums);
  validation::check_dormant_thresholds(dormant_thresholds);
  head_metrics_report rep;
  rep.dormant_thresholds.assign(dormant_thresholds.begin(), dormant_thresholds.end());
  rep.mean_dormant_fraction.assign(dormant_thresholds.size(), 0.0);
  for (int l = 0; l < sums.layers; ++l) {
    layer_head_metrics& m =
        rep.layers.emplace_back(formulas::of_layer(sums, l, dormant_thresholds));
    rep.mean_cv += m.cv / sums.layers;  // the order evaluate() sums report::mean_cv in
    rep.mean_sample_cv += m.sample_cv / sums.layers;
    rep.mean_effective_heads += m.effective_heads / sums.layers;
    for (std::size_t i = 0; i < m.dormant_fraction.size(); ++i)
      rep.mean_dormant_fraction[i] += m.dormant_fraction[i] / sums.layers;
  }
  return rep;
}
/// head_metrics(sums, {0.1, 0.2}); default: the 0.1 of importance_cv2::dormant_threshold.
inline head_metrics_report head_metrics(const importance_sums& sums,
                                        std::initializer_list<double> dormant_thresholds = {0.1}) {
  return head_metrics(
      sums, std::span<const double>(dormant_thresholds.begin(), dormant_thresholds.size()));
}

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
/// accumulate(ex, inputs) for any contiguous range of layer_input<F> (F deduced: a span's
/// element type cannot be deduced from a std::vector).
template <std::ranges::range Inputs>
importance_sums accumulate(const exec::host& ex, Inputs&& inputs) {
  const auto in = validation::as_inputs(inputs);
  return accumulate<validation::input_scalar<decltype(in)>>(ex, in);
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
    validation::check_sums(sums);
    detail::require(math::is_finite(dormant_threshold),
                    "importance_cv2.dormant_threshold = ", dormant_threshold, ": must be finite");
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
    const double thresholds[] = {dormant_threshold};
    for (int l = 0; l < sums.layers; ++l) {
      layer_report& lr = rep.layers[static_cast<std::size_t>(l)];
      // The metrics through head_metrics()'s formulas, so the two never disagree.
      layer_head_metrics m = formulas::of_layer(sums, l, thresholds);
      lr.tokens = m.tokens;
      lr.importance = std::move(m.importance);
      lr.cv = sample_std ? m.sample_cv : m.cv;
      lr.effective_heads = m.effective_heads;
      lr.dormant_fraction = m.dormant_fraction[0];
      lr.shared = select_shared(l, lr.importance);
      std::vector<double> balanced;
      for (int h = 0; h < heads; ++h)
        if (!std::binary_search(lr.shared.begin(), lr.shared.end(), h))
          balanced.push_back(lr.importance[h]);
      lr.balanced_cv = coefficient_of_variation(balanced);
      lr.loss = double(lambda) * double(balanced.size()) * lr.balanced_cv * lr.balanced_cv;
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
    validation::check_drouter(inputs, drouter);
    std::vector<std::vector<double>> token_grad(rep.layers.size());
    for (std::size_t l = 0; l < rep.layers.size(); ++l)
      token_grad[l] = formulas::token_grad(importance_grad(rep.layers[l]), rep.layers[l].tokens);
    formulas::write_router_grad(ex, inputs, drouter, token_grad);
  }
  /// router_grad for any contiguous ranges of layer_input<F> and tensor_view<F, 3>.
  template <std::ranges::range Inputs, std::ranges::range Drouter>
  void router_grad(const exec::host& ex, const report& rep, Inputs&& inputs,
                   Drouter&& drouter) const {
    const auto in = validation::as_inputs(inputs);
    using F = validation::input_scalar<decltype(in)>;
    router_grad<F>(ex, rep, in, validation::as_drouter<F>(drouter));
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
  /// forward_backward for any contiguous ranges of layer_input<F> and tensor_view<F, 3>.
  template <std::ranges::range Inputs, std::ranges::range Drouter>
  report forward_backward(const exec::host& ex, Inputs&& inputs, Drouter&& drouter) const {
    const auto in = validation::as_inputs(inputs);
    using F = validation::input_scalar<decltype(in)>;
    return forward_backward<F>(ex, in, validation::as_drouter<F>(drouter));
  }
  /// forward for any contiguous range of layer_input<F>.
  template <std::ranges::range Inputs>
  report forward(const exec::host& ex, Inputs&& inputs) const {
    const auto in = validation::as_inputs(inputs);
    return forward<validation::input_scalar<decltype(in)>>(ex, in);
  }

  /// std / mean (population or sample std); 0 when the mean is not positive or n < 2.
  [[nodiscard]] double coefficient_of_variation(const std::vector<double>& x) const {
    return formulas::coefficient_of_variation(x, sample_std);
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
/// first_token_sink_fraction for any contiguous range of layer_input<F>.
template <std::ranges::range Inputs>
std::vector<double> first_token_sink_fraction(Inputs&& first_key_mass, double threshold = 0.3) {
  const auto in = validation::as_inputs(first_key_mass);
  return first_token_sink_fraction<validation::input_scalar<decltype(in)>>(in, threshold);
}

}  // namespace sinkmoe::balance
