"""scripts/gpu_profile_training.py runs through (small, on the CPU under the interpreter;
on a GPU it times): every section prints, the timelines among them."""

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
    env = {**os.environ, "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1")}
    run = subprocess.run([sys.executable, "gpu_profile_training.py", "--smoke"],
                         cwd=ROOT / "scripts", capture_output=True, text=True, timeout=300,
                         env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    for line in ("module training step", "back to back", "---- timeline",
                 "cuDNN inference: host", "short ", "host Python, training calls"):
        assert line in out, line
    assert "---- timeline module" not in out  # (no timeline failed)
