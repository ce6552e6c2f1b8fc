#!/usr/bin/env bash
# A lent-GPU call that checks the default splits and times issue 5's grid with them: the
# kernels compiled first, all cores at once (gpu_warm.py); the default splits' own test
# (tests/test_triton.py::test_default_splits_on_gpu); the B ∈ {1, 16} part of
# benchmarks/gpu.py (fp32 and bf16, H ∈ {256, 512, 1024}, with the errors against
# float64); fp32 GEMMs against three TF32 ones (scripts/gpu_probe_gemm.py); where a
# training call's time goes (scripts/gpu_profile_training.py); then
# the other GPU-only Triton, MinGRU and CUDA parity tests as time allows (each part
# bounded, under 10 minutes in all). Logs go to $OUT.
set -uo pipefail
source "$(dirname "$0")/gpu_common.sh"
TESTS=(tests/test_triton.py tests/test_mingru.py tests/test_cuda.py)
# (GRID_FLAGS: e.g. --no-stacked, where gpu_tune.sh's stacked tests failed)
read -r -a flags <<<"${GRID_FLAGS:-}"
GRID=(benchmarks/gpu.py --hidden 256 512 1024 --batch 1 16 "${flags[@]}")
status=0  # the script's: the first failed (or timed-out) test run's
pytest() {  # pytest SECONDS LOG ARGS...
  local seconds=$1 log=$2 rc=0
  shift 2
  timeout -k 10 "$seconds" python3 -m pytest -q -rfE -p no:cacheprovider --timeout 60 \
    --timeout-method thread "$@" > "$OUT/$log" 2>&1 || rc=$?
  tail -4 "$OUT/$log"
  [ "$rc" = 0 ] || echo "gpu_check: $log: exit status $rc (124: out of time)"
  [ "$status" != 0 ] || status=$rc
}
WARM_S=100 warm "-m pytest -q -p no:cacheprovider ${TESTS[*]} -k 'gpu or cuda'" "${GRID[*]}" \
  scripts/gpu_profile_training.py
pytest 150 pytest-defaults.log tests/test_triton.py -k default_splits_on_gpu
timeout -k 10 "${BENCH_S:-170}" python3 "${GRID[@]}" --json "$OUT/gpu.json" 2>&1 \
  | tee "$OUT/bench.log" | tail -15
# (one fp32 GEMM against three TF32 ones at the grid's GEMM shapes: seconds; then fp32's
# B=16 points with the triton backend's GEMMs so, end to end)
(cd scripts && timeout -k 10 60 python3 gpu_probe_gemm.py 2>&1 | tee "$OUT/gemm.log")
timeout -k 10 90 python3 benchmarks/gpu.py --hidden 512 1024 --batch 16 --dtype float32 \
  --only-grid --tf32x3-gemms 2>&1 | grep "H=" | tee -a "$OUT/gemm.log"
CHECK_S=${CHECK_S:-575}  # (the seconds this call may take: the parts below as they fit)
if [ $((CHECK_S - SECONDS)) -ge 140 ]; then
  (cd scripts && timeout -k 10 130 python3 gpu_profile_training.py > "$OUT/training.log" 2>&1)
  grep -v "^ *$" "$OUT/training.log" | head -80 | cut -c1-100
fi
left=$((CHECK_S - SECONDS))
if [ "$left" -gt 30 ]; then
  pytest "$left" pytest.log "${TESTS[@]}" -k "(gpu or cuda) and not default_splits_on_gpu"
fi
exit "$status"
