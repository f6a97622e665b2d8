#!/usr/bin/env python3
"""PyTorch scaled_dot_product_attention beside sinkmoe's GPU benchmark (bench/README.md).

Two subcommands:

  measure  (default) forward and backward TFLOP/s of torch's SDPA at bf16 on the shapes of
           bench/gpu_attention.cu (model width 2048: H = 2048 / D, B * T = 16k tokens,
           T in {1k, 4k, 16k}, D in {128, 64}, causal and not; layout [B, H, T, D]), for each
           fast backend torch offers (flash, efficient, cudnn through
           torch.nn.attention.sdpa_kernel; a backend that is missing or refuses a shape gives a
           "skipped" row with the reason) and "best" (the fastest that ran, per row and
           direction); plus the torch.matmul bf16 GEMM rate. One JSON object per line on stdout.
  combine  joins gpu_attention's and this script's JSON lines into the short Markdown table
           that bench/device_check.sh prints last. Needs no torch and no GPU.
  selftest checks the FLOP counts, the matrix and the combined table on made-up rows (CTest
           runs it; no torch, no GPU).

FLOPs as FlashAttention counts them (as gpu_attention.cu): forward 4*B*H*T*T*D, halved when
causal; backward 2.5x forward. Times: CUDA events around each call after warm-up, the median of
--runs calls. The forward is timed with autograd on (inputs require grad), as FlashAttention's
benchmark does, so it saves what its backward needs; the backward is torch.autograd.grad of one
retained forward graph. peak_extra_bytes: the allocator's peak during the call minus what was
allocated before it (outputs included).

Usage:
  python3 bench/sdpa_reference.py [measure] [--quick] [--runs N] [--warmup N] [--no-gemm]
  python3 bench/sdpa_reference.py combine --sinkmoe gpu_attention.jsonl --sdpa sdpa.jsonl
  python3 bench/sdpa_reference.py selftest
"""

import argparse
import json
import statistics
import sys

TOKENS = 16 * 1024  # B * T, as gpu_attention.cu
MODEL_WIDTH = 2048  # H * D


def shapes(quick):
    dims = [128] if quick else [128, 64]
    lengths = [4096] if quick else [1024, 4096, 16384]
    for d in dims:
        for t in lengths:
            for causal in (True, False):
                yield {"B": TOKENS // t, "T": t, "H": MODEL_WIDTH // d, "D": d, "causal": causal}


def attention_flops(shape, direction):
    f = 4.0 * shape["B"] * shape["H"] * shape["T"] * shape["T"] * shape["D"]
    if shape["causal"]:
        f /= 2.0
    return f if direction == "forward" else 2.5 * f


def emit(obj):
    print(json.dumps(obj), flush=True)


# --------------------------------------------------------------------------------------------
# measure
# --------------------------------------------------------------------------------------------


def time_calls(torch, call, warmup, runs):
    """Median / min / max milliseconds of `call` over `runs` calls, CUDA events per call."""
    for _ in range(warmup):
        call()
    pairs = []
    for _ in range(runs):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        stop.record()
        pairs.append((start, stop))
    torch.cuda.synchronize()
    ms = sorted(a.elapsed_time(b) for a, b in pairs)
    return statistics.median(ms), ms[0], ms[-1]


def peak_extra_bytes(torch, call):
    """Allocator peak during one call, above what was allocated before it."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = call()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del result
    return peak


def sdpa_backends(torch):
    """(name, context factory) for each fast backend this torch has; a note when none."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError as exc:  # torch < 2.3: only the default dispatch
        return [("default", None)], "torch.nn.attention.sdpa_kernel unavailable: %s" % exc
    found = []
    for name, attr in (("flash", "FLASH_ATTENTION"), ("efficient", "EFFICIENT_ATTENTION"),
                       ("cudnn", "CUDNN_ATTENTION")):
        backend = getattr(SDPBackend, attr, None)
        if backend is not None:
            found.append((name, lambda b=backend: sdpa_kernel([b])))
    return found, None


def measure_backend(torch, name, context, shape, args):
    """Forward and backward rows of one backend on one shape."""
    import contextlib
    import torch.nn.functional as F

    base = {"bench": "sdpa", "backend": name, "dtype": "bf16",
            "mask": "causal" if shape["causal"] else "none",
            "B": shape["B"], "T": shape["T"], "H": shape["H"], "D": shape["D"]}
    gen = torch.Generator(device="cuda")
    gen.manual_seed(1000 * shape["D"] + shape["T"] + int(shape["causal"]))
    dims = (shape["B"], shape["H"], shape["T"], shape["D"])

    def randn():
        return torch.randn(dims, device="cuda", dtype=torch.bfloat16, generator=gen)

    q, k, v = (randn().requires_grad_(True) for _ in range(3))
    dout = randn()
    rows = []
    ctx = context() if context is not None else contextlib.nullcontext()
    with ctx:
        def forward():
            return F.scaled_dot_product_attention(q, k, v, is_causal=shape["causal"])

        forward_ok = False
        row = dict(base, direction="forward", flops=attention_flops(shape, "forward"))
        try:
            row["peak_extra_bytes"] = peak_extra_bytes(torch, forward)
            med, lo, hi = time_calls(torch, forward, args.warmup, args.runs)
            row.update(status="ok", detail="", ms_median=med, ms_min=lo, ms_max=hi,
                       runs=args.runs, tflops=row["flops"] / (med * 1e-3) / 1e12)
            forward_ok = True
        except Exception as exc:  # a backend that refuses this shape or is not built
            row.update(status="skipped", detail=("%s: %s" % (type(exc).__name__, exc))[:300])
        rows.append(row)

        row = dict(base, direction="backward", flops=attention_flops(shape, "backward"))
        if not forward_ok:
            row.update(status="skipped", detail="the forward of this backend did not run")
        else:
            try:
                out = forward()

                def backward():
                    return torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)

                row["peak_extra_bytes"] = peak_extra_bytes(torch, backward)
                med, lo, hi = time_calls(torch, backward, args.warmup, args.runs)
                row.update(status="ok", detail="", ms_median=med, ms_min=lo, ms_max=hi,
                           runs=args.runs, tflops=row["flops"] / (med * 1e-3) / 1e12)
                del out
            except Exception as exc:
                row.update(status="skipped", detail=("%s: %s" % (type(exc).__name__, exc))[:300])
        rows.append(row)
    del q, k, v, dout
    torch.cuda.empty_cache()
    return rows


def measure_gemm(torch, args):
    size = 8192
    gen = torch.Generator(device="cuda")
    gen.manual_seed(7)
    a = torch.randn((size, size), device="cuda", dtype=torch.bfloat16, generator=gen)
    b = torch.randn((size, size), device="cuda", dtype=torch.bfloat16, generator=gen)
    med, lo, hi = time_calls(torch, lambda: torch.matmul(a, b), args.warmup, args.runs)
    emit({"bench": "gemm", "backend": "torch.matmul", "dtype": "bf16", "m": size, "n": size,
          "k": size, "status": "ok", "detail": "", "ms_median": med, "ms_min": lo, "ms_max": hi,
          "runs": args.runs, "tflops": 2.0 * size ** 3 / (med * 1e-3) / 1e12})


def measure(args):
    try:
        import torch
    except ImportError as exc:
        emit({"bench": "sdpa", "status": "error", "detail": "torch not importable: %s" % exc})
        return 1
    if not torch.cuda.is_available():
        emit({"bench": "sdpa", "status": "error", "detail": "torch sees no CUDA device"})
        return 1
    backends, note = sdpa_backends(torch)
    emit({"bench": "device", "name": torch.cuda.get_device_name(0), "torch": torch.__version__,
          "cuda": torch.version.cuda, "backends": [n for n, _ in backends],
          "note": note or ""})
    if not args.no_gemm:
        measure_gemm(torch, args)
    for shape in shapes(args.quick):
        rows = []
        for name, context in backends:
            rows.extend(measure_backend(torch, name, context, shape, args))
        for row in rows:
            emit(row)
        for direction in ("forward", "backward"):
            ran = [r for r in rows if r["direction"] == direction and r["status"] == "ok"]
            best = dict(rows[0] if direction == "forward" else rows[1], backend="best")
            best.pop("peak_extra_bytes", None)
            if ran:
                fastest = min(ran, key=lambda r: r["ms_median"])
                best.update(fastest, backend="best", best_of=fastest["backend"])
            else:
                best.update(status="skipped", detail="no SDPA backend ran this shape")
            emit(best)
    return 0


# --------------------------------------------------------------------------------------------
# combine
# --------------------------------------------------------------------------------------------


def read_jsonl(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    pass  # a truncated last line of a killed run
    return rows


def fmt(x, spec):
    return "" if x is None else format(x, spec)


def combine(args):
    ours = read_jsonl(args.sinkmoe) if args.sinkmoe else []
    theirs = read_jsonl(args.sdpa) if args.sdpa else []
    gemm = [r for r in ours + theirs if r.get("bench") == "gemm" and r.get("status") == "ok"]
    ours_gemm = [r["tflops"] for r in ours if r.get("bench") == "gemm" and r.get("status") == "ok"]
    gemm_rate = max(ours_gemm) if ours_gemm else None

    def key(r):
        return (r.get("D"), r.get("T"), r.get("mask"), r.get("direction"))

    attn = {}
    for r in ours:
        if r.get("bench") == "gpu_attention":
            attn[(r.get("backend"), r.get("policy")) + key(r)] = r
    sdpa_best = {key(r): r for r in theirs if r.get("bench") == "sdpa" and r.get("backend") == "best"}
    sdpa_flash = {key(r): r for r in theirs
                  if r.get("bench") == "sdpa" and r.get("backend") == "flash"}
    order = []
    for r in ours:
        if r.get("bench") == "gpu_attention" and r.get("backend") == "fused" \
                and r.get("policy") == "vanilla" and key(r) not in order:
            order.append(key(r))

    print("### sinkmoe fused vs PyTorch SDPA (bf16, B*T = 16k tokens, H = 2048/D)")
    print()
    print("GEMM bf16 8192^3: " + ", ".join(
        "%s %.0f TFLOP/s" % (r["backend"], r["tflops"]) for r in gemm) if gemm else
          "GEMM rate: not measured")
    print()
    print("| D | T | mask | dir | sinkmoe TFLOP/s | SDPA best TFLOP/s | sinkmoe/SDPA | "
          "sinkmoe/flash | of GEMM | sink | gated | sink+gated | unfused TFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    worst_ratio, worst_overhead = None, None
    # Targets against the flash backend (FlashAttention-2, the same mma.sync generation as ours).
    worst_flash = {"forward": None, "backward": None}
    for k in order:
        d, t, mask, direction = k
        van = attn.get(("fused", "vanilla") + k)
        sd = sdpa_best.get(k)
        ok = van is not None and van.get("status") == "ok"
        ours_tf = van["tflops"] if ok else None
        sd_tf = sd["tflops"] if sd is not None and sd.get("status") == "ok" else None
        ratio = ours_tf / sd_tf if ours_tf and sd_tf else None
        fl = sdpa_flash.get(k)
        fl_tf = fl["tflops"] if fl is not None and fl.get("status") == "ok" else None
        flash_ratio = ours_tf / fl_tf if ours_tf and fl_tf else None
        if flash_ratio is not None and d == 128 and t == 4096:
            w = worst_flash[direction]
            worst_flash[direction] = flash_ratio if w is None else min(w, flash_ratio)
        frac = ours_tf / gemm_rate if ours_tf and gemm_rate else None
        overheads = []
        for policy in ("sink", "gated", "sink+gated"):
            r = attn.get(("fused", policy) + k)
            if ok and r is not None and r.get("status") == "ok":
                o = r["ms_median"] / van["ms_median"] - 1.0
                overheads.append("%+.1f%%" % (100 * o))
                worst_overhead = o if worst_overhead is None else max(worst_overhead, o)
            else:
                overheads.append(r.get("status", "?") if r is not None else "")
        unf = attn.get(("unfused", "vanilla") + k)
        unf_tf = unf["tflops"] if unf is not None and unf.get("status") == "ok" else None
        if ratio is not None and d == 128 and t >= 4096:
            worst_ratio = ratio if worst_ratio is None else min(worst_ratio, ratio)
        sd_name = " (%s)" % sd.get("best_of") if sd is not None and sd.get("best_of") else ""
        print("| %s | %s | %s | %s | %s | %s%s | %s | %s | %s | %s | %s | %s | %s |" % (
            d, t, mask, "fwd" if direction == "forward" else "bwd",
            fmt(ours_tf, ".1f") if ok else (van or {}).get("status", "missing"),
            fmt(sd_tf, ".1f"), sd_name, fmt(ratio, ".2f"), fmt(flash_ratio, ".2f"),
            fmt(None if frac is None else 100 * frac, ".0f") + ("%" if frac else ""),
            overheads[0], overheads[1], overheads[2], fmt(unf_tf, ".1f")))
    print()
    print("Targets at D=128, T=4k: vanilla forward >= 1.0x SDPA flash (worst here: %s), "
          "backward >= 0.9x flash (worst here: %s); ratio to SDPA best at D=128, T>=4k "
          "reported (worst here: %s); sink/gate/router overhead <= 5%% over vanilla "
          "(worst here: %s)." % (
              fmt(worst_flash["forward"], ".2f") or "n/a",
              fmt(worst_flash["backward"], ".2f") or "n/a",
              fmt(worst_ratio, ".2f") or "n/a",
              "n/a" if worst_overhead is None else "%+.1f%%" % (100 * worst_overhead)))
    return 0 if order else 1


# --------------------------------------------------------------------------------------------
# selftest (no torch, no GPU): the FLOP counts, the matrix and the combined table
# --------------------------------------------------------------------------------------------


def selftest(_args):
    import io
    import os
    import tempfile
    from contextlib import redirect_stdout

    failures = []

    def expect(cond, what):
        if not cond:
            failures.append(what)

    shape = {"B": 4, "H": 16, "T": 4096, "D": 128, "causal": False}
    full = 4.0 * 4 * 16 * 4096 * 4096 * 128
    expect(attention_flops(shape, "forward") == full, "forward FLOPs")
    expect(attention_flops(dict(shape, causal=True), "forward") == full / 2, "causal halves")
    expect(attention_flops(shape, "backward") == 2.5 * full, "backward is 2.5x forward")
    matrix = list(shapes(False))
    expect(len(matrix) == 12, "12 shapes in the full matrix")
    expect(all(m["B"] * m["T"] == TOKENS and m["H"] * m["D"] == MODEL_WIDTH for m in matrix),
           "B*T and H*D fixed")
    expect(len(list(shapes(True))) == 2, "2 shapes in the quick matrix")

    row = {"D": 128, "T": 4096, "mask": "causal", "direction": "forward"}
    ours = [{"bench": "gemm", "backend": "cublas", "status": "ok", "tflops": 600.0},
            dict(row, bench="gpu_attention", backend="fused", policy="vanilla", status="ok",
                 ms_median=10.0, tflops=300.0),
            dict(row, bench="gpu_attention", backend="fused", policy="sink", status="ok",
                 ms_median=10.5, tflops=300.0 / 1.05),
            dict(row, bench="gpu_attention", backend="fused", policy="gated", status="ok",
                 ms_median=11.0, tflops=300.0 / 1.1),
            dict(row, bench="gpu_attention", backend="fused", policy="sink+gated",
                 status="skipped", detail="not built"),
            dict(row, bench="gpu_attention", backend="unfused", policy="vanilla", status="ok",
                 ms_median=30.0, tflops=100.0)]
    theirs = [dict(row, bench="sdpa", backend="best", best_of="cudnn", status="ok",
                   tflops=250.0),
              dict(row, bench="sdpa", backend="flash", status="ok", tflops=200.0)]
    with tempfile.TemporaryDirectory() as tmp:
        a, b = os.path.join(tmp, "a.jsonl"), os.path.join(tmp, "b.jsonl")
        with open(a, "w", encoding="utf-8") as f:
            f.write("\n".join(json.dumps(r) for r in ours) + '\nnot json\n{"truncated')
        with open(b, "w", encoding="utf-8") as f:
            f.write("\n".join(json.dumps(r) for r in theirs) + "\n")
        text = io.StringIO()
        with redirect_stdout(text):
            rc = combine(argparse.Namespace(sinkmoe=a, sdpa=b))
    out = text.getvalue()
    line = [l for l in out.splitlines() if l.startswith("| 128 | 4096 | causal | fwd")]
    expect(rc == 0, "combine succeeds")
    expect(len(line) == 1, "one table row for the shape")
    if line:
        cells = [c.strip() for c in line[0].strip("|").split("|")]
        expect(cells[4:] == ["300.0", "250.0 (cudnn)", "1.20", "1.50", "50%", "+5.0%", "+10.0%",
                             "skipped", "100.0"], "row cells: %s" % cells)
    expect("worst here: 1.20" in out and "worst here: +10.0%" in out, "target summary")
    expect("flash (worst here: 1.50)" in out, "forward target against flash")
    for f in failures:
        print("selftest FAILED: " + f)
    if not failures:
        print("selftest passed")
    return 1 if failures else 0


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    m = sub.add_parser("measure", help="time SDPA and torch.matmul (default)")
    c = sub.add_parser("combine", help="join gpu_attention and sdpa JSON lines into a table")
    c.add_argument("--sinkmoe", help="gpu_attention JSON lines")
    c.add_argument("--sdpa", help="this script's JSON lines")
    sub.add_parser("selftest", help="check the FLOP counts and the table (no torch, no GPU)")
    for p in (parser, m):
        # The subcommand's copies have no defaults: argparse would let them overwrite options
        # given before "measure" (e.g. "--quick measure" would run the full matrix).
        def dflt(value, p=p):
            return value if p is parser else argparse.SUPPRESS
        p.add_argument("--quick", action="store_true", default=dflt(False),
                       help="D = 128, T = 4k only")
        p.add_argument("--runs", type=int, default=dflt(10), help="timed calls per row (median)")
        p.add_argument("--warmup", type=int, default=dflt(3), help="untimed calls first")
        p.add_argument("--no-gemm", action="store_true", default=dflt(False),
                       help="skip the torch.matmul rate")
    args = parser.parse_args(argv)
    if args.command == "combine":
        return combine(args)
    if args.command == "selftest":
        return selftest(args)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")
    return measure(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
