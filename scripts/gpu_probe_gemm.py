"""Would three TF32 GEMMs beat one fp32 GEMM for a GRU call's four GEMM-shaped products?

fp32 with TF32 off (issue 5's setting) runs the input projection, its two gradients and
dW_hh on the CUDA cores: ~6 µs a step of a B=16, H=1024 training call at an H200's fp32
peak (docs/performance.md). Split into TF32-exact parts (a = hi + lo), a·b ≈ hi·hi +
hi·lo + lo·hi on the tensor cores keeps fp32's accuracy (the dropped lo·lo is ~2^-22 of
it), as the stacked splits' in-kernel products do. This times, at the GEMMs' shapes
(T·B rows, I = H), one fp32 GEMM against the three TF32 ones (the split included), and
prints each's max error against float64 relative to the product's largest
(flashgru.backends.tf32x3.mm: the triton backend's GEMMs where tf32x3.enabled; off, as
it lost end to end on an H200, 2026-11-28, before its split was made one pass), and the
split and the three products timed apart.

    python scripts/gpu_probe_gemm.py            # on a GPU
    python scripts/gpu_probe_gemm.py --smoke    # the arithmetic alone, small, on the CPU
"""
import argparse

import torch
from gpu_timing import interleaved

from flashgru.backends import tf32x3


def mm_fp32(a, b):
    return a @ b  # (TF32 off: main's setting)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False  # (issue 5's setting; tf32x3.mm turns
    # it on for its own products)
    device = "cpu" if args.smoke else "cuda"
    rows = 64 if args.smoke else 16 * 512
    if not args.smoke:
        print(torch.cuda.get_device_name(), "torch", torch.__version__)
    for hidden in ((32,) if args.smoke else (512, 1024)):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(rows, hidden, generator=g).to(device)
        w = (torch.randn(hidden, 3 * hidden, generator=g) * hidden ** -0.5).to(device)
        want = x.double() @ w.double()
        errors = {name: ((mm(x, w).double() - want).abs().max() / want.abs().max()).item()
                  for name, mm in (("fp32", mm_fp32), ("tf32x3", tf32x3.mm))}
        parts = tf32x3.split(x), tf32x3.split(w)
        runs = {name: (lambda mm=mm, x=x, w=w: mm(x, w)) for name, mm in
                (("fp32", mm_fp32), ("tf32x3", tf32x3.mm))}
        runs.update({  # (tf32x3's time in its parts: the split, one pass or torch's seven
            # ops, and the three products on operands split beforehand)
            "split": lambda x=x, w=w: (tf32x3.split(x), tf32x3.split(w)),
            "split_ops": lambda x=x, w=w: (tf32x3._split_ops(x), tf32x3._split_ops(w)),
            "products": lambda parts=parts: tf32x3._mm_parts(*parts)})
        times = interleaved(runs, steps=rows // 16)  # (µs per step of a B=16 call)
        print(f"H={hidden:5d} ({rows} x {hidden} @ {hidden} x {3 * hidden}): "
              f"fp32 {times['fp32']:.2f} µs/step (error {errors['fp32']:.1e}), "
              f"tf32x3 {times['tf32x3']:.2f} (error {errors['tf32x3']:.1e}), "
              f"{times['fp32'] / times['tf32x3']:.2f}x; of which the split "
              f"{times['split']:.2f} (torch's ops {times['split_ops']:.2f}), the three "
              f"products {times['products']:.2f}")


if __name__ == "__main__":
    main()
