"""GRU's sequence fast path (``GRU._sequence``): a one-direction call on the ``cpu``
backend goes straight to ``cpu.core``, layer by layer. The same numbers and gradients as
the ordinary path (bit for bit: the same ops), every input form it takes; everything else
takes the ordinary path, with torch's results and errors. Each test asserts which path
ran."""

import re
import warnings

import pytest
import torch
from helpers import assert_close

import flashgru
from flashgru import functional
from flashgru.backends import CPU_MIN_STEPS, cpu

pytestmark = pytest.mark.skipif(cpu.missing() is not None, reason="needs numba and SciPy")


@pytest.fixture
def ordinary(monkeypatch):
    """A list that gets one entry per module call that takes the ordinary path (its
    first step, ``GRU._prepare``, runs torch's checks)."""
    calls, real = [], flashgru.GRU._prepare
    monkeypatch.setattr(flashgru.GRU, "_prepare",
                        lambda self, *a: (calls.append(1), real(self, *a))[1])
    return calls


def _pair(layers=1, reset_after=True, dtype=torch.float32, batch_first=False, bias=True,
          backend="cpu"):
    torch.manual_seed(0)
    gru = flashgru.GRU(5, 7, layers, bias=bias, batch_first=batch_first, dtype=dtype,
                       reset_after=reset_after, backend=backend)
    ref = flashgru.GRU(5, 7, layers, bias=bias, batch_first=batch_first, dtype=dtype,
                       reset_after=reset_after, backend="reference")
    ref.load_state_dict(gru.state_dict())
    return gru, ref


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
@pytest.mark.parametrize("given_hx", [False, True], ids=["nohx", "hx"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_sequence_path_matches_the_ordinary_path(dtype, reset_after, layers, batch_first,
                                                 given_hx, bias, ordinary):
    gru, ref = _pair(layers, reset_after, dtype, batch_first, bias)
    steps, batch = CPU_MIN_STEPS + 3, 3
    x = torch.randn((batch, steps, 5) if batch_first else (steps, batch, 5), dtype=dtype)
    hx = torch.randn(layers, batch, 7, dtype=dtype) if given_hx else None
    with torch.no_grad():
        out, h_n = gru(x, hx)
        assert not ordinary
        want_out, want_h = functional.gru(  # the ordinary path on the same module
            x, torch.zeros(layers, batch, 7, dtype=dtype) if hx is None else hx,
            gru._flat_weights, has_biases=bias, num_layers=layers, batch_first=batch_first,
            reset_after=reset_after, backend="cpu")
        ref_out, ref_h = ref(x, hx)
    assert torch.equal(out, want_out) and torch.equal(h_n, want_h)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert_close("out", ref_out, out, tol)
    assert_close("h_n", ref_h, h_n, tol)


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("given_hx", [False, True], ids=["nohx", "hx"])
def test_sequence_path_trains_as_the_ordinary_path(reset_after, layers, given_hx, ordinary):
    """A call that wants gradients takes the fast path too (no dropout between layers):
    the ordinary path's output, h_n and gradients (input, hx, every parameter), bit for
    bit, and the reference's within float64's rounding."""
    gru, ref = _pair(layers, reset_after, torch.float64, batch_first=True)
    x = torch.randn(3, CPU_MIN_STEPS + 3, 5, dtype=torch.float64, requires_grad=True)
    hx = torch.randn(layers, 3, 7, dtype=torch.float64, requires_grad=True) \
        if given_hx else None
    inputs = [x, *([hx] if given_hx else []), *gru.parameters()]
    out, h_n = gru(x, hx)
    assert not ordinary
    want = functional.gru(
        x, torch.zeros(layers, 3, 7, dtype=torch.float64) if hx is None else hx,
        gru._flat_weights, has_biases=True, num_layers=layers, batch_first=True,
        reset_after=reset_after, backend="cpu")
    assert torch.equal(out, want[0]) and torch.equal(h_n, want[1])
    d_out, d_h = torch.randn_like(out), torch.randn_like(h_n)
    got = torch.autograd.grad((out, h_n), inputs, (d_out, d_h))
    for g, w in zip(got, torch.autograd.grad(want, inputs, (d_out, d_h)), strict=True):
        assert torch.equal(g, w)
    ref_inputs = [x, *([hx] if given_hx else []), *ref.parameters()]
    for g, w in zip(got, torch.autograd.grad(ref(x, hx), ref_inputs, (d_out, d_h)),
                    strict=True):
        assert_close("gradient", w, g, 1e-12, rtol=1e-12)


def test_sequence_path_in_inference_mode_and_eval_with_dropout(ordinary):
    gru, ref = _pair(layers=2)
    gru.dropout = ref.dropout = 0.5
    x = torch.randn(CPU_MIN_STEPS, 2, 5)
    gru.eval()
    ref.eval()
    with torch.inference_mode():
        assert_close("out", ref(x)[0], gru(x)[0], 1e-5)
    assert ordinary == [1]  # the reference module's own call only


def _torch_gru():
    torch.manual_seed(0)
    return torch.nn.GRU(5, 7, 2)


ORDINARY = {  # (how to call, whether torch.nn.GRU gives the same result or error)
    "short call (auto keeps torch's kernels)": lambda m, x: m(x[: CPU_MIN_STEPS - 1]),
    "unbatched input": lambda m, x: m(x[:, 0]),
    "packed input": lambda m, x: m(torch.nn.utils.rnn.pack_padded_sequence(
        x, torch.tensor([x.shape[0], 2]))),
    "wrong feature size": lambda m, x: m(x[..., :4]),
    "hx of the wrong shape": lambda m, x: m(x, torch.zeros(2, 3, 7)),
    "float64 hx": lambda m, x: m(x, torch.zeros(2, 2, 7, dtype=torch.float64)),
    "float64 input": lambda m, x: m(x.double()),
    "empty batch": lambda m, x: m(x[:, :0]),
}


@pytest.mark.parametrize("case", ORDINARY)
def test_outside_the_sequence_path_is_unchanged(case, ordinary):
    """The ordinary path runs, and gives torch.nn.GRU's result or error."""
    ref = _torch_gru()
    gru = flashgru.GRU.from_torch(ref, backend="auto")
    x = torch.randn(CPU_MIN_STEPS + 1, 2, 5)
    call = ORDINARY[case]
    try:
        with torch.no_grad():
            expected = call(ref, x.clone())
    except (RuntimeError, ValueError) as e:
        with pytest.raises(type(e), match=re.escape(str(e).split("\n")[0])):
            call(gru, x.clone())
    else:
        with torch.no_grad():
            got = call(gru, x.clone())
        for name, r, g in zip(("output", "h_n"), expected, got, strict=True):
            r = r.data if isinstance(r, torch.nn.utils.rnn.PackedSequence) else r
            g = g.data if isinstance(g, torch.nn.utils.rnn.PackedSequence) else g
            assert_close(name, r.detach(), g.detach(), 1e-5)
    assert ordinary  # flashgru's call went the ordinary way


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_other_backends_and_training_dropout_take_the_ordinary_path(backend, ordinary):
    gru, _ = _pair(layers=2, backend=backend)
    with torch.no_grad():
        gru(torch.randn(CPU_MIN_STEPS, 2, 5))
    assert ordinary == [1]
    gru, _ = _pair(layers=2)
    gru.dropout = 0.5
    with torch.no_grad():
        gru(torch.randn(CPU_MIN_STEPS, 2, 5))  # training mode: dropout between layers
    assert ordinary == [1, 1]


def test_sequence_path_modes_take_the_ordinary_path(ordinary):
    """Autocast and tracing take the ordinary path; a trace records torch's kernels (auto),
    and tracing a module that asks for ``cpu`` by name is refused (its kernels' outputs
    would be recorded as constants)."""
    gru, _ = _pair(backend="auto")
    x = torch.randn(CPU_MIN_STEPS, 2, 5)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            gru(x)
        assert len(ordinary) == 1
        traced = torch.jit.trace(gru, (x,), check_trace=False)
    assert len(ordinary) == 2
    other = torch.randn(CPU_MIN_STEPS, 2, 5)
    with torch.no_grad():
        assert_close("traced", gru(other)[0], traced(other)[0], 1e-5)
    gru.backend = "cpu"
    with torch.no_grad(), pytest.raises(RuntimeError, match="cannot be recorded by torch.jit"):
        torch.jit.trace(gru, (x,), check_trace=False)


@pytest.mark.parametrize("kwargs", [dict(backend="reference"), dict(reset_after=False)])
def test_a_trace_of_the_reference_loop_warns_of_its_fixed_length(kwargs):
    """A trace unrolls the reference core's loop over time (backend 'reference', or auto's
    choice for reset_after=False): it says so, with the length it holds. (auto, for
    reset_after=True, records torch's one op and says nothing of a length.)"""
    gru = flashgru.GRU(5, 7, **kwargs)
    x = torch.randn(6, 2, 5)
    with torch.no_grad(), pytest.warns(torch.jit.TracerWarning,
                                       match="right results only for inputs of 6 steps"):
        torch.jit.trace(gru, (x,), check_trace=False)
    with torch.no_grad(), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.jit.trace(flashgru.GRU(5, 7), (x,), check_trace=False)
    assert not [w for w in seen if "reference core" in str(w.message)]


def test_sequence_path_sees_replaced_parameters(ordinary):
    """Parameters are read every call: a new ``.data`` or an in-place change is used."""
    gru, ref = _pair(dtype=torch.float64)
    x = torch.randn(CPU_MIN_STEPS, 2, 5, dtype=torch.float64)
    with torch.no_grad():
        gru(x)
        gru.weight_hh_l0.data = torch.randn(21, 7, dtype=torch.float64)
        gru.bias_ih_l0.mul_(0.5)
        ref.load_state_dict(gru.state_dict())
        assert_close("out", ref(x)[0], gru(x)[0], 1e-12)
        gru.weight_ih_l0.data = gru.weight_ih_l0.data.float()  # dtypes differ: torch's error
        with pytest.raises(ValueError, match="does not match weight dtype"):
            gru(x)
    assert len(ordinary) == 2  # ref's call, and the mismatched one
