#pragma once
// Includes <sinkmoe/balance/balance.hpp> in an order that compiles on its own. Workaround for a
// library header problem (reported): balance.hpp's error messages print std::array shapes
// through sinkmoe::operator<<, which core/tensor_view.hpp declares, but core/error.hpp (whose
// concat() template does the printing) is included first, so unless tensor_view.hpp came
// earlier the operator is invisible to concat() (two-phase lookup; ADL searches only std for
// std::array) and instantiating balance::accumulate fails to compile.

// clang-format off
#include <cmath>
#include <sinkmoe/core/tensor_view.hpp>
#include <sinkmoe/balance/balance.hpp>
// clang-format on
