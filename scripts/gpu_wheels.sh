#!/usr/bin/env bash
# Download the wheels scripts/gpu_check.sh installs on the GPU test machine (no internet there) into .gpu-wheels/
# (ignored by git; the device tool carries it: carry [".gpu-wheels"]), then print the total that machine receives:
# the working tree (tracked + untracked files git does not ignore) plus the wheels, which must stay under 64 MiB.
#
#   bash scripts/gpu_wheels.sh                 # Python 3.12 manylinux x86_64 wheels of scripts/gpu_wheels.txt
#   GPU_WHEELS_PYTHON=3.11 GPU_WHEELS_DIR=/tmp/w311 bash scripts/gpu_wheels.sh   # another Python (a local rehearsal)
#
# Exit 1 when the download fails or the total is over the limit.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${GPU_CHECK_PYTHON:-python3}"
TARGET_PYTHON="${GPU_WHEELS_PYTHON:-3.12}"
DIR="${GPU_WHEELS_DIR:-$REPO/.gpu-wheels}"
LIMIT=$((64 * 1024 * 1024))

mapfile -t COMPILED < <(awk '!/^#/ && NF && $4 != "pure" {print $1}' "$REPO/scripts/gpu_wheels.txt")
mapfile -t PURE < <(awk '!/^#/ && NF && $4 == "pure" {print $1}' "$REPO/scripts/gpu_wheels.txt")
rm -rf "$DIR"
mkdir -p "$DIR"
download() { "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$TARGET_PYTHON" --dest "$DIR" "$@"; }
download --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 "${COMPILED[@]}"
if [ "${#PURE[@]}" -gt 0 ]; then download --implementation py --platform any --abi none "${PURE[@]}"; fi

count=$(find "$DIR" -name '*.whl' | wc -l)
if [ "$count" -ne $((${#COMPILED[@]} + ${#PURE[@]})) ]; then
  echo "gpu_wheels: $count wheels in $DIR for $((${#COMPILED[@]} + ${#PURE[@]})) requirements of scripts/gpu_wheels.txt" >&2
  exit 1
fi
wheels=$(find "$DIR" -name '*.whl' -printf '%s\n' | awk '{s += $1} END {print s + 0}')
if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  tree=$(cd "$REPO" && git ls-files -z --cached --others --exclude-standard | "$PY" -c \
    'import os, sys; print(sum(os.path.getsize(p) for p in sys.stdin.read().split("\0") if os.path.isfile(p)))')
else
  tree=$(du -sb --exclude=.git --exclude=.gpu-wheels "$REPO" | cut -f1)
fi
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "gpu_wheels: $count wheels for Python $TARGET_PYTHON in $DIR: $(mib "$wheels")"
echo "gpu_wheels: working tree $(mib "$tree") + wheels $(mib "$wheels") = $(mib $((tree + wheels))) of the 64 MiB the GPU machine receives"
if [ $((tree + wheels)) -ge "$LIMIT" ]; then
  echo "gpu_wheels: over 64 MiB: the device tool would refuse the copy (shrink the tree or the list in scripts/gpu_wheels.txt)" >&2
  exit 1
fi
