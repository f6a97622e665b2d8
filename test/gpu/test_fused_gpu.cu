// The fused CUDA kernels on a real GPU, against the CPU backend:
//  - forward (sinkmoe::fused::cuda_forward) and backward (cuda_backward) for five policy
//    bundles (vanilla causal; learned sink with a sliding window; elementwise gate; learned sink
//    + headwise gate with route::product; fixed sink with a streaming mask), bf16 and fp16, head
//    dims 64 and 128, GQA, Tq != Tk, variable-length batches, lengths 1/63/64/65/130/1000,
//    within FlashAttention's rule against the fp64 CPU backend on the same rounded inputs (the
//    emulated suites' rule and problems: support/gpu_reference.hpp, test/gpu/gpu_reference.cpp);
//  - the backward is bitwise repeatable (run twice, compare bits);
//  - device balancing (balance::device_balancer) against balance::importance_cv2, bitwise
//    repeatable;
//  - sanitizer_case: one small forward + backward + balancing, for compute-sanitizer
//    (bench/device_check.sh runs it with --run_test=sanitizer_case).
// Without a GPU (cudaGetDeviceCount reports none or fails), every case is skipped with the
// reason and the program exits 0.
//
// Instantiations (nvcc compile time): six (policy, element) pairs, each compiled by
// cuda_forward / cuda_backward for head dims 64 and 128: the five policies in bf16, plus the
// learned-sink sliding window in fp16. CMake builds this unit for the first entry of
// CMAKE_CUDA_ARCHITECTURES only (sm_90a by default: the GPU it is meant for).
#define BOOST_TEST_MODULE fused_gpu
#include <algorithm>
#include <array>
#include <boost/test/unit_test.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <sinkmoe/attention.hpp>
#include <sinkmoe/balance/balance.hpp>
#include <sinkmoe/cuda/backward.cuh>
#include <sinkmoe/cuda/balance.cuh>
#include <sinkmoe/cuda/check.hpp>
#include <sinkmoe/cuda/exec.hpp>
#include <sinkmoe/cuda/forward.cuh>
#include <string>
#include <type_traits>
#include <vector>

#include "support/gpu_reference.hpp"

namespace sm = sinkmoe;
namespace arch = sinkmoe::arch;
namespace gt = sinkmoe::testing::gpu;
namespace bal = sinkmoe::balance;

namespace {

// ---- Skipping without a GPU ----

/// Why the GPU cases cannot run here, or "" when a CUDA device is present.
std::string missing_gpu_reason() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess)
    return std::string("no usable CUDA device: cudaGetDeviceCount failed with ") +
           cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")";
  if (count == 0) return "no CUDA device present (cudaGetDeviceCount reports 0)";
  return "";
}

/// Precondition of every case: a CUDA device is present (else the reason, and the case is
/// reported as skipped).
boost::test_tools::assertion_result gpu_available(boost::unit_test::test_unit_id) {
  const std::string reason = missing_gpu_reason();
  boost::test_tools::assertion_result result(reason.empty());
  result.message() << reason;
  return result;
}

/// Says once, on stdout, why every case is skipped (Boost.Test reports skips only at higher
/// log levels; ctest -V shows this line).
struct announce_skip {
  announce_skip() {
    const std::string reason = missing_gpu_reason();
    if (!reason.empty()) std::printf("test_fused_gpu: every case skipped: %s\n", reason.c_str());
  }
};
BOOST_TEST_GLOBAL_FIXTURE(announce_skip);

// ---- Device memory ----

/// An owned device array of n T's.
template <class T>
class device_array {
 public:
  device_array() = default;
  explicit device_array(std::size_t n) : n_(n) {
    if (n_ > 0) SINKMOE_CUDA_CHECK(cudaMalloc(&ptr_, n_ * sizeof(T)));
  }
  explicit device_array(const std::vector<T>& host) : device_array(host.size()) { upload(host); }
  device_array(const device_array&) = delete;
  device_array& operator=(const device_array&) = delete;
  device_array(device_array&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), n_(o.n_) {}
  device_array& operator=(device_array&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(n_, o.n_);
    return *this;
  }
  ~device_array() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  T* get() const { return ptr_; }
  std::size_t size() const { return n_; }
  void upload(const std::vector<T>& host) {
    if (n_ > 0)
      SINKMOE_CUDA_CHECK(cudaMemcpy(ptr_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  /// Every byte 0xff: NaN for float, bf16 and fp16, so unwritten values show up.
  void fill_nan() {
    if (n_ > 0) SINKMOE_CUDA_CHECK(cudaMemset(ptr_, 0xff, n_ * sizeof(T)));
  }
  std::vector<T> download() const {
    std::vector<T> host(n_);
    if (n_ > 0)
      SINKMOE_CUDA_CHECK(cudaMemcpy(host.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }

 private:
  T* ptr_ = nullptr;
  std::size_t n_ = 0;
};

template <class E>
std::vector<E> to_element(const std::vector<double>& x) {
  std::vector<E> y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = arch::from_float<E>(static_cast<float>(x[i]));
  return y;
}
template <class T>
std::vector<double> to_double(const std::vector<T>& x) {
  std::vector<double> y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = static_cast<double>(arch::to_float(x[i]));
  return y;
}
std::vector<float> to_float32(const std::vector<double>& x) { return {x.begin(), x.end()}; }

/// Bytes of a device array, for bitwise comparisons.
template <class T>
std::vector<unsigned char> bits_of(const device_array<T>& a) {
  const std::vector<T> host = a.download();
  const auto* p = reinterpret_cast<const unsigned char*>(host.data());
  return {p, p + host.size() * sizeof(T)};
}

// ---- One problem on the device ----

template <gt::policy P>
struct policy_type;
template <>
struct policy_type<gt::policy::vanilla_causal> {
  using type = sm::attention<sm::sink::none, sm::gate::none, sm::mask::causal>;
};
template <>
struct policy_type<gt::policy::sink_sliding_window> {
  using type = sm::attention<sm::sink::learned, sm::gate::none, sm::mask::sliding_window>;
};
template <>
struct policy_type<gt::policy::gated_causal> {
  using type = sm::attention<sm::sink::none, sm::gate::elementwise, sm::mask::causal>;
};
template <>
struct policy_type<gt::policy::sink_gate_product> {
  using type =
      sm::attention<sm::sink::learned, sm::gate::headwise, sm::mask::none, sm::route::product>;
};
template <>
struct policy_type<gt::policy::streaming_fixed_sink> {
  using type = sm::attention<sm::sink::fixed, sm::gate::none, sm::mask::streaming>;
};

template <class E>
constexpr gt::element element_of() {
  return std::is_same_v<E, arch::bf16> ? gt::element::bf16 : gt::element::fp16;
}

/// Device tensors of a problem, its forward_args / backward_args, and runs.
template <gt::policy P, class E>
struct device_problem {
  using Attn = typename policy_type<P>::type;
  using Sink = typename Attn::sink_type;
  using Gate = typename Attn::gate_type;

  gt::problem_data data;
  device_array<E> q, k, v, gate, out, dout, dq, dk, dv, dgate;
  device_array<float> sinks, lse, router, first_key_mass, drouter, dlse, dsinks;
  device_array<std::int32_t> cu_q, cu_k;
  sm::forward_args<E> fa;
  sm::backward_args<E> ba;

  device_problem(const gt::spec& s, int head_dim)
      : data(gt::make_problem(P, element_of<E>(), s, head_dim)) {
    const gt::problem_data& d = data;
    const int B = d.bt, TQ = d.tq_total, Hq = d.Hq;
    const std::array<sm::index_t, 4> q_shape{B, TQ, Hq, d.D}, kv_shape{B, d.tk_total, d.Hkv, d.D},
        gate_shape{B, TQ, Hq, d.dg};
    const std::array<sm::index_t, 3> stat_shape{B, Hq, TQ};
    q = device_array<E>(to_element<E>(d.q));
    k = device_array<E>(to_element<E>(d.k));
    v = device_array<E>(to_element<E>(d.v));
    out = device_array<E>(d.q.size());
    lse = device_array<float>(std::size_t(B) * Hq * TQ);
    router = device_array<float>(lse.size());
    first_key_mass = device_array<float>(lse.size());
    fa.q = {q.get(), q_shape};
    fa.k = {k.get(), kv_shape};
    fa.v = {v.get(), kv_shape};
    if constexpr (std::is_same_v<Sink, sm::sink::learned>) {
      sinks = device_array<float>(to_float32(d.sinks));
      fa.sinks = {sinks.get(), {Hq}};
    }
    if constexpr (Gate::enabled) {
      gate = device_array<E>(to_element<E>(d.gate_logits));
      fa.gate_logits = {gate.get(), gate_shape};
    }
    fa.out = {out.get(), q_shape};
    fa.lse = {lse.get(), stat_shape};
    fa.router = {router.get(), stat_shape};
    fa.first_key_mass = {first_key_mass.get(), stat_shape};
    fa.params = d.params;
    if (!d.cu_q.empty()) {
      cu_q = device_array<std::int32_t>(d.cu_q);
      cu_k = device_array<std::int32_t>(d.cu_k);
      fa.varlen = {cu_q.get(), cu_k.get(), static_cast<int>(d.cu_q.size()) - 1};
    }
    dout = device_array<E>(to_element<E>(d.dout));
    drouter = device_array<float>(to_float32(d.drouter));
    dlse = device_array<float>(to_float32(d.dlse));
    dq = device_array<E>(d.q.size());
    dk = device_array<E>(d.k.size());
    dv = device_array<E>(d.v.size());
    ba.dout = {dout.get(), q_shape};
    ba.drouter = {drouter.get(), stat_shape};
    ba.dlse = {dlse.get(), stat_shape};
    ba.dq = {dq.get(), q_shape};
    ba.dk = {dk.get(), kv_shape};
    ba.dv = {dv.get(), kv_shape};
    if constexpr (Sink::trainable) {
      dsinks = device_array<float>(std::size_t(Hq));
      ba.dsinks = {dsinks.get(), {Hq}};
    }
    if constexpr (Gate::enabled) {
      dgate = device_array<E>(d.gate_logits.size());
      ba.dgate_logits = {dgate.get(), gate_shape};
    }
  }

  gt::forward_outputs forward(const sm::exec::cuda& ex) {
    for (auto* a : {&lse, &router, &first_key_mass}) a->fill_nan();
    out.fill_nan();
    sm::fused::cuda_forward<Attn>(ex, fa);
    SINKMOE_CUDA_CHECK(cudaStreamSynchronize(ex.stream));
    return {to_double(out.download()), to_double(lse.download()), to_double(router.download()),
            to_double(first_key_mass.download())};
  }

  gt::gradients backward(const sm::exec::cuda& ex) {
    for (auto* a : {&dq, &dk, &dv, &dgate}) a->fill_nan();
    dsinks.fill_nan();
    sm::fused::cuda_backward<Attn>(ex, fa, ba);
    SINKMOE_CUDA_CHECK(cudaStreamSynchronize(ex.stream));
    gt::gradients g{
        to_double(dq.download()), to_double(dk.download()), to_double(dv.download()), {}, {}};
    if constexpr (Sink::trainable) g.dsinks = to_double(dsinks.download());
    if constexpr (Gate::enabled) g.dgate = to_double(dgate.download());
    return g;
  }
  /// The bytes of every gradient.
  std::vector<unsigned char> gradient_bits() const {
    std::vector<unsigned char> bits;
    for (const auto* a : {&dq, &dk, &dv, &dgate}) {
      const std::vector<unsigned char> b = bits_of(*a);
      bits.insert(bits.end(), b.begin(), b.end());
    }
    const std::vector<unsigned char> b = bits_of(dsinks);
    bits.insert(bits.end(), b.begin(), b.end());
    return bits;
  }
};

/// Forward (and backward where cuda_backward exists) of one case, checked against the CPU
/// backend.
template <gt::policy P, class E, int HeadDim>
void run_case(const gt::spec& s, const std::string& label) {
  BOOST_TEST_CONTEXT(gt::policy_name(P) << (std::is_same_v<E, arch::bf16> ? " bf16" : " fp16")
                                        << " D" << HeadDim << " " << label << " seed " << s.seed) {
    const sm::exec::cuda ex{};
    device_problem<P, E> pb(s, HeadDim);
    const gt::forward_outputs fwd = pb.forward(ex);
    const double forward_ratio = gt::check_forward(P, element_of<E>(), s, HeadDim, fwd);
    BOOST_TEST_MESSAGE(label << ": forward worst ratio " << forward_ratio);
    const gt::gradients grads = pb.backward(ex);
    const double backward_ratio = gt::check_backward(P, element_of<E>(), s, HeadDim, fwd, grads);
    BOOST_TEST_MESSAGE(label << ": backward worst ratio " << backward_ratio);
  }
}

gt::spec dense(int B, int Tq, int Tk, int Hq, int Hkv, unsigned seed, int window = 1,
               int sink_tokens = 0, double fixed_sink = 0.0) {
  gt::spec s;
  s.B = B, s.Tq = Tq, s.Tk = Tk, s.Hq = Hq, s.Hkv = Hkv, s.seed = seed;
  s.window = window, s.sink_tokens = sink_tokens, s.fixed_sink = fixed_sink;
  return s;
}

gt::spec varlen(std::vector<int> q_len, std::vector<int> k_len, int Hq, int Hkv, unsigned seed,
                int window = 1, int sink_tokens = 0, double fixed_sink = 0.0) {
  gt::spec s = dense(1, 1, 1, Hq, Hkv, seed, window, sink_tokens, fixed_sink);
  s.q_len = std::move(q_len);
  s.k_len = std::move(k_len);
  return s;
}

/// The shapes every policy runs at its main (dtype, head dim): tile-boundary lengths
/// 1/63/64/65/130, Tq != Tk both ways, GQA 2 and 4, a varlen batch, and one 1000-token case.
template <gt::policy P, class E, int HeadDim>
void run_shapes(unsigned seed) {
  run_case<P, E, HeadDim>(dense(2, 130, 130, 4, 2, seed, 64, 4, 5.0), "B2 T130 GQA2");
  run_case<P, E, HeadDim>(dense(1, 1, 65, 4, 1, seed + 1, 3, 1, -30.0), "Tq1 Tk65 MQA");
  run_case<P, E, HeadDim>(dense(2, 64, 63, 4, 4, seed + 2, 1, 0, 30.0), "Tq64 Tk63");
  run_case<P, E, HeadDim>(dense(1, 65, 130, 8, 2, seed + 3, 64, 2, 0.0), "Tq65 Tk130 GQA4");
  run_case<P, E, HeadDim>(varlen({1, 63, 64, 65, 130}, {63, 1, 64, 130, 65}, 4, 2, seed + 4, 3, 1),
                          "varlen");
  run_case<P, E, HeadDim>(dense(1, 1000, 1000, 2, 1, seed + 5, 64, 4, 5.0), "T1000");
}

}  // namespace

// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(fused_kernels, *boost::unit_test::precondition(gpu_available))

BOOST_AUTO_TEST_CASE(vanilla_causal_bf16_d128) {
  run_shapes<gt::policy::vanilla_causal, arch::bf16, 128>(100);
}
BOOST_AUTO_TEST_CASE(vanilla_causal_bf16_d64) {
  run_shapes<gt::policy::vanilla_causal, arch::bf16, 64>(200);
}
BOOST_AUTO_TEST_CASE(sink_sliding_window_bf16_d128) {
  run_shapes<gt::policy::sink_sliding_window, arch::bf16, 128>(400);
}
BOOST_AUTO_TEST_CASE(sink_sliding_window_fp16_d128) {
  run_shapes<gt::policy::sink_sliding_window, arch::fp16, 128>(500);
}
BOOST_AUTO_TEST_CASE(sink_sliding_window_fp16_d64) {
  run_shapes<gt::policy::sink_sliding_window, arch::fp16, 64>(550);
}
BOOST_AUTO_TEST_CASE(gated_causal_bf16_d128) {
  run_shapes<gt::policy::gated_causal, arch::bf16, 128>(600);
}
BOOST_AUTO_TEST_CASE(sink_gate_product_bf16_d64) {
  run_shapes<gt::policy::sink_gate_product, arch::bf16, 64>(700);
}
BOOST_AUTO_TEST_CASE(streaming_fixed_sink_bf16_d128) {
  run_shapes<gt::policy::streaming_fixed_sink, arch::bf16, 128>(800);
}

BOOST_AUTO_TEST_CASE(backward_bitwise_repeatable) {
  const sm::exec::cuda ex{};
  const auto twice = [&](auto& pb, const char* what) {
    pb.forward(ex);
    pb.backward(ex);
    const std::vector<unsigned char> first = pb.gradient_bits();
    pb.backward(ex);
    BOOST_TEST((pb.gradient_bits() == first), what << ": a second backward gave different bits");
  };
  device_problem<gt::policy::sink_gate_product, arch::bf16> product(
      dense(2, 1000, 1000, 8, 2, 901, 64, 4, 5.0), 64);
  twice(product, "learned sink + headwise gate, bf16 D64, B2 T1000 GQA4");
  device_problem<gt::policy::gated_causal, arch::bf16> gated(
      varlen({1, 63, 64, 65, 130, 1000}, {63, 1, 64, 130, 65, 1000}, 4, 2, 902), 128);
  twice(gated, "elementwise gate, bf16 D128, varlen");
}

namespace {

/// A varlen problem's sequences laid out as a padded [B, T, H, D] batch (forward_args::seqlens):
/// the fused kernels must give each sequence's real rows what they give it packed, and the
/// padding rows their fixed values (out 0, lse the sink logit or -inf, G 0, zero gradients).
template <gt::policy P, class E>
void check_padded_equals_varlen(device_problem<P, E>& packed, sm::padding_side side,
                                const char* what) {
  using Attn = typename device_problem<P, E>::Attn;
  const sm::exec::cuda ex{};
  const gt::forward_outputs want_fwd = packed.forward(ex);
  const gt::problem_data& d = packed.data;
  const int B = static_cast<int>(d.cu_q.size()) - 1, Hq = d.Hq, Hkv = d.Hkv, D = d.D;
  int Tq = 0, Tk = 0;
  std::vector<std::int32_t> len_q, len_k;
  for (int b = 0; b < B; ++b) {
    len_q.push_back(d.cu_q[b + 1] - d.cu_q[b]);
    len_k.push_back(d.cu_k[b + 1] - d.cu_k[b]);
    Tq = std::max(Tq, len_q.back());
    Tk = std::max(Tk, len_k.back());
  }
  const auto begin = [&](int len, int total) {
    return side == sm::padding_side::left ? total - len : 0;
  };
  // Padded tensor row (b, t) <- packed row cu[b] + t - begin, for `width` values per row.
  const auto pad = [&](const std::vector<double>& x, const std::vector<std::int32_t>& cu,
                       const std::vector<std::int32_t>& len, int T, std::size_t width) {
    std::vector<double> y(std::size_t(B) * T * width, 0.0);
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < len[b]; ++t)
        std::copy_n(x.begin() + (std::size_t(cu[b]) + t) * width, width,
                    y.begin() + (std::size_t(b) * T + begin(len[b], T) + t) * width);
    return y;
  };
  const std::size_t qw = std::size_t(Hq) * D, kw = std::size_t(Hkv) * D;
  device_array<E> q(to_element<E>(pad(d.q, d.cu_q, len_q, Tq, qw)));
  device_array<E> k(to_element<E>(pad(d.k, d.cu_k, len_k, Tk, kw)));
  device_array<E> v(to_element<E>(pad(d.v, d.cu_k, len_k, Tk, kw)));
  device_array<E> dout(to_element<E>(pad(d.dout, d.cu_q, len_q, Tq, qw)));
  device_array<E> out(std::size_t(B) * Tq * qw), dq(out.size()), dk(std::size_t(B) * Tk * kw),
      dv(dk.size());
  device_array<float> lse(std::size_t(B) * Hq * Tq), router(lse.size()), dsinks(Hq);
  device_array<std::int32_t> lengths_q(len_q), lengths_k(len_k);
  for (auto* a : {&out, &dq, &dk, &dv}) a->fill_nan();
  lse.fill_nan();
  router.fill_nan();
  sm::forward_args<E> fa = packed.fa;
  fa.varlen = {};
  fa.q = {q.get(), {B, Tq, Hq, D}};
  fa.k = {k.get(), {B, Tk, Hkv, D}};
  fa.v = {v.get(), {B, Tk, Hkv, D}};
  fa.gate_logits = {};
  fa.out = {out.get(), {B, Tq, Hq, D}};
  fa.lse = {lse.get(), {B, Hq, Tq}};
  fa.router = {router.get(), {B, Hq, Tq}};
  fa.first_key_mass = {};
  fa.seqlens = {{lengths_q.get(), {B}}, {lengths_k.get(), {B}}, side};
  sm::backward_args<E> ba;
  ba.dout = {dout.get(), {B, Tq, Hq, D}};
  ba.dq = {dq.get(), {B, Tq, Hq, D}};
  ba.dk = {dk.get(), {B, Tk, Hkv, D}};
  ba.dv = {dv.get(), {B, Tk, Hkv, D}};
  if constexpr (Attn::sink_type::trainable) ba.dsinks = {dsinks.get(), {Hq}};
  sm::fused::cuda_forward<Attn>(ex, fa);
  sm::fused::cuda_backward<Attn>(ex, fa, ba);
  SINKMOE_CUDA_CHECK(cudaStreamSynchronize(ex.stream));

  // Real rows: the forward, row for row (the padded run's cotangents differ from the packed
  // run's). Padding: every output and gradient exactly.
  const std::vector<double> got_out = to_double(out.download()),
                            got_lse = to_double(lse.download()),
                            got_router = to_double(router.download()),
                            got_dv = to_double(dv.download()), got_dq = to_double(dq.download());
  const std::vector<double> want_out = pad(want_fwd.out, d.cu_q, len_q, Tq, qw);
  std::size_t bad = 0, bad_padding = 0;
  double scale = 1;
  for (double x : want_out) scale = std::max(scale, std::abs(x));
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < Tq; ++t) {
      const int real_t = t - begin(len_q[b], Tq);
      const bool real = real_t >= 0 && real_t < len_q[b];
      for (std::size_t i = 0; i < qw; ++i) {
        const std::size_t at = (std::size_t(b) * Tq + t) * qw + i;
        if (real)
          bad += std::abs(got_out[at] - want_out[at]) <= 1e-2 * scale ? 0 : 1;
        else
          bad_padding += got_out[at] == 0.0 && got_dq[at] == 0.0 ? 0 : 1;
      }
      for (int h = 0; h < Hq; ++h) {
        const std::size_t at = (std::size_t(b) * Hq + h) * Tq + t;
        if (real) {
          const double w = want_fwd.lse[std::size_t(h) * d.tq_total + d.cu_q[b] + real_t];
          const double g = want_fwd.router[std::size_t(h) * d.tq_total + d.cu_q[b] + real_t];
          bad += (std::isinf(w) ? got_lse[at] == w
                                : std::abs(got_lse[at] - w) <= 1e-4 * (1 + std::abs(w)))
                     ? 0
                     : 1;
          bad += std::abs(got_router[at] - g) <= 1e-4 ? 0 : 1;
        } else {
          bad_padding += got_router[at] == 0.0 ? 0 : 1;
          const double sink =
              Attn::sink_type::has_logit
                  ? double(float(d.sinks.empty() ? d.params.fixed_sink : d.sinks[h]))
                  : -std::numeric_limits<double>::infinity();
          bad_padding += got_lse[at] == sink ? 0 : 1;
        }
      }
    }
  for (int b = 0; b < B; ++b)
    for (int j = 0; j < Tk; ++j) {
      const int real_j = j - begin(len_k[b], Tk);
      if (real_j >= 0 && real_j < len_k[b]) continue;
      for (std::size_t i = 0; i < kw; ++i)
        bad_padding += got_dv[(std::size_t(b) * Tk + j) * kw + i] == 0.0 ? 0 : 1;
    }
  BOOST_TEST(bad == 0u, what << ": " << bad << " real entries differ from the packed run");
  BOOST_TEST(bad_padding == 0u, what << ": " << bad_padding << " padding entries not exact");
}

}  // namespace

BOOST_AUTO_TEST_CASE(padded_batches_equal_varlen) {
  const gt::spec lengths = varlen({1, 63, 0, 65, 130}, {63, 1, 0, 130, 65}, 4, 2, 950, 3, 1);
  device_problem<gt::policy::vanilla_causal, arch::bf16> vanilla(lengths, 128);
  device_problem<gt::policy::sink_sliding_window, arch::bf16> sink(lengths, 64);
  for (sm::padding_side side : {sm::padding_side::right, sm::padding_side::left}) {
    check_padded_equals_varlen(vanilla, side, "vanilla causal bf16 D128");
    check_padded_equals_varlen(sink, side, "learned sink sliding window bf16 D64");
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// Device balancing
// ---------------------------------------------------------------------------------------------

namespace {

/// Router values with per-head offsets, counted masks with padded tails; [B, H, T] / [B, T].
struct balance_layer {
  int B, H, T;
  std::vector<float> router;
  std::vector<std::uint8_t> counted;
};

balance_layer random_balance_layer(std::mt19937& rng, int B, int H, int T) {
  balance_layer L{B, H, T, std::vector<float>(std::size_t(B) * H * T),
                  std::vector<std::uint8_t>(std::size_t(B) * T, 0)};
  std::uniform_real_distribution<float> noise(0.0f, 0.2f);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int t = 0; t < T; ++t)
        L.router[(std::size_t(b) * H + h) * T + t] = 0.1f + 0.7f / H * ((h * 5) % H) + noise(rng);
  std::bernoulli_distribution keep(0.8);
  for (int b = 0; b < B; ++b) {
    const int length = std::uniform_int_distribution<int>(1, T)(rng);
    for (int t = 0; t < length; ++t) L.counted[std::size_t(b) * T + t] = keep(rng) ? 1 : 0;
  }
  return L;
}

bool near(double got, double want, double rtol, double floor) {
  return std::abs(got - want) <= rtol * std::max(std::abs(want), floor);
}

/// device_balancer vs importance_cv2 on the same layers; returns the device drouter bits.
std::vector<unsigned char> check_device_balancing(const bal::importance_cv2& reg,
                                                  const std::vector<balance_layer>& layers) {
  const sm::exec::cuda ex{};
  const int H = layers[0].H;
  std::vector<device_array<float>> router, drouter;
  std::vector<device_array<std::uint8_t>> counted;
  std::vector<bal::layer_input<float>> din, hin;
  std::vector<sm::tensor_view<float, 3>> dgrad, hgrad;
  std::vector<std::vector<float>> host_grad;
  for (const balance_layer& L : layers) {
    router.emplace_back(L.router);
    counted.emplace_back(L.counted);
    drouter.emplace_back(L.router.size());
    drouter.back().fill_nan();
    din.push_back({{router.back().get(), {L.B, L.H, L.T}}, {counted.back().get(), {L.B, L.T}}});
    hin.push_back({{L.router.data(), {L.B, L.H, L.T}}, {L.counted.data(), {L.B, L.T}}});
    dgrad.push_back({drouter.back().get(), {L.B, L.H, L.T}});
    host_grad.emplace_back(L.router.size(), 0.0f);
  }
  for (std::size_t l = 0; l < layers.size(); ++l)
    hgrad.push_back({host_grad[l].data(), {layers[l].B, layers[l].H, layers[l].T}});

  bal::device_balancer balancer(reg, static_cast<int>(layers.size()), H);
  balancer.forward_backward(ex, din, dgrad);
  const double loss = balancer.loss_to_host(ex);
  const bal::report got = balancer.report_to_host(ex);
  const bal::report want =
      reg.forward_backward<float>(sm::exec::host{1}, std::span<const bal::layer_input<float>>(hin),
                                  std::span<const sm::tensor_view<float, 3>>(hgrad));
  constexpr double rtol = 2e-5;
  BOOST_TEST(near(loss, want.loss, rtol, 1e-12), "loss " << loss << " vs " << want.loss);
  BOOST_TEST(loss == got.loss);
  BOOST_TEST(near(got.mean_cv, want.mean_cv, rtol, 1e-12));
  std::vector<unsigned char> bits;
  for (std::size_t l = 0; l < layers.size(); ++l) {
    BOOST_TEST_CONTEXT("layer " << l) {
      BOOST_TEST(got.layers[l].shared == want.layers[l].shared);
      BOOST_TEST(got.layers[l].tokens == want.layers[l].tokens);
      for (int h = 0; h < H; ++h)
        BOOST_TEST(near(got.layers[l].importance[h], want.layers[l].importance[h], rtol, 1e-12));
      BOOST_TEST(near(got.layers[l].loss, want.layers[l].loss, rtol, 1e-12));
      const std::vector<float> g = drouter[l].download();
      float scale = 0.0f;
      for (float w : host_grad[l]) scale = std::max(scale, std::abs(w));
      std::size_t bad = 0;
      for (std::size_t i = 0; i < g.size(); ++i)
        bad += host_grad[l][i] == 0.0f ? g[i] != 0.0f
                                       : !near(g[i], host_grad[l][i], rtol, 1e-3 * scale);
      BOOST_TEST(bad == 0u, bad << " drouter values differ from the host's");
      const auto* p = reinterpret_cast<const unsigned char*>(g.data());
      bits.insert(bits.end(), p, p + g.size() * sizeof(float));
    }
  }
  const auto* p = reinterpret_cast<const unsigned char*>(&loss);
  bits.insert(bits.end(), p, p + sizeof(loss));
  return bits;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(device_balancing, *boost::unit_test::precondition(gpu_available))

BOOST_AUTO_TEST_CASE(matches_host_and_is_bitwise_repeatable) {
  std::mt19937 rng(5);
  for (int H : {1, 8, 16}) {
    BOOST_TEST_CONTEXT("H " << H) {
      std::vector<balance_layer> layers;
      for (int l = 0; l < 20; ++l)  // more layers than one launch takes
        layers.push_back(random_balance_layer(rng, 1 + l % 3, H, 1 + 97 * l));
      const bal::importance_cv2 reg{
          .lambda = 0.1, .shared_heads = H > 1 ? 1 : 0, .sample_std = H == 16};
      const std::vector<unsigned char> first = check_device_balancing(reg, layers);
      BOOST_TEST((check_device_balancing(reg, layers) == first),
                 "a second run gave different bits");
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// For compute-sanitizer (bench/device_check.sh: --run_test=sanitizer_case): one small forward,
// the router values balanced on the device, and one backward with that dL/dG.
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(sanitizer_case, *boost::unit_test::precondition(gpu_available)) {
  using P = device_problem<gt::policy::sink_gate_product, arch::bf16>;
  const sm::exec::cuda ex{};
  P pb(dense(2, 65, 130, 4, 2, 77), 64);
  const gt::forward_outputs fwd = pb.forward(ex);
  gt::check_forward(gt::policy::sink_gate_product, gt::element::bf16, dense(2, 65, 130, 4, 2, 77),
                    64, fwd);
  // Balance the forward's router values; write dL/dG where the backward reads drouter.
  const int B = pb.data.bt, Hq = pb.data.Hq, TQ = pb.data.tq_total;
  std::vector<std::uint8_t> counted(std::size_t(B) * TQ);
  P::Attn::counted_tokens(pb.fa, {counted.data(), {B, TQ}});
  device_array<std::uint8_t> counted_device(counted);
  const bal::layer_input<float> layer{{pb.router.get(), {B, Hq, TQ}},
                                      {counted_device.get(), {B, TQ}}};
  const sm::tensor_view<float, 3> drouter{pb.drouter.get(), {B, Hq, TQ}};
  bal::device_balancer balancer({.lambda = 0.01, .shared_heads = 1}, 1, Hq);
  balancer.forward_backward(ex, std::span(&layer, 1), std::span(&drouter, 1));
  BOOST_TEST(std::isfinite(balancer.loss_to_host(ex)));
  const gt::gradients g = pb.backward(ex);
  std::size_t nan = 0;
  for (const auto* x : {&g.dq, &g.dk, &g.dv, &g.dsinks, &g.dgate})
    nan += std::count_if(x->begin(), x->end(), [](double v) { return std::isnan(v); });
  BOOST_TEST(nan == 0u);
}
