"""The suite's own machinery: the slow subprocesses (helpers.background) start once in a
run, whichever of its processes asks first, and any of them reads their output."""

import os
import subprocess
import sys
import time

import helpers
import pytest


def test_a_job_starts_once_and_any_process_reads_it(tmp_path, monkeypatch):
    monkeypatch.setenv(helpers.JOBS, str(tmp_path))
    count = tmp_path / "starts"
    script = (f"open({str(count)!r}, 'a').write('x'); import sys; print('out');"
              "print('err', file=sys.stderr); sys.exit(3)")
    helpers.background("job_once", [sys.executable, "-c", script])
    helpers.start_background(["job_once", "not_registered"])
    helpers.start_background(["job_once"])  # (as a second worker would: already started)
    assert helpers.background_output("job_once", timeout=60) == (3, "out\n", "err\n")
    assert helpers.background_output("job_once", timeout=60) == (3, "out\n", "err\n")
    assert count.read_text() == "x"


def test_a_job_past_its_timeout_is_killed_and_the_run_end_clears_the_folder(tmp_path,
                                                                            monkeypatch):
    folder = tmp_path / "jobs"
    folder.mkdir()
    monkeypatch.setenv(helpers.JOBS, str(folder))
    helpers.background("job_slow", [sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(subprocess.TimeoutExpired):
        helpers.background_output("job_slow", timeout=0.5)
    pid = int((folder / "job_slow.pid").read_text())
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
    helpers.stop_background()
    assert not folder.exists()


def _alive(pid):
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # (this process's child: reap it if dead)
        return waited == 0
    except ChildProcessError:
        return False
