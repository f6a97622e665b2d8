// nvcc compile check of the unfused attention path (include/sinkmoe/cuda/unfused): the
// cuda_forward / cuda_backward entry points, their cuBLASLt GEMMs (linked against
// CUDA::cublasLt) and every row kernel as real __global__ functions for every
// CMAKE_CUDA_ARCHITECTURES entry (sm_90a and sm_80), ptxas included. A bounded, documented
// instantiation list (the head dim is a run-time value on this path, so none is listed):
//   vanilla, causal,                                              bf16, forward + backward
//   learned sink, elementwise gate, sliding window, route product, bf16, forward + backward
//   fixed sink, headwise gate, streaming, soft-cap,                fp16, forward + backward
// The emulated suites (test_unfused_emulated*) run the same algorithm and row kernels for every
// policy combination. The program launches nothing, creates no context and runs on machines
// without a GPU.
#include <sinkmoe/attention.hpp>
#include <sinkmoe/cuda/unfused/unfused.cuh>

namespace {

namespace arch = sinkmoe::arch;
namespace unfused = sinkmoe::unfused;
using sinkmoe::attention;

using vanilla_causal = attention<sinkmoe::sink::none, sinkmoe::gate::none, sinkmoe::mask::causal>;
using sink_gated_sliding = attention<sinkmoe::sink::learned, sinkmoe::gate::elementwise,
                                     sinkmoe::mask::sliding_window, sinkmoe::route::product>;
using fixed_headwise_streaming_softcap =
    attention<sinkmoe::sink::fixed, sinkmoe::gate::headwise, sinkmoe::mask::streaming,
              sinkmoe::route::deduced, sinkmoe::score::softcap>;

template <class Attn, class Element>
bool entries_exist() {
  using forward_fn = void (*)(sinkmoe::blaslt::context&, const sinkmoe::exec::cuda&,
                              const sinkmoe::forward_args<Element>&, const unfused::workspace&);
  using backward_fn = void (*)(sinkmoe::blaslt::context&, const sinkmoe::exec::cuda&,
                               const sinkmoe::forward_args<Element>&,
                               const sinkmoe::backward_args<Element>&, const unfused::workspace&);
  const forward_fn forward = &unfused::cuda_forward<Attn, Element>;
  const backward_fn backward = &unfused::cuda_backward<Attn, Element>;
  return forward != nullptr && backward != nullptr;
}

}  // namespace

int main() {
  const bool all = entries_exist<vanilla_causal, arch::bf16>() &&
                   entries_exist<sink_gated_sliding, arch::bf16>() &&
                   entries_exist<fixed_headwise_streaming_softcap, arch::fp16>();
  return all ? 0 : 1;
}
