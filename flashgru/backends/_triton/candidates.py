"""Benchmark mode's candidate splits for a call (triton_gru.benchmark): the default, and the
others worth timing on this card at this shape.
"""

from __future__ import annotations

import torch

from . import splits
from .splits import Config


def _candidates(default: Config, batch: int, hidden: int, device: torch.device,
                dtype: torch.dtype, forward: bool) -> list[Config]:
    """The splits benchmark mode times for a call (``forward``: the forward's, else the
    backward's), its default first: a resident broadcast default with the other exchange
    (stamped or barrier; stamped where its block holds at most STAMPED_TWIN_MAX_WORDS), and
    each of these two with the product over K in chunks or not (``Config.chunked``); on
    CUDA the default with its reads a step ahead or not (``Config.prefetch``); and the
    default with the other exchange where a 16-bit one can be (``Config.narrow``; the
    others narrow where they can be); at batch 9-16, H ≤ 256, smaller row tiles with W
    resident (each its own recurrence), K-major and row-major, and one 16-row tile
    (_broadcast_split); at batch 9-16 above H=256, tl.dot on streamed W and, in fp32, the
    resident spread split unchunked (in any dtype chunked, at 8 warps and up to H=512 at 4,
    and in SPREAD_CHUNK_SHAPES's shapes; and in fp32 8- or 4-row tiles chunked, in
    ROW_TILE_SPREADS's; each shape whose warps all lie along K also with its exchange
    permuted, ``Config.permuted``, and so with prefetch too), in 16 bits up to H=1024
    tl.dot on resident tiles (16 units, and 32 where they fit in shared memory), and at
    H=257-512 two 8-row or four 4-row tiles with W resident; at batch ≤ 16, the stacked
    tiles on the tensor cores where they fit (_stacked_splits; below 16 rows their tile's
    other rows idle, for a barrier of 16-128 programs). On an H200 (B=16, 2026-11-28)
    16-bit resident tl.dot lost wherever it was timed, as did three families since taken
    out: a backward exchanging partial products, a tile's rows in two groups, and fp32's
    stacked splits on fp16 parts (docs/performance.md). Off CUDA (the interpreter: one
    program per tile), the default, stamped, each chunked or not, and with W streamed.
    A backward's at batch 9-16 above H=256 also the crossed splits (splits._crossed_splits:
    Config.k_blocks, untimed); where the default is one of them (splits.CROSSED_DEFAULTS),
    the one-way default's candidates after it."""
    if default.k_blocks != 1:
        one_way = splits.choose_backward_config(batch, hidden, device, dtype, crossed=False)
        return [default] + [cfg for cfg in _candidates(one_way, batch, hidden, device, dtype,
                                                       forward) if cfg != default]
    found = [default]
    fp32_arithmetic = dtype != torch.float64
    if default.resident and fp32_arithmetic and not (default.stacked or default.kmajor) and (
            default.stamped or
            default.block_batch * default.block_k <= splits.STAMPED_TWIN_MAX_WORDS):
        found.append(default._replace(stamped=not default.stamped, permuted=False))
    # (the resident broadcast splits with the product over K in chunks, Config.chunked,
    # and without where the default is: without, in no chunk shape)
    found += [cfg._replace(chunked=not cfg.chunked, unit_lanes=1, thread_units=1,
                           permuted=False)
              for cfg in list(found) if splits._can_chunk(cfg)]
    if device.type != "cuda":
        found.append(default._replace(resident=False, stamped=False))
        return found
    found.append(default._replace(prefetch=not default.prefetch))
    hp = splits._pow2(hidden)
    if 8 < batch <= 16 and fp32_arithmetic:
        one_tile = splits._broadcast_split(batch, hidden, splits._grid_limit(device), dtype)
        if hidden <= 256:
            found += [Config(4, 8, hp, dot=False, warps=8, resident=True, kmajor=True),
                      Config(4, 8, hp, dot=False, resident=True),
                      Config(2, 16, hp, dot=False, resident=True), one_tile]
        else:
            spread = splits._spread_resident(hidden, device)
            found += [Config(16, 32, 64, dot=True)] + (
                [spread] if spread is not None and dtype == torch.float32 else [])
            if spread is not None and splits._can_chunk(spread):  # (chunked at 8 warps, and at 4
                # up to H=512: ptxas, sm_90a, at most 100 bytes spilled; 4 warps at H=1024
                # spill 18 KB)
                found += [spread._replace(warps=w, chunked=True)
                          for w in ((4, 8) if hp <= 512 else (8,))]
                found += [spread._replace(warps=w, chunked=True, unit_lanes=u, thread_units=i)
                          for w, u, i in SPREAD_CHUNK_SHAPES.get(
                              (spread.slice, hp, forward), ())]
            if spread is not None and dtype == torch.float32:  # (8- or 4-row tiles, each
                # over a half or a quarter of the programs)
                found += [Config(rows, 16 // rows * spread.slice, hp, dot=False, warps=w,
                                 resident=True, chunked=True, unit_lanes=u, thread_units=i)
                          for rows, w, u, i in ROW_TILE_SPREADS.get(
                              (spread.slice, hp, forward), ())]
            if hp == 512:  # smaller row tiles, W resident (ptxas, sm_90a: no spills)
                found += [Config(8, 8, hp, dot=False, resident=True),
                          Config(4, 16, hp, dot=False, warps=8, resident=True)]
            if dtype != torch.float32 and hp <= 1024:
                # 16-bit: tl.dot on W's tiles held all the loop (mma.sync, M = 16 rows:
                # none of the stacked tiles' idle rows and folds), 16 or 32 units at 8
                # warps (ptxas, sm_90a: no spills), where they fit in shared memory: 32
                # units of K=1024 take 256 KiB, over an SM's 227 (OutOfResources on an
                # H200, 2026-11-27)
                found += [Config(16, s, hp, dot=True, warps=8, resident=True)
                          for s in (16, 32) if s * hp <= 16 * 1024]
    # (each chunk shape whose warps all lie along K with its exchange permuted, the
    # default's too)
    found += [cfg._replace(permuted=True) for cfg in found
              if splits._can_permute(cfg) and not cfg.permuted]
    # (and each permuted one with its reads a step ahead too: prefetch costs them
    # 0-1% more instructions and no spills, sm_90a, Triton 3.6, fp32 B=16, except the
    # 8-row H=1024 backward's, 116 → 204 bytes; timed so, they show what a default made
    # of them would take)
    found += [cfg._replace(prefetch=True) for cfg in found if cfg.permuted and not cfg.prefetch]
    if batch <= 16 and fp32_arithmetic:
        found += splits._stacked_splits(hidden, device, dtype, forward)
    if not forward and 8 < batch <= 16 and hidden > 256:  # (the crossed backward's)
        found += splits._crossed_splits(hidden, dtype)
    # (16-bit exchanges where they can be, and the default with the other exchange)
    found = [found[0]] + [splits._narrow_where_set(cfg, device, dtype) for cfg in found[1:]]
    if default.narrow or splits._narrow_where_set(default, device, dtype).narrow:
        found.insert(1, default._replace(narrow=not default.narrow))
    # (not the splits whose programs for one tile can't all be resident on this card)
    limit = splits._grid_limit(device)
    return [cfg for cfg in dict.fromkeys(found)
            if cfg == default or splits._tile_programs(cfg, hidden) <= limit]


# Benchmark mode's chunked spread splits with a warp's lanes along the units and K's chunks
# over warps (Config.unit_lanes, Config.thread_units), at batch 9-16: (units, K, forward)
# → (warps, unit_lanes, thread_units). Timed on an H200 (B=16, 2026-11-28): each key's
# fastest is now the default (splits.SPREAD_CHUNK_DEFAULTS). Chosen offline: by
# scripts/sass_profile.py (sm_90a, fp32, B=16, 132 SMs), those whose time loop reads the
# fewest shared-memory bytes and shuffles least (ldmatrix ×4 + shuffles a thread, times
# warps: the backward's largest floor) without spilling more than a few words:
#   H=512 forward, 4 warps: 1984 → 1696 (4, 1); backward 4032 → 2064 (2, 2) at 4 warps,
#   2608 at 8; H=1024 forward, 8 warps: 6016 → 5440 (4, 1), 4736 (4, 2); backward
#   14208 → 7040 (4, 2), 7232 (2, 2).
# With the exchange permuted (Config.permuted: the operand loaded by each thread, no
# shared memory), the fewest lanes along K win instead (twenty-fourth session, Triton 3.6,
# warp-instructions a step per multiprocessor, permuted, against the default unpermuted):
#   H=1024 forward (8, 1) 18,624 (174 registers, no spills), against (4, 2) 20,608 and
#   permuted 20,792 (255 registers): its sums over K's lanes 123 shuffles a thread against
#   324; H=512 backward (4, 1) 5,476 (134 registers), against (2, 2) 6,992 (40 bytes
#   spilled) and permuted 5,844.
SPREAD_CHUNK_SHAPES = {
    (4, 512, True): ((4, 4, 1),),
    (4, 512, False): ((4, 2, 2), (8, 2, 2), (4, 4, 1)),
    (8, 1024, True): ((8, 4, 1), (8, 4, 2), (8, 8, 1)),
    (8, 1024, False): ((8, 4, 2), (8, 2, 2)),
}


# Benchmark mode's chunked splits of smaller row tiles at batch 9-16, in fp32: two 8-row
# tiles, each over half the programs with twice the spread split's units
# (_spread_resident), or four 4-row tiles over a quarter each with four times the units:
# (units, K, forward) → (rows, warps, unit_lanes, thread_units), each also permuted. A
# program then reads a half or a quarter of the exchange a step (the backward's gradients:
# 96 KB at H=1024 in 8 rows, against 192 KB; 12.6 MB a step through L2 in all, against
# 25), and its barrier counts as few arrivals. Chosen offline, untimed (twenty-fourth
# session, scripts/sass_profile.py, sm_90a, Triton 3.6, fp32 B=16, warp-instructions a step
# per multiprocessor, permuted, against the defaults unpermuted): H=512 forward 8 rows (8
# units, 4 warps, u8x1) 4,760, 4 rows (16 units, 8 warps, u16x1) 5,720, against 5,964;
# 60 and 24 shuffles a thread against 156; H=512 backward 8 rows (u4x2) 4,928, 4 rows (8
# warps, u8x2) 5,640, against 6,992 (no spills, against 40 bytes); H=1024 backward 8 rows
# (16 units, 16 warps, u8x2) 20,912 against 21,112, 116 bytes spilled against 148. At
# H=1024 the forward's 16 units spill 0.5-4.4 KB, and 32 units don't fit: none.
ROW_TILE_SPREADS = {
    (4, 512, True): ((8, 4, 8, 1), (4, 8, 16, 1)),
    (4, 512, False): ((8, 4, 4, 2), (4, 8, 8, 2)),
    (8, 1024, False): ((8, 16, 8, 2),),
}
