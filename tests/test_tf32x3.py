"""flashgru.backends.tf32x3: fp32 GEMMs as three TF32 ones (opt-in), their numbers at
fp32's level, where they apply, and the triton backend's GEMMs through them when enabled.
(On the CPU the three products run in fp32: the arithmetic, not the tensor cores.)"""

import itertools

import pytest
import torch
import torch.nn.functional as F

import flashgru
from flashgru.backends import BACKENDS, tf32x3


@pytest.fixture
def enabled(monkeypatch, no_tf32):
    monkeypatch.setattr(tf32x3, "enabled", True)


def test_split_is_exact_and_its_high_part_fits_tf32():
    a = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 10.0 ** torch.randint(
        -30, 30, (4096,), generator=torch.Generator().manual_seed(1))
    hi, lo = tf32x3.split(a)
    assert torch.equal(hi + lo, a)  # (lo = a - hi, exact)
    assert torch.all(hi.view(torch.int32) & 0x1FFF == 0)  # (13 low mantissa bits clear)
    nonzero = hi != 0
    assert torch.all((lo[nonzero] / hi[nonzero]).abs() <= 2.0 ** -11)  # (to nearest)
    hi_t, lo_t = tf32x3.split(a.reshape(64, 64).t())  # (a transposed view: its values)
    assert torch.equal(hi_t + lo_t, a.reshape(64, 64).t())


def test_three_products_keep_fp32s_error():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(256, 128, generator=g), torch.randn(128, 384, generator=g)
    want = x.double() @ w.double()
    got = tf32x3.mm(x, w).double()
    # (the dropped lo·lo term is ~2^-22 of each product, summed over 128)
    assert (got - want).abs().max() <= 4e-6 * want.abs().max()
    # the high parts alone (one TF32 product's operands) lose ~2^-11: the test can fail
    hi = tf32x3.split(x)[0] @ tf32x3.split(w)[0]
    assert (hi.double() - want).abs().max() > 1e-4 * want.abs().max()
    assert not torch.backends.cuda.matmul.allow_tf32  # (restored)


@pytest.mark.parametrize("bias", [True, False])
def test_products_add_into_one_output(enabled, bias):
    """The three products go into one output, the second and third added in place, the
    bias with the first: no op makes a copy of the output or adds the bias apart (each a
    pass over the output's memory), and the forward's numbers stay at fp32's error."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(35, 24, generator=g), torch.randn(36, 24, generator=g)
    b = torch.randn(36, generator=g) if bias else None
    parts = tf32x3.split(x), tf32x3._t(tf32x3.split(w))
    seen = []
    with Ops():
        got = tf32x3._mm_parts(*parts, b)
    assert seen == ["addmm" if bias else "mm", "addmm_", "addmm_"]
    want = F.linear(x.double(), w.double(), b.double() if bias else None)
    assert (got.double() - want).abs().max() <= 4e-6 * want.abs().max()


@pytest.fixture(params=["parts", "fused", "wide"])
def gemm_way(request, monkeypatch):
    """The three products of operands split first (_mm_parts: as the CPU runs them, or
    CUDA without Triton), or, as on CUDA with Triton (on the CPU in the interpreter), in
    one kernel (_triton.gemm.mm) or as one GEMM over 3K (gemm.mm_wide, tf32x3.WAY)."""
    if request.param == "parts":
        monkeypatch.setattr(tf32x3, "GEMM_DEVICES", ())
    else:
        if BACKENDS["triton"].missing() is not None:
            pytest.skip("needs Triton, and a GPU or TRITON_INTERPRET=1")
        monkeypatch.setattr(tf32x3, "GEMM_DEVICES", ("cuda", "cpu"))
        monkeypatch.setattr(tf32x3, "WAY", "wide" if request.param == "wide" else "kernel")
    return request.param


@pytest.mark.parametrize("bias", [True, False])
def test_linear_and_its_gradients_at_fp32s_error(enabled, bias, gemm_way):
    # (on a GPU, there: the kernels compile for CUDA tensors, the interpreter runs either)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, 24, generator=g).to(device).requires_grad_()
    w = torch.randn(36, 24, generator=g).to(device).requires_grad_()
    b = torch.randn(36, generator=g).to(device).requires_grad_() if bias else None
    dout = torch.randn(7, 5, 36, generator=g).to(device)
    inputs = [t for t in (x, w, b) if t is not None]
    got = tf32x3.linear(x, w, b)
    grads = torch.autograd.grad(got, inputs, dout)
    wide = [t.detach().double().requires_grad_() for t in inputs]
    want = F.linear(wide[0], wide[1], wide[2] if bias else None)
    want_grads = torch.autograd.grad(want, wide, dout.double())
    for name, a, r in zip(["out", "dx", "dw", "db"], [got, *grads], [want, *want_grads],
                          strict=False):
        assert (a.double() - r).abs().max() <= 4e-6 * r.abs().max(), name
    # only the gradients asked for
    x2 = x.detach()
    assert torch.autograd.grad(tf32x3.linear(x2, w, b).sum(), w)[0].shape == w.shape


def test_linear_splits_each_operand_once(enabled, monkeypatch):
    """Where the products are not one kernel (here: the CPU), a training call's linear
    splits x and wᵀ in the forward and, in the backward, the gradient once for both of its
    products (dx, dW) and w and x once each; a call that needs only the bias's gradient
    splits nothing there."""
    shapes = []
    split = tf32x3.split
    monkeypatch.setattr(tf32x3, "split", lambda a: shapes.append(tuple(a.shape)) or split(a))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, 24, generator=g, requires_grad=True)
    w = torch.randn(36, 24, generator=g, requires_grad=True)
    b = torch.randn(36, generator=g, requires_grad=True)
    out = tf32x3.linear(x, w, b)
    assert sorted(shapes) == [(24, 36), (35, 24)]
    shapes.clear()
    out.backward(torch.randn(7, 5, 36, generator=g))
    assert sorted(shapes) == [(35, 24), (35, 36), (36, 24)]
    shapes.clear()
    out = tf32x3.linear(x.detach(), w.detach(), b)
    shapes.clear()
    out.sum().backward()
    assert shapes == [] and b.grad is not None


def test_where_it_applies(enabled, monkeypatch):
    f32 = torch.zeros(2, 2)
    assert tf32x3.applies(f32, f32)
    assert not tf32x3.applies(f32, f32.double())
    assert not tf32x3.applies(f32.bfloat16())
    torch.backends.cuda.matmul.allow_tf32 = True  # (already TF32: plain matmuls)
    assert not tf32x3.applies(f32)
    torch.backends.cuda.matmul.allow_tf32 = False
    import flashgru.backends as backends
    monkeypatch.setattr(backends, "recording", lambda: "torch.compile")
    assert not tf32x3.applies(f32)
    monkeypatch.setattr(backends, "recording", lambda: None)
    assert tf32x3.applies(f32)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # (autocast recasts F.linear's)
        assert not tf32x3.applies(f32)
        assert tf32x3.linear(f32, f32, None).dtype == torch.bfloat16
    monkeypatch.setattr(tf32x3, "enabled", False)
    assert not tf32x3.applies(f32)


def test_only_the_triton_backend_projects_so():
    assert BACKENDS["triton"].linear is tf32x3.linear
    assert all(b.linear is F.linear for name, b in BACKENDS.items() if name != "triton")
    assert not tf32x3.enabled  # (opt-in: slower as timed on an H200)


@pytest.mark.skipif(BACKENDS["triton"].missing() is not None,
                    reason="needs Triton, and a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("on", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["lean", "functional"])
def test_triton_backend_gemms_through_it_when_enabled(on, bidirectional, monkeypatch,
                                                      no_tf32, gemm_way):
    """Enabled, a triton training call's input projection (forward, dx, dW_ih) and dW_hh
    (two GEMMs: r's and z's rows, n's) go through the three TF32 products (tf32x3.mm: in
    one kernel, or on operands split once), with torch's numbers at fp32's tolerance, on
    the module's lean path (one direction) and through functional._layers (both); not
    enabled, none does."""
    monkeypatch.setattr(tf32x3, "enabled", on)
    calls, ways = [], []
    mm, parts = tf32x3.mm, tf32x3._mm_parts
    monkeypatch.setattr(tf32x3, "mm", lambda a, b, *args, **kwargs: calls.append(
        tf32x3._fused(a, b)) or mm(a, b, *args, **kwargs))
    monkeypatch.setattr(tf32x3, "_mm_parts", lambda *args: ways.append("parts") or
                        parts(*args))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    ref = torch.nn.GRU(12, 16, device=device, bidirectional=bidirectional)
    ours = flashgru.GRU.from_torch(ref, backend="triton")
    x = torch.randn(5, 3, 12, device=device, requires_grad=True)
    (o_ref, h_ref), (o, h) = ref(x), ours(x)
    dout = torch.randn_like(o)
    g_ref = torch.autograd.grad(o_ref, [x, *ref.parameters()], dout)
    g = torch.autograd.grad(o, [x, *ours.parameters()], dout)
    # (each direction's projection, dx, dW_ih, and dW_hh's r and z block and its n block)
    assert len(calls) == (5 * (1 + bidirectional) if on else 0)
    fused = gemm_way != "parts"
    assert calls == [fused] * len(calls) and len(ways) == (0 if fused else len(calls))
    for a, r in zip([o, h, *g], [o_ref, h_ref, *g_ref], strict=True):
        assert (a - r).abs().max() <= 2e-5 * max(1.0, r.abs().max().item())


def test_fast_applies_on_fast_tf32_cards_only(monkeypatch, no_tf32):
    """enabled = FAST: the GEMMs go through ``mm`` only where every operand is on a CUDA
    card of FAST_TF32 (A100, H100/H200), not on the CPU nor on a card whose TF32 rate is
    near its fp32 rate (compute capability 8.6, the consumer Ampere parts). (No GPU here:
    the capability and the device check stand in.)"""
    monkeypatch.setattr(tf32x3, "enabled", tf32x3.FAST)
    monkeypatch.setattr(tf32x3, "_fast", {})
    f32 = torch.zeros(2, 2)
    assert not tf32x3.applies(f32, f32)  # (the CPU)
    capability = {0: (9, 0), 1: (8, 6)}
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda device: capability[device.index])
    assert tf32x3._fast_tf32(torch.device("cuda", 0))
    assert not tf32x3._fast_tf32(torch.device("cuda", 1))
    assert not tf32x3._fast_tf32(torch.device("cpu"))
    monkeypatch.setattr(tf32x3, "_fast_tf32", lambda device: True)
    assert tf32x3.applies(f32, f32)
    assert not tf32x3.applies(f32, f32.double())
    monkeypatch.setattr(tf32x3, "enabled", "FAST")  # (a misspelt mode: an error, not "on")
    with pytest.raises(ValueError, match="False, True or tf32x3.FAST"):
        tf32x3.applies(f32, f32)


def _special_values() -> torch.Tensor:
    """fp32 values whose rounding to TF32 is an edge: zeros, subnormals, the largest
    finite values (whose rounding would overflow: truncated), infinities, NaNs of several
    payloads (a carry can reach the exponent or wrap the sign), halfway cases."""
    bits = [0x00000000, 0x80000000, 0x00000001, 0x00000FFF, 0x00001000, 0x00001FFF,
            0x007FFFFF, 0x00800000, 0x3F800FFF, 0x3F801000, 0x3F801001, 0xBF801000,
            0x7F7FEFFF, 0x7F7FF000, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000, 0xFF800000,
            0x7F800001, 0x7FC00000, 0x7FFFFFFF, 0xFFFFFFFF, 0xFFC00000]
    return torch.tensor([b - (1 << 32) if b >= 1 << 31 else b for b in bits],
                        dtype=torch.int32).view(torch.float32)


def _same_parts(got, want):
    """hi bit for bit; lo bit for bit except NaN, whose payload arithmetic may differ."""
    assert got[0].shape == want[0].shape and got[1].shape == want[1].shape
    assert torch.equal(got[0].view(torch.int32), want[0].view(torch.int32))
    nan = want[1].isnan()
    assert torch.equal(got[1].isnan(), nan)
    assert torch.equal(got[1][~nan].view(torch.int32), want[1][~nan].view(torch.int32))


@pytest.mark.skipif(BACKENDS["triton"].missing() is not None,
                    reason="needs Triton, and a GPU or TRITON_INTERPRET=1")
@pytest.mark.filterwarnings("ignore:invalid value encountered")  # (the interpreter's inf - inf)
def test_fused_split_gives_the_same_bits(monkeypatch):
    """The one-pass split (_triton.tf32split, what ``split`` runs on CUDA) gives the torch
    ops' bits: on the edge values, on random values over 60 decades in a size that leaves
    a partial block, in 2-D, and on a transposed view (split as its contiguous transpose,
    the parts transposed back)."""
    from flashgru.backends._triton import tf32split

    device = "cuda" if torch.cuda.is_available() else "cpu"
    monkeypatch.setattr(tf32x3, "FUSED_DEVICES", ("cuda", "cpu"))
    g = torch.Generator().manual_seed(0)
    wide = torch.randn(tf32split.BLOCK + 905, generator=g) * 10.0 ** torch.randint(
        -30, 30, (tf32split.BLOCK + 905,), generator=g)
    for a in (_special_values(), wide, wide[: 64 * 70].reshape(64, 70)):
        a = a.to(device)
        _same_parts(tf32split.split(a), tf32x3._split_ops(a))
        _same_parts(tf32x3.split(a), tf32x3._split_ops(a))
    a = wide[: 64 * 70].reshape(64, 70).to(device).t()
    calls = []
    fused = tf32split.split
    monkeypatch.setattr(tf32split, "split", lambda t: calls.append(t.is_contiguous()) or
                        fused(t))
    got = tf32x3.split(a)
    assert calls == [True] and got[0].stride() == a.stride()  # (no copy: the transpose's)
    _same_parts(got, tf32x3._split_ops(a))
    assert tf32x3.split(a[:0])[0].shape == (0, 64)  # (empty: no launch)


@pytest.mark.skipif(BACKENDS["triton"].missing() is not None,
                    reason="needs Triton, and a GPU or TRITON_INTERPRET=1")
@pytest.mark.filterwarnings("ignore:invalid value encountered")  # (the interpreter's inf - inf)
@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("lo_first", [True, False])
def test_wide_split_lays_the_parts_side_by_side(dim, lo_first):
    """_triton.tf32split.wide (gemm.mm_wide's operands): the split's bits, as (lo, hi, hi)
    or (hi, lo, hi) along ``dim``, for the edge values, partial tiles in both dimensions,
    a transposed view and a column slice read in place, and empty operands."""
    from flashgru.backends._triton import tf32split

    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    edge = _special_values()
    values = torch.randn(70, 3 * 130, generator=g) * 10.0 ** torch.randint(
        -30, 30, (70, 3 * 130), generator=g)
    values[5, : edge.numel()] = edge
    values = values.to(device)
    for a in (values[:, :130], values.t(), values[:, 130:260].t(), values[:9, :0],
              values[:0]):
        got = tf32split.wide(a, dim, lo_first)
        assert got.is_contiguous()
        assert got.shape == tuple(n * (3 if d == dim else 1) for d, n in enumerate(a.shape))
        if not a.numel():
            continue
        hi, lo = tf32x3._split_ops(a.contiguous())
        first, second, third = torch.chunk(got, 3, dim)
        got_lo, got_hi = (first, second) if lo_first else (second, first)
        _same_parts((got_hi, got_lo), (hi, lo))
        _same_parts((third, got_lo), (hi, lo))  # (hi again)


def _fused_gemm():
    from flashgru.backends._triton import gemm
    return gemm


# (tf32x3.mm's ways on CUDA with Triton: _triton.gemm's kernel, K whole or sliced, and one
# GEMM over 3K, K whole or in spans)
GEMM_CASES = ["whole", "sliced", "wide", "wide-spans"]


def _way(gemm, way: str, monkeypatch):
    """gemm.mm (MIN_SLICE 32 where ``sliced``) or gemm.mm_wide (K in spans of 32 where
    ``wide-spans``)."""
    monkeypatch.setattr(gemm, "MIN_SLICE", 32 if way == "sliced" else 512)
    if way == "wide-spans":
        monkeypatch.setattr(gemm, "WIDE_ELEMENTS", 0)
        monkeypatch.setattr(gemm, "WIDE_MIN_SPAN", 32)
    return gemm.mm_wide if way.startswith("wide") else gemm.mm


@pytest.mark.skipif(BACKENDS["triton"].missing() is not None,
                    reason="needs Triton, and a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("m,k,n", [(200, 70, 130), (129, 257, 45), (3, 5, 7), (6, 0, 9)])
@pytest.mark.parametrize("way", GEMM_CASES)
def test_fused_gemm_at_fp32s_error(m, k, n, way, monkeypatch):
    """_triton.gemm.mm (tf32x3.mm's one kernel on CUDA), and gemm.mm_wide (its one GEMM over 3K)
    alike: partial tiles in every dimension and K = 0, row-major operands, transposed views, a
    column slice read in place (the gates' gradient's r and z columns), a bias, an ``out`` that
    is a slice of a larger buffer, row- or column-major (nothing around it written), against
    float64 at fp32's error; K whole, or (``sliced``: MIN_SLICE 32, where the tiles are fewer
    than the multiprocessors, 4 off CUDA) cut into slices, the last one short, summed after. In
    the interpreter the products run in fp32; leaving any of the three out fails (the lost part
    is ~2^-11 of the product). Over 3K likewise, K whole or (``wide-spans``) in spans of 32, the
    last one short, each added in."""
    gemm = _fused_gemm()
    mm = _way(gemm, way, monkeypatch)
    if not torch.cuda.is_available():
        tiles = -(-m // gemm.TILE[0]) * -(-n // gemm.TILE[1])
        assert (gemm._slices(tiles, k, gemm.TILE[2], torch.device("cpu")) > 1) == (
            way == "sliced" and (m, k, n) == (129, 257, 45))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    wide_a = torch.randn(k, 3 * m, generator=g).to(device)
    a_t = wide_a[:, m: 2 * m].t()  # (m × k, strides (1, 3m): read in place)
    cases = [(torch.randn(m, k, generator=g).to(device), torch.randn(k, n, generator=g)
              .to(device)), (a_t, torch.randn(n, k, generator=g).to(device).t())]
    bias = torch.randn(n, generator=g).to(device)
    for (a, b), with_bias, transposed in itertools.product(cases, (False, True),
                                                           (False, True)):
        # (out a slice of a larger buffer; or of its transpose: column-major)
        canvas = torch.full((m + 3, n + 2), float("nan"), device=device)
        if transposed:
            canvas = torch.full((n + 2, m + 3), float("nan"), device=device).t()
        out = canvas[1: m + 1, 1: n + 1]
        got = mm(a, b, bias if with_bias else None, out=out)
        assert got.data_ptr() == out.data_ptr()
        want = a.double() @ b.double() + (bias.double() if with_bias else 0)
        scale = (a.double().abs() @ b.double().abs()).max().item() + (
            bias.abs().max().item() if with_bias else 0) + 1e-30
        assert (got.double() - want).abs().max().item() <= 4e-6 * scale
        rest = canvas.clone()
        rest[1: m + 1, 1: n + 1] = 0
        assert rest.isnan().sum().item() == rest.numel() - m * n  # (none else written)
        assert mm(a, b).shape == (m, n)


@pytest.mark.skipif(BACKENDS["triton"].missing() is not None,
                    reason="needs Triton, and a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("bias", [True, False])
def test_wide_gemm_runs_its_spans_in_tf32(bias, monkeypatch, no_tf32):
    """gemm.mm_wide: each span of K one GEMM with TF32 on (restored after), the spans
    WIDE_ELEMENTS // (3 (M + N)) long (the last short), the bias in the first alone, the
    others added in; at fp32's error."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Products(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in ("mm", "addmm", "addmm_"):  # (each with its K, 3 × a span)
                seen.append((name, args[0 if name == "mm" else 1].shape[1],
                             torch.backends.cuda.matmul.allow_tf32))
            return func(*args, **(kwargs or {}))

    gemm = _fused_gemm()
    m, k, n = 10, 700, 6
    monkeypatch.setattr(gemm, "WIDE_ELEMENTS", 3 * (m + n) * 200)
    monkeypatch.setattr(gemm, "WIDE_MIN_SPAN", 32)
    g = torch.Generator().manual_seed(0)
    a, b, row = (torch.randn(m, k, generator=g), torch.randn(k, n, generator=g),
                 torch.randn(n, generator=g) if bias else None)
    seen = []
    with Products():
        got = gemm.mm_wide(a, b, row)
    assert seen == [("addmm" if bias else "mm", 600, True), ("addmm_", 600, True),
                    ("addmm_", 600, True), ("addmm_", 300, True)]
    assert not torch.backends.cuda.matmul.allow_tf32
    want = a.double() @ b.double() + (row.double() if bias else 0)
    assert (got.double() - want).abs().max() <= 4e-6 * want.abs().max()


@pytest.mark.skipif(BACKENDS["triton"].missing() is not None,
                    reason="needs Triton, and a GPU or TRITON_INTERPRET=1")
@pytest.mark.filterwarnings("ignore:invalid value encountered")  # (the interpreter's inf - inf)
@pytest.mark.filterwarnings("ignore:overflow encountered")  # (the largest finite values')
@pytest.mark.parametrize("way", ["whole", "wide"])
def test_fused_gemm_is_the_parts_products(way, monkeypatch, no_tf32):
    """The kernel's products, and the GEMM over 3K's, are those of the split operands
    (_mm_parts): the same within fp32's rounding on ordinary values, and NaN where they
    give NaN (an infinite operand's low part is inf - inf), on the split's edge values."""
    gemm = _fused_gemm()
    mm = _way(gemm, way, monkeypatch)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(1)
    edge = _special_values()
    a = torch.randn(edge.numel(), 40, generator=g)
    a[:, 3] = edge
    b = torch.randn(40, 33, generator=g)
    a, b = a.to(device), b.to(device)
    want = tf32x3._mm_parts(tf32x3._split_ops(a), tf32x3._split_ops(b))
    got = mm(a, b)
    assert torch.equal(got.isnan(), want.isnan())
    finite = want.isfinite()
    assert torch.equal(got.isfinite(), finite)
    assert (got[finite] - want[finite]).abs().max() <= 1e-5 * want[finite].abs().max()


def test_mm_runs_one_kernel_where_it_can(monkeypatch, no_tf32):
    """``mm`` hands tensors on a device of GEMM_DEVICES to the one kernel (with a bias and
    ``out``), or with WAY "wide" to the one GEMM over 3K, and parts split beforehand, or
    tensors elsewhere, to _mm_parts; ``operand`` leaves an operand whole where the kernel
    takes it, else splits it. Another WAY is an error."""
    from flashgru.backends._triton import lang

    seen = []
    monkeypatch.setattr(tf32x3, "_mm_parts", lambda a, b, bias, out: seen.append(
        ("parts", isinstance(a, tuple) and isinstance(b, tuple), bias, out)))
    x, w = torch.zeros(4, 3), torch.zeros(3, 2)
    bias, out = torch.zeros(2), torch.zeros(4, 2)
    tf32x3.mm(x, w, out=out, bias=bias)
    assert seen == [("parts", True, bias, out)]
    assert isinstance(tf32x3.operand(x), tuple)
    monkeypatch.setattr(tf32x3, "WAY", "cublas")  # (off the kernels' devices too)
    with pytest.raises(ValueError, match="tf32x3.WAY is one of 'kernel', 'wide'"):
        tf32x3.mm(x, w)
    monkeypatch.setattr(tf32x3, "WAY", "kernel")
    if lang.triton is None:
        return
    from flashgru.backends._triton import gemm

    monkeypatch.setattr(tf32x3, "GEMM_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(gemm, "mm", lambda *args: seen.append(("kernel", *args[2:])))
    monkeypatch.setattr(gemm, "mm_wide", lambda *args: seen.append(("wide", *args[2:])))
    seen.clear()
    tf32x3.mm(x, w, out=out, bias=bias)
    tf32x3.mm(tf32x3.split(x), w)  # (parts: not the kernel's)
    assert seen[0] == ("kernel", bias, out) and seen[1][0] == "parts"
    assert tf32x3.operand(x) is x
    monkeypatch.setattr(tf32x3, "WAY", "wide")
    seen.clear()
    tf32x3.mm(x, w, out=out, bias=bias)
    assert seen == [("wide", bias, out)] and tf32x3.operand(x) is x
    monkeypatch.setattr(tf32x3, "WAY", "cublas")
    with pytest.raises(ValueError, match="tf32x3.WAY is one of 'kernel', 'wide'"):
        tf32x3.mm(x, w)


@pytest.mark.skipif(BACKENDS["triton"].missing() is not None,
                    reason="needs Triton, and a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("way", ["whole", "wide"])
def test_fused_gemm_refuses_what_it_cannot_multiply(way, monkeypatch):
    mm = _way(_fused_gemm(), way, monkeypatch)
    a, b = torch.zeros(2, 3), torch.zeros(3, 2)
    for x, y in [(a, torch.zeros(4, 2)), (a.double(), b), (a[0], b), (a, b[None])]:
        with pytest.raises(ValueError, match="fp32 .M × K. @ .K × N. operands"):
            mm(x, y)
    with pytest.raises(ValueError, match="out must be"):
        mm(a, b, out=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="bias must be fp32"):
        mm(a, b, torch.zeros(2, dtype=torch.float64))
    with pytest.raises(RuntimeError):  # (torch's own: a bias of the wrong length)
        mm(a, b, torch.zeros(3))


@pytest.mark.skipif(BACKENDS["triton"].missing() is not None,
                    reason="needs Triton, and a GPU or TRITON_INTERPRET=1")
def test_fused_gemm_takes_any_bias_linear_takes(monkeypatch):
    """A bias as F.linear takes it: strided, expanded from one value, 0-dim; the same
    numbers as a contiguous one, K whole or sliced, or over 3K (the kernel reads a
    contiguous row)."""
    gemm = _fused_gemm()
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(9, 40, generator=g), torch.randn(40, 6, generator=g)
    wide = torch.randn(12, generator=g)
    for mm, min_slice in ((gemm.mm, 512), (gemm.mm, 8), (gemm.mm_wide, 512)):
        monkeypatch.setattr(gemm, "MIN_SLICE", min_slice)
        for bias in (wide[::2], torch.tensor([1.5]).expand(6), torch.tensor(-2.0)):
            want = mm(a, b, bias.expand(6).clone())
            assert torch.equal(mm(a, b, bias), want)
            assert (want - (a @ b + bias)).abs().max() <= 1e-5 * want.abs().max()


@pytest.mark.parametrize("bias", [True, False])
def test_parts_products_into_out(bias):
    """_mm_parts with ``out`` (and a bias): the result lands in ``out``, at fp32's error."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(20, 16, generator=g), torch.randn(16, 12, generator=g)
    b = torch.randn(12, generator=g) if bias else None
    out = torch.full((20, 12), float("nan"))
    got = tf32x3._mm_parts(tf32x3.split(x), tf32x3.split(w), b, out)
    assert got.data_ptr() == out.data_ptr()
    want = x.double() @ w.double() + (b.double() if bias else 0)
    assert (out.double() - want).abs().max() <= 4e-6 * want.abs().max()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("way", ["whole", "wide"])
def test_fused_gemm_on_gpu(way, no_tf32, monkeypatch):
    """On the tensor cores, at a B=16, T=256 training call's input projection and dW_hh
    shapes (H=512), in one kernel and as one GEMM over 3K: fp32's error against float64
    (as one fp32 GEMM's, within 4e-6 of the largest), where one TF32 product errs by
    ~3e-4."""
    mm = _way(_fused_gemm(), way, monkeypatch)
    g = torch.Generator().manual_seed(0)
    for m, k, n, t in [(4096, 512, 1536, False), (1024, 4096, 512, True)]:
        a = torch.randn(k, m, generator=g).cuda().t() if t else torch.randn(
            m, k, generator=g).cuda()
        b = (torch.randn(k, n, generator=g) * k ** -0.5).cuda()
        want = a.double() @ b.double()
        err = ((mm(a, b).double() - want).abs().max() / want.abs().max()).item()
        torch.backends.cuda.matmul.allow_tf32 = True
        tf32 = ((a @ b).double() - want).abs().max().item() / want.abs().max().item()
        torch.backends.cuda.matmul.allow_tf32 = False
        assert err <= 4e-6 and tf32 > 5e-5, (m, k, n, err, tf32)
