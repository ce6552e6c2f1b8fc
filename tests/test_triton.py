"""The Triton backend's kernels against the reference core: outputs and every gradient,
both formulations, lengths, several launch splits, with every buffer the kernels write
poisoned with NaN first. On a machine without a GPU the kernels run in Triton's
interpreter on the CPU (TRITON_INTERPRET=1, set by conftest.py); with a GPU, on the GPU."""

import math
import os
import sys

import pytest
import torch
from helpers import FORMS, assert_close, background, background_output
from test_parity_torch import _cases, _ids, assert_pair_close, run_pair

import flashgru
from flashgru.backends import BACKENDS, reference
from flashgru.backends import triton_gru as tg
from flashgru.backends._triton import backward as backward_kernel
from flashgru.backends._triton import (
    candidates,
    exchange,
    lang,
    launch,
    products,
    splits,
    stacked,
)
from flashgru.backends._triton import forward as forward_kernel
from flashgru.backends._triton.lang import tl  # (None without Triton: skipped below)

if BACKENDS["triton"].missing() is not None:
    pytest.skip("needs Triton, and a GPU or TRITON_INTERPRET=1", allow_module_level=True)
pytestmark = pytest.mark.usefixtures("no_tf32")


@lang._jit
def _publish_nothing(p, value, mask, t, STAMPED: tl.constexpr):
    """A broken _publish (test_a_missing_stamp_gives_nan_not_a_hang)."""
    pass


@lang._jit
def _stacked_gates(w, x, out, H, BK: tl.constexpr, S: tl.constexpr):
    """out (3, 16, P·S): each program's gate blocks of x (16, H) @ W_gᵀ (its S units)
    from the stacked tiles of w = W_hh (with its low parts after it in fp32), as the
    forward makes them (test_stacked_folds)."""
    w_hi, w_lo = stacked._stacked_tiles(w, H, BK, S, False)
    rows, ks = tl.arange(0, 16), tl.arange(0, BK)
    xb = tl.load(x + rows[:, None] * H + ks[None, :], mask=ks[None, :] < H, other=0.0)
    r, z, n = stacked._stacked_product(xb, w_hi, w_lo, S)
    width = tl.num_programs(0) * S
    o = out + rows[:, None] * width + tl.program_id(0) * S + tl.arange(0, S)[None, :]
    tl.store(o, r)
    tl.store(o + 16 * width, z)
    tl.store(o + 32 * width, n)


@lang._jit
def _chunked_gates(w, x, out, H, stride_s, gstep, BK: tl.constexpr, S: tl.constexpr,
                   CHUNK: tl.constexpr, KW: tl.constexpr, SI: tl.constexpr):
    """out (3, 16, P·S): each program's x (16, H) @ V_g for its S units, from
    Config.chunked's tiles of w (the forward's W_hh or the backward's W_hhᵀ, by
    stride_s and gstep), in chunks of CHUNK over KW warps along K, SI units a thread
    (test_chunked_tiles_of_every_program)."""
    cols = tl.program_id(0) * S + tl.arange(0, S)
    v_r, v_z, v_n = products._chunked_tiles(w, cols, cols < H, H, stride_s, gstep, BK, CHUNK,
                                            KW, SI)
    rows, ks = tl.arange(0, 16), tl.arange(0, BK)
    xb = tl.load(x + rows[:, None] * H + ks[None, :], mask=ks[None, :] < H, other=0.0)
    width = tl.num_programs(0) * S
    o = out + rows[:, None] * width + cols[None, :]
    tl.store(o, products._chunked_product(xb, v_r, tl.float32))
    tl.store(o + 16 * width, products._chunked_product(xb, v_z, tl.float32))
    tl.store(o + 32 * width, products._chunked_product(xb, v_n, tl.float32))


@lang._jit
def _permuted_places(out, BK: tl.constexpr, KW: tl.constexpr, CHUNK: tl.constexpr):
    """out (BK,): where each k < BK lies in a Config.permuted row (_permuted_at;
    test_permuted_places)."""
    k = tl.arange(0, BK)
    tl.store(out + k, products._permuted_at(k, BK // (KW * CHUNK), KW, CHUNK))


@lang._jit
def _permuted_read(x, out, B, NC: tl.constexpr, SI: tl.constexpr, KW: tl.constexpr,
                   SO: tl.constexpr, CHUNK: tl.constexpr, NCF: tl.constexpr,
                   C0: tl.constexpr):
    """out (4, NC, KW, SO, CHUNK): _permuted_block's block of the 4 rows (those from B on
    past B) of x (B, NCF·KW·CHUNK), for a tile piece of NC chunks from chunk C0 of NCF
    (test_permuted_places)."""
    rows = tl.arange(0, 4)
    v = tl.zeros((NC, SI, KW, SO, CHUNK), tl.float32)  # (its shape alone is read)
    block = products._permuted_block(x, rows, rows < B, NCF * KW * CHUNK, v, NCF, C0)
    at = (((tl.arange(0, 4)[:, None, None, None, None] * NC +
            tl.arange(0, NC)[None, :, None, None, None]) * KW +
           tl.arange(0, KW)[None, None, :, None, None]) * SO +
          tl.arange(0, SO)[None, None, None, :, None]) * CHUNK + \
        tl.arange(0, CHUNK)[None, None, None, None, :]
    tl.store(out + at, block)


@lang._jit
def _stacked_carry_of(wt, x, out, H, BK: tl.constexpr, S: tl.constexpr):
    """out (16, P·S): each program's Σ_g x_g (16, H) @ W_g[:, units] (its S units) from
    the backward's stacked tiles of wt = W_hhᵀ (its low parts after it in fp32), x (16,
    3H) the three gates' blocks side by side, as the backward makes it
    (test_stacked_folds)."""
    w_hi, w_lo = stacked._stacked_tiles(wt, H, BK, S, True)
    rows = tl.arange(0, 16)
    xt = stacked._stacked_gradients(x, H, rows, rows < 16, 16, H, 3 * H, 0, BK, S, False, 7)
    carry = stacked._stacked_carry(xt, w_hi, w_lo, S)
    cols = tl.program_id(0) * S + tl.arange(0, S)
    tl.store(out + rows[:, None] * tl.num_programs(0) * S + cols[None, :], carry)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 3e-2}


@pytest.fixture(autouse=True)
def poisoned(monkeypatch):
    """Every buffer a kernel writes starts as NaN, so an unwritten element fails."""
    def empty(*shape, dtype, device):
        return torch.full(shape, math.nan, dtype=dtype, device=device)

    monkeypatch.setattr(tg, "_empty", empty)


def _patch_kernels(monkeypatch, name, fn):
    """Replace the device function ``name`` in every kernel module that holds it: a
    kernel finds a function it calls in its own module's names (the interpreter at each
    call)."""
    holders = [m for m in (exchange, products, stacked, forward_kernel, backward_kernel)
               if hasattr(m, name)]
    assert holders, name
    for module in holders:
        monkeypatch.setattr(module, name, fn)


def _problem(steps, batch, hidden, dtype, lengths=None, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(
            dtype=dtype, device=DEVICE).requires_grad_()

    gi, h0 = rand(steps, batch, 3 * hidden), rand(batch, hidden)
    w, b = rand(3 * hidden, hidden, scale=hidden ** -0.5), rand(3 * hidden)
    if lengths is not None:
        lengths = torch.tensor(lengths)
    return gi, h0, w, b, lengths


def _compare(steps, batch, hidden, reset_after, dtype, lengths=None, cfg=None, bias=True,
             backward_cfg=None):
    """Kernels vs the reference core in float64 on the same (rounded) inputs (a forced
    split: cfg, and for the backward backward_cfg, else cfg)."""
    gi, h0, w, b, lengths = _problem(steps, batch, hidden, dtype, lengths)
    b = b if bias else None
    ref_in = [t.detach().double().requires_grad_() if t is not None else None
              for t in (gi, h0, w, b)]
    ref = reference.core(*ref_in, lengths, reset_after)
    dout = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64).to(DEVICE)
    ref_grads = torch.autograd.grad(ref, [t for t in ref_in if t is not None], dout)
    if cfg is None:
        out = tg.core(gi, h0, w, b, lengths, reset_after)
        grads = torch.autograd.grad(out, [t for t in (gi, h0, w, b) if t is not None],
                                    dout.to(dtype))
    else:  # a forced launch split, through the kernels' own entry points
        lens = lengths if lengths is not None else torch.full((batch,), steps)
        lens = lens.to(DEVICE)
        bias_ = b.detach() if bias else w.new_zeros(3 * hidden).detach()
        out, saved = tg.forward(gi.detach(), h0.detach(), w.detach(), bias_, lens,
                                reset_after, True, cfg)
        grads = tg.backward(dout.to(dtype), h0.detach(), w.detach(), out, saved, lens,
                            reset_after, backward_cfg or cfg)[: 3 + bias]
    tol = TOL[dtype]
    assert_close("out", ref, out.double(), tol, rtol=tol)
    for name, r, g in zip(("dgi", "dh0", "dw_hh", "db_hh"), ref_grads, grads, strict=False):
        assert_close(name, r, g.double(), tol * 10, rtol=tol * 10)


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("size", [(1, 1, 1), (7, 3, 13), (5, 4, 32)], ids=str)
def test_core_matches_reference(size, dtype, reset_after):
    _compare(*size, reset_after, dtype)


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
def test_lengths_and_no_bias(reset_after):
    _compare(6, 5, 13, reset_after, torch.float64, lengths=[6, 2, 4, 1, 6], bias=False)


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["f32", "f16", "bf16"])
def test_low_precision_storage(dtype, reset_after):
    """fp16/bf16 tensors, fp32 arithmetic: within the storage format's rounding."""
    _compare(5, 3, 13, reset_after, dtype, lengths=[5, 3, 1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_16_bit_dgi_written_as_rounded(dtype, monkeypatch):
    """reset_after=True: the backward's kernel writes a 16-bit call's dgi in 16 bits,
    with the bits of its fp32 dgi rounded by torch (what the call converted before; in
    the interpreter bf16 truncated); reset_after=False exchanges through dgi: fp32
    still."""
    gi, h0, w, b, _ = (t.detach() if t is not None else None
                       for t in _problem(5, 3, 13, dtype))
    lens = torch.tensor([5, 2, 4], device=DEVICE)
    dout = torch.randn(5, 3, 13, generator=torch.Generator().manual_seed(1)).to(
        device=DEVICE, dtype=dtype)
    for reset_after in (True, False):
        out, saved = tg.forward(gi, h0, w, b, lens, reset_after, True)
        dgi = tg.backward(dout, h0, w, out, saved, lens, reset_after)[0]
        assert dgi.dtype == (dtype if reset_after else torch.float32)
    out, saved = tg.forward(gi, h0, w, b, lens, True, True)
    empty = tg._empty  # (the poisoned buffers; the backward's 16-bit one made fp32)
    monkeypatch.setattr(tg, "_empty", lambda *shape, dtype, device: empty(
        *shape, dtype=torch.float32 if dtype == gi.dtype else dtype, device=device))
    wide = tg.backward(dout, h0, w, out, saved, lens, True)[0]
    assert wide.dtype == torch.float32
    monkeypatch.setattr(tg, "_empty", empty)
    rounded = wide.to(dtype)
    if DEVICE == "cpu" and dtype == torch.bfloat16:  # (Triton's interpreter casts fp32 to
        # bf16 by truncation, not to nearest as the GPU's cvt.rn does: its low 16 bits cut)
        rounded = (wide.view(torch.int32) & -65536).view(torch.float32).to(dtype)
        assert not torch.equal(rounded, wide.to(dtype))
    assert torch.equal(tg.backward(dout, h0, w, out, saved, lens, True)[0], rounded)


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
def test_bf16_errors_within_twice_torchs(reset_after):
    """Issue 5's bf16 target, every gradient included: against a float64 run of the same
    weights and input, each of the module's bf16 results (output, h_n, the input's and
    every parameter's gradient) is off by at most twice what torch's own bf16 GRU is
    (torch's formulation; the paper's: flashgru's reference backend in bf16)."""
    import copy
    torch.manual_seed(0)
    steps, batch, features, hidden = 24, 6, 40, 48
    exact = flashgru.GRU(features, hidden, reset_after=reset_after, backend="reference",
                         dtype=torch.float64, device=DEVICE)
    x = torch.randn(steps, batch, features, dtype=torch.float64, device=DEVICE)
    dout = torch.randn(steps, batch, hidden, dtype=torch.float64, device=DEVICE)

    def results(module, dtype):
        xg = x.to(dtype).detach().requires_grad_()
        out, h_n = module(xg)
        out.backward(dout.to(dtype))
        return {"out": out, "h_n": h_n, "x": xg.grad} | {
            name: p.grad for name, p in module.named_parameters()}

    want = results(exact, torch.float64)
    low = copy.deepcopy(exact).to(torch.bfloat16)
    if reset_after:
        theirs = torch.nn.GRU(features, hidden, dtype=torch.bfloat16, device=DEVICE)
        theirs.load_state_dict(low.state_dict())
    else:  # (a copy: the triton run below must not add to its gradients)
        theirs = copy.deepcopy(low)
    theirs = results(theirs, torch.bfloat16)
    low.backend = "triton"
    ours = results(low, torch.bfloat16)

    def err(got, name):
        return ((got[name].double() - want[name]).norm() / want[name].norm()).item()

    for name in want:
        assert err(ours, name) <= 2 * err(theirs, name), (name, err(ours, name),
                                                          err(theirs, name))


# Launch splits: batch tiles (and, on a GPU, several programs per tile meeting at the
# barrier), the tl.dot product, reduction chunks smaller than H.
SPLITS = {}
SPLITS = {
    "tiles": (torch.float64, tg.Config(2, 32, 8, dot=False)),
    "dot-f32": (torch.float32, tg.Config(16, 32, 16, dot=True)),
    "dot-f16": (torch.float16, tg.Config(16, 32, 16, dot=True)),
    "resident": (torch.float32, tg.Config(4, 32, 32, dot=False, resident=True)),
    "resident-f64": (torch.float64, tg.Config(4, 32, 32, dot=False, resident=True)),
    "resident-dot": (torch.float32, tg.Config(16, 32, 32, dot=True, resident=True)),
    "stamped": (torch.float32, tg.Config(4, 32, 32, dot=False, resident=True,
                                         stamped=True)),
    "stamped-chunks": (torch.float32, tg.Config(2, 32, 16, dot=False, stamped=True)),
    "kmajor": (torch.float32, tg.Config(4, 32, 32, dot=False, resident=True,
                                        kmajor=True)),
    "kmajor-stamped-bf16": (torch.bfloat16, tg.Config(8, 32, 32, dot=False, resident=True,
                                                      stamped=True, kmajor=True)),
    # a block over STAMPED_BLOCK words: waited for a chunk at a time, then read
    "stamped-large-block": (torch.float32, tg.Config(16, 32, 512, dot=False,
                                                     resident=True, stamped=True)),
    "stamped-bf16": (torch.bfloat16, tg.Config(8, 32, 32, dot=False, resident=True,
                                               stamped=True)),
    "stamped-f16-chunks": (torch.float16, tg.Config(4, 32, 16, dot=False,
                                                    stamped=True)),
    # a step's reads issued a step ahead (Config.prefetch)
    "prefetch": (torch.float32, tg.Config(4, 32, 32, dot=False, resident=True,
                                          prefetch=True)),
    "prefetch-tiles-f64": (torch.float64, tg.Config(2, 32, 8, dot=False, prefetch=True)),
    "prefetch-stamped-f16": (torch.float16, tg.Config(4, 32, 32, dot=False,
                                                      resident=True, stamped=True,
                                                      prefetch=True)),
    "prefetch-kmajor": (torch.float32, tg.Config(4, 32, 32, dot=False, resident=True,
                                                 kmajor=True, prefetch=True)),
    # the product over K in chunks of a warp's lanes (Config.chunked)
    "chunked": (torch.float32, tg.Config(4, 32, 32, dot=False, resident=True,
                                         chunked=True)),
    "chunked-stamped-f16": (torch.float16, tg.Config(4, 32, 32, dot=False, resident=True,
                                                     stamped=True, chunked=True)),
}
if DEVICE == "cuda":
    SPLITS.update({
        "programs": (torch.float32, tg.Config(2, 4, 8, dot=False)),
        "programs-dot": (torch.float32, tg.Config(16, 16, 16, dot=True)),
        "dot-bf16": (torch.bfloat16, tg.Config(16, 16, 16, dot=True)),
        "programs-resident": (torch.float32, tg.Config(2, 4, 32, dot=False,
                                                       resident=True)),
        # (the interpreter's bf16 tl.dot is wrong with or without resident tiles)
        "resident-bf16": (torch.bfloat16, tg.Config(16, 32, 32, dot=True, resident=True)),
        "programs-stamped": (torch.float32, tg.Config(2, 4, 32, dot=False, resident=True,
                                                      stamped=True)),
        "programs-stamped-dot": (torch.float32, tg.Config(16, 16, 16, dot=True,
                                                          stamped=True)),
        "programs-kmajor": (torch.float32, tg.Config(4, 8, 32, dot=False, warps=8,
                                                     resident=True, kmajor=True)),
    })


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("split", list(SPLITS))
def test_launch_splits(split, reset_after):
    dtype, cfg = SPLITS[split]
    _compare(4, 20, 30, reset_after, dtype, lengths=[4, 1, 3, 2] * 5, cfg=cfg)


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("dtype,stamped", [(torch.float32, False), (torch.float32, True),
                                           (torch.float16, False), (torch.float16, True),
                                           (torch.float64, False)],
                         ids=["f32", "f32-stamped", "f16", "f16-stamped", "f64"])
@pytest.mark.parametrize("size", [(3, 100), (16, 64), (1, 33)], ids=str)
def test_chunked_split(size, dtype, stamped, reset_after):
    """Config.chunked, forward and backward: K in chunks of 32 (four at H=100, the last
    part past H; two at 64 and 33, the second nearly all past H), rows past B, a second
    batch tile (16 rows in tiles of 8), the barrier or the stamped exchange (fp32 words:
    not fp64); outputs, saved gates and every gradient."""
    batch, hidden = size
    hp = splits._pow2(hidden)
    cfg = tg.Config(min(8, splits._pow2(batch)), hp, hp, dot=False,
                    resident=True, stamped=stamped, chunked=True)
    _compare(5, batch, hidden, reset_after, dtype, lengths=([5, 1, 3, 2] * 4)[:batch],
             cfg=cfg)


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("dtype,stamped", [(torch.float32, False), (torch.float16, True)],
                         ids=["f32", "f16-stamped"])
@pytest.mark.parametrize("hidden,warps,lanes,inner,shape",
                         [(30, 8, 16, 1, (2, 4)), (30, 8, 4, 2, (8, 2)),
                          (100, 4, 4, 1, (8, 1)), (100, 8, 8, 4, (4, 2))], ids=str)
def test_chunked_unit_lanes_split(hidden, warps, lanes, inner, shape, dtype, stamped,
                                  reset_after):
    """Config.unit_lanes and Config.thread_units, forward and backward: a chunked split
    with a warp's lanes along the units too and each thread's units, its chunks (2, 8, 8
    and 4 of K) spread over 4, 2, 1 and 2 warps along K (_chunk_shape), the last chunks
    past H, the backward's gates summed before their lanes meet; outputs, saved gates and
    every gradient."""
    hp = splits._pow2(hidden)
    cfg = tg.Config(4, hp, hp, dot=False, warps=warps, resident=True, stamped=stamped,
                    chunked=True, unit_lanes=lanes, thread_units=inner)
    assert splits._chunk_shape(cfg) == shape
    _compare(5, 6, hidden, reset_after, dtype, lengths=[5, 1, 3, 2, 5, 4], cfg=cfg)


# The crossed backward (Config.k_blocks), in the interpreter: (hidden, k_blocks, slice,
# block_batch, warps, unit_lanes, thread_units, prefetch), each with the column blocks'
# last partly past H and the K-blocks' last (or their block_k) partly past theirs
# (lanes 0: the stacked product, tl.dot)
CROSSED = {
    "k2-3cols": (40, 2, 16, 4, 4, 1, 1, False),
    "k3-u4x2": (40, 3, 16, 8, 4, 4, 2, False),
    "k2-u2x2-prefetch": (33, 2, 8, 8, 2, 2, 2, True),
    "k4-u8x4-16rows": (64, 4, 32, 16, 4, 8, 4, False),
    "stacked-k2-3cols": (40, 2, 16, 16, 4, 0, 0, False),
    "stacked-k3-prefetch": (33, 3, 32, 16, 4, 0, 0, True),
}


def _crossed(hidden, k_blocks, slice_, block_batch, warps, lanes, inner, prefetch):
    """A crossed split (Config.k_blocks), chunked in a chunk shape, or stacked where
    lanes is 0."""
    block_k = splits._pow2(-(-hidden // k_blocks))
    if not lanes:
        return tg.Config(block_batch, slice_, max(16, block_k), dot=True, warps=warps,
                         resident=True, stacked=True, prefetch=prefetch, k_blocks=k_blocks)
    return tg.Config(block_batch, slice_, max(32, block_k), dot=False, warps=warps,
                     resident=True, prefetch=prefetch, chunked=True, unit_lanes=lanes,
                     thread_units=inner, k_blocks=k_blocks)


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("split,dtype", [
    (split, dtype) for split in CROSSED for dtype in (torch.float32, torch.float16,
                                                      torch.float64, torch.bfloat16)
    # (stacked: not fp64; bf16 on tl.dot only on a GPU, as the narrow tests')
    if not (CROSSED[split][5] == 0 and (dtype == torch.float64 or
                                         dtype == torch.bfloat16 and DEVICE != "cuda"))],
    ids=str)
def test_crossed_split(split, dtype, reset_after):
    """The crossed backward (Config.k_blocks): W_hh split over K-blocks and column blocks,
    the programs exchanging partial sums of dL/dh, each program storing its rows' share
    of its block's gradients; the product chunked or stacked (tl.dot on each gate's tile
    of W_gᵀ; fp32 as three TF32 products: the interpreter's are fp32's); both
    formulations (the paper's: the n gate's partial sums exchanged first); 6-9 rows over
    one or two batch tiles (rows past B), ragged lengths; every gradient against the
    reference's. (The interpreter runs it a launch a step, the paper's form a launch a
    half-step: the step's loop is the GPU's, without the waits.)"""
    hidden = CROSSED[split][0]
    cfg = _crossed(*CROSSED[split])
    assert launch._programs(cfg, hidden, torch.device(DEVICE)) > 1
    batch = 9 if cfg.block_batch == 16 else 6
    forward = tg.Config(8, splits._pow2(hidden), splits._pow2(hidden), dot=False,
                        resident=dtype != torch.float64)
    _compare(5, batch, hidden, reset_after, dtype, lengths=_ragged(batch, 5), cfg=forward,
             backward_cfg=cfg)


DGH_CASES = {  # (dtype, the split, whether dgh holds its n block alone)
    "plain-f32": (torch.float32, tg.Config(4, 32, 32, dot=False, resident=True), False),
    "stamped-f32": (torch.float32, SPLITS["stamped"][1], True),
    "stamped-bf16": (torch.bfloat16, SPLITS["stamped-bf16"][1], True),
    "kmajor-f64": (torch.float64, SPLITS["kmajor"][1], True),
    # (fp16's weight GEMM runs in fp32, on dgh whole)
    "stamped-f16": (torch.float16, SPLITS["stamped-f16-chunks"][1], False),
    "crossed-f32": (torch.float32, _crossed(*CROSSED["k2-3cols"]), True),
}


@pytest.mark.parametrize("case", list(DGH_CASES))
def test_dgh_keeps_its_n_block_alone_where_it_is_not_exchanged(case, monkeypatch):
    """reset_after=True: where the backward's programs exchange elsewhere than dgh
    (stamped, K-major, narrow, permuted or crossed) and the weight GEMM takes dgi's dtype
    (fp32, fp64, bf16), the kernels write dgh's n block alone, (T, B, H) in dgi's dtype:
    its r and z blocks are dgi's. Else dgh whole, (T, B, 3H) in fp32. dW_hh and db_hh are
    those of dgh whole (forced: the exchange taken for dgh's), bit for bit in fp32 and
    fp64 here; bf16 within its rounding (the interpreter's stores truncate, .to() rounds
    to nearest); every gradient the reference's."""
    dtype, cfg, alone = DGH_CASES[case]
    hidden, batch = (40, 6) if cfg.k_blocks != 1 else (32, 5)
    got = []

    def spy(real):
        def launch(kernel, cfg, batch, hidden, steps, args, **consts):
            if "dgh" in kernel.arg_names:  # (the backward's)
                dgi, dgh = (args[kernel.arg_names.index(a)] for a in ("dgi", "dgh"))
                got.append((tuple(dgh.shape), dgh.dtype, consts["DGH_N"]))
                assert dgi.shape == (out.shape[0], batch, 3 * hidden)
            real(kernel, cfg, batch, hidden, steps, args, **consts)
        return launch

    monkeypatch.setattr(tg, "_launch", spy(tg._launch))
    monkeypatch.setattr(tg, "_launch_crossed", spy(tg._launch_crossed))
    gi, h0, w, b, _ = (t.detach() if t is not None else None
                       for t in _problem(4, batch, hidden, dtype))
    lens = torch.tensor(_ragged(batch, 4), device=DEVICE)
    forward = tg.Config(8, 64, 64, dot=False, resident=dtype != torch.float64)
    out, saved = tg.forward(gi, h0, w, b, lens, True, True, forward)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(
        device=DEVICE, dtype=dtype)
    grads = tg.backward(dout, h0, w, out, saved, lens, True, cfg)
    steps = out.shape[0]
    assert got == [((steps, batch, hidden), dtype, True) if alone else
                   ((steps, batch, 3 * hidden),
                    torch.float32 if dtype != torch.float64 else dtype, False)]
    if cfg.k_blocks == 1 and alone:  # (dgh whole, as the plain exchange has it)
        monkeypatch.setattr(tg, "_through_dgh", lambda cfg: True)
        whole = tg.backward(dout, h0, w, out, saved, lens, True, cfg)
        assert got[-1] == ((steps, batch, 3 * hidden), torch.float32 if dtype !=
                           torch.float64 else dtype, False)
        for name, a, c in zip(("dgi", "dh0", "dw_hh", "db_hh"), grads, whole, strict=True):
            if dtype == torch.bfloat16 and name in ("dw_hh", "db_hh"):
                assert_close(name, c.double(), a.double(), 2e-2, rtol=2e-2)
            else:
                assert torch.equal(a, c), name
    _compare(4, batch, hidden, True, dtype, lengths=_ragged(batch, 4), cfg=forward,
             backward_cfg=cfg)


def test_crossed_split_refusals():
    """A crossed split runs the backward alone, with a chunked split's tiles or stacked
    ones and block_k ≥ ceil(H / k_blocks), and none of the other exchanges: a ValueError
    before any launch otherwise."""
    gi, h0, w, b, _ = _problem(3, 2, 80, torch.float32)
    gi, h0, w, b = gi.detach(), h0.detach(), w.detach(), b.detach()
    lens = torch.tensor([3, 2], device=DEVICE)
    cfg = _crossed(80, 2, 16, 4, 4, 1, 1, False)  # (block_k 64, 40 units a block)
    plain = tg.Config(2, 128, 128, dot=False, resident=True)
    out, saved = tg.forward(gi, h0, w, b, lens, True, True, plain)
    with pytest.raises(ValueError, match="k_blocks is the backward's"):
        tg.forward(gi, h0, w, b, lens, True, True, cfg)
    for bad, match in ((cfg._replace(block_k=32), "block_k ≥ ceil"),
                       (cfg._replace(stamped=True), "crossed split"),
                       (cfg._replace(chunked=False), "crossed split"),
                       (cfg._replace(permuted=True), "crossed split"),
                       (cfg._replace(dot=True), "crossed split"),
                       (cfg._replace(k_blocks=0), "crossed split")):
        with pytest.raises(ValueError, match=match):
            tg.backward(torch.ones_like(out), h0, w, out, saved, lens, True, bad)
    # (stacked: tl.dot's tiles, 16 rows, powers of two, not fp64)
    stacked = _crossed(80, 2, 16, 16, 4, 0, 0, False)
    for bad in (stacked._replace(block_batch=8), stacked._replace(slice=8),
                stacked._replace(slice=24), stacked._replace(dot=False),
                stacked._replace(chunked=True)):
        with pytest.raises(ValueError, match="crossed split"):
            tg.backward(torch.ones_like(out), h0, w, out, saved, lens, True, bad)
    assert not splits._can_cross(stacked._replace(narrow=True))
    # (16 rows and 16 units chunked: only in a chunk shape, whose 5-axis sum Triton's
    # combine pass doesn't turn into a TF32 tl.dot)
    chunked = stacked._replace(dot=False, stacked=False, chunked=True, block_k=32)
    assert not splits._can_cross(chunked)
    assert splits._can_cross(chunked._replace(unit_lanes=4, thread_units=2))
    assert not splits._can_narrow(stacked, torch.bfloat16)  # (no 16-bit partial sums)
    with pytest.raises(ValueError, match="float64"):
        launch._check_split(stacked, 80, tl.float64)


def test_crossed_default_rule(monkeypatch):
    """splits.CROSSED_DEFAULTS (H=1024's since the thirty-first session's tune) makes its
    split the backward's default at batch 9-16 above H=256, for its arithmetic (fp32 or
    16 bits) and H padded to a power of two: not at batch 8 or 17, not in fp64, not
    another H's or arithmetic's, not the forward's, not with ``crossed=False`` (a
    bidirectional pair's launch: _pair_tiles sizes it on the one-way split), and not where
    the card's multiprocessors can't hold its programs (128 at H=1024 on 108). With any
    table row named, the default and every benchmark-mode candidate pass the launch's
    checks, the default first and the one-way default among them."""
    cuda = torch.device("cuda")

    class Props:
        multi_processor_count = 132

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props)
    f32, bf16 = torch.float32, torch.bfloat16
    monkeypatch.setattr(splits, "CROSSED_DEFAULTS", {})  # (the one-way splits first)
    one_way = {(b, h, d): splits.choose_backward_config(b, h, cuda, d)
               for b in (8, 12, 16, 17) for h in (384, 512, 768, 1024)
               for d in (f32, bf16, torch.float64)}
    pairs = {(b, h, d): tg._pair_tiles(b, h, cuda, d, d) for b, h, d in one_way}
    stacked = ("stacked", splits.CROSSED_STACKED[1024][0])
    chunked = ("chunked", splits.CROSSED_SPLITS[512][0])
    monkeypatch.setattr(splits, "CROSSED_DEFAULTS", {("fp32", 1024): stacked,
                                                     ("16-bit", 512): chunked})
    for (batch, hidden, dtype), before in one_way.items():
        got = splits.choose_backward_config(batch, hidden, cuda, dtype)
        named = {(f32, 1024): stacked, (bf16, 512): chunked}.get(
            (dtype, splits._pow2(hidden)))
        if named is not None and 8 < batch <= 16:
            assert got == splits._crossed_split(hidden, named), (batch, hidden, dtype)
        else:
            assert got == before, (batch, hidden, dtype)
        assert splits.choose_backward_config(batch, hidden, cuda, dtype, crossed=False) == \
            before
        assert tg._pair_tiles(batch, hidden, cuda, dtype, dtype) == pairs[batch, hidden, dtype]
    assert splits.choose_backward_config(16, 768, cuda, f32) == tg.Config(
        16, 128, 64, dot=True, warps=8, resident=True, stacked=True, k_blocks=16)
    assert splits.choose_config(16, 1024, cuda, f32).k_blocks == 1
    Props.multi_processor_count = 108  # (k16's 128 programs at H=1024 don't fit)
    assert splits.choose_backward_config(16, 1024, cuda, f32).k_blocks == 1
    assert splits.choose_backward_config(16, 512, cuda, bf16).k_blocks == 1  # (128 too)
    assert splits.choose_backward_config(16, 384, cuda, bf16).k_blocks == 16  # (96)
    # (every row of the tables as the default: it and its candidates can run)
    for sms in (132, 108):
        Props.multi_processor_count = sms
        for dtype in (f32, bf16, torch.float16):
            kind = "fp32" if dtype == f32 else "16-bit"
            for hp in (512, 1024):
                rows = [("chunked", r) for r in splits.CROSSED_SPLITS[hp]] + \
                       [("stacked", r) for r in splits.CROSSED_STACKED[hp]]
                for entry in rows:
                    monkeypatch.setattr(splits, "CROSSED_DEFAULTS", {(kind, hp): entry})
                    for hidden in (hp // 2 + 1, hp - 24, hp):
                        default = splits.choose_backward_config(16, hidden, cuda, dtype)
                        found = tg._candidates(default, 16, hidden, cuda, dtype, False)
                        assert found[0] == default
                        assert splits.choose_backward_config(
                            16, hidden, cuda, dtype, crossed=False) in found
                        for cfg in found:
                            launch._check_split(cfg, hidden, launch._acc(dtype))
                            launch._check_weights(cfg, dtype)


def test_crossed_candidates_rule(monkeypatch):
    """Benchmark mode times the crossed backward splits for a backward at batch 9-16
    above H=256: the chunked ones
    (splits.CROSSED_SPLITS) all in fp32, the first in 16 bits, and the stacked ones
    (CROSSED_STACKED) in both where their tiles fit in shared memory (fp32 k8 at H=1024
    doesn't); none in fp64; block_k ceil(H / k_blocks) as a power of two, and as many
    programs as fit on the card (132: 128 or 64 at H=512 and 1024; none of H=1024's 128 on
    108 multiprocessors). Not for a forward."""
    cuda = torch.device("cuda")

    class Props:
        multi_processor_count = 132

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props)

    monkeypatch.setattr(splits, "CROSSED_DEFAULTS", {})  # (around the one-way defaults)

    def crossed(batch, hidden, dtype, forward=False):
        default = (splits.choose_config(batch, hidden, cuda, dtype) if forward else
                   splits.choose_backward_config(batch, hidden, cuda, dtype))
        return [c for c in tg._candidates(default, batch, hidden, cuda, dtype, forward)
                if c.k_blocks != 1]

    def fields(cfg):
        return (cfg.k_blocks, cfg.slice, cfg.warps) + (
            (cfg.prefetch,) if cfg.stacked else
            (cfg.unit_lanes, cfg.thread_units, cfg.prefetch))

    for hidden in (512, 1024):
        chunked, stacked = splits.CROSSED_SPLITS[hidden], splits.CROSSED_STACKED[hidden]
        found = crossed(16, hidden, torch.float32)
        fits = stacked if hidden == 512 else stacked[:2]  # (fp32 k8 at H=1024: 384 KiB)
        assert [fields(c) for c in found] == [*chunked, *fits]
        sixteen = crossed(16, hidden, torch.bfloat16)
        assert [fields(c) for c in sixteen] == [chunked[0], *stacked]
        for cfg in found + sixteen:
            k = cfg.k_blocks
            assert cfg.block_k == hidden // k and cfg.block_batch == 16
            assert cfg.stacked == cfg.dot != cfg.chunked
            assert splits._tile_programs(cfg, hidden) == k * hidden // cfg.slice in (64, 128)
            launch._check_split(cfg, hidden, tl.float32)
        assert crossed(12, hidden, torch.float16) == sixteen
        assert crossed(16, hidden, torch.float64) == []
        assert crossed(8, hidden, torch.float32) == []
        assert crossed(16, hidden, torch.float32, forward=True) == []
    assert crossed(16, 256, torch.float32) == [] and crossed(16, 2048, torch.float32) == []
    odd = crossed(16, 1000, torch.float32)  # (ceil(1000 / 16) = 63 units a block)
    assert {c.block_k for c in odd} == {64, 128} and all(
        splits._tile_programs(c, 1000) == 128 for c in odd)
    Props.multi_processor_count = 108
    assert [c.k_blocks for c in crossed(16, 1024, torch.bfloat16)] == [8]  # (64 programs)
    assert len(crossed(16, 384, torch.float32)) == 6  # (96 and 48 programs)


def test_chunk_shape():
    """_chunk_shape: chunks of 32 / unit_lanes, the warps along the units first (one unit,
    or thread_units, a thread), the rest along K; and which unit_lanes and thread_units a
    split can take (_can_chunk)."""
    cfg = tg.Config(16, 8, 1024, dot=False, warps=8, resident=True, chunked=True)
    assert splits._chunk_shape(cfg) == (32, 1)
    assert splits._chunk_shape(cfg._replace(slice=4)) == (32, 1)  # (as Triton lays it out)
    assert splits._chunk_shape(cfg._replace(unit_lanes=4)) == (8, 4)  # 2 warps along units
    assert splits._chunk_shape(cfg._replace(unit_lanes=8)) == (4, 8)
    assert splits._chunk_shape(cfg._replace(unit_lanes=4, thread_units=2)) == (8, 8)
    assert splits._chunk_shape(cfg._replace(thread_units=2)) == (32, 2)  # 4 along units
    assert splits._chunk_shape(cfg._replace(unit_lanes=2, warps=4)) == (16, 1)
    assert splits._can_chunk(cfg._replace(unit_lanes=8))
    assert splits._can_chunk(cfg._replace(unit_lanes=4, thread_units=2))
    for lanes, inner in ((0, 1), (3, 1), (16, 1), (1, 3), (4, 4), (1, 16)):
        # (not powers of two, or more lanes times thread units than units)
        assert not splits._can_chunk(cfg._replace(unit_lanes=lanes, thread_units=inner))
    # (chunks of 1 over 8 warps: 8 of K, not a whole number of them in 4)
    assert not splits._can_chunk(tg.Config(1, 32, 4, dot=False, warps=8, resident=True,
                                           unit_lanes=32))


def test_permuted_rule():
    """Which splits can exchange in the product's order (_can_permute: a chunk shape whose
    warps all lie along K, not stamped; a ValueError at launch
    otherwise), and _permutation: distinct places within block_k, every one of them at
    hidden = block_k, in 16-byte runs a thread."""
    cfg = tg.Config(16, 8, 1024, dot=False, warps=8, resident=True, chunked=True,
                    unit_lanes=4, thread_units=2)  # (fp32 B=16 H=1024's default shape)
    assert splits._can_permute(cfg)
    assert splits._can_permute(tg.Config(16, 4, 512, dot=False, resident=True, chunked=True,
                                         unit_lanes=4))
    refused = [cfg._replace(unit_lanes=2),  # (2 × 2 < 8 units: warps along the units)
               cfg._replace(unit_lanes=1, thread_units=1),  # (no chunk shape)
               cfg._replace(chunked=False), cfg._replace(stamped=True)]
    for bad in refused:
        assert not splits._can_permute(bad)
        with pytest.raises(ValueError, match="permuted"):
            launch._check_split(bad._replace(permuted=True), 1024, tl.float32)
    launch._check_split(cfg._replace(permuted=True), 1024, tl.float32)
    at = splits._permutation(cfg, 1024)
    assert sorted(at) == list(range(1024))
    # (chunks of 8 lanes over 8 warps, 16 chunks: lane i of warp j holds chunks c = 4q..4q+3
    # of k = (8c + j)·8 + i side by side)
    assert [at[(8 * c + 3) * 8 + 5] for c in range(4)] == [3 * 128 + 5 * 4 + q
                                                          for q in range(4)]
    padded = splits._permutation(cfg, 1000)
    assert len(set(padded)) == 1000 and max(padded) < 1024


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
def test_permuted_exchange_over_launches_in_fp64(reset_after, monkeypatch):
    """Config.permuted in fp64 (8-byte values, 32 bytes a thread's run), its rows over
    two launches (one batch tile each: row0 past 0), a last chunk past H: against the
    reference at fp64's tolerance."""
    monkeypatch.setattr(splits, "_grid_limit", lambda device: 1)
    cfg = tg.Config(4, 32, 32, dot=False, warps=4, resident=True, chunked=True,
                    unit_lanes=16, thread_units=2, permuted=True)
    launches = []
    real_launch = tg._launch

    def spy(kernel, cfg, batch, hidden, steps, args, **consts):
        launches.append(-(-batch // cfg.block_batch))
        real_launch(kernel, cfg, batch, hidden, steps, args, **consts)

    monkeypatch.setattr(tg, "_launch", spy)
    _compare(5, 7, 30, reset_after, torch.float64, lengths=_ragged(7, 5), cfg=cfg)
    assert launches == [2, 2]  # (two tiles each call, one a launch: _grid_limit 1)


@pytest.mark.parametrize("block_k,kwarps,chunk,units,halves", [
    (32, 4, 8, 4, False),  # (one chunk a thread: NC = 1)
    (32, 8, 2, 16, False),  # (two chunks: one 8-byte run)
    (1024, 8, 8, 4, True),  # (fp32 B=16 H=1024's u4x2: 16 chunks, in halves)
    (512, 4, 16, 2, True), (128, 4, 1, 32, True)], ids=str)
@pytest.mark.parametrize("leading", [False, True], ids=["lanes-last", "lanes-first"])
def test_permuted_places(block_k, kwarps, chunk, units, halves, leading, monkeypatch):
    """Config.permuted's places, the kernels' (_permuted_at) and the host's
    (_permutation, triton_gru._positions) alike; and _permuted_block's read of a row so
    laid out: x[row, k] at k = (KW·c + j)·CHUNK + i for chunk c, warp j, lane i, the same
    value for each unit lane o (as _chunked_tiles lays W's k), whole or a half of the
    chunks; rows past B read row 0; its load's axes in either order (LEADING_LANES: Triton
    3.6's, and 3.7-3.9's), and which Triton lays lanes which way."""
    monkeypatch.setattr(products, "LEADING_LANES", leading)
    assert lang._leading_lanes("3.6.0") and lang._leading_lanes("3.5.1")
    assert not any(lang._leading_lanes(v) for v in ("3.7.0", "3.9.0", "3.10.2", "4.0.0"))
    cfg = tg.Config(4, units * 2, block_k, dot=False, warps=kwarps, resident=True,
                    chunked=True, unit_lanes=units, thread_units=2, permuted=True)
    assert splits._chunk_shape(cfg) == (chunk, kwarps) and splits._can_permute(cfg)
    places = torch.empty(block_k, dtype=torch.int64, device=DEVICE)
    _permuted_places[(1,)](places, BK=block_k, KW=kwarps, CHUNK=chunk)
    assert places.tolist() == splits._permutation(cfg, block_k)
    assert tg._positions(cfg, block_k, torch.device(DEVICE)).tolist() == places.tolist()
    assert sorted(places.tolist()) == list(range(block_k))
    rows = 3
    x = torch.arange(rows * block_k, dtype=torch.float32, device=DEVICE).view(rows, block_k)
    laid = torch.empty_like(x)
    laid[:, places] = x
    nc = block_k // (kwarps * chunk)
    for c0, piece in (((0, nc // 2), (nc // 2, nc // 2)) if halves else ((0, nc),)):
        out = torch.empty(4, piece, kwarps, units, chunk, device=DEVICE)
        _permuted_read[(1,)](laid, out, rows, NC=piece, SI=2, KW=kwarps, SO=units,
                             CHUNK=chunk, NCF=nc, C0=c0)
        c = torch.arange(c0, c0 + piece, device=DEVICE)[:, None, None]
        k = (c * kwarps + torch.arange(kwarps, device=DEVICE)[None, :, None]) * chunk + \
            torch.arange(chunk, device=DEVICE)[None, None, :]
        want = x[[0, 1, 2, 0]][:, k]  # (4, piece, KW, CHUNK): row 3 past B reads row 0
        assert torch.equal(out, want[:, :, :, None, :].expand_as(out))


PERMUTED_SPLITS = {  # (batch, hidden, split): chunk shapes whose warps all lie along K
    "u16x2": (7, 30, dict(block_batch=4, slice=32, block_k=32, warps=4, unit_lanes=16,
                          thread_units=2)),  # (chunks of 2, 4 a thread: one 16-byte load)
    "u16x2-8w": (7, 30, dict(block_batch=4, slice=32, block_k=32, warps=8, unit_lanes=16,
                             thread_units=2)),  # (2 chunks a thread)
    "u8x16": (6, 100, dict(block_batch=4, slice=128, block_k=128, warps=4, unit_lanes=8,
                           thread_units=16)),  # (8 chunks: in halves)
    "u32x4-prefetch": (3, 128, dict(block_batch=4, slice=128, block_k=128, warps=4,
                                    unit_lanes=32, thread_units=4, prefetch=True)),
    "u4x8": (5, 30, dict(block_batch=4, slice=32, block_k=32, warps=4, unit_lanes=4,
                         thread_units=8)),  # (one chunk a thread)
    "u32x1": (5, 30, dict(block_batch=4, slice=32, block_k=32, warps=1, unit_lanes=32)),
}
if DEVICE == "cuda":  # the B=16 shapes (64-128 programs), as benchmark mode tries them
    PERMUTED_SPLITS.update({
        "f32-512-u4x1": (16, 512, dict(block_batch=16, slice=4, block_k=512, unit_lanes=4)),
        "f32-512-u2x2": (16, 512, dict(block_batch=16, slice=4, block_k=512, unit_lanes=2,
                                       thread_units=2)),
        "f32-1024-u4x2": (16, 1024, dict(block_batch=16, slice=8, block_k=1024, warps=8,
                                         unit_lanes=4, thread_units=2)),
        "f32-1024-u8x1": (16, 1024, dict(block_batch=16, slice=8, block_k=1024, warps=8,
                                         unit_lanes=8)),
        # (8- and 4-row tiles over a half or a quarter of the programs: ROW_TILE_SPREADS)
        "f32-512-8rows-u8x1": (16, 512, dict(block_batch=8, slice=8, block_k=512,
                                             unit_lanes=8)),
        "f32-512-8rows-u4x2-12-prefetch": (12, 512, dict(block_batch=8, slice=8,
                                                         block_k=512, unit_lanes=4,
                                                         thread_units=2, prefetch=True)),
        "f32-1024-8rows-u8x2": (16, 1024, dict(block_batch=8, slice=16, block_k=1024,
                                               warps=16, unit_lanes=8, thread_units=2)),
        "f32-512-4rows-u16x1": (16, 512, dict(block_batch=4, slice=16, block_k=512,
                                              warps=8, unit_lanes=16)),
        "f32-1000-u4x2-12": (12, 1000, dict(block_batch=16, slice=8, block_k=1024, warps=8,
                                            unit_lanes=4, thread_units=2, prefetch=True)),
    })


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("split", list(PERMUTED_SPLITS))
def test_permuted_exchange(split, dtype, reset_after, monkeypatch):
    """Config.permuted: the state (the backward's gradients) exchanged in the order the
    product's threads hold it, rows of block_k (zeros past H), read without a pass through
    shared memory. Against the reference: outputs and every gradient, rows past B, a last
    chunk past H, ragged lengths; against the same split unpermuted, within 1e-6 in fp32
    (its sums may run in another order); the kernels get the permuted buffers (the
    forward's hbuf of block_k, the backward's xbuf of 3·block_k)."""
    batch, hidden, fields = PERMUTED_SPLITS[split]
    cfg = tg.Config(**fields, dot=False, resident=True, chunked=True, permuted=True)
    launched = []
    real_launch = tg._launch

    def spy(kernel, cfg, batch, hidden, steps, args, **consts):
        xbuf = args[kernel.arg_names.index("hbuf" if kernel is tg._forward_kernel else "xbuf")]
        launched.append((cfg.permuted, xbuf.shape[-1]))
        real_launch(kernel, cfg, batch, hidden, steps, args, **consts)

    monkeypatch.setattr(tg, "_launch", spy)
    steps = 512 if DEVICE == "cuda" else 5
    _compare(steps, batch, hidden, reset_after, dtype, lengths=_ragged(batch, steps),
             cfg=cfg)
    assert launched == [(True, cfg.block_k), (True, 3 * cfg.block_k)]
    # (the fp32 sums may run in another order: the forward's in halves, and the
    # interpreter's numpy sums over the permuted block's own memory order; one rounding
    # apart may move a 16-bit output by its last bit)
    _same_numbers("permuted", [cfg._replace(permuted=False), cfg], 6, batch, hidden,
                  _ragged(batch), reset_after, dtype, exact=False,
                  tol=1e-6 if dtype == torch.float32 else TOL[dtype])


@pytest.mark.parametrize("chunk,kwarps,inner", [(32, 1, 1), (8, 4, 1), (4, 8, 1), (16, 2, 1),
                                                (8, 2, 2), (32, 1, 4)], ids=str)
@pytest.mark.parametrize("layout", ["forward", "backward"])
def test_chunked_tiles_of_every_program(layout, chunk, kwarps, inner):
    """Config.chunked's tiles and product for every program of a launch (the kernels'
    tests run one program a tile in the interpreter: here each program's column offset),
    the last one past H (H=100, 8 units, 13 programs), four chunks of K, the last partly
    past H: the forward's W_hh (x @ W_gᵀ) and the backward's W_hhᵀ (x @ W_hh's gate
    block g); chunks of a warp's 32 lanes, or with Config.unit_lanes narrower chunks
    spread over warps along K, and with Config.thread_units 2 or 4 units a thread
    (_chunk_shape)."""
    hidden, slice_ = 100, 8
    g = torch.Generator().manual_seed(5)
    w = torch.randn(3 * hidden, hidden, generator=g, dtype=torch.float64)
    x = torch.randn(16, hidden, generator=g, dtype=torch.float64)
    programs = -(-hidden // slice_)
    out = torch.full((3, 16, programs * slice_), math.nan, device=DEVICE)
    if layout == "forward":
        given, stride_s, gstep = w, hidden, hidden * hidden
        want = x @ w.view(3, hidden, hidden).transpose(1, 2)
    else:
        given, stride_s, gstep = w.t().contiguous(), 3 * hidden, hidden
        want = x @ w.view(3, hidden, hidden)
    _chunked_gates[(programs,)](given.float().to(DEVICE), x.float().to(DEVICE), out, hidden,
                                stride_s, gstep, BK=128, S=slice_, CHUNK=chunk, KW=kwarps,
                                SI=inner)
    assert_close("gates", want, out[..., :hidden].double().cpu(), 1e-5, rtol=1e-5)


def test_chunked_split_needs_resident_broadcast_tiles():
    """Config.chunked: resident tiles, the broadcast product, not K-major, block_k ≥ 32
    (a chunk per warp's lanes), fewer than 16 rows or units (Triton 3.6 fails to compile
    16 of both); a ValueError before any launch otherwise."""
    gi, h0, w, b, _ = _problem(2, 2, 16, torch.float32)
    lens = torch.tensor([2, 2], device=DEVICE)
    args = (gi.detach(), h0.detach(), w.detach(), b.detach(), lens, True, False)
    assert tg.forward(*args, tg.Config(2, 16, 32, dot=False, resident=True,
                                       chunked=True))[0].isfinite().all()
    for cfg in (tg.Config(2, 16, 16, dot=False, resident=True, chunked=True),
                tg.Config(16, 16, 32, dot=False, resident=True, chunked=True),
                tg.Config(2, 16, 32, dot=False, chunked=True),
                tg.Config(16, 16, 32, dot=True, resident=True, chunked=True),
                tg.Config(2, 16, 32, dot=False, resident=True, kmajor=True, chunked=True),
                tg.Config(2, 16, 32, dot=False, resident=True, chunked=True, unit_lanes=32),
                tg.Config(2, 16, 32, dot=False, resident=True, unit_lanes=2),
                tg.Config(2, 16, 32, dot=False, resident=True, thread_units=2)):
        with pytest.raises(ValueError, match="chunked"):
            tg.forward(*args, cfg)


_WAITED = []  # (the arrivals each _exact_wait call waited for)


@lang._jit
def _exact_wait(sync, arrivals):
    """_wait, in the interpreter: one program a tile, so every arrival a wait counts on
    has come in, and no more (a wait for too few would pass on the CPU, and race on a
    GPU)."""
    got = tl.atomic_add(sync, 0, sem="acquire", scope="gpu")
    want = arrivals.handle.data if hasattr(arrivals, "handle") else arrivals
    if not (got.handle.data == want).all():
        raise AssertionError(f"a wait for {want} found the counter at {got.handle.data}")
    _WAITED.append(want)


@pytest.mark.skipif(DEVICE == "cuda", reason="the interpreter's check")
@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
def test_waits_count_every_arrival(monkeypatch, reset_after):
    """Each barrier wait counts exactly the arrivals made before it, forward and backward,
    two batch tiles (each its own counter); and every counter ends at the launch's
    arrivals, one a step (reset_before: two). (The checking wait is seen to run in both
    kernels: the real one would pass here too.)"""
    _patch_kernels(monkeypatch, "_wait", _exact_wait)
    _WAITED.clear()
    counters = []
    zeros = torch.zeros

    def recorded(*shape, **kwargs):
        made = zeros(*shape, **kwargs)
        if kwargs.get("dtype") == torch.int32:  # (the launches' counters)
            counters.append(made)
        return made

    monkeypatch.setattr(tg.torch, "zeros", recorded)
    steps, batch, hidden = 4, 16, 40
    gi, h0, w, b, _ = _problem(steps, batch, hidden, torch.float32)
    lens = torch.tensor([4, 1, 3, 2] * 4, device=DEVICE)
    cfg = tg.Config(8, 64, 64, dot=False, resident=True)
    out, saved = tg.forward(gi.detach(), h0.detach(), w.detach(), b.detach(), lens,
                            reset_after, True, cfg)
    each = steps * (1 if reset_after else 2)
    assert counters[-1].tolist() == [each] * 2
    assert _WAITED, "the forward's waits were not the checking one"
    _WAITED.clear()
    tg.backward(torch.ones_like(out), h0.detach(), w.detach(), out, saved, lens, reset_after,
                cfg)
    assert counters[-1].tolist() == [each] * 2
    assert _WAITED, "the backward's waits were not the checking one"


@pytest.mark.parametrize("stamped", [False, True], ids=["barrier", "stamped"])
@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("size", [(16, 16), (9, 13), (20, 16), (1, 8)] +
                         ([(16, 40), (5, 256)] if DEVICE == "cuda" else []), ids=str)
def test_stacked_split(size, dtype, reset_after, stamped):
    """Config.stacked, forward and backward: the three gates' rows in one tile, one
    tl.dot a step (fp32 as three TF32 products on a split W), the gates cut out of it
    (the backward's summed): rows past B (one row of 16 too), units past H, a second batch
    tile, the barrier or the stamped exchange; outputs, saved gates and every gradient."""
    batch, hidden = size
    cfg = tg.Config(16, 16, max(16, splits._pow2(hidden)), dot=True, resident=True,
                    stacked=True, stamped=stamped)
    _compare(4, batch, hidden, reset_after, dtype, lengths=([4, 1, 3, 2] * 5)[:batch],
             cfg=cfg)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("slice_,hidden", [(16, 64), (8, 64), (4, 64), (8, 50), (4, 40)],
                         ids=str)
def test_stacked_folds(slice_, hidden, dtype):
    """The stacked tile's folds of K (16 / slice of them, side by side in one tl.dot) give
    each gate's block of x @ W_gᵀ for the program's units, and the backward's tile (gate
    and fold blocks side by side) Σ_g dg_g @ W_g's columns, K past H masked: the folding
    checked apart from the whole kernels, which the interpreter runs at one fold only
    (its one program must cover H)."""
    g = torch.Generator().manual_seed(3)
    w = (torch.randn(3 * hidden, hidden, generator=g) / hidden ** 0.5).to(dtype)
    x = torch.randn(16, hidden, generator=g)
    dg = torch.randn(16, 3 * hidden, generator=g)
    programs = -(-hidden // slice_)
    tol = 2e-6 if dtype == torch.float32 else 2e-3

    def check(name, got, exact, bound):  # (each to its sum's error bound)
        assert ((got.double().cpu() - exact).abs() <= tol * bound).all(), name

    parts = torch.cat(launch._tf32_parts(w)) if dtype == torch.float32 else w
    out = torch.full((3, 16, programs * slice_), math.nan, device=DEVICE)
    _stacked_gates[(programs,)](parts.to(DEVICE), x.to(DEVICE), out, hidden, BK=64,
                                S=slice_)
    w_g = w.double().view(3, hidden, hidden)
    check("gates", out[..., :hidden], x.double() @ w_g.transpose(1, 2),
          x.double().abs() @ w_g.abs().transpose(1, 2))
    # the backward's: Σ_g dg_g @ W_g, from W_hhᵀ's tiles
    wt = w.t().contiguous()
    parts = torch.cat(launch._tf32_parts(wt)) if dtype == torch.float32 else wt
    carry = torch.full((16, programs * slice_), math.nan, device=DEVICE)
    _stacked_carry_of[(programs,)](parts.to(DEVICE), dg.to(DEVICE), carry, hidden, BK=64,
                                   S=slice_)
    check("carry", carry[:, :hidden], dg.double() @ w.double(),
          dg.double().abs() @ w.double().abs())


def test_tf32_parts_are_exact():
    """W = hi + lo exactly, hi with TF32's 10-bit mantissa, lo at most 2^-11 of W (2^-10
    next to fp32's largest, where rounding up would overflow)."""
    w = torch.randn(300, dtype=torch.float64).to(torch.float32) * 10.0 ** torch.randint(
        -30, 30, (300,))
    top = torch.finfo(torch.float32).max
    w = torch.cat([w, torch.tensor([top, -top, top * (1 - 2.0 ** -12), 0.0])])
    hi, lo = launch._tf32_parts(w)
    assert torch.equal(hi + lo, w) and hi.isfinite().all()
    assert not (hi.view(torch.int32) & 8191).any()
    assert (lo.abs()[:300] <= w.abs()[:300] * 2.0 ** -11).all()
    assert (lo.abs() <= w.abs() * 2.0 ** -10).all()


def test_stacked_splits_fit(monkeypatch):
    """Benchmark mode's stacked candidates: 16, 8 or 4 units a program where the programs
    fit on the card (132 SMs here) and the shared memory in STACKED_MAX_BYTES (the
    forward's fp32 up to H=512, 16-bit up to 1024; the backward's, with a 4x operand,
    fp32 up to 256), each with at least 16 of K per fold."""
    monkeypatch.setattr(splits, "_grid_limit", lambda device: 132)
    cuda = torch.device("cuda")

    def units(hidden, dtype, forward=True):
        found = splits._stacked_splits(hidden, cuda, dtype, forward)
        assert all(c.block_k * c.slice >= 256 and c.block_k >= hidden for c in found)
        return [c.slice for c in found]

    assert units(256, torch.float32) == [16, 8, 4]
    assert units(512, torch.float32) == [8, 4]
    assert units(1024, torch.float32) == []
    assert units(1024, torch.bfloat16) == [16, 8]
    assert units(2048, torch.float16) == []
    assert units(256, torch.float32, False) == [8, 4]
    assert units(512, torch.float32, False) == []
    assert units(1024, torch.bfloat16, False) == [8]
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: type("P", (), {"multi_processor_count": 132}))
    default = tg.choose_config(16, 512, cuda, torch.float32)
    forward = tg._candidates(default, 16, 512, cuda, torch.float32, True)
    assert default.chunked and forward[0] == default  # (the default first, once)
    # (the product chunked or not, its reads a step ahead; not stamped: 8192 words a
    # block, over STAMPED_TWIN_MAX_WORDS)
    # (unchunked, in no chunk shape)
    plain = dict(chunked=False, unit_lanes=1, thread_units=1)
    assert forward[1:3] == [default._replace(**plain), default._replace(prefetch=True)]
    assert not any(c.stamped for c in forward)
    assert [c.slice for c in forward if c.stacked and not c.prefetch] == [8, 4]
    assert sum(c.prefetch for c in forward if not c.permuted) == 1
    # (its chunk shape's warps all along K: permuted too, with its reads a step ahead too)
    # (and 8-row tiles of 8 units and 4-row tiles of 16, chunked in ROW_TILE_SPREADS's
    # shapes, permuted too, and with prefetch: each permuted candidate with its reads a
    # step ahead too)
    halves = tg.Config(8, 8, 512, dot=False, resident=True, chunked=True, unit_lanes=8)
    quarters = tg.Config(4, 16, 512, dot=False, warps=8, resident=True, chunked=True,
                         unit_lanes=16)
    tiles = {t._replace(permuted=True, prefetch=f) for t in (halves, quarters)
             for f in (False, True)}
    assert {c for c in forward if c.permuted} == {default._replace(permuted=True),
                                                  default._replace(prefetch=True,
                                                                   permuted=True)} | tiles
    assert not any(c.stamped for c in forward if c.stacked)  # (no stamped stacked tile)
    assert tg.Config(16, 4, 512, dot=False, resident=True) in forward  # the spread split
    assert tg.Config(16, 32, 64, dot=True) in forward
    assert {c for c in forward if c.block_batch < 16} == {  # smaller row tiles, resident
        tg.Config(8, 8, 512, dot=False, resident=True),
        tg.Config(4, 16, 512, dot=False, warps=8, resident=True),
        halves, quarters} | tiles
    small = tg._candidates(tg.choose_config(16, 256, cuda, torch.float32), 16, 256, cuda,
                           torch.float32, True)
    assert small[0].kmajor and not any(c.stamped for c in small)
    assert tg.Config(16, 2, 256, dot=False, resident=True) in small  # one 16-row tile
    backward = tg._candidates(tg.choose_backward_config(16, 256, cuda, torch.float32), 16,
                              256, cuda, torch.float32, False)
    assert [c.slice for c in backward if c.stacked] == [8, 4]  # (4x operand)
    assert backward[1] == backward[0]._replace(prefetch=True)
    one = tg._candidates(tg.choose_config(1, 256, cuda, torch.float32), 1, 256, cuda,
                         torch.float32, True)  # (a 16-row tile, 15 rows idle)
    assert [c.slice for c in one if c.stacked] == [16, 8, 4]
    assert [c for c in one if c.prefetch] == [one[0]._replace(prefetch=True)]
    big = tg.choose_config(17, 256, cuda, torch.float32)
    assert not any(c.stacked for c in tg._candidates(big, 17, 256, cuda, torch.float32,
                                                       True))


def test_candidates_fit_the_card(monkeypatch):
    """Benchmark mode's candidates: the 16-row tile's alternatives at batch 9-16 only, and
    none whose programs for one tile can't all be resident on the card."""
    cuda = torch.device("cuda")

    class Props:
        multi_processor_count = 132

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props)
    f32 = torch.float32
    for batch in (17, 32, 64):
        found = tg._candidates(tg.choose_config(batch, 512, cuda, f32), batch, 512, cuda,
                               f32, True)
        assert not any(c.block_batch in (4, 8) or c.resident for c in found), batch
    for sms in (16, 46, 66, 108, 132):
        Props.multi_processor_count = sms
        for batch, hidden in [(16, 256), (12, 512), (16, 1024), (16, 2048), (1, 1024)]:
            found = tg._candidates(tg.choose_config(batch, hidden, cuda, f32), batch, hidden,
                                   cuda, f32, True)
            assert all(-(-hidden // c.slice) <= sms for c in found[1:]), (sms, batch, hidden)
    Props.multi_processor_count = 46  # (8, 8, 512) needs 64 programs
    found = tg._candidates(tg.choose_config(16, 512, cuda, f32), 16, 512, cuda, f32, True)
    assert tg.Config(4, 16, 512, dot=False, warps=8, resident=True) in found
    assert tg.Config(8, 8, 512, dot=False, resident=True) not in found


def test_streamed_split_fits_the_card(monkeypatch):
    """A 16-row tile's tl.dot split on streamed W takes 32 units a program, up to 64
    where 32 would need more programs than the card has multiprocessors; above 64 × the
    multiprocessors the kernels refuse the hidden size, with what to use instead."""
    cuda = torch.device("cuda")

    class Props:
        multi_processor_count = 46

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for save in (False, True):
            assert tg.choose_config(16, 2048, cuda, dtype, save) == tg.Config(16, 64, 64,
                                                                              dot=True)
        assert tg.choose_backward_config(16, 2048, cuda, dtype) == tg.Config(16, 64, 64,
                                                                             dot=True)
        assert tg.choose_config(16, 1400, cuda, dtype).slice in (32, 64)
    assert tg.max_hidden(cuda) == 64 * 46
    monkeypatch.setattr(splits, "_grid_limit", lambda device: 1)  # (the interpreter's CPU)
    gi, h0, w, b, _ = _problem(2, 1, 65, torch.float32)
    with pytest.raises(ValueError, match="hidden sizes up to 64 .* got 65: use backend="):
        tg.core(gi, h0, w, b, None, True)
    with pytest.raises(ValueError, match="hidden sizes up to 64"):
        tg.core(gi.detach(), h0.detach(), w.detach(), b.detach(), None, True)


def test_stacked_split_needs_its_tile():
    """A stacked split needs block_batch 16, slice 4, 8 or 16, at least 16 of K per fold,
    tl.dot and resident tiles, not float64: the forward and the backward say so."""
    gi, h0, w, b, _ = (t.detach() if t is not None else None
                       for t in _problem(2, 16, 16, torch.float32))
    lens = torch.full((16,), 2, device=DEVICE)
    good = tg.Config(16, 16, 16, dot=True, resident=True, stacked=True)
    out, saved = tg.forward(gi, h0, w, b, lens, True, True, good)
    for cfg in (good._replace(block_batch=8), good._replace(slice=2),
                good._replace(slice=8), good._replace(dot=False),
                good._replace(resident=False)):
        with pytest.raises(ValueError, match="stacked"):
            tg.forward(gi, h0, w, b, lens, True, False, cfg)
        with pytest.raises(ValueError, match="stacked"):
            tg.backward(torch.ones_like(out), h0, w, out, saved, lens, True, cfg)
    with pytest.raises(ValueError, match="stacked"):
        tg.forward(gi.double(), h0.double(), w.double(), b.double(), lens, True, False, good)


def test_resident_split_needs_all_of_k():
    gi, h0, w, b, _ = _problem(2, 1, 40, torch.float32)
    with pytest.raises(ValueError, match="block_k ≥ hidden"):
        tg.forward(gi.detach(), h0.detach(), w.detach(), b.detach(),
                   torch.tensor([2], device=DEVICE), True, False,
                   tg.Config(1, 64, 32, dot=False, resident=True))


def _same_numbers(name, configs, steps, batch, hidden, lengths, reset_after,
                  dtype=torch.float32, exact=DEVICE == "cpu", tol=1e-6):
    """Two splits that should change no number, forward (saving) and backward on the same
    problem: outputs, saved gates and every gradient bit for bit equal (``exact``; on a
    GPU the compiler may schedule the arithmetic apart: within ``tol``, 1e-6)."""
    gi, h0, w, b, _ = (t.detach() if t is not None else None
                       for t in _problem(steps, batch, hidden, dtype))
    lens = torch.tensor(lengths, device=DEVICE)
    dout = torch.randn(steps, batch, hidden, generator=torch.Generator().manual_seed(2)).to(
        device=DEVICE, dtype=dtype)
    results = []
    for cfg in configs:
        out, saved = tg.forward(gi, h0, w, b, lens, reset_after, True, cfg)
        grads = tg.backward(dout, h0, w, out, saved, lens, reset_after, cfg)
        results.append([out, *saved, *grads])
    for got, want in zip(results[1], results[0], strict=True):
        if exact:
            assert torch.equal(got, want), name
        else:
            assert_close(name, want.double(), got.double(), tol, rtol=tol)


def _ragged(batch: int, steps: int = 6) -> list[int]:
    """Lengths for _same_numbers: the first row full, the others ragged."""
    ragged = [1, 3, 2, steps, 4, 5]
    return [steps] + [ragged[i % len(ragged)] for i in range(batch - 1)]


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("split", [(4, 32, 32, True), (2, 32, 16, False), (16, 32, 512, True)],
                         ids=["resident", "chunks", "large-block"])
def test_stamped_exchange_changes_no_number(split, reset_after):
    """The stamped exchange moves the same fp32 values as the barrier's: outputs, saved
    gates and gradients bit for bit equal to the same split with a barrier (in the
    interpreter; on a GPU the compiler may schedule the arithmetic apart, within 1e-6)."""
    bb, s, bk, resident = split
    _same_numbers("stamped", [tg.Config(bb, s, bk, dot=False, resident=resident,
                                        stamped=stamped) for stamped in (False, True)],
                  5, 7, 30, [5, 1, 3, 2, 5, 4, 5], reset_after)


PREFETCH_SPLITS = {  # (batch, hidden, split[, dtype: fp32 unless named])
    "resident": (7, 30, dict(block_batch=4, slice=32, block_k=32, dot=False, resident=True)),
    "streamed": (7, 30, dict(block_batch=2, slice=32, block_k=8, dot=False)),
    "dot": (7, 30, dict(block_batch=16, slice=32, block_k=32, dot=True, resident=True)),
    "stacked": (7, 16, dict(block_batch=16, slice=16, block_k=32, dot=True, resident=True,
                            stacked=True)),
    "stamped": (7, 30, dict(block_batch=4, slice=32, block_k=32, dot=False, resident=True,
                            stamped=True)),
    "chunked": (7, 40, dict(block_batch=8, slice=64, block_k=64, dot=False, resident=True,
                            chunked=True)),
    # (in a chunk shape, as benchmark mode's prefetch twin of fp32's B=16 defaults)
    "chunk-shape": (7, 40, dict(block_batch=8, slice=64, block_k=64, dot=False, warps=8,
                                resident=True, chunked=True, unit_lanes=4, thread_units=2)),
}
if DEVICE == "cuda":  # several programs a tile, as the defaults at issue 5's grid points
    PREFETCH_SPLITS.update({
        "b1-stamped": (1, 256, dict(block_batch=1, slice=2, block_k=256, dot=False,
                                    resident=True, stamped=True)),
        "b16-kmajor": (16, 256, dict(block_batch=4, slice=8, block_k=256, dot=False, warps=8,
                                     resident=True, kmajor=True)),
        # (bf16: fp32's stacked backward at H=512 needs 320 KiB of shared memory, over an
        # SM's 227: OutOfResources on an H200, 2026-11-27)
        "b16-stacked": (16, 512, dict(block_batch=16, slice=4, block_k=512, dot=True,
                                      resident=True, stacked=True), torch.bfloat16),
        "b16-spread": (16, 512, dict(block_batch=16, slice=4, block_k=512, dot=False,
                                     resident=True)),
        "b16-chunked": (16, 1024, dict(block_batch=16, slice=8, block_k=1024, dot=False,
                                       warps=8, resident=True, chunked=True)),
        "b16-chunk-shape": (16, 1024, dict(block_batch=16, slice=8, block_k=1024, dot=False,
                                           warps=8, resident=True, chunked=True,
                                           unit_lanes=4, thread_units=2)),
    })


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("split", list(PREFETCH_SPLITS))
def test_prefetch_changes_no_number(split, reset_after):
    """Config.prefetch only moves a step's reads a step earlier: outputs, saved gates and
    every gradient bit for bit those of the same split without it (in the interpreter; on
    a GPU within 1e-6), over ragged lengths and h0 read at the backward's last step."""
    batch, hidden, fields, *dtype = PREFETCH_SPLITS[split]
    _same_numbers("prefetch", [tg.Config(**fields, prefetch=on) for on in (False, True)],
                  6, batch, hidden, _ragged(batch), reset_after, *dtype)


NARROW_SPLITS = {  # (batch, hidden, split)
    "stacked": (7, 16, dict(block_batch=16, slice=16, block_k=32, dot=True, resident=True,
                            stacked=True)),
    "stacked-folds": (9, 4, dict(block_batch=16, slice=4, block_k=64, dot=True,
                                  resident=True, stacked=True)),
    # (with prefetch, as the 16-bit backward's default at K=1024)
    "stacked-folds-prefetch": (9, 4, dict(block_batch=16, slice=4, block_k=64, dot=True,
                                           resident=True, stacked=True, prefetch=True)),
    "streamed": (7, 30, dict(block_batch=16, slice=32, block_k=16, dot=True)),
    "resident-dot": (7, 30, dict(block_batch=16, slice=32, block_k=32, dot=True,
                                 resident=True)),
}
if DEVICE == "cuda":  # several programs a tile, as the 16-bit defaults at B=16
    NARROW_SPLITS.update({
        "b16_stacked": (16, 512, dict(block_batch=16, slice=8, block_k=512, dot=True,
                                      resident=True, stacked=True)),
        "b16_stacked_4": (16, 512, dict(block_batch=16, slice=4, block_k=512, dot=True,
                                        resident=True, stacked=True)),
        "b16_streamed": (16, 1024, dict(block_batch=16, slice=32, block_k=64, dot=True)),
        # (the 16-bit backward's default at B=16, H=1024; the forward's 16 units would
        # need 256 KiB of shared memory in the backward, over an SM's 227)
        "b16_stacked_1024_prefetch": (16, 1024, dict(block_batch=16, slice=8, block_k=1024,
                                                     dot=True, resident=True, stacked=True,
                                                     prefetch=True)),
        "b16_resident_dot": (16, 1024, dict(block_batch=16, slice=16, block_k=1024, dot=True,
                                            warps=8, resident=True)),
        "b16_resident_dot_32": (12, 512, dict(block_batch=16, slice=32, block_k=512,
                                              dot=True, warps=8, resident=True)),
    })


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("dtype", [torch.float16] + ([torch.bfloat16] if DEVICE == "cuda"
                                                     else []), ids=str)
@pytest.mark.parametrize("split", list(NARROW_SPLITS))
def test_narrow_exchange_changes_no_number(split, dtype, reset_after, monkeypatch):
    """Config.narrow exchanges the state (the backward's gradients) in W's 16-bit dtype,
    which tl.dot rounds its operand to anyway: outputs, saved gates and every gradient bit
    for bit those of the same split in fp32 words (on a GPU too: the same rounding); the
    kernels get 16-bit exchange buffers and NARROW."""
    launched = []
    real_launch = tg._launch

    def spy(kernel, cfg, batch, hidden, steps, args, **consts):
        # (the forward's hbuf, the backward's xbuf: where its gradients are exchanged)
        xbuf = args[kernel.arg_names.index("hbuf" if kernel is tg._forward_kernel else "xbuf")]
        launched.append((cfg.narrow, xbuf.dtype))
        real_launch(kernel, cfg, batch, hidden, steps, args, **consts)

    monkeypatch.setattr(tg, "_launch", spy)
    batch, hidden, fields = NARROW_SPLITS[split]
    _same_numbers("narrow", [tg.Config(**fields, narrow=on) for on in (False, True)], 6,
                  batch, hidden, _ragged(batch), reset_after, dtype, exact=True)
    # (without narrow the backward exchanges through dgh or dgi, fp32)
    assert launched == [(False, torch.float32)] * 2 + [(True, dtype)] * 2


def test_narrow_only_with_16_bit_weights(benchmark_mode, monkeypatch):
    """16-bit activations with fp32 weights (a caller's own mix): benchmark mode's
    candidates exchange fp32 (a narrow split would round values no product rounds, and
    _check_weights refuses it); the same activations with 16-bit weights keep the narrow
    candidate (here the fastest). (The candidates made to apply in the interpreter: a
    tl.dot split, and it narrow.)"""
    dot = tg.Config(16, 32, 32, dot=True, resident=True)
    monkeypatch.setattr(splits, "choose_config", lambda *a, **k: dot)
    monkeypatch.setattr(splits, "choose_backward_config", lambda *a, **k: dot)
    monkeypatch.setattr(tg, "_candidates", lambda default, *a: [default, dot._replace(
        narrow=True)])
    monkeypatch.setattr(tg, "time_interleaved", lambda runs, device, **_: {
        c: 0.5 if c.narrow else 1.0 for c in runs})
    gi, h0, w, b = (t.detach() for t in _problem(3, 4, 20, torch.float16)[:4])
    lens = torch.full((4,), 3, device=DEVICE)
    for on in (False, True):
        monkeypatch.setattr(tg, "benchmark", on)
        for weights, narrow in ((torch.float32, False), (torch.float16, True)):
            out, saved = tg.forward(gi, h0, w.to(weights), b.to(weights), lens, True, True)
            tg.backward(torch.ones_like(out), h0, w.to(weights), out, saved, lens, True)
            assert all(c.narrow == narrow for key, c in tg._tuned.items()
                       if (weights == torch.float32) == (key[-1] == torch.float32))
    assert len(tg._tuned) == 4  # (forward and backward, each weights' dtype apart)


def test_narrow_exchange_needs_a_16_bit_dot():
    """A narrow split on fp32 weights, the broadcast product or the stamped exchange would
    round values no product rounds: refused, before any launch."""
    gi, h0, w, b = (t.detach() for t in _problem(2, 4, 16, torch.float32)[:4])
    lens = torch.full((4,), 2, device=DEVICE)
    for dtype, fields in [
            (torch.float32, dict(block_batch=16, slice=16, block_k=16, dot=True)),
            (torch.float16, dict(block_batch=4, slice=16, block_k=16, dot=False,
                                 resident=True)),
            (torch.float16, dict(block_batch=4, slice=16, block_k=16, dot=True,
                                 stamped=True))]:
        cfg = tg.Config(**fields, narrow=True)
        with pytest.raises(ValueError, match="narrow split"):
            tg.forward(gi.to(dtype), h0.to(dtype), w.to(dtype), b.to(dtype), lens, True, True,
                       cfg)
        out, saved = tg.forward(gi.to(dtype), h0.to(dtype), w.to(dtype), b.to(dtype), lens,
                                True, True, cfg._replace(narrow=False))
        with pytest.raises(ValueError, match="narrow split"):
            tg.backward(out, h0.to(dtype), w.to(dtype), out, saved, lens, True, cfg)


@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter's guard (on a GPU it would hang)")
@pytest.mark.parametrize("split", [(2, 32, 32), (16, 32, 512)], ids=["resident", "large-block"])
def test_a_missing_stamp_gives_nan_not_a_hang(monkeypatch, split):
    """In the interpreter a stamped wait that finds a word not yet written (a broken
    publish) gives NaN rather than spinning forever, so such a bug fails a test instead of
    stalling CI."""
    _patch_kernels(monkeypatch, "_publish", _publish_nothing)
    gi, h0, w, b = (t.detach() for t in _problem(3, 2, 30, torch.float32)[:4])
    cfg = tg.Config(*split, dot=False, resident=True, stamped=True)
    out, _ = tg.forward(gi, h0, w, b, torch.tensor([3, 3], device=DEVICE), True, False, cfg)
    assert out.isnan().all()


def test_kmajor_split_needs_resident_broadcast_tiles():
    """kmajor needs resident tiles and the broadcast product; the backward's default split
    never carries it (measured apart from the forward's)."""
    gi, h0, w, b = (t.detach() for t in _problem(2, 1, 8, torch.float32)[:4])
    lens = torch.tensor([2], device=DEVICE)
    cfg = tg.Config(1, 8, 8, dot=False, kmajor=True)
    with pytest.raises(ValueError, match="kmajor"):
        tg.forward(gi, h0, w, b, lens, True, False, cfg)
    with pytest.raises(ValueError, match="kmajor"):
        tg.forward(gi, h0, w, b, lens, True, False, cfg._replace(dot=True, resident=True))


@pytest.fixture
def benchmark_mode(monkeypatch):
    """tg.benchmark on, with nothing measured before."""
    monkeypatch.setattr(tg, "benchmark", True)
    monkeypatch.setattr(tg, "_tuned", {})
    monkeypatch.setattr(tg, "trials", {})


def _key(batch, hidden, steps, dtype, *rest, kind="forward"):
    """benchmark mode's key for a call on DEVICE (tg._split, keyed on a tensor's device:
    cuda:0, not cuda)."""
    return (kind, torch.empty(0, device=DEVICE).device, batch, hidden, dtype,
            min(steps, tg.TUNE_STEPS).bit_length(), *rest)


def test_benchmark_mode_keeps_the_fastest_split(benchmark_mode, monkeypatch):
    """The first call of a kind times every candidate and keeps the fastest; later calls
    of that kind and length bucket reuse it without timing, and compute what that split
    computes."""
    gi, h0, w, b = (t.detach() for t in _problem(9, 3, 20, torch.float32)[:4])
    lens = torch.tensor([9, 4, 7], device=DEVICE)
    default = tg.choose_config(3, 20, gi.device, gi.dtype)
    found = tg._candidates(default, 3, 20, gi.device, gi.dtype, True)
    assert len(found) >= 3 and found[0] == default
    fastest = found[2]
    timed = []

    def time_interleaved(runs, device, **_):
        timed.append(list(runs))
        for run in runs.values():
            run()
        return {cfg: 0.5 if cfg == fastest else 1.0 for cfg in runs}

    monkeypatch.setattr(tg, "time_interleaved", time_interleaved)
    first = tg.forward(gi, h0, w, b, lens, True, False)[0]
    assert timed == [found]
    assert tg._tuned[_key(3, 20, 9, torch.float32, True, False)] == fastest
    assert tg.trials[_key(3, 20, 9, torch.float32, True, False)][fastest] == 0.5
    second = tg.forward(gi, h0, w, b, lens, True, False)[0]
    assert len(timed) == 1  # (measured once)
    want = tg.forward(gi, h0, w, b, lens, True, False, fastest)[0]
    assert torch.equal(first, want) and torch.equal(second, want)
    tg.forward(gi, h0, w, b, lens, True, True)  # another kind: saving the gates
    tg.forward(gi[:3], h0, w, b, lens, True, False)  # another length bucket
    assert len(timed) == 3


def test_benchmark_mode_evicts_l2_before_each_timing(benchmark_mode, monkeypatch):
    """Each timed run of a candidate comes right after an eviction of L2 (l2_eviction), so
    that it reads its inputs from memory as a real call does; the untimed runs (the
    default's result, each candidate's check) come without one."""
    gi, h0, w, b = (t.detach() for t in _problem(4, 2, 16, torch.float32)[:4])
    lens = torch.tensor([4, 3], device=DEVICE)
    default = tg.choose_config(2, 16, gi.device, gi.dtype)
    other = default._replace(stamped=not default.stamped)
    log, forward = [], tg.forward

    def logged(*args):
        log.append(args[-1])
        return forward(*args)

    monkeypatch.setattr(tg, "forward", logged)
    monkeypatch.setattr(tg, "_candidates", lambda *args: [default, other])
    monkeypatch.setattr(tg, "l2_eviction", lambda device: lambda: log.append("evict"))
    forward(gi, h0, w, b, lens, True, False)
    # (on CUDA each round begins with an untimed call, time_interleaved's)
    round_ = [default] * (DEVICE == "cuda") + ["evict", default, "evict", other]
    assert log == [default, other] + round_ * 3


def test_benchmark_mode_leaves_out_a_split_that_fails(benchmark_mode, monkeypatch):
    """A candidate that fails (here a resident split narrower than H) is left out, with
    why in ``trials``; a default that fails raises, as it would without benchmark mode."""
    gi, h0, w, b = (t.detach() for t in _problem(4, 2, 40, torch.float32)[:4])
    lens = torch.tensor([4, 4], device=DEVICE)
    default = tg.choose_config(2, 40, gi.device, gi.dtype)
    broken = tg.Config(2, 64, 32, dot=False, resident=True)  # (block_k < hidden)
    monkeypatch.setattr(tg, "_candidates", lambda *args: [default, broken])
    tg.forward(gi, h0, w, b, lens, True, False)
    key = _key(2, 40, 4, torch.float32, True, False)
    assert tg._tuned[key] == default
    assert "block_k ≥ hidden" in tg.trials[key][broken]
    monkeypatch.setattr(tg, "_tuned", {})
    monkeypatch.setattr(splits, "choose_config", lambda *args: broken)
    monkeypatch.setattr(tg, "_candidates", lambda *args: [broken, default])
    with pytest.raises(ValueError, match="block_k ≥ hidden"):
        tg.forward(gi, h0, w, b, lens, True, False)


def test_benchmark_mode_leaves_out_a_split_that_disagrees(benchmark_mode, monkeypatch):
    """A candidate whose result differs from the default's (a broken split, however
    fast) is never kept."""
    gi, h0, w, b = (t.detach() for t in _problem(5, 2, 16, torch.float32)[:4])
    lens = torch.tensor([5, 5], device=DEVICE)
    default = tg.choose_config(2, 16, gi.device, gi.dtype)
    wrong = default._replace(resident=False)
    forward = tg.forward

    def forward_wrong_for_one_split(*args):  # (the candidates' runs call tg.forward)
        out, saved = forward(*args)
        return (out + 1e-3 if args[-1] == wrong else out), saved

    monkeypatch.setattr(tg, "forward", forward_wrong_for_one_split)
    monkeypatch.setattr(tg, "_candidates", lambda *args: [default, wrong])
    monkeypatch.setattr(tg, "time_interleaved", lambda runs, device, **_: {
        c: 0.1 if c == wrong else 1.0 for c in runs})
    forward(gi, h0, w, b, lens, True, False)
    key = _key(2, 16, 5, torch.float32, True, False)
    assert tg._tuned[key] == default and "differs" in tg.trials[key][wrong]


def test_benchmark_mode_times_nothing_with_one_candidate(benchmark_mode, monkeypatch):
    """float64 (no stamped exchange) on CUDA has one candidate: kept without a timing."""
    gi, h0, w, b = (t.detach() for t in _problem(4, 2, 8, torch.float64)[:4])
    default = tg.choose_config(2, 8, gi.device, gi.dtype)
    monkeypatch.setattr(tg, "_candidates", lambda *args: [default])
    monkeypatch.setattr(tg, "time_interleaved", lambda runs, device, **_: pytest.fail("timed"))
    tg.forward(gi, h0, w, b, torch.tensor([4, 4], device=DEVICE), True, False)
    assert tg._tuned[_key(2, 8, 4, torch.float64, True, False)] == default


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
def test_benchmark_mode_outputs_and_gradients(benchmark_mode, reset_after):
    """Through the module's path (custom op, autograd) with benchmark mode choosing the
    forward's and the backward's splits, every candidate run and timed (none left out):
    the reference's outputs and every gradient."""
    _compare(6, 3, 24, reset_after, torch.float32, lengths=[6, 2, 5])
    assert {key[0] for key in tg._tuned} == {"forward", "backward"}
    assert all(isinstance(t, float) for trial in tg.trials.values() for t in trial.values())


def test_stamped_split_refuses_float64():
    """The stamped exchange packs an fp32 value beside the step: float64 would lose
    precision silently, so it is refused."""
    gi, h0, w, b, _ = _problem(2, 1, 8, torch.float64)
    with pytest.raises(ValueError, match="can't run float64"):
        tg.forward(gi.detach(), h0.detach(), w.detach(), b.detach(),
                   torch.tensor([2], device=DEVICE), True, False,
                   tg.Config(1, 8, 8, dot=False, resident=True, stamped=True))


def test_backward_split_rule(monkeypatch):
    """The backward takes the forward's split, never stamped, except at batch 9-16 above
    H=256: at K=1024 the crossed split CROSSED_DEFAULTS names where its programs fit, else
    the stacked tiles with the fewest units where the backward's fit (16-bit, with
    prefetch and the narrow exchange), else in fp32 a program per SM with W_hhᵀ resident
    where its tiles fit, its product chunked at 4 warps or K ≥ 1024, in
    SPREAD_CHUNK_DEFAULTS's chunk shape where it has one (measured on an H200; at K=512
    four 4-row tiles, where all their programs fit), else tl.dot on streamed W."""
    cuda = torch.device("cuda")

    class Props:
        multi_processor_count = 132

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props)
    f32, bf16, f16 = torch.float32, torch.bfloat16, torch.float16
    spread = tg.Config(16, 4, 512, dot=False, resident=True, chunked=True)
    rows4 = tg.Config(4, 16, 512, dot=False, warps=8, resident=True, chunked=True,
                      unit_lanes=8, thread_units=2)  # (4 tiles × 32 programs)
    assert tg.choose_backward_config(16, 512, cuda, f32) == rows4
    assert tg.choose_backward_config(12, 384, cuda, f32) == rows4
    crossed = tg.Config(16, 128, 64, dot=True, warps=8, resident=True, stacked=True,
                        prefetch=True, k_blocks=16)  # (8 units × 16 K-blocks)
    for dtype in (f32, bf16, f16):
        assert tg.choose_backward_config(16, 1024, cuda, dtype) == crossed
        assert tg.choose_backward_config(10, 768, cuda, dtype) == crossed
    wide = tg.Config(16, 8, 1024, dot=False, warps=8, resident=True, chunked=True,
                     unit_lanes=4, thread_units=2)
    assert tg.choose_backward_config(16, 1024, cuda, f32, crossed=False) == wide
    assert tg.choose_config(16, 1024, cuda, f32) == wide  # (the forward's)
    assert tg.choose_config(16, 1056, cuda, f32) == tg.Config(16, 32, 64, dot=True)
    assert tg.choose_backward_config(16, 1056, cuda, f32) == tg.Config(16, 32, 64, dot=True)
    for dtype in (bf16, f16):  # the stacked tiles, the fewest units that fit
        assert tg.choose_backward_config(16, 512, cuda, dtype) == tg.Config(
            16, 4, 512, dot=True, resident=True, stacked=True, prefetch=True, narrow=True)
        assert tg.choose_backward_config(10, 1024, cuda, dtype, crossed=False) == tg.Config(
            16, 8, 1024, dot=True, resident=True, stacked=True, prefetch=True, narrow=True)
        assert tg.choose_backward_config(16, 2048, cuda, dtype) == tg.Config(16, 32, 64,
                                                                             dot=True)
    Props.multi_processor_count = 108  # 4 units resident at H ≤ 432 (4 tiles × 27
    # programs); 16 × 1024 won't fit, nor the crossed split's 128 programs
    assert tg.choose_backward_config(16, 432, cuda, f32) == rows4
    assert tg.choose_backward_config(16, 1024, cuda, f32) == tg.Config(16, 32, 64, dot=True)
    # bf16 H=1024: the forward's 16 units stacked fit 64 programs, the backward's 8 (128
    # programs) don't: tl.dot, not the forward's stacked split
    assert tg.choose_config(16, 1024, cuda, bf16).stacked
    assert tg.choose_backward_config(16, 1024, cuda, bf16) == tg.Config(16, 32, 64, dot=True)
    Props.multi_processor_count = 66  # 4 units over 66 SMs (the 4-row tiles' 4 × 17
    # programs don't fit: the 16-row tile), then 8 with 8 warps (K=512: not chunked, as 8
    # warps with 4 units at K=512 lost chunked on 132 SMs)
    assert tg.choose_backward_config(16, 264, cuda, f32) == spread
    assert tg.choose_backward_config(16, 512, cuda, f32) == tg.Config(
        16, 8, 512, dot=False, warps=8, resident=True)
    Props.multi_processor_count = 132
    for batch, hidden, dtype in [(16, 256, f32), (16, 256, bf16), (8, 512, f32),
                                 (32, 512, f32), (16, 128, f32), (16, 256, torch.float64)]:
        assert tg.choose_backward_config(batch, hidden, cuda, dtype) == \
            tg.choose_config(batch, hidden, cuda, dtype), (batch, hidden, dtype)
    for batch, hidden, dtype in [(1, 512, f32), (1, 256, bf16), (4, 256, f32)]:
        forward = tg.choose_config(batch, hidden, cuda, dtype)
        assert forward.stamped and tg.choose_backward_config(batch, hidden, cuda, dtype) == \
            forward._replace(stamped=False), (batch, hidden, dtype)
    cpu = torch.device("cpu")
    assert tg.choose_backward_config(16, 512, cpu, f32) == tg.choose_config(16, 512, cpu, f32)


def test_forward_split_rule(monkeypatch):
    """The forward's default splits (H200, benchmark mode, 2026-11-27): W resident where
    one tile covers H at batch ≤ 16 (broadcast product), chunked from K=512; at batch 2-8
    where a tile covering H won't fit the product's budget, W resident all the same and
    chunked where its tiles fit; at batch 9-16 and H=129-256 four 4-row K-major tiles at 8
    warps where they all fit at once; above H=256 in fp32 a program per SM with its units'
    tiles resident, chunked, where they fit, else (and in 16 bits) the stacked tiles where
    they fit (fp32: the fewest units; 16-bit: 8, 16 saving the gates), else tl.dot; never
    in fp64."""
    cuda = torch.device("cuda")

    class Props:
        multi_processor_count = 132

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props)
    f32, bf16 = torch.float32, torch.bfloat16
    assert tg.choose_config(1, 1024, cuda, f32) == tg.Config(1, 8, 1024, dot=False,
                                                             resident=True, chunked=True)
    assert tg.choose_config(1, 512, cuda, f32) == tg.Config(1, 4, 512, dot=False,
                                                            resident=True, stamped=True,
                                                            chunked=True)
    assert tg.choose_config(1, 256, cuda, f32) == tg.Config(1, 2, 256, dot=False,
                                                            resident=True, stamped=True)
    # batch 2-8: W resident and chunked where a tile covering H would stream it
    for batch, hidden, split in [(8, 1024, (8, 8, 1024, 8)), (5, 600, (8, 8, 1024, 8)),
                                 (2, 1024, (2, 8, 1024, 8)), (8, 512, (8, 4, 512, 4))]:
        for dtype in (f32, bf16):
            bb, units, k, warps = split
            assert tg.choose_config(batch, hidden, cuda, dtype) == tg.Config(
                bb, units, k, dot=False, warps=warps, resident=True, chunked=True), batch
    assert tg.choose_config(4, 512, cuda, f32) == tg.Config(4, 4, 512, dot=False,
                                                            resident=True, chunked=True)
    for batch in (2, 8):  # (W_hh too large for registers: streamed)
        assert not tg.choose_config(batch, 1025, cuda, f32).resident
        assert not tg.choose_config(batch, 512, cuda, torch.float64).chunked
    kmajor = tg.Config(4, 8, 256, dot=False, warps=8, resident=True, kmajor=True)
    for batch, hidden, dtype in [(16, 256, f32), (9, 200, bf16), (12, 256, torch.float16)]:
        assert tg.choose_config(batch, hidden, cuda, dtype) == kmajor, (batch, hidden)
    assert tg.choose_config(16, 128, cuda, f32) == tg.Config(16, 1, 128, dot=False,
                                                             resident=True)
    assert not tg.choose_config(16, 256, cuda, torch.float64).kmajor
    spread = tg.Config(16, 4, 512, dot=False, resident=True, chunked=True, unit_lanes=4)
    for save in (False, True):
        assert tg.choose_config(16, 512, cuda, f32, save) == spread
        assert tg.choose_config(11, 300, cuda, f32, save) == spread
        assert tg.choose_config(16, 1024, cuda, f32, save) == tg.Config(
            16, 8, 1024, dot=False, warps=8, resident=True, chunked=True, unit_lanes=4,
            thread_units=2)
    stacked_cfg = tg.Config(16, 4, 512, dot=True, resident=True, stacked=True)
    # 16-bit at K=512: 8 units, prefetching, the exchange narrow
    assert tg.choose_config(16, 512, cuda, bf16) == stacked_cfg._replace(
        slice=8, prefetch=True, narrow=True)
    assert tg.choose_config(16, 2048, cuda, bf16) == tg.Config(16, 32, 64, dot=True)
    # a training forward (saving the gates): 16-bit's 16 units, fp32's still the fewest;
    # at K=1024 16 units both ways, the exchange narrow, without prefetch
    assert tg.choose_config(16, 512, cuda, bf16, save=True) == stacked_cfg._replace(
        slice=16, prefetch=True, narrow=True)
    for save in (False, True):
        for hidden in (1024, 600):
            assert tg.choose_config(16, hidden, cuda, bf16, save) == tg.Config(
                16, 16, 1024, dot=True, resident=True, stacked=True, narrow=True)
    assert tg.choose_config(1, 256, cuda, f32, save=True) == tg.choose_config(1, 256, cuda,
                                                                              f32)
    assert not tg.choose_config(1, 256, cuda, torch.float64).resident
    assert not tg.choose_config(1, 2048, cuda, f32).resident  # 16 units × 2048: would spill
    Props.multi_processor_count = 108
    # 4 × 32 programs won't fit at once: one 16-row tile, as before
    assert tg.choose_config(16, 256, cuda, f32) == tg.Config(16, 4, 128, dot=False)
    # fp32 H=512: 128 programs of 4 units won't fit, 64 of 8 do; the spread split there
    # (8 units at 8 warps, K=512) isn't chunked (it lost so at 4 units on 132 SMs), and
    # unchunked it lost to the stacked split: the stacked split
    assert tg.choose_config(16, 512, cuda, f32) == stacked_cfg._replace(slice=8)
    assert tg.choose_config(16, 432, cuda, f32) == spread
    assert tg.choose_config(16, 1024, cuda, bf16) == tg.Config(
        16, 16, 1024, dot=True, resident=True, stacked=True, narrow=True)
    Props.multi_processor_count = 60  # no spread or stacked fp32 split at H=1024 (16 units
    # won't fit in registers, stacked needs 64 programs): tl.dot
    assert tg.choose_config(16, 1024, cuda, f32) == tg.Config(16, 32, 64, dot=True)
    Props.multi_processor_count = 132
    stacked_f32 = splits._stacked_default(512, cuda, f32, forward=True)  # (fp32 H=512: still
    assert stacked_f32 == stacked_cfg  # what the stacked split would be, benchmark mode's)


def test_narrow_candidates_rule(monkeypatch):
    """The defaults exchange 16-bit values (Config.narrow) only at batch 9-16 with 16-bit
    weights at K=512 and 1024 (H=257-1024: the stacked tiles, timed on an H200), not in the
    crossed backward (H=1024's default); benchmark mode
    times, wherever the default multiplies 16-bit weights with tl.dot on CUDA, that
    default with the other exchange too, and its other tl.dot candidates narrow; never in
    fp32, with the broadcast product, in a crossed split (its partial sums are no tl.dot's
    operand) or in the interpreter."""
    cuda = torch.device("cuda")

    class Props:
        multi_processor_count = 132

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props)
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        sixteen = dtype in (torch.float16, torch.bfloat16)
        for batch, hidden in [(1, 256), (1, 1024), (4, 512), (16, 256), (16, 512),
                              (16, 1024), (16, 3000), (64, 512)]:
            for forward, cfg in ((True, tg.choose_config(batch, hidden, cuda, dtype)),
                                 (True, tg.choose_config(batch, hidden, cuda, dtype, True)),
                                 (False, tg.choose_backward_config(batch, hidden, cuda,
                                                                   dtype))):
                one_way = cfg.k_blocks == 1
                assert cfg.narrow == (sixteen and 8 < batch <= 16 and hidden in (512, 1024)
                                      and one_way), cfg
                found = tg._candidates(cfg, batch, hidden, cuda, dtype, forward)
                assert (cfg._replace(narrow=not cfg.narrow) in found) == (
                    cfg.dot and sixteen and one_way)
                # (besides the default's twin, a crossed default's one-way split's)
                twins = {cfg._replace(narrow=False), tg.choose_backward_config(
                    batch, hidden, cuda, dtype, crossed=False)._replace(narrow=False)}
                assert all(c.narrow == (c.dot and sixteen and not c.stamped and
                                        c.k_blocks == 1)
                           for c in found[1:] if c not in twins), (dtype, batch, hidden, cfg)
        cpu = torch.device("cpu")
        cfg = tg.choose_config(16, 512, cpu, dtype)
        assert not any(c.narrow for c in tg._candidates(cfg, 16, 512, cpu, dtype, True))
    bf16 = torch.bfloat16
    found = tg._candidates(tg.choose_backward_config(16, 1024, cuda, bf16), 16, 1024, cuda,
                           bf16, False)
    # 16-bit up to H=1024: tl.dot on resident tiles too (mma.sync, no idle rows), 32
    # units only where they fit in shared memory (not at H=1024: 256 KiB)
    assert tg.Config(16, 16, 1024, dot=True, warps=8, resident=True, narrow=True) in found
    assert not any(c.dot and c.resident and c.slice == 32 for c in found)
    found = tg._candidates(tg.choose_backward_config(16, 512, cuda, bf16), 16, 512, cuda,
                           bf16, False)
    for units in (16, 32):
        assert tg.Config(16, units, 512, dot=True, warps=8, resident=True,
                         narrow=True) in found
    for dtype, hidden in [(torch.float32, 1024), (bf16, 2048), (bf16, 256)]:
        found = tg._candidates(tg.choose_config(16, hidden, cuda, dtype), 16, hidden, cuda,
                               dtype, True)
        assert not any(c.dot and c.resident and not c.stacked for c in found), (dtype, hidden)


def test_every_default_and_candidate_can_run(monkeypatch):
    """Every default split and every benchmark-mode candidate, forward and backward, on a
    132- and a 108-multiprocessor card, over batch and hidden sizes around issue 5's grid
    and every dtype, passes the launch's own checks (_check_split, _check_weights): a
    candidate made by changing one field of the default (chunked off, stamped, prefetch,
    narrow) must not keep a field only the default's other fields allowed. (A default
    chunked spread with a chunk shape once gave an unchunked candidate that kept its
    shape: benchmark mode would have raised on a GPU.) Each permutable default permuted
    too (Config.permuted: its unchunked and stamped twins not)."""
    cuda = torch.device("cuda")

    class Props:
        multi_processor_count = 132

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props)
    checked = 0
    for sms in (132, 108):
        Props.multi_processor_count = sms
        for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            acc = launch._acc(dtype)
            for batch in (1, 2, 4, 8, 12, 16, 17, 64, 128):
                for hidden in (64, 200, 256, 384, 512, 600, 1024, 2048):
                    defaults = [
                        (True, splits.choose_config(batch, hidden, cuda, dtype)),
                        (True, splits.choose_config(batch, hidden, cuda, dtype, True)),
                        (False, splits.choose_backward_config(batch, hidden, cuda, dtype))]
                    # (and where a default could be permuted, as it would be once timed)
                    defaults += [(forward, default._replace(permuted=True))
                                 for forward, default in defaults
                                 if splits._can_permute(default)]
                    for forward, default in defaults:
                        for cfg in tg._candidates(default, batch, hidden, cuda, dtype,
                                                  forward):
                            try:
                                launch._check_split(cfg, hidden, acc)
                                launch._check_weights(cfg, dtype)
                            except ValueError as e:
                                raise AssertionError((sms, dtype, batch, hidden, forward,
                                                      default)) from e
                            checked += 1
    assert checked > 5000


def test_chunked_candidates_rule(monkeypatch):
    """Benchmark mode times each resident broadcast default (and its stamped twin, where
    there is one) where K covers a warp's lanes both chunked and not (Config.chunked), at
    batch 9-16 above H=256 the spread split chunked, at 8 warps and up to H=512 at 4, and
    unchunked in fp32; in any dtype but fp64, never with tl.dot, K-major or the stacked
    tiles, nor 16 rows and 16 units at once (on smaller cards too). (The crossed
    backward's chunked splits, whose rules are their own, left out here:
    test_crossed_candidates_rule.)"""
    cuda = torch.device("cuda")

    class Props:
        multi_processor_count = 132

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props)
    monkeypatch.setattr(splits, "_crossed_splits", lambda hidden, dtype: [])
    f32, bf16 = torch.float32, torch.bfloat16
    for dtype in (f32, bf16, torch.float64):
        for batch, hidden in [(1, 16), (1, 256), (1, 1024), (4, 512), (8, 1024), (16, 256),
                              (16, 512), (16, 1024), (64, 512)]:
            for forward, cfg in ((True, tg.choose_config(batch, hidden, cuda, dtype)),
                                 (False, tg.choose_backward_config(batch, hidden, cuda,
                                                                   dtype))):
                found = tg._candidates(cfg, batch, hidden, cuda, dtype, forward)
                other = cfg._replace(chunked=not cfg.chunked, unit_lanes=1, thread_units=1)
                assert (other in found) == \
                    splits._can_chunk(cfg) == (cfg.resident and not (cfg.dot or cfg.kmajor) and
                                               hidden >= 32 and
                                               min(cfg.block_batch, cfg.slice) < 16)
                assert all(splits._can_chunk(c) for c in found if c.chunked)
    for dtype in (f32, bf16):
        for hidden, slice_, warps in [(512, 4, (4, 8)), (1024, 8, (8,))]:
            found = tg._candidates(tg.choose_backward_config(16, hidden, cuda, dtype), 16,
                                   hidden, cuda, dtype, False)
            assert {c.warps for c in found if c.chunked and c.block_batch == 16} == set(warps)
            for w in warps:
                assert tg.Config(16, slice_, hidden, dot=False, warps=w, resident=True,
                                 chunked=True) in found
            unchunked = tg.Config(16, slice_, hidden, dot=False, warps=warps[0],
                                  resident=True)
            assert (unchunked in found) == (dtype == f32)
            for forward in (True, False):  # (and in SPREAD_CHUNK_SHAPES's shapes)
                default = (tg.choose_backward_config(16, hidden, cuda, dtype, crossed=False)
                           if not forward else tg.choose_config(16, hidden, cuda, dtype, True))
                found = tg._candidates(default, 16, hidden, cuda, dtype, forward)
                shapes = {(c.warps, c.unit_lanes, c.thread_units) for c in found
                          if (c.unit_lanes, c.thread_units) != (1, 1) and c.block_batch == 16}
                assert shapes == set(candidates.SPREAD_CHUNK_SHAPES[(slice_, hidden, forward)])
                assert all(splits._can_chunk(c) and c.slice == slice_ for c in found
                           if c.chunked and c.block_batch == 16)
                # (and in fp32 8- and 4-row tiles of 2 and 4 times the units, in
                # ROW_TILE_SPREADS's shapes, each also permuted, and permuted with prefetch)
                halves = [c for c in found if c.block_batch != 16 and c.chunked]
                want = {tg.Config(rows, 16 // rows * slice_, hidden, dot=False, warps=w,
                                  resident=True, chunked=True, unit_lanes=u, thread_units=i,
                                  permuted=p, prefetch=f)
                        for rows, w, u, i in candidates.ROW_TILE_SPREADS.get(
                            (slice_, hidden, forward), ()) if dtype == f32
                        for p, f in ((False, False), (True, False), (True, True))}
                if default.block_batch != 16:  # (a default of row tiles (fp32 H=512's
                    # backward): its twins with prefetch and stamped, 2048 words, too)
                    want |= {default._replace(prefetch=True), default._replace(stamped=True)}
                assert set(halves) == want and len(halves) == len(want)
                assert all(splits._can_chunk(c) and (splits._can_permute(c) or c.stamped)
                           for c in halves)
    found = tg._candidates(tg.choose_config(1, 1024, cuda, f32), 1, 1024, cuda, f32, True)
    assert {(c.stamped, c.chunked) for c in found if c.slice == 8 and not c.dot} == {
        (True, True), (False, True), (True, False), (False, False)}
    f64 = torch.float64  # (no resident tiles in fp64: none chunked)
    for forward in (True, False):
        cfg = (tg.choose_config if forward else tg.choose_backward_config)(8, 1024, cuda, f64)
        assert not any(c.chunked for c in tg._candidates(cfg, 8, 1024, cuda, f64, forward))
    for sms in (16, 24, 46, 66):  # (smaller cards: 16 units a program and more)
        Props.multi_processor_count = sms
        for batch, hidden in [(16, 384), (16, 512), (16, 1024), (4, 512), (1, 1024),
                              (8, 512), (8, 1024)]:
            for forward in (True, False):
                cfg = (tg.choose_config if forward else tg.choose_backward_config)(
                    batch, hidden, cuda, f32)
                found = tg._candidates(cfg, batch, hidden, cuda, f32, forward)
                assert all(splits._can_chunk(c) and 3 * c.slice * c.block_k <= splits.RESIDENT_MAX
                           for c in found if c.chunked), (sms, batch, hidden)
                # (SPREAD_CHUNK_SHAPES's were counted at 132 SMs' units a program)
                assert not any(c.unit_lanes > 1 or c.thread_units > 1 for c in found
                               if c.slice != {h: s for s, h, _ in candidates.SPREAD_CHUNK_SHAPES}
                               .get(hidden))


def _spread_points(monkeypatch, sms=132):
    """(dtype, batch, hidden, forward, benchmark mode's candidates) on a card of ``sms``
    multiprocessors, at sizes in and around the spread split's (batch 9-16 above H=256),
    for the inference and training forwards and the backward."""
    cuda = torch.device("cuda")

    class Props:
        multi_processor_count = sms

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props)
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        for batch, hidden in [(1, 1024), (8, 1024), (16, 256), (16, 384), (16, 512),
                              (16, 1024), (12, 1000), (64, 512)]:
            for kind in ("forward", "training", "backward"):
                forward = kind != "backward"
                cfg = (tg.choose_config(batch, hidden, cuda, dtype, kind == "training")
                       if forward else tg.choose_backward_config(batch, hidden, cuda, dtype))
                yield dtype, batch, hidden, forward, tg._candidates(cfg, batch, hidden, cuda,
                                                                   dtype, forward)


def test_stamped_default_rule(monkeypatch):
    """STAMPED_MAX_WORDS (1024: B=1's blocks up to H=1024, measured on an H200; for a
    chunked split CHUNKED_STAMPED_MAX_WORDS, 512) makes the default resident forward
    splits stamped where their blocks hold at most that many words: on CUDA, not in fp64,
    never a split that streams W, never the backward."""
    cuda = torch.device("cuda")

    class Props:
        multi_processor_count = 132

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props)
    f32 = torch.float32
    assert splits.STAMPED_MAX_WORDS == 1024
    assert tg.choose_config(1, 256, cuda, f32) == tg.Config(1, 2, 256, dot=False,
                                                            resident=True, stamped=True)
    assert splits.CHUNKED_STAMPED_MAX_WORDS == 512
    assert all(tg.choose_config(1, h, cuda, d).stamped
               for h in (256, 512) for d in (f32, torch.bfloat16))
    assert not any(tg.choose_backward_config(1, h, cuda, f32).stamped for h in (256, 1024))
    assert tg.choose_config(2, 256, cuda, f32).stamped  # 2 × 256 words
    # chunked: B=1, H=1024 (1024 words) and B=2, H=512 (1024) on the barrier
    for batch, hidden in [(1, 1024), (2, 512)]:
        cfg = tg.choose_config(batch, hidden, cuda, f32)
        assert cfg.chunked and not cfg.stamped, (batch, hidden)
    monkeypatch.setattr(splits, "CHUNKED_STAMPED_MAX_WORDS", 1024)
    assert tg.choose_config(1, 1024, cuda, f32).stamped
    monkeypatch.setattr(splits, "CHUNKED_STAMPED_MAX_WORDS", 512)
    assert not tg.choose_config(2, 1024, cuda, f32).stamped  # 2 × 1024 words
    assert not tg.choose_config(16, 256, cuda, f32).stamped
    assert not tg.choose_config(1, 256, cuda, torch.float64).stamped
    assert not tg.choose_config(1, 256, torch.device("cpu"), f32).stamped
    assert not tg.choose_config(1, 2048, cuda, f32).stamped  # streams W
    monkeypatch.setattr(splits, "STAMPED_MAX_WORDS", 0)
    monkeypatch.setattr(splits, "CHUNKED_STAMPED_MAX_WORDS", 0)
    assert not any(tg.choose_config(b, h, cuda, f32).stamped
                   for b in (1, 2, 16) for h in (256, 512, 1024))


def test_stamped_twin_rule(monkeypatch):
    """Benchmark mode offers a resident default's stamped twin only where its block holds
    at most STAMPED_TWIN_MAX_WORDS (2048): larger blocks lost wherever timed (H200); a
    stamped default always gets its barrier twin."""
    cuda, f32 = torch.device("cuda"), torch.float32
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: type("P", (), {"multi_processor_count": 132}))
    assert splits.STAMPED_TWIN_MAX_WORDS == 2048

    def twins(batch, hidden, forward=True):  # (the backward's one-way default)
        default = (tg.choose_config(batch, hidden, cuda, f32) if forward else
                   tg.choose_backward_config(batch, hidden, cuda, f32, crossed=False))
        assert default.resident and not (default.stacked or default.kmajor), (batch, hidden)
        found = tg._candidates(default, batch, hidden, cuda, f32, forward)
        return default, {c.stamped for c in found if c.resident and not c.stacked}

    default, found = twins(1, 512)  # (512 words: a stamped default, its barrier twin)
    assert default.stamped and found == {True, False}
    for batch, hidden in [(2, 1024), (8, 256)]:  # (2048 words: untimed, offered)
        assert twins(batch, hidden)[1] == {True, False}, (batch, hidden)
        assert twins(batch, hidden, False)[1] == {True, False}, (batch, hidden)
    # (fp32 H=512's backward in 4-row tiles: 2048 words too)
    assert twins(16, 512, False)[1] == {True, False}
    for batch, hidden in [(4, 1024), (16, 512), (16, 1024)]:  # (4096-16384 words: lost)
        assert twins(batch, hidden)[1] == {False}, (batch, hidden)
        if (batch, hidden) != (16, 512):
            assert twins(batch, hidden, False)[1] == {False}, (batch, hidden)
    monkeypatch.setattr(splits, "STAMPED_TWIN_MAX_WORDS", 8192)
    assert twins(16, 512)[1] == {True, False}


@pytest.mark.skipif(DEVICE != "cuda", reason="GPU-sized: 128 programs at a barrier")
def test_backward_split_at_batch_16_on_gpu():
    """B=16, H=512, fp32: the default backward split (4 units per program) at 1e-5."""
    _compare(256, 16, 512, True, torch.float32)


@pytest.mark.skipif(DEVICE == "cuda", reason="the interpreter's limit")
def test_interpreter_refuses_several_programs():
    gi, h0, w, b, _ = _problem(2, 1, 8, torch.float32)
    with pytest.raises(ValueError, match="one program per batch tile"):
        tg.forward(gi.detach(), h0.detach(), w.detach(), b.detach(), torch.tensor([2]), True,
                   False, tg.Config(1, 4, 8, dot=False))


def test_inference_saves_nothing_and_matches(monkeypatch):
    """Without gradients nothing is saved, and no gate buffer is even allocated: the
    forward allocates its output and the exchange buffer only."""
    gi, h0, w, b, _ = _problem(5, 2, 8, torch.float32)
    with torch.no_grad():
        out = tg.core(gi, h0, w, b, None, True)
        shapes, empty = [], tg._empty
        monkeypatch.setattr(tg, "_empty", lambda *shape, **kw: shapes.append(shape) or
                            empty(*shape, **kw))
        again, saved = tg.forward(gi, h0, w, b, torch.full((2,), 5, device=DEVICE), True,
                                  False, tg.Config(2, 8, 8, dot=False, resident=True))
    assert saved == [] and shapes == [(5, 2, 8), (2, 2, 8)]
    assert torch.equal(again, out)
    assert_close("out", reference.core(gi, h0, w, b, None, True).detach(), out, 1e-5)


def _through_the_op(gi, h0, w, b, lengths, reset_after):
    """``core``'s call as torch.compile and the other special modes make it: the custom
    op, its output copied."""
    lengths, b = tg._lengths_and_bias(gi, w, b, lengths)
    return tg._gru_op(gi, h0, w, b, lengths, reset_after, True)[0].clone()


PATHS = {"eager": tg.core, "op": _through_the_op}


@pytest.mark.parametrize("path", PATHS)
def test_backward_makes_no_gradients_for_the_saved_gates(path):
    """The op's saved gates are outputs no gradient flows into: autograd makes no zero
    tensors for them (four of T·B·H in fp32 each backward, before: what the backward op
    makes inside is not seen here), and the gradients stay right; the eager call
    (``_Eager``) returns no gates."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Shapes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.made = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            made = func(*args, **(kwargs or {}))
            if func.overloadpacket in (torch.ops.aten.zeros, torch.ops.aten.zeros_like,
                                       torch.ops.aten.new_zeros):
                self.made.append(tuple(made.shape))
            return made

    steps, batch, hidden = 5, 3, 8
    gi, h0, w, b, _ = _problem(steps, batch, hidden, torch.float32)
    out = PATHS[path](gi, h0, w, b, None, True)
    dout = torch.randn_like(out)
    with Shapes() as mode:
        grads = torch.autograd.grad(out, (gi, h0, w, b), dout)
    # (the eager backward's own buffers are seen: dh (B, H) and the barrier's counter)
    assert (steps, batch, hidden) not in mode.made
    assert len(mode.made) == (2 if path == "eager" else 0)
    ref_in = [t.detach().double().requires_grad_() for t in (gi, h0, w, b)]
    want = torch.autograd.grad(reference.core(*ref_in, None, True), ref_in, dout.double())
    for name, r, g in zip(("dgi", "dh0", "dw_hh", "db_hh"), want, grads, strict=True):
        assert_close(name, r, g.double(), 2e-4, rtol=2e-4)


@pytest.mark.parametrize("path", PATHS)
def test_no_double_backward(path):
    gi, h0, w, b, _ = _problem(3, 2, 4, torch.float64)
    out = PATHS[path](gi, h0, w, b, None, True)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(out.sum(), gi, create_graph=True)
    out = PATHS[path](gi, h0, w, b, None, True)
    with pytest.raises(RuntimeError, match="'triton' has no batched backward"):
        torch.autograd.grad(out, gi, torch.ones(2, *out.shape, dtype=out.dtype),
                            is_grads_batched=True)


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
def test_eager_call_is_the_op_without_its_dispatch(reset_after, monkeypatch):
    """Outside the special modes a training call runs ``_Eager``, not the custom op: the
    same output and gradients, bit for bit, ragged lengths and no bias too; under a
    special mode (here a torch function mode, as torch.compile's tracing is one) the op."""
    from torch.overrides import TorchFunctionMode

    gi, h0, w, _, lengths = _problem(6, 3, 5, torch.float32, lengths=[6, 2, 4])
    lengths = lengths.to(DEVICE)
    dout = torch.randn(6, 3, 5, device=DEVICE)
    op, calls = tg._gru_op, []
    monkeypatch.setattr(tg, "_gru_op", lambda *a: (calls.append(1), op(*a))[1])
    results = {}
    for name, run in PATHS.items():
        out = run(gi, h0, w, None, lengths, reset_after)
        results[name] = (out, *torch.autograd.grad(out, (gi, h0, w), dout))
    assert calls == [1]  # (the op path's own call)
    for got, want in zip(results["eager"], results["op"], strict=True):
        assert torch.equal(got, want)
    class Through(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with Through():
        tg.core(gi, h0, w, None, lengths, reset_after)
    assert calls == [1, 1]


def test_custom_op_registration():
    """The fake (meta) implementation and the autograd registration agree with the real
    kernels (torch.library.opcheck)."""
    gi, h0, w, b, _ = _problem(3, 2, 4, torch.float32)
    lengths = torch.tensor([3, 2], device=DEVICE)
    for reset_after in (True, False):
        torch.library.opcheck(torch.ops.flashgru.triton_gru.default,
                              (gi, h0, w, b, lengths, reset_after, True))
    # the backward's op too, in 16 bits (its dgi in gi's dtype for reset_after=True)
    for dtype in (torch.float32, torch.bfloat16):
        gi, h0, w, b = (t.detach() for t in _problem(3, 2, 4, dtype)[:4])
        for reset_after in (True, False):
            out, *gates = torch.ops.flashgru.triton_gru(gi, h0, w, b, lengths, reset_after,
                                                        True)
            torch.library.opcheck(torch.ops.flashgru.triton_gru_backward.default,
                                  (torch.ones_like(out), h0, w, out, *gates, lengths,
                                   reset_after))


def test_module_on_triton_matches_torch():
    """flashgru.GRU(backend="triton"), two layers, bidirectional, packed: torch's numbers."""
    torch.manual_seed(0)
    ref = torch.nn.GRU(5, 7, 2, bidirectional=True, dtype=torch.float64, device=DEVICE)
    ours = flashgru.GRU.from_torch(ref, backend="triton")
    x = torch.randn(6, 3, 5, dtype=torch.float64, device=DEVICE)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, [6, 4, 2])
    (o_ref, h_ref), (o, h) = ref(packed), ours(packed)
    assert_close("output", o_ref.data, o.data, 1e-12)
    assert_close("h_n", h_ref, h, 1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("layers,batch_first,bias,given_hx",
                         [(1, False, True, False), (2, True, False, True)],
                         ids=["plain", "stacked-batch-first-nobias-hx"])
def test_module_calls_skip_the_op(dtype, layers, batch_first, bias, given_hx, monkeypatch):
    """A one-direction call goes from ``GRU._sequence`` straight to ``triton_gru.core``
    layer by layer (through ``core_projected``, the backend's projection and core, which
    doesn't overlap them here), and that to the kernels (inference) or ``_Eager``
    (training), never through the custom op nor the ordinary path: the same output, h_n
    and gradients, bit for bit, as ``functional.gru``."""
    torch.manual_seed(0)
    gru = flashgru.GRU(5, 7, layers, bias=bias, batch_first=batch_first, dtype=dtype,
                       device=DEVICE, backend="triton")
    x = torch.randn((3, 6, 5) if batch_first else (6, 3, 5), dtype=dtype, device=DEVICE,
                    requires_grad=True)
    hx = torch.randn(layers, 3, 7, dtype=dtype, device=DEVICE, requires_grad=True) \
        if given_hx else None
    lean, ordinary, ops = [], [], []
    core, prepare, op = tg.core, flashgru.GRU._prepare, tg._gru_op
    monkeypatch.setattr(tg, "core", lambda *a: (lean.append(1), core(*a))[1])
    monkeypatch.setattr(flashgru.GRU, "_prepare",
                        lambda self, *a: (ordinary.append(1), prepare(self, *a))[1])
    monkeypatch.setattr(tg, "_gru_op", lambda *a: (ops.append(1), op(*a))[1])
    with torch.no_grad():
        out, h_n = gru(x, hx)
    want = flashgru.functional.gru(
        x, torch.zeros(layers, 3, 7, dtype=dtype, device=DEVICE) if hx is None else hx,
        gru._flat_weights, has_biases=bias, num_layers=layers, batch_first=batch_first,
        backend="triton")
    assert torch.equal(out, want[0]) and torch.equal(h_n, want[1])
    inputs = [x, *([hx] if given_hx else []), *gru.parameters()]
    d_out, d_h = torch.randn_like(out), torch.randn_like(h_n)
    wanted = torch.autograd.grad(want, inputs, (d_out, d_h))
    lean.clear()
    out, h_n = gru(x, hx)  # gradients wanted
    assert len(lean) == layers and not ordinary and not ops
    assert torch.equal(out, want[0]) and torch.equal(h_n, want[1])
    for got, w in zip(torch.autograd.grad((out, h_n), inputs, (d_out, d_h)), wanted,
                      strict=True):
        assert torch.equal(got, w)


@pytest.mark.parametrize("case", list(_cases())[::23], ids=_ids)
def test_module_matches_torch_sample(case):
    """Every 23rd case of tests/test_parity_torch.py's float64 sweep (all of it on a GPU,
    where the backend joins the sweep)."""
    assert_pair_close(run_pair("triton", *case, torch.float64, device=DEVICE), 1e-12)


@pytest.mark.parametrize("form", FORMS)
def test_module_matches_torch_float32(form):
    (o_ref, h_ref, g_ref), (o, h, g) = run_pair("triton", 2, True, False, True, form, True,
                                                (9, 3, 5, 13), torch.float32, device=DEVICE)
    assert_close("output", o_ref, o, 1e-5)
    assert_close("h_n", h_ref, h, 1e-5)
    for name in g_ref:
        assert_close(name, g_ref[name], g[name], 1e-5, rtol=1e-5)


def test_compiles_fullgraph_as_one_op():
    """torch.compile(fullgraph=True) traces a model around flashgru.GRU(backend="triton"):
    the kernels are one torch.library op with a fake implementation. Dynamo refuses every
    nn.GRU (subclasses too) unless allow_rnn is set, as for torch.nn.GRU."""

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = flashgru.GRU(8, 16, backend="triton", device=DEVICE)
            self.head = torch.nn.Linear(16, 1, device=DEVICE)

        def forward(self, x):
            return self.head(self.gru(x)[0]).sum()

    torch.manual_seed(0)
    model = Model()
    x = torch.randn(5, 3, 8, device=DEVICE)
    with torch._dynamo.config.patch(allow_rnn=True):
        compiled = torch.compile(model, fullgraph=True)
        y = compiled(x)
        y.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    y_eager = model(x)
    y_eager.backward()
    assert_close("loss", y_eager.detach(), y.detach(), 1e-5)
    for (name, p), g in zip(model.named_parameters(), grads, strict=True):
        assert_close(name, p.grad, g, 1e-5, rtol=1e-5)


@pytest.mark.skipif(DEVICE != "cuda", reason="GPU-sized: 64-128 programs at a barrier")
@pytest.mark.parametrize("batch,split", [(128, "default"), (128, "broadcast-64x16x8"),
                                         (16, "default"), (16, "broadcast-16x16x64")])
def test_wide_problem_on_gpu(batch, split):
    """H=1024, T=512, fp32 at 1e-5: broadcast splits with BB, S ≥ 16 once measured a 5e-4
    error on an H100 (2026-11-26): Triton had rewritten the broadcast product into a TF32
    tl.dot. The default at B=16 is such a split."""
    cfg = None if split == "default" else tg.Config(*map(int, split.split("-")[1].split("x")),
                                                    dot=False)
    _compare(512, batch, 1024, True, torch.float32, cfg=cfg)


@pytest.mark.skipif(DEVICE != "cuda", reason="GPU-sized: the default splits, 16-132 programs")
@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("batch,hidden", [(1, 256), (2, 512), (1, 1024), (4, 256), (8, 128),
                                          (8, 1024), (9, 200), (16, 256), (12, 384),
                                          (16, 512), (16, 1024)], ids=str)
def test_default_splits_on_gpu(batch, hidden, dtype, reset_after):
    """The default splits (stamped at B=1-8 up to 1024 words a block, chunked from K=512,
    B=8's resident chunked tiles where a tile covering H would stream W, K-major at B=9-16
    H ≤ 256, above that fp32's chunked spread split and 16-bit's stacked ones, the
    backward's spread or stacked ones) through the core as a call gets them, ragged
    lengths, T=128: a training call, every gradient, and an inference call (its own
    split: 16-bit's stacked forward takes fewer units); fp32 at 2e-5."""
    steps = 128
    lengths = [steps - (37 * i) % steps for i in range(batch)]
    _compare(steps, batch, hidden, reset_after, dtype, lengths=lengths)
    gi, h0, w, b, lens = (t.detach() if isinstance(t, torch.Tensor) and t.requires_grad
                          else t for t in _problem(steps, batch, hidden, dtype, lengths))
    with torch.no_grad():
        got = tg.core(gi, h0, w, b, lens, reset_after)
    want = reference.core(gi.double(), h0.double(), w.double(), b.double(), lens, reset_after)
    assert_close("inference out", want, got.double(), TOL[dtype], rtol=TOL[dtype])


@pytest.mark.skipif(DEVICE != "cuda", reason="GPU-sized: 8-128 programs exchanging stamps")
@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("batch,split", [(1, (1, 2, 256)), (1, (1, 16, 256)),
                                         (16, (16, 2, 256)), (16, (4, 8, 256))])
def test_stamped_exchange_on_gpu(batch, split, reset_after):
    """The stamped exchange (no barrier: readers wait on each word's step) with many
    programs at once, T=512, fp32 at 1e-5, gradients included: a word read before its
    step was written, or torn, would show here."""
    cfg = tg.Config(*split, dot=False, resident=True, stamped=True)
    _compare(512, batch, 256, reset_after, torch.float32, cfg=cfg)


def test_kept_lengths_made_in_inference_mode(monkeypatch):
    """The every-step lengths first kept by a call in torch.inference_mode still serve a
    later training call, which saves them for its backward (an inference tensor could not
    be saved)."""
    monkeypatch.setattr(tg, "_KEEP_ALL_STEPS_ON", ("cuda", "cpu"))
    monkeypatch.setattr(tg, "_all_steps_kept", {})
    gru = flashgru.GRU(8, 8, backend="triton", device=DEVICE)
    x = torch.randn(5, 3, 8, device=DEVICE)
    with torch.inference_mode():
        want = gru(x)[0]
    (kept,) = tg._all_steps_kept.values()
    assert not kept.is_inference()
    xg = x.clone().requires_grad_()
    out = gru(xg)[0]
    out.sum().backward()
    assert torch.equal(out.detach(), want) and xg.grad is not None


@pytest.mark.skipif(DEVICE != "cuda", reason="GPU-sized: 16 programs exchanging stamps")
@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
def test_stamped_small_block_on_gpu(reset_after):
    """The stamped exchange where the block a program reads is smaller than its layout's
    span (B=3, H=16: 4×16 words over 4 warps, each word in two warps): every copy of a
    word must carry the step before it is used. Before _shared_block reloaded stale
    copies, some calls' outputs held NaN (an unstamped word) on an H200, about one test
    in twenty (tests/test_tf32x3.py's module calls at this size). Forward and backward
    200 times (the default splits here: 16 programs, stamped forward), each time the
    first call's bits."""
    gi, h0, w, b, _ = (t.detach() if isinstance(t, torch.Tensor) else t
                       for t in _problem(24, 3, 16, torch.float32))
    assert splits.choose_config(3, 16, gi.device, torch.float32, True).stamped
    gi.requires_grad_()

    def call():
        gi.grad = None
        out = tg.core(gi, h0, w, b, None, reset_after)
        out.square().sum().backward()
        return out.detach(), gi.grad

    first = call()
    want = reference.core(gi.detach().double(), h0.double(), w.double(), b.double(), None,
                          reset_after)
    assert_close("out", want, first[0].double(), 1e-5, rtol=1e-5)
    for _ in range(200):
        for a, b_ in zip(call(), first, strict=True):
            assert torch.equal(a, b_)


@pytest.mark.skipif(DEVICE != "cuda", reason="GPU-sized: 8-128 programs, wgmma")
@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("steps,batch,hidden,slices,dtype,stamped", [
    (512, 16, 256, (16, 8), torch.float32, False), (512, 16, 256, (8, 8), torch.float32, True),
    (512, 9, 128, (16, 16), torch.float32, False), (512, 16, 512, (8, None), torch.float32,
                                                     False),
    (256, 16, 512, (4, None), torch.float32, False),
    (64, 16, 1024, (16, 8), torch.bfloat16, False), (64, 16, 1024, (8, 8), torch.bfloat16,
                                                     True),
    (512, 1, 256, (16, 8), torch.float32, False)],
    ids=["f32-256", "f32-256-stamped", "f32-128", "f32-512-two-folds", "f32-512-four-folds",
         "bf16-1024", "bf16-1024-two-folds-stamped", "f32-256-one-row"])
def test_stacked_on_gpu(steps, batch, hidden, slices, dtype, stamped, reset_after):
    """The stacked splits on the tensor cores at their largest tiles, with one, two and
    four folds of K, the barrier or stamped words, forward (slices[0] units a program)
    and backward (slices[1]; None: its default split, where no stacked one fits), fp32
    at 2e-5 over 512 steps (three TF32 products a step), every gradient."""
    forward, backward = (
        None if s is None else tg.Config(16, s, hidden, dot=True, resident=True,
                                         stacked=True, stamped=stamped) for s in slices)
    _compare(steps, batch, hidden, reset_after, dtype, cfg=forward,
             backward_cfg=backward or tg.choose_backward_config(batch, hidden,
                                                                torch.device(DEVICE), dtype))


@pytest.mark.skipif(DEVICE != "cuda", reason="GPU-sized: every candidate split of a call")
@pytest.mark.parametrize("batch,hidden", [(1, 256), (16, 256), (16, 512)])
def test_benchmark_mode_on_gpu(benchmark_mode, monkeypatch, batch, hidden):
    """Benchmark mode timing every candidate (stamped, K-major, smaller row tiles, tl.dot)
    on the card, none left out, then the splits it keeps, forward and backward, at T=512,
    fp32 at 1e-5. (Without the stacked splits and the chunk shapes, each tested apart:
    scripts/gpu_tune.sh runs the grid in benchmark mode with or without them by these
    tests' outcome, so a fault in one of them can't cost the others.)"""
    monkeypatch.setattr(splits, "_stacked_splits", lambda *args: [])
    every = tg._candidates
    monkeypatch.setattr(tg, "_candidates", lambda *args: [
        c for c in every(*args) if (c.unit_lanes, c.thread_units) == (1, 1)])
    _compare(512, batch, hidden, True, torch.float32)
    assert {key[0] for key in tg._tuned} == {"forward", "backward"}
    assert {cfg: t for trial in tg.trials.values() for cfg, t in trial.items()
            if not isinstance(t, float)} == {}


@pytest.mark.skipif(DEVICE != "cuda", reason="GPU-sized: 64-128 programs")
@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("dtype,batch,hidden,split,warps,stamped", [
    (torch.float32, 16, 512, (16, 4, 512), 4, False),
    (torch.float32, 16, 512, (16, 4, 512), 8, False),
    (torch.float32, 16, 1024, (16, 8, 1024), 8, False),
    (torch.bfloat16, 16, 1024, (16, 8, 1024), 8, False),
    (torch.float32, 1, 1024, (1, 8, 1024), 4, True),
    (torch.float32, 12, 1020, (16, 8, 1024), 8, False),
    (torch.float32, 7, 1024, (8, 8, 1024), 8, False),
    (torch.float32, 100, 120, (16, 4, 128), 4, False)],
    ids=["f32-512-4w", "f32-512-8w", "f32-1024", "bf16-1024", "f32-1024-one-row-stamped",
         "f32-1020-12-rows", "f32-1024-7-rows", "f32-120-100-rows"])
def test_chunked_on_gpu(dtype, batch, hidden, split, warps, stamped, reset_after):
    """Config.chunked at the splits benchmark mode tries (the spread split at 4 and 8
    warps, B=1's stamped split, batch ≤ 8's resident split where the default streams W;
    rows past B and a last program half past H), and several batch tiles a launch over
    several launches (100 rows at H=120: 30 programs, 4 tiles a launch): T=512, ragged
    lengths, outputs and every gradient at the dtype's tolerance."""
    cfg = tg.Config(*split, dot=False, warps=warps, resident=True, stamped=stamped,
                    chunked=True)
    _compare(512, batch, hidden, reset_after, dtype, lengths=_ragged(batch, 512), cfg=cfg)


_SHAPES = sorted({(slice_, hidden, shape) for (slice_, hidden, _), shapes in
                  candidates.SPREAD_CHUNK_SHAPES.items() for shape in shapes})


@pytest.mark.skipif(DEVICE != "cuda", reason="GPU-sized: 64-128 programs")
@pytest.mark.parametrize("dtype,batch,reset_after,at", [
    *[(torch.float32, 16, True, i) for i in range(len(_SHAPES))],
    (torch.float32, 12, False, len(_SHAPES) - 1), (torch.bfloat16, 16, True, 0),
    (torch.float32, 16, False, 0)], ids=str)
def test_chunk_shapes_on_gpu(dtype, batch, reset_after, at):
    """Benchmark mode's chunked spread splits with Config.unit_lanes and thread_units
    (SPREAD_CHUNK_SHAPES: their sums across warps through shared memory, the backward's
    gates summed before the lanes meet), each forward and backward: T=512, ragged lengths,
    rows past B, outputs and every gradient at the dtype's tolerance."""
    slice_, hidden, (warps, lanes, inner) = _SHAPES[at]
    cfg = tg.Config(16, slice_, hidden, dot=False, warps=warps, resident=True, chunked=True,
                    unit_lanes=lanes, thread_units=inner)
    _compare(512, batch, hidden, reset_after, dtype, lengths=_ragged(batch, 512), cfg=cfg)


_CROSSED_GPU = [(dtype, 16, hidden, at, True) for dtype in (torch.float32, torch.bfloat16)
                for hidden in (512, 1024) for at in range(
                    len(splits._crossed_splits(hidden, dtype)))] + [
    (torch.float32, 12, 1000, 0, True), (torch.float32, 16, 300, 0, True),
    (torch.float32, 12, 1000, -1, True), (torch.bfloat16, 16, 300, -1, True),
    (torch.float32, 40, 512, 0, True), (torch.bfloat16, 32, 1024, -1, True),
    # (the paper's form: two exchanges a step)
    (torch.float32, 16, 512, 0, False), (torch.float32, 16, 1024, -2, False),
    (torch.bfloat16, 16, 1024, -2, False), (torch.float32, 40, 1000, -1, False)]


def _crossed_id(case) -> str:
    """A case's id: dtype, B, H, the split's kind and place, the formulation; "gate" on the
    first chunked and the first stacked split at each dtype and H=512 and 1024, B=16,
    torch's form (scripts/gpu_tune.sh's gate)."""
    dtype, batch, hidden, at, reset_after = case
    found = splits._crossed_splits(hidden, dtype)
    cfg = found[at]
    kind = "stacked" if cfg.stacked else "chunked"
    first = batch == 16 and hidden in (512, 1024) and reset_after and cfg == next(
        c for c in found if c.stacked == cfg.stacked)
    return (f"{'gate-' if first else ''}{str(dtype)[6:]}-B{batch}-H{hidden}-{kind}"
            f"{at % len(found)}-{'after' if reset_after else 'before'}")


@pytest.mark.skipif(DEVICE != "cuda", reason="GPU-sized: 48-128 programs at a barrier")
@pytest.mark.parametrize("dtype,batch,hidden,at,reset_after", _CROSSED_GPU,
                         ids=[_crossed_id(c) for c in _CROSSED_GPU])
def test_crossed_on_gpu(dtype, batch, hidden, at, reset_after):
    """Benchmark mode's crossed backward splits (splits._crossed_splits, Config.k_blocks;
    the chunked and the stacked), after the default training forward: T=512 in one launch
    (the barrier every step), ragged lengths, rows past B, H=1000 and 300 (the last
    K-block and column block partly past H), 40 rows in three launches of 128 programs
    and 32 in one of two tiles (64 programs each), and the paper's form at a few; every
    gradient at the dtype's tolerance. The
    "gate" cases, the first split of each kind at each dtype and H of B=16, run before
    the tune's grid: a wrong number is left out by benchmark mode's own check, but a
    hang or a fault would stop the grid, and the splits share all their code but the
    product."""
    cfg = splits._crossed_splits(hidden, dtype)[at]
    forward = tg.choose_config(batch, hidden, torch.device(DEVICE), dtype, True)
    _compare(512, batch, hidden, reset_after, dtype, lengths=_ragged(batch, 512),
             cfg=forward, backward_cfg=cfg)


@pytest.mark.skipif(DEVICE != "cuda", reason="GPU-sized: 32-128 programs")
@pytest.mark.parametrize("stamped", [False, True], ids=["barrier", "stamped"])
@pytest.mark.parametrize("batch,split", [(16, (16, 2, 256)), (16, (4, 8, 256)),
                                         (1, (1, 8, 1024))])
def test_kmajor_on_gpu(batch, split, stamped):
    """The K-major exchange and product (8 warps), forward and backward, at T=512, fp32 at
    1e-5."""
    cfg = tg.Config(*split, dot=False, warps=8, resident=True, stamped=stamped, kmajor=True)
    _compare(512, batch, split[2], True, torch.float32, cfg=cfg)


_SM90_PROBE = """
import itertools, json, re, sys
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from flashgru.backends import triton_gru as tg

types = {"lengths": "*i64", "sync": "*i32", "B": "i32", "H": "i32", "row0": "i32",
         "t_begin": "i32", "t_end": "i32", "pair_rows": "i32", "w_stride": "i32", "IN": "i32"}


def shared_words(ptx):
    # 32-bit words a thread reads from shared memory: ld.shared, its .v2 and .v4, or
    # ldmatrix .x1-.x4, whichever this Triton emits
    return sum({"v2": 2, "v4": 4, "x2": 2, "x4": 4}.get(width, 1) for width in
               re.findall("(?:ld[.]shared|ldmatrix[.]sync[.]aligned[.]m8n8)[.]([a-z0-9]+)",
                          ptx))


def signature(kernel, consts):
    # the kernel's signature: consts as constexprs (its flags left out: off), the rest as
    # types says, else fp32 pointers
    for flag in ("KMAJOR", "STACKED", "PREFETCH", "NARROW", "CHUNKED", "PERMUTED", "PAIR",
                 "PROJECT", "PERMUTED_X"):
        if flag in kernel.arg_names:
            consts.setdefault(flag, False)
    if "BKI" in kernel.arg_names:
        consts.setdefault("BKI", 1)
    if "CHUNK" in kernel.arg_names:  # (chunks of a warp's lanes: Config.unit_lanes 1)
        consts.setdefault("CHUNK", 32)
        consts.setdefault("KW", 1)
        consts.setdefault("SI", 1)
    return {a: "constexpr" if a in consts else types.get(a, "*fp32") for a in kernel.arg_names}


found = {}  # with resident W tiles too: the broadcast product must not become a dot either
spins = {}  # the stamped exchange: each wait re-reads its words (volatile loads in a loop)
for name, kernel in (("forward", tg._forward_kernel), ("backward", tg._backward_kernel)):
    for dot, reset_after, resident, stamped in itertools.product((False, True), repeat=4):
        if stamped and (dot or not resident):
            continue
        consts = dict(BB=16, S=16, BK=64, RESET_AFTER=reset_after, DOT=dot, PREC="tf32x3",
                      ACC=tl.float32, RESIDENT=resident, STAMPED=stamped)
        if "SAVE" in kernel.arg_names:
            consts["SAVE"] = True
        consts["STACKED"] = consts["PREFETCH"] = False
        consts["KMAJOR"] = False
        sig = signature(kernel, consts)
        if stamped:
            sig.update({a: "*i64" for a in ("hbuf", "rhbuf", "xbuf") if a in sig})
        compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts),
                                  target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        key = f"{'stamped-' * stamped}{'resident-' * resident}{name}-{dot}-{reset_after}"
        found[key] = "tt.dot" in compiled.asm["ttgir"]
        spins[key] = compiled.asm["ptx"].count("ld.volatile.global.b64")
# the input projection inside the forward (PROJECT): its broadcast products no dot either
project = {}
for split in ("resident", "kmajor", "chunked"):
    consts = dict(BB=16, S=4 if split == "chunked" else 16, BK=64, RESET_AFTER=True,
                  DOT=False, PREC="tf32x3", ACC=tl.float32, RESIDENT=True, STAMPED=False,
                  SAVE=True, PROJECT=True, BKI=64, KMAJOR=split == "kmajor",
                  CHUNKED=split == "chunked")
    sig = signature(tg._forward_kernel, consts)
    compiled = triton.compile(ASTSource(fn=tg._forward_kernel, signature=sig,
                                        constexprs=consts),
                              target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    project[split] = "tt.dot" in compiled.asm["ttgir"]
# shared memory of the largest default splits (tl.dot, 64 rows x 64 units), and of the
# dense scan's chunk composition at H = 64 (its limit) and 128 (over an H100's 227 KiB)
shared = {}
for name, kernel in (("forward", tg._forward_kernel), ("backward", tg._backward_kernel)):
    for dtype in ("fp32", "bf16"):
        consts = dict(BB=64, S=64, BK=64, RESET_AFTER=True, DOT=True, PREC="tf32x3",
                      ACC=tl.float32)
        consts["RESIDENT"] = consts["STAMPED"] = False
        if "SAVE" in kernel.arg_names:
            consts["SAVE"] = True
        consts["STACKED"] = consts["PREFETCH"] = False
        consts["KMAJOR"] = False
        sig = signature(kernel, consts)
        for a in ("gi", "dout", "out", "w", "wt"):
            if a in sig and dtype == "bf16":
                sig[a] = "*bf16"
        compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts),
                                  target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        shared[f"{name}-{dtype}"] = compiled.metadata.shared
from flashgru import scan
for bh in (64, 128):
    consts = dict(REVERSE=False, TRANSPOSE=False, BH=bh)
    sig = {a: "constexpr" if a in consts else ("i32" if a in ("T", "B", "H", "CHUNK")
           else "*fp32") for a in scan._dense_summary_kernel.arg_names}
    compiled = triton.compile(ASTSource(fn=scan._dense_summary_kernel, signature=sig,
                                        constexprs=consts), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": 4 if bh <= 64 else 8})
    shared[f"dense-summary-{bh}"] = compiled.metadata.shared
for name, kernel in (("forward", tg._forward_kernel), ("backward", tg._backward_kernel)):
    for reset_after in (False, True):  # the K-major product must not become a dot either
        consts = dict(BB=16, S=16, BK=64, RESET_AFTER=reset_after, DOT=False, PREC="tf32x3",
                      ACC=tl.float32, RESIDENT=True, STAMPED=False, KMAJOR=True)
        if "SAVE" in kernel.arg_names:
            consts["SAVE"] = True
        consts["STACKED"] = consts["PREFETCH"] = False
        sig = signature(kernel, consts)
        compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts),
                                  target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        found[f"kmajor-{name}-{reset_after}"] = "tt.dot" in compiled.asm["ttgir"]
        consts.update(KMAJOR=False, CHUNKED=True, S=8)  # nor the chunked product (< 16
        # units: _can_chunk)
        compiled = triton.compile(ASTSource(fn=kernel, signature=signature(kernel, consts),
                                            constexprs=consts),
                                  target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        found[f"chunked-{name}-{reset_after}"] = "tt.dot" in compiled.asm["ttgir"]
# Config.chunked at a GPU's size (16 rows, 8 units, H=1024, 8 warps): the shuffles in the
# time loop (PTX), chunked or not
shuffles = {}
for name, kernel in (("forward", tg._forward_kernel), ("backward", tg._backward_kernel)):
    for chunked in (False, True):
        consts = dict(BB=16, S=8, BK=1024, RESET_AFTER=True, DOT=False, PREC="tf32x3",
                      ACC=tl.float32, RESIDENT=True, STAMPED=False, CHUNKED=chunked)
        if name == "forward":
            consts["SAVE"] = False
        compiled = triton.compile(ASTSource(fn=kernel, signature=signature(kernel, consts),
                                            constexprs=consts),
                                  target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
        shuffles[f"{name}-{chunked}"] = compiled.asm["ptx"].count("shfl.sync")
# the backward's chunked product with 2 units a thread and 4 lanes along them
# (Config.thread_units, unit_lanes: chunks of 8 over 8 warps): the words it reads from
# shared memory and its shuffles beside the plain chunked one's
reads = {}
for shape in ((32, 1, 1), (8, 8, 2)):
    consts = dict(BB=16, S=8, BK=1024, RESET_AFTER=True, DOT=False, PREC="tf32x3",
                  ACC=tl.float32, RESIDENT=True, STAMPED=False, CHUNKED=True,
                  CHUNK=shape[0], KW=shape[1], SI=shape[2])
    kernel = tg._backward_kernel
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature(kernel, consts),
                                        constexprs=consts),
                              target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
    reads[str(shape[2])] = {"words": shared_words(compiled.asm["ptx"]),
                            "shuffles": compiled.asm["ptx"].count("shfl.sync")}
# the chunked splits with 2 units a thread and 4 lanes along them (fp32 B=16 H=1024's
# default shape), their exchange row-major or permuted (Config.permuted): the words each
# reads from shared memory and its barriers
permuted = {}
for name, kernel in (("forward", tg._forward_kernel), ("backward", tg._backward_kernel)):
    for on in (False, True):
        consts = dict(BB=16, S=8, BK=1024, RESET_AFTER=True, DOT=False, PREC="tf32x3",
                      ACC=tl.float32, RESIDENT=True, STAMPED=False, CHUNKED=True, CHUNK=8,
                      KW=8, SI=2, PERMUTED=on)
        if name == "forward":
            consts["SAVE"] = True
        sig = signature(kernel, consts)
        # (every pointer 16-byte aligned, as torch's tensors are: the loads' vectors)
        aligned = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(kernel.arg_names)
                   if sig[a].startswith("*")}
        compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts,
                                            attrs=aligned),
                                  target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
        permuted[f"{name}-{on}"] = {"words": shared_words(compiled.asm["ptx"]),
                                    "barriers": compiled.asm["ptx"].count("bar.sync")}
# the stacked split: its tiles loaded once into shared memory, multiplied there by wgmma
# (the forward's largest tiles; the backward's at one and two folds)
stacked = {}
for name, kernel, dtype, bk, s in (
        ("forward", tg._forward_kernel, "fp32", 256, 16),
        ("forward", tg._forward_kernel, "bf16", 1024, 16),
        ("backward", tg._backward_kernel, "fp32", 128, 16),
        ("backward", tg._backward_kernel, "bf16", 1024, 8)):
    for reset_after in (False, True):
        consts = dict(BB=16, S=s, BK=bk, RESET_AFTER=reset_after, DOT=True, PREC="tf32x3",
                      ACC=tl.float32, RESIDENT=True, STAMPED=False, KMAJOR=False,
                      STACKED=True, PREFETCH=False)
        if name == "forward":
            consts["SAVE"] = False
        sig = signature(kernel, consts)
        sig["w" if name == "forward" else "wt"] = "*" + dtype
        compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts),
                                  target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        ttgir = compiled.asm["ttgir"]
        loop = ttgir[ttgir.index("scf.for"):]
        stacked[f"{name}-{dtype}-{reset_after}"] = {
            "wgmma": loop.count("ttng.warp_group_dot "), "loads": loop.count("ttg.local_load"),
            "shared": compiled.metadata.shared, "hidden": bk, "slice": s}
# Config.prefetch: the loads in the time loop, with and without (moved, none added); the
# constants of kernels compiled above, so that only those with PREFETCH compile anew
prefetch = {}
for name, kernel in (("forward", tg._forward_kernel), ("backward", tg._backward_kernel)):
    for split, reset_after, ahead in itertools.product(("resident", "stacked"),
                                                       (False, True), (False, True)):
        tile = split == "stacked"
        consts = dict(BB=16, S=16, BK=(256 if name == "forward" else 128) if tile else 64,
                      RESET_AFTER=reset_after, DOT=tile, PREC="tf32x3", ACC=tl.float32,
                      RESIDENT=True, STAMPED=False, KMAJOR=False, STACKED=tile,
                      PREFETCH=ahead)
        if name == "forward":
            consts["SAVE"] = not tile
        sig = signature(kernel, consts)
        compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts),
                                  target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        ttgir = compiled.asm["ttgir"]
        prefetch[f"{name}-{split}-{reset_after}-{ahead}"] = ttgir[
            ttgir.index("scf.for"):].count("tt.load ")
print(json.dumps({"dots": found, "shared": shared, "spins": spins, "stacked": stacked,
                  "prefetch": prefetch, "shuffles": shuffles, "reads": reads,
                  "permuted": permuted, "project": project}))
"""


@pytest.fixture(scope="module")
def sm90():
    """The kernels compiled for an H100 (sm_90) offline (no GPU needed; in a fresh process,
    as the interpreter replaces the compiler in this one): whether each contains a tl.dot,
    for a 16-row tile of 16 hidden units in fp32, and the shared memory some launches
    need."""
    import json
    code, out, err = background_output("sm90", timeout=300)
    assert code == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


# (started beside the tests before it: conftest.py)
background("sm90", [sys.executable, "-c", _SM90_PROBE],
           env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"})


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("kernel,dtype", [("forward", "fp32"), ("forward", "bf16"),
                                          ("backward", "fp32"), ("backward", "bf16")])
def test_stacked_tile_stays_in_shared_memory(sm90, kernel, dtype, reset_after):
    """Config.stacked rests on what Triton makes of a dot operand loaded before the loop
    and touched by no arithmetic: one shared-memory copy, which wgmma reads at every step
    (three products a step in fp32, on TF32 parts, one in bf16; twice that for
    reset_after=False), with nothing loaded back into registers in the loop; and on
    _stacked_bytes, which benchmark mode's candidates are sized by: it must be the
    compiled kernel's shared memory (here the forward's largest tiles, fp32 H=256 and
    bf16 H=1024, and the backward's at one and two folds)."""
    got = sm90["stacked"][f"{kernel}-{dtype}-{reset_after}"]
    assert got["wgmma"] == (1 if dtype == "bf16" else 3) * (1 if reset_after else 2)
    assert got["loads"] == 0
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    assert got["shared"] == splits._stacked_bytes(got["hidden"], got["slice"], torch_dtype,
                                                  kernel == "forward")
    assert got["shared"] <= splits.STACKED_MAX_BYTES


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("kernel", ["forward", "backward"])
def test_broadcast_product_is_not_compiled_into_a_tf32_dot(sm90, kernel, reset_after):
    """Triton's combine pass rewrites sum(x[:, :, None] * w[None, :, :], 1) into a TF32
    tl.dot once both tile sides are ≥ 16: on an H100 that gave a 5.8e-4 fp32 error, which
    the interpreter never shows. The broadcast splits must compile without any dot; the
    tl.dot splits with one (so this check can fail)."""
    assert not sm90["dots"][f"{kernel}-False-{reset_after}"]
    assert not sm90["dots"][f"resident-{kernel}-False-{reset_after}"]
    assert not sm90["dots"][f"stamped-resident-{kernel}-False-{reset_after}"]
    assert not sm90["dots"][f"kmajor-{kernel}-{reset_after}"]
    assert not sm90["dots"][f"chunked-{kernel}-{reset_after}"]
    assert sm90["dots"][f"resident-{kernel}-True-{reset_after}"]
    assert sm90["dots"][f"{kernel}-True-{reset_after}"]


def test_projection_is_not_compiled_into_a_tf32_dot(sm90):
    """The input projection inside the forward kernel (PROJECT) multiplies by the same
    broadcast products as the hidden one: none may become a TF32 tl.dot (resident, K-major
    and chunked tiles; test_broadcast_product_is_not_compiled_into_a_tf32_dot shows the
    check finds a dot where there is one)."""
    assert sm90["project"] == {"resident": False, "kmajor": False, "chunked": False}


@pytest.mark.parametrize("kernel", ["forward", "backward"])
def test_chunked_product_sums_within_threads(sm90, kernel):
    """Config.chunked rests on the layout Triton picks for its product: each thread sums
    its own chunks of K, the lanes meet once per row and unit. At B=16, H=1024 (8 units, 8
    warps) the plain broadcast product's sum is shuffles between lanes; chunked, a
    fraction of them remains (nvdisasm: 240 a step against ~1960)."""
    plain, chunked = (sm90["shuffles"][f"{kernel}-{c}"] for c in (False, True))
    assert 0 < 4 * chunked < plain, (plain, chunked)


def test_thread_units_halve_the_backwards_reads(sm90):
    """Config.thread_units rests on the layout Triton picks for the 5-axis product: each
    thread's two units share the operand values it reads, so the backward at B=16, H=1024
    (8 units, 8 warps) reads half as much from shared memory (ldmatrix: nvdisasm counted
    193 a step against 384, each 4 words a thread), and with the gates summed before the
    lanes meet, shuffles less (108 against 240)."""
    plain, two = sm90["reads"]["1"], sm90["reads"]["2"]
    assert 0 < 2 * two["words"] <= 1.1 * plain["words"], (plain, two)
    assert 0 < two["shuffles"] < plain["shuffles"], (plain, two)


@pytest.mark.parametrize("kernel", ["forward", "backward"])
def test_permuted_exchange_reads_no_shared_memory(sm90, kernel):
    """Config.permuted rests on the layout Triton gives its load (LEADING_LANES: this
    Triton's order): the product's own, so the exchanged operand is not converted through
    shared memory, row by row with two barriers each, as the row-major block is (fp32,
    B=16, H=1024, u4x2, 8 warps; PTX, whole kernels: what is left is the sums across warps
    and, before the loop, W's tiles. Words a thread reads, Triton 3.9: forward 272 → 16,
    backward 774 → 6; 3.6: 368 → 113, 870 → 105; the load's axes in the other order, as
    many as row-major)."""
    plain, permuted = (sm90["permuted"][f"{kernel}-{on}"] for on in (False, True))
    assert 2 * permuted["words"] < plain["words"], (plain, permuted)
    assert 2 * permuted["barriers"] < plain["barriers"], (plain, permuted)


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("kernel", ["forward", "backward"])
def test_stamped_waits_reread_memory(sm90, kernel, reset_after):
    """A stamped wait must read its words again on every pass, from memory (volatile):
    a load the compiler hoisted out of the loop would spin forever on a GPU, which the
    interpreter (one program per tile, its own words already written) never shows. Every
    wait has its first read and the loop's; the barrier's kernels have none."""
    waits = (1 + (not reset_after)) if kernel == "forward" else 3
    assert sm90["spins"][f"stamped-resident-{kernel}-False-{reset_after}"] >= 2 * waits
    assert sm90["spins"][f"resident-{kernel}-False-{reset_after}"] == 0


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("split", ["resident", "stacked"])
@pytest.mark.parametrize("kernel", ["forward", "backward"])
def test_prefetch_compiles_and_adds_no_load(sm90, kernel, split, reset_after):
    """Config.prefetch compiles for sm_90 (a name defined under a constexpr branch before
    the loop, which the interpreter doesn't check) and moves a step's loads a step ahead
    without adding any to the loop."""
    with_, without = (sm90["prefetch"][f"{kernel}-{split}-{reset_after}-{ahead}"]
                      for ahead in (True, False))
    assert with_ == without > 0


H100_SHARED = 232448  # bytes of shared memory one program may use on an H100


def test_largest_splits_fit_in_shared_memory(sm90):
    """The largest default launch splits fit an H100's shared memory (a launch over it
    fails only on the GPU); the dense scan's chunk composition fits at its limit
    DENSE_TRITON_MAX_H = 64 and not at 128, which failed on an H100."""
    from flashgru import scan
    shared = sm90["shared"]
    for key in ("forward-fp32", "forward-bf16", "backward-fp32", "backward-bf16"):
        assert shared[key] <= H100_SHARED, (key, shared[key])
    assert scan.DENSE_TRITON_MAX_H == 64
    assert shared["dense-summary-64"] <= H100_SHARED < shared["dense-summary-128"]


def _bidirectional_run(batch, steps, hidden, dtype, reset_after, packed, pair, monkeypatch,
                       layers=2):
    """A bidirectional GRU on backend "triton": outputs, h_n and every gradient, with the
    directions in one launch (``pair``) or in turn (core_pair's fallback forced), and the
    launches' row counts."""
    with monkeypatch.context() as m:
        if not pair:
            m.setattr(tg, "_pair_rows", lambda *a: None)
        launched = []
        real_launch = tg._launch

        def spy(kernel, cfg, batch_, hidden_, steps_, args, **consts):
            launched.append((kernel is tg._forward_kernel, batch_, consts.get("PAIR", False)))
            real_launch(kernel, cfg, batch_, hidden_, steps_, args, **consts)

        m.setattr(tg, "_launch", spy)
        return _bidirectional_results(batch, steps, hidden, dtype, reset_after, packed,
                                      layers), launched


def _bidirectional_results(batch, steps, hidden, dtype, reset_after, packed, layers):
    """``packed``: True (a packed sequence), False, or "batch_first" (batch-major input,
    whose transposed input projection sums its bias's gradient over a strided view)."""
    torch.manual_seed(0)
    first = packed == "batch_first"
    module = flashgru.GRU(5, hidden, layers, bidirectional=True, reset_after=reset_after,
                          batch_first=first, backend="triton").to(DEVICE, dtype)
    x = torch.randn(*((batch, steps) if first else (steps, batch)), 5, device=DEVICE,
                    dtype=dtype, requires_grad=True)
    h0 = torch.randn(2 * layers, batch, hidden, device=DEVICE, dtype=dtype,
                     requires_grad=True)
    lengths = torch.tensor(_ragged(batch, steps))
    if packed is True:
        seq = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, h_n = module(seq, h0)
        out = out.data
    else:
        out, h_n = module(x, h0)
    (out.square().sum() + h_n.sum()).backward()
    grads = [x.grad, h0.grad, *(p.grad for p in module.parameters())]
    with torch.no_grad():  # (and the inference path)
        inferred = module(x, h0)
    return [out, h_n, *grads, *inferred]


# (batch, packed, hidden): on a GPU where the directions fit on the card together (batch
# above 16 at H=256: 16 programs a direction; batch 1 at H=64: 64)
PAIR_CASES = [(3, False, 6), (5, True, 6), (1, False, 6), (8, "batch_first", 6)] \
    if DEVICE != "cuda" else [(32, False, 256), (20, True, 256), (1, False, 64),
                              (32, "batch_first", 256)]


@pytest.mark.parametrize("case,dtype,reset_after", [
    (0, torch.float32, True), (0, torch.float32, False), (1, torch.float32, True),
    (1, torch.float32, False), (2, torch.float32, True), (3, torch.float32, True),
    (0, torch.float64, True), (1, torch.float64, False), (0, torch.float16, True)],
    ids=["padded-f32-after", "padded-f32-before", "packed-f32-after", "packed-f32-before",
         "one-row-f32-after", "batch-first-f32-after", "padded-f64-after",
         "packed-f64-before", "padded-f16-after"])
def test_pair_runs_both_directions_in_one_launch(case, dtype, reset_after, monkeypatch):
    """core_pair: a bidirectional layer's two directions in one launch per kernel, their
    rows side by side, each padded to whole tiles (here 3 rows to 4, 5 to 8; on a GPU 20 to
    32), each tile on its direction's weights: outputs, h_n, every gradient and the
    inference forward bit for bit those of the directions in turn (a row's sums run as
    they would alone), packed, padded and batch-first, with h0, both formulations, two
    layers; each launch twice a direction's rows (where the rule takes the pair: on a GPU
    not fp64's splits at batch 20-32)."""
    batch, packed, hidden = PAIR_CASES[case]
    steps = 512 if DEVICE == "cuda" else 5
    got, launched = _bidirectional_run(batch, steps, hidden, dtype, reset_after, packed,
                                       True, monkeypatch)
    want, alone = _bidirectional_run(batch, steps, hidden, dtype, reset_after, packed,
                                     False, monkeypatch)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    rows = tg._pair_tiles(batch, hidden, torch.device(DEVICE), dtype, dtype)
    # (two layers: a forward, an inference forward and a backward each, in one launch)
    assert DEVICE == "cuda" or rows is not None
    assert sorted(launched) == (sorted([(True, 2 * rows, True)] * 4 +
                                       [(False, 2 * rows, True)] * 2) if rows else sorted(alone))
    assert sorted(alone) == sorted([(True, batch, False)] * 8 + [(False, batch, False)] * 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_pair_backward_with_dgh_n_block_alone(dtype, monkeypatch):
    """core_pair's backward where dgh holds its n block alone (the default backward made
    stamped, which exchanges elsewhere): outputs, h_n and every gradient bit for bit
    those of the directions in turn, each direction's dW_hh from its own rows of dgi and
    dgh's n block."""
    real = splits.choose_backward_config
    monkeypatch.setattr(splits, "choose_backward_config",
                        lambda *a, **k: real(*a, **k)._replace(stamped=True))
    blocks = []
    real_launch = tg._launch

    def spy(kernel, cfg, batch, hidden, steps, args, **consts):
        if "dgh" in kernel.arg_names:
            blocks.append((consts.get("PAIR", False), consts["DGH_N"]))
        real_launch(kernel, cfg, batch, hidden, steps, args, **consts)

    monkeypatch.setattr(tg, "_launch", spy)
    batch, packed, hidden = PAIR_CASES[0]
    got, _ = _bidirectional_run(batch, 5, hidden, dtype, True, packed, True, monkeypatch)
    want, _ = _bidirectional_run(batch, 5, hidden, dtype, True, packed, False, monkeypatch)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    # (two layers: a pair's backward each, then the four directions' in turn)
    assert blocks == [(True, True)] * 2 + [(False, True)] * 4


def test_pair_rule(monkeypatch):
    """core_pair runs both directions in one launch only where each direction's default
    splits (the training and inference forwards' and the backward's) fill at most half the
    card (132 SMs here), its rows rounded up to whole tiles of them; and not in benchmark
    mode, a special mode, or for tensors core would refuse or convert otherwise."""
    cuda = torch.device("cuda")

    class Props:
        multi_processor_count = 132

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props)
    f32, bf16 = torch.float32, torch.bfloat16

    def rows(batch, hidden, dtype=f32):
        return tg._pair_tiles(batch, hidden, cuda, dtype, dtype)

    assert rows(32, 256) == 32  # (tl.dot, 16 units a program: 16 programs a direction)
    assert rows(100, 256) == 128  # (tiles of 64 rows: 2 × 2 × 16 programs)
    assert rows(128, 512) == 128  # (2 × 2 × 32 = 128 programs)
    assert rows(128, 1024) is None  # (2 × 2 × 64: more than the card)
    assert rows(16, 512) is None  # (the spread split: a program per multiprocessor)
    assert rows(1, 256) is None
    assert rows(1, 64) == 1  # (64 programs of one unit a direction)
    assert rows(3, 32, bf16) == 4
    # (the tensors' own checks: here, on the interpreter's CPU tensors)
    gi, h0 = torch.zeros(4, 3, 18), torch.zeros(3, 6)
    w, b = torch.zeros(18, 6), torch.zeros(18)
    assert tg._pair_rows((gi, gi), (h0, h0), (w, w), (b, b)) == 4
    assert tg._pair_rows((gi, gi), (h0, h0), (w, w.double()), (b, b)) is None
    assert tg._pair_rows((gi, gi), (h0, h0), (w, w), (b, None)) is None
    assert tg._pair_rows((gi, gi), (h0, h0), (w, w), (b, b.half())) is None
    assert tg._pair_rows((gi, gi.double()), (h0, h0), (w, w), (b, b)) is None
    assert tg._pair_rows((gi[:, :0], gi[:, :0]), (h0[:0], h0[:0]), (w, w), (b, b)) is None
    monkeypatch.setattr(tg, "benchmark", True)
    assert tg._pair_rows((gi, gi), (h0, h0), (w, w), (b, b)) is None


def test_pair_leaves_a_direction_without_gradient_alone(monkeypatch):
    """core_pair as core for each direction where only one direction's outputs enter the
    loss (the same gradients, None where core's are None), and where only one direction
    trains (its weights alone require grad: the directions in turn, each with core's own
    split)."""
    def run(pair, frozen):
        with monkeypatch.context() as m:
            if not pair:
                m.setattr(tg, "_pair_rows", lambda *a: None)
            torch.manual_seed(0)
            module = flashgru.GRU(5, 6, bidirectional=True, backend="triton").to(DEVICE)
            x = torch.randn(4, 3, 5, device=DEVICE)
            if frozen:
                for name, p in module.named_parameters():
                    p.requires_grad_(not name.endswith("_reverse"))
            out, _ = module(x)
            out[..., :6].sum().backward()  # (the forward direction's outputs alone)
            return {name: p.grad for name, p in module.named_parameters()}

    for frozen in (False, True):
        got, want = run(True, frozen), run(False, frozen)
        assert got.keys() == want.keys()
        for name in got:
            assert (got[name] is None) == (want[name] is None), name
            assert got[name] is None or torch.equal(got[name], want[name]), name


@pytest.mark.skipif(DEVICE != "cuda", reason="needs CUDA graphs: a CUDA GPU")
@pytest.mark.parametrize("train", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_cuda_graph_on_gpu(dtype, train):
    """A module call captured in a CUDA graph (as torch.compile's mode="reduce-overhead"
    and RL loops do) and replayed on new inputs gives the eager call's output, h_n and,
    training, every gradient, bit for bit: each replay zeroes the barrier's counters
    again (a memset captured with the launch), and the cooperative launch is captured
    (stream capture of CU_LAUNCH_ATTRIBUTE_COOPERATIVE). (Last in the file, so that a
    GPU run's other tests come first should a capture go wrong.)"""
    torch.manual_seed(0)
    module = flashgru.GRU(256, 256, backend="triton", device="cuda", dtype=dtype)
    static_x = torch.randn(64, 4, 256, device="cuda", dtype=dtype, requires_grad=train)

    def call():
        out, h = module(static_x)
        if train:
            (out.float().sum() + h.float().sum()).backward()
        return out, h

    side = torch.cuda.Stream()  # (warm-up off the capturing stream, as torch asks)
    side.wait_stream(torch.cuda.current_stream())
    with torch.set_grad_enabled(train), torch.cuda.stream(side):
        for _ in range(2):
            module.zero_grad(set_to_none=True)
            static_x.grad = None
            call()
    torch.cuda.current_stream().wait_stream(side)
    module.zero_grad(set_to_none=True)
    static_x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.set_grad_enabled(train), torch.cuda.graph(graph):
        static = call()
    grads = [static_x.grad, *(p.grad for p in module.parameters())] if train else []
    for seed in (1, 2):
        x = torch.randn(static_x.shape, generator=torch.Generator().manual_seed(seed)).to(
            device="cuda", dtype=dtype)
        with torch.no_grad():
            static_x.copy_(x)
        graph.replay()
        replayed = [t.clone() for t in (*static, *grads)]
        xe = x.detach().requires_grad_(train)  # (eager, its gradients apart from .grad)
        with torch.set_grad_enabled(train):
            want = list(module(xe))
            if train:
                want += torch.autograd.grad(want[0].float().sum() + want[1].float().sum(),
                                            [xe, *module.parameters()])
        for a, b in zip(replayed, want, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("batch,hidden", [(1, 256), (16, 512), (16, 1024)] if DEVICE == "cuda"
                         else [(3, 16)], ids=str)
def test_kept_lengths(batch, hidden, dtype, monkeypatch):
    """A call given no lengths reads the every-step lengths kept for its batch
    (triton_gru._all_steps, ALL_STEPS in each row; kept on CUDA, here on the CPU too):
    the same bits, every gradient too, as with its lengths given, in a training call and
    an inference call, called twice."""
    monkeypatch.setattr(tg, "_KEEP_ALL_STEPS_ON", ("cuda", "cpu"))
    monkeypatch.setattr(tg, "_all_steps_kept", {})
    steps = 64 if DEVICE == "cuda" else 5
    gi, h0, w, b, _ = _problem(steps, batch, hidden, dtype)

    def calls(lengths=None):
        got = []
        for p in (gi, h0, w, b):
            p.grad = None
        out = tg.core(gi, h0, w, b, lengths, True)
        out.float().square().sum().backward()
        got += [out, gi.grad, h0.grad, w.grad, b.grad]
        with torch.no_grad():
            got.append(tg.core(gi, h0, w, b, lengths, True))
        return [t.detach().clone() for t in got]

    want = calls(torch.full((batch,), steps))
    assert not tg._all_steps_kept
    for got in (calls(), calls()):
        for name, a, b_ in zip("out dgi dh0 dw db inference".split(), want, got,
                               strict=True):
            assert torch.equal(a, b_), name
    kept = tg._all_steps(gi, True)
    assert kept is tg._all_steps(gi, True) and (kept == tg.ALL_STEPS).all()
    assert tg._all_steps(gi, False).tolist() == [steps] * batch


# ---- the input projection beside the recurrence (triton_gru.core_projected) --------------

@pytest.mark.parametrize("first,growth,steps,want", [
    (16, 2, 512, [16, 32, 64, 128, 272]), (16, 2, 47, [47]), (16, 2, 48, [16, 32]),
    (16, 2, 111, [16, 95]), (2, 2, 11, [2, 9]), (2, 3, 30, [2, 6, 22]), (1, 1, 3, [1, 1, 1]),
    (4, 2, 0, [])], ids=str)
def test_overlap_spans(first, growth, steps, want, monkeypatch):
    """The overlap's spans: OVERLAP_FIRST steps, then each OVERLAP_GROWTH times the one
    before, the last taking a rest shorter than a next span; in order, covering [0, T)."""
    monkeypatch.setattr(tg, "OVERLAP_FIRST", first)
    monkeypatch.setattr(tg, "OVERLAP_GROWTH", growth)
    spans = tg._spans(steps)
    assert [end - begin for begin, end in spans] == want
    assert [begin for begin, _ in spans] == [sum(want[:i]) for i in range(len(want))]


SPAN_SPLITS = {name: split for name, split in PREFETCH_SPLITS.items()
               # (fp32's; in the interpreter not the streamed product, whose state is
               # the resident split's: 6 s a test)
               if len(split) == 3 and (DEVICE == "cuda" or name != "streamed")}
SPAN_SPLITS.update({
    "kmajor": (7, 30, dict(block_batch=4, slice=32, block_k=32, dot=False, resident=True,
                           kmajor=True)),
    "permuted": (7, 30, dict(block_batch=4, slice=32, block_k=32, dot=False, warps=4,
                             resident=True, chunked=True, unit_lanes=16, thread_units=2,
                             permuted=True)),
})


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("split,dtype", [
    (name, dtype) for name in SPAN_SPLITS for dtype in (torch.float32, torch.float64)
    # (fp64 in a few layouts of the state: not a stamped word, which carries fp32, nor a
    # stacked tile's TF32 parts; for time, not the permuted exchange, 2 s a test)
    if dtype == torch.float32 or name in ("resident", "chunked", "kmajor")],
    ids=str)
def test_forward_in_spans_changes_no_number(split, dtype, reset_after, monkeypatch):
    """The forward launched a span of time at a time (each from out[t_begin - 1], the
    exchange's buffers as the launch before left them; the prefetch stopping at a span's
    end) gives one launch's outputs and saved gates bit for bit, over ragged lengths
    (rows past their length carry zeros into the next span, and never use them); spans
    of 1, 2 and 3 steps, an odd t_begin included; and so does the backward over the same
    spans (_backward_in_spans)."""
    batch, hidden, fields = SPAN_SPLITS[split]
    cfg = tg.Config(**fields, prefetch=not fields.get("stamped"))
    gi, h0, w, b = (t.detach() for t in _problem(7, batch, hidden, dtype)[:4])
    lens = torch.tensor(_ragged(batch, 7), device=DEVICE)
    launches = []
    real_launch = tg._launch

    def spy(kernel, cfg, batch, hidden, steps, args, t_begin=0, **consts):
        launches.append((t_begin, steps))
        real_launch(kernel, cfg, batch, hidden, steps, args, t_begin=t_begin, **consts)

    monkeypatch.setattr(tg, "_launch", spy)
    want = tg.forward(gi, h0, w, b, lens, reset_after, True, cfg)
    out, saved, run = tg._forward_launches(gi, h0, w, b, lens, reset_after, True, cfg)
    for span in SPANS:
        run(*span)
    assert launches == [(0, 7), *SPANS]
    for i, (a, c) in enumerate(zip([out, *saved], [want[0], *want[1]], strict=True)):
        assert torch.equal(a, c), ("out", "r", "z", "n", "ghn")[i]
    # the backward the same way, last span first, carrying dL/dh
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(3),
                       dtype=dtype).to(DEVICE)
    _backward_in_spans(dout, h0, w, out, saved, lens, reset_after, cfg)


SPANS = [(0, 1), (1, 3), (3, 6), (6, 7)]  # (of T=7: 1, 2, 3 and 1 steps, odd t_begin)


def _backward_in_spans(dout, h0, w, out, saved, lens, reset_after, cfg):
    """_backward_launches run over SPANS, last first: dgi, dgh and dh0 bit for bit one
    launch's; the weight gradients summed over the spans within fp32's rounding of
    backward's over all steps at once (their sums run in another order)."""
    want = tg.backward(dout, h0, w, out, saved, lens, reset_after, cfg)
    rev = tg._backward_launches(dout, h0, w, out, saved, lens, reset_after, cfg)
    for span in SPANS[::-1]:
        rev.run(*span)
    assert torch.equal(rev.dgi, want[0]) and torch.equal(rev.dh0(), want[1])
    full = tg._backward_launches(dout, h0, w, out, saved, lens, reset_after, cfg)
    full.run(0, 7)
    assert torch.equal(rev.dgh, full.dgh)
    parts = [tg._span_weight_gradients(rev, h0, out, saved, reset_after, *span)
             for span in SPANS]
    tol = 1e-12 if out.dtype == torch.float64 else 1e-6
    for name, got, c in zip(("dw_hh", "db_hh"), (sum(p[i] for p in parts) for i in (0, 1)),
                            want[2:], strict=True):
        assert_close(name, c.double(), got.double(), tol, rtol=tol)


@pytest.mark.parametrize("split,reset_after", [("k3-u4x2", False),
                                               ("stacked-k2-3cols", True)], ids=str)
def test_crossed_backward_in_spans_changes_no_number(split, reset_after):
    """The crossed backward (Config.k_blocks) over spans of time, last first, its partial
    sums carried in its exchange from launch to launch: one launch's numbers."""
    hidden = CROSSED[split][0]
    cfg = _crossed(*CROSSED[split])
    gi, h0, w, b = (t.detach() for t in _problem(7, 6, hidden, torch.float32)[:4])
    lens = torch.tensor(_ragged(6, 7), device=DEVICE)
    forward = tg.Config(8, splits._pow2(hidden), splits._pow2(hidden), dot=False,
                        resident=True)
    out, saved = tg.forward(gi, h0, w, b, lens, reset_after, True, forward)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    _backward_in_spans(dout, h0, w, out, saved, lens, reset_after, cfg)


def test_forward_in_spans_needs_the_state_in_out():
    """A span after the first starts from out[t_begin - 1]: refused where out holds a
    rounded state (16-bit gi)."""
    gi, h0, w, b, _ = (t.detach() if t is not None else None
                       for t in _problem(4, 2, 8, torch.bfloat16))
    lens = torch.full((2,), 4, device=DEVICE)
    run = tg._forward_launches(gi, h0, w, b, lens, True, False)[2]
    run(0, 2)
    with pytest.raises(ValueError, match="arithmetic's dtype"):
        run(2, 4)


def _overlap_on(monkeypatch, first=2):
    """core_projected's overlap on for the CPU's interpreter, short first spans."""
    monkeypatch.setattr(tg, "overlap", True)
    monkeypatch.setattr(tg, "_OVERLAP_ON", ("cuda", "cpu"))
    monkeypatch.setattr(tg, "OVERLAP_FIRST", first)


def _module_run(form, dtype, reset_after):
    """A small module of the form (batch-first, two-layers, no-bias, given-hx,
    frozen-input: its input weights frozen; else plain) and a ``run()`` giving a training
    call's output, h_n, input gradient, an inference call's output and every parameter's
    gradient: for comparing core_projected's paths against the module without them."""
    layers = 2 if form == "two-layers" else 1
    torch.manual_seed(0)
    gru = flashgru.GRU(5, 12, num_layers=layers, bias=form != "no-bias",
                       batch_first=form == "batch-first", reset_after=reset_after,
                       backend="triton", dtype=dtype, device=DEVICE)
    if form == "frozen-input":
        gru.weight_ih_l0.requires_grad_(False)
        gru.bias_ih_l0.requires_grad_(False)
    shape = (3, 11, 5) if form == "batch-first" else (11, 3, 5)
    x = torch.randn(shape, dtype=dtype, device=DEVICE)
    hx = torch.randn(layers, 3, 12, dtype=dtype, device=DEVICE) if form == "given-hx" \
        else None
    return gru, x, hx, _runner(gru, x, hx)


def _runner(gru, x, hx=None):
    """run(): a training call's output, h_n and input gradient, an inference call's
    output, and every parameter's gradient (None where frozen)."""
    def run():
        gru.zero_grad()
        xg = x.clone().requires_grad_()
        out, h_n = gru(xg, hx)
        (out.square().sum() + h_n.sum()).backward()
        with torch.no_grad():
            inference = gru(x, hx)[0]
        return [out, h_n, xg.grad, inference, *(p.grad for p in gru.parameters())]

    return run


def _assert_same_results(got, want, tol, frozen=False, atol=None):
    """_runner's results alike within tol relative (and atol, else tol, absolute); a
    frozen weight's None in both."""
    for i, (a, c) in enumerate(zip(got, want, strict=True)):
        if c is None:  # (a frozen weight's)
            assert a is None and frozen, i
            continue
        assert_close(f"result {i}", c.double(), a.double(), tol if atol is None else atol,
                     rtol=tol)


def _functional_of(gru, form, x, hx, reset_after):
    """functional.gru (the module's general path) on the module's weights and input."""
    layers = gru.num_layers
    return flashgru.functional.gru(
        x.transpose(0, 1) if form == "batch-first" else x,
        hx if hx is not None else torch.zeros(layers, 3, 12, dtype=x.dtype, device=DEVICE),
        gru._flat_weights, has_biases=form != "no-bias", num_layers=layers,
        reset_after=reset_after, backend="triton")


@pytest.mark.parametrize("form,dtype,reset_after", [
    (form, torch.float32, True) for form in ("batch-first", "two-layers", "no-bias",
                                             "given-hx", "frozen-input", "forward-alone")] +
    [("two-layers", torch.float32, False), ("batch-first", torch.float64, False)], ids=str)
def test_overlapped_module_matches(form, dtype, reset_after, monkeypatch):
    """A module whose layers' projections are made beside their recurrence, and whose
    backward's GEMMs beside its reverse recurrence (core_projected, on every path that
    reaches it: the module's own and functional's): outputs, h_n and every gradient as
    without the overlap, to the GEMMs' rounding (a span's rows summed apart from the
    others'); inference too; every layer's forward and backward in spans, and their
    buffers written whole (NaN-poisoned first). Frozen input weights get no gradient.
    With ``overlap`` FORWARD the backward runs in one span."""
    gru, x, hx, run = _module_run(form, dtype, reset_after)
    layers = gru.num_layers
    want = run()
    _overlap_on(monkeypatch)
    if form == "forward-alone":
        monkeypatch.setattr(tg, "overlap", tg.FORWARD)
    spans = []
    real_pipeline = tg._pipeline

    def spy(device, spans_, first, then, first_recurs):
        spans.append((first_recurs, spans_))
        real_pipeline(device, spans_, first, then, first_recurs)

    monkeypatch.setattr(tg, "_pipeline", spy)
    got = run()
    # (each layer's training forward, the backward's, last layer first, then inference)
    forward, backward = (False, [(0, 2), (2, 11)]), (True, [(2, 11), (0, 2)])
    if form == "forward-alone":
        backward = (True, [(0, 11)])
    assert spans == [forward] * layers + [backward] * layers + [forward] * layers
    _assert_same_results(got, want, 1e-12 if dtype == torch.float64 else 2e-6,
                         form == "frozen-input")
    # (functional.gru, the module's general path, reaches it too)
    spans.clear()
    _functional_of(gru, form, x, hx, reset_after)
    assert spans == [forward] * layers


@pytest.mark.parametrize("case", ["on", "off", "bf16", "short", "wide", "benchmark",
                                  "tf32x3", "mixed", "special", "misspelt"])
def test_overlap_only_where_it_applies(case, monkeypatch):
    """core_projected overlaps only where _overlaps says (else linear, then core): with
    ``overlap`` on, not off, not in 16 bits (out would carry a rounded state), not in one
    span, not above OVERLAP_MAX_HIDDEN, not in benchmark mode, not with tf32x3's GEMMs,
    not with a weight of another dtype, not where a special mode records or transforms
    the call. Each case gives core's result on the backend's projection (tf32x3.linear;
    bit for bit where it doesn't overlap). A misspelt setting is an error, not off."""
    _overlap_on(monkeypatch)
    inputs = _where_it_applies(case, monkeypatch, steps=3 if case == "short" else 8)
    if case == "off":
        monkeypatch.setattr(tg, "overlap", False)
    elif case == "wide":
        monkeypatch.setattr(tg, "OVERLAP_MAX_HIDDEN", 7)  # (H is 8 here)
    elif case == "misspelt":
        monkeypatch.setattr(tg, "overlap", "forwards")
        with pytest.raises(ValueError, match="triton_gru.overlap is False, True or"):
            tg._overlaps(*inputs)
        return
    _check_projected(case, tg._overlaps(*inputs), inputs)


def _where_it_applies(case, monkeypatch, steps=8, features=4):
    """An only-where-it-applies case's inputs x, w_ih, b_ih, h0, w_hh, b_hh (H=8, B=2),
    with the cases the settings share made: bf16 (16 bits), benchmark mode, tf32x3's
    GEMMs, a special mode, a weight of another dtype (mixed)."""
    dtype = torch.bfloat16 if case == "bf16" else torch.float32
    g = torch.Generator().manual_seed(0)
    x, w_ih, b_ih = (torch.randn(*s, generator=g).to(DEVICE, dtype)
                     for s in ((steps, 2, features), (24, features), (24,)))
    h0, w_hh, b_hh = (torch.randn(*s, generator=g).to(DEVICE, dtype) * 0.3
                      for s in ((2, 8), (24, 8), (24,)))
    if case == "benchmark":
        monkeypatch.setattr(tg, "benchmark", True)
    elif case == "tf32x3":
        monkeypatch.setattr(flashgru.backends.tf32x3, "enabled", True)
    elif case == "special":
        monkeypatch.setattr(tg, "_special_mode", lambda: True)
    elif case == "mixed":
        w_hh = w_hh.double()
    return x, w_ih, b_ih, h0, w_hh, b_hh


def _check_projected(case, applies, inputs):
    """That a setting ``applies`` just in the case "on", and core_projected's result:
    within fp32's rounding of core's on the backend's projection (tf32x3.linear) where it
    applies, bit for bit where not (mixed: core refuses it; special: the op's)."""
    assert applies == (case == "on")
    if case in ("mixed", "special"):
        return
    x, w_ih, b_ih, h0, w_hh, b_hh = inputs
    want = tg.core(flashgru.backends.tf32x3.linear(x, w_ih, b_ih), h0, w_hh, b_hh, None,
                   True)
    got = tg.core_projected(x, w_ih, b_ih, h0, w_hh, b_hh, None, True)
    if case == "on":
        assert_close("out", want.double(), got.double(), 2e-6, rtol=2e-6)
    else:
        assert torch.equal(got, want)


@pytest.mark.skipif(DEVICE != "cuda", reason="GPU-sized: the default splits, two streams")
@pytest.mark.parametrize("hidden", [256, 512])
def test_overlap_on_gpu(hidden, monkeypatch):
    """fp32 B=16, T=512 with the projection beside the recurrence (two streams, the spans'
    events; at H=256 four batch tiles, K-major): a training call's output, h_n and every
    gradient, and an inference call's output, against the same module without the
    overlap (fp32 GEMM rounding apart, within 1e-5 of the outputs' scale), run twice (the
    streams reused)."""
    torch.manual_seed(0)
    run = _runner(flashgru.GRU(hidden, hidden, backend="triton", device=DEVICE),
                  torch.randn(512, 16, hidden, device=DEVICE))
    want = run()
    monkeypatch.setattr(tg, "overlap", True)
    calls = []
    real = tg._overlapped
    monkeypatch.setattr(tg, "_overlapped", lambda *a: calls.append(a[-1]) or real(*a))
    for _ in range(2):
        _assert_same_results(run(), want, 1e-5, atol=0.0)
    assert calls == [True, False] * 2  # (a training call's forward, an inference call's)


# ---- the input projection inside the forward kernel (triton_gru.project) ------------------

PROJECT_SPLITS = {  # (batch, hidden, input size, split): interpreter-sized, one program a tile
    "resident": (7, 30, 13, dict(block_batch=4, slice=32, block_k=32, dot=False,
                                 resident=True)),
    "dot": (7, 30, 13, dict(block_batch=16, slice=32, block_k=32, dot=True, resident=True)),
    "stamped": (7, 30, 13, dict(block_batch=4, slice=32, block_k=32, dot=False,
                                resident=True, stamped=True)),
    # (the input's block in two chunks of a warp's lanes)
    "chunked": (7, 40, 50, dict(block_batch=8, slice=64, block_k=64, dot=False,
                                resident=True, chunked=True)),
    "chunk-shape": (7, 40, 13, dict(block_batch=8, slice=64, block_k=64, dot=False, warps=8,
                                    resident=True, chunked=True, unit_lanes=4,
                                    thread_units=2)),
    "kmajor": (7, 30, 13, dict(block_batch=4, slice=32, block_k=32, dot=False, resident=True,
                               kmajor=True)),
    # (a split that can be permuted, as fp32 B=16 H=512's default: made so, x read so too)
    "permutable": (7, 8, 20, dict(block_batch=4, slice=8, block_k=32, dot=False, warps=4,
                                  resident=True, chunked=True, unit_lanes=4,
                                  thread_units=2)),
    "permuted": (7, 30, 31, dict(block_batch=4, slice=32, block_k=32, dot=False, warps=4,
                                 resident=True, chunked=True, unit_lanes=16, thread_units=2,
                                 permuted=True)),
}
if DEVICE == "cuda":  # the defaults' splits at issue 5's fp32 B=16 points
    PROJECT_SPLITS.update({
        "b16-kmajor": (16, 256, 256, dict(block_batch=4, slice=8, block_k=256, dot=False,
                                          warps=8, resident=True, kmajor=True)),
        "b16-u4x1": (16, 512, 512, dict(block_batch=16, slice=4, block_k=512, dot=False,
                                        resident=True, chunked=True, unit_lanes=4)),
    })


def _projection_problem(steps, batch, hidden, features, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(
            dtype=dtype, device=DEVICE)

    return (rand(steps, batch, features), rand(3 * hidden, features, scale=features ** -0.5),
            rand(3 * hidden), rand(batch, hidden), rand(3 * hidden, hidden,
                                                       scale=hidden ** -0.5),
            rand(3 * hidden))


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("split,dtype", [
    (name, dtype) for name in PROJECT_SPLITS for dtype in (torch.float32, torch.float64)
    # (fp64: not a stamped word, which carries fp32; for time, a few layouts)
    if dtype == torch.float32 or name in ("resident", "chunked", "kmajor", "permutable")],
    ids=str)
def test_projection_inside_the_forward_kernel(split, dtype, reset_after):
    """The forward kernel making its own input projections (PROJECT, _fused) gives the
    outputs and saved gates of the kernel on gi = x W_ihᵀ + b_ih made first (each sum in
    another order: within fp32's rounding), over ragged lengths; and launched over spans
    of time, one launch's bits (where x is read permuted, a span's last step reads the
    next span's first input)."""
    batch, hidden, features, fields = PROJECT_SPLITS[split]
    cfg = tg.Config(**fields)
    steps = 512 if DEVICE == "cuda" else 7
    x, w_ih, b_ih, h0, w, b = _projection_problem(steps, batch, hidden, features, dtype)
    lens = torch.tensor(_ragged(batch, steps), device=DEVICE)
    fused = tg._projecting(cfg, features)
    assert fused is not None and not fused.prefetch
    assert fused.permuted == (split in ("permutable", "permuted", "b16-u4x1"))
    gi = torch.nn.functional.linear(x, w_ih, b_ih)
    want = tg.forward(gi, h0, w, b, lens, reset_after, True, cfg)
    got = tg._fused(x, w_ih, b_ih, h0, w, b, lens, reset_after, True, fused)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    for name, a, c in zip(("out", "r", "z", "n", "ghn"), [got[0], *got[1]],
                          [want[0], *want[1]], strict=False):  # (no ghn: reset_before)
        assert_close(name, c.double(), a.double(), tol, rtol=tol)
    assert len(got[1]) == len(want[1]) == 3 + reset_after
    if DEVICE != "cuda":
        out, saved, run = tg._forward_launches(x, h0, w, b, lens, reset_after, True, fused,
                                               project=(w_ih, b_ih))
        for span in SPANS:
            run(*span)
        for i, (a, c) in enumerate(zip([out, *saved], [got[0], *got[1]], strict=True)):
            assert torch.equal(a, c), ("out", "r", "z", "n", "ghn")[i]


def test_projecting_rule():
    """Which splits make their own projections (_projecting): W_ih's tiles held as W_hh's
    are, so not streamed W, stacked (TF32 parts), narrow (16-bit) or crossed splits, nor
    an input whose block (_input_block: a power of two, at least a chunked split's chunks
    and tl.dot's 16) passes W_hh's; never with prefetch, and permuted where it can be. The
    launch refuses a split _projecting wouldn't give, and a pair."""
    resident = tg.Config(16, 4, 512, dot=False, resident=True, prefetch=True)
    assert tg._projecting(resident, 512) == resident._replace(prefetch=False)
    assert tg._projecting(resident, 513) is None
    for change in (dict(resident=False), dict(stacked=True, dot=True),
                   dict(narrow=True, dot=True), dict(k_blocks=2)):
        assert tg._projecting(resident._replace(**change), 8) is None, change
    shaped = resident._replace(chunked=True, unit_lanes=4)
    assert tg._projecting(shaped, 300) == shaped._replace(prefetch=False, permuted=True)
    assert tg._input_block(shaped, 3) == 32  # (chunks of 8 lanes, 4 warps along K)
    assert tg._input_block(resident._replace(dot=True), 3) == 16
    assert tg._input_block(resident, 3) == 4
    x, w_ih, b_ih, h0, w, b = _projection_problem(3, 2, 8, 5, torch.float32)
    lens = torch.full((2,), 3, device=DEVICE)
    cfg = tg.Config(2, 8, 8, dot=False, resident=True, prefetch=True)
    with pytest.raises(ValueError, match="makes its input projections"):
        tg._forward_launches(x, h0, w, b, lens, True, False, cfg, project=(w_ih, b_ih))
    with pytest.raises(ValueError, match="makes its input projections"):
        tg._forward_launches(x, h0, w, b, lens, True, False, tg._projecting(cfg, 5),
                             pair_rows=2, project=(w_ih, b_ih))


def _project_on(monkeypatch):
    """core_projected's projection inside the kernel on for the CPU's interpreter."""
    monkeypatch.setattr(tg, "project", True)
    monkeypatch.setattr(tg, "_PROJECT_ON", ("cuda", "cpu"))


@pytest.mark.parametrize("form,dtype,reset_after", [
    (form, torch.float32, True) for form in ("batch-first", "two-layers", "no-bias",
                                             "given-hx", "frozen-input", "with-overlap")] +
    # (not float64: its default splits stream W, which _projecting leaves out)
    [("two-layers", torch.float32, False), ("batch-first", torch.float32, False)], ids=str)
def test_projected_module_matches(form, dtype, reset_after, monkeypatch):
    """A module whose layers make their input projections inside the forward kernel
    (core_projected, on every path that reaches it: the module's own and functional's):
    outputs, h_n and every gradient as without it, to the sums' rounding; inference too;
    every layer's forward fused (its buffers NaN-poisoned first). Frozen input weights
    get no gradient. With the overlap on too, the backward's GEMMs run beside its
    reverse recurrence, in spans."""
    gru, x, hx, run = _module_run(form, dtype, reset_after)
    layers = gru.num_layers
    want = run()
    _project_on(monkeypatch)
    if form == "with-overlap":
        _overlap_on(monkeypatch)
    fused, spans = [], []
    real_fused, real_pipeline = tg._fused, tg._pipeline
    monkeypatch.setattr(tg, "_fused", lambda *a: fused.append(a[-2]) or real_fused(*a))
    monkeypatch.setattr(tg, "_pipeline", lambda device, s, *a: spans.append(len(s)) or
                        real_pipeline(device, s, *a))
    got = run()
    # (each layer's training forward, then inference; the backward's spans: one, or with
    # the overlap on, those of 2 and 9 steps)
    assert fused == [True] * layers + [False] * layers
    assert spans == [2 if form == "with-overlap" else 1] * layers
    _assert_same_results(got, want, 2e-6, form == "frozen-input")
    fused.clear()
    _functional_of(gru, form, x, hx, reset_after)
    assert fused == [True] * layers  # (the weights want gradients: a training call's)


@pytest.mark.parametrize("case", ["on", "off", "bf16", "wide", "wide-input", "benchmark",
                                  "tf32x3", "mixed", "special", "misspelt"])
def test_project_only_where_it_applies(case, monkeypatch):
    """core_projected makes the projection inside the kernel only where _projects says
    (else linear, then core): with ``project`` on, not off, not in 16 bits, not above
    PROJECT_MAX_HIDDEN, not for an input wider than the split's block, not in benchmark
    mode, not with tf32x3's GEMMs, not with a weight of another dtype, not where a
    special mode records or transforms the call. Each case gives core's result on the
    backend's projection (tf32x3.linear; bit for bit where it doesn't apply). A misspelt
    setting is an error, not off."""
    _project_on(monkeypatch)
    # (H=8 here: the interpreter's block 8)
    inputs = _where_it_applies(case, monkeypatch, steps=5,
                               features=40 if case == "wide-input" else 4)
    if case == "off":
        monkeypatch.setattr(tg, "project", False)
    elif case == "wide":
        monkeypatch.setattr(tg, "PROJECT_MAX_HIDDEN", 7)
    elif case == "misspelt":
        monkeypatch.setattr(tg, "project", "yes")
        with pytest.raises(ValueError, match="triton_gru.project is False or True"):
            tg._projects(*inputs, False)
        return
    _check_projected(case, tg._projects(*inputs, False) is not None, inputs)


@pytest.mark.skipif(DEVICE != "cuda", reason="GPU-sized: the default splits")
@pytest.mark.parametrize("hidden", [256, 512])
def test_project_on_gpu(hidden, monkeypatch):
    """fp32 B=16, T=512 with the projection inside the forward kernel (at H=256 four batch
    tiles, K-major; at H=512 the u4×1 split permuted, x read so): a training call's
    output, h_n and every gradient, and an inference call's output, against the same
    module without it (within 1e-5 of the outputs' scale)."""
    torch.manual_seed(0)
    run = _runner(flashgru.GRU(hidden, hidden, backend="triton", device=DEVICE),
                  torch.randn(512, 16, hidden, device=DEVICE))
    want = run()
    monkeypatch.setattr(tg, "project", True)
    calls = []
    real = tg._fused
    monkeypatch.setattr(tg, "_fused", lambda *a: calls.append(a[-2]) or real(*a))
    _assert_same_results(run(), want, 1e-5, atol=0.0)
    assert calls == [True, False]  # (a training call's forward, an inference call's)
