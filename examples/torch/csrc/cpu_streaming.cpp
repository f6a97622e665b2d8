// The CPU operators' instantiations for mask::streaming (one translation unit per mask: compile
// time).
#include "binding.hpp"

namespace sinkmoe_torch {
SINKMOE_TORCH_INSTANTIATE_CPU(sinkmoe::mask::streaming)
}  // namespace sinkmoe_torch
