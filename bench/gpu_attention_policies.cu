// One policy of the GPU attention benchmark: its kernels (causal and unmasked, head dims 64 and
// 128 through the launchers' dispatch), the timed calls and the --check comparison with the CPU
// backend. bench/CMakeLists.txt compiles this file once per policy with
// SINKMOE_BENCH_POLICY = 0 (vanilla), 1 (sink), 2 (gated) or 3 (sink+gated), so that the four
// sets of kernels compile in parallel.
#include <cstring>
#include <random>
#include <sstream>

#include "gpu_attention.cuh"

#if !defined(SINKMOE_BENCH_POLICY)
#error "compile with -DSINKMOE_BENCH_POLICY=0..3 (see bench/CMakeLists.txt)"
#endif

namespace sinkmoe::bench {
namespace {

constexpr policy_id k_policy = static_cast<policy_id>(SINKMOE_BENCH_POLICY);
static_assert(SINKMOE_BENCH_POLICY >= 0 && SINKMOE_BENCH_POLICY < k_policy_count);
/// Vanilla is the baseline without router output; the other policies write G and take dL/dG.
constexpr bool k_with_router = k_policy != policy_id::vanilla;

template <class Attn>
constexpr bool k_learned_sink = std::is_same_v<typename Attn::sink_type, sink::learned>;
template <class Attn>
constexpr bool k_elementwise_gate = std::is_same_v<typename Attn::gate_type, gate::elementwise>;

// ---- The calls, per backend ----

#if SINKMOE_BENCH_HAS_UNFUSED
// The unfused entry points are matched by what they accept, so that a change of their signature
// turns into an "error" row naming it rather than a build failure of the whole benchmark.
template <class Attn, class State>
void unfused_forward(State& state, const exec::cuda& ex, const forward_args<element>& fa) {
  if constexpr (requires { unfused::cuda_forward<Attn>(state.context, ex, fa); }) {
    unfused::cuda_forward<Attn>(state.context, ex, fa);
  } else {
    throw error(
        "sinkmoe::unfused::cuda_forward<Attn>(blaslt::context&, const exec::cuda&, "
        "const forward_args<bf16>&) is not callable: update bench/gpu_attention_policies.cu");
  }
}
template <class Attn, class State>
void unfused_backward(State& state, const exec::cuda& ex, const forward_args<element>& fa,
                      const backward_args<element>& ba) {
  if constexpr (requires { unfused::cuda_backward<Attn>(state.context, ex, fa, ba); }) {
    unfused::cuda_backward<Attn>(state.context, ex, fa, ba);
  } else {
    throw error(
        "sinkmoe::unfused::cuda_backward<Attn>(blaslt::context&, const exec::cuda&, "
        "const forward_args<bf16>&, const backward_args<bf16>&) is not callable: update "
        "bench/gpu_attention_policies.cu");
  }
}
#endif

template <class Attn>
void run_forward(const std::string& backend, unfused_state* state, cudaStream_t stream,
                 const forward_args<element>& fa) {
  if (backend == "fused") {
    fused::cuda_forward<Attn>(exec::cuda{stream}, fa);
    return;
  }
#if SINKMOE_BENCH_HAS_UNFUSED
  if (backend == "unfused") {
    unfused_forward<Attn>(*state, exec::cuda{stream}, fa);
    return;
  }
#endif
  (void)state;
  throw error(sinkmoe::detail::concat("backend '", backend, "' is not in this build"));
}

template <class Attn>
void run_backward(const std::string& backend, unfused_state* state, cudaStream_t stream,
                  const forward_args<element>& fa, const backward_args<element>& ba) {
#if SINKMOE_BENCH_HAS_BACKWARD
  if (backend == "fused") {
    fused::cuda_backward<Attn>(exec::cuda{stream}, fa, ba);
    return;
  }
#endif
#if SINKMOE_BENCH_HAS_UNFUSED
  if (backend == "unfused") {
    unfused_backward<Attn>(*state, exec::cuda{stream}, fa, ba);
    return;
  }
#endif
  (void)state, (void)fa, (void)ba, (void)stream;
  throw error(sinkmoe::detail::concat("backward of backend '", backend, "' is not in this build"));
}

// ---- Timed rows ----

measurement row_template(const std::string& backend, const shape_config& s, const char* direction) {
  measurement m;
  m.backend = backend;
  m.policy = k_policy;
  m.shape = s;
  m.direction = direction;
  m.status = "ok";
  return m;
}

template <class Attn>
void measure_bundle(const std::string& backend, const shape_config& s, workspace& ws,
                    unfused_state* state, const bench_options& options,
                    std::vector<measurement>& rows) {
  const forward_args<element> fa = make_forward_args<Attn>(ws, s, k_with_router);
  const backward_args<element> ba = make_backward_args<Attn>(ws, s, k_with_router);
  const auto n = static_cast<std::int64_t>(s.tokens()) * s.heads * s.head_dim;  // BTHD
  const auto n_rows = static_cast<std::int64_t>(s.tokens()) * s.heads;          // BHT
  const std::int64_t e = sizeof(element);
  const std::int64_t gate_bytes = k_elementwise_gate<Attn> ? n * e : 0;
  const std::int64_t sink_bytes = k_learned_sink<Attn> ? s.heads * 4 : 0;
  const std::int64_t router_bytes = k_with_router ? n_rows * 4 : 0;

  // Forward: q, k, v, gate in; out, lse, router out.
  measurement fwd = row_template(backend, s, "forward");
  fwd.io_bytes = 4 * n * e + gate_bytes + sink_bytes + n_rows * 4 + router_bytes;
  bool forward_ok = false;
  try {
    const auto call = [&] { run_forward<Attn>(backend, state, ws.stream, fa); };
    // One call first: lazy module loading and plan creation are not the call's workspace.
    call();
    fwd.workspace_bytes = device_memory_taken(call, ws.stream);
    const timing t = time_on_stream(call, options, ws.stream);
    fwd.ms_median = t.ms_median, fwd.ms_min = t.ms_min, fwd.ms_max = t.ms_max, fwd.runs = t.runs;
    fwd.tflops = s.forward_flops() / (t.ms_median * 1e-3) / 1e12;
    fwd.nonfinite_outputs =
        count_nonfinite(ws.out.data(), static_cast<std::size_t>(n), ws.stream) +
        count_nonfinite(ws.lse.data(), static_cast<std::size_t>(n_rows), ws.stream);
    if (k_with_router) {
      fwd.nonfinite_outputs +=
          count_nonfinite(ws.router.data(), static_cast<std::size_t>(n_rows), ws.stream);
    }
    if (fwd.nonfinite_outputs != 0) {
      fwd.status = "error";
      fwd.detail = "NaN or inf in out / lse / router after the timed calls";
    } else {
      forward_ok = true;
    }
  } catch (const std::exception& ex) {
    fwd.status = "error";
    fwd.detail = ex.what();
  }
  rows.push_back(fwd);

  // Backward: q, k, v, gate, out, dout, lse, drouter in; dq, dk, dv, dgate, dsinks out.
  measurement bwd = row_template(backend, s, "backward");
  bwd.io_bytes = 8 * n * e + 2 * gate_bytes + 2 * sink_bytes + n_rows * 4 + router_bytes;
  const char* missing = backend == "fused" ? fused_backward_missing() : unfused_missing();
  if (missing != nullptr) {
    bwd.status = "skipped";
    bwd.detail = missing;
  } else if (!forward_ok) {
    bwd.status = "skipped";
    bwd.detail = "the forward of this row failed";
  } else {
    try {
      run_forward<Attn>(backend, state, ws.stream, fa);  // out and lse of these inputs
      const auto call = [&] { run_backward<Attn>(backend, state, ws.stream, fa, ba); };
      call();
      bwd.workspace_bytes = device_memory_taken(call, ws.stream);
      const timing t = time_on_stream(call, options, ws.stream);
      bwd.ms_median = t.ms_median, bwd.ms_min = t.ms_min, bwd.ms_max = t.ms_max, bwd.runs = t.runs;
      bwd.tflops = s.backward_flops() / (t.ms_median * 1e-3) / 1e12;
      const auto count = [&](const auto* p, std::int64_t size) {
        return count_nonfinite(p, static_cast<std::size_t>(size), ws.stream);
      };
      bwd.nonfinite_outputs =
          count(ws.dq.data(), n) + count(ws.dk.data(), n) + count(ws.dv.data(), n);
      if (k_learned_sink<Attn>) bwd.nonfinite_outputs += count(ws.dsinks.data(), s.heads);
      if (k_elementwise_gate<Attn>) bwd.nonfinite_outputs += count(ws.dgate_logits.data(), n);
      if (bwd.nonfinite_outputs != 0) {
        bwd.status = "error";
        bwd.detail = "NaN or inf in dq / dk / dv / dsinks / dgate_logits after the timed calls";
      }
    } catch (const std::exception& ex) {
      bwd.status = "error";
      bwd.detail = ex.what();
    }
  }
  rows.push_back(bwd);
}

void measure_policy(const std::string& backend, const shape_config& s, workspace& ws,
                    unfused_state* state, const bench_options& options,
                    std::vector<measurement>& rows) {
  if (s.causal) {
    measure_bundle<typename policy_bundle<k_policy, mask::causal>::type>(backend, s, ws, state,
                                                                         options, rows);
  } else {
    measure_bundle<typename policy_bundle<k_policy, mask::none>::type>(backend, s, ws, state,
                                                                       options, rows);
  }
}

// ---- --check: a small problem against the CPU backend ----

/// Host copy of a bf16 tensor: the bits to upload and the (exact) values in double.
struct host_tensor {
  std::vector<std::uint16_t> bits;
  std::vector<double> values;
};

host_tensor random_bf16(std::size_t n, double stddev, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, static_cast<float>(stddev));
  host_tensor t;
  t.bits.resize(n);
  t.values.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    t.bits[i] = arch::detail::float_to_bf16_bits(normal(rng));
    t.values[i] = arch::detail::bf16_bits_to_float(t.bits[i]);
  }
  return t;
}

device_buffer<element> upload(const host_tensor& t) {
  device_buffer<element> d(t.bits.size());
  SINKMOE_CUDA_CHECK(cudaMemcpy(d.data(), t.bits.data(), d.bytes(), cudaMemcpyHostToDevice));
  return d;
}
device_buffer<float> upload(const std::vector<double>& values) {
  std::vector<float> f(values.begin(), values.end());
  device_buffer<float> d(f.size());
  SINKMOE_CUDA_CHECK(cudaMemcpy(d.data(), f.data(), d.bytes(), cudaMemcpyHostToDevice));
  return d;
}
/// A device buffer of n elements poisoned with NaN (all bits set), so unwritten outputs show.
template <class T>
device_buffer<T> poisoned(std::size_t n) {
  device_buffer<T> d(n);
  SINKMOE_CUDA_CHECK(cudaMemset(d.data(), 0xff, d.bytes()));
  return d;
}
std::vector<double> download(const device_buffer<element>& d) {
  std::vector<std::uint16_t> bits(d.size());
  SINKMOE_CUDA_CHECK(cudaMemcpy(bits.data(), d.data(), d.bytes(), cudaMemcpyDeviceToHost));
  std::vector<double> v(bits.size());
  for (std::size_t i = 0; i < bits.size(); ++i) v[i] = arch::detail::bf16_bits_to_float(bits[i]);
  return v;
}
std::vector<double> download(const device_buffer<float>& d) {
  std::vector<float> f(d.size());
  SINKMOE_CUDA_CHECK(cudaMemcpy(f.data(), d.data(), d.bytes(), cudaMemcpyDeviceToHost));
  return {f.begin(), f.end()};
}

/// Compares a GPU tensor with the CPU backend's: passes when every value is finite and
/// max |gpu - cpu| <= rel_tol * max(floor, max |cpu|). Appends one log line; returns "" or the
/// failure.
std::string compare(const std::string& what, const std::vector<double>& gpu,
                    const std::vector<double>& cpu, double rel_tol, double floor,
                    std::vector<std::string>& log) {
  double max_err = 0, max_ref = 0;
  std::size_t worst = 0, nonfinite = 0;
  for (std::size_t i = 0; i < cpu.size(); ++i) {
    if (!std::isfinite(gpu[i])) {
      ++nonfinite;
      continue;
    }
    const double err = std::abs(gpu[i] - cpu[i]);
    if (err > max_err) max_err = err, worst = i;
    max_ref = std::max(max_ref, std::abs(cpu[i]));
  }
  const double bound = rel_tol * std::max(floor, max_ref);
  const bool ok = nonfinite == 0 && max_err <= bound;
  std::ostringstream line;
  line << what << ": max |gpu - cpu| " << max_err << " (index " << worst << ": gpu " << gpu[worst]
       << ", cpu " << cpu[worst] << "), bound " << bound << ", non-finite " << nonfinite << " of "
       << cpu.size() << (ok ? "  ok" : "  FAILED");
  log.push_back(line.str());
  return ok ? std::string() : line.str();
}

// Tolerances of the smoke check. bf16 keeps 8 significant bits (unit roundoff 2^-8); the kernels
// round inputs, P (and dS) and the outputs to bf16, each a relative 2^-8 at most, so 2^-5 of the
// tensor's largest magnitude leaves room for 8 such roundings while any indexing, masking or
// synchronisation fault (errors of the order of the values) still fails. lse and G are fp32
// functions of the same bf16 inputs on both sides: only accumulation order separates them.
constexpr double k_bf16_tolerance = 1.0 / 32;
constexpr double k_fp32_stat_tolerance = 1.0 / 1024;

template <class Attn>
std::string check_bundle(int head_dim, std::vector<std::string>& log) {
  // Tile-boundary length (200 = 3 x 64 + 8), two sequences, a few heads.
  const shape_config s{2, 200, 4, head_dim, false};
  const std::size_t n = static_cast<std::size_t>(s.tokens()) * s.heads * s.head_dim;
  const std::size_t n_rows = static_cast<std::size_t>(s.tokens()) * s.heads;
  std::mt19937_64 rng(0x5eed0000u + static_cast<unsigned>(head_dim) * 7u +
                      static_cast<unsigned>(SINKMOE_BENCH_POLICY));
  const host_tensor q = random_bf16(n, 1.0, rng), k = random_bf16(n, 1.0, rng),
                    v = random_bf16(n, 1.0, rng), gate = random_bf16(n, 2.0, rng),
                    dout = random_bf16(n, 1.0, rng);
  std::vector<double> sinks(static_cast<std::size_t>(s.heads)), drouter(n_rows);
  {
    std::normal_distribution<double> normal(0.0, 2.0);
    for (auto& x : sinks) x = static_cast<float>(normal(rng));  // fp32-representable
    for (auto& x : drouter) x = static_cast<float>(normal(rng));
  }

  // GPU.
  const device_buffer<element> dq_in = upload(q), dk_in = upload(k), dv_in = upload(v),
                               dgate_in = upload(gate), ddout = upload(dout);
  const device_buffer<float> dsinks_in = upload(sinks), ddrouter = upload(drouter);
  auto d_out = poisoned<element>(n);
  auto d_lse = poisoned<float>(n_rows), d_router = poisoned<float>(n_rows);
  forward_args<element> fa{};
  fa.q = bthd<const element>(dq_in.data(), s);
  fa.k = bthd<const element>(dk_in.data(), s);
  fa.v = bthd<const element>(dv_in.data(), s);
  if constexpr (k_learned_sink<Attn>) fa.sinks = {dsinks_in.data(), {s.heads}};
  if constexpr (k_elementwise_gate<Attn>) fa.gate_logits = bthd<const element>(dgate_in.data(), s);
  fa.out = bthd<element>(d_out.data(), s);
  fa.lse = bht<float>(d_lse.data(), s);
  fa.router = bht<float>(d_router.data(), s);
  fused::cuda_forward<Attn>(exec::cuda{nullptr}, fa);
  SINKMOE_CUDA_CHECK(cudaDeviceSynchronize());

  // CPU backend, in double, on the same bf16-rounded inputs.
  std::vector<double> out(n), lse(n_rows), router(n_rows);
  forward_args<double> ha{};
  ha.q = bthd<const double>(q.values.data(), s);
  ha.k = bthd<const double>(k.values.data(), s);
  ha.v = bthd<const double>(v.values.data(), s);
  if constexpr (k_learned_sink<Attn>) ha.sinks = {sinks.data(), {s.heads}};
  if constexpr (k_elementwise_gate<Attn>)
    ha.gate_logits = bthd<const double>(gate.values.data(), s);
  ha.out = bthd<double>(out.data(), s);
  ha.lse = bht<double>(lse.data(), s);
  ha.router = bht<double>(router.data(), s);
  Attn::forward(exec::host{}, ha);

  std::string failures;
  const auto note = [&](std::string f) {
    if (!f.empty()) failures += (failures.empty() ? "" : "; ") + f;
  };
  note(compare("out", download(d_out), out, k_bf16_tolerance, 0.0, log));
  note(compare("lse", download(d_lse), lse, k_fp32_stat_tolerance, 1.0, log));
  note(compare("router", download(d_router), router, k_fp32_stat_tolerance, 1.0, log));

#if SINKMOE_BENCH_HAS_BACKWARD
  auto g_dq = poisoned<element>(n), g_dk = poisoned<element>(n), g_dv = poisoned<element>(n),
       g_dgate = poisoned<element>(n);
  auto g_dsinks = poisoned<float>(static_cast<std::size_t>(s.heads));
  backward_args<element> ba{};
  ba.dout = bthd<const element>(ddout.data(), s);
  ba.drouter = bht<const float>(ddrouter.data(), s);
  ba.dq = bthd<element>(g_dq.data(), s);
  ba.dk = bthd<element>(g_dk.data(), s);
  ba.dv = bthd<element>(g_dv.data(), s);
  if constexpr (k_learned_sink<Attn>) ba.dsinks = {g_dsinks.data(), {s.heads}};
  if constexpr (k_elementwise_gate<Attn>) ba.dgate_logits = bthd<element>(g_dgate.data(), s);
  fused::cuda_backward<Attn>(exec::cuda{nullptr}, fa, ba);
  SINKMOE_CUDA_CHECK(cudaDeviceSynchronize());

  std::vector<double> hdq(n), hdk(n), hdv(n), hdgate(n), hdsinks(static_cast<std::size_t>(s.heads));
  backward_args<double> hb{};
  hb.dout = bthd<const double>(dout.values.data(), s);
  hb.drouter = bht<const double>(drouter.data(), s);
  hb.dq = bthd<double>(hdq.data(), s);
  hb.dk = bthd<double>(hdk.data(), s);
  hb.dv = bthd<double>(hdv.data(), s);
  if constexpr (k_learned_sink<Attn>) hb.dsinks = {hdsinks.data(), {s.heads}};
  if constexpr (k_elementwise_gate<Attn>) hb.dgate_logits = bthd<double>(hdgate.data(), s);
  Attn::backward(exec::host{}, ha, hb);

  note(compare("dq", download(g_dq), hdq, k_bf16_tolerance, 0.0, log));
  note(compare("dk", download(g_dk), hdk, k_bf16_tolerance, 0.0, log));
  note(compare("dv", download(g_dv), hdv, k_bf16_tolerance, 0.0, log));
  if constexpr (k_learned_sink<Attn>) {
    note(compare("dsinks", download(g_dsinks), hdsinks, k_bf16_tolerance, 0.0, log));
  }
  if constexpr (k_elementwise_gate<Attn>) {
    note(compare("dgate_logits", download(g_dgate), hdgate, k_bf16_tolerance, 0.0, log));
  }
#else
  log.push_back(std::string("backward not checked: ") + fused_backward_missing());
#endif
  return failures;
}

std::string check_policy(int head_dim, bool causal, std::vector<std::string>& log) {
  if (causal)
    return check_bundle<typename policy_bundle<k_policy, mask::causal>::type>(head_dim, log);
  return check_bundle<typename policy_bundle<k_policy, mask::none>::type>(head_dim, log);
}

}  // namespace

#if SINKMOE_BENCH_POLICY == 0
policy_entry policy_entry_vanilla() { return {k_policy, &measure_policy, &check_policy}; }
#elif SINKMOE_BENCH_POLICY == 1
policy_entry policy_entry_sink() { return {k_policy, &measure_policy, &check_policy}; }
#elif SINKMOE_BENCH_POLICY == 2
policy_entry policy_entry_gated() { return {k_policy, &measure_policy, &check_policy}; }
#else
policy_entry policy_entry_sink_gated() { return {k_policy, &measure_policy, &check_policy}; }
#endif

}  // namespace sinkmoe::bench
