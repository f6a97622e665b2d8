#pragma once
// Argument structs shared by every backend (docs/design.md section 4). Views are strided and
// non-owning; the element dimension D must have unit stride. Optional views stay empty.

#include <cstdint>
#include <sinkmoe/core/numeric.hpp>
#include <sinkmoe/core/tensor_view.hpp>
#include <sinkmoe/params.hpp>

namespace sinkmoe {

/// Inputs and outputs of a forward call. T is the element type (float or double on the host);
/// per-row statistics and sinks use accum_t<T> (float, or double for double inputs).
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
  attention_params params{};               ///< scale, soft-cap, window, fixed sink, alignment
  varlen_batch varlen{};                   ///< cu_seqlens; then B must be 1
  tensor_view<accum_type, 3> first_key_mass{};  ///< [B, Hq, Tq] P[t, key 0] (optional, for
                                                ///< Gu et al.'s sink metric)
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

/// One sequence of a (possibly variable-length) batch: where its rows sit in the tensors.
struct sequence_span {
  int batch_index;  ///< index into the B dimension
  int q_begin;      ///< first query row in the T dimension
  int tq;           ///< query rows
  int k_begin;      ///< first key row
  int tk;           ///< key rows
};

/// The s-th sequence of a validated problem.
inline sequence_span sequence_at(const problem_shape& shape, const varlen_batch& varlen, int s) {
  if (!varlen.enabled()) return {s, 0, shape.tq, 0, shape.tk};
  return {0, varlen.cu_seqlens_q[s], varlen.cu_seqlens_q[s + 1] - varlen.cu_seqlens_q[s],
          varlen.cu_seqlens_k[s], varlen.cu_seqlens_k[s + 1] - varlen.cu_seqlens_k[s]};
}

}  // namespace sinkmoe
