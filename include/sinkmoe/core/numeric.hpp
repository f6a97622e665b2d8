#pragma once
// Numeric helpers shared by every backend: accumulation types, -inf, stable exp/log forms.
// All are SINKMOE_HD so the CPU backend and the kernels round the same way.

#include <math.h>

#include <sinkmoe/core/config.hpp>
#include <type_traits>

namespace sinkmoe {

/// Accumulation type for an element type: double stays double, everything else uses float.
template <class T>
using accum_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

/// Element -> accumulator conversion; the CUDA backend adds overloads for __half and bfloat16.
template <class Acc, class T>
SINKMOE_HD inline Acc to_accum(T value) {
  return static_cast<Acc>(value);
}
/// Accumulator -> element conversion (round to nearest).
template <class T, class Acc>
SINKMOE_HD inline T from_accum(Acc value) {
  return static_cast<T>(value);
}

namespace math {

template <class F>
SINKMOE_HD inline constexpr F neg_inf() {
  if constexpr (std::is_same_v<F, float>)
    return -__builtin_huge_valf();
  else
    return -__builtin_huge_val();
}

SINKMOE_HD inline float exp(float x) { return ::expf(x); }
SINKMOE_HD inline double exp(double x) { return ::exp(x); }
SINKMOE_HD inline float log(float x) { return ::logf(x); }
SINKMOE_HD inline double log(double x) { return ::log(x); }
SINKMOE_HD inline float log1p(float x) { return ::log1pf(x); }
SINKMOE_HD inline double log1p(double x) { return ::log1p(x); }
SINKMOE_HD inline float expm1(float x) { return ::expm1f(x); }
SINKMOE_HD inline double expm1(double x) { return ::expm1(x); }
/// tanh. On the GPU in float: 1 - 2 / (1 + e^2x) with the fast exponential and division
/// (MUFU.EX2, MUFU.RCP; absolute error about 1e-7, which is what a soft-capped logit needs),
/// instead of libdevice's accurate tanhf; elsewhere the C library's.
SINKMOE_HD inline float tanh(float x) {
#if defined(__CUDA_ARCH__)
  return 1.0f - __fdividef(2.0f, 1.0f + __expf(2.0f * x));
#else
  return ::tanhf(x);
#endif
}
SINKMOE_HD inline double tanh(double x) { return ::tanh(x); }
SINKMOE_HD inline float sqrt(float x) { return ::sqrtf(x); }
SINKMOE_HD inline double sqrt(double x) { return ::sqrt(x); }
template <class F>
SINKMOE_HD inline F max(F a, F b) {
  return a > b ? a : b;
}
template <class F>
SINKMOE_HD inline F min(F a, F b) {
  return a < b ? a : b;
}
/// max for floats without NaN (row maxima, masked logits): one FMNMX on the GPU, where a
/// ternary compiles to a compare and a select.
SINKMOE_HD inline float max(float a, float b) {
#if defined(__CUDA_ARCH__)
  return fmaxf(a, b);
#else
  return a > b ? a : b;
#endif
}
template <class F>
SINKMOE_HD inline bool is_finite(F x) {
  return x - x == F(0);  // false for inf and NaN, without <cmath> in device code
}

/// exp(x - m) that is 0 when both are -inf (fully masked rows) instead of NaN.
template <class F>
SINKMOE_HD inline F exp_shifted(F x, F m) {
  return m == neg_inf<F>() ? F(0) : exp(x - m);
}

/// log(exp(a) + exp(b)) without overflow; -inf when both are -inf.
template <class F>
SINKMOE_HD inline F logaddexp(F a, F b) {
  const F hi = max(a, b);
  if (hi == neg_inf<F>()) return hi;
  const F lo = min(a, b);
  return hi + log1p(exp(lo - hi));
}

/// exp_poly's core for a float or a float vector V (GCC vector extension): n = round(x / ln 2)
/// and the polynomial p ~ exp(x - n ln 2) of an already clamped x, so that exp(x) = p 2^n. One
/// copy of the coefficients for the scalar and the vector forms (host/tile_ops.hpp), which
/// therefore agree bit for bit.
template <class V>
inline V exp_poly_core(V clamped, V& n) {
  // Round to nearest by the 1.5 * 2^23 trick: vectorises without -fno-trapping-math, which
  // floorf needs (otherwise GCC emits a libm call per element).
  const V round_magic = V{} + 12582912.0f;
  n = (clamped * 1.44269504088896341f + round_magic) - round_magic;
  V r = clamped - n * 0.693359375f;
  r -= n * -2.12194440e-4f;
  const V r2 = r * r;
  V p = V{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * r2 + r + 1.0f;
}

/// exp(x) for float as straight-line arithmetic the compiler inlines and vectorises: Cephes'
/// polynomial after reduction by ln 2, about 1 ulp; exactly 0 below -87 (so -inf gives 0, never
/// NaN), clamped at 88. The host's hot loops use it (host/tile_ops.hpp runs the same core on
/// vectors); a libm expf there is a call per element.
inline float exp_poly(float x) {  // host code (sigmoid calls it only there)
  const float clamped = min(max(x, -87.0f), 88.0f);
  float n;
  const float p = exp_poly_core(clamped, n);
  const float scale = __builtin_bit_cast(float, (static_cast<int>(n) + 127) << 23);
  // A select between constants, then a multiply: GCC does not if-convert a select whose arm
  // holds a floating-point operation under its default -ftrapping-math, which would leave the
  // whole loop scalar.
  const float keep = x < -87.0f ? 0.0f : 1.0f;
  return p * scale * keep;
}

/// Logistic sigmoid, stable for large |x| (never exp of a large positive number). Host float:
/// branch-free over exp_poly (the gates call it per channel: D per row); elsewhere expf / exp.
template <class F>
SINKMOE_HD inline F sigmoid(F x) {
#if !defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<F, float>) {
    const float e = exp_poly(min(x, -x));  // exp(-|x|), in (0, 1]
    const float r = 1.0f / (1.0f + e);
    return x >= 0.0f ? r : e * r;
  }
#endif
  if (x >= F(0)) return F(1) / (F(1) + exp(-x));
  const F e = exp(x);
  return e / (F(1) + e);
}

/// sigmoid(x) and sigmoid(-x) = 1 - sigmoid(x), bit for bit as sigmoid gives each; the host's
/// float path shares one exponential between them (a gate's backward needs both per channel).
template <class F>
struct sigmoid_pair {
  F value, complement;
};
template <class F>
SINKMOE_HD inline sigmoid_pair<F> sigmoid_both(F x) {
#if !defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<F, float>) {
    // sigmoid's own steps: exp(-|x|) is the same for x and -x (only min's order differs).
    const float e = exp_poly(min(x, -x));
    const float r = 1.0f / (1.0f + e);
    return {x >= 0.0f ? r : e * r, -x >= 0.0f ? r : e * r};
  }
#endif
  return {sigmoid(x), sigmoid(-x)};
}

}  // namespace math
}  // namespace sinkmoe
