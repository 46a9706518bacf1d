"""Input validation and marginal-error measures shared by the solvers of :mod:`diffsolve.ot`.

Every OT solver takes ``a`` (..., n), ``b`` (..., m) and ``C`` (..., n, m) with leading
batch dimensions that broadcast against each other. :func:`check_ot_inputs` turns them into
arrays of one real floating dtype, broadcast to a common batch shape, or raises an error
that names the function, the argument, what it received and what would work.
:func:`marginal_error` is the one error function the solvers, the tests and the
benchmarks share, so that "error <= 1e-9" means the same thing everywhere.
"""

from __future__ import annotations

import math

from .. import _backend as B
from .. import _validate as V

__all__ = ["ERROR_MEASURES", "MASS_RTOL", "check_arrays", "check_eps", "check_ot_inputs",
           "marginal_error"]

#: Names accepted by :func:`marginal_error` (``measure=``).
ERROR_MEASURES = ("l1", "l2-pot")

#: Relative tolerance on ``|sum(a) - sum(b)|`` (balanced OT needs equal total mass).
MASS_RTOL = 1e-6


def _shape(x) -> tuple:
    return tuple(int(s) for s in x.shape)


def check_arrays(where: str, **arrays) -> None:
    """Refuse non-arrays (lists, scalars, torch/JAX tensors) by argument name, before the
    namespace lookup (whose error could not say which argument was wrong)."""
    for name, x in arrays.items():
        if x is not None:
            V.array_argument(where, name, x, is_array=B.is_array)


def check_ot_inputs(where: str, a, b, C, xp):
    """Validate and normalise the inputs of a balanced OT problem.

    Parameters
    ----------
    where : str
        The public function name used in error messages, e.g. ``"diffsolve.ot.sinkhorn"``.
    a, b : arrays, shapes (..., n) and (..., m)
        Nonnegative finite marginal weights with equal total mass per problem (relative
        tolerance :data:`MASS_RTOL`). Zero weights are allowed.
    C : array, shape (..., n, m)
        Finite costs.
    xp : namespace
        The array namespace of the inputs (``diffsolve._backend.array_namespace``).

    Returns
    -------
    a, b, C : arrays
        Broadcast to the common batch shape (``batch_shape + (n,)``, ``batch_shape + (m,)``,
        ``batch_shape + (n, m)``) and cast to one real floating dtype (integers promote to
        float64; float32 stays float32). Views where no cast is needed.
    batch_shape : tuple of int
        The broadcast leading dimensions (``()`` for a single problem).

    Raises
    ------
    TypeError
        Non-array inputs (lists, tensors), float16, bool or complex dtypes (the policy of
        :func:`diffsolve._validate.float_array`).
    ValueError
        Shape mismatch, empty problem, negative or non-finite weights, unequal total mass,
        non-finite costs.

    Examples
    --------
    >>> import array_api_compat.numpy as xp
    >>> a, b, C, batch = check_ot_inputs("f", xp.ones(2) / 2, xp.ones(3) / 3, xp.zeros((2, 3)), xp)
    >>> batch, a.dtype
    ((), dtype('float64'))
    """
    # the one input policy of every family (diffsolve._validate.float_array): float32 and
    # float64 kept, integers promoted to float64, float16 / bool / complex / lists refused;
    # finiteness is checked below with OT-specific advice
    a = V.float_array(where, "a", a, min_ndim=1, allow_empty=True, finite=False)
    b = V.float_array(where, "b", b, min_ndim=1, allow_empty=True, finite=False)
    C = V.float_array(where, "C", C, min_ndim=2, allow_empty=True, finite=False)
    n, m = a.shape[-1], b.shape[-1]
    if tuple(C.shape[-2:]) != (n, m):
        raise ValueError(
            f"{where}: C has shape {_shape(C)} but a has {n} entries and b has {m}; C must "
            f"have shape (..., {n}, {m}) (rows follow a, columns follow b)"
        )
    if n == 0 or m == 0 or 0 in _shape(C):
        raise ValueError(f"{where}: empty problem (a {_shape(a)}, b {_shape(b)}, C "
                         f"{_shape(C)}); a and b need at least one entry each (and no batch "
                         "dimension may be 0)")
    try:
        batch_shape = _broadcast_shapes(_shape(a)[:-1], _shape(b)[:-1], _shape(C)[:-2])
    except ValueError:
        raise ValueError(
            f"{where}: the batch dimensions do not broadcast: a {_shape(a)}, b {_shape(b)}, "
            f"C {_shape(C)}; leading dimensions must match or be 1 (a (..., n), b (..., m), "
            "C (..., n, m))"
        ) from None
    dtype = xp.result_type(a.dtype, b.dtype, C.dtype)
    if not xp.isdtype(dtype, "real floating"):
        dtype = xp.float64
    a = xp.broadcast_to(xp.astype(a, dtype, copy=False), (*batch_shape, n))
    b = xp.broadcast_to(xp.astype(b, dtype, copy=False), (*batch_shape, m))
    C = xp.broadcast_to(xp.astype(C, dtype, copy=False), (*batch_shape, n, m))
    for name, w in (("a", a), ("b", b)):
        if not B.isfinite_all(xp, w):
            raise ValueError(f"{where}: {name} contains NaN or infinite entries; weights must "
                             "be finite and >= 0")
        if bool(xp.any(w < 0)):
            raise ValueError(f"{where}: {name} has negative entries (min "
                             f"{float(xp.min(w)):.3g}); weights must be >= 0")
    if not B.isfinite_all(xp, C):
        raise ValueError(f"{where}: C contains NaN or infinite entries; costs must be finite "
                         "(to forbid a pair, use a large finite cost instead of inf)")
    # a total mass near the overflow threshold makes the plan's products and the
    # tolerance overflow (inf tolerances would pass any error): refuse masses above
    # sqrt(max float) (1e154 in float64, 1.8e19 in float32), checked on Python floats
    # before summing so that no overflow warning is raised on the way
    big = math.sqrt(float(xp.finfo(dtype).max))
    if max(float(xp.max(a)) * n, float(xp.max(b)) * m) > big:
        raise ValueError(f"{where}: the total mass of a or b overflows: it exceeds {big:.3g}, "
                         f"the square root of the largest {dtype}; rescale the weights "
                         "(e.g. a / a.sum() and b / b.sum())")
    mass_a, mass_b = xp.sum(a, axis=-1), xp.sum(b, axis=-1)
    if bool(xp.any(mass_a <= 0)) or bool(xp.any(mass_b <= 0)):
        raise ValueError(f"{where}: a or b has zero total mass; each problem needs weights "
                         "with a positive sum")
    gap = xp.abs(mass_a - mass_b)
    bad = gap > MASS_RTOL * xp.maximum(mass_a, mass_b)
    if bool(xp.any(bad)):
        worst = int(xp.argmax(xp.reshape(gap / xp.maximum(mass_a, mass_b), (-1,))))
        sa = float(xp.reshape(mass_a, (-1,))[worst])
        sb = float(xp.reshape(mass_b, (-1,))[worst])
        raise ValueError(
            f"{where}: a and b have different total mass (sum(a) = {sa:.10g}, sum(b) = "
            f"{sb:.10g}{' in problem ' + str(worst) if batch_shape else ''}); balanced OT "
            f"needs equal masses to relative precision {MASS_RTOL:g}: rescale one of them, "
            "e.g. b = b * (sum(a) / sum(b))"
        )
    return a, b, C, batch_shape


def _broadcast_shapes(*shapes) -> tuple:
    ndim = max(len(s) for s in shapes)
    out = []
    for dims in zip(*[(1,) * (ndim - len(s)) + tuple(s) for s in shapes]):
        sizes = {d for d in dims if d != 1}
        if len(sizes) > 1:
            raise ValueError("shapes do not broadcast")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def check_eps(where: str, eps) -> float:
    """Validate the entropic regularisation ``eps`` (a finite number > 0); returns a float.

    Examples
    --------
    >>> check_eps("f", 0.1)
    0.1
    """
    try:
        return V.positive_real(where, "eps", eps)
    except ValueError as err:
        raise ValueError(f"{err}; eps must be a finite number > 0: the entropic "
                         "regularisation in cost units, e.g. 0.01 * C.max()") from None
    except TypeError as err:
        raise TypeError(f"{err}; e.g. eps=0.05 (in cost units)") from None


def marginal_error(plan, a, b, xp, measure: str = "l1"):
    """The marginal violation of ``plan`` per problem.

    Parameters
    ----------
    plan : array, shape (..., n, m)
    a, b : arrays, shapes (..., n) and (..., m)
    xp : namespace
    measure : {"l1", "l2-pot"}
        ``"l1"``: ``||P 1 - a||_1 + ||P^T 1 - b||_1`` (both marginals; OTT-JAX's measure).
        ``"l2-pot"``: ``||P^T 1 - b||_2``, what POT's ``ot.sinkhorn`` reports and stops on
        (it checks after its row update, so the row marginal is exact there).

    Returns
    -------
    array, shape (...)
        One error per problem, in the plan's dtype.

    Examples
    --------
    >>> import array_api_compat.numpy as xp
    >>> P = xp.asarray([[0.5, 0.0], [0.0, 0.5]])
    >>> float(marginal_error(P, xp.asarray([0.5, 0.5]), xp.asarray([0.25, 0.75]), xp))
    0.5
    """
    if measure not in ERROR_MEASURES:
        raise ValueError(f"marginal_error: measure={measure!r} is not known; choose one of "
                         f"{list(ERROR_MEASURES)}")
    col = xp.sum(plan, axis=-2) - b
    if measure == "l2-pot":
        return xp.sqrt(xp.sum(col * col, axis=-1))
    row = xp.sum(plan, axis=-1) - a
    return xp.sum(xp.abs(row), axis=-1) + xp.sum(xp.abs(col), axis=-1)


def check_measure(where: str, measure) -> str:
    """Validate an ``error_measure=`` option."""
    if measure not in ERROR_MEASURES:
        raise ValueError(f"{where}: error_measure={measure!r} is not known; choose one of "
                         f"{list(ERROR_MEASURES)} ('l1' = ||P1-a||_1 + ||P^T 1-b||_1, "
                         "'l2-pot' = ||P^T 1-b||_2 as POT reports)")
    return measure
