#!/usr/bin/env bash
# The B=16 and stamped probes in bfloat16 (split from gpu_next.sh to keep each call
# within the 10-minute limit; each split compiled first, all cores at once): the stacked
# tiles on the tensor cores, resident splits, smaller row tiles, tl.dot on resident bf16
# tiles, the stamped exchange, the K-major product (at H=256; above it spills in bf16
# too); forward and backward. Logs go to $OUT/probes.log.
set -uo pipefail
source "$(dirname "$0")/gpu_common.sh"
probes "forward-stacked-bf16 55 gpu_probe.py --stacked --bf16" \
  "backward-stacked-bf16 55 gpu_probe_backward.py --stacked --bf16" \
  "forward-bf16 70 gpu_probe.py --b16 --bf16" \
  "backward-bf16 70 gpu_probe_backward.py --b16 --bf16" \
  "forward-stamped-bf16 70 gpu_probe.py --stamped --bf16" \
  "backward-stamped-bf16 70 gpu_probe_backward.py --stamped --bf16" \
  "forward-kmajor-bf16 55 gpu_probe.py --kmajor --bf16" \
  "backward-kmajor-bf16 45 gpu_probe_backward.py --kmajor --bf16"
