"""The head-balancing loss as a torch function: value, gradient and metrics against a plain-torch
formula of the paper's loss, shared heads, and the global-batch statistics over a
torch.distributed group (two gloo processes)."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sinkmoe


def formula(routers, counted, lam, shared_heads=0, fixed_shared=None, sample_std=False):
    """lam * sum_l n_l CV_l^2 over the balanced heads, in plain torch (autograd through G)."""
    total = 0.0
    for layer, (g, c) in enumerate(zip(routers, counted)):
        w = c.to(g.dtype)[:, None, :]  # [B, 1, T]
        imp = (g * w).sum(dim=(0, 2)) / w.sum()
        if fixed_shared is not None:
            shared = set(fixed_shared[layer])
        else:
            order = sorted(range(len(imp)), key=lambda h: (-float(imp[h].detach()), h))
            shared = set(order[:shared_heads])
        balanced = imp[[h for h in range(len(imp)) if h not in shared]]
        n = balanced.numel()
        var = ((balanced - balanced.mean()) ** 2).sum() / (n - 1 if sample_std else n)
        total = total + lam * n * var / balanced.mean() ** 2
    return total


def layers(n_layers=3, b=2, h=6, t=10, dtype=torch.float64):
    torch.manual_seed(3)
    routers = [torch.rand(b, h, t, dtype=dtype, requires_grad=True) for _ in range(n_layers)]
    counted = [(torch.rand(b, t) > 0.2).to(torch.uint8) for _ in range(n_layers)]
    return routers, counted


@pytest.mark.parametrize("options", [dict(), dict(shared_heads=2), dict(sample_std=True),
                                     dict(fixed_shared=[[0], [3], [5]])],
                         ids=["plain", "shared2", "sample_std", "fixed"])
def test_loss_and_gradient_match_the_formula(options):
    routers, counted = layers()
    loss = sinkmoe.importance_cv2(routers, counted, lam=0.3, **options)
    grads = torch.autograd.grad(loss, routers)
    fresh = [r.detach().clone().requires_grad_() for r in routers]
    want = formula(fresh, counted, 0.3, **options)
    want_grads = torch.autograd.grad(want, fresh)
    assert abs(loss.item() - want.item()) <= 1e-12 * max(1.0, abs(want.item()))
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-14)


def test_module_report_and_metrics():
    routers, counted = layers()
    module = sinkmoe.ImportanceCV2(lam=0.1, shared_heads=1)
    loss = module(routers, counted)
    rep = module.last_report
    assert rep.loss == pytest.approx(loss.item(), rel=1e-12)
    assert len(rep.importance) == 3 and len(rep.importance[0]) == 6
    assert all(len(s) == 1 for s in rep.shared)
    imp = torch.tensor(rep.importance[0], dtype=torch.float64)
    assert rep.effective_heads[0] == pytest.approx(float(imp.sum() ** 2 / (imp ** 2).sum()))
    metrics = sinkmoe.head_metrics(routers, counted, dormant_thresholds=(0.45, 0.6))
    assert metrics.dormant_fraction[0] == [float((imp < 0.45).double().mean()),
                                           float((imp < 0.6).double().mean())]


def test_float32_routers_and_the_attention_path():
    """G from the attention operator, the loss on it, and the gradient into q, k, v."""
    torch.manual_seed(4)
    q = torch.randn(2, 12, 4, 8, requires_grad=True)
    k, v = torch.randn(2, 12, 2, 8), torch.randn(2, 12, 2, 8)
    r = sinkmoe.attention(q, k, v, mask="causal")
    loss = sinkmoe.importance_cv2([r.router], [r.counted], lam=1.0)
    want = formula([r.router.double()], [r.counted], 1.0)
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    loss.backward()
    assert q.grad.abs().sum() > 0
    # Vanilla causal: the first query sees only the sink and is not counted.
    assert int(r.counted[:, 0].sum()) == 0 and int(r.counted[:, 1:].sum()) == 2 * 11


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world, port, result_file):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    routers, counted = layers(b=4)
    half = slice(2 * rank, 2 * rank + 2)
    mine = [r.detach()[half].clone().requires_grad_() for r in routers]
    loss = sinkmoe.importance_cv2(mine, [c[half] for c in counted], lam=0.2, shared_heads=1,
                                  group=dist.group.WORLD)
    grads = torch.autograd.grad(loss, mine)
    torch.save({"loss": loss.item(), "grads": [g for g in grads]}, f"{result_file}.{rank}")
    dist.destroy_process_group()


def test_distributed_group_gives_the_global_batch(tmp_path):
    """Two ranks holding halves of a batch get the whole batch's loss, and (DDP averaging their
    gradients) the whole batch's gradient."""
    result = str(tmp_path / "rank")
    mp.spawn(_rank_main, args=(2, _free_port(), result), nprocs=2, join=True)
    parts = [torch.load(f"{result}.{rank}") for rank in range(2)]
    routers, counted = layers(b=4)
    whole = sinkmoe.importance_cv2(routers, counted, lam=0.2, shared_heads=1)
    whole_grads = torch.autograd.grad(whole, routers)
    for rank, part in enumerate(parts):
        assert part["loss"] == pytest.approx(whole.item(), rel=1e-12)
        for g, w in zip(part["grads"], whole_grads):
            # gradient_average: each rank's dL/dG is scaled by the world size (2), so that DDP's
            # average over ranks gives the global loss's gradient.
            torch.testing.assert_close(g / 2, w[2 * rank:2 * rank + 2], rtol=1e-12, atol=1e-15)
