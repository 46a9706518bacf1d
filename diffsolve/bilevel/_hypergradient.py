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

Reference: Ji, Yang & Liang, "Bilevel Optimization: Convergence Analysis and Enhanced
Design" (ICML 2021) for AID-CG / Neumann / ITD; Lorraine, Vicol & Duvenaud, "Optimizing
Millions of Hyperparameters by Implicit Differentiation" (AISTATS 2020) for the Neumann
approximation. ../shared/ALGORITHMS.md §4 has the formulas and the ridge closed form.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import autograd
from autograd import make_jvp
from autograd.tracer import getval

from .. import _backend as B
from .._result import ConvergenceWarning, SolverResult
from ..implicit._implicit_solve import _probe, cg_solve
from ..implicit._user_vjp import autograd_vjp
from ._derivatives import Oracle, check_callables

__all__ = ["HypergradientInfo", "hypergradient", "implicit_hypergradient"]

WHERE = "diffsolve.bilevel.hypergradient"
METHODS = ("implicit-cg", "neumann", "unrolled")
HVP_MODES = ("reverse-over-reverse", "forward-over-reverse")
DEFAULT_NEUMANN_TERMS = 100
POWER_ITERATIONS = 20


@dataclass(frozen=True)
class HypergradientInfo(SolverResult):
    """Diagnostics of :func:`hypergradient` (``return_info=True``).

    Attributes
    ----------
    method : str
    n_iters : int
        CG iterations (implicit-cg), series terms K (neumann) or unrolled steps T.
    converged : bool or None
        implicit-cg and neumann: whether ``residual_norm <= rtol ||∇ᵧf||``; ``None`` for
        unrolled (a fixed budget, no linear system).
    residual_norm : float or None
        ``||(∇²ᵧᵧg + ridge I) v − ∇ᵧf||`` (one more Hessian-vector product); ``None`` for
        unrolled.
    inner_grad_norm : float
        ``||∇ᵧ inner||`` at the given ``y`` (at the last unrolled iterate for unrolled): how
        far ``y`` is from ``y*(x)``; the hypergradient is only as accurate as ``y``.
    stepsize : float or None
        α used by neumann and unrolled (given, or 1 / (1.05 L̂) with L̂ from
        power iteration); ``None`` for implicit-cg.
    v : array or None
        The solution of the Hessian system (implicit-cg, neumann).
    """

    method: str
    n_iters: int
    converged: bool | None
    residual_norm: float | None
    inner_grad_norm: float
    stepsize: float | None
    v: Any = None


def _norm(xp, v) -> float:
    return float(xp.sqrt(xp.sum(v * v)))


def _positive_int(name, value, allow_none=True):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{WHERE}: {name} must be a positive integer"
                         f"{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def _nonnegative(name, value, strict=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
            not math.isfinite(value) or value < 0 or (strict and value == 0):
        raise ValueError(f"{WHERE}: {name} must be a finite number {'>' if strict else '>='} "
                         f"0, got {value!r}")
    return float(value)


def _check_scalar(value, name):
    shape = tuple(getattr(getval(value), "shape", ()))
    if math.prod(shape) != 1:
        raise ValueError(f"{WHERE}: {name}(x, y) must return a scalar, got shape {shape}")


def hypergradient(outer: Callable, inner: Callable, x, y, method: str = "implicit-cg", *,
                  maxiter: int | None = None, rtol: float = 1e-10,
                  stepsize: float | None = None, n_steps: int = 100, ridge: float = 0.0,
                  hvp: str = "reverse-over-reverse", return_info: bool = False,
                  outer_grad: Callable | None = None, inner_grad: Callable | None = None,
                  inner_hvp: Callable | None = None):
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
        for unrolled.
    method : {"implicit-cg", "neumann", "unrolled"}
        See the module docstring. In short: implicit-cg is the accurate and cheap choice
        when the inner problem is solved well and strongly convex; neumann needs only
        ``α`` and a budget (no inner products, robust to a slightly indefinite Hessian at
        an approximate y, but slow on ill-conditioned problems); unrolled differentiates
        what the inner optimiser actually did (it needs no ``y ≈ y*`` and suits short,
        warm-started inner loops) at a memory cost growing with T (NumPy / autograd only).
    maxiter : int, optional
        implicit-cg: CG iteration limit (default ``10 n``, n the size of y);
        neumann: the number K of Hessian-vector products (default 100).
    rtol : float
        implicit-cg stops at ``||residual|| <= rtol ||∇ᵧf||``; also the ``converged``
        threshold reported for neumann.
    stepsize : float, optional
        α of neumann and of the unrolled gradient steps; must be in ``(0, 2/L)``. Default:
        ``1 / (1.05 L̂)`` with L̂ from 20 power iterations on ``∇²ᵧᵧg(x, y)``.
    n_steps : int
        unrolled: the number T of inner gradient steps.
    ridge : float
        implicit-cg and neumann: solve ``(∇²ᵧᵧg + ridge I) v = ∇ᵧf`` (regularises a
        singular or indefinite Hessian).
    hvp : {"reverse-over-reverse", "forward-over-reverse"}
        How autograd computes Hessian-vector products (NumPy inputs without
        ``inner_hvp``; see the module docstring).
    return_info : bool
        Also return a :class:`HypergradientInfo` (costs one more Hessian-vector product
        for the residual).
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

    Returns
    -------
    grad : array
        x's shape, namespace and dtype.
    info : HypergradientInfo
        Only with ``return_info=True``.

    Warns
    -----
    ConvergenceWarning
        implicit-cg did not reach ``rtol`` within ``maxiter``; or the Neumann terms grew
        (``stepsize`` too large for ``∇²ᵧᵧg``).

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
    for name, a in (("x", x), ("y", y)):  # before the namespace, for a precise message
        if not B.is_array(a):
            raise TypeError(f"{WHERE}: {name} must be an array, got {type(a).__name__} (wrap "
                            "numbers and lists with numpy.asarray)")
    xp = B.array_namespace(x, y, where=WHERE)
    for name, fn in (("outer", outer), ("inner", inner)):
        if not callable(fn):
            raise TypeError(f"{WHERE}: {name} must be a callable {name}(x, y) -> scalar, got "
                            f"{type(fn).__name__}")
    check_callables(WHERE, outer_grad=outer_grad, inner_grad=inner_grad, inner_hvp=inner_hvp)
    for name, a in (("x", x), ("y", y)):
        if not xp.isdtype(a.dtype, "real floating"):
            raise TypeError(f"{WHERE}: {name} has dtype {a.dtype}; pass a floating array "
                            "(e.g. float64)")
    if method not in METHODS:
        raise ValueError(f"{WHERE}: method={method!r} is not known; choose one of {list(METHODS)}")
    if hvp not in HVP_MODES:
        raise ValueError(f"{WHERE}: hvp={hvp!r} is not known; choose one of {list(HVP_MODES)}")
    maxiter = _positive_int("maxiter", maxiter)
    n_steps = _positive_int("n_steps", n_steps, allow_none=False)
    rtol = _nonnegative("rtol", rtol, strict=True)
    ridge = _nonnegative("ridge", ridge)
    if stepsize is not None:
        stepsize = _nonnegative("stepsize", stepsize, strict=True)
    if method == "unrolled" and not B.is_numpy(xp):
        raise TypeError(
            f"{WHERE}: method='unrolled' differentiates the inner gradient steps with HIPS "
            f"autograd, which needs NumPy arrays, but x and y are {xp.__name__} arrays; use "
            "method='implicit-cg' or 'neumann' (with outer_grad= and inner_hvp= where your "
            "library has no autodiff)"
        )
    oracle = Oracle(outer, inner, None, xp, outer_grad=outer_grad, inner_grad=inner_grad,
                    inner_hvp=inner_hvp, needs=("outer_grad", "inner_hvp"), where=WHERE,
                    what=f"method={method!r}")
    _check_scalar(inner(x, y), "inner")

    if B.is_numpy(xp) and inner_hvp is None:
        grad_y_inner = autograd.grad(inner, 1)
        hyy = _autograd_hyy(grad_y_inner, x, y, hvp)
        if method == "unrolled":
            if stepsize is None:
                stepsize = _stepsize(hyy, y, xp)
            return _unrolled(outer, grad_y_inner, x, y, stepsize, n_steps, return_info, xp)

        def hxy(v):
            return autograd_vjp(lambda x_: grad_y_inner(x_, y), x)[0](v)
    else:
        if method == "unrolled":  # NumPy with a user inner_hvp: unrolled ignores it
            grad_y_inner = autograd.grad(inner, 1)
            if stepsize is None:
                stepsize = _stepsize(oracle.hessian(x, y)[0], y, xp)
            return _unrolled(outer, grad_y_inner, x, y, stepsize, n_steps, return_info, xp)
        hyy, hxy = oracle.hessian(x, y)
    if method == "neumann" and stepsize is None:
        stepsize = _stepsize(hyy, y, xp)
    _check_scalar(oracle.outer(x, y), "outer")
    _, fx, fy = oracle.outer_grads(x, y)
    grad, v, out = implicit_hypergradient(
        hyy, hxy, fx, fy, method=method, rtol=rtol, maxiter=maxiter, ridge=ridge,
        stepsize=stepsize, true_residual=return_info, where=WHERE)
    if not return_info:
        return grad
    inner_grad_norm = _norm(xp, oracle.inner_grad_y(x, y))
    return grad, HypergradientInfo(method, out.n_iters, out.converged, out.residual_norm,
                                   inner_grad_norm, stepsize if method == "neumann" else None,
                                   v)


@dataclass(frozen=True)
class _LinearOutcome:
    n_iters: int
    converged: bool | None
    residual_norm: float | None


def implicit_hypergradient(hyy, hxy, fx, fy, *, method="implicit-cg", rtol=1e-10,
                           maxiter=None, ridge=0.0, stepsize=None, true_residual=False,
                           where=WHERE, stacklevel=3):
    """``(∇ₓf − hxy(v), v, outcome)`` with ``(hyy + ridge I) v = ∇ᵧf`` by CG or Neumann.

    The namespace-agnostic core of :func:`hypergradient`, shared by
    :func:`diffsolve.bilevel.solve`: ``hyy`` / ``hxy`` are the products ``v ↦ ∇²ᵧᵧg·v``
    and ``v ↦ ∇²ₓᵧg·v``; ``fx``, ``fy`` the gradients of the outer objective.
    """
    xp = B.array_namespace(fx, fy, where=where)

    def apply(v):
        Hv = hyy(v)
        return Hv + ridge * v if ridge else Hv

    b_norm = _norm(xp, fy)
    if method == "implicit-cg":
        out = cg_solve(
            apply, fy, rtol=rtol, maxiter=maxiter, where=where,
            what="the Hessian system ∇²ᵧᵧ inner · v = ∇ᵧ outer",
            advice="inner is not strongly convex at y: move y closer to argmin_y inner, add "
                   "ridge > 0, or use method='neumann' or 'unrolled'",
            true_residual=true_residual)
        v, n_iters, converged, residual = out.u, out.n_iters, out.converged, out.residual_norm
        if not converged:
            rel = residual / b_norm if b_norm else residual
            warnings.warn(
                f"{where}(method='implicit-cg'): CG on the Hessian system did not converge: "
                f"relative residual {rel:.3g} > rtol={rtol:g} after {n_iters} iterations; "
                "increase maxiter, add ridge > 0, or check that y is close to argmin_y inner",
                ConvergenceWarning, stacklevel=stacklevel)
    else:
        n_iters = DEFAULT_NEUMANN_TERMS if maxiter is None else maxiter
        p = fy
        acc = fy
        for _ in range(n_iters):
            p = p - stepsize * apply(p)
            acc = acc + p
        v = stepsize * acc
        if _norm(xp, p) > b_norm:
            warnings.warn(
                f"{where}(method='neumann'): the Neumann terms grew (||term K|| = "
                f"{_norm(xp, p):.3g} > ||∇ᵧ outer|| = {b_norm:.3g}), so the series diverges: "
                f"stepsize={stepsize:g} is too large for ∇²ᵧᵧ inner (it must be < 2/L); pass a "
                "smaller stepsize, or leave it None to estimate 1/L",
                ConvergenceWarning, stacklevel=stacklevel)
        residual = _norm(xp, apply(v) - fy) if true_residual else None
        converged = None if residual is None else residual <= rtol * b_norm
    grad = fx - hxy(v)
    return grad, v, _LinearOutcome(n_iters, converged, residual)


def _autograd_hyy(grad_y_inner, x, y, mode):
    """``v ↦ ∇²ᵧᵧg·v`` with autograd (reverse-over-reverse: one trace, reused)."""
    if mode == "reverse-over-reverse":
        # ∇²ᵧᵧg is symmetric, so the VJP of y ↦ ∇ᵧg (one trace, reused) is its product
        return autograd_vjp(lambda y_: grad_y_inner(x, y_), y)[0]
    jvp = make_jvp(lambda y_: grad_y_inner(x, y_))(y)
    return lambda v: jvp(v)[1]


def _stepsize(hvp_fn, y, xp) -> float:
    """1 / (1.05 L̂), L̂ the largest eigenvalue of ∇²ᵧᵧg by power iteration."""
    n = math.prod(tuple(y.shape))
    v = xp.reshape(_probe(xp, n, y.dtype, B.device(y), 3.0), tuple(y.shape))
    v = v / _norm(xp, v)
    lam = 0.0
    for _ in range(POWER_ITERATIONS):
        w = hvp_fn(v)
        lam = _norm(xp, w)
        if lam == 0.0:
            break
        v = w / lam
    if not lam > 0.0:
        raise ValueError(
            f"{WHERE}: the Hessian ∇²ᵧᵧ inner is zero at y (power iteration), so no step size "
            "can be estimated; is inner quadratic or strongly convex in y? Pass stepsize="
        )
    # power iteration approaches L from below; the margin keeps α < 2/L with room to spare
    return 1.0 / (1.05 * lam)


def _unrolled(outer, grad_y_inner, x, y, stepsize, n_steps, return_info, xp):
    last = {}

    def phi(x_):
        y_t = y
        for _ in range(n_steps):
            y_t = y_t - stepsize * grad_y_inner(x_, y_t)
        last["y"] = getval(y_t)
        return outer(x_, y_t)

    vjp, value = autograd_vjp(phi, x)
    _check_scalar(value, "outer")
    grad = vjp(xp.ones_like(xp.asarray(value)))
    if not return_info:
        return grad
    inner_grad_norm = _norm(xp, grad_y_inner(x, last["y"]))
    return grad, HypergradientInfo("unrolled", n_steps, None, None, inner_grad_norm, stepsize)
