# Sourced by the lent-GPU calls that compile first (gpu_next.sh, gpu_next_bf16.sh,
# gpu_tune.sh): the environment, warm, and a list of probes compiled all at once before
# any runs.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/flashgru-gpu}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)  # (absolute: steps
# run in scripts/ too)

# warm "SCRIPT ARGS" ...: compile, over all cores, every Triton kernel these commands will
# launch (scripts/gpu_warm.py; paths from the repository root), so that each then finds
# its kernels compiled instead of compiling them one after another inside its timeout
warm() {
  timeout -k 5 "${WARM_S:-90}" python3 scripts/gpu_warm.py "$@" 2>&1 | tail -20
}

# probes "LOG SECONDS SCRIPT ARGS" ...: warm them all, then run each (in scripts/) with
# its timeout, its output shown and appended to $OUT/probes.log under a "==== LOG" line
# (one file: a call brings back at most 8 from $OUT)
probes() {
  local line log seconds command commands=()
  for line in "$@"; do
    read -r log seconds command <<<"$line"
    commands+=("scripts/$command")
  done
  warm "${commands[@]}"
  for line in "$@"; do
    read -r log seconds command <<<"$line"
    # shellcheck disable=SC2086 (the probe's arguments, split)
    echo "==== $log: $command" >> "$OUT/probes.log"
    (cd scripts && timeout "$seconds" python3 $command 2>&1 | tee -a "$OUT/probes.log")
  done
}

# step LOG SHARE-OF-WHAT-IS-LEFT% COMMAND...: run it within that share of the call's
# seconds ($BUDGET_S) not yet spent, its output in $OUT/LOG; with too little left (under
# 15 s), say so and skip it. Lines start with $STEP_NAME.
step() {
  local log=$1 share=$2 left
  shift 2
  left=$(((BUDGET_S - 5 - SECONDS) * share / 100))
  if [ "$left" -lt 15 ]; then
    echo "$STEP_NAME: no time left for $*"
    return
  fi
  timeout -k 5 "$left" "$@" > "$OUT/$log" 2>&1
  echo "$STEP_NAME: exit status $? (124: out of its $left s): $*"
}
