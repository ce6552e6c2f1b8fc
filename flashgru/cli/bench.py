"""Time flashgru's backends against torch.nn.GRU: same weights, same input, one process.

Forward (no grad) and forward+backward, median of repeats after a warm-up; CUDA times
come from CUDA events, with TF32 off. Used by ``flashgru bench`` and benchmarks/core.py.
"""

from __future__ import annotations

import statistics
import time

import torch

import flashgru

SMALL_GRID = [(1, 64, 64), (16, 64, 128), (1, 128, 256)]  # (B, T, H)
DESIGN_GRID = [(1, 256, 64), (1, 256, 256), (16, 256, 128), (64, 128, 256)]


def median_ms(fn, repeats: int, device: torch.device) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
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


def runnable(device: torch.device) -> tuple[list[str], dict[str, str]]:
    """The backends timed on ``device``, and why each other one is not: not installed, not
    for this device, or (triton off CUDA) only its interpreter, whose times say nothing."""
    names, skipped = [], {}
    for name, backend in flashgru.BACKENDS.items():
        why = backend.missing()
        if why is None and backend.devices is not None and device.type not in backend.devices:
            why = f"it runs on {'/'.join(backend.devices)}"
        if why is None and name == "triton" and device.type != "cuda":
            why = "off CUDA its kernels run in Triton's interpreter, which times nothing"
        if why is None:
            names.append(name)
        else:
            skipped[name] = why
    return names, skipped


def modules(hidden: int, device: torch.device):
    """(label, module) pairs sharing one set of weights; the first is the anchor."""
    torch.manual_seed(0)
    ref = torch.nn.GRU(hidden, hidden, device=device)
    out = [("torch.nn.GRU", ref)]
    out += [(f"flashgru {b}", flashgru.GRU.from_torch(ref, backend=b))
            for b in runnable(device)[0]]
    paper = flashgru.GRU.from_torch(ref)
    paper.reset_after = False
    out.append(("flashgru reset_after=False", paper))
    return out


def run_grid(grid, device: torch.device, repeats: int = 5, progress=None) -> list[dict]:
    """One row per grid point and module: times in ms and speed-ups over the anchor."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows = []
    for batch, steps, hidden in grid:
        x = torch.randn(steps, batch, hidden, device=device)
        xg = x.clone().requires_grad_()
        anchor = None
        for label, module in modules(hidden, device):
            with torch.no_grad():
                fwd = median_ms(lambda m=module, x=x: m(x), repeats, device)

            def train_step(m=module, xg=xg):
                out, h_n = m(xg)
                (out.sum() + h_n.sum()).backward()

            both = median_ms(train_step, repeats, device)
            anchor = anchor or (fwd, both)
            rows.append({"point": f"{batch},{steps},{hidden}", "module": label, "fwd_ms": fwd,
                         "train_ms": both, "fwd_speedup": anchor[0] / fwd,
                         "train_speedup": anchor[1] / both})
            if progress:
                progress()
    return rows


def describe(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    return f"flashgru {flashgru.__version__}, torch {torch.__version__}, {name}, fp32"


def markdown(rows: list[dict], device: torch.device) -> str:
    lines = [f"# {describe(device)}", "",
             "| B,T,H | module | fwd ms | fwd+bwd ms | fwd vs torch | fwd+bwd vs torch |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['point']} | {r['module']} | {r['fwd_ms']:.2f} | {r['train_ms']:.2f} | "
              f"{r['fwd_speedup']:.2f}× | {r['train_speedup']:.2f}× |" for r in rows]
    skipped = runnable(device)[1]
    if skipped:
        lines += [""] + [f"Not timed here: flashgru {name} ({why})."
                         for name, why in skipped.items()]
    return "\n".join(lines) + "\n"
