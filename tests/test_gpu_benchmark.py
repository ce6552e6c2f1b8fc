"""benchmarks/gpu.py's fallbacks for a lent GPU (``restrict``): the splits a failed GPU
test leaves out of the grid are out of the defaults and of benchmark mode's candidates,
and nothing else is."""

import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from flashgru.backends import triton_gru as tg  # noqa: E402
from flashgru.backends._triton import splits  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def gpu_bench(monkeypatch):
    """benchmarks/gpu.py as a module, the functions its restrict() replaces (in
    _triton.splits and triton_gru) restored afterwards, and a 132-multiprocessor card for
    the split rules."""
    for name in ("_stacked_splits", "_narrow_where_set", "_chunked_where_set",
                 "_chunk_shape_where_set", "choose_config", "choose_backward_config",
                 "_crossed_splits", "CROSSED_DEFAULTS"):
        monkeypatch.setattr(splits, name, getattr(splits, name))
    monkeypatch.setattr(tg, "_candidates", tg._candidates)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: type("P", (), {"multi_processor_count": 132}))
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "benchmarks/gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _found(dtype=torch.bfloat16, hidden=512, forward=True):
    """The default and benchmark mode's candidates at B=16, without the crossed backward
    splits (their own flag's: test_crossed_left_out), the backward's default one-way."""
    cuda = torch.device("cuda")
    default = (splits.choose_config(16, hidden, cuda, dtype) if forward else
               splits.choose_backward_config(16, hidden, cuda, dtype, crossed=False))
    return default, [c for c in tg._candidates(default, 16, hidden, cuda, dtype, forward)
                     if c.k_blocks == 1]


def test_nothing_left_out(gpu_bench):
    gpu_bench.restrict(False, False, False, False)
    default, found = _found()
    assert default.stacked and default.narrow and default.prefetch  # (H=512's: 8 units)
    assert any(c.prefetch for c in found) and any(c.narrow for c in found[1:])
    assert any(c.dot and c.resident and not c.stacked for c in found)


@pytest.mark.parametrize("left_out", ["stacked", "narrow", "prefetch", "resident_dot"])
def test_each_left_out(gpu_bench, left_out):
    gpu_bench.restrict(*(name == left_out for name in
                         ("stacked", "narrow", "prefetch", "resident_dot")))
    for forward in (True, False):
        default, found = _found(forward=forward)
        others = found[1:]
        assert found[0] == default
        assert any(c.stacked for c in others) == (left_out != "stacked")
        assert any(c.prefetch for c in others) == (left_out != "prefetch")
        assert any(c.narrow for c in found) == (left_out != "narrow")
        if forward:
            assert any(c.dot and c.resident and not c.stacked for c in others) == (
                left_out != "resident_dot")
        # (bf16 H=1024's defaults: narrow, the forward's of 16 units, the backward's with
        # prefetch, each out of the default where its family is left out; without narrow,
        # the splits before it, as they were timed: 8 units, no prefetch)
        default, found = _found(hidden=1024, forward=forward)
        assert default.stacked == (left_out != "stacked")
        narrow = left_out not in ("stacked", "narrow")
        assert default.narrow == narrow
        assert default.prefetch == (not forward and narrow and left_out != "prefetch")
        if default.stacked:
            assert default.slice == (16 if forward and narrow else 8)
        assert found[0] == default


@pytest.mark.parametrize("left_out", ["chunked", "chunk_shapes", "permuted", "row_tiles"])
def test_fp32_candidates_left_out(gpu_bench, left_out):
    """fp32 at B=16, H=512: --no-chunked leaves out the chunked products (the default's
    too: the stacked split, as before chunked won), --no-chunk-shapes the chunked ones
    with unit_lanes or thread_units, --no-permuted the permuted exchanges, --no-row-tiles
    the 8- and 4-row tiles, each nothing else."""
    names = ("stacked", "narrow", "prefetch", "resident_dot", "chunked", "chunk_shapes",
             "permuted", "row_tiles")
    gpu_bench.restrict(*(name == left_out for name in names))
    for forward in (True, False):
        default, found = _found(torch.float32, forward=forward)
        others = found[1:]
        assert found[0] == default
        assert any(c.stacked for c in others) == forward  # (the backward's don't fit at H=512)
        assert any(c.chunked for c in others) == (left_out != "chunked")
        assert any((c.unit_lanes, c.thread_units) != (1, 1) for c in others) == (
            left_out not in ("chunked", "chunk_shapes"))
        assert any(c.chunked and (c.unit_lanes, c.thread_units) == (1, 1)
                   for c in others) == (left_out != "chunked")
        assert any(c.permuted for c in others) == (
            left_out not in ("permuted", "chunked", "chunk_shapes"))
        assert any(c.block_batch < 16 and c.chunked for c in others) == (
            left_out not in ("row_tiles", "chunked", "chunk_shapes"))
        assert any(c.block_batch < 16 and c.permuted for c in others) == (
            left_out not in ("row_tiles", "permuted", "chunked", "chunk_shapes"))
        assert any(c.prefetch for c in others)
        assert default.chunked == (left_out != "chunked")
        # (H=512's backward default is 4-row tiles: without them, the 16-row tile unshaped)
        assert ((default.unit_lanes, default.thread_units) != (1, 1)) == (
            left_out not in ("chunked", "chunk_shapes") and
            not (left_out == "row_tiles" and not forward))
        assert default.stacked == (forward and left_out == "chunked")
    cuda = torch.device("cuda")  # (batch 8, H=1024: W resident and chunked, else streamed)
    assert tg.choose_config(8, 1024, cuda, torch.float32).resident == (left_out != "chunked")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tf32x3_beside(gpu_bench, monkeypatch, dtype):
    """--tf32x3-beside: an fp32 point's row has flashgru timed once more with its GEMMs
    as three TF32 ones (tf32x3.enabled during those timings alone, restored after), its
    errors too, and the line names them; other dtypes get no such run. (On the CPU, the
    timer replaced by one that records the flag.)"""
    from flashgru.backends import tf32x3

    flags = []
    monkeypatch.setattr(gpu_bench, "timed", lambda fn: (fn(), flags.append(tf32x3.enabled),
                                                         2.0 if tf32x3.enabled else 4.0)[2])
    torch.manual_seed(0)
    ref = torch.nn.GRU(8, 8, dtype=dtype)
    x = torch.randn(5, 3, 8, dtype=dtype)
    row = gpu_bench.compare(ref, x, "reference", tf32x3_beside=True)
    assert tf32x3.enabled is False
    fp32 = dtype == torch.float32
    assert flags == [False] * 4 + [True] * 2 * fp32  # (torch, flashgru: fwd, fb each)
    assert ("fwd_tf32x3" in row) == ("fb_tf32x3" in row) == ("err_dx_tf32x3" in row) == fp32
    row.update(T=5, H=8, B=3, dtype="float32")
    line = gpu_bench._line(row)
    assert row.get("tf32x3_way") == ("kernel" if fp32 else None)  # (tf32x3.WAY: named)
    assert ("| tf32x3 GEMMs (kernel) fwd 400.00 ×2.00 (×2.00 ours) f+b 400.00 ×2.00 (×2.00 "
            "ours)" in line) == fp32
    if fp32:  # (the reference backend's GEMMs are torch's: the same numbers either way)
        assert row["err_tf32x3"] == pytest.approx(row["err_flashgru"], rel=1e-3)


def test_overlap_beside(gpu_bench, monkeypatch):
    """--overlap-beside: an fp32 row has flashgru timed three times more, with the GEMMs
    beside the recurrence (triton_gru.overlap True during those timings alone, restored
    after), then the forward's alone (FORWARD), then with the projection inside the
    forward kernel (triton_gru.project), beside --tf32x3-beside's run, each under its own
    setting alone; the line names each."""
    from flashgru.backends import tf32x3

    flags = []

    def timed(fn):
        fn()
        flags.append((tf32x3.enabled, tg.overlap, tg.project))
        return 2.0 if tf32x3.enabled else 1.0 if tg.overlap is True else \
            0.5 if tg.overlap else 0.25 if tg.project else 4.0

    monkeypatch.setattr(gpu_bench, "timed", timed)
    torch.manual_seed(0)
    row = gpu_bench.compare(torch.nn.GRU(8, 8), torch.randn(5, 3, 8), "reference",
                            tf32x3_beside=True, overlap_beside=True)
    assert tf32x3.enabled is False and tg.overlap is False and tg.project is False
    assert flags == [(False, False, False)] * 4 + [(True, False, False)] * 2 + \
        [(False, True, False)] * 2 + [(False, tg.FORWARD, False)] * 2 + \
        [(False, False, True)] * 2
    row.update(T=5, H=8, B=3, dtype="float32")
    line = gpu_bench._line(row)
    assert "| tf32x3 GEMMs (kernel) fwd 400.00 ×2.00 (×2.00 ours)" in line
    assert f"| GEMMs beside fwd 200.00 ×4.00 (×4.00 ours) f+b 200.00 ×4.00 (×4.00 ours) " \
        f"err {row['err_overlap']:.1e} dx {row['err_dx_overlap']:.1e}" in line
    assert "| forward's alone fwd 100.00 ×8.00 (×8.00 ours) f+b 100.00 ×8.00 " \
        f"(×8.00 ours) err {row['err_overlap_forward']:.1e} dx " \
        f"{row['err_dx_overlap_forward']:.1e}" in line
    assert line.endswith("| projection inside fwd 50.00 ×16.00 (×16.00 ours) f+b 50.00 "
                         f"×16.00 (×16.00 ours) err {row['err_project']:.1e} dx "
                         f"{row['err_dx_project']:.1e}")


def test_points_in_the_order_given(gpu_bench):
    """--points DTYPE:H:B ... gives the grid's points in that order; without it, every
    dtype, H and B; a malformed point is argparse's error, not a grid that skips it."""
    given = [gpu_bench.point(p) for p in ("bfloat16:1024:16", "float32:512:16")]
    assert gpu_bench.points_of(["float32"], [256], [1], given) == [
        (torch.bfloat16, 1024, 16), (torch.float32, 512, 16)]
    assert gpu_bench.points_of(["float32", "bfloat16"], [512, 1024], [16]) == [
        (torch.float32, 512, 16), (torch.float32, 1024, 16), (torch.bfloat16, 512, 16),
        (torch.bfloat16, 1024, 16)]
    for bad in ("float32:512", "nn:512:16", "float32:0:16", "float32:a:16", "float64:8:1"):
        with pytest.raises(gpu_bench.argparse.ArgumentTypeError, match="DTYPE:H:B"):
            gpu_bench.point(bad)


def test_a_failed_tf32x3_run_costs_its_columns_alone(gpu_bench, monkeypatch):
    """An exception in the tf32x3 run (never yet run on a GPU) is the row's
    tf32x3_error, named in its line; the torch and flashgru columns stand, and the flag
    is restored."""
    from flashgru.backends import tf32x3

    def timed(fn):
        if tf32x3.enabled:
            raise RuntimeError("no TF32 here")
        fn()
        return 4.0

    monkeypatch.setattr(gpu_bench, "timed", timed)
    torch.manual_seed(0)
    row = gpu_bench.compare(torch.nn.GRU(8, 8), torch.randn(5, 3, 8), "reference",
                            tf32x3_beside=True)
    assert tf32x3.enabled is False
    assert row["tf32x3_error"] == "RuntimeError: no TF32 here"
    assert row["fwd_flashgru"] == row["fb_torch"] == 4.0 and "fwd_tf32x3" not in row
    row.update(T=5, H=8, B=3, dtype="float32")
    assert gpu_bench._line(row).endswith("| tf32x3 GEMMs failed: RuntimeError: no TF32 here")


@pytest.mark.parametrize("left_out", ["prefetch", "permuted", "row_tiles", None])
def test_flags_take_permuted_and_prefetch_out_of_the_defaults(gpu_bench, monkeypatch,
                                                              left_out):
    """Where a default is permuted or prefetches (SPREAD_CHUNK_DEFAULTS can say so, and
    two 8-row tiles), --no-permuted and --no-prefetch take that out of the forward's and
    the backward's defaults, and nothing else; --no-row-tiles gives a default of 8-row
    tiles back its 16-row spread split, unshaped."""
    monkeypatch.setitem(splits.SPREAD_CHUNK_DEFAULTS, (4, 512, 4, True), dict(
        block_batch=8, slice=8, unit_lanes=8, thread_units=1, permuted=True, prefetch=True))
    monkeypatch.setitem(splits.SPREAD_CHUNK_DEFAULTS, (4, 512, 4, False), dict(
        unit_lanes=4, thread_units=1, permuted=True, prefetch=True))
    names = ("stacked", "narrow", "prefetch", "resident_dot", "chunked", "chunk_shapes",
             "permuted", "row_tiles")
    gpu_bench.restrict(*(name == left_out for name in names))
    cuda = torch.device("cuda")
    spread = tg.Config(16, 4, 512, dot=False, resident=True, chunked=True)
    shaped = spread._replace(permuted=left_out != "permuted",
                             prefetch=left_out != "prefetch")
    assert splits.choose_config(16, 512, cuda, torch.float32, True) == (
        spread if left_out == "row_tiles" else
        shaped._replace(block_batch=8, slice=8, unit_lanes=8))
    assert splits.choose_backward_config(12, 512, cuda, torch.float32) == shaped._replace(
        unit_lanes=4)


@pytest.mark.parametrize("left_out", ["crossed", "chunked", "prefetch", "stacked", None])
def test_crossed_left_out(gpu_bench, left_out):
    """--no-crossed takes the crossed backward splits (Config.k_blocks) out of benchmark
    mode's candidates and nothing else; --no-chunked takes the chunked ones out too,
    --no-prefetch those with prefetch alone; --no-stacked (the one-way stacked splits')
    none."""
    names = (*gpu_bench.LEAVE_OUT,)
    splits.CROSSED_DEFAULTS = {}  # (the candidates around the one-way default; the
    # fixture restores it; test_crossed_defaults_left_out: the crossed defaults)
    gpu_bench.restrict(*(name.replace("-", "_") == left_out for name in names))
    cuda = torch.device("cuda")
    default = splits.choose_backward_config(16, 1024, cuda, torch.float32)
    found = tg._candidates(default, 16, 1024, cuda, torch.float32, False)
    crossed = [c for c in found if c.k_blocks != 1]
    assert crossed == [c for c in splits._crossed_splits(1024, torch.float32)
                       if left_out in (None, "stacked") or
                       (left_out == "chunked" and not c.chunked) or
                       (left_out == "prefetch" and not c.prefetch)]
    assert any(c.stacked for c in crossed) == (left_out != "crossed")
    assert any(c.prefetch for c in found[1:]) == (left_out != "prefetch")
    assert any(c.chunked and c.k_blocks == 1 for c in found) == (left_out != "chunked")


@pytest.mark.parametrize("left_out", ["crossed", "chunked", "chunk-shapes", "stacked",
                                      "prefetch", None])
def test_crossed_defaults_left_out(gpu_bench, left_out):
    """With crossed splits made defaults (splits.CROSSED_DEFAULTS), --no-crossed makes the
    backward's default the one-way split again; --no-chunked and --no-chunk-shapes do so
    for a chunked crossed default (a stacked one stays); --no-stacked (the one-way
    stacked splits') leaves both; --no-prefetch takes prefetch off the default."""
    cuda = torch.device("cuda")
    stacked = ("stacked", splits.CROSSED_STACKED[1024][1])  # (with prefetch)
    chunked = ("chunked", splits.CROSSED_SPLITS[512][0])
    splits.CROSSED_DEFAULTS = {("fp32", 1024): stacked, ("fp32", 512): chunked}
    gpu_bench.restrict(*(name.replace("-", "_") == (left_out or "").replace("-", "_")
                         for name in gpu_bench.LEAVE_OUT))
    got = {h: splits.choose_backward_config(16, h, cuda, torch.float32) for h in (512, 1024)}
    # (the one-way defaults, as the flags leave them)
    one_way = {h: splits.choose_backward_config(16, h, cuda, torch.float32, crossed=False)
               for h in (512, 1024)}
    keep_stacked = left_out != "crossed"
    keep_chunked = left_out not in ("crossed", "chunked", "chunk-shapes")
    want_1024 = splits._crossed_split(1024, stacked) if keep_stacked else one_way[1024]
    want_512 = splits._crossed_split(512, chunked) if keep_chunked else one_way[512]
    if left_out == "prefetch":
        want_1024 = want_1024._replace(prefetch=False)
        want_512 = want_512._replace(prefetch=False)
    assert got == {512: want_512, 1024: want_1024}
