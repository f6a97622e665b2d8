"""The operators' Python half: fake (meta) kernels for torch.compile and the autograd formula.

The C++ library registers `torch.ops.sinkmoe.*` (csrc/ops.cpp); this module adds what torch needs
to trace them (shapes, dtypes and strides without computing) and to differentiate
attention_forward: its backward is attention_backward, fed with the gradients of out, lse and the
router values G (so a loss on G reaches the attention backward, as the C++ API's drouter does).
first_key_mass and the counted mask are not differentiable.
"""
from __future__ import annotations

import torch

from . import _C  # noqa: F401  (loads the library, which registers the operators)

ops = torch.ops.sinkmoe

# Positions of the tensor arguments of attention_forward (the rest are the batch layout's
# integers and the configuration).
_FORWARD_TENSORS = ("q", "k", "v", "sinks", "gate_logits", "cu_seqlens_q", "cu_seqlens_k",
                    "seqlens_q", "seqlens_k")
_CONFIG = ("max_seqlen_q", "max_seqlen_k", "sink", "gate", "mask", "route", "scale", "softcap",
           "window", "sink_tokens", "top_left", "fixed_sink", "left_padding", "bhtd", "unfused")


def _accum(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _row_stats(q: torch.Tensor, bhtd: bool) -> torch.Tensor:
    b, t, h = q.shape[0], q.shape[2 if bhtd else 1], q.shape[1 if bhtd else 2]
    return q.new_empty((b, h, t), dtype=_accum(q.dtype))


def _check_devices(q, **tensors):
    """The C++ kernels' device check, for calls that reach the fake kernel (a meta tensor among
    real ones, or tracing)."""
    for name, t in tensors.items():
        if t is not None and t.device != q.device:
            raise ValueError(f"sinkmoe: {name} is on {t.device}, q is on {q.device}")


@torch.library.register_fake("sinkmoe::attention_forward")
def _forward_fake(q, k, v, sinks, gate_logits, cu_seqlens_q, cu_seqlens_k, seqlens_q, seqlens_k,
                  max_seqlen_q, max_seqlen_k, sink, gate, mask, route, scale, softcap, window,
                  sink_tokens, top_left, fixed_sink, left_padding, bhtd, unfused):
    _check_devices(q, k=k, v=v, sinks=sinks, gate_logits=gate_logits)
    lse = _row_stats(q, bhtd)
    counted = q.new_empty((lse.shape[0], lse.shape[2]), dtype=torch.uint8)
    return torch.empty_like(q), lse, torch.empty_like(lse), torch.empty_like(lse), counted


@torch.library.register_fake("sinkmoe::attention_backward")
def _backward_fake(dout, dlse, drouter, q, k, v, sinks, gate_logits, out, lse, cu_seqlens_q,
                   cu_seqlens_k, seqlens_q, seqlens_k, max_seqlen_q, max_seqlen_k, sink, gate,
                   mask, route, scale, softcap, window, sink_tokens, top_left, fixed_sink,
                   left_padding, bhtd, unfused):
    _check_devices(q, dout=dout, k=k, v=v, sinks=sinks, gate_logits=gate_logits, out=out)
    dsinks = torch.empty_like(sinks) if (sink == "learned" and sinks is not None) \
        else q.new_empty((0,))
    dgate = torch.empty_like(gate_logits) if (gate != "none" and gate_logits is not None) \
        else q.new_empty((0,))
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dsinks, dgate


@torch.library.register_fake("sinkmoe::balance_sums")
def _sums_fake(routers, counted):
    return routers[0].new_empty((len(routers), routers[0].shape[1] + 1), dtype=torch.float64,
                                device="cpu")


@torch.library.register_fake("sinkmoe::balance_report")
def _report_fake(sums, lam, shared_heads, sample_std, fixed_shared, thresholds):
    heads = sums.shape[1] - 1
    return sums.new_empty((sums.shape[0], 5 + 2 * heads + len(thresholds)), device="cpu")


@torch.library.register_fake("sinkmoe::balance_router_grad")
def _router_grad_fake(sums, routers, counted, lam, shared_heads, sample_std, fixed_shared):
    return [torch.empty_like(r) for r in routers]


def _setup_context(ctx, inputs, output):
    out, lse, router, first_key_mass, counted = output
    tensors = inputs[:len(_FORWARD_TENSORS)]
    ctx.config = inputs[len(_FORWARD_TENSORS):]
    ctx.save_for_backward(*tensors, out, lse)
    ctx.mark_non_differentiable(first_key_mass, counted)


def _backward(ctx, grad_out, grad_lse, grad_router, grad_first_key_mass, grad_counted):
    q, k, v, sinks, gate_logits, cu_q, cu_k, len_q, len_k, out, lse = ctx.saved_tensors
    # Incoming gradients may be broadcast views (zero strides, e.g. from a sum): make them
    # dense, as the kernels read them by strides with a contiguous head dim.
    grad_out = torch.zeros_like(out) if grad_out is None else grad_out.contiguous()
    grad_lse = None if grad_lse is None else grad_lse.contiguous()
    grad_router = None if grad_router is None else grad_router.contiguous()
    dq, dk, dv, dsinks, dgate = ops.attention_backward(
        grad_out, grad_lse, grad_router, q, k, v, sinks, gate_logits, out, lse, cu_q, cu_k,
        len_q, len_k, *ctx.config)
    grads = [dq, dk, dv, dsinks if sinks is not None and dsinks.numel() else None,
             dgate if gate_logits is not None and dgate.numel() else None]
    return (*grads, *([None] * (len(_FORWARD_TENSORS) - 5 + len(_CONFIG))))


torch.library.register_autograd("sinkmoe::attention_forward", _backward,
                                setup_context=_setup_context)
