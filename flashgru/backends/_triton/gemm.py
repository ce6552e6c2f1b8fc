"""fp32 a @ b (+ a bias row) as three TF32 products in one kernel (``tf32x3.mm`` on CUDA
with Triton): each tile of a and b read once in fp32 and split in registers
(tf32split._parts, the same parts as ``tf32x3.split``), the three products summed in one
fp32 accumulator on the tensor cores, the result written once.

The unfused way (``tf32x3._mm_parts``) splits each operand in a pass of its own (12 bytes
an element moved), then runs three cuBLAS TF32 GEMMs, the second and third reading and
writing the output again: at a B=16, H=1024 training call's input projection (8192 ×
1024 @ 1024 × 3072, T=512) ~0.5 GB of memory traffic besides the products. Here: the
operands once (within the L2's reuse of the tiles), the output once. Strided operands
(a transposed view, the gates' gradient's r and z columns) are read in place, not copied.
Under TRITON_INTERPRET=1 the products run in fp32 (the interpreter's dot ignores TF32):
the tests check the arithmetic around them, the GPU-only tests the precision.
"""

from __future__ import annotations

import torch

from ...scan import on_device
from .. import tf32x3
from .lang import _jit, tl, triton
from .splits import _grid_limit
from .tf32split import _parts, wide

# The tile (rows of a, columns of b, K a step), the programs' grouping (GROUP row tiles
# share their column tiles in L2), warps and pipeline stages. Untimed on a GPU:
# scripts/gpu_probe_gemm.py times these against the alternatives in its TILES.
TILE = (128, 128, 32)
GROUP = 8
WARPS = 8
STAGES = 3
# Where the output has fewer tiles than the card has multiprocessors (a weight gradient:
# 3H × H over K = T·B, 48 tiles of 128 × 128 at H=512), K is cut into slices, each
# program a tile's slice, at least MIN_SLICE long, up to about two programs a
# multiprocessor; the slices' partial products are summed after (in a fixed order: the
# same result every run).
MIN_SLICE = 512
# (the multiprocessors the slices count on off CUDA: the interpreter's tests)
CPU_MULTIPROCESSORS = 4
# mm_wide's operands, three times the size of a and b, at most ~WIDE_ELEMENTS values (512
# MiB) at once: K in spans of at least WIDE_MIN_SPAN, each span's product added to the
# output. (A weight gradient's K is T·B: at T=65536, B=16, H=1024 the gates' gradient
# alone is 12.9 GB, its wide parts would be three times that. At T=512, B=16, H ≤ 1024
# each of a call's four products takes one span.)
WIDE_ELEMENTS = 1 << 27
WIDE_MIN_SPAN = 256


@_jit
def _tf32x3_kernel(a, b, bias, c, M, N, K, KS, sam, sak, sbk, sbn, scs, scm, scn,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                   GROUP: tl.constexpr, BIAS: tl.constexpr):
    """c[slice][BM × BN tile] = a[rows, slice] @ b[slice, columns] (+ bias[columns]) over
    K's slice (program_id 1) of KS: each K step's tiles split into TF32 parts,
    a_lo·b_hi + a_hi·b_lo + a_hi·b_hi added in that order (the small terms first) into
    one fp32 accumulator. Programs go down GROUP row tiles before the next column tile."""
    pid = tl.program_id(0)
    tiles_n = tl.cdiv(N, BN)
    per_group = GROUP * tiles_n
    first = pid // per_group * GROUP
    rows_here = tl.minimum(tl.cdiv(M, BM) - first, GROUP)
    pm = first + pid % per_group % rows_here
    pn = pid % per_group // rows_here
    k_begin = tl.program_id(1) * KS
    k_end = tl.minimum(K, k_begin + KS)
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    mmask, nmask = rm < M, rn < N
    pa = a + rm.to(tl.int64)[:, None] * sam + (k_begin + rk).to(tl.int64)[None, :] * sak
    pb = b + (k_begin + rk).to(tl.int64)[:, None] * sbk + rn.to(tl.int64)[None, :] * sbn
    acc = tl.zeros((BM, BN), tl.float32)
    for k0 in range(k_begin, k_end, BK):
        kmask = rk < k_end - k0
        a_hi, a_lo = _parts(tl.load(pa, mask=mmask[:, None] & kmask[None, :], other=0.0))
        b_hi, b_lo = _parts(tl.load(pb, mask=kmask[:, None] & nmask[None, :], other=0.0))
        acc = tl.dot(a_lo, b_hi, acc, input_precision="tf32")
        acc = tl.dot(a_hi, b_lo, acc, input_precision="tf32")
        acc = tl.dot(a_hi, b_hi, acc, input_precision="tf32")
        pa += tl.cast(BK, tl.int64) * sak  # (in int64: a stride of 2^26 or more times
        # BK would wrap in int32)
        pb += tl.cast(BK, tl.int64) * sbk
    if BIAS:
        acc += tl.load(bias + rn, mask=nmask, other=0.0)[None, :]
    pc = c + tl.program_id(1).to(tl.int64) * scs + rm.to(tl.int64)[:, None] * scm + \
        rn.to(tl.int64)[None, :] * scn
    tl.store(pc, acc, mask=mmask[:, None] & nmask[None, :])


def _slices(tiles: int, k: int, bk: int, device: torch.device) -> int:
    """How many slices K is cut into (MIN_SLICE): 1 where the tiles alone fill the card."""
    sms = _grid_limit(device) if device.type == "cuda" else CPU_MULTIPROCESSORS
    if tiles >= sms:
        return 1
    return max(1, min(-(-2 * sms // tiles), k // max(MIN_SLICE, bk)))


def mm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None,
       out: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b (+ bias, fp32, broadcast to a row of N as F.linear's is, then over the rows)
    for fp32 2-D a (M × K) and b (K × N), any strides, on one device, into ``out`` (M × N
    fp32, any strides, not overlapping a or b) if given."""
    out, bias = _checked(a, b, bias, out)
    (m, k), n = a.shape, b.shape[1]
    if not (m and n):
        return out
    bm, bn, bk = TILE
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    slices = _slices(tiles, k, bk, a.device)
    span = triton.cdiv(triton.cdiv(k, slices), bk) * bk  # (K a slice, whole steps)
    slices = triton.cdiv(k, span) if k else 1
    # (one slice: the output itself; several: their partial products, summed after)
    c = out if slices == 1 else torch.empty(slices, m, n, dtype=torch.float32,
                                            device=a.device)
    strides = (0, *out.stride()) if slices == 1 else c.stride()
    in_kernel = bias is not None and slices == 1  # (else added after the slices' sum)
    with on_device(a.device):  # (kernels launch on the current CUDA device)
        _tf32x3_kernel[(tiles, slices)](
            a, b, bias if in_kernel else c, c, m, n, k, span, *a.stride(), *b.stride(),
            *strides, BM=bm, BN=bn, BK=bk, GROUP=GROUP, BIAS=in_kernel, num_warps=WARPS,
            num_stages=STAGES)
    if slices > 1:
        torch.sum(c, 0, out=out)
        if bias is not None:
            out += bias
    return out


def mm_wide(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """``mm``'s a @ b (+ bias), the same operands, as one cuBLAS TF32 GEMM over 3K:
    [a_lo a_hi a_hi] @ [b_hi; b_lo; b_hi], each operand's parts laid side by side in one
    pass (tf32split.wide), three times its size. The products then pipeline on the tensor
    cores as one GEMM's (``mm``'s kernel waits for each of its three before the next); the
    split's passes and the wide operands cost memory instead (tf32x3.WAY chooses): K in
    spans where they would pass WIDE_ELEMENTS values, each span's product added in."""
    out, bias = _checked(a, b, bias, out)
    (m, k), n = a.shape, b.shape[1]
    if not (m and n):
        return out
    span = max(WIDE_MIN_SPAN, WIDE_ELEMENTS // (3 * (m + n)))  # (K a span: WIDE_ELEMENTS)
    with tf32x3._tf32():
        for k0 in range(0, k, span) or (0,):  # (K = 0: one empty span, the bias or zeros)
            a_wide = wide(a[:, k0: k0 + span], 1, lo_first=True)
            b_wide = wide(b[k0: k0 + span], 0, lo_first=False)
            if k0:
                out.addmm_(a_wide, b_wide)
            elif bias is None:
                torch.mm(a_wide, b_wide, out=out)
            else:
                torch.addmm(bias, a_wide, b_wide, out=out)
            del a_wide, b_wide  # (freed before the next span's are made)
    return out


def _checked(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None,
             out: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """mm's operands checked; its output (``out``, or a new one) and its bias as a
    contiguous row of N (the kernel reads N contiguous values), or None."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0] or \
            a.dtype != torch.float32 or b.dtype != torch.float32 or a.device != b.device:
        raise ValueError(f"fp32 (M × K) @ (K × N) operands on one device; got {a.dtype} "
                         f"{tuple(a.shape)} on {a.device} and {b.dtype} {tuple(b.shape)} "
                         f"on {b.device}")
    (m, _), n = a.shape, b.shape[1]
    if out is None:
        out = torch.empty(m, n, dtype=torch.float32, device=a.device)
    elif out.shape != (m, n) or out.dtype != torch.float32 or out.device != a.device:
        raise ValueError(f"out must be fp32 {(m, n)} on {a.device}; got {out.dtype} "
                         f"{tuple(out.shape)} on {out.device}")
    if bias is not None:
        if bias.dtype != torch.float32 or bias.device != a.device:
            raise ValueError(f"bias must be fp32 on {a.device}; got {bias.dtype} on "
                             f"{bias.device}")
        bias = torch.broadcast_to(bias, (n,)).contiguous()
    return out, bias
