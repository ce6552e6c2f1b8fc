"""How a launch splits the work (``Config``) and the default splits (``choose_config``,
``choose_backward_config``), with the timings behind them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .lang import WARP_LANES

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
SIXTEEN_BIT = (torch.bfloat16, torch.float16)


class Config(NamedTuple):
    """How a launch splits the work. block_batch (BB) rows per tile; slice (S) hidden units
    per program; block_k (BK) the reduction chunk; dot: tl.dot (needs BB, S, BK ≥ 16) or
    a broadcast-and-sum product; warps per program; precision: tl.dot's for fp32 operands
    ("tf32x3": three TF32 products on the tensor cores, ~fp32 accuracy; or "ieee");
    resident: the kernel loads its W_hh tiles once, before the time loop, and keeps them
    in registers (needs block_k ≥ H: all of K in one tile), instead of reading them
    through the caches at every step (the default where measured faster); stamped: the
    programs exchange each step's vectors as 64-bit words that carry the step number
    beside the fp32 value, and a reader re-reads until every word it needs carries the
    current step, instead of meeting the others at a barrier first (one trip through L2
    a step instead of a store's fence, the counter's round trips and then the read; fp32
    arithmetic only: not fp64); kmajor (resident broadcast tiles): the state (the
    backward's gradients) is exchanged transposed, (H, B) ((3H, B)), and each product is
    summed over its first axis, K, so the layout Triton picks keeps more of the sum within
    a thread (nvdisasm, sm_90a: B=16, H=256 at 8 warps a third of the instructions, a
    tenth of the shuffles); stacked (a 16-row tile: block_batch 16, slice 4, 8 or 16,
    tl.dot, resident): the program's rows of W_hh's three gates (the backward's: of
    W_gᵀ) stacked into one (64, K / F) tile, F = 16 / slice folds of K, that Triton keeps
    in shared memory and multiplies on the tensor cores (wgmma on sm90) by the state's
    transpose (the backward's: the gates' gradients), its folds side by side, fp32 as
    three TF32 products on W_hh split on the host (_tf32_parts); shared memory as
    _stacked_bytes; prefetch: the loads a step needs from memory written before the
    launch (the forward's gi, the backward's saved gates, dL/dout and the states) are
    issued a step ahead, so their latency overlaps the step before instead of adding to
    it (at T·B·H where they have left L2, HBM's latency every step of the backward);
    narrow (tl.dot on 16-bit weights, not stamped): the state (the backward's gradients) is
    exchanged in the weights' dtype instead of fp32, half the bytes every program reads
    from L2 at every step, with no number changed: tl.dot rounds its operand to that dtype
    all the same; chunked (resident
    broadcast tiles, not K-major, block_k ≥ LANES, fewer than 16 rows or units): the
    product over K in chunks of a warp's lanes, each thread summing its chunks before the
    lanes meet (_chunked_product), where the plain broadcast product's sum over K is all
    shuffles between lanes and warps; W's tiles are laid out to match (_chunked_tiles);
    unit_lanes (chunked; 1, or a power of two up to slice): a warp's lanes along the
    units, the rest along K's chunks (_chunk_shape), and the warps along the units as far
    as they go, then along K, summed across warps through shared memory once per product:
    where a warp covers every unit of the program's, as at 8 warps of 8 units, each warp
    reads every operand value from shared memory; this way a warp reads 1 / (warps along
    K) of them; thread_units (chunked; 1, or a power of two, times unit_lanes at most
    slice): each thread's units at the same K, so that each operand value a thread reads
    from shared memory serves that many units (the backward's three gates summed in each
    thread before the lanes meet: _chunked_gates). The defaults' where they won on an H200
    (SPREAD_CHUNK_DEFAULTS), benchmark mode's candidates (SPREAD_CHUNK_SHAPES); permuted (a
    chunked split with a chunk shape whose warps all lie along K: slice = unit_lanes ·
    thread_units; not stamped): the exchange holds each row's
    values in the order the product's threads hold them (_permuted_at), so that each
    thread loads its operand values itself, 16 bytes at a time, where a row-major block
    goes through shared memory first, one row at a time with two barriers each (nvdisasm,
    sm_90a, Triton 3.6, fp32 B=16: H=1024's forward ~32 barriers a step, its backward
    ~100); a benchmark-mode candidate, not yet timed; k_blocks (the backward's, a
    chunked or stacked split; 1: off): W_hh split over the programs both ways, the
    gradients' units in k_blocks blocks of ceil(H / k_blocks) (block_k: that, a power of
    two) and dL/dh's in slices, k_blocks · ceil(H / slice) programs a tile, which exchange
    partial sums of dL/dh, B × H values a step, instead of the B × 3H gradients
    (_triton.crossed); a benchmark-mode candidate, not yet timed."""

    block_batch: int
    slice: int
    block_k: int
    dot: bool
    warps: int = 4
    precision: str = "tf32x3"
    resident: bool = False
    stamped: bool = False
    kmajor: bool = False
    stacked: bool = False
    prefetch: bool = False
    narrow: bool = False
    chunked: bool = False
    unit_lanes: int = 1
    thread_units: int = 1
    permuted: bool = False
    k_blocks: int = 1


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


# The most W elements a program keeps resident (3 gates × units × K): B=1, H=1024's split
# (8 units), which ptxas compiles to 255 registers per thread at 4 warps without spilling
# (sm_90); larger tiles would spill.
RESIDENT_MAX = 3 * 8 * 1024


# Benchmark mode's crossed backward splits (Config.k_blocks, _triton.crossed) at batch
# 9-16: H padded to a power of two → (k_blocks, slice, warps,
# unit_lanes, thread_units, prefetch), block_k = ceil(H / k_blocks) as a power of two; the
# first of each in 16 bits too, all in fp32. 128 programs at H=512 and 1024, each reading
# partial sums of dL/dh a step (k_blocks + 1 planes of 16 × block_k: ~16 × H values)
# instead of all 16 × 3H gradients: 8.9 MB a step through L2 at fp32 H=1024 against 25
# (and the saved gates of its K-block, 3.1 MB more, read by the 8 programs of that
# block). Chosen offline, untimed (twenty-seventh session, scripts/sass_profile.py,
# sm_90a, Triton 3.6, B=16, warp-instructions a step per multiprocessor): fp32 H=1024 k16
# u16x2 21,328 (no spills), u8x2 22,080 (24 bytes spilled), with prefetch 21,856 (56),
# k8 u8x2 21,544 (52), against the default's 21,112 (148); H=512 k16 u8x2 7,036, with
# prefetch 7,096, u8x4 7,804 (none spilled), against 6,992 (40); bf16 H=1024 k16 u16x2
# 21,168, H=512 u8x2 7,124. (k_blocks 32 at H=512 would leave block_k 16, under a warp's
# lanes; k4 at H=1024 spilled 1.1 KB.)
CROSSED_SPLITS = {
    512: ((16, 64, 4, 8, 2, False), (16, 64, 4, 8, 4, False), (16, 64, 4, 8, 2, True)),
    1024: ((16, 128, 8, 16, 2, False), (16, 128, 8, 8, 2, False), (16, 128, 8, 8, 2, True),
           (8, 64, 8, 8, 2, False)),
}


# ... and on the tensor cores (Config.stacked: each gate's (slice, block_k) tile of W_gᵀ
# times the gradients, tl.dot with M = slice, N = 16 rows; fp32 as three TF32 products):
# H padded → (k_blocks, slice, warps, prefetch), in any dtype but fp64 where the tiles fit
# (_crossed_bytes). Counted offline as the chunked ones (wgmma, no spills): fp32 H=1024
# k16 6,440 warp-instructions (6,560 with prefetch), against the chunked default's
# 21,112; H=512 k16 2,644 (2,720), k8 (64 programs) 4,672, against 6,992; bf16 H=1024
# k16 4,000 (4,160), k8 5,624, against the stacked default's 3,532 (which reads 98 KB of
# 16-bit gradients a program a step, against 70 KB of fp32 partial sums); bf16 H=512 k16
# 1,912 (1,980), k8 2,820, against 3,808. (k8 at H=1024 in fp32 needs 384 KiB; at 4
# warps fp32 H=1024 spilled 0.5-0.7 KB.)
CROSSED_STACKED = {
    512: ((16, 64, 4, False), (16, 64, 4, True), (8, 64, 4, False)),
    1024: ((16, 128, 8, False), (16, 128, 8, True), (8, 128, 8, False)),
}


def _crossed_bytes(cfg: Config, dtype: torch.dtype) -> int:
    """Shared memory of a stacked crossed split: its three gates' tiles (slice × block_k;
    fp32: W's two parts) and the gradients' operand (block_k × 16; fp32: two parts)."""
    size = 8 if dtype == torch.float32 else 2
    return (3 * cfg.slice + cfg.block_batch) * cfg.block_k * size


def _crossed_splits(hidden: int, dtype: torch.dtype) -> list[Config]:
    """Benchmark mode's crossed backward splits for a 16-row tile at this H: the chunked
    ones (CROSSED_SPLITS: all in fp32, the first in 16 bits), then the stacked ones
    (CROSSED_STACKED, where _crossed_bytes is within STACKED_MAX_BYTES); none in fp64
    (untried) or where H isn't in the tables."""
    hp = _pow2(hidden)
    if dtype == torch.float64:
        return []
    shapes = CROSSED_SPLITS.get(hp, ())
    if dtype != torch.float32:
        shapes = shapes[:1]
    found = [_crossed_split(hidden, ("chunked", row)) for row in shapes]
    stacked = [_crossed_split(hidden, ("stacked", row)) for row in CROSSED_STACKED.get(hp, ())]
    return found + [cfg for cfg in stacked if _crossed_bytes(cfg, dtype) <= STACKED_MAX_BYTES]


def _crossed_split(hidden: int, entry: tuple) -> Config:
    """The crossed split of a table's row at this H: ("chunked", a CROSSED_SPLITS row) or
    ("stacked", a CROSSED_STACKED row), for a 16-row tile."""
    kind, row = entry
    if kind == "stacked":
        k, s, w, p = row
        return Config(16, s, _pow2(_block_units(hidden, k)), dot=True, warps=w, resident=True,
                      stacked=True, prefetch=p, k_blocks=k)
    k, s, w, u, i, p = row
    return Config(16, s, _pow2(_block_units(hidden, k)), dot=False, warps=w, resident=True,
                  prefetch=p, chunked=True, unit_lanes=u, thread_units=i, k_blocks=k)


# The crossed backward as the default at batch 9-16 above H=256, where benchmark mode timed
# it fastest: (arithmetic, H padded to a power of two) → its table row, as _crossed_split
# takes it; arithmetic "fp32" or "16-bit" (scripts/tune_summary.py --defaults prints the
# entries a tune calls for). H200, 2026-11-28 (thirty-first session), benchmark mode, B=16,
# µs a step: at H=1024 the stacked split of 16 K-blocks, 128 units a program, 8 warps,
# prefetching, fp32 10.99 → 7.31 (the chunked spread split u4x2 before), bf16 5.36 → 3.96
# (the stacked 8 units, prefetch, narrow before). At H=512 the one-way splits stayed the
# fastest. A bidirectional pair's launch keeps the one-way splits (choose_backward_config's
# ``crossed``), as does a card whose multiprocessors can't hold the split's programs.
CROSSED_DEFAULTS: dict[tuple[str, int], tuple] = {
    ("fp32", 1024): ("stacked", (16, 128, 8, True)),
    ("16-bit", 1024): ("stacked", (16, 128, 8, True)),
}


def _crossed_default(hidden: int, device: torch.device, dtype: torch.dtype) -> Config | None:
    """The crossed split CROSSED_DEFAULTS names for this H and dtype, or None: none named,
    or not one benchmark mode offers here (_crossed_splits: not fp64, stacked tiles within
    STACKED_MAX_BYTES), or its programs more than the card's multiprocessors."""
    entry = CROSSED_DEFAULTS.get(("fp32" if dtype == torch.float32 else "16-bit",
                                  _pow2(hidden)))
    if entry is None:
        return None
    cfg = _crossed_split(hidden, entry)
    if cfg not in _crossed_splits(hidden, dtype) or \
            _tile_programs(cfg, hidden) > _grid_limit(device):
        return None
    return cfg


def _block_units(hidden: int, k_blocks: int) -> int:
    """The units of a crossed split's K-block (``Config.k_blocks``): ceil(H / k_blocks)."""
    return -(-hidden // k_blocks)


def _tile_programs(cfg: Config, hidden: int) -> int:
    """The programs of one batch tile: a slice of units each, times k_blocks (the crossed
    backward's)."""
    return -(-hidden // cfg.slice) * cfg.k_blocks


# The most hidden units a program takes (tl.dot on streamed W; 128 need more shared memory
# than an SM has, fp32): a tile's programs must all be resident at once (the barrier), so
# H ≤ MAX_UNITS × multiprocessors (``max_hidden``).
MAX_UNITS = 64


def max_hidden(device: torch.device) -> int:
    """The largest hidden size the kernels run on this device (every program of a batch
    tile resident at once, MAX_UNITS units each)."""
    return MAX_UNITS * _grid_limit(device)


def _grid_limit(device: torch.device) -> int:
    if device.type != "cuda":
        return 1 << 30
    return _multiprocessors(device)


_MULTIPROCESSORS: dict[torch.device, int] = {}
_DEVICE_PROPERTIES = torch.cuda.get_device_properties


def _multiprocessors(device: torch.device) -> int:
    """The CUDA device's multiprocessors, read once per device: get_device_properties
    costs host time that a call's kernels wait for (several reads a call). A stand-in for
    get_device_properties (a test's card) is asked every time."""
    read = torch.cuda.get_device_properties
    if read is not _DEVICE_PROPERTIES:
        return read(device).multi_processor_count
    if device.index is None:  # (the current device's)
        device = torch.device("cuda", torch.cuda.current_device())
    count = _MULTIPROCESSORS.get(device)
    if count is None:
        count = _MULTIPROCESSORS[device] = read(device).multi_processor_count
    return count


# The largest block of words (rows × K) a default resident forward split reads stamped
# (``Config.stamped``) instead of after a barrier: B=1's blocks up to H=1024, and by the
# same count B=2 up to H=512, B=3-4 up to 256, B=5-8 up to 128 (not timed). Measured in
# benchmark mode on an H200 (2026-11-27, scripts/gpu_tune.sh): stamped, B=1's forward
# 1.05-1.36x faster at H=256-1024 (fp32 and bf16), but the B=16, H=256 block (4096
# words) 0.88x and every backward split 0.85-0.97x (choose_backward_config: never).
STAMPED_MAX_WORDS = 1024


# A chunked split's (Config.chunked) STAMPED_MAX_WORDS: at B=1 (H200, 2026-11-27) the
# stamped exchange won at H=512 (forward 1.61 → 1.21 µs per step), the barrier at H=1024
# (1.62 against 1.74 stamped).
CHUNKED_STAMPED_MAX_WORDS = 512


# The largest block of words benchmark mode also times stamped (its stamped twin of a
# resident default, candidates._candidates): a stamped wait polls every word of its block,
# and on an H200 the larger blocks lost wherever timed: 4096 words (B=16, H=256) 0.88x the
# barrier's speed (2026-11-27), 8192 and 16384 (fp32 B=16, H=512 and 1024, forward and
# backward, chunked or not) 1.3-4.4x slower than the same split with the barrier
# (2026-11-28). 2048 (B=2 at H=1024, B=8 at 256) is untimed.
STAMPED_TWIN_MAX_WORDS = 2048


def _stamped_where_set(cfg: Config, device: torch.device, dtype: torch.dtype) -> Config:
    """cfg, stamped where STAMPED_MAX_WORDS (chunked: CHUNKED_STAMPED_MAX_WORDS) allows: a
    resident split on CUDA in fp32 arithmetic (not fp64) whose blocks hold at most that
    many words."""
    most = CHUNKED_STAMPED_MAX_WORDS if cfg.chunked else STAMPED_MAX_WORDS
    if device.type == "cuda" and dtype != torch.float64 and cfg.resident and \
            cfg.block_batch * cfg.block_k <= most:
        return cfg._replace(stamped=True)
    return cfg


# The smallest K a default split sums in chunks (Config.chunked): measured on an H200
# (benchmark mode, fp32, 2026-11-27), chunked won at K=512 and 1024 (B=1 forward 1.2-1.5x,
# backward 1.1x; B=16 forward 1.3x and 2.3x, backward 1.4x and 1.5x) and lost at K=256
# (B=1: 0.94x forward, 0.99x backward).
CHUNKED_MIN_K = 512


def _chunked_where_set(cfg: Config, device: torch.device, dtype: torch.dtype) -> Config:
    """cfg, chunked (``Config.chunked``) where it was measured to win: a split that can be
    (_can_chunk) on CUDA with K ≥ CHUNKED_MIN_K, at 4 warps or, at 8, K ≥ 1024 (B=16,
    H=512: 4 units at 8 warps chunked took 19.9 µs a step against 9.55 unchunked, H200;
    8 units of K=1024 at 8 warps won, 14.8 against 22.5)."""
    if device.type == "cuda" and dtype != torch.float64 and _can_chunk(cfg) and \
            cfg.block_k >= CHUNKED_MIN_K and (cfg.warps <= 4 or cfg.block_k >= 1024):
        return cfg._replace(chunked=True)
    return cfg


def _narrow_where_set(cfg: Config, device: torch.device, dtype: torch.dtype) -> Config:
    """cfg, narrow (``Config.narrow``: its exchange in 16 bits) where it can be: tl.dot on
    16-bit weights, not stamped, on CUDA. It halves what every program reads from L2 at
    every step (at B=16, H=1024 the backward's 128 programs read all 16 × 3H gradients,
    25 MB a step in fp32) and changes no number. Benchmark mode's candidates, and the
    16-bit stacked defaults where timed (_stacked_default: B=16, H=1024, H200)."""
    return cfg._replace(narrow=True) if device.type == "cuda" and _can_narrow(cfg, dtype) else cfg


# What a chunked spread split (_spread_resident: fp32 at batch 9-16) takes by default:
# (units, K, warps, forward) → the Config fields it changes: its chunk shape
# (Config.unit_lanes, Config.thread_units), and where they win, the permuted exchange,
# prefetch, or 8- or 4-row tiles of more units (block_batch, slice, warps: benchmark
# mode's ROW_TILE_SPREADS). H200, benchmark mode, 2026-11-28, µs a step, shape (1, 1) →
# this: H=512 forward 3.22 → 3.09 (training 3.52 → 3.30), backward 6.79 → 5.74; H=1024
# forward 6.96 → 6.12 (training 6.96 → 5.93), backward 14.72 → 10.93. (The partial-product
# backward took 5.92 and 12.99, the grouped splits 11.9-15.0 at H=1024: slower, and since
# taken out.) The thirty-first session's tune (H200, from memory): H=512's backward in
# four 4-row tiles, 16 units a program, 8 warps, u8x2, 5.83 → 4.32; the forwards' shapes
# tied with the others' (H=1024's backward: CROSSED_DEFAULTS).
SPREAD_CHUNK_DEFAULTS = {
    (4, 512, 4, True): dict(unit_lanes=4, thread_units=1),
    (4, 512, 4, False): dict(block_batch=4, slice=16, warps=8, unit_lanes=8, thread_units=2),
    (8, 1024, 8, True): dict(unit_lanes=4, thread_units=2),
    (8, 1024, 8, False): dict(unit_lanes=4, thread_units=2),
}


def _chunk_shape_where_set(cfg: Config, forward: bool) -> Config:
    """cfg with SPREAD_CHUNK_DEFAULTS's fields where it is a chunked 16-row split of that
    many units, K and warps (and the split they make can run: _can_chunk, and
    _can_permute where permuted); else cfg."""
    fields = SPREAD_CHUNK_DEFAULTS.get((cfg.slice, cfg.block_k, cfg.warps, forward))
    if not cfg.chunked or cfg.block_batch != 16 or fields is None:
        return cfg
    shaped = cfg._replace(**fields)
    return shaped if _can_chunk(shaped) and (
        _can_permute(shaped) or not shaped.permuted) else cfg


def _shaped_where_it_fits(cfg: Config, hidden: int, device: torch.device,
                          forward: bool) -> Config:
    """_chunk_shape_where_set's split, where its row tiles (8 or 4 rows) all fit on the
    card at once for a 16-row batch, as the 16-row tile's programs do; else cfg (one launch
    a batch, not two: a small card, H=264 on 66 multiprocessors)."""
    shaped = _chunk_shape_where_set(cfg, forward)
    if 16 // shaped.block_batch * _tile_programs(shaped, hidden) > _grid_limit(device):
        return cfg
    return shaped


def _can_chunk(cfg: Config) -> bool:
    """Whether cfg can be ``Config.chunked``: resident broadcast tiles, not K-major, K at
    least a warp's lanes, and fewer than 16 rows or 16 units (with both, Triton 3.6's
    combine pass fails on the product, taking it for a tl.dot: sm_90a, 2026-11-27; 3.9
    compiles it); with ``Config.unit_lanes`` and ``Config.thread_units``, powers of two
    whose product is at most the units, and K a whole number of _chunk_shape's chunks
    across its warps."""
    lanes, inner = cfg.unit_lanes, cfg.thread_units
    if not (cfg.resident and not (cfg.dot or cfg.kmajor or cfg.stacked) and
            cfg.block_k >= WARP_LANES and min(cfg.block_batch, cfg.slice) < 16 and
            min(lanes, inner) >= 1 and lanes & (lanes - 1) == 0 and inner & (inner - 1) == 0
            and lanes <= WARP_LANES and lanes * inner <= cfg.slice):
        return False
    chunk, kwarps = _chunk_shape(cfg)
    return cfg.block_k % (chunk * kwarps) == 0


def _can_cross(cfg: Config) -> bool:
    """Whether cfg can be the crossed backward (``Config.k_blocks`` ≥ 2), with none of the
    other exchanges (stamped, kmajor, narrow, permuted): a chunked split's tiles
    (_can_chunk's rules; in a chunk shape 16 rows and 16 or more units too, where the
    product's sum runs over 5 axes, which Triton's combine pass leaves alone: sm_90a,
    Triton 3.6, no HMMA), or stacked ones (tl.dot, resident, 16 rows, 16 units or more
    and block_k ≥ 16, powers of two: tl.dot's smallest)."""
    if cfg.k_blocks < 2 or cfg.stamped or cfg.kmajor or cfg.narrow or cfg.permuted:
        return False
    if cfg.stacked:
        return (cfg.dot and cfg.resident and not cfg.chunked and cfg.block_batch == 16 and
                cfg.slice >= 16 and cfg.block_k >= 16 and
                (cfg.unit_lanes, cfg.thread_units) == (1, 1) and
                cfg.slice & (cfg.slice - 1) == 0 and cfg.block_k & (cfg.block_k - 1) == 0)
    shaped = (cfg.unit_lanes, cfg.thread_units) != (1, 1)
    return cfg.chunked and _can_chunk(
        cfg._replace(block_batch=min(cfg.block_batch, 8)) if shaped else cfg)


def _can_permute(cfg: Config) -> bool:
    """Whether cfg can be ``Config.permuted``: a chunked split (_can_chunk) with a chunk
    shape (unit_lanes or thread_units above 1) whose warps all lie along K (slice =
    unit_lanes · thread_units: the warps along the units would each load the same
    values), not stamped."""
    return (cfg.chunked and _can_chunk(cfg) and (cfg.unit_lanes, cfg.thread_units) != (1, 1)
            and cfg.slice == cfg.unit_lanes * cfg.thread_units and not cfg.stamped)


def _permuted_places(cfg: Config, hidden: int, device: torch.device) -> torch.Tensor:
    """Where each k < hidden lies in a row of ``Config.permuted``'s exchange (the kernels'
    _permuted_at), made on ``device`` by torch's integer ops (no copy from the host: a
    call under CUDA graph capture may make it)."""
    chunk, kwarps = _chunk_shape(cfg)
    chunks = cfg.block_k // (chunk * kwarps)
    v = min(4, chunks)
    k = torch.arange(hidden, device=device)
    c = k // (kwarps * chunk)
    return (k // chunk) % kwarps * (chunks * chunk) + c // v * (v * chunk) + k % chunk * v + \
        c % v


def _permutation(cfg: Config, hidden: int) -> list[int]:
    """_permuted_places, as a list."""
    return _permuted_places(cfg, hidden, torch.device("cpu")).tolist()


def _chunk_shape(cfg: Config) -> tuple[int, int]:
    """A ``Config.chunked`` product's chunk (a warp's lanes along K) and its warps along K:
    with ``Config.unit_lanes`` u, chunks of LANES / u; the warps along the units as far
    as slice / (u · thread_units) go, the rest along K; (32, 1) at unit_lanes and
    thread_units 1."""
    if (cfg.unit_lanes, cfg.thread_units) == (1, 1):  # (Triton's layout: warps along
        return WARP_LANES, 1  # the units, any left over along the chunks)
    outer = max(1, cfg.slice // cfg.thread_units)
    unit_warps = max(1, min(cfg.warps, outer // cfg.unit_lanes))
    return WARP_LANES // cfg.unit_lanes, max(1, cfg.warps // unit_warps)


def _can_narrow(cfg: Config, dtype: torch.dtype) -> bool:
    """Whether cfg's exchange may be 16-bit with weights of this dtype: tl.dot on 16-bit
    weights (which rounds its operand so anyway), not the stamped exchange (fp32 words),
    nor the crossed one (partial sums, which no product rounds)."""
    return cfg.dot and not cfg.stamped and cfg.k_blocks == 1 and dtype in SIXTEEN_BIT


def choose_config(batch: int, hidden: int, device: torch.device, dtype: torch.dtype,
                  save: bool = False) -> Config:
    """The default split for a call's forward (``save``: a training call's, which saves
    the gates for the backward), from timings on an H100 and an H200 (docs/performance.md).

    Batch ≤ 16: one tile, as many programs as multiprocessors (a few hidden units each),
    the broadcast product, W's tiles resident in registers where one tile covers H (the
    forward 1.04-2.0x faster at B=1, H=256-1024 on an H100, 2026-11-27), and at batch 2-8
    where they fit though such a tile wouldn't (_broadcast_split), the product over K in
    chunks from K=512 (``_chunked_where_set``), read stamped where the block is small
    (STAMPED_MAX_WORDS, CHUNKED_STAMPED_MAX_WORDS). At batch 9-16 (a 16-row tile), in fp32
    arithmetic (not fp64), from benchmark mode's timings on an H200 (2026-11-27): at
    H=129-256 four 4-row tiles, 8 units per program at 8 warps, K-major (2.1-2.2x faster
    than one 16-row tile); above H=256 in fp32 a program per multiprocessor with its
    units' W tiles resident and the product chunked (``_spread_resident``; 1.3x faster
    than the stacked tiles at H=512, 2.3x than tl.dot at H=1024), else (and in 16 bits)
    the stacked tiles on the tensor cores where they fit (_stacked_default; 16-bit 1.6-1.8x
    faster than the next best), else 32 units per program and tl.dot on streamed W
    (three-pass TF32 for fp32, whose error stays at fp32's level). Batch > 16: tiles of up
    to 64 rows, 16 units per program and tl.dot: the broadcast product was slower there,
    erratically so.
    """
    hp = _pow2(hidden)
    if device.type != "cuda":  # the interpreter: one program per tile, whole loop (and,
        # as the GPU default at small batches, W resident)
        return Config(_pow2(min(batch, 16)), hp, hp, dot=False,
                      resident=dtype != torch.float64)
    sms = _multiprocessors(device)
    if batch <= 16 or dtype == torch.float64:  # (fp64 has no tl.dot here)
        block_batch = _pow2(min(batch, 16))
        if block_batch == 16 and dtype != torch.float64:
            if hp == 256 and -(-batch // 4) * (hp // 8) <= sms:  # (all tiles at once)
                # 4.1 → 1.9 µs per step at B=16 (fp32 and bf16, H200)
                return Config(4, 8, hp, dot=False, warps=8, resident=True, kmajor=True)
            if hidden > 256:
                spread = _spread_resident(hidden, device)
                if dtype == torch.float32 and spread is not None:
                    spread = _chunked_where_set(spread, device, dtype)
                    if spread.chunked:  # fp32 H=512 4.25 → 3.28 µs per step, H=1024
                        # 15.7 → 6.9 (H200); unchunked, it lost to the stacked split
                        return _shaped_where_it_fits(spread, hidden, device, True)
                stacked = _stacked_default(hidden, device, dtype, forward=True, save=save)
                if stacked is not None:  # fp32 H=512 6.5 → 4.2; bf16 H=1024 7.0 → 3.8
                    return stacked
                return _streamed_dot(hidden, sms)
        return _stamped_where_set(
            _chunked_where_set(_broadcast_split(batch, hidden, sms, dtype), device, dtype),
            device, dtype)
    block_batch = _pow2(min(batch, 64))
    tiles = min(-(-batch // block_batch), sms)
    # ≤ 64 units per program: 128 need more shared memory than an SM has (fp32); more
    # tiles than fit at once run in several launches (_launch)
    slice_ = min(MAX_UNITS, max(16, _pow2(-(-hidden // max(1, sms // tiles)))))
    return Config(block_batch, slice_, 64, dot=True)


def _streamed_dot(hidden: int, sms: int) -> Config:
    """A 16-row tile's split with W streamed through the caches: tl.dot, 32 units per
    program (measured fastest at H=1024 on an H100), or up to 64 where 32 would need more
    programs than the card's multiprocessors (128 need more shared memory than an SM has,
    fp32: larger H runs on no split, MAX_UNITS)."""
    return Config(16, max(32, min(MAX_UNITS, _pow2(-(-hidden // sms)))), 64, dot=True)


def _broadcast_split(batch: int, hidden: int, sms: int, dtype: torch.dtype) -> Config:
    """Batch ≤ 16's general split: one tile of the batch's rows (rounded up to a power of
    two), as many programs as multiprocessors, the broadcast product, W's tiles resident
    where one tile covers H and fits RESIDENT_MAX (not fp64)."""
    block_batch = _pow2(min(batch, 16))
    tiles = min(-(-batch // block_batch), sms)
    slice_ = _pow2(-(-hidden // max(1, sms // tiles)))
    budget = 32768 if slice_ >= 16 else 8192  # elements of the (BB, S, BK) product
    block_k = max(8, min(_pow2(hidden), budget // (block_batch * slice_)))
    # W's tiles in registers where one tile covers H: measured on an H100 (fp32, B=1)
    # 2.57 → 2.38 µs per step at H=256, 3.12 → 2.23 at H=512, 5.96 → 2.96 at H=1024
    cfg = Config(block_batch, slice_, block_k, dot=False,
                 resident=block_k >= hidden and dtype != torch.float64
                 and 3 * slice_ * block_k <= RESIDENT_MAX)
    hp = _pow2(hidden)
    if not cfg.resident and batch <= 8 and dtype != torch.float64:
        # where a tile of 2-8 rows would stream W through the product in chunks of K: its
        # units' tiles resident instead, K whole and summed in chunks (Config.chunked), 8
        # warps from H=1024, where they fit. fp32, H200 (2026-11-27, benchmark mode), µs
        # per step forward / backward: B=4, H=1024 14.0 → 2.9 / 16.9 → 6.2; B=8, H=512
        # 7.1 → 2.8 / 10.6 → 5.1; B=8, H=1024 40.9 → 4.5 / 41.6 → 9.8
        wide = _chunked_where_set(Config(block_batch, slice_, hp, dot=False,
                                         warps=8 if hp >= 1024 else 4, resident=True),
                                  torch.device("cuda"), dtype)  # (a CUDA split)
        if 3 * slice_ * hp <= RESIDENT_MAX and wide.chunked:
            return wide
    return cfg


def choose_backward_config(batch: int, hidden: int, device: torch.device,
                           dtype: torch.dtype, crossed: bool = True) -> Config:
    """The backward's split: the forward's, never stamped (0.85-0.97x at B=1; H200), W_hhᵀ's
    tiles resident where the forward's W tiles are (the backward kernel 1.07-1.55x faster
    so at B=1, H=256-1024 and B=16, H=256; H200, fp32, 2026-11-27), K-major where the
    forward is (B=16, H=256: 6.8 → 4.0 µs per step, fp32 and bf16, H200), chunked where the
    forward is; at batch 9-16 above H=256 the stacked tiles where they fit (16-bit:
    1.6-1.7x faster than tl.dot), else in fp32 a program per multiprocessor with its
    units' tiles resident where they fit (``_spread_resident``): 1.45x faster than 4
    units per program unresident at H=512, 1.66x than tl.dot's 32 units at H=1024, and
    its product chunked 1.4-1.5x faster again (H200; scripts/gpu_probe_backward.py,
    docs/performance.md). There, with ``crossed`` (not a bidirectional pair's launch),
    the crossed split CROSSED_DEFAULTS names first."""
    cfg = choose_config(batch, hidden, device, dtype)._replace(stamped=False)
    if device.type == "cuda" and 8 < batch <= 16 and hidden > 256 and \
            dtype != torch.float64:  # (a 16-row tile's, whatever the forward's rows)
        across = _crossed_default(hidden, device, dtype) if crossed else None
        if across is not None:
            return across
        stacked = _stacked_default(hidden, device, dtype, forward=False)
        if stacked is not None:  # bf16 10.2 → 6.0 µs per step at H=512, 16.5 → 10.5 at 1024
            return stacked
        spread = _spread_resident(hidden, device)
        if dtype == torch.float32 and spread is not None:
            # 15.3 → 10.6 µs per step at H=512, 38.8 → 23.4 at H=1024 (H200); chunked
            # 9.55 → 6.84 at H=512, 22.5 → 14.8 at H=1024 (H200), its chunk shape
            # (SPREAD_CHUNK_DEFAULTS) 6.79 → 5.74 and 14.72 → 10.93
            return _shaped_where_it_fits(_chunked_where_set(spread, device, dtype), hidden,
                                         device, False)
        # (the forward's stacked split, where the backward's operand doesn't fit)
        return _streamed_dot(hidden, _grid_limit(device)) if cfg.stacked else cfg
    return cfg


def _stacked_default(hidden: int, device: torch.device, dtype: torch.dtype,
                     forward: bool, save: bool = False) -> Config | None:
    """The stacked split a 16-row tile takes by default (H > 256), or None where none fits
    (_stacked_splits): the fewest units per program, except the 16-bit forward's 8, or 16
    where it saves the gates (``save``). H200, 2026-11-27, benchmark mode, µs per step: fp32
    H=512 forward 4 units 4.18 (training 3.98), 8 units 4.44 (4.47); bf16 inference H=512
    8 units 2.61, 4 units 2.77, 16 units 3.43, H=1024 8 units 3.77, 16 units 5.84; bf16
    training H=512 16 units 2.43, 8 units 2.69, 4 units 2.92, H=1024 16 units 3.35, 8 units
    3.78; bf16 backward H=512 4 units 6.04, 8 units 7.46.

    16-bit at K=512 and 1024 (H=257-1024), its exchange narrow (``_narrow_where_set``): at
    K=1024 the forward 16 units, the backward its fewest with prefetch too; at K=512 both
    with prefetch too. H200, 2026-11-28, benchmark mode, bf16 B=16, µs per step: H=1024
    inference 8 units 3.62, narrow 2.92, 16 units narrow 2.78; training 16 units 5.74,
    narrow 2.83; backward 8 units 8.14, narrow 7.34, prefetch and narrow 5.54 (the crossed
    backward is faster again: CROSSED_DEFAULTS); H=512 (the thirty-first session, from
    memory) inference 8 units 2.59, prefetch and narrow 2.31; training 16 units 2.37,
    narrow 2.37, prefetch and narrow 2.14; backward 4 units 5.31, narrow 5.20, prefetch
    and narrow 3.60."""
    found = _stacked_splits(hidden, device, dtype, forward)
    if not found:
        return None
    if dtype == torch.float32:
        return found[-1]
    hp = _pow2(hidden)
    if hp in (512, 1024):  # (only where the exchange can be narrow: these splits were
        # timed so, and without it the 16-unit inference forward was slower at H=1024)
        if forward:
            units = 16 if hp == 1024 or save else 8
            cfg = next((c for c in found if c.slice == units), found[-1])._replace(
                prefetch=hp == 512)
        else:
            cfg = found[-1]._replace(prefetch=True)
        cfg = _narrow_where_set(cfg, device, dtype)
        if cfg.narrow:
            return cfg
    if forward:
        return next((c for c in found if c.slice == (16 if save else 8)), found[-1])
    return found[-1]


def _spread_resident(hidden: int, device: torch.device) -> Config | None:
    """A 16-row tile spread over one program per multiprocessor, each holding its units'
    W tiles resident (4 units at H=512 on 132 SMs, 8 at H=1024 with 8 warps: 4 would
    spill), where those tiles fit in RESIDENT_MAX; else None."""
    hp = _pow2(hidden)
    slice_ = _pow2(-(-hidden // _grid_limit(device)))
    if 3 * slice_ * hp > RESIDENT_MAX:
        return None
    return Config(16, slice_, hp, dot=False, warps=4 if slice_ * hp <= 2048 else 8,
                  resident=True)


# The most shared memory a stacked split (Config.stacked) benchmark mode tries may need
# (_stacked_bytes), of an H100's 227 KiB.
STACKED_MAX_BYTES = 200 * 1024


def _stacked_bytes(hidden: int, slice_: int, dtype: torch.dtype, forward: bool) -> int:
    """Shared memory of a stacked split: its tile, 64 rows of K / F (fp32: W's two parts;
    16-bit: W), and the operand it multiplies, K / F by F·16 columns (the backward's:
    4F·16, the four gate slots; fp32: two parts). ptxas
    (sm_90a, Triton 3.6) gives these to the byte for the forward's: fp32 H=256 (slice
    16) 160 KiB, H=512 (8) 192 KiB."""
    folds = 16 // slice_
    k = max(16, _pow2(hidden)) // folds
    size = 8 if dtype == torch.float32 else 2
    return (64 + folds * 16 * (1 if forward else 4)) * k * size


def _stacked_splits(hidden: int, device: torch.device, dtype: torch.dtype,
                    forward: bool) -> list[Config]:
    """The stacked splits of a 16-row tile at this H, for the forward or the backward: 16,
    8 or 4 units per program (1, 2 or 4 folds of K), where the programs fit on the device
    at once and _stacked_bytes within STACKED_MAX_BYTES."""
    hp = max(16, _pow2(hidden))
    return [Config(16, s, max(hp, 256 // s), dot=True, resident=True, stacked=True)
            for s in (16, 8, 4)
            if -(-hidden // s) <= _grid_limit(device) and
            _stacked_bytes(hidden, s, dtype, forward) <= STACKED_MAX_BYTES]
