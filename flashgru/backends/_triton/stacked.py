"""``Config.stacked``: the three gates' rows of W_hh in one tile on the tensor cores, fp32 as
three TF32 products (or, ``Config.split16``, three fp16 ones on scaled parts).
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
def _stacked_scales(scale, H, S: tl.constexpr, TRANSPOSED: tl.constexpr = False):
    """``Config.split16``: the (64,) scales of _stacked_tile's rows, from _fp16_parts' (one
    per run of H along K: W_hh's row g·H + unit; TRANSPOSED, W_hhᵀ's row unit, gate g's
    run, 3·unit + g), 0 for the zero rows."""
    i = tl.arange(0, 64) % (4 * S)
    gate = i // S
    units = tl.program_id(0) * S + i % S
    at = units * 3 + gate if TRANSPOSED else gate * H + units
    return tl.load(scale + at, mask=(gate < 3) & (units < H), other=0.0)


@_jit
def _stacked_tiles(w, H, BK: tl.constexpr, S: tl.constexpr, TRANSPOSED: tl.constexpr = False,
                   SPLIT16: tl.constexpr = False):
    """_stacked_tile's (high, low) tiles: with fp32 weights, w holds W's TF32-rounded
    high parts, then (3H·H) its low parts (_tf32_parts), or with SPLIT16 its two fp16
    parts (_fp16_parts); with 16-bit weights the one tile twice (the low one unused)."""
    hi = _stacked_tile(w, H, BK, S, TRANSPOSED)
    if w.dtype.element_ty == tl.float32 or SPLIT16:
        return hi, _stacked_tile(w + 3 * H * H, H, BK, S, TRANSPOSED)
    return hi, hi


@_jit
def _tf32_hi(x):
    """x rounded to TF32's 10-bit mantissa (to nearest; |x| well below fp32's largest)."""
    bits = x.to(tl.int32, bitcast=True)
    return ((bits + 0x1000) & -8192).to(tl.float32, bitcast=True)


@_jit
def _scale_of(amax):
    """(s, 1/s): the power of two above amax ≥ 0, from its exponent bits (2^-126 for 0
    and below; at most 2^126)."""
    e = tl.minimum((amax.to(tl.int32, bitcast=True) >> 23) & 0xFF, 252)
    return ((e + 1) << 23).to(tl.float32, bitcast=True), \
        ((253 - e) << 23).to(tl.float32, bitcast=True)


@_jit
def _stacked_dot(w_hi, w_lo, xt, w_rows=1.0, SPLIT16: tl.constexpr = False):
    """w_hi (64, K) @ xt (K, N) in fp32: with fp32 weights three TF32 products on W's
    parts, W_lo·x_hi + W_hi·x_lo + W_hi·x_hi (the dropped W_lo·x_lo is below 2^-21 of
    the product, as tf32x3's); with SPLIT16 three fp16 products on W's fp16 parts
    (_fp16_parts: each row W = w_rows·(hi + lo·2^-11)) and xt's, made alike here, each
    column scaled into ±1 by the power of two above its largest magnitude: (W_lo·x_hi +
    W_hi·x_lo)·2^-11 + W_hi·x_hi, each part's 11 bits exact in the products as TF32's,
    then scaled back by row and column (so that every row and column keeps 22 bits of
    its own largest); with 16-bit weights one, w_lo unused."""
    if SPLIT16:
        s, inv = _scale_of(tl.max(tl.abs(xt), axis=0))
        x = xt * inv[None, :]
        x_hi = x.to(tl.float16)
        x_lo = ((x - x_hi.to(tl.float32)) * 2048.0).to(tl.float16)
        acc = tl.dot(w_lo, x_hi)
        acc = tl.dot(w_hi, x_lo, acc)
        acc = tl.dot(w_hi, x_hi, acc * (1.0 / 2048.0))
        return acc * w_rows[:, None] * s[None, :]  # (one factor at a time: no inf·0)
    elif w_hi.dtype == tl.float32:
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
def _stacked_product(x, w_hi, w_lo, S: tl.constexpr, w_rows=1.0,
                     SPLIT16: tl.constexpr = False):
    """The three gate blocks (BB, S) of x (BB, K) @ W_gᵀ from stacked tiles
    (_stacked_tile): in one _stacked_dot, the tile times xᵀ with its F folds of K side by
    side, (K / F, F·BB), then the F diagonal blocks (4S, BB) summed and split by gate
    (SPLIT16: the rows' scales w_rows, _stacked_scales)."""
    F: tl.constexpr = 16 // S
    BB: tl.constexpr = x.shape[0]
    KF: tl.constexpr = x.shape[1] // F
    if F == 1:
        xt = tl.trans(x)
    else:  # xt[k, f·BB + b] = x[b, f·KF + k]
        xt = tl.reshape(tl.permute(tl.reshape(x, (BB, F, KF)), (2, 1, 0)), (KF, F * BB))
    acc = _diagonal_sum(_stacked_dot(w_hi, w_lo, xt, w_rows, SPLIT16), F, 4 * S, BB)
    # acc[g·S + s, b] → (b, s, g // 2, g % 2), then split twice: g = 0 (r), 1 (z), 2 (n)
    q = tl.permute(tl.reshape(acc, (2, 2, S, BB)), (3, 2, 0, 1))
    even, odd = tl.split(q)
    r, n = tl.split(even)
    z, _ = tl.split(odd)
    return r, z, n


@_jit
def _stacked_carry(xt, w_hi, w_lo, S: tl.constexpr, w_rows=1.0,
                   SPLIT16: tl.constexpr = False):
    """(BB, S): Σ_g x_g (BB, K) @ W_g[:, units] from the backward's stacked tiles
    (_stacked_tile, TRANSPOSED) and xt from _stacked_gradients: one _stacked_dot, then
    its 4F diagonal blocks (S, BB) summed (SPLIT16: the rows' scales w_rows,
    _stacked_scales)."""
    F: tl.constexpr = 16 // S
    BB: tl.constexpr = xt.shape[1] // (4 * F)
    return tl.trans(_diagonal_sum(_stacked_dot(w_hi, w_lo, xt, w_rows, SPLIT16), 4 * F, S,
                                  BB))


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
