#pragma once
// sinkmoe::blaslt::context: row-major (strided-batched) GEMMs with fused epilogues on cuBLASLt,
// with a plan cache keyed by shape, types, epilogue and alignment (plan_cache.hpp). The GEMM is
// described by blaslt::matmul_desc (desc.hpp, row-major terms, validated before any call).
//
//   sinkmoe::blaslt::context ctx;            // handle + 32 MiB workspace on the current device
//   sinkmoe::blaslt::matmul_desc g{...};     // D = alpha op(A) op(B) + beta C, fp32 compute
//   ctx.matmul(g, stream);                   // enqueued on stream; no synchronisation
//
// Linking: this header calls cuBLASLt and the CUDA runtime. With CMake, link your target to
// CUDA::cublasLt (and CUDA::cudart) from find_package(CUDAToolkit); the sinkmoe::sinkmoe target
// does not carry them, since most of the library needs neither. It compiles with nvcc, or with
// any C++20 compiler given the toolkit's include directory and SINKMOE_HAS_CUDA=1.
//
// Row-major onto column-major: a row-major R x C matrix with leading dimension ld is the
// column-major C x R matrix with the same ld. So row-major D = op(A) op(B) is column-major
// D^T = op(B)^T op(A)^T: cuBLASLt gets (B, A) in that order, m and n swapped, and each
// operand's own transpose flag.
//
// Threads and streams: a context is not thread-safe, and its one workspace is shared by every
// call, so calls on different streams must be ordered (or use one context per stream). A
// context belongs to the device current when it was made.

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <sinkmoe/core/config.hpp>
#include <sinkmoe/core/error.hpp>
#include <sinkmoe/cuda/blaslt/desc.hpp>
#include <sinkmoe/cuda/blaslt/plan_cache.hpp>
#include <sinkmoe/cuda/blaslt/status.hpp>
#include <sinkmoe/cuda/check.hpp>
#include <string>
#include <type_traits>
#include <utility>

namespace sinkmoe::blaslt {

/// The cudaDataType_t of a dtype.
inline cudaDataType_t cuda_data_type(dtype type) {
  switch (type) {
    case dtype::f32:
      return CUDA_R_32F;
    case dtype::f16:
      return CUDA_R_16F;
    case dtype::bf16:
      return CUDA_R_16BF;
  }
  throw error(
      sinkmoe::detail::concat("blaslt: no CUDA data type for dtype ", static_cast<int>(type)));
}

/// cuBLASLt's epilogue for a row-major epilogue (bgrada / bgradb swap with the operands).
inline cublasLtEpilogue_t cublaslt_epilogue(epilogue epi) {
  switch (epi) {
    case epilogue::none:
      return CUBLASLT_EPILOGUE_DEFAULT;
    case epilogue::bias:
      return CUBLASLT_EPILOGUE_BIAS;
    case epilogue::gelu:
      return CUBLASLT_EPILOGUE_GELU;
    case epilogue::gelu_bias:
      return CUBLASLT_EPILOGUE_GELU_BIAS;
    case epilogue::gelu_aux:
      return CUBLASLT_EPILOGUE_GELU_AUX;
    case epilogue::gelu_aux_bias:
      return CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
    case epilogue::dgelu:
      return CUBLASLT_EPILOGUE_DGELU;
    case epilogue::dgelu_bgrad:
      return CUBLASLT_EPILOGUE_DGELU_BGRAD;
    case epilogue::bgrada:
      return CUBLASLT_EPILOGUE_BGRADB;  // op(A) is cuBLASLt's B after the swap
    case epilogue::bgradb:
      return CUBLASLT_EPILOGUE_BGRADA;
  }
  throw error(sinkmoe::detail::concat("blaslt: unknown epilogue ", static_cast<int>(epi)));
}

namespace detail {

struct matmul_desc_deleter {
  void operator()(cublasLtMatmulDesc_t desc) const noexcept { cublasLtMatmulDescDestroy(desc); }
};
struct layout_deleter {
  void operator()(cublasLtMatrixLayout_t layout) const noexcept {
    cublasLtMatrixLayoutDestroy(layout);
  }
};
struct preference_deleter {
  void operator()(cublasLtMatmulPreference_t pref) const noexcept {
    cublasLtMatmulPreferenceDestroy(pref);
  }
};
struct handle_deleter {
  void operator()(cublasLtHandle_t handle) const noexcept { cublasLtDestroy(handle); }
};
struct device_memory_deleter {
  void operator()(void* pointer) const noexcept { cudaFree(pointer); }
};

using unique_matmul_desc =
    std::unique_ptr<std::remove_pointer_t<cublasLtMatmulDesc_t>, matmul_desc_deleter>;
using unique_layout =
    std::unique_ptr<std::remove_pointer_t<cublasLtMatrixLayout_t>, layout_deleter>;
using unique_preference =
    std::unique_ptr<std::remove_pointer_t<cublasLtMatmulPreference_t>, preference_deleter>;
using unique_handle = std::unique_ptr<std::remove_pointer_t<cublasLtHandle_t>, handle_deleter>;
using unique_device_memory = std::unique_ptr<void, device_memory_deleter>;

/// Sets one attribute of a matmul descriptor, checked.
template <class Value>
void set_desc_attribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attribute,
                        const Value& value, const std::string& shapes) {
  SINKMOE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, attribute, &value, sizeof(value)),
                       shapes);
}

/// The column-major layout of a row-major rows x cols matrix (cols x rows, same ld), batched.
inline unique_layout make_layout(dtype type, std::int64_t rows, std::int64_t cols, std::int64_t ld,
                                 int batch, std::int64_t batch_stride, const std::string& shapes) {
  cublasLtMatrixLayout_t raw = nullptr;
  // cuBLASLt rejects ld < 1 even for an empty matrix.
  const std::int64_t leading = ld > 0 ? ld : 1;
  SINKMOE_CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&raw, cuda_data_type(type), static_cast<std::uint64_t>(cols),
                                 static_cast<std::uint64_t>(rows), leading),
      shapes);
  unique_layout layout(raw);
  if (batch > 1) {
    const std::int32_t count = batch;
    SINKMOE_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(raw, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                                                          &count, sizeof(count)),
                         shapes);
    SINKMOE_CUBLAS_CHECK(
        cublasLtMatrixLayoutSetAttribute(raw, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                         &batch_stride, sizeof(batch_stride)),
        shapes);
  }
  return layout;
}

}  // namespace detail

/// A cached cuBLASLt plan: the matmul descriptor, the four column-major layouts (cuBLASLt's
/// A = our B, its B = our A) and the algorithm the heuristic chose.
struct matmul_plan {
  detail::unique_matmul_desc operation;
  detail::unique_layout layout_a, layout_b, layout_c, layout_d;  // cuBLASLt's A, B, C, D
  cublasLtMatmulAlgo_t algorithm{};
  std::size_t workspace_bytes = 0;
};

/// RAII owner of a cuBLASLt handle, a device workspace and a plan cache; runs matmul_descs.
class context {
 public:
  /// A handle and `workspace_bytes` of device memory on the current device, and room for
  /// `plan_capacity` cached plans.
  explicit context(std::size_t workspace_bytes = 32u << 20, std::size_t plan_capacity = 128)
      : workspace_bytes_(workspace_bytes), plans_(plan_capacity) {
    cublasLtHandle_t raw = nullptr;
    SINKMOE_CUBLAS_CHECK(cublasLtCreate(&raw), "context construction");
    handle_.reset(raw);
    if (workspace_bytes_ > 0) {
      void* memory = nullptr;
      SINKMOE_CUDA_CHECK(cudaMalloc(&memory, workspace_bytes_));
      workspace_.reset(memory);
    }
  }

  /// Validates desc (sinkmoe::error naming the field, before any call), finds or builds its
  /// plan (one heuristic query per key), and enqueues the GEMM on stream. An empty output does
  /// nothing; k == 0 zeroes D (the only empty product validate() admits).
  void matmul(const matmul_desc& desc, cudaStream_t stream) {
    validate(desc);
    if (is_empty_output(desc)) return;
    if (desc.k == 0) {
      zero_output(desc, stream);
      return;
    }
    const std::string shapes = describe(desc);
    matmul_plan& plan =
        plans_.get_or_create(make_plan_key(desc), [&] { return build_plan(desc, shapes); });
    // The key fixed the epilogue pointers' alignment, not their values: set this call's.
    if (reads_bias(desc.epi) || writes_bias(desc.epi))
      detail::set_desc_attribute(plan.operation.get(), CUBLASLT_MATMUL_DESC_BIAS_POINTER, desc.bias,
                                 shapes);
    if (reads_aux(desc.epi) || writes_aux(desc.epi))
      detail::set_desc_attribute(plan.operation.get(), CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                                 static_cast<const void*>(desc.aux), shapes);
    // beta == 0: pass D as C (same layout, never read).
    const void* c = reads_c(desc) ? desc.c : desc.d;
    SINKMOE_CUBLAS_CHECK(
        cublasLtMatmul(handle_.get(), plan.operation.get(), &desc.alpha, desc.b,
                       plan.layout_a.get(), desc.a, plan.layout_b.get(), &desc.beta, c,
                       plan.layout_c.get(), desc.d, plan.layout_d.get(), &plan.algorithm,
                       workspace_.get(), plan.workspace_bytes, stream),
        shapes);
  }

  /// The cuBLASLt handle (for callers that issue their own cuBLASLt calls).
  [[nodiscard]] cublasLtHandle_t handle() const { return handle_.get(); }
  /// Bytes of device workspace offered to every GEMM.
  [[nodiscard]] std::size_t workspace_bytes() const { return workspace_bytes_; }
  /// The plan cache (sizes and hit/miss counters).
  [[nodiscard]] const plan_cache<matmul_plan>& plans() const { return plans_; }

 private:
  /// D = 0 for an empty inner dimension: one 2-D memset per batch (all-zero bytes are 0.0 in
  /// f32, f16 and bf16).
  static void zero_output(const matmul_desc& desc, cudaStream_t stream) {
    const std::size_t bytes = static_cast<std::size_t>(element_bytes(desc.d_type));
    for (int b = 0; b < desc.batch; ++b) {
      char* base = static_cast<char*>(desc.d) + static_cast<std::size_t>(b) *
                                                    static_cast<std::size_t>(desc.batch_stride_d) *
                                                    bytes;
      SINKMOE_CUDA_CHECK(cudaMemset2DAsync(base, static_cast<std::size_t>(desc.ldd) * bytes, 0,
                                           static_cast<std::size_t>(desc.n) * bytes,
                                           static_cast<std::size_t>(desc.m), stream));
    }
  }

  /// Descriptor, layouts and the heuristic's best algorithm for desc.
  matmul_plan build_plan(const matmul_desc& desc, const std::string& shapes) const {
    matmul_plan plan;
    cublasLtMatmulDesc_t raw_desc = nullptr;
    SINKMOE_CUBLAS_CHECK(cublasLtMatmulDescCreate(&raw_desc, CUBLAS_COMPUTE_32F, CUDA_R_32F),
                         shapes);
    plan.operation.reset(raw_desc);
    // Swapped operands: cuBLASLt's A is our B (with our B's transpose), its B is our A.
    const std::int32_t trans_a = desc.transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const std::int32_t trans_b = desc.transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    detail::set_desc_attribute(raw_desc, CUBLASLT_MATMUL_DESC_TRANSA, trans_a, shapes);
    detail::set_desc_attribute(raw_desc, CUBLASLT_MATMUL_DESC_TRANSB, trans_b, shapes);
    const std::uint32_t epi = cublaslt_epilogue(desc.epi);
    detail::set_desc_attribute(raw_desc, CUBLASLT_MATMUL_DESC_EPILOGUE, epi, shapes);
    // The heuristic reads the epilogue pointers for their alignment: give it this call's.
    if (reads_bias(desc.epi) || writes_bias(desc.epi)) {
      detail::set_desc_attribute(raw_desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, desc.bias, shapes);
      const std::int32_t bias_type = cuda_data_type(desc.bias_type);
      detail::set_desc_attribute(raw_desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, bias_type, shapes);
    }
    if (reads_aux(desc.epi) || writes_aux(desc.epi)) {
      detail::set_desc_attribute(raw_desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                                 static_cast<const void*>(desc.aux), shapes);
      detail::set_desc_attribute(raw_desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, desc.ld_aux,
                                 shapes);
    }

    const std::int64_t m = desc.m, n = desc.n, k = desc.k;
    // Each operand as stored (row-major rows x cols): cuBLASLt sees its column-major transpose.
    plan.layout_a =
        detail::make_layout(desc.b_type, desc.transpose_b ? n : k, desc.transpose_b ? k : n,
                            desc.ldb, desc.batch, desc.batch_stride_b, shapes);
    plan.layout_b =
        detail::make_layout(desc.a_type, desc.transpose_a ? k : m, desc.transpose_a ? m : k,
                            desc.lda, desc.batch, desc.batch_stride_a, shapes);
    plan.layout_d =
        detail::make_layout(desc.d_type, m, n, desc.ldd, desc.batch, desc.batch_stride_d, shapes);
    plan.layout_c = reads_c(desc) ? detail::make_layout(desc.d_type, m, n, desc.ldc, desc.batch,
                                                        desc.batch_stride_c, shapes)
                                  : detail::make_layout(desc.d_type, m, n, desc.ldd, desc.batch,
                                                        desc.batch_stride_d, shapes);

    cublasLtMatmulPreference_t raw_pref = nullptr;
    SINKMOE_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&raw_pref), shapes);
    detail::unique_preference preference(raw_pref);
    const std::uint64_t max_workspace = workspace_bytes_;
    SINKMOE_CUBLAS_CHECK(
        cublasLtMatmulPreferenceSetAttribute(raw_pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                             &max_workspace, sizeof(max_workspace)),
        shapes);
    // The algorithm must suit every pointer with this key's alignment, not just this call's.
    const plan_key key = make_plan_key(desc);
    const std::pair<cublasLtMatmulPreferenceAttributes_t, std::uint32_t> alignments[] = {
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_b},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_a},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_c},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_d}};
    for (const auto& [attribute, bytes] : alignments)
      SINKMOE_CUBLAS_CHECK(
          cublasLtMatmulPreferenceSetAttribute(raw_pref, attribute, &bytes, sizeof(bytes)), shapes);

    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
        handle_.get(), raw_desc, plan.layout_a.get(), plan.layout_b.get(), plan.layout_c.get(),
        plan.layout_d.get(), raw_pref, 1, &result, &found);
    sinkmoe::detail::require(
        status == CUBLAS_STATUS_SUCCESS && found > 0 && result.state == CUBLAS_STATUS_SUCCESS,
        "cuBLASLt has no algorithm for ", shapes,
        " (cublasLtMatmulAlgoGetHeuristic: ", status_name(status), ", ", found,
        " results, workspace ", workspace_bytes_, " bytes)");
    plan.algorithm = result.algo;
    plan.workspace_bytes = result.workspaceSize;
    return plan;
  }

  std::size_t workspace_bytes_;
  detail::unique_handle handle_;
  detail::unique_device_memory workspace_;
  plan_cache<matmul_plan> plans_;
};

}  // namespace sinkmoe::blaslt
