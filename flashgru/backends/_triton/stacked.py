"""``Config.stacked``: the three gates' rows of W_hh in one tile on the tensor cores, fp32 as
three TF32 products.
"""

from __future__ import annotations

from .exchange import _await
from .lang import STAMPED_BLOCK, _jit, tl


@_jit
def _stacked_tile(w, H, BK: tl.constexpr, S: tl.constexpr, TRANSPOSED: tl.constexpr = False):
    """``Config.stacked``: this program's S units' rows of the three gates of W_hh at w in
    one (64, BK / F) tile for one warpgroup's wgmma, F = 16 / S folds of K: fold f (rows
    4S·f to 4S·(f+1)) holds the gates' rows (r, z, n, then S zero rows) over K's f-th
    part; TRANSPOSED (the backward's, from w = W_hhᵀ (H, 3H)): gate g's rows are those of
    W_gᵀ, the units' columns of W_g. Loaded once before the time loop (a dot operand that
    no arithmetic touches stays in shared memory)."""
    F: tl.constexpr = 16 // S
    m = tl.arange(0, 64)
    i = m % (4 * S)
    gate = i // S
    units = tl.program_id(0) * S + i % S
    ks = (m // (4 * S) * (BK // F))[:, None] + tl.arange(0, BK // F)[None, :]
    if TRANSPOSED:
        base = units * 3 * H + gate * H
    else:
        base = (gate * H + units) * H
    return tl.load(w + base[:, None] + ks,
                   mask=((gate < 3) & (units < H))[:, None] & (ks < H), other=0.0)


@_jit
def _stacked_tiles(w, H, BK: tl.constexpr, S: tl.constexpr, TRANSPOSED: tl.constexpr = False):
    """_stacked_tile's (high, low) tiles: with fp32 weights, w holds W's TF32-rounded
    high parts, then (3H·H) its low parts (_tf32_parts); with 16-bit weights the one tile
    twice (the low one unused)."""
    hi = _stacked_tile(w, H, BK, S, TRANSPOSED)
    if w.dtype.element_ty == tl.float32:
        return hi, _stacked_tile(w + 3 * H * H, H, BK, S, TRANSPOSED)
    return hi, hi


@_jit
def _tf32_hi(x):
    """x rounded to TF32's 10-bit mantissa (to nearest; |x| well below fp32's largest)."""
    bits = x.to(tl.int32, bitcast=True)
    return ((bits + 0x1000) & -8192).to(tl.float32, bitcast=True)


@_jit
def _stacked_dot(w_hi, w_lo, xt):
    """w_hi (64, K) @ xt (K, N) in fp32: with fp32 weights three TF32 products on W's
    parts, W_lo·x_hi + W_hi·x_lo + W_hi·x_hi (the dropped W_lo·x_lo is below 2^-21 of
    the product, as tf32x3's); with 16-bit weights one, w_lo unused."""
    if w_hi.dtype == tl.float32:
        x_hi = _tf32_hi(xt)
        acc = tl.dot(w_lo, x_hi, input_precision="tf32")
        acc = tl.dot(w_hi, xt - x_hi, acc, input_precision="tf32")
        return tl.dot(w_hi, x_hi, acc, input_precision="tf32")
    else:
        return tl.dot(w_hi, xt.to(w_hi.dtype))


@_jit
def _diagonal_sum(acc, D: tl.constexpr, R: tl.constexpr, C: tl.constexpr):
    """(R, C): the sum of the D diagonal blocks of acc (D·R, D·C)."""
    if D == 1:
        return acc
    acc = tl.reshape(acc, (D, R, D, C))
    d = tl.arange(0, D)
    diagonal = d[:, None, None, None] == d[None, None, :, None]
    return tl.sum(tl.sum(tl.where(diagonal, acc, 0.0), axis=2), axis=0)


@_jit
def _stacked_product(x, w_hi, w_lo, S: tl.constexpr):
    """The three gate blocks (BB, S) of x (BB, K) @ W_gᵀ from stacked tiles
    (_stacked_tile): in one _stacked_dot, the tile times xᵀ with its F folds of K side by
    side, (K / F, F·BB), then the F diagonal blocks (4S, BB) summed and split by gate."""
    F: tl.constexpr = 16 // S
    BB: tl.constexpr = x.shape[0]
    KF: tl.constexpr = x.shape[1] // F
    if F == 1:
        xt = tl.trans(x)
    else:  # xt[k, f·BB + b] = x[b, f·KF + k]
        xt = tl.reshape(tl.permute(tl.reshape(x, (BB, F, KF)), (2, 1, 0)), (KF, F * BB))
    acc = _diagonal_sum(_stacked_dot(w_hi, w_lo, xt), F, 4 * S, BB)
    # acc[g·S + s, b] → (b, s, g // 2, g % 2), then split twice: g = 0 (r), 1 (z), 2 (n)
    q = tl.permute(tl.reshape(acc, (2, 2, S, BB)), (3, 2, 0, 1))
    even, odd = tl.split(q)
    r, n = tl.split(even)
    z, _ = tl.split(odd)
    return r, z, n


@_jit
def _stacked_carry(xt, w_hi, w_lo, S: tl.constexpr):
    """(BB, S): Σ_g x_g (BB, K) @ W_g[:, units] from the backward's stacked tiles
    (_stacked_tile, TRANSPOSED) and xt from _stacked_gradients: one _stacked_dot, then
    its 4F diagonal blocks (S, BB) summed."""
    F: tl.constexpr = 16 // S
    BB: tl.constexpr = xt.shape[1] // (4 * F)
    return tl.trans(_diagonal_sum(_stacked_dot(w_hi, w_lo, xt), 4 * F, S, BB))


@_jit
def _stacked_gradients(a, gstep, rows, rmask, B, H, xstride, t, BK: tl.constexpr,
                       S: tl.constexpr, STAMPED: tl.constexpr, GATES: tl.constexpr):
    """The backward's stacked operand (K / F, 4F·BB), read at once in the tile's row order
    (fold f, gate g): xt[k, (4f + g)·BB + b] = gate g's gradient at row b of this tile
    (rows), f·K / F + k, gate g's block at a + g·gstep, its rows xstride apart (written
    by other programs: _shared_block, step t); zero for the fourth gate and for those not
    in GATES (bit g)."""
    F: tl.constexpr = 16 // S
    BB: tl.constexpr = rows.shape[0]
    KF: tl.constexpr = BK // F
    c = tl.arange(0, 4 * F * BB)
    gate = c // BB % 4
    row = tl.min(rows, axis=0) + c % BB
    ks = (c // (4 * BB) * KF)[None, :] + tl.arange(0, KF)[:, None]
    ptrs = a + (gate * gstep + row * xstride)[None, :] + ks
    mask = ((((GATES >> gate) & 1) == 1) & (row < B))[None, :] & (ks < H)
    if STAMPED:  # wait until each gate's block carries step t, then read it once
        for g in tl.static_range(3):
            if (GATES >> g) & 1:
                _await(a + g * gstep, rows, rmask, H, xstride, t, STAMPED_BLOCK // BB)
        words = tl.load(ptrs, mask=mask, other=0, cache_modifier=".cg")
        return words.to(tl.int32).to(tl.float32, bitcast=True)
    else:
        return tl.load(ptrs, mask=mask, other=0.0, cache_modifier=".cg")
