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
from collections.abc import Iterable
from types import FrameType
from typing import Any, Protocol, TypeVar

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



class _Outcome(Protocol):
    # what report reads of a result (SolverResult, KrylovResult, ...)
    @property
    def status(self) -> Any: ...
    @property
    def message(self) -> str: ...


# report returns the result it was given, whatever its class
R = TypeVar("R", bound=_Outcome)


class ConvergenceWarning(RuntimeWarning):
    """A solver stopped before reaching its tolerance; the message says what to try.

    See Also
    --------
    diffsolve.SolveError : Raised instead with ``throw=True``.
    diffsolve.Status : The status codes and what to try for each.

    Examples
    --------
    >>> import numpy as np
    >>> import diffsolve as ds
    >>> A = np.array([[4.0, 1.0], [1.0, 3.0]])
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     res = ds.linear.solve(A, np.ones(2), method="cg", rtol=1e-12, maxiter=1)
    >>> caught[0].category is ds.ConvergenceWarning, res.status.name
    (True, 'MAX_ITERATIONS')
    """


class Status(enum.IntEnum):
    """Why a solver stopped. ``Status.SUCCESS`` (0) is the only success.

    The integer values are stable (``ode`` results used 0, 1, 2 before this enum existed).
    :meth:`hint` is the generic advice; solvers prepend their own details.

    Attributes
    ----------
    SUCCESS : 0
        The tolerance was met (the only success).
    MAX_ITERATIONS : 1
        The iteration (or step) budget ran out.
    STEP_UNDERFLOW : 2
        An adaptive step size underflowed.
    BREAKDOWN : 3
        A Krylov or factorisation breakdown (singular, not positive definite).
    NONFINITE : 4
        NaN or inf appeared.
    INFEASIBLE : 5
        The problem has no feasible point.
    DIVERGED : 6
        The iterates grew without bound.
    STOPPED : 7
        The ``callback`` asked to stop.

    See Also
    --------
    diffsolve.SolveError : The exception that carries a failed status.
    diffsolve.ConvergenceWarning : The warning that reports one.

    Examples
    --------
    >>> import diffsolve as ds
    >>> ds.Status(1).name
    'MAX_ITERATIONS'
    >>> ds.Status.MAX_ITERATIONS.hint().split(";")[0]
    'the iteration budget ran out before the tolerance was met'
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

    See Also
    --------
    diffsolve.ConvergenceWarning : What a failed solve emits with ``throw=False``.
    diffsolve.Status : The status codes and what to try for each.

    Examples
    --------
    >>> import numpy as np
    >>> import diffsolve as ds
    >>> A = np.array([[4.0, 1.0], [1.0, 3.0]])
    >>> try:
    ...     ds.linear.solve(A, np.ones(2), method="cg", rtol=1e-12, maxiter=1, throw=True)
    ... except ds.SolveError as err:
    ...     print(type(err).__name__, err.result.converged)
    MaxIterationsError False
    """

    status: Status | None = None

    def __init__(self, message: str, *, status: Status | None = None,
                 result: Any = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = Status(status)
        self.result = result


class MaxIterationsError(SolveError):
    """The iteration (or step) budget ran out.

    Attributes
    ----------
    status : Status
        Why the solve stopped.
    result : SolverResult or None
        The result the solver would have returned with ``throw=False``.

    See Also
    --------
    diffsolve.SolveError : The base class: catch it for every failed solve.
    diffsolve.Status : The status codes and what to try for each.

    Examples
    --------
    >>> import numpy as np
    >>> import diffsolve as ds
    >>> A = np.array([[4.0, 1.0], [1.0, 3.0]])
    >>> try:
    ...     ds.linear.solve(A, np.ones(2), method="cg", rtol=1e-12, maxiter=1, throw=True)
    ... except ds.MaxIterationsError as err:
    ...     print(err.status.name, err.result.n_iters)
    MAX_ITERATIONS 1
    """

    status = Status.MAX_ITERATIONS


class StepUnderflowError(SolveError):
    """An adaptive step size underflowed.

    Attributes
    ----------
    status : Status
        Why the solve stopped.
    result : SolverResult or None
        The result the solver would have returned with ``throw=False``.

    See Also
    --------
    diffsolve.SolveError : The base class: catch it for every failed solve.
    diffsolve.Status : The status codes and what to try for each.

    Examples
    --------
    ``y' = y²`` from ``y(0) = 1`` blows up at ``t = 1``:

    >>> import numpy as np
    >>> import diffsolve as ds
    >>> try:
    ...     ds.ode.odeint(lambda t, y, p: y ** 2, np.ones(1), np.array([0.0, 2.0]), np.zeros(1),
    ...                   throw=True)
    ... except ds.StepUnderflowError as err:
    ...     print(err.status.name)
    STEP_UNDERFLOW
    """

    status = Status.STEP_UNDERFLOW


class BreakdownError(SolveError):
    """A Krylov or factorisation breakdown: singular or not positive definite.

    Attributes
    ----------
    status : Status
        Why the solve stopped.
    result : SolverResult or None
        The result the solver would have returned with ``throw=False``.

    See Also
    --------
    diffsolve.SolveError : The base class: catch it for every failed solve.
    diffsolve.Status : The status codes and what to try for each.

    Examples
    --------
    Conjugate gradients on an indefinite matrix:

    >>> import numpy as np
    >>> import diffsolve as ds
    >>> try:
    ...     ds.linear.solve(np.diag([1.0, -1.0]), np.ones(2), method="cg", throw=True)
    ... except ds.BreakdownError as err:
    ...     print(err.status.name)
    BREAKDOWN
    """

    status = Status.BREAKDOWN


class NonFiniteError(SolveError):
    """NaN or inf appeared in the iteration.

    Attributes
    ----------
    status : Status
        Why the solve stopped.
    result : SolverResult or None
        The result the solver would have returned with ``throw=False``.

    See Also
    --------
    diffsolve.SolveError : The base class: catch it for every failed solve.
    diffsolve.Status : The status codes and what to try for each.

    Examples
    --------
    A vector field that returns NaN after ``t = 0.5``:

    >>> import numpy as np
    >>> import diffsolve as ds
    >>> f = lambda t, y, p: -y if t < 0.5 else y * np.nan
    >>> try:
    ...     ds.ode.odeint(f, np.ones(1), np.array([0.0, 2.0]), np.zeros(1), throw=True)
    ... except ds.NonFiniteError as err:
    ...     print(err.status.name)
    NONFINITE
    """

    status = Status.NONFINITE


class InfeasibleError(SolveError):
    """The problem has no feasible point.

    Attributes
    ----------
    status : Status
        Why the solve stopped.
    result : SolverResult or None
        The result the solver would have returned with ``throw=False``.

    See Also
    --------
    diffsolve.SolveError : The base class: catch it for every failed solve.
    diffsolve.Status : The status codes and what to try for each.
    diffsolve.bilevel.solve : ``method="lv-hba"`` raises it when its constraints stay violated.

    Examples
    --------
    >>> import diffsolve as ds
    >>> err = ds.InfeasibleError("constraints violated", status=ds.Status.INFEASIBLE)
    >>> isinstance(err, ds.SolveError), err.status.name
    (True, 'INFEASIBLE')
    """

    status = Status.INFEASIBLE


class DivergedError(SolveError):
    """The iterates grew without bound.

    Attributes
    ----------
    status : Status
        Why the solve stopped.
    result : SolverResult or None
        The result the solver would have returned with ``throw=False``.

    See Also
    --------
    diffsolve.SolveError : The base class: catch it for every failed solve.
    diffsolve.Status : The status codes and what to try for each.

    Examples
    --------
    Gradient descent on the upper level of a bilevel problem with too large a step:

    >>> import numpy as np, autograd.numpy as anp
    >>> import diffsolve as ds
    >>> inner = lambda x, y: 0.5 * anp.sum((y - x) ** 2)
    >>> outer = lambda x, y: 0.5 * anp.sum((y - 1.0) ** 2) + 0.5 * anp.sum(x ** 2)
    >>> try:
    ...     ds.bilevel.solve(outer, inner, np.zeros(1), np.zeros(1), stepsize=5.0, throw=True)
    ... except ds.DivergedError as err:
    ...     print(err.status.name)
    DIVERGED
    """

    status = Status.DIVERGED


_ERRORS = {cls.status: cls for cls in (MaxIterationsError, StepUnderflowError,
                                       BreakdownError, NonFiniteError, InfeasibleError,
                                       DivergedError)}


def error_class(status: int) -> type[SolveError]:
    """The :class:`SolveError` subclass raised for ``status``."""
    return _ERRORS.get(Status(status), SolveError)


def worst_status(statuses: Iterable[Any]) -> Status:
    """One status for a batch: the first failure among them by severity, else SUCCESS.

    Severity order (most informative first): NONFINITE, BREAKDOWN, INFEASIBLE, DIVERGED,
    STEP_UNDERFLOW, MAX_ITERATIONS.
    """
    # the distinct codes first: a batch of thousands of trajectories has one or two
    present = {Status(code) for code in {int(s) for s in statuses}}
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
    frame: FrameType | None = sys._getframe(1)
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


def report(result: R, *, throw: bool, warn: bool = True, fixed_budget: bool = False,
           stacklevel: int | None = None) -> R:
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


def result_status(result: Any) -> Status:
    """The status of a result; a batch's (array) statuses reduce by :func:`worst_status`."""
    s = result.status
    if hasattr(s, "shape") and tuple(s.shape) != ():
        from . import _backend as B

        return worst_status(B.host_numpy(s).ravel().tolist())
    return Status(int(s))
