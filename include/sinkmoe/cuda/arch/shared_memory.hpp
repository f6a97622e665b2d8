#pragma once
// The block's dynamic shared memory, the only shared memory kernels use (docs/emulation.md):
// static __shared__ arrays have no per-block storage in the host emulation, so tiles are carved
// out of this one buffer, whose size the launch gives.

#include <cstddef>
#include <cstdint>
#include <sinkmoe/cuda/arch/config.hpp>

#if !SINKMOE_ARCH_DEVICE
#include <sinkmoe/cuda/arch/detail/emulator.hpp>
#endif

namespace sinkmoe::arch {

/// Start of the block's dynamic shared memory, as T*. Aligned to at least 128 bytes on the GPU
/// (1024 in the emulation, where it starts filled with 0xff bytes: NaN for bf16, fp16, float).
template <class T>
SINKMOE_ARCH_FN T* dynamic_smem() {
#if SINKMOE_ARCH_DEVICE
  extern __shared__ __align__(128) unsigned char sinkmoe_arch_dynamic_smem[];
  return reinterpret_cast<T*>(sinkmoe_arch_dynamic_smem);
#else
  return reinterpret_cast<T*>(emu::current_block().smem);
#endif
}

#if SINKMOE_ARCH_DEVICE
namespace detail {
/// 32-bit shared-window address of a generic pointer into shared memory (the operand form of
/// ldmatrix and cp.async).
SINKMOE_ARCH_FN std::uint32_t smem_address(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}
}  // namespace detail
#endif

#if !SINKMOE_ARCH_DEVICE
/// Bytes of dynamic shared memory of the emulated launch (tests only: on the GPU kernels know
/// their tile sizes from their own arguments).
inline std::size_t emulated_dynamic_smem_bytes() { return emu::current_block().smem_bytes; }
#endif

}  // namespace sinkmoe::arch
