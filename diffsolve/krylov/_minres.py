"""MINRES for symmetric (possibly indefinite or singular) systems.

Paige & Saunders, "Solution of sparse indefinite systems of linear equations", SIAM J.
Numer. Anal. 12 (1975); the recurrences (preconditioned Lanczos, Givens QR of the
tridiagonal matrix, the ``||A r||`` estimate for least squares) follow the
Stanford SOL MINRES and SciPy's ``scipy.sparse.linalg.minres``. Vectors live in the
arrays' namespace; the Lanczos scalars are host floats (one sync per inner product).

The preconditioner must be symmetric positive definite; the recursive residual it
tracks is ``||r||_M``, so its stopping test only triggers the one that counts: the true
residual ``||b - A x||₂ <= max(rtol ||b||, atol)``, recomputed then (and restarted from
while the budget lasts). On a singular system the Lanczos vectors lose orthogonality and
the iterates can drift, so the true residual is also checked every ``TRUE_CHECK``
iterations and the best iterate is kept. For a singular ``A`` with ``b`` outside its range
no ``x`` meets the tolerance; MINRES stops when ``||A r|| <= rtol ||A|| ||r||`` and returns
that least-squares iterate with ``Status.BREAKDOWN`` and a message that says so.
"""

from __future__ import annotations

import math

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

__all__ = ["minres", "solve_minres"]

WHERE = "diffsolve.krylov.minres"
#: iterations between true-residual checks (drift on singular systems; ~5 % more products)
TRUE_CHECK = 20
#: checks in a row without a better true residual before MINRES is declared stagnated
PATIENCE = 3


def minres(A: Matrix, b: Array, *, x0: Array | None = None, rtol: float | None = None,
           atol: float = 0.0, maxiter: int | None = None, M: Matrix | None = None,
           callback: Callback[KrylovState] | None = None) -> KrylovResult:
    """MINRES on ``A x = b`` for symmetric ``A`` (indefinite or singular allowed).

    Signature (stable): ``minres(A, b, *, x0=None, rtol=None, atol=0.0, maxiter=None,
    M=None, callback=None) -> KrylovResult``.

    Parameters
    ----------
    A : callable, LinearOperator, dense 2-D array or sparse matrix
        Symmetric; a callable ``v -> A v`` on arrays of b's shape.
    b : array
        Right-hand side, any shape (one system).
    x0 : array, optional
        Initial guess of b's shape.
    rtol : float, optional
        Default ``1e-8`` in float64 and ``64 eps`` (7.6e-6) in float32, where rounding
        keeps the residual above ``1e-8`` (``diffsolve._tolerance``).
    atol : float
        With ``rtol``: stop when ``||b - A x|| <= max(rtol ||b||, atol)`` (true residual).
        ``rtol = atol = 0`` runs ``maxiter`` iterations.
    maxiter : int, optional
        Iteration budget (default ``5 N``).
    M : callable, LinearOperator, sparse matrix or array, optional
        Symmetric positive definite preconditioner (approximating ``A⁻¹`` in magnitude,
        e.g. ``1 / |diag(A)|`` as an array that multiplies elementwise).
    callback : callable, optional
        ``callback(KrylovState)`` after every iteration (``residual_norm`` is the
        recursive estimate, in the M-norm when preconditioned); ``True`` stops.

    Returns
    -------
    KrylovResult
        ``Status.BREAKDOWN`` when ``A`` is singular and ``b`` not in its range (``x`` is
        then a least-squares solution), when ``M`` is not positive definite or ``A`` not
        symmetric, or when the true residual stagnates above the tolerance.

    Raises
    ------
    ValueError, TypeError
        Bad input: a wrong shape or dtype, an unknown option value, an option out of range,
        arrays from two libraries. The message names the argument, what was received and
        what would work.

    See Also
    --------
    diffsolve.krylov.cg : Symmetric positive definite systems.
    diffsolve.krylov.gmres : Nonsymmetric systems.

    Examples
    --------
    >>> import numpy as np
    >>> from diffsolve.krylov import minres
    >>> A = np.array([[2.0, 1.0], [1.0, -3.0]])        # symmetric indefinite
    >>> res = minres(A, np.array([1.0, 2.0]))
    >>> res.converged, np.allclose(A @ res.x, [1.0, 2.0])
    (True, True)
    """
    return solve_minres(A, b, x0=x0, rtol=rtol, atol=atol, maxiter=maxiter, M=M,
                        callback=callback, where=WHERE)


def solve_minres(A: Matrix, b: Array, *, x0: Array | None = None, rtol: float | None = None,
                 atol: float = 0.0, maxiter: int | None = None, M: Matrix | None = None,
                 callback: Callback[KrylovState] | None = None,
                 where: str = WHERE) -> KrylovResult:
    """:func:`minres` with the caller's name in error messages."""
    xp, b, x0, rtol, atol, maxiter, callback, _, _ = check_common(
        where, b, x0, rtol, atol, maxiter, callback, None)
    layout = Layout(xp, b.shape, None)
    op = LinearMap(A, xp, layout, where)
    prec = Preconditioner(M, xp, layout, b.dtype, where)
    maxiter = 5 * layout.N if maxiter is None else maxiter
    fixed_budget = rtol == 0 and atol == 0
    s_arr, s, early, Bs, Y, tol = scaled_system(xp, layout, b, x0, rtol, atol)
    if early is not None:
        r = math.nan if early is Status.NONFINITE else 0.0
        return _done(xp, layout, Y, s_arr, r, tol, early, 0, rtol, atol, maxiter, None)
    Bw = layout.to_work(b)
    eps = float(xp.finfo(b.dtype).eps)

    total = 0
    best_y, best_r = Y, math.inf
    detail = None
    prev_true = math.inf
    status = Status.MAX_ITERATIONS
    while True:
        R = Bs - op(Y)
        true = float(safe_norms(xp, R)[0])
        if not math.isfinite(true):
            status = Status.NONFINITE
            break
        if true < best_r:
            best_y, best_r = Y, true
        if true <= tol:
            status = Status.SUCCESS
            break
        if total >= maxiter or status in (Status.STOPPED, Status.BREAKDOWN):
            break
        if not fixed_budget and true > 0.5 * prev_true:
            status, detail = Status.BREAKDOWN, _STAGNATED
            break
        prev_true = true
        D, its, status, detail = _cycle(op, prec, layout, R, true, tol, rtol, maxiter - total,
                                        eps, Y, s, total, callback)
        total += its
        if status is Status.NONFINITE:
            break
        Y = Y + D
    Y_out, r_out = (Y, true) if status in (Status.NONFINITE, Status.SUCCESS) else \
        (best_y, best_r)
    if status is Status.SUCCESS or r_out <= tol:
        status, detail = Status.SUCCESS, None
    return _done(xp, layout, Y_out, s_arr, r_out, tol, status, total, rtol, atol, maxiter,
                 detail, residual_of=lambda X: safe_norms(xp, Bw - op(X)))


_STAGNATED = ("the true residual stagnated above the tolerance: the tolerance is below what "
              "this precision resolves for this A, or A is singular and b not in its range; "
              "loosen rtol/atol, use float64, or regularise A")
_LEAST_SQUARES = ("A is singular (||A r|| vanished while ||r|| did not): b is not in the "
                  "range of A, and x is a least-squares solution; regularise A, or project b "
                  "onto the range of A")


def _done(xp, layout, Y, s_arr, r, tol, status, n_iters, rtol, atol, maxiter, detail,
          residual_of=None):
    dt = Y.dtype
    true = xp.asarray([r], dtype=dt)
    tol_a = xp.asarray([tol], dtype=dt)
    st = xp.asarray([int(status)], dtype=xp.int64)
    return finish(xp, layout, method="minres", Y=Y, s=s_arr, true_norm=true, tol=tol_a,
                  status=st, n_iters=n_iters, column_iters=None, rtol=rtol, atol=atol,
                  maxiter=maxiter, detail=detail, residual_of=residual_of)


def _dot(xp, a, b) -> float:
    return float(xp.sum(a * b))


def _cycle(op, prec, layout, r0, r0_norm, tol, rtol, budget, eps, Y0, s, offset, callback):
    """MINRES on ``A d = r0`` from ``d = 0``. Returns ``(d, iterations, status, detail)``;
    status ``MAX_ITERATIONS`` means "check the true residual" (the caller decides)."""
    xp = layout.xp
    d = xp.zeros_like(r0)
    r1 = r0
    y = prec(r1)
    beta1 = _dot(xp, r1, y)
    if not math.isfinite(beta1):
        return d, 0, Status.NONFINITE, None
    if beta1 <= 0:
        return d, 0, Status.BREAKDOWN, ("the preconditioner M is not positive definite "
                                        f"(rᵀMr = {beta1:.3g})")
    beta1 = math.sqrt(beta1)
    # the M-norm target with the same relative reduction as the 2-norm target
    tol_m = tol * beta1 / r0_norm
    oldb, beta, dbar, epsln, phibar = 0.0, beta1, 0.0, 0.0, beta1
    cs, sn = -1.0, 0.0
    tnorm2 = 0.0
    w = w2 = xp.zeros_like(r0)
    r2 = r1
    best_d, best_r, stale = d, r0_norm, 0
    itn = 0
    while itn < budget:
        v = y / beta
        y = op(v)
        if itn > 0:
            y = y - (beta / oldb) * r1
        alfa = _dot(xp, v, y)
        y = y - (alfa / beta) * r2
        r1, r2 = r2, y
        y = prec(r2)
        oldb = beta
        beta2 = _dot(xp, r2, y)
        if not math.isfinite(beta2) or not math.isfinite(alfa):
            return d, itn + 1, Status.NONFINITE, None
        if beta2 < 0:
            return best_d, itn + 1, Status.BREAKDOWN, (
                "the Lanczos recurrence found rᵀMr < 0: M is not positive definite or A is "
                "not symmetric; MINRES needs symmetric A and symmetric positive definite M")
        beta = math.sqrt(beta2)
        tnorm2 += alfa * alfa + oldb * oldb + beta * beta
        oldeps = epsln
        delta = cs * dbar + sn * alfa
        gbar = sn * dbar - cs * alfa
        epsln = sn * beta
        dbar = -cs * beta
        root = math.hypot(gbar, dbar)
        gamma = max(math.hypot(gbar, beta), eps)
        cs, sn = gbar / gamma, beta / gamma
        phi = cs * phibar
        phibar = sn * phibar
        w1, w2 = w2, w
        w = (v - oldeps * w1 - delta * w2) / gamma
        d = d + phi * w
        itn += 1
        anorm = math.sqrt(tnorm2)
        if callback is not None:
            state = KrylovState(n_iters=offset + itn, x=layout.to_user((Y0 + d) * s),
                                residual_norm=phibar * s)
            if wants_stop(callback(state)):
                return d, itn, Status.STOPPED, None
        converged = phibar <= tol_m
        least_squares = rtol > 0 and root <= rtol * anorm
        exhausted = beta <= 10 * eps * beta1  # invariant subspace: nothing more to find
        if converged or exhausted:
            return d, itn, Status.MAX_ITERATIONS, None
        if least_squares:
            return d, itn, Status.BREAKDOWN, _LEAST_SQUARES
        if itn % TRUE_CHECK == 0:
            r = float(safe_norms(xp, r0 - op(d))[0])
            if not math.isfinite(r):
                return d, itn, Status.NONFINITE, None
            if r <= tol:
                return d, itn, Status.MAX_ITERATIONS, None
            if r < best_r:
                best_d, best_r, stale = d, r, 0
            else:
                stale += 1
                if stale >= PATIENCE:
                    return best_d, itn, Status.BREAKDOWN, _STAGNATED
    return d, itn, Status.MAX_ITERATIONS, None
