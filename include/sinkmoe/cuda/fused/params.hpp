#pragma once
// Kernel parameters of the fused forward and backward, and their host-side builders: validated
// forward_args / backward_args become raw strided pointers (strided_ref), sizes and runtime
// policy parameters, after the checks only this path needs (alignment of its vector accesses,
// the workspace). Trivially copyable: they are kernel arguments.

#include <cstddef>
#include <cstdint>
#include <sinkmoe/args.hpp>
#include <sinkmoe/core/error.hpp>
#include <sinkmoe/cuda/arch/float16.hpp>
#include <sinkmoe/cuda/fused/common.hpp>
#include <sinkmoe/cuda/padding_kernels.hpp>
#include <sinkmoe/params.hpp>

namespace sinkmoe::fused {

/// Everything the forward kernel reads and writes. Optional outputs are null.
template <class Element>
struct forward_params {
  strided_ref<const Element> q, k, v;
  strided_ref<const Element> gate_logits;  ///< [B, Tq, Hq, 1 or D] (gated policies), else null
  const float* sinks;                      ///< [Hq] (sink::learned), else null
  index_t sinks_stride;
  strided_ref<Element> out;
  strided_ref<float> lse, router, first_key_mass;  ///< [B, Hq, Tq]; optional
  const std::int32_t* cu_seqlens_q;  ///< varlen offsets where the kernel runs, else null
  const std::int32_t* cu_seqlens_k;
  padding::lengths_ref seqlens_q, seqlens_k;  ///< a padded batch's real lengths, else null
  padding_side side;
  int max_tq, max_tk;  ///< longest sequences (the grid's extent; varlen lengths are clamped)
  problem_shape shape;
  attention_params params;
};

/// The fields forward_params and backward_params share: where the call's sequences sit (varlen
/// offsets, a padded batch's lengths, pointers where the kernels run), the grid's longest
/// sequences, the sizes and the runtime parameters.
template <class Params, class Element>
void set_batch_layout(Params& p, const forward_args<Element>& a, const problem_shape& shape,
                      int max_tq, int max_tk) {
  p.cu_seqlens_q = a.varlen.cu_seqlens_q;
  p.cu_seqlens_k = a.varlen.cu_seqlens_k;
  p.seqlens_q = padding::lengths_ref::of(a.seqlens.q);
  p.seqlens_k = padding::lengths_ref::of(a.seqlens.k);
  p.side = a.seqlens.side;
  p.max_tq = max_tq;
  p.max_tk = max_tk;
  p.shape = shape;
  p.params = a.params;
}

/// Kernel parameters from validated forward arguments (pointers where the kernel runs) whose
/// longest sequences are max_tq and max_tk rows. Throws sinkmoe::error when a row of q, k, v or
/// out is not 16-byte aligned, or an elementwise gate's logits are not pair-aligned (4 bytes).
template <arch::half_precision Element>
forward_params<Element> make_forward_params(const forward_args<Element>& a,
                                            const problem_shape& shape, int max_tq, int max_tk) {
  detail::require_rows_16_byte_aligned("forward_args.q", a.q);
  detail::require_rows_16_byte_aligned("forward_args.k", a.k);
  detail::require_rows_16_byte_aligned("forward_args.v", a.v);
  detail::require_rows_16_byte_aligned("forward_args.out", a.out);
  if (shape.gate_dim > 1)  // a gate logit per channel: read in pairs
    detail::require_pairs_4_byte_aligned("forward_args.gate_logits", a.gate_logits);
  forward_params<Element> p{};
  p.q = strided_ref<const Element>::of(a.q);
  p.k = strided_ref<const Element>::of(a.k);
  p.v = strided_ref<const Element>::of(a.v);
  p.gate_logits = strided_ref<const Element>::of(a.gate_logits);
  p.sinks = a.sinks.data;
  p.sinks_stride = a.sinks.empty() ? 0 : a.sinks.stride[0];
  p.out = strided_ref<Element>::of(a.out);
  p.lse = strided_ref<float>::of(a.lse);
  p.router = strided_ref<float>::of(a.router);
  p.first_key_mass = strided_ref<float>::of(a.first_key_mass);
  set_batch_layout(p, a, shape, max_tq, max_tk);
  return p;
}

/// Everything the backward kernels read and write: the forward's tensors, the gradients, the
/// workspace. Optional inputs are null.
template <class Element>
struct backward_params {
  strided_ref<const Element> q, k, v, gate_logits;
  const float* sinks;
  index_t sinks_stride;
  strided_ref<const Element> out;  ///< the forward's (gated) output Y
  strided_ref<const float> lse;    ///< the forward's lse [B, Hq, Tq]
  strided_ref<const Element> dout;
  strided_ref<const float> drouter, dlse;  ///< optional
  strided_ref<Element> dq, dk, dv, dgate_logits;
  float* dsinks;  ///< [Hq] (sink::learned), else null
  index_t dsinks_stride;

  // Workspace, and what the main kernels read as dO: the ungated gradient (gated policies,
  // written by the preprocess into grad_attn) or dout itself.
  Element* grad_attn;  ///< [B, Tq, Hq, D] contiguous, gated policies only
  strided_ref<const Element> d_attn;
  strided_ref<float> row_term;   ///< [B, Hq, Tq] contiguous: D = Delta - gbar_sink A - dLSE
  strided_ref<float> key0_term;  ///< [B, Hq, Tq]: gbar_sink A (vanilla sink only), else null
  float* dsink_partial;          ///< [Hq, sequences, q_tiles] (trainable sinks), else null
  int q_tiles;                   ///< query tiles (of the preprocess) per sequence
  float* dkdv_partial;           ///< [splits][B][Tk][Hkv][2][D] fp32 when split, else null
  int dkdv_splits;               ///< dK/dV blocks per key tile (the GQA items split)

  const std::int32_t* cu_seqlens_q;
  const std::int32_t* cu_seqlens_k;
  padding::lengths_ref seqlens_q, seqlens_k;
  padding_side side;
  int max_tq, max_tk;
  problem_shape shape;
  attention_params params;
};

}  // namespace sinkmoe::fused
