// A build without MPI: --data-parallel is a usage error (see data_parallel.hpp).
#include "tiny_lm/data_parallel.hpp"

namespace tiny_lm {

bool data_parallel_available() { return false; }

std::unique_ptr<data_parallel> open_data_parallel() {
  throw usage_error(
      "--data-parallel: this tiny_lm was built without MPI (install an MPI such as Open MPI, "
      "then reconfigure and rebuild)");
}

}  // namespace tiny_lm
