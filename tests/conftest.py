import os
import sys
import tempfile

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

# Without a GPU, the Triton backend's kernels run in Triton's interpreter on the CPU. This
# must be set before Triton is first imported (flashgru imports it).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def no_tf32():
    """fp32 means fp32 in the references: cuDNN's RNNs otherwise use TF32 by default."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def pytest_configure(config):
    """The process that owns the run (not a pytest-xdist worker) makes the folder where the
    slow subprocesses (helpers.background) leave their output; workers inherit its name
    through the environment, as they inherit OpenMP's wait policy."""
    import helpers
    if not hasattr(config, "workerinput"):
        os.environ[helpers.JOBS] = tempfile.mkdtemp(prefix="flashgru-tests-")
        if getattr(config.option, "numprocesses", None):
            # pytest-xdist's workers share the cores: torch's OpenMP threads must sleep
            # while they wait, not spin (spinning, the suite took 434 s on 2 cores with 2
            # workers, 289 s without; 543 s in one process)
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pytest_collection_finish(session):
    """The slow subprocesses the selected tests read (helpers.background) start now, on a
    free core, rather than when their first reader runs: once in the run, by the first
    process here (each pytest-xdist worker collects every test)."""
    import helpers
    if session.config.option.collectonly:
        return
    helpers.start_background({name for item in session.items
                              for name in getattr(item, "fixturenames", ())})


def pytest_unconfigure(config):
    import helpers
    if not hasattr(config, "workerinput"):
        helpers.stop_background()
    else:
        helpers.reap_background()
