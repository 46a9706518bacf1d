"""ODE solvers: adaptive Runge–Kutta (explicit and stiff) with adjoints and regularisers.

:func:`odeint` integrates ``dy/dt = f(t, y, params)`` with the explicit pairs ``tsit5``,
``dopri5`` or ``bs3``, the L-stable ESDIRK pairs ``kvaerno3`` / ``kvaerno5``, the
Rosenbrock method ``rodas5``, or ``auto`` (explicit until the stiffness estimate says
otherwise); its result is differentiable (discrete or backsolve adjoint) through
:func:`diffsolve.vjp` and the autograd / PyTorch / JAX adapters. See ``docs/ode.md`` and
``docs/ode_stiff.md``.
"""

from ._odeint import odeint
from ._result import ODEResult, ODESolveError, ODEStats
from ._settings import ODESettings, ODEState
from ._tableaux import TABLEAUX, Tableau
from ._vector_field import from_jax, from_torch

__all__ = ["TABLEAUX", "ODEResult", "ODESettings", "ODESolveError", "ODEState", "ODEStats",
           "Tableau", "from_jax",
           "from_torch", "odeint"]
