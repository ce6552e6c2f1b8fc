"""What every command shares: clear errors, optional dependencies, atomic files, run
directories, devices, seeds and the process group of a torchrun launch."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import pickle
import random
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

_UMASK = os.umask(0)
os.umask(_UMASK)

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"


class CLIError(Exception):
    """A user mistake: printed as one line, exit code 2, no traceback."""


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory in this process instead of handing it back
    to the kernel, so that the next step's arrays of the same sizes do not fault their
    pages in again (a training step allocates tens of MB afresh). The command line owns
    its process, so it may; the library never does. Measured on the 2-core machine: a
    surnames training step 8.9 -> 7.9 ms on the cpu backend (torch's unchanged), B=16,
    T=256, H=128 forward+backward 5-13% faster on cpu, 4-7% on torch. Returns whether
    it took effect (Linux with glibc only)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_trim_threshold, 1 << 30)) and bool(mallopt(m_mmap_threshold,
                                                                       32 << 20))


def need(module: str):
    """Import an optional dependency of the command line, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise CLIError(
            f"this command needs the '{module.split('.')[0]}' package: "
            "pip install 'flashgru[cli]'"
        ) from e


# ---- files that are whole or absent -------------------------------------------------

@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; on success rename it over ``path``, on
    failure remove it. Readers see the old file or the new one, never half of one. A file
    system that refuses the write (read-only, full) is a CLIError naming the file."""
    target = Path(os.path.realpath(path))  # (a link's target is written, not the link)
    try:
        if target.exists() and not target.is_file():  # (a rename would replace the device
            # or pipe itself: /dev/null with a file, as root)
            raise CLIError(f"{path}: can't write: not a regular file")
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                   suffix=".tmp")
    except OSError as e:
        raise CLIError(f"{path}: can't write: {e.strerror}") from None
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise CLIError(f"{path}: can't write: {e.strerror or e}") from None
        raise


def write_json(path: Path, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_torch(path: Path, obj) -> None:
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:  # (torch's writer on a full disk: "unexpected pos ...")
            raise OSError(f"torch.save failed ({_first_line(e)})") from None


def _first_line(error: BaseException, limit: int = 160) -> str:
    """An exception's first line, without terminal escapes, cut to ``limit`` characters:
    torch's own messages run to several lines of advice."""
    text = [t.strip() for t in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines()
            if t.strip()]
    line = text[0] if text else type(error).__name__
    if line.endswith(":") and len(text) > 1:  # ("Error(s) in loading state_dict ...:")
        line += " " + text[1]
    return line if len(line) <= limit else line[:limit - 1] + "…"


def save_figure(path: Path, figure) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


# ---- run directories ----------------------------------------------------------------

def read_run(run_dir: str | Path) -> tuple[Path, dict]:
    """The path and config of an existing run directory, or a CLIError saying why not."""
    run = Path(run_dir)
    if not run.is_dir():
        raise CLIError(f"{run_dir}: no such run directory")
    if not (run / CONFIG).is_file() or not (run / CHECKPOINT).is_file():
        raise CLIError(f"{run_dir}: not a flashgru run directory (no {CONFIG} and {CHECKPOINT})")
    try:
        config = json.loads((run / CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise CLIError(f"{run_dir}: unreadable {CONFIG}: {e}") from e
    if not isinstance(config, dict) or config.get("task") not in ("surnames", "forecast") \
            or not isinstance(config.get("model"), dict) \
            or any(key not in config["model"] for key in ("reset_after", "backend")):
        raise CLIError(f"{run_dir}: {CONFIG} is not a flashgru run's config")
    return run, config


CHECKPOINT_KEYS = ("model", "best_model", "averaged", "optimizer", "state", "rng", "options")


def config_digest(config: dict) -> str:
    """What a checkpoint records of its run's config.json: the SHA-256 of its JSON."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def load_checkpoint(run: Path, device: torch.device, config: dict) -> dict:
    """The run's checkpoint, refused unless it is one and was made with this config.json
    (an edited vocabulary, target or normalisation would give wrong numbers silently)."""
    try:
        ckpt = torch.load(run / CHECKPOINT, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is the user's to fix
        why = _first_line(e) if isinstance(e, RuntimeError | pickle.UnpicklingError) else \
            "not a checkpoint torch can read"
        raise CLIError(f"{run}: unreadable {CHECKPOINT}: {why}") from e
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in CHECKPOINT_KEYS):
        raise CLIError(f"{run}: {CHECKPOINT} is not a flashgru checkpoint")
    if ckpt.get("config", config_digest(config)) != config_digest(config):  # (a checkpoint
        # from before it was recorded: the other checks alone)
        raise CLIError(f"{run}: {CONFIG} is not the one this run was trained with (its "
                       f"{CHECKPOINT} records it): put it back, or train a new run")
    return ckpt


@contextlib.contextmanager
def consistent_run(run: Path):
    """Around building a run's task and model from its config and loading its checkpoint:
    a config that lacks a key or holds a wrong value, or a checkpoint of another model, is
    a CLIError naming the run (a run directory whose files were mixed or edited)."""
    try:
        yield
    except KeyError as e:
        raise CLIError(f"{run}: {CONFIG} lacks {e} (not a whole flashgru run)") from None
    except (TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise CLIError(f"{run}: {CONFIG} and {CHECKPOINT} don't describe one model: "
                       f"{_first_line(e)}") from None


def make_dir(path: Path) -> list[Path]:
    """Create a run's directory, or say in one line why it can't be. Returns the
    directories it created, the innermost first (for remove_empty)."""
    made = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        remove_empty(made)
        raise CLIError(f"{path}: can't create the directory: {e.strerror}") from None
    return made


def remove_empty(made: list[Path]) -> None:
    """Take away the directories make_dir created, innermost first, where they are
    empty (a command that failed leaves none behind; files it kept stay, and with them
    their directories)."""
    for directory in made:
        with contextlib.suppress(OSError):
            directory.rmdir()


def new_run_dir(out: str | None, task: str) -> Path:
    """The directory a new run writes to; it must not exist yet (or be empty)."""
    run = Path(out) if out else default_dir(task)
    for parent in run.parents:
        if parent.exists() and not parent.is_dir():
            raise CLIError(f"{run}: {parent} is not a directory")
    if run.exists() and not run.is_dir():
        raise CLIError(f"{run} exists and is not a directory; choose another --out")
    if run.exists() and any(run.iterdir()):
        raise CLIError(f"{run} already exists; continue it with --resume {run} "
                       "or choose another --out")
    return run


def default_dir(kind: str) -> Path:
    """runs/KIND-YYYYmmdd-HHMMSS: where a command writes when --out is not given."""
    return Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


# ---- devices, seeds, processes ------------------------------------------------------

def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda: no CUDA GPU is available here")
    if name not in ("cpu", "cuda"):
        raise CLIError(f"--device {name}: choose cpu or cuda")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Dist:
    """This process's place in a torchrun launch (world_size 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: torch.device) -> Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        import torch.distributed as dist

        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            torch.cuda.set_device(local)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), world, local)

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Sum numbers over all processes."""
        if self.world_size == 1:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def close(self, finished: bool = True) -> None:
        """Leave the process group; where the run ``finished``, only once every process
        has (a gloo peer that tears its connections down first can abort another, SIGABRT:
        seen once in CI's two-process test, 2026-11-28, not reproduced). After an error,
        at once: the others' next collective fails instead of waiting for this one."""
        if self.world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                if finished:
                    dist.barrier()
                dist.destroy_process_group()
