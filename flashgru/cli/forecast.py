"""Time-series forecasting: a CSV (or the embedded default series) → windows → a GRU
that predicts the next ``horizon`` values of a target column.

The default series is the daily Seattle weather 2012–2015 (``seattle-weather.csv``), read
offline from the installed ``vega_datasets`` package; the default target is ``temp_max``.
The split is chronological: the last 15% of the steps are the test tail, the 15% before
them validation. The model predicts each future value as an offset from the last
observed one, in units of the target's training standard deviation.
"""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

import flashgru

from .common import CLIError

DEFAULT_SERIES = "vega_datasets:seattle-weather.csv"
DEFAULTS = {"target": "temp_max", "features": ["temp_max", "temp_min", "precipitation", "wind"],
            "season": 365}
SPLIT = (0.70, 0.15, 0.15)
FLOAT32_MAX = float(np.finfo(np.float32).max)  # (the series is float32; its statistics,
# errors and metrics are float64, so that values near this range don't overflow there)


def resolve(source: str) -> Path:
    """A CSV path, or the file a ``package:file`` source names inside an installed package
    (found without importing the package)."""
    if source.startswith("vega_datasets:"):
        spec = importlib.util.find_spec("vega_datasets")
        if spec is None or not spec.submodule_search_locations:
            raise CLIError("the default series needs the 'vega_datasets' package: "
                           "pip install 'flashgru[cli]' (or give --csv FILE)")
        return Path(list(spec.submodule_search_locations)[0]) / "_data" / source.split(":")[1]
    return Path(source)


def read_table(source: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a CSV, or a CLIError that says what is wrong with it."""
    path = resolve(source)
    if not path.is_file():
        raise CLIError(f"{source}: no such file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # (a BOM is not a name's)
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise CLIError(f"{source}: can't read it as CSV: {e}") from e
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise CLIError(f"{source}: empty file")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    twice = sorted({h for h in header if header.count(h) > 1})
    if twice:
        raise CLIError(f"{source}: the header names {', '.join(map(repr, twice))} twice")
    if not body:
        raise CLIError(f"{source}: a header and no data rows")
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise CLIError(f"{source}: line {i} has {len(row)} fields, the header {len(header)}")
    return header, body


def numeric_columns(source: str, header, body, names: list[str]) -> np.ndarray:
    """The named columns as a float32 array (T, len(names))."""
    for name in names:
        if name not in header:
            raise CLIError(f"{source}: no column {name!r} (columns: {', '.join(header)})")
    out = np.empty((len(body), len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        col = header.index(name)
        for i, row in enumerate(body):
            try:
                value = float(row[col])
            except ValueError:
                raise CLIError(f"{source}: column {name!r} is not numeric "
                               f"(line {i + 2}: {row[col]!r})") from None
            if not abs(value) <= FLOAT32_MAX:  # (NaN, ±inf, or past float32's range)
                beyond = " (past float32's range)" if math.isfinite(value) else ""
                raise CLIError(f"{source}: column {name!r} has {row[col]!r} on line "
                               f"{i + 2}{beyond}")
            out[i, j] = value
    return out


def all_numeric(header, body) -> list[str]:
    def numeric(j):
        try:
            [float(r[j]) for r in body]
        except ValueError:
            return False
        return True

    return [h for j, h in enumerate(header) if numeric(j)]


def window_starts(steps: int, window: int, horizon: int) -> dict[str, np.ndarray]:
    """Per split, the indices t of each window's last input step; its targets are
    t+1..t+horizon and lie wholly inside the split's stretch of time."""
    n_test, n_val = round(steps * SPLIT[2]), round(steps * SPLIT[1])
    val_start, test_start = steps - n_test - n_val, steps - n_test
    t = np.arange(window - 1, steps - horizon)
    first, last = t + 1, t + horizon
    return {"train": t[last < val_start],
            "val": t[(first >= val_start) & (last < test_start)],
            "test": t[first >= test_start]}


class Forecaster(nn.Module):
    """(B, window, features) → flashgru.GRU → last state → the next ``horizon`` offsets.
    ``dropout`` applies between GRU layers and to the last state."""

    def __init__(self, features: int, horizon: int, hidden: int = 64, layers: int = 1,
                 dropout: float = 0.0, reset_after: bool = True, backend: str = "auto"):
        super().__init__()
        self.gru = flashgru.GRU(features, hidden, layers, batch_first=True,
                                dropout=dropout if layers > 1 else 0.0,
                                reset_after=reset_after, backend=backend)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, horizon)

    def forward(self, x):
        _, h_n = self.gru(x)
        return self.head(self.drop(h_n[-1]))


class ForecastTask:
    """The forecasting task the trainer runs; see trainer.py for the interface."""

    name = "forecast"

    def __init__(self, config: dict, source: str | None = None, need_test: bool = True):
        if source == "":
            raise CLIError("--csv: give a file name")
        self.config = config
        data = config["data"]
        self.source = source or data["source"]
        header, body = read_table(self.source)
        self.series = numeric_columns(self.source, header, body, data["features"])
        self.target = data["features"].index(data["target"])
        self.y = self.series[:, self.target].astype(np.float64)  # (the target, for errors)
        self.window, self.horizon = data["window"], data["horizon"]
        season = data["season"]
        if not all(isinstance(n, int) and n >= 1 for n in (self.window, self.horizon)) or \
                not (season is None or isinstance(season, int) and season >= 1):
            raise ValueError("window, horizon and season are positive whole numbers")
        self.mean = np.array(data["mean"], dtype=np.float64)
        self.std = np.array(data["std"], dtype=np.float64)
        self.normed = ((self.series - self.mean) / self.std).astype(np.float32)
        self.starts = window_starts(len(self.series), self.window, self.horizon)
        self.sizes = {k: len(v) for k, v in self.starts.items()}
        rows = data.get("rows")
        if source is None and rows is not None and len(self.series) != rows:
            raise CLIError(f"{self.source}: {len(self.series)} rows, where this run was "
                           f"trained on {rows}: the file has changed since (give --csv FILE "
                           "for another series)")
        if (need_test and self.sizes["test"] == 0) or len(self.series) < self.window:
            raise CLIError(f"{self.source}: {len(self.series)} rows are too few for this "
                           f"run's window {self.window} and horizon {self.horizon}")

    @classmethod
    def new_config(cls, args) -> dict:
        for flag, value, what in (("csv", args.csv, "file"), ("target", args.target, "column")):
            if value == "":
                raise CLIError(f"--{flag}: give a {what} name")
        source = args.csv or DEFAULT_SERIES
        header, body = read_table(source)
        target = args.target or (DEFAULTS["target"] if not args.csv else None)
        if target is None:
            raise CLIError("--csv needs --target COLUMN")
        if args.features:
            features = [f.strip() for f in args.features.split(",") if f.strip()]
            if len(set(features)) < len(features):
                raise CLIError(f"--features {args.features}: a column named twice")
        elif args.csv:
            features = all_numeric(header, body)
        else:
            features = DEFAULTS["features"]
        features = [target] + [f for f in features if f != target]
        series = numeric_columns(source, header, body, features)
        window, horizon = args.window, args.horizon
        if window < 1 or horizon < 1:
            raise CLIError("--window and --horizon must be at least 1")
        starts = window_starts(len(series), window, horizon)
        if any(len(v) == 0 for v in starts.values()):
            raise CLIError(f"{source}: {len(series)} rows are too few for --window {window} "
                           f"and --horizon {horizon} (each of train, validation and test "
                           "needs at least one window)")
        train_part = series[: starts["train"][-1] + 1].astype(np.float64)
        std = train_part.std(0)
        season = args.season if args.season is not None else (
            None if args.csv else DEFAULTS["season"])
        return {"task": cls.name,
                "data": {"source": str(Path(source).resolve()) if args.csv else source,
                         "target": target, "features": features, "window": window,
                         "horizon": horizon, "season": season, "rows": len(series),
                         "mean": train_part.mean(0).tolist(),
                         "std": np.where(std > 0, std, 1.0).tolist(),
                         "sizes": {k: len(v) for k, v in starts.items()}},
                "model": {"hidden": args.hidden, "layers": args.layers,
                          "dropout": args.dropout, "reset_after": not args.paper,
                          "backend": args.backend}}

    def make_model(self) -> Forecaster:
        return Forecaster(len(self.config["data"]["features"]), self.horizon,
                          **self.config["model"])

    def inputs(self, ends, device) -> torch.Tensor:
        x = np.stack([self.normed[t - self.window + 1 : t + 1] for t in ends])
        return torch.from_numpy(x).to(device)  # (B, window, features)

    def truth(self, ends) -> np.ndarray:
        return np.stack([self.y[t + 1 : t + 1 + self.horizon] for t in ends])  # (B, horizon)

    def batch(self, split, indices, device):
        ends = self.starts[split][indices]
        offsets = (self.truth(ends) - self.y[ends][:, None]) / self.std[self.target]
        offsets = offsets.astype(np.float32)
        return self.inputs(ends, device), (torch.from_numpy(offsets).to(device), ends)

    def to_values(self, outputs, ends) -> np.ndarray:
        offsets = outputs.detach().cpu().numpy().astype(np.float64)
        return offsets * self.std[self.target] + self.y[ends][:, None]

    def loss(self, outputs, targets):
        return nn.functional.mse_loss(outputs, targets[0])

    def eval_sums(self, outputs, targets) -> list[float]:
        """[normalised squared error, |error|, squared error, count], summed."""
        if outputs is None:
            return [0.0] * 4
        offsets, ends = targets
        err = self.to_values(outputs, ends) - self.truth(ends)
        return [nn.functional.mse_loss(outputs, offsets, reduction="sum").item(),
                float(np.abs(err).sum()), float((err**2).sum()), err.size]

    def summarize(self, sums) -> dict:
        loss, abs_err, sq_err, n = sums
        n = max(n, 1)
        return {"loss": loss / n, "mae": abs_err / n, "rmse": math.sqrt(sq_err / n)}

    def score(self, metrics) -> float:
        return -metrics["mae"]

    def baselines(self, ends) -> dict[str, np.ndarray]:
        """Naive forecasts for windows ending at ``ends``: (B, horizon) each."""
        y = self.y
        out = {"last value": np.repeat(y[ends][:, None], self.horizon, axis=1)}
        season = self.config["data"]["season"]
        if season and ends.min() + 1 - season >= 0:
            out[f"seasonal naive ({season})"] = np.stack(
                [y[t + 1 - season : t + 1 - season + self.horizon] for t in ends])
        return out

    @torch.no_grad()
    def report(self, model, device) -> dict:
        """Test MAE/RMSE of the model and of the naive baselines, and the forecasts."""
        model.eval()
        ends = self.starts["test"]
        truth = self.truth(ends)
        forecasts = {"flashgru": self.to_values(model(self.inputs(ends, device)), ends)}
        forecasts.update(self.baselines(ends))
        scores = {name: {"mae": float(np.abs(f - truth).mean()),
                         "rmse": float(np.sqrt(((f - truth) ** 2).mean()))}
                  for name, f in forecasts.items()}
        return {"scores": scores, "ends": ends.tolist(), "truth": truth.tolist(),
                "forecast": forecasts["flashgru"].tolist()}

    @torch.no_grad()
    def predict(self, model, device) -> np.ndarray:
        """The next ``horizon`` values after the end of the series."""
        model.eval()
        end = np.array([len(self.series) - 1])
        return self.to_values(model(self.inputs(end, device)), end)[0]


def print_report(report: dict, log=print) -> None:
    log(f"{'test tail':<24} {'MAE':>8} {'RMSE':>8}")
    for name, s in report["scores"].items():
        log(f"{name:<24} {s['mae']:8.3f} {s['rmse']:8.3f}")
