// nvcc compile check of the cuBLASLt layer (include/sinkmoe/cuda/blaslt): blaslt::context (its
// cuBLASLt calls linked against CUDA::cublasLt), the linear helpers for bf16 with fp32 weight
// gradients and for fp16 throughout, and the GELU backward kernel as real __global__ functions
// for every CMAKE_CUDA_ARCHITECTURES entry. Launches nothing, creates no context: runs on
// machines without a GPU.
#include <sinkmoe/cuda/blaslt/linear.cuh>

namespace {

namespace arch = sinkmoe::arch;
namespace blaslt = sinkmoe::blaslt;

template <class Element>
const void* gelu_kernel_address() {
  return reinterpret_cast<const void*>(
      arch::entry_point<blaslt::gelu_backward_kernel, blaslt::gelu_backward_params<Element>>());
}

}  // namespace

int main() {
  using forward_bf16 =
      void (*)(blaslt::context&, const blaslt::linear_forward_args<arch::bf16>&, cudaStream_t);
  using backward_bf16 = void (*)(
      blaslt::context&, const blaslt::linear_backward_args<arch::bf16, float>&, cudaStream_t);
  using backward_fp16 = void (*)(
      blaslt::context&, const blaslt::linear_backward_args<arch::fp16, arch::fp16>&, cudaStream_t);
  void (blaslt::context::*matmul)(const blaslt::matmul_desc&, cudaStream_t) =
      &blaslt::context::matmul;
  using positional_forward_bf16 =
      void (*)(blaslt::context&, sinkmoe::tensor_view<const arch::bf16, 2>,
               sinkmoe::tensor_view<const arch::bf16, 2>, sinkmoe::tensor_view<const arch::bf16, 1>,
               sinkmoe::tensor_view<arch::bf16, 2>, blaslt::activation,
               sinkmoe::tensor_view<arch::bf16, 2>, cudaStream_t);
  const forward_bf16 forward = &blaslt::linear_forward<arch::bf16>;
  const positional_forward_bf16 positional_forward = &blaslt::linear_forward<arch::bf16>;
  const backward_bf16 backward = &blaslt::linear_backward<arch::bf16, float>;
  const backward_fp16 backward_half = &blaslt::linear_backward<arch::fp16, arch::fp16>;
  const void* kernels[] = {gelu_kernel_address<arch::bf16>(), gelu_kernel_address<arch::fp16>()};
  bool all = matmul != nullptr && forward != nullptr && positional_forward != nullptr &&
             backward != nullptr && backward_half != nullptr;
  for (const void* kernel : kernels) all = all && kernel != nullptr;
  return all ? 0 : 1;
}
