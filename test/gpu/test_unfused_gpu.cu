// The unfused attention path on a real GPU: sinkmoe::unfused::cuda_forward and
// cuda_backward (cuBLASLt GEMMs + row kernels) against the CPU backend, for the five policy
// bundles of support/gpu_reference.hpp, bf16 and fp16, head dims 64, 80, 96 and 256 (80 and 96
// are not instantiated by the fused kernels), GQA, Tq != Tk, query chunks that do not divide Tq,
// under FlashAttention's rule against the fp64 CPU backend on the same rounded inputs
// (check_forward / check_backward, test/gpu/gpu_reference.cpp); the backward is bitwise
// repeatable; a caller-provided workspace gives the same bits as the stream-ordered one.
// Without a GPU (cudaGetDeviceCount reports none or fails), every case is skipped with the
// reason and the program exits 0.
#define BOOST_TEST_MODULE unfused_gpu
#include <boost/test/unit_test.hpp>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <sinkmoe/attention.hpp>
#include <sinkmoe/cuda/check.hpp>
#include <sinkmoe/cuda/exec.hpp>
#include <sinkmoe/cuda/unfused/unfused.cuh>
#include <string>
#include <vector>

#include "support/gpu_reference.hpp"

namespace sm = sinkmoe;
namespace arch = sinkmoe::arch;
namespace gt = sinkmoe::testing::gpu;
namespace unfused = sinkmoe::unfused;

namespace {

/// Precondition of every case: a CUDA device (otherwise skipped, with the reason on stdout).
boost::test_tools::assertion_result gpu_available(boost::unit_test::test_unit_id) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  boost::test_tools::assertion_result result(status == cudaSuccess && count > 0);
  if (status != cudaSuccess) {
    result.message() << "no CUDA device: cudaGetDeviceCount returned " << cudaGetErrorName(status);
    (void)cudaGetLastError();
  } else if (count == 0) {
    result.message() << "no CUDA device (cudaGetDeviceCount = 0)";
  }
  if (!result) std::printf("test_unfused_gpu: skipped: %s\n", result.message().str().c_str());
  return result;
}

/// RAII device array with host copies in and out.
template <class T>
class device_array {
 public:
  explicit device_array(std::size_t n) : size_(n) {
    SINKMOE_CUDA_CHECK(cudaMalloc(&data_, std::max<std::size_t>(n, 1) * sizeof(T)));
  }
  explicit device_array(const std::vector<T>& host) : device_array(host.size()) {
    if (size_ > 0)
      SINKMOE_CUDA_CHECK(cudaMemcpy(data_, host.data(), size_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  device_array(const device_array&) = delete;
  device_array& operator=(const device_array&) = delete;
  ~device_array() { cudaFree(data_); }
  T* get() const { return data_; }
  std::vector<T> to_host() const {
    std::vector<T> host(size_);
    if (size_ > 0)
      SINKMOE_CUDA_CHECK(cudaMemcpy(host.data(), data_, size_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }

 private:
  T* data_ = nullptr;
  std::size_t size_;
};

template <class T>
std::vector<T> converted(const std::vector<double>& x) {
  std::vector<T> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) out[i] = arch::from_float<T>(static_cast<float>(x[i]));
  return out;
}

template <class T>
std::vector<double> widened(const std::vector<T>& x) {
  std::vector<double> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) out[i] = arch::to_float(x[i]);
  return out;
}

template <class F>
void with_policy(gt::policy p, F&& f) {
  using namespace sinkmoe;
  switch (p) {
    case gt::policy::vanilla_causal:
      return f(attention<sink::none, gate::none, mask::causal>{});
    case gt::policy::sink_sliding_window:
      return f(attention<sink::learned, gate::none, mask::sliding_window>{});
    case gt::policy::gated_causal:
      return f(attention<sink::none, gate::elementwise, mask::causal>{});
    case gt::policy::sink_gate_product:
      return f(attention<sink::learned, gate::headwise, mask::none, route::product>{});
    case gt::policy::streaming_fixed_sink:
      return f(attention<sink::fixed, gate::none, mask::streaming>{});
  }
}

/// Forward then backward of one case on the GPU; checks both with the rule; returns the
/// gradients' bits (for the repeatability check).
template <class Attn, class E>
std::vector<double> run_case(gt::policy p, gt::element e, const gt::spec& s, int head_dim,
                             int chunk_rows, bool own_workspace) {
  const gt::problem_data pd = gt::make_problem(p, e, s, head_dim);
  const int B = pd.bt, TQ = pd.tq_total, TK = pd.tk_total, Hq = pd.Hq, Hkv = pd.Hkv, D = pd.D;
  const int dg = pd.dg;
  device_array<E> q(converted<E>(pd.q)), k(converted<E>(pd.k)), v(converted<E>(pd.v));
  device_array<E> z(converted<E>(pd.gate_logits)), out(std::size_t(B) * TQ * Hq * D);
  std::vector<float> sinks_host(pd.sinks.begin(), pd.sinks.end());
  device_array<float> sinks(sinks_host);
  const std::size_t stats = std::size_t(B) * Hq * TQ;
  device_array<float> lse(stats), router(stats), first_key(stats);
  sm::forward_args<E> a;
  a.q = {q.get(), {B, TQ, Hq, D}};
  a.k = {k.get(), {B, TK, Hkv, D}};
  a.v = {v.get(), {B, TK, Hkv, D}};
  if (!pd.sinks.empty()) a.sinks = {sinks.get(), {Hq}};
  if (dg > 0) a.gate_logits = {z.get(), {B, TQ, Hq, dg}};
  a.out = {out.get(), {B, TQ, Hq, D}};
  a.lse = {lse.get(), {B, Hq, TQ}};
  a.router = {router.get(), {B, Hq, TQ}};
  a.first_key_mass = {first_key.get(), {B, Hq, TQ}};
  a.params = pd.params;

  static sm::blaslt::context blas;
  cudaStream_t stream = nullptr;
  SINKMOE_CUDA_CHECK(cudaStreamCreate(&stream));
  const sm::exec::cuda ex{stream};
  const sm::problem_shape shape = Attn::validate(a);
  const std::size_t ws_bytes =
      std::max(unfused::workspace_bytes(shape, chunk_rows, unfused::pass::forward, sizeof(E)),
               unfused::workspace_bytes(shape, chunk_rows, unfused::pass::backward, sizeof(E)));
  device_array<std::byte> ws(own_workspace ? ws_bytes : 1);
  const unfused::workspace given{own_workspace ? ws.get() : nullptr, ws_bytes, chunk_rows};
  unfused::cuda_forward<Attn>(blas, ex, a, given);
  SINKMOE_CUDA_CHECK(cudaStreamSynchronize(stream));
  gt::forward_outputs forward{widened(out.to_host()), {}, {}, {}};
  for (auto [dst, src] : {std::pair{&forward.lse, &lse}, std::pair{&forward.router, &router},
                          std::pair{&forward.first_key_mass, &first_key}}) {
    const std::vector<float> h = src->to_host();
    dst->assign(h.begin(), h.end());
  }
  gt::check_forward(p, e, s, head_dim, forward);

  device_array<E> dout(converted<E>(pd.dout)), dq(std::size_t(B) * TQ * Hq * D),
      dk(std::size_t(B) * TK * Hkv * D), dv(std::size_t(B) * TK * Hkv * D),
      dz(std::size_t(B) * TQ * Hq * std::max(dg, 1));
  std::vector<float> drouter_host(pd.drouter.begin(), pd.drouter.end()),
      dlse_host(pd.dlse.begin(), pd.dlse.end());
  device_array<float> drouter(drouter_host), dlse(dlse_host), dsinks{static_cast<std::size_t>(Hq)};
  sm::backward_args<E> g;
  g.dout = {dout.get(), {B, TQ, Hq, D}};
  g.drouter = {drouter.get(), {B, Hq, TQ}};
  g.dlse = {dlse.get(), {B, Hq, TQ}};
  g.dq = {dq.get(), {B, TQ, Hq, D}};
  g.dk = {dk.get(), {B, TK, Hkv, D}};
  g.dv = {dv.get(), {B, TK, Hkv, D}};
  if (Attn::sink_type::trainable) g.dsinks = {dsinks.get(), {Hq}};
  if (dg > 0) g.dgate_logits = {dz.get(), {B, TQ, Hq, dg}};
  unfused::cuda_backward<Attn>(blas, ex, a, g, given);
  SINKMOE_CUDA_CHECK(cudaStreamSynchronize(stream));
  SINKMOE_CUDA_CHECK(cudaStreamDestroy(stream));
  gt::gradients grads{widened(dq.to_host()), widened(dk.to_host()), widened(dv.to_host()), {}, {}};
  if (Attn::sink_type::trainable) {
    const std::vector<float> h = dsinks.to_host();
    grads.dsinks.assign(h.begin(), h.end());
  }
  if (dg > 0) grads.dgate = widened(dz.to_host());
  gt::check_backward(p, e, s, head_dim, forward, grads);

  std::vector<double> bits = grads.dq;
  for (const auto* part : {&grads.dk, &grads.dv, &grads.dsinks, &grads.dgate})
    bits.insert(bits.end(), part->begin(), part->end());
  return bits;
}

void run(gt::policy p, gt::element e, const gt::spec& s, int head_dim, int chunk_rows) {
  BOOST_TEST_CONTEXT(gt::policy_name(p)
                     << (e == gt::element::bf16 ? " bf16" : " fp16") << " D" << head_dim << " B"
                     << s.B << " Tq" << s.Tq << " Tk" << s.Tk << " Hq" << s.Hq << " Hkv" << s.Hkv
                     << " chunk " << chunk_rows) {
    with_policy(p, [&](auto attn) {
      using Attn = decltype(attn);
      const auto once = [&](bool own) {
        return e == gt::element::bf16
                   ? run_case<Attn, arch::bf16>(p, e, s, head_dim, chunk_rows, own)
                   : run_case<Attn, arch::fp16>(p, e, s, head_dim, chunk_rows, own);
      };
      const std::vector<double> first = once(false), second = once(true);
      BOOST_TEST(std::memcmp(first.data(), second.data(), first.size() * sizeof(double)) == 0,
                 "the backward is not bitwise repeatable");
    });
  }
}

gt::spec dense(int B, int Tq, int Tk, int Hq, int Hkv, int window, int sink_tokens,
               double fixed_sink, unsigned seed) {
  gt::spec s;
  s.B = B;
  s.Tq = Tq;
  s.Tk = Tk;
  s.Hq = Hq;
  s.Hkv = Hkv;
  s.window = window;
  s.sink_tokens = sink_tokens;
  s.fixed_sink = fixed_sink;
  s.seed = seed;
  return s;
}

}  // namespace

BOOST_AUTO_TEST_CASE(every_policy_and_head_dim, *boost::unit_test::precondition(gpu_available)) {
  const gt::policy policies[] = {gt::policy::vanilla_causal, gt::policy::sink_sliding_window,
                                 gt::policy::gated_causal, gt::policy::sink_gate_product,
                                 gt::policy::streaming_fixed_sink};
  unsigned seed = 900000;
  for (gt::policy p : policies) {
    for (int head_dim : {64, 80, 96, 256}) {
      run(p, gt::element::bf16, dense(2, 130, 197, 4, 2, 64, 4, 5.0, ++seed), head_dim, 48);
      run(p, gt::element::fp16, dense(1, 257, 100, 4, 1, 17, 2, 0.0, ++seed), head_dim, 100);
    }
  }
}

BOOST_AUTO_TEST_CASE(long_sequence_in_chunks, *boost::unit_test::precondition(gpu_available)) {
  run(gt::policy::sink_gate_product, gt::element::bf16,
      dense(1, 1000, 1000, 8, 2, 1, 0, 0.0, 910000), 128, 96);
}
