// nvcc compile check of the fused forward kernel (include/sinkmoe/cuda/forward_kernel.hpp) and
// its launcher (forward.cuh) for every CMAKE_CUDA_ARCHITECTURES entry (sm_90a and sm_80),
// ptxas included. A bounded, documented instantiation list (compile time: one nvcc process,
// each kernel compiled once per architecture):
//   vanilla, causal,               bf16, D 128   (and D 64, through the launcher's dispatch)
//   learned sink, sliding window,  bf16, D 64
//   elementwise gate, causal,      fp16, D 128
// The emulated test suites (test_fused_forward_emulated*) run the same kernel source for every
// policy combination. The program launches nothing and runs on machines without a GPU.
#include <sinkmoe/attention.hpp>
#include <sinkmoe/cuda/forward.cuh>

namespace {

namespace arch = sinkmoe::arch;
namespace fused = sinkmoe::fused;
using sinkmoe::attention;

template <class Attn, class Element, int HeadDim>
const void* kernel_address() {
  return reinterpret_cast<const void*>(
      arch::entry_point<fused::forward_kernel<Attn, Element, HeadDim>,
                        fused::forward_params<Element>>());
}

using vanilla_causal = attention<sinkmoe::sink::none, sinkmoe::gate::none, sinkmoe::mask::causal>;
using sink_sliding =
    attention<sinkmoe::sink::learned, sinkmoe::gate::none, sinkmoe::mask::sliding_window>;
using gated_causal =
    attention<sinkmoe::sink::none, sinkmoe::gate::elementwise, sinkmoe::mask::causal>;

}  // namespace

int main() {
  const void* entries[] = {
      kernel_address<vanilla_causal, arch::bf16, 128>(),
      kernel_address<sink_sliding, arch::bf16, 64>(),
      kernel_address<gated_causal, arch::fp16, 128>(),
      reinterpret_cast<const void*>(&fused::cuda_forward<vanilla_causal, arch::bf16>),
  };
  for (const void* entry : entries) {
    if (entry == nullptr) return 1;
  }
  return 0;
}
