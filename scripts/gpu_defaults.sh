#!/usr/bin/env bash
# The short second call after scripts/gpu_tune.sh (~250 s; DEFAULTS_S, the seconds it
# may take): the defaults as then set, checked and timed. The kernels compiled first, all
# cores at once (gpu_warm.py); the default splits' GPU tests (the first 120 s of them);
# issue 5's B ∈ {1, 16} grid with the defaults (benchmarks/gpu.py, fp32 and bf16, with
# the errors against float64; fp32's points also with the triton backend's GEMMs as three
# TF32 ones, --tf32x3-beside, in the same process); then, time left, one fp32 GEMM against
# three TF32 ones (scripts/gpu_probe_gemm.py). Logs go to $OUT.
set -uo pipefail
source "$(dirname "$0")/gpu_common.sh"
K="default_splits_on_gpu or wide_problem_on_gpu or backward_split_at_batch_16_on_gpu"
GRID=(benchmarks/gpu.py --hidden 256 512 1024 --batch 16 1 --only-grid --tf32x3-beside)
DEFAULTS_S=${DEFAULTS_S:-250}
WARM_S=70 warm "-m pytest -q -p no:cacheprovider tests/test_triton.py -k '$K'" "${GRID[*]}"
timeout -k 5 120 python3 -m pytest -q -rfE -p no:cacheprovider --timeout 60 \
  tests/test_triton.py -k "$K" > "$OUT/pytest.log" 2>&1
echo "gpu_defaults: the default splits' tests: exit status $? (124: out of time)"
tail -4 "$OUT/pytest.log"
left=$((DEFAULTS_S - 5 - SECONDS)); [ "$left" -lt 130 ] || left=130
timeout -k 5 "$left" python3 "${GRID[@]}" --json "$OUT/gpu.json" 2>&1 | tee "$OUT/bench.log" \
  | grep "H=\|summary"
if [ $((DEFAULTS_S - SECONDS)) -ge 35 ]; then
  (cd scripts && timeout -k 5 30 python3 gpu_probe_gemm.py 2>&1 | tee "$OUT/gemm.log")
fi
