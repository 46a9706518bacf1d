"""Bilevel optimisation: hypergradients of x ↦ outer(x, y*(x)), y*(x) = argmin_y inner(x, y),
and solvers for min_x outer(x, y*(x)) (implicit / AID, penalty, LV-HBA, BO-REP)."""

from ._hypergradient import HypergradientInfo, hypergradient
from ._solve import BilevelHistory, BilevelResult, BilevelState, solve

__all__ = [
    "BilevelHistory",
    "BilevelResult",
    "BilevelState",
    "HypergradientInfo",
    "hypergradient",
    "solve",
]
