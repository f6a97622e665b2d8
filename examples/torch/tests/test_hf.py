"""transformers models on attn_implementation="sinkmoe", built from small random configs (no
downloads): logits and every parameter gradient against transformers' own implementation, the
router values G against the eager attention weights (or the gate), padding, and a training step
with the balancing loss.

References: in float32, transformers' eager attention (GPT-OSS: eager, its only one with sinks).
In float64, sdpa for the models whose eager softmax runs in float32 even for float64 models
(Llama, Mistral, Qwen3-Next, BERT), eager for GPT-OSS (its softmax keeps the dtype). Experts
run transformers' eager implementation (its grouped_mm takes no float64).
"""
from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (AutoModel, AutoModelForCausalLM, BertConfig, GptOssConfig,  # noqa: E402
                          LlamaConfig, MistralConfig, Qwen3NextConfig)

import sinkmoe  # noqa: E402
import sinkmoe.hf  # noqa: E402

from test_balance import formula  # noqa: E402

sinkmoe.hf.register()

VOCAB = 61
COMMON = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=12,
              max_position_embeddings=64, initializer_range=0.15)


def configs():
    return {
        "llama": (LlamaConfig(**COMMON), AutoModelForCausalLM),
        "mistral": (MistralConfig(**COMMON, sliding_window=5), AutoModelForCausalLM),
        "gpt_oss": (GptOssConfig(**COMMON, num_local_experts=4, num_experts_per_tok=2,
                                 sliding_window=4,
                                 layer_types=["sliding_attention", "full_attention"]),
                    AutoModelForCausalLM),
        "qwen3_next": (Qwen3NextConfig(**COMMON, layer_types=["linear_attention",
                                                              "full_attention"],
                                       linear_num_value_heads=4, linear_num_key_heads=2,
                                       linear_key_head_dim=12, linear_value_head_dim=12,
                                       num_experts=4, num_experts_per_tok=2,
                                       moe_intermediate_size=24,
                                       shared_expert_intermediate_size=24),
                       AutoModelForCausalLM),
        "bert": (BertConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=64,
                            num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=64, attention_probs_dropout_prob=0.0,
                            hidden_dropout_prob=0.0, initializer_range=0.15), AutoModel),
    }


ATTENTION_CLASSES = {"LlamaAttention", "MistralAttention", "GptOssAttention", "Qwen3NextAttention",
                     "BertSelfAttention"}
PADDING = {"llama": "left", "mistral": None, "gpt_oss": "left", "qwen3_next": None,
           "bert": "right"}


def reference_impl(name: str, dtype: torch.dtype) -> str:
    if name == "gpt_oss" or dtype == torch.float32:
        return "eager"
    return "sdpa"


def build(name: str, impl: str, dtype: torch.dtype):
    config, cls = configs()[name]
    torch.manual_seed(11)
    kwargs = dict(attn_implementation=impl)
    if name in ("gpt_oss", "qwen3_next"):
        kwargs["experts_implementation"] = "eager"
    return cls.from_config(copy.deepcopy(config), **kwargs).to(dtype)


def batch(name: str, b: int = 3, t: int = 14):
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, VOCAB, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    side = PADDING[name]
    if side == "right":
        mask[1, 9:] = 0
        mask[2, 4:] = 0
    elif side == "left":
        mask[1, :5] = 0
        mask[2, :10] = 0
    return ids, mask


def outputs_and_grads(model, ids, mask):
    out = model(input_ids=ids, attention_mask=mask)
    hidden = out.logits if hasattr(out, "logits") else out.last_hidden_state
    real = mask.bool()
    # A loss on real positions only (padding positions are not sinkmoe's to match: it zeroes
    # padding query rows, transformers attends them to the real keys).
    if hidden.shape[-1] == VOCAB:
        loss = torch.nn.functional.cross_entropy(hidden[real], ids[real])
    else:  # an encoder's LayerNorm output: a fixed random readout (a square would be ~constant)
        probe = torch.randn(hidden.shape[-1], 3, generator=torch.Generator().manual_seed(9),
                            dtype=hidden.dtype)
        loss = ((hidden[real] @ probe) ** 2).mean()
    model.zero_grad()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return hidden.detach()[real], grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(configs()))
def test_logits_and_parameter_gradients_match(name, dtype):
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    ref = build(name, reference_impl(name, dtype), dtype)
    mine = build(name, "sinkmoe", dtype)
    mine.load_state_dict(ref.state_dict())
    ids, mask = batch(name)
    want, want_grads = outputs_and_grads(ref, ids, mask)
    with sinkmoe.hf.Collector() as collector:
        got, got_grads = outputs_and_grads(mine, ids, mask)
    attention_layers = sum(type(m).__name__ in ATTENTION_CLASSES for m in mine.modules())
    assert len(collector.records) == attention_layers > 0
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * want.abs().max())
    assert got_grads.keys() == want_grads.keys()
    # Relative to the model's gradient scale: some gradients are exactly 0 in exact arithmetic
    # (a key bias shifts every logit of a row alike) and both sides hold rounding noise there.
    grad_scale = max(float(w.abs().max()) for w in want_grads.values())
    for key, w in want_grads.items():
        torch.testing.assert_close(got_grads[key], w, rtol=tol, atol=tol * grad_scale,
                                   msg=lambda m, key=key: f"{key}: {m}")


def eager_sink_weight(name, model, ids, mask):
    """Per attention layer, the eager attention weight on the sink [B, H, T]."""
    out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    result = []
    for weights in out.attentions:
        if name == "gpt_oss":  # eager drops the sink's column: its weight is the rest
            result.append(1.0 - weights.sum(dim=-1))
        else:  # vanilla: the first real key (left padding: the first unmasked position)
            first = (mask.cumsum(dim=1) == 1).float().argmax(dim=1)
            result.append(torch.stack([weights[b, :, :, first[b]] for b in range(len(first))]))
    return result


@pytest.mark.parametrize("name", ["llama", "mistral", "gpt_oss", "bert"])
def test_router_is_one_minus_the_eager_sink_weight(name):
    dtype = torch.float64
    eager = build(name, "eager", dtype)
    mine = build(name, "sinkmoe", dtype)
    mine.load_state_dict(eager.state_dict())
    # transformers' eager attention turns fully masked rows (left padding, or right padding past
    # a sliding window) into NaN that reach the real rows of the next layer: padding only where
    # eager stays finite.
    ids, mask = batch(name)
    if name in ("llama", "mistral"):
        mask = torch.ones_like(mask)
    with torch.no_grad():
        want = eager_sink_weight(name, eager, ids, mask)
        with sinkmoe.hf.Collector(detach=True) as collector:
            mine(input_ids=ids, attention_mask=mask)
    routers, counted = collector.layers()
    # Eager's softmax runs in float32 for the vanilla models: compare at that precision.
    tol = 1e-10 if name == "gpt_oss" else 1e-6
    real_rows = mask.bool()[:, None, :].expand_as(routers[0])
    for g, a in zip(routers, want):
        torch.testing.assert_close(g[real_rows], (1.0 - a)[real_rows], rtol=tol, atol=tol)


def test_router_of_gated_attention_is_the_gate():
    model = build("qwen3_next", "sinkmoe", torch.float32)
    ids, mask = batch("qwen3_next")
    gates = []
    attn = [m for m in model.modules() if type(m).__name__ == "Qwen3NextAttention"][0]
    hook = attn.q_proj.register_forward_hook(
        lambda mod, inp, out: gates.append(out.view(*out.shape[:2], -1, 2 * attn.head_dim)))
    with torch.no_grad(), sinkmoe.hf.Collector(detach=True) as collector:
        model(input_ids=ids, attention_mask=mask)
    hook.remove()
    gate_logits = gates[0][..., attn.head_dim:]  # [B, T, H, D]
    want = torch.sigmoid(gate_logits).mean(dim=-1).permute(0, 2, 1)  # [B, H, T]
    torch.testing.assert_close(collector.layers()[0][0], want, rtol=1e-6, atol=1e-6)
    assert sinkmoe.hf.mechanism(model) == "gated"


@pytest.mark.parametrize("name", ["gpt_oss", "llama", "qwen3_next"])
def test_training_step_with_the_balancing_loss(name):
    """lm_loss + balance_loss(collector): the balance term equals the paper's formula on the
    collected G, its gradient reaches the parameters as that formula's autograd does, and a
    step lowers the balanced loss."""
    model = build(name, "sinkmoe", torch.float32)
    ids, mask = batch(name)
    lam = 0.5

    def step_loss():
        with sinkmoe.hf.Collector() as collector:
            out = model(input_ids=ids, attention_mask=mask, labels=ids)
        routers, counted = collector.layers()
        return out.loss, sinkmoe.balance_loss(collector, lam=lam), routers, counted

    lm_loss, balance, routers, counted = step_loss()
    want = formula([r.double() for r in routers], counted, lam)
    assert balance.item() == pytest.approx(want.item(), rel=1e-6)
    params = [p for p in model.parameters() if p.requires_grad]
    got_grads = torch.autograd.grad(lm_loss + balance, params, retain_graph=True,
                                    allow_unused=True)
    want_grads = torch.autograd.grad(lm_loss + formula(routers, counted, lam), params,
                                     allow_unused=True)
    for g, w in zip(got_grads, want_grads):
        if w is not None:
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6 * float(w.abs().max()))
    sgd = torch.optim.SGD(params, lr=0.05)
    before = balance.item()
    for _ in range(3):
        sgd.zero_grad()
        lm_loss, balance, _, _ = step_loss()
        (balance).backward()
        sgd.step()
    assert step_loss()[1].item() < before


def test_unsupported_patterns_fail_loudly():
    model = build("llama", "sinkmoe", torch.float32)
    ids, _ = batch("llama")
    # Two packed sequences in a 4-D mask (transformers passes 4-D masks through): a block-
    # diagonal pattern, not a padded batch of sinkmoe's masks.
    t = ids.shape[1]
    blocks = torch.zeros(t, t, dtype=torch.bool)
    blocks[:7, :7] = blocks[7:, 7:] = True
    packed = (blocks & torch.ones(t, t, dtype=torch.bool).tril())[None, None].expand(3, 1, t, t)
    with pytest.raises(NotImplementedError, match=r"LlamaAttention \(layer 0\).*query 7, key 0"):
        model(input_ids=ids, attention_mask=packed)
    model.train()
    model.config.attention_dropout = 0.1
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.1
    with pytest.raises(NotImplementedError, match="dropout"):
        model(input_ids=ids)
    model.eval()
    # Attention arguments the integration does not take (an additive position bias, an unknown
    # tensor): refused, naming the module.
    attn = model.model.layers[0].self_attn
    q, kv = torch.randn(1, 4, 5, 12), torch.randn(1, 2, 5, 12)
    for kwargs, name in ((dict(position_bias=torch.zeros(1, 4, 5, 5)), "position_bias"),
                         (dict(slopes=torch.ones(4)), "slopes")):
        with pytest.raises(NotImplementedError,
                           match=rf"LlamaAttention \(layer 0\) passes \['{name}'\]"):
            sinkmoe.hf.attention_forward(attn, q, kv, kv, None, scaling=0.3, **kwargs)
