import os
import sys

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


def pytest_collection_finish(session):
    """The slow subprocesses the selected tests read (helpers.background) start now, on the
    second core, rather than when their first reader runs."""
    import helpers
    if session.config.option.collectonly:
        return
    helpers.start_background({name for item in session.items
                              for name in getattr(item, "fixturenames", ())})


def pytest_sessionfinish(session):
    import helpers
    helpers.stop_background()
