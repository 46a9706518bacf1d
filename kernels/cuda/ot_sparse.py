"""CuPy twins of :mod:`diffsolve.kernels.cpu.ot_sparse` (same names, signatures, results).

``topk_rows`` forms ``z = alpha + shift[:, None] - Ct`` on the device and takes the first
k entries of a stable descending sort of every row (CuPy sorts the rows of a 2-D array as
one segmented device sort), so ties are broken by the smaller index as on the CPU.
``scatter_add_rows`` uses ``cupy.add.at`` (atomic adds): the order of the additions
into one row is unspecified, so row sums can differ from the CPU twin in the last bits.

This module imports :mod:`cupy` at the top on purpose: it is only imported once CuPy
inputs have been seen.
"""

from __future__ import annotations

import cupy

from ._raw import as_device

__all__ = ["relu_marginals", "scatter_add_rows", "simplex_rows", "topk_rows"]


def topk_rows(alpha, shift, Ct, k, idx, val):
    """Top-k entries of every ``z_j = alpha + shift[j] - Ct[j]``, in descending order.

    See :func:`diffsolve.kernels.cpu.ot_sparse.topk_rows`; ``idx`` (int64) and ``val`` are
    written in place and returned.
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
    Ct = as_device(Ct, "Ct")
    z = as_device(alpha, "alpha")[None, :] + as_device(shift, "shift")[:, None] - Ct
    # argsort of -z is stable, so equal values keep ascending indices (as the CPU twin)
    order = cupy.argsort(-z, axis=1)[:, : int(k)]
    idx[...] = order
    val[...] = cupy.take_along_axis(z, order, axis=1)
    return idx, val


def scatter_add_rows(idx, w, out):
    """``out[i] = sum of w[j, r] over (j, r) with idx[j, r] == i``; see the CPU twin."""
    if idx.shape != w.shape or out.ndim != 1:
        raise ValueError(f"scatter_add_rows: idx {idx.shape} and w {w.shape} must have one "
                         f"shape and out {out.shape} must be 1-D")
    # no range check on idx here: it would read two numbers back from the device on every
    # call (the CPU twin checks); idx comes from topk_rows inside diffsolve
    out[...] = 0
    # cupy.add.at: cupyx.scatter_add is deprecated since CuPy 13
    cupy.add.at(out, idx.reshape(-1), w.reshape(-1))
    return out


def relu_marginals(alpha, beta, C, row, col):
    """Marginals and squared norm of ``[alpha_i + beta_j - C_ij]_+``; see the CPU twin.

    Returns a 0-d device array (no host synchronisation here).
    """
    n, m = C.shape
    if alpha.shape != (n,) or beta.shape != (m,) or row.shape != (n,) or col.shape != (m,):
        raise ValueError(f"relu_marginals: alpha {alpha.shape}, beta {beta.shape}, row "
                         f"{row.shape}, col {col.shape} do not match C {C.shape}")
    P = cupy.maximum(as_device(alpha, "alpha")[:, None] + as_device(beta, "beta")[None, :]
                     - as_device(C, "C"), 0)
    row[...] = P.sum(axis=1)
    col[...] = P.sum(axis=0)
    return (P * P).sum()


def simplex_rows(alpha, Ct, scale, b, tau, zy, yy, row):
    """Simplex projection of every ``(alpha - Ct[j]) * scale[j]`` with the semi-dual's
    sums; see the CPU twin. The threshold comes from a device sort of each row (the CPU
    twin's Michelot passes are branchy loops, a poor fit for a GPU)."""
    m, n = Ct.shape
    for name, arr, size in (("alpha", alpha, n), ("row", row, n), ("scale", scale, m),
                            ("b", b, m), ("tau", tau, m), ("zy", zy, m), ("yy", yy, m)):
        if arr.shape != (size,):
            raise ValueError(f"simplex_rows: {name} has shape {arr.shape}, expected ({size},) "
                             f"for Ct {Ct.shape}")
    Z = as_device(alpha, "alpha")[None, :] - as_device(Ct, "Ct")
    X = Z * scale[:, None]
    Xs = cupy.sort(X, axis=1)[:, ::-1]
    cssv = cupy.cumsum(Xs, axis=1) - 1
    r = cupy.arange(1, n + 1, dtype=X.dtype)
    rho = cupy.sum(Xs - cssv / r > 0, axis=1)
    tau[...] = cssv[cupy.arange(m), rho - 1] / rho
    Y = cupy.maximum(X - tau[:, None], 0)
    zy[...] = (Z * Y).sum(axis=1)
    yy[...] = (Y * Y).sum(axis=1)
    row[...] = (b[:, None] * Y).sum(axis=0)
    return tau
