#!/usr/bin/env bash
# A lent GPU's tune (TUNE_S: the seconds it may take, 540 by default: the two gates below,
# the grid's 270 and a minute of tests; the grid alone took ~110 s for three points on an
# H200, 2026-11-28, with fewer candidates). Benchmark mode at issue 5's B=16 points
# above H=256: at each point the fastest of the candidate splits, timed on the card and
# named in the point's line, and every candidate's time in $OUT/tune.json, the data for
# the defaults (fp32's points also with the GEMMs as three TF32 ones, --tf32x3-beside).
# Then, in the time left, the GPU-only tests: first those of the defaults and of the
# families they could be made of, then the others. The summary (scripts/tune_summary.py,
# with the SPREAD_CHUNK_DEFAULTS entries its fp32 timings call for) last. Logs go to
# $OUT.
#
# Every candidate family but the two gated below has run its GPU tests on an H200 without
# a wrong number (the seventeenth session and the twenty-second; docs/performance.md), so
# the grid runs first.
# A family never yet run on a GPU goes in NEW, as "-k EXPRESSION|--no-FLAG": its tests
# run first, as a gate, and where they fail or run out of time the grid goes without it
# (a candidate could hang the grid). (The twenty-second session's first call gated every
# family first: at 2-4 s a test where the gates' 40-70 s had counted on kernels compiled
# beforehand, they ran out of time, and the grid ran without the defaults' own families.)
set -uo pipefail
source "$(dirname "$0")/gpu_common.sh"
TUNE_S=${TUNE_S:-540}
# (unset: the two families never run on a GPU: the permuted exchange's fp32 tests at the
# B=16 shapes, reset_after=True (seven splits: within the gate's 90 s), with the row tiles
# (each test compares its split with the same unpermuted, so a failure may be either's:
# both families go); then the crossed backward's (Config.k_blocks), the first chunked and
# the first stacked split at each dtype and H (eight). TUNE_NEW, ";"-separated, names others instead, or none where empty;
# an entry's flags may be several.)
PERMUTED_GATE="permuted_exchange and (512 or 1024) and not f16 and not 1000 and after|--no-permuted --no-row-tiles"
CROSSED_GATE="crossed_on_gpu and gate|--no-crossed"
IFS=';' read -ra NEW <<< "${TUNE_NEW-$PERMUTED_GATE;$CROSSED_GATE}"
for entry in "${NEW[@]}"; do
  case "$entry" in *"|--no-"*) ;; *)
    echo "gpu_tune: TUNE_NEW's entries are '-k EXPRESSION|--no-FLAG'; got '$entry'" >&2
    exit 2 ;;
  esac
done
GRID=(benchmarks/gpu.py --points bfloat16:1024:16 float32:512:16 float32:1024:16
      bfloat16:512:16 --only-grid --tf32x3-beside --benchmark)
# the GPU-only tests: the defaults' and their families' (chunk shapes, narrow, prefetch),
# then the other families'
FIRST="default_splits_on_gpu or chunk_shapes_on_gpu or narrow_exchange or prefetch_changes"
REST="chunked_on_gpu or stacked_on_gpu or"
REST="$REST stamped_exchange_on_gpu or kmajor_on_gpu or benchmark_mode_on_gpu"
REST="$REST or permuted_exchange or pair_runs or crossed_on_gpu or cuda_graph_on_gpu"
REST="($REST) and not ($FIRST)"
gates=()
for entry in "${NEW[@]}"; do gates+=("-m pytest -q -p no:cacheprovider tests/test_triton.py -k '${entry%|*}'"); done
WARM_S=60 warm "${GRID[*]}" "${gates[@]}"
tests() {  # tests LIMIT -k-EXPRESSION: the GPU-only tests' exit status (124: out of time;
  # none run where the limit is under 20 s)
  if [ "$1" -lt 20 ]; then
    echo "gpu_tune: no time left for the tests of $2" | tee -a "$OUT/pytest-tune.log"
    return 124
  fi
  local start=$SECONDS status
  timeout -k 10 "$1" python3 -m pytest -q -rfE -p no:cacheprovider --timeout 60 \
    --timeout-method thread tests/test_triton.py -k "$2" >> "$OUT/pytest-tune.log" 2>&1
  status=$?
  echo "gpu_tune: exit status $status in $((SECONDS - start)) s: -k '$2'"
  return $status
}
for entry in "${NEW[@]}"; do  # (each gate at most 90 s, leaving the grid 150)
  left=$((TUNE_S - 150 - SECONDS)); [ "$left" -lt 90 ] || left=90
  if ! tests "$left" "${entry%|*}"; then  # (its flags, one or more)
    read -ra flags <<< "${entry#*|}"
    GRID+=("${flags[@]}")
  fi
done
# (the grid within what leaves the tests 30 s, at most 270)
left=$((TUNE_S - 30 - SECONDS))
if [ "$left" -lt 30 ]; then
  echo "gpu_tune: only ${left} s left of TUNE_S=$TUNE_S: no grid"
else
  # (first tf32x3's tests, in seconds: the one-pass split the grid's tf32x3 lines use,
  # against the torch ops' bits; should they fail, the grid goes without those lines)
  if ! timeout -k 5 60 python3 -m pytest -q -p no:cacheprovider tests/test_tf32x3.py \
      >> "$OUT/pytest-tune.log" 2>&1; then
    echo "gpu_tune: tf32x3's tests failed: the grid without --tf32x3-beside"
    for i in "${!GRID[@]}"; do [ "${GRID[$i]}" != --tf32x3-beside ] || unset "GRID[$i]"; done
    GRID=("${GRID[@]}")
  fi
  echo "gpu_tune: ${GRID[*]}"
  left=$((TUNE_S - 30 - SECONDS)); [ "$left" -lt 270 ] || left=270
  timeout -k 10 "$left" python3 "${GRID[@]}" --json "$OUT/tune.json" 2>&1 \
    | tee "$OUT/tune.log" | grep -A6 "^summary"
  echo "gpu_tune: the grid's exit status ${PIPESTATUS[0]} (124: out of its ${left} s)"
fi
tests $((TUNE_S - 10 - SECONDS)) "$FIRST"
tests $((TUNE_S - 10 - SECONDS)) "$REST"
tail -4 "$OUT/pytest-tune.log"
if [ -f "$OUT/tune.json" ]; then
  python3 scripts/tune_summary.py "$OUT/tune.json" --defaults | tee "$OUT/tune-summary.log"
fi
