"""Reverse-mode products of a *user* function by HIPS autograd, checked for tracing holes.

Several solvers differentiate a function the user wrote (an ODE vector field, an implicit
optimality condition, a bilevel objective) with HIPS autograd. Autograd only sees code
written with ``autograd.numpy``: a function written with plain NumPy (``np.array([...])``,
``np.dot``) hides the dependence, autograd warns "Output seems independent of input" and
returns a zero VJP. Used silently, that is a wrong gradient. :func:`traced_vjp` traces the
function with respect to all the differentiated arguments *jointly* (so a condition that
legitimately ignores one argument is not an independence), and when autograd still sees
no dependence it decides which case it is:

* the output is an object array, or holds autograd boxes: NumPy swallowed the trace
  (``np.array`` of boxes, ``np.dot`` with a box): a ``TypeError`` naming the function and
  the ways out. This is checked on every trace, with or without autograd's warning:
  ``np.dot(A, y) * p[0]`` stays a box through ``p`` while the dependence on ``y`` is lost;
* otherwise the function is evaluated once more at perturbed arguments: if its value moves,
  the dependence is real but invisible to autograd (``float(x)``, ``x.tolist()``...):
  the same ``TypeError``;
* if it does not move, the function really is constant in those arguments; the zero VJP is
  right and autograd's warning is passed on, not silenced.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

__all__ = ["NotTraceableError", "traced_vjp"]

_INDEPENDENT = "Output seems independent of input"


class NotTraceableError(TypeError):
    """Autograd cannot see how a user function depends on its inputs.

    See Also
    --------
    diffsolve.implicit.root_vjp : Differentiates a user function with autograd.
    diffsolve.ode.from_torch : Write a vector field with PyTorch instead.

    Examples
    --------
    ``np.array([...])`` hides the dependence on ``x`` from autograd:

    >>> import numpy as np
    >>> import diffsolve as ds
    >>> F = lambda x, a: np.array([x[0] ** 2]) - a
    >>> try:
    ...     ds.implicit.root_vjp(F, np.array([2.0]), (np.array([4.0]),), np.ones(1))
    ... except ds.NotTraceableError:
    ...     print("write F with autograd.numpy, or pass vjp=")
    write F with autograd.numpy, or pass vjp=
    """


def _holds_boxes(value) -> bool:
    from autograd.tracer import Box

    if isinstance(value, Box):
        return False
    dtype = getattr(value, "dtype", None)
    if dtype is not None and getattr(dtype, "kind", "") == "O":
        return True
    if isinstance(value, (list, tuple)):
        return any(isinstance(v, Box) or _holds_boxes(v) for v in value)
    return False


def _moves(fun: Callable, args: Sequence, argnums: tuple[int, ...], value) -> bool:
    """Whether ``fun``'s value changes when the differentiated arguments are perturbed."""
    # autograd traces NumPy only, so the arguments are NumPy arrays; autograd.numpy wraps
    # NumPy (only _backend imports NumPy itself)
    import autograd.numpy as np

    perturbed = list(args)
    for i in argnums:
        a = np.asarray(args[i], dtype=float)
        h = 1e-3 * (1.0 + np.abs(a))
        perturbed[i] = (a + h).astype(np.asarray(args[i]).dtype)
    try:
        moved = fun(*perturbed)
    except Exception:
        return False
    try:
        return not np.array_equal(np.asarray(moved, dtype=float), np.asarray(value, dtype=float))
    except (TypeError, ValueError):
        return True


def traced_vjp(fun: Callable, args: Sequence, argnums: int | tuple[int, ...], *, where: str,
               what: str, ways_out: str, name: str | None = None):
    """``(vjp_fn, value)`` of ``fun(*args)`` with respect to ``args[argnums]`` by autograd.

    Parameters
    ----------
    fun : callable
        The user function (already closed over any non-differentiated arguments).
    args : sequence
        Its arguments (NumPy arrays).
    argnums : int or tuple of int
        Which arguments to differentiate, traced jointly.
    where : str
        The public function, for the error message (``"diffsolve.ode.odeint"``).
    what : str
        The user function's role, e.g. ``"the vector field f"``.
    ways_out : str
        What the user can do instead, e.g. ``"pass vjp=..., or use from_torch(f)"``.
    name : str, optional
        The user's function name, when ``fun`` is a wrapper around it (default
        ``fun.__name__``).

    Raises
    ------
    NotTraceableError
        Autograd cannot see the dependence (see the module docstring).
    """
    from autograd import make_vjp

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vjp_fn, value = make_vjp(fun, argnum=argnums)(*args)
    independent = any(_INDEPENDENT in str(w.message) for w in caught)
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    # an object array means NumPy swallowed boxes somewhere, even when some other path
    # kept the output a box (np.dot(A, y) * p[0] traces p but loses y)
    if _holds_boxes(value) or (independent and _moves(fun, args, nums, value)):
        raise NotTraceableError(
            f"{where}: autograd cannot trace {what} "
            f"({name if name is not None else getattr(fun, '__name__', fun)!r}): "
            "its output depends on the inputs, but through plain NumPy calls "
            "(np.array([...]), np.dot, float(...), .tolist()) that autograd does not see, "
            "so its gradient would silently be zero. Ways out: write it with "
            f"autograd.numpy (import autograd.numpy as np); {ways_out}"
        )
    for w in caught:  # pass every warning on: autograd's and the user's own
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return vjp_fn, value
