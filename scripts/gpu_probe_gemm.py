"""Would three TF32 products beat one fp32 GEMM for a GRU call's four GEMM-shaped products?

fp32 with TF32 off (issue 5's setting) runs the input projection, its two gradients and
dW_hh on the CUDA cores: ~6 µs a step of a B=16, H=1024 training call at an H200's fp32
peak (docs/performance.md). Split into TF32-exact parts (a = hi + lo), a·b ≈ hi·hi +
hi·lo + lo·hi on the tensor cores keeps fp32's accuracy (the dropped lo·lo is ~2^-22 of
it), as the stacked splits' in-kernel products do. This times, at each of the four
products' shapes (T·B rows, I = H, as a B=16, T=512 call has them: the projection
x @ W_ihᵀ, dx = g @ W_ih, dW_ih = gᵀ @ x with g the gates' gradient, and dW_hh's r and z
rows, g's first 2H columns read in place, transposed, @ h_prev):
- one fp32 GEMM (cuBLAS, TF32 off);
- ``tf32x3.mm`` on CUDA: one Triton kernel that splits each tile in registers and sums
  the three products in one accumulator (_triton.gemm, its default TILE);
- the same three products on operands split first (one pass each), by three cuBLAS TF32
  GEMMs into one output (tf32x3._mm_parts: what ran before the kernel), and the split
  alone;
- the kernel at the other tiles of TILES (block rows, columns, K; warps, stages);
- the three products as one cuBLAS TF32 GEMM over 3K, [a_lo a_hi a_hi] @ [b_hi; b_lo;
  b_hi] (``tf32x3.WAY = "wide"``: gemm.mm_wide, each operand's parts laid side by side
  in one pass, tf32split.wide), with its split and the GEMM alone;
and prints each's max error against float64 relative to the product's largest; then, for
each H, the four products' sum each way, and last the tf32x3 way they favour (``fastest
tf32x3 way: kernel`` or ``wide``: the sum over both H), which scripts/gpu_profile.sh
passes to its grid. (The GEMMs run so where tf32x3.enabled: off, as the unfused way lost
end to end on an H200, 2026-11-28, before its split was made one pass.)

    python scripts/gpu_probe_gemm.py            # on a GPU
    python scripts/gpu_probe_gemm.py --smoke    # the arithmetic alone, small, on the CPU
"""
import argparse
import os
import sys

if "--smoke" in sys.argv:  # (the kernel in Triton's interpreter, as the tests run it: set
    # before Triton is imported)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
from gpu_timing import interleaved  # noqa: E402

from flashgru.backends import tf32x3  # noqa: E402

# (the ways of tf32x3.WAY, as this probe's lines name them)
WAYS = {"kernel": "tf32x3", "wide": "wide"}

# (the kernel's alternatives: TILE, WARPS, STAGES; each compiles once per operand layout,
# ~1 s. Triton waits for each of the kernel's three products before the next, so a
# program can't overlap its split with them: the 4-warp tiles fit two programs on a
# multiprocessor, which can; BK=64 halves the waits per K. None spills, sm_90a, Triton 3.6,
# the transposed-a layout; 128 × 128 × 64 spills 36 bytes row-major)
TILES = [((128, 64, 32), 4, 3), ((128, 64, 32), 4, 4), ((64, 128, 32), 4, 4),
         ((64, 64, 64), 4, 3), ((128, 128, 64), 8, 2)]


def mm_fp32(a, b):
    return a @ b  # (TF32 off: main's setting)


def one_3k(a_wide, b_wide):
    """One TF32 GEMM of operands whose parts lie side by side along K (tf32x3._tf32: TF32
    for its duration)."""
    with tf32x3._tf32():
        return a_wide @ b_wide


def products(hidden: int, rows: int, device: str) -> dict:
    """The four products of a call at this H over ``rows`` = T·B rows: name → (a, b)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, hidden, generator=g).to(device)
    w_ih = (torch.randn(3 * hidden, hidden, generator=g) * hidden ** -0.5).to(device)
    grad = (torch.randn(rows, 3 * hidden, generator=g) * 1e-2).to(device)
    h_prev = torch.randn(rows, hidden, generator=g).tanh().to(device)
    return {"projection": (x, w_ih.t()), "dx": (grad, w_ih), "dW_ih": (grad.t(), x),
            "dW_hh rz": (grad[:, : 2 * hidden].t(), h_prev)}


def with_tile(gemm, tile, warps, stages):
    """gemm.mm with another tile (its module's constants set for the call)."""
    def run(a, b):
        saved = gemm.TILE, gemm.WARPS, gemm.STAGES
        gemm.TILE, gemm.WARPS, gemm.STAGES = tile, warps, stages
        try:
            return gemm.mm(a, b)
        finally:
            gemm.TILE, gemm.WARPS, gemm.STAGES = saved
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False  # (issue 5's setting; _mm_parts turns
    # it on for its own products)
    if args.smoke:
        tf32x3.GEMM_DEVICES = ("cuda", "cpu")
    from flashgru.backends._triton import gemm, tf32split

    device = "cpu" if args.smoke else "cuda"
    rows = 64 if args.smoke else 16 * 512
    if not args.smoke:
        print(torch.cuda.get_device_name(), "torch", torch.__version__)
    print(f"kernel's default tile {gemm.TILE}, {gemm.WARPS} warps, {gemm.STAGES} stages")
    overall = dict.fromkeys(WAYS, 0.0)
    for hidden in ((32,) if args.smoke else (512, 1024)):
        sums = {"fp32": 0.0, **dict.fromkeys(WAYS, 0.0)}
        for name, (a, b) in products(hidden, rows, device).items():
            runs = {"fp32": lambda a=a, b=b: mm_fp32(a, b),
                    "tf32x3": lambda a=a, b=b: gemm.mm(a, b),
                    "wide": lambda a=a, b=b: gemm.mm_wide(a, b),
                    "parts": lambda a=a, b=b: tf32x3._mm_parts(tf32x3.split(a),
                                                                tf32x3.split(b))}
            tiles = {f"{t[0]}x{t[1]}x{t[2]} w{warps} s{stages}": with_tile(
                gemm, t, warps, stages) for t, warps, stages in TILES}
            want = a.double() @ b.double()
            errors = {}  # (each run's error against float64, or why it failed)
            for key, fn in [*runs.items(), *tiles.items()]:
                try:
                    errors[key] = ((fn().double() - want).abs().max() /
                                   want.abs().max()).item() if key in runs else \
                        ((fn(a, b).double() - want).abs().max() / want.abs().max()).item()
                except Exception as e:  # noqa: BLE001 (a tile this card can't hold, a way
                    # that fails here: reported in its place, the others still timed)
                    errors[key] = f"{type(e).__name__}: {str(e)[:80]}"
            timed = {key: fn for key, fn in runs.items() if not isinstance(errors[key], str)}
            parts = tf32x3.split(a), tf32x3.split(b)
            timed.update({"split": lambda a=a, b=b: (tf32x3.split(a), tf32x3.split(b)),
                          "products": lambda parts=parts: tf32x3._mm_parts(*parts)})
            if "wide" in timed:  # (the GEMM over 3K alone, [a_lo a_hi a_hi] @ [b_hi; b_lo;
                # b_hi], its operands laid side by side beforehand, and their split alone)
                wide = tf32split.wide(a, 1, True), tf32split.wide(b, 0, False)
                timed.update({"one 3K": lambda wide=wide: one_3k(*wide),
                              "wide split": lambda a=a, b=b: (tf32split.wide(a, 1, True),
                                                              tf32split.wide(b, 0, False))})
            timed.update({key: (lambda fn=fn, a=a, b=b: fn(a, b)) for key, fn in tiles.items()
                          if not isinstance(errors[key], str)})
            times = interleaved(timed, steps=rows // 16)  # (µs per step of a B=16 call)
            shape = f"{tuple(a.shape)} @ {tuple(b.shape)}"
            speedup = times["fp32"] / times["tf32x3"] if "tf32x3" in times else float("nan")

            def us(key, times=times):
                return f"{times[key]:.2f}" if key in times else "-"

            def shown(key, times=times, errors=errors):  # (a time and its error, or why
                # the run failed)
                if isinstance(errors[key], str):
                    return f"failed ({errors[key]})"
                return f"{times[key]:.2f} (error {errors[key]:.1e})"

            print(f"H={hidden:5d} {name:10s} {shape:26s}: fp32 {shown('fp32')} µs/step, "
                  f"kernel {shown('tf32x3')}, {speedup:.2f}x; split first {shown('parts')}: "
                  f"the split {us('split')}, the three products {us('products')}; as one "
                  f"TF32 GEMM over 3K {shown('wide')}: the split {us('wide split')}, the "
                  f"GEMM {us('one 3K')}")
            for key in sums:  # (a way that failed: never the faster)
                sums[key] += times.get(WAYS.get(key, key), float("inf"))
            print("        other tiles: " + ", ".join(
                f"{key} {errors[key]}" if isinstance(errors[key], str) else
                f"{key} {times[key]:.2f} ({errors[key]:.1e})" for key in tiles))
        print(f"H={hidden:5d} the four products, µs a step: " +
              ", ".join(f"{key} {us:.2f}" for key, us in sums.items()))
        for way in WAYS:
            overall[way] += sums[way]
    timed = all(us == us for us in overall.values())  # (NaN off CUDA: not timed)
    print(f"fastest tf32x3 way: {min(overall, key=overall.get) if timed else 'not timed'}")


if __name__ == "__main__":
    main()
