"""The one result type and the one callback state of :mod:`diffsolve.krylov`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._status import Status, result_status

__all__ = ["KrylovResult", "KrylovState"]


@dataclass(frozen=True)
class KrylovResult:
    """How a Krylov solve of ``A x = b`` ended.

    Attributes
    ----------
    x : array
        The solution, b's shape (NaN where the status is ``NONFINITE``).
    status : Status or array of int
        Why it stopped; for a batch (``batch_axis``) an integer array with one status
        per system, reduced by ``diffsolve._status.result_status``.
    converged : bool
        ``True`` only when the *true* residual ``||b - A x||``, recomputed at the returned
        ``x``, meets ``max(rtol ||b||, atol)`` (for every system of a batch).
    n_iters : int
        Products with ``A`` spent in iterations (the most any system of a batch needed);
        the recomputations of the true residual are not counted.
    residual_norm : float or array
        ``||b - A x||`` at the returned ``x`` (one per system of a batch), computed
        without overflow.
    message : str
        Why it stopped and what to try.

    See Also
    --------
    diffsolve.krylov.cg : Returns this (as do ``minres`` and ``gmres``).
    diffsolve.krylov.KrylovState : What a ``callback`` sees.

    Examples
    --------
    >>> import numpy as np
    >>> import diffsolve as ds
    >>> A = np.array([[4.0, 1.0], [1.0, 3.0]])
    >>> res = ds.krylov.cg(A, np.array([1.0, 2.0]))
    >>> res.status.name, res.converged, res.n_iters
    ('SUCCESS', True, 2)
    """

    x: Any
    status: Any
    converged: bool
    n_iters: int
    residual_norm: Any
    message: str

    @property
    def success(self) -> bool:
        """``status`` is ``SUCCESS`` (for a batch: for every system)."""
        return result_status(self) is Status.SUCCESS


@dataclass(frozen=True)
class KrylovState:
    """What a Krylov ``callback`` sees after an iteration (GMRES: after a restart cycle).

    Attributes
    ----------
    n_iters : int
        Iterations so far.
    x : array
        The current iterate, b's shape (a fresh array: the callback may keep it).
    residual_norm : float or array
        The method's estimate of ``||b - A x||`` (one per system of a batch).

    See Also
    --------
    diffsolve.krylov.cg : Its ``callback`` receives this.
    diffsolve.krylov.KrylovResult : The final result.

    Examples
    --------
    >>> import numpy as np
    >>> import diffsolve as ds
    >>> A = np.array([[4.0, 1.0], [1.0, 3.0]])
    >>> seen = []
    >>> res = ds.krylov.cg(A, np.array([1.0, 2.0]), callback=seen.append)
    >>> [s.n_iters for s in seen]
    [1, 2]
    """

    n_iters: int
    x: Any
    residual_norm: Any
