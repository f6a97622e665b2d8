#pragma once
// Linear layers on cuBLASLt, host half: the argument structs of linear_forward / linear_backward
// (linear.cuh), their validation, and the GEMMs (matmul_desc) and elementwise step they become.
// Host-only C++20 (no CUDA header), so that validation and the epilogue choices are tested in
// CI without a GPU.
//
// A layer: Z = X W^T + b, Y = act(Z), X [rows, in], W [out, in] (PyTorch's layout), b [out].
//
// Forward: one GEMM; the epilogue adds the bias and applies GELU (and saves Z, the GELU input,
// when pre_activation is given: gelu_aux[_bias]).
// Backward, with dZ = dY (act none) or dY * gelu'(Z) (act gelu):
//   dW = dZ^T X   one GEMM; db = sum over rows of dZ in its epilogue (bgrada: cuBLASLt's
//                 BGRADB), so db needs grad_weight;
//   dX = dZ W     one GEMM; when X itself was gelu(Z_in) of an earlier layer and
//                 input_pre_activation = Z_in is given, the epilogue returns dL/dZ_in instead
//                 (dgelu), and input_grad_bias = sum over rows of dL/dZ_in (dgelu_bgrad): the
//                 earlier layer's bias gradient, so that layer's backward runs with act none.
// Where cuBLASLt's epilogues do not fit: gelu' of THIS layer's activation multiplies an operand
// (dY) of both GEMMs, not a result, so act gelu costs one elementwise kernel
// (gelu_backward_kernel.hpp) writing dZ into grad_pre_activation. Chains of layers avoid it by
// passing input_pre_activation to the next layer's backward instead.
//
// Types: X, W, b, Y, Z, dY, dX in Element (bf16 or fp16; float allowed); dW and db in
// GradElement (Element or float, e.g. fp32 master gradients); fp32 accumulation throughout.
// Gradients are overwritten, not accumulated.

#include <cstdint>
#include <optional>
#include <sinkmoe/core/error.hpp>
#include <sinkmoe/core/tensor_view.hpp>
#include <sinkmoe/cuda/arch/float16.hpp>
#include <sinkmoe/cuda/blaslt/desc.hpp>
#include <sinkmoe/cuda/blaslt/gelu.hpp>
#include <type_traits>

namespace sinkmoe::blaslt {

/// The activation applied to a linear layer's output.
enum class activation : std::uint8_t { none, gelu };

/// The dtype of an element type: float, arch::bf16 or arch::fp16.
template <class T>
constexpr dtype dtype_of() {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, float>) {
    return dtype::f32;
  } else if constexpr (std::is_same_v<U, arch::bf16>) {
    return dtype::bf16;
  } else {
    static_assert(std::is_same_v<U, arch::fp16>, "blaslt: element type must be float, bf16, fp16");
    return dtype::f16;
  }
}

/// Inputs and outputs of linear_forward.
template <class Element>
struct linear_forward_args {
  tensor_view<const Element, 2> x;       ///< [rows, in]
  tensor_view<const Element, 2> weight;  ///< [out, in]
  tensor_view<const Element, 1> bias;    ///< [out], contiguous (optional)
  tensor_view<Element, 2> y;             ///< [rows, out]
  activation act = activation::none;
  /// [rows, out]: Z = X W^T + b, saved for the backward (act gelu only; optional). Its row
  /// stride must be a multiple of 8 (cuBLASLt).
  tensor_view<Element, 2> pre_activation;
};

/// Inputs and outputs of linear_backward (see the top of this file).
template <class Element, class GradElement = Element>
struct linear_backward_args {
  tensor_view<const Element, 2> grad_y;          ///< [rows, out] dL/dY
  tensor_view<const Element, 2> x;               ///< [rows, in] the forward's input
  tensor_view<const Element, 2> weight;          ///< [out, in]
  activation act = activation::none;             ///< as in the forward
  tensor_view<const Element, 2> pre_activation;  ///< [rows, out] Z (act gelu)
  /// [rows, out] receives dL/dZ (act gelu); may be grad_y's or pre_activation's memory.
  tensor_view<Element, 2> grad_pre_activation;
  tensor_view<Element, 2> grad_x;           ///< [rows, in] (optional)
  tensor_view<GradElement, 2> grad_weight;  ///< [out, in] (optional)
  tensor_view<GradElement, 1> grad_bias;    ///< [out], contiguous (optional; needs grad_weight)
  /// [rows, in] Z_in with x = gelu(Z_in) (optional; needs grad_x, which then receives dL/dZ_in).
  /// Its row stride must be a multiple of 8 (cuBLASLt).
  tensor_view<const Element, 2> input_pre_activation;
  tensor_view<Element, 1> input_grad_bias;  ///< [in], contiguous: sum of dL/dZ_in over rows
};

namespace detail {

/// A row-major matrix view: `name` is [rows, cols] (when rows >= 0 / cols >= 0 are given) with
/// unit stride along a row and a non-negative row stride.
template <class T>
void require_matrix(const tensor_view<T, 2>& view, const char* name, std::int64_t rows,
                    std::int64_t cols) {
  using sinkmoe::detail::require;
  require(rows < 0 || view.shape[0] == rows, name, " has shape ", view.shape, ": expected ", rows,
          " rows");
  require(cols < 0 || view.shape[1] == cols, name, " has shape ", view.shape, ": expected ", cols,
          " columns");
  require(view.shape[0] >= 0 && view.shape[1] >= 0, name, " has shape ", view.shape,
          ": extents must be >= 0");
  require(view.shape[1] <= 1 || view.stride[1] == 1, name, " has strides ", view.stride,
          ": the last dimension must have unit stride");
  require(view.shape[0] <= 1 || view.stride[0] >= view.shape[1], name, " has strides ", view.stride,
          " for shape ", view.shape, ": rows must not overlap");
  require(view.data != nullptr || view.numel() == 0, name, " is null for shape ", view.shape);
}

/// A contiguous vector view of `length` elements.
template <class T>
void require_vector(const tensor_view<T, 1>& view, const char* name, std::int64_t length) {
  using sinkmoe::detail::require;
  require(view.shape[0] == length, name, " has shape ", view.shape, ": expected [", length, "]");
  require(length <= 1 || view.stride[0] == 1, name, " has stride ", view.stride,
          ": must be contiguous");
  require(view.data != nullptr || length == 0, name, " is null for shape ", view.shape);
}

/// Leading dimension of a validated matrix view (its row stride; the row length when it has
/// at most one row, where the stride is never used).
template <class T>
std::int64_t leading_dimension(const tensor_view<T, 2>& view) {
  return view.shape[0] <= 1 && view.stride[0] < view.shape[1] ? view.shape[1] : view.stride[0];
}

/// int for a matmul_desc size, or sinkmoe::error naming it.
inline int checked_int(std::int64_t value, const char* name) {
  sinkmoe::detail::require(value <= 0x7fffffff, name, " = ", value, ": exceeds int range");
  return static_cast<int>(value);
}

/// Row stride usable by cuBLASLt's aux matrix: rows can be given any stride when there is one
/// row, so pick the smallest multiple of 8; otherwise the view's stride, checked.
template <class T>
std::int64_t aux_leading_dimension(const tensor_view<T, 2>& view, const char* name) {
  if (view.shape[0] <= 1) return (view.shape[1] + 7) / 8 * 8;
  sinkmoe::detail::require(view.stride[0] % 8 == 0, name, " has strides ", view.stride,
                           ": its row stride must be a multiple of 8 (cuBLASLt GELU aux)");
  return view.stride[0];
}

}  // namespace detail

/// Validates args and returns the one GEMM of linear_forward.
template <class Element>
matmul_desc linear_forward_desc(const linear_forward_args<Element>& args) {
  using sinkmoe::detail::require;
  const std::int64_t rows = args.x.shape[0], in = args.x.shape[1], out = args.weight.shape[0];
  detail::require_matrix(args.x, "linear_forward_args.x", -1, -1);
  detail::require_matrix(args.weight, "linear_forward_args.weight", -1, in);
  detail::require_matrix(args.y, "linear_forward_args.y", rows, out);
  const bool has_bias = !args.bias.empty() || args.bias.shape[0] != 0;
  if (has_bias) detail::require_vector(args.bias, "linear_forward_args.bias", out);
  const bool save_z = !args.pre_activation.empty();
  if (save_z) {
    require(args.act == activation::gelu,
            "linear_forward_args.pre_activation is given but act is none (Y is Z)");
    detail::require_matrix(args.pre_activation, "linear_forward_args.pre_activation", rows, out);
  }

  matmul_desc desc;
  desc.m = detail::checked_int(rows, "linear_forward_args rows");
  desc.n = detail::checked_int(out, "linear_forward_args out features");
  desc.k = detail::checked_int(in, "linear_forward_args in features");
  desc.a_type = desc.b_type = desc.d_type = dtype_of<Element>();
  desc.a = args.x.data;
  desc.lda = detail::leading_dimension(args.x);
  desc.b = args.weight.data;  // [out, in]: op(B) = W^T
  desc.transpose_b = true;
  desc.ldb = detail::leading_dimension(args.weight);
  desc.d = args.y.data;
  desc.ldd = detail::leading_dimension(args.y);
  if (has_bias) {
    desc.bias = args.bias.data;
    desc.bias_type = dtype_of<Element>();
  }
  if (save_z) {
    desc.aux = args.pre_activation.data;
    desc.ld_aux =
        detail::aux_leading_dimension(args.pre_activation, "linear_forward_args.pre_activation");
  }
  if (args.act == activation::none) {
    desc.epi = has_bias ? epilogue::bias : epilogue::none;
  } else if (save_z) {
    desc.epi = has_bias ? epilogue::gelu_aux_bias : epilogue::gelu_aux;
  } else {
    desc.epi = has_bias ? epilogue::gelu_bias : epilogue::gelu;
  }
  validate(desc);
  return desc;
}

/// What linear_backward runs, in order: the GELU backward (when act is gelu), then the
/// weight-gradient and input-gradient GEMMs that were asked for.
template <class Element>
struct linear_backward_steps {
  std::optional<gelu_backward_params<Element>> gelu_backward;
  std::optional<matmul_desc> weight_grad;
  std::optional<matmul_desc> input_grad;
};

/// Validates args and returns linear_backward's steps.
template <class Element, class GradElement>
linear_backward_steps<Element> linear_backward_plan(
    const linear_backward_args<Element, GradElement>& args) {
  using sinkmoe::detail::require;
  static_assert(std::is_same_v<GradElement, Element> || std::is_same_v<GradElement, float>,
                "linear_backward: GradElement must be Element or float");
  const std::int64_t rows = args.x.shape[0], in = args.x.shape[1], out = args.weight.shape[0];
  detail::require_matrix(args.x, "linear_backward_args.x", -1, -1);
  detail::require_matrix(args.weight, "linear_backward_args.weight", -1, in);
  detail::require_matrix(args.grad_y, "linear_backward_args.grad_y", rows, out);

  linear_backward_steps<Element> steps;
  // dZ: grad_y itself, or grad_pre_activation after the GELU backward.
  const Element* grad_z = args.grad_y.data;
  std::int64_t ld_grad_z = detail::leading_dimension(args.grad_y);
  if (args.act == activation::gelu) {
    detail::require_matrix(args.pre_activation, "linear_backward_args.pre_activation", rows, out);
    detail::require_matrix(args.grad_pre_activation, "linear_backward_args.grad_pre_activation",
                           rows, out);
    require(!args.pre_activation.empty() || rows * out == 0,
            "linear_backward_args.pre_activation is missing: act gelu needs Z");
    require(!args.grad_pre_activation.empty() || rows * out == 0,
            "linear_backward_args.grad_pre_activation is missing: act gelu writes dL/dZ there");
    gelu_backward_params<Element> gelu;
    gelu.rows = rows;
    gelu.cols = out;
    gelu.grad_output = args.grad_y.data;
    gelu.ld_grad_output = detail::leading_dimension(args.grad_y);
    gelu.pre_activation = args.pre_activation.data;
    gelu.ld_pre_activation = detail::leading_dimension(args.pre_activation);
    gelu.grad_input = args.grad_pre_activation.data;
    gelu.ld_grad_input = detail::leading_dimension(args.grad_pre_activation);
    steps.gelu_backward = gelu;
    grad_z = args.grad_pre_activation.data;
    ld_grad_z = gelu.ld_grad_input;
  } else {
    require(args.pre_activation.empty() && args.grad_pre_activation.empty(),
            "linear_backward_args.pre_activation / grad_pre_activation are given but act is none");
  }

  const bool has_grad_weight = !args.grad_weight.empty() || args.grad_weight.numel() != 0;
  const bool has_grad_bias = !args.grad_bias.empty() || args.grad_bias.shape[0] != 0;
  if (has_grad_bias)
    require(has_grad_weight,
            "linear_backward_args.grad_bias needs grad_weight: the bias gradient comes out of the "
            "weight-gradient GEMM's epilogue");
  if (has_grad_weight) {
    detail::require_matrix(args.grad_weight, "linear_backward_args.grad_weight", out, in);
    if (has_grad_bias)
      detail::require_vector(args.grad_bias, "linear_backward_args.grad_bias", out);
    // dW [out, in] = dZ^T [out, rows] X [rows, in]; db[o] = sum_r dZ[r, o] = sum_k op(A)[o, k].
    matmul_desc desc;
    desc.m = detail::checked_int(out, "linear_backward_args out features");
    desc.n = detail::checked_int(in, "linear_backward_args in features");
    desc.k = detail::checked_int(rows, "linear_backward_args rows");
    desc.a_type = desc.b_type = dtype_of<Element>();
    desc.d_type = dtype_of<GradElement>();
    desc.a = grad_z;
    desc.transpose_a = true;
    desc.lda = ld_grad_z;
    desc.b = args.x.data;
    desc.ldb = detail::leading_dimension(args.x);
    desc.d = args.grad_weight.data;
    desc.ldd = detail::leading_dimension(args.grad_weight);
    if (has_grad_bias) {
      desc.epi = epilogue::bgrada;
      desc.bias = args.grad_bias.data;
      desc.bias_type = dtype_of<GradElement>();
    }
    // No rows: dW = 0 comes from matmul's empty-product path, but that path has no epilogue.
    require(rows > 0 || !has_grad_bias || out == 0,
            "linear_backward_args.x has 0 rows: db = 0 is not computed by this helper (zero it "
            "directly, or pass no grad_bias)");
    validate(desc);
    steps.weight_grad = desc;
  }

  const bool has_grad_x = !args.grad_x.empty() || args.grad_x.numel() != 0;
  const bool fuse_input_gelu = !args.input_pre_activation.empty();
  const bool has_input_grad_bias =
      !args.input_grad_bias.empty() || args.input_grad_bias.shape[0] != 0;
  if (fuse_input_gelu)
    require(has_grad_x,
            "linear_backward_args.input_pre_activation needs grad_x (which receives "
            "dL/d(input_pre_activation))");
  if (has_input_grad_bias)
    require(fuse_input_gelu,
            "linear_backward_args.input_grad_bias needs input_pre_activation (dgelu_bgrad)");
  if (has_grad_x) {
    detail::require_matrix(args.grad_x, "linear_backward_args.grad_x", rows, in);
    // dX [rows, in] = dZ [rows, out] W [out, in].
    matmul_desc desc;
    desc.m = detail::checked_int(rows, "linear_backward_args rows");
    desc.n = detail::checked_int(in, "linear_backward_args in features");
    desc.k = detail::checked_int(out, "linear_backward_args out features");
    desc.a_type = desc.b_type = desc.d_type = dtype_of<Element>();
    desc.a = grad_z;
    desc.lda = ld_grad_z;
    desc.b = args.weight.data;
    desc.ldb = detail::leading_dimension(args.weight);
    desc.d = args.grad_x.data;
    desc.ldd = detail::leading_dimension(args.grad_x);
    if (fuse_input_gelu) {
      detail::require_matrix(args.input_pre_activation, "linear_backward_args.input_pre_activation",
                             rows, in);
      // cuBLASLt reads the aux matrix through a non-const pointer attribute; it is an input.
      desc.aux = const_cast<Element*>(args.input_pre_activation.data);
      desc.ld_aux = detail::aux_leading_dimension(args.input_pre_activation,
                                                  "linear_backward_args.input_pre_activation");
      desc.epi = epilogue::dgelu;
      if (has_input_grad_bias) {
        detail::require_vector(args.input_grad_bias, "linear_backward_args.input_grad_bias", in);
        desc.epi = epilogue::dgelu_bgrad;
        desc.bias = args.input_grad_bias.data;
        desc.bias_type = dtype_of<Element>();
      }
    }
    validate(desc);
    steps.input_grad = desc;
  }
  return steps;
}

}  // namespace sinkmoe::blaslt
