"""The matrix-free linear solves of implicit differentiation.

The backward rule of a root ``x*(θ)`` of ``F(x, θ) = 0`` solves the *implicit system*
``(∂F/∂x)ᵀ u = x̄`` (plus ``ridge·u``) knowing only products ``u ↦ (∂F/∂x)ᵀ u``:

* ``"cg"``: conjugate gradients (:func:`diffsolve.krylov.cg`) when ``∂F/∂x`` is
  symmetric positive definite, as for the stationarity condition ``F = ∇ₓf`` at a
  minimum. Symmetry is probed first with two products (``⟨p, Mq⟩ = ⟨q, Mp⟩`` for two
  fixed pseudo-random vectors), because CG on a non-symmetric matrix does not fail, it
  silently returns a wrong vector.
* ``"normal-cg"``: CG on ``(A Aᵀ + ridge I) u = A x̄`` with ``A = ∂F/∂x``; needs products
  with ``A`` as well (JVPs), squares the condition number, but only asks ``A`` to be
  nonsingular.
* ``"gmres"``: restarted GMRES (:func:`diffsolve.krylov.gmres`); only VJPs, any
  nonsingular ``A``.
* a callable ``solve(matvec, b) -> u``, as in JAXopt.

The same CG driver (:func:`cg_solve`) serves the Hessian systems of
:func:`diffsolve.bilevel.hypergradient`. Every solve stops on the true residual and
returns its :class:`~diffsolve.Status`; nothing here warns (the callers report).

Reference: JAXopt's ``linear_solve.py`` (Blondel et al., "Efficient and Modular Implicit
Differentiation", NeurIPS 2022) for the choice of solvers and the ridge term.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from .. import _backend as B
from .._status import Status
from ..krylov._cg import CURVATURE, solve_cg
from ..krylov._common import safe_norms
from ..krylov._gmres import solve_gmres

__all__ = ["SOLVES", "ImplicitSolveOutcome", "cg_solve", "solve_adjoint"]

SOLVES = ("cg", "normal-cg", "gmres")


@dataclass(frozen=True)
class ImplicitSolveOutcome:
    """How an implicit linear solve went.

    ``u`` has the right-hand side's shape; ``residual_norm`` is the true ``||b - M u||``
    for the system actually solved (``None`` for a user ``solve`` callable unless
    requested); ``rhs_norm`` is ``||b||`` of that system. ``status`` (a
    :class:`~diffsolve.Status`) and ``message`` say how the solve went; the caller reports
    them (nothing here warns).
    """

    u: object
    n_iters: int
    converged: bool
    residual_norm: float | None
    rhs_norm: float
    method: str
    status: Status = Status.SUCCESS
    message: str = ""


def _norm(xp, v) -> float:
    return float(xp.sqrt(xp.sum(v * v)))


def _probe(xp, n, dtype, device, seed):
    # fixed pseudo-random vectors from a hash of the index: the same in every namespace,
    # no RNG state, nothing copied from the host
    k = xp.astype(xp.arange(n, device=device), dtype)
    v = xp.sin(k * 12.9898 + 78.233 * seed) * 43758.5453
    return v - xp.floor(v) - 0.5


def check_symmetric(apply: Callable, shape, xp, dtype, device, where: str, what: str):
    """Raise ``ValueError`` when the linear map ``apply`` is visibly not symmetric."""
    n = math.prod(shape)
    p = xp.reshape(_probe(xp, n, dtype, device, 1.0), shape)
    q = xp.reshape(_probe(xp, n, dtype, device, 2.0), shape)
    Mp, Mq = apply(p), apply(q)
    a, b = float(xp.sum(p * Mq)), float(xp.sum(q * Mp))
    scale = _norm(xp, p) * _norm(xp, Mq) + _norm(xp, q) * _norm(xp, Mp)
    eps = float(xp.finfo(dtype).eps)
    if scale > 0 and abs(a - b) > 10 * math.sqrt(eps) * scale:
        raise ValueError(
            f"{where}: {what} is not symmetric (probe: ⟨p, Mq⟩ = {a:.6g} but ⟨q, Mp⟩ = "
            f"{b:.6g}), so solve='cg' would return a wrong gradient; 'cg' is for F = ∇f "
            "(stationarity of an objective): use solve='gmres' or solve='normal-cg'"
        )


def cg_solve(apply: Callable, b, *, rtol: float, maxiter: int | None, where: str, what: str,
             advice: str, method: str = "cg", true_residual: bool = False,
             atol: float = 0.0) -> ImplicitSolveOutcome:
    """CG (:func:`diffsolve.krylov.cg`) on ``apply(u) = b`` for arrays of b's shape, to
    the true residual ``||b - apply(u)|| <= max(rtol ||b||, atol)`` (``rtol = atol = 0``:
    exactly ``maxiter`` iterations; ``maxiter=None`` means ``10 n``, n the size of b).

    A direction of non-positive curvature (``apply`` not positive definite) raises a
    ``ValueError`` naming ``what`` and ending with ``advice``: choosing CG for that matrix
    is a usage error, like a failed symmetry probe. Every other outcome is returned in
    ``status`` / ``message`` and never warned about; a NaN/inf ``b`` gives a NaN ``u`` and
    ``Status.NONFINITE``. The residual is always the true one (``true_residual`` is kept
    for compatibility).
    """
    del true_residual
    xp = B.array_namespace(b, where=where)
    if maxiter is None:  # the documented default, also the budget of rtol = atol = 0
        maxiter = 10 * math.prod(tuple(b.shape))
    res = solve_cg(apply, b, rtol=rtol, atol=atol, maxiter=maxiter, where=where)
    if res.status is Status.BREAKDOWN and CURVATURE in res.message:
        raise ValueError(
            f"{where}: conjugate gradients on {what} met a direction of non-positive "
            f"curvature after {res.n_iters} iterations, so the matrix is not positive "
            f"definite; {advice}"
        )
    return ImplicitSolveOutcome(res.x, res.n_iters, res.converged,
                                float(res.residual_norm), _rhs_norm(xp, b), method,
                                res.status, f"{where}: {what}: {res.message}")


def _rhs_norm(xp, b) -> float:
    return float(safe_norms(xp, xp.reshape(b, (-1, 1)))[0])


def solve_adjoint(lin, x_bar, *, solve, ridge: float, rtol: float, maxiter: int | None,
                  restart: int, where: str, true_residual: bool = False,
                  atol: float = 0.0) -> ImplicitSolveOutcome:
    """Solve ``((∂F/∂x)ᵀ + ridge I) u = x̄`` for a :class:`~._user_vjp.Linearization`.

    The Krylov solves stop at ``||b − M u|| <= max(rtol ||b||, atol)`` for the system
    solved (``b = A x̄`` for ``"normal-cg"``); ``rtol = atol = 0`` runs exactly ``maxiter``
    iterations. A ``solve`` callable decides for itself.

    Returns the outcome with its ``status`` and ``message``; the caller reports them
    (warns or raises), nothing is warned here. A NaN/inf ``x̄`` gives a NaN ``u`` and
    ``Status.NONFINITE``.
    """
    xp = B.array_namespace(x_bar, where=where)
    x = lin.x
    x_bar = xp.astype(x_bar, x.dtype) if x_bar.dtype != x.dtype else x_bar

    def apply(u):
        Mu = lin.rmatvec_x(u)
        return Mu + ridge * u if ridge else Mu

    what = "the implicit system (∂F/∂x)ᵀ u = x̄"
    advice = ("add a ridge (e.g. ridge=1e-6) if ∂F/∂x is singular or ill-conditioned, or use "
              "solve='gmres' if it is not symmetric positive definite")
    if callable(solve):
        u = solve(apply, x_bar)
        if not B.is_array(u) or tuple(u.shape) != tuple(x_bar.shape):
            got = tuple(u.shape) if B.is_array(u) else type(u).__name__
            raise ValueError(f"{where}: the solve callable returned {got}; solve(matvec, b) "
                             f"must return an array of b's shape {tuple(x_bar.shape)}")
        residual = _norm(xp, x_bar - apply(u)) if true_residual else None
        finite = B.isfinite_all(xp, u)
        status = Status.SUCCESS if finite else Status.NONFINITE
        message = (f"{where}: {what} solved by the solve callable" if finite else
                   f"{where}: the solve callable returned NaN or inf for {what}")
        return ImplicitSolveOutcome(u, 0, finite, residual, _rhs_norm(xp, x_bar), "callable",
                                    status, message)
    if solve == "cg":
        check_symmetric(apply, tuple(x.shape), xp, x.dtype, B.device(x), where,
                        "∂F/∂x at the solution")
        return cg_solve(apply, x_bar, rtol=rtol, atol=atol, maxiter=maxiter, where=where,
                        what=what, advice=advice)
    if solve == "normal-cg":
        def normal(u):
            Nu = lin.matvec_x(lin.rmatvec_x(u))
            return Nu + ridge * u if ridge else Nu

        return cg_solve(normal, lin.matvec_x(x_bar), rtol=rtol, atol=atol, maxiter=maxiter,
                        where=where,
                        what="the normal equations (∂F/∂x)(∂F/∂x)ᵀ u = (∂F/∂x) x̄",
                        advice="∂F/∂x is singular: add a ridge (e.g. ridge=1e-6)",
                        method="normal-cg")
    n = math.prod(tuple(x.shape))
    res = solve_gmres(apply, x_bar, rtol=rtol, atol=atol, restart=min(restart, max(n, 1)),
                      maxiter=10 * n if maxiter is None else int(maxiter), where=where)
    return ImplicitSolveOutcome(res.x, res.n_iters, res.converged, float(res.residual_norm),
                                _rhs_norm(xp, x_bar), "gmres", res.status,
                                f"{where}: {what}: {res.message}")
