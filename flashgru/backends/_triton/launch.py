"""Launching a kernel over all rows and steps, with the split's rules checked first, and W_hh
laid out as the split's kernels read it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...scan import on_device
from .. import tf32x3
from . import splits
from .lang import INTERPRET, WARP_LANES, tl
from .splits import SIXTEEN_BIT, Config


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


# a cooperative launch fails, rather than hangs, if the programs can't all be resident at
# once
_COOPERATIVE = {} if INTERPRET else {"launch_cooperative_grid": True}


def _launches(cfg: Config, batch: int, hidden: int, device: torch.device, acc):
    """The split's rules checked (_check_split), each launch's (programs, row0, tiles): the
    batch in chunks that keep every program of a launch resident at once (the barrier
    needs that)."""
    _check_split(cfg, hidden, acc)
    programs = _programs(cfg, hidden, device)
    rows_per_launch = cfg.block_batch * (splits._grid_limit(device) // programs)
    for row0 in range(0, batch, rows_per_launch):
        yield programs, row0, -(-min(rows_per_launch, batch - row0) // cfg.block_batch)


def _launch(kernel, cfg: Config, batch: int, hidden: int, steps: int, args, t_begin: int = 0,
            **consts):
    """Run ``kernel`` over all rows and steps [t_begin, steps) (_launches)."""
    device = args[0].device
    chunk, kwarps = splits._chunk_shape(cfg)
    for programs, row0, tiles in _launches(cfg, batch, hidden, device, consts["ACC"]):
        sync = torch.empty(1, dtype=torch.int32, device=device) if cfg.stamped else \
            torch.zeros(tiles, dtype=torch.int32, device=device)  # (stamped:
        # unused)
        with on_device(device):  # (kernels launch on the current CUDA device)
            kernel[(programs, tiles)](
                *args, sync, batch, hidden, row0, t_begin, steps, BB=cfg.block_batch,
                S=cfg.slice, BK=cfg.block_k, DOT=cfg.dot, PREC=cfg.precision,
                RESIDENT=cfg.resident, STAMPED=cfg.stamped, KMAJOR=cfg.kmajor,
                STACKED=cfg.stacked, PREFETCH=cfg.prefetch, NARROW=cfg.narrow,
                CHUNKED=cfg.chunked, CHUNK=chunk, KW=kwarps, SI=cfg.thread_units,
                PERMUTED=cfg.permuted, num_warps=cfg.warps,
                **_COOPERATIVE, **consts)


def _launch_crossed(kernel, cfg: Config, batch: int, hidden: int, steps: int, args,
                    t_begin: int = 0, **consts):
    """_launch for the crossed backward (``Config.k_blocks``, _triton.crossed), steps
    ``steps`` - 1 down to t_begin: k_blocks · ceil(H / slice) programs a tile; under the
    interpreter, which runs the programs one after another, a launch a step, and for
    reset_after=False one for each half of a step
    (the kernel waits for no one within such a launch: what it reads, the launch before
    wrote). One stage: the time loop's wait sits in a branch, so nothing but _arrive's
    barrier would keep Triton's pipeliner from issuing a step's reads of the exchange a
    step early, before the wait."""
    device = args[0].device
    chunk, kwarps = splits._chunk_shape(cfg)
    phases = (0,) if consts["RESET_AFTER"] else (1, 2)
    spans = [(t, t + 1, phase) for t in reversed(range(t_begin, steps)) for phase in phases] \
        if INTERPRET else [(t_begin, steps, 0)]
    for programs, row0, tiles in _launches(cfg, batch, hidden, device, consts["ACC"]):
        for first, end, phase in spans:
            sync = torch.zeros(tiles, dtype=torch.int32, device=device)
            with on_device(device):
                kernel[(programs, tiles)](
                    *args, sync, batch, hidden, splits._block_units(hidden, cfg.k_blocks),
                    row0, first, end, BB=cfg.block_batch, S=cfg.slice, BK=cfg.block_k,
                    KBLOCKS=cfg.k_blocks, PREFETCH=cfg.prefetch, CHUNK=chunk, KW=kwarps,
                    SI=cfg.thread_units, STACKED=cfg.stacked, PHASE=phase,
                    num_warps=cfg.warps, num_stages=1, **_COOPERATIVE, **consts)


def _check_split(cfg: Config, hidden: int, acc) -> None:
    """Raise ValueError where cfg can't run a problem of this H in arithmetic ``acc`` (the
    kernels' ACC: tl.float32 or tl.float64)."""
    if cfg.k_blocks != 1:
        _check_crossed(cfg, hidden, acc)
        return
    if cfg.resident and cfg.block_k < hidden:
        raise ValueError(f"a resident split needs block_k ≥ hidden ({hidden}); got "
                         f"{cfg.block_k}")
    if cfg.stamped and acc == tl.float64:
        raise ValueError("a stamped split carries fp32 values: it can't run float64")
    if cfg.kmajor and not (cfg.resident and not cfg.dot):
        raise ValueError("a kmajor split needs resident tiles and the broadcast product")
    if cfg.stacked and not (cfg.resident and cfg.dot and cfg.block_batch == 16 and
                            cfg.slice in (4, 8, 16) and cfg.block_k * cfg.slice >= 256 and
                            not cfg.kmajor and acc != tl.float64):
        raise ValueError("a stacked split needs tl.dot, resident tiles, block_batch 16, "
                         "slice 4, 8 or 16 and block_k ≥ 16 per fold (16 / slice folds); "
                         "not float64, not kmajor")
    if cfg.chunked and not splits._can_chunk(cfg):
        raise ValueError(f"a chunked split needs resident tiles, the broadcast product (not "
                         f"kmajor), block_k ≥ {WARP_LANES}, fewer than 16 rows or units, and "
                         f"unit_lanes and thread_units powers of two, their product at most "
                         f"the slice, whose chunks divide block_k; got {cfg}")
    if (cfg.unit_lanes, cfg.thread_units) != (1, 1) and not cfg.chunked:
        raise ValueError(f"unit_lanes and thread_units are a chunked split's: got {cfg}")
    if cfg.permuted and not splits._can_permute(cfg):
        raise ValueError(f"a permuted split needs a chunked split with unit_lanes or "
                         f"thread_units above 1 and slice = unit_lanes · thread_units, not "
                         f"stamped; got {cfg}")


def _check_crossed(cfg: Config, hidden: int, acc) -> None:
    """_check_split's rules for the crossed backward (``Config.k_blocks``)."""
    if cfg.stacked and acc == tl.float64:
        raise ValueError("a stacked crossed split multiplies on the tensor cores: it can't "
                         "run float64")
    if not splits._can_cross(cfg):
        raise ValueError(f"a crossed split (k_blocks {cfg.k_blocks}) needs k_blocks ≥ 2 and "
                         f"a chunked split's tiles or stacked ones (tl.dot, 16 rows, 16 "
                         f"units or more, powers of two), with none of the other exchanges "
                         f"(stamped, kmajor, narrow, permuted); got {cfg}")
    units = splits._block_units(hidden, cfg.k_blocks)
    if cfg.block_k < units:
        raise ValueError(f"a crossed split needs block_k ≥ ceil(hidden / k_blocks) "
                         f"({units}); got {cfg.block_k}")


def _programs(cfg: Config, hidden: int, device: torch.device) -> int:
    """The programs of a batch tile, refused where they can't all run at once."""
    programs = splits._tile_programs(cfg, hidden)
    if INTERPRET and programs > 1 and cfg.k_blocks == 1:
        raise ValueError("the Triton interpreter runs one program per batch tile: "
                         f"slice {cfg.slice} must cover all {hidden} hidden units")
    if programs > splits._grid_limit(device):
        raise ValueError(f"{programs} programs per batch tile can't all be resident on "
                         f"{splits._grid_limit(device)} multiprocessors: use a larger slice")
    return programs


def _kernel_weights(w: Tensor, cfg: Config) -> Tensor:
    """W_hh (or W_hhᵀ) as the kernels read it: contiguous; for a stacked split in fp32,
    its TF32 high parts followed by its low parts (_tf32_parts)."""
    w = w.contiguous()
    if cfg.stacked and w.dtype == torch.float32:
        w = torch.cat(_tf32_parts(w))
    return w


def _for_weights(cfg: Config, dtype: torch.dtype) -> Config:
    """cfg for weights of this dtype (a caller's own mix with activations of another):
    not narrow unless they are 16-bit. For _split's splits; _check_weights refuses a split
    asked for by name."""
    return cfg._replace(narrow=cfg.narrow and dtype in SIXTEEN_BIT)


def _check_weights(cfg: Config, dtype: torch.dtype) -> None:
    """Refuse a split that can't run on weights of this dtype (_for_weights' rules)."""
    if cfg.narrow and not splits._can_narrow(cfg, dtype):
        raise ValueError("a narrow split exchanges 16-bit values: it needs tl.dot on 16-bit "
                         f"weights and no stamped exchange; got {dtype} and {cfg}")


# fp32 w = hi + lo exactly, hi rounded to TF32 (the stacked splits' W_hh parts)
_tf32_parts = tf32x3.split
