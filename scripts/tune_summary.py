"""Summarize benchmark mode's timings from `benchmarks/gpu.py --benchmark --json FILE`
(scripts/gpu_tune.sh writes $OUT/tune.json): for each grid point and kind of call
(inference forward, training forward, backward), the default split's µs per step and
the fastest candidate's with its speedup; with --all, the others, fastest first. What to
put into choose_config / choose_backward_config comes from these lines.

    python scripts/tune_summary.py tune.json [--all]
"""
import argparse
import ast
import json

import flashgru.backends.triton_gru as tg


def label(split: str) -> str:
    """A split as benchmarks/gpu.py wrote it (a Config's tuple), shortly: rows, units, K,
    product, warps, and the options set."""
    cfg = tg.Config(*ast.literal_eval(split))
    flags = "".join(f" {name}" for name in ("resident", "stamped", "kmajor", "stacked",
                                            "prefetch", "narrow", "split16", "chunked",
                                            "partials", "permuted")
                    if getattr(cfg, name))
    if (cfg.unit_lanes, cfg.thread_units) != (1, 1):
        flags += f" u{cfg.unit_lanes}x{cfg.thread_units}"
    if cfg.groups != 1:
        flags += f" g{cfg.groups}"
    product = "dot" if cfg.dot else "bcast"
    return f"({cfg.block_batch}, {cfg.slice}, {cfg.block_k}, {product}, {cfg.warps}w{flags})"


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json")
    parser.add_argument("--all", action="store_true", help="every candidate's time too")
    args = parser.parse_args()
    with open(args.json) as f:
        results = json.load(f)
    print("\n".join(summarize(results.get("grid", []), args.all)))


if __name__ == "__main__":
    main()
