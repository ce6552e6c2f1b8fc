"""Compile the Triton kernels some commands will launch, in parallel over this machine's
cores, before the commands run.

A lent GPU's machine starts bare, so each probe compiles every split it times, one after
another, inside its own timeout: ~35 s of gpu_next.sh's call (~60 kernels at
~0.5 s each on one core, measured offline). This first runs each command
with every Triton launch recorded instead of run, then compiles the distinct kernels in a
process pool (``JITFunction.warmup``) into Triton's on-disk cache, where the commands,
run afterwards as usual, find them.

    python scripts/gpu_warm.py "scripts/gpu_probe.py --stamped" "-m pytest -q tests -k gpu"
    python scripts/gpu_warm.py --offline COMMAND  # no GPU: for sm_90 (CPU tensors)

While recording, no kernel runs: what the commands compute is meaningless, so their output
is hidden and their failures ignored. ``--offline`` compiles for sm_90 instead of the
current device, with no GPU (the commands' tensors on the CPU, Triton not interpreting):
how this tool is tested, and what scripts/gpu_compile_check.py builds on. A launch that
fails to compile is reported and left to its command, which compiles it again and says
why.
"""
import argparse
import contextlib
import importlib
import inspect
import io
import os
import re
import runpy
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch
import triton
from triton.runtime.jit import KernelInterface


def _int_class(v: int) -> tuple:
    """What Triton specializes an integer argument on: 1, divisibility by 16, its width."""
    return (v == 0, v == 1, v % 16 == 0, -2 ** 31 <= v < 2 ** 31, v >= 2 ** 63)


def _arg(a):
    """(what a launch compiles for, what warmup() is given): a tensor by its dtype and
    16-byte alignment, an integer by its class (_int_class), anything else as it is."""
    if isinstance(a, torch.Tensor):
        aligned = a.data_ptr() % 16 == 0
        return ("tensor", a.dtype, aligned), ("tensor", a.dtype, aligned)
    if isinstance(a, int) and not isinstance(a, bool):
        return ("int", _int_class(a)), a
    return _value(a)


def _value(a):
    """_arg's pair for an argument that compiles by its value."""
    return ("value", repr(a)), a


@contextlib.contextmanager
def recording():
    """Within it, every Triton launch is recorded, not run: yields {key: (module, name,
    args, kwargs)}, one per distinct compile."""
    launches = {}

    def launcher(kernel, grid):
        def launch(*args, **kwargs):
            fn = kernel.fn
            # a runtime argument by what it is specialized on; a constexpr or a launch
            # option (num_warps, ...) by its value: each value compiles apart
            params = inspect.signature(fn).parameters
            runtime = {n for n, p in params.items() if "constexpr" not in str(p.annotation)}
            pairs = [_arg(a) if n in runtime else _value(a)
                     for n, a in zip(params, args, strict=False)]  # (then kwargs)
            kw = {k: _arg(v) if k in runtime else _value(v) for k, v in kwargs.items()}
            key = (fn.__module__, fn.__name__, tuple(p[0] for p in pairs),
                   tuple(sorted((k, v[0]) for k, v in kw.items())))
            launches.setdefault(key, (fn.__module__, fn.__name__, [p[1] for p in pairs],
                                      {k: v[1] for k, v in kw.items()}))
        return launch

    getitem = KernelInterface.__getitem__
    KernelInterface.__getitem__ = launcher
    try:
        yield launches
    finally:
        KernelInterface.__getitem__ = getitem


def record(commands: list[str]) -> dict:
    """Run each command ("path.py args" or "-m module args") in this process ``recording``."""
    argv, path = sys.argv, list(sys.path)
    with recording() as launches:
        for command in commands:
            words = shlex.split(command)
            sys.argv = words[1:] if words[0] == "-m" else words
            if words[0] != "-m":
                sys.path[0] = os.path.dirname(os.path.abspath(words[0]))
            try:
                with contextlib.redirect_stdout(io.StringIO()), \
                        contextlib.redirect_stderr(io.StringIO()):
                    if words[0] == "-m":
                        runpy.run_module(words[1], run_name="__main__", alter_sys=True)
                    else:
                        runpy.run_path(words[0], run_name="__main__")
            except BaseException as e:  # noqa: BLE001 (garbage numbers: anything may fail)
                if isinstance(e, KeyboardInterrupt):
                    raise
            finally:
                sys.argv, sys.path[:] = argv, path
    return launches


class _Offline:
    """A driver that targets sm_90 with no GPU (``--offline``): compiles, launches nothing."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget
        return GPUTarget("cuda", 90, 32)


OFFLINE = False  # (in a worker: whether it compiles for sm_90 with no GPU)

# The most shared memory a block may take on sm_90 (an H100's and an H200's 227 KiB), the
# limit Triton checks only when it loads a kernel on the card: offline, a kernel over it
# compiles but would fail there (OutOfResources), so it counts as failed here.
SM90_MAX_SHARED = 232448


def _start(offline: bool):
    global OFFLINE
    OFFLINE = offline
    if offline:
        triton.runtime.driver.set_active(_Offline())


def _usage(kernel, offline: bool) -> str:
    """A compiled kernel's registers per thread and spilled bytes (the driver's, or
    offline ptxas's for sm_90a), and its shared memory."""
    if not offline:
        kernel._init_handles()
        return (f"{kernel.n_regs} registers, {kernel.n_spills} bytes spilled, "
                f"{kernel.metadata.shared} bytes shared")
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "k.ptx")
        with open(ptx, "w") as f:
            f.write(kernel.asm["ptx"])
        from triton.backends.nvidia.compiler import get_ptxas  # (the one Triton uses)
        info = subprocess.run([get_ptxas(90).path, "-v", "--gpu-name", "sm_90a", ptx,
                               "-o", os.path.join(tmp, "k.cubin")],
                              capture_output=True, text=True).stderr
    regs = re.search(r"Used (\d+) registers", info)
    spills = re.search(r"(\d+) bytes spill stores", info)
    return (f"{regs and regs.group(1)} registers, {spills and spills.group(1)} bytes spilled, "
            f"{kernel.metadata.shared} bytes shared")


def _given(a, keyword: bool = False):
    """What warmup() is given for a recorded argument (_arg): for a tensor, its dtype where
    it was 16-byte aligned (warmup wraps a positional one; a keyword one, here), else a
    misaligned tensor of that dtype; anything else as it is."""
    if not (isinstance(a, tuple) and a[:1] == ("tensor",)):
        return a
    _, dtype, aligned = a
    if aligned:
        from triton.runtime.jit import MockTensor
        return MockTensor.wrap_dtype(dtype) if keyword else dtype
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.empty(2, dtype=dtype, device=device)[1:]


def _compile(launch) -> tuple[str, float, str | None, str]:
    """Compile one recorded launch (in a worker): (its name and constexprs, seconds, error
    or None, its registers and spills)."""
    module, name, args, kwargs = launch
    first = next((str(a[1]).removeprefix("torch.") for a in args
                  if isinstance(a, tuple) and a[:1] == ("tensor",)), "")  # (its dtype)
    label = f"{name}[{first}]({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
    start = time.perf_counter()
    try:
        kernel = getattr(importlib.import_module(module), name)
        compiled = kernel.warmup(*(_given(a) for a in args), grid=(1,),
                                 **{k: _given(v, keyword=True) for k, v in kwargs.items()})
        seconds = time.perf_counter() - start
        if OFFLINE and compiled.metadata.shared > SM90_MAX_SHARED:
            return label, seconds, (f"OutOfResources: shared memory {compiled.metadata.shared}"
                                    f" bytes, sm_90's limit {SM90_MAX_SHARED}"), ""
        return label, seconds, None, _usage(compiled, OFFLINE)
    except Exception as e:  # noqa: BLE001 (its command compiles it again and says why)
        return label, time.perf_counter() - start, f"{type(e).__name__}: {str(e)[:300]}", ""


def warm(launches: dict, jobs: int, offline: bool) -> list:
    """Compile every launch over ``jobs`` worker processes: [(label, seconds, error,
    usage)], as _compile."""
    os.environ.pop("TRITON_INTERPRET", None)  # (the workers compile for real)
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_start,
                             initargs=(offline,)) as pool:
        return list(pool.map(_compile, launches.values()))


def report(launches: dict, results: list, jobs: int, seconds: float, every: bool = False):
    """Print the launches that did not compile (``every``: each launch, with its registers
    and spills), then a line of totals."""
    for label, took, error, usage in results:
        if error:
            print(f"gpu_warm: did not compile ({took:.1f} s): {label}: {error}")
        elif every:
            print(f"gpu_warm: {usage} ({took:.1f} s): {label}")
    print(f"gpu_warm: {len(launches)} kernels compiled in {seconds:.1f} s on {jobs} processes"
          f" ({sum(r[1] for r in results):.1f} s of compiling), "
          f"{sum(bool(r[2]) for r in results)} failed", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("commands", nargs="+")
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    parser.add_argument("--offline", action="store_true")
    args = parser.parse_args()
    start = time.perf_counter()
    launches = record(args.commands)
    print(f"gpu_warm: recorded in {time.perf_counter() - start:.1f} s", flush=True)
    start = time.perf_counter()
    results = warm(launches, args.jobs, args.offline) if launches else []
    report(launches, results, args.jobs, time.perf_counter() - start)


if __name__ == "__main__":
    main()
