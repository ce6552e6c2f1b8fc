"""The lent GPU's calls (scripts/gpu_tune.sh, scripts/gpu_defaults.sh) without a GPU:
the order of their steps, what a new family's gate (its GPU-only tests) makes of the
grid's command line, and the time limits each step gets. A fake ``python3`` and a fake
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
# ;-separated patterns of $FAIL_K exits 1, as a failed gate; the GEMM probe prints
# $PROBE_SAYS
echo "$*" >> "$CALLS"
for arg in "$@"; do  # (a --no- flag must be an argument of its own)
  case "$arg" in "--no-"*" "*) echo "joined flags: $arg" >> "$CALLS" ;; esac
done
case "$*" in *gpu_probe_gemm.py*) echo "$PROBE_SAYS" ;; esac  # (its last line, if any)
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


def _run(tmp_path: Path, script: str, fail_k: str = "", status: int = 0,
         **env) -> tuple[list[str], str]:
    """The fakes' lines from one run of a script (which exits ``status``), and what it
    printed (its errors too)."""
    bin_ = tmp_path / "bin"
    bin_.mkdir(parents=True)
    for name, text in (("python3", PYTHON), ("timeout", TIMEOUT)):
        (bin_ / name).write_text(text)
        (bin_ / name).chmod(0o755)
    calls = tmp_path / "calls"
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "CALLS": str(calls),
           "FAIL_K": fail_k, "OUT": str(tmp_path / "out"), "PROBE_SAYS": "", **env}
    done = subprocess.run([shutil.which("bash") or "bash", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == status, done.stderr
    return (calls.read_text().splitlines() if calls.exists() else []), \
        done.stdout + done.stderr


def _tune(tmp_path: Path, fail_k: str = "", budget: int = 400, new: str = ""):
    return _run(tmp_path, "scripts/gpu_tune.sh", fail_k, TUNE_S=str(budget), TUNE_NEW=new)


def _limited(calls: list[str], start: str) -> list[tuple[int, str]]:
    """(limit, call) of each call whose line starts with ``start``: the limit is the
    fake timeout's line just before it."""
    return [(int(calls[i - 1].split()[1]), c) for i, c in enumerate(calls)
            if c.startswith(start) and i and calls[i - 1].startswith("timeout ")]


def _tests(calls):
    """The runs of tests/test_triton.py's GPU-only tests (gates and the tests after)."""
    return [c for _, c in _limited(calls, "-m pytest") if "tests/test_triton.py" in c]


def _grid(calls) -> str:
    (grid,) = [c for _, c in _limited(calls, "benchmarks/gpu.py --points")]
    return grid


def test_the_grid_first(tmp_path):
    """The grid first, in benchmark mode with every candidate family, fp32 also with the
    tf32x3 GEMMs, nearest the target first, within TUNE_S less the tests' 30 s and at
    most 270 s; then the GPU-only tests of the defaults and their families, then the
    others', none twice; every limit positive."""
    calls, out = _tune(tmp_path)
    ran = [c.split()[0] for c in calls if not c.startswith("timeout ")]
    assert ran == ["scripts/gpu_warm.py", "-m", "benchmarks/gpu.py", "-m", "-m"]
    assert "tests/test_tf32x3.py" in calls[calls.index(next(  # (the one-pass split's bits
        c for c in calls if c.startswith("-m")))]  # checked before the grid's tf32x3 lines)
    grid = _grid(calls)
    assert "--benchmark" in grid and "--no-" not in grid and "--tf32x3-beside" in grid
    assert grid.index("bfloat16:1024:16") < grid.index("float32:512:16") < \
        grid.index("float32:1024:16")
    limits = dict((c, t) for t, c in _limited(calls, ""))
    assert all(t > 0 for t in limits.values())
    assert limits[grid] == 270  # (the grid's cap, well under TUNE_S's 370 left)
    first, rest = _tests(calls)
    assert "default_splits_on_gpu" in first and "chunk_shapes_on_gpu" in first
    assert "stacked_on_gpu" in rest and "and not (default_splits_on_gpu" in rest
    assert "exit status 0 in" in out  # (each test run's time, for the next plan)
    assert not any("tune_summary" in c for c in calls)  # (no tune.json: nothing to sum)


def test_tf32x3_failed_the_grid_goes_without_it(tmp_path):
    """Should tf32x3's tests fail (the one-pass split's bits), the grid runs without its
    tf32x3 lines, all else as before."""
    grid = _grid(_tune(tmp_path, "tests/test_tf32x3.py")[0])
    assert "--tf32x3-beside" not in grid and "--benchmark" in grid
    assert "float32:1024:16" in grid


@pytest.mark.parametrize("fails", [False, True])
def test_a_new_family_is_gated(tmp_path, fails):
    """A family never run on a GPU (TUNE_NEW) has its tests run before the grid, and
    where they fail the grid goes without it; the others' flags stay off."""
    new = "narrow_exchange|--no-narrow;stacked_on_gpu|--no-stacked"
    calls, _ = _tune(tmp_path, "narrow_exchange" if fails else "", new=new)
    tests = _tests(calls)
    assert tests[0].endswith("-k narrow_exchange") and tests[1].endswith("-k stacked_on_gpu")
    assert calls.index(next(c for c in calls if c.startswith("benchmarks/gpu.py"))) > \
        calls.index(next(c for c in calls if c.endswith("-k stacked_on_gpu")))
    flags = [f for f in _grid(calls).split() if f.startswith("--no-")]
    assert flags == (["--no-narrow"] if fails else [])
    (warm,) = [c for c in calls if c.startswith("scripts/gpu_warm.py")]
    assert "narrow_exchange" in warm  # (the gates' kernels compiled beforehand too)


@pytest.mark.parametrize("fails", [False, True])
def test_the_permuted_exchange_is_gated_by_default(tmp_path, monkeypatch, fails):
    """TUNE_NEW unset: the permuted exchange (never run on a GPU) is gated by its fp32
    tests at the B=16 shapes before the grid, which goes without it and the row tiles
    (each split is compared with its unpermuted self) where they fail, each flag its own
    argument; then the crossed backward by its tests, the grid without it alone where
    they fail; their tests run again with the others' after the grid."""
    monkeypatch.delenv("TUNE_NEW", raising=False)
    gate = "permuted_exchange and (512 or 1024) and not f16 and not 1000 and after"
    crossed = "crossed_on_gpu and gate"
    calls, _ = _run(tmp_path, "scripts/gpu_tune.sh", gate if fails else "", TUNE_S="480")
    tests = _tests(calls)
    assert tests[0].endswith(f"-k {gate}") and tests[1].endswith(f"-k {crossed}")
    flags = [f for f in _grid(calls).split() if f.startswith("--no-")]
    assert flags == (["--no-permuted", "--no-row-tiles"] if fails else [])
    assert not any(c.startswith("joined flags") for c in calls)
    assert ("or permuted_exchange or pair_runs or crossed_on_gpu or cuda_graph_on_gpu)"
            in tests[-1])
    # (the crossed backward's gate failed: the grid without it alone)
    calls, _ = _run(tmp_path / "crossed", "scripts/gpu_tune.sh", crossed, TUNE_S="480")
    assert [f for f in _grid(calls).split() if f.startswith("--no-")] == ["--no-crossed"]


def test_a_new_family_without_its_flag_is_refused(tmp_path):
    """A TUNE_NEW entry without its --no- flag stops the call before anything runs (the
    expression would go to the grid as an argument and cost it)."""
    calls, out = _run(tmp_path, "scripts/gpu_tune.sh", status=2, TUNE_S="400",
                      TUNE_NEW="narrow_exchange")
    assert calls == [] and "'-k EXPRESSION|--no-FLAG'; got 'narrow_exchange'" in out


def test_the_time_limits(tmp_path):
    """A gate gets at most 90 s, and what leaves the grid 150 s of TUNE_S: none where
    under 20 s, its family then out; with under 30 s for the grid, no grid; the tests get
    what is left, none where under 20 s."""
    calls, out = _tune(tmp_path, budget=220, new="narrow_exchange|--no-narrow")
    assert 60 < _limited(calls, "-m pytest")[0][0] <= 70  # (a second may pass: SECONDS)
    calls, out = _tune(tmp_path / "short", budget=160, new="narrow_exchange|--no-narrow")
    assert "no time left for the tests of narrow_exchange" in out
    assert "--no-narrow" in _grid(calls)
    assert 120 < _limited(calls, "benchmarks/gpu.py")[0][0] <= 130
    calls, out = _tune(tmp_path / "none", budget=25)
    assert not any(c.startswith("benchmarks/gpu.py --points") for c in calls)
    assert "no grid" in out and not _tests(calls) and "no time left for the tests" in out


def test_defaults_call(tmp_path):
    """gpu_defaults.sh: the default splits' tests, the grid with fp32 also on the tf32x3
    GEMMs, the GEMM probe; the tests' limit leaves the grid 130 s of DEFAULTS_S."""
    calls, _ = _run(tmp_path, "scripts/gpu_defaults.sh", DEFAULTS_S="230")
    ran = [c for c in calls if not c.startswith("timeout ")]
    assert [c.split()[0] for c in ran] == ["scripts/gpu_warm.py", "-m",
                                           "benchmarks/gpu.py", "gpu_probe_gemm.py"]
    (tests,) = _limited(calls, "-m pytest")
    assert "default_splits_on_gpu" in tests[1] and 90 < tests[0] <= 100
    (grid,) = _limited(calls, "benchmarks/gpu.py")
    assert "--tf32x3-beside" in grid[1] and "--benchmark" not in grid[1]
    assert 0 < grid[0] <= 130


def test_profile_call(tmp_path):
    """gpu_profile.sh: the kernels compiled first, then the training profile, the GEMM
    probe and fp32's B=16 points with the tf32x3 GEMMs beside, in the way the probe found
    faster (the kernel where it said none), each within its share of PROFILE_S; with too
    little time left a step is skipped, not started."""
    calls, _ = _run(tmp_path, "scripts/gpu_profile.sh", PROFILE_S="250")
    ran = [c for c in calls if not c.startswith("timeout ")]
    assert [c.split()[0] for c in ran] == ["scripts/gpu_warm.py", "-m",
                                           "gpu_profile_training.py", "gpu_probe_gemm.py",
                                           "benchmarks/gpu.py"]
    assert "tests/test_tf32x3.py" in ran[1]  # (the one-pass split's bits first)
    limits = [t for t, c in _limited(calls, "") if not c.startswith("scripts/gpu_warm")]
    # (each its share of what is left: 10%, 60%, 25%, all; a second may pass)
    assert len(limits) == 4 and 20 <= limits[0] <= 24 and 135 < limits[1] <= 147 and \
        50 < limits[2] <= 61 and 230 < limits[3] <= 245
    (grid,) = [c for c in ran if c.startswith("benchmarks/gpu.py")]
    assert "--tf32x3-beside" in grid and "float32:1024:16" in grid
    assert "--tf32x3-way kernel" in grid
    calls, out = _run(tmp_path / "wide", "scripts/gpu_profile.sh", PROFILE_S="250",
                      PROBE_SAYS="fastest tf32x3 way: wide")
    (grid,) = [c for c in calls if c.startswith("benchmarks/gpu.py")]
    assert "--tf32x3-way wide" in grid and "fastest tf32x3 way: wide" in out
    calls, out = _run(tmp_path / "short", "scripts/gpu_profile.sh", PROFILE_S="15")
    assert [c.split()[0] for c in calls if not c.startswith("timeout ")] == [
        "scripts/gpu_warm.py"]
    assert out.count("no time left") == 4


def test_host_call(tmp_path):
    """gpu_host.sh: the kernels compiled first; the kept lengths' tests, the defaults'
    and the crossed backward's, tf32x3's, the host's time (again with an older flashgru
    where OLD names one, on its PYTHONPATH), the overlap's span settings, then the B=16
    grid, each within its share of HOST_S; with too little time left a step is skipped,
    not started."""
    calls, _ = _run(tmp_path, "scripts/gpu_host.sh", HOST_S="450", OLD="/old")
    ran = [c for c in calls if not c.startswith("timeout ")]
    assert [c.split()[0] for c in ran] == ["scripts/gpu_warm.py", "-m", "-m", "-m",
                                           "scripts/gpu_host_time.py",
                                           "scripts/gpu_host_time.py",
                                           "scripts/gpu_overlap.py", "benchmarks/gpu.py"]
    assert "kept_lengths" in ran[1] and "overlap_on_gpu" in ran[1] and \
        "default_splits_on_gpu" in ran[2]
    assert "tests/test_tf32x3.py" in ran[3]
    limits = [t for t, c in _limited(calls, "") if not c.startswith("scripts/gpu_warm")]
    # (each its share of what is left: 15%, 35%, 10%, 25%, 30%, 15%, all; a second may
    # pass)
    assert len(limits) == 7 and 62 <= limits[0] <= 67 and 150 < limits[1] <= 156 and \
        limits[-1] > 100
    assert "float32:1024:16" in ran[-1] and "--only-grid" not in ran[-1] and \
        "--overlap-beside" in ran[-1]
    calls, _ = _run(tmp_path / "new", "scripts/gpu_host.sh", HOST_S="450")
    assert sum(c.startswith("scripts/gpu_host_time.py") for c in calls) == 1
    calls, out = _run(tmp_path / "short", "scripts/gpu_host.sh", HOST_S="15")
    assert [c.split()[0] for c in calls if not c.startswith("timeout ")] == [
        "scripts/gpu_warm.py"]
    assert out.count("no time left") == 6
