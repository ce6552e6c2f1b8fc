"""scripts/gpu_tune.sh's control flow, without a GPU: its gates (GPU-only test runs) and
what their exit statuses make of the grid's command line. A fake ``python3`` first on
PATH records each call and fails the test runs whose -k expression names a given family;
everything else (bash, timeout, the script itself) runs as on the lent machine."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAKE = """#!/bin/sh
# each call's arguments on a line; a pytest run whose -k expression contains $FAIL_K
# exits 1, as a failed gate
echo "$*" >> "$CALLS"
case "$*" in
  *pytest*"$FAIL_K"*) [ -n "$FAIL_K" ] && exit 1 ;;
esac
exit 0
"""


def _run(tmp_path: Path, script: str, fail_k: str = "", **env) -> list[str]:
    """The fake python3's calls from one run of a script, each a line."""
    if shutil.which("timeout") is None:
        pytest.skip("no coreutils timeout")
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "python3").write_text(FAKE)
    (bin_ / "python3").chmod(0o755)
    calls = tmp_path / "calls"
    env = dict(os.environ, PATH=f"{bin_}:{os.environ['PATH']}", CALLS=str(calls),
               FAIL_K=fail_k, OUT=str(tmp_path / "out"), **env)
    done = subprocess.run(["bash", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return calls.read_text().splitlines()


def _tune(tmp_path: Path, fail_k: str = "") -> list[str]:
    return _run(tmp_path, "scripts/gpu_tune.sh", fail_k, TUNE_S="600")


def _gates(calls: list[str]) -> list[str]:
    return [c for c in calls if c.startswith("-m pytest")]


def _grid(calls: list[str]) -> str:
    (grid,) = [c for c in calls if "benchmarks/gpu.py --points" in c and "gpu_warm" not in c]
    return grid


def test_every_gate_passed(tmp_path):
    """The older families in one run (stopping at a failure), the three newest apart,
    then the grid in benchmark mode with every candidate family, fp32 also with the
    tf32x3 GEMMs, nearest the target first."""
    calls = _tune(tmp_path)
    gates = _gates(calls)
    assert len(gates) == 4
    assert "-x" in gates[0].split() and "stacked_on_gpu" in gates[0]
    assert [g.split("-k ")[1].split()[0] for g in gates[1:]] == [
        "chunk_shapes_on_gpu", "partials_on_gpu", "groups_on_gpu"]
    grid = _grid(calls)
    assert "--benchmark" in grid and "--no-" not in grid and "--tf32x3-beside" in grid
    assert grid.index("bfloat16:1024:16") < grid.index("float32:512:16") < \
        grid.index("float32:1024:16")
    assert not any("tune_summary" in c for c in calls)  # (no tune.json: nothing to sum)


@pytest.mark.parametrize("family, flag", [("prefetch_changes_no_number", "--no-prefetch"),
                                          ("split16_on_gpu", "--no-split16"),
                                          ("partials_on_gpu", "--no-partials")])
def test_a_failed_family_is_left_out(tmp_path, family, flag):
    """A family's failure leaves its candidates out of the grid, and only its: an older
    family's sends every older family to its own run after the joint one."""
    calls = _tune(tmp_path, family)
    gates = _gates(calls)
    older = family in ("prefetch_changes_no_number", "split16_on_gpu")
    assert len(gates) == (1 + 7 + 3 if older else 4)
    grid = _grid(calls)
    assert "--benchmark" in grid
    assert [f for f in grid.split() if f.startswith("--no-")] == [flag]


def test_the_oldest_failed_the_grid_runs_the_defaults(tmp_path):
    """Should the stamped, K-major or benchmark-mode tests fail, the grid runs without
    benchmark mode (a candidate could hang it)."""
    grid = _grid(_tune(tmp_path, "stamped_exchange_on_gpu"))
    assert "--benchmark" not in grid and "--no-" not in grid



def test_defaults_call(tmp_path):
    """gpu_defaults.sh: the default splits' tests, then the grid with fp32 also on the
    tf32x3 GEMMs, then the GEMM probe."""
    calls = _run(tmp_path, "scripts/gpu_defaults.sh", DEFAULTS_S="250")
    assert [c.split()[0] for c in calls] == ["scripts/gpu_warm.py", "-m",
                                             "benchmarks/gpu.py", "gpu_probe_gemm.py"]
    assert "default_splits_on_gpu" in calls[1]
    assert "--tf32x3-beside" in calls[2] and "--benchmark" not in calls[2]
