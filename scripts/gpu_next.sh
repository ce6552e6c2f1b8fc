#!/usr/bin/env bash
# The next GPU session's first call (~5-8 minutes, much of it Triton compiling each split
# once on the fresh machine): the stamped exchange against the barrier (forward and
# backward; B=1 with fewer programs or fewer warps, B=16 with smaller row tiles), the
# K-major product (B=16, H=256: a third of the instructions offline), the B=16
# probes (resident splits, smaller row tiles, tl.dot), and the module's profile
# (`gpu_probe.py --b1`, fewer programs with the barrier, when time allows). Logs go to
# $OUT. Then set what wins as the default (STAMPED_MAX_WORDS, choose_config /
# choose_backward_config), run `bash scripts/gpu_check.sh` (the GPU-only tests and issue
# 5's grid, ~4 minutes) and record both in docs/performance.md. The bf16 probes:
# scripts/gpu_next_bf16.sh.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/flashgru-gpu}; mkdir -p "$OUT"
# (in order of what matters most; the timeouts add up to ~500 s, within one call)
(cd scripts && timeout 110 python3 gpu_probe.py --stamped 2>&1 | tee "$OUT/forward-stamped.log")
(cd scripts && timeout 75 python3 gpu_probe.py --kmajor 2>&1 | tee "$OUT/forward-kmajor.log")
(cd scripts && timeout 90 python3 gpu_probe_backward.py --stamped 2>&1 \
  | tee "$OUT/backward-stamped.log")
(cd scripts && timeout 65 python3 gpu_probe_backward.py --kmajor 2>&1 \
  | tee "$OUT/backward-kmajor.log")
# where a module call spends its time beyond the kernel (B=1, H=256: 2.89 µs per step
# against 2.13 for the kernel on an H200, but 1.98 at T=65536: a fixed ~0.4 ms a call):
# each layer of the call at T=512 and 4096, then the profiler's tables, CPU side last
(cd scripts && timeout 50 python3 gpu_profile_module.py > "$OUT/profile.log" 2>&1)
head -13 "$OUT/profile.log"; tail -22 "$OUT/profile.log"
(cd scripts && timeout 55 python3 gpu_probe.py --b16 2>&1 | tee "$OUT/forward.log")
(cd scripts && timeout 55 python3 gpu_probe_backward.py --b16 2>&1 | tee "$OUT/backward.log")
