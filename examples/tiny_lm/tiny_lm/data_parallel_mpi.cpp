// Data-parallel training over MPI (see data_parallel.hpp). Built only when CMake finds MPI
// (TINY_LM_HAS_MPI=1); otherwise data_parallel_none.cpp stands in.
//
// MPI keeps its default error handler (MPI_ERRORS_ARE_FATAL): a failed collective ends the
// whole job with MPI's message rather than leaving ranks waiting for each other.
#include <mpi.h>

#include <cstdlib>
#include <memory>
#include <sinkmoe/balance/distributed.hpp>
#include <sinkmoe/balance/mpi.hpp>
#include <span>

#include "tiny_lm/data_parallel.hpp"

namespace tiny_lm {

namespace {

class mpi_data_parallel final : public data_parallel {
 public:
  mpi_data_parallel() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      // FUNNELED: OpenMP threads inside a rank, MPI calls from the main thread only.
      int provided = 0;
      MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
      owns_ = true;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &ranks_);
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node);
    MPI_Comm_size(node, &local_ranks_);
    MPI_Comm_free(&node);
  }
  ~mpi_data_parallel() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owns_ && !finalized) MPI_Finalize();
  }
  mpi_data_parallel(const mpi_data_parallel&) = delete;
  mpi_data_parallel& operator=(const mpi_data_parallel&) = delete;

  [[nodiscard]] int rank() const override { return rank_; }
  [[nodiscard]] int ranks() const override { return ranks_; }
  [[nodiscard]] int local_ranks() const override { return local_ranks_; }

  void all_reduce_sum(std::span<float> values) override {
    MPI_Allreduce(MPI_IN_PLACE, values.data(), static_cast<int>(values.size()), MPI_FLOAT, MPI_SUM,
                  MPI_COMM_WORLD);
  }
  void all_reduce_sum(std::span<double> values) override {
    MPI_Allreduce(MPI_IN_PLACE, values.data(), static_cast<int>(values.size()), MPI_DOUBLE, MPI_SUM,
                  MPI_COMM_WORLD);
  }

  [[nodiscard]] bool same_on_all_ranks(std::uint64_t value) override {
    // min(v) and min(~v) = ~max(v) in one reduction.
    std::uint64_t v[2] = {value, ~value};
    MPI_Allreduce(MPI_IN_PLACE, v, 2, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
    return v[0] == ~v[1];
  }

  [[nodiscard]] std::pair<int, int> first_failure(int code) override {
    int v[2] = {code != 0 ? rank_ : ranks_, -code};  // min rank, -max code
    MPI_Allreduce(MPI_IN_PLACE, v, 2, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    return {v[0], -v[1]};
  }

  void barrier() override { MPI_Barrier(MPI_COMM_WORLD); }

  [[nodiscard]] step_balancer<float> balancer(const sinkmoe::balance::importance_cv2& reg,
                                              int layers, int heads) override {
    namespace bal = sinkmoe::balance;
    // Data parallel: every rank holds all layers and heads, for its rows of the global batch.
    //
    // gradient_average = 1, because the ranks SUM their parameter gradients (trainer.cpp), and
    // what each rank sums is already its share of the gradient of the global loss:
    //   - its cross-entropy gradient is scaled by 1 / (global tokens), not 1 / (its tokens);
    //   - distributed_cv2 gives dL/dG = dL/dImp / (global counted tokens) on its tokens, where
    //     Imp is the importance over the global batch: the gradient of the global balancing
    //     loss with respect to this rank's router values, nothing to rescale.
    // So sum over ranks = the 1-rank gradient on the concatenated batch. (A DDP-style MEAN of
    // per-rank gradients would need each rank's CE averaged over its own tokens and
    // gradient_average = ranks, and would weight rows unevenly when batch % ranks != 0.)
    const bal::rank_layout layout{
        .layers = layers, .heads = heads, .ranks = ranks_, .gradient_average = 1};
    auto cv2 = std::make_shared<bal::distributed_cv2<bal::mpi_reducer>>(
        reg, layout, bal::mpi_reducer{MPI_COMM_WORLD});
    step_balancer<float> b;
    b.lambda = reg.lambda;
    b.forward = [cv2](const sinkmoe::exec::host& ex, step_balancer<float>::inputs_t in) {
      return cv2->forward<float>(ex, in);
    };
    b.forward_backward = [cv2](const sinkmoe::exec::host& ex, step_balancer<float>::inputs_t in,
                               step_balancer<float>::drouter_t dr) {
      return cv2->forward_backward<float>(ex, in, dr);
    };
    return b;
  }

  [[noreturn]] void abort(int code) override {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::abort();  // MPI_Abort does not return
  }

 private:
  int rank_ = 0, ranks_ = 1, local_ranks_ = 1;
  bool owns_ = false;
};

}  // namespace

bool data_parallel_available() { return true; }

std::unique_ptr<data_parallel> open_data_parallel() {
  return std::make_unique<mpi_data_parallel>();
}

}  // namespace tiny_lm
