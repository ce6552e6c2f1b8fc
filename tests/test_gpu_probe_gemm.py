"""scripts/gpu_probe_gemm.py runs (its arithmetic, small, on the CPU; on a GPU it times)."""

import sys
from pathlib import Path

import pytest
from helpers import background, background_output

ROOT = Path(__file__).resolve().parents[1]


# (started beside the tests before it: conftest.py)
background("gemm_smoke", [sys.executable, "gpu_probe_gemm.py", "--smoke"], cwd=ROOT / "scripts")


@pytest.fixture(scope="module")
def gemm_smoke():
    """The script's smoke run: (returncode, stdout, stderr)."""
    return background_output("gemm_smoke", timeout=120)


def test_smoke_run(gemm_smoke):
    code, out, err = gemm_smoke
    assert code == 0, err
    assert all(name in out for name in ("projection", "dx", "dW_ih", "dW_hh rz"))
    assert "kernel" in out and "error" in out and "other tiles" in out
    # (the GEMM over 3K too, and the way the four products' sums favour: none off CUDA)
    assert "as one TF32 GEMM over 3K" in out and "the four products" in out
    assert out.rstrip().endswith("fastest tf32x3 way: not timed")
