#pragma once
// The primitive layer of the CUDA backend (docs/emulation.md): everything the kernels may use to
// touch the hardware. Kernel code uses only these (no threadIdx, __shared__, __syncthreads,
// __shfl_*, inline PTX of its own, no plain dereference of a shared or global pointer), so that
// the same code compiles for the GPU under nvcc and runs on the CPU in the fiber emulation the
// tests use (emulation.hpp), which checks every memory access.
//
//   geometry.hpp       index3, k_warp_size
//   index.hpp          thread_index, block_index, block_dim, grid_dim, thread_rank, lane_id,
//                      warp_id
//   site.hpp           site (the call site every checked primitive takes)
//   shared_memory.hpp  dynamic_smem<T>
//   memory.hpp         load_shared, store_shared, load_global, store_global
//   sync.hpp           sync_block, sync_warp
//   shuffle.hpp        shfl_xor, shfl_down, shfl_idx, warp_reduce_sum, warp_reduce_max
//   ldmatrix.hpp       ldmatrix_x{1,2,4}[_trans]
//   mma.hpp            mma_m16n8k16<bf16|fp16> (fp32 accumulators)
//   cp_async.hpp       cp_async, cp_async_zfill, cp_async_commit_group, cp_async_wait_group<N>,
//                      cp_async_wait_all
//   float16.hpp        bf16, fp16, to_float, from_float, pack2, unpack
//   launch.hpp         (nvcc) kernel_entry, launch<Kernel>

#include <sinkmoe/cuda/arch/config.hpp>
#include <sinkmoe/cuda/arch/cp_async.hpp>
#include <sinkmoe/cuda/arch/float16.hpp>
#include <sinkmoe/cuda/arch/geometry.hpp>
#include <sinkmoe/cuda/arch/index.hpp>
#include <sinkmoe/cuda/arch/ldmatrix.hpp>
#include <sinkmoe/cuda/arch/memory.hpp>
#include <sinkmoe/cuda/arch/mma.hpp>
#include <sinkmoe/cuda/arch/shared_memory.hpp>
#include <sinkmoe/cuda/arch/shuffle.hpp>
#include <sinkmoe/cuda/arch/site.hpp>
#include <sinkmoe/cuda/arch/sync.hpp>

#if SINKMOE_ARCH_DEVICE
#include <sinkmoe/cuda/arch/launch.hpp>
#endif
