import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))

# Without a GPU, the Triton backend's kernels run in Triton's interpreter on the CPU. This
# must be set before Triton is first imported (flashgru imports it).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
