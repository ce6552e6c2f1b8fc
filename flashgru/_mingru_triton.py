"""MinGRU's gates and scan fused in Triton: h_t = (1 − z_t) h_{t−1} + z_t h̃_t with
z_t = σ(p_z[t]), h̃_t = p_h[t], straight from the input projection p = [p_z, p_h]
(T, B, 2H), and its backward, so that neither a_t = 1 − z_t nor b_t = z_t h̃_t nor any
gradient of them ever lives in memory.

Forward: ``scan.py``'s chunked diagonal scan (each chunk's summary, the scan of the
summaries, then every chunk again from its true start), computing a_t and b_t from p as it
loads them. Backward: the adjoint λ_t = ∂L/∂h_t + a_{t'} λ_{t'} (t' the step after t in
the scan's order) by the same scan in the other direction, and in its last pass, for the
same tile, ∂L/∂p_z = λ (h̃ − h_prev) z (1 − z), ∂L/∂p_h = λ z, and ∂L/∂h0 = a λ at the
first step. Steps at or past a row's length are the identity (a = 1, b = 0) and get no
gradient. float32 and float64, in their own precision.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .scan import (
    INTERPRET,
    _chunk_start,
    _chunk_summary,
    _diag_split,
    _diag_triton,
    _scan_tile,
    on_device,
    triton,
)

if triton is not None:
    import triton.language as tl


def _jit(fn):
    return fn if triton is None else triton.jit(fn)


@_jit
def _gates(p, t, cols, m, valid, H, N):
    """a_t, b_t, z_t and h̃_t (BT, BN) for times t (BT,) and columns b·H + j (BN,)."""
    off = t.to(tl.int64)[:, None] * 2 * N + (cols // H * 2 * H + cols % H)[None, :]
    pz = tl.load(p + off, mask=m, other=0.0)
    cand = tl.load(p + off + H, mask=m, other=0.0)
    z = 1.0 / (1.0 + tl.exp(-pz))
    a = tl.where(valid, 1.0 - z, 1.0)
    b = tl.where(valid, z * cand, 0.0)
    return a, b, z, cand


@_jit
def _valid(lengths, t, cols, m, H, N, HAS_LEN: tl.constexpr):
    """m, and (with lengths) t < the length of each column's row."""
    if HAS_LEN:
        lens = tl.load(lengths + cols // H, mask=cols < N, other=0)
        return m & (t[:, None] < lens[None, :])
    return m


@_jit
def _fwd_kernel(p, lengths, init, out, sum_a, sum_b, T, H, N, CHUNK,
                REVERSE: tl.constexpr, HAS_INIT: tl.constexpr, WRITE: tl.constexpr,
                HAS_LEN: tl.constexpr, BT: tl.constexpr, BN: tl.constexpr):
    """scan.py's _diag_kernel with a, b computed from p (T, B, 2H); out (T, N), N = B·H."""
    c, cols, cmask, h, prod, begin, end = _chunk_start(init, T, N, CHUNK, HAS_INIT, BN,
                                                         out.dtype.element_ty)
    rows = tl.arange(0, BT)
    for s0 in range(begin, end, BT):
        steps = s0 + rows
        t = T - 1 - steps if REVERSE else steps
        m = (steps < end)[:, None] & cmask[None, :]
        a, b, _, _ = _gates(p, t, cols, m, _valid(lengths, t, cols, m, H, N, HAS_LEN), H, N)
        hs, h, prod = _scan_tile(a, b, h, prod, rows, BT, WRITE)
        if WRITE:
            tl.store(out + t.to(tl.int64)[:, None] * N + cols[None, :], hs, mask=m)
    if not WRITE:
        _chunk_summary(sum_a, sum_b, c, N, cols, cmask, prod, h)


@_jit
def _bwd_kernel(p, lengths, h, h0, dh, init, dp, dh0, sum_a, sum_b, T, H, N, CHUNK,
                REVERSE: tl.constexpr, HAS_INIT: tl.constexpr, WRITE: tl.constexpr,
                HAS_LEN: tl.constexpr, BT: tl.constexpr, BN: tl.constexpr):
    """The adjoint scan, in the order opposite to the forward's (REVERSE is the forward's):
    λ_t = dh_t + a_{t'} λ_{t'}; with WRITE also dp (T, B, 2H) and dh0 (N,)."""
    c, cols, cmask, lam, prod, begin, end = _chunk_start(init, T, N, CHUNK, HAS_INIT, BN,
                                                         dh.dtype.element_ty)
    rows = tl.arange(0, BT)
    for s0 in range(begin, end, BT):
        steps = s0 + rows
        t = steps if REVERSE else T - 1 - steps  # the forward's last step first
        nxt = t - 1 if REVERSE else t + 1  # the step after t in the forward's order
        m = (steps < end)[:, None] & cmask[None, :]
        mn = m & ((nxt >= 0) & (nxt < T))[:, None]
        a_next, _, _, _ = _gates(p, nxt, cols, mn, _valid(lengths, nxt, cols, mn, H, N, HAS_LEN),
                                 H, N)
        at = t.to(tl.int64)[:, None] * N + cols[None, :]
        g = tl.load(dh + at, mask=m, other=0.0)
        lam_t, lam, prod = _scan_tile(a_next, g, lam, prod, rows, BT, WRITE)
        if WRITE:
            valid = _valid(lengths, t, cols, m, H, N, HAS_LEN)
            a, _, z, cand = _gates(p, t, cols, m, valid, H, N)
            prv = t + 1 if REVERSE else t - 1
            first = (prv < 0) | (prv >= T)
            h_prev = tl.where(first[:, None],
                              tl.load(h0 + cols[None, :] + 0 * at, mask=m, other=0.0),
                              tl.load(h + at + (N if REVERSE else -N),
                                      mask=m & ~first[:, None], other=0.0))
            dz = tl.where(valid, lam_t * (cand - h_prev) * z * (1.0 - z), 0.0)
            dc = tl.where(valid, lam_t * z, 0.0)
            off = t.to(tl.int64)[:, None] * 2 * N + (cols // H * 2 * H + cols % H)[None, :]
            tl.store(dp + off, dz, mask=m)
            tl.store(dp + off + H, dc, mask=m)
            tl.store(dh0 + cols[None, :] + 0 * at, a * lam_t, mask=m & first[:, None])
    if not WRITE:
        _chunk_summary(sum_a, sum_b, c, N, cols, cmask, prod, lam)


def _run(kernel, shape_t, n, device, dtype, start, args, consts, chunk=None):
    """The chunked scan driver shared by both kernels: summaries, their scan from
    ``start`` (n,), then the writing pass. ``args`` come before init in the kernel's
    signature, the outputs after it."""
    with on_device(device):
        _run_here(kernel, shape_t, n, device, dtype, start, args, consts, chunk)


def _run_here(kernel, shape_t, n, device, dtype, start, args, consts, chunk):
    chunk, bt, bn = _diag_split(shape_t, n, device, chunk)
    n_chunks = -(-shape_t // chunk)
    grid = (-(-n // bn), n_chunks)
    if n_chunks == 1:
        init = start.reshape(1, n).contiguous()
    else:
        sum_a = torch.empty(n_chunks, n, dtype=dtype, device=device)
        sum_b = torch.empty(n_chunks, n, dtype=dtype, device=device)
        kernel[grid](*args[0], sum_a, *args[1], sum_a, sum_b, shape_t, *consts, chunk,
                     HAS_INIT=False, WRITE=False, BT=bt, BN=bn, **args[2])
        init = torch.empty(n_chunks, n, dtype=dtype, device=device)
        init[0] = start.reshape(n)
        init[1:] = _diag_triton(sum_a[:-1].unsqueeze(1), sum_b[:-1].unsqueeze(1),
                                init[0].unsqueeze(0), False).squeeze(1)
    kernel[grid](*args[0], init, *args[1], init, init, shape_t, *consts, chunk,
                 HAS_INIT=True, WRITE=True, BT=bt, BN=bn, **args[2])


class _GateScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, p, h0, lengths, reverse, chunk):
        steps, batch, two_h = p.shape
        hidden = two_h // 2
        n = batch * hidden
        h = torch.empty(steps, batch, hidden, dtype=p.dtype, device=p.device)
        if steps and n:
            lens = lengths if lengths is not None else h0
            flags = dict(REVERSE=reverse, HAS_LEN=lengths is not None)
            _run(_fwd_kernel, steps, n, p.device, p.dtype, h0.contiguous(),
                 ((p.contiguous(), lens), (h,), flags), (hidden, n), chunk)
        # the inputs themselves, not contiguous copies: a double backward differentiates
        # through them
        ctx.save_for_backward(p, h0, h, lengths)
        ctx.reverse, ctx.chunk = reverse, chunk
        return h

    @staticmethod
    def backward(ctx, dh):
        p, h0, h, lengths = ctx.saved_tensors
        if torch.is_grad_enabled() or torch._C._functorch.is_legacy_batchedtensor(dh):
            # gradients of gradients (create_graph=True), or batched ones (vmap over the
            # backward: is_grads_batched=True), through the same function written in
            # differentiable torch ops
            needs = ctx.needs_input_grad[:2]
            wanted = [t for t, need in zip((p, h0), needs, strict=True) if need]
            with torch.enable_grad():
                h_ = torch_gate_scan(p, h0, lengths, ctx.reverse)
                grads = iter(torch.autograd.grad(h_, wanted, dh, create_graph=True))
            return (*(next(grads) if need else None for need in needs), None, None, None)
        steps, batch, two_h = p.shape
        hidden = two_h // 2
        n = batch * hidden
        p, h0 = p.contiguous(), h0.contiguous()
        dp = torch.zeros_like(p)
        dh0 = torch.zeros_like(h0)
        if steps and n:
            lens = lengths if lengths is not None else h0
            flags = dict(REVERSE=ctx.reverse, HAS_LEN=lengths is not None)
            _run(_bwd_kernel, steps, n, p.device, p.dtype, torch.zeros_like(h0),
                 ((p, lens, h, h0, dh.contiguous()), (dp, dh0), flags), (hidden, n),
                 ctx.chunk)
        return dp, dh0, None, None, None


def torch_gate_scan(p: Tensor, h0: Tensor, lengths: Tensor | None, reverse: bool,
                    impl: str = "torch") -> Tensor:
    """The same h from torch ops and flashgru.scan's ``impl`` (differentiable twice): the
    path without the fused kernels. Under autocast p may be low precision; the scan runs
    in h0's dtype."""
    from .scan import scan_diag
    hidden = h0.shape[-1]
    z = torch.sigmoid(p[..., :hidden])
    a, b = (1 - z).to(h0.dtype), (z * p[..., hidden:]).to(h0.dtype)
    if lengths is not None:
        steps = torch.arange(p.shape[0], device=p.device).unsqueeze(1)  # (T, 1)
        valid = (steps < lengths.to(p.device).unsqueeze(0)).unsqueeze(-1)  # (T, B, 1)
        a, b = torch.where(valid, a, 1.0), torch.where(valid, b, 0.0)
    return scan_diag(a, b, h0, reverse=reverse, impl=impl)


def available(p: Tensor, h0: Tensor) -> bool:
    """Whether the fused kernels take this call: Triton, CUDA tensors (or the interpreter),
    float32/float64 in one dtype."""
    return (triton is not None and p.dtype in (torch.float32, torch.float64)
            and h0.dtype == p.dtype and (p.device.type == "cuda" or INTERPRET))


def gate_scan(p: Tensor, h0: Tensor, lengths: Tensor | None, reverse: bool,
              chunk: int | None = None) -> Tensor:
    """h (T, B, H) from p (T, B, 2H) = [p_z, p_h] and h0 (B, H), holding the state at and
    past each row's length; differentiable in p and h0. ``chunk`` forces the split (the
    tests force several chunks at small sizes)."""
    if lengths is not None:
        lengths = lengths.to(device=p.device, dtype=torch.int64).contiguous()
    return _GateScan.apply(p, h0, lengths, bool(reverse), chunk)


__all__ = ["available", "gate_scan", "torch_gate_scan"]
