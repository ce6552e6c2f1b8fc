"""The fused CPU backend: the whole time loop of one layer-direction in one numba kernel,
forward and backward through time, both formulations, sequence lengths, float32/float64.

Per step, the hidden product at batch 1 is a product with W_hh as stored (a dot product
per row, or BLAS's GEMV for large H; nothing to transpose per call), except for small H,
where one pass over W_hhᵀ is faster; above batch 1 a BLAS GEMM on W_hhᵀ (torch's own
BLAS, called from the kernel; SciPy's if torch's is not found). A call's rows split over
torch's threads (``_parts``); at batch 1, from UNITS_MIN_HIDDEN units, its hidden units
do (``_cpu_units``). The gate math is one vectorised pass (the building blocks are in
``_cpu_kernels``). Inference skips autograd (``_infer``). Backward saves r, z, n (and
W_hn h + b_hn for reset_after=True), runs the reverse recurrence in one kernel and
computes the weight gradients as GEMMs over all steps afterwards. With SciPy's BLAS, from
``WIDE_WORK`` multiply-adds per step the loop runs in Python around torch's GEMM instead
(the wide path). A T=1 call for inference runs one step in ``cpu_step``. Kernels compile
on first use and are cached on disk.

Needs numba and SciPy (``pip install 'flashgru[cpu]'``); without them the backend reports
itself unavailable and flashgru works on the others. No double backward: use "reference".
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from . import _cpu_kernels, _cpu_units, cpu_step, reference
from ._cpu_kernels import (
    GATE_FLAGS,
    GEMV_BLAS_MIN,
    _exp,
    _gates_after,
    _gemv,
    _jit,
    _matmul,
    _matmul_add,
    _matvec,
    _n_before,
    _rz_before,
    _view,
    numba,
)


def missing() -> str | None:
    if numba is None:
        return "it needs numba and SciPy: pip install 'flashgru[cpu]'"
    return None


# ---- kernels -----------------------------------------------------------------------------

# The reverse steps, every row, each row one loop over H that LLVM vectorises, in the
# arrays' own precision (a float64 literal would promote float32 arithmetic). Arrays are
# the step's (B, ·) slices; h = h_{t−1}. Rows with t ≥ lengths[i] get 0 gradients. The
# r, z, n thirds of a (3H,) row are written through separate views, one per loop: stores
# to one array at offsets H apart do not vectorise (LLVM cannot rule out H < a vector).

@_jit(fastmath=GATE_FLAGS, boundscheck=False, inline="always")
def _grad_after(t, dout, h, r_s, z_s, n_s, ghn_s, lengths, dh, dgi, dgh):
    """Reverse step t, reset_after=True: d = dout + dh (B, H); writes dgi and dgh (B, 3H)
    and sets dh to the part of ∂L/∂h_{t−1} that is d ⊙ z (the caller adds dgh W_hh)."""
    batch, hidden = h.shape
    one = h.dtype.type(1.0)
    for i in range(batch):
        if t >= lengths[i]:
            dgi[i] = 0.0
            dgh[i] = 0.0
            continue
        g_r, g_z, g_n = dgi[i, :hidden], dgi[i, hidden : 2 * hidden], dgi[i, 2 * hidden :]
        d_out, h_i, r_i, z_i, n_i, ghn_i, dh_i = (dout[i], h[i], r_s[i], z_s[i], n_s[i],
                                                  ghn_s[i], dh[i])
        for j in range(hidden):
            d = d_out[j] + dh_i[j]
            r, z, n = r_i[j], z_i[j], n_i[j]
            dn = d * (one - z) * (one - n * n)
            g_r[j] = dn * ghn_i[j] * r * (one - r)
            g_z[j] = d * (h_i[j] - n) * z * (one - z)
            g_n[j] = dn
            dh_i[j] = d * z
        gh_rz, gh_n = dgh[i, : 2 * hidden], dgh[i, 2 * hidden :]
        g_rz = dgi[i, : 2 * hidden]
        for j in range(2 * hidden):  # (a loop: numba's slice assignment is slower)
            gh_rz[j] = g_rz[j]
        for j in range(hidden):
            gh_n[j] = g_n[j] * r_i[j]


@_jit(fastmath=GATE_FLAGS, boundscheck=False, inline="always")
def _grad_nz_before(t, dout, h, z_s, n_s, lengths, dh, dn_t, drz_t):
    """Reverse step t, reset_after=False, first half: dn_t (B, H) and dz into drz_t[:, H:]
    (0 past a length); dh becomes d ⊙ z (the caller adds the rest)."""
    batch, hidden = h.shape
    one = h.dtype.type(1.0)
    for i in range(batch):
        if t >= lengths[i]:
            dn_t[i] = 0.0
            drz_t[i] = 0.0
            continue
        d_out, h_i, z_i, n_i, dh_i = dout[i], h[i], z_s[i], n_s[i], dh[i]
        dn_i, dz_i = dn_t[i], drz_t[i, hidden:]
        for j in range(hidden):
            d = d_out[j] + dh_i[j]
            z, n = z_i[j], n_i[j]
            dn_i[j] = d * (one - z) * (one - n * n)
            dz_i[j] = d * (h_i[j] - n) * z * (one - z)
            dh_i[j] = d * z


@_jit(fastmath=GATE_FLAGS, boundscheck=False, inline="always")
def _grad_r_before(t, h, r_s, lengths, d_rh, dn_t, drz_t, dh, dgi):
    """Reverse step t, reset_after=False, second half, from d_rh = dn_t W_hn (B, H): dr into
    drz_t[:, :H], dgi = [dr, dz, dn] (B, 3H) and r ⊙ d_rh added to dh."""
    batch, hidden = h.shape
    one = h.dtype.type(1.0)
    for i in range(batch):
        if t >= lengths[i]:
            dgi[i] = 0.0
            continue
        h_i, r_i, d_rh_i, dh_i, dr_i = h[i], r_s[i], d_rh[i], dh[i], drz_t[i, :hidden]
        for j in range(hidden):
            r = r_i[j]
            dr_i[j] = d_rh_i[j] * h_i[j] * r * (one - r)
            dh_i[j] += r * d_rh_i[j]
        g_rz, g_n, drz_i, dn_i = dgi[i, : 2 * hidden], dgi[i, 2 * hidden :], drz_t[i], dn_t[i]
        for j in range(2 * hidden):
            g_rz[j] = drz_i[j]
        for j in range(hidden):
            g_n[j] = dn_i[j]


# Step t of each pass for the rows lo:hi, slicing the whole (T, B, ·) arrays inside numba
# (cheaper than in Python): the wide path calls these once per step. ts is the index into
# the saved arrays (0 when only one step's worth is kept, for inference); h = h_{t−1}, gh,
# ghn, rh, dh, dn_t, drz_t and d_rh are the rows' own (hi − lo, ·) arrays.

@_jit(fastmath=GATE_FLAGS, boundscheck=False, inline="always")
def _rows_after(t, ts, gi, gh, b, h, lengths, out, r_s, z_s, n_s, ghn_s, lo, hi):
    _gates_after(t, gi[t][lo:hi], gh, b, h, lengths[lo:hi], out[t][lo:hi], r_s[ts][lo:hi],
                 z_s[ts][lo:hi], n_s[ts][lo:hi], ghn_s[ts][lo:hi])


@_jit(fastmath=GATE_FLAGS, boundscheck=False, inline="always")
def _rows_rz_before(t, ts, gi, gh, b, h, r_s, z_s, rh, lo, hi):
    _rz_before(gi[t][lo:hi], gh, b, h, r_s[ts][lo:hi], z_s[ts][lo:hi], rh)


@_jit(fastmath=GATE_FLAGS, boundscheck=False, inline="always")
def _rows_n_before(t, ts, gi, ghn, b, h, lengths, out, r_s, z_s, n_s, lo, hi):
    _n_before(t, gi[t][lo:hi], ghn, b, h, lengths[lo:hi], out[t][lo:hi], r_s[ts][lo:hi],
              z_s[ts][lo:hi], n_s[ts][lo:hi])


@_jit(fastmath=GATE_FLAGS, boundscheck=False, inline="always")
def _grad_rows_after(t, dout, h0, out, r_s, z_s, n_s, ghn_s, lengths, dh, dgi, dgh, lo, hi):
    h = (h0 if t == 0 else out[t - 1])[lo:hi]
    _grad_after(t, dout[t][lo:hi], h, r_s[t][lo:hi], z_s[t][lo:hi], n_s[t][lo:hi],
                ghn_s[t][lo:hi], lengths[lo:hi], dh, dgi[t][lo:hi], dgh[t][lo:hi])


@_jit(fastmath=GATE_FLAGS, boundscheck=False, inline="always")
def _grad_rows_nz_before(t, dout, h0, out, z_s, n_s, lengths, dh, dn_t, drz_t, lo, hi):
    h = (h0 if t == 0 else out[t - 1])[lo:hi]
    _grad_nz_before(t, dout[t][lo:hi], h, z_s[t][lo:hi], n_s[t][lo:hi], lengths[lo:hi], dh,
                    dn_t, drz_t)


@_jit(fastmath=GATE_FLAGS, boundscheck=False, inline="always")
def _grad_rows_r_before(t, h0, out, r_s, lengths, d_rh, dn_t, drz_t, dh, dgi, lo, hi):
    h = (h0 if t == 0 else out[t - 1])[lo:hi]
    _grad_r_before(t, h, r_s[t][lo:hi], lengths[lo:hi], d_rh, dn_t, drz_t, dh, dgi[t][lo:hi])


# ---- the fused loops ---------------------------------------------------------------------
# h_{t−1} is h0 or out[t − 1]: rows past their length read 0s there, and their results are
# not used. With lengths in decreasing order (a packed sequence's always are) the rows
# still running at step t are a prefix, and only they go through the hidden product.

@_jit(boundscheck=False)
def _live(lengths, t, ordered):
    """How many leading rows step t computes: with ``ordered`` (lengths decreasing), the
    rows whose length exceeds t; else all."""
    live = lengths.shape[0]
    if ordered:
        while live > 0 and lengths[live - 1] <= t:
            live -= 1
    return live


@_jit(boundscheck=False)
def _decreasing(lengths):
    for i in range(lengths.shape[0] - 1):
        if lengths[i] < lengths[i + 1]:
            return False
    return True


@_jit(boundscheck=False)
def _hidden_product(h, w, out, stored):
    """out (b, N) = h (b, K) times the weights ``w`` in the layout ``_weights`` gives:
    ``stored``, w (N, K) as stored (``_gemv``); else w (K, N) transposed (``_matmul``:
    BLAS's GEMM, which is slower on the stored layout, or one pass over w for one row)."""
    if stored:
        _gemv(w, h, out)
    else:
        _matmul(h, w, out)


@_jit(fastmath=GATE_FLAGS, boundscheck=False)
def _fwd_after(gi, h0, w, b, lengths, out, r_s, z_s, n_s, ghn_s, lo, hi):
    """reset_after=True, rows lo:hi (the others are another call's, maybe on another
    thread). gi (T, B, 3H); w = W_hh in ``_weights``' layout; b (3H,). Writes out and the
    saved r, z, n, W_hn h + b_hn (all (T, B, H), 0 past each length); saved arrays of one
    step (1, B, H) are scratch, for inference."""
    steps, batch, hidden = out.shape
    keep = 1 if r_s.shape[0] == steps else 0
    stored, ordered = w.shape[0] != hidden, _decreasing(lengths[lo:hi])  # (3H, H) or (H, 3H)
    if hi - lo == 1 and not stored:
        _fwd_after_row(gi, h0, w, b, lengths, out, r_s, z_s, n_s, ghn_s, lo)
        return
    gh = np.zeros((hi - lo, 3 * hidden), dtype=h0.dtype)
    for t in range(steps):
        h, live = (h0 if t == 0 else out[t - 1])[lo:hi], _live(lengths[lo:hi], t, ordered)
        _hidden_product(h[:live], w, gh[:live], stored)
        _rows_after(t, t * keep, gi, gh, b, h, lengths, out, r_s, z_s, n_s, ghn_s, lo, hi)


@_jit(fastmath=GATE_FLAGS, boundscheck=False, inline="always")
def _unit_after(gr, gz, gn, pr, pz, pn, b_r, b_z, b_n, h, one, two):
    """One unit of a reset_after=True step from its input parts gr, gz, gn, its hidden
    product's pr, pz, pn (no bias), b_hh's b_r, b_z, b_n and h_{t−1}: r, z, n, W_hn h + b_hn
    and h_t (``_gates_after``'s formulas)."""
    r = one / (one + _exp(-(gr + pr + b_r)))
    z = one / (one + _exp(-(gz + pz + b_z)))
    ghn = pn + b_n
    n = one - two / (one + _exp(two * (gn + r * ghn)))  # tanh
    return r, z, n, ghn, (one - z) * n + z * h


@_jit(fastmath=GATE_FLAGS, boundscheck=False)
def _fwd_after_row(gi, h0, w, b, lengths, out, r_s, z_s, n_s, ghn_s, row):
    """``_fwd_after`` for the one row ``row``, with W_hhᵀ (H, 3H): h_{t−1} in an array of
    its own, the step's h_t computed into another, then copied to ``out``, and for
    inference (saved arrays of one step, scratch) nothing else stored. The inference gate
    loop writes one array, so LLVM vectorises it without runtime alias checks: B=1, H=64,
    256 steps, 1.3-1.4x faster than the general loop (the two taking turns)."""
    steps, hidden = out.shape[0], out.shape[2]
    keep = r_s.shape[0] == steps
    one, two = h0.dtype.type(1.0), h0.dtype.type(2.0)
    h = h0[row:row + 1].copy()
    h_new = np.empty(hidden, dtype=h0.dtype)
    gh = np.zeros((1, 3 * hidden), dtype=h0.dtype)
    b_r, b_z, b_n = b[:hidden], b[hidden:2 * hidden], b[2 * hidden:]
    live = min(steps, max(lengths[row], 0))
    small = w.size < GEMV_BLAS_MIN
    for t in range(live):
        g, p, hp = gi[t, row], gh[0], h[0]
        if small:  # (_matmul's choice, without its 2-D views)
            _matvec(hp, w, p)
        else:
            _matmul(h, w, gh)
        g_r, g_z, g_n = g[:hidden], g[hidden:2 * hidden], g[2 * hidden:]
        p_r, p_z, p_n = p[:hidden], p[hidden:2 * hidden], p[2 * hidden:]
        if keep:
            r_t, z_t, n_t, ghn_t = r_s[t, row], z_s[t, row], n_s[t, row], ghn_s[t, row]
            for j in range(hidden):
                r_t[j], z_t[j], n_t[j], ghn_t[j], h_new[j] = _unit_after(
                    g_r[j], g_z[j], g_n[j], p_r[j], p_z[j], p_n[j], b_r[j], b_z[j], b_n[j],
                    hp[j], one, two)
        else:
            for j in range(hidden):
                h_new[j] = _unit_after(g_r[j], g_z[j], g_n[j], p_r[j], p_z[j], p_n[j], b_r[j],
                                       b_z[j], b_n[j], hp[j], one, two)[4]
        o = out[t, row]
        for j in range(hidden):
            hp[j] = h_new[j]
            o[j] = h_new[j]
    for t in range(live, steps):
        out[t, row] = 0.0
        ts = t if keep else 0
        r_s[ts, row] = 0.0
        z_s[ts, row] = 0.0
        n_s[ts, row] = 0.0
        ghn_s[ts, row] = 0.0


@_jit(boundscheck=False)
def _infer_row(gi_at, h0_at, w_hh_at, b_hh_at, out_at, steps, hidden, like):
    """Inference of one row of reset_after=True (``_fwd_after_row``) at raw addresses:
    gi (T, 1, 3H), h0 (1, H), w_hh (3H, H) as stored, transposed here, b_hh (3H,) or
    address 0 for none; writes out (T, 1, H). ``like``: a scalar of the dtype. (What
    ``_infer`` does around the kernel in Python — views, scratch, lengths, the transpose —
    cost ~30 µs a call, a tenth of B=1, H=64, T=256.)"""
    w = _view(w_hh_at, (3 * hidden, hidden), like)
    w_t = np.empty((hidden, 3 * hidden), dtype=w.dtype)
    for j in range(3 * hidden):
        for k in range(hidden):
            w_t[k, j] = w[j, k]
    if b_hh_at != 0:
        b = _view(b_hh_at, (3 * hidden,), like)
    else:
        b = np.zeros(3 * hidden, dtype=w.dtype)
    scratch = np.empty((1, 1, hidden), dtype=w.dtype)
    _fwd_after_row(_view(gi_at, (steps, 1, 3 * hidden), like), _view(h0_at, (1, hidden), like),
                   w_t, b, np.full(1, steps, dtype=np.int64),
                   _view(out_at, (steps, 1, hidden), like), scratch, scratch, scratch, scratch,
                   0)


@_jit(fastmath=GATE_FLAGS, boundscheck=False)
def _fwd_before(gi, h0, w_rz, w_n, b, lengths, out, r_s, z_s, n_s, lo, hi):
    """reset_after=False, rows lo:hi. w_rz = W_hr,z and w_n = W_hn in ``_weights``'
    layout. Saved arrays as in _fwd_after."""
    steps, batch, hidden = out.shape
    keep = 1 if r_s.shape[0] == steps else 0
    stored, ordered = w_rz.shape[0] != hidden, _decreasing(lengths[lo:hi])  # (2H, H)?
    gh = np.zeros((hi - lo, 2 * hidden), dtype=h0.dtype)
    rh = np.zeros((hi - lo, hidden), dtype=h0.dtype)
    ghn = np.zeros((hi - lo, hidden), dtype=h0.dtype)
    for t in range(steps):
        h, live = (h0 if t == 0 else out[t - 1])[lo:hi], _live(lengths[lo:hi], t, ordered)
        _hidden_product(h[:live], w_rz, gh[:live], stored)
        _rows_rz_before(t, t * keep, gi, gh, b, h, r_s, z_s, rh, lo, hi)
        _hidden_product(rh[:live], w_n, ghn[:live], stored)
        _rows_n_before(t, t * keep, gi, ghn, b, h, lengths, out, r_s, z_s, n_s, lo, hi)


@_jit(fastmath=GATE_FLAGS, boundscheck=False)
def _bwd_after(dout, h0, out, r_s, z_s, n_s, ghn_s, w, lengths, dgi, dgh, dh0, lo, hi):
    """Reverse recurrence, reset_after=True, rows lo:hi. w = W_hh (3H, H). Writes dgi =
    ∂L/∂gi and dgh = ∂L/∂(W_hh h + b_hh) per step, and ∂L/∂h0 to dh0 (B, H), which must
    start at 0."""
    steps, batch, hidden = out.shape
    ordered = _decreasing(lengths[lo:hi])
    dh = dh0[lo:hi]
    scratch = np.empty(hidden, dtype=h0.dtype)
    for t in range(steps - 1, -1, -1):
        _grad_rows_after(t, dout, h0, out, r_s, z_s, n_s, ghn_s, lengths, dh, dgi, dgh, lo, hi)
        live = _live(lengths[lo:hi], t, ordered)  # rows past their length have dgh = 0
        _matmul_add(dgh[t][lo : lo + live], w, dh[:live], scratch)  # dh = d ⊙ z + dgh W_hh


@_jit(fastmath=GATE_FLAGS, boundscheck=False)
def _bwd_before(dout, h0, out, r_s, z_s, n_s, w_rz, w_n, lengths, dgi, dh0, lo, hi):
    """Reverse recurrence, reset_after=False, rows lo:hi. w_rz = W_hr,z (2H, H); w_n =
    W_hn (H, H). Writes dgi = [dr, dz, dn] (the gradients of the r, z, n pre-activations)
    and ∂L/∂h0 to dh0 (B, H), which must start at 0."""
    steps, batch, hidden = out.shape
    ordered = _decreasing(lengths[lo:hi])
    dh = dh0[lo:hi]
    dn_t = np.zeros((hi - lo, hidden), dtype=h0.dtype)
    drz_t = np.zeros((hi - lo, 2 * hidden), dtype=h0.dtype)
    d_rh = np.zeros((hi - lo, hidden), dtype=h0.dtype)
    scratch = np.empty(hidden, dtype=h0.dtype)
    for t in range(steps - 1, -1, -1):
        live = _live(lengths[lo:hi], t, ordered)  # rows past their length: dn_t, drz_t = 0
        _grad_rows_nz_before(t, dout, h0, out, z_s, n_s, lengths, dh, dn_t, drz_t, lo, hi)
        _matmul(dn_t[:live], w_n, d_rh[:live])
        _grad_rows_r_before(t, h0, out, r_s, lengths, d_rh, dn_t, drz_t, dh, dgi, lo, hi)
        _matmul_add(drz_t[:live], w_rz, dh[:live], scratch)


# ---- the wide path: torch's GEMM per step, numba for the gates ---------------------------

# From this many multiply-adds per step of the hidden product the loop runs in Python
# around torch.mm: the measured crossover when the fused loop's GEMM is SciPy's BLAS. With
# torch's own BLAS inside the fused loop (``GEMM_FROM == "torch"``) the fused loop measured
# as fast or faster everywhere tried (B 16-256, H 128-1024; forward+backward 5-7% faster
# at B=64-128, H=256), so then never.
WIDE_WORK = 1 << 20 if getattr(_cpu_kernels, "GEMM_FROM", "scipy") == "scipy" else 1 << 62


def _fwd_wide(gi, h0, w_hh, b, lengths, out, saved, reset_after):
    """The forward loop in Python for large batches: each step's hidden product by
    torch.mm (its BLAS and threads, faster than SciPy's OpenBLAS here from WIDE_WORK on),
    the gates by the same numba row passes as the fused loop. Arguments as ``_fwd``'s
    kernels; ``out`` and ``saved`` are tensors."""
    steps, batch, hidden = out.shape
    keep = 1 if saved[0].shape[0] == steps else 0
    h0 = h0.detach().contiguous()
    states = [h0, *out[:-1]]  # h_{t−1} for each t, as tensors and as arrays
    states_n = [x.numpy() for x in states]
    out_n, saved_n = out.numpy(), [x.numpy() for x in saved]
    gi_n, b_n, len_n = _np(gi), _np(b), lengths.numpy()
    w = w_hh.detach()
    if reset_after:
        w_t, gh = w.t(), torch.empty(batch, 3 * hidden, dtype=h0.dtype)
        gh_n = gh.numpy()
        for t in range(steps):
            torch.mm(states[t], w_t, out=gh)
            _rows_after(t, t * keep, gi_n, gh_n, b_n, states_n[t], len_n, out_n, *saved_n,
                        0, batch)
        return
    w_rz_t, w_n_t = w[: 2 * hidden].t(), w[2 * hidden:].t()
    gh, ghn = torch.empty(batch, 2 * hidden, dtype=h0.dtype), torch.empty_like(h0)
    rh = torch.zeros_like(h0)
    gh_n, ghn_n, rh_n = gh.numpy(), ghn.numpy(), rh.numpy()
    for t in range(steps):
        torch.mm(states[t], w_rz_t, out=gh)
        _rows_rz_before(t, t * keep, gi_n, gh_n, b_n, states_n[t], *saved_n[:2], rh_n, 0,
                        batch)
        torch.mm(rh, w_n_t, out=ghn)
        _rows_n_before(t, t * keep, gi_n, ghn_n, b_n, states_n[t], len_n, out_n,
                       *saved_n[:3], 0, batch)


def _bwd_wide(dout, h0, w_hh, out, saved, lengths, dgi, dgh, reset_after):
    """The reverse loop in Python for large batches (see ``_fwd_wide``); returns dh0."""
    steps, batch, hidden = out.shape
    dh, carry = torch.zeros(batch, hidden, dtype=out.dtype), torch.empty(batch, hidden,
                                                                         dtype=out.dtype)
    dh_n = dh.numpy()
    common = (_np(dout), _np(h0), out.numpy())
    s_n = [x.numpy() for x in saved]
    len_n, dgi_n = lengths.numpy(), dgi.numpy()
    w = w_hh.detach()
    if reset_after:
        dgh_n = dgh.numpy()
        for t in range(steps - 1, -1, -1):
            _grad_rows_after(t, *common, *s_n[:4], len_n, dh_n, dgi_n, dgh_n, 0, batch)
            torch.mm(dgh[t], w, out=carry)
            dh += carry
        return dh
    w_rz, w_n = w[: 2 * hidden], w[2 * hidden:]
    dn_t, drz_t = torch.zeros(batch, hidden, dtype=out.dtype), torch.zeros(
        batch, 2 * hidden, dtype=out.dtype)
    d_rh = torch.empty_like(dn_t)
    dn_n, drz_n, d_rh_n = dn_t.numpy(), drz_t.numpy(), d_rh.numpy()
    for t in range(steps - 1, -1, -1):
        _grad_rows_nz_before(t, *common, s_n[1], s_n[2], len_n, dh_n, dn_n, drz_n, 0,
                             batch)
        torch.mm(dn_t, w_n, out=d_rh)
        _grad_rows_r_before(t, common[1], common[2], s_n[0], len_n, d_rh_n, dn_n, drz_n,
                            dh_n, dgi_n, 0, batch)
        torch.mm(drz_t, w_rz, out=carry)
        dh += carry
    return dh


# ---- threads over the batch ---------------------------------------------------------------
# The rows of a batch do not meet in the recurrence, forward or backward, so a call splits
# its batch into contiguous parts of about equal work, one time loop per part, each on a
# thread of torch's own OpenMP team (GOMP_parallel in the libgomp torch loaded), with
# MKL's GEMM single-threaded inside: no synchronisation per step, and the gate passes run
# on every core too. Forward at B=16, T=256, H=128 on the 2-core machine: the loop 4.1 ->
# 2.35 ms (MKL's own two threads on one 16×128 by 128×384 product per step spent more time
# meeting than multiplying). torch's team, not threads of our own: its threads spin for a
# while after each of torch's parallel ops (the input projection just before), and a
# thread of ours beside a spinning one ran no faster than one thread (6.5 ms, against
# 4.1 with the team). Where torch's libgomp or MKL's per-thread control is not found, in
# a forked child (GNU OpenMP's team does not survive fork: torch's own matmul hangs there)
# or with torch set to one thread, a call runs in one part.

def _torch_library(name: str) -> ctypes.CDLL:
    """One of the shared libraries in torch's wheel (OSError when it is not there)."""
    return ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", name))


def _find_openmp():
    """(GOMP_parallel, omp_get_thread_num, omp_get_num_threads, callback type) from the
    libgomp torch runs on, or None. Where torch's wheel ships GNU OpenMP, the library is
    opened by its soname: the loader then hands back the copy already loaded, the one
    torch's own ops use even if another package loaded its libgomp first."""
    if not os.path.exists(os.path.join(os.path.dirname(torch.__file__), "lib",
                                       "libgomp.so.1")):
        return None
    try:
        lib = ctypes.CDLL("libgomp.so.1")
        parallel, thread, threads = (lib.GOMP_parallel, lib.omp_get_thread_num,
                                     lib.omp_get_num_threads)
    except (OSError, AttributeError):
        return None
    callback = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
    parallel.argtypes = [callback, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    parallel.restype = None
    thread.restype = threads.restype = ctypes.c_int
    return parallel, thread, threads, callback


def _mkl_local_threads():
    """MKL's C ``MKL_Set_Num_Threads_Local(n) -> previous`` from torch's own library, when
    the kernels' GEMM is torch's (``GEMM_FROM == "torch"``), else None."""
    if getattr(_cpu_kernels, "GEMM_FROM", None) != "torch":
        return None
    try:
        fn = _torch_library("libtorch_cpu.so").MKL_Set_Num_Threads_Local
    except (OSError, AttributeError):
        return None
    fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
    return fn


def _mkl_transposes() -> dict:
    """MKL's ``mkl_?omatcopy`` (C interface) from torch's library by dtype, or {}."""
    found = {}
    try:
        lib = _torch_library("libtorch_cpu.so")
        for dtype, name, real in ((torch.float32, "MKL_Somatcopy", ctypes.c_float),
                                  (torch.float64, "MKL_Domatcopy", ctypes.c_double)):
            fn = getattr(lib, name)
            fn.argtypes = [ctypes.c_char, ctypes.c_char, ctypes.c_size_t, ctypes.c_size_t,
                           real, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                           ctypes.c_size_t]
            fn.restype = None
            found[dtype] = fn
    except (OSError, AttributeError):
        return {}
    return found


_OPENMP = _find_openmp() if numba is not None else None
_MKL_LOCAL = _mkl_local_threads() if numba is not None else None
_MKL_TRANSPOSE = _mkl_transposes() if _MKL_LOCAL is not None else {}
_FORKED = False  # set in a forked child


def _parts(batch: int) -> int:
    """Into how many row ranges a call of ``batch`` rows splits: one per thread of torch's,
    at most one per row; 1 where the team or MKL's control is missing, or after fork."""
    if _OPENMP is None or _MKL_LOCAL is None or _FORKED:
        return 1
    return max(1, min(torch.get_num_threads(), batch))


# A call's rows split only from this many multiply-adds of the hidden product (steps ×
# batch × 3H²): a split call costs ~20-50 µs more to start, more than short calls gain.
# Measured (module, split against one part, forward / forward+backward): 6.3M (B=4, T=32;
# B=16, T=8, H=128) 0.90-0.96x / 0.91-0.96x; 12.6M 0.88-0.97x / 0.97-1.03x; 25M 0.84-1.10x
# / 0.97-1.10x; 100M (B=16, T=32, H=256) 1.02x / 1.19x.
SPLIT_MIN_WORK = 1 << 24


def _row_parts(batch: int, steps: int, hidden: int, parts: int | None) -> int:
    """``parts`` where the caller fixed it, else ``_parts(batch)`` from SPLIT_MIN_WORK
    multiply-adds on, else 1."""
    if parts is not None:
        return parts
    return _parts(batch) if steps * batch * 3 * hidden * hidden >= SPLIT_MIN_WORK else 1


def _ranges(lengths: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous row ranges (lo, hi) of about equal work, the sum of their
    rows' lengths (sequences sorted by decreasing length put their long rows first)."""
    work = np.cumsum(np.maximum(lengths, 1))
    bounds = [0]
    for k in range(1, parts):
        cut = int(np.searchsorted(work, work[-1] * k / parts)) + 1
        bounds.append(min(max(cut, bounds[-1] + 1), len(lengths) - (parts - k)))
    bounds.append(len(lengths))
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _in_parts(run, ranges: list[tuple[int, int]]) -> None:
    """``run(lo, hi)`` for every range, at once (``_together``)."""
    _together([lambda lo=lo, hi=hi: run(lo, hi) for lo, hi in ranges])


def _run_parts(kernel, args: tuple, lengths: np.ndarray, parts: int | None) -> None:
    """``kernel(*args, lo, hi)`` over the batch in ``parts`` row ranges (default
    ``_parts(batch)``); one part is a plain call."""
    batch = len(lengths)
    parts = _parts(batch) if parts is None else parts
    if parts == 1:
        kernel(*args, 0, batch)
    else:
        _in_parts(lambda lo, hi: kernel(*args, lo, hi), _ranges(lengths, parts))


class NotAtOnce(RuntimeError):
    """``_together(..., at_once=True)`` could not run every task on a thread of its own;
    none of them ran."""


def _together(tasks: list, at_once: bool = False) -> list:
    """The results of the zero-argument callables ``tasks``, run at once: on torch's
    OpenMP team (this thread is its first member), MKL single-threaded in each; without
    it, the first here and the others on flashgru's worker threads. An exception in any
    task is raised here once every task has ended. With ``at_once`` (tasks that wait for
    each other) every task must get a thread of the team: where the team is missing or
    smaller, none runs and NotAtOnce is raised."""
    if len(tasks) == 1:
        return [tasks[0]()]
    results, errors = [None] * len(tasks), []
    if at_once and (_OPENMP is None or _FORKED):
        raise NotAtOnce("no OpenMP team")
    if _OPENMP is None or _FORKED:
        futures = [_workers().submit(task) for task in tasks[1:]]
        try:
            results[0] = tasks[0]()
        finally:
            for k, future in enumerate(futures, 1):
                results[k] = future.result()  # waits for it even when the first raised
        return results
    key = next(_JOB_KEYS)
    _JOBS[key] = tasks, results, errors, at_once
    try:
        _OPENMP[0](_MEMBER, key, len(tasks), 0)  # GOMP_parallel(fn, data, threads, flags)
    finally:
        del _JOBS[key]
    if errors:
        raise errors[0]
    return results


def _member(key) -> None:
    """One thread of the team in ``_together``: its share of job ``key``'s tasks. It
    keeps a Python thread state of its own from its first call on (ctypes would make and
    drop one per call: 10 µs of a 2-thread call's 34), and the ctypes callback calling it
    is made once (making it per call cost 10 µs more)."""
    _, thread, threads, _ = _OPENMP
    k, n = thread(), threads()  # the team may have fewer threads than tasks
    if k and threading.get_ident() not in _PINNED:
        ctypes.pythonapi.PyGILState_Ensure()  # never released: the state stays
        _PINNED.add(threading.get_ident())
    tasks, results, errors, at_once = _JOBS[key]
    if at_once and n < len(tasks):
        if k == 0:
            errors.append(NotAtOnce(f"a team of {n} threads for {len(tasks)} tasks"))
        return
    before = _MKL_LOCAL(1) if _MKL_LOCAL is not None else 0
    try:
        for i in range(k, len(tasks), n):
            results[i] = tasks[i]()
    except BaseException as e:  # (ctypes would print and drop it)
        errors.append(e)
    finally:
        if _MKL_LOCAL is not None:
            _MKL_LOCAL(before)


_JOBS, _JOB_KEYS, _PINNED = {}, itertools.count(1), set()
_MEMBER = _OPENMP[3](_member) if _OPENMP is not None else None


_WORKERS = None


def _workers() -> ThreadPoolExecutor:
    """flashgru's worker threads, where torch's OpenMP team is not at hand (made on first
    use, as many as the machine has cores but one)."""
    global _WORKERS
    if _WORKERS is None:
        _WORKERS = ThreadPoolExecutor(max(1, (os.cpu_count() or 2) - 1),
                                      thread_name_prefix="flashgru-cpu")
    return _WORKERS


def _after_fork_in_child() -> None:
    """The parent's worker threads and OpenMP team do not exist in a forked child: make
    new worker threads when needed, and run every call in one part."""
    global _WORKERS, _FORKED
    _WORKERS, _FORKED = None, True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ---- a few rows: the hidden units over the threads (``_cpu_units``) ----------------------
# From UNITS_MIN_HIDDEN units, a call of up to UNITS_MAX_BATCH rows splits its units over
# torch's threads. B=1, T=256, forward, 2 threads, against the one-part kernel in the same
# process: 1.02x at H=64, 1.43x at H=128, 1.71x at H=256, 1.48x at H=512 (kernels alone);
# the module 1.26-1.44x at H=256, forward and forward+backward. Above one row the rows
# split instead (T=128, forward / forward+backward, units against rows): B=2 1.01x /
# 0.99x at H=128, 1.11x / 0.96x at H=256; B=4 0.80x / 0.80x at H=128, 0.92x / 0.88x at
# H=256; B=8 0.69x / 0.71x at H=256. A split call costs ~20-50 µs more to start, so short
# calls stay on one thread (module at B=1, units against one thread, forward /
# forward+backward: T=32 0.99x / 0.90x at H=128, 1.10x / 0.96x at H=256; T=64 1.06x /
# 1.02x and 1.18x / 1.06x; T=128 1.11x / 1.09x and 1.30x / 1.14x; below T=32 0.76-0.98x).
UNITS_MIN_HIDDEN, UNITS_MAX_BATCH, UNITS_MIN_STEPS = 128, 1, 64
# At least this many units per part (so 2 parts at H=128, 4 at H=256 on a machine with
# the threads): a part's work per step has to outweigh its meeting (~0.2 µs); measured
# only with 2 threads.
UNITS_PER_PART = 64


def _unit_parts(batch: int, hidden: int, steps: int, parts: int | None) -> int:
    """Into how many unit ranges a call splits: up to UNITS_MAX_BATCH rows from
    UNITS_MIN_HIDDEN units and UNITS_MIN_STEPS steps, one per thread of torch's team (as
    ``_parts``) but at least UNITS_PER_PART units each; else, or where the caller fixed
    its ``parts``, 1."""
    if (batch > UNITS_MAX_BATCH or parts is not None or hidden < UNITS_MIN_HIDDEN
            or steps < UNITS_MIN_STEPS):
        return 1
    return _parts(hidden // UNITS_PER_PART)


def _run_units(kernel, args: tuple, hidden: int, parts: int) -> bool:
    """``kernel`` over ``parts`` unit ranges at once; False (nothing run) where the team
    cannot give every part a thread."""
    try:
        _together(_cpu_units.tasks(kernel, args, hidden, parts), at_once=True)
    except NotAtOnce:
        return False
    return True


def _fwd_units(gi, h0, w_hh, b, lengths, out, saved, reset_after, parts) -> bool:
    """The forward loop at batch 1 over ``parts`` unit ranges (arrays as ``_fwd``'s
    kernels take them, W_hh as stored); False where it could not run."""
    if reset_after:
        args, kernel = (gi, h0, w_hh, b, lengths, out, *saved), _cpu_units._fwd_after
    else:
        rh = torch.from_numpy(out).new_empty(h0.shape).numpy()  # shared by the parts
        args, kernel = (gi, h0, w_hh, b, lengths, out, *saved, rh), _cpu_units._fwd_before
    return _run_units(kernel, args, h0.shape[-1], parts)


def _bwd_units(common, saved, w_hh, lengths, dgi, dgh, dh0, reset_after, parts) -> bool:
    """The reverse recurrence at batch 1 over ``parts`` unit ranges (``common``: dout, h0,
    out, r, z, n as arrays); False where it could not run."""
    hidden = w_hh.shape[1]
    if reset_after:
        args = (*common, saved[3].numpy(), _transposed(w_hh.detach().contiguous()), lengths,
                dgi.numpy(), dgh.numpy(), dh0.numpy())
        kernel = _cpu_units._bwd_after
    else:
        w = w_hh.detach().contiguous()
        args = (*common, _transposed(w[: 2 * hidden]), _transposed(w[2 * hidden :]), lengths,
                dgi.numpy(), dh0.numpy())
        kernel = _cpu_units._bwd_before
    return _run_units(kernel, args, hidden, parts)


# ---- launchers ---------------------------------------------------------------------------

def _np(x: Tensor) -> np.ndarray:
    return x.detach().contiguous().numpy()


# At batch 1 up to this many weights (H ≤ 64), from BATCH1_TRANSPOSED_STEPS steps on, the
# forward reads W_hhᵀ, one pass over it per step: B=1, T=256 against onnxruntime's
# timings in the same process, 1.10-1.19x faster than the dot products on W_hh at H=64,
# 1.22x at H=32, even at H=96-128, slower at H=256 (where BLAS's GEMV on the stored
# layout runs). The transpose costs ~8 µs a call, ~40 steps' gain.
BATCH1_TRANSPOSED_MAX, BATCH1_TRANSPOSED_STEPS = 3 * 64 * 64, 64


def _weights(w_hh: Tensor, reset_after: bool, batch: int, steps: int) -> list[np.ndarray]:
    """W_hh in the layout the forward kernel reads (``_hidden_product``): as stored at
    batch 1 (but for small H and long calls), else transposed, once per call. (Not cached
    across calls: an in-place change through ``.data`` would not show in any key.)"""
    w = w_hh.detach().contiguous()
    hidden = w.shape[1]
    parts = [w] if reset_after else [w[: 2 * hidden], w[2 * hidden :]]
    stored = batch == 1 and (w.numel() > BATCH1_TRANSPOSED_MAX
                             or steps < BATCH1_TRANSPOSED_STEPS)
    return [part.numpy() if stored else _transposed(part) for part in parts]


def _transposed(w: Tensor) -> np.ndarray:
    """The C-contiguous transpose of a C-contiguous 2D float32/float64 tensor: MKL's
    out-of-place transpose where torch's library has it (H=256's 768×256: 30 against
    235 µs for torch's ``.t().contiguous()``, which strides across rows), else torch's."""
    rows, cols = w.shape
    out = torch.empty(cols, rows, dtype=w.dtype)
    copy = _MKL_TRANSPOSE.get(w.dtype)
    if copy is None or rows == 0 or cols == 0:
        out.copy_(w.t())
    else:
        copy(b"R", b"T", rows, cols, 1.0, w.data_ptr(), cols, out.data_ptr(), rows)
    return out.numpy()


def wide(batch: int, hidden: int) -> bool:
    """Whether a call takes the wide path (torch's GEMM per step): from WIDE_WORK
    multiply-adds per step on."""
    return batch * 3 * hidden * hidden >= WIDE_WORK


def _fwd(gi, h0, w_hh, b_hh, lengths, reset_after, save, parts=None):
    """Run the forward loop, in ``parts`` row ranges (default ``_parts(batch)``); returns
    out and, with ``save``, what backward needs."""
    steps, batch, _ = gi.shape
    hidden = h0.shape[-1]
    out = torch.empty(steps, batch, hidden, dtype=gi.dtype)
    kept = steps if save else 1
    saved = [torch.empty(kept, batch, hidden, dtype=gi.dtype) for _ in range(3 + reset_after)]
    if wide(batch, hidden):
        _fwd_wide(gi, h0, w_hh, b_hh, lengths, out, saved, reset_after)
        return out, saved
    lens = lengths.numpy()
    units = _unit_parts(batch, hidden, steps, parts)
    if units > 1 and _fwd_units(_np(gi), _np(h0), _np(w_hh), _np(b_hh), lens, out.numpy(),
                                [t.numpy() for t in saved], reset_after, units):
        return out, saved
    args = [_np(gi), _np(h0), *_weights(w_hh, reset_after, batch, steps), _np(b_hh), lens,
            out.numpy(), *(t.numpy() for t in saved)]
    kernel = _fwd_after if reset_after else _fwd_before
    _run_parts(kernel, args, lens, _row_parts(batch, steps, hidden, parts))
    return out, saved


@torch.autocast("cpu", enabled=False)
def _bwd(dout, h0, w_hh, out, saved, lengths, reset_after, parts=None):
    """Run the backward kernel (in ``parts`` row ranges, as ``_fwd``); returns dgi, dh0,
    dW_hh, db_hh. Its torch products stay in the weights' dtype when the backward runs
    inside autocast (which made the weight gradient's product bfloat16 and failed)."""
    steps, batch, hidden = out.shape
    dgi = torch.empty(steps, batch, 3 * hidden, dtype=out.dtype)
    common = (_np(dout), _np(h0), out.numpy(), *(s.numpy() for s in saved[:3]))
    dgh = torch.empty_like(dgi) if reset_after else None
    if wide(batch, hidden):
        dh0 = _bwd_wide(dout, h0, w_hh, out, saved, lengths, dgi, dgh, reset_after)
    else:
        dh0, lens = torch.zeros(batch, hidden, dtype=out.dtype), lengths.numpy()
        units = _unit_parts(batch, hidden, steps, parts)
        if not (units > 1 and _bwd_units(common, saved, w_hh, lens, dgi, dgh, dh0,
                                         reset_after, units)):
            _bwd_rows(common, saved, w_hh, lens, dgi, dgh, dh0, reset_after,
                      _row_parts(batch, steps, hidden, parts))
    rows = _running_rows(lengths, steps)
    if reset_after:
        db_hh = dgh.sum((0, 1))
        dw_hh = _times_previous(_rows_of(dgh, rows), h0, out, rows)
    else:
        h_prev = _previous_states(h0, out, rows)  # (n, H): h_{t−1} of each running row
        db_hh = dgi.sum((0, 1))
        flat = _rows_of(dgi, rows)
        rh = _rows_of(saved[0], rows) * h_prev
        dw_hh = torch.cat([flat[:, : 2 * hidden].t() @ h_prev, flat[:, 2 * hidden :].t() @ rh])
    return dgi, dh0, dw_hh, db_hh


def _bwd_rows(common, saved, w_hh, lens, dgi, dgh, dh0, reset_after, parts) -> None:
    """The reverse recurrence over the rows in ``parts`` ranges (``_bwd_units``'
    arguments, but the lengths as an array)."""
    hidden = w_hh.shape[1]
    if reset_after:
        args = (*common, saved[3].numpy(), _np(w_hh), lens, dgi.numpy(), dgh.numpy(),
                dh0.numpy())
        kernel = _bwd_after
    else:
        args = (*common, _np(w_hh[: 2 * hidden]), _np(w_hh[2 * hidden :]), lens,
                dgi.numpy(), dh0.numpy())
        kernel = _bwd_before
    _run_parts(kernel, args, lens, parts)


def _running_rows(lengths: Tensor, steps: int) -> Tensor | None:
    """The flat (T·B) indices of the steps within their sequence's length, when some are
    not (packed sequences: the weight gradients then multiply only these rows; 2.8× fewer
    at the surnames' batches), else None."""
    running = torch.arange(steps).unsqueeze(1) < lengths.unsqueeze(0)  # (T, B)
    return None if bool(running.all()) else running.flatten().nonzero().squeeze(1)


def _rows_of(x: Tensor, rows: Tensor | None) -> Tensor:
    """x (T, B, F) as (T·B, F), or only its ``rows``."""
    flat = x.flatten(0, 1)
    return flat if rows is None else flat.index_select(0, rows)


def _times_previous(g: Tensor, h0: Tensor, out: Tensor, rows: Tensor | None) -> Tensor:
    """Σ gᵀ h_{t−1} over the running rows, g (n, F) one row each in ``_rows_of`` order;
    returns (F, H). The first B rows are t = 0 (h0's); the others' states are read from
    ``out`` in place, without copying all the states into one array first."""
    batch = h0.shape[0]
    earlier = out[:-1].flatten(0, 1)
    later = earlier if rows is None else earlier.index_select(0, rows[batch:] - batch)
    return (g[batch:].t() @ later).addmm_(g[:batch].t(), h0.detach())


def _previous_states(h0: Tensor, out: Tensor, rows: Tensor | None) -> Tensor:
    """h_{t−1} for each flat row t·B + b of ``rows`` (all if None): h0[b] at t = 0, else
    out[t − 1, b]. Every sequence runs at t = 0, so the first B rows are h0's."""
    batch = h0.shape[0]
    earlier = out[:-1].flatten(0, 1)
    later = earlier if rows is None else earlier.index_select(0, rows[batch:] - batch)
    return torch.cat([h0.detach(), later])


class _FusedGRU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gi, h0, w_hh, b_hh, lengths, reset_after):
        bias = b_hh if b_hh is not None else gi.new_zeros(gi.shape[-1])
        save = any(ctx.needs_input_grad[:4])
        out, saved = _fwd(gi, h0, w_hh, bias, lengths, reset_after, save)
        ctx.save_for_backward(h0, w_hh, out, lengths, *saved)
        ctx.reset_after, ctx.has_bias = reset_after, b_hh is not None
        # a copy: the caller may change its output in place before the backward, as
        # torch.nn.GRU's callers may (a residual's `out += x`)
        return out.clone()

    @staticmethod
    def backward(ctx, dout):
        reference.refuse_other_backwards("cpu", dout)
        h0, w_hh, out, lengths, *saved = ctx.saved_tensors
        dgi, dh0, dw_hh, db_hh = _bwd(dout, h0, w_hh, out, saved, lengths, ctx.reset_after)
        return dgi, dh0, dw_hh, db_hh if ctx.has_bias else None, None, None


def _check(h0: Tensor) -> None:
    if h0.device.type != "cpu" or h0.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"backend 'cpu' runs float32/float64 CPU tensors, got {h0.dtype} "
                         f"on {h0.device}")


def core(gi: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor | None, lengths: Tensor | None,
         reset_after: bool) -> Tensor:
    """The recurrent core (see ``reference.core`` for the contract), fused on the CPU.

    gi (T, B, 3H), h0 (B, H), w_hh (3H, H), b_hh (3H,) or None, lengths (B,) or None;
    CPU tensors, float32 or float64. Returns out (T, B, H).
    """
    _check(h0)
    if gi.dtype != h0.dtype:  # autocast made the input projection low precision
        gi = gi.to(h0.dtype)
    if not _needs_grad(gi, h0, w_hh, b_hh):
        if gi.shape[0] == 1:  # every length is 1
            out = cpu_step.core_step(gi, h0, w_hh, b_hh, reset_after)
            if out is not None:
                return out
        return _infer(gi, h0, w_hh, b_hh, lengths, reset_after)
    if lengths is None:
        lengths = torch.full((gi.shape[1],), gi.shape[0], dtype=torch.int64)
    return _FusedGRU.apply(gi, h0, w_hh, b_hh, lengths.to(torch.int64).cpu(), reset_after)


# Both directions of a layer side by side, one per thread, where the batch does not split
# over the threads (batch 1, or no OpenMP team) and up to this batch: measured about even
# at B=64 (0.96-1.22x) and 12% slower over a whole `flashgru train surnames` run (batch 64,
# the worker thread competing with torch's own threads), against 1.2-1.7x at B=1-16;
# and from PAIR_MIN_STEPS steps: a side-by-side call costs ~20-50 µs more to start (B=1,
# side by side against one after the other, forward / forward+backward: H=64 T=8-32
# 0.66x / 0.66-0.72x, H=128 T=16 0.72x / 0.76x; H=64 T=64 0.98x / 1.18x, T=256 1.31x /
# 1.42x; H=128 T=64 1.03x / 1.13x, T=128 1.09x / 1.12x; H=256 T=128-256 0.85x / 1.02-1.03x,
# where one after the other splits each direction's units).
PAIR_MAX_BATCH, PAIR_MIN_STEPS = 16, 64


def pairs(batch: int, steps: int) -> bool:
    """Whether a bidirectional layer of ``batch`` rows and ``steps`` steps runs its
    directions side by side (not when torch is set to one thread)."""
    return (torch.get_num_threads() > 1 and _parts(batch) == 1 and batch <= PAIR_MAX_BATCH
            and steps >= PAIR_MIN_STEPS)


def core_pair(gi: tuple[Tensor, Tensor], h0: tuple[Tensor, Tensor],
              w_hh: tuple[Tensor, Tensor], b_hh: tuple[Tensor | None, Tensor | None],
              lengths: Tensor | None, reset_after: bool) -> tuple[Tensor, Tensor]:
    """The two directions of a bidirectional layer, each argument a pair as ``core`` takes
    it (the second direction's input already reversed). Where ``pairs(batch, steps)``, the two
    time loops run side by side, the second on a worker thread (the kernels release the
    GIL), forward and backward; else one after the other, each over the threads by rows.
    Returns the pair of outputs."""
    for x in h0:
        _check(x)
    gi = tuple(g if g.dtype == x.dtype else g.to(x.dtype) for g, x in zip(gi, h0, strict=True))
    steps, batch = gi[0].shape[:2]
    if not pairs(batch, steps):  # one after the other
        return tuple(core(*args, lengths, reset_after)
                     for args in zip(gi, h0, w_hh, b_hh, strict=True))
    if not any(_needs_grad(*args) for args in zip(gi, h0, w_hh, b_hh, strict=True)):
        return _side_by_side(*(lambda d=d: _infer(gi[d], h0[d], w_hh[d], b_hh[d], lengths,
                                                   reset_after, parts=1) for d in (0, 1)))
    if lengths is None:
        lengths = torch.full((gi[0].shape[1],), gi[0].shape[0], dtype=torch.int64)
    return _FusedPair.apply(*gi, *h0, *w_hh, *b_hh, lengths.to(torch.int64).cpu(),
                            reset_after)


def _side_by_side(first, second):
    """(first(), second()) at once (``_together``), no autograd recording in either."""
    def quietly(fn):
        def run():
            with torch.no_grad():
                return fn()
        return run

    return tuple(_together([quietly(first), quietly(second)]))


class _FusedPair(torch.autograd.Function):
    """``_FusedGRU`` for both directions of a layer, each pass run side by side (each
    direction in one part: the worker threads are the directions')."""

    @staticmethod
    def forward(ctx, gi0, gi1, h00, h01, w0, w1, b0, b1, lengths, reset_after):
        save = any(ctx.needs_input_grad[:8])
        biases = [b if b is not None else g.new_zeros(g.shape[-1])
                  for b, g in ((b0, gi0), (b1, gi1))]
        (out0, saved0), (out1, saved1) = _side_by_side(
            lambda: _fwd(gi0, h00, w0, biases[0], lengths, reset_after, save, parts=1),
            lambda: _fwd(gi1, h01, w1, biases[1], lengths, reset_after, save, parts=1))
        ctx.save_for_backward(h00, h01, w0, w1, out0, out1, lengths, *saved0, *saved1)
        ctx.reset_after, ctx.has_bias = reset_after, (b0 is not None, b1 is not None)
        return out0, out1

    @staticmethod
    def backward(ctx, dout0, dout1):
        reference.refuse_other_backwards("cpu", dout0, dout1)
        h00, h01, w0, w1, out0, out1, lengths, *saved = ctx.saved_tensors
        half = len(saved) // 2
        g0, g1 = _side_by_side(
            lambda: _bwd(dout0, h00, w0, out0, saved[:half], lengths, ctx.reset_after, 1),
            lambda: _bwd(dout1, h01, w1, out1, saved[half:], lengths, ctx.reset_after, 1))
        return (g0[0], g1[0], g0[1], g1[1], g0[2], g1[2],
                g0[3] if ctx.has_bias[0] else None, g1[3] if ctx.has_bias[1] else None,
                None, None)


def _infer(gi, h0, w_hh, b_hh, lengths, reset_after, parts=None) -> Tensor:
    """The forward loop for inference (in ``parts`` row ranges, as ``_fwd``): no autograd
    bookkeeping, numpy scratch for one step's gates (a short call's fixed cost is mostly
    this Python)."""
    steps, batch, _ = gi.shape
    hidden = h0.shape[-1]
    if batch == 1 and reset_after and lengths is None and parts in (None, 1):
        out = _infer_one(gi, h0, w_hh, b_hh, steps, hidden)
        if out is not None:
            return out
    gi_n = _np(gi)
    lens = (np.full(batch, steps, dtype=np.int64) if lengths is None
            else lengths.to(torch.int64).cpu().numpy())
    bias = np.zeros(3 * hidden, dtype=gi_n.dtype) if b_hh is None else _np(b_hh)
    if wide(batch, hidden):
        out, _ = _fwd(gi, h0, w_hh, torch.from_numpy(bias), torch.from_numpy(lens),
                      reset_after, save=False)
        return out
    out = torch.empty(steps, batch, hidden, dtype=gi.dtype)
    scratch = torch.empty(3 + reset_after, 1, batch, hidden, dtype=gi.dtype).numpy()
    units = _unit_parts(batch, hidden, steps, parts)  # (torch's scratch: 64-byte aligned rows)
    if units > 1 and _fwd_units(gi_n, _np(h0), _np(w_hh), bias, lens, out.numpy(),
                                list(scratch), reset_after, units):
        return out
    args = (gi_n, _np(h0), *_weights(w_hh, reset_after, batch, steps), bias, lens,
            out.numpy(),
            *scratch)
    kernel = _fwd_after if reset_after else _fwd_before
    _run_parts(kernel, args, lens, _row_parts(batch, steps, hidden, parts))
    return out


def _infer_one(gi: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor | None, steps: int,
               hidden: int) -> Tensor | None:
    """``_infer`` for one row of reset_after=True where the loop reads W_hhᵀ (``_weights``)
    and every tensor is plain and contiguous: one kernel call at raw addresses
    (``_infer_row``); else None."""
    dtype = gi.dtype
    like = cpu_step._LIKE.get(dtype)
    plain = cpu_step._plain
    if like is None or 3 * hidden * hidden > BATCH1_TRANSPOSED_MAX or \
            steps < BATCH1_TRANSPOSED_STEPS or not (
            plain(gi, dtype, (steps, 1, 3 * hidden)) and plain(h0, dtype, (1, hidden))
            and plain(w_hh, dtype, (3 * hidden, hidden))
            and (b_hh is None or plain(b_hh, dtype, (3 * hidden,)))):
        return None
    out = torch.empty(steps, 1, hidden, dtype=dtype)
    _infer_row(gi.data_ptr(), h0.data_ptr(), w_hh.data_ptr(),
               0 if b_hh is None else b_hh.data_ptr(), out.data_ptr(), steps, hidden, like)
    return out


def _needs_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd will want gradients of any of ``tensors``."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
