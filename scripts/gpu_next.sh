#!/usr/bin/env bash
# The next GPU session's call (~4 minutes): the Triton kernels' resident-W probes (the
# forward at B=16 beyond H=256, the backward at B=1 and 16: both unmeasured), then
# benchmarks/gpu.py on issue 5's grid. Logs go to $OUT. Set what wins as the default
# (choose_config / choose_backward_config) and record it in docs/performance.md.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/flashgru-gpu}; mkdir -p "$OUT"
timeout 90 python3 scripts/gpu_probe.py --resident 2>&1 | tee "$OUT/forward.log"
timeout 90 python3 scripts/gpu_probe_backward.py --resident 2>&1 | tee "$OUT/backward.log"
timeout 130 python3 benchmarks/gpu.py --hidden 256 512 1024 --batch 1 16 2>&1 \
  | grep -v "Warning\|_VF.gru" | tee "$OUT/gpu.log" | tail -15
