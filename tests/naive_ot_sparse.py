"""Slow, obviously-correct references for the sparse-OT kernels and operators.

Plain Python loops over columns, written for readability: they check
``kernels/{cpu,cuda}/ot_sparse.py`` and the projections of ``diffsolve.ot._sparse`` on
small inputs. Everything is computed in float64.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "naive_scatter_add_rows",
    "naive_sparse_simplex_projection",
    "naive_topk_relu",
    "naive_topk_rows",
]


def naive_topk_rows(alpha, shift, Ct, k):
    """Top-k indices and values of ``z_j = alpha + shift[j] - Ct[j]`` for every row j,
    in descending order, ties broken by the smaller index."""
    m, n = Ct.shape
    idx = np.zeros((m, k), dtype=np.int64)
    val = np.zeros((m, k))
    for j in range(m):
        z = [float(alpha[i]) + float(shift[j]) - float(Ct[j, i]) for i in range(n)]
        order = sorted(range(n), key=lambda i: (-z[i], i))[:k]
        idx[j] = order
        val[j] = [z[i] for i in order]
    return idx, val


def naive_scatter_add_rows(idx, w, n):
    """``out[i] = sum of w[j, r] with idx[j, r] == i``."""
    out = np.zeros(n)
    for j in range(idx.shape[0]):
        for r in range(idx.shape[1]):
            out[int(idx[j, r])] += float(w[j, r])
    return out


def naive_sparse_simplex_projection(x, k):
    """argmin ||y - x|| over the simplex with at most k nonzeros (Kyrillidis et al. 2013):
    keep the k largest entries, project them onto the simplex by bisection on the
    threshold, zero the rest."""
    x = np.asarray(x, dtype=np.float64)
    keep = sorted(range(len(x)), key=lambda i: (-x[i], i))[:k]
    v = x[keep]
    lo, hi = v.min() - 1.0, v.max()
    for _ in range(200):  # sum([v - t]_+) is decreasing in t: bisect for the root of = 1
        t = 0.5 * (lo + hi)
        if np.maximum(v - t, 0.0).sum() > 1.0:
            lo = t
        else:
            hi = t
    y = np.zeros_like(x)
    y[keep] = np.maximum(v - 0.5 * (lo + hi), 0.0)
    return y


def naive_topk_relu(z, k):
    """``[z]_+`` on the k largest entries of z, 0 elsewhere (the gradient of delta / gamma)."""
    z = np.asarray(z, dtype=np.float64)
    keep = sorted(range(len(z)), key=lambda i: (-z[i], i))[:k]
    out = np.zeros_like(z)
    out[keep] = np.maximum(z[keep], 0.0)
    return out
