"""The crossed backward (``Config.k_blocks``): the reverse recurrence with W_hh split over
the programs both ways, the gradients' units (K) in k_blocks blocks and dL/dh's units in
slices, so that a program reads partial sums of dL/dh a step, B × H values, instead of all
B × 3H gradients.

Program (a, b) owns the units of K-block a, [a·KB, (a+1)·KB): it forms their gates'
gradients itself (every program of block a forms the same ones, from the same reads), and
multiplies them by W_hh's rows of those units and columns b·S .. (b+1)·S, a partial sum
of dL/dh_{t-1} for those columns (W resident: chunked, ``_chunked_partial``'s product
over KB, or stacked on the tensor cores, ``_stacked_dot``'s). It writes the partial sum
to its place in xbuf and arrives at the barrier; at the next step, each program sums the
k_blocks partial sums at its block's units. At fp32 B=16, H=1024 on 128 programs (k16)
that is 8.9 MB a step read through L2, about the forward's own exchange (8.4), against
the one-way split's 25 MB (every program reads all 16 × 3H gradients).

xbuf (2, k_blocks + 1, B, H), zeros at first: step t's partial sums in xbuf[t % 2, a]
(two buffers, used in turn, as the others' exchange), and in xbuf[t % 2, k_blocks] the
elementwise part of dL/dh before it (dL/dh ⊙ z, or what a row past its length carries),
each unit's by one program: a step starts from the sum of the k_blocks + 1 planes. So a
launch may cover any part of T, one step too, with the same code: the Triton interpreter
runs the programs one after another, and there each launch is one step, whose reads the
launch before wrote (no wait within a launch of one step). dL/dh0 is the sum of
xbuf[0]'s planes (the caller's).

The paper's form (reset_after=False) needs the n gate's product, summed over every
program, in the middle of a step: its partial sums go through a buffer of their own
first, and a step has two barriers, as the one-way split's has.
"""

from __future__ import annotations

from .backward import _saved_step
from .exchange import _arrive, _wait
from .lang import _jit, tl
from .products import _chunked_partial, _chunked_sum, _chunked_tiles
from .stacked import _stacked_dot


@_jit
def _crossed_tile(w, H, KB, cols, cmask, BK: tl.constexpr):
    """A stacked crossed split's tile of one gate, (S, BK): V[s, k] = w[cols_s·3H + k] for
    k < KB (w = W_hhᵀ at the gate's rows of this K-block: W_g[a·KB + k, col]), zero past
    KB or H; loaded once (a dot operand, kept in shared memory)."""
    ks = tl.arange(0, BK)
    return tl.load(w + cols[:, None] * 3 * H + ks[None, :],
                   mask=cmask[:, None] & (ks < KB)[None, :], other=0.0)


@_jit
def _crossed_tiles(wt, H, KB, cols, cmask, BK: tl.constexpr):
    """The three gates' _crossed_tile, high and low parts each (fp32 weights: wt holds
    W_hhᵀ's TF32-rounded high parts, then (H, 3H) its low parts; 16-bit: the one tile
    twice), for _stacked_dot."""
    r = _crossed_tile(wt, H, KB, cols, cmask, BK)
    z = _crossed_tile(wt + H, H, KB, cols, cmask, BK)
    n = _crossed_tile(wt + 2 * H, H, KB, cols, cmask, BK)
    if wt.dtype.element_ty == tl.float32:
        lo = wt + 3 * H * H
        return (r, z, n, _crossed_tile(lo, H, KB, cols, cmask, BK),
                _crossed_tile(lo + H, H, KB, cols, cmask, BK),
                _crossed_tile(lo + 2 * H, H, KB, cols, cmask, BK))
    return r, z, n, r, z, n


@_jit
def _summed(xbuf, plane, own, m, PLANES: tl.constexpr):
    """(BB, BK): the sum of xbuf's first PLANES planes (plane elements apart) at own."""
    total = tl.load(xbuf + own, mask=m, other=0.0, cache_modifier=".cg")
    for j in tl.static_range(1, PLANES):
        total += tl.load(xbuf + j * plane + own, mask=m, other=0.0, cache_modifier=".cg")
    return total


@_jit
def _crossed_partial(x_r, x_z, x_n, v_r, v_z, v_n, l_r, l_z, l_n, at, rows, rmask, cols,
                     cmask, H, ACC: tl.constexpr, STACKED: tl.constexpr,
                     GATES: tl.constexpr):
    """Store at (rows, cols) the partial sum Σ_g x_g @ V_g over the gates in GATES (bit
    g: r, z, n) of this program's K-block and columns, x_g (BB, BK): on the tensor cores
    (STACKED, _crossed_tiles', (S, BB) transposed) or chunked (_chunked_tiles')."""
    if STACKED:
        if GATES == 4:
            part = _stacked_dot(v_n, l_n, tl.trans(x_n))
        else:
            part = _stacked_dot(v_r, l_r, tl.trans(x_r))
            part += _stacked_dot(v_z, l_z, tl.trans(x_z))
            if GATES == 7:
                part += _stacked_dot(v_n, l_n, tl.trans(x_n))
        tl.store(at + rows[None, :] * H + cols[:, None], part,
                 mask=cmask[:, None] & rmask[None, :])
    else:
        if GATES == 4:
            part = _chunked_partial(x_n, v_n, ACC)
        else:
            part = _chunked_partial(x_r, v_r, ACC)
            part += _chunked_partial(x_z, v_z, ACC)
            if GATES == 7:
                part += _chunked_partial(x_n, v_n, ACC)
        tl.store(at + rows[:, None] * H + cols[None, :], _chunked_sum(part),
                 mask=rmask[:, None] & cmask[None, :])


@_jit
def _crossed_kernel(dout, h0, out, wt, r_s, z_s, n_s, ghn_s, lengths, dgi, dgh, xbuf, ybuf,
                    sync, B, H, KB, row0, t_begin, t_end,
                    BB: tl.constexpr, S: tl.constexpr, BK: tl.constexpr,
                    KBLOCKS: tl.constexpr, ACC: tl.constexpr, RESET_AFTER: tl.constexpr,
                    PREFETCH: tl.constexpr = False, CHUNK: tl.constexpr = 32,
                    KW: tl.constexpr = 1, SI: tl.constexpr = 1,
                    STACKED: tl.constexpr = False, PHASE: tl.constexpr = 0,
                    DGH_N: tl.constexpr = False):
    """Steps t_end-1 down to t_begin of the reverse recurrence.

    dout, out, r_s, z_s, n_s, ghn_s (T, B, H); h0 (B, H); wt = W_hhᵀ (H, 3H); lengths (B,).
    Writes dgi (T, B, 3H), rounded to its dtype, and for RESET_AFTER dgh (T, B, 3H), or
    with DGH_N its n block alone, (T, B, H) (else dgh is dgi), each unit's by one program
    of its block (the tile's rows in col_blocks shares); KB the units of a K-block (BK ≥
    KB, a power of two). Program p: K-block a = p // col_blocks, columns b = p %
    col_blocks, col_blocks = programs / KBLOCKS.
    PREFETCH: step t - 1's reads issued during step t. STACKED: the product on the tensor
    cores, each gate's (S, BK) tile of W_g's transpose times the gradients' (tl.dot, M =
    S, N = BB; fp32 as three TF32 products on W_hhᵀ's parts, as ``Config.stacked``'s),
    instead of the chunked broadcast product (CHUNK, KW, SI).

    reset_after=False (the paper's form): the n gate's gradient first, its partial sums
    of W_hnᵀ dn in ybuf (k_blocks, B, H), a barrier, then their sum at the block's units
    (∂L/∂(r ⊙ h)) gives r's gradient, and r's and z's partial sums go to xbuf: two
    arrivals a step. PHASE (the interpreter's, a launch of one step): 1, the first half
    alone; 2, the second alone (the first's values formed again, from the same reads)."""
    n_prog = tl.num_programs(0)
    col_blocks = n_prog // KBLOCKS
    a = tl.program_id(0) // col_blocks
    b = tl.program_id(0) % col_blocks
    rows = row0 + tl.program_id(1) * BB + tl.arange(0, BB)
    rmask = rows < B
    lens = tl.load(lengths + rows, mask=rmask, other=0)
    local = tl.arange(0, BK)
    units = a * KB + local
    m = rmask[:, None] & ((local < KB) & (units < H))[None, :]
    own = rows[:, None] * H + units[None, :]
    # (the rows whose gradients it stores, all the block's units of each: a mask along the
    # rows alone keeps the stores along the units 16 bytes wide)
    share = (BB + col_blocks - 1) // col_blocks
    stores = m & (tl.arange(0, BB) // share == b)[:, None]
    cols = b * S + tl.arange(0, S)
    cmask = cols < H
    sync += tl.program_id(1)
    plane = tl.cast(B, tl.int64) * H  # (2·(k_blocks + 1) planes: past 2^31 at B·H ~ 2^26)
    # (W_hh[g·H + a·KB + k, col] for k < KB, from W_hhᵀ's rows)
    if STACKED:
        v_r, v_z, v_n, l_r, l_z, l_n = _crossed_tiles(wt + a * KB, H,
                                                      tl.minimum(KB, H - a * KB), cols,
                                                      cmask, BK)
    else:
        v_r, v_z, v_n = _chunked_tiles(wt + a * KB, cols, cmask, tl.minimum(KB, H - a * KB),
                                       3 * H, H, BK, CHUNK, KW, SI)
        l_r, l_z, l_n = v_r, v_z, v_n  # (unused)
    first = tl.zeros_like(lens) + t_begin  # (no read before the launch's first step)
    if PREFETCH:
        p_d, p_h, p_r, p_z, p_n, p_g = _saved_step(dout, out, h0, r_s, z_s, n_s, ghn_s,
                                                   t_end - 1, B, H, own, m, ACC, RESET_AFTER)
    else:  # (unused)
        p_d = tl.zeros((BB, BK), ACC)
        p_h, p_r, p_z, p_n, p_g = p_d, p_d, p_d, p_d, p_d
    for i in range(t_end - t_begin):
        t = t_end - 1 - i
        if i > 0:  # (step t + 1's partial sums, every program's: the launch before wrote
            # its last step's)
            _wait(sync, i * (1 + (not RESET_AFTER)) * n_prog)
        # dL/dh after step t: step t + 1's partial sums and its elementwise part (zeros
        # at t = T)
        carried = _summed(xbuf + ((t + 1) % 2) * (KBLOCKS + 1) * plane, plane, own, m,
                          KBLOCKS + 1)
        if PREFETCH:
            d, h_prev, r, z, n, ghn = p_d, p_h, p_r, p_z, p_n, p_g
        else:
            d, h_prev, r, z, n, ghn = _saved_step(dout, out, h0, r_s, z_s, n_s, ghn_s, t, B,
                                                  H, own, m, ACC, RESET_AFTER)
        ok = m & (t < lens)[:, None]
        d += carried
        dn = tl.where(ok, d * (1.0 - z) * (1.0 - n * n), 0.0)
        dz = tl.where(ok, d * (h_prev - n) * z * (1.0 - z), 0.0)
        own3 = tl.cast(t, tl.int64) * B * 3 * H + rows[:, None] * 3 * H + units[None, :]
        at = xbuf + (t % 2) * (KBLOCKS + 1) * plane
        if RESET_AFTER:
            dr = dn * ghn * r * (1.0 - r)
            dnr = dn * r
            if DGH_N:  # (its r and z blocks are dgi's)
                tl.store(dgh + tl.cast(t, tl.int64) * plane + own, dnr, mask=stores)
            else:
                tl.store(dgh + own3, dr, mask=stores)
                tl.store(dgh + own3 + H, dz, mask=stores)
                tl.store(dgh + own3 + 2 * H, dnr, mask=stores)
            e = tl.where(ok, d * z, carried)
            gates_r, gates_n = dr, dnr
        else:
            if PHASE != 2:  # (the n gate's partial sums, W_hnᵀ dn)
                _crossed_partial(dn, dn, dn, v_r, v_z, v_n, l_r, l_z, l_n, ybuf + a * plane,
                                 rows, rmask, cols, cmask, H, ACC, STACKED, 4)
                _arrive(sync)
            if PHASE == 0:
                _wait(sync, (2 * i + 1) * n_prog)
            # (∂L/∂(r ⊙ h) at the block's units; PHASE 1: unused)
            d_rh = _summed(ybuf, plane, own, m, KBLOCKS)
            dr = tl.where(ok, d_rh * h_prev * r * (1.0 - r), 0.0)
            e = tl.where(ok, d * z + r * d_rh, carried)
            gates_r, gates_n = dr, dn
        if PHASE != 1:
            tl.store(dgi + own3, dr, mask=stores)
            tl.store(dgi + own3 + H, dz, mask=stores)
            tl.store(dgi + own3 + 2 * H, dn, mask=stores)
            tl.store(at + KBLOCKS * plane + own, e, mask=stores)
            _crossed_partial(gates_r, dz, gates_n, v_r, v_z, v_n, l_r, l_z, l_n,
                             at + a * plane, rows, rmask, cols, cmask, H, ACC, STACKED,
                             7 if RESET_AFTER else 3)
            if PREFETCH:  # (step t - 1's reads in flight through the barrier)
                p_d, p_h, p_r, p_z, p_n, p_g = _saved_step(
                    dout, out, h0, r_s, z_s, n_s, ghn_s, t - 1, B, H, own,
                    m & ((t - 1 < lens) & (t > first))[:, None], ACC, RESET_AFTER)
            _arrive(sync)
