#!/usr/bin/env bash
# A lent GPU's call (~500 s; HOST_S, the seconds it may take): the host's time before a
# call's kernels, cut (the multiprocessor count, the split rules' answers and the
# every-step lengths kept; no device switch), checked and timed against the flashgru
# before it. In order, after the kernels are compiled on all cores (gpu_warm.py):
# - the kept lengths' GPU test (their bits against lengths given), CUDA graph capture's,
#   the stamped exchange's, on a block smaller than its layout (200 calls' bits) and
#   with many programs, and the projection beside the recurrence's (the forward in spans
#   of time, bit for bit; the module with triton_gru.overlap on, two streams);
# - the default splits' GPU tests where the thirty-first session changed them and the
#   crossed backward's, and tf32x3's (a module call at B=3, H=16 there gave NaN before
#   the stamped fix);
# - scripts/gpu_host_time.py: the host's time a call, and, where $OLD names an older
#   flashgru's directory (its package inside), the same with that one;
# - scripts/gpu_overlap.py: fp32 B=16 at H=256 and 512 with the GEMMs beside the
#   recurrence, over a few span settings, and with the projection inside the forward
#   kernel (triton_gru.project), against both off;
# - issue 5's B=16 points end to end, fp32's also with the projection beside the
#   recurrence and inside the kernel (--overlap-beside: never yet timed), then the
#   2-layer bidirectional case
#   (its pair launch, never yet timed, against the directions in turn) and T=65536
#   (benchmarks/gpu.py).
# Each step gets its share of what is left of HOST_S. Logs go to $OUT.
set -uo pipefail
source "$(dirname "$0")/gpu_common.sh"
HOST_S=${HOST_S:-500}
OLD=${OLD:-}
# (the defaults' tests where the thirty-first session changed them, B=9-16 above H=256,
# and the crossed backward's: ~45 tests, ~125 s on an H200)
K="(default_splits_on_gpu and (16-512 or 16-1024 or 12-384)) or crossed_on_gpu"
GRID=(benchmarks/gpu.py --points bfloat16:1024:16 float32:512:16 float32:1024:16
      bfloat16:512:16 --overlap-beside)
FIRST="kept_lengths or cuda_graph or stamped_small_block or stamped_exchange_on_gpu or \
overlap_on_gpu or forward_in_spans or project_on_gpu or (projection_inside and b16)"
WARM_S=60 warm "-m pytest -q -p no:cacheprovider tests/test_triton.py -k '$FIRST or $K'" \
  "${GRID[*]}" "scripts/gpu_host_time.py" "scripts/gpu_overlap.py"
BUDGET_S=$HOST_S STEP_NAME=gpu_host  # (step: gpu_common.sh, each log's last lines after)
PYTEST=(python3 -m pytest -q -rfE -p no:cacheprovider --timeout 60)
step lengths.log 15 "${PYTEST[@]}" tests/test_triton.py -k "$FIRST"
tail -3 "$OUT/lengths.log" 2>/dev/null
step pytest.log 35 "${PYTEST[@]}" tests/test_triton.py -k "$K"
tail -3 "$OUT/pytest.log" 2>/dev/null
step tf32x3.log 10 "${PYTEST[@]}" tests/test_tf32x3.py
tail -3 "$OUT/tf32x3.log" 2>/dev/null
step host.log 25 python3 scripts/gpu_host_time.py
if [ -n "$OLD" ]; then
  PYTHONPATH=$OLD step host-old.log 30 python3 scripts/gpu_host_time.py
fi
step overlap.log 15 python3 scripts/gpu_overlap.py
step grid.log 100 python3 "${GRID[@]}" --json "$OUT/gpu.json"
# (a short table last)
grep -h "^ *[a-z0-9]* B=16 H=" "$OUT/host.log" "$OUT/host-old.log" 2>/dev/null || true
grep -h -A6 "^summary" "$OUT/grid.log" 2>/dev/null || true
grep -h -A1 "^2-layer\|^T=65536" "$OUT/grid.log" 2>/dev/null || true
grep -h "H=512 .*training" "$OUT/overlap.log" 2>/dev/null || true
