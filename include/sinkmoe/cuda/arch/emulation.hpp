#pragma once
// Host emulation of the primitive layer, for tests (docs/emulation.md). Include this header
// before any kernel header; it selects the emulated implementation of every primitive and
// provides arch::emulated_launch / arch::emulator. Needs Boost.Context (fibers); g++ only.
//
// How: each thread of a block is a Boost.Context fiber; one scheduler thread resumes them.
// sync_block and sync_warp suspend a fiber until every live thread of its block or warp has
// arrived. Shuffles, ldmatrix and mma.sync are warp collectives: each lane deposits its operand
// in the warp's exchange buffer, the last lane to arrive computes every lane's result per the
// PTX ISA's fragment layouts, and each lane takes its own. cp.async copies land at the wait
// that retires their group. Blocks run one after another, each once per schedule (rank order
// and reverse by default). A barrier phase of a 128-thread block costs a few microseconds
// (test_arch_emulation measures it).
//
// What a passing emulated run proves:
//   - the index math (which thread loads, computes and stores what), tile boundaries and
//     masking, the fragment layouts of ldmatrix and mma and the register bookkeeping around
//     them, and the numerics of fp32 accumulation (to a reordering);
//   - no shared-memory race: no two accesses of different threads to a byte, one a write, in
//     the same barrier epoch without a sync_warp (same warp) or a warp collective ordering them
//     (every sync_block whose deletion creates such a pair is reported); no read or store of a
//     global byte another thread of the block stored in the same epoch;
//   - the cp.async protocol: no access to a destination before the wait_group that retires it
//     (other threads: before the sync_block after it), no refill of a stage another thread may
//     still read; no read of shared bytes nobody wrote;
//   - results independent of the order threads run in between barriers (each block runs in
//     every schedule; the stored bytes must agree);
//   - every global access through the layer aligned to its width, inside the tensors the launch
//     registered, stores only into outputs and workspaces.
// What it does not prove: the GPU's memory ordering across blocks (blocks run one after
// another) or across the grid, a global read followed by another thread's store (write after
// read), accesses that bypass the primitive layer (plain pointers in policy hooks), bank conflicts,
// register pressure or spills, occupancy, speed, and anything of the driver (launch limits beyond
// those it checks, streams, graphs). Those are checked on a real GPU: compute-sanitizer memcheck
// and racecheck and the benchmarks in bench/device_check.sh.

#if defined(__CUDACC__)
#error "sinkmoe/cuda/arch/emulation.hpp is the host (g++) emulation; nvcc uses the device layer"
#endif

#if !defined(SINKMOE_ARCH_EMULATION)
#define SINKMOE_ARCH_EMULATION 1
#endif

#include <sinkmoe/core/tensor_view.hpp>
#include <sinkmoe/cuda/arch/arch.hpp>
#include <sinkmoe/cuda/arch/detail/emulator.hpp>
#include <string>

namespace sinkmoe::arch {

/// The bytes a strided view spans, as a range a launch may touch (no range for an empty view).
template <class T, int Rank>
std::vector<global_range> range_of(std::string name, const tensor_view<T, Rank>& view,
                                   bool writable) {
  if (view.empty() || view.numel() == 0) return {};
  index_t low = 0, high = 0;
  for (int d = 0; d < Rank; ++d) {
    const index_t span = view.stride[d] * (view.shape[d] - 1);
    (span < 0 ? low : high) += span;
  }
  using byte_type = std::conditional_t<std::is_const_v<T>, const std::byte, std::byte>;
  return {global_range{reinterpret_cast<byte_type*>(view.data + low),
                       static_cast<std::size_t>(high - low + 1) * sizeof(T), std::move(name),
                       writable}};
}

/// A raw buffer as a range.
inline global_range range_of_bytes(std::string name, const void* data, std::size_t bytes,
                                   bool writable) {
  return global_range{data, bytes, std::move(name), writable};
}

}  // namespace sinkmoe::arch
