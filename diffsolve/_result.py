"""Result types shared by every solver, and the warning a solver gives when it stops early.

A result is a dataclass. Its *differentiable fields* (``differentiable_fields``) are the
outputs that carry gradients: ``diffsolve.vjp`` takes cotangents by these names, and the
autograd / torch / JAX adapters put their own arrays there. Every other field says how the
solve went (iterations, convergence, residual) and is never differentiated.

:class:`ValueResult` is the one exception to "a solver returns a dataclass": it wraps a
single array (``value``) for functions that, like JAXopt's ``custom_root`` solvers, return a
bare array. Their :class:`~diffsolve._autodiff.DifferentiableFunction` is made with
``unwrap_value=True``, so callers (directly, through ``diffsolve.vjp`` and through the
adapters) see only that array; the dataclass exists so that the autodiff core and the
adapters need no second code path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["ConvergenceWarning", "LinearSolveResult", "SolverResult", "ValueResult"]


class ConvergenceWarning(RuntimeWarning):
    """A solver stopped before reaching its tolerance; the message says what to try."""


@dataclass(frozen=True)
class SolverResult:
    """Base class of all solver results."""

    differentiable_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **changes: Any):
        """A copy with some fields replaced (results are immutable)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ValueResult(SolverResult):
    """The result of a function that returns one bare array (see ``unwrap_value``).

    Attributes
    ----------
    value : array
        The output (differentiable).
    """

    value: Any

    differentiable_fields: ClassVar[tuple[str, ...]] = ("value",)


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
