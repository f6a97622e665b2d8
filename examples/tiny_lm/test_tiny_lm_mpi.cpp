// Data-parallel training: `tiny_lm train --data-parallel` on 2 ranks under mpiexec against one
// plain process on the concatenated batch. 50 steps with the balancing loss on (lambda > 0, so
// its distributed gradient matters): the same loss curve and the same importance tables (every
// step's training batch, and the final validation set) to 1e-4 relative, for an even (4 over 2)
// and an odd (5 over 2) split. Also: one rank without mpiexec is the plain run bit for bit, and
// a batch smaller than the ranks is a usage error.
//
// Usage (CMakeLists.txt): test_tiny_lm_mpi -- MPIEXEC -n 2 [PREFLAGS] {} [POSTFLAGS], where {}
// marks where the tiny_lm command goes.
#define BOOST_TEST_MODULE tiny_lm_mpi
#include <sys/wait.h>

#include <algorithm>
#include <boost/test/unit_test.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "tiny_lm/checkpoint.hpp"
#include "tiny_lm/trainer.hpp"
#include "test_files.hpp"

namespace fs = std::filesystem;
using namespace tiny_lm;

namespace {

constexpr double k_tolerance = 1e-4;  // relative
constexpr int k_val_sequences = 16;

/// A fresh, empty scratch folder per test.
fs::path scratch(const std::string& name) { return tiny_lm::testing::scratch("tiny_lm_mpi_test", name); }
using tiny_lm::testing::slurp;

std::string quote(const std::string& s) {
  std::string q = "'";
  for (const char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

/// The mpiexec command line around `inner` (from the arguments after --).
std::string under_mpiexec(const std::string& inner) {
  const auto& suite = boost::unit_test::framework::master_test_suite();
  std::string cmd;
  bool placed = false;
  for (int i = 1; i < suite.argc; ++i) {
    const std::string arg = suite.argv[i];
    if (arg == "{}") {
      cmd += inner + " ";
      placed = true;
    } else {
      cmd += quote(arg) + " ";
    }
  }
  BOOST_TEST_REQUIRE(placed, "usage: test_tiny_lm_mpi -- MPIEXEC -n 2 [PREFLAGS] {} [POSTFLAGS]");
  return cmd;
}

struct command_result {
  int code = -1;
  std::string out, err;
  double seconds = 0;
};

/// Runs `tiny_lm train ARGS`, under mpiexec with 2 ranks or as one plain process.
command_result run_train(const std::string& args, const fs::path& dir, const std::string& tag,
                         bool mpi) {
  const fs::path out = dir / (tag + ".stdout"), err = dir / (tag + ".stderr");
  const std::string tiny_lm = quote(TINY_LM_EXE) + " train " + args;
  const std::string cmd = (mpi ? under_mpiexec(tiny_lm) : tiny_lm) + " >" + quote(out.string()) +
                          " 2>" + quote(err.string());
  const auto t0 = std::chrono::steady_clock::now();
  const int status = std::system(cmd.c_str());
  command_result r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

/// The numeric columns of a CSV with a header, by name.
std::map<std::string, std::vector<double>> read_csv(const fs::path& p) {
  std::istringstream in(slurp(p));
  std::string line;
  std::getline(in, line);
  std::vector<std::string> names;
  for (std::istringstream h(line); std::getline(h, line, ',');) names.push_back(line);
  std::map<std::string, std::vector<double>> cols;
  while (std::getline(in, line)) {
    std::istringstream row(line);
    std::string field;
    for (std::size_t c = 0; std::getline(row, field, ','); ++c)
      if (c < names.size()) cols[names[c]].push_back(std::strtod(field.c_str(), nullptr));
  }
  return cols;
}

double relative_difference(const std::vector<double>& a, const std::vector<double>& b) {
  BOOST_TEST_REQUIRE(a.size() == b.size());
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    worst =
        std::max(worst, std::abs(a[i] - b[i]) / std::max({std::abs(a[i]), std::abs(b[i]), 1e-30}));
  return worst;
}

std::vector<double> validation_importance(const run_summary& s) {
  std::vector<double> v;
  for (const auto& layer : s.val.balance.layers)
    v.insert(v.end(), layer.importance.begin(), layer.importance.end());
  return v;
}

/// 50 steps of `flags` on 2 ranks against 1 process: loss curve and importance tables to 1e-4.
void check_two_ranks_match_one(const std::string& name, const std::string& flags,
                               const std::string& split) {
  const fs::path dir = scratch(name);
  const std::string common = flags +
                             " --layers 2 --heads 4 --width 32 --seq 32 --steps 50 --lr 3e-3"
                             " --seed 7 --lambda 0.5 --log-every 1 --threads 1 --val-seqs " +
                             std::to_string(k_val_sequences);
  const fs::path one = dir / "one", two = dir / "two";
  const command_result a = run_train(common + " --out " + quote(one.string()), dir, "one", false);
  BOOST_TEST_REQUIRE(a.code == 0, "1 process: " << a.err);
  const command_result b =
      run_train("--data-parallel " + common + " --out " + quote(two.string()), dir, "two", true);
  BOOST_TEST_REQUIRE(b.code == 0, "2 ranks: " << b.out << b.err);
  BOOST_TEST(
      b.out.find("data parallel over 2 ranks (" + split + " sequences each)") != std::string::npos,
      b.out);
  // Rank 0 alone prints: one header line, one final summary.
  BOOST_TEST(
      std::count(b.out.begin(), b.out.end(), '\n') == std::count(a.out.begin(), a.out.end(), '\n'),
      "1 process:\n"
          << a.out << "\n2 ranks:\n"
          << b.out);

  const auto log_a = read_csv(one / "log.csv"), log_b = read_csv(two / "log.csv");
  BOOST_TEST_REQUIRE(log_a.at("loss").size() == 50u);
  BOOST_TEST_REQUIRE(log_b.at("loss").size() == 50u);
  BOOST_TEST(log_a.at("step") == log_b.at("step"));
  const double loss = relative_difference(log_a.at("loss"), log_b.at("loss"));
  const double ce = relative_difference(log_a.at("ce"), log_b.at("ce"));
  const double bal = relative_difference(log_a.at("balance_loss"), log_b.at("balance_loss"));
  const double val = relative_difference(log_a.at("val_loss"), log_b.at("val_loss"));
  double balance_loss = 0;
  for (const double x : log_a.at("balance_loss")) balance_loss = std::max(balance_loss, x);
  BOOST_TEST(balance_loss > 1e-3, "the balancing loss should matter: at most " << balance_loss);
  BOOST_TEST(log_a.at("loss").front() > log_a.at("loss").back() + 0.5, "the loss should fall");

  const auto imp_a = read_csv(one / "importance.csv"), imp_b = read_csv(two / "importance.csv");
  BOOST_TEST_REQUIRE(imp_a.at("importance").size() == 50u * 2 * 4);
  const double imp_steps = relative_difference(imp_a.at("importance"), imp_b.at("importance"));

  // The final model, re-evaluated from each run's checkpoint (full precision).
  const run_summary ra = evaluate_run_dir(one.string(), 1, k_val_sequences);
  const run_summary rb = evaluate_run_dir(two.string(), 1, k_val_sequences);
  const double imp_val = relative_difference(validation_importance(ra), validation_importance(rb));
  const double val_final = relative_difference({ra.val.loss}, {rb.val.loss});
  const checkpoint_data ca = load_checkpoint((one / "checkpoint.bin").string(), "test");
  const checkpoint_data cb = load_checkpoint((two / "checkpoint.bin").string(), "test");
  BOOST_TEST_REQUIRE(ca.params.size() == cb.params.size());
  double scale = 0, diff = 0;
  for (std::size_t i = 0; i < ca.params.size(); ++i) {
    scale = std::max(scale, double(std::abs(ca.params[i])));
    diff = std::max(diff, double(std::abs(ca.params[i] - cb.params[i])));
  }

  std::printf(
      "%s: max relative difference, 2 ranks vs 1 process over 50 steps: loss %.3g, ce %.3g, "
      "balance loss %.3g, val loss %.3g; importance (every step) %.3g; final validation "
      "importance %.3g, loss %.3g; parameters max |diff| / max |p| %.3g. Wall time: 1 process "
      "%.1f s, 2 ranks %.1f s\n",
      name.c_str(), loss, ce, bal, val, imp_steps, imp_val, val_final, diff / scale, a.seconds,
      b.seconds);
  std::fflush(stdout);
  BOOST_TEST(loss < k_tolerance);
  BOOST_TEST(ce < k_tolerance);
  BOOST_TEST(val < k_tolerance);
  BOOST_TEST(imp_steps < k_tolerance);
  BOOST_TEST(imp_val < k_tolerance);
  BOOST_TEST(val_final < k_tolerance);
}

}  // namespace

BOOST_AUTO_TEST_CASE(two_ranks_match_one_process_on_the_concatenated_batch) {
  check_two_ranks_match_one("even", "--mechanism sink --batch 4", "2");
}

BOOST_AUTO_TEST_CASE(an_odd_split_matches_too) {
  check_two_ranks_match_one("odd", "--mechanism gated --batch 5", "2-3");
}

// Open MPI's singleton init: --data-parallel without mpiexec is one rank, and gives the plain
// run's numbers bit for bit (the distributed balancer and the all-reduces over one rank).
BOOST_AUTO_TEST_CASE(one_rank_without_mpiexec_is_the_plain_run) {
  const fs::path dir = scratch("single");
  const std::string common =
      "--mechanism sink-gated --layers 2 --heads 4 --width 32 --seq 32 --batch 3 --steps 8 "
      "--lambda 0.5 --seed 3 --threads 1 --val-seqs 8";
  const fs::path plain = dir / "plain", single = dir / "single";
  const command_result a = run_train(common + " --out " + quote(plain.string()), dir, "a", false);
  BOOST_TEST_REQUIRE(a.code == 0, a.err);
  const command_result b =
      run_train("--data-parallel " + common + " --out " + quote(single.string()), dir, "b", false);
  BOOST_TEST_REQUIRE(b.code == 0, b.err);
  BOOST_TEST(b.out.find("data parallel over 1 rank (3 sequences each)") != std::string::npos,
             b.out);
  BOOST_TEST(slurp(plain / "importance.csv") == slurp(single / "importance.csv"));
  const checkpoint_data ca = load_checkpoint((plain / "checkpoint.bin").string(), "test");
  const checkpoint_data cb = load_checkpoint((single / "checkpoint.bin").string(), "test");
  BOOST_TEST_REQUIRE(ca.params.size() == cb.params.size());
  BOOST_TEST(std::memcmp(ca.params.data(), cb.params.data(), ca.params.size() * sizeof(float)) == 0,
             "the parameters differ");
}

BOOST_AUTO_TEST_CASE(a_rank_without_a_sequence_is_a_usage_error) {
  const fs::path dir = scratch("too_few");
  const fs::path out = dir / "out";
  const command_result r = run_train(
      "--data-parallel --batch 1 --steps 2 --width 16 --heads 2 --seq 8 --threads 1 --out " +
          quote(out.string()),
      dir, "r", true);
  BOOST_TEST(r.code == 2, r.out << r.err);
  const std::string expect = "tiny_lm: --batch 1: data parallel over 2 ranks needs at least one";
  const auto first = r.err.find(expect);
  BOOST_TEST(first != std::string::npos, r.err);
  BOOST_TEST(r.err.find(expect, first + 1) == std::string::npos, "printed twice: " << r.err);
  BOOST_TEST(!fs::exists(out));
}
