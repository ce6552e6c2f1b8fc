"""The fused GPU backend: persistent Triton kernels for the recurrent core, forward and
backward through time, both formulations, sequence lengths, fp32/bf16/fp16 (fp32
arithmetic) and fp64.

One launch runs a whole layer-direction. The hidden units are split over P programs
(grid axis 0) and the batch over tiles (grid axis 1); program p owns hidden units
[p·S, (p+1)·S) of its tile's rows and keeps their state in registers across the time loop.
A step needs all of h (the hidden product), so each program writes its slice of h' to a
double-buffered state in global memory (L2-resident) and the P programs of a tile meet at
a barrier, a monotonic counter in global memory, before the next step reads it. All
programs must be resident at once, so the launcher keeps the grid within the number of
multiprocessors. W_hh is read from L2 each step (12 MB at H=1024 stays there).

Backward runs the reverse recurrence the same way: each program forms the gradients of
its slice's gate pre-activations, publishes them, meets the others at the barrier, and
multiplies the whole vector by its columns of W_hh (read from W_hhᵀ, transposed once per
call). The weight gradients are GEMMs over all steps afterwards.

reset_after=False needs h ⊙ r, all of it, in the middle of a step, and its backward needs
two whole gradient vectors: two barriers per step instead of one.

A split may exchange the vectors stamped instead (``Config.stamped``; fp32 arithmetic):
each value goes out as one 64-bit word with the step number in its high half, and a
reader loads the words it needs until all carry the current step (the idea of NCCL's and
MSCCL++'s LL protocol: 4 bytes of data beside a 4-byte flag, an aligned 8-byte word
written whole). Two buffers, used in turn, suffice: a program can write step t + 2's
words into step t's buffer only after it has read every program's step t + 1, which each
wrote after it had read all of step t.

Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors (slowly): that is how they are
tested without a GPU. The interpreter runs programs one after another, so a barrier among
several programs would wait forever: there each batch tile gets one program (P = 1), which
runs the same code, barrier included.

The code, in the four layers of a kernel file: the kernels in ``_triton`` (``forward``,
``backward``, on the device functions of ``exchange``, ``products`` and ``stacked``); the
launches (``_triton.launch``) and their splits (``_triton.splits``, benchmark mode's
``_triton.candidates``); then here the calls that allocate and launch (``forward``,
``backward``), the autograd function and torch.library op, and ``core``.

Needs Triton (``pip install 'flashgru[gpu]'``) and a CUDA GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from ..scan import l2_eviction, time_interleaved
from . import reference, tf32x3
from ._triton import splits
from ._triton.backward import _backward_kernel
from ._triton.candidates import _candidates
from ._triton.crossed import _crossed_kernel
from ._triton.forward import _forward_kernel
from ._triton.lang import INTERPRET, triton
from ._triton.launch import (
    _acc,
    _check_weights,
    _for_weights,
    _kernel_weights,
    _launch,
    _launch_crossed,
)
from ._triton.splits import (
    DTYPES,
    MAX_UNITS,
    Config,
    choose_backward_config,
    choose_config,
    max_hidden,
)
from .cpu_step import _special_mode

# Config and the default splits' rules live in _triton.splits, re-exported here for
# reading. Every caller calls them as splits.f, so a tool or test that replaces one for a
# process (as benchmarks/gpu.py's --no-* flags do) replaces it in _triton.splits, not
# here. What this module calls by its own names is replaced here: _candidates, _launch,
# _empty, time_interleaved, l2_eviction, forward; and a kernel's device functions in each
# kernel module that holds them (tests/test_triton.py's _patch_kernels).
__all__ = ["Config", "DTYPES", "backward", "benchmark", "choose_backward_config",
           "choose_config", "core", "core_pair", "devices", "forward", "max_hidden",
           "missing", "trials"]


def missing() -> str | None:
    if triton is None:
        return "it needs Triton: pip install 'flashgru[gpu]'"
    if not (INTERPRET or torch.cuda.is_available()):
        return "it needs a CUDA GPU (or TRITON_INTERPRET=1 to run its kernels on the CPU)"
    return None


def devices() -> tuple[str, ...]:
    return ("cuda", "cpu") if INTERPRET else ("cuda",)


# ---- benchmark mode: the fastest split on this card, measured at the first call -------------

# torch.backends.cudnn.benchmark's counterpart. The default splits were measured on an
# H100 and an H200; with ``benchmark = True`` the first call of each kind (inference
# forward, training forward, backward), batch, hidden size, dtype, formulation and length
# bucket (up to TUNE_STEPS) runs the splits of _candidates on its first TUNE_STEPS steps,
# leaves out those that fail or disagree with the default, and keeps the fastest for the
# later calls of that kind in this process (_split). The splits change the order of the
# fp32 sums, and those on the tensor cores make fp32 products of three TF32 ones
# (differences ~1e-7 to 1e-6). The first call also compiles each candidate:
# seconds. Not under CUDA graph capture, which can't wait for a timing: there, a split
# measured before, else the default. ``trials`` keeps what was measured.
benchmark = False
TUNE_STEPS = 256
_tuned: dict[tuple, Config] = {}
trials: dict[tuple, dict[Config, float | str]] = {}  # seconds, or why a split was left out


def _fastest(default: Config, candidates: list[Config], run, device: torch.device,
             dtype: torch.dtype) -> tuple[Config, dict]:
    """The fastest of the candidates that run and give the default's result (its first
    tensor, within the dtype's rounding), and the trial: each split's seconds
    (time_interleaved, L2 evicted before each timing: a real call's kernels read their
    inputs from memory, not from the L2 an earlier timing left them in), or why it was
    left out. The default runs first: its error is the call's."""
    if len(candidates) == 1:
        return default, {}
    want = run(default)[0]
    tol = 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2
    trial, runs = {}, {default: lambda: run(default)}
    for cfg in candidates[1:]:
        try:
            got = run(cfg)[0]
        except Exception as e:  # (a split this card can't run: left out)
            if isinstance(e, getattr(torch, "AcceleratorError", ())):
                raise  # (a CUDA error leaves the context unusable: not the split's alone)
            trial[cfg] = f"{type(e).__name__}: {str(e)[:200]}"
            continue
        if not torch.allclose(got, want, rtol=tol, atol=tol * float(want.abs().amax()),
                              equal_nan=True):
            trial[cfg] = "its result differs from the default's"
            continue
        runs[cfg] = lambda c=cfg: run(c)
    trial.update(time_interleaved(runs, device, before=l2_eviction(device)))
    return min(runs, key=trial.get), trial


def _split(kind: str, batch: int, hidden: int, steps: int, device: torch.device,
           dtype: torch.dtype, key: tuple, run, save: bool = False,
           weights: torch.dtype | None = None) -> Config:
    """A call's split: the default (choose_config, ``save`` for a training forward; for
    the backward, choose_backward_config), or in benchmark mode the fastest of
    _candidates, run with ``run(cfg)`` at the first call of each kind, shape, length
    bucket and ``key``; each as the weights (``weights``, else ``dtype``) allow
    (_for_weights)."""
    weights = weights or dtype
    default = _default(kind, batch, hidden, device, dtype, save, weights)
    if not (benchmark and steps and batch):
        return default
    key = (kind, device, batch, hidden, dtype, min(steps, TUNE_STEPS).bit_length(), *key,
           *((weights,) if weights != dtype else ()))
    if key not in _tuned:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return default
        candidates = _candidates(default, batch, hidden, device, dtype, kind == "forward")
        candidates = list(dict.fromkeys(_for_weights(c, weights) for c in candidates))
        _tuned[key], trials[key] = _fastest(default, candidates, run, device, dtype)
    return _tuned[key]


_defaults: dict[tuple, Config] = {}


def _default(kind: str, batch: int, hidden: int, device: torch.device, dtype: torch.dtype,
             save: bool, weights: torch.dtype) -> Config:
    """_split's default: choose_config (``save``: a training forward's), or for the
    backward choose_backward_config, as weights of this dtype allow (_for_weights). On
    CUDA kept per kind of call in ``_defaults``: the rules cost host time before every
    launch, and the GPU waits for it. Kept apart for each pair of rule functions, so that
    a process that replaces one (a test, benchmarks/gpu.py's restrict, which also empties
    ``_defaults``) gets its own."""
    key = (kind, batch, hidden, device, dtype, save, weights, splits.choose_config,
           splits.choose_backward_config)
    cfg = _defaults.get(key) if device.type == "cuda" else None
    if cfg is None:
        cfg = _for_weights(
            splits.choose_config(batch, hidden, device, dtype, save) if kind == "forward"
            else splits.choose_backward_config(batch, hidden, device, dtype), weights)
        if device.type == "cuda":
            _defaults[key] = cfg
    return cfg


# ---- the core ----------------------------------------------------------------------------

def _empty(*shape: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Every buffer a kernel writes comes from here (the tests fill them with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _padded(*shape: int, pad: bool, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A ``Config.permuted`` exchange, rows of block_k values: the kernels write each value
    of a k < H before they read it and read those past H as they are, so zeros where
    ``pad`` (block_k > H)."""
    return (torch.zeros if pad else _empty)(*shape, dtype=dtype, device=device)


_permuted: dict[tuple, Tensor] = {}


def _positions(cfg: Config, hidden: int, device: torch.device) -> Tensor:
    """splits._permuted_places(cfg, hidden, device), made once per split, H and device."""
    key = (cfg, hidden, device)
    if key not in _permuted:
        with torch.inference_mode(False):  # (kept for calls outside inference mode too)
            _permuted[key] = splits._permuted_places(cfg, hidden, device)
    return _permuted[key]


def _paired_weights(w: Tensor, cfg: Config, pair_rows: int) -> tuple[Tensor, dict]:
    """The kernels' weights (_kernel_weights) and, for a pair (``pair_rows``: w holds both
    directions' W_hh, or W_hhᵀ, stacked), both directions' one after the other, with the
    launch's PAIR arguments."""
    if not pair_rows:
        return _kernel_weights(w, cfg), {}
    parts = [_kernel_weights(v, cfg) for v in w]
    return torch.cat([v.reshape(-1) for v in parts]), dict(
        PAIR=True, pair_rows=pair_rows, w_stride=parts[0].numel())


def forward(gi: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor, lengths: Tensor,
            reset_after: bool, save: bool, cfg: Config | None = None, pair_rows: int = 0):
    """Returns out (T, B, H) in gi's dtype and the saved gates: with ``save``, r, z, n and
    (for reset_after=True) W_hn h + b_hn, each (T, B, H) in the arithmetic's dtype; else
    none. With ``pair_rows`` (core_pair; cfg given), the rows are a bidirectional layer's
    two directions, pair_rows each, and w_hh (2, 3H, H) and b_hh (2, 3H) hold both
    directions'."""
    out, saved, run = _forward_launches(gi, h0, w_hh, b_hh, lengths, reset_after, save, cfg,
                                        pair_rows)
    run(0, gi.shape[0])
    return out, saved


def _forward_launches(gi: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor, lengths: Tensor,
                      reset_after: bool, save: bool, cfg: Config | None = None,
                      pair_rows: int = 0, project: tuple[Tensor, Tensor] | None = None):
    """forward's buffers, made on the current stream: out, the saved gates, and
    ``run(t_begin, t_end)``, which launches steps [t_begin, t_end) on the current stream,
    from h0 at t_begin = 0, else from the state the launch before left, out[t_begin - 1]
    (so only for gi in the arithmetic's dtype: out then holds the state itself; a row past
    its length reads its zeros there, and never uses them). Launches over spans of time,
    in order, give one launch's numbers (_overlapped's). With ``project`` (W_ih, b_ih), gi
    is the layer's input x (T, B, I) and the kernel makes the input projections itself
    (_projecting's split of cfg, given)."""
    steps, batch, _ = gi.shape
    hidden = h0.shape[-1]
    acc = torch.float64 if gi.dtype == torch.float64 else torch.float32
    if cfg is None:
        cfg = _split("forward", batch, hidden, steps, gi.device, gi.dtype, (reset_after, save),
                     lambda c: forward(gi[:TUNE_STEPS], h0, w_hh, b_hh, lengths, reset_after,
                                       save, c), save, w_hh.dtype)
    out = _empty(steps, batch, hidden, dtype=gi.dtype, device=gi.device)
    if save:
        saved = [_empty(steps, batch, hidden, dtype=acc, device=gi.device)
                 for _ in range(3 + reset_after)]
        gates = (*saved[:3], saved[3] if reset_after else saved[0])
    else:  # (the kernel writes no gates: out stands in for their pointers)
        saved, gates = [], (out,) * 4
    _check_weights(cfg, w_hh.dtype)
    if cfg.k_blocks != 1:
        raise ValueError(f"k_blocks is the backward's (a crossed split); got {cfg}")
    if cfg.stamped:  # every word stamped -1: no step yet (the kernel stamps h0 with 0)
        hbuf = torch.full((2 + (not reset_after), batch, hidden), -1, dtype=torch.int64,
                          device=gi.device)
    elif cfg.permuted:  # rows of block_k in _permuted_at's order, zeros past H
        hbuf = _padded(2 + (not reset_after), batch, cfg.block_k,
                       pad=hidden < cfg.block_k, dtype=acc, device=gi.device)
        hbuf[0][:, _positions(cfg, hidden, gi.device)] = h0.to(acc)
    else:
        hbuf = _empty(2 + (not reset_after), batch, hidden,
                      dtype=w_hh.dtype if cfg.narrow else acc, device=gi.device)
        # (kmajor: each state transposed, (H, B), in the same space)
        hbuf[0] = h0.t().reshape(batch, hidden) if cfg.kmajor else h0
    rhbuf = hbuf[2] if not reset_after else hbuf
    if not (steps and batch):
        return out, saved, lambda t_begin, t_end: None
    weights, paired = _paired_weights(w_hh, cfg, pair_rows)
    gi, projected = _projection_arguments(gi, cfg, pair_rows, project)
    gi, h0, b_hh = gi.contiguous(), h0.contiguous(), b_hh.contiguous()

    def run(t_begin: int, t_end: int) -> None:
        if t_begin and (gi.dtype != acc or pair_rows):
            raise ValueError(f"a forward in spans of time carries its state through out: "
                             f"it needs gi in the arithmetic's dtype ({acc}), one "
                             f"direction; got {gi.dtype}")
        args = (gi, out[t_begin - 1] if t_begin else h0, weights, b_hh, lengths, out, hbuf,
                rhbuf, *gates)
        _launch(_forward_kernel, cfg, batch, hidden, t_end, args, t_begin=t_begin,
                RESET_AFTER=reset_after, SAVE=save, ACC=_acc(gi.dtype), **paired,
                **projected)

    return out, saved, run


def _projection_arguments(x: Tensor, cfg: Config, pair_rows: int,
                          project: tuple[Tensor, Tensor] | None) -> tuple[Tensor, dict]:
    """The forward kernel's input and PROJECT arguments for ``project`` (W_ih, b_ih; none
    where None: x is gi): x itself, or where the split can be ``Config.permuted``, x with
    each row in _permuted_at's order (zeros past I), and a step more of zeros, which the
    last step's projection of the step after reads (_step_projection)."""
    if project is None:
        return x, {}
    steps, batch, features = x.shape
    if pair_rows or _projecting(cfg, features) != cfg:
        raise ValueError(f"a forward that makes its input projections needs one direction "
                         f"and a split _projecting gives; got {cfg}")
    block = _input_block(cfg, features)
    permuted = splits._can_permute(cfg)
    if permuted:
        rows = torch.zeros(steps + 1, batch, block, dtype=x.dtype, device=x.device)
        rows[:steps, :, _positions(cfg._replace(block_k=block), features, x.device)] = x
        x = rows
    w_ih, b_ih = (t.contiguous() for t in project)
    return x, dict(PROJECT=True, BKI=block, PERMUTED_X=permuted, w_ih=w_ih, b_ih=b_ih,
                   IN=features)


class _Reverse(NamedTuple):
    """_backward_launches' buffers and closures."""

    dgi: Tensor  # (T, B, 3H)
    dgh: Tensor  # dgi, or (reset_after=True) the gradients of W_hh h + b_hh (or its n block)
    run: Callable[[int, int], None]  # (t_begin, t_end): steps t_end - 1 down to t_begin
    dh0: Callable[[], Tensor]  # dL/dh0, once every step has run
    gemm: torch.dtype  # (the weight GEMMs' operands' dtype)


def backward(dout: Tensor, h0: Tensor, w_hh: Tensor, out: Tensor, saved: list[Tensor],
             lengths: Tensor, reset_after: bool, cfg: Config | None = None,
             pair_rows: int = 0, pair_batch: int = 0):
    """Returns dgi (T, B, 3H), dh0 (B, H), dW_hh (3H, H), db_hh (3H,), in the arithmetic's
    dtype; for reset_after=True dgi in out's (gi's). With ``pair_rows`` (core_pair; cfg
    given), as forward's: w_hh (2, 3H, H), and dW_hh (2, 3H, H) and db_hh (2, 3H) each
    direction's from its first ``pair_batch`` rows (its padding's left out, so that the
    sums run as they would alone)."""
    steps = out.shape[0]
    rev = _backward_launches(dout, h0, w_hh, out, saved, lengths, reset_after, cfg, pair_rows)
    rev.run(0, steps)
    dh = rev.dh0()
    if not pair_rows:
        return rev.dgi, dh, *_span_weight_gradients(rev, h0, out, saved, reset_after, 0, steps)
    # (a pair: each direction's from its own rows, copied out whole first, so that the
    # GEMMs and sums read them laid out as they would alone)
    acc = saved[0].dtype
    h_prev = torch.cat([h0.unsqueeze(0), out[:-1]])  # (T, B, H)
    grads = [_weight_gradients(_column_blocks(*_rows_of(rev.dgi, rev.dgh, rows)),
                               h_prev[:, rows], saved[0][:, rows], reset_after, rev.gemm, acc)
             for rows in (slice(0, pair_batch), slice(pair_rows, pair_rows + pair_batch))]
    return rev.dgi, dh, *(torch.stack(g) for g in zip(*grads, strict=True))


def _backward_launches(dout: Tensor, h0: Tensor, w_hh: Tensor, out: Tensor,
                       saved: list[Tensor], lengths: Tensor, reset_after: bool,
                       cfg: Config | None = None, pair_rows: int = 0) -> _Reverse:
    """backward's buffers, made on the current stream, and its launches (_Reverse.run:
    steps t_end - 1 down to t_begin on the current stream, each launch carrying dL/dh to
    the next: launches over spans of time, from the last to the first, give one launch's
    numbers)."""
    steps, batch, hidden = out.shape
    acc = saved[0].dtype
    if cfg is None:
        p = TUNE_STEPS
        cfg = _split("backward", batch, hidden, steps, out.device, out.dtype, (reset_after,),
                     lambda c: backward(dout[:p], h0, w_hh, out[:p], [s[:p] for s in saved],
                                        lengths, reset_after, c), weights=w_hh.dtype)
    _check_weights(cfg, w_hh.dtype)
    if cfg.k_blocks != 1 and pair_rows:
        raise ValueError(f"a crossed split (Config.k_blocks) runs one direction at a time; "
                         f"got {cfg}")
    # (reset_after=True: the kernels only write dgi, the programs exchange through dgh or
    # xbuf, so it goes in gi's dtype: a 16-bit call's dgi needs no pass to convert it
    # after, 0.25 GB of memory traffic at bf16 B=16, H=1024, T=512; on a GPU the kernels'
    # store rounds as .to() does, to the same bits; Triton's interpreter truncates bf16)
    dgi = _empty(steps, batch, 3 * hidden, dtype=out.dtype if reset_after else acc,
                 device=out.device)
    # (the weight GEMM's operands' dtype: dgi's, but for fp16 (a narrow range) fp32)
    gemm = torch.bfloat16 if out.dtype == torch.bfloat16 else acc
    # (where the programs exchange elsewhere and the GEMM takes dgi as it is, the kernels
    # write dgh's n block alone, dn ⊙ r: its r and z blocks are dgi's. At bf16 B=16,
    # H=1024, T=512, that is 17 MB written instead of 100, and no 100 MB pass to convert
    # it before the GEMM)
    dgh_n = reset_after and dgi.dtype == gemm and (cfg.k_blocks != 1 or
                                                   not _through_dgh(cfg))
    dgh = dgi if not reset_after else _empty(steps, batch, hidden if dgh_n else 3 * hidden,
                                              dtype=dgi.dtype if dgh_n else acc,
                                              device=out.device)
    dh = torch.zeros(batch, hidden, dtype=acc, device=out.device)
    if not (steps and batch):
        return _Reverse(dgi, dgh, lambda t_begin, t_end: None, lambda: dh, gemm)
    dout, h0 = dout.contiguous(), h0.contiguous()
    ghn_s = saved[3] if reset_after else saved[0]
    if cfg.k_blocks != 1:
        return _crossed_backward(dout, h0, w_hh, out, saved, ghn_s, lengths, dgi, dgh,
                                 reset_after, cfg, dgh_n, gemm)
    xbuf = _backward_exchange(cfg, batch, hidden, acc, dgh, w_hh.dtype)
    weights, paired = _paired_weights(w_hh.transpose(-1, -2), cfg, pair_rows)
    args = (dout, h0, out, weights, *saved[:3], ghn_s, lengths, dgi, dgh, dh, xbuf)

    def run(t_begin: int, t_end: int) -> None:
        _launch(_backward_kernel, cfg, batch, hidden, t_end, args, t_begin=t_begin,
                RESET_AFTER=reset_after, ACC=_acc(acc), DGH_N=dgh_n, **paired)

    return _Reverse(dgi, dgh, run, lambda: dh, gemm)


def _span_weight_gradients(rev: _Reverse, h0: Tensor, out: Tensor, saved: list[Tensor],
                           reset_after: bool, t_begin: int, t_end: int):
    """dW_hh and db_hh over steps [t_begin, t_end) (_weight_gradients), once rev has run
    them."""
    h_prev = out[t_begin - 1: t_end - 1] if t_begin else \
        torch.cat([h0.unsqueeze(0), out[: t_end - 1]])  # (the states before each step)
    span = slice(t_begin, t_end)
    return _weight_gradients(_column_blocks(rev.dgi[span], rev.dgh[span]), h_prev,
                             saved[0][span], reset_after, rev.gemm, saved[0].dtype)


def _through_dgh(cfg: Config) -> bool:
    """Whether the one-way backward's programs exchange each step's gradients through dgh
    (dgi), rather than a buffer of their own (_backward_exchange)."""
    return not (cfg.stamped or cfg.permuted or cfg.kmajor or cfg.narrow)


def _backward_exchange(cfg: Config, batch: int, hidden: int, acc: torch.dtype, dgh: Tensor,
                       weights: torch.dtype) -> Tensor:
    """The buffer the one-way backward's programs exchange each step's gradients through."""
    device = dgh.device
    if cfg.stamped:  # the stamped exchange, every word stamped -1 (no step yet)
        return torch.full((2, batch, 3 * hidden), -1, dtype=torch.int64, device=device)
    if cfg.permuted:  # each gate's row of block_k in _permuted_at's order, zeros past H
        return _padded(2, batch, 3 * cfg.block_k, pad=hidden < cfg.block_k, dtype=acc,
                       device=device)
    if cfg.kmajor or cfg.narrow:  # the K-major or 16-bit exchange (each step written
        # before it is read)
        return _empty(2, batch, 3 * hidden, dtype=weights if cfg.narrow else acc,
                      device=device)
    assert _through_dgh(cfg)
    return dgh


def _crossed_backward(dout, h0, w_hh, out, saved, ghn_s, lengths, dgi, dgh, reset_after,
                      cfg: Config, dgh_n: bool, gemm: torch.dtype) -> _Reverse:
    """The crossed backward's buffers and launches (``Config.k_blocks``, _triton.crossed),
    writing dgi and dgh (``dgh_n``: its n block alone), as _backward_launches'."""
    steps, batch, hidden = out.shape
    acc = saved[0].dtype
    # (the partial sums, and what a launch leaves the next: zeros at t = T)
    xbuf = torch.zeros(2, cfg.k_blocks + 1, batch, hidden, dtype=acc, device=out.device)
    # (reset_after=False: the n gate's partial sums, each written before it is read)
    ybuf = xbuf if reset_after else _empty(cfg.k_blocks, batch, hidden, dtype=acc,
                                           device=out.device)
    args = (dout, h0, out, _kernel_weights(w_hh.t(), cfg), *saved[:3], ghn_s, lengths, dgi,
            dgh, xbuf, ybuf)

    def run(t_begin: int, t_end: int) -> None:
        _launch_crossed(_crossed_kernel, cfg, batch, hidden, t_end, args, t_begin=t_begin,
                        RESET_AFTER=reset_after, ACC=_acc(acc), DGH_N=dgh_n)

    # (dL/dh0: step 0's partial sums and what it carried)
    return _Reverse(dgi, dgh, run, lambda: xbuf[0].sum(0), gemm)


def _rows_of(dgi: Tensor, dgh: Tensor, rows: slice) -> tuple[Tensor, Tensor]:
    """dgi's and dgh's (dgi again where they are one) rows, each copied out whole."""
    part = dgi[:, rows].contiguous()
    return part, part if dgh is dgi else dgh[:, rows].contiguous()


def _column_blocks(dgi: Tensor, dgh: Tensor) -> tuple[Tensor, Tensor]:
    """The gradients of W_hh h + b_hh as _weight_gradients takes them, (T, B, ·) views:
    its r and z columns, then its n columns: dgh's whole (for reset_after=False dgh is
    dgi, whose n block is ∂L/∂(W_hn (r ⊙ h) + b_hn)), or dgi's r and z with dgh's n block
    where dgh holds it alone. Two blocks whatever their source, so that every split's
    GEMMs and sums run alike."""
    hidden = dgi.shape[-1] // 3
    if dgh.shape[-1] == hidden:
        return dgi[..., : 2 * hidden], dgh
    return dgh[..., : 2 * hidden], dgh[..., 2 * hidden:]


def _weight_gradients(blocks: tuple[Tensor, Tensor], h_prev: Tensor, r: Tensor,
                      reset_after: bool, gemm: torch.dtype,
                      acc: torch.dtype) -> tuple[Tensor, Tensor]:
    """dW_hh and db_hh over all steps, a GEMM a block, from the gradients of W_hh h + b_hh
    (_column_blocks) and h_prev (T, B, H), the states before each step; for
    reset_after=False the n block's product is with r ⊙ h_prev (r the reset gates). For
    bf16 outputs (fp32's range) on bf16 operands with fp32 accumulation (``gemm``), as
    autograd does the input projection's (bf16 weights store the gradient in bf16 anyway;
    under autocast, fp32 weights get it as autocast gives a linear layer's; fp32 operands
    ran it on the CUDA cores, ~0.5 µs per step at B=16, H=512); fp16 (a narrow range) and
    fp32 on the arithmetic's dtype."""
    rz, n = (g.flatten(0, 1) for g in blocks)  # (T·B, 2H), (T·B, H)
    h_prev = h_prev.flatten(0, 1)
    hidden = h_prev.shape[-1]
    rh = None if reset_after else (r.flatten(0, 1) * h_prev.to(acc)).to(gemm)
    dw_hh = torch.empty(3 * hidden, hidden, dtype=gemm, device=h_prev.device)
    if tf32x3.applies(rz, n, h_prev):  # (fp32 as three TF32 GEMMs, if enabled: h_prev,
        # where split, split once for both)
        h_prev = tf32x3.operand(h_prev)
        tf32x3.mm(rz.t(), h_prev, out=dw_hh[: 2 * hidden])
        tf32x3.mm(n.t(), h_prev if rh is None else rh, out=dw_hh[2 * hidden:])
    else:
        h_prev = h_prev.to(gemm)
        torch.mm(rz.to(gemm).t(), h_prev, out=dw_hh[: 2 * hidden])
        torch.mm(n.to(gemm).t(), h_prev if rh is None else rh, out=dw_hh[2 * hidden:])
    return dw_hh.to(acc), torch.cat([rz.sum(0, dtype=acc), n.sum(0, dtype=acc)])


def _keep(ctx, gi, h0, w_hh, b_hh, lengths, reset_after, out, gates, extra=()) -> None:
    """What a training call's backward needs (the op's and _Eager's; ``extra``, tensors
    kept after them: _EagerProjected's)."""
    ctx.save_for_backward(h0, w_hh, out, lengths, *gates, *extra)
    ctx.reset_after, ctx.gates = reset_after, len(gates)
    ctx.dtypes = gi.dtype, h0.dtype, w_hh.dtype, b_hh.dtype


def _gradients(ctx, dout, run) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """dgi, dh0, dW_hh, db_hh in the inputs' dtypes, from what _keep kept: ``run`` is
    ``backward`` or the op that calls it. Refuses gradients of gradients and batched
    gradients (``reference.refuse_other_backwards``): never a silent zero."""
    reference.refuse_other_backwards("triton", dout)
    h0, w_hh, out, lengths, *gates = ctx.saved_tensors[:4 + ctx.gates]
    if dout is None:  # (no gradient reached the output)
        dout = torch.zeros_like(out)
    grads = run(dout, h0, w_hh, out, gates, lengths, ctx.reset_after)
    return tuple(g.to(dtype) for g, dtype in zip(grads, ctx.dtypes, strict=True))


class _Eager(torch.autograd.Function):
    """An eager training call: the op's forward and backward, the same kernels and
    numbers, without torch.library's dispatch, which costs host time before the kernels
    start (on this machine's CPU, the launches stubbed: ~30 µs a forward, ~70 µs a
    forward+backward). The op stays for torch.compile and the other special modes."""

    @staticmethod
    def forward(ctx, gi, h0, w_hh, b_hh, lengths, reset_after):
        out, saved = forward(gi, h0, w_hh, b_hh, lengths, reset_after, True)
        _keep(ctx, gi, h0, w_hh, b_hh, lengths, reset_after, out, saved)
        return out

    @staticmethod
    def backward(ctx, dout):
        return *_gradients(ctx, dout, backward), None, None


# ---- the op: torch.library, so torch.compile sees one opaque call -------------------------

def _gates_like(gi: Tensor, h0: Tensor, kept: int) -> Tensor:
    acc = torch.float64 if gi.dtype == torch.float64 else torch.float32
    return gi.new_empty(kept, gi.shape[1], h0.shape[-1], dtype=acc)


def _define_ops():
    @torch.library.custom_op("flashgru::triton_gru", mutates_args=())
    def gru_op(gi: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor, lengths: Tensor,
               reset_after: bool, save: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        out, saved = forward(gi, h0, w_hh, b_hh, lengths, reset_after, save)
        if not save:  # (the op's outputs all the same: empty, not saved)
            saved = [_gates_like(gi, h0, 0) for _ in range(3 + reset_after)]
        ghn = saved[3] if reset_after else _gates_like(gi, h0, 0)
        return out, saved[0], saved[1], saved[2], ghn

    @gru_op.register_fake
    def _(gi, h0, w_hh, b_hh, lengths, reset_after, save):
        kept = gi.shape[0] if save else 0
        out = gi.new_empty(gi.shape[0], gi.shape[1], h0.shape[-1])
        return (out, *(_gates_like(gi, h0, kept) for _ in range(3)),
                _gates_like(gi, h0, kept if reset_after else 0))

    @torch.library.custom_op("flashgru::triton_gru_backward", mutates_args=())
    def gru_backward_op(dout: Tensor, h0: Tensor, w_hh: Tensor, out: Tensor, r: Tensor,
                        z: Tensor, n: Tensor, ghn: Tensor, lengths: Tensor,
                        reset_after: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        saved = [r, z, n, ghn] if reset_after else [r, z, n]
        return backward(dout, h0, w_hh, out, saved, lengths, reset_after)

    @gru_backward_op.register_fake
    def _(dout, h0, w_hh, out, r, z, n, ghn, lengths, reset_after):
        steps, batch, hidden = out.shape
        return (r.new_empty(steps, batch, 3 * hidden,
                            dtype=out.dtype if reset_after else r.dtype),
                r.new_empty(batch, hidden),
                r.new_empty(3 * hidden, hidden), r.new_empty(3 * hidden))

    def setup_context(ctx, inputs, output):
        gi, h0, w_hh, b_hh, lengths, reset_after, save = inputs
        # the gates are the backward's, not the caller's: no gradient flows into them, and
        # none is made (autograd had filled four T·B·H fp32 tensors with zeros for them)
        ctx.mark_non_differentiable(*(output[1:] if save else output))
        ctx.set_materialize_grads(False)
        _keep(ctx, gi, h0, w_hh, b_hh, lengths, reset_after, output[0], output[1:])

    def backward_fn(ctx, dout, *_):
        def run(dout, h0, w_hh, out, gates, lengths, reset_after):
            return gru_backward_op(dout, h0, w_hh, out, *gates, lengths, reset_after)

        return *_gradients(ctx, dout, run), None, None, None

    gru_op.register_autograd(backward_fn, setup_context=setup_context)
    return gru_op


_gru_op = _define_ops() if triton is not None else None


# ---- a bidirectional layer's two directions in one launch ---------------------------------

def core_pair(gi: tuple[Tensor, Tensor], h0: tuple[Tensor, Tensor],
              w_hh: tuple[Tensor, Tensor], b_hh: tuple[Tensor | None, Tensor | None],
              lengths: Tensor | None, reset_after: bool) -> tuple[Tensor, Tensor]:
    """The two directions of a bidirectional layer (``cpu.core_pair``'s contract: each
    argument a pair as ``core`` takes it, the second direction's input already reversed):
    where a direction's default splits fill at most half the card (on 132 SMs in fp32:
    batch 17 up to 64-512 at H=128-1024, where tl.dot takes 16 units a program and more;
    every batch at H ≤ 64), both run in one launch, each
    direction's rows padded to whole tiles and set side by side, each tile on its
    direction's weights (the kernels' PAIR): the two time loops at once instead of one
    after the other. Else, in benchmark mode (whose splits may tile the rows otherwise),
    under torch.compile and the other special modes, and where one direction trains and
    the other doesn't, ``core`` for each in turn. The numbers are core's, bit for bit: a
    row's sums run as they would alone."""
    def in_turn():
        return tuple(core(*args, lengths, reset_after)
                     for args in zip(gi, h0, w_hh, b_hh, strict=True))

    rows = _pair_rows(gi, h0, w_hh, b_hh)
    if rows is None:
        return in_turn()
    lengths, bias0 = _lengths_and_bias(gi[0], w_hh[0], b_hh[0], lengths)
    bias1 = b_hh[1] if b_hh[1] is not None else w_hh[1].new_zeros(w_hh[1].shape[0])
    saves = [torch.is_grad_enabled() and any(t.requires_grad for t in args)
             for args in ((gi[0], h0[0], w_hh[0], bias0), (gi[1], h0[1], w_hh[1], bias1))]
    if saves[0] != saves[1]:  # (one direction training, the other not: core's splits
        # for each, the inference forward's and the training forward's)
        return in_turn()
    if saves[0]:
        return _EagerPair.apply(*gi, *h0, *w_hh, bias0, bias1, lengths, reset_after, rows)
    stacked = _side_by_side(gi, h0, lengths, rows)
    out = forward(*stacked[:2], torch.stack(w_hh), torch.stack([bias0, bias1]),
                  stacked[2], reset_after, False, _pair_split(gi[0], h0[0], w_hh[0], False),
                  rows)[0]
    return _apart(out, gi[0].shape[1], rows)


def _pair_split(gi: Tensor, h0: Tensor, w_hh: Tensor, save: bool) -> Config:
    """The forward's default split for one direction of a core_pair launch (``save``: a
    training forward's), as _split gives core outside benchmark mode."""
    return _for_weights(splits.choose_config(gi.shape[1], h0.shape[-1], gi.device, h0.dtype,
                                             save), w_hh.dtype)


def _pair_rows(gi, h0, w_hh, b_hh) -> int | None:
    """The rows each direction takes in core_pair's launch (its batch rounded up to whole
    tiles of its forward's and backward's default splits), or None where core_pair runs
    the directions in turn: benchmark mode, a special mode, tensors core would refuse or
    convert otherwise, or a direction's launch that would fill more than half the card."""
    if _special_mode() or benchmark:
        return None
    x = h0[0]
    if x.device.type not in devices() or x.dtype not in DTYPES or any(
            t.device != x.device or t.dtype != x.dtype for t in (h0[1], gi[1])) or \
            gi[0].device != x.device or gi[0].dtype != gi[1].dtype or \
            w_hh[0].dtype != w_hh[1].dtype or (b_hh[0] is None) != (b_hh[1] is None) or \
            b_hh[0] is not None and b_hh[0].dtype != b_hh[1].dtype or \
            x.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None
    batch, hidden = gi[0].shape[1], x.shape[-1]
    if hidden > splits.max_hidden(x.device) or not batch or not gi[0].shape[0]:
        return None
    return _pair_tiles(batch, hidden, x.device, x.dtype, w_hh[0].dtype)


def _pair_tiles(batch: int, hidden: int, device: torch.device, dtype: torch.dtype,
                weights: torch.dtype) -> int | None:
    """_pair_rows' rule for these sizes: each direction's batch rounded up to whole tiles
    of its default splits (the training and inference forwards' and the backward's), or
    None where one of them would fill more than half the card."""
    cfgs = [_for_weights(c, weights) for c in (
        splits.choose_config(batch, hidden, device, dtype, True),
        splits.choose_config(batch, hidden, device, dtype),
        splits.choose_backward_config(batch, hidden, device, dtype, crossed=False))]
    tile = max(c.block_batch for c in cfgs)
    rows = -(-batch // tile) * tile
    limit = splits._grid_limit(device)
    if any(2 * (rows // c.block_batch) * -(-hidden // c.slice) > limit for c in cfgs):
        return None
    return rows


def _side_by_side(gi, h0, lengths, rows: int) -> tuple[Tensor, Tensor, Tensor]:
    """gi, h0 and lengths of core_pair's launch: each direction's rows padded to ``rows``
    (zeros; lengths 0: the padding rows never step) and the second's after the first's."""
    batch = gi[0].shape[1]

    def padded(x, dim):
        shape = list(x.shape)
        shape[dim] = rows - batch
        return torch.cat([x, x.new_zeros(shape)], dim) if rows > batch else x

    return (torch.cat([padded(g, 1) for g in gi], 1),
            torch.cat([padded(h, 0) for h in h0], 0),
            torch.cat([padded(lengths, 0)] * 2, 0))


def _apart(x: Tensor, batch: int, rows: int, dim: int = 1) -> tuple[Tensor, Tensor]:
    """Each direction's rows of a core_pair launch's (…, 2·rows, …) tensor along ``dim``."""
    return x.narrow(dim, 0, batch), x.narrow(dim, rows, batch)


class _EagerPair(torch.autograd.Function):
    """core_pair's training call: _Eager's forward and backward for both directions, each
    kernel one launch for the two."""

    @staticmethod
    def forward(ctx, gi0, gi1, h00, h01, w0, w1, b0, b1, lengths, reset_after, rows):
        batch = gi0.shape[1]
        cfg = _pair_split(gi0, h00, w0, True)
        gi, h0, lens = _side_by_side((gi0, gi1), (h00, h01), lengths, rows)
        w_hh = torch.stack([w0, w1])
        out, saved = forward(gi, h0, w_hh, torch.stack([b0, b1]), lens, reset_after, True,
                             cfg, rows)
        ctx.save_for_backward(h0, w_hh, out, lens, *saved)
        ctx.reset_after, ctx.rows, ctx.batch = reset_after, rows, batch
        ctx.dtypes = gi0.dtype, h00.dtype, w0.dtype, b0.dtype
        ctx.set_materialize_grads(False)  # (a direction no gradient reached gets none)
        # (copies: the backward reads the output it saved, as _Eager's callers get)
        return tuple(x.clone() for x in _apart(out, batch, rows))

    @staticmethod
    def backward(ctx, dout0, dout1):
        reference.refuse_other_backwards("triton", dout0, dout1)
        h0, w_hh, out, lens, *saved = ctx.saved_tensors
        rows, batch = ctx.rows, ctx.batch
        dout = torch.zeros_like(out)
        reached = [grad is not None for grad in (dout0, dout1)]
        for d, grad in enumerate((dout0, dout1)):
            if grad is not None:
                dout[:, d * rows: d * rows + batch] = grad
        cfg = _for_weights(splits.choose_backward_config(batch, h0.shape[-1], out.device,
                                                         out.dtype, crossed=False),
                           w_hh.dtype)
        dgi, dh0, dw, db = backward(dout, h0, w_hh, out, saved, lens, ctx.reset_after, cfg,
                                    rows, batch)
        # (each direction's: contiguous, as core's, so that the sums after them (the input
        # projection's bias) run alike; None where no gradient reached it, as core, never
        # called, gives)
        grads = (_apart(dgi, batch, rows), _apart(dh0, batch, rows, 0), dw, db)
        return (*(g.contiguous().to(dtype) if r else None
                  for parts, dtype in zip(grads, ctx.dtypes, strict=True)
                  for g, r in zip(parts, reached, strict=True)),
                None, None, None)


def _lengths_and_bias(gi: Tensor, w_hh: Tensor, b_hh: Tensor | None,
                      lengths: Tensor | None, kept: bool = False) -> tuple[Tensor, Tensor]:
    """The kernels' lengths (int64 on gi's device, every row full when None: _all_steps,
    ``kept`` its argument) and b_hh (0 when None); first, that the kernels run this hidden
    size on this device."""
    hidden, most = w_hh.shape[1], splits.max_hidden(gi.device)
    if hidden > most:
        raise ValueError(f"backend 'triton' runs hidden sizes up to {most} on this GPU "
                         f"({splits._grid_limit(gi.device)} multiprocessors × {MAX_UNITS} units); "
                         f"got {hidden}: use backend='torch'")
    if lengths is None:
        lengths = _all_steps(gi, kept)
    else:
        lengths = lengths.to(device=gi.device, dtype=torch.int64)
    return lengths, b_hh if b_hh is not None else w_hh.new_zeros(w_hh.shape[0])


# a length past any call's steps (the kernels' lengths for a call given none: _all_steps)
ALL_STEPS = 1 << 62
_all_steps_kept: dict[tuple, Tensor] = {}
_KEEP_ALL_STEPS_ON = ("cuda",)  # (the device types _all_steps keeps them on; the tests add
# the CPU's, so that the interpreter's kernels read ALL_STEPS too)


def _all_steps(gi: Tensor, kept: bool) -> Tensor:
    """The kernels' lengths for a call given none: every row runs every step. Made for the
    call (torch.full: host time before the launch, which the GPU waits for), or with
    ``kept`` (core outside the special modes), on CUDA outside graph capture, one tensor
    per batch and device, ALL_STEPS in every row, made once, copied in from the host (the
    copy done before it returns, so that a kernel on any stream finds it written) and
    never written again."""
    steps, batch = gi.shape[:2]
    device = gi.device
    if not kept or device.type not in _KEEP_ALL_STEPS_ON or (
            device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        return torch.full((batch,), steps, dtype=torch.int64, device=device)
    key = batch, device
    rows = _all_steps_kept.get(key)
    if rows is None:
        with torch.inference_mode(False):  # (a tensor made in inference mode could not be
            # saved for a later training call's backward)
            rows = _all_steps_kept[key] = torch.full((batch,), ALL_STEPS,
                                                     dtype=torch.int64).to(device)
    return rows


def core(gi: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor | None, lengths: Tensor | None,
         reset_after: bool) -> Tensor:
    """The recurrent core (see ``reference.core`` for the contract) in Triton kernels.

    gi (T, B, 3H), h0 (B, H), w_hh (3H, H), b_hh (3H,) or None, lengths (B,) or None; CUDA
    tensors (CPU ones under TRITON_INTERPRET=1) of one of DTYPES. Returns out (T, B, H).
    """
    if h0.device.type not in devices() or h0.dtype not in DTYPES:
        raise ValueError(f"backend 'triton' runs {'/'.join(devices())} tensors of "
                         f"{', '.join(str(d) for d in DTYPES)}; got {h0.dtype} on {h0.device}")
    if gi.dtype != h0.dtype:  # autocast made the input projection low precision
        gi = gi.to(h0.dtype)
    special = _special_mode()
    lengths, bias = _lengths_and_bias(gi, w_hh, b_hh, lengths, kept=not special)
    save = torch.is_grad_enabled() and any(
        t.requires_grad for t in (gi, h0, w_hh, bias))
    if special:  # (torch.compile, tracing and the other modes see one op)
        out = _gru_op(gi, h0, w_hh, bias, lengths, reset_after, save)[0]
    elif save:
        out = _Eager.apply(gi, h0, w_hh, bias, lengths, reset_after)
    else:  # (nothing to record: the kernels, no dispatch)
        return forward(gi, h0, w_hh, bias, lengths, reset_after, False)[0]
    # (the backward reads the output it saved: a copy for the caller, who may change it
    # in place before the backward, as torch.nn.GRU's callers may)
    return out.clone() if save else out


# ---- a one-way layer's GEMMs beside its recurrence ----------------------------------------

# The input projection in spans of time on a second stream, each span's GEMM running while
# the recurrence runs the span before (core_projected). In fp32 the projection runs on
# the CUDA cores: at B=16, T=512 on an H200 0.65 µs a step at H=512 and 2.1 at H=1024
# (docs/performance.md), the forward's largest cost beyond its kernel; the backward's
# three (dx, dW_ih, dW_hh) beside its reverse recurrence likewise. Off until timed
# (benchmarks/gpu.py --overlap-beside): how much of the GEMMs the card runs beside the
# persistent kernels, and what that costs them, only the card can say. True: forward and
# backward; FORWARD: the forward alone (the backward's GEMMs after its kernel).
overlap: bool | str = False
FORWARD = "forward"
# The spans: the first OVERLAP_FIRST steps (their projection made before any recurrence),
# then each OVERLAP_GROWTH times the one before, the last taking the rest where the rest
# is shorter than a next span.
OVERLAP_FIRST = 16
OVERLAP_GROWTH = 2
# The largest hidden size it overlaps: the GEMM's blocks need room on multiprocessors the
# persistent kernel holds. ptxas (sm_90a, Triton 3.6) gives fp32 B=16's forward at H=512
# 168 registers × 128 threads a program (a third of an SM's 64K), at H=1024 255 × 256
# (all of them, a few spilled): there the GEMM would get the 4 SMs of 132 the kernel
# leaves, and the recurrence would wait for it.
OVERLAP_MAX_HIDDEN = 512
_OVERLAP_ON = ("cuda",)  # (the device types it runs on; the tests add the CPU's)
_streams_of: dict[torch.device, tuple] = {}


def _spans(steps: int) -> list[tuple[int, int]]:
    """[0, steps) cut into the overlap's spans (OVERLAP_FIRST, OVERLAP_GROWTH)."""
    spans, begin, size = [], 0, max(1, OVERLAP_FIRST)
    while begin < steps:
        end = begin + size
        size *= max(1, OVERLAP_GROWTH)
        if steps - end < size:
            end = steps
        spans.append((begin, end))
        begin = end
    return spans


def _overlaps(x: Tensor, w_ih: Tensor, b_ih: Tensor | None, h0: Tensor, w_hh: Tensor,
              b_hh: Tensor | None) -> bool:
    """Whether core_projected overlaps this call's projection and recurrence: ``overlap``
    on, _gemm_may_move on _OVERLAP_ON up to OVERLAP_MAX_HIDDEN (fp32 or fp64: the state
    carried through out between spans is then exact), two spans or more, not under graph
    capture."""
    if not overlap:  # (first: a call's host time)
        return False
    if overlap is not True and overlap != FORWARD:
        raise ValueError(f"triton_gru.overlap is False, True or triton_gru.FORWARD "
                         f"({FORWARD!r}); got {overlap!r}")
    if not _gemm_may_move(x, w_ih, b_ih, h0, w_hh, b_hh, _OVERLAP_ON, OVERLAP_MAX_HIDDEN) \
            or len(_spans(x.shape[0])) < 2:
        return False
    return not (x.device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def _gemm_may_move(x: Tensor, w_ih: Tensor, b_ih: Tensor | None, h0: Tensor, w_hh: Tensor,
                   b_hh: Tensor | None, on: tuple[str, ...], max_hidden: int) -> bool:
    """What ``overlap`` and ``project`` both ask of a call before its input projection
    leaves its place in front of the kernel: time-major x with steps and rows on a device
    type of ``on``, every tensor in x's device and dtype, fp32 or fp64, H ≤ max_hidden,
    not in benchmark mode (its tune times gi's kernels) or a special mode (nothing
    recording or transforming the call), the projection not three TF32 GEMMs (tf32x3)."""
    if x.device.type not in on or x.dim() != 3 or not (x.shape[0] and x.shape[1]):
        return False
    if x.dtype not in (torch.float32, torch.float64) or any(
            t is not None and (t.dtype != x.dtype or t.device != x.device)
            for t in (w_ih, b_ih, h0, w_hh, b_hh)):
        return False
    return not (benchmark or _special_mode() or h0.shape[-1] > max_hidden or
                tf32x3.applies(x, w_ih))


def _streams(device: torch.device) -> tuple[torch.cuda.Stream, torch.cuda.Stream]:
    """The overlap's streams on this CUDA device, made once: the recurrence's, of the
    highest priority (a span's launch takes the multiprocessors as they free, before the
    GEMMs' next blocks), and the GEMMs'."""
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device not in _streams_of:
        _streams_of[device] = (torch.cuda.Stream(device, priority=-1),
                               torch.cuda.Stream(device))
    return _streams_of[device]


def _pipeline(device: torch.device, spans, first, then, first_recurs: bool) -> None:
    """first(begin, end), then then(begin, end), for each span in order. On CUDA each
    ``then`` waits for its span's ``first`` alone: one of the two runs the recurrence
    (``first_recurs``: ``first``) on _streams' recurrence stream, the other the GEMMs on
    theirs, so that a span's GEMMs run beside another span's recurrence; both streams
    start after the current one's work so far, and it waits for both before this returns
    (a tensor made on it before may be freed once this returns). Elsewhere (the
    interpreter's tests), and for one span, one after the other on the current stream."""
    if device.type != "cuda" or len(spans) < 2:
        for begin, end in spans:
            first(begin, end)
            then(begin, end)
        return
    main = torch.cuda.current_stream(device)
    recurrence, gemms = _streams(device)
    ahead, behind = (recurrence, gemms) if first_recurs else (gemms, recurrence)
    ahead.wait_stream(main)
    behind.wait_stream(main)
    for begin, end in spans:
        with torch.cuda.stream(ahead):
            first(begin, end)
            done = ahead.record_event()
        with torch.cuda.stream(behind):
            behind.wait_event(done)
            then(begin, end)
    main.wait_stream(ahead)
    main.wait_stream(behind)


def _project(x: Tensor, w_ih: Tensor, b_ih: Tensor | None, gi: Tensor):
    """``first`` of the forward's _pipeline: gi[begin:end] = x[begin:end] W_ihᵀ + b_ih."""
    def project(begin: int, end: int) -> None:
        rows = x[begin:end].reshape(-1, x.shape[-1])
        into = gi[begin:end].view(-1, gi.shape[-1])
        if b_ih is None:
            torch.mm(rows, w_ih.t(), out=into)
        else:
            torch.addmm(b_ih, rows, w_ih.t(), out=into)

    return project


def _overlapped(x: Tensor, w_ih: Tensor, b_ih: Tensor | None, h0: Tensor, w_hh: Tensor,
                b_hh: Tensor, lengths: Tensor, reset_after: bool, save: bool):
    """forward's out and saved gates for gi = x W_ihᵀ + b_ih, made span by span (_spans)
    beside the recurrence of the span before (_pipeline); every buffer made on the
    current stream."""
    steps, batch, _ = x.shape
    gi = _empty(steps, batch, w_ih.shape[0], dtype=x.dtype, device=x.device)
    out, saved, run = _forward_launches(gi, h0, w_hh, b_hh, lengths, reset_after, save)
    _pipeline(x.device, _spans(steps), _project(x, w_ih, b_ih, gi), run, False)
    return out, saved


# ---- a one-way layer's input projection inside its forward kernel --------------------------

# The input projection made by the forward kernel itself (_forward_kernel's PROJECT): each
# program keeps its units' rows of W_ih on chip beside W_hh's and makes step t + 1's
# projections right after it has arrived at step t's barrier, while the other programs'
# arrivals come in (a step's wait, ~1 µs on an H200, is otherwise idle), instead of a
# GEMM before the kernel (fp32 on the CUDA cores: 0.65 µs a step at B=16, H=512, T=512)
# and gi's round trip through memory. Off until timed (scripts/gpu_overlap.py): whether
# the step's own time grows by less than the GEMM's only the card can say. True: wherever
# it applies (_projects), before the overlap (whose backward's GEMMs may still run beside
# the reverse recurrence).
project = False
# The largest hidden size it runs at: W_ih's tiles take as many registers as W_hh's where
# I = H, and at H=1024 W_hh's already take them all (fp32 B=16: 255 a thread, ptxas,
# sm_90a, Triton 3.6).
PROJECT_MAX_HIDDEN = 512
_PROJECT_ON = ("cuda",)  # (the device types it runs on; the tests add the CPU's)


def _input_block(cfg: Config, features: int) -> int:
    """PROJECT's BKI: the input's I padded to a power of two, at least a chunked split's
    chunks along K (their lanes times its warps along K) and tl.dot's 16."""
    chunk, kwarps = splits._chunk_shape(cfg)
    least = chunk * kwarps if cfg.chunked else 16 if cfg.dot else 1
    return max(triton.next_power_of_2(features), least)


def _projecting(cfg: Config, features: int) -> Config | None:
    """cfg for a forward that makes its input projections (I = ``features``): without
    prefetch (the projections come from the kernel), and its exchange permuted where it
    can be (``Config.permuted``: x is then read so too; fp32 B=16, H=I=512's default
    split (u4×1) spilled 128 bytes with its exchange read through shared memory, 8
    permuted, ptxas, sm_90a; unfused the two ran alike on an H200); None where it can't,
    W_ih's tiles held as W_hh's are: not resident, stacked (TF32 parts), narrow (16-bit),
    crossed, or an input wider than W_hh's block (its tiles would pass W_hh's
    registers)."""
    if not cfg.resident or cfg.stacked or cfg.narrow or cfg.k_blocks != 1 or \
            _input_block(cfg, features) > cfg.block_k:
        return None
    return cfg._replace(prefetch=False, permuted=splits._can_permute(cfg))


def _projects(x: Tensor, w_ih: Tensor, b_ih: Tensor | None, h0: Tensor, w_hh: Tensor,
              b_hh: Tensor | None, save: bool) -> Config | None:
    """The split core_projected's forward makes its input projections with (_projecting's
    of the default), or None where it doesn't: ``project`` on, _gemm_may_move on
    _PROJECT_ON up to PROJECT_MAX_HIDDEN, W_hh's rows on the card at once."""
    if not project:  # (first: a call's host time)
        return None
    if project is not True:
        raise ValueError(f"triton_gru.project is False or True; got {project!r}")
    hidden = h0.shape[-1]
    if not _gemm_may_move(x, w_ih, b_ih, h0, w_hh, b_hh, _PROJECT_ON, PROJECT_MAX_HIDDEN) \
            or hidden > splits.max_hidden(x.device):
        return None
    cfg = _default("forward", x.shape[1], hidden, x.device, x.dtype, save, x.dtype)
    return _projecting(cfg, x.shape[-1])


def _fused(x: Tensor, w_ih: Tensor, b_ih: Tensor | None, h0: Tensor, w_hh: Tensor,
           b_hh: Tensor, lengths: Tensor, reset_after: bool, save: bool, cfg: Config):
    """forward's out and saved gates for gi = x W_ihᵀ + b_ih, the kernel making gi itself
    (``project``): one launch, no gi in memory."""
    bias = b_ih if b_ih is not None else w_ih.new_zeros(w_ih.shape[0])
    out, saved, run = _forward_launches(x, h0, w_hh, b_hh, lengths, reset_after, save, cfg,
                                        project=(w_ih, bias))
    run(0, x.shape[0])
    return out, saved


class _EagerProjected(torch.autograd.Function):
    """core_projected's training call: the forward with its projection inside the kernel
    (``cfg``: _fused) or beside it (_overlapped); the backward's reverse recurrence in the
    spans ``spans`` (last first), each span's GEMMs (dx, dW_ih and b_ih's, dW_hh and
    b_hh's) beside the recurrence of the span before it (_pipeline), the weight gradients
    summed over the spans in their order (one span: the kernel then the GEMMs)."""

    @staticmethod
    def forward(ctx, x, w_ih, b_ih, h0, w_hh, b_hh, lengths, reset_after, cfg, spans):
        if cfg is not None:
            out, saved = _fused(x, w_ih, b_ih, h0, w_hh, b_hh, lengths, reset_after, True,
                                cfg)
        else:
            out, saved = _overlapped(x, w_ih, b_ih, h0, w_hh, b_hh, lengths, reset_after,
                                     True)
        _keep(ctx, x, h0, w_hh, b_hh, lengths, reset_after, out, saved, (x, w_ih))
        ctx.spans = spans
        return out

    @staticmethod
    def backward(ctx, dout):
        reference.refuse_other_backwards("triton", dout)
        h0, w_hh, out, lengths, *rest = ctx.saved_tensors
        gates, (x, w_ih) = rest[:ctx.gates], rest[ctx.gates:]
        rev = _backward_launches(dout, h0, w_hh, out, gates, lengths, ctx.reset_after)
        features = x.shape[-1]
        acc = gates[0].dtype

        def made(i: int, shape, fill=torch.zeros) -> Tensor | None:
            """Input i's gradient, None where none is wanted (made on the current stream,
            for the GEMMs to write or add into)."""
            return fill(shape, dtype=acc, device=x.device) if ctx.needs_input_grad[i] else None

        dx, dw_ih, db_ih = made(0, x.shape, torch.empty), made(1, w_ih.shape), \
            made(2, w_ih.shape[:1])
        dw_hh, db_hh = made(4, w_hh.shape), made(5, w_hh.shape[:1])

        def gemms(begin: int, end: int) -> None:
            g = rev.dgi[begin:end].reshape(-1, rev.dgi.shape[-1])
            if dx is not None:
                torch.mm(g, w_ih, out=dx[begin:end].view(-1, features))
            if dw_ih is not None:
                dw_ih.addmm_(g.t(), x[begin:end].reshape(-1, features))
            if db_ih is not None:
                db_ih.add_(g.sum(0))
            if dw_hh is not None or db_hh is not None:
                dw, db = _span_weight_gradients(rev, h0, out, gates, ctx.reset_after, begin,
                                                end)
                for total, part in ((dw_hh, dw), (db_hh, db)):
                    if total is not None:
                        total.add_(part)

        _pipeline(x.device, ctx.spans, rev.run, gemms, True)
        return dx, dw_ih, db_ih, rev.dh0(), dw_hh, db_hh, None, None, None, None


def core_projected(x: Tensor, w_ih: Tensor, b_ih: Tensor | None, h0: Tensor, w_hh: Tensor,
                   b_hh: Tensor | None, lengths: Tensor | None, reset_after: bool) -> Tensor:
    """A one-way layer's core from its input x (T, B, I): ``core`` on gi = x W_ihᵀ + b_ih
    (tf32x3.linear); where _projects, the projection made inside the forward kernel
    (``project``), else where _overlaps beside it; in training where _overlaps (``overlap``
    True) the backward's GEMMs beside its reverse recurrence (_EagerProjected): the same
    numbers, to the GEMMs' rounding (the kernel, or cuBLAS on a span's rows, may sum the
    projection's products in another order; the weight gradients are sums over the
    spans)."""
    if not (project or overlap):  # (first: a call's host time)
        return core(tf32x3.linear(x, w_ih, b_ih), h0, w_hh, b_hh, lengths, reset_after)
    save = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, w_ih, b_ih, h0, w_hh, b_hh))
    cfg = _projects(x, w_ih, b_ih, h0, w_hh, b_hh, save)
    overlapping = _overlaps(x, w_ih, b_ih, h0, w_hh, b_hh)
    if cfg is None and not overlapping:
        return core(tf32x3.linear(x, w_ih, b_ih), h0, w_hh, b_hh, lengths, reset_after)
    lengths, bias = _lengths_and_bias(x, w_hh, b_hh, lengths, kept=True)
    if not save:
        if cfg is not None:
            return _fused(x, w_ih, b_ih, h0, w_hh, bias, lengths, reset_after, False, cfg)[0]
        return _overlapped(x, w_ih, b_ih, h0, w_hh, bias, lengths, reset_after, False)[0]
    spans = _spans(x.shape[0])[::-1] if overlapping and overlap is True else \
        [(0, x.shape[0])]
    # (a copy for the caller, as core's)
    return _EagerProjected.apply(x, w_ih, b_ih, h0, w_hh, bias, lengths, reset_after, cfg,
                                 spans).clone()
