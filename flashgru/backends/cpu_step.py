"""The cpu backend's streaming path: one GRU step for a few rows, inference only.

``step`` runs a GRUCell call, ``core_step`` a T=1 call of the recurrent core (what a GRU
with T=1 and a carried hx reaches). One numba kernel per call computes W_hh h (and for the
cell gi = W_ih x + b_ih) as dot products on the weights' native row-major layout (nothing
transposed, copied or cached per call), then the fused gate pass of the sequence kernels.
The kernels take raw addresses and sizes, so a call converts no tensor to numpy: the
Python side reads ``data_ptr()`` of tensors it has checked in this call (CPU, contiguous,
the dtype and shape the kernel assumes), so no address can be stale.

At B=1, I = H = 256 the cell's two GEMVs stream 1.5 MiB of float32 weights per step; that
stream, not Python, is most of the time (docs/performance.md, issue 4 streaming).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ._cpu_kernels import _gates_after, _gemv, _jit, _n_before, _rz_before, _view, numba

AVAILABLE = numba is not None
_LIKE = {torch.float32: np.float32(0), torch.float64: np.float64(0)}  # the kernel's dtype
STEP_WORK = 1 << 18  # batch × weight elements up to which a step runs the dot-form GEMV


def step_fits(batch: int, weights: int) -> bool:
    """Whether one inference step of ``batch`` rows against ``weights`` weight elements
    should run the dot-form GEMV (``_gemv_rows``): at batch 1 always (it runs at the speed
    of reading the weights once), above while batch × weights ≤ STEP_WORK, where its cost
    per row stays under the fixed cost of torch's GEMM. Measured for the cell on 2 cores
    against torch.nn.GRUCell (float32): 2.5× / 1.7× / 1.3× / 0.9× faster at batch 1 / 4 /
    8 / 16 for I = H = 64 (24.6k weights: up to batch 10 fits), 1.1× at batch 1 and
    0.7× at batch 2 for I = H = 256 (393k weights: batch 1 only)."""
    return batch <= 1 or batch * weights <= STEP_WORK


# ---- kernels -----------------------------------------------------------------------------

@_jit(boundscheck=False)
def _step_after(gi, h, w, b, out):
    """One step of reset_after=True for inference, W_hh read in its native layout (no
    transpose per call): gi (B, 3H), h (B, H), w = W_hh (3H, H), b = b_hh (3H,); writes
    out (B, H)."""
    batch, hidden = out.shape
    gh = np.empty_like(gi)
    _gemv(w, h, gh)
    scratch = np.empty((4, batch, hidden), dtype=out.dtype)  # r, z, n, W_hn h + b_hn
    _gates_after(0, gi, gh, b, h, np.ones(batch, dtype=np.int64), out, scratch[0],
                 scratch[1], scratch[2], scratch[3])


@_jit(boundscheck=False)
def _step_before(gi, h, w, b, out):
    """One step of reset_after=False for inference; arguments as in ``_step_after``."""
    batch, hidden = out.shape
    gh = np.empty((batch, 2 * hidden), dtype=out.dtype)
    _gemv(w[: 2 * hidden], h, gh)
    z, rh = np.empty((batch, hidden), dtype=out.dtype), np.empty((batch, hidden), out.dtype)
    r, n = np.empty((batch, hidden), dtype=out.dtype), np.empty((batch, hidden), out.dtype)
    _rz_before(gi, gh, b, h, r, z, rh)
    ghn = np.empty((batch, hidden), dtype=out.dtype)
    _gemv(w[2 * hidden :], rh, ghn)
    _n_before(0, gi, ghn, b, h, np.ones(batch, dtype=np.int64), out, r, z, n)


@_jit(boundscheck=False)
def _step(gi, h, w_hh, b_hh_at, out, reset_after, like):
    """One step of either formulation with the bias at an address (0: none); arrays as in
    ``_step_after``."""
    if b_hh_at != 0:
        b_hh = _view(b_hh_at, (gi.shape[1],), like)
    else:
        b_hh = np.zeros(gi.shape[1], dtype=out.dtype)
    if reset_after:
        _step_after(gi, h, w_hh, b_hh, out)
    else:
        _step_before(gi, h, w_hh, b_hh, out)


@_jit(boundscheck=False)
def _core_step(gi_at, h_at, w_hh_at, b_hh_at, out_at, batch, hidden, reset_after, like):
    """One step of the core at raw addresses: gi (B, 3H), h (B, H), w_hh (3H, H), b_hh
    (3H,) or address 0 for none; writes out (B, H). ``like``: a scalar of the dtype."""
    gi = _view(gi_at, (batch, 3 * hidden), like)
    h, out = _view(h_at, (batch, hidden), like), _view(out_at, (batch, hidden), like)
    w_hh = _view(w_hh_at, (3 * hidden, hidden), like)
    _step(gi, h, w_hh, b_hh_at, out, reset_after, like)


@_jit(boundscheck=False)
def _cell(x_at, h_at, w_ih_at, w_hh_at, b_ih_at, b_hh_at, out_at, batch, n_in, hidden,
          reset_after, like, copy_at=0):
    """One cell step at raw addresses: x (B, I), h (B, H), w_ih (3H, I), w_hh (3H, H),
    b_ih and b_hh (3H,) or address 0 for none; writes out (B, H), and the same again at
    ``copy_at`` unless it is 0."""
    x, h = _view(x_at, (batch, n_in), like), _view(h_at, (batch, hidden), like)
    w_ih = _view(w_ih_at, (3 * hidden, n_in), like)
    w_hh = _view(w_hh_at, (3 * hidden, hidden), like)
    out = _view(out_at, (batch, hidden), like)
    gi = np.empty((batch, 3 * hidden), dtype=out.dtype)
    _gemv(w_ih, x, gi)
    if b_ih_at != 0:
        b_ih = _view(b_ih_at, (3 * hidden,), like)
        for i in range(batch):
            gi[i] += b_ih
    _step(gi, h, w_hh, b_hh_at, out, reset_after, like)
    if copy_at != 0:
        copy = _view(copy_at, (batch, hidden), like)
        for i in range(batch):
            copy[i] = out[i]


# ---- launchers ---------------------------------------------------------------------------

def core_step(gi: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor | None,
              reset_after: bool) -> Tensor | None:
    """The recurrent core for T=1 and inference (the caller has checked that no gradient
    is wanted): gi (1, B, 3H), h0 (B, H), w_hh (3H, H), b_hh (3H,) or None → out (1, B, H);
    None where the tensors are not plain contiguous CPU tensors of one dtype and these
    shapes, or ``step_fits`` says the batch is too large (the sequence kernel runs then)."""
    dtype = gi.dtype
    like = _LIKE.get(dtype)
    batch, hidden = h0.shape
    if like is None or not step_fits(batch, 3 * hidden * hidden):
        return None
    if not (_plain(gi, dtype, (1, batch, 3 * hidden)) and _plain(h0, dtype, (batch, hidden))
            and _plain(w_hh, dtype, (3 * hidden, hidden))
            and (b_hh is None or _plain(b_hh, dtype, (3 * hidden,)))):
        return None
    out = torch.empty(1, batch, hidden, dtype=dtype)
    _core_step(gi.data_ptr(), h0.data_ptr(), w_hh.data_ptr(),
               0 if b_hh is None else b_hh.data_ptr(), out.data_ptr(), batch, hidden,
               reset_after, like)
    return out


def step(input: Tensor, hx: Tensor | None, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
         b_hh: Tensor | None, hidden: int, reset_after: bool) -> Tensor | None:
    """GRUCell's forward on the fast path, or None where the call must take the ordinary one.

    input (B, I) or (I,); hx of the same rank with H = ``hidden`` features, or None
    (zeros); w_ih (3H, I), w_hh (3H, H), b_ih and b_hh (3H,) or None. Returns h' shaped
    like hx. Runs only an inference call that the ordinary path would accept as it is:
    CPU tensors, float32 or float64 throughout, contiguous, of the right shapes, few enough
    rows (``step_fits``), no gradient wanted, and no autocast, tracing, compiling, functorch
    transform or torch function/dispatch mode active. Anything else returns None, so the
    caller's checks raise torch's errors for bad input. Every tensor is checked every call
    (``.data`` can be reassigned at any time), so no address can be stale.
    """
    if type(input) is not Tensor:  # (a list: torch's own AttributeError, from the caller)
        return None
    dtype = input.dtype
    like = _LIKE.get(dtype)
    if like is None or _special_mode():
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


def stream(input: Tensor, hx: Tensor | None, params: dict, layers: int, hidden: int,
           reset_after: bool, batch_first: bool,
           has_biases: bool) -> tuple[Tensor, Tensor] | None:
    """GRU's forward for one step (T=1) of a one-direction stack on the fast path: (output,
    h_n), or None where the call must take the ordinary one (the conditions of ``step``,
    every layer's; the caller has ruled out dropout between layers).

    input (1, B, I), (B, 1, I) with ``batch_first``, or unbatched (1, I); hx (layers, B, H)
    or (layers, H), or None (zeros); ``params``: the module's ``_parameters`` (torch's
    names), with biases where ``has_biases`` (a bias set to None: torch's error, from the
    ordinary path). Each layer's cell kernel reads the previous layer's state from h_n and
    writes its own there (the last also to the output): no views made per call.
    """
    if type(input) is not Tensor:
        return None
    dtype = input.dtype
    like = _LIKE.get(dtype)
    if like is None or _special_mode():
        return None
    shape = input.shape
    if len(shape) == 3:
        rows, lead = shape[1 - batch_first], (shape[0], shape[1])
        if shape[int(batch_first)] != 1:
            return None
    elif len(shape) == 2:
        rows, lead = 1, (1,)
        if shape[0] != 1:
            return None
    else:
        return None
    n_in = shape[-1]
    state = (layers, rows, hidden) if len(shape) == 3 else (layers, hidden)
    if not step_fits(rows, 3 * hidden * (max(n_in, hidden) + hidden)):
        return None
    if hx is None:
        hx = torch.zeros(state, dtype=dtype)
    if not (_plain(input, dtype, shape) and type(hx) is Tensor and _plain(hx, dtype, state)):
        return None
    weights, sizes = [], n_in
    for k in range(layers):
        w = [params[f"weight_ih_l{k}"], params[f"weight_hh_l{k}"],
             params.get(f"bias_ih_l{k}"), params.get(f"bias_hh_l{k}")]
        if not (_plain(w[0], dtype, (3 * hidden, sizes))
                and _plain(w[1], dtype, (3 * hidden, hidden))
                and all(_plain(b, dtype, (3 * hidden,)) if has_biases else b is None
                        for b in w[2:])):
            return None
        weights.append(w)
        sizes = hidden
    if torch.is_grad_enabled() and (input.requires_grad or hx.requires_grad or any(
            t is not None and t.requires_grad for w in weights for t in w)):
        return None
    h_n, out = torch.empty(state, dtype=dtype), torch.empty(*lead, hidden, dtype=dtype)
    step_bytes = rows * hidden * input.element_size()
    x_at, sizes = input.data_ptr(), n_in
    for k, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights):
        into = h_n.data_ptr() + k * step_bytes
        _cell(x_at, hx.data_ptr() + k * step_bytes, w_ih.data_ptr(), w_hh.data_ptr(),
              0 if b_ih is None else b_ih.data_ptr(), 0 if b_hh is None else b_hh.data_ptr(),
              into, rows, sizes, hidden, reset_after, like,
              out.data_ptr() if k == layers - 1 else 0)
        x_at, sizes = into, hidden
    return out, h_n


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
