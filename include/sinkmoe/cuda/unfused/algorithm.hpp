#pragma once
// The unfused attention algorithm (docs/design.md section 5; docs/method.md sections 1, 2, 5),
// written once over two providers so that CI runs it without a GPU:
//
//   Device::gemm(const gemm_desc&)                       strided-batched GEMM (unfused/gemm.hpp)
//   Device::template launch<Kernel>(launch_shape, params)  one row kernel (unfused/row_kernels.hpp)
//
// On the GPU (unfused/unfused.cuh) the GEMMs are cuBLASLt and the kernels arch::launch; in the
// tests (test/support/unfused_check.hpp) a host loop GEMM and arch::emulated_launch.
//
// Forward, per sequence and query chunk [q0, q0 + rows) (keys limited to the hull of the
// chunk's Mask::key_range), for each GQA group member m as one GEMM batched over the kv heads
// (query head h = hk * group + m; strides only, no copies):
//   S = Q K^T (fp32)  ->  forward_rows_kernel: logits, softmax, sink, P = exp(s - lse) (Element)
//   O = P V   (fp32)  ->  forward_epilogue_kernel: out = Gate(O), lse, router, first-key mass
// Backward, per b and chunk:
//   backward_rows_kernel: gate backward (dO as Element), D, key-0 term, d(sink) row terms
//   S = Q K^T, dP = dO V^T (fp32) -> backward_scores_kernel: P, dS (Element)
//   dV_acc += P^T dO, dK_acc += dS^T Q (fp32 accumulators [Hkv][Tk][D], beta = 1, in the fixed
//   order chunk-major then group member: deterministic); dQ = dS K (Element, written directly)
// then per b: dK, dV = Element(acc); at the end d(sinks) per head in a fixed order.
//
// Workspace (workspace_bytes): the [Hq][chunk rows][Tk] score buffers dominate, so the caller
// bounds memory by the chunk size (default_chunk_rows picks one for a byte budget); the rest is
// linear in Tq or Tk.
//
// Batches: the loops run over sequences (sequence_span: a dense batch entry, a packed varlen
// sequence, or a padded sequence's real rows), whose offsets and lengths the host reads; the
// padding rows of a padded batch are written by the padding kernels (cuda/padding_kernels.hpp).

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <sinkmoe/args.hpp>
#include <sinkmoe/core/error.hpp>
#include <sinkmoe/cuda/arch/arch.hpp>
#include <sinkmoe/cuda/padding_kernels.hpp>
#include <sinkmoe/cuda/unfused/gemm.hpp>
#include <sinkmoe/cuda/unfused/row_kernels.hpp>
#include <span>
#include <type_traits>
#include <vector>

namespace sinkmoe::unfused {

/// Grid, block and dynamic shared memory of one row-kernel launch.
struct launch_shape {
  arch::index3 grid;
  arch::index3 block;
  std::size_t smem_bytes = 0;
};

/// Which pass a workspace is for.
enum class pass : std::uint8_t { forward, backward };

/// Default byte budget of the chunk-sized buffers (default_chunk_rows).
inline constexpr std::size_t k_default_chunk_budget_bytes = std::size_t(256) << 20;

/// Byte offsets of the workspace regions of one pass (each 256-byte aligned).
struct workspace_layout {
  // Chunk buffers, [Hq][rows][ld] or [Hq][rows][D]
  std::size_t scores = 0, dp = 0, probs = 0, ds = 0, o = 0, o_gated = 0, d_attn_out = 0;
  std::size_t dy = 0, y = 0, d_o = 0, z = 0, dz = 0, stats = 0, row_term = 0, key0_term = 0;
  // Whole-problem buffers
  std::size_t dsink_rows = 0, dk_acc = 0, dv_acc = 0;
  std::size_t total = 0;
};

namespace detail {

inline std::size_t align_up(std::size_t x, std::size_t a) { return (x + a - 1) / a * a; }

/// Row stride of the [Hq][rows][ld] score buffers: Tk rounded up to 8 elements (16-byte rows
/// for 16-bit P and dS, as cuBLASLt's fast kernels want).
inline index_t score_ld(int tk) { return static_cast<index_t>(std::max(tk, 1) + 7) / 8 * 8; }

}  // namespace detail

/// Workspace regions for a validated problem, a chunk of chunk_rows query rows and 16-bit
/// elements of element_bytes (2 for bf16 / fp16).
inline workspace_layout make_layout(const problem_shape& shape, int chunk_rows, pass which,
                                    std::size_t element_bytes = 2) {
  sinkmoe::detail::require(chunk_rows >= 1, "unfused: chunk_rows = ", chunk_rows, ": must be >= 1");
  const std::size_t rows = static_cast<std::size_t>(shape.q_heads) * chunk_rows;
  const std::size_t score_elems = rows * static_cast<std::size_t>(detail::score_ld(shape.tk));
  const std::size_t d = static_cast<std::size_t>(shape.head_dim);
  const std::size_t dg = static_cast<std::size_t>(shape.gate_dim);
  workspace_layout w;
  std::size_t at = 0;
  const auto take = [&](std::size_t& field, std::size_t bytes) {
    field = at;
    at = detail::align_up(at + bytes, 256);
  };
  take(w.scores, score_elems * sizeof(float));
  take(w.probs, score_elems * element_bytes);
  if (which == pass::forward) {
    take(w.o, rows * d * sizeof(float));
    take(w.o_gated, rows * d * sizeof(float));
    take(w.z, rows * dg * sizeof(float));
    take(w.stats, rows * sizeof(row_stats));
  } else {
    take(w.dp, score_elems * sizeof(float));
    take(w.ds, score_elems * element_bytes);
    take(w.d_attn_out, rows * d * element_bytes);
    take(w.dy, rows * d * sizeof(float));
    take(w.y, rows * d * sizeof(float));
    take(w.d_o, rows * d * sizeof(float));
    take(w.z, rows * dg * sizeof(float));
    take(w.dz, rows * dg * sizeof(float));
    take(w.row_term, rows * sizeof(float));
    take(w.key0_term, rows * sizeof(float));
    take(w.dsink_rows,
         static_cast<std::size_t>(shape.q_heads) * shape.batch * shape.tq * sizeof(float));
    const std::size_t acc = static_cast<std::size_t>(shape.kv_heads) * shape.tk * d;
    take(w.dk_acc, acc * sizeof(float));
    take(w.dv_acc, acc * sizeof(float));
  }
  w.total = at;
  return w;
}

/// Bytes of device workspace one forward or backward call needs (the caller allocates them, or
/// the nvcc entry points do on the stream): linear in Tq and Tk plus Hq * chunk_rows * Tk * c,
/// c = 6 bytes (forward) or 12 bytes (backward) for 16-bit elements.
inline std::size_t workspace_bytes(const problem_shape& shape, int chunk_rows, pass which,
                                   std::size_t element_bytes = 2) {
  return make_layout(shape, chunk_rows, which, element_bytes).total;
}

/// The largest chunk (at most Tq, at least 1 row) whose Tq x Tk buffers fit budget_bytes.
inline int default_chunk_rows(const problem_shape& shape,
                              std::size_t budget_bytes = k_default_chunk_budget_bytes) {
  const std::size_t per_row = static_cast<std::size_t>(shape.q_heads) *
                              static_cast<std::size_t>(detail::score_ld(shape.tk)) * 12;
  const std::size_t fit = budget_bytes / std::max<std::size_t>(per_row, 1);
  return static_cast<int>(std::clamp<std::size_t>(fit, 1, std::max(shape.tq, 1)));
}

namespace detail {

template <class T>
constexpr element_kind kind_of() {
  if constexpr (std::is_same_v<T, float>) return element_kind::f32;
  if constexpr (std::is_same_v<T, arch::bf16>) return element_kind::bf16;
  if constexpr (std::is_same_v<T, arch::fp16>) return element_kind::f16;
}

/// cuBLASLt needs ld >= the stored row length; a tensor with more than one row per head must
/// have a T stride of at least D.
template <class T>
void require_row_stride(const char* name, const tensor_view<T, 4>& x) {
  if (x.empty()) return;
  sinkmoe::detail::require(x.shape[1] <= 1 || x.stride[1] >= x.shape[3], name, ": stride ",
                           x.stride, " has a T stride below D = ", x.shape[3],
                           "; the unfused path (cuBLASLt) needs T stride >= D");
}

template <class Element>
void require_unfused_forward(const forward_args<Element>& a, const problem_shape& shape) {
  require_row_stride("forward_args.q", a.q);
  require_row_stride("forward_args.k", a.k);
  require_row_stride("forward_args.v", a.v);
  require_row_stride("forward_args.out", a.out);
  // Row ids of one chunk are int; a launch's grid.x is at most 2^31 - 1 blocks.
  sinkmoe::detail::require(
      static_cast<std::int64_t>(shape.q_heads) * shape.tq < std::numeric_limits<int>::max(),
      "forward_args.q: Hq * Tq = ", static_cast<std::int64_t>(shape.q_heads) * shape.tq,
      " exceeds the unfused path's int row ids");
}

}  // namespace detail

/// Checks the forward arguments (Attn::validate, then what only this path needs: T strides >= D).
/// Throws sinkmoe::error naming the argument; writes nothing.
template <class Attn, class Element>
problem_shape validate_forward(const forward_args<Element>& a) {
  const problem_shape shape = Attn::validate(a);
  detail::require_unfused_forward(a, shape);
  return shape;
}

/// Checks the backward arguments likewise.
template <class Attn, class Element>
problem_shape validate_backward(const forward_args<Element>& a, const backward_args<Element>& g) {
  const problem_shape shape = Attn::validate(a, g);
  detail::require_unfused_forward(a, shape);
  detail::require_row_stride("backward_args.dout", g.dout);
  detail::require_row_stride("backward_args.dq", g.dq);
  return shape;
}

namespace detail {

/// The sequences of a validated problem, read where the offsets and lengths are (host memory).
template <class Element>
std::vector<sequence_span> sequences_of(const problem_shape& shape,
                                        const forward_args<Element>& a) {
  std::vector<sequence_span> spans;
  for (int s = 0; s < shape.num_seqs; ++s) spans.push_back(sequence_at(shape, a, s));
  return spans;
}

/// The chunks of one sequence, each with its key hull (in the sequence's key columns).
template <class Attn>
std::vector<chunk_geometry> make_chunks(const attention_params& params, const sequence_span& seq,
                                        int chunk_rows) {
  using Mask = typename Attn::mask_type;
  const Mask mask(params, seq.tq, seq.tk);
  std::vector<chunk_geometry> chunks;
  for (int q0 = 0; q0 < seq.tq; q0 += chunk_rows) {
    const int rows = std::min(chunk_rows, seq.tq - q0);
    const key_span hull = rows_key_hull(mask, q0, q0 + rows);
    chunks.push_back({seq.batch_index, q0, rows, hull.begin, hull.end - hull.begin,
                      score_ld(seq.tk), seq.q_begin, seq.k_begin, seq.tq, seq.tk});
  }
  return chunks;
}

/// Runs launch(kernel, launch_shape, params) through Device for the padding kernels.
template <class Device>
auto padding_launcher(Device& dev) {
  return [&dev](auto kernel, arch::index3 grid, arch::index3 block, const auto& params) {
    dev.template launch<decltype(kernel)>(launch_shape{grid, block, 0}, params);
  };
}

/// A grid of blocks of `threads` covering `items` (one per thread or warp already divided).
inline launch_shape cover(std::int64_t blocks, int threads, std::size_t smem = 0) {
  return {arch::index3(static_cast<unsigned>(std::max<std::int64_t>(blocks, 1))),
          arch::index3(static_cast<unsigned>(threads)), smem};
}

inline std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

/// Grid-stride fill kernels: enough blocks for the work, at most 4096.
inline launch_shape elementwise_shape(std::int64_t items) {
  return cover(std::min<std::int64_t>(ceil_div(items, k_elementwise_threads), 4096),
               k_elementwise_threads);
}

/// Runs g, or zeroes its D when the inner dimension is empty (D = alpha * 0 + 0 * C).
template <class Device, class DType>
void gemm_or_zero(Device& dev, const gemm_desc& g) {
  if (g.m <= 0 || g.n <= 0 || g.batch <= 0) return;
  if (g.k > 0) {
    dev.gemm(g);
    return;
  }
  if (g.beta != 0.0f) return;  // accumulate nothing
  const zero_matrix_params<DType> z{static_cast<DType*>(g.d), g.batch, g.m, g.n, g.ldd,
                                    g.batch_stride_d};
  dev.template launch<zero_matrix_kernel<DType>>(
      elementwise_shape(static_cast<std::int64_t>(g.batch) * g.m * g.n), z);
}

/// ld for a [rows x cols] operand whose row stride is `stride`: any value >= cols works when
/// there is a single row.
inline std::int64_t operand_ld(index_t stride, int rows, int cols) {
  return rows <= 1 ? std::max<std::int64_t>(stride, cols) : stride;
}

template <class T>
T* byte_offset(std::byte* base, std::size_t offset) {
  return reinterpret_cast<T*>(base + offset);
}

/// S = Q K^T over chunk c's keys for group member m (raw dots, fp32), batched over the kv heads:
/// the first GEMM of both passes.
template <class Element>
gemm_desc score_gemm(const forward_args<Element>& a, const problem_shape& shape,
                     const chunk_geometry& c, int m, float* scores, index_t head_block) {
  const int group = shape.group_size(), d = shape.head_dim;
  gemm_desc g;
  g.m = c.rows;
  g.n = c.key_count;
  g.k = d;
  g.batch = shape.kv_heads;
  g.transpose_b = true;
  g.a_type = g.b_type = kind_of<Element>();
  g.d_type = element_kind::f32;
  g.a = a.q.data + a.q.offset(c.batch, c.q_offset + c.q0, m, 0);
  g.lda = operand_ld(a.q.stride[1], c.rows, d);
  g.batch_stride_a = group * a.q.stride[2];
  g.b = a.k.data + a.k.offset(c.batch, c.k_offset + c.key_begin, 0, 0);
  g.ldb = operand_ld(a.k.stride[1], c.key_count, d);
  g.batch_stride_b = a.k.stride[2];
  g.d = scores + m * head_block;
  g.ldd = g.ldc = c.ld;
  g.batch_stride_d = g.batch_stride_c = group * head_block;
  return g;
}

}  // namespace detail

/// Forward of Attn through Device (file comment). `shape` comes from validate_forward;
/// `workspace` holds workspace_bytes(shape, chunk_rows, pass::forward) bytes where Device runs
/// (256-byte aligned).
template <class Attn, class Element, class Device>
void forward(Device& dev, const forward_args<Element>& a, const problem_shape& shape,
             std::byte* workspace, int chunk_rows, std::span<const sequence_span> sequences = {}) {
  const workspace_layout w = make_layout(shape, chunk_rows, pass::forward, sizeof(Element));
  if (shape.tq == 0) return;
  const std::vector<sequence_span> read_here =
      sequences.empty() ? detail::sequences_of(shape, a) : std::vector<sequence_span>{};
  if (sequences.empty()) sequences = read_here;
  const int group = shape.group_size(), d = shape.head_dim;
  float* const scores = detail::byte_offset<float>(workspace, w.scores);
  Element* const probs = detail::byte_offset<Element>(workspace, w.probs);
  float* const o = detail::byte_offset<float>(workspace, w.o);
  constexpr element_kind ek = detail::kind_of<Element>();

  for (const sequence_span& seq : sequences) {
    for (const chunk_geometry& c : detail::make_chunks<Attn>(a.params, seq, chunk_rows)) {
      const int b = c.batch;
      const index_t head_block = static_cast<index_t>(c.rows) * c.ld;  // one head's scores
      // S = Q K^T over the chunk's keys, one GEMM per group member batched over the kv heads.
      for (int m = 0; m < group; ++m) {
        const gemm_desc g = detail::score_gemm(a, shape, c, m, scores, head_block);
        detail::gemm_or_zero<Device, float>(dev, g);
      }
      const int total_rows = c.total_rows(shape.q_heads);
      forward_rows_params<Element> rp{scores,
                                      probs,
                                      detail::byte_offset<row_stats>(workspace, w.stats),
                                      a.sinks.data,
                                      a.sinks.empty() ? 0 : a.sinks.stride[0],
                                      shape,
                                      a.params,
                                      c};
      dev.template launch<forward_rows_kernel<Attn, Element>>(
          detail::cover(detail::ceil_div(total_rows, k_row_warps), k_row_threads), rp);
      // O = P V (P already normalised), fp32.
      for (int m = 0; m < group; ++m) {
        gemm_desc g;
        g.m = c.rows;
        g.n = d;
        g.k = c.key_count;
        g.batch = shape.kv_heads;
        g.a_type = g.b_type = ek;
        g.d_type = element_kind::f32;
        g.a = probs + m * head_block;
        g.lda = c.ld;
        g.batch_stride_a = group * head_block;
        g.b = a.v.data + a.v.offset(b, c.k_offset + c.key_begin, 0, 0);
        g.ldb = detail::operand_ld(a.v.stride[1], c.key_count, d);
        g.batch_stride_b = a.v.stride[2];
        g.d = o + static_cast<index_t>(m) * c.rows * d;
        g.ldd = g.ldc = d;
        g.batch_stride_d = g.batch_stride_c = static_cast<index_t>(group) * c.rows * d;
        detail::gemm_or_zero<Device, float>(dev, g);
      }
      forward_epilogue_params<Element> ep{};
      ep.o = o;
      ep.o_scratch = detail::byte_offset<float>(workspace, w.o_gated);
      ep.z_scratch = shape.gate_dim > 0 ? detail::byte_offset<float>(workspace, w.z) : nullptr;
      ep.stats = detail::byte_offset<row_stats>(workspace, w.stats);
      ep.gate_logits = a.gate_logits.data;
      ep.gate_stride = strides_of(a.gate_logits);
      ep.out = a.out.data;
      ep.out_stride = strides_of(a.out);
      ep.lse = a.lse.data;
      ep.lse_stride = strides_of(a.lse);
      ep.router = a.router.data;
      ep.router_stride = strides_of(a.router);
      ep.first_key_mass = a.first_key_mass.data;
      ep.first_key_mass_stride = strides_of(a.first_key_mass);
      ep.shape = shape;
      ep.chunk = c;
      dev.template launch<forward_epilogue_kernel<Attn, Element>>(
          detail::cover(detail::ceil_div(total_rows, k_thread_rows), k_thread_rows), ep);
    }
  }
  padding::enqueue_forward<typename Attn::sink_type>(a, shape, detail::padding_launcher(dev));
}

/// Backward of Attn through Device (file comment). `shape` comes from validate_backward;
/// `workspace` holds workspace_bytes(shape, chunk_rows, pass::backward) bytes.
template <class Attn, class Element, class Device>
void backward(Device& dev, const forward_args<Element>& a, const backward_args<Element>& g,
              const problem_shape& shape, std::byte* workspace, int chunk_rows,
              std::span<const sequence_span> sequences = {}) {
  using Sink = typename Attn::sink_type;
  const workspace_layout w = make_layout(shape, chunk_rows, pass::backward, sizeof(Element));
  const int group = shape.group_size(), d = shape.head_dim;
  float* const scores = detail::byte_offset<float>(workspace, w.scores);
  float* const dp = detail::byte_offset<float>(workspace, w.dp);
  Element* const probs = detail::byte_offset<Element>(workspace, w.probs);
  Element* const ds = detail::byte_offset<Element>(workspace, w.ds);
  Element* const d_attn_out = detail::byte_offset<Element>(workspace, w.d_attn_out);
  float* const dk_acc = detail::byte_offset<float>(workspace, w.dk_acc);
  float* const dv_acc = detail::byte_offset<float>(workspace, w.dv_acc);
  float* const dsink_rows = detail::byte_offset<float>(workspace, w.dsink_rows);
  constexpr element_kind ek = detail::kind_of<Element>();
  const index_t acc_head = static_cast<index_t>(shape.tk) * d;  // one kv head of dK_acc

  const std::vector<sequence_span> read_here =
      sequences.empty() ? detail::sequences_of(shape, a) : std::vector<sequence_span>{};
  if (sequences.empty()) sequences = read_here;
  if (Sink::trainable && a.seqlens.enabled() && shape.tq > 0) {  // padding rows add nothing
    const zero_matrix_params<float> z{dsink_rows,
                                      1,
                                      shape.q_heads,
                                      shape.batch * shape.tq,
                                      static_cast<index_t>(shape.batch) * shape.tq,
                                      0};
    dev.template launch<zero_matrix_kernel<float>>(
        detail::elementwise_shape(static_cast<std::int64_t>(shape.q_heads) * shape.batch *
                                  shape.tq),
        z);
  }
  for (int b = 0; b < shape.batch; ++b) {
    for (float* acc : {dk_acc, dv_acc}) {
      const zero_matrix_params<float> z{acc, 1, shape.kv_heads * shape.tk, d, d, 0};
      if (shape.tk > 0)
        dev.template launch<zero_matrix_kernel<float>>(
            detail::elementwise_shape(static_cast<std::int64_t>(shape.kv_heads) * acc_head), z);
    }
    for (const sequence_span& seq : sequences) {
      if (seq.batch_index != b) continue;
      for (const chunk_geometry& c : detail::make_chunks<Attn>(a.params, seq, chunk_rows)) {
        const index_t head_block = static_cast<index_t>(c.rows) * c.ld;
        const index_t head_rows = static_cast<index_t>(c.rows) * d;  // one head of dO
        const int total_rows = c.total_rows(shape.q_heads);

        backward_rows_params<Element> rp{};
        rp.dout = g.dout.data;
        rp.dout_stride = strides_of(g.dout);
        rp.out = a.out.data;
        rp.out_stride = strides_of(a.out);
        rp.gate_logits = a.gate_logits.data;
        rp.gate_stride = strides_of(a.gate_logits);
        rp.dgate_logits = g.dgate_logits.data;
        rp.dgate_stride = strides_of(g.dgate_logits);
        rp.q = a.q.data;
        rp.q_stride = strides_of(a.q);
        rp.k = a.k.data;
        rp.k_stride = strides_of(a.k);
        rp.sinks = a.sinks.data;
        rp.sinks_stride = a.sinks.empty() ? 0 : a.sinks.stride[0];
        rp.lse = a.lse.data;
        rp.lse_stride = strides_of(a.lse);
        rp.drouter = g.drouter.data;
        rp.drouter_stride = strides_of(g.drouter);
        rp.dlse = g.dlse.data;
        rp.dlse_stride = strides_of(g.dlse);
        rp.dy_scratch = detail::byte_offset<float>(workspace, w.dy);
        rp.y_scratch = detail::byte_offset<float>(workspace, w.y);
        rp.do_scratch = detail::byte_offset<float>(workspace, w.d_o);
        rp.z_scratch = shape.gate_dim > 0 ? detail::byte_offset<float>(workspace, w.z) : nullptr;
        rp.dz_scratch = shape.gate_dim > 0 ? detail::byte_offset<float>(workspace, w.dz) : nullptr;
        rp.d_attn_out = d_attn_out;
        rp.row_term = detail::byte_offset<float>(workspace, w.row_term);
        rp.key0_term = detail::byte_offset<float>(workspace, w.key0_term);
        rp.dsink_rows = Sink::trainable ? dsink_rows : nullptr;
        rp.shape = shape;
        rp.params = a.params;
        rp.chunk = c;
        dev.template launch<backward_rows_kernel<Attn, Element>>(
            detail::cover(detail::ceil_div(total_rows, k_thread_rows), k_thread_rows), rp);

        for (int m = 0; m < group; ++m) {
          // S = Q K^T (raw dots), as in forward.
          const gemm_desc s = detail::score_gemm(a, shape, c, m, scores, head_block);
          detail::gemm_or_zero<Device, float>(dev, s);
          // dP = dO V^T.
          gemm_desc p = s;
          p.a = d_attn_out + m * head_rows;
          p.lda = d;
          p.batch_stride_a = group * head_rows;
          p.b = a.v.data + a.v.offset(b, c.k_offset + c.key_begin, 0, 0);
          p.ldb = detail::operand_ld(a.v.stride[1], c.key_count, d);
          p.batch_stride_b = a.v.stride[2];
          p.d = dp + m * head_block;
          detail::gemm_or_zero<Device, float>(dev, p);
        }
        backward_scores_params<Element> sp{
            scores,      dp,           probs, ds,       a.lse.data, strides_of(a.lse),
            rp.row_term, rp.key0_term, shape, a.params, c};
        dev.template launch<backward_scores_kernel<Attn, Element>>(
            detail::cover(detail::ceil_div(total_rows, k_row_warps), k_row_threads), sp);

        for (int m = 0; m < group; ++m) {
          // dV_acc[keys] += P^T dO and dK_acc[keys] += dS^T Q (fp32, beta = 1).
          gemm_desc v;
          v.m = c.key_count;
          v.n = d;
          v.k = c.rows;
          v.batch = shape.kv_heads;
          v.transpose_a = true;
          v.a_type = v.b_type = ek;
          v.d_type = element_kind::f32;
          v.a = probs + m * head_block;
          v.lda = c.ld;
          v.batch_stride_a = group * head_block;
          v.b = d_attn_out + m * head_rows;
          v.ldb = d;
          v.batch_stride_b = group * head_rows;
          v.c = v.d = dv_acc + static_cast<index_t>(c.k_offset + c.key_begin) * d;
          v.ldc = v.ldd = d;
          v.batch_stride_c = v.batch_stride_d = acc_head;
          v.beta = 1.0f;
          detail::gemm_or_zero<Device, float>(dev, v);
          gemm_desc k = v;
          k.a = ds + m * head_block;
          k.b = a.q.data + a.q.offset(b, c.q_offset + c.q0, m, 0);
          k.ldb = detail::operand_ld(a.q.stride[1], c.rows, d);
          k.batch_stride_b = group * a.q.stride[2];
          k.c = k.d = dk_acc + static_cast<index_t>(c.k_offset + c.key_begin) * d;
          detail::gemm_or_zero<Device, float>(dev, k);
          // dQ = dS K, rounded once into dq.
          gemm_desc q;
          q.m = c.rows;
          q.n = d;
          q.k = c.key_count;
          q.batch = shape.kv_heads;
          q.a_type = q.b_type = ek;
          q.d_type = ek;
          q.a = ds + m * head_block;
          q.lda = c.ld;
          q.batch_stride_a = group * head_block;
          q.b = a.k.data + a.k.offset(b, c.k_offset + c.key_begin, 0, 0);
          q.ldb = detail::operand_ld(a.k.stride[1], c.key_count, d);
          q.batch_stride_b = a.k.stride[2];
          q.d = g.dq.data + g.dq.offset(b, c.q_offset + c.q0, m, 0);
          q.ldd = q.ldc = detail::operand_ld(g.dq.stride[1], c.rows, d);
          q.batch_stride_d = q.batch_stride_c = group * g.dq.stride[2];
          detail::gemm_or_zero<Device, Element>(dev, q);
        }
      }
    }
    if (shape.tk > 0) {
      const std::int64_t items = static_cast<std::int64_t>(shape.kv_heads) * acc_head;
      dev.template launch<store_accumulator_kernel<Element>>(
          detail::elementwise_shape(items),
          store_accumulator_params<Element>{dk_acc, g.dk.data, strides_of(g.dk), b, shape.tk,
                                            shape.kv_heads, d});
      dev.template launch<store_accumulator_kernel<Element>>(
          detail::elementwise_shape(items),
          store_accumulator_params<Element>{dv_acc, g.dv.data, strides_of(g.dv), b, shape.tk,
                                            shape.kv_heads, d});
    }
  }
  if constexpr (Sink::trainable) {
    dev.template launch<dsinks_kernel>(
        detail::cover(shape.q_heads, k_reduce_threads, dsinks_kernel::smem_bytes),
        dsinks_params{dsink_rows, static_cast<index_t>(shape.batch) * shape.tq, g.dsinks.data,
                      g.dsinks.stride[0]});
  }
  padding::enqueue_backward(a, g, shape, detail::padding_launcher(dev));
}

}  // namespace sinkmoe::unfused
