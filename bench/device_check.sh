#!/usr/bin/env bash
# bench/device_check.sh: the one script for a machine with an NVIDIA GPU (see
# bench/README.md). From the repository root:
#
#   bash bench/device_check.sh [--quick] [--dry-run] [--only STEPS] [--skip STEPS] [--jobs N]
#                              [--build-dir DIR] [--budget SECONDS]
#
# Steps, each timed and under its own `timeout` (never longer than what is left of the whole
# budget, 470 s by default: the issue asks for under 8 minutes):
#   probe      GPU, driver, toolkit and torch versions (informative; never fails the run)
#   configure  CMake for sm_90a (CMAKE_CUDA_ARCHITECTURES=90a), Release, tests and benchmarks on;
#              when that fails (e.g. no Boost.Test on the machine), the benchmarks alone, so the
#              timing steps still run (the step is still reported as failed)
#   build      only the targets needed: test_fused_gpu, test_blaslt_gpu, test_unfused_gpu,
#              test_balance_nccl (the
#              ones that exist) and gpu_attention, with -j$(nproc)
#   gpu-tests  ctest -L gpu
#   memcheck   compute-sanitizer --tool memcheck  test_fused_gpu --run_test=sanitizer_case
#   racecheck  compute-sanitizer --tool racecheck test_fused_gpu --run_test=sanitizer_case
#   bench      build/.../gpu_attention --check (C++: fused, and unfused when built)
#   sdpa       python3 bench/sdpa_reference.py measure (PyTorch SDPA and torch.matmul)
#   combine    the short table (sinkmoe vs SDPA best, fraction of GEMM, sink/gate overhead),
#              printed LAST
# A failed step does not stop the run; the exit status is non-zero when any step failed.
# Nothing is installed and nothing needs the network. Results go to $OUT when set (the device
# tool collects it: at most 8 files come back, so there are 5), else to bench/out/:
#   device_check.log (every step's full output), steps.tsv, gpu_attention.jsonl, sdpa.jsonl,
#   combined.md
#
# Options:
#   --quick          short benchmark matrix (D = 128, T = 4k) in both benchmarks
#   --dry-run        print the plan (steps, commands, timeouts) and exit; runs nothing
#   --only a,b       run only these steps;  --skip a,b  run all but these
#   --jobs N         parallel build jobs (default: nproc)
#   --build-dir DIR  build directory (default build/device-check)
#   --targets a,b    build targets (default: test_fused_gpu,test_blaslt_gpu,test_unfused_gpu,
#                    test_balance_nccl,gpu_attention; those that do not exist are left out)
#   --budget S       total seconds for all steps (default 470)
#   --boost-archive F  Boost for the tests from an archive made by --stage-boost, unpacked under
#                    /tmp (default: .devdeps/boost.tar.gz when it exists and BOOST_ROOT is unset)
#   --stage-boost F  (run on a machine WITH Boost, e.g. the build machine) pack its Boost headers
#                    and the unit_test_framework / context libraries into the archive F, for a GPU
#                    machine without Boost: put F under .devdeps/ (add /.devdeps/ to
#                    .git/info/exclude) and name .devdeps in the device tool's carry
# Environment: BOOST_ROOT (passed to CMake as Boost_ROOT when set), CUDAARCHS is ignored.
set -u -o pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root" || exit 2

all_steps=(probe configure build gpu-tests memcheck racecheck bench sdpa combine)
quick=0
dry_run=0
only=""
skip=""
jobs=$(nproc 2>/dev/null || echo 2)
build_dir="build/device-check"
wanted_targets=(test_fused_gpu test_blaslt_gpu test_unfused_gpu test_balance_nccl gpu_attention)
budget=470
boost_archive=""
stage_boost=""

usage() { sed -n '2,45p' "$0" | sed 's/^# \{0,1\}//'; }

while (($# > 0)); do
  case "$1" in
    --quick) quick=1 ;;
    --dry-run) dry_run=1 ;;
    --only) only=${2:?--only needs a list of steps}; shift ;;
    --skip) skip=${2:?--skip needs a list of steps}; shift ;;
    --jobs) jobs=${2:?--jobs needs a number}; shift ;;
    --build-dir) build_dir=${2:?--build-dir needs a directory}; shift ;;
    --targets) IFS=, read -r -a wanted_targets <<<"${2:?--targets needs a list}"; shift ;;
    --budget) budget=${2:?--budget needs seconds}; shift ;;
    --boost-archive) boost_archive=${2:?--boost-archive needs a file}; shift ;;
    --stage-boost) stage_boost=${2:?--stage-boost needs a file}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "device_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

for number in "$jobs" "$budget"; do
  [[ "$number" =~ ^[1-9][0-9]*$ ]] || { echo "device_check: '$number' is not a positive integer" >&2; exit 2; }
done
for list in "$only" "$skip"; do
  for s in ${list//,/ }; do
    [[ " ${all_steps[*]} " == *" $s "* ]] || { echo "device_check: unknown step '$s' (steps: ${all_steps[*]})" >&2; exit 2; }
  done
done

# ---- --stage-boost: pack this machine's Boost for a GPU machine that lacks it ----------------
if [[ -n "$stage_boost" ]]; then
  boost_headers=""
  for d in /usr/include /usr/local/include; do
    [[ -f "$d/boost/version.hpp" ]] && boost_headers=$d && break
  done
  boost_libs=""
  for d in /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib /usr/local/lib; do
    compgen -G "$d/libboost_unit_test_framework.so*" >/dev/null && boost_libs=$d && break
  done
  if [[ -z "$boost_headers" || -z "$boost_libs" ]]; then
    echo "device_check: no Boost headers or libboost_unit_test_framework.so here to stage" >&2
    exit 2
  fi
  staging=$(mktemp -d) || exit 2
  mkdir -p "$staging/include" "$staging/lib"
  cp -a "$boost_headers/boost" "$staging/include/" &&
    cp -a "$boost_libs"/libboost_unit_test_framework.so* "$staging/lib/" &&
    { cp -a "$boost_libs"/libboost_context.so* "$staging/lib/" 2>/dev/null || true; } &&
    mkdir -p "$(dirname "$stage_boost")" &&
    tar -C "$staging" -czf "$stage_boost" include lib
  rc=$?
  rm -rf "$staging"
  ((rc == 0)) || { echo "device_check: staging Boost failed" >&2; exit 2; }
  echo "device_check: staged Boost ($boost_headers/boost, $boost_libs) into $stage_boost ($(du -h "$stage_boost" | cut -f1))"
  exit 0
fi

out_dir=${OUT:-$repo_root/bench/out}
log="$out_dir/device_check.log"
steps_file="$out_dir/steps.tsv"
bench_json="$out_dir/gpu_attention.jsonl"
sdpa_json="$out_dir/sdpa.jsonl"
combined="$out_dir/combined.md"
quick_flag=()
((quick)) && quick_flag=(--quick)

start_time=$SECONDS
failed_steps=()

wanted() { # wanted STEP: is the step selected by --only / --skip?
  local s=$1
  if [[ -n "$only" && ",$only," != *",$s,"* ]]; then return 1; fi
  if [[ -n "$skip" && ",$skip," == *",$s,"* ]]; then return 1; fi
  return 0
}

record() { # record STEP STATUS SECONDS NOTE
  [[ "$2" == ok || "$2" == info ]] || failed_steps+=("$1")
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$steps_file"
  printf '[device_check] %-10s %-8s %4ss  %s\n' "$1" "$2" "$3" "$4"
}

# run_step STEP LIMIT [STDOUT_FILE] -- COMMAND...   runs COMMAND under `timeout`, its output
# appended to the log (stdout to STDOUT_FILE instead when given); prints one status line and,
# on failure, the last lines of the output.
run_step() {
  local step=$1 limit=$2 stdout_file=""
  shift 2
  if [[ "$1" != "--" ]]; then stdout_file=$1; shift; fi
  shift  # --
  local elapsed=$((SECONDS - start_time))
  local left=$((budget - elapsed))
  ((limit > left)) && limit=$left
  if ((dry_run)); then
    printf '  %-10s timeout %4ss  %s%s\n' "$step" "$limit" "$*" "${stdout_file:+ > $stdout_file}"
    return 0
  fi
  if ((limit < 5)); then
    record "$step" failed 0 "out of time: ${elapsed}s of the ${budget}s budget used"
    return 1
  fi
  printf '\n===== %s (timeout %ss): %s\n' "$step" "$limit" "$*" >>"$log"
  local t0=$SECONDS rc first_line
  first_line=$(($(wc -l <"$log") + 1))
  if [[ -n "$stdout_file" ]]; then
    timeout --kill-after=10 "$limit" "$@" >"$stdout_file" 2>>"$log"
    rc=$?
    cat "$stdout_file" >>"$log"
  else
    timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
    rc=$?
  fi
  local took=$((SECONDS - t0))
  if ((rc == 0)); then
    record "$step" ok "$took" ""
    return 0
  fi
  local why="exit status $rc"
  ((rc == 124 || rc == 137)) && why="timed out after ${limit}s"
  record "$step" failed "$took" "$why (full output in device_check.log)"
  printf -- '----- last lines of %s:\n' "$step"
  tail -n "+$first_line" "$log" | tail -n 25 | sed 's/^/    /'
  return 1
}

skip_step() { # skip_step STEP REASON: not run because of an earlier failure or a missing part
  if ((dry_run)); then
    printf '  %-10s (skipped: %s)\n' "$1" "$2"
    return
  fi
  record "$1" failed 0 "not run: $2"
}

find_executable() { # find_executable NAME: the built executable NAME under the build directory
  find "$build_dir" -type f -name "$1" -perm -u+x 2>/dev/null | head -n 1
}

if ((dry_run)); then
  echo "device_check plan (dry run; budget ${budget}s, jobs $jobs, build dir $build_dir, results in $out_dir)."
  echo "Each step's timeout is also capped by what is left of the budget when it starts."
else
  mkdir -p "$out_dir" || exit 2
  : >"$log"
  printf 'step\tstatus\tseconds\tnote\n' >"$steps_file"
  rm -f "$bench_json" "$sdpa_json" "$combined"
  echo "[device_check] results in $out_dir; budget ${budget}s"
fi

# ---- probe ----------------------------------------------------------------------------------
# Informative only: what this machine has. Its failure does not fail the check.
if wanted probe; then
  # shellcheck disable=SC2016  # expanded by the inner bash, on purpose
  probe_script='
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
    command -v nvcc && nvcc --version | tail -n 2
    cmake --version | head -n 1
    command -v ninja && ninja --version
    command -v compute-sanitizer && compute-sanitizer --version | head -n 2
    python3 -c "import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name(0))"
    echo "nproc $(nproc)"'
  if ((dry_run)); then
    printf '  %-10s timeout %4ss  %s\n' probe 30 "nvidia-smi, nvcc, cmake, ninja, compute-sanitizer, torch versions"
  else
    printf '\n===== probe\n' >>"$log"
    t0=$SECONDS
    timeout --kill-after=5 30 bash -c "$probe_script" >>"$log" 2>&1
    probe_rc=$?
    record probe info $((SECONDS - t0)) "exit status $probe_rc (informative; see device_check.log)"
    grep -E '^(NVIDIA|name|torch|Cuda compilation|cmake version)' "$log" | sed 's/^/    /'
  fi
fi

# ---- configure ------------------------------------------------------------------------------
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
cmake_common=(-S . -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release
  -DCMAKE_CUDA_ARCHITECTURES=90a -DSINKMOE_ENABLE_CUDA=ON -DSINKMOE_BUILD_EXAMPLES=OFF
  -DSINKMOE_BUILD_BENCH=ON -DSINKMOE_BENCH_UNFUSED=ON)
# Boost for the tests: BOOST_ROOT, else an archive staged by --stage-boost (unpacked under /tmp;
# only that copy is searched, so headers and libraries match).
[[ -z "$boost_archive" && -z "${BOOST_ROOT:-}" && -f "$repo_root/.devdeps/boost.tar.gz" ]] &&
  boost_archive="$repo_root/.devdeps/boost.tar.gz"
if [[ -n "$boost_archive" ]] && wanted configure; then
  boost_prefix="${TMPDIR:-/tmp}/sinkmoe-boost"
  [[ -f "$boost_archive" ]] && boost_archive="$(cd "$(dirname "$boost_archive")" && pwd)/$(basename "$boost_archive")"
  if ((dry_run)); then
    printf '  %-10s unpack %s into %s (Boost for the tests)\n' boost "$boost_archive" "$boost_prefix"
    BOOST_ROOT=$boost_prefix
  elif rm -rf "$boost_prefix" && mkdir -p "$boost_prefix" && tar -C "$boost_prefix" -xzf "$boost_archive"; then
    BOOST_ROOT=$boost_prefix
    cmake_common+=(-DBoost_NO_SYSTEM_PATHS=ON -DBoost_NO_BOOST_CMAKE=ON)
    echo "[device_check] Boost from $boost_archive, unpacked into $boost_prefix"
  else
    echo "[device_check] could not unpack $boost_archive; configuring without it" | tee -a "$log"
  fi
fi
[[ -n "${BOOST_ROOT:-}" ]] && cmake_common+=("-DBoost_ROOT=$BOOST_ROOT")
tests_configured=0
configured=0
if wanted configure; then
  if run_step configure 120 -- env -u CUDAARCHS cmake "${cmake_common[@]}" -DSINKMOE_BUILD_TESTS=ON; then
    tests_configured=1
    configured=1
  elif ((!dry_run)); then
    # Without the tests (e.g. no Boost.Test here), so that the benchmarks still run.
    if run_step configure-bench 90 -- env -u CUDAARCHS cmake "${cmake_common[@]}" -DSINKMOE_BUILD_TESTS=OFF; then
      configured=1
    fi
  fi
elif [[ -f "$build_dir/CMakeCache.txt" ]]; then
  configured=1
  grep -q '^SINKMOE_BUILD_TESTS:BOOL=ON' "$build_dir/CMakeCache.txt" && tests_configured=1
fi
((dry_run)) && configured=1 && tests_configured=1

# ---- build ----------------------------------------------------------------------------------
if wanted build; then
  if ((!configured)); then
    skip_step build "no configured build directory"
  else
    targets=()
    if ((dry_run)); then
      targets=("${wanted_targets[@]}")
    else
      known=$(cmake --build "$build_dir" --target help 2>/dev/null)
      for t in "${wanted_targets[@]}"; do
        if grep -Eq "(^|[[:space:]./])$t(:|[[:space:]]|$)" <<<"$known"; then
          targets+=("$t")
        else
          echo "[device_check] build: target $t does not exist in this tree; not built" | tee -a "$log"
        fi
      done
    fi
    if ((${#targets[@]} == 0)); then
      record build failed 0 "none of the targets exist: ${wanted_targets[*]}"
    else
      # Keep going past a target that fails, so that the others are still built and run.
      keep_going=(-k)
      ((${#generator[@]})) && keep_going=(-k 0)
      run_step build 300 -- cmake --build "$build_dir" --parallel "$jobs" --target "${targets[@]}" \
        -- "${keep_going[@]}"
      # A broken unfused path must not cost the fused benchmark: rebuild it without.
      # shellcheck disable=SC2016  # positional parameters of the inner bash
      if ((!dry_run)) && [[ " ${targets[*]} " == *" gpu_attention "* && -z "$(find_executable gpu_attention)" ]]; then
        run_step build-bench-fused-only 200 -- bash -c 'cmake -DSINKMOE_BENCH_UNFUSED=OFF "$1" &&
          cmake --build "$1" --parallel "$2" --target gpu_attention' _ "$build_dir" "$jobs"
      fi
    fi
  fi
fi

# ---- GPU tests ------------------------------------------------------------------------------
if wanted gpu-tests; then
  if ((!tests_configured)); then
    skip_step gpu-tests "the tests were not configured (see configure)"
  else
    run_step gpu-tests 150 -- ctest --test-dir "$build_dir" -L gpu --output-on-failure \
      --no-tests=error --timeout 120
  fi
fi

# ---- compute-sanitizer on one small case ----------------------------------------------------
for tool in memcheck racecheck; do
  wanted "$tool" || continue
  fused_test=$(find_executable test_fused_gpu)
  ((dry_run)) && fused_test="$build_dir/test/.../test_fused_gpu"
  if ! command -v compute-sanitizer >/dev/null 2>&1 && ((!dry_run)); then
    skip_step "$tool" "compute-sanitizer is not on the PATH"
  elif [[ -z "$fused_test" ]]; then
    skip_step "$tool" "test_fused_gpu was not built"
  else
    tool_out=$(mktemp)
    if run_step "$tool" 120 "$tool_out" -- compute-sanitizer --tool "$tool" --error-exitcode 1 \
      "$fused_test" --run_test=sanitizer_case --log_level=test_suite --color_output=no &&
      ((!dry_run)); then
      # A case skipped by its precondition (no device seen) exits 0 but checked nothing.
      grep -q 'Leaving test case "sanitizer_case"' "$tool_out" ||
        record "$tool" failed 0 "sanitizer_case did not run under compute-sanitizer (see the log)"
    fi
    rm -f "$tool_out"
  fi
done

# ---- benchmarks -----------------------------------------------------------------------------
if wanted bench; then
  bench_exe=$(find_executable gpu_attention)
  ((dry_run)) && bench_exe="$build_dir/bench/gpu_attention"
  if [[ -z "$bench_exe" ]]; then
    skip_step bench "gpu_attention was not built"
  else
    run_step bench 150 "$bench_json" -- "$bench_exe" --check "${quick_flag[@]}"
    # The file holds JSON lines and the Markdown table: keep the JSON lines only.
    if [[ -f "$bench_json" ]]; then
      grep '^{' "$bench_json" >"$bench_json.tmp"
      mv "$bench_json.tmp" "$bench_json"
    fi
  fi
fi

if wanted sdpa; then
  run_step sdpa 150 "$sdpa_json" -- env PYTHONUNBUFFERED=1 python3 bench/sdpa_reference.py \
    measure "${quick_flag[@]}"
fi

# ---- summary, and the combined table last ---------------------------------------------------
if ((dry_run)); then
  wanted combine && printf '  %-10s timeout %4ss  %s\n' combine 30 \
    "python3 bench/sdpa_reference.py combine --sinkmoe $bench_json --sdpa $sdpa_json > $combined"
  exit 0
fi

if wanted combine; then
  if [[ -s "$bench_json" ]]; then
    sdpa_args=()
    [[ -s "$sdpa_json" ]] && sdpa_args=(--sdpa "$sdpa_json")
    run_step combine 30 "$combined" -- python3 bench/sdpa_reference.py combine \
      --sinkmoe "$bench_json" "${sdpa_args[@]}"
  else
    skip_step combine "no gpu_attention results"
  fi
fi

echo
echo "[device_check] steps (total $((SECONDS - start_time))s of ${budget}s):"
column -t -s $'\t' "$steps_file" 2>/dev/null || cat "$steps_file"
if [[ -s "$combined" ]]; then
  echo
  cat "$combined"
fi
if ((${#failed_steps[@]} > 0)); then
  echo
  echo "[device_check] FAILED steps: ${failed_steps[*]}"
  exit 1
fi
echo
echo "[device_check] all steps passed"
exit 0
