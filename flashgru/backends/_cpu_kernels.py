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


@_jit(boundscheck=False)
def _matmul(a, w, out):
    """out (B, N) = a (B, K) @ w (K, N)."""
    if a.shape[0] == 1:
        _matvec(a[0], w, out[0])
    else:
        np.dot(a, w, out)


# exp(r) = Σ r^k / k! on |r| ≤ ln2/2, Horner from the highest term: ≤ 4e-16 relative in
# float64 with 13 terms; 8 terms leave ≤ 6e-9, under float32's rounding (6e-8)
_EXP_TAYLOR = (1 / 479001600, 1 / 39916800, 1 / 3628800, 1 / 362880, 1 / 40320, 1 / 5040,
               1 / 720, 1 / 120, 1 / 24, 1 / 6, 1 / 2, 1.0, 1.0)
_EXP_TAYLOR_32 = tuple(np.float32(c) for c in _EXP_TAYLOR[5:])
_LOG2E_32, _HALF_32 = np.float32(1.4426950408889634), np.float32(0.5)
_LN2_HI_32, _LN2_LO_32 = np.float32(0.693359375), np.float32(-2.12194440e-4)  # Cody-Waite


def _vexp(x, bits):
    """x[:] = exp(x[:]) for a 1-D array, in arithmetic that LLVM vectorises (libm's exp
    does not): 2^k · P(r) with x = k·ln2 + r. ``bits``: int64 scratch as long as x. numba
    compiles the body for x's dtype: ``_vexp64`` (relative error ≤ 4e-16, arguments clamped
    to ±708) or ``_vexp32`` (8 float32 lanes per vector, ≤ 2 ulp, clamped to [-87, 88])."""


def _vexp64(x, bits):
    for j in range(x.shape[0]):
        v = min(max(np.float64(x[j]), -708.0), 708.0)
        k = np.floor(v * 1.4426950408889634 + 0.5)
        r = v - k * 0.6931471803691238 - k * 1.9082149292705877e-10
        p = 0.0
        for c in _EXP_TAYLOR:
            p = p * r + c
        x[j] = p
        bits[j] = (np.int64(k) + 1023) << 52
    scale = bits.view(np.float64)
    for j in range(x.shape[0]):
        x[j] *= scale[j]


def _vexp32(x, bits):
    n = x.shape[0]
    bits32 = bits.view(np.int32)[:n]
    for j in range(n):
        v = min(max(x[j], np.float32(-87.0)), np.float32(88.0))
        k = np.floor(v * _LOG2E_32 + _HALF_32)
        r = v - k * _LN2_HI_32 - k * _LN2_LO_32
        p = np.float32(0.0)
        for c in _EXP_TAYLOR_32:
            p = p * r + c
        x[j] = p
        bits32[j] = (np.int32(k) + 127) << 23
    scale = bits32.view(np.float32)
    for j in range(n):
        x[j] *= scale[j]


if numba is not None:
    @numba.extending.overload(_vexp, jit_options={"fastmath": {"contract"},
                                                  "boundscheck": False,
                                                  "error_model": "numpy"})
    def _vexp_for(x, bits):
        return _vexp32 if x.dtype == numba.float32 else _vexp64


@_jit(boundscheck=False)
def _rz_exp(gi, gh, b, a, c, bits):
    """a = exp(−r's pre-activation), c = exp(−z's), each (H,), from gi, gh and b: the
    sigmoids' shared first half, r = 1 / (1 + a) and z = 1 / (1 + c)."""
    hidden = a.shape[0]
    for j in range(hidden):
        a[j] = -(gi[j] + gh[j] + b[j])
        c[j] = -(gi[hidden + j] + gh[hidden + j] + b[hidden + j])
    _vexp(a, bits)
    _vexp(c, bits)


@_jit(boundscheck=False)
def _gates_after(gi, gh, b, h, r_s, z_s, n_s, ghn_s, out, a, c, bits):
    """One row of reset_after=True: the gates from gi (3H,) and gh = W_hh h (3H,); h (H,)
    is updated in place. a, c: float scratch (H,)."""
    hidden = h.shape[0]
    one, two = a.dtype.type(1.0), a.dtype.type(2.0)  # float32 math stays float32
    _rz_exp(gi, gh, b, a, c, bits)
    for j in range(hidden):
        r = one / (one + a[j])
        z = one / (one + c[j])
        ghn = gh[2 * hidden + j] + b[2 * hidden + j]
        r_s[j] = r
        z_s[j] = z
        ghn_s[j] = ghn
        a[j] = two * (gi[2 * hidden + j] + r * ghn)
    _vexp(a, bits)
    for j in range(hidden):
        n = one - two / (one + a[j])  # tanh
        z = z_s[j]
        h[j] = (one - z) * n + z * h[j]
        n_s[j] = n
        out[j] = h[j]


@_jit(boundscheck=False)
def _rz_before(gi, gh, b, h, r_s, z_s, rh, a, c, bits):
    """One row of reset_after=False, first half: r and z from gi (3H,), gh = W_hr,z h
    (2H,) and b = b_hh (3H,); writes r_s, z_s and rh = r ⊙ h, all (H,). a, c: scratch."""
    hidden = h.shape[0]
    one = a.dtype.type(1.0)  # float32 math stays float32
    _rz_exp(gi, gh, b, a, c, bits)
    for j in range(hidden):
        r = one / (one + a[j])
        r_s[j] = r
        z_s[j] = one / (one + c[j])
        rh[j] = r * h[j]


@_jit(boundscheck=False)
def _n_before(gi, ghn, b, z_s, h, n_s, out, a, bits):
    """One row of reset_after=False, second half: n from gi (3H,), ghn = W_hn (r ⊙ h)
    (H,) and b (3H,); h (H,) is updated in place and copied to out; writes n_s (H,)."""
    hidden = h.shape[0]
    one, two = a.dtype.type(1.0), a.dtype.type(2.0)  # float32 math stays float32
    for j in range(hidden):
        a[j] = two * (gi[2 * hidden + j] + ghn[j] + b[2 * hidden + j])
    _vexp(a, bits)
    for j in range(hidden):
        n = one - two / (one + a[j])  # tanh
        z = z_s[j]
        h[j] = (one - z) * n + z * h[j]
        out[j] = h[j]
        n_s[j] = n
