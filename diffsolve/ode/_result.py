"""Result types of :func:`diffsolve.ode.odeint`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from .._result import SolverResult
from .._status import SolveError, Status

__all__ = ["ODEResult", "ODESolveError", "ODEStats", "status_message"]

#: Kept for compatibility: odeint raises :class:`diffsolve.SolveError` subclasses
#: (``MaxIterationsError``, ``StepUnderflowError``, ``NonFiniteError``) with
#: ``throw=True``; ``except ODESolveError`` still catches them all.
ODESolveError = SolveError


@dataclass(frozen=True)
class ODEStats:
    """Work done by one :func:`~diffsolve.ode.odeint` call.

    Attributes
    ----------
    n_steps : int
        Attempted steps (accepted + rejected).
    n_accepted, n_rejected : int
    nfe : int
        Evaluations of ``f`` in the forward solve (initial slope, initial-step heuristic,
        ``s - 1`` per attempted step thanks to FSAL, and those of the local regulariser's
        extra step). For a batch solved per trajectory: totals over the batch.

    See Also
    --------
    diffsolve.ode.ODEResult : Its ``stats`` field.

    Examples
    --------
    >>> import numpy as np
    >>> import diffsolve as ds
    >>> f = lambda t, y, p: -p * y
    >>> stats = ds.ode.odeint(f, np.ones(1), np.array([0.0, 1.0]), np.array([2.0])).stats
    >>> stats.n_steps == stats.n_accepted + stats.n_rejected
    True
    """

    n_steps: int
    n_accepted: int
    n_rejected: int
    nfe: int


@dataclass(frozen=True)
class ODEResult(SolverResult):
    """Result of :func:`diffsolve.ode.odeint`.

    Attributes
    ----------
    ys : array, shape (len(t_eval), d) or (len(t_eval), B, d)
        The solution at ``t_eval`` (differentiable); ``ys[0]`` is ``y0``. NaN from the
        first output time not reached when the solve stopped early.
    reg_error : array, shape ()
        ``R_E``: the error regulariser, 0 unless ``"error"`` is in ``regularizers``
        (differentiable).
    reg_stiffness : array, shape ()
        ``R_S``: the stiffness regulariser, 0 unless ``"stiffness"`` is requested
        (differentiable).
    n_steps, n_accepted, n_rejected, nfe : int
        Solver statistics, also available together as :attr:`stats`; ``n_iters`` is
        ``n_steps``.
    ts : array or tuple of arrays or None
        Accepted step times ``t_0 < t_1 < ... < t_N`` (host NumPy float64, starting with
        ``t_eval[0]``); one array per trajectory for a batch solved per trajectory. Pass it
        as ``step_ts=`` to replay the same steps. ``None`` under :func:`diffsolve.to_jax`
        (its length is not known before the solve).
    status : Status
        ``SUCCESS``: reached ``t_eval[-1]``; ``MAX_ITERATIONS``: ``max_steps`` reached (or
        the fixed budget of ``rtol = atol = 0`` taken); ``STEP_UNDERFLOW``: the step size
        underflowed; ``NONFINITE``: ``f`` returned NaN/inf (at ``t_eval[0]``, or where the
        step size then underflowed); ``STOPPED``: the callback returned ``True``. For a
        per-trajectory batch, the worst status of its trajectories.
    converged : bool
        ``True`` when the solve reached ``t_eval[-1]`` with every step meeting the error
        control ``E <= 1`` (``rtol``, ``atol``); ``False`` after any early stop, for a
        fixed budget (no error control) and for replayed ``step_ts`` with a step whose
        error estimate exceeds the tolerance.
    t_stop : float
        Where the solve stopped early (NaN when it reached the end).

    See Also
    --------
    diffsolve.ode.odeint : Returns this.
    diffsolve.ode.ODEStats : The ``stats`` field.

    Examples
    --------
    >>> import numpy as np
    >>> import diffsolve as ds
    >>> f = lambda t, y, p: -p * y
    >>> res = ds.ode.odeint(f, np.ones(1), np.linspace(0.0, 1.0, 3), np.array([2.0]))
    >>> res.ys.shape, res.converged, res.stats.nfe > 0
    ((3, 1), True, True)
    """

    ys: Any
    reg_error: Any
    reg_stiffness: Any
    n_steps: Any
    n_accepted: Any
    n_rejected: Any
    nfe: Any
    ts: Any = None
    status: Any = Status.SUCCESS
    t_stop: Any = math.nan
    converged: Any = True

    differentiable_fields: ClassVar[tuple[str, ...]] = ("ys", "reg_error", "reg_stiffness")

    @property
    def stats(self) -> ODEStats:
        """``ODEStats(n_steps, n_accepted, n_rejected, nfe)``."""
        return ODEStats(int(self.n_steps), int(self.n_accepted), int(self.n_rejected),
                        int(self.nfe))

    @property
    def n_iters(self) -> int:
        """Attempted steps (``n_steps``): odeint's iterations are its steps."""
        return int(self.n_steps)

    @property
    def success(self) -> bool:
        """Whether the solve reached the end of ``t_eval`` (``status == SUCCESS``)."""
        return int(self.status) == 0

    @property
    def message(self) -> str:
        """Why the solve stopped, and what to try."""
        detail = self.__dict__.get("_message")
        if detail:
            return detail
        return status_message(int(self.status), float(self.t_stop))

    @property
    def t_switch(self) -> float | tuple[float, ...]:
        """``method="auto"``: the time it switched from ``tsit5`` to ``kvaerno5`` (NaN:
        it never did; a tuple for a batch solved per trajectory). NaN for other methods."""
        return self.__dict__.get("_t_switch", math.nan)


def attach_message(result: ODEResult, message: str) -> ODEResult:
    """Give ``result`` the solver's detailed message (with the step budget, the end time...).

    It is not a dataclass field: results cross JAX as arrays only, and a result rebuilt
    from its fields falls back to the message :func:`status_message` derives from
    ``status`` and ``t_stop``.
    """
    object.__setattr__(result, "_message", message)
    return result


def status_message(status: int, t: float, *, t1: float | None = None,
                   max_steps: int | None = None, min_step: float | None = None,
                   nonfinite_t: float | None = None, trajectory: int | None = None) -> str:
    """Why the integration stopped at ``t`` and what to try; the keyword details are
    added where the caller knows them."""
    status = Status(status)
    where = "diffsolve.ode.odeint: " + ("" if trajectory is None else
                                        f"trajectory {trajectory}: ")
    if status is Status.SUCCESS:
        return "The solver reached the end of the integration interval."
    if status is Status.MAX_ITERATIONS:
        if t != t:  # reached the end: the fixed budget of rtol = atol = 0
            limit = "" if max_steps is None else f"{max_steps} "
            return (f"{where}took the fixed budget of {limit}equal steps (rtol = atol = 0: "
                    "no error control); give rtol/atol > 0 for an adaptive, error-controlled "
                    "solve")
        limit = "max_steps" if max_steps is None else f"max_steps={max_steps} steps"
        until = "" if t1 is None else f" before t={t1!r}"
        return (f"{where}{limit} reached at t={t!r}{until}; raise max_steps, "
                "loosen rtol/atol, or check whether the problem is stiff (an explicit method "
                "then needs tiny steps)")
    if status is Status.STOPPED:
        return f"{where}the callback returned True at t={t!r}; outputs after t are NaN"
    if status is Status.NONFINITE and min_step is None and nonfinite_t is None:
        return (f"{where}f(t, y, params) returned NaN or infinite values at t={t!r}; "
                f"{Status.NONFINITE.hint()} (check f and y0)")
    size = "" if min_step is None else f" (|h| < {min_step:.3g})"
    if status is Status.NONFINITE:
        return (f"{where}f(t, y, params) returned non-finite values near t={nonfinite_t!r}, "
                f"and the step size shrank on them until it underflowed at t={t!r}{size}; "
                "check f there (the solution may blow up, or f be undefined past that "
                "time), or rescale the problem")
    nonfinite = ("f may return non-finite values there" if nonfinite_t is None
                 else f"f returned non-finite values near t={nonfinite_t!r}")
    return (f"{where}step size underflow at t={t!r}{size}; the solution may "
            f"blow up, {nonfinite}, or the problem be stiff: check f, or loosen rtol/atol")
