// The tiny_lm command line (help text below).
#include "tiny_lm/cli.hpp"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sinkmoe/version.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tiny_lm/attention_backend.hpp"
#include "tiny_lm/checkpoint.hpp"
#include "tiny_lm/config.hpp"
#include "tiny_lm/data_parallel.hpp"
#include "tiny_lm/report.hpp"
#include "tiny_lm/study.hpp"
#include "tiny_lm/trainer.hpp"

namespace tiny_lm {

namespace fs = std::filesystem;

namespace {

constexpr const char* k_help =
    R"(tiny_lm: a tiny decoder-only language model trained on the CPU with sinkmoe attention,
to show head collapse and sink-aware head balancing (Fu et al. 2026, arXiv:2602.01203).

Usage:
  tiny_lm compare [flags]          six runs {vanilla, sink, gated} x {lambda = 0, lambda > 0},
                                   same seed and budget, then the comparison table and heatmaps
  tiny_lm train [flags]            train one configuration
  tiny_lm study [flags]            a resumable plan: mechanisms x lambdas x shared heads x seeds,
                                   then tables over seeds, paired comparisons, collapse curves
  tiny_lm report DIR               re-evaluate a saved run (or a compare folder) from its
                                   checkpoints and print its table and heatmap
  tiny_lm --help

Model and attention:
  --mechanism M        vanilla | sink | gated | gated-headwise | sink-gated   (train; default sink)
                         vanilla         softmax attention, the first token (BOS) is the sink;
                                         router G = 1 - P[t, BOS]
                         sink            GPT-OSS: a learned sink logit per head; G = 1 - sink mass
                         gated           Qwen3-Next: elementwise sigmoid output gate read from an
                                         interleaved [q | gate] projection; G = mean gate
                         gated-headwise  one sigmoid gate per head; G = the gate
                         sink-gated      learned sink and elementwise gate;
                                         G = mean gate * (1 - sink mass) (route::product)
                       compare always runs vanilla, sink and gated.
  --layers N           transformer layers (default 2)
  --heads N            attention heads per layer; must divide --width (default 8)
  --width N            model width (default 64; head dim = width / heads)
  --seq N              tokens per sequence, BOS included (default 64)
  --window N           sliding window of N keys on even layers, full causal on odd layers
                       (GPT-OSS layout); 0 = causal everywhere (default 0)
  --untied             separate output head instead of the tied token embedding
  --no-token-shift     no previous-token embedding. By default x_t also gets an embedding of
                       token t-1 (a "token shift"), so that one attention layer can find "the
                       position after key X" by content; without it a model this small needs a
                       previous-token head first, which takes far longer than the demo budget.

Training:
  --steps N            optimiser steps (default 300)
  --batch N            sequences per step (default 16)
  --lr X               peak learning rate, AdamW, warmup then cosine decay to lr/10 (default 0.01)
  --warmup N           warmup steps (default steps / 20)
  --lambda X           weight of the balancing loss lambda * sum_l n_l CV_l^2 over per-head mean G
                       (train: default 0; compare: the lambda of the balanced runs, default 0.1)
  --shared-heads M     per layer, the M most important heads are left out of the loss (default 0)
  --seed N             initialisation and data order (default 1)
  --data PATH          a UTF-8 text file (byte-level tokens; the last 10% is validation);
                       default: the built-in generated corpus (below)
  --val-seqs N         validation sequences (default 256; the final evaluation uses all of them,
                       the log lines the first 64)

Study (tiny_lm study; model and training flags as above, for every run):
  --mechanisms A,B     mechanisms to study (default vanilla,sink,gated)
  --lambdas 0,X,Y      balancing weights; 0 (the baseline) first (default 0,0.01,0.1)
  --shared M,N         shared heads of the balanced runs (default 0,1)
  --seeds S,T,U        seeds, the same for every configuration (default 1,2,3)
  Runs train in DIR/runs/NAME with checkpoints (--checkpoint-every, default steps / 10); the same
  command again skips finished runs and resumes an interrupted one (bit-identically). With
  --stop-after N a call stops after N optimiser steps in total (to spread a study over sessions).
  The finished study writes DIR/study.md (tables, paired comparisons), study_runs.csv,
  study_layers.csv, cv.svg, effective_heads.svg, dormant.svg, first_token.svg, heatmaps.svg.

Outputs and execution:
  --out DIR            run folder (train: tiny_lm_run, compare: tiny_lm_compare, study:
                       tiny_lm_study)
  --log-every N        a log line (loss, validation loss, mean CV, effective heads) every N steps
                       (default steps / 10)
  --checkpoint-every N write DIR/checkpoint.bin every N steps (it is always written at the end)
  --resume PATH        continue a run from a checkpoint (train). Flags left out are taken from the
                       checkpoint; flags given must match it. The result is bit-identical to an
                       uninterrupted run.
  --stop-after N       stop after step N (train; the schedule still spans --steps), to resume later
  --threads N          CPU threads; 0 = all cores. Default: all cores, or 1 when the machine is
                       already busy (load average >= cores - 0.5), because OpenMP threads that wait
                       for a descheduled peer make a run several times slower. Results do not
                       depend on the thread count.
  --device D           cpu (default) | cuda. The GPU path (sinkmoe's fused CUDA kernels for the
                       attention, cuBLASLt for the linear layers) is NOT available yet: --device
                       cuda is an error, there is no silent fallback to the CPU.
  --data-parallel      train only, under MPI: mpirun -np N tiny_lm train --data-parallel [flags].
                       Every rank draws the same batch and trains on its slice of the rows (the
                       first --batch % N ranks get one more; each needs at least one); losses and
                       gradients are summed over the ranks, head balancing uses the importance of
                       the whole batch: the same run as one process. Rank 0 prints and writes.
                       Default threads per rank: cores / ranks on the node. Needs a tiny_lm built
                       with MPI.

What a run writes (DIR):
  checkpoint.bin       parameters, AdamW state, step, RNG state, config (versioned, CRC-32,
                       written atomically); corrupt or mismatched files are refused
  config.txt           the config as key=value lines
  log.csv              one row per log step: loss, balance loss, validation loss/accuracy,
                       mean CV, effective heads, tokens/s
  importance.csv       step,layer,head,importance for every training step (collapse dynamics)
  collapse.csv         per log step and layer, on validation: CV, effective heads, dormant share
                       below 0.1 and 0.2, mean first-token attention, share of heads above 0.3 of
                       it (Gu et al.'s sink heads); val_importance.csv the per-head importance
  heatmap.svg          per-layer x per-head importance on the validation set
  summary.md           the final metrics, per-layer CV / effective heads / dormant share, speed
compare also writes DIR/compare.md (the tables) and DIR/heatmap.svg (all six runs).

The built-in corpus (no --data): every sequence starts with BOS (byte 0xFF) and holds clauses
joined by spaces, half of each kind:
  recall   "K4 X7 M1 Q9 B2 | X7 K4 B2 ."  4-7 key-value pairs (distinct capital letters, random
           digits), then 2-4 of the keys again: the digit after a queried key is determined by the
           context and scored as "recall accuracy" (it needs a previous-token head and an
           induction head);
  grammar  "the old cats that see a dog chase some bird ."  a small stochastic grammar whose verbs
           agree in number with the subject across an optional relative clause.
The validation set is fixed (its own seed) and the same for every run.

Metrics: importance of head h in layer l = mean router value G over counted validation tokens;
CV = std / mean of the importances of a layer (the paper's imbalance); effective heads =
(sum imp)^2 / sum imp^2; dormant = share of heads with importance below 0.1.

Exit codes: 0 success; 1 a run failed; 2 bad input (one line names the flag and value; nothing
is written).
)";

/// The flags each mode accepts; "value" flags take one argument.
struct flag_spec {
  const char* name;
  bool value;
  bool train, compare, report, study;
};
constexpr flag_spec k_flags[] = {
    {"--mechanism", true, true, false, false, false},
    {"--layers", true, true, true, false, true},
    {"--heads", true, true, true, false, true},
    {"--width", true, true, true, false, true},
    {"--seq", true, true, true, false, true},
    {"--window", true, true, true, false, true},
    {"--untied", false, true, true, false, true},
    {"--no-token-shift", false, true, true, false, true},
    {"--steps", true, true, true, false, true},
    {"--batch", true, true, true, false, true},
    {"--lr", true, true, true, false, true},
    {"--warmup", true, true, true, false, true},
    {"--lambda", true, true, true, false, false},
    {"--shared-heads", true, true, true, false, false},
    {"--seed", true, true, true, false, false},
    {"--data", true, true, true, false, true},
    {"--val-seqs", true, true, true, true, true},
    {"--out", true, true, true, true, true},
    {"--log-every", true, true, true, false, true},
    {"--checkpoint-every", true, true, true, false, true},
    {"--resume", true, true, false, false, false},
    {"--stop-after", true, true, false, false, true},
    {"--threads", true, true, true, true, true},
    {"--device", true, true, true, true, true},
    {"--data-parallel", false, true, false, false, false},
    {"--mechanisms", true, false, false, false, true},
    {"--lambdas", true, false, false, false, true},
    {"--shared", true, false, false, false, true},
    {"--seeds", true, false, false, false, true},
};

/// Flags that set config fields (their config key is the name without "--").
const std::set<std::string> k_config_flags = {
    "--mechanism", "--layers",         "--heads", "--width", "--seq", "--window",
    "--untied",    "--no-token-shift", "--steps", "--batch", "--lr",  "--warmup",
    "--lambda",    "--shared-heads",   "--seed",  "--data"};

struct parsed_args {
  std::string mode;
  std::map<std::string, std::string> values;  ///< flag -> value ("1" for switches)
  std::vector<std::string> positional;
  [[nodiscard]] bool has(const std::string& flag) const { return values.count(flag) != 0; }
};

parsed_args parse_args(int argc, const char* const* argv) {
  parsed_args a;
  a.mode = argv[1];
  for (int i = 2; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      a.positional.push_back(arg);
      continue;
    }
    std::string value;
    bool inline_value = false;
    if (const auto eq = arg.find('='); eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      inline_value = true;
    }
    const flag_spec* spec = nullptr;
    for (const flag_spec& f : k_flags)
      if (arg == f.name) spec = &f;
    if (!spec) throw usage_error("unknown flag " + arg + " (see tiny_lm --help)");
    const bool allowed = a.mode == "train"     ? spec->train
                         : a.mode == "compare" ? spec->compare
                         : a.mode == "study"   ? spec->study
                                               : spec->report;
    if (!allowed)
      throw usage_error(arg + " is not a flag of " + a.mode +
                        (arg == "--mechanism" && a.mode == "compare"
                             ? " (compare always runs vanilla, sink and gated)"
                         : a.mode == "study" && (arg == "--mechanism" || arg == "--lambda" ||
                                                 arg == "--shared-heads" || arg == "--seed")
                             ? " (study takes lists: --mechanisms, --lambdas, --shared, --seeds)"
                             : ""));
    if (a.has(arg)) throw usage_error(arg + " is given twice");
    if (spec->value) {
      if (!inline_value) {
        if (i + 1 >= argc) throw usage_error(arg + " needs a value");
        value = argv[++i];
      }
      a.values[arg] = value;
    } else {
      if (inline_value) throw usage_error(arg + " takes no value (got '" + value + "')");
      a.values[arg] = "1";
    }
  }
  return a;
}

long long parse_integer(const std::string& flag, const std::string& text, long long lo,
                        long long hi) {
  long long v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty())
    throw usage_error(flag + " '" + text + "': not an integer");
  if (v < lo || v > hi)
    throw usage_error(flag + " " + text + ": must be in [" + std::to_string(lo) + ", " +
                      std::to_string(hi) + "]");
  return v;
}

double parse_real(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || end != text.c_str() + text.size() || !std::isfinite(v))
    throw usage_error(flag + " '" + text + "': not a number");
  return v;
}

/// The config from defaults and flags.
train_config config_from_args(const parsed_args& a) {
  train_config c;
  if (a.mode == "compare") c.lambda = k_compare_lambda;
  constexpr long long big = 1 << 20;
  for (const auto& [flag, value] : a.values) {
    if (flag == "--mechanism") {
      const auto m = parse_mechanism(value);
      if (!m)
        throw usage_error("--mechanism '" + value +
                          "': unknown (vanilla, sink, gated, gated-headwise or sink-gated)");
      c.model.mech = *m;
    } else if (flag == "--layers") {
      c.model.layers = int(parse_integer(flag, value, 1, 64));
    } else if (flag == "--heads") {
      c.model.heads = int(parse_integer(flag, value, 1, 1024));
    } else if (flag == "--width") {
      c.model.width = int(parse_integer(flag, value, 1, 8192));
    } else if (flag == "--seq") {
      c.model.seq = int(parse_integer(flag, value, 2, big));
    } else if (flag == "--window") {
      c.model.window = int(parse_integer(flag, value, 0, big));
    } else if (flag == "--untied") {
      c.model.tied = false;
    } else if (flag == "--no-token-shift") {
      c.model.token_shift = false;
    } else if (flag == "--steps") {
      c.steps = int(parse_integer(flag, value, 1, 100'000'000));
    } else if (flag == "--batch") {
      c.batch = int(parse_integer(flag, value, 1, big));
    } else if (flag == "--lr") {
      c.lr = parse_real(flag, value);
      if (!(c.lr > 0)) throw usage_error("--lr " + value + ": must be > 0");
    } else if (flag == "--warmup") {
      c.warmup = int(parse_integer(flag, value, 0, 100'000'000));
    } else if (flag == "--lambda") {
      c.lambda = parse_real(flag, value);
      if (!(c.lambda >= 0)) throw usage_error("--lambda " + value + ": must be >= 0");
      if (a.mode == "compare" && !(c.lambda > 0))
        throw usage_error("--lambda " + value + ": compare needs lambda > 0 for its balanced runs");
    } else if (flag == "--shared-heads") {
      c.shared_heads = int(parse_integer(flag, value, 0, 1024));
    } else if (flag == "--seed") {
      c.seed = static_cast<std::uint64_t>(
          parse_integer(flag, value, 0, std::numeric_limits<long long>::max()));
    } else if (flag == "--data") {
      if (value.empty()) throw usage_error("--data '': empty path");
      if (value.find('\n') != std::string::npos) throw usage_error("--data: path holds a newline");
      c.data_path = value;
    }
  }
  validate_config(c);
  return c;
}

device_kind parse_device(const parsed_args& a) {
  if (!a.has("--device")) return device_kind::cpu;
  const std::string& v = a.values.at("--device");
  if (v == "cpu") return device_kind::cpu;
  if (v == "cuda" || v == "gpu") {
    require_device(device_kind::cuda);  // throws: not available yet
    return device_kind::cuda;
  }
  throw usage_error("--device '" + v + "': unknown (cpu; cuda is not available yet)");
}

bool use_color() {
  const char* term = std::getenv("TERM");
  return ::isatty(STDOUT_FILENO) && std::getenv("NO_COLOR") == nullptr &&
         !(term && std::strcmp(term, "dumb") == 0);
}

/// --threads left out: all cores (shared by the `local_ranks` data-parallel ranks of this node),
/// unless OMP_NUM_THREADS decides or the machine is already busy.
int auto_threads(int local_ranks = 1, bool print = true) {
  if (std::getenv("OMP_NUM_THREADS") != nullptr) return 0;
  const unsigned cores = std::thread::hardware_concurrency();
  double load = 0;
  if (cores > 1 && ::getloadavg(&load, 1) == 1 && load >= double(cores) - 0.5) {
    if (print)
      std::printf(
          "note: the machine is busy (load average %.1f on %u cores): running on 1 thread "
          "(--threads N overrides)\n",
          load, cores);
    return 1;
  }
  if (local_ranks > 1) return std::max(1, int(cores) / local_ranks);
  return 0;
}

run_options options_from_args(const parsed_args& a, const char* default_out) {
  run_options o;
  o.out_dir = a.has("--out") ? a.values.at("--out") : default_out;
  if (o.out_dir.empty()) throw usage_error("--out '': empty path");
  if (a.has("--threads"))
    o.threads = int(parse_integer("--threads", a.values.at("--threads"), 0, 4096));
  if (a.has("--log-every"))
    o.log_every = int(parse_integer("--log-every", a.values.at("--log-every"), 1, 100'000'000));
  if (a.has("--checkpoint-every"))
    o.checkpoint_every =
        int(parse_integer("--checkpoint-every", a.values.at("--checkpoint-every"), 0, 100'000'000));
  if (a.has("--stop-after"))
    o.stop_after = int(parse_integer("--stop-after", a.values.at("--stop-after"), 1, 100'000'000));
  o.device = parse_device(a);
  o.color = use_color();
  return o;
}

/// Resolves the automatic thread count once all input has been checked (the note it may print
/// must not precede a usage error).
void resolve_threads(const parsed_args& a, run_options& o, const data_parallel* dp = nullptr) {
  if (!a.has("--threads"))
    o.threads = dp ? auto_threads(dp->local_ranks(), dp->rank() == 0) : auto_threads();
}

int val_sequences(const parsed_args& a) {
  return a.has("--val-seqs")
             ? int(parse_integer("--val-seqs", a.values.at("--val-seqs"), 1, 1 << 20))
             : k_default_val_sequences;
}

/// An existing path that is not a directory cannot be a run folder.
void check_out_dir(const std::string& dir) {
  if (fs::exists(dir) && !fs::is_directory(dir))
    throw usage_error("--out " + dir + ": exists and is not a directory");
}

// ---- Modes ----

int run_train(const parsed_args& a, data_parallel* dp) {
  train_config cfg;
  checkpoint_data ck;
  run_options opts;
  dataset data;
  // Data parallel: every rank checks its input, then they agree (one collective) to go on.
  on_every_rank(dp, [&] {
    if (!a.positional.empty()) throw usage_error("unexpected argument '" + a.positional[0] + "'");
    cfg = config_from_args(a);
    opts = options_from_args(a, "tiny_lm_run");
    if (a.has("--resume")) {
      const std::string path = a.values.at("--resume");
      ck = load_checkpoint(path, "--resume");
      // Flags left out come from the checkpoint; flags given must agree with it.
      const auto given = config_fields(cfg), saved = config_fields(ck.config);
      for (const std::string& flag : k_config_flags) {
        if (!a.has(flag)) continue;
        const std::string key = flag.substr(2);
        if (given.at(key) != saved.at(key))
          throw usage_error(
              flag +
              (a.values.at(flag) == "1" && (flag == "--untied" || flag == "--no-token-shift")
                   ? std::string("")
                   : " " + a.values.at(flag)) +
              " does not match the checkpoint " + path + " (" + key + " = " + saved.at(key) +
              "); leave the flag out to resume as saved");
      }
      cfg = ck.config;
      if (!a.has("--out")) opts.out_dir = fs::path(path).parent_path().string();
      if (opts.out_dir.empty()) opts.out_dir = ".";
      if (ck.step >= cfg.steps)
        throw usage_error("--resume " + path + ": the run is already complete (step " +
                          std::to_string(ck.step) + " of " + std::to_string(cfg.steps) + ")");
      opts.resume = &ck;
    }
    if (opts.stop_after > cfg.steps)
      throw usage_error("--stop-after " + std::to_string(opts.stop_after) + ": above --steps " +
                        std::to_string(cfg.steps));
    check_out_dir(opts.out_dir);
    data = load_dataset(cfg, val_sequences(a));
    require_device(opts.device);
  });
  if (dp) {
    opts.parallel = dp;
    opts.print = dp->rank() == 0;
    // mpirun gives the ranks a pseudo-terminal whatever its own output is: plain log lines.
    opts.color = false;
    opts.plain_log = true;
  }
  resolve_threads(a, opts, dp);
  train(cfg, data, opts);
  return k_exit_ok;
}

int run_train(const parsed_args& a) {
  if (!a.has("--data-parallel")) return run_train(a, nullptr);
  const std::unique_ptr<data_parallel> dp = open_data_parallel();  // usage error without MPI
  // A failure every rank meets alike (input checks end in a collective): one rank prints why,
  // then all wait for each other before they exit. mpirun ends the job at the first non-zero
  // exit, so a silent rank that left at once could get the printing rank killed mid-message.
  const auto end_together = [&](int code, const char* kind, const char* message) {
    if (message) {
      std::fprintf(stderr, "tiny_lm: %s%s\n", kind, message);  // as main() prints them
      std::fflush(stderr);
    }
    dp->barrier();
    return code;
  };
  try {
    return run_train(a, dp.get());
  } catch (const rank_exit& e) {
    return end_together(e.code, "", nullptr);  // another rank prints why
  } catch (const usage_error& e) {
    return end_together(k_exit_usage, "", e.what());
  } catch (const collective_failure& e) {
    return end_together(k_exit_failure, "error: ", e.what());
  } catch (const std::exception& e) {
    if (dp->ranks() == 1) throw;
    // A failure of this rank alone (an I/O error on rank 0, say): the others may be waiting
    // for it in a collective, so end the whole job.
    std::fprintf(stderr, "tiny_lm: error on rank %d of %d: %s (ending all ranks)\n", dp->rank(),
                 dp->ranks(), e.what());
    std::fflush(stderr);
    dp->abort(k_exit_failure);
  }
  return k_exit_failure;  // not reached: abort() does not return
}

constexpr mechanism k_compare_mechanisms[] = {mechanism::vanilla, mechanism::sink,
                                              mechanism::gated};

void print_compare(const std::vector<std::pair<run_summary, run_summary>>& pairs,
                   const std::string& dir, bool color) {
  std::ostringstream os;
  os << "\n## Head collapse and sink-aware balancing\n\n" << compare_markdown(pairs) << "\n";
  os << "Head importance (validation; left: lambda = 0, right: lambda = "
     << pairs[0].second.config.lambda << "):\n";
  for (const auto& [base, bal] : pairs) {
    os << "\n"
       << title_of(base.config.model.mech) << ", lambda = 0:\n"
       << terminal_heatmap(base.val.balance, color);
    os << title_of(bal.config.model.mech) << ", lambda = " << bal.config.lambda << ":\n"
       << terminal_heatmap(bal.val.balance, color);
  }
  os << "\nTable: " << (fs::path(dir) / "compare.md").string()
     << "\nHeatmap: " << (fs::path(dir) / "heatmap.svg").string() << "\n";
  std::fputs(os.str().c_str(), stdout);
  std::fflush(stdout);
}

void write_compare(const std::vector<std::pair<run_summary, run_summary>>& pairs,
                   const std::string& dir) {
  std::vector<heatmap_panel> panels;
  for (const auto& [base, bal] : pairs) {
    panels.push_back(
        {std::string(title_of(base.config.model.mech)) + ", lambda = 0", base.val.balance});
    std::ostringstream t;
    t << title_of(bal.config.model.mech) << ", lambda = " << bal.config.lambda;
    panels.push_back({t.str(), bal.val.balance});
  }
  const train_config& cfg = pairs[0].first.config;
  write_file_atomic(
      (fs::path(dir) / "compare.md").string(),
      "# tiny_lm: head collapse and sink-aware balancing\n\n" + compare_markdown(pairs));
  write_file_atomic((fs::path(dir) / "heatmap.svg").string(),
                    heatmap_svg(panels, 2, "Head importance: lambda = 0 (left) vs balanced (right)",
                                describe_shape(cfg)));
  std::string manifest;
  for (const auto& [base, bal] : pairs)
    manifest += fs::path(base.dir).filename().string() + "\n" +
                fs::path(bal.dir).filename().string() + "\n";
  write_file_atomic((fs::path(dir) / "runs.txt").string(), manifest);
}

int run_compare(const parsed_args& a) {
  if (!a.positional.empty()) throw usage_error("unexpected argument '" + a.positional[0] + "'");
  const train_config base = config_from_args(a);
  run_options opts = options_from_args(a, "tiny_lm_compare");
  check_out_dir(opts.out_dir);
  const dataset data = load_dataset(base, val_sequences(a));
  std::vector<train_config> configs;
  for (const mechanism m : k_compare_mechanisms)
    for (const double lambda : {0.0, base.lambda}) {
      train_config c = base;
      c.model.mech = m;
      c.lambda = lambda;
      validate_config(c);
      configs.push_back(c);
    }
  resolve_threads(a, opts);
  const bool tty = ::isatty(STDOUT_FILENO);
  std::printf(
      "tiny_lm compare: {vanilla, sink, gated} x {lambda = 0, lambda = %g}; %s\n"
      "data: %s; CPU backend, %s threads; output: %s\n",
      base.lambda, describe_shape(base).c_str(), data.describe().c_str(),
      opts.threads > 0 ? std::to_string(opts.threads).c_str() : "all", opts.out_dir.c_str());
  std::fflush(stdout);
  progress_bar bar(tty);
  bar.start(std::int64_t(configs.size()) * base.steps, "steps");
  std::vector<std::pair<run_summary, run_summary>> pairs;
  for (std::size_t i = 0; i < configs.size(); ++i) {
    const train_config& c = configs[i];
    run_options o = opts;
    o.out_dir = (fs::path(opts.out_dir) /
                 (std::string(name_of(c.model.mech)) + (c.lambda > 0 ? "-balanced" : "-base")))
                    .string();
    o.progress = &bar;
    o.progress_offset = std::int64_t(i) * base.steps;
    std::ostringstream label;
    label << name_of(c.model.mech) << ", lambda = " << c.lambda;
    o.label = label.str();
    o.print = true;
    if (!tty) {
      std::printf("run %zu/%zu: %s\n", i + 1, configs.size(), o.label.c_str());
      std::fflush(stdout);
    }
    const train_result r = train(c, data, o);
    if (c.lambda > 0)
      pairs.back().second = r.summary;
    else
      pairs.push_back({r.summary, {}});
  }
  bar.finish();
  write_compare(pairs, opts.out_dir);
  print_compare(pairs, opts.out_dir, opts.color);
  return k_exit_ok;
}

/// A comma-separated list of a flag's values.
std::vector<std::string> split_list(const std::string& flag, const std::string& text) {
  std::vector<std::string> items;
  std::istringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    if (item.empty()) throw usage_error(flag + " '" + text + "': an empty item");
    items.push_back(item);
  }
  if (items.empty()) throw usage_error(flag + " '': no values");
  return items;
}

study_plan plan_from_args(const parsed_args& a) {
  study_plan plan;
  plan.base = config_from_args(a);
  const std::string mechanisms =
      a.has("--mechanisms") ? a.values.at("--mechanisms") : "vanilla,sink,gated";
  for (const std::string& m : split_list("--mechanisms", mechanisms)) {
    const auto parsed = parse_mechanism(m);
    if (!parsed) throw usage_error("--mechanisms: unknown mechanism '" + m + "'");
    if (std::find(plan.mechanisms.begin(), plan.mechanisms.end(), *parsed) != plan.mechanisms.end())
      throw usage_error("--mechanisms: '" + m + "' is listed twice");
    plan.mechanisms.push_back(*parsed);
  }
  for (const std::string& l :
       split_list("--lambdas", a.has("--lambdas") ? a.values.at("--lambdas") : "0,0.01,0.1")) {
    const double lambda = parse_real("--lambdas", l);
    if (!(lambda >= 0)) throw usage_error("--lambdas " + l + ": must be >= 0");
    plan.lambdas.push_back(lambda);
  }
  if (plan.lambdas.front() != 0 || std::count(plan.lambdas.begin(), plan.lambdas.end(), 0.0) != 1)
    throw usage_error("--lambdas: the first value must be 0 (the baseline), and only the first");
  if (!std::is_sorted(plan.lambdas.begin(), plan.lambdas.end()) ||
      std::adjacent_find(plan.lambdas.begin(), plan.lambdas.end()) != plan.lambdas.end())
    throw usage_error("--lambdas: values must increase");
  for (const std::string& m :
       split_list("--shared", a.has("--shared") ? a.values.at("--shared") : "0,1")) {
    const int shared = int(parse_integer("--shared", m, 0, plan.base.model.heads - 1));
    if (!plan.shared_heads.empty() && shared <= plan.shared_heads.back())
      throw usage_error("--shared: values must increase");
    plan.shared_heads.push_back(shared);
  }
  for (const std::string& s :
       split_list("--seeds", a.has("--seeds") ? a.values.at("--seeds") : "1,2,3")) {
    const auto seed = static_cast<std::uint64_t>(
        parse_integer("--seeds", s, 0, std::numeric_limits<long long>::max()));
    if (std::find(plan.seeds.begin(), plan.seeds.end(), seed) != plan.seeds.end())
      throw usage_error("--seeds: " + s + " is listed twice");
    plan.seeds.push_back(seed);
  }
  for (const study_run& run : plan_runs(plan)) validate_config(run.config);
  return plan;
}

int run_study(const parsed_args& a) {
  if (!a.positional.empty()) throw usage_error("unexpected argument '" + a.positional[0] + "'");
  const study_plan plan = plan_from_args(a);
  study_options opts;
  opts.train = options_from_args(a, "tiny_lm_study");
  opts.dir = opts.train.out_dir;
  opts.stop_after = opts.train.stop_after;
  opts.train.stop_after = 0;
  opts.val_sequences = val_sequences(a);
  check_out_dir(opts.dir);
  const dataset data = load_dataset(plan.base, opts.val_sequences);
  resolve_threads(a, opts.train);
  opts.train.plain_log = !::isatty(STDOUT_FILENO);
  const std::size_t runs = plan_runs(plan).size();
  std::printf(
      "tiny_lm study: %zu runs (%zu mechanisms x %zu seeds x lambda/shared); %s; data: %s; "
      "output: %s\n",
      runs, plan.mechanisms.size(), plan.seeds.size(), describe_model(plan.base).c_str(),
      data.describe().c_str(), opts.dir.c_str());
  std::fflush(stdout);
  if (!tiny_lm::run_study(plan, data, opts)) {
    std::printf("tiny_lm study: stopped (--stop-after); run the same command again to continue\n");
    return k_exit_ok;
  }
  std::ifstream report(fs::path(opts.dir) / "study.md");
  std::printf("tiny_lm study: done\n\n%s\nReport: %s\n",
              std::string(std::istreambuf_iterator<char>(report), {}).c_str(),
              (fs::path(opts.dir) / "study.md").string().c_str());
  return k_exit_ok;
}

int run_report(const parsed_args& a) {
  std::string dir = a.has("--out") ? a.values.at("--out") : "";
  if (!a.positional.empty()) {
    if (!dir.empty() || a.positional.size() > 1)
      throw usage_error("report takes one run folder (got '" + a.positional.back() + "' too)");
    dir = a.positional[0];
  }
  if (dir.empty()) throw usage_error("report needs a run folder: tiny_lm report DIR");
  if (!fs::is_directory(dir)) throw usage_error("report " + dir + ": not a directory");
  run_options opts = options_from_args(a, dir.c_str());
  const int vals = val_sequences(a);
  resolve_threads(a, opts);
  const fs::path manifest = fs::path(dir) / "runs.txt";
  if (fs::exists(manifest)) {
    std::ifstream in(manifest);
    std::vector<std::string> runs;
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) runs.push_back(line);
    if (runs.empty() || runs.size() % 2 != 0)
      throw usage_error("report " + dir + ": runs.txt is malformed");
    std::vector<std::pair<run_summary, run_summary>> pairs;
    for (std::size_t i = 0; i < runs.size(); i += 2) {
      std::printf("evaluating %s and %s ...\n", runs[i].c_str(), runs[i + 1].c_str());
      std::fflush(stdout);
      pairs.push_back(
          {evaluate_run_dir((fs::path(dir) / runs[i]).string(), opts.threads, vals),
           evaluate_run_dir((fs::path(dir) / runs[i + 1]).string(), opts.threads, vals)});
    }
    write_compare(pairs, dir);
    print_compare(pairs, dir, opts.color);
    return k_exit_ok;
  }
  const run_summary s = evaluate_run_dir(dir, opts.threads, vals);
  write_file_atomic((fs::path(dir) / "summary.md").string(), run_markdown(s));
  write_file_atomic((fs::path(dir) / "heatmap.svg").string(),
                    heatmap_svg({{s.label, s.val.balance}}, 1,
                                "tiny_lm head importance: " + s.label, describe_shape(s.config)));
  std::printf("%s\nHead importance (mean G over validation tokens):\n%s\nHeatmap: %s\n",
              run_markdown(s).c_str(), terminal_heatmap(s.val.balance, opts.color).c_str(),
              (fs::path(dir) / "heatmap.svg").string().c_str());
  return k_exit_ok;
}

}  // namespace

int cli_main(int argc, const char* const* argv) {
  try {
    if (argc < 2) {
      std::fputs(
          "usage: tiny_lm compare|train|study|report [flags]   (tiny_lm --help for details)\n",
          stderr);
      return k_exit_usage;
    }
    const std::string mode = argv[1];
    if (mode == "--help" || mode == "-h" || mode == "help") {
      std::fputs(k_help, stdout);
      return k_exit_ok;
    }
    if (mode == "--version") {
      std::printf("tiny_lm (sinkmoe %s)\n", sinkmoe::version_string);
      return k_exit_ok;
    }
    for (int i = 2; i < argc; ++i)
      if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
        std::fputs(k_help, stdout);
        return k_exit_ok;
      }
    if (mode != "train" && mode != "compare" && mode != "report" && mode != "study")
      throw usage_error("unknown mode '" + mode +
                        "' (compare, train, study or report; see tiny_lm --help)");
    const parsed_args args = parse_args(argc, argv);
    if (mode == "train") return run_train(args);
    if (mode == "compare") return run_compare(args);
    if (mode == "study") return run_study(args);
    return run_report(args);
  } catch (const rank_exit& e) {
    return e.code;  // data parallel: another rank printed the reason
  } catch (const usage_error& e) {
    std::fprintf(stderr, "tiny_lm: %s\n", e.what());
    return k_exit_usage;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tiny_lm: error: %s\n", e.what());
    return k_exit_failure;
  }
}

}  // namespace tiny_lm
