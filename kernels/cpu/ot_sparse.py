"""Numba kernels of sparsity-constrained optimal transport (:mod:`diffsolve.ot.sparse_ot`).

The smoothed dual and semi-dual of Liu, Puigcerver & Blondel (ICLR 2023) evaluate, for
every column ``j`` of the plan, a function of the ``n``-vector

    z_j = alpha + shift_j - C[:, j]

that only looks at its ``k`` largest entries (the top-k operator of their eq. for
``delta`` and the k-sparse simplex projection). The hot loop is therefore "top-k of each
column of an affine function of C". The kernels here take ``Ct = C.T`` (shape (m, n),
C-contiguous) so that a column of the plan is a contiguous row, and return the top-k
*indices and values* of every ``z_j`` in descending order; the cheap rest (a projection of
k sorted numbers onto the simplex, a clip at zero) is done on these (m, k) arrays by the
caller. :func:`scatter_add_rows` turns the per-column values back into row sums
(``P 1``) without forming the dense plan.

The CuPy twins in :mod:`diffsolve.kernels.cuda.ot_sparse` have the same signatures.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._config import jit

__all__ = ["relu_marginals", "scatter_add_rows", "simplex_rows", "topk_rows"]

# Below this k a streaming insertion into a sorted buffer of length k is used (each
# entry costs one comparison with the current k-th largest, a shift only when it enters);
# above it a full argsort of the row is cheaper than O(n k) worst-case insertions.
_INSERTION_MAX_K = 48


def _topk_rows_body(alpha, shift, Ct, k, idx, val):  # pragma: no cover - compiled
    m, n = Ct.shape
    for j in prange(m):
        s = shift[j]
        row = Ct[j]
        if k <= _INSERTION_MAX_K:
            # idx[j, :filled] / val[j, :filled] hold the largest entries seen so far,
            # in descending order; a new entry enters only if it beats the last one.
            filled = 0
            for i in range(n):
                z = alpha[i] + s - row[i]
                if filled == k:
                    if not z > val[j, k - 1]:
                        continue
                    pos = k - 1
                else:
                    pos = filled
                    filled += 1
                # shift smaller entries right (ties keep the earlier index first)
                while pos > 0 and z > val[j, pos - 1]:
                    val[j, pos] = val[j, pos - 1]
                    idx[j, pos] = idx[j, pos - 1]
                    pos -= 1
                val[j, pos] = z
                idx[j, pos] = i
        else:
            zrow = np.empty(n, dtype=val.dtype)
            for i in range(n):
                zrow[i] = alpha[i] + s - row[i]
            # stable sort of -z: descending z, ties by index as in the insertion branch
            order = np.argsort(-zrow, kind="mergesort")
            for r in range(k):
                idx[j, r] = order[r]
                val[j, r] = zrow[order[r]]
    return idx, val


# Two builds of one body: threads pay off only on large problems. Below _PARALLEL_MIN
# entries the thread start-up (and, on a shared machine, waiting for busy cores, which
# measured 20 ms instead of 0.3 ms per call at n = m = 200 under load) costs more than the
# pass itself; there prange runs as a plain range.
_topk_rows_serial = jit()(_topk_rows_body)
_topk_rows_parallel = jit(parallel=True)(_topk_rows_body)
_PARALLEL_MIN = 1 << 18


def topk_rows(alpha, shift, Ct, k, idx, val):
    """Top-k entries of every ``z_j = alpha + shift[j] - Ct[j]``, in descending order.

    Parameters
    ----------
    alpha : ndarray, shape (n,)
    shift : ndarray, shape (m,)
    Ct : ndarray, shape (m, n)
        The transposed cost matrix (row ``j`` is column ``j`` of ``C``), C-contiguous.
    k : int
        ``1 <= k <= n``.
    idx : ndarray of int64, shape (m, k)
        Output: ``idx[j, r]`` is the row index of the ``r``-th largest entry of ``z_j``
        (ties broken by the smaller index).
    val : ndarray, shape (m, k), dtype of ``Ct``
        Output: the values ``z_j[idx[j, r]]``, non-increasing in ``r``.

    Returns
    -------
    idx, val : the outputs.

    Examples
    --------
    >>> import numpy as np
    >>> Ct = np.array([[0.0, 3.0, 1.0], [2.0, 0.0, 5.0]])
    >>> idx, val = topk_rows(np.zeros(3), np.zeros(2), Ct, 2,
    ...                      np.empty((2, 2), np.int64), np.empty((2, 2)))
    >>> idx.tolist(), val.tolist()
    ([[0, 2], [1, 0]], [[0.0, -1.0], [0.0, -2.0]])
    """
    m, n = Ct.shape
    if alpha.shape != (n,) or shift.shape != (m,):
        raise ValueError(f"topk_rows: alpha {alpha.shape} / shift {shift.shape} do not match "
                         f"Ct {Ct.shape}; need alpha ({n},) and shift ({m},)")
    if not 1 <= int(k) <= n:
        raise ValueError(f"topk_rows: k must satisfy 1 <= k <= n = {n}, got {k}")
    if idx.shape != (m, k) or val.shape != (m, k):
        raise ValueError(f"topk_rows: idx {idx.shape} and val {val.shape} must both have "
                         f"shape ({m}, {k})")
    if not Ct.flags.c_contiguous:
        raise ValueError("topk_rows: Ct must be C-contiguous (pass np.ascontiguousarray(C.T))")
    kernel = _topk_rows_parallel if m * n >= _PARALLEL_MIN else _topk_rows_serial
    return kernel(alpha, shift, Ct, int(k), idx, val)


@jit()
def _scatter_add_rows(idx, w, out):  # pragma: no cover - compiled
    # Serial on purpose: several columns write the same row, and m * k is small next to
    # the O(n m) top-k pass that produced idx.
    out[:] = 0
    m, k = idx.shape
    for j in range(m):
        for r in range(k):
            out[idx[j, r]] += w[j, r]
    return out


def scatter_add_rows(idx, w, out):
    """``out[i] = sum of w[j, r] over all (j, r) with idx[j, r] == i``.

    With ``w[j, r]`` the plan entry ``P[idx[j, r], j]`` this is the row sum ``P 1``.

    Parameters
    ----------
    idx : ndarray of int64, shape (m, k), entries in ``[0, n)``
    w : ndarray, shape (m, k)
    out : ndarray, shape (n,)
        Overwritten.

    Returns
    -------
    out

    Examples
    --------
    >>> import numpy as np
    >>> scatter_add_rows(np.array([[0, 2], [2, 1]]), np.array([[1.0, 2.0], [3.0, 4.0]]),
    ...                  np.empty(3)).tolist()
    [1.0, 4.0, 5.0]
    """
    if idx.shape != w.shape or out.ndim != 1:
        raise ValueError(f"scatter_add_rows: idx {idx.shape} and w {w.shape} must have one "
                         f"shape and out {out.shape} must be 1-D")
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= out.shape[0]):
        raise ValueError(f"scatter_add_rows: idx has entries outside [0, {out.shape[0]})")
    return _scatter_add_rows(idx, w, out)


@jit()
def _relu_marginals(alpha, beta, C, row, col):  # pragma: no cover - compiled
    # One pass over C in storage order: the row sum stays in a register, the column sums
    # are a contiguous vector update. Serial: the column sums would race across threads,
    # and the pass is memory-bound (one read of C).
    n, m = C.shape
    col[:] = 0
    sumsq = 0.0
    for i in range(n):
        ai = alpha[i]
        acc = row.dtype.type(0)
        for j in range(m):
            z = ai + beta[j] - C[i, j]
            if z > 0:
                acc += z
                col[j] += z
                sumsq += z * z
        row[i] = acc
    return sumsq


def relu_marginals(alpha, beta, C, row, col):
    """Marginals and squared norm of ``P = [alpha_i + beta_j - C_ij]_+`` in one pass.

    The quadratically regularised dual (``k >= n``: no top-k) needs exactly these: the
    plan is ``P / gamma``, ``delta = sum(P^2) / (2 gamma)``.

    Parameters
    ----------
    alpha : ndarray, shape (n,)
    beta : ndarray, shape (m,)
    C : ndarray, shape (n, m), C-contiguous
    row : ndarray, shape (n,)
        Output: ``P 1``.
    col : ndarray, shape (m,)
        Output: ``P^T 1``.

    Returns
    -------
    float
        ``sum(P ** 2)``.

    Examples
    --------
    >>> import numpy as np
    >>> row, col = np.empty(2), np.empty(2)
    >>> s = relu_marginals(np.array([1.0, 0.0]), np.zeros(2), np.array([[0.0, 2.0], [0.5, -1.0]]),
    ...                    row, col)
    >>> float(s), row.tolist(), col.tolist()
    (2.0, [1.0, 1.0], [1.0, 1.0])
    """
    n, m = C.shape
    if alpha.shape != (n,) or beta.shape != (m,) or row.shape != (n,) or col.shape != (m,):
        raise ValueError(f"relu_marginals: alpha {alpha.shape}, beta {beta.shape}, row "
                         f"{row.shape}, col {col.shape} do not match C {C.shape}")
    if not C.flags.c_contiguous:
        raise ValueError("relu_marginals: C must be C-contiguous")
    return _relu_marginals(alpha, beta, C, row, col)


@jit()
def _simplex_rows(alpha, Ct, scale, b, tau, zy, yy, row):  # pragma: no cover - compiled
    m, n = Ct.shape
    row[:] = 0
    x = np.empty(n, dtype=Ct.dtype)
    buf = np.empty(n, dtype=Ct.dtype)
    for j in range(m):
        s = scale[j]
        xmax = -np.inf
        for i in range(n):
            x[i] = (alpha[i] - Ct[j, i]) * s
            if x[i] > xmax:
                xmax = x[i]
        # The threshold tau satisfies tau >= max(x) - 1 (the largest entry's projection is
        # at most 1), so only entries above max(x) - 1 can be in the support: gather them.
        # Then Michelot (1986): t = (sum of the kept entries - 1) / (their count) is at most
        # tau for any kept set containing the support; dropping the kept entries <= t
        # raises t, and when none drops t = tau. Only the gathered entries are revisited,
        # each pass compacts them, and t only rises, so the set cannot oscillate.
        lo = xmax - 1.0
        c = 0
        acc = 0.0
        for i in range(n):
            if x[i] > lo:
                buf[c] = x[i]
                acc += x[i]
                c += 1
        t = (acc - 1.0) / c
        while True:
            c2 = 0
            acc = 0.0
            for r in range(c):
                v = buf[r]
                if v > t:
                    buf[c2] = v
                    acc += v
                    c2 += 1
            if c2 == c or c2 == 0:
                break
            c = c2
            t = (acc - 1.0) / c
        tau[j] = t
        a_zy = 0.0
        a_yy = 0.0
        bj = b[j]
        for i in range(n):
            y = x[i] - t
            if y > 0:
                a_zy += (alpha[i] - Ct[j, i]) * y
                a_yy += y * y
                row[i] += bj * y
        zy[j] = a_zy
        yy[j] = a_yy
    return tau


def simplex_rows(alpha, Ct, scale, b, tau, zy, yy, row):
    """Project every ``x_j = (alpha - Ct[j]) * scale[j]`` onto the simplex, with the sums
    the quadratically regularised semi-dual needs, without sorting and without storing
    the projections.

    Parameters
    ----------
    alpha : ndarray, shape (n,)
    Ct : ndarray, shape (m, n), C-contiguous
    scale : ndarray, shape (m,)
        ``1 / (gamma b_j)`` (0 for an empty column).
    b : ndarray, shape (m,)
    tau : ndarray, shape (m,)
        Output: the thresholds, ``y_j = [x_j - tau_j]_+``.
    zy, yy : ndarrays, shape (m,)
        Output: ``sum_i (alpha_i - Ct[j, i]) y_ji`` and ``sum_i y_ji^2``.
    row : ndarray, shape (n,)
        Output: ``sum_j b_j y_ji`` (the row marginal of the plan ``T[:, j] = b_j y_j``).

    Returns
    -------
    tau

    Examples
    --------
    >>> import numpy as np
    >>> tau, zy, yy, row = np.empty(1), np.empty(1), np.empty(1), np.empty(2)
    >>> simplex_rows(np.array([1.0, 0.0]), np.zeros((1, 2)), np.ones(1), np.ones(1),
    ...              tau, zy, yy, row).tolist(), row.tolist()
    ([0.0], [1.0, 0.0])
    """
    m, n = Ct.shape
    for name, arr, size in (("alpha", alpha, n), ("row", row, n), ("scale", scale, m),
                            ("b", b, m), ("tau", tau, m), ("zy", zy, m), ("yy", yy, m)):
        if arr.shape != (size,):
            raise ValueError(f"simplex_rows: {name} has shape {arr.shape}, expected ({size},) "
                             f"for Ct {Ct.shape}")
    if not Ct.flags.c_contiguous:
        raise ValueError("simplex_rows: Ct must be C-contiguous")
    return _simplex_rows(alpha, Ct, scale, b, tau, zy, yy, row)
