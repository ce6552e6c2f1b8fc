#!/usr/bin/env bash
# One call on a lent GPU machine: the whole test suite (CUDA tests included), the cuDNN
# length limit, and the backends timed against torch.nn.GRU. Logs go to $OUT.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/flashgru-gpu}; mkdir -p "$OUT"
nvidia-smi -L; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
python3 -m pytest -q -x tests 2>&1 | tee "$OUT/pytest.log" | tail -25
python3 benchmarks/cudnn_limit.py 2>&1 | tee "$OUT/cudnn_limit.txt"
python3 benchmarks/core.py --device cuda --repeats 10 --grid 1,256,64 1,256,256 16,256,128 \
  64,128,256 2>&1 | tee "$OUT/bench_cuda.md"
