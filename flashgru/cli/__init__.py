"""The flashgru command line: train, evaluate, predict, look inside and benchmark.

Uses only flashgru's public API. Needs the optional packages of ``pip install
'flashgru[cli]'`` (tqdm, matplotlib, faker, vega_datasets); each command says which one
is missing. Bad input is one line on stderr and exit code 2; Ctrl-C during training saves
a checkpoint and exits with 130.
"""

from __future__ import annotations

import argparse
import sys

from .common import CLIError

EPILOG_TRAIN = """examples:
  flashgru train surnames                       # the embedded default: ~15k surnames
  flashgru train surnames --hidden 64 --epochs 5 --out runs/small
  flashgru train forecast                       # daily Seattle weather, next 7 days
  flashgru train forecast --csv data.csv --target load --window 48 --horizon 24
  flashgru train --resume runs/small            # continue an interrupted run
  torchrun --nproc_per_node=2 -m flashgru train surnames   # DistributedDataParallel
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (exit code 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog="flashgru", description=__doc__.splitlines()[0], formatter_class=fmt,
                     epilog="run 'flashgru COMMAND --help' for a command's options and examples")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train a GRU on surnames or a time series",
                           epilog=EPILOG_TRAIN, formatter_class=fmt,
                           description="Train a model and write a run directory: checkpoint, "
                                       "config, metrics JSON and PNG plots.")
    train.add_argument("task", nargs="?", choices=["surnames", "forecast"])
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run, with "
                       "its own options (only --device may change)")
    train.add_argument("--out", metavar="RUN_DIR", help="where to write (default runs/TASK-TIME)")
    _common(train)
    g = train.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=20, help="at most this many (default 20)")
    g.add_argument("--batch-size", type=int, default=64, help="default 64")
    g.add_argument("--lr", type=float, default=None, help="Adam's learning rate (surnames "
                   "3e-3, forecast 2e-3)")
    g.add_argument("--ema", type=float, default=None, metavar="DECAY",
                   help="validate and keep an exponential moving average of the weights "
                        "(surnames 0.995, forecast 0: off)")
    g.add_argument("--patience", type=int, default=3, help="epochs without a better "
                   "validation score before stopping early (default 3)")
    g.add_argument("--max-time", type=float, default=0.0, metavar="SECONDS",
                   help="stop after this much training time (0: no limit)")
    g = train.add_argument_group("model")
    g.add_argument("--hidden", type=int, default=None, help="hidden size (surnames 128, "
                   "forecast 64)")
    g.add_argument("--layers", type=int, default=1, help="GRU layers (default 1)")
    g.add_argument("--dropout", type=float, default=None, help="on the GRU's inputs (surnames), "
                   "between its layers and on its final state (surnames 0.25, forecast 0)")
    g.add_argument("--embed", type=int, default=64, help="surnames: character embedding size "
                   "(default 64)")
    g.add_argument("--label-smoothing", type=float, default=0.1,
                   help="surnames: label smoothing of the training loss (default 0.1)")
    g.add_argument("--paper", action="store_true",
                   help="the original paper's GRU (reset_after=False)")
    g = train.add_argument_group("data")
    g.add_argument("--limit", type=int, default=0, help="surnames: names per language (0: all)")
    g.add_argument("--csv", metavar="FILE", help="forecast: your own series")
    g.add_argument("--target", metavar="COLUMN", help="forecast: the column to predict")
    g.add_argument("--features", metavar="COLS", help="forecast: comma-separated input "
                   "columns (default: every numeric column)")
    g.add_argument("--window", type=int, default=30, help="forecast: input steps (default 30)")
    g.add_argument("--horizon", type=int, default=7, help="forecast: steps to predict "
                   "(default 7)")
    g.add_argument("--season", type=int, default=None,
                   help="forecast: season length for the seasonal-naive baseline")

    ev = sub.add_parser("evaluate", help="test metrics of a trained run", formatter_class=fmt,
                        epilog="example:\n  flashgru evaluate runs/surnames-20261126-101500")
    ev.add_argument("run_dir", metavar="RUN_DIR")
    ev.add_argument("--csv", metavar="FILE", help="forecast runs: evaluate on this file")
    _common(ev, train=False)

    pr = sub.add_parser("predict", help="languages of surnames, or the next steps of a series",
                        formatter_class=fmt,
                        epilog="examples:\n  flashgru predict runs/surnames-X Nakamura "
                               "O'Brien Schmidt\n  flashgru predict runs/forecast-X")
    pr.add_argument("run_dir", metavar="RUN_DIR")
    pr.add_argument("names", nargs="*", metavar="NAME")
    pr.add_argument("--top", type=int, help="surnames runs: languages to show per name "
                    "(default 3)")
    pr.add_argument("--csv", metavar="FILE", help="forecast runs: forecast after this file")
    _common(pr, train=False)

    ga = sub.add_parser("gates", help="heatmap of the gates across a name's characters",
                        formatter_class=fmt,
                        epilog="example:\n  flashgru gates runs/surnames-X Schmidt --out s.png")
    ga.add_argument("run_dir", metavar="RUN_DIR")
    ga.add_argument("name", metavar="NAME")
    ga.add_argument("--out", metavar="FILE", help="PNG path (default RUN_DIR/gates-NAME.png)")
    _common(ga, train=False)

    be = sub.add_parser("bench", help="time the backends against torch.nn.GRU",
                        formatter_class=fmt,
                        epilog="examples:\n  flashgru bench\n  flashgru bench --grid "
                               "1,256,64 16,256,128 --repeats 10 --out runs/bench")
    be.add_argument("--grid", nargs="*", metavar="B,T,H", help="points (default: a small grid)")
    be.add_argument("--repeats", type=int, default=5, help="timings per point, their median "
                    "kept (default 5)")
    be.add_argument("--out", metavar="DIR", help="where to write bench.md and bench.png")
    _common(be, train=False)
    return parser


def _common(p, train=True):
    """--device; for train, --backend and --seed too (the other commands draw nothing at
    random: a seed would change nothing)."""
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default cpu")
    if train:
        p.add_argument("--backend", default="auto", help="flashgru backend: auto, reference, "
                       "torch, cpu, triton, parallel")
        p.add_argument("--seed", type=int, default=0, help="default 0")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from . import commands
    from .common import keep_freed_memory

    keep_freed_memory()

    try:
        return getattr(commands, args.command)(args) or 0
    except CLIError as e:
        print(f"flashgru {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # (the reader left: `flashgru evaluate RUN | head -3`)
        sys.stdout = None  # (no flush at exit to the closed pipe)
        return 141
    except OSError as e:  # (a path the checks could not read: permissions and the like)
        where = f"{e.filename}: " if e.filename else ""
        print(f"flashgru {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"flashgru {args.command}: interrupted", file=sys.stderr)
        return 130
