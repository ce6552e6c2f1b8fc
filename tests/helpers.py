"""Shared test helpers: the central list of backends, by-name comparison, modules with
shared weights and random inputs in every form torch.nn.GRU takes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import flashgru

# Every backend of flashgru that runs natively on this machine's CPU (BACKENDS) or GPU
# (BACKENDS_CUDA), by the formulations it runs. The Triton backend in Triton's CPU
# interpreter (no GPU here) is far too slow for the broad sweeps: tests/test_triton.py tests
# it there, with a sample of the sweeps.
INTERPRETED = {"triton"} if os.environ.get("TRITON_INTERPRET") == "1" and \
    flashgru.BACKENDS["triton"].missing() is None else set()
_NATIVE = [n for n, b in flashgru.BACKENDS.items() if b.missing() is None and n not in INTERPRETED]
BACKENDS = [n for n in _NATIVE if flashgru.BACKENDS[n].devices in (None, ("cpu",))]
BACKENDS_RESET_BEFORE = [n for n in BACKENDS if flashgru.BACKENDS[n].reset_before]
BACKENDS_DOUBLE_BACKWARD = [n for n in BACKENDS if flashgru.BACKENDS[n].double_backward]
BACKENDS_CUDA = [n for n in _NATIVE if flashgru.BACKENDS[n].devices in (None, ("cuda",))]
FORMS = ["padded", "unbatched", "packed_sorted", "packed_unsorted"]


def assert_close(name: str, ref: torch.Tensor, got: torch.Tensor, atol: float, rtol: float = 0.0):
    """Compare two tensors by name; the message gives the max abs and relative error."""
    assert got is not None, f"{name}: missing"
    assert ref.shape == got.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert ref.dtype == got.dtype, f"{name}: dtype {got.dtype} != {ref.dtype}"
    err = (ref - got).abs().max().item() if ref.numel() else 0.0
    scale = ref.abs().max().item() if ref.numel() else 0.0
    assert err <= atol + rtol * scale, f"{name}: max abs err {err:.3e} (max |ref| {scale:.3e})"


def core_inputs(g, steps, batch, hidden, dtype):
    """gi (T, B, 3H), h0 (B, H), w_hh (3H, H), b_hh (3H,) for a recurrent core: random
    (from generator ``g``), wanting gradients."""
    return (torch.randn(*shape, generator=g, dtype=dtype).requires_grad_()
            for shape in ((steps, batch, 3 * hidden), (batch, hidden), (3 * hidden, hidden),
                          (3 * hidden,)))


def check_core(core, ref_core, g, gi, h0, w, b, lengths, reset_after, tol, grad_tol):
    """``core`` against ``ref_core`` on the same arguments: the output (within ``tol``),
    every gradient by name for a random upstream gradient (absolute and relative
    ``grad_tol``), and the output again without autograd (the inference path)."""
    ref = ref_core(gi, h0, w, b, lengths, reset_after)
    out = core(gi, h0, w, b, lengths, reset_after)
    assert_close("out", ref, out, tol)
    dout = torch.randn(ref.shape, generator=g, dtype=ref.dtype)
    for name, r, o in zip(("dgi", "dh0", "dw_hh", "db_hh"),
                          torch.autograd.grad(ref, (gi, h0, w, b), dout),
                          torch.autograd.grad(out, (gi, h0, w, b), dout), strict=True):
        assert_close(name, r, o, grad_tol, rtol=grad_tol)
    with torch.no_grad():
        assert_close("out", ref, core(gi, h0, w, b, lengths, reset_after), tol)


def in_forked_child(target):
    """What ``target(queue)`` puts on its queue, run in a forked child; asserts that the
    child ends (within 120 s, never hanging) and exits cleanly."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=target, args=(queue,))
    child.start()
    child.join(timeout=120)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive and child.exitcode == 0, (
        "the child hung (killed after 120 s)" if alive else
        f"the child exited with {child.exitcode}")
    return queue.get(timeout=5)


def make_input(form, steps, batch, input_size, batch_first, dtype, seed=0, device="cpu"):
    """(input for both modules, lengths or None, leaf tensor to take the gradient of)."""
    g = torch.Generator().manual_seed(seed)
    if form == "unbatched":
        x = torch.randn(steps, input_size, generator=g, dtype=dtype)
        x = x.to(device).requires_grad_()
        return x, None, x
    shape = (batch, steps, input_size) if batch_first else (steps, batch, input_size)
    x = torch.randn(*shape, generator=g, dtype=dtype).to(device).requires_grad_()
    if form == "padded":
        return x, None, x
    lengths = torch.randint(1, steps + 1, (batch,), generator=g)
    lengths[0] = steps
    sorted_ = form == "packed_sorted"
    if sorted_:
        lengths = lengths.sort(descending=True).values
    packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=sorted_)
    return packed, lengths, x


def padded(output):
    """An output as a plain tensor (a PackedSequence is padded, time-major)."""
    if isinstance(output, torch.Tensor):
        return output
    return pad_packed_sequence(output)[0]


# Slow subprocesses that tests read, by the name of the fixture that reads them:
# (argv, env, cwd). One process of the test run starts each (with pytest-xdist, the first
# worker to ask); its output goes to files in the run's job folder (JOBS, below), where
# any worker reads it.
_BACKGROUND: dict[str, tuple] = {}
# The jobs this process started (their wrappers, by their files' prefix), kept until they
# are reaped: a Popen dropped while its process runs warns (ResourceWarning) in whichever
# test collects it.
_STARTED: dict[str, subprocess.Popen] = {}

# The run's job folder: made by the process that owns the run (conftest.pytest_configure;
# pytest-xdist's workers inherit its name through the environment).
JOBS = "FLASHGRU_TEST_JOBS"

# Runs a job: argv from argv[1] (JSON), stdout and stderr to PREFIX.out and .err, and its
# exit status to PREFIX.rc last (written whole, then renamed, so a reader sees all or none).
_WRAPPER = """
import json, os, subprocess, sys
prefix = sys.argv[2]
with open(prefix + ".out", "w") as out, open(prefix + ".err", "w") as err:
    code = subprocess.call(json.loads(sys.argv[1]), stdout=out, stderr=err)
with open(prefix + ".rc.part", "w") as rc:
    rc.write(str(code))
os.replace(prefix + ".rc.part", prefix + ".rc")
"""


def jobs_folder():
    """The run's job folder (made here if no conftest made one: a helper used alone)."""
    if JOBS not in os.environ:
        os.environ[JOBS] = tempfile.mkdtemp(prefix="flashgru-tests-")
    return os.environ[JOBS]


def background(name, argv, env=None, cwd=None):
    """Register a slow subprocess (an offline compile, a script's smoke run) under the name
    of the fixture that reads its output. conftest.py starts it once the session's tests
    are collected, if one selected uses that fixture, so that it runs on a free core
    beside the tests before it; background_output waits for it."""
    _BACKGROUND.setdefault(name, (argv, env, cwd))


def start_background(names):
    """Start the registered subprocesses among ``names`` that no process of this run has
    started (the first to create NAME.lock in the job folder starts it, in a session of its
    own so that it outlives a worker that ends first and can be killed whole)."""
    folder = jobs_folder()
    for name in names:
        job = _BACKGROUND.get(name)
        if job is None:
            continue
        prefix = os.path.join(folder, name)
        try:
            os.close(os.open(prefix + ".lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        argv, env, cwd = job
        proc = subprocess.Popen([sys.executable, "-c", _WRAPPER, json.dumps(argv), prefix],
                                env=env, cwd=cwd, start_new_session=True)
        _STARTED[prefix] = proc
        with open(prefix + ".pid.part", "w") as f:
            f.write(str(proc.pid))
        os.replace(prefix + ".pid.part", prefix + ".pid")


def script_smoke(name, script, timeout=300):
    """A module-scoped fixture named ``name`` giving (returncode, stdout, stderr) of
    ``python SCRIPT --smoke`` (a path from the repository's root) under Triton's
    interpreter, registered to start beside the suite (``background``) where the triton
    backend can run here; elsewhere its tests are skipped."""
    runs = flashgru.BACKENDS["triton"].missing() is None
    if runs:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        background(name, [sys.executable, script, "--smoke"], cwd=root,
                   env={**os.environ,
                        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1")})

    @pytest.fixture(scope="module", name=name)
    def smoke():
        if not runs:
            pytest.skip("needs Triton, and a GPU or TRITON_INTERPRET=1")
        return background_output(name, timeout=timeout)

    return smoke


def background_output(name, timeout):
    """(returncode, stdout, stderr) of the subprocess registered as ``name`` (started now if
    no process of the run has), waiting at most ``timeout`` seconds more (then killed:
    TimeoutExpired)."""
    start_background([name])
    prefix = os.path.join(jobs_folder(), name)
    deadline = time.monotonic() + timeout
    while not os.path.exists(prefix + ".rc"):
        if time.monotonic() > deadline:
            _kill(prefix)
            raise subprocess.TimeoutExpired(_BACKGROUND[name][0], timeout)
        time.sleep(0.1)
    with open(prefix + ".rc") as rc, open(prefix + ".out") as out, open(prefix + ".err") as err:
        return int(rc.read()), out.read(), err.read()


def _kill(prefix):
    """Kill a job's session (the wrapper and what it runs) unless it has ended."""
    try:
        with open(prefix + ".pid") as f:
            os.killpg(int(f.read()), signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError):
        pass


def stop_background():
    """The run is over (its owner only): kill every job still running, remove the folder."""
    folder = os.environ.get(JOBS)
    if folder is None or not os.path.isdir(folder):
        return
    for entry in os.listdir(folder):
        if entry.endswith(".lock"):
            prefix = os.path.join(folder, entry[:-len(".lock")])
            if not os.path.exists(prefix + ".rc"):
                _kill(prefix)
            reap_background(prefix, wait=5)
    shutil.rmtree(folder, ignore_errors=True)


def reap_background(prefix=None, wait: float = 0):
    """Collect the exit status of the job at ``prefix`` (all: None) if this process
    started it, waiting at most ``wait`` seconds (a job still running is left to the
    run's owner, which kills it)."""
    for key in [prefix] if prefix is not None else list(_STARTED):
        proc = _STARTED.get(key)
        if proc is None:
            continue
        try:
            if wait:
                proc.wait(timeout=wait)
            else:
                proc.poll()
        except subprocess.TimeoutExpired:
            continue
        if proc.returncode is not None:
            del _STARTED[key]
