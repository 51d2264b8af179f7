#!/usr/bin/env bash
# One-shot check of the GPU code paths (torch-cuda fp32/fp16, nvJPEG, and every other CUDA runtime the machine can
# run) on the GPU test machine: an NVIDIA H200 lent now and then for ~15 minutes, no internet, 64 MiB of working
# tree, its own Python 3.12 with CUDA PyTorch, torchvision, onnxruntime (CPU), onnx, safetensors, OpenCV, Pillow.
# One command of at most ~8 minutes (GPU_CHECK_BUDGET_S, 450 s, + 15 s grace); the reports land in one folder.
#
#   here, first:     bash scripts/gpu_wheels.sh     (the wheels of scripts/gpu_wheels.txt -> .gpu-wheels/, and the size)
#   device tool:     run(command="bash scripts/gpu_check.sh", carry=[".gpu-wheels"], timeout_s=540)
#                    ($OUT is the folder that comes back: the reports go there)
#   elsewhere / CI:  make gpu-check                 (GPU_CHECK_CPU=quick: a short CPU part)
#
# Setup: the wheels go into a private folder put on PYTHONPATH with the repository (`pip install --target`: the
# machine's own packages, its CUDA PyTorch above all, stay as they are, and nothing needs the internet), the project
# is installed editable into it for its entry points (`harness`, the pytest plugin), and every module is imported.
# GPU part: nvidia-smi, `harness doctor`, the `gpu`-marked tests, `harness run --suite demo --no-golden` on
# torch-cuda-fp32, torch-cuda-fp16 and ort-fp32 (+ the other available CUDA runtimes), `harness matrix --axes decoder`
# (nvJPEG is a decoder row), the demo run again against the goldens (recorded on other CPUs: kept, not required).
# Without a CUDA device: one line says so and the GPU part is skipped.  CPU part, after the GPU part so that its
# numbers come back even when time runs out: the demo on ort-fp32 against the goldens, then the test suite
# (`-n 8` with pytest-xdist), in whatever time the budget leaves.
#
# OUT/summary.md and summary.json: each step's exit code, seconds, log (OUT/logs/STEP.log) and command; gpu.json:
# the GPU; modules.json: each module's version and origin.  Exit 0 whatever the steps gave, 1 when setup failed.
#
# Environment: GPU_CHECK_CPU=full|quick (quick: demo on 32 samples, tests/test_gpu.py), GPU_CHECK_OUT (default
# $OUT, else reports/gpu-check), GPU_CHECK_PYTHON (default: python3 or python, the one with torch),
# GPU_CHECK_WHEELS (.gpu-wheels), GPU_CHECK_BUDGET_S.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${GPU_CHECK_PYTHON:-}"
if [ -z "$PY" ]; then  # the machine's Python with PyTorch: python3, else python
  for candidate in python3 python; do
    if "$candidate" -c "import torch" 2>/dev/null; then PY=$candidate && break; fi
  done
  PY="${PY:-python3}"
fi
CPU_MODE="${GPU_CHECK_CPU:-full}"
BUDGET="${GPU_CHECK_BUDGET_S:-450}"
WHEELS="${GPU_CHECK_WHEELS:-$REPO/.gpu-wheels}"
OUT_DIR="${GPU_CHECK_OUT:-${OUT:-$REPO/reports/gpu-check}}"
case "$CPU_MODE" in full | quick) ;; *)
  echo "gpu_check: GPU_CHECK_CPU=$CPU_MODE: use full or quick" >&2
  exit 1
  ;;
esac
mkdir -p "$OUT_DIR/logs"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
cd "$REPO"
: >"$OUT_DIR/steps.tsv"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
SITE="$WORK/site"
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export HARNESS_CACHE_DIR="${HARNESS_CACHE_DIR:-$WORK/cache}"
export MPLBACKEND=Agg
START=$SECONDS
RC=0

# step NAME CAP COMMAND...: run COMMAND for at most CAP seconds (less when the budget is nearly spent), its output in
# OUT/logs/NAME.log; RC = its exit code (124: timed out or not started for lack of time); the summary is rewritten.
# A step out of time gets SIGINT first (pytest then still writes its summary and JUnit file), SIGKILL 15 s later.
step() {
  local name=$1 cap=$2 began=$SECONDS
  shift 2
  local left=$((BUDGET - (SECONDS - START)))
  local limit=$((cap < left ? cap : left))
  RC=0
  if [ "$limit" -lt 10 ]; then
    echo "not started: ${left} s of the ${BUDGET} s budget left" >"$OUT_DIR/logs/$name.log"
    RC=124
  else
    timeout -s INT -k 15 "$limit" "$@" >"$OUT_DIR/logs/$name.log" 2>&1 || RC=$?
  fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$RC" "$((SECONDS - began))" "logs/$name.log" "$(printf '%q ' "$@")" >>"$OUT_DIR/steps.tsv"
  echo "gpu_check: $name: exit $RC in $((SECONDS - began)) s"
  "$PY" scripts/gpu_check.py summary "$OUT_DIR" || echo "gpu_check: the summary could not be written"
}

setup_failed() {
  echo "gpu_check: setup failed at $1: $(tail -n 1 "$OUT_DIR/logs/$1.log")"
  exit 1
}

# --- setup ---
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if [ "${#wheels[@]}" -gt 0 ]; then
  step install-wheels 120 "$PY" -m pip install --no-index --no-deps --no-compile --disable-pip-version-check --target "$SITE" "${wheels[@]}"
  [ "$RC" -eq 0 ] || setup_failed install-wheels
else
  echo "gpu_check: no wheels in $WHEELS: the modules of $PY as they are"
fi
step install-project 120 "$PY" -m pip install --no-index --no-deps --no-build-isolation --disable-pip-version-check --target "$SITE" -e "$REPO"
[ "$RC" -eq 0 ] || setup_failed install-project
step modules 120 "$PY" scripts/gpu_check.py modules "$OUT_DIR"
[ "$RC" -eq 0 ] || setup_failed modules
step probe 60 "$PY" scripts/gpu_check.py probe "$OUT_DIR"

# --- GPU part ---
if [ "$RC" -eq 0 ]; then
  mapfile -t gpu_runtimes <"$OUT_DIR/runtimes.txt"
  runtime_args=()
  for runtime in "${gpu_runtimes[@]}"; do runtime_args+=(--runtime "$runtime"); done
  if command -v nvidia-smi >/dev/null; then step nvidia-smi 30 nvidia-smi; fi
  step doctor 90 "$PY" -m harness doctor
  mapfile -t gpu_tests < <(grep -l "pytest.mark.gpu" tests/test_*.py)
  step gpu-tests 200 "$PY" -m pytest -q -p no:cacheprovider -m gpu -rA --junitxml "$OUT_DIR/gpu-tests.xml" "${gpu_tests[@]}"
  step demo-gpu 120 "$PY" -m harness run --suite demo "${runtime_args[@]}" --no-golden --report-dir "$OUT_DIR/demo-gpu"
  step matrix-decoder 120 "$PY" -m harness matrix --suite demo --axes decoder --limit 100 --report-dir "$OUT_DIR/matrix-decoder"
  step demo-gpu-golden 90 "$PY" -m harness run --suite demo "${runtime_args[@]}" --report-dir "$OUT_DIR/demo-gpu-golden"
elif [ "$RC" -eq 3 ]; then
  echo "no CUDA device: GPU part skipped ($(tail -n 1 "$OUT_DIR/logs/probe.log"))"
else
  setup_failed probe
fi

# --- CPU part ---
if [ "$CPU_MODE" = quick ]; then
  step demo-cpu 120 "$PY" -m harness run --suite demo --runtime ort-fp32 --limit 32 --no-golden --report-dir "$OUT_DIR/demo-cpu"
  step cpu-tests 120 "$PY" -m pytest -q -p no:cacheprovider -rA tests/test_gpu.py
else
  step demo-cpu 120 "$PY" -m harness run --suite demo --runtime ort-fp32 --report-dir "$OUT_DIR/demo-cpu"
  parallel=()
  if "$PY" -c "import xdist" 2>/dev/null; then parallel=(-n 8); fi
  step cpu-tests "$BUDGET" env OMP_NUM_THREADS=2 "$PY" -m pytest -q -p no:cacheprovider -m "not gpu" --continue-on-collection-errors \
    -rfE "${parallel[@]}" --junitxml "$OUT_DIR/cpu-tests.xml" tests
fi
cat "$OUT_DIR/summary.md"
