#!/usr/bin/env bash
# One call on a lent GPU machine (next session's plan, ~8 minutes): the GPU tests of the
# parallel solver (both paths), MinGRU (fused kernels), the scans and the wide Triton
# problems; then benchmarks/parallel.py (fused and unfused solver at the points),
# benchmarks/mingru.py, and the Triton backward's splits (scripts/gpu_probe_backward.py).
# Needs `.whl` carried (mingru-pytorch, benchmark-only; the image has einops). Logs go
# to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/flashgru-gpu}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
  .whl/mingru_pytorch-*.whl && export PYTHONPATH=$PWD:/tmp/site || export PYTHONPATH=$PWD
nvidia-smi -L; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
timeout "${TEST_S:-130}" python3 -m pytest -q -p no:cacheprovider --timeout 60 --timeout-method thread \
  tests/test_parallel.py tests/test_mingru.py tests/test_scan.py "tests/test_triton.py::test_wide_problem_on_gpu" \
  2>&1 | tee "$OUT/pytest.log" | tail -8
timeout "${PAR_S:-200}" python3 benchmarks/parallel.py ${PAR_ARGS:-} 2>&1 | tee "$OUT/parallel.log" \
  | grep -v "^ \|^Traceback\|^  File"
timeout "${MIN_S:-60}" python3 benchmarks/mingru.py 2>&1 | tee "$OUT/mingru.log" | tail -5
timeout "${BWD_S:-110}" python3 scripts/gpu_probe_backward.py 2>&1 | tee "$OUT/backward.log"
timeout "${PROF_S:-60}" python3 scripts/gpu_profile_module.py 2>&1 | tee "$OUT/profile.log" | head -30
