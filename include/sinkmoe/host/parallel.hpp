#pragma once
// A parallel loop over independent tasks: OpenMP when the build has it, serial otherwise.
// Work is split into tasks whose results never depend on which thread ran them.

#include <cstdint>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace sinkmoe::host::detail {

/// The number of threads parallel_for runs on for a request of `threads` (0: the default).
inline int thread_count(int threads) {
#if defined(_OPENMP)
  return threads > 0 ? threads : omp_get_max_threads();
#else
  (void)threads;
  return 1;
#endif
}

/// Runs body(i) for i in [0, count) on up to `threads` threads (0: the OpenMP default).
template <class Body>
void parallel_for(int threads, std::int64_t count, Body&& body) {
#if defined(_OPENMP)
  const int team = thread_count(threads);
#pragma omp parallel for schedule(dynamic, 1) num_threads(team)
  for (std::int64_t i = 0; i < count; ++i) body(i);
#else
  (void)threads;
  for (std::int64_t i = 0; i < count; ++i) body(i);
#endif
}

}  // namespace sinkmoe::host::detail
