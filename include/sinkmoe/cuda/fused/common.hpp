#pragma once
// Pieces every fused kernel and launcher shares (docs/design.md, "The fused CUDA kernels"):
// strided pointers into [B, T, H, D] and [B, H, T] tensors, where a sequence of the launch sits,
// the 16-byte chunk of vector copies, launch geometry, the head-dim dispatch, and the host-side
// alignment checks of the vector accesses.

#include <cstddef>
#include <cstdint>
#include <sinkmoe/args.hpp>
#include <sinkmoe/core/error.hpp>
#include <sinkmoe/core/numeric.hpp>
#include <sinkmoe/core/tensor_view.hpp>
#include <sinkmoe/cuda/arch/arch.hpp>
#include <type_traits>

namespace sinkmoe::fused {

/// A pointer with the strides of the three outer dimensions ({b, t, h} of a [B, T, H, D]
/// tensor, whose D stride is 1; {b, h, t} of a [B, H, T] statistic), in elements. Null: absent.
/// Trivially copyable (a kernel argument).
template <class T>
struct strided_ref {
  T* data = nullptr;
  index_t stride[3] = {0, 0, 0};

  /// The element at (i0, i1, i2) (the first of its row for a [B, T, H, D] tensor).
  [[nodiscard]] SINKMOE_HD T* at(index_t i0, index_t i1, index_t i2) const {
    return data + i0 * stride[0] + i1 * stride[1] + i2 * stride[2];
  }
  [[nodiscard]] SINKMOE_HD explicit operator bool() const { return data != nullptr; }

  /// The kernel-side form of a view (null for an empty view).
  template <class U, int Rank>
  static strided_ref of(const tensor_view<U, Rank>& view) {
    static_assert(Rank >= 3, "strided_ref: the view needs three outer dimensions");
    strided_ref r;
    r.data = view.data;
    if (!view.empty())
      for (int i = 0; i < 3; ++i) r.stride[i] = view.stride[i];
    return r;
  }
};

/// A 16-byte chunk, for vector copies between shared and global memory.
struct alignas(16) chunk16 {
  std::uint32_t word[4];
};

/// Where one sequence of a launch sits in the tensors: its batch index, first query and key
/// rows, and lengths.
struct sequence_coord {
  int batch, q_begin, tq, k_begin, tk;
};

/// Sequence `seq` of a launch: batch entry seq of a dense batch (its real rows when padded), or
/// the seq-th sequence of the varlen offsets (FlashAttention's cu_seqlens, device memory).
/// Offsets are clamped to the tensors' rows and lengths to the launch's longest sequence, so that
/// offsets a caller did not let the host validate (varlen_batch::max_seqlen_*) can give wrong
/// results but never an access outside the tensors.
template <class Params>
SINKMOE_DEVICE inline sequence_coord sequence_of(const Params& p, int seq) {
  if (p.cu_seqlens_q == nullptr) {
    const real_rows q = p.seqlens_q.of_sequence(seq, p.shape.tq, p.side);
    const real_rows k = p.seqlens_k.of_sequence(seq, p.shape.tk, p.side);
    return {seq, q.begin, q.count, k.begin, k.count};
  }
  const auto clamp = [](int x, int lo, int hi) { return math::min(math::max(x, lo), hi); };
  const int q_begin = clamp(arch::load_global(p.cu_seqlens_q + seq), 0, p.shape.tq);
  const int q_end = clamp(arch::load_global(p.cu_seqlens_q + seq + 1), q_begin, p.shape.tq);
  const int k_begin = clamp(arch::load_global(p.cu_seqlens_k + seq), 0, p.shape.tk);
  const int k_end = clamp(arch::load_global(p.cu_seqlens_k + seq + 1), k_begin, p.shape.tk);
  return {0, q_begin, math::min(q_end - q_begin, p.max_tq), k_begin,
          math::min(k_end - k_begin, p.max_tk)};
}

/// Grid, block and dynamic shared memory of one launch.
struct launch_geometry {
  arch::index3 grid;
  arch::index3 block;
  std::size_t smem_bytes;
  /// False when there is nothing to launch.
  [[nodiscard]] bool empty() const { return grid.x == 0 || grid.y == 0 || grid.z == 0; }
};

/// The head dims the fused kernels are instantiated for (the one runtime-to-compile-time
/// dispatch of the fused backend): calls f(std::integral_constant<int, D>) for D in {64, 128};
/// any other head dim throws sinkmoe::error naming it and the list.
template <class F>
void dispatch_head_dim(int head_dim, F&& f) {
  switch (head_dim) {
    case 64:
      f(std::integral_constant<int, 64>{});
      return;
    case 128:
      f(std::integral_constant<int, 128>{});
      return;
    default:
      throw error(sinkmoe::detail::concat(
          "forward_args.q: head_dim = ", head_dim,
          " is not instantiated for exec::cuda (instantiated head dims: 64, 128)"));
  }
}

/// Longest query and key sequences of a validated problem: varlen_batch::max_seqlen_* when the
/// caller gives them, else read off cu_seqlens (host pointers) or the dense shape.
inline int longest_sequence(int dense, const varlen_batch& varlen, const std::int32_t* offsets,
                            int given) {
  if (!varlen.enabled()) return dense;
  if (given > 0) return given;
  int longest = 0;
  for (int s = 0; s < varlen.num_seqs; ++s)
    longest = math::max(longest, offsets[s + 1] - offsets[s]);
  return longest;
}
inline int max_query_rows(const problem_shape& shape, const varlen_batch& varlen) {
  return longest_sequence(shape.tq, varlen, varlen.cu_seqlens_q, varlen.max_seqlen_q);
}
inline int max_key_rows(const problem_shape& shape, const varlen_batch& varlen) {
  return longest_sequence(shape.tk, varlen, varlen.cu_seqlens_k, varlen.max_seqlen_k);
}

/// Elements e and e + 1 of a global-memory row of 16-bit values, packed, from one 4-byte load
/// (e even; the row pair-aligned, as the launchers check).
template <class Element>
SINKMOE_DEVICE inline std::uint32_t load_packed_pair(const Element* row, int e) {
  return arch::load_global(reinterpret_cast<const std::uint32_t*>(row + e));
}

/// load_packed_pair widened to float.
template <class Element>
SINKMOE_DEVICE inline void load_pair(const Element* row, int e, float (&out)[2]) {
  const std::uint32_t packed = load_packed_pair(row, e);
  out[0] = arch::unpack<Element>(packed, 0);
  out[1] = arch::unpack<Element>(packed, 1);
}

/// Throws unless a launch's grid fits the hardware's y and z limits (heads, sequences).
inline void require_grid_limits(const char* what, int q_heads, int sequences) {
  sinkmoe::detail::require(q_heads <= 65535 && sequences <= 65535, what, ": Hq = ", q_heads,
                           ", sequences = ", sequences,
                           ": exec::cuda launches at most 65535 of each");
}

namespace detail {

/// Each row of a [B, T, H, D] view must start `bytes`-aligned for the vector accesses of this
/// path (`what`): aligned data, B/T/H strides multiples of bytes / sizeof(T) elements. A view the
/// kernels cannot serve is refused here, before a misaligned access could fault on the GPU.
template <class T>
void require_aligned_rows(const char* name, const tensor_view<T, 4>& view, std::size_t bytes,
                          const char* what) {
  const index_t elements = static_cast<index_t>(bytes / sizeof(T));
  sinkmoe::detail::require(reinterpret_cast<std::uintptr_t>(view.data) % bytes == 0, name,
                           ": data must be ", bytes, "-byte aligned for exec::cuda (", what, ")");
  for (int dim = 0; dim < 3; ++dim) {
    sinkmoe::detail::require(view.shape[dim] <= 1 || view.stride[dim] % elements == 0, name,
                             ": stride ", view.stride, " must be a multiple of ", elements,
                             " elements (", bytes,
                             " bytes) on the B, T and H dimensions for exec::cuda (", what, ")");
  }
}

/// Q, K, V are read with 16-byte cp.async and rows of out, dQ, dK, dV written in 16-byte chunks.
template <class T>
void require_rows_16_byte_aligned(const char* name, const tensor_view<T, 4>& view) {
  require_aligned_rows(name, view, 16, "16-byte cp.async and stores");
}

/// An elementwise gate's d(gate logits) is written two elements at a time (32-bit stores).
template <class T>
void require_pairs_4_byte_aligned(const char* name, const tensor_view<T, 4>& view) {
  require_aligned_rows(name, view, 4, "2-element loads and stores");
}

}  // namespace detail
}  // namespace sinkmoe::fused
