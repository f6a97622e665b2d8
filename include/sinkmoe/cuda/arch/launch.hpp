#pragma once
// GPU entry points for kernels written against the primitive layer (docs/emulation.md).
//
// A kernel is a stateless function object whose call operator is SINKMOE_DEVICE (a template
// if it likes): the same object runs on the GPU through kernel_entry below, and in the host
// emulation through arch::emulated_launch (emulation.hpp). Kernel code therefore never spells
// __global__, threadIdx or <<<>>>. A kernel that declares
//   static constexpr int k_max_threads = ..., k_min_blocks = ...;
// gets __launch_bounds__(k_max_threads, k_min_blocks). nvcc only.

#include <sinkmoe/cuda/arch/config.hpp>
#include <sinkmoe/cuda/arch/geometry.hpp>

#if !SINKMOE_ARCH_DEVICE
#error "sinkmoe/cuda/arch/launch.hpp launches on the GPU (nvcc); the emulation uses emulated_launch"
#endif

#include <cuda_runtime.h>

#include <atomic>
#include <concepts>
#include <cstddef>

namespace sinkmoe::arch {

/// A kernel that states its launch bounds.
template <class Kernel>
concept has_launch_bounds = requires {
  { Kernel::k_max_threads } -> std::convertible_to<int>;
  { Kernel::k_min_blocks } -> std::convertible_to<int>;
};

/// The __global__ function running Kernel{}(args...) in every thread.
template <class Kernel, class... Args>
__global__ void kernel_entry(Args... args) {
  Kernel{}(args...);
}

/// kernel_entry with Kernel's __launch_bounds__.
template <class Kernel, class... Args>
__global__ void __launch_bounds__(Kernel::k_max_threads, Kernel::k_min_blocks)
    bounded_kernel_entry(Args... args) {
  Kernel{}(args...);
}

/// The __global__ function for Kernel with these argument types.
template <class Kernel, class... Args>
constexpr auto entry_point() {
  if constexpr (has_launch_bounds<Kernel>) {
    return &bounded_kernel_entry<Kernel, Args...>;
  } else {
    return &kernel_entry<Kernel, Args...>;
  }
}

namespace detail {

/// Devices whose per-kernel attribute this layer caches (others set it on every launch).
inline constexpr int k_cached_devices = 64;

/// Raises entry's dynamic shared-memory limit to smem_bytes on the current device, once per
/// kernel and device (a call per launch costs host time; FlashAttention pays it).
template <auto Entry>
cudaError_t grant_dynamic_smem(std::size_t smem_bytes) {
  static std::atomic<std::size_t> granted[k_cached_devices] = {};
  int device = 0;
  cudaError_t status = cudaGetDevice(&device);
  if (status != cudaSuccess) return status;
  const bool cached = device >= 0 && device < k_cached_devices;
  if (cached && granted[device].load(std::memory_order_relaxed) >= smem_bytes) return cudaSuccess;
  status = cudaFuncSetAttribute(Entry, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                static_cast<int>(smem_bytes));
  if (status == cudaSuccess && cached) granted[device].store(smem_bytes, std::memory_order_relaxed);
  return status;
}

}  // namespace detail

/// <<<grid, block, smem_bytes, stream>>> of Kernel{}(args...). Raises the kernel's dynamic
/// shared-memory limit first when smem_bytes exceeds the default 48 KiB (once per kernel and
/// device). Returns the launch error (the caller's checking macro names the call).
template <class Kernel, class... Args>
cudaError_t launch(index3 grid, index3 block, std::size_t smem_bytes, cudaStream_t stream,
                   Args... args) {
  constexpr auto entry = entry_point<Kernel, Args...>();
  if (smem_bytes > 48 * 1024) {
    const cudaError_t status = detail::grant_dynamic_smem<entry>(smem_bytes);
    if (status != cudaSuccess) return status;
  }
  entry<<<dim3(grid.x, grid.y, grid.z), dim3(block.x, block.y, block.z), smem_bytes, stream>>>(
      args...);
  return cudaGetLastError();
}

}  // namespace sinkmoe::arch
