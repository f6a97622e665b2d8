#pragma once
// Runtime parameters of an attention call. Policies are types; their runtime values live here.
// Scalars are double so that double-precision runs keep full precision; float backends round
// them once.

#include <cstdint>

namespace sinkmoe {

/// Where the causal diagonal sits when Tq != Tk.
enum class causal_alignment : std::uint8_t {
  bottom_right,  ///< query t sees keys j <= t + (Tk - Tq): the queries are the last Tq tokens
  top_left,      ///< query t sees keys j <= t
};

/// Runtime values read by the policies. Fields a policy does not use must keep their defaults
/// (validation rejects, e.g., a window given to mask::causal), so nothing is silently ignored.
struct attention_params {
  /// Softmax scale applied to q.k; 0 means 1/sqrt(head_dim).
  double scale = 0.0;
  /// score::softcap: s = softcap * tanh(scale * q.k / softcap). Must be > 0 there, 0 elsewhere.
  double softcap = 0.0;
  /// mask::sliding_window and mask::streaming: query t' sees keys j in (t' - window, t'].
  int window = 0;
  /// mask::streaming: the first sink_tokens keys stay visible to every (causal) query.
  int sink_tokens = 0;
  /// Causal alignment for causal, sliding-window and streaming masks.
  causal_alignment alignment = causal_alignment::bottom_right;
  /// sink::fixed: the constant sink logit of every head (0 gives softmax-off-by-one).
  double fixed_sink = 0.0;
};

/// Variable-length batch in FlashAttention's cu_seqlens form: sequence i owns query rows
/// [cu_seqlens_q[i], cu_seqlens_q[i+1]) and keys [cu_seqlens_k[i], cu_seqlens_k[i+1]) of a
/// batch-1 tensor. The pointers live where the backend runs (host memory for exec::host).
struct varlen_batch {
  const std::int32_t* cu_seqlens_q = nullptr;
  const std::int32_t* cu_seqlens_k = nullptr;
  int num_seqs = 0;
  /// The longest query and key sequence (FlashAttention's max_seqlen_q / max_seqlen_k); 0: not
  /// given. Where the offsets are host pointers they are checked against these. On exec::cuda,
  /// giving both makes a call copy nothing to the host and never synchronise (a CUDA graph can
  /// capture it): the offsets are then not validated on the host; the kernels clamp them to the
  /// tensors and these lengths, so wrong offsets give wrong results but no access outside.
  int max_seqlen_q = 0;
  int max_seqlen_k = 0;
  [[nodiscard]] constexpr bool enabled() const { return cu_seqlens_q != nullptr; }
};

}  // namespace sinkmoe
