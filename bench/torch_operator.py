#!/usr/bin/env python3
"""The sinkmoe torch operator beside torch's own scaled_dot_product_attention, in one run.

    pip install --no-build-isolation ./examples/torch
    python3 bench/torch_operator.py                  # CPU, 2 threads
    python3 bench/torch_operator.py --device cuda    # the fused kernels vs SDPA's backends

CPU: float32, B = 1, H = 8, [B, H, T, D] tensors (transformers' layout), causal and not; the
forward alone and forward + backward, best of --reps after a warm-up, the two implementations
interleaved. CUDA: bf16, B*T = 16k tokens, H = 2048 / D; SDPA's flash, efficient and cudnn
backends and the best of them. Prints a Markdown table with the ratio (> 1: sinkmoe faster).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import sinkmoe


def timed(fn, reps: int, sync) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def sdpa_call(q, k, v, causal, backend=None):
    if backend is None:
        return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    from torch.nn.attention import sdpa_kernel

    def call():
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return call


def case(device, dtype, b, h, t, d, causal, reps, backends):
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(b, h, t, d, generator=g, dtype=torch.float32).to(device, dtype)
               .requires_grad_() for _ in range(3))
    dout = torch.randn(b, h, t, d, generator=g, dtype=torch.float32).to(device, dtype)
    mask = "causal" if causal else "none"

    def ours_forward():
        return sinkmoe.attention(q, k, v, mask=mask, layout="bhtd").out

    rows = []
    impls = [("sinkmoe", ours_forward)] + [(name, sdpa_call(q, k, v, causal, be))
                                           for name, be in backends]
    results = {}
    for name, forward in impls:
        fwd = timed(lambda: forward(), reps, sync)

        def train(forward=forward):
            out = forward()
            torch.autograd.grad(out, (q, k, v), dout)
        both = timed(train, reps, sync)
        results[name] = (fwd, both)
    ours = results["sinkmoe"]
    for name, (fwd, both) in results.items():
        if name == "sinkmoe":
            continue
        rows.append((f"{'causal' if causal else 'none'}", d, t, name, ours[0], fwd, fwd / ours[0],
                     ours[1], both, both / ours[1]))
    return rows


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    rows = []
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
        for causal in (True, False):
            for d, t in ((64, 2048), (128, 2048)):
                rows += case("cpu", torch.float32, 1, 8, t, d, causal, args.reps,
                             [("torch SDPA", None)])
        header = f"CPU, {args.threads} threads, float32, B = 1, H = 8, torch {torch.__version__}"
    else:
        from torch.nn.attention import SDPBackend
        backends = [("SDPA flash", SDPBackend.FLASH_ATTENTION),
                    ("SDPA efficient", SDPBackend.EFFICIENT_ATTENTION),
                    ("SDPA cudnn", SDPBackend.CUDNN_ATTENTION)]
        for causal in (True, False):
            for d, t in ((128, 4096), (64, 4096)):
                rows += case("cuda", torch.bfloat16, 16384 // t, 2048 // d, t, d, causal, args.reps,
                             backends)
        header = f"{torch.cuda.get_device_name()}, bf16, B*T = 16k, H = 2048 / D"
    print(f"## sinkmoe.attention vs scaled_dot_product_attention ({header})\n")
    print("| mask | D | T | vs | sinkmoe fwd ms | other fwd ms | ratio | sinkmoe fwd+bwd ms | "
          "other fwd+bwd ms | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.1f} | {r[5]:.1f} | {r[6]:.2f}x | "
              f"{r[7]:.1f} | {r[8]:.1f} | {r[9]:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
