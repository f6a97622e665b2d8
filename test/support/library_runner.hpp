#pragma once
// Runs the library on an oracle config (test/support/reference.hpp): maps the runtime kinds
// onto attention<...> types, copies std::vector<double> inputs into T, and returns the results
// as doubles. The instantiations live in runner_*.cpp (one translation unit per sink policy),
// linked into every test as the sinkmoe_test_runner library.

#include <cstdint>
#include <vector>

#include <sinkmoe/args.hpp>

#include "support/reference.hpp"

namespace sinkmoe::testing {

/// Everything one forward (and optionally backward) call of the library produced.
struct library_result {
  std::vector<double> out, lse, router, first_key_mass;
  std::vector<int> counted;
  std::vector<double> dq, dk, dv, dsinks, dgate;
};

/// How to call the library.
struct run_options {
  bool backward = true;  ///< also run backward with the given cotangents
  int threads = 2;       ///< exec::host threads
  bool softcap = false;  ///< use score::softcap with cfg.softcap
};

/// Runs forward (+ backward) of the policy combination described by cfg, in T (float/double).
template <class T>
library_result run_library(const ref::config& cfg, const ref::inputs& in, const ref::cotangents& ct,
                           const run_options& opts = {});

/// Same, for variable-length batches: cfg.B sequences packed in one B = 1 tensor with the given
/// per-sequence lengths (cfg.Tq / cfg.Tk are ignored); inputs and outputs use the packed layout
/// [1, total, H, D] / [1, H, total].
template <class T>
library_result run_library_varlen(const ref::config& cfg, const std::vector<int>& q_lengths,
                                  const std::vector<int>& k_lengths, const ref::inputs& in,
                                  const ref::cotangents& ct, const run_options& opts = {});

/// Same, for a padded batch [cfg.B, cfg.Tq / cfg.Tk]: batch entry b has q_lengths[b] real query
/// rows and k_lengths[b] real keys (an empty vector: all rows real), at the end `side` says
/// (forward_args::seqlens). Inputs and outputs use the padded layout.
template <class T>
library_result run_library_padded(const ref::config& cfg, const std::vector<int>& q_lengths,
                                  const std::vector<int>& k_lengths, padding_side side,
                                  const ref::inputs& in, const ref::cotangents& ct,
                                  const run_options& opts = {});

extern template library_result run_library<float>(const ref::config&, const ref::inputs&,
                                                  const ref::cotangents&, const run_options&);
extern template library_result run_library<double>(const ref::config&, const ref::inputs&,
                                                   const ref::cotangents&, const run_options&);
extern template library_result run_library_varlen<double>(
    const ref::config&, const std::vector<int>&, const std::vector<int>&, const ref::inputs&,
    const ref::cotangents&, const run_options&);

}  // namespace sinkmoe::testing
