// balance::distributed_cv2 through balance::mpi_reducer, one MPI process per rank (CTest runs it
// under mpiexec with 2, 3 and 4 processes): every data x tensor x pipeline grid of the world's
// size against importance_cv2 on one process over the concatenated batch (double to 1e-12, float
// to 1e-6; uneven slices, a rank without counted tokens, shared heads 0 and 1), and the errors
// every rank must raise without a hang (ranks disagreeing on the model, a wrong rank count, one
// rank with wrong inputs). The same cases as test_balance_distributed, which runs ranks as
// threads. Each process runs every case; a failure on any rank fails the job.
#define BOOST_TEST_MODULE balance_mpi
#include <mpi.h>

#include <boost/test/unit_test.hpp>
#include <sinkmoe/balance/distributed.hpp>
#include <sinkmoe/balance/mpi.hpp>
#include <string>
#include <vector>

#include "support/distributed_case.hpp"

namespace bal = sinkmoe::balance;
namespace dc = sinkmoe::testing::distributed;

namespace {

struct mpi_session {
  mpi_session() {
    MPI_Init(nullptr, nullptr);
    // Errors come back as codes (mpi_reducer turns them into sinkmoe::error) instead of aborting.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  }
  ~mpi_session() { MPI_Finalize(); }
};

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

template <class F>
void run_grids(double tol) {
  const int ranks = world_size(), rank = world_rank();
  BOOST_TEST_REQUIRE(ranks >= 2, "run under mpiexec with at least 2 processes");
  for (const dc::grid& g : dc::grids_of(ranks)) {
    if (g.tp > 6 || g.pp > 5) continue;  // the model has 6 heads and 5 layers
    for (int shared : {0, 1}) {
      BOOST_TEST_CONTEXT("rank " << rank << " of " << ranks << ", " << g.name() << ", shared heads "
                                 << shared) {
        const auto m = dc::make_batch<F>(g, 2000u + unsigned(ranks));
        const bal::importance_cv2 reg = dc::regulariser(shared);
        const auto want = dc::single_process(reg, m);
        auto s = dc::slice_for(g, rank, m);
        bal::distributed_cv2 d(reg, s.layout(g, m), bal::mpi_reducer{MPI_COMM_WORLD});
        BOOST_TEST(d.ranks() == ranks);
        const bal::report rep =
            d.forward_backward(sinkmoe::exec::host{}, s.inputs, s.drouter_views);
        BOOST_TEST(dc::check_rank(g, s, m, rep, want, tol) == 0);
      }
    }
  }
}

template <class Body>
std::string message_of(Body&& body) {
  try {
    body();
  } catch (const sinkmoe::error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

BOOST_TEST_GLOBAL_FIXTURE(mpi_session);

BOOST_AUTO_TEST_CASE(every_grid_double) { run_grids<double>(1e-12); }
BOOST_AUTO_TEST_CASE(every_grid_float) { run_grids<float>(1e-6); }

BOOST_AUTO_TEST_CASE(ranks_disagreeing_on_the_model_all_raise) {
  bal::rank_layout a{.layers = 2, .heads = 4};
  if (world_rank() == 1) a.layers = 3;
  const std::string msg = message_of(
      [&] { bal::distributed_cv2 d(dc::regulariser(0), a, bal::mpi_reducer{MPI_COMM_WORLD}); });
  BOOST_TEST(msg.find("disagree on the model's layers or heads") != std::string::npos, msg);
}

BOOST_AUTO_TEST_CASE(wrong_rank_count_all_raise) {
  const int wrong = world_size() + 1;
  const std::string msg = message_of([&] {
    bal::distributed_cv2 d(dc::regulariser(0), {.layers = 1, .heads = 2, .ranks = wrong},
                           bal::mpi_reducer{MPI_COMM_WORLD});
  });
  BOOST_TEST(msg.find("but the reducer spans " + std::to_string(world_size()) + " ranks") !=
                 std::string::npos,
             msg);
}

BOOST_AUTO_TEST_CASE(one_rank_with_wrong_inputs_all_raise) {
  const dc::grid g{world_size(), 1, 1};
  const auto m = dc::make_batch<double>(g, 17);
  auto s = dc::slice_for(g, world_rank(), m);
  bal::distributed_cv2 d(dc::regulariser(0), s.layout(g, m), bal::mpi_reducer{MPI_COMM_WORLD});
  if (world_rank() == 0) {
    s.inputs.pop_back();
    s.drouter_views.pop_back();
  }
  const std::string msg = message_of(
      [&] { (void)d.forward_backward(sinkmoe::exec::host{}, s.inputs, s.drouter_views); });
  const std::string expected = world_rank() == 0
                                   ? "rank_layout says this rank holds 5 x 6"
                                   : "1 of the " + std::to_string(world_size()) + " ranks reported";
  BOOST_TEST(msg.find(expected) != std::string::npos, msg);
}

BOOST_AUTO_TEST_CASE(mpi_error_is_a_sinkmoe_error) {
  // An invalid communicator: MPI returns an error code (MPI_ERRORS_RETURN on MPI_COMM_WORLD is
  // also the handler MPI_COMM_NULL errors go to), which mpi_reducer names.
  double x = 1.0;
  const std::string msg =
      message_of([&] { bal::mpi_reducer{MPI_COMM_NULL}.all_reduce_sum(std::span<double>(&x, 1)); });
  BOOST_TEST(msg.find("MPI_Allreduce of 1 doubles failed") != std::string::npos, msg);
}
