"""The cpu backend at batch 1 with its hidden units over several threads
(``flashgru.backends._cpu_units``): the same numbers as the reference, forward, backward
and inference, both formulations, lengths, unaligned unit ranges and more parts than
cores; the meeting points; and every way it must fall back or stop instead of hanging."""

import os
import sys

import numpy as np
import pytest
import torch
from helpers import BACKENDS, assert_close, check_core, core_inputs, in_forked_child

import flashgru
from flashgru.backends import _cpu_kernels, _cpu_units, cpu, reference

pytestmark = pytest.mark.skipif("cpu" not in BACKENDS, reason="needs numba and SciPy")
needs_team = pytest.mark.skipif(cpu._OPENMP is None or cpu._MKL_LOCAL is None,
                                reason="needs torch's OpenMP team and MKL")


def _spy_units(monkeypatch, parts):
    """Split every call into ``parts`` unit ranges (unless the caller fixed its parts);
    returns the list that records whether each split call ran."""
    monkeypatch.setattr(cpu, "_unit_parts",
                        lambda batch, hidden, steps, fixed: parts if fixed is None else 1)
    ran, real = [], cpu._run_units
    monkeypatch.setattr(cpu, "_run_units", lambda *a: ran.append(real(*a)) or ran[-1])
    return ran


@needs_team
@pytest.mark.parametrize("parts", [2, 3])
@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("lengths", [None, [5], [1], [7, 3, 5], [6, 6, 2]],
                         ids=["full", "length-5", "length-1", "3-rows", "3-rows-short"])
def test_units_over_threads_match_reference(parts, reset_after, dtype, lengths, monkeypatch):
    """H=40 splits into units 0-16 | 16-40 (2 parts) or 0-16 | 16-32 | 32-40 (3 parts,
    more threads than this machine's cores: the waits give their core away); one row or
    three, every step or fewer, lengths in any order."""
    ran = _spy_units(monkeypatch, parts)
    g = torch.Generator().manual_seed(2)
    steps, hidden, batch = 7, 40, 1 if lengths is None else len(lengths)
    gi, h0, w, b = core_inputs(g, steps, batch, hidden, dtype)
    lens = None if lengths is None else torch.tensor(lengths)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    check_core(cpu.core, reference.core, g, gi, h0, w, b, lens, reset_after, tol, tol * 10)
    assert ran == [True] * 3  # forward, backward, inference


def test_unit_ranges_are_aligned_and_cover_the_units():
    for hidden in (5, 32, 40, 128, 200, 256, 1000):
        for parts in (2, 3, 4):
            ranges = _cpu_units.unit_ranges(hidden, parts)
            assert ranges[0][0] == 0 and ranges[-1][1] == hidden and len(ranges) == parts
            assert all(a < b for a, b in ranges)
            assert all(b == c for (_, b), (c, _) in zip(ranges, ranges[1:], strict=False))
            if parts * _cpu_units.UNIT_ALIGN <= hidden:  # as _unit_parts splits
                assert all(a % _cpu_units.UNIT_ALIGN == 0 for a, _ in ranges)
    assert _cpu_units.unit_ranges(256, 2) == [(0, 128), (128, 256)]


def test_meeting_points():
    """_meet waits for every other part's count (never its own) and answers False once
    a part has given up."""
    sync = _cpu_units.sync_for(3)
    _cpu_kernels._arrive(sync, 1, 4)
    _cpu_kernels._arrive(sync, 2, 5)
    assert _cpu_kernels._meet(sync, 0, 3, 4)
    _cpu_kernels._arrive(sync, 0, 9)
    assert _cpu_kernels._meet(sync, 1, 3, 5)  # parts 0 and 2 at 9 and 5
    _cpu_kernels._give_up(sync, 3)
    assert _cpu_kernels._meet(sync, 1, 3, 6) is False  # part 2 is at 5: would wait
    assert list(sync[::8]) == [9, 4, 5, 1]


@needs_team
@pytest.mark.parametrize("hidden", [128, 127], ids=["split", "too-few-units"])
def test_units_by_default_at_batch_one(hidden, monkeypatch):
    """Where torch has more than one thread, a call of ≤ UNITS_MAX_BATCH rows, ≥
    UNITS_MIN_HIDDEN units and ≥ UNITS_MIN_STEPS steps splits its units (not with more
    rows or fewer steps, nor where the caller fixed its parts, nor with one thread): the
    module against torch.nn.GRU, outputs and every gradient."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    steps = cpu.UNITS_MIN_STEPS
    assert (cpu.UNITS_MIN_HIDDEN, cpu.UNITS_MAX_BATCH, steps) == (128, 1, 64)
    assert cpu._unit_parts(1, hidden, steps, None) == (2 if hidden == 128 else 1)
    assert cpu._unit_parts(cpu.UNITS_MAX_BATCH + 1, 128, steps, None) == 1
    assert cpu._unit_parts(1, 128, steps - 1, None) == 1
    assert cpu._unit_parts(1, 128, steps, 1) == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)  # ≥ UNITS_PER_PART units each
    assert [cpu._unit_parts(1, h, steps, None) for h in (128, 255, 256, 1024)] == [2, 3, 4, 8]
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    ran, real = [], cpu._run_units
    monkeypatch.setattr(cpu, "_run_units", lambda *a: ran.append(real(*a)) or ran[-1])
    torch.manual_seed(0)
    gru = flashgru.GRU(5, hidden, backend="cpu")
    ref = gru.to_torch()
    x = torch.randn(steps, 1, 5, requires_grad=True)
    out, h_n = gru(x)
    ref_out, ref_h = ref(x)
    assert_close("out", ref_out, out, 1e-5)
    assert_close("h_n", ref_h, h_n, 1e-5)
    for name, r, o in zip(("x", *dict(ref.named_parameters())),
                          torch.autograd.grad((ref_out.sum(), ref_h.sum()), (x, *ref.parameters())),
                          torch.autograd.grad((out.sum(), h_n.sum()), (x, *gru.parameters())),
                          strict=True):
        assert_close(name, r, o, 1e-5, rtol=1e-5)
    assert ran == ([True] * 2 if hidden == 128 else [])
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert cpu._unit_parts(1, 128, steps, None) == 1


@needs_team
def test_units_run_in_one_part_inside_another_team(monkeypatch):
    """Inside a thread of a running team (nested OpenMP gives a team of one) the parts
    could not run at once: none runs, NotAtOnce, and the call runs in one part instead."""
    ran = _spy_units(monkeypatch, 2)
    g = torch.Generator().manual_seed(4)
    gi, h0, w = (torch.randn(*s, generator=g, dtype=torch.float64)
                 for s in ((6, 1, 48), (1, 16), (48, 16)))
    want = reference.core(gi, h0, w, None, None, True)
    started = []

    def nested_directly():
        with pytest.raises(cpu.NotAtOnce):
            cpu._together([lambda: started.append(0), lambda: started.append(1)],
                          at_once=True)
        return cpu.core(gi, h0, w, None, None, True)

    got, _ = cpu._together([nested_directly, lambda: None])
    assert_close("out", want, got, 1e-12)
    assert started == [] and ran == [False]
    monkeypatch.setattr(cpu, "_OPENMP", None)
    with pytest.raises(cpu.NotAtOnce):
        cpu._together([lambda: started.append(0), lambda: None], at_once=True)
    assert started == []


@needs_team
def test_a_failing_unit_part_stops_the_others():
    """A part that raises tells the others to stop waiting for it: they return False, and
    the error is raised once all have ended (no hang)."""
    steps, hidden = 6, 32
    arrays = [np.zeros(s) for s in ((steps, 1, 3 * hidden), (1, hidden), (3 * hidden, hidden),
                                    (3 * hidden,))]
    out = np.zeros((steps, 1, hidden))
    saved = [np.zeros((steps, 1, hidden)) for _ in range(4)]
    returned = []

    def kernel(*args):
        part = args[-4]
        if part == 1:
            raise ValueError("part 1 failed")
        returned.append(_cpu_units._fwd_after(*args))

    lengths = np.full(1, steps, dtype=np.int64)
    tasks = _cpu_units.tasks(kernel, (*arrays, lengths, out, *saved), hidden, 2)
    with pytest.raises(ValueError, match="part 1 failed"):
        cpu._together(tasks, at_once=True)
    assert returned == [False]


def _units_in_child(queue):
    # (the core alone, its input projection made before the fork: torch's own MKL GEMM
    # can hang in a forked child once the parent has run a threaded one, measured with
    # plain torch on an AMD EPYC host; torch's DataLoader workers set one thread for it)
    gi, h0, w_hh, b_hh, want = _FORK_PROBLEM
    with torch.no_grad():
        got = cpu.core(gi, h0, w_hh, b_hh, None, True)
    queue.put((cpu._unit_parts(1, 128, cpu.UNITS_MIN_STEPS, None), torch.equal(got, want)))


_FORK_PROBLEM = ()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_units_after_a_fork(monkeypatch):
    """A forked child has no OpenMP team: its batch-1 calls run in one part (the parent's
    split its units), with the parent's numbers, and never wait for the parent's team."""
    torch.manual_seed(0)
    gi = torch.randn(cpu.UNITS_MIN_STEPS, 1, 384)
    h0, w_hh, b_hh = torch.randn(1, 128), torch.randn(384, 128) * 0.1, torch.randn(384)
    with torch.no_grad():
        want = cpu.core(gi, h0, w_hh, b_hh, None, True)
    parent = cpu._unit_parts(1, 128, cpu.UNITS_MIN_STEPS, None)
    assert parent == min(torch.get_num_threads(), 128 // cpu.UNITS_PER_PART) or \
        cpu._OPENMP is None or cpu._MKL_LOCAL is None
    monkeypatch.setattr(sys.modules[__name__], "_FORK_PROBLEM", (gi, h0, w_hh, b_hh, want))
    assert in_forked_child(_units_in_child) == (1, True)
