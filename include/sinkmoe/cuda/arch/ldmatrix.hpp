#pragma once
// ldmatrix: a warp loads one, two or four 8x8 matrices of 16-bit elements from shared memory
// straight into the register fragments that mma.sync m16n8k16 consumes (docs/design.md sections 5,
// 6). It replaces 4-byte shared loads plus shuffles when tensor-core operands come from smem.
//
// Layout (PTX ISA, "ldmatrix"): for .xN, lanes 8j .. 8j+7 give the addresses of rows 0..7 of
// matrix j (each row 8 contiguous 16-bit elements, 16 bytes, 16-byte aligned, in shared
// memory); other lanes' addresses are ignored. Register j of lane l then holds, of matrix j,
//   plain:  row l/4, columns 2*(l%4) and 2*(l%4)+1
//   .trans: column l/4, rows 2*(l%4) and 2*(l%4)+1 (the matrix is transposed on the way)
// the first element in bits 0..15. Example: x4 with lane l pointing at row (l % 16), column
// 8 * (l / 16) of a row-major 16x16 tile yields exactly the A fragment a0..a3 of mma m16n8k16.

#include <cstdint>
#include <cstring>
#include <sinkmoe/cuda/arch/config.hpp>
#include <sinkmoe/cuda/arch/geometry.hpp>
#include <sinkmoe/cuda/arch/shared_memory.hpp>
#include <sinkmoe/cuda/arch/site.hpp>

#if !SINKMOE_ARCH_DEVICE
#include <sinkmoe/cuda/arch/detail/emulator.hpp>
#endif

namespace sinkmoe::arch {

#if !SINKMOE_ARCH_DEVICE
namespace emu {

/// One lane's part of an ldmatrix: its row address and call site.
struct ldmatrix_in {
  const void* row;
  site at;
};

/// ldmatrix as a warp collective: lane l's row address goes to the leader, which reads the
/// addressed rows (each a collective read for the race detector, attributed to the lane that
/// gave its address) and distributes the elements by the fragment layout above.
template <int Count, bool Trans>
void ldmatrix(std::uint32_t (&frag)[Count], const void* row, const site& at) {
  struct result {
    std::uint32_t reg[Count];
  };
  constexpr warp_op op = Trans ? (Count == 1   ? warp_op::ldmatrix_x1_trans
                                  : Count == 2 ? warp_op::ldmatrix_x2_trans
                                               : warp_op::ldmatrix_x4_trans)
                               : (Count == 1   ? warp_op::ldmatrix_x1
                                  : Count == 2 ? warp_op::ldmatrix_x2
                                               : warp_op::ldmatrix_x4);
  const result r =
      warp_collective<result>(op, ldmatrix_in{row, at}, [](const auto& rows, auto& outs) {
        block_state& b = current_block();
        const unsigned first_rank = current_thread().warp * k_warp_size;
        for (int lane = 0; lane < 8 * Count; ++lane) {
          shared_access(b, first_rank + lane, rows[lane].row, 16, smem_access::collective_read,
                        rows[lane].at);
        }
        // element(j, r, c): matrix j, row r (as addressed), column c.
        const auto element = [&](int j, int r, int c) {
          std::uint16_t e;
          std::memcpy(&e, static_cast<const std::byte*>(rows[8 * j + r].row) + 2 * c, 2);
          return static_cast<std::uint32_t>(e);
        };
        for (int lane = 0; lane < k_warp_size; ++lane) {
          const int group = lane / 4, pair = 2 * (lane % 4);
          for (int j = 0; j < Count; ++j) {
            outs[lane].reg[j] = Trans
                                    ? element(j, pair, group) | (element(j, pair + 1, group) << 16)
                                    : element(j, group, pair) | (element(j, group, pair + 1) << 16);
          }
        }
      });
  for (int j = 0; j < Count; ++j) frag[j] = r.reg[j];
}

}  // namespace emu
#endif

/// ldmatrix .x1: one 8x8 b16 matrix; lanes 0..7 give the row addresses.
SINKMOE_ARCH_FN void ldmatrix_x1(std::uint32_t (&frag)[1], const void* row,
                                 site at = site::current()) {
#if SINKMOE_ARCH_DEVICE
  (void)at;
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n"
               : "=r"(frag[0])
               : "r"(detail::smem_address(row)));
#else
  emu::ldmatrix<1, false>(frag, row, at);
#endif
}

/// ldmatrix .x2: two 8x8 b16 matrices; lanes 0..15 give the row addresses.
SINKMOE_ARCH_FN void ldmatrix_x2(std::uint32_t (&frag)[2], const void* row,
                                 site at = site::current()) {
#if SINKMOE_ARCH_DEVICE
  (void)at;
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(frag[0]), "=r"(frag[1])
               : "r"(detail::smem_address(row)));
#else
  emu::ldmatrix<2, false>(frag, row, at);
#endif
}

/// ldmatrix .x4: four 8x8 b16 matrices; all 32 lanes give row addresses.
SINKMOE_ARCH_FN void ldmatrix_x4(std::uint32_t (&frag)[4], const void* row,
                                 site at = site::current()) {
#if SINKMOE_ARCH_DEVICE
  (void)at;
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(frag[0]), "=r"(frag[1]), "=r"(frag[2]), "=r"(frag[3])
               : "r"(detail::smem_address(row)));
#else
  emu::ldmatrix<4, false>(frag, row, at);
#endif
}

/// ldmatrix .x1.trans: as ldmatrix_x1, each matrix transposed.
SINKMOE_ARCH_FN void ldmatrix_x1_trans(std::uint32_t (&frag)[1], const void* row,
                                       site at = site::current()) {
#if SINKMOE_ARCH_DEVICE
  (void)at;
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
               : "=r"(frag[0])
               : "r"(detail::smem_address(row)));
#else
  emu::ldmatrix<1, true>(frag, row, at);
#endif
}

/// ldmatrix .x2.trans: as ldmatrix_x2, each matrix transposed.
SINKMOE_ARCH_FN void ldmatrix_x2_trans(std::uint32_t (&frag)[2], const void* row,
                                       site at = site::current()) {
#if SINKMOE_ARCH_DEVICE
  (void)at;
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(frag[0]), "=r"(frag[1])
               : "r"(detail::smem_address(row)));
#else
  emu::ldmatrix<2, true>(frag, row, at);
#endif
}

/// ldmatrix .x4.trans: as ldmatrix_x4, each matrix transposed (B operands stored k-major,
/// e.g. V in O = P V).
SINKMOE_ARCH_FN void ldmatrix_x4_trans(std::uint32_t (&frag)[4], const void* row,
                                       site at = site::current()) {
#if SINKMOE_ARCH_DEVICE
  (void)at;
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(frag[0]), "=r"(frag[1]), "=r"(frag[2]), "=r"(frag[3])
               : "r"(detail::smem_address(row)));
#else
  emu::ldmatrix<4, true>(frag, row, at);
#endif
}

}  // namespace sinkmoe::arch
