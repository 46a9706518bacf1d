"""Restarted GMRES(m) for general (nonsymmetric) systems, in array-API code.

Saad & Schultz, "GMRES: a generalized minimal residual algorithm for solving
nonsymmetric linear systems" (SIAM J. Sci. Stat. Comput., 1986); Saad, *Iterative Methods
for Sparse Linear Systems*, 2nd ed., Algorithm 6.11 (modified Gram–Schmidt Arnoldi with
Givens rotations) and §9.3.2 (right preconditioning, whose residual is the true one). The
Krylov basis lives in the arrays' namespace (NumPy, CuPy, array_api_strict); the small
Hessenberg least-squares problem is kept on the host as Python floats, so each Arnoldi step
reads its inner products from the device (one sync each, negligible next to a product).

After each cycle of ``restart`` steps the true residual is recomputed (one more product),
so the stopping test never trusts the Givens estimate alone; a cycle that does not reduce
the true residual will never do so again (the next cycle builds the same Krylov space):
``Status.BREAKDOWN``, "stagnated". A zero subdiagonal ``h_{j+1,j}`` is the lucky
breakdown (the solution lies in the Krylov space): the cycle ends and the true residual
decides.
"""

from __future__ import annotations

import math

from .. import _validate as V
from .._status import Status
from .._typing import Array, Callback, Matrix
from ._common import (
    Layout,
    LinearMap,
    Preconditioner,
    check_common,
    finish,
    safe_norms,
    scaled_system,
    wants_stop,
)
from ._result import KrylovResult, KrylovState

__all__ = ["gmres", "solve_gmres"]

WHERE = "diffsolve.krylov.gmres"


def gmres(A: Matrix, b: Array, *, x0: Array | None = None, rtol: float | None = None,
          atol: float = 0.0, restart: int = 30, maxiter: int | None = None,
          M: Matrix | None = None, callback: Callback[KrylovState] | None = None,
          ) -> KrylovResult:
    """Restarted GMRES on ``A x = b`` for any nonsingular ``A``.

    Signature (stable): ``gmres(A, b, *, x0=None, rtol=None, atol=0.0, restart=30,
    maxiter=None, M=None, callback=None) -> KrylovResult``.

    Parameters
    ----------
    A : callable, LinearOperator, dense 2-D array or sparse matrix
        A callable ``v -> A v`` on arrays of b's shape, or a matrix (``b`` of shape (n,)).
    b : array
        Right-hand side, any shape (one system).
    x0 : array, optional
        Initial guess of b's shape.
    rtol : float, optional
        Default ``1e-8`` in float64 and ``64 eps`` (7.6e-6) in float32, where rounding
        keeps the residual above ``1e-8`` (``diffsolve._tolerance``).
    atol : float
        With ``rtol``: stop when ``||b - A x|| <= max(rtol ||b||, atol)`` (true residual).
        ``rtol = atol = 0`` runs ``maxiter`` products.
    restart : int
        Arnoldi steps per cycle (the basis kept in memory).
    maxiter : int, optional
        Budget of products with ``A`` in Arnoldi steps (default ``10 N``); unlike SciPy,
        this counts products, not restart cycles.
    M : callable, LinearOperator, sparse matrix or array, optional
        Right preconditioner approximating ``A⁻¹`` (``A M y = b``, ``x = M y``), so the
        residual GMRES minimises is the true one; an array multiplies elementwise.
    callback : callable, optional
        ``callback(KrylovState)`` after every restart cycle (``x`` and the true
        ``residual_norm``); ``True`` stops.

    Returns
    -------
    KrylovResult

    Raises
    ------
    ValueError, TypeError
        Bad input: a wrong shape or dtype, an unknown option value, an option out of range,
        arrays from two libraries. The message names the argument, what was received and
        what would work.

    See Also
    --------
    diffsolve.krylov.cg : Symmetric positive definite systems.
    diffsolve.krylov.minres : Symmetric indefinite systems.
    diffsolve.implicit.custom_root : Uses GMRES for nonsymmetric implicit systems.

    Examples
    --------
    >>> import numpy as np
    >>> from diffsolve.krylov import gmres
    >>> A = np.array([[3.0, 2.0], [-1.0, 1.0]])        # nonsymmetric
    >>> res = gmres(A, np.array([1.0, 2.0]))
    >>> res.converged, np.allclose(A @ res.x, [1.0, 2.0])
    (True, True)
    """
    return solve_gmres(A, b, x0=x0, rtol=rtol, atol=atol, restart=restart, maxiter=maxiter,
                       M=M, callback=callback, where=WHERE)


def solve_gmres(A: Matrix, b: Array, *, x0: Array | None = None, rtol: float | None = None,
                atol: float = 0.0, restart: int = 30, maxiter: int | None = None,
                M: Matrix | None = None, callback: Callback[KrylovState] | None = None,
                where: str = WHERE) -> KrylovResult:
    """:func:`gmres` with the caller's name in error messages."""
    xp, b, x0, rtol, atol, maxiter, callback, _, _ = check_common(
        where, b, x0, rtol, atol, maxiter, callback, None)
    restart = V.positive_int(where, "restart", restart)
    layout = Layout(xp, b.shape, None)
    op = LinearMap(A, xp, layout, where)
    prec = Preconditioner(M, xp, layout, b.dtype, where)
    maxiter = 10 * layout.N if maxiter is None else maxiter
    restart = min(restart, layout.N)
    s_arr, s, early, Bs, Y, tol = scaled_system(xp, layout, b, x0, rtol, atol)
    if early is not None:
        r = math.nan if early is Status.NONFINITE else 0.0
        return _done(xp, layout, Y, s_arr, r, tol, early, 0, rtol, atol, maxiter, None)
    Bw = layout.to_work(b)
    fixed_budget = rtol == 0 and atol == 0

    total = 0
    status, detail = Status.MAX_ITERATIONS, None
    R = Bs - op(Y)
    beta = float(safe_norms(xp, R)[0])
    while True:
        if not math.isfinite(beta):
            status = Status.NONFINITE
            break
        if beta <= tol:
            status = Status.SUCCESS
            break
        if total >= maxiter or status is Status.BREAKDOWN:
            break
        m = min(restart, maxiter - total)
        D, products, breakdown = _cycle(op, prec, xp, R, beta, tol, m)
        total += products
        Y = Y + D
        R = Bs - op(Y)
        new_beta = float(safe_norms(xp, R)[0])
        if breakdown:
            status, detail = Status.BREAKDOWN, _SINGULAR
        elif not fixed_budget and math.isfinite(new_beta) and new_beta >= beta \
                and new_beta > tol:
            status, detail = Status.BREAKDOWN, _STAGNATED
        beta = new_beta
        if callback is not None:
            state = KrylovState(n_iters=total, x=layout.to_user(Y * s), residual_norm=beta * s)
            if wants_stop(callback(state)):
                if beta > tol:
                    status = Status.STOPPED
                    break
    if status is not Status.SUCCESS and math.isfinite(beta) and beta <= tol:
        status, detail = Status.SUCCESS, None
    return _done(xp, layout, Y, s_arr, beta, tol, status, total, rtol, atol, maxiter, detail,
                 residual_of=lambda X: safe_norms(xp, Bw - op(X)))


_SINGULAR = ("the Arnoldi process broke down (A is singular on the Krylov space): A is "
             "singular or the problem ill-posed; regularise A")
_STAGNATED = ("a restart cycle did not reduce the true residual, so GMRES(restart) has "
              "stagnated; increase restart, use a preconditioner M, or loosen rtol/atol")


def _done(xp, layout, Y, s_arr, r, tol, status, n_iters, rtol, atol, maxiter, detail,
          residual_of=None):
    dt = Y.dtype
    return finish(xp, layout, method="gmres", Y=Y, s=s_arr,
                  true_norm=xp.asarray([r], dtype=dt), tol=xp.asarray([tol], dtype=dt),
                  status=xp.asarray([int(status)], dtype=xp.int64), n_iters=n_iters,
                  column_iters=None, rtol=rtol, atol=atol, maxiter=maxiter, detail=detail,
                  residual_of=residual_of)


def _cycle(op, prec, xp, r, beta, tol, m):
    """One GMRES(m) cycle on ``A M y = r`` from ``y = 0``; returns ``(M y, steps,
    breakdown)``."""
    V_ = [r / beta]
    H = [[0.0] * m for _ in range(m + 1)]
    cs: list[float] = []
    sn: list[float] = []
    g = [beta] + [0.0] * m
    k = 0
    breakdown = False
    products = 0
    for j in range(m):
        w = op(prec(V_[j]))
        products += 1
        for i in range(j + 1):  # modified Gram–Schmidt
            h = float(xp.sum(V_[i] * w))
            H[i][j] = h
            w = w - h * V_[i]
        h_next = float(safe_norms(xp, w)[0])
        H[j + 1][j] = h_next
        for i in range(j):  # earlier rotations on the new column
            a, c = H[i][j], H[i + 1][j]
            H[i][j] = cs[i] * a + sn[i] * c
            H[i + 1][j] = -sn[i] * a + cs[i] * c
        denom = math.hypot(H[j][j], H[j + 1][j])
        if not math.isfinite(denom):
            return xp.full_like(r, math.nan), products, False
        if denom == 0.0:  # A is singular on the Krylov space: no progress possible
            breakdown = True
            break
        cs.append(H[j][j] / denom)
        sn.append(H[j + 1][j] / denom)
        H[j][j], H[j + 1][j] = denom, 0.0
        g[j + 1] = -sn[j] * g[j]
        g[j] = cs[j] * g[j]
        k = j + 1
        # h_next == 0 is the lucky breakdown: the solution lies in the Krylov space
        if abs(g[j + 1]) <= tol or h_next == 0.0:
            break
        V_.append(w / h_next)
    if k == 0:
        return xp.zeros_like(r), products, breakdown
    y = [0.0] * k  # back substitution on the rotated (upper triangular) Hessenberg
    for i in range(k - 1, -1, -1):
        y[i] = (g[i] - sum(H[i][j] * y[j] for j in range(i + 1, k))) / H[i][i]
    d = y[0] * V_[0]
    for i in range(1, k):
        d = d + y[i] * V_[i]
    return prec(d), products, breakdown
