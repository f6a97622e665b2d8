// Masks the test runner does not know, shared by the emulated suites: the fp64 references call
// the CPU backend directly for them.
#pragma once

#include <sinkmoe/core/config.hpp>
#include <sinkmoe/core/numeric.hpp>
#include <sinkmoe/params.hpp>
#include <sinkmoe/policy/mask.hpp>

namespace sinkmoe::testing {

/// A causal mask with holes (key j hidden when j % 3 == 1, except the diagonal): no tile is
/// ever full, so a kernel that assumed interior tiles to be full (FlashInfer PR #4695) would see
/// the holes. Not known to the test runner: the fp64 reference calls the CPU backend directly.
struct holey_causal {
  static constexpr const char* name = "holey_causal";
  int tk = 0;
  int offset = 0;
  SINKMOE_HD holey_causal(const sinkmoe::attention_params& p, int tq, int tk_)
      : tk(tk_), offset(sinkmoe::mask::detail::diagonal_offset(p, tq, tk_)) {}
  SINKMOE_HD bool visible(int t, int j) const {
    const int pos = t + offset;
    return j <= pos && (j % 3 != 1 || j == pos);
  }
  SINKMOE_HD sinkmoe::key_span key_range(int t) const {
    return {0, sinkmoe::math::min(tk, t + offset + 1)};
  }
  SINKMOE_HD sinkmoe::tile_kind tile_class(int, int q1, int k0, int) const {
    return k0 > q1 - 1 + offset ? sinkmoe::tile_kind::empty : sinkmoe::tile_kind::partial;
  }
  static void validate(const sinkmoe::attention_params& p) {
    sinkmoe::mask::detail::require_unused_window(p, "holey_causal");
  }
};

}  // namespace sinkmoe::testing
