#!/usr/bin/env bash
# The torch package's tests: install what is missing (scripts/python_deps.sh), build and install
# the package from this checkout, run pytest. CUDA operators, where nvcc is found, are compiled
# with the `ci` mechanism list (a compile check; SINKMOE_TORCH_CUDA_MECHANISMS overrides it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
PYTHON=${PYTHON:-python3}
bash ../../scripts/python_deps.sh
SINKMOE_TORCH_CUDA_MECHANISMS=${SINKMOE_TORCH_CUDA_MECHANISMS:-ci} MAX_JOBS=${MAX_JOBS:-2} \
  "$PYTHON" -m pip install -q --disable-pip-version-check --no-build-isolation .
# From the tests folder, so that `import sinkmoe` finds the installed package, not this source.
cd tests
"$PYTHON" -m pytest -q -p no:cacheprovider .
