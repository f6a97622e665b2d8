// The fused forward kernel under the host emulation, sink::learned x every gate, mask and route
// at HeadDim 64, bf16 (the policy product is split by sink policy, one translation unit each,
// to bound compile time). Checks: support/fused_forward_check.hpp.
#include "support/fused_forward_check.hpp"

namespace fc = sinkmoe::testing::fused_check;
namespace gate = sinkmoe::gate;
using sink_policy = sinkmoe::sink::learned;

BOOST_AUTO_TEST_SUITE(product_sink_learned)

BOOST_AUTO_TEST_CASE(gate_none) {
  const auto r = fc::run_product_masks<sink_policy, gate::none>(20000);
  BOOST_TEST(r.combinations == 4);  // every mask, route sink_mass
  BOOST_TEST(r.cases == r.combinations * static_cast<int>(fc::product_shapes(0).size()));
  BOOST_TEST(r.worst_ratio <= 1.0);
}
BOOST_AUTO_TEST_CASE(gate_headwise) {
  const auto r = fc::run_product_masks<sink_policy, gate::headwise>(21000);
  BOOST_TEST(r.combinations == 12);  // every mask x routes output_gate, sink_mass, product
  BOOST_TEST(r.cases == r.combinations * static_cast<int>(fc::product_shapes(0).size()));
  BOOST_TEST(r.worst_ratio <= 1.0);
}
BOOST_AUTO_TEST_CASE(gate_elementwise) {
  const auto r = fc::run_product_masks<sink_policy, gate::elementwise>(22000);
  BOOST_TEST(r.combinations == 12);  // every mask x routes output_gate, sink_mass, product
  BOOST_TEST(r.cases == r.combinations * static_cast<int>(fc::product_shapes(0).size()));
  BOOST_TEST(r.worst_ratio <= 1.0);
}

BOOST_AUTO_TEST_SUITE_END()
