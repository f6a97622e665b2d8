#pragma once
// Gate policies: the output epilogue Y = sigmoid(z) * O and its backward prologue
// (docs/method.md sections 1 and 5; Qwen3-Next / Qiu et al. 2025).
//
// Contract (checked by sinkmoe::gate_policy), per query row of one head, z holding
// logit_dim(head_dim) gate logits already converted to the accumulator type F:
//   static constexpr bool enabled
//   static constexpr int logit_dim(index_t head_dim)          0, 1 (headwise) or head_dim
//   F forward_row(F* o, int d, const F* z)                     o <- gate * o; returns the router
//   value F router_value(const F* z, int d)                          the gate's router value alone
//   void backward_row(const F* dy, const F* y, F* d_attn_out, int d, const F* z, F gbar, F* dz)
//       dy: upstream gradient of Y; y: the stored gated output; gbar: dL/d(router value).
//       Writes dO (the gradient of the ungated output) and dz. Uses y, never y / gate, so a
//       gate that rounds to 0 does not divide by zero: G (1 - G) dY O = (1 - G) dY Y.
//   static constexpr slice_router slices     how router values of slices of a row combine
// The attention backward's Delta = sum_c dO_c O_c = sum_c dY_c Y_c for every gate.
//
// The fused kernels hold a row in registers as 2-channel slices and call forward_row and
// backward_row on each slice (d = 2, z pointing at the slice's logits, or at the single logit of
// a headwise gate), with the slice's share 2 / D of gbar; so a gate must act channel by channel
// (o_c depends on o_c and its own logit), and backward_row must be linear in gbar. `slices` then
// says how the slices' returned router values make the row's: every slice returns the row's
// value (row_value), or each returns the mean over its channels (channel_mean: the row's value
// is the mean of the slices').

#include <cstdint>
#include <sinkmoe/core/config.hpp>
#include <sinkmoe/core/numeric.hpp>
#include <sinkmoe/core/tensor_view.hpp>

namespace sinkmoe {

/// How the router values a gate's forward_row returns for slices of a row combine (gate.hpp).
enum class slice_router : std::uint8_t {
  row_value,     ///< every slice returns the row's value (no gate, a headwise gate)
  channel_mean,  ///< each slice returns the mean over its channels (an elementwise gate)
};

}  // namespace sinkmoe

namespace sinkmoe::gate {

/// No output gate: Y = O.
struct none {
  static constexpr const char* name = "none";
  static constexpr bool enabled = false;
  static constexpr slice_router slices = slice_router::row_value;
  SINKMOE_HD static constexpr int logit_dim(index_t) { return 0; }
  template <class F>
  SINKMOE_HD static F forward_row(F*, int, const F*) {
    return F(1);
  }
  template <class F>
  SINKMOE_HD static F router_value(const F*, int) {
    return F(1);
  }
  template <class F>
  SINKMOE_HD static void backward_row(const F* dy, const F*, F* d_attn_out, int d, const F*, F,
                                      F*) {
    for (int c = 0; c < d; ++c) d_attn_out[c] = dy[c];
  }
};

/// One sigmoid gate per head and token (gate logits [B, Tq, Hq, 1]); router value = the gate.
struct headwise {
  static constexpr const char* name = "headwise";
  static constexpr bool enabled = true;
  static constexpr slice_router slices = slice_router::row_value;
  SINKMOE_HD static constexpr int logit_dim(index_t) { return 1; }
  template <class F>
  SINKMOE_HD static F forward_row(F* o, int d, const F* z) {
    const F g = math::sigmoid(z[0]);
    for (int c = 0; c < d; ++c) o[c] *= g;
    return g;
  }
  template <class F>
  SINKMOE_HD static F router_value(const F* z, int) {
    return math::sigmoid(z[0]);
  }
  // dz = (1 - g) sum_c dY_c Y_c + g (1 - g) gbar;  dO = g dY.
  template <class F>
  SINKMOE_HD static void backward_row(const F* dy, const F* y, F* d_attn_out, int d, const F* z,
                                      F gbar, F* dz) {
    const auto [g, one_minus_g] = math::sigmoid_both(z[0]);
    F dy_dot_y = F(0);
    SINKMOE_OMP_SIMD(reduction(+ : dy_dot_y))
    for (int c = 0; c < d; ++c) {
      dy_dot_y += dy[c] * y[c];
      d_attn_out[c] = g * dy[c];
    }
    dz[0] = one_minus_g * dy_dot_y + g * one_minus_g * gbar;
  }
};

/// One sigmoid gate per channel (gate logits [B, Tq, Hq, D]); the router value is the channel
/// mean of the gates (docs/method.md section 2: the paper does not say; this library's choice).
struct elementwise {
  static constexpr const char* name = "elementwise";
  static constexpr bool enabled = true;
  static constexpr slice_router slices = slice_router::channel_mean;
  SINKMOE_HD static constexpr int logit_dim(index_t head_dim) { return static_cast<int>(head_dim); }
  template <class F>
  SINKMOE_HD static F forward_row(F* o, int d, const F* z) {
    F sum = F(0);
    // simd: the host's float sigmoid is branch-free, so a row vectorises (the reduction is then
    // summed lane-wise, an order fixed by the build).
    SINKMOE_OMP_SIMD(reduction(+ : sum))
    for (int c = 0; c < d; ++c) {
      const F g = math::sigmoid(z[c]);
      o[c] *= g;
      sum += g;
    }
    return sum / F(d);
  }
  template <class F>
  SINKMOE_HD static F router_value(const F* z, int d) {
    F sum = F(0);
    SINKMOE_OMP_SIMD(reduction(+ : sum))
    for (int c = 0; c < d; ++c) sum += math::sigmoid(z[c]);
    return sum / F(d);
  }
  // dz_c = (1 - g_c) dY_c Y_c + g_c (1 - g_c) gbar / d;  dO_c = g_c dY_c.
  template <class F>
  SINKMOE_HD static void backward_row(const F* dy, const F* y, F* d_attn_out, int d, const F* z,
                                      F gbar, F* dz) {
    const F gbar_per_channel = gbar / F(d);
    SINKMOE_OMP_SIMD()
    for (int c = 0; c < d; ++c) {
      const auto [g, one_minus_g] = math::sigmoid_both(z[c]);
      d_attn_out[c] = g * dy[c];
      dz[c] = one_minus_g * dy[c] * y[c] + g * one_minus_g * gbar_per_channel;
    }
  }
};

}  // namespace sinkmoe::gate
