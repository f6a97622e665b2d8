#pragma once
// AdamW with linear warmup and cosine decay, and global gradient-norm clipping.

#include <cmath>
#include <cstdint>
#include <vector>

#include "tiny_lm/config.hpp"
#include "tiny_lm/model.hpp"
#include "tiny_lm/ops.hpp"

namespace tiny_lm {

/// Learning rate of step `step` (0-based): linear warmup to cfg.lr over the warmup steps, then
/// cosine decay to cfg.lr * cfg.min_lr_ratio at the last step.
inline double learning_rate(const train_config& cfg, int step) {
  const int warmup = cfg.warmup_steps();
  if (step < warmup) return cfg.lr * double(step + 1) / double(warmup);
  const int decay_steps = std::max(1, cfg.steps - warmup);
  const double progress = std::min(1.0, double(step - warmup) / double(decay_steps));
  const double cosine = 0.5 * (1.0 + std::cos(3.141592653589793 * progress));
  return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine);
}

/// Scales grads so that their global L2 norm is at most max_norm (0: no clipping); returns the
/// norm before clipping. The norm is summed in double, in order (deterministic).
template <class T>
double clip_gradients(std::vector<T>& grads, double max_norm) {
  double sum = 0;
  for (const T g : grads) sum += double(g) * double(g);
  const double norm = std::sqrt(sum);
  if (max_norm > 0 && norm > max_norm) {
    const T scale = T(max_norm / (norm + 1e-12));
    for (T& g : grads) g *= scale;
  }
  return norm;
}

/// AdamW moments; `step` counts the updates made so far.
template <class T>
struct adamw_state {
  std::vector<T> m, v;
  std::int64_t step = 0;
  void reset(std::size_t n) {
    m.assign(n, T(0));
    v.assign(n, T(0));
    step = 0;
  }
};

/// One AdamW update (decoupled weight decay on tensors with decay = true).
template <class T>
void adamw_update(std::vector<T>& params, const std::vector<T>& grads, adamw_state<T>& state,
                  const std::vector<param_tensor>& tensors, double lr, const train_config& cfg,
                  int threads) {
  state.step += 1;
  const double bc1 = 1.0 - std::pow(cfg.beta1, double(state.step));
  const double bc2 = 1.0 - std::pow(cfg.beta2, double(state.step));
  const T b1 = T(cfg.beta1), b2 = T(cfg.beta2), eps = T(cfg.adam_eps);
  const T step_size = T(lr / bc1), inv_sqrt_bc2 = T(1.0 / std::sqrt(bc2));
  for (const param_tensor& t : tensors) {
    const T decay = t.decay ? T(1.0 - lr * cfg.weight_decay) : T(1);
    T* p = params.data() + t.offset;
    const T* g = grads.data() + t.offset;
    T* m = state.m.data() + t.offset;
    T* v = state.v.data() + t.offset;
    ops::parallel_for(threads, std::int64_t((t.size() + 4095) / 4096), [&](std::int64_t block) {
      const std::size_t end = std::min(t.size(), std::size_t(block + 1) * 4096);
      for (std::size_t i = std::size_t(block) * 4096; i < end; ++i) {
        m[i] = b1 * m[i] + (T(1) - b1) * g[i];
        v[i] = b2 * v[i] + (T(1) - b2) * g[i] * g[i];
        p[i] = p[i] * decay - step_size * m[i] / (std::sqrt(v[i]) * inv_sqrt_bc2 + eps);
      }
    });
  }
}

}  // namespace tiny_lm
