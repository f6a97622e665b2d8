#pragma once
// Forwarding header: the fused backward kernels live in sinkmoe/cuda/fused/backward_kernels.hpp.
#include <sinkmoe/cuda/fused/backward_kernels.hpp>
