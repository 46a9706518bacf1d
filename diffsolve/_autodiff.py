"""The differentiable-solver core: ``custom_vjp`` registration and framework-free ``vjp``.

A solver is written as its *forward rule*, a function ``fwd(*args, **kwargs) -> (result,
residuals)`` where ``result`` is a :class:`~diffsolve._result.SolverResult` and
``residuals`` is anything the backward rule may reuse (a factorisation, say), plus a
*backward rule* ``bwd(ctx, cotangents) -> tuple`` that maps the cotangents of the result's
differentiable fields to one cotangent per positional argument (``None`` where an argument
is not differentiable). This is the shape of ``jax.custom_vjp``; the solver never sees an
autograd box, a torch tensor or a JAX tracer. :func:`vjp` drives it with plain arrays and
the adapters in :mod:`diffsolve.interop` drive it from autograd, PyTorch and JAX.

Cotangents of sparse arguments are the gradient of the stored values in canonical CSR
order (a 1-D array of length nnz); :func:`wrap_cotangent` turns that into the argument's
own type (a SciPy/CuPy CSR matrix with the same pattern, or a :class:`~diffsolve.CSR`).

Bare-array outputs: a forward rule may return a :class:`~diffsolve._result.ValueResult`
(one differentiable field, ``value``) from a function registered with
``unwrap_value=True``. Such a function returns the bare array when called, from
:func:`vjp` (whose ``vjp_fn`` then also takes the cotangent positionally) and from the
adapters, as a ``jax.custom_vjp`` function would; :func:`diffsolve.implicit.custom_root`
uses this. Everything inside the core still sees the dataclass.
"""

from __future__ import annotations

import functools
import inspect
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Literal, ParamSpec, TypeVar, overload

from . import _backend as B
from ._result import SolverResult

__all__ = ["BackwardContext", "Cotangents", "DifferentiableFunction", "custom_vjp", "vjp"]

# a solver's parameters and its result type: calling a DifferentiableFunction made from
# ``fwd: Callable[P, tuple[R, residuals]]`` takes P and returns R
P = ParamSpec("P")
R = TypeVar("R")

#: ``bwd(ctx, cotangents) -> tuple``, one cotangent (or ``None``) per positional argument
BackwardRule = Callable[["BackwardContext", dict[str, Any]], tuple[Any, ...]]


@dataclass
class BackwardContext:
    """What a backward rule may look at.

    Attributes
    ----------
    args, kwargs
        The primal call, with framework arrays already turned into NumPy/CuPy arrays.
    result
        The forward result (its differentiable fields hold NumPy/CuPy arrays).
    residuals
        What the forward rule saved, or ``None`` when the forward pass ran elsewhere (the
        JAX adapter under ``jit`` keeps only arrays, so the rule must then recompute).
    """

    args: tuple
    kwargs: dict
    result: Any
    residuals: Any = None


class DifferentiableFunction(Generic[P, R]):
    """A solver with a hand-written backward rule (made by :func:`custom_vjp`).

    Calling it returns the result only. ``fwd`` returns ``(result, residuals)``, ``bwd`` is
    the backward rule, ``result_shapes`` (optional) gives the shapes and dtypes of the
    result's fields without running the solver (the JAX adapter needs them).
    ``unwrap_value=True`` (with a :class:`~diffsolve._result.ValueResult` result) makes the
    function return ``result.value``, the bare array, wherever a result would be returned.
    ``public_name`` names it in error messages (default ``diffsolve.<family>.<name>``).
    """

    def __init__(self, fwd: Callable[P, tuple[R, Any]], bwd: BackwardRule,
                 result_shapes: Callable[..., dict[str, Any]] | None = None,
                 result_type: type[SolverResult] | None = None, *,
                 unwrap_value: bool = False, public_name: str | None = None) -> None:
        functools.update_wrapper(self, fwd)
        self.fwd = fwd
        self.bwd = bwd
        self.result_shapes = result_shapes
        self.result_type = result_type
        self.unwrap_value = unwrap_value
        self.public_name = public_name or \
            f"diffsolve.{fwd.__module__.split('.')[1]}.{fwd.__name__}"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        result, _ = self.fwd(*args, **kwargs)
        return self.output(result)

    @functools.cached_property
    def signature(self) -> inspect.Signature:
        return inspect.signature(self.fwd)

    def bind(self, args: tuple, kwargs: dict) -> tuple[tuple, dict, tuple]:
        """The call with every positional-or-keyword parameter moved into ``args``.

        ``vjp(odeint, f, y0, t, params=p)`` must differentiate ``p`` exactly as
        ``vjp(odeint, f, y0, t, p)`` does, so the autodiff core and the adapters see every
        argument that may be passed positionally at its position. Returns ``(args, kwargs,
        names)`` where ``names[i]`` is the parameter name of ``args[i]``.
        """
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as err:
            raise TypeError(f"{self.public_name}: {err}") from None
        names: list[str] = []
        for name, param in self.signature.parameters.items():
            if param.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
                break
            if name not in bound.arguments:
                break
            if param.kind == inspect.Parameter.VAR_POSITIONAL:
                names.extend(f"{name}[{i}]" for i in range(len(bound.arguments[name])))
            else:
                names.append(name)
        return bound.args, bound.kwargs, tuple(names)

    def output(self, result: Any) -> Any:
        """What callers get for a result: the result itself, or its ``value`` field."""
        return result.value if self.unwrap_value else result

    def __repr__(self) -> str:
        return f"<differentiable solver {self.public_name}>"

    def backward(self, ctx: BackwardContext, cotangents: dict) -> tuple:
        """Run the backward rule with zero-filled, validated cotangents.

        ``cotangents`` maps differentiable field names to arrays or ``None``. Returns one
        entry per positional argument, each in the argument's own type (dense array,
        sparse matrix with the argument's pattern, :class:`~diffsolve.CSR`) or ``None``.
        """
        result = ctx.result
        fields = type(result).differentiable_fields
        unknown = sorted(set(cotangents) - set(fields))
        if unknown:
            raise TypeError(
                f"{self.public_name} vjp: no differentiable output named {unknown}; "
                f"the differentiable outputs are {list(fields)}"
            )
        filled = {}
        for name in fields:
            out = getattr(result, name)
            g = self._as_cotangent(name, cotangents.get(name), out)
            if g is not None and tuple(g.shape) != tuple(out.shape):
                raise ValueError(
                    f"{self.public_name} vjp: cotangent {name}= has shape {tuple(g.shape)}, "
                    f"but the output {name} has shape {tuple(out.shape)}; pass an array of "
                    "the output's shape"
                )
            filled[name] = g
        if all(g is None for g in filled.values()):
            return tuple(zero_cotangent(a) for a in ctx.args)
        for name, g in filled.items():
            if g is None:
                out = getattr(result, name)
                xp = B.array_namespace(out)
                filled[name] = xp.zeros_like(out)
        nonfinite = [name for name, g in filled.items() if not _all_finite(g)]
        if nonfinite:
            # A NaN/inf cotangent must give NaN gradients (IEEE: J^T v with a NaN in v is
            # NaN wherever J is dense). Backward rules built on iterative solves could stop
            # at once on a NaN right-hand side and return 0, so the core decides: run the
            # rule on finite cotangents to learn which arguments get a gradient, then
            # fill those with NaN.
            sanitized = {}
            for name, g in filled.items():
                xp = B.array_namespace(g)
                sanitized[name] = xp.where(xp.isfinite(g), g, xp.zeros_like(g))
            grads = self._run_bwd(ctx, sanitized)
            grads = tuple(None if g is None else _nan_like(g) for g in grads)
        else:
            grads = self._run_bwd(ctx, filled)
        return tuple(wrap_cotangent(a, g) for a, g in zip(ctx.args, grads))

    def _run_bwd(self, ctx: BackwardContext, cotangents: dict[str, Any]) -> tuple:
        grads = self.bwd(ctx, cotangents)
        if len(grads) != len(ctx.args):
            raise RuntimeError(
                f"{self.public_name}: backward rule returned {len(grads)} cotangents for "
                f"{len(ctx.args)} positional arguments"
            )
        return tuple(grads)

    def _as_cotangent(self, name: str, g: Any, out: Any) -> Any:
        """A cotangent as an array of the output's namespace and dtype.

        Python and 0-d scalars are accepted for 0-d outputs (``vjp_fn(cost=1.0)``).
        """
        if g is None:
            return None
        if isinstance(g, bool) or not (B.is_array(g) or isinstance(g, numbers.Real)):
            raise TypeError(
                f"{self.public_name} vjp: cotangent {name}= must be an array (or a real "
                f"number for a 0-d output), got a {type(g).__module__}.{type(g).__name__}; "
                f"pass an array of the output's shape {tuple(out.shape)}"
            )
        xp = B.array_namespace(out)
        if isinstance(g, numbers.Real):
            if tuple(out.shape) != ():
                raise ValueError(
                    f"{self.public_name} vjp: cotangent {name}= is the scalar {g!r}, but the "
                    f"output {name} has shape {tuple(out.shape)}; pass an array of that shape"
                )
            return xp.asarray(g, dtype=out.dtype, device=B.device(out))
        if B.array_namespace(g) is not xp and B.is_cupy(xp) != B.is_cupy(B.array_namespace(g)):
            raise TypeError(
                f"{self.public_name} vjp: cotangent {name}= lives in another array library "
                f"than the output ({type(g).__module__} vs the output's); pass it as an array "
                "of the output's library and device (nothing is copied between devices)"
            )
        return g


@overload
def custom_vjp(bwd: BackwardRule, result_shapes: Callable[..., dict[str, Any]] | None = None,
               result_type: type | None = None, *, unwrap_value: Literal[False] = False,
               public_name: str | None = None,
               ) -> Callable[[Callable[P, tuple[R, Any]]], DifferentiableFunction[P, R]]: ...
@overload
def custom_vjp(bwd: BackwardRule, result_shapes: Callable[..., dict[str, Any]] | None = None,
               result_type: type | None = None, *, unwrap_value: Literal[True],
               public_name: str | None = None,
               ) -> Callable[[Callable[P, tuple[Any, Any]]], DifferentiableFunction[P, Any]]: ...
def custom_vjp(bwd: BackwardRule, result_shapes: Callable[..., dict[str, Any]] | None = None,
               result_type: type | None = None, *, unwrap_value: bool = False,
               public_name: str | None = None,
               ) -> Callable[[Callable[P, tuple[Any, Any]]], DifferentiableFunction[P, Any]]:
    """Decorate a forward rule ``fwd(*args, **kwargs) -> (result, residuals)``.

    Parameters
    ----------
    bwd : callable
        ``bwd(ctx, cotangents) -> tuple``: ``ctx`` is a :class:`BackwardContext`,
        ``cotangents`` a dict from each differentiable field name to an array (fields the
        caller did not give arrive as zeros). Return one cotangent per positional argument
        (``None`` for arguments that are not differentiable; the gradient of the stored
        values for sparse arguments).
    result_shapes : callable, optional
        ``result_shapes(*args, **kwargs) -> {field: (shape, dtype)}`` for every array or
        scalar field of the result, computed from the arguments' shapes and dtypes only.
    result_type : type, optional
        The :class:`~diffsolve.SolverResult` subclass the forward rule returns. The JAX
        adapter needs ``result_shapes`` and ``result_type``.
    unwrap_value : bool
        The forward rule returns a :class:`~diffsolve._result.ValueResult`, and callers get
        its ``value`` array instead of the dataclass (see the module docstring).
    public_name : str, optional
        The name used in error messages.

    Returns
    -------
    decorator
        Turns the forward rule into a :class:`DifferentiableFunction`.

    See Also
    --------
    diffsolve.vjp : Run a registered solver and get its reverse-mode product.
    diffsolve.to_torch : Use a registered solver as a PyTorch layer.
    diffsolve.to_jax : Use a registered solver inside JAX.
    diffsolve.to_autograd : Use a registered solver inside HIPS autograd.

    Examples
    --------
    >>> import numpy as np
    >>> from dataclasses import dataclass
    >>> from diffsolve._result import SolverResult
    >>> from diffsolve._autodiff import custom_vjp, vjp
    >>> @dataclass(frozen=True)
    ... class Scaled(SolverResult):
    ...     y: object
    ...     differentiable_fields = ("y",)
    >>> def _bwd(ctx, cot):
    ...     return (2.0 * cot["y"],)
    >>> @custom_vjp(_bwd)
    ... def double(x):
    ...     return Scaled(y=2.0 * x), None
    >>> out, f_vjp = vjp(double, np.ones(2))
    >>> f_vjp(y=np.array([1.0, 3.0]))
    (array([2., 6.]),)
    """

    def decorate(fwd: Callable[P, tuple[Any, Any]]) -> DifferentiableFunction[P, Any]:
        return DifferentiableFunction(fwd, bwd, result_shapes, result_type,
                                      unwrap_value=unwrap_value, public_name=public_name)

    return decorate


def _all_finite(g: Any) -> bool:
    xp = B.array_namespace(g)
    if not xp.isdtype(g.dtype, ("real floating", "complex floating")):
        return True
    return bool(xp.all(xp.isfinite(g)))


def _nan_like(g: Any) -> Any:
    if B.is_sparse(g):
        A = B.as_csr(g)
        return type(A)((_nan_like(A.data), A.indices, A.indptr), shape=A.shape)
    xp = B.array_namespace(g)
    return xp.full_like(g, float("nan"))


class Cotangents(tuple):
    """The cotangents returned by a ``vjp_fn``: a tuple, one entry per positional array
    argument in call order, also addressable by parameter name (``grads["params"]``).

    Asking by name for an array passed to a keyword-only option (``x0=``, ``M=``...)
    raises a ``KeyError`` that says the option is not differentiated.
    """

    names: tuple[str, ...]
    _where: str
    _nondiff: tuple[str, ...]

    def __new__(cls, values: Iterable[Any], names: Iterable[str], where: str,
                nondiff: Iterable[str] = ()) -> Cotangents:
        self = super().__new__(cls, values)
        self.names = tuple(names)
        self._where = where
        self._nondiff = tuple(nondiff)
        return self

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            if key in self.names:
                return tuple.__getitem__(self, self.names.index(key))
            if key in self._nondiff:
                raise KeyError(
                    f"{self._where}: {key}= is a keyword-only option and is not "
                    "differentiated (the solution does not depend on it, or it only "
                    "configures the solver); differentiable inputs are "
                    f"{list(self.names)}"
                )
            raise KeyError(f"{self._where}: no differentiable argument named {key!r}; the "
                           f"cotangents are for {list(self.names)}")
        return tuple.__getitem__(self, key)

    def asdict(self) -> dict:
        """``{parameter name: cotangent}``."""
        return dict(zip(self.names, self))


def is_array_argument(arg: Any) -> bool:
    """Whether a positional argument gets a cotangent slot (arrays, matrices, operators)."""
    return B.is_array(arg) or B.is_sparse(arg) or B.is_linear_operator(arg)


def zero_cotangent(arg: Any) -> Any:
    """The zero cotangent of one positional argument (``None`` if not differentiable)."""
    if B.is_sparse(arg):
        data = B.as_csr(arg).data if not isinstance(arg, B.CSR) else arg.data
        xp = B.array_namespace(data)
        return wrap_cotangent(arg, xp.zeros_like(data))
    if B.is_array(arg):
        xp = B.array_namespace(arg)
        if not xp.isdtype(arg.dtype, "real floating"):
            return None  # integer inputs (promoted by the solver) carry no gradient
        return xp.zeros_like(arg)
    return None


def wrap_cotangent(arg: Any, g: Any) -> Any:
    """Put a backward rule's cotangent ``g`` for ``arg`` into ``arg``'s own type."""
    if g is None:
        return None
    if isinstance(arg, B.CSR):
        return arg.with_data(g)
    if B.is_sparse(arg):
        A = B.as_csr(arg)
        return type(A)((g, A.indices, A.indptr), shape=A.shape)
    return g


def vjp(fn: DifferentiableFunction[..., R], *args: Any, **kwargs: Any,
        ) -> tuple[R, Callable[..., Cotangents]]:
    """Solve and return the result with a function that maps output cotangents to input ones.

    Framework-free reverse mode: no autodiff system is involved, so this is the way to put
    a diffsolve solver inside an adjoint method driven by ``scipy.optimize`` or a hand-written
    gradient loop.

    Parameters
    ----------
    fn : DifferentiableFunction
        A diffsolve solver such as :func:`diffsolve.linear.solve`.
    *args, **kwargs
        Its arguments, as for calling ``fn`` directly.

    Returns
    -------
    result : SolverResult or array
        What ``fn(*args, **kwargs)`` returns (the bare array for a function that returns
        one, such as a :func:`diffsolve.implicit.custom_root` solver).
    vjp_fn : callable
        ``vjp_fn(**cotangents)`` takes cotangents by differentiable output name (fields not
        given count as zero; a 0-d output also takes a Python number) and returns a
        :class:`Cotangents` tuple with one cotangent per array argument that may be passed
        positionally, in the order of ``fn``'s signature whether it was passed by position
        or by keyword (``grads["name"]`` addresses them by parameter name): a dense array
        for a dense argument, a sparse matrix with the argument's pattern for a sparse one,
        ``None`` for a LinearOperator. A NaN or inf in any cotangent gives NaN cotangents.
        It may be called more than once. For a function that returns a bare array,
        ``vjp_fn(g)`` (or ``vjp_fn(value=g)``) takes the cotangent of that array.

    Raises
    ------
    TypeError
        ``fn`` is not a diffsolve solver (registered with :func:`custom_vjp`), or the
        cotangents name fields that ``fn``'s result does not differentiate.

    See Also
    --------
    diffsolve.custom_vjp : Register a function with its own forward and backward rules.
    diffsolve.to_autograd : The same products inside HIPS autograd.
    diffsolve.to_torch : The same products inside PyTorch.
    diffsolve.to_jax : The same products inside JAX.

    Examples
    --------
    >>> import numpy as np
    >>> import diffsolve as ds
    >>> A = np.array([[4.0, 1.0], [1.0, 3.0]]); b = np.array([1.0, 2.0])
    >>> res, f_vjp = ds.vjp(ds.linear.solve, A, b)
    >>> A_bar, b_bar = f_vjp(x=np.ones(2))
    >>> np.allclose(b_bar, np.linalg.solve(A.T, np.ones(2)))
    True
    """
    if not isinstance(fn, DifferentiableFunction):
        raise TypeError(
            f"diffsolve.vjp: fn must be a diffsolve solver (e.g. diffsolve.linear.solve), got "
            f"{fn!r}; functions written with torch/JAX/autograd are differentiated by those "
            "systems through diffsolve.to_torch / to_jax / to_autograd"
        )
    args, kwargs, names = fn.bind(args, kwargs)
    result: Any  # the dataclass, also where fn returns its value field
    result, residuals = fn.fwd(*args, **kwargs)
    keep = [i for i, a in enumerate(args) if is_array_argument(a)]
    nondiff = [k for k, v in kwargs.items() if is_array_argument(v)]

    def vjp_fn(*positional: Any, **cotangents: Any) -> Cotangents:
        if positional:
            if not fn.unwrap_value or len(positional) > 1 or cotangents:
                raise TypeError(
                    f"{fn.public_name} vjp: got {len(positional)} positional cotangent(s)"
                    f"{' and keyword cotangents' if cotangents else ''}; "
                    + ("pass one cotangent, the array's, positionally or as value=g"
                       if fn.unwrap_value else
                       f"pass cotangents by output name, e.g. vjp_fn("
                       f"{type(result).differentiable_fields[0]}=g)")
                )
            cotangents = {"value": positional[0]}
        ctx = BackwardContext(args, kwargs, result, residuals)
        grads = fn.backward(ctx, cotangents)
        return Cotangents([grads[i] for i in keep], [names[i] for i in keep],
                          f"{fn.public_name} vjp", nondiff)

    return fn.output(result), vjp_fn
