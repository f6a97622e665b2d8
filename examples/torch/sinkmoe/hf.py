"""transformers integration: `attn_implementation="sinkmoe"`.

    import sinkmoe.hf
    sinkmoe.hf.register()
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sinkmoe")
    with sinkmoe.hf.Collector() as collector:
        out = model(input_ids, attention_mask=mask, labels=labels)
    loss = out.loss + sinkmoe.balance_loss(collector, lam=0.01)

The attention function runs every attention layer on sinkmoe: GPT-OSS (its `sinks` become
sink::learned, sliding-window layers mask::sliding_window), Llama / Mistral / Qwen3 and other
decoders (vanilla: the first real token is the sink), BERT-style encoders (mask::none) with
padding (the lengths read off the attention mask). The mask transformers builds is checked
against the one sinkmoe computes, row by row; a pattern sinkmoe cannot express (packed sequences
with position resets, chunked attention, custom masks), attention dropout, or an attention
module it does not know raise NotImplementedError naming the module: nothing falls back to eager.

Gated attention (Qwen3-Next) applies its output gate outside the attention function, so
register() also replaces the forward of transformers' Qwen3NextAttention by one that hands the
gate to sinkmoe (gate::elementwise): its router value G is then the gate, the quantity the paper
balances for gated attention, and the output is the same.

A Collector gathers every layer's router values G and counted-token masks in call order, as
autograd tensors: a loss on them (balance_loss) reaches each layer's attention backward.
"""
from __future__ import annotations

import threading
from typing import Callable

import torch

from . import attention as _attention

SUPPORTED_TRANSFORMERS = ">=5.0,<6"

_active: list["Collector"] = []
_lock = threading.Lock()


class Collector:
    """Gathers (router, counted, module) of every sinkmoe attention call while active.

    Use as a context manager around the forward passes whose heads you want to balance or
    inspect. `detach=True` keeps no autograd graph (inspection)."""

    def __init__(self, detach: bool = False):
        self.detach = detach
        self.records: list[tuple[torch.Tensor, torch.Tensor, str]] = []

    def __enter__(self) -> "Collector":
        with _lock:
            _active.append(self)
        return self

    def __exit__(self, *exc) -> None:
        with _lock:
            _active.remove(self)

    def record(self, router: torch.Tensor, counted: torch.Tensor, name: str) -> None:
        self.records.append((router.detach() if self.detach else router, counted, name))

    def layers(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(routers, counted) per recorded attention call, in call order."""
        if not self.records:
            raise ValueError("sinkmoe.hf.Collector: no attention call was recorded; run the model "
                             "(loaded with attn_implementation='sinkmoe') inside `with collector:`")
        return [r[0] for r in self.records], [r[1] for r in self.records]

    def names(self) -> list[str]:
        return [r[2] for r in self.records]

    def clear(self) -> None:
        self.records.clear()


def _record(module, result) -> None:
    if _active:
        name = f"{type(module).__name__}[{getattr(module, 'layer_idx', '?')}]"
        for collector in list(_active):
            collector.record(result.router, result.counted, name)


# ---- Masks ----

class _MaskLayout:
    """What sinkmoe needs of a transformers 4-D boolean mask: the key lengths and padding side."""

    def __init__(self, seqlens_q, seqlens_k, side):
        self.seqlens_q, self.seqlens_k, self.side = seqlens_q, seqlens_k, side


_layout_cache: dict = {}


def _module_name(module) -> str:
    return f"{type(module).__name__} (layer {getattr(module, 'layer_idx', '?')})"


def _as_bool_mask(attention_mask: torch.Tensor, module) -> torch.Tensor:
    if attention_mask.dim() != 4 or attention_mask.shape[1] != 1:
        raise NotImplementedError(
            f"sinkmoe: {_module_name(module)} got an attention mask of shape "
            f"{tuple(attention_mask.shape)}; sinkmoe reads [B, 1, Tq, Tk] masks")
    if attention_mask.dtype == torch.bool:
        return attention_mask[:, 0]
    return attention_mask[:, 0] > torch.finfo(attention_mask.dtype).min / 2  # additive masks


def _expected_mask(kind: str, window: int, tq: int, tk: int, q_begin, q_len, k_begin, k_len,
                   device) -> torch.Tensor:
    """The [B, Tq, Tk] visibility sinkmoe computes (bottom-right alignment per sequence)."""
    t = torch.arange(tq, device=device)[None, :, None] - q_begin[:, None, None]
    j = torch.arange(tk, device=device)[None, None, :] - k_begin[:, None, None]
    real = (j >= 0) & (j < k_len[:, None, None])
    if kind == "none":
        return real
    diagonal = t + (k_len - q_len)[:, None, None]
    visible = real & (j <= diagonal)
    if kind == "sliding_window":
        visible &= j > diagonal - window
    return visible


def _analyse_mask(attention_mask, kind: str, window: int, tq: int, tk: int, module) -> _MaskLayout:
    """The padding of a mask transformers built, checked entry by entry against sinkmoe's mask
    of the given kind (query rows that are padding excepted)."""
    key = (id(attention_mask), attention_mask.data_ptr(), tuple(attention_mask.shape), kind, window,
           tq, tk)
    cached = _layout_cache.get(key)
    if cached is not None and cached[0] is attention_mask:
        return cached[1]
    allowed = _as_bool_mask(attention_mask, module)
    batch, device = allowed.shape[0], allowed.device
    if allowed.shape[-2:] != (tq, tk):
        raise NotImplementedError(
            f"sinkmoe: {_module_name(module)}: mask covers {tuple(allowed.shape[-2:])} query x key "
            f"positions, the attention {tq} x {tk}")
    real_k = allowed.any(dim=1)  # [B, Tk]: keys some query sees
    k_len = real_k.sum(dim=1)
    positions = torch.arange(tk, device=device)[None, :]
    right = bool(((positions < k_len[:, None]) == real_k).all())
    left = bool(((positions >= (tk - k_len)[:, None]) == real_k).all())
    padded = bool((k_len < tk).any())
    if padded and not (right or left):
        raise NotImplementedError(
            f"sinkmoe: {_module_name(module)}: the attention mask's keys are not a padded batch "
            "(real keys must be contiguous at one end of each row)")
    side = "right" if (right or not padded) else "left"
    if padded and tq != tk and side == "right":
        raise NotImplementedError(
            f"sinkmoe: {_module_name(module)}: right padding with {tq} queries and {tk} keys "
            "(use left padding for generation with a cache)")
    # Padded self-attention: the padding rows are padding queries too; with a cache (Tq < Tk,
    # left padding) every query row is real.
    q_len = k_len if (padded and tq == tk) else torch.full_like(k_len, tq)
    q_begin = (tq - q_len) if side == "left" else torch.zeros_like(q_len)
    k_begin = (tk - k_len) if side == "left" else torch.zeros_like(k_len)
    expected = _expected_mask(kind, window, tq, tk, q_begin, q_len, k_begin, k_len, device)
    rows = torch.arange(tq, device=device)[None, :]
    real_rows = (rows >= q_begin[:, None]) & (rows < (q_begin + q_len)[:, None])
    wrong = (expected != allowed) & real_rows[:, :, None]
    if bool(wrong.any()):
        b, t, j = (int(x) for x in wrong.nonzero()[0])
        raise NotImplementedError(
            f"sinkmoe: {_module_name(module)}: the attention mask is not sinkmoe's mask "
            f"'{kind}'{f' (window {window})' if kind == 'sliding_window' else ''} with padding: "
            f"sequence {b}, query {t}, key {j} is {'visible' if allowed[b, t, j] else 'hidden'} "
            "there (packed sequences, chunked or custom masks are not supported)")
    layout = _MaskLayout(q_len.to(torch.int32).cpu() if padded else None,
                         k_len.to(torch.int32).cpu() if padded else None, side)
    if len(_layout_cache) > 64:
        _layout_cache.clear()
    _layout_cache[key] = (attention_mask, layout)
    return layout


def _mask_kind(module, is_causal, sliding_window) -> tuple[str, int]:
    causal = getattr(module, "is_causal", True) if is_causal is None else bool(is_causal)
    if not causal:
        if sliding_window:
            raise NotImplementedError(f"sinkmoe: {_module_name(module)}: a bidirectional sliding "
                                      "window is not a sinkmoe mask")
        return "none", 0
    if sliding_window:
        return "sliding_window", int(sliding_window)
    return "causal", 0


def _call_sinkmoe(module, query, key, value, attention_mask, scaling, dropout, sinks=None,
                  sliding_window=None, gate_logits=None, softcap=0.0, is_causal=None):
    if dropout:
        raise NotImplementedError(
            f"sinkmoe: {_module_name(module)} asks for attention dropout {dropout}; sinkmoe has "
            "none (set the config's attention dropout to 0)")
    tq, tk = query.shape[2], key.shape[2]
    kind, window = _mask_kind(module, is_causal, sliding_window)
    layout = None
    if attention_mask is not None:
        layout = _analyse_mask(attention_mask, kind, window, tq, tk, module)
    extra = {}
    if layout is not None and layout.seqlens_k is not None:
        extra = dict(seqlens_q=layout.seqlens_q, seqlens_k=layout.seqlens_k,
                     padding_side=layout.side)
    result = _attention(query, key, value, sinks=sinks, gate_logits=gate_logits, mask=kind,
                        window=window, scale=scaling, softcap=float(softcap), layout="bhtd",
                        **extra)
    _record(module, result)
    return result


# Keyword arguments that change what attention computes, which this integration does not take
# (additive position biases, head masks): refused, as is any tensor it does not know. Other
# keyword arguments are the model's bookkeeping (output_router_logits, use_cache, ...).
_REFUSED_KWARGS = {"alibi", "position_bias", "attention_bias", "head_mask", "bias",
                   "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"}
_READ_KWARGS = {"s_aux", "sliding_window", "softcap", "is_causal", "position_ids",
                "position_embeddings", "cache_position"}


def _check_kwargs(module, kwargs) -> None:
    if kwargs.get("output_attentions"):
        raise NotImplementedError(
            f"sinkmoe: {_module_name(module)}: output_attentions=True; sinkmoe returns no attention "
            "matrix (read the router values with sinkmoe.hf.Collector, or use attn_implementation"
            "='eager')")
    refused = sorted(k for k, v in kwargs.items() if v is not None and (
        k in _REFUSED_KWARGS or (torch.is_tensor(v) and k not in _READ_KWARGS)))
    if refused:
        raise NotImplementedError(
            f"sinkmoe: {_module_name(module)} passes {refused} to its attention function; the "
            "sinkmoe integration does not take them (packed sequences: call sinkmoe.attention with "
            "cu_seqlens_q/k)")


def attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                      **kwargs):
    """transformers' attention-function contract: [B, H, T, D] tensors in, ([B, T, H, D], None)
    out. GPT-OSS passes its sink logits as `s_aux`, sliding-window layers `sliding_window`,
    Gemma-style models a logit `softcap`."""
    _check_kwargs(module, kwargs)
    sinks = kwargs.get("s_aux")
    if sinks is not None:
        sinks = sinks.to(torch.float64 if query.dtype == torch.float64 else torch.float32)
    sliding_window = kwargs.get("sliding_window", getattr(module, "sliding_window", None))
    result = _call_sinkmoe(module, query, key, value, attention_mask, scaling, dropout,
                           sinks=sinks, sliding_window=sliding_window,
                           softcap=kwargs.get("softcap") or 0.0,
                           is_causal=kwargs.get("is_causal"))
    return result.out.transpose(1, 2), None


def _sinkmoe_mask(*args, **kwargs):
    """transformers' mask factory for "sinkmoe": always the full boolean mask (no skipping), so
    that the attention function can read padding off it and check its pattern."""
    from transformers.masking_utils import sdpa_mask
    kwargs["allow_is_causal_skip"] = False
    kwargs["allow_is_bidirectional_skip"] = False
    return sdpa_mask(*args, **kwargs)


# ---- Gated attention (Qwen3-Next) ----

def _qwen3_next_forward(self, hidden_states, position_embeddings, attention_mask, cache=None,
                        **kwargs):
    """Qwen3NextAttention.forward with the output gate inside sinkmoe (gate::elementwise)."""
    from transformers.models.qwen3_next.modeling_qwen3_next import apply_rotary_pos_emb
    if self.config._attn_implementation != "sinkmoe":
        return type(self)._sinkmoe_original_forward(self, hidden_states, position_embeddings,
                                                    attention_mask, cache=cache, **kwargs)
    cache = kwargs.pop("past_key_values", cache)
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.head_dim)
    projected = self.q_proj(hidden_states).view(*input_shape, -1, self.head_dim * 2)
    query_states, gate = torch.chunk(projected, 2, dim=-1)  # gate: a strided view, no copy
    query_states = self.q_norm(query_states.reshape(hidden_shape)).transpose(1, 2)
    key_states = self.k_norm(self.k_proj(hidden_states).view(hidden_shape)).transpose(1, 2)
    value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
    cos, sin = position_embeddings
    query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
    if cache is not None:
        key_states, value_states = cache.update(key_states, value_states, self.layer_idx,
                                                kwargs=kwargs)
    result = _call_sinkmoe(self, query_states, key_states, value_states, attention_mask,
                           self.scaling, 0.0 if not self.training else self.attention_dropout,
                           gate_logits=gate.transpose(1, 2))
    attn_output = result.out.transpose(1, 2).reshape(*input_shape, -1).contiguous()
    return self.o_proj(attn_output), None


_GATED_MODULES: list[tuple[str, str, Callable]] = [
    ("transformers.models.qwen3_next.modeling_qwen3_next", "Qwen3NextAttention",
     _qwen3_next_forward),
]


def register() -> None:
    """Registers "sinkmoe" as an attention implementation (and its mask factory) and installs
    the gated-attention forwards. Idempotent."""
    import importlib

    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface
    AttentionInterface.register("sinkmoe", attention_forward)
    AttentionMaskInterface.register("sinkmoe", _sinkmoe_mask)
    for module_name, class_name, forward in _GATED_MODULES:
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            continue
        if not hasattr(cls, "_sinkmoe_original_forward"):
            cls._sinkmoe_original_forward = cls.forward
            cls.forward = forward


def mechanism(model) -> str:
    """Which of the paper's mechanisms the model's attention is: 'sink' (learned sink logits,
    GPT-OSS), 'gated' (an output gate, Qwen3-Next) or 'vanilla' (the first token is the sink)."""
    for module in model.modules():
        if isinstance(getattr(module, "sinks", None), torch.nn.Parameter):
            return "sink"
        if any(type(module).__name__ == class_name for _, class_name, _ in _GATED_MODULES):
            return "gated"
    return "vanilla"
