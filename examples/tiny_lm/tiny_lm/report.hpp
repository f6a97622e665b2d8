#pragma once
// What people look at: the per-layer x per-head importance heatmap (terminal and SVG) and the
// Markdown tables of a run and of the six-run comparison.

#include <string>
#include <vector>

#include <sinkmoe/balance/balance.hpp>
#include "tiny_lm/config.hpp"

namespace tiny_lm {

/// Validation metrics of a model: cross-entropy, accuracies and head importance.
struct eval_result {
  double loss = 0;             ///< mean cross-entropy (nats per byte)
  double accuracy = 0;         ///< next-byte accuracy
  double recall_accuracy = 0;  ///< accuracy on recall answers (built-in corpus)
  long long tokens = 0;
  long long answers = 0;             ///< recall answers scored (0 for text files)
  sinkmoe::balance::report balance;  ///< importance over the validation set, CV, head metrics
  /// Per layer, the share of heads with importance below 0.1 and below 0.2 (the collapse
  /// thresholds of the study).
  std::vector<double> dormant_below_01, dormant_below_02;
  /// Per layer, the mean attention on the first token (BOS) over heads and counted tokens, and
  /// Gu et al.'s sink metric: the share of heads whose mean first-token attention exceeds 0.3.
  std::vector<double> first_key_mass, first_key_sink_heads;
};

/// Training-speed numbers of a run (from step_timers).
struct speed_summary {
  double tokens_per_second = 0;
  double step_seconds = 0;     ///< mean wall time of one optimiser step
  double attention_share = 0;  ///< of step time
  double balance_share = 0;
  long long steps = 0;
};

/// One finished run as the reports show it.
struct run_summary {
  std::string label;  ///< e.g. "sink, lambda = 0"
  std::string dir;
  train_config config;
  eval_result val;
  speed_summary speed;
};

/// The heatmap for a terminal: one row per layer, two cells per head whose height (and, with
/// `color`, hue) is the head's importance in [0, 1], then CV, effective heads and dormant share.
std::string terminal_heatmap(const sinkmoe::balance::report& rep, bool color,
                             const std::string& indent = "  ");

/// An SVG of heatmap panels laid out `columns` per row (for compare: base | balanced).
struct heatmap_panel {
  std::string title;
  sinkmoe::balance::report rep;
};
std::string heatmap_svg(const std::vector<heatmap_panel>& panels, int columns,
                        const std::string& title, const std::string& subtitle);

/// Line charts: one panel per group, one line per series (a mean) with a shaded band (lo..hi,
/// e.g. the spread over seeds). x is shared by a series' points.
struct chart_series {
  std::string name;
  std::vector<double> x, mean, lo, hi;
};
struct chart_panel {
  std::string title;
  std::vector<chart_series> series;
};
std::string line_chart_svg(const std::vector<chart_panel>& panels, const std::string& title,
                           const std::string& subtitle, const std::string& x_label,
                           const std::string& y_label);

/// Markdown summary of one run (metrics, per-layer table, speed).
std::string run_markdown(const run_summary& run);

/// The comparison table, shaped like the paper's: one row per mechanism, "base -> balanced".
/// `pairs` holds (lambda = 0, lambda > 0) per mechanism.
std::string compare_markdown(const std::vector<std::pair<run_summary, run_summary>>& pairs);

/// The one-line config description used in titles ("2 layers x 8 heads, width 64, ...").
std::string describe_shape(const train_config& cfg);
/// The same without the seed, for what several seeds share (a study).
std::string describe_model(const train_config& cfg);

/// "1.234" style formatting helpers.
std::string fixed(double x, int decimals);

}  // namespace tiny_lm
