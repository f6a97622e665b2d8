#pragma once
// Configuration of a tiny_lm run: the attention mechanism, the model shape, the optimiser and
// the balancing loss. Everything that changes the numbers of a run lives in train_config and is
// stored in checkpoints; where files go and how much is printed lives in run_options.

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace tiny_lm {

/// Bad input from the user (a flag, a data file, a checkpoint): one line, exit code 2.
class usage_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// The attention mechanism of every layer (docs/method.md sections 1-2).
enum class mechanism : std::uint8_t {
  vanilla,         ///< softmax attention; the first token (BOS) is the sink, G = 1 - P[t, 0]
  sink,            ///< GPT-OSS learned sink logit per head, G = 1 - sink mass
  gated,           ///< Qwen3-Next elementwise sigmoid output gate, G = mean gate
  gated_headwise,  ///< one sigmoid gate per head, G = the gate
  sink_gated,      ///< learned sink and elementwise gate, G = mean gate * (1 - sink mass)
};

inline constexpr std::array<mechanism, 5> all_mechanisms{
    mechanism::vanilla, mechanism::sink, mechanism::gated, mechanism::gated_headwise,
    mechanism::sink_gated};

/// The command-line spelling of a mechanism.
inline const char* name_of(mechanism m) {
  switch (m) {
    case mechanism::vanilla:
      return "vanilla";
    case mechanism::sink:
      return "sink";
    case mechanism::gated:
      return "gated";
    case mechanism::gated_headwise:
      return "gated-headwise";
    case mechanism::sink_gated:
      return "sink-gated";
  }
  return "?";
}

/// The name used in tables (the paper's column names where there is one).
inline const char* title_of(mechanism m) {
  switch (m) {
    case mechanism::vanilla:
      return "Vanilla";
    case mechanism::sink:
      return "Sink";
    case mechanism::gated:
      return "Gated";
    case mechanism::gated_headwise:
      return "Gated (headwise)";
    case mechanism::sink_gated:
      return "Sink + Gated";
  }
  return "?";
}

inline std::optional<mechanism> parse_mechanism(std::string_view text) {
  for (const mechanism m : all_mechanisms)
    if (text == name_of(m)) return m;
  return std::nullopt;
}

/// Does this mechanism have a learned sink logit per head / an output gate?
inline bool has_sink_logit(mechanism m) {
  return m == mechanism::sink || m == mechanism::sink_gated;
}
inline bool has_gate(mechanism m) {
  return m == mechanism::gated || m == mechanism::gated_headwise || m == mechanism::sink_gated;
}
inline bool elementwise_gate(mechanism m) {
  return m == mechanism::gated || m == mechanism::sink_gated;
}

/// The attention mask of one layer.
enum class mask_kind : std::uint8_t { causal, sliding_window };

/// Where the model runs. Only the CPU exists today (see attention_backend.hpp).
enum class device_kind : std::uint8_t { cpu, cuda };

/// Shape of the decoder-only transformer.
struct model_config {
  mechanism mech = mechanism::sink;
  int vocab = 256;  ///< byte-level tokens
  int layers = 2;
  int heads = 8;
  int width = 64;           ///< model width; head_dim = width / heads
  int seq = 64;             ///< tokens per training sequence (the first is BOS)
  int mlp_mult = 4;         ///< MLP hidden width = mlp_mult * width (GELU)
  int window = 0;           ///< sliding window on even layers (GPT-OSS); 0 = causal everywhere
  bool tied = true;         ///< output head tied to the token embedding
  bool token_shift = true;  ///< add an embedding of the previous token (see model.hpp)

  [[nodiscard]] int head_dim() const { return width / heads; }
  /// Gate logits per head and token: 0 (no gate), 1 (headwise) or head_dim (elementwise).
  [[nodiscard]] int gate_dim() const {
    return !has_gate(mech) ? 0 : elementwise_gate(mech) ? head_dim() : 1;
  }
  /// Columns of the fused input projection: per head [q | gate] interleaved, then k, then v.
  [[nodiscard]] int proj_width() const { return heads * (head_dim() + gate_dim()) + 2 * width; }
  [[nodiscard]] int mlp_width() const { return mlp_mult * width; }
  /// GPT-OSS: sliding window on even layers, full causal on odd layers.
  [[nodiscard]] mask_kind mask_of_layer(int layer) const {
    return window > 0 && layer % 2 == 0 ? mask_kind::sliding_window : mask_kind::causal;
  }
};

/// Everything that determines the numbers of a training run (stored in checkpoints).
struct train_config {
  model_config model{};
  int batch = 16;
  int steps = 300;
  int warmup = 0;             ///< 0: steps / 20 (at least 1)
  double lr = 1e-2;           ///< peak learning rate
  double min_lr_ratio = 0.1;  ///< cosine decay ends at lr * min_lr_ratio
  double weight_decay = 0.1;  ///< AdamW, on projection matrices only
  double beta1 = 0.9, beta2 = 0.95, adam_eps = 1e-8;
  double clip = 1.0;     ///< global gradient-norm clip (0 = off)
  double lambda = 0.0;   ///< balancing loss weight
  int shared_heads = 0;  ///< m: most important heads per layer left out of the loss
  std::uint64_t seed = 1;
  std::string data_path;  ///< empty: the built-in generated corpus

  [[nodiscard]] int warmup_steps() const { return warmup > 0 ? warmup : std::max(1, steps / 20); }
};

}  // namespace tiny_lm
