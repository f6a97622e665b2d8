#pragma once
// Forwarding header: the fused forward kernel lives in sinkmoe/cuda/fused/forward_kernel.hpp.
#include <sinkmoe/cuda/fused/forward_kernel.hpp>
