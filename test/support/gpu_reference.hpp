// The host side of the GPU test program (test/gpu/test_fused_gpu.cu): problems and their
// references, behind an interface of plain types so that the nvcc translation unit needs
// neither the host emulation nor the test runner. Implemented in test/gpu/gpu_reference.cpp
// (g++) on top of support/fused_forward_check.hpp and support/fused_backward_check.hpp: the
// same problems (inputs rounded to the element type, sink and gate pools, cotangents) and the
// same FlashAttention tolerance rule as the emulated suites (fp64 CPU backend on the rounded
// inputs; naive 16-bit computation; max |kernel - fp64| <= 2 max |naive16 - fp64| + atol).
#pragma once

#include <cstdint>
#include <sinkmoe/params.hpp>
#include <vector>

namespace sinkmoe::testing::gpu {

/// The 16-bit element type of a case.
enum class element : int { bf16, fp16 };

/// The policy bundles the GPU test runs (each one attention<...> instantiation).
enum class policy : int {
  vanilla_causal,        ///< sink::none, gate::none, mask::causal
  sink_sliding_window,   ///< sink::learned, gate::none, mask::sliding_window
  gated_causal,          ///< sink::none, gate::elementwise, mask::causal
  sink_gate_product,     ///< sink::learned, gate::headwise, mask::none, route::product
  streaming_fixed_sink,  ///< sink::fixed, gate::none, mask::streaming
};

/// Sizes and runtime parameters of one case (as fused_check::case_spec). Dense: B sequences of
/// Tq queries and Tk keys; varlen: q_len / k_len.
struct spec {
  int B = 1, Tq = 1, Tk = 1, Hq = 1, Hkv = 1;
  int window = 1;           ///< sliding_window / streaming
  int sink_tokens = 0;      ///< streaming
  double fixed_sink = 0.0;  ///< sink::fixed
  std::vector<int> q_len, k_len;
  unsigned seed = 1;
  [[nodiscard]] bool varlen() const { return !q_len.empty(); }
};

/// A problem in the layouts of the library: q, gate [bt, tq_total, Hq, D or dg], k, v
/// [bt, tk_total, Hkv, D], statistics [bt, Hq, tq_total]. Values are already rounded to the
/// element type (cotangents: dout to the element type, drouter and dlse to fp32).
struct problem_data {
  int bt = 1, tq_total = 0, tk_total = 0, Hq = 1, Hkv = 1, D = 64, dg = 0;
  std::vector<std::int32_t> cu_q, cu_k;  ///< varlen offsets (empty when dense)
  attention_params params;
  std::vector<double> q, k, v, sinks, gate_logits;
  std::vector<double> dout, drouter, dlse;
};

/// What the forward kernel wrote (as doubles, reference layouts).
struct forward_outputs {
  std::vector<double> out, lse, router, first_key_mass;
};

/// What the backward kernels wrote (dsinks empty without sink::learned, dgate without a gate).
struct gradients {
  std::vector<double> dq, dk, dv, dsinks, dgate;
};

/// The problem of (policy, element, spec, head_dim): deterministic in spec.seed.
problem_data make_problem(policy p, element e, const spec& s, int head_dim);

/// Checks a forward result (Boost.Test assertions: the rule on out, lse, router and
/// first_key_mass; no NaN; empty rows). Returns the worst err_kernel / (2 err_naive + atol).
double check_forward(policy p, element e, const spec& s, int head_dim,
                     const forward_outputs& kernel);

/// Checks a backward result (the rule on dq, dk, dv, dsinks, dgate); `forward` is the kernel's
/// own forward (the naive backward starts from its out and lse). Returns the worst ratio.
double check_backward(policy p, element e, const spec& s, int head_dim,
                      const forward_outputs& forward, const gradients& kernel);

/// A readable label of a case.
const char* policy_name(policy p);

}  // namespace sinkmoe::testing::gpu
