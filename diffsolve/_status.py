"""One status vocabulary, one exception hierarchy and one way to report a failed solve.

Every diffsolve result carries ``status`` (a :class:`Status`), ``converged``, ``message``
and ``n_iters``. A solve that did not reach its tolerance is never silent: with
``throw=False`` (the default everywhere, as in SciPy, whose solvers report through
``info`` / ``success`` instead of raising) it warns with a :class:`ConvergenceWarning`
whose text is the result's message; with ``throw=True`` it raises the
:class:`SolveError` subclass of its status, which carries the result. Solvers that call
other solvers read the inner result's ``status`` instead of silencing the inner warning
(they call the inner solver with ``throw=False, warn=False`` or its private implementation).

A solve stopped by its callback (which returned ``True``) reports ``Status.STOPPED``; it
was asked for, so it neither warns nor raises either.

A *fixed budget* run (``rtol = atol = 0``: "run exactly ``maxiter`` iterations") reports
``Status.MAX_ITERATIONS`` and ``converged=False`` (the answer does not meet a zero
tolerance), but it is what the caller asked for, so it neither warns nor raises.
"""

from __future__ import annotations

import enum
import os
import sys
import warnings

__all__ = [
    "BreakdownError",
    "ConvergenceWarning",
    "DivergedError",
    "InfeasibleError",
    "MaxIterationsError",
    "NonFiniteError",
    "SolveError",
    "Status",
    "StepUnderflowError",
    "error_class",
    "report",
]


class ConvergenceWarning(RuntimeWarning):
    """A solver stopped before reaching its tolerance; the message says what to try."""


class Status(enum.IntEnum):
    """Why a solver stopped. ``Status.SUCCESS`` (0) is the only success.

    The integer values are stable (``ode`` results used 0, 1, 2 before this enum existed).
    :meth:`hint` is the generic advice; solvers prepend their own details.
    """

    SUCCESS = 0
    MAX_ITERATIONS = 1
    STEP_UNDERFLOW = 2
    BREAKDOWN = 3
    NONFINITE = 4
    INFEASIBLE = 5
    DIVERGED = 6
    STOPPED = 7

    @property
    def success(self) -> bool:
        return self is Status.SUCCESS

    def hint(self) -> str:
        """What to try when a solve ends with this status."""
        return _HINTS[self]


_HINTS = {
    Status.SUCCESS: "the solve met its tolerance",
    Status.MAX_ITERATIONS: "the iteration budget ran out before the tolerance was met; "
                           "increase maxiter, loosen rtol/atol, or use a better "
                           "preconditioner / warm start",
    Status.STEP_UNDERFLOW: "the step size fell below what the floating-point type resolves; "
                           "the problem may be stiff or its solution blow up: check the "
                           "function and loosen rtol/atol",
    Status.BREAKDOWN: "the method broke down (a singular or indefinite operator where a "
                      "positive definite or nonsingular one is needed); check the matrix, "
                      "or use a method for its class (direct, MINRES, GMRES)",
    Status.NONFINITE: "non-finite values (NaN or inf) appeared in the iteration; check the "
                      "inputs for NaN/inf, rescale them, or use float64",
    Status.INFEASIBLE: "the problem has no feasible point as posed (e.g. constraints or "
                       "marginals that cannot be met); check the problem data",
    Status.DIVERGED: "the iterates grew without bound; reduce the step size or the learning "
                     "rate, or check that the problem is well posed",
    Status.STOPPED: "the callback returned True and stopped the solve before its tolerance "
                    "was met",
}


class SolveError(RuntimeError):
    """A solve failed and ``throw=True`` was given.

    Attributes
    ----------
    status : Status
        Why it stopped.
    result : SolverResult or None
        The result the solver would have returned with ``throw=False`` (for inspection).
    """

    status: Status | None = None

    def __init__(self, message: str, *, status: Status | None = None, result=None):
        super().__init__(message)
        if status is not None:
            self.status = Status(status)
        self.result = result


class MaxIterationsError(SolveError):
    """The iteration (or step) budget ran out."""

    status = Status.MAX_ITERATIONS


class StepUnderflowError(SolveError):
    """An adaptive step size underflowed."""

    status = Status.STEP_UNDERFLOW


class BreakdownError(SolveError):
    """A Krylov or factorisation breakdown: singular or not positive definite."""

    status = Status.BREAKDOWN


class NonFiniteError(SolveError):
    """NaN or inf appeared in the iteration."""

    status = Status.NONFINITE


class InfeasibleError(SolveError):
    """The problem has no feasible point."""

    status = Status.INFEASIBLE


class DivergedError(SolveError):
    """The iterates grew without bound."""

    status = Status.DIVERGED


_ERRORS = {cls.status: cls for cls in (MaxIterationsError, StepUnderflowError,
                                       BreakdownError, NonFiniteError, InfeasibleError,
                                       DivergedError)}


def error_class(status) -> type[SolveError]:
    """The :class:`SolveError` subclass raised for ``status``."""
    return _ERRORS.get(Status(status), SolveError)


def worst_status(statuses) -> Status:
    """One status for a batch: the first failure among them by severity, else SUCCESS.

    Severity order (most informative first): NONFINITE, BREAKDOWN, INFEASIBLE, DIVERGED,
    STEP_UNDERFLOW, MAX_ITERATIONS.
    """
    present = {Status(int(s)) for s in statuses}
    for s in (Status.NONFINITE, Status.BREAKDOWN, Status.INFEASIBLE, Status.DIVERGED,
              Status.STEP_UNDERFLOW, Status.MAX_ITERATIONS, Status.STOPPED):
        if s in present:
            return s
    return Status.SUCCESS


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_KERNELS_DIR = os.path.join(os.path.dirname(_PACKAGE_DIR), "kernels")
# frames of these libraries sit between a user's call and a solver run through an adapter
_PASS_THROUGH = (f"{os.sep}torch{os.sep}", f"{os.sep}autograd{os.sep}", f"{os.sep}jax{os.sep}",
                 f"{os.sep}jaxlib{os.sep}")


def caller_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning point at the user's line.

    Counts frames up from the caller of this function until one lies outside diffsolve
    (and outside the autodiff frameworks that call it through the adapters), so the warning
    names the user's call whether it came directly, through ``diffsolve.vjp`` or an adapter.
    """
    frame = sys._getframe(1)
    level = 1
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        inside = path.startswith((_PACKAGE_DIR, _KERNELS_DIR)) or \
            any(part in path for part in _PASS_THROUGH)
        if not inside:
            return level
        frame = frame.f_back
        level += 1
    return 1


def warn_at_caller(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` pointing at the first frame outside diffsolve."""
    warnings.warn(message, category, stacklevel=caller_stacklevel())


def report(result, *, throw: bool, warn: bool = True, fixed_budget: bool = False,
           stacklevel: int | None = None):
    """Return ``result``, after warning or raising if it did not succeed.

    Parameters
    ----------
    result : SolverResult
        Has ``status`` (an int/Status or array of them for a batch) and ``message``.
    throw : bool
        Raise the status's :class:`SolveError` subclass instead of warning.
    warn : bool
        ``False`` for a caller that reads the status itself (an inner solve).
    fixed_budget : bool
        ``rtol = atol = 0``: running out of iterations is the request, not a failure.
    stacklevel : int, optional
        Where the warning points; by default the user's line (:func:`caller_stacklevel`).
    """
    status = result_status(result)
    if status is Status.SUCCESS:
        return result
    if status is Status.STOPPED or (fixed_budget and status is Status.MAX_ITERATIONS):
        return result
    message = result.message
    if throw:
        raise error_class(status)(message, status=status, result=result)
    if warn:
        if stacklevel is None:
            stacklevel = caller_stacklevel()
        warnings.warn(message, ConvergenceWarning, stacklevel=stacklevel)
    return result


def result_status(result) -> Status:
    """The status of a result; a batch's (array) statuses reduce by :func:`worst_status`."""
    s = result.status
    if hasattr(s, "shape") and tuple(s.shape) != ():
        from . import _backend as B

        return worst_status(B.host_numpy(s).ravel().tolist())
    return Status(int(s))
