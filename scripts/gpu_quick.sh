#!/usr/bin/env bash
# A short check on a lent GPU (~2.5 minutes): the parallel solver's and the scans' GPU
# tests, the Triton backward's split at B=16, H=512, the solver's profile and
# `benchmarks/parallel.py --quick`. Logs go to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/flashgru-gpu}; mkdir -p "$OUT"
nvidia-smi -L
timeout "${TEST_S:-100}" python3 -m pytest -q -x -p no:cacheprovider tests/test_parallel.py \
  tests/test_scan.py "tests/test_triton.py::test_backward_split_at_batch_16_on_gpu" 2>&1 \
  | tee "$OUT/pytest.log" | tail -6
timeout 60 python3 scripts/gpu_profile_parallel.py 2>&1 | tee "$OUT/profile.log" | grep "===\|chunks"
timeout "${PAR_S:-60}" python3 benchmarks/parallel.py --quick 2>&1 | tee "$OUT/parallel.log"
