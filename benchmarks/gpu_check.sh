#!/usr/bin/env bash
# One-shot check of fastzsl's CUDA backend on a GPU machine, within 8 minutes (one H100/H200,
# compiles included).
#
# Needs: python3 (3.12) with numpy, scipy, scikit-learn, cupy (cupy-cuda13x), pytest; torch
# for the baseline (optional). No network, no install: the repository goes on PYTHONPATH
# and the Cython extension is not built (the cupy backend does not need it).
#
#   bash benchmarks/gpu_check.sh            # everything, full sizes
#   QUICK=1 bash benchmarks/gpu_check.sh    # smaller benchmark sizes
#   BENCH_ARGS="--tiny" RESULTS_DIR=/tmp/r bash benchmarks/gpu_check.sh   # script check only
#   BENCH_ARGS="--knn-method twopass" ...   # pin the kNN method of the 1M x 1M and 10M cases
#   FASTZSL_CUDA_HOST=1 BENCH_ARGS="--tiny" ... # no GPU: the kernels on the CPU test harness
#                                               # (tests/cuda_host; timings mean nothing)
#   GPU_CHECK_SKIP_TESTS=1 ...                  # leave out the two pytest steps
#
#   GPU_CHECK_TESTS="FILES" GPU_CHECK_API_TESTS="FILES"  # what the two pytest steps run
#                                               # (defaults below; the script's own test
#                                               # points them at a failing and a passing file)
#
# Results go to $RESULTS_DIR, else $OUT, else benchmarks/results, as they are taken:
# benchmarks/bench_gpu.py rewrites gpu.json and gpu.md after every timing, every step's
# output is appended to gpu_check.log, and each step records its outcome when it ends, a
# line in gpu_check_steps.md and an entry of the JSON list gpu_check_steps.json ({"step",
# "status": "passed"|"failed"|"skipped", "exit", "seconds"}); when $OUT is set and is not
# the results folder, all of them are copied there after every step. So a run cut short
# keeps every number it took. A failing step does not stop the script.
#
# Steps, in this order (every one under `timeout`):
#   nvidia-smi; versions (Python, NumPy, CuPy, CUDA, torch);
#   preflight (bench_gpu.py --cases preflight, about a minute: compile times, compute types,
#     a 4,096 x 1M two-pass slice with per-phase times and fallback counts);
#   bench-methods-gaussian (100k x 1M direct vs two-pass; Gaussian 4M x 1000 vs FP32 SGEMM);
#   gpu-tests (tests/backends/test_cupy.py and test_cupy_twopass.py, -m gpu); api-tests (the
#     public-API tests that run on backend 'cupy', when it is in the registry);
#   bench-large (1M x 1M kNN + LoOP against torch, then 10M references), with what is left.
# The exit status is 1 when any step failed, else 0.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${RESULTS_DIR:-${OUT:-benchmarks/results}}
TOTAL=${GPU_CHECK_SECONDS:-470}  # the whole script, in seconds (under 8 minutes)
GPU_TESTS=${GPU_CHECK_TESTS:-tests/backends/test_cupy.py tests/backends/test_cupy_twopass.py}
API_TESTS=${GPU_CHECK_API_TESTS:-tests/backends/test_knn.py tests/backends/test_loop.py tests/backends/test_gaussian.py}
START=$SECONDS
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export PYTHONDONTWRITEBYTECODE=1

mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_check.log"
: >"$LOG"
STEPS_MD="$RESULTS/gpu_check_steps.md"
STEPS_JSON="$RESULTS/gpu_check_steps.json"
printf '| step | status | exit | seconds |\n|---|---|---|---|\n' >"$STEPS_MD"
echo "[]" >"$STEPS_JSON"
STEP_ENTRIES=()
FAILED=0

left() { echo $(( TOTAL - (SECONDS - START) )); }
step() { echo; echo "== [$(( SECONDS - START ))s] $*" | tee -a "$LOG"; }

# copy_out: everything so far to $OUT, when it is set and is not the results folder.
copy_out() {
    if [ -n "${OUT:-}" ] && [ -d "${OUT}" ] && [ "$(cd "$OUT" && pwd)" != "$(cd "$RESULTS" && pwd)" ]; then
        for f in gpu.json gpu.md gpu_check.log gpu_check_steps.md gpu_check_steps.json; do
            [ -f "$RESULTS/$f" ] && cp "$RESULTS/$f" "$OUT"/
        done
    fi
    return 0
}

# record NAME STATUS EXIT SECONDS: append the step's outcome to both records now.
record() {
    printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" >>"$STEPS_MD"
    STEP_ENTRIES+=("{\"step\": \"$1\", \"status\": \"$2\", \"exit\": $3, \"seconds\": $4}")
    local IFS=,
    printf '[%s]\n' "${STEP_ENTRIES[*]}" >"$STEPS_JSON"
    copy_out
    if [ "$2" = failed ]; then
        FAILED=1
        echo "gpu_check: step '$1' FAILED (exit $3); continuing" >&2
    fi
}

# run_step NAME COMMAND...: run it (its output also to $LOG), record passed (exit 0) or
# failed (any other exit).
run_step() {
    local name=$1 t0=$SECONDS rc
    shift
    step "$name"
    "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    record "$name" "$([ "$rc" -eq 0 ] && echo passed || echo failed)" "$rc" "$(( SECONDS - t0 ))"
}

VERSIONS_PY='
import sys, numpy, cupy
print("python", sys.version.split()[0], "| numpy", numpy.__version__, "| cupy", cupy.__version__,
      "| CUDA runtime", cupy.cuda.runtime.runtimeGetVersion(),
      "| driver", cupy.cuda.runtime.driverGetVersion())
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.cuda.is_available())
except ImportError:
    print("torch: not installed (no baseline)")
import fastzsl.backends.cupy as m
ok, why = m.is_available()
print("fastzsl cupy backend available:", ok, why)
sys.exit(0 if ok else 1)
'

api_tests() {
    # shellcheck disable=SC2086
    timeout 60 "$PY" -m pytest $API_TESTS -q -ra -p no:cacheprovider -k cupy
    local status=$?
    if [ "$status" -eq 5 ]; then
        echo "(no test selected: backend 'cupy' is not in fastzsl.backends._REGISTRY)"
        return 0
    fi
    return "$status"
}

if [ "${FASTZSL_CUDA_HOST:-0}" = 1 ]; then
    # `import cupy` gives the CPU harness's stand-in; results check the script, not a GPU.
    export PYTHONPATH="$PWD/tests/cuda_host/shim:$PYTHONPATH"
    step "no nvidia-smi: CPU execution of the kernels (tests/cuda_host)"
    record nvidia-smi skipped 0 0
else
    run_step nvidia-smi timeout 30 nvidia-smi
fi

run_step versions timeout 60 "$PY" -c "$VERSIONS_PY"

# shellcheck disable=SC2206
BENCH=("$PY" benchmarks/bench_gpu.py --out "$RESULTS" ${BENCH_ARGS:-})
[ "${QUICK:-0}" = 1 ] && BENCH+=(--quick)

# bench_step NAME SECONDS CASES [bench_gpu.py args...]: that benchmark part within SECONDS
# (or what is left of the script's time, if less).
bench_step() {
    local name=$1 seconds=$2 cases=$3 limit
    shift 3
    limit=$(( $(left) - 10 ))
    [ "$seconds" -lt "$limit" ] && limit=$seconds
    if [ "$limit" -lt 20 ]; then
        step "$name: only $(left)s left, not run"
        record "$name" failed 124 0
        return
    fi
    run_step "$name" timeout "$limit" "${BENCH[@]}" --cases "$cases" \
        --budget "$(( limit - 10 ))" "$@"
}

rm -f "$RESULTS/gpu.json" "$RESULTS/gpu.md"  # this run's results only (the parts --append)
bench_step preflight 120 preflight
bench_step bench-methods-gaussian 120 methods,gaussian --append

if [ "${GPU_CHECK_SKIP_TESTS:-0}" != 1 ]; then
    # shellcheck disable=SC2086
    run_step gpu-tests timeout 150 "$PY" -m pytest $GPU_TESTS -m gpu -q -ra -p no:cacheprovider
    run_step api-tests api_tests
else
    record gpu-tests skipped 0 0
    record api-tests skipped 0 0
fi

bench_step bench-large 600 knn_loop,big_reference --append

copy_out
step "done in $(( SECONDS - START ))s"
[ -f "$RESULTS/gpu.md" ] && cat "$RESULTS/gpu.md"
echo
cat "$STEPS_MD"
if [ "$FAILED" -ne 0 ]; then
    echo "gpu_check FAILED: see $STEPS_MD" >&2
    exit 1
fi
