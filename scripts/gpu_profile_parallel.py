"""Where an iteration of the parallel solver spends its time on a GPU (issue 6: ~1.2 ms per
Newton iteration at any T on an H100, fused or not). For each case: wall time of a
no-grad forward, the sum of its CUDA kernels' time, and torch.profiler's tables by CUDA
time and by CPU time. A diagnostic for a lent GPU, not a test.

    python scripts/gpu_profile_parallel.py
"""
import time

import torch
from torch.profiler import ProfilerActivity, profile

import flashgru
from flashgru.backends import parallel

torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
CASES = [(1, 2048, 64, "diagonal"), (1, 2048, 64, "dense"), (1, 32768, 64, "dense")]

for B, T, H, jac in CASES:
    torch.manual_seed(0)
    module = flashgru.GRU(H, H, backend="parallel", device="cuda")
    x = torch.randn(T, B, H, device="cuda")
    with parallel.options(jacobian=jac), torch.no_grad():
        module(x)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(5):
            module(x)
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / 5 * 1e3
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            module(x)
            torch.cuda.synchronize()
    st = parallel.last_stats()
    ev = prof.key_averages()
    gpu = sum(e.self_device_time_total for e in ev) / 1e3
    print(f"\n=== B={B} T={T} H={H} {jac}: wall {wall:.2f} ms, iters {st.iterations}, "
          f"CUDA kernels {gpu:.2f} ms", flush=True)
    print(ev.table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=60))
    print(ev.table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=60))

from flashgru import scan  # noqa: E402

print("dense scan chunks measured (length bucket, B, H, dtype, device, reverse, transpose):",
      {k[:3] + k[5:]: v for k, v in scan._CHUNKS.items()})
