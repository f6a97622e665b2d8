// Runs the fused forward kernel (include/sinkmoe/cuda/fused/forward_kernel.hpp) through the host
// emulation of the primitive layer: the same validation, parameters and launch geometry as the
// nvcc launcher (sinkmoe/cuda/fused/launch.cuh), with arch::emulated_launch in place of
// arch::launch. Tests only (needs Boost.Context); include before any other sinkmoe header that
// pulls in the primitive layer.
#pragma once

#include <sinkmoe/cuda/arch/emulation.hpp>
// The emulation header must come first: it selects the emulated primitive layer.
#include <sinkmoe/attention.hpp>
#include <sinkmoe/cuda/forward_kernel.hpp>

#include "support/emulation_ranges.hpp"

namespace sinkmoe::testing {

/// attention<...>::forward on the fused kernel, emulated: validates (throws sinkmoe::error like
/// the library), launches forward_kernel<Attn, Element, HeadDim> with the call's tensors as the
/// launch's global ranges (support/emulation_ranges.hpp) and returns the emulation's counters
/// (all zero when there is no query row); a padded batch's padding kernel runs after it.
/// cu_seqlens and seqlens are host pointers here.
template <class Attn, int HeadDim, sinkmoe::arch::half_precision Element>
sinkmoe::arch::emulation_stats emulated_fused_forward(const forward_args<Element>& args) {
  const problem_shape shape = Attn::validate(args);
  detail::require(shape.head_dim == HeadDim, "emulated_fused_forward: head_dim = ", shape.head_dim,
                  ", but the kernel was instantiated for ", HeadDim);
  using kernel = fused::forward_kernel<Attn, Element, HeadDim>;
  const int max_tq = fused::max_query_rows(shape, args.varlen);
  const int max_tk = fused::max_key_rows(shape, args.varlen);
  const fused::forward_params<Element> params =
      fused::make_forward_params(args, shape, max_tq, max_tk);
  const fused::launch_geometry geometry = fused::forward_geometry<kernel>(shape, max_tq);
  const arch::emulator em = emulator_for(forward_ranges(args));
  arch::emulation_stats total;
  if (!geometry.empty())
    total += em.launch(geometry.grid, geometry.block, geometry.smem_bytes, kernel{}, params);
  padding::enqueue_forward<typename Attn::sink_type>(
      args, shape, [&](auto pad_kernel, arch::index3 grid, arch::index3 block, const auto& p) {
        total += em.launch(grid, block, 0, pad_kernel, p);
      });
  return total;
}

}  // namespace sinkmoe::testing
