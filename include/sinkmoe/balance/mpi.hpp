#pragma once
// MPI for distributed balancing (balance/distributed.hpp): the sum all-reduce of the balancing
// statistics on a communicator the caller owns. Needs <mpi.h> and the MPI library (e.g. Open MPI:
// compile with mpicxx, or link MPI::MPI_CXX in CMake); nothing else in sinkmoe does.
//
//   balance::distributed_cv2 bal(reg, layout, balance::mpi_reducer{MPI_COMM_WORLD});
//
// An MPI error code becomes a sinkmoe::error with MPI's message. Under MPI's default error
// handler (MPI_ERRORS_ARE_FATAL) MPI aborts the job before returning one; set MPI_ERRORS_RETURN
// on the communicator to get the exception.

#include <mpi.h>

#include <sinkmoe/core/error.hpp>
#include <span>
#include <string>

namespace sinkmoe::balance {

/// Sum all-reduce over an MPI communicator (MPI_Allreduce, in place, MPI_DOUBLE, MPI_SUM).
struct mpi_reducer {
  MPI_Comm comm = MPI_COMM_WORLD;

  void all_reduce_sum(std::span<double> values) const {
    const int rc = MPI_Allreduce(MPI_IN_PLACE, values.data(), static_cast<int>(values.size()),
                                 MPI_DOUBLE, MPI_SUM, comm);
    if (rc != MPI_SUCCESS) {
      char message[MPI_MAX_ERROR_STRING];
      int length = 0;
      MPI_Error_string(rc, message, &length);
      throw error("MPI_Allreduce of " + std::to_string(values.size()) +
                  " doubles failed: " + std::string(message, static_cast<std::size_t>(length)));
    }
  }
};

}  // namespace sinkmoe::balance
