"""An independent float64 reference of sinkmoe's attention in plain torch (explicit T x T
matrices), written from docs/method.md, not from the library: the operators are checked
against it."""
from __future__ import annotations

import math

import torch


def visible(mask: str, tq: int, tk: int, window: int = 0, sink_tokens: int = 0,
            top_left: bool = False) -> torch.Tensor:
    """[Tq, Tk] bool: which keys each query row sees (causal masks bottom-right aligned)."""
    t = torch.arange(tq)[:, None]
    j = torch.arange(tk)[None, :]
    if mask == "none":
        return torch.ones(tq, tk, dtype=torch.bool)
    diagonal = t if top_left else t + (tk - tq)
    causal = j <= diagonal
    if mask == "causal":
        return causal
    in_window = causal & (j > diagonal - window)
    if mask == "sliding_window":
        return in_window
    if mask == "streaming":
        return in_window | (causal & (j < sink_tokens))
    raise ValueError(mask)


def attention(q, k, v, *, sinks=None, gate_logits=None, mask="none", route="deduced",
              scale=None, softcap=0.0, window=0, sink_tokens=0, top_left=False, fixed_sink=None):
    """q [B, Tq, H, D], k and v [B, Tk, Hkv, D]: (out, lse, router) as sinkmoe defines them."""
    q, k, v = q.double(), k.double(), v.double()
    b, tq, h, d = q.shape
    tk, hkv = k.shape[1], k.shape[2]
    k = k.repeat_interleave(h // hkv, dim=2)
    v = v.repeat_interleave(h // hkv, dim=2)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    s = torch.einsum("bthd,bjhd->bhtj", q, k) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    seen = visible(mask, tq, tk, window, sink_tokens, top_left)[None, None]
    s = s.masked_fill(~seen, float("-inf"))
    if sinks is not None or fixed_sink is not None:
        logit = sinks.double() if sinks is not None else torch.full((h,), float(fixed_sink),
                                                                    dtype=torch.float64)
        sink_col = logit[None, :, None, None].expand(b, h, tq, 1)
    else:
        sink_col = torch.full((b, h, tq, 1), float("-inf"), dtype=torch.float64)
    full = torch.cat([s, sink_col], dim=-1)
    lse = torch.logsumexp(full, dim=-1)  # -inf for a row with no key and no sink
    empty = ~seen.any(dim=-1)  # [1, 1, Tq]
    p = torch.where(torch.isfinite(lse)[..., None], torch.exp(full - lse[..., None]),
                    torch.zeros_like(full))
    out = torch.einsum("bhtj,bjhd->bthd", p[..., :tk], v)
    if sinks is not None or fixed_sink is not None:
        sink_mass = p[..., tk]
    else:  # vanilla: the first key is the sink
        sink_mass = p[..., 0] if tk > 0 else torch.zeros(b, h, tq, dtype=torch.float64)
    g_sink = 1.0 - sink_mass
    gate_value = torch.ones(b, h, tq, dtype=torch.float64)
    if gate_logits is not None:
        gates = torch.sigmoid(gate_logits.double())  # [B, Tq, H, 1 or D]
        out = out * gates
        gate_value = gates.mean(dim=-1).permute(0, 2, 1)
    if route == "deduced":
        route = "output_gate" if gate_logits is not None else "sink_mass"
    router = {"sink_mass": g_sink, "output_gate": gate_value,
              "product": g_sink * gate_value}[route]
    router = torch.where(empty.expand_as(router), torch.zeros_like(router), router)
    return out, lse, router
