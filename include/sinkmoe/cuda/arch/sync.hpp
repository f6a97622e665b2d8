#pragma once
// Block and warp barriers (design.md section 6). In the host emulation a barrier is where the
// fibers of a block yield to each other, so it is also what makes the emulated threads
// interleave: shared-memory traffic between threads is only meaningful across one.

#include <sinkmoe/cuda/arch/config.hpp>

#if !SINKMOE_ARCH_DEVICE
#include <sinkmoe/cuda/arch/detail/emulator.hpp>
#endif

namespace sinkmoe::arch {

/// __syncthreads(): waits until every (non-exited) thread of the block arrives; orders the
/// shared- and global-memory accesses of the block's threads across it.
SINKMOE_ARCH_FN void sync_block() {
#if SINKMOE_ARCH_DEVICE
  __syncthreads();
#else
  emu::block_barrier();
#endif
}

/// __syncwarp(): waits until every (non-exited) lane of the calling warp arrives, and orders
/// their memory accesses. Needed between a lane's shared-memory write and another lane's read
/// when no warp collective or block barrier lies between them.
SINKMOE_ARCH_FN void sync_warp() {
#if SINKMOE_ARCH_DEVICE
  __syncwarp();
#else
  emu::warp_barrier();
#endif
}

}  // namespace sinkmoe::arch
