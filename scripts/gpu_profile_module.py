"""Where a flashgru.GRU(backend="triton") forward call spends its time beyond the kernel
(issue 5: B=1, H=256, T=512 took 2.89 µs per step through the module against 2.13 for
the kernel alone on an H200, yet 1.98 per step through the module at T=65536: a fixed
~0.4 ms a call, not a cost per step). Times each layer of the call at two lengths, so a
fixed cost and a per-step one tell apart, then prints torch.profiler's tables of the
module's CUDA and CPU work. A diagnostic for a lent GPU, not a test.

    python scripts/gpu_profile_module.py
    TRITON_INTERPRET=1 python scripts/gpu_profile_module.py --smoke
"""
import sys
import time

import torch
from gpu_timing import per_step

import flashgru
import flashgru.backends.triton_gru as tg

SMOKE = "--smoke" in sys.argv
dev = "cpu" if SMOKE else "cuda"
torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
B, H = 1, 256
LENGTHS = (8, 16) if SMOKE else (512, 4096)
torch.manual_seed(0)
ref = torch.nn.GRU(H, H, device=dev)
module = flashgru.GRU.from_torch(ref, backend="triton")


def host_ms(fn, reps=10):
    """Median milliseconds of the host's part of fn() alone: until it returns, the GPU
    not awaited (the launches are asynchronous)."""
    fn()
    times = []
    for _ in range(reps):
        if not SMOKE:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    if not SMOKE:
        torch.cuda.synchronize()
    return sorted(times)[len(times) // 2]


w_ih, b_ih, w_hh, b_hh = (ref.weight_ih_l0, ref.bias_ih_l0, ref.weight_hh_l0,
                          ref.bias_hh_l0)
with torch.no_grad():
    for steps in LENGTHS:
        x = torch.randn(steps, B, H, device=dev)
        gi = torch.nn.functional.linear(x, w_ih, b_ih)
        h0 = torch.zeros(B, H, device=dev)
        lengths = torch.full((B,), steps, dtype=torch.int64, device=dev)
        layers = {
            "input projection (linear)": lambda x=x: torch.nn.functional.linear(x, w_ih, b_ih),
            "kernel (tg.forward)": lambda gi=gi, h0=h0, lengths=lengths: tg.forward(
                gi, h0, w_hh, b_hh, lengths, True, False),
            "tg.core": lambda gi=gi, h0=h0: tg.core(gi, h0, w_hh, b_hh, None, True),
            "linear + tg.core": lambda x=x, h0=h0: tg.core(
                torch.nn.functional.linear(x, w_ih, b_ih), h0, w_hh, b_hh, None, True),
            "module": lambda x=x: module(x),
            "cuDNN": lambda x=x: ref(x),
        }
        for name, fn in layers.items():  # (CUDA events: host time before a launch counts)
            us = per_step(fn, steps)
            print(f"T={steps:5d} {name:28s} {us * steps / 1e3:8.3f} ms  {us:6.2f} µs/step"
                  f"  host {host_ms(fn):6.3f} ms", flush=True)
    x = torch.randn(LENGTHS[0], B, H, device=dev)
    if not SMOKE:
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(5):
                module(x)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=15))
