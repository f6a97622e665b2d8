#!/usr/bin/env bash
# Installs, only when missing, what a fresh Debian 12 machine needs to build and run the sinkmoe
# tests: cmake, ninja, g++ (with libgomp for OpenMP), Boost.Test and Boost.Context, and Open MPI
# (the distributed-balancing tests and examples; mpiexec wants an ssh client even on one node).
# Idempotent and quiet when there is nothing to do. Runs as root, or through sudo when available.
set -euo pipefail

missing=()

have_lib() {  # have_lib <libname.so>: true if the shared library's dev symlink exists
  local d
  for d in /usr/lib /usr/lib64 /usr/lib/*-linux-gnu /usr/local/lib; do
    [[ -e "$d/$1" ]] && return 0
  done
  return 1
}

command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v ninja >/dev/null 2>&1 || missing+=(ninja-build)
command -v g++ >/dev/null 2>&1 || missing+=(g++)   # libgomp (OpenMP) comes with it
if [[ ! -f /usr/include/boost/test/unit_test.hpp ]] || ! have_lib libboost_unit_test_framework.so; then
  missing+=(libboost-test-dev)
fi
if [[ ! -f /usr/include/boost/context/fiber.hpp ]] || ! have_lib libboost_context.so; then
  missing+=(libboost-context-dev)
fi

if ! command -v mpicxx >/dev/null 2>&1 || ! command -v mpiexec >/dev/null 2>&1; then
  missing+=(libopenmpi-dev openmpi-bin)
fi
command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)

cmake_is_recent() {  # cmake >= 3.25 (Debian 12 ships 3.25.1)
  local v
  v=$(cmake --version 2>/dev/null | sed -n 's/^cmake version \([0-9]*\.[0-9]*\).*/\1/p')
  [[ -n "$v" ]] && printf '3.25\n%s\n' "$v" | sort -V -C
}

if [[ ${#missing[@]} -eq 0 ]]; then
  if ! cmake_is_recent; then
    echo "deps.sh: sinkmoe needs cmake >= 3.25 (found $(cmake --version | head -1))" >&2
    exit 1
  fi
  exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "deps.sh: missing ${missing[*]}, and not root with no sudo; install them and rerun" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "deps.sh: missing ${missing[*]}, and apt-get is not available; install them and rerun" >&2
  exit 1
fi

echo "deps.sh: installing ${missing[*]}"
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends "${missing[@]}"

if ! cmake_is_recent; then
  echo "deps.sh: sinkmoe needs cmake >= 3.25 (found $(cmake --version | head -1))" >&2
  exit 1
fi
