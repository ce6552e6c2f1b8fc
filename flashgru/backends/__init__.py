"""Backends and the one dispatch point that picks among them.

A backend implements either the recurrent core (``core(gi, h0, w_hh, b_hh, lengths,
reset_after) -> out``, see ``reference.core``) or, like "torch", the whole stack of layers
with ``_VF.gru``'s arguments. ``BACKENDS`` is the whole registry: a dict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import cpu, cpu_step, parallel, reference, tf32x3, torch_native, triton_gru
from ._triton import splits as triton_splits


@dataclass(frozen=True)
class Backend:
    """What the dispatcher needs to know about a backend.

    run: the recurrent core (``kind == "core"``) or the whole stack (``kind == "stack"``).
    reset_before: whether it runs reset_after=False.
    missing: returns None when the backend can run here, else what to install.
    devices, dtypes: what it runs on (None: anything torch's GRU takes).
    double_backward: whether its gradients are differentiable again.
    pair: optional, both directions of a bidirectional layer in one call (``cpu.core_pair``
      's contract), for a core that runs them side by side.
    traceable: whether torch.jit.trace records it right (only torch ops, no values read
      back into Python).
    linear: a core backend's input projection, F.linear's contract (the triton backend's:
      ``tf32x3.linear``, its fp32 GEMMs as three TF32 ones where enabled).
    projected: optional, a one-way layer's projection and core in one call,
      ``(x, w_ih, b_ih, h0, w_hh, b_hh, lengths, reset_after) -> out``, for a core that
      overlaps the two (``triton_gru.core_projected``); ``linear`` then ``run`` where not.
    """

    name: str
    kind: str
    run: Callable
    reset_before: bool
    missing: Callable[[], str | None] = lambda: None
    devices: tuple[str, ...] | None = None
    dtypes: tuple[torch.dtype, ...] | None = None
    double_backward: bool = True
    pair: Callable | None = None
    traceable: bool = False
    linear: Callable = F.linear
    projected: Callable | None = None


BACKENDS: dict[str, Backend] = {
    "reference": Backend("reference", "core", reference.core, reset_before=True,
                         traceable=True),
    "torch": Backend("torch", "stack", torch_native.gru_stack, reset_before=False,
                     traceable=True),
    "cpu": Backend("cpu", "core", cpu.core, reset_before=True, missing=cpu.missing,
                   devices=("cpu",), dtypes=(torch.float32, torch.float64),
                   double_backward=False, pair=cpu.core_pair),
    "parallel": Backend("parallel", "core", parallel.core, reset_before=True,
                        dtypes=(torch.float32, torch.float64), double_backward=False),
    "triton": Backend("triton", "core", triton_gru.core, reset_before=True,
                      missing=triton_gru.missing, devices=triton_gru.devices(),
                      dtypes=triton_gru.DTYPES, double_backward=False, traceable=True,
                      linear=tf32x3.linear, pair=triton_gru.core_pair,
                      projected=triton_gru.core_projected),
}


# torch's formulation stays on torch's CPU GRU above this batch × hidden (and above batch 16):
# measured 2026-11-26 on 2 cores, T=64, the cpu backend 1.02-2.4x faster forward and
# 1.04-4.0x forward+backward for B ∈ {16, 32, 64, 128} × H ∈ {64, ..., 512} up to it,
# 0.98x / 0.88x at B=128, H=512 beyond it. Where a call's rows go over torch's threads
# (``cpu._parts``), up to the second bound, H ≤ 512: measured 1.01-1.75x (forward+backward)
# and 1.07-1.62x (forward) at B=64-512, H=128-512 up to B × H = 131072 (B=128, H=512:
# 1.08x / 1.08x); at H=1024 forward 0.93-0.97x.
CPU_MAX_BATCH, CPU_MAX_BATCH_HIDDEN = 16, 32768
CPU_SPLIT_MAX_BATCH_HIDDEN, CPU_SPLIT_MAX_HIDDEN = 131072, 512
# Fewer steps than this, torch's formulation stays on torch's kernels: the fused call's
# fixed cost (Python, the launch) is more than a short call saves. Measured (module, cpu
# against torch.nn.GRU, B ∈ {1, 16, 64}, H ∈ {64, 256}): inference T=2 0.77-0.87x, T=4
# 1.00-1.18x, T=8 1.17-1.75x; training T=1 0.66-0.73x, T=2 0.90-1.07x, T=4 1.08-1.43x.
# One inference step that the streaming kernel takes (``cpu_step.step_fits``) is faster
# (B=1: 1.39x at H=256, 1.78x at H=64; at B=16-64 it does not fit and measured 0.65-0.74x).
CPU_MIN_STEPS = 4
TRITON_MIN_HIDDEN = 256  # from here cuDNN leaves its persistent kernel (DESIGN.md anchors)
# Calls of fewer steps stay on cuDNN: their time is the host's, and cuDNN's call costs it
# less. Measured on an H200 (2026-11-28, back to back, flashgru against cuDNN): T=1 0.44x
# inference / 0.61x training (fp32, B=1, H=256), 1.08x / 0.74x (bf16, B=16, H=1024); T=4
# 0.63x / 0.68x (fp32, B=1, H=256), 0.54x / 0.63x (fp32, B=16, H=1024); T=16 0.93-2.0x,
# T=64 1.9-2.2x. (Before the thirty-second session's host cuts, ~0.1-0.25 ms an inference
# call and ~0.7-0.9 ms a training call: T=4 may now be even.)
TRITON_MIN_STEPS = 5
# Long single sequences with small H go to the parallel-in-time solver on CUDA. Measured on
# an H100 (2026-11-27, fp32, torch's init, dense Newton, 4 iterations), its fused solver
# against cuDNN at B=1, forward / forward+backward: T=8192 0.70x / 1.14x (H=32), 1.38x /
# 1.64x (H=64); T=16384 1.60x / 2.27x, 1.20x / 3.36x; T=32768 4.0-4.8x / 5.6-6.8x; with
# recurrent weights 3x torch's scale 3.0x / 4.8x (T=32768, H=64); at T=65536 (cuDNN
# refuses) 15x / 25x the Triton kernels. At B=8 (0.78x forward) and at H=128 (no Triton
# dense scan) the dense solver lost.
PARALLEL_MIN_STEPS, PARALLEL_MAX_BATCH, PARALLEL_MAX_HIDDEN = 16384, 1, 64
# ... while its dense Jacobians (T·B·H² numbers, held twice in training) stay within 2^28
# numbers (1 GiB in fp32; T=65536 at H=64, measured); longer calls stay sequential.
PARALLEL_MAX_JACOBIAN = 1 << 28


class BackendChoice(NamedTuple):
    """The backend a call runs on, and why."""

    name: str
    reason: str


class BackendUnavailableError(RuntimeError):
    """A requested backend can't run here (a missing optional dependency)."""


def check_backend_name(name: str) -> None:
    """Raise ValueError for a backend name that flashgru does not know."""
    if name != "auto" and name not in BACKENDS:
        known = ", ".join(repr(n) for n in ("auto", *BACKENDS))
        raise ValueError(f"unknown backend {name!r}; choose one of {known}")


def check_backend(requested: str, reset_after: bool) -> None:
    """Raise for a backend that can't run this module anywhere: an unknown name, a missing
    optional dependency, or a formulation it lacks. (Device and dtype are checked per call:
    a module is often built on the CPU and moved.)"""
    check_backend_name(requested)
    if requested == "auto":
        return
    backend = BACKENDS[requested]
    hint = backend.missing()
    if hint is not None:
        raise BackendUnavailableError(f"backend {requested!r} is unavailable: {hint}")
    if not reset_after and not backend.reset_before:
        raise ValueError(
            f"backend {requested!r} runs only reset_after=True (torch's formulation); "
            "for reset_after=False use backend='reference' or backend='auto'"
        )


def select_backend(
    requested: str = "auto",
    *,
    reset_after: bool = True,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    steps: int = 1,
    batch: int = 1,
    hidden: int = 1,
    grad: bool = False,
) -> BackendChoice:
    """Pick the backend for one call of ``flashgru.functional.gru`` and say why.

    ``requested`` other than "auto" is honoured or refused with an error that says what
    to install or change; it is never silently replaced. For "auto" the rules are, first
    match wins:

    0. While torch ops are recorded or transformed rather than run (``recording``:
       torch.jit.trace, torch.compile, torch.export, torch.func transforms), on the CPU →
       "torch" (``reset_after=False``: "reference"): the ``cpu`` backend's numba kernels
       are not torch ops (a trace would keep their outputs as constants; dynamo, export's
       fake tensors and functorch can't see into them) and ``parallel`` reads values back
       into Python. Asked for by name there, those two raise RuntimeError. (``triton``'s
       kernels are a ``torch.library`` op, which these record.)
    1. CPU, float32/float64, numba installed, and ``reset_after=False``, or ``steps`` ≥ 4
       (or one inference step the streaming kernel takes, ``cpu_step.step_fits``) and
       ``batch`` ≤ 16 or ``batch × hidden`` ≤ 32768 → "cpu": the fused CPU kernels
       (shorter calls measured 0.66–0.87× torch's). Measured on 2 cores
       against torch.nn.GRU: 2–12× faster forward and 5–20× forward+backward at batch 1,
       1.06–2.4× / 1.4–4.0× at batch 16, 1.02–1.9× / 1.04–2.9× at batch 32–128 up to
       that size. Where a call's rows split over torch's threads (``cpu._parts``), also
       up to ``batch × hidden`` ≤ 131072 at ``hidden`` ≤ 512: 1.07–1.62× / 1.01–1.75× at
       batch 64–512 (at hidden 1024 the forward measured 0.93–0.97×, and torch keeps the
       call). No double backward: ask for "reference" for gradients of gradients.
    2. CUDA, Triton installed, a float dtype, and ``reset_after=False``, ``hidden`` ≥ 256,
       bfloat16, or ``steps`` ≥ 65536 → "triton": the persistent Triton kernels, where
       cuDNN has no kernel (the paper's formulation), falls off its persistent kernel
       (H ≥ 256: 1.3-5.7x faster measured on an H100, fp32), is slow whatever the size
       (bf16: 2.1-7.6x) or refuses the length; but calls of fewer than
       ``TRITON_MIN_STEPS`` (5) steps in torch's formulation stay on cuDNN, whose call
       starts faster (T=1-4: 0.44-0.74x at five of six points measured on an H200). At
       H ≤ 128 in fp32/fp16 cuDNN's persistent kernel is faster (0.8-1.2 µs per step
       against 2.7-7 µs) and keeps the call.
       Measured exceptions, where the Triton backward is slower though its forward wins:
       training (``grad``) in float32 at batch 9-16 with hidden > 512 where the
       backward's split cannot keep W_hhᵀ resident (0.90x forward+backward at H=1024
       without, 1.29x with, 2.05x with its product chunked; H > 1024 on 132 SMs) and in
       bfloat16 at batch > 64 with hidden ≥ 1024 (0.93x at batch 128) goes to cuDNN; so
       does batch 5-8 above H=1024 (on 132 SMs), where the forward's split streams W_hh
       through the broadcast product, its tiles too large to keep in registers
       (``_streamed_split``: slower than cuDNN; up to H=1024 they stay resident, 2.5-3.9x
       cuDNN at B=8). Hidden
       sizes over 64 × the GPU's multiprocessors (``triton_gru.max_hidden``: 8448 on 132
       SMs), which the kernels can't hold at once, go to torch (to "reference" for
       ``reset_after=False``).
    3. ``reset_after=False`` → "reference": torch has no kernel for the reset-before-matmul
       formulation and no fused backend of ours runs this call.
    4. otherwise → "torch": torch's own fused GRU (cuDNN on CUDA, ATen on CPU). On CUDA
       with ``steps`` ≥ 65536, which cuDNN refuses, it runs torch's native CUDA kernels
       with cuDNN disabled, so auto never picks a call that fails on length.

    Between 1 and 2: CUDA, Triton installed, ``reset_after=True``, float32, ``batch`` 1,
    ``hidden`` ≤ 64 and ``steps`` ≥ 16384 with steps × hidden² ≤ 2^28 (the dense
    Jacobians' memory: 1 GiB), not under tracing, torch.compile, torch.func, autocast,
    CUDA graph capture or TF32 matmuls (``_unmeasured_for_parallel``) →
    "parallel": the Newton solver, parallel in time, with its fused Triton kernels (4.0-4.8x
    cuDNN forward and 5.6-6.8x forward+backward at T=32768, H=32-64 on an H100; 1.2-1.6x /
    2.3-3.4x at T=16384; about even at T=8192; at T ≥ 65536, which cuDNN refuses, 15x /
    25x the Triton kernels). Its speed depends on the weights (more iterations where the
    GRU is far from contractive; the answer does not). On a CPU the sequential kernels
    win; ask for it by name there.

    ``device``, ``dtype``, ``steps`` (sequence length), ``batch`` and ``hidden`` are the
    call's; ``grad``: whether the call records gradients (autograd on and an input or
    weight that requires them).
    """
    check_backend(requested, reset_after)
    device = torch.device(device)
    mode = recording()
    if requested != "auto":
        backend = BACKENDS[requested]
        if not _runs(backend, device, dtype):
            raise ValueError(
                f"backend {requested!r} runs {_what(backend)}, not {dtype} on {device.type}; "
                "use backend='auto' or 'reference'"
            )
        if mode and not backend.traceable:
            raise RuntimeError(
                f"backend {requested!r} cannot be recorded by {mode} (its kernels are not "
                "torch ops); use backend='auto', 'torch' or 'reference' there")
        return BackendChoice(requested, "requested")
    if mode and device.type == "cpu":
        return (BackendChoice("torch", f"{mode} records torch's fused GRU")
                if reset_after else
                BackendChoice("reference", f"{mode} records the reference core"))
    fused = BACKENDS["cpu"]
    if fused.missing() is None and _runs(fused, device, dtype) and (
            not reset_after or (not _short_for_cpu(steps, batch, hidden, grad) and (
                batch <= CPU_MAX_BATCH or batch * hidden <= CPU_MAX_BATCH_HIDDEN
                or (batch * hidden <= CPU_SPLIT_MAX_BATCH_HIDDEN
                    and hidden <= CPU_SPLIT_MAX_HIDDEN and cpu._parts(batch) > 1)))):
        return BackendChoice("cpu", f"{device.type}, {dtype}, batch {batch}: flashgru's "
                                    "fused CPU kernels")
    if fused.missing() is None and _runs(fused, device, dtype) and reset_after and \
            _short_for_cpu(steps, batch, hidden, grad):
        return BackendChoice("torch", f"{steps} step{'s' * (steps != 1)}: torch's fused GRU "
                                      "(ATen) starts faster than the fused CPU kernels")
    gpu = BACKENDS["triton"]
    if device.type == "cuda" and gpu.missing() is None and reset_after and \
            dtype == torch.float32 and batch <= PARALLEL_MAX_BATCH and \
            hidden <= PARALLEL_MAX_HIDDEN and steps >= PARALLEL_MIN_STEPS and \
            steps * batch * hidden * hidden <= PARALLEL_MAX_JACOBIAN and \
            not _unmeasured_for_parallel():
        return BackendChoice("parallel", f"{steps} steps at batch {batch}, hidden {hidden}: "
                                         "the parallel-in-time solver")
    if device.type == "cuda" and gpu.missing() is None and _runs(gpu, device, dtype) and (
            not torch.cuda.is_available() or hidden <= triton_splits.max_hidden(device)):
        long = steps > torch_native.CUDNN_MAX_STEPS
        bf16 = dtype == torch.bfloat16
        slow_backward = _slow_triton_backward(grad, reset_after, long, dtype, batch, hidden,
                                              device)
        if (not reset_after or hidden >= TRITON_MIN_HIDDEN or long or bf16) and not \
                slow_backward:
            if reset_after and steps < TRITON_MIN_STEPS:
                return BackendChoice("torch", f"{steps} step{'s' * (steps != 1)}: cuDNN's "
                                              "call starts faster than the Triton kernels")
            if reset_after and not long and _streamed_split(batch, hidden, device, dtype):
                return BackendChoice("torch", f"batch {batch}, hidden {hidden}: the Triton "
                                              "split there streams W_hh through the broadcast "
                                              "product (its tiles too large for registers), "
                                              "slower than cuDNN")
            why = ("reset_after=False" if not reset_after else
                   f"{steps} steps ≥ 65536" if long else
                   f"hidden {hidden} ≥ 256" if hidden >= TRITON_MIN_HIDDEN else
                   "bfloat16, where cuDNN has no fast kernel")
            return BackendChoice("triton", f"{why}: flashgru's persistent Triton kernels")
    if not reset_after:
        return BackendChoice(
            "reference", "reset_after=False: torch has no fused kernel for this formulation"
        )
    if device.type == "cuda" and steps > torch_native.CUDNN_MAX_STEPS:
        return BackendChoice(
            "torch", f"{steps} steps ≥ 65536, which cuDNN refuses: torch's native CUDA kernels"
        )
    where = "cuDNN" if device.type == "cuda" else f"ATen on {device.type}"
    if device.type == "cuda" and _slow_triton_backward(grad, reset_after, False, dtype, batch,
                                                       hidden, device):
        return BackendChoice("torch", f"{str(dtype).removeprefix('torch.')} training at batch "
                                      f"{batch}, hidden {hidden}: cuDNN's backward is faster "
                                      "than the Triton one here")
    return BackendChoice("torch", f"reset_after=True: torch's fused GRU ({where})")


def recording() -> str | None:
    """What records or transforms torch ops instead of running them on data, if anything
    does: torch.jit.trace, torch.compile (dynamo), torch.export or a torch.func transform
    (named, for messages); else None."""
    if torch.jit.is_tracing():
        return "torch.jit.trace"
    if getattr(torch.compiler, "is_exporting", bool)():  # (torch ≥ 2.6: export's own flag)
        return "torch.export"
    if torch.compiler.is_compiling():
        return "torch.compile"
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return "torch.func"
    return None


def _unmeasured_for_parallel() -> bool:
    """Modes where auto keeps a call off the parallel solver (it stays on cuDNN or the
    Triton kernels): tracing, torch.compile, torch.func transforms, torch function or
    dispatch modes and autocast (``cpu_step._special_mode``), CUDA graph capture (the
    solver reads its residuals back to the host) and TF32 matmuls (its timings were
    measured in full fp32)."""
    return (cpu_step._special_mode() or torch.backends.cuda.matmul.allow_tf32 or (
        torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()))


def _short_for_cpu(steps: int, batch: int, hidden: int, grad: bool) -> bool:
    """Whether a call of torch's formulation is too short for the fused CPU kernels:
    fewer than CPU_MIN_STEPS steps, except one inference step that the streaming kernel
    takes (``cpu_step.step_fits``, its input size taken as ``hidden``)."""
    if steps >= CPU_MIN_STEPS:
        return False
    return not (steps == 1 and not grad and cpu_step.step_fits(batch, 6 * hidden * hidden))


def _slow_triton_backward(grad: bool, reset_after: bool, long: bool, dtype: torch.dtype,
                          batch: int, hidden: int, device: torch.device) -> bool:
    """Where the Triton kernels lost to cuDNN forward+backward though winning forward:
    float32 at batch 9-16, H=1024, unless the backward's split keeps W_hhᵀ resident (0.90x
    without, 1.29x with on an H200, 2026-11-27; 2.05x chunked, Config.chunked), and
    bfloat16 at batch 128, H=1024 (0.93x, H100). Only torch's formulation (cuDNN has no
    other) and lengths cuDNN takes."""
    if not (grad and reset_after) or long:
        return False
    if dtype == torch.float32 and 8 < batch <= 16 and hidden > 512:
        if not torch.cuda.is_available():  # a query with no device to size the split on
            return True
        return not triton_splits.choose_backward_config(batch, hidden, device, dtype).resident
    return dtype == torch.bfloat16 and batch > 64 and hidden >= 1024


def _streamed_split(batch: int, hidden: int, device: torch.device, dtype: torch.dtype) -> bool:
    """Where the Triton forward's default split at batch 5-8 streams W_hh through the
    broadcast product in more than four chunks of K: where its units' tiles don't fit in
    registers (above H=1024 on 132 SMs; on other cards where its chunks fall so). By
    count (scripts/sass_profile.py, sm_90a) ~87,000 instructions per multiprocessor a step
    at B=8, H=1024 (fp32; bf16 and fp16 run the same fp32 product), which took 41 µs a
    step on an H200 (2026-11-27) against cuDNN's 15, before the tiles there were kept
    resident (4.5 µs): auto keeps the larger sizes on cuDNN. Not fp64. A query with no
    device to size the split on takes 132 multiprocessors."""
    if not 4 < batch <= 8 or dtype == torch.float64:
        return False
    sms = triton_splits._multiprocessors(device) if torch.cuda.is_available() else 132
    cfg = triton_splits._broadcast_split(batch, hidden, sms, dtype)
    return not (cfg.dot or cfg.resident) and hidden > 4 * cfg.block_k


def _runs(backend: Backend, device: torch.device, dtype: torch.dtype) -> bool:
    return (backend.devices is None or device.type in backend.devices) and (
        backend.dtypes is None or dtype in backend.dtypes)


def _what(backend: Backend) -> str:
    dtypes = "/".join(str(d).removeprefix("torch.") for d in backend.dtypes or ())
    return f"{dtypes or 'any dtype'} on {'/'.join(backend.devices or ('any device',))}"
