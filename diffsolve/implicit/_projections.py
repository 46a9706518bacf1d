"""Euclidean projections onto simple sets: box, ball, simplex, nonnegative orthant.

They serve the projected-gradient optimality condition
(:func:`~diffsolve.implicit.projected_gradient_fixed_point`) and projected first-order
methods. Each is written with the few functions NumPy's, autograd's and the array API's
namespaces share (:func:`~._user_vjp.namespace`), so the same code projects NumPy, CuPy
or array_api_strict arrays and is traced by HIPS autograd when implicit differentiation
needs its Jacobian (almost everywhere: the projections are piecewise linear). The input is
treated as one vector (every entry), whatever its shape.

Inputs follow diffsolve's array policy (float32/float64 kept, integers promoted to
float64, float16/bool/complex refused), except that NaN and inf are allowed and propagate:
a NaN entry gives NaN where the projection depends on it (that entry for the box and the
orthant, every entry for the ball and the simplex, whose norm or threshold couples them).
The ball and the simplex are computed on rescaled or shifted values, so that their
results stay on the set at any scale (entries of 1e300 in float64, 1e9 in float32).

Reference for the simplex: Duchi, Shalev-Shwartz, Singer & Chandra, "Efficient Projections
onto the l1-Ball for Learning in High Dimensions" (ICML 2008), Fig. 1 (sort-based). The
threshold is found on plain values and then re-expressed as an average over the support,
so that autograd sees its dependence on x (and on ``value``).
"""

from __future__ import annotations

import math
import numbers

from autograd.tracer import getval

from .. import _backend as B
from .. import _validate as V
from .._typing import Array, ArrayLike
from ._user_vjp import namespace

__all__ = ["projection_ball", "projection_box", "projection_nonnegative", "projection_simplex"]


def _check_input(where, x, *, allow_empty=True):
    """The one array policy for the vector to project (NaN/inf allowed: they propagate).

    Under autograd tracing ``x`` is a box over a float array, which passes as it is;
    otherwise :func:`diffsolve._validate.float_array` (float32/float64 kept, integers
    promoted to float64, float16/bool/complex and non-arrays refused).
    """
    if getval(x) is not x:
        return x
    return V.float_array(where, "x", x, allow_empty=allow_empty, finite=False)


def _check_positive(where, name, value) -> float:
    """A finite number ``> 0`` (or 0-d array: it may be an autograd box) as a float."""
    raw = getval(value)
    if B.is_array(raw):
        if tuple(raw.shape) != ():
            raise ValueError(f"{where}: {name} must be a number > 0 (or a 0-d array), got an "
                             f"array of shape {tuple(raw.shape)}")
        raw = raw.item() if hasattr(raw, "item") else float(raw)
    return V.positive_real(where, name, raw)


def projection_nonnegative(x: Array) -> Array:
    """Project onto the nonnegative orthant: ``max(x, 0)`` entrywise.

    Parameters
    ----------
    x : array

    Returns
    -------
    array
        x's shape, namespace and dtype.

    See Also
    --------
    diffsolve.implicit.projection_box : Another convex set.
    diffsolve.implicit.projection_ball : Another convex set.
    diffsolve.implicit.projection_simplex : Another convex set.
    diffsolve.implicit.projected_gradient_fixed_point : Uses a projection as ``T``.

    Examples
    --------
    >>> import numpy as np
    >>> from diffsolve.implicit import projection_nonnegative
    >>> projection_nonnegative(np.array([-1.0, 0.5, 2.0]))
    array([0. , 0.5, 2. ])
    """
    where = "diffsolve.implicit.projection_nonnegative"
    x = _check_input(where, x)
    xp = namespace(x, where=where)
    # x < 0 (not x > 0) picks the zeros, so that a NaN entry stays NaN
    return xp.where(x < 0, 0.0, x)


def projection_box(x: Array, lower: ArrayLike, upper: ArrayLike) -> Array:
    """Project onto the box ``lower <= x <= upper`` (entrywise).

    Parameters
    ----------
    x : array
    lower, upper : float or array broadcastable to x
        Bounds with ``lower <= upper`` everywhere (``-inf`` / ``inf`` allowed). The result
        is differentiable in the bounds too (where they are active).

    Returns
    -------
    array

    Raises
    ------
    ValueError
        When some ``lower > upper`` (the box is empty).

    See Also
    --------
    diffsolve.implicit.projection_nonnegative : Another convex set.
    diffsolve.implicit.projection_ball : Another convex set.
    diffsolve.implicit.projection_simplex : Another convex set.
    diffsolve.implicit.projected_gradient_fixed_point : Uses a projection as ``T``.

    Examples
    --------
    >>> import numpy as np
    >>> from diffsolve.implicit import projection_box
    >>> projection_box(np.array([-2.0, 0.3, 5.0]), 0.0, 1.0)
    array([0. , 0.3, 1. ])
    """
    where = "diffsolve.implicit.projection_box"
    x = _check_input(where, x)
    xp = namespace(x, lower, upper, where=where)
    lo, hi = getval(lower), getval(upper)
    if B.is_array(lo) or B.is_array(hi):
        bxp = B.array_namespace(*(b for b in (lo, hi) if B.is_array(b)))
        nan = any(B.is_array(b) and bool(bxp.any(bxp.isnan(b))) for b in (lo, hi))
        empty = bool(bxp.any(lo > hi))
    else:
        for name, b in (("lower", lo), ("upper", hi)):
            if isinstance(b, bool) or not isinstance(b, numbers.Real):
                raise TypeError(f"{where}: {name} must be a number or an array broadcastable "
                                f"to x, got {type(b).__name__}")
        nan = math.isnan(float(lo)) or math.isnan(float(hi))
        empty = lo > hi
    if nan:
        raise ValueError(f"{where}: lower or upper contains NaN; pass real bounds (-inf and "
                         "inf are allowed)")
    if empty:
        raise ValueError(f"{where}: lower > upper somewhere, so the box is empty; pass bounds "
                         "with lower <= upper")
    # where() rather than clip(): autograd's clip does not differentiate the bounds
    y = xp.where(x < lower, lower, x)
    return xp.where(y > upper, upper, y)


def projection_ball(x: Array, radius: float = 1.0) -> Array:
    """Project onto the Euclidean ball ``||x|| <= radius`` (x taken as one vector).

    Parameters
    ----------
    x : array
    radius : float > 0

    Returns
    -------
    array

    See Also
    --------
    diffsolve.implicit.projection_nonnegative : Another convex set.
    diffsolve.implicit.projection_box : Another convex set.
    diffsolve.implicit.projection_simplex : Another convex set.
    diffsolve.implicit.projected_gradient_fixed_point : Uses a projection as ``T``.

    Examples
    --------
    >>> import numpy as np
    >>> from diffsolve.implicit import projection_ball
    >>> projection_ball(np.array([3.0, 4.0]), radius=1.0)
    array([0.6, 0.8])
    """
    where = "diffsolve.implicit.projection_ball"
    x = _check_input(where, x)
    xp = namespace(x, radius, where=where)
    r = _check_positive(where, "radius", radius)
    raw = getval(x)
    rxp = B.array_namespace(raw, where=where)
    if math.prod(tuple(raw.shape)) == 0:
        return x
    # ||x|| = s ||x / s|| with s = max|x| (a constant to autograd: the identity is exact),
    # so that squares neither overflow (|x| > 1e154 in float64, 1e19 in float32, where the
    # norm would be inf and the projection 0) nor underflow
    s = float(rxp.max(rxp.abs(raw)))
    if not math.isfinite(s):  # NaN or inf entries: no direction to project along
        return x * float("nan")
    if s == 0.0:
        return x
    xs = x / s
    ns = xp.sqrt(xp.sum(xs * xs))  # in [1, sqrt(n)]: its derivatives are tame too
    if float(getval(ns)) <= r / s:  # inside the ball (r / s may overflow to inf: inside)
        return x
    return xs * (radius / ns)


def projection_simplex(x: Array, value: float = 1.0) -> Array:
    """Project onto the simplex ``{y >= 0, sum(y) = value}`` (x taken as one vector).

    Parameters
    ----------
    x : array
    value : float > 0
        The sum of the projected entries.

    Returns
    -------
    array

    See Also
    --------
    diffsolve.implicit.projection_nonnegative : Another convex set.
    diffsolve.implicit.projection_box : Another convex set.
    diffsolve.implicit.projection_ball : Another convex set.
    diffsolve.implicit.projected_gradient_fixed_point : Uses a projection as ``T``.

    Examples
    --------
    >>> import numpy as np
    >>> from diffsolve.implicit import projection_simplex
    >>> projection_simplex(np.array([0.5, 2.0, -1.0]))
    array([0., 1., 0.])
    >>> projection_simplex(np.array([0.2, 0.3, 0.1]))
    array([0.33333333, 0.43333333, 0.23333333])
    """
    where = "diffsolve.implicit.projection_simplex"
    x = _check_input(where, x, allow_empty=False)
    xp = namespace(x, value, where=where)
    v = _check_positive(where, "value", value)
    raw = getval(x)
    rxp = B.array_namespace(raw, where=where)
    if not B.isfinite_all(rxp, raw):
        # the threshold couples every entry: one NaN or inf leaves none of them defined
        return x * float("nan")
    # the projection commutes with shifts (P(x + c) = P(x) on the simplex's affine hull),
    # so work on z = x - max(x): the largest z is 0, the first sorted test below always
    # holds (rho >= 1), and sums of huge entries do not swallow v (1e9 in float32)
    shift = float(rxp.max(raw))
    flat = rxp.reshape(raw - shift, (-1,))
    u = rxp.sort(flat, descending=True)
    css = rxp.cumulative_sum(u)
    k = rxp.astype(rxp.arange(1, flat.shape[0] + 1, device=B.device(raw)), raw.dtype)
    rho = int(rxp.sum(rxp.astype(u - (css - v) / k > 0, rxp.int64)))
    tau_raw = (css[rho - 1] - v) / rho
    support = (raw - shift) > tau_raw
    count = int(rxp.sum(rxp.astype(support, rxp.int64)))
    # the threshold as an average over the support: the same number, but autograd now
    # sees how it moves with x and value
    z = x - shift
    tau = (xp.sum(xp.where(support, z, 0.0)) - value) / count
    return xp.where(support, z - tau, 0.0)
