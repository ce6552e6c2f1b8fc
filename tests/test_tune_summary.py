"""scripts/tune_summary.py: benchmark mode's timings from benchmarks/gpu.py's JSON, the
default against the fastest candidate for each grid point and kind of call."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import tune_summary  # noqa: E402

import flashgru.backends.triton_gru as tg  # noqa: E402

DEFAULT = str(tuple(tg.Config(16, 2, 256, False, resident=True)))
STACKED = str(tuple(tg.Config(16, 16, 256, True, resident=True, stacked=True)))
ROW = {"dtype": "float32", "H": 256, "B": 16, "timed": {
    "forward(True, False)": {"default": DEFAULT,
                             "us_per_step": {DEFAULT: 5.5, STACKED: 2.2}},
    "backward(True,)": {"default": DEFAULT, "us_per_step": {}}}}


def test_the_fastest_against_the_default():
    lines = tune_summary.summarize([ROW, {"dtype": "bfloat16", "H": 512, "B": 1}])
    assert lines == [" float32 H=256   B=16  forward(True, False)   default "
                     "(16, 2, 256, bcast, 4w resident) 5.50 | fastest "
                     "(16, 16, 256, dot, 4w resident stacked) 2.20 ×2.50"]


def test_every_candidate_and_a_default_left_out(tmp_path):
    row = json.loads(json.dumps(ROW))
    del row["timed"]["forward(True, False)"]["us_per_step"][DEFAULT]  # (failed: not timed)
    path = tmp_path / "tune.json"
    path.write_text(json.dumps({"grid": [row]}))
    done = subprocess.run([sys.executable, str(ROOT / "scripts/tune_summary.py"), str(path),
                           "--all"], capture_output=True, text=True, check=True)
    assert "default (16, 2, 256, bcast, 4w resident) not timed | fastest " \
           "(16, 16, 256, dot, 4w resident stacked) 2.20" in done.stdout


def test_labels_name_every_option():
    """A split's label names the options it sets: the chunk shapes as u(lanes)x(units),
    the permuted exchange, prefetch (a split tuple from an older run, without the newer
    fields, reads as their defaults)."""
    shaped = tg.Config(16, 8, 1024, False, warps=8, resident=True, chunked=True,
                       unit_lanes=4, thread_units=2)
    assert tune_summary.label(str(tuple(shaped))) == \
        "(16, 8, 1024, bcast, 8w resident chunked u4x2)"
    assert tune_summary.label(str(tuple(shaped._replace(permuted=True, prefetch=True)))) == \
        "(16, 8, 1024, bcast, 8w resident prefetch chunked permuted u4x2)"
    assert tune_summary.label(str(tuple(shaped)[:12])) == \
        "(16, 8, 1024, bcast, 8w resident)"
    assert tune_summary.config(str(tuple(shaped))) == shaped
    # (a run's tuple before k_blocks: 16 fields; the crossed backward labelled)
    assert tune_summary.config(str(tuple(shaped)[:16])) == shaped
    crossed = shaped._replace(slice=128, block_k=64, k_blocks=16)
    assert tune_summary.label(str(tuple(crossed))) == \
        "(16, 128, 64, bcast, 8w resident chunked u4x2 crossed k16)"
    assert tune_summary.config(str(tuple(crossed))) == crossed


def test_older_runs_splits_read():
    """Tuples that runs before split16, partials and groups were taken out wrote (19
    fields, split16 after narrow, partials and groups before permuted; or a prefix of
    them, as the 2026-11-27 runs' 18 and the older 16) read field by field as they were
    written: labelled with those options, and as Config where none is set (None where
    one is, a split that can no longer run)."""
    old = (16, 8, 1024, False, 8, "tf32x3", True, False, False, False, True, False,
           False, True, 4, 2, False, 1, True)  # (prefetch, chunked u4x2, permuted)
    want = tg.Config(16, 8, 1024, False, warps=8, resident=True, prefetch=True,
                     chunked=True, unit_lanes=4, thread_units=2, permuted=True)
    assert tune_summary.config(str(old)) == want
    assert tune_summary.label(str(old)) == tune_summary.label(str(tuple(want)))
    assert tune_summary.config(str(old[:18])) == want._replace(permuted=False)
    assert tune_summary.config(str(old[:16])) == want._replace(permuted=False)
    grouped = old[:17] + (2, False)
    partials = old[:13] + (False, 1, 1, True, 1, False)
    split16 = old[:12] + (True,) + old[13:]
    assert tune_summary.label(str(grouped)) == \
        "(16, 8, 1024, bcast, 8w resident prefetch chunked u4x2 g2)"
    assert tune_summary.label(str(partials)) == \
        "(16, 8, 1024, bcast, 8w resident prefetch partials)"
    assert "split16" in tune_summary.label(str(split16))
    assert tune_summary.config(str(grouped)) is None
    assert tune_summary.config(str(partials)) is None
    assert tune_summary.config(str(split16)) is None


def test_end_to_end_lines():
    """A row timed end to end (benchmarks/gpu.py's grid) gets a line of µs per step and
    speedups over cuDNN, and one for the tf32x3 GEMMs where --tf32x3-beside timed them."""
    row = dict(ROW, T=512, fwd_torch=10.24, fwd_flashgru=2.56, fb_torch=20.48,
               fb_flashgru=10.24)
    lines = tune_summary.summarize([row])
    assert lines[0] == (" float32 H=256   B=16  end to end, µs a step (× cuDNN): ours fwd "
                        "5.00 (×4.00) f+b 20.00 (×2.00)")
    assert len(lines) == 2  # (then the timed kinds', as before)
    lines = tune_summary.summarize([dict(row, fwd_tf32x3=2.048, fb_tf32x3=5.12)])
    assert lines[1] == (" float32 H=256   B=16  end to end, µs a step (× cuDNN): "
                        "tf32x3 GEMMs fwd 4.00 (×5.00) f+b 10.00 (×4.00)")


def test_spread_defaults():
    """--defaults: SPREAD_CHUNK_DEFAULTS's entries at fp32 B=9-16 above H=256, the forward's
    fastest over inference and training together (a split timed in one of them only is
    not chosen), as the fields it changes from the chunked spread split; a line saying why
    not where the fastest is another kind of split; nothing for other points."""
    spread = tg.Config(16, 4, 512, False, resident=True, chunked=True)
    default = spread._replace(unit_lanes=4)
    halves = spread._replace(block_batch=8, slice=8, unit_lanes=8, permuted=True,
                             prefetch=True)
    lone = spread._replace(unit_lanes=2, thread_units=2)  # (timed in one kind only)
    stacked = tg.Config(16, 4, 512, True, resident=True, stacked=True)
    bwd = spread._replace(unit_lanes=2, thread_units=2)
    d, h, o, s, b = (str(tuple(c)) for c in (default, halves, lone, stacked, bwd))
    row = {"dtype": "float32", "H": 512, "B": 16, "timed": {
        "forward(True, False)": {"default": d, "us_per_step": {d: 3.0, h: 2.5, o: 1.0}},
        "forward(True, True)": {"default": d, "us_per_step": {d: 3.2, h: 2.6}},
        "backward(True,)": {"default": b, "us_per_step": {b: 5.7, s: 5.0}}}}
    lines = tune_summary.spread_defaults(
        [row, dict(row, dtype="bfloat16"), dict(row, B=1), dict(row, H=256)])
    assert lines == [
        "SPREAD_CHUNK_DEFAULTS[(4, 512, 4, True)] = dict(block_batch=8, slice=8, "
        "unit_lanes=8, thread_units=1, permuted=True, prefetch=True)  # H=512: "
        "forward(True, False) 3.00 → 2.50, forward(True, True) 3.20 → 2.60 µs a step",
        "# H=512 backward: the fastest, (16, 4, 512, dot, 4w resident stacked), differs "
        "from the chunked spread split outside SPREAD_FIELDS (backward(True,) 5.70 → "
        "5.00)"]
    row["timed"]["backward(True,)"]["us_per_step"][s] = 9.0  # (the default's own shape)
    assert tune_summary.spread_defaults([row])[1] == (
        "SPREAD_CHUNK_DEFAULTS[(4, 512, 4, False)] = dict(unit_lanes=2, thread_units=2)  "
        "# H=512: backward(True,) 5.70 → 5.70 µs a step")
    # (a default not timed: said so; a kind with no split timed in both: said so)
    del row["timed"]["backward(True,)"]["us_per_step"][b]
    row["timed"]["forward(True, True)"]["us_per_step"] = {s: 1.0}
    assert tune_summary.spread_defaults([row]) == [
        "# H=512 forward: no split timed in every kind (forward(True, False), "
        "forward(True, True))",
        "# H=512 backward: the fastest, (16, 4, 512, dot, 4w resident stacked), differs "
        "from the chunked spread split outside SPREAD_FIELDS (backward(True,) not timed → "
        "9.00)"]


def test_crossed_defaults():
    """--defaults: CROSSED_DEFAULTS's entries where torch's form's backward at batch 9-16
    above H=256 was fastest on a crossed split, as its table row (which makes that split
    again at the point's H), keyed by arithmetic and H padded; a comment where a one-way
    split won; nothing for fp64, other batches or H ≤ 256, nor the paper's form."""
    from flashgru.backends._triton import splits
    one_way = tg.Config(16, 8, 1024, False, warps=8, resident=True, chunked=True,
                        unit_lanes=4, thread_units=2)
    stacked = ("stacked", splits.CROSSED_STACKED[1024][1])
    chunked = ("chunked", splits.CROSSED_SPLITS[512][0])
    d, s, c = (str(tuple(x)) for x in (one_way, splits._crossed_split(1000, stacked),
                                       splits._crossed_split(384, chunked)))
    rows = [
        {"dtype": "float32", "H": 1000, "B": 16, "timed": {
            "backward(True,)": {"default": d, "us_per_step": {d: 10.9, s: 3.4}},
            "backward(False,)": {"default": d, "us_per_step": {d: 9.0, s: 30.0}}}},
        {"dtype": "bfloat16", "H": 384, "B": 12, "timed": {
            "backward(True,)": {"default": d, "us_per_step": {d: 5.0, c: 4.0}}}},
        {"dtype": "bfloat16", "H": 1024, "B": 16, "timed": {
            "backward(True,)": {"default": d, "us_per_step": {d: 5.5, s: 6.0}}}}]
    others = [dict(rows[0], dtype="float64"), dict(rows[0], B=17), dict(rows[0], H=256)]
    lines = tune_summary.crossed_defaults(rows + others)
    assert lines == [
        "CROSSED_DEFAULTS[('fp32', 1024)] = ('stacked', (16, 128, 8, True))  # H=1000 B=16: "
        "10.90 → 3.40 µs a step",
        "CROSSED_DEFAULTS[('16-bit', 512)] = ('chunked', (16, 64, 4, 8, 2, False))  "
        "# H=384 B=12: 5.00 → 4.00 µs a step",
        "# H=1024 bfloat16 backward: the fastest, (16, 8, 1024, bcast, 8w resident chunked "
        "u4x2), is one-way (5.50 → 5.50 µs a step)"]
    # (each entry makes its split again)
    for line, split in zip(lines[:2], (s, c), strict=False):
        entry = eval(line.split(" = ")[1].split("  #")[0])  # noqa: S307 (the test's own text)
        hidden = 1000 if "fp32" in line else 384
        assert str(tuple(splits._crossed_split(hidden, entry))) == split
