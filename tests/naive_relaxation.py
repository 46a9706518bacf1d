"""Slow, obviously correct references for the SOR / SSOR relaxation kernels.

Plain Python loops over rows and stored entries, written for readability
rather than speed, to check :mod:`diffsolve.kernels.cpu.relaxation` and its
CUDA twin on small inputs. Unlike the kernels they return new arrays and
compute in float64 (or wider), so a float32 kernel is compared against a more
accurate yardstick.

Every sweep here is a special case of :func:`naive_sor_sweep_in_order`: one
SOR update per row, in a given order, always using the newest ``x``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "naive_is_valid_coloring",
    "naive_residual_norm",
    "naive_sor_solve",
    "naive_sor_sweep",
    "naive_sor_sweep_in_order",
    "naive_ssor_sweep",
]


def _reference_dtype(*arrays):
    """float64, or a wider floating dtype if an input already has one."""
    return np.result_type(np.float64, *(np.asarray(a).dtype for a in arrays))


def naive_sor_sweep_in_order(order, indptr, indices, data, diag, b, x, omega):
    """One SOR sweep visiting the rows in `order`; returns a new array.

    For each row ``i`` of `order`, in turn::

        x_i <- (1 - omega) x_i + omega (b_i - sum_{j != i} a_ij x_j) / a_ii

    with the current (already updated) values of ``x_j``. Works for 1-D and
    2-D ``x`` (``x[i]`` is then a row of ``k`` values).

    Parameters
    ----------
    order : sequence of int
        Rows to update, in order (a permutation of ``range(n)`` for a full
        sweep; any sequence is accepted).
    indptr, indices, data : array_like
        CSR arrays of the square matrix ``A``.
    diag : array_like, shape (n,)
        Diagonal of ``A``.
    b, x : array_like, shape (n,) or (n, k)
        Right-hand side(s) and current iterate (not modified).
    omega : float
        Relaxation factor.

    Returns
    -------
    numpy.ndarray
        The new iterate, in float64 (or wider).
    """
    dt = _reference_dtype(data, diag, b, x)
    x = np.array(x, dtype=dt)  # a copy: the input is left alone
    b = np.asarray(b, dtype=dt)
    omega = dt.type(omega)
    for i in order:
        i = int(i)
        s = np.zeros(x.shape[1:], dtype=dt)
        for jj in range(int(indptr[i]), int(indptr[i + 1])):
            j = int(indices[jj])
            if j != i:
                s = s + dt.type(data[jj]) * x[j]
        x[i] = (1 - omega) * x[i] + omega * (b[i] - s) / dt.type(diag[i])
    return x


def naive_sor_sweep(indptr, indices, data, diag, b, x, omega, reverse=False):
    """One forward (or, if `reverse`, backward) SOR sweep; returns a new array."""
    n = len(indptr) - 1
    order = range(n - 1, -1, -1) if reverse else range(n)
    return naive_sor_sweep_in_order(order, indptr, indices, data, diag, b, x, omega)


def naive_ssor_sweep(indptr, indices, data, diag, b, x, omega):
    """One SSOR sweep (forward, then backward); returns a new array."""
    x = naive_sor_sweep(indptr, indices, data, diag, b, x, omega)
    return naive_sor_sweep(indptr, indices, data, diag, b, x, omega, reverse=True)


def naive_residual_norm(indptr, indices, data, b, x):
    """``||b - A x||_2`` in float64 (or wider), by explicit loops."""
    dt = _reference_dtype(data, b, x)
    total = dt.type(0)
    for i in range(len(indptr) - 1):
        s = dt.type(0)
        for jj in range(int(indptr[i]), int(indptr[i + 1])):
            s += dt.type(data[jj]) * dt.type(x[int(indices[jj])])
        r = dt.type(b[i]) - s
        total += r * r
    return float(np.sqrt(total))


def naive_sor_solve(
    indptr, indices, data, diag, b, x, omega, symmetric, tol, maxiter, order=None
):
    """The stationary SOR / SSOR iteration, one sweep at a time.

    Stops as soon as ``||b - A x||_2 <= tol`` (checked on entry and after
    every sweep) or after `maxiter` sweeps.

    Parameters
    ----------
    indptr, indices, data, diag, b, x, omega
        As in :func:`naive_sor_sweep_in_order` (1-D `b` and `x`).
    symmetric : bool
        SSOR sweeps (forward then backward, counted as one).
    tol : float
        Absolute tolerance on the residual 2-norm.
    maxiter : int
        Maximum number of sweeps.
    order : sequence of int, optional
        Row order of a forward sweep (default: natural order); a backward
        sweep uses it reversed.

    Returns
    -------
    x : numpy.ndarray
        The final iterate (a new array).
    n_iters : int
        Number of sweeps done.
    residual_norm : float
        ``||b - A x||_2`` of the returned ``x``.
    """
    n = len(indptr) - 1
    order = list(range(n)) if order is None else [int(i) for i in order]
    x = np.array(x, dtype=_reference_dtype(data, diag, b, x))
    res = naive_residual_norm(indptr, indices, data, b, x)
    it = 0
    while res > tol and it < maxiter:
        x = naive_sor_sweep_in_order(order, indptr, indices, data, diag, b, x, omega)
        if symmetric:
            x = naive_sor_sweep_in_order(order[::-1], indptr, indices, data, diag, b, x, omega)
        it += 1
        res = naive_residual_norm(indptr, indices, data, b, x)
    return x, it, res


def naive_is_valid_coloring(indptr, indices, colors):
    """True when every row has a colour >= 0 and no stored ``a_ij`` (i != j)
    joins two rows of the same colour."""
    colors = np.asarray(colors)
    n = len(indptr) - 1
    if colors.shape != (n,) or (n and colors.min() < 0):
        return False
    for i in range(n):
        for jj in range(int(indptr[i]), int(indptr[i + 1])):
            j = int(indices[jj])
            if j != i and colors[j] == colors[i]:
                return False
    return True
