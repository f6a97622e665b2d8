#pragma once
// Forwarding header: balance::device_balancer lives in sinkmoe/cuda/balance/device_balancer.cuh.
#include <sinkmoe/cuda/balance/device_balancer.cuh>
