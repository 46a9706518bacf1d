"""Numba kernels for SOR / SSOR relaxation on CSR matrices.

Conventions
-----------
A square CSR matrix ``A`` with ``n`` rows is passed as its three arrays
``indptr``, ``indices``, ``data`` in canonical form (sorted, no duplicates),
plus ``diag``, an ``(n,)`` array of its diagonal values, which the caller
precomputes once (e.g. ``A.diagonal()``) and guarantees to be non-zero.
``b`` and ``x`` are ``(n,)`` or ``(n, k)`` float32/float64 arrays, C-contiguous
for speed; ``x`` is updated **in place** and returned. All arithmetic is done
in ``x.dtype`` (other inputs are cast element by element), except residual
norms, which are accumulated in float64.

One SOR update of row ``i`` is::

    x_i <- (1 - omega) * x_i + omega * (b_i - sum_{j != i} a_ij x_j) / a_ii

using the newest value of every ``x_j``. A forward sweep visits rows
``0 .. n-1``, a backward sweep ``n-1 .. 0``, a symmetric (SSOR) sweep does
one then the other. The forward sweep is exactly PyAMG's
``pyamg.relaxation.relaxation.sor(A, x, b, omega, sweep='forward')``. One
SSOR sweep from ``x = 0`` with right-hand side ``r`` computes ``M^-1 r`` for
the SSOR preconditioner ``M = (D + wL) D^-1 (D + wU) / (w (2 - w))``.

Sequential and multicolour sweeps
---------------------------------
A sequential sweep is inherently serial (row ``i`` needs the new ``x_{i-1}``),
so :func:`sor_sweep` runs on one thread. The multicolour form partitions the
rows into colours such that no two rows of one colour are coupled
(:func:`greedy_coloring`, :func:`color_groups`); the rows of one colour then
update in parallel, colour after colour. This is exactly a sequential sweep
in the row order ``color_rows`` -- a different ordering, hence a different
(but equally valid) iteration from the natural-order one.

The CuPy twins in :mod:`diffsolve.kernels.cuda.relaxation` have identical
signatures and semantics (there is no sequential sweep on the GPU).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._validate import check_relaxation_system, check_sor_solve_args
from ._config import jit

__all__ = [
    "color_groups",
    "greedy_coloring",
    "sor_solve",
    "sor_sweep",
    "sor_sweep_multicolor",
    "ssor_sweep",
    "ssor_sweep_multicolor",
]

# Indices are cast to an unsigned integer before they index an array: with a
# signed index Numba emits a wraparound test (``if j < 0: j += n``) on every
# access, which an unsigned one proves away (see kernels/cpu/sparse.py).
# Valid CSR indices are never negative, so the cast changes no result.
_uidx = np.uintp

# Rows per block in the parallel kernels' work split. Residual norms are
# summed over fixed blocks, one partial sum per block, then the blocks in
# order, so a result does not depend on the number of threads.
_BLOCK = 2048


# --------------------------------------------------------------------------
# One row update, shared by every sweep below
# --------------------------------------------------------------------------

# The row updates are inlined into their callers at Numba-IR level: as plain
# njit functions they are compiled separately and called per row (LLVM did
# not inline them), which made the sequential sweep 1.5x slower on the
# 5-point Poisson matrix. Same flags as every kernel (_config), plus inline.
_inline = jit(inline="always")


@_inline
def _relax_row_1d(indptr, indices, data, diag, b, x, i, omega, keep):  # pragma: no cover
    """SOR update of row ``i`` of a 1-D ``x``; ``keep = 1 - omega``."""
    t = x.dtype.type
    # The off-diagonal sum lives in a register. Skipping j == i with a
    # comparison (rather than summing all entries and subtracting a_ii x_i)
    # avoids cancellation when the diagonal dominates, and the branch is
    # perfectly predicted on stencil matrices.
    s = t(0)
    for jj in range(_uidx(indptr[i]), _uidx(indptr[i + 1])):
        j = _uidx(indices[jj])
        if j != i:
            s += t(data[jj]) * x[j]
    # omega / a_ii does not depend on x, so the CPU computes it ahead while
    # the sum above waits for x_{i-1}: the division leaves the row-to-row
    # dependency chain, which is what bounds a sequential sweep (PyAMG's
    # omega * ((b_i - s) / a_ii) keeps it on the chain: ~1.4x slower).
    x[i] = keep * x[i] + omega / t(diag[i]) * (t(b[i]) - s)


@_inline
def _relax_row_2d(indptr, indices, data, diag, b, x, i, omega, keep, acc):  # pragma: no cover
    """SOR update of row ``i`` of a 2-D ``x``; ``acc`` is (k,) scratch."""
    t = x.dtype.type
    k = x.shape[1]
    for c in range(k):
        acc[c] = 0
    # All k right-hand sides of the row at once: each stored entry (index and
    # value) is read once and the contiguous row x[j, :] in one go; the k
    # partial sums stay in L1.
    for jj in range(_uidx(indptr[i]), _uidx(indptr[i + 1])):
        j = _uidx(indices[jj])
        if j != i:
            a = t(data[jj])
            for c in range(k):
                acc[c] += a * x[j, c]
    w = omega / t(diag[i])
    for c in range(k):
        x[i, c] = keep * x[i, c] + w * (t(b[i, c]) - acc[c])


# --------------------------------------------------------------------------
# Sequential sweeps
# --------------------------------------------------------------------------


@jit()
def _sor_sweep_1d(indptr, indices, data, diag, b, x, omega, reverse):  # pragma: no cover
    """Compiled body of :func:`sor_sweep` for 1-D ``x``; see there."""
    n = _uidx(x.shape[0])
    om = x.dtype.type(omega)
    keep = x.dtype.type(1) - om
    for t in range(n):
        i = n - _uidx(1) - t if reverse else t
        _relax_row_1d(indptr, indices, data, diag, b, x, i, om, keep)
    return x


@jit()
def _sor_sweep_2d(indptr, indices, data, diag, b, x, omega, reverse):  # pragma: no cover
    """Compiled body of :func:`sor_sweep` for 2-D ``x``; see there."""
    n = _uidx(x.shape[0])
    om = x.dtype.type(omega)
    keep = x.dtype.type(1) - om
    acc = np.empty(x.shape[1], dtype=x.dtype)
    for t in range(n):
        i = n - _uidx(1) - t if reverse else t
        _relax_row_2d(indptr, indices, data, diag, b, x, i, om, keep, acc)
    return x




def sor_sweep(indptr, indices, data, diag, b, x, omega, reverse=False):
    """One sequential SOR sweep, updating ``x`` in place.

    Row by row (``0 .. n-1``, or ``n-1 .. 0`` when `reverse`)::

        x_i <- (1 - omega) x_i + omega (b_i - sum_{j != i} a_ij x_j) / a_ii

    with the newest value of every ``x_j``. The forward sweep equals PyAMG's
    ``sor(A, x, b, omega, iterations=1, sweep='forward')`` up to rounding.
    Single-threaded: the sweep is sequential by nature (see
    :func:`sor_sweep_multicolor` for the parallel form).

    Parameters
    ----------
    indptr : numpy.ndarray of int32 or int64, shape (n + 1,)
        CSR row pointer of the square matrix ``A``.
    indices : numpy.ndarray of int32 or int64, shape (nnz,)
        CSR column indices, in ``[0, n)`` (not checked).
    data : numpy.ndarray of float32 or float64, shape (nnz,)
        CSR stored values.
    diag : numpy.ndarray of float32 or float64, shape (n,)
        The diagonal of ``A``; every entry must be non-zero. A zero raises
        ``ZeroDivisionError`` here (Numba's Python error model), but gives
        inf/NaN in the multicolour sweeps (Numba's parallel loops follow
        NumPy's error model) and on the GPU.
    b : numpy.ndarray of float32 or float64, shape (n,) or (n, k)
        Right-hand side(s).
    x : numpy.ndarray of float32 or float64, shape of `b`
        Current iterate, overwritten by the new one. C-contiguous is
        fastest; other layouts work but compile a separate specialisation.
        Must not overlap `b`.
    omega : float
        Relaxation factor; the iteration converges for SPD ``A`` iff
        ``0 < omega < 2``. ``omega = 1`` is Gauss--Seidel.
    reverse : bool, default False
        Backward sweep (rows ``n-1 .. 0``) instead of forward.

    Returns
    -------
    numpy.ndarray
        `x` itself.

    Raises
    ------
    ValueError
        If the shapes disagree or `x` is read-only.
    TypeError
        If `x` is not float32/float64.
    ZeroDivisionError
        If a diagonal entry of a visited row is zero.

    Examples
    --------
    >>> import numpy as np
    >>> import scipy.sparse as sp
    >>> A = sp.csr_array(np.array([[4.0, -1.0], [-1.0, 4.0]]))
    >>> x = np.zeros(2)
    >>> sor_sweep(A.indptr, A.indices, A.data, A.diagonal(), np.ones(2), x, 1.0)
    array([0.25  , 0.3125])
    """
    check_relaxation_system(indptr, indices, data, diag, b, x)
    if x.ndim == 1:
        _sor_sweep_1d(indptr, indices, data, diag, b, x, float(omega), bool(reverse))
    else:
        _sor_sweep_2d(indptr, indices, data, diag, b, x, float(omega), bool(reverse))
    return x


def ssor_sweep(indptr, indices, data, diag, b, x, omega):
    """One symmetric SOR (SSOR) sweep: forward, then backward, in place.

    From ``x = 0`` with right-hand side ``r`` this computes ``M^-1 r`` for the
    SSOR preconditioner ``M = (D + omega L) D^-1 (D + omega U) / (omega (2 -
    omega))`` (``A = D + L + U``), which is symmetric positive definite when
    ``A`` is and ``0 < omega < 2``: the CG preconditioner.

    Unlike PyAMG's ``sor(..., sweep='symmetric')`` (which ignores `omega` in
    version 5.4), both half-sweeps use `omega`.

    Parameters
    ----------
    indptr, indices, data, diag, b, x, omega
        As in :func:`sor_sweep`.

    Returns
    -------
    numpy.ndarray
        `x` itself.

    Examples
    --------
    >>> import numpy as np
    >>> import scipy.sparse as sp
    >>> A = sp.csr_array(np.array([[4.0, -1.0], [-1.0, 4.0]]))
    >>> x = np.zeros(2)
    >>> ssor_sweep(A.indptr, A.indices, A.data, A.diagonal(), np.ones(2), x, 1.0)
    array([0.328125, 0.3125  ])
    """
    check_relaxation_system(indptr, indices, data, diag, b, x)
    kernel = _sor_sweep_1d if x.ndim == 1 else _sor_sweep_2d
    kernel(indptr, indices, data, diag, b, x, float(omega), False)
    kernel(indptr, indices, data, diag, b, x, float(omega), True)
    return x


# --------------------------------------------------------------------------
# Multicolour (parallel) sweeps
# --------------------------------------------------------------------------


@jit(parallel=True)
def _sor_sweep_multicolor_1d(
    indptr, indices, data, diag, b, x, omega, color_ptr, color_rows, reverse
):  # pragma: no cover - compiled
    """Compiled body of :func:`sor_sweep_multicolor` for 1-D ``x``."""
    om = x.dtype.type(omega)
    keep = x.dtype.type(1) - om
    n_colors = color_ptr.shape[0] - 1
    for t in range(n_colors):
        c = n_colors - 1 - t if reverse else t
        # No two rows of one colour are coupled, so each row reads only x_j
        # of other colours (final for this colour step) and writes only its
        # own x_i: the rows are independent and need no synchronisation.
        # The parallel region ends (a barrier) before the next colour.
        for q in prange(color_ptr[c], color_ptr[c + 1]):
            i = _uidx(color_rows[q])
            _relax_row_1d(indptr, indices, data, diag, b, x, i, om, keep)
    return x


@jit(parallel=True)
def _sor_sweep_multicolor_2d(
    indptr, indices, data, diag, b, x, omega, color_ptr, color_rows, reverse
):  # pragma: no cover - compiled
    """Compiled body of :func:`sor_sweep_multicolor` for 2-D ``x``."""
    om = x.dtype.type(omega)
    keep = x.dtype.type(1) - om
    k = x.shape[1]
    n_colors = color_ptr.shape[0] - 1
    for t in range(n_colors):
        c = n_colors - 1 - t if reverse else t
        start = color_ptr[c]
        stop = color_ptr[c + 1]
        # Threads take blocks of rows so that each allocates its (k,)
        # accumulator once per block rather than once per row.
        n_blocks = (stop - start + _BLOCK - 1) // _BLOCK
        for blk in prange(n_blocks):
            acc = np.empty(k, dtype=x.dtype)
            lo = start + blk * _BLOCK
            hi = min(stop, lo + _BLOCK)
            for q in range(lo, hi):
                i = _uidx(color_rows[q])
                _relax_row_2d(indptr, indices, data, diag, b, x, i, om, keep, acc)
    return x


def _check_colors(color_ptr, color_rows, n):
    """Validate a colour grouping against ``n`` rows.

    Cheap checks only (shapes and the end points of `color_ptr`), since
    they run on every sweep: that ``color_rows`` is a permutation and the
    colouring is valid are the caller's contract.
    """
    if color_ptr.ndim != 1 or color_ptr.shape[0] < 1:
        raise ValueError(f"color_ptr must be 1-D and non-empty, got shape {color_ptr.shape}")
    if color_rows.shape != (n,):
        raise ValueError(f"color_rows must have shape {(n,)}, got {color_rows.shape}")
    if color_ptr[0] != 0 or color_ptr[-1] != n:
        raise ValueError(
            f"color_ptr must start at 0 and end at n = {n}, "
            f"got {color_ptr[0]} and {color_ptr[-1]}"
        )


def sor_sweep_multicolor(
    indptr, indices, data, diag, b, x, omega, color_ptr, color_rows, reverse=False
):
    """One multicolour SOR sweep, in place, parallel within each colour.

    Colours are visited in order ``0, 1, ...`` (reversed when `reverse`);
    the rows of one colour are updated in parallel (``numba.prange``), which
    is valid because no two rows of one colour are coupled. The result is
    exactly that of a sequential SOR sweep visiting the rows in the order
    ``color_rows`` (reversed when `reverse`), up to rounding -- not that of
    :func:`sor_sweep`, whose row order is the natural one.

    Parameters
    ----------
    indptr, indices, data, diag, b, x, omega
        As in :func:`sor_sweep`. The sparsity pattern must be structurally
        symmetric (or the colouring must come from the pattern of
        ``A + A.T``).
    color_ptr : numpy.ndarray of int64, shape (n_colors + 1,)
        Rows of colour ``c`` are ``color_rows[color_ptr[c]:color_ptr[c+1]]``.
    color_rows : numpy.ndarray of int64 (or int32), shape (n,)
        Rows grouped by colour, as returned by :func:`color_groups`.
    reverse : bool, default False
        Visit the colours last to first.

    Returns
    -------
    numpy.ndarray
        `x` itself.

    Raises
    ------
    ValueError
        If the shapes disagree or `color_ptr` does not span ``[0, n]``.

    Notes
    -----
    A colouring with two coupled rows in one colour is a data race (the
    result depends on thread timing); it is not detected.

    Examples
    --------
    >>> import numpy as np
    >>> import scipy.sparse as sp
    >>> A = sp.csr_array(np.array([[4.0, -1.0], [-1.0, 4.0]]))
    >>> color_ptr, color_rows = color_groups(greedy_coloring(A.indptr, A.indices))
    >>> x = np.zeros(2)
    >>> sor_sweep_multicolor(A.indptr, A.indices, A.data, A.diagonal(), np.ones(2), x, 1.0,
    ...                      color_ptr, color_rows)
    array([0.25  , 0.3125])
    """
    n = check_relaxation_system(indptr, indices, data, diag, b, x)
    _check_colors(color_ptr, color_rows, n)
    kernel = _sor_sweep_multicolor_1d if x.ndim == 1 else _sor_sweep_multicolor_2d
    kernel(indptr, indices, data, diag, b, x, float(omega), color_ptr, color_rows, bool(reverse))
    return x


def ssor_sweep_multicolor(indptr, indices, data, diag, b, x, omega, color_ptr, color_rows):
    """One multicolour SSOR sweep: colours forward, then backward, in place.

    Equals :func:`ssor_sweep` with the rows visited in the order
    ``color_rows`` (then reversed), so from ``x = 0`` it applies the inverse
    of the SSOR preconditioner of the symmetrically permuted matrix
    ``P A P^T``: a valid (SPD) CG preconditioner for SPD ``A``, though not
    the same one as the natural-order :func:`ssor_sweep`.

    Parameters
    ----------
    indptr, indices, data, diag, b, x, omega, color_ptr, color_rows
        As in :func:`sor_sweep_multicolor`.

    Returns
    -------
    numpy.ndarray
        `x` itself.
    """
    n = check_relaxation_system(indptr, indices, data, diag, b, x)
    _check_colors(color_ptr, color_rows, n)
    kernel = _sor_sweep_multicolor_1d if x.ndim == 1 else _sor_sweep_multicolor_2d
    kernel(indptr, indices, data, diag, b, x, float(omega), color_ptr, color_rows, False)
    kernel(indptr, indices, data, diag, b, x, float(omega), color_ptr, color_rows, True)
    return x


# --------------------------------------------------------------------------
# Whole stationary iteration
# --------------------------------------------------------------------------


@jit()
def _residual_norm_1d(indptr, indices, data, b, x):  # pragma: no cover - compiled
    """``||b - A x||_2``: residual in ``x.dtype``, squares summed in float64."""
    t = x.dtype.type
    total = 0.0
    for i in range(x.shape[0]):
        s = t(0)
        for jj in range(_uidx(indptr[i]), _uidx(indptr[i + 1])):
            s += t(data[jj]) * x[_uidx(indices[jj])]
        r = np.float64(t(b[i]) - s)
        total += r * r
    return np.sqrt(total)


@jit(parallel=True)
def _residual_norm_1d_parallel(indptr, indices, data, b, x):  # pragma: no cover - compiled
    """Multithreaded :func:`_residual_norm_1d`, independent of thread count."""
    t = x.dtype.type
    n = x.shape[0]
    n_blocks = (n + _BLOCK - 1) // _BLOCK
    partial = np.zeros(n_blocks, dtype=np.float64)
    for blk in prange(n_blocks):
        acc = 0.0
        for i in range(blk * _BLOCK, min(n, (blk + 1) * _BLOCK)):
            s = t(0)
            for jj in range(_uidx(indptr[i]), _uidx(indptr[i + 1])):
                s += t(data[jj]) * x[_uidx(indices[jj])]
            r = np.float64(t(b[i]) - s)
            acc += r * r
        partial[blk] = acc
    # Blocks are added in a fixed order: the same number whatever the
    # number of threads.
    total = 0.0
    for blk in range(n_blocks):
        total += partial[blk]
    return np.sqrt(total)


@jit()
def _sor_solve_1d(
    indptr, indices, data, diag, b, x, omega, symmetric, tol, maxiter, check_every
):  # pragma: no cover - compiled
    """Compiled body of :func:`sor_solve` (natural row order); see there."""
    res = _residual_norm_1d(indptr, indices, data, b, x)
    it = 0
    if res <= tol:
        return it, res
    while it < maxiter:
        _sor_sweep_1d(indptr, indices, data, diag, b, x, omega, False)
        if symmetric:
            _sor_sweep_1d(indptr, indices, data, diag, b, x, omega, True)
        it += 1
        # The residual is always that of the returned x: it is recomputed
        # after the last sweep even when that is not a multiple of
        # check_every.
        if it % check_every == 0 or it == maxiter:
            res = _residual_norm_1d(indptr, indices, data, b, x)
            if res <= tol:
                break
    return it, res


# Not parallel itself: the loop is sequential; the sweeps and residuals it
# calls are the multithreaded kernels.
@jit()
def _sor_solve_multicolor_1d(
    indptr, indices, data, diag, b, x, omega, symmetric, tol, maxiter, check_every,
    color_ptr, color_rows,
):  # pragma: no cover - compiled
    """Compiled body of :func:`sor_solve` with a colouring; see there."""
    res = _residual_norm_1d_parallel(indptr, indices, data, b, x)
    it = 0
    if res <= tol:
        return it, res
    while it < maxiter:
        _sor_sweep_multicolor_1d(
            indptr, indices, data, diag, b, x, omega, color_ptr, color_rows, False
        )
        if symmetric:
            _sor_sweep_multicolor_1d(
                indptr, indices, data, diag, b, x, omega, color_ptr, color_rows, True
            )
        it += 1
        if it % check_every == 0 or it == maxiter:
            res = _residual_norm_1d_parallel(indptr, indices, data, b, x)
            if res <= tol:
                break
    return it, res


def sor_solve(
    indptr, indices, data, diag, b, x, omega, symmetric, tol, maxiter, *,
    color_ptr=None, color_rows=None, check_every=1,
):
    """Run the SOR (or SSOR) iteration until ``||b - A x||_2 <= tol``, in place.

    The whole loop is compiled: repeat one sweep (forward SOR, or a
    symmetric forward-then-backward SSOR sweep when `symmetric`), then
    compute the residual norm, until it is at most `tol` or `maxiter` sweeps
    have been done. If the residual of `x` on entry is already at most
    `tol`, nothing is swept. With no Python in the loop, thousands of small
    solves per second are possible.

    Parameters
    ----------
    indptr, indices, data, diag, omega
        As in :func:`sor_sweep`.
    b : numpy.ndarray of float32 or float64, shape (n,)
        Right-hand side (1-D only).
    x : numpy.ndarray of float32 or float64, shape (n,)
        Initial guess, overwritten by the final iterate.
    symmetric : bool
        SSOR sweeps (forward then backward) instead of forward SOR sweeps.
    tol : float
        Absolute tolerance on the residual 2-norm (for a relative one pass
        ``rtol * ||b||``).
    maxiter : int
        Maximum number of sweeps (>= 0).
    color_ptr, color_rows : numpy.ndarray, optional
        A colouring from :func:`color_groups`. When given, the sweeps are
        :func:`sor_sweep_multicolor` (multithreaded, rows in the order
        ``color_rows``) and the residual is computed in parallel too; when
        omitted (the default), sequential sweeps in natural row order.
        The GPU twin always sweeps by colour (and colours the matrix itself
        when they are omitted).
    check_every : int, keyword-only, default 1
        Compute the residual only after every `check_every`-th sweep (and
        after the last one). On the CPU a residual costs about as much as a
        sweep; the GPU twin defaults to 8 because each check is a
        device-to-host read.

    Returns
    -------
    n_iters : int
        Number of sweeps done (a symmetric sweep counts as one); ``0`` if `x`
        already satisfied the tolerance.
    residual_norm : float
        ``||b - A x||_2`` of the returned `x`, residual computed in
        ``x.dtype`` and its squares summed in float64. NaN if the iteration
        broke down (NaN/inf in the inputs, overflow, or a zero diagonal in
        the multicolour case); the loop then runs to `maxiter`.

    Raises
    ------
    ValueError
        If `b` or `x` is not 1-D, shapes disagree, or `maxiter` < 0 or
        `check_every` < 1; if only one of `color_ptr` and `color_rows` is
        given.
    ZeroDivisionError
        On a zero diagonal entry, in natural row order (see :func:`sor_sweep`).

    Examples
    --------
    >>> import numpy as np
    >>> import scipy.sparse as sp
    >>> A = sp.csr_array(np.array([[4.0, -1.0], [-1.0, 4.0]]))
    >>> x = np.zeros(2)
    >>> n_iters, res = sor_solve(A.indptr, A.indices, A.data, A.diagonal(), np.ones(2), x,
    ...                          1.0, False, 1e-10, 100)
    >>> n_iters, bool(res <= 1e-10), np.allclose(x, 1 / 3)
    (9, True, True)
    """
    n, maxiter, check_every = check_sor_solve_args(
        indptr, indices, data, diag, b, x, maxiter, check_every, color_ptr, color_rows)
    if color_ptr is None:
        it, res = _sor_solve_1d(
            indptr, indices, data, diag, b, x, float(omega), bool(symmetric), float(tol),
            maxiter, check_every,
        )
    else:
        _check_colors(color_ptr, color_rows, n)
        it, res = _sor_solve_multicolor_1d(
            indptr, indices, data, diag, b, x, float(omega), bool(symmetric), float(tol),
            maxiter, check_every, color_ptr, color_rows,
        )
    return int(it), float(res)


# --------------------------------------------------------------------------
# Colouring
# --------------------------------------------------------------------------


@jit()
def _greedy_coloring(indptr, indices, colors):  # pragma: no cover - compiled
    """Compiled body of :func:`greedy_coloring`; `colors` arrives as -1s."""
    n = indptr.shape[0] - 1
    # A row's colour is at most the number of its coloured neighbours, so
    # colours never exceed the longest row length.
    max_len = 0
    for i in range(n):
        max_len = max(max_len, indptr[i + 1] - indptr[i])
    # mark[c] == i means "colour c is taken by a neighbour of row i": stamping
    # with the row number avoids clearing the array for every row.
    mark = np.full(max_len + 1, -1, dtype=np.int64)
    for i in range(n):
        for jj in range(_uidx(indptr[i]), _uidx(indptr[i + 1])):
            j = _uidx(indices[jj])
            if j != i:
                cj = colors[j]
                if cj >= 0:  # neighbours after i are not coloured yet
                    mark[cj] = i
        c = 0
        while mark[c] == i:
            c += 1
        colors[i] = c
    return colors


def greedy_coloring(indptr, indices):
    """Greedy distance-1 colouring of a symmetric sparsity pattern.

    Rows are coloured in natural order, each with the smallest colour not
    used by an already coloured neighbour ``j != i``. On the 5-point
    Laplacian in natural order this is the red--black colouring (2 colours);
    in general it uses at most ``max row length`` colours.

    Parameters
    ----------
    indptr : numpy.ndarray of int32 or int64, shape (n + 1,)
        CSR row pointer of the pattern.
    indices : numpy.ndarray of int32 or int64, shape (nnz,)
        CSR column indices, in ``[0, n)``. The pattern must be structurally
        symmetric (``j`` in row ``i`` iff ``i`` in row ``j``); for a
        non-symmetric matrix pass the pattern of ``A + A.T``. Not checked.

    Returns
    -------
    numpy.ndarray of int32, shape (n,)
        Colour of every row, ``0 .. n_colors - 1``; no two coupled rows share
        a colour.

    Examples
    --------
    >>> import numpy as np
    >>> import scipy.sparse as sp
    >>> A = sp.csr_array(sp.diags_array([-1.0, 2.0, -1.0], offsets=[-1, 0, 1], shape=(5, 5)))
    >>> greedy_coloring(A.indptr, A.indices)
    array([0, 1, 0, 1, 0], dtype=int32)
    """
    n = indptr.shape[0] - 1
    colors = np.full(n, -1, dtype=np.int32)
    if n > 0:
        _greedy_coloring(indptr, indices, colors)
    return colors


def color_groups(colors):
    """Group rows by colour (a counting sort).

    Parameters
    ----------
    colors : numpy.ndarray of int, shape (n,)
        Non-negative colour of every row (e.g. from :func:`greedy_coloring`).

    Returns
    -------
    color_ptr : numpy.ndarray of int64, shape (n_colors + 1,)
        Rows of colour ``c`` are ``color_rows[color_ptr[c]:color_ptr[c + 1]]``;
        ``n_colors = colors.max() + 1`` (a colour with no row gets an empty
        range).
    color_rows : numpy.ndarray of int64, shape (n,)
        Row numbers sorted by colour, ascending within a colour.

    Raises
    ------
    ValueError
        If `colors` is not 1-D or has a negative entry.

    Examples
    --------
    >>> import numpy as np
    >>> color_groups(np.array([0, 1, 0, 2, 1]))
    (array([0, 2, 4, 5]), array([0, 2, 1, 4, 3]))
    """
    colors = np.asarray(colors)
    if colors.ndim != 1:
        raise ValueError(f"colors must be 1-D, got shape {colors.shape}")
    if colors.size == 0:
        return np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if colors.min() < 0:
        raise ValueError("colors must be non-negative")
    counts = np.bincount(colors)
    color_ptr = np.zeros(counts.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=color_ptr[1:])
    # A stable sort keeps rows ascending within each colour.
    color_rows = np.argsort(colors, kind="stable").astype(np.int64)
    return color_ptr, color_rows
