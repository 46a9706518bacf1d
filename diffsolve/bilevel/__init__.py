"""Bilevel optimisation: hypergradients of x ↦ outer(x, y*(x)), y*(x) = argmin_y inner(x, y),
and solvers for min_x outer(x, y*(x)) (implicit / AID, penalty, LV-HBA, BO-REP)."""

from ._hypergradient import HypergradientInfo, HypergradientSettings, hypergradient
from ._solve import BilevelHistory, BilevelResult, BilevelSettings, BilevelState, solve

__all__ = [
    "BilevelHistory",
    "BilevelResult",
    "BilevelSettings",
    "BilevelState",
    "HypergradientInfo",
    "HypergradientSettings",
    "hypergradient",
    "solve",
]
