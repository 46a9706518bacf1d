"""Numba kernels of Sinkhorn–Newton–Sparse (:func:`diffsolve.ot.sinkhorn_newton_sparse`).

One Newton step of SNS (Tang et al., ICLR 2024) needs, at the current dual potentials
``(f, g)``:

1. the entropic plan ``P_ij = exp((f_i + g_j - C_ij) / eps)`` with its row and column sums
   (the gradient of the dual objective is ``(a - P 1, b - Pᵀ 1)``), one fused pass over
   ``C`` (:func:`plan_marginals`);
2. a sparsification of ``P``: the entries at or above a threshold ``tau``, where ``tau`` is
   the ``k``-th largest entry when a density is asked for (:func:`kth_largest`), assembled
   as CSR (:func:`threshold_csr`) and as the CSR of its transpose (:func:`csr_transpose`);
   the Newton system is then solved by CG on sparse products only.

All arrays are plain C-contiguous NumPy arrays; index arrays are int64. The CuPy twins in
:mod:`diffsolve.kernels.cuda.ot_newton` have the same signatures and semantics, and
``tests/naive_ot_newton.py`` holds the slow reference each is tested against.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from ._config import call_threaded, jit

__all__ = ["csr_transpose", "kth_largest", "newton_step", "plan_marginals", "schur_pcg",
           "threshold_csr"]

# Columns per task when the column sums are reduced: a block of c stays in L1 while the
# rows stream past, and blocks are independent, so they go to threads without atomics.
_COL_BLOCK = 256

# Below this many plan entries the passes run on one thread. A parallel region must wait
# for every thread of the pool; on a machine whose cores are busy (measured: 2 cores, load
# ~10) that wait is ~25 ms per region, against ~0.1 ms for a serial pass over 300 x 300
# entries and ~10 ms over 2000 x 2000. Larger problems amortise it.
_SERIAL_BELOW = 1 << 22


def _run(kernel, serial, *args):
    """Call a ``parallel=True`` kernel, on one thread when ``serial`` (see
    ``_config.call_threaded``)."""
    return call_threaded(kernel, 0 if serial else 1, *args, serial_below=1)


@jit(parallel=True)
def _plan_rows(f, g, C, inv_eps, P, r):  # pragma: no cover - compiled
    n, m = C.shape
    for i in prange(n):
        acc = r.dtype.type(0)
        fi = f[i]
        for j in range(m):
            v = math.exp((fi + g[j] - C[i, j]) * inv_eps)
            P[i, j] = v
            acc += v
        r[i] = acc


@jit(parallel=True)
def _column_sums(P, c):  # pragma: no cover - compiled
    n, m = P.shape
    n_blocks = (m + _COL_BLOCK - 1) // _COL_BLOCK
    for blk in prange(n_blocks):
        j0 = blk * _COL_BLOCK
        j1 = min(m, j0 + _COL_BLOCK)
        for j in range(j0, j1):
            c[j] = 0
        for i in range(n):
            for j in range(j0, j1):
                c[j] += P[i, j]


def plan_marginals(f, g, C, inv_eps, P, r, c):
    """The entropic plan and its marginals: ``P = exp((f ⊕ g - C) / eps)``, ``r = P 1``,
    ``c = Pᵀ 1``, in one pass over ``C`` plus one over ``P``.

    Parameters
    ----------
    f, g : numpy.ndarray, shapes (n,) and (m,)
        Dual potentials.
    C : numpy.ndarray, shape (n, m)
        Cost matrix (C-contiguous).
    inv_eps : float
        ``1 / eps``.
    P : numpy.ndarray, shape (n, m)
        Output plan (overwritten); its dtype is the working precision.
    r, c : numpy.ndarray, shapes (n,) and (m,)
        Output row and column sums (overwritten).

    Returns
    -------
    tuple
        ``(P, r, c)``, the output arrays. Entries that overflow are ``inf`` (no warning):
        callers test the sums with ``isfinite``.

    Examples
    --------
    >>> import numpy as np
    >>> C = np.array([[0.0, 1.0], [1.0, 0.0]])
    >>> P, r, c = plan_marginals(np.zeros(2), np.zeros(2), C, 1.0, np.empty((2, 2)),
    ...                          np.empty(2), np.empty(2))
    >>> np.allclose(r, 1 + np.exp(-1.0)), np.allclose(c, r)
    (True, True)
    """
    n, m = C.shape
    if f.shape != (n,) or g.shape != (m,) or P.shape != (n, m) or r.shape != (n,) \
            or c.shape != (m,):
        raise ValueError(
            f"plan_marginals: shapes disagree: f {f.shape}, g {g.shape}, C {C.shape}, "
            f"P {P.shape}, r {r.shape}, c {c.shape}"
        )
    if not (C.flags.c_contiguous and P.flags.c_contiguous):
        raise ValueError("plan_marginals: C and P must be C-contiguous")
    dt = P.dtype.type
    serial = P.size < _SERIAL_BELOW
    _run(_plan_rows, serial, f, g, C, dt(inv_eps), P, r)
    _run(_column_sums, serial, P, c)
    return P, r, c


@jit(parallel=True)
def _row_top(P, out):  # pragma: no cover - compiled
    # out[i] holds the s largest entries of row i, in decreasing order (insertion into a
    # short sorted buffer: most entries are below its last one and cost one comparison)
    n, m = P.shape
    s = out.shape[1]
    for i in prange(n):
        for t in range(s):
            out[i, t] = -np.inf
        for j in range(m):
            v = P[i, j]
            if v > out[i, s - 1]:
                t = s - 1
                while t > 0 and out[i, t - 1] < v:
                    out[i, t] = out[i, t - 1]
                    t -= 1
                out[i, t] = v


@jit()
def _kth_largest_flat(flat, k):  # pragma: no cover - compiled
    # np.partition is a quickselect: O(size) expected, against O(size log size) for a sort
    part = np.partition(flat, flat.shape[0] - k)
    return part[flat.shape[0] - k]


def kth_largest(P, k):
    """The ``k``-th largest entry of ``P`` (``1 <= k <= P.size``), as a Python float.

    For ``k`` up to 64 entries per row on average, the answer is found without a selection
    over all of ``P``: the ``s = ceil(k / n)`` largest entries of every row are ``n s >= k``
    entries of ``P``, so their ``k``-th largest, ``L``, is a lower bound of the answer; the
    answer is then the ``k``-th largest of the (few) entries ``>= L``. Each step is one
    threaded pass over ``P`` instead of a quickselect over ``n m`` values.

    Examples
    --------
    >>> import numpy as np
    >>> kth_largest(np.array([[3.0, 1.0], [4.0, 2.0]]), 2)
    3.0
    """
    k = int(k)
    if P.ndim != 2 or not 1 <= k <= P.size:
        raise ValueError(f"kth_largest: P must be 2-D and k in [1, {P.size}], got {k}")
    P = np.ascontiguousarray(P)
    n = P.shape[0]
    serial = P.size < _SERIAL_BELOW
    s = -(-k // n)
    if s > 64 or s >= P.shape[1]:
        # many entries per row: a strided sample of P proposes the bound (its rank is
        # padded so that P usually holds >= k entries above it), checked by a count
        flat = P.reshape(-1)
        q = max(1, flat.shape[0] // 65536)
        sample = np.ascontiguousarray(flat[::q])
        rank = min(sample.shape[0], math.ceil(1.25 * k / q) + 16)
        lower = _kth_largest_flat(sample.copy(), rank)
        if _count_total(P, lower) < k:
            return float(_kth_largest_flat(flat.copy(), k))
    else:
        top = np.empty((n, s), dtype=P.dtype)
        _run(_row_top, serial, P, top)
        lower = _kth_largest_flat(top.reshape(-1), k)
    counts = np.empty(n, dtype=np.int64)
    _run(_count_at_least, serial, P, lower, counts)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    values = np.empty(int(indptr[-1]), dtype=P.dtype)
    _run(_gather_at_least, serial, P, lower, indptr, values)
    return float(_kth_largest_flat(values, k))


@jit(parallel=True)
def _count_at_least(P, tau, counts):  # pragma: no cover - compiled
    n, m = P.shape
    for i in prange(n):
        k = 0
        for j in range(m):
            if P[i, j] >= tau:
                k += 1
        counts[i] = k


@jit()
def _count_total(P, tau):  # pragma: no cover - compiled
    n, m = P.shape
    k = 0
    for i in range(n):
        for j in range(m):
            if P[i, j] >= tau:
                k += 1
    return k


@jit(parallel=True)
def _gather_at_least(P, tau, indptr, values):  # pragma: no cover - compiled
    n, m = P.shape
    for i in prange(n):
        pos = indptr[i]
        for j in range(m):
            if P[i, j] >= tau:
                values[pos] = P[i, j]
                pos += 1


@jit(parallel=True)
def _count_rows(P, tau, counts):  # pragma: no cover - compiled
    n, m = P.shape
    for i in prange(n):
        k = 0
        for j in range(m):
            # P > 0 as well: an underflowed entry carries no Hessian information
            if P[i, j] >= tau and P[i, j] > 0:
                k += 1
        counts[i] = k


@jit(parallel=True)
def _fill_rows(P, tau, indptr, indices, data):  # pragma: no cover - compiled
    n, m = P.shape
    for i in prange(n):
        pos = indptr[i]
        for j in range(m):
            v = P[i, j]
            if v >= tau and v > 0:
                indices[pos] = j
                data[pos] = v
                pos += 1


def threshold_csr(P, tau):
    """The entries of ``P`` with ``P_ij >= tau`` (and ``> 0``) as a canonical CSR matrix.

    Two passes: count per row (threads over rows), prefix sum, fill per row in column
    order, so the column indices of each row come out sorted.

    Parameters
    ----------
    P : numpy.ndarray, shape (n, m)
        Dense nonnegative matrix (C-contiguous).
    tau : float
        Threshold; entries equal to it are kept (ties are all kept).

    Returns
    -------
    indptr, indices, data : numpy.ndarray
        int64 ``(n + 1,)``, int64 ``(nnz,)`` and ``P.dtype`` ``(nnz,)``.

    Examples
    --------
    >>> import numpy as np
    >>> indptr, indices, data = threshold_csr(np.array([[0.5, 0.1], [0.2, 0.7]]), 0.2)
    >>> indptr.tolist(), indices.tolist(), data.tolist()
    ([0, 1, 3], [0, 0, 1], [0.5, 0.2, 0.7])
    """
    if P.ndim != 2 or not P.flags.c_contiguous:
        raise ValueError("threshold_csr: P must be a C-contiguous 2-D array")
    n = P.shape[0]
    counts = np.empty(n, dtype=np.int64)
    t = P.dtype.type(tau)
    serial = P.size < _SERIAL_BELOW
    _run(_count_rows, serial, P, t, counts)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    nnz = int(indptr[-1])
    indices = np.empty(nnz, dtype=np.int64)
    data = np.empty(nnz, dtype=P.dtype)
    _run(_fill_rows, serial, P, t, indptr, indices, data)
    return indptr, indices, data


@jit()
def _csr_transpose(indptr, indices, data, n_cols, indptr_t, indices_t, data_t):
    # pragma: no cover - compiled
    n_rows = indptr.shape[0] - 1
    for jj in range(indices.shape[0]):
        indptr_t[indices[jj] + 1] += 1
    for j in range(n_cols):
        indptr_t[j + 1] += indptr_t[j]
    fill = indptr_t[:-1].copy()
    # rows are visited in order, so each column of the transpose lists its rows sorted
    for i in range(n_rows):
        for jj in range(indptr[i], indptr[i + 1]):
            j = indices[jj]
            pos = fill[j]
            indices_t[pos] = i
            data_t[pos] = data[jj]
            fill[j] = pos + 1


def csr_transpose(indptr, indices, data, n_cols):
    """The CSR form of ``Aᵀ`` for a CSR matrix ``A`` with ``n_cols`` columns (a counting
    sort over the stored entries; sequential, since nnz is small next to the dense passes).

    Returns
    -------
    indptr_t, indices_t, data_t : numpy.ndarray
        int64 ``(n_cols + 1,)``, int64 ``(nnz,)``, ``data.dtype`` ``(nnz,)``; canonical
        (sorted row indices in each column).

    Examples
    --------
    >>> import numpy as np
    >>> out = csr_transpose(np.array([0, 1, 3]), np.array([0, 0, 1]),
    ...                     np.array([0.5, 0.2, 0.7]), 2)
    >>> [a.tolist() for a in out]
    [[0, 2, 3], [0, 1, 1], [0.5, 0.2, 0.7]]
    """
    n_cols = int(n_cols)
    nnz = indices.shape[0]
    if data.shape != (nnz,) or indptr.ndim != 1 or int(indptr[-1]) != nnz:
        raise ValueError("csr_transpose: indptr, indices and data disagree")
    indptr_t = np.zeros(n_cols + 1, dtype=np.int64)
    indices_t = np.empty(nnz, dtype=np.int64)
    data_t = np.empty(nnz, dtype=data.dtype)
    _csr_transpose(indptr.astype(np.int64, copy=False), indices.astype(np.int64, copy=False),
                   data, n_cols, indptr_t, indices_t, data_t)
    return indptr_t, indices_t, data_t


@jit()
def _schur_apply(indptr, indices, data, indptr_t, indices_t, data_t, rinv, c, free, v, u,
                 out):  # pragma: no cover - compiled
    # out = free * (c * v - P̃ᵀ (rinv * (P̃ v))), u a scratch vector of length n
    n = indptr.shape[0] - 1
    m = indptr_t.shape[0] - 1
    for i in range(n):
        acc = 0.0
        for jj in range(indptr[i], indptr[i + 1]):
            acc += data[jj] * v[indices[jj]]
        u[i] = acc * rinv[i]
    for j in range(m):
        acc = 0.0
        for ii in range(indptr_t[j], indptr_t[j + 1]):
            acc += data_t[ii] * u[indices_t[ii]]
        out[j] = free[j] * (c[j] * v[j] - acc)


@jit()
def _schur_pcg(indptr, indices, data, indptr_t, indices_t, data_t, rinv, c, free, minv, rhs,
               x, rtol, maxiter):  # pragma: no cover - compiled
    n = indptr.shape[0] - 1
    m = rhs.shape[0]
    u = np.empty(n, dtype=x.dtype)
    Ap = np.empty(m, dtype=x.dtype)
    r = rhs.copy()
    z = minv * r
    p = z.copy()
    x[:] = 0
    rz = 0.0
    rr = 0.0
    for j in range(m):
        rz += r[j] * z[j]
        rr += r[j] * r[j]
    target = rtol * np.sqrt(rr)
    it = 0
    while it < maxiter:
        if np.sqrt(rr) <= target or rz <= 0:
            break
        _schur_apply(indptr, indices, data, indptr_t, indices_t, data_t, rinv, c, free, p, u,
                     Ap)
        pAp = 0.0
        for j in range(m):
            pAp += p[j] * Ap[j]
        if not pAp > 0:
            break
        alpha = rz / pAp
        rr = 0.0
        rz_new = 0.0
        for j in range(m):
            x[j] += alpha * p[j]
            r[j] -= alpha * Ap[j]
            z[j] = minv[j] * r[j]
            rr += r[j] * r[j]
            rz_new += r[j] * z[j]
        beta = rz_new / rz
        for j in range(m):
            p[j] = z[j] + beta * p[j]
        rz = rz_new
        it += 1
    return it


def schur_pcg(indptr, indices, data, indptr_t, indices_t, data_t, rinv, c, free, minv, rhs,
              x, rtol, maxiter):
    """Jacobi-preconditioned CG on the Schur complement of a sparsified Newton matrix.

    Solves ``S x = rhs`` with ``S v = free ∘ (c ∘ v - P̃ᵀ (rinv ∘ (P̃ v)))``, ``P̃`` given in
    CSR (``indptr, indices, data``) and as the CSR of its transpose (``*_t``), from
    ``x = 0``, until ``||r|| <= rtol ||rhs||``, ``maxiter`` iterations, or a direction
    with ``pᵀSp <= 0`` (what is left lies in the numerically singular part; the iterate
    so far is kept, as a truncated Newton step wants). ``free`` is 1 except 0 at the
    fixed coordinate(s), where ``rhs`` and ``minv`` must be 0 too. The whole loop is
    one sequential compiled call (the products are small next to the dense passes, and
    sequential code does not suffer when the cores are shared). ``x`` (float64,
    C-contiguous, shape ``(m,)``) is overwritten.

    Returns
    -------
    int
        CG iterations taken.

    Examples
    --------
    >>> import numpy as np
    >>> # P̃ = I (2 x 2), r = 2, c = 2: S = 2 I - I / 2 = 1.5 I
    >>> ip, ix, d = np.array([0, 1, 2]), np.array([0, 1]), np.array([1.0, 1.0])
    >>> x = np.zeros(2)
    >>> schur_pcg(ip, ix, d, ip, ix, d, np.full(2, 0.5), np.full(2, 2.0), np.ones(2),
    ...           np.full(2, 1 / 1.5), np.array([3.0, 1.5]), x, 1e-12, 10)
    1
    >>> x.tolist()
    [2.0, 1.0]
    """
    m = rhs.shape[0]
    if x.shape != (m,) or not x.flags.c_contiguous or indptr_t.shape[0] != m + 1:
        raise ValueError("schur_pcg: x must be C-contiguous of rhs's shape (m,) and the "
                         "transpose must have m rows")
    return int(_schur_pcg(indptr, indices, data, indptr_t, indices_t, data_t, rinv, c, free,
                          minv, rhs, x, float(rtol), int(maxiter)))


@jit()
def _newton_step(indptr, indices, data, indptr_t, indices_t, data_t, r, c, grad_f, grad_g,
                 eps, fixed, rtol, maxiter, df, dg):  # pragma: no cover - compiled
    n = r.shape[0]
    m = c.shape[0]
    tiny = np.finfo(r.dtype).tiny
    eps_mach = np.finfo(r.dtype).eps
    rinv = np.zeros(n, dtype=r.dtype)
    for i in range(n):
        if r[i] > tiny:
            rinv[i] = 1.0 / r[i]
    free = np.ones(m, dtype=c.dtype)
    free[fixed] = 0
    # Jacobi diagonal of S: c_j - Σ_i P̃_ij² / r_i, floored (an isolated kept pair makes
    # it ~0, and only its dropped mass keeps S regular)
    minv = np.zeros(m, dtype=c.dtype)
    rhs = np.zeros(m, dtype=c.dtype)
    u = np.empty(n, dtype=r.dtype)
    for i in range(n):
        u[i] = rinv[i] * eps * grad_f[i]
    for j in range(m):
        d = 0.0
        acc = 0.0
        for ii in range(indptr_t[j], indptr_t[j + 1]):
            v = data_t[ii]
            d += v * v * rinv[indices_t[ii]]
            acc += v * u[indices_t[ii]]
        diag = max(c[j] - d, 64 * eps_mach * c[j] + tiny)
        minv[j] = free[j] / diag
        rhs[j] = free[j] * (eps * grad_g[j] - acc)
    its = _schur_pcg(indptr, indices, data, indptr_t, indices_t, data_t, rinv, c, free, minv,
                     rhs, dg, rtol, maxiter)
    for i in range(n):
        acc = 0.0
        for jj in range(indptr[i], indptr[i + 1]):
            acc += data[jj] * dg[indices[jj]]
        df[i] = rinv[i] * (eps * grad_f[i] - acc)
    return its


def newton_step(indptr, indices, data, indptr_t, indices_t, data_t, r, c, grad_f, grad_g,
                eps, fixed, rtol, maxiter, df, dg):
    """One sparsified Newton direction of SNS: ``M̃ (df, dg) = eps (grad_f, grad_g)`` with
    ``M̃ = [[diag(r), P̃], [P̃ᵀ, diag(c)]]`` and ``dg[fixed] = 0``.

    Eliminates ``df = (eps grad_f - P̃ dg) / r`` and solves the Schur complement
    ``S = diag(c) - P̃ᵀ diag(1/r) P̃`` for ``dg`` by :func:`schur_pcg` (Jacobi
    preconditioner, tolerance ``rtol``), all in one sequential compiled call. ``P̃`` is
    given in CSR and as the CSR of its transpose; ``r``, ``c`` are the exact row and
    column sums of the full plan (the diagonal blocks are not sparsified). ``df`` (n,)
    and ``dg`` (m,) are overwritten.

    Returns
    -------
    int
        CG iterations taken.

    Examples
    --------
    >>> import numpy as np
    >>> ip, ix, d = np.array([0, 1, 2]), np.array([0, 1]), np.array([0.5, 0.5])
    >>> df, dg = np.empty(2), np.empty(2)
    >>> # P̃ = diag(0.5), r = c = 0.5 exact: the step is a pure shift of f
    >>> newton_step(ip, ix, d, ip, ix, d, np.full(2, 0.5), np.full(2, 0.5),
    ...             np.array([0.1, 0.1]), np.array([0.1, 0.1]), 1.0, 0, 1e-12, 10, df, dg)
    0
    >>> df.tolist(), dg.tolist()
    ([0.2, 0.2], [0.0, 0.0])
    """
    n, m = r.shape[0], c.shape[0]
    if df.shape != (n,) or dg.shape != (m,) or grad_f.shape != (n,) \
            or grad_g.shape != (m,) or indptr.shape[0] != n + 1 or indptr_t.shape[0] != m + 1:
        raise ValueError("newton_step: shapes of r, c, gradients, steps and CSR disagree")
    if not 0 <= int(fixed) < m:
        raise ValueError(f"newton_step: fixed must lie in [0, {m}), got {fixed}")
    return int(_newton_step(indptr, indices, data, indptr_t, indices_t, data_t, r, c, grad_f,
                            grad_g, float(eps), int(fixed), float(rtol), int(maxiter), df, dg))
