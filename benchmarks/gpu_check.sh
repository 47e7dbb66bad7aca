#!/usr/bin/env bash
# One-shot check of fastzsl's CUDA backend on a GPU machine, within 8 minutes.
#
# Needs: python3 (3.12) with numpy, scipy, scikit-learn, cupy (cupy-cuda13x), pytest; torch
# for the baseline (optional). No network, no install: the repository goes on PYTHONPATH
# and the Cython extension is not built (the cupy backend does not need it).
#
#   bash benchmarks/gpu_check.sh            # tests, then the full benchmark
#   QUICK=1 bash benchmarks/gpu_check.sh    # smaller benchmark sizes
#   BENCH_ARGS="--tiny" RESULTS_DIR=/tmp/r bash benchmarks/gpu_check.sh   # script check only
#   FASTZSL_CUDA_HOST=1 BENCH_ARGS="--tiny" ... # no GPU: the kernels on the CPU test harness
#                                               # (tests/cuda_host; timings mean nothing)
#   GPU_CHECK_SKIP_TESTS=1 ...                  # leave out the two pytest steps
#
# Steps: nvidia-smi; the GPU tests (tests/backends/test_cupy.py -m gpu); the public-API tests
# that run on backend 'cupy' (only when it is in the registry); benchmarks/bench_gpu.py,
# which writes benchmarks/results/gpu.json and gpu.md (copied to $OUT when it is set).
# Any failure stops the script with a non-zero status and a line saying which step.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${RESULTS_DIR:-benchmarks/results}
TOTAL=${GPU_CHECK_SECONDS:-470}  # the whole script, in seconds (under 8 minutes)
START=$SECONDS
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export PYTHONDONTWRITEBYTECODE=1

fail() { echo "gpu_check FAILED: $*" >&2; exit 1; }
left() { echo $(( TOTAL - (SECONDS - START) )); }
step() { echo; echo "== [$(( SECONDS - START ))s] $*"; }

if [ "${FASTZSL_CUDA_HOST:-0}" = 1 ]; then
    # `import cupy` gives the CPU harness's stand-in; results check the script, not a GPU.
    export PYTHONPATH="$PWD/tests/cuda_host/shim:$PYTHONPATH"
    step "no nvidia-smi: CPU execution of the kernels (tests/cuda_host)"
else
    step "nvidia-smi"
    nvidia-smi || fail "nvidia-smi (no GPU or driver?)"
fi

step "versions"
"$PY" - <<'PYEOF' || fail "python environment (cupy missing or no CUDA device)"
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
PYEOF

if [ "${GPU_CHECK_SKIP_TESTS:-0}" != 1 ]; then
step "GPU tests: tests/backends/test_cupy.py -m gpu"
timeout 200 "$PY" -m pytest tests/backends/test_cupy.py -m gpu -q -ra -p no:cacheprovider \
    || fail "GPU tests (exit $?)"

step "public-API tests on backend 'cupy' (skipped unless it is registered)"
set +e
timeout 90 "$PY" -m pytest tests/test_knn.py tests/test_loop.py tests/test_gaussian.py \
    -q -ra -p no:cacheprovider -k cupy
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "(no test selected: backend 'cupy' is not in fastzsl.backends._REGISTRY)"
elif [ "$status" -ne 0 ]; then
    fail "public-API tests on backend cupy (exit $status)"
fi
fi  # GPU_CHECK_SKIP_TESTS

budget=$(( $(left) - 20 ))
[ "$budget" -ge 120 ] || fail "only ${budget}s left for the benchmark"
step "benchmark: benchmarks/bench_gpu.py (budget ${budget}s)"
args=(--budget "$(( budget - 60 ))" --out "$RESULTS")
[ "${QUICK:-0}" = 1 ] && args+=(--quick)
# shellcheck disable=SC2206
args+=(${BENCH_ARGS:-})
timeout "$budget" "$PY" benchmarks/bench_gpu.py "${args[@]}" || fail "benchmark (exit $?)"

if [ -n "${OUT:-}" ] && [ -d "${OUT}" ]; then
    cp "$RESULTS"/gpu.json "$RESULTS"/gpu.md "$OUT"/
fi
step "done in $(( SECONDS - START ))s"
cat "$RESULTS"/gpu.md
