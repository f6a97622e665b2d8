// Runs the fused backward kernels (include/sinkmoe/cuda/fused/backward_kernels.hpp) through the
// host emulation of the primitive layer: the same validation, workspace, parameters and launch
// order as the nvcc launcher (sinkmoe/cuda/fused/launch.cuh), with arch::emulated_launch in place
// of arch::launch and a host vector as the workspace. Tests only (needs Boost.Context); include
// before any other sinkmoe header that pulls in the primitive layer.
#pragma once

#include <sinkmoe/cuda/arch/emulation.hpp>
// The emulation header must come first: it selects the emulated primitive layer.
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sinkmoe/attention.hpp>
#include <sinkmoe/cuda/backward_kernel.hpp>
#include <vector>

#include "support/emulation_ranges.hpp"

namespace sinkmoe::testing {

/// The SM count the emulated backward plans its dK/dV split for: an H100's (or
/// SINKMOE_EMULATED_SM_COUNT). The test problems are small, so their key tiles alone give far
/// fewer blocks and the split path runs; 0 runs the unsplit path (as on a machine whose key tiles
/// alone fill it).
inline int emulated_sm_count() {
  const char* text = std::getenv("SINKMOE_EMULATED_SM_COUNT");
  return text != nullptr && *text != '\0' ? std::atoi(text) : 132;
}

/// attention<...>::backward on the fused kernels, emulated: validates (throws sinkmoe::error like
/// the library), then runs the preprocess, dK/dV, dQ and d(sink) kernels in stream order, and
/// the padding kernel of a padded batch. The
/// workspace starts as 0xff bytes (NaN floats), so a read of an unwritten part shows up.
/// Returns the emulation's counters summed over the launches. cu_seqlens are host pointers.
template <class Attn, int HeadDim, sinkmoe::arch::half_precision Element>
sinkmoe::arch::emulation_stats emulated_fused_backward(const forward_args<Element>& args,
                                                       const backward_args<Element>& grads,
                                                       int sm_count = emulated_sm_count()) {
  namespace arch = sinkmoe::arch;
  const problem_shape shape = Attn::validate(args, grads);
  detail::require(shape.head_dim == HeadDim, "emulated_fused_backward: head_dim = ", shape.head_dim,
                  ", but the kernels were instantiated for ", HeadDim);
  using kernels = fused::backward_kernels<Attn, Element, HeadDim>;
  const int max_tq = fused::max_query_rows(shape, args.varlen);
  const int max_tk = fused::max_key_rows(shape, args.varlen);
  const fused::backward_workspace_layout layout =
      fused::backward_workspace<Attn, Element, HeadDim>(shape, max_tq, max_tk, sm_count);
  std::vector<unsigned char> storage(layout.total_bytes + 256, 0xff);
  void* workspace = storage.data();
  std::size_t space = storage.size();
  workspace = std::align(256, layout.total_bytes, workspace, space);
  const fused::backward_params<Element> params = fused::make_backward_params<Attn>(
      args, grads, shape, layout, max_tq, max_tk, workspace, layout.total_bytes);
  const fused::backward_launch_geometry g =
      fused::backward_geometry<kernels, Attn>(shape, layout, max_tq, max_tk);

  const arch::emulator em =
      emulator_for(backward_ranges(args, grads), workspace, layout.total_bytes);
  arch::emulation_stats total;
  fused::enqueue_backward<kernels, Attn>(
      g, typename Attn::score_type(args.params, HeadDim),
      [&](auto kernel, const fused::launch_geometry& geometry, auto... extra) {
        total +=
            em.launch(geometry.grid, geometry.block, geometry.smem_bytes, kernel, params, extra...);
      });
  padding::enqueue_backward(args, grads, shape,
                            [&](auto kernel, arch::index3 grid, arch::index3 block, const auto& p) {
                              total += em.launch(grid, block, 0, kernel, p);
                            });
  return total;
}

}  // namespace sinkmoe::testing
