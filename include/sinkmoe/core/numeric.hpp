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

/// Logistic sigmoid, stable for large |x| (never exp of a large positive number).
template <class F>
SINKMOE_HD inline F sigmoid(F x) {
  if (x >= F(0)) return F(1) / (F(1) + exp(-x));
  const F e = exp(x);
  return e / (F(1) + e);
}

}  // namespace math
}  // namespace sinkmoe
