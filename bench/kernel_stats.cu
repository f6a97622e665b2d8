// The kernels bench/kernel_stats.sh measures without a GPU (registers, spills, shared memory,
// occupancy, and the main loop's instruction mix from the SASS): compiled by nvcc for one
// architecture; running it prints, per kernel, one JSON line with its demangled type (to match
// ptxas's and cuobjdump's names), its dynamic shared memory and the score elements one warp
// covers in one iteration of its main loop (to normalise the loop's instruction counts).
// It launches nothing and runs without a GPU.
#include <cstdio>
#include <cstdlib>
#include <cxxabi.h>
#include <memory>
#include <sinkmoe/attention.hpp>
#include <sinkmoe/cuda/fused/backward_kernels.hpp>
#include <sinkmoe/cuda/fused/forward_kernel.hpp>
#include <string>
#include <typeinfo>

namespace {

namespace arch = sinkmoe::arch;
namespace fused = sinkmoe::fused;
namespace sink = sinkmoe::sink;
namespace gate = sinkmoe::gate;
namespace mask = sinkmoe::mask;
using sinkmoe::attention;

using learned_none = attention<sink::learned, gate::none, mask::none>;
using vanilla_causal = attention<sink::none, gate::none, mask::causal>;
using gated_causal = attention<sink::none, gate::elementwise, mask::causal>;
using softcap_sliding = attention<sink::learned, gate::none, mask::sliding_window,
                                  sinkmoe::route::deduced, sinkmoe::score::softcap>;

/// The demangled name of a type, as c++filt prints it (ptxas and cuobjdump name kernels so).
template <class T>
std::string type_name() {
  int status = 0;
  const std::unique_ptr<char, decltype(&std::free)> name(
      abi::__cxa_demangle(typeid(T).name(), nullptr, nullptr, &status), &std::free);
  return status == 0 && name ? std::string(name.get()) : std::string(typeid(T).name());
}

/// Prints one kernel's line and keeps its entry point (so nvcc compiles it).
template <class Kernel, class... Args>
void report(const char* role, const char* policy, int head_dim, std::size_t smem,
            long score_elements_per_iteration) {
  const void* entry = reinterpret_cast<const void*>(arch::entry_point<Kernel, Args...>());
  std::printf(
      "{\"role\": \"%s\", \"policy\": \"%s\", \"head_dim\": %d, \"type\": \"%s\", "
      "\"smem_bytes\": %zu, \"warps\": %d, \"elements\": %ld, \"entry\": %d}\n",
      role, policy, head_dim, type_name<Kernel>().c_str(), smem,
      Kernel::k_max_threads / 32, score_elements_per_iteration, entry != nullptr);
}

template <class Attn, int D>
void forward(const char* policy) {
  using k = fused::forward_kernel<Attn, arch::bf16, D>;
  report<k, fused::forward_params<arch::bf16>>("forward", policy, D, k::smem_bytes,
                                               long(k::traits::warp_rows) * k::traits::block_k);
}

template <class Attn, int D>
void backward(const char* policy) {
  using ks = fused::backward_kernels<Attn, arch::bf16, D>;
  using params = fused::backward_params<arch::bf16>;
  using dkdv = typename ks::dkdv;
  using dq = typename ks::dq;
  report<dkdv, params>("dkdv", policy, D, dkdv::smem_bytes,
                       long(dkdv::traits::warp_keys) * dkdv::traits::block_q);
  report<dq, params>("dq", policy, D, dq::smem_bytes,
                     long(dq::traits::warp_rows) * dq::traits::block_k);
  report<typename ks::preprocess, params>("preprocess", policy, D, ks::preprocess::smem_bytes, 0);
}

}  // namespace

int main() {
  forward<learned_none, 64>("learned sink, no mask");
  forward<learned_none, 128>("learned sink, no mask");
  forward<vanilla_causal, 64>("vanilla, causal");
  forward<vanilla_causal, 128>("vanilla, causal");
  forward<gated_causal, 128>("elementwise gate, causal");
  forward<softcap_sliding, 128>("softcap, sliding window");
  backward<learned_none, 64>("learned sink, no mask");
  backward<learned_none, 128>("learned sink, no mask");
  backward<vanilla_causal, 64>("vanilla, causal");
  backward<vanilla_causal, 128>("vanilla, causal");
  return 0;
}
