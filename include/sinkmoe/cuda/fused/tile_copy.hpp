#pragma once
// The tile loader of the fused kernels: rows of one head of a [B, T, H, D] tensor to a swizzled
// shared tile (traits.hpp) with 16-byte cp.async, rows past the valid ones zero-filled (past a
// sequence's end, or the next sequence of a varlen batch).
//
// Each thread copies the same chunk column of rows r0, r0 + rows_per_pass, ...: its source
// address is computed once and stepped by a constant, its shared offsets are compile-time steps,
// and the copy count per thread is a compile-time constant, so the loop unrolls into a few
// instructions per 16-byte copy (a loop over a flat index costs about 30: a division, a
// remainder and a 64-bit multiply each).

#include <sinkmoe/core/config.hpp>
#include <sinkmoe/cuda/arch/arch.hpp>
#include <sinkmoe/cuda/fused/common.hpp>
#include <sinkmoe/cuda/fused/traits.hpp>

namespace sinkmoe::fused {

/// Copies Tile::rows rows of a [B, T, H, D] tensor into a shared tile (file comment).
template <class Tile, int Threads = k_threads>
struct tile_copy {
  static constexpr int chunks = Tile::rows * Tile::chunks_per_row;
  static_assert(chunks % Threads == 0 && Threads % Tile::chunks_per_row == 0,
                "tile_copy: every thread copies the same number of chunks of one column");
  static constexpr int per_thread = chunks / Threads;
  static constexpr int rows_per_pass = Threads / Tile::chunks_per_row;

  /// Issues the copies of rows [first_row, first_row + Tile::rows) of `rows`, of which the first
  /// `valid_rows` exist; `any_aligned` is a 16-byte aligned address of the tensor that a
  /// zero-filling copy may name without reading it. Does not commit.
  template <class Element>
  SINKMOE_DEVICE static void issue(Element* tile, strided_ref<const Element> rows, int batch,
                                   int head, int first_row, int valid_rows,
                                   const Element* any_aligned,
                                   arch::site at = arch::site::current()) {
    const int rank = arch::thread_rank();
    const int chunk = rank % Tile::chunks_per_row;
    const int r0 = rank / Tile::chunks_per_row;
    const index_t step = static_cast<index_t>(rows_per_pass) * rows.stride[1];
    const Element* src = rows.at(batch, first_row + r0, head) + chunk * 8;
    SINKMOE_ARCH_UNROLL
    for (int j = 0; j < per_thread; ++j) {
      const int r = r0 + j * rows_per_pass;
      const bool valid = r < valid_rows;
      arch::cp_async_zfill(tile + Tile::offset(r, chunk * 8), valid ? src : any_aligned, valid, at);
      src += step;
    }
  }
};

}  // namespace sinkmoe::fused
