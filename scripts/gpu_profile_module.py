"""Where a flashgru.GRU(backend="triton") forward call spends its time beyond the kernel
(issue 5: B=1, H=256, T=512 took 3.3-3.6 µs per step through the module against 2.54 for
the kernel alone). Prints both timings and torch.profiler's table of the call's CUDA and
CPU work. A diagnostic for a lent GPU, not a test.

    python scripts/gpu_profile_module.py
"""
import torch
from gpu_timing import per_step

import flashgru
import flashgru.backends.triton_gru as tg

torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
T, B, H = 512, 1, 256
torch.manual_seed(0)
ref = torch.nn.GRU(H, H, device="cuda")
module = flashgru.GRU.from_torch(ref, backend="triton")
x = torch.randn(T, B, H, device="cuda")


with torch.no_grad():
    gi = torch.nn.functional.linear(x, ref.weight_ih_l0, ref.bias_ih_l0)
    h0 = torch.zeros(B, H, device="cuda")
    lengths = torch.full((B,), T, dtype=torch.int32, device="cuda")
    kernel = per_step(lambda: tg.forward(gi, h0, ref.weight_hh_l0, ref.bias_hh_l0, lengths,
                                         True, False), T, 20)
    whole = per_step(lambda: module(x), T, 20)
    print(f"kernel alone {kernel:.2f} µs/step, module {whole:.2f} µs/step, cuDNN "
          f"{per_step(lambda: ref(x), T, 20):.2f} µs/step", flush=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            module(x)
        torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))
print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=15))
