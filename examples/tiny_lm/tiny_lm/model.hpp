#pragma once
// The decoder-only transformer, written on sinkmoe the way model code uses it:
//
//   x = token_embedding[tokens] + position_embedding (+ shift_embedding[previous tokens])
//   per layer:  h = RMSNorm(x);  [q | gate]_h, k, v = h W_in   (one fused projection)
//               x += attention(q, k, v; sinks, gate) W_o        (sinkmoe::attention<...>)
//               x += GELU(RMSNorm(x) W_1) W_2
//   logits = RMSNorm(x) E^T (tied) or RMSNorm(x) W_out;  loss = mean cross-entropy
//
// The fused projection puts, per head, the query and its gate logits side by side (Qwen3-Next:
// [q (d) | gate (d or 1)]), then all keys, then all values; the attention reads q, the gate
// logits, k and v through strided views of that one buffer and writes dq, dgate, dk, dv into
// the same layout of its gradient, so there is no copy in either direction.
//
// Each layer's router values G [B, H, T] and counted tokens feed sinkmoe::balance after the
// forward; the balance gradient dL/dG goes back into each layer's attention backward through
// backward_args::drouter (no stop-gradient). Manual backward for every other layer (ops.hpp).
//
// The token shift (a second embedding of the previous token, on by default) lets one attention
// layer match "the position after key X" by content; without it a model this small first has
// to learn a previous-token head from absolute positions, which takes far longer than the demo.

#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <sinkmoe/args.hpp>
#include <sinkmoe/balance/balance.hpp>
#include <sinkmoe/core/numeric.hpp>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "tiny_lm/attention_backend.hpp"
#include "tiny_lm/config.hpp"
#include "tiny_lm/data.hpp"
#include "tiny_lm/ops.hpp"
#include "tiny_lm/rng.hpp"

namespace tiny_lm {

/// One named parameter tensor: a [rows, cols] slice of the flat parameter vector.
struct param_tensor {
  std::string name;
  std::size_t offset = 0;
  int rows = 0;
  int cols = 0;
  bool decay = false;   ///< AdamW weight decay applies (projection matrices)
  double init_std = 0;  ///< normal(0, init_std); 0: constant init_value
  double init_value = 0;
  [[nodiscard]] std::size_t size() const { return std::size_t(rows) * std::size_t(cols); }
};

/// Wall-clock seconds spent in the parts of training steps.
struct step_timers {
  double attention = 0;  ///< sinkmoe attention forward + counted tokens + backward
  double balance = 0;    ///< sinkmoe::balance (importance, CV^2 loss, dL/dG)
  double total = 0;      ///< whole steps (data, model, balance, optimiser)
};

using steady = std::chrono::steady_clock;
inline double seconds_since(steady::time_point start) {
  return std::chrono::duration<double>(steady::now() - start).count();
}

template <class T>
class transformer {
 public:
  using accum = sinkmoe::accum_t<T>;
  static_assert(std::is_same_v<accum, T>, "tiny_lm runs in float or double");

  transformer(const model_config& cfg, device_kind device, int threads)
      : cfg_(cfg), threads_(threads), exec_{threads} {
    const int W = cfg.width, H = cfg.heads, V = cfg.vocab;
    const double proj_std = 1.0 / std::sqrt(double(W));
    const double out_scale = 1.0 / std::sqrt(2.0 * cfg.layers);  // GPT-2 residual scaling
    tok_emb_ = add("tok_emb", V, W, false, 0.02);
    pos_emb_ = add("pos_emb", cfg.seq, W, false, 0.02);
    shift_emb_ = cfg.token_shift ? add("shift_emb", V, W, false, 0.02) : k_none;
    for (int l = 0; l < cfg.layers; ++l) {
      const std::string p = "layer" + std::to_string(l) + ".";
      layer_offsets o;
      o.norm1 = add(p + "norm1", 1, W, false, 0, 1.0);
      o.w_in = add(p + "w_in", W, cfg.proj_width(), true, proj_std);
      o.sinks = has_sink_logit(cfg.mech) ? add(p + "sinks", 1, H, false, 0, 0.0) : k_none;
      o.w_o = add(p + "w_o", W, W, true, proj_std * out_scale);
      o.norm2 = add(p + "norm2", 1, W, false, 0, 1.0);
      o.w_1 = add(p + "w_1", W, cfg.mlp_width(), true, proj_std);
      o.w_2 =
          add(p + "w_2", cfg.mlp_width(), W, true, out_scale / std::sqrt(double(cfg.mlp_width())));
      offsets_.push_back(o);
      layer_state st;
      st.kernels = &find_attention<T>(device, cfg.mech, cfg.mask_of_layer(l));
      st.mask = cfg.mask_of_layer(l);
      layers_.push_back(std::move(st));
    }
    norm_f_ = add("norm_f", 1, W, false, 0, 1.0);
    w_out_ = cfg.tied ? k_none : add("w_out", W, V, true, 0.02);
    params.assign(total_, T(0));
    grads.assign(total_, T(0));
  }

  [[nodiscard]] const model_config& config() const { return cfg_; }
  [[nodiscard]] const std::vector<param_tensor>& tensors() const { return tensors_; }
  [[nodiscard]] std::size_t parameter_count() const { return total_; }
  [[nodiscard]] const attention_kernels<T>& layer_kernels(int l) const {
    return *layers_[l].kernels;
  }
  [[nodiscard]] const sinkmoe::exec::host& exec() const { return exec_; }

  std::vector<T> params;  ///< all parameters, flat (see tensors())
  std::vector<T> grads;   ///< their gradients, same layout

  /// Initialises every tensor from its own stream of `seed`, so tensors that two mechanisms
  /// share start identical. The fused projection draws q, k, v and the gate from separate
  /// streams, so vanilla, sink and gated runs start from the same q, k, v weights.
  void init(std::uint64_t seed) {
    const int W = cfg_.width, H = cfg_.heads, d = cfg_.head_dim(), gd = cfg_.gate_dim();
    for (const param_tensor& t : tensors_) {
      T* p = params.data() + t.offset;
      if (t.name.ends_with(".w_in")) {
        const char* parts[] = {"q", "k", "v", "gate"};
        for (int part = 0; part < 4; ++part) {
          const int pd = part == 3 ? gd : d;
          if (pd == 0) continue;
          rng r(seed, t.name + "." + parts[part]);
          for (int row = 0; row < W; ++row)
            for (int h = 0; h < H; ++h)
              for (int c = 0; c < pd; ++c)
                p[std::size_t(row) * t.cols + column(part, h, c)] = T(r.normal() * t.init_std);
        }
      } else if (t.init_std > 0) {
        rng r(seed, t.name);
        for (std::size_t i = 0; i < t.size(); ++i) p[i] = T(r.normal() * t.init_std);
      } else {
        std::fill(p, p + t.size(), T(t.init_value));
      }
    }
  }

  void zero_grad() { std::fill(grads.begin(), grads.end(), T(0)); }

  /// Forward over a batch: keeps every activation for backward and, when `with_gradient`,
  /// writes dL/dlogits of the mean cross-entropy over `loss_tokens` tokens (0: this batch's; a
  /// data-parallel rank passes the global batch's, so that its share of the gradient is already
  /// weighted as a fraction of the global mean). Returns the cross-entropy totals.
  ops::ce_totals forward(const sample_batch& batch, bool with_gradient,
                         step_timers* timers = nullptr, std::int64_t loss_tokens = 0) {
    if (batch.seq != cfg_.seq)
      throw std::logic_error("tiny_lm: batch sequence length differs from the model's");
    resize(batch.batch);
    const int B = batch_, S = cfg_.seq, N = B * S, W = cfg_.width, V = cfg_.vocab;
    const int R = cfg_.proj_width(), F = cfg_.mlp_width();
    const double mean_over = loss_tokens > 0 ? double(loss_tokens) : double(N);
    tokens_ = batch.input;
    ops::embed_forward(threads_, B, S, W, batch.input.data(), p(tok_emb_),
                       shift_emb_ != k_none ? p(shift_emb_) : nullptr, p(pos_emb_),
                       resid_[0].data());
    for (int l = 0; l < cfg_.layers; ++l) {
      layer_state& L = layers_[l];
      const layer_offsets& o = offsets_[l];
      ops::rmsnorm_forward(threads_, N, W, resid_[l].data(), p(o.norm1), L.h1.data(),
                           L.rstd1.data());
      ops::linear_forward(threads_, N, W, R, L.h1.data(), p(o.w_in), L.proj.data());

      L.fa = attention_args(l);
      const auto t0 = steady::now();
      L.kernels->forward(exec_, L.fa);
      L.kernels->counted_tokens(L.fa, {L.counted.data(), {B, S}});
      if (timers) timers->attention += seconds_since(t0);

      // x_mid = x + out W_o
      std::copy(resid_[l].begin(), resid_[l].end(), L.x_mid.begin());
      ops::gemm(threads_, N, W, W, L.out.data(), W, p(o.w_o), W, L.x_mid.data(), W, true);
      // x_next = x_mid + GELU(RMSNorm(x_mid) W_1) W_2
      ops::rmsnorm_forward(threads_, N, W, L.x_mid.data(), p(o.norm2), L.h2.data(), L.rstd2.data());
      ops::linear_forward(threads_, N, W, F, L.h2.data(), p(o.w_1), L.u.data());
      ops::gelu_forward(threads_, std::int64_t(N) * F, L.u.data(), L.gl.data());
      std::copy(L.x_mid.begin(), L.x_mid.end(), resid_[l + 1].begin());
      ops::gemm(threads_, N, W, F, L.gl.data(), F, p(o.w_2), W, resid_[l + 1].data(), W, true);
    }
    ops::rmsnorm_forward(threads_, N, W, resid_.back().data(), p(norm_f_), hf_.data(),
                         rstdf_.data());
    if (cfg_.tied) {
      ops::transpose(threads_, V, W, p(tok_emb_), emb_t_.data());  // E^T [W, V]
      ops::linear_forward(threads_, N, W, V, hf_.data(), emb_t_.data(), logits_.data());
    } else {
      ops::linear_forward(threads_, N, W, V, hf_.data(), p(w_out_), logits_.data());
    }
    return ops::cross_entropy(threads_, N, V, logits_.data(), batch.target.data(),
                              batch.answer.data(), with_gradient ? dlogits_.data() : nullptr,
                              T(1.0 / mean_over), row_loss_, row_correct_);
  }

  /// Per layer: router values [B, H, T] and counted tokens [B, T] of the last forward.
  [[nodiscard]] std::vector<sinkmoe::balance::layer_input<accum>> balance_inputs() const {
    std::vector<sinkmoe::balance::layer_input<accum>> inputs;
    for (const layer_state& L : layers_)
      inputs.push_back({{L.router.data(), {batch_, cfg_.heads, cfg_.seq}},
                        {L.counted.data(), {batch_, cfg_.seq}}});
    return inputs;
  }
  /// Per layer: attention on the first token (BOS) [B, H, T] and counted tokens of the last
  /// forward (Gu et al.'s sink metric, for any mechanism).
  [[nodiscard]] std::vector<sinkmoe::balance::layer_input<accum>> first_key_inputs() const {
    std::vector<sinkmoe::balance::layer_input<accum>> inputs;
    for (const layer_state& L : layers_)
      inputs.push_back({{L.first_key_mass.data(), {batch_, cfg_.heads, cfg_.seq}},
                        {L.counted.data(), {batch_, cfg_.seq}}});
    return inputs;
  }
  /// Per layer: where the balance loss writes dL/dG [B, H, T] for the next backward.
  [[nodiscard]] std::vector<sinkmoe::tensor_view<accum, 3>> drouter_views() {
    std::vector<sinkmoe::tensor_view<accum, 3>> views;
    for (layer_state& L : layers_)
      views.push_back({L.drouter.data(), {batch_, cfg_.heads, cfg_.seq}});
    return views;
  }

  /// Backward of the last forward (which must have had with_gradient): adds to grads. With
  /// `with_drouter`, each layer's attention backward also takes dL/dG from drouter_views().
  void backward(bool with_drouter, step_timers* timers = nullptr) {
    const int B = batch_, S = cfg_.seq, N = B * S, W = cfg_.width, H = cfg_.heads, V = cfg_.vocab;
    const int d = cfg_.head_dim(), gd = cfg_.gate_dim(), R = cfg_.proj_width(),
              F = cfg_.mlp_width();
    std::fill(dx_.begin(), dx_.end(), T(0));
    // Output head and final norm.
    if (cfg_.tied) {
      std::fill(demb_t_.begin(), demb_t_.end(), T(0));
      ops::linear_backward(threads_, N, W, V, hf_.data(), emb_t_.data(), dlogits_.data(),
                           dh_.data(), false, demb_t_.data(), scratch_);
      T* de = g(tok_emb_);
      for (int v = 0; v < V; ++v)
        for (int c = 0; c < W; ++c) de[std::size_t(v) * W + c] += demb_t_[std::size_t(c) * V + v];
    } else {
      ops::linear_backward(threads_, N, W, V, hf_.data(), p(w_out_), dlogits_.data(), dh_.data(),
                           false, g(w_out_), scratch_);
    }
    ops::rmsnorm_backward(threads_, N, W, resid_.back().data(), p(norm_f_), rstdf_.data(),
                          dh_.data(), dx_.data(), g(norm_f_));

    for (int l = cfg_.layers - 1; l >= 0; --l) {
      layer_state& L = layers_[l];
      const layer_offsets& o = offsets_[l];
      // MLP: x_next = x_mid + GELU(h2 W_1) W_2; dx holds d x_next, then d x_mid.
      ops::linear_backward(threads_, N, F, W, L.gl.data(), p(o.w_2), dx_.data(), dmlp_.data(),
                           false, g(o.w_2), scratch_);
      ops::gelu_backward(threads_, std::int64_t(N) * F, L.u.data(), dmlp_.data(), dmlp_.data());
      ops::linear_backward(threads_, N, W, F, L.h2.data(), p(o.w_1), dmlp_.data(), dh_.data(),
                           false, g(o.w_1), scratch_);
      ops::rmsnorm_backward(threads_, N, W, L.x_mid.data(), p(o.norm2), L.rstd2.data(), dh_.data(),
                            dx_.data(), g(o.norm2));
      // Attention: x_mid = x + out W_o; dx becomes d x.
      ops::linear_backward(threads_, N, W, W, L.out.data(), p(o.w_o), dx_.data(), dout_.data(),
                           false, g(o.w_o), scratch_);
      std::fill(dproj_.begin(), dproj_.end(), T(0));
      sinkmoe::backward_args<T> ba;
      ba.dout = {dout_.data(), {B, S, H, d}};
      if (with_drouter) ba.drouter = {L.drouter.data(), {B, H, S}};
      ba.dq = {dproj_.data(), {B, S, H, d}, qg_strides()};
      ba.dk = {dproj_.data() + std::size_t(H) * (d + gd), {B, S, H, d}, kv_strides()};
      ba.dv = {dproj_.data() + std::size_t(H) * (d + gd) + W, {B, S, H, d}, kv_strides()};
      if (o.sinks != k_none) ba.dsinks = {dsinks_.data(), {H}};
      if (gd > 0) ba.dgate_logits = {dproj_.data() + d, {B, S, H, gd}, qg_strides()};
      const auto t0 = steady::now();
      L.kernels->backward(exec_, L.fa, ba);
      if (timers) timers->attention += seconds_since(t0);
      if (o.sinks != k_none)
        for (int h = 0; h < H; ++h) g(o.sinks)[h] += dsinks_[h];
      ops::linear_backward(threads_, N, W, R, L.h1.data(), p(o.w_in), dproj_.data(), dh_.data(),
                           false, g(o.w_in), scratch_);
      ops::rmsnorm_backward(threads_, N, W, resid_[l].data(), p(o.norm1), L.rstd1.data(),
                            dh_.data(), dx_.data(), g(o.norm1));
    }
    ops::embed_backward(B, S, W, tokens_.data(), dx_.data(), g(tok_emb_),
                        shift_emb_ != k_none ? g(shift_emb_) : nullptr, g(pos_emb_));
  }

 private:
  static constexpr std::size_t k_none = static_cast<std::size_t>(-1);

  struct layer_offsets {
    std::size_t norm1 = k_none, w_in = k_none, sinks = k_none, w_o = k_none, norm2 = k_none,
                w_1 = k_none, w_2 = k_none;
  };
  struct layer_state {
    const attention_kernels<T>* kernels = nullptr;
    mask_kind mask = mask_kind::causal;
    std::vector<T> rstd1, h1, proj, out, x_mid, rstd2, h2, u, gl;
    std::vector<accum> lse, router, drouter, first_key_mass;
    std::vector<std::uint8_t> counted;
    sinkmoe::forward_args<T> fa;
  };

  std::size_t add(const std::string& name, int rows, int cols, bool decay, double std,
                  double value = 0) {
    tensors_.push_back({name, total_, rows, cols, decay, std, value});
    total_ += std::size_t(rows) * std::size_t(cols);
    return tensors_.back().offset;
  }
  T* p(std::size_t offset) { return params.data() + offset; }
  T* g(std::size_t offset) { return grads.data() + offset; }

  /// Column of (part, head, channel) in the fused projection; parts q, k, v, gate.
  [[nodiscard]] int column(int part, int h, int c) const {
    const int d = cfg_.head_dim(), gd = cfg_.gate_dim(), H = cfg_.heads;
    switch (part) {
      case 0:
        return h * (d + gd) + c;
      case 1:
        return H * (d + gd) + h * d + c;
      case 2:
        return H * (d + gd) + cfg_.width + h * d + c;
      default:
        return h * (d + gd) + d + c;
    }
  }
  [[nodiscard]] std::array<sinkmoe::index_t, 4> qg_strides() const {
    const sinkmoe::index_t R = cfg_.proj_width();
    return {sinkmoe::index_t(cfg_.seq) * R, R, cfg_.head_dim() + cfg_.gate_dim(), 1};
  }
  [[nodiscard]] std::array<sinkmoe::index_t, 4> kv_strides() const {
    const sinkmoe::index_t R = cfg_.proj_width();
    return {sinkmoe::index_t(cfg_.seq) * R, R, cfg_.head_dim(), 1};
  }

  /// The layer's forward_args: strided views of q, gate logits, k, v in the fused projection.
  sinkmoe::forward_args<T> attention_args(int l) {
    layer_state& L = layers_[l];
    const int B = batch_, S = cfg_.seq, H = cfg_.heads, W = cfg_.width;
    const int d = cfg_.head_dim(), gd = cfg_.gate_dim();
    sinkmoe::forward_args<T> fa;
    fa.q = {L.proj.data(), {B, S, H, d}, qg_strides()};
    if (gd > 0) fa.gate_logits = {L.proj.data() + d, {B, S, H, gd}, qg_strides()};
    fa.k = {L.proj.data() + std::size_t(H) * (d + gd), {B, S, H, d}, kv_strides()};
    fa.v = {L.proj.data() + std::size_t(H) * (d + gd) + W, {B, S, H, d}, kv_strides()};
    if (offsets_[l].sinks != k_none) fa.sinks = {params.data() + offsets_[l].sinks, {H}};
    fa.out = {L.out.data(), {B, S, H, d}};
    fa.lse = {L.lse.data(), {B, H, S}};
    fa.router = {L.router.data(), {B, H, S}};
    fa.first_key_mass = {L.first_key_mass.data(), {B, H, S}};
    if (L.mask == mask_kind::sliding_window) fa.params.window = cfg_.window;
    return fa;
  }

  void resize(int batch) {
    if (batch == batch_) return;
    batch_ = batch;
    const std::size_t N = std::size_t(batch) * cfg_.seq, W = cfg_.width, V = cfg_.vocab;
    const std::size_t R = cfg_.proj_width(), F = cfg_.mlp_width();
    const std::size_t BHS = std::size_t(batch) * cfg_.heads * cfg_.seq;
    resid_.assign(std::size_t(cfg_.layers) + 1, std::vector<T>(N * W));
    for (layer_state& L : layers_) {
      L.rstd1.assign(N, T(0));
      L.h1.assign(N * W, T(0));
      L.proj.assign(N * R, T(0));
      L.out.assign(N * W, T(0));
      L.x_mid.assign(N * W, T(0));
      L.rstd2.assign(N, T(0));
      L.h2.assign(N * W, T(0));
      L.u.assign(N * F, T(0));
      L.gl.assign(N * F, T(0));
      L.lse.assign(BHS, accum(0));
      L.router.assign(BHS, accum(0));
      L.drouter.assign(BHS, accum(0));
      L.first_key_mass.assign(BHS, accum(0));
      L.counted.assign(std::size_t(batch) * cfg_.seq, 0);
    }
    hf_.assign(N * W, T(0));
    rstdf_.assign(N, T(0));
    logits_.assign(N * V, T(0));
    dlogits_.assign(N * V, T(0));
    emb_t_.assign(W * V, T(0));
    demb_t_.assign(W * V, T(0));
    dx_.assign(N * W, T(0));
    dh_.assign(N * W, T(0));
    dout_.assign(N * W, T(0));
    dproj_.assign(N * R, T(0));
    dmlp_.assign(N * F, T(0));
    dsinks_.assign(std::size_t(cfg_.heads), accum(0));
  }

  model_config cfg_;
  int threads_;
  sinkmoe::exec::host exec_;
  std::vector<param_tensor> tensors_;
  std::size_t total_ = 0;
  std::size_t tok_emb_ = 0, pos_emb_ = 0, shift_emb_ = k_none, norm_f_ = 0, w_out_ = k_none;
  std::vector<layer_offsets> offsets_;
  std::vector<layer_state> layers_;

  int batch_ = 0;
  std::vector<std::uint8_t> tokens_;
  std::vector<std::vector<T>> resid_;  ///< residual stream entering each layer, and the last
  std::vector<T> hf_, rstdf_, logits_, dlogits_, emb_t_, demb_t_;
  std::vector<T> dx_, dh_, dout_, dproj_, dmlp_, scratch_;
  std::vector<accum> dsinks_;
  std::vector<double> row_loss_;
  std::vector<std::uint8_t> row_correct_;
};

/// Loss and metrics of one training step.
struct step_result {
  ops::ce_totals ce;
  sinkmoe::balance::report balance;  ///< importance on this batch; loss = lambda-weighted
  [[nodiscard]] double ce_loss() const { return ce.loss_sum / double(ce.rows); }
  [[nodiscard]] double total_loss() const { return ce_loss() + balance.loss; }
};

/// The balancing loss as a training step calls it: importance_cv2 over this process's batch
/// (local), or, in a data-parallel run, sinkmoe::balance::distributed_cv2 over the global batch
/// of every rank (tiny_lm/data_parallel.hpp). Type-erased, so that the training loop is one code
/// path and does not depend on MPI.
template <class F>
struct step_balancer {
  using inputs_t = std::span<const sinkmoe::balance::layer_input<F>>;
  using drouter_t = std::span<const sinkmoe::tensor_view<F, 3>>;
  double lambda = 0;  ///< 0: forward only (metrics), no dL/dG into the backward
  /// The loss and metrics of the step's batch.
  std::function<sinkmoe::balance::report(const sinkmoe::exec::host&, inputs_t)> forward;
  /// forward, and dL/dG of this process's router values into drouter.
  std::function<sinkmoe::balance::report(const sinkmoe::exec::host&, inputs_t, drouter_t)>
      forward_backward;

  /// importance_cv2 on this process's batch alone.
  static step_balancer local(const sinkmoe::balance::importance_cv2& reg) {
    step_balancer b;
    b.lambda = reg.lambda;
    b.forward = [reg](const sinkmoe::exec::host& ex, inputs_t in) {
      return reg.forward<F>(ex, in);
    };
    b.forward_backward = [reg](const sinkmoe::exec::host& ex, inputs_t in, drouter_t dr) {
      return reg.forward_backward<F>(ex, in, dr);
    };
    return b;
  }
};

/// Forward, balance, backward: grads = d(mean CE + balance loss)/d params. With lambda = 0 the
/// balance report is still computed (for the metrics) but no dL/dG enters the backward.
/// `loss_tokens`: the tokens the cross-entropy is averaged over (0: this batch's; see forward).
template <class T>
step_result compute_gradients(transformer<T>& model, const sample_batch& batch,
                              const step_balancer<typename transformer<T>::accum>& balancer,
                              step_timers* timers = nullptr, std::int64_t loss_tokens = 0) {
  using accum = typename transformer<T>::accum;
  const sinkmoe::exec::host& exec = model.exec();
  model.zero_grad();
  step_result r;
  r.ce = model.forward(batch, true, timers, loss_tokens);
  const auto t0 = steady::now();
  const std::vector<sinkmoe::balance::layer_input<accum>> inputs = model.balance_inputs();
  const bool balanced = balancer.lambda > 0;
  if (balanced) {
    const std::vector<sinkmoe::tensor_view<accum, 3>> drouter = model.drouter_views();
    r.balance = balancer.forward_backward(exec, std::span(inputs), std::span(drouter));
  } else {
    r.balance = balancer.forward(exec, std::span(inputs));
  }
  if (timers) timers->balance += seconds_since(t0);
  model.backward(balanced, timers);
  return r;
}

/// compute_gradients with importance_cv2 on this batch alone.
template <class T>
step_result compute_gradients(transformer<T>& model, const sample_batch& batch,
                              const sinkmoe::balance::importance_cv2& reg,
                              step_timers* timers = nullptr) {
  using accum = typename transformer<T>::accum;
  return compute_gradients(model, batch, step_balancer<accum>::local(reg), timers);
}

}  // namespace tiny_lm
