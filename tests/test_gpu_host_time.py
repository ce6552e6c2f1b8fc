"""scripts/gpu_host_time.py runs through (small, on the CPU under the interpreter; on a
GPU it times): a line for cuDNN and one for flashgru, with the ratio."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flashgru.backends import BACKENDS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(BACKENDS["triton"].missing() is not None,
                    reason="needs Triton, and a GPU or TRITON_INTERPRET=1")
def test_smoke_run():
    done = subprocess.run(
        [sys.executable, "scripts/gpu_host_time.py", "--smoke"], cwd=ROOT,
        env={**os.environ, "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1")},
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if "B=2 H=8" in line]
    assert lines[0].startswith("----") and " cuDNN " in lines[1]
    assert " flashgru " in lines[2] and "x cuDNN" in lines[2] and "host" in lines[2]
