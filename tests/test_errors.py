"""Bad arguments and bad input: the same exception type and message as torch, checked by
running torch.nn.GRU / GRUCell on the same mistake."""

import warnings

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import flashgru


def outcome(fn):
    """(exception type, message) of fn(), or ("ok", shapes) when it returns."""
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - the point is to compare whatever is raised
        return type(e), str(e)
    items = result if isinstance(result, tuple) else (result,)
    return "ok", [tuple(getattr(r, "shape", ())) for r in items]


CTOR_CASES = {
    "hidden_size=0": dict(hidden_size=0),
    "hidden_size=-1": dict(hidden_size=-1),
    "hidden_size float": dict(hidden_size=2.0),
    "input_size=0": dict(input_size=0),
    "input_size str": dict(input_size="5"),
    "num_layers=0": dict(num_layers=0),
    "num_layers=-2": dict(num_layers=-2),
    "bias int": dict(bias=1),
    "bias None": dict(bias=None),
    "batch_first int": dict(batch_first=0),
    "batch_first None": dict(batch_first=None),
    "dropout=2": dict(dropout=2),
    "dropout=-0.1": dict(dropout=-0.1),
    "dropout bool": dict(dropout=True),
    "dropout str": dict(dropout="0.1"),
    "proj_size": dict(proj_size=2),
    "proj_size=0": dict(proj_size=0),
}


@pytest.mark.parametrize("case", CTOR_CASES)
def test_constructor_errors_match_torch(case):
    kwargs = {"input_size": 5, "hidden_size": 6, **CTOR_CASES[case]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = outcome(lambda: torch.nn.GRU(**kwargs).weight_ih_l0)
        got = outcome(lambda: flashgru.GRU(**kwargs).weight_ih_l0)
    assert expected[0] is not "ok", f"{case} is not an error in torch"  # noqa: F632
    assert got == expected


POSITIONAL_CASES = {  # (torch.nn.GRU's order: RNNBase's, proj_size before device, dtype)
    "proj_size 0": (0,),
    "proj_size 0, device, dtype": (0, "cpu", torch.float64),
    "proj_size 2": (2,),
    "device in proj_size's place": ("cpu",),
    "one too many": (0, None, None, None),
}


@pytest.mark.parametrize("case", POSITIONAL_CASES)
def test_positional_arguments_in_torchs_order(case):
    """Arguments past bidirectional, by position, mean what they mean to torch.nn.GRU, with
    its errors; and its errors for keywords it does not take."""
    args = (5, 6, 1, True, False, 0.0, False, *POSITIONAL_CASES[case])
    expected = outcome(lambda: torch.nn.GRU(*args).weight_ih_l0)
    assert outcome(lambda: flashgru.GRU(*args).weight_ih_l0) == expected
    if expected[0] == "ok":
        assert flashgru.GRU(*args).weight_ih_l0.dtype == torch.nn.GRU(*args).weight_ih_l0.dtype


@pytest.mark.parametrize("kwargs", [dict(nonlinearity="tanh"), dict(mode="LSTM")],
                         ids=["unknown", "mode"])
def test_keyword_errors_match_torch(kwargs):
    expected = outcome(lambda: torch.nn.GRU(5, 6, **kwargs))
    assert expected[0] is not "ok"  # noqa: F632
    assert outcome(lambda: flashgru.GRU(5, 6, **kwargs)) == expected


MALFORMED_PACKED = {
    "lengths past T": lambda: pack_padded_sequence(torch.randn(6, 3, 5), [7, 6, 2]),
    "increasing": lambda: PackedSequence(torch.randn(6, 5), torch.tensor([1, 2, 3])),
    "sum past the rows": lambda: PackedSequence(torch.randn(4, 5), torch.tensor([3, 2])),
    "sum short of the rows": lambda: PackedSequence(torch.randn(6, 5), torch.tensor([3, 2])),
    "negative": lambda: PackedSequence(torch.randn(3, 5), torch.tensor([3, -1])),
}


@pytest.mark.parametrize("backend", ["auto", "reference", "cpu", "parallel", "torch"])
@pytest.mark.parametrize("case", MALFORMED_PACKED)
def test_malformed_packed_sequence_raises_runtime_error(case, backend):
    """batch_sizes that can't describe the data: RuntimeError, as torch's kernels raise
    (in their own words, which differ by case), never an IndexError or a number; also for
    rows past their sum, which torch drops from its output."""
    packed = MALFORMED_PACKED[case]()
    with pytest.raises(RuntimeError, match="batch_sizes must be non-negative, non-increasing"):
        flashgru.GRU(5, 6, backend=backend)(packed)


@pytest.mark.parametrize("backend", ["auto", "reference", "cpu", "torch"])
def test_packed_sequence_with_trailing_empty_steps_runs_as_in_torch(backend):
    torch.manual_seed(0)
    ref = torch.nn.GRU(5, 6)
    packed = PackedSequence(torch.randn(5, 5), torch.tensor([3, 2, 0]))
    (out_ref, h_ref), (out, h) = ref(packed), flashgru.GRU.from_torch(ref, backend=backend)(packed)
    torch.testing.assert_close(out.data, out_ref.data)
    torch.testing.assert_close(h, h_ref)


def test_dropout_warning_matches_torch():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        flashgru.GRU(3, 4, dropout=0.5)


GRU_ARGS = dict(input_size=5, hidden_size=6, num_layers=2)
PACKED = pack_padded_sequence(torch.randn(4, 3, 5), [4, 2, 3], enforce_sorted=False)
SORTED = pack_padded_sequence(torch.randn(4, 3, 5), [4, 3, 2])

CALL_CASES = {
    "sequence length 0": ({}, lambda: (torch.randn(0, 3, 5),)),
    "sequence length 0 unbatched": ({}, lambda: (torch.randn(0, 5),)),
    "sequence length 0 batch_first": (dict(batch_first=True), lambda: (torch.randn(3, 0, 5),)),
    "wrong input size": ({}, lambda: (torch.randn(4, 3, 4),)),
    "wrong input size unbatched": ({}, lambda: (torch.randn(4, 4),)),
    "1-D input": ({}, lambda: (torch.randn(4),)),
    "4-D input": ({}, lambda: (torch.randn(4, 3, 5, 1),)),
    "wrong hidden batch": ({}, lambda: (torch.randn(4, 3, 5), torch.randn(2, 4, 6))),
    "wrong hidden layers": ({}, lambda: (torch.randn(4, 3, 5), torch.randn(1, 3, 6))),
    "wrong hidden size": ({}, lambda: (torch.randn(4, 3, 5), torch.randn(2, 3, 7))),
    "2-D hidden for batched": ({}, lambda: (torch.randn(4, 3, 5), torch.randn(2, 6))),
    "3-D hidden for unbatched": ({}, lambda: (torch.randn(4, 5), torch.randn(2, 1, 6))),
    "wrong unbatched hidden": ({}, lambda: (torch.randn(4, 5), torch.randn(2, 7))),
    "float64 input": ({}, lambda: (torch.randn(4, 3, 5, dtype=torch.float64),)),
    "int input": ({}, lambda: (torch.ones(4, 3, 5, dtype=torch.long),)),
    "float64 hidden": ({}, lambda: (torch.randn(4, 3, 5),
                                    torch.randn(2, 3, 6, dtype=torch.float64))),
    "packed wrong hidden size": ({}, lambda: (PACKED, torch.randn(2, 3, 7))),
    "packed sorted wrong hidden batch": ({}, lambda: (SORTED, torch.randn(2, 4, 6))),
    "packed float64": ({}, lambda: (pack_padded_sequence(torch.randn(3, 2, 5).double(),
                                                         [3, 1]),)),
    "input on another device": ({}, lambda: (torch.randn(4, 3, 5, device="meta"),)),
    "hidden on another device": ({}, lambda: (torch.randn(4, 3, 5),
                                              torch.randn(2, 3, 6, device="meta"))),
    "batch 0": ({}, lambda: (torch.randn(4, 0, 5),)),
    "batch 0 batch_first": (dict(batch_first=True), lambda: (torch.randn(0, 4, 5),)),
    "batch 0 with hidden": ({}, lambda: (torch.randn(4, 0, 5), torch.randn(2, 0, 6))),
}


@pytest.mark.parametrize("backend", list(flashgru.BACKENDS))
@pytest.mark.parametrize("case", CALL_CASES)
def test_forward_errors_match_torch(case, backend):
    if (why := flashgru.BACKENDS[backend].missing()) is not None:
        pytest.skip(f"backend {backend!r} is unavailable here: {why}")
    extra, make_args = CALL_CASES[case]
    torch.manual_seed(0)
    ref = torch.nn.GRU(**GRU_ARGS, **extra)
    ours = flashgru.GRU.from_torch(ref, backend=backend)
    args = make_args()
    assert outcome(lambda: ours(*args)) == outcome(lambda: ref(*args))


REPLACED = {  # (module kwargs, parameter, its replacement): a parameter set after
    # construction, in GRU(5, 6, 2) (3H = 18); each backend must refuse it with torch's
    # error, or broadcast it as torch does, and never read past it
    "weight_hh of fewer rows": ({}, "weight_hh_l0", (15, 6)),
    "weight_hh of one column": ({}, "weight_hh_l0", (18, 1)),
    "weight_hh transposed": ({}, "weight_hh_l1", (6, 18)),
    "weight_hh 1-D": ({}, "weight_hh_l0", (18,)),
    "weight_ih of fewer rows": ({}, "weight_ih_l1", (12, 6)),
    "weight_ih of fewer rows, no biases": (dict(bias=False), "weight_ih_l0", (12, 5)),
    "bias_hh short": ({}, "bias_hh_l0", (10,)),
    "bias_ih 2-D": ({}, "bias_ih_l0", (18, 1)),
    "bias_hh of one element (torch broadcasts it)": ({}, "bias_hh_l1", (1,)),
    "bias_hh 0-D (torch broadcasts it)": ({}, "bias_hh_l0", ()),
    "weight_hh float64": ({}, "weight_hh_l0", torch.float64),
    "weight_hh float64, no biases": (dict(bias=False), "weight_hh_l1", torch.float64),
    "weight_ih_l1 float16": ({}, "weight_ih_l1", torch.float16),
    "bias_ih float64": ({}, "bias_ih_l1", torch.float64),
    "bias_ih float64, batch_first (torch casts it)": (dict(batch_first=True), "bias_ih_l0",
                                                      torch.float64),
    "bias_hh None": ({}, "bias_hh_l1", None),
}


@pytest.mark.parametrize("steps, grad", [(1, False), (9, True)], ids=["T1", "T9-grad"])
@pytest.mark.parametrize("backend", list(flashgru.BACKENDS))
@pytest.mark.parametrize("case", REPLACED)
def test_replaced_parameters_as_torch(case, backend, steps, grad):
    """A parameter replaced by one of another shape or dtype (or None): torch's error, or
    torch's numbers where its ops broadcast it. The fused kernels read the shapes they
    assume, so before this was checked some returned numbers read past the tensor."""
    if (why := flashgru.BACKENDS[backend].missing()) is not None:
        pytest.skip(f"backend {backend!r} is unavailable here: {why}")
    extra, name, new = REPLACED[case]
    ref = torch.nn.GRU(**GRU_ARGS, **extra)
    ours = flashgru.GRU.from_torch(ref, backend=backend)
    value = getattr(ref, name).detach()
    value = (None if new is None else value.to(new) if isinstance(new, torch.dtype)
             else torch.linspace(-1, 1, value.new_empty(new).numel()).reshape(new))
    for module in (ref, ours):
        setattr(module, name, None if value is None else torch.nn.Parameter(value.clone()))
    x = torch.randn(steps, 3, 5, generator=torch.Generator().manual_seed(1))

    def run(module):
        x_ = x.clone().requires_grad_(grad)
        with warnings.catch_warnings(), torch.set_grad_enabled(grad):
            warnings.simplefilter("ignore")
            out, h_n = module(x_)
            if not grad:
                return out, h_n
            return out, h_n, *torch.autograd.grad((out.sum() + h_n.sum()), x_)

    want = outcome(lambda: run(ref))
    assert outcome(lambda: run(ours)) == want
    if want[0] == "ok":
        for a, b in zip(run(ref), run(ours), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    if isinstance(new, tuple):  # another shape: which_backend says where it runs
        assert ours.which_backend(x).name == "torch"


@pytest.mark.parametrize("steps", [1, 9])
def test_a_parameter_replaced_in_the_parameters_dict(steps):
    """Replaced in ``_parameters`` itself (``_flat_weights`` not told): the tensors that
    run are the ones checked, torch's error."""
    ref = torch.nn.GRU(**GRU_ARGS)
    ours = flashgru.GRU.from_torch(ref, backend="cpu")
    for module in (ref, ours):
        module._parameters["weight_hh_l0"] = torch.nn.Parameter(torch.randn(15, 6))
    x = torch.randn(steps, 3, 5)
    assert outcome(lambda: ours(x)) == outcome(lambda: ref(x))


def _functional_call(case):
    """(input, hx, weights, kwargs, batch_sizes) of a direct call with one mistake; GRU(4,
    5, 2 layers), B = 3."""
    g = torch.Generator().manual_seed(2)
    weights = [torch.randn(shape, generator=g) for _ in range(2)
               for shape in ((15, 4 if not _ else 5), (15, 5), (15,), (15,))]
    # (layer 0: w_ih (15, 4); layer 1: w_ih (15, 5))
    x, hx, kwargs, sizes = torch.randn(6, 3, 4, generator=g), torch.zeros(2, 3, 5), {}, None
    if case == "hx of batch 1":
        hx = torch.zeros(2, 1, 5)
    elif case == "hx of a larger batch":
        hx = torch.zeros(2, 4, 5)
    elif case == "hx of one layer":
        hx = torch.zeros(1, 3, 5)
    elif case == "hx of three layers":
        hx = torch.zeros(3, 3, 5)
    elif case == "hx 2-D":
        hx = torch.zeros(3, 5)
    elif case == "hx float64":
        hx = hx.double()
    elif case == "w_hh float64":
        weights[1] = weights[1].double()
    elif case == "b_hh of layer 1 float64":
        weights[7] = weights[7].double()
    elif case == "w_hh on another device":
        weights[5] = weights[5].to("meta")
    elif case == "w_hh of another shape":
        weights[1] = weights[1][:, :2]
    elif case == "dropout -0.1":
        kwargs = dict(dropout=-0.1, training=True)
    elif case == "dropout 1.5":
        kwargs = dict(dropout=1.5, training=True)
    elif case == "batch_sizes all zero":
        x, sizes = torch.randn(0, 4), torch.tensor([0, 0])
    elif case == "a weight None":
        weights[2] = None
    return x, hx, weights, kwargs, sizes


FUNCTIONAL_CASES = ["hx of batch 1", "hx of a larger batch", "hx of one layer",
                    "hx of three layers", "hx 2-D", "hx float64", "w_hh float64",
                    "b_hh of layer 1 float64", "w_hh on another device",
                    "w_hh of another shape", "dropout -0.1", "dropout 1.5",
                    "batch_sizes all zero", "a weight None"]


@pytest.mark.parametrize("backend, reset_after", [
    (name, after) for name in flashgru.BACKENDS for after in (True, False)
    if after or flashgru.BACKENDS[name].reset_before])
@pytest.mark.parametrize("case", FUNCTIONAL_CASES)
def test_functional_gru_errors_as_torchs(case, backend, reset_after):
    """flashgru.functional.gru called directly with a mistake: torch._VF.gru's error, on
    every backend and both formulations (the fused cores read the memory the shapes say:
    before, a smaller hx's batch returned numbers read past it, a weight on another device
    crashed the process)."""
    if (why := flashgru.BACKENDS[backend].missing()) is not None:
        pytest.skip(f"backend {backend!r} is unavailable here: {why}")
    x, hx, weights, kwargs, sizes = _functional_call(case)
    args = dict(dropout=0.0, training=False) | kwargs
    if sizes is None:
        want = outcome(lambda: torch._VF.gru(x, hx, weights, True, 2, args["dropout"],
                                             args["training"], False, False))
    else:
        want = outcome(lambda: torch._VF.gru(x, sizes, hx, weights, True, 2, args["dropout"],
                                             args["training"], False))
    assert want[0] is not "ok"  # noqa: F632
    got = outcome(lambda: flashgru.functional.gru(
        x, hx, weights, has_biases=True, num_layers=2, batch_sizes=sizes,
        reset_after=reset_after, backend=backend, **args))
    assert got == want


def test_functional_gru_names_an_unknown_backend_first():
    x, hx, weights, _, _ = _functional_call("hx of batch 1")
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        flashgru.functional.gru(x, hx, weights, has_biases=True, num_layers=2, backend="fast")


def test_packed_hidden_batch_mismatch_is_an_error():
    """torch silently indexes a too-large hx with the sort order; we refuse it."""
    gru = flashgru.GRU(**GRU_ARGS)
    with pytest.raises(RuntimeError, match=r"Expected hidden size \(2, 3, 6\), got \[2, 4, 6\]"):
        gru(PACKED, torch.randn(2, 4, 6))
    with pytest.raises(RuntimeError, match=r"Expected hidden size \(2, 3, 6\), got \[2, 2, 6\]"):
        gru(PACKED, torch.randn(2, 2, 6))


CELL_CASES = {
    "3-D input": lambda: (torch.randn(2, 3, 5),),
    "0-D input": lambda: (torch.tensor(1.0),),
    "3-D hidden": lambda: (torch.randn(3, 5), torch.randn(1, 3, 6)),
    "wrong input size": lambda: (torch.randn(3, 4),),
    "wrong hidden size": lambda: (torch.randn(3, 5), torch.randn(3, 7)),
    "wrong hidden batch": lambda: (torch.randn(3, 5), torch.randn(2, 6)),
    "2-D hidden for unbatched": lambda: (torch.randn(5), torch.randn(1, 6)),
    "1-D hidden for batched": lambda: (torch.randn(3, 5), torch.randn(6)),
    "1-D hidden for batch equal to H": lambda: (torch.randn(6, 5), torch.randn(6)),
    "wrong unbatched hidden": lambda: (torch.randn(5), torch.randn(7)),
    "float64 input": lambda: (torch.randn(3, 5, dtype=torch.float64),),
    "float64 hidden": lambda: (torch.randn(3, 5), torch.randn(3, 6, dtype=torch.float64)),
    "batch 0": lambda: (torch.randn(0, 5),),
    "unbatched": lambda: (torch.randn(5),),
    "input on another device": lambda: (torch.randn(3, 5, device="meta"),),
    "hidden on another device": lambda: (torch.randn(3, 5), torch.randn(3, 6, device="meta")),
    "a list": lambda: ([[0.0] * 5],),
}


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("case", CELL_CASES)
def test_cell_errors_match_torch(case, reset_after):
    torch.manual_seed(0)
    ref = torch.nn.GRUCell(5, 6)
    ours = flashgru.GRUCell(5, 6, reset_after=reset_after)
    args = CELL_CASES[case]()
    assert outcome(lambda: ours(*args)) == outcome(lambda: ref(*args))


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("name", ["weight_ih", "weight_hh", "bias_ih", "bias_hh"])
@pytest.mark.parametrize("dtype", [None, torch.float64, torch.float16], ids=str)
def test_cell_with_a_replaced_parameter_as_torch(name, dtype, reset_after):
    """A cell parameter set to None (a bias: no bias, as in torch) or another dtype."""
    torch.manual_seed(0)
    ref = torch.nn.GRUCell(5, 6)
    ours = flashgru.GRUCell(5, 6, reset_after=reset_after)
    ours.load_state_dict(ref.state_dict())
    value = None if dtype is None else getattr(ref, name).detach().to(dtype)
    for module in (ref, ours):
        setattr(module, name, None if value is None else torch.nn.Parameter(value.clone()))
    x, h = torch.randn(3, 5), torch.randn(3, 6)
    want = outcome(lambda: ref(x, h))
    assert outcome(lambda: ours(x, h)) == want
    if want[0] == "ok" and reset_after:
        torch.testing.assert_close(ours(x, h), ref(x, h))


@pytest.mark.parametrize("kwargs", [dict(hidden_size=0), dict(bias=1), dict(input_size=0)])
def test_cell_constructor_matches_torch(kwargs):
    """torch.nn.GRUCell accepts these; so do we (no silently wrong number follows)."""
    args = {"input_size": 5, "hidden_size": 6, **kwargs}
    assert outcome(lambda: flashgru.GRUCell(**args).weight_hh) == \
        outcome(lambda: torch.nn.GRUCell(**args).weight_hh)


def test_bad_flashgru_arguments():
    with pytest.raises(TypeError, match="reset_after should be of type bool, got: int"):
        flashgru.GRU(3, 4, reset_after=1)
    with pytest.raises(TypeError, match="reset_after should be of type bool, got: str"):
        flashgru.GRUCell(3, 4, reset_after="no")
    with pytest.raises(ValueError, match="unknown backend 'cuda'; choose one of 'auto'"):
        flashgru.GRU(3, 4, backend="cuda")
    with pytest.raises(ValueError, match="backend 'torch' runs only reset_after=True.*"
                                         "backend='reference'"):
        flashgru.GRU(3, 4, reset_after=False, backend="torch")
    with pytest.raises(TypeError, match="unexpected keyword argument 'hiden_size'"):
        flashgru.GRU(3, 4, hiden_size=4)
