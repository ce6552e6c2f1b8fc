#!/usr/bin/env bash
# The next GPU session's first call: the stacked tiles on the tensor cores (B=16,
# forward and backward), the stamped exchange against the barrier (forward and backward;
# B=1 with fewer programs or fewer warps, B=16 with smaller row tiles), the K-major
# product (B=16, H=256: a third of the instructions offline), then the B=16 probes
# (resident splits, smaller row tiles, tl.dot) and the module's profile; every split
# compiled first, all cores at once (scripts/gpu_warm.py). Logs go to $OUT (probes.log,
# profile.log). Then set what wins as the default (STAMPED_MAX_WORDS, choose_config /
# choose_backward_config),
# run `bash scripts/gpu_check.sh` (the GPU-only tests and issue 5's grid) and record
# both in docs/performance.md. The bf16 probes: scripts/gpu_next_bf16.sh. Before the
# call, `scripts/gpu_compile_check.py scripts/gpu_next.sh` under the GPU's Triton (3.6)
# checks offline that every split compiles.
set -uo pipefail
source "$(dirname "$0")/gpu_common.sh"
# (in order of what matters most; with the warm step's 90 s the timeouts, sized for
# compiling should the warm step fail, add up to under the 600 s a call may take)
probes "forward-stacked 50 gpu_probe.py --stacked" \
  "backward-stacked 50 gpu_probe_backward.py --stacked" \
  "forward-stamped 90 gpu_probe.py --stamped" \
  "forward-kmajor 55 gpu_probe.py --kmajor" \
  "backward-stamped 75 gpu_probe_backward.py --stamped" \
  "backward-kmajor 50 gpu_probe_backward.py --kmajor" \
  "forward 40 gpu_probe.py --b16" \
  "backward 40 gpu_probe_backward.py --b16"
# where a module call spends its time beyond the kernel (B=1, H=256: 2.89 µs per step
# against 2.13 for the kernel on an H200, but 1.98 at T=65536: a fixed ~0.4 ms a call):
# each layer of the call at T=512 and 4096, then the profiler's tables, CPU side last
(cd scripts && timeout 50 python3 gpu_profile_module.py > "$OUT/profile.log" 2>&1)
head -13 "$OUT/profile.log"; tail -22 "$OUT/profile.log"
