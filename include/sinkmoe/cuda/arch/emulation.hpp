#pragma once
// Host emulation of the primitive layer, for tests (design.md section 6). Include this header
// before any kernel header; it selects the emulated implementation of every primitive and
// provides arch::emulated_launch / arch::emulator. Needs Boost.Context (fibers); g++ only.
//
// How: each thread of a block is a Boost.Context fiber; one scheduler thread resumes them in a
// fixed round-robin order. sync_block and sync_warp suspend a fiber until every live thread of
// its block or warp has arrived. Shuffles, ldmatrix and mma.sync are warp collectives: each
// lane deposits its operand in the warp's exchange buffer, the last lane to arrive computes
// every lane's result per the PTX ISA's fragment layouts, and each lane takes its own. cp.async
// copies land at the wait that retires their group. Blocks run one after another. A barrier
// phase of a 128-thread block costs a few microseconds (test_arch_emulation measures it).
//
// What a passing emulated run proves: the index math (which thread loads, computes and stores
// what), tile boundaries and masking, the fragment layouts of ldmatrix and mma and the
// register bookkeeping around them, the cp.async group protocol (a read before its wait sees
// stale data), barrier placement to the extent that a missing barrier changes the deterministic
// interleaving's results, and the numerics of fp32 accumulation (to a reordering).
// What it does not prove: freedom from data races and the GPU's memory ordering (threads here
// interleave only at barriers and collectives, so a race the hardware would expose can pass),
// bank conflicts, register pressure or spills, occupancy, speed, and inter-block concurrency
// (blocks run sequentially). Those are checked on a real GPU: compute-sanitizer racecheck and
// the benchmarks in bench/device_check.sh.

#if defined(__CUDACC__)
#error "sinkmoe/cuda/arch/emulation.hpp is the host (g++) emulation; nvcc uses the device layer"
#endif

#if !defined(SINKMOE_ARCH_EMULATION)
#define SINKMOE_ARCH_EMULATION 1
#endif

#include <sinkmoe/cuda/arch/arch.hpp>
#include <sinkmoe/cuda/arch/detail/emulator.hpp>
