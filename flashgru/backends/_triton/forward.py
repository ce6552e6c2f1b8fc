"""The forward kernel: one launch runs steps [t_begin, t_end) of a layer-direction
(triton_gru's docstring has the design).
"""

from __future__ import annotations

from .exchange import _arrive, _barrier, _publish, _row_block, _tile, _wait
from .lang import _jit, tl
from .products import (
    _chunked_tiles,
    _hidden_product,
    _mm,
    _permuted_at,
    _permuted_products,
    _product,
    _product_k,
    _resident_product,
    _resident_tiles,
    _w_tile,
)
from .stacked import _stacked_product, _stacked_tiles


@_jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@_jit
def _step_input(gi, t, B, H, rows, cols, m, ACC: tl.constexpr):
    """Step t's input projections for this program's rows and units, (BB, S) per gate."""
    g = gi + tl.cast(t, tl.int64) * B * 3 * H + rows[:, None] * 3 * H + cols[None, :]
    return (tl.load(g, mask=m, other=0.0).to(ACC), tl.load(g + H, mask=m, other=0.0).to(ACC),
            tl.load(g + 2 * H, mask=m, other=0.0).to(ACC))


@_jit
def _input_tiles(w_ih, cols, cmask, H, IN, BKI: tl.constexpr, KN: tl.constexpr,
                 CHUNKED: tl.constexpr, CHUNK: tl.constexpr, KW: tl.constexpr,
                 SI: tl.constexpr):
    """PROJECT's W_ih (3H, IN) as three gate tiles over all of the input (BKI ≥ IN, zero past
    IN), laid as the split lays W_hh's (_chunked_tiles', or _resident_tiles' (K, S) where KN,
    else (S, K)), loaded once and kept in registers."""
    if CHUNKED:
        return _chunked_tiles(w_ih, cols, cmask, IN, IN, H * IN, BKI, CHUNK, KW, SI)
    else:
        ks = tl.arange(0, BKI)
        v, vmask = _w_tile(w_ih, ks, ks < IN, 1, cols, cmask, IN, KN)
        return (tl.load(v, mask=vmask, other=0.0), tl.load(v + H * IN, mask=vmask, other=0.0),
                tl.load(v + 2 * H * IN, mask=vmask, other=0.0))


@_jit
def _step_projection(x, t, B, IN, rows, live, wi_r, wi_z, wi_n, bi_r, bi_z, bi_n,
                     BKI: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
                     ACC: tl.constexpr, KMAJOR: tl.constexpr, CHUNKED: tl.constexpr,
                     PERMUTED_X: tl.constexpr):
    """PROJECT: step t's input projections x[t] W_ihᵀ + b_ih for this program's rows and
    units, (BB, S) per gate, on the resident tiles of _input_tiles; x (T, B, IN), or
    PERMUTED_X (T + 1, B, BKI), each row in _permuted_at's order (zeros past IN), read in
    the product's own layout, in two halves (_permuted_products; fp32 B=16, H=I=512, the
    exchange permuted too: 8 bytes spilled, against 72 with x read row-major through
    shared memory in two halves and 1.1 KB whole, ptxas, sm_90a). Rows not
    ``live`` read nothing (PERMUTED_X: row 0's, hence the step more); their gi is never
    used."""
    if PERMUTED_X:
        base = x + tl.cast(t, tl.int64) * B * BKI
        p_r, p_z, p_n = _permuted_products(base, rows, live, BKI, wi_r, wi_z, wi_n, ACC, 3)
        return p_r + bi_r, p_z + bi_z, p_n + bi_n
    ks = tl.arange(0, BKI)
    base = x + tl.cast(t, tl.int64) * B * IN
    if KMAJOR:  # (BKI, BB), as the K-major product takes its block
        block = tl.load(base + rows[None, :] * IN + ks[:, None],
                        mask=live[None, :] & (ks < IN)[:, None], other=0.0)
        return (_product_k(block, wi_r, ACC) + bi_r, _product_k(block, wi_z, ACC) + bi_z,
                _product_k(block, wi_n, ACC) + bi_n)
    else:
        block = tl.load(base + rows[:, None] * IN + ks[None, :],
                        mask=live[:, None] & (ks < IN)[None, :], other=0.0)
        return (_product(block, wi_r, DOT, PREC, ACC, CHUNKED) + bi_r,
                _product(block, wi_z, DOT, PREC, ACC, CHUNKED) + bi_z,
                _product(block, wi_n, DOT, PREC, ACC, CHUNKED) + bi_n)


@_jit
def _forward_kernel(gi, h0, w, b, lengths, out, hbuf, rhbuf, r_s, z_s, n_s, ghn_s,
                    sync, B, H, row0, t_begin, t_end,
                    BB: tl.constexpr, S: tl.constexpr, BK: tl.constexpr,
                    RESET_AFTER: tl.constexpr, SAVE: tl.constexpr,
                    DOT: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr,
                    RESIDENT: tl.constexpr, STAMPED: tl.constexpr,
                    KMAJOR: tl.constexpr = False, STACKED: tl.constexpr = False,
                    PREFETCH: tl.constexpr = False, NARROW: tl.constexpr = False,
                    CHUNKED: tl.constexpr = False, CHUNK: tl.constexpr = 32,
                    KW: tl.constexpr = 1, SI: tl.constexpr = 1,
                    PERMUTED: tl.constexpr = False, PAIR: tl.constexpr = False,
                    PROJECT: tl.constexpr = False, BKI: tl.constexpr = 1,
                    PERMUTED_X: tl.constexpr = False, pair_rows=1, w_stride=0, w_ih=0,
                    b_ih=0, IN=1):
    """Steps [t_begin, t_end) of one layer-direction.

    gi (T, B, 3H) input projections; h0 (B, H) the state before t_begin; w = W_hh (3H, H);
    b = b_hh (3H,); lengths (B,); out (T, B, H); hbuf (2, B, H) the state, hbuf[t % 2] = h
    before step t (fp32/fp64: the caller has written h0 to hbuf[t_begin % 2]; STAMPED: int64
    words from _stamp, all stamped -1 at launch; the caller passes (3, B, H) for
    reset_after=False); rhbuf (B, H) scratch for r ⊙ h (likewise; hbuf[2]);
    r_s, z_s, n_s, ghn_s (T, B, H) the saved gates (with SAVE); sync: one int32 counter per
    batch tile, zero at launch (unused with STAMPED: readers wait on the
    stamps instead of a barrier). KMAJOR (with RESIDENT, the broadcast product): hbuf and
    rhbuf hold each state transposed, (H, B), and the products are summed over their first
    axis. STACKED (``Config.stacked``): w holds W_hh's TF32-rounded high parts, then (3H, H)
    its low parts, for fp32 weights. PREFETCH (``Config.prefetch``): step t + 1's gi is
    loaded at the start of step t. NARROW (``Config.narrow``): the caller made hbuf W's
    16-bit dtype; the kernel is the same. PERMUTED (``Config.permuted``, a chunked split's
    5-axis tiles): hbuf and rhbuf hold each row of BK values in the order _permuted_at
    gives (the caller wrote h0 so, and zeros past H), and the products read them in their
    own layout (_permuted_block). PAIR (triton_gru.core_pair): the rows are a
    bidirectional layer's two directions side by side, pair_rows each (a whole number of
    tiles), and w and b hold the second direction's after the first's, w_stride and 3H
    elements on: each tile takes its direction's. PROJECT (triton_gru's ``project``): gi
    is the layer's input x (T, B, IN) instead, and the kernel makes each step's input
    projections itself, from W_ih (3H, IN) and b_ih (3H,) kept on chip (BKI ≥ IN): step
    t + 1's right after step t's arrival, while the other programs' arrivals come in
    (not with PREFETCH or PAIR); PERMUTED_X (a split that can be ``Config.permuted``): x
    given (T + 1, B, BKI), its rows in _permuted_at's order (_step_projection).
    """
    if PAIR:  # (this tile's direction's weights)
        direction = (row0 + tl.program_id(1) * BB) // pair_rows
        w += direction * w_stride
        b += direction * 3 * H
    rows, rmask, cols, cmask, m, own, lens = _tile(lengths, B, H, row0, BB, S)
    n_prog = tl.num_programs(0)
    b_r = tl.load(b + cols, mask=cmask, other=0.0).to(ACC)[None, :]
    b_z = tl.load(b + H + cols, mask=cmask, other=0.0).to(ACC)[None, :]
    b_n = tl.load(b + 2 * H + cols, mask=cmask, other=0.0).to(ACC)[None, :]
    sync += tl.program_id(1)
    h = tl.load(h0 + own, mask=m, other=0.0).to(ACC)
    if KMAJOR:  # where this program's units go in the exchanged (H, B) states
        xown = cols[None, :] * B + rows[:, None]
    elif PERMUTED:  # (rows of BK, each in _permuted_at's order)
        xown = rows[:, None] * BK + _permuted_at(cols, BK // (KW * CHUNK), KW, CHUNK)[None, :]
    else:
        xown = own
    if PERMUTED:  # (the values of one state in the exchange)
        XH = BK
    else:
        XH = H
    if STAMPED:
        _publish(hbuf + (t_begin % 2) * B * XH + xown, h, m, t_begin, True)
    # (W as the product needs it; the names a split doesn't use stand for W's pointer)
    w_hi, w_lo, w_r, w_z, w_n = w, w, w, w, w
    if STACKED:
        w_hi, w_lo = _stacked_tiles(w, H, BK, S, False)
    elif CHUNKED:
        w_r, w_z, w_n = _chunked_tiles(w, cols, cmask, H, H, H * H, BK, CHUNK, KW, SI)
    elif RESIDENT:  # (KMAJOR: (K, S) tiles, as tl.dot's)
        w_r, w_z, w_n = _resident_tiles(w, cols, cmask, H, BK, DOT or KMAJOR)
    last = tl.zeros_like(lens) + t_end  # (as a tensor: the interpreter's masks)
    # (PROJECT's W_ih and b_ih; the names stand for W's tiles and b_hh's where unused)
    wi_r, wi_z, wi_n, bi_r, bi_z, bi_n = w_r, w_z, w_n, b_r, b_z, b_n
    if PROJECT:
        wi_r, wi_z, wi_n = _input_tiles(w_ih, cols, cmask, H, IN, BKI, DOT or KMAJOR,
                                        CHUNKED, CHUNK, KW, SI)
        bi_r = tl.load(b_ih + cols, mask=cmask, other=0.0).to(ACC)[None, :]
        bi_z = tl.load(b_ih + H + cols, mask=cmask, other=0.0).to(ACC)[None, :]
        bi_n = tl.load(b_ih + 2 * H + cols, mask=cmask, other=0.0).to(ACC)[None, :]
        next_r, next_z, next_n = _step_projection(
            gi, t_begin, B, IN, rows, rmask & (t_begin < lens) & (t_begin < last), wi_r,
            wi_z, wi_n, bi_r, bi_z, bi_n, BKI, DOT, PREC, ACC, KMAJOR, CHUNKED, PERMUTED_X)
    elif PREFETCH:
        next_r, next_z, next_n = _step_input(gi, t_begin, B, H, rows, cols, m, ACC)
    else:
        next_r, next_z, next_n = h, h, h
    for t in range(t_begin, t_end):
        h, next_r, next_z, next_n = _forward_step(
            gi, w, w_r, w_z, w_n, w_hi, w_lo, b_r, b_z, b_n, hbuf, rhbuf, out, r_s,
            z_s, n_s, ghn_s, sync, n_prog, B, H, t, t_begin, h, next_r, next_z, next_n,
            rows, rmask, cols, cmask, m, own, xown, lens, last, XH, BB, S, BK, RESET_AFTER,
            SAVE, DOT, PREC, ACC, RESIDENT, STAMPED, KMAJOR, STACKED, PREFETCH,
            CHUNKED, PERMUTED, PROJECT, BKI, wi_r, wi_z, wi_n, bi_r, bi_z, bi_n, IN,
            PERMUTED_X)


@_jit
def _forward_step(gi, w, w_r, w_z, w_n, w_hi, w_lo, b_r, b_z, b_n, hbuf, rhbuf, out,
                  r_s, z_s, n_s, ghn_s, sync, n_prog, B, H, t, t_begin, h, next_r, next_z,
                  next_n, rows, rmask, cols, cmask, m, own, xown, lens, last, XH,
                  BB: tl.constexpr, S: tl.constexpr, BK: tl.constexpr,
                  RESET_AFTER: tl.constexpr, SAVE: tl.constexpr, DOT: tl.constexpr,
                  PREC: tl.constexpr, ACC: tl.constexpr, RESIDENT: tl.constexpr,
                  STAMPED: tl.constexpr, KMAJOR: tl.constexpr, STACKED: tl.constexpr,
                  PREFETCH: tl.constexpr, CHUNKED: tl.constexpr,
                  PERMUTED: tl.constexpr, PROJECT: tl.constexpr = False,
                  BKI: tl.constexpr = 1, wi_r=0, wi_z=0, wi_n=0, bi_r=0, bi_z=0, bi_n=0,
                  IN=1, PERMUTED_X: tl.constexpr = False):
    """Step t of _forward_kernel for the tile's rows ``rows`` (its counter ``sync``): waits
    until every program has published the state before step t, publishes the state after
    it and arrives, without waiting. Returns the new state (h) and, with
    PREFETCH or PROJECT, step t + 1's input projections (else next_* as given). XH: the
    values of one state in the exchange (H; PERMUTED, rows of BK)."""
    cur = hbuf + (t % 2) * B * XH
    t64 = tl.cast(t, tl.int64)  # T·B·3H can pass 2^31
    if not STAMPED:  # (the state before step t published; reset_after=False: and r ⊙ h
        # of the step before, two arrivals a step)
        _wait(sync, (t - t_begin) * (1 + (not RESET_AFTER)) * n_prog)
    if PROJECT:  # (made at the end of the step before)
        gi_r, gi_z, gi_n = next_r, next_z, next_n
    elif PREFETCH:  # (step t + 1's loads in flight through this step)
        gi_r, gi_z, gi_n = next_r, next_z, next_n
        # (rows past their length read nothing, nor any row past the launch)
        next_r, next_z, next_n = _step_input(gi, t + 1, B, H, rows, cols,
                                             m & ((t + 1 < lens) & (t + 1 < last))[:, None],
                                             ACC)
    else:
        gi_r, gi_z, gi_n = _step_input(gi, t, B, H, rows, cols, m, ACC)
    if STACKED:
        gh_r, gh_z, gh_n = _stacked_product(_row_block(cur, rows, rmask, H, H, t, BK,
                                                       STAMPED), w_hi, w_lo, S)
    elif KMAJOR:
        x = _row_block(cur, rows, rmask, H, B, t, BK, STAMPED, True)
        gh_r = _product_k(x, w_r, ACC)
        gh_z = _product_k(x, w_z, ACC)
        if RESET_AFTER:
            gh_n = _product_k(x, w_n, ACC)
        else:
            gh_n = gh_z  # (unused: the n gate's product is on r ⊙ h, below)
    elif PERMUTED:
        gh_r, gh_z, gh_n = _permuted_products(cur, rows, rmask, XH, w_r, w_z, w_n, ACC,
                                              3 if RESET_AFTER else 2)
    elif RESIDENT:
        x = _row_block(cur, rows, rmask, H, H, t, BK, STAMPED)
        gh_r = _product(x, w_r, DOT, PREC, ACC, CHUNKED)
        gh_z = _product(x, w_z, DOT, PREC, ACC, CHUNKED)
        if RESET_AFTER:
            gh_n = _product(x, w_n, DOT, PREC, ACC, CHUNKED)
        else:
            gh_n = gh_z  # (unused: the n gate's product is on r ⊙ h, below)
    else:
        gh_r, gh_z, gh_n = _hidden_product(cur, rows, rmask, w, cols, cmask, H, t, BB, S,
                                           BK, DOT, PREC, ACC, 3 if RESET_AFTER else 2,
                                           STAMPED)
    r = tl.sigmoid(gi_r + gh_r + b_r)
    z = tl.sigmoid(gi_z + gh_z + b_z)
    if RESET_AFTER:
        ghn = gh_n + b_n
        n = _tanh(gi_n + r * ghn)
    else:
        _publish(rhbuf + xown, r * h, m, t, STAMPED)
        if not STAMPED:
            _barrier(sync, (2 * (t - t_begin) + 1) * n_prog)
        if STACKED:  # (the stacked tile's n block; r and z's again, unused)
            ghn = _stacked_product(_row_block(rhbuf, rows, rmask, H, H, t, BK, STAMPED),
                                   w_hi, w_lo, S)[2] + b_n
        elif RESIDENT:
            ghn = _resident_product(rhbuf, rows, rmask, H, B if KMAJOR else XH, t, w_n, BK,
                                    STAMPED, KMAJOR, DOT, PREC, ACC, CHUNKED,
                                    PERMUTED) + b_n
        else:
            ghn = _mm(rhbuf, H, rows, rmask, w + 2 * H * H, 1, H, cols, cmask, H, t,
                      BB, S, BK, DOT, PREC, ACC, STAMPED) + b_n
        n = _tanh(gi_n + ghn)
    h_new = (1.0 - z) * n + z * h
    ok = m & (t < lens)[:, None]
    h = tl.where(ok, h_new, h)
    # (published first: the other programs wait for it)
    _publish(hbuf + ((t + 1) % 2) * B * XH + xown, h, m, t + 1, STAMPED)
    at = t64 * B * H + own
    tl.store(out + at, tl.where(ok, h_new, 0.0).to(out.dtype.element_ty), mask=m)
    if SAVE:
        tl.store(r_s + at, tl.where(ok, r, 0.0), mask=m)
        tl.store(z_s + at, tl.where(ok, z, 0.0), mask=m)
        tl.store(n_s + at, tl.where(ok, n, 0.0), mask=m)
        if RESET_AFTER:
            tl.store(ghn_s + at, tl.where(ok, ghn, 0.0), mask=m)
    if not STAMPED:
        _arrive(sync)
    if PROJECT:  # (step t + 1's, while the others' arrivals come in)
        next_r, next_z, next_n = _step_projection(
            gi, t + 1, B, IN, rows, rmask & ((t + 1 < lens) & (t + 1 < last)), wi_r, wi_z,
            wi_n, bi_r, bi_z, bi_n, BKI, DOT, PREC, ACC, KMAJOR, CHUNKED, PERMUTED_X)
    return h, next_r, next_z, next_n
