#pragma once
// Training and evaluation of one configuration: the loop, logging, CSVs, checkpoints, the
// final heatmap and summary. compare and report (cli.cpp) are built from these.

#include <cstdint>
#include <string>
#include <vector>

#include <sinkmoe/balance/balance.hpp>
#include "tiny_lm/checkpoint.hpp"
#include "tiny_lm/config.hpp"
#include "tiny_lm/data.hpp"
#include "tiny_lm/model.hpp"
#include "tiny_lm/progress.hpp"
#include "tiny_lm/report.hpp"

namespace tiny_lm {

class data_parallel;  // tiny_lm/data_parallel.hpp

/// Where outputs go and how much is printed (nothing here changes the numbers of a run).
struct run_options {
  std::string out_dir;                      ///< run directory (created after all checks pass)
  int threads = 0;                          ///< 0: all cores (OpenMP default)
  int log_every = 0;                        ///< 0: steps / 10
  int checkpoint_every = 0;                 ///< 0: only at the end (and at stop_after)
  const checkpoint_data* resume = nullptr;  ///< continue from this checkpoint
  int stop_after = 0;       ///< stop (and checkpoint) after this step; 0: run to the end
  int eval_sequences = 64;  ///< validation sequences at each log step (all at the end)
  device_kind device = device_kind::cpu;
  bool print = true;                 ///< log lines and the final summary on stdout
  bool color = false;                ///< ANSI colours in the terminal heatmap
  bool plain_log = false;            ///< log lines without a progress bar, even on a terminal
  progress_bar* progress = nullptr;  ///< shared bar (compare); null: train makes its own
  std::int64_t progress_offset = 0;  ///< steps done before this run on the shared bar
  std::string label;                 ///< e.g. "sink, lambda = 0"
  /// Data parallel (--data-parallel): this rank trains on its slice of every step's batch and
  /// the ranks combine loss and gradients (data_parallel.hpp); the numbers are those of the
  /// 1-rank run. Only rank 0 prints and writes files. null: one process.
  data_parallel* parallel = nullptr;
};

/// What a train() call leaves behind for its caller.
struct train_result {
  run_summary summary;  ///< final validation metrics and speed (when finished)
  int start_step = 0;
  int steps_done = 0;              ///< optimiser steps completed in total
  bool finished = false;           ///< reached config.steps
  std::vector<double> train_loss;  ///< per step of this call: mean cross-entropy
  std::vector<double> train_cv;    ///< per step: mean importance CV over layers (training batch)
  std::vector<float> params;       ///< final parameters
};

/// Throws usage_error (naming the flag and its value) for an impossible configuration.
void validate_config(const train_config& cfg);

/// The balancing regulariser of a config.
sinkmoe::balance::importance_cv2 regulariser(const train_config& cfg);

/// sum over layers of n_l CV_l^2 over the balanced heads: the balance loss without lambda.
double cv2_sum(const sinkmoe::balance::report& rep);

/// Validation metrics over the first max_sequences validation sequences (0: all).
eval_result evaluate(transformer<float>& model, const dataset& data, int batch, int max_sequences,
                     const sinkmoe::balance::importance_cv2& reg);

/// The tensor table of a model (for checkpoints).
std::vector<stored_tensor> tensor_table(const transformer<float>& model);

/// Trains one configuration (see run_options); throws usage_error for bad input before
/// anything is written.
train_result train(const train_config& cfg, const dataset& data, const run_options& opts);

/// Loads a run directory's checkpoint, evaluates it on its validation data and returns the
/// summary (speed from the run's metrics.txt when present). Throws usage_error for a missing,
/// corrupt or mismatched checkpoint or data file.
run_summary evaluate_run_dir(const std::string& dir, int threads, int val_sequences);

/// The default validation-set size (built-in corpus) and the datasets of a config.
inline constexpr int k_default_val_sequences = 256;
dataset load_dataset(const train_config& cfg, int val_sequences);

}  // namespace tiny_lm
