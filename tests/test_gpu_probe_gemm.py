"""scripts/gpu_probe_gemm.py runs (its arithmetic, small, on the CPU; on a GPU it times)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_run():
    run = subprocess.run([sys.executable, "gpu_probe_gemm.py", "--smoke"], cwd=ROOT / "scripts",
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert all(name in run.stdout for name in ("projection", "dx", "dW_ih", "dW_hh rz"))
    assert "kernel" in run.stdout and "error" in run.stdout and "other tiles" in run.stdout
    # (the GEMM over 3K too, and the way the four products' sums favour: none off CUDA)
    assert "as one TF32 GEMM over 3K" in run.stdout and "the four products" in run.stdout
    assert run.stdout.rstrip().endswith("fastest tf32x3 way: not timed")
