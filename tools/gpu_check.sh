#!/bin/sh
# The GPU path in one call: install the matching CuPy, run the tests on it, time it against
# PyTorch CUDA, and write gpu_check.{json,md,log} into --out (default $OUT, else ./gpu-check).
#   tools/gpu_check.sh [--out DIR] [--budget 480] [--dry-run]      (details: tools/gpu_check.py)
cd "$(dirname "$0")/.." || exit 1
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 exec "${PYTHON:-python3}" tools/gpu_check.py "$@"
