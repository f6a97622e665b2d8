#pragma once
// Head balancing on the GPU (docs/method.md section 4): balance::importance_cv2's loss, metrics and
// dL/dG computed by the kernels of sinkmoe/cuda/balance_kernels.hpp on the caller's stream,
// deterministically (fixed-order reductions, no atomics: bitwise repeatable). nvcc only.
//
// The host version and its GPU counterpart side by side:
//
//   // host (sinkmoe/balance/balance.hpp)
//   balance::importance_cv2 reg{.lambda = 1e-2, .shared_heads = 1};
//   balance::report rep = reg.forward_backward<float>(exec::host{}, inputs, drouter);
//
//   // GPU: the same options; router values, counted masks and drouter in device memory
//   balance::device_balancer bal(reg, layers, heads);   // allocates its workspace once
//   bal.forward_backward(exec::cuda{stream}, inputs, drouter);   // enqueues, no sync
//   Attn::backward(...) with backward_args::drouter = drouter[l] ...
//   double loss = bal.loss_to_host(exec::cuda{stream});          // syncs (only if wanted)
//   balance::report rep = bal.report_to_host(exec::cuda{stream});  // syncs: every metric
//
// inputs[l] is a balance::layer_input<float>: router [B, H, Tq] (fp32, e.g. forward_args::
// router) and counted [B, Tq] (uint8, attention<...>::counted_tokens), both device pointers,
// any strides; an empty counted view means every token counts. drouter[l] is a device
// tensor_view<float, 3> of the router's shape (any strides), overwritten.
//
// Data-parallel training, as on the host (accumulate, all-reduce, evaluate, router_grad):
//   bal.accumulate(ex, inputs);
//   all-reduce (sum) bal.sums().router_sum [layers * heads] and bal.sums().token_count [layers]
//     (doubles, device memory, e.g. ncclAllReduce on the same stream)
//   bal.evaluate(ex);
//   bal.router_grad(ex, inputs, drouter);
// After evaluate, device results stay in device memory: bal.loss() (a double) and
// bal.buffers() (importance, shared heads, per-layer statistics, dL/dG per token; see
// balance::gpu::workspace).
//
// Every option of importance_cv2 is supported (lambda, shared_heads, selection top-m or fixed,
// sample_std, dormant_threshold); they are validated when the balancer is built, with the host's
// messages. Per-call arguments are validated before anything is enqueued. Synchronisation:
// none, except the constructor (allocation and, for a fixed shared set, its upload), the
// *_to_host functions (which synchronise the stream, as documented there); load_sums returns
// once its pageable host source is staged (CUDA's rule for cudaMemcpyAsync from pageable memory).
// Calls on one balancer must be ordered by the caller (one stream, or events): they share its
// workspace.

#if !defined(__CUDACC__)
#error "sinkmoe/cuda/balance.cuh is CUDA code: compile it with nvcc"
#endif

#include <cstddef>
#include <cstdint>
#include <sinkmoe/balance/balance.hpp>
#include <sinkmoe/core/error.hpp>
#include <sinkmoe/cuda/arch/arch.hpp>
#include <sinkmoe/cuda/balance/kernels.hpp>
#include <sinkmoe/cuda/check.hpp>
#include <sinkmoe/cuda/exec.hpp>
#include <span>
#include <utility>
#include <vector>

namespace sinkmoe::balance {

/// Device sums of the accumulate step, for a cross-rank all-reduce (sum) before evaluate().
struct device_sums {
  double* router_sum;   ///< [layers * heads], device memory
  double* token_count;  ///< [layers], device memory
  int layers;
  int heads;
};

/// importance_cv2 on the GPU for a fixed number of layers and heads (see the header comment).
/// Owns its device workspace; move-only.
class device_balancer {
 public:
  /// Validates reg for layers x heads (as importance_cv2::evaluate would), allocates the
  /// workspace (cudaMalloc) and, for selection::fixed, uploads the fixed shared set. Synchronous.
  device_balancer(const importance_cv2& reg, int layers, int heads)
      : options_(gpu::make_evaluate_options(reg, layers, heads)) {
    const std::size_t bytes = gpu::workspace_bytes(layers, heads);
    SINKMOE_CUDA_CHECK(cudaMalloc(&memory_, bytes));
    ws_ = gpu::carve_workspace(memory_, layers, heads);
    try {
      SINKMOE_CUDA_CHECK(cudaMemset(memory_, 0, bytes));
      const std::vector<std::uint8_t> shared = gpu::initial_shared_mask(reg, layers, heads);
      SINKMOE_CUDA_CHECK(
          cudaMemcpy(ws_.shared, shared.data(), shared.size(), cudaMemcpyHostToDevice));
      // cudaMemset and a pageable cudaMemcpy may return before they land (CUDA's API sync
      // behaviour), and a non-blocking caller stream does not wait for the default stream.
      SINKMOE_CUDA_CHECK(cudaStreamSynchronize(nullptr));
    } catch (...) {
      cudaFree(memory_);
      throw;
    }
  }
  device_balancer(const device_balancer&) = delete;
  device_balancer& operator=(const device_balancer&) = delete;
  device_balancer(device_balancer&& other) noexcept
      : options_(other.options_),
        ws_(std::exchange(other.ws_, {})),
        memory_(std::exchange(other.memory_, nullptr)) {}
  device_balancer& operator=(device_balancer&& other) noexcept {
    if (this != &other) {
      release();
      options_ = other.options_;
      ws_ = std::exchange(other.ws_, {});
      memory_ = std::exchange(other.memory_, nullptr);
    }
    return *this;
  }
  /// Frees the workspace (cudaFree waits for work that uses it).
  ~device_balancer() { release(); }

  /// Step 1: per layer and head, the sum of G over counted tokens, and the counted tokens.
  void accumulate(const exec::cuda& ex, std::span<const layer_input<float>> inputs) {
    gpu::enqueue_accumulate(inputs, ws_, launcher{ex.stream});
  }
  /// Step 2: importance, shared heads, CV, loss and metrics from the (possibly all-reduced)
  /// sums; also dL/dG per counted token for router_grad.
  void evaluate(const exec::cuda& ex) { gpu::enqueue_evaluate(options_, ws_, launcher{ex.stream}); }
  /// Step 3: drouter[l] = dL/dG of every layer (0 on tokens that do not count).
  void router_grad(const exec::cuda& ex, std::span<const layer_input<float>> inputs,
                   std::span<const tensor_view<float, 3>> drouter) {
    gpu::enqueue_router_grad(inputs, drouter, ws_, launcher{ex.stream});
  }
  /// accumulate + evaluate + router_grad on one process (arguments checked before any launch).
  void forward_backward(const exec::cuda& ex, std::span<const layer_input<float>> inputs,
                        std::span<const tensor_view<float, 3>> drouter) {
    gpu::check_inputs(inputs, ws_);
    gpu::check_drouter(inputs, drouter);
    accumulate(ex, inputs);
    evaluate(ex);
    router_grad(ex, inputs, drouter);
  }
  /// accumulate + evaluate: the loss and metrics without a gradient.
  void forward(const exec::cuda& ex, std::span<const layer_input<float>> inputs) {
    accumulate(ex, inputs);
    evaluate(ex);
  }

  /// The accumulate step's device sums (to all-reduce across ranks before evaluate()).
  [[nodiscard]] device_sums sums() const {
    return {ws_.router_sum, ws_.token_count, ws_.layers, ws_.heads};
  }
  /// The loss of the last evaluate(): one double in device memory.
  [[nodiscard]] const double* loss() const { return ws_.totals + gpu::total_loss; }
  /// Every device array (see balance::gpu::workspace).
  [[nodiscard]] const gpu::workspace& buffers() const { return ws_; }

  /// The loss of the last evaluate(), on the host. Synchronises ex.stream.
  [[nodiscard]] double loss_to_host(const exec::cuda& ex) const {
    double value = 0.0;
    SINKMOE_CUDA_CHECK(
        cudaMemcpyAsync(&value, loss(), sizeof(double), cudaMemcpyDeviceToHost, ex.stream));
    SINKMOE_CUDA_CHECK(cudaStreamSynchronize(ex.stream));
    return value;
  }
  /// Everything evaluate() computed, as importance_cv2::evaluate's report. Synchronises.
  [[nodiscard]] report report_to_host(const exec::cuda& ex) const {
    return gpu::read_report(host_copy(ex).view);
  }
  /// The accumulate step's sums as importance_sums. Synchronises ex.stream.
  [[nodiscard]] importance_sums sums_to_host(const exec::cuda& ex) const {
    return gpu::read_sums(host_copy(ex).view);
  }
  /// Loads sums (e.g. all-reduced on the host) into the workspace for evaluate(). From
  /// pageable memory, cudaMemcpyAsync returns once the source is staged: `sums` may go at once.
  void load_sums(const exec::cuda& ex, const importance_sums& sums) {
    gpu::check_sums(sums, ws_);
    SINKMOE_CUDA_CHECK(cudaMemcpyAsync(ws_.router_sum, sums.router_sum.data(),
                                       sums.router_sum.size() * sizeof(double),
                                       cudaMemcpyHostToDevice, ex.stream));
    SINKMOE_CUDA_CHECK(cudaMemcpyAsync(ws_.token_count, sums.token_count.data(),
                                       sums.token_count.size() * sizeof(double),
                                       cudaMemcpyHostToDevice, ex.stream));
  }

 private:
  /// balance_kernels.hpp's launch callback: arch::launch on the stream, checked.
  struct launcher {
    cudaStream_t stream;
    template <class Kernel, class Params>
    void operator()(Kernel, arch::index3 grid, arch::index3 block, std::size_t smem,
                    const Params& params) const {
      SINKMOE_CUDA_CHECK(arch::launch<Kernel>(grid, block, smem, stream, params));
    }
  };
  /// A host copy of the whole workspace, and a workspace view of it.
  struct host_workspace {
    std::vector<double> storage;
    gpu::workspace view;
  };
  host_workspace host_copy(const exec::cuda& ex) const {
    const std::size_t bytes = gpu::workspace_bytes(ws_.layers, ws_.heads);
    host_workspace copy;
    copy.storage.resize((bytes + sizeof(double) - 1) / sizeof(double));
    SINKMOE_CUDA_CHECK(
        cudaMemcpyAsync(copy.storage.data(), memory_, bytes, cudaMemcpyDeviceToHost, ex.stream));
    SINKMOE_CUDA_CHECK(cudaStreamSynchronize(ex.stream));
    copy.view = gpu::carve_workspace(copy.storage.data(), ws_.layers, ws_.heads);
    return copy;
  }
  void release() noexcept {
    if (memory_ != nullptr) cudaFree(memory_);
    memory_ = nullptr;
  }

  gpu::evaluate_options options_;
  gpu::workspace ws_;
  void* memory_ = nullptr;
};

}  // namespace sinkmoe::balance
