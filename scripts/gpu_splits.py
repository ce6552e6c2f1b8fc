"""The launch splits the probes (gpu_probe.py, gpu_probe_backward.py) share."""
import flashgru.backends.triton_gru as tg

C = tg.Config
D = None  # the default split


def stamped(cfg):
    """The default split exchanging stamped words instead of meeting at a barrier."""
    return cfg._replace(stamped=True)


def stamped_tile(bb, s, bk, warps=4):
    """A resident, stamped split of bb-row tiles with s units per program."""
    return C(bb, s, bk, False, warps, resident=True, stamped=True)


def kmajor_tile(bb, s, bk, stamps=False):
    """A resident K-major split at 8 warps (``Config.kmajor``), stamped or not."""
    return C(bb, s, bk, False, 8, resident=True, stamped=stamps, kmajor=True)


def row_major_tile(bb, s, bk):
    """The same split row-major at 8 warps, kmajor_tile's comparison."""
    return C(bb, s, bk, False, 8, resident=True)


def stacked_tile(bk, s=16, warps=4, stamps=False):
    """The forward's stacked split (``Config.stacked``: 16 rows, s units per program, the
    gates' W rows in one tile multiplied on the tensor cores, 16 / s folds of K), stamped
    or not."""
    return C(16, s, bk, True, warps, resident=True, stamped=stamps, stacked=True)
