"""The fused GPU backend: persistent Triton kernels for the recurrent core, forward and
backward through time, both formulations, sequence lengths, fp32/bf16/fp16 (fp32
arithmetic) and fp64.

One launch runs a whole layer-direction. The hidden units are split over P programs
(grid axis 0) and the batch over tiles (grid axis 1); program p owns hidden units
[p·S, (p+1)·S) of its tile's rows and keeps their state in registers across the time loop.
A step needs all of h (the hidden product), so each program writes its slice of h' to a
double-buffered state in global memory (L2-resident) and the P programs of a tile meet at
a barrier, a monotonic counter in global memory, before the next step reads it. All
programs must be resident at once, so the launcher keeps the grid within the number of
multiprocessors. W_hh is read from L2 each step (12 MB at H=1024 stays there).

Backward runs the reverse recurrence the same way: each program forms the gradients of
its slice's gate pre-activations, publishes them, meets the others at the barrier, and
multiplies the whole vector by its columns of W_hh (read from W_hhᵀ, transposed once per
call). The weight gradients are GEMMs over all steps afterwards.

reset_after=False needs h ⊙ r, all of it, in the middle of a step, and its backward needs
two whole gradient vectors: two barriers per step instead of one.

A split may exchange the vectors stamped instead (``Config.stamped``; fp32 arithmetic):
each value goes out as one 64-bit word with the step number in its high half, and a
reader loads the words it needs until all carry the current step (the idea of NCCL's and
MSCCL++'s LL protocol: 4 bytes of data beside a 4-byte flag, an aligned 8-byte word
written whole). Two buffers, used in turn, suffice: a program can write step t + 2's
words into step t's buffer only after it has read every program's step t + 1, which each
wrote after it had read all of step t.

Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors (slowly): that is how they are
tested without a GPU. The interpreter runs programs one after another, so a barrier among
several programs would wait forever: there each batch tile gets one program (P = 1), which
runs the same code, barrier included.

Needs Triton (``pip install 'flashgru[gpu]'``) and a CUDA GPU.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
from torch import Tensor

from ..scan import on_device, time_interleaved
from . import tf32x3
from .cpu_step import _special_mode

try:
    import triton
    import triton.language as tl
except ImportError:  # the backend is then unavailable; see missing()
    triton = None

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
SIXTEEN_BIT = (torch.bfloat16, torch.float16)


def missing() -> str | None:
    if triton is None:
        return "it needs Triton: pip install 'flashgru[gpu]'"
    if not (INTERPRET or torch.cuda.is_available()):
        return "it needs a CUDA GPU (or TRITON_INTERPRET=1 to run its kernels on the CPU)"
    return None


def devices() -> tuple[str, ...]:
    return ("cuda", "cpu") if INTERPRET else ("cuda",)


def _jit(fn):
    return fn if triton is None else triton.jit(fn)


# (in the kernels: the interpreter runs one program per tile, so a stamped wait there must
# find every word already written, or it would spin forever)
_INTERPRETED = INTERPRET if triton is None else tl.constexpr(INTERPRET)


# ---- kernels -----------------------------------------------------------------------------

@_jit
def _arrive(sync):
    """Arrive at the counter ``sync``, this program's writes before it visible to whoever
    sees the arrival."""
    tl.debug_barrier()
    tl.atomic_add(sync, 1, sem="release", scope="gpu")


@_jit
def _wait(sync, arrivals):
    """Wait until the counter ``sync`` has had ``arrivals`` arrivals in all."""
    while tl.atomic_add(sync, 0, sem="acquire", scope="gpu") < arrivals:
        pass
    tl.debug_barrier()


@_jit
def _barrier(sync, arrivals):
    """Arrive at the counter ``sync`` and wait until ``arrivals`` arrivals in all."""
    _arrive(sync)
    _wait(sync, arrivals)


@_jit
def _product(x, v, DOT: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr,
             CHUNKED: tl.constexpr = False):
    """x (BB, BK) @ v in ACC, v from _w_tile: tl.dot on v (BK, S) (fp32 at PREC; fp16/bf16
    operands with fp32 accumulation), or on v (S, BK) a broadcast product summed over the
    last axis; CHUNKED, on v (BK / LANES, S, LANES) from _chunked_tiles (_chunked_product).
    (Summed over the middle axis, Triton's combine pass rewrites the broadcast product
    into a TF32 tl.dot once BB, S ≥ 16: a 5e-4 error, measured on an H100.)"""
    if CHUNKED:
        return _chunked_product(x, v, ACC)
    elif DOT:
        if v.dtype == tl.float32:
            return tl.dot(x, v, input_precision=PREC)
        else:
            return tl.dot(x.to(v.dtype), v).to(ACC)
    else:
        return tl.sum(x.to(ACC)[:, None, :] * v.to(ACC)[None, :, :], axis=2)


# ``Config.chunked``: the width of K's chunks, a warp's lanes (WARP_LANES for the host).
WARP_LANES = 32
LANES = WARP_LANES if triton is None else tl.constexpr(WARP_LANES)


@_jit
def _chunked_tiles(w, cols, cmask, H, stride_s, gstep, BK: tl.constexpr,
                   CHUNK: tl.constexpr, KW: tl.constexpr, SI: tl.constexpr):
    """The three resident gate tiles of ``Config.chunked``, (BK / LANES, S, LANES) each:
    V_g[c, s, i] = w[g·gstep + k + s·stride_s] at k = LANES·c + i < H (zero past H), for
    _chunked_product: the forward's W_hh (stride_s H, gstep H²) or the backward's W_hhᵀ
    (stride_s 3H, gstep H), as _resident_tiles and _resident_tiles_t read them. With
    ``Config.unit_lanes`` or ``Config.thread_units`` (_chunk_shape: chunks of CHUNK, KW
    warps along K, SI units a thread): (BK / (KW·CHUNK), SI, KW, S / SI, CHUNK),
    V_g[c, a, j, o, i] at k = (KW·c + j)·CHUNK + i and unit a·S / SI + o."""
    if KW == 1 and CHUNK == LANES and SI == 1:
        k = tl.arange(0, BK // LANES)[:, None, None] * LANES + \
            tl.arange(0, LANES)[None, None, :]
        p = w + k + cols[None, :, None] * stride_s
        mask = (k < H) & cmask[None, :, None]
    else:
        SO: tl.constexpr = cols.shape[0] // SI
        k = ((tl.arange(0, BK // (KW * CHUNK))[:, None, None, None, None] * KW +
              tl.arange(0, KW)[None, None, :, None, None]) * CHUNK +
             tl.arange(0, CHUNK)[None, None, None, None, :])
        units = tl.reshape(cols, (SI, SO))[None, :, None, :, None]
        inside = tl.reshape(cmask, (SI, SO))[None, :, None, :, None]
        p = w + k + units * stride_s
        mask = (k < H) & inside
    return (tl.load(p, mask=mask, other=0.0), tl.load(p + gstep, mask=mask, other=0.0),
            tl.load(p + 2 * gstep, mask=mask, other=0.0))


@_jit
def _chunked_partial(x, v, ACC: tl.constexpr):
    """_chunked_product's sum over K not yet complete: with a (NC, S, LANES) tile, the
    product summed over the chunks, (BB, S, LANES); with a 5-axis tile (NC, SI, KW, SO,
    CHUNK), (BB, SI, KW, SO, CHUNK) summed over NC. What's left is _chunked_sum's."""
    BB: tl.constexpr = x.shape[0]
    NC: tl.constexpr = v.shape[0]
    if len(v.shape) == 3:
        xc = tl.reshape(x.to(ACC), (BB, NC, LANES))[:, :, None, :]
        return tl.sum(xc * v.to(ACC)[None, :, :, :], axis=1)
    else:
        KW: tl.constexpr = v.shape[2]
        CHUNK: tl.constexpr = v.shape[4]
        xc = tl.reshape(x.to(ACC), (BB, NC, KW, CHUNK))[:, :, None, :, None, :]
        return tl.sum(xc * v.to(ACC)[None, :, :, :, :, :], axis=1)


@_jit
def _chunked_sum(part):
    """(BB, S) from _chunked_partial's sums (or a sum of several): over a chunk's lanes,
    then (5 axes) over the warps along K, units back in order."""
    if len(part.shape) == 3:
        return tl.sum(part, axis=2)
    else:
        BB: tl.constexpr = part.shape[0]
        S: tl.constexpr = part.shape[1] * part.shape[3]
        return tl.reshape(tl.sum(tl.sum(part, axis=4), axis=2), (BB, S))


@_jit
def _chunked_product(x, v, ACC: tl.constexpr):
    """x (BB, BK) @ V in ACC, v (BK / LANES, S, LANES) from _chunked_tiles
    (``Config.chunked``): the broadcast product over K in chunks of LANES, summed over the
    chunks first, then over a chunk. Triton lays the lanes along a chunk and the warps
    along the units (the axis before), so each thread sums its chunks itself and the lanes
    meet once per row and unit (nvdisasm, sm_90a, B=16, H=1024, 8 units, 8 warps: ~2300
    instructions a step instead of ~7000, 240 shuffles instead of ~1960, no spills).
    With a 5-axis tile (NC, SI, KW, SO, CHUNK), Triton's default layout for the product
    (BB, NC, SI, KW, SO, CHUNK) fills a warp's lanes along the chunk, then the units
    (SO), and the warps along SO, then KW (_chunk_shape makes them fill it all), each
    thread holding NC chunks of SI units: the sum runs within a thread, then between
    lanes, then between the KW warps (through shared memory, (BB, S) values a warp), and
    each operand value a thread reads serves its SI units."""
    return _chunked_sum(_chunked_partial(x, v, ACC))


@_jit
def _w_tile(w, ks, kmask, stride_k, cols, cmask, stride_s, DOT: tl.constexpr):
    """Pointers and mask of the tile V[k, s] = w[k·stride_k + s·stride_s] for _product:
    (BK, S) for tl.dot, (S, BK) for the broadcast product."""
    if DOT:
        return (w + ks[:, None] * stride_k + cols[None, :] * stride_s,
                kmask[:, None] & cmask[None, :])
    else:
        return (w + ks[None, :] * stride_k + cols[:, None] * stride_s,
                kmask[None, :] & cmask[:, None])


@_jit
def _stamp(x, t):
    """64-bit words for the stamped exchange (``Config.stamped``): x's fp32 bits in the low
    half, the step t in the high half."""
    bits = x.to(tl.float32).to(tl.int32, bitcast=True).to(tl.uint32, bitcast=True)
    return bits.to(tl.int64) | (tl.cast(t, tl.int64) << 32)


@_jit
def _shared_block(a, rows, rmask, ks, kmask, stride, t, STAMPED: tl.constexpr,
                  WAIT: tl.constexpr = True, KMAJOR: tl.constexpr = False):
    """(BB, BK): a[row·stride + k] for this program's rows and the ks, written by other
    programs of this launch; KMAJOR: (BK, BB), a[k·stride + row]. After the step's
    barrier, fp32/fp64 read through L2; or, STAMPED, 64-bit words from _stamp, read again
    until every one carries step t (a word is written whole, so a reader sees its old or
    its new value, never a mix), then unpacked to fp32; without WAIT once, where _await
    has seen them all carry t."""
    if KMAJOR:
        ptrs = a + ks[:, None] * stride + rows[None, :]
        mask = kmask[:, None] & rmask[None, :]
    else:
        ptrs = a + rows[:, None] * stride + ks[None, :]
        mask = rmask[:, None] & kmask[None, :]
    if STAMPED:
        if WAIT:
            words = tl.load(ptrs, mask=mask, other=0, volatile=True)
            waiting = tl.sum(tl.where(mask & ((words >> 32) != t), 1, 0))
            if _INTERPRETED:  # a word not there yet never will be: NaN (its low half), not a hang
                words = tl.where(waiting > 0, 0x7FC00000, words)
            else:
                while waiting > 0:
                    words = tl.load(ptrs, mask=mask, other=0, volatile=True)
                    waiting = tl.sum(tl.where(mask & ((words >> 32) != t), 1, 0))
            return words.to(tl.int32).to(tl.float32, bitcast=True)
        else:
            words = tl.load(ptrs, mask=mask, other=0, cache_modifier=".cg")
            return words.to(tl.int32).to(tl.float32, bitcast=True)
    else:
        return tl.load(ptrs, mask=mask, other=0.0, cache_modifier=".cg")


@_jit
def _await(a, rows, rmask, K, stride, t, BK: tl.constexpr, KMAJOR: tl.constexpr = False):
    """Wait until the stamped words of _shared_block(a, rows, ..., k < K) all carry step t,
    a chunk of BK at a time (so that the product's loop over K after it reads them
    without waiting, its loads pipelined; a word that carries t keeps it until every
    program has read it)."""
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        _shared_block(a, rows, rmask, ks, ks < K, stride, t, True, True, KMAJOR)


@_jit
def _mm(a, a_stride, rows, rmask, w, stride_k, stride_s, cols, cmask, K, t,
        BB: tl.constexpr, S: tl.constexpr, BK: tl.constexpr, DOT: tl.constexpr,
        PREC: tl.constexpr, ACC: tl.constexpr, STAMPED: tl.constexpr):
    """(BB, S) = A[rows, :K] @ V[:K, cols], where A[i, k] = a[i·a_stride + k] was written
    by other programs of this launch (_shared_block, step t) and V[k, s] =
    w[k·stride_k + s·stride_s]."""
    if STAMPED:
        _await(a, rows, rmask, K, a_stride, t, BK)
    acc = tl.zeros((BB, S), ACC)
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        kmask = ks < K
        x = _shared_block(a, rows, rmask, ks, kmask, a_stride, t, STAMPED, False)
        v, vmask = _w_tile(w, ks, kmask, stride_k, cols, cmask, stride_s, DOT)
        acc += _product(x, tl.load(v, mask=vmask, other=0.0), DOT, PREC, ACC)
    return acc


@_jit
def _hidden_product(a, rows, rmask, w, cols, cmask, H, t,
                    BB: tl.constexpr, S: tl.constexpr, BK: tl.constexpr, DOT: tl.constexpr,
                    PREC: tl.constexpr, ACC: tl.constexpr, GATES: tl.constexpr,
                    STAMPED: tl.constexpr):
    """The first GATES gate blocks of h @ W_hhᵀ for this program's hidden units, (BB, S)
    each, in one pass over h: h (B, H) at ``a`` (written by other programs; step t),
    w = W_hh."""
    if STAMPED:
        _await(a, rows, rmask, H, H, t, BK)
    acc_r = tl.zeros((BB, S), ACC)
    acc_z = tl.zeros((BB, S), ACC)
    acc_n = tl.zeros((BB, S), ACC)
    for k0 in range(0, H, BK):
        ks = k0 + tl.arange(0, BK)
        kmask = ks < H
        x = _shared_block(a, rows, rmask, ks, kmask, H, t, STAMPED, False)
        v, vmask = _w_tile(w, ks, kmask, 1, cols, cmask, H, DOT)
        acc_r += _product(x, tl.load(v, mask=vmask, other=0.0), DOT, PREC, ACC)
        acc_z += _product(x, tl.load(v + H * H, mask=vmask, other=0.0), DOT, PREC, ACC)
        if GATES == 3:
            acc_n += _product(x, tl.load(v + 2 * H * H, mask=vmask, other=0.0), DOT, PREC, ACC)
    return acc_r, acc_z, acc_n


@_jit
def _resident_tiles(w, cols, cmask, H, BK: tl.constexpr, DOT: tl.constexpr):
    """W_hh's three gate tiles for this program's units over all of K (BK ≥ H), loaded once
    before the time loop and kept in registers (``Config.resident``)."""
    ks = tl.arange(0, BK)
    v, vmask = _w_tile(w, ks, ks < H, 1, cols, cmask, H, DOT)
    return (tl.load(v, mask=vmask, other=0.0), tl.load(v + H * H, mask=vmask, other=0.0),
            tl.load(v + 2 * H * H, mask=vmask, other=0.0))


@_jit
def _resident_tiles_t(wt, cols, cmask, H, BK: tl.constexpr, DOT: tl.constexpr):
    """The backward's three tiles V_g[k, s] = W_hh[g·H + k, s] for this program's units s
    (k < H, BK ≥ H), read from wt = W_hhᵀ (H, 3H), loaded once and kept in registers."""
    ks = tl.arange(0, BK)
    v, vmask = _w_tile(wt, ks, ks < H, 1, cols, cmask, 3 * H, DOT)
    return (tl.load(v, mask=vmask, other=0.0), tl.load(v + H, mask=vmask, other=0.0),
            tl.load(v + 2 * H, mask=vmask, other=0.0))


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


# The most words a stamped wait re-reads as one block: a larger block (B=16 above H=256)
# waits a chunk at a time and is then read once more, unpacked (its int64 words held all
# at once spilled registers; ptxas, sm_90a).
STAMPED_BLOCK = 4096 if triton is None else tl.constexpr(4096)


@_jit
def _row_block(a, rows, rmask, H, stride, t, BK: tl.constexpr, STAMPED: tl.constexpr,
               KMAJOR: tl.constexpr = False):
    """(BB, BK): a[row·stride + k] for this program's rows and all k < H (KMAJOR: (BK, BB),
    a[k·stride + row]), written by other programs (_shared_block, step t)."""
    ks = tl.arange(0, BK)
    BB: tl.constexpr = rows.shape[0]
    if STAMPED and BB * BK > STAMPED_BLOCK:
        _await(a, rows, rmask, H, stride, t, STAMPED_BLOCK // BB, KMAJOR)
        return _shared_block(a, rows, rmask, ks, ks < H, stride, t, STAMPED, False, KMAJOR)
    else:
        return _shared_block(a, rows, rmask, ks, ks < H, stride, t, STAMPED, True, KMAJOR)


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


@_jit
def _product_k(x, v, ACC: tl.constexpr):
    """x (BK, BB) @ v (BK, S) → (BB, S) in ACC, a broadcast product summed over its first
    axis, K (``Config.kmajor``)."""
    return tl.sum(x.to(ACC)[:, :, None] * v.to(ACC)[:, None, :], axis=0)


@_jit
def _resident_product(a, rows, rmask, H, stride, t, v, BK: tl.constexpr,
                      STAMPED: tl.constexpr, KMAJOR: tl.constexpr, DOT: tl.constexpr,
                      PREC: tl.constexpr, ACC: tl.constexpr, CHUNKED: tl.constexpr = False):
    """(BB, S): the block _row_block reads at a (KMAJOR: K-major) times the resident tile
    v (from _resident_tiles or _resident_tiles_t; CHUNKED, _chunked_tiles)."""
    if KMAJOR:
        return _product_k(_row_block(a, rows, rmask, H, stride, t, BK, STAMPED, True), v,
                          ACC)
    else:
        return _product(_row_block(a, rows, rmask, H, stride, t, BK, STAMPED), v, DOT, PREC,
                        ACC, CHUNKED)


@_jit
def _chunked_gates(a, gstep, rows, rmask, H, stride, t, v_a, v_b, v_c, BK: tl.constexpr,
                   STAMPED: tl.constexpr, ACC: tl.constexpr, GATES: tl.constexpr):
    """Σ_g (BB, H) block g @ v_g over GATES (2 or 3) gates, the blocks _row_block reads at
    a + g·gstep, for a chunked split's 5-axis tiles (``Config.thread_units``,
    ``Config.unit_lanes``): the gates' partial sums added in each thread before the lanes
    and warps meet once (_chunked_sum), instead of once a gate."""
    part = _chunked_partial(_row_block(a, rows, rmask, H, stride, t, BK, STAMPED), v_a, ACC)
    part += _chunked_partial(_row_block(a + gstep, rows, rmask, H, stride, t, BK, STAMPED),
                             v_b, ACC)
    if GATES == 3:
        part += _chunked_partial(_row_block(a + 2 * gstep, rows, rmask, H, stride, t, BK,
                                            STAMPED), v_c, ACC)
    return _chunked_sum(part)


@_jit
def _partial_tiles(w, cols, cmask, H, BK: tl.constexpr):
    """``Config.partials``: this program's rows of W_hh (w, (3H, H)), gate by gate, each
    (S, BK / LANES, LANES): V_g[s, c, i] = W_hh[g·H + cols[s], LANES·c + i], zero past H.
    In _partial_product Triton lays a warp's lanes along the last axis and the warps along
    the chunks, so each thread holds all S units at its columns."""
    k = tl.arange(0, BK // LANES)[:, None] * LANES + tl.arange(0, LANES)[None, :]
    p = w + cols[:, None, None] * H + k[None, :, :]
    mask = cmask[:, None, None] & (k < H)[None, :, :]
    return (tl.load(p, mask=mask, other=0.0), tl.load(p + H * H, mask=mask, other=0.0),
            tl.load(p + 2 * H * H, mask=mask, other=0.0))


@_jit
def _partial_product(g, v, ACC: tl.constexpr):
    """Σ_s g[b, s]·V[s, c, i], (BB, BK / LANES, LANES) in ACC: this program's units'
    gradients g (BB, S) times its rows of W (V from _partial_tiles), at every column of
    W, each thread summing over the units itself."""
    return tl.sum(g.to(ACC)[:, :, None, None] * v.to(ACC)[None, :, :, :], axis=1)


@_jit
def _partials_region(xbuf, slot, e, BB: tl.constexpr, S: tl.constexpr, PP: tl.constexpr):
    """Where exchange e of the rows at ``slot`` (a batch tile's, or a group's of it,
    ``Config.groups``) lies in ``Config.partials``'s buffer (slots, 2, P, PP, BB, S), PP
    a power of two ≥ the programs P: exchanges alternate between two regions, so a
    program a step ahead never writes over what another is still reading."""
    return xbuf + (slot * 2 + e % 2).to(tl.int64) * tl.num_programs(0) * (PP * BB * S)


@_jit
def _publish_partials(xbuf, part, slot, e, BB: tl.constexpr, S: tl.constexpr,
                      PP: tl.constexpr):
    """Write this program's partial products (BB, NC, LANES) (_partial_product) for
    exchange e, each column's values at [program owning that unit, this program, row,
    unit] of the region (_partials_region), where its owner reads them all in one block
    (strides of compile-time sizes: a thread's addresses are one register plus
    constants)."""
    NC: tl.constexpr = part.shape[1]
    k = tl.arange(0, NC)[:, None] * LANES + tl.arange(0, LANES)[None, :]
    at = ((k // S) * PP + tl.program_id(0)) * (BB * S) + k % S
    p = _partials_region(xbuf, slot, e, BB, S, PP) + at[None, :, :] + \
        tl.arange(0, BB)[:, None, None] * S
    tl.store(p, part, mask=(k < tl.num_programs(0) * S)[None, :, :])


@_jit
def _summed_partials(xbuf, slot, e, BB: tl.constexpr, S: tl.constexpr,
                     PP: tl.constexpr):
    """(BB, S): the sum of every program's partial products of exchange e
    (_publish_partials) at this program's units."""
    src = tl.arange(0, PP)
    p = _partials_region(xbuf, slot, e, BB, S, PP) + \
        (tl.program_id(0) * PP + src[:, None]) * (BB * S) + tl.arange(0, BB * S)[None, :]
    n = tl.num_programs(0)
    got = tl.load(p, mask=(src < n)[:, None], other=0.0, cache_modifier=".cg")
    return tl.reshape(tl.sum(got, axis=0), (BB, S))


@_jit
def _publish(p, value, mask, t, STAMPED: tl.constexpr):
    """Write a step's values for the other programs: stamped words, or as they are (in
    the exchange's dtype: ``Config.narrow``'s 16-bit, rounded as tl.dot rounds them)."""
    if STAMPED:
        tl.store(p, _stamp(value, t), mask=mask)
    else:
        tl.store(p, value.to(p.dtype.element_ty), mask=mask)


@_jit
def _tile(lengths, B, H, row0, BB: tl.constexpr, S: tl.constexpr, group=0,
          BG: tl.constexpr = 0):
    """This program's rows (its batch tile, axis 1) and hidden units (axis 0): the row and
    unit indices and masks, the (BB, S) mask, offsets in a (B, H) array, and the rows'
    lengths; with BG, those of the tile's ``group``-th BG rows alone (``Config.groups``)."""
    if BG:
        rows = row0 + tl.program_id(1) * BB + group * BG + tl.arange(0, BG)
    else:
        rows = row0 + tl.program_id(1) * BB + tl.arange(0, BB)
    rmask = rows < B
    cols = tl.program_id(0) * S + tl.arange(0, S)
    cmask = cols < H
    lens = tl.load(lengths + rows, mask=rmask, other=0)
    return (rows, rmask, cols, cmask, rmask[:, None] & cmask[None, :],
            rows[:, None] * H + cols[None, :], lens)


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
def _forward_kernel(gi, h0, w, b, scale, lengths, out, hbuf, rhbuf, r_s, z_s, n_s, ghn_s,
                    sync, B, H, row0, t_begin, t_end,
                    BB: tl.constexpr, S: tl.constexpr, BK: tl.constexpr,
                    RESET_AFTER: tl.constexpr, SAVE: tl.constexpr,
                    DOT: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr,
                    RESIDENT: tl.constexpr, STAMPED: tl.constexpr,
                    KMAJOR: tl.constexpr = False, STACKED: tl.constexpr = False,
                    PREFETCH: tl.constexpr = False, NARROW: tl.constexpr = False,
                    SPLIT16: tl.constexpr = False, CHUNKED: tl.constexpr = False,
                    CHUNK: tl.constexpr = 32, KW: tl.constexpr = 1,
                    SI: tl.constexpr = 1, GROUPS: tl.constexpr = 1):
    """Steps [t_begin, t_end) of one layer-direction.

    gi (T, B, 3H) input projections; h0 (B, H) the state before t_begin; w = W_hh (3H, H);
    b = b_hh (3H,); lengths (B,); out (T, B, H); hbuf (2, B, H) the state, hbuf[t % 2] = h
    before step t (fp32/fp64: the caller has written h0 to hbuf[t_begin % 2]; STAMPED: int64
    words from _stamp, all stamped -1 at launch; the caller passes (3, B, H) for
    reset_after=False); rhbuf (B, H) scratch for r ⊙ h (likewise; hbuf[2]);
    r_s, z_s, n_s, ghn_s (T, B, H) the saved gates (with SAVE); sync: one int32 counter per
    batch tile (GROUPS per tile), zero at launch (unused with STAMPED: readers wait on the
    stamps instead of a barrier). KMAJOR (with RESIDENT, the broadcast product): hbuf and
    rhbuf hold each state transposed, (H, B), and the products are summed over their first
    axis. STACKED (``Config.stacked``): w holds W_hh's TF32-rounded high parts, then (3H, H)
    its low parts, for fp32 weights. PREFETCH (``Config.prefetch``): step t + 1's gi is
    loaded at the start of step t. NARROW (``Config.narrow``): the caller made hbuf W's
    16-bit dtype; the kernel is the same. SPLIT16 (``Config.split16``, with STACKED): w
    holds fp32 W_hh's two fp16 parts and ``scale`` (3H,) its rows' scales (_fp16_parts;
    else unread). GROUPS (``Config.groups``, 1 or 2): the tile's rows in that many groups,
    each its own recurrence with its own counter, their steps taken in turn
    (_forward_step).
    """
    tl.static_assert(GROUPS == 1 or not (STAMPED or KMAJOR or PREFETCH or STACKED),
                     "groups: not stamped, K-major, prefetch or stacked (_can_group)")
    BG: tl.constexpr = BB // GROUPS
    rows, rmask, cols, cmask, m, own, lens = _tile(lengths, B, H, row0, BB, S, 0, BG)
    n_prog = tl.num_programs(0)
    b_r = tl.load(b + cols, mask=cmask, other=0.0).to(ACC)[None, :]
    b_z = tl.load(b + H + cols, mask=cmask, other=0.0).to(ACC)[None, :]
    b_n = tl.load(b + 2 * H + cols, mask=cmask, other=0.0).to(ACC)[None, :]
    sync += tl.program_id(1) * GROUPS
    h = tl.load(h0 + own, mask=m, other=0.0).to(ACC)
    if KMAJOR:  # where this program's units go in the exchanged (H, B) states
        xown = cols[None, :] * B + rows[:, None]
    else:
        xown = own
    if STAMPED:
        _publish(hbuf + (t_begin % 2) * B * H + xown, h, m, t_begin, True)
    # (W as the product needs it; the names a split doesn't use stand for W's pointer)
    w_hi, w_lo, w_r, w_z, w_n = w, w, w, w, w
    if STACKED:
        w_hi, w_lo = _stacked_tiles(w, H, BK, S, False, SPLIT16)
    elif CHUNKED:
        w_r, w_z, w_n = _chunked_tiles(w, cols, cmask, H, H, H * H, BK, CHUNK, KW, SI)
    elif RESIDENT:  # (KMAJOR: (K, S) tiles, as tl.dot's)
        w_r, w_z, w_n = _resident_tiles(w, cols, cmask, H, BK, DOT or KMAJOR)
    if SPLIT16:
        w_rows = _stacked_scales(scale, H, S)
    else:
        w_rows = 1.0
    last = tl.zeros_like(lens) + t_end  # (as a tensor: the interpreter's masks)
    if PREFETCH:
        next_r, next_z, next_n = _step_input(gi, t_begin, B, H, rows, cols, m, ACC)
    else:
        next_r, next_z, next_n = h, h, h
    if GROUPS == 2:  # (the second group's rows: its own recurrence and counter)
        rows2, rmask2, cols, cmask, m2, own2, lens2 = _tile(lengths, B, H, row0, BB, S, 1,
                                                            BG)
        h2 = tl.load(h0 + own2, mask=m2, other=0.0).to(ACC)
    for t in range(t_begin, t_end):
        h, next_r, next_z, next_n = _forward_step(
            gi, w, w_r, w_z, w_n, w_hi, w_lo, w_rows, b_r, b_z, b_n, hbuf, rhbuf, out, r_s,
            z_s, n_s, ghn_s, sync, n_prog, B, H, t, t_begin, h, next_r, next_z, next_n,
            rows, rmask, cols, cmask, m, own, xown, lens, last, BG, S, BK, RESET_AFTER, SAVE,
            DOT, PREC, ACC, RESIDENT, STAMPED, KMAJOR, STACKED, PREFETCH, SPLIT16, CHUNKED)
        if GROUPS == 2:
            h2, next_r, next_z, next_n = _forward_step(
                gi, w, w_r, w_z, w_n, w_hi, w_lo, w_rows, b_r, b_z, b_n, hbuf, rhbuf, out,
                r_s, z_s, n_s, ghn_s, sync + 1, n_prog, B, H, t, t_begin, h2, next_r,
                next_z, next_n, rows2, rmask2, cols, cmask, m2, own2, own2, lens2, last, BG,
                S, BK, RESET_AFTER, SAVE, DOT, PREC, ACC, RESIDENT, STAMPED, KMAJOR, STACKED,
                PREFETCH, SPLIT16, CHUNKED)


@_jit
def _forward_step(gi, w, w_r, w_z, w_n, w_hi, w_lo, w_rows, b_r, b_z, b_n, hbuf, rhbuf, out,
                  r_s, z_s, n_s, ghn_s, sync, n_prog, B, H, t, t_begin, h, next_r, next_z,
                  next_n, rows, rmask, cols, cmask, m, own, xown, lens, last,
                  BB: tl.constexpr, S: tl.constexpr, BK: tl.constexpr,
                  RESET_AFTER: tl.constexpr, SAVE: tl.constexpr, DOT: tl.constexpr,
                  PREC: tl.constexpr, ACC: tl.constexpr, RESIDENT: tl.constexpr,
                  STAMPED: tl.constexpr, KMAJOR: tl.constexpr, STACKED: tl.constexpr,
                  PREFETCH: tl.constexpr, SPLIT16: tl.constexpr, CHUNKED: tl.constexpr):
    """Step t of _forward_kernel for the rows ``rows`` (a tile, or one of its groups, whose
    counter is ``sync``): waits until every program has published the state before step
    t, publishes the state after it and arrives, without waiting, so that another group's
    step runs while this one's arrivals come in. Returns the new state (h) and, with
    PREFETCH, step t + 1's input projections (else next_* as given)."""
    cur = hbuf + (t % 2) * B * H
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
                                                       STAMPED), w_hi, w_lo, S,
                                            w_rows, SPLIT16)
    elif KMAJOR:
        x = _row_block(cur, rows, rmask, H, B, t, BK, STAMPED, True)
        gh_r = _product_k(x, w_r, ACC)
        gh_z = _product_k(x, w_z, ACC)
        if RESET_AFTER:
            gh_n = _product_k(x, w_n, ACC)
        else:
            gh_n = gh_z  # (unused: the n gate's product is on r ⊙ h, below)
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
                                   w_hi, w_lo, S, w_rows, SPLIT16)[2] + b_n
        elif RESIDENT:
            ghn = _resident_product(rhbuf, rows, rmask, H, B if KMAJOR else H, t, w_n, BK,
                                    STAMPED, KMAJOR, DOT, PREC, ACC, CHUNKED) + b_n
        else:
            ghn = _mm(rhbuf, H, rows, rmask, w + 2 * H * H, 1, H, cols, cmask, H, t,
                      BB, S, BK, DOT, PREC, ACC, STAMPED) + b_n
        n = _tanh(gi_n + ghn)
    h_new = (1.0 - z) * n + z * h
    ok = m & (t < lens)[:, None]
    h = tl.where(ok, h_new, h)
    # (published first: the other programs wait for it)
    _publish(hbuf + ((t + 1) % 2) * B * H + xown, h, m, t + 1, STAMPED)
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


@_jit
def _backward_kernel(dout, h0, out, wt, scale, r_s, z_s, n_s, ghn_s, lengths, dgi, dgh, dh,
                     xbuf, sync, B, H, row0, t_begin, t_end,
                     BB: tl.constexpr, S: tl.constexpr, BK: tl.constexpr,
                     RESET_AFTER: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
                     ACC: tl.constexpr, RESIDENT: tl.constexpr, STAMPED: tl.constexpr,
                     KMAJOR: tl.constexpr = False, STACKED: tl.constexpr = False,
                     PREFETCH: tl.constexpr = False, NARROW: tl.constexpr = False,
                     SPLIT16: tl.constexpr = False, CHUNKED: tl.constexpr = False,
                     CHUNK: tl.constexpr = 32, KW: tl.constexpr = 1,
                     SI: tl.constexpr = 1, PARTIALS: tl.constexpr = False,
                     PP: tl.constexpr = 1, GROUPS: tl.constexpr = 1):
    """Steps t_end-1 down to t_begin of the reverse recurrence.

    dout, out, r_s, z_s, n_s, ghn_s (T, B, H); h0 (B, H); wt = W_hhᵀ (H, 3H); lengths (B,).
    Writes dgi (T, B, 3H) = ∂L/∂gi and, for reset_after=True, dgh (T, B, 3H) =
    ∂L/∂(W_hh h + b_hh); dh (B, H) carries ∂L/∂h between launches (zero at t = T, ∂L/∂h0
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
    dtype, as dgh's rows (dgi and dgh are written in fp32 all the same). SPLIT16
    (``Config.split16``, with STACKED): wt holds fp32 W_hhᵀ's two fp16 parts and ``scale``
    (3H,) the scales of its rows' runs of H (_fp16_parts; else unread). PARTIALS
    (``Config.partials``): wt is W_hh itself, (3H, H), each program multiplies its own
    units' gradients by its rows of W_hh and the programs exchange the (B, H) partial
    products through xbuf (tiles · GROUPS, 2, P, PP, BB / GROUPS, S) (_publish_partials),
    each summing those of its units (_summed_partials); PP a power of two ≥ the programs.
    GROUPS (``Config.groups``, 1 or 2): the tile's rows in that many groups, each its own
    recurrence with its own counter; a step is two phases (_backward_gates, then
    _backward_carry, whose wait the other group's phases cover).
    """
    tl.static_assert(GROUPS == 1 or not (STAMPED or KMAJOR or PREFETCH or STACKED),
                     "groups: not stamped, K-major, prefetch or stacked (_can_group)")
    BG: tl.constexpr = BB // GROUPS
    rows, rmask, cols, cmask, m, own, lens = _tile(lengths, B, H, row0, BB, S, 0, BG)
    n_prog = tl.num_programs(0)
    sync += tl.program_id(1) * GROUPS
    slot = tl.program_id(1) * GROUPS  # (the partial products' regions of the first group)
    carried = tl.load(dh + own, mask=m, other=0.0)
    # (W as the product needs it; the names a split doesn't use stand for W's pointer)
    w_hi, w_lo, v_r, v_z, v_n = wt, wt, wt, wt, wt
    if STACKED:
        w_hi, w_lo = _stacked_tiles(wt, H, BK, S, True, SPLIT16)
    elif PARTIALS:
        v_r, v_z, v_n = _partial_tiles(wt, cols, cmask, H, BK)
    elif CHUNKED:
        v_r, v_z, v_n = _chunked_tiles(wt, cols, cmask, H, 3 * H, H, BK, CHUNK, KW,
                                        SI)
    elif RESIDENT:
        v_r, v_z, v_n = _resident_tiles_t(wt, cols, cmask, H, BK, DOT or KMAJOR)
    if SPLIT16:
        w_rows = _stacked_scales(scale, H, S, True)
    else:
        w_rows = 1.0
    first = tl.zeros_like(lens) + t_begin  # (no read before the launch's first step; a
    # tensor: the interpreter's masks)
    if PREFETCH:
        p_d, p_h, p_r, p_z, p_n, p_g = _saved_step(dout, out, h0, r_s, z_s, n_s, ghn_s,
                                                   t_end - 1, B, H, own, m, ACC, RESET_AFTER)
    else:  # (unused)
        p_d, p_h, p_r, p_z, p_n, p_g = carried, carried, carried, carried, carried, carried
    if GROUPS == 1:
        for i in range(t_end - t_begin):
            d, z, r, d_rh, p_d, p_h, p_r, p_z, p_n, p_g = _backward_gates(
                dout, h0, out, r_s, z_s, n_s, ghn_s, dgi, dgh, xbuf, sync, slot, n_prog,
                B, H, t_end, i, carried, p_d, p_h, p_r, p_z, p_n, p_g, first, rows, rmask,
                cols, cmask, m, own, lens, wt, w_hi, w_lo, w_rows, v_r, v_z, v_n, BG, S, BK,
                RESET_AFTER, DOT, PREC, ACC, RESIDENT, STAMPED, KMAJOR, STACKED, PREFETCH,
                NARROW, SPLIT16, CHUNKED, CHUNK, KW, SI, PARTIALS, PP)
            carried = _backward_carry(
                dgi, dgh, xbuf, sync, slot, n_prog, B, H, t_end, i, carried, d, z, r, d_rh,
                rows, rmask, cols, cmask, m, lens, wt, w_hi, w_lo, w_rows, v_r, v_z, v_n, BG,
                S, BK, RESET_AFTER, DOT, PREC, ACC, RESIDENT, STAMPED, KMAJOR, STACKED,
                NARROW, SPLIT16, CHUNKED, CHUNK, KW, SI, PARTIALS, PP)
    else:  # (two groups, each step's phases rotated: group a's wait comes after group b's
        # phases, and the other way round)
        rows2, rmask2, cols, cmask, m2, own2, lens2 = _tile(lengths, B, H, row0, BB, S, 1,
                                                            BG)
        carried2 = tl.load(dh + own2, mask=m2, other=0.0)
        d, z, r, d_rh, p_d, p_h, p_r, p_z, p_n, p_g = _backward_gates(
            dout, h0, out, r_s, z_s, n_s, ghn_s, dgi, dgh, xbuf, sync, slot, n_prog, B, H,
            t_end, 0, carried, p_d, p_h, p_r, p_z, p_n, p_g, first, rows, rmask, cols, cmask,
            m, own, lens, wt, w_hi, w_lo, w_rows, v_r, v_z, v_n, BG, S, BK, RESET_AFTER, DOT,
            PREC, ACC, RESIDENT, STAMPED, KMAJOR, STACKED, PREFETCH, NARROW, SPLIT16,
            CHUNKED, CHUNK, KW, SI, PARTIALS, PP)
        d2, z2, r2, d_rh2, p_d, p_h, p_r, p_z, p_n, p_g = _backward_gates(
            dout, h0, out, r_s, z_s, n_s, ghn_s, dgi, dgh, xbuf, sync + 1, slot + 1, n_prog,
            B, H, t_end, 0, carried2, p_d, p_h, p_r, p_z, p_n, p_g, first, rows2, rmask2,
            cols, cmask, m2, own2, lens2, wt, w_hi, w_lo, w_rows, v_r, v_z, v_n, BG, S, BK,
            RESET_AFTER, DOT, PREC, ACC, RESIDENT, STAMPED, KMAJOR, STACKED, PREFETCH,
            NARROW, SPLIT16, CHUNKED, CHUNK, KW, SI, PARTIALS, PP)
        for i in range(t_end - t_begin):
            carried = _backward_carry(
                dgi, dgh, xbuf, sync, slot, n_prog, B, H, t_end, i, carried, d, z, r, d_rh,
                rows, rmask, cols, cmask, m, lens, wt, w_hi, w_lo, w_rows, v_r, v_z, v_n, BG,
                S, BK, RESET_AFTER, DOT, PREC, ACC, RESIDENT, STAMPED, KMAJOR, STACKED,
                NARROW, SPLIT16, CHUNKED, CHUNK, KW, SI, PARTIALS, PP)
            if i + 1 < t_end - t_begin:
                d, z, r, d_rh, p_d, p_h, p_r, p_z, p_n, p_g = _backward_gates(
                    dout, h0, out, r_s, z_s, n_s, ghn_s, dgi, dgh, xbuf, sync, slot, n_prog,
                    B, H, t_end, i + 1, carried, p_d, p_h, p_r, p_z, p_n, p_g, first, rows,
                    rmask, cols, cmask, m, own, lens, wt, w_hi, w_lo, w_rows, v_r, v_z, v_n,
                    BG, S, BK, RESET_AFTER, DOT, PREC, ACC, RESIDENT, STAMPED, KMAJOR,
                    STACKED, PREFETCH, NARROW, SPLIT16, CHUNKED, CHUNK, KW, SI, PARTIALS, PP)
            carried2 = _backward_carry(
                dgi, dgh, xbuf, sync + 1, slot + 1, n_prog, B, H, t_end, i, carried2, d2, z2,
                r2, d_rh2, rows2, rmask2, cols, cmask, m2, lens2, wt, w_hi, w_lo, w_rows, v_r,
                v_z, v_n, BG, S, BK, RESET_AFTER, DOT, PREC, ACC, RESIDENT, STAMPED, KMAJOR,
                STACKED, NARROW, SPLIT16, CHUNKED, CHUNK, KW, SI, PARTIALS, PP)
            if i + 1 < t_end - t_begin:
                d2, z2, r2, d_rh2, p_d, p_h, p_r, p_z, p_n, p_g = _backward_gates(
                    dout, h0, out, r_s, z_s, n_s, ghn_s, dgi, dgh, xbuf, sync + 1, slot + 1,
                    n_prog, B, H, t_end, i + 1, carried2, p_d, p_h, p_r, p_z, p_n, p_g, first,
                    rows2, rmask2, cols, cmask, m2, own2, lens2, wt, w_hi, w_lo, w_rows, v_r,
                    v_z, v_n, BG, S, BK, RESET_AFTER, DOT, PREC, ACC, RESIDENT, STAMPED,
                    KMAJOR, STACKED, PREFETCH, NARROW, SPLIT16, CHUNKED, CHUNK, KW, SI,
                    PARTIALS, PP)
        tl.store(dh + own2, carried2, mask=m2)
    tl.store(dh + own, carried, mask=m)


@_jit
def _gradient_blocks(dgi, dgh, xbuf, t, B, H, rows, cols, RESET_AFTER: tl.constexpr,
                     XBUF: tl.constexpr, KMAJOR: tl.constexpr):
    """Where step t's whole gradients are read (_backward_carry) and this program's are
    published: an exchange buffer (stamped words, K-major or 16-bit) or dgh (dgi); gate
    g's block at a + g·gstep, its rows xstride apart, this program's part of it at xo."""
    if XBUF:
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
def _backward_gates(dout, h0, out, r_s, z_s, n_s, ghn_s, dgi, dgh, xbuf, sync, slot, n_prog,
                    B, H, t_end, i, carried, p_d, p_h, p_r, p_z, p_n, p_g, first, rows, rmask,
                    cols, cmask, m, own, lens, wt, w_hi, w_lo, w_rows, v_r, v_z, v_n,
                    BB: tl.constexpr, S: tl.constexpr, BK: tl.constexpr,
                    RESET_AFTER: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
                    ACC: tl.constexpr, RESIDENT: tl.constexpr, STAMPED: tl.constexpr,
                    KMAJOR: tl.constexpr, STACKED: tl.constexpr, PREFETCH: tl.constexpr,
                    NARROW: tl.constexpr, SPLIT16: tl.constexpr, CHUNKED: tl.constexpr,
                    CHUNK: tl.constexpr, KW: tl.constexpr, SI: tl.constexpr,
                    PARTIALS: tl.constexpr, PP: tl.constexpr):
    """Step t = t_end - 1 - i's first phase for the rows ``rows`` (a tile, or one of its
    groups, whose counter is ``sync``): the gates' gradients, stored and published, then
    an arrival without waiting (reset_before: after the n gate's exchange, which it waits
    for). Returns what _backward_carry needs (dL/dh + carried, z, r and ∂L/∂(r ⊙ h)) and,
    with PREFETCH, step t - 1's reads (else p_* as given)."""
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
    XBUF: tl.constexpr = STAMPED or KMAJOR or NARROW  # (the gradients exchanged in xbuf)
    a, gstep, xstride, xo = _gradient_blocks(dgi, dgh, xbuf, t, B, H, rows, cols,
                                             RESET_AFTER, XBUF, KMAJOR)
    if RESET_AFTER:
        dr = dn * ghn * r * (1.0 - r)
        if XBUF:  # (published first: the others wait for them)
            _publish(a + xo, dr, m, t, STAMPED)
            _publish(a + xo + gstep, dz, m, t, STAMPED)
            _publish(a + xo + 2 * gstep, dn * r, m, t, STAMPED)
        tl.store(dgi + g3 + own3, dr, mask=m)
        tl.store(dgi + g3 + own3 + H, dz, mask=m)
        tl.store(dgi + g3 + own3 + 2 * H, dn, mask=m)
        tl.store(dgh + g3 + own3, dr, mask=m)
        tl.store(dgh + g3 + own3 + H, dz, mask=m)
        tl.store(dgh + g3 + own3 + 2 * H, dn * r, mask=m)
        if PARTIALS:
            _publish_partials(xbuf, _partial_product(dr, v_r, ACC) +
                              _partial_product(dz, v_z, ACC) +
                              _partial_product(dn * r, v_n, ACC), slot, i, BB, S, PP)
        d_rh = dn  # (unused)
    else:
        if XBUF:
            _publish(a + xo + 2 * gstep, dn, m, t, STAMPED)
        tl.store(dgi + g3 + own3 + H, dz, mask=m)
        tl.store(dgi + g3 + own3 + 2 * H, dn, mask=m)
        if PARTIALS:
            _publish_partials(xbuf, _partial_product(dn, v_n, ACC), slot, 2 * i, BB, S, PP)
        if not STAMPED:
            _barrier(sync, (2 * i + 1) * n_prog)
        if PREFETCH:  # (step t - 1's reads in flight through this step's products)
            p_d, p_h, p_r, p_z, p_n, p_g = _saved_step(
                dout, out, h0, r_s, z_s, n_s, ghn_s, t - 1, B, H, own,
                m & ((t - 1 < lens) & (t > first))[:, None], ACC, RESET_AFTER)
        if PARTIALS:
            d_rh = _summed_partials(xbuf, slot, 2 * i, BB, S, PP)
        elif STACKED:  # (the n gate's block alone)
            d_rh = _stacked_carry(_stacked_gradients(a, gstep, rows, rmask, B, H,
                                                     xstride, t, BK, S, STAMPED, 4),
                                  w_hi, w_lo, S, w_rows, SPLIT16)
        elif RESIDENT:
            d_rh = _resident_product(a + 2 * gstep, rows, rmask, H, xstride, t, v_n, BK,
                                     STAMPED, KMAJOR, DOT, PREC, ACC, CHUNKED)
        else:
            d_rh = _mm(a + 2 * H, 3 * H, rows, rmask, wt + 2 * H, 1, 3 * H, cols, cmask,
                       H, t, BB, S, BK, DOT, PREC, ACC, STAMPED)
        dr = tl.where(ok, d_rh * h_prev * r * (1.0 - r), 0.0)
        if XBUF:
            _publish(a + xo, dr, m, t, STAMPED)
            _publish(a + xo + gstep, dz, m, t, STAMPED)
        tl.store(dgi + g3 + own3, dr, mask=m)
        if PARTIALS:
            _publish_partials(xbuf, _partial_product(dr, v_r, ACC) +
                              _partial_product(dz, v_z, ACC), slot, 2 * i + 1, BB, S, PP)
    if not STAMPED:
        _arrive(sync)
    if PREFETCH and RESET_AFTER:  # (step t - 1's reads in flight through this step's
        # product; reset_before: issued after its first exchange, above)
        p_d, p_h, p_r, p_z, p_n, p_g = _saved_step(
            dout, out, h0, r_s, z_s, n_s, ghn_s, t - 1, B, H, own,
            m & ((t - 1 < lens) & (t > first))[:, None], ACC, RESET_AFTER)
    return d, z, r, d_rh, p_d, p_h, p_r, p_z, p_n, p_g


@_jit
def _backward_carry(dgi, dgh, xbuf, sync, slot, n_prog, B, H, t_end, i, carried, d, z, r,
                    d_rh, rows, rmask, cols, cmask, m, lens, wt, w_hi, w_lo, w_rows, v_r,
                    v_z, v_n, BB: tl.constexpr, S: tl.constexpr, BK: tl.constexpr,
                    RESET_AFTER: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
                    ACC: tl.constexpr, RESIDENT: tl.constexpr, STAMPED: tl.constexpr,
                    KMAJOR: tl.constexpr, STACKED: tl.constexpr, NARROW: tl.constexpr,
                    SPLIT16: tl.constexpr, CHUNKED: tl.constexpr, CHUNK: tl.constexpr,
                    KW: tl.constexpr, SI: tl.constexpr, PARTIALS: tl.constexpr,
                    PP: tl.constexpr):
    """Step t = t_end - 1 - i's second phase (after _backward_gates): waits until every
    program has published the step's gradients, multiplies them by W_hh for this
    program's units and returns dL/dh before the step (carried where the step is past a
    row's length)."""
    t = t_end - 1 - i
    ok = m & (t < lens)[:, None]
    XBUF: tl.constexpr = STAMPED or KMAJOR or NARROW
    # (chunked 5-axis tiles, Config.unit_lanes or thread_units: the gates summed at once)
    SHAPED: tl.constexpr = CHUNKED and (KW > 1 or CHUNK != LANES or SI > 1)
    a, gstep, xstride, xo = _gradient_blocks(dgi, dgh, xbuf, t, B, H, rows, cols,
                                             RESET_AFTER, XBUF, KMAJOR)
    if not STAMPED:
        _wait(sync, (i + 1) * (1 + (not RESET_AFTER)) * n_prog)
    if RESET_AFTER:
        if PARTIALS:
            carry = _summed_partials(xbuf, slot, i, BB, S, PP)
        elif STACKED:
            carry = _stacked_carry(_stacked_gradients(a, gstep, rows, rmask, B, H,
                                                      xstride, t, BK, S, STAMPED, 7),
                                   w_hi, w_lo, S, w_rows, SPLIT16)
        elif SHAPED:
            carry = _chunked_gates(a, gstep, rows, rmask, H, xstride, t, v_r, v_z, v_n, BK,
                                   STAMPED, ACC, 3)
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
        if PARTIALS:
            carry = r * d_rh + _summed_partials(xbuf, slot, 2 * i + 1, BB, S, PP)
        elif STACKED:  # (r's and z's blocks)
            carry = r * d_rh + _stacked_carry(
                _stacked_gradients(a, gstep, rows, rmask, B, H, xstride, t, BK, S,
                                   STAMPED, 3), w_hi, w_lo, S, w_rows, SPLIT16)
        elif SHAPED:
            carry = r * d_rh + _chunked_gates(a, gstep, rows, rmask, H, xstride, t, v_r,
                                              v_z, v_z, BK, STAMPED, ACC, 2)  # (r, z)
        elif RESIDENT:
            carry = r * d_rh + _resident_product(a, rows, rmask, H, xstride, t, v_r, BK,
                                                 STAMPED, KMAJOR, DOT, PREC, ACC, CHUNKED)
            carry += _resident_product(a + gstep, rows, rmask, H, xstride, t, v_z, BK,
                                       STAMPED, KMAJOR, DOT, PREC, ACC, CHUNKED)
        else:
            carry = r * d_rh + _mm(a, 3 * H, rows, rmask, wt, 1, 3 * H, cols, cmask,
                                   2 * H, t, BB, S, BK, DOT, PREC, ACC, STAMPED)
    return tl.where(ok, d * z + carry, carried)


# ---- launch configuration ----------------------------------------------------------------

class Config(NamedTuple):
    """How a launch splits the work. block_batch (BB) rows per tile; slice (S) hidden units
    per program; block_k (BK) the reduction chunk; dot: tl.dot (needs BB, S, BK ≥ 16) or
    a broadcast-and-sum product; warps per program; precision: tl.dot's for fp32 operands
    ("tf32x3": three TF32 products on the tensor cores, ~fp32 accuracy; or "ieee");
    resident: the kernel loads its W_hh tiles once, before the time loop, and keeps them
    in registers (needs block_k ≥ H: all of K in one tile), instead of reading them
    through the caches at every step (the default where measured faster); stamped: the
    programs exchange each step's vectors as 64-bit words that carry the step number
    beside the fp32 value, and a reader re-reads until every word it needs carries the
    current step, instead of meeting the others at a barrier first (one trip through L2
    a step instead of a store's fence, the counter's round trips and then the read; fp32
    arithmetic only: not fp64); kmajor (resident broadcast tiles): the state (the
    backward's gradients) is exchanged transposed, (H, B) ((3H, B)), and each product is
    summed over its first axis, K, so the layout Triton picks keeps more of the sum within
    a thread (nvdisasm, sm_90a: B=16, H=256 at 8 warps a third of the instructions, a
    tenth of the shuffles); stacked (a 16-row tile: block_batch 16, slice 4, 8 or 16,
    tl.dot, resident): the program's rows of W_hh's three gates (the backward's: of
    W_gᵀ) stacked into one (64, K / F) tile, F = 16 / slice folds of K, that Triton keeps
    in shared memory and multiplies on the tensor cores (wgmma on sm90) by the state's
    transpose (the backward's: the gates' gradients), its folds side by side, fp32 as
    three TF32 products on W_hh split on the host (_tf32_parts); shared memory as
    _stacked_bytes; prefetch: the loads a step needs from memory written before the
    launch (the forward's gi, the backward's saved gates, dL/dout and the states) are
    issued a step ahead, so their latency overlaps the step before instead of adding to
    it (at T·B·H where they have left L2, HBM's latency every step of the backward);
    narrow (tl.dot on 16-bit weights, not stamped): the state (the backward's gradients) is
    exchanged in the weights' dtype instead of fp32, half the bytes every program reads
    from L2 at every step, with no number changed: tl.dot rounds its operand to that dtype
    all the same; split16 (a stacked split on fp32 weights): the three products on the
    tensor cores in fp16 instead of TF32, on W's two fp16 parts and the operand's (the
    state; the backward's gradients), W's rows and the operand's columns each scaled by
    a power of two into ±1 (_fp16_parts, _stacked_dot): 22 bits of each row's and
    column's largest at twice TF32's rate and in half its shared memory, where the
    forward's split fits up to H=1024 and the backward's up to 512; chunked (resident
    broadcast tiles, not K-major, block_k ≥ LANES, fewer than 16 rows or units): the
    product over K in chunks of a warp's lanes, each thread summing its chunks before the
    lanes meet (_chunked_product), where the plain broadcast product's sum over K is all
    shuffles between lanes and warps; W's tiles are laid out to match (_chunked_tiles);
    unit_lanes (chunked; 1, or a power of two up to slice): a warp's lanes along the
    units, the rest along K's chunks (_chunk_shape), and the warps along the units as far
    as they go, then along K, summed across warps through shared memory once per product:
    where a warp covers every unit of the program's, as at 8 warps of 8 units, each warp
    reads every operand value from shared memory; this way a warp reads 1 / (warps along
    K) of them; thread_units (chunked; 1, or a power of two, times unit_lanes at most
    slice): each thread's units at the same K, so that each operand value a thread reads
    from shared memory serves that many units (the backward's three gates summed in each
    thread before the lanes meet: _chunked_gates). Benchmark mode's candidates, not yet
    timed on a GPU (SPREAD_CHUNK_SHAPES); partials (the backward's; resident broadcast
    tiles, block_k ≥ LANES, none of the above but prefetch): each program multiplies its
    own units' gradients by its rows of W_hh, summing over its units within each thread,
    and the programs exchange these (B, H) partial products, each summing every
    program's at its own units (_publish_partials, _summed_partials): 2·P·B·H values
    through L2 a step, against P·B·3H when every program reads all the gradients (a
    third less; at B=16, H=1024, 128 programs, 16.8 MB against 25 MB; reset_before's
    two exchanges a step 33.6 against 25); a benchmark-mode candidate, not yet timed on
    a GPU; groups (1, or 2 with resident broadcast tiles, not stamped, K-major or
    prefetch): the tile's rows in that many groups, each its own recurrence with its own
    barrier, whose steps a program takes in turn, so that each group's barrier and
    exchange are under way while the other computes (_forward_step; the backward's step
    in two phases, rotated between the groups: _backward_gates, _backward_carry); a
    benchmark-mode candidate, not yet timed on a GPU."""

    block_batch: int
    slice: int
    block_k: int
    dot: bool
    warps: int = 4
    precision: str = "tf32x3"
    resident: bool = False
    stamped: bool = False
    kmajor: bool = False
    stacked: bool = False
    prefetch: bool = False
    narrow: bool = False
    split16: bool = False
    chunked: bool = False
    unit_lanes: int = 1
    thread_units: int = 1
    partials: bool = False
    groups: int = 1


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


# The most W elements a program keeps resident (3 gates × units × K): B=1, H=1024's split
# (8 units), which ptxas compiles to 255 registers per thread at 4 warps without spilling
# (sm_90); larger tiles would spill.
RESIDENT_MAX = 3 * 8 * 1024

# The most hidden units a program takes (tl.dot on streamed W; 128 need more shared memory
# than an SM has, fp32): a tile's programs must all be resident at once (the barrier), so
# H ≤ MAX_UNITS × multiprocessors (``max_hidden``).
MAX_UNITS = 64


def max_hidden(device: torch.device) -> int:
    """The largest hidden size the kernels run on this device (every program of a batch
    tile resident at once, MAX_UNITS units each)."""
    return MAX_UNITS * _grid_limit(device)


# The largest block of words (rows × K) a default resident forward split reads stamped
# (``Config.stamped``) instead of after a barrier: B=1's blocks up to H=1024, and by the
# same count B=2 up to H=512, B=3-4 up to 256, B=5-8 up to 128 (not timed). Measured in
# benchmark mode on an H200 (2026-11-27, scripts/gpu_tune.sh): stamped, B=1's forward
# 1.05-1.36x faster at H=256-1024 (fp32 and bf16), but the B=16, H=256 block (4096
# words) 0.88x and every backward split 0.85-0.97x (choose_backward_config: never).
STAMPED_MAX_WORDS = 1024


# A chunked split's (Config.chunked) STAMPED_MAX_WORDS: at B=1 (H200, 2026-11-27) the
# stamped exchange won at H=512 (forward 1.61 → 1.21 µs per step), the barrier at H=1024
# (1.62 against 1.74 stamped).
CHUNKED_STAMPED_MAX_WORDS = 512


def _stamped_where_set(cfg: Config, device: torch.device, dtype: torch.dtype) -> Config:
    """cfg, stamped where STAMPED_MAX_WORDS (chunked: CHUNKED_STAMPED_MAX_WORDS) allows: a
    resident split on CUDA in fp32 arithmetic (not fp64) whose blocks hold at most that
    many words."""
    most = CHUNKED_STAMPED_MAX_WORDS if cfg.chunked else STAMPED_MAX_WORDS
    if device.type == "cuda" and dtype != torch.float64 and cfg.resident and \
            cfg.block_batch * cfg.block_k <= most:
        return cfg._replace(stamped=True)
    return cfg


# The smallest K a default split sums in chunks (Config.chunked): measured on an H200
# (benchmark mode, fp32, 2026-11-27), chunked won at K=512 and 1024 (B=1 forward 1.2-1.5x,
# backward 1.1x; B=16 forward 1.3x and 2.3x, backward 1.4x and 1.5x) and lost at K=256
# (B=1: 0.94x forward, 0.99x backward).
CHUNKED_MIN_K = 512


def _chunked_where_set(cfg: Config, device: torch.device, dtype: torch.dtype) -> Config:
    """cfg, chunked (``Config.chunked``) where it was measured to win: a split that can be
    (_can_chunk) on CUDA with K ≥ CHUNKED_MIN_K, at 4 warps or, at 8, K ≥ 1024 (B=16,
    H=512: 4 units at 8 warps chunked took 19.9 µs a step against 9.55 unchunked, H200;
    8 units of K=1024 at 8 warps won, 14.8 against 22.5)."""
    if device.type == "cuda" and dtype != torch.float64 and _can_chunk(cfg) and \
            cfg.block_k >= CHUNKED_MIN_K and (cfg.warps <= 4 or cfg.block_k >= 1024):
        return cfg._replace(chunked=True)
    return cfg


def _narrow_where_set(cfg: Config, device: torch.device, dtype: torch.dtype) -> Config:
    """cfg, narrow (``Config.narrow``: its exchange in 16 bits) where it can be: tl.dot on
    16-bit weights, not stamped, on CUDA. Benchmark mode's candidates only, until timed on
    a GPU where it might matter (bf16 B=16 above H=256; its GPU tests pass): it halves
    what every program reads from L2 at every step (at B=16, H=1024 the backward's 128
    programs read all 16 × 3H gradients, 25 MB a step in fp32) and changes no number."""
    return cfg._replace(narrow=True) if device.type == "cuda" and _can_narrow(cfg, dtype) else cfg


def _can_chunk(cfg: Config) -> bool:
    """Whether cfg can be ``Config.chunked``: resident broadcast tiles, not K-major, K at
    least a warp's lanes, and fewer than 16 rows or 16 units (with both, Triton 3.6's
    combine pass fails on the product, taking it for a tl.dot: sm_90a, 2026-11-27; 3.9
    compiles it); with ``Config.unit_lanes`` and ``Config.thread_units``, powers of two
    whose product is at most the units, and K a whole number of _chunk_shape's chunks
    across its warps."""
    lanes, inner = cfg.unit_lanes, cfg.thread_units
    if not (cfg.resident and not (cfg.dot or cfg.kmajor or cfg.stacked) and
            cfg.block_k >= WARP_LANES and min(cfg.block_batch, cfg.slice) < 16 and
            min(lanes, inner) >= 1 and lanes & (lanes - 1) == 0 and inner & (inner - 1) == 0
            and lanes <= WARP_LANES and lanes * inner <= cfg.slice):
        return False
    chunk, kwarps = _chunk_shape(cfg)
    return cfg.block_k % (chunk * kwarps) == 0


def _can_partial(cfg: Config) -> bool:
    """Whether cfg's backward can be ``Config.partials``: resident broadcast tiles with K
    a power of two, at least a warp's lanes (its tiles cover K in whole chunks of them),
    and none of the other products or exchanges (prefetch aside)."""
    return cfg.resident and cfg.block_k >= WARP_LANES and _pow2(cfg.block_k) == cfg.block_k \
        and not (
        cfg.dot or cfg.stamped or cfg.kmajor or cfg.stacked or cfg.narrow or cfg.split16 or
        cfg.chunked)


def _can_group(cfg: Config) -> bool:
    """Whether cfg can take its rows in ``Config.groups`` groups: 1, or 2 with resident
    broadcast tiles, not stamped (no barrier to wait at), K-major or prefetch, and an even
    block_batch."""
    return cfg.groups == 1 or (cfg.groups == 2 and cfg.block_batch % 2 == 0 and
                               cfg.resident and not (cfg.dot or cfg.stamped or cfg.kmajor or
                                                     cfg.stacked or cfg.prefetch))


def _chunk_shape(cfg: Config) -> tuple[int, int]:
    """A ``Config.chunked`` product's chunk (a warp's lanes along K) and its warps along K:
    with ``Config.unit_lanes`` u, chunks of LANES / u; the warps along the units as far
    as slice / (u · thread_units) go, the rest along K; (32, 1) at unit_lanes and
    thread_units 1."""
    if (cfg.unit_lanes, cfg.thread_units) == (1, 1):  # (Triton's layout: warps along
        return WARP_LANES, 1  # the units, any left over along the chunks)
    outer = max(1, cfg.slice // cfg.thread_units)
    unit_warps = max(1, min(cfg.warps, outer // cfg.unit_lanes))
    return WARP_LANES // cfg.unit_lanes, max(1, cfg.warps // unit_warps)


def _can_narrow(cfg: Config, dtype: torch.dtype) -> bool:
    """Whether cfg's exchange may be 16-bit with weights of this dtype: tl.dot on 16-bit
    weights (which rounds its operand so anyway), not the stamped exchange (fp32 words)."""
    return cfg.dot and not cfg.stamped and dtype in SIXTEEN_BIT


def choose_config(batch: int, hidden: int, device: torch.device, dtype: torch.dtype,
                  save: bool = False) -> Config:
    """The default split for a call's forward (``save``: a training call's, which saves
    the gates for the backward), from timings on an H100 and an H200 (docs/performance.md).

    Batch ≤ 16: one tile, as many programs as multiprocessors (a few hidden units each),
    the broadcast product, W's tiles resident in registers where one tile covers H (the
    forward 1.04-2.0x faster at B=1, H=256-1024 on an H100, 2026-11-27), and at batch 2-8
    where they fit though such a tile wouldn't (_broadcast_split), the product over K in
    chunks from K=512 (``_chunked_where_set``), read stamped where the block is small
    (STAMPED_MAX_WORDS, CHUNKED_STAMPED_MAX_WORDS). At batch 9-16 (a 16-row tile), in fp32
    arithmetic (not fp64), from benchmark mode's timings on an H200 (2026-11-27): at
    H=129-256 four 4-row tiles, 8 units per program at 8 warps, K-major (2.1-2.2x faster
    than one 16-row tile); above H=256 in fp32 a program per multiprocessor with its
    units' W tiles resident and the product chunked (``_spread_resident``; 1.3x faster
    than the stacked tiles at H=512, 2.3x than tl.dot at H=1024), else (and in 16 bits)
    the stacked tiles on the tensor cores where they fit (_stacked_default; 16-bit 1.6-1.8x
    faster than the next best), else 32 units per program and tl.dot on streamed W
    (three-pass TF32 for fp32, whose error stays at fp32's level). Batch > 16: tiles of up
    to 64 rows, 16 units per program and tl.dot: the broadcast product was slower there,
    erratically so.
    """
    hp = _pow2(hidden)
    if device.type != "cuda":  # the interpreter: one program per tile, whole loop (and,
        # as the GPU default at small batches, W resident)
        return Config(_pow2(min(batch, 16)), hp, hp, dot=False,
                      resident=dtype != torch.float64)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    if batch <= 16 or dtype == torch.float64:  # (fp64 has no tl.dot here)
        block_batch = _pow2(min(batch, 16))
        if block_batch == 16 and dtype != torch.float64:
            if hp == 256 and -(-batch // 4) * (hp // 8) <= sms:  # (all tiles at once)
                # 4.1 → 1.9 µs per step at B=16 (fp32 and bf16, H200)
                return Config(4, 8, hp, dot=False, warps=8, resident=True, kmajor=True)
            if hidden > 256:
                spread = _spread_resident(hidden, device)
                if dtype == torch.float32 and spread is not None:
                    spread = _chunked_where_set(spread, device, dtype)
                    if spread.chunked:  # fp32 H=512 4.25 → 3.28 µs per step, H=1024
                        # 15.7 → 6.9 (H200); unchunked, it lost to the stacked split
                        return spread
                stacked = _stacked_default(hidden, device, dtype, forward=True, save=save)
                if stacked is not None:  # fp32 H=512 6.5 → 4.2; bf16 H=1024 7.0 → 3.8
                    return stacked
                return _streamed_dot(hidden, sms)
        return _stamped_where_set(
            _chunked_where_set(_broadcast_split(batch, hidden, sms, dtype), device, dtype),
            device, dtype)
    block_batch = _pow2(min(batch, 64))
    tiles = min(-(-batch // block_batch), sms)
    # ≤ 64 units per program: 128 need more shared memory than an SM has (fp32); more
    # tiles than fit at once run in several launches (_launch)
    slice_ = min(MAX_UNITS, max(16, _pow2(-(-hidden // max(1, sms // tiles)))))
    return Config(block_batch, slice_, 64, dot=True)


def _streamed_dot(hidden: int, sms: int) -> Config:
    """A 16-row tile's split with W streamed through the caches: tl.dot, 32 units per
    program (measured fastest at H=1024 on an H100), or up to 64 where 32 would need more
    programs than the card's multiprocessors (128 need more shared memory than an SM has,
    fp32: larger H runs on no split, MAX_UNITS)."""
    return Config(16, max(32, min(MAX_UNITS, _pow2(-(-hidden // sms)))), 64, dot=True)


def _broadcast_split(batch: int, hidden: int, sms: int, dtype: torch.dtype) -> Config:
    """Batch ≤ 16's general split: one tile of the batch's rows (rounded up to a power of
    two), as many programs as multiprocessors, the broadcast product, W's tiles resident
    where one tile covers H and fits RESIDENT_MAX (not fp64)."""
    block_batch = _pow2(min(batch, 16))
    tiles = min(-(-batch // block_batch), sms)
    slice_ = _pow2(-(-hidden // max(1, sms // tiles)))
    budget = 32768 if slice_ >= 16 else 8192  # elements of the (BB, S, BK) product
    block_k = max(8, min(_pow2(hidden), budget // (block_batch * slice_)))
    # W's tiles in registers where one tile covers H: measured on an H100 (fp32, B=1)
    # 2.57 → 2.38 µs per step at H=256, 3.12 → 2.23 at H=512, 5.96 → 2.96 at H=1024
    cfg = Config(block_batch, slice_, block_k, dot=False,
                 resident=block_k >= hidden and dtype != torch.float64
                 and 3 * slice_ * block_k <= RESIDENT_MAX)
    hp = _pow2(hidden)
    if not cfg.resident and batch <= 8 and dtype != torch.float64:
        # where a tile of 2-8 rows would stream W through the product in chunks of K: its
        # units' tiles resident instead, K whole and summed in chunks (Config.chunked), 8
        # warps from H=1024, where they fit. fp32, H200 (2026-11-27, benchmark mode), µs
        # per step forward / backward: B=4, H=1024 14.0 → 2.9 / 16.9 → 6.2; B=8, H=512
        # 7.1 → 2.8 / 10.6 → 5.1; B=8, H=1024 40.9 → 4.5 / 41.6 → 9.8
        wide = _chunked_where_set(Config(block_batch, slice_, hp, dot=False,
                                         warps=8 if hp >= 1024 else 4, resident=True),
                                  torch.device("cuda"), dtype)  # (a CUDA split)
        if 3 * slice_ * hp <= RESIDENT_MAX and wide.chunked:
            return wide
    return cfg


def choose_backward_config(batch: int, hidden: int, device: torch.device,
                           dtype: torch.dtype) -> Config:
    """The backward's split: the forward's, never stamped (0.85-0.97x at B=1; H200), W_hhᵀ's
    tiles resident where the forward's W tiles are (the backward kernel 1.07-1.55x faster
    so at B=1, H=256-1024 and B=16, H=256; H200, fp32, 2026-11-27), K-major where the
    forward is (B=16, H=256: 6.8 → 4.0 µs per step, fp32 and bf16, H200), chunked where the
    forward is; at batch 9-16 above H=256 the stacked tiles where they fit (16-bit:
    1.6-1.7x faster than tl.dot), else in fp32 a program per multiprocessor with its
    units' tiles resident where they fit (``_spread_resident``): 1.45x faster than 4
    units per program unresident at H=512, 1.66x than tl.dot's 32 units at H=1024, and
    its product chunked 1.4-1.5x faster again (H200; scripts/gpu_probe_backward.py,
    docs/performance.md)."""
    cfg = choose_config(batch, hidden, device, dtype)._replace(stamped=False)
    if device.type == "cuda" and cfg.block_batch == 16 and hidden > 256 and \
            dtype != torch.float64:
        stacked = _stacked_default(hidden, device, dtype, forward=False)
        if stacked is not None:  # bf16 10.2 → 6.0 µs per step at H=512, 16.5 → 10.5 at 1024
            return stacked
        spread = _spread_resident(hidden, device)
        if dtype == torch.float32 and spread is not None:
            # 15.3 → 10.6 µs per step at H=512, 38.8 → 23.4 at H=1024 (H200); chunked
            # 9.55 → 6.84 at H=512, 22.5 → 14.8 at H=1024 (H200)
            return _chunked_where_set(spread, device, dtype)
        # (the forward's stacked split, where the backward's operand doesn't fit)
        return _streamed_dot(hidden, _grid_limit(device)) if cfg.stacked else cfg
    return cfg


def _stacked_default(hidden: int, device: torch.device, dtype: torch.dtype,
                     forward: bool, save: bool = False) -> Config | None:
    """The stacked split a 16-row tile takes by default (H > 256), or None where none fits
    (_stacked_splits): the fewest units per program, except the 16-bit forward's 8, or 16
    where it saves the gates (``save``). H200, 2026-11-27, benchmark mode, µs per step: fp32
    H=512 forward 4 units 4.18 (training 3.98), 8 units 4.44 (4.47); bf16 inference H=512
    8 units 2.61, 4 units 2.77, 16 units 3.43, H=1024 8 units 3.77, 16 units 5.84; bf16
    training H=512 16 units 2.43, 8 units 2.69, 4 units 2.92, H=1024 16 units 3.35, 8 units
    3.78; bf16 backward H=512 4 units 6.04, 8 units 7.46."""
    splits = _stacked_splits(hidden, device, dtype, forward)
    if not splits:
        return None
    if forward and dtype != torch.float32:
        return next((c for c in splits if c.slice == (16 if save else 8)), splits[-1])
    return splits[-1]


def _spread_resident(hidden: int, device: torch.device) -> Config | None:
    """A 16-row tile spread over one program per multiprocessor, each holding its units'
    W tiles resident (4 units at H=512 on 132 SMs, 8 at H=1024 with 8 warps: 4 would
    spill), where those tiles fit in RESIDENT_MAX; else None."""
    hp = _pow2(hidden)
    slice_ = _pow2(-(-hidden // _grid_limit(device)))
    if 3 * slice_ * hp > RESIDENT_MAX:
        return None
    return Config(16, slice_, hp, dot=False, warps=4 if slice_ * hp <= 2048 else 8,
                  resident=True)


# ---- benchmark mode: the fastest split on this card, measured at the first call -------------

# torch.backends.cudnn.benchmark's counterpart. The default splits were measured on an
# H100 and an H200; with ``benchmark = True`` the first call of each kind (inference
# forward, training forward, backward), batch, hidden size, dtype, formulation and length
# bucket (up to TUNE_STEPS) runs the splits of _candidates on its first TUNE_STEPS steps,
# leaves out those that fail or disagree with the default, and keeps the fastest for the
# later calls of that kind in this process (_split). The splits change the order of the
# fp32 sums, and those on the tensor cores make fp32 products of three TF32 ones
# (differences ~1e-7 to 1e-6). The first call also compiles each candidate:
# seconds. Not under CUDA graph capture, which can't wait for a timing: there, a split
# measured before, else the default. ``trials`` keeps what was measured.
benchmark = False
TUNE_STEPS = 256
_tuned: dict[tuple, Config] = {}
trials: dict[tuple, dict[Config, float | str]] = {}  # seconds, or why a split was left out


def _candidates(default: Config, batch: int, hidden: int, device: torch.device,
                dtype: torch.dtype, forward: bool) -> list[Config]:
    """The splits benchmark mode times for a call (``forward``: the forward's, else the
    backward's), its default first: a resident broadcast default with the other exchange
    (stamped or barrier), and each of these two with the product over K in chunks or not
    (``Config.chunked``); on CUDA the default with its reads a step ahead or not
    (``Config.prefetch``; not yet timed on a GPU); and the default with the other exchange
    where a 16-bit one can be (``Config.narrow``; timed on a GPU only at bf16 B=16, H=256;
    the others narrow where they can be); at batch 9-16, H ≤ 256, smaller row tiles with W
    resident (each its own recurrence), K-major and row-major, and one 16-row tile
    (_broadcast_split); at batch 9-16 above H=256, tl.dot on streamed W and, in fp32, the
    resident spread split unchunked (in any dtype chunked, at 8 warps and up to H=512 at
    4, and in SPREAD_CHUNK_SHAPES's shapes; the backward's also exchanging partial
    products, in PARTIAL_SPREADS's, and chunked in two groups of rows, in
    GROUPED_SPREADS's: not yet timed on a GPU), in 16 bits up to
    H=1024 tl.dot on resident tiles (16 units, and 32 where they fit in shared memory; not
    yet timed on a GPU), and at H=257-512 two 8-row or four 4-row
    tiles with W resident; at batch ≤ 16, the stacked tiles on the tensor cores where they
    fit (_stacked_splits; below 16 rows their tile's other rows idle, for a barrier of
    16-128 programs), and at batch 9-16 fp32's stacked splits on fp16 parts
    (``Config.split16``: the forward's up to H=1024, the backward's up to 512; not yet
    timed on a GPU). Off CUDA (the interpreter: one program per
    tile), the default, stamped, each chunked or not, and with W streamed."""
    found = [default]
    fp32_arithmetic = dtype != torch.float64
    if default.resident and fp32_arithmetic and not (default.stacked or default.kmajor):
        found.append(default._replace(stamped=not default.stamped))
    # (the resident broadcast splits with the product over K in chunks, Config.chunked,
    # and without where the default is)
    found += [cfg._replace(chunked=not cfg.chunked) for cfg in list(found) if _can_chunk(cfg)]
    if device.type != "cuda":
        found.append(default._replace(resident=False, stamped=False))
        return found
    found.append(default._replace(prefetch=not default.prefetch))
    hp = _pow2(hidden)
    if 8 < batch <= 16 and fp32_arithmetic:
        one_tile = _broadcast_split(batch, hidden, _grid_limit(device), dtype)
        if hidden <= 256:
            found += [Config(4, 8, hp, dot=False, warps=8, resident=True, kmajor=True),
                      Config(4, 8, hp, dot=False, resident=True),
                      Config(2, 16, hp, dot=False, resident=True), one_tile]
        else:
            spread = _spread_resident(hidden, device)
            found += [Config(16, 32, 64, dot=True)] + (
                [spread] if spread is not None and dtype == torch.float32 else [])
            if spread is not None and _can_chunk(spread):  # (chunked at 8 warps, and at 4
                # up to H=512: ptxas, sm_90a, at most 100 bytes spilled; 4 warps at H=1024
                # spill 18 KB)
                found += [spread._replace(warps=w, chunked=True)
                          for w in ((4, 8) if hp <= 512 else (8,))]
                found += [spread._replace(warps=w, chunked=True, unit_lanes=u, thread_units=i)
                          for w, u, i in SPREAD_CHUNK_SHAPES.get(
                              (spread.slice, hp, forward), ())]
            if spread is not None and not forward:
                found += [spread._replace(warps=w, partials=True)
                          for w in PARTIAL_SPREADS.get((spread.slice, hp), ())]
            if spread is not None:
                found += [spread._replace(warps=w, chunked=True, unit_lanes=u, thread_units=i,
                                          groups=2)
                          for w, u, i in GROUPED_SPREADS.get((spread.slice, hp, forward), ())]
            if hp == 512:  # smaller row tiles, W resident (ptxas, sm_90a: no spills)
                found += [Config(8, 8, hp, dot=False, resident=True),
                          Config(4, 16, hp, dot=False, warps=8, resident=True)]
            if dtype != torch.float32 and hp <= 1024:
                # 16-bit: tl.dot on W's tiles held all the loop (mma.sync, M = 16 rows:
                # none of the stacked tiles' idle rows and folds), 16 or 32 units at 8
                # warps (ptxas, sm_90a: no spills), where they fit in shared memory: 32
                # units of K=1024 take 256 KiB, over an SM's 227 (OutOfResources on an
                # H200, 2026-11-27)
                found += [Config(16, s, hp, dot=True, warps=8, resident=True)
                          for s in (16, 32) if s * hp <= 16 * 1024]
    if batch <= 16 and fp32_arithmetic:
        found += _stacked_splits(hidden, device, dtype, forward)
        if batch > 8:  # (fp32's forward on fp16 parts: not yet timed on a GPU)
            found += _stacked_splits(hidden, device, dtype, forward, True)
    # (16-bit exchanges where they can be, and the default with the other exchange)
    found = [found[0]] + [_narrow_where_set(cfg, device, dtype) for cfg in found[1:]]
    if default.narrow or _narrow_where_set(default, device, dtype).narrow:
        found.insert(1, default._replace(narrow=not default.narrow))
    # (not the splits whose programs for one tile can't all be resident on this card)
    limit = _grid_limit(device)
    return [cfg for cfg in dict.fromkeys(found)
            if cfg == default or -(-hidden // cfg.slice) <= limit]


# Benchmark mode's chunked spread splits with a warp's lanes along the units and K's chunks
# over warps (Config.unit_lanes, Config.thread_units), at batch 9-16: (units, K, forward)
# → (warps, unit_lanes, thread_units). Chosen offline, not yet timed on a GPU: by
# scripts/sass_profile.py (sm_90a, fp32, B=16, 132 SMs), those whose time loop reads the
# fewest shared-memory bytes and shuffles least (ldmatrix ×4 + shuffles a thread, times
# warps: the backward's largest floor) without spilling more than a few words:
#   H=512 forward, 4 warps: 1984 → 1696 (4, 1); backward 4032 → 2064 (2, 2) at 4 warps,
#   2608 at 8; H=1024 forward, 8 warps: 6016 → 5440 (4, 1), 4736 (4, 2); backward
#   14208 → 7040 (4, 2), 7232 (2, 2).
SPREAD_CHUNK_SHAPES = {
    (4, 512, True): ((4, 4, 1),),
    (4, 512, False): ((4, 2, 2), (8, 2, 2)),
    (8, 1024, True): ((8, 4, 1), (8, 4, 2)),
    (8, 1024, False): ((8, 4, 2), (8, 2, 2)),
}


# Benchmark mode's spread backward splits exchanging partial products (Config.partials), at
# batch 9-16: (units, K) → warps. Chosen offline, not yet timed on a GPU: by
# scripts/sass_profile.py (sm_90a, fp32, B=16, 132 SMs; warp-instructions a step per
# multiprocessor, against the chunked splits' in SPREAD_CHUNK_SHAPES): H=512 6,396 at 4
# warps (108 bytes spilled), 7,624 at 8 (none; chunked 8,168 as timed, 6,992 at (4, 2,
# 2)); H=1024 21,440 at 8 warps (512 bytes spilled; chunked 24,120 as timed, 21,136 at
# (8, 4, 2)). What they save is what the count leaves out: a third of the exchange
# through L2 (H=1024: 16.8 MB a step against 25) and nearly all the shared-memory reads
# of the operand (each thread reads the program's own gradients, the same words as
# every other thread: broadcasts).
PARTIAL_SPREADS = {(4, 512): (4, 8), (8, 1024): (8,)}


# Benchmark mode's chunked spread splits with the tile's rows in two groups (Config.groups),
# at batch 9-16: (units, K, forward) → (warps, unit_lanes, thread_units). Not yet timed on a
# GPU. What they may save is a step's wait: at fp32 B=16 the chunked forward took ~1.5 µs
# a step more than its instructions (H200: 3.28 µs at H=512, 6.91 at 1024, for 6,472 and
# 19,592 warp-instructions a multiprocessor: 1.5 µs + 0.28 ns each), about a B=1 step,
# which is mostly the barrier and the exchange's latency (the backward's B=1 step: 2.5-3.5
# µs). Two groups take their steps in turn, so each group's barrier and exchange are under
# way while the other computes. They cost 4-8% more instructions (scripts/sass_profile.py,
# sm_90a, fp32, a multiprocessor's warp-instructions a step: training H=512 6,544 → 7,076
# at 4 warps, H=1024 19,736 → 20,736 at 8, 19,928 with unit_lanes 4; backward H=512
# 8,168 → 8,732, H=1024 24,120 → 25,152, (8, 4, 2) 21,136 → 21,984), up to 96 bytes
# spilled. (The partials backward in two groups spilled 3.6 KB at H=1024: left out.)
GROUPED_SPREADS = {
    (4, 512, True): ((4, 1, 1),),
    (4, 512, False): ((4, 1, 1),),
    (8, 1024, True): ((8, 1, 1), (8, 4, 1)),
    (8, 1024, False): ((8, 1, 1), (8, 4, 2)),
}


# The most shared memory a stacked split (Config.stacked) benchmark mode tries may need
# (_stacked_bytes), of an H100's 227 KiB.
STACKED_MAX_BYTES = 200 * 1024


def _stacked_bytes(hidden: int, slice_: int, dtype: torch.dtype, forward: bool,
                   split16: bool = False) -> int:
    """Shared memory of a stacked split: its tile, 64 rows of K / F (fp32: W's two parts;
    16-bit: W), and the operand it multiplies, K / F by F·16 columns (the backward's:
    4F·16, the four gate slots; fp32: two parts; split16: two fp16 parts of each). ptxas
    (sm_90a, Triton 3.6) gives these to the byte for the forward's: fp32 H=256 (slice
    16) 160 KiB, H=512 (8) 192 KiB."""
    folds = 16 // slice_
    k = max(16, _pow2(hidden)) // folds
    size = 4 if split16 else 8 if dtype == torch.float32 else 2
    return (64 + folds * 16 * (1 if forward else 4)) * k * size


def _stacked_splits(hidden: int, device: torch.device, dtype: torch.dtype,
                    forward: bool, split16: bool = False) -> list[Config]:
    """The stacked splits of a 16-row tile at this H, for the forward or the backward: 16,
    8 or 4 units per program (1, 2 or 4 folds of K), where the programs fit on the device
    at once and _stacked_bytes within STACKED_MAX_BYTES; ``split16``: fp32's in fp16
    parts (``Config.split16``; none in other dtypes)."""
    if split16 and dtype != torch.float32:
        return []
    hp = max(16, _pow2(hidden))
    return [Config(16, s, max(hp, 256 // s), dot=True, resident=True, stacked=True,
                   split16=split16)
            for s in (16, 8, 4)
            if -(-hidden // s) <= _grid_limit(device) and
            _stacked_bytes(hidden, s, dtype, forward, split16) <= STACKED_MAX_BYTES]


def _fastest(default: Config, candidates: list[Config], run, device: torch.device,
             dtype: torch.dtype) -> tuple[Config, dict]:
    """The fastest of the candidates that run and give the default's result (its first
    tensor, within the dtype's rounding), and the trial: each split's seconds
    (time_interleaved), or why it was left out. The default runs first: its error is the
    call's."""
    if len(candidates) == 1:
        return default, {}
    want = run(default)[0]
    tol = 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2
    trial, runs = {}, {default: lambda: run(default)}
    for cfg in candidates[1:]:
        try:
            got = run(cfg)[0]
        except Exception as e:  # (a split this card can't run: left out)
            if isinstance(e, getattr(torch, "AcceleratorError", ())):
                raise  # (a CUDA error leaves the context unusable: not the split's alone)
            trial[cfg] = f"{type(e).__name__}: {str(e)[:200]}"
            continue
        if not torch.allclose(got, want, rtol=tol, atol=tol * float(want.abs().amax()),
                              equal_nan=True):
            trial[cfg] = "its result differs from the default's"
            continue
        runs[cfg] = lambda c=cfg: run(c)
    trial.update(time_interleaved(runs, device))
    return min(runs, key=trial.get), trial


def _split(kind: str, batch: int, hidden: int, steps: int, device: torch.device,
           dtype: torch.dtype, key: tuple, run, save: bool = False,
           weights: torch.dtype | None = None) -> Config:
    """A call's split: the default (choose_config, ``save`` for a training forward; for
    the backward, choose_backward_config), or in benchmark mode the fastest of
    _candidates, run with ``run(cfg)`` at the first call of each kind, shape, length
    bucket and ``key``; each as the weights (``weights``, else ``dtype``) allow
    (_for_weights)."""
    weights = weights or dtype
    default = _for_weights(
        choose_config(batch, hidden, device, dtype, save) if kind == "forward" else
        choose_backward_config(batch, hidden, device, dtype), weights)
    if not (benchmark and steps and batch):
        return default
    key = (kind, device, batch, hidden, dtype, min(steps, TUNE_STEPS).bit_length(), *key,
           *((weights,) if weights != dtype else ()))
    if key not in _tuned:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return default
        candidates = _candidates(default, batch, hidden, device, dtype, kind == "forward")
        candidates = list(dict.fromkeys(_for_weights(c, weights) for c in candidates))
        _tuned[key], trials[key] = _fastest(default, candidates, run, device, dtype)
    return _tuned[key]


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _launch(kernel, cfg: Config, batch: int, hidden: int, steps: int, args, **consts):
    """Run ``kernel`` over all rows and steps, in batch chunks that keep every program of a
    launch resident at once (the barrier needs that)."""
    device = args[0].device
    if cfg.resident and cfg.block_k < hidden:
        raise ValueError(f"a resident split needs block_k ≥ hidden ({hidden}); got "
                         f"{cfg.block_k}")
    if cfg.stamped and consts["ACC"] == tl.float64:
        raise ValueError("a stamped split carries fp32 values: it can't run float64")
    if cfg.kmajor and not (cfg.resident and not cfg.dot):
        raise ValueError("a kmajor split needs resident tiles and the broadcast product")
    if cfg.stacked and not (cfg.resident and cfg.dot and cfg.block_batch == 16 and
                            cfg.slice in (4, 8, 16) and cfg.block_k * cfg.slice >= 256 and
                            not cfg.kmajor and consts["ACC"] != tl.float64):
        raise ValueError("a stacked split needs tl.dot, resident tiles, block_batch 16, "
                         "slice 4, 8 or 16 and block_k ≥ 16 per fold (16 / slice folds); "
                         "not float64, not kmajor")
    if cfg.split16 and not (cfg.stacked and consts["ACC"] == tl.float32):
        raise ValueError("a split16 split is a stacked split on fp32 weights")
    if cfg.chunked and not _can_chunk(cfg):
        raise ValueError(f"a chunked split needs resident tiles, the broadcast product (not "
                         f"kmajor), block_k ≥ {WARP_LANES}, fewer than 16 rows or units, and "
                         f"unit_lanes and thread_units powers of two, their product at most "
                         f"the slice, whose chunks divide block_k; got {cfg}")
    if (cfg.unit_lanes, cfg.thread_units) != (1, 1) and not cfg.chunked:
        raise ValueError(f"unit_lanes and thread_units are a chunked split's: got {cfg}")
    if not _can_group(cfg):
        raise ValueError(f"groups is 1, or 2 on resident tiles with the broadcast product, an "
                         f"even block_batch, and no stamped, K-major or prefetch; got {cfg}")
    if cfg.partials and not _can_partial(cfg):
        raise ValueError(f"a partials split needs resident tiles, the broadcast product, "
                         f"block_k a power of two ≥ {WARP_LANES}, and no other product or "
                         f"exchange (prefetch aside); got {cfg}")
    programs = _programs(cfg, hidden, device)
    tiles_per_launch = _grid_limit(device) // programs
    chunk, kwarps = _chunk_shape(cfg)
    rows_per_launch = cfg.block_batch * tiles_per_launch
    for row0 in range(0, batch, rows_per_launch):
        tiles = -(-min(rows_per_launch, batch - row0) // cfg.block_batch)
        sync = torch.empty(1, dtype=torch.int32, device=device) if cfg.stamped else \
            torch.zeros(tiles * cfg.groups, dtype=torch.int32, device=device)  # (stamped:
        # unused)
        # a cooperative launch fails, rather than hangs, if the programs can't all be
        # resident at once
        launch = {} if INTERPRET else {"launch_cooperative_grid": True}
        with on_device(device):  # (kernels launch on the current CUDA device)
            kernel[(programs, tiles)](
                *args, sync, batch, hidden, row0, 0, steps, BB=cfg.block_batch,
                S=cfg.slice, BK=cfg.block_k, DOT=cfg.dot, PREC=cfg.precision,
                RESIDENT=cfg.resident, STAMPED=cfg.stamped, KMAJOR=cfg.kmajor,
                STACKED=cfg.stacked, PREFETCH=cfg.prefetch, NARROW=cfg.narrow,
                CHUNKED=cfg.chunked, CHUNK=chunk, KW=kwarps, SI=cfg.thread_units,
                num_warps=cfg.warps,
                **launch, **consts)


def _programs(cfg: Config, hidden: int, device: torch.device) -> int:
    """The programs of a batch tile, refused where they can't all run at once."""
    programs = -(-hidden // cfg.slice)
    if INTERPRET and programs > 1:
        raise ValueError("the Triton interpreter runs one program per batch tile: "
                         f"slice {cfg.slice} must cover all {hidden} hidden units")
    if programs > _grid_limit(device):
        raise ValueError(f"{programs} programs per batch tile can't all be resident on "
                         f"{_grid_limit(device)} multiprocessors: use a larger slice")
    return programs


def _grid_limit(device: torch.device) -> int:
    if device.type != "cuda":
        return 1 << 30
    return torch.cuda.get_device_properties(device).multi_processor_count


# ---- the core ----------------------------------------------------------------------------

def _empty(*shape: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Every buffer a kernel writes comes from here (the tests fill them with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _kernel_weights(w: Tensor, cfg: Config) -> tuple[Tensor, Tensor]:
    """W_hh (or W_hhᵀ) as the kernels read it, and the scale tensor they read with
    ``Config.split16``: contiguous, W itself the unread scale; for a stacked split in
    fp32, its TF32 high parts followed by its low parts (_tf32_parts), or with split16 its
    fp16 parts and their scales (_fp16_parts)."""
    w = w.contiguous()
    if cfg.split16:
        return _fp16_parts(w)
    if cfg.stacked and w.dtype == torch.float32:
        w = torch.cat(_tf32_parts(w))
    return w, w


def _for_weights(cfg: Config, dtype: torch.dtype) -> Config:
    """cfg for weights of this dtype (a caller's own mix with activations of another):
    not narrow unless they are 16-bit, not split16 unless fp32. For _split's splits;
    _check_weights refuses a split asked for by name."""
    return cfg._replace(narrow=cfg.narrow and dtype in SIXTEEN_BIT,
                        split16=cfg.split16 and dtype == torch.float32)


def _check_weights(cfg: Config, dtype: torch.dtype) -> None:
    """Refuse a split that can't run on weights of this dtype (_for_weights' rules)."""
    if cfg.narrow and not _can_narrow(cfg, dtype):
        raise ValueError("a narrow split exchanges 16-bit values: it needs tl.dot on 16-bit "
                         f"weights and no stamped exchange; got {dtype} and {cfg}")
    if cfg.split16 and dtype != torch.float32:
        raise ValueError(f"a split16 split is for fp32 weights; got {dtype}")


# fp32 w = hi + lo exactly, hi rounded to TF32 (the stacked splits' W_hh parts)
_tf32_parts = tf32x3.split


def _fp16_parts(w: Tensor) -> tuple[Tensor, Tensor]:
    """``Config.split16``: fp32 w (W_hh (3H, H), or W_hhᵀ (H, 3H)) as fp16 parts, each run
    of H along a row (W_hh's rows; W_hhᵀ's rows gate by gate) w = s·(hi + lo·2^-11) to
    ~2^-22 of the run's largest magnitude, hi then lo in one tensor, and the runs' scales
    s (3H,), made on the device (no wait for it): the powers of two above each run's
    largest magnitude (at most 2^127), so that w / s lies within ±1 (±2) and no part
    overflows fp16."""
    hidden = min(w.shape)
    runs = w.reshape(-1, hidden)
    top = torch.frexp(runs.abs().amax(1)).exponent.clamp_max(127)  # (fp32's largest / s < 2)
    s = torch.ldexp(torch.ones(runs.shape[0], device=w.device), top)
    ws = runs / s[:, None]
    hi = ws.half()
    lo = ((ws - hi.float()) * 2048.0).half()
    return torch.cat([hi.flatten(), lo.flatten()]), s


def forward(gi: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor, lengths: Tensor,
            reset_after: bool, save: bool, cfg: Config | None = None):
    """Returns out (T, B, H) in gi's dtype and the saved gates: with ``save``, r, z, n and
    (for reset_after=True) W_hn h + b_hn, each (T, B, H) in the arithmetic's dtype; else
    none."""
    steps, batch, _ = gi.shape
    hidden = h0.shape[-1]
    acc = torch.float64 if gi.dtype == torch.float64 else torch.float32
    if cfg is None:
        cfg = _split("forward", batch, hidden, steps, gi.device, gi.dtype, (reset_after, save),
                     lambda c: forward(gi[:TUNE_STEPS], h0, w_hh, b_hh, lengths, reset_after,
                                       save, c), save, w_hh.dtype)
    out = _empty(steps, batch, hidden, dtype=gi.dtype, device=gi.device)
    if save:
        saved = [_empty(steps, batch, hidden, dtype=acc, device=gi.device)
                 for _ in range(3 + reset_after)]
        gates = (*saved[:3], saved[3] if reset_after else saved[0])
    else:  # (the kernel writes no gates: out stands in for their pointers)
        saved, gates = [], (out,) * 4
    _check_weights(cfg, w_hh.dtype)
    if cfg.partials:
        raise ValueError(f"partials is a backward split's: got {cfg} for the forward")

    if cfg.stamped:  # every word stamped -1: no step yet (the kernel stamps h0 with 0)
        hbuf = torch.full((2 + (not reset_after), batch, hidden), -1, dtype=torch.int64,
                          device=gi.device)
    else:
        hbuf = _empty(2 + (not reset_after), batch, hidden,
                      dtype=w_hh.dtype if cfg.narrow else acc, device=gi.device)
        # (kmajor: each state transposed, (H, B), in the same space)
        hbuf[0] = h0.t().reshape(batch, hidden) if cfg.kmajor else h0
    rhbuf = hbuf[2] if not reset_after else hbuf
    if steps and batch:
        weights, scale = _kernel_weights(w_hh, cfg)
        args = (gi.contiguous(), h0.contiguous(), weights, b_hh.contiguous(), scale, lengths,
                out, hbuf, rhbuf, *gates)
        _launch(_forward_kernel, cfg, batch, hidden, steps, args, RESET_AFTER=reset_after,
                SAVE=save, ACC=_acc(gi.dtype), SPLIT16=cfg.split16, GROUPS=cfg.groups)
    return out, saved


def backward(dout: Tensor, h0: Tensor, w_hh: Tensor, out: Tensor, saved: list[Tensor],
             lengths: Tensor, reset_after: bool, cfg: Config | None = None):
    """Returns dgi (T, B, 3H), dh0 (B, H), dW_hh (3H, H), db_hh (3H,), in the arithmetic's
    dtype."""
    steps, batch, hidden = out.shape
    acc = saved[0].dtype
    if cfg is None:
        p = TUNE_STEPS
        cfg = _split("backward", batch, hidden, steps, out.device, out.dtype, (reset_after,),
                     lambda c: backward(dout[:p], h0, w_hh, out[:p], [s[:p] for s in saved],
                                        lengths, reset_after, c), weights=w_hh.dtype)
    _check_weights(cfg, w_hh.dtype)
    dgi = _empty(steps, batch, 3 * hidden, dtype=acc, device=out.device)
    dgh = _empty(steps, batch, 3 * hidden, dtype=acc, device=out.device) if reset_after else dgi
    dh = torch.zeros(batch, hidden, dtype=acc, device=out.device)
    ghn_s = saved[3] if reset_after else saved[0]
    consts = {}
    if cfg.partials:  # the partial products' two regions for each batch tile of a launch
        # (or each group of its rows)
        programs = _programs(cfg, hidden, out.device)
        tiles = min(-(-batch // cfg.block_batch), _grid_limit(out.device) // programs)
        xbuf = _empty(max(tiles, 1) * cfg.groups, 2, programs, _pow2(programs),
                      cfg.block_batch // cfg.groups, cfg.slice, dtype=acc, device=out.device)
        consts = {"PARTIALS": True, "PP": _pow2(programs)}
    elif cfg.stamped:  # the stamped exchange, every word stamped -1 (no step yet)
        xbuf = torch.full((2, batch, 3 * hidden), -1, dtype=torch.int64, device=out.device)
    elif cfg.kmajor or cfg.narrow:  # the K-major or 16-bit exchange (each step written
        # before it is read)
        xbuf = _empty(2, batch, 3 * hidden, dtype=w_hh.dtype if cfg.narrow else acc,
                      device=out.device)
    else:
        xbuf = dgh
    if steps and batch:
        # (partials: W_hh's own rows)
        weights, scale = _kernel_weights(w_hh if cfg.partials else w_hh.t(), cfg)
        args = (dout.contiguous(), h0.contiguous(), out, weights, scale, *saved[:3], ghn_s,
                lengths, dgi, dgh, dh, xbuf)
        _launch(_backward_kernel, cfg, batch, hidden, steps, args, RESET_AFTER=reset_after,
                ACC=_acc(acc), SPLIT16=cfg.split16, GROUPS=cfg.groups, **consts)
    # dW_hh over all steps, one GEMM: for bf16 outputs (fp32's range) on bf16 operands with
    # fp32 accumulation, as autograd does the input projection's (bf16 weights store the
    # gradient in bf16 anyway; under autocast, fp32 weights get it as autocast gives a
    # linear layer's; fp32 operands ran it on the CUDA cores, ~0.5 µs per step at B=16,
    # H=512); fp16 (a narrow range) and fp32 on the arithmetic's dtype
    gemm = torch.bfloat16 if out.dtype == torch.bfloat16 else acc
    h_prev = torch.cat([h0.unsqueeze(0), out[:-1]]).flatten(0, 1)  # (T·B, H)
    if reset_after:
        flat = dgh.flatten(0, 1)
        dw_hh = (tf32x3.mm(flat.t(), h_prev) if tf32x3.applies(flat, h_prev)  # (fp32:
                 else flat.to(gemm).t() @ h_prev.to(gemm))  # three TF32 GEMMs, if enabled)
    else:
        flat = dgi.flatten(0, 1)
        rh = (saved[0].flatten(0, 1) * h_prev.to(acc)).to(gemm)
        low = flat.to(gemm)
        dw_hh = torch.cat([low[:, : 2 * hidden].t() @ h_prev.to(gemm),
                           low[:, 2 * hidden:].t() @ rh])
    return dgi, dh, dw_hh.to(acc), flat.sum(0)


def _keep(ctx, gi, h0, w_hh, b_hh, lengths, reset_after, out, gates) -> None:
    """What a training call's backward needs (the op's and _Eager's)."""
    ctx.save_for_backward(h0, w_hh, out, lengths, *gates)
    ctx.reset_after = reset_after
    ctx.dtypes = gi.dtype, h0.dtype, w_hh.dtype, b_hh.dtype


def _gradients(ctx, dout, run) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """dgi, dh0, dW_hh, db_hh in the inputs' dtypes, from what _keep kept: ``run`` is
    ``backward`` or the op that calls it. Refuses create_graph=True: never a silent
    zero."""
    if torch.is_grad_enabled():
        raise RuntimeError("backend 'triton' has no double backward; use "
                           "backend='reference' for gradients of gradients")
    h0, w_hh, out, lengths, *gates = ctx.saved_tensors
    if dout is None:  # (no gradient reached the output)
        dout = torch.zeros_like(out)
    grads = run(dout, h0, w_hh, out, gates, lengths, ctx.reset_after)
    return tuple(g.to(dtype) for g, dtype in zip(grads, ctx.dtypes, strict=True))


class _Eager(torch.autograd.Function):
    """An eager training call: the op's forward and backward, the same kernels and
    numbers, without torch.library's dispatch, which costs host time before the kernels
    start (on this machine's CPU, the launches stubbed: ~30 µs a forward, ~70 µs a
    forward+backward). The op stays for torch.compile and the other special modes."""

    @staticmethod
    def forward(ctx, gi, h0, w_hh, b_hh, lengths, reset_after):
        out, saved = forward(gi, h0, w_hh, b_hh, lengths, reset_after, True)
        _keep(ctx, gi, h0, w_hh, b_hh, lengths, reset_after, out, saved)
        return out

    @staticmethod
    def backward(ctx, dout):
        return *_gradients(ctx, dout, backward), None, None


# ---- the op: torch.library, so torch.compile sees one opaque call -------------------------

def _gates_like(gi: Tensor, h0: Tensor, kept: int) -> Tensor:
    acc = torch.float64 if gi.dtype == torch.float64 else torch.float32
    return gi.new_empty(kept, gi.shape[1], h0.shape[-1], dtype=acc)


def _define_ops():
    @torch.library.custom_op("flashgru::triton_gru", mutates_args=())
    def gru_op(gi: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor, lengths: Tensor,
               reset_after: bool, save: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        out, saved = forward(gi, h0, w_hh, b_hh, lengths, reset_after, save)
        if not save:  # (the op's outputs all the same: empty, not saved)
            saved = [_gates_like(gi, h0, 0) for _ in range(3 + reset_after)]
        ghn = saved[3] if reset_after else _gates_like(gi, h0, 0)
        return out, saved[0], saved[1], saved[2], ghn

    @gru_op.register_fake
    def _(gi, h0, w_hh, b_hh, lengths, reset_after, save):
        kept = gi.shape[0] if save else 0
        out = gi.new_empty(gi.shape[0], gi.shape[1], h0.shape[-1])
        return (out, *(_gates_like(gi, h0, kept) for _ in range(3)),
                _gates_like(gi, h0, kept if reset_after else 0))

    @torch.library.custom_op("flashgru::triton_gru_backward", mutates_args=())
    def gru_backward_op(dout: Tensor, h0: Tensor, w_hh: Tensor, out: Tensor, r: Tensor,
                        z: Tensor, n: Tensor, ghn: Tensor, lengths: Tensor,
                        reset_after: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        saved = [r, z, n, ghn] if reset_after else [r, z, n]
        return backward(dout, h0, w_hh, out, saved, lengths, reset_after)

    @gru_backward_op.register_fake
    def _(dout, h0, w_hh, out, r, z, n, ghn, lengths, reset_after):
        steps, batch, hidden = out.shape
        return (r.new_empty(steps, batch, 3 * hidden), r.new_empty(batch, hidden),
                r.new_empty(3 * hidden, hidden), r.new_empty(3 * hidden))

    def setup_context(ctx, inputs, output):
        gi, h0, w_hh, b_hh, lengths, reset_after, save = inputs
        # the gates are the backward's, not the caller's: no gradient flows into them, and
        # none is made (autograd had filled four T·B·H fp32 tensors with zeros for them)
        ctx.mark_non_differentiable(*(output[1:] if save else output))
        ctx.set_materialize_grads(False)
        _keep(ctx, gi, h0, w_hh, b_hh, lengths, reset_after, output[0], output[1:])

    def backward_fn(ctx, dout, *_):
        def run(dout, h0, w_hh, out, gates, lengths, reset_after):
            return gru_backward_op(dout, h0, w_hh, out, *gates, lengths, reset_after)

        return *_gradients(ctx, dout, run), None, None, None

    gru_op.register_autograd(backward_fn, setup_context=setup_context)
    return gru_op


_gru_op = _define_ops() if triton is not None else None


def _lengths_and_bias(gi: Tensor, w_hh: Tensor, b_hh: Tensor | None,
                      lengths: Tensor | None) -> tuple[Tensor, Tensor]:
    """The kernels' lengths (int64 on gi's device, every row full when None) and b_hh (0
    when None); first, that the kernels run this hidden size on this device."""
    hidden, most = w_hh.shape[1], max_hidden(gi.device)
    if hidden > most:
        raise ValueError(f"backend 'triton' runs hidden sizes up to {most} on this GPU "
                         f"({_grid_limit(gi.device)} multiprocessors × {MAX_UNITS} units); "
                         f"got {hidden}: use backend='torch'")
    if lengths is None:
        lengths = torch.full((gi.shape[1],), gi.shape[0], dtype=torch.int64, device=gi.device)
    else:
        lengths = lengths.to(device=gi.device, dtype=torch.int64)
    return lengths, b_hh if b_hh is not None else w_hh.new_zeros(w_hh.shape[0])


def core(gi: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor | None, lengths: Tensor | None,
         reset_after: bool) -> Tensor:
    """The recurrent core (see ``reference.core`` for the contract) in Triton kernels.

    gi (T, B, 3H), h0 (B, H), w_hh (3H, H), b_hh (3H,) or None, lengths (B,) or None; CUDA
    tensors (CPU ones under TRITON_INTERPRET=1) of one of DTYPES. Returns out (T, B, H).
    """
    if h0.device.type not in devices() or h0.dtype not in DTYPES:
        raise ValueError(f"backend 'triton' runs {'/'.join(devices())} tensors of "
                         f"{', '.join(str(d) for d in DTYPES)}; got {h0.dtype} on {h0.device}")
    if gi.dtype != h0.dtype:  # autocast made the input projection low precision
        gi = gi.to(h0.dtype)
    lengths, bias = _lengths_and_bias(gi, w_hh, b_hh, lengths)
    save = torch.is_grad_enabled() and any(
        t.requires_grad for t in (gi, h0, w_hh, bias))
    if _special_mode():  # (torch.compile, tracing and the other modes see one op)
        out = _gru_op(gi, h0, w_hh, bias, lengths, reset_after, save)[0]
    elif save:
        out = _Eager.apply(gi, h0, w_hh, bias, lengths, reset_after)
    else:  # (nothing to record: the kernels, no dispatch)
        return forward(gi, h0, w_hh, bias, lengths, reset_after, False)[0]
    # (the backward reads the output it saved: a copy for the caller, who may change it
    # in place before the backward, as torch.nn.GRU's callers may)
    return out.clone() if save else out
