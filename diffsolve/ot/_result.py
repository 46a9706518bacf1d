"""The result type shared by every optimal-transport solver in :mod:`diffsolve.ot`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .._result import SolverResult

__all__ = ["OTResult"]


@dataclass(frozen=True)
class OTResult(SolverResult):
    """Result of an optimal-transport solve (:func:`~diffsolve.ot.sinkhorn` and friends).

    Shapes below are for one problem; a batched call (leading batch dimensions ``B...`` on
    ``a``, ``b`` and ``C``) prefixes every array field with ``B...``, and ``n_iters``,
    ``converged`` and ``error`` become arrays of shape ``B...`` (each problem stops on its own).

    Attributes
    ----------
    plan : array, shape (n, m)
        The transport plan (differentiable).
    f, g : arrays, shapes (n,) and (m,)
        Dual potentials (differentiable). For the entropic solvers these are the log-domain
        Sinkhorn potentials, ``plan = exp((f_i + g_j - C_ij) / eps)``; the sparse/quadratic
        solvers return their dual variables (alpha, beta) here.
    cost : array, shape ()
        The objective the solver minimised, including its regulariser (differentiable); the
        solver's docstring says exactly which quantity.
    n_iters : int or array
        Iterations (or Newton / L-BFGS steps) taken.
    converged : bool or array
        Whether the marginal error fell below the tolerance.
    error : float or array
        The final marginal violation in the measure named by ``error_measure``.
    error_measure : str
        How ``error`` is measured, e.g. ``"l1"`` = ``||P 1 - a||_1 + ||P^T 1 - b||_1``.
    """

    plan: Any
    f: Any
    g: Any
    cost: Any
    n_iters: Any
    converged: Any
    error: Any
    error_measure: str = "l1"

    differentiable_fields: ClassVar[tuple[str, ...]] = ("plan", "f", "g", "cost")
