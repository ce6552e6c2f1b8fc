"""Time flashgru.MinGRU (forward, and forward+backward) against the log-space torch minGRU
of the ``mingru-pytorch`` package, in one process, and print a markdown table with ratios
(a benchmark, not a test).

    python benchmarks/mingru.py                       # CUDA if present (issue 6's shapes), else CPU
    python benchmarks/mingru.py --device cpu          # B,T,H = 8,1024,256 and 1,4096,64
    python benchmarks/mingru.py --shapes 8,4096,256   # any B,T,H points
    python benchmarks/mingru.py --threads 1           # torch's CPU threads

On a CPU shared with other busy processes, torch's intra-op threads wait on each other and
small ops slow down by up to 100× (MinGRU's chunked scan runs ~2√T small ops; the log-space
one a few large ones): measure on an idle machine, or with --threads 1.

``mingru-pytorch`` is a benchmark-only dependency (``pip install mingru-pytorch``); without
it the script times flashgru alone and says so. Its math is not flashgru's: it passes the
candidate through g() and scans in log space (the paper's log-space variant, h > 0), while
flashgru.MinGRU runs the plain equations (h̃ = W_h x) with a scan on the values. Both get
the same weights (its ``to_hidden_and_gate`` = [W_h; W_z], no bias; ours [W_z; W_h]), but
the outputs differ, so this compares speed only.
"""

from __future__ import annotations

import argparse
import time

import torch

import flashgru

try:
    from minGRU_pytorch.minGRU import minGRU
except ImportError:
    minGRU = None

CUDA_SHAPES = [(8, 4096, 256), (1, 32768, 64)]
CPU_SHAPES = [(8, 1024, 256), (1, 4096, 64)]


def _pair(hidden: int, device, impl: str):
    """(theirs or None, ours) with the same weights."""
    ours = flashgru.MinGRU(hidden, hidden, bias=False, batch_first=True, device=device,
                           impl=impl)
    if minGRU is None:
        return None, ours
    theirs = minGRU(hidden).to(device)
    w_h, w_z = theirs.to_hidden_and_gate.weight.detach().chunk(2)
    with torch.no_grad():
        ours.weight_ih_l0.copy_(torch.cat([w_z, w_h]))
    return theirs, ours


def _clock(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1e3


def _calls(model, x, ours: bool):
    def forward():
        with torch.no_grad():
            model(x)

    def both():
        out = model(x)[0] if ours else model(x)
        out.sum().backward()

    return forward, both


def measure(shape, device, repeats: int, impl: str) -> dict:
    """Milliseconds, min over ``repeats`` rounds that alternate the two models."""
    batch, steps, hidden = shape
    theirs, ours = _pair(hidden, device, impl)
    x = torch.randn(batch, steps, hidden, device=device, requires_grad=True)
    runs = {"ours": _calls(ours, x, True)}
    if theirs is not None:
        runs["theirs"] = _calls(theirs, x, False)
    best = {}
    for round_ in range(repeats + 1):  # round 0 warms up and is dropped
        for name, (forward, both) in runs.items():
            for kind, fn in (("fwd", forward), ("fwd+bwd", both)):
                ms = _clock(fn, device)
                if round_:
                    best[(name, kind)] = min(best.get((name, kind), float("inf")), ms)
    return best


def markdown(rows, device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{torch.get_num_threads()} threads"
    lines = [f"device: {device} ({name}), torch {torch.__version__}",
             "", "| B,T,H | MinGRU fwd | MinGRU fwd+bwd | mingru-pytorch fwd | "
             "mingru-pytorch fwd+bwd | speed-up fwd | speed-up fwd+bwd |",
             "|---|---|---|---|---|---|---|"]
    for shape, best in rows:
        ours = [best[("ours", k)] for k in ("fwd", "fwd+bwd")]
        theirs = [best.get(("theirs", k)) for k in ("fwd", "fwd+bwd")]
        cells = [f"{v:.2f}" for v in ours]
        cells += [f"{v:.2f}" if v else "—" for v in theirs]
        cells += [f"{t / o:.1f}×" if t else "—" for t, o in zip(theirs, ours, strict=True)]
        lines.append(f"| {','.join(map(str, shape))} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("ms, min over rounds; speed-up = mingru-pytorch time / MinGRU time.")
    if minGRU is None:
        lines.append("mingru-pytorch is not installed (pip install mingru-pytorch): "
                     "its columns are empty.")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", nargs="*", help="points B,T,H (default: per device)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--impl", default="auto", help="flashgru.scan impl for MinGRU")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    default = CUDA_SHAPES if device.type == "cuda" else CPU_SHAPES
    shapes = [tuple(map(int, s.split(","))) for s in args.shapes] if args.shapes else default
    torch.manual_seed(0)
    rows = [(shape, measure(shape, device, args.repeats, args.impl)) for shape in shapes]
    print(markdown(rows, device))


if __name__ == "__main__":
    main()
