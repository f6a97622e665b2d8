#pragma once
// Head balancing over many processes (docs/distributed.md): the statistics of the loss reduced
// across the ranks that hold slices of the tokens (data parallel), of the heads (tensor parallel,
// GQA groups whole) and of the layers (pipeline parallel), so that every rank evaluates the loss
// the paper defines, over the global batch, and feeds its backward the gradient of that loss with
// respect to its own router values.
//
//   balance::rank_layout layout{.layers = 2, .heads = 4,            // what this rank holds
//                               .model_heads = 8, .first_head = 4,  // tensor parallel
//                               .ranks = 4, .gradient_average = 2}; // 2 x 2 ranks, DDP mean
//   balance::distributed_cv2 bal(reg, layout, balance::mpi_reducer{MPI_COMM_WORLD});
//   balance::report rep = bal.forward_backward(exec::host{}, inputs, drouter);  // every rank
//
// One step is one sum all-reduce of one buffer of doubles: [error flag | router sums of the
// model's layers x heads | counted tokens per layer], each rank writing its own slice and zeros
// elsewhere (so the sum is also the all-gather of tensor- and pipeline-parallel slices). A token
// count comes from the ranks that hold head 0 of the layer, so the tensor-parallel ranks that see
// the same tokens count them once. The reducer is any type with all_reduce_sum(std::span<double>)
// (sum in place, on every rank): mpi_reducer (balance/mpi.hpp), a callback for other engines
// (torch.distributed, a custom transport), local_reducer for one process. The NCCL counterpart
// for device_balancer is sinkmoe/cuda/balance/nccl.cuh.
//
// Errors never hang: the constructor checks with two small collectives that every rank's own
// layout and options are valid, that the ranks agree on the model's layers and heads, that they
// tile the layer x head grid evenly (every head of every layer held by the same number of ranks)
// and, when layout.ranks is set, the number of ranks; a step reduces an error flag with the sums.
// A rank that finds an error still joins every collective, and every rank throws sinkmoe::error
// after them.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <sinkmoe/balance/balance.hpp>
#include <sinkmoe/core/error.hpp>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace sinkmoe::balance {

/// A sum all-reduce across the ranks that share the statistics: on return, every rank holds the
/// element-wise sum of every rank's `values` (same size on every rank), in place.
template <class R>
concept sum_reducer = requires(R& r, std::span<double> values) {
  r.all_reduce_sum(values);
};

/// One process: the sum over one rank is the rank's own values.
struct local_reducer {
  void all_reduce_sum(std::span<double>) const {}
};

/// Any engine: `reduce` sums the span in place across ranks (e.g. through torch.distributed, a
/// parameter server, a custom transport). An exception it throws becomes a sinkmoe::error.
struct callback_reducer {
  std::function<void(std::span<double>)> reduce;
  void all_reduce_sum(std::span<double> values) const { reduce(values); }
};

/// Where this rank's router values sit in the model, and how its optimiser combines gradients.
/// Data parallel alone: layers and heads, the rest default.
struct rank_layout {
  int layers = 0;        ///< layers this rank holds (its inputs)
  int heads = 0;         ///< heads per layer this rank holds
  int model_layers = 0;  ///< layers of the whole model (pipeline parallel); 0: layers
  int first_layer = 0;   ///< model index of this rank's first layer
  int model_heads = 0;   ///< heads per layer of the whole model (tensor parallel); 0: heads
  int first_head = 0;    ///< model index of this rank's first head (GQA: a group's heads together)
  int ranks = 0;         ///< ranks the reducer spans, checked when > 0
  /// Ranks over which the optimiser averages gradients (DDP's mean over data-parallel replicas):
  /// dL/dG is multiplied by it, so that after the average the update is the gradient of the
  /// global loss. 1 when gradients are summed over ranks (or not reduced at all).
  int gradient_average = 1;

  [[nodiscard]] int total_layers() const { return model_layers > 0 ? model_layers : layers; }
  [[nodiscard]] int total_heads() const { return model_heads > 0 ? model_heads : heads; }
};

/// importance_cv2 over the ranks of a reducer (header comment): the global loss and metrics on
/// every rank, and each rank's dL/dG for its own layers and heads.
template <sum_reducer Reducer>
class distributed_cv2 {
 public:
  /// Validates the options and the layout and checks with the other ranks (two small
  /// collectives, which every rank must call) that they describe one model. Throws
  /// sinkmoe::error on every rank when any of that fails anywhere.
  distributed_cv2(importance_cv2 reg, rank_layout layout, Reducer reducer)
      : reg_(std::move(reg)), layout_(layout), reducer_(std::move(reducer)) {
    agree_on_layout();
  }

  /// The sums of every rank's accumulate(inputs) on the model's layer x head grid: this rank's
  /// inputs, reduced with the others'. Collective.
  template <class F>
  importance_sums reduce(const exec::host& ex, std::span<const layer_input<F>> inputs) {
    return reduce_with_check(ex, inputs, std::span<const tensor_view<F, 3>>{}, false);
  }

  /// The global loss and metrics, identical on every rank. Collective.
  template <class F>
  report forward(const exec::host& ex, std::span<const layer_input<F>> inputs) {
    return reg_.evaluate(reduce(ex, inputs));
  }

  /// forward, and drouter[l] = dL/dG of this rank's layer l (the gradient of the global loss
  /// with respect to this rank's router values, times layout.gradient_average). Collective.
  template <class F>
  report forward_backward(const exec::host& ex, std::span<const layer_input<F>> inputs,
                          std::span<const tensor_view<F, 3>> drouter) {
    const importance_sums sums = reduce_with_check(ex, inputs, drouter, true);
    report rep = reg_.evaluate(sums);
    std::vector<std::vector<double>> token_grad(static_cast<std::size_t>(layout_.layers));
    for (int l = 0; l < layout_.layers; ++l) {
      const layer_report& lr = rep.layers[static_cast<std::size_t>(layout_.first_layer + l)];
      const std::vector<double> model_grad =
          formulas::token_grad(reg_.importance_grad(lr), lr.tokens);
      std::vector<double>& mine = token_grad[static_cast<std::size_t>(l)];
      mine.resize(static_cast<std::size_t>(layout_.heads));
      for (int h = 0; h < layout_.heads; ++h)
        mine[static_cast<std::size_t>(h)] =
            layout_.gradient_average * model_grad[static_cast<std::size_t>(layout_.first_head + h)];
    }
    formulas::write_router_grad(ex, inputs, drouter,
                                std::span<const std::vector<double>>(token_grad));
    return rep;
  }

  /// The range overloads (F deduced), as importance_cv2's.
  template <std::ranges::range Inputs>
  report forward(const exec::host& ex, Inputs&& inputs) {
    const auto in = validation::as_inputs(inputs);
    return forward<validation::input_scalar<decltype(in)>>(ex, in);
  }
  template <std::ranges::range Inputs, std::ranges::range Drouter>
  report forward_backward(const exec::host& ex, Inputs&& inputs, Drouter&& drouter) {
    const auto in = validation::as_inputs(inputs);
    using F = validation::input_scalar<decltype(in)>;
    return forward_backward<F>(ex, in, validation::as_drouter<F>(drouter));
  }

  [[nodiscard]] const rank_layout& layout() const { return layout_; }
  [[nodiscard]] const importance_cv2& regulariser() const { return reg_; }
  /// Ranks the reducer spans (measured by the constructor's collective).
  [[nodiscard]] int ranks() const { return ranks_; }

 private:
  void check_layout_locally() const {
    const rank_layout& a = layout_;
    detail::require(a.layers >= 1 && a.heads >= 1, "rank_layout: ", a.layers, " layers x ", a.heads,
                    " heads on this rank; needs at least one of each");
    detail::require(a.first_layer >= 0 && a.first_layer + a.layers <= a.total_layers(),
                    "rank_layout: layers [", a.first_layer, ", ", a.first_layer + a.layers,
                    ") outside the model's ", a.total_layers(), " layers");
    detail::require(a.first_head >= 0 && a.first_head + a.heads <= a.total_heads(),
                    "rank_layout: heads [", a.first_head, ", ", a.first_head + a.heads,
                    ") outside the model's ", a.total_heads(), " heads");
    detail::require(a.ranks >= 0, "rank_layout.ranks = ", a.ranks, ": must be >= 0 (0: unchecked)");
    detail::require(a.gradient_average >= 1, "rank_layout.gradient_average = ", a.gradient_average,
                    ": must be >= 1");
    // Every option of the regulariser for the model's grid (evaluate's checks), so that a bad
    // option fails at construction and not in the first step.
    importance_sums empty;
    empty.layers = a.total_layers();
    empty.heads = a.total_heads();
    empty.router_sum.assign(std::size_t(empty.layers) * std::size_t(empty.heads), 0.0);
    empty.token_count.assign(std::size_t(empty.layers), 0.0);
    (void)reg_.evaluate(empty);
  }

  void all_reduce(std::span<double> values) {
    try {
      reducer_.all_reduce_sum(values);
    } catch (const std::exception& e) {
      throw error(std::string("balance reducer: the all-reduce failed: ") + e.what());
    }
  }

  /// After a collective whose slot 0 summed one flag per failing rank: rethrows this rank's own
  /// error, or throws on the others when any rank failed (so that every rank leaves together).
  void throw_if_any_failed(double failed_ranks, const std::exception_ptr& mine,
                           const char* what) const {
    if (mine) std::rethrow_exception(mine);
    detail::require(failed_ranks == 0.0, "balance: ", failed_ranks, " of the ", ranks_,
                    " ranks reported an error in their ", what, " (see their messages)");
  }

  // Two collectives, which every rank joins whatever it found (so none is left waiting):
  //  1. [failed | 1 | L | L^2 | H | H^2]: a rank whose own layout or options are invalid says so;
  //     the rank count; the ranks agree on the model's L and H iff ranks * sum q^2 == (sum q)^2
  //     (exact in doubles for these integers);
  //  2. [failed | coverage of the L x H grid]: a rank whose rank_layout.ranks is not the count
  //     says so; how many ranks hold each (layer, head), which must be the same everywhere.
  void agree_on_layout() {
    const rank_layout& a = layout_;
    std::exception_ptr mine;
    try {
      check_layout_locally();
    } catch (const std::exception&) {
      mine = std::current_exception();
    }
    const double model_layers = mine ? 0.0 : a.total_layers();
    const double model_heads = mine ? 0.0 : a.total_heads();
    std::vector<double> agreement = {mine ? 1.0 : 0.0, 1.0,
                                     model_layers,     model_layers * model_layers,
                                     model_heads,      model_heads * model_heads};
    all_reduce(agreement);
    const double ranks = agreement[1];
    ranks_ = static_cast<int>(ranks);
    throw_if_any_failed(agreement[0], mine, "rank_layout or options");
    const auto agreed = [&](double sum, double sum_sq) { return ranks * sum_sq == sum * sum; };
    detail::require(agreed(agreement[2], agreement[3]) && agreed(agreement[4], agreement[5]),
                    "rank_layout: the ", ranks_,
                    " ranks disagree on the model's layers or heads "
                    "(this rank: ",
                    a.total_layers(), " layers x ", a.total_heads(),
                    " heads; mean over ranks: ", agreement[2] / ranks, " layers x ",
                    agreement[4] / ranks, " heads)");

    std::vector<double> coverage(1 + std::size_t(a.total_layers()) * std::size_t(a.total_heads()),
                                 0.0);
    try {
      detail::require(a.ranks == 0 || a.ranks == ranks_, "rank_layout.ranks = ", a.ranks,
                      ", but the reducer spans ", ranks_, " ranks");
    } catch (const std::exception&) {
      mine = std::current_exception();
      coverage[0] = 1.0;
    }
    for (int l = 0; l < a.layers; ++l)
      for (int h = 0; h < a.heads; ++h)
        coverage[1 + grid_index(a.first_layer + l, a.first_head + h)] = 1.0;
    all_reduce(coverage);
    throw_if_any_failed(coverage[0], mine, "rank_layout.ranks");
    const double replicas = coverage[1];
    for (int l = 0; l < a.total_layers(); ++l)
      for (int h = 0; h < a.total_heads(); ++h) {
        const double held = coverage[1 + grid_index(l, h)];
        detail::require(held == replicas && held >= 1.0, "rank_layout: layer ", l, " head ", h,
                        " is held by ", held, " ranks and layer 0 head 0 by ", replicas,
                        ": the ranks must tile every layer's heads, each tile the same number "
                        "of times (the data-parallel replicas)");
      }
  }

  [[nodiscard]] std::size_t grid_index(int layer, int head) const {
    return std::size_t(layer) * std::size_t(layout_.total_heads()) + std::size_t(head);
  }

  template <class F>
  importance_sums reduce_with_check(const exec::host& ex, std::span<const layer_input<F>> inputs,
                                    std::span<const tensor_view<F, 3>> drouter, bool with_grad) {
    const rank_layout& a = layout_;
    const int model_layers = a.total_layers(), model_heads = a.total_heads();
    // [error flag | router sums, model layers x heads | token counts, model layers]
    std::vector<double> buffer(1 + std::size_t(model_layers) * std::size_t(model_heads + 1), 0.0);
    double* const router_sum = buffer.data() + 1;
    double* const token_count = router_sum + std::size_t(model_layers) * std::size_t(model_heads);
    std::exception_ptr local_error;
    try {
      const int heads = validation::check_layer_inputs(ex, inputs);
      detail::require(static_cast<int>(inputs.size()) == a.layers && heads == a.heads,
                      "balance inputs: ", inputs.size(), " layers x ", heads,
                      " heads, rank_layout says this rank holds ", a.layers, " x ", a.heads);
      if (with_grad) validation::check_drouter(inputs, drouter);
      const importance_sums local = accumulate(ex, inputs);
      for (int l = 0; l < a.layers; ++l) {
        for (int h = 0; h < a.heads; ++h)
          router_sum[grid_index(a.first_layer + l, a.first_head + h)] =
              local.router_sum[std::size_t(l) * std::size_t(a.heads) + std::size_t(h)];
        if (a.first_head == 0) token_count[a.first_layer + l] = local.token_count[std::size_t(l)];
      }
    } catch (const std::exception&) {
      local_error = std::current_exception();
      std::fill(buffer.begin(), buffer.end(), 0.0);
      buffer[0] = 1.0;
    }
    all_reduce(buffer);
    throw_if_any_failed(buffer[0], local_error, "inputs");
    importance_sums sums;
    sums.layers = model_layers;
    sums.heads = model_heads;
    sums.router_sum.assign(router_sum, token_count);
    sums.token_count.assign(token_count, token_count + model_layers);
    return sums;
  }

  importance_cv2 reg_;
  rank_layout layout_;
  Reducer reducer_;
  int ranks_ = 1;
};

}  // namespace sinkmoe::balance
