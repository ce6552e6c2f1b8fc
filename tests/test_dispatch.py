"""The dispatch point: its rules, its reasons and its errors."""

import pytest
import torch
from helpers import assert_close

import flashgru
from flashgru.backends import BACKENDS, Backend, reference


def test_auto_rules():
    choice = flashgru.select_backend("auto", reset_after=False)
    assert choice.name == "reference" and "reset_after=False" in choice.reason
    assert flashgru.select_backend("auto", reset_after=True).name == "torch"
    assert "cuDNN" in flashgru.select_backend("auto", device="cuda", steps=512).reason
    long = flashgru.select_backend("auto", device="cuda", steps=65536)
    assert long.name == "torch" and "native CUDA" in long.reason
    assert "native" not in flashgru.select_backend("auto", device="cuda", steps=65535).reason


def test_requested_backend_is_honoured_or_refused():
    assert flashgru.select_backend("reference", reset_after=True) == ("reference", "requested")
    with pytest.raises(ValueError, match="backend 'torch' runs only reset_after=True"):
        flashgru.select_backend("torch", reset_after=False)
    with pytest.raises(ValueError, match="unknown backend 'triton'"):
        flashgru.select_backend("triton")


def test_unavailable_backend_names_what_to_install(monkeypatch):
    missing = Backend("fancy", "core", reference.core, True,
                      missing=lambda: "pip install 'flashgru[fancy]'")
    monkeypatch.setitem(BACKENDS, "fancy", missing)
    with pytest.raises(flashgru.BackendUnavailableError, match=r"pip install 'flashgru\[fancy\]'"):
        flashgru.GRU(3, 4, backend="fancy")


def test_module_reports_its_choice_and_uses_it(monkeypatch):
    gru = flashgru.GRU(3, 4, batch_first=True)
    assert gru.which_backend(torch.randn(2, 7, 3)).name == "torch"
    gru.reset_after = False
    assert gru.which_backend(torch.randn(7, 3)).name == "reference"
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
    for name in BACKENDS:
        gru.backend = name
        out = gru(x)
        assert_close(f"{name} output", auto[0], out[0], 1e-12)
        assert_close(f"{name} h_n", auto[1], out[1], 1e-12)
