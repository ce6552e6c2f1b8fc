"""The fp32 GEMMs beside the recurrence (triton_gru.overlap) over a few span settings, and
the input projection inside the forward kernel (triton_gru.project), at fp32 B=16, T=512
(H=256 and 512, where they apply): each setting's inference and training call in µs a
step, timed in turn with both off (gpu_timing.interleaved), its output's largest
difference from the call without them, how many of the call's forward and backward ran
in spans (0 where the setting didn't apply), and how many forwards made their own
projections. A diagnostic for a lent GPU, not a test: it picks OVERLAP_FIRST and
OVERLAP_GROWTH, whether the backward's GEMMs gain too (True) or the forward's alone
(FORWARD), and whether ``project`` wins, alone or with the backward's GEMMs overlapped.

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
# (overlap, OVERLAP_FIRST, OVERLAP_GROWTH, project); the first, off, is what the others
# are compared with
SETTINGS = [(False, 16, 2, False), (True, 16, 2, False), (True, 32, 2, False),
            (True, 64, 2, False), (True, 16, 3, False), (tg.FORWARD, 16, 2, False),
            (tg.FORWARD, 32, 2, False), (False, 16, 2, True), (True, 16, 2, True)]
if SMOKE:  # (the interpreter's CPU tensors take both too; spans of a few steps)
    tg._OVERLAP_ON = tg._PROJECT_ON = ("cuda", "cpu")
    SETTINGS = [(on, first // 8, growth, project) for on, first, growth, project in SETTINGS]


def under(setting, fn):
    """fn with triton_gru's overlap and project settings set for its call alone."""
    def call():
        saved = tg.overlap, tg.OVERLAP_FIRST, tg.OVERLAP_GROWTH, tg.project
        tg.overlap, tg.OVERLAP_FIRST, tg.OVERLAP_GROWTH, tg.project = setting
        try:
            return fn()
        finally:
            tg.overlap, tg.OVERLAP_FIRST, tg.OVERLAP_GROWTH, tg.project = saved

    return call


def spanned(fn) -> tuple[object, int, int]:
    """fn()'s result, how many _pipelines of several spans it ran, and how many forwards
    made their own projections (_fused)."""
    runs, fused, pipeline, fuse = [], [], tg._pipeline, tg._fused

    def counting(device, spans, *args):
        runs.append(len(spans) > 1)
        return pipeline(device, spans, *args)

    def fusing(*args):
        fused.append(1)
        return fuse(*args)

    tg._pipeline, tg._fused = counting, fusing
    try:
        return fn(), sum(runs), len(fused)
    finally:
        tg._pipeline, tg._fused = pipeline, fuse


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
                  f"{s[1]:>2} growth {s[2]} project={s[3]!s:<5}: {times[s]:7.2f} µs/step "
                  f"×{off / times[s]:.3f} (against off), max |Δout| "
                  f"{(got[s][0].detach() - want).abs().max().item():.1e}, "
                  f"{got[s][2]} fused, {got[s][1]} in spans", flush=True)


if __name__ == "__main__":
    main()
