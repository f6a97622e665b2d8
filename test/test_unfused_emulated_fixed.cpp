// The unfused attention path under the host emulation, sink::fixed x every gate, mask and route
// (head dim 16, bf16, chunks of 5 rows; the policy product is split by sink policy, one
// translation unit each, to bound compile time). Checks: support/unfused_check.hpp.
#include "support/unfused_check.hpp"

namespace uc = sinkmoe::testing::unfused_check;
namespace gate = sinkmoe::gate;
using sink_policy = sinkmoe::sink::fixed;

BOOST_AUTO_TEST_SUITE(product_sink_fixed)

BOOST_AUTO_TEST_CASE(gate_none) {
  const auto r = uc::run_product_masks<sink_policy, gate::none>(150000);
  BOOST_TEST(r.combinations == 4);  // every mask, route sink_mass
  BOOST_TEST(r.cases == r.combinations * static_cast<int>(uc::product_shapes(0).size()));
  BOOST_TEST(r.worst_ratio <= 1.0);
}
BOOST_AUTO_TEST_CASE(gate_headwise) {
  const auto r = uc::run_product_masks<sink_policy, gate::headwise>(151000);
  BOOST_TEST(r.combinations == 12);  // every mask x routes output_gate, sink_mass, product
  BOOST_TEST(r.cases == r.combinations * static_cast<int>(uc::product_shapes(0).size()));
  BOOST_TEST(r.worst_ratio <= 1.0);
}
BOOST_AUTO_TEST_CASE(gate_elementwise) {
  const auto r = uc::run_product_masks<sink_policy, gate::elementwise>(152000);
  BOOST_TEST(r.combinations == 12);  // every mask x routes output_gate, sink_mass, product
  BOOST_TEST(r.cases == r.combinations * static_cast<int>(uc::product_shapes(0).size()));
  BOOST_TEST(r.worst_ratio <= 1.0);
}

BOOST_AUTO_TEST_SUITE_END()
