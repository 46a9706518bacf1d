"""diffsolve: differentiable solvers for NumPy and CuPy.

Every solver runs on the CPU (NumPy + Numba) or the GPU (CuPy + CUDA) depending on the
arrays it is given, and carries a hand-written backward rule, usable without any
deep-learning framework (:func:`vjp`) or as a layer in HIPS autograd, PyTorch or JAX
(:func:`to_autograd`, :func:`to_torch`, :func:`to_jax`).
"""

__version__ = "0.1.0"

from . import bilevel, implicit, krylov, linear, ode, ot
from ._autodiff import custom_vjp, vjp
from ._backend import CSR
from ._result import SolverResult, ValueResult
from ._status import (
    BreakdownError,
    ConvergenceWarning,
    DivergedError,
    InfeasibleError,
    MaxIterationsError,
    NonFiniteError,
    SolveError,
    Status,
    StepUnderflowError,
)
from ._user_function import NotTraceableError
from .interop import to_autograd, to_jax, to_torch
from .linear._result import LinearSolveResult

__all__ = [
    "CSR",
    "BreakdownError",
    "ConvergenceWarning",
    "DivergedError",
    "InfeasibleError",
    "LinearSolveResult",
    "MaxIterationsError",
    "NonFiniteError",
    "NotTraceableError",
    "SolveError",
    "SolverResult",
    "Status",
    "StepUnderflowError",
    "ValueResult",
    "bilevel",
    "custom_vjp",
    "implicit",
    "krylov",
    "linear",
    "ode",
    "ot",
    "to_autograd",
    "to_jax",
    "to_torch",
    "vjp",
]
