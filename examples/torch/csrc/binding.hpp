#pragma once
// The torch operators' C++ side: a call's runtime configuration (which sink, gate, mask, route and
// score), torch tensors as sinkmoe views (strides as they are: [B, T, H, D] or [B, H, T, D], no
// copies), and the dispatch from strings to the attention<> type that runs.
//
// Every error becomes a Python exception naming the argument: dtype and device errors raise
// TypeError and ValueError here; shape, stride and value errors come from sinkmoe's own
// validation (sinkmoe::error, rethrown as ValueError).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <optional>
#include <sinkmoe/sinkmoe.hpp>
#include <string>
#include <type_traits>
#include <vector>

namespace sinkmoe_torch {

/// What a call computes, from the operators' string and scalar arguments.
struct config {
  std::string sink = "none";      ///< none | learned | fixed
  std::string gate = "none";      ///< none | headwise | elementwise
  std::string mask = "none";      ///< none | causal | sliding_window | streaming
  std::string route = "deduced";  ///< deduced | sink_mass | output_gate | product
  sinkmoe::attention_params params{};
  bool left_padding = false;  ///< padded batch: real tokens at the end of each row
  bool bhtd = false;          ///< q, k, v, out (and their gradients) are [B, H, T, D]
};

/// The optional batch-layout tensors of a call (all host int32 on CPU).
struct batch_layout {
  std::optional<at::Tensor> cu_seqlens_q, cu_seqlens_k, seqlens_q, seqlens_k;
  int64_t max_seqlen_q = 0, max_seqlen_k = 0;
};

template <class T>
struct type_tag {
  using type = T;
};

/// Runs fn(type_tag<Sink>{}) for the named sink policy.
template <class Fn>
void with_sink(const std::string& name, Fn&& fn) {
  namespace sk = sinkmoe::sink;
  if (name == "none") return fn(type_tag<sk::none>{});
  if (name == "learned") return fn(type_tag<sk::learned>{});
  if (name == "fixed") return fn(type_tag<sk::fixed>{});
  TORCH_CHECK_VALUE(false, "sinkmoe: sink = '", name, "': must be 'none', 'learned' or 'fixed'");
}

template <class Fn>
void with_gate(const std::string& name, Fn&& fn) {
  namespace gt = sinkmoe::gate;
  if (name == "none") return fn(type_tag<gt::none>{});
  if (name == "headwise") return fn(type_tag<gt::headwise>{});
  if (name == "elementwise") return fn(type_tag<gt::elementwise>{});
  TORCH_CHECK_VALUE(false, "sinkmoe: gate = '", name,
                    "': must be 'none', 'headwise' or 'elementwise'");
}

/// The route for Gate: 'deduced' is resolved here (output gate with a gate, else sink mass), so
/// that it shares the instantiation of the route it names.
template <class Gate, class Fn>
void with_route(const std::string& name, Fn&& fn) {
  namespace rt = sinkmoe::route;
  if (name == "sink_mass" || (name == "deduced" && !Gate::enabled))
    return fn(type_tag<rt::sink_mass>{});
  if constexpr (Gate::enabled) {
    if (name == "output_gate" || name == "deduced") return fn(type_tag<rt::output_gate>{});
    if (name == "product") return fn(type_tag<rt::product>{});
  } else {
    TORCH_CHECK_VALUE(name != "output_gate" && name != "product", "sinkmoe: route = '", name,
                      "' reads the output gate, but gate = 'none'");
  }
  TORCH_CHECK_VALUE(false, "sinkmoe: route = '", name,
                    "': must be 'deduced', 'sink_mass', 'output_gate' or 'product'");
}

/// score::softcap when params.softcap != 0, else score::scaled.
template <class Fn>
void with_score(const sinkmoe::attention_params& params, Fn&& fn) {
  if (params.softcap != 0.0) return fn(type_tag<sinkmoe::score::softcap>{});
  return fn(type_tag<sinkmoe::score::scaled>{});
}

/// Runs body(type_tag<attention<Sink, Gate, Mask, Route, Score>>{}) for the configuration, Mask
/// fixed by the caller (one translation unit per mask keeps each compile small).
template <class Mask, class Body>
void with_attention(const config& c, Body&& body) {
  with_sink(c.sink, [&](auto sink) {
    with_gate(c.gate, [&](auto gate) {
      using Gate = typename decltype(gate)::type;
      with_route<Gate>(c.route, [&](auto route) {
        with_score(c.params, [&](auto score) {
          body(type_tag<sinkmoe::attention<typename decltype(sink)::type, Gate, Mask,
                                           typename decltype(route)::type,
                                           typename decltype(score)::type>>{});
        });
      });
    });
  });
}

/// sinkmoe::error (the library's validation) as a Python ValueError with the same message.
template <class Fn>
void rethrow_as_value_error(Fn&& fn) {
  try {
    fn();
  } catch (const sinkmoe::error& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
}

// ---- Tensors as views ----

inline void check_dtype(const at::Tensor& t, at::ScalarType want, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == want, "sinkmoe: ", name, " has dtype ", t.scalar_type(),
                   ", expected ", want, " (the dtype of q)");
}
inline void check_device(const at::Tensor& t, const at::Tensor& q, const char* name) {
  TORCH_CHECK_VALUE(t.device() == q.device(), "sinkmoe: ", name, " is on ", t.device(),
                    ", q is on ", q.device());
}
inline void check_dim(const at::Tensor& t, int64_t dim, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == dim, "sinkmoe: ", name, " has ", t.dim(), " dimensions ", t.sizes(),
                    ", expected ", dim);
}

/// A [B, T, H, D] view of a 4-D tensor given as [B, T, H, D] or (bhtd) [B, H, T, D], strides as
/// they are: a head dim that is not contiguous is left for sinkmoe's validation to name.
template <class T>
sinkmoe::tensor_view<T, 4> view_bthd(const at::Tensor& t, bool bhtd, const char* name) {
  check_dim(t, 4, name);
  // Untyped: T may be sinkmoe's own 16-bit type for torch's (same bits); dtypes are checked at
  // the operators' entry.
  using E = std::remove_const_t<T>;
  E* data = static_cast<E*>(const_cast<void*>(t.data_ptr()));
  const int64_t t_dim = bhtd ? 2 : 1, h_dim = bhtd ? 1 : 2;
  return {data,
          {t.size(0), t.size(t_dim), t.size(h_dim), t.size(3)},
          {t.stride(0), t.stride(t_dim), t.stride(h_dim), t.stride(3)}};
}

template <class T, int Rank>
sinkmoe::tensor_view<T, Rank> view(const at::Tensor& t, const char* name) {
  check_dim(t, Rank, name);
  using E = std::remove_const_t<T>;
  sinkmoe::tensor_view<T, Rank> v;
  v.data = const_cast<E*>(t.data_ptr<E>());
  for (int d = 0; d < Rank; ++d) {
    v.shape[d] = t.size(d);
    v.stride[d] = t.stride(d);
  }
  return v;
}

/// An empty view (not given) for an undefined or absent optional tensor.
template <class T, int Rank>
sinkmoe::tensor_view<T, Rank> view_if(const std::optional<at::Tensor>& t, const char* name) {
  if (!t.has_value() || !t->defined()) return {};
  return view<T, Rank>(*t, name);
}

/// Fills the varlen and padding fields of forward_args from the layout tensors (int32, on the
/// host: these are read by the CPU backend, and validated by sinkmoe).
template <class T>
void set_batch_layout(sinkmoe::forward_args<T>& fa, const batch_layout& layout, bool left) {
  auto int32_host = [](const std::optional<at::Tensor>& t, const char* name) -> const int32_t* {
    if (!t.has_value() || !t->defined()) return nullptr;
    check_dim(*t, 1, name);
    TORCH_CHECK_TYPE(t->scalar_type() == at::kInt, "sinkmoe: ", name, " has dtype ",
                     t->scalar_type(), ", expected torch.int32");
    TORCH_CHECK_VALUE(t->is_contiguous(), "sinkmoe: ", name, " must be contiguous");
    return t->data_ptr<int32_t>();
  };
  const int32_t* cu_q = int32_host(layout.cu_seqlens_q, "cu_seqlens_q");
  const int32_t* cu_k = int32_host(layout.cu_seqlens_k, "cu_seqlens_k");
  TORCH_CHECK_VALUE((cu_q == nullptr) == (cu_k == nullptr),
                    "sinkmoe: cu_seqlens_q and cu_seqlens_k must be given together");
  if (cu_q != nullptr) {
    TORCH_CHECK_VALUE(layout.cu_seqlens_q->numel() == layout.cu_seqlens_k->numel(),
                      "sinkmoe: cu_seqlens_q has ", layout.cu_seqlens_q->numel(),
                      " entries, cu_seqlens_k ", layout.cu_seqlens_k->numel());
    fa.varlen.cu_seqlens_q = cu_q;
    fa.varlen.cu_seqlens_k = cu_k;
    fa.varlen.num_seqs = static_cast<int>(layout.cu_seqlens_q->numel()) - 1;
    fa.varlen.max_seqlen_q = static_cast<int>(layout.max_seqlen_q);
    fa.varlen.max_seqlen_k = static_cast<int>(layout.max_seqlen_k);
  }
  if (const int32_t* q = int32_host(layout.seqlens_q, "seqlens_q"))
    fa.seqlens.q = {q, {layout.seqlens_q->numel()}};
  if (const int32_t* k = int32_host(layout.seqlens_k, "seqlens_k"))
    fa.seqlens.k = {k, {layout.seqlens_k->numel()}};
  fa.seqlens.side = left ? sinkmoe::padding_side::left : sinkmoe::padding_side::right;
}

/// The CPU threads a call uses: torch's intra-op setting (torch.set_num_threads).
inline sinkmoe::exec::host host_exec() { return sinkmoe::exec::host{at::get_num_threads()}; }

// ---- The operators' CPU bodies, one instantiation per mask (cpu_<mask>.cpp) ----

struct forward_tensors {
  at::Tensor q, k, v;
  std::optional<at::Tensor> sinks, gate_logits;
  at::Tensor out, lse, router, first_key_mass, counted;
};

struct backward_tensors {
  at::Tensor dout;
  std::optional<at::Tensor> dlse, drouter;
  at::Tensor dq, dk, dv, dsinks, dgate_logits;
};

// The operators' batch-layout and configuration arguments, in schema order (ops.cpp).
#define SINKMOE_LAYOUT_ARGS                                                                   \
  const std::optional<at::Tensor>&cu_seqlens_q, const std::optional<at::Tensor>&cu_seqlens_k, \
      const std::optional<at::Tensor>&seqlens_q, const std::optional<at::Tensor>&seqlens_k,   \
      int64_t max_seqlen_q, int64_t max_seqlen_k
#define SINKMOE_CONFIG_ARGS                                                                    \
  std::string_view sink, std::string_view gate, std::string_view mask, std::string_view route, \
      double scale, double softcap, int64_t window, int64_t sink_tokens, bool top_left,        \
      double fixed_sink, bool left_padding, bool bhtd, bool unfused

/// The configuration and batch layout from the arguments the two macros above declare.
#define SINKMOE_CONFIG                                                                            \
  make_config(sink, gate, mask, route, scale, softcap, window, sink_tokens, top_left, fixed_sink, \
              left_padding, bhtd)
#define SINKMOE_LAYOUT \
  batch_layout { cu_seqlens_q, cu_seqlens_k, seqlens_q, seqlens_k, max_seqlen_q, max_seqlen_k }

inline config make_config(std::string_view sink, std::string_view gate, std::string_view mask,
                          std::string_view route, double scale, double softcap, int64_t window,
                          int64_t sink_tokens, bool top_left, double fixed_sink, bool left_padding,
                          bool bhtd) {
  config c;
  c.sink = std::string(sink);
  c.gate = std::string(gate);
  c.mask = std::string(mask);
  c.route = std::string(route);
  c.params.scale = scale;
  c.params.softcap = softcap;
  c.params.window = static_cast<int>(window);
  c.params.sink_tokens = static_cast<int>(sink_tokens);
  c.params.alignment =
      top_left ? sinkmoe::causal_alignment::top_left : sinkmoe::causal_alignment::bottom_right;
  c.params.fixed_sink = fixed_sink;
  c.left_padding = left_padding;
  c.bhtd = bhtd;
  return c;
}

/// The accumulator dtype of q's dtype (sinks, lse, router and their gradients): float64 for
/// float64, float32 for everything else.
inline at::ScalarType accum_dtype(const at::Tensor& q) {
  return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

/// Checks the tensor arguments' dtypes and devices (shapes and strides are sinkmoe's to check).
inline void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const std::optional<at::Tensor>& sinks,
                         const std::optional<at::Tensor>& gate_logits) {
  check_dtype(k, q.scalar_type(), "k");
  check_dtype(v, q.scalar_type(), "v");
  check_device(k, q, "k");
  check_device(v, q, "v");
  if (sinks.has_value() && sinks->defined()) {
    TORCH_CHECK_TYPE(sinks->scalar_type() == accum_dtype(q), "sinkmoe: sinks has dtype ",
                     sinks->scalar_type(), ", expected ", accum_dtype(q));
    check_device(*sinks, q, "sinks");
  }
  if (gate_logits.has_value() && gate_logits->defined()) {
    check_dtype(*gate_logits, q.scalar_type(), "gate_logits");
    check_device(*gate_logits, q, "gate_logits");
  }
}

/// [B, H, Tq] row statistics for q given as [B, T, H, D] or [B, H, T, D].
inline at::Tensor row_stats(const at::Tensor& q, bool bhtd) {
  check_dim(q, 4, "q");
  const int64_t b = q.size(0), t = q.size(bhtd ? 2 : 1), h = q.size(bhtd ? 1 : 2);
  return at::empty({b, h, t}, q.options().dtype(accum_dtype(q)));
}

/// The forward's outputs, allocated like q (same layout) and in the accumulator dtype.
inline forward_tensors allocate_forward(const at::Tensor& q, const at::Tensor& k,
                                        const at::Tensor& v, const std::optional<at::Tensor>& sinks,
                                        const std::optional<at::Tensor>& gate_logits, bool bhtd) {
  forward_tensors f{q, k, v, sinks, gate_logits};
  f.out = at::empty_like(q);
  f.lse = row_stats(q, bhtd);
  f.router = at::empty_like(f.lse);
  f.first_key_mass = at::empty_like(f.lse);
  f.counted = at::empty({f.lse.size(0), f.lse.size(2)}, q.options().dtype(at::kByte));
  return f;
}

/// The forward's tensors a backward call is given (out and lse saved by the forward).
inline forward_tensors saved_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const std::optional<at::Tensor>& sinks,
                                     const std::optional<at::Tensor>& gate_logits,
                                     const at::Tensor& out, const at::Tensor& lse) {
  forward_tensors f{q, k, v, sinks, gate_logits};
  f.out = out;
  f.lse = lse;
  return f;
}

/// Checks the backward's extra tensors and allocates its outputs (dsinks and dgate_logits empty
/// where the mechanism has none).
inline backward_tensors allocate_backward(const config& c, const at::Tensor& dout,
                                          const std::optional<at::Tensor>& dlse,
                                          const std::optional<at::Tensor>& drouter,
                                          const forward_tensors& f) {
  const at::Tensor& q = f.q;
  check_dtype(dout, q.scalar_type(), "dout");
  check_dtype(f.out, q.scalar_type(), "out");
  check_device(dout, q, "dout");
  for (const auto& [t, name] : {std::pair{dlse, "dlse"}, std::pair{drouter, "drouter"},
                                std::pair{std::optional<at::Tensor>(f.lse), "lse"}})
    if (t.has_value() && t->defined()) {
      TORCH_CHECK_TYPE(t->scalar_type() == accum_dtype(q), "sinkmoe: ", name, " has dtype ",
                       t->scalar_type(), ", expected ", accum_dtype(q));
      check_device(*t, q, name);
    }
  backward_tensors g{dout, dlse, drouter};
  g.dq = at::empty_like(q);
  g.dk = at::empty_like(f.k);
  g.dv = at::empty_like(f.v);
  const bool learned = c.sink == "learned" && f.sinks.has_value() && f.sinks->defined();
  g.dsinks = learned ? at::empty_like(*f.sinks) : at::empty({0}, q.options());
  const bool gated = c.gate != "none" && f.gate_logits.has_value() && f.gate_logits->defined();
  g.dgate_logits = gated ? at::empty_like(*f.gate_logits) : at::empty({0}, q.options());
  return g;
}

template <class T>
sinkmoe::forward_args<T> make_forward_args(const config& c, const batch_layout& layout,
                                           const forward_tensors& f) {
  using A = sinkmoe::accum_t<T>;
  sinkmoe::forward_args<T> fa;
  fa.q = view_bthd<const T>(f.q, c.bhtd, "q");
  fa.k = view_bthd<const T>(f.k, c.bhtd, "k");
  fa.v = view_bthd<const T>(f.v, c.bhtd, "v");
  fa.sinks = view_if<const A, 1>(f.sinks, "sinks");
  if (f.gate_logits.has_value() && f.gate_logits->defined())
    fa.gate_logits = view_bthd<const T>(*f.gate_logits, c.bhtd, "gate_logits");
  fa.out = view_bthd<T>(f.out, c.bhtd, "out");
  fa.lse = view<A, 3>(f.lse, "lse");
  if (f.router.defined()) fa.router = view<A, 3>(f.router, "router");
  if (f.first_key_mass.defined())
    fa.first_key_mass = view<A, 3>(f.first_key_mass, "first_key_mass");
  fa.params = c.params;
  set_batch_layout(fa, layout, c.left_padding);
  return fa;
}

/// backward_args over the gradient tensors (dsinks and dgate_logits where Attn has them).
template <class Attn, class T>
sinkmoe::backward_args<T> make_backward_args(const config& c, const backward_tensors& g) {
  using A = sinkmoe::accum_t<T>;
  sinkmoe::backward_args<T> ba;
  ba.dout = view_bthd<const T>(g.dout, c.bhtd, "dout");
  ba.drouter = view_if<const A, 3>(g.drouter, "drouter");
  ba.dlse = view_if<const A, 3>(g.dlse, "dlse");
  ba.dq = view_bthd<T>(g.dq, c.bhtd, "dq");
  ba.dk = view_bthd<T>(g.dk, c.bhtd, "dk");
  ba.dv = view_bthd<T>(g.dv, c.bhtd, "dv");
  if constexpr (Attn::sink_type::trainable) ba.dsinks = view<A, 1>(g.dsinks, "dsinks");
  if constexpr (Attn::gate_type::enabled)
    ba.dgate_logits = view_bthd<T>(g.dgate_logits, c.bhtd, "dgate_logits");
  return ba;
}

/// Forward on the CPU: out, lse, router, first_key_mass and the counted-token mask.
template <class Mask>
void forward_cpu(const config& c, const batch_layout& layout, const forward_tensors& f);

/// Backward on the CPU: dq, dk, dv, dsinks, dgate_logits.
template <class Mask>
void backward_cpu(const config& c, const batch_layout& layout, const forward_tensors& f,
                  const backward_tensors& g);

template <class Mask>
void forward_cpu(const config& c, const batch_layout& layout, const forward_tensors& f) {
  with_attention<Mask>(c, [&](auto attn) {
    using Attn = typename decltype(attn)::type;
    auto run = [&](auto element) {
      using T = typename decltype(element)::type;
      rethrow_as_value_error([&] {
        const sinkmoe::forward_args<T> fa = make_forward_args<T>(c, layout, f);
        Attn::forward(host_exec(), fa);
        Attn::counted_tokens(fa, view<std::uint8_t, 2>(f.counted, "counted"));
      });
    };
    if (f.q.scalar_type() == at::kDouble)
      run(type_tag<double>{});
    else
      run(type_tag<float>{});
  });
}

template <class Mask>
void backward_cpu(const config& c, const batch_layout& layout, const forward_tensors& f,
                  const backward_tensors& g) {
  with_attention<Mask>(c, [&](auto attn) {
    using Attn = typename decltype(attn)::type;
    auto run = [&](auto element) {
      using T = typename decltype(element)::type;
      using A = sinkmoe::accum_t<T>;
      rethrow_as_value_error([&] {
        const sinkmoe::forward_args<T> fa = make_forward_args<T>(c, layout, f);
        const auto ba = make_backward_args<Attn, T>(c, g);
        Attn::backward(host_exec(), fa, ba);
      });
    };
    if (f.q.scalar_type() == at::kDouble)
      run(type_tag<double>{});
    else
      run(type_tag<float>{});
  });
}

#define SINKMOE_TORCH_INSTANTIATE_CPU(MASK)                                                    \
  template void forward_cpu<MASK>(const config&, const batch_layout&, const forward_tensors&); \
  template void backward_cpu<MASK>(const config&, const batch_layout&, const forward_tensors&, \
                                   const backward_tensors&);

/// Runs fn(type_tag<Mask>{}) for the named mask.
template <class Fn>
void with_mask(const std::string& name, Fn&& fn) {
  namespace mk = sinkmoe::mask;
  if (name == "none") return fn(type_tag<mk::none>{});
  if (name == "causal") return fn(type_tag<mk::causal>{});
  if (name == "sliding_window") return fn(type_tag<mk::sliding_window>{});
  if (name == "streaming") return fn(type_tag<mk::streaming>{});
  TORCH_CHECK_VALUE(false, "sinkmoe: mask = '", name,
                    "': must be 'none', 'causal', 'sliding_window' or 'streaming'");
}

extern template void forward_cpu<sinkmoe::mask::none>(const config&, const batch_layout&,
                                                      const forward_tensors&);
extern template void forward_cpu<sinkmoe::mask::causal>(const config&, const batch_layout&,
                                                        const forward_tensors&);
extern template void forward_cpu<sinkmoe::mask::sliding_window>(const config&, const batch_layout&,
                                                                const forward_tensors&);
extern template void forward_cpu<sinkmoe::mask::streaming>(const config&, const batch_layout&,
                                                           const forward_tensors&);
extern template void backward_cpu<sinkmoe::mask::none>(const config&, const batch_layout&,
                                                       const forward_tensors&,
                                                       const backward_tensors&);
extern template void backward_cpu<sinkmoe::mask::causal>(const config&, const batch_layout&,
                                                         const forward_tensors&,
                                                         const backward_tensors&);
extern template void backward_cpu<sinkmoe::mask::sliding_window>(const config&, const batch_layout&,
                                                                 const forward_tensors&,
                                                                 const backward_tensors&);
extern template void backward_cpu<sinkmoe::mask::streaming>(const config&, const batch_layout&,
                                                            const forward_tensors&,
                                                            const backward_tensors&);

}  // namespace sinkmoe_torch
