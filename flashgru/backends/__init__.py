"""Backends and the one dispatch point that picks among them.

A backend implements either the recurrent core (``core(gi, h0, w_hh, b_hh, lengths,
reset_after) -> out``, see ``reference.core``) or, like "torch", the whole stack of layers
with ``_VF.gru``'s arguments. ``BACKENDS`` is the whole registry: a dict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from . import reference, torch_native


@dataclass(frozen=True)
class Backend:
    """What the dispatcher needs to know about a backend.

    run: the recurrent core (``kind == "core"``) or the whole stack (``kind == "stack"``).
    reset_before: whether it runs reset_after=False.
    missing: returns None when the backend can run here, else what to install.
    """

    name: str
    kind: str
    run: Callable
    reset_before: bool
    missing: Callable[[], str | None] = lambda: None


BACKENDS: dict[str, Backend] = {
    "reference": Backend("reference", "core", reference.core, reset_before=True),
    "torch": Backend("torch", "stack", torch_native.gru_stack, reset_before=False),
}


class BackendChoice(NamedTuple):
    """The backend a call runs on, and why."""

    name: str
    reason: str


class BackendUnavailableError(RuntimeError):
    """A requested backend can't run here (a missing optional dependency)."""


def check_backend_name(name: str) -> None:
    """Raise ValueError for a backend name that flashgru does not know."""
    if name != "auto" and name not in BACKENDS:
        known = ", ".join(repr(n) for n in ("auto", *BACKENDS))
        raise ValueError(f"unknown backend {name!r}; choose one of {known}")


def select_backend(
    requested: str = "auto",
    *,
    reset_after: bool = True,
    device: torch.device | str = "cpu",
    steps: int = 1,
) -> BackendChoice:
    """Pick the backend for one call of ``flashgru.functional.gru`` and say why.

    ``requested`` other than "auto" is honoured or refused with an error that says what
    to install or change; it is never silently replaced. For "auto" the rules are, first
    match wins:

    1. ``reset_after=False`` → "reference": torch has no kernel for the reset-before-matmul
       formulation and no fused backend of ours is installed for it.
    2. otherwise → "torch": torch's own fused GRU (cuDNN on CUDA, ATen on CPU). On CUDA
       with ``steps`` ≥ 65536, which cuDNN refuses, it runs torch's native CUDA kernels
       with cuDNN disabled, so auto never picks a call that fails on length.

    ``device`` and ``steps`` (sequence length) are the call's; they refine the reason now
    and the rules as faster backends arrive.
    """
    check_backend_name(requested)
    device = torch.device(device)
    if requested != "auto":
        backend = BACKENDS[requested]
        hint = backend.missing()
        if hint is not None:
            raise BackendUnavailableError(f"backend {requested!r} is unavailable: {hint}")
        if not reset_after and not backend.reset_before:
            raise ValueError(
                f"backend {requested!r} runs only reset_after=True (torch's formulation); "
                "for reset_after=False use backend='reference' or backend='auto'"
            )
        return BackendChoice(requested, "requested")
    if not reset_after:
        return BackendChoice(
            "reference", "reset_after=False: torch has no fused kernel for this formulation"
        )
    if device.type == "cuda" and steps > torch_native.CUDNN_MAX_STEPS:
        return BackendChoice(
            "torch", f"{steps} steps ≥ 65536, which cuDNN refuses: torch's native CUDA kernels"
        )
    where = "cuDNN" if device.type == "cuda" else f"ATen on {device.type}"
    return BackendChoice("torch", f"reset_after=True: torch's fused GRU ({where})")
