// nvcc compile check of the fused backward kernels (include/sinkmoe/cuda/backward_kernel.hpp)
// and their launcher (backward.cuh) for every CMAKE_CUDA_ARCHITECTURES entry (sm_90a and sm_80),
// ptxas included. A bounded, documented instantiation list that, with
// cuda_fused_forward_compile.cu, uses every policy at least once and each dtype and head dim:
//   launcher: vanilla, causal,                              bf16, D 64 and 128 (dispatch),
//             through attention<>::backward(exec::cuda) (fused.cuh)
//   kernels:  learned sink, headwise gate, sliding window,  fp16, D 64   (route::product)
//             fixed sink, elementwise gate, streaming,      bf16, D 128
//             learned sink, no mask, soft-cap score,        bf16, D 64
// Each backward is four kernels (preprocess, dK/dV, dQ, d(sink)). The emulated test suites
// (test_fused_backward_emulated*) run the same kernel source for every policy combination. The
// program launches nothing and runs on machines without a GPU.
#include <sinkmoe/attention.hpp>
#include <sinkmoe/cuda/fused.cuh>

namespace {

namespace arch = sinkmoe::arch;
namespace fused = sinkmoe::fused;
using sinkmoe::attention;
namespace sink = sinkmoe::sink;
namespace gate = sinkmoe::gate;
namespace mask = sinkmoe::mask;

template <class Kernel, class Element>
const void* entry() {
  return reinterpret_cast<const void*>(
      arch::entry_point<Kernel, fused::backward_params<Element>>());
}

template <class Attn, class Element, int HeadDim>
bool all_entries() {
  using k = fused::backward_kernels<Attn, Element, HeadDim>;
  return entry<typename k::preprocess, Element>() != nullptr &&
         entry<typename k::dkdv, Element>() != nullptr &&
         reinterpret_cast<const void*>(
             arch::entry_point<typename k::dkdv_reduce, fused::backward_params<Element>,
                               float>()) != nullptr &&
         entry<typename k::dq, Element>() != nullptr &&
         entry<typename k::dsink, Element>() != nullptr;
}

using vanilla_causal = attention<sink::none, gate::none, mask::causal>;
using sink_headwise_sliding =
    attention<sink::learned, gate::headwise, mask::sliding_window, sinkmoe::route::product>;
using fixed_elementwise_streaming = attention<sink::fixed, gate::elementwise, mask::streaming>;
using learned_softcap = attention<sink::learned, gate::none, mask::none, sinkmoe::route::deduced,
                                  sinkmoe::score::softcap>;

}  // namespace

int main() {
  const bool ok =
      // attention<>::backward(exec::cuda) -> backend<exec::cuda> -> fused::cuda_backward
      reinterpret_cast<const void*>(&vanilla_causal::backward<sinkmoe::exec::cuda, arch::bf16>) !=
          nullptr &&
      all_entries<sink_headwise_sliding, arch::fp16, 64>() &&
      all_entries<fixed_elementwise_streaming, arch::bf16, 128>() &&
      all_entries<learned_softcap, arch::bf16, 64>();
  return ok ? 0 : 1;
}
