"""Calls at batch 1 while other processes compete for the cores: each of ``--procs``
processes runs the same GRU call (B=1, T=256, H=256 inference by default) in a loop for
``--seconds`` and reports ms per call (median, 90th percentile, worst), for flashgru's
cpu backend and torch.nn.GRU. One process alone first, as the anchor. Timings, not a
test.

    python benchmarks/contention.py            # 2 processes, 8 s each
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time


def run(which: str, seconds: float, steps: int, hidden: int, queue) -> None:
    import torch

    import flashgru
    torch.manual_seed(0)
    ref = torch.nn.GRU(hidden, hidden)
    model = ref if which == "torch" else flashgru.GRU.from_torch(ref, backend="cpu")
    x = torch.randn(steps, 1, hidden)
    times = []
    with torch.no_grad():
        model(x)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            start = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    queue.put((statistics.median(times), times[int(0.9 * (len(times) - 1))], times[-1],
               len(times)))


def measure(which: str, procs: int, args) -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    workers = [ctx.Process(target=run, args=(which, args.seconds, args.steps, args.hidden,
                                             queue)) for _ in range(procs)]
    for w in workers:
        w.start()
    rows = [queue.get() for _ in workers]
    for w in workers:
        w.join()
    for med, p90, worst, n in rows:
        print(f"{which:>14}, {procs} process(es): {med:8.2f} / {p90:8.2f} / {worst:8.2f} ms "
              f"(median / 90% / worst of {n} calls)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()
    for which in ("cpu", "torch"):
        measure(which, 1, args)
    for which in ("cpu", "torch"):
        measure(which, args.procs, args)


if __name__ == "__main__":
    main()
