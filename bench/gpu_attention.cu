// GPU benchmark of the fused attention kernels (docs/design.md section 9): TFLOP/s of
// the forward and backward of vanilla, sink (learned), gated (elementwise) and sink+gated
// (route::product) attention at bf16, head dims 128 and 64, causal and not, B * T = 16k tokens
// with T in {1k, 4k, 16k}; beside them the measured bf16 GEMM rate (cuBLAS, and cuBLASLt through
// sinkmoe::blaslt when that header is present) and each row's fraction of it, the device memory
// each call takes, and, when sinkmoe/cuda/unfused/unfused.cuh is present, the unfused cuBLASLt
// path on the same rows. PyTorch's scaled_dot_product_attention is measured by
// bench/sdpa_reference.py on the same shapes; bench/device_check.sh runs both and joins them.
//
// Shapes: model width 2048 as FlashAttention's benchmarks (benchmark_flash_attention.py), so
// H = 2048 / D (16 heads at D = 128, 32 at D = 64) and B = 16384 / T; Hq = Hkv (no GQA).
// FLOPs: see bench/gpu_attention.cuh (forward 4 B H T^2 D, causal halves; backward 2.5x).
// Timing: CUDA events around each call after warm-up; the median of --runs calls. Inputs are
// random normal (never zeros), generated on the device; the matrix keeps B * T * H * D fixed, so
// one set of buffers (10 x 64 MiB) serves every row and exceeds the 50-60 MB L2 per tensor.
//
// Output: one JSON object per line on stdout (GEMM rates, one per measured row, a summary), then
// a Markdown table. Exit status: 0 when every row ran (skipped rows allowed), 1 when a row failed,
// 2 when --check failed (nothing is timed then), 3 for a usage error or no GPU.
//
// Usage: gpu_attention [--quick] [--check] [--runs N] [--warmup N] [--no-gemm] [--fused-only]
//   --quick     D = 128, T = 4k only (causal and not, every policy)
//   --check     first compare a small problem of every benchmarked instantiation with the CPU
//               backend (forward, and backward when built), and stop with status 2 on a mismatch
//   --runs N    timed calls per row (default 10); --warmup N untimed calls first (default 3)
//   --no-gemm   skip the GEMM rate measurement (fractions are then omitted)
//   --fused-only  leave the unfused path out even when it is built
#include <cublas_v2.h>

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <sstream>

#include "gpu_attention.cuh"

namespace sinkmoe::bench {

// ---------------------------------------------------------------------------------------------
// Device fills and checks (plain CUDA: benchmark scaffolding, not library kernels)
// ---------------------------------------------------------------------------------------------

namespace {

__device__ std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/// A standard normal value from (seed, index) by Box-Muller on two 24-bit uniforms.
__device__ float hashed_normal(std::uint64_t seed, std::uint64_t index) {
  const std::uint64_t bits = splitmix64(seed ^ splitmix64(index));
  const float u1 = (static_cast<float>(bits & 0xffffffu) + 0.5f) * (1.0f / 16777216.0f);
  const float u2 = static_cast<float>((bits >> 24) & 0xffffffu) * (1.0f / 16777216.0f);
  return sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
}

__global__ void fill_normal_bf16(element* data, std::size_t n, std::uint64_t seed, float stddev) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    data[i] = __float2bfloat16(stddev * hashed_normal(seed, i));
  }
}
__global__ void fill_normal_f32(float* data, std::size_t n, std::uint64_t seed, float stddev,
                                float mean) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    data[i] = mean + stddev * hashed_normal(seed, i);
  }
}

/// Per-block counts of non-finite values (deterministic: no atomics; summed on the host).
template <class T>
__global__ void count_nonfinite_blocks(const T* data, std::size_t n, unsigned* block_counts) {
  __shared__ unsigned counts[256];
  unsigned local = 0;
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    float x;
    if constexpr (std::is_same_v<T, float>) {
      x = data[i];
    } else {
      x = __bfloat162float(data[i]);
    }
    local += isfinite(x) ? 0u : 1u;
  }
  counts[threadIdx.x] = local;
  __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) counts[threadIdx.x] += counts[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) block_counts[blockIdx.x] = counts[0];
}

constexpr int k_fill_blocks = 1024, k_fill_threads = 256;

template <class T>
std::int64_t count_nonfinite_impl(const T* data, std::size_t n, cudaStream_t stream) {
  device_buffer<unsigned> block_counts(k_fill_blocks);
  count_nonfinite_blocks<T>
      <<<k_fill_blocks, k_fill_threads, 0, stream>>>(data, n, block_counts.data());
  SINKMOE_CUDA_CHECK(cudaGetLastError());
  std::vector<unsigned> host(k_fill_blocks);
  SINKMOE_CUDA_CHECK(cudaMemcpyAsync(host.data(), block_counts.data(), block_counts.bytes(),
                                     cudaMemcpyDeviceToHost, stream));
  SINKMOE_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::int64_t total = 0;
  for (unsigned c : host) total += c;
  return total;
}

}  // namespace

void fill_normal(element* data, std::size_t n, std::uint64_t seed, float stddev,
                 cudaStream_t stream) {
  fill_normal_bf16<<<k_fill_blocks, k_fill_threads, 0, stream>>>(data, n, seed, stddev);
  SINKMOE_CUDA_CHECK(cudaGetLastError());
}
void fill_normal(float* data, std::size_t n, std::uint64_t seed, float stddev, float mean,
                 cudaStream_t stream) {
  fill_normal_f32<<<k_fill_blocks, k_fill_threads, 0, stream>>>(data, n, seed, stddev, mean);
  SINKMOE_CUDA_CHECK(cudaGetLastError());
}
std::int64_t count_nonfinite(const element* data, std::size_t n, cudaStream_t stream) {
  return count_nonfinite_impl(data, n, stream);
}
std::int64_t count_nonfinite(const float* data, std::size_t n, cudaStream_t stream) {
  return count_nonfinite_impl(data, n, stream);
}

namespace {

// ---------------------------------------------------------------------------------------------
// GEMM rate
// ---------------------------------------------------------------------------------------------

struct gemm_rate {
  std::string backend;
  int m = 0, n = 0, k = 0;
  timing t;
  double tflops = 0;
  std::string status = "ok", detail;
};

#define SINKMOE_BENCH_CUBLAS_CHECK(call)                                                          \
  do {                                                                                            \
    const cublasStatus_t status_ = (call);                                                        \
    if (status_ != CUBLAS_STATUS_SUCCESS) {                                                       \
      throw ::sinkmoe::error(::sinkmoe::detail::concat("cuBLAS call ", #call,                     \
                                                       " failed: ", cublasGetStatusName(status_), \
                                                       " at ", __FILE__, ":", __LINE__));         \
    }                                                                                             \
  } while (0)

/// The bf16 GEMM rate the attention rows are compared with: D = A B, all m x n x k = size^3,
/// bf16 in and out, fp32 compute, random inputs, 2 m n k FLOPs per product.
std::vector<gemm_rate> measure_gemm_rates(const bench_options& options, cudaStream_t stream) {
  constexpr int size = 8192;
  const std::size_t elements = static_cast<std::size_t>(size) * size;
  device_buffer<element> a(elements), b(elements), d(elements);
  fill_normal(a.data(), elements, 101, 1.0f, stream);
  fill_normal(b.data(), elements, 102, 1.0f, stream);
  const double flops = 2.0 * size * static_cast<double>(size) * size;
  std::vector<gemm_rate> rates;

  gemm_rate cublas{"cublas", size, size, size};
  try {
    cublasHandle_t handle = nullptr;
    SINKMOE_BENCH_CUBLAS_CHECK(cublasCreate(&handle));
    struct destroy_handle {
      cublasHandle_t h;
      ~destroy_handle() { cublasDestroy(h); }
    } guard{handle};
    SINKMOE_BENCH_CUBLAS_CHECK(cublasSetStream(handle, stream));
    const float alpha = 1.0f, beta = 0.0f;
    const auto call = [&] {
      SINKMOE_BENCH_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, size, size, size,
                                              &alpha, a.data(), CUDA_R_16BF, size, b.data(),
                                              CUDA_R_16BF, size, &beta, d.data(), CUDA_R_16BF, size,
                                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    };
    cublas.t = time_on_stream(call, options, stream);
    cublas.tflops = flops / (cublas.t.ms_median * 1e-3) / 1e12;
  } catch (const std::exception& ex) {
    cublas.status = "error";
    cublas.detail = ex.what();
  }
  rates.push_back(cublas);

#if SINKMOE_BENCH_HAS_BLASLT
  gemm_rate lt{"blaslt", size, size, size};
  try {
    blaslt::context context{};
    blaslt::matmul_desc desc{};
    desc.m = size, desc.n = size, desc.k = size, desc.batch = 1;
    desc.a_type = desc.b_type = desc.d_type = blaslt::dtype::bf16;
    desc.a = a.data(), desc.lda = size, desc.batch_stride_a = 0;
    desc.b = b.data(), desc.ldb = size, desc.batch_stride_b = 0;
    desc.c = nullptr, desc.ldc = size, desc.batch_stride_c = 0;
    desc.d = d.data(), desc.ldd = size, desc.batch_stride_d = 0;
    const auto call = [&] { context.matmul(desc, stream); };
    lt.t = time_on_stream(call, options, stream);
    lt.tflops = flops / (lt.t.ms_median * 1e-3) / 1e12;
  } catch (const std::exception& ex) {
    lt.status = "error";
    lt.detail = ex.what();
  }
  rates.push_back(lt);
#endif
  return rates;
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out;
}

std::string json_number(double x) {
  if (!std::isfinite(x)) return "null";
  std::ostringstream s;
  s.precision(6);
  s << x;
  return s.str();
}

void print_gemm_json(const gemm_rate& g) {
  std::cout << "{\"bench\":\"gemm\",\"backend\":\"" << g.backend << "\",\"dtype\":\"bf16\""
            << ",\"m\":" << g.m << ",\"n\":" << g.n << ",\"k\":" << g.k << ",\"status\":\""
            << g.status << "\",\"detail\":\"" << json_escape(g.detail)
            << "\",\"ms_median\":" << json_number(g.t.ms_median) << ",\"runs\":" << g.t.runs
            << ",\"tflops\":" << json_number(g.tflops) << "}" << std::endl;
}

void print_row_json(const measurement& m, double gemm_tflops) {
  const shape_config& s = m.shape;
  std::cout << "{\"bench\":\"gpu_attention\",\"backend\":\"" << m.backend << "\",\"policy\":\""
            << policy_name(m.policy) << "\",\"mask\":\"" << (s.causal ? "causal" : "none")
            << "\",\"dtype\":\"bf16\",\"B\":" << s.batch << ",\"T\":" << s.seq_len
            << ",\"H\":" << s.heads << ",\"D\":" << s.head_dim << ",\"direction\":\"" << m.direction
            << "\",\"status\":\"" << m.status << "\",\"detail\":\"" << json_escape(m.detail)
            << "\",\"flops\":"
            << json_number(m.direction == "forward" ? s.forward_flops() : s.backward_flops())
            << ",\"ms_median\":" << json_number(m.ms_median)
            << ",\"ms_min\":" << json_number(m.ms_min) << ",\"ms_max\":" << json_number(m.ms_max)
            << ",\"runs\":" << m.runs << ",\"tflops\":" << json_number(m.tflops)
            << ",\"gemm_fraction\":"
            << (gemm_tflops > 0 && m.status == "ok" ? json_number(m.tflops / gemm_tflops) : "null")
            << ",\"io_bytes\":" << m.io_bytes << ",\"workspace_bytes\":" << m.workspace_bytes
            << ",\"nonfinite_outputs\":" << m.nonfinite_outputs << "}"
            << std::endl;  // flushed: a killed run keeps what it printed
}

/// The vanilla row of the same backend, shape and direction, when it was measured.
const measurement* vanilla_of(const std::vector<measurement>& rows, const measurement& m) {
  for (const measurement& r : rows) {
    if (r.policy == policy_id::vanilla && r.backend == m.backend && r.direction == m.direction &&
        r.shape.seq_len == m.shape.seq_len && r.shape.head_dim == m.shape.head_dim &&
        r.shape.causal == m.shape.causal && r.status == "ok") {
      return &r;
    }
  }
  return nullptr;
}

void print_markdown(const std::vector<measurement>& rows, double gemm_tflops) {
  std::printf(
      "\n| backend | policy | mask | D | T | BxH | dir | ms | TFLOP/s | of GEMM | vs vanilla | "
      "workspace MiB | status |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const measurement& m : rows) {
    const shape_config& s = m.shape;
    std::printf("| %s | %s | %s | %d | %d | %dx%d | %s |", m.backend.c_str(), policy_name(m.policy),
                s.causal ? "causal" : "none", s.head_dim, s.seq_len, s.batch, s.heads,
                m.direction == "forward" ? "fwd" : "bwd");
    if (m.status != "ok") {
      std::printf(" | | | | | %s: %.60s |\n", m.status.c_str(), m.detail.c_str());
      continue;
    }
    std::printf(" %.3f | %.1f |", m.ms_median, m.tflops);
    if (gemm_tflops > 0) {
      std::printf(" %.0f%% |", 100.0 * m.tflops / gemm_tflops);
    } else {
      std::printf(" |");
    }
    const measurement* base = vanilla_of(rows, m);
    if (base != nullptr && m.policy != policy_id::vanilla) {
      std::printf(" %+.1f%% |", 100.0 * (m.ms_median / base->ms_median - 1.0));
    } else {
      std::printf(" |");
    }
    std::printf(" %.1f | ok |\n", static_cast<double>(m.workspace_bytes) / (1 << 20));
  }
}

// ---------------------------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------------------------

struct cli {
  bool quick = false, check = false, gemm = true, unfused = true;
  bench_options options;
};

int parse_count(const char* flag, const char* value) {
  if (value == nullptr) throw error(sinkmoe::detail::concat(flag, " needs a value"));
  char* end = nullptr;
  const long n = std::strtol(value, &end, 10);
  if (end == value || *end != '\0' || n < 0 || n > 100000) {
    throw error(
        sinkmoe::detail::concat(flag, " = '", value, "': expected an integer in [0, 100000]"));
  }
  return static_cast<int>(n);
}

cli parse(int argc, char** argv) {
  cli c;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      c.quick = true;
    } else if (a == "--check") {
      c.check = true;
    } else if (a == "--no-gemm") {
      c.gemm = false;
    } else if (a == "--fused-only") {
      c.unfused = false;
    } else if (a == "--runs") {
      c.options.runs = std::max(1, parse_count("--runs", i + 1 < argc ? argv[++i] : nullptr));
    } else if (a == "--warmup") {
      c.options.warmup = parse_count("--warmup", i + 1 < argc ? argv[++i] : nullptr);
    } else if (a == "--help" || a == "-h") {
      std::printf(
          "usage: gpu_attention [--quick] [--check] [--runs N] [--warmup N] [--no-gemm] "
          "[--fused-only]\n");
      std::exit(0);
    } else {
      throw error(sinkmoe::detail::concat("unknown argument '", a, "' (see --help)"));
    }
  }
  return c;
}

constexpr int k_tokens = 16 * 1024;  // B * T
constexpr int k_model_width = 2048;  // H * D

std::vector<shape_config> matrix(bool quick) {
  std::vector<shape_config> shapes;
  const std::vector<int> dims = quick ? std::vector<int>{128} : std::vector<int>{128, 64};
  const std::vector<int> lengths =
      quick ? std::vector<int>{4096} : std::vector<int>{1024, 4096, 16384};
  for (int d : dims) {
    for (int t : lengths) {
      for (bool causal : {true, false}) {
        shapes.push_back({k_tokens / t, t, k_model_width / d, d, causal});
      }
    }
  }
  return shapes;
}

workspace allocate_workspace(cudaStream_t stream) {
  workspace ws;
  ws.stream = stream;
  ws.elements = static_cast<std::size_t>(k_tokens) * k_model_width;
  ws.heads = k_model_width / 64;  // the most heads of any row (D = 64)
  ws.row_stats = static_cast<std::size_t>(k_tokens) * ws.heads;
  for (auto* b : {&ws.q, &ws.k, &ws.v, &ws.gate_logits, &ws.out, &ws.dout, &ws.dq, &ws.dk, &ws.dv,
                  &ws.dgate_logits}) {
    *b = device_buffer<element>(ws.elements);
  }
  for (auto* b : {&ws.lse, &ws.router, &ws.drouter}) *b = device_buffer<float>(ws.row_stats);
  ws.sinks = device_buffer<float>(ws.heads);
  ws.dsinks = device_buffer<float>(ws.heads);
  // Inputs: unit normal q, k, v, dout; gate logits N(0, 2^2) (gates spread over (0, 1));
  // sink logits N(0, 1); dL/dG small, as a balancing loss's.
  fill_normal(ws.q.data(), ws.elements, 1, 1.0f, stream);
  fill_normal(ws.k.data(), ws.elements, 2, 1.0f, stream);
  fill_normal(ws.v.data(), ws.elements, 3, 1.0f, stream);
  fill_normal(ws.gate_logits.data(), ws.elements, 4, 2.0f, stream);
  fill_normal(ws.dout.data(), ws.elements, 5, 1.0f, stream);
  fill_normal(ws.sinks.data(), ws.heads, 6, 1.0f, 0.0f, stream);
  fill_normal(ws.drouter.data(), ws.row_stats, 7, 1e-2f, 0.0f, stream);
  SINKMOE_CUDA_CHECK(cudaStreamSynchronize(stream));
  return ws;
}

int run(int argc, char** argv) {
  const cli c = parse(argc, argv);
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "gpu_attention: no CUDA device\n");
    return 3;
  }
  cudaDeviceProp prop{};
  SINKMOE_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::cout << "{\"bench\":\"device\",\"name\":\"" << json_escape(prop.name)
            << "\",\"sm\":" << prop.major * 10 + prop.minor
            << ",\"multiprocessors\":" << prop.multiProcessorCount
            << ",\"memory_bytes\":" << prop.totalGlobalMem
            << ",\"backward_built\":" << (SINKMOE_BENCH_HAS_BACKWARD ? "true" : "false")
            << ",\"unfused_built\":" << (SINKMOE_BENCH_HAS_UNFUSED ? "true" : "false") << "}"
            << std::endl;

  const policy_entry policies[k_policy_count] = {policy_entry_vanilla(), policy_entry_sink(),
                                                 policy_entry_gated(), policy_entry_sink_gated()};
  const std::vector<shape_config> shapes = matrix(c.quick);

  if (c.check) {
    bool failed = false;
    for (int d : {128, 64}) {
      if (c.quick && d != 128) continue;
      for (bool causal : {true, false}) {
        for (const policy_entry& p : policies) {
          std::vector<std::string> log;
          std::string failure;
          try {
            failure = p.check(d, causal, log);
          } catch (const std::exception& ex) {
            failure = ex.what();
          }
          std::fprintf(stderr, "check %s/%s D=%d: %s\n", policy_name(p.id),
                       causal ? "causal" : "none", d, failure.empty() ? "ok" : "FAILED");
          for (const std::string& line : log) std::fprintf(stderr, "    %s\n", line.c_str());
          std::cout << "{\"bench\":\"check\",\"policy\":\"" << policy_name(p.id) << "\",\"mask\":\""
                    << (causal ? "causal" : "none") << "\",\"D\":" << d << ",\"status\":\""
                    << (failure.empty() ? "ok" : "error") << "\",\"detail\":\""
                    << json_escape(failure) << "\"}" << std::endl;
          failed = failed || !failure.empty();
        }
      }
    }
    if (failed) {
      std::fprintf(stderr,
                   "gpu_attention: --check FAILED: the GPU results differ from the CPU "
                   "backend; nothing was timed\n");
      return 2;
    }
  }

  cudaStream_t stream = nullptr;
  SINKMOE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

  double gemm_tflops = 0;
  if (c.gemm) {
    for (const gemm_rate& g : measure_gemm_rates(c.options, stream)) {
      print_gemm_json(g);
      if (g.status == "ok") gemm_tflops = std::max(gemm_tflops, g.tflops);
    }
  }

  workspace ws = allocate_workspace(stream);
  unfused_state unfused{};
  std::vector<std::string> backends{"fused"};
  if (c.unfused && unfused_missing() == nullptr) backends.push_back("unfused");

  std::vector<measurement> rows;
  // The fused rows first: a run cut short by a time limit keeps them.
  for (const std::string& backend : backends) {
    for (const shape_config& s : shapes) {
      for (const policy_entry& p : policies) {
        const std::size_t first = rows.size();
        p.measure(backend, s, ws, &unfused, c.options, rows);
        for (std::size_t i = first; i < rows.size(); ++i) print_row_json(rows[i], gemm_tflops);
      }
    }
  }
  int failed = 0;
  for (const measurement& m : rows) failed += m.status == "error";
  std::cout << "{\"bench\":\"summary\",\"rows\":" << rows.size() << ",\"failed\":" << failed
            << ",\"gemm_tflops\":" << json_number(gemm_tflops) << "}\n";
  print_markdown(rows, gemm_tflops);
  std::printf(
      "\nFLOPs as FlashAttention counts them: forward 4*B*H*T^2*D (causal: half), "
      "backward 2.5x forward. 'of GEMM': TFLOP/s over the bf16 GEMM rate measured above "
      "(%.1f TFLOP/s). 'vs vanilla': time over the vanilla row of the same kernel and "
      "shape. Median of %d timed calls.\n",
      gemm_tflops, c.options.runs);
  ws = workspace{};
  SINKMOE_CUDA_CHECK(cudaStreamDestroy(stream));
  return failed == 0 ? 0 : 1;
}

}  // namespace
}  // namespace sinkmoe::bench

int main(int argc, char** argv) {
  try {
    return sinkmoe::bench::run(argc, argv);
  } catch (const std::exception& ex) {
    std::fprintf(stderr, "gpu_attention: %s\n", ex.what());
    return 3;
  }
}
