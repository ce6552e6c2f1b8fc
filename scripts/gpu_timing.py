"""The timer the GPU diagnostics in scripts/ share."""
import torch


def per_step(fn, steps: int, reps: int = 10) -> float:
    """Median µs per step of fn() over ``reps`` CUDA-event timings after one warm-up; NaN
    off CUDA (the scripts' --smoke runs under the interpreter)."""
    fn()
    if not torch.cuda.is_available():
        return float("nan")
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / steps)
    return sorted(times)[len(times) // 2]


def interleaved(fns: dict, steps: int, rounds: int = 4, reps: int = 5) -> dict:
    """Median µs per step of each fn, timed in turn over ``rounds`` rounds (so that a
    drift of the card's clocks falls on all of them alike); NaN off CUDA."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(per_step(fn, steps, reps))
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def per_call(fn, calls: int = 50, reps: int = 5) -> float:
    """Median µs per call of ``calls`` calls of fn() back to back, as a training loop makes
    them (the host's work for one call overlaps the GPU's for the one before; CUDA
    events around the whole run); NaN off CUDA."""
    fn()
    if not torch.cuda.is_available():
        return float("nan")
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return sorted(times)[len(times) // 2]
