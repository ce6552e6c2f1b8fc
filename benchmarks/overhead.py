"""Per-call overhead of flashgru.GRU (auto → torch backend) over torch.nn.GRU, same weights:
many short calls, interleaved, host clock after a device sync."""

import argparse
import time

import torch

import flashgru


def per_call_us(module, x, calls, sync):
    with torch.no_grad():
        module(x)
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            module(x)
        sync()
    return (time.perf_counter() - start) / calls * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    for steps, hidden in [(1, 8), (256, 64)]:
        ref = torch.nn.GRU(hidden, hidden, device=args.device)
        ours = flashgru.GRU.from_torch(ref)
        x = torch.randn(steps, 1, hidden, device=args.device)
        times = {"torch.nn.GRU": [], "flashgru": []}
        for _ in range(3):
            times["torch.nn.GRU"].append(per_call_us(ref, x, args.calls, sync))
            times["flashgru"].append(per_call_us(ours, x, args.calls, sync))
        t_ref, t_ours = min(times["torch.nn.GRU"]), min(times["flashgru"])
        print(f"{args.device} T={steps} H={hidden} B=1: torch.nn.GRU {t_ref:.1f} µs/call, "
              f"flashgru {t_ours:.1f} µs/call, overhead {t_ours - t_ref:+.1f} µs")


if __name__ == "__main__":
    main()
