#pragma once
// tiny_lm study: a resumable experiment plan over mechanisms x lambda x shared heads x seeds,
// and its report (tables over seeds, paired comparisons, collapse curves and heatmaps).
//
// Every run trains in its own folder (DIR/runs/NAME) with checkpoints; a finished run leaves
// final.txt with its validation metrics. Running the same command again skips finished runs,
// resumes an interrupted one from its checkpoint (bit-identically, as train --resume), and trains
// the rest; the report is rebuilt from the run folders once every run is finished. DIR/study.txt
// holds the plan: a different plan in the same folder is refused.

#include <cstdint>
#include <string>
#include <vector>

#include "tiny_lm/config.hpp"
#include "tiny_lm/data.hpp"
#include "tiny_lm/trainer.hpp"

namespace tiny_lm {

/// What a study runs: `base` fixes the model and the training; each run sets its mechanism,
/// lambda, shared heads and seed. lambda = 0 runs once per (mechanism, seed); each lambda > 0
/// runs once per shared-heads value.
struct study_plan {
  train_config base;
  std::vector<mechanism> mechanisms;
  std::vector<double> lambdas;
  std::vector<int> shared_heads;
  std::vector<std::uint64_t> seeds;
};

/// One run of a plan.
struct study_run {
  std::string name;  ///< folder name, e.g. "sink-lambda0.1-shared1-seed2"
  train_config config;
};

/// The runs of a plan, in the order they train (mechanism, seed, then lambda and shared).
std::vector<study_run> plan_runs(const study_plan& plan);

/// The plan as the text stored in DIR/study.txt (equal plans give equal texts).
std::string plan_text(const study_plan& plan);

/// How a study runs: output folder, training options shared by every run, and where to stop.
struct study_options {
  std::string dir;
  run_options train;   ///< threads, log/checkpoint cadence (out_dir is set per run)
  int stop_after = 0;  ///< stop once this many optimiser steps ran in this call (0: never)
  int val_sequences = 0;
};

/// Runs (or continues) the plan; writes the report when every run is finished. Returns true when
/// the study is complete, false when it stopped early (stop_after). Throws usage_error for a
/// folder that holds another plan.
bool run_study(const study_plan& plan, const dataset& data, const study_options& opts);

/// Rebuilds the report of a finished study folder from its runs (no training).
void write_study_report(const study_plan& plan, const std::string& dir);

}  // namespace tiny_lm
