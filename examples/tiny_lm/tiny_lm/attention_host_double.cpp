// The gradient check's attention kernels, double: the five mechanisms with the causal mask, and
// sink attention with the sliding window (the GPT-OSS layout). Compiled into the test only.
#include "tiny_lm/attention_host_impl.hpp"

namespace tiny_lm {

template <>
const attention_kernels<double>* host_attention<double>(mechanism m, mask_kind mask) {
  using sinkmoe::mask::causal;
  using sinkmoe::mask::sliding_window;
  static const attention_kernels<double> causal_table[5] = {
      detail::make_kernels<mechanism::vanilla, causal, double>(),
      detail::make_kernels<mechanism::sink, causal, double>(),
      detail::make_kernels<mechanism::gated, causal, double>(),
      detail::make_kernels<mechanism::gated_headwise, causal, double>(),
      detail::make_kernels<mechanism::sink_gated, causal, double>(),
  };
  static const attention_kernels<double> sink_window =
      detail::make_kernels<mechanism::sink, sliding_window, double>();
  if (mask == mask_kind::causal) return &causal_table[static_cast<int>(m)];
  if (m == mechanism::sink) return &sink_window;
  return nullptr;
}

}  // namespace tiny_lm
