"""The fp32 GEMMs beside the recurrence (triton_gru.overlap) over a few span settings, at
fp32 B=16, T=512 (H=256 and 512, where it applies): each setting's inference and training
call in µs a step, timed in turn with the overlap off (gpu_timing.interleaved), its
output's largest difference from the call without it, and how many of the call's
forward and backward ran in spans (0 where the setting didn't apply). A diagnostic for a
lent GPU, not a test: it picks OVERLAP_FIRST and OVERLAP_GROWTH, and whether the
backward's GEMMs gain too (True) or the forward's alone (FORWARD).

    python scripts/gpu_overlap.py
    TRITON_INTERPRET=1 python scripts/gpu_overlap.py --smoke
"""
import sys

import torch
from gpu_timing import interleaved

import flashgru
from flashgru.backends import triton_gru as tg

SMOKE = "--smoke" in sys.argv
dev = "cpu" if SMOKE else "cuda"
torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
POINTS = [(2, 8)] if SMOKE else [(16, 256), (16, 512)]  # (B, H), fp32
STEPS = 12 if SMOKE else 512
# (overlap, OVERLAP_FIRST, OVERLAP_GROWTH); the first, off, is what the others are
# compared with
SETTINGS = [(False, 16, 2), (True, 16, 2), (True, 32, 2), (True, 64, 2), (True, 16, 3),
            (tg.FORWARD, 16, 2), (tg.FORWARD, 32, 2)]
if SMOKE:  # (the interpreter's CPU tensors take the overlap too; spans of a few steps)
    tg._OVERLAP_ON = ("cuda", "cpu")
    SETTINGS = [(on, first // 8, growth) for on, first, growth in SETTINGS]


def under(setting, fn):
    """fn with triton_gru's overlap settings set for its call alone."""
    def call():
        saved = tg.overlap, tg.OVERLAP_FIRST, tg.OVERLAP_GROWTH
        tg.overlap, tg.OVERLAP_FIRST, tg.OVERLAP_GROWTH = setting
        try:
            return fn()
        finally:
            tg.overlap, tg.OVERLAP_FIRST, tg.OVERLAP_GROWTH = saved

    return call


def spanned(fn) -> tuple[object, int]:
    """fn()'s result and how many _pipelines of several spans it ran."""
    runs, pipeline = [], tg._pipeline

    def counting(device, spans, *args):
        runs.append(len(spans) > 1)
        return pipeline(device, spans, *args)

    tg._pipeline = counting
    try:
        return fn(), sum(runs)
    finally:
        tg._pipeline = pipeline


def main() -> None:
    if not SMOKE:
        print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    for batch, hidden in POINTS:
        point(batch, hidden)


def point(batch: int, hidden: int) -> None:
    """One point's lines: each kind of call under each setting."""
    torch.manual_seed(0)
    gru = flashgru.GRU(hidden, hidden, backend="triton", device=dev)
    x = torch.randn(STEPS, batch, hidden, device=dev)
    xg = x.clone().requires_grad_()

    def infer():
        with torch.no_grad():
            return gru(x)[0]

    def train():
        out = gru(xg)[0]
        out.sum().backward()
        return out

    # (inference: FORWARD is True there)
    kinds = {"inference": (infer, [s for s in SETTINGS if s[0] != tg.FORWARD]),
             "training": (train, SETTINGS)}
    for kind, (fn, settings) in kinds.items():
        want = fn().detach()
        got = {s: spanned(under(s, fn)) for s in settings}
        times = interleaved({s: under(s, fn) for s in settings}, STEPS)
        off = times[settings[0]]
        for s in settings:
            print(f"fp32 B={batch} H={hidden} {kind:>9} overlap={s[0]!s:<7} first "
                  f"{s[1]:>2} growth {s[2]}: {times[s]:7.2f} µs/step ×{off / times[s]:.3f}"
                  f" (against off), max |Δout| "
                  f"{(got[s][0].detach() - want).abs().max().item():.1e}, "
                  f"{got[s][1]} in spans", flush=True)


if __name__ == "__main__":
    main()
