"""scripts/gpu_overlap.py runs through (small, on the CPU under the interpreter; on a GPU
it times): a line for each kind of call under each overlap setting, saying whether the
setting ran the call in spans."""

from helpers import script_smoke

# (started beside the tests before it: conftest.py)
overlap_smoke = script_smoke("overlap_smoke", "scripts/gpu_overlap.py")


def test_smoke_run(overlap_smoke):
    code, out, err = overlap_smoke
    assert code == 0, err[-2000:]
    lines = [line for line in out.splitlines() if "B=2 H=8" in line]
    inference = [line for line in lines if " inference " in line]
    training = [line for line in lines if " training " in line]
    assert len(inference) == 5 and len(training) == 7
    # (off: no spans; on at first 2 of 12 steps: the forward, and in training the
    # backward; first 8: one span, none; FORWARD: the forward alone)
    spans = [line.rsplit(", ", 1)[1] for line in training]
    assert spans == ["0 in spans", "2 in spans", "2 in spans", "0 in spans", "2 in spans",
                     "1 in spans", "1 in spans"]
    assert [line.rsplit(", ", 1)[1] for line in inference] == [
        "0 in spans", "1 in spans", "1 in spans", "0 in spans", "1 in spans"]
    # (the same numbers, to the GEMMs' rounding)
    assert all(float(line.split("max |Δout| ")[1].split(",")[0]) <= 1e-5 for line in lines)
