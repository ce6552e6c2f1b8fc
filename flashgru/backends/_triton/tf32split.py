"""fp32 a = hi + lo in one pass over memory (``tf32x3.split`` on CUDA): hi rounded to TF32's
10-bit mantissa, lo the rest, the same bits as the torch ops of ``tf32x3._split_ops``.

Those ops make eight passes over the operand (the add and the mask, the overflow check's
isinf, isfinite and their and, the truncated mask, where, the subtraction): 62 bytes moved
an element. At a B=16, H=1024 training call's largest operand, the gates' gradient (T·B ×
3H fp32: 100 MB at T=512), that is ~1.6 GB of memory traffic a split, about as long as the
three TF32 products it feeds. This kernel reads a
once and writes hi and lo: 12 bytes an element. ``wide`` writes the parts side by side
along one dimension, hi twice, for one GEMM over 3K (gemm.mm_wide): 16 bytes an element.
"""

from __future__ import annotations

import torch

from ...scan import on_device
from .lang import _jit, tl, triton

BLOCK = 4096  # (elements a program: 16 KiB read, 32 KiB written)


@_jit
def _parts(x):
    """fp32 x's TF32 parts (hi, lo), x = hi + lo exactly: hi rounded to nearest, ties away
    (the carry may reach the exponent, and past the largest finite value to inf: there
    truncated instead), lo the rest. Also the fused GEMM's (_triton.gemm)."""
    bits = x.to(tl.int32, bitcast=True)
    rounded = (bits + 0x1000) & -8192
    overflowed = ((rounded & 0x7FFFFFFF) == 0x7F800000) & ((bits & 0x7F800000) != 0x7F800000)
    high = tl.where(overflowed, bits & -8192, rounded).to(tl.float32, bitcast=True)
    return high, x - high


@_jit
def _split_kernel(a, hi, lo, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    high, low = _parts(tl.load(a + offs, mask=mask, other=0.0))
    tl.store(hi + offs, high, mask=mask)
    tl.store(lo + offs, low, mask=mask)


@_jit
def _wide_kernel(a, out, M, K, sam, sak, som, sok, part, LO_FIRST: tl.constexpr,
                 BM: tl.constexpr, BK: tl.constexpr):
    """A BM × BK tile of a (M × K, any strides) split, its parts written three times, part
    elements apart in out: (lo, hi, hi) where LO_FIRST, else (hi, lo, hi)."""
    pid = tl.program_id(0)
    tiles_k = tl.cdiv(K, BK)
    rm = (pid // tiles_k) * BM + tl.arange(0, BM)
    rk = (pid % tiles_k) * BK + tl.arange(0, BK)
    mask = (rm < M)[:, None] & (rk < K)[None, :]
    rm64, rk64 = rm.to(tl.int64), rk.to(tl.int64)
    high, low = _parts(tl.load(a + rm64[:, None] * sam + rk64[None, :] * sak, mask=mask,
                               other=0.0))
    o = out + rm64[:, None] * som + rk64[None, :] * sok
    part64 = tl.cast(part, tl.int64)  # (2 · part can pass 2^31 where part doesn't)
    if LO_FIRST:
        tl.store(o, low, mask=mask)
        tl.store(o + part64, high, mask=mask)
    else:
        tl.store(o, high, mask=mask)
        tl.store(o + part64, low, mask=mask)
    tl.store(o + 2 * part64, high, mask=mask)


WIDE_TILE = (64, 64)  # (a wide split's tile: 16 KiB read, 48 KiB written)


def wide(a: torch.Tensor, dim: int, lo_first: bool) -> torch.Tensor:
    """2-D fp32 a's TF32 parts side by side along ``dim``, in one pass over a (any strides)
    and a new contiguous tensor of a's shape with that dimension tripled: (lo, hi, hi)
    where ``lo_first``, else (hi, lo, hi). [a_lo a_hi a_hi] (dim 1) @ [b_hi; b_lo; b_hi]
    (dim 0) is a_lo·b_hi + a_hi·b_lo + a_hi·b_hi as one product over 3K (gemm.mm_wide)."""
    m, k = a.shape
    out = torch.empty((m, 3 * k) if dim == 1 else (3 * m, k), dtype=a.dtype, device=a.device)
    if m and k:
        bm, bk = WIDE_TILE
        with on_device(a.device):  # (kernels launch on the current CUDA device)
            _wide_kernel[(triton.cdiv(m, bm) * triton.cdiv(k, bk),)](
                a, out, m, k, *a.stride(), *out.stride(), k if dim == 1 else m * k,
                LO_FIRST=lo_first, BM=bm, BK=bk)
    return out


def split(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``tf32x3.split(a)`` by _split_kernel: a's parts, contiguous, in a's shape (a made
    contiguous first where it isn't)."""
    a = a.contiguous()
    hi, lo = torch.empty_like(a), torch.empty_like(a)
    n = a.numel()
    if n:
        with on_device(a.device):  # (kernels launch on the current CUDA device)
            _split_kernel[(triton.cdiv(n, BLOCK),)](a, hi, lo, n, BLOCK=BLOCK)
    return hi, lo
