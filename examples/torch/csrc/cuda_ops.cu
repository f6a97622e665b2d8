// The CUDA kernels of the sinkmoe operators (built when the package is compiled with nvcc):
// bf16 / fp16 tensors on the fused kernels (head dims 64 and 128), or, with backend="unfused",
// on the cuBLASLt path (any head dim). Workspaces come from torch's caching allocator, work runs
// on torch's current stream, and nothing synchronises but what sinkmoe documents (varlen offsets
// or padded lengths copied to the host for validation when max_seqlen_q/k are not given).
//
// Which mechanisms are compiled for CUDA is a build-time list (nvcc compiles a kernel per
// mechanism, mask, dtype and head dim): SINKMOE_TORCH_CUDA_MECHANISMS in setup.py. A mechanism
// left out raises NotImplementedError naming it and the build option.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <sinkmoe/cuda/blaslt/matmul.cuh>
#include <sinkmoe/cuda/fused.cuh>
#include <sinkmoe/cuda/unfused/unfused.cuh>

#include "binding.hpp"

namespace sinkmoe_torch {
namespace {

using opt_tensor = std::optional<at::Tensor>;

/// The mechanisms compiled for CUDA (file comment). "all": every sink x gate x route x score;
/// "paper" (default): route deduced and the scaled score for every sink and gate; "ci": vanilla,
/// learned sink and elementwise gate (a compile check of every code path).
#if defined(SINKMOE_TORCH_CUDA_ALL)
template <class Attn>
constexpr bool cuda_built = true;
#elif defined(SINKMOE_TORCH_CUDA_CI)
template <class Attn>
constexpr bool cuda_built =
    std::is_same_v<typename Attn::score_type, sinkmoe::score::scaled> &&
    ((std::is_same_v<typename Attn::sink_type, sinkmoe::sink::none> &&
      std::is_same_v<typename Attn::gate_type, sinkmoe::gate::none>) ||
     (std::is_same_v<typename Attn::sink_type, sinkmoe::sink::learned> &&
      std::is_same_v<typename Attn::gate_type, sinkmoe::gate::none>) ||
     (std::is_same_v<typename Attn::sink_type, sinkmoe::sink::none> &&
      std::is_same_v<typename Attn::gate_type, sinkmoe::gate::elementwise> &&
      std::is_same_v<typename Attn::route_type, sinkmoe::route::output_gate>));
#else
template <class Attn>
constexpr bool cuda_built = std::is_same_v<typename Attn::score_type, sinkmoe::score::scaled>&&
    std::is_same_v<typename Attn::route_type,
                   sinkmoe::route::resolve_t<sinkmoe::route::deduced, typename Attn::gate_type>>;
#endif

/// Runs body(type_tag<Attn>{}) for a configuration compiled for CUDA; NotImplementedError else.
template <class Mask, class Body>
void with_cuda_attention(const config& c, Body&& body) {
  with_attention<Mask>(c, [&](auto attn) {
    using Attn = typename decltype(attn)::type;
    if constexpr (cuda_built<Attn>) {
      body(attn);
    } else {
      TORCH_CHECK_NOT_IMPLEMENTED(false, "sinkmoe: sink '", c.sink, "', gate '", c.gate,
                                  "', route '", c.route, "', softcap ", c.params.softcap,
                                  " is not compiled into this package's CUDA operator; rebuild "
                                  "with SINKMOE_TORCH_CUDA_MECHANISMS=all");
    }
  });
}

/// fn(type_tag<sinkmoe element>{}) for a bf16 or fp16 tensor.
template <class Fn>
void with_cuda_element(const at::Tensor& q, Fn&& fn) {
  if (q.scalar_type() == at::kBFloat16) return fn(type_tag<sinkmoe::arch::bf16>{});
  if (q.scalar_type() == at::kHalf) return fn(type_tag<sinkmoe::arch::fp16>{});
  TORCH_CHECK_TYPE(false, "sinkmoe: q has dtype ", q.scalar_type(),
                   "; the CUDA operator takes torch.bfloat16 or torch.float16");
}

/// body(type_tag<Attn>{}, type_tag<element>{}) for the configuration and q's dtype, with
/// sinkmoe::error rethrown as a Python ValueError.
template <class Mask, class Body>
void with_cuda_kernel(const config& c, const at::Tensor& q, Body&& body) {
  with_cuda_attention<Mask>(c, [&](auto attn) {
    with_cuda_element(q,
                      [&](auto element) { rethrow_as_value_error([&] { body(attn, element); }); });
  });
}

/// One cuBLASLt context per device, kept for the process (handle, plan cache, workspace).
sinkmoe::blaslt::context& blas_context() {
  static std::mutex mutex;
  static std::map<int, std::unique_ptr<sinkmoe::blaslt::context>> contexts;
  std::lock_guard<std::mutex> lock(mutex);
  auto& ctx = contexts[c10::cuda::current_device()];
  if (!ctx) ctx = std::make_unique<sinkmoe::blaslt::context>();
  return *ctx;
}

at::Tensor workspace_tensor(std::size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes) + 256}, like.options().dtype(at::kByte));
}
void* aligned_256(const at::Tensor& buffer) {
  const auto address = reinterpret_cast<std::uintptr_t>(buffer.data_ptr());
  return reinterpret_cast<void*>((address + 255) / 256 * 256);
}

/// The unfused path's workspace for a problem, from torch's allocator (default chunk rows).
class unfused_workspace {
 public:
  unfused_workspace(const sinkmoe::problem_shape& shape, sinkmoe::unfused::pass pass,
                    std::size_t element_bytes, const at::Tensor& like)
      : bytes_(sinkmoe::unfused::workspace_bytes(shape, sinkmoe::unfused::default_chunk_rows(shape),
                                                 pass, element_bytes)),
        buffer_(workspace_tensor(bytes_, like)) {}
  [[nodiscard]] sinkmoe::unfused::workspace get() const {
    return {aligned_256(buffer_), bytes_, 0};
  }

 private:
  std::size_t bytes_;
  at::Tensor buffer_;
};

}  // namespace

template <class Mask>
void forward_cuda(const config& c, const batch_layout& layout, const forward_tensors& f,
                  bool unfused) {
  with_cuda_kernel<Mask>(c, f.q, [&](auto attn, auto element) {
    using Attn = typename decltype(attn)::type;
    using E = typename decltype(element)::type;
    const sinkmoe::exec::cuda ex{at::cuda::getCurrentCUDAStream().stream()};
    const sinkmoe::forward_args<E> fa = make_forward_args<E>(c, layout, f);
    if (unfused) {
      const unfused_workspace ws(Attn::validate(fa), sinkmoe::unfused::pass::forward, sizeof(E),
                                 f.q);
      sinkmoe::unfused::cuda_forward<Attn>(blas_context(), ex, fa, ws.get());
    } else {
      Attn::forward(ex, fa);
    }
  });
}

template <class Mask>
void backward_cuda(const config& c, const batch_layout& layout, const forward_tensors& f,
                   const backward_tensors& g, bool unfused) {
  with_cuda_kernel<Mask>(c, f.q, [&](auto attn, auto element) {
    using Attn = typename decltype(attn)::type;
    using E = typename decltype(element)::type;
    const sinkmoe::exec::cuda ex{at::cuda::getCurrentCUDAStream().stream()};
    const sinkmoe::forward_args<E> fa = make_forward_args<E>(c, layout, f);
    const auto ba = make_backward_args<Attn, E>(c, g);
    if (unfused) {
      const unfused_workspace ws(Attn::validate(fa, ba), sinkmoe::unfused::pass::backward,
                                 sizeof(E), f.q);
      sinkmoe::unfused::cuda_backward<Attn>(blas_context(), ex, fa, ba, ws.get());
    } else {
      const std::size_t bytes = sinkmoe::fused::cuda_backward_workspace_bytes<Attn>(ex, fa, ba);
      const at::Tensor buffer = workspace_tensor(bytes, f.q);
      sinkmoe::fused::cuda_backward<Attn>(ex, fa, ba, aligned_256(buffer), bytes);
    }
  });
}

template <class Mask>
void counted_cuda(const config& c, const batch_layout& host_layout, const forward_tensors& f,
                  const at::Tensor& counted_host) {
  with_cuda_kernel<Mask>(c, f.q, [&](auto attn, auto element) {
    using Attn = typename decltype(attn)::type;
    using E = typename decltype(element)::type;
    Attn::counted_tokens(make_forward_args<E>(c, host_layout, f),
                         view<std::uint8_t, 2>(counted_host, "counted"));
  });
}

namespace {

void check_cuda_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const opt_tensor& sinks, const opt_tensor& gate_logits) {
  TORCH_CHECK_TYPE(q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf,
                   "sinkmoe: q has dtype ", q.scalar_type(),
                   "; the CUDA operator takes torch.bfloat16 or torch.float16");
  check_inputs(q, k, v, sinks, gate_logits);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_forward_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const opt_tensor& sinks,
    const opt_tensor& gate_logits, SINKMOE_LAYOUT_ARGS, SINKMOE_CONFIG_ARGS) {
  check_cuda_inputs(q, k, v, sinks, gate_logits);
  const c10::cuda::CUDAGuard guard(q.device());
  const config c = SINKMOE_CONFIG;
  const batch_layout layout = SINKMOE_LAYOUT;
  const forward_tensors f = allocate_forward(q, k, v, sinks, gate_logits, bhtd);
  with_mask(c.mask,
            [&](auto m) { forward_cuda<typename decltype(m)::type>(c, layout, f, unfused); });
  // The counted-token mask is host code over shapes, lengths and the mask (the CPU's rule): the
  // layout tensors are read on the host (a copy and a synchronisation for varlen and padded
  // batches), the mask is copied to the device after.
  const at::Tensor counted_host =
      at::empty(f.counted.sizes(), f.counted.options().device(at::kCPU));
  auto on_host = [](const std::optional<at::Tensor>& t) -> std::optional<at::Tensor> {
    if (!t.has_value() || !t->defined()) return std::nullopt;
    return t->cpu();
  };
  const batch_layout host_layout{on_host(cu_seqlens_q), on_host(cu_seqlens_k), on_host(seqlens_q),
                                 on_host(seqlens_k),    max_seqlen_q,          max_seqlen_k};
  with_mask(c.mask, [&](auto m) {
    counted_cuda<typename decltype(m)::type>(c, host_layout, f, counted_host);
  });
  f.counted.copy_(counted_host, /*non_blocking=*/true);
  return {f.out, f.lse, f.router, f.first_key_mass, f.counted};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward_cuda(
    const at::Tensor& dout, const opt_tensor& dlse, const opt_tensor& drouter, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const opt_tensor& sinks,
    const opt_tensor& gate_logits, const at::Tensor& out, const at::Tensor& lse,
    SINKMOE_LAYOUT_ARGS, SINKMOE_CONFIG_ARGS) {
  check_cuda_inputs(q, k, v, sinks, gate_logits);
  const c10::cuda::CUDAGuard guard(q.device());
  const config c = SINKMOE_CONFIG;
  const batch_layout layout = SINKMOE_LAYOUT;
  const forward_tensors f = saved_forward(q, k, v, sinks, gate_logits, out, lse);
  const backward_tensors g = allocate_backward(c, dout, dlse, drouter, f);
  with_mask(c.mask,
            [&](auto m) { backward_cuda<typename decltype(m)::type>(c, layout, f, g, unfused); });
  return {g.dq, g.dk, g.dv, g.dsinks, g.dgate_logits};
}

}  // namespace

TORCH_LIBRARY_IMPL(sinkmoe, CUDA, m) {
  m.impl("attention_forward", &attention_forward_cuda);
  m.impl("attention_backward", &attention_backward_cuda);
}

}  // namespace sinkmoe_torch
