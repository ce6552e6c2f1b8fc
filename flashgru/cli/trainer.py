"""One training loop for every task: mini-batches from a distributed sampler, optional
DistributedDataParallel, validation reduced across processes, early stopping, a
checkpoint after every epoch and on Ctrl-C, and exact resumption.

A task supplies the data and the model (see ``surnames.SurnameTask``):
``make_model()``, ``sizes`` (examples per split), ``batch(split, indices, device)`` →
(inputs, targets), ``loss(outputs, targets)``, ``eval_sums(outputs, targets)`` (numbers to
add over batches and processes), ``summarize(sums)`` → metrics dict and ``score(metrics)``
(higher is better, for early stopping).
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data.distributed import DistributedSampler

from .common import CHECKPOINT, Dist, config_digest, save_torch


class Interrupted(Exception):
    """Training stopped by Ctrl-C after its checkpoint was saved."""


@dataclass
class Options:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    patience: int = 3
    max_time: float = 0.0  # seconds of training; 0: no limit
    seed: int = 0
    ema: float = 0.0  # decay of an exponential moving average of the weights; 0: none


@dataclass
class State:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0  # epochs completed
    step: int = 0  # batches done in the current epoch
    loss_sum: float = 0.0  # training loss summed over the current epoch's examples so far
    loss_count: int = 0
    elapsed: float = 0.0  # seconds of training so far
    best_score: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list = field(default_factory=list)
    done: bool = False


class Trainer:
    def __init__(self, task, opts: Options, device: torch.device, dist: Dist, run):
        self.task, self.opts, self.device, self.dist, self.run = task, opts, device, dist, run
        self.model = task.make_model().to(device)
        self.net = self.model
        if dist.world_size > 1:
            self.net = nn.parallel.DistributedDataParallel(self.model)
        self.optimizer = _adam(self.model.parameters(), opts.lr)
        # With ema > 0, validation, the best model and the test use the averaged weights.
        self.averaged = None
        if opts.ema:
            self.averaged = AveragedModel(self.model, use_buffers=True,
                                          multi_avg_fn=get_ema_multi_avg_fn(opts.ema))
        self.state = State()
        self.best = _copy(self.evaluated.state_dict())
        self.stop_requested = False

    @property
    def evaluated(self) -> nn.Module:
        """The weights that validation judges: the averaged ones when there are any."""
        return self.model if self.averaged is None else self.averaged.module

    # ---- checkpoints ----------------------------------------------------------------

    def checkpoint(self) -> dict:
        return {"model": self.model.state_dict(), "best_model": self.best,
                "averaged": None if self.averaged is None else self.averaged.state_dict(),
                "optimizer": self.optimizer.state_dict(), "state": asdict(self.state),
                "rng": torch.get_rng_state(), "options": asdict(self.opts),
                "config": config_digest(self.task.config)}

    def save(self) -> None:
        if self.dist.main:
            save_torch(self.run / CHECKPOINT, self.checkpoint())

    def restore(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        if self.averaged is not None:
            self.averaged.load_state_dict(ckpt["averaged"])
        self.best = ckpt["best_model"]
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.state = State(**ckpt["state"])
        torch.set_rng_state(ckpt["rng"].cpu())

    # ---- the loop -------------------------------------------------------------------

    def fit(self, log=print) -> State:
        """Train until early stopping, the epoch limit or the time limit. A first Ctrl-C
        stops after the current batch, saves a checkpoint and raises Interrupted; a
        second one stops at once."""
        opts, st = self.opts, self.state
        sampler = DistributedSampler(range(self.task.sizes["train"]), self.dist.world_size,
                                     self.dist.rank, shuffle=True, seed=opts.seed)
        per_rank = opts.batch_size // self.dist.world_size
        with self._ctrl_c():
            while not st.done and st.epoch < opts.epochs:
                sampler.set_epoch(st.epoch)
                order = list(sampler)
                batches = [order[i : i + per_rank] for i in range(0, len(order), per_rank)]
                train_loss = self._epoch(batches)
                if train_loss is None:
                    self.save()
                    raise Interrupted()
                self._validate(train_loss, log)
                self.save()
                if not st.done and self._stopping():
                    raise Interrupted()
        return st

    def _epoch(self, batches) -> float | None:
        """One epoch from batch ``state.step`` on; the mean training loss, or None when
        interrupted."""
        st = self.state
        self.net.train()
        bar = _progress(len(batches), st.step, f"epoch {st.epoch + 1}", self.dist.main)
        for indices in batches[st.step :]:
            start = time.perf_counter()
            inputs, targets = self.task.batch("train", indices, self.device)
            loss = self.task.loss(self.net(inputs), targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.averaged is not None:
                self.averaged.update_parameters(self.model)
            st.step += 1
            st.elapsed += time.perf_counter() - start
            st.loss_sum += loss.item() * len(indices)
            st.loss_count += len(indices)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if self._stopping():
                bar.close()
                return None
        bar.close()
        loss_sum, n = self.dist.sum([st.loss_sum, st.loss_count], self.device)
        return loss_sum / max(n, 1)

    def _stopping(self) -> bool:
        """Whether any process was asked to stop (all processes agree)."""
        if self.dist.world_size == 1:
            return self.stop_requested
        return self.dist.sum([float(self.stop_requested)], self.device)[0] > 0

    @contextlib.contextmanager
    def _ctrl_c(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _validate(self, train_loss: float, log) -> None:
        st, opts = self.state, self.opts
        start = time.perf_counter()
        metrics = evaluate(self.task, self.evaluated, "val", self.device, self.dist)
        st.elapsed += time.perf_counter() - start
        score = self.task.score(metrics)
        st.epoch, st.step, st.loss_sum, st.loss_count = st.epoch + 1, 0, 0.0, 0
        st.history.append({"epoch": st.epoch, "train_loss": train_loss, "seconds": st.elapsed,
                           **{f"val_{k}": v for k, v in metrics.items()}})
        if score > st.best_score:
            st.best_score, st.best_epoch, st.bad_epochs = score, st.epoch, 0
            self.best = _copy(self.evaluated.state_dict())
        else:
            st.bad_epochs += 1
        shown = "  ".join(f"val {k} {v:.4f}" for k, v in metrics.items())
        if self.dist.main:
            log(f"epoch {st.epoch:3d}  train loss {train_loss:.4f}  {shown}  "
                f"{st.elapsed:6.1f} s")
        if st.bad_epochs >= opts.patience:
            st.done = True
            if self.dist.main:
                log(f"early stop: no better validation for {opts.patience} epochs")
        if opts.max_time and st.elapsed >= opts.max_time:
            st.done = True
            if self.dist.main:
                log(f"time limit: {opts.max_time:g} s of training")


@torch.no_grad()
def evaluate(task, model, split: str, device, dist: Dist, batch_size: int = 512) -> dict:
    """Metrics of ``model`` on a split, each process taking every world_size-th example."""
    model.eval()
    mine = list(range(dist.rank, task.sizes[split], dist.world_size))
    sums = None
    for i in range(0, len(mine), batch_size):
        inputs, targets = task.batch(split, mine[i : i + batch_size], device)
        part = task.eval_sums(model(inputs), targets)
        sums = part if sums is None else [a + b for a, b in zip(sums, part, strict=True)]
    if sums is None:
        sums = task.eval_sums(None, None)
    return task.summarize(dist.sum(sums, device))


def _adam(params, lr: float) -> torch.optim.Adam:
    """Adam, fused where this torch has it for the parameters' device (one kernel for all
    parameters: 0.94 -> 0.31 ms a step for the surnames model on 2 cores); else torch's
    default implementation."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


def _copy(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items()}


def _progress(total: int, initial: int, desc: str, main: bool):
    from .common import need

    tqdm = need("tqdm").tqdm
    return tqdm(total=total, initial=initial, desc=desc, leave=False, file=sys.stderr,
                disable=not main or None, dynamic_ncols=True)
