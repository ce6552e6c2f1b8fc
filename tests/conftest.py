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


@pytest.fixture(autouse=True)
def no_contention_guard(monkeypatch):
    """The cpu backend's contention guard (``cpu._run_units``) changes how a batch-1 call
    is scheduled, never its numbers, after a call that had to give its cores away: on a
    busy test machine that would make the tests that check where a call runs flaky. Off
    here; tests/test_cpu_units.py turns it on where it is the subject."""
    try:
        from flashgru.backends import cpu
    except ImportError:  # pragma: no cover (flashgru itself is missing)
        return
    monkeypatch.setattr(cpu, "UNITS_CONTENDED", 0)
    monkeypatch.setattr(cpu, "_CONTENDED_UNTIL", [0.0])
