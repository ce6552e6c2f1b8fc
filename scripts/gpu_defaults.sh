#!/usr/bin/env bash
# The short second call after scripts/gpu_tune.sh (~250 s; DEFAULTS_S, the seconds it
# may take): the defaults as then set, checked and timed. The kernels compiled first, all
# cores at once (gpu_warm.py); the default splits' GPU tests (at most 120 s, leaving the
# grid 130);
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
# (the tests within what leaves the grid 130 s, at most 120)
left=$((DEFAULTS_S - 130 - SECONDS)); [ "$left" -lt 120 ] || left=120
if [ "$left" -lt 20 ]; then
  echo "gpu_defaults: only $((DEFAULTS_S - SECONDS)) s left: no time for the tests," \
    "the grid takes it"
else
  timeout -k 5 "$left" python3 -m pytest -q -rfE -p no:cacheprovider --timeout 60 \
    tests/test_triton.py -k "$K" > "$OUT/pytest.log" 2>&1
  echo "gpu_defaults: the default splits' tests: exit status $? (124: out of its $left s)"
  tail -4 "$OUT/pytest.log"
fi
left=$((DEFAULTS_S - 5 - SECONDS)); [ "$left" -lt 130 ] || left=130
if [ "$left" -lt 30 ]; then
  echo "gpu_defaults: only ${left} s left of DEFAULTS_S=$DEFAULTS_S: no grid"
else
  timeout -k 5 "$left" python3 "${GRID[@]}" --json "$OUT/gpu.json" 2>&1 \
    | tee "$OUT/bench.log" | grep "H=\|summary"
  echo "gpu_defaults: the grid's exit status ${PIPESTATUS[0]} (124: out of its ${left} s)"
fi
if [ $((DEFAULTS_S - SECONDS)) -ge 35 ]; then
  (cd scripts && timeout -k 5 30 python3 gpu_probe_gemm.py 2>&1 | tee "$OUT/gemm.log")
fi
