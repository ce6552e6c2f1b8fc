"""scripts/gpu_overlap.py runs through (small, on the CPU under the interpreter; on a GPU
it times): a line for each kind of call under each overlap and project setting, saying
whether the setting ran the call in spans, and its forward with the projection inside."""

from helpers import script_smoke

# (started beside the tests before it: conftest.py)
overlap_smoke = script_smoke("overlap_smoke", "scripts/gpu_overlap.py")


def test_smoke_run(overlap_smoke):
    code, out, err = overlap_smoke
    assert code == 0, err[-2000:]
    lines = [line for line in out.splitlines() if "B=2 H=8" in line]
    inference = [line for line in lines if " inference " in line]
    training = [line for line in lines if " training " in line]
    assert len(inference) == 7 and len(training) == 9
    # (off: no spans; on at first 2 of 12 steps: the forward, and in training the
    # backward; first 8: one span, none; FORWARD: the forward alone; project: the forward
    # fused, and with the overlap on the training call's backward in spans)
    spans = [line.rsplit(", ", 2)[1:] for line in training]
    assert spans == [["0 fused", "0 in spans"], ["0 fused", "2 in spans"],
                     ["0 fused", "2 in spans"], ["0 fused", "0 in spans"],
                     ["0 fused", "2 in spans"], ["0 fused", "1 in spans"],
                     ["0 fused", "1 in spans"], ["1 fused", "0 in spans"],
                     ["1 fused", "1 in spans"]]
    assert [line.rsplit(", ", 2)[1:] for line in inference] == [
        ["0 fused", "0 in spans"], ["0 fused", "1 in spans"], ["0 fused", "1 in spans"],
        ["0 fused", "0 in spans"], ["0 fused", "1 in spans"], ["1 fused", "0 in spans"],
        ["1 fused", "0 in spans"]]
    # (the same numbers, to the GEMMs' rounding)
    assert all(float(line.split("max |Δout| ")[1].split(",")[0]) <= 1e-5 for line in lines)
