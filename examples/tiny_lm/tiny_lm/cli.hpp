#pragma once
// The tiny_lm command line: train, compare, report (see cli.cpp for the help text).

namespace tiny_lm {

/// Exit codes: 0 success, 1 a run failed (I/O error, divergence), 2 bad input (a flag, a data
/// file, a checkpoint), in which case one line names the flag and value and nothing is written.
inline constexpr int k_exit_ok = 0, k_exit_failure = 1, k_exit_usage = 2;

/// Runs the program; returns the exit code (never calls exit()).
int cli_main(int argc, const char* const* argv);

/// The defaults of `compare` (the README demo): kept here so that tests and docs agree.
inline constexpr double k_compare_lambda = 0.1;

}  // namespace tiny_lm
