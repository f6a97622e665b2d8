#pragma once
// Argument validation shared by every backend. Runs before anything is written; each failure
// throws sinkmoe::error naming the argument and the values.

#include <algorithm>
#include <array>
#include <climits>
#include <cstdint>
#include <sinkmoe/args.hpp>
#include <sinkmoe/core/error.hpp>
#include <sinkmoe/core/overlap.hpp>
#include <sinkmoe/core/tensor_view.hpp>
#include <type_traits>

namespace sinkmoe::detail {

/// The expected shape is a braced list; type_identity keeps it out of template deduction.
template <class T, int R>
using shape_of = std::type_identity_t<std::array<index_t, R>>;

/// A required view must have data, unless it holds no element (a zero extent): zero-length
/// sequences may come from containers whose data() is null.
template <class T, int R>
void require_shape(const char* name, const tensor_view<T, R>& view,
                   const shape_of<T, R>& expected) {
  const bool holds_nothing = std::find(expected.begin(), expected.end(), 0) != expected.end();
  require(!view.empty() || holds_nothing, name, " is required but empty (null data)");
  require(std::equal(expected.begin(), expected.end(), view.shape.begin()), name, ": shape ",
          view.shape, ", expected ", expected);
}

/// The last dimension must be contiguous (the backends vectorise along it).
template <class T, int R>
void require_unit_inner_stride(const char* name, const tensor_view<T, R>& view) {
  require(view.shape[R - 1] <= 1 || view.stride[R - 1] == 1, name, ": stride ", view.stride,
          " has a non-unit stride on the last dimension");
}

template <class T, int R>
void require_absent(const char* name, const tensor_view<T, R>& view, const char* why) {
  require(view.empty(), name, " was given, but ", why);
}

template <class T, int R>
void check_optional(const char* name, const tensor_view<T, R>& view,
                    const shape_of<T, R>& expected) {
  if (!view.empty()) require_shape(name, view, expected);
}

/// What validation may read of a varlen batch's offsets.
enum class offsets : std::uint8_t {
  readable,  ///< host pointers: every offset is checked
  trusted,   ///< device pointers with max_seqlen_q / max_seqlen_k given: not read (exec::cuda)
};

inline void check_varlen(const varlen_batch& vl, index_t total_q, index_t total_k,
                         offsets what = offsets::readable) {
  require(vl.cu_seqlens_k != nullptr, "varlen.cu_seqlens_k is null while cu_seqlens_q is set");
  require(vl.num_seqs >= 1, "varlen.num_seqs = ", vl.num_seqs, ": must be >= 1");
  require(vl.max_seqlen_q >= 0 && vl.max_seqlen_k >= 0 && vl.max_seqlen_q <= total_q &&
              vl.max_seqlen_k <= total_k,
          "varlen.max_seqlen_q = ", vl.max_seqlen_q, ", max_seqlen_k = ", vl.max_seqlen_k,
          ": must be in [0, rows of the tensor] (", total_q, " query, ", total_k, " key rows)");
  if (what == offsets::trusted) return;
  const auto check_offsets = [&](const std::int32_t* cu, const char* name, index_t total,
                                 int longest) {
    require(cu[0] == 0, name, "[0] = ", cu[0], ": must be 0");
    for (int s = 0; s < vl.num_seqs; ++s) {
      require(cu[s + 1] >= cu[s], name, " decreases at index ", s + 1, " (", cu[s], " -> ",
              cu[s + 1], ")");
      require(longest == 0 || cu[s + 1] - cu[s] <= longest, name, ": sequence ", s, " has ",
              cu[s + 1] - cu[s], " rows, more than the given max_seqlen ", longest);
    }
    require(cu[vl.num_seqs] == total, name, "[num_seqs] = ", cu[vl.num_seqs],
            ", but the tensor holds ", total, " rows");
  };
  check_offsets(vl.cu_seqlens_q, "varlen.cu_seqlens_q", total_q, vl.max_seqlen_q);
  check_offsets(vl.cu_seqlens_k, "varlen.cu_seqlens_k", total_k, vl.max_seqlen_k);
}

/// A padded batch's lengths: [B] views of values in [0, T], host-readable (exec::cuda copies
/// them to the host first).
inline void check_sequence_lengths(const sequence_lengths& lengths, index_t batch, index_t tq,
                                   index_t tk) {
  require(lengths.side == padding_side::right || lengths.side == padding_side::left,
          "forward_args.seqlens.side = ", static_cast<int>(lengths.side),
          ": not a padding_side value");
  const auto check = [&](const tensor_view<const std::int32_t, 1>& view, const char* name,
                         index_t rows) {
    if (view.empty()) return;
    require_shape(name, view, {batch});
    for (index_t b = 0; b < batch; ++b)
      require(view(b) >= 0 && view(b) <= rows, name, "[", b, "] = ", view(b), ": must be in [0, ",
              rows, "] (the tensor's T)");
  };
  check(lengths.q, "forward_args.seqlens.q", tq);
  check(lengths.k, "forward_args.seqlens.k", tk);
}

/// Validates forward arguments against the policies; returns the problem sizes.
template <class Sink, class Gate, class Mask, class Score, class T>
problem_shape validate_forward(const forward_args<T>& a,
                               offsets varlen_offsets = offsets::readable) {
  require(!a.q.empty() || a.q.numel() == 0, "forward_args.q is required but empty (null data)");
  const index_t batch = a.q.shape[0], tq = a.q.shape[1], hq = a.q.shape[2], d = a.q.shape[3];
  require(batch >= 1 && tq >= 0 && hq >= 1 && d >= 1, "forward_args.q: shape ", a.q.shape,
          " needs B >= 1, Tq >= 0, Hq >= 1, D >= 1");
  require(!a.k.empty() || a.k.numel() == 0, "forward_args.k is required but empty (null data)");
  const index_t tk = a.k.shape[1], hkv = a.k.shape[2];
  require(hkv >= 1 && hq % hkv == 0, "forward_args.k: Hkv = ", hkv, " must divide Hq = ", hq,
          " (GQA/MQA head ratio)");
  require(tk >= 0 && tq < INT_MAX && tk < INT_MAX, "sequence lengths Tq = ", tq, ", Tk = ", tk,
          " out of range");
  require_shape("forward_args.k", a.k, {batch, tk, hkv, d});
  require_shape("forward_args.v", a.v, {batch, tk, hkv, d});
  require_shape("forward_args.out", a.out, {batch, tq, hq, d});
  require_unit_inner_stride("forward_args.q", a.q);
  require_unit_inner_stride("forward_args.k", a.k);
  require_unit_inner_stride("forward_args.v", a.v);
  require_unit_inner_stride("forward_args.out", a.out);
  check_optional("forward_args.lse", a.lse, {batch, hq, tq});
  check_optional("forward_args.router", a.router, {batch, hq, tq});
  check_optional("forward_args.first_key_mass", a.first_key_mass, {batch, hq, tq});

  if constexpr (Sink::needs_sinks_tensor) {
    require_shape("forward_args.sinks", a.sinks, {hq});
  } else {
    require_absent("forward_args.sinks", a.sinks, "this sink policy takes no sinks tensor");
  }
  const int gate_dim = Gate::logit_dim(static_cast<int>(d));
  if constexpr (Gate::enabled) {
    require_shape("forward_args.gate_logits", a.gate_logits, {batch, tq, hq, index_t(gate_dim)});
    require_unit_inner_stride("forward_args.gate_logits", a.gate_logits);
  } else {
    require_absent("forward_args.gate_logits", a.gate_logits, "the gate policy is gate::none");
  }

  Mask::validate(a.params);
  Score::validate(a.params);
  Sink::validate(a.params);

  problem_shape shape{
      static_cast<int>(batch), static_cast<int>(batch), static_cast<int>(tq), static_cast<int>(tk),
      static_cast<int>(hq),    static_cast<int>(hkv),   static_cast<int>(d),  gate_dim};
  if (a.varlen.enabled()) {
    require(!a.seqlens.enabled(),
            "forward_args.seqlens given with varlen: a packed batch has its lengths in "
            "cu_seqlens (give one or the other)");
    require(batch == 1, "forward_args.q: B = ", batch,
            " with varlen; variable-length batches use B = 1 and cu_seqlens");
    check_varlen(a.varlen, tq, tk, varlen_offsets);
    shape.num_seqs = a.varlen.num_seqs;
  } else {
    require(a.varlen.cu_seqlens_k == nullptr,
            "varlen.cu_seqlens_k is set while cu_seqlens_q is null");
    require(a.varlen.num_seqs == 0, "varlen.num_seqs = ", a.varlen.num_seqs,
            " with null cu_seqlens_q: set the offsets, or leave num_seqs 0");
    check_sequence_lengths(a.seqlens, batch, tq, tk);
  }
  require_no_overlap(a);  // outputs apart from each other and the inputs (core/overlap.hpp)
  return shape;
}

/// Validates backward arguments (and the forward arguments they refer to).
template <class Sink, class Gate, class Mask, class Score, class T>
problem_shape validate_backward(const forward_args<T>& a, const backward_args<T>& g,
                                offsets varlen_offsets = offsets::readable) {
  const problem_shape s = validate_forward<Sink, Gate, Mask, Score>(a, varlen_offsets);
  const index_t b = s.batch, tq = s.tq, tk = s.tk, hq = s.q_heads, hkv = s.kv_heads, d = s.head_dim;
  require(!a.lse.empty(), "forward_args.lse is required by backward (write it in forward)");
  require_shape("backward_args.dout", g.dout, {b, tq, hq, d});
  require_shape("backward_args.dq", g.dq, {b, tq, hq, d});
  require_shape("backward_args.dk", g.dk, {b, tk, hkv, d});
  require_shape("backward_args.dv", g.dv, {b, tk, hkv, d});
  require_unit_inner_stride("backward_args.dout", g.dout);
  require_unit_inner_stride("backward_args.dq", g.dq);
  require_unit_inner_stride("backward_args.dk", g.dk);
  require_unit_inner_stride("backward_args.dv", g.dv);
  check_optional("backward_args.drouter", g.drouter, {b, hq, tq});
  check_optional("backward_args.dlse", g.dlse, {b, hq, tq});
  if constexpr (Sink::trainable) {
    require_shape("backward_args.dsinks", g.dsinks, {hq});
  } else {
    require_absent("backward_args.dsinks", g.dsinks, "this sink policy has no trainable logit");
  }
  if constexpr (Gate::enabled) {
    require_shape("backward_args.dgate_logits", g.dgate_logits, {b, tq, hq, index_t(s.gate_dim)});
    require_unit_inner_stride("backward_args.dgate_logits", g.dgate_logits);
  } else {
    require_absent("backward_args.dgate_logits", g.dgate_logits, "the gate policy is gate::none");
  }
  require_no_overlap(a, g);  // gradients apart from each other and what backward reads
  return s;
}

}  // namespace sinkmoe::detail
