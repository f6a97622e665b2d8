#pragma once
// Concepts for the five policy slots, so a malformed user policy fails with a readable error
// at the attention<> instantiation instead of deep inside a backend.

#include <concepts>
#include <sinkmoe/core/tensor_view.hpp>
#include <sinkmoe/params.hpp>
#include <sinkmoe/policy/gate.hpp>
#include <sinkmoe/policy/mask.hpp>

namespace sinkmoe {

template <class M>
concept mask_policy = requires(const M m, const attention_params& p, int i) {
  {M(p, i, i)};
  { m.visible(i, i) } -> std::convertible_to<bool>;
  { m.key_range(i) } -> std::same_as<key_span>;
  { m.tile_class(i, i, i, i) } -> std::same_as<tile_kind>;
  {M::validate(p)};
};

template <class S>
concept score_policy = requires(const S s, const attention_params& p, int d, float x, double y) {
  {S(p, d)};
  { S::is_linear } -> std::convertible_to<bool>;
  { s.scale() } -> std::convertible_to<double>;
  { s.transform(x) } -> std::same_as<float>;
  { s.transform(y) } -> std::same_as<double>;
  { s.derivative(x) } -> std::same_as<float>;
  {S::validate(p)};
};

template <class S>
concept sink_policy = requires(const attention_params& p, const float* f, const double* dd,
                               index_t stride, int h) {
  { S::has_logit } -> std::convertible_to<bool>;
  { S::first_key_is_sink } -> std::convertible_to<bool>;
  { S::trainable } -> std::convertible_to<bool>;
  { S::needs_sinks_tensor } -> std::convertible_to<bool>;
  { S::logit(p, f, stride, h) } -> std::same_as<float>;
  { S::logit(p, dd, stride, h) } -> std::same_as<double>;
  {S::validate(p)};
}
&&!(S::has_logit && S::first_key_is_sink);

template <class G>
concept gate_policy = requires(float* o, const float* z, float gbar, int d) {
  { G::enabled } -> std::convertible_to<bool>;
  { G::slices } -> std::convertible_to<slice_router>;
  { G::logit_dim(d) } -> std::convertible_to<int>;
  { G::forward_row(o, d, z) } -> std::same_as<float>;
  { G::router_value(z, d) } -> std::same_as<float>;
  {G::backward_row(z, z, o, d, z, gbar, o)};
};

template <class R>
concept route_policy = requires(float x, float& out) {
  { R::uses_sink } -> std::convertible_to<bool>;
  { R::uses_gate } -> std::convertible_to<bool>;
  { R::router(x, x) } -> std::same_as<float>;
  {R::split(x, x, x, out, out)};
};

}  // namespace sinkmoe
