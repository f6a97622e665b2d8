#pragma once
// Execution tags: where a call runs. Backends overload on them.

namespace sinkmoe::exec {

/// The CPU backend (OpenMP when available). Results do not depend on the thread count.
struct host {
  int threads = 0;  ///< 0: OpenMP's default (OMP_NUM_THREADS or all cores)
};

}  // namespace sinkmoe::exec
