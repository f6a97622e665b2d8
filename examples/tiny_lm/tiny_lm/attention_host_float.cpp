// The trainer's attention kernels: five mechanisms x {causal, sliding window}, float.
#include "tiny_lm/attention_host_impl.hpp"

namespace tiny_lm {

template <>
const attention_kernels<float>* host_attention<float>(mechanism m, mask_kind mask) {
  using sinkmoe::mask::causal;
  using sinkmoe::mask::sliding_window;
  static const attention_kernels<float> table[5][2] = {
      {detail::make_kernels<mechanism::vanilla, causal, float>(),
       detail::make_kernels<mechanism::vanilla, sliding_window, float>()},
      {detail::make_kernels<mechanism::sink, causal, float>(),
       detail::make_kernels<mechanism::sink, sliding_window, float>()},
      {detail::make_kernels<mechanism::gated, causal, float>(),
       detail::make_kernels<mechanism::gated, sliding_window, float>()},
      {detail::make_kernels<mechanism::gated_headwise, causal, float>(),
       detail::make_kernels<mechanism::gated_headwise, sliding_window, float>()},
      {detail::make_kernels<mechanism::sink_gated, causal, float>(),
       detail::make_kernels<mechanism::sink_gated, sliding_window, float>()},
  };
  return &table[static_cast<int>(m)][static_cast<int>(mask)];
}

}  // namespace tiny_lm
