"""Triton, imported where it is installed, and what every kernel module shares: the
interpreter's flag, the JIT decorator that leaves plain functions when Triton is missing,
the compile-time sizes of a warp's lanes and of a stamped wait's block, and the order in
which this Triton lays a load's lanes.
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


def _leading_lanes(version: str) -> bool:
    """Whether this Triton lays a load's lanes (after its contiguous axis) along its
    leading axes first: Triton 3.6 and before, where its coalescing pass orders axes of
    equal contiguity first to last; 3.7-3.9 order them last to first (nvdisasm, sm_90a,
    the load of _permuted_block: with the other order it goes through shared memory)."""
    major, minor = (int(part) for part in version.split(".")[:2])
    return (major, minor) < (3, 7)


# (_permuted_block builds its load's axes in the order this Triton lays lanes along)
LEADING_LANES = True if triton is None else tl.constexpr(_leading_lanes(triton.__version__))
