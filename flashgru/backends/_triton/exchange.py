"""How the programs of a launch meet and share a step's vectors: the barrier (a counter in
global memory), the stamped words (``Config.stamped``) and the reads of what other programs
wrote; and which rows and units a program owns.
"""

from __future__ import annotations

from .lang import _INTERPRETED, STAMPED_BLOCK, _jit, tl


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
                # (a block smaller than the layout's span is held in several threads (B=3's
                # 4×16 words, 4 warps: warps 2-3 hold warps 0-1's rows again), each copy
                # loaded apart, and the sum counts one copy: the loop can end while another
                # copy is still stale (an unstamped word's low half is a NaN; in an H200's
                # runs of tests/test_tf32x3.py at B=3, H=16 some calls' outputs were). By
                # then every word carries t, and keeps it until this program has read it:
                # a stale copy loads it once more; the others load nothing)
                words = tl.load(ptrs, mask=mask & ((words >> 32) != t), other=words,
                                volatile=True)
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
def _publish(p, value, mask, t, STAMPED: tl.constexpr):
    """Write a step's values for the other programs: stamped words, or as they are (in
    the exchange's dtype: ``Config.narrow``'s 16-bit, rounded as tl.dot rounds them)."""
    if STAMPED:
        tl.store(p, _stamp(value, t), mask=mask)
    else:
        tl.store(p, value.to(p.dtype.element_ty), mask=mask)


@_jit
def _tile(lengths, B, H, row0, BB: tl.constexpr, S: tl.constexpr):
    """This program's rows (its batch tile, axis 1) and hidden units (axis 0): the row and
    unit indices and masks, the (BB, S) mask, offsets in a (B, H) array, and the rows'
    lengths."""
    rows = row0 + tl.program_id(1) * BB + tl.arange(0, BB)
    rmask = rows < B
    cols = tl.program_id(0) * S + tl.arange(0, S)
    cmask = cols < H
    lens = tl.load(lengths + rows, mask=rmask, other=0)
    return (rows, rmask, cols, cmask, rmask[:, None] & cmask[None, :],
            rows[:, None] * H + cols[None, :], lens)
