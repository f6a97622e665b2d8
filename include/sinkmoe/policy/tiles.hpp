#pragma once
// The tile walks every backend shares (docs/design.md, "One semantic source"): which key tiles a
// block of query rows visits, and which query tiles see a key tile, decided by the mask policy
// alone. The host backend, the fused kernels and the unfused path all walk through these, so a
// mask is still one small struct: its key_range gives the hull, its tile_class skips the empty
// tiles and says which visited tiles need the per-element visible() test.
//
// Everything is SINKMOE_HD and allocation-free; the walks hold a reference to the mask.

#include <sinkmoe/core/config.hpp>
#include <sinkmoe/core/numeric.hpp>
#include <sinkmoe/policy/mask.hpp>

namespace sinkmoe {

/// True when query row t sees at least one key (a custom mask's key_range may be a loose hull).
template <class Mask>
SINKMOE_HD bool row_has_visible_key(const Mask& mask, int t) {
  const key_span r = mask.key_range(t);
  for (int j = r.begin; j < r.end; ++j)
    if (mask.visible(t, j)) return true;
  return false;
}

/// True when key 0 is the only key query row t sees. For vanilla attention (the sink is key 0)
/// such a row's router value is structurally 0: the first query under a causal mask, but no row
/// of mask::none with more than one key.
template <class Mask>
SINKMOE_HD bool row_sees_only_first_key(const Mask& mask, int t) {
  const key_span r = mask.key_range(t);
  if (r.empty() || r.begin > 0 || !mask.visible(t, 0)) return false;
  for (int j = 1; j < r.end; ++j)
    if (mask.visible(t, j)) return false;
  return true;
}

/// Keys [begin, end) any row of [q0, q1) may see: the hull of the rows' Mask::key_range (empty
/// {0, 0} when no row sees a key).
template <class Mask>
SINKMOE_HD key_span rows_key_hull(const Mask& mask, int q0, int q1) {
  key_span hull{0x7fffffff, 0};
  for (int t = q0; t < q1; ++t) {
    const key_span r = mask.key_range(t);
    if (r.empty()) continue;
    hull.begin = math::min(hull.begin, r.begin);
    hull.end = math::max(hull.end, r.end);
  }
  return hull.empty() ? key_span{0, 0} : hull;
}

/// The key tiles (of block_k keys, starting at multiples of block_k) that query rows [q0, q1)
/// of a sequence with tk keys visit: those overlapping the rows' key hull that Mask::tile_class
/// does not call empty, in increasing order.
///
///   for (int k0 = walk.first(); walk.visits(k0); k0 = walk.next(k0)) { ... walk.kind(k0) ... }
template <class Mask>
struct key_tile_walk {
  Mask mask;  // by value: a few ints, and no address to take in device code
  int q0, q1, tk, block_k;
  key_span hull;

  SINKMOE_HD key_tile_walk(const Mask& m, int q0_, int q1_, int tk_, int block_k_)
      : mask(m), q0(q0_), q1(q1_), tk(tk_), block_k(block_k_), hull(rows_key_hull(m, q0_, q1_)) {}

  /// Keys of the tile starting at k0 (block_k, fewer for the last tile).
  [[nodiscard]] SINKMOE_HD int cols(int k0) const { return math::min(block_k, tk - k0); }
  /// How the mask classifies the tile starting at k0.
  [[nodiscard]] SINKMOE_HD tile_kind kind(int k0) const {
    return mask.tile_class(q0, q1, k0, k0 + cols(k0));
  }
  /// The first visited tile at or after the tile starting at k0; end() when there is none.
  [[nodiscard]] SINKMOE_HD int next_from(int k0) const {
    while (k0 < hull.end && kind(k0) == tile_kind::empty) k0 += block_k;
    return k0 < hull.end ? k0 : end();
  }
  [[nodiscard]] SINKMOE_HD int first() const { return next_from(hull.begin / block_k * block_k); }
  [[nodiscard]] SINKMOE_HD int next(int k0) const { return next_from(k0 + block_k); }
  /// Past the last tile (a multiple of block_k at or after the hull's end).
  [[nodiscard]] SINKMOE_HD int end() const { return (hull.end + block_k - 1) / block_k * block_k; }
  [[nodiscard]] SINKMOE_HD bool visits(int k0) const { return k0 < hull.end; }
};

/// The query tiles (of block_q rows) of a sequence with tq query rows that see the keys
/// [k0, k1): those whose tile_class against the key range is not empty, in increasing order
/// (the transposed walk of the dK/dV passes).
template <class Mask>
struct query_tile_walk {
  Mask mask;  // by value: a few ints, and no address to take in device code
  int k0, k1, tq, block_q;

  /// Query tiles of the sequence.
  [[nodiscard]] SINKMOE_HD int tiles() const { return (tq + block_q - 1) / block_q; }
  /// Rows of query tile i.
  [[nodiscard]] SINKMOE_HD int rows(int i) const { return math::min(block_q, tq - i * block_q); }
  [[nodiscard]] SINKMOE_HD tile_kind kind(int i) const {
    return mask.tile_class(i * block_q, i * block_q + rows(i), k0, k1);
  }
  /// The first query tile at or after tile i that sees a key; tiles() when there is none.
  [[nodiscard]] SINKMOE_HD int next_from(int i) const {
    while (i < tiles() && kind(i) == tile_kind::empty) ++i;
    return i;
  }
};

}  // namespace sinkmoe
