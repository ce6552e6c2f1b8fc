"""Triton, imported where it is installed, and what every kernel module shares: the
interpreter's flag, the JIT decorator that leaves plain functions when Triton is missing,
and the compile-time sizes of a warp's lanes and of a stamped wait's block.
"""

from __future__ import annotations

import os

try:
    import triton
    import triton.language as tl
except ImportError:  # the backend is then unavailable; see triton_gru.missing()
    triton = tl = None  # (the kernels' annotations, strings, never evaluated)


INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _jit(fn):
    return fn if triton is None else triton.jit(fn)


# (in the kernels: the interpreter runs one program per tile, so a stamped wait there must
# find every word already written, or it would spin forever)
_INTERPRETED = INTERPRET if triton is None else tl.constexpr(INTERPRET)


# ``Config.chunked``: the width of K's chunks, a warp's lanes (WARP_LANES for the host).
WARP_LANES = 32
LANES = WARP_LANES if triton is None else tl.constexpr(WARP_LANES)


# The most words a stamped wait re-reads as one block: a larger block (B=16 above H=256)
# waits a chunk at a time and is then read once more, unpacked (its int64 words held all
# at once spilled registers; ptxas, sm_90a).
STAMPED_BLOCK = 4096 if triton is None else tl.constexpr(4096)
