#!/usr/bin/env bash
# Static statistics of the fused CUDA kernels without a GPU: registers, spills, shared memory,
# blocks and warps per SM on H100/H200 and A100, and the main loops' instruction mix from the
# SASS (instructions per 1024 score elements, HMMA share, LDSM.x4 per HMMA, local-memory
# accesses), for sm_90a and sm_80 (bench/kernel_stats.py; docs/design.md).
#
#   bash bench/kernel_stats.sh [--arch 90a] [--out DIR]
#
# Needs nvcc and python3; cuobjdump comes from PATH or, when missing, from PyPI
# (nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm, installed into OUT/sasstools). About 30 s on
# 2 cores.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/build/kernel_stats"
arches=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --arch) arches+=(--arch "$2"); shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "kernel_stats.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v nvcc >/dev/null || { echo "kernel_stats.sh: nvcc not found" >&2; exit 1; }
cuobjdump=$(command -v cuobjdump || true)
if [[ -z "$cuobjdump" ]]; then
  tools="$out/sasstools"
  cuobjdump=$(find "$tools" -name cuobjdump -type f 2>/dev/null | head -1 || true)
  if [[ -z "$cuobjdump" ]]; then
    echo "kernel_stats.sh: installing cuobjdump and nvdisasm from PyPI into $tools"
    python3 -m pip install -q --target "$tools" nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm
    cuobjdump=$(find "$tools" -name cuobjdump -type f | head -1)
  fi
  export PATH="$(dirname "$cuobjdump"):$PATH"  # cuobjdump -sass runs nvdisasm beside it
fi
python3 "$root/bench/kernel_stats.py" --nvcc nvcc --cuobjdump "$cuobjdump" \
  --include "$root/include" --source "$root/bench/kernel_stats.cu" --out "$out" "${arches[@]}"
echo
echo "rows as JSON: $out/kernel_stats.json"
