"""CuPy twins of :mod:`diffsolve.kernels.cpu.krylov` (identical signatures, in place).

Elementwise work is one fused ``ElementwiseKernel`` launch; column sums use CuPy's
reductions. Everything stays on the device: no value is read back to the host here.
"""

from __future__ import annotations

import cupy

__all__ = ["cg_direction", "cg_next", "cg_step_size", "cg_update", "column_dots",
           "curvature_dots"]

_update = cupy.ElementwiseKernel(
    "T p, T Ap, T alpha", "T x, T r",
    "x += alpha * p; r -= alpha * Ap;",
    "diffsolve_cg_update",
)
_direction = cupy.ElementwiseKernel(
    "T z, T beta", "T p",
    "p = z + beta * p;",
    "diffsolve_cg_direction",
)


def column_dots(a, b, out):
    """``out[c] = sum_i a[i, c] * b[i, c]``; returns ``out``."""
    cupy.sum(a * b, axis=0, out=out)
    return out


def curvature_dots(p, Ap, out):
    """``out[0] = pᵀp``, ``out[1] = pᵀAp``, ``out[2] = (Ap)ᵀAp`` per column; returns ``out``."""
    cupy.sum(p * p, axis=0, out=out[0])
    cupy.sum(p * Ap, axis=0, out=out[1])
    cupy.sum(Ap * Ap, axis=0, out=out[2])
    return out


def cg_update(x, r, p, Ap, alpha, rr):
    """``x += alpha p``, ``r -= alpha Ap`` in place, ``rr = ||r||²`` per column; returns ``rr``."""
    _update(p, Ap, alpha, x, r)
    cupy.sum(r * r, axis=0, out=rr)
    return rr


def cg_direction(p, z, beta):
    """``p = z + beta p`` in place; returns ``p``."""
    _direction(z, beta, p)
    return p


_step_size = cupy.ElementwiseKernel(
    "T rz, T pp, T pAp, T ApAp, bool active, T floor", "T a_norm, bool bad, T alpha",
    """
    if (pp > 0) { T est = sqrt(ApAp / pp); if (est > a_norm) a_norm = est; }
    if (active && pAp <= floor * pp * a_norm) bad = true;
    alpha = (active && !bad) ? rz / pAp : (T)0;
    """,
    "diffsolve_cg_step_size",
)
_next = cupy.ElementwiseKernel(
    "T rz_new, T rr, T tol, bool bad", "T rz, bool active, int64 column_iters, T beta",
    """
    bool step = active && !bad;
    beta = (step && rz != 0) ? rz_new / rz : (T)0;
    if (step) { rz = rz_new; column_iters += 1; }
    active = step && (sqrt(rr) > tol);
    """,
    "diffsolve_cg_next",
)


def cg_step_size(rz, curv, a_norm, active, bad, floor, alpha):
    """Step length per column and the breakdown test, in place; returns ``alpha``."""
    _step_size(rz, curv[0], curv[1], curv[2], active, rz.dtype.type(floor), a_norm, bad, alpha)
    return alpha


def cg_next(rz, rz_new, rr, tol, active, bad, column_iters, beta):
    """Direction coefficient and bookkeeping after an update, in place; returns ``beta``."""
    _next(rz_new, rr, tol, bad, rz, active, column_iters, beta)
    return beta
