#!/usr/bin/env bash
# One call on a lent GPU (~5 minutes): benchmarks/parallel.py (issue 6's points and the
# crossover sweep), benchmarks/mingru.py, and benchmarks/gpu.py on issue 5's target grid
# (H 256-1024, B 1 and 16, fp32 and bf16). Needs `.whl` carried (mingru-pytorch). Logs go
# to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/flashgru-gpu}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
  .whl/mingru_pytorch-*.whl && export PYTHONPATH=$PWD:/tmp/site
timeout "${PAR_S:-115}" python3 benchmarks/parallel.py 2>&1 | tee "$OUT/parallel.log" \
  | grep -v "^ \|^Traceback\|^  File"
timeout "${MIN_S:-35}" python3 benchmarks/mingru.py 2>&1 | tee "$OUT/mingru.log" | tail -4
timeout "${GPU_S:-130}" python3 benchmarks/gpu.py --hidden 256 512 1024 --batch 1 16 2>&1 \
  | tee "$OUT/gpu.log" | tail -15
