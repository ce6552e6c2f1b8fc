"""scripts/gpu_warm.py, the lent-GPU calls' parallel precompile: what it records from a
command's launches compiles (offline, for sm_90) to the very cache entries that the
command's own launches, with their real arguments, then look up."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]

# A command as the probes are: Triton launches from flashgru, CPU tensors. The forward at
# two lengths of one specialization (both divisible by 16), the backward, and a forward
# that makes its own input projections (tensors among its keyword arguments): three
# kernels.
COMMAND = """
import torch
import flashgru.backends.triton_gru as tg
B, H = 2, 16
w, b, h0 = torch.randn(3 * H, H), torch.randn(3 * H), torch.randn(B, H)
fused = tg._projecting(tg.Config(2, 16, 16, dot=False, resident=True), 8)
for T in %s:
    gi = torch.randn(T, B, 3 * H)
    lengths = torch.full((B,), T, dtype=torch.int64)
    out, saved = tg.forward(gi, h0, w, b, lengths, True, True)
    tg.backward(torch.randn(T, B, H), h0, w, out, saved, lengths, True)
    tg._fused(torch.randn(T, B, 8), torch.randn(3 * H, 8), b, h0, w, b, lengths, True,
              False, fused)
"""

# The same command's launches made for real through the JIT, offline: a warmup with the
# actual tensors and integers instead of the recorded dtypes and integer classes.
RELAUNCH = """
import sys
sys.path.insert(0, %r)
import gpu_warm, triton
from triton.runtime.jit import KernelInterface
triton.runtime.driver.set_active(gpu_warm._Offline())
KernelInterface.__getitem__ = lambda kernel, grid: (
    lambda *args, **kwargs: kernel.warmup(*args, grid=grid, **kwargs))
exec(%r)
"""


def _run(args, cache):
    """Run python with ``args`` in a fresh process, Triton compiling (not interpreting) into
    ``cache``."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def _entries(cache: Path) -> set[str]:
    return {p.name for p in cache.iterdir()} if cache.exists() else set()


def test_warmed_kernels_are_the_ones_the_launches_look_up(tmp_path):
    cache = tmp_path / "cache"
    command = tmp_path / "command.py"
    command.write_text(COMMAND % "(16, 32)")
    # recorded on CPU tensors (no GPU here; no launch runs), compiled for sm_90 in two
    # processes
    warmed = _run([str(ROOT / "scripts/gpu_warm.py"), "--offline", "--jobs", "2",
                   str(command)], cache)
    assert warmed.returncode == 0, warmed.stderr
    assert "gpu_warm: 3 kernels compiled" in warmed.stdout, warmed.stdout
    assert ", 0 failed" in warmed.stdout
    compiled = _entries(cache)
    assert len(compiled) >= 3
    # the real arguments, at a third length of the same specialization: nothing new
    relaunch = RELAUNCH % (str(ROOT / "scripts"), COMMAND % "(48,)")
    again = _run(["-c", relaunch], cache)
    assert again.returncode == 0, again.stderr
    assert _entries(cache) == compiled
    # and a length of another specialization (not divisible by 16) does compile anew
    other = _run(["-c", RELAUNCH % (str(ROOT / "scripts"), COMMAND % "(17,)")], cache)
    assert other.returncode == 0, other.stderr
    assert _entries(cache) > compiled


def test_constexprs_and_launch_options_record_apart():
    """Launches that differ only in a constexpr (block_k 16 or 32, both divisible by 16) or
    in num_warps are distinct kernels: recorded once each, not merged as the runtime
    integers of one specialization are."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gpu_warm
    finally:
        sys.path.pop(0)
    import torch

    import flashgru.backends.triton_gru as tg
    B, H, T = 2, 16, 3
    args = (torch.zeros(T, B, 3 * H), torch.zeros(B, H), torch.zeros(3 * H, H),
            torch.zeros(3 * H), torch.full((B,), T), True, False)
    with gpu_warm.recording() as launches:
        for cfg in (tg.Config(2, 16, 16, dot=False), tg.Config(2, 16, 32, dot=False),
                    tg.Config(2, 16, 16, dot=False, warps=8),
                    tg.Config(2, 16, 16, dot=False)):  # (the first again: nothing new)
            tg.forward(*args, cfg)
    assert sorted((k["BK"], k["num_warps"]) for *_, k in launches.values()) == [
        (16, 4), (16, 8), (32, 4)]


# A launch whose kernel takes more shared memory than an sm_90 block may (16-bit tl.dot
# on 32 units' resident tiles of K=1024: 256 KiB, over 227): it compiles, but the card
# refuses to load it (OutOfResources on an H200, 2026-11-27).
TOO_LARGE = """
import torch
import flashgru.backends.triton_gru as tg
B, H, T = 16, 1024, 16
w = torch.zeros(3 * H, H, dtype=torch.bfloat16)
gi = torch.zeros(T, B, 3 * H, dtype=torch.bfloat16)
h0, b = torch.zeros(B, H, dtype=torch.bfloat16), torch.zeros(3 * H, dtype=torch.bfloat16)
tg.forward(gi, h0, w, b, torch.full((B,), T), True, False,
           tg.Config(16, 32, H, dot=True, warps=8, resident=True))
"""


def test_offline_a_kernel_over_the_shared_memory_limit_fails(tmp_path):
    command = tmp_path / "command.py"
    command.write_text(TOO_LARGE)
    warmed = _run([str(ROOT / "scripts/gpu_warm.py"), "--offline", "--jobs", "1",
                   str(command)], tmp_path / "cache")
    assert warmed.returncode == 0, warmed.stderr
    assert "did not compile" in warmed.stdout and "shared memory" in warmed.stdout, \
        warmed.stdout
    assert "232448" in warmed.stdout and ", 1 failed" in warmed.stdout, warmed.stdout
