"""The reference recurrent core: a readable PyTorch loop, the ground truth.

Every fused backend is tested against this file. Autograd differentiates it, so it gives
gradients and double backward for both formulations with no hand-written backward.

One step, gates in the order r, z, n inside every weight and bias (as torch):

reset_after=True (torch, cuDNN)::

    gh = W_hh h + b_hh = [gh_r, gh_z, gh_n]
    r = σ(gi_r + gh_r)    z = σ(gi_z + gh_z)    n = tanh(gi_n + r ⊙ gh_n)
    h' = (1 − z) ⊙ n + z ⊙ h

reset_after=False (the original paper; ONNX linear_before_reset=0)::

    r = σ(gi_r + W_hr h + b_hr)    z = σ(gi_z + W_hz h + b_hz)
    n = tanh(gi_n + W_hn (r ⊙ h) + b_hn)
    h' = (1 − z) ⊙ n + z ⊙ h

where ``gi = W_ih x + b_ih`` is computed by the caller for all steps at once.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class GateTrace(NamedTuple):
    """Per-step values of one GRU layer and direction.

    Fields (each shaped like the hidden state of the call that produced them):
      r: reset gate σ(·), in [0, 1].
      z: update gate σ(·), in [0, 1], torch's convention: h' = (1 − z) ⊙ n + z ⊙ h.
         A text that writes h' = z ⊙ n + (1 − z) ⊙ h calls our ``1 - z`` its z.
      n: candidate state tanh(·), in [-1, 1].
      h: hidden state after the step (the layer's output).
    """

    r: Tensor
    z: Tensor
    n: Tensor
    h: Tensor


def step(
    gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None, reset_after: bool
) -> GateTrace:
    """One GRU step. gi: (B, 3H) input projection with b_ih; h: (B, H). Returns the gates
    r, z, n and the new state h', each (B, H)."""
    gi_r, gi_z, gi_n = gi.chunk(3, dim=-1)
    hidden = h.size(-1)
    if reset_after:
        gh_r, gh_z, gh_n = F.linear(h, w_hh, b_hh).chunk(3, dim=-1)
        r = torch.sigmoid(gi_r + gh_r)
        z = torch.sigmoid(gi_z + gh_z)
        n = torch.tanh(gi_n + r * gh_n)
    else:
        b_rz = None if b_hh is None else b_hh[: 2 * hidden]
        b_n = None if b_hh is None else b_hh[2 * hidden :]
        gh_r, gh_z = F.linear(h, w_hh[: 2 * hidden], b_rz).chunk(2, dim=-1)
        r = torch.sigmoid(gi_r + gh_r)
        z = torch.sigmoid(gi_z + gh_z)
        n = torch.tanh(gi_n + F.linear(r * h, w_hh[2 * hidden :], b_n))
    h_new = (1 - z) * n + z * h
    return GateTrace(r, z, n, h_new)


def refuse_other_backwards(backend: str, *grads: Tensor | None) -> None:
    """For a fused backend's hand-written backward, which runs its kernels on plain tensors
    outside autograd: refuse, with the way out, a backward that would need more than that
    (never a silent zero or an internal error): gradients of gradients (create_graph=True),
    or a backward of batched ``grads`` (vmap over it: autograd.grad with
    is_grads_batched=True, jacobian or hessian with vectorize=True). (torch.func's
    transforms refuse these Functions before their backward: no setup_context.)"""
    if torch.is_grad_enabled():
        raise RuntimeError(f"backend '{backend}' has no double backward; use "
                           f"backend='reference' for gradients of gradients")
    if any(g is not None and torch._C._functorch.is_legacy_batchedtensor(g) for g in grads):
        raise RuntimeError(f"backend '{backend}' has no batched backward (vmap over the "
                           f"backward: is_grads_batched=True, vectorize=True); use "
                           f"backend='reference'")


def core(
    gi: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    b_hh: Tensor | None,
    lengths: Tensor | None,
    reset_after: bool,
    *,
    return_gates: bool = False,
):
    """The recurrent core: run one layer in one direction over all steps.

    gi: (T, B, 3H) = W_ih x_t + b_ih for every t;  h0: (B, H);  w_hh: (3H, H);
    b_hh: (3H,) or None;  lengths: (B,) int64 or None (all sequences have T steps).
    A step at or past a sequence's length leaves its h unchanged and writes 0 to out.

    Returns out (T, B, H); with ``return_gates=True`` also a GateTrace of (T, B, H)
    tensors, zero past each sequence's length.
    """
    steps = gi.size(0)
    if torch.jit.is_tracing():  # (a trace unrolls the loop below: its length is fixed)
        warnings.warn(
            f"a trace (torch.jit.trace, torch.onnx.export) records the reference core's "
            f"loop over this call's {steps} steps: the trace gives right results only for "
            f"inputs of {steps} steps (backend 'torch', for reset_after=True, traces as one "
            "op of any length)",
            torch.jit.TracerWarning, stacklevel=2)
    valid = None
    if lengths is not None:
        t = torch.arange(steps, device=gi.device).unsqueeze(1)  # (T, 1)
        valid = (t < lengths.to(gi.device).unsqueeze(0)).unsqueeze(-1)  # (T, B, 1)
    h = h0
    traces = []
    for t in range(steps):
        trace = step(gi[t], h, w_hh, b_hh, reset_after)
        if valid is None:
            h = trace.h
        else:
            h = torch.where(valid[t], trace.h, h)
            trace = GateTrace(*(torch.where(valid[t], v, 0.0) for v in trace))
        traces.append(trace if return_gates else trace.h)
    if not return_gates:
        return torch.stack(traces) if traces else gi.new_zeros(0, *h0.shape)
    gates = GateTrace(*(torch.stack(v) for v in zip(*traces, strict=True)))
    return gates.h, gates
