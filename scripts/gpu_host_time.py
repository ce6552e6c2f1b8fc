"""The host's time in a call of flashgru.GRU(backend="triton") against torch.nn.GRU's
(cuDNN), at issue 5's B=16 points: at T=512 a call alone from an idle card (what
benchmarks/gpu.py times: the host's time before the first kernel counts), the host's own
time per call (measured while the card is kept busy, so that no call waits for it), and
short calls back to back (T=1 and 4, host-bound: where backends.TRITON_MIN_STEPS
sends calls to cuDNN). Run it with an older flashgru on PYTHONPATH
to compare versions on one card.
A diagnostic for a lent GPU, not a test.

    python scripts/gpu_host_time.py [--profile]
    TRITON_INTERPRET=1 python scripts/gpu_host_time.py --smoke

``--profile``: then cProfile's table of the host's Python in the first point's inference
and training calls at T=512 (the card kept busy), by own time and by total time.
"""
import cProfile
import pstats
import statistics
import sys
import time

import torch
from gpu_timing import per_call

import flashgru

SMOKE = "--smoke" in sys.argv
dev = "cpu" if SMOKE else "cuda"
CUDA = torch.cuda.is_available() and not SMOKE
torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
POINTS = [(2, 8, torch.float32)] if SMOKE else [
    (16, 1024, torch.bfloat16), (16, 512, torch.float32), (16, 1024, torch.float32),
    (16, 512, torch.bfloat16)]
LONG = 8 if SMOKE else 512


def alone(fn, reps: int = 15) -> float:
    """Median µs of one call from an idle card (CUDA events; benchmarks/gpu.py's way)."""
    fn()
    if not CUDA:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e6
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end) * 1e3)
    return statistics.median(times)


def host(fn, calls: int = 1 if SMOKE else 20, reps: int = 1 if SMOKE else 5) -> float:
    """Median µs of the host's own time per call, the card kept busy behind a sleep
    queued first (so that no call waits for the GPU)."""
    fn()
    times = []
    for _ in range(reps):
        if CUDA:
            torch.cuda.synchronize()
            torch.cuda._sleep(int(2e8))  # (~0.1 s of the GPU's clock: the queue ahead)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) * 1e6 / calls)
    if CUDA:
        torch.cuda.synchronize()
    return statistics.median(times)


def calls(module, steps, batch, hidden, dtype):
    x = torch.randn(steps, batch, hidden, device=dev, dtype=dtype)
    xg = x.detach().requires_grad_()
    dout = torch.randn(steps, batch, hidden, device=dev, dtype=dtype)

    def infer():
        with torch.no_grad():
            module(x)

    def train():
        module(xg)[0].backward(dout)

    return infer, train


print(f"flashgru from {flashgru.__file__}")
for batch, hidden, dtype in POINTS:
    torch.manual_seed(0)
    ref = torch.nn.GRU(hidden, hidden, device=dev, dtype=dtype)
    ref.flatten_parameters()
    ours = flashgru.GRU.from_torch(ref, backend="triton")
    name = f"{str(dtype)[6:]:>8} B={batch} H={hidden:<4}"
    rows = {}
    for way, module in (("cuDNN", ref), ("flashgru", ours)):
        infer, train = calls(module, LONG, batch, hidden, dtype)
        rows[way] = [alone(infer) / LONG, alone(train) / LONG, host(infer), host(train)]
        for steps in (1, 4):
            rows[way] += [per_call(fn, 30) for fn in calls(module, steps, batch, hidden,
                                                           dtype)]
    print(f"---- {name}: T={LONG} alone µs/step (inference, training), host µs a call at "
          f"T={LONG} (inference, training), T=1 and T=4 back to back µs a call (inference, "
          f"training)")
    for way, r in rows.items():
        ratio = "" if way == "cuDNN" else (
            f"   {rows['cuDNN'][0] / r[0]:.2f}x / {rows['cuDNN'][1] / r[1]:.2f}x cuDNN")
        print(f"{name} {way:9s} {r[0]:7.2f} {r[1]:7.2f}   host {r[2]:7.1f} {r[3]:7.1f}"
              f"   T=1 {r[4]:7.1f} {r[5]:7.1f}   T=4 {r[6]:7.1f} {r[7]:7.1f}{ratio}",
              flush=True)


if "--profile" in sys.argv:
    batch, hidden, dtype = POINTS[0]
    torch.manual_seed(0)
    module = flashgru.GRU(hidden, hidden, backend="triton", device=dev, dtype=dtype)
    for kind, fn in zip(("inference", "training"), calls(module, LONG, batch, hidden, dtype),
                        strict=True):
        fn()
        profiler = cProfile.Profile()
        if CUDA:
            torch.cuda.synchronize()
            torch.cuda._sleep(int(4e8))
        profiler.enable()
        for _ in range(2 if SMOKE else 40):
            fn()
        profiler.disable()
        if CUDA:
            torch.cuda.synchronize()
        for order in ("tottime", "cumulative"):
            print(f"---- host Python, {kind} calls at T={LONG} (cProfile, by {order})")
            pstats.Stats(profiler).sort_stats(order).print_stats(28)
