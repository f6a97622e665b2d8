// The library against the nine independent fp64 reference cases (test/data, from
// ../shared/testdata): forward, balancing loss and every gradient, in double, to 1e-9 relative.
#define BOOST_TEST_MODULE reference_vectors
#include <boost/test/unit_test.hpp>
#include <sinkmoe/sinkmoe.hpp>
#include <span>
#include <string>

#include "support/library_runner.hpp"
#include "support/reference_vectors.hpp"

namespace st = sinkmoe::testing;

namespace {

const std::vector<st::ref_case>& cases() {
  static const auto all =
      st::load_reference_cases(std::string(SINKMOE_TEST_DATA_DIR) + "/reference_vectors.json");
  return all;
}

void check_close(const std::string& what, const std::vector<double>& got,
                 const std::vector<double>& want, double rtol = 1e-9) {
  BOOST_TEST_REQUIRE(got.size() == want.size(),
                     what << ": size " << got.size() << " vs " << want.size());
  std::size_t bad = 0;
  double worst = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double err = std::abs(got[i] - want[i]) / std::max(1.0, std::abs(want[i]));
    if (!(err <= rtol)) ++bad;
    worst = std::max(worst, err);
  }
  BOOST_TEST(bad == 0u, what << ": " << bad << " of " << want.size()
                             << " entries off, worst rel err " << worst);
}

}  // namespace

BOOST_AUTO_TEST_CASE(nine_cases_are_loaded) { BOOST_TEST(cases().size() == 9u); }

BOOST_AUTO_TEST_CASE(library_matches_reference_vectors) {
  for (const st::ref_case& rc : cases()) {
    BOOST_TEST_CONTEXT("case " << rc.name) {
      // Forward, and the balancing loss from the library's router and counted tokens.
      st::library_result fwd = st::run_library<double>(rc.cfg, rc.in, rc.cot, {.backward = false});
      check_close("out", fwd.out, rc.out);
      check_close("lse", fwd.lse, rc.lse);
      check_close("router", fwd.router, rc.router);
      BOOST_TEST(fwd.counted == rc.counted, "counted tokens differ");

      const int B = rc.cfg.B, H = rc.cfg.Hq, T = rc.cfg.Tq;
      std::vector<std::uint8_t> counted(rc.counted.begin(), rc.counted.end());
      const sinkmoe::balance::importance_cv2 reg{.lambda = rc.bal.lambda,
                                                 .shared_heads = rc.bal.shared_heads};
      std::vector<double> drouter(fwd.router.size());
      const sinkmoe::balance::layer_input<double> layer{{fwd.router.data(), {B, H, T}},
                                                        {counted.data(), {B, T}}};
      const sinkmoe::tensor_view<double, 3> grad_view{drouter.data(), {B, H, T}};
      const auto rep = reg.forward_backward<double>(sinkmoe::exec::host{2}, std::span(&layer, 1),
                                                    std::span(&grad_view, 1));
      check_close("importance", rep.layers[0].importance, rc.importance);
      check_close("balance loss", {rep.loss}, {rc.balance_loss});

      // Backward of the file's loss: cotangents on out, lse and router plus the balance gradient.
      st::ref::cotangents ct = rc.cot;
      for (std::size_t i = 0; i < drouter.size(); ++i) ct.drouter[i] += drouter[i];
      st::library_result bwd = st::run_library<double>(rc.cfg, rc.in, ct);
      check_close("grad q", bwd.dq, rc.grad_q);
      check_close("grad k", bwd.dk, rc.grad_k);
      check_close("grad v", bwd.dv, rc.grad_v);
      if (!rc.grad_sinks.empty()) check_close("grad sinks", bwd.dsinks, rc.grad_sinks);
      if (!rc.grad_gate_logits.empty())
        check_close("grad gate logits", bwd.dgate, rc.grad_gate_logits);
    }
  }
}
