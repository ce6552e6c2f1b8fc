"""Where a call of flashgru.GRU(backend="triton") spends its time (issue 5: at B=16 on an
H200, 2026-11-28, the kernels of a bf16 H=1024 inference call took 2.78 µs a step in
benchmark mode while the call took 3.45-4.09; fp32 H=1024's training kernels 5.93 +
10.93, the call 23.5). Times each part of the call at two lengths, so a fixed cost and a
per-step one tell apart: the forward kernel with and without saving the gates, the
backward (kernel and dW_hh's GEMM), the input projection, dW_hh's GEMM alone on fp32 and
on bf16 operands, the core's autograd forward+backward, the module's inference call and
training step and cuDNN's;
then the inference calls five back to back (against each alone: what a call's start
costs); one call each of the module's inference and training and cuDNN's inference under
torch.profiler, kernel by kernel from the call's start with the GPU's idle gaps (where a
call's time beyond its kernels goes); short calls back to back (T=1-64) against cuDNN's,
per call; torch.profiler's
table of one module training step's CUDA work, and cProfile's of the host's Python in
200 short inference and training calls (where a call's fixed ~0.3 ms of host time
before its kernel starts goes). The forward and backward kernels are
timed with their default splits, ``Config.prefetch`` off and on (a
step's reads from memory issued a step ahead: at these lengths gi and the saved gates
have left L2, where benchmark mode's first 256 steps may keep them). A diagnostic for a
lent GPU, not a test.

    python scripts/gpu_profile_training.py
    TRITON_INTERPRET=1 python scripts/gpu_profile_training.py --smoke
"""
import cProfile
import pstats
import sys

import torch
from gpu_timing import interleaved, per_call

import flashgru
import flashgru.backends.triton_gru as tg

SMOKE = "--smoke" in sys.argv
dev = "cpu" if SMOKE else "cuda"
torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
# (issue 5's B=16 points short of 4x cuDNN on an H200, 2026-11-28, nearest first)
POINTS = [(2, 8, torch.float32)] if SMOKE else [
    (16, 1024, torch.bfloat16), (16, 512, torch.float32), (16, 1024, torch.float32),
    (16, 512, torch.bfloat16)]
LENGTHS = (4, 8) if SMOKE else (512, 2048)


def parts(batch: int, hidden: int, dtype: torch.dtype, steps: int) -> dict:
    """The timed parts of one training call at this point: name → fn."""
    torch.manual_seed(0)
    ref = torch.nn.GRU(hidden, hidden, device=dev, dtype=dtype)
    ref.flatten_parameters()
    module = flashgru.GRU.from_torch(ref, backend="triton")
    w_hh, b_hh = ref.weight_hh_l0.detach(), ref.bias_hh_l0.detach()
    x = torch.randn(steps, batch, hidden, device=dev, dtype=dtype)
    dout = torch.randn(steps, batch, hidden, device=dev, dtype=dtype)
    gi = torch.nn.functional.linear(x, ref.weight_ih_l0, ref.bias_ih_l0).detach()
    h0 = torch.zeros(batch, hidden, device=dev, dtype=dtype)
    lengths = torch.full((batch,), steps, dtype=torch.int64, device=dev)
    out, saved = tg.forward(gi, h0, w_hh, b_hh, lengths, True, True)
    dgh = torch.randn(steps * batch, 3 * hidden, device=dev)
    h_prev = torch.randn(steps * batch, hidden, device=dev)

    def core_step():
        g = gi.detach().requires_grad_()
        tg.core(g, h0, w_hh, b_hh, None, True).backward(dout)

    def train_step(m):
        xg = x.detach().requires_grad_()
        m(xg)[0].backward(dout)

    def infer(m):
        with torch.no_grad():
            m(x)

    # the default splits, without their reads a step ahead (Config.prefetch) and with
    cuda = torch.device(dev)
    inf = tg.choose_config(batch, hidden, cuda, dtype)
    fwd = tg.choose_config(batch, hidden, cuda, dtype, save=True)
    bwd = tg.choose_backward_config(batch, hidden, cuda, dtype)
    ahead = {k: tuple(c._replace(prefetch=on) for c in (inf, fwd, bwd))
             for k, on in (("", False), (", prefetch", True))}
    return {
        **{f"forward kernel (inference){k}": lambda f=f: tg.forward(gi, h0, w_hh, b_hh,
                                                                     lengths, True, False, f)
           for k, (f, _, _) in ahead.items()},
        **{f"forward kernel (saving){k}": lambda f=f: tg.forward(gi, h0, w_hh, b_hh, lengths,
                                                                  True, True, f)
           for k, (_, f, _) in ahead.items()},
        **{f"backward (kernel + dW_hh){k}": lambda b=b: tg.backward(dout, h0, w_hh, out, saved,
                                                                     lengths, True, b)
           for k, (_, _, b) in ahead.items()},
        "input projection (F.linear)": lambda: torch.nn.functional.linear(
            x, ref.weight_ih_l0, ref.bias_ih_l0),
        "module inference": lambda: infer(module),
        "cuDNN inference": lambda: infer(ref),
        "dW_hh GEMM, fp32 operands": lambda: dgh.t() @ h_prev,
        "dW_hh GEMM, bf16 operands": lambda: dgh.bfloat16().t() @ h_prev.bfloat16(),
        "core fwd+bwd (autograd)": core_step,
        "module training step": lambda: train_step(module),
        "cuDNN training step": lambda: train_step(ref),
    }


for batch, hidden, dtype in POINTS:
    for steps in LENGTHS:
        # (in turns, so that a drift of the card's clocks falls on every part alike)
        for name, us in interleaved(parts(batch, hidden, dtype, steps), steps, rounds=3,
                                    reps=3).items():
            print(f"{str(dtype)[6:]:>8} B={batch:<2} H={hidden:<4} T={steps:<5} {name:35s}"
                  f" {us * steps / 1e3:8.3f} ms {us:7.2f} µs/step", flush=True)


# the first length's inference calls again, five back to back: where the timings above
# (each call alone, from an idle card) exceed these, a call pays for its start (the
# host's time before its kernels, the card's clocks after an idle gap) rather than for
# its kernels' work
for batch, hidden, dtype in POINTS:
    steps = LENGTHS[0]
    timed = parts(batch, hidden, dtype, steps)
    for name in ("forward kernel (inference)", "module inference", "cuDNN inference"):
        us = per_call(timed[name], calls=5) / steps
        print(f"{str(dtype)[6:]:>8} B={batch:<2} H={hidden:<4} T={steps:<5} {name:35s}"
              f" back to back {us:7.2f} µs/step", flush=True)


def timeline(fn, label: str) -> None:
    """One call of fn() from an idle card under torch.profiler: each GPU kernel's start
    and end from the call's start on the host (µs), and the GPU's idle gaps between them;
    so a call's time beyond its kernels shows as a late first kernel (the host's time
    before it), gaps (the host's time between launches, or a launch's own wait), or
    kernels longer than timed alone. Off CUDA, the host's time alone."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function

    fn()
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        with record_function("the call"):
            fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    events = prof.events()
    call = next(e for e in events if e.name == "the call")
    t0 = call.time_range.start
    kernels = sorted((e for e in events if e.device_type == DeviceType.CUDA),
                     key=lambda e: e.time_range.start)
    print(f"---- timeline {label}: host {call.time_range.end - t0:.0f} µs")
    end, busy = None, 0.0
    for e in kernels:
        start, stop = e.time_range.start - t0, e.time_range.end - t0
        gap = "" if end is None else f" (idle {max(0.0, start - end):.0f} µs before)"
        print(f"  {start:9.0f} → {stop:9.0f} µs  {stop - start:8.0f} µs  {e.name[:60]}{gap}")
        end, busy = stop if end is None else max(end, stop), busy + stop - start
    if kernels:
        print(f"  first kernel at {kernels[0].time_range.start - t0:.0f} µs, kernels busy "
              f"{busy:.0f} µs, last ends at {end:.0f} µs")


# one inference and one training call of the module at each point, T=512, kernel by
# kernel (timeline): where the call's time beyond its kernels goes
for batch, hidden, dtype in POINTS:
    timed = parts(batch, hidden, dtype, LENGTHS[0])
    for name in ("module inference", "module training step", "cuDNN inference"):
        try:  # (a diagnostic: a profiler failure costs its lines alone)
            timeline(timed[name], f"{str(dtype)[6:]} B={batch} H={hidden} T={LENGTHS[0]} "
                                  f"{name}")
        except Exception as e:  # noqa: BLE001
            print(f"---- timeline {name}: {type(e).__name__}: {e}")


# short calls back to back (T=1-64, as RL and streaming training make them), where the
# host's time before the kernels start can set the pace: the module against cuDNN, in
# turns, three rounds (auto gives every length at H ≥ 256 to the kernels: T=1 and 4 show
# whether a short call should stay on cuDNN)
SHORT = [(2, 8, 4, torch.float32)] if SMOKE else [
    (16, 256, 16, torch.float32), (16, 256, 64, torch.float32), (1, 256, 16, torch.float32),
    (16, 512, 16, torch.bfloat16), (64, 256, 32, torch.float32), (1, 256, 1, torch.float32),
    (1, 256, 4, torch.float32), (16, 1024, 1, torch.bfloat16), (16, 1024, 4, torch.float32)]
for batch, hidden, steps, dtype in SHORT:
    torch.manual_seed(0)
    ref = torch.nn.GRU(hidden, hidden, device=dev, dtype=dtype)
    module = flashgru.GRU.from_torch(ref, backend="triton")
    x = torch.randn(steps, batch, hidden, device=dev, dtype=dtype)
    xg = x.detach().requires_grad_()

    def train(m, xg=xg):
        m(xg)[0].sum().backward()

    def infer(m, x=x):
        with torch.no_grad():
            m(x)

    calls = {f"{kind} {name}": (lambda f=f, m=m: f(m))
             for kind, f in (("training", train), ("inference", infer))
             for name, m in (("flashgru", module), ("cuDNN", ref))}
    us = {name: [] for name in calls}
    for _ in range(3):
        for name, fn in calls.items():
            us[name].append(per_call(fn))
    us = {name: sorted(t)[1] for name, t in us.items()}
    for kind in ("training", "inference"):
        ours, theirs = us[f"{kind} flashgru"], us[f"{kind} cuDNN"]
        print(f"short {str(dtype)[6:]:>8} B={batch:<2} H={hidden:<4} T={steps:<3} {kind:9s}"
              f" flashgru {ours:8.1f} µs a call, cuDNN {theirs:8.1f}: {theirs / ours:5.2f}x",
              flush=True)

# the first point's module: the profiler's kernels of one training step, then the host's
# Python over 200 calls at T=16 (the kernels short; the GPU awaited once at the end)
batch, hidden, dtype = POINTS[0]
torch.manual_seed(0)
ref = torch.nn.GRU(hidden, hidden, device=dev, dtype=dtype)
module = flashgru.GRU.from_torch(ref, backend="triton")
if not SMOKE:
    x = torch.randn(LENGTHS[0], batch, hidden, device=dev, dtype=dtype, requires_grad=True)
    module(x)[0].sum().backward()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(3):
            module(x)[0].sum().backward()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20))
x = torch.randn(4 if SMOKE else 16, batch, hidden, device=dev, dtype=dtype)
for name, grad in (("inference", False), ("training", True)):
    xg = x.detach().requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        module(xg)[0].sum().backward() if grad else module(xg)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(20 if SMOKE else 200):
            if grad:
                module(xg)[0].sum().backward()
            else:
                module(xg)
        profiler.disable()
    if not SMOKE:
        torch.cuda.synchronize()
    print(f"---- host Python, {name} calls (cProfile, by own time)")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(18)
