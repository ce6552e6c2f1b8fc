"""The cpu backend's two loops — the fused numba loop (small steps) and the wide path
(torch's GEMM per step, numba for the gates; large steps) — against the reference core:
outputs and every gradient, both formulations, lengths, float32 and float64. The sweep in
tests/test_parity_torch.py only reaches the fused loop (its sizes are small)."""

import os
import platform
import sys

import pytest
import torch
from helpers import BACKENDS, assert_close, check_core, core_inputs, in_forked_child

import flashgru
from flashgru.backends import _cpu_kernels, cpu, reference

pytestmark = pytest.mark.skipif("cpu" not in BACKENDS, reason="needs numba and SciPy")


@pytest.mark.parametrize("path", ["fused", "wide"])
@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("lengths", [None, [7, 3, 7, 1, 5], [7, 7, 5, 3, 1]],
                         ids=["full", "lengths", "sorted-lengths"])
def test_paths_match_reference(path, reset_after, dtype, lengths, monkeypatch):
    """With lengths in decreasing order the fused loop multiplies only the rows still
    running; in any other order, every row."""
    monkeypatch.setattr(cpu, "WIDE_WORK", 0 if path == "wide" else 1 << 62)
    g = torch.Generator().manual_seed(0)
    steps, batch, hidden = 7, 5, 6
    gi, h0, w, b = core_inputs(g, steps, batch, hidden, dtype)
    lens = None if lengths is None else torch.tensor(lengths)
    ref = reference.core(gi, h0, w, b, lens, reset_after)
    out = cpu.core(gi, h0, w, b, lens, reset_after)
    dout = torch.randn(ref.shape, generator=g, dtype=dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert_close("out", ref, out, tol)
    for name, r, o in zip(("dgi", "dh0", "dw_hh", "db_hh"),
                          torch.autograd.grad(ref, (gi, h0, w, b), dout),
                          torch.autograd.grad(out, (gi, h0, w, b), dout), strict=True):
        assert_close(name, r, o, tol, rtol=tol)


def test_the_wide_path_is_taken_for_large_steps(monkeypatch):
    """Only when the fused loop's GEMM is SciPy's (torch's BLAS not found)."""
    assert cpu.wide(64, 256) == (_cpu_kernels.GEMM_FROM == "scipy")
    monkeypatch.setattr(cpu, "WIDE_WORK", 1 << 20)
    calls = []
    monkeypatch.setattr(cpu, "_fwd_wide", lambda *a: calls.append(a))
    assert cpu.wide(64, 256) and not cpu.wide(1, 256)
    with torch.no_grad():
        cpu.core(torch.randn(2, 64, 768), torch.zeros(64, 256), torch.randn(768, 256), None,
                 None, True)
    assert len(calls) == 1


@pytest.mark.parametrize("path", ["fused", "wide"])
@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("batch, lengths", [(1, None), (1, [4]), (5, None),
                                            (5, [7, 3, 7, 1, 5]), (5, [7, 6, 6, 2, 1])],
                         ids=["B1", "B1-lengths", "B5", "B5-lengths", "B5-sorted"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_inference_path_matches_reference(path, reset_after, dtype, batch, lengths, bias,
                                          monkeypatch):
    """Without gradients the core skips autograd (``cpu._infer``); batch 1 reads W_hh as
    stored, larger batches transposed. Inputs that require grad, under no_grad, too."""
    monkeypatch.setattr(cpu, "WIDE_WORK", 0 if path == "wide" else 1 << 62)
    g = torch.Generator().manual_seed(1)
    steps, hidden = 7, 6
    gi, h0, w, b = core_inputs(g, steps, batch, hidden, dtype)
    b = b if bias else None
    lens = None if lengths is None else torch.tensor(lengths)
    with torch.no_grad():
        ref = reference.core(gi, h0, w, b, lens, reset_after)
        out = cpu.core(gi, h0, w, b, lens, reset_after)
    assert not out.requires_grad
    assert_close("out", ref, out, 1e-12 if dtype == torch.float64 else 1e-5)


def test_gemm_runs_on_torchs_blas_or_falls_back_to_scipys(monkeypatch):
    """The fused loops' GEMM and batch-1 GEMV: torch's own BLAS where libtorch_cpu exports
    it, else SciPy's; both give the product (float32 and float64, odd shapes)."""
    import numpy as np

    if sys.platform == "linux" and platform.machine() == "x86_64":
        assert _cpu_kernels.GEMM_FROM == "torch"  # the x86 Linux wheels export MKL's
    g = np.random.default_rng(0)
    for dtype, tol in ((np.float32, 1e-4), (np.float64, 1e-12)):
        a, w = g.standard_normal((5, 7)).astype(dtype), g.standard_normal((7, 9)).astype(dtype)
        out = np.full((5, 9), np.nan, dtype=dtype)
        _cpu_kernels._gemm(a, w, out, 0.0)  # beta 0: out is only written (NaN gone)
        np.testing.assert_allclose(out, a @ w, rtol=tol, atol=tol)
        _cpu_kernels._gemm(a, w, out, 1.0)  # beta 1: accumulates
        np.testing.assert_allclose(out, 2 * (a @ w), rtol=tol, atol=tol)
        for n_out in (9, _cpu_kernels.GEMV_BLAS_MIN // 64 + 1):  # ours, then BLAS's GEMV
            rows, x = g.standard_normal((n_out, 64)).astype(dtype), a[:1, :1].repeat(64, 1)
            y = np.full((1, n_out), np.nan, dtype=dtype)
            _cpu_kernels._gemv(rows, x, y)
            np.testing.assert_allclose(y, x @ rows.T, rtol=tol, atol=tol * 10)
    import ctypes

    from numba.core.extending import get_cython_function_address

    for kind in ("sgemm", "dgemm", "sgemv", "dgemv"):
        assert _cpu_kernels._blas_works(
            get_cython_function_address("scipy.linalg.cython_blas", kind), kind)
    idle = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 13)(lambda *args: None)
    assert not _cpu_kernels._blas_works(ctypes.cast(idle, ctypes.c_void_p).value, "sgemm")
    idle_v = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 11)(lambda *args: None)
    assert not _cpu_kernels._blas_works(ctypes.cast(idle_v, ctypes.c_void_p).value, "dgemv")
    monkeypatch.setattr(torch, "__file__", "/nonexistent/torch/__init__.py")
    try:
        assert _cpu_kernels._register_gemm() == "scipy"
    finally:
        monkeypatch.undo()
        assert _cpu_kernels._register_gemm() == _cpu_kernels.GEMM_FROM


def _bidirectional_in_child(queue):
    gru = flashgru.GRU(3, 4, bidirectional=True, backend="cpu")
    with torch.no_grad():
        queue.put((tuple(gru(torch.randn(5, 1, 3))[0].shape),  # directions side by side
                   tuple(gru(torch.randn(5, 3, 3))[0].shape)))  # rows over the threads


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_both_directions_side_by_side_and_after_a_fork(monkeypatch):
    """A bidirectional layer at batch 1 runs its directions side by side (the second on a
    worker thread): same numbers as one at a time, and a forked child, where the parent's
    worker threads do not exist, makes its own instead of waiting forever."""
    from flashgru.backends import BACKENDS

    torch.manual_seed(0)
    gru = flashgru.GRU(3, 4, 2, bidirectional=True, dtype=torch.float64, backend="cpu")
    ref = flashgru.GRU(3, 4, 2, bidirectional=True, dtype=torch.float64, backend="reference")
    ref.load_state_dict(gru.state_dict())
    assert BACKENDS["cpu"].pair is cpu.core_pair
    assert cpu.pairs(1, cpu.PAIR_MIN_STEPS) == (torch.get_num_threads() > 1)
    assert not cpu.pairs(1, cpu.PAIR_MIN_STEPS - 1)
    monkeypatch.setattr(cpu, "PAIR_MIN_STEPS", 2)  # these short calls too
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    together = []
    real = cpu._together
    monkeypatch.setattr(cpu, "_together",
                        lambda tasks, **kw: together.append(len(tasks)) or real(tasks, **kw))
    x = torch.randn(6, 1, 3, dtype=torch.float64, requires_grad=True)
    out, h_n = gru(x)
    ref_out, ref_h = ref(x)
    assert_close("out", ref_out, out, 1e-12)
    assert_close("h_n", ref_h, h_n, 1e-12)
    grads = torch.autograd.grad(out.sum() + h_n.sum(), (x, *gru.parameters()))
    ref_grads = torch.autograd.grad(ref_out.sum() + ref_h.sum(), (x, *ref.parameters()))
    for g, r in zip(grads, ref_grads, strict=True):
        assert_close("grad", r, g, 1e-12, rtol=1e-12)
    assert [n for n in together if n > 1] == [2] * 4  # 2 layers, forward and backward
    assert in_forked_child(_bidirectional_in_child) == ((5, 1, 8), (5, 3, 8))


@pytest.mark.parametrize("split", [False, True], ids=["rows-not-split", "rows-split"])
@pytest.mark.parametrize("batch", [1, 2, cpu.PAIR_MAX_BATCH + 1])
def test_directions_side_by_side_only_where_rows_do_not_split(batch, split, monkeypatch):
    """Side by side up to PAIR_MAX_BATCH rows where the rows do not go over the threads
    (batch 1, or without torch's OpenMP team); else one after the other."""
    monkeypatch.setattr(cpu, "_parts", lambda b: min(b, 2) if split else 1)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    side_by_side = batch == 1 or (not split and batch <= cpu.PAIR_MAX_BATCH)
    assert cpu.pairs(batch, cpu.PAIR_MIN_STEPS) == side_by_side
    assert not cpu.pairs(batch, cpu.PAIR_MIN_STEPS - 1)
    monkeypatch.setattr(cpu, "PAIR_MIN_STEPS", 5)  # the call below
    calls = []
    real = cpu._side_by_side
    monkeypatch.setattr(cpu, "_side_by_side", lambda *f: calls.append(1) or real(*f))
    gru = flashgru.GRU(3, 4, bidirectional=True, backend="cpu")
    ref = flashgru.GRU(3, 4, bidirectional=True, backend="reference")
    ref.load_state_dict(gru.state_dict())
    x = torch.randn(5, batch, 3)
    with torch.no_grad():
        assert_close("out", ref(x)[0], gru(x)[0], 1e-5)
    assert bool(calls) == side_by_side


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_batch_one_with_large_weights_takes_blas_gemv(reset_after, dtype):
    """At batch 1 from GEMV_BLAS_MIN weights the hidden product is BLAS's GEMV (H=256:
    3H × H = 196608), forward and backward against the reference."""
    assert 3 * 256 * 256 >= _cpu_kernels.GEMV_BLAS_MIN > 3 * 128 * 128
    g = torch.Generator().manual_seed(2)
    steps, hidden = 4, 256
    gi, h0, w, b = core_inputs(g, steps, 1, hidden, dtype)
    w = (w / 16).detach().requires_grad_()
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    with torch.no_grad():
        assert_close("out", reference.core(gi, h0, w, b, None, reset_after),
                     cpu.core(gi, h0, w, b, None, reset_after), tol)
    ref, out = (core(gi, h0, w, b, None, reset_after) for core in (reference.core, cpu.core))
    assert_close("out", ref, out, tol)
    for r, o in zip(torch.autograd.grad(ref.sum(), (gi, h0, w, b)),
                    torch.autograd.grad(out.sum(), (gi, h0, w, b)), strict=True):
        assert_close("grad", r, o, tol * 10, rtol=tol * 10)


def test_row_ranges_cover_the_batch_with_even_work():
    lengths = cpu.np.array([9, 9, 8, 5, 3, 2, 2, 1, 1, 1])
    for parts in range(1, 11):
        ranges = cpu._ranges(lengths, parts)
        assert len(ranges) == parts and ranges[0][0] == 0 and ranges[-1][1] == 10
        assert all(lo < hi for lo, hi in ranges)
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    work = [int(lengths[lo:hi].sum()) for lo, hi in cpu._ranges(lengths, 2)]
    assert work == [26, 15]  # rows 0-2 against 3-9: the closest cut to half of 41
    assert cpu._ranges(cpu.np.full(4, 5), 2) == [(0, 2), (2, 4)]


@pytest.mark.parametrize("parts", [2, 3])
@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("lengths", [None, [7, 3, 7, 1, 5], [7, 7, 5, 3, 1]],
                         ids=["full", "lengths", "sorted-lengths"])
def test_rows_over_threads_match_reference(parts, reset_after, dtype, lengths, monkeypatch):
    """Each part's time loop on its own thread writes only its rows: outputs, every
    gradient and the inference path against the reference, with the call split into
    ``parts`` row ranges (whatever this machine's thread count)."""
    monkeypatch.setattr(cpu, "_parts", lambda batch: min(parts, batch))
    monkeypatch.setattr(cpu, "SPLIT_MIN_WORK", 0)  # these sizes split too
    seen = []
    real = cpu._in_parts
    monkeypatch.setattr(cpu, "_in_parts", lambda run, ranges: seen.append(ranges) or real(
        run, ranges))
    g = torch.Generator().manual_seed(1)
    steps, batch, hidden = 7, 5, 6
    gi, h0, w, b = core_inputs(g, steps, batch, hidden, dtype)
    lens = None if lengths is None else torch.tensor(lengths)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    check_core(cpu.core, reference.core, g, gi, h0, w, b, lens, reset_after, tol, tol * 10)
    assert [len(r) for r in seen] == [parts] * 3  # forward, backward, inference


def test_rows_over_threads_by_default_and_mkl_restored(monkeypatch):
    """With torch's OpenMP team and MKL's per-thread control (torch's Linux x86 wheels) a
    call of several rows splits over torch's threads, the calling thread's MKL setting is
    left as it was, and torch set to one thread means one part."""
    if cpu._OPENMP is None or cpu._MKL_LOCAL is None:
        assert cpu._parts(8) == 1
        return
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert (cpu._parts(8), cpu.pairs(1, 64)) == (1, False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert (cpu._parts(1), cpu._parts(8), cpu.pairs(1, 64)) == (1, 2, True)
    before = cpu._MKL_LOCAL(0)  # 0: no setting of this thread's own
    x = torch.randn(5, 4, 3)
    gru = flashgru.GRU(3, 8, backend="cpu")
    with torch.no_grad():
        assert_close("out", flashgru.GRU.from_torch(gru.to_torch(), backend="reference")(x)[0],
                     gru(x)[0], 1e-5)
    assert cpu._MKL_LOCAL(before) == 0


def test_rows_split_only_from_enough_work(monkeypatch):
    """A call's rows split over the threads (``_parts``) from SPLIT_MIN_WORK multiply-adds
    of the hidden product on; a fixed ``parts`` is kept; an unsplit call is one part."""
    monkeypatch.setattr(cpu, "_parts", lambda batch: min(batch, 2))
    hidden = 128
    steps = -(-cpu.SPLIT_MIN_WORK // (16 * 3 * hidden * hidden))  # just enough at batch 16
    assert cpu._row_parts(16, steps, hidden, None) == 2
    assert cpu._row_parts(16, steps - 1, hidden, None) == 1
    assert cpu._row_parts(16, 1, hidden, 3) == 3
    seen = []
    real = cpu._in_parts
    monkeypatch.setattr(cpu, "_in_parts", lambda run, ranges: seen.append(ranges) or real(
        run, ranges))
    g = torch.Generator().manual_seed(5)
    for t in (steps - 1, steps):
        gi, h0, w, b = (x.detach() for x in core_inputs(g, t, 16, hidden, torch.float32))
        with torch.no_grad():
            assert_close("out", reference.core(gi, h0, w / hidden, b, None, True),
                         cpu.core(gi, h0, w / hidden, b, None, True), 1e-5)
    assert [len(r) for r in seen] == [2]  # the longer call only


def test_a_failing_part_raises_after_every_part_ends():
    done = []

    def run(lo, hi):
        if lo:
            raise ValueError("part failed")
        done.append((lo, hi))

    with pytest.raises(ValueError, match="part failed"):
        cpu._in_parts(run, [(0, 1), (1, 2), (2, 3)])
    assert done == [(0, 1)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_weights_transposed_by_mkl_or_torch(dtype, monkeypatch):
    """W_hh transposed once per call (batch > 1) is the exact transpose, both ways: MKL's
    omatcopy where torch's library has it (torch's x86 wheels), else torch's copy; and
    each half of the reset_after=False split."""
    w = torch.randn(3 * 6, 6, dtype=dtype)
    for table in (cpu._MKL_TRANSPOSE, {}):
        monkeypatch.setattr(cpu, "_MKL_TRANSPOSE", table)
        assert torch.equal(torch.from_numpy(cpu._transposed(w)), w.t())
        rz, n = cpu._weights(w, False, batch=4, steps=1)
        assert torch.equal(torch.from_numpy(rz), w[:12].t())
        assert torch.equal(torch.from_numpy(n), w[12:].t())
        long = cpu.BATCH1_TRANSPOSED_STEPS
        (small,) = cpu._weights(w, True, batch=1, steps=long)  # H ≤ 64: transposed
        assert torch.equal(torch.from_numpy(small), w.t())
        (short,) = cpu._weights(w, True, batch=1, steps=long - 1)  # not worth it
        assert torch.equal(torch.from_numpy(short), w)
        big = torch.randn(3 * 65, 65, dtype=dtype)
        (stored,) = cpu._weights(big, True, batch=1, steps=long)
        assert torch.equal(torch.from_numpy(stored), big)


@pytest.mark.parametrize("hidden", [64, 65], ids=["transposed", "stored"])
@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
def test_batch_one_either_weight_layout_matches_reference(hidden, reset_after):
    """At batch 1 the forward reads W_hhᵀ up to H=64 and W_hh as stored above (dot
    products per row): both against the reference, forward, backward and inference."""
    assert (3 * hidden * hidden <= cpu.BATCH1_TRANSPOSED_MAX) == (hidden == 64)
    g = torch.Generator().manual_seed(3)
    steps, dtype = cpu.BATCH1_TRANSPOSED_STEPS, torch.float64
    gi, h0, w, b = core_inputs(g, steps, 1, hidden, dtype)
    w = (w / hidden**0.5).detach().requires_grad_()  # a stable recurrence over 64 steps
    with torch.no_grad():
        assert_close("out", reference.core(gi, h0, w, b, None, reset_after),
                     cpu.core(gi, h0, w, b, None, reset_after), 1e-12)
    ref, out = (core(gi, h0, w, b, None, reset_after) for core in (reference.core, cpu.core))
    assert_close("out", ref, out, 1e-12)
    for r, o in zip(torch.autograd.grad(ref.sum(), (gi, h0, w, b)),
                    torch.autograd.grad(out.sum(), (gi, h0, w, b)), strict=True):
        assert_close("grad", r, o, 1e-10, rtol=1e-11)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("length", [64, 40, 1], ids=["full", "shorter", "one"])
def test_one_row_loop_matches_reference(dtype, length):
    """One row with W_hhᵀ (batch 1, H ≤ 64, from BATCH1_TRANSPOSED_STEPS steps) runs its
    own loop (``_fwd_after_row``): output, gradients and inference against the reference,
    with lengths shorter than the call (the steps past them 0)."""
    g = torch.Generator().manual_seed(5)
    steps, hidden = cpu.BATCH1_TRANSPOSED_STEPS, 48
    gi, h0, w, b = core_inputs(g, steps, 1, hidden, dtype)
    w = (w / hidden**0.5).detach().requires_grad_()
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    check_core(cpu.core, reference.core, g, gi, h0, w, b, torch.tensor([length]), True, tol,
               1e-10 if dtype == torch.float64 else 1e-4)
    out = torch.full((steps, 1, hidden), float("nan"), dtype=dtype).numpy()
    saved = [torch.full((steps, 1, hidden), float("nan"), dtype=dtype).numpy()
             for _ in range(4)]
    (wt,) = cpu._weights(w, True, 1, steps)
    assert wt.shape == (hidden, 3 * hidden)
    lens = torch.tensor([length]).numpy()
    cpu._fwd_after(*(t.detach().numpy() for t in (gi, h0)), wt, b.detach().numpy(), lens,
                   out, *saved, 0, 1)
    for kept in (out, *saved):
        assert not torch.from_numpy(kept).isnan().any()
        assert not torch.from_numpy(kept[length:]).any()


@pytest.mark.parametrize("save", [True, False], ids=["training", "inference"])
def test_one_row_ranges_with_blas_products(save):
    """Rows split one per part (batch 2 over 2 parts) read W_hhᵀ, and at H=224 (above
    GEMV_BLAS_MIN weights) the one-row loop takes BLAS's GEMV: the second part's row is
    row 1 of the batch; outputs and saved gates as the reference's, 0 past each length."""
    g = torch.Generator().manual_seed(7)
    steps, hidden, dtype = 6, 224, torch.float64
    assert 3 * hidden * hidden >= _cpu_kernels.GEMV_BLAS_MIN
    gi, h0, w, b = (t.detach() for t in core_inputs(g, steps, 2, hidden, dtype))
    w = w / hidden**0.5
    lengths = torch.tensor([6, 4])
    out, saved = cpu._fwd(gi, h0, w, b, lengths, True, save, parts=2)
    assert_close("out", reference.core(gi, h0, w, b, lengths, True), out, 1e-12)
    if save:
        trace = reference.core(gi, h0, w, b, lengths, True, return_gates=True)[1]
        for name, ref, got in zip("rzn", trace, saved, strict=False):
            assert_close(name, ref, got, 1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_one_row_inference_at_raw_addresses(dtype, monkeypatch):
    """Inference of one row with W_hhᵀ runs one kernel call at raw addresses
    (``_infer_row``, W_hh transposed inside) where every tensor is plain and contiguous,
    with or without b_hh; a strided input takes the general path. All as the reference."""
    g = torch.Generator().manual_seed(6)
    steps, hidden = cpu.BATCH1_TRANSPOSED_STEPS + 3, 40
    gi, h0, w, b = (t.detach() for t in core_inputs(g, steps, 1, hidden, dtype))
    w = w / hidden**0.5
    calls = []
    raw = cpu._infer_row
    monkeypatch.setattr(cpu, "_infer_row", lambda *args: calls.append(args) or raw(*args))
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for bias in (b, None):
        assert_close("out", reference.core(gi, h0, w, bias, None, True),
                     cpu.core(gi, h0, w, bias, None, True), tol)
    assert len(calls) == 2 and calls[1][3] == 0  # (no bias: address 0)
    with torch.no_grad():  # both directions side by side pass parts=1: the same call
        assert_close("out", reference.core(gi, h0, w, b, None, True),
                     cpu._infer(gi, h0, w, b, None, True, parts=1), tol)
    assert len(calls) == 3
    wide = torch.randn(steps, 1, 6 * hidden, generator=g, dtype=dtype)[..., ::2]
    assert_close("out", reference.core(wide, h0, w, b, None, True),
                 cpu.core(wide, h0, w, b, None, True), tol)
    assert len(calls) == 3


def test_calls_from_several_python_threads_at_once(monkeypatch):
    """Three Python threads, each splitting its calls over two parts (each its own
    OpenMP team where torch's is at hand): every result as the reference's."""
    import threading

    monkeypatch.setattr(cpu, "_parts", lambda batch: min(batch, 2))
    monkeypatch.setattr(cpu, "SPLIT_MIN_WORK", 0)
    ref = flashgru.GRU(3, 5, dtype=torch.float64, backend="reference")
    gru = flashgru.GRU(3, 5, dtype=torch.float64, backend="cpu")
    gru.load_state_dict(ref.state_dict())
    errors = []

    def work(seed):
        try:
            x = torch.randn(6, 4, 3, dtype=torch.float64,
                            generator=torch.Generator().manual_seed(seed))
            for _ in range(10):
                assert_close("out", ref(x)[0], gru(x)[0], 1e-12)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads) and not errors, errors
