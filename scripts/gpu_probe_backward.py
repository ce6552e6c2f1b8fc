"""Probe the Triton backward's launch splits on a lent GPU (issue 5: at B=16, H ≥ 512 the
forward is faster than cuDNN but forward+backward is not). For each split: the backward
kernel's time per step at T=512 (after one forward), and its gradients' largest error
against the float64 reference at T=64; cuDNN's forward and forward+backward per step in
the same process. A diagnostic, not a test.

    python scripts/gpu_probe_backward.py
    python scripts/gpu_probe_backward.py --resident   # W_hhᵀ resident or not
    python scripts/gpu_probe_backward.py --b16        # B=16, H=256-1024
    python scripts/gpu_probe_backward.py --stamped    # stamped exchange against barrier
    python scripts/gpu_probe_backward.py --kmajor     # the K-major exchange and product
    python scripts/gpu_probe_backward.py --b16 --bf16 # the same in bfloat16
    python scripts/gpu_probe_backward.py --stacked    # B=16: W_gᵀ's rows in one tensor-core
                                                      # tile (the forward stacked too)
    TRITON_INTERPRET=1 python scripts/gpu_probe_backward.py --smoke
"""
import sys

import torch
from gpu_splits import C, D, kmajor_tile, row_major_tile, stacked_tile, stamped, stamped_tile
from gpu_timing import interleaved, per_step

import flashgru.backends.triton_gru as tg
from flashgru.backends import reference

SMOKE = "--smoke" in sys.argv
dev = "cpu" if SMOKE else "cuda"
DTYPE = torch.bfloat16 if "--bf16" in sys.argv else torch.float32

def resident(cfg):
    """The default split with W_hhᵀ's tiles resident in registers."""
    return cfg._replace(resident=True)


if SMOKE:
    PLAN = [(4, 16, [C(4, 16, 16, False), resident, stamped])]
elif "--stamped" in sys.argv:  # as gpu_probe.py --stamped (ptxas, sm_90a, offline: B=1
    # as the barrier's registers; (16, 2, 256) 255 registers against 160, no spills;
    # (8, 8, 512) spills 48 bytes, (16, 4, 512) none, as the barrier's)
    PLAN = [(1, h, [D, stamped]) for h in (256, 512, 1024)] + [
        # fewer warps (ptxas, sm_90a: (1, 2, 256) 1 warp 103 / 128 registers, stamped spills
        # 16 bytes; 2 warps 64 / 64; (1, 4, 512) 2 warps 162 / 168, stamped spills 16)
        (1, 256, [C(1, 2, 256, False, w, resident=True, stamped=s)
                  for w in (1, 2) for s in (False, True)]),
        (1, 512, [C(1, 4, 512, False, 2, resident=True, stamped=s) for s in (False, True)]),
        (16, 256, [D, stamped, stamped_tile(4, 8, 256), stamped_tile(2, 16, 256)]),
        (16, 512, [D, stamped, stamped_tile(8, 8, 512)]),
        (16, 1024, [D, stamped, stamped_tile(16, 8, 1024, 8)])]
elif "--resident" in sys.argv:  # W_hhᵀ's tiles loaded once, before the time loop
    PLAN = [(1, h, [D, resident]) for h in (256, 512, 1024)] + [(16, 256, [D, resident])]
elif "--kmajor" in sys.argv:  # as gpu_probe.py --kmajor (nvdisasm, sm_90a, instructions
    # per thread, 8 warps: (4, 8, 256) 728 against 2176 row-major, (2, 16, 256) 808, (16, 2,
    # 256) 1024 (spills 24 bytes); no spills stamped)
    km, rm8 = kmajor_tile, row_major_tile
    PLAN = [(16, 256, [D, rm8(16, 2, 256), km(16, 2, 256), rm8(4, 8, 256), km(4, 8, 256),
                       km(4, 8, 256, True), km(2, 16, 256)]),
            (1, 1024, [D, rm8(1, 8, 1024), km(1, 8, 1024)])]
elif "--b16" in sys.argv:  # B=16: resident W_hhᵀ splits and smaller row tiles, as in
    # gpu_probe.py --b16 (the default at H=512 is (16, 4, 512) resident)
    PLAN = [(16, 256, [D, C(1, 32, 256, False, resident=True),
                       C(2, 16, 256, False, resident=True),
                       C(4, 8, 256, False, resident=True)]),
            (16, 512, [D, C(16, 4, 512, False, 8, resident=True),
                       C(16, 8, 512, False, 8, resident=True),
                       C(8, 8, 512, False, resident=True),  # (two 8-row tiles)
                       C(4, 16, 512, False, 8, resident=True)]),
            (16, 1024, [D, C(16, 8, 1024, False, 8, resident=True),
                        C(16, 16, 64, True, 4), C(16, 8, 128, False)])]
    if DTYPE == torch.bfloat16:  # tl.dot on resident bf16 tiles, 16 units (ptxas, sm_90a,
        # offline, no spills: H=512 198 registers, 80 KB shared; H=1024 8 warps 222, 160 KB)
        PLAN[1][2].append(C(16, 16, 512, True, resident=True))
        PLAN[2][2].append(C(16, 16, 1024, True, 8, resident=True))
elif "--stacked" in sys.argv:  # B=16: the gates' W_gᵀ rows stacked in one tile of 64 rows
    # kept in shared memory, one wgmma a step (three TF32 ones in fp32) on the gates'
    # gradients side by side (ptxas, sm_90a, Triton 3.6, offline: fp32 H=128 (s=16) 255
    # registers, no spills, 128 KB shared; H=256 (s=8) 32-92 bytes spilled, 192 KB;
    # bf16 H=512 (s=8) 212, 96 KB; H=1024 (s=8) 64-224 bytes spilled, 192 KB)
    st = stacked_tile
    if DTYPE == torch.bfloat16:
        PLAN = [(16, 256, [D, st(256), st(256, 8)]),
                (16, 512, [D, st(512), st(512, 8), st(512, 4)]),
                (16, 1024, [D, st(1024, 8), st(1024, 8, 8)])]
    else:
        PLAN = [(16, 128, [D, st(128), st(128, 8)]),
                (16, 256, [D, st(256, 8), st(256, 4), st(256, 8, 8), st(256, 8, 4, True)])]
else:
    SPLITS = [D, C(16, 16, 64, True), C(16, 32, 32, True), C(16, 32, 128, True),
              C(16, 64, 64, True), C(16, 16, 128, True), C(16, 8, 128, False),
              C(16, 4, 256, False), C(16, 32, 64, True, 8)]
    PLAN = [(16, 1024, SPLITS), (16, 512, SPLITS), (128, 1024, [D, C(64, 32, 64, True)])]
T, TL = (8, 8) if SMOKE else (64, 512)


def timed(fn, reps=10, steps=TL):
    return per_step(fn, steps, reps)


def problem(B, H, steps, dtype=torch.float32):
    g = torch.Generator(device=dev).manual_seed(steps)
    k = H ** -0.5
    w = (torch.rand(3 * H, H, device=dev, generator=g) * 2 - 1) * k
    b = (torch.rand(3 * H, device=dev, generator=g) * 2 - 1) * k
    gi = torch.randn(steps, B, 3 * H, device=dev, generator=g)
    h0 = torch.randn(B, H, device=dev, generator=g) * 0.5
    dout = torch.randn(steps, B, H, device=dev, generator=g)
    lengths = torch.full((B,), steps, dtype=torch.int32, device=dev)
    return [t.to(dtype) for t in (gi, h0, w, b, dout)] + [lengths]


def probe(B, H, cfgs):
    gi, h0, w, b, dout, lengths = problem(B, H, T, DTYPE)
    leaves = [t.double().requires_grad_() for t in (gi, h0, w, b)]
    ref = reference.core(*leaves, None, True)
    ref_grads = torch.autograd.grad(ref, leaves, dout.double())
    long = problem(B, H, TL, DTYPE)
    if not SMOKE:
        gru = torch.nn.GRU(H, H, device=dev, dtype=DTYPE)
        x = torch.randn(TL, B, H, device=dev, dtype=DTYPE)
        with torch.no_grad():
            fwd = timed(lambda: gru(x))
        xg = x.requires_grad_()
        dy = torch.randn(TL, B, H, device=dev, dtype=DTYPE)
        fb = timed(lambda: gru(xg)[0].backward(dy))
        print(f"B={B} H={H} cuDNN fwd {fwd:.2f}, fwd+bwd {fb:.2f} us/step", flush=True)
    for cfg in cfgs:
        default = tg.choose_backward_config(B, H, gi.device, gi.dtype)
        cfg = cfg(default) if callable(cfg) else cfg or default
        try:
            out, saved = tg.forward(gi, h0, w, b, lengths, True, True, cfg)
            grads = tg.backward(dout, h0, w, out, saved, lengths, True, cfg)
            lo, lsaved = tg.forward(long[0], long[1], long[2], long[3], long[5], True, True,
                                    cfg)
            us = timed(lambda c=cfg, lo=lo, ls=lsaved: tg.backward(
                long[4], long[1], long[2], lo, ls, long[5], True, c))
        except Exception as e:  # noqa: BLE001
            print(f"B={B} H={H} {tuple(cfg)}: {type(e).__name__}: {str(e)[:100]}",
                  flush=True)
            continue
        errs = [((g.double() - r).abs().max() / r.abs().max()).item()
                for g, r in zip(grads, ref_grads, strict=False)]
        print(f"B={B} H={H} {tuple(cfg)}: bwd {us:6.2f} us/step  rel err dgi/dh0/dW/db "
              + " ".join(f"{e:.1e}" for e in errs), flush=True)
    if "--stamped" in sys.argv and stamped in cfgs:  # the pair again, timed in turn
        default = tg.choose_backward_config(B, H, gi.device, gi.dtype)
        lo, lsaved = tg.forward(long[0], long[1], long[2], long[3], long[5], True, True,
                                default)
        pair = {"barrier": default, "stamped": stamped(default)}
        got = interleaved({k: lambda c=c: tg.backward(long[4], long[1], long[2], lo, lsaved,
                                                      long[5], True, c)
                           for k, c in pair.items()}, TL)
        print(f"B={B} H={H} default split in turn: barrier {got['barrier']:.2f}, stamped "
              f"{got['stamped']:.2f} us/step", flush=True)


print(torch.__version__, tg.triton.__version__, flush=True)
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False
if __name__ == "__main__":  # (scripts/gpu_compile_check.py reads PLAN)
    for shape in PLAN:
        probe(*shape)
