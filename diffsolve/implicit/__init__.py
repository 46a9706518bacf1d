"""Implicit differentiation: any solver as a differentiable layer.

State the optimality condition ``F(x*, *theta) = 0`` of a solver's output and
:func:`custom_root` makes the solver differentiable through the implicit function theorem,
matrix-free, with one linear solve for all parameters; :func:`custom_fixed_point` does the
same for ``x* = T(x*, *theta)``. Ready-made conditions: :func:`stationarity`,
:func:`proximal_gradient_fixed_point`, :func:`projected_gradient_fixed_point`,
:func:`kkt_conditions`; projections onto simple sets for the projected one. The guide is
docs/implicit.md.
"""

from ._custom_root import (
    ImplicitSolveInfo,
    RootSettings,
    custom_fixed_point,
    custom_root,
    root_vjp,
)
from ._optimality import (
    kkt_conditions,
    projected_gradient_fixed_point,
    proximal_gradient_fixed_point,
    stationarity,
)
from ._projections import (
    projection_ball,
    projection_box,
    projection_nonnegative,
    projection_simplex,
)

__all__ = [
    "ImplicitSolveInfo",
    "RootSettings",
    "custom_fixed_point",
    "custom_root",
    "kkt_conditions",
    "projected_gradient_fixed_point",
    "projection_ball",
    "projection_box",
    "projection_nonnegative",
    "projection_simplex",
    "proximal_gradient_fixed_point",
    "root_vjp",
    "stationarity",
]
