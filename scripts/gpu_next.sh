#!/usr/bin/env bash
# The next GPU session's call (~5 minutes): the B=16 probes (forward and backward, fp32
# and bf16: the resident splits against tl.dot, two 8-row tiles), the GPU-only tests, then
# benchmarks/gpu.py on issue 5's grid. Logs go to $OUT. Set what wins as the default
# (choose_config / choose_backward_config) and record it in docs/performance.md.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/flashgru-gpu}; mkdir -p "$OUT"
(cd scripts && timeout 90 python3 gpu_probe.py --b16 2>&1 | tee "$OUT/forward.log")
(cd scripts && timeout 90 python3 gpu_probe_backward.py --b16 2>&1 | tee "$OUT/backward.log")
(cd scripts && timeout 90 python3 gpu_probe.py --b16 --bf16 2>&1 | tee "$OUT/forward-bf16.log")
(cd scripts && timeout 90 python3 gpu_probe_backward.py --b16 --bf16 2>&1 \
  | tee "$OUT/backward-bf16.log")
BENCH_S=150 bash scripts/gpu_check.sh
