"""``hypergradient``: the gradient of x ↦ outer(x, y*(x)), y*(x) = argmin_y inner(x, y).

With ``f = outer``, ``g = inner`` and ``y ≈ y*(x)``:

    ∇Φ(x) = ∇ₓf − ∇²ₓᵧg · v,   where   ∇²ᵧᵧg · v = ∇ᵧf.

* ``"implicit-cg"`` (AID): ``v`` by conjugate gradients on Hessian-vector products
  (``∇²ᵧᵧg`` is symmetric, positive definite at a strict minimum); the CG of
  :mod:`diffsolve.linear` through :func:`diffsolve.implicit._implicit_solve.cg_solve`.
* ``"neumann"``: ``v ≈ α Σ_{k=0..K} (I − α∇²ᵧᵧg)^k ∇ᵧf``, K Hessian-vector products, for
  ``0 < α < 2/L`` (L the largest eigenvalue of ``∇²ᵧᵧg``); converges like gradient
  descent (``(1 − αμ)^K``) where CG converges like ``(1 − 2/√κ)^K``.
* ``"unrolled"`` (ITD): T gradient-descent steps ``y ← y − α∇ᵧg(x, y)`` from the given
  ``y``, differentiated by autograd; the tape, hence memory, grows linearly with T.

Hessian-vector products come from HIPS autograd, so ``outer`` and ``inner`` are written
with ``autograd.numpy`` and take NumPy arrays. ``"reverse-over-reverse"`` (default) traces
``∇ᵧg`` once and gets every product ``∇²ᵧᵧg·v`` as one backward pass over that trace (the
Hessian is symmetric, so its VJP is its product); ``"forward-over-reverse"`` pushes a
tangent through ``∇ᵧg`` with autograd's forward mode on every product (no stored trace,
more arithmetic). The mixed term ``∇²ₓᵧg · v`` is one reverse pass through ``∇ᵧg`` with
respect to x.

With JAX arrays (objectives, and any hand-written derivatives, written with
``jax.numpy``), implicit-cg runs as one ``jax.jit``-compiled function: both gradients,
``∇ᵧg`` linearised once, the CG loop (the same steps as :func:`diffsolve.krylov.cg`) and
the mixed product; hand-written derivatives are traced into it like the objectives (so a
Python side effect in them runs once, at the trace). It is compiled once per set of
function objects and reused by later calls with new values, shapes already seen and other
options (a new closure, or a global the functions read rebound, compiles again, and so does a
NumPy array they read that was mutated in place: its content is part of the cache key,
unlike with ``jax.jit`` alone). Whatever that loop does not finish cleanly (CG breakdown, a
restart from the true residual, NaN) is redone by the generic path, which reports it.

Failure follows the solver contract: the result (``return_info=True``) has ``status``,
``converged``, ``message`` and ``n_iters``; a hypergradient whose linear system was not
solved to ``max(rtol ||∇ᵧf||, atol)`` warns with a
:class:`~diffsolve.ConvergenceWarning` (``throw=True``: raises the
:class:`~diffsolve.SolveError` of its status). A NaN or inf in the outer
objective's gradient (the right-hand side, the "cotangent" of the Hessian system) gives a
NaN hypergradient, as a NaN cotangent does in :func:`diffsolve.vjp`.

Reference: Ji, Yang & Liang, "Bilevel Optimization: Convergence Analysis and Enhanced
Design" (ICML 2021) for AID-CG / Neumann / ITD; Lorraine, Vicol & Duvenaud, "Optimizing
Millions of Hyperparameters by Implicit Differentiation" (AISTATS 2020) for the Neumann
approximation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import autograd
from autograd import make_jvp

from .. import _backend as B
from .. import _validate as V
from .._result import SolverResult
from .._status import Status, report
from .._tolerance import resolve_rtol
from .._typing import Array
from ..implicit._implicit_solve import _probe, cg_solve
from ._derivatives import (
    WAYS_OUT,
    Oracle,
    autodiff_backend,
    cached_jit,
    check_array,
    check_callables,
    check_scalar,
    first_call,
    same_library,
)

__all__ = ["HypergradientInfo", "HypergradientSettings", "hypergradient",
           "implicit_hypergradient"]

#: the default ``rtol`` where y's dtype allows it (float64); ``rtol=None`` is
#: ``max(RTOL, 64 eps)`` (7.6e-6 in float32: the Hessian system is solved by the CG of
#: ``diffsolve.krylov``, whose float32 floor ``diffsolve._tolerance`` records)
RTOL = 1e-10

WHERE = "diffsolve.bilevel.hypergradient"
METHODS = ("implicit-cg", "neumann", "unrolled")
HVP_MODES = ("reverse-over-reverse", "forward-over-reverse")
DEFAULT_TERMS = 100  # neumann's K and unrolled's T when maxiter is None
# unrolled steps growing this much over the first one are diverging: stop before overflow
DIVERGENCE_FACTOR = 1e12
POWER_ITERATIONS = 20
RENAMED = {"n_steps": "maxiter"}


@dataclass(frozen=True)
class HypergradientSettings:
    """The options of one :func:`hypergradient` call, validated once.

    Attributes
    ----------
    method, maxiter, rtol, stepsize, ridge, hvp, return_info, throw, atol
        The arguments of the same names of :func:`diffsolve.bilevel.hypergradient`, validated (a
        frozen dataclass: read it, do not build it).

    See Also
    --------
    diffsolve.bilevel.hypergradient : The function whose options these are.

    Examples
    --------
    >>> import dataclasses
    >>> import diffsolve as ds
    >>> "rtol" in {f.name for f in dataclasses.fields(ds.bilevel.HypergradientSettings)}
    True
    """

    method: str
    maxiter: int | None
    rtol: float
    stepsize: float | None
    ridge: float
    hvp: str
    return_info: bool
    throw: bool
    atol: float = 0.0

    @property
    def fixed_budget(self) -> bool:
        """``rtol = atol = 0``: run exactly ``maxiter`` iterations (series terms, CG steps)."""
        return self.rtol == 0.0 and self.atol == 0.0


@dataclass(frozen=True)
class HypergradientInfo(SolverResult):
    """Diagnostics of :func:`hypergradient` (``return_info=True``).

    Attributes
    ----------
    method : str
    n_iters : int
        Hessian-vector products spent on the linear system (implicit-cg: CG iterations;
        neumann: series terms) or unrolled steps T.
    converged : bool
        implicit-cg and neumann: whether ``residual_norm <= max(rtol ||∇ᵧf||, atol)``;
        unrolled:
        ``True`` (the gradient of the T unrolled steps is exact; ``inner_grad_norm`` says
        how far they got).
    residual_norm : float or None
        ``||(∇²ᵧᵧg + ridge I) v − ∇ᵧf||`` at the returned ``v`` (``None`` for unrolled and
        where it was not computed).
    inner_grad_norm : float
        ``||∇ᵧ inner||`` at the given ``y`` (at the last unrolled iterate for unrolled): how
        far ``y`` is from ``y*(x)``; the hypergradient is only as accurate as ``y``.
    stepsize : float or None
        α used by neumann and unrolled (given, or 1 / (1.05 L̂) with L̂ from
        power iteration); ``None`` for implicit-cg.
    v : array or None
        The solution of the Hessian system (implicit-cg, neumann).
    status : Status
        ``SUCCESS``; ``MAX_ITERATIONS`` (``maxiter`` spent above the tolerance; the
        request itself with ``rtol = atol = 0``); ``DIVERGED`` (the Neumann terms grew:
        ``stepsize`` too large); ``BREAKDOWN`` (CG met non-positive curvature);
        ``NONFINITE`` (NaN or inf in the outer gradient: the hypergradient is NaN).
    message : str
        Why it stopped, and what to try.

    See Also
    --------
    diffsolve.bilevel.hypergradient : Returns it with ``return_info=True``.

    Examples
    --------
    >>> import numpy as np, autograd.numpy as anp
    >>> import diffsolve as ds
    >>> inner = lambda x, y: 0.5 * anp.sum((y - x) ** 2)
    >>> outer = lambda x, y: 0.5 * anp.sum((y - 1.0) ** 2) + 0.5 * anp.sum(x ** 2)
    >>> g, info = ds.bilevel.hypergradient(outer, inner, np.array([0.5]), np.array([0.5]),
    ...                                    return_info=True)
    >>> info.method, info.converged
    ('implicit-cg', True)
    """

    method: str
    n_iters: int
    converged: bool
    residual_norm: float | None
    inner_grad_norm: float
    stepsize: float | None
    v: Any = None
    status: Status = Status.SUCCESS
    message: str = ""


def _settings(method, maxiter, rtol, stepsize, ridge, hvp, return_info, throw, atol, *, xp,
              dtype):
    """The validated :class:`HypergradientSettings`, remembered per argument tuple (a
    hypergradient inside a training loop repeats the same options on every call)."""
    # typed: 1 and True, 1.0 and np.float64(1.0) are validated apart
    key = tuple((type(k), k) for k in (method, maxiter, rtol, stepsize, ridge, hvp,
                                       return_info, throw, atol, xp, dtype))
    try:
        hit = _SETTINGS.get(key)
    except TypeError:  # an unhashable argument: validation will say what is wrong with it
        return _validated_settings(method, maxiter, rtol, stepsize, ridge, hvp, return_info,
                                   throw, atol, xp=xp, dtype=dtype)
    if hit is None:
        hit = _validated_settings(method, maxiter, rtol, stepsize, ridge, hvp, return_info,
                                  throw, atol, xp=xp, dtype=dtype)
        if len(_SETTINGS) >= 256:
            _SETTINGS.clear()
        _SETTINGS[key] = hit
    return hit


_SETTINGS: dict = {}


def _validated_settings(method, maxiter, rtol, stepsize, ridge, hvp, return_info, throw, atol,
                        *, xp, dtype):
    method = V.choice(WHERE, "method", method, METHODS)
    # rtol = atol = 0 is a fixed budget: exactly maxiter CG iterations / series terms
    rtol, atol = V.tolerances(WHERE, resolve_rtol(xp, dtype, rtol, RTOL), atol)
    return HypergradientSettings(
        method=method,
        maxiter=V.positive_int(WHERE, "maxiter", maxiter, allow_none=True),
        rtol=rtol,
        stepsize=V.positive_real(WHERE, "stepsize", stepsize, allow_none=True),
        ridge=V.nonnegative_real(WHERE, "ridge", ridge),
        hvp=V.choice(WHERE, "hvp", hvp, HVP_MODES),
        return_info=V.boolean(WHERE, "return_info", return_info),
        throw=V.boolean(WHERE, "throw", throw),
        atol=atol,
    )


def hypergradient(outer: Callable[..., Any], inner: Callable[..., Any], x: Array, y: Array,
                  method: str = "implicit-cg", *,
                  maxiter: int | None = None, rtol: float | None = None,
                  stepsize: float | None = None, ridge: float = 0.0,
                  hvp: str = "reverse-over-reverse", return_info: bool = False,
                  throw: bool = False, outer_grad: Callable | None = None,
                  inner_grad: Callable | None = None, inner_hvp: Callable | None = None,
                  atol: float = 0.0, **deprecated: Any,
                  ) -> Array | tuple[Array, HypergradientInfo]:
    """The hypergradient ``∇ₓ outer(x, y*(x))`` with ``y*(x) = argmin_y inner(x, y)``.

    Parameters
    ----------
    outer, inner : callable
        ``outer(x, y) -> scalar`` and ``inner(x, y) -> scalar`` in the library of x and y:
        ``autograd.numpy`` for NumPy arrays, torch for torch tensors, ``jax.numpy`` for
        JAX arrays (their derivatives then come from that autodiff system), or any
        array-API library together with ``outer_grad`` and ``inner_hvp``. ``inner`` must
        be twice differentiable and, for implicit-cg, strongly convex in y near ``y``.
    x : array
        The upper-level variable (any shape, floating).
    y : array
        An (approximate) inner solution ``y ≈ y*(x)`` for implicit-cg and neumann (the
        hypergradient is exact only at ``y*``); the starting point of the unrolled steps
        for unrolled. x and y follow diffsolve's array policy (float32 or float64 kept,
        integers promoted to float64; float16, complex, lists, size 0 and NaN/inf refused).
    method : {"implicit-cg", "neumann", "unrolled"}
        See the module docstring. In short: implicit-cg is the accurate and cheap choice
        when the inner problem is solved well and strongly convex; neumann needs only
        ``α`` and a budget (no inner products, robust to a slightly indefinite Hessian at
        an approximate y, but slow on ill-conditioned problems); unrolled differentiates
        what the inner optimiser actually did (it needs no ``y ≈ y*`` and suits short,
        warm-started inner loops) at a memory cost growing with T (NumPy / autograd only).
    maxiter : int, optional
        implicit-cg: CG iteration limit (default ``10 n``, n the size of y); neumann: the
        largest number K of series terms, one Hessian-vector product each (default 100);
        unrolled: the number T of inner gradient steps (default 100). Replaces
        ``n_steps`` (deprecated).
    rtol : float, optional
        Default ``1e-10`` in float64 and ``64 eps`` (7.6e-6) in float32, where rounding
        keeps the residual above ``1e-10`` (y's dtype). implicit-cg and neumann stop at
        ``||residual|| <= max(rtol ||∇ᵧf||, atol)`` (the residual of the Neumann partial
        sum is exact and free: it is the next term), and
        warn when ``maxiter`` runs out first. ``rtol = atol = 0`` runs exactly ``maxiter``
        iterations (a fixed budget: status ``MAX_ITERATIONS``, no warning). Not used by
        unrolled.
    stepsize : float, optional
        α of neumann and of the unrolled gradient steps; must be in ``(0, 2/L)``. Default:
        ``1 / (1.05 L̂)`` with L̂ from 20 power iterations on ``∇²ᵧᵧg(x, y)``.
    ridge : float
        implicit-cg and neumann: solve ``(∇²ᵧᵧg + ridge I) v = ∇ᵧf`` (regularises a
        singular or indefinite Hessian).
    hvp : {"reverse-over-reverse", "forward-over-reverse"}
        How autograd computes Hessian-vector products (NumPy inputs without
        ``inner_hvp``; see the module docstring).
    return_info : bool
        Also return a :class:`HypergradientInfo`.
    throw : bool
        Raise the :class:`~diffsolve.SolveError` of the status
        (:class:`~diffsolve.MaxIterationsError`, :class:`~diffsolve.DivergedError`, ...)
        instead of warning.
    outer_grad : callable, optional
        ``outer_grad(x, y) -> (∇ₓ outer, ∇ᵧ outer)``, in x's library.
    inner_grad : callable, optional
        ``inner_grad(x, y) -> (∇ₓ inner, ∇ᵧ inner)`` (only ``∇ᵧ`` is used, for
        ``info.inner_grad_norm``).
    inner_hvp : callable, optional
        ``inner_hvp(x, y, v) -> (∇²ₓᵧ inner · v, ∇²ᵧᵧ inner · v)``: the VJP of
        ``(x, y) ↦ ∇ᵧ inner(x, y)`` at ``v`` (``∂ₓ⟨∇ᵧg, v⟩`` and, the Hessian being
        symmetric, ``∇²ᵧᵧg·v``). With ``outer_grad`` this is all implicit-cg and neumann
        need, in any array-API library (CuPy, array_api_strict): the computation then
        stays in x's namespace and on its device. Not used by unrolled.
    atol : float
        Absolute tolerance of implicit-cg and neumann (default 0: ``rtol`` alone decides);
        see ``rtol``.
    **deprecated
        The option names used before the solver contract still work with a
        ``DeprecationWarning`` (each option above names its old name); any other keyword
        raises ``TypeError``.

    Returns
    -------
    grad : array
        x's shape, namespace and dtype.
    info : HypergradientInfo
        Only with ``return_info=True``.

    Raises
    ------
    NotTraceableError
        ``outer`` or ``inner`` is written with plain NumPy calls that hide its dependence
        on x or y from autograd (``np.array([...])``, ``float(...)``): write it with
        ``autograd.numpy``, or pass the derivatives.

    Warns
    -----
    ConvergenceWarning
        implicit-cg or neumann did not reach ``max(rtol ||∇ᵧf||, atol)`` within
        ``maxiter``; the Neumann
        terms grew (``stepsize`` too large for ``∇²ᵧᵧg``); CG met non-positive curvature.

    See Also
    --------
    diffsolve.bilevel.solve : Optimise the upper level with these hypergradients.
    diffsolve.implicit.custom_root : Implicit differentiation of any solver.
    diffsolve.bilevel.HypergradientInfo : What ``return_info=True`` adds.

    Examples
    --------
    Ridge regression, ``y*(x) = (AᵀA + x I)⁻¹Aᵀb``, validation loss ``½||y − c||²``:

    >>> import numpy as np, autograd.numpy as anp
    >>> import diffsolve as ds
    >>> rng = np.random.default_rng(0)
    >>> A, b, c = rng.standard_normal((10, 3)), rng.standard_normal(10), rng.standard_normal(3)
    >>> inner = lambda x, y: 0.5 * anp.sum((A @ y - b) ** 2) + 0.5 * x[0] * anp.sum(y ** 2)
    >>> outer = lambda x, y: 0.5 * anp.sum((y - c) ** 2)
    >>> x = np.array([0.5])
    >>> H = A.T @ A + x[0] * np.eye(3)
    >>> y = np.linalg.solve(H, A.T @ b)
    >>> g = ds.bilevel.hypergradient(outer, inner, x, y)
    >>> bool(np.allclose(g, -(y - c) @ np.linalg.solve(H, y)))
    True

    The same with hand-written derivatives, which any array library can run:

    >>> g2 = ds.bilevel.hypergradient(
    ...     outer, inner, x, y, outer_grad=lambda x, y: (np.zeros(1), y - c),
    ...     inner_hvp=lambda x, y, v: (np.reshape(y @ v, (1,)), A.T @ (A @ v) + x[0] * v))
    >>> bool(np.allclose(g2, g))
    True
    """
    kw = V.renamed_options(WHERE, deprecated, RENAMED)
    if "maxiter" in kw:
        if maxiter is not None:
            raise TypeError(f"{WHERE}: got both n_steps= (deprecated) and maxiter=; pass "
                            "only maxiter=")
        maxiter = kw.pop("maxiter")
    V.unexpected_options(WHERE, kw, ("maxiter", "rtol", "atol", "stepsize", "ridge", "hvp",
                                     "return_info", "throw", "outer_grad", "inner_grad",
                                     "inner_hvp"))
    # finiteness is checked below: inside the compiled function on the JAX fast path (an
    # eager check of a JAX array is a dispatch and a host sync each), eagerly otherwise
    x = check_array(WHERE, "x", x, finite=False)
    y = check_array(WHERE, "y", y, finite=False)
    xp = same_library(WHERE, x=x, y=y)
    for name, fn in (("outer", outer), ("inner", inner)):
        if not callable(fn):
            raise TypeError(f"{WHERE}: {name} must be a callable {name}(x, y) -> scalar, got "
                            f"{type(fn).__name__}")
    check_callables(WHERE, outer_grad=outer_grad, inner_grad=inner_grad, inner_hvp=inner_hvp)
    dtype = y.dtype if xp.isdtype(y.dtype, "real floating") else xp.float64
    st = _settings(method, maxiter, rtol, stepsize, ridge, hvp, return_info, throw, atol,
                   xp=xp, dtype=dtype)
    fast_path = st.method == "implicit-cg" and _JAX_FAST_PATH and autodiff_backend(xp) == "jax"
    if not fast_path:
        check_array(WHERE, "x", x)
        check_array(WHERE, "y", y)
    if st.method == "unrolled" and not B.is_numpy(xp):
        raise TypeError(
            f"{WHERE}: method='unrolled' differentiates the inner gradient steps with HIPS "
            f"autograd, which needs NumPy arrays, but x and y are {xp.__name__} arrays; use "
            "method='implicit-cg' or 'neumann' (with outer_grad= and inner_hvp= where your "
            "library has no autodiff)"
        )
    if fast_path:
        fast = _jax_implicit_cg((outer, inner, outer_grad, inner_grad, inner_hvp), x, y, st)
        if fast is not None:
            report(fast[1], throw=st.throw, fixed_budget=st.fixed_budget)
            return fast if st.return_info else fast[0]
        check_array(WHERE, "x", x)  # NaN or inf in x or y: the error of every other path
        check_array(WHERE, "y", y)
    oracle = Oracle(outer, inner, None, xp, outer_grad=outer_grad, inner_grad=inner_grad,
                    inner_hvp=inner_hvp, needs=("outer_grad", "inner_hvp"), where=WHERE,
                    what=f"method={st.method!r}")
    first_call(WHERE, inner, "inner", x, y)
    stepsize = st.stepsize
    if st.method == "unrolled":
        grad_y_inner = autograd.grad(inner, 1)
        if stepsize is None:
            hyy = _autograd_hyy(grad_y_inner, x, y, st.hvp) if inner_hvp is None else \
                oracle.hessian(x, y)[0]
            stepsize = _stepsize(hyy, y, xp)
        grad, info = _unrolled(outer, grad_y_inner, x, y, stepsize, st, xp)
    else:
        if B.is_numpy(xp) and inner_hvp is None:
            grad_y_inner = autograd.grad(inner, 1)
            name = getattr(inner, "__name__", "inner")
            hyy = _autograd_hyy(grad_y_inner, x, y, st.hvp, name)
            hxy = _autograd_hxy(grad_y_inner, x, y, name)
        else:
            hyy, hxy = oracle.hessian(x, y)
        if st.method == "neumann" and stepsize is None:
            stepsize = _stepsize(hyy, y, xp)
        first_call(WHERE, oracle.outer, "outer", x, y)
        _, fx, fy = oracle.outer_grads(x, y)
        grad, v, out = implicit_hypergradient(
            hyy, hxy, fx, fy, method=st.method, rtol=st.rtol, maxiter=st.maxiter,
            ridge=st.ridge, stepsize=stepsize, where=WHERE, atol=st.atol)
        inner_grad_norm = B.scaled_norm(xp, oracle.inner_grad_y(x, y)) if st.return_info else \
            math.nan
        info = HypergradientInfo(st.method, out.n_iters, out.converged, out.residual_norm,
                                 inner_grad_norm,
                                 stepsize if st.method == "neumann" else None, v,
                                 out.status, out.message)
    # a NaN hypergradient from a NaN/inf outer gradient is returned without a warning, as
    # a NaN cotangent gives NaN gradients in diffsolve.vjp
    quiet = info.status is Status.NONFINITE and NAN_OUTER in info.message
    report(info, throw=st.throw, warn=not quiet, fixed_budget=st.fixed_budget)
    return (grad, info) if st.return_info else grad


NAN_OUTER = "the outer objective's gradient contains NaN or inf"


@dataclass(frozen=True)
class LinearOutcome:
    """How the Hessian system of :func:`implicit_hypergradient` was solved."""

    n_iters: int
    converged: bool
    residual_norm: float | None
    status: Status
    message: str


_CG_ADVICE = ("inner is not strongly convex at y: move y closer to argmin_y inner, add "
              "ridge > 0, or use method='neumann' or 'unrolled'")


def implicit_hypergradient(hyy, hxy, fx, fy, *, method="implicit-cg", rtol=1e-10,
                           maxiter=None, ridge=0.0, stepsize=None, where=WHERE, atol=0.0):
    """``(∇ₓf − hxy(v), v, outcome)`` with ``(hyy + ridge I) v = ∇ᵧf`` by CG or Neumann.

    Both stop at ``||(hyy + ridge I) v − ∇ᵧf|| <= max(rtol ||∇ᵧf||, atol)``; ``rtol = atol
    = 0`` runs exactly ``maxiter`` iterations (the caller validated the tolerances).

    The namespace-agnostic core of :func:`hypergradient`, shared by
    :func:`diffsolve.bilevel.solve`: ``hyy`` / ``hxy`` are the products ``v ↦ ∇²ᵧᵧg·v``
    and ``v ↦ ∇²ₓᵧg·v``; ``fx``, ``fy`` the gradients of the outer objective. Nothing is
    warned here: the caller reads ``outcome.status`` (a :class:`LinearOutcome`).
    """
    xp = B.array_namespace(fx, fy, where=where)
    label = f"{where}(method={method!r})"
    if not (B.isfinite_all(xp, fx) and B.isfinite_all(xp, fy)):
        # a NaN/inf right-hand side: the Krylov loops would stop at once with v = 0 and
        # return ∇ₓf as if it were the hypergradient
        nan = xp.full_like(fx, float("nan"))
        return nan, xp.full_like(fy, float("nan")), LinearOutcome(
            0, False, None, Status.NONFINITE,
            f"{label}: {NAN_OUTER}, so the hypergradient is NaN")

    def apply(v):
        Hv = hyy(v)
        return Hv + ridge * v if ridge else Hv

    b_norm = B.scaled_norm(xp, fy)
    if method == "implicit-cg":
        out = cg_solve(apply, fy, rtol=rtol, atol=atol, maxiter=maxiter, where=where,
                       what="the Hessian system ∇²ᵧᵧ inner · v = ∇ᵧ outer",
                       advice=_CG_ADVICE, true_residual=True)
        v, n_iters, residual = out.u, out.n_iters, out.residual_norm
        status = getattr(out, "status", None)
        if status is not None:
            status = Status(int(status))
        elif out.converged:
            status = Status.SUCCESS
        else:
            status = Status.NONFINITE if residual is not None and \
                not math.isfinite(residual) else Status.MAX_ITERATIONS
        converged = status is Status.SUCCESS
        message = _cg_message(label, status, n_iters, residual, b_norm, rtol, atol)
    else:
        v, n_iters, residual, status, message = _neumann(apply, fy, b_norm, stepsize, rtol,
                                                         atol, maxiter, xp, label)
        converged = status is Status.SUCCESS
    grad = fx - hxy(v)
    return grad, v, LinearOutcome(n_iters, converged, residual, status, message)


def _cg_message(label, status, n_iters, residual, b_norm, rtol, atol) -> str:
    """What implicit-cg's outcome says (shared by the generic and the compiled JAX path)."""
    if status is Status.SUCCESS:
        return f"{label}: CG solved the Hessian system in {n_iters} iterations"
    if status is Status.MAX_ITERATIONS and rtol == 0 and atol == 0:
        return (f"{label}: ran the requested {n_iters} CG iterations on the Hessian "
                f"system (rtol = atol = 0, a fixed budget); residual {residual:.3g}")
    rel = residual / b_norm if b_norm and residual is not None else residual
    return (f"{label}: CG on the Hessian system stopped with relative residual "
            f"{rel:.3g} (absolute {residual:.3g}) above max(rtol·||∇ᵧ outer||, "
            f"atol) = {max(rtol * b_norm, atol):.3g} (rtol={rtol:g}, atol="
            f"{atol:g}) after {n_iters} iterations. "
            f"{status.hint()}; increase maxiter, add ridge > 0, or check that y "
            "is close to argmin_y inner")


def _neumann(apply, fy, b_norm, stepsize, rtol, atol, maxiter, xp, label):
    """``v = α Σ_{j<k} (I − αA)^j ∇ᵧf`` with ``A = ∇²ᵧᵧg + ridge I``.

    The residual of that partial sum is exactly the next term: ``A v_k − ∇ᵧf =
    −(I − αA)^k ∇ᵧf = −p_k`` (telescoping), so it is known after each product, for free;
    the sum stops as soon as it meets ``max(rtol ||∇ᵧf||, atol)`` and always reports its
    true residual (``rtol = atol = 0``: exactly ``maxiter`` terms).
    """
    K = DEFAULT_TERMS if maxiter is None else maxiter
    tol = max(rtol * b_norm, atol)
    p = acc = fy  # p_0 and the partial sum Σ_{j<1} p_j
    res = b_norm
    n = 0
    while n < K and res > tol:
        p = p - stepsize * apply(p)  # p_{n+1}: the residual of α·acc
        n += 1
        res = B.scaled_norm(xp, p)
        if not math.isfinite(res) or not res > tol or n == K:
            break
        acc = acc + p
    v = stepsize * acc
    if not math.isfinite(res) or res > b_norm:
        return v, n, res, Status.DIVERGED, (
            f"{label}: the Neumann terms grew (||term {n}|| = {res:.3g} > ||∇ᵧ outer|| = "
            f"{b_norm:.3g}), so the series diverges: stepsize={stepsize:g} is too large for "
            "∇²ᵧᵧ inner (it must be < 2/L, and the Hessian positive definite); pass a "
            "smaller stepsize, or leave it None to estimate 1/L")
    if res <= tol:
        return v, n, res, Status.SUCCESS, (
            f"{label}: the Neumann series met max(rtol·||∇ᵧ outer||, atol) = {tol:.3g} "
            f"after {n} terms")
    if rtol == 0 and atol == 0:
        return v, n, res, Status.MAX_ITERATIONS, (
            f"{label}: summed the requested {n} Neumann terms (rtol = atol = 0, a fixed "
            f"budget); residual {res:.3g}")
    rel = res / b_norm if b_norm else res
    return v, n, res, Status.MAX_ITERATIONS, (
        f"{label}: the Neumann series stopped at relative residual {rel:.3g} (absolute "
        f"{res:.3g}) above max(rtol·||∇ᵧ outer||, atol) = {tol:.3g} (rtol={rtol:g}, atol="
        f"{atol:g}) after {n} terms. {Status.MAX_ITERATIONS.hint()}; the series converges "
        "like (1 − α μ)^K: a stepsize closer to 1/L, or method='implicit-cg', converges "
        "faster")


def _autograd_hyy(grad_y_inner, x, y, mode, name="inner"):
    """``v ↦ ∇²ᵧᵧg·v`` with autograd (reverse-over-reverse: one trace, reused)."""
    from ..implicit._user_vjp import autograd_vjp

    if mode == "reverse-over-reverse":
        # ∇²ᵧᵧg is symmetric, so the VJP of y ↦ ∇ᵧg (one trace, reused) is its product
        return autograd_vjp(lambda y_: grad_y_inner(x, y_), y, where=WHERE,
                            what="∇ᵧ of the inner objective", ways_out=WAYS_OUT,
                            name=name)[0]
    jvp = make_jvp(lambda y_: grad_y_inner(x, y_))(y)
    return lambda v: jvp(v)[1]


def _autograd_hxy(grad_y_inner, x, y, name):
    """``v ↦ ∇²ₓᵧg·v``: the VJP of x ↦ ∇ᵧg (traced once, at the first product)."""
    from ..implicit._user_vjp import autograd_vjp

    state = {}

    def hxy(v):
        if "x" not in state:
            state["x"] = autograd_vjp(lambda x_: grad_y_inner(x_, y), x, where=WHERE,
                                      what="∇ᵧ of the inner objective (as a function of x)",
                                      ways_out=WAYS_OUT, name=name)[0]
        return state["x"](v)

    return hxy


def _stepsize(hvp_fn, y, xp) -> float:
    """1 / (1.05 L̂), L̂ the largest eigenvalue of ∇²ᵧᵧg by power iteration."""
    n = math.prod(tuple(y.shape))
    v = xp.reshape(_probe(xp, n, y.dtype, B.device(y), 3.0), tuple(y.shape))
    v = v / B.scaled_norm(xp, v)
    lam = 0.0
    for _ in range(POWER_ITERATIONS):
        w = hvp_fn(v)
        lam = B.scaled_norm(xp, w)
        if lam == 0.0 or not math.isfinite(lam):
            break
        v = w / lam
    if not (lam > 0.0 and math.isfinite(lam)):
        raise ValueError(
            f"{WHERE}: the Hessian ∇²ᵧᵧ inner at y is {'zero' if lam == 0.0 else 'not finite'} "
            "(power iteration), so no step size can be estimated; is inner quadratic or "
            "strongly convex in y? Pass stepsize="
        )
    # power iteration approaches L from below; the margin keeps α < 2/L with room to spare
    return 1.0 / (1.05 * lam)


def _unrolled(outer, grad_y_inner, x, y, stepsize, st, xp):
    """Autograd through T gradient steps on inner, after an untraced dry run.

    The dry run (the same T steps, plus ∇ of outer at their end) decides the status before
    anything is differentiated: steps that diverge stop there (``DIVERGED``: the growth is
    caught before it overflows), and a NaN/inf outer gradient gives a NaN hypergradient at
    once, instead of NaN arithmetic (``inf · 0``) inside autograd's backward pass.
    """
    from ..implicit._user_vjp import autograd_vjp

    steps = DEFAULT_TERMS if st.maxiter is None else st.maxiter
    nan = xp.full_like(x, float("nan"))
    y_last, first, diverged = y, None, False
    for _ in range(steps):
        y_next = y_last - stepsize * grad_y_inner(x, y_last)
        move = B.scaled_norm(xp, y_next - y_last)
        y_last = y_next
        if first is None:
            first = move
        if not math.isfinite(move) or move > DIVERGENCE_FACTOR * (1.0 + first):
            diverged = True
            break
    inner_grad_norm = math.nan
    if diverged:
        return nan, HypergradientInfo(
            "unrolled", steps, False, None, inner_grad_norm, stepsize, None, Status.DIVERGED,
            f"{WHERE}(method='unrolled'): the unrolled inner steps diverged (stepsize="
            f"{stepsize:g} too large for ∇²ᵧᵧ inner: it must be < 2/L); pass a smaller "
            "stepsize, or leave it None to estimate 1/L")
    if st.return_info:
        inner_grad_norm = B.scaled_norm(xp, grad_y_inner(x, y_last))
    vjp_f, value = autograd_vjp(lambda a, b: outer(a, b), x, y_last, argnum=(0, 1),
                                where=WHERE, what="the outer objective", ways_out=WAYS_OUT,
                                name=getattr(outer, "__name__", "outer"))
    check_scalar(WHERE, value, "outer")
    fx, fy = vjp_f(xp.ones_like(xp.asarray(value)))
    if not (B.isfinite_all(xp, xp.asarray(fx)) and B.isfinite_all(xp, xp.asarray(fy))):
        return nan, HypergradientInfo(
            "unrolled", steps, False, None, inner_grad_norm, stepsize, None, Status.NONFINITE,
            f"{WHERE}(method='unrolled'): {NAN_OUTER} at the last unrolled step, so the "
            "hypergradient is NaN")

    def phi(x_):
        y_t = y
        for _ in range(steps):
            y_t = y_t - stepsize * grad_y_inner(x_, y_t)
        return outer(x_, y_t)

    phi.__name__ = getattr(outer, "__name__", "outer")
    vjp, value = autograd_vjp(phi, x, where=WHERE,
                              what="the outer objective through the unrolled inner steps",
                              ways_out=WAYS_OUT)
    check_scalar(WHERE, value, "outer")
    grad = vjp(xp.ones_like(xp.asarray(value)))
    status = Status.SUCCESS if B.isfinite_all(xp, grad) else Status.NONFINITE
    message = (f"{WHERE}(method='unrolled'): differentiated {steps} unrolled inner steps"
               if status is Status.SUCCESS else
               f"{WHERE}(method='unrolled'): the gradient through {steps} unrolled steps is "
               "not finite; check the objectives for NaN/inf")
    return grad, HypergradientInfo("unrolled", steps, status is Status.SUCCESS, None,
                                   inner_grad_norm, stepsize, None, status, message)


# JAX arrays, derivatives from jax.vjp, implicit-cg: the whole hypergradient (both
# gradients, the CG loop, the mixed product) is one jitted function, compiled once per
# (outer, inner) pair; tests turn it off to compare with the generic path
_JAX_FAST_PATH = True


class _NotScalar(Exception):
    """Raised while tracing: an objective returned more than one number."""


def _build_jax_cg(outer, inner, outer_grad, inner_grad, inner_hvp):
    """The compiled implicit-cg hypergradient of ``(outer, inner)``; the hand-written
    derivatives that are not ``None`` replace the ones from ``jax.vjp`` (traced too).

    The CG iteration is that of :func:`diffsolve.krylov.cg` on one system (b scaled by a
    power of two, the same breakdown test, the verdict on the true residual), so both
    paths take the same steps; anything this loop does not finish cleanly (breakdown, a
    restart from the true residual, NaN, subnormal solutions) is left to the generic path.
    """
    import jax
    import jax.numpy as jnp
    from jax import lax

    def scalar(f, a, b):
        value = f(a, b)
        if math.prod(jnp.shape(value)) != 1:
            raise _NotScalar
        return jnp.sum(value)

    def pair(out, x, y):
        """A user's ``(for x, for y)``, or :class:`_NotScalar` (the generic path says
        what is wrong with it)."""
        if not (isinstance(out, (tuple, list)) and len(out) == 2) or any(
                jnp.shape(o) != a.shape for o, a in zip(out, (x, y))):
            raise _NotScalar
        return tuple(jnp.asarray(o).astype(a.dtype) for o, a in zip(out, (x, y)))

    def run(x, y, options):
        rtol, atol, maxiter, ridge = options[0], options[1], options[2], options[3]
        want_gy = options[4] != 0  # ||∇ᵧ inner|| is reported only with return_info
        scalar(inner, x, y)  # the shape checks of first_call, at trace time
        scalar(outer, x, y)
        if outer_grad is None:
            fx, fy = jax.grad(lambda a, b: scalar(outer, a, b), (0, 1))(x, y)
        else:
            fx, fy = pair(outer_grad(x, y), x, y)

        def grad_y(a, b):
            return jax.grad(lambda t: scalar(inner, a, t))(b)

        if inner_hvp is None:
            # linearised once in (x, y), for every product: a product's unused x part is
            # removed by the compiler, and the mixed product needs no second linearisation
            gy, hvp_xy = jax.vjp(grad_y, x, y)
            gy_norm_value = jnp.linalg.norm(gy)  # the linearisation's value: free

            def apply(v):
                return hvp_xy(v)[1] + ridge * v

            def both(v):
                return hvp_xy(v)
        else:
            def gy_norm():
                gy = grad_y(x, y) if inner_grad is None else pair(inner_grad(x, y), x, y)[1]
                return jnp.linalg.norm(gy).astype(y.dtype)

            # an inner gradient costs a pass over the data: computed only when reported
            gy_norm_value = lax.cond(want_gy, gy_norm,
                                     lambda: jnp.asarray(jnp.nan, y.dtype))

            def apply(v):
                return pair(inner_hvp(x, y, v), x, y)[1] + ridge * v

            def both(v):
                return pair(inner_hvp(x, y, v), x, y)

        dtype = fy.dtype
        m = jnp.max(jnp.abs(fy))
        use = jnp.isfinite(m) & (m > 0)
        s = jnp.where(use, 2.0 ** jnp.floor(jnp.log2(jnp.where(use, m, 1.0))), 1.0)
        s = s.astype(dtype)
        bs = fy / s
        tol = jnp.maximum(rtol * jnp.linalg.norm(bs), atol / s).astype(dtype)
        floor = math.prod(y.shape) * float(jnp.finfo(dtype).eps)

        def dot(a, b):
            return jnp.sum(a * b)

        # the loop runs only while the last step was clean (active), so a step needs no
        # masks: a breakdown ends it with garbage in Y that is never used (the generic path
        # then decides); on a CPU every operation in the loop body costs microseconds
        def body(c):
            Y, R, P, rz, a_norm, _, _, k = c
            Ap = apply(P)
            pp, pAp, ApAp = dot(P, P), dot(P, Ap), dot(Ap, Ap)
            a_norm = jnp.maximum(a_norm, jnp.sqrt(ApAp / pp))
            bad = ~(pAp > floor * pp * a_norm)  # NaN is a breakdown too
            alpha = rz / pAp
            Y = Y + alpha * P
            R = R - alpha * Ap
            rr = dot(R, R)
            return Y, R, R + (rr / rz) * P, rr, a_norm, bad, ~bad & (jnp.sqrt(rr) > tol), k + 1

        def cond(c):
            return c[6] & (c[7] < maxiter)

        rr0 = dot(bs, bs)
        init = (jnp.zeros_like(bs), bs, bs, rr0, jnp.zeros((), dtype), jnp.asarray(False),
                jnp.sqrt(rr0) > tol, jnp.asarray(0))
        Y, _, _, _, _, bad, _, k = lax.while_loop(cond, body, init)
        v = Y * s
        # one product gives the mixed part for the gradient and the yy part for the true
        # residual: H(Y s) / s is H(Y) to the bit (s is a power of two, the product linear)
        hx_v, hy_v = both(v)
        true = jnp.linalg.norm(bs - (hy_v / s + ridge * Y))
        tiny = float(jnp.finfo(dtype).smallest_normal)
        # one reduction for every finiteness check: NaN or inf anywhere makes the sum of
        # zeros NaN (five separate reductions took 30 µs of a 90 µs call at 100 features)
        entries = jnp.concatenate([a.reshape(-1) for a in (x, y, fx, fy, v)])
        clean = (jnp.isfinite(jnp.sum(entries * 0) + true) & ~bad
                 & ~jnp.any((Y != 0) & (jnp.abs(v) < tiny)))
        grad = fx - hx_v
        # every number the report needs, in one array: one transfer to the host
        report = jnp.stack([true * s, jnp.linalg.norm(fy), gy_norm_value, k,
                            clean, true <= tol]).astype(dtype)
        return grad, v, report

    return run


_JAX_OPTIONS: dict = {}


def _device_key(y):
    """The device of the JAX array ``y`` (its only one: the fast path runs unsharded)."""
    devices = y.devices()
    return next(iter(devices)) if len(devices) == 1 else None


def _jax_implicit_cg(fns, x, y, st):
    """``(grad, info)`` from the compiled JAX path, or ``None`` where the generic path
    must decide (it then gives the same answer, or the error / warning it would give)."""
    n = math.prod(tuple(y.shape))
    maxiter = 10 * n if st.maxiter is None else st.maxiter
    import jax

    # the options travel as one small array, an argument of the jitted function (new values
    # do not recompile); kept on the device per set of values, since a host array passed to
    # a jitted function is transferred on every call (25 µs, a sixth of a 100-feature call)
    key = (st.rtol, st.atol, maxiter, st.ridge, st.return_info, y.dtype, _device_key(y))
    options = _JAX_OPTIONS.get(key)
    if options is None:
        if len(_JAX_OPTIONS) >= 64:
            _JAX_OPTIONS.clear()
        options = _JAX_OPTIONS[key] = jax.device_put(
            B.host_namespace().asarray([st.rtol, st.atol, maxiter, st.ridge,
                                        float(st.return_info)], dtype=y.dtype),
            _device_key(y))
    try:
        run = cached_jit("hypergradient-cg", fns, _build_jax_cg)
        grad, v, out = run(x, y, options)
        residual, b_norm, gy_norm, k, clean, ok = B.report_floats(out)
    except Exception:  # the generic path reports it, with its own message
        return None
    if not clean or not (ok or k >= maxiter):
        return None  # breakdown, NaN, or a restart from the true residual
    n_iters = int(k)
    status = Status.SUCCESS if ok else Status.MAX_ITERATIONS
    label = f"{WHERE}(method='implicit-cg')"
    message = _cg_message(label, status, n_iters, residual, b_norm, st.rtol, st.atol)
    info = HypergradientInfo("implicit-cg", n_iters, status is Status.SUCCESS, residual,
                             gy_norm if st.return_info else math.nan, None, v, status,
                             message)
    return grad, info
