"""Summarize benchmark mode's timings from `benchmarks/gpu.py --benchmark --json FILE`
(scripts/gpu_tune.sh writes $OUT/tune.json): for each grid point and kind of call
(inference forward, training forward, backward), the default split's µs per step and
the fastest candidate's with its speedup; with --all, the others, fastest first. What to
put into choose_config / choose_backward_config comes from these lines.

    python scripts/tune_summary.py tune.json [--all] [--defaults]

--defaults prints splits.SPREAD_CHUNK_DEFAULTS's entries the fp32 timings call for, and
splits.CROSSED_DEFAULTS's where a crossed backward split was the fastest.
"""
import argparse
import ast
import json

import flashgru.backends.triton_gru as tg

# Config's fields as benchmarks/gpu.py wrote them before 2026-11-28's twenty-fifth session,
# which took split16, partials and groups out (the tunes of 2026-11-27 and 2026-11-28):
# each older run's tuple is a prefix of these
OLD_FIELDS = (*tg.Config._fields[:12], "split16", *tg.Config._fields[12:15], "partials",
              "groups", *tg.Config._fields[15:])
# those fields' values in the splits that had none of them
TAKEN_OUT = {"split16": False, "partials": False, "groups": 1}


def fields(split: str) -> dict:
    """A split as benchmarks/gpu.py wrote it (a Config's tuple), as {field: value}: in
    Config's fields, or in OLD_FIELDS' for a run before split16, partials and groups were
    taken out (a tuple whose unit_lanes' place holds a bool, an older run's chunked, or
    of 13 values); the fields a run's tuple lacks at their defaults (k_blocks, added in
    the twenty-seventh session, in a run before it)."""
    values = ast.literal_eval(split)
    names = tg.Config._fields
    if len(values) == 13 or (len(values) > 13 and type(values[13]) is bool):
        names = OLD_FIELDS
    return {**tg.Config._field_defaults, **TAKEN_OUT, **dict(zip(names, values, strict=False))}


def config(split: str):
    """The Config of a split as benchmarks/gpu.py wrote it (fields), or None for one of a
    family since taken out (split16, partials, groups)."""
    got = fields(split)
    if any(got[name] != value for name, value in TAKEN_OUT.items()):
        return None
    return tg.Config(**{name: got[name] for name in tg.Config._fields})


def label(split: str) -> str:
    """A split as benchmarks/gpu.py wrote it (a Config's tuple), shortly: rows, units, K,
    product, warps, and the options set (those of the families since taken out too)."""
    cfg = fields(split)
    flags = "".join(f" {name}" for name in ("resident", "stamped", "kmajor", "stacked",
                                            "prefetch", "narrow", "split16", "chunked",
                                            "partials", "permuted")
                    if cfg.get(name))
    if (cfg["unit_lanes"], cfg["thread_units"]) != (1, 1):
        flags += f" u{cfg['unit_lanes']}x{cfg['thread_units']}"
    if cfg["groups"] != 1:
        flags += f" g{cfg['groups']}"
    if cfg["k_blocks"] != 1:
        flags += f" crossed k{cfg['k_blocks']}"
    product = "dot" if cfg["dot"] else "bcast"
    return (f"({cfg['block_batch']}, {cfg['slice']}, {cfg['block_k']}, {product}, "
            f"{cfg['warps']}w{flags})")


def summarize(grid: list[dict], every: bool = False) -> list[str]:
    """The summary's lines for the grid rows that carry timings."""
    lines = []
    for row in grid:
        point = f"{row['dtype']:>8} H={row['H']:<5} B={row['B']:<3}"
        lines += _end_to_end(point, row)
        for kind, got in sorted(row.get("timed", {}).items()):
            times = got["us_per_step"]
            if not times:
                continue
            ranked = sorted(times, key=times.get)
            best, default = ranked[0], got["default"]
            if default in times:
                was = f"{times[default]:.2f}"
                gain = f"×{times[default] / times[best]:.2f}"
            else:
                was, gain = "not timed", ""
            lines.append(f"{point} {kind:<22} default {label(default)} {was} | fastest "
                         f"{label(best)} {times[best]:.2f} {gain}".rstrip())
            if every:
                lines += [f"{'':>24}{label(s)} {times[s]:.2f}" for s in ranked[1:]]
    return lines


def _end_to_end(point: str, row: dict) -> list[str]:
    """The point's line of µs per step end to end with the splits kept, and speedups over
    cuDNN (forward, forward+backward), for flashgru and, where timed beside it
    (--tf32x3-beside), flashgru with its GEMMs as three TF32 ones."""
    if "fwd_flashgru" not in row:
        return []
    t = row["T"]
    return [f"{point} end to end, µs a step (× cuDNN): {name} fwd "
            f"{row['fwd_' + key] * 1e3 / t:.2f} (×{row['fwd_torch'] / row['fwd_' + key]:.2f})"
            f" f+b {row['fb_' + key] * 1e3 / t:.2f} (×{row['fb_torch'] / row['fb_' + key]:.2f})"
            for key, name in (("flashgru", "ours"), ("tf32x3", "tf32x3 GEMMs"))
            if "fwd_" + key in row]


# The fields a spread default may change (splits.SPREAD_CHUNK_DEFAULTS's values)
SPREAD_FIELDS = ("block_batch", "slice", "warps", "unit_lanes", "thread_units", "permuted",
                 "prefetch")


def spread_defaults(grid: list[dict], sms: int = 132) -> list[str]:
    """splits.SPREAD_CHUNK_DEFAULTS's entries the timings call for: at each fp32 point of
    batch 9-16 where a card of ``sms`` multiprocessors takes the chunked spread split, the
    forward's fastest over inference and training together (timed in both) and the
    backward's fastest, as the fields they change from the spread split; or why not (the
    fastest is another kind of split: stacked, tl.dot, or of a family since taken out)."""
    lines = []
    for row in grid:
        if row.get("dtype") != "float32" or not 8 < row.get("B", 0) <= 16 or \
                row.get("H", 0) <= 256 or "timed" not in row:  # (H ≤ 256: K-major tiles)
            continue
        spread = _spread(row["H"], sms)
        if spread is None:
            continue
        for forward in (True, False):
            name = "forward" if forward else "backward"
            kinds = [k for k in row["timed"] if k.startswith(name)]
            times = [row["timed"][k]["us_per_step"] for k in kinds]
            if not kinds:
                continue
            both = set.intersection(*(set(t) for t in times))
            if not both:
                lines.append(f"# H={row['H']} {name}: no "
                             f"split timed in every kind ({', '.join(kinds)})")
                continue
            best = min(both, key=lambda c: sum(t[c] for t in times))
            cfg = config(best)
            key = (spread.slice, spread.block_k, spread.warps, forward)
            timing = ", ".join(f"{k} {_was(row['timed'][k])} → {t[best]:.2f}"
                               for k, t in zip(kinds, times, strict=True))
            if cfg is None or spread._replace(**{f: getattr(cfg, f) for f in SPREAD_FIELDS}) \
                    != cfg or cfg.block_batch not in (16, 8, 4) or \
                    cfg.slice != spread.slice * (16 // cfg.block_batch):
                lines.append(f"# H={row['H']} {name}: the "
                             f"fastest, {label(best)}, differs from the chunked spread "
                             f"split outside SPREAD_FIELDS ({timing})")
                continue
            changed = ", ".join(f"{f}={getattr(cfg, f)}" for f in SPREAD_FIELDS
                                if getattr(cfg, f) != getattr(spread, f) or
                                f in ("unit_lanes", "thread_units"))
            lines.append(f"SPREAD_CHUNK_DEFAULTS[{key}] = dict({changed})  # H={row['H']}: "
                         f"{timing} µs a step")
    return lines


def crossed_defaults(grid: list[dict]) -> list[str]:
    """splits.CROSSED_DEFAULTS's entries the timings call for: at each point of batch
    9-16 above H=256 (not fp64), torch's form's backward where its fastest split is a
    crossed one (Config.k_blocks), as the table row it comes from; or a comment naming
    the one-way split that won."""
    from flashgru.backends._triton import splits
    lines = []
    for row in grid:
        if row.get("dtype") == "float64" or not 8 < row.get("B", 0) <= 16 or \
                row.get("H", 0) <= 256 or "timed" not in row:
            continue
        for kind, got in sorted(row["timed"].items()):
            times = got["us_per_step"]
            if not kind.startswith("backward") or "False" in kind or not times:
                continue  # (the paper's form: not on the grid)
            best = min(times, key=times.get)
            cfg = config(best)
            timing = f"{_was(got)} → {times[best]:.2f} µs a step"
            if cfg is None or cfg.k_blocks == 1:
                lines.append(f"# H={row['H']} {row['dtype']} backward: the fastest, "
                             f"{label(best)}, is one-way ({timing})")
                continue
            entry = ("stacked", (cfg.k_blocks, cfg.slice, cfg.warps, cfg.prefetch)) \
                if cfg.stacked else ("chunked", (cfg.k_blocks, cfg.slice, cfg.warps,
                                                 cfg.unit_lanes, cfg.thread_units,
                                                 cfg.prefetch))
            if splits._crossed_split(row["H"], entry) != cfg:
                lines.append(f"# H={row['H']} {row['dtype']} backward: the fastest, "
                             f"{label(best)}, is no row of the crossed tables ({timing})")
                continue
            arithmetic = "fp32" if row["dtype"] == "float32" else "16-bit"
            lines.append(f"CROSSED_DEFAULTS[({arithmetic!r}, {splits._pow2(row['H'])})] = "
                         f"{entry!r}  # H={row['H']} B={row['B']}: {timing}")
    return lines


def _was(got: dict) -> str:
    """A kind's default's µs per step, or that it wasn't timed."""
    default = got["us_per_step"].get(got["default"])
    return "not timed" if default is None else f"{default:.2f}"


def _spread(hidden: int, sms: int):
    """The chunked spread split (splits._spread_resident, then _chunked_where_set, as
    the fp32 defaults take it) on a card of ``sms`` multiprocessors, or None where it
    isn't chunked."""
    import torch

    from flashgru.backends._triton import splits
    limit = splits._grid_limit
    splits._grid_limit = lambda device: sms
    try:
        spread = splits._spread_resident(hidden, None)
    finally:
        splits._grid_limit = limit
    if spread is None:
        return None
    chunked = splits._chunked_where_set(spread, torch.device("cuda"), torch.float32)
    return chunked if chunked.chunked else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json")
    parser.add_argument("--all", action="store_true", help="every candidate's time too")
    parser.add_argument("--defaults", action="store_true",
                        help="splits.SPREAD_CHUNK_DEFAULTS's and CROSSED_DEFAULTS's entries "
                        "the timings call for")
    args = parser.parse_args()
    with open(args.json) as f:
        results = json.load(f)
    print("\n".join(summarize(results.get("grid", []), args.all)))
    if args.defaults:
        print("\n".join(spread_defaults(results.get("grid", [])) +
                        crossed_defaults(results.get("grid", []))))


if __name__ == "__main__":
    main()
