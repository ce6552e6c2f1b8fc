"""Peak memory of one forward+backward: flashgru's cpu backend against torch.nn.GRU.

Each measurement runs in a fresh process: peak resident memory (ru_maxrss) after the
call minus the resident memory before it, with the model, input and kernels already
loaded and compiled (one warm-up call at T=2).

    python benchmarks/cpu_memory.py
"""

import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, torch, flashgru
B, T, H, which = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
ref = torch.nn.GRU(H, H)
model = ref if which == "torch" else flashgru.GRU.from_torch(ref, backend="cpu")
warm = torch.randn(2, B, H, requires_grad=True)
model(warm)[0].sum().backward()
x = torch.randn(T, B, H, requires_grad=True)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out, h_n = model(x)
(out.sum() + h_n.sum()).backward()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_mib": (after - before) / 1024}))
"""

GRID = [(1, 256, 256), (16, 256, 128), (64, 128, 256), (16, 1024, 256)]


def measure(batch, steps, hidden, which):
    result = subprocess.run([sys.executable, "-c", CHILD, str(batch), str(steps), str(hidden),
                             which], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]


def main():
    print("| B,T,H | torch.nn.GRU MiB | flashgru cpu MiB | activations (T·B·H·4 B) MiB |")
    print("|---|---|---|---|")
    for b, t, h in GRID:
        torch_mib, ours_mib = measure(b, t, h, "torch"), measure(b, t, h, "cpu")
        print(f"| {b},{t},{h} | {torch_mib:.1f} | {ours_mib:.1f} | {t * b * h * 4 / 2**20:.1f} |")


if __name__ == "__main__":
    main()
