"""The commands. Each validates its input before it writes anything."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from pathlib import Path

import torch

import flashgru

from . import forecast, plots, surnames
from .common import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    CLIError,
    Dist,
    atomic_path,
    consistent_run,
    default_dir,
    load_checkpoint,
    make_dir,
    new_run_dir,
    pick_device,
    read_run,
    remove_empty,
    save_torch,
    seed_everything,
    write_json,
)
from .trainer import Interrupted, Options, Trainer

TASKS = {"surnames": surnames.SurnameTask, "forecast": forecast.ForecastTask}
# Per-task defaults of options left unset on the command line.
DEFAULTS = {"surnames": {"hidden": 128, "dropout": 0.25, "lr": 3e-3, "ema": 0.995},
            "forecast": {"hidden": 64, "dropout": 0.0, "lr": 2e-3, "ema": 0.0}}


def train(args) -> int:
    device = pick_device(args.device)
    if args.resume:
        _refuse_ignored(args)
        run, config = read_run(args.resume)
        if args.task and args.task != config["task"]:
            raise CLIError(f"{args.resume} is a {config['task']} run, not {args.task}")
        ckpt = load_checkpoint(run, torch.device("cpu"), config)
        with consistent_run(run):
            opts = Options(**ckpt["options"])
    else:
        if not args.task:
            raise CLIError("name a task (surnames or forecast) or --resume RUN_DIR")
        _refuse_other_tasks_options(args)
        _check_numbers(args)
        for name, value in DEFAULTS[args.task].items():
            if getattr(args, name) is None:
                setattr(args, name, value)
        config = TASKS[args.task].new_config(args)
        opts = Options(args.epochs, args.batch_size, args.lr, args.patience, args.max_time,
                       args.seed, args.ema)
        run, ckpt = new_run_dir(args.out, config["task"]), None
    if not config["model"]["reset_after"] and config["model"]["backend"] == "torch":
        raise CLIError("--paper (the original GRU, reset_after=False) has no torch kernel: "
                       "use --backend auto, reference, cpu, parallel or (on a GPU) triton")
    try:
        backend = flashgru.select_backend(config["model"]["backend"], device=device,
                                          reset_after=config["model"]["reset_after"])
    except (ValueError, RuntimeError) as e:
        raise CLIError(str(e)) from None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if opts.batch_size % world:
        raise CLIError(f"--batch-size {opts.batch_size} must be divisible by the {world} "
                       "processes")
    # Every process has checked its input before the process group forms, and only then
    # does rank 0 create the run directory.
    dist = Dist.from_env(device)
    try:
        result = _train(config, opts, ckpt, run, backend, device, dist)
    except BaseException:
        dist.close(finished=False)
        raise
    dist.close()
    return result


def _backend_label(asked: str, nominal: str) -> str:
    """The backend the header names: the one asked for, or auto's, whose choice is per call
    (by its sequence, batch and hidden sizes: a large batch may go to torch)."""
    if asked != "auto":
        return asked
    fallback = nominal in ("torch", "reference")
    return f"auto ({nominal})" if fallback else f"auto ({nominal} where its rules allow)"


def _train(config, opts, ckpt, run, backend, device, dist) -> int:
    seed_everything(opts.seed)
    # (a resumed run's files, read back: checked to fit together)
    with consistent_run(run) if ckpt is not None else contextlib.nullcontext():
        task = TASKS[config["task"]](config)
        trainer = Trainer(task, opts, device, dist, run)
        if ckpt is not None:
            trainer.restore(ckpt)
    log = print if dist.main else (lambda *a, **k: None)
    new_run = dist.main and ckpt is None
    made = make_dir(run) if new_run else []  # (an empty directory named by --out: kept)
    try:
        if new_run:
            write_json(run / CONFIG, config)
        log(f"{config['task']}: {task.sizes['train']} train / {task.sizes['val']} validation"
            f" / {task.sizes['test']} test examples; {trainer.model.gru}, backend "
            f"{_backend_label(config['model']['backend'], backend.name)}; "
            f"{dist.world_size} process(es); run directory {run}")
        if trainer.state.done or trainer.state.epoch >= opts.epochs:
            log("this run has finished training; reporting its best model")
        state = trainer.fit(log)
    except Interrupted:
        log(f"interrupted: checkpoint saved; continue with: flashgru train --resume {run}")
        return 130
    except BaseException:
        if new_run and not (run / CHECKPOINT).exists():  # (a run that can't be resumed:
            # config.json alone, from a failure or a second Ctrl-C before the first
            # checkpoint; taken away so that --out can name it again)
            (run / CONFIG).unlink(missing_ok=True)
            remove_empty(made)
        raise
    if dist.main:
        state.done = True
        save_torch(run / CHECKPOINT, trainer.checkpoint())
        trainer.model.load_state_dict(trainer.best)
        try:
            finish(task, trainer.model, run, config, state, device)
        except CLIError as e:  # (a refused write of the report: the training is kept)
            raise CLIError(f"{e}; the trained run is saved: flashgru train --resume {run} "
                           "writes its report") from None
    return 0


def finish(task, model, run: Path, config: dict, state, device) -> None:
    """Test report, metrics JSON and plots of a finished run."""
    report = task.report(model, device)
    best = state.history[state.best_epoch - 1]
    print(f"best epoch {state.best_epoch} of {state.epoch}, after {best['seconds']:.1f} s "
          f"of training ({state.elapsed:.1f} s in all)")
    metrics = {"best_epoch": state.best_epoch, "epochs": state.epoch,
               "train_seconds": state.elapsed, "best_seconds": best["seconds"],
               "history": state.history, "test": report, "flashgru": flashgru.__version__,
               "torch": torch.__version__}
    if config["task"] == "surnames":
        surnames.print_report(report, task.classes)
        plots.confusion(run / "confusion.png", report["confusion"], task.classes)
        plots.curves(run / "curves.png", state.history, "accuracy")
    else:
        forecast.print_report(report)
        plots.forecast(run / "forecast.png", report, config["data"]["target"],
                       config["data"]["horizon"])
        plots.curves(run / "curves.png", state.history, "mae")
    write_json(run / METRICS, metrics)
    print(f"wrote {run}/: {CONFIG}, {CHECKPOINT}, {METRICS}, curves.png, "
          f"{'confusion.png' if config['task'] == 'surnames' else 'forecast.png'}")


# What --resume takes beside the run: where to run it. The rest is the run's own.
RESUME_TAKES = ("command", "task", "resume", "device")


def _refuse_ignored(args) -> None:
    """A resumed run keeps its options, model and data: options given beside --resume
    would be ignored, so they are refused, by name."""
    given = _given(args, [name for name in vars(args) if name not in RESUME_TAKES])
    if given:
        flags = ", ".join(given)
        raise CLIError(f"--resume continues a run with its own options; {flags} would be "
                       "ignored (only --device may change): start a new run to change them")


# Options of one task only ("surnames:" / "forecast:" in --help).
TASK_OPTIONS = {"surnames": ("limit", "embed", "label_smoothing"),
                "forecast": ("csv", "target", "features", "window", "horizon", "season")}


def _given(args, names) -> list[str]:
    """Those of ``names`` set on the command line to other than their defaults, as flags."""
    from . import build_parser

    defaults = vars(build_parser().parse_args(["train"]))
    return ["--" + name.replace("_", "-") for name in names
            if getattr(args, name) != defaults.get(name)]


def _refuse_other_tasks_options(args) -> None:
    other = "forecast" if args.task == "surnames" else "surnames"
    given = _given(args, TASK_OPTIONS[other])
    if given:
        raise CLIError(f"{', '.join(given)} {'is a' if len(given) == 1 else 'are'} {other} "
                       f"option{'s' * (len(given) > 1)}, not for {args.task}")


def _check_numbers(args) -> None:
    for name in ("epochs", "batch_size", "patience"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be at least 1")
    if args.hidden is not None and args.hidden < 1:
        raise CLIError("--hidden must be at least 1")
    if args.layers < 1 or args.embed < 1:
        raise CLIError("--layers and --embed must be at least 1")
    if args.dropout is not None and not 0 <= args.dropout < 1:
        raise CLIError("--dropout must be in [0, 1)")
    if (args.lr is not None and not 0 < args.lr < math.inf) or not args.max_time >= 0 or \
            args.limit < 0:
        raise CLIError("--lr must be positive and finite; --max-time and --limit at least 0")
    if args.season is not None and args.season < 1:
        raise CLIError("--season must be at least 1")
    if args.ema is not None and not 0 <= args.ema < 1:
        raise CLIError("--ema must be in [0, 1)")
    if not 0 <= args.label_smoothing < 1:
        raise CLIError("--label-smoothing must be in [0, 1)")
    if not 0 <= args.seed < 2**32:
        raise CLIError("--seed must be in [0, 2**32)")


def _load(args):
    """Task, best model and config of an existing run."""
    device = pick_device(args.device)
    run, config = read_run(args.run_dir)
    ckpt = load_checkpoint(run, device, config)
    model = config.get("model")
    if isinstance(model, dict) and model.get("backend") in flashgru.BACKENDS:
        try:  # (a run trained where its backend runs, read where it can't: the weights
            # are the same on every backend)
            flashgru.select_backend(model["backend"], device=device,
                                    reset_after=model.get("reset_after") is not False)
        except (ValueError, RuntimeError) as e:
            print(f"flashgru {args.command}: note: {e}; this run's model runs "
                  f"on backend auto here", file=sys.stderr)
            config = {**config, "model": {**model, "backend": "auto"}}
    with consistent_run(run):
        if config["task"] == "forecast":
            task = forecast.ForecastTask(config, getattr(args, "csv", None),
                                         need_test=args.command == "evaluate")
        else:
            if getattr(args, "csv", None):
                raise CLIError("--csv applies to forecast runs only")
            task = surnames.SurnameTask(config)
        model = task.make_model()
        model.load_state_dict(ckpt["best_model"])
    return task, model.to(device).eval(), config, device


def evaluate(args) -> int:
    task, model, config, device = _load(args)
    report = task.report(model, device)
    if config["task"] == "surnames":
        surnames.print_report(report, task.classes)
    else:
        forecast.print_report(report)
    return 0


def predict(args) -> int:
    task, model, config, device = _load(args)
    if config["task"] == "forecast":
        if args.names:
            raise CLIError("a forecast run takes no names; it forecasts after the series' end")
        if args.top is not None:
            raise CLIError("--top applies to surnames runs")
        values = task.predict(model, device)
        target = config["data"]["target"]
        print(f"next {len(values)} values of {target} after the last of "
              f"{len(task.series)} rows:")
        for step, value in enumerate(values, start=1):
            print(f"  t+{step}: {value:.3f}")
        return 0
    if not args.names:
        raise CLIError("give one or more surnames to classify")
    if not all(name.strip() for name in args.names):
        raise CLIError("give non-empty names")
    top = 3 if args.top is None else args.top
    if top < 1:
        raise CLIError("--top must be at least 1")
    _note_unknown_characters(args.command, args.names, task.chars)
    for name, best in zip(args.names, task.predict(model, args.names, device, top),
                          strict=True):
        print(f"{name}: " + ", ".join(f"{lang} {p:.3f}" for lang, p in best))
    return 0


def _note_unknown_characters(command: str, names: list[str], chars: dict) -> None:
    """A note on stderr for characters the run never saw in training: the model reads
    them all as one unknown character."""
    unknown = sorted({c for name in names for c in name if c not in chars})
    if unknown:
        print(f"flashgru {command}: note: this run's model never saw "
              f"{''.join(unknown)!r} in training; it reads each as one unknown character",
              file=sys.stderr)


def gates(args) -> int:
    task, model, config, device = _load(args)
    if config["task"] != "surnames":
        raise CLIError("gates draws a surnames run's gates over a name's characters")
    if not args.name.strip():
        raise CLIError("give a non-empty name")
    _note_unknown_characters(args.command, [args.name], task.chars)
    out = Path(args.out) if args.out else Path(args.run_dir) / f"gates-{_safe(args.name)}.png"
    if out.is_dir() or (args.out and args.out.endswith(("/", os.sep))):
        raise CLIError(f"{args.out or out} is a directory; give --out a PNG file name")
    if not out.parent.is_dir():
        raise CLIError(f"{out.parent}: no such directory")
    with torch.no_grad():
        embedded = model.embed(task.encode([args.name], device).data)  # (L, E), one name
        trace = model.gru.gates(embedded)  # fields (layers, 2, L, H): unbatched input
    last = flashgru.GateTrace(*(v[-1] for v in trace))
    best = task.predict(model, [args.name], device, 1)[0][0]
    plots.gates(out, args.name, last, f"{args.name!r}: last GRU layer "
                f"(predicted {best[0]}, {best[1]:.2f})")
    print(f"wrote {out}")
    return 0


MAX_BENCH_BYTES = 64 << 30


def bench(args) -> int:
    from .bench import SMALL_GRID, markdown, run_grid, runnable
    from .common import need

    device = pick_device(args.device)
    if args.grid == []:
        raise CLIError("--grid takes one or more points B,T,H (without it: a small grid)")
    try:
        grid = [tuple(int(v) for v in p.split(",")) for p in args.grid] if args.grid \
            else SMALL_GRID
    except ValueError:
        raise CLIError("--grid takes points B,T,H of three integers, e.g. 1,256,64") from None
    if any(len(p) != 3 or min(p) < 1 for p in grid):
        raise CLIError("--grid takes points B,T,H of three positive integers, e.g. 1,256,64")
    for b, t, h in grid:  # (a point's input (B, T, H) and weights (3H, 2H), float32:
        # torch's allocator would fail with a traceback, or overflow its sizes)
        if (b * t * h + 6 * h * h) * 4 > MAX_BENCH_BYTES:
            raise CLIError(f"--grid point {b},{t},{h} needs more than "
                           f"{MAX_BENCH_BYTES >> 30} GiB for its input and weights")
    if args.repeats < 1:
        raise CLIError("--repeats must be at least 1")
    out = Path(args.out) if args.out else default_dir("bench")
    if out.exists() and not out.is_dir():
        raise CLIError(f"{out} exists and is not a directory")
    for path in (out / "bench.md", out / "bench.png"):  # (before the timings: a write
        if path.exists() and not path.is_file():  # refused after them wastes them)
            raise CLIError(f"{path} exists and is not a file")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise CLIError(f"{out}: {parent} is not a directory")
    need("matplotlib")
    bar = need("tqdm").tqdm(total=len(grid) * (2 + len(runnable(device)[0])), desc="bench",
                            leave=False, file=sys.stderr, disable=None)
    try:
        rows = run_grid(grid, device, args.repeats, progress=lambda: bar.update(1))
    except (RuntimeError, MemoryError) as e:  # (torch's allocator: CPU or CUDA)
        if not isinstance(e, MemoryError) and "memory" not in str(e):
            raise
        raise CLIError(f"a --grid point is too large for this device's memory: "
                       f"{str(e).splitlines()[0] if str(e) else 'out of memory'}") from None
    finally:
        bar.close()
    table = markdown(rows, device)
    made = make_dir(out)  # (after the timings: a run that fails or is interrupted leaves
    try:                  # nothing, and the files of an earlier run as they were)
        with atomic_path(out / "bench.md") as table_file:  # (renamed after the chart)
            table_file.write_text(table)
            plots.bench(out / "bench.png", rows)
    except BaseException:
        remove_empty(made)
        raise
    print(table)
    print(f"wrote {out}/bench.md and {out}/bench.png")
    return 0


def _safe(name: str) -> str:
    """name as part of a file name: letters, digits, - and _, at most 80 of them."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:80]
