#pragma once
// Argument structs shared by every backend (docs/design.md section 4). Views are strided and
// non-owning; the element dimension D must have unit stride. Optional views stay empty.

#include <cstdint>
#include <sinkmoe/core/numeric.hpp>
#include <sinkmoe/core/tensor_view.hpp>
#include <sinkmoe/params.hpp>

namespace sinkmoe {

/// Which end of a padded sequence holds its real tokens.
enum class padding_side : std::uint8_t {
  right,  ///< real tokens first: rows [0, len), padding after (the common case)
  left,   ///< real tokens last: rows [T - len, T) (batched generation)
};

/// Real lengths of the sequences of a padded [B, T, ...] batch (FlashAttention's seqused_q /
/// seqused_k, a KV cache's cache_seqlens): sequence b has q(b) real query rows and k(b) real
/// keys, at the end `side` says; the rest is padding. Either view may stay empty (every row of
/// that side is real). Causal alignment, windows, streaming sinks and the vanilla sink are
/// relative to each sequence's real tokens, so a padded batch gives exactly what its unpadded
/// sequences give one by one. Padding query rows get out = 0, lse = the sink logit (-inf without
/// one), G = 0, first_key_mass = 0 and zero gradients; padding keys are invisible and get zero
/// dk, dv. The views live where the backend runs (host memory for exec::host).
struct sequence_lengths {
  tensor_view<const std::int32_t, 1> q;  ///< [B] real query rows per sequence, in [0, Tq]
  tensor_view<const std::int32_t, 1> k;  ///< [B] real keys per sequence, in [0, Tk]
  padding_side side = padding_side::right;
  [[nodiscard]] constexpr bool enabled() const { return !q.empty() || !k.empty(); }
};

/// Where the real rows of one padded sequence sit: `count` rows from `begin` of `total`.
struct real_rows {
  int begin;
  int count;
};

/// The real rows of a sequence of `length` real tokens padded to `total` rows. The length is
/// clamped to [0, total] (the kernels' guard for lengths the host did not validate).
SINKMOE_HD inline real_rows padded_sequence(int length, int total, padding_side side) {
  const int count = length < 0 ? 0 : (length > total ? total : length);
  return {side == padding_side::left ? total - count : 0, count};
}

/// Inputs and outputs of a forward call. T is the element type (float or double on the host);
/// per-row statistics and sinks use accum_t<T> (float, or double for double inputs).
///
/// Fields are in an order that positional and designated initialisers both reach: tensors the
/// call reads, tensors it writes, then the runtime parameters and the batch layout, e.g.
///   forward_args<float> fa{.q = q, .k = k, .v = v, .sinks = sinks, .out = out, .lse = lse,
///                          .router = router, .params = {.window = 128}};
template <class T>
struct forward_args {
  using element_type = T;
  using accum_type = accum_t<T>;

  tensor_view<const T, 4> q;               ///< [B, Tq, Hq, D]
  tensor_view<const T, 4> k;               ///< [B, Tk, Hkv, D], Hq % Hkv == 0
  tensor_view<const T, 4> v;               ///< [B, Tk, Hkv, D]
  tensor_view<const accum_type, 1> sinks;  ///< [Hq] sink logits (sink::learned only)
  tensor_view<const T, 4> gate_logits;     ///< [B, Tq, Hq, 1 or D] (gated policies only)
  tensor_view<T, 4> out;                   ///< [B, Tq, Hq, D] gated output
  tensor_view<accum_type, 3> lse;          ///< [B, Hq, Tq] base e, sink included; backward needs it
  tensor_view<accum_type, 3> router;       ///< [B, Hq, Tq] router values G (optional)
  tensor_view<accum_type, 3> first_key_mass;  ///< [B, Hq, Tq] P[t, first real key] (optional,
                                              ///< Gu et al.'s sink metric)
  attention_params params{};                  ///< scale, soft-cap, window, fixed sink, alignment
  varlen_batch varlen{};                      ///< packed sequences (cu_seqlens); then B must be 1
  sequence_lengths seqlens{};                 ///< padded batch: real lengths per sequence
};

/// Gradients in and out of a backward call; dq, dk, dv (and dsinks, dgate_logits) are
/// overwritten, not accumulated.
template <class T>
struct backward_args {
  using accum_type = accum_t<T>;

  tensor_view<const T, 4> dout;              ///< [B, Tq, Hq, D] dL/d(out)
  tensor_view<const accum_type, 3> drouter;  ///< [B, Hq, Tq] dL/dG (optional; e.g. balance)
  tensor_view<T, 4> dq;                      ///< [B, Tq, Hq, D]
  tensor_view<T, 4> dk;                      ///< [B, Tk, Hkv, D], summed over the GQA group
  tensor_view<T, 4> dv;                      ///< [B, Tk, Hkv, D]
  tensor_view<accum_type, 1> dsinks;         ///< [Hq] (sink::learned only)
  tensor_view<T, 4> dgate_logits;            ///< like gate_logits (gated policies only)
  tensor_view<const accum_type, 3> dlse;     ///< [B, Hq, Tq] dL/d(lse) (optional)
};

/// Problem sizes read off validated arguments.
struct problem_shape {
  int batch = 0;     ///< B (1 for variable-length batches)
  int num_seqs = 0;  ///< sequences: B, or varlen.num_seqs
  int tq = 0;        ///< Tq (total query rows for varlen)
  int tk = 0;        ///< Tk (total key rows for varlen)
  int q_heads = 0;   ///< Hq
  int kv_heads = 0;  ///< Hkv
  int head_dim = 0;  ///< D
  int gate_dim = 0;  ///< gate logits per row and head: 0, 1 or D
  [[nodiscard]] SINKMOE_HD constexpr int group_size() const { return q_heads / kv_heads; }
};

/// One sequence of a (possibly variable-length or padded) batch: where its real rows sit in the
/// tensors.
struct sequence_span {
  int batch_index;  ///< index into the B dimension
  int q_begin;      ///< first query row in the T dimension
  int tq;           ///< query rows
  int k_begin;      ///< first key row
  int tk;           ///< key rows
};

/// The s-th sequence of a validated problem: batch entry s (its real rows when padded), or the
/// s-th packed sequence of a varlen batch.
inline sequence_span sequence_at(const problem_shape& shape, const varlen_batch& varlen,
                                 const sequence_lengths& seqlens, int s) {
  if (varlen.enabled())
    return {0, varlen.cu_seqlens_q[s], varlen.cu_seqlens_q[s + 1] - varlen.cu_seqlens_q[s],
            varlen.cu_seqlens_k[s], varlen.cu_seqlens_k[s + 1] - varlen.cu_seqlens_k[s]};
  const real_rows q =
      padded_sequence(seqlens.q.empty() ? shape.tq : seqlens.q(s), shape.tq, seqlens.side);
  const real_rows k =
      padded_sequence(seqlens.k.empty() ? shape.tk : seqlens.k(s), shape.tk, seqlens.side);
  return {s, q.begin, q.count, k.begin, k.count};
}
template <class T>
sequence_span sequence_at(const problem_shape& shape, const forward_args<T>& a, int s) {
  return sequence_at(shape, a.varlen, a.seqlens, s);
}

/// Calls f(b, row) for every padding query row of a validated padded batch (none without
/// forward_args::seqlens), batch entry by batch entry.
template <class T, class Fn>
void for_each_padding_query_row(const problem_shape& shape, const forward_args<T>& a, Fn&& f) {
  if (!a.seqlens.enabled()) return;
  for (int b = 0; b < shape.batch; ++b) {
    const sequence_span span = sequence_at(shape, a, b);
    for (int row = 0; row < span.q_begin; ++row) f(b, row);
    for (int row = span.q_begin + span.tq; row < shape.tq; ++row) f(b, row);
  }
}

}  // namespace sinkmoe
