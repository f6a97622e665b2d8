#pragma once
// exec::cuda entry points of the fused kernels: validate, dispatch the head dim over the
// instantiated list, launch on the caller's stream. nvcc only.
//
//   sinkmoe::fused::cuda_forward<sinkmoe::sink_attention<>>(sinkmoe::exec::cuda{stream}, args);
//   sinkmoe::fused::cuda_backward<Attn>(ex, args, grads[, workspace, workspace_bytes]);
//
// Tensors, sinks and cu_seqlens live in device (or managed) memory; elements are arch::bf16 or
// arch::fp16 (__nv_bfloat16 / __half); head dims 64 and 128.
//
// Synchronisation: none. Variable-length batches either give varlen_batch::max_seqlen_q and
// max_seqlen_k (nothing is copied to the host, so forward and backward can be captured in a CUDA
// graph; the offsets are trusted, and the kernels clamp them to the tensors), or they do not, and
// then cu_seqlens are copied to the host and validated like the host backend's (a small copy and
// a stream synchronise).
//
// Backward workspace: pass a device buffer of cuda_backward_workspace_bytes<Attn>(...) bytes
// (256-byte aligned), or none: then it is taken from the device's stream-ordered memory pool
// (cudaMallocAsync / cudaFreeAsync on the stream), whose release threshold this layer raises
// once per device so that the pool keeps the memory between steps instead of returning it to the
// driver at every synchronisation.

#if !defined(__CUDACC__)
#error "sinkmoe/cuda/fused/launch.cuh is CUDA code: compile it with nvcc"
#endif

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <sinkmoe/args.hpp>
#include <sinkmoe/core/error.hpp>
#include <sinkmoe/cuda/arch/arch.hpp>
#include <sinkmoe/cuda/check.hpp>
#include <sinkmoe/cuda/exec.hpp>
#include <sinkmoe/cuda/fused/backward_kernels.hpp>
#include <sinkmoe/cuda/fused/forward_kernel.hpp>
#include <sinkmoe/cuda/host_view.cuh>
#include <sinkmoe/cuda/padding_kernels.hpp>
#include <sinkmoe/validate.hpp>
#include <vector>

namespace sinkmoe::fused {

namespace detail {

/// Per-device facts the launchers need, queried once per device.
struct device_facts {
  int smem_per_block_optin = 0;
  int sm_count = 0;
};

inline device_facts facts_of_current_device() {
  constexpr int k_devices = arch::detail::k_cached_devices;
  static std::atomic<int> smem[k_devices] = {}, sms[k_devices] = {};
  int device = 0;
  SINKMOE_CUDA_CHECK(cudaGetDevice(&device));
  const bool cached = device >= 0 && device < k_devices;
  if (cached && sms[device].load(std::memory_order_relaxed) > 0)
    return {smem[device].load(std::memory_order_relaxed),
            sms[device].load(std::memory_order_relaxed)};
  device_facts f;
  SINKMOE_CUDA_CHECK(cudaDeviceGetAttribute(&f.smem_per_block_optin,
                                            cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  SINKMOE_CUDA_CHECK(cudaDeviceGetAttribute(&f.sm_count, cudaDevAttrMultiProcessorCount, device));
  // The stream-ordered pool keeps freed memory (the backward's workspace) for the next call.
  cudaMemPool_t pool = nullptr;
  SINKMOE_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
  std::uint64_t keep = std::numeric_limits<std::uint64_t>::max();
  SINKMOE_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
  if (cached) {
    smem[device].store(f.smem_per_block_optin, std::memory_order_relaxed);
    sms[device].store(f.sm_count, std::memory_order_relaxed);
  }
  return f;
}

/// Throws sinkmoe::error when a kernel's dynamic shared memory exceeds what the device grants a
/// block (cudaFuncSetAttribute would otherwise fail with a bare status).
inline void require_block_shared_memory(const device_facts& f, std::size_t bytes,
                                        const char* what) {
  sinkmoe::detail::require(bytes <= static_cast<std::size_t>(f.smem_per_block_optin), what,
                           " needs ", bytes,
                           " bytes of shared memory per block; the device allows ",
                           f.smem_per_block_optin, " (use head dim 64 there, or the unfused path)");
}

template <class Attn, class Element>
problem_shape validate(const cuda_detail::host_view<Element>& v) {
  return sinkmoe::detail::validate_forward<typename Attn::sink_type, typename Attn::gate_type,
                                           typename Attn::mask_type, typename Attn::score_type>(
      v.args, v.offsets);
}
template <class Attn, class Element>
problem_shape validate(const cuda_detail::host_view<Element>& v, const backward_args<Element>& g) {
  return sinkmoe::detail::validate_backward<typename Attn::sink_type, typename Attn::gate_type,
                                            typename Attn::mask_type, typename Attn::score_type>(
      v.args, g, v.offsets);
}

/// launch(kernel, grid, block, params) on a stream, checked: the launcher of the padding kernels.
struct launcher {
  cudaStream_t stream;
  template <class Kernel, class Params>
  void operator()(Kernel, arch::index3 grid, arch::index3 block, const Params& params) const {
    SINKMOE_CUDA_CHECK(arch::launch<Kernel>(grid, block, 0, stream, params));
  }
};

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

/// Forward pass of the policy bundle Attn on the GPU: writes out, and lse / router /
/// first_key_mass where given. Throws sinkmoe::error for an invalid argument (before anything is
/// written), a head dim outside {64, 128}, rows of q, k, v or out that are not 16-byte aligned,
/// and when a CUDA call fails (naming the call).
template <class Attn, arch::half_precision Element>
void cuda_forward(const exec::cuda& ex, const forward_args<Element>& args) {
  const cuda_detail::host_view<Element> view(args, ex.stream);
  const problem_shape shape = detail::validate<Attn>(view);
  const int max_tq = max_query_rows(shape, view.args.varlen);
  const int max_tk = max_key_rows(shape, view.args.varlen);
  const detail::device_facts facts = detail::facts_of_current_device();
  dispatch_head_dim(shape.head_dim, [&](auto head_dim) {
    using kernel = forward_kernel<Attn, Element, decltype(head_dim)::value>;
    // The kernel gets the caller's (device) cu_seqlens.
    const forward_params<Element> params = make_forward_params(args, shape, max_tq, max_tk);
    const launch_geometry g = forward_geometry<kernel>(shape, max_tq);
    if (g.empty()) return;
    detail::require_block_shared_memory(facts, g.smem_bytes, "the fused forward kernel");
    SINKMOE_CUDA_CHECK(arch::launch<kernel>(g.grid, g.block, g.smem_bytes, ex.stream, params));
  });
  padding::enqueue_forward<typename Attn::sink_type>(args, shape, detail::launcher{ex.stream});
}

/// Bytes of device workspace cuda_backward<Attn> needs for these arguments on the current
/// device (validated first).
template <class Attn, arch::half_precision Element>
std::size_t cuda_backward_workspace_bytes(const exec::cuda& ex, const forward_args<Element>& args,
                                          const backward_args<Element>& grads) {
  const cuda_detail::host_view<Element> view(args, ex.stream);
  const problem_shape shape = detail::validate<Attn>(view, grads);
  const int sms = detail::facts_of_current_device().sm_count;
  std::size_t bytes = 0;
  dispatch_head_dim(shape.head_dim, [&](auto head_dim) {
    bytes = backward_workspace<Attn, Element, decltype(head_dim)::value>(
                shape, max_query_rows(shape, view.args.varlen),
                max_key_rows(shape, view.args.varlen), sms)
                .total_bytes;
  });
  return bytes;
}

/// Backward pass of the policy bundle Attn on the GPU (file comment). Throws sinkmoe::error for
/// an invalid argument (before anything is written), a head dim outside {64, 128}, misaligned
/// rows, a workspace that is too small or misaligned, and when a CUDA call fails.
template <class Attn, arch::half_precision Element>
void cuda_backward(const exec::cuda& ex, const forward_args<Element>& args,
                   const backward_args<Element>& grads, void* workspace = nullptr,
                   std::size_t workspace_bytes = 0) {
  const cuda_detail::host_view<Element> view(args, ex.stream);
  const problem_shape shape = detail::validate<Attn>(view, grads);
  const int max_tq = max_query_rows(shape, view.args.varlen);
  const int max_tk = max_key_rows(shape, view.args.varlen);
  const detail::device_facts facts = detail::facts_of_current_device();
  dispatch_head_dim(shape.head_dim, [&](auto head_dim) {
    constexpr int D = decltype(head_dim)::value;
    using kernels = backward_kernels<Attn, Element, D>;
    const backward_workspace_layout layout =
        backward_workspace<Attn, Element, D>(shape, max_tq, max_tk, facts.sm_count);
    const backward_launch_geometry g =
        backward_geometry<kernels, Attn>(shape, layout, max_tq, max_tk);
    detail::require_block_shared_memory(facts, kernels::smem_bytes, "the fused backward kernels");
    // A failed check below frees the owned buffer (stream-ordered) and writes nothing.
    detail::stream_buffer owned(workspace != nullptr ? 0 : layout.total_bytes, ex.stream);
    void* const space = workspace != nullptr ? workspace : owned.data;
    const std::size_t space_bytes = workspace != nullptr ? workspace_bytes : layout.total_bytes;
    const backward_params<Element> params =
        make_backward_params<Attn>(args, grads, shape, layout, max_tq, max_tk, space, space_bytes);
    enqueue_backward<kernels, Attn>(
        g, typename Attn::score_type(args.params, D),
        [&](auto kernel, const launch_geometry& geometry, auto... extra) {
          SINKMOE_CUDA_CHECK(arch::launch<decltype(kernel)>(
              geometry.grid, geometry.block, geometry.smem_bytes, ex.stream, params, extra...));
        });
  });
  padding::enqueue_backward(args, grads, shape, detail::launcher{ex.stream});
}

}  // namespace sinkmoe::fused
