"""The functional entry: layers, directions and sequence lengths around a recurrent core.

``gru`` takes the arguments of torch's ``_VF.gru`` (plus ``reset_after`` and ``backend``)
and returns ``(output, h_n)`` in the same layouts. For a core backend it loops over layers
and directions, computes ``gi = W_ih x + b_ih`` with one GEMM per layer-direction, reverses
each sequence within its length for the backward direction and calls the core.

The module layer (``flashgru.GRU``) checks its inputs with torch.nn.GRU's messages. Called
directly, ``gru`` gives what its fused cores can't take as it is (a state, weight or
sequence of other shapes, dtypes or devices) to torch's own GRU, for torch's error.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .backends import BACKENDS, check_backend_name, reference, select_backend
from .backends.reference import GateTrace


def gru(
    input: Tensor,
    hx: Tensor,
    weights: list[Tensor],
    *,
    has_biases: bool,
    num_layers: int,
    dropout: float = 0.0,
    training: bool = False,
    bidirectional: bool = False,
    batch_first: bool = False,
    batch_sizes: Tensor | None = None,
    reset_after: bool = True,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """A multi-layer GRU over a whole sequence.

    input: (T, B, I), or (B, T, I) with ``batch_first``, or the data (ΣT_b, I) of a
      PackedSequence sorted by decreasing length together with its ``batch_sizes``.
    hx: (num_layers * num_directions, B, H), rows ordered layer-major as torch's.
    weights: torch.nn.GRU's ``_flat_weights`` order: per layer and direction
      ``w_ih (3H, I_l), w_hh (3H, H)`` and, with ``has_biases``, ``b_ih, b_hh (3H,)``.
    Returns output shaped like ``input`` with num_directions * H features, and h_n shaped
    like ``hx``.
    """
    if batch_sizes is not None:
        check_batch_sizes(input.size(0), batch_sizes)  # (torch's own GRU may abort on some)
    args = dict(has_biases=has_biases, num_layers=num_layers, dropout=dropout,
                training=training, bidirectional=bidirectional)
    if not _fits(input, hx, weights, has_biases, num_layers, dropout, bidirectional,
                 batch_first, batch_sizes):  # the fused cores read the memory they assume:
        # torch's own GRU instead, for its error, or where it broadcasts, its numbers
        check_backend_name(backend)
        if reset_after:
            return BACKENDS["torch"].run(input, hx, weights, batch_first=batch_first,
                                         batch_sizes=batch_sizes, **args)
        # the paper's formulation, which torch lacks: torch's checks, then the reference
        if not 0 <= dropout <= 1:
            raise RuntimeError(f"dropout probability has to be between 0 and 1, but got "
                               f"{dropout}")
        _torch_checks(input, hx, weights, has_biases, num_layers, bidirectional,
                      batch_first, batch_sizes)
        backend = "reference"
    steps = batch_sizes.numel() if batch_sizes is not None else input.size(int(batch_first))
    choice = select_backend(
        backend, reset_after=reset_after, device=input.device, dtype=input.dtype, steps=steps,
        batch=hx.size(1), hidden=hx.size(-1), grad=torch.is_grad_enabled() and any(
            t.requires_grad for t in (input, hx, *weights)),
    )
    impl = BACKENDS[choice.name]
    if impl.kind == "stack":
        return impl.run(input, hx, weights, batch_first=batch_first,
                        batch_sizes=batch_sizes, **args)
    if batch_sizes is not None:  # the layers read and write packed data
        packed = _Packed.of(batch_sizes.to(input.device))
        return _layers(input, packed.lengths, hx, weights, impl.run, reset_after,
                       pair=impl.pair, packed=packed, linear=impl.linear, **args)[:2]
    x = input.transpose(0, 1) if batch_first else input
    out, h_n, _ = _layers(x, None, hx, weights, impl.run, reset_after, pair=impl.pair,
                          linear=impl.linear, projected=impl.projected, **args)
    return (out.transpose(0, 1) if batch_first else out), h_n


def _fits(input: Tensor, hx: Tensor, weights: list[Tensor], has_biases: bool,
          num_layers: int, dropout: float, bidirectional: bool, batch_first: bool,
          batch_sizes: Tensor | None) -> bool:
    """Whether a call gives what torch.nn.GRU's checks would pass and the fused cores
    assume (they trust their arguments and read raw memory): input (T, B, I) (or packed
    data (N, I)), hx (L·D, B, H), torch.nn.GRU's weight shapes, every tensor on the
    input's device and (outside autocast) of its dtype, dropout in [0, 1]."""
    if not isinstance(hx, Tensor) or hx.dim() != 3 or (
            input.dim() != (2 if batch_sizes is not None else 3)):
        return False
    batch = int(batch_sizes[0]) if batch_sizes is not None else input.size(1 - batch_first)
    dirs = 2 if bidirectional else 1
    device, dtype = input.device, input.dtype
    return (hx.shape[:2] == (num_layers * dirs, batch) and 0 <= dropout <= 1
            and weights_fit(weights, input.size(-1), hx.size(-1), num_layers, bidirectional,
                            has_biases)
            and all(t.device == device for t in (hx, *weights))
            and (torch._C._is_any_autocast_enabled()
                 or all(t.dtype == dtype for t in (hx, *weights))))


def _torch_checks(input, hx, weights, has_biases, num_layers, bidirectional, batch_first,
                  batch_sizes) -> None:
    """torch's errors for a call ``_fits`` refuses, from its own GRU run on it (without
    dropout or gradients): for the reference's calls, which torch's ops broadcast
    otherwise."""
    with torch.no_grad():
        BACKENDS["torch"].run(input, hx, weights, has_biases=has_biases,
                              num_layers=num_layers, dropout=0.0, training=False,
                              bidirectional=bidirectional, batch_first=batch_first,
                              batch_sizes=batch_sizes)


def weights_fit(weights: list[Tensor], input_size: int, hidden: int, num_layers: int,
                bidirectional: bool, has_biases: bool) -> bool:
    """Whether ``weights`` (``gru``'s order) have the shapes torch.nn.GRU gives them:
    w_ih (3H, I or D·H), w_hh (3H, H), biases (3H,) (no None)."""
    dirs = 2 if bidirectional else 1
    per = 4 if has_biases else 2
    if len(weights) != num_layers * dirs * per:
        return False
    gates = 3 * hidden
    first = [(gates, input_size), (gates, hidden), (gates,), (gates,)][:per] * dirs
    later = [(gates, dirs * hidden), *first[1:per]] * dirs
    return [getattr(w, "shape", None) for w in weights] == first + later * (num_layers - 1)


def gru_gates(
    input: Tensor,
    hx: Tensor,
    weights: list[Tensor],
    *,
    has_biases: bool,
    num_layers: int,
    bidirectional: bool = False,
    batch_first: bool = False,
    batch_sizes: Tensor | None = None,
    reset_after: bool = True,
) -> GateTrace:
    """The gates of every layer and direction, on the reference core, without dropout.

    Arguments as ``gru``. Returns a GateTrace whose fields are shaped
    (num_layers, num_directions, T, B, H), time-major whatever ``batch_first`` says; for
    packed input B is in sorted order and steps past a sequence's length are 0. Index t of
    the reverse direction holds the step that consumed input t.
    """
    if not _fits(input, hx, weights, has_biases, num_layers, 0.0, bidirectional,
                 batch_first, batch_sizes):
        _torch_checks(input, hx, weights, has_biases, num_layers, bidirectional,
                      batch_first, batch_sizes)
    x, lengths = _to_padded(input, batch_first, batch_sizes)
    _, _, traces = _layers(
        x, lengths, hx, weights, reference.core, reset_after, has_biases=has_biases,
        num_layers=num_layers, dropout=0.0, training=False, bidirectional=bidirectional,
        collect_gates=True,
    )
    dirs = 2 if bidirectional else 1
    return GateTrace(*(
        torch.stack(field).unflatten(0, (num_layers, dirs)) for field in zip(*traces, strict=True)
    ))


def gru_cell(
    input: Tensor,
    hx: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
    *,
    reset_after: bool = True,
) -> Tensor:
    """One GRU step: input (B, I), hx (B, H) → h' (B, H). reset_after=True runs torch's
    own ``gru_cell``; reset_after=False the reference step."""
    if reset_after:
        return torch._VF.gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh)
    return reference.step(F.linear(input, w_ih, b_ih), hx, w_hh, b_hh, reset_after=False).h


class _Packed(NamedTuple):
    """Where a packed sequence's rows go in the padded time-major layout (T, B, ·),
    flattened to T·B rows: ``forward[k]`` for packed row k = (step t, sequence b) is
    t·B + b; ``reverse[k]`` is the row of the same input in time reversed within b's
    length, (len_b − 1 − t)·B + b."""

    forward: Tensor
    reverse: Tensor
    lengths: Tensor
    steps: int
    batch: int

    @staticmethod
    def of(batch_sizes: Tensor) -> _Packed:
        steps, batch = batch_sizes.numel(), int(batch_sizes[0])
        device = batch_sizes.device
        t = torch.repeat_interleave(torch.arange(steps, device=device), batch_sizes)
        starts = torch.cumsum(batch_sizes, 0) - batch_sizes
        b = torch.arange(t.numel(), device=device) - starts[t]
        lengths = (batch_sizes.unsqueeze(0) > torch.arange(batch, device=device)
                   .unsqueeze(1)).sum(1)
        return _Packed(t * batch + b, (lengths[b] - 1 - t) * batch + b, lengths.cpu(), steps,
                       batch)


def _layers(x, lengths, hx, weights, core, reset_after, *, has_biases, num_layers,
            dropout, training, bidirectional, collect_gates=False, pair=None, packed=None,
            linear=F.linear, projected=None):
    """Run the stack on padded time-major x (T, B, I), or with ``packed`` (a ``_Packed``)
    on a packed sequence's data x (N, I): each layer's input projection then runs on the
    N real rows only, and the output stays packed. Returns (out, h_n, gate traces).
    ``pair``: the backend's call for both directions at once, if it has one; ``linear``:
    its input projection (Backend.linear); ``projected``: its core with the projection
    inside (Backend.projected), for a one-way layer on padded x (not with ``packed``)."""
    dirs = 2 if bidirectional else 1
    per = 4 if has_biases else 2
    h_n, traces = [], []
    layer_input = x
    for layer in range(num_layers):
        def weights_of(d, layer=layer):
            """Direction d's w_ih, w_hh, b_ih, b_hh (None without biases)."""
            k = layer * dirs + d
            w_ih, w_hh, *biases = weights[k * per : (k + 1) * per]
            return (w_ih, w_hh, *(biases if has_biases else (None, None)))

        def part(d, layer_input=layer_input, layer=layer):
            """Direction d's core arguments: gi = W_ih x + b_ih (T, B, 3H), reversed
            within each length for d = 1, and its h0, w_hh, b_hh."""
            w_ih, w_hh, b_ih, b_hh = weights_of(d)
            gi = linear(layer_input, w_ih, b_ih)
            if packed is not None:
                gi = _Spread.apply(gi, packed.reverse if d else packed.forward,
                                   packed.steps, packed.batch)
            elif d:
                gi = _reverse(gi, lengths)
            return gi, hx[layer * dirs + d], w_hh, b_hh

        if collect_gates:
            results = []
            for d in range(dirs):
                out, trace = core(*part(d), lengths, reset_after, return_gates=True)
                traces.append(GateTrace(*(_reverse(v, lengths) if d else v for v in trace)))
                results.append(out)
        elif dirs == 2 and pair is not None:
            results = pair(*zip(part(0), part(1), strict=True), lengths, reset_after)
        elif dirs == 1 and projected is not None:
            w_ih, w_hh, b_ih, b_hh = weights_of(0)
            results = [projected(layer_input, w_ih, b_ih, hx[layer], w_hh, b_hh, lengths,
                                 reset_after)]
        else:  # one direction at a time, each gi made when its turn comes
            results = [core(*part(d), lengths, reset_after) for d in range(dirs)]
        outs = []
        for d, out in enumerate(results):
            h_n.append(_last(out, lengths))
            if packed is not None:  # back to packed rows, in input time order
                rows = packed.reverse if d else packed.forward
                outs.append(out.reshape(-1, out.shape[-1]).index_select(0, rows))
            else:
                outs.append(_reverse(out, lengths) if d else out)
        layer_output = torch.cat(outs, dim=-1) if dirs == 2 else outs[0]
        if dropout > 0 and training and layer < num_layers - 1:
            layer_output = _dropout(layer_output, dropout, None)  # unpadded, or packed rows
        layer_input = layer_output
    return layer_input, torch.stack(h_n), traces


class _Spread(torch.autograd.Function):
    """Packed rows x (N, F) into a zero (T, B, F), row k at flat row ``rows[k]``; the
    gradient reads them back."""

    @staticmethod
    def forward(ctx, x, rows, steps, batch):
        ctx.save_for_backward(rows)
        out = x.new_zeros(steps * batch, x.shape[-1])
        return out.index_copy_(0, rows, x).view(steps, batch, x.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        (rows,) = ctx.saved_tensors
        return grad.reshape(-1, grad.shape[-1]).index_select(0, rows), None, None, None


def _reverse(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence in time within its length; (T, B, F) → (T, B, F).
    Steps past a length stay where they are. Applying it twice gives x back."""
    if lengths is None:
        return x.flip(0)
    steps, batch = x.shape[:2]
    t = torch.arange(steps, device=x.device).unsqueeze(1)  # (T, 1)
    lens = lengths.to(x.device).unsqueeze(0)  # (1, B)
    rows = torch.where(t < lens, lens - 1 - t, t) * batch + torch.arange(batch, device=x.device)
    return _Permute.apply(x, rows.flatten())


class _Permute(torch.autograd.Function):
    """x (T, B, F) with its T·B rows reordered by ``rows``, a permutation that is its own
    inverse (as ``_reverse``'s): whole rows are copied (4× faster than a gather with an
    index per element, measured at T=16, B=64, F=384) and the gradient is the same
    reordering (index_select's own backward would scatter-add)."""

    @staticmethod
    def forward(ctx, x, rows):
        ctx.save_for_backward(rows)
        return x.reshape(-1, x.shape[-1]).index_select(0, rows).view(x.shape)

    @staticmethod
    def backward(ctx, grad):
        (rows,) = ctx.saved_tensors
        return _Permute.apply(grad, rows), None


def _last(out: Tensor, lengths: Tensor | None) -> Tensor:
    """The state after each sequence's last step: (T, B, H) → (B, H)."""
    if lengths is None:
        return out[-1]
    batch = out.shape[1]
    rows = (lengths.to(out.device) - 1) * batch + torch.arange(batch, device=out.device)
    return out.reshape(-1, out.shape[-1]).index_select(0, rows)


def _dropout(x: Tensor, p: float, lengths: Tensor | None) -> Tensor:
    """Dropout between layers, drawn on the same tensor torch draws it on (the padded
    output, or a packed sequence's data), so one seed gives torch's masks on CPU."""
    if lengths is None:
        return F.dropout(x, p, training=True)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=True)
    data = F.dropout(packed.data, p, training=True)
    return _to_padded(data, False, packed.batch_sizes)[0]


def check_batch_sizes(rows: int, batch_sizes: Tensor) -> None:
    """Raise RuntimeError unless a PackedSequence's batch_sizes can describe its ``rows``
    rows of data: non-negative, non-increasing, summing to ``rows``. torch's kernels raise
    RuntimeError where they notice, ours would index out of range, and torch's
    pad_packed_sequence aborts the process on a negative size. (A PackedSequence built by
    hand, or pack_padded_sequence given lengths past the tensor's, makes one.) Rows past
    the sum are refused too, where torch drops them from its output without a word;
    trailing zeros pass, as in torch."""
    sizes = batch_sizes.cpu().numpy()  # (numpy on a short array: a third of torch's time)
    if sizes.size == 0 or sizes[-1] < 0 or (sizes[1:] > sizes[:-1]).any() \
            or int(sizes.sum()) != rows:
        shown = sizes.tolist()[:16]
        raise RuntimeError(
            "a PackedSequence's batch_sizes must be non-negative, non-increasing and sum to "
            f"its data's {rows} rows; got {shown}{' ...' if sizes.size > 16 else ''} "
            f"(summing to {int(sizes.sum())})")


def _to_padded(input: Tensor, batch_first: bool, batch_sizes: Tensor | None):
    """Time-major padded input (T, B, I) and lengths (B,) or None."""
    if batch_sizes is None:
        return (input.transpose(0, 1) if batch_first else input), None
    padded, lengths = pad_packed_sequence(PackedSequence(input, batch_sizes))
    return padded, lengths


def _from_padded(out: Tensor, lengths, batch_first: bool, batch_sizes) -> Tensor:
    """Back to the input's form: packed data when the input was packed."""
    if batch_sizes is not None:
        return pack_padded_sequence(out, lengths, enforce_sorted=True).data
    return out.transpose(0, 1) if batch_first else out
