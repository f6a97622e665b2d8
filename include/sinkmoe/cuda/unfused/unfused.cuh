#pragma once
// exec::cuda unfused attention (docs/design.md section 5): the algorithm of unfused/algorithm.hpp
// with cuBLASLt strided-batched GEMMs (blaslt::context) and the row kernels launched on the
// caller's stream. Any head dim (every GEMM and row kernel takes D at run time), bf16 / fp16
// inputs, fp32 compute. nvcc only.
//
//   sinkmoe::blaslt::context blas;                       // once: handle, plan cache, workspace
//   sinkmoe::unfused::cuda_forward<Attn>(blas, sinkmoe::exec::cuda{stream}, fa);
//   sinkmoe::unfused::cuda_backward<Attn>(blas, sinkmoe::exec::cuda{stream}, fa, ba);
//
// Tensors live in device (or managed) memory. Workspace: pass unfused::workspace{data, bytes,
// chunk_rows} with at least workspace_bytes(shape, chunk_rows, pass, sizeof(Element)) bytes,
// 256-byte aligned; or leave data null and the call allocates that much with cudaMallocAsync on
// the stream and frees it with cudaFreeAsync on the same stream (stream-ordered: no host
// synchronisation). chunk_rows = 0 picks default_chunk_rows(shape) (the Tq x Tk buffers within
// 256 MiB). Variable-length and padded batches: the loops run on the host, so cu_seqlens and
// seqlens are copied to the host (a small copy and a stream synchronise per call). Not supported
// here, with a sinkmoe::error naming the argument: tensors whose T stride is below D (cuBLASLt's
// ld >= row length).
// Results are deterministic for a given chunk size (no atomics; dK / dV accumulate over chunks
// and GQA group members in a fixed order, d(sinks) is a fixed-order block reduction) as far as
// cuBLASLt's own kernels are (same plan, same problem).

#if !defined(__CUDACC__)
#error "sinkmoe/cuda/unfused/unfused.cuh is CUDA code: compile it with nvcc"
#endif

#include <cstddef>
#include <cstdint>
#include <sinkmoe/args.hpp>
#include <sinkmoe/core/error.hpp>
#include <sinkmoe/cuda/arch/arch.hpp>
#include <sinkmoe/cuda/blaslt/matmul.cuh>
#include <sinkmoe/cuda/check.hpp>
#include <sinkmoe/cuda/exec.hpp>
#include <sinkmoe/cuda/host_view.cuh>
#include <sinkmoe/cuda/unfused/algorithm.hpp>
#include <vector>

namespace sinkmoe::unfused {

/// Device memory for the unfused path (file comment); all defaults: allocated per call.
struct workspace {
  void* data = nullptr;   ///< device memory, 256-byte aligned; null: allocate on the stream
  std::size_t bytes = 0;  ///< size of data
  int chunk_rows = 0;     ///< query rows per chunk; 0: default_chunk_rows(shape)
};

/// The algorithm's device on a GPU: GEMMs through blaslt::context, kernels through arch::launch,
/// everything on one stream, every status checked.
class cuda_device {
 public:
  cuda_device(blaslt::context& blas, cudaStream_t stream) : blas_(blas), stream_(stream) {}
  void gemm(const gemm_desc& g) { blas_.matmul(g, stream_); }
  template <class Kernel, class Params>
  void launch(const launch_shape& s, const Params& params) {
    SINKMOE_CUDA_CHECK(arch::launch<Kernel>(s.grid, s.block, s.smem_bytes, stream_, params));
  }

 private:
  blaslt::context& blas_;
  cudaStream_t stream_;
};

namespace detail {

/// The caller's workspace, checked, or a stream-ordered allocation released on the stream.
class stream_workspace {
 public:
  stream_workspace(const workspace& given, std::size_t needed, cudaStream_t stream)
      : stream_(stream) {
    if (given.data != nullptr) {
      sinkmoe::detail::require(given.bytes >= needed, "workspace.bytes = ", given.bytes,
                               ": the unfused path needs ", needed,
                               " bytes for this problem and chunk size (workspace_bytes)");
      sinkmoe::detail::require(reinterpret_cast<std::uintptr_t>(given.data) % 256 == 0,
                               "workspace.data must be 256-byte aligned");
      data_ = static_cast<std::byte*>(given.data);
      return;
    }
    void* raw = nullptr;
    SINKMOE_CUDA_CHECK(cudaMallocAsync(&raw, needed > 0 ? needed : 1, stream));
    data_ = static_cast<std::byte*>(raw);
    owned_ = true;
  }
  stream_workspace(const stream_workspace&) = delete;
  stream_workspace& operator=(const stream_workspace&) = delete;
  /// Releases an owned allocation on the stream, checking the call (the destructor cannot).
  void release() {
    if (!owned_) return;
    owned_ = false;
    SINKMOE_CUDA_CHECK(cudaFreeAsync(data_, stream_));
  }
  ~stream_workspace() {
    if (owned_) (void)cudaFreeAsync(data_, stream_);  // unwinding: the first error is reported
  }
  [[nodiscard]] std::byte* data() const { return data_; }

 private:
  std::byte* data_ = nullptr;
  cudaStream_t stream_;
  bool owned_ = false;
};

inline int resolve_chunk_rows(const problem_shape& shape, int requested) {
  sinkmoe::detail::require(requested >= 0, "workspace.chunk_rows = ", requested,
                           ": must be >= 0 (0 picks default_chunk_rows)");
  return requested > 0 ? requested : default_chunk_rows(shape);
}

}  // namespace detail

/// Forward of Attn on the GPU through cuBLASLt: writes out, and lse / router / first_key_mass
/// where given. Throws sinkmoe::error for an invalid argument (before anything is written),
/// for a workspace that is too small, and when a CUDA or cuBLASLt call fails (naming it).
template <class Attn, arch::half_precision Element>
void cuda_forward(blaslt::context& blas, const exec::cuda& ex, const forward_args<Element>& args,
                  const workspace& ws = {}) {
  const cuda_detail::host_view<Element> view(args, ex.stream, /*copy_trusted=*/true);
  const problem_shape shape = validate_forward<Attn>(view.args);
  const std::vector<sequence_span> sequences = detail::sequences_of(shape, view.args);
  const int chunk_rows = detail::resolve_chunk_rows(shape, ws.chunk_rows);
  detail::stream_workspace memory(
      ws, workspace_bytes(shape, chunk_rows, pass::forward, sizeof(Element)), ex.stream);
  cuda_device dev(blas, ex.stream);
  forward<Attn>(dev, args, shape, memory.data(), chunk_rows, sequences);
  memory.release();
}

/// Backward of Attn on the GPU through cuBLASLt: writes dq, dk, dv (and dsinks, dgate_logits)
/// from dout and the optional drouter and dlse, reading the forward's out and lse. Throws like
/// cuda_forward.
template <class Attn, arch::half_precision Element>
void cuda_backward(blaslt::context& blas, const exec::cuda& ex, const forward_args<Element>& args,
                   const backward_args<Element>& grads, const workspace& ws = {}) {
  const cuda_detail::host_view<Element> view(args, ex.stream, /*copy_trusted=*/true);
  const problem_shape shape = validate_backward<Attn>(view.args, grads);
  const std::vector<sequence_span> sequences = detail::sequences_of(shape, view.args);
  const int chunk_rows = detail::resolve_chunk_rows(shape, ws.chunk_rows);
  detail::stream_workspace memory(
      ws, workspace_bytes(shape, chunk_rows, pass::backward, sizeof(Element)), ex.stream);
  cuda_device dev(blas, ex.stream);
  backward<Attn>(dev, args, grads, shape, memory.data(), chunk_rows, sequences);
  memory.release();
}

}  // namespace sinkmoe::unfused
