"""Euclidean projections onto simple sets: box, ball, simplex, nonnegative orthant.

They serve the projected-gradient optimality condition
(:func:`~diffsolve.implicit.projected_gradient_fixed_point`) and projected first-order
methods. Each is written with the few functions NumPy's, autograd's and the array API's
namespaces share (:func:`~._user_vjp.namespace`), so the same code projects NumPy, CuPy
or array_api_strict arrays and is traced by HIPS autograd when implicit differentiation
needs its Jacobian (almost everywhere: the projections are piecewise linear). The input is
treated as one vector (every entry), whatever its shape.

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
from ._user_vjp import namespace

__all__ = ["projection_ball", "projection_box", "projection_nonnegative", "projection_simplex"]


def _check_positive(where, name, value):
    raw = getval(value)
    if B.is_array(raw):
        xp = B.array_namespace(raw)
        ok = bool(xp.all(raw > 0)) and B.isfinite_all(xp, raw)
    else:
        ok = isinstance(raw, numbers.Real) and not isinstance(raw, bool) and \
            math.isfinite(raw) and raw > 0
    if not ok:
        raise ValueError(f"{where}: {name} must be a finite number > 0 (the set would be empty "
                         f"or a point), got {raw!r}")


def projection_nonnegative(x):
    """Project onto the nonnegative orthant: ``max(x, 0)`` entrywise.

    Parameters
    ----------
    x : array

    Returns
    -------
    array
        x's shape, namespace and dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from diffsolve.implicit import projection_nonnegative
    >>> projection_nonnegative(np.array([-1.0, 0.5, 2.0]))
    array([0. , 0.5, 2. ])
    """
    xp = namespace(x, where="diffsolve.implicit.projection_nonnegative")
    return xp.where(x > 0, x, 0.0)


def projection_box(x, lower, upper):
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

    Examples
    --------
    >>> import numpy as np
    >>> from diffsolve.implicit import projection_box
    >>> projection_box(np.array([-2.0, 0.3, 5.0]), 0.0, 1.0)
    array([0. , 0.3, 1. ])
    """
    where = "diffsolve.implicit.projection_box"
    xp = namespace(x, lower, upper, where=where)
    lo, hi = getval(lower), getval(upper)
    empty = (lo > hi) if not (B.is_array(lo) or B.is_array(hi)) else \
        bool(B.array_namespace(lo, hi).any(lo > hi))
    if empty:
        raise ValueError(f"{where}: lower > upper somewhere, so the box is empty; pass bounds "
                         "with lower <= upper")
    # where() rather than clip(): autograd's clip does not differentiate the bounds
    y = xp.where(x < lower, lower, x)
    return xp.where(y > upper, upper, y)


def projection_ball(x, radius=1.0):
    """Project onto the Euclidean ball ``||x|| <= radius`` (x taken as one vector).

    Parameters
    ----------
    x : array
    radius : float > 0

    Returns
    -------
    array

    Examples
    --------
    >>> import numpy as np
    >>> from diffsolve.implicit import projection_ball
    >>> projection_ball(np.array([3.0, 4.0]), radius=1.0)
    array([0.6, 0.8])
    """
    where = "diffsolve.implicit.projection_ball"
    xp = namespace(x, radius, where=where)
    _check_positive(where, "radius", radius)
    norm = xp.sqrt(xp.sum(x * x))
    # radius / max(norm, radius) is 1 inside the ball and never divides by zero
    return x * (radius / xp.maximum(norm, radius))


def projection_simplex(x, value=1.0):
    """Project onto the simplex ``{y >= 0, sum(y) = value}`` (x taken as one vector).

    Parameters
    ----------
    x : array
    value : float > 0
        The sum of the projected entries.

    Returns
    -------
    array

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
    xp = namespace(x, value, where=where)
    _check_positive(where, "value", value)
    raw = getval(x)
    rxp = B.array_namespace(raw, where=where)
    v = float(getval(value))
    flat = rxp.reshape(raw, (-1,))
    u = rxp.sort(flat, descending=True)
    css = rxp.cumulative_sum(u)
    k = rxp.astype(rxp.arange(1, flat.shape[0] + 1, device=B.device(raw)), raw.dtype)
    rho = int(rxp.sum(rxp.astype(u - (css - v) / k > 0, rxp.int64)))
    tau_raw = (css[rho - 1] - v) / rho
    support = raw > tau_raw
    count = int(rxp.sum(rxp.astype(support, rxp.int64)))
    # the threshold as an average over the support: the same number, but autograd now
    # sees how it moves with x and value
    tau = (xp.sum(xp.where(support, x, 0.0)) - value) / count
    return xp.where(support, x - tau, 0.0)
