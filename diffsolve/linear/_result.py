"""The result type of :func:`diffsolve.linear.solve` and the state its callback sees."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .._result import SolverResult
from .._status import Status

__all__ = ["LinearSolveResult", "LinearSolveState"]


@dataclass(frozen=True)
class LinearSolveResult(SolverResult):
    """Result of :func:`diffsolve.linear.solve`.

    Attributes
    ----------
    x : array, shape (n,) or (n, k)
        The solution (differentiable).
    n_iters : int
        Iterations taken (0 for a direct solve; for several right-hand sides the most any
        column needed).
    converged : bool
        Whether every column's *true* residual ``||b - A x||`` (recomputed at the returned
        ``x``, also for ``method="direct"``) meets ``max(rtol * ||b||, atol)``.
    residual_norm : float or array, shape (k,)
        ``||b - A x||`` at the returned ``x`` (per column for a 2-D ``b``), computed
        without overflow.
    status : Status
        Why the solve stopped (for several right-hand sides the worst column's):
        ``SUCCESS``, ``MAX_ITERATIONS``, ``BREAKDOWN`` (singular or ill-conditioned A for
        ``direct``; not positive definite, or a tolerance below what the precision
        resolves, for the CG family), ``NONFINITE``, ``DIVERGED`` (SOR) or ``STOPPED``
        (the callback returned ``True``).
    info : int
        SciPy's convention, derived from ``status``: 0 converged, > 0 the iteration count
        at which it gave up, < 0 a breakdown or non-finite values.
    message : str
        Why it stopped and what to try.

    See Also
    --------
    diffsolve.linear.solve : Returns this.
    diffsolve.linear.LinearSolveState : What a ``callback`` sees during the solve.

    Examples
    --------
    >>> import numpy as np
    >>> import diffsolve as ds
    >>> A = np.array([[4.0, 1.0], [1.0, 3.0]])
    >>> res = ds.linear.solve(A, np.array([1.0, 2.0]), method="cg")
    >>> res.n_iters, res.converged, res.status.name, bool(res.residual_norm < 1e-8)
    (2, True, 'SUCCESS', True)
    """

    x: Any
    n_iters: int
    converged: bool
    residual_norm: Any
    status: Any

    differentiable_fields: ClassVar[tuple[str, ...]] = ("x",)

    @property
    def info(self) -> int:
        if bool(self.converged):
            return 0
        if int(self.status) in (Status.BREAKDOWN, Status.NONFINITE, Status.DIVERGED):
            return -1
        return max(int(self.n_iters), 1)

    @property
    def message(self) -> str:
        return f"diffsolve.linear.solve: {self._message_body()}"

    def _message_body(self) -> str:
        status = Status(int(self.status))
        n = int(self.n_iters)
        try:
            r = max(float(v) for v in _flat(self.residual_norm))
            residual = f"||b - A x|| = {r:.3g}"
        except (TypeError, ValueError):
            residual = "||b - A x|| unknown"
        if status is Status.SUCCESS:
            return f"converged in {n} iterations ({residual})"
        if status is Status.STOPPED:
            return f"stopped by the callback after {n} iterations ({residual})"
        if status is Status.BREAKDOWN and n == 0:
            return (f"A is singular or ill-conditioned: the solution misses the tolerance "
                    f"({residual}); a direct solve of a singular A has no meaning: use a "
                    "least-squares solver (numpy.linalg.lstsq, scipy.sparse.linalg.lsqr) or "
                    "regularise A + λI")
        if status is Status.BREAKDOWN:
            return (f"broke down after {n} iterations with {residual} above the tolerance: "
                    "A (or M) is singular or not symmetric positive definite (a search "
                    "direction had non-positive curvature), or the tolerance is below what "
                    "the precision resolves (the true residual stagnated, or x = A⁻¹b "
                    "underflows the dtype); check A, use method='direct', loosen rtol, "
                    "rescale A or b, or use float64")
        if status is Status.DIVERGED:
            return (f"the iterates diverged after {n} iterations (they are no longer "
                    "finite): SOR converges for symmetric positive definite A with "
                    "0 < omega < 2; check A, or use method='direct'")
        if status is Status.NONFINITE:
            return (f"non-finite values after {n} iterations: NaN or inf appeared in the "
                    "iteration, or the solution x = A⁻¹b exceeds the dtype's range; check the "
                    "inputs, rescale A or b, or use float64")
        return (f"did not converge: stopped after {n} iterations with {residual}; "
                "increase maxiter, give a preconditioner M (method='pcg'), tune omega, or "
                "use method='direct'")


def _flat(v):
    shape = getattr(v, "shape", ())
    if shape:
        return [v[i] for i in range(shape[0])]
    return [v]


@dataclass(frozen=True)
class LinearSolveState:
    """What a :func:`diffsolve.linear.solve` callback sees after each iteration.

    Attributes
    ----------
    n_iters : int
        Iterations so far.
    x : array
        The current iterate (b's shape; a fresh array the callback may keep).
    residual_norm : float or array
        ``||b - A x||`` as the method tracks it (the recursive residual of the CG family,
        the true one of SOR and DCDM); per column for a 2-D ``b``.

    See Also
    --------
    diffsolve.linear.solve : Its ``callback`` receives this.
    diffsolve.linear.LinearSolveResult : The final result.

    Examples
    --------
    >>> import numpy as np
    >>> import diffsolve as ds
    >>> A = np.array([[4.0, 1.0], [1.0, 3.0]])
    >>> seen = []
    >>> res = ds.linear.solve(A, np.array([1.0, 2.0]), method="cg", callback=seen.append)
    >>> [s.n_iters for s in seen], res.n_iters
    ([1, 2], 2)
    """

    n_iters: int
    x: Any
    residual_norm: Any
