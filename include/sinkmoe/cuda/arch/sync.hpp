#pragma once
// Block and warp barriers (docs/emulation.md). In the host emulation a barrier is where the
// fibers of a block yield to each other, and what orders shared-memory accesses: the race
// detector (detail/memory_checks.hpp) reports two conflicting accesses of different threads
// that no barrier separates.

#include <sinkmoe/cuda/arch/config.hpp>
#include <sinkmoe/cuda/arch/site.hpp>

#if !SINKMOE_ARCH_DEVICE
#include <sinkmoe/cuda/arch/detail/emulator.hpp>
#endif

namespace sinkmoe::arch {

/// __syncthreads(): waits until every (non-exited) thread of the block arrives; orders the
/// shared- and global-memory accesses of the block's threads across it.
/// The emulation checks shared-memory accesses against it (a race is two unordered accesses)
/// and can skip it by call site (mutation tests).
SINKMOE_ARCH_FN void sync_block(site at = site::current()) {
#if SINKMOE_ARCH_DEVICE
  (void)at;
  __syncthreads();
#else
  emu::block_barrier(at);
#endif
}

/// __syncwarp(): waits until every (non-exited) lane of the calling warp arrives, and orders
/// their memory accesses. Needed between a lane's shared-memory write and another lane's read
/// when no warp collective or block barrier lies between them.
SINKMOE_ARCH_FN void sync_warp(site at = site::current()) {
#if SINKMOE_ARCH_DEVICE
  (void)at;
  __syncwarp();
#else
  emu::warp_barrier(at);
#endif
}

}  // namespace sinkmoe::arch
