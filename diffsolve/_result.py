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
from typing import Any, ClassVar, TypeVar

from ._status import ConvergenceWarning, Status

_R = TypeVar("_R", bound="SolverResult")

__all__ = ["ConvergenceWarning", "SolverResult", "Status", "ValueResult"]


@dataclass(frozen=True)
class SolverResult:
    """Base class of all solver results.

    The solver contract: every result of a public solver also has ``status`` (a
    :class:`~diffsolve.Status`), ``converged`` (``True`` only when the returned answer
    meets the tolerance the result reports), ``message`` (why it stopped, what to try) and
    ``n_iters``.

    See Also
    --------
    diffsolve.Status : The ``status`` field.
    diffsolve.linear.LinearSolveResult : One concrete result.

    Examples
    --------
    >>> import numpy as np
    >>> import diffsolve as ds
    >>> A = np.array([[4.0, 1.0], [1.0, 3.0]])
    >>> res = ds.linear.solve(A, np.ones(2), method="cg")
    >>> isinstance(res, ds.SolverResult), res.status.name, res.converged
    (True, 'SUCCESS', True)
    >>> res.replace(n_iters=0).n_iters, res.n_iters
    (0, 2)
    """

    differentiable_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self: _R, **changes: Any) -> _R:
        """A copy with some fields replaced (results are immutable)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ValueResult(SolverResult):
    """The result of a function that returns one bare array (see ``unwrap_value``).

    Attributes
    ----------
    value : array
        The output (differentiable).

    See Also
    --------
    diffsolve.custom_vjp : ``unwrap_value=True`` returns the ``value`` field itself.
    diffsolve.implicit.custom_root : Its solvers return a bare array this way.

    Examples
    --------
    >>> import numpy as np
    >>> import diffsolve as ds
    >>> def bwd(ctx, cot):
    ...     return (2.0 * ctx.args[0] * cot["value"],)
    >>> @ds.custom_vjp(bwd, unwrap_value=True)
    ... def square(x):
    ...     return ds.ValueResult(value=x ** 2), None
    >>> y, f_vjp = ds.vjp(square, np.array([1.0, 3.0]))
    >>> y, f_vjp(np.ones(2))
    (array([1., 9.]), (array([2., 6.]),))
    """

    value: Any

    differentiable_fields: ClassVar[tuple[str, ...]] = ("value",)
