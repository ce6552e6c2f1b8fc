"""The cpu backend's streaming path: one GRU step (a cell) for a few rows, inference only.

One numba kernel computes ``gi = W_ih x + b_ih`` and ``W_hh h`` as dot products on the
weights' native row-major layout (nothing transposed, copied or cached per call), then the
fused gate pass of the sequence kernels (``cpu._gates_after``, ``cpu._rz_before`` /
``cpu._n_before``). The kernel takes raw addresses and sizes, so a call converts no tensor
to numpy: the Python side reads ``data_ptr()`` of tensors it has checked this call (CPU,
contiguous, the dtype and shape the kernel assumes), so nothing can be stale.

At B=1, H=256 the two GEMVs stream 1.5 MiB of float32 weights from L2 per step; that
stream, not Python, is most of the time (see docs/performance.md, issue 4 streaming).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .cpu import _gemv_rows, _jit, _step_after, _step_before, missing, numba, step_fits

if numba is not None:
    from numba.core import types
    from numba.extending import intrinsic
else:  # the cpu backend is unavailable; nothing here is called

    def intrinsic(fn):
        return fn


AVAILABLE = missing() is None
_LIKE = {torch.float32: np.float32(0), torch.float64: np.float64(0)}  # the kernel's dtype


# ---- kernels -----------------------------------------------------------------------------

@intrinsic
def _pointer(typingctx, address, like):
    """The typed pointer at an integer ``address``, for elements of ``like``'s type."""
    pointer = types.CPointer(like)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer))

    return pointer(address, like), codegen


@_jit(boundscheck=False)
def _view(address, shape, like):
    """The C-contiguous array of ``shape`` at ``address``, of ``like``'s dtype."""
    return numba.carray(_pointer(address, like), shape)


@_jit(boundscheck=False)
def _cell(x_at, h_at, w_ih_at, w_hh_at, b_ih_at, b_hh_at, out_at, batch, n_in, hidden,
          reset_after, like):
    """One step at raw addresses: x (B, I), h (B, H), w_ih (3H, I), w_hh (3H, H), b_ih and
    b_hh (3H,) or address 0 for none; writes out (B, H). ``like``: a scalar of the dtype."""
    x, h = _view(x_at, (batch, n_in), like), _view(h_at, (batch, hidden), like)
    w_ih = _view(w_ih_at, (3 * hidden, n_in), like)
    w_hh = _view(w_hh_at, (3 * hidden, hidden), like)
    out = _view(out_at, (batch, hidden), like)
    gi = np.empty((batch, 3 * hidden), dtype=out.dtype)
    _gemv_rows(w_ih, x, gi)
    if b_ih_at != 0:
        b_ih = _view(b_ih_at, (3 * hidden,), like)
        for i in range(batch):
            gi[i] += b_ih
    if b_hh_at != 0:
        b_hh = _view(b_hh_at, (3 * hidden,), like)
    else:
        b_hh = np.zeros(3 * hidden, dtype=out.dtype)
    if reset_after:
        _step_after(gi, h, w_hh, b_hh, out)
    else:
        _step_before(gi, h, w_hh, b_hh, out)


# ---- launcher ----------------------------------------------------------------------------

def step(input: Tensor, hx: Tensor | None, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
         b_hh: Tensor | None, hidden: int, reset_after: bool) -> Tensor | None:
    """GRUCell's forward on the fast path, or None where the call must take the ordinary one.

    input (B, I) or (I,); hx of the same rank with H = ``hidden`` features, or None
    (zeros); w_ih (3H, I), w_hh (3H, H), b_ih and b_hh (3H,) or None. Returns h' shaped
    like hx. Runs only an inference call that the ordinary path would accept as it is:
    CPU tensors, float32 or float64 throughout, contiguous, of the right shapes, few enough
    rows (``cpu.step_fits``), no gradient wanted, and no autocast, tracing, compiling,
    functorch transform or torch function/dispatch mode active. Anything else returns None, so the
    caller's checks raise torch's errors for bad input. Every tensor is checked every call
    (``.data`` can be reassigned at any time), so no address can be stale.
    """
    dtype = input.dtype
    like = _LIKE.get(dtype)
    if like is None or type(input) is not Tensor or _special_mode():
        return None
    shape = input.shape
    if len(shape) not in (1, 2):
        return None
    rows, n_in = (shape[0] if len(shape) == 2 else 1), shape[-1]
    if not step_fits(rows, 3 * hidden * (n_in + hidden)):
        return None
    state = (*shape[:-1], hidden)
    if hx is None:
        hx = torch.zeros(state, dtype=dtype)
    if not (_plain(input, dtype, shape) and type(hx) is Tensor and _plain(hx, dtype, state)
            and _plain(w_ih, dtype, (3 * hidden, n_in))
            and _plain(w_hh, dtype, (3 * hidden, hidden))
            and (b_ih is None or _plain(b_ih, dtype, (3 * hidden,)))
            and (b_hh is None or _plain(b_hh, dtype, (3 * hidden,)))):
        return None
    if torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (input, hx, w_ih, w_hh, b_ih, b_hh)):
        return None
    out = torch.empty_like(hx)
    _cell(input.data_ptr(), hx.data_ptr(), w_ih.data_ptr(), w_hh.data_ptr(),
          0 if b_ih is None else b_ih.data_ptr(), 0 if b_hh is None else b_hh.data_ptr(),
          out.data_ptr(), rows, n_in, hidden, reset_after, like)
    return out


def _special_mode() -> bool:
    """Whether a mode is active that must see (or trace) the ordinary path's torch ops."""
    c = torch._C
    return (c._is_any_autocast_enabled() or c._get_tracing_state() is not None
            or c._functorch.peek_interpreter_stack() is not None
            or c._is_torch_function_mode_enabled() or c._len_torch_dispatch_stack() > 0
            or torch.compiler.is_compiling())


def _plain(t: Tensor, dtype: torch.dtype, shape: tuple) -> bool:
    """A CPU tensor of ``dtype`` and ``shape`` whose elements lie contiguous from
    data_ptr() (a Parameter or a plain Tensor, no other subclass)."""
    return (type(t) in _PLAIN_TYPES and t.dtype is dtype and t.is_cpu and t.shape == shape
            and t.is_contiguous())


_PLAIN_TYPES = (Tensor, torch.nn.Parameter)
