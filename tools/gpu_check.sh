#!/usr/bin/env bash
# GPU check of histlib.ops in one call (expected 3-6 minutes on an H100, build included; the stages' time limits,
# 150 + 170 + 150 s by default, keep the whole under 8 minutes):
#   1. build the CUDA extensions (python -m histlib kernels --build), in parallel, into a fresh cache;
#   2. pytest -m gpu tests/ops: CUDA vs reference, forward / backward / double backward, fp64/fp32/fp16/bf16;
#   3. benchmarks/ops.py: ref vs cuda vs compiled at the StyleGAN2-256 shapes.
# Works from a plain checkout with the system python that holds torch (no venv, no install: PYTHONPATH=.).
# Writes kernels.json, pytest.xml, pytest.log, bench.json and bench.md under $OUT when set (else under
# results/gpu_check/), and prints the benchmark table last. Exit status: 0 only if every stage passed.
#
#   tools/gpu_check.sh                # everything
#   SKIP_BENCH=1 tools/gpu_check.sh   # build + tests only
#   BUILD_TIMEOUT=90 TEST_TIMEOUT=90 BENCH_TIMEOUT=60 tools/gpu_check.sh   # shorter stage limits
. "$(dirname "$0")/common.sh"
DEST="${OUT:-results/gpu_check}"
mkdir -p "$DEST"
CACHE_TMP="$(mktemp -d)"
export HISTLIB_CACHE="${HISTLIB_CACHE:-$CACHE_TMP}"  # a fresh cache: this check always compiles from source
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
status=0
t0=$(date +%s)
stage() { echo; echo "=== $1 ($(( $(date +%s) - t0 )) s elapsed)"; }

stage "environment"
"$PY" - <<'PY'
import torch, platform
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
PY
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "nvcc: $( ("${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" --version 2>/dev/null || echo missing) | tail -1)"

stage "build"
timeout "${BUILD_TIMEOUT:-150}" "$PY" -m histlib kernels --build --impl cuda --json "$DEST/kernels.json" || status=1

stage "gpu tests"
timeout "${TEST_TIMEOUT:-170}" "$PY" -m pytest -m gpu tests/ops -q -p no:cacheprovider --maxfail=25 --junitxml="$DEST/pytest.xml" \
    2>&1 | tee "$DEST/pytest.log" | tail -40
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

if [ -z "${SKIP_BENCH:-}" ]; then
    stage "benchmark"
    timeout "${BENCH_TIMEOUT:-150}" "$PY" benchmarks/ops.py --json "$DEST/bench.json" > "$DEST/bench.md" 2>&1 || status=1
    echo
    echo "=== summary ($(( $(date +%s) - t0 )) s): build/tests/bench status $status"
    tail -n 40 "$DEST/bench.md"
else
    echo "=== summary ($(( $(date +%s) - t0 )) s): status $status"
fi
rm -rf "$CACHE_TMP" 2>/dev/null || true
exit $status
