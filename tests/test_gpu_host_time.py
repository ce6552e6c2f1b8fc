"""scripts/gpu_host_time.py runs through (small, on the CPU under the interpreter; on a
GPU it times): a line for cuDNN and one for flashgru, with the ratio."""

import os
import sys
from pathlib import Path

import pytest
from helpers import background, background_output

from flashgru.backends import BACKENDS

ROOT = Path(__file__).resolve().parents[1]
MISSING = BACKENDS["triton"].missing()

if MISSING is None:  # (started beside the tests before it: conftest.py)
    background("host_time_smoke", [sys.executable, "scripts/gpu_host_time.py", "--smoke"],
               env={**os.environ,
                    "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1")},
               cwd=ROOT)


@pytest.fixture(scope="module")
def host_time_smoke():
    """The script's smoke run: (returncode, stdout, stderr)."""
    return background_output("host_time_smoke", timeout=300)


@pytest.mark.skipif(MISSING is not None, reason="needs Triton, and a GPU or TRITON_INTERPRET=1")
def test_smoke_run(host_time_smoke):
    code, out, err = host_time_smoke
    assert code == 0, err[-2000:]
    lines = [line for line in out.splitlines() if "B=2 H=8" in line]
    assert lines[0].startswith("----") and " cuDNN " in lines[1]
    assert " flashgru " in lines[2] and "x cuDNN" in lines[2] and "host" in lines[2]
