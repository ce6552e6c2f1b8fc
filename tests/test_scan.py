"""flashgru.scan: every implementation of both scans against the sequential loop (float64
to 1e-12, float32 to rounding), forward and reverse, transposed, awkward T; gradients by
gradcheck and against the loop's; the Triton kernels (in the interpreter without a GPU)
with every output buffer poisoned with NaN before launch."""

import contextlib
import math
import types

import pytest
import torch
from helpers import assert_close
from torch.autograd import gradcheck, gradgradcheck

from flashgru import scan
from flashgru.scan import scan_dense, scan_diag

HAS_TRITON = scan.triton is not None
TRITON_RUNS = HAS_TRITON and (torch.cuda.is_available() or
                              __import__("os").environ.get("TRITON_INTERPRET") == "1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(not TRITON_RUNS,
                                  reason="needs Triton, and a GPU or TRITON_INTERPRET=1")
TOL = {torch.float64: 1e-12, torch.float32: 2e-5}
STEPS = [0, 1, 5, 37, 131]
SHAPES = [(1, 1), (3, 4), (3, 13)]  # (B, H)


@pytest.fixture(autouse=True)
def poisoned(monkeypatch):
    """Every buffer a kernel writes starts as NaN, so an unwritten element fails."""
    def empty(*shape, dtype, device):
        return torch.full(shape, math.nan, dtype=dtype, device=device)

    monkeypatch.setattr(scan, "_empty", empty)


def _diag_problem(steps, batch, hidden, dtype, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(steps, batch, hidden, generator=g, dtype=torch.float64) * 1.2 - 0.1
    b = torch.randn(steps, batch, hidden, generator=g, dtype=torch.float64)
    h0 = torch.randn(batch, hidden, generator=g, dtype=torch.float64)
    return [x.to(dtype=dtype, device=device) for x in (a, b, h0)]


def _contractive(steps, batch, hidden, generator):
    """Random J with spectral norm 0.9, so the states stay bounded over any T."""
    j = torch.randn(steps, batch, hidden, hidden, generator=generator, dtype=torch.float64)
    return 0.9 * j / torch.linalg.matrix_norm(j, ord=2)[..., None, None]


def _dense_problem(steps, batch, hidden, dtype, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    j = _contractive(steps, batch, hidden, g)
    c = torch.randn(steps, batch, hidden, generator=g, dtype=torch.float64)
    h0 = torch.randn(batch, hidden, generator=g, dtype=torch.float64)
    return [x.to(dtype=dtype, device=device) for x in (j, c, h0)]


def _ref(fn, args, **kw):
    """The sequential loop in float64 on the same (rounded) inputs."""
    return fn(*(x.double() for x in args), impl="sequential", **kw)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("steps", STEPS)
def test_diag_torch(steps, shape, reverse, dtype):
    args = _diag_problem(steps, *shape, dtype)
    got = scan_diag(*args, reverse=reverse, impl="torch")
    ref = _ref(scan_diag, args, reverse=reverse)
    assert_close("h", ref, got.double(), TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("transpose", [False, True], ids=["J", "Jt"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("steps", STEPS)
def test_dense_torch(steps, shape, reverse, transpose, dtype):
    args = _dense_problem(steps, *shape, dtype)
    got = scan_dense(*args, reverse=reverse, transpose=transpose, impl="torch")
    ref = _ref(scan_dense, args, reverse=reverse, transpose=transpose)
    assert_close("h", ref, got.double(), TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 40])
def test_torch_chunk_sizes(chunk):
    """Chunks of every kind: one step, ones that don't divide T, larger than T."""
    a, b, h0 = _diag_problem(37, 2, 3, torch.float64)
    assert_close("diag", _diag_seq(a, b, h0), scan._diag_torch(a, b, h0, False, chunk), 1e-12)
    want = _diag_seq(a.flip(0), b.flip(0), h0).flip(0)
    assert_close("diag reverse", want, scan._diag_torch(a, b, h0, True, chunk), 1e-12)
    j, c, g0 = _dense_problem(37, 2, 3, torch.float64)
    assert_close("dense", scan._dense_sequential(j, c, g0), scan._dense_torch(j, c, g0, chunk),
                 1e-12)


def _diag_seq(a, b, h0):
    return scan._diag_sequential(a, b, h0)


def test_matches_a_plain_loop():
    """The ground truth itself, against the recurrence written out."""
    a, b, h0 = _diag_problem(4, 2, 3, torch.float64)
    h, want = h0, []
    for t in range(4):
        h = a[t] * h + b[t]
        want.append(h)
    assert_close("fwd", torch.stack(want), scan_diag(a, b, h0, impl="sequential"), 0.0)
    h, want = h0, []
    for t in reversed(range(4)):
        h = a[t] * h + b[t]
        want.insert(0, h)
    assert_close("rev", torch.stack(want), scan_diag(a, b, h0, reverse=True,
                                                      impl="sequential"), 0.0)
    j, c, g0 = _dense_problem(3, 2, 3, torch.float64)
    want = j[0] @ g0.unsqueeze(-1)
    assert_close("dense", want.squeeze(-1) + c[0], scan_dense(j, c, g0, impl="sequential")[0], 0.0)
    want = j[0].transpose(-1, -2) @ g0.unsqueeze(-1)
    assert_close("dense_t", want.squeeze(-1) + c[0],
                 scan_dense(j, c, g0, transpose=True, impl="sequential")[0], 0.0)


@pytest.mark.parametrize("impl", ["sequential", "torch"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_gradcheck(impl, reverse):
    a, b, h0 = (x.requires_grad_() for x in _diag_problem(6, 2, 3, torch.float64))
    fn = lambda *x: scan_diag(*x, reverse=reverse, impl=impl)  # noqa: E731
    assert gradcheck(fn, (a, b, h0))
    assert gradgradcheck(fn, (a, b, h0))
    j, c, g0 = (x.requires_grad_() for x in _dense_problem(5, 2, 3, torch.float64))
    for transpose in (False, True):
        assert gradcheck(lambda *x, tr=transpose: scan_dense(*x, reverse=reverse,
                                                             transpose=tr, impl=impl),
                         (j, c, g0))


def test_gradients_of_empty_sequence():
    a, b, h0 = (x.requires_grad_() for x in _diag_problem(0, 2, 3, torch.float64))
    scan_diag(a, b, h0).sum().backward()
    assert h0.grad.abs().sum() == 0 and a.grad.shape == a.shape


def test_low_precision_computes_in_float32():
    args = _diag_problem(37, 3, 13, torch.bfloat16)
    got = scan_diag(*args, impl="torch")
    assert got.dtype == torch.bfloat16
    assert_close("h", _ref(scan_diag, args), got.double(), 0.05, rtol=0.01)


def test_argument_errors():
    a, b, h0 = _diag_problem(3, 2, 4, torch.float64)
    with pytest.raises(ValueError, match=r"b should have shape \(3, 2, 4\)"):
        scan_diag(a, b[:2], h0)
    with pytest.raises(ValueError, match=r"h0 should have shape \(2, 4\)"):
        scan_diag(a, b, h0[:1])
    with pytest.raises(ValueError, match="expected torch.float64"):
        scan_diag(a, b.float(), h0)
    with pytest.raises(ValueError, match="a should be"):
        scan_diag(a[0], b[0], h0)
    with pytest.raises(ValueError, match="impl must be one of"):
        scan_diag(a, b, h0, impl="fast")
    with pytest.raises(TypeError, match="floating-point"):
        scan_diag(a.long(), b.long(), h0.long())
    j, c, g0 = _dense_problem(3, 2, 4, torch.float64)
    with pytest.raises(ValueError, match=r"J should have shape \(3, 2, 4, 4\)"):
        scan_dense(j[..., :3], c, g0)


@needs_triton
def test_triton_refuses_cpu_tensors_outside_the_interpreter(monkeypatch):
    monkeypatch.setattr(scan, "INTERPRET", False)
    a, b, h0 = _diag_problem(3, 2, 4, torch.float64)
    with pytest.raises(ValueError, match="impl='triton' needs CUDA tensors"):
        scan_diag(a, b, h0, impl="triton")
    j, c, g0 = _dense_problem(3, 2, 4, torch.float64)
    with pytest.raises(ValueError, match="impl='triton' needs CUDA tensors"):
        scan_dense(j, c, g0, impl="triton")


def test_auto_rules():
    assert scan.choose_impl("auto", torch.device("cpu")) == "torch"
    want = "triton" if HAS_TRITON else "torch"
    assert scan.choose_impl("auto", torch.device("cuda"), 64) == want
    assert scan.choose_impl("auto", torch.device("cuda"), 256) == "torch"


# ---- Triton (interpreted on CPU without a GPU: small sizes) -------------------------------

TRITON_CASES = [(0, 2, 3), (1, 1, 1), (5, 3, 4), (37, 3, 13)]


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("case", TRITON_CASES, ids=str)
def test_diag_triton(case, reverse, dtype):
    args = _diag_problem(*case, dtype, device=DEVICE)
    got = scan_diag(*args, reverse=reverse, impl="triton")
    assert_close("h", _ref(scan_diag, args, reverse=reverse), got.double(),
                 TOL[dtype], rtol=TOL[dtype])


@needs_triton
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("split", [(4, 4, 8), (16, 8, 4)], ids=str)
def test_diag_triton_chunks(split, reverse):
    """Several chunks per sequence (two launches and a scan of the summaries, which with
    chunks of 4 recurses twice more), tiles shorter than the chunk, column blocks narrower
    than B·H."""
    a, b, h0 = _diag_problem(67, 2, 5, torch.float64, device=DEVICE)
    chunk, block_t, block_n = split
    got = scan._diag_triton(a, b, h0, reverse, chunk, block_t, block_n)
    assert_close("h", _ref(scan_diag, (a, b, h0), reverse=reverse), got, 1e-12)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("transpose", [False, True], ids=["J", "Jt"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("case", TRITON_CASES, ids=str)
def test_dense_triton(case, reverse, transpose, dtype):
    args = _dense_problem(*case, dtype, device=DEVICE)
    got = scan_dense(*args, reverse=reverse, transpose=transpose, impl="triton")
    ref = _ref(scan_dense, args, reverse=reverse, transpose=transpose)
    assert_close("h", ref, got.double(), TOL[dtype], rtol=TOL[dtype])


@needs_triton
@pytest.mark.parametrize("transpose", [False, True], ids=["J", "Jt"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("split", [(37, 2, 13, 5), (100, 1, 4, 16), (5, 1, 1, 2)], ids=str)
def test_dense_triton_chunks(split, reverse, transpose):
    """Several chunks per row: every chunk's map composed at once (tl.dot in fp32), the
    maps scanned, every chunk re-run from its start (T not a multiple of the chunk)."""
    *case, chunk = split
    args = _dense_problem(*case, torch.float32, device=DEVICE)
    got = scan._dense_triton(*args, reverse, transpose, chunk)
    ref = _ref(scan_dense, args, reverse=reverse, transpose=transpose)
    assert_close("h", ref, got.double(), 2e-5, rtol=2e-5)


def test_dense_triton_chunking_rule():
    assert scan._dense_chunk(32768, 1, torch.float32) == 181
    assert scan._dense_chunk(32768, 64, torch.float32) == 32768  # rows fill the GPU
    assert scan._dense_chunk(32768, 1, torch.float64) == 32768  # no fp64 tl.dot
    assert scan._dense_chunk(100, 1, torch.float32) == 100


def test_dense_triton_chunk_is_measured_once_per_shape(monkeypatch):
    """Where it can time (CUDA), the chunk is the fastest candidate, measured once per
    (length bucket, B, H, dtype, device, direction); elsewhere the rule's."""
    assert scan._chunk_candidates(32768, 1, torch.float32) == [16, 32, 64, 128, 181, 256]
    assert scan._chunk_candidates(100, 1, torch.float32) == [100]  # one chunk: no choice
    J, c, h0 = _dense_problem(300, 1, 4, torch.float32, device="cpu")
    assert scan._tuned_chunk(J, c, h0, False, False) == 17  # no CUDA: the rule
    timed = []

    def fake_time(J, c, h0, reverse, transpose, chunks):
        timed.extend(chunks)
        return {k: abs(k - 64) + 1.0 for k in chunks}

    monkeypatch.setattr(scan, "_CHUNKS", {})
    monkeypatch.setattr(scan, "_can_time", lambda c: True)
    monkeypatch.setattr(scan, "_time_chunks", fake_time)
    assert scan._tuned_chunk(J, c, h0, False, False) == 64
    assert timed == [16, 17, 32, 64, 128, 256]
    assert scan._tuned_chunk(J, c[:270], h0, False, False) == 64  # same bucket: not again
    assert len(timed) == 6
    scan._tuned_chunk(J, c, h0, True, False)  # another direction: measured
    assert len(timed) == 12
    monkeypatch.setattr(scan, "_can_time", lambda c: False)  # e.g. under graph capture:
    assert scan._tuned_chunk(J, c, h0, False, False) == 64  # the measured chunk, if any
    assert scan._tuned_chunk(J, c, h0, True, True) == 17  # else the rule
    monkeypatch.setattr(scan, "TUNE", False)
    assert scan._tuned_chunk(J, c, h0, False, True) == 17 and len(timed) == 12


def test_dense_triton_chunks_fit_the_grid():
    """CUDA launches at most 65535 programs on grid axis 1, where the dense scan puts its
    chunks: past 16 × 65535 steps the shorter candidates drop out."""
    steps = 16 * scan.MAX_CHUNKS + 1
    chunks = scan._chunk_candidates(steps, 1, torch.float32)
    assert chunks == [32, 64, 128, 256, 1023]  # 1023: the rule, ≈ √T
    assert all(-(-steps // c) <= scan.MAX_CHUNKS for c in chunks)
    assert scan._chunk_candidates(16 * scan.MAX_CHUNKS, 1, torch.float32)[0] == 16


@needs_triton
def test_dense_triton_lengthens_chunks_past_the_grid_limit(monkeypatch):
    """A chunk too short for the grid (forced here, with the limit lowered to 3) is
    lengthened: every launch within the limit, the same numbers."""
    grids = []

    class Recorded:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            grids.append(grid)
            return self.kernel[grid]

    for name in ("_dense_kernel", "_dense_summary_kernel"):
        monkeypatch.setattr(scan, name, Recorded(getattr(scan, name)))
    monkeypatch.setattr(scan, "MAX_CHUNKS", 3)
    args = _dense_problem(20, 2, 4, torch.float32, device=DEVICE)
    got = scan._dense_triton(*args, False, False, 2)
    assert_close("h", _ref(scan_dense, args), got.double(), 2e-5, rtol=2e-5)
    assert max(g[1] for g in grids) == 3 and (2, 3) in grids


@pytest.mark.parametrize("impl", ["torch", "sequential"] + (["triton"] if TRITON_RUNS else []))
def test_batched_gradients(impl):
    """Batched gradients (jacobian with vectorize=True: vmap over the backward) equal the
    one-at-a-time ones: the adjoint scans run the plain loop then, which vmap batches (the
    chunked scan's ops have no batching rule)."""
    for fn, problem in ((scan_diag, _diag_problem), (scan_dense, _dense_problem)):
        first, b, h0 = problem(7, 2, 3, torch.float64, device=DEVICE)
        for reverse in (False, True):
            def f(x, fn=fn, b=b, h0=h0, reverse=reverse):
                return fn(x, b, h0, reverse=reverse, impl=impl)
            want = torch.autograd.functional.jacobian(f, first)
            got = torch.autograd.functional.jacobian(f, first, vectorize=True)
            assert_close(f"{fn.__name__} reverse={reverse}", want, got, 1e-12)


@needs_triton
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_triton_gradients(reverse):
    """Backward through the kernels (the adjoint scans) against the loop's autograd."""
    g = torch.Generator().manual_seed(3)
    for fn, problem, kw in ((scan_diag, _diag_problem, {}),
                            (scan_dense, _dense_problem, {"transpose": True})):
        args = problem(9, 2, 5, torch.float64, device=DEVICE)
        ref_in = [x.clone().requires_grad_() for x in args]
        got_in = [x.clone().requires_grad_() for x in args]
        ref = fn(*ref_in, reverse=reverse, impl="sequential", **kw)
        got = fn(*got_in, reverse=reverse, impl="triton", **kw)
        dh = torch.randn(ref.shape, generator=g, dtype=torch.float64).to(DEVICE)
        ref_g = torch.autograd.grad(ref, ref_in, dh)
        got_g = torch.autograd.grad(got, got_in, dh)
        for name, r, x in zip(("d0", "d1", "dh0"), ref_g, got_g, strict=True):
            assert_close(f"{fn.__name__}.{name}", r, x, 1e-12)


@needs_triton
def test_triton_low_precision_storage():
    args = _diag_problem(37, 3, 13, torch.float16, device=DEVICE)
    got = scan_diag(*args, impl="triton")
    assert got.dtype == torch.float16
    assert_close("h", _ref(scan_diag, args), got.double(), 0.02, rtol=0.01)


@needs_triton
def test_dense_triton_refuses_large_hidden():
    j, c, g0 = _dense_problem(1, 1, scan.DENSE_TRITON_MAX_H + 1, torch.float32, device=DEVICE)
    with pytest.raises(ValueError, match="use impl='torch'"):
        scan_dense(j, c, g0, impl="triton")


def test_l2_eviction_writes_twice_the_cache(monkeypatch):
    """l2_eviction: none off CUDA; on CUDA a callable that writes zeros over a buffer of
    twice the card's L2, or none where the card has no room for it (stand-ins for the
    card's properties and its memory)."""
    assert scan.l2_eviction(torch.device("cpu")) is None
    made, empty = [], torch.empty

    def on_card(size, dtype, device):
        made.append((size, dtype, device))
        return empty(size, dtype=dtype).fill_(1)

    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: types.SimpleNamespace(L2_cache_size=1000))
    monkeypatch.setattr(torch, "empty", on_card)
    evict = scan.l2_eviction(torch.device("cuda"))
    assert made == [(2000, torch.int8, torch.device("cuda"))]
    buffer = evict()
    assert buffer.numel() == 2000 and not buffer.any()

    def full(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("no room")

    monkeypatch.setattr(torch, "empty", full)  # (no room for it: timed warm, not failed)
    assert scan.l2_eviction(torch.device("cuda")) is None


def test_time_interleaved_on_cuda_events(monkeypatch):
    """time_interleaved's CUDA path, with stand-in events on a fake clock: each round is
    queued whole after one untimed call, each run's time is the least over the rounds,
    and the host waits once a round, on the last event."""
    clock, calls, waits = [0.0], [], []

    class Event:
        def __init__(self, enable_timing):
            assert enable_timing

        def record(self):
            self.at = clock[0]

        def elapsed_time(self, other):  # milliseconds, as CUDA events
            return (other.at - self.at) * 1e3

        def synchronize(self):
            waits.append(self.at)

    def run(name, seconds):
        def call():
            calls.append(name)
            clock[0] += seconds[len([c for c in calls if c == name]) % len(seconds)]
        return call

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(scan, "on_device", lambda device: contextlib.nullcontext())
    runs = {"a": run("a", [2.0, 3.0]), "b": run("b", [1.0, 5.0, 4.0])}
    times = scan.time_interleaved(runs, torch.device("cuda"), rounds=3)
    assert calls == ["a", "a", "b"] * 3  # (the untimed call, then the round)
    assert times == {"a": 2.0, "b": 1.0}
    assert len(waits) == 3

    def evict():  # (a long one: outside the timings, it changes none)
        calls.append("evict")
        clock[0] += 100.0

    calls.clear()
    times = scan.time_interleaved(runs, torch.device("cuda"), rounds=3, before=evict)
    assert calls == ["a", "evict", "a", "evict", "b"] * 3
    assert times == {"a": 2.0, "b": 1.0}
