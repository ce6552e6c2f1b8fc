"""scripts/gpu_profile_training.py runs through (small, on the CPU under the interpreter;
on a GPU it times): every section prints, the timelines among them."""

import os
import sys
from pathlib import Path

import pytest
from helpers import background, background_output

from flashgru.backends import BACKENDS

ROOT = Path(__file__).resolve().parents[1]


# (started beside the tests before it: conftest.py)
if BACKENDS["triton"].missing() is None:
    background("profile_smoke", [sys.executable, "gpu_profile_training.py", "--smoke"],
               env={**os.environ, "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1")},
               cwd=ROOT / "scripts")


@pytest.fixture(scope="module")
def profile_smoke():
    """The script's smoke run: (returncode, stdout, stderr)."""
    return background_output("profile_smoke", timeout=300)


@pytest.mark.skipif(BACKENDS["triton"].missing() is not None,
                    reason="needs Triton, and a GPU or TRITON_INTERPRET=1")
def test_smoke_run(profile_smoke):
    code, out, err = profile_smoke
    assert code == 0, err[-2000:]
    for line in ("module training step", "back to back", "---- timeline",
                 "cuDNN inference: host", "short ", "host Python, training calls"):
        assert line in out, line
    assert "---- timeline module" not in out  # (no timeline failed)
