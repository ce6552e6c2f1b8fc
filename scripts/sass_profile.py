"""Count, offline (no GPU), what one step of a split's time loop executes: compile the
split for sm_90a with the GPU machine's Triton (3.6; the side environment of
scripts/gpu_compile_check.py), disassemble it (nvdisasm) and count the time loop's
instructions per thread by kind, its loops over K weighted by their trips and the
waits (a barrier's or a stamp's spin) left out. A step's instructions per
multiprocessor (per thread × warps) is what a split at B=16 pays for: on an H200 the
broadcast splits' forward took ~1.1 µs + 0.39 ns per warp-instruction a step (the
thirteenth session's timings; ``--tune`` prints them beside their counts).

    /tmp/t36/bin/python scripts/sass_profile.py 16 1024 float32 backward \\
        "Config(16, 8, 1024, dot=False, warps=8, resident=True, chunked=True)"
    /tmp/t36/bin/python scripts/sass_profile.py --tune /work/.device/1/tune.json

KIND is forward (inference), training (the forward saving its gates) or backward (after
the default training forward). ``--tune FILE`` (benchmarks/gpu.py --benchmark --json
FILE) counts every split the file timed and prints each beside its µs per step.
"""
import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import types
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SMS = 132
ARITHMETIC = ("FFMA", "FADD", "FMUL", "HMMA", "HGMMA", "HFMA2")


def _as_gpu() -> None:
    """Resolve splits as on a 132-multiprocessor GPU (an H100 or H200), with none here."""
    from flashgru.backends._triton import splits
    torch.cuda.get_device_properties = lambda device=None: types.SimpleNamespace(
        multi_processor_count=SMS)
    splits._grid_limit = lambda device: SMS


def compiled_split(batch: int, hidden: int, dtype: torch.dtype, kind: str, cfg):
    """The kernel a call of this kind launches with split cfg, compiled for sm_90a."""
    import triton
    from gpu_compile_check import run
    from gpu_warm import _Offline, recording

    import flashgru.backends.triton_gru as tg
    with recording() as launches:
        if kind == "backward":
            default = tg.choose_config(batch, hidden, torch.device("cuda"), dtype, True)
            run(batch, hidden, dtype, default, True, cfg)
        else:
            run(batch, hidden, dtype, cfg, kind == "training", None)
    names = ("_backward_kernel", "_crossed_kernel") if kind == "backward" else \
        ("_forward_kernel",)
    module, name, args, kwargs = [v for v in launches.values() if v[1] in names][-1]
    os.environ.pop("TRITON_INTERPRET", None)
    triton.runtime.driver.set_active(_Offline())
    given = [a[1] if isinstance(a, tuple) and a[:1] == ("tensor",) else a for a in args]
    return getattr(tg, name).warmup(*given, grid=(1,), **kwargs)


def disassemble(compiled) -> tuple[str, str]:
    """(ptxas's report, nvdisasm's SASS) of a compiled kernel, for sm_90a."""
    from triton.backends.nvidia.compiler import get_ptxas
    ptxas = get_ptxas(90).path
    with tempfile.TemporaryDirectory() as tmp:
        ptx, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        report = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", ptx, "-o", cubin],
                                capture_output=True, text=True).stderr
        sass = subprocess.run([os.path.join(os.path.dirname(ptxas), "nvdisasm"), "-c", cubin],
                              capture_output=True, text=True, check=True).stdout
    return report, sass


def loops(sass: str) -> list[tuple[int, int, collections.Counter]]:
    """Each loop of the SASS (a branch back to a label): its first and last addresses and
    its instructions by opcode (without modifiers)."""
    lines = sass.splitlines()
    instructions, labels = [], {}
    pending = []
    for line in lines:
        label = re.match(r"\s*\.(L_x_\d+):", line)
        if label:
            pending.append(label.group(1))
            continue
        found = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)"
                         r"(.*?);", line)
        if found:
            address = int(found.group(1), 16)
            for name in pending:
                labels[name] = address
            pending = []
            instructions.append((address, found.group(2), found.group(3)))
    result = []
    for address, opcode, rest in instructions:
        target = re.search(r"\.(L_x_\d+)", rest)
        if opcode.startswith("BRA") and target and labels.get(target.group(1), 1 << 60) <= address:
            start = labels[target.group(1)]
            body = collections.Counter(op.split(".")[0] for a, op, _ in instructions
                                       if start <= a <= address)
            result.append((start, address, body))
    return result


def step(sass: str, hidden: int, block_k: int) -> tuple[collections.Counter, list[str]]:
    """The time loop's instructions per thread per step: the largest loop, each loop in it
    that computes (a loop over K in chunks of block_k) counted once per chunk, the others
    (waits) left out; and what was left out."""
    found = loops(sass)
    outer = max(found, key=lambda lp: lp[1] - lp[0])
    counts, waits = collections.Counter(outer[2]), []
    for start, end, body in found:
        if (start, end) == outer[:2] or not outer[0] <= start <= end <= outer[1]:
            continue
        if any(body[op] for op in ARITHMETIC):
            for op, n in body.items():
                counts[op] += n * (max(1, -(-hidden // block_k)) - 1)
        else:
            waits.append(f"a wait of {sum(body.values())} instructions")
            counts.subtract(body)
    return +counts, waits


def profile(item: tuple) -> dict:
    """Counts of one (batch, hidden, dtype name, kind, Config fields) (in a worker)."""
    _as_gpu()
    import flashgru.backends.triton_gru as tg
    batch, hidden, dtype, kind, fields = item
    cfg = tg.Config(*fields)
    try:
        report, sass = disassemble(compiled_split(batch, hidden, getattr(torch, dtype),
                                                  kind, cfg))
    except Exception as e:  # noqa: BLE001 (reported as the split's line)
        return {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    counts, waits = step(sass, hidden, cfg.block_k)
    registers = re.search(r"Used (\d+) registers", report)
    spilled = re.search(r"(\d+) bytes spill stores", report)
    return {"per_thread": sum(counts.values()), "warps": cfg.warps,
            "registers": int(registers.group(1)) if registers else None,
            "spilled": int(spilled.group(1)) if spilled else 0,
            "counts": dict(counts.most_common()), "waits": waits}


def line(item: tuple, got: dict, us: float | None = None) -> str:
    from tune_summary import label  # (a split's short name, as the tune's summary has it)
    head = f"{item[2]:>8} B={item[0]:<2} H={item[1]:<4} {item[3]:<9} {label(str(item[4])):<46}"
    if "error" in got:
        return f"{head} {got['error']}"
    kinds = ("FFMA", "FADD", "SHFL", "HGMMA", "HMMA", "LDS", "LDSM", "STS", "LDG")
    mix = " ".join(f"{k} {got['counts'].get(k, 0)}" for k in kinds if got["counts"].get(k))
    timed = f"{us:6.2f} µs  " if us is not None else ""
    return (f"{head} {timed}{got['per_thread']:>5}/thread ×{got['warps']} = "
            f"{got['per_thread'] * got['warps']:>6}  {got['registers']} regs, "
            f"{got['spilled']} B spilled | {mix}")


def tune_items(path: str) -> dict:
    """{(batch, hidden, dtype, kind, fields): µs per step} of a benchmark-mode run (its
    splits of families since taken out left out)."""
    from tune_summary import config  # (older runs' splits read as the summary reads them)
    kinds = {"forward(True, False)": "forward", "forward(True, True)": "training",
             "backward(True,)": "backward"}
    items = {}
    with open(path) as f:
        for row in json.load(f)["grid"]:
            for key, got in row.get("timed", {}).items():
                if key not in kinds:
                    continue
                for split, us in got["us_per_step"].items():
                    cfg = config(split)  # (None: a family since taken out, left out)
                    if cfg is not None:
                        items[(row["B"], row["H"], row["dtype"], kinds[key], tuple(cfg))] = us
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("batch", type=int, nargs="?")
    parser.add_argument("hidden", type=int, nargs="?")
    parser.add_argument("dtype", nargs="?", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("kind", nargs="?", choices=("forward", "training", "backward"))
    parser.add_argument("split", nargs="?", help='"Config(...)", as triton_gru.Config')
    parser.add_argument("--tune", help="a benchmark-mode run's JSON: every split it timed")
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    args = parser.parse_args()
    sys.path.insert(0, HERE)
    import flashgru.backends.triton_gru as tg
    if tg.INTERPRET:
        raise SystemExit("unset TRITON_INTERPRET: this compiles the kernels, offline")
    if args.tune:
        timed = tune_items(args.tune)
        items = sorted(timed, key=lambda i: (i[0], i[2], i[1], i[3], timed[i]))
    else:
        if args.split is None:
            parser.error("give BATCH HIDDEN DTYPE KIND SPLIT, or --tune FILE")
        cfg = eval(args.split, {"Config": tg.Config})  # noqa: S307 (a command line's own)
        items, timed = [(args.batch, args.hidden, args.dtype, args.kind, tuple(cfg))], {}
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn"),
                             initializer=sys.path.insert, initargs=(0, HERE)) as pool:
        for item, got in zip(items, pool.map(profile, items), strict=True):
            print(line(item, got, timed.get(item)), flush=True)
            if not args.tune and "counts" in got:
                print("  every kind:", ", ".join(f"{k} {n}" for k, n in got["counts"].items()))
                for wait in got["waits"]:
                    print(f"  left out: {wait}")


if __name__ == "__main__":
    main()
