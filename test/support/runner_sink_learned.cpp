// Instantiates the library runner for sink::learned (one translation unit per sink policy keeps
// compile time and memory per unit bounded).
#include "support/library_runner_impl.hpp"

namespace sinkmoe::testing::detail {
template library_result run_for_sink<sink::learned, float>(const ref::config&, const layout&,
                                                           const ref::inputs&,
                                                           const ref::cotangents&,
                                                           const run_options&);
template library_result run_for_sink<sink::learned, double>(const ref::config&, const layout&,
                                                            const ref::inputs&,
                                                            const ref::cotangents&,
                                                            const run_options&);
}  // namespace sinkmoe::testing::detail
