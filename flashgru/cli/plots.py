"""The PNG figures of the command line (matplotlib, headless), each written atomically."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .common import need, save_figure


def _pyplot():
    matplotlib = need("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves(path: Path, history: list[dict], metric: str) -> None:
    """Train and validation loss, and a validation metric, per epoch."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    ax_metric.plot(epochs, [h[f"val_{metric}"] for h in history], "o-", color="C2")
    ax_metric.set(xlabel="epoch", ylabel=metric, title=f"validation {metric}")
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
    save_figure(path, fig)
    plt.close(fig)


def confusion(path: Path, matrix: list[list[int]], classes: list[str]) -> None:
    """Row-normalised confusion matrix (rows: true language, columns: predicted)."""
    plt = _pyplot()
    m = np.asarray(matrix, dtype=float)
    m = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(0.45 * len(classes) + 3, 0.45 * len(classes) + 2))
    image = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted language", ylabel="true language",
           title="test confusion matrix (share of each true language)")
    fig.colorbar(image, ax=ax, fraction=0.04)
    save_figure(path, fig)
    plt.close(fig)


def forecast(path: Path, report: dict, target: str, horizon: int) -> None:
    """The test tail: truth, and the model's forecasts 1 and ``horizon`` steps ahead."""
    plt = _pyplot()
    ends = np.asarray(report["ends"])
    truth, pred = np.asarray(report["truth"]), np.asarray(report["forecast"])
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.plot(ends + 1, truth[:, 0], color="black", lw=1.2, label="truth")
    ax.plot(ends + 1, pred[:, 0], color="C0", lw=1, label="forecast, 1 step ahead")
    if horizon > 1:
        ax.plot(ends + horizon, pred[:, -1], color="C1", lw=1, alpha=0.8,
                label=f"forecast, {horizon} steps ahead")
    ax.set(xlabel="time step", ylabel=target, title=f"{target}: held-out test tail")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(path, fig)
    plt.close(fig)


def _literal(text: str) -> str:
    """text as matplotlib draws it: a name's dollar signs escaped, not mathtext's."""
    return text.replace("$", r"\$")


def gates(path: Path, name: str, trace, title: str) -> None:
    """Heatmaps of r, z and h over the characters of one name, for each direction.

    ``trace`` fields: (directions, len(name), hidden) tensors of the last layer.
    """
    plt = _pyplot()
    panels = [("reset gate r", trace.r, "viridis", (0, 1)),
              ("update gate z  (z≈1 keeps the old state)", trace.z, "viridis", (0, 1)),
              ("hidden state h", trace.h, "RdBu_r", (-1, 1))]
    directions = trace.r.shape[0]
    fig, axes = plt.subplots(len(panels), directions, squeeze=False,
                             figsize=(4 + 2.2 * directions + 0.3 * len(name), 9))
    for row, (label, values, cmap, (lo, hi)) in enumerate(panels):
        for d in range(directions):
            ax = axes[row][d]
            image = ax.imshow(values[d].T.cpu().numpy(), aspect="auto", cmap=cmap,
                              vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_xticks(range(len(name)), [_literal(c) for c in name])
            ax.set_ylabel("hidden unit")
            ax.set_title(f"{label}, {'forward' if d == 0 else 'backward'}", fontsize=9)
            fig.colorbar(image, ax=ax, fraction=0.04)
    fig.suptitle(_literal(title))
    # (a name's letters that the font lacks are drawn as boxes, without matplotlib's
    # warning for each on the command line's stderr)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing")
        fig.tight_layout()
        save_figure(path, fig)
    plt.close(fig)


def bench(path: Path, rows: list[dict]) -> None:
    """Speed-up over torch.nn.GRU per grid point, forward and forward+backward."""
    plt = _pyplot()
    points = sorted({r["point"] for r in rows}, key=[r["point"] for r in rows].index)
    modules = [m for m in dict.fromkeys(r["module"] for r in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    width = 0.8 / len(modules)
    for ax, key in zip(axes, ("fwd_speedup", "train_speedup"), strict=True):
        for i, module in enumerate(modules):
            values = [next(r[key] for r in rows if r["point"] == p and r["module"] == module)
                      for p in points]
            ax.bar(np.arange(len(points)) + i * width, values, width, label=module)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xticks(np.arange(len(points)) + 0.4 - width / 2, points)
        ax.set(xlabel="B,T,H", title="forward" if key == "fwd_speedup" else "forward+backward")
    axes[0].set_ylabel("speed-up over torch.nn.GRU (×)")
    axes[1].legend(fontsize=8)
    save_figure(path, fig)
    plt.close(fig)
