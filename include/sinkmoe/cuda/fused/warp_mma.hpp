#pragma once
// Warp-level tile products of the fused kernels on mma.sync m16n8k16, with operands from swizzled
// shared tiles (traits.hpp) through ldmatrix, or from registers; and the staged row stores that
// write accumulator rows to global memory in 16-byte chunks.
//
// A warp computes M row blocks of 16 at once (M = m_tiles of the kernel's traits): every B
// fragment it loads feeds 2 M mma, which is what keeps the kernels off the shared-memory
// bandwidth limit (an ldmatrix.x4 moves 512 bytes; at M = 1 it feeds only 2 mma).
//
// Fragment layouts (PTX ISA, mma.hpp, ldmatrix.hpp): accumulator acc[m][n][i] is row
// 16 m + lane / 4 + 8 (i / 2), column 8 n + 2 (lane % 4) + i % 2 of the warp's tile. Each
// accumulator element receives its k-steps in increasing order, so an emulated product equals the
// sequential fp32 dot product bit for bit (mma.hpp).

#include <cstdint>
#include <sinkmoe/core/config.hpp>
#include <sinkmoe/cuda/arch/arch.hpp>
#include <sinkmoe/cuda/fused/common.hpp>
#include <sinkmoe/cuda/fused/traits.hpp>

namespace sinkmoe::fused::warp_mma {

/// The A fragments at k-step kk of the warp's M row blocks starting at row0 of `tile`: lanes 0-15
/// address rows 0-15 of a block, lanes 16-31 the same rows 8 columns on.
template <class Tile, int M, class Element>
SINKMOE_DEVICE void load_a(std::uint32_t (&a)[M][4], const Element* tile, int row0, int kk) {
  const int lane = arch::lane_id();
  SINKMOE_ARCH_UNROLL
  for (int m = 0; m < M; ++m)
    arch::ldmatrix_x4(a[m],
                      tile + Tile::offset(row0 + 16 * m + lane % 16, kk * 16 + (lane / 16) * 8));
}

/// Every k-step's A fragments of the warp's rows (operands kept in registers).
template <class Tile, int M, int Steps, class Element>
SINKMOE_DEVICE void load_a_all(std::uint32_t (&a)[Steps][M][4], const Element* tile, int row0) {
  SINKMOE_ARCH_UNROLL
  for (int kk = 0; kk < Steps; ++kk) load_a<Tile, M>(a[kk], tile, row0, kk);
}

/// B fragments of n-tiles 2 np and 2 np + 1 at k-step kk, B stored as rows (its rows are the
/// output columns: K in S = Q K^T): matrices (rows 0-7, k 0-7), (rows 0-7, k 8-15),
/// (rows 8-15, k 0-7), (rows 8-15, k 8-15) of the 16 rows from b_row0 + 16 np.
template <class Tile, class Element>
SINKMOE_DEVICE void load_b_rows(std::uint32_t (&b)[4], const Element* tile, int row0, int kk) {
  const int lane = arch::lane_id();
  arch::ldmatrix_x4(
      b, tile + Tile::offset(row0 + lane % 8 + (lane / 16) * 8, kk * 16 + ((lane / 8) % 2) * 8));
}

/// The 2 M mma of one B fragment pair: acc[m][n0] and acc[m][n0 + 1] += a[m] . b.
template <class Element, int M, int N>
SINKMOE_DEVICE void mma_pair(float (&acc)[M][N][4], const std::uint32_t (&a)[M][4],
                             const std::uint32_t (&b)[4], int n0) {
  const std::uint32_t lo[2] = {b[0], b[1]};
  const std::uint32_t hi[2] = {b[2], b[3]};
  SINKMOE_ARCH_UNROLL
  for (int m = 0; m < M; ++m) {
    arch::mma_m16n8k16<Element>(acc[m][n0], a[m], lo);
    arch::mma_m16n8k16<Element>(acc[m][n0 + 1], a[m], hi);
  }
}

/// acc[M][N] += A . B^T: A the warp's M row blocks from a_row0 of a_tile, B rows b_row0 ..
/// b_row0 + 8 N of b_tile, over the head dim (S = Q K^T, dP = dO V^T, S^T = K Q^T, ...).
template <class ATile, class BTile, int M, int N, class Element>
SINKMOE_DEVICE void rows_by_rows(float (&acc)[M][N][4], const Element* a_tile, int a_row0,
                                 const Element* b_tile, int b_row0) {
  static_assert(N % 2 == 0, "n-tiles come in pairs (one ldmatrix.x4 each)");
  SINKMOE_ARCH_UNROLL
  for (int kk = 0; kk < ATile::cols / 16; ++kk) {
    std::uint32_t a[M][4];
    load_a<ATile>(a, a_tile, a_row0, kk);
    SINKMOE_ARCH_UNROLL
    for (int np = 0; np < N / 2; ++np) {
      std::uint32_t b[4];
      load_b_rows<BTile>(b, b_tile, b_row0 + 16 * np, kk);
      mma_pair<Element>(acc, a, b, 2 * np);
    }
  }
}

/// rows_by_rows with A's fragments already in registers (a[k-step][m][4]).
template <class BTile, int M, int N, int Steps, class Element>
SINKMOE_DEVICE void frags_by_rows(float (&acc)[M][N][4], const std::uint32_t (&a)[Steps][M][4],
                                  const Element* b_tile, int b_row0) {
  SINKMOE_ARCH_UNROLL
  for (int kk = 0; kk < Steps; ++kk) {
    SINKMOE_ARCH_UNROLL
    for (int np = 0; np < N / 2; ++np) {
      std::uint32_t b[4];
      load_b_rows<BTile>(b, b_tile, b_row0 + 16 * np, kk);
      mma_pair<Element>(acc, a[kk], b, 2 * np);
    }
  }
}

/// acc[M][O] += X . B: X an accumulator tile x[M][N] (fp32, rounded to Element: the registers of
/// n-tiles 2 kc and 2 kc + 1 are exactly the A fragment of columns 16 kc ..), B rows b_row0 ..
/// b_row0 + 8 N of a k-major tile read with ldmatrix .trans (O += P V, dV += P^T dO,
/// dK += dS^T Q, dQ += dS K).
template <class BTile, int M, int N, int O, class Element>
SINKMOE_DEVICE void acc_by_rows(float (&acc)[M][O][4], const float (&x)[M][N][4],
                                const Element* b_tile, int b_row0) {
  const int lane = arch::lane_id();
  SINKMOE_ARCH_UNROLL
  for (int kc = 0; kc < N / 2; ++kc) {
    std::uint32_t a[M][4];
    SINKMOE_ARCH_UNROLL
    for (int m = 0; m < M; ++m) {
      a[m][0] = arch::pack2<Element>(x[m][2 * kc][0], x[m][2 * kc][1]);
      a[m][1] = arch::pack2<Element>(x[m][2 * kc][2], x[m][2 * kc][3]);
      a[m][2] = arch::pack2<Element>(x[m][2 * kc + 1][0], x[m][2 * kc + 1][1]);
      a[m][3] = arch::pack2<Element>(x[m][2 * kc + 1][2], x[m][2 * kc + 1][3]);
    }
    SINKMOE_ARCH_UNROLL
    for (int dp = 0; dp < O / 2; ++dp) {
      std::uint32_t b[4];
      arch::ldmatrix_x4_trans(
          b, b_tile + BTile::offset(b_row0 + kc * 16 + lane % 8 + ((lane / 8) % 2) * 8,
                                    dp * 16 + (lane / 16) * 8));
      mma_pair<Element>(acc, a, b, 2 * dp);
    }
  }
}

/// Stages two output elements (row, col and col + 1 of the warp's rows) in a shared tile as one
/// 32-bit store.
template <class Tile, class Element>
SINKMOE_DEVICE void stage_pair(Element* tile, int row, int col, float lo, float hi) {
  arch::store_shared(reinterpret_cast<std::uint32_t*>(tile + Tile::offset(row, col)),
                     arch::pack2<Element>(lo, hi));
}

/// Copies rows row0 .. row0 + Rows of a staged shared tile to global rows dst, dst + row_stride,
/// ..., in 16-byte chunks; rows from valid_rows on are not written. The warp's lanes split the
/// chunks; call after a sync_warp that follows the staging stores.
template <class Tile, int Rows, class Element>
SINKMOE_DEVICE void copy_rows_out(const Element* tile, int row0, Element* dst, index_t row_stride,
                                  int valid_rows) {
  constexpr int chunks = Tile::chunks_per_row;
  SINKMOE_ARCH_UNROLL
  for (int i = arch::lane_id(); i < Rows * chunks; i += arch::k_warp_size) {
    const int r = i / chunks, c = i % chunks;
    if (r >= valid_rows) continue;
    arch::store_global(
        reinterpret_cast<chunk16*>(dst + static_cast<index_t>(r) * row_stride + c * 8),
        arch::load_shared(reinterpret_cast<const chunk16*>(tile + Tile::offset(row0 + r, c * 8))));
  }
}

/// Writes the warp's M x 16 accumulator rows, times factor, as Element rows of a [B, T, H, D]
/// tensor (dst: the first row's), staged through the warp's own rows row0 .. of a shared tile.
template <class Tile, int M, int O, class Element>
SINKMOE_DEVICE void store_rows(const float (&acc)[M][O][4], float factor, Element* staging,
                               int row0, Element* dst, index_t row_stride, int valid_rows) {
  const int lane = arch::lane_id();
  SINKMOE_ARCH_UNROLL
  for (int m = 0; m < M; ++m) SINKMOE_ARCH_UNROLL
  for (int n = 0; n < O; ++n) SINKMOE_ARCH_UNROLL
  for (int r = 0; r < 2; ++r)
    stage_pair<Tile>(staging, row0 + 16 * m + lane / 4 + 8 * r, 8 * n + 2 * (lane % 4),
                     acc[m][n][2 * r] * factor, acc[m][n][2 * r + 1] * factor);
  arch::sync_warp();
  copy_rows_out<Tile, 16 * M>(staging, row0, dst, row_stride, valid_rows);
}

}  // namespace sinkmoe::fused::warp_mma
