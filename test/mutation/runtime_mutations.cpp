// Run-time mutation test of the emulation (test/mutation/README.md). For every kernel family
// (fused forward, fused backward, unfused path, device balancing) it runs the unmutated case,
// takes the emulation's census of barrier and wait call sites, and then, one site at a time,
// deletes the barrier (sync_block, sync_warp) or makes the wait retire one group fewer, and runs
// again. A mutation is caught when the emulation reports it (race, in-flight cp.async, unwritten
// read, schedule dependence, bounds, alignment) or the outputs differ from the unmutated run; a
// barrier whose deletion nothing notices is redundant and fails the test too. On top: a
// misaligned d(gate logits) view, refused by validation, and the same view forced past
// validation, which the emulation must report. Prints one table row per mutation:
//   mutation <TAB> site <TAB> caught by <TAB> message
// and exits 1 if any required mutation survived.
#include <cstdio>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include "mutation/mutation_cases.hpp"

namespace {

namespace arch = sinkmoe::arch;
namespace mut = sinkmoe::mutation;

/// What a mutated run showed.
struct outcome {
  bool caught = false;
  std::string by;
  std::string message;
};

/// Which check an emulation message comes from.
std::string check_of(const std::string& m) {
  if (m.find("-memory race") != std::string::npos) return "race detector";
  if (m.find("in flight") != std::string::npos) return "cp.async visibility";
  if (m.find("no thread of this block has written") != std::string::npos) return "unwritten read";
  if (m.find("schedule-dependent") != std::string::npos) return "schedule comparison";
  if (m.find("outside every tensor") != std::string::npos) return "global bounds";
  if (m.find("aligned") != std::string::npos) return "alignment";
  if (m.find("deadlock") != std::string::npos) return "deadlock";
  return "emulation";
}

/// Runs `run` and classifies the result against the unmutated bytes.
outcome judge(const std::function<mut::run_result()>& run,
              const std::vector<unsigned char>& clean) {
  try {
    const mut::run_result r = run();
    if (r.bytes != clean) {
      std::size_t i = 0;
      while (i < r.bytes.size() && i < clean.size() && r.bytes[i] == clean[i]) ++i;
      return {true, "output comparison",
              "outputs differ from the unmutated run from byte " + std::to_string(i)};
    }
    return {false, "-", "outputs equal to the unmutated run"};
  } catch (const arch::emulation_error& e) {
    return {true, check_of(e.what()), e.what()};
  } catch (const sinkmoe::error& e) {
    return {true, "validation", e.what()};
  } catch (const std::exception& e) {
    return {true, "exception", e.what()};
  }
}

struct family {
  const char* name;
  std::function<mut::run_result()> run;
  const char* kernel_filter;  ///< mutate only sites of kernels whose name contains this
};

int failures = 0;
int rows = 0;

void row(const std::string& mutation, const std::string& where, const outcome& o, bool required) {
  ++rows;
  std::cout << "| " << mutation << " | " << where << " | "
            << (o.caught ? o.by : (required ? "SURVIVED" : "not caught (benign)")) << " | "
            << mut::shorten(o.message) << " |\n";
  if (required && !o.caught) ++failures;
}

}  // namespace

int main() {
  const std::vector<family> families = {
      {"fused forward", mut::fused_forward, "forward_kernel"},
      {"fused backward", mut::fused_backward, "backward_"},
      {"unfused path", mut::unfused_path, "unfused::"},
      {"device balancing", mut::device_balancing, "balance::gpu::"},
  };
  std::cout << "| mutation | site | caught by | message |\n|---|---|---|---|\n";
  for (const family& f : families) {
    const mut::run_result clean = f.run();
    int sync_blocks = 0;
    for (const arch::site_use& u : clean.stats.sites) {
      if (u.kernel.find(f.kernel_filter) == std::string::npos) continue;
      arch::mutation m;
      m.file = u.where.file_name();
      m.line = u.where.line();
      m.kernel = u.kernel;  // a site shared by two kernels is mutated in one at a time
      std::string what;
      bool required = true;
      if (u.primitive == "sync_block") {
        m.what = arch::mutation::kind::skip_sync_block;
        what = "sync_block deleted";
        ++sync_blocks;
      } else if (u.primitive == "sync_warp") {
        m.what = arch::mutation::kind::skip_sync_warp;
        what = "sync_warp deleted";
      } else {
        m.what = arch::mutation::kind::retire_fewer;
        what = u.primitive + " retires one group fewer";
        // wait_all after a pipeline's tail: its youngest group is the empty one that kept the
        // loop's wait_group<1> uniform, so waiting for all but it changes nothing; reported, not
        // required.
        required = u.primitive == "cp_async_wait_group";
      }
      const arch::scoped_emulation scope({m});
      outcome o = judge(f.run, clean.bytes);
      for (std::size_t at; (at = o.message.find(u.kernel)) != std::string::npos;)
        o.message.replace(at, u.kernel.size(), mut::kernel_name(u.kernel));
      row(std::string(f.name) + ": " + what,
          mut::kernel_name(u.kernel) + " " + arch::describe(u.where), o, required);
    }
    if (sync_blocks == 0) {
      std::cout << "| " << f.name << ": census | - | SURVIVED | no sync_block site ran |\n";
      ++failures;
    }
  }

  // F1: an elementwise d(gate logits) view at an odd element offset.
  {
    const mut::inputs in(mut::shapes()[0]);
    mut::outputs o(in);
    std::vector<mut::bf16> dz(in.z.size() + 2, arch::from_bits<mut::bf16>(0x7fc1));
    const sinkmoe::forward_args<mut::bf16> a = mut::forward_views(in, o);
    sinkmoe::backward_args<mut::bf16> g = mut::backward_views(in, o);
    g.dgate_logits.data = dz.data() + 1;
    sinkmoe::testing::emulated_fused_forward<mut::attn, mut::k_head_dim>(a);
    row("misaligned dgate_logits view (odd element offset)", "make_backward_params",
        judge(
            [&] {
              sinkmoe::testing::emulated_fused_backward<mut::attn, mut::k_head_dim>(a, g);
              return mut::run_result{};
            },
            {1}),
        true);
    // The same view forced past validation: the preprocess's 32-bit store must be reported.
    row("misaligned dgate_logits view, validation bypassed", "backward preprocess",
        judge(
            [&] {
              using kernels =
                  sinkmoe::fused::backward_kernels<mut::attn, mut::bf16, mut::k_head_dim>;
              const sinkmoe::problem_shape shape = mut::attn::validate(a, g);
              sinkmoe::backward_args<mut::bf16> aligned = g;
              aligned.dgate_logits.data = dz.data();
              const auto layout = sinkmoe::fused::backward_workspace<mut::attn, mut::bf16>(
                  shape, shape.tq, shape.tk, 1);
              std::vector<unsigned char> storage(layout.total_bytes + 256, 0xff);
              void* ws = storage.data();
              std::size_t space = storage.size();
              ws = std::align(256, layout.total_bytes, ws, space);
              sinkmoe::fused::backward_params<mut::bf16> p =
                  sinkmoe::fused::make_backward_params<mut::attn>(
                      a, aligned, shape, layout, shape.tq, shape.tk, ws, layout.total_bytes);
              p.dgate_logits.data = dz.data() + 1;  // the defect: what validation would refuse
              const auto geo = sinkmoe::fused::backward_geometry<kernels, mut::attn>(
                  shape, layout, shape.tq, shape.tk);
              auto ranges = sinkmoe::testing::backward_ranges(a, aligned);
              ranges.push_back(
                  arch::range_of_bytes("dgate buffer", dz.data(), dz.size() * 2, true));
              sinkmoe::testing::emulator_for(ranges, ws, layout.total_bytes)
                  .launch(geo.preprocess.grid, geo.preprocess.block, geo.preprocess.smem_bytes,
                          typename kernels::preprocess{}, p);
              return mut::run_result{};
            },
            {1}),
        true);
  }

  std::cout << "\n" << rows << " mutations, " << failures << " survived\n";
  return failures == 0 ? 0 : 1;
}
