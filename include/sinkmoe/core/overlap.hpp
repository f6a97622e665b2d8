#pragma once
// Overlap checks of output views, run by validation (validate.hpp) on every backend: an output
// must not address one element twice (it would be written twice, racing on a GPU), and must not
// share memory with another output or with an input of the same call (the backends read inputs
// while they write outputs, so an alias gives silently wrong results).
//
// Exact overlap checking of strided views is hard in general (it is an integer-programming
// question over the indices), so both tests below are sufficient conditions: what they accept
// cannot overlap, what they refuse may. PyTorch's MemOverlap answers conservatively likewise.
// Every test works on the set of bytes a view's elements occupy: a dim of negative stride is
// replaced by its mirror image (same bytes: positive stride, base at its lowest element), so
// negative strides are handled, not refused; a dim of extent 1 addresses one element and is
// dropped; a zero stride is self-overlap in an output and, in an input, the same bytes as the dim
// dropped (broadcast inputs are fine).
//
// Self-overlap: with the dims sorted by |stride|, each stride must be >= 1 + the sum over the
// smaller-stride dims of (extent - 1) * stride (every index then addresses its own element).
//
// Two views A and B (possibly of different element types; byte addresses are compared): disjoint
// when their byte ranges [first byte, last byte] are. When the ranges intersect they may still be
// interleaved without sharing a byte, which is common: q, k and v (or dq, dk, dv) as strided views
// into one packed [B, T, 3, H, D] buffer; [q | gate] or [q | gate | k | v] projection rows; two
// statistics interleaved as [..., 2]. These are accepted by a lattice argument. Take a modulus G
// such that every stride >= G of both views is a multiple of G, and the dims of stride < G span
// L_A <= G bytes in A and L_B <= G in B (element included). Modulo G, A's bytes then lie in
// [0, L_A) and B's in [r, r + L_B), r = (base_B - base_A) mod G; if r >= L_A and r + L_B <= G the
// views share no byte. In the simplest case (q, k, v packed as above) the dims of stride < G are
// each view's dense inner block of C bytes (G = 3 H D elements, C = H D) and this is the whole
// test. Otherwise the two intervals may meet, and only where A's low part (its dims of stride
// < G) meets B's low part placed at r or at r - G; those two placements are tested the same way,
// on fewer dims (a headwise gate beside each head of q, in rows whose length is no multiple of
// D + 1, needs this second level). G is the largest stride of either view that qualifies; with
// none, with ranges that meet at the last level, or after 256 steps, the views are refused.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <ostream>
#include <sinkmoe/args.hpp>
#include <sinkmoe/core/error.hpp>
#include <sinkmoe/core/tensor_view.hpp>
#include <span>

namespace sinkmoe::detail {

/// The bytes a view's elements occupy (file comment): dims of extent > 1 and non-zero stride,
/// strides in bytes and non-negative, sorted ascending; `first` is the lowest byte.
struct byte_region {
  static constexpr int k_max_rank = 8;
  const char* name = nullptr;
  bool holds_nothing = true;     ///< not given, or no element: overlaps nothing
  std::uintptr_t first = 0;      ///< the lowest byte
  std::int64_t last_offset = 0;  ///< the highest byte minus the lowest
  std::int64_t elem = 1;         ///< element size in bytes
  int rank = 0;                  ///< dims kept
  std::array<std::int64_t, k_max_rank> stride{}, extent{};  ///< bytes; ascending stride
  std::array<int, k_max_rank> dim{};                        ///< the view's dim behind each kept one
  int zero_stride_dim = -1;  ///< a dim of extent > 1 and stride 0, or -1
  // The view as given, for messages.
  int view_rank = 0;
  std::array<index_t, k_max_rank> view_shape{}, view_stride{};
};

/// "[a, b, c]" of the first n values (messages).
struct index_list {
  const std::array<index_t, byte_region::k_max_rank>& values;
  int n;
  friend std::ostream& operator<<(std::ostream& os, const index_list& l) {
    os << '[';
    for (int i = 0; i < l.n; ++i) os << (i ? ", " : "") << l.values[i];
    return os << ']';
  }
};

/// "name (shape [..], stride [..])" of a region (messages).
struct region_text {
  const byte_region& r;
  friend std::ostream& operator<<(std::ostream& os, const region_text& t) {
    return os << t.r.name << " (shape " << index_list{t.r.view_shape, t.r.view_rank} << ", stride "
              << index_list{t.r.view_stride, t.r.view_rank} << " elements, bytes ["
              << reinterpret_cast<const void*>(t.r.first) << ", +" << t.r.last_offset << "])";
  }
};

/// a * b for non-negative a, b; throws (naming the view) when it does not fit in 63 bits.
inline std::int64_t checked_product(std::int64_t a, std::int64_t b, const char* name) {
  require(a == 0 || b <= std::numeric_limits<std::int64_t>::max() / a, name,
          ": the view spans more than 2^63 bytes (extents times strides overflow)");
  return a * b;
}
inline std::int64_t checked_sum(std::int64_t a, std::int64_t b, const char* name) {
  require(b <= std::numeric_limits<std::int64_t>::max() - a, name,
          ": the view spans more than 2^63 bytes (extents times strides overflow)");
  return a + b;
}

/// The byte region of a view; empty views (optional, not given) and views of no element hold
/// nothing.
template <class T, int R>
byte_region region_of(const char* name, const tensor_view<T, R>& view) {
  static_assert(R <= byte_region::k_max_rank, "region_of: rank above k_max_rank");
  byte_region r;
  r.name = name;
  r.elem = static_cast<std::int64_t>(sizeof(T));
  r.view_rank = R;
  for (int d = 0; d < R; ++d) {
    r.view_shape[d] = view.shape[d];
    r.view_stride[d] = view.stride[d];
  }
  if (view.empty() || view.numel() <= 0) return r;
  r.holds_nothing = false;
  std::int64_t below = 0;  // bytes from the data pointer down to the lowest byte
  std::int64_t span = 0;   // bytes from the lowest element's first byte to the highest's
  for (int d = 0; d < R; ++d) {
    const std::int64_t extent = view.shape[d];
    if (extent <= 1) continue;
    if (view.stride[d] == 0) {
      if (r.zero_stride_dim < 0) r.zero_stride_dim = d;
      continue;
    }
    require(view.stride[d] != std::numeric_limits<std::int64_t>::min(), name, ": stride ",
            view.stride, " out of range");
    const std::int64_t bytes =
        checked_product(view.stride[d] < 0 ? -view.stride[d] : view.stride[d], r.elem, name);
    const std::int64_t reach = checked_product(extent - 1, bytes, name);
    span = checked_sum(span, reach, name);
    if (view.stride[d] < 0) below += reach;  // mirrored: base at the lowest element
    r.stride[r.rank] = bytes;
    r.extent[r.rank] = extent;
    r.dim[r.rank] = d;
    ++r.rank;
  }
  r.first = reinterpret_cast<std::uintptr_t>(view.data) - static_cast<std::uintptr_t>(below);
  r.last_offset = checked_sum(span, r.elem - 1, name);
  // Insertion sort by stride (at most k_max_rank dims), carrying extent and dim along.
  for (int i = 1; i < r.rank; ++i)
    for (int j = i; j > 0 && r.stride[j - 1] > r.stride[j]; --j) {
      std::swap(r.stride[j - 1], r.stride[j]);
      std::swap(r.extent[j - 1], r.extent[j]);
      std::swap(r.dim[j - 1], r.dim[j]);
    }
  return r;
}

/// Refuses an output in which two distinct indices may address the same element (file comment).
inline void require_no_self_overlap(const byte_region& r) {
  if (r.holds_nothing) return;
  if (r.zero_stride_dim >= 0)  // (the message indexes the view's shape with the dim)
    throw error(concat(r.name, " may overlap itself: shape ", index_list{r.view_shape, r.view_rank},
                       ", stride ", index_list{r.view_stride, r.view_rank}, " (elements): dim ",
                       r.zero_stride_dim, " has extent ", r.view_shape[r.zero_stride_dim],
                       " but stride 0; an output needs a distinct element for every index"));
  std::int64_t reach = 0;  // bytes spanned by the smaller-stride dims
  for (int i = 0; i < r.rank; ++i) {
    require(r.stride[i] >= reach + r.elem, r.name, " may overlap itself: shape ",
            index_list{r.view_shape, r.view_rank}, ", stride ",
            index_list{r.view_stride, r.view_rank}, " (elements): dim ", r.dim[i], "'s |stride| ",
            r.stride[i] / r.elem, " is below 1 + ", reach / r.elem,
            ", the elements spanned by the dims of smaller |stride|");
    reach += (r.extent[i] - 1) * r.stride[i];  // <= the region's span: no overflow
  }
}

/// The lattice test of the file comment on the dims [0, ka) of A and [0, kb) of B (a prefix:
/// dims are sorted by stride), B's lowest byte `delta` bytes above A's. `budget` bounds the
/// calls (each level may test two placements); when it runs out the answer is "not proven".
inline bool lattice_disjoint(const byte_region& a, int ka, const byte_region& b, int kb,
                             std::int64_t delta, int& budget) {
  if (--budget < 0) return false;
  const auto length = [](const byte_region& r, int k) {  // bytes the dims [0, k) span
    std::int64_t bytes = r.elem;
    for (int i = 0; i < k; ++i) bytes += (r.extent[i] - 1) * r.stride[i];  // <= the span
    return bytes;
  };
  if (delta >= length(a, ka) || delta + length(b, kb) <= 0) return true;  // ranges apart
  if (ka == 0 && kb == 0) return false;  // two single elements that meet
  // The largest G among the strides left such that both views are, modulo G, one interval.
  std::int64_t g = 0;
  int la = 0, lb = 0;
  const auto consider = [&](std::int64_t candidate) {
    if (candidate <= g) return;
    int ca = 0, cb = 0;  // dims of stride < candidate
    while (ca < ka && a.stride[ca] < candidate) ++ca;
    while (cb < kb && b.stride[cb] < candidate) ++cb;
    for (int i = ca; i < ka; ++i)
      if (a.stride[i] % candidate != 0) return;
    for (int i = cb; i < kb; ++i)
      if (b.stride[i] % candidate != 0) return;
    if (length(a, ca) > candidate || length(b, cb) > candidate) return;
    g = candidate;
    la = ca;
    lb = cb;
  };
  for (int c = 0; c < ka; ++c) consider(a.stride[c]);
  for (int c = 0; c < kb; ++c) consider(b.stride[c]);
  if (g == 0) return false;
  const std::int64_t r = ((delta % g) + g) % g;
  return lattice_disjoint(a, la, b, lb, r, budget) && lattice_disjoint(a, la, b, lb, r - g, budget);
}

/// Whether two regions provably share no byte (file comment).
inline bool provably_disjoint(const byte_region& a, const byte_region& b) {
  if (a.holds_nothing || b.holds_nothing) return true;
  const std::uintptr_t a_last = a.first + static_cast<std::uintptr_t>(a.last_offset);
  const std::uintptr_t b_last = b.first + static_cast<std::uintptr_t>(b.last_offset);
  if (a_last < b.first || b_last < a.first) return true;
  // The ranges intersect, so the distance fits in 64 bits (two's complement wrap is defined).
  const auto delta = static_cast<std::int64_t>(b.first - a.first);
  int budget = 256;
  return lattice_disjoint(a, a.rank, b, b.rank, delta, budget);
}

inline void require_disjoint(const byte_region& output, const byte_region& other) {
  require(provably_disjoint(output, other), output.name, " may overlap ", other.name, ": ",
          region_text{output}, " and ", region_text{other},
          " share bytes or interleave in a way not proven disjoint; an output may not alias "
          "another output or an input of the same call");
}

/// Every output: not overlapping itself, another output, or an input. Inputs may alias freely.
inline void require_outputs_apart(std::span<const byte_region> outputs,
                                  std::span<const byte_region> inputs) {
  for (const byte_region& o : outputs) require_no_self_overlap(o);
  for (std::size_t i = 0; i < outputs.size(); ++i)
    for (std::size_t j = i + 1; j < outputs.size(); ++j) require_disjoint(outputs[i], outputs[j]);
  for (const byte_region& o : outputs)
    for (const byte_region& in : inputs) require_disjoint(o, in);
}

/// The varlen offsets as regions (read by every backend; host or device pointers). Called after
/// validation has checked num_seqs >= 1 where they are set.
inline std::array<byte_region, 2> varlen_regions(const varlen_batch& vl) {
  if (!vl.enabled()) return {};
  const index_t count = index_t(vl.num_seqs) + 1;
  return {region_of("varlen.cu_seqlens_q",
                    tensor_view<const std::int32_t, 1>(vl.cu_seqlens_q, {count})),
          region_of("varlen.cu_seqlens_k",
                    tensor_view<const std::int32_t, 1>(vl.cu_seqlens_k, {count}))};
}

/// Forward: out, lse, router and first_key_mass against each other and q, k, v, sinks,
/// gate_logits, the varlen offsets and the padded batch's lengths.
template <class T>
void require_no_overlap(const forward_args<T>& a) {
  const std::array<byte_region, 2> vl = varlen_regions(a.varlen);
  const std::array<byte_region, 4> outputs = {
      region_of("forward_args.out", a.out), region_of("forward_args.lse", a.lse),
      region_of("forward_args.router", a.router),
      region_of("forward_args.first_key_mass", a.first_key_mass)};
  const std::array<byte_region, 9> inputs = {region_of("forward_args.q", a.q),
                                             region_of("forward_args.k", a.k),
                                             region_of("forward_args.v", a.v),
                                             region_of("forward_args.sinks", a.sinks),
                                             region_of("forward_args.gate_logits", a.gate_logits),
                                             vl[0],
                                             vl[1],
                                             region_of("forward_args.seqlens.q", a.seqlens.q),
                                             region_of("forward_args.seqlens.k", a.seqlens.k)};
  require_outputs_apart(outputs, inputs);
}

/// Backward: dq, dk, dv, dsinks and dgate_logits against each other and everything the
/// backward reads: q, k, v, sinks, gate_logits, the forward's out and lse, dout, drouter, dlse
/// and the varlen offsets and padded lengths. (The forward's outputs are checked by
/// require_no_overlap(a), which validate_forward runs first.)
template <class T>
void require_no_overlap(const forward_args<T>& a, const backward_args<T>& g) {
  const std::array<byte_region, 2> vl = varlen_regions(a.varlen);
  const std::array<byte_region, 5> outputs = {
      region_of("backward_args.dq", g.dq), region_of("backward_args.dk", g.dk),
      region_of("backward_args.dv", g.dv), region_of("backward_args.dsinks", g.dsinks),
      region_of("backward_args.dgate_logits", g.dgate_logits)};
  const std::array<byte_region, 14> inputs = {region_of("forward_args.q", a.q),
                                              region_of("forward_args.k", a.k),
                                              region_of("forward_args.v", a.v),
                                              region_of("forward_args.sinks", a.sinks),
                                              region_of("forward_args.gate_logits", a.gate_logits),
                                              region_of("forward_args.out", a.out),
                                              region_of("forward_args.lse", a.lse),
                                              region_of("backward_args.dout", g.dout),
                                              region_of("backward_args.drouter", g.drouter),
                                              region_of("backward_args.dlse", g.dlse),
                                              vl[0],
                                              vl[1],
                                              region_of("forward_args.seqlens.q", a.seqlens.q),
                                              region_of("forward_args.seqlens.k", a.seqlens.k)};
  require_outputs_apart(outputs, inputs);
}

}  // namespace sinkmoe::detail
