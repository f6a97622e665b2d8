// The device balancing kernels (include/sinkmoe/cuda/balance_kernels.hpp) run through the host
// emulation of the primitive layer: the same validation, workspace layout, launch sequences and
// read-back as balance::device_balancer (sinkmoe/cuda/balance.cuh), with host memory in place of
// device memory and arch::emulated_launch in place of arch::launch. Tests only (Boost.Context);
// include before any other sinkmoe header that pulls in the primitive layer.
#pragma once

#include <sinkmoe/cuda/arch/emulation.hpp>
// The emulation header must come first: it selects the emulated primitive layer.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sinkmoe/balance/balance.hpp>
#include <sinkmoe/cuda/balance_kernels.hpp>
#include <span>
#include <vector>

namespace sinkmoe::testing {

/// device_balancer's counterpart over host memory (its methods, minus the stream).
class emulated_balancer {
 public:
  emulated_balancer(const balance::importance_cv2& reg, int layers, int heads)
      : options_(balance::gpu::make_evaluate_options(reg, layers, heads)) {
    storage_.assign(balance::gpu::workspace_bytes(layers, heads) / sizeof(double) + 1, 0.0);
    ws_ = balance::gpu::carve_workspace(storage_.data(), layers, heads);
    const std::vector<std::uint8_t> shared = balance::gpu::initial_shared_mask(reg, layers, heads);
    std::memcpy(ws_.shared, shared.data(), shared.size());
  }

  void accumulate(std::span<const balance::layer_input<float>> inputs) {
    balance::gpu::enqueue_accumulate(inputs, ws_, launcher_for(inputs, {}));
  }
  void evaluate() { balance::gpu::enqueue_evaluate(options_, ws_, launcher_for({}, {})); }
  void router_grad(std::span<const balance::layer_input<float>> inputs,
                   std::span<const tensor_view<float, 3>> drouter) {
    balance::gpu::enqueue_router_grad(inputs, drouter, ws_, launcher_for(inputs, drouter));
  }
  void forward_backward(std::span<const balance::layer_input<float>> inputs,
                        std::span<const tensor_view<float, 3>> drouter) {
    balance::gpu::check_inputs(inputs, ws_);
    balance::gpu::check_drouter(inputs, drouter);
    accumulate(inputs);
    evaluate();
    router_grad(inputs, drouter);
  }
  void load_sums(const balance::importance_sums& sums) {
    balance::gpu::check_sums(sums, ws_);
    std::memcpy(ws_.router_sum, sums.router_sum.data(), sums.router_sum.size() * sizeof(double));
    std::memcpy(ws_.token_count, sums.token_count.data(), sums.token_count.size() * sizeof(double));
  }

  [[nodiscard]] balance::report report() const { return balance::gpu::read_report(ws_); }
  [[nodiscard]] balance::importance_sums sums() const { return balance::gpu::read_sums(ws_); }
  [[nodiscard]] const balance::gpu::workspace& buffers() const { return ws_; }

  /// The workspace's bytes (for bitwise comparisons).
  [[nodiscard]] std::vector<unsigned char> bytes() const {
    const auto* p = reinterpret_cast<const unsigned char*>(storage_.data());
    return {p, p + balance::gpu::workspace_bytes(ws_.layers, ws_.heads)};
  }
  /// Fills every output array (all but `shared`, which may hold the fixed set) with NaN, so that
  /// a value a kernel failed to write shows up.
  void poison() {
    const std::size_t lh = std::size_t(ws_.layers) * ws_.heads;
    const double nan = std::numeric_limits<double>::quiet_NaN();
    std::fill(ws_.router_sum, ws_.router_sum + lh, nan);
    std::fill(ws_.token_count, ws_.token_count + ws_.layers, nan);
    std::fill(ws_.importance, ws_.importance + lh, nan);
    std::fill(ws_.layer_stats,
              ws_.layer_stats + std::size_t(ws_.layers) * balance::gpu::k_stat_count, nan);
    std::fill(ws_.totals, ws_.totals + balance::gpu::k_total_count, nan);
    std::fill(ws_.token_grad, ws_.token_grad + lh, std::numeric_limits<float>::quiet_NaN());
  }

 private:
  /// Launches with the workspace and the call's tensors as the global ranges.
  struct launcher {
    arch::emulator em;
    template <class Kernel, class Params>
    void operator()(Kernel kernel, arch::index3 grid, arch::index3 block, std::size_t smem,
                    const Params& params) const {
      em.launch(grid, block, smem, kernel, params);
    }
  };
  launcher launcher_for(std::span<const balance::layer_input<float>> inputs,
                        std::span<const tensor_view<float, 3>> drouter) const {
    launcher l;
    l.em.globals.push_back(
        arch::range_of_bytes("balance workspace", storage_.data(),
                             balance::gpu::workspace_bytes(ws_.layers, ws_.heads), true));
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      const std::string layer = "[" + std::to_string(i) + "]";
      for (auto& r : arch::range_of("inputs" + layer + ".router", inputs[i].router, false))
        l.em.globals.push_back(r);
      for (auto& r : arch::range_of("inputs" + layer + ".counted", inputs[i].counted, false))
        l.em.globals.push_back(r);
    }
    for (std::size_t i = 0; i < drouter.size(); ++i)
      for (auto& r : arch::range_of("drouter[" + std::to_string(i) + "]", drouter[i], true))
        l.em.globals.push_back(r);
    return l;
  }

  balance::gpu::evaluate_options options_;
  std::vector<double> storage_;
  balance::gpu::workspace ws_;
};

}  // namespace sinkmoe::testing
