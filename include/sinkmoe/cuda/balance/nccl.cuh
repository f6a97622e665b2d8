#pragma once
// NCCL for the GPU balancer (docs/distributed.md): data-parallel balancing with
// balance::device_balancer, the sums all-reduced on the GPU, on the caller's stream, with no
// host synchronisation in the step. nvcc and NCCL (<nccl.h>, libnccl) only.
//
//   balance::nccl_reducer red{comm, stream};
//   balance::check_data_parallel(red, layers, heads, ranks);     // once: small, synchronous
//   balance::device_balancer bal(reg, layers, heads);
//   // each step, every rank:
//   bal.accumulate(ex, inputs);
//   balance::all_reduce_sums(bal, red);                  // one ncclAllReduce, stream-ordered
//   bal.evaluate(ex);                                    // the global loss, on every rank
//   bal.router_grad(ex, inputs, drouter);                // dL/dG of the global loss
//
// The gradient is that of the global loss with respect to this rank's router values: sum the
// parameter gradients over ranks, or, where the optimiser averages them over W ranks (DDP),
// scale drouter by W (the host's distributed_cv2 does that through rank_layout::gradient_average).
// Tensor- and pipeline-parallel layouts are the host path's (balance/distributed.hpp): the device
// balancer holds one rank's whole layer x head grid.

#if !defined(__CUDACC__)
#error "sinkmoe/cuda/balance/nccl.cuh is CUDA code: compile it with nvcc"
#endif

#include <nccl.h>

#include <cstddef>
#include <sinkmoe/core/error.hpp>
#include <sinkmoe/cuda/balance/device_balancer.cuh>
#include <sinkmoe/cuda/check.hpp>
#include <string>
#include <vector>

namespace sinkmoe::balance {

/// Throws sinkmoe::error naming the NCCL call and its message unless result is ncclSuccess.
inline void check_nccl(ncclResult_t result, const char* call) {
  if (result != ncclSuccess)
    throw error(std::string(call) + " failed: " + ncclGetErrorString(result) + " (" +
                std::to_string(static_cast<int>(result)) + ")");
}

/// Sum all-reduce of device doubles over a communicator, in place, on a stream (both the
/// caller's).
struct nccl_reducer {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;

  /// ncclAllReduce(values, values, count, ncclDouble, ncclSum): enqueued, no synchronisation.
  void all_reduce_sum(double* device_values, std::size_t count) const {
    check_nccl(
        ncclAllReduce(device_values, device_values, count, ncclDouble, ncclSum, comm, stream),
        "ncclAllReduce");
  }
  /// Ranks of the communicator.
  [[nodiscard]] int ranks() const {
    int n = 0;
    check_nccl(ncclCommCount(comm, &n), "ncclCommCount");
    return n;
  }
};

/// Checks, with one small collective that every rank must call, that every rank balances
/// `layers` x `heads` and (when expected_ranks > 0) that the communicator has expected_ranks
/// ranks; throws sinkmoe::error on every rank otherwise. Synchronises red.stream: call it once,
/// before the first step.
inline void check_data_parallel(const nccl_reducer& red, int layers, int heads,
                                int expected_ranks = 0) {
  const int ranks = red.ranks();
  detail::require(expected_ranks <= 0 || expected_ranks == ranks, "nccl_reducer: ", ranks,
                  " ranks in the communicator, ", expected_ranks, " expected");
  // ranks * sum q^2 == (sum q)^2 iff every rank has the same q (exact in doubles here).
  const double host[5] = {1.0, double(layers), double(layers) * layers, double(heads),
                          double(heads) * heads};
  double* device = nullptr;
  SINKMOE_CUDA_CHECK(cudaMallocAsync(&device, sizeof host, red.stream));
  double sums[5] = {};
  try {
    SINKMOE_CUDA_CHECK(
        cudaMemcpyAsync(device, host, sizeof host, cudaMemcpyHostToDevice, red.stream));
    red.all_reduce_sum(device, 5);
    SINKMOE_CUDA_CHECK(
        cudaMemcpyAsync(sums, device, sizeof sums, cudaMemcpyDeviceToHost, red.stream));
    SINKMOE_CUDA_CHECK(cudaFreeAsync(device, red.stream));
    SINKMOE_CUDA_CHECK(cudaStreamSynchronize(red.stream));
  } catch (...) {
    cudaFreeAsync(device, red.stream);
    throw;
  }
  const auto agreed = [&](double sum, double sum_sq) { return sums[0] * sum_sq == sum * sum; };
  detail::require(agreed(sums[1], sums[2]) && agreed(sums[3], sums[4]), "nccl_reducer: the ", ranks,
                  " ranks disagree on the balanced layers or heads (this rank: ", layers, " x ",
                  heads, "; mean over ranks: ", sums[1] / sums[0], " x ", sums[3] / sums[0], ")");
}

/// The data-parallel reduction of a device_balancer's accumulated sums (router sums and token
/// counts, one contiguous device buffer): one ncclAllReduce on red.stream, between accumulate()
/// and evaluate(). Every rank calls it with a balancer of the same layers x heads.
inline void all_reduce_sums(device_balancer& bal, const nccl_reducer& red) {
  const device_sums s = bal.sums();
  // accumulate() writes router_sum [layers * heads] followed by token_count [layers]
  // (balance::gpu::carve_workspace), so one call reduces both.
  detail::require(s.token_count == s.router_sum + std::size_t(s.layers) * s.heads,
                  "device_balancer: sums are not one contiguous buffer");
  red.all_reduce_sum(s.router_sum, std::size_t(s.layers) * std::size_t(s.heads + 1));
}

}  // namespace sinkmoe::balance
