#pragma once
// Warp shuffles and the warp reductions built on them (docs/emulation.md): the row max and
// row sum of the online softmax reduce across the 4 lanes that share a row of an mma
// accumulator (Width = 4), and full-warp reductions serve the row kernels.
//
// Semantics are CUDA's __shfl_*_sync with a full member mask, for 4-byte values (float, int,
// unsigned). Width (a power of two, <= 32) splits the warp into segments of Width lanes:
//   shfl_xor(v, m)   reads lane ^ m; a source beyond the caller's segment gives v itself
//   shfl_down(v, d)  reads lane + d; a source beyond the caller's segment gives v itself
//   shfl_idx(v, s)   reads lane s % Width of the caller's segment
// (the PTX ISA's shfl.sync with c = ((32 - Width) << 8) | 31). The emulation computes the
// source lane exactly so, and exchanges the values through the warp's buffer.
//
// Device: CUDA's __shfl_*_sync intrinsics, the toolkit's own wrappers. CCCL 13.0's
// cuda::ptx::shfl_sync_* would do too, but it is asm volatile (the compiler cannot schedule or
// merge it) and adds debug-build assertions; the intrinsics compile to the same SHFL.

#include <bit>
#include <concepts>
#include <cstdint>
#include <sinkmoe/cuda/arch/config.hpp>
#include <sinkmoe/cuda/arch/geometry.hpp>

#if !SINKMOE_ARCH_DEVICE
#include <cmath>
#include <sinkmoe/cuda/arch/detail/emulator.hpp>
#endif

namespace sinkmoe::arch {

/// The value types a shuffle moves: one 32-bit register.
template <class T>
concept shuffle_word = std::same_as<T, float> || std::same_as<T, int> || std::same_as<T, unsigned>;

/// A valid shuffle segment width.
template <int Width>
concept shuffle_width = Width >
0 && Width <= k_warp_size && (Width & (Width - 1)) == 0;

#if !SINKMOE_ARCH_DEVICE
namespace emu {

/// One lane's shuffle contribution: its value and the lane it reads from.
struct shuffle_in {
  std::uint32_t value;
  std::uint32_t source;
};

/// The shuffle as a warp collective: every lane gets the value of its source lane.
template <shuffle_word T>
T shuffle(warp_op op, T value, unsigned source) {
  const auto result = warp_collective<std::uint32_t>(
      op, shuffle_in{std::bit_cast<std::uint32_t>(value), source}, [](const auto& ins, auto& outs) {
        for (int lane = 0; lane < k_warp_size; ++lane) outs[lane] = ins[ins[lane].source].value;
      });
  return std::bit_cast<T>(result);
}

/// PTX shfl.sync source lane: j if j <= the last lane of the caller's segment, else the caller.
template <int Width>
unsigned clamp_source(unsigned lane, unsigned j) {
  const unsigned segment_last = (lane & ~static_cast<unsigned>(Width - 1)) + Width - 1;
  return j <= segment_last ? j : lane;
}

}  // namespace emu
#endif

/// __shfl_xor_sync: the value of lane (lane_id() ^ lane_mask) within the segment (butterfly).
template <int Width = k_warp_size, shuffle_word T>
requires shuffle_width<Width> SINKMOE_ARCH_FN T shfl_xor(T value, int lane_mask) {
#if SINKMOE_ARCH_DEVICE
  return __shfl_xor_sync(k_full_warp_mask, value, lane_mask, Width);
#else
  const unsigned lane = emu::current_thread().lane;
  return emu::shuffle(emu::warp_op::shfl_xor, value,
                      emu::clamp_source<Width>(lane, lane ^ static_cast<unsigned>(lane_mask)));
#endif
}

/// __shfl_down_sync: the value of lane lane_id() + delta; the last delta lanes of each segment
/// keep their own value.
template <int Width = k_warp_size, shuffle_word T>
requires shuffle_width<Width> SINKMOE_ARCH_FN T shfl_down(T value, unsigned delta) {
#if SINKMOE_ARCH_DEVICE
  return __shfl_down_sync(k_full_warp_mask, value, delta, Width);
#else
  const unsigned lane = emu::current_thread().lane;
  return emu::shuffle(emu::warp_op::shfl_down, value, emu::clamp_source<Width>(lane, lane + delta));
#endif
}

/// __shfl_sync: the value of lane (source_lane % Width) of the caller's segment (broadcast).
template <int Width = k_warp_size, shuffle_word T>
requires shuffle_width<Width> SINKMOE_ARCH_FN T shfl_idx(T value, int source_lane) {
#if SINKMOE_ARCH_DEVICE
  return __shfl_sync(k_full_warp_mask, value, source_lane, Width);
#else
  const unsigned lane = emu::current_thread().lane;
  const unsigned segment_first = lane & ~static_cast<unsigned>(Width - 1);
  return emu::shuffle(emu::warp_op::shfl_idx, value,
                      segment_first | (static_cast<unsigned>(source_lane) & (Width - 1)));
#endif
}

namespace detail {

/// max for the reductions; for float, fmax semantics (a NaN operand loses).
template <shuffle_word T>
SINKMOE_ARCH_FN T max_of(T a, T b) {
  if constexpr (std::same_as<T, float>) {
#if SINKMOE_ARCH_DEVICE
    return fmaxf(a, b);
#else
    return std::fmax(a, b);
#endif
  } else {
    return a > b ? a : b;
  }
}

}  // namespace detail

/// Sum over each segment of Width lanes (butterfly, log2(Width) shuffles). Every lane of the
/// segment gets the same, bitwise identical, result.
template <int Width = k_warp_size, shuffle_word T>
requires shuffle_width<Width> SINKMOE_ARCH_FN T warp_reduce_sum(T value) {
  SINKMOE_ARCH_UNROLL
  for (int lane_mask = Width / 2; lane_mask > 0; lane_mask /= 2) {
    value += shfl_xor<Width>(value, lane_mask);
  }
  return value;
}

/// Maximum over each segment of Width lanes (butterfly); every lane gets the result.
template <int Width = k_warp_size, shuffle_word T>
requires shuffle_width<Width> SINKMOE_ARCH_FN T warp_reduce_max(T value) {
  SINKMOE_ARCH_UNROLL
  for (int lane_mask = Width / 2; lane_mask > 0; lane_mask /= 2) {
    value = detail::max_of(value, shfl_xor<Width>(value, lane_mask));
  }
  return value;
}

}  // namespace sinkmoe::arch
