#pragma once
// Thread, block, warp and lane indices of the calling thread: the layer's replacement for
// threadIdx, blockIdx, blockDim and gridDim (docs/emulation.md), so that the same kernel code
// runs on the GPU and in the host emulation.

#include <sinkmoe/cuda/arch/config.hpp>
#include <sinkmoe/cuda/arch/geometry.hpp>

#if !SINKMOE_ARCH_DEVICE
#include <sinkmoe/cuda/arch/detail/emulator.hpp>
#endif

namespace sinkmoe::arch {

#if SINKMOE_ARCH_DEVICE

/// threadIdx: this thread's coordinates in its block.
SINKMOE_ARCH_FN index3 thread_index() { return index3(threadIdx.x, threadIdx.y, threadIdx.z); }
/// blockIdx: this block's coordinates in the grid.
SINKMOE_ARCH_FN index3 block_index() { return index3(blockIdx.x, blockIdx.y, blockIdx.z); }
/// blockDim: threads per block along each axis.
SINKMOE_ARCH_FN index3 block_dim() { return index3(blockDim.x, blockDim.y, blockDim.z); }
/// gridDim: blocks along each axis.
SINKMOE_ARCH_FN index3 grid_dim() { return index3(gridDim.x, gridDim.y, gridDim.z); }

#else

/// threadIdx: this thread's coordinates in its block.
SINKMOE_ARCH_FN index3 thread_index() { return emu::current_thread().thread_idx; }
/// blockIdx: this block's coordinates in the grid.
SINKMOE_ARCH_FN index3 block_index() { return emu::current_block().block_idx; }
/// blockDim: threads per block along each axis.
SINKMOE_ARCH_FN index3 block_dim() { return emu::current_block().block_dim; }
/// gridDim: blocks along each axis.
SINKMOE_ARCH_FN index3 grid_dim() { return emu::current_block().grid_dim; }

#endif

/// Linear rank of this thread in its block (x fastest), 0 .. threads per block - 1.
SINKMOE_ARCH_FN int thread_rank() {
#if SINKMOE_ARCH_DEVICE
  // The common 1-D block costs nothing extra: y and z are 0.
  return static_cast<int>(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
#else
  return static_cast<int>(emu::current_thread().rank);
#endif
}

/// Lane of this thread in its warp, 0..31.
SINKMOE_ARCH_FN int lane_id() {
  return static_cast<int>(static_cast<unsigned>(thread_rank()) % k_warp_size);
}

/// Warp of this thread in its block (warps are consecutive runs of 32 ranks).
SINKMOE_ARCH_FN int warp_id() {
  return static_cast<int>(static_cast<unsigned>(thread_rank()) / k_warp_size);
}

}  // namespace sinkmoe::arch
