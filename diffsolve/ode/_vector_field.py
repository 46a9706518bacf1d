"""The user's vector field ``f(t, y, params)`` and its vector–Jacobian product.

Where the VJP comes from, in order: the ``vjp=`` callable if given; otherwise HIPS
autograd traces ``f`` (NumPy states, ``f`` written with ``autograd.numpy``). A Numba
``@njit`` ``f`` or a CuPy state needs ``vjp=``. :func:`from_torch` and :func:`from_jax`
turn a function written in PyTorch or JAX into an ``(f, vjp)`` pair.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .. import _backend as B
from .._typing import Array

#: ``f(t, y, params) -> dy/dt`` on NumPy/CuPy arrays
VectorField = Callable[[float, Array, Array], Array]
#: ``vjp(t, y, params, v) -> (vᵀ ∂f/∂y, vᵀ ∂f/∂params or None without params)``
VectorFieldVJP = Callable[[float, Array, Array, Array], tuple[Array, Array | None]]

__all__ = ["from_jax", "from_torch", "make_rhs", "make_vjp"]

WHERE = "diffsolve.ode.odeint"


def _describe(out) -> str:
    shape = getattr(out, "shape", None)
    if shape is None:
        return f"a {type(out).__name__}"
    return f"an array of shape {tuple(shape)}"


def make_rhs(f, params, shape, xp):
    """``rhs(t, y_flat) -> dy/dt flat``: calls ``f`` in the user's shape and checks it."""
    shape = tuple(shape)
    n = math.prod(shape)
    flat = shape != (n,)
    if flat:
        def rhs(t, y):
            out = f(t, xp.reshape(y, shape), params)
            if getattr(out, "shape", None) != shape:
                _bad_shape(out, t, shape)
            return xp.reshape(out, (n,))
    else:
        def rhs(t, y):
            out = f(t, y, params)
            if getattr(out, "shape", None) != shape:
                _bad_shape(out, t, shape)
            return out
        # the step loop may call f directly (and this rhs only to report a bad shape)
        rhs.direct, rhs.params, rhs.shape = f, params, shape  # type: ignore[attr-defined]
    return rhs


def _bad_shape(out, t, shape):
    raise ValueError(
        f"{WHERE}: f(t, y, params) returned {_describe(out)} at t={t!r}; it must return "
        f"dy/dt as an array of y's shape {shape} in y's array library"
    )


def make_vjp(f, vjp, params, shape, xp, jitted: bool):
    """``fvjp(t, y_flat, v_flat) -> (v_y flat, v_params or None)``."""
    shape = tuple(shape)
    n = math.prod(shape)
    flat = shape != (n,)

    def unflat(a):
        return xp.reshape(a, shape) if flat else a

    def reflat(a):
        return xp.reshape(a, (n,)) if flat else a

    if vjp is not None:
        def fvjp(t, y, v):
            out = vjp(t, unflat(y), params, unflat(v))
            if not isinstance(out, tuple) or len(out) != 2:
                raise TypeError(
                    f"{WHERE}: vjp(t, y, params, v) must return a tuple (v_y, v_params), "
                    f"got {type(out).__name__}"
                )
            vy, vp = out
            if getattr(vy, "shape", None) != shape:
                raise ValueError(f"{WHERE}: vjp returned v_y as {_describe(vy)} at t={t!r}; "
                                 f"expected y's shape {shape}")
            return reflat(vy), vp
        return fvjp
    if jitted:
        def fvjp(t, y, v):
            raise TypeError(
                f"{WHERE}: f is a Numba @njit function, which autograd cannot trace; pass "
                "vjp=vjp(t, y, params, v) -> (v_y, v_params) (it may be @njit too), or "
                "write f with autograd.numpy for the default VJP"
            )
        return fvjp
    if not B.is_numpy(xp):
        def fvjp(t, y, v):
            raise TypeError(
                f"{WHERE}: the default VJP uses HIPS autograd, which works on NumPy only; "
                f"for {xp.__name__} arrays pass vjp=vjp(t, y, params, v) -> (v_y, v_params)"
            )
        return fvjp
    from autograd import make_vjp as ag_make_vjp

    from .._user_function import traced_vjp

    # The first VJP of a solve is traced by traced_vjp, which raises NotTraceableError when
    # autograd cannot see how f depends on (y, params) (f written with plain NumPy would
    # otherwise give a silently zero gradient); the later ones, with the same f, use
    # autograd directly (its warnings are not silenced either way). traced_vjp records
    # warnings around each trace, which would be a per-stage cost.
    checked: list[bool] = []

    def trace(fun, args, argnums):
        if checked:
            return ag_make_vjp(fun, argnum=argnums)(*args)[0]
        fun.__name__ = getattr(f, "__name__", type(f).__name__)  # named in the error
        vjp_fun, _ = traced_vjp(fun, args, argnums, where=WHERE, what="the vector field f",
                                ways_out=_WAYS_OUT)
        checked.append(True)
        return vjp_fun

    if params is None:
        def fvjp(t, y, v):
            vjp_fun = trace(lambda yy: f(t, yy, None), (unflat(y),), 0)
            return reflat(vjp_fun(unflat(v))), None
    else:
        def fvjp(t, y, v):
            vjp_fun = trace(lambda yy, pp: f(t, yy, pp), (unflat(y), params), (0, 1))
            vy, vp = vjp_fun(unflat(v))
            return reflat(vy), vp
    return fvjp


_WAYS_OUT = ("pass vjp=vjp(t, y, params, v) -> (v_y, v_params) with the products written "
             "out (a Numba @njit f with an @njit vjp runs compiled), or write f in PyTorch "
             "or JAX and pass the pair from diffsolve.ode.from_torch(f) / from_jax(f)")


def from_torch(f: Callable[..., Any]) -> tuple[VectorField, VectorFieldVJP]:
    """Turn ``f(t, y, params)`` written with PyTorch into ``(f_np, vjp_np)`` for odeint.

    ``f_np`` takes and returns NumPy (or CuPy, via DLPack without a copy) arrays;
    ``vjp_np(t, y, params, v)`` runs ``torch.autograd.grad``. Use as
    ``odeint(f_np, y0, t, p, vjp=vjp_np)``.

    Parameters
    ----------
    f : callable
        ``f(t, y, params) -> dy/dt`` on torch tensors (``t`` a Python float).

    Returns
    -------
    f_np : callable
        ``f_np(t, y, params)`` on NumPy or CuPy arrays.
    vjp_np : callable
        ``vjp_np(t, y, params, v) -> (v^T df/dy, v^T df/dparams)``.

    See Also
    --------
    diffsolve.ode.from_jax : The same for JAX.
    diffsolve.ode.odeint : The solver that takes ``f_np`` and ``vjp=vjp_np``.

    Examples
    --------
    >>> import numpy as np
    >>> from diffsolve.ode import from_torch, odeint
    >>> f_np, vjp_np = from_torch(lambda t, y, p: -p * y)
    >>> res = odeint(f_np, np.array([1.0]), np.array([0.0, 1.0]), np.array([2.0]), vjp=vjp_np)
    >>> bool(abs(res.ys[-1, 0] - np.exp(-2.0)) < 1e-6)
    True
    """
    import torch

    ndarray = B.host_namespace().ndarray
    # params is the same array at every call of a solve: its tensor view is made once
    # (a view shares memory, so an in-place change of params is still seen)
    last: list = [None, None]

    def to_t(x):
        if x is None:
            return None
        if type(x) is ndarray and x.flags.writeable and x.flags.c_contiguous:
            return torch.from_numpy(x)  # the same zero-copy view as DLPack, cheaper per call
        return torch.from_dlpack(B.dlpack_exportable(x))

    def p_t(params):
        if params is None:
            return None
        if last[0] is not params:
            last[0], last[1] = params, to_t(params)
        return last[1]

    def back(t_):
        t_ = t_.detach()
        if t_.device.type == "cpu" and not t_.is_conj() and not t_.is_neg():
            return t_.contiguous().numpy()
        return B.from_dlpack(t_.contiguous(), on_cuda=t_.device.type == "cuda")

    def f_np(t, y, params):
        with torch.no_grad():
            return back(f(t, to_t(y), p_t(params)))

    def vjp_np(t, y, params, v):
        yt = to_t(y).detach().requires_grad_(True)
        pt = None if params is None else p_t(params).detach().requires_grad_(True)
        with torch.enable_grad():
            out = f(t, yt, pt)
            inputs = (yt,) if pt is None else (yt, pt)
            grads = torch.autograd.grad(out, inputs, grad_outputs=to_t(v), allow_unused=True)
        vy = grads[0] if grads[0] is not None else torch.zeros_like(yt)
        if pt is None:
            return back(vy), None
        vp = grads[1] if grads[1] is not None else torch.zeros_like(pt)
        return back(vy), back(vp)

    return f_np, vjp_np


def from_jax(f: Callable[..., Any]) -> tuple[VectorField, VectorFieldVJP]:
    """Turn ``f(t, y, params)`` written with JAX into ``(f_np, vjp_np)`` for odeint.

    Both are ``jax.jit``-compiled once; arrays cross as NumPy (host) arrays.

    Parameters
    ----------
    f : callable
        ``f(t, y, params) -> dy/dt`` written with ``jax.numpy``.

    Returns
    -------
    f_np : callable
        ``f_np(t, y, params)`` on NumPy arrays.
    vjp_np : callable
        ``vjp_np(t, y, params, v) -> (v^T df/dy, v^T df/dparams)``.

    See Also
    --------
    diffsolve.ode.from_torch : The same for PyTorch (zero-copy on the GPU).
    diffsolve.ode.odeint : The solver that takes ``f_np`` and ``vjp=vjp_np``.

    Examples
    --------
    >>> import numpy as np
    >>> from diffsolve.ode import from_jax, odeint
    >>> f_np, vjp_np = from_jax(lambda t, y, p: -p * y)
    >>> res = odeint(f_np, np.array([1.0]), np.array([0.0, 1.0]), np.array([2.0]), vjp=vjp_np)
    >>> bool(abs(res.ys[-1, 0] - np.exp(-2.0)) < 1e-6)
    True
    """
    import jax

    f_jit = jax.jit(f)

    @jax.jit
    def _vjp(t, y, params, v):
        _, pull = jax.vjp(lambda yy, pp: f(t, yy, pp), y, params)
        return pull(v)

    @jax.jit
    def _vjp_y(t, y, v):
        _, pull = jax.vjp(lambda yy: f(t, yy, None), y)
        return pull(v)[0]

    def f_np(t, y, params):
        return B.host_numpy(f_jit(t, y, params))

    def vjp_np(t, y, params, v):
        if params is None:
            return B.host_numpy(_vjp_y(t, y, v)), None
        vy, vp = _vjp(t, y, params, v)
        return B.host_numpy(vy), B.host_numpy(vp)

    return f_np, vjp_np
