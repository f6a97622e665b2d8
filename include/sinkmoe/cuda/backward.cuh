#pragma once
// Forwarding header: sinkmoe::fused::cuda_backward lives in sinkmoe/cuda/fused/launch.cuh.
#include <sinkmoe/cuda/fused/launch.cuh>
