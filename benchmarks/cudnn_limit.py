"""Where cuDNN stops: torch.nn.GRU on CUDA at T = 65535 and 65536, and flashgru (auto) at
T = 65536 and beyond, forward and forward+backward, with timings."""

import time

import torch

import flashgru


def attempt(module, steps, backward):
    x = torch.randn(steps, 1, 8, device="cuda", requires_grad=backward)
    torch.cuda.synchronize()
    start = time.perf_counter()
    try:
        out, h_n = module(x)
        if backward:
            (out.sum() + h_n.sum()).backward()
        torch.cuda.synchronize()
    except RuntimeError as e:
        return f"error: {str(e).splitlines()[0][:90]}"
    return f"ok, {(time.perf_counter() - start) * 1e3:.0f} ms"


def main():
    torch.manual_seed(0)
    ref = torch.nn.GRU(8, 64, device="cuda")
    ours = flashgru.GRU.from_torch(ref)
    for steps in (65535, 65536):
        for backward in (False, True):
            label = "fwd+bwd" if backward else "fwd"
            print(f"torch.nn.GRU    T={steps} {label}: {attempt(ref, steps, backward)}")
    for steps in (65536, 131072):
        print(f"flashgru {ours.which_backend(torch.empty(steps, 1, 8, device='cuda'))}")
        for backward in (False, True):
            label = "fwd+bwd" if backward else "fwd"
            print(f"flashgru (auto) T={steps} {label}: {attempt(ours, steps, backward)}")


if __name__ == "__main__":
    main()
