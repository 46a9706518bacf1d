"""The result and callback-state types shared by the optimal-transport solvers of
:mod:`diffsolve.ot`, and the one status / message rule they use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .. import _backend as B
from .._result import SolverResult
from .._status import Status

__all__ = ["OTResult", "OTState"]


@dataclass(frozen=True)
class OTState:
    """What an OT solver's ``callback(state)`` sees at each check (read-only).

    ``callback(state) -> bool | None``: returning ``True`` stops the solve; the problems
    that had not met their tolerance then report ``Status.STOPPED`` (no warning, no error).

    Attributes
    ----------
    n_iters : int
        Iterations so far (for :func:`~diffsolve.ot.sinkhorn` summed over the ε-scaling
        stages; Newton steps for :func:`~diffsolve.ot.sinkhorn_newton_sparse`; L-BFGS
        iterations and Newton polish steps for :func:`~diffsolve.ot.sparse_ot`).
    f, g : arrays
        The current dual potentials (shapes ``(..., n)`` and ``(..., m)``; not yet
        normalised to the gauge of the result). Do not modify them.
    error : float or array
        The current marginal error (``error_measure`` of the solver), one per problem.
    eps : float or None
        The current ε of the schedule (entropic solvers), else None.
    problem : int or None
        For solvers that loop over the problems of a batch (Sinkhorn–Newton–Sparse,
        sparse/quadratic OT): the index of the problem in the flattened batch; None for
        one problem or a state of the whole batch.

    See Also
    --------
    diffsolve.ot.sinkhorn : Its ``callback`` receives this.
    diffsolve.ot.SNSState : The Newton solver's state.

    Examples
    --------
    >>> import numpy as np
    >>> import diffsolve as ds
    >>> x = np.linspace(0, 1, 5)
    >>> C = (x[:, None] - x[None, :]) ** 2
    >>> a = b = np.full(5, 0.2)
    >>> seen = []
    >>> res = ds.ot.sinkhorn(a, b, C, 0.05, callback=seen.append)
    >>> seen[-1].n_iters == res.n_iters, bool(seen[-1].error <= 1e-9)
    (True, True)
    """

    n_iters: int
    f: Any
    g: Any
    error: Any
    eps: float | None = None
    problem: int | None = None


@dataclass(frozen=True)
class OTResult(SolverResult):
    """Result of an optimal-transport solve (:func:`~diffsolve.ot.sinkhorn` and friends).

    Shapes below are for one problem; a batched call (leading batch dimensions ``B...`` on
    ``a``, ``b`` and ``C``) prefixes every array field with ``B...``, and ``n_iters``,
    ``converged``, ``error``, ``status`` and ``tolerance`` become arrays of shape ``B...``
    (each problem stops on its own).

    Attributes
    ----------
    plan : array, shape (n, m)
        The transport plan (differentiable).
    f, g : arrays, shapes (n,) and (m,)
        Dual potentials (differentiable). For the entropic solvers these are the log-domain
        Sinkhorn potentials, ``plan = exp((f_i + g_j - C_ij) / eps)``; the sparse/quadratic
        solvers return their dual variables (alpha, beta) here.
    cost : array, shape ()
        The solver's objective (differentiable); the solver's docstring says exactly which
        quantity.
    n_iters : int or array
        Iterations (or Newton / L-BFGS steps) taken.
    converged : bool or array
        ``error <= tolerance``: the returned plan meets the reported tolerance.
    error : float or array
        The final marginal violation of the returned plan, in ``error_measure``.
    status : Status or int array
        Why the solve stopped (:class:`diffsolve.Status`): ``SUCCESS`` (``converged``),
        ``MAX_ITERATIONS``, ``NONFINITE``, ``STOPPED`` (the callback returned True),
        ``INFEASIBLE`` (:func:`~diffsolve.ot.sparse_ot`: the sparsity constraint binds).
        An int array of the batch shape for a batched call.
    tolerance : float or array
        The absolute marginal-error tolerance ``atol + rtol * sum(a)`` per problem.
    error_measure : str
        How ``error`` is measured, e.g. ``"l1"`` = ``||P 1 - a||_1 + ||P^T 1 - b||_1``.

    See Also
    --------
    diffsolve.ot.sinkhorn : Returns this.
    diffsolve.ot.OTState : What a ``callback`` sees.

    Examples
    --------
    >>> import numpy as np
    >>> import diffsolve as ds
    >>> x = np.linspace(0, 1, 5)
    >>> C = (x[:, None] - x[None, :]) ** 2
    >>> a = b = np.full(5, 0.2)
    >>> res = ds.ot.sinkhorn(a, b, C, 0.05)
    >>> res.plan.shape, res.converged, bool(np.allclose(res.plan.sum(axis=0), b))
    ((5, 5), True, True)
    """

    plan: Any
    f: Any
    g: Any
    cost: Any
    n_iters: Any
    converged: Any
    error: Any
    status: Any
    tolerance: Any
    error_measure: str = "l1"

    differentiable_fields: ClassVar[tuple[str, ...]] = ("plan", "f", "g", "cost")
    #: the solver named in messages, and what to try when it ran out of iterations
    solver_name: ClassVar[str] = "diffsolve.ot.sinkhorn"
    advice: ClassVar[str] = ("try a larger maxiter, a larger eps, eps_scaling=8 or "
                             "acceleration='momentum'")

    @property
    def success(self) -> bool:
        """Whether every problem met its tolerance."""
        return all(s == Status.SUCCESS for s in _ints(self.status))

    @property
    def message(self) -> str:
        """Why the solve stopped and, if it failed, what to try."""
        return ot_message(self)


def _ints(x) -> list:
    """A status / count / flag field as a flat list of Python numbers."""
    if isinstance(x, (int, float, bool)):
        return [x]
    return B.host_numpy(x).ravel().tolist()


def problem_status(err, tol, n_iters, maxiter, *, nonfinite, stopped, fixed_budget):
    """The status of one problem from its final error and how its loop ended."""
    if nonfinite or not err == err or err == float("inf"):
        return Status.NONFINITE
    if not fixed_budget and err <= tol:
        return Status.SUCCESS
    if stopped:
        return Status.STOPPED
    return Status.MAX_ITERATIONS


def ot_message(res) -> str:
    """``res.message`` for every OT result: the worst status's hint plus the details."""
    from .._status import result_status

    status = result_status(res)
    statuses = [Status(int(s)) for s in _ints(res.status)]
    errors, tols = _ints(res.error), _ints(res.tolerance)
    iters = _ints(res.n_iters)
    nb = len(statuses)
    where = type(res).solver_name
    if status is Status.SUCCESS:
        return (f"{where}: converged: marginal error {max(errors):.3g} <= tolerance "
                f"{max(tols):.3g} ({res.error_measure}) after {max(iters)} iterations")
    bad = [i for i, s in enumerate(statuses) if s is status]
    i = max(bad, key=lambda j: errors[j] / tols[j] if tols[j] > 0 else errors[j])
    which = f"{len(bad)} of {nb} problems" if nb > 1 else "the problem"
    head = (f"{where}: {which} stopped with status {status.name}: marginal error "
            f"{errors[i]:.3g} vs tolerance {tols[i]:.3g} ({res.error_measure}) after "
            f"{iters[i]} iterations")
    extra = ""
    if status is Status.MAX_ITERATIONS:
        extra = f"; {type(res).advice}"
        dtype = getattr(res.plan, "dtype", None)
        if dtype is not None and "float32" in str(dtype) and tols[i] < 1e-5:
            extra += "; float32 cannot reach marginal errors much below 1e-6: use float64 " \
                     "or a larger atol/rtol"
    return f"{head}. {status.hint()}{extra}"
