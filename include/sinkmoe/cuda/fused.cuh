#pragma once
// The fused CUDA backend behind attention<...>::forward / backward(exec::cuda{stream}, ...):
//
//   #include <sinkmoe/cuda/fused.cuh>
//   using attn = sinkmoe::sink_attention<>;
//   attn::forward(sinkmoe::exec::cuda{stream}, args);          // forward_args<arch::bf16>
//   attn::backward(sinkmoe::exec::cuda{stream}, args, grads);  // deterministic
//
// Element types arch::bf16 / arch::fp16 (__nv_bfloat16 / __half), head dims 64 and 128, rows of
// q, k, v, out, dout, dq, dk, dv 16-byte aligned; everything else as the host backend. The
// backward takes its workspace from the stream-ordered pool; to pass your own, call
// sinkmoe::fused::cuda_backward directly (fused/launch.cuh). nvcc only.

#include <sinkmoe/attention.hpp>
#include <sinkmoe/cuda/fused/launch.cuh>

namespace sinkmoe {

template <>
struct backend<exec::cuda> {
  template <class Attn, class Element>
  static void forward(const exec::cuda& ex, const forward_args<Element>& args) {
    fused::cuda_forward<Attn>(ex, args);
  }
  template <class Attn, class Element>
  static void backward(const exec::cuda& ex, const forward_args<Element>& args,
                       const backward_args<Element>& grads) {
    fused::cuda_backward<Attn>(ex, args, grads);
  }
};

}  // namespace sinkmoe
