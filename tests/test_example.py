"""The README's main job runs (at a tiny size) and learns something for both formulations."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_toy_runs():
    script = os.path.join(ROOT, "examples", "train_toy.py")
    result = subprocess.run(
        [sys.executable, script, "--steps", "30", "--seq-len", "8", "--hidden", "16"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    out = result.stdout
    assert out.count(", backend ") == 2 and out.count("test MSE") == 2
    diff = out.split("max |flashgru - torch.nn.GRU| on the test set: ")[1].split()[0]
    assert float(diff) < 1e-5
