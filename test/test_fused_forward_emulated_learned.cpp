// The fused forward kernel under the host emulation, sink::learned x every gate, mask and route
// at HeadDim 64, bf16 (the policy product is split by sink policy, one translation unit each,
// to bound compile time). Checks: support/fused_forward_check.hpp.
#include "support/fused_forward_check.hpp"

namespace fc = sinkmoe::testing::fused_check;
namespace gate = sinkmoe::gate;
using sink_policy = sinkmoe::sink::learned;

BOOST_AUTO_TEST_SUITE(product_sink_learned)

BOOST_AUTO_TEST_CASE(gate_none) { fc::run_product_masks<sink_policy, gate::none>(20000); }
BOOST_AUTO_TEST_CASE(gate_headwise) { fc::run_product_masks<sink_policy, gate::headwise>(21000); }
BOOST_AUTO_TEST_CASE(gate_elementwise) {
  fc::run_product_masks<sink_policy, gate::elementwise>(22000);
}

BOOST_AUTO_TEST_SUITE_END()
