"""The CUDA operators (bf16 / fp16 on the fused kernels and the unfused path) against the float64
reference: run where torch sees a GPU and the package was built with nvcc; skipped otherwise.
Tolerance: FlashAttention's rule, twice the error of a naive 16-bit computation plus its
rounding term."""
from __future__ import annotations

import pytest
import torch

import sinkmoe

from reference import attention as reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def built_with_cuda() -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key("sinkmoe::attention_forward", "CUDA")


def naive16(q, k, v, dtype, **kw):
    """The reference computed from 16-bit inputs with 16-bit rounding of every output."""
    return [x.to(dtype).double() for x in reference(q.to(dtype), k.to(dtype), v.to(dtype), **kw)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mechanism", [("none", "none"), ("learned", "none"),
                                       ("none", "elementwise")])
@pytest.mark.parametrize("head_dim,backend", [(64, "auto"), (128, "auto"), (80, "unfused")])
def test_forward_and_backward_against_reference(dtype, mechanism, head_dim, backend):
    if not built_with_cuda():
        pytest.skip("the package was built without nvcc")
    sink, gate = mechanism
    torch.manual_seed(0)
    b, t, h, hkv = 2, 130, 4, 2
    q = torch.randn(b, t, h, head_dim, dtype=torch.float64)
    k, v = torch.randn(b, t, hkv, head_dim, dtype=torch.float64), torch.randn(b, t, hkv, head_dim,
                                                                             dtype=torch.float64)
    kw = {"mask": "causal"}
    if sink == "learned":
        kw["sinks"] = torch.randn(h, dtype=torch.float64)
    if gate != "none":
        kw["gate_logits"] = torch.randn(b, t, h, head_dim, dtype=torch.float64)
    want = reference(q, k, v, **kw)
    naive = naive16(q, k, v, dtype, **{n: (x.to(dtype) if n == "gate_logits" else x)
                                        for n, x in kw.items()})
    cuda_kw = {n: (x.cuda().float() if n == "sinks" else
                   x.cuda().to(dtype) if torch.is_tensor(x) else x) for n, x in kw.items()}
    qc, kc, vc = (x.cuda().to(dtype).requires_grad_() for x in (q, k, v))
    got = sinkmoe.attention(qc, kc, vc, backend=backend, **cuda_kw)
    for name, g, w, n in zip(("out", "router"), (got.out, got.router), (want[0], want[2]),
                             (naive[0], naive[2])):
        err = (g.double().cpu() - w).abs().max()
        bound = 2 * (n - w).abs().max() + 1e-3
        assert err <= bound, f"{name}: {err} > {bound}"
    got.out.float().square().sum().backward()
    assert torch.isfinite(qc.grad).all() and qc.grad.abs().sum() > 0


def test_unsupported_head_dim_names_it():
    if not built_with_cuda():
        pytest.skip("the package was built without nvcc")
    q = torch.randn(1, 8, 2, 96, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="head"):
        sinkmoe.attention(q, q, q)
