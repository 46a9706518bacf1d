"""Restarted GMRES(m) for the matrix-free implicit systems: a thin wrapper over
:func:`diffsolve.krylov.gmres` kept for the callers of its old signature.

The implicit system ``(∂F/∂x)ᵀ u = x̄`` is in general not symmetric (KKT conditions,
fixed points of projected or proximal steps), and we can apply only ``u ↦ (∂F/∂x)ᵀ u``
(one VJP of F). GMRES needs nothing more. The iteration, its stopping rule (the true
residual, recomputed after every restart cycle) and its statuses are the Krylov module's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .._status import Status
from ..krylov._gmres import solve_gmres

__all__ = ["GMRESOutcome", "gmres"]


@dataclass(frozen=True)
class GMRESOutcome:
    x: object
    n_iters: int  # products with A (restarts' residual recomputations not counted)
    converged: bool
    residual_norm: float  # ||b - A x|| recomputed at the returned x
    status: Status = Status.SUCCESS
    message: str = ""


def gmres(matvec: Callable, b, *, tol: float, restart: int, maxiter: int, xp=None,
          where: str = "diffsolve.implicit.gmres") -> GMRESOutcome:
    """Solve ``A x = b`` from ``x = 0`` to the absolute tolerance ``||b - A x|| <= tol``.

    ``matvec(v)`` returns ``A v`` for arrays of b's shape. At most ``maxiter`` products
    with ``A`` are spent in Arnoldi steps, in cycles of ``restart``. ``xp`` is accepted for
    compatibility (the namespace comes from ``b``). A NaN/inf ``b`` gives NaN ``x`` and
    ``Status.NONFINITE``; the status is returned, never warned about.
    """
    del xp
    res = solve_gmres(matvec, b, rtol=0.0, atol=float(tol), restart=restart,
                      maxiter=maxiter, where=where) if tol > 0 else \
        solve_gmres(matvec, b, rtol=0.0, atol=0.0, restart=restart, maxiter=maxiter,
                    where=where)
    return GMRESOutcome(res.x, res.n_iters, res.converged, float(res.residual_norm),
                        res.status, res.message)
