#pragma once
// Compile-time configuration: the host/device function qualifier and CUDA detection.

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SINKMOE_HD __host__ __device__
#define SINKMOE_DEVICE __device__
#else
#define SINKMOE_HD
#define SINKMOE_DEVICE
#endif

// SINKMOE_HAS_CUDA: the CUDA runtime headers are usable in this translation unit. GPU-only
// code (exec::cuda, kernels) sits behind it, so g++-only builds never see it.
#if !defined(SINKMOE_HAS_CUDA)
#if defined(__CUDACC__)
#define SINKMOE_HAS_CUDA 1
#else
#define SINKMOE_HAS_CUDA 0
#endif
#endif

#if defined(_MSC_VER)
#define SINKMOE_RESTRICT __restrict
#else
#define SINKMOE_RESTRICT __restrict__
#endif

// SINKMOE_OMP_SIMD(clauses): `#pragma omp simd clauses` where OpenMP is enabled, else nothing
// (so that -Wall builds without OpenMP, nvcc's host pass included, do not warn about it).
#define SINKMOE_STRINGIFY_PRAGMA(x) _Pragma(#x)
#if defined(_OPENMP)
#define SINKMOE_OMP_SIMD(...) SINKMOE_STRINGIFY_PRAGMA(omp simd __VA_ARGS__)
#else
#define SINKMOE_OMP_SIMD(...)
#endif
