"""Linear systems: differentiable direct, CG-family, SOR and learned-direction (DCDM) solves,
and online ω tuning."""

from ._dcdm import DirectionFallbackWarning
from ._direction_model import (
    ConvDirectionModel,
    load_direction_model,
    pretrained_direction_model,
)
from ._omega_bandit import (
    BanditSolveResult,
    ContextualOmegaBandit,
    OmegaBandit,
    OmegaBanditHistory,
)
from ._prepared import PreparedSolve, prepare
from ._result import LinearSolveResult, LinearSolveState
from ._solve import LinearSolveSettings, solve
from ._train_direction import DirectionTrainingResult, train_direction_model

__all__ = [
    "BanditSolveResult",
    "ContextualOmegaBandit",
    "ConvDirectionModel",
    "DirectionFallbackWarning",
    "DirectionTrainingResult",
    "LinearSolveResult",
    "LinearSolveSettings",
    "LinearSolveState",
    "OmegaBandit",
    "OmegaBanditHistory",
    "PreparedSolve",
    "load_direction_model",
    "prepare",
    "pretrained_direction_model",
    "solve",
    "train_direction_model",
]
