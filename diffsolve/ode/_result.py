"""Result types of :func:`diffsolve.ode.odeint`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .._result import SolverResult

__all__ = ["ODEResult", "ODESolveError", "ODEStats", "status_message"]


class ODESolveError(RuntimeError):
    """The integration stopped (step-size underflow, ``max_steps`` reached, non-finite f).

    The message names the time at which it happened and what to try.
    """


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
        The solution at ``t_eval`` (differentiable); ``ys[0]`` is ``y0``.
    reg_error : array, shape ()
        ``R_E``: the error regulariser, 0 unless ``"error"`` is in ``regularizers``
        (differentiable).
    reg_stiffness : array, shape ()
        ``R_S``: the stiffness regulariser, 0 unless ``"stiffness"`` is requested
        (differentiable).
    n_steps, n_accepted, n_rejected, nfe : int
        Solver statistics, also available together as :attr:`stats`.
    ts : array or tuple of arrays or None
        Accepted step times ``t_0 < t_1 < ... < t_N`` (host NumPy float64, starting with
        ``t_eval[0]``); one array per trajectory for a batch solved per trajectory. Pass it
        as ``step_ts=`` to replay the same steps. ``None`` under :func:`diffsolve.to_jax`
        (its length is not known before the solve).
    status : int
        0: reached the end; 1: ``max_steps`` reached; 2: step-size underflow (only seen
        with ``throw=False``; ``ys`` is NaN from the first output time not reached).
    t_stop : float
        Where the solve stopped early (NaN when ``status == 0``).
    """

    ys: Any
    reg_error: Any
    reg_stiffness: Any
    n_steps: Any
    n_accepted: Any
    n_rejected: Any
    nfe: Any
    ts: Any = None
    status: Any = 0
    t_stop: Any = float("nan")

    differentiable_fields: ClassVar[tuple[str, ...]] = ("ys", "reg_error", "reg_stiffness")

    @property
    def stats(self) -> ODEStats:
        """``ODEStats(n_steps, n_accepted, n_rejected, nfe)``."""
        return ODEStats(int(self.n_steps), int(self.n_accepted), int(self.n_rejected),
                        int(self.nfe))

    @property
    def success(self) -> bool:
        """Whether the solve reached the end of ``t_eval``."""
        return int(self.status) == 0

    @property
    def message(self) -> str:
        """Why the solve stopped, and what to try."""
        return status_message(int(self.status), float(self.t_stop))


def status_message(status: int, t: float, *, t1: float | None = None,
                   max_steps: int | None = None, min_step: float | None = None,
                   nonfinite_t: float | None = None) -> str:
    """Why the integration stopped at ``t`` (``status`` 0 done, 1 max_steps, 2 step size
    underflow) and what to try; the keyword details are added where the caller knows them."""
    if status == 0:
        return "The solver reached the end of the integration interval."
    if status == 1:
        limit = "max_steps" if max_steps is None else f"max_steps={max_steps} steps"
        until = "" if t1 is None else f" before t={t1!r}"
        return (f"diffsolve.ode.odeint: {limit} reached at t={t!r}{until}; raise max_steps, "
                "loosen rtol/atol, or check whether the problem is stiff (an explicit method "
                "then needs tiny steps)")
    size = "" if min_step is None else f" (|h| < {min_step:.3g})"
    nonfinite = ("f may return non-finite values there" if nonfinite_t is None
                 else f"f returned non-finite values near t={nonfinite_t!r}")
    return (f"diffsolve.ode.odeint: step size underflow at t={t!r}{size}; the solution may "
            f"blow up, {nonfinite}, or the problem be stiff: check f, or loosen rtol/atol")
