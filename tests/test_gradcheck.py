"""gradcheck and gradgradcheck in float64 for both formulations, GRU and GRUCell, on every
backend that claims them (the torch backend's CPU kernels are composite, so they qualify)."""

import pytest
import torch
from helpers import BACKENDS, BACKENDS_DOUBLE_BACKWARD, make_input, padded
from torch.autograd import gradcheck, gradgradcheck

import flashgru


def _backends(reset_after):
    return [n for n in BACKENDS if reset_after or flashgru.BACKENDS[n].reset_before]


def _gru_fn(gru, form, x_like):
    names = [n for n, _ in gru.named_parameters()]

    def fn(x, h0, *params):
        out = torch.func.functional_call(gru, dict(zip(names, params, strict=True)),
                                         (x_like(x), h0))
        return padded(out[0]), out[1]

    return fn, [p.detach().clone().requires_grad_() for p in gru.parameters()]


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("form", ["padded", "packed_unsorted"])
def test_gru_gradcheck(reset_after, form):
    for backend in _backends(reset_after):
        torch.manual_seed(0)
        gru = flashgru.GRU(3, 2, 2, bidirectional=True, reset_after=reset_after,
                           backend=backend, dtype=torch.float64)
        _, lengths, x = make_input(form, 4, 3, 3, False, torch.float64)
        x = x.detach().requires_grad_()

        def x_like(x, lengths=lengths):
            if lengths is None:
                return x
            return torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)

        h0 = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
        fn, params = _gru_fn(gru, form, x_like)
        assert gradcheck(fn, (x, h0, *params), fast_mode=True), backend
        if backend in BACKENDS_DOUBLE_BACKWARD:
            assert gradgradcheck(fn, (x, h0, *params), fast_mode=True), backend
        else:
            with pytest.raises(RuntimeError, match=f"backend '{backend}' has no double backward"):
                gradgradcheck(fn, (x, h0, *params), fast_mode=True)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_cell_gradcheck(reset_after, bias):
    torch.manual_seed(0)
    cell = flashgru.GRUCell(3, 4, bias=bias, reset_after=reset_after, dtype=torch.float64)
    names = [n for n, _ in cell.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in cell.parameters()]
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)

    def fn(x, h, *params):
        return torch.func.functional_call(cell, dict(zip(names, params, strict=True)), (x, h))

    assert gradcheck(fn, (x, h, *params))
    assert gradgradcheck(fn, (x, h, *params))


@pytest.mark.parametrize("bidirectional", [False, True], ids=["one-way", "bidirectional"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_gradients(backend, bidirectional):
    """Batched gradients (autograd.grad with is_grads_batched=True, which jacobian and
    hessian with vectorize=True use): torch.nn.GRU's numbers where the backward is
    differentiable torch ops; a fused backend's hand-written backward refuses them, saying
    which backend does them (it met an internal batching error before)."""
    torch.manual_seed(0)
    ref = torch.nn.GRU(3, 4, bidirectional=bidirectional, dtype=torch.float64)
    gru = flashgru.GRU.from_torch(ref, backend=backend)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    want = torch.autograd.functional.jacobian(lambda x_: ref(x_)[1], x, vectorize=True)
    if backend in BACKENDS_DOUBLE_BACKWARD:
        got = torch.autograd.functional.jacobian(lambda x_: gru(x_)[1], x, vectorize=True)
        torch.testing.assert_close(got, want)
    else:
        with pytest.raises(RuntimeError, match=f"backend '{backend}' has no batched backward"
                                               ".*use backend='reference'"):
            torch.autograd.functional.jacobian(lambda x_: gru(x_)[1], x, vectorize=True)
