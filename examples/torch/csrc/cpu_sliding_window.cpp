// The CPU operators' instantiations for mask::sliding_window (one translation unit per mask:
// compile time).
#include "binding.hpp"

namespace sinkmoe_torch {
SINKMOE_TORCH_INSTANTIATE_CPU(sinkmoe::mask::sliding_window)
}  // namespace sinkmoe_torch
