// sinkmoe quickstart: the three mechanisms of the paper on random data.
//
// For each of Vanilla (sink = first token), Sink (GPT-OSS learned logit, sliding window) and
// Gated (Qwen3-Next elementwise gate, read by strides from an interleaved [q | gate]
// projection; in the real model q then goes through q_norm and RoPE into its own tensor, here it
// is read from the projection too, to keep the demo short): forward, the head-balancing loss on the router values, and a backward that folds
// the loss gradient in. Prints each head's importance (mean router value G).
#include <cmath>
#include <cstdio>
#include <random>
#include <sinkmoe/sinkmoe.hpp>
#include <span>
#include <string>
#include <vector>

namespace {

constexpr int kBatch = 2, kSeq = 128, kQHeads = 8, kKvHeads = 2, kHeadDim = 64;

struct random_tensors {
  std::vector<float> q_and_gate;  // [B, T, Hq, 2D]: per head [q (D) | gate logits (D)]
  std::vector<float> k, v, sinks;
};

random_tensors make_inputs(unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  random_tensors in;
  in.q_and_gate.resize(std::size_t(kBatch) * kSeq * kQHeads * 2 * kHeadDim);
  in.k.resize(std::size_t(kBatch) * kSeq * kKvHeads * kHeadDim);
  in.v.resize(in.k.size());
  for (auto* t : {&in.q_and_gate, &in.k, &in.v})
    for (float& x : *t) x = normal(rng);
  // Make key 0 attractive so that vanilla heads show a sink of varying strength.
  for (int b = 0; b < kBatch; ++b)
    for (int h = 0; h < kKvHeads; ++h)
      for (int c = 0; c < kHeadDim; ++c)
        in.k[((std::size_t(b) * kSeq) * kKvHeads + h) * kHeadDim + c] *= 3.0f;
  for (int h = 0; h < kQHeads; ++h) in.sinks.push_back(-1.0f + 0.6f * float(h));  // heads differ
  return in;
}

void print_importance(const char* name, const sinkmoe::balance::report& rep) {
  const auto& layer = rep.layers[0];
  std::printf("\n%s\n  head  importance\n", name);
  for (std::size_t h = 0; h < layer.importance.size(); ++h) {
    const int bar = static_cast<int>(std::lround(layer.importance[h] * 40));
    std::printf("  %4zu  %.3f  %s\n", h, layer.importance[h],
                std::string(std::size_t(bar), '#').c_str());
  }
  std::printf("  CV %.3f  effective heads %.2f of %zu  balance loss %.5f\n", layer.cv,
              layer.effective_heads, layer.importance.size(), rep.loss);
}

double norm(const std::vector<float>& x) {
  double s = 0;
  for (float v : x) s += double(v) * v;
  return std::sqrt(s);
}

/// forward -> balance -> backward for one policy bundle.
template <class Attn>
void run(const char* name, const random_tensors& in, const sinkmoe::attention_params& params) {
  constexpr int B = kBatch, T = kSeq, H = kQHeads, Hk = kKvHeads, D = kHeadDim;
  using Gate = typename Attn::gate_type;
  const sinkmoe::exec::host exec{};  // all cores

  // q and gate logits: two strided views into one [B, T, H, 2D] projection, no copy (Qwen3-Next
  // normalises and rotates q first, so there only the gate is a view of the projection).
  const std::array<sinkmoe::index_t, 4> qg_strides{T * H * 2 * D, H * 2 * D, 2 * D, 1};
  std::vector<float> out(std::size_t(B) * T * H * D), lse(std::size_t(B) * H * T),
      router(lse.size());
  sinkmoe::forward_args<float> fa;
  fa.q = {in.q_and_gate.data(), {B, T, H, D}, qg_strides};
  fa.k = {in.k.data(), {B, T, Hk, D}};
  fa.v = {in.v.data(), {B, T, Hk, D}};
  if constexpr (Attn::sink_type::needs_sinks_tensor) fa.sinks = {in.sinks.data(), {H}};
  if constexpr (Gate::enabled)
    fa.gate_logits = {in.q_and_gate.data() + D, {B, T, H, Gate::logit_dim(D)}, qg_strides};
  fa.out = {out.data(), {B, T, H, D}};
  fa.lse = {lse.data(), {B, H, T}};
  fa.router = {router.data(), {B, H, T}};
  fa.params = params;
  Attn::forward(exec, fa);

  // Which rows count towards importance (vanilla leaves out the first query), then the loss.
  std::vector<std::uint8_t> counted(std::size_t(B) * T);
  Attn::counted_tokens(fa, {counted.data(), {B, T}});
  const sinkmoe::balance::importance_cv2 balance{.lambda = 1e-2};
  std::vector<float> drouter(router.size());
  const sinkmoe::balance::layer_input<float> layer{fa.router, {counted.data(), {B, T}}};
  const sinkmoe::tensor_view<float, 3> drouter_view{drouter.data(), {B, H, T}};
  const auto rep =
      balance.forward_backward<float>(exec, std::span(&layer, 1), std::span(&drouter_view, 1));
  print_importance(name, rep);

  // Backward of sum(out) + the balance loss; the loss enters through drouter.
  std::vector<float> dout(out.size(), 1.0f), dq(std::size_t(B) * T * H * D), dk(in.k.size()),
      dv(in.v.size());
  std::vector<float> dsinks(H),
      dgate(Gate::enabled ? std::size_t(B) * T * H * Gate::logit_dim(D) : 0);
  sinkmoe::backward_args<float> ba;
  ba.dout = {dout.data(), {B, T, H, D}};
  ba.drouter = {drouter.data(), {B, H, T}};
  ba.dq = {dq.data(), {B, T, H, D}};
  ba.dk = {dk.data(), {B, T, Hk, D}};
  ba.dv = {dv.data(), {B, T, Hk, D}};
  if constexpr (Attn::sink_type::trainable) ba.dsinks = {dsinks.data(), {H}};
  if constexpr (Gate::enabled) ba.dgate_logits = {dgate.data(), {B, T, H, Gate::logit_dim(D)}};
  Attn::backward(exec, fa, ba);
  std::printf("  |dq| %.3f  |dk| %.3f  |dv| %.3f", norm(dq), norm(dk), norm(dv));
  if constexpr (Attn::sink_type::trainable) std::printf("  |dsinks| %.4f", norm(dsinks));
  if constexpr (Gate::enabled) std::printf("  |dgate| %.3f", norm(dgate));
  std::printf("\n");
}

}  // namespace

int main() {
  std::printf("sinkmoe %s quickstart: B=%d T=%d Hq=%d Hkv=%d D=%d\n", sinkmoe::version_string,
              kBatch, kSeq, kQHeads, kKvHeads, kHeadDim);
  const random_tensors in = make_inputs(2026);

  run<sinkmoe::vanilla_attention<>>("Vanilla attention (causal; G = 1 - P[t, first token])", in,
                                    {});

  sinkmoe::attention_params window{};
  window.window = 32;  // GPT-OSS uses 128 on alternate layers
  run<sinkmoe::sink_attention<sinkmoe::mask::sliding_window>>(
      "Sink attention (learned logit per head, sliding window 32; G = 1 - sink mass)", in, window);

  run<sinkmoe::gated_attention<>>("Gated attention (elementwise sigmoid gate; G = mean gate)", in,
                                  {});
  return 0;
}
