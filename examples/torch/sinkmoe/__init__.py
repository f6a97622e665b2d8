"""sinkmoe for PyTorch.

Attention with sinks, output gates and head routing (the C++ library's kernels as torch
operators, differentiable), the head-balancing loss, a transformers attention implementation
(`sinkmoe.hf`) and a head-importance report (`python -m sinkmoe.inspect`).

    out = sinkmoe.attention(q, k, v, sinks=sinks, mask="sliding_window", window=128)
    out.out, out.lse, out.router   # router: G = 1 - (attention mass on the sink), per head and row

A head's router value G is what the paper balances: the output of head h is scaled by G, so heads
are experts and the sink is their router (arXiv:2602.01203).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from . import _ops
from .balance import ImportanceCV2, LossReport, balance_loss, head_metrics, importance_cv2

__all__ = ["attention", "AttentionOutput", "importance_cv2", "ImportanceCV2", "LossReport",
           "balance_loss", "head_metrics", "ops"]

ops = _ops.ops


class AttentionOutput(NamedTuple):
    out: torch.Tensor             # like q: the (gated) attention output
    lse: torch.Tensor             # [B, H, Tq] log-sum-exp over the visible keys and the sink, base e
    router: torch.Tensor          # [B, H, Tq] G: 1 - sink mass, the gate, or their product
    first_key_mass: torch.Tensor  # [B, H, Tq] attention on the first real key (not differentiable)
    counted: torch.Tensor         # [B, Tq] uint8: rows that count towards head importance


_MASKS = ("none", "causal", "sliding_window", "streaming")


def _resolve_sink(sink: str, sinks, fixed_sink) -> str:
    if sink != "auto":
        return sink
    if sinks is not None:
        return "learned"
    return "fixed" if fixed_sink is not None else "none"


def _resolve_gate(gate: str, gate_logits, head_dim: int) -> str:
    if gate != "auto":
        return gate
    if gate_logits is None:
        return "none"
    return "headwise" if gate_logits.shape[-1] == 1 and head_dim != 1 else "elementwise"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
              sinks: torch.Tensor | None = None, gate_logits: torch.Tensor | None = None,
              mask: str = "none", sink: str = "auto", gate: str = "auto",
              route: str = "deduced", scale: float | None = None, softcap: float = 0.0,
              window: int = 0, sink_tokens: int = 0, top_left: bool = False,
              fixed_sink: float | None = None, layout: str = "bthd",
              cu_seqlens_q: torch.Tensor | None = None, cu_seqlens_k: torch.Tensor | None = None,
              max_seqlen_q: int = 0, max_seqlen_k: int = 0,
              seqlens_q: torch.Tensor | None = None, seqlens_k: torch.Tensor | None = None,
              padding_side: str = "right", backend: str = "auto") -> AttentionOutput:
    """Attention with a sink, an output gate and a router value per head and query row.

    q [B, Tq, Hq, D], k and v [B, Tk, Hkv, D] (layout="bthd", default) or [B, H, T, D]
    (layout="bhtd", transformers' layout), read through their strides (the head dim must be
    contiguous). float32 or float64 on the CPU; bf16 or fp16 on CUDA when the package was built
    with nvcc. Hq must be a multiple of Hkv (GQA/MQA).

    sink: "none" (vanilla: the first real key is the sink), "learned" (a logit per query head,
    `sinks` [Hq] in float32 or float64: GPT-OSS), "fixed" (`fixed_sink`, the same logit for every
    head); "auto" picks from `sinks` / `fixed_sink`.
    gate: "none", "headwise" (gate_logits [..., 1]) or "elementwise" (gate_logits [..., D]: Qwen3-
    Next); Y = sigmoid(gate_logits) * attention; "auto" picks from gate_logits.
    route: how G is formed: "deduced" (the gate if there is one, else 1 - sink mass),
    "sink_mass", "output_gate" or "product".
    mask: "none", "causal", "sliding_window" (keys (t - window, t]), "streaming" (the window plus
    the first `sink_tokens` keys); causal masks align bottom-right (the queries are the last Tq
    of Tk positions) unless top_left=True.
    scale: the softmax scale (default 1/sqrt(D)); softcap > 0: s = softcap * tanh(s / softcap).
    Batches: cu_seqlens_q/k (int32 [N + 1], packed sequences, B = 1) or seqlens_q/k (int32 [B],
    real lengths of a padded batch, padding_side "right" or "left"), on the host for the CPU.
    backend: "auto" (the CPU backend, or CUDA's fused kernels), or "unfused" (CUDA's cuBLASLt
    path: any head dim).

    Every output is differentiable but first_key_mass and counted; a gradient on `router` (a
    balancing loss) reaches the attention backward.
    """
    if layout not in ("bthd", "bhtd"):
        raise ValueError(f"sinkmoe: layout = {layout!r}: must be 'bthd' or 'bhtd'")
    if padding_side not in ("right", "left"):
        raise ValueError(f"sinkmoe: padding_side = {padding_side!r}: must be 'right' or 'left'")
    if backend not in ("auto", "unfused"):
        raise ValueError(f"sinkmoe: backend = {backend!r}: must be 'auto' or 'unfused'")
    if mask not in _MASKS:
        raise ValueError(f"sinkmoe: mask = {mask!r}: must be one of {', '.join(_MASKS)}")
    sink = _resolve_sink(sink, sinks, fixed_sink)
    gate = _resolve_gate(gate, gate_logits, q.shape[-1])
    result = ops.attention_forward(
        q, k, v, sinks, gate_logits, cu_seqlens_q, cu_seqlens_k, seqlens_q, seqlens_k,
        int(max_seqlen_q), int(max_seqlen_k), sink, gate, mask, route,
        0.0 if scale is None else float(scale), float(softcap), int(window), int(sink_tokens),
        bool(top_left), 0.0 if fixed_sink is None else float(fixed_sink),
        padding_side == "left", layout == "bhtd", backend == "unfused")
    return AttentionOutput(*result)
