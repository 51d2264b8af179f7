#!/usr/bin/env bash
# Nightly conformance job: doctor, export/build (cached), run every available runtime of the
# given suites against their goldens, write reports; the exit code is the CI verdict.
#
#   scripts/nightly.sh [SUITE ...]        (default suite: demo)
#
# Environment:
#   HARNESS      the harness command            (default: harness)
#   REPORT_ROOT  reports go to REPORT_ROOT/<suite file name> (default: reports/nightly)
#   RUNTIMES     space-separated runtime names   (default: all = every runtime available on this machine)
#   SHARD        I/N: run only block I of N of the samples (merge the folders with `harness merge`)
#
# Exit: 0 every check passed, 1 a check failed (drift), 2 set-up or input error (no runtime, stale or
# missing golden, bad data). Every suite runs even after a failure; the worst code wins.
set -uo pipefail

HARNESS=${HARNESS:-harness}
REPORT_ROOT=${REPORT_ROOT:-reports/nightly}
RUNTIMES=${RUNTIMES:-all}
if [ "$#" -gt 0 ]; then suites=("$@"); else suites=(demo); fi

$HARNESS doctor || exit 2

runtime_args=()
for runtime in $RUNTIMES; do runtime_args+=(--runtime "$runtime"); done
shard_args=()
if [ -n "${SHARD:-}" ]; then shard_args=(--shard "$SHARD"); fi

verdict=0
for suite in "${suites[@]}"; do
  name=$(basename "$suite" .toml)  # a bundled name or a path to a suite file
  echo "== $suite: export (cached)"
  for precision in fp32 fp16 int8; do
    $HARNESS export --suite "$suite" --precision "$precision" || { verdict=2; continue 2; }
  done
  echo "== $suite: run ${RUNTIMES}${SHARD:+ (shard $SHARD)}"
  # TensorRT engines and OpenVINO IR are built on first use by their runtimes, through the same cache.
  $HARNESS run --suite "$suite" "${runtime_args[@]}" "${shard_args[@]}" --report-dir "$REPORT_ROOT/$name"
  code=$?
  if [ "$code" -gt "$verdict" ]; then verdict=$code; fi
done
echo "nightly verdict: $verdict (reports in $REPORT_ROOT)"
exit "$verdict"
