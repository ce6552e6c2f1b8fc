"""Train a small flashgru.GRU on the adding problem, a built-in task that needs memory.

Each input step carries a random value in [0, 1) and a marker; exactly two steps are
marked, and the target is the sum of their two values. Predicting the mean (1.0) scores
an MSE of 1/6 ≈ 0.167; a GRU that learned to remember scores far below it.

    python examples/train_toy.py                  # both formulations, one after the other
    python examples/train_toy.py --only torch     # torch's formulation (reset_after=True)
    python examples/train_toy.py --only paper     # the original paper's (reset_after=False)
    python examples/train_toy.py --steps 50 --seq-len 20   # a quick run
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import flashgru


def adding_batch(batch: int, steps: int, generator: torch.Generator):
    """Inputs (B, T, 2) and targets (B,) of the adding problem."""
    values = torch.rand(batch, steps, generator=generator)
    first = torch.randint(0, steps // 2, (batch,), generator=generator)
    second = torch.randint(steps // 2, steps, (batch,), generator=generator)
    marks = torch.zeros(batch, steps)
    marks[torch.arange(batch), first] = 1.0
    marks[torch.arange(batch), second] = 1.0
    return torch.stack([values, marks], dim=-1), (values * marks).sum(dim=1)


class Model(nn.Module):
    def __init__(self, hidden: int, reset_after: bool, backend: str):
        super().__init__()
        self.gru = flashgru.GRU(2, hidden, batch_first=True, reset_after=reset_after,
                                backend=backend)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):  # x: (B, T, 2)
        _, h_n = self.gru(x)  # h_n: (1, B, H)
        return self.head(h_n[-1]).squeeze(-1)  # (B,)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="optimiser steps")
    parser.add_argument("--seq-len", type=int, default=40, help="sequence length T")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--only", choices=["torch", "paper"],
                        help="train one formulation: torch's (reset_after=True) or the "
                             "original paper's (reset_after=False); default both")
    parser.add_argument("--backend", default="auto", choices=["auto", *flashgru.BACKENDS])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    for reset_after in (True, False):
        if args.only in (None, "torch" if reset_after else "paper"):
            train(args, reset_after)


def train(args, reset_after: bool) -> None:
    torch.manual_seed(args.seed)
    data = torch.Generator().manual_seed(args.seed)
    model = Model(args.hidden, reset_after=reset_after, backend=args.backend)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    x_test, y_test = adding_batch(1024, args.seq_len, data)
    print(f"\nflashgru {flashgru.__version__}: {model.gru}, "
          f"backend {model.gru.which_backend(x_test).name}")
    print(f"adding problem, T={args.seq_len}; predicting the mean scores MSE 0.167")
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = adding_batch(args.batch, args.seq_len, data)
        loss = nn.functional.mse_loss(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        if step % max(1, args.steps // 6) == 0 or step == args.steps:
            print(f"step {step:5d}  train MSE {loss.item():.4f}  "
                  f"{time.perf_counter() - start:6.1f} s")
    model.eval()
    with torch.no_grad():
        test_mse = nn.functional.mse_loss(model(x_test), y_test).item()
    print(f"test MSE {test_mse:.4f} (mean predictor 0.167)")
    if reset_after:  # the same weights in torch.nn.GRU give the same numbers
        with torch.no_grad():
            ours = model.gru(x_test)[1]
            theirs = model.gru.to_torch()(x_test)[1]
        print(f"max |flashgru - torch.nn.GRU| on the test set: "
              f"{(ours - theirs).abs().max().item():.1e}")

if __name__ == "__main__":
    main()
