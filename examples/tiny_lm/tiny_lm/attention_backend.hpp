#pragma once
// The seam between the model and the attention implementation.
//
// The model never names an attention<...> type: each layer holds an attention_kernels table
// (forward, backward, counted tokens) chosen at run time from (device, mechanism, mask). The
// CPU tables are instantiated once, in attention_host_float.cpp (the trainer, float) and
// attention_host_double.cpp (the gradient-check test, double), so only those translation units
// pay for compiling the library's kernels.
//
// GPU: not available yet. A CUDA build would add tables over sinkmoe::exec::cuda (fused
// kernels) and run the linear layers on cuBLASLt, with the activations in device memory; until
// those exist, asking for --device cuda is an error, never a silent fallback to the CPU.

#include <cstdint>
#include <sinkmoe/args.hpp>
#include <sinkmoe/exec.hpp>
#include <stdexcept>
#include <string>

#include "tiny_lm/config.hpp"

namespace tiny_lm {

/// One attention<Sink, Gate, Mask, Route> instantiation behind function pointers.
template <class T>
struct attention_kernels {
  const char* type_name;            ///< e.g. "attention<sink::learned, gate::none, mask::causal>"
  bool excludes_sink_only_queries;  ///< vanilla: queries that see the sink alone do not count
  void (*forward)(const sinkmoe::exec::host&, const sinkmoe::forward_args<T>&);
  void (*backward)(const sinkmoe::exec::host&, const sinkmoe::forward_args<T>&,
                   const sinkmoe::backward_args<T>&);
  void (*counted_tokens)(const sinkmoe::forward_args<T>&, sinkmoe::tensor_view<std::uint8_t, 2>);
};

/// The CPU kernels for (mechanism, mask), or nullptr when this build did not instantiate them.
template <class T>
const attention_kernels<T>* host_attention(mechanism m, mask_kind mask);
template <>
const attention_kernels<float>* host_attention<float>(mechanism m, mask_kind mask);
template <>
const attention_kernels<double>* host_attention<double>(mechanism m, mask_kind mask);

/// Throws usage_error when `device` has no backend in this build (today: anything but the CPU).
inline void require_device(device_kind device) {
  if (device != device_kind::cpu)
    throw usage_error(
        "--device cuda: the GPU backend (sinkmoe's fused CUDA attention kernels and cuBLASLt "
        "linear layers) is not available yet; use --device cpu");
}

/// The attention kernels of one layer on `device`. Throws usage_error naming --device for a
/// device without a backend, and std::logic_error for a combination this build did not
/// instantiate.
template <class T>
const attention_kernels<T>& find_attention(device_kind device, mechanism m, mask_kind mask) {
  require_device(device);
  const attention_kernels<T>* kernels = host_attention<T>(m, mask);
  if (kernels == nullptr)
    throw std::logic_error(std::string("tiny_lm: no ") + (sizeof(T) == 8 ? "double" : "float") +
                           " attention kernels for mechanism " + name_of(m) + " with mask " +
                           (mask == mask_kind::causal ? "causal" : "sliding_window") +
                           " in this build");
  return *kernels;
}

}  // namespace tiny_lm
