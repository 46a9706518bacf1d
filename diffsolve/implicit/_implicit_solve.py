"""The matrix-free linear solves of implicit differentiation.

The backward rule of a root ``x*(θ)`` of ``F(x, θ) = 0`` solves the *implicit system*
``(∂F/∂x)ᵀ u = x̄`` (plus ``ridge·u``) knowing only products ``u ↦ (∂F/∂x)ᵀ u``:

* ``"cg"``: conjugate gradients (the CG of :mod:`diffsolve.linear`, compiled vector
  kernels on NumPy/CuPy) when ``∂F/∂x`` is symmetric positive definite, as for the
  stationarity condition ``F = ∇ₓf`` at a minimum. Symmetry is probed first with two
  products (``⟨p, Mq⟩ = ⟨q, Mp⟩`` for two fixed pseudo-random vectors), because CG on a
  non-symmetric matrix does not fail, it silently returns a wrong vector.
* ``"normal-cg"``: CG on ``(A Aᵀ + ridge I) u = A x̄`` with ``A = ∂F/∂x``; needs products
  with ``A`` as well (JVPs), squares the condition number, but only asks ``A`` to be
  nonsingular.
* ``"gmres"``: restarted GMRES (:mod:`._gmres`); only VJPs, any nonsingular ``A``.
* a callable ``solve(matvec, b) -> u``, as in JAXopt.

The same CG driver (:func:`cg_solve`) serves the Hessian systems of
:func:`diffsolve.bilevel.hypergradient`.

Reference: JAXopt's ``linear_solve.py`` (Blondel et al., "Efficient and Modular Implicit
Differentiation", NeurIPS 2022) for the choice of solvers and the ridge term.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from .. import _backend as B
from .._result import ConvergenceWarning
from ..linear._cg import conjugate_gradient
from ._gmres import gmres

__all__ = ["SOLVES", "ImplicitSolveOutcome", "cg_solve", "solve_adjoint"]

SOLVES = ("cg", "normal-cg", "gmres")


@dataclass(frozen=True)
class ImplicitSolveOutcome:
    """How an implicit linear solve went.

    ``u`` has the right-hand side's shape; ``residual_norm`` is ``||b - M u||`` for the
    system actually solved (``None`` when not computed: converged and not requested, or a
    user ``solve`` callable); ``rhs_norm`` is ``||b||`` of that system.
    """

    u: object
    n_iters: int
    converged: bool
    residual_norm: float | None
    rhs_norm: float
    method: str


class _FlatOperator:
    """``apply`` (a linear map on arrays of ``shape``) as conjugate_gradient sees it.

    conjugate_gradient works on ``(n, k)`` column blocks and reads ``.n`` and ``.xp``.
    """

    def __init__(self, apply: Callable, shape: tuple, xp):
        self.apply = apply
        self.shape = shape
        self.xp = xp
        self.n = math.prod(shape)

    def matvec(self, X):
        xp = self.xp
        cols = [xp.reshape(self.apply(xp.reshape(X[:, j], self.shape)), (self.n,))
                for j in range(X.shape[1])]
        return cols[0][:, None] if len(cols) == 1 else xp.stack(cols, axis=1)


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
             advice: str, method: str = "cg", true_residual: bool = False
             ) -> ImplicitSolveOutcome:
    """CG on ``apply(u) = b`` for arrays of b's shape, to ``||r|| <= rtol ||b||``.

    A direction of non-positive curvature (``apply`` not positive definite) raises a
    ``ValueError`` naming ``what`` and ending with ``advice``. The residual is
    recomputed (one more product) when ``true_residual`` or when CG did not converge.
    """
    xp = B.array_namespace(b, where=where)
    shape = tuple(b.shape)
    op = _FlatOperator(apply, shape, xp)
    flat = xp.reshape(b, (op.n,))
    b_norm = _norm(xp, flat)
    tol = xp.asarray(rtol * b_norm, dtype=b.dtype, device=B.device(b))
    maxiter = 10 * op.n if maxiter is None else int(maxiter)
    check_every = 8 if B.is_cupy(xp) else 1
    try:
        out = conjugate_gradient(op, B.contiguous(xp, flat), None, tol, maxiter, None, None,
                                 check_every, where)
    except ValueError as err:
        raise ValueError(
            f"{where}: conjugate gradients on {what} met a direction of non-positive "
            f"curvature, so the matrix is not positive definite; {advice}"
        ) from err
    u = xp.reshape(out.x, shape)
    residual = None
    if true_residual or not out.converged:
        residual = _norm(xp, b - apply(u))
    return ImplicitSolveOutcome(u, out.n_iters, out.converged, residual, b_norm, method)


def solve_adjoint(lin, x_bar, *, solve, ridge: float, rtol: float, maxiter: int | None,
                  restart: int, where: str, true_residual: bool = False
                  ) -> ImplicitSolveOutcome:
    """Solve ``((∂F/∂x)ᵀ + ridge I) u = x̄`` for a :class:`~._user_vjp.Linearization`.

    Warns with :class:`~diffsolve.ConvergenceWarning` (residual, what to try) when the
    iteration stops before ``rtol``.
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
        return ImplicitSolveOutcome(u, 0, True, residual, _norm(xp, x_bar), "callable")
    if solve == "cg":
        check_symmetric(apply, tuple(x.shape), xp, x.dtype, B.device(x), where,
                        "∂F/∂x at the solution")
        out = cg_solve(apply, x_bar, rtol=rtol, maxiter=maxiter, where=where, what=what,
                       advice=advice, true_residual=true_residual)
    elif solve == "normal-cg":
        def normal(u):
            Nu = lin.matvec_x(lin.rmatvec_x(u))
            return Nu + ridge * u if ridge else Nu

        out = cg_solve(normal, lin.matvec_x(x_bar), rtol=rtol, maxiter=maxiter, where=where,
                       what="the normal equations (∂F/∂x)(∂F/∂x)ᵀ u = (∂F/∂x) x̄",
                       advice="∂F/∂x is singular: add a ridge (e.g. ridge=1e-6)",
                       method="normal-cg", true_residual=true_residual)
    else:
        n = math.prod(tuple(x.shape))
        shape = tuple(x.shape)
        res = gmres(lambda v: xp.reshape(apply(xp.reshape(v, shape)), (n,)),
                    xp.reshape(x_bar, (n,)), tol=rtol * _norm(xp, x_bar),
                    restart=min(restart, max(n, 1)),
                    maxiter=10 * n if maxiter is None else int(maxiter), xp=xp)
        out = ImplicitSolveOutcome(xp.reshape(res.x, shape), res.n_iters, res.converged,
                                   res.residual_norm, _norm(xp, x_bar), "gmres")
    if not out.converged:
        rel = out.residual_norm / out.rhs_norm if out.rhs_norm else out.residual_norm
        warnings.warn(
            f"{where}: {what} did not converge with solve={out.method!r}: relative residual "
            f"{rel:.3g} > rtol={rtol:g} after {out.n_iters} iterations, so the gradient is "
            f"inexact; increase maxiter, {advice}, or check that the solver really reached "
            "F(x, *theta) = 0",
            ConvergenceWarning,
            stacklevel=4,
        )
    return out
