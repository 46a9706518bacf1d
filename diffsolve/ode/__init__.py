"""ODE solvers: adaptive explicit Runge–Kutta with adjoints and solver-heuristic regularisers.

:func:`odeint` integrates ``dy/dt = f(t, y, params)`` with ``tsit5``, ``dopri5`` or
``bs3``; its result is differentiable (discrete or backsolve adjoint) through
:func:`diffsolve.vjp` and the autograd / PyTorch / JAX adapters. See ``docs/ode.md``.
"""

from ._odeint import odeint
from ._result import ODEResult, ODESolveError, ODEStats
from ._settings import ODESettings, ODEState
from ._tableaux import TABLEAUX, Tableau
from ._vector_field import from_jax, from_torch

__all__ = ["TABLEAUX", "ODEResult", "ODESettings", "ODESolveError", "ODEState", "ODEStats",
           "Tableau", "from_jax",
           "from_torch", "odeint"]
