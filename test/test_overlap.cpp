// Outputs that overlap themselves, each other or an input are refused on every backend
// (include/sinkmoe/core/overlap.hpp, called at the end of validate_forward / validate_backward).
//
// Tried as a user would: one problem (B 2, T 8, H 2, D 64, learned sinks, elementwise gate,
// causal) with every tensor in a buffer of its own, then one view at a time moved onto another
// buffer or given colliding strides. Each call must throw sinkmoe::error naming the argument(s)
// and leave every byte of every buffer as it was. Layouts that share a buffer without sharing an
// element (q, k, v packed as [B, T, 3, H, D]; dq, dk, dv likewise; PyTorch's [B, H, T, D]
// strides; lse and router interleaved; [q | gate] projections; broadcast inputs) must be accepted
// and give bitwise the results of the separate-buffer layout.
//
// Backends: the host backend in float and double; where SINKMOE_TEST_OVERLAP_EMULATED is set
// (Boost.Context), also the fused kernels and the unfused path in bf16 under the host emulation
// of the primitive layer (support/fused_*_emulation.hpp, the unfused algorithm with a host GEMM).
// The sanitized build of this file (overlap_sanitized, -fsanitize=address,undefined; test/
// CMakeLists.txt) sets SINKMOE_TEST_OVERLAP_SANITIZED and leaves out the emulated accepted-layout
// cases, which take seconds under ASan.
#define BOOST_TEST_MODULE overlap
#if SINKMOE_TEST_OVERLAP_EMULATED
#include "support/fused_backward_emulation.hpp"
#include "support/fused_forward_emulation.hpp"
// The emulation headers come first: they select the emulated primitive layer.
#include <sinkmoe/cuda/unfused/algorithm.hpp>

#include "support/emulation_ranges.hpp"
#include "support/unfused_host_gemm.hpp"
#endif

#include <algorithm>
#include <array>
#include <boost/test/unit_test.hpp>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <random>
#include <sinkmoe/attention.hpp>
#include <sinkmoe/core/overlap.hpp>
#include <string>
#include <type_traits>
#include <vector>

#include "support/throws_naming.hpp"

namespace {

namespace sm = sinkmoe;
using sm::index_t;
using attn = sm::attention<sm::sink::learned, sm::gate::elementwise, sm::mask::causal>;

constexpr index_t B = 2, T = 8, H = 2, D = 64;
constexpr index_t HD = H * D;

// ---------------------------------------------------------------------------------------------
// Element conversions (float, double; bf16 where the emulation is built)
// ---------------------------------------------------------------------------------------------

inline double to_double(float x) { return x; }
inline double to_double(double x) { return x; }
template <class E>
E from_double(double x) {
  return static_cast<E>(x);
}
#if SINKMOE_TEST_OVERLAP_EMULATED
inline double to_double(sm::arch::bf16 x) { return sm::arch::to_float(x); }
template <>
inline sm::arch::bf16 from_double<sm::arch::bf16>(double x) {
  return sm::arch::from_float<sm::arch::bf16>(static_cast<float>(x));
}
#endif

template <int R, class F>
void for_each_index(const std::array<index_t, R>& shape, F&& f) {
  index_t n = 1;
  for (index_t e : shape) n *= e;
  for (index_t linear = 0; linear < n; ++linear) {
    std::array<index_t, R> idx{};
    index_t rest = linear;
    for (int d = R - 1; d >= 0; --d) {
      idx[d] = rest % shape[d];
      rest /= shape[d];
    }
    f(idx);
  }
}
template <class T, int R>
index_t offset_of(const sm::tensor_view<T, R>& v,
                  const std::type_identity_t<std::array<index_t, R>>& idx) {
  index_t off = 0;
  for (int d = 0; d < R; ++d) off += idx[d] * v.stride[d];
  return off;
}

/// Writes `values` (row-major over the view's shape) through the view (inputs are const views
/// of the test's own, writable buffers).
template <class T, int R>
void place(const sm::tensor_view<T, R>& v, const std::vector<double>& values) {
  using E = std::remove_const_t<T>;
  E* data = const_cast<E*>(v.data);
  std::size_t i = 0;
  for_each_index<R>(
      v.shape, [&](const auto& idx) { data[offset_of(v, idx)] = from_double<E>(values[i++]); });
}
template <class T, int R>
std::vector<double> gather(const sm::tensor_view<T, R>& v) {
  std::vector<double> out;
  if (v.empty()) return out;
  for_each_index<R>(v.shape,
                    [&](const auto& idx) { out.push_back(to_double(v.data[offset_of(v, idx)])); });
  return out;
}

// ---------------------------------------------------------------------------------------------
// The problem: one buffer per tensor, each large enough for any view of the tests
// ---------------------------------------------------------------------------------------------

enum buffer : int {
  b_q,
  b_k,
  b_v,
  b_sinks,
  b_gate,
  b_out,
  b_lse,
  b_router,
  b_fkm,
  b_dout,
  b_drouter,
  b_dlse,
  b_dq,
  b_dk,
  b_dv,
  b_dsinks,
  b_dgate,
  k_buffers
};
constexpr std::uint8_t k_sentinel_byte = 0x7f;  // a large finite float, double and bf16

struct alignas(256) chunk {
  std::byte bytes[256];
};
// [B, T, 3, H, D] doubles, the largest layout of the tests, and some slack.
constexpr std::size_t k_buffer_chunks = (B * T * 3 * HD * sizeof(double)) / sizeof(chunk) + 2;

/// Inputs in canonical (row-major, default-shape) order.
struct logical_inputs {
  std::vector<double> q, k, v, sinks, gate, dout, drouter, dlse;
};

logical_inputs make_inputs(unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  const auto draw = [&](std::size_t n) {
    std::vector<double> x(n);
    for (double& e : x) e = normal(rng);
    return x;
  };
  const std::size_t rows = B * T * HD, stats = B * H * T;
  return {draw(rows), draw(rows), draw(rows),  draw(H),
          draw(rows), draw(rows), draw(stats), draw(stats)};
}

template <class E>
struct problem {
  using A = sm::accum_t<E>;
  std::array<std::vector<chunk>, k_buffers> mem;
  sm::forward_args<E> fa;
  sm::backward_args<E> ba;

  problem() {
    for (auto& m : mem) {
      m.resize(k_buffer_chunks);
      std::memset(m.data(), k_sentinel_byte, m.size() * sizeof(chunk));
    }
    fa.q = {at<E>(b_q), {B, T, H, D}};
    fa.k = {at<E>(b_k), {B, T, H, D}};
    fa.v = {at<E>(b_v), {B, T, H, D}};
    fa.sinks = {at<A>(b_sinks), {H}};
    fa.gate_logits = {at<E>(b_gate), {B, T, H, D}};
    fa.out = {at<E>(b_out), {B, T, H, D}};
    fa.lse = {at<A>(b_lse), {B, H, T}};
    fa.router = {at<A>(b_router), {B, H, T}};
    fa.first_key_mass = {at<A>(b_fkm), {B, H, T}};
    ba.dout = {at<E>(b_dout), {B, T, H, D}};
    ba.drouter = {at<A>(b_drouter), {B, H, T}};
    ba.dlse = {at<A>(b_dlse), {B, H, T}};
    ba.dq = {at<E>(b_dq), {B, T, H, D}};
    ba.dk = {at<E>(b_dk), {B, T, H, D}};
    ba.dv = {at<E>(b_dv), {B, T, H, D}};
    ba.dsinks = {at<A>(b_dsinks), {H}};
    ba.dgate_logits = {at<E>(b_dgate), {B, T, H, D}};
  }
  problem(const problem&) = delete;
  problem& operator=(const problem&) = delete;

  /// Element `offset` of a buffer, as U.
  template <class U>
  U* at(buffer b, index_t offset = 0) {
    return reinterpret_cast<U*>(mem[b].data()) + offset;
  }
  void place_inputs(const logical_inputs& in) {
    place(fa.q, in.q);
    place(fa.k, in.k);
    place(fa.v, in.v);
    place(fa.sinks, in.sinks);
    place(fa.gate_logits, in.gate);
    place(ba.dout, in.dout);
    place(ba.drouter, in.drouter);
    place(ba.dlse, in.dlse);
  }
  [[nodiscard]] std::vector<std::byte> snapshot() const {
    std::vector<std::byte> all;
    for (const auto& m : mem) {
      const auto* p = reinterpret_cast<const std::byte*>(m.data());
      all.insert(all.end(), p, p + m.size() * sizeof(chunk));
    }
    return all;
  }
};

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

template <class E>
struct host_backend {
  using element = E;
  static void forward(const sm::forward_args<E>& a) { attn::forward(sm::exec::host{1}, a); }
  static void backward(const sm::forward_args<E>& a, const sm::backward_args<E>& g) {
    attn::backward(sm::exec::host{1}, a, g);
  }
};

#if SINKMOE_TEST_OVERLAP_EMULATED
using bf16 = sm::arch::bf16;

struct fused_emulated {
  using element = bf16;
  static void forward(const sm::forward_args<bf16>& a) {
    sm::testing::emulated_fused_forward<attn, int(D)>(a);
  }
  static void backward(const sm::forward_args<bf16>& a, const sm::backward_args<bf16>& g) {
    sm::testing::emulated_fused_backward<attn, int(D)>(a, g);
  }
};

/// The unfused algorithm's device here: host GEMMs, emulated row kernels (as unfused_check.hpp).
struct unfused_device {
  sm::testing::host_gemm gemms;
  std::vector<sm::arch::global_range> ranges;
  void gemm(const sm::unfused::gemm_desc& g) { gemms.gemm(g); }
  template <class Kernel, class Params>
  void launch(const sm::unfused::launch_shape& s, const Params& params) {
    sm::arch::emulator em;
    em.globals = ranges;
    em.launch(s.grid, s.block, s.smem_bytes, Kernel{}, params);
  }
};

/// The unfused path as sinkmoe::unfused::cuda_forward / cuda_backward run it: its validation,
/// then the algorithm (one chunk of T rows) on the emulated device.
struct unfused_emulated {
  using element = bf16;
  static constexpr int k_chunk_rows = int(T);
  static void forward(const sm::forward_args<bf16>& a) {
    const sm::problem_shape shape = sm::unfused::validate_forward<attn>(a);
    const std::size_t bytes =
        sm::unfused::workspace_bytes(shape, k_chunk_rows, sm::unfused::pass::forward);
    std::vector<chunk> ws(bytes / sizeof(chunk) + 1);
    unfused_device dev;
    dev.ranges =
        sm::testing::emulator_for(sm::testing::forward_ranges(a), ws.data(), bytes).globals;
    sm::unfused::forward<attn>(dev, a, shape, reinterpret_cast<std::byte*>(ws.data()),
                               k_chunk_rows);
  }
  static void backward(const sm::forward_args<bf16>& a, const sm::backward_args<bf16>& g) {
    const sm::problem_shape shape = sm::unfused::validate_backward<attn>(a, g);
    const std::size_t bytes =
        sm::unfused::workspace_bytes(shape, k_chunk_rows, sm::unfused::pass::backward);
    std::vector<chunk> ws(bytes / sizeof(chunk) + 1);
    unfused_device dev;
    dev.ranges =
        sm::testing::emulator_for(sm::testing::backward_ranges(a, g), ws.data(), bytes).globals;
    sm::unfused::backward<attn>(dev, a, g, shape, reinterpret_cast<std::byte*>(ws.data()),
                                k_chunk_rows);
  }
};
#endif

// ---------------------------------------------------------------------------------------------
// Refused layouts: one view moved or re-strided on a valid problem whose forward has run
// ---------------------------------------------------------------------------------------------

template <class E>
struct refusal {
  const char* what;
  bool backward;  ///< refused by the backward (else by the forward)
  std::vector<const char*> names;
  std::function<void(problem<E>&, sm::forward_args<E>&, sm::backward_args<E>&)> make;
};

template <class E>
std::vector<refusal<E>> refusals() {
  using A = sm::accum_t<E>;
  using P = problem<E>;
  using F = sm::forward_args<E>;
  using G = sm::backward_args<E>;
  const std::array<index_t, 4> qshape{B, T, H, D};
  const std::array<index_t, 3> sshape{B, H, T};
  const std::array<index_t, 4> packed{T * 3 * HD, 3 * HD, D, 1};  // [B, T, 3, H, D]
  return {
      // forward
      {"out over q",
       false,
       {"forward_args.out may overlap forward_args.q"},
       [=](P& p, F& a, G&) {
         a.out = {p.template at<E>(b_q), qshape};
       }},
      {"lse over router",
       false,
       {"forward_args.lse may overlap forward_args.router"},
       [](P&, F& a, G&) { a.router = a.lse; }},
      {"out with a zero stride",
       false,
       {"forward_args.out may overlap itself", "stride 0"},
       [](P&, F& a, G&) { a.out.stride[1] = 0; }},
      {"out with colliding strides",
       false,
       {"forward_args.out may overlap itself", "[1024, 128, 32, 1]"},
       [](P&, F& a, G&) {
         a.out.stride = {T * HD, HD, D / 2, 1};
       }},
      {"first_key_mass over out (other type)",
       false,
       {"forward_args.out may overlap forward_args.first_key_mass"},
       [=](P& p, F& a, G&) {
         a.first_key_mass = {p.template at<A>(b_out, 8), sshape};
       }},
      {"lse over sinks",
       false,
       {"forward_args.lse may overlap forward_args.sinks"},
       [=](P& p, F& a, G&) {
         a.lse = {p.template at<A>(b_sinks), sshape};
       }},
      {"out interleaved into q's packed rows, half a row off",
       false,
       {"forward_args.out may overlap forward_args.q"},
       [=](P& p, F& a, G&) {
         a.q = {p.template at<E>(b_q), qshape, packed};
         a.k = {p.template at<E>(b_q, HD), qshape, packed};
         a.out = {p.template at<E>(b_q, HD / 2), qshape, packed};
       }},
      // backward
      {"dq over dk",
       true,
       {"backward_args.dq may overlap backward_args.dk"},
       [=](P& p, F&, G& g) {
         g.dk = {p.template at<E>(b_dq), qshape};
       }},
      {"dk over dv",
       true,
       {"backward_args.dk may overlap backward_args.dv"},
       [=](P& p, F&, G& g) {
         g.dv = {p.template at<E>(b_dk, D), qshape};
       }},
      {"dsinks over dq",
       true,
       {"backward_args.dq may overlap backward_args.dsinks"},
       [=](P& p, F&, G& g) {
         g.dsinks = {p.template at<A>(b_dq), {H}};
       }},
      {"dgate_logits over dq",
       true,
       {"backward_args.dq may overlap backward_args.dgate_logits"},
       [](P&, F&, G& g) { g.dgate_logits = g.dq; }},
      {"dq over q",
       true,
       {"backward_args.dq may overlap forward_args.q"},
       [=](P& p, F&, G& g) {
         g.dq = {p.template at<E>(b_q), qshape};
       }},
      {"dv over dout",
       true,
       {"backward_args.dv may overlap backward_args.dout"},
       [=](P& p, F&, G& g) {
         g.dv = {p.template at<E>(b_dout), qshape};
       }},
      {"dk over lse",
       true,
       {"backward_args.dk may overlap forward_args.lse"},
       [=](P& p, F&, G& g) {
         g.dk = {p.template at<E>(b_lse), qshape};
       }},
      {"dgate_logits over the forward's out",
       true,
       {"backward_args.dgate_logits may overlap forward_args.out"},
       [=](P& p, F&, G& g) {
         g.dgate_logits = {p.template at<E>(b_out), qshape};
       }},
      {"dsinks over dlse",
       true,
       {"backward_args.dsinks may overlap backward_args.dlse"},
       [=](P& p, F&, G& g) {
         g.dsinks = {p.template at<A>(b_dlse, 3), {H}};
       }},
      {"dq with a zero head stride",
       true,
       {"backward_args.dq may overlap itself", "stride 0"},
       [](P&, F&, G& g) { g.dq.stride[2] = 0; }},
  };
}

template <class Backend>
void check_refusals() {
  using E = typename Backend::element;
  problem<E> p;
  p.place_inputs(make_inputs(1));
  Backend::forward(p.fa);  // the valid problem: the backward cases need its out and lse
  for (const refusal<E>& c : refusals<E>()) {
    BOOST_TEST_CONTEXT(c.what) {
      sm::forward_args<E> a = p.fa;
      sm::backward_args<E> g = p.ba;
      c.make(p, a, g);
      const std::vector<std::byte> before = p.snapshot();
      std::vector<const char*> names = c.names;
      const auto call = [&] {
        if (c.backward)
          Backend::backward(a, g);
        else
          Backend::forward(a);
      };
      bool named = false;
      switch (names.size()) {  // throws_naming takes an initializer_list
        case 1:
          named = sm::testing::throws_naming(call, {names[0]});
          break;
        case 2:
          named = sm::testing::throws_naming(call, {names[0], names[1]});
          break;
        default:
          BOOST_FAIL("refusal cases name one or two parts");
      }
      BOOST_TEST(named, "no sinkmoe::error naming the arguments");
      BOOST_TEST((p.snapshot() == before), "a refused call wrote into a buffer");
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Accepted layouts: bitwise the separate-buffer results
// ---------------------------------------------------------------------------------------------

struct results {
  std::vector<double> out, lse, router, fkm, dq, dk, dv, dsinks, dgate;
};

template <class E>
using layout_fn = std::function<void(problem<E>&)>;

template <class Backend>
results run_layout(const layout_fn<typename Backend::element>& layout, const logical_inputs& in) {
  using E = typename Backend::element;
  problem<E> p;
  if (layout) layout(p);
  p.place_inputs(in);
  Backend::forward(p.fa);
  Backend::backward(p.fa, p.ba);
  return {
      gather(p.fa.out),         gather(p.fa.lse), gather(p.fa.router), gather(p.fa.first_key_mass),
      gather(p.ba.dq),          gather(p.ba.dk),  gather(p.ba.dv),     gather(p.ba.dsinks),
      gather(p.ba.dgate_logits)};
}

void check_same(const results& got, const results& want) {
  BOOST_TEST(got.out == want.out, boost::test_tools::per_element());
  BOOST_TEST(got.lse == want.lse, boost::test_tools::per_element());
  BOOST_TEST(got.router == want.router, boost::test_tools::per_element());
  BOOST_TEST(got.fkm == want.fkm, boost::test_tools::per_element());
  BOOST_TEST(got.dq == want.dq, boost::test_tools::per_element());
  BOOST_TEST(got.dk == want.dk, boost::test_tools::per_element());
  BOOST_TEST(got.dv == want.dv, boost::test_tools::per_element());
  BOOST_TEST(got.dsinks == want.dsinks, boost::test_tools::per_element());
  BOOST_TEST(got.dgate == want.dgate, boost::test_tools::per_element());
}

template <class Backend>
void check_accepted_layouts() {
  using E = typename Backend::element;
  using A = sm::accum_t<E>;
  using P = problem<E>;
  const std::array<index_t, 4> qshape{B, T, H, D};
  const std::array<index_t, 4> packed{T * 3 * HD, 3 * HD, D, 1};  // [B, T, 3, H, D]
  const std::array<index_t, 4> bhtd{H * T * D, D, T * D, 1};      // PyTorch [B, H, T, D]
  const std::array<index_t, 4> projection{T * H * 2 * D, H * 2 * D, 2 * D, 1};  // [.., H, 2D]
  const logical_inputs in = make_inputs(2);
  const results separate = run_layout<Backend>({}, in);  // every tensor in its own buffer

  const std::vector<std::pair<const char*, layout_fn<E>>> same_values = {
      {"q, k, v packed as [B, T, 3, H, D]",
       [=](P& p) {
         p.fa.q = {p.template at<E>(b_q), qshape, packed};
         p.fa.k = {p.template at<E>(b_q, HD), qshape, packed};
         p.fa.v = {p.template at<E>(b_q, 2 * HD), qshape, packed};
       }},
      {"dq, dk, dv packed as [B, T, 3, H, D]",
       [=](P& p) {
         p.ba.dq = {p.template at<E>(b_dq), qshape, packed};
         p.ba.dk = {p.template at<E>(b_dq, HD), qshape, packed};
         p.ba.dv = {p.template at<E>(b_dq, 2 * HD), qshape, packed};
       }},
      {"PyTorch [B, H, T, D] strides",
       [=](P& p) {
         for (auto* v : {&p.fa.q, &p.fa.k, &p.fa.v, &p.fa.gate_logits, &p.ba.dout})
           v->stride = bhtd;
         for (auto* v : {&p.fa.out, &p.ba.dq, &p.ba.dk, &p.ba.dv, &p.ba.dgate_logits})
           v->stride = bhtd;
       }},
      {"lse and router interleaved as [B, H, T, 2], first_key_mass [B, T, H]",
       [](P& p) {
         p.fa.lse = {p.template at<A>(b_lse), {B, H, T}, {2 * H * T, 2 * T, 2}};
         p.fa.router = {p.template at<A>(b_lse, 1), {B, H, T}, {2 * H * T, 2 * T, 2}};
         p.fa.first_key_mass = {p.template at<A>(b_fkm), {B, H, T}, {T * H, 1, H}};
       }},
      {"[q | gate] and [dq | dgate] projections",
       [=](P& p) {
         p.fa.q = {p.template at<E>(b_q), qshape, projection};
         p.fa.gate_logits = {p.template at<E>(b_q, D), qshape, projection};
         p.ba.dq = {p.template at<E>(b_dq), qshape, projection};
         p.ba.dgate_logits = {p.template at<E>(b_dq, D), qshape, projection};
       }},
  };
  for (const auto& [what, layout] : same_values) {
    BOOST_TEST_CONTEXT(what) { check_same(run_layout<Backend>(layout, in), separate); }
  }

  // Broadcast inputs (zero strides): k and v shared by the batch, one sink logit for every head;
  // against the separate layout on inputs that repeat likewise.
  BOOST_TEST_CONTEXT("broadcast k, v over B and sinks over H") {
    logical_inputs repeated = in;
    for (auto* x : {&repeated.k, &repeated.v})
      std::copy(x->begin(), x->begin() + T * HD, x->begin() + T * HD);
    for (double& s : repeated.sinks) s = repeated.sinks[0];
    const results want = run_layout<Backend>({}, repeated);
    const layout_fn<E> broadcast = [](P& p) {
      p.fa.k.stride[0] = 0;
      p.fa.v.stride[0] = 0;
      p.fa.sinks.stride[0] = 0;
    };
    // place() writes batch 1 over batch 0 through the zero stride: the values of `repeated`.
    check_same(run_layout<Backend>(broadcast, repeated), want);
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The rules themselves (sinkmoe::detail), on views no backend sees
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(rules) {
  namespace d = sm::detail;
  std::vector<float> f(4096);
  const auto self_ok = [](const auto& view) {
    try {
      d::require_no_self_overlap(d::region_of("v", view));
      return true;
    } catch (const sm::error&) {
      return false;
    }
  };
  const auto apart = [](const auto& x, const auto& y) {
    return d::provably_disjoint(d::region_of("x", x), d::region_of("y", y));
  };
  using v2 = sm::tensor_view<float, 2>;
  using v3 = sm::tensor_view<float, 3>;
  // Self-overlap: extent-1 dims ignored, zero stride on extent > 1 refused, sorted strides.
  BOOST_TEST(self_ok(v2{f.data(), {1, 4}, {0, 1}}));
  BOOST_TEST(!self_ok(v2{f.data(), {2, 4}, {0, 1}}));
  BOOST_TEST(self_ok(v2{f.data(), {4, 3}, {1, 4}}));   // column-major
  BOOST_TEST(!self_ok(v2{f.data(), {4, 3}, {1, 3}}));  // 3 < 1 + 3
  BOOST_TEST(self_ok(v2{f.data(), {4, 3}, {4, 1}}));
  BOOST_TEST(!self_ok(v2{f.data(), {3, 3}, {1, 1}}));
  BOOST_TEST(self_ok(v3{f.data(), {2, 3, 4}, {24, 4, 1}}));
  BOOST_TEST(!self_ok(v3{f.data(), {2, 3, 4}, {11, 4, 1}}));  // 11 < 1 + 3 + 8
  BOOST_TEST(self_ok(v3{f.data(), {2, 3, 4}, {12, 4, 1}}));
  // Negative strides are mirrored, not refused.
  BOOST_TEST(self_ok(v2{f.data() + 100, {4, 3}, {-3, 1}}));
  BOOST_TEST(!self_ok(v2{f.data() + 100, {4, 3}, {-2, 1}}));
  BOOST_TEST(self_ok(v2{f.data() + 100, {4, 3}, {-3, -1}}));
  // The message names the view, its shape and strides, and the offending dim.
  BOOST_TEST(sm::testing::throws_naming(
      [&] {
        d::require_no_self_overlap(d::region_of("out", v3{f.data(), {2, 3, 4}, {11, 4, 1}}));
      },
      {"out may overlap itself", "shape [2, 3, 4]", "stride [11, 4, 1]", "dim 0"}));

  // Two views: disjoint byte ranges, interleaving, and element types of different sizes.
  BOOST_TEST(apart(v2{f.data(), {4, 4}}, v2{f.data() + 16, {4, 4}}));
  BOOST_TEST(!apart(v2{f.data(), {4, 4}}, v2{f.data() + 15, {4, 4}}));
  BOOST_TEST(apart(v2{f.data(), {4, 4}, {8, 1}}, v2{f.data() + 4, {4, 4}, {8, 1}}));
  BOOST_TEST(apart(v2{f.data() + 4, {4, 4}, {8, 1}}, v2{f.data(), {4, 4}, {8, 1}}));
  BOOST_TEST(!apart(v2{f.data(), {4, 4}, {8, 1}}, v2{f.data() + 3, {4, 4}, {8, 1}}));
  BOOST_TEST(!apart(v2{f.data(), {4, 5}, {8, 1}}, v2{f.data() + 4, {4, 4}, {8, 1}}));
  BOOST_TEST(apart(v2{f.data(), {4, 4}, {16, 1}}, v2{f.data() + 4, {2, 4}, {32, 1}}));
  // Refused though disjoint (floats 0-3, 16-19, ... and 4-7, 28-31): the strides 16 and 24 are
  // not multiples of one lattice, and the test is only sufficient.
  BOOST_TEST(!apart(v2{f.data(), {4, 4}, {16, 1}}, v2{f.data() + 4, {2, 4}, {24, 1}}));
  // A single block inside a hole of a strided view: only the second role finds the lattice.
  BOOST_TEST(apart(v2{f.data() + 4, {1, 4}}, v2{f.data(), {3, 4}, {8, 1}}));
  // float and double: an 8-byte double column between 4-float rows of a 6-float pitch.
  const v2 rows{f.data(), {8, 4}, {6, 1}};  // bytes [24 r, 24 r + 16)
  std::byte* const base = reinterpret_cast<std::byte*>(f.data());
  const sm::tensor_view<double, 1> column{reinterpret_cast<double*>(base + 16), {8}, {3}};
  const sm::tensor_view<double, 1> shifted{reinterpret_cast<double*>(base + 8), {8}, {3}};
  BOOST_TEST(apart(rows, column));
  BOOST_TEST(!apart(rows, shifted));
  // Zero elements and not-given views never overlap; zero strides in an input are its bytes.
  BOOST_TEST(apart(v2{f.data(), {0, 4}}, v2{f.data(), {4, 4}}));
  BOOST_TEST(apart(v2{}, v2{f.data(), {4, 4}}));
  BOOST_TEST(apart(v3{f.data(), {2, 4, 4}, {0, 8, 1}}, v2{f.data() + 4, {4, 4}, {8, 1}}));
  BOOST_TEST(!apart(v3{f.data(), {2, 4, 4}, {0, 8, 1}}, v2{f.data() + 2, {4, 4}, {8, 1}}));
  // [q | gate] per head, then k, then v, in rows of R = H (d + 1) + 2 H d elements (tiny_lm's
  // headwise-gated projection): R = 196 is no multiple of d + 1 = 17, so the gate and q need the
  // second level of the lattice test.
  {
    constexpr index_t h = 4, dd = 16, w = h * dd, r = h * (dd + 1) + 2 * w, s = 3;
    std::vector<float> proj(2 * s * r);
    const std::array<index_t, 4> qg{s * r, r, dd + 1, 1}, kv{s * r, r, dd, 1};
    const sm::tensor_view<float, 4> dq{proj.data(), {2, s, h, dd}, qg};
    const sm::tensor_view<float, 4> dg{proj.data() + dd, {2, s, h, 1}, qg};
    const sm::tensor_view<float, 4> dk{proj.data() + h * (dd + 1), {2, s, h, dd}, kv};
    const sm::tensor_view<float, 4> dv{proj.data() + h * (dd + 1) + w, {2, s, h, dd}, kv};
    BOOST_TEST(apart(dq, dg));
    BOOST_TEST(apart(dg, dq));
    BOOST_TEST(apart(dq, dk));
    BOOST_TEST(apart(dq, dv));
    BOOST_TEST(apart(dg, dk));
    BOOST_TEST(apart(dg, dv));
    BOOST_TEST(apart(dk, dv));
    // One element further, each head's gate is the next head's first q (or dk's first element).
    BOOST_TEST(!apart(dq, sm::tensor_view<float, 4>{proj.data() + dd + 1, {2, s, h, 1}, qg}));
  }
  // The pair message names both views with their layouts.
  BOOST_TEST(sm::testing::throws_naming(
      [&] {
        d::require_disjoint(d::region_of("forward_args.lse", v2{f.data(), {4, 4}}),
                            d::region_of("forward_args.router", v2{f.data() + 2, {4, 4}}));
      },
      {"forward_args.lse may overlap forward_args.router", "shape [4, 4]", "stride [4, 1]",
       "bytes ["}));
}

BOOST_AUTO_TEST_CASE(rules_agree_with_brute_force) {
  // Random small views (rank 1 to 3, extents 1 to 4, strides -6 to 6, float or double, in one
  // byte buffer): what the tests accept must hold for the bytes the views actually address.
  namespace d = sm::detail;
  std::vector<double> storage(512);
  auto* const middle = reinterpret_cast<std::byte*>(storage.data()) + 2048;
  std::mt19937 rng(7);
  const auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  struct random_view {
    d::byte_region region;
    std::vector<std::int64_t> bytes;  // every byte of every element, offsets from `middle`
    bool distinct = true;             // no two indices address the same element
  };
  const auto make = [&](const char* name) {
    const int rank = pick(1, 3);
    const bool is_double = pick(0, 1) == 1;
    const std::int64_t elem = is_double ? 8 : 4;
    std::array<index_t, 3> shape{1, 1, 1}, stride{0, 0, 0};
    for (int i = 0; i < rank; ++i) shape[i] = pick(1, 4), stride[i] = pick(-6, 6);
    std::byte* data = middle + 4 * pick(0, 24);
    random_view v;
    v.region =
        is_double
            ? d::region_of(
                  name, sm::tensor_view<double, 3>{reinterpret_cast<double*>(data), shape, stride})
            : d::region_of(
                  name, sm::tensor_view<float, 3>{reinterpret_cast<float*>(data), shape, stride});
    std::vector<std::int64_t> starts;
    for_each_index<3>(shape, [&](const auto& idx) {
      std::int64_t off = data - middle;
      for (int i = 0; i < 3; ++i) off += idx[i] * stride[i] * elem;
      starts.push_back(off);
    });
    std::sort(starts.begin(), starts.end());
    v.distinct = std::adjacent_find(starts.begin(), starts.end()) == starts.end();
    for (std::int64_t s : starts)
      for (std::int64_t b = 0; b < elem; ++b) v.bytes.push_back(s + b);
    std::sort(v.bytes.begin(), v.bytes.end());
    return v;
  };
  int self_accepted = 0, pairs_accepted = 0, pairs_disjoint = 0, unsound = 0;
  for (int trial = 0; trial < 4000; ++trial) {
    const random_view a = make("a"), b = make("b");
    bool self_ok = true;
    try {
      d::require_no_self_overlap(a.region);
    } catch (const sm::error&) {
      self_ok = false;
    }
    if (self_ok) {
      ++self_accepted;
      if (!a.distinct) ++unsound;
    }
    std::vector<std::int64_t> common;
    std::set_intersection(a.bytes.begin(), a.bytes.end(), b.bytes.begin(), b.bytes.end(),
                          std::back_inserter(common));
    if (common.empty()) ++pairs_disjoint;
    if (d::provably_disjoint(a.region, b.region)) {
      ++pairs_accepted;
      if (!common.empty()) ++unsound;
    }
  }
  BOOST_TEST(unsound == 0);
  BOOST_TEST_MESSAGE("self-overlap accepted " << self_accepted << " of 4000; pairs proven disjoint "
                                              << pairs_accepted << " of " << pairs_disjoint
                                              << " disjoint");
  BOOST_TEST(self_accepted > 100);  // the sample exercises both answers
  BOOST_TEST(pairs_accepted > 100);
}

BOOST_AUTO_TEST_CASE(varlen_offsets_are_inputs) {
  // An output over cu_seqlens (host pointers on exec::host) is refused; a packed batch of 2
  // whose offsets sit inside the buffer of first_key_mass.
  using E = float;
  std::vector<E> q(16 * HD), k(16 * HD), v(16 * HD), gate(16 * HD), out(16 * HD);
  std::vector<float> sinks(H), stats(H * 16), fkm(H * 16);
  std::int32_t* cu = reinterpret_cast<std::int32_t*>(fkm.data() + 5);
  cu[0] = 0, cu[1] = 7, cu[2] = 16;
  sm::forward_args<E> a;
  a.q = {q.data(), {1, 16, H, D}};
  a.k = {k.data(), {1, 16, H, D}};
  a.v = {v.data(), {1, 16, H, D}};
  a.sinks = {sinks.data(), {H}};
  a.gate_logits = {gate.data(), {1, 16, H, D}};
  a.out = {out.data(), {1, 16, H, D}};
  a.lse = {stats.data(), {1, H, 16}};
  a.varlen = {cu, cu, 2};
  BOOST_CHECK_NO_THROW(attn::validate(a));
  a.first_key_mass = {fkm.data(), {1, H, 16}};
  const std::vector<float> before = fkm;
  BOOST_TEST(
      sm::testing::throws_naming([&] { attn::forward(sm::exec::host{1}, a); },
                                 {"forward_args.first_key_mass may overlap varlen.cu_seqlens_q"}));
  BOOST_TEST(std::memcmp(fkm.data(), before.data(), fkm.size() * sizeof(float)) == 0);
}

BOOST_AUTO_TEST_CASE(host_float_refusals) { check_refusals<host_backend<float>>(); }
BOOST_AUTO_TEST_CASE(host_double_refusals) { check_refusals<host_backend<double>>(); }
BOOST_AUTO_TEST_CASE(host_float_accepted_layouts) { check_accepted_layouts<host_backend<float>>(); }
BOOST_AUTO_TEST_CASE(host_double_accepted_layouts) {
  check_accepted_layouts<host_backend<double>>();
}

#if SINKMOE_TEST_OVERLAP_EMULATED
BOOST_AUTO_TEST_CASE(fused_emulated_refusals) { check_refusals<fused_emulated>(); }
BOOST_AUTO_TEST_CASE(unfused_emulated_refusals) { check_refusals<unfused_emulated>(); }
#if !SINKMOE_TEST_OVERLAP_SANITIZED
BOOST_AUTO_TEST_CASE(fused_emulated_accepted_layouts) { check_accepted_layouts<fused_emulated>(); }
BOOST_AUTO_TEST_CASE(unfused_emulated_accepted_layouts) {
  check_accepted_layouts<unfused_emulated>();
}
#endif
#endif
