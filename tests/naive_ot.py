"""Slow, obviously correct references for the OT kernels and the log-domain Sinkhorn loop.

Everything is computed in float64 with plain NumPy (``exp`` of max-shifted values, one row
or column at a time), to check :mod:`diffsolve.kernels.cpu.ot`, its CUDA twin and
:func:`diffsolve.ot.sinkhorn` on small inputs.
"""

from __future__ import annotations

import numpy as np

__all__ = ["naive_lse_cols", "naive_lse_rows", "naive_sinkhorn"]


def _lse(v):
    v = np.asarray(v, dtype=np.float64)
    mx = np.max(v)
    if mx == -np.inf:
        return -np.inf
    return mx + np.log(np.sum(np.exp(v - mx)))


def naive_lse_rows(C, g, eps):
    """``out[k, i] = eps * log sum_j exp((g[k, j] - C[k, i, j]) / eps)``."""
    C = np.asarray(C, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    out = np.empty(C.shape[:2])
    for k in range(C.shape[0]):
        for i in range(C.shape[1]):
            out[k, i] = eps * _lse((g[k] - C[k, i]) / eps)
    return out


def naive_lse_cols(C, f, eps):
    """``out[k, j] = eps * log sum_i exp((f[k, i] - C[k, i, j]) / eps)``."""
    C = np.asarray(C, dtype=np.float64)
    f = np.asarray(f, dtype=np.float64)
    out = np.empty((C.shape[0], C.shape[2]))
    for k in range(C.shape[0]):
        for j in range(C.shape[2]):
            out[k, j] = eps * _lse((f[k] - C[k, :, j]) / eps)
    return out


def naive_sinkhorn(a, b, C, eps, n_iters):
    """``n_iters`` plain log-domain Sinkhorn iterations from ``f = 0`` (one problem).

    Returns ``(plan, f, g)`` with the potentials in the gauge ``sum(f) = sum(g)``.
    """
    a, b, C = (np.asarray(x, dtype=np.float64) for x in (a, b, C))
    f = np.zeros(len(a))
    g = np.zeros(len(b))
    for _ in range(n_iters):
        g = eps * np.log(b) - naive_lse_cols(C[None], f[None], eps)[0]
        f = eps * np.log(a) - naive_lse_rows(C[None], g[None], eps)[0]
    c = (g.sum() - f.sum()) / (len(a) + len(b))
    f, g = f + c, g - c
    plan = np.exp((f[:, None] + g[None, :] - C) / eps)
    return plan, f, g
