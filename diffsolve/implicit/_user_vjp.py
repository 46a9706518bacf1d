"""Products with the Jacobians of a user function: HIPS autograd by default, or the user's own.

Implicit differentiation needs only products with the Jacobians of the optimality function
``F(x, *theta)`` at the solution: ``(∂F/∂x)ᵀ u`` (every iteration of the implicit linear
solve), ``(∂F/∂θᵢ)ᵀ u`` (once, at the end) and, for the normal equations only,
``(∂F/∂x) w``. :func:`linearize` packages them as a :class:`Linearization`.

* Default: HIPS autograd traces ``F`` once with respect to ``x`` and reuses the trace for
  every product (one backward pass each). ``(∂F/∂x) w`` comes from differentiating that
  backward pass once more (reverse over reverse): the map ``u ↦ (∂F/∂x)ᵀ u`` is linear, so
  its own VJP, traced once at any point, is ``w ↦ (∂F/∂x) w``. Autograd works on NumPy.
* ``vjp=(x, theta) -> (F(x, *theta), vjp_fn)`` with ``vjp_fn(u) -> (x̄, θ̄₁, …, θ̄ₖ)``:
  the shape of ``jax.vjp(F, x, *theta)``, so any library (CuPy, array_api_strict, torch,
  JAX) can supply it. ``jvp=(x, theta) -> (F(x, *theta), jvp_fn)`` with
  ``jvp_fn(w) = (∂F/∂x) w`` (the shape of ``jax.linearize``) is needed only by
  ``solve="normal-cg"``.

:func:`namespace` is the array namespace for small building blocks (projections) that
must work both on plain arrays of any library and on autograd's boxes while autograd
traces them.
"""

from __future__ import annotations

from collections.abc import Callable

import autograd.numpy as anp
from autograd.tracer import Box, getval

from .. import _backend as B
from .._user_function import traced_vjp

__all__ = ["Linearization", "autograd_vjp", "is_differentiable_numpy", "linearize", "namespace"]


def namespace(*xs, where: str = "diffsolve"):
    """``autograd.numpy`` while autograd traces any of ``xs``, else their array namespace.

    Building blocks written with the functions common to both (``where``, ``sum``,
    ``sqrt``, ``clip``, ``zeros_like``, ``maximum``, ``minimum``) then serve plain arrays of
    every library and autograd's tracing alike.
    """
    if any(isinstance(x, Box) for x in xs):
        return anp
    return B.array_namespace(*xs, where=where)


def is_differentiable_numpy(x) -> bool:
    """A floating NumPy array (or autograd box of one): what autograd differentiates."""
    x = getval(x)
    return B.is_array(x) and B.is_numpy(B.array_namespace(x)) and \
        B.array_namespace(x).isdtype(x.dtype, "real floating")


# what a user can do when autograd cannot see through an optimality function
F_WAYS_OUT = ("or pass vjp=(x, theta) -> (F(x, *theta), vjp_fn) with the products written "
              "out (any array library), or write F with torch / jax.numpy and pass its VJP "
              "(e.g. vjp=lambda x, theta: jax.vjp(F, x, *theta))")


def autograd_vjp(fun: Callable, *args, argnum=0, where: str = "diffsolve.implicit",
                 what: str = "a user function", ways_out: str = F_WAYS_OUT, name=None):
    """``(vjp_fn, value)`` of ``fun`` at ``args`` by autograd, checked for tracing holes.

    :func:`diffsolve._user_function.traced_vjp` with the differentiated arguments traced
    jointly: a function written with plain NumPy (``np.dot``, ``np.array([...])``) whose
    dependence autograd cannot see raises :class:`~diffsolve.NotTraceableError` naming it
    (``name``: the user's function, when ``fun`` is a wrapper around it) instead of giving
    a zero or partial VJP; a function that really is constant in an argument gets the zero
    VJP, and autograd's warning is passed on, never silenced.
    """
    return traced_vjp(fun, args, argnum, where=where, what=what, ways_out=ways_out, name=name)


def _check_value(value, x, where):
    if not B.is_array(value):
        raise TypeError(
            f"{where}: the optimality function F returned a {type(value).__name__}; "
            f"F(x, *theta) must return an array of x's shape {tuple(x.shape)}"
        )
    if tuple(value.shape) != tuple(x.shape):
        raise ValueError(
            f"{where}: the optimality function F returned shape {tuple(value.shape)}, but the "
            f"solution x has shape {tuple(x.shape)}; F(x, *theta) must return one equation "
            "per unknown, an array of x's shape (stack several conditions into one vector, "
            "as diffsolve.implicit.kkt_conditions does)"
        )


class Linearization:
    """``F`` at ``(x, theta)`` with products by its Jacobians (see the module docstring).

    Attributes
    ----------
    value : array
        ``F(x, *theta)``, x's shape (checked).
    """

    def __init__(self, value, x, theta, rmatvec_x, rmatvec_theta, matvec_x, where):
        _check_value(value, x, where)
        self.value = value
        self.x = x
        self.theta = theta
        self._rmatvec_x = rmatvec_x
        self._rmatvec_theta = rmatvec_theta
        self._matvec_x = matvec_x
        self.where = where
        self.xp = B.array_namespace(x, where=where)

    def _cast(self, g, name):
        if g is None:  # autograd's VJP of an unused input can be None in user rules
            return self.xp.zeros_like(self.x)
        if tuple(g.shape) != tuple(self.x.shape):
            raise ValueError(
                f"{self.where}: {name} returned shape {tuple(g.shape)}, expected x's shape "
                f"{tuple(self.x.shape)}"
            )
        return g if g.dtype == self.x.dtype else self.xp.astype(g, self.x.dtype)

    def rmatvec_x(self, u):
        """``(∂F/∂x)ᵀ u`` (x's shape)."""
        return self._cast(self._rmatvec_x(u), "the VJP of F with respect to x")

    def matvec_x(self, w):
        """``(∂F/∂x) w`` (x's shape); needs a ``jvp=`` when ``vjp=`` was given."""
        return self._cast(self._matvec_x(w), "the JVP of F with respect to x")

    def rmatvec_theta(self, u) -> tuple:
        """``((∂F/∂θ₁)ᵀ u, …)``: one entry per θ, ``None`` where θ is not differentiated."""
        return self._rmatvec_theta(u)


def linearize(F: Callable, x, theta: tuple, *, vjp: Callable | None = None,
              jvp: Callable | None = None, where: str = "diffsolve.implicit") -> Linearization:
    """Linearize ``F`` at ``(x, theta)`` with autograd (default) or the user's ``vjp``/``jvp``.

    Parameters
    ----------
    F : callable
        ``F(x, *theta) -> array`` of x's shape.
    x : array
    theta : tuple
        The other arguments of ``F``; with autograd, floating NumPy arrays among them are
        differentiated and everything else is held fixed.
    vjp, jvp : callable, optional
        See the module docstring.
    where : str
        The caller, for error messages.

    Returns
    -------
    Linearization

    Examples
    --------
    >>> import numpy as np
    >>> from diffsolve.implicit._user_vjp import linearize
    >>> lin = linearize(lambda x, a: a * x ** 2, np.array([1.0, 2.0]), (np.array([3.0, 1.0]),))
    >>> lin.rmatvec_x(np.ones(2)), lin.rmatvec_theta(np.ones(2))
    (array([6., 4.]), (array([1., 4.]),))
    """
    xp = B.array_namespace(x, where=where)
    if vjp is not None:
        return _linearize_user(F, x, theta, vjp, jvp, where)
    if not B.is_numpy(xp):
        raise TypeError(
            f"{where}: the default VJP of the optimality function uses HIPS autograd, which "
            f"differentiates NumPy code only, but x is a {xp.__name__} array; pass "
            "vjp=(x, theta) -> (F(x, *theta), vjp_fn) written for that library (e.g. "
            "lambda x, theta: jax.vjp(F, x, *theta) for a JAX F)"
        )
    theta = tuple(theta)
    diff = [i for i, t in enumerate(theta) if is_differentiable_numpy(t)]
    name = getattr(F, "__name__", "F")
    what = "the optimality function F"

    def F_x(x_):
        return F(x_, *theta)

    vjp_x, value = autograd_vjp(F_x, x, where=where, what=what, name=name)
    state: dict = {}
    if diff:
        # x and every differentiated θ traced jointly: an F that hides its dependence on
        # one of them behind plain NumPy is refused here, before any product is used
        def F_joint(x_, *ts):
            full = list(theta)
            for i, t in zip(diff, ts):
                full[i] = t
            return F(x_, *full)

        state["theta"] = autograd_vjp(F_joint, x, *(theta[i] for i in diff),
                                      argnum=tuple(range(1 + len(diff))), where=where,
                                      what=what, name=name)[0]

    def rmatvec_theta(u):
        if not diff:
            return (None,) * len(theta)
        grads = state["theta"](u)[1:]
        out = [None] * len(theta)
        for i, g in zip(diff, grads):
            # autograd returns NumPy scalars for 0-d inputs; give back θ's type and dtype
            out[i] = xp.astype(xp.asarray(g), theta[i].dtype)
        return tuple(out)

    def matvec_x(w):
        if "x" not in state:
            # u ↦ (∂F/∂x)ᵀu is linear, so its VJP (traced once, at any u) is w ↦ (∂F/∂x) w
            state["x"] = autograd_vjp(vjp_x, anp.ones_like(x), where=where,
                                      what="the VJP of the optimality function F")[0]
        return state["x"](w)

    return Linearization(value, x, theta, vjp_x, rmatvec_theta, matvec_x, where)


def _linearize_user(F, x, theta, vjp, jvp, where):
    out = vjp(x, tuple(theta))
    if not (isinstance(out, tuple) and len(out) == 2 and callable(out[1])):
        raise TypeError(
            f"{where}: vjp(x, theta) must return a pair (F(x, *theta), vjp_fn) with "
            f"vjp_fn(u) -> (x̄, θ̄₁, …, θ̄ₖ), got {type(out).__name__}"
        )
    value, vjp_fn = out
    n_theta = len(theta)

    def call(u):
        grads = vjp_fn(u)
        if not isinstance(grads, (tuple, list)) or len(grads) != 1 + n_theta:
            got = len(grads) if isinstance(grads, (tuple, list)) else type(grads).__name__
            raise TypeError(
                f"{where}: vjp_fn(u) must return a tuple of {1 + n_theta} cotangents (x̄ and one "
                f"per θ, None for a θ that is not differentiated), got {got}"
            )
        return grads

    def matvec_x(w):
        if jvp is None:
            raise ValueError(
                f"{where}: solve='normal-cg' needs products (∂F/∂x) w; with a user vjp= "
                "also pass jvp=(x, theta) -> (F(x, *theta), jvp_fn), or use solve='gmres', "
                "which needs VJPs only"
            )
        if "jvp" not in state:
            out = jvp(x, tuple(theta))
            if not (isinstance(out, tuple) and len(out) == 2 and callable(out[1])):
                raise TypeError(
                    f"{where}: jvp(x, theta) must return a pair (F(x, *theta), jvp_fn) with "
                    f"jvp_fn(w) = (∂F/∂x) w, got {type(out).__name__}"
                )
            state["jvp"] = out[1]
        return state["jvp"](w)

    state: dict = {}
    return Linearization(value, x, tuple(theta), lambda u: call(u)[0],
                         lambda u: tuple(call(u)[1:]), matvec_x, where)
