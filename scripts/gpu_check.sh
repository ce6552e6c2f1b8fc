#!/usr/bin/env bash
# A short lent-GPU call: the GPU-only Triton and MinGRU tests, then the B ∈ {1, 16} part
# of benchmarks/gpu.py (fp32 and bf16, H ∈ {256, 512, 1024}), their kernels compiled first,
# all cores at once. Logs go to $OUT.
set -uo pipefail
source "$(dirname "$0")/gpu_common.sh"
TESTS=(tests/test_triton.py tests/test_mingru.py -k "gpu or cuda")
BENCH=(benchmarks/gpu.py --hidden 256 512 1024 --batch 1 16)
warm "-m pytest -q -p no:cacheprovider tests/test_triton.py tests/test_mingru.py -k 'gpu or cuda'" \
  "${BENCH[*]}"
timeout 200 python3 -m pytest -q -p no:cacheprovider --timeout 60 --timeout-method thread \
  "${TESTS[@]}" 2>&1 | tee "$OUT/pytest.log" | tail -4
timeout "${BENCH_S:-160}" python3 "${BENCH[@]}" --json "$OUT/gpu.json" 2>&1 \
  | tee "$OUT/bench.log" | tail -14
