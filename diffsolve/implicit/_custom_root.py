"""``custom_root`` / ``custom_fixed_point``: any solver as a differentiable layer.

The user states the optimality condition of the solver's output, ``F(x*, *θ) = 0``; the
implicit function theorem then gives the VJP of ``x*(θ)`` without differentiating the
solver's iterations:

    with A = ∂F/∂x, Bᵢ = ∂F/∂θᵢ at (x*, θ):   solve Aᵀu = x̄ (once),   θ̄ᵢ = −Bᵢᵀu.

One linear solve serves every θᵢ, and it is matrix-free: only VJPs of F are needed (plus
JVPs for ``solve="normal-cg"``). The decorated solver is a
:class:`~diffsolve._autodiff.DifferentiableFunction` registered with
``unwrap_value=True``: it returns the bare array x*, directly, through
:func:`diffsolve.vjp` and through the autograd / torch / JAX adapters.

Reference: Blondel et al., "Efficient and Modular Implicit Differentiation" (NeurIPS
2022) and JAXopt's ``implicit_diff.py`` (``custom_root``, ``root_vjp``), whose interface
this follows; the solver and the differentiation stay decoupled.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, cast

from .. import _backend as B
from .. import _validate as V
from .._autodiff import DifferentiableFunction
from .._result import SolverResult, ValueResult
from .._status import Status, report
from .._tolerance import resolve_rtol
from .._typing import Array
from ._implicit_solve import SOLVES, solve_adjoint
from ._user_vjp import linearize

# the parameters of the solver that custom_root decorates
P = ParamSpec("P")

__all__ = ["ImplicitSolveInfo", "RootSettings", "custom_fixed_point", "custom_root",
           "root_vjp"]

#: the default ``rtol`` of the implicit solve where the dtype allows it (float64);
#: ``rtol=None`` is ``max(RTOL, 64 eps)`` of x's dtype (7.6e-6 in float32: the same Krylov
#: kernels as ``diffsolve.krylov``, whose float32 floor ``diffsolve._tolerance`` records)
RTOL = 1e-10

WHERE = "diffsolve.implicit.custom_root"
SYSTEM = "the implicit system (∂F/∂x)ᵀ u = x̄"
ADVICE = ("for implicit differentiation: add a ridge (e.g. ridge=1e-6) if ∂F/∂x is singular "
          "or ill-conditioned, use solve='gmres' if it is not symmetric positive definite, "
          "or check that the solver really reached F(x, *theta) = 0")


@dataclass(frozen=True)
class RootSettings:
    """The options of one ``custom_root`` decoration (or one ``root_vjp`` call), validated
    once; the backward rule reads them from here.

    Attributes
    ----------
    F, solve, ridge, vjp, jvp, rtol, maxiter, restart, throw, atol
        The arguments of the same names of :func:`diffsolve.implicit.custom_root`, validated (a
        frozen dataclass: read it, do not build it).

    See Also
    --------
    diffsolve.implicit.custom_root : The function whose options these are.

    Examples
    --------
    >>> import dataclasses
    >>> import diffsolve as ds
    >>> "rtol" in {f.name for f in dataclasses.fields(ds.implicit.RootSettings)}
    True
    """

    F: Callable
    solve: str | Callable
    ridge: float
    vjp: Callable | None
    jvp: Callable | None
    rtol: float | None  # None: dtype-aware (_tolerance.default_rtol), set by the solve
    maxiter: int | None
    restart: int
    throw: bool
    atol: float = 0.0

    @property
    def fixed_budget(self) -> bool:
        """``rtol = atol = 0``: run the implicit solve for exactly ``maxiter`` iterations."""
        return self.rtol == 0.0 and self.atol == 0.0


RootConfig = RootSettings  # the name before the solver contract


@dataclass(frozen=True)
class ImplicitSolveInfo(SolverResult):
    """How the implicit linear solve of a backward pass went (``root_vjp(return_info=True)``).

    Attributes
    ----------
    status : Status
        ``SUCCESS``, ``MAX_ITERATIONS`` (``maxiter`` reached above the tolerance; the
        request itself with ``rtol = atol = 0``),
        ``BREAKDOWN`` (CG met non-positive curvature), or ``NONFINITE`` (a NaN/inf
        cotangent, which gives NaN cotangents, or NaN/inf in the iteration).
    converged : bool
        Whether ``||b − M u|| <= max(rtol ||b||, atol)`` for the system solved.
    message : str
        Why it stopped and what to try.
    n_iters : int
        Products with the system's matrix.
    residual_norm : float or None
        ``||b − M u||`` when it was computed (``None`` when converged and not needed).
    method : str
        ``"cg"``, ``"normal-cg"``, ``"gmres"`` or ``"callable"``.

    See Also
    --------
    diffsolve.implicit.root_vjp : Returns it with ``return_info=True``.

    Examples
    --------
    >>> import numpy as np
    >>> from diffsolve.implicit import root_vjp
    >>> F = lambda x, a: x ** 2 - a
    >>> a = np.array([4.0])
    >>> cotangents, info = root_vjp(F, np.sqrt(a), (a,), np.ones(1), return_info=True)
    >>> info.status.name, info.converged
    ('SUCCESS', True)
    """

    status: Status
    converged: bool
    message: str
    n_iters: int
    residual_norm: float | None
    method: str


def _settings(where, F, solve, ridge, vjp, jvp, rtol, maxiter, restart, throw,
              atol) -> RootSettings:
    if not callable(F):
        raise TypeError(f"{where}: the optimality function must be callable F(x, *theta), "
                        f"got {type(F).__name__}")
    if not callable(solve):
        try:
            solve = V.choice(where, "solve", solve, SOLVES)
        except ValueError as err:
            raise ValueError(f"{err}; or pass a callable solve(matvec, b) -> u") from None
    ridge = V.nonnegative_real(where, "ridge", ridge)
    # rtol = atol = 0 is a fixed budget: the implicit solve runs maxiter iterations
    # (default 10 n)
    rtol = V.nonnegative_real(where, "rtol", rtol, allow_none=True)
    atol = V.nonnegative_real(where, "atol", atol)
    maxiter = V.positive_int(where, "maxiter", maxiter, allow_none=True)
    restart = V.positive_int(where, "restart", restart)
    throw = V.boolean(where, "throw", throw)
    for name, value in (("vjp", vjp), ("jvp", jvp)):
        if value is not None and not callable(value):
            raise TypeError(f"{where}: {name} must be a callable (x, theta) -> (F(x, *theta), "
                            f"{name}_fn) or None, got {type(value).__name__}")
    if solve == "normal-cg" and vjp is not None and jvp is None:
        raise ValueError(
            f"{where}: solve='normal-cg' needs products (∂F/∂x) w; with a user vjp= also "
            "pass jvp=(x, theta) -> (F(x, *theta), jvp_fn), or use solve='gmres', which "
            "needs VJPs only"
        )
    return RootSettings(F, solve, ridge, vjp, jvp, rtol, maxiter, restart, throw, atol)


def root_vjp(F: Callable[..., Array], x: Array, theta: tuple[Any, ...], x_bar: Array, *,
             solve: str | Callable[..., Array] = "gmres", ridge: float = 0.0,
             vjp: Callable[..., Any] | None = None, jvp: Callable[..., Any] | None = None,
             rtol: float | None = None, maxiter: int | None = None, restart: int = 30,
             throw: bool = False, return_info: bool = False, atol: float = 0.0,
             ) -> tuple[Array | None, ...] | tuple[tuple[Array | None, ...], ImplicitSolveInfo]:
    """Cotangents of θ for a root ``x`` of ``F(x, *theta) = 0``, given the cotangent of x.

    The building block of :func:`custom_root`, for backward rules written by hand (other
    solver families reuse it): solves ``((∂F/∂x)ᵀ + ridge I) u = x̄`` matrix-free and
    returns ``θ̄ᵢ = −(∂F/∂θᵢ)ᵀ u``.

    Parameters
    ----------
    F : callable
        ``F(x, *theta) -> array`` of x's shape, zero at the root.
    x : array
        The root (float32 or float64; integers are promoted to float64).
    theta : tuple
        The other arguments of ``F``.
    x_bar : array
        Cotangent of ``x`` (x's shape). A NaN or inf in it gives NaN cotangents (for every
        θ that gets one), as :func:`diffsolve.vjp` does.
    solve, ridge, vjp, jvp, rtol, maxiter, restart, throw
        As for :func:`custom_root`.
    return_info : bool
        Also return an :class:`ImplicitSolveInfo`.
    atol : float
        As for :func:`custom_root`: the implicit solve stops at
        ``||r|| <= max(rtol ||x̄||, atol)``; ``rtol = atol = 0`` runs exactly ``maxiter``
        iterations.

    Returns
    -------
    tuple
        One entry per θ: its cotangent, or ``None`` where θ is not differentiated (with
        autograd: anything but a floating NumPy array).
    info : ImplicitSolveInfo
        Only with ``return_info=True``.

    Warns
    -----
    ConvergenceWarning
        The implicit solve stopped above ``max(rtol ||x̄||, atol)`` (``throw=False``);
        with ``throw=True`` the :class:`~diffsolve.SolveError` of its status is raised
        instead.

    See Also
    --------
    diffsolve.implicit.custom_root : Attach this VJP to a solver.
    diffsolve.implicit.ImplicitSolveInfo : What ``return_info=True`` adds.

    Examples
    --------
    >>> import numpy as np
    >>> from diffsolve.implicit import root_vjp
    >>> F = lambda x, a: x ** 2 - a          # root x = sqrt(a), dx/da = 1 / (2 sqrt(a))
    >>> a = np.array([4.0, 9.0])
    >>> root_vjp(F, np.sqrt(a), (a,), np.ones(2))
    (array([0.25      , 0.16666667]),)
    """
    where = "diffsolve.implicit.root_vjp"
    x = V.float_array(where, "x", x)
    x_bar = V.float_array(where, "x_bar", x_bar, finite=False)
    xp = B.array_namespace(x, x_bar, where=where)
    settings = _settings(where, F, solve, ridge, vjp, jvp, rtol, maxiter, restart, throw,
                         atol)
    if tuple(x_bar.shape) != tuple(x.shape):
        raise ValueError(f"{where}: x_bar has shape {tuple(x_bar.shape)} but x has shape "
                         f"{tuple(x.shape)}; pass the cotangent of x")
    if not isinstance(theta, (tuple, list)):
        raise TypeError(f"{where}: theta must be the tuple of F's other arguments, got "
                        f"{type(theta).__name__}; wrap a single one as (theta,)")
    grads, info = _theta_cotangents(settings, x, tuple(theta), x_bar, xp, where)
    report(info, throw=settings.throw, warn=_must_warn(info),
           fixed_budget=settings.fixed_budget)
    return (grads, info) if return_info else grads


def _outcome_status(out) -> Status:
    """The status of an implicit solve, from the Krylov outcome."""
    status = getattr(out, "status", None)
    if status is not None:
        return Status(int(status))
    if out.converged:
        return Status.SUCCESS
    if out.residual_norm is not None and not math.isfinite(out.residual_norm):
        return Status.NONFINITE
    return Status.MAX_ITERATIONS


def _must_warn(info: ImplicitSolveInfo) -> bool:
    """Whether :func:`report` warns for ``info``.

    A NaN cotangent gives NaN cotangents silently, as :func:`diffsolve.vjp` does; every
    other failed implicit solve is reported (``solve_adjoint`` itself never warns).
    """
    return info.method != "nan-cotangent"


def _theta_cotangents(settings: RootSettings, x, theta, x_bar, xp, where):
    """``(θ̄ tuple, ImplicitSolveInfo)`` for the cotangent ``x_bar`` of the root ``x``."""
    if not B.isfinite_all(xp, x_bar):
        # which θ get a cotangent, from a zero cotangent (a trivial solve); then NaN there
        grads, _ = _theta_cotangents(settings, x, theta, xp.zeros_like(x_bar), xp, where)
        info = ImplicitSolveInfo(Status.NONFINITE, False,
                                 f"{where}: the cotangent of x contains NaN or inf, so the "
                                 "cotangents of theta are NaN", 0, None, "nan-cotangent")
        return tuple(None if g is None else xp.full_like(g, float("nan")) for g in grads), info
    lin = linearize(settings.F, x, theta, vjp=settings.vjp, jvp=settings.jvp, where=where)
    rtol = resolve_rtol(xp, x.dtype, settings.rtol, RTOL)
    out = solve_adjoint(lin, x_bar, solve=settings.solve, ridge=settings.ridge,
                        rtol=rtol, atol=settings.atol, maxiter=settings.maxiter,
                        restart=settings.restart, where=where)
    status = _outcome_status(out)
    method = getattr(out, "method", "callable" if callable(settings.solve) else settings.solve)
    res: Any  # a number below, its text in the fixed-budget message
    if status is Status.SUCCESS:
        message = (f"{where}: {SYSTEM} solved with solve={method!r} in {out.n_iters} "
                   "iterations")
    elif status is Status.MAX_ITERATIONS and settings.fixed_budget:
        res = "unknown" if out.residual_norm is None else f"{out.residual_norm:.3g}"
        message = (f"{where}: {SYSTEM}: ran the requested {out.n_iters} iterations of "
                   f"solve={method!r} (rtol = atol = 0, a fixed budget); residual {res}")
    else:
        res, rhs = out.residual_norm, out.rhs_norm
        rel = "unknown" if res is None else f"{res / rhs if rhs else res:.3g}"
        absolute = "" if res is None else f" (absolute {res:.3g})"
        tol = max(rtol * rhs, settings.atol)
        message = (f"{where}: {SYSTEM} was not solved with solve={method!r}: relative "
                   f"residual {rel}{absolute} above max(rtol·||b||, atol) = {tol:.3g} "
                   f"(rtol={rtol:g}, atol={settings.atol:g}) after {out.n_iters} "
                   f"iterations, so the gradient is inexact. {status.hint()}; {ADVICE}")
    info = ImplicitSolveInfo(status, status is Status.SUCCESS, message, int(out.n_iters),
                             out.residual_norm, method)
    grads = lin.rmatvec_theta(out.u)
    return tuple(None if g is None else -g for g in grads), info


def custom_root(F: Callable[..., Array], solve: str | Callable[..., Array] = "gmres",
                ridge: float = 0.0, vjp: Callable[..., Any] | None = None,
                rtol: float | None = None, maxiter: int | None = None, *,
                jvp: Callable[..., Any] | None = None, restart: int = 30, throw: bool = False,
                atol: float = 0.0,
                ) -> Callable[[Callable[P, Array]], DifferentiableFunction[P, Array]]:
    """Decorator: make ``solver(init, *theta) -> x*`` differentiable through ``F(x*, *theta) = 0``.

    The decorated solver runs unchanged and returns x* (an array); its backward rule uses
    the implicit function theorem instead of differentiating the solver's iterations:
    ``((∂F/∂x)ᵀ + ridge I) u = x̄`` is solved once, matrix-free, and
    ``θ̄ᵢ = −(∂F/∂θᵢ)ᵀ u`` for every θᵢ. It works with :func:`diffsolve.vjp` and
    :func:`diffsolve.to_autograd` / :func:`~diffsolve.to_torch` / :func:`~diffsolve.to_jax`.

    Parameters
    ----------
    F : callable
        The optimality condition ``F(x, *theta) -> array`` of x's shape, zero at the
        solution. Written with ``autograd.numpy`` for the default VJPs (NumPy inputs): an
        ``F`` written with plain NumPy (``np.dot``, ``np.array([...])``) hides its
        dependence from autograd and raises :class:`~diffsolve.NotTraceableError` (naming
        it and the ways out) when first differentiated, instead of a wrong gradient; see
        :func:`stationarity`, :func:`projected_gradient_fixed_point`,
        :func:`proximal_gradient_fixed_point` and :func:`kkt_conditions` for ready-made
        ones. Keyword arguments of the solver are not passed to ``F``.
    solve : {"gmres", "cg", "normal-cg"} or callable
        The solver of the implicit system. ``"gmres"`` (default): restarted GMRES, any
        nonsingular ``∂F/∂x``, VJPs only. ``"cg"``: conjugate gradients, for a symmetric
        positive definite ``∂F/∂x`` (``F = ∇f`` at a minimum; fastest; symmetry is probed
        with two extra VJPs and a visibly non-symmetric Jacobian raises ``ValueError``).
        ``"normal-cg"``: CG on the normal equations ``(A Aᵀ + ridge I) u = A x̄``, needs
        JVPs too (autograd gives them; with ``vjp=`` pass ``jvp=``). A callable
        ``solve(matvec, b) -> u`` gets ``matvec(u) = (∂F/∂x)ᵀ u + ridge u`` on arrays of
        x's shape.
    ridge : float
        Tikhonov term added to the system's matrix: regularises a singular or
        ill-conditioned ``∂F/∂x`` (at the price of a slightly biased gradient).
    vjp : callable, optional
        ``vjp(x, theta) -> (F(x, *theta), vjp_fn)`` with ``vjp_fn(u) -> (x̄, θ̄₁, …, θ̄ₖ)``
        (``theta`` is the tuple of the solver's positional arguments after ``init``; the
        shape of ``jax.vjp(F, x, *theta)``). Needed for arrays autograd cannot
        differentiate (CuPy, array_api_strict) and for F written in another framework.
        Default: ``F.vjp`` when ``F`` has one (``stationarity(grad=, hvp=)``), else
        autograd.
    rtol : float, optional
        Default ``1e-10`` in float64 and ``64 eps`` (7.6e-6) in float32 (what float32
        can reach). Relative tolerance of the implicit solve: it stops at the true residual
        ``||r|| <= max(rtol ||b||, atol)`` (``b = x̄``; ``A x̄`` for ``"normal-cg"``).
        ``rtol = atol = 0`` runs exactly ``maxiter`` iterations (a fixed budget: status
        ``MAX_ITERATIONS``, no warning).
    maxiter : int, optional
        Iteration limit of the implicit solve (default ``10 n``, n the size of x). On
        reaching it above the tolerance the (inexact) gradient is returned and a
        :class:`diffsolve.ConvergenceWarning` reports the residual and what to try.
    jvp : callable, optional
        ``jvp(x, theta) -> (F(x, *theta), jvp_fn)``, ``jvp_fn(w) = (∂F/∂x) w`` (the shape
        of ``jax.linearize``); only for ``solve="normal-cg"`` with a user ``vjp``.
    restart : int
        GMRES restart length.
    throw : bool
        Raise the :class:`~diffsolve.SolveError` of the implicit solve's status
        (:class:`~diffsolve.MaxIterationsError`, :class:`~diffsolve.BreakdownError`, ...)
        from the backward pass instead of warning. A NaN or inf cotangent gives NaN
        cotangents without a warning, as everywhere in :func:`diffsolve.vjp`.
    atol : float
        Absolute tolerance of the implicit solve (default 0: ``rtol`` alone decides); see
        ``rtol``. A ``solve`` callable ignores both.

    Returns
    -------
    decorator
        ``custom_root(F, ...)(solver)`` is a differentiable function with the solver's
        signature ``(init, *theta, **kwargs)``. ``init`` must be an array of x*'s shape
        (x* keeps ``init``'s shape, and ``to_jax`` declares ``init``'s dtype); it gets a
        zero cotangent, since x* does not depend on where the solver started. Positional
        arrays after ``init`` are differentiated; keyword arguments go to the solver only
        and are not differentiated.

    See Also
    --------
    diffsolve.implicit.custom_fixed_point : The same for a fixed point ``x = T(x, theta)``.
    diffsolve.implicit.root_vjp : The implicit VJP alone, without a decorator.
    diffsolve.implicit.stationarity : ``F`` for an unconstrained minimiser.
    diffsolve.implicit.kkt_conditions : ``F`` for a constrained minimiser.

    Notes
    -----
    ``F`` is evaluated at the returned x*: if the solver stopped far from
    ``F(x*, θ) = 0`` the gradient is that of a nearby problem. ``F``'s output shape is
    checked when the backward rule first evaluates it.

    Examples
    --------
    Ridge regression solved by any means, differentiated with respect to the penalty:

    >>> import numpy as np, autograd.numpy as anp
    >>> import diffsolve as ds
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.standard_normal((20, 3)), rng.standard_normal(20)
    >>> def F(w, lam):                       # gradient of 0.5||Xw - y||² + 0.5 lam ||w||²
    ...     return X.T @ (X @ w - y) + lam * w
    >>> @ds.implicit.custom_root(F, solve="cg")
    ... def ridge(init, lam):
    ...     return np.linalg.solve(X.T @ X + lam * np.eye(3), X.T @ y)
    >>> lam = np.array(2.0)
    >>> w, f_vjp = ds.vjp(ridge, np.zeros(3), lam)
    >>> _, lam_bar = f_vjp(np.ones(3))       # d sum(w) / d lam
    >>> H = X.T @ X + lam * np.eye(3)
    >>> bool(np.isclose(lam_bar, -np.ones(3) @ np.linalg.solve(H, w)))
    True
    """
    if vjp is None:  # stationarity(grad=..., hvp=...) carries its own VJP
        vjp = getattr(F, "vjp", None)
    settings = _settings(WHERE, F, solve, ridge, vjp, jvp, rtol, maxiter, restart, throw,
                         atol)

    def decorate(solver: Callable[P, Array]) -> DifferentiableFunction[P, Array]:
        if not callable(solver):
            raise TypeError(f"{WHERE}: decorate a solver function solver(init, *theta), got "
                            f"{type(solver).__name__}")
        return _make_differentiable(solver, settings, WHERE)

    return decorate


def _make_differentiable(solver: Callable[P, Array], settings: RootSettings,
                         where: str) -> DifferentiableFunction[P, Array]:
    name = getattr(solver, "__name__", type(solver).__name__)
    public = f"{where}({name})"

    def fwd(init, *theta, **kwargs):
        if not B.is_array(init):
            raise TypeError(f"{public}: init must be an array of the solution's shape, got "
                            f"{type(init).__name__}")
        x = solver(init, *theta, **kwargs)
        if not B.is_array(x) or tuple(x.shape) != tuple(init.shape):
            got = tuple(x.shape) if B.is_array(x) else type(x).__name__
            raise ValueError(
                f"{public}: the solver returned {got}, but init has shape "
                f"{tuple(init.shape)}; the solver must return x* as an array of init's shape "
                "(return auxiliary outputs from a separate function)"
            )
        B.array_namespace(init, x, where=public)  # same library in and out
        return ValueResult(value=x), None

    def bwd(ctx, cotangents):
        init, *theta = ctx.args
        x = ctx.result.value
        xp = B.array_namespace(x, where=public)
        grads, info = _theta_cotangents(settings, x, tuple(theta), cotangents["value"], xp,
                                        public)
        report(info, throw=settings.throw, warn=_must_warn(info),
               fixed_budget=settings.fixed_budget)
        return (xp.zeros_like(init), *grads)

    def shapes(init, *theta, **kwargs):
        # x* has init's shape; only shapes and dtypes are read (init may be a JAX tracer)
        return {"value": (tuple(init.shape), init.dtype)}

    fn = DifferentiableFunction(fwd, bwd, shapes, ValueResult, unwrap_value=True,
                                public_name=public)
    functools.update_wrapper(fn, solver, updated=())
    # attributes of custom_root solvers only, read by tests and by users inspecting a solver
    fn.settings = fn.config = settings  # type: ignore[attr-defined]
    # the wrapper forwards (init, *theta, **kwargs), exactly the solver's own parameters
    return cast("DifferentiableFunction[P, Array]", fn)


def custom_fixed_point(T: Callable[..., Array], solve: str | Callable[..., Array] = "gmres",
                       ridge: float = 0.0, vjp: Callable[..., Any] | None = None,
                       rtol: float | None = None, maxiter: int | None = None, *,
                       jvp: Callable[..., Any] | None = None, restart: int = 30,
                       throw: bool = False, atol: float = 0.0,
                       ) -> Callable[[Callable[P, Array]], DifferentiableFunction[P, Array]]:
    """Decorator: make ``solver(init, *theta) -> x*`` differentiable through ``x* = T(x*, *theta)``.

    :func:`custom_root` with ``F(x, *θ) = x − T(x, *θ)``. The sign makes ``∂F/∂x = I − ∂T/∂x``
    positive definite for a contraction with a symmetric Jacobian (a gradient step
    ``T = x − η∇f``), so ``solve="cg"`` applies there; ``"gmres"`` (default) needs nothing.

    Parameters
    ----------
    T : callable
        The fixed-point map ``T(x, *theta) -> array`` of x's shape.
    solve, ridge, rtol, maxiter, jvp, restart, throw, atol
        As for :func:`custom_root` (the implicit solve stops at
        ``||r|| <= max(rtol ||x̄||, atol)``; ``rtol = atol = 0`` is a fixed budget of
        ``maxiter`` iterations).
    vjp : callable, optional
        ``vjp(x, theta) -> (T(x, *theta), vjp_fn)``, the VJP of **T** (not of F), with
        ``vjp_fn(u) -> (x̄, θ̄₁, …)``; likewise ``jvp`` is the JVP of T.

    Returns
    -------
    decorator

    See Also
    --------
    diffsolve.implicit.custom_root : The same for a root ``F(x, theta) = 0``.
    diffsolve.implicit.proximal_gradient_fixed_point : ``T`` of proximal gradient.
    diffsolve.implicit.projected_gradient_fixed_point : ``T`` of projected gradient.

    Examples
    --------
    >>> import numpy as np
    >>> import diffsolve as ds
    >>> T = lambda x, a: 0.5 * x + a                 # fixed point x* = 2a
    >>> @ds.implicit.custom_fixed_point(T)
    ... def iterate(init, a):
    ...     x = init
    ...     for _ in range(100):
    ...         x = T(x, a)
    ...     return x
    >>> x, f_vjp = ds.vjp(iterate, np.zeros(2), np.array([1.0, 3.0]))
    >>> x, f_vjp(np.ones(2))[1]
    (array([2., 6.]), array([2., 2.]))
    """
    where = "diffsolve.implicit.custom_fixed_point"
    if not callable(T):
        raise TypeError(f"{where}: the fixed-point map must be callable T(x, *theta), got "
                        f"{type(T).__name__}")

    def F(x, *theta):
        return x - T(x, *theta)

    F.__name__ = getattr(T, "__name__", "T")  # errors about tracing F name the user's T
    F_vjp: Callable[..., Any] | None
    F_jvp: Callable[..., Any] | None
    F_vjp = F_jvp = None
    if vjp is not None and callable(vjp):
        def F_vjp(x, theta):
            value, t_vjp = vjp(x, theta)

            def vjp_fn(u):
                x_bar, *theta_bars = t_vjp(u)
                return (u - x_bar, *(None if g is None else -g for g in theta_bars))

            return x - value, vjp_fn
    else:
        F_vjp = vjp
    if jvp is not None and callable(jvp):
        def F_jvp(x, theta):
            value, t_jvp = jvp(x, theta)
            return x - value, lambda w: w - t_jvp(w)
    else:
        F_jvp = jvp
    settings = _settings(where, F, solve, ridge, F_vjp, F_jvp, rtol, maxiter, restart, throw,
                         atol)

    def decorate(solver: Callable[P, Array]) -> DifferentiableFunction[P, Array]:
        if not callable(solver):
            raise TypeError(f"{where}: decorate a solver function solver(init, *theta), got "
                            f"{type(solver).__name__}")
        return _make_differentiable(solver, settings, where)

    return decorate
