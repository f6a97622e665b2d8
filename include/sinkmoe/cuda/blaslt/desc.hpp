#pragma once
// One GEMM for sinkmoe::blaslt::context::matmul (sinkmoe/cuda/blaslt/matmul.cuh), described in
// ROW-MAJOR terms, and its validation. Host-only C++20: no CUDA or cuBLASLt header, so that the
// validation is tested in CI without a GPU or a toolkit.
//
//   D[b] = alpha * op(A[b]) * op(B[b]) + beta * C[b], then the epilogue, for b < batch
//
// op(A) is m x k, op(B) is k x n, C and D are m x n. Every matrix is row-major with a leading
// dimension (the stride between rows, in elements); batch b of a matrix starts at
// pointer + b * batch_stride (in elements). Compute and scale type: fp32.

#include <cmath>
#include <cstdint>
#include <sinkmoe/core/error.hpp>
#include <string>
#include <string_view>

namespace sinkmoe::blaslt {

/// Element type of a matrix or vector.
enum class dtype : std::uint8_t { f32, f16, bf16 };

/// Bytes per element.
constexpr int element_bytes(dtype type) { return type == dtype::f32 ? 4 : 2; }

/// "f32", "f16" or "bf16".
constexpr std::string_view dtype_name(dtype type) {
  switch (type) {
    case dtype::f32:
      return "f32";
    case dtype::f16:
      return "f16";
    case dtype::bf16:
      return "bf16";
  }
  return "unknown dtype";
}

/// What happens to alpha * op(A) op(B) + beta * C before it is stored, in the row-major terms
/// of matmul_desc (D is m x n). GELU is cuBLASLt's tanh form (see gelu_tanh in gelu.hpp).
///   none           D = acc
///   bias           D = acc + bias[j]                          bias: input, length n
///   gelu           D = gelu(acc)
///   gelu_bias      D = gelu(acc + bias[j])                    bias: input, length n
///   gelu_aux       aux = acc;            D = gelu(aux)        aux: output, m x n
///   gelu_aux_bias  aux = acc + bias[j];  D = gelu(aux)        bias: input, aux: output
///   dgelu          D = acc * gelu'(aux)                       aux: input, m x n
///   dgelu_bgrad    D = acc * gelu'(aux); bias[j] = sum_i D[i, j]   aux: input, bias: output (n)
///   bgrada         D = acc; bias[i] = sum_k op(A)[i, k]        bias: output, length m
///   bgradb         D = acc; bias[j] = sum_k op(B)[k, j]        bias: output, length n
/// bgrada / bgradb name the operand of THIS row-major description; under the row-major to
/// column-major swap they are cuBLASLt's BGRADB / BGRADA respectively.
/// Epilogues other than none need batch == 1; bias and aux have type d_type (cuBLASLt's rule).
enum class epilogue : std::uint8_t {
  none,
  bias,
  gelu,
  gelu_bias,
  gelu_aux_bias,
  dgelu,
  dgelu_bgrad,
  bgradb,
  gelu_aux,
  bgrada,
};

/// The epilogue's name as spelled in the enum.
constexpr std::string_view epilogue_name(epilogue epi) {
  switch (epi) {
    case epilogue::none:
      return "none";
    case epilogue::bias:
      return "bias";
    case epilogue::gelu:
      return "gelu";
    case epilogue::gelu_bias:
      return "gelu_bias";
    case epilogue::gelu_aux_bias:
      return "gelu_aux_bias";
    case epilogue::dgelu:
      return "dgelu";
    case epilogue::dgelu_bgrad:
      return "dgelu_bgrad";
    case epilogue::bgradb:
      return "bgradb";
    case epilogue::gelu_aux:
      return "gelu_aux";
    case epilogue::bgrada:
      return "bgrada";
  }
  return "unknown epilogue";
}

/// The epilogue reads a bias vector.
constexpr bool reads_bias(epilogue epi) {
  return epi == epilogue::bias || epi == epilogue::gelu_bias || epi == epilogue::gelu_aux_bias;
}
/// The epilogue writes a bias gradient into desc.bias.
constexpr bool writes_bias(epilogue epi) {
  return epi == epilogue::dgelu_bgrad || epi == epilogue::bgrada || epi == epilogue::bgradb;
}
/// The epilogue writes the GELU input into desc.aux.
constexpr bool writes_aux(epilogue epi) {
  return epi == epilogue::gelu_aux || epi == epilogue::gelu_aux_bias;
}
/// The epilogue reads the GELU input from desc.aux.
constexpr bool reads_aux(epilogue epi) {
  return epi == epilogue::dgelu || epi == epilogue::dgelu_bgrad;
}
/// Length of the bias (or bias-gradient) vector for an m x n output: m for bgrada, else n.
constexpr std::int64_t bias_length(epilogue epi, std::int64_t m, std::int64_t n) {
  return epi == epilogue::bgrada ? m : n;
}

/// One (strided-batched) GEMM in row-major terms; see the top of this file.
struct matmul_desc {
  int m = 0, n = 0, k = 0, batch = 1;
  bool transpose_a = false, transpose_b = false;  ///< op(A) is m x k, op(B) is k x n
  dtype a_type = dtype::bf16, b_type = dtype::bf16, d_type = dtype::bf16;  ///< C has d_type

  const void* a = nullptr;  ///< stored m x k (k x m when transpose_a)
  std::int64_t lda = 0;
  std::int64_t batch_stride_a = 0;
  const void* b = nullptr;  ///< stored k x n (n x k when transpose_b)
  std::int64_t ldb = 0;
  std::int64_t batch_stride_b = 0;
  const void* c = nullptr;  ///< m x n; read only when beta != 0 (may then equal d)
  std::int64_t ldc = 0;
  std::int64_t batch_stride_c = 0;
  void* d = nullptr;  ///< m x n output; batches must not overlap
  std::int64_t ldd = 0;
  std::int64_t batch_stride_d = 0;

  float alpha = 1.0f, beta = 0.0f;
  epilogue epi = epilogue::none;
  const void* bias = nullptr;    ///< bias input, or bias-gradient output (per epilogue)
  dtype bias_type = dtype::f32;  ///< must equal d_type when the epilogue uses a bias
  void* aux = nullptr;           ///< GELU input (pre-activation), m x n, d_type
  std::int64_t ld_aux = 0;       ///< >= n and a multiple of 8 (cuBLASLt)
};

/// "m=.. n=.. k=.. batch=.. op(A)=N|T .. " : the shapes and types of a call, for messages.
inline std::string describe(const matmul_desc& desc) {
  return detail::concat(
      "m=", desc.m, " n=", desc.n, " k=", desc.k, " batch=", desc.batch,
      " op(A)=", desc.transpose_a ? 'T' : 'N', " op(B)=", desc.transpose_b ? 'T' : 'N', " types ",
      dtype_name(desc.a_type), " x ", dtype_name(desc.b_type), " -> ", dtype_name(desc.d_type),
      " lda=", desc.lda, " ldb=", desc.ldb, " ldc=", desc.ldc, " ldd=", desc.ldd, " strides ",
      desc.batch_stride_a, "/", desc.batch_stride_b, "/", desc.batch_stride_c, "/",
      desc.batch_stride_d, " epilogue=", epilogue_name(desc.epi));
}

/// True when C is read: beta != 0 (with beta == 0 the call runs with C = D, never read).
constexpr bool reads_c(const matmul_desc& desc) { return desc.beta != 0.0f && desc.c != nullptr; }

/// True when the call computes nothing (an empty output or no batches).
constexpr bool is_empty_output(const matmul_desc& desc) {
  return desc.m == 0 || desc.n == 0 || desc.batch == 0;
}

namespace detail {

/// Checks a row-major operand: a leading dimension covering its row, a non-negative batch
/// stride, and a pointer when it has elements.
inline void require_operand(const char* name, const void* data, std::int64_t rows,
                            std::int64_t cols, std::int64_t ld, std::int64_t batch_stride,
                            const matmul_desc& desc) {
  using sinkmoe::detail::require;
  require(ld >= cols, "matmul_desc.ld", name, " = ", ld, ": must be >= ", cols,
          " (the row length of ", name, ", stored ", rows, " x ", cols, "); ", describe(desc));
  require(batch_stride >= 0, "matmul_desc.batch_stride_", name, " = ", batch_stride,
          ": must be >= 0; ", describe(desc));
  const bool has_elements = rows > 0 && cols > 0 && desc.batch > 0;
  require(!has_elements || data != nullptr, "matmul_desc.", name, " is null for a ", rows, " x ",
          cols, " matrix; ", describe(desc));
}

}  // namespace detail

/// Throws sinkmoe::error naming the field and its value when desc cannot be run: negative
/// sizes, leading dimensions shorter than a row, negative batch strides, null pointers for
/// non-empty matrices, unsupported type combinations, epilogues without their bias or aux, or
/// a batched call with an epilogue. Touches no memory.
inline void validate(const matmul_desc& desc) {
  using sinkmoe::detail::require;
  require(desc.m >= 0, "matmul_desc.m = ", desc.m, ": must be >= 0");
  require(desc.n >= 0, "matmul_desc.n = ", desc.n, ": must be >= 0");
  require(desc.k >= 0, "matmul_desc.k = ", desc.k, ": must be >= 0");
  require(desc.batch >= 0, "matmul_desc.batch = ", desc.batch, ": must be >= 0");
  require(std::isfinite(desc.alpha), "matmul_desc.alpha = ", desc.alpha, ": must be finite");
  require(std::isfinite(desc.beta), "matmul_desc.beta = ", desc.beta, ": must be finite");

  // Types: A and B alike (bf16, f16 or f32); D (and C) as A or f32; compute is always fp32.
  require(desc.a_type == desc.b_type, "matmul_desc.b_type = ", dtype_name(desc.b_type),
          ": must equal a_type = ", dtype_name(desc.a_type));
  require(desc.d_type == desc.a_type || desc.d_type == dtype::f32,
          "matmul_desc.d_type = ", dtype_name(desc.d_type), ": must be a_type (",
          dtype_name(desc.a_type), ") or f32 for a_type ", dtype_name(desc.a_type));

  const std::int64_t m = desc.m, n = desc.n, k = desc.k;
  detail::require_operand("a", desc.a, desc.transpose_a ? k : m, desc.transpose_a ? m : k, desc.lda,
                          desc.batch_stride_a, desc);
  detail::require_operand("b", desc.b, desc.transpose_b ? n : k, desc.transpose_b ? k : n, desc.ldb,
                          desc.batch_stride_b, desc);
  detail::require_operand("d", desc.d, m, n, desc.ldd, desc.batch_stride_d, desc);
  require(desc.batch <= 1 || desc.batch_stride_d > 0 || m * n == 0,
          "matmul_desc.batch_stride_d = 0 with batch = ", desc.batch,
          ": every batch would write the same output; ", describe(desc));
  if (desc.beta != 0.0f) {
    require(desc.c != nullptr || m * n == 0 || desc.batch == 0,
            "matmul_desc.c is null while beta = ", desc.beta, " != 0; ", describe(desc));
    detail::require_operand("c", desc.c, m, n, desc.ldc, desc.batch_stride_c, desc);
  }
  if (reads_c(desc) && desc.c == desc.d) {
    // cuBLASLt computes in place only when C and D share a layout.
    require(desc.ldc == desc.ldd && desc.batch_stride_c == desc.batch_stride_d,
            "matmul_desc.c == d (in place) needs ldc == ldd and equal batch strides (ldc = ",
            desc.ldc, ", ldd = ", desc.ldd, ", batch_stride_c = ", desc.batch_stride_c,
            ", batch_stride_d = ", desc.batch_stride_d, ")");
  }

  const epilogue epi = desc.epi;
  if (epi != epilogue::none) {
    require(desc.batch <= 1, "matmul_desc.epi = ", epilogue_name(epi), " with batch = ", desc.batch,
            ": epilogues are supported for batch <= 1 only");
  }
  if (reads_bias(epi) || writes_bias(epi)) {
    const std::int64_t length = bias_length(epi, m, n);
    require(desc.bias != nullptr || length == 0 || is_empty_output(desc),
            "matmul_desc.bias is null: epilogue ", epilogue_name(epi), " ",
            writes_bias(epi) ? "writes" : "reads", " a bias vector of ", length, " elements; ",
            describe(desc));
    // An empty output runs no GEMM, so a bias gradient would silently stay unwritten.
    require(!writes_bias(epi) || length == 0 || !is_empty_output(desc),
            "matmul_desc.epi = ", epilogue_name(epi), " writes a bias gradient of ", length,
            " elements, but the output is empty (nothing runs, it would stay unwritten); ",
            describe(desc));
    require(desc.bias_type == desc.d_type, "matmul_desc.bias_type = ", dtype_name(desc.bias_type),
            ": epilogue ", epilogue_name(epi), " needs bias_type == d_type (",
            dtype_name(desc.d_type), ")");
  } else {
    require(desc.bias == nullptr, "matmul_desc.bias is set but epilogue ", epilogue_name(epi),
            " uses no bias");
  }
  if (reads_aux(epi) || writes_aux(epi)) {
    require(desc.aux != nullptr || is_empty_output(desc), "matmul_desc.aux is null: epilogue ",
            epilogue_name(epi), " ", writes_aux(epi) ? "writes" : "reads", " the GELU input (", m,
            " x ", n, "); ", describe(desc));
    require(desc.ld_aux >= n && desc.ld_aux % 8 == 0, "matmul_desc.ld_aux = ", desc.ld_aux,
            ": must be >= n = ", n, " and a multiple of 8 (cuBLASLt)");
  } else {
    require(desc.aux == nullptr, "matmul_desc.aux is set but epilogue ", epilogue_name(epi),
            " uses no aux matrix");
  }

  // An empty inner dimension leaves D = beta * C: done with a memset when beta == 0 and there
  // is no epilogue; the rest would need a kernel of its own and is not provided.
  if (k == 0 && !is_empty_output(desc)) {
    require(desc.beta == 0.0f && epi == epilogue::none, "matmul_desc.k = 0 with beta = ", desc.beta,
            " and epilogue ", epilogue_name(epi),
            ": an empty product is supported only as D = 0 (beta = 0, epilogue none)");
  }
}

}  // namespace sinkmoe::blaslt
