"""Compile, offline for sm_90 (no GPU), every kernel the probes of a lent-GPU call will
launch, and print each one's registers and spills from ptxas: a check, before spending a
GPU call, that Triton compiles them. Run it with the GPU machine's Triton (3.6, with
torch 2.11): a stamped wait that Triton 3.9 compiled failed in 3.6's layout pass. A side
environment for that:

    python3 -m venv /tmp/t36 && /tmp/t36/bin/pip install torch==2.13.0 triton==3.6.0 numpy \
        && /tmp/t36/bin/pip install --no-deps -e .
    /tmp/t36/bin/python scripts/gpu_compile_check.py scripts/gpu_next.sh scripts/gpu_next_bf16.sh
    /tmp/t36/bin/python scripts/gpu_compile_check.py "gpu_probe.py --stamped"
    /tmp/t36/bin/python scripts/gpu_compile_check.py --benchmark  # gpu_tune.sh's candidates
    /tmp/t36/bin/python scripts/gpu_compile_check.py --project  # triton_gru.project's

Each argument is a probe command ("gpu_probe.py ARGS" or "gpu_probe_backward.py ARGS") or
a call script whose ``probes`` lines name them. A probe's PLAN is read without running it;
each split is resolved as on a 132-multiprocessor GPU (an H100 or H200) and launched, at
its shape, through ``triton_gru.forward`` / ``backward`` with every launch recorded
(scripts/gpu_warm.py), then compiled in a process pool. ``--benchmark`` adds benchmark
mode's candidate splits (``triton_gru._candidates``) at issue 5's grid points, B ∈ {1,
16}, H ∈ {256, 512, 1024}, and at B=8, H=1024 (scripts/gpu_tune.sh's extra point), fp32
and bf16, both formulations. ``--project`` adds the forwards that make their own input
projections (``triton_gru.project``) where the default split allows, fp32 B ∈ {1, 16}, H ∈
{256, 512}, I = H, inference and training, both formulations. Exits 1 if any failed.
"""
import argparse
import contextlib
import io
import itertools
import os
import re
import runpy
import sys
import time
import types

import torch
from gpu_warm import recording, report, warm

import flashgru.backends.triton_gru as tg
from flashgru.backends._triton import splits

SMS = 132
HERE = os.path.dirname(os.path.abspath(__file__))


def probe_commands(arguments: list[str]) -> list[list[str]]:
    """The probe commands, as argv lists, named directly or in call scripts."""
    commands = []
    for argument in arguments:
        if argument.endswith(".sh"):
            with open(argument) as f:
                found = re.findall(r'"\S+ \d+ (gpu_probe\w*\.py[^"]*)"', f.read())
            if not found:
                raise SystemExit(f"{argument}: no probe commands found")
            commands += [c.split() for c in found]
        else:
            commands.append(argument.split())
    return commands


def plan(argv: list[str]):
    """A probe's (PLAN, DTYPE), read by running its module without its main loop."""
    saved = sys.argv
    sys.argv = argv
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            module = runpy.run_path(os.path.join(HERE, argv[0]), run_name="plan")
    finally:
        sys.argv = saved
    return module["PLAN"], module["DTYPE"]


def launch(argv: list[str], batch: int, hidden: int, cfg, dtype: torch.dtype) -> None:
    """Launch one probe's split at its shape (recorded, not run): the forward, and for the
    backward probe the forward with its saved gates, then the backward."""
    backward = "backward" in argv[0]
    default = (tg.choose_backward_config if backward else tg.choose_config)(
        batch, hidden, torch.device("cuda"), dtype)
    cfg = cfg(default) if callable(cfg) else cfg or default
    run(batch, hidden, dtype, cfg, backward, cfg if backward else None)


def run(batch: int, hidden: int, dtype: torch.dtype, cfg, save: bool, backward_cfg,
        reset_after: bool = True) -> None:
    """The forward with split cfg (saving its gates or not), then with backward_cfg the
    backward: launched through triton_gru, recorded."""
    steps = 16
    gi = torch.zeros(steps, batch, 3 * hidden, dtype=dtype)
    h0, w = torch.zeros(batch, hidden, dtype=dtype), torch.zeros(3 * hidden, hidden, dtype=dtype)
    b, lengths = torch.zeros(3 * hidden, dtype=dtype), torch.full((batch,), steps)
    out, saved = tg.forward(gi, h0, w, b, lengths, reset_after, save, cfg)
    if backward_cfg is not None:
        tg.backward(torch.zeros_like(out), h0, w, out, saved, lengths, reset_after,
                    backward_cfg)


def benchmark_candidates() -> None:
    """Launch (recorded) benchmark mode's candidates at issue 5's grid points, as it runs
    them: the forward's for inference and training (its gates saved), and the
    backward's (after the default forward); both formulations (the grid runs torch's,
    reset_after=True)."""
    cuda = torch.device("cuda")
    points = [*itertools.product((1, 16), (256, 512, 1024)), (8, 1024)]  # (gpu_tune.sh's)
    for dtype, (batch, hidden), reset_after in itertools.product(
            (torch.float32, torch.bfloat16), points, (True, False)):
        for save in (False, True):  # (each with its own default, as benchmark mode's
            # inference and training forwards)
            forward = tg.choose_config(batch, hidden, cuda, dtype, save)
            for cfg in tg._candidates(forward, batch, hidden, cuda, dtype, True):
                run(batch, hidden, dtype, cfg, save, None, reset_after)
        default = tg.choose_backward_config(batch, hidden, cuda, dtype)
        for cfg in tg._candidates(default, batch, hidden, cuda, dtype, False):
            run(batch, hidden, dtype, forward, True, cfg, reset_after)


def projecting_forwards() -> None:
    """Launch (recorded) the forwards that make their own input projections (_fused), at
    the points scripts/gpu_overlap.py and the grid time them, and B=1."""
    cuda = torch.device("cuda")
    for (batch, hidden), reset_after, save in itertools.product(
            itertools.product((1, 16), (256, 512)), (True, False), (False, True)):
        cfg = tg._projecting(tg.choose_config(batch, hidden, cuda, torch.float32, save),
                             hidden)
        if cfg is None:
            print(f"B={batch} H={hidden}: the default split makes no projections")
            continue
        x, h0 = torch.zeros(16, batch, hidden), torch.zeros(batch, hidden)
        w, b = torch.zeros(3 * hidden, hidden), torch.zeros(3 * hidden)
        tg._fused(x, w, b, h0, w, b, torch.full((batch,), 16), reset_after, save, cfg)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("commands", nargs="*")
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    parser.add_argument("--benchmark", action="store_true")
    parser.add_argument("--project", action="store_true")
    args = parser.parse_args()
    if tg.INTERPRET:
        raise SystemExit("unset TRITON_INTERPRET: this compiles the kernels, offline")
    # as on an H100 or H200, for the default splits and the launch's checks
    torch.cuda.get_device_properties = lambda device=None: types.SimpleNamespace(
        multi_processor_count=SMS)
    splits._grid_limit = lambda device: SMS
    start = time.perf_counter()
    with recording() as launches:
        for argv in probe_commands(args.commands):
            shapes, dtype = plan(argv)
            for batch, hidden, cfgs in shapes:
                for cfg in cfgs:
                    try:
                        launch(argv, batch, hidden, cfg, dtype)
                    except ValueError as e:  # (the probe prints the same and goes on)
                        print(f"{' '.join(argv)}: B={batch} H={hidden} {cfg}: {e}")
        if args.benchmark:
            benchmark_candidates()
        if args.project:
            projecting_forwards()
    print(f"{len(launches)} kernels to compile, from {len(args.commands)} arguments", flush=True)
    results = warm(launches, args.jobs, offline=True)
    report(launches, results, args.jobs, time.perf_counter() - start, every=True)
    sys.exit(1 if any(r[2] for r in results) else 0)


if __name__ == "__main__":
    main()
