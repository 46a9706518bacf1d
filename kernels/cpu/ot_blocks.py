"""Numba kernels for Sinkhorn between point clouds, one block pair at a time.

The sharded Sinkhorn of :mod:`diffsolve.distributed` never forms a cost matrix: each task
gets a block of points ``P`` (p, d), a block ``Q`` (q, d) and the potential ``w`` (q,) on
``Q`` and needs, for the squared Euclidean cost ``c_ij = ||P_i - Q_j||^2``,

    sqeuclidean_lse:   out[i] = eps * log sum_j exp((w_j - c_ij) / eps)          (p,)
    sqeuclidean_apply: r[i]   = sum_j exp((u_i + w_j - c_ij) / eps)              (p,)
                       PQ[i]  = sum_j exp((u_i + w_j - c_ij) / eps) Q_j          (p, d)

The first is the half-step of log-domain Sinkhorn restricted to the block pair (the
cost is symmetric, so both half-steps use it with the roles of the clouds swapped); the
second gives the row sums of the plan block and its product with the points, which the
marginal error and the gradient of the cost with respect to the points need. Each row's
cost entries are computed into a buffer of ``q`` numbers, shifted by their maximum
exponent and summed (two passes, as :mod:`diffsolve.kernels.cpu.ot`), so any finite input
is safe for any ``eps > 0``. The exponential is that module's vectorisable ``_exp_neg``.

The kernels are serial: in a Dask worker each task is one thread, and the parallelism is
Dask's (one task per block pair); a ``prange`` here would oversubscribe the cores.
"""

from __future__ import annotations

import math

import numpy as np

from ._config import jit
from .ot import _exp_neg

__all__ = ["sqeuclidean_apply", "sqeuclidean_lse"]


@jit()
def _sqeuclidean_lse(P, QT, w, eps, out):  # pragma: no cover - compiled
    p, d = P.shape
    q = QT.shape[1]
    inv = 1.0 / eps
    c = np.empty(q)
    tmp = np.empty(q)
    for i in range(p):
        # the cost row, one coordinate at a time over contiguous columns of Q^T (vectorised;
        # the same sum order as sum_k (P_ik - Q_jk)^2)
        for j in range(q):
            c[j] = 0.0
        for k in range(d):
            pik = P[i, k]
            row = QT[k]
            for j in range(q):
                t = pik - row[j]
                c[j] += t * t
        mx = -np.inf
        for j in range(q):
            v = w[j] - c[j]
            tmp[j] = v
            mx = max(mx, v)
        if mx == -np.inf:
            out[i] = -np.inf
            continue
        for j in range(q):
            tmp[j] = _exp_neg((tmp[j] - mx) * inv)
        s = 0.0
        for j in range(q):
            s += tmp[j]
        out[i] = mx + eps * math.log(s)
    return out


@jit()
def _sqeuclidean_apply(P, QT, u, w, eps, r, PQ):  # pragma: no cover - compiled
    p, d = P.shape
    q = QT.shape[1]
    inv = 1.0 / eps
    c = np.empty(q)
    tmp = np.empty(q)
    for i in range(p):
        for j in range(q):
            c[j] = 0.0
        for k in range(d):
            pik = P[i, k]
            row = QT[k]
            for j in range(q):
                t = pik - row[j]
                c[j] += t * t
        mx = -np.inf
        for j in range(q):
            v = w[j] - c[j]
            tmp[j] = v
            mx = max(mx, v)
        if mx == -np.inf or u[i] == -np.inf:
            r[i] = 0.0
            for k in range(d):
                PQ[i, k] = 0.0
            continue
        # K_ij = exp((u_i + mx)/eps) exp((w_j - c_ij - mx)/eps): the second factor is <= 1,
        # the range of the fast exponential
        for j in range(q):
            tmp[j] = _exp_neg((tmp[j] - mx) * inv)
        scale = math.exp((u[i] + mx) * inv)
        s = 0.0
        for j in range(q):
            s += tmp[j]
        r[i] = scale * s
        for k in range(d):
            row = QT[k]
            acc = 0.0
            for j in range(q):
                acc += tmp[j] * row[j]
            PQ[i, k] = scale * acc
    return r, PQ


def _check_points(P, Q, what):
    if P.ndim != 2 or Q.ndim != 2 or P.shape[1] != Q.shape[1]:
        raise ValueError(f"{what}: expected point blocks P (p, d) and Q (q, d) with the same "
                         f"d; got {P.shape} and {Q.shape}")
    if not (P.flags.c_contiguous and Q.flags.c_contiguous):
        raise ValueError(f"{what}: P and Q must be C-contiguous")


def _check_vector(v, n, name, what):
    if v.shape != (n,) or not v.flags.c_contiguous:
        raise ValueError(f"{what}: {name} must be a C-contiguous vector of shape {(n,)}, got "
                         f"{v.shape}")


def sqeuclidean_lse(P, Q, w, eps, out):
    """``out[i] = eps * log sum_j exp((w[j] - ||P[i] - Q[j]||^2) / eps)``.

    Parameters
    ----------
    P : float64 array (p, d), C-contiguous
    Q : float64 array (q, d), C-contiguous
    w : float64 array (q,)
        The potential on ``Q`` (``-inf`` entries contribute nothing).
    eps : float > 0
    out : float64 array (p,)
        Written in place and returned.
    """
    _check_points(P, Q, "sqeuclidean_lse")
    _check_vector(w, Q.shape[0], "w", "sqeuclidean_lse")
    _check_vector(out, P.shape[0], "out", "sqeuclidean_lse")
    return _sqeuclidean_lse(P, np.ascontiguousarray(Q.T), w, float(eps), out)


def sqeuclidean_apply(P, Q, u, w, eps, r, PQ):
    """Row sums ``r`` and the product ``PQ = K Q`` of the plan block
    ``K_ij = exp((u[i] + w[j] - ||P[i] - Q[j]||^2) / eps)``.

    Parameters
    ----------
    P, Q : float64 arrays (p, d), (q, d), C-contiguous
    u, w : float64 arrays (p,), (q,)
        The potentials on ``P`` and ``Q``.
    eps : float > 0
    r : float64 array (p,), PQ : float64 array (p, d)
        Written in place and returned as ``(r, PQ)``.
    """
    _check_points(P, Q, "sqeuclidean_apply")
    _check_vector(u, P.shape[0], "u", "sqeuclidean_apply")
    _check_vector(w, Q.shape[0], "w", "sqeuclidean_apply")
    _check_vector(r, P.shape[0], "r", "sqeuclidean_apply")
    if PQ.shape != P.shape or not PQ.flags.c_contiguous:
        raise ValueError(f"sqeuclidean_apply: PQ must be C-contiguous of shape {P.shape}, "
                         f"got {PQ.shape}")
    return _sqeuclidean_apply(P, np.ascontiguousarray(Q.T), u, w, float(eps), r, PQ)
