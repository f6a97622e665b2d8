#pragma once
// Linear layers on cuBLASLt for model code: Z = X W^T + b, Y = act(Z), and the backward
// (dX, dW, db), with bias, GELU and bias-gradient epilogues. The arguments, their validation
// and which epilogue serves which gradient are in linear_desc.hpp. nvcc only (the GELU
// backward is a kernel); link CUDA::cublasLt (see matmul.cuh).
//
//   sinkmoe::blaslt::context ctx;
//   blaslt::linear_forward(ctx, {x, w1, b1, h, activation::gelu, z1}, stream);   // h = gelu(z1)
//   blaslt::linear_forward(ctx, {h, w2, b2, y}, stream);
//   // backward of layer 2 also finishes layer 1's GELU and bias gradient (dgelu_bgrad):
//   blaslt::linear_backward(ctx, {.grad_y = dy, .x = h, .weight = w2, .grad_x = dz1,
//                                 .grad_weight = dw2, .grad_bias = db2,
//                                 .input_pre_activation = z1, .input_grad_bias = db1}, stream);
//   blaslt::linear_backward(ctx, {.grad_y = dz1, .x = x, .weight = w1, .grad_x = dx,
//                                 .grad_weight = dw1}, stream);

#if !defined(__CUDACC__)
#error "sinkmoe/cuda/blaslt/linear.cuh launches a kernel: compile it with nvcc"
#endif

#include <sinkmoe/cuda/arch/arch.hpp>
#include <sinkmoe/cuda/blaslt/gelu_backward_kernel.hpp>
#include <sinkmoe/cuda/blaslt/linear_desc.hpp>
#include <sinkmoe/cuda/blaslt/matmul.cuh>
#include <sinkmoe/cuda/check.hpp>

namespace sinkmoe::blaslt {

/// Y = act(X W^T + b) on stream (one GEMM with a bias / GELU epilogue). Throws sinkmoe::error
/// for an invalid argument before anything runs.
template <class Element>
void linear_forward(context& ctx, const linear_forward_args<Element>& args, cudaStream_t stream) {
  ctx.matmul(linear_forward_desc(args), stream);
}

/// linear_forward with positional arguments: x [rows, in], weight [out, in], bias [out] (may
/// be empty), y [rows, out], act, pre_activation [rows, out] (may be empty; gelu only).
template <class Element>
void linear_forward(context& ctx, tensor_view<const Element, 2> x,
                    tensor_view<const Element, 2> weight, tensor_view<const Element, 1> bias,
                    tensor_view<Element, 2> y, activation act,
                    tensor_view<Element, 2> pre_activation, cudaStream_t stream) {
  linear_forward(ctx, linear_forward_args<Element>{x, weight, bias, y, act, pre_activation},
                 stream);
}

/// Gradients of a linear layer on stream: the GELU backward (act gelu), then dW (+ db) and dX
/// (+ the earlier layer's GELU backward and bias gradient) as asked for in args. Every argument
/// is validated before anything runs; outputs are overwritten.
template <class Element, class GradElement>
void linear_backward(context& ctx, const linear_backward_args<Element, GradElement>& args,
                     cudaStream_t stream) {
  const linear_backward_steps<Element> steps = linear_backward_plan(args);
  if (steps.gelu_backward && steps.gelu_backward->rows * steps.gelu_backward->cols > 0) {
    const gelu_backward_params<Element>& params = *steps.gelu_backward;
    const unsigned blocks = gelu_backward_kernel::blocks_for(params.rows * params.cols);
    SINKMOE_CUDA_CHECK(arch::launch<gelu_backward_kernel>(
        arch::index3(blocks), arch::index3(gelu_backward_kernel::k_threads), 0, stream, params));
  }
  if (steps.weight_grad) ctx.matmul(*steps.weight_grad, stream);
  if (steps.input_grad) ctx.matmul(*steps.input_grad, stream);
}

}  // namespace sinkmoe::blaslt
