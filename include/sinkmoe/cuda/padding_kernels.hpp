#pragma once
// The padding rows of a padded batch (forward_args::seqlens) on exec::cuda, for the fused kernels
// and the unfused path alike: the attention kernels work on each sequence's real rows only, and
// these two small kernels then write what a padding row holds, the values the host backend
// writes (host::detail::write_padding_rows):
//   forward:  out = 0, lse = the sink logit (-inf without one), G = 0, first-key mass = 0;
//   backward: dq = 0 and d(gate logits) = 0 on padding query rows, dk = dv = 0 on padding keys.
// One thread per (row, head); the lengths are read where the kernel runs and clamped to [0, T]
// (padded_sequence), like the attention kernels read them.

#include <cstdint>
#include <sinkmoe/args.hpp>
#include <sinkmoe/core/numeric.hpp>
#include <sinkmoe/core/tensor_view.hpp>
#include <sinkmoe/cuda/arch/arch.hpp>
#include <sinkmoe/cuda/fused/common.hpp>
#include <sinkmoe/params.hpp>
#include <sinkmoe/policy/rowwise.hpp>

namespace sinkmoe::padding {

inline constexpr int k_threads = 256;  ///< threads per block

/// Tensors as the kernels see them: a pointer and the strides of the three outer dimensions.
template <class T>
using rows_ref = fused::strided_ref<T>;

/// One side's lengths of a padded batch, as the kernels read them.
struct lengths_ref {
  const std::int32_t* data = nullptr;  ///< [B], null: every row is real
  index_t stride = 0;
  static lengths_ref of(const tensor_view<const std::int32_t, 1>& view) {
    return {view.data, view.empty() ? 0 : view.stride[0]};
  }
  /// The real rows of sequence b among `total`.
  [[nodiscard]] SINKMOE_DEVICE real_rows of_sequence(index_t b, int total,
                                                     padding_side side) const {
    return padded_sequence(data == nullptr ? total : arch::load_global(data + b * stride), total,
                           side);
  }
};

[[nodiscard]] SINKMOE_HD inline bool is_padding(const real_rows& real, int row) {
  return row < real.begin || row >= real.begin + real.count;
}

/// The grid of a one-thread-per-item launch over `items` (at most 65535 blocks, grid-stride).
inline arch::index3 grid_for(std::int64_t items) {
  const std::int64_t blocks = (items + k_threads - 1) / k_threads;
  return arch::index3(static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65535 ? 65535 : blocks)));
}

/// Calls f(item) for item in [0, items) over the grid.
template <class Fn>
SINKMOE_DEVICE void grid_stride(std::int64_t items, Fn&& f) {
  const std::int64_t step = static_cast<std::int64_t>(arch::grid_dim().x) * k_threads;
  for (std::int64_t i =
           static_cast<std::int64_t>(arch::block_index().x) * k_threads + arch::thread_rank();
       i < items; i += step)
    f(i);
}

template <class Element>
struct forward_params {
  rows_ref<Element> out;                        ///< [B, Tq, Hq, D]
  rows_ref<float> lse, router, first_key_mass;  ///< [B, Hq, Tq], optional
  const float* sinks;                           ///< [Hq] (sink::learned), else null
  index_t sinks_stride;
  lengths_ref seqlens_q;
  padding_side side;
  int batch, tq, q_heads, head_dim;
  attention_params params;
};

/// Writes the padding query rows of the forward's outputs.
template <class Sink, class Element>
struct forward_kernel {
  SINKMOE_DEVICE void operator()(const forward_params<Element>& p) const {
    const std::int64_t items = static_cast<std::int64_t>(p.batch) * p.tq * p.q_heads;
    grid_stride(items, [&](std::int64_t i) {
      const int h = static_cast<int>(i % p.q_heads);
      const int row = static_cast<int>(i / p.q_heads % p.tq);
      const index_t b = i / p.q_heads / p.tq;
      if (!is_padding(p.seqlens_q.of_sequence(b, p.tq, p.side), row)) return;
      Element* out_row = p.out.at(b, row, h);
      for (int c = 0; c < p.head_dim; ++c)
        arch::store_global(out_row + c, arch::from_float<Element>(0.0f));
      if (p.lse.data != nullptr)
        arch::store_global(p.lse.at(b, h, row),
                           rowwise::empty_row_lse<Sink>(p.params, p.sinks, p.sinks_stride, h));
      if (p.router.data != nullptr) arch::store_global(p.router.at(b, h, row), 0.0f);
      if (p.first_key_mass.data != nullptr)
        arch::store_global(p.first_key_mass.at(b, h, row), 0.0f);
    });
  }
};

template <class Element>
struct backward_params {
  rows_ref<Element> dq, dgate_logits;  ///< [B, Tq, Hq, D or gate_dim]; dgate_logits optional
  rows_ref<Element> dk, dv;            ///< [B, Tk, Hkv, D]
  lengths_ref seqlens_q, seqlens_k;
  padding_side side;
  int batch, tq, tk, q_heads, kv_heads, head_dim, gate_dim;
};

/// Zeroes the gradients of padding query rows and padding keys.
template <class Element>
struct backward_kernel {
  SINKMOE_DEVICE void operator()(const backward_params<Element>& p) const {
    const Element zero = arch::from_float<Element>(0.0f);
    const std::int64_t query_items = static_cast<std::int64_t>(p.batch) * p.tq * p.q_heads;
    const std::int64_t key_items = static_cast<std::int64_t>(p.batch) * p.tk * p.kv_heads;
    grid_stride(query_items + key_items, [&](std::int64_t i) {
      const bool query = i < query_items;
      const std::int64_t item = query ? i : i - query_items;
      const int heads = query ? p.q_heads : p.kv_heads, rows = query ? p.tq : p.tk;
      const int h = static_cast<int>(item % heads);
      const int row = static_cast<int>(item / heads % rows);
      const index_t b = item / heads / rows;
      const lengths_ref& lengths = query ? p.seqlens_q : p.seqlens_k;
      if (!is_padding(lengths.of_sequence(b, rows, p.side), row)) return;
      if (query) {
        for (int c = 0; c < p.head_dim; ++c) arch::store_global(p.dq.at(b, row, h) + c, zero);
        if (p.dgate_logits.data != nullptr)
          for (int c = 0; c < p.gate_dim; ++c)
            arch::store_global(p.dgate_logits.at(b, row, h) + c, zero);
      } else {
        for (int c = 0; c < p.head_dim; ++c) {
          arch::store_global(p.dk.at(b, row, h) + c, zero);
          arch::store_global(p.dv.at(b, row, h) + c, zero);
        }
      }
    });
  }
};

/// The forward kernel's parameters from validated arguments (pointers where the kernel runs).
template <class Element>
forward_params<Element> make_forward_params(const forward_args<Element>& a,
                                            const problem_shape& shape) {
  return {rows_ref<Element>::of(a.out),
          rows_ref<float>::of(a.lse),
          rows_ref<float>::of(a.router),
          rows_ref<float>::of(a.first_key_mass),
          a.sinks.data,
          a.sinks.empty() ? 0 : a.sinks.stride[0],
          lengths_ref::of(a.seqlens.q),
          a.seqlens.side,
          shape.batch,
          shape.tq,
          shape.q_heads,
          shape.head_dim,
          a.params};
}

/// The backward kernel's parameters from validated arguments.
template <class Element>
backward_params<Element> make_backward_params(const forward_args<Element>& a,
                                              const backward_args<Element>& g,
                                              const problem_shape& shape) {
  return {rows_ref<Element>::of(g.dq),
          rows_ref<Element>::of(g.dgate_logits),
          rows_ref<Element>::of(g.dk),
          rows_ref<Element>::of(g.dv),
          lengths_ref::of(a.seqlens.q),
          lengths_ref::of(a.seqlens.k),
          a.seqlens.side,
          shape.batch,
          shape.tq,
          shape.tk,
          shape.q_heads,
          shape.kv_heads,
          shape.head_dim,
          shape.gate_dim};
}

/// After the forward's attention kernels, for a padded batch: launch(kernel, grid, block,
/// params) runs forward_kernel (the nvcc launchers pass arch::launch on the caller's stream, the
/// tests the emulation). Nothing for a batch without lengths.
template <class Sink, class Element, class Launch>
void enqueue_forward(const forward_args<Element>& a, const problem_shape& shape, Launch&& launch) {
  const std::int64_t items = static_cast<std::int64_t>(shape.batch) * shape.tq * shape.q_heads;
  if (!a.seqlens.enabled() || items == 0) return;
  launch(forward_kernel<Sink, Element>{}, grid_for(items), arch::index3(k_threads),
         make_forward_params(a, shape));
}

/// After the backward's kernels, for a padded batch: runs backward_kernel likewise.
template <class Element, class Launch>
void enqueue_backward(const forward_args<Element>& a, const backward_args<Element>& g,
                      const problem_shape& shape, Launch&& launch) {
  const std::int64_t items = static_cast<std::int64_t>(shape.batch) *
                             (static_cast<std::int64_t>(shape.tq) * shape.q_heads +
                              static_cast<std::int64_t>(shape.tk) * shape.kv_heads);
  if (!a.seqlens.enabled() || items == 0) return;
  launch(backward_kernel<Element>{}, grid_for(items), arch::index3(k_threads),
         make_backward_params(a, g, shape));
}

}  // namespace sinkmoe::padding
