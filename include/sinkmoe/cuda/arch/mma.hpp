#pragma once
// mma.sync m16n8k16 with bf16 or fp16 inputs and fp32 accumulation: the tensor-core step of
// the fused kernels on sm_80 and later (docs/design.md section 5; S = Q K^T and O = P V are chains
// of it). D (16x8) = A (16x16, row-major) * B (16x8, column-major) + C.
//
// Fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"), with
// g = lane / 4 (groupID) and t = lane % 4 (threadID_in_group); each 32-bit register of A and B
// holds two consecutive 16-bit elements, the first in bits 0..15:
//   A: a[0] = A[g][2t, 2t+1]    a[1] = A[g+8][2t, 2t+1]
//      a[2] = A[g][2t+8, 2t+9]  a[3] = A[g+8][2t+8, 2t+9]
//   B: b[0] = B[2t, 2t+1][g]    b[1] = B[2t+8, 2t+9][g]
//   C, D: c[0] = C[g][2t]  c[1] = C[g][2t+1]  c[2] = C[g+8][2t]  c[3] = C[g+8][2t+1]
//
// Numerics of the emulation: each product of two bf16 or fp16 values is exact in fp32 (8x8 and
// 11x11 significand bits; for bf16 as long as it stays in fp32's normal range), and the 16
// products are added to C one at a time, k = 0..15, in fp32 with round-to-nearest-even. A chain
// of emulated mma over k therefore equals, bit for bit, the plain sequential fp32 dot product
// c + a0 b0 + a1 b1 + ... . The tensor cores add in a different, unspecified order and
// rounding, so GPU results agree with it to fp32 rounding of a reordered sum, not bitwise.

#include <concepts>
#include <cstdint>
#include <sinkmoe/cuda/arch/config.hpp>
#include <sinkmoe/cuda/arch/float16.hpp>
#include <sinkmoe/cuda/arch/geometry.hpp>

#if !SINKMOE_ARCH_DEVICE
#include <sinkmoe/cuda/arch/detail/emulator.hpp>
#endif

namespace sinkmoe::arch {

#if !SINKMOE_ARCH_DEVICE
namespace emu {

/// One lane's mma operands.
struct mma_in {
  std::uint32_t a[4];
  std::uint32_t b[2];
  float c[4];
};

/// One lane's mma result.
struct mma_out {
  float d[4];
};

/// mma.sync m16n8k16 as a warp collective: the leader rebuilds A, B and C from the 32 lanes'
/// fragments, multiplies, and hands each lane its part of D.
template <half_precision T>
void mma_m16n8k16(float (&d)[4], const std::uint32_t (&a)[4], const std::uint32_t (&b)[2],
                  const float (&c)[4]) {
  mma_in in;
  for (int i = 0; i < 4; ++i) in.a[i] = a[i];
  for (int i = 0; i < 2; ++i) in.b[i] = b[i];
  for (int i = 0; i < 4; ++i) in.c[i] = c[i];
  constexpr warp_op op = std::same_as<T, bf16> ? warp_op::mma_bf16 : warp_op::mma_fp16;
  const mma_out out = warp_collective<mma_out>(op, in, [](const auto& ins, auto& outs) {
    float a_tile[16][16], b_tile[16][8], c_tile[16][8];
    for (int lane = 0; lane < k_warp_size; ++lane) {
      const int g = lane / 4, t = lane % 4;
      const mma_in& f = ins[lane];
      for (int e = 0; e < 2; ++e) {
        a_tile[g][2 * t + e] = unpack<T>(f.a[0], e);
        a_tile[g + 8][2 * t + e] = unpack<T>(f.a[1], e);
        a_tile[g][2 * t + 8 + e] = unpack<T>(f.a[2], e);
        a_tile[g + 8][2 * t + 8 + e] = unpack<T>(f.a[3], e);
        b_tile[2 * t + e][g] = unpack<T>(f.b[0], e);
        b_tile[2 * t + 8 + e][g] = unpack<T>(f.b[1], e);
        c_tile[g][2 * t + e] = f.c[e];
        c_tile[g + 8][2 * t + e] = f.c[2 + e];
      }
    }
    for (int lane = 0; lane < k_warp_size; ++lane) {
      const int g = lane / 4, t = lane % 4;
      for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
        float sum = c_tile[row][col];
        // The product is exact (header comment), so a contracted fma rounds identically.
        for (int k = 0; k < 16; ++k) sum += a_tile[row][k] * b_tile[k][col];
        outs[lane].d[i] = sum;
      }
    }
    ++current_block().stats->mma;
  });
  for (int i = 0; i < 4; ++i) d[i] = out.d[i];
}

}  // namespace emu
#endif

/// D = A * B + C for one warp (m16n8k16, .row.col, fp32 accumulators; T = bf16 or fp16).
/// d and c may be the same array.
template <half_precision T>
SINKMOE_ARCH_FN void mma_m16n8k16(float (&d)[4], const std::uint32_t (&a)[4],
                                  const std::uint32_t (&b)[2], const float (&c)[4]) {
#if SINKMOE_ARCH_DEVICE
  if constexpr (std::same_as<T, bf16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
          "f"(c[2]), "f"(c[3]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
          "f"(c[2]), "f"(c[3]));
  }
#else
  emu::mma_m16n8k16<T>(d, a, b, c);
#endif
}

/// acc += A * B for one warp: mma_m16n8k16 accumulating in place.
template <half_precision T>
SINKMOE_ARCH_FN void mma_m16n8k16(float (&acc)[4], const std::uint32_t (&a)[4],
                                  const std::uint32_t (&b)[2]) {
  mma_m16n8k16<T>(acc, a, b, acc);
}

}  // namespace sinkmoe::arch
