#pragma once
// arch::site: where in the kernel source a primitive was called. Every primitive that the host
// emulation checks (barriers, cp.async, shared and global accesses) takes one as a defaulted
// last argument, so that an emulation report names the source line of both accesses of a race,
// and a mutation test can switch off one barrier by its call site. Helpers built on the
// primitives take a site too and pass it on, so the report names the kernel's line, not the
// helper's.
//
// Emulation: std::source_location. Device: an empty type, so the argument costs nothing.

#include <sinkmoe/cuda/arch/config.hpp>

#if !SINKMOE_ARCH_DEVICE
#include <source_location>
#endif

namespace sinkmoe::arch {

#if SINKMOE_ARCH_DEVICE
/// Call site of a primitive: empty on the GPU.
struct site {
  __host__ __device__ static constexpr site current() { return {}; }
};
#else
/// Call site of a primitive: file, line and function, for emulation reports.
using site = std::source_location;
#endif

}  // namespace sinkmoe::arch
