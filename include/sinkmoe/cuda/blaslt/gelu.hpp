#pragma once
// GELU as cuBLASLt's epilogues compute it (the tanh form), its derivative, and the parameters
// of the elementwise GELU-backward kernel (gelu_backward_kernel.hpp). Host and device; no CUDA
// header needed.
//
//   gelu(x)  = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
//   gelu'(x) = 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)

#include <math.h>  // tanhf: the same name on the host and in device code

#include <cstdint>
#include <sinkmoe/core/config.hpp>

namespace sinkmoe::blaslt {

inline constexpr float k_gelu_sqrt_2_over_pi = 0.7978845608028654f;
inline constexpr float k_gelu_cubic = 0.044715f;

/// GELU, tanh form (cuBLASLt's GELU epilogues).
SINKMOE_HD inline float gelu_tanh(float x) {
  const float u = k_gelu_sqrt_2_over_pi * (x + k_gelu_cubic * x * x * x);
  return 0.5f * x * (1.0f + tanhf(u));
}

/// d gelu_tanh(x) / dx (what cuBLASLt's DGELU epilogues multiply by).
SINKMOE_HD inline float gelu_tanh_derivative(float x) {
  const float t = tanhf(k_gelu_sqrt_2_over_pi * (x + k_gelu_cubic * x * x * x));
  const float du_dx = k_gelu_sqrt_2_over_pi * (1.0f + 3.0f * k_gelu_cubic * x * x);
  return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du_dx;
}

/// grad_input[i, j] = grad_output[i, j] * gelu'(pre_activation[i, j]) over a rows x cols
/// row-major block (leading dimensions in elements). In place is allowed: grad_input may be
/// grad_output or pre_activation.
template <class Element>
struct gelu_backward_params {
  std::int64_t rows = 0, cols = 0;
  const Element* grad_output = nullptr;
  std::int64_t ld_grad_output = 0;
  const Element* pre_activation = nullptr;
  std::int64_t ld_pre_activation = 0;
  Element* grad_input = nullptr;
  std::int64_t ld_grad_input = 0;
};

}  // namespace sinkmoe::blaslt
