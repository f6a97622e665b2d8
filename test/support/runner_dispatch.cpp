// Entry points of the library runner: pick the sink policy's translation unit.
#include <numeric>

#include "support/library_runner_impl.hpp"

namespace sinkmoe::testing {
namespace detail {
#define SINKMOE_DECLARE_SINK(S)                                                      \
  extern template library_result run_for_sink<sink::S, float>(                       \
      const ref::config&, const layout&, const ref::inputs&, const ref::cotangents&, \
      const run_options&);                                                           \
  extern template library_result run_for_sink<sink::S, double>(                      \
      const ref::config&, const layout&, const ref::inputs&, const ref::cotangents&, \
      const run_options&);
SINKMOE_DECLARE_SINK(none)
SINKMOE_DECLARE_SINK(learned)
SINKMOE_DECLARE_SINK(fixed)
#undef SINKMOE_DECLARE_SINK

template <class T>
library_result run_layout(const ref::config& c, const layout& lay, const ref::inputs& in,
                          const ref::cotangents& ct, const run_options& opts) {
  switch (c.sink) {
    case ref::sink_kind::none:
      return run_for_sink<sink::none, T>(c, lay, in, ct, opts);
    case ref::sink_kind::learned:
      return run_for_sink<sink::learned, T>(c, lay, in, ct, opts);
    case ref::sink_kind::fixed:
      return run_for_sink<sink::fixed, T>(c, lay, in, ct, opts);
  }
  return {};
}
}  // namespace detail

template <class T>
library_result run_library(const ref::config& c, const ref::inputs& in, const ref::cotangents& ct,
                           const run_options& opts) {
  return detail::run_layout<T>(c, detail::layout{c.B, c.Tq, c.Tk, {}, {}, {}, {}}, in, ct, opts);
}

template <class T>
library_result run_library_varlen(const ref::config& c, const std::vector<int>& q_lengths,
                                  const std::vector<int>& k_lengths, const ref::inputs& in,
                                  const ref::cotangents& ct, const run_options& opts) {
  detail::layout lay{1, 0, 0, {0}, {0}, {}, {}};
  for (std::size_t s = 0; s < q_lengths.size(); ++s) {
    lay.cu_q.push_back(lay.cu_q.back() + q_lengths[s]);
    lay.cu_k.push_back(lay.cu_k.back() + k_lengths[s]);
  }
  lay.tq = lay.cu_q.back();
  lay.tk = lay.cu_k.back();
  return detail::run_layout<T>(c, lay, in, ct, opts);
}

template <class T>
library_result run_library_padded(const ref::config& c, const std::vector<int>& q_lengths,
                                  const std::vector<int>& k_lengths, padding_side side,
                                  const ref::inputs& in, const ref::cotangents& ct,
                                  const run_options& opts) {
  detail::layout lay{c.B, c.Tq, c.Tk, {}, {}, {}, {}};
  lay.len_q.assign(q_lengths.begin(), q_lengths.end());
  lay.len_k.assign(k_lengths.begin(), k_lengths.end());
  lay.side = side;
  return detail::run_layout<T>(c, lay, in, ct, opts);
}

template library_result run_library<float>(const ref::config&, const ref::inputs&,
                                           const ref::cotangents&, const run_options&);
template library_result run_library<double>(const ref::config&, const ref::inputs&,
                                            const ref::cotangents&, const run_options&);
template library_result run_library_varlen<double>(const ref::config&, const std::vector<int>&,
                                                   const std::vector<int>&, const ref::inputs&,
                                                   const ref::cotangents&, const run_options&);
template library_result run_library_varlen<float>(const ref::config&, const std::vector<int>&,
                                                  const std::vector<int>&, const ref::inputs&,
                                                  const ref::cotangents&, const run_options&);
template library_result run_library_padded<double>(const ref::config&, const std::vector<int>&,
                                                   const std::vector<int>&, padding_side,
                                                   const ref::inputs&, const ref::cotangents&,
                                                   const run_options&);
template library_result run_library_padded<float>(const ref::config&, const std::vector<int>&,
                                                  const std::vector<int>&, padding_side,
                                                  const ref::inputs&, const ref::cotangents&,
                                                  const run_options&);
}  // namespace sinkmoe::testing
