// The CPU operators' instantiations for mask::none (one translation unit per mask: compile time).
#include "binding.hpp"

namespace sinkmoe_torch {
SINKMOE_TORCH_INSTANTIATE_CPU(sinkmoe::mask::none)
}  // namespace sinkmoe_torch
