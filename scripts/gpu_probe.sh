#!/usr/bin/env bash
# A lent-GPU diagnostic call: scripts/gpu_probe.py (the Triton forward's error and time
# per split), then the GPU-only Triton tests and the scan/MinGRU tests that need CUDA.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/flashgru-gpu}; mkdir -p "$OUT"
timeout "${PROBE_S:-170}" python3 scripts/gpu_probe.py 2>&1 | tee "$OUT/probe.log"
timeout 100 python3 -m pytest -q -p no:cacheprovider --timeout 60 --timeout-method thread \
  tests/test_triton.py -k "gpu or cuda" tests/test_mingru.py tests/test_scan.py 2>&1 \
  | tee "$OUT/pytest.log" | tail -5
