#!/usr/bin/env bash
# The command line on a lent GPU machine: train/predict/gates/bench on CUDA, then the CLI
# tests. faker and vega_datasets travel as wheels in .whl/ (see the device tool's notes).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/flashgru-gpu}; mkdir -p "$OUT"
fg() { echo "+ flashgru $*"; python3 -m flashgru "$@" 2>/dev/null; echo "rc=$?"; }
fg train surnames --device cuda --out /tmp/s | tail -4
fg predict /tmp/s Rossi "O'Brien" --device cuda
fg gates /tmp/s Rossi --device cuda --out "$OUT/gates.png"
fg train surnames --device cuda --paper --limit 100 --epochs 2 --out /tmp/p | tail -2
fg train forecast --device cuda --out /tmp/f | tail -5
fg bench --device cuda --grid 1,256,64 16,256,256 --out "$OUT/bench" | tail -12
python3 -m pytest -q -x -n 4 tests/test_cli.py 2>&1 | tail -3
