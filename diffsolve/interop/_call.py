"""What the three adapters share: cutting a call into differentiable leaves and the rest.

A positional argument is a *leaf* when it is an array of the framework (a torch tensor, a
JAX array, an autograd box or NumPy array); a :class:`~diffsolve.CSR` whose ``data`` is such
an array contributes its ``data`` as the leaf. Everything else (SciPy matrices, scalars,
LinearOperators) is passed to the solver unchanged and gets no gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

from .. import _backend as B
from .._autodiff import BackwardContext, DifferentiableFunction


class Call:
    """One call of a solver through an adapter.

    Parameters
    ----------
    fn : DifferentiableFunction
    args, kwargs : the call as the user wrote it
    is_leaf : callable
        Whether an object is a differentiable array of the framework.
    requires_grad : callable
        Whether such an array asks for a gradient (a keyword-only option that does is an
        error: options are not differentiated, and a silently missing gradient is wrong).
    """

    def __init__(self, fn: DifferentiableFunction[..., Any], args: tuple, kwargs: dict,
                 is_leaf: Callable[[Any], bool], adapter: str,
                 requires_grad: Callable[[Any], bool] = lambda x: False) -> None:
        if not isinstance(fn, DifferentiableFunction):
            raise TypeError(
                f"diffsolve.{adapter}: fn must be a diffsolve solver such as "
                f"diffsolve.linear.solve, got {fn!r}"
            )
        self.fn = fn
        # bind by signature: an array passed by keyword to a parameter that may be passed
        # positionally is a leaf like a positional one (odeint(..., params=p))
        args, kwargs, self.names = fn.bind(tuple(args), dict(kwargs))
        for name, value in kwargs.items():
            if is_leaf(value) and requires_grad(value):
                raise TypeError(
                    f"diffsolve.{adapter}({fn.public_name}): {name}= is a keyword-only "
                    "option, which is not differentiated, but it is a "
                    "tensor that requires a gradient; pass it detached (e.g. "
                    f"{name}.detach()), or pass the differentiable input positionally "
                    f"where {fn.public_name} takes one"
                )
        self.kwargs = kwargs
        self.slots: list[tuple[str, Any]] = []
        self.leaves: list[Any] = []
        for a in args:
            if isinstance(a, B.CSR) and is_leaf(a.data):
                self.slots.append(("csr", a))
                self.leaves.append(a.data)
            elif not isinstance(a, B.CSR) and is_leaf(a):
                self.slots.append(("leaf", None))
                self.leaves.append(a)
            else:
                self.slots.append(("static", a))
        self.args: tuple | None = None
        self.result: Any = None
        self.residuals: Any = None

    @property
    def fields(self) -> tuple[str, ...]:
        return type(self.result).differentiable_fields

    def rebuild(self, leaf_values: Iterable[Any],
                convert: Callable[[Any], Any] = lambda x: x) -> tuple:
        """The positional arguments with the leaves replaced by ``leaf_values``.

        ``convert`` turns the framework's other arrays (a CSR's index arrays) into
        NumPy/CuPy arrays.
        """
        values = iter(leaf_values)
        args = []
        for kind, a in self.slots:
            if kind == "leaf":
                args.append(next(values))
            elif kind == "csr":
                args.append(B.CSR(next(values), convert(a.indices), convert(a.indptr), a.shape))
            else:
                args.append(a)
        return tuple(args)

    def forward(self, leaf_values: Iterable[Any],
                convert: Callable[[Any], Any] = lambda x: x) -> Any:
        """Run the forward rule on NumPy/CuPy leaves; keeps args, result and residuals."""
        self.args = self.rebuild(leaf_values, convert)
        self.result, self.residuals = self.fn.fwd(*self.args, **self.kwargs)
        return self.result

    def backward(self, cotangents: dict, args: tuple | None = None, result: Any = None,
                 residuals: Any = None) -> list:
        """Cotangents of the leaves (NumPy/CuPy arrays), one per leaf, zeros where none."""
        ctx = BackwardContext(
            cast(tuple, args if args is not None else self.args),  # forward ran first
            self.kwargs,
            result if result is not None else self.result,
            residuals if args is not None else self.residuals,
        )
        grads = self.fn.backward(ctx, cotangents)
        out = []
        for (kind, _), arg, g in zip(self.slots, ctx.args, grads):
            if kind == "static":
                continue
            leaf = arg.data if kind == "csr" else arg
            if g is None:
                xp = B.array_namespace(leaf)
                g = xp.zeros_like(leaf)
            out.append(g.data if kind == "csr" else g)
        return out
