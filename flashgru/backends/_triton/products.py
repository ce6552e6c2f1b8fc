"""The hidden products of a step: x @ W for this program's units, on W streamed through the
caches or resident in registers, as tl.dot or a broadcast product, summed over K in
chunks (``Config.chunked``) or along K first (``Config.kmajor``).
"""

from __future__ import annotations

from .exchange import _await, _row_block, _shared_block
from .lang import LANES, LEADING_LANES, _jit, tl


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
def _permuted_at(k, NC: tl.constexpr, KW: tl.constexpr, CHUNK: tl.constexpr):
    """Where K's index k lies in a row of ``Config.permuted``'s exchange (host:
    splits._permutation): a 5-axis chunked tile's k = (KW·c + j)·CHUNK + i (c < NC, warp j,
    lane i) at j·NC·CHUNK + (c // V)·V·CHUNK + i·V + c % V, V = min(4, NC): each thread's V
    chunks side by side (one 16-byte load), the warp's lanes' next to each other (a
    warp's load is 128 contiguous bytes), and each warp's part of K apart."""
    V: tl.constexpr = 4 if NC >= 4 else NC
    c = k // (KW * CHUNK)
    return (k // CHUNK) % KW * (NC * CHUNK) + c // V * (V * CHUNK) + k % CHUNK * V + c % V


@_jit
def _permuted_block(a, rows, rmask, stride, v, NCF: tl.constexpr = 0, C0: tl.constexpr = 0):
    """(BB, NC, KW, SO, CHUNK): x[row, k] for this program's rows (row 0's for rows past B)
    and every k < NC·KW·CHUNK (zero past H, where the caller zeroed the row's end), from a
    ``Config.permuted``
    exchange (a[row·stride + _permuted_at(k)]), for the 5-axis tile v (NC, SI, KW, SO,
    CHUNK) (_chunked_partial). Loaded in the product's own layout: Triton lays the load's
    lanes along the chunk and then the units (SO: the same address for every unit, one
    load serving them), its warps along KW, and V values a thread in one 16-byte load, as
    the product lays its operand, so no pass through shared memory converts it (nvdisasm,
    sm_90a, Triton 3.6-3.9, the load's axes in the order each lays lanes along:
    LEADING_LANES; a row-major block goes through shared memory in one-row pieces, two
    barriers each). With NCF, v is a piece of a tile of NCF chunks, from chunk C0
    (_halves): that piece's block."""
    NC: tl.constexpr = v.shape[0]
    KW: tl.constexpr = v.shape[2]
    SO: tl.constexpr = v.shape[3]
    CHUNK: tl.constexpr = v.shape[4]
    BB: tl.constexpr = rows.shape[0]
    ALL: tl.constexpr = NCF if NCF else NC
    V: tl.constexpr = 4 if ALL >= 4 else ALL
    # (rows past B read row 0, not masked: a masked load zeroes its registers first, and
    # those rows' results are never stored)
    b = tl.where(rmask, rows, 0)
    if LEADING_LANES:  # (CHUNK, SO, KW, BB, NC / V, V), lanes along the first two
        i = tl.arange(0, CHUNK)[:, None, None, None, None, None]
        o = tl.zeros((SO,), tl.int32)[None, :, None, None, None, None]
        j = tl.arange(0, KW)[None, None, :, None, None, None]
        b = b[None, None, None, :, None, None]
        c = tl.arange(0, NC // V)[None, None, None, None, :, None] + C0 // V
    else:  # (BB, NC / V, KW, SO, CHUNK, V), lanes along CHUNK and SO
        b = b[:, None, None, None, None, None]
        c = tl.arange(0, NC // V)[None, :, None, None, None, None] + C0 // V
        j = tl.arange(0, KW)[None, None, :, None, None, None]
        o = tl.zeros((SO,), tl.int32)[None, None, None, :, None, None]
        i = tl.arange(0, CHUNK)[None, None, None, None, :, None]
    q = tl.arange(0, V)[None, None, None, None, None, :]
    x = tl.load(a + b * stride + (j * (ALL * CHUNK) + c * (V * CHUNK) + i * V + q + o),
                cache_modifier=".cg")
    # (→ (BB, NC / V, V, KW, SO, CHUNK) → (BB, NC, KW, SO, CHUNK))
    if LEADING_LANES:
        x = tl.permute(x, (3, 4, 5, 2, 1, 0))
    else:
        x = tl.permute(x, (0, 1, 5, 2, 3, 4))
    return tl.reshape(x, (BB, NC, KW, SO, CHUNK))


@_jit
def _halves(v):
    """A 5-axis chunked tile (NC, SI, KW, SO, CHUNK) as its two halves along NC (each
    thread holds all of NC: registers renamed, nothing moved)."""
    NC: tl.constexpr = v.shape[0]
    whole = tl.reshape(v, (2, NC // 2, v.shape[1], v.shape[2], v.shape[3], v.shape[4]))
    return tl.split(tl.permute(whole, (1, 2, 3, 4, 5, 0)))


@_jit
def _gate_partials(x, v_r, v_z, v_n, ACC: tl.constexpr, GATES: tl.constexpr):
    """_chunked_partial of the block x with each of the first GATES (2 or 3) gates' tiles
    (where GATES is 2, z's again for n's)."""
    p_r = _chunked_partial(x, v_r, ACC)
    p_z = _chunked_partial(x, v_z, ACC)
    if GATES == 3:
        return p_r, p_z, _chunked_partial(x, v_n, ACC)
    else:
        return p_r, p_z, p_z


@_jit
def _permuted_products(a, rows, rmask, stride, v_r, v_z, v_n, ACC: tl.constexpr,
                       GATES: tl.constexpr):
    """The first GATES (2 or 3) gate products of the block _permuted_block reads at a
    with the 5-axis tiles v_r, v_z, v_n, (BB, S) each (the last v_z again where GATES is
    2). The block in two halves along K's chunks where each holds whole 16-byte loads, each
    read and multiplied in turn: the whole block's loads at once would hold it all in
    registers beside W (fp32 B=16, H=1024: ptxas spilled 0.4-6.6 KB, sm_90a)."""
    NC: tl.constexpr = v_r.shape[0]
    if NC >= 8:
        r0, r1 = _halves(v_r)
        z0, z1 = _halves(v_z)
        n0, n1 = _halves(v_n)
        p_r, p_z, p_n = _gate_partials(_permuted_block(a, rows, rmask, stride, r0, NC, 0),
                                       r0, z0, n0, ACC, GATES)
        q_r, q_z, q_n = _gate_partials(_permuted_block(a, rows, rmask, stride, r1, NC,
                                                       NC // 2), r1, z1, n1, ACC, GATES)
        p_r += q_r
        p_z += q_z
        p_n += q_n
    else:
        p_r, p_z, p_n = _gate_partials(_permuted_block(a, rows, rmask, stride, v_r), v_r,
                                       v_z, v_n, ACC, GATES)
    gh_z = _chunked_sum(p_z)
    if GATES == 3:
        return _chunked_sum(p_r), gh_z, _chunked_sum(p_n)
    else:
        return _chunked_sum(p_r), gh_z, gh_z


@_jit
def _chunked_partial(x, v, ACC: tl.constexpr):
    """_chunked_product's sum over K not yet complete: with a (NC, S, LANES) tile, the
    product summed over the chunks, (BB, S, LANES); with a 5-axis tile (NC, SI, KW, SO,
    CHUNK), (BB, SI, KW, SO, CHUNK) summed over NC, x (BB, K) or, from _permuted_block,
    (BB, NC, KW, SO, CHUNK). What's left is _chunked_sum's."""
    BB: tl.constexpr = x.shape[0]
    NC: tl.constexpr = v.shape[0]
    if len(x.shape) == 5:  # (the block already in the product's shape: _permuted_block)
        return tl.sum(x.to(ACC)[:, :, None, :, :, :] * v.to(ACC)[None, :, :, :, :, :], axis=1)
    elif len(v.shape) == 3:
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
def _product_k(x, v, ACC: tl.constexpr):
    """x (BK, BB) @ v (BK, S) → (BB, S) in ACC, a broadcast product summed over its first
    axis, K (``Config.kmajor``)."""
    return tl.sum(x.to(ACC)[:, :, None] * v.to(ACC)[:, None, :], axis=0)


@_jit
def _resident_product(a, rows, rmask, H, stride, t, v, BK: tl.constexpr,
                      STAMPED: tl.constexpr, KMAJOR: tl.constexpr, DOT: tl.constexpr,
                      PREC: tl.constexpr, ACC: tl.constexpr, CHUNKED: tl.constexpr = False,
                      PERMUTED: tl.constexpr = False):
    """(BB, S): the block _row_block reads at a (KMAJOR: K-major; PERMUTED,
    _permuted_block's) times the resident tile v (from _resident_tiles or
    _resident_tiles_t; CHUNKED, _chunked_tiles)."""
    if PERMUTED:
        return _chunked_product(_permuted_block(a, rows, rmask, stride, v), v, ACC)
    elif KMAJOR:
        return _product_k(_row_block(a, rows, rmask, H, stride, t, BK, STAMPED, True), v,
                          ACC)
    else:
        return _product(_row_block(a, rows, rmask, H, stride, t, BK, STAMPED), v, DOT, PREC,
                        ACC, CHUNKED)


@_jit
def _gate_block(a, rows, rmask, H, stride, t, v, BK: tl.constexpr, STAMPED: tl.constexpr,
                PERMUTED: tl.constexpr):
    """The block of one gate at a for _chunked_partial with tile v: _row_block's, or
    PERMUTED _permuted_block's."""
    if PERMUTED:
        return _permuted_block(a, rows, rmask, stride, v)
    else:
        return _row_block(a, rows, rmask, H, stride, t, BK, STAMPED)


@_jit
def _chunked_gates(a, gstep, rows, rmask, H, stride, t, v_a, v_b, v_c, BK: tl.constexpr,
                   STAMPED: tl.constexpr, ACC: tl.constexpr, GATES: tl.constexpr,
                   PERMUTED: tl.constexpr = False):
    """Σ_g (BB, H) block g @ v_g over GATES (2 or 3) gates, the blocks _row_block (PERMUTED:
    _permuted_block) reads at a + g·gstep, for a chunked split's 5-axis tiles
    (``Config.thread_units``, ``Config.unit_lanes``): the gates' partial sums added in
    each thread before the lanes and warps meet once (_chunked_sum), instead of once a
    gate."""
    part = _chunked_partial(_gate_block(a, rows, rmask, H, stride, t, v_a, BK, STAMPED,
                                        PERMUTED), v_a, ACC)
    part += _chunked_partial(_gate_block(a + gstep, rows, rmask, H, stride, t, v_b, BK,
                                         STAMPED, PERMUTED), v_b, ACC)
    if GATES == 3:
        part += _chunked_partial(_gate_block(a + 2 * gstep, rows, rmask, H, stride, t, v_c,
                                             BK, STAMPED, PERMUTED), v_c, ACC)
    return _chunked_sum(part)
