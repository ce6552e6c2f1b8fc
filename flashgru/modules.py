"""flashgru.GRU and flashgru.GRUCell: torch.nn.GRU's contract, both formulations.

Both subclass their torch counterparts, so parameters, names, shapes, initialisation,
``state_dict``, ``flatten_parameters``, ``all_weights``, pickling and ``.to()`` are torch's
own; argument checks and error messages are torch's too. What they add: ``reset_after``
(the formulation), ``backend`` (which recurrent core runs), and ``GRU.gates()``.

Known differences from torch.nn.GRU:
- an unsorted PackedSequence with an hx whose batch size differs from the batch raises
  torch's "Expected hidden size" error; torch indexes the wrong hx with the sort order
  instead (silently for a larger hx, an indexing error for a smaller one).
- with dropout in training mode, the masks equal torch's for the same seed on CPU (both
  draw them on the same tensor); torch's CUDA/cuDNN draws them differently.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import functional
from .backends import (
    BACKENDS,
    BackendChoice,
    check_backend,
    cpu,
    cpu_step,
    select_backend,
    triton_gru,
)
from .backends.reference import GateTrace

# The backends whose cores ``GRU._sequence`` calls straight.
_LEAN_CORES = {"cpu": cpu.core, "triton": triton_gru.core}
_LEAN_BACKENDS = ("auto", *_LEAN_CORES)


class _Prepared(NamedTuple):
    """A forward call's input in functional form, and how to give results back."""

    input: Tensor
    hx: Tensor
    batch_sizes: Tensor | None
    sorted_indices: Tensor | None
    unsorted_indices: Tensor | None
    is_batched: bool


def _copy_weights(source: nn.GRU, target: nn.GRU) -> None:
    """Copy into target's plain parameters the weights source's forward uses: through any
    parametrization (weight_norm, spectral_norm) or pruning mask of source's, whose
    state_dict then holds other keys; a parameter frozen in source (requires_grad False)
    is frozen in target."""
    params = dict(source.named_parameters())
    for name in target._flat_weights_names:
        value = getattr(source, name)
        # trained: the parameter's own flag, or its sources': a parametrization's
        # (parametrizations.<name>.*), pruning's <name>_orig, old weight_norm's <name>_g /
        # _v (these two keep a tensor their hook computed, perhaps under no_grad)
        sources = [p for key, p in params.items()
                   if key in (name, f"{name}_orig", f"{name}_g", f"{name}_v")
                   or key.startswith(f"parametrizations.{name}.")]
        trained = any(p.requires_grad for p in sources) if sources else value.requires_grad
        with torch.no_grad():
            getattr(target, name).copy_(value).requires_grad_(trained)


class GRU(nn.GRU):
    r"""A multi-layer GRU, a drop-in replacement for :class:`torch.nn.GRU`.

    Same arguments, parameters (``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``,
    ``bias_hh_l{k}``, ``_reverse`` for the backward direction; gates stacked r, z, n),
    initialisation U(−1/√H, 1/√H), input forms and output layouts. For each layer and
    step, with ``gi = W_ih x_t + b_ih`` and ``h`` the previous state:

    ``reset_after=True`` (default; torch, cuDNN, Keras, ONNX linear_before_reset=1)::

        r = σ(gi_r + W_hr h + b_hr)       z = σ(gi_z + W_hz h + b_hz)
        n = tanh(gi_n + r ⊙ (W_hn h + b_hn))
        h' = (1 − z) ⊙ n + z ⊙ h

    ``reset_after=False`` (the original paper; ONNX linear_before_reset=0, Keras
    reset_after=False): only n changes, the reset gate multiplies h before the matmul::

        n = tanh(gi_n + W_hn (r ⊙ h) + b_hn)

    Args (beyond torch.nn.GRU's, keyword-only):
        reset_after: the formulation, as above.
        backend: "auto" (see :func:`flashgru.select_backend` for the rules), or a name
            from ``flashgru.BACKENDS``: "reference" (readable loop, double-backward
            capable), "torch" (torch's fused GRU; reset_after=True only), "cpu" (fused
            numba kernels; the ``cpu`` extra), "parallel" (Newton's solve over time) or
            "triton" (fused GPU kernels; the ``gpu`` extra).

    Shapes: input (L, N, H_in), (N, L, H_in) with batch_first, (L, H_in) unbatched, or a
    PackedSequence; hx (num_layers·D, N, H) or (num_layers·D, H) unbatched; output
    (L, N, D·H); h_n like hx.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *args,
        reset_after: bool = True,
        backend: str = "auto",
        **kwargs,
    ) -> None:
        # the rest (proj_size, device, dtype: torch's RNNBase order) and any other keyword
        # go to torch.nn.GRU as they came, for its checks and messages: device and dtype
        # by name; proj_size, by name or non-zero, raises ValueError as there
        _check_bool("reset_after", reset_after)
        check_backend(backend, reset_after)  # raises for a bad choice
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, *args, **kwargs)
        self.reset_after = reset_after
        self.backend = backend

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("reset_after", True)
        self.__dict__.setdefault("backend", "auto")

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.reset_after is not True:
            s += ", reset_after=False"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s

    @classmethod
    def from_torch(cls, module: nn.GRU, *, backend: str = "auto") -> GRU:
        """A flashgru.GRU with the configuration and a copy of the weights of ``module``
        (_copy_weights: the weights its forward uses, frozen ones frozen)."""
        if not isinstance(module, nn.GRU):
            raise TypeError(f"expected a torch.nn.GRU, got {type(module).__name__}")
        weight = module.weight_ih_l0
        new = cls(
            module.input_size, module.hidden_size, module.num_layers, module.bias,
            module.batch_first, module.dropout, module.bidirectional,
            device=weight.device, dtype=weight.dtype, backend=backend,
            reset_after=getattr(module, "reset_after", True),
        )
        _copy_weights(module, new)
        new.train(module.training)
        return new

    def to_torch(self) -> nn.GRU:
        """A torch.nn.GRU with this configuration and a copy of the weights (as from_torch
        copies them).

        Raises ValueError for reset_after=False, which torch.nn.GRU can't compute."""
        if not self.reset_after:
            raise ValueError(
                "torch.nn.GRU computes only reset_after=True; this GRU has reset_after=False"
            )
        weight = self.weight_ih_l0
        module = nn.GRU(
            self.input_size, self.hidden_size, self.num_layers, self.bias, self.batch_first,
            self.dropout, self.bidirectional, device=weight.device, dtype=weight.dtype,
        )
        _copy_weights(self, module)
        module.train(self.training)
        return module

    def which_backend(self, input: Tensor | PackedSequence,
                      hx: Tensor | None = None) -> BackendChoice:
        """The backend that ``self(input, hx)`` would run on, and why (for input of the
        shape forward takes: its error otherwise)."""
        if isinstance(input, PackedSequence):
            data, steps = input.data, input.batch_sizes.numel()
            batch = int(input.batch_sizes[0])
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"GRU: Expected input to be 2D or 3D, got {input.dim()}D instead")
            data, steps = input, input.size(int(self.batch_first and input.dim() == 3))
            batch = 1 if input.dim() == 2 else input.size(int(not self.batch_first))
        if not functional.weights_fit(self._flat_weights, data.size(-1), self.hidden_size,
                                      self.num_layers, self.bidirectional, self.bias):
            return BackendChoice("torch" if self.reset_after else "reference",
                                 "a weight of another shape than torch.nn.GRU's: torch's "
                                 "own ops give its error, or broadcast it as torch does")
        return select_backend(
            self.backend, reset_after=self.reset_after, device=data.device, dtype=data.dtype,
            steps=steps, batch=batch, hidden=self.hidden_size,
            grad=torch.is_grad_enabled() and (data.requires_grad or any(
                p.requires_grad for p in self.parameters()) or (
                    hx is not None and hx.requires_grad)),
        )

    def forward(self, input, hx=None):
        if not self.bidirectional and _own_parameters(self, self._flat_weights_names):
            streamed = self._stream(input, hx) if cpu_step.AVAILABLE else None
            if streamed is None:
                streamed = self._sequence(input, hx)
            if streamed is not None:
                return streamed
        p = self._prepare(input, hx)
        output, hidden = functional.gru(
            p.input, p.hx, self._flat_weights, has_biases=self.bias,
            num_layers=self.num_layers, dropout=self.dropout, training=self.training,
            bidirectional=self.bidirectional, batch_first=self.batch_first,
            batch_sizes=p.batch_sizes, reset_after=self.reset_after, backend=self.backend,
        )
        hidden = self.permute_hidden(hidden, p.unsorted_indices)
        if p.batch_sizes is not None:
            return PackedSequence(output, p.batch_sizes, p.sorted_indices,
                                  p.unsorted_indices), hidden
        if not p.is_batched:
            return output.squeeze(0 if self.batch_first else 1), hidden.squeeze(1)
        return output, hidden

    def _stream(self, input, hx):
        """One step (T=1) of a one-direction GRU, layer by layer on the cpu backend's fused
        step, for streaming loops that carry h_n from call to call: (output, h_n), or None
        where the ordinary path must run (it then makes every check and error torch's).
        Inference only; the same conditions as GRUCell's fast path (``cpu_step.stream``),
        and no dropout between layers (eval mode, or dropout 0)."""
        layers = self.num_layers
        if self.backend not in ("auto", "cpu") or (
                layers > 1 and self.training and self.dropout > 0):
            return None
        return cpu_step.stream(input, hx, self._parameters, layers, self.hidden_size,
                               self.reset_after, self.batch_first, self.bias)

    def _sequence(self, input, hx):
        """A whole sequence of a one-direction GRU on the ``cpu`` or ``triton`` backend,
        layer by layer straight to its core (``cpu.core``, ``triton_gru.core``): the ops
        ``functional.gru`` runs for it (the same numbers and gradients) without its
        general handling, ~15-20 µs a call on the CPU, training calls' too
        (docs/performance.md); on a GPU, host time that delays the kernel's start in short
        calls. (output, h_n), or None where the ordinary path must run: only a plain 3-D
        tensor on one device with the parameters, of their floating dtype, hx None or a
        plain (layers, B, H) tensor, no dropout between layers, no special mode, and a
        call the dispatch rule gives to ``cpu`` or ``triton``."""
        p = self._parameters
        layers, hidden = self.num_layers, self.hidden_size
        if self.backend not in _LEAN_BACKENDS or type(input) is not Tensor or (
                input.dim() != 3 or cpu_step._special_mode()
                or (layers > 1 and self.training and self.dropout > 0)):
            return None
        dtype, device = input.dtype, input.device
        if not dtype.is_floating_point:
            return None
        x = input.transpose(0, 1) if self.batch_first else input  # (T, B, I)
        steps, batch, features = x.shape
        if not (features == self.input_size and steps > 0 and batch > 0):
            return None
        state = (layers, batch, hidden)
        if hx is not None and not (type(hx) is Tensor and hx.dtype is dtype
                                   and hx.device == device and hx.shape == state):
            return None
        weights = [p[name] for name in self._flat_weights_names]  # (what the kernels read)
        if any(type(t) not in cpu_step._PLAIN_TYPES or t.dtype is not dtype
               or t.device != device for t in weights) or not functional.weights_fit(
                   weights, features, hidden, layers, False, self.bias):
            return None
        grad = torch.is_grad_enabled() and (input.requires_grad or (
            hx is not None and hx.requires_grad) or any(t.requires_grad for t in weights))
        try:  # (a backend asked for by name that can't run this: the ordinary path says so)
            choice = select_backend(self.backend, reset_after=self.reset_after, device=device,
                                    dtype=dtype, steps=steps, batch=batch, hidden=hidden,
                                    grad=grad)
        except (ValueError, RuntimeError):
            return None
        core = _LEAN_CORES.get(choice.name)
        if core is None:
            return None
        if hx is None:
            hx = torch.zeros(state, dtype=dtype, device=device)
        impl = BACKENDS[choice.name]  # (its input projection, or that and the core in
        # one call: Backend.linear, Backend.projected)
        states = []
        for k in range(layers):
            w_ih, b_ih = p[f"weight_ih_l{k}"], p.get(f"bias_ih_l{k}")
            rest = hx[k], p[f"weight_hh_l{k}"], p.get(f"bias_hh_l{k}"), None, self.reset_after
            if impl.projected is not None:
                x = impl.projected(x, w_ih, b_ih, *rest)
            else:
                x = core(impl.linear(x, w_ih, b_ih), *rest)
            states.append(x[-1])
        return (x.transpose(0, 1) if self.batch_first else x), torch.stack(states)

    def gates(self, input, hx=None) -> GateTrace:
        """Run the GRU on the reference core and return every gate of every step.

        Returns a :class:`GateTrace` ``(r, z, n, h)``; each field is a tensor shaped
        ``(num_layers, num_directions, *S, H)`` where ``S`` is the input's layout: (L, N),
        (N, L) with batch_first, (L,) unbatched; for a PackedSequence (L, N) time-major,
        in the original batch order, 0 past each sequence's length.

        - ``r``: reset gate; ``n``: candidate state; ``h``: the state after the step,
          so ``h[-1]`` is the last layer's output.
        - ``z``: update gate in torch's convention ``h' = (1 − z) ⊙ n + z ⊙ h``: z near 1
          keeps the old state. A text that writes ``h' = z ⊙ n + (1 − z) ⊙ h`` (the
          tutorial flashgru grew from does) calls our ``1 − z`` its z.
        - reverse direction: time index t holds the step that read input t.

        Dropout is not applied (as in eval mode). Gradients flow through the result.
        """
        p = self._prepare(input, hx)
        trace = functional.gru_gates(
            p.input, p.hx, self._flat_weights, has_biases=self.bias,
            num_layers=self.num_layers, bidirectional=self.bidirectional,
            batch_first=self.batch_first, batch_sizes=p.batch_sizes,
            reset_after=self.reset_after,
        )  # fields (layers, dirs, T, B, H)
        if p.unsorted_indices is not None:
            trace = GateTrace(*(v.index_select(3, p.unsorted_indices) for v in trace))
        if not p.is_batched:
            return GateTrace(*(v.squeeze(3) for v in trace))
        if self.batch_first and p.batch_sizes is None:
            return GateTrace(*(v.transpose(2, 3) for v in trace))
        return trace

    def _prepare(self, input, hx) -> _Prepared:
        """torch.nn.GRU.forward's checks and input handling, in its order."""
        self._update_flat_weights()
        num_directions = 2 if self.bidirectional else 1
        is_batched = True
        if isinstance(input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            if hx is not None and hx.dim() == 3 and hx.size(1) != int(batch_sizes[0]):
                self.check_hidden_size(hx, self.get_expected_hidden_size(input, batch_sizes))
        else:
            batch_sizes = sorted_indices = unsorted_indices = None
            if input.dim() not in (2, 3):
                raise ValueError(f"GRU: Expected input to be 2D or 3D, got {input.dim()}D instead")
            is_batched = input.dim() == 3
            if not is_batched:
                input = input.unsqueeze(0 if self.batch_first else 1)
                if hx is not None:
                    if hx.dim() != 2:
                        raise RuntimeError(
                            "For unbatched 2-D input, hx should also be 2-D but got "
                            f"{hx.dim()}-D tensor"
                        )
                    hx = hx.unsqueeze(1)
            elif hx is not None and hx.dim() != 3:
                raise RuntimeError(
                    f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor"
                )
        if hx is None:
            batch = self.get_expected_hidden_size(input, batch_sizes)[1]
            hx = torch.zeros(self.num_layers * num_directions, batch, self.hidden_size,
                             dtype=input.dtype, device=input.device)
        else:
            hx = self.permute_hidden(hx, sorted_indices)
        self.check_forward_args(input, hx, batch_sizes)
        _check_steps(input, batch_sizes, self.batch_first)
        _check_weights(input, hx, self._flat_weights)
        return _Prepared(input, hx, batch_sizes, sorted_indices, unsorted_indices, is_batched)


class GRUCell(nn.GRUCell):
    r"""A GRU cell, a drop-in replacement for :class:`torch.nn.GRUCell`.

    Same parameters (``weight_ih`` (3H, I), ``weight_hh`` (3H, H), ``bias_ih``,
    ``bias_hh``; gates r, z, n), initialisation, input forms (input (N, I) or (I,), hx
    (N, H) or (H,) or omitted) and errors. ``reset_after`` picks the formulation, as in
    :class:`GRU`: True runs torch's own cell, False the original paper's.

    Streaming fast path: with numba installed, an inference call (no gradient wanted) on
    contiguous float32/float64 CPU tensors with few rows (batch 1 always; see
    ``flashgru.backends.cpu_step.step_fits``) runs the cpu backend's fused step
    (:func:`flashgru.backends.cpu_step.step`), same numbers within rounding; anything else,
    and every call that needs gradients, runs the path above.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None, *, reset_after: bool = True) -> None:
        _check_bool("reset_after", reset_after)
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)
        self.reset_after = reset_after

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("reset_after", True)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.reset_after else s + ", reset_after=False"

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        if cpu_step.AVAILABLE and _own_parameters(self, _CELL_WEIGHTS):  # the streaming
            # fast path, inference only
            p = self._parameters
            h = cpu_step.step(input, hx, p["weight_ih"], p["weight_hh"], p["bias_ih"],
                              p["bias_hh"], self.hidden_size, self.reset_after)
            if h is not None:
                return h
        if input.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            hx = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype,
                             device=input.device)
        elif not is_batched:
            hx = hx.unsqueeze(0)
        self._check_cell_args(input, hx)
        h = functional.gru_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih,
                                self.bias_hh, reset_after=self.reset_after)
        return h if is_batched else h.squeeze(0)

    def _check_cell_args(self, input: Tensor, hx: Tensor) -> None:
        """The checks of torch's C++ gru_cell, with its messages, in its order."""
        for name, place, w in (("w_ih", 3, self.weight_ih), ("w_hh", 4, self.weight_hh)):
            if not isinstance(w, Tensor):  # (its argument parser's)
                raise TypeError(f"gru_cell(): argument '{name}' (position {place}) must be "
                                f"Tensor, not {type(w).__name__}")
        if input.size(1) != self.input_size:
            raise RuntimeError(
                f"input has inconsistent input_size: got {input.size(1)} expected {self.input_size}"
            )
        if input.size(0) != hx.size(0):
            raise RuntimeError(
                f"Input batch size {input.size(0)} doesn't match hidden0 batch size {hx.size(0)}"
            )
        if hx.size(1) != self.hidden_size:
            raise RuntimeError(
                f"hidden0 has inconsistent hidden_size: got {hx.size(1)}, "
                f"expected {self.hidden_size}"
            )
        _check_matmul_dtypes(input, self.weight_ih, self.bias_ih)
        _check_matmul_dtypes(hx, self.weight_hh, self.bias_hh)


_CELL_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _own_parameters(module: nn.Module, names) -> bool:
    """Whether each of these weights is the module's own parameter (or a None bias), as the
    fast paths that read ``_parameters`` need: not parametrized (weight_norm,
    spectral_norm), pruned or otherwise replaced by a tensor computed from others, which
    the ordinary path reads as torch does, by attribute."""
    params = module._parameters
    return all(name in params for name in names)


def _check_bool(name: str, value) -> None:
    """torch's message for a flag that is not a bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")


def _check_steps(input: Tensor, batch_sizes: Tensor | None, batch_first: bool) -> None:
    """torch's check of the sequence length; for packed input, that batch_sizes can
    describe its data (``functional.check_batch_sizes``)."""
    steps = batch_sizes.numel() if batch_sizes is not None else input.size(int(batch_first))
    if steps == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    if batch_sizes is not None:
        functional.check_batch_sizes(input.size(0), batch_sizes)


def _check_devices(input: Tensor, hx: Tensor, weights: list[Tensor]) -> None:
    """torch's RNN device check, with its message, for every backend."""
    for name, tensors in (("hidden", [hx]), ("parameter", weights)):
        for t in tensors:
            if t.device != input.device:
                raise RuntimeError(
                    f"Input and {name} tensors are not at the same device, found input tensor "
                    f"at {input.device} and {name} tensor at {t.device}"
                )


def _check_weights(input: Tensor, hx: Tensor, weights: list) -> None:
    """torch's errors for flat weights its GRU refuses before it runs: an entry that is not
    a tensor (its argument parser's), one on another device. (Other shapes or dtypes:
    ``functional.gru`` gives the call to torch's own GRU, for its error.)"""
    for i, w in enumerate(weights):
        if not isinstance(w, Tensor):
            raise TypeError(f"expected Tensor as element {i} in argument 2, but got "
                            f"{type(w).__name__}")
    _check_devices(input, hx, weights)


_C10_NAMES = {torch.float32: "float", torch.float64: "double", torch.float16: "c10::Half",
              torch.bfloat16: "c10::BFloat16"}


def _check_matmul_dtypes(x: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    """The error torch's cell gives for mixed dtypes in ``linear(x, weight, bias)`` (x 2-D:
    addmm's, or mm's without a bias), raised before any work is done (not under autocast,
    which casts them as torch does)."""
    if torch._C._is_any_autocast_enabled():
        return
    if bias is not None and bias.dtype != weight.dtype:
        raise RuntimeError(f"self and mat2 must have the same dtype, but got "
                           f"{_type_name(bias)} and {_type_name(weight)}")
    if x.dtype == weight.dtype:
        return
    if bias is not None:
        raise RuntimeError(f"mat1 and mat2 must have the same dtype, but got "
                           f"{_type_name(x)} and {_type_name(weight)}")
    names = [_C10_NAMES.get(t.dtype, str(t.dtype)) for t in (x, weight)]
    raise RuntimeError(f"expected m1 and m2 to have the same dtype, but got: {names[0]} != "
                       f"{names[1]}")


def _type_name(x: Tensor) -> str:
    return x.type().rsplit(".", 1)[-1].removesuffix("Tensor")
