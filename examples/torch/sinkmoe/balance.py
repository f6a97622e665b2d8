"""The head-balancing loss (the paper's load-balancing loss over heads) and head metrics.

Per layer l, head importance Imp_l[h] = mean router value G over the counted query rows; the loss
is lam * sum_l n_l CV_l^2 over the balanced heads (all heads but `shared_heads` per layer, the
most important ones each step, or fixed ids). Every number comes from the C++ library
(`balance::importance_cv2`): the sums, the loss, the metrics and dL/dG. With a torch.distributed
process group the per-layer sums are all-reduced first, so every rank sees the global batch's
statistics (data parallelism).

    loss = lm_loss + sinkmoe.importance_cv2(routers, counted, lam=0.01)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from . import _ops

ops = _ops.ops


@dataclass
class LossReport:
    """What importance_cv2 measured on its last call, per layer (numpy-free: Python lists)."""
    loss: float
    layer_loss: list[float]
    cv: list[float]               # std / mean of importance over all heads
    balanced_cv: list[float]      # over the balanced heads (what the loss uses)
    effective_heads: list[float]  # (sum Imp)^2 / sum Imp^2
    tokens: list[float]           # counted rows
    importance: list[list[float]]  # [layer][head]
    shared: list[list[int]]       # heads left out of the loss
    dormant_thresholds: list[float] = field(default_factory=list)
    dormant_fraction: list[list[float]] = field(default_factory=list)  # [layer][threshold]


def _report(table: torch.Tensor, heads: int, thresholds: Sequence[float]) -> LossReport:
    rows = table.tolist()
    return LossReport(
        loss=float(sum(r[0] for r in rows)), layer_loss=[r[0] for r in rows],
        cv=[r[1] for r in rows], balanced_cv=[r[2] for r in rows],
        effective_heads=[r[3] for r in rows], tokens=[r[4] for r in rows],
        importance=[r[5:5 + heads] for r in rows],
        shared=[[h for h in range(heads) if r[5 + heads + h]] for r in rows],
        dormant_thresholds=list(thresholds),
        dormant_fraction=[r[5 + 2 * heads:] for r in rows])


def _all_reduce(sums: torch.Tensor, group) -> torch.Tensor:
    if group is None:
        return sums
    import torch.distributed as dist
    backend = dist.get_backend(group)
    # NCCL reduces device tensors only; the sums are a few doubles per layer and head.
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else "cpu"
    reduced = sums.to(device)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM, group=group)
    return reduced.cpu()


def _fixed_shared_flat(fixed_shared, layers: int) -> tuple[list[int], int]:
    if fixed_shared is None:
        return [], 0
    per_layer = len(fixed_shared[0]) if fixed_shared else 0
    if len(fixed_shared) != layers or any(len(ids) != per_layer for ids in fixed_shared):
        raise ValueError(f"sinkmoe: fixed_shared must list the same number of head ids for each "
                         f"of the {layers} layers")
    return [int(h) for ids in fixed_shared for h in ids], per_layer


class _BalanceLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cfg, counted, *routers):
        lam, shared_heads, sample_std, fixed_flat, group, grad_scale, thresholds = cfg
        host = [r.detach().cpu() for r in routers]
        host_counted = [c.cpu() for c in counted]
        sums = _all_reduce(ops.balance_sums(host, host_counted), group)
        table = ops.balance_report(sums, lam, shared_heads, sample_std, fixed_flat, thresholds)
        ctx.cfg = cfg
        ctx.state = (sums, host, host_counted, [r.device for r in routers])
        ctx.report = _report(table, routers[0].shape[1], thresholds)
        return torch.tensor(ctx.report.loss, dtype=routers[0].dtype, device=routers[0].device)

    @staticmethod
    def backward(ctx, grad_loss):
        lam, shared_heads, sample_std, fixed_flat, group, grad_scale, thresholds = ctx.cfg
        sums, host, host_counted, devices = ctx.state
        grads = ops.balance_router_grad(sums, host, host_counted, lam, shared_heads, sample_std,
                                        fixed_flat)
        scale = grad_loss * grad_scale
        return (None, None, *[(g.to(d) * scale) for g, d in zip(grads, devices)])


def importance_cv2(routers: Sequence[torch.Tensor], counted: Sequence[torch.Tensor], *,
                   lam: float, shared_heads: int = 0, fixed_shared=None, sample_std: bool = False,
                   group=None, gradient_average: bool = True,
                   dormant_thresholds: Sequence[float] = (0.1, 0.2),
                   report: list | None = None) -> torch.Tensor:
    """lam * sum_l n_l CV_l^2 of per-layer head importance; differentiable in every router.

    routers: per layer G [B, H, Tq] (AttentionOutput.router); counted: per layer [B, Tq] uint8
    (AttentionOutput.counted: padding and vanilla's sink-only queries left out).
    shared_heads: heads per layer left out of the loss, the most important ones each call, or
    the ids in fixed_shared ([layer][ids]). sample_std: CV with the n - 1 std.
    group: a torch.distributed process group whose ranks hold parts of one global batch: the
    per-layer sums are all-reduced, so the loss and dL/dG are the global batch's. With
    gradient_average (DDP's default averaging of gradients over ranks) dL/dG is scaled by the
    group size, so that the averaged gradient is the global loss's.
    report: a list that receives this call's LossReport (metrics, per layer).
    """
    if len(routers) == 0:
        raise ValueError("sinkmoe: importance_cv2 needs at least one layer")
    fixed_flat, per_layer = _fixed_shared_flat(fixed_shared, len(routers))
    if fixed_shared is not None:
        shared_heads = per_layer
    grad_scale = 1.0
    if group is not None and gradient_average:
        import torch.distributed as dist
        grad_scale = float(dist.get_world_size(group))
    cfg = (float(lam), int(shared_heads), bool(sample_std), fixed_flat, group, grad_scale,
           [float(t) for t in dormant_thresholds])
    counted = [c if c.dtype == torch.uint8 else c.to(torch.uint8) for c in counted]
    loss = _BalanceLoss.apply(cfg, list(counted), *routers)
    if report is not None:
        report.append(loss.grad_fn.report if loss.grad_fn is not None else
                      _metrics_only(routers, counted, cfg))
    return loss


def _metrics_only(routers, counted, cfg) -> LossReport:
    lam, shared_heads, sample_std, fixed_flat, group, _, thresholds = cfg
    sums = _all_reduce(ops.balance_sums([r.detach().cpu() for r in routers],
                                        [c.cpu() for c in counted]), group)
    table = ops.balance_report(sums, lam, shared_heads, sample_std, fixed_flat, thresholds)
    return _report(table, routers[0].shape[1], thresholds)


def head_metrics(routers: Sequence[torch.Tensor], counted: Sequence[torch.Tensor], *,
                 dormant_thresholds: Sequence[float] = (0.1, 0.2), group=None) -> LossReport:
    """Head importance, CV, effective and dormant heads per layer, without a loss."""
    cfg = (0.0, 0, False, [], group, 1.0, [float(t) for t in dormant_thresholds])
    counted = [c if c.dtype == torch.uint8 else c.to(torch.uint8) for c in counted]
    with torch.no_grad():
        return _metrics_only(routers, counted, cfg)


class ImportanceCV2(torch.nn.Module):
    """importance_cv2 as a module; `last_report` holds the last call's LossReport."""

    def __init__(self, lam: float, shared_heads: int = 0, fixed_shared=None,
                 sample_std: bool = False, group=None, gradient_average: bool = True):
        super().__init__()
        self.lam, self.shared_heads, self.fixed_shared = lam, shared_heads, fixed_shared
        self.sample_std, self.group, self.gradient_average = sample_std, group, gradient_average
        self.last_report: LossReport | None = None

    def forward(self, routers: Sequence[torch.Tensor], counted: Sequence[torch.Tensor]):
        reports: list[LossReport] = []
        loss = importance_cv2(routers, counted, lam=self.lam, shared_heads=self.shared_heads,
                              fixed_shared=self.fixed_shared, sample_std=self.sample_std,
                              group=self.group, gradient_average=self.gradient_average,
                              report=reports)
        self.last_report = reports[0]
        return loss


def balance_loss(collector, *, lam: float, **kwargs) -> torch.Tensor:
    """importance_cv2 over every layer a sinkmoe.hf collector gathered (see sinkmoe.hf)."""
    routers, counted = collector.layers()
    return importance_cv2(routers, counted, lam=lam, **kwargs)
