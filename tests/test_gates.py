"""GRU.gates(): shapes, agreement with forward, and the equations between the fields."""

import pytest
import torch
from helpers import FORMS, assert_close, make_input, padded

import flashgru


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("form", FORMS + ["batch_first"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_gates_agree_with_forward(reset_after, form, bidirectional):
    torch.manual_seed(0)
    batch_first = form == "batch_first"
    gru = flashgru.GRU(3, 4, 2, batch_first=batch_first, bidirectional=bidirectional,
                       reset_after=reset_after, dtype=torch.float64)
    x, lengths, _ = make_input("padded" if batch_first else form, 6, 5, 3, batch_first,
                               torch.float64)
    dirs = 1 + bidirectional
    h0 = torch.randn((2 * dirs,) + (() if form == "unbatched" else (5,)) + (4,),
                     dtype=torch.float64)
    out, h_n = gru(x, h0)
    g = gru.gates(x, h0)
    layout = {"unbatched": (6,), "batch_first": (5, 6)}.get(form, (6, 5))
    for name, value in g._asdict().items():
        assert value.shape == (2, dirs, *layout, 4), name
    last = torch.cat(list(g.h[-1]), dim=-1)  # the last layer's directions side by side
    assert_close("h vs output", padded(out), last, 1e-12)
    for name in ("r", "z"):
        value = getattr(g, name)
        assert value.min() >= 0 and value.max() <= 1, name
    assert g.n.abs().max() <= 1
    if lengths is not None:  # zero past each length, in the caller's batch order
        for b, length in enumerate(lengths.tolist()):
            assert g.z[:, :, length:, b].abs().sum() == 0
            assert g.z[:, :, :length, b].abs().min() > 0
    # the update rule h' = (1 - z) ⊙ n + z ⊙ h, forward direction of layer 0
    t_dim = 1 if batch_first else 0
    h_prev = torch.cat([h0[0].unsqueeze(t_dim), g.h[0, 0].narrow(t_dim, 0, 5)], dim=t_dim)
    expect = (1 - g.z[0, 0]) * g.n[0, 0] + g.z[0, 0] * h_prev
    if lengths is None:
        assert_close("update rule", g.h[0, 0], expect, 1e-12)
    # h_n is the state at each sequence's last step: forward direction of the last layer
    if lengths is None and form == "padded":
        assert_close("h_n", h_n[-dirs], g.h[-1, 0, -1], 1e-12)
        if bidirectional:
            assert_close("h_n reverse", h_n[-1], g.h[-1, 1, 0], 1e-12)


def test_gates_carry_gradients():
    gru = flashgru.GRU(3, 4)
    x = torch.randn(5, 2, 3, requires_grad=True)
    gru.gates(x).z.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
