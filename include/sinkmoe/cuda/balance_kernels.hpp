#pragma once
// Forwarding header: the device balancing kernels live in sinkmoe/cuda/balance/kernels.hpp.
#include <sinkmoe/cuda/balance/kernels.hpp>
