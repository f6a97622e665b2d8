#!/usr/bin/env python3
"""PyTorch's CPU scaled_dot_product_attention on one shape of bench/host_attention's matrix.

host_attention runs this script as a child process per configuration (interleaved with its own
measurements, so that both are timed in one run on the same machine) and reads one line:

    best_ms median_ms reps peak_rss_kib 0 tensor_bytes cpu_util cpu_ms

the same fields as its own children print. Run by hand:

    python3 bench/torch_cpu_reference.py probe
    python3 bench/torch_cpu_reference.py measure forward causal 64 2048 2 5 1.0

measure DIR MASK D T THREADS MAX_REPS BUDGET_S: DIR forward or backward, MASK causal or none;
B = 1, H = 8 (Hq = Hkv), float32, q, k, v in torch's usual [B, H, T, D] layout. Times are
wall-clock over one call (forward: scaled_dot_product_attention; backward: out.backward(dout)
on a retained graph, the forward excluded), best of the repetitions after one warm-up; more
repetitions while under the budget, at most MAX_REPS. torch is optional: `probe` exits 3 with a
clear line when it cannot be imported, and host_attention then reports the column as skipped.
"""
import os
import resource
import sys
import time

BATCH, HEADS = 1, 8


def probe() -> int:
    try:
        import torch  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        print(f"torch not importable ({type(e).__name__}: {e})")
        return 3
    import torch
    print(f"torch {torch.__version__}")
    return 0


def measure(direction: str, mask: str, d: int, t: int, threads: int, max_reps: int,
            budget_s: float) -> int:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(1234 + d + t)
    shape = (BATCH, HEADS, t, d)
    backward = direction == "backward"
    q, k, v = (torch.randn(shape, generator=gen, dtype=torch.float32).requires_grad_(backward)
               for _ in range(3))
    causal = mask == "causal"

    def forward():
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    if backward:
        out = forward()
        dout = torch.randn(shape, generator=gen, dtype=torch.float32)

        def call():
            for x in (q, k, v):
                x.grad = None
            out.backward(dout, retain_graph=True)
    else:
        def call():
            with torch.no_grad():
                forward()

    call()  # warm-up: allocations, thread pool, kernel selection
    walls, cpus = [], []
    start = time.perf_counter()
    while len(walls) < max_reps and (not walls or time.perf_counter() - start < budget_s):
        c0, w0 = time.process_time(), time.perf_counter()
        call()
        w1, c1 = time.perf_counter(), time.process_time()
        walls.append(w1 - w0)
        cpus.append(c1 - c0)
    best = min(range(len(walls)), key=lambda i: walls[i])
    ordered = sorted(walls)
    median = ordered[len(ordered) // 2]
    util = cpus[best] / (walls[best] * threads) if walls[best] > 0 else 0.0
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tensor_bytes = (3 + 1 + (4 if backward else 0)) * BATCH * HEADS * t * d * 4
    print(f"{walls[best] * 1e3:.6f} {median * 1e3:.6f} {len(walls)} {rss_kib} 0 {tensor_bytes} "
          f"{util:.4f} {cpus[best] * 1e3:.6f}")
    return 0


def main(argv) -> int:
    if len(argv) >= 1 and argv[0] == "probe":
        return probe()
    if len(argv) == 8 and argv[0] == "measure":
        direction, mask = argv[1], argv[2]
        if direction not in ("forward", "backward") or mask not in ("causal", "none"):
            print(f"torch_cpu_reference: bad direction/mask {direction} {mask}", file=sys.stderr)
            return 2
        return measure(direction, mask, int(argv[3]), int(argv[4]), int(argv[5]), int(argv[6]),
                       float(argv[7]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    # One OpenMP pool of the requested size, not one per core (torch reads these at import).
    if len(sys.argv) > 6 and sys.argv[1] == "measure":
        os.environ.setdefault("OMP_NUM_THREADS", sys.argv[6])
    sys.exit(main(sys.argv[1:]))
