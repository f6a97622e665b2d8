// A recompiled mutant (test/mutation/README.md): built against a copy of one kernel header in
// which test/CMakeLists.txt replaced one line (SINKMOE_MUTANT_WHAT says how), it runs the fused
// forward on the mutation shapes through the emulation and compares every output with the CPU
// backend on the same inputs. Prints one table row; exits 0 when the defect was caught (by the
// emulation, or by the comparison), 1 when it survived.
#include <cmath>
#include <iostream>
#include <string>

#include "mutation/mutation_cases.hpp"

#ifndef SINKMOE_MUTANT_WHAT
#error "SINKMOE_MUTANT_WHAT: what the mutant changed"
#endif
#ifndef SINKMOE_MUTANT_SITE
#error "SINKMOE_MUTANT_SITE: the header line the mutant changed"
#endif

namespace {

namespace arch = sinkmoe::arch;
namespace mut = sinkmoe::mutation;

/// The first output that is NaN or further than `tolerance` from the CPU backend, or "".
std::string compare_with_cpu(const mut::inputs& in, const mut::outputs& o) {
  const auto widen = [](const std::vector<mut::bf16>& x) {
    std::vector<float> y(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) y[i] = arch::to_float(x[i]);
    return y;
  };
  const std::vector<float> q = widen(in.q), k = widen(in.k), v = widen(in.v), z = widen(in.z);
  std::vector<float> out(q.size()), lse(o.lse.size()), router(o.router.size());
  const sinkmoe::index_t tq = in.s.tq, tk = in.s.tk, hq = in.s.hq, hkv = in.s.hkv,
                         d = mut::k_head_dim;
  sinkmoe::forward_args<float> a;
  a.q = {q.data(), {1, tq, hq, d}};
  a.k = {k.data(), {1, tk, hkv, d}};
  a.v = {v.data(), {1, tk, hkv, d}};
  a.sinks = {in.sinks.data(), {hq}};
  a.gate_logits = {z.data(), {1, tq, hq, d}};
  a.out = {out.data(), {1, tq, hq, d}};
  a.lse = {lse.data(), {1, hq, tq}};
  a.router = {router.data(), {1, hq, tq}};
  a.params = in.params();
  mut::attn::forward(sinkmoe::exec::host{1}, a);
  const auto check = [](const char* name, const auto& kernel, const std::vector<float>& cpu,
                        double tolerance) -> std::string {
    for (std::size_t i = 0; i < cpu.size(); ++i) {
      const double x = arch::to_float(kernel[i]);
      if (std::isnan(x) || !(std::abs(x - cpu[i]) <= tolerance || x == cpu[i]))
        return std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(x) +
               ", CPU backend " + std::to_string(cpu[i]);
    }
    return "";
  };
  std::string bad = check("out", o.out, out, 0.03);
  if (bad.empty()) bad = check("lse", o.lse, lse, 1e-3);
  if (bad.empty()) bad = check("router", o.router, router, 1e-3);
  return bad;
}

}  // namespace

int main() {
  std::string by = "-", message = "outputs agree with the CPU backend";
  bool caught = false;
  try {
    for (const mut::shape_spec& s : mut::shapes()) {
      const mut::inputs in(s);
      mut::outputs o(in);
      sinkmoe::testing::emulated_fused_forward<mut::attn, mut::k_head_dim>(
          mut::forward_views(in, o));
      const std::string bad = compare_with_cpu(in, o);
      if (!bad.empty()) {
        caught = true;
        by = "output check (CPU backend)";
        message = std::string(s.why) + ": " + bad;
        break;
      }
    }
  } catch (const arch::emulation_error& e) {
    caught = true;
    const std::string m = e.what();
    by = m.find("outside every tensor") != std::string::npos ? "global bounds"
         : m.find("race") != std::string::npos               ? "race detector"
                                                             : "emulation";
    message = mut::shorten(m);
  }
  std::cout << "| " << SINKMOE_MUTANT_WHAT << " (recompiled) | " << SINKMOE_MUTANT_SITE << " | "
            << (caught ? by : "SURVIVED") << " | " << message << " |\n";
  return caught ? 0 : 1;
}
