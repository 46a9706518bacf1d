"""The result type of :func:`diffsolve.linear.solve`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .._result import SolverResult

__all__ = ["LinearSolveResult"]


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
        Whether every column reached ``max(rtol * ||b||, atol)``.
    residual_norm : float or array, shape (k,)
        ``||b - A x||`` at the returned ``x`` (per column for a 2-D ``b``).
    info : int
        SciPy's convention: 0 converged, > 0 the iteration count at which it gave up.
    """

    x: Any
    n_iters: int
    converged: bool
    residual_norm: Any
    info: int

    differentiable_fields: ClassVar[tuple[str, ...]] = ("x",)

    @property
    def message(self) -> str:
        if self.converged:
            return f"converged in {int(self.n_iters)} iterations"
        return (
            f"did not converge: stopped after {int(self.n_iters)} iterations; increase maxiter, "
            "give a preconditioner M, or use method='direct'"
        )
