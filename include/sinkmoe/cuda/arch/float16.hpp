#pragma once
// 16-bit floating-point element types of the fused kernels (bf16, fp16) and their conversions,
// usable in both builds of the primitive layer (docs/emulation.md).
//
// Under nvcc, arch::bf16 and arch::fp16 are __nv_bfloat16 and __half and the conversions are
// the toolkit's (host and device). Without nvcc (the host emulation, or any g++ code that only
// moves such data around) they are tiny storage types defined here, and the conversions are
// bit-exact software versions of the hardware's round-to-nearest-even (cvt.rn): no CUDA
// header is needed. The two-element packing matches the register layout that ldmatrix and
// mma.sync use: the first element in bits 0..15, the second in bits 16..31.

#include <bit>
#include <concepts>
#include <cstdint>
#include <sinkmoe/core/config.hpp>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace sinkmoe::arch {

namespace detail {

// ---- Software conversions: IEEE round-to-nearest-even, as cvt.rn.{bf16,f16}.f32 ----
// NaN inputs give the canonical NaN 0x7fff, as the hardware conversion does.

/// float -> bf16 bits, round to nearest even (overflow gives inf; subnormals handled alike).
constexpr std::uint16_t float_to_bf16_bits(float f) {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
  // Adding 0x7fff plus the lowest kept bit rounds the 16 dropped bits to nearest, ties to even;
  // a carry out of the mantissa correctly bumps the exponent (up to inf).
  return static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/// bf16 bits -> float (exact).
constexpr float bf16_bits_to_float(std::uint16_t b) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

/// float -> fp16 bits, round to nearest even, including the fp16 subnormal range.
constexpr std::uint16_t float_to_fp16_bits(float f) {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  const std::uint32_t sign = (u >> 16) & 0x8000u;
  const std::uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return 0x7fffu;                                      // NaN
  if (a >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // >= 65520: inf
  if (a >= 0x38800000u) {  // >= 2^-14: normal; rebias the exponent (127 -> 15), round 13 bits
    const std::uint32_t r = a - 0x38000000u;
    return static_cast<std::uint16_t>(sign | ((r + 0x0fffu + ((r >> 13) & 1u)) >> 13));
  }
  if (a <= 0x33000000u) return static_cast<std::uint16_t>(sign);  // <= 2^-25: ties to +-0
  // Subnormal result: value = mant * 2^(e - 150), in units of 2^-24 that is mant >> (126 - e).
  const std::uint32_t e = a >> 23;
  const std::uint32_t mant = (a & 0x7fffffu) | 0x800000u;
  const std::uint32_t shift = 126u - e;  // 14..24
  std::uint32_t q = mant >> shift;
  const std::uint32_t rem = mant & ((1u << shift) - 1u);
  const std::uint32_t half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (q & 1u))) ++q;  // q == 0x400 encodes 2^-14 correctly
  return static_cast<std::uint16_t>(sign | q);
}

/// fp16 bits -> float (exact).
constexpr float fp16_bits_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1fu;
  const std::uint32_t mant = h & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mant * 2^-24, exact in float
    const float magnitude = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
  return std::bit_cast<float>(sign | ((exponent + 112u) << 23) | (mant << 13));
}

}  // namespace detail

#if defined(__CUDACC__)

/// bfloat16 element type: the toolkit's type under nvcc.
using bf16 = __nv_bfloat16;
/// IEEE half element type: the toolkit's type under nvcc.
using fp16 = __half;

/// Raw bits of a bf16 value.
SINKMOE_HD inline std::uint16_t to_bits(bf16 v) { return static_cast<__nv_bfloat16_raw>(v).x; }
/// Raw bits of an fp16 value.
SINKMOE_HD inline std::uint16_t to_bits(fp16 v) { return static_cast<__half_raw>(v).x; }

/// The value with raw bits `bits`.
template <class T>
SINKMOE_HD inline T from_bits(std::uint16_t bits) {
  if constexpr (std::same_as<T, bf16>) {
    __nv_bfloat16_raw raw;
    raw.x = bits;
    return bf16(raw);
  } else {
    __half_raw raw;
    raw.x = bits;
    return fp16(raw);
  }
}

/// Exact widening to float.
SINKMOE_HD inline float to_float(bf16 v) { return __bfloat162float(v); }
/// Exact widening to float.
SINKMOE_HD inline float to_float(fp16 v) { return __half2float(v); }

#else  // host build: software storage types

/// bfloat16 storage: 1 sign, 8 exponent, 7 mantissa bits. Arithmetic goes through float.
struct bf16 {
  std::uint16_t bits;
};
/// IEEE binary16 storage: 1 sign, 5 exponent, 10 mantissa bits.
struct fp16 {
  std::uint16_t bits;
};

/// Raw bits of a bf16 value.
constexpr std::uint16_t to_bits(bf16 v) { return v.bits; }
/// Raw bits of an fp16 value.
constexpr std::uint16_t to_bits(fp16 v) { return v.bits; }

/// The value with raw bits `bits`.
template <class T>
constexpr T from_bits(std::uint16_t bits) {
  return T{bits};
}

/// Exact widening to float.
constexpr float to_float(bf16 v) { return detail::bf16_bits_to_float(v.bits); }
/// Exact widening to float.
constexpr float to_float(fp16 v) { return detail::fp16_bits_to_float(v.bits); }

#endif

/// bf16 or fp16: the input types of mma.sync m16n8k16 in this layer.
template <class T>
concept half_precision = std::same_as<T, bf16> || std::same_as<T, fp16>;

/// Identity, so that kernel code can call to_float on float accumulators too.
SINKMOE_HD constexpr float to_float(float v) { return v; }

/// float -> T, round to nearest even (T = bf16, fp16 or float).
template <class T>
SINKMOE_HD inline T from_float(float v) {
  if constexpr (std::same_as<T, float>) {
    return v;
  } else {
#if defined(__CUDACC__)
    if constexpr (std::same_as<T, bf16>) {
      return __float2bfloat16_rn(v);
    } else {
      static_assert(std::same_as<T, fp16>, "from_float<T>: T must be bf16, fp16 or float");
      return __float2half_rn(v);
    }
#else
    if constexpr (std::same_as<T, bf16>) {
      return bf16{detail::float_to_bf16_bits(v)};
    } else {
      static_assert(std::same_as<T, fp16>, "from_float<T>: T must be bf16, fp16 or float");
      return fp16{detail::float_to_fp16_bits(v)};
    }
#endif
  }
}

/// Two 16-bit values in one 32-bit register: `lo` in bits 0..15, `hi` in bits 16..31 (the
/// element order of ldmatrix and mma fragments).
template <half_precision T>
SINKMOE_HD inline std::uint32_t pack2(T lo, T hi) {
  return static_cast<std::uint32_t>(to_bits(lo)) | (static_cast<std::uint32_t>(to_bits(hi)) << 16);
}

/// Rounds two floats to T (nearest even) and packs them as pack2(lo, hi).
template <half_precision T>
SINKMOE_HD inline std::uint32_t pack2(float lo, float hi) {
#if defined(__CUDA_ARCH__)
  // One cvt.rn.{bf16x2,f16x2}.f32 instead of two conversions and a shift.
  if constexpr (std::same_as<T, bf16>) {
    const __nv_bfloat162 pair = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const std::uint32_t*>(&pair);
  } else {
    const __half2 pair = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const std::uint32_t*>(&pair);
  }
#else
  return pack2<T>(from_float<T>(lo), from_float<T>(hi));
#endif
}

/// Element `i` (0: bits 0..15, 1: bits 16..31) of a packed pair, widened to float.
template <half_precision T>
SINKMOE_HD inline float unpack(std::uint32_t packed, int i) {
  return to_float(from_bits<T>(static_cast<std::uint16_t>(packed >> (16 * i))));
}

}  // namespace sinkmoe::arch
