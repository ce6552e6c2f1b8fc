"""A few rows over several threads: each thread owns a range of the hidden units.

At batch 1 the rows cannot split over the threads (``cpu._parts``); the hidden units can
(``cpu._unit_parts`` decides where). Part p computes the rows of W_hh's three gates that
belong to its units (its share of the weights stays in its core's L2), the gates of its
units, and its slice of h_t. Every part needs all of h_{t−1}, so the parts meet once per
step (twice for reset_after=False, whose W_hn multiplies r ⊙ h): each publishes a step
counter (``_cpu_kernels._arrive``) and waits for the others' (``_meet``), spinning, with
no lock and no Python in the loop. Backward splits the same way: a part's units' gate
gradients need only its own units of ∂L/∂h_t, and its units of ∂L/∂h_{t−1} read every
unit's gate gradients through W_hhᵀ's rows for its units (transposed once per call). The
kernels take any number of rows, each with its own length.

Every array a part reads after a meeting is written once per call (out, the per-step
saved gates, dgi, dgh), or is written again only after a later meeting (r ⊙ h), so one
meeting per product is all the ordering there is.

Launch: ``tasks`` makes one task per part for ``cpu._together(..., at_once=True)``; where
the parts cannot all run at once (a team smaller than the parts, e.g. inside another
parallel region) none runs and the caller runs the one-part kernel instead. A part that
raises makes the others stop waiting (``_give_up``).
"""

from __future__ import annotations

import numpy as np

from ._cpu_kernels import (
    GATE_FLAGS,
    _arrive,
    _exp,
    _gemv_rows,
    _give_up,
    _jit,
    _meet,
)

# ---- gate math for a range of units ------------------------------------------------------
# One row's units u0 : u0 + n, each argument a 1-D view of its own (separate views
# vectorise; offsets into one array do not). gi and b are (3H,) rows, sliced here. The
# same formulas as the row helpers (``_cpu_kernels._gates_after`` ..., ``cpu._grad_after``
# ...), written again on purpose: the row kernels calling these per row measured 12-23%
# slower forward and up to 31% slower backward (B=16, H=128; more views per loop than
# LLVM checks for overlap before it vectorises), and the tests hold both to the reference.


@_jit(fastmath=GATE_FLAGS, boundscheck=False, inline="always")
def _units_after(gi, gh, b, h, out, r_s, z_s, n_s, ghn_s, u0, hidden):
    """reset_after=True for units u0 : u0 + n of one row: gh (3, n) this part's W_hh h
    (r, z, n rows); h (H,) h_{t−1}; writes out, r_s, z_s, n_s, ghn_s (H,) at the units."""
    n = gh.shape[1]
    one, two = h.dtype.type(1.0), h.dtype.type(2.0)
    u1, v0, w0 = u0 + n, hidden + u0, 2 * hidden + u0
    gi_r, gi_z, gi_n = gi[u0:u1], gi[v0 : v0 + n], gi[w0 : w0 + n]
    b_r, b_z, b_n = b[u0:u1], b[v0 : v0 + n], b[w0 : w0 + n]
    gh_r, gh_z, gh_n = gh[0], gh[1], gh[2]
    h_u, o_u, r_u, z_u, n_u, g_u = (h[u0:u1], out[u0:u1], r_s[u0:u1], z_s[u0:u1],
                                    n_s[u0:u1], ghn_s[u0:u1])
    for j in range(n):
        r = one / (one + _exp(-(gi_r[j] + gh_r[j] + b_r[j])))
        z = one / (one + _exp(-(gi_z[j] + gh_z[j] + b_z[j])))
        ghn = gh_n[j] + b_n[j]
        nn = one - two / (one + _exp(two * (gi_n[j] + r * ghn)))  # tanh
        r_u[j] = r
        z_u[j] = z
        n_u[j] = nn
        g_u[j] = ghn
        o_u[j] = (one - z) * nn + z * h_u[j]


@_jit(fastmath=GATE_FLAGS, boundscheck=False, inline="always")
def _units_rz_before(gi, gh, b, h, r_s, z_s, rh, u0, hidden):
    """reset_after=False, first half, units u0 : u0 + n: r and z from gh (2, n) this
    part's W_hr,z h; writes r_s, z_s and rh = r ⊙ h (H,) at the units."""
    n = gh.shape[1]
    one = h.dtype.type(1.0)
    u1, v0 = u0 + n, hidden + u0
    gi_r, gi_z, b_r, b_z = gi[u0:u1], gi[v0 : v0 + n], b[u0:u1], b[v0 : v0 + n]
    gh_r, gh_z = gh[0], gh[1]
    h_u, r_u, z_u, rh_u = h[u0:u1], r_s[u0:u1], z_s[u0:u1], rh[u0:u1]
    for j in range(n):
        r = one / (one + _exp(-(gi_r[j] + gh_r[j] + b_r[j])))
        r_u[j] = r
        z_u[j] = one / (one + _exp(-(gi_z[j] + gh_z[j] + b_z[j])))
        rh_u[j] = r * h_u[j]


@_jit(fastmath=GATE_FLAGS, boundscheck=False, inline="always")
def _units_n_before(gi, ghn, b, h, out, z_s, n_s, u0, hidden):
    """reset_after=False, second half, units u0 : u0 + n: n from ghn (n,) this part's
    W_hn (r ⊙ h); writes n_s and h_t to out (H,) at the units."""
    n = ghn.shape[0]
    one, two = h.dtype.type(1.0), h.dtype.type(2.0)
    u1, w0 = u0 + n, 2 * hidden + u0
    gi_n, b_n = gi[w0 : w0 + n], b[w0 : w0 + n]
    h_u, o_u, z_u, n_u = h[u0:u1], out[u0:u1], z_s[u0:u1], n_s[u0:u1]
    for j in range(n):
        nn = one - two / (one + _exp(two * (gi_n[j] + ghn[j] + b_n[j])))
        z = z_u[j]
        n_u[j] = nn
        o_u[j] = (one - z) * nn + z * h_u[j]


@_jit(fastmath=GATE_FLAGS, boundscheck=False, inline="always")
def _units_grad_after(dout, h, r_s, z_s, n_s, ghn_s, dh, dgi, dgh, u0, u1):
    """Reverse step of reset_after=True, units u0:u1: d = dout + dh; writes the units of
    dgi and dgh (3H,) and sets dh (H,) at the units to d ⊙ z (the caller adds dgh W_hh)."""
    hidden = h.shape[0]
    one = h.dtype.type(1.0)
    n, v0, w0 = u1 - u0, hidden + u0, 2 * hidden + u0
    g_r, g_z, g_n = dgi[u0:u1], dgi[v0 : v0 + n], dgi[w0 : w0 + n]
    e_r, e_z, e_n = dgh[u0:u1], dgh[v0 : v0 + n], dgh[w0 : w0 + n]
    d_u, h_u, r_u, z_u, n_u, c_u, dh_u = (dout[u0:u1], h[u0:u1], r_s[u0:u1], z_s[u0:u1],
                                          n_s[u0:u1], ghn_s[u0:u1], dh[u0:u1])
    for j in range(n):
        d = d_u[j] + dh_u[j]
        r, z, nn = r_u[j], z_u[j], n_u[j]
        dn = d * (one - z) * (one - nn * nn)
        dr = dn * c_u[j] * r * (one - r)
        dz = d * (h_u[j] - nn) * z * (one - z)
        g_r[j] = dr
        g_z[j] = dz
        g_n[j] = dn
        e_r[j] = dr
        e_z[j] = dz
        e_n[j] = dn * r
        dh_u[j] = d * z


@_jit(fastmath=GATE_FLAGS, boundscheck=False, inline="always")
def _units_grad_nz_before(dout, h, z_s, n_s, dh, dgi, u0, u1):
    """Reverse step of reset_after=False, first half, units u0:u1: dn and dz into dgi's
    n and z thirds (3H,); dh (H,) becomes d ⊙ z at the units."""
    hidden = h.shape[0]
    one = h.dtype.type(1.0)
    n, v0, w0 = u1 - u0, hidden + u0, 2 * hidden + u0
    g_z, g_n = dgi[v0 : v0 + n], dgi[w0 : w0 + n]
    d_u, h_u, z_u, n_u, dh_u = dout[u0:u1], h[u0:u1], z_s[u0:u1], n_s[u0:u1], dh[u0:u1]
    for j in range(n):
        d = d_u[j] + dh_u[j]
        z, nn = z_u[j], n_u[j]
        g_n[j] = d * (one - z) * (one - nn * nn)
        g_z[j] = d * (h_u[j] - nn) * z * (one - z)
        dh_u[j] = d * z


@_jit(fastmath=GATE_FLAGS, boundscheck=False, inline="always")
def _units_grad_r_before(h, r_s, d_rh, dh, dgi, u0, u1):
    """Reverse step of reset_after=False, second half, units u0:u1, from d_rh (n,) = the
    units of dn W_hn: dr into dgi's r third, r ⊙ d_rh added to dh (H,)."""
    one = h.dtype.type(1.0)
    g_r, h_u, r_u, dh_u = dgi[u0:u1], h[u0:u1], r_s[u0:u1], dh[u0:u1]
    for j in range(u1 - u0):
        r = r_u[j]
        g_r[j] = d_rh[j] * h_u[j] * r * (one - r)
        dh_u[j] += r * d_rh[j]


@_jit(boundscheck=False, inline="always")
def _units_add(dh, extra, u0):
    """dh[:, u0 : u0 + n] += extra (B, n)."""
    for i in range(extra.shape[0]):
        dh_i, extra_i = dh[i], extra[i]
        for j in range(extra.shape[1]):
            dh_i[u0 + j] += extra_i[j]


@_jit(boundscheck=False, inline="always")
def _units_zero_gates(row, u0, u1, hidden):
    """Zero units u0:u1 of each third of a (3H,) row."""
    for g in range(3):
        _units_zero(row, g * hidden + u0, g * hidden + u1)


@_jit(boundscheck=False, inline="always")
def _units_zero(row, u0, u1):
    """Zero units u0:u1 of an (H,) row (past the sequence's length)."""
    for j in range(u0, u1):
        row[j] = 0.0


# ---- kernels -----------------------------------------------------------------------------
# A few rows (B small): each step multiplies all rows (``_gemv_rows`` reads each weight
# once for two rows); rows past their length get zeros (forward) or no gradient.


@_jit(fastmath=GATE_FLAGS, boundscheck=False)
def _fwd_after(gi, h0, w, b, lengths, out, r_s, z_s, n_s, ghn_s, sync, part, parts, u0, u1):
    """reset_after=True, part ``part`` of ``parts`` owning units u0:u1. gi (T, B, 3H); h0
    (B, H); w = W_hh (3H, H) as stored; b (3H,); lengths (B,). Writes the units of out and
    of the saved r, z, n, W_hn h + b_hn (T, B, H; one step's worth: scratch, for
    inference), 0 past each length. Returns False when another part gave up."""
    steps, batch, hidden = out.shape
    keep = 1 if r_s.shape[0] == steps else 0
    gh = np.empty((batch, 3, u1 - u0), dtype=h0.dtype)
    rows = (w[u0:u1], w[hidden + u0 : hidden + u1], w[2 * hidden + u0 : 2 * hidden + u1])
    for t in range(min(steps, lengths.max())):
        if t > 0 and not _meet(sync, part, parts, t):  # all of h_{t−1} is written
            return False
        h, ts = (h0 if t == 0 else out[t - 1]), t * keep
        for g in range(3):
            _gemv_rows(rows[g], h, gh[:, g])
        for i in range(batch):
            if t < lengths[i]:
                _units_after(gi[t, i], gh[i], b, h[i], out[t, i], r_s[ts, i], z_s[ts, i],
                             n_s[ts, i], ghn_s[ts, i], u0, hidden)
            else:
                for row in (out[t, i], r_s[ts, i], z_s[ts, i], n_s[ts, i], ghn_s[ts, i]):
                    _units_zero(row, u0, u1)
        _arrive(sync, part, t + 1)
    for t in range(min(steps, lengths.max()), steps):
        ts = t * keep
        for i in range(batch):
            for row in (out[t, i], r_s[ts, i], z_s[ts, i], n_s[ts, i], ghn_s[ts, i]):
                _units_zero(row, u0, u1)
    return True


@_jit(fastmath=GATE_FLAGS, boundscheck=False)
def _fwd_before(gi, h0, w, b, lengths, out, r_s, z_s, n_s, rh, sync, part, parts, u0, u1):
    """reset_after=False, units u0:u1 (as ``_fwd_after``); w = W_hh (3H, H) as stored;
    rh (B, H), shared by the parts: r ⊙ h_{t−1}, which W_hn multiplies."""
    steps, batch, hidden = out.shape
    keep = 1 if r_s.shape[0] == steps else 0
    n = u1 - u0
    gh, ghn = np.empty((batch, 2, n), dtype=h0.dtype), np.empty((batch, n), dtype=h0.dtype)
    rows_rz = (w[u0:u1], w[hidden + u0 : hidden + u1])
    rows_n = w[2 * hidden + u0 : 2 * hidden + u1]
    for t in range(min(steps, lengths.max())):
        if t > 0 and not _meet(sync, part, parts, 2 * t):  # all of h_{t−1}
            return False
        h, ts = (h0 if t == 0 else out[t - 1]), t * keep
        for g in range(2):
            _gemv_rows(rows_rz[g], h, gh[:, g])
        for i in range(batch):
            _units_rz_before(gi[t, i], gh[i], b, h[i], r_s[ts, i], z_s[ts, i], rh[i], u0,
                             hidden)
        _arrive(sync, part, 2 * t + 1)
        if not _meet(sync, part, parts, 2 * t + 1):  # all of r ⊙ h_{t−1}
            return False
        _gemv_rows(rows_n, rh, ghn)
        for i in range(batch):
            if t < lengths[i]:
                _units_n_before(gi[t, i], ghn[i], b, h[i], out[t, i], z_s[ts, i],
                                n_s[ts, i], u0, hidden)
            else:
                for row in (out[t, i], r_s[ts, i], z_s[ts, i], n_s[ts, i]):
                    _units_zero(row, u0, u1)
        _arrive(sync, part, 2 * t + 2)
    for t in range(min(steps, lengths.max()), steps):
        ts = t * keep
        for i in range(batch):
            for row in (out[t, i], r_s[ts, i], z_s[ts, i], n_s[ts, i]):
                _units_zero(row, u0, u1)
    return True


@_jit(fastmath=GATE_FLAGS, boundscheck=False)
def _bwd_after(dout, h0, out, r_s, z_s, n_s, ghn_s, wt, lengths, dgi, dgh, dh0, sync, part,
               parts, u0, u1):
    """Reverse recurrence, reset_after=True, units u0:u1. wt = W_hhᵀ (H, 3H). Writes the
    units of dgi and dgh (T, B, 3H; 0 past each length) and of ∂L/∂h0 in dh0 (B, H), which
    must start at 0. Returns False when another part gave up."""
    steps, batch, hidden = out.shape
    rows, extra = wt[u0:u1], np.empty((batch, u1 - u0), dtype=h0.dtype)
    done = 0
    for t in range(steps - 1, -1, -1):
        h = h0 if t == 0 else out[t - 1]
        for i in range(batch):
            if t < lengths[i]:
                _units_grad_after(dout[t, i], h[i], r_s[t, i], z_s[t, i], n_s[t, i],
                                  ghn_s[t, i], dh0[i], dgi[t, i], dgh[t, i], u0, u1)
            else:  # past the length: no gradient, dh stays
                _units_zero_gates(dgi[t, i], u0, u1, hidden)
                _units_zero_gates(dgh[t, i], u0, u1, hidden)
        if t >= lengths.max():
            continue
        done += 1
        _arrive(sync, part, done)
        if not _meet(sync, part, parts, done):  # every unit's dgh at t
            return False
        _gemv_rows(rows, dgh[t], extra)
        _units_add(dh0, extra, u0)
    return True


@_jit(fastmath=GATE_FLAGS, boundscheck=False)
def _bwd_before(dout, h0, out, r_s, z_s, n_s, wt_rz, wt_n, lengths, dgi, dh0, sync, part,
                parts, u0, u1):
    """Reverse recurrence, reset_after=False, units u0:u1. wt_rz = W_hr,zᵀ (H, 2H), wt_n =
    W_hnᵀ (H, H). Writes the units of dgi = [dr, dz, dn] (T, B, 3H; 0 past each length)
    and of ∂L/∂h0 in dh0 (B, H), which must start at 0."""
    steps, batch, hidden = out.shape
    rows_rz, rows_n = wt_rz[u0:u1], wt_n[u0:u1]
    d_rh, extra = np.empty((batch, u1 - u0), dtype=h0.dtype), np.empty((batch, u1 - u0),
                                                                      h0.dtype)
    dn, drz = np.empty((batch, hidden), h0.dtype), np.empty((batch, 2 * hidden), h0.dtype)
    done = 0
    for t in range(steps - 1, -1, -1):
        h = h0 if t == 0 else out[t - 1]
        for i in range(batch):
            if t < lengths[i]:
                _units_grad_nz_before(dout[t, i], h[i], z_s[t, i], n_s[t, i], dh0[i],
                                      dgi[t, i], u0, u1)
            else:
                _units_zero_gates(dgi[t, i], u0, u1, hidden)
        if t >= lengths.max():
            continue
        _arrive(sync, part, done + 1)
        if not _meet(sync, part, parts, done + 1):  # every unit's dn at t
            return False
        dn[:] = dgi[t, :, 2 * hidden :]  # (contiguous rows: the dot products vectorise)
        _gemv_rows(rows_n, dn, d_rh)
        for i in range(batch):
            if t < lengths[i]:
                _units_grad_r_before(h[i], r_s[t, i], d_rh[i], dh0[i], dgi[t, i], u0, u1)
        done += 2
        _arrive(sync, part, done)
        if not _meet(sync, part, parts, done):  # every unit's dr (dz came before)
            return False
        drz[:] = dgi[t, :, : 2 * hidden]
        _gemv_rows(rows_rz, drz, extra)
        _units_add(dh0, extra, u0)
    return True


# ---- launch ------------------------------------------------------------------------------

UNIT_ALIGN = 16  # a part's units start at a multiple of this (64 bytes of float32)


def unit_ranges(hidden: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ranges (u0, u1) of the H units, as equal as UNIT_ALIGN allows
    (none empty: callers split only when hidden ≥ parts · UNIT_ALIGN)."""
    cuts = [0]
    for k in range(1, parts):
        cut = round(hidden * k / parts / UNIT_ALIGN) * UNIT_ALIGN
        cuts.append(min(max(cut, cuts[-1] + 1), hidden - (parts - k)))
    cuts.append(hidden)
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def sync_for(parts: int) -> np.ndarray:
    """A fresh meeting board for ``parts`` parts (``_cpu_kernels._meet``)."""
    return np.zeros(8 * (parts + 1), dtype=np.int64)


def tasks(kernel, args: tuple, hidden: int, parts: int) -> list:
    """One zero-argument task per part: ``kernel(*args, sync, part, parts, u0, u1)``; a
    part that raises tells the others to stop waiting first. A task returns the kernel's
    result (False: it stopped because another part gave up)."""
    sync = sync_for(parts)

    def task(part, u0, u1):
        def run():
            try:
                return kernel(*args, sync, part, parts, u0, u1)
            except BaseException:
                _give_up(sync, parts)
                raise
        return run

    return [task(p, u0, u1) for p, (u0, u1) in enumerate(unit_ranges(hidden, parts))]
