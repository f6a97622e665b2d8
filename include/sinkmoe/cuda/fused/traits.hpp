#pragma once
// Kernel traits of the fused kernels: tile shapes, warps, what stays in registers, launch bounds
// and the shared-memory layout, in one place per kernel, so that a tuning change found on a GPU
// is one line here (docs/design.md, "The fused CUDA kernels").
//
// Shared-memory tiles hold rows of HeadDim 16-bit elements as 16-byte chunks, XOR-swizzled:
// chunk c of row r sits at chunk c ^ (r % 8) of the row. The 8 rows an ldmatrix phase reads (same
// logical chunk, 8 consecutive rows) then fall in 8 different 16-byte bank groups, as do the
// 8 chunks a cp.async phase writes, with no padding: a D = 128 forward needs 64 KiB, so two
// blocks fit an A100 SM (FlashAttention-2's layout; CUTLASS's Swizzle<3, 3, 3>).

#include <cstddef>
#include <sinkmoe/core/config.hpp>

namespace sinkmoe::fused {

/// A swizzled shared tile of Rows rows of HeadDim 16-bit elements (file comment).
template <int Rows, int HeadDim>
struct smem_tile {
  static_assert(HeadDim % 64 == 0, "smem_tile: the swizzle needs at least 8 chunks per row");
  static constexpr int rows = Rows;
  static constexpr int cols = HeadDim;
  static constexpr int chunks_per_row = HeadDim / 8;
  static constexpr int elements = Rows * HeadDim;
  /// Element offset of (row, col); col's chunk is swizzled, its place in the chunk kept.
  [[nodiscard]] SINKMOE_HD static constexpr int offset(int row, int col) {
    return row * HeadDim + (((col >> 3) ^ (row & 7)) << 3) + (col & 7);
  }
};

/// Threads per block of every main fused kernel: 4 warps.
inline constexpr int k_warps = 4;
inline constexpr int k_threads = k_warps * 32;

/// The fused forward. A block owns block_q query rows of one head of one sequence; warp w owns
/// rows warp_rows * w .. + warp_rows, as m_tiles blocks of 16 (FlashAttention-2's 128 x 64 tile
/// with 4 warps: each ldmatrix.x4 of K or V feeds 2 * m_tiles mma). Shared memory: Q, then one
/// K and one V tile: V(i) streams in while S = Q K(i)^T is computed, K(i + 1) while the softmax
/// and P V(i) are.
template <int HeadDim>
struct forward_traits {
  static constexpr int head_dim = HeadDim;
  static constexpr int block_q = 128;  ///< query rows per block
  static constexpr int block_k = 64;   ///< keys per tile
  static constexpr int warp_rows = block_q / k_warps;
  static constexpr int m_tiles = warp_rows / 16;  ///< 16-row blocks per warp
  static constexpr int s_tiles = block_k / 8;     ///< 8-key n-tiles of S
  static constexpr int o_tiles = HeadDim / 8;     ///< 8-channel n-tiles of O
  static constexpr int d_steps = HeadDim / 16;    ///< k-steps of S = Q K^T
  /// Q's mma fragments stay in registers across the key tiles (64 registers at D = 128 would
  /// not leave room for O; they are reloaded from shared memory there).
  static constexpr bool q_in_registers = HeadDim <= 64;
  /// __launch_bounds__ minimum blocks per SM: at D = 64, 2 keeps the kernel at or below 255
  /// registers a thread with room for 3 blocks of shared memory.
  static constexpr int min_blocks = HeadDim <= 64 ? 2 : 1;
  using q_tile = smem_tile<block_q, HeadDim>;
  using kv_tile = smem_tile<block_k, HeadDim>;
  static constexpr int k_offset = q_tile::elements;  ///< elements
  static constexpr int v_offset = k_offset + kv_tile::elements;
  static constexpr int smem_elements = v_offset + kv_tile::elements;
  /// Then key 0's score of every row (fp32): kept in shared memory, not in registers across the
  /// key loop, where D = 128 has none to spare.
  static constexpr int first_key_offset_bytes = 2 * smem_elements;
  static constexpr std::size_t smem_bytes =
      static_cast<std::size_t>(first_key_offset_bytes) + block_q * sizeof(float);
};

/// The dK/dV pass. A block owns block_k keys of one KV head; warp w owns keys warp_keys * w ..,
/// as m_tiles blocks of 16, and visits the (query head of the GQA group, query tile) items that
/// see them, block_q queries at a time. Shared memory: K, V, two stages of Q and dO and of the
/// items' row statistics.
template <int HeadDim>
struct dkdv_traits {
  static constexpr int head_dim = HeadDim;
  static constexpr int m_tiles = HeadDim <= 64 ? 2 : 1;  ///< registers: dK, dV of 16 m_tiles keys
  static constexpr int warp_keys = 16 * m_tiles;
  static constexpr int block_k = warp_keys * k_warps;
  static constexpr int block_q = 64;  ///< queries per item
  static constexpr int pass_q = 32;   ///< queries per pass over an item (registers)
  static constexpr int pass_tiles = pass_q / 8;
  static constexpr int o_tiles = HeadDim / 8;
  static constexpr int d_steps = HeadDim / 16;
  static constexpr int min_blocks = 1;
  static constexpr int stat_floats = 3 * block_q;  ///< lse (log2 units), D and key-0 terms
  using kv_tile = smem_tile<block_k, HeadDim>;
  using q_tile = smem_tile<block_q, HeadDim>;
  static constexpr int v_offset = kv_tile::elements;
  static constexpr int q_offset = 2 * kv_tile::elements;  ///< two stages of Q, then of dO
  static constexpr int do_offset = q_offset + 2 * q_tile::elements;
  static constexpr int stat_offset_bytes = 2 * (do_offset + 2 * q_tile::elements);
  static constexpr std::size_t smem_bytes =
      static_cast<std::size_t>(stat_offset_bytes) + 2 * stat_floats * sizeof(float);
};

/// The dQ pass: the forward's structure. A block owns block_q query rows; Q and dO stay in
/// shared memory, key tiles stream through two stages of K and V.
template <int HeadDim>
struct dq_traits {
  static constexpr int head_dim = HeadDim;
  static constexpr int block_q = 64;
  static constexpr int block_k = 64;
  static constexpr int warp_rows = block_q / k_warps;
  static constexpr int m_tiles = warp_rows / 16;
  static constexpr int s_tiles = block_k / 8;
  static constexpr int o_tiles = HeadDim / 8;
  static constexpr int d_steps = HeadDim / 16;
  static constexpr int min_blocks = 1;
  using q_tile = smem_tile<block_q, HeadDim>;
  using kv_tile = smem_tile<block_k, HeadDim>;
  static constexpr int do_offset = q_tile::elements;
  static constexpr int k_offset = 2 * q_tile::elements;  ///< two stages of K, then of V
  static constexpr int v_offset = k_offset + 2 * kv_tile::elements;
  static constexpr int smem_elements = v_offset + 2 * kv_tile::elements;
};

}  // namespace sinkmoe::fused
