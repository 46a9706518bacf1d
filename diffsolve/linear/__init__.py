"""Linear systems: differentiable direct, CG-family and SOR solves, and online ω tuning."""

from ._omega_bandit import (
    BanditSolveResult,
    ContextualOmegaBandit,
    OmegaBandit,
    OmegaBanditHistory,
)
from ._solve import solve

__all__ = [
    "BanditSolveResult",
    "ContextualOmegaBandit",
    "OmegaBandit",
    "OmegaBanditHistory",
    "solve",
]
