"""The attention operator: values against the independent float64 reference, gradcheck for
every mechanism, layouts and batches, torch.compile, torch.library's opcheck, and argument
errors raised by the C++ validation."""
from __future__ import annotations

import itertools

import pytest
import torch

import sinkmoe

from reference import attention as reference

torch.manual_seed(0)

MECHANISMS = [  # (sink, gate, route)
    ("none", "none", "deduced"),
    ("learned", "none", "deduced"),
    ("fixed", "none", "deduced"),
    ("none", "headwise", "deduced"),
    ("none", "elementwise", "deduced"),
    ("learned", "elementwise", "product"),
    ("fixed", "headwise", "sink_mass"),
    ("learned", "headwise", "output_gate"),
]
MASKS = [("none", {}), ("causal", {}), ("sliding_window", {"window": 3}),
         ("streaming", {"window": 3, "sink_tokens": 2})]


def make_inputs(sink, gate, b=2, tq=7, tk=9, h=4, hkv=2, d=8, dtype=torch.float64,
                requires_grad=False, layout="bthd"):
    def rand(*shape):
        return torch.randn(*shape, dtype=dtype, requires_grad=requires_grad)
    q, k, v = rand(b, tq, h, d), rand(b, tk, hkv, d), rand(b, tk, hkv, d)
    kwargs = {}
    if sink == "learned":
        kwargs["sinks"] = torch.randn(h, dtype=dtype, requires_grad=requires_grad)
    if sink == "fixed":
        kwargs["fixed_sink"] = 0.7
    if gate != "none":
        kwargs["gate_logits"] = rand(b, tq, h, 1 if gate == "headwise" else d)
    return q, k, v, kwargs


@pytest.mark.parametrize("mechanism", MECHANISMS, ids=lambda m: "-".join(m))
@pytest.mark.parametrize("mask,mask_args", MASKS, ids=[m for m, _ in MASKS])
def test_forward_matches_reference(mechanism, mask, mask_args):
    sink, gate, route = mechanism
    q, k, v, kw = make_inputs(sink, gate)
    got = sinkmoe.attention(q, k, v, mask=mask, route=route, **mask_args, **kw)
    want = reference(q, k, v, mask=mask, route=route, **mask_args, **kw)
    for name, g, w in zip(("out", "lse", "router"), got[:3], want):
        finite = torch.isfinite(w)
        assert torch.equal(finite, torch.isfinite(g)), name
        torch.testing.assert_close(g[finite], w[finite], rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("mechanism", MECHANISMS, ids=lambda m: "-".join(m))
@pytest.mark.parametrize("mask,mask_args", MASKS, ids=[m for m, _ in MASKS])
def test_gradcheck(mechanism, mask, mask_args):
    sink, gate, route = mechanism
    # Tq = Tk keeps every row non-empty under these masks (lse finite).
    q, k, v, kw = make_inputs(sink, gate, b=1, tq=6, tk=6, h=2, hkv=1, d=4, requires_grad=True)
    tensors = [q, k, v] + [kw[n] for n in ("sinks", "gate_logits") if n in kw]
    names = [n for n in ("sinks", "gate_logits") if n in kw]

    def f(q, k, v, *extra):
        args = dict(kw, **dict(zip(names, extra)))
        r = sinkmoe.attention(q, k, v, mask=mask, route=route, **mask_args, **args)
        return r.out, r.lse, r.router

    assert torch.autograd.gradcheck(f, tuple(tensors))


def test_gradcheck_softcap_and_top_left():
    q, k, v, kw = make_inputs("learned", "none", b=1, tq=4, tk=6, h=2, hkv=2, d=4,
                              requires_grad=True)

    def f(q, k, v, sinks):
        r = sinkmoe.attention(q, k, v, sinks=sinks, mask="causal", softcap=2.0, scale=0.4)
        return r.out, r.lse, r.router

    assert torch.autograd.gradcheck(f, (q, k, v, kw["sinks"]))
    got = sinkmoe.attention(q, k, v, sinks=kw["sinks"], mask="causal", top_left=True)
    want = reference(q, k, v, sinks=kw["sinks"], mask="causal", top_left=True)
    torch.testing.assert_close(got.out, want[0], rtol=1e-12, atol=1e-12)


def test_float32_close_to_reference():
    q, k, v, kw = make_inputs("learned", "elementwise", tq=70, tk=70, d=64, dtype=torch.float32)
    got = sinkmoe.attention(q, k, v, mask="causal", **kw)
    want = reference(q, k, v, mask="causal", **kw)
    torch.testing.assert_close(got.out.double(), want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.router.double(), want[2], rtol=1e-5, atol=1e-6)


def test_bhtd_layout_is_a_view_of_the_same_computation():
    q, k, v, kw = make_inputs("learned", "headwise")
    a = sinkmoe.attention(q, k, v, mask="causal", **kw)
    # The same tensors as [B, H, T, D] views (no copy): transposed strides.
    kw_t = dict(kw, gate_logits=kw["gate_logits"].transpose(1, 2))
    b = sinkmoe.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask="causal",
                          layout="bhtd", **kw_t)
    assert b.out.shape == q.transpose(1, 2).shape
    torch.testing.assert_close(b.out.transpose(1, 2), a.out, rtol=0, atol=0)
    torch.testing.assert_close(b.router, a.router, rtol=0, atol=0)


def test_varlen_and_padding_equal_sequences_alone():
    lengths = [5, 1, 8]
    seqs = [make_inputs("learned", "none", b=1, tq=n, tk=n) for n in lengths]
    sinks = seqs[0][3]["sinks"]
    alone = [sinkmoe.attention(q, k, v, sinks=sinks, mask="causal") for q, k, v, _ in seqs]
    cu = torch.tensor([0, 5, 6, 14], dtype=torch.int32)
    packed = sinkmoe.attention(torch.cat([s[0] for s in seqs], 1),
                               torch.cat([s[1] for s in seqs], 1),
                               torch.cat([s[2] for s in seqs], 1), sinks=sinks, mask="causal",
                               cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=8, max_seqlen_k=8)
    for i, (n, r) in enumerate(zip(lengths, alone)):
        torch.testing.assert_close(packed.out[:, cu[i]:cu[i + 1]], r.out, rtol=1e-13, atol=1e-13)
    # The same sequences left-padded to 8 rows.
    for side in ("left", "right"):
        def pad(x, n):
            z = torch.full((1, 8 - n, *x.shape[2:]), float("nan"), dtype=x.dtype)
            return torch.cat([z, x] if side == "left" else [x, z], 1)
        batch = [torch.cat([pad(s[i], n) for s, n in zip(seqs, lengths)]) for i in range(3)]
        lens = torch.tensor(lengths, dtype=torch.int32)
        padded = sinkmoe.attention(*batch, sinks=sinks, mask="causal", seqlens_q=lens,
                                   seqlens_k=lens, padding_side=side)
        for i, (n, r) in enumerate(zip(lengths, alone)):
            rows = slice(8 - n, 8) if side == "left" else slice(0, n)
            torch.testing.assert_close(padded.out[i:i + 1, rows], r.out, rtol=1e-13, atol=1e-13)
        assert int(padded.counted.sum()) == sum(lengths)


def test_router_gradient_reaches_the_backward():
    """A loss on G alone moves q, k, v and the sinks (the balancing loss's path)."""
    q, k, v, kw = make_inputs("learned", "none", requires_grad=True)
    r = sinkmoe.attention(q, k, v, mask="causal", **kw)
    (r.router ** 2).sum().backward()
    assert q.grad.abs().sum() > 0 and kw["sinks"].grad.abs().sum() > 0
    want_q = torch.autograd.grad((reference(q, k, v, mask="causal", **kw)[2] ** 2).sum(), q)[0]
    torch.testing.assert_close(q.grad, want_q, rtol=1e-10, atol=1e-12)


def test_torch_compile_fullgraph():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.sinks = torch.nn.Parameter(torch.zeros(4))
            self.proj = torch.nn.Linear(32, 3 * 32)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.proj(x).view(b, t, 3, 4, 8).unbind(2)
            r = sinkmoe.attention(q, k, v, sinks=self.sinks, mask="causal")
            return r.out.sum() + r.router.mean()

    torch.manual_seed(1)
    block = Block()
    x = torch.randn(2, 10, 32)
    eager = block(x)
    compiled = torch.compile(block, fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    compiled.backward()
    assert block.sinks.grad is not None and block.proj.weight.grad.abs().sum() > 0


def test_opcheck():
    q, k, v, kw = make_inputs("learned", "elementwise", requires_grad=True)
    args = (q, k, v, kw["sinks"], kw["gate_logits"], None, None, None, None, 0, 0, "learned",
            "elementwise", "causal", "deduced", 0.0, 0.0, 0, 0, False, 0.0, False, False, False)
    torch.library.opcheck(torch.ops.sinkmoe.attention_forward, args)


# ---- Bad inputs: a Python exception naming the argument ----

def test_wrong_dtype_names_the_argument():
    q, k, v, _ = make_inputs("none", "none")
    with pytest.raises(TypeError, match="k has dtype"):
        sinkmoe.attention(q, k.float(), v)
    with pytest.raises(TypeError, match="float32 or torch.float64"):
        sinkmoe.attention(q.half(), k.half(), v.half())
    with pytest.raises(TypeError, match="sinks has dtype"):
        sinkmoe.attention(q, k, v, sinks=torch.zeros(4, dtype=torch.float32))


def test_shape_mismatch_and_strides_come_from_the_library():
    q, k, v, _ = make_inputs("none", "none")
    with pytest.raises(ValueError, match="sinkmoe: .*v"):
        sinkmoe.attention(q, k, v[:, :-1])
    strided_q = torch.randn(*q.shape[:3], 2 * q.shape[3], dtype=q.dtype)[..., ::2]
    with pytest.raises(ValueError, match="q: .*non-unit stride on the last dimension"):
        sinkmoe.attention(strided_q, k, v)
    with pytest.raises(ValueError, match="window"):
        sinkmoe.attention(q, k, v, mask="causal", window=4)  # a window the mask does not use
    with pytest.raises(ValueError, match="mask = 'diagonal'"):
        sinkmoe.attention(q, k, v, mask="diagonal")
    with pytest.raises(ValueError, match="route = 'product' reads the output gate"):
        sinkmoe.attention(q, k, v, route="product")


def test_device_mismatch_names_the_argument():
    q, k, v, _ = make_inputs("none", "none")
    with pytest.raises(ValueError, match="k is on meta, q is on cpu"):
        sinkmoe.attention(q, k.to("meta"), v)
