"""Numba kernels for CSR sparse matrices on plain NumPy arrays.

A CSR matrix with ``n_rows`` rows is passed as its three arrays: ``indptr``
(``n_rows + 1``), ``indices`` and ``data`` (both ``nnz``), exactly the
``indptr``/``indices``/``data`` attributes of a ``scipy.sparse.csr_array``.
The kernels never touch Python objects, so they compile in nopython mode and
release the GIL.

Dtypes
------
Floating-point arrays may be float32 or float64 and index arrays int32 or
int64; Numba compiles (and caches on disk) one specialisation per
combination. All products and sums are carried out in ``out.dtype``: inputs
are cast to it element by element, so a float32 ``out`` means float32
arithmetic, as in scipy's own ``A @ x``.

Why each kernel is split in two
-------------------------------
Numba specialises on the number of dimensions, and the 1-D and 2-D loops are
genuinely different (the 2-D one has an inner loop over right-hand sides), so
each public name is a small Python dispatcher that checks shapes (Numba does
no bounds checking: a wrong ``out`` would mean silent memory corruption) and
calls ``_<name>_1d`` or ``_<name>_2d``.

The CuPy twins in :mod:`diffsolve.kernels.cuda.sparse` have identical
signatures and semantics.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._config import call_threaded, jit, serial_twin

__all__ = ["csr_matvec", "csr_sampled_outer"]

# Indices are cast to an unsigned integer before they index an array. With a
# signed index Numba must emit a wraparound test (``if j < 0: j += n``) on
# every access; an unsigned one proves that test away. In the gather
# ``x[indices[jj]]`` of a matvec this branch measurably slows the inner loop
# (about 1.4x single-threaded on the 5-point Poisson matrix). Valid CSR
# indices are never negative, so the cast changes no result.
_uidx = np.uintp


# --------------------------------------------------------------------------
# csr_matvec
# --------------------------------------------------------------------------


@jit(parallel=True)
def _csr_matvec_1d(indptr, indices, data, x, out):  # pragma: no cover - compiled
    """Compiled body of :func:`csr_matvec` for 1-D ``x``; see there."""
    n_rows = indptr.shape[0] - 1
    # Rows are independent, so they are split across threads with no
    # synchronisation: each thread writes only its own out[i].
    for i in prange(n_rows):
        # A scalar accumulator stays in a register; out.dtype.type makes it
        # (and every product) use out's precision whatever the input dtypes.
        acc = out.dtype.type(0)
        for jj in range(_uidx(indptr[i]), _uidx(indptr[i + 1])):
            acc += out.dtype.type(data[jj]) * out.dtype.type(x[_uidx(indices[jj])])
        out[i] = acc
    return out


@jit(parallel=True)
def _csr_matvec_2d(indptr, indices, data, x, out):  # pragma: no cover - compiled
    """Compiled body of :func:`csr_matvec` for 2-D ``x``; see there."""
    n_rows = indptr.shape[0] - 1
    k = x.shape[1]
    for i in prange(n_rows):
        # The accumulator is the row out[i, :] itself: its k entries belong
        # to this thread alone and stay in L1 cache for the whole row. Walking
        # the stored entries once, with the k right-hand sides innermost,
        # reads each contiguous row x[j, :] in one go and each index/value
        # once; looping over the k columns outermost with a scalar
        # accumulator re-reads the row's indices k times with a strided
        # gather, which measured up to 2x slower for k = 4..8. The summation
        # order per column, and so the result, is the same either way.
        for c in range(k):
            out[i, c] = 0
        for jj in range(_uidx(indptr[i]), _uidx(indptr[i + 1])):
            a = out.dtype.type(data[jj])
            j = _uidx(indices[jj])
            for c in range(k):
                out[i, c] += a * out.dtype.type(x[j, c])
    return out


_csr_matvec_1d_serial = serial_twin(_csr_matvec_1d)
_csr_matvec_2d_serial = serial_twin(_csr_matvec_2d)


def csr_matvec(indptr, indices, data, x, out):
    """Sparse matrix times dense vector or matrix, ``out = A @ x``.

    Multithreaded over rows (``numba.prange``); the number of threads is
    Numba's (``NUMBA_NUM_THREADS`` / ``numba.set_num_threads``).

    Parameters
    ----------
    indptr : numpy.ndarray of int32 or int64, shape (n_rows + 1,)
        CSR row pointer of ``A``.
    indices : numpy.ndarray of int32 or int64, shape (nnz,)
        CSR column indices of ``A``; every entry must lie in
        ``[0, n_cols)`` (not checked).
    data : numpy.ndarray of float32 or float64, shape (nnz,)
        CSR stored values of ``A``.
    x : numpy.ndarray of float32 or float64, shape (n_cols,) or (n_cols, k)
        Dense right-hand side(s). C-contiguous is fastest; other layouts
        work but compile a separate, slower specialisation.
    out : numpy.ndarray of float32 or float64, shape (n_rows,) or (n_rows, k)
        Preallocated result with the same number of dimensions as ``x``.
        Its previous contents are ignored (it may come from ``np.empty``).
        Must not overlap ``x``.

    Returns
    -------
    numpy.ndarray
        ``out`` itself, holding ``A @ x`` computed in ``out.dtype``.

    Raises
    ------
    ValueError
        If ``x`` is not 1-D or 2-D, or if the shapes of ``indices``,
        ``data``, ``x`` and ``out`` disagree.

    Notes
    -----
    The first call for a new combination of dtypes and dimensions compiles
    the kernel (or loads it from Numba's on-disk cache).

    Examples
    --------
    >>> import numpy as np
    >>> import scipy.sparse as sp
    >>> A = sp.csr_array(np.array([[1.0, 0.0], [2.0, 3.0]]))
    >>> x = np.array([1.0, 1.0])
    >>> csr_matvec(A.indptr, A.indices, A.data, x, np.empty(2))
    array([1., 5.])
    """
    n_rows = indptr.shape[0] - 1
    if indices.shape != data.shape:
        raise ValueError(
            f"indices and data must have the same shape, got {indices.shape} and {data.shape}"
        )
    if x.ndim == 1:
        if out.shape != (n_rows,):
            raise ValueError(f"out must have shape {(n_rows,)} for 1-D x, got {out.shape}")
        call_threaded(_csr_matvec_1d, data.size, indptr, indices, data, x, out,
                      serial=_csr_matvec_1d_serial)
    elif x.ndim == 2:
        expected = (n_rows, x.shape[1])
        if out.shape != expected:
            raise ValueError(f"out must have shape {expected} for 2-D x, got {out.shape}")
        call_threaded(_csr_matvec_2d, data.size * x.shape[1], indptr, indices, data, x, out,
                      serial=_csr_matvec_2d_serial)
    else:
        raise ValueError(f"x must be 1-D or 2-D, got {x.ndim}-D")
    return out


# --------------------------------------------------------------------------
# csr_sampled_outer (SDDMM)
# --------------------------------------------------------------------------


@jit(parallel=True)
def _csr_sampled_outer_1d(indptr, indices, u, v, out):  # pragma: no cover - compiled
    """Compiled body of :func:`csr_sampled_outer` for 1-D ``u``, ``v``."""
    n_rows = indptr.shape[0] - 1
    for i in prange(n_rows):
        # u[i] is shared by the whole row: load and cast it once.
        ui = out.dtype.type(u[i])
        for jj in range(_uidx(indptr[i]), _uidx(indptr[i + 1])):
            out[jj] = ui * out.dtype.type(v[_uidx(indices[jj])])
    return out


@jit(parallel=True)
def _csr_sampled_outer_2d(indptr, indices, u, v, out):  # pragma: no cover - compiled
    """Compiled body of :func:`csr_sampled_outer` for 2-D ``u``, ``v``."""
    n_rows = indptr.shape[0] - 1
    k = u.shape[1]
    for i in prange(n_rows):
        for jj in range(_uidx(indptr[i]), _uidx(indptr[i + 1])):
            j = _uidx(indices[jj])
            # One dot product of two contiguous length-k rows per stored
            # entry; a scalar accumulator keeps it in a register.
            acc = out.dtype.type(0)
            for c in range(k):
                acc += out.dtype.type(u[i, c]) * out.dtype.type(v[j, c])
            out[jj] = acc
    return out


_csr_sampled_outer_1d_serial = serial_twin(_csr_sampled_outer_1d)
_csr_sampled_outer_2d_serial = serial_twin(_csr_sampled_outer_2d)


def csr_sampled_outer(indptr, indices, u, v, out):
    """Outer product ``u @ v.T`` sampled on a CSR sparsity pattern (SDDMM).

    For every stored entry ``jj`` of the pattern, at row ``i`` and column
    ``j = indices[jj]``::

        out[jj] = sum_c u[i, c] * v[j, c]    (2-D u, v)
        out[jj] = u[i] * v[j]                (1-D u, v)

    This is the gradient with respect to the ``data`` array of a CSR matrix
    ``A`` of a scalar loss whose gradient with respect to the dense ``A`` is
    ``u @ v.T``: e.g. for ``y = A @ x`` with incoming gradient ``g``,
    ``d loss / d data = csr_sampled_outer(indptr, indices, g, x, out)``.
    Only the stored pattern is computed, so the cost is ``O(nnz * k)``
    rather than ``O(n_rows * n_cols * k)``.

    Multithreaded over rows (``numba.prange``).

    Parameters
    ----------
    indptr : numpy.ndarray of int32 or int64, shape (n_rows + 1,)
        CSR row pointer of the pattern.
    indices : numpy.ndarray of int32 or int64, shape (nnz,)
        CSR column indices of the pattern; every entry must lie in
        ``[0, n_cols)`` (not checked).
    u : numpy.ndarray of float32 or float64, shape (n_rows,) or (n_rows, k)
        Left factor.
    v : numpy.ndarray of float32 or float64, shape (n_cols,) or (n_cols, k)
        Right factor, with the same number of dimensions (and ``k``) as ``u``.
    out : numpy.ndarray of float32 or float64, shape (nnz,)
        Preallocated result, aligned with ``indices``. Its previous contents
        are ignored.

    Returns
    -------
    numpy.ndarray
        ``out`` itself, computed in ``out.dtype``.

    Raises
    ------
    ValueError
        If ``u`` and ``v`` are not both 1-D or both 2-D with the same ``k``,
        if ``u`` has the wrong number of rows, or if ``out`` does not have
        the shape of ``indices``.

    Examples
    --------
    >>> import numpy as np
    >>> import scipy.sparse as sp
    >>> A = sp.csr_array(np.array([[1.0, 0.0], [2.0, 3.0]]))
    >>> u = np.array([1.0, 2.0])
    >>> v = np.array([10.0, 100.0])
    >>> csr_sampled_outer(A.indptr, A.indices, u, v, np.empty(3))
    array([ 10.,  20., 200.])
    """
    n_rows = indptr.shape[0] - 1
    if out.shape != indices.shape:
        raise ValueError(f"out must have the shape of indices {indices.shape}, got {out.shape}")
    if u.ndim != v.ndim:
        raise ValueError(f"u and v must have the same ndim, got {u.ndim} and {v.ndim}")
    if u.shape[0] != n_rows:
        raise ValueError(f"u must have {n_rows} rows, got shape {u.shape}")
    if u.ndim == 1:
        call_threaded(_csr_sampled_outer_1d, indices.size, indptr, indices, u, v, out,
                      serial=_csr_sampled_outer_1d_serial)
    elif u.ndim == 2:
        if u.shape[1] != v.shape[1]:
            raise ValueError(
                f"u and v must have the same number of columns, got {u.shape} and {v.shape}"
            )
        call_threaded(_csr_sampled_outer_2d, indices.size * u.shape[1], indptr, indices, u, v,
                      out, serial=_csr_sampled_outer_2d_serial)
    else:
        raise ValueError(f"u and v must be 1-D or 2-D, got {u.ndim}-D")
    return out
