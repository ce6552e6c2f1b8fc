"""The "torch" backend: torch's own fused GRU (cuDNN on CUDA, ATen on CPU).

It runs the whole stack of layers in one call, exactly as torch.nn.GRU does, so flashgru
is never slower than torch where no faster backend of ours applies. It exists only for
reset_after=True: torch has no kernel for the reset-before-matmul formulation.

cuDNN refuses sequences of 65536 steps or more (CUDNN_STATUS_NOT_SUPPORTED, measured on
an H100 with torch 2.11). Such calls run with cuDNN disabled, on torch's native CUDA
kernels (one fused cell per step), so this backend never fails on length.
"""

from __future__ import annotations

import contextlib

import torch
from torch import _VF, Tensor

CUDNN_MAX_STEPS = 65535


def gru_stack(
    input: Tensor,
    hx: Tensor,
    weights: list[Tensor],
    *,
    has_biases: bool,
    num_layers: int,
    dropout: float,
    training: bool,
    bidirectional: bool,
    batch_first: bool,
    batch_sizes: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """torch's ``_VF.gru`` with the same arguments as ``flashgru.functional.gru``."""
    if batch_sizes is not None:
        steps = batch_sizes.numel()
    else:
        steps = input.size(1 if batch_first else 0)
    cudnn_off = input.is_cuda and steps > CUDNN_MAX_STEPS
    guard = torch.backends.cudnn.flags(enabled=False) if cudnn_off else contextlib.nullcontext()
    with guard:
        if batch_sizes is None:
            out, h_n = _VF.gru(
                input, hx, weights, has_biases, num_layers, dropout, training,
                bidirectional, batch_first,
            )
        else:
            out, h_n = _VF.gru(
                input, batch_sizes, hx, weights, has_biases, num_layers, dropout,
                training, bidirectional,
            )
    return out, h_n
