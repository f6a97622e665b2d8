// nvcc compile check of device-side balancing: the three kernels of
// include/sinkmoe/cuda/balance_kernels.hpp as real __global__ functions for every
// CMAKE_CUDA_ARCHITECTURES entry (ptxas included), and balance::device_balancer
// (sinkmoe/cuda/balance.cuh) with every method instantiated. Launches nothing (no GPU here);
// test_balance_emulated runs the same kernel source through the host emulation, and
// test_fused_gpu runs it on a GPU.
#include <sinkmoe/cuda/balance.cuh>

namespace {

namespace gpu = sinkmoe::balance::gpu;
namespace arch = sinkmoe::arch;

template <class Kernel, class Params>
const void* kernel_address() {
  return reinterpret_cast<const void*>(arch::entry_point<Kernel, Params>());
}

/// Instantiates every member of device_balancer (the pointer is never called).
void use_every_method(sinkmoe::balance::device_balancer& balancer, const sinkmoe::exec::cuda& ex,
                      std::span<const sinkmoe::balance::layer_input<float>> inputs,
                      std::span<const sinkmoe::tensor_view<float, 3>> drouter) {
  balancer.forward_backward(ex, inputs, drouter);
  balancer.forward(ex, inputs);
  balancer.accumulate(ex, inputs);
  balancer.evaluate(ex);
  balancer.router_grad(ex, inputs, drouter);
  balancer.load_sums(ex, balancer.sums_to_host(ex));
  const sinkmoe::balance::report rep = balancer.report_to_host(ex);
  const double loss = balancer.loss_to_host(ex);
  (void)rep;
  (void)loss;
  (void)balancer.sums();
  (void)balancer.loss();
  (void)balancer.buffers();
  sinkmoe::balance::device_balancer moved(std::move(balancer));
  balancer = std::move(moved);
}

}  // namespace

int main() {
  const void* entries[] = {
      kernel_address<gpu::accumulate_kernel, gpu::layers_params>(),
      kernel_address<gpu::evaluate_kernel, gpu::evaluate_params>(),
      kernel_address<gpu::router_grad_kernel, gpu::layers_params>(),
      reinterpret_cast<const void*>(&use_every_method),
  };
  for (const void* entry : entries)
    if (entry == nullptr) return 1;
  return 0;
}
