#pragma once
// exec::cuda backward (design.md section 5): validates the arguments, dispatches the head dim
// over the instantiated list, and launches the four fused backward kernels
// (sinkmoe/cuda/backward_kernel.hpp) on the caller's stream. nvcc only.
//
//   sinkmoe::fused::cuda_backward<sinkmoe::sink_attention<>>(sinkmoe::exec::cuda{stream}, args,
//                                                            grads);
//
// args is the forward's forward_args<arch::bf16 or arch::fp16> (out and lse as the forward wrote
// them), grads the backward_args (dout, optional drouter / dlse; dq, dk, dv, dsinks, dgate_logits
// are overwritten). All device memory.
//
// Workspace: pass a device buffer of cuda_backward_workspace_bytes<Attn>(ex, args, grads) bytes
// (256-byte aligned, e.g. from cudaMalloc), or none: then the call allocates it with
// cudaMallocAsync on the stream and frees it with cudaFreeAsync after the last launch (both
// stream-ordered; no synchronisation).
// Determinism: always. No float atomics; every output element is written once by one thread
// after a fixed-order reduction, so repeated calls give bitwise identical results.
// Synchronisation: none, except for variable-length batches (cu_seqlens are copied to the host,
// as in cuda_forward).

#if !defined(__CUDACC__)
#error "sinkmoe/cuda/backward.cuh is CUDA code: compile it with nvcc"
#endif

#include <cstddef>
#include <sinkmoe/cuda/backward_kernel.hpp>
#include <sinkmoe/cuda/forward.cuh>

namespace sinkmoe::fused {

namespace detail {

/// A stream-ordered device allocation released (stream-ordered) when the guard goes out of
/// scope, also when a launch throws.
struct stream_buffer {
  void* data = nullptr;
  cudaStream_t stream = nullptr;
  stream_buffer(std::size_t bytes, cudaStream_t s) : stream(s) {
    if (bytes > 0) SINKMOE_CUDA_CHECK(cudaMallocAsync(&data, bytes, stream));
  }
  stream_buffer(const stream_buffer&) = delete;
  stream_buffer& operator=(const stream_buffer&) = delete;
  ~stream_buffer() {
    if (data != nullptr) (void)cudaFreeAsync(data, stream);  // cannot throw from here
  }
};

}  // namespace detail

/// Bytes of device workspace cuda_backward<Attn> needs for these arguments (validated first;
/// varlen batches copy cu_seqlens to the host as cuda_backward does).
template <class Attn, arch::half_precision Element>
std::size_t cuda_backward_workspace_bytes(const exec::cuda& ex, const forward_args<Element>& args,
                                          const backward_args<Element>& grads) {
  forward_args<Element> host_visible = args;
  detail::host_seqlens seqlens;
  host_visible.varlen = seqlens.copy(args.varlen, ex.stream);
  const problem_shape shape = Attn::validate(host_visible, grads);
  return backward_workspace<Attn, Element>(shape, max_query_rows(shape, host_visible.varlen))
      .total_bytes;
}

/// Backward pass of the policy bundle Attn on the GPU (see the file comment). Throws
/// sinkmoe::error for an invalid argument (before anything is written), for a head dim outside
/// {64, 128}, for rows of q, k, v, dout, dq, dk or dv that are not 16-byte aligned, for a
/// workspace that is too small or misaligned, and when a CUDA call fails (naming the call).
template <class Attn, arch::half_precision Element>
void cuda_backward(const exec::cuda& ex, const forward_args<Element>& args,
                   const backward_args<Element>& grads, void* workspace = nullptr,
                   std::size_t workspace_bytes = 0) {
  forward_args<Element> host_visible = args;
  detail::host_seqlens seqlens;
  host_visible.varlen = seqlens.copy(args.varlen, ex.stream);
  const problem_shape shape = Attn::validate(host_visible, grads);
  const int max_tq = max_query_rows(shape, host_visible.varlen);
  const int max_tk = max_key_rows(shape, host_visible.varlen);
  const backward_workspace_layout layout = backward_workspace<Attn, Element>(shape, max_tq);

  dispatch_head_dim(shape.head_dim, [&](auto head_dim) {
    using kernels = backward_kernels<Attn, Element, decltype(head_dim)::value>;
    const backward_launch_geometry g = backward_geometry<kernels, Attn>(shape, max_tq, max_tk);
    detail::require_block_shared_memory(kernels::dkdv::smem_bytes > kernels::dq::smem_bytes
                                            ? kernels::dkdv::smem_bytes
                                            : kernels::dq::smem_bytes,
                                        "the fused backward kernels");
    // A failed check below frees the owned buffer (stream-ordered) and writes nothing.
    detail::stream_buffer owned(workspace != nullptr ? 0 : layout.total_bytes, ex.stream);
    void* const space = workspace != nullptr ? workspace : owned.data;
    const std::size_t space_bytes = workspace != nullptr ? workspace_bytes : layout.total_bytes;
    // The kernels get the caller's (device) cu_seqlens.
    const backward_params<Element> params =
        make_backward_params<Attn>(args, grads, shape, max_tq, space, space_bytes);
    const auto run = [&](auto kernel_tag, const launch_geometry& geometry) {
      using kernel = decltype(kernel_tag);
      if (geometry.empty()) return;
      SINKMOE_CUDA_CHECK(arch::launch<kernel>(geometry.grid, geometry.block, geometry.smem_bytes,
                                              ex.stream, params));
    };
    run(typename kernels::preprocess{}, g.preprocess);
    run(typename kernels::dkdv{}, g.dkdv);
    run(typename kernels::dq{}, g.dq);
    if (g.trainable_sink) run(typename kernels::dsink{}, g.dsink);
  });
}

}  // namespace sinkmoe::fused
