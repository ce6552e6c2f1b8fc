"""The fused CPU backend: the whole time loop of one layer-direction in one numba kernel,
forward and backward through time, both formulations, sequence lengths, float32/float64.

Per step, the hidden product is a hand-unrolled matrix-vector loop at batch 1 (measured
faster than a BLAS call there) and a BLAS GEMM (``np.dot`` through SciPy) above; the gate
math is one fused pass. Backward saves r, z, n (and W_hn h + b_hn for reset_after=True),
runs the reverse recurrence in one kernel and computes the weight gradients as GEMMs over
all steps afterwards. Kernels compile on first use and are cached on disk.

Needs numba and SciPy (``pip install 'flashgru[cpu]'``); without them the backend reports
itself unavailable and flashgru works on the others. No double backward: use "reference".
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

try:
    import numba
    import numba.extending
    import scipy.linalg.cython_blas  # noqa: F401  numba's np.dot calls BLAS through SciPy
except ImportError:  # the backend is then unavailable; see missing()
    numba = None

MATVEC_FLAGS = {"reassoc", "contract"}  # let LLVM vectorise the sums; nothing else


def missing() -> str | None:
    if numba is None:
        return "it needs numba and SciPy: pip install 'flashgru[cpu]'"
    return None


def _jit(**kwargs):
    """numba.njit, cached on disk, without the GIL, with numpy's error model (a float
    division by zero gives inf instead of raising: no branch per division, so LLVM
    vectorises the gate loops)."""
    def wrap(fn):
        if numba is None:
            return fn
        return numba.njit(cache=True, nogil=True, error_model="numpy", **kwargs)(fn)

    return wrap


# ---- kernels -----------------------------------------------------------------------------

@_jit(fastmath=MATVEC_FLAGS, boundscheck=False)
def _matvec(h, w, out):
    """out (N,) = h (K,) @ w (K, N), eight rows of w per pass over out."""
    n_out = w.shape[1]
    for j in range(n_out):
        out[j] = 0.0
    k, n_in = 0, h.shape[0]
    while k + 8 <= n_in:
        h0, h1, h2, h3 = h[k], h[k + 1], h[k + 2], h[k + 3]
        h4, h5, h6, h7 = h[k + 4], h[k + 5], h[k + 6], h[k + 7]
        for j in range(n_out):
            out[j] += (h0 * w[k, j] + h1 * w[k + 1, j] + h2 * w[k + 2, j] + h3 * w[k + 3, j]
                       + h4 * w[k + 4, j] + h5 * w[k + 5, j] + h6 * w[k + 6, j]
                       + h7 * w[k + 7, j])
        k += 8
    while k < n_in:
        hk = h[k]
        for j in range(n_out):
            out[j] += hk * w[k, j]
        k += 1


@_jit(fastmath=MATVEC_FLAGS, boundscheck=False)
def _gemv_rows(w, x, out):
    """out (B, N) = x (B, K) @ w (N, K)ᵀ on w's native row-major layout, nothing
    transposed: four rows of w at a time (they stay in L1) against two rows of x at a time
    (each weight loaded once for both), each a dot product that LLVM vectorises. For small
    B, where the weight stream is the cost: at B=1 it runs at the speed of reading w once.
    (Written out in one function: split into helpers, LLVM does not vectorise it.)"""
    (n_out, n_in), batch = w.shape, x.shape[0]
    zero = out.dtype.type(0)
    for j in range(0, n_out - n_out % 4, 4):
        w0, w1, w2, w3 = w[j], w[j + 1], w[j + 2], w[j + 3]
        for i in range(0, batch - 1, 2):
            xa, xb = x[i], x[i + 1]
            a0, a1, a2, a3, b0, b1, b2, b3 = zero, zero, zero, zero, zero, zero, zero, zero
            for k in range(n_in):
                a0 += w0[k] * xa[k]
                a1 += w1[k] * xa[k]
                a2 += w2[k] * xa[k]
                a3 += w3[k] * xa[k]
                b0 += w0[k] * xb[k]
                b1 += w1[k] * xb[k]
                b2 += w2[k] * xb[k]
                b3 += w3[k] * xb[k]
            out[i, j], out[i, j + 1], out[i, j + 2], out[i, j + 3] = a0, a1, a2, a3
            out[i + 1, j], out[i + 1, j + 1], out[i + 1, j + 2], out[i + 1, j + 3] = (
                b0, b1, b2, b3)
        for i in range(batch - batch % 2, batch):  # the odd row, as a loop (else unvectorised)
            xa = x[i]
            a0, a1, a2, a3 = zero, zero, zero, zero
            for k in range(n_in):
                a0 += w0[k] * xa[k]
                a1 += w1[k] * xa[k]
                a2 += w2[k] * xa[k]
                a3 += w3[k] * xa[k]
            out[i, j], out[i, j + 1], out[i, j + 2], out[i, j + 3] = a0, a1, a2, a3
    for j in range(n_out - n_out % 4, n_out):  # the last N % 4 rows
        for i in range(batch):
            a0 = zero
            for k in range(n_in):
                a0 += w[j, k] * x[i, k]
            out[i, j] = a0


@_jit(boundscheck=False)
def _matmul(a, w, out):
    """out (B, N) = a (B, K) @ w (K, N)."""
    if a.shape[0] == 1:
        _matvec(a[0], w, out[0])
    else:
        np.dot(a, w, out)


# exp(r) = Σ r^k / k! on |r| ≤ ln2/2, Horner from the highest term: ≤ 4e-16 relative in
# float64 with 13 terms; 8 terms leave ≤ 6e-9, under float32's rounding (6e-8)
_EXP_TAYLOR = (1 / 479001600, 1 / 39916800, 1 / 3628800, 1 / 362880, 1 / 40320, 1 / 5040,
               1 / 720, 1 / 120, 1 / 24, 1 / 6, 1 / 2, 1.0, 1.0)
_EXP_TAYLOR_32 = tuple(np.float32(c) for c in _EXP_TAYLOR[5:])
_LOG2E_32, _HALF_32 = np.float32(1.4426950408889634), np.float32(0.5)
_LN2_HI_32, _LN2_LO_32 = np.float32(0.693359375), np.float32(-2.12194440e-4)  # Cody-Waite


def _vexp(x, bits):
    """x[:] = exp(x[:]) for a 1-D array, in arithmetic that LLVM vectorises (libm's exp
    does not): 2^k · P(r) with x = k·ln2 + r. ``bits``: int64 scratch as long as x. numba
    compiles the body for x's dtype: ``_vexp64`` (relative error ≤ 4e-16, arguments clamped
    to ±708) or ``_vexp32`` (8 float32 lanes per vector, ≤ 2 ulp, clamped to [-87, 88])."""


def _vexp64(x, bits):
    for j in range(x.shape[0]):
        v = min(max(np.float64(x[j]), -708.0), 708.0)
        k = np.floor(v * 1.4426950408889634 + 0.5)
        r = v - k * 0.6931471803691238 - k * 1.9082149292705877e-10
        p = 0.0
        for c in _EXP_TAYLOR:
            p = p * r + c
        x[j] = p
        bits[j] = (np.int64(k) + 1023) << 52
    scale = bits.view(np.float64)
    for j in range(x.shape[0]):
        x[j] *= scale[j]


def _vexp32(x, bits):
    n = x.shape[0]
    bits32 = bits.view(np.int32)[:n]
    for j in range(n):
        v = min(max(x[j], np.float32(-87.0)), np.float32(88.0))
        k = np.floor(v * _LOG2E_32 + _HALF_32)
        r = v - k * _LN2_HI_32 - k * _LN2_LO_32
        p = np.float32(0.0)
        for c in _EXP_TAYLOR_32:
            p = p * r + c
        x[j] = p
        bits32[j] = (np.int32(k) + 127) << 23
    scale = bits32.view(np.float32)
    for j in range(n):
        x[j] *= scale[j]


if numba is not None:
    @numba.extending.overload(_vexp, jit_options={"fastmath": {"contract"},
                                                  "boundscheck": False,
                                                  "error_model": "numpy"})
    def _vexp_for(x, bits):
        return _vexp32 if x.dtype == numba.float32 else _vexp64


@_jit(boundscheck=False)
def _gates_after(gi, gh, b, h, r_s, z_s, n_s, ghn_s, out, a, c, bits):
    """One row of reset_after=True: the gates from gi (3H,) and gh = W_hh h (3H,); h (H,)
    is updated in place. a, c: float scratch (H,)."""
    hidden = h.shape[0]
    one, two = a.dtype.type(1.0), a.dtype.type(2.0)  # float32 math stays float32
    for j in range(hidden):
        a[j] = -(gi[j] + gh[j] + b[j])
        c[j] = -(gi[hidden + j] + gh[hidden + j] + b[hidden + j])
    _vexp(a, bits)
    _vexp(c, bits)
    for j in range(hidden):
        r = one / (one + a[j])
        z = one / (one + c[j])
        ghn = gh[2 * hidden + j] + b[2 * hidden + j]
        r_s[j] = r
        z_s[j] = z
        ghn_s[j] = ghn
        a[j] = two * (gi[2 * hidden + j] + r * ghn)
    _vexp(a, bits)
    for j in range(hidden):
        n = one - two / (one + a[j])  # tanh
        z = z_s[j]
        h[j] = (one - z) * n + z * h[j]
        n_s[j] = n
        out[j] = h[j]


@_jit(boundscheck=False)
def _skip(t, ts, i, out, r_s, z_s, n_s):
    """Step t is past sequence i's length: out is 0 and the saved gates are 0."""
    out[t, i] = 0.0
    r_s[ts, i] = 0.0
    z_s[ts, i] = 0.0
    n_s[ts, i] = 0.0


@_jit(boundscheck=False)
def _fwd_after(gi, h0, w_t, b, lengths, out, r_s, z_s, n_s, ghn_s):
    """reset_after=True. gi (T, B, 3H); w_t = W_hhᵀ (H, 3H); b (3H,). Writes out and the
    saved r, z, n, W_hn h + b_hn (all (T, B, H), 0 past each length); saved arrays of one
    step (1, B, H) are scratch, for inference."""
    steps, batch, hidden = out.shape
    keep = 1 if r_s.shape[0] == steps else 0
    h = h0.copy()
    gh = np.empty((batch, 3 * hidden), dtype=h0.dtype)
    a, c = np.empty(hidden, dtype=h0.dtype), np.empty(hidden, dtype=h0.dtype)
    bits = np.empty(hidden, dtype=np.int64)
    for t in range(steps):
        _matmul(h, w_t, gh)
        for i in range(batch):
            ts = t * keep
            if t >= lengths[i]:
                _skip(t, ts, i, out, r_s, z_s, n_s)
                ghn_s[ts, i] = 0.0
                continue
            _gates_after(gi[t, i], gh[i], b, h[i], r_s[ts, i], z_s[ts, i], n_s[ts, i],
                         ghn_s[ts, i], out[t, i], a, c, bits)


@_jit(boundscheck=False)
def _rz_before(gi, gh, b, h, r_s, z_s, rh, a, c, bits):
    """One row of reset_after=False, first half: r and z from gi (3H,), gh = W_hr,z h
    (2H,) and b = b_hh (3H,); writes r_s, z_s and rh = r ⊙ h, all (H,). a, c: scratch."""
    hidden = h.shape[0]
    one = a.dtype.type(1.0)  # float32 math stays float32
    for j in range(hidden):
        a[j] = -(gi[j] + gh[j] + b[j])
        c[j] = -(gi[hidden + j] + gh[hidden + j] + b[hidden + j])
    _vexp(a, bits)
    _vexp(c, bits)
    for j in range(hidden):
        r = one / (one + a[j])
        r_s[j] = r
        z_s[j] = one / (one + c[j])
        rh[j] = r * h[j]


@_jit(boundscheck=False)
def _n_before(gi, ghn, b, z_s, h, n_s, out, a, bits):
    """One row of reset_after=False, second half: n from gi (3H,), ghn = W_hn (r ⊙ h)
    (H,) and b (3H,); h (H,) is updated in place and copied to out; writes n_s (H,)."""
    hidden = h.shape[0]
    one, two = a.dtype.type(1.0), a.dtype.type(2.0)  # float32 math stays float32
    for j in range(hidden):
        a[j] = two * (gi[2 * hidden + j] + ghn[j] + b[2 * hidden + j])
    _vexp(a, bits)
    for j in range(hidden):
        n = one - two / (one + a[j])  # tanh
        z = z_s[j]
        h[j] = (one - z) * n + z * h[j]
        out[j] = h[j]
        n_s[j] = n


@_jit(boundscheck=False)
def _fwd_before(gi, h0, w_rz_t, w_n_t, b, lengths, out, r_s, z_s, n_s):
    """reset_after=False. w_rz_t = W_hr,zᵀ (H, 2H); w_n_t = W_hnᵀ (H, H). Saved arrays as
    in _fwd_after."""
    steps, batch, hidden = out.shape
    keep = 1 if r_s.shape[0] == steps else 0
    h = h0.copy()
    gh = np.empty((batch, 2 * hidden), dtype=h0.dtype)
    rh = np.zeros((batch, hidden), dtype=h0.dtype)
    ghn = np.empty((batch, hidden), dtype=h0.dtype)
    a, c = np.empty(hidden, dtype=h0.dtype), np.empty(hidden, dtype=h0.dtype)
    bits = np.empty(hidden, dtype=np.int64)
    for t in range(steps):
        _matmul(h, w_rz_t, gh)
        ts = t * keep
        for i in range(batch):
            _rz_before(gi[t, i], gh[i], b, h[i], r_s[ts, i], z_s[ts, i], rh[i], a, c, bits)
        _matmul(rh, w_n_t, ghn)
        for i in range(batch):
            if t >= lengths[i]:
                _skip(t, ts, i, out, r_s, z_s, n_s)
                continue
            _n_before(gi[t, i], ghn[i], b, z_s[ts, i], h[i], n_s[ts, i], out[t, i], a, bits)


@_jit(boundscheck=False)
def _step_after(gi, h, w, b, out):
    """One step of reset_after=True for inference, W_hh read in its native layout (no
    transpose per call): gi (B, 3H), h (B, H), w = W_hh (3H, H), b = b_hh (3H,); writes
    out (B, H)."""
    batch, hidden = out.shape
    gh = np.empty_like(gi)
    _gemv_rows(w, h, gh)
    scratch = np.empty((6, hidden), dtype=out.dtype)  # r, z, n, W_hn h + b_hn, a, c
    bits = np.empty(hidden, dtype=np.int64)
    for i in range(batch):
        out[i] = h[i]
        _gates_after(gi[i], gh[i], b, out[i], scratch[0], scratch[1], scratch[2],
                     scratch[3], out[i], scratch[4], scratch[5], bits)


@_jit(boundscheck=False)
def _step_before(gi, h, w, b, out):
    """One step of reset_after=False for inference; arguments as in ``_step_after``."""
    batch, hidden = out.shape
    gh = np.empty((batch, 2 * hidden), dtype=out.dtype)
    _gemv_rows(w[: 2 * hidden], h, gh)
    z, rh = np.empty((batch, hidden), dtype=out.dtype), np.empty((batch, hidden), out.dtype)
    scratch = np.empty((3, hidden), dtype=out.dtype)  # r (then n), a, c
    bits = np.empty(hidden, dtype=np.int64)
    for i in range(batch):
        _rz_before(gi[i], gh[i], b, h[i], scratch[0], z[i], rh[i], scratch[1], scratch[2],
                   bits)
    ghn = np.empty((batch, hidden), dtype=out.dtype)
    _gemv_rows(w[2 * hidden :], rh, ghn)
    for i in range(batch):
        out[i] = h[i]
        _n_before(gi[i], ghn[i], b, z[i], out[i], scratch[0], out[i], scratch[1], bits)


@_jit(boundscheck=False)
def _bwd_after(dout, h0, out, r_s, z_s, n_s, ghn_s, w, lengths, dgi, dgh):
    """Reverse recurrence, reset_after=True. w = W_hh (3H, H). Writes dgi = ∂L/∂gi and
    dgh = ∂L/∂(W_hh h + b_hh) per step; returns ∂L/∂h0."""
    steps, batch, hidden = out.shape
    dh = np.zeros((batch, hidden), dtype=h0.dtype)
    carry = np.empty((batch, hidden), dtype=h0.dtype)
    for t in range(steps - 1, -1, -1):
        for i in range(batch):
            if t >= lengths[i]:
                dgi[t, i] = 0.0
                dgh[t, i] = 0.0
                continue
            for j in range(hidden):
                d = dout[t, i, j] + dh[i, j]
                h_prev = out[t - 1, i, j] if t > 0 else h0[i, j]
                r, z, n = r_s[t, i, j], z_s[t, i, j], n_s[t, i, j]
                dn = d * (1.0 - z) * (1.0 - n * n)
                dz = d * (h_prev - n) * z * (1.0 - z)
                dr = dn * ghn_s[t, i, j] * r * (1.0 - r)
                dgi[t, i, j] = dr
                dgi[t, i, hidden + j] = dz
                dgi[t, i, 2 * hidden + j] = dn
                dgh[t, i, j] = dr
                dgh[t, i, hidden + j] = dz
                dgh[t, i, 2 * hidden + j] = dn * r
                dh[i, j] = d * z
        _matmul(dgh[t], w, carry)
        for i in range(batch):
            if t < lengths[i]:
                for j in range(hidden):
                    dh[i, j] += carry[i, j]
    return dh


@_jit(boundscheck=False)
def _bwd_before(dout, h0, out, r_s, z_s, n_s, w_rz, w_n, lengths, dgi):
    """Reverse recurrence, reset_after=False. w_rz = W_hr,z (2H, H); w_n = W_hn (H, H).
    Writes dgi = [dr, dz, dn] (the gradients of the r, z, n pre-activations); returns
    ∂L/∂h0."""
    steps, batch, hidden = out.shape
    dh = np.zeros((batch, hidden), dtype=h0.dtype)
    dn_t = np.zeros((batch, hidden), dtype=h0.dtype)
    drz_t = np.zeros((batch, 2 * hidden), dtype=h0.dtype)
    d_rh = np.empty((batch, hidden), dtype=h0.dtype)
    carry = np.empty((batch, hidden), dtype=h0.dtype)
    for t in range(steps - 1, -1, -1):
        for i in range(batch):
            valid = t < lengths[i]
            for j in range(hidden):
                if not valid:
                    dn_t[i, j] = 0.0
                    continue
                d = dout[t, i, j] + dh[i, j]
                h_prev = out[t - 1, i, j] if t > 0 else h0[i, j]
                z, n = z_s[t, i, j], n_s[t, i, j]
                dn_t[i, j] = d * (1.0 - z) * (1.0 - n * n)
                drz_t[i, hidden + j] = d * (h_prev - n) * z * (1.0 - z)
                dh[i, j] = d * z
        _matmul(dn_t, w_n, d_rh)
        for i in range(batch):
            if t >= lengths[i]:
                dgi[t, i] = 0.0
                drz_t[i] = 0.0
                continue
            for j in range(hidden):
                h_prev = out[t - 1, i, j] if t > 0 else h0[i, j]
                r = r_s[t, i, j]
                dr = d_rh[i, j] * h_prev * r * (1.0 - r)
                drz_t[i, j] = dr
                dgi[t, i, j] = dr
                dgi[t, i, hidden + j] = drz_t[i, hidden + j]
                dgi[t, i, 2 * hidden + j] = dn_t[i, j]
                dh[i, j] += r * d_rh[i, j]
        _matmul(drz_t, w_rz, carry)
        for i in range(batch):
            if t < lengths[i]:
                for j in range(hidden):
                    dh[i, j] += carry[i, j]
    return dh


# ---- launchers ---------------------------------------------------------------------------

def _np(x: Tensor) -> np.ndarray:
    return x.detach().contiguous().numpy()


def _weights(w_hh: Tensor, reset_after: bool) -> list[np.ndarray]:
    """W_hh in the layout the forward kernel reads: transposed, once per call. (Not cached
    across calls: an in-place change through ``.data`` would not show in any key.)"""
    w = w_hh.detach()
    hidden = w.shape[1]
    if reset_after:
        return [_np(w.t())]
    return [_np(w[: 2 * hidden].t()), _np(w[2 * hidden :].t())]


def _step(gi, h0, w_hh, b_hh, reset_after):
    """One step for inference, W_hh read in place: gi (1, B, 3H), h0 (B, H) → out
    (1, B, H)."""
    out = torch.empty(1, *h0.shape, dtype=gi.dtype)
    o = out.numpy()[0]
    bias = _np(b_hh) if b_hh is not None else np.zeros(gi.shape[-1], dtype=o.dtype)
    (_step_after if reset_after else _step_before)(_np(gi[0]), _np(h0), _np(w_hh), bias, o)
    return out


def _fwd(gi, h0, w_hh, b_hh, lengths, reset_after, save):
    """Run the forward kernel; returns out and, with ``save``, what backward needs."""
    steps, batch, _ = gi.shape
    hidden = h0.shape[-1]
    out = torch.empty(steps, batch, hidden, dtype=gi.dtype)
    kept = steps if save else 1
    saved = [torch.empty(kept, batch, hidden, dtype=gi.dtype) for _ in range(3 + reset_after)]
    args = [_np(gi), _np(h0), *_weights(w_hh, reset_after), _np(b_hh), lengths.numpy(),
            out.numpy(), *(t.numpy() for t in saved)]
    (_fwd_after if reset_after else _fwd_before)(*args)
    return out, saved


def _bwd(dout, h0, w_hh, out, saved, lengths, reset_after):
    """Run the backward kernel; returns dgi, dh0, dW_hh, db_hh."""
    steps, batch, hidden = out.shape
    dgi = torch.empty(steps, batch, 3 * hidden, dtype=out.dtype)
    h_prev = torch.cat([h0.unsqueeze(0), out[:-1]])  # (T, B, H)
    common = (_np(dout), _np(h0), out.numpy(), *(s.numpy() for s in saved[:3]))
    if reset_after:
        dgh = torch.empty_like(dgi)
        dh0 = _bwd_after(*common, saved[3].numpy(), _np(w_hh), lengths.numpy(), dgi.numpy(),
                         dgh.numpy())
        dw_hh = dgh.flatten(0, 1).t() @ h_prev.flatten(0, 1)
        db_hh = dgh.sum((0, 1))
    else:
        dh0 = _bwd_before(*common, _np(w_hh[: 2 * hidden]), _np(w_hh[2 * hidden :]),
                          lengths.numpy(), dgi.numpy())
        flat = dgi.flatten(0, 1)
        rh = (saved[0] * h_prev).flatten(0, 1)
        dw_hh = torch.cat([flat[:, : 2 * hidden].t() @ h_prev.flatten(0, 1),
                           flat[:, 2 * hidden :].t() @ rh])
        db_hh = flat.sum(0)
    return dgi, torch.from_numpy(dh0), dw_hh, db_hh


class _FusedGRU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gi, h0, w_hh, b_hh, lengths, reset_after):
        bias = b_hh if b_hh is not None else gi.new_zeros(gi.shape[-1])
        save = any(ctx.needs_input_grad[:4])
        out, saved = _fwd(gi, h0, w_hh, bias, lengths, reset_after, save)
        ctx.save_for_backward(h0, w_hh, out, lengths, *saved)
        ctx.reset_after, ctx.has_bias = reset_after, b_hh is not None
        return out

    @staticmethod
    def backward(ctx, dout):
        if torch.is_grad_enabled():  # create_graph=True: refuse, never a silent zero
            raise RuntimeError("backend 'cpu' has no double backward; use "
                               "backend='reference' for gradients of gradients")
        h0, w_hh, out, lengths, *saved = ctx.saved_tensors
        dgi, dh0, dw_hh, db_hh = _bwd(dout, h0, w_hh, out, saved, lengths, ctx.reset_after)
        return dgi, dh0, dw_hh, db_hh if ctx.has_bias else None, None, None


STEP_WORK = 1 << 19  # batch × weight elements up to which a step runs the dot-form GEMV


def step_fits(batch: int, weights: int) -> bool:
    """Whether one inference step of ``batch`` rows against ``weights`` weight elements
    should run the dot-form GEMV (``_gemv_rows``): at batch 1 always (it runs at the speed
    of reading the weights once), above while batch × weights ≤ STEP_WORK, where its cost
    per row stays under the fixed cost of torch's GEMM. Measured for the cell on 2 cores
    against torch.nn.GRUCell: faster up to batch 8 at I = H = 64, only at batch 1 at 256."""
    return batch <= 1 or batch * weights <= STEP_WORK


def core(gi: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor | None, lengths: Tensor | None,
         reset_after: bool) -> Tensor:
    """The recurrent core (see ``reference.core`` for the contract), fused on the CPU.

    gi (T, B, 3H), h0 (B, H), w_hh (3H, H), b_hh (3H,) or None, lengths (B,) or None;
    CPU tensors, float32 or float64. Returns out (T, B, H).
    """
    if h0.device.type != "cpu" or h0.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"backend 'cpu' runs float32/float64 CPU tensors, got {h0.dtype} "
                         f"on {h0.device}")
    if gi.dtype != h0.dtype:  # autocast made the input projection low precision
        gi = gi.to(h0.dtype)
    if gi.shape[0] == 1 and step_fits(gi.shape[1], w_hh.numel()) and not _needs_grad(
            gi, h0, w_hh, b_hh):
        return _step(gi, h0, w_hh, b_hh, reset_after)  # every length is 1
    if lengths is None:
        lengths = torch.full((gi.shape[1],), gi.shape[0], dtype=torch.int64)
    return _FusedGRU.apply(gi, h0, w_hh, b_hh, lengths.to(torch.int64).cpu(), reset_after)


def _needs_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd will want gradients of any of ``tensors``."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
