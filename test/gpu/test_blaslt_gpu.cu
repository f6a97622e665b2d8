// The cuBLASLt layer on a GPU (include/sinkmoe/cuda/blaslt): context::matmul for every
// transpose combination, batched strides, alpha/beta with C, f16 / bf16 / f32, every epilogue,
// the empty product, the plan cache's hits; the linear helpers (forward with bias / GELU / saved
// pre-activation, backward with the GELU kernel, the bias-gradient and dgelu_bgrad epilogues)
// through a two-layer MLP. References: fp64 sums over the same rounded inputs on the host.
//
// Without a GPU every case is skipped with the reason (the suite then passes).
#define BOOST_TEST_MODULE blaslt_gpu
#include <algorithm>
#include <boost/test/unit_test.hpp>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <random>
#include <sinkmoe/cuda/blaslt/linear.cuh>
#include <string>
#include <vector>

namespace arch = sinkmoe::arch;
namespace blaslt = sinkmoe::blaslt;
using arch::bf16;
using arch::fp16;
using blaslt::dtype;
using blaslt::epilogue;
using blaslt::matmul_desc;
using sinkmoe::tensor_view;

namespace {

/// Precondition of every case: a CUDA device is present (otherwise: skipped, with the reason).
boost::test_tools::assertion_result gpu_available(boost::unit_test::test_unit_id) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  boost::test_tools::assertion_result result(status == cudaSuccess && count > 0);
  if (status != cudaSuccess) {
    result.message() << "no CUDA device: cudaGetDeviceCount returned " << cudaGetErrorName(status);
    (void)cudaGetLastError();  // not sticky: clear it so that later calls start clean
  } else if (count == 0) {
    result.message() << "no CUDA device (cudaGetDeviceCount = 0)";
  }
  // Also on stdout, so that the reason shows at Boost.Test's default log level (ctest -V).
  if (!result) std::cout << "test_blaslt_gpu: skipped: " << result.message().str() << std::endl;
  return result;
}

/// RAII device array of T with host copies in and out.
template <class T>
class device_array {
 public:
  explicit device_array(const std::vector<T>& host) : size_(host.size()) {
    SINKMOE_CUDA_CHECK(cudaMalloc(&data_, std::max<std::size_t>(size_, 1) * sizeof(T)));
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
double value(T v) {
  return static_cast<double>(arch::to_float(v));
}

template <class T>
std::vector<T> random_values(std::size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<T> out(n);
  for (auto& v : out) v = arch::from_float<T>(dist(rng));
  return out;
}

template <class T>
std::vector<T> zeros(std::size_t n) {
  return std::vector<T>(n, arch::from_float<T>(0.0f));
}

double gelu_ref(double x) {
  return 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
}
double gelu_grad_ref(double x) {
  const double t = std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x));
  return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * 0.7978845608028654 * (1 + 3 * 0.044715 * x * x);
}

/// Tolerance for a result stored in T: its rounding (relative) plus fp32 accumulation and the
/// GELU approximation cuBLASLt uses (absolute).
template <class T>
bool close(double got, double expected) {
  const double rtol = std::is_same_v<T, float> ? 2e-3 : (std::is_same_v<T, fp16> ? 4e-3 : 1.6e-2);
  const double atol = std::is_same_v<T, float> ? 2e-3 : 2e-2;
  return std::abs(got - expected) <= atol + rtol * std::abs(expected);
}

/// One GEMM case: shapes, layout and epilogue; data are generated, run, and checked.
struct gemm_case {
  int m, n, k, batch = 1;
  bool transpose_a = false, transpose_b = false;
  std::int64_t pad = 0;  // extra elements per row of every matrix
  float alpha = 1.0f, beta = 0.0f;
  epilogue epi = epilogue::none;
  std::string name;
};

template <class AB, class D>
void run_gemm_case(blaslt::context& ctx, const gemm_case& gc, unsigned seed) {
  BOOST_TEST_CONTEXT(gc.name) {
    std::mt19937 rng(seed);
    const std::int64_t a_rows = gc.transpose_a ? gc.k : gc.m, a_cols = gc.transpose_a ? gc.m : gc.k;
    const std::int64_t b_rows = gc.transpose_b ? gc.n : gc.k, b_cols = gc.transpose_b ? gc.k : gc.n;
    const std::int64_t lda = a_cols + gc.pad, ldb = b_cols + gc.pad, ldd = gc.n + gc.pad;
    const std::int64_t ld_aux = (gc.n + 7) / 8 * 8;
    const std::int64_t sa = a_rows * lda, sb = b_rows * ldb, sd = gc.m * ldd;
    const auto a = random_values<AB>(sa * gc.batch, rng);
    const auto b = random_values<AB>(sb * gc.batch, rng);
    const auto c = random_values<D>(sd * gc.batch, rng);
    const auto d_init = random_values<D>(sd * gc.batch, rng);
    const bool bias_in = blaslt::reads_bias(gc.epi), bias_out = blaslt::writes_bias(gc.epi);
    const std::int64_t bias_len = blaslt::bias_length(gc.epi, gc.m, gc.n);
    const auto bias = random_values<D>(static_cast<std::size_t>(bias_len), rng);
    const auto aux = random_values<D>(static_cast<std::size_t>(gc.m * ld_aux), rng, 2.0f);

    device_array<AB> a_dev(a), b_dev(b);
    device_array<D> c_dev(c), d_dev(d_init), bias_dev(bias), aux_dev(aux);
    matmul_desc desc;
    desc.m = gc.m;
    desc.n = gc.n;
    desc.k = gc.k;
    desc.batch = gc.batch;
    desc.transpose_a = gc.transpose_a;
    desc.transpose_b = gc.transpose_b;
    desc.a_type = desc.b_type = blaslt::dtype_of<AB>();
    desc.d_type = blaslt::dtype_of<D>();
    desc.a = a_dev.get();
    desc.lda = lda;
    desc.batch_stride_a = sa;
    desc.b = b_dev.get();
    desc.ldb = ldb;
    desc.batch_stride_b = sb;
    if (gc.beta != 0.0f) {
      desc.c = c_dev.get();
      desc.ldc = ldd;
      desc.batch_stride_c = sd;
    }
    desc.d = d_dev.get();
    desc.ldd = ldd;
    desc.batch_stride_d = sd;
    desc.alpha = gc.alpha;
    desc.beta = gc.beta;
    desc.epi = gc.epi;
    if (bias_in || bias_out) {
      desc.bias = bias_dev.get();
      desc.bias_type = desc.d_type;
    }
    if (blaslt::reads_aux(gc.epi) || blaslt::writes_aux(gc.epi)) {
      desc.aux = aux_dev.get();
      desc.ld_aux = ld_aux;
    }
    ctx.matmul(desc, nullptr);
    SINKMOE_CUDA_CHECK(cudaDeviceSynchronize());
    const auto d = d_dev.to_host();
    const auto bias_result = bias_dev.to_host();
    const auto aux_result = aux_dev.to_host();

    std::vector<double> bias_ref(static_cast<std::size_t>(bias_len), 0.0);
    for (int bt = 0; bt < gc.batch; ++bt)
      for (int i = 0; i < gc.m; ++i)
        for (int j = 0; j < gc.n; ++j) {
          double sum = 0.0;
          for (int kk = 0; kk < gc.k; ++kk) {
            const double av = value(a[bt * sa + (gc.transpose_a ? kk * lda + i : i * lda + kk)]);
            const double bv = value(b[bt * sb + (gc.transpose_b ? j * ldb + kk : kk * ldb + j)]);
            sum += av * bv;
          }
          double acc = gc.alpha * sum + gc.beta * value(c[bt * sd + i * ldd + j]);
          double out = acc;
          switch (gc.epi) {
            case epilogue::bias:
              out = acc + value(bias[j]);
              break;
            case epilogue::gelu:
              out = gelu_ref(acc);
              break;
            case epilogue::gelu_bias:
              out = gelu_ref(acc + value(bias[j]));
              break;
            case epilogue::gelu_aux:
            case epilogue::gelu_aux_bias: {
              const double z = gc.epi == epilogue::gelu_aux ? acc : acc + value(bias[j]);
              BOOST_TEST(close<D>(value(aux_result[i * ld_aux + j]), z), "aux " << i << "," << j);
              out = gelu_ref(z);
              break;
            }
            case epilogue::dgelu:
            case epilogue::dgelu_bgrad:
              out = acc * gelu_grad_ref(value(aux[i * ld_aux + j]));
              bias_ref[j] += out;
              break;
            default:
              break;
          }
          const double got = value(d[bt * sd + i * ldd + j]);
          BOOST_TEST(close<D>(got, out),
                     "D[" << bt << "," << i << "," << j << "] = " << got << ", expected " << out);
        }
    // Padding of D is never written.
    for (int bt = 0; bt < gc.batch; ++bt)
      for (int i = 0; i < gc.m; ++i)
        for (std::int64_t j = gc.n; j < ldd; ++j)
          BOOST_TEST(value(d[bt * sd + i * ldd + j]) == value(d_init[bt * sd + i * ldd + j]));
    if (gc.epi == epilogue::bgrada) {
      for (int i = 0; i < gc.m; ++i) {
        bias_ref[i] = 0;
        for (int kk = 0; kk < gc.k; ++kk)
          bias_ref[i] += value(a[gc.transpose_a ? kk * lda + i : i * lda + kk]);
      }
    } else if (gc.epi == epilogue::bgradb) {
      for (int j = 0; j < gc.n; ++j) {
        bias_ref[j] = 0;
        for (int kk = 0; kk < gc.k; ++kk)
          bias_ref[j] += value(b[gc.transpose_b ? j * ldb + kk : kk * ldb + j]);
      }
    }
    if (bias_out)
      for (std::int64_t i = 0; i < bias_len; ++i)
        BOOST_TEST(close<D>(value(bias_result[i]), bias_ref[i]),
                   "bias[" << i << "] = " << value(bias_result[i]) << ", expected " << bias_ref[i]);
  }
}

}  // namespace

BOOST_AUTO_TEST_SUITE(matmul, *boost::unit_test::precondition(gpu_available))

BOOST_AUTO_TEST_CASE(transposes_types_and_scalars) {
  blaslt::context ctx;
  unsigned seed = 1;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      const std::string layout = std::string(ta ? "T" : "N") + (tb ? "T" : "N");
      run_gemm_case<bf16, float>(
          ctx, {37, 29, 45, 1, ta, tb, 0, 1.0f, 0.0f, epilogue::none, "bf16->f32 " + layout},
          seed++);
      run_gemm_case<bf16, bf16>(ctx,
                                {24, 40, 64, 1, ta, tb, 8, 0.5f, 1.5f, epilogue::none,
                                 "bf16->bf16 alpha beta padded " + layout},
                                seed++);
    }
  run_gemm_case<fp16, fp16>(
      ctx, {33, 17, 31, 1, false, true, 0, 1.0f, 0.0f, epilogue::none, "f16->f16"}, seed++);
  run_gemm_case<fp16, float>(
      ctx, {16, 48, 80, 1, true, false, 0, 1.0f, -1.0f, epilogue::none, "f16->f32 beta -1"},
      seed++);
  run_gemm_case<float, float>(
      ctx, {19, 23, 29, 1, false, false, 3, 2.0f, 0.25f, epilogue::none, "f32->f32"}, seed++);
}

BOOST_AUTO_TEST_CASE(strided_batches) {
  blaslt::context ctx;
  run_gemm_case<bf16, bf16>(
      ctx, {20, 24, 32, 5, false, true, 0, 1.0f, 0.0f, epilogue::none, "batched NT"}, 101);
  run_gemm_case<bf16, float>(
      ctx, {17, 8, 40, 3, true, false, 8, 1.0f, 1.0f, epilogue::none, "batched TN with C"}, 102);
}

BOOST_AUTO_TEST_CASE(every_epilogue) {
  blaslt::context ctx;
  unsigned seed = 200;
  // The layouts the linear helpers use for each (see linear_desc.hpp).
  for (epilogue e : {epilogue::bias, epilogue::gelu, epilogue::gelu_bias, epilogue::gelu_aux,
                     epilogue::gelu_aux_bias}) {
    run_gemm_case<bf16, bf16>(ctx,
                              {48, 40, 64, 1, false, true, 0, 1.0f, 0.0f, e,
                               std::string("bf16 ") + std::string(blaslt::epilogue_name(e))},
                              seed++);
    run_gemm_case<bf16, float>(ctx,
                               {32, 24, 40, 1, false, true, 0, 1.0f, 0.0f, e,
                                std::string("f32 out ") + std::string(blaslt::epilogue_name(e))},
                               seed++);
  }
  for (epilogue e : {epilogue::dgelu, epilogue::dgelu_bgrad})
    run_gemm_case<bf16, bf16>(ctx,
                              {48, 40, 64, 1, false, false, 0, 1.0f, 0.0f, e,
                               std::string("bf16 ") + std::string(blaslt::epilogue_name(e))},
                              seed++);
  run_gemm_case<bf16, float>(
      ctx, {40, 32, 64, 1, true, false, 0, 1.0f, 0.0f, epilogue::bgrada, "bgrada (dW = dZ^T X)"},
      seed++);
  run_gemm_case<bf16, float>(
      ctx, {32, 40, 64, 1, true, false, 0, 1.0f, 0.0f, epilogue::bgradb, "bgradb (dW = X^T dZ)"},
      seed++);
}

BOOST_AUTO_TEST_CASE(empty_product_zeroes_the_output) {
  blaslt::context ctx;
  run_gemm_case<bf16, bf16>(
      ctx, {9, 16, 0, 3, false, false, 4, 1.0f, 0.0f, epilogue::none, "k = 0, batched, padded"},
      300);
}

BOOST_AUTO_TEST_CASE(plans_are_cached_per_key) {
  blaslt::context ctx;
  const gemm_case gc{32, 32, 32, 1, false, true, 0, 1.0f, 0.0f, epilogue::none, "cached"};
  run_gemm_case<bf16, bf16>(ctx, gc, 400);
  BOOST_TEST(ctx.plans().misses() == 1u);
  run_gemm_case<bf16, bf16>(ctx, gc, 401);  // new buffers, same alignment: same plan
  BOOST_TEST(ctx.plans().hits() == 1u);
  BOOST_TEST(ctx.plans().size() == 1u);
}

BOOST_AUTO_TEST_CASE(invalid_desc_throws_before_any_call) {
  blaslt::context ctx;
  matmul_desc desc;
  desc.m = 4;
  desc.n = 4;
  desc.k = 4;
  desc.lda = 2;  // too short, and every pointer is null
  BOOST_CHECK_THROW(ctx.matmul(desc, nullptr), sinkmoe::error);
  BOOST_TEST(ctx.plans().misses() == 0u);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// Linear helpers: a two-layer MLP, y = gelu(x W1^T + b1) W2^T + b2, forward and backward
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(linear, *boost::unit_test::precondition(gpu_available))

BOOST_AUTO_TEST_CASE(two_layer_mlp_forward_and_backward) {
  constexpr int rows = 24, in = 32, hidden = 48, out = 16;
  std::mt19937 rng(500);
  const auto x = random_values<bf16>(rows * in, rng);
  const auto w1 = random_values<bf16>(hidden * in, rng, 0.3f);
  const auto b1 = random_values<bf16>(hidden, rng);
  const auto w2 = random_values<bf16>(out * hidden, rng, 0.3f);
  const auto b2 = random_values<bf16>(out, rng);
  const auto dy = random_values<bf16>(rows * out, rng);

  device_array<bf16> x_d(x), w1_d(w1), b1_d(b1), w2_d(w2), b2_d(b2), dy_d(dy);
  device_array<bf16> z1_d(zeros<bf16>(rows * hidden)), h_d(zeros<bf16>(rows * hidden));
  device_array<bf16> y_d(zeros<bf16>(rows * out));
  device_array<bf16> dz1_d(zeros<bf16>(rows * hidden)), dx_d(zeros<bf16>(rows * in));
  device_array<bf16> db1_d(zeros<bf16>(hidden));
  device_array<float> dw1_d(zeros<float>(hidden * in)), dw2_d(zeros<float>(out * hidden));
  device_array<float> db2_d(zeros<float>(out));
  // Second route for layer 1's backward: act gelu through the kernel, from dh.
  device_array<bf16> dh_d(zeros<bf16>(rows * hidden)), dz1_kernel_d(zeros<bf16>(rows * hidden));
  device_array<float> dw1_kernel_d(zeros<float>(hidden * in)), db1_kernel_d(zeros<float>(hidden));

  using cview2 = tensor_view<const bf16, 2>;
  using view2 = tensor_view<bf16, 2>;
  blaslt::context ctx;
  cudaStream_t stream = nullptr;
  blaslt::linear_forward<bf16>(ctx,
                               {cview2{x_d.get(), {rows, in}},
                                cview2{w1_d.get(), {hidden, in}},
                                {b1_d.get(), {hidden}},
                                view2{h_d.get(), {rows, hidden}},
                                blaslt::activation::gelu,
                                view2{z1_d.get(), {rows, hidden}}},
                               stream);
  blaslt::linear_forward<bf16>(ctx,
                               {cview2{h_d.get(), {rows, hidden}},
                                cview2{w2_d.get(), {out, hidden}},
                                {b2_d.get(), {out}},
                                view2{y_d.get(), {rows, out}},
                                blaslt::activation::none,
                                view2{}},
                               stream);
  // Layer 2 backward; its dX epilogue finishes layer 1's GELU (dgelu_bgrad) and db1.
  blaslt::linear_backward_args<bf16, float> back2;
  back2.grad_y = cview2{dy_d.get(), {rows, out}};
  back2.x = cview2{h_d.get(), {rows, hidden}};
  back2.weight = cview2{w2_d.get(), {out, hidden}};
  back2.grad_x = view2{dz1_d.get(), {rows, hidden}};
  back2.grad_weight = {dw2_d.get(), {out, hidden}};
  back2.grad_bias = {db2_d.get(), {out}};
  back2.input_pre_activation = cview2{z1_d.get(), {rows, hidden}};
  back2.input_grad_bias = {db1_d.get(), {hidden}};
  blaslt::linear_backward(ctx, back2, stream);
  blaslt::linear_backward_args<bf16, float> back1;
  back1.grad_y = cview2{dz1_d.get(), {rows, hidden}};
  back1.x = cview2{x_d.get(), {rows, in}};
  back1.weight = cview2{w1_d.get(), {hidden, in}};
  back1.grad_x = view2{dx_d.get(), {rows, in}};
  back1.grad_weight = {dw1_d.get(), {hidden, in}};
  blaslt::linear_backward(ctx, back1, stream);
  // The other route: dh = dy W2 (plain), then layer 1 with act gelu (the elementwise kernel).
  blaslt::linear_backward_args<bf16, float> back2_plain;
  back2_plain.grad_y = back2.grad_y;
  back2_plain.x = back2.x;
  back2_plain.weight = back2.weight;
  back2_plain.grad_x = view2{dh_d.get(), {rows, hidden}};
  blaslt::linear_backward(ctx, back2_plain, stream);
  blaslt::linear_backward_args<bf16, float> back1_gelu;
  back1_gelu.grad_y = cview2{dh_d.get(), {rows, hidden}};
  back1_gelu.x = back1.x;
  back1_gelu.weight = back1.weight;
  back1_gelu.act = blaslt::activation::gelu;
  back1_gelu.pre_activation = cview2{z1_d.get(), {rows, hidden}};
  back1_gelu.grad_pre_activation = view2{dz1_kernel_d.get(), {rows, hidden}};
  back1_gelu.grad_weight = {dw1_kernel_d.get(), {hidden, in}};
  back1_gelu.grad_bias = {db1_kernel_d.get(), {hidden}};
  blaslt::linear_backward(ctx, back1_gelu, stream);
  SINKMOE_CUDA_CHECK(cudaStreamSynchronize(stream));

  // Host reference in double from the same bf16 inputs (intermediates not rounded).
  auto at = [](const auto& v, std::int64_t i) { return value(v[static_cast<std::size_t>(i)]); };
  std::vector<double> z1(rows * hidden), h(rows * hidden), y(rows * out);
  for (int r = 0; r < rows; ++r)
    for (int o = 0; o < hidden; ++o) {
      double s = at(b1, o);
      for (int i = 0; i < in; ++i) s += at(x, r * in + i) * at(w1, o * in + i);
      z1[r * hidden + o] = s;
      h[r * hidden + o] = gelu_ref(s);
    }
  for (int r = 0; r < rows; ++r)
    for (int o = 0; o < out; ++o) {
      double s = at(b2, o);
      for (int i = 0; i < hidden; ++i) s += h[r * hidden + i] * at(w2, o * hidden + i);
      y[r * out + o] = s;
    }
  std::vector<double> dh(rows * hidden, 0.0), dz1(rows * hidden), dw2(out * hidden, 0.0),
      db2(out, 0.0), dw1(hidden * in, 0.0), db1(hidden, 0.0), dx(rows * in, 0.0);
  for (int r = 0; r < rows; ++r)
    for (int o = 0; o < out; ++o) {
      const double g = at(dy, r * out + o);
      db2[o] += g;
      for (int i = 0; i < hidden; ++i) {
        dh[r * hidden + i] += g * at(w2, o * hidden + i);
        dw2[o * hidden + i] += g * h[r * hidden + i];
      }
    }
  for (int r = 0; r < rows; ++r)
    for (int o = 0; o < hidden; ++o) {
      const double g = dh[r * hidden + o] * gelu_grad_ref(z1[r * hidden + o]);
      dz1[r * hidden + o] = g;
      db1[o] += g;
      for (int i = 0; i < in; ++i) {
        dw1[o * in + i] += g * at(x, r * in + i);
        dx[r * in + i] += g * at(w1, o * in + i);
      }
    }

  auto compare = [](const char* what, const auto& got, const std::vector<double>& expected,
                    auto tag) {
    using T = decltype(tag);
    int bad = 0;
    for (std::size_t i = 0; i < expected.size(); ++i)
      if (!close<T>(value(got[i]), expected[i]) && bad++ < 5)
        BOOST_ERROR(what << "[" << i << "] = " << value(got[i]) << ", expected " << expected[i]);
    BOOST_TEST(bad == 0, what << ": " << bad << " of " << expected.size() << " out of tolerance");
  };
  // Reference intermediates are unrounded; the device's pass through bf16 (h, dz1), so compare
  // in bf16's tolerance even for fp32 results downstream of them.
  compare("z1", z1_d.to_host(), z1, bf16{});
  compare("h", h_d.to_host(), h, bf16{});
  compare("y", y_d.to_host(), y, bf16{});
  compare("dw2", dw2_d.to_host(), dw2, bf16{});
  compare("db2", db2_d.to_host(), db2, float{});
  compare("dz1 (dgelu epilogue)", dz1_d.to_host(), dz1, bf16{});
  compare("db1 (dgelu_bgrad epilogue)", db1_d.to_host(), db1, bf16{});
  compare("dw1", dw1_d.to_host(), dw1, bf16{});
  compare("dx", dx_d.to_host(), dx, bf16{});
  compare("dh", dh_d.to_host(), dh, bf16{});
  compare("dz1 (GELU kernel)", dz1_kernel_d.to_host(), dz1, bf16{});
  compare("dw1 (after GELU kernel)", dw1_kernel_d.to_host(), dw1, bf16{});
  compare("db1 (bgrada epilogue)", db1_kernel_d.to_host(), db1, bf16{});
}

BOOST_AUTO_TEST_SUITE_END()
