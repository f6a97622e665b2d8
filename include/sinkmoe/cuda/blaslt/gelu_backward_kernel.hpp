#pragma once
// The elementwise GELU backward, dL/dZ = dL/dY * gelu'(Z), for a linear layer whose own output
// goes through GELU: cuBLASLt's DGELU epilogues apply gelu' to a GEMM's result, which is the
// gradient of the NEXT GEMM's input, never to a GEMM operand, so this one step is a kernel of
// its own (linear.cuh). Written against the primitive layer: runs under nvcc and in the host
// emulation (tests).

#include <cstdint>
#include <sinkmoe/cuda/arch/float16.hpp>
#include <sinkmoe/cuda/arch/geometry.hpp>
#include <sinkmoe/cuda/arch/index.hpp>
#include <sinkmoe/cuda/arch/memory.hpp>
#include <sinkmoe/cuda/blaslt/gelu.hpp>

namespace sinkmoe::blaslt {

/// Grid-stride loop over the elements of gelu_backward_params (any grid and 1-D block).
struct gelu_backward_kernel {
  static constexpr int k_threads = 256;
  static constexpr unsigned k_max_blocks = 4096;

  /// Blocks for rows x cols elements (at least 1, at most k_max_blocks).
  static constexpr unsigned blocks_for(std::int64_t elements) {
    const std::int64_t blocks = (elements + k_threads - 1) / k_threads;
    return blocks < 1 ? 1u : (blocks > k_max_blocks ? k_max_blocks : static_cast<unsigned>(blocks));
  }

  template <class Element>
  SINKMOE_DEVICE void operator()(const gelu_backward_params<Element>& p) const {
    const std::int64_t total = p.rows * p.cols;
    const std::int64_t step = static_cast<std::int64_t>(arch::grid_dim().x) * arch::block_dim().x;
    for (std::int64_t i = static_cast<std::int64_t>(arch::block_index().x) * arch::block_dim().x +
                          arch::thread_index().x;
         i < total; i += step) {
      const std::int64_t row = i / p.cols, col = i % p.cols;
      const float dy =
          arch::to_float(arch::load_global(p.grad_output + row * p.ld_grad_output + col));
      const float z =
          arch::to_float(arch::load_global(p.pre_activation + row * p.ld_pre_activation + col));
      arch::store_global(p.grad_input + row * p.ld_grad_input + col,
                         arch::from_float<Element>(dy * gelu_tanh_derivative(z)));
    }
  }
};

}  // namespace sinkmoe::blaslt
