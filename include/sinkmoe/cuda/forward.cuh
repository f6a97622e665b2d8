#pragma once
// exec::cuda forward (design.md section 5): validates the arguments, dispatches the head dim
// over the instantiated list, and launches the fused forward kernel
// (sinkmoe/cuda/forward_kernel.hpp) on the caller's stream. nvcc only.
//
//   sinkmoe::fused::cuda_forward<sinkmoe::sink_attention<>>(sinkmoe::exec::cuda{stream}, args);
//
// args is a forward_args<arch::bf16> or forward_args<arch::fp16> (__nv_bfloat16 / __half under
// nvcc) whose tensors, sinks and cu_seqlens live in device memory (or managed memory).
// Synchronisation: none, except for variable-length batches, whose cu_seqlens are copied to the
// host (a small copy and a stream synchronise) so that they can be validated like the host
// backend's and the grid can be sized by the longest sequence.

#if !defined(__CUDACC__)
#error "sinkmoe/cuda/forward.cuh is CUDA code: compile it with nvcc"
#endif

#include <cstddef>
#include <cstdint>
#include <sinkmoe/args.hpp>
#include <sinkmoe/core/error.hpp>
#include <sinkmoe/cuda/arch/arch.hpp>
#include <sinkmoe/cuda/check.hpp>
#include <sinkmoe/cuda/exec.hpp>
#include <sinkmoe/cuda/forward_kernel.hpp>
#include <vector>

namespace sinkmoe::fused {

namespace detail {

/// cu_seqlens copied to the host, so that validation and grid sizing can read them as the host
/// backend's do: a small copy and a stream synchronise, only for variable-length batches.
struct host_seqlens {
  std::vector<std::int32_t> q, k;
  /// varlen with host pointers (or varlen itself when it is not enabled).
  varlen_batch copy(const varlen_batch& varlen, cudaStream_t stream) {
    if (!varlen.enabled()) return varlen;
    sinkmoe::detail::require(varlen.cu_seqlens_k != nullptr,
                             "varlen.cu_seqlens_k is null while cu_seqlens_q is set");
    sinkmoe::detail::require(varlen.num_seqs >= 1, "varlen.num_seqs = ", varlen.num_seqs,
                             ": must be >= 1");
    const std::size_t count = static_cast<std::size_t>(varlen.num_seqs) + 1;
    q.resize(count);
    k.resize(count);
    SINKMOE_CUDA_CHECK(cudaMemcpyAsync(q.data(), varlen.cu_seqlens_q, count * sizeof(std::int32_t),
                                       cudaMemcpyDefault, stream));
    SINKMOE_CUDA_CHECK(cudaMemcpyAsync(k.data(), varlen.cu_seqlens_k, count * sizeof(std::int32_t),
                                       cudaMemcpyDefault, stream));
    SINKMOE_CUDA_CHECK(cudaStreamSynchronize(stream));
    return {q.data(), k.data(), varlen.num_seqs};
  }
};

/// Throws sinkmoe::error when a kernel's dynamic shared memory exceeds what the current device
/// grants one block (cudaFuncSetAttribute would otherwise fail with a bare status).
inline void require_block_shared_memory(std::size_t bytes, const char* what) {
  int device = 0, limit = 0;
  SINKMOE_CUDA_CHECK(cudaGetDevice(&device));
  SINKMOE_CUDA_CHECK(
      cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  sinkmoe::detail::require(bytes <= static_cast<std::size_t>(limit), what, " needs ", bytes,
                           " bytes of shared memory per block; device ", device, " allows ", limit,
                           " (sm_86 / sm_89 allow 99 KiB: use head dim 64 there, or the unfused "
                           "path)");
}

}  // namespace detail

/// Forward pass of the policy bundle Attn (an attention<...>) on the GPU: writes out, and lse /
/// router / first_key_mass where given. Throws sinkmoe::error for an invalid argument (before
/// anything is written), for a head dim outside {64, 128}, for rows of q, k, v or out that are
/// not 16-byte aligned, and when a CUDA call fails (naming the call).
template <class Attn, arch::half_precision Element>
void cuda_forward(const exec::cuda& ex, const forward_args<Element>& args) {
  // Validation reads cu_seqlens on the host (as the host backend's does): copy them over.
  forward_args<Element> host_visible = args;
  detail::host_seqlens seqlens;
  host_visible.varlen = seqlens.copy(args.varlen, ex.stream);
  const problem_shape shape = Attn::validate(host_visible);
  const int max_tq = max_query_rows(shape, host_visible.varlen);

  dispatch_head_dim(shape.head_dim, [&](auto head_dim) {
    using kernel = forward_kernel<Attn, Element, decltype(head_dim)::value>;
    // The kernel gets the caller's (device) cu_seqlens.
    const forward_params<Element> params = make_forward_params(args, shape);
    const launch_geometry geometry = forward_launch_geometry<kernel>(shape, max_tq);
    if (geometry.empty()) return;
    detail::require_block_shared_memory(geometry.smem_bytes, "the fused forward kernel");
    SINKMOE_CUDA_CHECK(arch::launch<kernel>(geometry.grid, geometry.block, geometry.smem_bytes,
                                            ex.stream, params));
  });
}

}  // namespace sinkmoe::fused
