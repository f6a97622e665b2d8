// Small emulated runs of every kernel family, for the mutation tests (test/mutation/README.md):
// the fused forward, the fused backward, the unfused path and device balancing, each on one
// policy and a few shapes chosen so that every barrier and wait of the kernels is exercised
// (pipelines with several tiles, blocks with no tile at all, trainable sinks). Each run returns
// every output byte, so that a mutated run can be compared with the unmutated one bitwise.
// No Boost.Test: the mutation programs are plain executables.
#pragma once

#include <sinkmoe/cuda/arch/emulation.hpp>
// The emulation header must come first: it selects the emulated primitive layer.
#include <cstdint>
#include <cstring>
#include <random>
#include <sinkmoe/attention.hpp>
#include <sinkmoe/cuda/balance_kernels.hpp>
#include <sinkmoe/cuda/unfused/algorithm.hpp>
#include <string>
#include <vector>

#include "support/emulation_ranges.hpp"
#include "support/fused_backward_emulation.hpp"
#include "support/fused_forward_emulation.hpp"
#include "support/unfused_host_gemm.hpp"

namespace sinkmoe::mutation {

namespace arch = sinkmoe::arch;
using arch::bf16;

/// The policy every case runs: a trainable sink (the d(sink) reductions run), an elementwise
/// gate (the pair stores of d(gate logits) run) and a causal mask (partial and empty tiles).
using attn = attention<sink::learned, gate::elementwise, mask::causal>;
inline constexpr int k_head_dim = 64;

/// One shape of a case.
struct shape_spec {
  int tq, tk, hq, hkv;
  bool top_left;
  const char* why;
};

/// Shapes that reach every barrier: several key tiles per query tile; key tiles no query sees
/// (dK/dV blocks with no item, top-left alignment with Tk > Tq); query tiles that see no key
/// (bottom-right alignment with Tq > Tk: the first rows are empty).
inline const std::vector<shape_spec>& shapes() {
  static const std::vector<shape_spec> s = {
      {70, 200, 2, 2, false, "Tq 70 Tk 200 bottom-right: 4 key tiles per query tile"},
      {70, 140, 2, 1, true, "Tq 70 Tk 140 top-left: unseen key tiles"},
      {130, 63, 2, 2, false, "Tq 130 Tk 63 bottom-right: empty query tiles"},
  };
  return s;
}

/// A short kernel name: the last component before the template arguments.
inline std::string kernel_name(const std::string& demangled) {
  std::string head = demangled.substr(0, demangled.find('<'));
  const std::size_t colon = head.rfind("::");
  return colon == std::string::npos ? head : head.substr(colon + 2);
}

/// An emulation message for a table cell: without its prefix, the kernel's template arguments
/// ("sinkmoe::fused::forward_kernel<...> block (" becomes "forward_kernel block ("), at most n
/// characters.
inline std::string shorten(std::string m, std::size_t n = 240) {
  const std::string prefix = "sinkmoe arch emulation: ";
  if (m.rfind(prefix, 0) == 0) m = m.substr(prefix.size());
  const std::size_t block = m.find(" block (");
  const std::size_t open = m.find('<');
  if (block != std::string::npos && open != std::string::npos && open < block) {
    const std::size_t space = m.rfind(' ', open);
    const std::size_t start = space == std::string::npos ? 0 : space + 1;
    m = m.substr(0, start) + kernel_name(m.substr(start, block - start)) + m.substr(block);
  }
  if (m.size() > n) m = m.substr(0, n) + "...";
  return m;
}

/// Appends the bytes of a container to `out`.
template <class C>
void append_bytes(std::vector<unsigned char>& out, const C& c) {
  const auto* p = reinterpret_cast<const unsigned char*>(c.data());
  out.insert(out.end(), p, p + c.size() * sizeof(c[0]));
}

/// The inputs of one shape: bf16 q, k, v, gate logits, dout; fp32 sinks and cotangents.
struct inputs {
  shape_spec s;
  std::vector<bf16> q, k, v, z, dout;
  std::vector<float> sinks, drouter, dlse;
  explicit inputs(const shape_spec& spec) : s(spec) {
    std::mt19937 rng(static_cast<unsigned>(spec.tq * 131 + spec.tk));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const auto fill = [&](std::vector<bf16>& x, std::size_t n) {
      x.resize(n);
      for (bf16& e : x) e = arch::from_float<bf16>(normal(rng));
    };
    const std::size_t d = k_head_dim;
    fill(q, std::size_t(spec.tq) * spec.hq * d);
    fill(k, std::size_t(spec.tk) * spec.hkv * d);
    fill(v, k.size());
    fill(z, q.size());
    fill(dout, q.size());
    sinks.resize(std::size_t(spec.hq));
    for (float& x : sinks) x = normal(rng);
    drouter.resize(std::size_t(spec.hq) * spec.tq);
    for (float& x : drouter) x = normal(rng);
    dlse = drouter;
  }
  [[nodiscard]] attention_params params() const {
    attention_params p;
    p.alignment = s.top_left ? causal_alignment::top_left : causal_alignment::bottom_right;
    return p;
  }
};

/// Output buffers of a forward and a backward (NaN bit patterns before the launches, so an
/// element a kernel leaves unwritten shows up as a difference).
struct outputs {
  std::vector<bf16> out, dq, dk, dv, dz;
  std::vector<float> lse, router, dsinks;
  explicit outputs(const inputs& in)
      : out(in.q.size(), arch::from_bits<bf16>(0x7fc1)),
        dq(in.q.size(), arch::from_bits<bf16>(0x7fc1)),
        dk(in.k.size(), arch::from_bits<bf16>(0x7fc1)),
        dv(in.k.size(), arch::from_bits<bf16>(0x7fc1)),
        dz(in.z.size(), arch::from_bits<bf16>(0x7fc1)),
        lse(std::size_t(in.s.hq) * in.s.tq, std::numeric_limits<float>::quiet_NaN()),
        router(lse.size(), std::numeric_limits<float>::quiet_NaN()),
        dsinks(std::size_t(in.s.hq), std::numeric_limits<float>::quiet_NaN()) {}
  [[nodiscard]] std::vector<unsigned char> bytes(bool with_backward) const {
    std::vector<unsigned char> b;
    append_bytes(b, out);
    append_bytes(b, lse);
    append_bytes(b, router);
    if (with_backward) {
      append_bytes(b, dq);
      append_bytes(b, dk);
      append_bytes(b, dv);
      append_bytes(b, dz);
      append_bytes(b, dsinks);
    }
    return b;
  }
};

/// The forward and backward argument views over `in` and `o`.
inline forward_args<bf16> forward_views(const inputs& in, outputs& o) {
  const index_t tq = in.s.tq, tk = in.s.tk, hq = in.s.hq, hkv = in.s.hkv, d = k_head_dim;
  forward_args<bf16> a;
  a.q = {in.q.data(), {1, tq, hq, d}};
  a.k = {in.k.data(), {1, tk, hkv, d}};
  a.v = {in.v.data(), {1, tk, hkv, d}};
  a.sinks = {in.sinks.data(), {hq}};
  a.gate_logits = {in.z.data(), {1, tq, hq, d}};
  a.out = {o.out.data(), {1, tq, hq, d}};
  a.lse = {o.lse.data(), {1, hq, tq}};
  a.router = {o.router.data(), {1, hq, tq}};
  a.params = in.params();
  return a;
}

inline backward_args<bf16> backward_views(const inputs& in, outputs& o) {
  const index_t tq = in.s.tq, tk = in.s.tk, hq = in.s.hq, hkv = in.s.hkv, d = k_head_dim;
  backward_args<bf16> g;
  g.dout = {in.dout.data(), {1, tq, hq, d}};
  g.drouter = {in.drouter.data(), {1, hq, tq}};
  g.dlse = {in.dlse.data(), {1, hq, tq}};
  g.dq = {o.dq.data(), {1, tq, hq, d}};
  g.dk = {o.dk.data(), {1, tk, hkv, d}};
  g.dv = {o.dv.data(), {1, tk, hkv, d}};
  g.dsinks = {o.dsinks.data(), {hq}};
  g.dgate_logits = {o.dz.data(), {1, tq, hq, d}};
  return g;
}

/// What one case run gives: its output bytes and the emulation's census of call sites.
struct run_result {
  std::vector<unsigned char> bytes;
  arch::emulation_stats stats;
};

/// The fused forward on every shape.
inline run_result fused_forward() {
  run_result r;
  for (const shape_spec& s : shapes()) {
    const inputs in(s);
    outputs o(in);
    r.stats += testing::emulated_fused_forward<attn, k_head_dim>(forward_views(in, o));
    append_bytes(r.bytes, o.bytes(false));
  }
  return r;
}

/// The fused forward and backward, the backward twice: planned for no SM (every key tile one
/// dK/dV block that walks all its items, staging its stores through shared memory) and for an
/// H100 (the items split across blocks, fp32 partials and the reduce kernel).
inline run_result fused_backward() {
  run_result r;
  for (const int sm_count : {0, 132}) {
    for (const shape_spec& s : shapes()) {
      const inputs in(s);
      outputs o(in);
      const forward_args<bf16> a = forward_views(in, o);
      r.stats += testing::emulated_fused_forward<attn, k_head_dim>(a);
      r.stats +=
          testing::emulated_fused_backward<attn, k_head_dim>(a, backward_views(in, o), sm_count);
      append_bytes(r.bytes, o.bytes(true));
    }
  }
  return r;
}

/// The unfused algorithm's device here: host GEMMs, emulated row kernels with the call's ranges.
struct emulated_device {
  testing::host_gemm gemms;
  std::vector<arch::global_range> ranges;
  arch::emulation_stats stats;
  void gemm(const unfused::gemm_desc& g) { gemms.gemm(g); }
  template <class Kernel, class Params>
  void launch(const unfused::launch_shape& s, const Params& params) {
    arch::emulator em;
    em.globals = ranges;
    stats += em.launch(s.grid, s.block, s.smem_bytes, Kernel{}, params);
  }
};

/// The unfused forward and backward on every shape (16 query rows per chunk: several chunks).
inline run_result unfused_path() {
  run_result r;
  for (const shape_spec& s : shapes()) {
    const inputs in(s);
    outputs o(in);
    const forward_args<bf16> a = forward_views(in, o);
    const backward_args<bf16> g = backward_views(in, o);
    emulated_device dev;
    constexpr int chunk_rows = 16;
    {
      const problem_shape shape = unfused::validate_forward<attn>(a);
      std::vector<std::byte> ws(
          unfused::workspace_bytes(shape, chunk_rows, unfused::pass::forward) + 256);
      auto* base = reinterpret_cast<std::byte*>(
          (reinterpret_cast<std::uintptr_t>(ws.data()) + 255) / 256 * 256);
      std::memset(ws.data(), 0xff, ws.size());
      dev.ranges = testing::emulator_for(testing::forward_ranges(a), base, ws.size() - 256).globals;
      unfused::forward<attn>(dev, a, shape, base, chunk_rows);
    }
    {
      const problem_shape shape = unfused::validate_backward<attn>(a, g);
      std::vector<std::byte> ws(
          unfused::workspace_bytes(shape, chunk_rows, unfused::pass::backward) + 256);
      auto* base = reinterpret_cast<std::byte*>(
          (reinterpret_cast<std::uintptr_t>(ws.data()) + 255) / 256 * 256);
      std::memset(ws.data(), 0xff, ws.size());
      dev.ranges =
          testing::emulator_for(testing::backward_ranges(a, g), base, ws.size() - 256).globals;
      unfused::backward<attn>(dev, a, g, shape, base, chunk_rows);
    }
    r.stats += dev.stats;
    append_bytes(r.bytes, o.bytes(true));
  }
  return r;
}

/// Device balancing over five layers of random routers (more layers than the evaluate kernel
/// has warps, so a warp reuses its shared memory): accumulate, evaluate (one shared head per
/// layer), router_grad.
inline run_result device_balancing() {
  run_result r;
  constexpr int layers = 5;
  const int heads = 2, batch = 1, tokens = 96;
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  std::vector<std::vector<float>> routers(layers), drouters(layers);
  std::vector<std::vector<std::uint8_t>> counted(layers);
  std::vector<balance::layer_input<float>> in;
  std::vector<tensor_view<float, 3>> out;
  for (int l = 0; l < layers; ++l) {
    routers[l].resize(std::size_t(heads) * tokens);
    for (float& x : routers[l]) x = uniform(rng);
    drouters[l].assign(routers[l].size(), std::numeric_limits<float>::quiet_NaN());
    counted[l].assign(tokens, 1);
    counted[l][0] = 0;
    in.push_back(
        {{routers[l].data(), {batch, heads, tokens}}, {counted[l].data(), {batch, tokens}}});
    out.push_back({drouters[l].data(), {batch, heads, tokens}});
  }
  balance::importance_cv2 reg;
  reg.lambda = 0.1;
  reg.shared_heads = 1;
  const balance::gpu::evaluate_options opts =
      balance::gpu::make_evaluate_options(reg, layers, heads);
  std::vector<double> storage(balance::gpu::workspace_bytes(layers, heads) / sizeof(double) + 1,
                              std::numeric_limits<double>::quiet_NaN());
  const balance::gpu::workspace ws = balance::gpu::carve_workspace(storage.data(), layers, heads);
  std::memset(ws.shared, 0, std::size_t(layers) * heads);
  arch::emulator em;
  em.globals.push_back(arch::range_of_bytes("balance workspace", storage.data(),
                                            balance::gpu::workspace_bytes(layers, heads), true));
  for (int l = 0; l < layers; ++l) {
    testing::append_ranges(em.globals, arch::range_of("router", in[l].router, false));
    testing::append_ranges(em.globals, arch::range_of("counted", in[l].counted, false));
    testing::append_ranges(em.globals, arch::range_of("drouter", out[l], true));
  }
  const auto launch = [&](auto kernel, arch::index3 grid, arch::index3 block, std::size_t smem,
                          const auto& params) {
    r.stats += em.launch(grid, block, smem, kernel, params);
  };
  balance::gpu::enqueue_accumulate(in, ws, launch);
  balance::gpu::enqueue_evaluate(opts, ws, launch);
  balance::gpu::enqueue_router_grad(in, out, ws, launch);
  const auto* p = reinterpret_cast<const unsigned char*>(storage.data());
  r.bytes.assign(p, p + balance::gpu::workspace_bytes(layers, heads));
  for (const auto& d : drouters) append_bytes(r.bytes, d);
  return r;
}

}  // namespace sinkmoe::mutation
