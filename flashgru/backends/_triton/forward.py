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
                    pair_rows=1, w_stride=0):
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
    elements on: each tile takes its direction's.
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
    if PREFETCH:
        next_r, next_z, next_n = _step_input(gi, t_begin, B, H, rows, cols, m, ACC)
    else:
        next_r, next_z, next_n = h, h, h
    for t in range(t_begin, t_end):
        h, next_r, next_z, next_n = _forward_step(
            gi, w, w_r, w_z, w_n, w_hi, w_lo, b_r, b_z, b_n, hbuf, rhbuf, out, r_s,
            z_s, n_s, ghn_s, sync, n_prog, B, H, t, t_begin, h, next_r, next_z, next_n,
            rows, rmask, cols, cmask, m, own, xown, lens, last, XH, BB, S, BK, RESET_AFTER,
            SAVE, DOT, PREC, ACC, RESIDENT, STAMPED, KMAJOR, STACKED, PREFETCH,
            CHUNKED, PERMUTED)


@_jit
def _forward_step(gi, w, w_r, w_z, w_n, w_hi, w_lo, b_r, b_z, b_n, hbuf, rhbuf, out,
                  r_s, z_s, n_s, ghn_s, sync, n_prog, B, H, t, t_begin, h, next_r, next_z,
                  next_n, rows, rmask, cols, cmask, m, own, xown, lens, last, XH,
                  BB: tl.constexpr, S: tl.constexpr, BK: tl.constexpr,
                  RESET_AFTER: tl.constexpr, SAVE: tl.constexpr, DOT: tl.constexpr,
                  PREC: tl.constexpr, ACC: tl.constexpr, RESIDENT: tl.constexpr,
                  STAMPED: tl.constexpr, KMAJOR: tl.constexpr, STACKED: tl.constexpr,
                  PREFETCH: tl.constexpr, CHUNKED: tl.constexpr,
                  PERMUTED: tl.constexpr):
    """Step t of _forward_kernel for the tile's rows ``rows`` (its counter ``sync``): waits
    until every program has published the state before step t, publishes the state after
    it and arrives, without waiting. Returns the new state (h) and, with
    PREFETCH, step t + 1's input projections (else next_* as given). XH: the values of
    one state in the exchange (H; PERMUTED, rows of BK)."""
    cur = hbuf + (t % 2) * B * XH
    t64 = tl.cast(t, tl.int64)  # T·B·3H can pass 2^31
    if not STAMPED:  # (the state before step t published; reset_after=False: and r ⊙ h
        # of the step before, two arrivals a step)
        _wait(sync, (t - t_begin) * (1 + (not RESET_AFTER)) * n_prog)
    if PREFETCH:  # (step t + 1's loads in flight through this step)
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
    return h, next_r, next_z, next_n
