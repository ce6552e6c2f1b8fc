"""fp32 GEMMs as three TF32 ones: the triton backend's input projection, its gradients and
dW_hh on the tensor cores at fp32's accuracy (opt-in, ``enabled``: slower in training on an
H200, B=16, H=512 and 1024, 2026-11-28).

With TF32 off (torch's default for matmuls, and issue 5's setting), an fp32 GEMM runs on
the CUDA cores: a B=16, H=1024 training call's four (the input projection, its two
gradients, dW_hh) come to ~6 µs a step at an H200's fp32 peak. Split into TF32-exact
parts, a = a_hi + a_lo (a_hi rounded to TF32's 10-bit mantissa, a_lo = a - a_hi exact),
a·b ≈ a_lo·b_hi + a_hi·b_lo + a_hi·b_hi: three TF32 products (each elementwise product
exact, summed in fp32), missing only a_lo·b_lo (~2^-22 of each product), as the stacked
splits' in-kernel products do (_triton.stacked._stacked_dot). On the A100 and H100/H200 TF32's
rate is 7-8x fp32's, so three of them should take well under one fp32 GEMM's time
(scripts/gpu_probe_gemm.py measures it); on the consumer parts the two rates are alike,
and this would be slower. Off CUDA the three products run in fp32: the same numbers to
fp32's rounding, slower, for the tests.

On CUDA with Triton, a GEMM's split and three products run in one kernel (_triton.gemm:
each operand read once, the output written once, not three times), or, with ``WAY`` "wide",
as one cuBLAS TF32 GEMM over 3K of operands split in one pass each into their parts side
by side ([a_lo a_hi a_hi] @ [b_hi; b_lo; b_hi]). Elsewhere the operands
are split first and the products are three cuBLAS TF32 GEMMs (_mm_parts), which turn
torch.backends.cuda.matmul.allow_tf32 on for their own duration (a process-wide flag;
restored after). Not where something records, transforms or recasts
the call (backends.recording(), cpu_step._special_mode(): tracing, torch.compile,
torch.export, torch.func, autocast, torch function or dispatch modes): there F.linear.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

# The triton backend's fp32 GEMMs as three TF32 ones: off, as they lost in training on an
# H200 (benchmarks/gpu.py --tf32x3-beside, B=16: forward+backward 14.13 µs a step against
# 11.25 at H=512, 25.51 against 23.31 at H=1024; 2026-11-28; scripts/gpu_probe_gemm.py
# times the GEMMs apart). True: wherever they apply; FAST: only on CUDA cards of FAST_TF32
# (the consumer parts' TF32 rate is near their fp32 rate).
enabled: bool | str = False
FAST = "fast"
# (compute capabilities whose TF32 tensor-core rate is 7-8x the fp32 rate, by the
# vendor's figures: the A100, the H100 and H200)
FAST_TF32 = frozenset({(8, 0), (9, 0)})
_fast: dict[torch.device, bool] = {}
# (the devices whose tensors ``split`` in one pass, by a Triton kernel: the tests add the
# CPU's under TRITON_INTERPRET=1)
FUSED_DEVICES = ("cuda",)
# (the devices whose operands ``mm`` multiplies in one kernel, split and all (_triton.gemm):
# likewise)
GEMM_DEVICES = ("cuda",)
# How ``mm`` multiplies there: "kernel", the three products in one Triton kernel
# (_triton.gemm.mm), or "wide", one cuBLAS TF32 GEMM over 3K of operands whose parts a
# pass lays side by side (gemm.mm_wide). Neither is timed yet; scripts/gpu_probe_gemm.py
# times both at a GRU call's four GEMMs.
WAY = "kernel"
WAYS = ("kernel", "wide")


def _fast_tf32(device: torch.device) -> bool:
    """Whether ``device`` is a CUDA card of FAST_TF32 (cached per device)."""
    if device.type != "cuda":
        return False
    if device not in _fast:
        _fast[device] = torch.cuda.get_device_capability(device) in FAST_TF32
    return _fast[device]


def applies(*tensors: Tensor) -> bool:
    """Whether the GEMMs of these operands go through ``mm``: ``enabled`` (FAST: the
    operands on a FAST_TF32 card), all fp32, TF32 not already allowed (a plain matmul then
    runs on the tensor cores, faster), nothing recording, transforming or autocasting the
    call."""
    if not enabled:  # (first: a call's host time)
        return False
    if enabled is not True and enabled != FAST:
        raise ValueError(f"tf32x3.enabled is False, True or tf32x3.FAST ({FAST!r}); got "
                         f"{enabled!r}")
    from . import cpu_step, recording  # (the package imports this module)

    return (all(t.dtype == torch.float32 for t in tensors) and
            not torch.backends.cuda.matmul.allow_tf32 and recording() is None and
            not cpu_step._special_mode() and
            (enabled is True or all(_fast_tf32(t.device) for t in tensors)))


def split(a: Tensor) -> tuple[Tensor, Tensor]:
    """fp32 a = hi + lo exactly: hi, a rounded to TF32's 10-bit mantissa (the tensor cores
    multiply it exactly; truncated where rounding would overflow), and lo, the rest (at
    most 2^-11 of a; the cores keep its top 11 bits). Also the W_hh parts of the Triton
    backend's stacked splits (_triton.launch._tf32_parts). On CUDA with Triton, one pass
    over memory (_triton.tf32split; the same bits), a 2-D transposed view split as its
    contiguous transpose; elsewhere the torch ops of _split_ops."""
    if a.device.type in FUSED_DEVICES and a.numel():
        from ._triton import lang, tf32split

        if lang.triton is not None:
            if a.dim() == 2 and not a.is_contiguous() and a.t().is_contiguous():
                hi, lo = tf32split.split(a.t())
                return hi.t(), lo.t()
            return tf32split.split(a)
    return _split_ops(a)


def _split_ops(a: Tensor) -> tuple[Tensor, Tensor]:
    """split(a) in torch's elementwise ops (eight passes over a's memory)."""
    bits = a.view(torch.int32)
    hi = ((bits + 0x1000) & -8192).view(torch.float32)
    hi = torch.where(hi.isinf() & a.isfinite(), (bits & -8192).view(torch.float32), hi)
    return hi, a - hi


@contextlib.contextmanager
def _tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def _fused(*operands: Tensor | tuple[Tensor, Tensor]) -> bool:
    """Whether ``mm`` multiplies these operands in one kernel (_triton.gemm): each a tensor,
    not parts split beforehand, on a device of GEMM_DEVICES, with Triton installed."""
    if not all(isinstance(x, Tensor) and x.device.type in GEMM_DEVICES for x in operands):
        return False
    from ._triton import lang

    return lang.triton is not None


def operand(x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
    """x as ``mm`` best takes it for several products: itself where they run in one kernel
    (_fused), else its parts, split once."""
    return x if _fused(x) else split(x)


def mm(a: Tensor | tuple[Tensor, Tensor], b: Tensor | tuple[Tensor, Tensor], *,
       bias: Tensor | None = None, out: Tensor | None = None) -> Tensor:
    """a @ b (+ bias, a row broadcast over the rows) for fp32 2-D operands as three TF32
    products: where _fused (on CUDA with Triton) in one kernel, or as one GEMM over 3K
    (``WAY``), else of their parts (``split``; either operand may come as its parts, split
    once for several products, ``operand``), into ``out`` if given."""
    if WAY not in WAYS:  # (wherever it runs: a misspelt way is an error, not the default)
        raise ValueError(f"tf32x3.WAY is one of {', '.join(map(repr, WAYS))}; got {WAY!r}")
    if _fused(a, b):
        from ._triton import gemm

        return (gemm.mm_wide if WAY == "wide" else gemm.mm)(a, b, bias, out)
    return _mm_parts(*(x if isinstance(x, tuple) else split(x) for x in (a, b)), bias, out)


def _mm_parts(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor],
              bias: Tensor | None = None, out: Tensor | None = None) -> Tensor:
    """a @ b (+ bias, a row broadcast over the rows) from the parts (hi, lo) of each:
    a_lo·b_hi + a_hi·b_lo + a_hi·b_hi in TF32, each product added to the output (``out``
    if given) in place (an out-of-place addmm copies its input first: a pass over the
    output, 100 MB for a B=16, H=1024 input projection at T=512, saved twice; the bias
    too goes in the first product, not in a pass of its own)."""
    (a_hi, a_lo), (b_hi, b_lo) = a, b
    with _tf32():
        if bias is not None:
            out = torch.addmm(bias, a_lo, b_hi, out=out)
        else:
            out = torch.mm(a_lo, b_hi, out=out)
        return out.addmm_(a_hi, b_lo).addmm_(a_hi, b_hi)


def _t(x: Tensor | tuple[Tensor, Tensor]) -> Tensor | tuple[Tensor, Tensor]:
    """A 2-D operand's transpose, or its parts' (views)."""
    return x.t() if isinstance(x, Tensor) else (x[0].t(), x[1].t())


class _Linear(torch.autograd.Function):
    """F.linear's x @ wᵀ + b with every GEMM, forward and backward, through ``mm``."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.bias = b is not None
        flat = x.reshape(-1, x.shape[-1])
        # (unfused, w.t() is split as w is stored, then transposed: split's rule)
        out = mm(flat, w.t(), bias=b)
        return out.reshape(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        g = grad.reshape(-1, w.shape[0])
        dx = dw = db = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            g_op = operand(g)  # (split once for both products, where split: the largest)
        if ctx.needs_input_grad[0]:
            dx = mm(g_op, w).reshape(x.shape)
        if ctx.needs_input_grad[1]:
            dw = mm(_t(g_op), x.reshape(-1, x.shape[-1]))
        if ctx.bias and ctx.needs_input_grad[2]:
            db = g.sum(0)
        return dx, dw, db


def linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """F.linear(x, w, b), its GEMMs through ``mm`` where ``applies``."""
    if applies(x, w) and (b is None or b.dtype == torch.float32):
        return _Linear.apply(x, w, b)
    return F.linear(x, w, b)
