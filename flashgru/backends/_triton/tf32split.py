"""fp32 a = hi + lo in one pass over memory (``tf32x3.split`` on CUDA): hi rounded to TF32's
10-bit mantissa, lo the rest, the same bits as the torch ops of ``tf32x3._split_ops``.

Those ops make eight passes over the operand (the add and the mask, the overflow check's
isinf, isfinite and their and, the truncated mask, where, the subtraction): 62 bytes moved
an element. At a B=16, H=1024 training call's largest operand, the gates' gradient (T·B ×
3H fp32: 100 MB at T=512), that is ~1.6 GB of memory traffic a split, about as long as the
three TF32 products it feeds. This kernel reads a
once and writes hi and lo: 12 bytes an element.
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
