"""Probe the Triton forward's splits on a lent GPU (issue 5): for each shape and split,
the largest fp32 error against a float64 step loop (T=64), the first step past 1e-5,
whether three runs agree bit for bit, and the forward time per step at T=512 next to
cuDNN's. A diagnostic, not a test.

    python scripts/gpu_probe.py            # on CUDA
    python scripts/gpu_probe.py --resident # B=1 and 16: W tiles resident or not
    python scripts/gpu_probe.py --stamped  # the stamped exchange against the barrier
    python scripts/gpu_probe.py --kmajor   # the K-major exchange and product
    python scripts/gpu_probe.py --b1       # B=1: fewer programs per barrier
    python scripts/gpu_probe.py --b16      # B=16, H=256-1024: resident splits
    python scripts/gpu_probe.py --b16 --bf16  # the same in bfloat16
    python scripts/gpu_probe.py --stacked  # B=16: the gates' rows in one tensor-core tile
    TRITON_INTERPRET=1 python scripts/gpu_probe.py --smoke
"""
import sys

import torch
from gpu_splits import C, D, kmajor_tile, row_major_tile, stacked_tile, stamped, stamped_tile
from gpu_timing import interleaved, per_step

import flashgru.backends.triton_gru as tg

SMOKE = "--smoke" in sys.argv
dev = "cpu" if SMOKE else "cuda"
DTYPE = torch.bfloat16 if "--bf16" in sys.argv else torch.float32

def resident(warps=4):
    """The default split with its W tiles resident in registers (and these warps)."""
    return lambda cfg: cfg._replace(resident=True, warps=warps)


def warps8(cfg):
    return cfg._replace(warps=8)


if SMOKE:
    PLAN = [(4, 16, [C(4, 16, 16, False), D, resident(), stamped])]
elif "--resident" in sys.argv:  # W_hh's tiles loaded once, before the time loop
    PLAN = [(1, h, [D, resident(), warps8, resident(8)]) for h in (256, 512, 1024)] + [
        (16, 256, [D, resident(), resident(8)]),
        # B=16 beyond H=256 (unmeasured). ptxas for sm_90a, offline: the default tl.dot
        # split spills 672 bytes at 4 warps; 8 units resident with the broadcast product
        # 464 (H=512, 4 warps) and 492 (H=1024, 8 warps; 27 KB at 4). tl.dot over all of K
        # with 16 units resident needs 229 KB of shared memory: it does not fit.
        (16, 512, [D, warps8, C(16, 8, 512, False, resident=True),
                   C(16, 8, 512, False, 8, resident=True)]),
        (16, 1024, [D, warps8, C(16, 8, 1024, False, 8, resident=True)])]
elif "--stamped" in sys.argv:  # readers wait on each word's step, no barrier (ptxas,
    # sm_90a, offline: as many registers as the barrier's at B=1 and (16, 2, 256); (8, 8,
    # 512) spills 84 bytes, (16, 4, 512) 56 against 28)
    PLAN = [(1, h, [D, stamped]) for h in (256, 512, 1024)] + [
        (1, 256, [stamped_tile(1, 8, 256), stamped_tile(1, 32, 256)]),
        # fewer warps, so the step's reductions need less or no shared memory (ptxas,
        # sm_90a: (1, 2, 256) at 1 warp 103 registers with the barrier, 128 stamped, no
        # shared memory; at 2 warps 64 / 66 and 16 bytes; (1, 4, 512) at 2 warps 163 / 158)
        (1, 256, [C(1, 2, 256, False, w, resident=True, stamped=s)
                  for w in (1, 2) for s in (False, True)]),
        (1, 512, [C(1, 4, 512, False, 2, resident=True, stamped=s) for s in (False, True)]),
        (16, 256, [D, stamped, stamped_tile(4, 8, 256), stamped_tile(2, 16, 256)]),
        (16, 512, [D, stamped, stamped_tile(8, 8, 512), stamped_tile(4, 16, 512, 8)]),
        (16, 1024, [D, stamped, stamped_tile(16, 8, 1024, 8)])]
elif "--kmajor" in sys.argv:  # the state exchanged (H, B), products summed over K first
    # (ptxas + nvdisasm, sm_90a, offline, instructions per thread in the kernel, 8 warps:
    # (16, 2, 256) 760 against 2216 row-major, shuffles 10 against 768, no spills; (4, 8,
    # 256) 640 against 2128; stamped 1080 / 712; at 4 warps they spill; at H=512, B=16 too)
    km, rm8 = kmajor_tile, row_major_tile
    PLAN = [(16, 256, [D, rm8(16, 2, 256), km(16, 2, 256), km(16, 2, 256, True),
                       rm8(4, 8, 256), km(4, 8, 256), km(4, 8, 256, True), km(2, 16, 256)]),
            (1, 512, [D, rm8(1, 4, 512), km(1, 4, 512), km(1, 4, 512, True)]),
            (1, 1024, [D, rm8(1, 8, 1024), km(1, 8, 1024), km(1, 8, 1024, True)])]
elif "--stacked" in sys.argv:  # B=16: W's rows for the three gates stacked in one tile of
    # 64 rows kept in shared memory, one wgmma a step (three TF32 ones in fp32), 16 / s
    # folds of K side by side (ptxas, sm_90a, Triton 3.6, offline, no spills with the
    # barrier: fp32 H=256 (s=16) 255 registers, 160 KB shared; fp32 H=512 (s=8) 255,
    # 192 KB; (s=4) 128 KB; bf16 H=1024 (s=16) 255, 160 KB; (s=8) 220, 96 KB)
    st = stacked_tile
    if DTYPE == torch.bfloat16:
        PLAN = [(16, 256, [D, st(256), st(256, 8), st(256, 16, 4, True)]),
                (16, 512, [D, st(512), st(512, 8), st(512, 4)]),
                (16, 1024, [D, st(1024), st(1024, 8)]),
                (1, 1024, [D, st(1024), st(1024, 8)])]
    else:  # (and B=1: one row of the 16, a barrier of 16-64 programs instead of 128)
        PLAN = [(16, 128, [D, st(128), st(128, 8)]),
                (16, 256, [D, st(256), st(256, 16, 8), st(256, 8), st(256, 16, 4, True)]),
                (16, 512, [D, st(512, 8), st(512, 4), st(512, 8, 4, True)]),
                (1, 256, [D, st(256), st(256, 8)]), (1, 512, [D, st(512, 8), st(512, 4)])]
elif "--b1" in sys.argv:  # B=1: fewer programs, each with more units (a barrier of 8-64
    # programs instead of 128; W resident)
    PLAN = [(1, 256, [D] + [C(1, s, 256, False, resident=True) for s in (4, 8, 16, 32)]),
            (1, 512, [D] + [C(1, s, 512, False, resident=True) for s in (8, 16)])]
elif "--b16" in sys.argv:  # B=16: resident splits against tl.dot, and smaller row tiles
    # with fewer programs each (each tile its own recurrence and barrier: 8-64 programs
    # meet there instead of 128), W resident in every tile (ptxas, sm_90a, offline: no
    # spills but 4 bytes at (1, 32, 256))
    PLAN = [(16, 256, [D, C(1, 32, 256, False, resident=True),
                       C(2, 16, 256, False, resident=True),
                       C(4, 8, 256, False, resident=True)]),
            (16, 512, [D, C(16, 32, 64, True), C(16, 4, 512, False, 8, resident=True),
                       C(8, 8, 512, False, resident=True),  # (two 8-row tiles)
                       C(4, 16, 512, False, 8, resident=True)]),
            (16, 1024, [D, C(16, 8, 1024, False, 8, resident=True)])]
    if DTYPE == torch.bfloat16:  # tl.dot on resident bf16 tiles, 16 units (ptxas, sm_90a,
        # offline: H=512 168 registers, no spills, 80 KB shared; H=1024 spills 744 bytes)
        PLAN[1][2].append(C(16, 16, 512, True, resident=True))
        PLAN[2][2].append(C(16, 16, 1024, True, resident=True))
else:
    PLAN = [
        (16, 1024, [C(16, 16, 32, False), C(16, 16, 64, False), C(16, 16, 128, False),
                    C(16, 32, 32, False), C(16, 32, 64, False), C(16, 8, 64, False),
                    C(16, 8, 128, False), C(16, 16, 64, True), C(16, 16, 128, True),
                    C(16, 32, 64, True), C(16, 32, 128, True), C(16, 64, 64, True),
                    C(16, 16, 64, True, precision="ieee"), C(16, 16, 64, True, 8)]),
        (16, 512, [D, C(16, 8, 64, False), C(16, 16, 32, False), C(16, 16, 64, False),
                   C(16, 16, 64, True), C(16, 32, 64, True)]),
        (1, 256, [D]), (1, 1024, [D]), (16, 256, [D]),
    ]
T, TL = (8, 8) if SMOKE else (64, 512)


def timed(fn, reps=10):
    return per_step(fn, TL, reps)


print(torch.__version__, tg.triton.__version__, flush=True)
torch.backends.cudnn.allow_tf32 = False
def probe(B, H, cfgs):
    torch.manual_seed(0)
    k = H ** -0.5
    w = (torch.rand(3 * H, H, device=dev) * 2 - 1) * k
    b = (torch.rand(3 * H, device=dev) * 2 - 1) * k
    gi = torch.randn(T, B, 3 * H, device=dev)
    gi_long = torch.randn(TL, B, 3 * H, device=dev)
    h0 = torch.randn(B, H, device=dev) * 0.5
    w, b, gi, gi_long, h0 = (t.to(DTYPE) for t in (w, b, gi, gi_long, h0))
    lengths = torch.full((B,), T, dtype=torch.int32, device=dev)
    lengths_long = torch.full((B,), TL, dtype=torch.int32, device=dev)
    ref = torch.empty(T, B, H, dtype=torch.float64, device=dev)
    h = h0.double()
    for t in range(T):
        gh = h @ w.double().t() + b.double()
        g = gi[t].double()
        r = torch.sigmoid(g[:, :H] + gh[:, :H])
        z = torch.sigmoid(g[:, H:2 * H] + gh[:, H:2 * H])
        n = torch.tanh(g[:, 2 * H:] + r * gh[:, 2 * H:])
        h = (1 - z) * n + z * h
        ref[t] = h
    if not SMOKE:
        gru = torch.nn.GRU(H, H, device=dev, dtype=DTYPE)
        xl = torch.randn(TL, B, H, device=dev, dtype=DTYPE)
        with torch.no_grad():
            print(f"B={B} H={H} cuDNN fwd {timed(lambda: gru(xl)):.2f} us/step", flush=True)
    for cfg in cfgs:
        default = tg.choose_config(B, H, gi.device, gi.dtype)
        cfg = cfg(default) if callable(cfg) else cfg or default
        try:
            runs = [tg.forward(gi, h0, w, b, lengths, True, False, cfg=cfg)[0] for _ in range(3)]
            us = timed(lambda c=cfg: tg.forward(gi_long, h0, w, b, lengths_long, True, False,
                                                cfg=c))
        except Exception as e:  # noqa: BLE001
            print(f"B={B} H={H} {tuple(cfg)}: {type(e).__name__}: {str(e)[:100]}", flush=True)
            continue
        err = (runs[0].double() - ref).abs()
        bad = ((err.amax(dim=(1, 2))) > 1e-5).nonzero()
        same = all(torch.equal(runs[0], x) for x in runs[1:])
        print(f"B={B} H={H} {tuple(cfg)}: fwd {us:6.2f} us/step  max err {err.max():.1e} "
              f"first bad t {int(bad[0]) if len(bad) else -1} deterministic {same}", flush=True)
    if "--stamped" in sys.argv and stamped in cfgs:  # the pair again, timed in turn
        default = tg.choose_config(B, H, gi.device, gi.dtype)
        pair = {"barrier": default, "stamped": stamped(default)}
        got = interleaved({k: lambda c=c: tg.forward(gi_long, h0, w, b, lengths_long, True,
                                                     False, cfg=c) for k, c in pair.items()},
                          TL)
        print(f"B={B} H={H} default split in turn: barrier {got['barrier']:.2f}, stamped "
              f"{got['stamped']:.2f} us/step", flush=True)


if __name__ == "__main__":  # (scripts/gpu_compile_check.py reads PLAN)
    for shape in PLAN:
        probe(*shape)
