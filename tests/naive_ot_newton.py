"""Slow, obviously-correct references for the ``ot_newton`` kernels (kernels/*/ot_newton.py)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def naive_plan_marginals(f, g, C, inv_eps):
    P = np.exp((f[:, None] + g[None, :] - C) * inv_eps)
    return P, P.sum(axis=1), P.sum(axis=0)


def naive_kth_largest(P, k):
    return float(np.sort(P, axis=None)[::-1][k - 1])


def naive_threshold_csr(P, tau):
    """Entries with ``P >= tau`` and ``P > 0``, row by row, columns increasing."""
    indptr, indices, data = [0], [], []
    for i in range(P.shape[0]):
        for j in range(P.shape[1]):
            if P[i, j] >= tau and P[i, j] > 0:
                indices.append(j)
                data.append(P[i, j])
        indptr.append(len(indices))
    return np.array(indptr), np.array(indices, dtype=np.int64), np.array(data, dtype=P.dtype)


def naive_csr_transpose(indptr, indices, data, n_cols):
    A = sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, n_cols))
    At = A.T.tocsr()
    At.sort_indices()
    return At.indptr, At.indices, At.data


def naive_newton_step(Pk, r, c, grad_f, grad_g, eps, fixed):
    """Dense solve of ``[[diag(r), P̃], [P̃ᵀ, diag(c)]] (df, dg) = eps (grad_f, grad_g)`` with
    ``dg[fixed] = 0`` (the row and column of that unknown removed)."""
    n, m = Pk.shape
    M = np.block([[np.diag(r), Pk], [Pk.T, np.diag(c)]])
    rhs = eps * np.concatenate([grad_f, grad_g])
    keep = np.array([k for k in range(n + m) if k != n + fixed])
    x = np.zeros(n + m)
    x[keep] = np.linalg.solve(M[np.ix_(keep, keep)], rhs[keep])
    return x[:n], x[n:]
