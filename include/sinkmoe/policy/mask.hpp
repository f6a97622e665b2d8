#pragma once
// Mask policies: which keys a query sees, and how a (query tile x key tile) rectangle is
// classified. Backends ask tile_class() for every tile, interior tiles included, so a mask can
// never be skipped on a tile the backend assumed to be full (FlashInfer PR #4695).
//
// Contract (checked by sinkmoe::mask_policy):
//   Mask(const attention_params&, index_t tq, index_t tk)   per-sequence closure (T < 2^31)
//   bool visible(int t, int j) const                  query row t, key column j
//   key_span key_range(int t) const                   hull [begin, end) of the visible keys
//   tile_kind tile_class(int q0, int q1, int k0, int k1) const   rows [q0,q1) x keys [k0,k1)
//   static void validate(const attention_params&)     throws sinkmoe::error

#include <cstdint>
#include <sinkmoe/core/config.hpp>
#include <sinkmoe/core/error.hpp>
#include <sinkmoe/core/numeric.hpp>
#include <sinkmoe/core/tensor_view.hpp>
#include <sinkmoe/params.hpp>

namespace sinkmoe {

/// Half-open range of key columns.
struct key_span {
  int begin = 0;
  int end = 0;
  [[nodiscard]] SINKMOE_HD constexpr bool empty() const { return begin >= end; }
};

/// How many of a tile's (query, key) pairs are visible.
enum class tile_kind : std::uint8_t { empty, partial, full };

namespace mask {
namespace detail {

/// Offset that maps query row t to its absolute position t' = t + offset among the keys.
SINKMOE_HD inline int diagonal_offset(const attention_params& p, index_t tq, index_t tk) {
  return p.alignment == causal_alignment::bottom_right ? static_cast<int>(tk - tq) : 0;
}

/// A window longer than tq + tk changes nothing; clamping keeps pos - window from overflowing
/// int when callers pass INT_MAX for "unbounded".
SINKMOE_HD inline int effective_window(const attention_params& p, index_t tq, index_t tk) {
  return static_cast<int>(math::min<index_t>(p.window, tq + tk + 1));
}

inline void require_valid_alignment(const attention_params& p) {
  sinkmoe::detail::require(
      p.alignment == causal_alignment::bottom_right || p.alignment == causal_alignment::top_left,
      "params.alignment = ", static_cast<int>(p.alignment), ": not a causal_alignment value");
}

inline void require_unused_window(const attention_params& p, const char* mask_name) {
  sinkmoe::detail::require(p.window == 0 && p.sink_tokens == 0, "params.window = ", p.window,
                           ", params.sink_tokens = ", p.sink_tokens, " given, but ", mask_name,
                           " does not use them (use mask::sliding_window or mask::streaming)");
}

}  // namespace detail

/// Every key is visible.
struct none {
  static constexpr const char* name = "none";
  int tk = 0;
  SINKMOE_HD none(const attention_params&, index_t /*tq*/, index_t tk_)
      : tk(static_cast<int>(tk_)) {}
  SINKMOE_HD bool visible(int, int) const { return true; }
  SINKMOE_HD key_span key_range(int) const { return {0, tk}; }
  SINKMOE_HD tile_kind tile_class(int, int, int, int) const { return tile_kind::full; }
  static void validate(const attention_params& p) {
    detail::require_unused_window(p, "mask::none");
  }
};

/// Causal: query t sees keys j <= t + offset (bottom-right aligned by default).
struct causal {
  static constexpr const char* name = "causal";
  int tk = 0;
  int offset = 0;
  SINKMOE_HD causal(const attention_params& p, index_t tq, index_t tk_)
      : tk(static_cast<int>(tk_)), offset(detail::diagonal_offset(p, tq, tk_)) {}
  SINKMOE_HD bool visible(int t, int j) const { return j <= t + offset; }
  SINKMOE_HD key_span key_range(int t) const { return {0, math::min(tk, t + offset + 1)}; }
  SINKMOE_HD tile_kind tile_class(int q0, int q1, int k0, int k1) const {
    if (k0 > q1 - 1 + offset) return tile_kind::empty;
    if (k1 - 1 <= q0 + offset) return tile_kind::full;
    return tile_kind::partial;
  }
  static void validate(const attention_params& p) {
    detail::require_unused_window(p, "mask::causal");
    detail::require_valid_alignment(p);
  }
};

/// Causal sliding window (GPT-OSS, Mistral): query t' = t + offset sees keys (t' - window, t'].
struct sliding_window {
  static constexpr const char* name = "sliding_window";
  int tk = 0;
  int offset = 0;
  int window = 1;
  SINKMOE_HD sliding_window(const attention_params& p, index_t tq, index_t tk_)
      : tk(static_cast<int>(tk_)),
        offset(detail::diagonal_offset(p, tq, tk_)),
        window(detail::effective_window(p, tq, tk_)) {}
  SINKMOE_HD bool visible(int t, int j) const {
    const int pos = t + offset;
    return j <= pos && j > pos - window;
  }
  SINKMOE_HD key_span key_range(int t) const {
    const int pos = t + offset;
    return {math::max(0, pos - window + 1), math::min(tk, pos + 1)};
  }
  SINKMOE_HD tile_kind tile_class(int q0, int q1, int k0, int k1) const {
    const int first_pos = q0 + offset;
    const int last_pos = q1 - 1 + offset;
    if (k0 > last_pos || k1 - 1 <= first_pos - window) return tile_kind::empty;
    if (k1 - 1 <= first_pos && k0 > last_pos - window) return tile_kind::full;
    return tile_kind::partial;
  }
  static void validate(const attention_params& p) {
    sinkmoe::detail::require(p.window >= 1, "params.window = ", p.window,
                             ": mask::sliding_window needs window >= 1");
    detail::require_valid_alignment(p);
    sinkmoe::detail::require(
        p.sink_tokens == 0, "params.sink_tokens = ", p.sink_tokens,
        " given, but mask::sliding_window does not use it (mask::streaming does)");
  }
};

/// StreamingLLM: a causal sliding window plus the first sink_tokens keys, which every query
/// (that may see them causally) keeps seeing. Not to be confused with a learned sink logit.
struct streaming {
  static constexpr const char* name = "streaming";
  int tk = 0;
  int offset = 0;
  int window = 1;
  int sink_tokens = 0;
  SINKMOE_HD streaming(const attention_params& p, index_t tq, index_t tk_)
      : tk(static_cast<int>(tk_)),
        offset(detail::diagonal_offset(p, tq, tk_)),
        window(detail::effective_window(p, tq, tk_)),
        sink_tokens(p.sink_tokens) {}
  SINKMOE_HD bool visible(int t, int j) const {
    const int pos = t + offset;
    return j <= pos && (j > pos - window || j < sink_tokens);
  }
  SINKMOE_HD key_span key_range(int t) const {
    const int pos = t + offset;
    const int window_begin = math::max(0, pos - window + 1);
    const int end = math::min(tk, pos + 1);
    const int sink_end = math::min(sink_tokens, end);
    // Tight hull: the window part may lie past the last key, leaving only the sink keys.
    if (window_begin >= end) return {0, sink_end};
    return {sink_end > 0 ? 0 : window_begin, end};
  }
  SINKMOE_HD tile_kind tile_class(int q0, int q1, int k0, int k1) const {
    const int first_pos = q0 + offset;
    const int last_pos = q1 - 1 + offset;
    if (k0 > last_pos) return tile_kind::empty;
    const bool outside_window = k1 - 1 <= first_pos - window;
    if (outside_window && k0 >= sink_tokens) return tile_kind::empty;
    const bool causal_full = k1 - 1 <= first_pos;
    // Full: causal for the first row, and every non-sink key inside the last row's window.
    if (causal_full && (k1 <= sink_tokens || math::max(k0, sink_tokens) > last_pos - window))
      return tile_kind::full;
    return tile_kind::partial;
  }
  static void validate(const attention_params& p) {
    sinkmoe::detail::require(p.window >= 1, "params.window = ", p.window,
                             ": mask::streaming needs window >= 1");
    detail::require_valid_alignment(p);
    sinkmoe::detail::require(p.sink_tokens >= 0, "params.sink_tokens = ", p.sink_tokens,
                             ": mask::streaming needs sink_tokens >= 0");
  }
};

}  // namespace mask
}  // namespace sinkmoe
