"""The command line at tiny sizes: every command, determinism, resume after Ctrl-C,
DistributedDataParallel with 2 processes, and every bad-input case."""

import json
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest

for module in ("tqdm", "matplotlib", "faker", "vega_datasets"):
    pytest.importorskip(module)

from flashgru.cli import main  # noqa: E402

TINY_SURNAMES = ["train", "surnames", "--limit", "20", "--hidden", "8", "--embed", "8",
                 "--epochs", "2"]
TINY_FORECAST = ["train", "forecast", "--window", "10", "--horizon", "3", "--hidden", "8",
                 "--epochs", "2"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def metrics(run):
    return json.loads((run / "metrics.json").read_text())


def no_temp_files(run):
    return not [p for p in run.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def surnames_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "s"
    assert main(TINY_SURNAMES + ["--out", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def forecast_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "f"
    assert main(TINY_FORECAST + ["--out", str(run)]) == 0
    return run


def test_train_surnames_writes_a_whole_run(surnames_run):
    names = {p.name for p in surnames_run.iterdir()}
    assert names == {"config.json", "checkpoint.pt", "metrics.json", "curves.png",
                     "confusion.png"}
    m = metrics(surnames_run)
    assert 0 <= m["test"]["accuracy"] <= 1 and len(m["history"]) == 2
    assert len(m["test"]["per_language"]) == len(json.loads(
        (surnames_run / "config.json").read_text())["classes"]) >= 15
    assert no_temp_files(surnames_run)


def test_same_seed_same_result(surnames_run, tmp_path):
    assert main(TINY_SURNAMES + ["--out", str(tmp_path / "again")]) == 0
    first, second = metrics(surnames_run), metrics(tmp_path / "again")
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in first["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in second["history"]]
    assert first["test"] == second["test"]


def test_evaluate_predict_gates(surnames_run, capsys):
    assert main(["evaluate", str(surnames_run)]) == 0
    accuracy = metrics(surnames_run)["test"]["accuracy"]
    assert f"test accuracy {accuracy:.4f}" in capsys.readouterr().out
    assert main(["predict", str(surnames_run), "Rossi", "O'Brien", "--top", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["Rossi", "O'Brien"]
    assert all(line.count(",") == 1 for line in lines)  # two languages each
    assert main(["gates", str(surnames_run), "Rossi"]) == 0
    png = surnames_run / "gates-Rossi.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png.unlink()


def test_forecast_train_evaluate_predict(forecast_run, capsys):
    assert {"forecast.png", "curves.png", "metrics.json"} <= {p.name for p in
                                                               forecast_run.iterdir()}
    scores = metrics(forecast_run)["test"]["scores"]
    assert {"flashgru", "last value", "seasonal naive (365)"} == set(scores)
    assert main(["evaluate", str(forecast_run)]) == 0
    assert "last value" in capsys.readouterr().out
    assert main(["predict", str(forecast_run)]) == 0
    out = capsys.readouterr().out
    assert "t+3:" in out and "t+4:" not in out


def test_default_forecast_beats_naive_baselines(tmp_path):
    assert main(["train", "forecast", "--out", str(tmp_path / "f")]) == 0
    scores = metrics(tmp_path / "f")["test"]["scores"]
    for baseline in ("last value", "seasonal naive (365)"):
        assert scores["flashgru"]["mae"] < scores[baseline]["mae"], baseline
        assert scores["flashgru"]["rmse"] < scores[baseline]["rmse"], baseline


def test_forecast_on_a_users_csv(tmp_path, capsys):
    csv = tmp_path / "series.csv"
    rows = ["t,load,temp,label"] + [f"{i},{(i % 24) * 1.5 + i * 0.01},{i % 7},x"
                                    for i in range(400)]
    csv.write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    assert main(["train", "forecast", "--csv", str(csv), "--target", "load", "--window", "24",
                 "--horizon", "4", "--season", "24", "--epochs", "2", "--hidden", "8",
                 "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["features"] == ["load", "t", "temp"]  # numeric columns, target first
    assert "seasonal naive (24)" in metrics(run)["test"]["scores"]


@pytest.mark.parametrize("interpret", [True, False], ids=["interpreter", "no-triton-here"])
def test_bench_writes_table_and_chart(tmp_path, capsys, monkeypatch, interpret):
    """Every backend that runs here timed; triton off CUDA named as not timed (its
    interpreter, when on, times nothing; without it, its constructor would refuse)."""
    from flashgru.backends import triton_gru

    monkeypatch.setattr(triton_gru, "INTERPRET", interpret)
    assert main(["bench", "--grid", "1,4,8", "--repeats", "1", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "bench.md").read_text()
    assert "| 1,4,8 | torch.nn.GRU |" in table and "flashgru reference" in table
    assert "| flashgru triton |" not in table and "Not timed here: flashgru triton" in table
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"


# ---- bad input: one line, exit code 2, nothing written ----------------------------------

def _bad_csv(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


BAD = {
    "missing csv": lambda d: ["train", "forecast", "--csv", str(d / "nope.csv"),
                              "--target", "x"],
    "empty csv": lambda d: ["train", "forecast", "--csv", _bad_csv(d, "e.csv", ""),
                            "--target", "x"],
    "header only": lambda d: ["train", "forecast", "--csv", _bad_csv(d, "h.csv", "a,b\n"),
                              "--target", "a"],
    "malformed csv": lambda d: ["train", "forecast", "--csv",
                                _bad_csv(d, "m.csv", "a,b\n1,2\n3\n"), "--target", "a"],
    "unknown column": lambda d: ["train", "forecast", "--target", "temperature"],
    "non-numeric column": lambda d: ["train", "forecast", "--target", "weather"],
    "non-numeric feature": lambda d: ["train", "forecast", "--features", "wind,date"],
    "window too long": lambda d: ["train", "forecast", "--window", "5000"],
    "csv without target": lambda d: ["train", "forecast", "--csv",
                                     _bad_csv(d, "ok.csv", "a\n1\n2\n")],
    "not a run (evaluate)": lambda d: ["evaluate", str(d)],
    "not a run (predict)": lambda d: ["predict", str(d / "missing"), "Smith"],
    "not a run (gates)": lambda d: ["gates", str(d), "Smith"],
    "not a run (resume)": lambda d: ["train", "--resume", str(d)],
    "unknown backend": lambda d: ["train", "surnames", "--backend", "fast"],
    "paper formulation on torch": lambda d: ["train", "surnames", "--paper",
                                             "--backend", "torch"],
    "zero epochs": lambda d: ["train", "surnames", "--epochs", "0"],
    "no task": lambda d: ["train"],
    "bad grid": lambda d: ["bench", "--grid", "1,2"],
    "negative season": lambda d: ["train", "forecast", "--season", "-3"],
    "out under a file": lambda d: ["train", "surnames", "--limit", "20", "--out",
                                   _bad_csv(d, "file", "x") + "/run"],
    "bench out under a file": lambda d: ["bench", "--grid", "1,2,3", "--out",
                                         _bad_csv(d, "file2", "x") + "/b"],
    "not a checkpoint": lambda d: ["evaluate", _fake_run(d)],
    "not a checkpoint (resume)": lambda d: ["train", "--resume", _fake_run(d)],
    "a text file as checkpoint": lambda d: ["evaluate", _fake_run(d, b"hello\n")],
    "options beside resume": lambda d: ["train", "--resume", str(d), "--epochs", "30",
                                        "--hidden", "8"],
    "limit leaves no validation": lambda d: ["train", "surnames", "--limit", "5"],
    "nan learning rate": lambda d: ["train", "surnames", "--lr", "nan"],
    "nan max-time": lambda d: ["train", "surnames", "--max-time", "nan"],
    "forecast options on surnames": lambda d: ["train", "surnames", "--window", "3"],
    "surnames option on forecast": lambda d: ["train", "forecast", "--limit", "50"],
    "out is a file": lambda d: ["train", "surnames", "--limit", "20", "--out",
                                _bad_csv(d, "file3", "x")],
    "seed below 0": lambda d: ["train", "surnames", "--seed", "-1"],
    "seed past 2**32": lambda d: ["train", "surnames", "--seed", str(2**32)],
    "empty csv name": lambda d: ["train", "forecast", "--csv", ""],
    "empty target name": lambda d: ["train", "forecast", "--target", ""],
    "a value past float32": lambda d: ["train", "forecast", "--target", "a", "--csv",
                                       _bad_csv(d, "big.csv", "a\n" + "1\n" * 50 + "4e38\n")],
    "a column named twice": lambda d: ["train", "forecast", "--target", "a", "--csv",
                                       _bad_csv(d, "twice.csv", "a,b,b\n" + "1,2,3\n" * 50)],
    "a feature named twice": lambda d: ["train", "forecast", "--features", "wind,wind"],
    "infinite learning rate": lambda d: ["train", "surnames", "--lr", "inf"],
    "an empty grid": lambda d: ["bench", "--grid"],
    "a grid point past memory": lambda d: ["bench", "--grid", "1,1,10000000"],
    "a grid point past int64": lambda d: ["bench", "--grid", "1,1," + "9" * 23],
    "bench.md a directory": lambda d: ["bench", "--grid", "1,2,3", "--out",
                                       str(d / "out"), *_mkdir(d / "out" / "bench.md")],
}


def _mkdir(path):
    path.mkdir(parents=True)
    return []


def _fake_run(d, checkpoint: bytes | None = None):
    import torch

    run = d / "fake"
    run.mkdir()
    (run / "config.json").write_text('{"task": "surnames", "model": {}}')
    if checkpoint is None:
        torch.save({"x": 1}, run / "checkpoint.pt")
    else:
        (run / "checkpoint.pt").write_bytes(checkpoint)
    return str(run)


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, capsys):
    out = tmp_path / "out"
    argv = BAD[case](tmp_path)
    if argv[0] in ("train", "bench") and "--out" not in argv:
        argv += ["--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0], err
    assert not out.exists() or case == "bench.md a directory"


def test_bench_past_the_devices_memory_is_one_line(tmp_path, capsys, monkeypatch):
    from flashgru.cli import bench

    def refused(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
                           "allocate 20480000000 bytes")

    monkeypatch.setattr(bench, "run_grid", refused)
    assert main(["bench", "--grid", "1,2,3", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "too large for this device's memory" in err[0]
    assert not (tmp_path / "b").exists()


def test_bench_keeps_the_table_a_failed_run_did_not_write(tmp_path, capsys, monkeypatch):
    """A chart that can't be written takes away the table this run wrote, not one that
    was there before it."""
    from flashgru.cli import plots

    (tmp_path / "bench.md").write_text("old")

    def refused(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plots, "bench", refused)
    assert main(["bench", "--grid", "1,2,3", "--repeats", "1", "--out", str(tmp_path)]) == 2
    assert (tmp_path / "bench.md").read_text() == "old"


def test_gates_out_must_be_a_file(surnames_run, tmp_path, capsys):
    assert main(["gates", str(surnames_run), "Rossi", "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    # a path that ends in a slash means a directory, even one not there yet
    assert main(["gates", str(surnames_run), "Rossi", "--out", f"{tmp_path}/new/"]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_gates_writes_through_a_link_and_never_over_a_special_file(surnames_run, tmp_path,
                                                                  capsys):
    """A rename over --out would replace a link, a pipe or a device (as root, /dev/null
    became a PNG): a link's target is written, anything not a regular file refused."""
    target, link, pipe = tmp_path / "target.png", tmp_path / "link.png", tmp_path / "pipe"
    target.write_bytes(b"old")
    link.symlink_to(target)
    os.mkfifo(pipe)
    assert main(["gates", str(surnames_run), "Rossi", "--out", str(link)]) == 0
    assert link.is_symlink() and target.read_bytes()[:4] == b"\x89PNG"
    assert main(["gates", str(surnames_run), "Rossi", "--out", str(pipe)]) == 2
    assert "not a regular file" in capsys.readouterr().err
    assert pipe.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == [
        "link.png", "pipe", "target.png"]


def test_a_path_it_may_not_read_is_one_line(surnames_run, capsys, monkeypatch):
    """An OSError from a check of a path (EACCES: Path.is_dir raises it in Python 3.11)."""
    from pathlib import Path

    def refused(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "is_dir", refused)
    assert main(["evaluate", str(surnames_run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Permission denied" in err and str(surnames_run) in err


def test_a_reader_that_leaves_is_no_traceback(surnames_run):
    result = subprocess.run(f"{sys.executable} -m flashgru evaluate {surnames_run} | head -1",
                            shell=True, capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.startswith("test accuracy") and result.stderr == ""


def test_a_run_whose_backend_is_missing_here_runs_on_auto(surnames_run, tmp_path, capsys,
                                                          monkeypatch):
    """A run trained with a backend this machine lacks (a GPU's triton, numba's cpu) is
    evaluated on auto, with a note: the weights are the same on every backend."""
    import dataclasses

    import torch

    import flashgru
    from flashgru.cli.common import config_digest

    want = main(["evaluate", str(surnames_run)]), capsys.readouterr().out
    run = tmp_path / "run"
    run.mkdir()
    config = json.loads((surnames_run / "config.json").read_text())
    config["model"]["backend"] = "cpu"  # (as a run trained on cpu)
    (run / "config.json").write_text(json.dumps(config))
    ckpt = torch.load(surnames_run / "checkpoint.pt", weights_only=True)
    ckpt["config"] = config_digest(config)
    torch.save(ckpt, run / "checkpoint.pt")
    monkeypatch.setitem(flashgru.BACKENDS, "cpu", dataclasses.replace(
        flashgru.BACKENDS["cpu"], missing=lambda: "it needs numba"))
    code = main(["evaluate", str(run)])
    got = capsys.readouterr()
    assert (code, got.out) == want and "backend 'cpu' is unavailable" in got.err


def test_characters_never_seen_in_training_are_named(surnames_run, capsys):
    """They all read as one unknown character (id 0): a note on stderr says which."""
    known = "".join(json.loads((surnames_run / "config.json").read_text())["vocab"][-5:])
    assert main(["predict", str(surnames_run), known, "Ωμέγα"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 2
    assert "never saw 'Ωέαγμ'" in captured.err and captured.err.count("\n") == 1
    assert main(["predict", str(surnames_run), known]) == 0
    assert capsys.readouterr().err == ""


def test_top_is_for_surnames_runs(forecast_run, capsys):
    assert main(["predict", str(forecast_run), "--top", "2"]) == 2
    assert "--top applies to surnames runs" in capsys.readouterr().err


def test_predict_refuses_an_empty_name(surnames_run, capsys):
    assert main(["predict", str(surnames_run), "Rossi", " "]) == 2
    assert "give non-empty names" in capsys.readouterr().err


@pytest.mark.parametrize("edit", ["lacks a key", "another model", "options", "rng",
                                  "limit"])
def test_a_run_whose_files_disagree_is_one_line(surnames_run, tmp_path, capsys, edit):
    """config.json edited or from another run beside checkpoint.pt, or a checkpoint's
    options or random state edited: evaluate and resume say so in one line (exit 2)."""
    import torch

    run = tmp_path / "run"
    run.mkdir()
    config = json.loads((surnames_run / "config.json").read_text())
    ckpt = torch.load(surnames_run / "checkpoint.pt", weights_only=True)
    del ckpt["config"]  # (as a checkpoint from before it recorded its config: the checks
    # behind that one)
    if edit == "lacks a key":
        del config["classes"]
    elif edit == "another model":
        config["model"]["hidden"] = 7
    elif edit == "options":
        ckpt["options"] = {"bogus": 1}
    elif edit == "limit":  # (other names: its data's fingerprint differs)
        config["limit"] += 1
    else:
        ckpt["rng"] = 3
    (run / "config.json").write_text(json.dumps(config))
    torch.save(ckpt, run / "checkpoint.pt")
    for argv in (["evaluate", str(run)], ["train", "--resume", str(run)]):
        code = main(argv)
        if edit in ("options", "rng") and argv[0] == "evaluate":
            assert code == 0  # (evaluate reads the best model alone)
            capsys.readouterr()
            continue
        assert code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and ("lacks 'classes'" in err[0] or
                                  "don't describe one model: " in err[0] or
                                  "surname data differ from this run's" in err[0]), err


@pytest.mark.parametrize("edit", ["vocabulary reversed", "target", "mean"])
def test_a_config_edited_after_training_is_refused(surnames_run, forecast_run, tmp_path,
                                                   capsys, edit):
    """An edit that keeps every shape (the vocabulary's order, the forecast's target or
    normalisation) gave wrong numbers with exit 0: the checkpoint records its config."""
    source = surnames_run if edit.startswith("vocabulary") else forecast_run
    run = tmp_path / "run"
    run.mkdir()
    config = json.loads((source / "config.json").read_text())
    if edit.startswith("vocabulary"):
        config["vocab"] = config["vocab"][::-1]
    elif edit == "target":
        config["data"]["target"] = "temp_min"
    else:
        config["data"]["mean"][0] += 1.0
    (run / "config.json").write_text(json.dumps(config))
    (run / "checkpoint.pt").write_bytes((source / "checkpoint.pt").read_bytes())
    for argv in (["evaluate", str(run)], ["train", "--resume", str(run)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is not the one this run was trained with" in err[0], err


def test_a_forecast_config_edited_is_one_line(forecast_run, tmp_path, capsys):
    """A forecast run's config.json with a season that is not a whole number: one line."""
    import torch

    run = tmp_path / "run"
    run.mkdir()
    config = json.loads((forecast_run / "config.json").read_text())
    config["data"]["season"] = "abc"
    (run / "config.json").write_text(json.dumps(config))
    ckpt = torch.load(forecast_run / "checkpoint.pt", weights_only=True)
    del ckpt["config"]  # (as a checkpoint from before it recorded its config)
    torch.save(ckpt, run / "checkpoint.pt")
    for argv in (["evaluate", str(run)], ["train", "--resume", str(run)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "season are positive whole numbers" in err[0], err


def test_a_file_system_that_refuses_a_write_is_one_line(surnames_run, tmp_path, capsys,
                                                        monkeypatch):
    """A read-only or full file system: one line naming the file, exit 2, no temporary
    file left; a new run whose first checkpoint can't be written leaves no directory."""
    import errno
    import tempfile

    import torch

    real_mkstemp = tempfile.mkstemp

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    out = tmp_path / "g.png"
    assert main(["gates", str(surnames_run), "Rossi", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if ": note: " not in line]  # (the tiny run lacks 'R')
    assert err == [f"flashgru gates: error: {out}: can't write: Read-only file system"]
    monkeypatch.setattr(tempfile, "mkstemp", real_mkstemp)

    def full(obj, f, *args, **kwargs):  # (what torch's writer raises on a full disk)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64")

    monkeypatch.setattr(torch, "save", full)
    run = tmp_path / "run"
    assert main(TINY_SURNAMES + ["--out", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint.pt: can't write: torch.save failed" in err[0], err
    assert not run.exists()


def test_a_refused_write_leaves_no_directory_it_made(tmp_path, capsys, monkeypatch):
    """A new run (or bench) whose first file can't be written takes away the directories
    it made for it, parents too; one line, exit 2."""
    import errno
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    for argv in (TINY_SURNAMES + ["--out", str(tmp_path / "a" / "b" / "run")],
                 ["bench", "--grid", "1,2,3", "--repeats", "1", "--out",
                  str(tmp_path / "c" / "d")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "can't write: Read-only file system" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_refused_report_keeps_the_trained_run(tmp_path, capsys, monkeypatch):
    """Training done, its report's write refused: one line, exit 2, saying how to write
    the report; the checkpoint stays, and --resume then writes the report."""
    import errno
    import tempfile

    real_mkstemp = tempfile.mkstemp

    def no_plots(*args, prefix="", **kwargs):
        if prefix.startswith(".curves.png"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_mkstemp(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", no_plots)
    run = tmp_path / "run"
    assert main(TINY_SURNAMES + ["--out", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "curves.png: can't write" in err[0], err
    assert err[0].endswith(f"the trained run is saved: flashgru train --resume {run} "
                           "writes its report")
    assert (run / "checkpoint.pt").exists() and no_temp_files(run)
    monkeypatch.setattr(tempfile, "mkstemp", real_mkstemp)
    assert main(["train", "--resume", str(run)]) == 0
    assert (run / "curves.png").exists() and (run / "metrics.json").exists()


def test_a_forecast_runs_own_series_changed(tmp_path, capsys):
    """The series a run trained on, read again by evaluate, predict and --resume, must
    have its rows: a file cut since is one line, exit 2 (before, evaluate failed inside
    numpy and predict forecast from a wrapped-around window)."""
    csv = tmp_path / "series.csv"
    rows = ["load"] + [str((i % 24) * 1.5) for i in range(200)]
    csv.write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    assert main(["train", "forecast", "--csv", str(csv), "--target", "load", "--window",
                 "10", "--horizon", "3", "--epochs", "1", "--hidden", "8", "--out",
                 str(run)]) == 0
    capsys.readouterr()
    csv.write_text("\n".join(rows[:8]) + "\n")
    for argv in (["evaluate", str(run)], ["predict", str(run)], ["train", "--resume", str(run)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "7 rows, where this run was trained on 200" in err[0], err


def test_forecast_of_values_near_float32s_range(tmp_path):
    """Values up to float32's range train and report finite metrics (the statistics and
    errors in float64: in float32 they overflowed to inf and NaN)."""
    csv = tmp_path / "big.csv"
    csv.write_text("load\n" + "\n".join(f"{i % 5}e37" for i in range(120)) + "\n")
    run = tmp_path / "run"
    assert main(["train", "forecast", "--csv", str(csv), "--target", "load", "--window",
                 "5", "--horizon", "2", "--epochs", "1", "--hidden", "8", "--out",
                 str(run)]) == 0

    def refuse(name):
        raise ValueError(f"{name} in a JSON file")

    for name in ("config.json", "metrics.json"):
        json.loads((run / name).read_text(), parse_constant=refuse)


def test_gates_takes_any_name(surnames_run, tmp_path, capsys):
    """A name with mathtext's dollar signs, and one too long for a file name of its own
    (the default --out cuts it)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(surnames_run, run)
    assert main(["gates", str(run), "a$^$b", "--out", str(tmp_path / "dollar.png")]) == 0
    assert (tmp_path / "dollar.png").stat().st_size > 0
    assert main(["gates", str(run), "a" * 300]) == 0
    assert (run / f"gates-{'a' * 80}.png").exists()
    capsys.readouterr()
    with warnings.catch_warnings():  # (letters the font lacks: boxes, and no warning)
        warnings.simplefilter("error")
        assert main(["gates", str(run), "山田", "--out", str(tmp_path / "cjk.png")]) == 0


def test_predict_needs_only_a_window_of_rows(forecast_run, tmp_path, capsys):
    header = json.loads((forecast_run / "config.json").read_text())["data"]["features"]
    csv = tmp_path / "short.csv"
    csv.write_text(",".join(header) + "\n" + "\n".join(
        ",".join(str(1.0 + i) for _ in header) for i in range(12)) + "\n")
    assert main(["predict", str(forecast_run), "--csv", str(csv)]) == 0  # window 10
    assert "t+3:" in capsys.readouterr().out
    assert main(["evaluate", str(forecast_run), "--csv", str(csv)]) == 2  # no test tail


def test_existing_run_directory_is_not_overwritten(surnames_run, capsys):
    before = (surnames_run / "metrics.json").read_bytes()
    assert main(TINY_SURNAMES + ["--out", str(surnames_run)]) == 2
    assert "already exists; continue it with --resume" in capsys.readouterr().err
    assert (surnames_run / "metrics.json").read_bytes() == before


def test_usage_errors_from_the_console():
    result = subprocess.run([sys.executable, "-m", "flashgru", "train", "poems"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


# ---- Ctrl-C and resume; DistributedDataParallel -----------------------------------------

RESUMABLE = ["train", "surnames", "--limit", "150", "--hidden", "16", "--embed", "8",
             "--epochs", "25", "--patience", "25", "--seed", "3"]


def _history(run):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in metrics(run)["history"]]


def test_ctrl_c_saves_and_resume_gives_the_uninterrupted_result(tmp_path, capsys):
    assert main(RESUMABLE + ["--out", str(tmp_path / "whole")]) == 0
    run = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "flashgru", *RESUMABLE, "--out", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.time() + 120
    while not (run / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "interrupted: checkpoint saved; continue with: flashgru train --resume" in out
    assert "Traceback" not in err and not (run / "metrics.json").exists()
    assert no_temp_files(run)
    assert main(["train", "--resume", str(run)]) == 0
    assert _history(run) == _history(tmp_path / "whole")
    assert metrics(run)["test"] == metrics(tmp_path / "whole")["test"]


def test_ddp_two_processes_match_one(tmp_path):
    args = ["train", "surnames", "--limit", "30", "--hidden", "8", "--embed", "8",
            "--epochs", "2", "--batch-size", "16", "--dropout", "0"]
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "flashgru", *args, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    # all of stderr: each process's own last words come before torchrun's summary (a rank
    # aborted once in CI, 2026-11-28, and once here, 2026-11-29, under load; not reproduced)
    assert result.returncode == 0, result.stderr
    assert "2 process(es)" in result.stdout
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    for a, b in zip(one["history"], two["history"], strict=True):
        for key in ("train_loss", "val_loss", "val_accuracy"):
            assert abs(a[key] - b[key]) < 1e-4, (key, a[key], b[key])
    assert abs(one["test"]["accuracy"] - two["test"]["accuracy"]) < 1e-2


def test_backend_help_names_every_backend():
    """`--backend`'s help lists every backend flashgru has (it is written out so that the
    parser does not import torch)."""
    import argparse

    import flashgru
    from flashgru.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices["train"]._actions if a.dest == "backend")
    assert set(flashgru.BACKENDS) <= set(action.help.replace(",", " ").split())


@pytest.mark.parametrize("command", [["evaluate", "runs/x"], ["predict", "runs/x", "Ng"],
                                     ["gates", "runs/x", "Ng"], ["bench"]])
def test_only_train_takes_a_seed(command, capsys):
    """evaluate, predict, gates and bench draw nothing at random: they refuse --seed
    rather than take one that changes nothing."""
    from flashgru.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*command, "--seed", "1"])
    assert e.value.code == 2 and "unrecognized arguments: --seed 1" in capsys.readouterr().err
    assert build_parser().parse_args(["train", "surnames", "--seed", "1"]).seed == 1


def test_the_command_line_keeps_freed_memory_on_linux():
    """glibc's malloc keeps freed memory in the command line's own process (the library
    never changes it); elsewhere the call does nothing and says so."""
    import sys

    from flashgru.cli.common import keep_freed_memory

    assert keep_freed_memory() == (sys.platform.startswith("linux")
                                   and _glibc())


def _glibc() -> bool:
    import platform

    return platform.libc_ver()[0] == "glibc"
