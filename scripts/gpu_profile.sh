#!/usr/bin/env bash
# The next lent GPU's call (~250 s; PROFILE_S, the seconds it may take): where issue 5's
# B=16 calls spend their time beyond their kernels, and the tf32x3 GEMMs with their split
# in one pass. In order: scripts/gpu_profile_training.py (each part of a call at T=512
# and 2048, bf16 and fp32 at H=512 and 1024: kernels, input projection, dW_hh, the
# module's and cuDNN's inference and training calls; short calls; the profiler's and
# cProfile's tables), scripts/gpu_probe_gemm.py (a call's four fp32 GEMMs against the
# tf32x3 kernel, _triton.gemm, against one TF32 GEMM over 3K, gemm.mm_wide, and against
# the three TF32 products of operands split first; the kernel's other tiles), then fp32's
# B=16 points end to end with the GEMMs both ways (benchmarks/gpu.py --tf32x3-beside, in
# the tf32x3 way the probe found faster: --tf32x3-way). First, in seconds,
# tf32x3's tests: the one-pass split and the kernel (never yet run on a GPU, which the
# probe and the grid's tf32x3 lines use), their bits and error. The kernels compiled
# first, all cores at once (gpu_warm.py). Logs go to $OUT.
set -uo pipefail
source "$(dirname "$0")/gpu_common.sh"
PROFILE_S=${PROFILE_S:-250}
GRID=(benchmarks/gpu.py --points float32:1024:16 float32:512:16 --only-grid --tf32x3-beside)
WARM_S=60 warm scripts/gpu_profile_training.py scripts/gpu_probe_gemm.py "${GRID[*]}" \
  "${GRID[*]} --tf32x3-way wide"  # (the grid in either way the probe may name)
BUDGET_S=$PROFILE_S STEP_NAME=gpu_profile  # (step: gpu_common.sh)
step tf32x3.log 10 python3 -m pytest -q -p no:cacheprovider tests/test_tf32x3.py
tail -2 "$OUT/tf32x3.log"
(cd scripts && step profile.log 60 python3 gpu_profile_training.py)
(cd scripts && step gemm.log 25 python3 gpu_probe_gemm.py)
# (the probe's last line names the faster tf32x3 way; the kernel where it printed none)
WAY=$(sed -n 's/^fastest tf32x3 way: \(kernel\|wide\)$/\1/p' "$OUT/gemm.log" 2>/dev/null)
step grid.log 100 python3 "${GRID[@]}" --tf32x3-way "${WAY:-kernel}" --json "$OUT/gpu.json"
# (a short table last: each step's lines that matter, where it wrote them)
grep -h "^H=\|^fastest" "$OUT/gemm.log" 2>/dev/null || true
grep -h -A3 "^summary" "$OUT/grid.log" 2>/dev/null || true
grep -h "B=16 H=1024 T=512 \|B=16 H=512  T=512 " "$OUT/profile.log" 2>/dev/null || true
