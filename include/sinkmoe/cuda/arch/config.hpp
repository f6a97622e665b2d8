#pragma once
// Which implementation of the primitive layer (docs/emulation.md) this translation unit gets.
//
// The fused kernels are written only against sinkmoe::arch (thread and block indices, dynamic
// shared memory, barriers, warp shuffles, ldmatrix, mma.sync, cp.async). The layer has two
// implementations, chosen here once per translation unit:
//   SINKMOE_ARCH_DEVICE     nvcc: intrinsics and inline PTX (sm_80 and later)
//   SINKMOE_ARCH_EMULATION  g++, tests only: every thread of a block is a Boost.Context fiber,
//                           driven by sinkmoe/cuda/arch/emulation.hpp (include that header first)
// A primitive header included with neither is a compile error: host code that is not a test
// has no business calling warp primitives.
//
// The namespace is sinkmoe::arch rather than sinkmoe::cuda::arch so that code inside namespace
// sinkmoe can still name CCCL's ::cuda::ptx as cuda::ptx.

#include <sinkmoe/core/config.hpp>

#if defined(__CUDACC__)
#define SINKMOE_ARCH_DEVICE 1
/// Qualifier of every primitive: always inlined device code.
#define SINKMOE_ARCH_FN __device__ __forceinline__
/// Fully unroll the next loop (a constant trip count keeps register arrays in registers).
#define SINKMOE_ARCH_UNROLL _Pragma("unroll")
#elif defined(SINKMOE_ARCH_EMULATION)
#define SINKMOE_ARCH_DEVICE 0
#define SINKMOE_ARCH_FN inline
#define SINKMOE_ARCH_UNROLL
#else
#error \
    "sinkmoe/cuda/arch: the primitive layer needs nvcc, or the host emulation (include <sinkmoe/cuda/arch/emulation.hpp> first; tests only)"
#endif
