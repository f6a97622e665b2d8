#pragma once
// A parallel loop over independent tasks: OpenMP when the build has it, serial otherwise.
// Work is split into tasks whose results never depend on which thread ran them.

#include <cstdint>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace sinkmoe::host::detail {

/// Runs body(i) for i in [0, count) on up to `threads` threads (0: the OpenMP default).
template <class Body>
void parallel_for(int threads, std::int64_t count, Body&& body) {
#if defined(_OPENMP)
  const int team = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel for schedule(dynamic, 1) num_threads(team)
  for (std::int64_t i = 0; i < count; ++i) body(i);
#else
  (void)threads;
  for (std::int64_t i = 0; i < count; ++i) body(i);
#endif
}

}  // namespace sinkmoe::host::detail
