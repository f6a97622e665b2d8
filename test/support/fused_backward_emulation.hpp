// Runs the fused backward kernels (include/sinkmoe/cuda/backward_kernel.hpp) through the host
// emulation of the primitive layer: the same validation, workspace, parameters and launch order
// as the nvcc launcher (sinkmoe/cuda/backward.cuh), with arch::emulated_launch in place of
// arch::launch and a host vector as the workspace. Tests only (needs Boost.Context); include
// before any other sinkmoe header that pulls in the primitive layer.
#pragma once

#include <sinkmoe/cuda/arch/emulation.hpp>
// The emulation header must come first: it selects the emulated primitive layer.
#include <cstring>
#include <memory>
#include <sinkmoe/attention.hpp>
#include <sinkmoe/cuda/backward_kernel.hpp>
#include <vector>

#include "support/emulation_ranges.hpp"

namespace sinkmoe::testing {

/// attention<...>::backward on the fused kernels, emulated: validates (throws sinkmoe::error like
/// the library), then runs the preprocess, dK/dV, dQ and d(sink) kernels in stream order. The
/// workspace starts as 0xff bytes (NaN floats), so a read of an unwritten part shows up.
/// Returns the emulation's counters summed over the launches. cu_seqlens are host pointers.
template <class Attn, int HeadDim, sinkmoe::arch::half_precision Element>
sinkmoe::arch::emulation_stats emulated_fused_backward(const forward_args<Element>& args,
                                                       const backward_args<Element>& grads) {
  namespace arch = sinkmoe::arch;
  const problem_shape shape = Attn::validate(args, grads);
  detail::require(shape.head_dim == HeadDim, "emulated_fused_backward: head_dim = ", shape.head_dim,
                  ", but the kernels were instantiated for ", HeadDim);
  using kernels = fused::backward_kernels<Attn, Element, HeadDim>;
  const int max_tq = fused::max_query_rows(shape, args.varlen);
  const int max_tk = fused::max_key_rows(shape, args.varlen);
  const fused::backward_workspace_layout layout =
      fused::backward_workspace<Attn, Element>(shape, max_tq);
  std::vector<unsigned char> storage(layout.total_bytes + 256, 0xff);
  void* workspace = storage.data();
  std::size_t space = storage.size();
  workspace = std::align(256, layout.total_bytes, workspace, space);
  const fused::backward_params<Element> params =
      fused::make_backward_params<Attn>(args, grads, shape, max_tq, workspace, layout.total_bytes);
  const fused::backward_launch_geometry g =
      fused::backward_geometry<kernels, Attn>(shape, max_tq, max_tk);

  const arch::emulator em =
      emulator_for(backward_ranges(args, grads), workspace, layout.total_bytes);
  arch::emulation_stats total;
  if (!g.preprocess.empty())
    total += em.launch(g.preprocess.grid, g.preprocess.block, g.preprocess.smem_bytes,
                       typename kernels::preprocess{}, params);
  if (!g.dkdv.empty())
    total +=
        em.launch(g.dkdv.grid, g.dkdv.block, g.dkdv.smem_bytes, typename kernels::dkdv{}, params);
  if (!g.dq.empty())
    total += em.launch(g.dq.grid, g.dq.block, g.dq.smem_bytes, typename kernels::dq{}, params);
  if (g.trainable_sink && !g.dsink.empty())
    total += em.launch(g.dsink.grid, g.dsink.block, g.dsink.smem_bytes, typename kernels::dsink{},
                       params);
  return total;
}

}  // namespace sinkmoe::testing
