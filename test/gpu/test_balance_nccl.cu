// NCCL for the GPU balancer (sinkmoe/cuda/balance/nccl.cuh) on a real GPU, with a one-rank
// communicator (NCCL refuses two ranks of one communicator on one device, and the GPU machines
// here have one): the data-parallel step (accumulate, all_reduce_sums, evaluate, router_grad)
// gives bitwise the single-process device_balancer's results, the layout check passes for the
// communicator's size and names a wrong one. Cross-rank arithmetic is proven on the host under
// MPI (test_balance_mpi), which shares the reduction's layout. Without a GPU every case is
// skipped with the reason.
#define BOOST_TEST_MODULE balance_nccl
#include <boost/test/unit_test.hpp>
#include <cstdint>
#include <cstring>
#include <random>
#include <sinkmoe/cuda/balance.cuh>
#include <sinkmoe/cuda/balance/nccl.cuh>
#include <sinkmoe/cuda/check.hpp>
#include <sinkmoe/cuda/exec.hpp>
#include <string>
#include <vector>

namespace bal = sinkmoe::balance;
namespace sm = sinkmoe;

namespace {

boost::test_tools::assertion_result gpu_available(boost::unit_test::test_unit_id) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  boost::test_tools::assertion_result r(status == cudaSuccess && count > 0);
  if (!r) r.message() << "no usable CUDA device (" << cudaGetErrorString(status) << ")";
  return r;
}

template <class T>
struct device_buffer {
  explicit device_buffer(const std::vector<T>& host) : n(host.size()) {
    SINKMOE_CUDA_CHECK(cudaMalloc(&p, n * sizeof(T)));
    SINKMOE_CUDA_CHECK(cudaMemcpy(p, host.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  ~device_buffer() { cudaFree(p); }
  device_buffer(const device_buffer&) = delete;
  device_buffer(device_buffer&& o) noexcept : p(o.p), n(o.n) { o.p = nullptr; }
  std::vector<T> download() const {
    std::vector<T> h(n);
    SINKMOE_CUDA_CHECK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
  T* p = nullptr;
  std::size_t n;
};

struct one_rank_comm {
  one_rank_comm() {
    int device = 0;
    SINKMOE_CUDA_CHECK(cudaGetDevice(&device));
    bal::check_nccl(ncclCommInitAll(&comm, 1, &device), "ncclCommInitAll");
    SINKMOE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  }
  ~one_rank_comm() {
    cudaStreamDestroy(stream);
    ncclCommDestroy(comm);
  }
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
};

}  // namespace

BOOST_AUTO_TEST_SUITE(nccl, *boost::unit_test::precondition(gpu_available))

BOOST_AUTO_TEST_CASE(data_parallel_step_equals_one_process) {
  one_rank_comm c;
  const bal::nccl_reducer red{c.comm, c.stream};
  const int L = 3, H = 8, B = 2, T = 50;
  bal::check_data_parallel(red, L, H, 1);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(0.05f, 0.95f);
  std::vector<device_buffer<float>> router, grad_a, grad_b;
  std::vector<device_buffer<std::uint8_t>> counted;
  std::vector<bal::layer_input<float>> inputs;
  std::vector<sm::tensor_view<float, 3>> da, db;
  for (int l = 0; l < L; ++l) {
    std::vector<float> r(std::size_t(B) * H * T);
    for (std::size_t i = 0; i < r.size(); ++i) r[i] = u(rng) * (0.3f + 0.1f * float(i % H));
    std::vector<std::uint8_t> k(std::size_t(B) * T);
    for (std::size_t i = 0; i < k.size(); ++i) k[i] = (i % 7) != 0;
    router.emplace_back(r);
    counted.emplace_back(k);
    grad_a.emplace_back(std::vector<float>(r.size(), -1.0f));
    grad_b.emplace_back(std::vector<float>(r.size(), -2.0f));
  }
  for (int l = 0; l < L; ++l) {
    inputs.push_back({{router[l].p, {B, H, T}}, {counted[l].p, {B, T}}});
    da.push_back({grad_a[l].p, {B, H, T}});
    db.push_back({grad_b[l].p, {B, H, T}});
  }
  const bal::importance_cv2 reg{.lambda = 0.2, .shared_heads = 1};
  const sm::exec::cuda ex{c.stream};
  bal::device_balancer single(reg, L, H), step(reg, L, H);
  single.forward_backward(ex, inputs, da);
  step.accumulate(ex, inputs);
  bal::all_reduce_sums(step, red);
  step.evaluate(ex);
  step.router_grad(ex, inputs, db);
  const double loss_single = single.loss_to_host(ex), loss_step = step.loss_to_host(ex);
  BOOST_TEST(loss_single > 0.0);
  BOOST_TEST(std::memcmp(&loss_single, &loss_step, sizeof(double)) == 0);
  for (int l = 0; l < L; ++l) BOOST_TEST((grad_a[l].download() == grad_b[l].download()));
}

BOOST_AUTO_TEST_CASE(layout_check_names_a_wrong_size) {
  one_rank_comm c;
  const bal::nccl_reducer red{c.comm, c.stream};
  BOOST_TEST(red.ranks() == 1);
  BOOST_CHECK_EXCEPTION(bal::check_data_parallel(red, 2, 4, 2), sm::error, [](const sm::error& e) {
    return std::string(e.what()).find(
               "1 ranks in the communicator, 2 "
               "expected") != std::string::npos;
  });
}

BOOST_AUTO_TEST_SUITE_END()
