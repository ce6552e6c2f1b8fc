"""The parallel-in-time backend (Newton on the whole trajectory) against the sequential
GRU, same weights and input, in one process: Newton iterations, the largest error
against torch.nn.GRU in float64, and the time of forward and forward+backward.

On CUDA the anchor is cuDNN (torch.nn.GRU); on the CPU torch.nn.GRU and flashgru's
fused `cpu` backend. Shapes: the issue's (B=1 and 8, T=32768, H=64; recurrent weights at
torch's init and 3× it), a crossover sweep over T and H, and T=65536, which cuDNN
refuses.

    python benchmarks/parallel.py            # CUDA if available, else a reduced CPU set
    python benchmarks/parallel.py --quick    # fewer points
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import flashgru
from flashgru import scan
from flashgru.backends import parallel


def timed(fn, device, reps=5) -> float:
    """Median milliseconds of fn() after one warm-up."""
    fn()
    times = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def point(batch, steps, hidden, scale, device, jacobians, anchors, reps):
    torch.manual_seed(0)
    ref = torch.nn.GRU(hidden, hidden, device=device)
    with torch.no_grad():
        ref.weight_hh_l0.mul_(scale)
    x = torch.randn(steps, batch, hidden, device=device)
    dout = torch.randn(steps, batch, hidden, device=device)
    exact = None
    if steps < 65536 or device != "cuda":  # cuDNN refuses the float64 reference there too
        with torch.no_grad():
            exact = copy.deepcopy(ref).double()(x.double())[0]
    rows = []
    for name in anchors + [f"parallel/{j}" for j in jacobians]:
        backend, _, jac = name.partition("/")
        jac, _, unfused = jac.partition("-")  # "dense-unfused": the solver's torch ops
        parallel.FUSED = "auto" if not unfused else False
        module = flashgru.GRU.from_torch(ref, backend=backend)
        with parallel.options(jacobian=jac or "dense"):
            with torch.no_grad():
                out = module(x)[0]
                stats = parallel.last_stats() if jac else None
                fwd = timed(lambda m=module: m(x), device, reps)
            xg = x.detach().requires_grad_()
            fb = timed(lambda m=module, xg=xg: m(xg)[0].backward(dout), device, reps)
        err = (out.double() - exact).abs().max().item() if exact is not None else float("nan")
        rows.append(dict(name=name, fwd=fwd, fb=fb, err=err, stats=stats))
    parallel.FUSED = "auto"
    base = rows[0]
    for r in rows:
        it = "" if r["stats"] is None else (
            f" iters {r['stats'].iterations}"
            + (f" (sequential from {r['stats'].sequential_from})"
               if r["stats"].sequential_from is not None else ""))
        print(f"B={batch} T={steps} H={hidden} W_hh×{scale:g} {r['name']:>18}: fwd "
              f"{r['fwd']:9.2f} ms (×{base['fwd'] / r['fwd']:5.2f})  fwd+bwd {r['fb']:9.2f} ms "
              f"(×{base['fb'] / r['fb']:5.2f})  max err {r['err']:.1e}{it}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    dev = args.device
    if dev == "cuda":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
        anchors = ["torch"]
        main_points = [(1, 32768, 64, 1.0), (1, 32768, 64, 3.0), (8, 32768, 64, 1.0)]
        # (H=128 has no Triton dense scan: its dense solver lost 4-25x at every T, measured)
        sweep = [(1, t, h, 1.0) for t in (2048, 8192, 16384, 32768) for h in (32, 64)] + [
            (1, t, 128, 1.0, ["diagonal"]) for t in (8192, 32768)]
        long = [(1, 65536, 64, 1.0)]
    else:
        print("CPU, torch", torch.__version__, flush=True)
        anchors = ["torch"] + (["cpu"] if flashgru.BACKENDS["cpu"].missing() is None else [])
        main_points = [(1, 4096, 32, 1.0), (1, 4096, 32, 3.0), (8, 4096, 32, 1.0)]
        sweep = [(1, t, h, 1.0) for t in (512, 4096) for h in (16, 64)]
        long = []
    if args.quick:
        sweep, main_points = sweep[:2], main_points[:1]
    jacobians = ["dense", "diagonal"]
    # at the points also the solver without its fused Triton kernels (the gain)
    unfused = ["dense-unfused", "diagonal-unfused"] if dev == "cuda" else []
    for p in main_points:
        point(*p, dev, jacobians + unfused, anchors, reps=3 if args.quick else 5)
    for p in sweep:
        point(*p[:4], dev, p[4] if len(p) > 4 else jacobians, anchors,
              reps=3 if args.quick else 5)
    for b, t, h, s in long:  # cuDNN refuses this length: the parallel backend alone
        point(b, t, h, s, dev, ["dense", "diagonal"], ["triton"] if flashgru.BACKENDS[
            "triton"].missing() is None else ["reference"], reps=3)
    if dev == "cuda":
        print("the first point again, everything warm (allocator, compiled kernels, "
              "measured scan chunks):", flush=True)
        point(*main_points[0], dev, jacobians, anchors, reps=5)
        print("dense scan chunks measured ((length bucket, B, H, reverse, transpose): "
              "chunk):", {k[:3] + k[5:]: v for k, v in scan._CHUNKS.items()}, flush=True)


if __name__ == "__main__":
    main()
