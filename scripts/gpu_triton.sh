#!/usr/bin/env bash
# One call on a lent GPU machine for the Triton backend (issue 5): its tests on the GPU
# (each test capped, so a kernel that never returns costs two minutes, not the lease),
# then benchmarks/gpu.py with the launch-split sweep. Logs and numbers go to $OUT.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/flashgru-gpu}; mkdir -p "$OUT"
nvidia-smi -L; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
timeout 150 python3 -m pytest -q -x -p no:cacheprovider --timeout 120 --timeout-method thread \
  tests/test_triton.py tests/test_dispatch.py tests/test_cuda.py 2>&1 | tee "$OUT/pytest.log" | tail -15
timeout "${BENCH_S:-330}" python3 benchmarks/gpu.py ${BENCH_ARGS:---sweep} --json "$OUT/gpu.json" \
  2>&1 | tee "$OUT/bench.log"
