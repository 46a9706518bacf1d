"""Slow, obviously-correct references for the compiled kernels.

Plain Python loops over rows and stored entries, written for readability
rather than speed: they exist only to check the Numba and CUDA kernels on
small inputs. They return new arrays and accumulate in (at least) float64,
so they are more accurate than a float32 kernel and make a fair yardstick
for it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["naive_csr_matvec", "naive_csr_sampled_outer"]


def _reference_dtype(*arrays):
    """float64, or a wider floating dtype if an input already has one."""
    return np.result_type(np.float64, *(a.dtype for a in arrays))


def naive_csr_matvec(indptr, indices, data, x):
    """Reference ``A @ x`` for a CSR matrix ``A`` given by its three arrays.

    Parameters
    ----------
    indptr, indices, data : numpy.ndarray
        CSR arrays of ``A`` (``n_rows + 1``, ``nnz``, ``nnz``).
    x : numpy.ndarray, shape (n_cols,) or (n_cols, k)
        Dense right-hand side(s).

    Returns
    -------
    numpy.ndarray, shape (n_rows,) or (n_rows, k)
        ``A @ x`` in float64 (or wider).
    """
    indptr = np.asarray(indptr)
    x = np.asarray(x)
    n_rows = len(indptr) - 1
    out = np.zeros((n_rows, *x.shape[1:]), dtype=_reference_dtype(data, x))
    for i in range(n_rows):
        for jj in range(int(indptr[i]), int(indptr[i + 1])):
            j = int(indices[jj])
            # x[j] is a scalar for 1-D x and the row x[j, :] for 2-D x.
            out[i] += out.dtype.type(data[jj]) * x[j].astype(out.dtype)
    return out


def naive_csr_sampled_outer(indptr, indices, u, v):
    """Reference ``(u @ v.T)[i, j]`` at each stored entry of a CSR pattern.

    Parameters
    ----------
    indptr, indices : numpy.ndarray
        CSR pattern (``n_rows + 1``, ``nnz``).
    u : numpy.ndarray, shape (n_rows,) or (n_rows, k)
    v : numpy.ndarray, shape (n_cols,) or (n_cols, k)

    Returns
    -------
    numpy.ndarray, shape (nnz,)
        ``out[jj] = sum_c u[i, c] * v[j, c]`` (or ``u[i] * v[j]`` for 1-D
        inputs) for the entry ``jj`` at row ``i``, column ``j``, in float64
        (or wider).
    """
    indptr = np.asarray(indptr)
    u = np.asarray(u)
    v = np.asarray(v)
    dtype = _reference_dtype(u, v)
    out = np.zeros(len(indices), dtype=dtype)
    for i in range(len(indptr) - 1):
        for jj in range(int(indptr[i]), int(indptr[i + 1])):
            j = int(indices[jj])
            ui = np.atleast_1d(u[i]).astype(dtype)
            vj = np.atleast_1d(v[j]).astype(dtype)
            total = dtype.type(0)
            for c in range(len(ui)):
                total += ui[c] * vj[c]
            out[jj] = total
    return out


# --------------------------------------------------------------------------------------
# Krylov vector kernels (kernels/cpu/krylov.py)
# --------------------------------------------------------------------------------------
def naive_column_dots(a, b):
    """out[c] = sum_i a[i, c] * b[i, c], accumulated in float64 row by row."""
    n, k = a.shape
    out = np.zeros(k)
    for c in range(k):
        for i in range(n):
            out[c] += float(a[i, c]) * float(b[i, c])
    return out


def naive_curvature_dots(p, Ap):
    """Rows (pᵀp, pᵀAp, ApᵀAp) per column."""
    return np.stack([naive_column_dots(p, p), naive_column_dots(p, Ap),
                     naive_column_dots(Ap, Ap)])


def naive_cg_update(x, r, p, Ap, alpha):
    """New (x + alpha p, r - alpha Ap, ||r_new||² per column), inputs untouched."""
    x_new = x.astype(np.float64) + alpha.astype(np.float64) * p
    r_new = r.astype(np.float64) - alpha.astype(np.float64) * Ap
    return x_new, r_new, naive_column_dots(r_new, r_new)


def naive_cg_direction(p, z, beta):
    """z + beta p per column."""
    return z.astype(np.float64) + beta.astype(np.float64) * p


def naive_cg_step_size(rz, curv, a_norm, active, bad, floor):
    """(alpha, a_norm, bad) of kernels.cpu.krylov.cg_step_size, inputs untouched."""
    a_norm, bad = a_norm.copy(), bad.copy()
    alpha = np.zeros_like(rz)
    for c in range(rz.shape[0]):
        pp, pAp, ApAp = curv[:, c]
        if pp > 0:
            a_norm[c] = max(a_norm[c], np.sqrt(ApAp / pp))
        if active[c] and pAp <= floor * pp * a_norm[c]:
            bad[c] = True
        alpha[c] = rz[c] / pAp if active[c] and not bad[c] else 0.0
    return alpha, a_norm, bad


def naive_cg_next(rz, rz_new, rr, tol, active, bad, column_iters):
    """(beta, rz, active, column_iters) of kernels.cpu.krylov.cg_next, inputs untouched."""
    rz, active, column_iters = rz.copy(), active.copy(), column_iters.copy()
    beta = np.zeros_like(rz)
    for c in range(rz.shape[0]):
        step = active[c] and not bad[c]
        beta[c] = rz_new[c] / rz[c] if step and rz[c] != 0 else 0.0
        if step:
            rz[c] = rz_new[c]
            column_iters[c] += 1
        active[c] = step and np.sqrt(rr[c]) > tol[c]
    return beta, rz, active, column_iters
