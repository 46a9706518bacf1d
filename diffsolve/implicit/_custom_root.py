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
import numbers
from collections.abc import Callable
from dataclasses import dataclass

from .. import _backend as B
from .._autodiff import DifferentiableFunction
from .._result import ValueResult
from ._implicit_solve import SOLVES, solve_adjoint
from ._user_vjp import linearize

__all__ = ["custom_fixed_point", "custom_root", "root_vjp"]

WHERE = "diffsolve.implicit.custom_root"


@dataclass(frozen=True)
class RootConfig:
    """The immutable configuration of one ``custom_root`` decoration."""

    F: Callable
    solve: str | Callable
    ridge: float
    vjp: Callable | None
    jvp: Callable | None
    rtol: float
    maxiter: int | None
    restart: int


def _check_config(where, F, solve, ridge, vjp, jvp, rtol, maxiter, restart) -> RootConfig:
    if not callable(F):
        raise TypeError(f"{where}: the optimality function must be callable F(x, *theta), "
                        f"got {type(F).__name__}")
    if not (callable(solve) or solve in SOLVES):
        raise ValueError(f"{where}: solve={solve!r} is not known; choose one of {list(SOLVES)} "
                         "or pass a callable solve(matvec, b) -> u")
    for name, value in (("ridge", ridge), ("rtol", rtol)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
                not math.isfinite(value) or value < 0:
            raise ValueError(f"{where}: {name} must be a finite number >= 0, got {value!r}")
    if rtol == 0:
        raise ValueError(f"{where}: rtol=0 could never be met by an iterative solve; "
                         "use e.g. rtol=1e-10")
    for name, value in (("maxiter", maxiter), ("restart", restart)):
        if value is not None and (isinstance(value, bool) or
                                  not isinstance(value, numbers.Integral) or value < 1):
            raise ValueError(f"{where}: {name} must be a positive integer"
                             f"{' or None' if name == 'maxiter' else ''}, got {value!r}")
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
    return RootConfig(F, solve, float(ridge), vjp, jvp, float(rtol), maxiter, int(restart))


def root_vjp(F: Callable, x, theta: tuple, x_bar, *, solve="gmres", ridge=0.0, vjp=None,
             jvp=None, rtol=1e-10, maxiter=None, restart=30):
    """Cotangents of θ for a root ``x`` of ``F(x, *theta) = 0``, given the cotangent of x.

    The building block of :func:`custom_root`, for backward rules written by hand (other
    solver families reuse it): solves ``((∂F/∂x)ᵀ + ridge I) u = x̄`` matrix-free and
    returns ``θ̄ᵢ = −(∂F/∂θᵢ)ᵀ u``.

    Parameters
    ----------
    F : callable
        ``F(x, *theta) -> array`` of x's shape, zero at the root.
    x : array
        The root.
    theta : tuple
        The other arguments of ``F``.
    x_bar : array
        Cotangent of ``x`` (x's shape).
    solve, ridge, vjp, jvp, rtol, maxiter, restart
        As for :func:`custom_root`.

    Returns
    -------
    tuple
        One entry per θ: its cotangent, or ``None`` where θ is not differentiated (with
        autograd: anything but a floating NumPy array).

    Examples
    --------
    >>> import numpy as np
    >>> from diffsolve.implicit import root_vjp
    >>> F = lambda x, a: x ** 2 - a          # root x = sqrt(a), dx/da = 1 / (2 sqrt(a))
    >>> a = np.array([4.0, 9.0])
    >>> root_vjp(F, np.sqrt(a), (a,), np.ones(2))
    (array([0.25      , 0.16666667]),)
    """
    xp = B.array_namespace(x, x_bar, where="diffsolve.implicit.root_vjp")
    where = "diffsolve.implicit.root_vjp"
    cfg = _check_config(where, F, solve, ridge, vjp, jvp, rtol, maxiter, restart)
    if tuple(x_bar.shape) != tuple(x.shape):
        raise ValueError(f"{where}: x_bar has shape {tuple(x_bar.shape)} but x has shape "
                         f"{tuple(x.shape)}; pass the cotangent of x")
    return _theta_cotangents(cfg, x, tuple(theta), x_bar, xp, where)


def _theta_cotangents(cfg: RootConfig, x, theta, x_bar, xp, where):
    lin = linearize(cfg.F, x, theta, vjp=cfg.vjp, jvp=cfg.jvp, where=where)
    out = solve_adjoint(lin, x_bar, solve=cfg.solve, ridge=cfg.ridge, rtol=cfg.rtol,
                        maxiter=cfg.maxiter, restart=cfg.restart, where=where)
    grads = lin.rmatvec_theta(out.u)
    return tuple(None if g is None else -g for g in grads)


def custom_root(F: Callable, solve="gmres", ridge=0.0, vjp=None, rtol=1e-10, maxiter=None,
                *, jvp=None, restart=30):
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
        solution. Written with ``autograd.numpy`` for the default VJPs (NumPy inputs); see
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
    rtol : float
        The implicit solve stops at ``||r|| <= rtol ||x̄||``.
    maxiter : int, optional
        Iteration limit of the implicit solve (default ``10 n``, n the size of x). On
        reaching it the gradient is returned and a :class:`diffsolve.ConvergenceWarning`
        reports the residual and what to try.
    jvp : callable, optional
        ``jvp(x, theta) -> (F(x, *theta), jvp_fn)``, ``jvp_fn(w) = (∂F/∂x) w`` (the shape
        of ``jax.linearize``); only for ``solve="normal-cg"`` with a user ``vjp``.
    restart : int
        GMRES restart length.

    Returns
    -------
    decorator
        ``custom_root(F, ...)(solver)`` is a differentiable function with the solver's
        signature ``(init, *theta, **kwargs)``. ``init`` must be an array of x*'s shape
        (x* keeps ``init``'s shape, and ``to_jax`` declares ``init``'s dtype); it gets a
        zero cotangent, since x* does not depend on where the solver started. Positional
        arrays after ``init`` are differentiated; keyword arguments go to the solver only
        and are not differentiated.

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
    cfg = _check_config(WHERE, F, solve, ridge, vjp, jvp, rtol, maxiter, restart)

    def decorate(solver: Callable) -> DifferentiableFunction:
        if not callable(solver):
            raise TypeError(f"{WHERE}: decorate a solver function solver(init, *theta), got "
                            f"{type(solver).__name__}")
        return _make_differentiable(solver, cfg, WHERE)

    return decorate


def _make_differentiable(solver, cfg: RootConfig, where: str) -> DifferentiableFunction:
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
        grads = _theta_cotangents(cfg, x, tuple(theta), cotangents["value"], xp, public)
        return (xp.zeros_like(init), *grads)

    def shapes(init, *theta, **kwargs):
        # x* has init's shape; only shapes and dtypes are read (init may be a JAX tracer)
        return {"value": (tuple(init.shape), init.dtype)}

    fn = DifferentiableFunction(fwd, bwd, shapes, ValueResult, unwrap_value=True,
                                public_name=public)
    functools.update_wrapper(fn, solver, updated=())
    fn.config = cfg
    return fn


def custom_fixed_point(T: Callable, solve="gmres", ridge=0.0, vjp=None, rtol=1e-10,
                       maxiter=None, *, jvp=None, restart=30):
    """Decorator: make ``solver(init, *theta) -> x*`` differentiable through ``x* = T(x*, *theta)``.

    :func:`custom_root` with ``F(x, *θ) = x − T(x, *θ)``. The sign makes ``∂F/∂x = I − ∂T/∂x``
    positive definite for a contraction with a symmetric Jacobian (a gradient step
    ``T = x − η∇f``), so ``solve="cg"`` applies there; ``"gmres"`` (default) needs nothing.

    Parameters
    ----------
    T : callable
        The fixed-point map ``T(x, *theta) -> array`` of x's shape.
    solve, ridge, rtol, maxiter, jvp, restart
        As for :func:`custom_root`.
    vjp : callable, optional
        ``vjp(x, theta) -> (T(x, *theta), vjp_fn)``, the VJP of **T** (not of F), with
        ``vjp_fn(u) -> (x̄, θ̄₁, …)``; likewise ``jvp`` is the JVP of T.

    Returns
    -------
    decorator

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
    cfg = _check_config(where, F, solve, ridge, F_vjp, F_jvp, rtol, maxiter, restart)

    def decorate(solver: Callable) -> DifferentiableFunction:
        if not callable(solver):
            raise TypeError(f"{where}: decorate a solver function solver(init, *theta), got "
                            f"{type(solver).__name__}")
        return _make_differentiable(solver, cfg, where)

    return decorate
