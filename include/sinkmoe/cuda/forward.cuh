#pragma once
// Forwarding header: sinkmoe::fused::cuda_forward lives in sinkmoe/cuda/fused/launch.cuh.
#include <sinkmoe/cuda/fused/launch.cuh>
