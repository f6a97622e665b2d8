#pragma once
// The arguments of an exec::cuda call as host code may read them: a padded batch's lengths and
// (unless trusted) a varlen batch's offsets copied from device memory, so that validation and
// grid sizing read host memory. Shared by the fused kernels' and the unfused path's entry points.
// nvcc only.

#if !defined(__CUDACC__)
#error "sinkmoe/cuda/host_view.cuh is CUDA code: compile it with nvcc"
#endif

#include <cstddef>
#include <cstdint>
#include <sinkmoe/args.hpp>
#include <sinkmoe/core/error.hpp>
#include <sinkmoe/cuda/check.hpp>
#include <sinkmoe/validate.hpp>
#include <vector>

namespace sinkmoe::cuda_detail {

/// The arguments as validation and grid sizing see them: a padded batch's lengths copied to host
/// memory; varlen offsets as they are when trusted (both max_seqlen given), else copied too
/// (each copy: a small transfer and a stream synchronise).
template <class Element>
struct host_view {
  forward_args<Element> args;
  sinkmoe::detail::offsets offsets = sinkmoe::detail::offsets::readable;
  std::vector<std::int32_t> q, k;

  /// copy_trusted: copy the offsets also when both max_seqlen are given (a path whose loops run
  /// on the host needs them).
  host_view(const forward_args<Element>& a, cudaStream_t stream, bool copy_trusted = false)
      : args(a) {
    copy_lengths(a.seqlens, stream);
    const varlen_batch& v = a.varlen;
    if (!v.enabled()) return;
    if (v.max_seqlen_q > 0 && v.max_seqlen_k > 0 && !copy_trusted) {
      offsets = sinkmoe::detail::offsets::trusted;
      return;
    }
    sinkmoe::detail::require(v.cu_seqlens_k != nullptr,
                             "varlen.cu_seqlens_k is null while cu_seqlens_q is set");
    sinkmoe::detail::require(v.num_seqs >= 1, "varlen.num_seqs = ", v.num_seqs, ": must be >= 1");
    const std::size_t count = static_cast<std::size_t>(v.num_seqs) + 1;
    q.resize(count);
    k.resize(count);
    SINKMOE_CUDA_CHECK(cudaMemcpyAsync(q.data(), v.cu_seqlens_q, count * sizeof(std::int32_t),
                                       cudaMemcpyDefault, stream));
    SINKMOE_CUDA_CHECK(cudaMemcpyAsync(k.data(), v.cu_seqlens_k, count * sizeof(std::int32_t),
                                       cudaMemcpyDefault, stream));
    SINKMOE_CUDA_CHECK(cudaStreamSynchronize(stream));
    args.varlen.cu_seqlens_q = q.data();
    args.varlen.cu_seqlens_k = k.data();
  }

 private:
  std::vector<std::int32_t> lengths_q, lengths_k;

  /// A padded batch's lengths are validated on the host: copied here (a copy and a synchronise).
  void copy_lengths(const sequence_lengths& lengths, cudaStream_t stream) {
    const auto copy = [&](const tensor_view<const std::int32_t, 1>& from,
                          tensor_view<const std::int32_t, 1>& to, std::vector<std::int32_t>& host) {
      if (from.empty()) return;
      host.resize(static_cast<std::size_t>(from.shape[0]));
      constexpr std::size_t item = sizeof(std::int32_t);  // strided: one 2-D copy of B items
      SINKMOE_CUDA_CHECK(cudaMemcpy2DAsync(host.data(), item, from.data,
                                           static_cast<std::size_t>(from.stride[0]) * item, item,
                                           host.size(), cudaMemcpyDefault, stream));
      to = {host.data(), from.shape, {1}};
    };
    copy(lengths.q, args.seqlens.q, lengths_q);
    copy(lengths.k, args.seqlens.k, lengths_k);
    if (lengths.enabled()) SINKMOE_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
};

}  // namespace sinkmoe::cuda_detail
