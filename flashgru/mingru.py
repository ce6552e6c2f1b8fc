r"""flashgru.MinGRU and flashgru.MinGRUCell: the minimal GRU, parallel in time.

For each layer, direction and step, with x_t the layer's input::

    z_t = σ(W_z x_t + b_z)        h̃_t = W_h x_t + b_h
    h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ h̃_t

The gates read only the input, never h, so the recurrence is linear in h:
h_t = a_t ⊙ h_{t−1} + b_t with a_t = 1 − z_t and b_t = z_t ⊙ h̃_t, all computed for every
step at once (one GEMM), and h comes from one diagonal scan (:func:`flashgru.scan.scan_diag`,
O(T) work, parallel over time on a GPU). Streaming runs the same step one input at a time
(:class:`MinGRUCell`, :meth:`MinGRU.step`); the two agree to rounding.

These are exactly the equations above, the ones of flashgru's issue 6. The paper
(Feng et al. 2024, "Were RNNs all we needed?") also gives a log-space variant that passes
h̃ through g(x) = x + ½ (x ≥ 0), σ(x) (x < 0) to keep h positive and scans in log space
(``mingru-pytorch`` implements that one). flashgru does not: h̃ is the plain linear map,
h may be negative, and the scan runs on the values themselves.

Update-gate convention: z near 1 takes the new candidate (the paper's), the opposite of
:class:`flashgru.GRU`'s z, where z near 1 keeps the old state.
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import _mingru_triton
from .functional import _dropout, _from_padded, _last, _to_padded, check_batch_sizes
from .scan import IMPLS


def min_gru_cell(input: Tensor, hx: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """One step: input (B, I), hx (B, H), weight (2H, I) = [W_z; W_h], bias (2H,) → h'."""
    z, cand = F.linear(input, weight, bias).chunk(2, dim=-1)
    z = torch.sigmoid(z)
    return (1 - z) * hx + z * cand


def _fused(impl: str, proj: Tensor, h0: Tensor) -> bool:
    """impl "triton" (or "auto" on CUDA) where the fused gate-and-scan kernels run."""
    if impl not in ("triton", "auto") or not _mingru_triton.available(proj, h0):
        return False
    return impl == "triton" or proj.device.type == "cuda"


def _direction(x: Tensor, lengths: Tensor | None, h0: Tensor, weight: Tensor,
               bias: Tensor | None, reverse: bool, impl: str) -> tuple[Tensor, Tensor]:
    """One layer-direction over padded x (T, B, I). Returns out (T, B, H), 0 past each
    length, and h_n (B, H). The reverse direction scans from t = T−1 down; steps past a
    length come first there and, with a = 1 and b = 0, leave h0 as it is."""
    proj = F.linear(x, weight, bias)  # (T, B, 2H) = [p_z, p_h]
    valid = None
    if lengths is not None:
        steps = torch.arange(x.shape[0], device=x.device).unsqueeze(1)  # (T, 1)
        valid = (steps < lengths.to(x.device).unsqueeze(0)).unsqueeze(-1)  # (T, B, 1)
    if _fused(impl, proj, h0):  # gates and scan in one Triton pass each way
        h = _mingru_triton.gate_scan(proj, h0, lengths, reverse)
    else:
        h = _mingru_triton.torch_gate_scan(proj, h0, lengths, reverse, impl)
    h_n = h[0] if reverse else _last(h, lengths)
    return (h if valid is None else torch.where(valid, h, 0.0)), h_n


def min_gru(x: Tensor, lengths: Tensor | None, hx: Tensor, weights: list[Tensor], *,
            has_biases: bool, num_layers: int, bidirectional: bool, dropout: float = 0.0,
            training: bool = False, impl: str = "auto") -> tuple[Tensor, Tensor]:
    """The stack over padded time-major x (T, B, I) with lengths (B,) (sorted or not) or
    None; hx (num_layers·D, B, H); weights per layer and direction ``w (2H, I_l)`` and,
    with ``has_biases``, ``b (2H,)``. Returns out (T, B, D·H), 0 past each length, and h_n
    (num_layers·D, B, H). Dropout (training only) between layers, as torch's GRU."""
    dirs = 2 if bidirectional else 1
    per = 2 if has_biases else 1
    h_n = []
    for layer in range(num_layers):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            bias = weights[k * per + 1] if has_biases else None
            out, last = _direction(x, lengths, hx[k], weights[k * per], bias, d == 1, impl)
            outs.append(out)
            h_n.append(last)
        x = torch.cat(outs, dim=-1) if dirs == 2 else outs[0]
        if dropout > 0 and training and layer < num_layers - 1:
            x = _dropout(x, dropout, lengths)
    return x, torch.stack(h_n)


class MinGRU(nn.Module):
    r"""A multi-layer minimal GRU (see the module docstring for the equations), with
    :class:`torch.nn.GRU`'s conventions where they apply.

    Args: ``input_size``, ``hidden_size``, ``num_layers``, ``bias``, ``batch_first``,
    ``dropout`` (between layers, training only), ``bidirectional``, ``device``, ``dtype``
    as torch.nn.GRU; keyword-only ``impl``: the scan's implementation ("auto", "torch",
    "triton", "sequential"; see :mod:`flashgru.scan`).

    Parameters, per layer k and direction (suffix ``_reverse`` for the backward one):
    ``weight_ih_l{k}`` (2H, I_k) holding [W_z; W_h] (gate rows first, then the candidate's)
    and, with ``bias``, ``bias_ih_l{k}`` (2H,) = [b_z; b_h]; I_0 = input_size and
    I_k = D·H above. There are no ``*_hh`` parameters: nothing reads h but the update.
    Initialised U(−1/√H, 1/√H), as torch's GRU.

    Shapes: input (L, N, H_in), (N, L, H_in) with batch_first, (L, H_in) unbatched, or a
    PackedSequence (sorted or not); hx (num_layers·D, N, H), (num_layers·D, H) unbatched,
    or None (zeros). Returns output (L, N, D·H) (0 past each packed sequence's length; a
    step past a length leaves h unchanged) and h_n like hx.

    Streaming: :meth:`step` runs one time step of every layer with :func:`min_gru_cell`
    on these weights (unidirectional only).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, device=None, dtype=None, *,
                 impl: str = "auto") -> None:
        super().__init__()
        _check_config(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                      bidirectional, impl)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.impl = bidirectional, impl
        dirs = 2 if bidirectional else 1
        kw = {"device": device, "dtype": dtype}
        self._names = []
        for layer in range(num_layers):
            size = input_size if layer == 0 else hidden_size * dirs
            for d in range(dirs):
                sfx = f"l{layer}" + ("_reverse" if d else "")
                self.register_parameter(f"weight_ih_{sfx}", nn.Parameter(
                    torch.empty(2 * hidden_size, size, **kw)))
                self._names.append(f"weight_ih_{sfx}")
                if bias:
                    self.register_parameter(f"bias_ih_{sfx}", nn.Parameter(
                        torch.empty(2 * hidden_size, **kw)))
                    self._names.append(f"bias_ih_{sfx}")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    @property
    def _flat_weights(self) -> list[Tensor]:
        return [getattr(self, name) for name in self._names]

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False),
                              ("dropout", 0.0), ("bidirectional", False), ("impl", "auto")):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        return s

    def forward(self, input, hx: Tensor | None = None):
        dirs = 2 if self.bidirectional else 1
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            self._check_input(data, 2)
            check_batch_sizes(data.size(0), batch_sizes)
            batch, is_batched = int(batch_sizes[0]), True
            if hx is not None:
                self._check_hidden(hx, None, batch)  # (torch: the shape's message alone)
                if sorted_indices is not None:
                    hx = hx.index_select(1, sorted_indices)
        else:
            batch_sizes = sorted_indices = unsorted_indices = None
            if input.dim() not in (2, 3):
                raise ValueError(
                    f"MinGRU: Expected input to be 2D or 3D, got {input.dim()}D instead")
            is_batched = input.dim() == 3
            if not is_batched:
                input = input.unsqueeze(0 if self.batch_first else 1)
                if hx is not None:
                    _check_dims(hx, 2, "unbatched 2-D")
                    hx = hx.unsqueeze(1)
            self._check_input(input, 3)
            data = input
            batch = input.size(0 if self.batch_first else 1)
            if hx is not None:
                self._check_hidden(hx, 3, batch)
        if hx is None:
            hx = data.new_zeros(self.num_layers * dirs, batch, self.hidden_size)
        x, lengths = _to_padded(data, self.batch_first, batch_sizes)
        if x.size(0) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        out, h_n = min_gru(x, lengths, hx, self._flat_weights, has_biases=self.bias,
                           num_layers=self.num_layers, bidirectional=self.bidirectional,
                           dropout=self.dropout, training=self.training, impl=self.impl)
        output = _from_padded(out, lengths, self.batch_first, batch_sizes)
        if batch_sizes is not None:
            if unsorted_indices is not None:
                h_n = h_n.index_select(1, unsorted_indices)
            return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), h_n
        if not is_batched:
            return output.squeeze(0 if self.batch_first else 1), h_n.squeeze(1)
        return output, h_n

    def step(self, input: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One time step of every layer, for streaming: input (N, H_in) or (H_in,), hx
        (num_layers, N, H) or (num_layers, H) or None. Returns (output (N, H) or (H,),
        h' like hx). Feeding a sequence one step at a time gives forward()'s output and
        h_n to rounding. Unidirectional only. Dropout between layers in training mode."""
        if self.bidirectional:
            raise RuntimeError("MinGRU.step streams one direction; a bidirectional MinGRU "
                               "needs the whole sequence (call it on the sequence)")
        if input.dim() not in (1, 2):
            raise ValueError(f"MinGRU.step: Expected input to be 1D or 2D, got "
                             f"{input.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is not None:
            _check_dims(hx, 3 if is_batched else 2, "batched 2-D" if is_batched else
                        "unbatched 1-D")
            hx = hx if is_batched else hx.unsqueeze(1)
        self._check_input(input, 2)
        if hx is None:
            hx = input.new_zeros(self.num_layers, input.size(0), self.hidden_size)
        self._check_hidden(hx, 3, input.size(0))
        weights, per = self._flat_weights, 2 if self.bias else 1
        x, states = input, []
        for layer in range(self.num_layers):
            bias = weights[layer * per + 1] if self.bias else None
            x = min_gru_cell(x, hx[layer], weights[layer * per], bias)
            states.append(x)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        h = torch.stack(states)
        return (states[-1], h) if is_batched else (states[-1].squeeze(0), h.squeeze(1))

    def _check_input(self, input: Tensor, dims: int) -> None:
        """torch's RNN input checks and messages."""
        weight = self.weight_ih_l0
        if input.dtype != weight.dtype and not torch._C._is_any_autocast_enabled():
            raise ValueError(
                f"RNN input dtype ({input.dtype}) does not match weight dtype "
                f"({weight.dtype}). Convert input: input.to({weight.dtype}), or convert "
                f"model: model.to({input.dtype})")
        if input.dim() != dims:
            raise RuntimeError(f"input must have {dims} dimensions, got {input.dim()}")
        if input.size(-1) != self.input_size:
            raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected "
                               f"{self.input_size}, got {input.size(-1)}")
        if input.device != weight.device:
            raise RuntimeError(
                f"Input and parameter tensors are not at the same device, found input "
                f"tensor at {input.device} and parameter tensor at {weight.device}")

    def _check_hidden(self, hx: Tensor, dims: int | None, batch: int) -> None:
        if dims is not None:
            _check_dims(hx, dims, "batched 3-D")
        rows = self.num_layers * (2 if self.bidirectional else 1)
        expected = (rows, batch, self.hidden_size)
        if tuple(hx.shape) != expected:
            raise RuntimeError(f"Expected hidden size {expected}, got {list(hx.size())}")
        if hx.dtype != self.weight_ih_l0.dtype:  # (a RuntimeError in torch: its matmul's)
            raise RuntimeError(f"hx dtype ({hx.dtype}) does not match weight dtype "
                               f"({self.weight_ih_l0.dtype})")


class MinGRUCell(nn.Module):
    r"""One step of the minimal GRU: ``h' = (1 − z) ⊙ h + z ⊙ h̃`` with
    ``[z_pre; h̃] = W x + b``, z = σ(z_pre) (no g(); see the module docstring).

    Parameters: ``weight_ih`` (2H, I) = [W_z; W_h] and, with ``bias``, ``bias_ih`` (2H,);
    initialised U(−1/√H, 1/√H). forward(input (N, I) or (I,), hx (N, H) or (H,) or None
    (zeros)) → h' (N, H) or (H,). A MinGRU layer's weights load into a cell by name:
    ``cell.weight_ih = gru.weight_ih_l0`` (or use :meth:`MinGRU.step`).
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None) -> None:
        super().__init__()
        _check_config(input_size, hidden_size, 1, bias, False, 0.0, False, "auto")
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        kw = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(2 * hidden_size, input_size, **kw))
        self.bias_ih = nn.Parameter(torch.empty(2 * hidden_size, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        if input.dim() not in (1, 2):
            raise ValueError(f"MinGRUCell: Expected input to be 1D or 2D, got "
                             f"{input.dim()}D instead")
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(f"MinGRUCell: Expected hidden to be 1D or 2D, got "
                             f"{hx.dim()}D instead")
        is_batched = input.dim() == 2
        if hx is not None:
            _check_dims(hx, input.dim(), "batched 2-D" if is_batched else "unbatched 1-D")
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:  # (in the weights' dtype: under autocast the input's may differ)
            hx = input.new_zeros(input.size(0), self.hidden_size, dtype=self.weight_ih.dtype)
        elif not is_batched:
            hx = hx.unsqueeze(0)
        if input.size(1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} "
                               f"expected {self.input_size}")
        if input.size(0) != hx.size(0):
            raise RuntimeError(f"Input batch size {input.size(0)} doesn't match hidden0 "
                               f"batch size {hx.size(0)}")
        if hx.size(1) != self.hidden_size:
            raise RuntimeError(f"hidden0 has inconsistent hidden_size: got {hx.size(1)}, "
                               f"expected {self.hidden_size}")
        if input.dtype != self.weight_ih.dtype and not torch._C._is_any_autocast_enabled():
            # (a RuntimeError in torch: its matmul's)
            raise RuntimeError(f"MinGRUCell: input dtype ({input.dtype}) does not match "
                               f"weight dtype ({self.weight_ih.dtype})")
        if hx.dtype != self.weight_ih.dtype:  # (MinGRU's message; torch's cell's matmul
            # on hx refuses it, this cell has none and would promote)
            raise RuntimeError(f"hx dtype ({hx.dtype}) does not match weight dtype "
                               f"({self.weight_ih.dtype})")
        h = min_gru_cell(input, hx, self.weight_ih, self.bias_ih)
        return h if is_batched else h.squeeze(0)


def _check_dims(hx: Tensor, dims: int, what: str) -> None:
    if hx.dim() != dims:
        raise RuntimeError(f"For {what} input, hx should also be {dims}-D but got "
                           f"{hx.dim()}-D tensor")


def _check_config(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                  bidirectional, impl) -> None:
    """torch's RNNBase argument checks, with its messages."""
    if (not isinstance(dropout, numbers.Number) or isinstance(dropout, bool)
            or not 0 <= dropout <= 1):
        raise ValueError("dropout should be a number in range [0, 1] representing the "
                         "probability of an element being zeroed")
    if dropout > 0 and num_layers == 1:
        warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                      "non-zero dropout expects num_layers greater than 1, but got "
                      f"dropout={dropout} and num_layers={num_layers}", stacklevel=3)
    for name, value in (("bias", bias), ("batch_first", batch_first),
                        ("bidirectional", bidirectional)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                        ("num_layers", num_layers)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
        if value <= 0:
            raise ValueError(f"{name} must be greater than zero")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))}; got {impl!r}")
