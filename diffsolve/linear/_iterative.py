"""The iterative methods behind ``solve``: CG, preconditioned CG, SOR and SSOR-CG.

One entry point, :func:`iterative_solve`, so that the forward solve and the adjoint solve
(``Aᵀλ = x̄`` with the same method, ω and tolerances) share every line of set-up.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from .. import _backend as B
from .._result import ConvergenceWarning
from ._cg import conjugate_gradient
from ._relaxation import Relaxation

WHERE = "diffsolve.linear.solve"
CG_FAMILY = ("cg", "pcg", "ssor-cg")
DEFAULT_SOR_MAXITER = 10_000


@dataclass
class IterativeOutcome:
    x: object
    n_iters: int
    converged: bool
    prepared: object  # what the adjoint may reuse (a Relaxation or a preconditioner)


def jacobi_preconditioner(op, xp):
    """``r -> r / diag(A)``, the built-in Jacobi preconditioner."""
    diag = op.diagonal()
    if diag is None:
        raise ValueError(f"{WHERE}: M='jacobi' needs the diagonal of A, but A is a "
                         "LinearOperator; pass M as a callable or LinearOperator instead")
    if bool(xp.any(diag <= 0)):
        raise ValueError(f"{WHERE}: M='jacobi' needs a positive diagonal (A symmetric positive "
                         "definite), but A has a diagonal entry <= 0")
    inv = 1.0 / diag

    def apply(r):
        return r * (inv if r.ndim == 1 else inv[:, None])

    return apply


def _check_symmetric(op, xp, method):
    if op.kind == "operator":
        return
    asym, scale = op.max_abs_asymmetry()
    if asym > 1e3 * float(xp.finfo(op.dtype).eps) * scale:
        raise ValueError(
            f"{WHERE}: method={method!r} needs a symmetric positive definite A, but "
            f"max|A - Aᵀ| = {asym:.3g} (max|A| = {scale:.3g}); use method='direct' or 'sor'"
        )


def iterative_solve(op, b, *, method, x0, rtol, atol, maxiter, M, omega, callback,
                    check_every, what, prepared=None, check_symmetric=True):
    """Solve ``op x = b`` with an iterative ``method``; warns when it does not converge.

    ``prepared`` is the ``IterativeOutcome.prepared`` of an earlier solve with the same
    matrix (the adjoint of a symmetric solve reuses the SSOR colouring / Jacobi diagonal).
    """
    xp = op.xp
    tol = xp.maximum(rtol * xp.sqrt(xp.sum(b * b, axis=0)), xp.asarray(atol, dtype=b.dtype))
    if check_every is None:
        check_every = 1 if B.is_numpy(xp) else 8
    if method == "sor":
        relax = prepared if prepared is not None else Relaxation(op, omega, WHERE)
        maxiter = DEFAULT_SOR_MAXITER if maxiter is None else int(maxiter)
        x, n_iters, converged = relax.iterate(op, b, x0, tol, maxiter, False, callback,
                                              check_every)
        prepared = relax
        advice = "increase maxiter, tune omega (diffsolve.linear.OmegaBandit), or use ssor-cg"
    else:
        if check_symmetric:
            _check_symmetric(op, xp, method)
        if prepared is None:
            if method == "ssor-cg":
                prepared = Relaxation(op, omega, WHERE).precondition
            elif isinstance(M, str) or (method == "pcg" and M is None):
                if M not in (None, "jacobi"):
                    raise ValueError(f"{WHERE}: M={M!r} is not a built-in preconditioner; "
                                     "use M='jacobi', a callable, a LinearOperator or a matrix")
                prepared = jacobi_preconditioner(op, xp)
            else:
                prepared = M
        maxiter = 10 * op.n if maxiter is None else int(maxiter)
        out = conjugate_gradient(op, b, x0, tol, maxiter, prepared, callback, check_every,
                                 WHERE)
        x, n_iters, converged = out.x, out.n_iters, out.converged
        advice = "increase maxiter, give a preconditioner M, loosen rtol, or use method='direct'"
    if not converged:
        warnings.warn(
            f"{WHERE}(method={method!r}): {what} did not reach rtol={rtol:g}, atol={atol:g} "
            f"within maxiter={maxiter} iterations; {advice}",
            ConvergenceWarning,
            stacklevel=4,
        )
    return IterativeOutcome(x, n_iters, converged, prepared)
