"""Fused Triton kernels for the parallel solver's Newton iterations (torch's formulation,
``reset_after=True``).

On a GPU an iteration of ``parallel.solve`` was bound by launch overhead, not arithmetic:
~1.5 ms per iteration at any T on an H100 (docs/performance.md), from some forty small
torch ops. Here, after the one GEMM ``gh = h_prev W_hhᵀ + b_hh``:

- ``point``: one pass over all steps that evaluates the GRU step at the guess, writes
  f(h), the residual f(h) − h, the Jacobian's diagonal (quasi-Newton) or its per-unit
  coefficients (dense Newton), and each block's largest |residual| (a NaN counts as
  infinite), so the caller needs one small reduction and one host sync;
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
def _point_kernel(gi, gh, h, h0, lengths, wdiag, fh, rhs, c_z, c_u, c_v, c_w, partial,
                  B, H, N, HAS_LEN: tl.constexpr, DENSE: tl.constexpr,
                  BLOCK: tl.constexpr):
    """Element e = (t·B + b)·H + j of the (T, B, H) trajectory; gi, gh (T, B, 3H); h the
    guess (T, B, H), h0 (B, H); wdiag (3, H) the diagonals of W_hr, W_hz, W_hn."""
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
    first = t == 0
    h_prev = tl.where(first, tl.load(h0 + b * H + j, mask=m & first, other=0.0),
                      tl.load(h + e - bh, mask=m & (t > 0), other=0.0))
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
    res = f - tl.load(h + e, mask=m, other=0.0)
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
    size = tl.abs(res)
    size = tl.where(size == size, size, float("inf"))  # NaN never passes for converged
    tl.store(partial + pid, tl.max(tl.where(m, size, 0.0), axis=0))


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


def point(gi: Tensor, gh: Tensor, h: Tensor, h0: Tensor, lengths: Tensor | None,
          w_hh: Tensor, dense: bool):
    """f(h), f(h) − h, the Jacobian's data (its diagonal (T, B, H), or the coefficients
    (z, u, v, w) for ``jacobian``) and max |f(h) − h| as a 0-d tensor (NaN → inf)."""
    steps, batch, hidden = h.shape
    n = h.numel()
    fh, rhs = torch.empty_like(h), torch.empty_like(h)
    coef = [torch.empty_like(h) for _ in range(4 if dense else 1)]
    blocks = max(1, triton.cdiv(n, BLOCK))
    partial = torch.empty(blocks, dtype=h.dtype, device=h.device)
    if n == 0:
        return fh, rhs, coef if dense else coef[0], h.new_zeros(())
    wdiag = w_hh.reshape(3, hidden, hidden).diagonal(dim1=1, dim2=2).contiguous()
    lens = lengths.contiguous() if lengths is not None else h0  # (unused without HAS_LEN)
    c = coef if dense else coef * 4
    with on_device(h.device):
        _point_kernel[(blocks,)](
            gi.contiguous(), gh.contiguous(), h.contiguous(), h0.contiguous(), lens, wdiag,
            fh, rhs, *c, partial, batch, hidden, n, HAS_LEN=lengths is not None,
            DENSE=dense, BLOCK=BLOCK)
    return fh, rhs, coef if dense else coef[0], partial.max()


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
