"""The iterative methods behind ``solve``: CG, preconditioned CG, SOR and SSOR-CG.

One entry point, :func:`iterative_solve`, so that the forward solve and the adjoint solve
(``Aᵀλ = x̄`` with the same method, ω and tolerances) share every line of set-up. The CG
family runs on :func:`diffsolve.krylov.cg` (its compiled CSR loop included); SOR is a
stationary iteration of its own (:mod:`._relaxation`) behind the same stopping rule: the
true residual ``||b - A x|| <= max(rtol ||b||, atol)`` per column, for ``b / s`` scaled by
a power of two so that no norm overflows. Nothing here warns: the outcome carries its
:class:`~diffsolve.Status` and :func:`diffsolve.linear.solve` reports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import _backend as B
from .._status import Status
from ..krylov._cg import CGPlan, solve_cg
from ..krylov._common import default_check_every, safe_norms, scale_columns, unscale_columns
from . import _matrix_cache
from ._relaxation import Relaxation
from ._result import LinearSolveState

WHERE = "diffsolve.linear.solve"
CG_FAMILY = ("cg", "pcg", "ssor-cg")
DEFAULT_SOR_MAXITER = 10_000


@dataclass
class IterativeOutcome:
    x: object
    n_iters: int
    converged: bool
    prepared: object  # what the adjoint may reuse (a Relaxation, a preconditioner, a model)
    status: Status = Status.SUCCESS
    residual_norm: object = None  # true ||b - A x|| per column ((k,) array) or None


class JacobiPreconditioner:
    """``r -> r / diag(A)``, the built-in Jacobi preconditioner (``inv_diag`` is handed to
    the Krylov module as a diagonal, which keeps the compiled CSR loop)."""

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


def check_symmetric(op, xp, method, where: str = WHERE):
    if op.kind == "operator":
        return
    # a sequence of solves with one matrix tests it once (keyed on its content)
    key = _matrix_cache.fingerprint(op)
    if _matrix_cache.known_symmetric(key):
        return
    asym, scale = op.max_abs_asymmetry()
    if asym > 1e3 * float(xp.finfo(op.dtype).eps) * scale:
        raise ValueError(
            f"{where}: method={method!r} needs a symmetric positive definite A, but "
            f"max|A - Aᵀ| = {asym:.3g} (max|A| = {scale:.3g}); use method='direct' or 'sor'"
        )
    _matrix_cache.remember_symmetric(key)


_check_symmetric = check_symmetric  # the old private name


def _krylov_operator(op):
    """What the Krylov module takes for A: the matrix itself where there is one (dense, or
    canonical CSR: the compiled loop reads it), else the LinearOperator."""
    return op.A


def _krylov_preconditioner(prepared, b):
    if prepared is None:
        return None
    if isinstance(prepared, JacobiPreconditioner):
        # a diagonal multiplies elementwise: (n,) for a vector b, (n, 1) for columns
        return prepared.inv_diag if b.ndim == 1 else prepared.inv_diag[:, None]
    if B.is_sparse(prepared) or B.is_linear_operator(prepared) or callable(prepared):
        return prepared
    if B.is_array(prepared):  # a dense matrix approximating A⁻¹
        return lambda r: prepared @ r
    raise TypeError(f"{WHERE}: M must be 'jacobi', a callable, a LinearOperator, a dense "
                    f"or a sparse matrix, got a {type(prepared).__name__}")


def true_residuals(op, x, b, xp):
    """``||b - A x||`` per column ((k,) array; b 1-D: shape (1,)), without overflow."""
    r = b - op.matvec(x)
    r2 = r[:, None] if r.ndim == 1 else r
    return safe_norms(xp, r2)


def thresholds(b, rtol, atol, xp):
    """``max(rtol ||b||, atol)`` per column ((k,) array), without overflow."""
    b2 = b[:, None] if b.ndim == 1 else b
    return xp.maximum(rtol * safe_norms(xp, b2), xp.asarray(atol, dtype=b.dtype))


def scaled_problem(b, x0, xp):
    """``(s, bs, x0s, finite)``: a power of two per column, ``b / s``, ``x0 / s`` (b's
    shape) and whether each column of ``b`` (and ``x0``) is finite."""
    b2 = b[:, None] if b.ndim == 1 else b
    s, finite = scale_columns(xp, b2)
    scale = s[0] if b.ndim == 1 else s[None, :]
    bs = b / scale
    x0s = None
    if x0 is not None:
        x0s = x0 / scale
        x2 = x0s[:, None] if x0s.ndim == 1 else x0s
        finite = finite & xp.all(xp.isfinite(x2), axis=0)
    return s, bs, x0s, finite


def unscale(x, s, xp=None):
    """``x * s`` per column; columns whose values overflow the dtype become NaN (without
    NumPy's overflow warning: the solution is then beyond the dtype's range)."""
    xp = xp or B.array_namespace(x)
    X, _ = unscale_columns(xp, x[:, None] if x.ndim == 1 else x, s)
    return X[:, 0] if x.ndim == 1 else X


def iterative_solve(op, b, *, method, x0, rtol, atol, maxiter, M, omega, callback,
                    check_every, what, prepared=None, check_symmetric=True, plans=None):
    """Solve ``op x = b`` with an iterative ``method``; returns an
    :class:`IterativeOutcome` with its status (nothing is warned).

    ``prepared`` is the ``IterativeOutcome.prepared`` of an earlier solve with the same
    matrix (the adjoint of a symmetric solve reuses the SSOR colouring / Jacobi diagonal).
    ``callback`` is the user's ``callback(LinearSolveState) -> bool | None``. ``plans``: a
    dict kept with ``prepared`` in which the CG family stores its
    :class:`~diffsolve.krylov._cg.CGPlan` per shape and dtype of ``b`` (``b`` and the
    options are then taken as validated: :func:`diffsolve.linear.prepare`).
    """
    del what
    xp = op.xp
    if method == "sor":
        return _sor(op, b, x0, rtol, atol, maxiter, omega, callback, check_every, prepared)
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
    cb = None
    if callback is not None:
        def cb(state):
            return callback(LinearSolveState(state.n_iters, state.x, state.residual_norm))

    batch_axis = None if b.ndim == 1 else 1
    if plans is None:
        res = solve_cg(_krylov_operator(op), b, x0=x0, rtol=rtol, atol=atol, maxiter=maxiter,
                       M=_krylov_preconditioner(prepared, b), callback=cb,
                       check_every=check_every, batch_axis=batch_axis, where=WHERE)
    else:
        key = (tuple(b.shape), b.dtype)
        plan = plans.get(key)
        if plan is None:
            plan = plans[key] = CGPlan(_krylov_operator(op), _krylov_preconditioner(prepared, b),
                                       xp, b.shape, b.dtype, batch_axis, WHERE)
        res = plan.run(b, None if x0 is None else xp.astype(x0, b.dtype), rtol, atol, maxiter,
                       cb, default_check_every(xp, check_every))
    status = res.status if b.ndim == 1 else _worst(res.status)
    residual = res.residual_norm
    residual = xp.asarray([residual], dtype=b.dtype) if b.ndim == 1 else residual
    return IterativeOutcome(res.x, res.n_iters, res.converged, prepared, status, residual)


def _worst(statuses) -> Status:
    from .._status import worst_status

    return worst_status([int(statuses[j]) for j in range(statuses.shape[0])])


def _sor(op, b, x0, rtol, atol, maxiter, omega, callback, check_every, prepared):
    xp = op.xp
    relax = prepared if prepared is not None else Relaxation(op, omega, WHERE)
    maxiter = DEFAULT_SOR_MAXITER if maxiter is None else int(maxiter)
    check_every = default_check_every(xp, check_every)
    s, bs, x0s, finite = scaled_problem(b, x0, xp)
    if not bool(xp.all(finite)):
        nan = xp.full_like(b, math.nan)
        k = 1 if b.ndim == 1 else b.shape[1]
        return IterativeOutcome(nan, 0, False, relax, Status.NONFINITE,
                                xp.full((k,), math.nan, dtype=b.dtype))
    tol = thresholds(bs, rtol, atol / s, xp)
    tol = tol[0] if b.ndim == 1 else tol
    if x0s is not None:
        # a zero right-hand side has the solution 0, whatever the warm start
        zero = xp.all(bs == 0, axis=0)
        x0s = xp.where(zero, xp.zeros_like(x0s), x0s)
    cb = None
    if callback is not None:
        def cb(sweeps, x, norms):
            norms = norms * s if norms.ndim else norms * s[0]
            return callback(LinearSolveState(
                sweeps, unscale(B.contiguous_copy(xp, x), s),
                float(norms[0]) if b.ndim == 1 else norms))

    x, n_iters, _, stopped, norm = relax.iterate(op, B.contiguous(xp, bs), x0s, tol, maxiter,
                                                 False, cb, check_every)
    scale = float(s[0]) if b.ndim == 1 else None
    if scale == 1.0:
        # b needed no scaling (max|b| in [1, 2)): x is the solution as it is
        finite_before = overflow = False
    else:
        finite_before = B.isfinite_all(xp, x)
        x = unscale(x, s, xp)
        overflow = finite_before and not B.isfinite_all(xp, x)
    if norm is not None and scale is not None and not overflow and b.dtype == xp.float64 \
            and math.isfinite(norm) and _EXACT_SCALE[0] <= scale <= _EXACT_SCALE[1]:
        # The compiled loop ended with ||b/s - A x/s||, the same sums as the true residual
        # of x (a power-of-two scale is exact in float64) with the squares summed in
        # float64: reuse it rather than pay another pass over A, and test it against the
        # threshold the loop stopped at (max(rtol ||b||, atol) / s), so that the reported
        # residual and the stopping test agree.
        residual = xp.asarray([norm * scale], dtype=b.dtype)
        converged = norm <= float(tol)
        return _status(x, n_iters, converged, relax, stopped, xp, overflow, residual)
    return _verdict(op, x, b, rtol, atol, n_iters, relax, stopped, xp, overflow)


# scales of b for which x/s and its residual keep every bit in float64 (no subnormals)
_EXACT_SCALE = (2.0 ** -400, 2.0 ** 400)


def _verdict(op, x, b, rtol, atol, n_iters, prepared, stopped, xp, overflow=False):
    """The status of an iteration that ran to its end, from the true residual of ``x``."""
    residual = true_residuals(op, x, b, xp)
    ok = residual <= thresholds(b, rtol, atol, xp)
    return _status(x, n_iters, bool(xp.all(ok)), prepared, stopped, xp, overflow, residual)


def _status(x, n_iters, converged, prepared, stopped, xp, overflow, residual):
    if converged:
        status = Status.SUCCESS
    elif overflow:
        status = Status.NONFINITE  # the (scaled) iteration was fine; x is beyond the range
    elif not B.isfinite_all(xp, x):
        # SOR diverges for matrices that are not SPD (or diagonally dominant); the
        # iterates overflow long before maxiter
        status = Status.DIVERGED
    elif stopped:
        status = Status.STOPPED
    else:
        status = Status.MAX_ITERATIONS
    return IterativeOutcome(x, n_iters, converged, prepared, status, residual)
