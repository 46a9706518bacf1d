"""Numba kernels for the vector work of Krylov iterations (conjugate gradients).

A CG iteration on ``k`` right-hand sides at once touches five ``(n, k)`` arrays. Written as
separate array expressions that is about ten passes over memory and as many temporaries;
these kernels fuse them into three passes that update in place, and split the rows across
threads. Arrays are C-contiguous ``(n, k)`` (a 1-D vector is passed as an ``(n, 1)`` view);
per-column scalars are ``(k,)`` arrays.

Column sums are reduced over fixed row blocks (one partial sum per block, then the blocks
in order), so a result does not depend on the number of threads.

The CuPy twins in :mod:`diffsolve.kernels.cuda.krylov` have identical signatures.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ._config import call_threaded, jit, serial_twin
from .sparse import _csr_matvec_1d, _csr_matvec_1d_serial

__all__ = ["cg_direction", "cg_next", "cg_solve_csr", "cg_step_size", "cg_update", "column_dots",
           "curvature_dots"]

# rows per block of a column reduction: large enough to amortise the block loop, small
# enough to give every thread several blocks on the smallest problems worth threading
_BLOCK = 2048


@jit(parallel=True)
def _column_dots(a, b, out):  # pragma: no cover - compiled
    n, k = a.shape
    n_blocks = (n + _BLOCK - 1) // _BLOCK
    partial = np.zeros((n_blocks, k), dtype=out.dtype)
    for blk in prange(n_blocks):
        lo, hi = blk * _BLOCK, min(n, (blk + 1) * _BLOCK)
        # column-outer inside a block: the block stays in cache and the sum in a register
        for c in range(k):
            s = out.dtype.type(0)
            for i in range(lo, hi):
                s += a[i, c] * b[i, c]
            partial[blk, c] = s
    for c in range(k):
        s = out.dtype.type(0)
        for blk in range(n_blocks):
            s += partial[blk, c]
        out[c] = s
    return out


def column_dots(a, b, out):
    """``out[c] = sum_i a[i, c] * b[i, c]`` for C-contiguous ``(n, k)`` ``a``, ``b``.

    Returns ``out`` (shape ``(k,)``), filled in place.
    """
    return call_threaded(_column_dots, a.size, a, b, out, serial=_column_dots_serial)


@jit(parallel=True)
def _curvature_dots(p, Ap, out):  # pragma: no cover - compiled
    n, k = p.shape
    n_blocks = (n + _BLOCK - 1) // _BLOCK
    partial = np.zeros((n_blocks, 3, k), dtype=out.dtype)
    for blk in prange(n_blocks):
        lo, hi = blk * _BLOCK, min(n, (blk + 1) * _BLOCK)
        for c in range(k):
            s0 = s1 = s2 = out.dtype.type(0)
            for i in range(lo, hi):
                pi = p[i, c]
                qi = Ap[i, c]
                s0 += pi * pi
                s1 += pi * qi
                s2 += qi * qi
            partial[blk, 0, c] = s0
            partial[blk, 1, c] = s1
            partial[blk, 2, c] = s2
    for j in range(3):
        for c in range(k):
            s = out.dtype.type(0)
            for blk in range(n_blocks):
                s += partial[blk, j, c]
            out[j, c] = s
    return out


def curvature_dots(p, Ap, out):
    """``out[0] = pᵀp``, ``out[1] = pᵀAp``, ``out[2] = (Ap)ᵀAp`` per column, in one pass.

    ``out`` has shape ``(3, k)``; returned after being filled in place.
    """
    return call_threaded(_curvature_dots, p.size, p, Ap, out, serial=_curvature_dots_serial)


@jit(parallel=True)
def _cg_update(x, r, p, Ap, alpha, rr):  # pragma: no cover - compiled
    n, k = x.shape
    n_blocks = (n + _BLOCK - 1) // _BLOCK
    partial = np.zeros((n_blocks, k), dtype=rr.dtype)
    for blk in prange(n_blocks):
        lo, hi = blk * _BLOCK, min(n, (blk + 1) * _BLOCK)
        for c in range(k):
            a = alpha[c]
            s = rr.dtype.type(0)
            for i in range(lo, hi):
                x[i, c] += a * p[i, c]
                ri = r[i, c] - a * Ap[i, c]
                r[i, c] = ri
                s += ri * ri
            partial[blk, c] = s
    for c in range(k):
        s = rr.dtype.type(0)
        for blk in range(n_blocks):
            s += partial[blk, c]
        rr[c] = s
    return rr


def cg_update(x, r, p, Ap, alpha, rr):
    """``x += alpha p``, ``r -= alpha Ap`` in place, and ``rr = ||r||²`` per column.

    ``alpha`` and ``rr`` have shape ``(k,)``; a zero ``alpha`` leaves a column unchanged.
    Returns ``rr``.
    """
    return call_threaded(_cg_update, x.size, x, r, p, Ap, alpha, rr, serial=_cg_update_serial)


@jit(parallel=True)
def _cg_direction(p, z, beta):  # pragma: no cover - compiled
    n, k = p.shape
    for i in prange(n):
        for c in range(k):
            p[i, c] = z[i, c] + beta[c] * p[i, c]
    return p


_column_dots_serial = serial_twin(_column_dots)
_curvature_dots_serial = serial_twin(_curvature_dots)
_cg_update_serial = serial_twin(_cg_update)
_cg_direction_serial = serial_twin(_cg_direction)


def cg_direction(p, z, beta):
    """``p = z + beta p`` in place (``beta`` per column); returns ``p``."""
    return call_threaded(_cg_direction, p.size, p, z, beta, serial=_cg_direction_serial)


# --------------------------------------------------------------------------------------
# per-column scalars: a dozen tiny array expressions per iteration fused into two calls,
# which is what bounds CG's speed on small systems (Python overhead, GPU launches)
# --------------------------------------------------------------------------------------
@jit()
def cg_step_size(rz, curv, a_norm, active, bad, floor, alpha):  # pragma: no cover - compiled
    """Step length per column and the breakdown test, in place.

    ``curv`` is the ``(3, k)`` output of :func:`curvature_dots`. Updates the running
    estimate ``a_norm = max(a_norm, ||Ap|| / ||p||)``, flags ``bad`` where an active column
    has ``pᵀAp <= floor · pᵀp · a_norm`` (no positive curvature: A is singular or
    indefinite), and writes ``alpha = rᵀz / pᵀAp`` for active, unflagged columns, 0 for the
    rest. Returns ``alpha``.
    """
    for c in range(rz.shape[0]):
        pp = curv[0, c]
        pAp = curv[1, c]
        if pp > 0:
            est = np.sqrt(curv[2, c] / pp)
            if est > a_norm[c]:
                a_norm[c] = est
        if active[c] and pAp <= floor * pp * a_norm[c]:
            bad[c] = True
        if active[c] and not bad[c]:
            alpha[c] = rz[c] / pAp
        else:
            alpha[c] = 0.0
    return alpha


@jit()
def cg_next(rz, rz_new, rr, tol, active, bad, column_iters, beta):  # pragma: no cover
    """Direction coefficient and bookkeeping after an update, in place.

    For columns that stepped (active and not flagged): ``beta = rz_new / rz``, ``rz``
    takes ``rz_new`` and ``column_iters`` grows by one; every column stays active only if
    it stepped and ``sqrt(rr) > tol``. Returns ``beta``.
    """
    for c in range(rz.shape[0]):
        step = active[c] and not bad[c]
        if step and rz[c] != 0:
            beta[c] = rz_new[c] / rz[c]
        else:
            beta[c] = 0.0
        if step:
            rz[c] = rz_new[c]
            column_iters[c] += 1
        active[c] = step and np.sqrt(rr[c]) > tol[c]
    return beta


# --------------------------------------------------------------------------------------
# the whole CG loop, compiled (CPU only): no Python between iterations
# --------------------------------------------------------------------------------------
CG_CONVERGED, CG_MAXITER, CG_BREAKDOWN, CG_NONFINITE = 0, 1, 2, 3
#: work per iteration (nnz + 5 n) below which the compiled CG loop runs on one thread
CG_SERIAL_BELOW = 1 << 18


@jit()
def _cg_solve_csr(indptr, indices, data, b, x, inv_diag, precondition, tol, maxiter,
                  floor):  # pragma: no cover - compiled
    n = b.shape[0]
    dt = x.dtype.type
    x2 = x.reshape((n, 1))
    r = np.empty((n, 1), dtype=x.dtype)
    Ap = np.empty((n, 1), dtype=x.dtype)
    _csr_matvec_1d(indptr, indices, data, x, Ap[:, 0])
    for i in range(n):
        r[i, 0] = b[i] - Ap[i, 0]
    z = np.empty((n, 1), dtype=x.dtype) if precondition else r
    if precondition:
        for i in range(n):
            z[i, 0] = inv_diag[i] * r[i, 0]
    p = z.copy()
    one = np.empty(1, dtype=x.dtype)
    rz = _column_dots(r, z, one)[0]
    rr = rz if not precondition else _column_dots(r, r, one)[0]
    if not np.isfinite(rr) or not np.isfinite(rz):
        return 0, CG_NONFINITE
    if np.sqrt(rr) <= tol:
        return 0, CG_CONVERGED
    curv = np.empty((3, 1), dtype=x.dtype)
    alpha = np.empty(1, dtype=x.dtype)
    beta = np.empty(1, dtype=x.dtype)
    rr_out = np.empty(1, dtype=x.dtype)
    a_norm = dt(0)
    it = 0
    while it < maxiter:
        _csr_matvec_1d(indptr, indices, data, p[:, 0], Ap[:, 0])
        _curvature_dots(p, Ap, curv)
        pp, pAp = curv[0, 0], curv[1, 0]
        if pp > 0:
            a_norm = max(a_norm, np.sqrt(curv[2, 0] / pp))
        if pAp <= floor * pp * a_norm:
            return it, CG_BREAKDOWN
        alpha[0] = rz / pAp
        rr = _cg_update(x2, r, p, Ap, alpha, rr_out)[0]
        it += 1
        if not np.isfinite(rr):
            # a NaN would fail every later test and run out the budget
            return it, CG_NONFINITE
        if np.sqrt(rr) <= tol:
            return it, CG_CONVERGED
        if precondition:
            for i in range(n):
                z[i, 0] = inv_diag[i] * r[i, 0]
            rz_new = _column_dots(r, z, one)[0]
        else:
            rz_new = rr
        beta[0] = rz_new / rz if rz != 0 else dt(0)
        rz = rz_new
        _cg_direction(p, z, beta)
    return it, CG_MAXITER


# the loop and the kernels it calls built once more for one thread (no parallel regions)
_cg_solve_csr_serial = serial_twin(
    _cg_solve_csr, _csr_matvec_1d=_csr_matvec_1d_serial, _column_dots=_column_dots_serial,
    _curvature_dots=_curvature_dots_serial, _cg_update=_cg_update_serial,
    _cg_direction=_cg_direction_serial)


def cg_solve_csr(indptr, indices, data, b, x, inv_diag, tol, maxiter, floor):
    """Conjugate gradients on a CSR matrix, the whole iteration in one compiled call.

    The same iteration, recursive stopping rule and breakdown test as the Python-driven
    loop of :func:`diffsolve.krylov.cg` (which it matches iterate for iterate), built from
    the kernels above, for a 1-D ``b``; ``x`` (the initial guess) is overwritten by the
    solution. It starts from the true residual ``b - A x``, so calling it again from its
    own output is a restart; :func:`diffsolve.krylov.cg` does that when the true residual
    misses the tolerance the recursive one met. ``inv_diag`` is ``1 / diag(A)`` for Jacobi
    preconditioning, or ``None``. CPU only: on the GPU every iteration is a handful of
    kernel launches anyway, and the Python-driven loop already runs them.

    Returns ``(n_iters, status)`` with status ``CG_CONVERGED`` (0: the recursive residual
    met ``tol``), ``CG_MAXITER`` (1), ``CG_BREAKDOWN`` (2: a direction with
    ``pᵀAp <= floor·pᵀp·||A||``) or ``CG_NONFINITE`` (3: NaN or inf in the residual).

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> A = sp.csr_matrix(np.array([[4.0, 1.0], [1.0, 3.0]]))
    >>> x = np.zeros(2)
    >>> cg_solve_csr(A.indptr, A.indices, A.data, np.array([1.0, 2.0]), x, None, 1e-12, 10,
    ...              1e-15)
    (2, 0)
    >>> np.allclose(A @ x, [1.0, 2.0])
    True
    """
    if b.ndim != 1 or x.shape != b.shape or not x.flags.c_contiguous:
        raise ValueError("cg_solve_csr takes a 1-D b and a C-contiguous x of the same shape")
    precondition = inv_diag is not None
    if not precondition:
        inv_diag = np.empty(0, dtype=x.dtype)
    # work of one iteration: a CSR product and five passes over vectors. Each iteration
    # opens several parallel regions; measured on 2 cores (load ~2), one thread is as fast
    # or faster up to a 192² Poisson matrix (work ~3.7e5), 2.5x faster at 24²
    # (bench/bench_speed_setup.py). Below the threshold (or with one Numba thread) the
    # one-thread build runs, which opens no parallel region; above it call_threaded
    # measures and chooses. Both builds give the same bits.
    work = data.size + 5 * b.shape[0]
    args = (indptr, indices, data, b, x, inv_diag, precondition, x.dtype.type(tol),
            int(maxiter), x.dtype.type(floor))
    if work < CG_SERIAL_BELOW or numba.get_num_threads() == 1:
        n_iters, status = _cg_solve_csr_serial(*args)
    else:
        n_iters, status = call_threaded(_cg_solve_csr, work, *args,
                                        serial_below=CG_SERIAL_BELOW,
                                        repeats=lambda out: out[0])
    return int(n_iters), int(status)
