// The sinkmoe torch operators: their schemas (TORCH_LIBRARY) and CPU kernels. The CUDA kernels
// are in cuda_ops.cu (built when the package is compiled with nvcc); the fake (meta) kernels and
// autograd are registered in Python (sinkmoe/_ops.py).
//
//   attention_forward(q, k, v, sinks?, gate_logits?, <batch layout>, <config>)
//       -> (out, lse, router, first_key_mass, counted)
//   attention_backward(dout, dlse?, drouter?, q, k, v, sinks?, gate_logits?, out, lse,
//                      <batch layout>, <config>) -> (dq, dk, dv, dsinks, dgate_logits)
//   balance_sums(routers[], counted[]) -> sums [L, H + 1] float64 (router sums, token count)
//   balance_report(sums, <loss config>, thresholds) -> [L, 5 + 2H + len(thresholds)] float64
//   balance_router_grad(sums, routers[], counted[], <loss config>) -> dL/dG per layer
#include <Python.h>
#include <torch/library.h>

#include "binding.hpp"

extern "C" {
/// An empty Python module `sinkmoe._C`: importing it loads this library, whose static
/// initialisers register the operators.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace sinkmoe_torch {
namespace {

using opt_tensor = std::optional<at::Tensor>;

void check_cpu_dtype(const at::Tensor& q) {
  TORCH_CHECK_TYPE(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
                   "sinkmoe: q has dtype ", q.scalar_type(),
                   "; the CPU operator takes torch.float32 or torch.float64");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_forward_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const opt_tensor& sinks,
    const opt_tensor& gate_logits, SINKMOE_LAYOUT_ARGS, SINKMOE_CONFIG_ARGS) {
  check_cpu_dtype(q);
  check_inputs(q, k, v, sinks, gate_logits);
  TORCH_CHECK_VALUE(!unfused, "sinkmoe: backend 'unfused' is a CUDA path; q is on ", q.device());
  const config c = SINKMOE_CONFIG;
  const batch_layout layout = SINKMOE_LAYOUT;
  const forward_tensors f = allocate_forward(q, k, v, sinks, gate_logits, bhtd);
  with_mask(c.mask, [&](auto m) { forward_cpu<typename decltype(m)::type>(c, layout, f); });
  return {f.out, f.lse, f.router, f.first_key_mass, f.counted};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& dout, const opt_tensor& dlse, const opt_tensor& drouter, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const opt_tensor& sinks,
    const opt_tensor& gate_logits, const at::Tensor& out, const at::Tensor& lse,
    SINKMOE_LAYOUT_ARGS, SINKMOE_CONFIG_ARGS) {
  check_cpu_dtype(q);
  check_inputs(q, k, v, sinks, gate_logits);
  TORCH_CHECK_VALUE(!unfused, "sinkmoe: backend 'unfused' is a CUDA path; q is on ", q.device());
  const config c = SINKMOE_CONFIG;
  const batch_layout layout = SINKMOE_LAYOUT;
  const forward_tensors f = saved_forward(q, k, v, sinks, gate_logits, out, lse);
  const backward_tensors g = allocate_backward(c, dout, dlse, drouter, f);
  with_mask(c.mask, [&](auto m) { backward_cpu<typename decltype(m)::type>(c, layout, f, g); });
  return {g.dq, g.dk, g.dv, g.dsinks, g.dgate_logits};
}

// ---- Balancing ----

/// Layer inputs from lists of routers [B, H, T] (float32 or float64) and counted masks [B, T].
template <class F>
std::vector<sinkmoe::balance::layer_input<F>> layer_inputs(const std::vector<at::Tensor>& routers,
                                                           const std::vector<at::Tensor>& counted) {
  TORCH_CHECK_VALUE(routers.size() == counted.size(), "sinkmoe balance: ", routers.size(),
                    " routers and ", counted.size(), " counted masks");
  std::vector<sinkmoe::balance::layer_input<F>> inputs;
  for (std::size_t l = 0; l < routers.size(); ++l) {
    TORCH_CHECK_TYPE(routers[l].scalar_type() == routers[0].scalar_type(),
                     "sinkmoe balance: routers[", l, "] has dtype ", routers[l].scalar_type(),
                     ", routers[0] ", routers[0].scalar_type());
    TORCH_CHECK_TYPE(counted[l].scalar_type() == at::kByte, "sinkmoe balance: counted[", l,
                     "] has dtype ", counted[l].scalar_type(), ", expected torch.uint8");
    TORCH_CHECK_VALUE(routers[l].device().is_cpu() && counted[l].device().is_cpu(),
                      "sinkmoe balance: routers[", l, "] and counted[", l,
                      "] must be CPU tensors for this operator");
    inputs.push_back({view<const F, 3>(routers[l], "router"),
                      view<const std::uint8_t, 2>(counted[l], "counted")});
  }
  return inputs;
}

template <class Fn>
void with_router_dtype(const std::vector<at::Tensor>& routers, Fn&& fn) {
  TORCH_CHECK_VALUE(!routers.empty(), "sinkmoe balance: no layers given");
  const at::ScalarType t = routers[0].scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble, "sinkmoe balance: routers have dtype ", t,
                   ", expected torch.float32 or torch.float64");
  if (t == at::kDouble)
    fn(type_tag<double>{});
  else
    fn(type_tag<float>{});
}

sinkmoe::balance::importance_sums sums_from(const at::Tensor& sums) {
  TORCH_CHECK_TYPE(sums.scalar_type() == at::kDouble, "sinkmoe balance: sums has dtype ",
                   sums.scalar_type(), ", expected torch.float64");
  check_dim(sums, 2, "sums");
  TORCH_CHECK_VALUE(sums.size(1) >= 2, "sinkmoe balance: sums has shape ", sums.sizes(),
                    ", expected [layers, heads + 1]");
  const at::Tensor s = sums.cpu().contiguous();
  sinkmoe::balance::importance_sums out;
  out.layers = static_cast<int>(s.size(0));
  out.heads = static_cast<int>(s.size(1) - 1);
  const double* p = s.data_ptr<double>();
  for (int l = 0; l < out.layers; ++l) {
    for (int h = 0; h < out.heads; ++h) out.router_sum.push_back(p[l * (out.heads + 1) + h]);
    out.token_count.push_back(p[l * (out.heads + 1) + out.heads]);
  }
  return out;
}

sinkmoe::balance::importance_cv2 loss_config(double lam, int64_t shared_heads, bool sample_std,
                                             const std::vector<int64_t>& fixed_shared,
                                             int64_t layers) {
  sinkmoe::balance::importance_cv2 reg;
  reg.lambda = lam;
  reg.sample_std = sample_std;
  if (fixed_shared.empty()) {
    reg.shared_heads = static_cast<int>(shared_heads);
    return reg;
  }
  // fixed_shared: the shared head ids of every layer, shared_heads per layer, layer by layer.
  TORCH_CHECK_VALUE(
      shared_heads > 0 && static_cast<int64_t>(fixed_shared.size()) == shared_heads * layers,
      "sinkmoe balance: fixed_shared holds ", fixed_shared.size(),
      " head ids; expected shared_heads (", shared_heads, ") x layers (", layers, ")");
  reg.selection = sinkmoe::balance::shared_selection::fixed;
  reg.fixed_shared.resize(static_cast<std::size_t>(layers));
  for (int64_t l = 0; l < layers; ++l)
    for (int64_t i = 0; i < shared_heads; ++i)
      reg.fixed_shared[l].push_back(static_cast<int>(fixed_shared[l * shared_heads + i]));
  return reg;
}

at::Tensor balance_sums_cpu(const std::vector<at::Tensor>& routers,
                            const std::vector<at::Tensor>& counted) {
  at::Tensor result;
  with_router_dtype(routers, [&](auto element) {
    using F = typename decltype(element)::type;
    rethrow_as_value_error([&] {
      const auto inputs = layer_inputs<F>(routers, counted);
      const auto sums = sinkmoe::balance::accumulate(host_exec(), inputs);
      result = at::empty({sums.layers, sums.heads + 1}, at::dtype(at::kDouble));
      double* p = result.data_ptr<double>();
      for (int l = 0; l < sums.layers; ++l) {
        for (int h = 0; h < sums.heads; ++h)
          p[l * (sums.heads + 1) + h] = sums.router_sum[l * sums.heads + h];
        p[l * (sums.heads + 1) + sums.heads] = sums.token_count[l];
      }
    });
  });
  return result;
}

at::Tensor balance_report_cpu(const at::Tensor& sums, double lam, int64_t shared_heads,
                              bool sample_std, std::vector<int64_t> fixed_shared,
                              std::vector<double> thresholds) {
  at::Tensor result;
  rethrow_as_value_error([&] {
    const auto s = sums_from(sums);
    const auto reg = loss_config(lam, shared_heads, sample_std, fixed_shared, s.layers);
    const auto rep = reg.evaluate(s);
    const auto metrics = sinkmoe::balance::head_metrics(s, thresholds);
    const int h = s.heads, width = 5 + 2 * h + static_cast<int>(thresholds.size());
    result = at::zeros({s.layers, width}, at::dtype(at::kDouble));
    double* p = result.data_ptr<double>();
    for (int l = 0; l < s.layers; ++l) {
      double* row = p + l * width;
      const auto& lr = rep.layers[l];
      row[0] = lr.loss;
      row[1] = lr.cv;
      row[2] = lr.balanced_cv;
      row[3] = lr.effective_heads;
      row[4] = lr.tokens;
      for (int i = 0; i < h; ++i) row[5 + i] = lr.importance[i];
      for (int shared : lr.shared) row[5 + h + shared] = 1.0;
      for (std::size_t i = 0; i < thresholds.size(); ++i)
        row[5 + 2 * h + i] = metrics.layers[l].dormant_fraction[i];
    }
  });
  return result;
}

std::vector<at::Tensor> balance_router_grad_cpu(const at::Tensor& sums,
                                                const std::vector<at::Tensor>& routers,
                                                const std::vector<at::Tensor>& counted, double lam,
                                                int64_t shared_heads, bool sample_std,
                                                std::vector<int64_t> fixed_shared) {
  std::vector<at::Tensor> grads;
  with_router_dtype(routers, [&](auto element) {
    using F = typename decltype(element)::type;
    rethrow_as_value_error([&] {
      const auto inputs = layer_inputs<F>(routers, counted);
      const auto s = sums_from(sums);
      const auto reg = loss_config(lam, shared_heads, sample_std, fixed_shared, s.layers);
      const auto rep = reg.evaluate(s);
      std::vector<sinkmoe::tensor_view<F, 3>> views;
      for (const at::Tensor& r : routers) {
        grads.push_back(at::empty_like(r));
        views.push_back(view<F, 3>(grads.back(), "drouter"));
      }
      reg.router_grad(host_exec(), rep, inputs, views);
    });
  });
  return grads;
}

}  // namespace

TORCH_LIBRARY(sinkmoe, m) {
  const std::string layout =
      "Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, Tensor? seqlens_q, Tensor? seqlens_k, "
      "int max_seqlen_q, int max_seqlen_k, ";
  const std::string cfg =
      "str sink, str gate, str mask, str route, float scale, float softcap, int window, "
      "int sink_tokens, bool top_left, float fixed_sink, bool left_padding, bool bhtd, "
      "bool unfused";
  m.def(("attention_forward(Tensor q, Tensor k, Tensor v, Tensor? sinks, Tensor? gate_logits, " +
         layout + cfg + ") -> (Tensor, Tensor, Tensor, Tensor, Tensor)")
            .c_str());
  m.def(("attention_backward(Tensor dout, Tensor? dlse, Tensor? drouter, Tensor q, Tensor k, "
         "Tensor v, Tensor? sinks, Tensor? gate_logits, Tensor out, Tensor lse, " +
         layout + cfg + ") -> (Tensor, Tensor, Tensor, Tensor, Tensor)")
            .c_str());
  m.def("balance_sums(Tensor[] routers, Tensor[] counted) -> Tensor");
  m.def(
      "balance_report(Tensor sums, float lam, int shared_heads, bool sample_std, "
      "int[] fixed_shared, float[] thresholds) -> Tensor");
  m.def(
      "balance_router_grad(Tensor sums, Tensor[] routers, Tensor[] counted, float lam, "
      "int shared_heads, bool sample_std, int[] fixed_shared) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(sinkmoe, CPU, m) {
  m.impl("attention_forward", &attention_forward_cpu);
  m.impl("attention_backward", &attention_backward_cpu);
  m.impl("balance_sums", &balance_sums_cpu);
  m.impl("balance_router_grad", &balance_router_grad_cpu);
}

// The report reads only sums (often all-reduced on an accelerator): any device.
TORCH_LIBRARY_IMPL(sinkmoe, CompositeExplicitAutograd, m) {
  m.impl("balance_report", &balance_report_cpu);
}

}  // namespace sinkmoe_torch
