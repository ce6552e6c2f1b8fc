r"""Linear recurrences over time, parallel where the hardware allows.

Two scans, each with four implementations behind one ``impl=`` argument:

``scan_diag(a, b, h0)``  — a, b (T, B, H), h0 (B, H):   h_t = a_t ⊙ h_{t−1} + b_t
``scan_dense(J, c, h0)`` — J (T, B, H, H), c (T, B, H): h_t = J_t h_{t−1} + c_t

with h_{−1} = h0; ``reverse=True`` runs from t = T−1 down to 0 (h_t = a_t ⊙ h_{t+1} + b_t,
h_T = h0); ``transpose=True`` (dense) uses J_tᵀ. Any T ≥ 0. The result is h (T, B, H).

impl:
- ``"sequential"``: a Python loop over t, the ground truth of the tests.
- ``"torch"``: chunked, in torch ops. T is cut into n chunks of C ≈ √T steps (the last
  T − nC steps run as a sequential tail). (1) Within every chunk, from a zero state, all
  chunks at once (C iterations, each vectorised over the n chunks), plus each chunk's
  summary: the product of its coefficients and its accumulated offset. (2) A sequential
  scan over the n summaries gives every chunk's true start state. (3) A fix-up pass.
  Diagonal: the fix-up is h = s + (cumprod of a within the chunk) ⊙ start, one vectorised
  op; O(T·B·H) work in all, about 2√T Python iterations.
  Dense: composing J's costs O(H³) per step against O(H²) for applying one, and the
  chunk products are unavoidable (a chunk's effect on its unknown start state *is* the
  product). So the summaries (P_k = J_{k,C−1}⋯J_{k,0}, s_k) come from a pairwise tree
  (log₂C batched matmul levels, O(T·B·H³) flops), and the fix-up *re-runs* each chunk from
  its true start (C iterations of batched mat-vecs, O(T·B·H²)) instead of storing every
  partial product (that would cost another T·B·H² of memory and the same flops).
- ``"triton"``: Triton kernels (CUDA tensors; CPU tensors under ``TRITON_INTERPRET=1``).
  Diagonal: programs over (time chunk, block of the B·H columns); each walks its chunk in
  tiles of BT steps with ``tl.associative_scan`` on the pairs (a, b) inside a tile and a
  carried state between tiles. With one chunk that is the whole scan (one read of a and b);
  with several, a first launch writes each chunk's summary, the summaries are scanned by
  the same function (recursively), and a second launch re-scans each chunk from its start.
  Dense (H ≤ 64): per batch row, sequential over T with h and J_t in registers (no H³
  work) where the rows fill the GPU (B ≥ 64), for T < 256 and in float64; otherwise in
  chunks, parallel over (chunk, row): every chunk's map composed at once (tl.dot, fp32 at
  three-pass TF32), the maps scanned, every chunk re-run from its start. The chunk (16 to
  256 steps, or ≈ √T) is measured on the card once per shape bucket (``_tuned_chunk``).
- ``"auto"``: "triton" for CUDA tensors when Triton is installed (dense: H ≤ 64), else
  "torch". (Under the interpreter, CPU tensors get "torch": ask for "triton" by name.)

Precision: float32 and float64 compute in their own precision; float16/bfloat16 compute in
float32 and return their own dtype.

Gradients: both scans are differentiable with respect to every input (their backward is
the adjoint scan, below, through the same implementation); double backward works too,
since the backward is made of differentiable scans.
"""

from __future__ import annotations

import contextlib
import math
import os
import time

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # impl="triton" is then unavailable
    triton = None

IMPLS = ("auto", "torch", "triton", "sequential")
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# the summary kernel's (H, H) fp32 tl.dot at H = 128 needs 256 KiB of shared memory, more
# than an H100 has (measured 2026-11-26); up to 64 it fits
DENSE_TRITON_MAX_H = 64
_LOW = (torch.float16, torch.bfloat16)


def _jit(fn):
    return fn if triton is None else triton.jit(fn)


# ---- kernels -----------------------------------------------------------------------------

@_jit
def _combine(a1, b1, a2, b2):
    """(a2, b2) after (a1, b1): h ↦ a2 (a1 h + b1) + b2."""
    return a1 * a2, b1 * a2 + b2


@_jit
def _last_row(x, rows, BT: tl.constexpr):
    return tl.sum(tl.where(rows[:, None] == BT - 1, x, 0.0), axis=0)


@_jit
def _chunk_start(init, T, N, CHUNK, HAS_INIT: tl.constexpr, BN: tl.constexpr,
                 ACC: tl.constexpr):
    """A chunked diagonal scan's program (j, c): chunk c, columns j·BN.. (axis 0, which has
    no 65535 limit). Returns c, the columns and their mask, the starting state (init[c]
    or 0), the running product 1, and the chunk's logical steps [begin, end)."""
    c = tl.program_id(1)
    cols = tl.program_id(0) * BN + tl.arange(0, BN)
    cmask = cols < N
    if HAS_INIT:
        h = tl.load(init + c.to(tl.int64) * N + cols, mask=cmask, other=0.0).to(ACC)
    else:
        h = tl.zeros((BN,), ACC)
    begin = c * CHUNK
    return c, cols, cmask, h, tl.full((BN,), 1.0, ACC), begin, tl.minimum(begin + CHUNK, T)


@_jit
def _scan_tile(a, b, h, prod, rows, BT: tl.constexpr, WRITE: tl.constexpr):
    """One (BT, BN) tile of h_t = a_t h_{t−1} + b_t from the carried h: every state of
    the tile, the state after it, and (summaries only) the product of a carried on."""
    pa, pb = tl.associative_scan((a, b), 0, _combine)
    hs = pa * h[None, :] + pb
    if not WRITE:
        prod = prod * _last_row(pa, rows, BT)
    return hs, _last_row(hs, rows, BT), prod


@_jit
def _chunk_summary(sum_a, sum_b, c, N, cols, cmask, prod, h):
    """Store chunk c's summary: Π a, and its state from a zero start."""
    tl.store(sum_a + c.to(tl.int64) * N + cols, prod, mask=cmask)
    tl.store(sum_b + c.to(tl.int64) * N + cols, h, mask=cmask)


@_jit
def _diag_kernel(a, b, init, out, sum_a, sum_b, T, N, CHUNK,
                 REVERSE: tl.constexpr, HAS_INIT: tl.constexpr, WRITE: tl.constexpr,
                 BT: tl.constexpr, BN: tl.constexpr, ACC: tl.constexpr):
    """Program (j, c): logical steps [c·CHUNK, (c+1)·CHUNK) ∩ [0, T) of columns
    [j·BN, (j+1)·BN). a, b, out (T, N); logical step s is time T−1−s with REVERSE. Starts
    from init[c] (n_chunks, N) or 0; writes out (WRITE) or the chunk's summary sum_a[c] =
    Π a, sum_b[c] = its state from a zero start."""
    c, cols, cmask, h, prod, begin, end = _chunk_start(init, T, N, CHUNK, HAS_INIT, BN, ACC)
    rows = tl.arange(0, BT)
    for s0 in range(begin, end, BT):
        steps = s0 + rows
        if REVERSE:
            t = T - 1 - steps
        else:
            t = steps
        m = (steps < end)[:, None] & cmask[None, :]
        off = t.to(tl.int64)[:, None] * N + cols[None, :]  # T·N can pass 2^31
        av = tl.load(a + off, mask=m, other=1.0).to(ACC)  # padding steps: h ↦ h
        bv = tl.load(b + off, mask=m, other=0.0).to(ACC)
        hs, h, prod = _scan_tile(av, bv, h, prod, rows, BT, WRITE)
        if WRITE:
            tl.store(out + off, hs.to(out.dtype.element_ty), mask=m)
    if not WRITE:
        _chunk_summary(sum_a, sum_b, c, N, cols, cmask, prod, h)


@_jit
def _dense_offsets(i, H, TRANSPOSE: tl.constexpr):
    """Offsets of M_t's elements in J_t (H, H) for a (BH, BH) tile: M = J or Jᵀ."""
    if TRANSPOSE:  # M[r, k] = J[k, r]
        return i[:, None] + i[None, :] * H
    else:
        return i[:, None] * H + i[None, :]


@_jit
def _dense_step(J, c, s, T, B, H, row, i, im, moff, mm, REVERSE: tl.constexpr):
    """Logical step s of batch row ``row``: the offset (t·B + row, int64: T·B·H·H can pass
    2^31) and the step's M_t tile (BH, BH) and c_t (BH,), as stored."""
    if REVERSE:
        t = T - 1 - s
    else:
        t = s
    base = tl.cast(t, tl.int64) * B + row
    m = tl.load(J + base * H * H + moff, mask=mm, other=0.0)
    cv = tl.load(c + base * H + i, mask=im, other=0.0)
    return base, m, cv


@_jit
def _dense_program(H, TRANSPOSE: tl.constexpr, BH: tl.constexpr):
    """A dense-scan program (b, k) (rows on axis 0, which has no 65535 limit): chunk k, row
    b, the unit indices and mask, and the offsets and mask of M_t's (BH, BH) tile."""
    i = tl.arange(0, BH)
    im = i < H
    return (tl.program_id(1), tl.program_id(0), i, im, _dense_offsets(i, H, TRANSPOSE),
            im[:, None] & im[None, :])


@_jit
def _dense_kernel(J, c, init, out, T, B, H, CHUNK,
                  REVERSE: tl.constexpr, TRANSPOSE: tl.constexpr, BH: tl.constexpr,
                  ACC: tl.constexpr):
    """Program (b, k): batch row b over logical steps [k·CHUNK, (k+1)·CHUNK) ∩ [0, T) in
    order, from init[k, b], h in registers. J (T, B, H, H), c and out (T, B, H), init
    (n_chunks, B, H); logical step s is time T−1−s with REVERSE."""
    k, row, i, im, moff, mm = _dense_program(H, TRANSPOSE, BH)
    h = tl.load(init + (k.to(tl.int64) * B + row) * H + i, mask=im, other=0.0).to(ACC)
    for s in range(k * CHUNK, tl.minimum((k + 1) * CHUNK, T)):
        base, m, cv = _dense_step(J, c, s, T, B, H, row, i, im, moff, mm, REVERSE)
        h = tl.sum(m.to(ACC) * h[None, :], axis=1) + cv.to(ACC)
        tl.store(out + base * H + i, h.to(out.dtype.element_ty), mask=im)


@_jit
def _dense_summary_kernel(J, c, P, S, T, B, H, CHUNK,
                          REVERSE: tl.constexpr, TRANSPOSE: tl.constexpr, BH: tl.constexpr):
    """Program (b, k): the affine map h ↦ P h + S of chunk k for batch row b, composed in
    fp32 (tl.dot at three-pass TF32, fp32's accuracy): P[k, b] = M_last ⋯ M_first (H, H),
    S[k, b] the chunk's state from a zero start. BH ≥ 16 (tl.dot's minimum)."""
    k, row, i, im, moff, mm = _dense_program(H, TRANSPOSE, BH)
    prod = tl.where(i[:, None] == i[None, :], 1.0, 0.0).to(tl.float32)
    h = tl.zeros((BH,), tl.float32)
    for s in range(k * CHUNK, tl.minimum((k + 1) * CHUNK, T)):
        _, m, cv = _dense_step(J, c, s, T, B, H, row, i, im, moff, mm, REVERSE)
        m, cv = m.to(tl.float32), cv.to(tl.float32)
        prod = tl.dot(m, prod, input_precision="tf32x3")
        h = tl.sum(m * h[None, :], axis=1) + cv
    out = (k.to(tl.int64) * B + row) * H
    tl.store(P + out * H + i[:, None] * H + i[None, :], prod, mask=mm)
    tl.store(S + out + i, h, mask=im)


# ---- launchers ---------------------------------------------------------------------------

def _empty(*shape: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Every buffer a kernel writes comes from here (the tests fill them with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _diag_split(steps: int, cols: int, device: torch.device, chunk=None, block_t=None,
                block_n=None) -> tuple[int, int, int]:
    """(chunk, BT, BN): columns in blocks of up to 64, tiles of 32 steps, and time chunks
    enough for about four programs per multiprocessor (one chunk where the column blocks
    alone fill the GPU). Not tuned on hardware yet."""
    bn = block_n or min(_pow2(cols), 64)
    bt = block_t or min(_pow2(steps), 32)
    if chunk is None:
        sms = torch.cuda.get_device_properties(device).multi_processor_count \
            if device.type == "cuda" else 1
        want = max(1, 4 * sms // -(-cols // bn))
        chunk = -(-steps // want)
        chunk = max(bt, -(-chunk // bt) * bt)
    return chunk, bt, bn


def _diag_triton(a: Tensor, b: Tensor, h0: Tensor, reverse: bool, chunk=None, block_t=None,
                 block_n=None) -> Tensor:
    """a, b (T, B, H), h0 (B, H) → h (T, B, H) in a's dtype. The split can be forced (the
    tests force several chunks, hence the recursion, at small sizes)."""
    steps = a.shape[0]
    cols = h0.numel()
    out = _empty(*a.shape, dtype=a.dtype, device=a.device)
    if steps == 0 or cols == 0:
        return out
    acc = torch.float64 if a.dtype == torch.float64 else torch.float32
    a, b = a.contiguous(), b.contiguous()
    chunk, bt, bn = _diag_split(steps, cols, a.device, chunk, block_t, block_n)
    n_chunks = -(-steps // chunk)
    grid = (-(-cols // bn), n_chunks)
    consts = dict(REVERSE=reverse, BT=bt, BN=bn, ACC=_acc(acc))
    if n_chunks == 1:
        init = h0.reshape(1, cols).contiguous()
    else:
        sum_a = _empty(n_chunks, cols, dtype=acc, device=a.device)
        sum_b = _empty(n_chunks, cols, dtype=acc, device=a.device)
        _diag_kernel[grid](a, b, a, a, sum_a, sum_b, steps, cols, chunk, HAS_INIT=False,
                           WRITE=False, **consts)
        init = torch.empty(n_chunks, cols, dtype=acc, device=a.device)
        init[0] = h0.reshape(cols)
        # start of chunk k+1 = Π a (chunk k) ⊙ start of chunk k + offset of chunk k
        init[1:] = _diag_triton(sum_a[:-1], sum_b[:-1], init[0], False, chunk, block_t,
                                block_n)
    _diag_kernel[grid](a, b, init, out, out, out, steps, cols, chunk, HAS_INIT=True,
                       WRITE=True, **consts)
    return out


def _dense_chunk(steps: int, batch: int, dtype: torch.dtype) -> int:
    """Steps per chunk of the Triton dense scan, before measuring: one chunk (a sequential
    scan per batch row) where the rows alone fill the GPU, for short sequences and in
    float64 (tl.dot composes the chunk maps in fp32); else ≈ √T, so chunks × rows fill
    it."""
    if dtype == torch.float64 or batch >= 64 or steps < 256:
        return steps
    return max(16, math.isqrt(steps))


# measured chunk per (⌈log2 T⌉, B, H, dtype, device, reverse, transpose): see _tuned_chunk
_CHUNKS: dict[tuple, int] = {}
TUNE = True  # False: always _dense_chunk's rule


MAX_CHUNKS = 65535  # the dense scan's chunks lie on grid axis 1: CUDA's limit there


def _fewest_steps(steps: int) -> int:
    """The shortest chunk that keeps the dense scan's chunks within MAX_CHUNKS."""
    return -(-steps // MAX_CHUNKS)


def _chunk_candidates(steps: int, batch: int, dtype: torch.dtype) -> list[int]:
    first = _dense_chunk(steps, batch, dtype)
    if first == steps:  # one chunk by the rule: nothing to choose
        return [first]
    least = _fewest_steps(steps)
    return sorted({max(first, least),
                   *(c for c in (16, 32, 64, 128, 256) if least <= c < steps)})


def _can_time(c: Tensor) -> bool:
    return c.device.type == "cuda" and not torch.cuda.is_current_stream_capturing()


def time_interleaved(runs: dict, device: torch.device, rounds: int = 3,
                     before=None) -> dict:
    """Seconds that one call of each of ``runs`` ({key: callable}, each called once before,
    to compile) takes: the fastest of ``rounds`` interleaved rounds (one timing each picked
    badly once the card's clocks moved between candidates). On CUDA a round is queued
    whole, after one untimed call, so each timed call's kernels are already queued when
    its start event fires: the host's time before a launch does not count. ``before``, if
    given, is called before each timed call, outside its timing (triton_gru's benchmark
    mode: an eviction of L2, l2_eviction)."""
    times = dict.fromkeys(runs, math.inf)
    with on_device(device):
        for _ in range(rounds):
            if device.type != "cuda":
                for key, run in runs.items():
                    if before is not None:
                        before()
                    start = time.perf_counter()
                    run()
                    times[key] = min(times[key], time.perf_counter() - start)
                continue
            next(iter(runs.values()))()  # (untimed: the GPU is busy from here on)
            marks = []
            for key, run in runs.items():
                if before is not None:
                    before()
                begin = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                begin.record()
                run()
                end.record()
                marks.append((key, begin, end))
            marks[-1][2].synchronize()
            for key, begin, end in marks:
                times[key] = min(times[key], begin.elapsed_time(end) / 1e3)
    return times


def l2_eviction(device: torch.device):
    """A callable that evicts ``device``'s L2 cache (writes zeros over twice its size, as
    triton.testing.do_bench does before each timing), or None off CUDA: so that a timed
    call reads its inputs from memory, as a real call's kernels mostly do (the GRU's
    input projections and saved gates are written long before, or are larger than L2),
    not from the L2 a previous timing of the same inputs left them in. None too where
    the card has no room for the buffer (~100 MB)."""
    if device.type != "cuda":
        return None
    size = torch.cuda.get_device_properties(device).L2_cache_size
    try:
        return torch.empty(max(2 * size, 1), dtype=torch.int8, device=device).zero_
    except torch.cuda.OutOfMemoryError:  # (a card nearly full: timed as before, warm)
        return None


def _time_chunks(J, c, h0, reverse, transpose, chunks) -> dict[int, float]:
    """Seconds of one scan per chunk (time_interleaved), each run once first to compile."""
    runs = {chunk: lambda chunk=chunk: _dense_triton(J, c, h0, reverse, transpose, chunk)
            for chunk in chunks}
    for run in runs.values():
        run()
    return time_interleaved(runs, c.device)


def _tuned_chunk(J: Tensor, c: Tensor, h0: Tensor, reverse: bool, transpose: bool) -> int:
    """The chunk for this shape, measured on the GPU once per (length bucket, batch, H,
    dtype, device, direction): the fastest candidate by CUDA events (``_time_chunks``).
    The chunk trades the summary pass's sequential depth (chunk steps of an H×H product
    per program) against the scan of the chunk maps (T/chunk steps) and the programs in
    flight (chunks × rows against the multiprocessors); where it lands depends on the
    card, so it is measured rather than guessed."""
    steps, batch, hidden = c.shape
    candidates = _chunk_candidates(steps, batch, c.dtype)
    key = (steps.bit_length(), batch, hidden, c.dtype, c.device, reverse, transpose)
    if len(candidates) == 1 or not TUNE:
        return _dense_chunk(steps, batch, c.dtype)
    if key not in _CHUNKS:
        if not _can_time(c):  # (under graph capture a chunk measured before still counts)
            return _dense_chunk(steps, batch, c.dtype)
        times = _time_chunks(J, c, h0, reverse, transpose, candidates)
        _CHUNKS[key] = min(times, key=times.get)
    return _CHUNKS[key]


def _dense_triton(J: Tensor, c: Tensor, h0: Tensor, reverse: bool, transpose: bool,
                  chunk: int | None = None) -> Tensor:
    """The Triton dense scan. With several chunks: (1) every chunk's map (P, S) at once,
    (2) the scan of those maps (this function again: few steps), (3) every chunk re-run
    from its true start at once. O(T·B·H³) flops for (1), O(T·B·H²) for (3)."""
    steps, batch, hidden = c.shape
    out = _empty(steps, batch, hidden, dtype=c.dtype, device=c.device)
    if not (steps and batch and hidden):
        return out
    acc = torch.float64 if c.dtype == torch.float64 else torch.float32
    bh = max(2, _pow2(hidden))
    J, c = J.contiguous(), c.contiguous()
    size = max(chunk or _tuned_chunk(J, c, h0, reverse, transpose), _fewest_steps(steps))
    n = -(-steps // size)
    consts = dict(REVERSE=reverse, TRANSPOSE=transpose, num_warps=4 if bh <= 64 else 8)
    if n == 1:
        starts = h0.contiguous().unsqueeze(0)
    else:
        maps = _empty(n, batch, hidden, hidden, dtype=torch.float32, device=c.device)
        offsets = _empty(n, batch, hidden, dtype=torch.float32, device=c.device)
        _dense_summary_kernel[(batch, n)](J, c, maps, offsets, steps, batch, hidden, size,
                                          BH=max(16, bh), **consts)
        ends = _dense_triton(maps, offsets, h0.float(), False, False)
        starts = torch.cat([h0.float().unsqueeze(0), ends[:-1]]).contiguous()
    _dense_kernel[(batch, n)](J, c, starts, out, steps, batch, hidden, size, BH=bh,
                              ACC=_acc(acc), **consts)
    return out


# ---- pure torch --------------------------------------------------------------------------

def _chunk(steps: int, chunk: int | None) -> int:
    return max(1, chunk or math.isqrt(steps))


def _diag_sequential(a, b, h0):
    h, out = h0, []
    for t in range(a.shape[0]):
        h = a[t] * h + b[t]
        out.append(h)
    return torch.stack(out) if out else a.new_empty(a.shape)


def _diag_torch(a: Tensor, b: Tensor, h0: Tensor, reverse: bool = False,
                chunk: int | None = None) -> Tensor:
    """Chunked, reverse handled by indexing (no flipped copies): the n whole chunks cover
    [lo, lo + nC), the tail the other T − nC steps, scanned last."""
    a, b = a.contiguous(), b.contiguous()  # strided views make every step's ops slow
    steps = a.shape[0]
    size = _chunk(steps, chunk)
    n = steps // size
    main = n * size
    lo = steps - main if reverse else 0
    out = torch.empty_like(b)
    h = h0
    if n:
        av, bv, s = (x[lo:lo + main].unflatten(0, (n, size)) for x in (a, b, out))  # (n, C, B, H)
        first, *rest = range(size - 1, -1, -1) if reverse else range(size)
        prod = torch.empty_like(av)  # Π a within the chunk so far (a loop: faster than
        prod[:, first] = av[:, first]  # torch.cumprod over this dim on CPU)
        s[:, first] = bv[:, first]
        prev = first
        for j in rest:  # (1) within chunks, zero start, all chunks at once
            torch.addcmul(bv[:, j], av[:, j], s[:, prev], out=s[:, j])
            torch.mul(prod[:, prev], av[:, j], out=prod[:, j])
            prev = j
        starts = torch.empty_like(s[:, 0])  # (n, B, H)
        for k in range(n - 1, -1, -1) if reverse else range(n):  # (2) across chunks
            starts[k] = h
            h = torch.addcmul(s[k, prev], prod[k, prev], h)
        s.addcmul_(prod, starts.unsqueeze(1))  # (3) fix-up
    for t in range(lo - 1, -1, -1) if reverse else range(main, steps):  # the tail
        h = torch.addcmul(b[t], a[t], h)
        out[t] = h
    return out


def _mv(m: Tensor, v: Tensor) -> Tensor:
    return (m @ v.unsqueeze(-1)).squeeze(-1)


def _dense_sequential(m, c, h0):
    h, out = h0, []
    for t in range(c.shape[0]):
        h = _mv(m[t], h) + c[t]
        out.append(h)
    return torch.stack(out) if out else c.new_empty(c.shape)


def _compose(m: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """Each chunk's affine map h ↦ P h + s from its steps' maps, m (n, C, B, H, H) and
    c (n, C, B, H), by a pairwise tree: log₂C levels of batched products."""
    while m.shape[1] > 1:
        even = m.shape[1] // 2 * 2
        m1, m2 = m[:, 0:even:2], m[:, 1:even:2]
        c_new = _mv(m2, c[:, 0:even:2]) + c[:, 1:even:2]
        m_new = m2 @ m1
        if even < m.shape[1]:
            m_new = torch.cat([m_new, m[:, even:]], 1)
            c_new = torch.cat([c_new, c[:, even:]], 1)
        m, c = m_new, c_new
    return m[:, 0], c[:, 0]


def _dense_torch(m: Tensor, c: Tensor, h0: Tensor, chunk: int | None = None) -> Tensor:
    steps = c.shape[0]
    size = _chunk(steps, chunk)
    n = steps // size
    main = n * size
    out = torch.empty_like(c)
    h = h0
    if n:
        mv = m[:main].unflatten(0, (n, size))  # (n, C, B, H, H)
        cv = c[:main].unflatten(0, (n, size))
        prod, offset = _compose(mv, cv)  # (1) chunk summaries
        starts = torch.empty_like(cv[:, 0])
        for k in range(n):  # (2) across chunks
            starts[k] = h
            h = _mv(prod[k], h) + offset[k]
        ov = out[:main].unflatten(0, (n, size))
        hc = starts
        for j in range(size):  # (3) fix-up: re-run every chunk from its true start
            hc = _mv(mv[:, j], hc) + cv[:, j]
            ov[:, j] = hc
        h = ov[-1, -1]
    for t in range(main, steps):
        h = _mv(m[t], h) + c[t]
        out[t] = h
    return out


# ---- dispatch and autograd ---------------------------------------------------------------

def choose_impl(impl: str, device: torch.device, hidden: int | None = None) -> str:
    """The rules for impl="auto": "triton" for CUDA tensors when Triton is installed (and,
    for the dense scan, hidden ≤ DENSE_TRITON_MAX_H); otherwise "torch"."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))}; got {impl!r}")
    if impl == "triton" and triton is None:
        raise RuntimeError("impl='triton' needs Triton: pip install 'flashgru[gpu]'")
    if impl == "triton" and device.type != "cuda" and not INTERPRET:
        raise ValueError(f"impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1); got "
                         f"tensors on {device.type}")
    if impl != "auto":
        return impl
    small = hidden is None or hidden <= DENSE_TRITON_MAX_H
    return "triton" if device.type == "cuda" and triton is not None and small else "torch"


def on_device(device: torch.device):
    """Launch Triton kernels on ``device`` (they run on the current CUDA device): a switch
    of the current device where it is another one (none where it is already current: the
    switch and its way back cost host time before the launch)."""
    if device.type != "cuda" or device.index is None or \
            device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def _flip(x: Tensor, reverse: bool) -> Tensor:
    return x.flip(0) if reverse else x


def _diag(a, b, h0, reverse, impl) -> Tensor:
    """The forward scan, no autograd."""
    if impl == "triton":
        with on_device(a.device):
            return _diag_triton(a, b, h0, reverse)
    dtype = a.dtype
    if dtype in _LOW:
        a, b, h0 = a.float(), b.float(), h0.float()
    if impl == "sequential":
        h = _diag_sequential(_flip(a, reverse), _flip(b, reverse), h0)
        return _flip(h, reverse).to(dtype)
    return _diag_torch(a, b, h0, reverse).to(dtype)


def _dense(J, c, h0, reverse, transpose, impl) -> Tensor:
    if impl == "triton":
        if J.shape[-1] > DENSE_TRITON_MAX_H:
            raise ValueError(f"impl='triton' runs the dense scan for H ≤ {DENSE_TRITON_MAX_H}"
                             f"; got H = {J.shape[-1]} (use impl='torch')")
        with on_device(c.device):
            return _dense_triton(J, c, h0, reverse, transpose)
    dtype = c.dtype
    if dtype in _LOW:
        J, c, h0 = J.float(), c.float(), h0.float()
    m = J.transpose(-1, -2) if transpose else J
    run = _dense_sequential if impl == "sequential" else _dense_torch
    return _flip(run(_flip(m, reverse), _flip(c, reverse), h0), reverse).to(dtype)


def _adjoint_inputs(coef: Tensor, h: Tensor, h0: Tensor, reverse: bool):
    """For the backward of a scan with per-step coefficients ``coef`` (T, B, …) and result
    h: the coefficients of the adjoint scan (coef_{t+1}, 0 at the end; mirrored for
    reverse), the state each step read (h_{t−1}, or h_{t+1} for reverse) and the
    coefficient that multiplied h0."""
    zero = torch.zeros_like(coef[:1])
    prev = h0.unsqueeze(0)
    if reverse:
        return torch.cat([zero, coef[:-1]]), torch.cat([h[1:], prev]), coef[-1]
    return torch.cat([coef[1:], zero]), torch.cat([prev, h[:-1]]), coef[0]


def _adjoint_impl(impl: str, dh: Tensor) -> str:
    """The adjoint scan's impl: the forward's, but for batched gradients (vmap over the
    backward: is_grads_batched=True) the sequential loop, whose plain ops vmap batches."""
    return "sequential" if torch._C._functorch.is_legacy_batchedtensor(dh) else impl


class _ScanDiag(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, h0, reverse, impl):
        h = _diag(a, b, h0, reverse, impl)
        ctx.save_for_backward(a, h0, h)
        ctx.reverse, ctx.impl = reverse, impl
        return h

    @staticmethod
    def backward(ctx, dh):
        a, h0, h = ctx.saved_tensors
        if a.shape[0] == 0:
            return torch.zeros_like(a), torch.zeros_like(a), torch.zeros_like(h0), None, None
        a_next, h_prev, a_first = _adjoint_inputs(a, h, h0, ctx.reverse)
        g = scan_diag(a_next, dh, torch.zeros_like(h0), reverse=not ctx.reverse,
                      impl=_adjoint_impl(ctx.impl, dh))
        g_first = g[-1] if ctx.reverse else g[0]
        return g * h_prev, g, a_first * g_first, None, None


class _ScanDense(torch.autograd.Function):
    @staticmethod
    def forward(ctx, J, c, h0, reverse, transpose, impl):
        h = _dense(J, c, h0, reverse, transpose, impl)
        ctx.save_for_backward(J, h0, h)
        ctx.flags = reverse, transpose, impl
        return h

    @staticmethod
    def backward(ctx, dh):
        J, h0, h = ctx.saved_tensors
        reverse, transpose, impl = ctx.flags
        if J.shape[0] == 0:
            return torch.zeros_like(J), torch.zeros_like(dh), torch.zeros_like(h0), None, \
                None, None
        j_next, h_prev, j_first = _adjoint_inputs(J, h, h0, reverse)
        g = scan_dense(j_next, dh, torch.zeros_like(h0), reverse=not reverse,
                       transpose=not transpose, impl=_adjoint_impl(impl, dh))
        g_first = g[-1] if reverse else g[0]
        dj = g.unsqueeze(-1) * h_prev.unsqueeze(-2)  # g_t h_{t−1}ᵀ
        dh0 = _mv(j_first if transpose else j_first.transpose(-1, -2), g_first)
        return (dj.transpose(-1, -2) if transpose else dj), g, dh0, None, None, None


def _check(name: str, x: Tensor, shape: tuple, like: Tensor) -> None:
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} should have shape {shape}, got {tuple(x.shape)}")
    if x.dtype != like.dtype or x.device != like.device:
        raise ValueError(f"{name} is {x.dtype} on {x.device}, expected {like.dtype} on "
                         f"{like.device} (like the other inputs)")


def _check_float(x: Tensor) -> None:
    if not x.is_floating_point():
        raise TypeError(f"the scans take floating-point tensors, got {x.dtype}")


def scan_diag(a: Tensor, b: Tensor, h0: Tensor, *, reverse: bool = False,
              impl: str = "auto") -> Tensor:
    r"""h_t = a_t ⊙ h_{t−1} + b_t for t = 0…T−1 with h_{−1} = h0; a, b (T, B, H), h0 (B, H),
    one dtype and device. Returns h (T, B, H). ``reverse=True``: h_t = a_t ⊙ h_{t+1} + b_t
    for t = T−1…0 with h_T = h0. ``impl``: see the module docstring.

    Differentiable in a, b and h0. With g_t = ∂L/∂h_t in total (the gradient given for
    h_t plus what flows back from later steps)::

        g_t = dh_t + a_{t+1} ⊙ g_{t+1}   (g_T = 0)      — a reverse diagonal scan
        ∂L/∂b_t = g_t     ∂L/∂a_t = g_t ⊙ h_{t−1}     ∂L/∂h0 = a_0 ⊙ g_0

    (for reverse=True mirror the indices: g_t = dh_t + a_{t−1} ⊙ g_{t−1}, a forward scan,
    ∂L/∂a_t = g_t ⊙ h_{t+1}, ∂L/∂h0 = a_{T−1} ⊙ g_{T−1}). The backward runs that scan
    with ``scan_diag`` itself, same impl, so gradients of gradients work too.
    """
    _check_float(a)
    if a.dim() != 3:
        raise ValueError(f"a should be (T, B, H), got shape {tuple(a.shape)}")
    _check("b", b, tuple(a.shape), a)
    _check("h0", h0, tuple(a.shape[1:]), a)
    impl = choose_impl(impl, a.device)
    return _ScanDiag.apply(a, b, h0, bool(reverse), impl)


def scan_dense(J: Tensor, c: Tensor, h0: Tensor, *, reverse: bool = False,
               transpose: bool = False, impl: str = "auto") -> Tensor:
    r"""h_t = M_t h_{t−1} + c_t with M_t = J_t (``transpose=True``: J_tᵀ), h_{−1} = h0;
    J (T, B, H, H), c (T, B, H), h0 (B, H). Returns h (T, B, H). ``reverse`` as in
    :func:`scan_diag`. ``impl``: see the module docstring (costs: "torch" does O(T·B·H³)
    flops composing chunk products; "triton" and "sequential" O(T·B·H²)).

    Differentiable in J, c and h0 by the adjoint scan (g_t = dh_t + M_{t+1}ᵀ g_{t+1},
    ∂L/∂M_t = g_t h_{t−1}ᵀ, ∂L/∂c_t = g_t, ∂L/∂h0 = M_0ᵀ g_0), which is scan_dense with
    the other ``reverse`` and ``transpose``.
    """
    _check_float(c)
    if c.dim() != 3:
        raise ValueError(f"c should be (T, B, H), got shape {tuple(c.shape)}")
    _check("J", J, (*c.shape, c.shape[-1]), c)
    _check("h0", h0, tuple(c.shape[1:]), c)
    impl = choose_impl(impl, c.device, c.shape[-1])
    return _ScanDense.apply(J, c, h0, bool(reverse), bool(transpose), impl)
