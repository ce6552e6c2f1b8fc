"""The parallel-in-time backend against the reference core: outputs and every gradient,
dense and diagonal Jacobians, both formulations, lengths; convergence on random and on
trained weights; the prefix-exact property and the sequential finish when the budget runs
out. (It also joins tests/test_parity_torch.py's sweep against torch.nn.GRU.)"""

import dataclasses
import math

import pytest
import torch
from helpers import assert_close

import flashgru
from flashgru.backends import parallel, parallel_triton, reference

TOL = {torch.float64: 1e-12, torch.float32: 2e-5}
WHERE = {"device": "cpu"}  # where _compare runs the solver (the reference stays on the CPU)
FUSED = [False] + ([True] if parallel_triton.available(
    torch.device("cuda" if torch.cuda.is_available() else "cpu")) else [])


@pytest.fixture(autouse=True, params=FUSED, ids=lambda f: "fused" if f else "torch-ops")
def fused(request, monkeypatch):
    """Every test twice where Triton runs: the solver's torch ops, and its fused Triton
    kernels (reset_after=True; reset_after=False always takes the torch ops)."""
    if request.param and request.node.get_closest_marker("large") and \
            not torch.cuda.is_available():
        pytest.skip("the fused kernels at this size take minutes in Triton's interpreter; "
                    "this case runs them on CUDA")
    params = getattr(request.node, "callspec", None)
    if request.param and params is not None and params.params.get("reset_after") is False:
        pytest.skip("reset_after=False has no fused kernels: its torch-ops case is the test")
    monkeypatch.setattr(parallel, "FUSED", request.param)
    # on a GPU the fused kernels need CUDA tensors: _compare moves its problem there
    monkeypatch.setitem(WHERE, "device", "cuda" if request.param and
                        torch.cuda.is_available() else "cpu")
    return request.param


def _problem(steps, batch, hidden, dtype, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, s=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * s).to(
            dtype).requires_grad_()

    return (rand(steps, batch, 3 * hidden), rand(batch, hidden),
            rand(3 * hidden, hidden, s=scale * hidden ** -0.5), rand(3 * hidden))


def _compare(gi, h0, w, b, lengths, reset_after, **opts):
    """The core under ``opts`` against the reference: output and all four gradients."""
    ref = reference.core(gi, h0, w, b, lengths, reset_after)
    dout = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=gi.dtype)
    inputs = [t for t in (gi, h0, w, b) if t is not None]
    ref_grads = torch.autograd.grad(ref, inputs, dout)
    dev = WHERE["device"]
    moved = [None if t is None else t.detach().to(dev).requires_grad_() for t in (gi, h0, w, b)]
    with parallel.options(**opts):
        out = parallel.core(*moved, lengths, reset_after).cpu()
        stats = parallel.last_stats()
    grads = [g.cpu() for g in torch.autograd.grad(out, [t for t in moved if t is not None],
                                                   dout)]
    tol = TOL[gi.dtype]
    assert_close("out", ref.detach(), out.detach(), tol, rtol=tol)
    for name, r, g in zip(("dgi", "dh0", "dw_hh", "db_hh"), ref_grads, grads, strict=False):
        assert_close(name, r, g, tol * 10, rtol=tol * 10)
    return stats


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("jacobian", ["dense", "diagonal"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("size", [(1, 1, 1), (37, 3, 5), (100, 2, 13)], ids=str)
def test_core_matches_reference(size, dtype, jacobian, reset_after):
    stats = _compare(*_problem(*size, dtype), None, reset_after, jacobian=jacobian)
    assert stats.sequential_from is None, stats  # random weights: it converges


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("jacobian", ["dense", "diagonal"])
def test_lengths_and_no_bias(jacobian, reset_after):
    gi, h0, w, _ = _problem(23, 4, 6, torch.float64)
    _compare(gi, h0, w, None, torch.tensor([23, 7, 1, 16]), reset_after, jacobian=jacobian)


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
def test_dense_newton_converges_in_few_iterations(reset_after):
    gi, h0, w, b = _problem(257, 2, 8, torch.float64)  # T not a power of two
    stats = _compare(gi, h0, w, b, None, reset_after)
    assert stats.iterations <= 12 and stats.sequential_from is None, stats


@pytest.mark.parametrize("jacobian", ["dense", "diagonal"])
@pytest.mark.parametrize("damping", [False, True])
def test_fused_loop_takes_the_same_iterations(fused, jacobian, damping):
    """The fused loop (two trajectory buffers, one kernel per update) against the torch-ops
    loop, float64, lengths, weights 2x torch's scale (so damping halves steps): the same
    iterations, residual, last guess, update (and ``_remaining``'s factor) and f(h)."""
    if not fused:
        pytest.skip("compares the fused loop with the torch-ops one")
    gi, h0, w, b = (t.detach().to(WHERE["device"]) for t in
                    _problem(37, 3, 6, torch.float64, scale=2.0, seed=3))
    lengths = torch.tensor([37, 20, 1])
    for budget in (2, 32):
        args = (gi, h0, w, b, lengths, True, jacobian == "dense", budget, 1e-13, damping)
        want, got = parallel._newton(*args), parallel._newton_fused(*args)
        assert got[6] == want[6]  # iterations; then the residual, update and its factor
        assert got[3:6] == pytest.approx(want[3:6], rel=1e-6, abs=1e-15)
        for name, a, c in zip(("f(h)", "h", "update"), want[:3], got[:3], strict=True):
            assert_close(name, a.cpu(), c.cpu(), 1e-12, rtol=1e-12)


@pytest.mark.parametrize("damping", [False, True])
def test_budget_runs_out_and_the_prefix_is_exact(damping):
    """After k full iterations the first k steps are exact, so the sequential finish
    starts at k or later; the answer is exact either way."""
    gi, h0, w, b = _problem(60, 2, 7, torch.float64, scale=3.0)  # far from contractive
    for budget in (0, 1, 3):
        stats = _compare(gi, h0, w, b, None, True, max_iters=budget, damping=damping)
        assert stats.iterations == budget
        assert stats.sequential_from is not None and stats.sequential_from >= budget, stats


def test_autocast_does_not_lower_the_solver_precision():
    """Under autocast the solver still computes in the state's dtype: bfloat16 products
    had left a residual Newton could not bring under float32's tolerance (32 iterations,
    then a sequential finish)."""
    gi, h0, w, b = _problem(300, 1, 16, torch.float32, seed=5)
    ref = reference.core(gi, h0, w, b, None, True)
    dout = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    want = torch.autograd.grad(ref, (gi, h0, w, b), dout)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = parallel.core(gi, h0, w, b, None, True)
        stats = parallel.last_stats()
    assert stats.iterations <= 12 and stats.sequential_from is None, stats
    assert_close("out", ref.detach(), out.detach(), 2e-5, rtol=2e-5)
    for name, r, g in zip(("dgi", "dh0", "dw_hh", "db_hh"), want,
                          torch.autograd.grad(out, (gi, h0, w, b), dout), strict=True):
        assert_close(name, r, g, 2e-4, rtol=2e-4)


def test_full_precision_turns_tf32_off_for_the_call_only():
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with parallel._full_precision(torch.device("cuda")):
            assert not torch.backends.cuda.matmul.allow_tf32
            assert not torch.is_autocast_enabled("cuda")
        assert torch.backends.cuda.matmul.allow_tf32
        with pytest.raises(KeyError), parallel._full_precision(torch.device("cuda")):
            raise KeyError  # restored on the way out of an error too
        assert torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def test_no_accepted_update_finishes_everything_sequentially():
    """With no Newton update accepted (a budget of 0), small residuals prove nothing: the
    whole sequence is finished sequentially."""
    gi, h0, w, b = _problem(40, 2, 6, torch.float64)
    stats = _compare(gi, h0, w, b, None, True, max_iters=0)
    assert stats.iterations == 0 and stats.sequential_from == 0, stats


def test_sequential_finish_takes_a_fused_core(monkeypatch):
    """An unconverged solve finishes on the fastest exact sequential core here: the fused
    CPU kernels where numba is installed, else the reference."""
    from flashgru.backends import BACKENDS
    cpu_tensor = torch.zeros(1)
    want = BACKENDS["cpu"].run if BACKENDS["cpu"].missing() is None else reference.core
    assert parallel._sequential_core(cpu_tensor) is want
    monkeypatch.setitem(BACKENDS, "cpu", dataclasses.replace(BACKENDS["cpu"],
                                                             missing=lambda: "numba"))
    assert parallel._sequential_core(cpu_tensor) is reference.core
    assert parallel._sequential_core(cpu_tensor.to(torch.float16)) is reference.core


def test_non_contractive_weights_are_still_exact():
    """Recurrent weights 3x torch's scale: Newton may stall; the answer does not change."""
    for jacobian in ("dense", "diagonal"):
        gi, h0, w, b = _problem(80, 3, 16, torch.float64, scale=3.0)
        _compare(gi, h0, w, b, torch.tensor([80, 50, 3]), False, jacobian=jacobian)


@pytest.mark.large
def test_trained_weights_converge_and_match():
    """Weights trained to delay their input by three steps, less contractive than random
    ones (W_hh's largest singular value ≈ 5 against ≈ 3): dense Newton still converges in
    a few iterations; the diagonal variant may run out of budget and finish sequentially,
    and is exact either way."""
    torch.manual_seed(0)
    gru = flashgru.GRU(2, 16, backend="torch")
    head = torch.nn.Linear(16, 1)
    opt = torch.optim.Adam([*gru.parameters(), *head.parameters()], lr=2e-2)
    for _ in range(250):
        x = torch.randn(20, 64, 2)
        loss = ((head(gru(x)[0][3:]).squeeze(-1) - x[:-3, :, 0]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05  # it learned to carry information through the recurrence
    gru = gru.double()
    x = torch.randn(300, 4, 2, dtype=torch.float64)
    gi = torch.nn.functional.linear(x, gru.weight_ih_l0, gru.bias_ih_l0).detach()
    h0 = torch.zeros(4, 16, dtype=torch.float64)
    w = gru.weight_hh_l0.detach().clone()
    b = gru.bias_hh_l0.detach().clone()
    args = [t.requires_grad_() for t in (gi, h0, w, b)]
    dense = _compare(*args, None, True, jacobian="dense")
    assert dense.sequential_from is None and dense.iterations <= 10, dense
    _compare(*args, None, True, jacobian="diagonal")


def _float32_errors(ref, x, h0, jacobian):
    """(the solver's, the sequential float32 loop's) largest error against float64 for
    torch.nn.GRU ``ref``'s one layer on x, h0, both formulations in turn."""
    gi = torch.nn.functional.linear(x, ref.weight_ih_l0, ref.bias_ih_l0).detach()
    w, b = ref.weight_hh_l0.detach(), ref.bias_hh_l0.detach()
    args = [t.to(WHERE["device"]) for t in (gi, h0, w, b)]
    for reset_after in (True, False):
        exact = reference.core(gi.double(), h0.double(), w.double(), b.double(), None,
                               reset_after)
        with torch.no_grad(), parallel.options(jacobian=jacobian):
            got = parallel.core(*args, None, reset_after).cpu()
        sequential = reference.core(gi, h0, w, b, None, reset_after)
        yield reset_after, got.double() - exact, sequential.double() - exact


@pytest.mark.parametrize("jacobian", ["dense", "diagonal"])
def test_one_large_state_does_not_loosen_the_other_rows(jacobian):
    """An h0 entry of 1e6 in one row leaves the other rows as exact as float32 makes them:
    a tolerance scaled by the largest |h0| let them stop 2e-2 to 1e-1 off (a review)."""
    torch.manual_seed(0)
    ref = torch.nn.GRU(3, 8)
    g = torch.Generator().manual_seed(1)
    x, h0 = torch.randn(200, 3, 3, generator=g), torch.randn(3, 8, generator=g)
    h0[0, 0] = 1e6
    for reset_after, err, sequential in _float32_errors(ref, x, h0, jacobian):
        worst = err[:, 1:].abs().max().item()
        assert worst <= max(1e-6, 4 * sequential[:, 1:].abs().max().item()), \
            (reset_after, worst)


@pytest.mark.large
@pytest.mark.parametrize("jacobian", ["dense", "diagonal"])
def test_slow_linear_convergence_is_not_taken_for_the_answer(jacobian):
    """Recurrent weights 3x torch's scale: quasi-Newton's updates shrink by a ratio near 1,
    and an update below the tolerance left 8e-6 to 1.5e-5 to go in float32 (a review's
    fuzz); weighed by ρ / (1 − ρ), and a damped update by its full size, the answer is
    within a few times the sequential float32 loop's error."""
    torch.manual_seed(859052)
    ref = torch.nn.GRU(8, 24)
    with torch.no_grad():
        ref.weight_hh_l0.mul_(3)
    g = torch.Generator().manual_seed(859052)
    x, h0 = torch.randn(300, 4, 8, generator=g), torch.randn(4, 24, generator=g) * 0.5
    for reset_after, err, sequential in _float32_errors(ref, x, h0, jacobian):
        assert err.abs().max().item() <= 5e-6, (reset_after, err.abs().max().item(),
                                                sequential.abs().max().item())


def test_options_are_checked_and_scoped():
    with pytest.raises(ValueError, match="jacobian must be"):
        with parallel.options(jacobian="full"):
            pass
    with pytest.raises(ValueError, match="max_iters"):
        with parallel.options(max_iters=-1):
            pass
    for tol in (0.0, math.inf, math.nan):  # (inf: the initial guess would pass unsolved)
        with pytest.raises(ValueError, match="tol must be a finite number > 0"):
            with parallel.options(tol=tol):
                pass
    with parallel.options(jacobian="diagonal"):
        with parallel.options(max_iters=5) as inner:
            assert inner.jacobian == "diagonal" and inner.max_iters == 5
    with parallel.options() as now:
        assert now == parallel.Options()


def test_no_double_backward():
    gi, h0, w, b = _problem(4, 2, 3, torch.float64)
    out = parallel.core(gi, h0, w, b, None, True)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(out.sum(), gi, create_graph=True)


def test_module_backend_parallel_packed():
    torch.manual_seed(0)
    ref = torch.nn.GRU(3, 6, 2, bidirectional=True, dtype=torch.float64)
    ours = flashgru.GRU.from_torch(ref, backend="parallel")
    x = torch.randn(9, 3, 3, dtype=torch.float64)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, [4, 9, 2], enforce_sorted=False)
    (o_ref, h_ref), (o, h) = ref(packed), ours(packed)
    assert_close("output", o_ref.data, o.data, 1e-12)
    assert_close("h_n", h_ref, h, 1e-12)


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
def test_bias_changed_before_the_backward(reset_after):
    """b_hh changed in place between the forward and the backward: the gradients are
    those of the forward's b_hh, as torch.nn.GRU's (which keeps no b_hh for its backward)
    and the reference's are; before, the solver's saved b_hh made autograd refuse."""
    torch.manual_seed(0)
    grads = []
    for backend in ("reference", "parallel"):
        torch.manual_seed(0)
        module = flashgru.GRU(4, 5, backend=backend, reset_after=reset_after,
                              dtype=torch.float64)
        x = torch.randn(6, 2, 4, dtype=torch.float64, requires_grad=True)
        out, _ = module(x)
        with torch.no_grad():
            module.bias_hh_l0.add_(0.5)
        out.square().sum().backward()
        grads.append([x.grad] + [p.grad for p in module.parameters()])
    for want, got in zip(*grads, strict=True):
        assert_close("gradient", want, got, 1e-10)


def test_meta_device_gives_the_shapes():
    """On the meta device (no values for Newton's iterations) the reference's shapes, as
    torch.nn.GRU's."""
    ref = torch.nn.GRU(4, 5, 2, bidirectional=True, device="meta")
    ours = flashgru.GRU.from_torch(ref, backend="parallel")
    x = torch.randn(6, 2, 4, device="meta")
    for want, got in zip(ref(x), ours(x), strict=True):
        assert got.device.type == "meta" and got.shape == want.shape
    assert parallel.last_stats() is None  # nothing solved


def test_stats_of_a_call_with_nothing_to_solve():
    """A call with no row (or no step) says so: no earlier call's stats."""
    gru = flashgru.GRU(3, 4, backend="parallel")
    gru(torch.randn(5, 2, 3))
    assert parallel.last_stats().iterations > 0
    gru(torch.randn(5, 0, 3))
    assert parallel.last_stats() == parallel.SolveStats(0, 0.0, None)


@pytest.mark.large
def test_long_memory_converges_to_the_sequential_answer():
    """z near 1 (J near I): residuals add up over the steps, so the solver also waits for
    its last update to be small; the output is then as close to float64 as the sequential
    float32 loop is."""
    torch.manual_seed(0)
    steps, batch, hidden = 2048, 2, 16
    gi, h0 = torch.randn(steps, batch, 3 * hidden), torch.zeros(batch, hidden)
    w, b = torch.randn(3 * hidden, hidden) / hidden ** 0.5, torch.zeros(3 * hidden)
    b[hidden: 2 * hidden] += 4.0  # the update gate mostly keeps h
    exact = reference.core(*(t.double() for t in (gi, h0, w, b)), None, True)
    sequential = (reference.core(gi, h0, w, b, None, True).double() - exact).abs().max()
    for jacobian in ("dense", "diagonal"):
        with parallel.options(jacobian=jacobian):
            out = parallel.core(gi, h0, w, b, None, True)
        err = (out.double() - exact).abs().max()
        assert err <= 2 * sequential + 1e-6, (jacobian, err.item(), sequential.item())


def test_nan_is_never_converged():
    """A NaN in one row's input: the sequential finish reproduces the reference exactly,
    NaNs where it has them and the same numbers elsewhere."""
    gi, h0, w, b = (t.detach() for t in _problem(6, 3, 5, torch.float64))
    gi[4, 1, 0] = float("nan")
    ref = reference.core(gi, h0, w, b, None, True)
    out = parallel.core(gi, h0, w, b, None, True)
    assert torch.equal(ref.isnan(), out.isnan())
    assert_close("finite part", ref.nan_to_num(), out.nan_to_num(), 1e-12)
    assert parallel.last_stats().sequential_from is not None


@pytest.mark.skipif(flashgru.BACKENDS["cpu"].missing() is not None,
                    reason="the reference at this length is the fused cpu backend (numba)")
@pytest.mark.large
@pytest.mark.parametrize("jacobian", ["dense", "diagonal"])
def test_trains_at_65536_steps(jacobian):
    """Longer than cuDNN takes (it refuses T ≥ 65536): output and every gradient against
    the fused sequential cpu backend, float64 (small H, so it is quick on a CPU)."""
    torch.manual_seed(0)
    steps = 65536
    ref = torch.nn.GRU(3, 2, dtype=torch.float64)
    x = torch.randn(steps, 1, 3, dtype=torch.float64, requires_grad=True)
    results = []
    for backend in ("parallel", "cpu"):
        module = flashgru.GRU.from_torch(ref, backend=backend)
        with parallel.options(jacobian=jacobian):
            y, h_n = module(x)
        loss = (y * torch.linspace(-1, 1, steps, dtype=torch.float64).view(-1, 1, 1)).sum() \
            + h_n.sum()
        results.append([y, h_n, *torch.autograd.grad(loss, [x, *module.parameters()])])
    assert parallel.last_stats() is not None
    for name, got, want in zip(["output", "h_n", "dx", "dw_ih", "dw_hh", "db_ih", "db_hh"],
                               *results, strict=True):
        scale = want.abs().max().item()
        assert_close(name, want.detach(), got.detach(), 1e-12 * max(1.0, scale))
