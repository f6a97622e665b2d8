// nvcc compile check: the public headers must compile as CUDA host code.
// This program launches nothing, so it runs on machines without a GPU.
#include <sinkmoe/sinkmoe.hpp>

namespace {
__global__ void sinkmoe_cuda_headers_noop_kernel() {}
}  // namespace

int main() {
  // Take the kernel's address so it is compiled and referenced, but never launch it.
  void (*kernel)() = &sinkmoe_cuda_headers_noop_kernel;
  return kernel != nullptr ? 0 : 1;
}
