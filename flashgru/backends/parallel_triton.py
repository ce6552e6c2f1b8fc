"""Fused Triton kernels for the parallel solver's Newton iterations (torch's formulation,
``reset_after=True``).

On a GPU an iteration of ``parallel.solve`` was bound by launch overhead, not arithmetic:
~1.5 ms per iteration at any T on an H100 (docs/performance.md), from some forty small
torch ops. Here, after the one GEMM ``gh = h_prev W_hhᵀ + b_hh``:

- ``point``: one pass over all steps that evaluates the GRU step at the guess, writes
  f(h), the residual f(h) − h, the Jacobian's diagonal (quasi-Newton) or its per-unit
  coefficients (dense Newton), and each block's largest |residual| (a NaN counts as
  infinite), so the caller needs one small reduction and one host sync per trial step;
- ``trial``: a Newton update into the other trajectory buffer (T + 1, B, H), whose row 0
  is h0 so that h_prev is a view and needs no copy, with each block's largest update;
- ``jacobian``: the dense J_t = diag(z) + diag(u) W_hz + diag(v) W_hn + diag(w) W_hr,
  written once (torch's broadcasting wrote and re-read the (T, B, H, H) tensor four
  times).

Steps past a sequence's length get the identity map (f(h) = h_prev, J = I), as in the
torch path. float32 and float64, computed in their own precision. CPU tensors run under
``TRITON_INTERPRET=1`` (the tests).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import scan
from ..scan import on_device

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch path of parallel.solve is used instead
    triton = None

BLOCK = 1024  # elements per program of `point`


def _jit(fn):
    return fn if triton is None else triton.jit(fn)


@_jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@_jit
def _point_kernel(gi, gh, hp, lengths, wdiag, fh, rhs, c_z, c_u, c_v, c_w, partial,
                  B, H, N, HAS_LEN: tl.constexpr, DENSE: tl.constexpr,
                  BLOCK: tl.constexpr):
    """Element e = (t·B + b)·H + j of the (T, B, H) trajectory; gi, gh (T, B, 3H); hp
    (T + 1, B, H) holds h0 then the guess, so h_{t−1} is hp[e] and h_t is hp[e + B·H];
    wdiag (3, H) the diagonals of W_hr, W_hz, W_hn."""
    pid = tl.program_id(0)
    e = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = e < N
    bh = B * H
    t = e // bh
    row = e // H  # t·B + b
    b = row % B
    j = e % H
    g = row * 3 * H + j
    gi_r = tl.load(gi + g, mask=m, other=0.0)
    gi_z = tl.load(gi + g + H, mask=m, other=0.0)
    gi_n = tl.load(gi + g + 2 * H, mask=m, other=0.0)
    gh_r = tl.load(gh + g, mask=m, other=0.0)
    gh_z = tl.load(gh + g + H, mask=m, other=0.0)
    gh_n = tl.load(gh + g + 2 * H, mask=m, other=0.0)
    h_prev = tl.load(hp + e, mask=m, other=0.0)
    r = _sigmoid(gi_r + gh_r)
    z = _sigmoid(gi_z + gh_z)
    n = 2.0 * _sigmoid(2.0 * (gi_n + r * gh_n)) - 1.0
    f = (1.0 - z) * n + z * h_prev
    u = (h_prev - n) * z * (1.0 - z)
    dn = (1.0 - z) * (1.0 - n * n)
    v = dn * r
    w = dn * gh_n * r * (1.0 - r)
    if HAS_LEN:
        valid = t < tl.load(lengths + b, mask=m, other=0)
        f = tl.where(valid, f, h_prev)
        z = tl.where(valid, z, 1.0)
        u = tl.where(valid, u, 0.0)
        v = tl.where(valid, v, 0.0)
        w = tl.where(valid, w, 0.0)
    res = f - tl.load(hp + bh + e, mask=m, other=0.0)
    tl.store(fh + e, f, mask=m)
    tl.store(rhs + e, res, mask=m)
    if DENSE:
        tl.store(c_z + e, z, mask=m)
        tl.store(c_u + e, u, mask=m)
        tl.store(c_v + e, v, mask=m)
        tl.store(c_w + e, w, mask=m)
    else:
        d_r = tl.load(wdiag + j, mask=m, other=0.0)
        d_z = tl.load(wdiag + H + j, mask=m, other=0.0)
        d_n = tl.load(wdiag + 2 * H + j, mask=m, other=0.0)
        tl.store(c_z + e, z + u * d_z + v * d_n + w * d_r, mask=m)
    tl.store(partial + pid, _block_max(res, m))


@_jit
def _block_max(x, m):
    """The block's largest |x| over the mask, a NaN counting as infinite (never converged)."""
    size = tl.abs(x)
    size = tl.where(size == size, size, float("inf"))
    return tl.max(tl.where(m, size, 0.0), axis=0)


@_jit
def _trial_kernel(hp, delta, trial, step, partial, N, BH, KEEP, factor,
                  BLOCK: tl.constexpr):
    """A Newton step into the other trajectory buffer: trial = h + s·δ with s = 1 for the
    first KEEP elements (the steps a full update makes exact) and ``factor`` after them;
    step = s·δ, and each block's largest |s·δ|. hp and trial (T + 1, B, H), row 0 h0."""
    pid = tl.program_id(0)
    e = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = e < N
    d = tl.load(delta + e, mask=m, other=0.0)
    d = tl.where(e < KEEP, d, d * factor)
    tl.store(trial + BH + e, tl.load(hp + BH + e, mask=m, other=0.0) + d, mask=m)
    tl.store(step + e, d, mask=m)
    tl.store(partial + pid, _block_max(d, m))


@_jit
def _jacobian_kernel(c_z, c_u, c_v, c_w, w, jac, ROWS_TOTAL, H,
                     ROWS: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr):
    """Program (p, q): rows p·ROWS.. of (T·B) and units q·BI.. of J's first axis; W's
    (BI, H) slices of the three gate blocks stay in registers across the rows."""
    i = tl.program_id(1) * BI + tl.arange(0, BI)
    jj = tl.arange(0, BJ)
    im = i < H
    jm = jj < H
    mm = im[:, None] & jm[None, :]
    wo = i[:, None] * H + jj[None, :]
    w_r = tl.load(w + wo, mask=mm, other=0.0)
    w_z = tl.load(w + H * H + wo, mask=mm, other=0.0)
    w_n = tl.load(w + 2 * H * H + wo, mask=mm, other=0.0)
    eye = i[:, None] == jj[None, :]
    for k in range(ROWS):
        row = tl.program_id(0).to(tl.int64) * ROWS + k
        cm = im & ((row + 0 * i) < ROWS_TOTAL)  # (BI,): this row exists
        c = row * H + i
        z = tl.load(c_z + c, mask=cm, other=0.0)[:, None]
        u = tl.load(c_u + c, mask=cm, other=0.0)[:, None]
        v = tl.load(c_v + c, mask=cm, other=0.0)[:, None]
        ww = tl.load(c_w + c, mask=cm, other=0.0)[:, None]
        block = tl.where(eye, z, 0.0) + u * w_z + v * w_n + ww * w_r
        tl.store(jac + row * H * H + wo, block, mask=cm[:, None] & jm[None, :])


def available(device: torch.device) -> bool:
    """Whether the fused kernels run on this device (CUDA, or CPU under the interpreter)."""
    if triton is None:
        return False
    return device.type == "cuda" or scan.INTERPRET


def diagonals(w_hh: Tensor) -> Tensor:
    """(3, H): the diagonals of W_hr, W_hz, W_hn (the quasi-Newton Jacobian reads them)."""
    hidden = w_hh.shape[-1]
    return w_hh.reshape(3, hidden, hidden).diagonal(dim1=1, dim2=2).contiguous()


def blocks(n: int) -> int:
    """How many per-block maxima ``point`` and ``trial`` write for n elements."""
    return max(1, triton.cdiv(n, BLOCK))


def point(gi: Tensor, gh: Tensor, hp: Tensor, lengths: Tensor | None, w: Tensor,
          dense: bool, partial: Tensor):
    """f(h), f(h) − h and the Jacobian's data (its diagonal (T, B, H), or the coefficients
    (z, u, v, w) for ``jacobian``) at the guess h = hp[1:] (hp (T + 1, B, H) contiguous,
    hp[0] = h0); each block's max |f(h) − h| (NaN → inf) into ``partial`` (``blocks(n)``
    entries). w: W_hh for dense, else ``diagonals(W_hh)``."""
    steps, batch, hidden = gh.shape[0], hp.shape[1], hp.shape[2]
    n = steps * batch * hidden
    like = hp[1:]
    fh, rhs = torch.empty_like(like), torch.empty_like(like)
    coef = [torch.empty_like(like) for _ in range(4 if dense else 1)]
    if n == 0:
        partial.zero_()
        return fh, rhs, coef if dense else coef[0]
    lens = lengths if lengths is not None else hp  # (unused without HAS_LEN)
    c = coef if dense else coef * 4
    with on_device(hp.device):
        _point_kernel[(blocks(n),)](
            gi, gh, hp, lens, w, fh, rhs, *c, partial, batch, hidden, n,
            HAS_LEN=lengths is not None, DENSE=dense, BLOCK=BLOCK)
    return fh, rhs, coef if dense else coef[0]


def trial(hp: Tensor, delta: Tensor, out: Tensor, step: Tensor, partial: Tensor,
          keep_steps: int, factor: float) -> None:
    """out[1:] = hp[1:] + s·δ and step = s·δ, s = 1 for the first ``keep_steps`` steps and
    ``factor`` after; each block's max |s·δ| (NaN → inf) into ``partial``. hp, out
    (T + 1, B, H) contiguous; delta, step (T, B, H) contiguous."""
    n = delta.numel()
    if n == 0:
        partial.zero_()
        return
    bh = hp[0].numel()
    with on_device(hp.device):
        _trial_kernel[(blocks(n),)](hp, delta.contiguous(), out, step, partial, n, bh,
                                    keep_steps * bh, float(factor), BLOCK=BLOCK)


def jacobian(coef: list[Tensor], w_hh: Tensor, out: Tensor | None = None) -> Tensor:
    """The dense Jacobians (T, B, H, H) from ``point``'s coefficients (z, u, v, w), into
    ``out`` (contiguous) if given."""
    z = coef[0]
    steps, batch, hidden = z.shape
    jac = out if out is not None else torch.empty(steps, batch, hidden, hidden,
                                                  dtype=z.dtype, device=z.device)
    coef = [c.contiguous() for c in coef]
    rows = steps * batch
    if rows == 0:
        return jac
    bj = triton.next_power_of_2(hidden)
    bi = max(1, min(bj, 2048 // bj))  # ≤ 2048 elements per gate tile (4096 used all
    # 255 registers in float32 and spilled in float64, by ptxas for sm_90)
    per = 8
    grid = (triton.cdiv(rows, per), triton.cdiv(hidden, bi))
    with on_device(jac.device):
        _jacobian_kernel[grid](*coef, w_hh.contiguous(), jac, rows, hidden, ROWS=per, BI=bi,
                               BJ=bj)
    return jac
