"""The dtype-aware default relative tolerance shared by the iterative solvers.

A solver's ``rtol=None`` (its default) is ``max(rtol64, 64 eps)`` of the solve's dtype:
the tolerance the solver has always had (``rtol64``) wherever the dtype can reach it
(float64), and ``64 eps`` (7.6e-6) in float32, where ``1e-8``-``1e-10`` lies below what
rounding lets the stopping quantity reach. Without it a float32 solve at a float64
default runs out its whole budget and warns on a well-posed problem. An explicit
``rtol`` is always kept.

The floors that fix the factor 64 (float32, measured with the solvers themselves; the
factor leaves a margin of 5-30 over them):

* Sinkhorn marginal error: 2-7 eps (n = 50-500, ε = 1-0.01, unit mass, both kernels).
* CG / PCG / SSOR-CG / SOR true residual ``||b - A x|| / ||b||``: 1-4 eps on 2-D Poisson
  (m = 8-32) and 9-14 eps on random SPD matrices of condition 1e2 (n = 50, 200). The
  floor grows like ``cond(A) eps`` (2000-4000 eps at condition 1e4), so an
  ill-conditioned float32 system still reports that it cannot meet the default.
* Sparse Newton-Sinkhorn marginal error: 3-43 eps (n = 60, 200; ε = 1e-2, 1e-3); the
  float32 default converged on each of them (0-18 Newton steps).
"""

from __future__ import annotations

__all__ = ["EPS_FACTOR", "default_rtol", "resolve_rtol"]

#: ``rtol = None`` is ``max(rtol64, EPS_FACTOR * eps)`` (see the module docstring)
EPS_FACTOR = 64


def default_rtol(xp, dtype, rtol64: float) -> float:
    """The default ``rtol`` of a solve in ``dtype``: ``max(rtol64, 64 eps)``.

    Parameters
    ----------
    xp : array namespace
        The namespace of the solve's arrays (for ``finfo``).
    dtype : dtype
        The solve's floating dtype.
    rtol64 : float
        The solver's default where the dtype allows it (float64).

    Returns
    -------
    float
        ``rtol64`` in float64, ``64 eps`` (7.6e-6) in float32 for any ``rtol64`` below it.

    Examples
    --------
    >>> import array_api_compat.numpy as xp
    >>> default_rtol(xp, xp.float64, 1e-9), round(default_rtol(xp, xp.float32, 1e-9), 7)
    (1e-09, 7.6e-06)
    """
    return max(float(rtol64), EPS_FACTOR * float(xp.finfo(dtype).eps))


def resolve_rtol(xp, dtype, rtol, rtol64: float):
    """``rtol`` as given, or :func:`default_rtol` where it is ``None``.

    Examples
    --------
    >>> import array_api_compat.numpy as xp
    >>> resolve_rtol(xp, xp.float32, 1e-9, 1e-8), resolve_rtol(xp, xp.float64, None, 1e-8)
    (1e-09, 1e-08)
    """
    return default_rtol(xp, dtype, rtol64) if rtol is None else rtol
