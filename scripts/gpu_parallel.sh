#!/usr/bin/env bash
# One call on a lent GPU machine for issues 5 and 6: benchmarks/parallel.py and
# benchmarks/mingru.py (issue 6, both check their own errors), the tests of the Triton,
# scan, MinGRU and parallel backends on the GPU (each test capped, so a kernel that never
# returns costs two minutes, not the lease), then part of benchmarks/gpu.py (GPU_ARGS).
# Needs `.whl` carried (mingru-pytorch, benchmark-only; the image has einops). Logs go
# to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/flashgru-gpu}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
  .whl/mingru_pytorch-*.whl && export PYTHONPATH=$PWD:/tmp/site || export PYTHONPATH=$PWD
nvidia-smi -L; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
timeout "${PAR_S:-170}" python3 benchmarks/parallel.py ${PAR_ARGS:-} 2>&1 | tee "$OUT/parallel.log"
timeout "${MIN_S:-60}" python3 benchmarks/mingru.py 2>&1 | tee "$OUT/mingru.log"
timeout "${TEST_S:-160}" python3 -m pytest -q -p no:cacheprovider --timeout 120 --timeout-method thread \
  tests/test_triton.py tests/test_parallel.py tests/test_scan.py tests/test_mingru.py \
  tests/test_cuda.py tests/test_dispatch.py 2>&1 | tee "$OUT/pytest.log" | tail -15
timeout "${BENCH_S:-110}" python3 benchmarks/gpu.py ${GPU_ARGS:---hidden 256 512 1024 --batch 1 16} \
  --json "$OUT/gpu.json" 2>&1 | tee "$OUT/bench.log" | tail -14
