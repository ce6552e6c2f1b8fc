"""The streaming fast path (one step, inference): GRUCell through ``cpu_step._cell`` and
GRU with T=1 through ``cpu_step._core_step``. Same numbers as the reference step and torch, every
input form; calls that want gradients or are out of the path's reach take the ordinary
path, with correct results and gradients. Each test asserts which path ran."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close

import flashgru
from flashgru.backends import _cpu_kernels, cpu, cpu_step, reference

numba = pytest.importorskip("numba")
pytestmark = pytest.mark.skipif(cpu.missing() is not None, reason="needs numba and SciPy")

TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


@pytest.fixture
def cell_calls(monkeypatch):
    """A list that gets one entry per call of the cell's fused kernel."""
    calls, kernel = [], cpu_step._cell
    monkeypatch.setattr(cpu_step, "_cell", lambda *a: (calls.append(a), kernel(*a))[1])
    return calls


@pytest.fixture
def step_calls(monkeypatch):
    """A list that gets one entry per fused T=1 step of the GRU's core."""
    calls, kernel = [], cpu_step._core_step
    monkeypatch.setattr(cpu_step, "_core_step", lambda *a: (calls.append(a), kernel(*a))[1])
    return calls


def reference_step(cell, x, h):
    """h' by the reference backend's step with the cell's weights: x (B, I), h (B, H)."""
    gi = F.linear(x, cell.weight_ih, cell.bias_ih)
    return reference.step(gi, h, cell.weight_hh, cell.bias_hh, cell.reset_after).h


def inputs(batch, dtype, input_size=5, hidden=7, seed=0):
    """x and h: (B, I) and (B, H), or (I,) and (H,) for batch None."""
    g = torch.Generator().manual_seed(seed)
    lead = () if batch is None else (batch,)
    return (torch.randn(*lead, input_size, generator=g, dtype=dtype),
            torch.randn(*lead, hidden, generator=g, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batch", [None, 1, 3], ids=["unbatched", "B1", "B3"])
@pytest.mark.parametrize("given_hx", [True, False], ids=["hx", "nohx"])
def test_cell_fast_path_matches_reference(dtype, reset_after, bias, batch, given_hx,
                                          cell_calls):
    torch.manual_seed(0)
    cell = flashgru.GRUCell(5, 7, bias=bias, reset_after=reset_after, dtype=dtype)
    x, h = inputs(batch, dtype)
    if not given_hx:
        h = torch.zeros_like(h)
    with torch.no_grad():
        got = cell(x, h if given_hx else None)
        rows = (x, h) if batch is not None else (x[None], h[None])
        ref = reference_step(cell, *rows)
    assert len(cell_calls) == 1
    assert_close("h'", ref if batch is not None else ref[0], got, TOL[dtype])
    if reset_after:
        torch_cell = torch.nn.GRUCell(5, 7, bias=bias, dtype=dtype)
        torch_cell.load_state_dict(cell.state_dict())
        with torch.no_grad():
            assert_close("h' vs torch.nn.GRUCell", torch_cell(x, h), got, TOL[dtype])


def _one_step_at_a_time(gru, xs):
    """Run ``gru`` on xs (T, …) as T calls of one step, each carrying h_n on: the outputs
    concatenated over time, and the last h_n."""
    h, outs = None, []
    for x in xs:
        out, h = gru(x[None], h)
        outs.append(out)
    return torch.cat(outs), h


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batch", [None, 1, 3], ids=["unbatched", "B1", "B3"])
@pytest.mark.parametrize("backend", ["auto", "cpu"])
def test_gru_one_step_with_carried_state(dtype, reset_after, bias, batch, backend,
                                         step_calls, cell_calls):
    """Three calls of T=1, each carrying h_n on, against one reference call of T=3."""
    torch.manual_seed(0)
    ours = flashgru.GRU(5, 7, bias=bias, reset_after=reset_after, dtype=dtype,
                        backend=backend)
    ref = flashgru.GRU(5, 7, bias=bias, reset_after=reset_after, dtype=dtype,
                       backend="reference")
    ref.load_state_dict(ours.state_dict())
    lead = () if batch is None else (batch,)
    xs = torch.randn(3, *lead, 5, dtype=dtype)
    with torch.no_grad():
        out_ref, h_ref = ref(xs)
        out, h = _one_step_at_a_time(ours, xs)
    assert len(cell_calls) == 3 and not step_calls  # one layer: the cell's kernel directly
    assert_close("output", out_ref, out, TOL[dtype])
    assert_close("h_n", h_ref, h, TOL[dtype])


def test_cell_large_hidden_and_input(cell_calls):
    """Sizes where the GEMV's four-row blocks and vector loops have remainders."""
    torch.manual_seed(0)
    cell = flashgru.GRUCell(67, 45, dtype=torch.float64)
    x, h = inputs(2, torch.float64, 67, 45)
    with torch.no_grad():
        assert_close("h'", reference_step(cell, x, h), cell(x, h), 1e-12)
    assert len(cell_calls) == 1


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_cell_with_blas_sized_weights(reset_after, dtype, cell_calls):
    """B=1 with 3H × I ≥ GEMV_BLAS_MIN: the products are BLAS's GEMV (I=H=256)."""
    assert 3 * 256 * 256 >= _cpu_kernels.GEMV_BLAS_MIN
    torch.manual_seed(0)
    cell = flashgru.GRUCell(256, 256, dtype=dtype, reset_after=reset_after)
    x, h = inputs(1, dtype, 256, 256)
    with torch.no_grad():
        assert_close("h'", reference_step(cell, x, h), cell(x, h),
                     1e-12 if dtype == torch.float64 else 1e-5)
    assert len(cell_calls) == 1


@pytest.mark.parametrize("reset_after", [True, False])
def test_cell_gradients_take_the_ordinary_path(reset_after, cell_calls):
    torch.manual_seed(0)
    cell = flashgru.GRUCell(5, 7, reset_after=reset_after, dtype=torch.float64)
    x, h = (t.requires_grad_() for t in inputs(3, torch.float64))
    got = cell(x, h)
    ref = reference_step(cell, x, h)
    assert not cell_calls
    assert_close("h'", ref, got, 1e-12)
    names = ["x", "h", *(n for n, _ in cell.named_parameters())]
    leaves = [x, h, *cell.parameters()]
    weight = torch.randn_like(got)
    grads_ref = torch.autograd.grad((ref * weight).sum(), leaves)
    grads = torch.autograd.grad((got * weight).sum(), leaves)
    for name, g_ref, g in zip(names, grads_ref, grads, strict=True):
        assert_close(f"d{name}", g_ref, g, 1e-12)


def test_cell_gradient_of_the_input_only_takes_the_ordinary_path(cell_calls):
    cell = flashgru.GRUCell(5, 7, dtype=torch.float64).requires_grad_(False)
    x, h = inputs(1, torch.float64)
    cell(x, h)  # nothing requires grad: fast even with grad mode on
    assert len(cell_calls) == 1
    x.requires_grad_()
    out = cell(x, h)
    assert len(cell_calls) == 1 and out.requires_grad


def test_gru_one_step_gradients_take_the_autograd_path(step_calls):
    torch.manual_seed(0)
    ours = flashgru.GRU(5, 7, dtype=torch.float64, backend="cpu")
    ref = flashgru.GRU(5, 7, dtype=torch.float64, backend="reference")
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(1, 2, 5, dtype=torch.float64)
    (out, _), (out_ref, _) = ours(x), ref(x)
    assert not step_calls
    grads = torch.autograd.grad(out.sum(), list(ours.parameters()))
    grads_ref = torch.autograd.grad(out_ref.sum(), list(ref.parameters()))
    for (name, _), g_ref, g in zip(ours.named_parameters(), grads_ref, grads, strict=True):
        assert_close(f"d{name}", g_ref, g, 1e-12)


def test_gru_one_step_with_many_rows_takes_the_sequence_kernel(step_calls):
    torch.manual_seed(0)
    ours = flashgru.GRU(5, 7, dtype=torch.float64, reset_after=False)
    ref = flashgru.GRU(5, 7, dtype=torch.float64, reset_after=False, backend="reference")
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(1, cpu_step.STEP_WORK // (3 * 7 * 7) + 1, 5, dtype=torch.float64)
    with torch.no_grad():
        assert_close("output", ref(x)[0], ours(x)[0], 1e-12)
    assert not step_calls


def test_cell_inference_mode_takes_the_fast_path(cell_calls):
    cell = flashgru.GRUCell(5, 7)
    x, h = inputs(1, torch.float32)
    with torch.inference_mode():
        out = cell(x, h)
    assert len(cell_calls) == 1
    with torch.no_grad():
        assert_close("h'", reference_step(cell, x, h), out, 1e-5)


def too_many_rows(t):
    """t (3, F) repeated to more rows than ``cpu_step.step_fits`` takes for a (5, 7) cell."""
    rows = cpu_step.STEP_WORK // (3 * 7 * (5 + 7)) + 1
    return t.repeat(rows // 3 + 1, 1)[:rows]


CELL_ORDINARY = {
    "non-contiguous input": lambda x, h: (x.t().contiguous().t(), h),
    "non-contiguous hx": lambda x, h: (x, h.t().contiguous().t()),
    "more rows than step_fits takes": lambda x, h: (too_many_rows(x), too_many_rows(h)),
    "float64 input": lambda x, h: (x.double(), h),
    "float64 hx": lambda x, h: (x, h.double()),
    "a Parameter as input": lambda x, h: (torch.nn.Parameter(x, requires_grad=False), h),
}


@pytest.mark.parametrize("case", CELL_ORDINARY)
def test_cell_outside_the_fast_path_is_unchanged(case, cell_calls):
    """The ordinary path runs, and gives torch.nn.GRUCell's result or error."""
    torch.manual_seed(0)
    cell = flashgru.GRUCell(5, 7)
    torch_cell = torch.nn.GRUCell(5, 7)
    torch_cell.load_state_dict(cell.state_dict())
    x, h = CELL_ORDINARY[case](*inputs(3, torch.float32))
    with torch.no_grad():
        try:
            expected = torch_cell(x, h)
        except RuntimeError as e:
            with pytest.raises(RuntimeError, match=str(e)):
                cell(x, h)
        else:
            assert_close("h'", expected, cell(x, h), 1e-5)
    assert not cell_calls


def test_cell_modes_take_the_ordinary_path(cell_calls):
    cell = flashgru.GRUCell(5, 7)
    torch_cell = torch.nn.GRUCell(5, 7)
    torch_cell.load_state_dict(cell.state_dict())
    x, h = inputs(1, torch.float32)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert_close("autocast", torch_cell(x, h), cell(x, h), 0)
        traced = torch.jit.trace(cell, (x, h), check_trace=False)
    assert not cell_calls
    with torch.no_grad():
        assert_close("traced", cell(x, h), traced(x, h), 1e-5)


def test_cell_sees_weights_replaced_through_data(cell_calls):
    """Addresses are read every call: a new ``.data`` (another buffer, another dtype or a
    transposed view) is used or refused, never read stale."""
    torch.manual_seed(0)
    cell = flashgru.GRUCell(5, 7, dtype=torch.float64)
    x, h = inputs(2, torch.float64)
    with torch.no_grad():
        cell(x, h)
        cell.weight_hh.data = torch.randn(21, 7, dtype=torch.float64)
        assert_close("new .data", reference_step(cell, x, h), cell(x, h), 1e-12)
        cell.weight_hh.mul_(0.5)  # in place, as an optimizer step
        assert_close("in place", reference_step(cell, x, h), cell(x, h), 1e-12)
        assert len(cell_calls) == 3
        cell.weight_hh.data = cell.weight_hh.data.t().contiguous().t()  # strided
        assert_close("strided", reference_step(cell, x, h), cell(x, h), 1e-12)
        cell.bias_ih.data = cell.bias_ih.data[:7]  # same address, wrong shape: torch's error
        with pytest.raises(RuntimeError):
            cell(x, h)
    assert len(cell_calls) == 3


def test_cell_functional_call_uses_the_given_parameters(cell_calls):
    cell = flashgru.GRUCell(5, 7, dtype=torch.float64)
    x, h = inputs(2, torch.float64)
    params = {n: torch.randn_like(p) for n, p in cell.named_parameters()}
    with torch.no_grad():
        got = torch.func.functional_call(cell, params, (x, h))
        cell.load_state_dict(params)
        assert_close("h'", reference_step(cell, x, h), got, 1e-12)
    assert len(cell_calls) == 1


def test_cell_input_is_not_written(cell_calls):
    cell = flashgru.GRUCell(5, 7)
    x, h = inputs(3, torch.float32)
    x0, h0 = x.clone(), h.clone()
    with torch.no_grad():
        out = cell(x, h)
    assert torch.equal(x, x0) and torch.equal(h, h0)
    assert out.data_ptr() != h.data_ptr() and len(cell_calls) == 1


@pytest.mark.parametrize("dtype, lo, hi, bound", [
    (np.float64, -708.0, 708.0, 4e-16), (np.float32, -87.0, 88.0, 2 * 2.0**-24)],
    ids=["f64", "f32"])
def test_gate_exp_relative_error(dtype, lo, hi, bound):
    """The gates' exp (inlined into every gate loop, sequence and step kernels), in each
    dtype's own arithmetic, against float64 numpy on a fine grid of its whole range."""
    x = np.linspace(lo, hi, 200_001).astype(dtype)

    @numba.njit
    def exp_all(v):
        out = np.empty_like(v)
        for j in range(v.shape[0]):
            out[j] = _cpu_kernels._exp(v[j])
        return out

    got = exp_all(x)
    assert got.dtype == dtype
    ref = np.exp(x.astype(np.float64))
    assert (np.abs(got - ref) / ref).max() <= bound
    # beyond the range: exactly 0 and inf, as np.exp at ∓inf; NaN stays NaN
    ends = np.array([-np.inf, -1e30, 2 * lo, 2 * hi, 1e30, np.inf, np.nan], dtype=dtype)
    assert exp_all(ends).tolist()[:6] == [0.0, 0.0, 0.0, np.inf, np.inf, np.inf]
    assert np.isnan(exp_all(ends)[6])


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("batch", [None, 2], ids=["unbatched", "B2"])
def test_stacked_gru_one_step_takes_the_cell_kernel_per_layer(reset_after, batch, cell_calls,
                                                             step_calls):
    """Three layers, T=1 calls carrying h_n: one cell-kernel call per layer and step, and
    the reference's numbers; in training mode with dropout, the ordinary path."""
    torch.manual_seed(0)
    ours = flashgru.GRU(5, 7, 3, dropout=0.5, reset_after=reset_after, dtype=torch.float64)
    ref = flashgru.GRU(5, 7, 3, dropout=0.5, reset_after=reset_after, dtype=torch.float64,
                       backend="reference")
    ref.load_state_dict(ours.state_dict())
    ours.eval()
    ref.eval()
    lead = () if batch is None else (batch,)
    xs = torch.randn(4, *lead, 5, dtype=torch.float64)
    with torch.no_grad():
        out_ref, h_ref = ref(xs)
        out, h = _one_step_at_a_time(ours, xs)
    assert len(cell_calls) == 12 and not step_calls
    assert_close("output", out_ref, out, 1e-12)
    assert_close("h_n", h_ref, h, 1e-12)
    ours.train()
    with torch.no_grad():
        ours(xs[:1], h)
    assert len(cell_calls) == 12  # dropout between layers: not the fast path


def test_cached_kernels_are_dropped_when_any_kernel_source_changes(tmp_path, monkeypatch):
    """numba keys a cached kernel on its own file only; flashgru drops all its cached
    kernels when any kernel file changes (a helper inlined from another file would stay
    stale otherwise), and keeps them while nothing changed."""
    import types as pytypes

    probe = pytypes.SimpleNamespace(_cache=pytypes.SimpleNamespace(_cache_path=str(tmp_path)))
    names = ["cpu._fwd_after-1.py311.nbi", "cpu_step._cell-2.py311.1.nbc",
             "_cpu_kernels._exp-3.py311.nbi"]
    other = tmp_path / "someone_else.f-1.py311.nbi"

    def fill():
        for name in names:
            (tmp_path / name).write_bytes(b"x")
        other.write_bytes(b"x")

    fill()
    _cpu_kernels._drop_stale_cache(probe)  # no stamp yet: dropped
    assert [p.name for p in tmp_path.glob("*.nb?")] == [other.name]
    fill()
    _cpu_kernels._drop_stale_cache(probe)  # same sources: kept
    assert len(list(tmp_path.glob("*.nb?"))) == 4
    stamp = tmp_path / "flashgru-kernels.stamp"
    stamp.write_text("an older build")
    _cpu_kernels._drop_stale_cache(probe)  # changed sources: dropped again
    assert [p.name for p in tmp_path.glob("*.nb?")] == [other.name]
    assert stamp.read_text() != "an older build"


@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
@pytest.mark.parametrize("given_hx", [False, True], ids=["nohx", "hx"])
def test_gru_one_step_layouts_and_no_aliasing(batch_first, given_hx, cell_calls):
    """T=1 on the fast path in either layout, hx given or not: the reference's numbers;
    the output and h_n are separate tensors, and hx is not written."""
    torch.manual_seed(0)
    ours = flashgru.GRU(5, 7, 2, batch_first=batch_first, dtype=torch.float64)
    ref = flashgru.GRU(5, 7, 2, batch_first=batch_first, dtype=torch.float64,
                       backend="reference")
    ref.load_state_dict(ours.state_dict())
    x = torch.randn((3, 1, 5) if batch_first else (1, 3, 5), dtype=torch.float64)
    hx = torch.randn(2, 3, 7, dtype=torch.float64) if given_hx else None
    before = None if hx is None else hx.clone()
    with torch.no_grad():
        out_ref, h_ref = ref(x, hx)
        out, h_n = ours(x, hx)
    assert len(cell_calls) == 2  # one per layer
    assert_close("output", out_ref, out, 1e-12)
    assert_close("h_n", h_ref, h_n, 1e-12)
    assert hx is None or torch.equal(hx, before)
    out.zero_()
    assert_close("h_n after the output was zeroed", h_ref, h_n, 1e-12)
