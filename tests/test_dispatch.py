"""The dispatch point: its rules, its reasons and its errors."""

import functools

import pytest
import torch
from helpers import BACKENDS as CPU_BACKENDS
from helpers import assert_close

import flashgru
from flashgru import backends
from flashgru.backends import BACKENDS, Backend, reference

CPU_FUSED = BACKENDS["cpu"].missing() is None


def test_auto_rules(monkeypatch):
    from flashgru.backends import cpu

    monkeypatch.setattr(cpu, "_parts", lambda batch: 1)  # rows not split over threads
    fused = "cpu" if CPU_FUSED else None
    for reset_after, fallback in ((False, "reference"), (True, "torch")):
        for dtype in (torch.float32, torch.float64):
            choice = flashgru.select_backend("auto", reset_after=reset_after, dtype=dtype)
            assert choice.name == (fused or fallback), choice
        choice = flashgru.select_backend("auto", reset_after=reset_after, dtype=torch.bfloat16)
        assert choice.name == fallback, choice
    assert "reset_after=False" in flashgru.select_backend(
        "auto", reset_after=False, dtype=torch.bfloat16).reason
    gpu = "triton" if BACKENDS["triton"].missing() is None else None
    assert flashgru.select_backend("auto", reset_after=False, device="cuda").name == (
        gpu or "reference")
    # a large batch × hidden stays on torch's kernels for torch's formulation only
    assert flashgru.select_backend("auto", reset_after=True, batch=128, hidden=512).name == (
        "torch")
    assert flashgru.select_backend("auto", reset_after=True, batch=32769).name == "torch"
    steps = backends.CPU_MIN_STEPS
    assert flashgru.select_backend("auto", reset_after=True, batch=64, hidden=512,
                                   steps=steps).name == (fused or "torch")
    assert flashgru.select_backend("auto", reset_after=True, batch=17, hidden=1,
                                   steps=steps).name == (fused or "torch")
    assert flashgru.select_backend("auto", reset_after=False, batch=128, hidden=512).name == (
        fused or "reference")
    monkeypatch.setattr(cpu, "_parts", lambda batch: min(batch, 2))  # split over 2 threads
    for batch, hidden, name in ((128, 512, fused), (256, 512, fused), (257, 512, "torch"),
                                (64, 1024, "torch")):
        assert flashgru.select_backend("auto", reset_after=True, batch=batch, hidden=hidden,
                                       steps=steps).name == (name or "torch")
    assert "cuDNN" in flashgru.select_backend("auto", device="cuda", steps=512).reason
    long = flashgru.select_backend("auto", device="cuda", steps=65536, hidden=128)
    if gpu:
        assert long.name == "triton" and "65536" in long.reason
    else:
        assert long.name == "torch" and "native CUDA" in long.reason
    assert "native" not in flashgru.select_backend("auto", device="cuda", steps=65535).reason


def test_requested_backend_is_honoured_or_refused():
    assert flashgru.select_backend("reference", reset_after=True) == ("reference", "requested")
    with pytest.raises(ValueError, match="backend 'torch' runs only reset_after=True"):
        flashgru.select_backend("torch", reset_after=False)
    with pytest.raises(ValueError, match="unknown backend 'cudnn'"):
        flashgru.select_backend("cudnn")


def test_auto_falls_back_when_numba_is_missing(monkeypatch):
    missing = Backend("cpu", "core", reference.core, True, devices=("cpu",),
                      missing=lambda: "it needs numba and SciPy: pip install 'flashgru[cpu]'")
    monkeypatch.setitem(BACKENDS, "cpu", missing)
    assert flashgru.select_backend("auto", reset_after=True).name == "torch"
    assert flashgru.select_backend("auto", reset_after=False).name == "reference"
    with pytest.raises(flashgru.BackendUnavailableError, match=r"flashgru\[cpu\]"):
        flashgru.GRU(3, 4, backend="cpu")


def test_auto_on_cuda_with_and_without_triton(monkeypatch):
    """Where cuDNN is weak or has no kernel, auto takes the Triton kernels; without Triton
    (or a GPU) it falls back to torch's and the reference."""
    monkeypatch.setitem(BACKENDS, "triton", Backend(
        "triton", "core", reference.core, True, devices=("cuda",), dtypes=(torch.float32,)))
    pick = functools.partial(flashgru.select_backend, "auto", device="cuda", steps=512)
    assert pick(hidden=256).name == "triton" and "hidden 256" in pick(hidden=256).reason
    # calls of fewer than TRITON_MIN_STEPS steps stay on cuDNN, whose call starts faster;
    # the paper's formulation (cuDNN has none) stays on the Triton kernels
    for steps in range(1, backends.TRITON_MIN_STEPS):
        for kind in (dict(hidden=1024), dict(hidden=512, batch=16, grad=True)):
            short = pick(steps=steps, **kind)
            assert short.name == "torch" and f"{steps} step" in short.reason, (steps, kind)
        assert pick(steps=steps, hidden=1024, reset_after=False).name == "triton"
    assert pick(steps=backends.TRITON_MIN_STEPS, hidden=256).name == "triton"
    assert pick(hidden=128).name == "torch"
    assert pick(hidden=128, steps=65536).name == "triton"
    # one long sequence with small H: the parallel-in-time solver
    long = pick(hidden=64, steps=16384)
    assert long.name == "parallel" and "16384 steps" in long.reason
    assert pick(hidden=32, steps=65536).name == "parallel"
    assert pick(hidden=64, steps=65536).name == "parallel"  # 1 GiB of Jacobians
    assert pick(hidden=64, steps=65537).name == "triton"  # more: sequential, any length
    assert pick(hidden=32, steps=1 << 18).name == "parallel"
    for other in (dict(steps=16383), dict(batch=2), dict(hidden=65),
                  dict(reset_after=False), dict(dtype=torch.float64)):
        assert pick(**{"hidden": 64, "steps": 16384, **other}).name != "parallel", other
    assert pick(hidden=64, steps=16384, device="cpu").name != "parallel"
    # modes it was not measured in (or cannot run in) keep the sequential kernels
    with torch.autocast("cpu"):
        assert pick(hidden=64, steps=16384).name == "torch"  # cuDNN
    tf32 = torch.backends.cuda.matmul.allow_tf32  # (a property: monkeypatch can't undo it)
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        assert pick(hidden=64, steps=16384).name == "torch"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    assert pick(hidden=64, reset_after=False).name == "triton"
    assert pick(hidden=64, dtype=torch.bfloat16).name == "torch"  # a dtype it does not run
    assert pick(hidden=512, dtype=torch.float64).name == "torch"
    assert pick(hidden=512, device="cpu").name != "triton"
    # fp32 training at batch 9-16, H > 512: the Triton backward measured slower where its
    # split can't keep W_hhᵀ resident (above H=1024 on 132 SMs, H=1024 on 108)
    class Props:
        multi_processor_count = 132

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # nothing to size it on:
    assert pick(hidden=1024, batch=16, grad=True).name == "torch"  # as measured unresident
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props)
    assert pick(hidden=1024, batch=16, grad=True).name == "triton"
    assert pick(hidden=2048, batch=16).name == "triton"
    slow = pick(hidden=2048, batch=16, grad=True)
    assert slow.name == "torch" and "backward" in slow.reason
    Props.multi_processor_count = 108
    assert pick(hidden=1024, batch=16, grad=True).name == "torch"
    assert pick(hidden=512, batch=16, grad=True).name == "triton"
    assert pick(hidden=1024, batch=8, grad=True).name == "triton"  # (4 chunks of 256 here)
    assert pick(hidden=1024, batch=16, grad=True, steps=65536).name == "triton"
    assert pick(hidden=1024, batch=16, grad=True, reset_after=False).name == "triton"
    # batch 5-8 above H=1024: the default split streams W_hh through the broadcast
    # product in more than four chunks of K (its tiles won't fit in registers), slower
    # than cuDNN: cuDNN, but for the lengths and the formulation it lacks
    Props.multi_processor_count = 132
    for batch, hidden in [(5, 1100), (8, 1025), (8, 2048), (6, 2048)]:
        for grad in (False, True):
            got = pick(hidden=hidden, batch=batch, grad=grad)
            assert got.name == "torch" and "streams W_hh" in got.reason, (batch, hidden)
        assert pick(hidden=hidden, batch=batch, steps=65536).name == "triton"
        assert pick(hidden=hidden, batch=batch, reset_after=False).name == "triton"
    for batch, hidden in [(4, 1024), (8, 512), (8, 528), (8, 640), (5, 1024), (8, 1024),
                          (2, 4096), (1, 8192), (9, 1024), (4, 2048)]:
        assert pick(hidden=hidden, batch=batch).name == "triton", (batch, hidden)
    assert "streams" not in pick(hidden=8449, batch=8).reason  # (past the kernels' limit)
    from flashgru.backends import _streamed_split  # (fp64 runs other splits: not it)
    cuda = torch.device("cuda")
    assert _streamed_split(8, 2048, cuda, torch.float32)
    assert _streamed_split(8, 2048, cuda, torch.bfloat16)
    assert not _streamed_split(8, 1024, cuda, torch.float32)  # (resident, chunked)
    assert not _streamed_split(8, 2048, cuda, torch.float64)
    assert not _streamed_split(4, 2048, cuda, torch.float32)  # (batch 5-8 only)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # (132 SMs assumed)
    assert pick(hidden=2048, batch=8).name == "torch"
    assert pick(hidden=1024, batch=8).name == "triton"
    assert pick(hidden=2048, batch=4).name == "triton"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    Props.multi_processor_count = 108
    # hidden sizes the kernels can't hold at once (64 units × 108 SMs): torch / reference
    assert pick(hidden=6912, batch=32).name == "triton"
    assert pick(hidden=6913, batch=32).name == "torch"
    assert pick(hidden=6913, reset_after=False).name == "reference"
    assert pick(hidden=6913, steps=65536).name == "torch"
    monkeypatch.setitem(BACKENDS, "triton", Backend(
        "triton", "core", reference.core, True, devices=("cuda",),
        dtypes=(torch.float32, torch.bfloat16)))
    bf16 = functools.partial(pick, dtype=torch.bfloat16, hidden=1024)
    assert bf16(batch=128).name == "triton"
    assert bf16(batch=128, grad=True).name == "torch"
    assert "bfloat16 training" in bf16(batch=128, grad=True).reason
    assert bf16(batch=64, grad=True).name == "triton"
    assert pick(dtype=torch.bfloat16, hidden=512, batch=128, grad=True).name == "triton"
    monkeypatch.setitem(BACKENDS, "triton", Backend(
        "triton", "core", reference.core, True, missing=lambda: "it needs Triton"))
    assert pick(hidden=512).name == "torch"
    assert pick(hidden=512, reset_after=False).name == "reference"
    with pytest.raises(flashgru.BackendUnavailableError, match="it needs Triton"):
        flashgru.select_backend("triton")


def test_cpu_backend_refuses_what_it_cannot_run():
    if not CPU_FUSED:
        pytest.skip("numba is not installed")
    with pytest.raises(ValueError, match="backend 'cpu' runs float32/float64 on cpu, not "
                                         "torch.bfloat16 on cpu"):
        flashgru.select_backend("cpu", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="not torch.float32 on cuda"):
        flashgru.select_backend("cpu", device="cuda")


def test_unavailable_backend_names_what_to_install(monkeypatch):
    missing = Backend("fancy", "core", reference.core, True,
                      missing=lambda: "pip install 'flashgru[fancy]'")
    monkeypatch.setitem(BACKENDS, "fancy", missing)
    with pytest.raises(flashgru.BackendUnavailableError, match=r"pip install 'flashgru\[fancy\]'"):
        flashgru.GRU(3, 4, backend="fancy")


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_auto_leaves_short_calls_to_torch(grad):
    """Torch's formulation with fewer than CPU_MIN_STEPS steps runs on torch's kernels
    (faster to start), except one inference step the streaming kernel takes; the paper's
    formulation stays on the fused kernels at any length (torch has none)."""
    fused = "cpu" if CPU_FUSED else "torch"
    steps = backends.CPU_MIN_STEPS

    def pick(steps, batch=1, hidden=64, reset_after=True):
        return flashgru.select_backend("auto", reset_after=reset_after, steps=steps,
                                       batch=batch, hidden=hidden, grad=grad)

    assert pick(steps).name == fused
    for short in range(2, steps):
        choice = pick(short)
        assert choice.name == "torch" and f"{short} steps" in choice.reason, choice
    assert pick(1).name == ("torch" if grad else fused)  # the streaming kernel: batch 1
    assert pick(1, batch=16).name == "torch"  # 16 × 6 · 64² > STEP_WORK: no streaming kernel
    assert pick(1, reset_after=False).name == ("cpu" if CPU_FUSED else "reference")


def test_module_reports_its_choice_and_uses_it(monkeypatch):
    from flashgru.backends import cpu

    monkeypatch.setattr(cpu, "_parts", lambda batch: 1)
    gru = flashgru.GRU(3, 4, batch_first=True)
    expected = "cpu" if CPU_FUSED else "torch"
    assert gru.which_backend(torch.randn(2, 7, 3)).name == expected
    assert gru.which_backend(torch.randn(64, 7, 3)).name == expected
    assert gru.which_backend(torch.randn(8193, 7, 3)).name == "torch"  # 8193 × 4 > 32768
    frozen = flashgru.GRU(3, 4).requires_grad_(False)  # one step: streamed, unless a
    hx = torch.zeros(1, 1, 4, requires_grad=True)  # gradient is wanted, through hx too
    assert frozen.which_backend(torch.randn(1, 1, 3)).name == expected
    assert frozen.which_backend(torch.randn(1, 1, 3), hx).name == "torch"
    for shape in [(3,), (2, 7, 3, 1)]:  # (forward's error for a shape it refuses)
        with pytest.raises(ValueError, match=f"Expected input to be 2D or 3D, got {len(shape)}D"):
            gru.which_backend(torch.randn(shape))
    gru.reset_after = False
    assert gru.which_backend(torch.randn(7, 3, dtype=torch.bfloat16)).name == "reference"
    gru.backend = "reference"
    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return reference.core(*args, **kwargs)

    monkeypatch.setitem(BACKENDS, "reference", Backend("reference", "core", spy, True))
    gru(torch.randn(2, 7, 3))
    assert len(calls) == 1


def test_auto_equals_every_explicit_backend():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    gru = flashgru.GRU(4, 5, 2, bidirectional=True, dtype=torch.float64)
    auto = gru(x)
    for name in CPU_BACKENDS:
        gru.backend = name
        out = gru(x)
        assert_close(f"{name} output", auto[0], out[0], 1e-12)
        assert_close(f"{name} h_n", auto[1], out[1], 1e-12)


@pytest.mark.parametrize("batch", [2, 40])
def test_autocast_on_cpu_works_like_torch(batch):
    """Under CPU autocast the input projection is bfloat16; every backend still returns
    torch.nn.GRU's float32 result, and trains (a backward run inside autocast too: the
    cpu backend's raised on its bfloat16 weight-gradient product), with torch's float32
    gradients."""
    torch.manual_seed(0)
    ref = torch.nn.GRU(3, 5)
    x = torch.randn(4, batch, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = ref(x)[0]
        expected.sum().backward()
        want = [x.grad, *(p.grad for p in ref.parameters())]
        for name in [*CPU_BACKENDS, "auto"]:
            gru = flashgru.GRU.from_torch(ref, backend=name)
            x.grad = None
            out = gru(x)[0]
            assert out.dtype == expected.dtype, name
            assert_close(name, expected.float(), out.float(), 2e-2)
            out.sum().backward()
            for w, (label, got) in zip(want, [("x", x.grad), *gru.named_parameters()],
                                       strict=True):
                got = got if label == "x" else got.grad
                assert got.dtype == torch.float32, (name, label)
                assert_close(f"{name} d{label}", w, got, 2e-2, rtol=2e-2)


@pytest.mark.parametrize("batch_first", [False, True])
def test_output_changed_in_place_before_the_backward(batch_first):
    """A residual's `out += x` on the GRU's output before the backward: torch.nn.GRU
    allows it, and so does every backend (cpu, parallel and triton had saved the tensor
    they returned, and the backward refused it as modified)."""
    from helpers import INTERPRETED

    torch.manual_seed(0)
    ref = torch.nn.GRU(3, 5, batch_first=batch_first)
    x = torch.randn(6, 2, 3, requires_grad=True)
    out = ref(x)[0]
    out.add_(1.0)
    (out ** 2).sum().backward()
    want = [p.grad for p in ref.parameters()]
    for name in [*CPU_BACKENDS, *INTERPRETED]:
        gru = flashgru.GRU.from_torch(ref, backend=name)
        out = gru(x)[0]
        out.add_(1.0)
        (out ** 2).sum().backward()
        for w, (label, p) in zip(want, gru.named_parameters(), strict=True):
            assert_close(f"{name} d{label}", w, p.grad, 1e-5, rtol=1e-5)


def test_recording_names_the_mode():
    """``recording`` names what records torch ops instead of running them; auto then keeps
    the CPU's call on torch's ops and a backend of other kernels, asked for by name, says
    it can't be recorded."""
    from flashgru.backends import recording

    seen = {}

    def probe(x):
        seen["mode"] = recording()
        seen["auto"] = flashgru.select_backend(steps=64).name
        return x * 2

    assert recording() is None
    torch.jit.trace(probe, torch.ones(2), check_trace=False)
    assert seen == {"mode": "torch.jit.trace", "auto": "torch"}
    torch.func.grad(lambda x: probe(x).sum())(torch.ones(2))
    assert seen == {"mode": "torch.func", "auto": "torch"}
    torch._dynamo.reset()
    torch.compile(probe, fullgraph=True)(torch.ones(2))
    assert seen == {"mode": "torch.compile", "auto": "torch"}
    if CPU_FUSED:
        with pytest.raises(RuntimeError, match="'cpu' cannot be recorded by torch.func"):
            torch.func.grad(lambda x: flashgru.select_backend("cpu", steps=64) and x.sum())(
                torch.ones(2))


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
def test_torch_func_export_and_compile_run_the_default_backend(reset_after):
    """A model on the default backend under torch.func.grad, torch.export and
    torch.compile: torch's ops (or the reference core's), the eager numbers."""
    torch.manual_seed(0)
    gru = flashgru.GRU(3, 4, batch_first=True, reset_after=reset_after)
    x = torch.randn(2, 6, 3)
    params = dict(gru.named_parameters())

    def loss(p, x):
        return torch.func.functional_call(gru, p, (x,))[0].square().sum()

    grads = torch.func.grad(loss)(params, x)
    want = torch.autograd.grad(loss(params, x), list(params.values()))
    for (name, got), expected in zip(grads.items(), want, strict=True):
        torch.testing.assert_close(got, expected, msg=name)
    with torch.no_grad():
        eager = gru(x)[0]
        exported = torch.export.export(gru.eval(), (x,)).module()
        torch.testing.assert_close(exported(x)[0], eager)
        torch._dynamo.reset()
        torch.testing.assert_close(torch.compile(gru)(x)[0], eager)


def test_works_without_triton():
    """With Triton not installed (its import fails), flashgru imports, runs on the reference
    and torch paths, and a call that names the triton backend is told the command that
    installs it (a fresh interpreter: Triton blocked before flashgru's first import)."""
    import subprocess
    import sys

    code = """
import sys
sys.modules["triton"] = None  # (import triton then raises ImportError)
import torch
import flashgru
from flashgru.backends import BACKENDS
assert BACKENDS["triton"].missing() == "it needs Triton: pip install 'flashgru[gpu]'"
gru = flashgru.GRU(4, 8, backend="auto")
ref = torch.nn.GRU(4, 8)
ref.load_state_dict(gru.state_dict())
x = torch.randn(5, 2, 4)
assert torch.allclose(gru(x)[0], ref(x)[0], atol=1e-6)
try:
    flashgru.GRU(4, 8, backend="triton")
except flashgru.BackendUnavailableError as e:
    assert "pip install 'flashgru[gpu]'" in str(e), e
else:
    raise AssertionError("backend='triton' accepted without Triton")
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
