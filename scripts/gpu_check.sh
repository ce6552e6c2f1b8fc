#!/usr/bin/env bash
# A short lent-GPU call: the GPU-only Triton and MinGRU tests, then the B ∈ {1, 16} part
# of benchmarks/gpu.py (fp32 and bf16, H ∈ {256, 512, 1024}). Logs go to $OUT.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/flashgru-gpu}; mkdir -p "$OUT"
timeout 200 python3 -m pytest -q -p no:cacheprovider --timeout 60 --timeout-method thread \
  tests/test_triton.py tests/test_mingru.py -k "gpu or cuda" 2>&1 | tee "$OUT/pytest.log" | tail -4
timeout "${BENCH_S:-160}" python3 benchmarks/gpu.py --hidden 256 512 1024 --batch 1 16 \
  --json "$OUT/gpu.json" 2>&1 | tee "$OUT/bench.log" | tail -14
