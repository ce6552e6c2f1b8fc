"""The backward kernel: the reverse recurrence, steps t_end - 1 down to t_begin, writing
the gates' gradients for the weight GEMMs that follow it (triton_gru.backward).
"""

from __future__ import annotations

from .exchange import _arrive, _barrier, _publish, _tile, _wait
from .lang import LANES, _jit, tl
from .products import (
    _chunked_gates,
    _chunked_tiles,
    _mm,
    _permuted_at,
    _resident_product,
    _resident_tiles_t,
)
from .stacked import _stacked_carry, _stacked_gradients, _stacked_tiles


@_jit
def _saved_step(dout, out, h0, r_s, z_s, n_s, ghn_s, t, B, H, own, m, ACC: tl.constexpr,
                RESET_AFTER: tl.constexpr):
    """What the backward reads at step t for this program's rows and units, (BB, S) each:
    dL/dout, the state before the step, r, z, n and (RESET_AFTER, else n again) W_hn h +
    b_hn."""
    at = tl.cast(t, tl.int64) * B * H + own
    d = tl.load(dout + at, mask=m, other=0.0).to(ACC)
    if t > 0:
        h_prev = tl.load(out + at - B * H, mask=m, other=0.0).to(ACC)
    else:
        h_prev = tl.load(h0 + own, mask=m, other=0.0).to(ACC)
    r = tl.load(r_s + at, mask=m, other=0.0)
    z = tl.load(z_s + at, mask=m, other=0.0)
    n = tl.load(n_s + at, mask=m, other=0.0)
    if RESET_AFTER:
        ghn = tl.load(ghn_s + at, mask=m, other=0.0)
    else:
        ghn = n
    return d, h_prev, r, z, n, ghn


@_jit
def _backward_kernel(dout, h0, out, wt, r_s, z_s, n_s, ghn_s, lengths, dgi, dgh, dh,
                     xbuf, sync, B, H, row0, t_begin, t_end,
                     BB: tl.constexpr, S: tl.constexpr, BK: tl.constexpr,
                     RESET_AFTER: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
                     ACC: tl.constexpr, RESIDENT: tl.constexpr, STAMPED: tl.constexpr,
                     KMAJOR: tl.constexpr = False, STACKED: tl.constexpr = False,
                     PREFETCH: tl.constexpr = False, NARROW: tl.constexpr = False,
                     CHUNKED: tl.constexpr = False, CHUNK: tl.constexpr = 32,
                     KW: tl.constexpr = 1, SI: tl.constexpr = 1,
                     PERMUTED: tl.constexpr = False, PAIR: tl.constexpr = False,
                     DGH_N: tl.constexpr = False, pair_rows=1, w_stride=0):
    """Steps t_end-1 down to t_begin of the reverse recurrence.

    dout, out, r_s, z_s, n_s, ghn_s (T, B, H); h0 (B, H); wt = W_hhᵀ (H, 3H); lengths (B,).
    Writes dgi (T, B, 3H) = ∂L/∂gi (rounded to dgi's dtype: the caller's 16 bits where
    the programs don't exchange through it) and, for reset_after=True, dgh (T, B, 3H) =
    ∂L/∂(W_hh h + b_hh), or with DGH_N its n block alone, (T, B, H) in its dtype (the
    others are dgi's: where the programs exchange elsewhere, and the weight GEMM takes
    dgi's dtype); dh (B, H) carries ∂L/∂h between launches (zero at t = T, ∂L/∂h0
    at the end). The programs share each step's gradients through dgh (dgi) after a
    barrier on sync, as in the forward kernel; or, STAMPED, through xbuf (2, B, 3H): int64
    words from _stamp, xbuf[t % 2] stamped t for step t, all stamped -1 at launch (as
    forward's, a stamp is the step itself, so launches over parts of T may share it).
    KMAJOR (resident broadcast tiles): through xbuf too, each half transposed, (3H, B),
    fp32 values after the barrier or stamped words, the products summed over K first.
    STACKED (``Config.stacked``): wt holds W_hhᵀ's TF32-rounded high parts, then (H, 3H)
    its low parts, for fp32 weights. PREFETCH (``Config.prefetch``): step t - 1's reads
    (_saved_step) are issued during step t, after its first exchange. NARROW
    (``Config.narrow``): the gradients are exchanged through xbuf (2, B, 3H) in W's 16-bit
    dtype, as dgh's rows (dgh is written in fp32 all the same). PERMUTED
    (``Config.permuted``, a chunked split's 5-axis tiles): the gradients are exchanged
    through xbuf (2, B, 3, BK), each gate's row of BK in _permuted_at's order (zeros past
    H, the caller's), read in the product's own layout (_permuted_block). PAIR
    (triton_gru.core_pair): the rows are a bidirectional layer's two directions side by
    side, pair_rows each (a whole number of tiles), and wt holds the second direction's
    after the first's, w_stride elements on: each tile takes its direction's.
    """
    if PAIR:  # (this tile's direction's weights)
        direction = (row0 + tl.program_id(1) * BB) // pair_rows
        wt += direction * w_stride
    rows, rmask, cols, cmask, m, own, lens = _tile(lengths, B, H, row0, BB, S)
    n_prog = tl.num_programs(0)
    sync += tl.program_id(1)
    carried = tl.load(dh + own, mask=m, other=0.0)
    # (W as the product needs it; the names a split doesn't use stand for W's pointer)
    w_hi, w_lo, v_r, v_z, v_n = wt, wt, wt, wt, wt
    if STACKED:
        w_hi, w_lo = _stacked_tiles(wt, H, BK, S, True)
    elif CHUNKED:
        v_r, v_z, v_n = _chunked_tiles(wt, cols, cmask, H, 3 * H, H, BK, CHUNK, KW,
                                        SI)
    elif RESIDENT:
        v_r, v_z, v_n = _resident_tiles_t(wt, cols, cmask, H, BK, DOT or KMAJOR)
    first = tl.zeros_like(lens) + t_begin  # (no read before the launch's first step; a
    # tensor: the interpreter's masks)
    if PREFETCH:
        p_d, p_h, p_r, p_z, p_n, p_g = _saved_step(dout, out, h0, r_s, z_s, n_s, ghn_s,
                                                   t_end - 1, B, H, own, m, ACC, RESET_AFTER)
    else:  # (unused)
        p_d, p_h, p_r, p_z, p_n, p_g = carried, carried, carried, carried, carried, carried
    for i in range(t_end - t_begin):
        d, z, r, d_rh, p_d, p_h, p_r, p_z, p_n, p_g = _backward_gates(
            dout, h0, out, r_s, z_s, n_s, ghn_s, dgi, dgh, xbuf, sync, n_prog, B, H, t_end,
            i, carried, p_d, p_h, p_r, p_z, p_n, p_g, first, rows, rmask, cols, cmask, m,
            own, lens, wt, w_hi, w_lo, v_r, v_z, v_n, BB, S, BK, RESET_AFTER, DOT,
            PREC, ACC, RESIDENT, STAMPED, KMAJOR, STACKED, PREFETCH, NARROW,
            CHUNKED, CHUNK, KW, SI, PERMUTED, DGH_N)
        carried = _backward_carry(
            dgi, dgh, xbuf, sync, n_prog, B, H, t_end, i, carried, d, z, r, d_rh, rows,
            rmask, cols, cmask, m, lens, wt, w_hi, w_lo, v_r, v_z, v_n, BB, S, BK,
            RESET_AFTER, DOT, PREC, ACC, RESIDENT, STAMPED, KMAJOR, STACKED, NARROW,
            CHUNKED, CHUNK, KW, SI, PERMUTED)
    tl.store(dh + own, carried, mask=m)


@_jit
def _gradient_blocks(dgi, dgh, xbuf, t, B, H, rows, cols, RESET_AFTER: tl.constexpr,
                     XBUF: tl.constexpr, KMAJOR: tl.constexpr, PERMUTED: tl.constexpr,
                     BK: tl.constexpr, KW: tl.constexpr, CHUNK: tl.constexpr):
    """Where step t's whole gradients are read (_backward_carry) and this program's are
    published: an exchange buffer (stamped words, K-major, 16-bit or permuted) or dgh
    (dgi); gate g's block at a + g·gstep, its rows xstride apart, this program's part of
    it at xo."""
    if PERMUTED:  # (each gate's row BK values, in _permuted_at's order)
        a = xbuf + (t % 2) * B * 3 * BK
        xo = rows[:, None] * 3 * BK + _permuted_at(cols, BK // (KW * CHUNK), KW, CHUNK)[None, :]
        return a, BK, 3 * BK, xo
    elif XBUF:
        a = xbuf + (t % 2) * B * 3 * H
    elif RESET_AFTER:
        a = dgh + tl.cast(t, tl.int64) * B * 3 * H
    else:
        a = dgi + tl.cast(t, tl.int64) * B * 3 * H
    if KMAJOR:
        return a, H * B, B, cols[None, :] * B + rows[:, None]
    else:
        return a, H, 3 * H, rows[:, None] * 3 * H + cols[None, :]


@_jit
def _backward_gates(dout, h0, out, r_s, z_s, n_s, ghn_s, dgi, dgh, xbuf, sync, n_prog,
                    B, H, t_end, i, carried, p_d, p_h, p_r, p_z, p_n, p_g, first, rows, rmask,
                    cols, cmask, m, own, lens, wt, w_hi, w_lo, v_r, v_z, v_n,
                    BB: tl.constexpr, S: tl.constexpr, BK: tl.constexpr,
                    RESET_AFTER: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
                    ACC: tl.constexpr, RESIDENT: tl.constexpr, STAMPED: tl.constexpr,
                    KMAJOR: tl.constexpr, STACKED: tl.constexpr, PREFETCH: tl.constexpr,
                    NARROW: tl.constexpr, CHUNKED: tl.constexpr,
                    CHUNK: tl.constexpr, KW: tl.constexpr, SI: tl.constexpr,
                    PERMUTED: tl.constexpr, DGH_N: tl.constexpr):
    """Step t = t_end - 1 - i's first phase for the tile's rows ``rows`` (its counter
    ``sync``): the gates' gradients, stored and published, then an arrival without
    waiting (reset_before: after the n gate's exchange, which it waits for). Returns
    what _backward_carry needs (dL/dh + carried, z, r and ∂L/∂(r ⊙ h)) and, with
    PREFETCH, step t - 1's reads (else p_* as given)."""
    t = t_end - 1 - i
    ok = m & (t < lens)[:, None]
    if PREFETCH:
        d, h_prev, r, z, n, ghn = p_d, p_h, p_r, p_z, p_n, p_g
    else:
        d, h_prev, r, z, n, ghn = _saved_step(dout, out, h0, r_s, z_s, n_s, ghn_s, t, B, H,
                                              own, m, ACC, RESET_AFTER)
    d += carried
    dn = tl.where(ok, d * (1.0 - z) * (1.0 - n * n), 0.0)
    dz = tl.where(ok, d * (h_prev - n) * z * (1.0 - z), 0.0)
    own3 = rows[:, None] * 3 * H + cols[None, :]
    g3 = tl.cast(t, tl.int64) * B * 3 * H
    # (the gradients exchanged in xbuf)
    XBUF: tl.constexpr = STAMPED or KMAJOR or NARROW or PERMUTED
    a, gstep, xstride, xo = _gradient_blocks(dgi, dgh, xbuf, t, B, H, rows, cols,
                                             RESET_AFTER, XBUF, KMAJOR, PERMUTED, BK, KW,
                                             CHUNK)
    if RESET_AFTER:
        dr = dn * ghn * r * (1.0 - r)
        if XBUF:  # (published first: the others wait for them)
            _publish(a + xo, dr, m, t, STAMPED)
            _publish(a + xo + gstep, dz, m, t, STAMPED)
            _publish(a + xo + 2 * gstep, dn * r, m, t, STAMPED)
        tl.store(dgi + g3 + own3, dr, mask=m)
        tl.store(dgi + g3 + own3 + H, dz, mask=m)
        tl.store(dgi + g3 + own3 + 2 * H, dn, mask=m)
        if DGH_N:  # (its r and z blocks are dgi's)
            tl.store(dgh + tl.cast(t, tl.int64) * B * H + own, dn * r, mask=m)
        else:
            tl.store(dgh + g3 + own3, dr, mask=m)
            tl.store(dgh + g3 + own3 + H, dz, mask=m)
            tl.store(dgh + g3 + own3 + 2 * H, dn * r, mask=m)
        d_rh = dn  # (unused)
    else:
        if XBUF:
            _publish(a + xo + 2 * gstep, dn, m, t, STAMPED)
        tl.store(dgi + g3 + own3 + H, dz, mask=m)
        tl.store(dgi + g3 + own3 + 2 * H, dn, mask=m)
        if not STAMPED:
            _barrier(sync, (2 * i + 1) * n_prog)
        if PREFETCH:  # (step t - 1's reads in flight through this step's products)
            p_d, p_h, p_r, p_z, p_n, p_g = _saved_step(
                dout, out, h0, r_s, z_s, n_s, ghn_s, t - 1, B, H, own,
                m & ((t - 1 < lens) & (t > first))[:, None], ACC, RESET_AFTER)
        if STACKED:  # (the n gate's block alone)
            d_rh = _stacked_carry(_stacked_gradients(a, gstep, rows, rmask, B, H,
                                                     xstride, t, BK, S, STAMPED, 4),
                                  w_hi, w_lo, S)
        elif RESIDENT:
            d_rh = _resident_product(a + 2 * gstep, rows, rmask, H, xstride, t, v_n, BK,
                                     STAMPED, KMAJOR, DOT, PREC, ACC, CHUNKED, PERMUTED)
        else:
            d_rh = _mm(a + 2 * H, 3 * H, rows, rmask, wt + 2 * H, 1, 3 * H, cols, cmask,
                       H, t, BB, S, BK, DOT, PREC, ACC, STAMPED)
        dr = tl.where(ok, d_rh * h_prev * r * (1.0 - r), 0.0)
        if XBUF:
            _publish(a + xo, dr, m, t, STAMPED)
            _publish(a + xo + gstep, dz, m, t, STAMPED)
        tl.store(dgi + g3 + own3, dr, mask=m)
    if not STAMPED:
        _arrive(sync)
    if PREFETCH and RESET_AFTER:  # (step t - 1's reads in flight through this step's
        # product; reset_before: issued after its first exchange, above)
        p_d, p_h, p_r, p_z, p_n, p_g = _saved_step(
            dout, out, h0, r_s, z_s, n_s, ghn_s, t - 1, B, H, own,
            m & ((t - 1 < lens) & (t > first))[:, None], ACC, RESET_AFTER)
    return d, z, r, d_rh, p_d, p_h, p_r, p_z, p_n, p_g


@_jit
def _backward_carry(dgi, dgh, xbuf, sync, n_prog, B, H, t_end, i, carried, d, z, r,
                    d_rh, rows, rmask, cols, cmask, m, lens, wt, w_hi, w_lo, v_r,
                    v_z, v_n, BB: tl.constexpr, S: tl.constexpr, BK: tl.constexpr,
                    RESET_AFTER: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
                    ACC: tl.constexpr, RESIDENT: tl.constexpr, STAMPED: tl.constexpr,
                    KMAJOR: tl.constexpr, STACKED: tl.constexpr, NARROW: tl.constexpr,
                    CHUNKED: tl.constexpr, CHUNK: tl.constexpr,
                    KW: tl.constexpr, SI: tl.constexpr, PERMUTED: tl.constexpr):
    """Step t = t_end - 1 - i's second phase (after _backward_gates): waits until every
    program has published the step's gradients, multiplies them by W_hh for this
    program's units and returns dL/dh before the step (carried where the step is past a
    row's length)."""
    t = t_end - 1 - i
    ok = m & (t < lens)[:, None]
    XBUF: tl.constexpr = STAMPED or KMAJOR or NARROW or PERMUTED
    # (chunked 5-axis tiles, Config.unit_lanes or thread_units: the gates summed at once)
    SHAPED: tl.constexpr = CHUNKED and (KW > 1 or CHUNK != LANES or SI > 1)
    a, gstep, xstride, xo = _gradient_blocks(dgi, dgh, xbuf, t, B, H, rows, cols,
                                             RESET_AFTER, XBUF, KMAJOR, PERMUTED, BK, KW,
                                             CHUNK)
    if not STAMPED:
        _wait(sync, (i + 1) * (1 + (not RESET_AFTER)) * n_prog)
    if RESET_AFTER:
        if STACKED:
            carry = _stacked_carry(_stacked_gradients(a, gstep, rows, rmask, B, H,
                                                      xstride, t, BK, S, STAMPED, 7),
                                   w_hi, w_lo, S)
        elif SHAPED:
            carry = _chunked_gates(a, gstep, rows, rmask, H, xstride, t, v_r, v_z, v_n, BK,
                                   STAMPED, ACC, 3, PERMUTED)
        elif RESIDENT:
            carry = _resident_product(a, rows, rmask, H, xstride, t, v_r, BK, STAMPED,
                                      KMAJOR, DOT, PREC, ACC, CHUNKED)
            carry += _resident_product(a + gstep, rows, rmask, H, xstride, t, v_z, BK,
                                       STAMPED, KMAJOR, DOT, PREC, ACC, CHUNKED)
            carry += _resident_product(a + 2 * gstep, rows, rmask, H, xstride, t, v_n, BK,
                                       STAMPED, KMAJOR, DOT, PREC, ACC, CHUNKED)
        else:
            carry = _mm(a, 3 * H, rows, rmask, wt, 1, 3 * H, cols, cmask, 3 * H, t,
                        BB, S, BK, DOT, PREC, ACC, STAMPED)
    else:
        if STACKED:  # (r's and z's blocks)
            carry = r * d_rh + _stacked_carry(
                _stacked_gradients(a, gstep, rows, rmask, B, H, xstride, t, BK, S,
                                   STAMPED, 3), w_hi, w_lo, S)
        elif SHAPED:
            carry = r * d_rh + _chunked_gates(a, gstep, rows, rmask, H, xstride, t, v_r,
                                              v_z, v_z, BK, STAMPED, ACC, 2,
                                              PERMUTED)  # (r, z)
        elif RESIDENT:
            carry = r * d_rh + _resident_product(a, rows, rmask, H, xstride, t, v_r, BK,
                                                 STAMPED, KMAJOR, DOT, PREC, ACC, CHUNKED)
            carry += _resident_product(a + gstep, rows, rmask, H, xstride, t, v_z, BK,
                                       STAMPED, KMAJOR, DOT, PREC, ACC, CHUNKED)
        else:
            carry = r * d_rh + _mm(a, 3 * H, rows, rmask, wt, 1, 3 * H, cols, cmask,
                                   2 * H, t, BB, S, BK, DOT, PREC, ACC, STAMPED)
    return tl.where(ok, d * z + carry, carried)
