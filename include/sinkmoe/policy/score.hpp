#pragma once
// Score policies: the transform from the raw dot product q.k to the softmax logit.
//
// Contract (checked by sinkmoe::score_policy):
//   Score(const attention_params&, int head_dim)      closure
//   F transform(F dot) const                           logit s
//   F derivative(F dot) const                          ds / d(dot)
//   static constexpr bool is_linear                    s = scale() * dot, so kernels may fold
//   double scale() const                               the scale into Q and dQ/dK
//   static void validate(const attention_params&)

#include <sinkmoe/core/config.hpp>
#include <sinkmoe/core/error.hpp>
#include <sinkmoe/core/numeric.hpp>
#include <sinkmoe/params.hpp>

namespace sinkmoe::score {
namespace detail {
SINKMOE_HD inline double resolve_scale(const attention_params& p, int head_dim) {
  return p.scale != 0.0 ? p.scale : 1.0 / math::sqrt(static_cast<double>(head_dim));
}
inline void validate_scale(const attention_params& p) {
  sinkmoe::detail::require(math::is_finite(p.scale) && p.scale >= 0.0, "params.scale = ", p.scale,
                           ": must be finite and >= 0 (0 selects 1/sqrt(head_dim))");
}
}  // namespace detail

/// s = scale * q.k (the usual scaled dot product).
struct scaled {
  static constexpr const char* name = "scaled";
  static constexpr bool is_linear = true;
  double scale_value;
  SINKMOE_HD scaled(const attention_params& p, int head_dim)
      : scale_value(detail::resolve_scale(p, head_dim)) {}
  SINKMOE_HD double scale() const { return scale_value; }
  template <class F>
  SINKMOE_HD F transform(F dot) const {
    return F(scale_value) * dot;
  }
  template <class F>
  SINKMOE_HD F derivative(F /*dot*/) const {
    return F(scale_value);
  }
  static void validate(const attention_params& p) {
    detail::validate_scale(p);
    sinkmoe::detail::require(p.softcap == 0.0, "params.softcap = ", p.softcap,
                             " given, but score::scaled does not use it (use score::softcap)");
  }
};

/// Gemma-2 / Grok style logit soft-cap: s = cap * tanh(scale * q.k / cap). The quotient
/// scale / cap is taken once, so an element costs a multiply and a tanh (math::tanh: on the GPU
/// two MUFU operations, no IEEE division).
struct softcap {
  static constexpr const char* name = "softcap";
  static constexpr bool is_linear = false;
  double scale_value;
  double cap;
  double scale_over_cap;
  SINKMOE_HD softcap(const attention_params& p, int head_dim)
      : scale_value(detail::resolve_scale(p, head_dim)),
        cap(p.softcap),
        scale_over_cap(p.softcap > 0.0 ? scale_value / p.softcap : 0.0) {}
  SINKMOE_HD double scale() const { return scale_value; }
  template <class F>
  SINKMOE_HD F transform(F dot) const {
    return F(cap) * math::tanh(F(scale_over_cap) * dot);
  }
  template <class F>
  SINKMOE_HD F derivative(F dot) const {
    const F th = math::tanh(F(scale_over_cap) * dot);
    return F(scale_value) * (F(1) - th * th);
  }
  static void validate(const attention_params& p) {
    detail::validate_scale(p);
    sinkmoe::detail::require(math::is_finite(p.softcap) && p.softcap > 0.0,
                             "params.softcap = ", p.softcap,
                             ": score::softcap needs a finite cap > 0");
  }
};

}  // namespace sinkmoe::score
