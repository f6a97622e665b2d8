#!/usr/bin/env python3
"""Static statistics of the fused kernels, without a GPU (bench/kernel_stats.sh runs this).

For each architecture: compiles bench/kernel_stats.cu with nvcc (-Xptxas -v), runs it for the
kernels' metadata (type, dynamic shared memory, score elements per loop iteration), reads
registers and spills from ptxas, and the SASS (cuobjdump) for the main loop's instruction mix.
Prints a Markdown table per architecture and writes every row as JSON.

The main loop is the backward branch whose body holds the most HMMA. Its "interior path" is the
path through the body (forward branches) that executes the most key operations (HMMA, LDSM,
LDGSTS, barriers) and among those the fewest instructions: it leaves out the
per-element masking of boundary and partial tiles and the key-0 term, which an interior tile
does not execute, and keeps every copy and product. Counts are per warp and loop iteration, and per 1024 score
elements (one iteration covers `elements`: rows x keys of the warp's tile).
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys

# Per-SM resources: registers, shared memory (bytes), the per-block opt-in limit, warps, the
# shared memory reserved per block.
DEVICES = {
    "H100/H200": {"regs": 65536, "smem": 228 * 1024, "smem_block": 227 * 1024, "warps": 64,
                  "reserved": 1024},
    "A100": {"regs": 65536, "smem": 164 * 1024, "smem_block": 163 * 1024, "warps": 64,
             "reserved": 1024},
}

INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
KEY_OPS = ("HMMA", "LDSM", "LDGSTS", "BAR")


def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True,
                         check=True).stdout.split("\n")
    return dict(zip(names, out))


def parse_ptxas(text):
    """{mangled: {"registers": n, "spill_stores": n, "spill_loads": n, "stack": n}}"""
    info, current = {}, None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'|Function properties for (\S+)", line)
        if m:
            current = m.group(1) or m.group(2)
            info.setdefault(current, {})
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                      line)
        if m:
            info[current].update(stack=int(m.group(1)), spill_stores=int(m.group(2)),
                                 spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            info[current]["registers"] = int(m.group(1))
    return info


def parse_sass(text):
    kernels, name = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            name = m.group(1)
            kernels[name] = []
            continue
        m = INSN.search(line)
        if m and name:
            kernels[name].append((int(m.group(1), 16), m.group(3), m.group(4).strip(),
                                  bool(m.group(2))))
    return kernels


def interior_path(body):
    """Indices of the loop body's interior-tile path: over the body's forward branches (backward
    branches of inner loops taken as not repeating), the path that executes the most key
    operations (tile products, ldmatrix, async copies, barriers) and, among those,
    the fewest instructions: the per-element masking of boundary tiles and the key-0 term are
    side paths an interior tile skips; the copies and products are not."""
    pos = {a: k for k, (a, *_) in enumerate(body)}
    n = len(body)
    best = [None] * (n + 1)  # (key ops, -instructions, predecessor)
    best[0] = (0, 0, None)
    for k in range(n):
        if best[k] is None:
            continue
        addr, op, args, predicated = body[k]
        key = 1 if op.startswith(KEY_OPS) else 0
        here = (best[k][0] + key, best[k][1] - 1, k)
        succ = []
        if op.startswith("BRA") and k < n - 1:
            m = re.search(r"0x([0-9a-f]+)", args)
            target = int(m.group(1), 16) if m else -1
            if target > addr and target in pos:
                succ.append(pos[target])
            if predicated or not succ:
                succ.append(k + 1)
        else:
            succ.append(k + 1)
        for t in succ:
            if best[t] is None or here[:2] > best[t][:2]:
                best[t] = here
    path, k = [], n
    while best[k] is not None and best[k][2] is not None:
        k = best[k][2]
        path.append(k)
    return sorted(path)


def loop_stats(insns):
    index = {a: i for i, (a, *_) in enumerate(insns)}
    best = None
    for i, (addr, op, args, _) in enumerate(insns):
        m = re.search(r"0x([0-9a-f]+)", args) if op.startswith("BRA") else None
        if not m:
            continue
        target = int(m.group(1), 16)
        if target >= addr or target not in index:
            continue
        body = insns[index[target]: i + 1]
        hmma = sum(1 for _, o, *_ in body if o.startswith("HMMA"))
        if best is None or hmma > best[0] or (hmma == best[0] and len(body) > len(best[1])):
            best = (hmma, body)
    if best is None or best[0] == 0:
        return None
    body = best[1]
    interior = [body[k] for k in interior_path(body)]
    count = lambda pred: sum(1 for _, o, _, _ in interior if pred(o))
    return {
        "loop_all_paths": len(body),
        "loop": len(interior),
        "hmma": count(lambda o: o.startswith("HMMA")),
        "ldsm_x4": count(lambda o: o.startswith("LDSM") and o.endswith(".4")),
        "ldsm": count(lambda o: o.startswith("LDSM")),
        "mufu": count(lambda o: o.startswith("MUFU")),
        "branches": count(lambda o: o.startswith(("BRA", "BSSY"))),
        "local": count(lambda o: o.startswith(("LDL", "STL"))),
        "bar": count(lambda o: o.startswith("BAR")),
    }


def blocks_per_sm(device, registers, smem, warps):
    d = DEVICES[device]
    regs_per_warp = math.ceil(registers * 32 / 256) * 256
    by_regs = d["regs"] // (regs_per_warp * warps) if registers else 99
    by_smem = d["smem"] // (smem + d["reserved"]) if smem <= d["smem_block"] else 0
    by_warps = d["warps"] // warps
    return min(by_regs, by_smem, by_warps, 32)


def measure(args, arch):
    exe = os.path.join(args.out, f"kernel_stats_{arch}")
    compile_cmd = [args.nvcc, "-std=c++20", "-O3", "-I", args.include, f"-gencode",
                   f"arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v", "-o", exe, args.source]
    done = subprocess.run(compile_cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"kernel_stats: nvcc failed for sm_{arch}:\n{done.stderr[-4000:]}")
    ptxas = parse_ptxas(done.stderr)
    meta = [json.loads(l) for l in subprocess.run([exe], capture_output=True, text=True,
                                                  check=True).stdout.splitlines() if l.strip()]
    sass = parse_sass(subprocess.run([args.cuobjdump, "-sass", exe], capture_output=True,
                                     text=True, check=True).stdout)
    names = demangle(sorted(set(ptxas) | set(sass)))
    rows = []
    for k in meta:
        matches = [m for m, d in names.items() if k["type"] in d]
        if not matches:
            sys.exit(f"kernel_stats: no compiled entry for {k['type']}")
        mangled = matches[0]
        p = ptxas.get(mangled, {})
        loop = loop_stats(sass.get(mangled, [])) if mangled in sass else None
        row = {"arch": arch, **{x: k[x] for x in ("role", "policy", "head_dim", "smem_bytes",
                                                   "warps", "elements")},
               "registers": p.get("registers"), "spill_stores": p.get("spill_stores", 0),
               "spill_loads": p.get("spill_loads", 0)}
        for device in DEVICES:
            row[device] = blocks_per_sm(device, row["registers"] or 0, row["smem_bytes"],
                                        row["warps"])
        if loop and k["elements"]:
            row.update(loop)
            row["per_1024"] = round(loop["loop"] * 1024 / k["elements"])
            row["ldsm_x4_per_hmma"] = round(loop["ldsm_x4"] / loop["hmma"], 3)
        rows.append(row)
    return rows


def table(rows):
    lines = ["| kernel | policy | D | regs | spill st/ld (B) | smem/block | H100 blocks (warps) "
             "| A100 blocks (warps) | loop instr / 1024 elems | HMMA share | LDSM.x4 per HMMA "
             "| local in loop |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        loop = "per_1024" in r
        lines.append(
            f"| {r['role']} | {r['policy']} | {r['head_dim']} | {r['registers']} | "
            f"{r['spill_stores']}/{r['spill_loads']} | {r['smem_bytes'] / 1024:.1f} KiB | "
            f"{r['H100/H200']} ({r['H100/H200'] * r['warps']}) | {r['A100']} ({r['A100'] * r['warps']}) | "
            + (f"{r['per_1024']} | {r['hmma'] / r['loop']:.2f} | {r['ldsm_x4_per_hmma']} | {r['local']} |"
               if loop else "- | - | - | - |"))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nvcc", default="nvcc")
    ap.add_argument("--cuobjdump", default="cuobjdump")
    ap.add_argument("--include", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--arch", action="append", default=[])
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    all_rows = []
    for arch in args.arch or ["90a", "80"]:
        rows = measure(args, arch)
        all_rows += rows
        print(f"\n### sm_{arch}\n")
        print(table(rows))
    with open(os.path.join(args.out, "kernel_stats.json"), "w") as f:
        for r in all_rows:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
