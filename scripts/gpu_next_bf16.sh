#!/usr/bin/env bash
# The B=16 and stamped probes in bfloat16 (~5 minutes; split from gpu_next.sh to keep
# each call within the 10-minute limit): resident splits, smaller row tiles, tl.dot on
# resident bf16 tiles, the stamped exchange; forward and backward. Logs go to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/flashgru-gpu}; mkdir -p "$OUT"
(cd scripts && timeout 90 python3 gpu_probe.py --b16 --bf16 2>&1 | tee "$OUT/forward-bf16.log")
(cd scripts && timeout 90 python3 gpu_probe_backward.py --b16 --bf16 2>&1 \
  | tee "$OUT/backward-bf16.log")
(cd scripts && timeout 90 python3 gpu_probe.py --stamped --bf16 2>&1 \
  | tee "$OUT/forward-stamped-bf16.log")
(cd scripts && timeout 90 python3 gpu_probe_backward.py --stamped --bf16 2>&1 \
  | tee "$OUT/backward-stamped-bf16.log")
