"""The module contract: parameters, initialisation, state dicts both ways, conversion,
repr, pickling, deepcopy, .to()/.double(), torch.save/torch.load."""

import copy
import io
import pickle
import warnings

import pytest
import torch
import torch.nn.utils.prune
from helpers import assert_close

import flashgru


def test_parameters_names_shapes_and_init_match_torch():
    for kwargs in (dict(num_layers=3, bidirectional=True), dict(num_layers=2, bias=False)):
        torch.manual_seed(0)
        ref = torch.nn.GRU(5, 7, **kwargs)
        torch.manual_seed(0)
        ours = flashgru.GRU(5, 7, **kwargs)
        ref_p, ours_p = dict(ref.named_parameters()), dict(ours.named_parameters())
        assert list(ref_p) == list(ours_p)
        for name in ref_p:  # same shapes and the same draws from the same seed
            assert torch.equal(ref_p[name], ours_p[name]), name
        assert isinstance(ours, torch.nn.GRU)
        assert ours._flat_weights_names == ref._flat_weights_names


def test_cell_parameters_and_init_match_torch():
    torch.manual_seed(1)
    ref = torch.nn.GRUCell(4, 3)
    torch.manual_seed(1)
    ours = flashgru.GRUCell(4, 3, reset_after=False)
    for (n1, p1), (n2, p2) in zip(ref.named_parameters(), ours.named_parameters(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)


def test_state_dict_both_ways():
    ref = torch.nn.GRU(4, 6, 2, bidirectional=True)
    ours = flashgru.GRU(4, 6, 2, bidirectional=True)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 3, 4)
    assert_close("output", ref(x)[0], ours(x)[0], 1e-6)
    other = torch.nn.GRU(4, 6, 2, bidirectional=True)
    other.load_state_dict(flashgru.GRU(4, 6, 2, bidirectional=True, reset_after=False)
                          .state_dict())  # the same names and shapes, both formulations


def test_from_torch_and_to_torch():
    ref = torch.nn.GRU(3, 5, 2, batch_first=True, dropout=0.25, dtype=torch.float64).eval()
    ours = flashgru.GRU.from_torch(ref)
    assert (ours.batch_first, ours.dropout, ours.training) == (True, 0.25, False)
    assert ours.weight_hh_l1.dtype == torch.float64
    assert ours.weight_hh_l1.data_ptr() != ref.weight_hh_l1.data_ptr()  # a copy
    back = ours.to_torch()
    assert type(back) is torch.nn.GRU
    for (n1, p1), (n2, p2) in zip(ref.named_parameters(), back.named_parameters(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)
    with pytest.raises(ValueError, match="reset_after=False"):
        flashgru.GRU(3, 5, reset_after=False).to_torch()
    with pytest.raises(TypeError, match="expected a torch.nn.GRU, got LSTM"):
        flashgru.GRU.from_torch(torch.nn.LSTM(3, 5))


@pytest.mark.parametrize("how", ["weight_norm", "spectral_norm", "pruned", "frozen",
                                 "pruned, evaluated", "old weight_norm, evaluated",
                                 "pruned, frozen"])
def test_conversions_copy_the_weights_forward_uses(how):
    """from_torch and to_torch copy the weights a module's forward uses, through a
    parametrization or a pruning mask (whose state_dict holds other keys), into plain
    parameters; a frozen parameter stays frozen."""
    from torch.nn.utils import parametrizations, prune

    def altered(module):
        if how == "weight_norm":
            parametrizations.weight_norm(module, "weight_hh_l0")
        elif how == "spectral_norm":
            parametrizations.spectral_norm(module.eval(), "weight_ih_l1")
        elif how.startswith("pruned"):
            prune.l1_unstructured(module, "weight_hh_l1", 0.5)
            if how == "pruned, frozen":
                module.weight_hh_l1_orig.requires_grad_(False)
        elif how == "old weight_norm, evaluated":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # (deprecated)
                torch.nn.utils.weight_norm(module, "weight_hh_l0")
        else:
            module.weight_hh_l0.requires_grad_(False)
        if how.endswith("evaluated"):  # (the hooks keep a weight computed under no_grad)
            with torch.no_grad():
                module(torch.randn(2, 1, 4, dtype=torch.float64))
        return module

    torch.manual_seed(0)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    for module, convert in ((torch.nn.GRU(4, 6, 2, dtype=torch.float64), flashgru.GRU.from_torch),
                            (flashgru.GRU(4, 6, 2, dtype=torch.float64), flashgru.GRU.to_torch)):
        source = altered(module)
        copy = convert(source)
        for name in source._flat_weights_names:
            got, want = getattr(copy, name), getattr(source, name)
            assert type(got) is torch.nn.Parameter and torch.equal(got, want.detach())
            frozen = {"frozen": "weight_hh_l0", "pruned, frozen": "weight_hh_l1"}.get(how)
            assert got.requires_grad == (name != frozen)
        assert_close("output", source(x)[0], copy(x)[0], 1e-12)


def test_extra_repr():
    assert repr(flashgru.GRU(5, 6)) == "GRU(5, 6)"
    assert repr(flashgru.GRU(5, 6, 2, bias=False, batch_first=True, dropout=0.2,
                             bidirectional=True, reset_after=False, backend="reference")) == \
        "GRU(5, 6, num_layers=2, bias=False, batch_first=True, dropout=0.2, " \
        "bidirectional=True, reset_after=False, backend='reference')"
    assert repr(flashgru.GRUCell(5, 6, bias=False, reset_after=False)) == \
        "GRUCell(5, 6, bias=False, reset_after=False)"


def _same_numbers(a, b, x):
    out_a, h_a = a(x)
    out_b, h_b = b(x)
    assert torch.equal(out_a, out_b) and torch.equal(h_a, h_b)


@pytest.mark.parametrize("reset_after", [True, False])
def test_pickle_deepcopy_save_load(reset_after):
    gru = flashgru.GRU(3, 4, 2, bidirectional=True, reset_after=reset_after,
                       backend="reference")
    x = torch.randn(5, 2, 3)
    for clone in (pickle.loads(pickle.dumps(gru)), copy.deepcopy(gru)):
        assert (clone.reset_after, clone.backend) == (reset_after, "reference")
        _same_numbers(gru, clone, x)
    buffer = io.BytesIO()
    torch.save(gru, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded) is flashgru.GRU and loaded.reset_after == reset_after
    _same_numbers(gru, loaded, x)
    cell = flashgru.GRUCell(3, 4, reset_after=reset_after)
    cell_clone = pickle.loads(pickle.dumps(cell))
    assert torch.equal(cell(x[0]), cell_clone(x[0]))


def test_to_and_double():
    gru = flashgru.GRU(3, 4, reset_after=False).double()
    assert gru.weight_ih_l0.dtype == torch.float64 and gru._flat_weights[0].dtype == torch.float64
    out, _ = gru(torch.randn(2, 1, 3, dtype=torch.float64))
    assert out.dtype == torch.float64
    gru = gru.to(torch.float32)
    assert gru(torch.randn(2, 1, 3))[0].dtype == torch.float32


def test_weights_replaced_after_construction_are_used():
    """Assigning a new Parameter (or functional_call) is seen by the next forward."""
    gru = flashgru.GRU(3, 4, reset_after=False)
    x = torch.randn(2, 1, 3)
    before = gru(x)[0]
    gru.weight_hh_l0 = torch.nn.Parameter(torch.zeros_like(gru.weight_hh_l0))
    assert not torch.equal(before, gru(x)[0])


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_cell_matches_gru_single_step(reset_after, bias):
    """GRUCell == one step of GRU (which the ONNX oracle checks for both formulations)."""
    torch.manual_seed(0)
    cell = flashgru.GRUCell(3, 5, bias=bias, reset_after=reset_after, dtype=torch.float64)
    gru = flashgru.GRU(3, 5, bias=bias, reset_after=reset_after, backend="reference",
                       dtype=torch.float64)
    gru.load_state_dict({k + "_l0": v for k, v in cell.state_dict().items()})
    x, h = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    assert_close("h'", gru(x[None], h[None])[1][0], cell(x, h), 1e-12)
    assert_close("h' unbatched", cell(x, h)[1], cell(x[1], h[1]), 1e-12)
    assert_close("h' no hx", cell(x, torch.zeros(4, 5, dtype=torch.float64)), cell(x), 0)


def test_cell_matches_torch():
    torch.manual_seed(0)
    ref = torch.nn.GRUCell(3, 5, dtype=torch.float64)
    cell = flashgru.GRUCell(3, 5, dtype=torch.float64)
    cell.load_state_dict(ref.state_dict())
    x, h = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    assert_close("h'", ref(x, h), cell(x, h), 1e-12)


def test_packed_rows_spread_to_padded_and_reversed_layouts():
    """The packed path puts packed row (t, b) at t·B + b, and at (len_b − 1 − t)·B + b for
    the reverse direction: the same as padding the packed data, and reversing that
    within each length; the gradient reads the rows back."""
    from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence

    from flashgru import functional

    g = torch.Generator().manual_seed(0)
    seqs = [torch.randn(n, 3, generator=g) for n in (6, 4, 4, 2, 1)]
    packed = pack_sequence(seqs)
    padded, lengths = pad_packed_sequence(packed)
    where = functional._Packed.of(packed.batch_sizes)
    assert where.lengths.tolist() == [6, 4, 4, 2, 1] and (where.steps, where.batch) == (6, 5)
    data = packed.data.clone().requires_grad_()
    forward = functional._Spread.apply(data, where.forward, 6, 5)
    reverse = functional._Spread.apply(data, where.reverse, 6, 5)
    assert torch.equal(forward, padded)
    assert torch.equal(reverse, functional._reverse(padded, lengths))
    weights = torch.randn(6, 5, 3, generator=g)
    (grad,) = torch.autograd.grad((forward * weights).sum(), data)
    assert torch.equal(grad, weights.reshape(-1, 3)[where.forward])


_REWEIGHTS = {
    "weight_norm": lambda m, name: torch.nn.utils.parametrizations.weight_norm(m, name),
    "pruned": lambda m, name: torch.nn.utils.prune.l1_unstructured(m, name, amount=0.5),
    "old weight_norm": lambda m, name: torch.nn.utils.weight_norm(m, name),
}


@pytest.mark.parametrize("how", _REWEIGHTS)
@pytest.mark.parametrize("steps", [1, 6])
@pytest.mark.parametrize("backend", ["auto", "cpu", "reference"])
def test_parametrized_and_pruned_weights_are_used(how, steps, backend):
    """weight_norm, parametrizations and pruning put a computed tensor where a weight was:
    the fast paths (which read the module's own parameters) step aside and the ordinary
    one reads it by attribute, as torch does, with and without autograd."""
    import warnings

    torch.manual_seed(0)
    ref = torch.nn.GRU(4, 5, 2)
    ours = flashgru.GRU.from_torch(ref, backend=backend)
    cell_ref = torch.nn.GRUCell(4, 5)
    cell = flashgru.GRUCell(4, 5)
    cell.load_state_dict(cell_ref.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch.nn.utils.weight_norm is deprecated)
        for module in (ref, ours):
            _REWEIGHTS[how](module, "weight_hh_l1")
            _REWEIGHTS[how](module, "bias_ih_l0")
        for module in (cell_ref, cell):
            _REWEIGHTS[how](module, "weight_hh")
    x, h = torch.randn(steps, 3, 4), torch.randn(2, 3, 5)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            for got, want in zip(ours(x, h), ref(x, h), strict=True):
                torch.testing.assert_close(got, want)
            torch.testing.assert_close(cell(x[0], h[0]), cell_ref(x[0], h[0]))
