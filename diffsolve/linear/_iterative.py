"""The iterative methods behind ``solve``: CG, preconditioned CG, SOR and SSOR-CG.

One entry point, :func:`iterative_solve`, so that the forward solve and the adjoint solve
(``Aᵀλ = x̄`` with the same method, ω and tolerances) share every line of set-up.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from .. import _backend as B
from .._status import ConvergenceWarning
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


class JacobiPreconditioner:
    """``r -> r / diag(A)``, the built-in Jacobi preconditioner."""

    def __init__(self, op, xp):
        diag = op.diagonal()
        if diag is None:
            raise ValueError(f"{WHERE}: M='jacobi' needs the diagonal of A, but A is a "
                             "LinearOperator; pass M as a callable or LinearOperator instead")
        if bool(xp.any(diag <= 0)):
            raise ValueError(f"{WHERE}: M='jacobi' needs a positive diagonal (A symmetric "
                             "positive definite), but A has a diagonal entry <= 0")
        self.inv_diag = B.contiguous(xp, xp.astype(1.0 / diag, op.dtype))

    def __call__(self, r):
        return r * (self.inv_diag if r.ndim == 1 else self.inv_diag[:, None])


def _compiled_cg(op, b, x0, tol, maxiter, prepared, callback, method):
    """The whole CG loop in one Numba call, where it applies: NumPy, CSR A, one right-hand
    side, no callback, no preconditioner or Jacobi. ``None`` where it does not apply."""
    xp = op.xp
    if not (B.is_numpy(xp) and op.kind == "sparse" and b.ndim == 1 and callback is None
            and (prepared is None or isinstance(prepared, JacobiPreconditioner))):
        return None
    kernel = B.get_kernel(xp, "krylov.cg_solve_csr")
    x = B.contiguous_copy(xp, xp.astype(x0, b.dtype)) if x0 is not None else xp.zeros_like(b)
    A = op.A
    floor = op.n * float(xp.finfo(b.dtype).eps)
    inv_diag = prepared.inv_diag if prepared is not None else None
    n_iters, status = kernel(A.indptr, A.indices, A.data, B.contiguous(xp, b), x, inv_diag,
                             float(tol), maxiter, floor)
    if status == 2:
        raise ValueError(
            f"{WHERE}: conjugate gradients met a direction with pᵀAp <= 0 at iteration "
            f"{n_iters}: A is singular or not positive definite. CG needs a symmetric "
            "positive definite A; use method='direct' for other matrices"
        )
    return x, n_iters, status == 0


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
                prepared = JacobiPreconditioner(op, xp)
            else:
                prepared = M
        maxiter = 10 * op.n if maxiter is None else int(maxiter)
        compiled = _compiled_cg(op, b, x0, tol, maxiter, prepared, callback, method)
        if compiled is not None:
            x, n_iters, converged = compiled
        else:
            out = conjugate_gradient(op, b, x0, tol, maxiter, prepared, callback, check_every,
                                     WHERE)
            x, n_iters, converged = out.x, out.n_iters, out.converged
        advice = "increase maxiter, give a preconditioner M, loosen rtol, or use method='direct'"
    if not converged:
        if not B.isfinite_all(xp, x):
            # SOR diverges for matrices that are not SPD (or diagonally dominant); the
            # iterates overflow long before maxiter
            advice = ("the iterates diverged (they are no longer finite): SOR converges for "
                      "symmetric positive definite A with 0 < omega < 2; check A, or use "
                      "method='direct'")
        warnings.warn(
            f"{WHERE}(method={method!r}): {what} did not reach rtol={rtol:g}, atol={atol:g} "
            f"within maxiter={maxiter} iterations; {advice}",
            ConvergenceWarning,
            stacklevel=4,
        )
    return IterativeOutcome(x, n_iters, converged, prepared)
