"""flashgru's Triton backend against torch.nn.GRU (cuDNN) on one GPU, same weights and
input, in one process.

For H ∈ {64, 128, 256, 512, 1024} × B ∈ {1, 16, 128}, T = 512, fp32 (TF32 off) and bf16:
forward and forward+backward time (median of repeated CUDA-event timings, in µs per step),
the speedup over cuDNN, and each implementation's error against a float64 reference
(‖y − y64‖ / ‖y64‖ and max |y − y64| on the output, and the first on dL/dx after
backward). Then a 2-layer
bidirectional case (B=32, T=256, I=128, H=256), and a sequence longer than cuDNN takes.

    python benchmarks/gpu.py              # the whole table
    python benchmarks/gpu.py --quick      # fewer points, for a smoke run
    python benchmarks/gpu.py --sweep      # also time launch splits of the kernel (inference)
    python benchmarks/gpu.py --auto       # flashgru with backend="auto" instead of "triton"
    python benchmarks/gpu.py --hidden 512 1024 --batch 16   # a part of the grid
    python benchmarks/gpu.py --hidden 1024 --batch 8 --only-grid  # without the other cases
    python benchmarks/gpu.py --dtype bfloat16  # the grid in bfloat16 alone
    python benchmarks/gpu.py --points bfloat16:1024:16 float32:512:16  # these, in order
    python benchmarks/gpu.py --tf32x3-gemms  # fp32's GEMMs as three TF32 ones
    python benchmarks/gpu.py --tf32x3-beside  # fp32 also so, in the same process
    python benchmarks/gpu.py --tf32x3-beside --tf32x3-way wide  # as one GEMM over 3K
    python benchmarks/gpu.py --overlap-beside  # fp32 also with the GEMMs beside the
                                               # recurrence (triton_gru.overlap), and
                                               # the projection inside the kernel
                                               # (triton_gru.project)
    python benchmarks/gpu.py --benchmark  # Triton's benchmark mode: each point's fastest
                                          # candidate split (named in its line)
    python benchmarks/gpu.py --benchmark --no-stacked  # without the stacked splits
    python benchmarks/gpu.py --benchmark --no-narrow --no-prefetch --no-resident-dot \
        --no-chunked --no-chunk-shapes --no-permuted --no-row-tiles --no-crossed
                                           # without those candidates

Prints a short table last; ``--json FILE`` writes every number (after each grid point,
so a run cut short keeps what it measured).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import time

import torch

import flashgru
from flashgru.backends import reference, tf32x3
from flashgru.backends import triton_gru as tg
from flashgru.backends._triton import splits

HIDDEN = (64, 128, 256, 512, 1024)
BATCH = (1, 16, 128)


def timed(fn, budget_s: float = 0.3, max_reps: int = 50) -> float:
    """Median milliseconds of ``fn()`` over repeated CUDA-event timings, after warm-up."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    once = time.perf_counter() - start
    reps = max(3, min(max_reps, int(budget_s / max(once, 1e-6))))
    times = []
    for _ in range(reps):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end))
    return statistics.median(times)


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.double() - ref).norm() / ref.norm()).item()


def compare(ref: torch.nn.GRU, x: torch.Tensor, backend: str,
            tf32x3_beside: bool = False, overlap_beside: bool = False) -> dict:
    """Time and check torch's module against flashgru's on the same weights and input;
    ``tf32x3_beside`` (fp32): flashgru's once more with its GEMMs as three TF32 ones
    (``tf32x3``, the row's ``*_tf32x3``), ``overlap_beside`` (fp32) with the input
    projection beside the recurrence and the backward's GEMMs beside its reverse one
    (``triton_gru.overlap``, the row's ``*_overlap``), again with the forward's alone
    (``*_overlap_forward``), and with the input projection inside the forward kernel
    (``triton_gru.project``, ``*_project``), in the same process as the other two."""
    ours = flashgru.GRU.from_torch(ref, backend=backend)
    exact = copy.deepcopy(ref).double()
    dout = torch.randn(x.shape[:-1] + (ref.hidden_size * (1 + ref.bidirectional),),
                       device=x.device, dtype=x.dtype)
    x64 = x.detach().double().requires_grad_()
    y64 = exact(x64)[0]
    y64.backward(dout.double())
    row = {"backend": ours.which_backend(x).name}
    ref.flatten_parameters()  # cuDNN's weights in one buffer (it warned for bf16 otherwise)
    for name, module in (("torch", ref), ("flashgru", ours)):
        _compare_one(row, name, module, x, dout, x64, y64)
    if tf32x3_beside and x.dtype == torch.float32:
        row["tf32x3_way"] = tf32x3.WAY  # (how they ran on CUDA: --tf32x3-way)
    for name, on in (("tf32x3", tf32x3_beside), ("overlap", overlap_beside),
                     ("overlap_forward", overlap_beside), ("project", overlap_beside)):
        if not (on and x.dtype == torch.float32):
            continue
        try:  # (a setting not yet timed on a GPU: its failure costs its own columns)
            with _setting(*BESIDE[name][1:]):
                _compare_one(row, name, ours, x, dout, x64, y64)
        except Exception as e:  # noqa: BLE001 (reported in the row and its line)
            if isinstance(e, getattr(torch, "AcceleratorError", ())):
                raise  # (a CUDA error leaves the context unusable: not this run's alone)
            row[f"{name}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    return row


# What an fp32 point may be timed with once more, in the same process (--NAME-beside):
# name → (its line's label, the setting's owner, attribute and value for those timings).
BESIDE = {
    "tf32x3": ("tf32x3 GEMMs", tf32x3, "enabled", True),
    "overlap": ("GEMMs beside", tg, "overlap", True),
    "overlap_forward": ("forward's alone", tg, "overlap", tg.FORWARD),
    "project": ("projection inside", tg, "project", True),
}


@contextlib.contextmanager
def _setting(owner, name: str, value):
    """owner.name = value for a block, restored after."""
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


def _compare_one(row, name, module, x, dout, x64, y64) -> None:
    """The row's err_NAME, maxerr_NAME, err_dx_NAME (against float64), fwd_NAME (no
    autograd) and fb_NAME (forward+backward) milliseconds, for one module."""
    xg = x.detach().requires_grad_()
    y = module(xg)[0]
    y.backward(dout)
    row[f"err_{name}"] = rel_err(y.detach(), y64.detach())
    row[f"maxerr_{name}"] = (y.detach().double() - y64.detach()).abs().max().item()
    row[f"err_dx_{name}"] = rel_err(xg.grad, x64.grad)
    with torch.no_grad():
        row[f"fwd_{name}"] = timed(lambda m=module: m(x))

    def train_step(m=module, xg=xg):
        m(xg)[0].backward(dout)

    row[f"fb_{name}"] = timed(train_step)


def grid(points, steps, backend, on_row=None, tf32x3_beside: bool = False,
         overlap_beside: bool = False) -> list[dict]:
    """A row per point (dtype, H, B), in the order given (points_of)."""
    rows = []
    for dtype, h, b in points:
        torch.manual_seed(0)
        ref = torch.nn.GRU(h, h, device="cuda", dtype=dtype)
        x = torch.randn(steps, b, h, device="cuda", dtype=dtype)
        row = compare(ref, x, backend, tf32x3_beside, overlap_beside)
        row.update(dtype=str(dtype).removeprefix("torch."), H=h, B=b, T=steps)
        if tg.benchmark:  # the splits it kept (inference, training forward,
            # backward), and those it left out, with why
            row["splits"] = [tuple(cfg) for key, cfg in tg._tuned.items()
                             if key[2:5] == (b, h, dtype)]
            row["left_out"] = [f"{tuple(cfg)}: {why}" for key, trial in
                               tg.trials.items() if key[2:5] == (b, h, dtype)
                               for cfg, why in trial.items() if isinstance(why, str)]
            # (in --json only: every candidate's time per step by kind, and
            # the default's split; scripts/tune_summary.py reads them)
            row["timed"] = {f"{key[0]}{key[6:]}": {
                "default": str(tuple(_default(key, b, h, dtype))),
                "us_per_step": {str(tuple(cfg)): got * 1e6 / min(steps, tg.TUNE_STEPS)
                                for cfg, got in trial.items()
                                if not isinstance(got, str)}}
                for key, trial in tg.trials.items() if key[2:5] == (b, h, dtype)}
        rows.append(row)
        print(_line(row), flush=True)
        if on_row is not None:
            on_row(rows)
    return rows


def points_of(dtypes, hidden, batch, given=None) -> list[tuple]:
    """The grid's points (dtype, H, B): ``given`` (from --points, in its order), else every
    dtype, H and B, in that nesting."""
    if given:
        return list(given)
    return [(getattr(torch, d), h, b) for d in dtypes for h in hidden for b in batch]


def _default(key: tuple, batch: int, hidden: int, dtype: torch.dtype):
    """The split a call of this kind (benchmark mode's key: kind, ..., reset_after and,
    for the forward, save) gets without benchmark mode."""
    cuda = torch.device("cuda")
    if key[0] == "forward":
        return splits.choose_config(batch, hidden, cuda, dtype, save=key[7])
    return splits.choose_backward_config(batch, hidden, cuda, dtype)


def _line(row: dict) -> str:
    t = row["T"]
    us = {k: row[k] * 1e3 / t for k in ("fwd_torch", "fwd_flashgru", "fb_torch", "fb_flashgru")}
    return (f"{row['dtype']:>8} H={row['H']:<5} B={row['B']:<4} {row['backend']:>7} | fwd µs/step "
            f"cuDNN {us['fwd_torch']:7.2f} ours {us['fwd_flashgru']:7.2f} "
            f"×{row['fwd_torch'] / row['fwd_flashgru']:5.2f} | fwd+bwd cuDNN "
            f"{us['fb_torch']:7.2f} ours {us['fb_flashgru']:7.2f} "
            f"×{row['fb_torch'] / row['fb_flashgru']:5.2f} | err out {row['err_flashgru']:.1e} "
            f"(torch {row['err_torch']:.1e}), max {row['maxerr_flashgru']:.1e} (torch "
            f"{row['maxerr_torch']:.1e}) dx {row['err_dx_flashgru']:.1e} "
            f"(torch {row['err_dx_torch']:.1e})"
            + "".join(_beside_part(row, name) for name in BESIDE)
            + (f" | kept {row['splits']}" if "splits" in row else "")
            + (f" | left out {row['left_out']}" if row.get("left_out") else ""))


def _beside_part(row: dict, name: str) -> str:
    """The line's timing of flashgru with BESIDE's setting ``name`` (--NAME-beside):
    speedups over cuDNN and over flashgru without it; empty where not timed."""
    label = BESIDE[name][0]
    if f"{name}_error" in row:
        return f" | {label} failed: {row[name + '_error']}"
    if f"fwd_{name}" not in row:
        return ""
    t, way = row["T"], row.get(f"{name}_way")
    fwd, fb = row[f"fwd_{name}"], row[f"fb_{name}"]
    return (f" | {label}{f' ({way})' if way else ''} fwd {fwd * 1e3 / t:.2f} "
            f"×{row['fwd_torch'] / fwd:.2f} (×{row['fwd_flashgru'] / fwd:.2f} ours) f+b "
            f"{fb * 1e3 / t:.2f} ×{row['fb_torch'] / fb:.2f} "
            f"(×{row['fb_flashgru'] / fb:.2f} ours) err "
            f"{row[f'err_{name}']:.1e} dx {row[f'err_dx_{name}']:.1e}")


def point(text: str) -> tuple:
    """--points' DTYPE:H:B, as bfloat16:1024:16, as (torch dtype, H, B)."""
    try:
        dtype, h, b = text.split(":")
        if dtype not in ("float32", "bfloat16") or int(h) < 1 or int(b) < 1:
            raise ValueError
        return getattr(torch, dtype), int(h), int(b)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: want DTYPE:H:B (float32 or bfloat16, sizes ≥ 1), as bfloat16:1024:16"
        ) from None


def sweep(points, steps) -> list[dict]:
    """Inference time of the core alone for several launch splits around the default, and
    each split's error against the reference core in float64."""
    rows = []
    for b, h in points:
        default = splits.choose_config(b, h, torch.device("cuda"), torch.float32)
        candidates = {default, default._replace(dot=True, slice=max(16, default.slice),
                                                block_k=64)}
        for block_batch in {default.block_batch, default.block_batch // 2,
                            default.block_batch * 2} - {0}:
            tiles = -(-b // block_batch)
            for s in (default.slice // 2, default.slice, default.slice * 2):
                for bk in (default.block_k // 2, default.block_k, default.block_k * 2):
                    if s >= 1 and 8 <= bk <= 1024 and -(-h // s) * tiles <= 132:
                        candidates.add(tg.Config(block_batch, s, bk, False))
        candidates |= {c._replace(warps=8) for c in list(candidates)[:4]}
        g = torch.Generator(device="cuda").manual_seed(0)
        gi = torch.randn(steps, b, 3 * h, device="cuda", generator=g)
        h0 = torch.randn(b, h, device="cuda", generator=g)
        w = torch.randn(3 * h, h, device="cuda", generator=g) / h ** 0.5
        bias = torch.randn(3 * h, device="cuda", generator=g)
        lens = torch.full((b,), steps, device="cuda")
        exact = reference.core(gi.double(), h0.double(), w.double(), bias.double(), None, True)
        for cfg in sorted(candidates):
            args = (gi, h0, w, bias, lens, True, False, cfg)
            err = rel_err(tg.forward(*args)[0], exact)
            fwd = timed(lambda a=args: tg.forward(*a))
            row = dict(B=b, H=h, cfg=cfg._asdict(), default=cfg == default,
                       fwd_us=fwd * 1e3 / steps, err=err)
            rows.append(row)
            print(f"sweep B={b:<4} H={h:<5} {cfg} fwd {row['fwd_us']:.2f} µs/step, error "
                  f"{err:.1e}{'  (default)' if row['default'] else ''}", flush=True)
    return rows


def bidirectional(backend) -> dict:
    """The 2-layer bidirectional case against cuDNN; on triton also with each layer's
    directions in turn instead of in one launch (triton_gru.core_pair), in the same
    process."""
    torch.manual_seed(0)
    ref = torch.nn.GRU(128, 256, 2, bidirectional=True, device="cuda")
    x = torch.randn(256, 32, 128, device="cuda")
    row = compare(ref, x, backend)
    row.update(dtype="float32", H=256, B=32, T=256)
    print("2-layer bidirectional, I=128:", _line(row), flush=True)
    if backend == "triton":
        pair_rows = tg._pair_rows
        tg._pair_rows = lambda *a, **k: None
        try:
            turn = compare(ref, x, backend)
        finally:
            tg._pair_rows = pair_rows
        row.update(fwd_in_turn=turn["fwd_flashgru"], fb_in_turn=turn["fb_flashgru"])
        print(f"  the directions in one launch, against in turn: forward "
              f"×{turn['fwd_flashgru'] / row['fwd_flashgru']:.2f}, forward+backward "
              f"×{turn['fb_flashgru'] / row['fb_flashgru']:.2f}", flush=True)
    return row


def long_sequence(steps=65536, hidden=256) -> dict:
    """A length cuDNN refuses: flashgru trains on it; torch's auto path would not run it
    on cuDNN."""
    torch.manual_seed(0)
    ours = flashgru.GRU(hidden, hidden, device="cuda", backend="triton")
    x = torch.randn(steps, 1, hidden, device="cuda", requires_grad=True)
    with torch.no_grad():
        fwd = timed(lambda: ours(x), max_reps=5)
    fb = timed(lambda: ours(x)[0].sum().backward(), max_reps=5)
    row = dict(T=steps, H=hidden, B=1, fwd_us=fwd * 1e3 / steps, fb_us=fb * 1e3 / steps)
    print(f"T={steps} B=1 H={hidden}: forward {row['fwd_us']:.2f} µs/step, forward+backward "
          f"{row['fb_us']:.2f} µs/step (cuDNN refuses this length)", flush=True)
    return row


def restrict(no_stacked: bool, no_narrow: bool, no_prefetch: bool,
             no_resident_dot: bool, no_chunked: bool = False,
             no_chunk_shapes: bool = False, no_permuted: bool = False,
             no_row_tiles: bool = False, no_crossed: bool = False) -> None:
    """Leave splits out of triton_gru for this process (a lent GPU's fallback where their
    tests failed): the stacked ones, 16-bit exchanges (Config.narrow), prefetch, chunked
    products (Config.chunked), chunk shapes (Config.unit_lanes, Config.thread_units;
    without them a spread split takes none of splits.SPREAD_CHUNK_DEFAULTS's fields) and
    permuted exchanges (Config.permuted), from the defaults and benchmark mode's
    candidates both; the crossed backward (splits.CROSSED_SPLITS, CROSSED_STACKED) from
    both too, and from the defaults (splits.CROSSED_DEFAULTS) the chunked ones where
    chunks or chunk shapes are left out; and benchmark mode's resident tl.dot and smaller
    row tiles' (candidates.ROW_TILE_SPREADS) candidates."""
    tg._defaults.clear()  # (the defaults kept so far, under the rules before)
    if no_stacked:
        splits._stacked_splits = lambda *a, **k: []
    if no_chunked:
        splits._chunked_where_set = lambda cfg, device, dtype: cfg
    if no_crossed:
        splits._crossed_splits = lambda hidden, dtype: []
    # (the crossed defaults the candidates' flags leave out go too, the one-way split
    # instead: all, or the chunked ones, whose chunks and chunk shapes those flags take;
    # --no-stacked is the one-way stacked splits')
    splits.CROSSED_DEFAULTS = {
        key: entry for key, entry in splits.CROSSED_DEFAULTS.items()
        if not (no_crossed or (no_chunked or no_chunk_shapes) and entry[0] == "chunked")}
    if no_narrow:
        splits._narrow_where_set = lambda cfg, device, dtype: cfg
    if no_chunk_shapes:
        splits._chunk_shape_where_set = lambda cfg, forward: cfg
    if no_row_tiles:  # (a default of 8- or 4-row tiles keeps its 16-row tile's split)
        shaped = splits._chunk_shape_where_set
        splits._chunk_shape_where_set = lambda cfg, forward: (
            lambda got: got if got.block_batch == cfg.block_batch else cfg)(
                shaped(cfg, forward))
    off = {name: False for name, on in (("prefetch", no_prefetch),
                                         ("permuted", no_permuted)) if on}
    if off:  # (out of both defaults: each split is the same without them)
        forward, backward = splits.choose_config, splits.choose_backward_config
        splits.choose_config = lambda *a, **k: forward(*a, **k)._replace(**off)
        splits.choose_backward_config = lambda *a, **k: backward(*a, **k)._replace(**off)
    left_out = [f for f, on in ((lambda c: c.prefetch, no_prefetch),
                                (lambda c: c.dot and c.resident and not c.stacked,
                                 no_resident_dot),
                                (lambda c: c.chunked, no_chunked),
                                (lambda c: (c.unit_lanes, c.thread_units) != (1, 1),
                                 no_chunk_shapes),
                                (lambda c: c.permuted, no_permuted),
                                (_row_tiles, no_row_tiles)) if on]
    if left_out:
        candidates = tg._candidates
        tg._candidates = lambda default, *a: [c for c in candidates(default, *a) if
                                              c == default or not any(f(c) for f in left_out)]


def _row_tiles(cfg) -> bool:
    """Whether cfg is one of candidates.ROW_TILE_SPREADS's splits: chunked tiles of fewer
    than 16 rows in a chunk shape."""
    return cfg.chunked and cfg.block_batch < 16 and (cfg.unit_lanes, cfg.thread_units) != (1, 1)


# The candidate families --no-NAME leaves out (restrict's arguments, in order): what each is.
LEAVE_OUT = {
    "stacked": "the one-way stacked splits (Config.stacked; the crossed ones: --no-crossed)",
    "narrow": "the candidates that exchange 16-bit values (Config.narrow)",
    "prefetch": "the prefetch candidates",
    "resident-dot": "tl.dot on resident tiles",
    "chunked": "the chunked-product candidates (Config.chunked)",
    "chunk-shapes": "the chunked candidates whose lanes and warps split the units and K "
                    "(Config.unit_lanes, Config.thread_units)",
    "permuted": "the splits that exchange in the product's order (Config.permuted)",
    "row-tiles": "the chunked splits of 8- and 4-row tiles at batch 9-16 "
                 "(candidates.ROW_TILE_SPREADS)",
    "crossed": "the crossed backward splits (Config.k_blocks, splits.CROSSED_SPLITS)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--auto", action="store_true")
    parser.add_argument("--benchmark", action="store_true")
    for name, what in LEAVE_OUT.items():  # (restrict's, in its order)
        parser.add_argument(f"--no-{name}", action="store_true",
                            help=f"benchmark mode without {what}")
    parser.add_argument("--only-grid", action="store_true",
                        help="the grid alone, without the bidirectional and long cases")
    parser.add_argument("--steps", type=int, default=512)
    parser.add_argument("--hidden", type=int, nargs="*", help="grid hidden sizes")
    parser.add_argument("--batch", type=int, nargs="*", help="grid batch sizes")
    parser.add_argument("--tf32x3-gemms", action="store_true",
                        help="the triton backend's fp32 GEMMs as three TF32 ones "
                             "(flashgru.backends.tf32x3.enabled)")
    parser.add_argument("--tf32x3-beside", action="store_true",
                        help="each fp32 point timed also with the triton backend's GEMMs "
                             "as three TF32 ones, in the same process")
    parser.add_argument("--overlap-beside", action="store_true",
                        help="each fp32 point timed also with the GEMMs beside the "
                             "recurrence, forward and backward, then the forward's alone "
                             "(flashgru.backends.triton_gru.overlap), then with the input "
                             "projection inside the forward kernel (triton_gru.project), in "
                             "the same process")
    parser.add_argument("--tf32x3-way", choices=tf32x3.WAYS,
                        help="how those run on CUDA with Triton (flashgru.backends.tf32x3.WAY:"
                             " one kernel, or one GEMM over 3K)")
    parser.add_argument("--dtype", nargs="*", choices=("float32", "bfloat16"),
                        help="the grid's dtypes (float32 and bfloat16)")
    parser.add_argument("--points", nargs="+", type=point, metavar="DTYPE:H:B",
                        help="the grid's points in this order (instead of --dtype, --hidden "
                             "and --batch)")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.points and (args.dtype or args.hidden or args.batch):
        parser.error("--points names the grid's points: not with --dtype, --hidden, --batch")
    if args.tf32x3_gemms and args.tf32x3_beside:
        parser.error("--tf32x3-beside times the tf32x3 GEMMs beside fp32's: not with "
                     "--tf32x3-gemms, which makes every run use them")
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton",
          tg.triton.__version__, flush=True)
    backend = "auto" if args.auto else "triton"
    tg.benchmark = args.benchmark
    if args.tf32x3_gemms:  # (else the library's own setting)
        tf32x3.enabled = True
    tf32x3.WAY = args.tf32x3_way or tf32x3.WAY
    restrict(*(getattr(args, "no_" + name.replace("-", "_")) for name in LEAVE_OUT))
    results = {}
    if args.sweep:
        results["sweep"] = sweep([(16, 1024), (128, 1024), (128, 256)], args.steps)
    hidden, batch = ((64, 256, 1024), (1, 128)) if args.quick else (HIDDEN, BATCH)
    hidden, batch = args.hidden or hidden, args.batch or batch
    def save(**parts):  # (after every grid point: a run cut short keeps what it measured)
        results.update(parts)
        if args.json:
            with open(args.json + ".part", "w") as f:
                json.dump(results, f, indent=1)
            os.replace(args.json + ".part", args.json)

    dtypes = args.dtype or ("float32", "bfloat16")
    save(grid=grid(points_of(dtypes, hidden, batch, args.points), args.steps, backend,
                   on_row=lambda rows: save(grid=rows), tf32x3_beside=args.tf32x3_beside,
                   overlap_beside=args.overlap_beside))
    if not args.only_grid:
        save(bidirectional=bidirectional(backend))
        save(long=long_sequence())
    print("\nsummary (µs per step, speedup over cuDNN):")
    for row in results["grid"]:
        t = row["T"]
        print(f"{row['dtype']:>8} H={row['H']:<5} B={row['B']:<4} "
              f"fwd {row['fwd_flashgru'] * 1e3 / t:6.2f}"
              f" ×{row['fwd_torch'] / row['fwd_flashgru']:5.2f}  f+b "
              f"{row['fb_flashgru'] * 1e3 / t:6.2f} ×{row['fb_torch'] / row['fb_flashgru']:5.2f}"
              f"  err {row['err_flashgru']:.0e}/{row['err_torch']:.0e}"
              + "".join(f"  {BESIDE[name][0]} fwd ×{row['fwd_torch'] / row['fwd_' + name]:5.2f}"
                        f" f+b ×{row['fb_torch'] / row['fb_' + name]:5.2f}"
                        for name in BESIDE if "fwd_" + name in row))


if __name__ == "__main__":
    main()
