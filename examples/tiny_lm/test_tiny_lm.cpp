// Tests of the tiny_lm demo trainer: the manual backward against finite differences (double),
// the layers against naive versions, training (loss falls), bit-exact checkpoint resume,
// refusal of bad checkpoints, balancing lowers the importance CV, bad input exits with code 2
// and writes nothing. Training runs use one thread: ctest runs suites side by side. Data-parallel
// training under mpiexec is tested by test_tiny_lm_mpi.cpp.
#define BOOST_TEST_MODULE tiny_lm
#include <sys/wait.h>

#include <boost/test/unit_test.hpp>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "test_files.hpp"
#include "tiny_lm/checkpoint.hpp"
#include "tiny_lm/cli.hpp"
#include "tiny_lm/crc32.hpp"
#include "tiny_lm/data.hpp"
#include "tiny_lm/model.hpp"
#include "tiny_lm/ops.hpp"
#include "tiny_lm/optim.hpp"
#include "tiny_lm/report.hpp"
#include "tiny_lm/trainer.hpp"

namespace fs = std::filesystem;
using namespace tiny_lm;

namespace {

/// A fresh, empty scratch folder per test.
fs::path scratch(const std::string& name) {
  return tiny_lm::testing::scratch("tiny_lm_test", name);
}
using tiny_lm::testing::slurp;

void write(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out << bytes;
}

/// A small configuration that trains in a fraction of a second per step.
train_config tiny_config(mechanism m = mechanism::sink) {
  train_config c;
  c.model.mech = m;
  c.model.layers = 2;
  c.model.heads = 4;
  c.model.width = 32;
  c.model.seq = 32;
  c.batch = 8;
  c.steps = 30;
  c.lr = 3e-3;
  c.seed = 7;
  return c;
}

run_options quiet_options(const fs::path& dir) {
  run_options o;
  o.out_dir = dir.string();
  o.threads = 1;
  o.print = false;
  o.eval_sequences = 16;
  return o;
}

struct command_result {
  int code = -1;
  std::string out, err;
};

/// Runs the tiny_lm executable with `args`, capturing stdout, stderr and the exit code.
command_result run_exe(const std::string& args, const fs::path& dir) {
  const fs::path out = dir / "stdout.txt", err = dir / "stderr.txt";
  const std::string cmd = std::string("OMP_NUM_THREADS=1 '") + TINY_LM_EXE + "' " + args + " >'" +
                          out.string() + "' 2>'" + err.string() + "'";
  const int status = std::system(cmd.c_str());
  command_result r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Layers and the whole model against finite differences / naive versions
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(gemm_matches_naive_for_odd_shapes_and_transposed_a) {
  rng r(1);
  for (const auto [m, n, k] :
       {std::array{5, 67, 3}, std::array{8, 64, 16}, std::array{13, 130, 9}}) {
    std::vector<double> a(std::size_t(m) * k), at(a.size()), b(std::size_t(k) * n),
        c(std::size_t(m) * n, 1.0);
    for (auto& x : a) x = r.normal();
    for (auto& x : b) x = r.normal();
    for (int i = 0; i < m; ++i)
      for (int p = 0; p < k; ++p) at[std::size_t(p) * m + i] = a[std::size_t(i) * k + p];
    std::vector<double> c2 = c;
    ops::gemm(2, m, n, k, a.data(), k, b.data(), n, c.data(), n, true);
    ops::gemm<true>(2, m, n, k, at.data(), m, b.data(), n, c2.data(), n, true);
    double worst = 0;
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) {
        double want = 1.0;
        for (int p = 0; p < k; ++p) want += a[std::size_t(i) * k + p] * b[std::size_t(p) * n + j];
        worst = std::max({worst, std::abs(c[std::size_t(i) * n + j] - want),
                          std::abs(c2[std::size_t(i) * n + j] - want)});
      }
    BOOST_TEST(worst < 1e-12, "m " << m << " n " << n << " k " << k << ": worst error " << worst);
  }
}

BOOST_AUTO_TEST_CASE(gelu_is_the_tanh_form) {
  for (double x = -6; x <= 6; x += 0.37) {
    double y = 0;
    ops::gelu_forward(1, 1, &x, &y);
    const double want = 0.5 * x * (1 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
    BOOST_TEST(std::abs(y - want) < 1e-14);
  }
}

BOOST_AUTO_TEST_CASE(rmsnorm_and_gelu_backward_match_finite_differences) {
  const int n = 3, w = 5;
  rng r(2);
  std::vector<double> x(n * w), gain(w), dy(n * w);
  for (auto& v : x) v = r.normal();
  for (auto& v : gain) v = 1 + 0.3 * r.normal();
  for (auto& v : dy) v = r.normal();
  const auto loss = [&](const std::vector<double>& xs, const std::vector<double>& gs) {
    std::vector<double> y(n * w), rstd(n), u(n * w);
    ops::rmsnorm_forward(1, n, w, xs.data(), gs.data(), y.data(), rstd.data());
    ops::gelu_forward(1, n * w, y.data(), u.data());
    double s = 0;
    for (int i = 0; i < n * w; ++i) s += u[i] * dy[i];
    return s;
  };
  std::vector<double> y(n * w), rstd(n), dyg(n * w), dx(n * w, 0.0), dgain(w, 0.0);
  ops::rmsnorm_forward(1, n, w, x.data(), gain.data(), y.data(), rstd.data());
  ops::gelu_backward(1, n * w, y.data(), dy.data(), dyg.data());
  ops::rmsnorm_backward(1, n, w, x.data(), gain.data(), rstd.data(), dyg.data(), dx.data(),
                        dgain.data());
  const double h = 1e-6;
  for (int i = 0; i < n * w; ++i) {
    auto xp = x, xm = x;
    xp[i] += h;
    xm[i] -= h;
    BOOST_TEST(std::abs((loss(xp, gain) - loss(xm, gain)) / (2 * h) - dx[i]) < 1e-7);
  }
  for (int c = 0; c < w; ++c) {
    auto gp = gain, gm = gain;
    gp[c] += h;
    gm[c] -= h;
    BOOST_TEST(std::abs((loss(x, gp) - loss(x, gm)) / (2 * h) - dgain[c]) < 1e-7);
  }
}

BOOST_AUTO_TEST_CASE(cross_entropy_matches_naive) {
  const int rows = 3, vocab = 7;
  rng r(3);
  std::vector<float> logits(rows * vocab), d(rows * vocab);
  for (auto& v : logits) v = float(2 * r.normal());
  const std::uint8_t target[] = {1, 6, 0}, answer[] = {0, 1, 1};
  std::vector<double> row_loss;
  std::vector<std::uint8_t> row_correct;
  const auto t = ops::cross_entropy(1, rows, vocab, logits.data(), target, answer, d.data(), 0.5f,
                                    row_loss, row_correct);
  double want = 0;
  for (int i = 0; i < rows; ++i) {
    double z = 0;
    for (int v = 0; v < vocab; ++v) z += std::exp(double(logits[i * vocab + v]));
    want += std::log(z) - logits[i * vocab + target[i]];
    for (int v = 0; v < vocab; ++v) {
      const double p = std::exp(double(logits[i * vocab + v])) / z;
      BOOST_TEST(std::abs(d[i * vocab + v] - 0.5 * (p - (v == target[i]))) < 1e-6);
    }
  }
  BOOST_TEST(std::abs(t.loss_sum - want) < 1e-5);
  BOOST_TEST(t.answers == 2);
}

// The model's manual backward (embeddings, norms, fused [q | gate] projection, attention with
// sinks and gates, MLP, tied or untied head) and the balance gradient flowing through
// backward_args::drouter, in double, against central differences of CE + lambda * sum n CV^2.
BOOST_AUTO_TEST_CASE(model_gradient_matches_finite_differences) {
  struct variant {
    mechanism mech;
    int window;
    bool tied;
  };
  const variant variants[] = {
      {mechanism::vanilla, 0, true},        {mechanism::sink, 0, false},
      {mechanism::sink, 3, true},           {mechanism::gated, 0, true},
      {mechanism::gated_headwise, 0, true}, {mechanism::sink_gated, 0, true}};
  for (const variant& v : variants) {
    BOOST_TEST_CONTEXT(name_of(v.mech)
                       << ", window " << v.window << (v.tied ? ", tied" : ", untied")) {
      model_config mc;
      mc.mech = v.mech;
      mc.layers = 2;
      mc.heads = 2;
      mc.width = 8;
      mc.seq = 6;
      mc.window = v.window;
      mc.tied = v.tied;
      transformer<double> model(mc, device_kind::cpu, 1);
      model.init(11);
      rng noise(5);  // move gains and sinks off their initial constants
      for (const param_tensor& t : model.tensors())
        if (t.init_std == 0)
          for (std::size_t i = 0; i < t.size(); ++i)
            model.params[t.offset + i] += 0.3 * noise.normal();
      const dataset data = dataset::builtin(mc.seq, 2);
      sample_batch batch;
      rng data_rng(9);
      data.sample_train(data_rng, 2, batch);
      const sinkmoe::balance::importance_cv2 reg{.lambda = 3.0};

      const step_result at = compute_gradients(model, batch, reg);
      const std::vector<double> grad = model.grads;
      const sinkmoe::balance::importance_cv2 no_reg{.lambda = 0.0};
      compute_gradients(model, batch, no_reg);
      const std::vector<double> grad_ce = model.grads;
      BOOST_TEST(at.balance.loss > 1e-4, "the balance loss should matter: " << at.balance.loss);

      // Every sink logit and gate column, plus a fixed sample of everything else.
      std::vector<std::size_t> picks;
      rng pick(13);
      for (const param_tensor& t : model.tensors()) {
        const bool all = t.name.ends_with(".sinks");
        for (std::size_t i = 0; i < t.size(); ++i)
          if (all || pick.below(100) < 6) picks.push_back(t.offset + i);
      }
      double worst = 0, balance_effect = 0;
      for (const std::size_t i : picks) {
        const double p0 = model.params[i], h = 1e-6;
        model.params[i] = p0 + h;
        const double up = compute_gradients(model, batch, reg).total_loss();
        model.params[i] = p0 - h;
        const double down = compute_gradients(model, batch, reg).total_loss();
        model.params[i] = p0;
        const double fd = (up - down) / (2 * h);
        worst = std::max(worst, std::abs(fd - grad[i]) / std::max(1e-3, std::abs(fd)));
        balance_effect = std::max(balance_effect, std::abs(grad[i] - grad_ce[i]));
      }
      BOOST_TEST(worst < 1e-5, picks.size()
                                   << " parameters checked, worst relative error " << worst);
      BOOST_TEST(balance_effect > 1e-3,
                 "the balance gradient reaches the parameters: " << balance_effect);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(generated_recall_answers_are_determined_by_the_context) {
  rng r(21);
  std::vector<std::uint8_t> text(4000), answer(4000);
  generate_text(r, 4000, text.data(), answer.data());
  const std::string s(text.begin(), text.end());
  int answers = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (!answer[i]) continue;
    ++answers;
    BOOST_TEST_REQUIRE(std::isdigit(static_cast<unsigned char>(s[i])));
    const char key = s[i - 1];
    // The clause's context: back to the " | " that opens the queries, then to the clause start.
    const std::size_t bar = s.rfind('|', i);
    const std::size_t clause = s.rfind('.', bar);
    const std::size_t start = clause == std::string::npos ? 0 : clause + 1;
    const std::string context = s.substr(start, bar - start);
    const std::size_t at = context.find(key);
    BOOST_TEST_REQUIRE(at != std::string::npos);
    BOOST_TEST(context[at + 1] == s[i]);
  }
  BOOST_TEST(answers > 50);
  BOOST_TEST(s.find("that") != std::string::npos);  // grammar clauses too
}

BOOST_AUTO_TEST_CASE(utf8_validation) {
  const auto check = [](const std::string& s) {
    return first_invalid_utf8(reinterpret_cast<const std::uint8_t*>(s.data()), s.size());
  };
  BOOST_TEST(check("plain ascii") == -1);
  BOOST_TEST(check("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80") == -1);
  BOOST_TEST(check("ab\xFF") == 2);         // never valid
  BOOST_TEST(check("ab\xC3") == 2);         // cut short
  BOOST_TEST(check("\xC0\xAF") == 0);       // overlong
  BOOST_TEST(check("x\xED\xA0\x80") == 1);  // surrogate
}

// ---------------------------------------------------------------------------------------------
// Training, checkpoints, balancing
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(smoke_training_lowers_the_loss_and_writes_its_outputs) {
  const fs::path dir = scratch("smoke");
  train_config cfg = tiny_config();
  cfg.steps = 40;
  const dataset data = dataset::builtin(cfg.model.seq, 32);
  const train_result r = train(cfg, data, quiet_options(dir));
  BOOST_TEST_REQUIRE(r.train_loss.size() == 40u);
  double first = 0, last = 0;
  for (int i = 0; i < 5; ++i) {
    first += r.train_loss[i] / 5;
    last += r.train_loss[35 + i] / 5;
  }
  BOOST_TEST(first > 5.0);  // about ln 256 at the start
  BOOST_TEST(last < first - 1.5, "loss " << first << " -> " << last);
  BOOST_TEST(r.summary.val.loss < 4.0);
  for (const char* f :
       {"checkpoint.bin", "config.txt", "log.csv", "importance.csv", "heatmap.svg", "summary.md"})
    BOOST_TEST(fs::exists(dir / f), f);
  // importance.csv: a header, then layers x heads rows per step.
  std::ifstream in(dir / "importance.csv");
  int lines = 0;
  for (std::string line; std::getline(in, line);) ++lines;
  BOOST_TEST(lines == 1 + 40 * 2 * 4);
  // The SVG has one cell per layer and head.
  const std::string svg = slurp(dir / "heatmap.svg");
  std::size_t cells = 0;
  for (std::size_t at = svg.find("<title>layer"); at != std::string::npos;
       at = svg.find("<title>layer", at + 1))
    ++cells;
  BOOST_TEST(cells == 8u);
  // report re-evaluates the checkpoint to the same numbers.
  const run_summary rep = evaluate_run_dir(dir.string(), 1, 32);
  BOOST_TEST(rep.val.loss == r.summary.val.loss);
  BOOST_TEST(rep.val.balance.mean_cv == r.summary.val.balance.mean_cv);
}

BOOST_AUTO_TEST_CASE(checkpoint_resume_is_bit_exact) {
  train_config cfg = tiny_config(mechanism::sink_gated);
  cfg.steps = 14;
  cfg.lambda = 0.05;
  cfg.model.window = 8;
  const dataset data = dataset::builtin(cfg.model.seq, 16);

  const fs::path straight = scratch("straight"), split = scratch("split");
  const train_result whole = train(cfg, data, quiet_options(straight));

  run_options first = quiet_options(split);
  first.stop_after = 6;
  const train_result part = train(cfg, data, first);
  BOOST_TEST(!part.finished);
  const checkpoint_data ck = load_checkpoint((split / "checkpoint.bin").string(), "test");
  BOOST_TEST(ck.step == 6);
  run_options second = quiet_options(split);
  second.resume = &ck;
  second.threads = 2;  // the thread count must not change the numbers
  const train_result rest = train(cfg, data, second);
  BOOST_TEST(rest.finished);
  BOOST_TEST_REQUIRE(rest.params.size() == whole.params.size());
  BOOST_TEST(std::memcmp(rest.params.data(), whole.params.data(),
                         whole.params.size() * sizeof(float)) == 0,
             "parameters after 6 + 8 steps differ from 14 steps in one go");
  BOOST_TEST(slurp(split / "importance.csv") == slurp(straight / "importance.csv"));
  BOOST_TEST(rest.summary.val.loss == whole.summary.val.loss);
}

BOOST_AUTO_TEST_CASE(bad_checkpoints_are_refused) {
  const fs::path dir = scratch("badckpt");
  train_config cfg = tiny_config();
  cfg.steps = 2;
  const dataset data = dataset::builtin(cfg.model.seq, 8);
  train(cfg, data, quiet_options(dir));
  const std::string good = slurp(dir / "checkpoint.bin");
  BOOST_TEST_REQUIRE(load_checkpoint((dir / "checkpoint.bin").string(), "t").step == 2);

  const auto refused = [&](const std::string& bytes, const std::string& expect) {
    const fs::path p = dir / "bad.bin";
    write(p, bytes);
    try {
      load_checkpoint(p.string(), "--resume");
    } catch (const usage_error& e) {
      BOOST_TEST(std::string(e.what()).find(expect) != std::string::npos,
                 e.what() << " lacks '" << expect << "'");
      return;
    }
    BOOST_ERROR("accepted a checkpoint that should be refused (" << expect << ")");
  };
  std::string flipped = good;
  flipped[good.size() / 2] ^= 0x10;
  refused(flipped, "checksum mismatch");
  refused(good.substr(0, good.size() - 100), "truncated");
  refused(good.substr(0, 10), "shorter than the header");
  refused(good + "xyz", "trailing bytes");
  std::string magic = good;
  magic[0] = 'X';
  refused(magic, "bad magic");
  std::string version = good;
  version[8] = 2;  // version 2, header checksum recomputed so that the version check is reached
  const std::uint32_t crc = crc32(version.data(), 28);
  for (int i = 0; i < 4; ++i) version[28 + i] = char((crc >> (8 * i)) & 0xFF);
  refused(version, "format version 2");
  std::string header = good;
  header[20] ^= 0x01;  // payload size, header checksum not updated
  refused(header, "corrupt header");

  // Through the program: a corrupt or mismatched checkpoint exits with 2 and writes nothing.
  write(dir / "bad.bin", flipped);
  command_result r = run_exe(
      "train --resume '" + (dir / "bad.bin").string() + "' --out '" + (dir / "out1").string() + "'",
      dir);
  BOOST_TEST(r.code == 2);
  BOOST_TEST(!fs::exists(dir / "out1"));
  BOOST_TEST(r.err.find("checksum mismatch") != std::string::npos, r.err);
  r = run_exe("train --resume '" + (dir / "checkpoint.bin").string() + "' --heads 2 --out '" +
                  (dir / "out2").string() + "'",
              dir);
  BOOST_TEST(r.code == 2);
  BOOST_TEST(!fs::exists(dir / "out2"));
  BOOST_TEST(r.err.find("--heads 2 does not match the checkpoint") != std::string::npos, r.err);
  r = run_exe("train --resume '" + (dir / "checkpoint.bin").string() + "' --out '" +
                  (dir / "out3").string() + "'",
              dir);
  BOOST_TEST(r.code == 2);  // that run is complete
  BOOST_TEST(r.err.find("already complete") != std::string::npos, r.err);
}

BOOST_AUTO_TEST_CASE(balancing_lowers_the_importance_cv_and_the_balance_loss) {
  train_config base = tiny_config(mechanism::vanilla);
  base.steps = 40;
  const dataset data = dataset::builtin(base.model.seq, 32);
  train_config balanced = base;
  balanced.lambda = 0.5;
  const train_result a = train(base, data, quiet_options(scratch("lambda0")));
  const train_result b = train(balanced, data, quiet_options(scratch("lambda1")));
  const double cv_a = a.summary.val.balance.mean_cv, cv_b = b.summary.val.balance.mean_cv;
  const double loss_a = cv2_sum(a.summary.val.balance), loss_b = cv2_sum(b.summary.val.balance);
  BOOST_TEST(cv_b < 0.7 * cv_a, "mean importance CV " << cv_a << " (lambda 0) -> " << cv_b);
  BOOST_TEST(loss_b < 0.5 * loss_a, "sum n CV^2 " << loss_a << " (lambda 0) -> " << loss_b);
}

// ---------------------------------------------------------------------------------------------
// Bad input: one line naming the flag and the value, exit code 2, nothing written
// ---------------------------------------------------------------------------------------------

// tiny_lm study end to end on a tiny plan (vanilla, lambda {0, 0.1}, two seeds: four runs),
// interrupted twice (--stop-after, inside the first and the second run) and continued: the same
// report, run table and curves as the study run in one go.
BOOST_AUTO_TEST_CASE(study_runs_end_to_end_and_resumes_to_the_same_report) {
  const fs::path dir = scratch("study");
  const std::string plan =
      "study --mechanisms vanilla --lambdas 0,0.1 --shared 0 --seeds 1,2 --layers 1 --heads 2 "
      "--width 16 --seq 16 --batch 4 --steps 6 --val-seqs 8 --log-every 2 --threads 1";
  const fs::path whole = dir / "whole", split = dir / "split";
  const command_result once = run_exe(plan + " --out '" + whole.string() + "'", dir);
  BOOST_TEST_REQUIRE(once.code == 0, once.err);
  BOOST_TEST(once.out.find("tiny_lm study: done") != std::string::npos);
  const command_result first =
      run_exe(plan + " --stop-after 5 --out '" + split.string() + "'", dir);
  BOOST_TEST_REQUIRE(first.code == 0, first.err);
  BOOST_TEST(first.out.find("stopped") != std::string::npos);
  BOOST_TEST(!fs::exists(split / "study.md"));
  const command_result second =
      run_exe(plan + " --stop-after 4 --out '" + split.string() + "'", dir);
  BOOST_TEST_REQUIRE(second.code == 0, second.err);
  BOOST_TEST(second.out.find("resuming at step 5") != std::string::npos, second.out);
  BOOST_TEST(fs::exists(split / "runs" / "vanilla-lambda0-seed1" / "final.txt"));
  const command_result last = run_exe(plan + " --out '" + split.string() + "'", dir);
  BOOST_TEST_REQUIRE(last.code == 0, last.err);
  BOOST_TEST(last.out.find("resuming at step 3") != std::string::npos, last.out);
  for (const char* file : {"study.md", "study_runs.csv", "study_layers.csv", "cv.svg",
                           "effective_heads.svg", "dormant.svg", "first_token.svg", "heatmaps.svg"})
    BOOST_TEST(slurp(split / file) == slurp(whole / file), file << " differs after resuming");
  const std::string runs = slurp(whole / "study_runs.csv");
  BOOST_TEST(std::count(runs.begin(), runs.end(), '\n') == 5);  // header + 4 runs
  const std::string md = slurp(whole / "study.md");
  BOOST_TEST(md.find("| lambda = 0.1, shared 0 | mean ± std |") != std::string::npos, md);
  BOOST_TEST(slurp(whole / "cv.svg").find("<polyline") != std::string::npos);
  const std::string collapse = slurp(whole / "runs" / "vanilla-lambda0-seed2" / "collapse.csv");
  BOOST_TEST(std::count(collapse.begin(), collapse.end(), '\n') == 1 + 3);  // steps 2, 4, 6

  // The same folder with another plan: refused, nothing touched.
  const command_result other = run_exe(plan + " --lr 0.02 --out '" + whole.string() + "'", dir);
  BOOST_TEST(other.code == 2);
  BOOST_TEST(other.err.find("holds another study") != std::string::npos, other.err);
}

BOOST_AUTO_TEST_CASE(bad_input_exits_with_2_and_writes_nothing) {
  const fs::path dir = scratch("badinput");
  write(dir / "empty.txt", "");
  write(dir / "short.txt", std::string(100, 'a'));
  write(dir / "binary.txt", std::string("text then \xFF\xFE binary"));
  const fs::path out = dir / "out";
  const std::string o = " --out '" + out.string() + "'";
  struct bad_case {
    std::string args;
    std::string expect;  // in the one-line error
  };
  const bad_case cases[] = {
    {"train --data '" + (dir / "missing.txt").string() + "'" + o, "--data"},
    {"train --data '" + (dir / "empty.txt").string() + "'" + o, "empty"},
    {"train --data '" + (dir / "short.txt").string() + "' --seq 64" + o,
     "--seq 64 is above the data"},
    {"train --data '" + (dir / "binary.txt").string() + "'" + o, "not UTF-8"},
    {"train --heads 6 --width 64" + o, "--heads 6 does not divide --width 64"},
    {"train --mechanism flash" + o, "--mechanism 'flash'"},
    {"train --frobnicate 3" + o, "unknown flag --frobnicate"},
    {"train --steps abc" + o, "--steps 'abc'"},
    {"train --steps 0" + o, "--steps 0"},
    {"train --lambda -1" + o, "--lambda -1"},
    {"train --shared-heads 8" + o, "--shared-heads 8"},
    {"train --device cuda" + o, "--device cuda: the GPU backend"},
    {"compare --mechanism sink" + o, "--mechanism is not a flag of compare"},
    {"compare --lambda 0" + o, "--lambda 0"},
    {"compare --data-parallel" + o, "--data-parallel is not a flag of compare"},
    {"study --mechanism sink" + o, "study takes lists"},
    {"study --lambdas 0.1,0" + o, "--lambdas: the first value must be 0"},
    {"study --mechanisms vanilla,vanilla" + o, "listed twice"},
    {"study --shared 8" + o, "--shared 8"},
#if TINY_LM_HAS_MPI
    // One rank (MPI singleton init, no mpiexec): input errors still print one line.
    {"train --data-parallel --steps 0" + o, "--steps 0"},
    {"train --data-parallel --heads 6 --width 64" + o, "--heads 6 does not divide --width 64"},
#else
    {"train --data-parallel" + o, "this tiny_lm was built without MPI"},
#endif
    {"frobnicate" + o, "unknown mode"},
    {"report '" + (dir / "nowhere").string() + "'", "not a directory"},
  };
  for (const bad_case& c : cases) {
    BOOST_TEST_CONTEXT("tiny_lm " << c.args) {
      const command_result r = run_exe(c.args, dir);
      BOOST_TEST(r.code == 2);
      BOOST_TEST(!fs::exists(out));
      BOOST_TEST(std::count(r.err.begin(), r.err.end(), '\n') == 1, "stderr: " << r.err);
      BOOST_TEST(r.err.find(c.expect) != std::string::npos, "stderr: " << r.err);
      BOOST_TEST(r.out.empty(), "stdout: " << r.out);
    }
  }
  const command_result help = run_exe("--help", dir);
  BOOST_TEST(help.code == 0);
  BOOST_TEST(help.out.find("NOT available yet") != std::string::npos);
}
