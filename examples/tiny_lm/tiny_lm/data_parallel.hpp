#pragma once
// Data-parallel training (`tiny_lm train --data-parallel` under mpirun; README "Data-parallel
// training"). Every rank draws the same global batch (same data order, same RNG) and trains on a
// contiguous slice of its rows; the result is the 1-rank run on the whole batch:
//
//   - cross-entropy: each rank's dL/dlogits is scaled by 1 / (tokens of the global batch), so
//     its share is already a fraction of the global mean; the reported loss is the sum of the
//     ranks' loss sums over the sum of their token counts (exact for uneven slices too);
//   - balancing: sinkmoe::balance::distributed_cv2 over MPI_COMM_WORLD computes the importance of
//     the global batch and gives each rank dL/dG of the global loss for its own router values
//     (rank_layout.gradient_average = 1, see data_parallel_mpi.cpp);
//   - parameter gradients: summed over the ranks (MPI_Allreduce, MPI_SUM, in place), so every
//     rank holds the gradient of the global loss and applies the identical AdamW step.
//
// This header does not need MPI: the communicator is an interface, implemented over MPI in
// data_parallel_mpi.cpp, or, in a build without MPI, by data_parallel_none.cpp, whose
// open_data_parallel() refuses --data-parallel with a usage error.

#include <cstdint>
#include <exception>
#include <memory>
#include <sinkmoe/balance/balance.hpp>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>

#include "tiny_lm/cli.hpp"
#include "tiny_lm/config.hpp"
#include "tiny_lm/model.hpp"

namespace tiny_lm {

/// Rows [begin, end) of a step's global batch that one rank trains on.
struct row_range {
  int begin = 0;
  int end = 0;
  [[nodiscard]] int size() const { return end - begin; }
};

/// Contiguous slices, as even as possible: the first batch % ranks ranks get one row more.
/// A rank may get no row (batch < ranks); train() refuses that configuration.
inline row_range batch_slice(int batch, int rank, int ranks) {
  const int base = batch / ranks, extra = batch % ranks;
  const int begin = rank * base + (rank < extra ? rank : extra);
  return {begin, begin + base + (rank < extra ? 1 : 0)};
}

/// Thrown on the ranks that stay silent when every rank stops for one reason: the lowest
/// failing rank (or rank 0, for a failure every rank sees) prints the message; the others exit
/// with the same code and say nothing.
class rank_exit : public std::exception {
 public:
  explicit rank_exit(int code) : code(code) {}
  [[nodiscard]] const char* what() const noexcept override { return "another rank failed"; }
  int code;
};

/// The ranks of a data-parallel run (MPI_COMM_WORLD). Collective calls must be made by every
/// rank, in the same order. Destroying it finalises MPI.
class data_parallel {
 public:
  virtual ~data_parallel() = default;
  [[nodiscard]] virtual int rank() const = 0;
  [[nodiscard]] virtual int ranks() const = 0;
  /// Ranks on this rank's node (the default thread count is cores / local_ranks).
  [[nodiscard]] virtual int local_ranks() const = 0;

  /// Element-wise sum over the ranks, in place, on every rank (collective).
  virtual void all_reduce_sum(std::span<float> values) = 0;
  virtual void all_reduce_sum(std::span<double> values) = 0;
  /// true on every rank iff every rank passed the same value (collective).
  [[nodiscard]] virtual bool same_on_all_ranks(std::uint64_t value) = 0;
  /// Each rank passes its exit code (0: it is fine). Returns, on every rank, the lowest rank that
  /// failed (ranks() when none did) and the largest code (collective).
  [[nodiscard]] virtual std::pair<int, int> first_failure(int code) = 0;
  /// Returns once every rank has called it (collective).
  virtual void barrier() = 0;
  /// The balancing loss of a model's layers x heads over the global batch:
  /// sinkmoe::balance::distributed_cv2 with an mpi_reducer (collective: every rank constructs it).
  [[nodiscard]] virtual step_balancer<float> balancer(const sinkmoe::balance::importance_cv2& reg,
                                                      int layers, int heads) = 0;
  /// Ends every rank of the job (MPI_Abort): for a failure on one rank while the others may be
  /// waiting in a collective.
  [[noreturn]] virtual void abort(int code) = 0;
};

/// Whether this tiny_lm was built with MPI (--data-parallel available).
bool data_parallel_available();

/// MPI_Init (also outside mpirun: Open MPI's singleton init gives one rank) and the world
/// communicator. Throws usage_error in a build without MPI.
std::unique_ptr<data_parallel> open_data_parallel();

/// A failure that every rank of a data-parallel run meets at the same point (so none is left
/// waiting in a collective): the job can end normally, every rank with the same exit code.
class collective_failure : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Runs `f`, whose failures may differ between ranks (local input checks), then agrees with the
/// other ranks (one collective) on whether any failed: if so, it throws on every rank, the
/// lowest failing rank its usage_error or a collective_failure with its message, the others
/// rank_exit, so that one message is printed and no rank is left waiting. Without `dp` it just
/// runs `f`.
template <class F>
void on_every_rank(data_parallel* dp, F&& f) {
  if (!dp) {
    f();
    return;
  }
  std::exception_ptr usage;
  std::string message;
  int code = 0;
  try {
    f();
  } catch (const usage_error&) {
    usage = std::current_exception();
    code = k_exit_usage;
  } catch (const std::exception& e) {
    message = e.what();
    code = k_exit_failure;
  }
  const auto [first, worst] = dp->first_failure(code);
  if (first == dp->ranks()) return;
  if (first != dp->rank()) throw rank_exit(worst);
  if (usage) std::rethrow_exception(usage);
  throw collective_failure(message);
}

/// A failure that every rank detects alike (from reduced or agreed values): rank 0 (or the
/// single process) throws it, as usage_error for `usage` and collective_failure otherwise; the
/// other ranks throw rank_exit with the same exit code.
[[noreturn]] inline void fail_on_every_rank(const data_parallel* dp, bool usage,
                                            const std::string& message) {
  if (dp && dp->rank() != 0) throw rank_exit(usage ? k_exit_usage : k_exit_failure);
  if (usage) throw usage_error(message);
  throw collective_failure(message);
}

}  // namespace tiny_lm
