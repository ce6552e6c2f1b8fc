#!/usr/bin/env bash
# The B=16 and stamped probes in bfloat16 (~5 minutes; split from gpu_next.sh to keep
# each call within the 10-minute limit): resident splits, smaller row tiles, tl.dot on
# resident bf16 tiles, the stamped exchange, the K-major product (at H=256; above it
# spills in bf16 too); forward and backward. Logs go to $OUT.
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
(cd scripts && timeout 75 python3 gpu_probe.py --kmajor --bf16 2>&1 \
  | tee "$OUT/forward-kmajor-bf16.log")
(cd scripts && timeout 65 python3 gpu_probe_backward.py --kmajor --bf16 2>&1 \
  | tee "$OUT/backward-kmajor-bf16.log")
