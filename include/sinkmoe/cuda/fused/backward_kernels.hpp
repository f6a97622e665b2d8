#pragma once
// The fused backward (docs/method.md section 5; docs/design.md, "The fused CUDA kernels"): its
// kernels, workspace, parameters and launch geometry. Launches, in stream order:
//   1. backward_preprocess_kernel (backward_preprocess.hpp): the gate backward, Delta, the row
//      terms with dL/dG and dL/dLSE, d(sink) partials;
//   2. backward_dkdv_kernel (backward_dkdv.hpp), and dkdv_reduce_kernel when its items are split
//      across blocks;
//   3. backward_dq_kernel (backward_dq.hpp);
//   4. backward_dsink_kernel: a fixed-order sum of the preprocess's d(sink) partials.
// No float atomics: every output is written once after fixed-order reductions, so results are
// bitwise reproducible (the only mode).
//
// The main kernels depend only on the mask, the score and whether key 0 is the sink: the sink
// logit, the gate and the route act in the preprocess, so policy bundles that share those three
// share the main kernels (fewer instantiations, less nvcc time).
//
// Numerics: P is recomputed from the forward's lse in the exp2 domain; P^T is rounded to Element
// before dV += P^T dO, dS before dK += dS^T Q and dQ += dS K (as FlashAttention-2); the gate
// backward and all row statistics are fp32; a gated policy's dO is rounded to Element once. A
// linear score's scale is applied to dK and dQ once, at the end; a soft-cap multiplies dS by
// ds/d(q.k). Rows without a visible key have P = 0: nothing flows from them.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <sinkmoe/args.hpp>
#include <sinkmoe/core/error.hpp>
#include <sinkmoe/cuda/arch/arch.hpp>
#include <sinkmoe/cuda/fused/backward_dkdv.hpp>
#include <sinkmoe/cuda/fused/backward_dq.hpp>
#include <sinkmoe/cuda/fused/backward_preprocess.hpp>
#include <sinkmoe/cuda/fused/common.hpp>
#include <sinkmoe/cuda/fused/params.hpp>

namespace sinkmoe::fused {

/// d(sinks): grid (Hq) of one warp; lane l sums partials l, l + 32, ... in order, then a fixed
/// butterfly.
struct backward_dsink_kernel {
  static constexpr int k_max_threads = arch::k_warp_size;
  static constexpr int k_min_blocks = 1;
  static constexpr std::size_t smem_bytes = 0;

  template <class Element>
  SINKMOE_DEVICE void operator()(const backward_params<Element>& p) const {
    const int h = static_cast<int>(arch::block_index().x);
    const int count = p.shape.num_seqs * p.q_tiles;
    const float* partials = p.dsink_partial + static_cast<index_t>(h) * count;
    float sum = 0.0f;
    for (int i = arch::lane_id(); i < count; i += arch::k_warp_size)
      sum += arch::load_global(partials + i);
    sum = arch::warp_reduce_sum(sum);
    if (arch::lane_id() == 0) arch::store_global(p.dsinks + h * p.dsinks_stride, sum);
  }
};

/// The kernels of Attn's backward at one element type and head dim.
template <class Attn, arch::half_precision Element, int HeadDim>
struct backward_kernels {
  using mask_type = typename Attn::mask_type;
  using score_type = typename Attn::score_type;
  static constexpr bool key0_sink = Attn::sink_type::first_key_is_sink;
  using preprocess = backward_preprocess_kernel<Attn, Element, HeadDim>;
  using dkdv = backward_dkdv_kernel<mask_type, score_type, key0_sink, Element, HeadDim>;
  using dkdv_reduce = dkdv_reduce_kernel<Element>;
  using dq = backward_dq_kernel<mask_type, score_type, key0_sink, Element, HeadDim>;
  using dsink = backward_dsink_kernel;
  /// The largest dynamic shared memory of the main kernels.
  static constexpr std::size_t smem_bytes = std::max(dkdv::smem_bytes, dq::smem_bytes);
};

/// How many blocks share a key tile's items: 1 when the key tiles alone give at least two blocks
/// per SM (always for sm_count <= 0), else enough to, at most 8 and at most the items a block
/// walks.
inline int dkdv_splits_for(const problem_shape& shape, int max_tq, int max_tk, int block_k,
                           int sm_count) {
  const std::int64_t key_tiles = (max_tk + block_k - 1) / block_k;
  const std::int64_t blocks = key_tiles * shape.kv_heads * shape.num_seqs;
  const std::int64_t wanted = 2 * static_cast<std::int64_t>(sm_count);
  if (blocks == 0 || blocks >= wanted) return 1;
  const std::int64_t items = static_cast<std::int64_t>(shape.group_size()) * ((max_tq + 63) / 64);
  const std::int64_t splits = std::min<std::int64_t>({(wanted + blocks - 1) / blocks, 8, items});
  return static_cast<int>(std::max<std::int64_t>(splits, 1));
}

/// Byte offsets of the workspace's parts (each 256-byte aligned) and its size. A part the policy
/// or the problem does not need has size 0.
struct backward_workspace_layout {
  std::size_t grad_attn = 0, grad_attn_bytes = 0;
  std::size_t row_term = 0, key0_term = 0, row_stat_bytes = 0;
  std::size_t dsink_partial = 0, dsink_partial_bytes = 0;
  std::size_t dkdv_partial = 0, dkdv_partial_bytes = 0;
  int q_tiles = 0;      ///< preprocess query tiles per sequence (the longest sequence's)
  int dkdv_splits = 1;  ///< blocks per dK/dV key tile
  std::size_t total_bytes = 0;
};

/// Workspace of Attn's fused backward for a validated problem whose longest sequences have
/// max_tq query and max_tk key rows, on a device with sm_count SMs (it decides the dK/dV split).
template <class Attn, arch::half_precision Element, int HeadDim = 64>
backward_workspace_layout backward_workspace(const problem_shape& shape, int max_tq,
                                             int max_tk = -1, int sm_count = 1) {
  if (max_tk < 0) max_tk = shape.tk;
  const auto align = [](std::size_t x) { return (x + 255) / 256 * 256; };
  backward_workspace_layout w;
  w.q_tiles = (max_tq + k_preprocess_rows - 1) / k_preprocess_rows;
  w.dkdv_splits = dkdv_splits_for(shape, max_tq, max_tk, dkdv_traits<HeadDim>::block_k, sm_count);
  const std::size_t rows = static_cast<std::size_t>(shape.batch) * shape.tq * shape.q_heads;
  std::size_t at = 0;
  if constexpr (Attn::gate_type::enabled) {
    w.grad_attn = at;
    w.grad_attn_bytes = rows * shape.head_dim * sizeof(Element);
    at += align(w.grad_attn_bytes);
  }
  w.row_stat_bytes = rows * sizeof(float);
  w.row_term = at;
  at += align(w.row_stat_bytes);
  if constexpr (Attn::sink_type::first_key_is_sink) {
    w.key0_term = at;
    at += align(w.row_stat_bytes);
  }
  if constexpr (Attn::sink_type::trainable) {
    w.dsink_partial = at;
    w.dsink_partial_bytes =
        static_cast<std::size_t>(shape.q_heads) * shape.num_seqs * w.q_tiles * sizeof(float);
    at += align(w.dsink_partial_bytes);
  }
  if (w.dkdv_splits > 1) {
    w.dkdv_partial = at;
    w.dkdv_partial_bytes = static_cast<std::size_t>(w.dkdv_splits) * shape.batch * shape.tk *
                           shape.kv_heads * 2 * shape.head_dim * sizeof(float);
    at += align(w.dkdv_partial_bytes);
  }
  w.total_bytes = at;
  return w;
}

/// Kernel parameters from validated arguments and a workspace of at least layout.total_bytes
/// bytes, 256-byte aligned (device memory where the kernels run). Throws sinkmoe::error when a
/// row of q, k, v, dout, dq, dk or dv is not 16-byte aligned, an elementwise gate's logits or
/// their gradient are not pair-aligned (4 bytes), or the workspace is too small or misaligned.
template <class Attn, arch::half_precision Element>
backward_params<Element> make_backward_params(const forward_args<Element>& a,
                                              const backward_args<Element>& g,
                                              const problem_shape& shape,
                                              const backward_workspace_layout& w, int max_tq,
                                              int max_tk, void* workspace,
                                              std::size_t workspace_bytes) {
  detail::require_rows_16_byte_aligned("forward_args.q", a.q);
  detail::require_rows_16_byte_aligned("forward_args.k", a.k);
  detail::require_rows_16_byte_aligned("forward_args.v", a.v);
  detail::require_rows_16_byte_aligned("forward_args.out", a.out);
  detail::require_rows_16_byte_aligned("backward_args.dout", g.dout);
  detail::require_rows_16_byte_aligned("backward_args.dq", g.dq);
  detail::require_rows_16_byte_aligned("backward_args.dk", g.dk);
  detail::require_rows_16_byte_aligned("backward_args.dv", g.dv);
  if (shape.gate_dim > 1) {  // a gate logit per channel: read and written in pairs
    detail::require_pairs_4_byte_aligned("forward_args.gate_logits", a.gate_logits);
    detail::require_pairs_4_byte_aligned("backward_args.dgate_logits", g.dgate_logits);
  }
  sinkmoe::detail::require(workspace_bytes >= w.total_bytes,
                           "backward workspace: ", workspace_bytes, " bytes given, ", w.total_bytes,
                           " needed");
  sinkmoe::detail::require(
      w.total_bytes == 0 ||
          (workspace != nullptr && reinterpret_cast<std::uintptr_t>(workspace) % 256 == 0),
      "backward workspace: must be non-null and 256-byte aligned");
  auto* const base = static_cast<unsigned char*>(workspace);

  backward_params<Element> p{};
  p.q = strided_ref<const Element>::of(a.q);
  p.k = strided_ref<const Element>::of(a.k);
  p.v = strided_ref<const Element>::of(a.v);
  p.gate_logits = strided_ref<const Element>::of(a.gate_logits);
  p.sinks = a.sinks.data;
  p.sinks_stride = a.sinks.empty() ? 0 : a.sinks.stride[0];
  p.out = strided_ref<const Element>::of(a.out);
  p.lse = strided_ref<const float>::of(a.lse);
  p.dout = strided_ref<const Element>::of(g.dout);
  p.drouter = strided_ref<const float>::of(g.drouter);
  p.dlse = strided_ref<const float>::of(g.dlse);
  p.dq = strided_ref<Element>::of(g.dq);
  p.dk = strided_ref<Element>::of(g.dk);
  p.dv = strided_ref<Element>::of(g.dv);
  p.dgate_logits = strided_ref<Element>::of(g.dgate_logits);
  p.dsinks = g.dsinks.data;
  p.dsinks_stride = g.dsinks.empty() ? 0 : g.dsinks.stride[0];

  const index_t tq = shape.tq, hq = shape.q_heads, dim = shape.head_dim;
  if constexpr (Attn::gate_type::enabled) {
    p.grad_attn = reinterpret_cast<Element*>(base + w.grad_attn);
    p.d_attn.data = p.grad_attn;
    p.d_attn.stride[0] = tq * hq * dim;
    p.d_attn.stride[1] = hq * dim;
    p.d_attn.stride[2] = dim;
  } else {
    p.d_attn = p.dout;
  }
  const auto row_stats = [&](std::size_t offset) {
    strided_ref<float> r;
    r.data = reinterpret_cast<float*>(base + offset);
    r.stride[0] = hq * tq;
    r.stride[1] = tq;
    r.stride[2] = 1;
    return r;
  };
  p.row_term = row_stats(w.row_term);
  if constexpr (Attn::sink_type::first_key_is_sink) p.key0_term = row_stats(w.key0_term);
  if constexpr (Attn::sink_type::trainable)
    p.dsink_partial = reinterpret_cast<float*>(base + w.dsink_partial);
  p.q_tiles = w.q_tiles;
  p.dkdv_splits = w.dkdv_splits;
  if (w.dkdv_splits > 1) p.dkdv_partial = reinterpret_cast<float*>(base + w.dkdv_partial);
  set_batch_layout(p, a, shape, max_tq, max_tk);
  return p;
}

/// Grids of the backward's launches (block sizes and shared memory come from the kernel types).
struct backward_launch_geometry {
  launch_geometry preprocess, dkdv, dkdv_reduce, dq, dsink;
};

/// Launch geometry of backward_kernels<Attn, Element, HeadDim> for a validated problem with the
/// workspace layout w (its dK/dV split) and longest sequences max_tq, max_tk.
template <class Kernels, class Attn>
backward_launch_geometry backward_geometry(const problem_shape& shape,
                                           const backward_workspace_layout& w, int max_tq,
                                           int max_tk) {
  require_grid_limits("backward", shape.q_heads, shape.num_seqs * w.dkdv_splits);
  using dkdv_t = typename Kernels::dkdv::traits;
  using dq_t = typename Kernels::dq::traits;
  const auto tiles = [](int rows, int block) {
    return static_cast<unsigned>((rows + block - 1) / block);
  };
  const unsigned hq = static_cast<unsigned>(shape.q_heads);
  const unsigned seqs = static_cast<unsigned>(shape.num_seqs);
  backward_launch_geometry g;
  g.preprocess = {arch::index3(tiles(max_tq, k_preprocess_rows), hq, seqs), arch::index3(k_threads),
                  Kernels::preprocess::smem_bytes};
  g.dkdv = {arch::index3(tiles(max_tk, dkdv_t::block_k), static_cast<unsigned>(shape.kv_heads),
                         seqs * static_cast<unsigned>(w.dkdv_splits)),
            arch::index3(k_threads), Kernels::dkdv::smem_bytes};
  const std::int64_t pairs =
      static_cast<std::int64_t>(shape.batch) * shape.tk * shape.kv_heads * (shape.head_dim / 2);
  g.dkdv_reduce = {arch::index3(w.dkdv_splits > 1 ? static_cast<unsigned>(std::clamp<std::int64_t>(
                                                        (pairs + 255) / 256, 1, 4096))
                                                  : 0u),
                   arch::index3(256), 0};
  g.dq = {arch::index3(tiles(max_tq, dq_t::block_q), hq, seqs), arch::index3(k_threads),
          Kernels::dq::smem_bytes};
  g.dsink = {arch::index3(Attn::sink_type::trainable ? hq : 0u), arch::index3(arch::k_warp_size),
             0};
  return g;
}

/// Enqueues the backward's launches in stream order: launch(kernel, geometry, extra...) runs one
/// kernel on `geometry` with the parameters (the nvcc launcher passes arch::launch on the caller's
/// stream, the tests the emulation); empty geometries are skipped.
template <class Kernels, class Attn, class Launch>
void enqueue_backward(const backward_launch_geometry& g, const typename Attn::score_type& score,
                      Launch&& launch) {
  const auto run = [&](auto kernel, const launch_geometry& geometry, auto... extra) {
    if (!geometry.empty()) launch(kernel, geometry, extra...);
  };
  run(typename Kernels::preprocess{}, g.preprocess);
  run(typename Kernels::dkdv{}, g.dkdv);
  run(typename Kernels::dkdv_reduce{}, g.dkdv_reduce,
      Attn::score_type::is_linear ? static_cast<float>(score.scale()) : 1.0f);  // dK's scale
  run(typename Kernels::dq{}, g.dq);
  run(typename Kernels::dsink{}, g.dsink);
}

}  // namespace sinkmoe::fused
