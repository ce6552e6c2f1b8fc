"""flashgru.MinGRU and MinGRUCell: the parallel scan against a step-by-step loop written
out here (each sequence on its own, within its length), outputs, h_n and every gradient by
name in float64, every input form; streaming with step() and the cell; torch.nn.GRU's
errors for the same mistakes; dropout; state_dict."""

import math
import os

import pytest
import torch
from helpers import assert_close, make_input, padded
from test_scan import DEVICE, TRITON_RUNS
from torch import nn
from torch.nn.utils.rnn import PackedSequence

import flashgru
from flashgru import MinGRU, MinGRUCell

FORMS = ["padded", "batch_first", "unbatched", "packed_sorted", "packed_unsorted"]
T, B, IN, H = 5, 3, 3, 4


def _step(x, h, w, b):
    """The issue's equations, written out: z = σ(W_z x + b_z), h̃ = W_h x + b_h."""
    g = x @ w.t() + (b if b is not None else 0)
    z, cand = torch.sigmoid(g[..., :H]), g[..., H:]
    return (1 - z) * h + z * cand


def _loop(module, x, lengths, hx):
    """The stack one sequence and one step at a time. x (T, B, IN) time-major, lengths a
    list (original batch order), hx (L·D, B, H). Returns out (T, B, D·H), h_n."""
    dirs = 2 if module.bidirectional else 1
    layer_in = [x[: lengths[b], b] for b in range(x.shape[1])]
    h_n = []
    for layer in range(module.num_layers):
        outs = [[] for _ in layer_in]
        for d in range(dirs):
            sfx = f"l{layer}" + ("_reverse" if d else "")
            w, bias = getattr(module, f"weight_ih_{sfx}"), getattr(module, f"bias_ih_{sfx}", None)
            finals = []
            for b, seq in enumerate(layer_in):
                h, states = hx[layer * dirs + d, b], [None] * len(seq)
                order = range(len(seq)) if d == 0 else reversed(range(len(seq)))
                for t in order:
                    h = _step(seq[t], h, w, bias)
                    states[t] = h
                outs[b].append(torch.stack(states))
                finals.append(h)
            h_n.append(torch.stack(finals))
        layer_in = [torch.cat(o, -1) for o in outs]
    out = x.new_zeros(x.shape[0], x.shape[1], dirs * H)
    for b, seq in enumerate(layer_in):
        out[: len(seq), b] = seq
    return out, torch.stack(h_n)


def _run(form, layers, bidirectional, with_h0, bias, impl="auto", seed=0):
    dirs = 2 if bidirectional else 1
    torch.manual_seed(seed)
    module = MinGRU(IN, H, layers, bias=bias, batch_first=form == "batch_first",
                    bidirectional=bidirectional, dtype=torch.float64, impl=impl)
    kind = "padded" if form == "batch_first" else form
    inp, lengths, x = make_input(kind, T, B, IN, form == "batch_first", torch.float64, seed)
    rows = 1 if form == "unbatched" else B
    hx = torch.randn(layers * dirs, rows, H, dtype=torch.float64, requires_grad=True)
    hx_in = (hx.squeeze(1) if form == "unbatched" else hx) if with_h0 else None
    out, h_n = module(inp, hx_in)
    out = padded(out)  # (T, B, D·H) time-major, original order; or (T, D·H) / (B, T, D·H)
    if form == "unbatched":
        out, h_n = out.unsqueeze(1), h_n.unsqueeze(1)
    elif form == "batch_first":
        out = out.transpose(0, 1)
    xt = x.unsqueeze(1) if form == "unbatched" else x.transpose(0, 1) if form == "batch_first" \
        else x
    lens = lengths.tolist() if lengths is not None else [T] * rows
    ref_out, ref_h = _loop(module, xt, lens, hx if with_h0 else torch.zeros_like(hx))
    return module, x, hx, (out, h_n), (ref_out, ref_h), lens


def _compare(module, x, hx, got, ref, with_h0, tol=1e-12):
    g = torch.Generator().manual_seed(7)
    weights = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in ref]
    names = [n for n, _ in module.named_parameters()] + ["input"] + (["hx"] if with_h0 else [])
    leaves = list(module.parameters()) + [x] + ([hx] if with_h0 else [])
    grads = []
    for outs in (ref, got):
        loss = sum((o * w).sum() for o, w in zip(outs, weights, strict=True))
        grads.append(torch.autograd.grad(loss, leaves))
    assert_close("output", ref[0], got[0], tol)
    assert_close("h_n", ref[1], got[1], tol)
    for name, r, x_ in zip(names, *grads, strict=True):
        assert_close(f"d{name}", r, x_, tol)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "noh0"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("form", FORMS)
def test_scan_matches_loop(form, layers, bidirectional, with_h0, bias):
    module, x, hx, got, ref, lens = _run(form, layers, bidirectional, with_h0, bias)
    if form.startswith("packed"):
        assert min(lens) < T  # some steps past a length
    _compare(module, x, hx, got, ref, with_h0)


# CPU tensors reach the Triton scan only under the interpreter; on CUDA see the next test
IMPL_CASES = ["sequential", "torch"] + (
    ["triton"] if TRITON_RUNS and os.environ.get("TRITON_INTERPRET") == "1" else [])


@pytest.mark.parametrize("impl", IMPL_CASES)
def test_batched_gradients(impl):
    """jacobian(vectorize=True) (vmap over the backward) equals the one-at-a-time jacobian
    on every scan (the fused one's backward takes differentiable torch ops then)."""
    torch.manual_seed(0)
    module = MinGRU(IN, H, 2, impl=impl, dtype=torch.float64)
    x = torch.randn(T, B, IN, dtype=torch.float64)
    want = torch.autograd.functional.jacobian(lambda x_: module(x_)[1], x)
    got = torch.autograd.functional.jacobian(lambda x_: module(x_)[1], x, vectorize=True)
    assert_close("jacobian", want, got, 1e-12)


@pytest.mark.parametrize("impl", IMPL_CASES)
def test_every_scan_impl(impl):
    module, x, hx, got, ref, _ = _run("packed_unsorted", 2, True, True, True, impl=impl)
    _compare(module, x, hx, got, ref, True)


@pytest.mark.skipif(not (TRITON_RUNS and torch.cuda.is_available()), reason="needs CUDA")
def test_triton_scan_on_cuda_matches_cpu():
    torch.manual_seed(0)
    cpu = MinGRU(IN, H, 2, bidirectional=True, dtype=torch.float64, impl="sequential")
    gpu = MinGRU(IN, H, 2, bidirectional=True, dtype=torch.float64, impl="triton").cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(T, B, IN, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,))
    outs = []
    for module, dev in ((cpu, "cpu"), (gpu, "cuda")):
        xd = x.to(dev).requires_grad_()
        packed = nn.utils.rnn.pack_padded_sequence(xd, lengths, enforce_sorted=False)
        out, h_n = module(packed)
        out = nn.utils.rnn.pad_packed_sequence(out)[0]
        weight = torch.arange(out.numel(), dtype=torch.float64).reshape(out.shape).sin()
        loss = (out * weight.to(dev)).sum() + h_n.square().sum()  # same weights on both
        grads = torch.autograd.grad(loss, [xd, *module.parameters()])
        outs.append([out, h_n, *grads])
    for name, r, g in zip(["output", "h_n", "dinput"] + [n for n, _ in cpu.named_parameters()],
                          *outs, strict=True):
        assert_close(name, r, g.cpu(), 1e-12)


FUSED_RUNS = flashgru._mingru_triton.available(
    torch.zeros(1, device=DEVICE), torch.zeros(1, device=DEVICE))


@pytest.mark.skipif(not FUSED_RUNS, reason="needs Triton (CUDA or TRITON_INTERPRET=1)")
@pytest.mark.parametrize("chunk", [None, 12], ids=["auto-split", "chunks-of-12"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("size,dtype", [((1, 1, 1), torch.float64), ((37, 3, 5), torch.float64),
                                        ((50, 2, 13), torch.float64),
                                        ((37, 3, 5), torch.float32)], ids=str)
def test_fused_gate_scan_matches_the_step_loop(size, reverse, with_lengths, chunk, dtype):
    """The fused Triton gates+scan (and its backward) against a, b built by torch and the
    sequential scan: h, dp and dh0."""
    steps, batch, hidden = size
    g = torch.Generator().manual_seed(steps + batch)
    p = torch.randn(steps, batch, 2 * hidden, generator=g, dtype=torch.float64)
    h0 = torch.randn(batch, hidden, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, steps + 1, (batch,), generator=g) if with_lengths else None
    weight = torch.randn(steps, batch, hidden, generator=g, dtype=torch.float64)
    results = []
    for fused in (False, True):
        pp = p.to(DEVICE, dtype).requires_grad_()
        hh = h0.to(DEVICE, dtype).requires_grad_()
        if fused:
            h = flashgru._mingru_triton.gate_scan(pp, hh, lengths, reverse, chunk)
        else:
            z = torch.sigmoid(pp[..., :hidden])
            a, b = 1 - z, z * pp[..., hidden:]
            if lengths is not None:
                valid = (torch.arange(steps)[:, None] < lengths[None, :]).unsqueeze(-1)
                a = torch.where(valid.to(DEVICE), a, 1.0)
                b = torch.where(valid.to(DEVICE), b, 0.0)
            h = flashgru.scan.scan_diag(a, b, hh, reverse=reverse, impl="sequential")
        grads = torch.autograd.grad((h * weight.to(DEVICE, dtype)).sum(), [pp, hh])
        results.append([h, *grads])
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for name, r, f in zip(["h", "dp", "dh0"], *results, strict=True):
        assert_close(name, r.detach().double().cpu(), f.detach().double().cpu(), tol)


def test_float32_agrees_with_float64():
    torch.manual_seed(0)
    m64 = MinGRU(IN, H, 2, bidirectional=True, dtype=torch.float64)
    m32 = MinGRU(IN, H, 2, bidirectional=True)
    m32.load_state_dict(m64.state_dict())
    x = torch.randn(37, B, IN, dtype=torch.float64)
    (o64, h64), (o32, h32) = m64(x), m32(x.float())
    assert_close("output", o64, o32.double(), 1e-5)
    assert_close("h_n", h64, h32.double(), 1e-5)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("batched", [True, False])
def test_step_streams_forward(layers, batched):
    """Feeding a sequence through step() one input at a time gives forward()'s numbers."""
    torch.manual_seed(0)
    module = MinGRU(IN, H, layers, dtype=torch.float64)
    x = torch.randn(T, B, IN, dtype=torch.float64)
    hx = torch.randn(layers, B, H, dtype=torch.float64)
    if not batched:
        x, hx = x[:, 0], hx[:, 0]
    out, h_n = module(x, hx)
    h, outs = hx, []
    for t in range(T):
        o, h = module.step(x[t], h)
        outs.append(o)
    assert_close("output", out, torch.stack(outs), 1e-12)
    assert_close("h_n", h_n, h, 1e-12)
    o, h = module.step(x[0])  # no state: zeros
    assert_close("h0=None", module.step(x[0], torch.zeros_like(hx))[1], h, 0.0)


def test_cell_is_the_step():
    torch.manual_seed(0)
    module = MinGRU(IN, H, dtype=torch.float64)
    cell = MinGRUCell(IN, H, dtype=torch.float64)
    cell.load_state_dict({"weight_ih": module.weight_ih_l0, "bias_ih": module.bias_ih_l0})
    x = torch.randn(B, IN, dtype=torch.float64)
    h = torch.randn(B, H, dtype=torch.float64)
    assert_close("cell", _step(x, h, module.weight_ih_l0, module.bias_ih_l0), cell(x, h), 0.0)
    assert_close("step", module.step(x, h[None])[0], cell(x, h), 0.0)
    assert_close("unbatched", cell(x, h)[1], cell(x[1], h[1]), 1e-15)
    assert_close("no hx", cell(x, torch.zeros_like(h)), cell(x), 0.0)
    no_bias = MinGRUCell(IN, H, bias=False)
    assert no_bias.bias_ih is None and [n for n, _ in no_bias.named_parameters()] == ["weight_ih"]


def test_autocast_scans_in_the_state_dtype():
    torch.manual_seed(0)
    module = MinGRU(IN, H, 2)
    x = torch.randn(T, B, IN)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h_n = module(x)
    want, want_h = module(x)
    assert out.dtype == h_n.dtype == torch.float32
    assert_close("output", want, out, 0.05)
    assert_close("h_n", want_h, h_n, 0.05)
    cell, x = MinGRUCell(IN, H), torch.randn(B, IN)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = cell(x.bfloat16())  # a bf16 input, as an earlier autocast layer gives
    assert h.dtype == torch.float32
    assert_close("cell", cell(x), h, 0.05)


def test_parameters_and_state_dict():
    module = MinGRU(IN, H, 2, bidirectional=True)
    shapes = {n: tuple(p.shape) for n, p in module.named_parameters()}
    assert shapes == {
        "weight_ih_l0": (2 * H, IN), "bias_ih_l0": (2 * H,),
        "weight_ih_l0_reverse": (2 * H, IN), "bias_ih_l0_reverse": (2 * H,),
        "weight_ih_l1": (2 * H, 2 * H), "bias_ih_l1": (2 * H,),
        "weight_ih_l1_reverse": (2 * H, 2 * H), "bias_ih_l1_reverse": (2 * H,),
    }
    bound = 1 / math.sqrt(H)
    assert all(p.abs().max() <= bound for p in module.parameters())
    other = MinGRU(IN, H, 2, bidirectional=True)
    other.load_state_dict(module.state_dict())
    x = torch.randn(T, B, IN)
    for a, b in zip(module(x), other(x), strict=True):
        assert torch.equal(a, b)
    assert "bias" not in str(list(MinGRU(IN, H, bias=False).state_dict()))


def test_dropout_between_layers_in_training_only():
    torch.manual_seed(0)
    module = MinGRU(IN, H, 2, dropout=1.0, dtype=torch.float64)
    x = torch.randn(T, B, IN, dtype=torch.float64)
    hx = torch.randn(2, B, H, dtype=torch.float64)
    module.eval()
    assert_close("eval ignores dropout", _loop(module, x, [T] * B, hx)[0], module(x, hx)[0],
                 1e-12)
    module.train()
    top = MinGRU(H, H, dtype=torch.float64)  # layer 2 alone, fed the all-dropped layer 1
    top.load_state_dict({"weight_ih_l0": module.weight_ih_l1, "bias_ih_l0": module.bias_ih_l1})
    out, h_n = module(x, hx)
    want, want_h = top(torch.zeros(T, B, H, dtype=torch.float64), hx[1:])
    assert_close("output", want, out, 1e-12)
    assert_close("h_n of the last layer", want_h[0], h_n[1], 1e-12)
    assert_close("h_n of the first layer: no dropout", module(x, hx)[1][0], h_n[0], 0.0)


def _same_error(ours, theirs, call):
    """The same exception type and message as torch.nn.GRU / GRUCell, up to the name."""
    with pytest.raises(Exception) as want:
        call(theirs)
    with pytest.raises(type(want.value)) as got:
        call(ours)
    assert str(got.value).replace("MinGRU", "GRU") == str(want.value)


BAD_CALLS = {
    "input 4-D": lambda m: m(torch.randn(T, B, IN, 1)),
    "input size": lambda m: m(torch.randn(T, B, IN + 2)),
    "hx shape": lambda m: m(torch.randn(T, B, IN), torch.randn(1, B, H)),
    "hx batch": lambda m: m(torch.randn(T, B, IN), torch.randn(2, B + 1, H)),
    "hx dims batched": lambda m: m(torch.randn(T, B, IN), torch.randn(2, H)),
    "hx dims unbatched": lambda m: m(torch.randn(T, IN), torch.randn(2, B, H)),
    "unbatched hx shape": lambda m: m(torch.randn(T, IN), torch.randn(3, H)),
    "empty sequence": lambda m: m(torch.randn(0, B, IN)),
    "dtype": lambda m: m(torch.randn(T, B, IN, dtype=torch.float64)),
    "packed, hx 2-D": lambda m: m(nn.utils.rnn.pack_padded_sequence(
        torch.randn(T, B, IN), torch.tensor([T, 2, 1])), torch.randn(2, H)),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_errors_as_torch(case):
    _same_error(MinGRU(IN, H, 2), torch.nn.GRU(IN, H, 2), BAD_CALLS[case])


BAD_CELL_CALLS = {
    "input 3-D": lambda m: m(torch.randn(B, IN, 1)),
    "hidden 3-D": lambda m: m(torch.randn(B, IN), torch.randn(1, B, H)),
    "input size": lambda m: m(torch.randn(B, IN + 1)),
    "batch": lambda m: m(torch.randn(B, IN), torch.randn(B + 1, H)),
    "hidden size": lambda m: m(torch.randn(B, IN), torch.randn(B, H + 1)),
}


@pytest.mark.parametrize("case", list(BAD_CELL_CALLS))
def test_cell_errors_as_torch(case):
    _same_error(MinGRUCell(IN, H), torch.nn.GRUCell(IN, H), BAD_CELL_CALLS[case])


BAD_CONFIGS = {
    "dropout": dict(dropout=1.5),
    "hidden_size": dict(hidden_size=0),
    "num_layers": dict(num_layers=0),
    "bias": dict(bias=1),
    "batch_first": dict(batch_first="yes"),
    "input_size type": dict(input_size=2.0),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_config_errors_as_torch(case):
    args = dict(input_size=IN, hidden_size=H) | BAD_CONFIGS[case]
    _same_error(MinGRU, torch.nn.GRU, lambda cls: cls(**args))


def test_own_errors():
    with pytest.raises(ValueError, match="impl must be one of"):
        MinGRU(IN, H, impl="fast")
    with pytest.raises(RuntimeError, match="streams one direction"):
        MinGRU(IN, H, bidirectional=True).step(torch.randn(B, IN))
    with pytest.raises(RuntimeError, match="Expected hidden size"):
        MinGRU(IN, H, 2).step(torch.randn(B, IN), torch.randn(1, B, H))
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        MinGRU(IN, H, dropout=0.5)
    # where torch's matmul refuses mixed dtypes (a RuntimeError), these name what differs
    with pytest.raises(RuntimeError, match=r"hx dtype \(torch.float64\) does not match weight"):
        MinGRUCell(IN, H)(torch.randn(B, IN), torch.randn(B, H, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"hx dtype \(torch.float64\) does not match weight"):
        MinGRU(IN, H)(torch.randn(T, B, IN), torch.randn(1, B, H, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"input dtype \(torch.float64\) does not match"):
        MinGRUCell(IN, H)(torch.randn(B, IN, dtype=torch.float64))
    # torch's cell broadcasts (3,) against (4, 4) into a shape error, or indexes a (4,) hx
    with pytest.raises(RuntimeError, match="unbatched 1-D input, hx should also be 1-D"):
        MinGRUCell(IN, H)(torch.randn(IN), torch.randn(H, H))
    with pytest.raises(RuntimeError, match="batched 2-D input, hx should also be 2-D"):
        MinGRUCell(IN, H)(torch.randn(B, IN), torch.randn(H))


@pytest.mark.parametrize("sizes, rows", [([3, -1, 4], 6), ([1, 2, 3], 6), ([3, 2, 1], 9),
                                         ([3, 2], 4)],
                         ids=["negative", "increasing", "short of the rows", "past the rows"])
def test_malformed_packed_sequence_raises(sizes, rows):
    """batch_sizes that can't describe the data: GRU's RuntimeError, before torch's
    pad_packed_sequence (which aborts the process on a negative size) sees them."""
    packed = PackedSequence(torch.randn(rows, IN), torch.tensor(sizes))
    with pytest.raises(RuntimeError, match="batch_sizes must be non-negative, non-increasing"):
        MinGRU(IN, H)(packed)


def test_exported_and_repr():
    assert flashgru.MinGRU is MinGRU and "MinGRUCell" in flashgru.__all__
    want = "MinGRU(3, 4, num_layers=2, batch_first=True)"
    assert repr(MinGRU(IN, H, 2, batch_first=True)) == want


@pytest.mark.skipif(not FUSED_RUNS, reason="needs Triton (CUDA or TRITON_INTERPRET=1)")
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_fused_gate_scan_twice_differentiable(reverse, with_lengths):
    """Gradients of gradients through the fused kernels (a gradient penalty) are exact:
    the backward switches to differentiable torch ops under create_graph."""
    g = torch.Generator().manual_seed(3)
    p = torch.randn(6, 2, 6, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_()
    h0 = torch.randn(2, 3, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_()
    lengths = torch.tensor([6, 3]) if with_lengths else None
    torch.autograd.gradgradcheck(
        lambda p_, h_: flashgru._mingru_triton.gate_scan(p_, h_, lengths, reverse), (p, h0))


@pytest.mark.skipif(not FUSED_RUNS, reason="needs Triton (CUDA or TRITON_INTERPRET=1)")
@pytest.mark.parametrize("hx", ["none", "strided"])
def test_gradient_penalty_through_the_fused_path(hx):
    """A gradient penalty (create_graph=True) where h0 needs no gradient (no hx: zeros) or
    is a strided view: the same second derivatives as the torch path's."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 2, 3, generator=g, dtype=torch.float64).to(DEVICE)
    h = (torch.randn(1, 4, 2, generator=g, dtype=torch.float64).to(DEVICE)
         .transpose(1, 2).requires_grad_() if hx == "strided" else None)
    grads = []
    for impl in ("torch", "triton"):
        torch.manual_seed(0)
        m = MinGRU(3, 4, impl=impl, dtype=torch.float64).to(DEVICE)
        x_ = x.clone().requires_grad_()
        out, _ = m(x_, h)
        dx, = torch.autograd.grad(out.pow(2).sum(), x_, create_graph=True)
        leaves = [x_, *m.parameters(), *([h] if h is not None else [])]
        grads.append(torch.autograd.grad(dx.pow(2).sum(), leaves))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
