"""The validated options of one :func:`~diffsolve.ode.odeint` call, and its callback state.

:func:`odeint_settings` checks every option once (with the shared validators of
:mod:`diffsolve._validate`) into a frozen :class:`ODESettings`; the forward solve and both
backward rules read that object, so each default is written only in ``odeint``'s
signature. The same options give the same (cached) settings object: validation is a fixed
cost of every call, and odeint is often called many times on small problems.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import _validate as V
from ._stiff_tableaux import STIFF_TABLEAUX
from ._tableaux import TABLEAUX

__all__ = ["ODESettings", "ODEState", "odeint_settings"]

WHERE = "diffsolve.ode.odeint"
METHODS = (*TABLEAUX, *STIFF_TABLEAUX, "rodas5", "auto")
#: the methods that may form a Jacobian ("auto" once it switches to kvaerno5)
STIFF_METHODS = (*STIFF_TABLEAUX, "rodas5", "auto")
JAC_RECIPES = ("fd", "vjp")
CONTROLLERS = ("pi", "i")
ADJOINTS = ("discrete", "backsolve")
REGULARIZERS = ("error", "stiffness")
LOCAL = (None, "unbiased", "biased")
BATCH_MODES = ("per-trajectory", "shared", "vectorized")
LINEAR_SOLVERS = ("direct", "gmres")
PRECONDITIONERS = ("jacobi",)


@dataclass(frozen=True)
class ODESettings:
    """The options of one :func:`~diffsolve.ode.odeint` call, validated (see its docstring).

    ``rtol = atol = 0`` is a fixed budget: ``max_steps`` equal steps over ``t_eval``
    (no error control), reported as ``Status.MAX_ITERATIONS`` without a warning.

    Attributes
    ----------
    method, rtol, atol, controller, first_step, max_steps, adjoint, regularizers,
    local_regularization, seed, vjp, batch_mode, checkpoint_every, throw, callback,
    jac, linear_solver, preconditioner
        The arguments of the same names of :func:`diffsolve.ode.odeint`, validated (a frozen
        dataclass: read it, do not build it).

    See Also
    --------
    diffsolve.ode.odeint : The function whose options these are.

    Examples
    --------
    >>> import dataclasses
    >>> import diffsolve as ds
    >>> "rtol" in {f.name for f in dataclasses.fields(ds.ode.ODESettings)}
    True
    """

    method: str
    rtol: float
    atol: float
    controller: str
    first_step: float | None
    max_steps: int
    adjoint: str
    regularizers: tuple[str, ...]
    local_regularization: str | None
    seed: Any
    vjp: Callable | None
    batch_mode: str
    checkpoint_every: int
    throw: bool
    callback: Callable | None
    jac: Any = None
    linear_solver: str = "direct"
    preconditioner: Any = None

    @property
    def fixed_budget(self) -> bool:
        """``rtol = atol = 0``: take exactly ``max_steps`` equal steps."""
        return self.rtol == 0.0 and self.atol == 0.0

    @property
    def norm_tolerances(self) -> tuple[float, float]:
        """``(rtol, atol)`` of the scaled error norm. A fixed budget has no error control;
        its norm is then taken with ``atol = 1`` only so that it stays finite (it is used
        to detect non-finite stages, never to accept or reject a step)."""
        return (0.0, 1.0) if self.fixed_budget else (self.rtol, self.atol)

    @property
    def want_stiff(self) -> bool:
        return "stiffness" in self.regularizers


@dataclass(frozen=True)
class ODEState:
    """What an odeint ``callback`` sees after each accepted step.

    Attributes
    ----------
    t : float
        The time reached.
    y : array
        The state at ``t``, in ``y0``'s shape for one trajectory (``(d,)``; ``(B, d)`` with
        ``batch_mode="shared"``), in ``y0``'s array library. Do not modify it.
    h : float
        The accepted step (signed: negative when integrating backwards in time).
    n_steps : int
        Attempted steps so far (accepted + rejected).
    n_accepted : int
        Accepted steps so far.
    error : float
        The scaled error estimate of the accepted step (``<= 1`` under error control).
    trajectory : int or None
        Which trajectory of a per-trajectory batch (``None`` for one solve or a shared
        batch).
    n_iters : int
        The same as ``n_steps`` (the name every family's state shares).

    See Also
    --------
    diffsolve.ode.odeint : Its ``callback`` receives this.
    diffsolve.ode.ODEResult : The final result.

    Examples
    --------
    >>> import numpy as np
    >>> import diffsolve as ds
    >>> f = lambda t, y, p: -p * y
    >>> seen = []
    >>> res = ds.ode.odeint(f, np.ones(1), np.array([0.0, 1.0]), np.array([2.0]),
    ...                     callback=seen.append)
    >>> seen[-1].t, len(seen) == res.stats.n_accepted
    (1.0, True)
    """

    t: float
    y: Any
    h: float
    n_steps: int
    n_accepted: int
    error: float
    trajectory: int | None = None

    @property
    def n_iters(self) -> int:
        """``n_steps``: the name every family's callback state shares."""
        return self.n_steps


def _make(method, rtol, atol, controller, first_step, max_steps, adjoint, regularizers,
          local_regularization, seed, vjp, batch_mode, checkpoint_every, throw, callback,
          jac=None, linear_solver="direct", preconditioner=None):
    method = V.choice(WHERE, "method", method, METHODS)
    rtol, atol = V.tolerances(WHERE, rtol, atol)
    controller = V.choice(WHERE, "controller", controller, CONTROLLERS)
    first_step = V.positive_real(WHERE, "first_step", first_step, allow_none=True)
    max_steps = V.positive_int(WHERE, "max_steps", max_steps)
    adjoint = V.choice(WHERE, "adjoint", adjoint, ADJOINTS)
    regularizers = V.choices(WHERE, "regularizers", regularizers, REGULARIZERS)
    local_regularization = V.choice(WHERE, "local_regularization", local_regularization,
                                    LOCAL)
    batch_mode = V.choice(WHERE, "batch_mode", batch_mode, BATCH_MODES)
    checkpoint_every = V.positive_int(WHERE, "checkpoint_every", checkpoint_every)
    throw = V.boolean(WHERE, "throw", throw)
    callback = V.callback(WHERE, callback)
    vjp = V.optional_callable(WHERE, "vjp", vjp, signature="vjp(t, y, params, v) -> "
                                                          "(v_y, v_params)")
    seed = V.seed(WHERE, seed)
    jac = _check_jac(method, jac, adjoint, regularizers)
    linear_solver, preconditioner = _check_linear_solver(method, linear_solver,
                                                         preconditioner)
    if regularizers and adjoint == "backsolve":
        # the backsolve forward keeps no per-step records, and its backward integrates the
        # adjoint ODE, which knows nothing of the solver's error or stiffness estimates
        local = ("" if local_regularization is None
                 else f" (with local_regularization={local_regularization!r})")
        raise ValueError(f"{WHERE}: regularizers={regularizers}{local} are built from the "
                         "solver's own stages, which only the discrete adjoint "
                         "differentiates; use adjoint='discrete' (with checkpoint_every=k "
                         "to store only every k-th state)")
    if batch_mode == "vectorized":
        _check_vectorized(method, regularizers, callback, checkpoint_every)
    if local_regularization is not None and not regularizers:
        raise ValueError(f"{WHERE}: local_regularization={local_regularization!r} needs "
                         "regularizers=('error',) and/or 'stiffness'")
    if rtol == 0.0 and atol == 0.0:
        if regularizers:
            raise ValueError(f"{WHERE}: rtol = atol = 0 takes max_steps equal steps without "
                             f"error control, so the regularizers {regularizers} (built "
                             "from the error control) are undefined; give rtol/atol > 0")
        if adjoint == "backsolve":
            raise ValueError(f"{WHERE}: rtol = atol = 0 (max_steps equal steps) has no "
                             "tolerance for the backsolve adjoint's own adaptive solve; "
                             "use adjoint='discrete' (the exact gradient of the fixed "
                             "steps) or give rtol/atol > 0")
    return ODESettings(method, rtol, atol, controller, first_step, max_steps, adjoint,
                       regularizers, local_regularization, seed, vjp, batch_mode,
                       checkpoint_every, throw, callback, jac, linear_solver, preconditioner)


def _check_vectorized(method, regularizers, callback, checkpoint_every):
    """The options ``batch_mode="vectorized"`` does not combine with."""
    if method not in TABLEAUX:
        raise ValueError(f"{WHERE}: batch_mode='vectorized' runs the explicit methods "
                         f"{tuple(TABLEAUX)}; method={method!r}: choose one of those, or "
                         "batch_mode='per-trajectory'")
    for name, value, default in (("regularizers", regularizers, ()),
                                 ("callback", callback, None),
                                 ("checkpoint_every", checkpoint_every, 1)):
        if value != default:
            raise ValueError(f"{WHERE}: batch_mode='vectorized' does not take {name}="
                             f"{value!r} (it stores every accepted state of the batch and "
                             "calls no per-trajectory hooks); use batch_mode='per-trajectory'")


def _check_linear_solver(method, linear_solver, preconditioner):
    """``linear_solver`` and ``preconditioner`` (Newton stage systems of the ESDIRK pairs)."""
    linear_solver = V.choice(WHERE, "linear_solver", linear_solver, LINEAR_SOLVERS)
    if preconditioner is not None and not callable(preconditioner):
        preconditioner = V.choice(WHERE, "preconditioner", preconditioner, PRECONDITIONERS)
    if linear_solver == "direct":
        if preconditioner is not None:
            raise ValueError(f"{WHERE}: preconditioner={preconditioner!r} is for "
                             "linear_solver='gmres'; the direct solver factorises the Newton "
                             "matrix: drop preconditioner, or pass linear_solver='gmres'")
        return linear_solver, None
    if method not in STIFF_METHODS:
        raise ValueError(f"{WHERE}: linear_solver={linear_solver!r} solves the Newton systems "
                         f"of the implicit methods; method={method!r} is explicit and solves "
                         "none: drop linear_solver, or choose 'kvaerno5' / 'kvaerno3'")
    if method == "rodas5":
        raise ValueError(f"{WHERE}: method='rodas5' takes linear_solver='direct' only (a "
                         "Rosenbrock step has no Newton iteration to correct an inexact "
                         "linear solve: its error would enter the solution); use "
                         "method='kvaerno5' with linear_solver='gmres'")
    return linear_solver, ("jacobi" if preconditioner is None else preconditioner)


def _check_jac(method, jac, adjoint, regularizers):
    """``jac`` (None, a callable or a recipe name) and the options the stiff methods lack."""
    if jac is not None and not callable(jac):
        jac = V.choice(WHERE, "jac", jac, JAC_RECIPES)
    if method not in STIFF_METHODS:
        if jac is not None:
            raise ValueError(f"{WHERE}: jac is used by the implicit methods {STIFF_METHODS}; "
                             f"method={method!r} is explicit and needs no Jacobian: drop jac, "
                             "or choose a stiff method")
        return None
    if regularizers:
        raise ValueError(f"{WHERE}: regularizers={regularizers} are built from the stages of "
                         f"the explicit methods; method={method!r} is implicit: drop them, or "
                         "use an explicit method ('tsit5', 'dopri5', 'bs3')")
    return "fd" if jac is None else jac


_cached = functools.lru_cache(maxsize=256, typed=True)(_make)


def odeint_settings(*options) -> ODESettings:
    """:class:`ODESettings` from odeint's options, in its signature's order.

    Hashable options (the common case) hit a cache keyed by value *and type*, so
    ``max_steps=True`` is never mistaken for ``max_steps=1``.
    """
    try:
        hash(options)
    except TypeError:  # a list of regularizers, an unhashable seed: validate every time
        return _make(*options)
    return _cached(*options)
