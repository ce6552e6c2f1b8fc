"""Time flashgru's backends against torch.nn.GRU on the same weights and input, in one
process, and print times and ratios (a benchmark, not a test).

    python benchmarks/core.py                   # CPU, the DESIGN.md grid
    python benchmarks/core.py --device cuda     # GPU (CUDA events, TF32 off)
    python benchmarks/core.py --grid 1,64,64    # one point: B,T,H
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import flashgru

GRID = [(1, 256, 64), (1, 256, 256), (16, 256, 128), (64, 128, 256)]  # (B, T, H)


def timer(device: torch.device):
    """A function that times fn() in milliseconds: median of repeats after a warm-up."""

    def run(fn, repeats: int) -> float:
        fn()
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                    enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    return run


def candidates(batch, steps, hidden, device):
    """(name, module) pairs sharing one set of weights; the first is the anchor."""
    torch.manual_seed(0)
    ref = torch.nn.GRU(hidden, hidden, device=device)
    mods = [("torch.nn.GRU", ref)]
    for backend in flashgru.BACKENDS:
        mods.append((f"flashgru {backend}", flashgru.GRU.from_torch(ref, backend=backend)))
    paper = flashgru.GRU.from_torch(ref, backend="auto")
    paper.reset_after = False
    mods.append(("flashgru reset_after=False auto", paper))
    return mods


def bench_point(batch, steps, hidden, device, repeats):
    run = timer(device)
    x = torch.randn(steps, batch, hidden, device=device)
    rows = []
    for name, module in candidates(batch, steps, hidden, device):
        with torch.no_grad():
            fwd = run(lambda m=module: m(x), repeats)
        xg = x.clone().requires_grad_()

        def train_step(m=module, xg=xg):
            out, h_n = m(xg)
            (out.sum() + h_n.sum()).backward()

        rows.append((name, fwd, run(train_step, repeats)))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--grid", nargs="*", help="points B,T,H (default: the DESIGN grid)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    grid = [tuple(map(int, p.split(","))) for p in args.grid] if args.grid else GRID
    name = torch.cuda.get_device_name() if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"# flashgru {flashgru.__version__}, torch {torch.__version__}, {name}, fp32")
    print("| B,T,H | module | fwd ms | fwd+bwd ms | fwd vs torch | fwd+bwd vs torch |")
    print("|---|---|---|---|---|---|")
    for batch, steps, hidden in grid:
        rows = bench_point(batch, steps, hidden, device, args.repeats)
        _, f0, b0 = rows[0]
        for label, fwd, both in rows:
            print(f"| {batch},{steps},{hidden} | {label} | {fwd:.2f} | {both:.2f} | "
                  f"{f0 / fwd:.2f}× | {b0 / both:.2f}× |")


if __name__ == "__main__":
    main()
