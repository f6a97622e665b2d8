#pragma once
// Fast math of the kernels' inner loops (docs/emulation.md).
//
//   exp2_ftz(x)  2^x with subnormal results flushed to 0: one MUFU.EX2 (ex2.approx.ftz.f32,
//                about 2 ulp). Without .ftz, exp2f costs four instructions (a range test and two
//                multiplies around MUFU.EX2 for subnormal results); the kernels feed it
//                probabilities, where a flushed 2^-127 is harmless.
//   rcp(x)       1 / x, rcp.approx.ftz.f32 (1 ulp): for the soft-cap's tanh, without an IEEE
//                division's slow-path checks.
//
// Emulation: the correctly rounded std::exp2 / division, with the same flush, so emulated
// results differ from the GPU's by the approximation's few ulp (inside every test tolerance).

#include <sinkmoe/cuda/arch/config.hpp>

#if !SINKMOE_ARCH_DEVICE
#include <cmath>
#endif

namespace sinkmoe::arch {

/// 2^x, subnormal results flushed to zero; exactly 0 for -inf.
SINKMOE_ARCH_FN float exp2_ftz(float x) {
#if SINKMOE_ARCH_DEVICE
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  const float y = std::exp2(x);
  return y < 1.17549435e-38f ? 0.0f : y;  // 2^-126: the smallest normal float
#endif
}

/// 1 / x (approximate on the GPU, subnormal results flushed to zero).
SINKMOE_ARCH_FN float rcp(float x) {
#if SINKMOE_ARCH_DEVICE
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  const float y = 1.0f / x;
  return std::fabs(y) < 1.17549435e-38f ? 0.0f * y : y;
#endif
}

}  // namespace sinkmoe::arch
