"""The parallel-in-time backend: a layer's whole trajectory solved at once by Newton's
method (DEER, Lim et al. 2024; quasi-DEER, Gonzalez et al. 2024), exact by construction.

Write one step as h_t = f(h_{t−1}) (gi_t and the weights fixed) and guess the whole
trajectory h_0..h_{T−1}. One Newton iteration evaluates f at every step of the guess at
once (one batched GEMM: no step waits for another), forms each step's Jacobian
J_t = ∂f/∂h at the guess, and solves the linearised trajectory

    δ_t = J_t δ_{t−1} + (f(h_{t−1}) − h_t),   δ_{−1} = 0,   h ← h + δ

a linear recurrence, which a parallel scan solves (``flashgru.scan``). Newton converges
quadratically near the solution; and since h_{−1} = h0 is exact, after k full iterations
the first k steps are exact whatever the weights. It stops when every step's residual and
its last update are below the tolerance; when the budget runs out first, the steps from
the first unconverged one on are finished sequentially, so the answer is the sequential
GRU's to rounding whatever the weights (NaN and inf included: they never pass for
converged). ``last_stats()`` tells how the last call went.

Jacobians, reset_after=True (a, u, v, w are per-unit vectors of the step):

    J = diag(z) + diag((h − n) z(1 − z)) W_hz + diag((1 − z)(1 − n²) r) W_hn
        + diag((1 − z)(1 − n²) gh_n r(1 − r)) W_hr

reset_after=False: the W_hn term becomes diag((1 − z)(1 − n²)) W_hn (diag(r) + diag(h r(1 −
r)) W_hr). ``jacobian="dense"`` uses J (Newton: few iterations, O(H³) per step to
compose); ``"diagonal"`` only its diagonal (quasi-Newton: more, much cheaper iterations).
``damping`` halves a step whose largest residual grew (up to four times), past the prefix
that a full step makes exact, so the prefix property holds with damping too.

Gradients by the adjoint, at the solution, with the exact dense Jacobians whatever
``jacobian`` says: λ_t = ∂L/∂h_t + J_{t+1}ᵀ λ_{t+1} is one reverse linear recurrence (a
scan), and the gradients of every step's inputs and of the weights follow from λ in one
batched pass and GEMMs over all steps — no backpropagation through the iterations. The
dense Jacobians take T·B·H² numbers of memory.

Steps past a sequence's length are the identity (J = I) and write 0 to the output.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import reference


@dataclass(frozen=True)
class Options:
    """How the solver runs. jacobian: "dense" (Newton) or "diagonal" (quasi-Newton);
    max_iters: the iteration budget (None: 32 dense, 128 diagonal); tol: the largest
    residual |h_t − f(h_{t−1})| and the largest last update |δ_t| accepted, absolute (a
    GRU's state stays within [−1, 1] once h0 is; None: 1e-13 in float64, 2e-6 in
    float32), for "diagonal" the update times ρ / (1 − ρ) where the updates shrink by a
    ratio ρ > 1/2 (``_remaining``), and a damped update at its full size; damping: halve
    steps that make the residual grow (past the prefix a full step makes exact).

    Why absolute: a tolerance relative to the largest |h0| let one large entry loosen it
    for every row and step (a review measured 4.7e-2 in float32 on rows whose own h0 was
    ordinary, beside an entry of 1e6). Where |h| is large, the residual's rounding keeps
    those steps unconverged and the sequential finish computes them. Why the factor:
    quasi-Newton converges linearly; at weights 3x torch's scale, stopping on the last
    update alone (or on a step that damping had halved) left 8e-6 to 3e-5 in float32 (a
    review's fuzz).

    Why the last update too: the residuals alone do not bound the distance to the
    sequential answer, which sums them through the Jacobians; where the GRU remembers long
    (z near 1, J near I) a residual-only test stopped early (a review measured 1.5e-4 in
    float32, T=2048). With both tests, at T=2048 and update-gate bias +4 / +6 the output is
    within 4.8e-7 / 9.7e-7 of float64, as close as the sequential float32 loop (5.3e-7 /
    9.7e-7), dense and diagonal alike (tests/test_parallel.py)."""

    jacobian: str = "dense"
    max_iters: int | None = None
    tol: float | None = None
    damping: bool = True


class SolveStats(NamedTuple):
    """How the last core call went: Newton iterations run, the largest residual when the
    iterations stopped, and the first step finished sequentially (None: none was)."""

    iterations: int
    residual: float
    sequential_from: int | None


# flashgru.scan's choice: on a GPU its Triton dense scan, chunked over time for long
# sequences (parallel over chunks × rows); elsewhere the chunked torch scan.
DENSE_SCAN = "auto"

_OPTIONS: ContextVar[Options | None] = ContextVar("flashgru_parallel_options", default=None)
_LAST: list[SolveStats | None] = [None]


@contextmanager
def options(**changes) -> Iterator[Options]:
    """Change the solver's Options for the calls inside the ``with`` block::

        with flashgru.backends.parallel.options(jacobian="diagonal", max_iters=8):
            out, h_n = gru(x)
    """
    new = replace(_OPTIONS.get() or Options(), **changes)
    if new.jacobian not in ("dense", "diagonal"):
        raise ValueError(f"jacobian must be 'dense' or 'diagonal', got {new.jacobian!r}")
    if new.max_iters is not None and new.max_iters < 0:
        raise ValueError(f"max_iters must be ≥ 0, got {new.max_iters}")
    if new.tol is not None and not 0 < new.tol < math.inf:  # (inf: nothing solved)
        raise ValueError(f"tol must be a finite number > 0, got {new.tol}")
    token = _OPTIONS.set(new)
    try:
        yield new
    finally:
        _OPTIONS.reset(token)


def last_stats() -> SolveStats | None:
    """The SolveStats of the last core call (the last layer and direction of a module
    call): 0 iterations where it had no step or row to solve; None before the first, and
    after one on the meta device."""
    return _LAST[0]


# ---- one step at every t at once ---------------------------------------------------------

class _Steps(NamedTuple):
    h: Tensor  # f(h_prev), (T, B, H)
    r: Tensor
    z: Tensor
    n: Tensor
    ghn: Tensor  # W_hn h_prev + b_hn (reset_after=True) or W_hn (r h_prev) + b_hn


def _steps(gi: Tensor, h_prev: Tensor, w_hh: Tensor, b_hh: Tensor | None,
           reset_after: bool) -> _Steps:
    """The GRU step applied to every h_prev[t] at once (see ``reference.step``)."""
    hidden = h_prev.shape[-1]
    gi_r, gi_z, gi_n = gi.chunk(3, dim=-1)
    if reset_after:
        gh_r, gh_z, ghn = F.linear(h_prev, w_hh, b_hh).chunk(3, dim=-1)
        r, z = torch.sigmoid(gi_r + gh_r), torch.sigmoid(gi_z + gh_z)
        n = torch.tanh(gi_n + r * ghn)
    else:
        b_rz, b_n = (None, None) if b_hh is None else (b_hh[: 2 * hidden], b_hh[2 * hidden:])
        gh_r, gh_z = F.linear(h_prev, w_hh[: 2 * hidden], b_rz).chunk(2, dim=-1)
        r, z = torch.sigmoid(gi_r + gh_r), torch.sigmoid(gi_z + gh_z)
        ghn = F.linear(r * h_prev, w_hh[2 * hidden:], b_n)
        n = torch.tanh(gi_n + ghn)
    return _Steps((1 - z) * n + z * h_prev, r, z, n, ghn)


def _coefficients(s: _Steps, h_prev: Tensor, reset_after: bool):
    """Per-unit factors of J: J = diag(z) + diag(u) W_hz + (the W_hn and W_hr terms)."""
    u = (h_prev - s.n) * s.z * (1 - s.z)
    dn = (1 - s.z) * (1 - s.n * s.n)  # ∂h'/∂(n's pre-activation)
    if reset_after:
        return u, dn * s.r, dn * s.ghn * s.r * (1 - s.r)
    return u, dn, h_prev * s.r * (1 - s.r)


def _jacobian(s: _Steps, h_prev: Tensor, w_hh: Tensor, reset_after: bool) -> Tensor:
    """Dense J_t = ∂f/∂h_{t−1} for every step: (T, B, H, H)."""
    hidden = h_prev.shape[-1]
    w_r, w_z, w_n = w_hh[:hidden], w_hh[hidden: 2 * hidden], w_hh[2 * hidden:]
    u, v, w = _coefficients(s, h_prev, reset_after)
    jac = torch.diag_embed(s.z) + u.unsqueeze(-1) * w_z
    if reset_after:
        return jac + v.unsqueeze(-1) * w_n + w.unsqueeze(-1) * w_r
    # ∂n_pre/∂h = W_hn (diag(r) + diag(h r(1 − r)) W_hr)
    inner = torch.diag_embed(s.r) + w.unsqueeze(-1) * w_r
    return jac + v.unsqueeze(-1) * (w_n @ inner)


def _jacobian_diagonal(s: _Steps, h_prev: Tensor, w_hh: Tensor, reset_after: bool) -> Tensor:
    """The diagonal of J_t for every step: (T, B, H)."""
    hidden = h_prev.shape[-1]
    w_r, w_z, w_n = w_hh[:hidden], w_hh[hidden: 2 * hidden], w_hh[2 * hidden:]
    u, v, w = _coefficients(s, h_prev, reset_after)
    diag = s.z + u * w_z.diagonal()
    if reset_after:
        return diag + v * w_n.diagonal() + w * w_r.diagonal()
    # (W_hn (diag(r) + diag(w) W_hr))_ii = W_hn,ii r_i + Σ_k W_hn,ik w_k W_hr,ki
    return diag + v * (w_n.diagonal() * s.r + w @ (w_n.t() * w_r))


# ---- the solver --------------------------------------------------------------------------

def _valid(lengths: Tensor | None, steps: int, like: Tensor) -> Tensor | None:
    if lengths is None:
        return None
    t = torch.arange(steps, device=like.device).view(-1, 1, 1)
    return t < lengths.to(like.device).view(1, -1, 1)  # (T, B, 1)


def _evaluate(gi, h, h0, w_hh, b_hh, valid, reset_after):
    """f at the guess h: (h_prev, steps, f(h_prev) with identity steps past lengths)."""
    h_prev = torch.cat([h0.unsqueeze(0), h[:-1]])
    s = _steps(gi, h_prev, w_hh, b_hh, reset_after)
    fh = s.h if valid is None else torch.where(valid, s.h, h_prev)
    return h_prev, s, fh


def _worst_tensor(x: Tensor) -> Tensor:
    """max |x| as a 0-d tensor, a NaN counting as infinite (so it never passes for
    converged)."""
    return x.abs().nan_to_num(nan=math.inf).max() if x.numel() else x.new_zeros(())


REMAINING_MAX = 16.0


def _remaining(size: float, before: float) -> float:
    """How far quasi-Newton's guess may still be from the answer, as a multiple of its
    last update (``size``; ``before``, the one before it): an iteration that converges
    linearly, at ratio ρ = size / before between its updates, leaves about ρ / (1 − ρ) of
    its last update to go, which passes 1 from ρ = 1/2. (Newton's, quadratic, at most its
    last update: the factor 1, which the dense loops keep.) At most REMAINING_MAX:
    updates at the rounding's level shrink by no ratio (ρ near or above 1), and an update
    that small then bounds what is left within float32's parity tolerance; unbounded, it
    also sent dense Newton at B=1, H=64, T=4096 from 4 iterations to the sequential
    finish."""
    rho = size / before if before > 0 else 0.0
    return 1.0 if rho <= 0.5 else min(REMAINING_MAX, rho / (1 - rho) if rho < 1 else math.inf)


# the fused Triton kernels for reset_after=True: "auto" (on CUDA), True (wherever Triton
# runs, e.g. the interpreter in the tests) or False (the torch ops)
FUSED = "auto"


def _use_fused(gi: Tensor, reset_after: bool) -> bool:
    from . import parallel_triton
    if not reset_after or FUSED is False or gi.dtype not in (torch.float32, torch.float64):
        return False
    if not parallel_triton.available(gi.device):
        return False
    return FUSED is True or gi.device.type == "cuda"


def solve(gi: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor | None, lengths: Tensor | None,
          reset_after: bool) -> Tensor:
    """The trajectory (T, B, H), steps past a length holding the last state (not yet 0)."""
    opts = _OPTIONS.get() or Options()
    dense = opts.jacobian == "dense"
    budget = opts.max_iters if opts.max_iters is not None else (32 if dense else 128)
    tol = opts.tol if opts.tol is not None else (1e-13 if h0.dtype == torch.float64 else 2e-6)
    loop = _newton_fused if _use_fused(gi, reset_after) else _newton
    fh, h, step, res, step_size, factor, iters = loop(gi, h0, w_hh, b_hh, lengths,
                                                     reset_after, dense, budget, tol,
                                                     opts.damping)
    first_bad = None
    if res > tol or step_size > tol / factor:  # not converged: finish sequentially from
        # the first step whose residual or last update is too large
        if step is None:  # no update accepted: small residuals alone do not bound the
            first_bad = 0  # distance to the answer (see Options), so all of it
        else:
            bad = ~((fh - h).abs() <= tol)  # (the first `iters` steps are exact whatever
            bad[iters:] |= ~(step[iters:].abs() <= tol / factor)  # their update)
            bad = bad.flatten(1).any(1)
            first_bad = int(bad.nonzero()[0, 0]) if bad.any() else None
        if first_bad is not None:
            fh = _finish(gi, fh, h0, w_hh, b_hh, lengths, reset_after, first_bad)
    _LAST[0] = SolveStats(iters, res, first_bad)
    return fh


def _newton(gi, h0, w_hh, b_hh, lengths, reset_after, dense, budget, tol, damping):
    """Newton's iterations on torch ops (any device, both formulations). Returns f(h), the
    last guess h, its update (None before the first), the largest residual and update,
    ``_remaining``'s factor for that update, and the iterations run. They stop where the
    residual and the update times the factor are within tol, or the budget is spent."""
    from ..scan import scan_dense, scan_diag

    steps = gi.shape[0]
    valid = _valid(lengths, steps, gi)

    def evaluate(h):
        """(f(h), f(h) − h, the Jacobian's data, max |f(h) − h| as a 0-d tensor)."""
        h_prev, s, fh = _evaluate(gi, h, h0, w_hh, b_hh, valid, reset_after)
        rhs = fh - h
        return fh, rhs, (s, h_prev), _worst_tensor(rhs)

    def jacobian(data):
        s, h_prev = data
        if dense:
            jac = _jacobian(s, h_prev, w_hh, reset_after)
            if valid is not None:
                jac = torch.where(valid.unsqueeze(-1), jac, torch.eye(jac.shape[-1]).to(jac))
            return jac
        diag = _jacobian_diagonal(s, h_prev, w_hh, reset_after)
        return diag if valid is None else torch.where(valid, diag, 1.0)

    h = h0.unsqueeze(0).expand(steps, *h0.shape).clone()
    fh, rhs, data, res = evaluate(h)
    res, iters, step, step_size, factor = res.item(), 0, None, math.inf, 1.0
    while (res > tol or step_size > tol / factor) and iters < budget:
        jac = jacobian(data)
        if dense:
            delta = scan_dense(jac, rhs, torch.zeros_like(h0), impl=DENSE_SCAN)
        else:
            delta = scan_diag(jac, rhs, torch.zeros_like(h0))
        del jac
        iters += 1
        scale = torch.ones(steps, 1, 1, dtype=h.dtype, device=h.device)
        damped = False
        for _ in range(5 if damping else 1):
            trial_step = scale * delta
            trial = h + trial_step
            t_fh, t_rhs, t_data, t_res = evaluate(trial)
            t_res, t_size = torch.stack([t_res, _worst_tensor(trial_step)]).tolist()
            if t_res <= res or not damping:
                break
            scale[iters:] /= 2  # the first `iters` steps are exact after a full step: keep
            damped = True
        if not t_res < math.inf:  # overflow or NaN: keep the last finite guess
            break
        h, fh, rhs, data, res = trial, t_fh, t_rhs, t_data, t_res
        if damped:  # a damped update says nothing of how near the answer is: its full one
            t_size = max(t_size, _worst_tensor(delta).item())
        factor = 1.0 if dense else _remaining(t_size, step_size)
        step, step_size = trial_step, t_size
    return fh, h, step, res, step_size, factor, iters


def _newton_fused(gi, h0, w_hh, b_hh, lengths, reset_after, dense, budget, tol, damping):
    """The same iterations on the fused Triton kernels (reset_after=True), lean on the
    host: on a GPU an iteration was bound by launching small ops, not by arithmetic. Two
    trajectory buffers (T + 1, B, H) hold h0 and a guess, so h_prev is a view; a guess's
    update is written by one kernel with its block maxima, the point's residual by
    another, and one reduction and one host sync per trial step read both."""
    from .. import scan
    from . import parallel_triton as pt

    steps, batch, hidden = gi.shape[0], h0.shape[0], h0.shape[1]
    impl = scan.choose_impl(DENSE_SCAN if dense else "auto", gi.device,
                            hidden if dense else None)
    gi = gi.contiguous()
    lens = None if lengths is None else lengths.to(gi.device).contiguous()
    w = w_hh.contiguous() if dense else pt.diagonals(w_hh)
    zero = torch.zeros_like(h0)
    partial = torch.empty(2, pt.blocks(steps * batch * hidden), dtype=gi.dtype,
                          device=gi.device)

    def buffer():
        hp = torch.empty(steps + 1, batch, hidden, dtype=gi.dtype, device=gi.device)
        hp[0] = h0
        return hp, torch.empty_like(hp[1:])  # (h0 and a guess, the update that made it)

    def evaluate(hp):
        gh = F.linear(hp[:-1], w_hh, b_hh)
        return pt.point(gi, gh, hp, lens, w, dense, partial[0])

    cur, new = buffer(), buffer()
    cur[0][1:] = h0
    fh, rhs, data = evaluate(cur[0])
    res, iters, step_size, factor, stepped = partial[0].max().item(), 0, math.inf, 1.0, False
    while (res > tol or step_size > tol / factor) and iters < budget:
        if dense:  # (the Jacobians, T·B·H² numbers, live only for the scan)
            delta = scan._dense(pt.jacobian(data, w_hh), rhs, zero, False, False, impl)
        else:
            delta = scan._diag(data, rhs, zero, False, impl)
        iters += 1
        for attempt in range(5 if damping else 1):
            # the first `iters` steps are exact after a full step: only later ones halve
            pt.trial(cur[0], delta, new[0], new[1], partial[1], iters, 0.5 ** attempt)
            t_fh, t_rhs, t_data = evaluate(new[0])
            t_res, t_size = partial.amax(1).tolist()
            if t_res <= res or not damping:
                break
        if not t_res < math.inf:  # overflow or NaN: keep the last finite guess
            break
        cur, new = new, cur
        if attempt:  # a damped update says nothing of how near the answer is: its full one
            t_size = max(t_size, _worst_tensor(delta).item())
        factor = 1.0 if dense else _remaining(t_size, step_size)
        fh, rhs, data, res, step_size, stepped = t_fh, t_rhs, t_data, t_res, t_size, True
    return fh, cur[0][1:], cur[1] if stepped else None, res, step_size, factor, iters


def _finish(gi, h, h0, w_hh, b_hh, lengths, reset_after, start):
    """h with steps start.. recomputed by a sequential core (0 past lengths, which the
    caller masks anyway): the fastest exact one here, since this runs when Newton did not
    converge and may cover most of a long sequence (the reference core's Python loop took
    seconds at T=32768 on a GPU)."""
    h_start = h0 if start == 0 else h[start - 1]
    rest_lengths = None if lengths is None else (lengths.to(gi.device) - start).clamp(min=0)
    rest = _sequential_core(gi)(gi[start:], h_start, w_hh, b_hh, rest_lengths, reset_after)
    return torch.cat([h[:start], rest])


def _sequential_core(gi: Tensor):
    """The sequential core for ``_finish``: the Triton kernels on CUDA (any length; cuDNN
    refuses T ≥ 65536), the fused CPU kernels on the CPU, else the reference."""
    from . import BACKENDS, _runs

    for name in ("triton", "cpu"):
        backend = BACKENDS[name]
        if backend.missing() is None and _runs(backend, gi.device, gi.dtype) and (
                name == "cpu" or gi.device.type == "cuda"):
            return backend.run
    return reference.core


# ---- gradients by the adjoint ------------------------------------------------------------

def _adjoint(dout, gi, h0, w_hh, b_hh, out, lengths, reset_after):
    """dgi, dh0, dW_hh, db_hh at the solution ``out`` (the trajectory, states held past
    lengths), from λ_t = dout_t + J_{t+1}ᵀ λ_{t+1}."""
    from ..scan import scan_dense

    steps, hidden = out.shape[0], out.shape[-1]
    valid = _valid(lengths, steps, gi)
    h_prev = torch.cat([h0.unsqueeze(0), out[:-1]])
    s = _steps(gi, h_prev, w_hh, b_hh, reset_after)
    u, v, w = _coefficients(s, h_prev, reset_after)
    if valid is not None:
        dout = torch.where(valid, dout, 0.0)
    # λ_t = dout_t + J_{t+1}ᵀ λ_{t+1}: a reverse scan over the Jacobians shifted by one
    if _use_fused(gi, reset_after) and steps:
        from . import parallel_triton
        coef = [s.z, u, v, w]
        if valid is not None:  # identity past the lengths
            coef = [torch.where(valid, c, float(k == 0)) for k, c in enumerate(coef)]
        shifted = torch.empty(*out.shape, hidden, dtype=out.dtype, device=out.device)
        shifted[-1].zero_()
        parallel_triton.jacobian([c[1:] for c in coef], w_hh, out=shifted[:-1])
        jac0 = parallel_triton.jacobian([c[:1] for c in coef], w_hh)[0]
    else:
        jac = _jacobian(s, h_prev, w_hh, reset_after)
        if valid is not None:
            jac = torch.where(valid.unsqueeze(-1), jac, torch.eye(hidden).to(jac))
        shifted = torch.cat([jac[1:], torch.zeros_like(jac[:1])])
        jac0 = jac[0] if steps else None
        del jac
    lam = scan_dense(shifted, dout, torch.zeros_like(h0), reverse=True, transpose=True,
                     impl=DENSE_SCAN)
    del shifted
    dz = lam * u
    dn = lam * (1 - s.z) * (1 - s.n * s.n)
    if reset_after:
        dr = dn * s.ghn * s.r * (1 - s.r)
        dgi = torch.cat([dr, dz, dn], -1)
        dgh = torch.cat([dr, dz, dn * s.r], -1)
        dw_hh = dgh.flatten(0, -2).t() @ h_prev.flatten(0, -2)
        db_hh = dgh.flatten(0, -2).sum(0)
    else:
        d_rh = dn @ w_hh[2 * hidden:]
        dr = d_rh * w
        dgi = torch.cat([dr, dz, dn], -1)
        flat = dgi.flatten(0, -2)
        rh = (s.r * h_prev).flatten(0, -2)
        dw_hh = torch.cat([flat[:, : 2 * hidden].t() @ h_prev.flatten(0, -2),
                           flat[:, 2 * hidden:].t() @ rh])
        db_hh = flat.sum(0)
    if valid is not None:
        dgi = torch.where(valid, dgi, 0.0)
    dh0 = (jac0.transpose(-1, -2) @ lam[0].unsqueeze(-1)).squeeze(-1) if steps else \
        torch.zeros_like(h0)
    return dgi, dh0, dw_hh, db_hh


@contextmanager
def _full_precision(device: torch.device) -> Iterator[None]:
    """The solver's products in its own dtype: no autocast and, on CUDA, no TF32 matmuls
    (the GRU step evaluated at TF32's ~1e-3 relative error leaves a residual that Newton
    can never bring under float32's tolerance: in a review's simulation, the product's
    inputs rounded to TF32, the budget ran out and the sequential finish did the work; in
    bfloat16 under autocast the same, measured). TF32 is turned off for the call and
    restored after."""
    tf32 = device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    with torch.autocast(device.type, enabled=False):
        if tf32:
            torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            if tf32:
                torch.backends.cuda.matmul.allow_tf32 = True


class _ParallelGRU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gi, h0, w_hh, b_hh, lengths, reset_after):
        with _full_precision(gi.device):
            traj = solve(gi, h0, w_hh, b_hh, lengths, reset_after)
        # (b_hh as it is now: the adjoint evaluates the steps again, and torch's GRU keeps
        # no b_hh for its backward, so its callers may change it in place before theirs)
        ctx.save_for_backward(gi, h0, w_hh, None if b_hh is None else b_hh.clone(), traj,
                              lengths)
        ctx.reset_after = reset_after
        valid = _valid(lengths, gi.shape[0], gi)
        # (a new tensor either way: the caller may change its output in place before the
        # backward, as torch.nn.GRU's callers may)
        return traj.clone() if valid is None else torch.where(valid, traj, 0.0)

    @staticmethod
    def backward(ctx, dout):
        reference.refuse_other_backwards("parallel", dout)
        gi, h0, w_hh, b_hh, traj, lengths = ctx.saved_tensors
        with _full_precision(gi.device):
            dgi, dh0, dw_hh, db_hh = _adjoint(dout, gi, h0, w_hh, b_hh, traj, lengths,
                                              ctx.reset_after)
        return dgi, dh0, dw_hh, db_hh if b_hh is not None else None, None, None


def core(gi: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor | None, lengths: Tensor | None,
         reset_after: bool) -> Tensor:
    """The recurrent core (see ``reference.core`` for the contract), parallel in time."""
    if gi.dtype != h0.dtype:  # autocast made the input projection low precision
        gi = gi.to(h0.dtype)
    if gi.shape[0] == 0 or gi.shape[1] == 0 or gi.device.type == "meta":
        # (nothing to solve: the reference's empty result, which autograd still connects
        # to every input, as torch's is; on the meta device, values the solver's iterations
        # can't read: the reference's shapes)
        _LAST[0] = None if gi.device.type == "meta" else SolveStats(0, 0.0, None)
        return reference.core(gi, h0, w_hh, b_hh, lengths, reset_after)
    return _ParallelGRU.apply(gi, h0, w_hh, b_hh, lengths, reset_after)
