"""scripts/gpu_host_time.py runs through (small, on the CPU under the interpreter; on a
GPU it times): a line for cuDNN and one for flashgru, with the ratio."""

from helpers import script_smoke

# (started beside the tests before it: conftest.py)
host_time_smoke = script_smoke("host_time_smoke", "scripts/gpu_host_time.py")


def test_smoke_run(host_time_smoke):
    code, out, err = host_time_smoke
    assert code == 0, err[-2000:]
    lines = [line for line in out.splitlines() if "B=2 H=8" in line]
    assert lines[0].startswith("----") and " cuDNN " in lines[1]
    assert " flashgru " in lines[2] and "x cuDNN" in lines[2] and "host" in lines[2]
