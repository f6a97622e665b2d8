// The global memory an emulated attention launch may touch, as arch::global_range lists: every
// tensor of the call (inputs read-only, outputs writable) and the workspace. Registered with the
// emulator, they make every checked global access of the kernels a bounds check, and a store
// into an input an error (docs/emulation.md). Tests only; include after the emulation header.
#pragma once

#include <sinkmoe/args.hpp>
#include <sinkmoe/cuda/arch/emulation.hpp>
#include <string>
#include <vector>

namespace sinkmoe::testing {

/// Appends the ranges of `from` to `to`.
inline void append_ranges(std::vector<arch::global_range>& to,
                          std::vector<arch::global_range> from) {
  to.insert(to.end(), from.begin(), from.end());
}

/// The tensors of a forward call: q, k, v, sinks, gate logits, the varlen offsets and the
/// padded batch's lengths read-only;
/// out, lse, router and first_key_mass writable.
template <class T>
std::vector<arch::global_range> forward_ranges(const forward_args<T>& a) {
  std::vector<arch::global_range> r;
  append_ranges(r, arch::range_of("forward_args.q", a.q, false));
  append_ranges(r, arch::range_of("forward_args.k", a.k, false));
  append_ranges(r, arch::range_of("forward_args.v", a.v, false));
  append_ranges(r, arch::range_of("forward_args.sinks", a.sinks, false));
  append_ranges(r, arch::range_of("forward_args.gate_logits", a.gate_logits, false));
  append_ranges(r, arch::range_of("forward_args.out", a.out, true));
  append_ranges(r, arch::range_of("forward_args.lse", a.lse, true));
  append_ranges(r, arch::range_of("forward_args.router", a.router, true));
  append_ranges(r, arch::range_of("forward_args.first_key_mass", a.first_key_mass, true));
  if (a.varlen.enabled()) {
    const std::size_t bytes =
        static_cast<std::size_t>(a.varlen.num_seqs + 1) * sizeof(std::int32_t);
    r.push_back(arch::range_of_bytes("varlen.cu_seqlens_q", a.varlen.cu_seqlens_q, bytes, false));
    r.push_back(arch::range_of_bytes("varlen.cu_seqlens_k", a.varlen.cu_seqlens_k, bytes, false));
  }
  append_ranges(r, arch::range_of("forward_args.seqlens.q", a.seqlens.q, false));
  append_ranges(r, arch::range_of("forward_args.seqlens.k", a.seqlens.k, false));
  return r;
}

/// The tensors of a backward call: the forward's (all read-only now, out and lse included),
/// dout, drouter and dlse read-only; dq, dk, dv, dsinks and dgate_logits writable.
template <class T>
std::vector<arch::global_range> backward_ranges(const forward_args<T>& a,
                                                const backward_args<T>& g) {
  std::vector<arch::global_range> r = forward_ranges(a);
  for (arch::global_range& range : r) range.writable = false;
  append_ranges(r, arch::range_of("backward_args.dout", g.dout, false));
  append_ranges(r, arch::range_of("backward_args.drouter", g.drouter, false));
  append_ranges(r, arch::range_of("backward_args.dlse", g.dlse, false));
  append_ranges(r, arch::range_of("backward_args.dq", g.dq, true));
  append_ranges(r, arch::range_of("backward_args.dk", g.dk, true));
  append_ranges(r, arch::range_of("backward_args.dv", g.dv, true));
  append_ranges(r, arch::range_of("backward_args.dsinks", g.dsinks, true));
  append_ranges(r, arch::range_of("backward_args.dgate_logits", g.dgate_logits, true));
  return r;
}

/// An emulator whose launches may touch `ranges` and the workspace [workspace, +bytes).
inline arch::emulator emulator_for(std::vector<arch::global_range> ranges,
                                   const void* workspace = nullptr,
                                   std::size_t workspace_bytes = 0) {
  arch::emulator em;
  em.globals = std::move(ranges);
  if (workspace != nullptr && workspace_bytes > 0)
    em.globals.push_back(arch::range_of_bytes("workspace", workspace, workspace_bytes, true));
  return em;
}

}  // namespace sinkmoe::testing
