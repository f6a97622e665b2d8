// balance::distributed_cv2 with ranks as threads of one process (a sum reducer over a barrier;
// test_balance_mpi runs the same cases as MPI processes): every data x tensor x pipeline grid
// of 1 to 8 ranks against importance_cv2 on one process over the concatenated batch (loss,
// metrics, shared heads, every dL/dG: double to 1e-12, float to 1e-6), uneven slices and a
// rank without counted tokens; and the errors, which every rank must raise without a hang:
// ranks disagreeing on the model, a wrong rank count, a rank whose inputs are wrong, a failing
// reducer, layouts that do not tile the heads.
#define BOOST_TEST_MODULE balance_distributed
#include <barrier>
#include <boost/test/unit_test.hpp>
#include <exception>
#include <functional>
#include <memory>
#include <sinkmoe/balance/distributed.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support/distributed_case.hpp"
#include "support/throws_naming.hpp"

namespace bal = sinkmoe::balance;
namespace dc = sinkmoe::testing::distributed;

namespace {

/// A sum all-reduce among `ranks` threads: each deposits its values, then every thread sums the
/// deposits in rank order (so every rank gets bitwise the same result).
class thread_reducer {
 public:
  struct group {
    explicit group(int n) : ranks(n), sync(n), deposits(std::size_t(n)) {}
    int ranks;
    std::barrier<> sync;
    std::vector<std::vector<double>> deposits;
  };
  thread_reducer(std::shared_ptr<group> g, int rank) : group_(std::move(g)), rank_(rank) {}

  void all_reduce_sum(std::span<double> values) const {
    group& g = *group_;
    g.deposits[std::size_t(rank_)].assign(values.begin(), values.end());
    g.sync.arrive_and_wait();
    bool same_size = true;
    for (const auto& d : g.deposits) same_size = same_size && d.size() == values.size();
    if (same_size) {
      for (std::size_t i = 0; i < values.size(); ++i) {
        double sum = 0.0;
        for (const auto& d : g.deposits) sum += d[i];
        values[i] = sum;
      }
    }
    g.sync.arrive_and_wait();  // nobody deposits again before every rank has read
    if (!same_size) throw std::runtime_error("ranks called the all-reduce with different sizes");
  }

 private:
  std::shared_ptr<group> group_;
  int rank_;
};

/// Runs body(rank, reducer) on `ranks` threads; returns each rank's exception message ("" when
/// it returned normally).
std::vector<std::string> run_ranks(int ranks,
                                   const std::function<void(int, thread_reducer)>& body) {
  auto g = std::make_shared<thread_reducer::group>(ranks);
  std::vector<std::string> errors(static_cast<std::size_t>(ranks));
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r)
    threads.emplace_back([&, r] {
      try {
        body(r, thread_reducer(g, r));
      } catch (const std::exception& e) {
        errors[std::size_t(r)] = std::string("error: ") + e.what();
      }
    });
  for (auto& t : threads) t.join();
  return errors;
}

/// Every grid of `ranks`, F, shared heads 0 and 1: each rank's result against one process.
template <class F>
void run_grids(int ranks, double tol) {
  for (const dc::grid& g : dc::grids_of(ranks)) {
    if (g.tp > 6 || g.pp > 5) continue;  // the model has 6 heads and 5 layers
    for (int shared : {0, 1}) {
      BOOST_TEST_CONTEXT(g.name() << " shared heads " << shared) {
        const auto m = dc::make_batch<F>(g, 1000u + unsigned(ranks));
        const bal::importance_cv2 reg = dc::regulariser(shared);
        const auto want = dc::single_process(reg, m);
        std::vector<bal::report> reports(static_cast<std::size_t>(ranks));
        std::vector<int> measured_ranks(static_cast<std::size_t>(ranks), 0);
        std::vector<dc::rank_slice<F>> slices;
        for (int r = 0; r < ranks; ++r) slices.push_back(dc::slice_for(g, r, m));
        const auto errors = run_ranks(ranks, [&](int r, thread_reducer red) {
          bal::distributed_cv2 d(reg, slices[std::size_t(r)].layout(g, m), red);
          measured_ranks[std::size_t(r)] = d.ranks();  // Boost.Test asserts on this thread only
          reports[std::size_t(r)] =
              d.forward_backward(sinkmoe::exec::host{}, slices[std::size_t(r)].inputs,
                                 slices[std::size_t(r)].drouter_views);
        });
        for (int r = 0; r < ranks; ++r) {
          BOOST_TEST(errors[std::size_t(r)].empty(), errors[std::size_t(r)]);
          BOOST_TEST(measured_ranks[std::size_t(r)] == ranks);
          if (errors[std::size_t(r)].empty())
            dc::check_rank(g, slices[std::size_t(r)], m, reports[std::size_t(r)], want, tol);
        }
      }
    }
  }
}

/// Every rank's message holds `needle`.
void require_all_raise(const std::vector<std::string>& errors, const std::string& needle) {
  for (std::size_t r = 0; r < errors.size(); ++r)
    BOOST_TEST(
        errors[r].find(needle) != std::string::npos,
        "rank " << r << ": expected an error naming '" << needle << "', got '" << errors[r] << "'");
}

}  // namespace

BOOST_AUTO_TEST_CASE(one_rank_equals_importance_cv2) { run_grids<double>(1, 1e-12); }
BOOST_AUTO_TEST_CASE(two_ranks_double) { run_grids<double>(2, 1e-12); }
BOOST_AUTO_TEST_CASE(three_ranks_double) { run_grids<double>(3, 1e-12); }
BOOST_AUTO_TEST_CASE(four_ranks_double) { run_grids<double>(4, 1e-12); }
BOOST_AUTO_TEST_CASE(eight_ranks_double) { run_grids<double>(8, 1e-12); }
BOOST_AUTO_TEST_CASE(two_and_three_ranks_float) {
  run_grids<float>(2, 1e-6);
  run_grids<float>(3, 1e-6);
}

BOOST_AUTO_TEST_CASE(local_reducer_is_one_process) {
  const dc::grid g{1, 1, 1};
  const auto m = dc::make_batch<double>(g, 7);
  const bal::importance_cv2 reg = dc::regulariser(1);
  const auto want = dc::single_process(reg, m);
  auto s = dc::slice_for(g, 0, m);
  bal::distributed_cv2 d(reg, s.layout(g, m), bal::local_reducer{});
  const bal::report rep = d.forward_backward(sinkmoe::exec::host{}, s.inputs, s.drouter_views);
  BOOST_TEST(dc::check_rank(g, s, m, rep, want, 1e-15) == 0);
  const bal::report fwd = d.forward(sinkmoe::exec::host{}, s.inputs);
  BOOST_TEST(fwd.loss == rep.loss);
}

BOOST_AUTO_TEST_CASE(ranks_disagreeing_on_the_model_all_raise) {
  const auto errors = run_ranks(2, [](int r, thread_reducer red) {
    bal::rank_layout a{.layers = 2, .heads = 4};
    if (r == 1) a.model_layers = 3, a.layers = 3;
    bal::distributed_cv2 d(dc::regulariser(0), a, red);
  });
  require_all_raise(errors, "disagree on the model's layers or heads");
}

BOOST_AUTO_TEST_CASE(wrong_rank_count_all_raise) {
  const auto errors = run_ranks(3, [](int, thread_reducer red) {
    bal::distributed_cv2 d(dc::regulariser(0), {.layers = 2, .heads = 4, .ranks = 2}, red);
  });
  require_all_raise(errors, "rank_layout.ranks = 2, but the reducer spans 3 ranks");
}

BOOST_AUTO_TEST_CASE(untiled_heads_all_raise) {
  // Tensor parallel over 2 ranks, both claiming heads [0, 4) of 8: heads 4..7 held by nobody.
  const auto errors = run_ranks(2, [](int, thread_reducer red) {
    bal::distributed_cv2 d(dc::regulariser(0), {.layers = 1, .heads = 4, .model_heads = 8}, red);
  });
  require_all_raise(errors, "layer 0 head 4 is held by 0 ranks");
  // Overlapping shards: rank 0 holds [0, 6), rank 1 [4, 8).
  const auto overlap = run_ranks(2, [](int r, thread_reducer red) {
    bal::rank_layout a{
        .layers = 1, .heads = r == 0 ? 6 : 4, .model_heads = 8, .first_head = r == 0 ? 0 : 4};
    bal::distributed_cv2 d(dc::regulariser(0), a, red);
  });
  require_all_raise(overlap, "must tile every layer's heads");
}

BOOST_AUTO_TEST_CASE(one_rank_with_wrong_inputs_all_raise) {
  const dc::grid g{2, 1, 1};
  const auto m = dc::make_batch<double>(g, 11);
  std::vector<dc::rank_slice<double>> slices{dc::slice_for(g, 0, m), dc::slice_for(g, 1, m)};
  slices[1].inputs.pop_back();  // rank 1 forgets a layer
  slices[1].drouter_views.pop_back();
  const auto errors = run_ranks(2, [&](int r, thread_reducer red) {
    bal::distributed_cv2 d(dc::regulariser(0), slices[0].layout(g, m), red);
    (void)d.forward_backward(sinkmoe::exec::host{}, slices[std::size_t(r)].inputs,
                             slices[std::size_t(r)].drouter_views);
  });
  BOOST_TEST(errors[1].find("balance inputs: 4 layers x 6 heads, rank_layout says this rank "
                            "holds 5 x 6") != std::string::npos,
             errors[1]);
  BOOST_TEST(errors[0].find("1 of the 2 ranks reported an error") != std::string::npos, errors[0]);
  // A drouter of the wrong shape on one rank: the same, through the gradient's checks.
  std::vector<dc::rank_slice<double>> again{dc::slice_for(g, 0, m), dc::slice_for(g, 1, m)};
  again[0].drouter_views[2].shape[2] -= 1;
  const auto grad_errors = run_ranks(2, [&](int r, thread_reducer red) {
    bal::distributed_cv2 d(dc::regulariser(0), again[std::size_t(r)].layout(g, m), red);
    (void)d.forward_backward(sinkmoe::exec::host{}, again[std::size_t(r)].inputs,
                             again[std::size_t(r)].drouter_views);
  });
  BOOST_TEST(grad_errors[0].find("balance drouter[2]") != std::string::npos, grad_errors[0]);
  BOOST_TEST(grad_errors[1].find("1 of the 2 ranks reported an error") != std::string::npos,
             grad_errors[1]);
}

BOOST_AUTO_TEST_CASE(failing_reducer_is_a_sinkmoe_error) {
  const bal::callback_reducer broken{
      [](std::span<double>) { throw std::runtime_error("link down"); }};
  BOOST_CHECK_EXCEPTION(
      (bal::distributed_cv2<bal::callback_reducer>(dc::regulariser(0), {.layers = 1, .heads = 2},
                                                   broken)),
      sinkmoe::error, [](const sinkmoe::error& e) {
        return std::string(e.what()).find("balance reducer: the all-reduce failed: link down") !=
               std::string::npos;
      });
}

BOOST_AUTO_TEST_CASE(a_bad_layout_on_one_rank_raises_on_every_rank) {
  // Heads out of range on rank 1 only: it fails its own checks, rank 0 none.
  const auto errors = run_ranks(2, [](int r, thread_reducer red) {
    bal::rank_layout a{.layers = 1, .heads = 2, .model_heads = 4, .first_head = r == 0 ? 0 : 3};
    bal::distributed_cv2 d(dc::regulariser(0), a, red);
  });
  BOOST_TEST(errors[1].find("heads [3, 5) outside the model's 4 heads") != std::string::npos,
             errors[1]);
  BOOST_TEST(errors[0].find("1 of the 2 ranks reported an error in their rank_layout or options") !=
                 std::string::npos,
             errors[0]);
  // A wrong rank count on rank 0 only (checked after the first collective).
  const auto count = run_ranks(3, [](int r, thread_reducer red) {
    bal::distributed_cv2 d(dc::regulariser(0), {.layers = 1, .heads = 2, .ranks = r == 0 ? 2 : 3},
                           red);
  });
  BOOST_TEST(
      count[0].find("rank_layout.ranks = 2, but the reducer spans 3 ranks") != std::string::npos,
      count[0]);
  for (int r : {1, 2})
    BOOST_TEST(count[std::size_t(r)].find("1 of the 3 ranks reported an error in their "
                                          "rank_layout.ranks") != std::string::npos,
               count[std::size_t(r)]);
}

BOOST_AUTO_TEST_CASE(bad_layouts_and_options_raise_after_one_collective) {
  int calls = 0;
  const bal::callback_reducer counting{[&](std::span<double>) { ++calls; }};
  using D = bal::distributed_cv2<bal::callback_reducer>;
  const auto raises = [&](bal::rank_layout a, bal::importance_cv2 reg, const std::string& needle) {
    BOOST_CHECK_EXCEPTION((D(reg, a, counting)), sinkmoe::error, [&](const sinkmoe::error& e) {
      const bool ok = std::string(e.what()).find(needle) != std::string::npos;
      BOOST_TEST(ok, "expected '" << needle << "' in '" << e.what() << "'");
      return ok;
    });
  };
  raises({.layers = 0, .heads = 2}, dc::regulariser(0), "0 layers x 2 heads on this rank");
  raises({.layers = 2, .heads = 2, .model_layers = 3, .first_layer = 2}, dc::regulariser(0),
         "layers [2, 4) outside the model's 3 layers");
  raises({.layers = 1, .heads = 2, .model_heads = 4, .first_head = 3}, dc::regulariser(0),
         "heads [3, 5) outside the model's 4 heads");
  raises({.layers = 1, .heads = 2, .gradient_average = 0}, dc::regulariser(0),
         "rank_layout.gradient_average = 0");
  raises({.layers = 1, .heads = 2}, dc::regulariser(2), "importance_cv2.shared_heads = 2");
  BOOST_TEST(calls == 5);  // each joined the first collective, so no other rank would wait
}
