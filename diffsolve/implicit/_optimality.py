"""Ready-made optimality conditions ``F(x, *theta) = 0`` for :func:`custom_root`.

* :func:`stationarity`: ``F = ∇ₓf`` (unconstrained minimisation; ``solve="cg"`` applies).
* :func:`proximal_gradient_fixed_point`: ``F = x − prox_{ηg}(x − η∇ₓf)`` (composite
  problems ``f + g``: lasso, elastic net, …).
* :func:`projected_gradient_fixed_point`: ``F = x − proj_C(x − η∇ₓf)`` (minimisation over
  a convex set; see :mod:`._projections`).
* :func:`kkt_conditions`: the KKT system of ``min f s.t. h = 0, g <= 0``.

The fixed-point conditions use the sign ``x − T(x)``, so that ``∂F/∂x = η∇²f`` (positive
definite) where no constraint is active; with active constraints ``∂F/∂x`` is not
symmetric and ``solve="gmres"`` (the default) is the one to use.

Given an objective ``f``, they differentiate it with HIPS autograd, so ``f`` is written with
``autograd.numpy`` and takes NumPy arrays; ``custom_root``'s default VJPs then
differentiate ``F`` once more (autograd supports nesting). For CuPy, array_api_strict or
torch arrays, the first three take the gradient instead (``grad=``, array-API code in the
inputs' namespace); ``stationarity(grad=..., hvp=...)`` and
``projected_gradient_fixed_point(..., grad=, hvp=, projection_vjp=)`` also carry their VJP
(``F.vjp``, which :func:`custom_root` uses), the proximal one needs ``vjp=`` in
:func:`custom_root`. ``kkt_conditions`` is autograd-only.

Reference: Blondel et al., "Efficient and Modular Implicit Differentiation" (NeurIPS
2022), §2.2 (the catalogue of optimality conditions) and JAXopt's
``make_kkt_optimality_fun`` (its KKT form is used here, with the variables stacked into
one vector, because a diffsolve differentiable output is one array).
"""

from __future__ import annotations

from collections.abc import Callable

import autograd
import autograd.numpy as anp
from autograd.tracer import getval

from .. import _backend as B
from .. import _validate as V

__all__ = ["kkt_conditions", "projected_gradient_fixed_point", "proximal_gradient_fixed_point",
           "stationarity"]


def _check_callable(where, name, fn):
    if not callable(fn):
        raise TypeError(f"{where}: {name} must be a callable, got {type(fn).__name__}")


def _gradient(where, f, grad):
    """``∇ₓf`` from autograd (``f`` given) or the user's ``grad`` (any namespace)."""
    if (f is None) == (grad is None):
        raise TypeError(f"{where}: pass either f (an autograd.numpy objective, NumPy arrays) "
                        "or grad= (its gradient ∇ₓf(x, *theta), any array library), not "
                        f"{'both' if f is not None else 'neither'}")
    if grad is not None:
        _check_callable(where, "grad", grad)
        return grad
    _check_callable(where, "f", f)
    return autograd.grad(f, 0)


def _require_numpy(x, where):
    raw = getval(x)
    xp = B.array_namespace(raw, where=where)
    if not B.is_numpy(xp):
        raise TypeError(
            f"{where}: the built-in optimality conditions differentiate the objective with "
            f"HIPS autograd, which needs NumPy arrays, but x is a {xp.__name__} array; write "
            "F with your library and pass vjp= to diffsolve.implicit.custom_root"
        )


def stationarity(f: Callable | None = None, *, grad: Callable | None = None,
                 hvp: Callable | None = None) -> Callable:
    """The optimality condition ``∇ₓf(x, *theta) = 0`` of an unconstrained minimum.

    Parameters
    ----------
    f : callable, optional
        ``f(x, *theta) -> scalar``, written with ``autograd.numpy`` (NumPy arrays).
    grad : callable, optional
        ``grad(x, *theta) -> ∇ₓf`` in any array library, instead of ``f``: then ``F`` runs
        in the namespace of its inputs (CuPy, array_api_strict, torch, ...).
    hvp : callable, optional
        ``hvp(x, theta, u) -> ((∇²ₓₓf) u, θ̄₁, …, θ̄ₖ)``, the VJP of ``F = ∇ₓf`` at ``u``
        (``θ̄ᵢ = (∂θᵢ∇ₓf)ᵀu``, ``None`` for a θ not differentiated); ``F`` then carries it
        as ``F.vjp`` and :func:`custom_root` uses it when given no ``vjp=``.

    Returns
    -------
    F : callable
        ``F(x, *theta) = ∇ₓf(x, *theta)``. Its Jacobian ``∇²ₓf`` is symmetric, positive
        definite at a strict minimum: use ``custom_root(F, solve="cg")``.

    See Also
    --------
    diffsolve.implicit.kkt_conditions : With equality and inequality constraints.
    diffsolve.implicit.custom_root : Differentiate a solver through these conditions.

    Examples
    --------
    >>> import numpy as np, autograd.numpy as anp
    >>> from diffsolve.implicit import stationarity
    >>> F = stationarity(lambda x, a: anp.sum((x - a) ** 2))
    >>> F(np.zeros(2), np.array([1.0, 2.0]))
    array([-2., -4.])

    Any array library, with the gradient and its VJP written out:

    >>> import array_api_strict as xp
    >>> F = stationarity(grad=lambda x, a: 2 * (x - a),
    ...                  hvp=lambda x, theta, u: (2 * u, -2 * u))
    >>> F(xp.zeros(2), xp.asarray([1.0, 2.0]))
    Array([-2., -4.], dtype=array_api_strict.float64)
    """
    where = "diffsolve.implicit.stationarity"
    grad_f = _gradient(where, f, grad)
    if hvp is not None:
        _check_callable(where, "hvp", hvp)

    def F(x, *theta):
        if grad is None:
            _require_numpy(x, where)
        return grad_f(x, *theta)

    F.__name__ = f"stationarity({getattr(f if grad is None else grad, '__name__', 'f')})"
    if hvp is not None:
        def vjp(x, theta):
            return F(x, *theta), (lambda u: hvp(x, tuple(theta), u))

        F.vjp = vjp  # type: ignore[attr-defined]  # custom_root reads it
    return F


def proximal_gradient_fixed_point(f: Callable | None, prox: Callable, stepsize: float = 1.0,
                                  *, grad: Callable | None = None) -> Callable:
    """The fixed point ``x = prox_{ηg}(x − η∇ₓf(x, *θ))`` of proximal gradient, as a root.

    Parameters
    ----------
    f : callable
        The smooth part ``f(x, *theta) -> scalar`` (``autograd.numpy``).
    prox : callable
        ``prox(y, stepsize, *theta)``: the proximal operator of ``stepsize·g``, where ``g``
        may depend on θ (e.g. soft thresholding at ``stepsize·theta[0]`` for the lasso).
        It must be differentiable by autograd almost everywhere (``anp.where``,
        ``anp.maximum``, …).
    stepsize : float > 0
        η. Any value gives the same fixed points; it changes the conditioning of ``∂F/∂x``.
    grad : callable, optional
        ``grad(x, *theta) -> ∇ₓf`` in any array library, instead of ``f`` (pass
        ``f=None``); ``F`` then runs in its inputs' namespace, and :func:`custom_root`
        needs a ``vjp=`` for it.

    Returns
    -------
    F : callable
        ``F(x, *theta) = x − prox(x − η∇ₓf(x, *theta), η, *theta)``.

    See Also
    --------
    diffsolve.implicit.projected_gradient_fixed_point : With a projection instead.
    diffsolve.implicit.custom_root : Differentiate a solver through the fixed point.

    Examples
    --------
    >>> import numpy as np, autograd.numpy as anp
    >>> from diffsolve.implicit import proximal_gradient_fixed_point
    >>> soft = lambda y, s, lam: anp.sign(y) * anp.maximum(anp.abs(y) - s * lam, 0.0)
    >>> F = proximal_gradient_fixed_point(lambda x, lam: 0.5 * anp.sum((x - 3.0) ** 2), soft)
    >>> F(np.array([2.0]), 1.0)                   # lasso of (x - 3)²/2 + |x|: x* = 2
    array([0.])
    """
    where = "diffsolve.implicit.proximal_gradient_fixed_point"
    grad_f = _gradient(where, f, grad)
    _check_callable(where, "prox", prox)
    eta = V.positive_real(where, "stepsize", stepsize)

    def F(x, *theta):
        if grad is None:
            _require_numpy(x, where)
        return x - prox(x - eta * grad_f(x, *theta), eta, *theta)

    return F


def projected_gradient_fixed_point(f: Callable | None, projection: Callable,
                                   stepsize: float = 1.0, *, grad: Callable | None = None,
                                   hvp: Callable | None = None,
                                   projection_vjp: Callable | None = None) -> Callable:
    """The fixed point ``x = proj_C(x − η∇ₓf(x, *θ))`` of projected gradient, as a root.

    Parameters
    ----------
    f : callable
        ``f(x, *theta) -> scalar`` (``autograd.numpy``).
    projection : callable
        ``projection(y, *theta)``: the Euclidean projection onto C (which may depend on
        θ). The built-in ones take their own parameters, so wrap them:
        ``lambda y, *theta: projection_box(y, 0.0, 1.0)``.
    stepsize : float > 0
        η.
    grad : callable, optional
        ``grad(x, *theta) -> ∇ₓf`` in any array library, instead of ``f`` (pass
        ``f=None``); ``F`` then runs in its inputs' namespace (the built-in projections
        do), and :func:`custom_root` needs a VJP for it: ``vjp=``, or the next two.
    hvp, projection_vjp : callable, optional
        Together, with ``grad``: ``hvp(x, theta, w) -> ((∇²ₓₓf) w, θ̄₁, …, θ̄ₖ)`` (the VJP
        of ``∇ₓf``, as for :func:`stationarity`) and ``projection_vjp(z, u, *theta) ->
        J_P(z)ᵀu`` (e.g. ``u * (z > 0)`` for the nonnegative orthant, ``u`` masked to
        ``lower < z < upper`` for a box). ``F`` then carries ``F.vjp``: with
        ``w = J_P(z)ᵀu`` at ``z = x − η∇f``, ``x̄ = u − w + η∇²f w`` and
        ``θ̄ᵢ = η(∂θᵢ∇f)ᵀw``; a set that depends on θ is not differentiated this way
        (write ``vjp=`` for :func:`custom_root` instead).

    Returns
    -------
    F : callable
        ``F(x, *theta) = x − projection(x − η∇ₓf(x, *theta), *theta)``.

    See Also
    --------
    diffsolve.implicit.proximal_gradient_fixed_point : With a proximal operator instead.
    diffsolve.implicit.projection_box : A projection to pass.
    diffsolve.implicit.projection_simplex : A projection to pass.
    diffsolve.implicit.custom_root : Differentiate a solver through the fixed point.

    Examples
    --------
    >>> import numpy as np, autograd.numpy as anp
    >>> from diffsolve.implicit import projected_gradient_fixed_point, projection_nonnegative
    >>> F = projected_gradient_fixed_point(lambda x, a: anp.sum((x - a) ** 2),
    ...                                    lambda y, a: projection_nonnegative(y), 0.5)
    >>> F(np.array([0.0, 2.0]), np.array([-1.0, 2.0]))   # x* = max(a, 0)
    array([0., 0.])
    """
    where = "diffsolve.implicit.projected_gradient_fixed_point"
    grad_f = _gradient(where, f, grad)
    _check_callable(where, "projection", projection)
    eta = V.positive_real(where, "stepsize", stepsize)
    if (hvp is None) != (projection_vjp is None) or (hvp is not None and grad is None):
        raise TypeError(f"{where}: hvp= and projection_vjp= go together, with grad= (the "
                        "VJP of F needs all three)")
    for name, fn in (("hvp", hvp), ("projection_vjp", projection_vjp)):
        if fn is not None:
            _check_callable(where, name, fn)

    def F(x, *theta):
        if grad is None:
            _require_numpy(x, where)
        return x - projection(x - eta * grad_f(x, *theta), *theta)

    if hvp is not None:
        def vjp(x, theta):
            z = x - eta * grad_f(x, *theta)
            value = x - projection(z, *theta)

            def vjp_fn(u):
                # F = x − P(z), z = x − η∇f:  Fᵀ-products through w = J_P(z)ᵀu
                w = projection_vjp(z, u, *theta)  # type: ignore[misc]  # given with hvp
                hw, *theta_bars = hvp(x, tuple(theta), w)
                return (u - w + eta * hw,
                        *(None if t is None else eta * t for t in theta_bars))

            return value, vjp_fn

        F.vjp = vjp  # type: ignore[attr-defined]  # custom_root reads it
    return F


def kkt_conditions(f: Callable, n: int, eq: Callable | None = None,
                   ineq: Callable | None = None) -> Callable:
    """The KKT conditions of ``min_x f(x, *θ)`` subject to ``eq(x, *θ) = 0, ineq(x, *θ) <= 0``.

    The primal-dual variable is **one stacked vector** ``z = [x, ν, λ]``: ``x`` (size
    ``n``), the multipliers ``ν`` of the ``p`` equality constraints, then the multipliers
    ``λ >= 0`` of the ``m`` inequality constraints (``p``, ``m`` are the sizes of
    ``eq``'s and ``ineq``'s outputs). A solver decorated with
    ``custom_root(kkt_conditions(...))`` returns that ``z`` (e.g.
    ``np.concatenate([x, nu, lam])``).

    Parameters
    ----------
    f : callable
        ``f(x, *theta) -> scalar`` (``autograd.numpy``); x is 1-D of size ``n``.
    n : int
        The number of primal variables.
    eq, ineq : callable, optional
        ``eq(x, *theta) -> (p,)`` and ``ineq(x, *theta) -> (m,)`` (``autograd.numpy``).

    Returns
    -------
    F : callable
        ``F(z, *theta) = [∇f + J_eqᵀν + J_ineqᵀλ, eq(x), λ ⊙ ineq(x)]`` (stationarity,
        primal feasibility, complementary slackness), a vector of z's size. Primal and
        dual feasibility inequalities are not equations and are left out, as usual: the
        gradient is that of the active set at the solution (strict complementarity
        assumed). ``∂F/∂z`` is not symmetric: use ``solve="gmres"`` (default).

    See Also
    --------
    diffsolve.implicit.stationarity : Without constraints.
    diffsolve.implicit.projected_gradient_fixed_point : Simple constraint sets by projection.
    diffsolve.implicit.custom_root : Differentiate a solver through these conditions.

    Examples
    --------
    >>> import numpy as np, autograd.numpy as anp
    >>> from diffsolve.implicit import kkt_conditions
    >>> F = kkt_conditions(lambda x, c: anp.sum((x - c) ** 2), n=2,
    ...                    eq=lambda x, c: anp.array([anp.sum(x) - 1.0]))
    >>> F(np.array([0.0, 1.0, 2.0]), np.array([1.0, 2.0]))   # x = (0, 1), ν = 2
    array([0., 0., 0.])
    """
    where = "diffsolve.implicit.kkt_conditions"
    _check_callable(where, "f", f)
    n = V.positive_int(where, "n (the number of primal variables)", n)
    for name, fn in (("eq", eq), ("ineq", ineq)):
        if fn is not None:
            _check_callable(where, name, fn)

    def constraint(fn, name, x, theta):
        c = fn(x, *theta)
        if getattr(c, "ndim", None) != 1:
            raise ValueError(f"{where}: {name}(x, *theta) must return a 1-D array (one entry "
                             f"per constraint), got {type(getval(c)).__name__} of shape "
                             f"{getattr(c, 'shape', ())}")
        return c

    def F(z, *theta):
        _require_numpy(z, where)
        if getattr(z, "ndim", None) != 1 or z.shape[0] < n:
            raise ValueError(f"{where}: z must be the stacked vector [x, ν, λ] of size >= "
                             f"n={n}, got shape {tuple(z.shape)}")
        x = z[:n]
        h = constraint(eq, "eq", x, theta) if eq is not None else None
        g = constraint(ineq, "ineq", x, theta) if ineq is not None else None
        p = 0 if h is None else h.shape[0]
        m = 0 if g is None else g.shape[0]
        if z.shape[0] != n + p + m:
            raise ValueError(
                f"{where}: z has {z.shape[0]} entries, but [x, ν, λ] has n + p + m = {n} + "
                f"{p} + {m} = {n + p + m} (n primal variables, p equality and m inequality "
                "constraints); stack exactly x, the equality multipliers, then the "
                "inequality multipliers"
            )
        nu, lam = z[n:n + p], z[n + p:]

        def lagrangian(x_):
            value = f(x_, *theta)
            if eq is not None:
                value = value + anp.dot(nu, eq(x_, *theta))
            if ineq is not None:
                value = value + anp.dot(lam, ineq(x_, *theta))
            return value

        parts = [autograd.grad(lagrangian)(x)]
        if h is not None:
            parts.append(h)
        if g is not None:
            parts.append(lam * g)
        return anp.concatenate(parts)

    return F
