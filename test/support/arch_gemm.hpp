// A small tiled GEMM written only against the primitive layer (sinkmoe/cuda/arch), the
// smallest kernel that exercises everything the fused attention kernels will: dynamic shared
// memory carved into pipeline stages, cp.async staging with commit/wait, block barriers,
// ldmatrix (plain for A, .trans for a k-major B) and chains of mma.sync m16n8k16.
//
// test_arch_emulation runs it through the host emulation against a reference GEMM;
// cuda_arch_compile.cu instantiates it as a real __global__ for sm_90a and sm_80, so both
// implementations of the layer compile the same kernel source.
//
//   C (M x N, fp32, row-major) = A (M x K, T, row-major) * B (K x N, T, row-major)
//
// Block tile 64 x 64, k-tile 32, 4 warps; warp w owns rows 16w .. 16w+15 of the block tile
// and all 64 columns (8 n-tiles of 8). Two-stage cp.async pipeline. M and N must be multiples
// of 64, K of 32; the grid is (N / 64, M / 64).
#pragma once

#include <cstddef>
#include <cstdint>
#include <sinkmoe/cuda/arch/arch.hpp>

namespace sinkmoe::testing {

template <sinkmoe::arch::half_precision T>
struct tiled_gemm_kernel {
  static constexpr int k_block_m = 64;
  static constexpr int k_block_n = 64;
  static constexpr int k_block_k = 32;
  static constexpr int k_warps = 4;
  static constexpr int k_threads = 32 * k_warps;
  static constexpr int k_stages = 2;
  // launch.hpp reads these for __launch_bounds__.
  static constexpr int k_max_threads = k_threads;
  static constexpr int k_min_blocks = 1;
  // Shared rows padded by 8 elements (16 bytes): ldmatrix's 8 row addresses then fall in
  // different banks, and every row stays 16-byte aligned for cp.async and ldmatrix.
  static constexpr int k_a_stride = k_block_k + 8;
  static constexpr int k_b_stride = k_block_n + 8;
  static constexpr int k_a_tile = k_block_m * k_a_stride;  // elements per stage
  static constexpr int k_b_tile = k_block_k * k_b_stride;
  static constexpr int k_chunk = 8;  // elements per 16-byte cp.async
  /// Dynamic shared memory a launch needs.
  static constexpr std::size_t smem_bytes = k_stages * (k_a_tile + k_b_tile) * sizeof(T);

  SINKMOE_DEVICE void operator()(const T* a, const T* b, float* c, int m, int n, int k) const {
    namespace arch = sinkmoe::arch;
    (void)m;
    T* smem = arch::dynamic_smem<T>();
    const int rank = arch::thread_rank();
    const int warp = arch::warp_id();
    const int lane = arch::lane_id();
    const int row0 = static_cast<int>(arch::block_index().y) * k_block_m;
    const int col0 = static_cast<int>(arch::block_index().x) * k_block_n;
    const int k_tiles = k / k_block_k;

    // Issues the copies of k-tile kt into stage s and commits them as one group.
    const auto load_tile = [&](int kt, int s) {
      T* a_stage = smem + s * (k_a_tile + k_b_tile);
      T* b_stage = a_stage + k_a_tile;
      constexpr int a_chunks_per_row = k_block_k / k_chunk;
      for (int i = rank; i < k_block_m * a_chunks_per_row; i += k_threads) {
        const int r = i / a_chunks_per_row, ch = i % a_chunks_per_row;
        arch::cp_async(a_stage + r * k_a_stride + ch * k_chunk,
                       a + static_cast<std::size_t>(row0 + r) * k + kt * k_block_k + ch * k_chunk);
      }
      constexpr int b_chunks_per_row = k_block_n / k_chunk;
      for (int i = rank; i < k_block_k * b_chunks_per_row; i += k_threads) {
        const int r = i / b_chunks_per_row, ch = i % b_chunks_per_row;
        arch::cp_async(b_stage + r * k_b_stride + ch * k_chunk,
                       b + static_cast<std::size_t>(kt * k_block_k + r) * n + col0 + ch * k_chunk);
      }
      arch::cp_async_commit_group();
    };

    float acc[8][4] = {};
    load_tile(0, 0);
    for (int kt = 0; kt < k_tiles; ++kt) {
      // Prefetch the next tile into the other stage (freed by the barrier that ended the
      // previous iteration); an empty group in the tail keeps wait_group<1> uniform.
      if (kt + 1 < k_tiles) {
        load_tile(kt + 1, (kt + 1) % k_stages);
      } else {
        arch::cp_async_commit_group();
      }
      arch::cp_async_wait_group<1>();  // tile kt has landed (this thread's copies)
      arch::sync_block();              // ... and everyone else's
      const T* a_stage = smem + (kt % k_stages) * (k_a_tile + k_b_tile);
      const T* b_stage = a_stage + k_a_tile;
      SINKMOE_ARCH_UNROLL
      for (int kk = 0; kk < k_block_k; kk += 16) {
        // A fragment: lanes 0-15 address rows 0-15 at column kk, lanes 16-31 at kk + 8.
        std::uint32_t a_frag[4];
        arch::ldmatrix_x4(a_frag,
                          a_stage + (warp * 16 + lane % 16) * k_a_stride + kk + (lane / 16) * 8);
        SINKMOE_ARCH_UNROLL
        for (int j = 0; j < 8; j += 2) {
          // B fragments of n-tiles j and j+1 in one x4.trans: matrices (k 0-7, tile j),
          // (k 8-15, tile j), (k 0-7, tile j+1), (k 8-15, tile j+1).
          std::uint32_t b_frag[4];
          arch::ldmatrix_x4_trans(b_frag, b_stage +
                                              (kk + lane % 8 + ((lane / 8) % 2) * 8) * k_b_stride +
                                              j * 8 + (lane / 16) * 8);
          const std::uint32_t b_lo[2] = {b_frag[0], b_frag[1]};
          const std::uint32_t b_hi[2] = {b_frag[2], b_frag[3]};
          arch::mma_m16n8k16<T>(acc[j], a_frag, b_lo);
          arch::mma_m16n8k16<T>(acc[j + 1], a_frag, b_hi);
        }
      }
      arch::sync_block();  // everyone is done with this stage before it is refilled
    }

    // Accumulator layout: acc[j][0..1] = C[g][8j + 2t, +1], acc[j][2..3] = C[g + 8][...].
    const int g = lane / 4, t = lane % 4;
    const int row = row0 + warp * 16 + g;
    SINKMOE_ARCH_UNROLL
    for (int j = 0; j < 8; ++j) {
      const int col = col0 + j * 8 + 2 * t;
      arch::store_global(c + static_cast<std::size_t>(row) * n + col, acc[j][0]);
      arch::store_global(c + static_cast<std::size_t>(row) * n + col + 1, acc[j][1]);
      arch::store_global(c + static_cast<std::size_t>(row + 8) * n + col, acc[j][2]);
      arch::store_global(c + static_cast<std::size_t>(row + 8) * n + col + 1, acc[j][3]);
    }
  }
};

}  // namespace sinkmoe::testing
