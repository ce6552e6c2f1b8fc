"""The cpu backend's numba building blocks, shared by its sequence kernels (``cpu``) and
its one-step kernels (``cpu_step``): the matrix-vector products, a vectorised exp, one row
of gate math for each formulation, and typed arrays at raw addresses.

Needs numba and SciPy; without them ``numba`` is None here and ``_jit`` leaves functions
as plain Python, never called (the backend reports itself unavailable).
"""

from __future__ import annotations

import numpy as np

try:
    import numba
    import numba.extending
    import scipy.linalg.cython_blas  # noqa: F401  numba's np.dot calls BLAS through SciPy
    from numba.core import types
except ImportError:  # the backend is then unavailable; see cpu.missing()
    numba = None

MATVEC_FLAGS = {"reassoc", "contract"}  # let LLVM vectorise the sums; nothing else


def _jit(**kwargs):
    """numba.njit, cached on disk, without the GIL, with numpy's error model (a float
    division by zero gives inf instead of raising: no branch per division, so LLVM
    vectorises the gate loops)."""
    def wrap(fn):
        if numba is None:
            return fn
        return numba.njit(cache=True, nogil=True, error_model="numpy", **kwargs)(fn)

    return wrap


def _intrinsic(fn):
    """numba.extending.intrinsic, or the plain function without numba."""
    return fn if numba is None else numba.extending.intrinsic(fn)


@_intrinsic
def _pointer(typingctx, address, like):
    """The typed pointer at an integer ``address``, for elements of ``like``'s type."""
    pointer = types.CPointer(like)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer))

    return pointer(address, like), codegen


@_jit(boundscheck=False)
def _view(address, shape, like):
    """The C-contiguous array of ``shape`` at ``address``, of ``like``'s dtype."""
    return numba.carray(_pointer(address, like), shape)


@_jit(fastmath=MATVEC_FLAGS, boundscheck=False)
def _matvec(h, w, out):
    """out (N,) = h (K,) @ w (K, N), eight rows of w per pass over out."""
    n_out = w.shape[1]
    for j in range(n_out):
        out[j] = 0.0
    k, n_in = 0, h.shape[0]
    while k + 8 <= n_in:
        h0, h1, h2, h3 = h[k], h[k + 1], h[k + 2], h[k + 3]
        h4, h5, h6, h7 = h[k + 4], h[k + 5], h[k + 6], h[k + 7]
        for j in range(n_out):
            out[j] += (h0 * w[k, j] + h1 * w[k + 1, j] + h2 * w[k + 2, j] + h3 * w[k + 3, j]
                       + h4 * w[k + 4, j] + h5 * w[k + 5, j] + h6 * w[k + 6, j]
                       + h7 * w[k + 7, j])
        k += 8
    while k < n_in:
        hk = h[k]
        for j in range(n_out):
            out[j] += hk * w[k, j]
        k += 1


@_jit(fastmath=MATVEC_FLAGS, boundscheck=False)
def _gemv_rows(w, x, out):
    """out (B, N) = x (B, K) @ w (N, K)ᵀ on w's native row-major layout, nothing
    transposed: four rows of w at a time (they stay in L1) against two rows of x at a time
    (each weight loaded once for both), each a dot product that LLVM vectorises. For small
    B, where the weight stream is the cost: at B=1 it runs at the speed of reading w once.
    (Written out in one function: split into helpers, LLVM does not vectorise it.)"""
    (n_out, n_in), batch = w.shape, x.shape[0]
    zero = out.dtype.type(0)
    for j in range(0, n_out - n_out % 4, 4):
        w0, w1, w2, w3 = w[j], w[j + 1], w[j + 2], w[j + 3]
        for i in range(0, batch - 1, 2):
            xa, xb = x[i], x[i + 1]
            a0, a1, a2, a3, b0, b1, b2, b3 = zero, zero, zero, zero, zero, zero, zero, zero
            for k in range(n_in):
                a0 += w0[k] * xa[k]
                a1 += w1[k] * xa[k]
                a2 += w2[k] * xa[k]
                a3 += w3[k] * xa[k]
                b0 += w0[k] * xb[k]
                b1 += w1[k] * xb[k]
                b2 += w2[k] * xb[k]
                b3 += w3[k] * xb[k]
            out[i, j], out[i, j + 1], out[i, j + 2], out[i, j + 3] = a0, a1, a2, a3
            out[i + 1, j], out[i + 1, j + 1], out[i + 1, j + 2], out[i + 1, j + 3] = (
                b0, b1, b2, b3)
        for i in range(batch - batch % 2, batch):  # the odd row, as a loop (else unvectorised)
            xa = x[i]
            a0, a1, a2, a3 = zero, zero, zero, zero
            for k in range(n_in):
                a0 += w0[k] * xa[k]
                a1 += w1[k] * xa[k]
                a2 += w2[k] * xa[k]
                a3 += w3[k] * xa[k]
            out[i, j], out[i, j + 1], out[i, j + 2], out[i, j + 3] = a0, a1, a2, a3
    for j in range(n_out - n_out % 4, n_out):  # the last N % 4 rows
        for i in range(batch):
            a0 = zero
            for k in range(n_in):
                a0 += w[j, k] * x[i, k]
            out[i, j] = a0


# ---- meeting points between threads ------------------------------------------------------
# For kernels whose threads share one recurrence (``_cpu_units``): each thread publishes
# how far it has got in an int64 counter of its own (a cache line each) with a release
# store, and waits for the others' with acquire loads, so whatever a thread wrote before
# its store is seen by a thread that has read it. While it waits it pauses; after
# SPIN_BEFORE_YIELD polls (~20 µs) it also gives its core away each poll (sched_yield), so
# a machine with fewer free cores than threads slows down instead of stalling. Measured,
# two processes each running B=1, T=256, H=256 calls on the 2 cores: 36-40 ms a call
# after 2000 polls, 26-29 ms after 200 or 20 (2.4-2.5 ms alone, unchanged).

SPIN_BEFORE_YIELD = 200


@_intrinsic
def _load_acquire(typingctx, address):
    """The int64 at ``address``, an atomic load with acquire ordering."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        from llvmlite import ir

        pointer = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        return builder.load_atomic(pointer, "acquire", 8)

    return types.int64(address), codegen


@_intrinsic
def _store_release(typingctx, address, value):
    """Store the int64 ``value`` at ``address``, atomically with release ordering."""
    if not isinstance(address, types.Integer) or not isinstance(value, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        from llvmlite import ir

        pointer = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        stored = context.cast(builder, args[1], signature.args[1], types.int64)
        builder.store_atomic(stored, pointer, "release", 8)
        return context.get_dummy_value()

    return types.none(address, value), codegen


@_intrinsic
def _pause(typingctx):
    """x86's ``pause`` (a spin-wait hint) where LLVM targets x86, else nothing."""
    def codegen(context, builder, signature, args):
        from llvmlite import ir
        from numba.core import cgutils

        if "86" in builder.module.triple:
            fnty = ir.FunctionType(ir.VoidType(), [])
            builder.call(cgutils.get_or_insert_function(builder.module, fnty,
                                                        "llvm.x86.sse2.pause"), [])
        return context.get_dummy_value()

    return types.none(), codegen


@_intrinsic
def _yield_core(typingctx):
    """POSIX ``sched_yield()``: let another runnable thread have this core."""
    def codegen(context, builder, signature, args):
        from llvmlite import ir
        from numba.core import cgutils

        fnty = ir.FunctionType(ir.IntType(32), [])
        builder.call(cgutils.get_or_insert_function(builder.module, fnty, "sched_yield"), [])
        return context.get_dummy_value()

    return types.none(), codegen


@_jit(boundscheck=False)
def _arrive(sync, part, count):
    """Part ``part`` has done ``count`` things the others may wait for."""
    _store_release(sync.ctypes.data + 64 * part, count)


@_jit(boundscheck=False)
def _meet(sync, part, parts, count):
    """Wait until every part but ``part`` has arrived at ``count``; False when a part gave
    up meanwhile (``_give_up``), True otherwise. ``sync``: int64, 8 · (parts + 1) zeros
    at the start (one cache line per part, the last for giving up)."""
    base = sync.ctypes.data
    for other in range(parts):
        if other == part:
            continue
        polls = 0
        while _load_acquire(base + 64 * other) < count:
            if _load_acquire(base + 64 * parts) != 0:
                return False
            polls += 1
            if polls > SPIN_BEFORE_YIELD:
                _yield_core()
            else:
                _pause()
    return True


@_jit(boundscheck=False)
def _give_up(sync, parts):
    """Tell every part waiting in ``_meet`` to stop."""
    _store_release(sync.ctypes.data + 64 * parts, 1)


# ---- GEMM through the BLAS torch runs on ----------------------------------------------
# The kernels call a Fortran ``?gemm`` by the names below, registered with LLVM at import
# (so the cached machine code refers to a name, not to this process's address): torch's
# own BLAS where libtorch_cpu exports it (MKL in the x86 wheels; from a numba loop it ran
# 16x128 @ 128x384 in 6.2 µs, SciPy's OpenBLAS through np.dot in 13.4, torch.mm from
# Python in 8.0; 8x256 @ 256x768: 11.4 against 65.7 and 12.4), else SciPy's BLAS.

GEMM_SYMBOLS = {"float32": "flashgru_sgemm", "float64": "flashgru_dgemm"}
GEMV_SYMBOLS = {"float32": "flashgru_sgemv", "float64": "flashgru_dgemv"}


def _register_gemm() -> str:
    """Point the GEMM_SYMBOLS at a BLAS; returns which one ("torch" or "scipy")."""
    import ctypes
    import os

    import llvmlite.binding
    import torch

    kinds, found = ("sgemm", "dgemm", "sgemv", "dgemv"), {}
    for file in ("libtorch_cpu.so", "libtorch_cpu.dylib", "torch_cpu.dll"):
        path = os.path.join(os.path.dirname(torch.__file__), "lib", file)
        if os.path.exists(path):
            try:
                lib = ctypes.CDLL(path)
                found = {k: ctypes.cast(getattr(lib, k + "_"), ctypes.c_void_p).value
                         for k in kinds}
            except (OSError, AttributeError):
                found = {}
            break
    source = "torch"
    if len(found) != 4 or not all(_blas_works(found[k], k) for k in kinds):
        from numba.core.extending import get_cython_function_address

        found = {k: get_cython_function_address("scipy.linalg.cython_blas", k) for k in kinds}
        source = "scipy"
    for symbols, kind in ((GEMM_SYMBOLS, "gemm"), (GEMV_SYMBOLS, "gemv")):
        llvmlite.binding.add_symbol(symbols["float32"], found["s" + kind])
        llvmlite.binding.add_symbol(symbols["float64"], found["d" + kind])
    return source


def _blas_works(address: int, kind: str) -> bool:
    """Whether the Fortran ``kind`` (sgemm, dgemm, sgemv, dgemv) at ``address`` computes a
    small product right, called as the kernels call it (32-bit integers by reference, as
    torch's LP64 MKL takes them): a guard against finding some other function or
    convention under the name."""
    import ctypes

    real = np.float32 if kind[0] == "s" else np.float64
    a = np.asfortranarray(np.arange(1, 7, dtype=real).reshape(2, 3))  # lda = 2
    b = np.asfortranarray(np.arange(1, 13, dtype=real).reshape(3, 4))  # ldb = 3
    n = np.array([ord("N")], dtype=np.uint8)

    def i32(*values):
        return [np.array([v], dtype=np.int32) for v in values]

    one, zero = np.array([1.0], dtype=real), np.array([0.0], dtype=real)
    if kind[1:] == "gemm":
        c, want = np.full((2, 4), np.nan, dtype=real, order="F"), a @ b
        m_, n_, k_, lda, ldb, ldc = i32(2, 4, 3, 2, 3, 2)
        args = [n, n, m_, n_, k_, one, a, lda, b, ldb, zero, c, ldc]
    else:  # y (2,) = a (2, 3) @ x (3,)
        c, want = np.full(2, np.nan, dtype=real), a @ b[:, 0]
        m_, n_, lda, inc = i32(2, 3, 2, 1)
        x = np.ascontiguousarray(b[:, 0])
        args = [n, m_, n_, one, a, lda, x, inc, zero, c, inc]
    fn = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * len(args))(address)
    fn(*(v.ctypes.data for v in args))
    return bool(np.array_equal(c, want))


def _fortran_call(builder, name, real, args):
    """Codegen: call the void Fortran routine ``name`` with every argument by reference.
    ``args``: (kind, value) pairs, kind "char" or "int" (a Python number or an integer
    value, passed as i8 / i32), "real" (a number or a value of type ``real``) or "ptr"
    (an integer address of ``real`` elements, passed as is)."""
    from llvmlite import ir
    from numba.core import cgutils

    types_ = {"char": ir.IntType(8), "int": ir.IntType(32), "real": real}
    refs = []
    for kind, value in args:
        if kind == "ptr":
            refs.append(builder.inttoptr(value, real.as_pointer()))
            continue
        if isinstance(value, (int, float)):
            value = ir.Constant(types_[kind], value)
        elif kind != "real":
            value = builder.trunc(value, types_[kind])
        refs.append(cgutils.alloca_once_value(builder, value))
    fnty = ir.FunctionType(ir.VoidType(), [ref.type for ref in refs])
    builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), refs)


@_intrinsic
def _gemm_call(typingctx, m, n, k, a, lda, b, ldb, c, ldc, beta):
    """Fortran ``?gemm('N', 'N', m, n, k, 1, a, lda, b, ldb, beta, c, ldc)`` on raw
    addresses a, b, c (integers); ``beta``, a float32 or float64, picks s or d."""
    if not isinstance(beta, types.Float):
        return None

    def codegen(context, builder, signature, args):
        m_, n_, k_, a_, lda_, b_, ldb_, c_, ldc_, beta_ = args
        _fortran_call(builder, GEMM_SYMBOLS[str(beta)], context.get_value_type(beta), [
            ("char", ord("N")), ("char", ord("N")), ("int", m_), ("int", n_), ("int", k_),
            ("real", 1.0), ("ptr", a_), ("int", lda_), ("ptr", b_), ("int", ldb_),
            ("real", beta_), ("ptr", c_), ("int", ldc_)])
        return context.get_dummy_value()

    return types.none(m, n, k, a, lda, b, ldb, c, ldc, beta), codegen


@_jit(boundscheck=False)
def _gemm(a, w, out, beta):
    """out (B, N) = a (B, K) @ w (K, N) + beta · out, all C-contiguous (beta 0: out is
    only written): in BLAS's column-major terms outᵀ = wᵀ aᵀ + beta · outᵀ, which is
    gemm('N', 'N') on the same memory."""
    batch, n_in = a.shape
    n_out = w.shape[1]
    _gemm_call(n_out, batch, n_in, w.ctypes.data, n_out, a.ctypes.data, n_in,
               out.ctypes.data, n_out, out.dtype.type(beta))


@_intrinsic
def _gemv_call(typingctx, trans, m, n, a, lda, x, y, beta):
    """Fortran ``?gemv(trans, m, n, 1, a, lda, x, 1, beta, y, 1)`` on raw addresses a, x,
    y; ``trans`` the character's code; ``beta``, a float32 or float64, picks s or d."""
    if not isinstance(beta, types.Float):
        return None

    def codegen(context, builder, signature, args):
        trans_, m_, n_, a_, lda_, x_, y_, beta_ = args
        _fortran_call(builder, GEMV_SYMBOLS[str(beta)], context.get_value_type(beta), [
            ("char", trans_), ("int", m_), ("int", n_), ("real", 1.0), ("ptr", a_),
            ("int", lda_), ("ptr", x_), ("int", 1), ("real", beta_), ("ptr", y_),
            ("int", 1)])
        return context.get_dummy_value()

    return types.none(trans, m, n, a, lda, x, y, beta), codegen


GEMV_BLAS_MIN = 1 << 17  # weights from which BLAS's GEMV beats _gemv_rows at batch 1


@_jit(boundscheck=False)
def _gemv(w, x, out):
    """out (B, N) = x (B, K) @ w (N, K)ᵀ, w as stored (C-contiguous): at batch 1 from
    GEMV_BLAS_MIN weights BLAS's ?gemv (torch's MKL runs it on both cores, each reading
    half of w from its own L2: measured 16 against 28 µs at H=384, 30 against 85-93 at
    H=512, 8.2-8.5 against 8.6-11.6 at H=256), else ``_gemv_rows`` (faster at H ≤ 128)."""
    n_out, n_in = w.shape
    if x.shape[0] != 1 or n_out * n_in < GEMV_BLAS_MIN:
        _gemv_rows(w, x, out)
    else:
        _gemv_call(84, n_in, n_out, w.ctypes.data, n_in, x.ctypes.data, out.ctypes.data,
                   out.dtype.type(0))  # 84: 'T'; w row-major is wᵀ column-major


@_jit(boundscheck=False)
def _matmul(a, w, out):
    """out (B, N) = a (B, K) @ w (K, N), all C-contiguous."""
    if a.shape[0] == 1 and w.size < GEMV_BLAS_MIN:
        _matvec(a[0], w, out[0])
    elif a.shape[0] == 1:  # 78: 'N'; w row-major (K, N) is (N, K) column-major
        _gemv_call(78, w.shape[1], w.shape[0], w.ctypes.data, w.shape[1], a.ctypes.data,
                   out.ctypes.data, out.dtype.type(0))
    elif a.shape[0] > 1:
        _gemm(a, w, out, 0.0)


@_jit(boundscheck=False)
def _matmul_add(a, w, out, scratch):
    """out (B, N) += a (B, K) @ w (K, N), all C-contiguous; ``scratch`` (≥ N,) for B=1."""
    if a.shape[0] == 1 and w.size < GEMV_BLAS_MIN:
        _matvec(a[0], w, scratch)
        for j in range(out.shape[1]):
            out[0, j] += scratch[j]
    elif a.shape[0] == 1:
        _gemv_call(78, w.shape[1], w.shape[0], w.ctypes.data, w.shape[1], a.ctypes.data,
                   out.ctypes.data, out.dtype.type(1))
    elif a.shape[0] > 1:
        _gemm(a, w, out, 1.0)


# ---- the on-disk cache -------------------------------------------------------------------

KERNEL_FILES = ("_cpu_kernels.py", "_cpu_units.py", "cpu.py", "cpu_step.py")


def _drop_stale_cache(probe) -> None:
    """Delete this package's cached kernels when any kernel source has changed since they
    were compiled. numba keys each cached function on its own file only, so a kernel in
    ``cpu.py`` would keep an old copy of a changed helper from this file inlined: wrong
    numbers after an upgrade or edit that touches only this file. ``probe``: any of the
    package's cached dispatchers, to find the cache directory numba uses."""
    import hashlib
    from pathlib import Path

    here = Path(__file__).parent
    digest = hashlib.sha256(numba.__version__.encode())
    for name in KERNEL_FILES:
        digest.update((here / name).read_bytes())
    try:
        cache = Path(probe._cache._cache_path)
        stamp = cache / "flashgru-kernels.stamp"
        if stamp.exists() and stamp.read_text() == digest.hexdigest():
            return
        for name in KERNEL_FILES:
            for old in cache.glob(name[:-3] + ".*.nb[ci]"):
                old.unlink(missing_ok=True)
        cache.mkdir(parents=True, exist_ok=True)
        stamp.write_text(digest.hexdigest())
    except (OSError, AttributeError):  # unwritable, or numba moved it: numba decides
        pass


# exp(r) = Σ r^k / k! on |r| ≤ ln2/2, Horner from the highest term (written out: a loop
# over the tuple does not survive numba's inlining): ≤ 4e-16 relative in
# float64 with 13 terms; 8 terms leave ≤ 6e-9, under float32's rounding (6e-8)
_EXP_TAYLOR = (1 / 479001600, 1 / 39916800, 1 / 3628800, 1 / 362880, 1 / 40320, 1 / 5040,
               1 / 720, 1 / 120, 1 / 24, 1 / 6, 1 / 2, 1.0, 1.0)
_EXP_TAYLOR_32 = tuple(np.float32(c) for c in _EXP_TAYLOR[5:])
_LOG2E_32, _HALF_32 = np.float32(1.4426950408889634), np.float32(0.5)
_LN2_HI_32, _LN2_LO_32 = np.float32(0.693359375), np.float32(-2.12194440e-4)  # Cody-Waite
GATE_FLAGS = {"contract"}  # fused multiply-adds in the gate loops; nothing else


@_intrinsic
def _from_bits(typingctx, bits):
    """The float whose bits are ``bits``: int32 → float32, int64 → float64."""
    if not isinstance(bits, types.Integer) or bits.bitwidth not in (32, 64):
        return None
    result = types.float32 if bits.bitwidth == 32 else types.float64

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(result))

    return result(bits), codegen


def _exp(x):
    """exp(x) for a float32 or float64 scalar, in its own precision and in arithmetic that
    LLVM vectorises inside the caller's loop (libm's exp does not): 2^k · P(r) with
    x = k·ln2 + r, 2^k built from its bits. Inlined into the caller (``_exp64``: relative
    error ≤ 4e-16 on [-708, 708]; ``_exp32``: ≤ 2 ulp on [-87, 88]). The argument is
    clamped where 2^k's exponent bits reach 0 or all ones, so far below the range it gives
    exactly 0 and far above exactly inf, as libm's exp at ∓inf: a sigmoid of -inf is 0,
    and an inf state makes 0 · inf = NaN as in torch, not a finite number. NaN stays NaN."""


def _exp64(x):
    v = min(max(x, -709.0), 709.5)  # (k = -1023: 2^k's bits 0; k = 1024: inf)
    k = np.floor(v * 1.4426950408889634 + 0.5)
    r = v - k * 0.6931471803691238 - k * 1.9082149292705877e-10
    c = _EXP_TAYLOR
    p = ((((((((((((c[0] * r + c[1]) * r + c[2]) * r + c[3]) * r + c[4]) * r + c[5]) * r
                + c[6]) * r + c[7]) * r + c[8]) * r + c[9]) * r + c[10]) * r + c[11]) * r
         + c[12])
    return p * _from_bits((np.int64(k) + np.int64(1023)) << np.int64(52))


def _exp32(x):
    v = min(max(x, np.float32(-88.0)), np.float32(88.5))  # (k = -127: 0; 128: inf)
    k = np.floor(v * _LOG2E_32 + _HALF_32)
    r = v - k * _LN2_HI_32 - k * _LN2_LO_32
    c = _EXP_TAYLOR_32
    p = (((((((c[0] * r + c[1]) * r + c[2]) * r + c[3]) * r + c[4]) * r + c[5]) * r + c[6]) * r
         + c[7])
    return p * _from_bits(np.int32((np.int64(k) + 127) << 23))  # (numba widens int32 sums)


if numba is not None:
    @numba.extending.overload(_exp, inline="always")
    def _exp_for(x):
        return _exp32 if x == numba.float32 else _exp64


# One step of gate math for every row, each row one loop over the H units with the exps
# inline, so LLVM vectorises it (separate passes through scratch arrays did not vectorise
# their divisions, and a call per row cost more than its arithmetic at H ≤ 128). All
# arrays are the step's (B, ·) slices; h = h_{t−1} is only read; h_t goes to ``out``. Rows
# with t ≥ lengths[i] are past their sequence: their outputs and gates are set to 0.

@_jit(boundscheck=False, inline="always")
def _past_length(i, out, r_s, z_s, n_s):
    """Row i is past its sequence's length: its output and saved gates are 0."""
    out[i] = 0.0
    r_s[i] = 0.0
    z_s[i] = 0.0
    n_s[i] = 0.0


@_jit(fastmath=GATE_FLAGS, boundscheck=False, inline="always")
def _gates_after(t, gi, gh, b, h, lengths, out, r_s, z_s, n_s, ghn_s):
    """Step t of reset_after=True: from gi (B, 3H), gh = h W_hhᵀ (B, 3H) without bias,
    b = b_hh (3H,) and h (B, H), writes h_t to out and r, z, n and W_hn h + b_hn to r_s,
    z_s, n_s, ghn_s, all (B, H)."""
    batch, hidden = h.shape
    one, two = h.dtype.type(1.0), h.dtype.type(2.0)  # float32 math stays float32
    for i in range(batch):
        if t >= lengths[i]:
            _past_length(i, out, r_s, z_s, n_s)
            ghn_s[i] = 0.0
            continue
        for j in range(hidden):
            r = one / (one + _exp(-(gi[i, j] + gh[i, j] + b[j])))
            z = one / (one + _exp(-(gi[i, hidden + j] + gh[i, hidden + j] + b[hidden + j])))
            ghn = gh[i, 2 * hidden + j] + b[2 * hidden + j]
            n = one - two / (one + _exp(two * (gi[i, 2 * hidden + j] + r * ghn)))  # tanh
            r_s[i, j] = r
            z_s[i, j] = z
            n_s[i, j] = n
            ghn_s[i, j] = ghn
            out[i, j] = (one - z) * n + z * h[i, j]


@_jit(fastmath=GATE_FLAGS, boundscheck=False, inline="always")
def _rz_before(gi, gh, b, h, r_s, z_s, rh):
    """Step of reset_after=False, first half, every row: r and z from gi (B, 3H), gh =
    h W_hr,zᵀ (B, 2H), b = b_hh (3H,) and h (B, H); writes r_s, z_s and rh = r ⊙ h, all
    (B, H). (Rows past their length are zeroed by ``_n_before``.)"""
    batch, hidden = h.shape
    one = h.dtype.type(1.0)
    for i in range(batch):
        for j in range(hidden):
            r = one / (one + _exp(-(gi[i, j] + gh[i, j] + b[j])))
            r_s[i, j] = r
            z_s[i, j] = one / (one + _exp(-(gi[i, hidden + j] + gh[i, hidden + j]
                                            + b[hidden + j])))
            rh[i, j] = r * h[i, j]


@_jit(fastmath=GATE_FLAGS, boundscheck=False, inline="always")
def _n_before(t, gi, ghn, b, h, lengths, out, r_s, z_s, n_s):
    """Step t of reset_after=False, second half: n from gi (B, 3H), ghn = (r ⊙ h) W_hnᵀ
    (B, H) and b (3H,); with z_s and h = h_{t−1} (B, H), writes h_t to out and n to n_s."""
    batch, hidden = h.shape
    one, two = h.dtype.type(1.0), h.dtype.type(2.0)
    for i in range(batch):
        if t >= lengths[i]:
            _past_length(i, out, r_s, z_s, n_s)
            continue
        for j in range(hidden):
            n = one - two / (one + _exp(two * (gi[i, 2 * hidden + j] + ghn[i, j]
                                                + b[2 * hidden + j])))
            z = z_s[i, j]
            n_s[i, j] = n
            out[i, j] = (one - z) * n + z * h[i, j]


if numba is not None:
    _drop_stale_cache(_gemv_rows)
    GEMM_FROM = _register_gemm()
