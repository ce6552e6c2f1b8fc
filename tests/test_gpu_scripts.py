"""The lent GPU's calls (scripts/gpu_tune.sh, scripts/gpu_defaults.sh) without a GPU:
their gates (GPU-only test runs), what the gates' exit statuses make of the grid's
command line, and the time limits each step gets. A fake ``python3`` and a fake
``timeout`` first on PATH record each call; the fake python3 fails the test runs whose
-k expression contains one of the given patterns; bash and the scripts run as on the
lent machine. (With the fakes, no time passes: SECONDS stays ~0.)"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PYTHON = """#!/bin/sh
# each call's arguments on a line; a pytest run whose arguments contain one of the
# ;-separated patterns of $FAIL_K exits 1, as a failed gate
echo "$*" >> "$CALLS"
case "$*" in *pytest*) ;; *) exit 0 ;; esac
IFS=';'
for pattern in $FAIL_K; do
  case "$*" in *"$pattern"*) exit 1 ;; esac
done
exit 0
"""

TIMEOUT = """#!/bin/sh
# the limit on a line of its own, then the command, run (without a limit)
while [ "$1" = "-k" ]; do shift 2; done
echo "timeout $1" >> "$CALLS"
shift
exec "$@"
"""


def _run(tmp_path: Path, script: str, fail_k: str = "", **env) -> tuple[list[str], str]:
    """The fakes' lines from one run of a script, and what it printed."""
    bin_ = tmp_path / "bin"
    bin_.mkdir(parents=True)
    for name, text in (("python3", PYTHON), ("timeout", TIMEOUT)):
        (bin_ / name).write_text(text)
        (bin_ / name).chmod(0o755)
    calls = tmp_path / "calls"
    env = dict(os.environ, PATH=f"{bin_}:{os.environ['PATH']}", CALLS=str(calls),
               FAIL_K=fail_k, OUT=str(tmp_path / "out"), **env)
    done = subprocess.run([shutil.which("bash") or "bash", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return calls.read_text().splitlines(), done.stdout


def _tune(tmp_path: Path, fail_k: str = "", budget: int = 480):
    return _run(tmp_path, "scripts/gpu_tune.sh", fail_k, TUNE_S=str(budget))


def _limited(calls: list[str], start: str) -> list[tuple[int, str]]:
    """(limit, call) of each call whose line starts with ``start``: the limit is the
    fake timeout's line just before it."""
    return [(int(calls[i - 1].split()[1]), c) for i, c in enumerate(calls)
            if c.startswith(start) and i and calls[i - 1].startswith("timeout ")]


def _gates(calls):
    return [c for _, c in _limited(calls, "-m pytest")]


def _grid(calls) -> str:
    (grid,) = [c for _, c in _limited(calls, "benchmarks/gpu.py --points")]
    return grid


def test_every_gate_passed(tmp_path):
    """The oldest splits' gate, the chunked one, the three newest apart, the other older
    families in one run that stops at a failure; then the grid in benchmark mode with
    every candidate family, fp32 also with the tf32x3 GEMMs, nearest the target first,
    within TUNE_S and 270 s; every limit positive."""
    calls, out = _tune(tmp_path)
    gates = _gates(calls)
    assert [g.split("-k ")[1].split(" -x")[0] for g in gates] == [
        "stamped_exchange_on_gpu or kmajor_on_gpu or benchmark_mode_on_gpu",
        "chunked_on_gpu", "chunk_shapes_on_gpu", "partials_on_gpu", "groups_on_gpu",
        "prefetch_changes_no_number or narrow or stacked_on_gpu or split16_on_gpu"]
    assert gates[-1].endswith(" -x")
    grid = _grid(calls)
    assert "--benchmark" in grid and "--no-" not in grid and "--tf32x3-beside" in grid
    assert grid.index("bfloat16:1024:16") < grid.index("float32:512:16") < \
        grid.index("float32:1024:16")
    limits = dict((c, t) for t, c in _limited(calls, ""))
    assert all(t > 0 for t in limits.values())
    assert limits[grid] == 270  # (no time passed: the grid's cap)
    assert "exit status 0 in" in out  # (each gate's time, for the next plan)
    assert not any("tune_summary" in c for c in calls)  # (no tune.json: nothing to sum)


FAMILIES = {  # a failing pattern → the flags the grid then gets
    "chunked_on_gpu": ["--no-chunked"],
    "chunk_shapes_on_gpu": ["--no-chunk-shapes"],
    "partials_on_gpu": ["--no-partials"],
    "groups_on_gpu": ["--no-groups"],
    "prefetch_changes_no_number": ["--no-prefetch"],
    "stacked_on_gpu": ["--no-stacked"],
    "split16_on_gpu": ["--no-split16"],
    "narrow": ["--no-narrow", "--no-resident-dot"],
    "or narrow;narrow_exchange and resident_dot": ["--no-resident-dot"],
}


@pytest.mark.parametrize("fail_k", list(FAMILIES))
def test_a_failed_family_is_left_out(tmp_path, fail_k):
    """A family's failure leaves its candidates out of the grid, and only its: an older
    family's failure in the joint run sends each older family to its own run."""
    calls, _ = _tune(tmp_path, fail_k)
    gates = _gates(calls)
    (joint,) = [g for g in gates if g.endswith(" -x")]
    older = any(p in joint for p in fail_k.split(";"))
    assert len(gates) == (6 + 5 if older else 6)
    grid = _grid(calls)
    assert "--benchmark" in grid
    assert [f for f in grid.split() if f.startswith("--no-")] == FAMILIES[fail_k]


def test_the_oldest_failed_the_grid_runs_the_defaults(tmp_path):
    """Should the stamped, K-major or benchmark-mode tests fail, the grid runs without
    benchmark mode (a candidate could hang it)."""
    grid = _grid(_tune(tmp_path, "stamped_exchange_on_gpu")[0])
    assert "--benchmark" not in grid and "--no-" not in grid


def test_the_gates_leave_the_grid_its_time(tmp_path):
    """A gate gets at most what leaves the grid 150 s of TUNE_S; with less than 20 s for
    it, it doesn't run and its family is out; with under 30 s for the grid, no grid."""
    calls, out = _tune(tmp_path, budget=220)
    limits = [t for t, _ in _limited(calls, "-m pytest")]
    assert limits and max(limits) <= 70 and min(limits) > 0
    calls, out = _tune(tmp_path / "short", budget=160)
    assert not _gates(calls) and "no time left for the tests of" in out
    assert "--benchmark" not in _grid(calls)  # (the oldest splits' gate didn't run)
    calls, out = _tune(tmp_path / "none", budget=20)
    assert not any(c.startswith("benchmarks/gpu.py --points") for c in calls)
    assert "no grid" in out


def test_defaults_call(tmp_path):
    """gpu_defaults.sh: the default splits' tests, the grid with fp32 also on the tf32x3
    GEMMs, the GEMM probe; the tests' limit leaves the grid 130 s of DEFAULTS_S."""
    calls, _ = _run(tmp_path, "scripts/gpu_defaults.sh", DEFAULTS_S="230")
    ran = [c for c in calls if not c.startswith("timeout ")]
    assert [c.split()[0] for c in ran] == ["scripts/gpu_warm.py", "-m",
                                           "benchmarks/gpu.py", "gpu_probe_gemm.py"]
    (tests,) = _limited(calls, "-m pytest")
    assert "default_splits_on_gpu" in tests[1] and tests[0] == 100
    (grid,) = _limited(calls, "benchmarks/gpu.py")
    assert "--tf32x3-beside" in grid[1] and "--benchmark" not in grid[1]
    assert 0 < grid[0] <= 130
