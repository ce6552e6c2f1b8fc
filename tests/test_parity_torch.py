"""flashgru.GRU against torch.nn.GRU with shared weights: outputs, h_n and every gradient,
over layers × directions × batch_first × bias × input form × h0 × awkward sizes."""

import itertools

import pytest
import torch
from helpers import BACKENDS, FORMS, assert_close, make_input, padded

import flashgru

SIZES = [(1, 3, 4, 1), (6, 2, 3, 13), (5, 4, 1, 6)]  # (T, B, I, H)


def _cases():
    for layers, bi, bf, bias, form, h0, size in itertools.product(
        [1, 2, 3], [False, True], [False, True], [True, False], FORMS, [False, True], SIZES
    ):
        if form.startswith("packed") and bf:
            continue  # a PackedSequence has no batch_first; covered by bf=False
        yield layers, bi, bf, bias, form, h0, size


def _ids(case):
    layers, bi, bf, bias, form, h0, size = case
    shape = "x".join(map(str, size))
    return f"L{layers}-{'bi' if bi else 'uni'}-{'bf' if bf else 'tf'}-" \
           f"{'bias' if bias else 'nobias'}-{form}-{'h0' if h0 else 'noh0'}-{shape}"


def run_pair(backend, layers, bi, bf, bias, form, with_h0, size, dtype, seed=0, device="cpu"):
    """Run torch.nn.GRU and flashgru.GRU on the same weights and input; return both
    results and gradients by name."""
    steps, batch, isz, hsz = size
    torch.manual_seed(seed)
    ref = torch.nn.GRU(isz, hsz, layers, bias=bias, batch_first=bf, bidirectional=bi,
                       dtype=dtype, device=device)
    ours = flashgru.GRU.from_torch(ref, backend=backend)
    results = []
    for module in (ref, ours):
        x, lengths, leaf = make_input(form, steps, batch, isz, bf, dtype, seed, device)
        h_shape = (layers * (1 + bi),) + (() if form == "unbatched" else (batch,)) + (hsz,)
        h0 = torch.randn(h_shape, dtype=dtype, generator=torch.Generator().manual_seed(seed + 1))
        h0 = h0.to(device).requires_grad_() if with_h0 else None
        out, h_n = module(x, h0)
        out = padded(out)
        g = torch.Generator().manual_seed(seed + 2)
        loss = (out * torch.randn(out.shape, generator=g, dtype=dtype).to(device)).sum() + \
               (h_n * torch.randn(h_n.shape, generator=g, dtype=dtype).to(device)).sum()
        loss.backward()
        grads = {"dx": leaf.grad}
        if with_h0:
            grads["dh0"] = h0.grad
        grads.update({"d" + n: p.grad for n, p in module.named_parameters()})
        results.append((out, h_n, grads))
    return results


def assert_pair_close(pair, tol: float, grad_rtol: float = 0.0) -> None:
    """run_pair's two results agree: output, h_n and every gradient, by name."""
    (o_ref, h_ref, g_ref), (o, h, g) = pair
    assert_close("output", o_ref, o, tol)
    assert_close("h_n", h_ref, h, tol)
    assert g_ref.keys() == g.keys()
    for name in g_ref:
        assert_close(name, g_ref[name], g[name], tol, rtol=grad_rtol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(_cases()), ids=_ids)
def test_float64_matches_torch(backend, case):
    assert_pair_close(run_pair(backend, *case, torch.float64), 1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("size", [(1, 2, 3, 1), (9, 3, 5, 13), (16, 4, 8, 32)])
def test_float32_matches_torch(backend, form, size):
    (o_ref, h_ref, g_ref), (o, h, g) = run_pair(backend, 2, True, False, True, form, True,
                                                size, torch.float32)
    assert_close("output", o_ref, o, 1e-5)
    assert_close("h_n", h_ref, h, 1e-5)
    for name in g_ref:
        assert_close(name, g_ref[name], g[name], 1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_batch_size_zero(backend, batch_first):
    """Empty results of torch's shapes, still connected to autograd: backward gives torch's
    (zero) gradients."""
    ref = torch.nn.GRU(3, 4, 2, batch_first=batch_first, bidirectional=True)
    ours = flashgru.GRU.from_torch(ref, backend=backend)
    x = torch.randn((0, 5, 3) if batch_first else (5, 0, 3))
    (o_ref, h_ref), (o, h) = ref(x), ours(x)
    assert o.shape == o_ref.shape and h.shape == h_ref.shape
    for module in (ref, ours):
        xs = x.clone().requires_grad_()
        out, h_n = module(xs)
        (out.sum() + h_n.sum()).backward()
        assert xs.grad.shape == x.shape
    for (name, p_ref), p in zip(ref.named_parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(p.grad, p_ref.grad, msg=name)


def test_dropout_masks_match_torch_on_cpu():
    """Same seed, same masks: dropout is drawn on the tensor torch draws it on."""
    ref = torch.nn.GRU(3, 5, 3, dropout=0.5, bidirectional=True, dtype=torch.float64)
    for backend in ("reference", "torch"):
        ours = flashgru.GRU.from_torch(ref, backend=backend)
        for form in ("padded", "packed_unsorted"):
            x, _, _ = make_input(form, 6, 4, 3, False, torch.float64)
            torch.manual_seed(7)
            o_ref, h_ref = ref(x)
            torch.manual_seed(7)
            o, h = ours(x)
            assert_close(f"{backend}/{form} output", padded(o_ref), padded(o), 1e-12)
            assert_close(f"{backend}/{form} h_n", h_ref, h, 1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("where, value", [("hx", float("inf")), ("hx", -float("inf")),
                                          ("hx", float("nan")), ("input", float("inf"))])
@pytest.mark.parametrize("batch, steps", [(1, 6), (3, 6), (3, 1)])
def test_non_finite_values_give_torchs_numbers(backend, where, value, batch, steps):
    """An inf or NaN in hx or the input: torch's NaNs, infs and finite numbers in the
    output, h_n and every gradient, with and without autograd (the inference paths
    differ). (An inf state meets a gate of exactly 0 or 1: 0 · inf = NaN as in torch, not
    a finite number from a gate's exp that stops short of 0.)"""
    torch.manual_seed(0)
    ref = torch.nn.GRU(4, 5, dtype=torch.float64)
    ours = flashgru.GRU.from_torch(ref, backend=backend)
    x = torch.randn(steps, batch, 4, dtype=torch.float64)
    hx = torch.randn(1, batch, 5, dtype=torch.float64)
    (hx if where == "hx" else x)[0, batch - 1, 1] = value
    with torch.no_grad():
        for got, want in zip(ours(x, hx), ref(x, hx), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, equal_nan=True)
    results = []
    for module in (ref, ours):
        xs, hs = x.clone().requires_grad_(), hx.clone().requires_grad_()
        out, h_n = module(xs, hs)
        loss = (out * out).sum() + (h_n ** 3).sum()
        results.append([out, h_n, *torch.autograd.grad(loss, [xs, hs, *module.parameters()])])
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, equal_nan=True)


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("batch", [None, 1, 3], ids=["unbatched", "B1", "B3"])
def test_cell_with_a_non_finite_state_gives_torchs_numbers(value, dtype, batch):
    """GRUCell's inference step kernel (and its ordinary path) on an inf or NaN in hx."""
    torch.manual_seed(0)
    ref = torch.nn.GRUCell(4, 5, dtype=dtype)
    ours = flashgru.GRUCell(4, 5, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    shape = (batch,) if batch else ()
    x, hx = torch.randn(*shape, 4, dtype=dtype), torch.randn(*shape, 5, dtype=dtype)
    hx[..., 1] = value
    with torch.no_grad():
        torch.testing.assert_close(ours(x, hx), ref(x, hx), equal_nan=True)
    torch.testing.assert_close(ours(x, hx.requires_grad_()), ref(x, hx), equal_nan=True)
