"""``to_autograd``: a diffsolve solver as a HIPS autograd primitive."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from autograd.extend import Box, defvjp_argnums, primitive

from .. import _backend as B
from .._autodiff import DifferentiableFunction
from ._call import Call

P = ParamSpec("P")
R = TypeVar("R")


def _is_leaf(x: Any) -> bool:
    value = x._value if isinstance(x, Box) else x
    return B.is_array(value) and B.is_numpy(B.array_namespace(value)) and \
        value.dtype.kind == "f"


def _refuse_higher_order(fn: DifferentiableFunction[..., Any]) -> None:
    raise TypeError(
        f"diffsolve.to_autograd({fn.public_name}): the backward rule is first order only; "
        "higher derivatives (grad of grad, hessian) are not supported. Differentiate once, "
        "or take finite differences of the gradient"
    )


def to_autograd(fn: DifferentiableFunction[P, R]) -> Callable[P, R]:
    """Make a diffsolve solver differentiable by HIPS autograd.

    The adapted solver is called like ``fn`` and returns the same result type, with autograd
    boxes in the differentiable fields while a gradient is being traced (a function that
    returns a bare array, such as a ``custom_root`` solver, returns the box itself). One backward
    computation (one adjoint solve) serves every differentiable argument: the primitive's
    VJP is registered with ``defvjp_argnums``. Differentiable arguments are NumPy arrays
    (or boxes) and the ``data`` of a :class:`diffsolve.CSR`; SciPy sparse matrices are
    constants.

    Parameters
    ----------
    fn : DifferentiableFunction
        A diffsolve solver (any function registered with :func:`~diffsolve.custom_vjp`).

    Returns
    -------
    callable
        ``fn`` as an autograd primitive: same arguments, same result type.

    See Also
    --------
    diffsolve.to_torch : The same adapter for PyTorch.
    diffsolve.to_jax : The same adapter for JAX.
    diffsolve.vjp : Reverse mode without any framework.

    Examples
    --------
    >>> import autograd, autograd.numpy as anp, numpy as np
    >>> import diffsolve as ds
    >>> solve = ds.to_autograd(ds.linear.solve)
    >>> A = np.array([[4.0, 1.0], [1.0, 3.0]])
    >>> g = autograd.grad(lambda b: anp.sum(solve(A, b).x))(np.array([1.0, 2.0]))
    >>> np.allclose(g, np.linalg.solve(A.T, np.ones(2)))
    True
    """

    @functools.wraps(fn)
    def adapted(*args: Any, **kwargs: Any) -> Any:
        if any(isinstance(a, Box) and isinstance(a._value, Box)
               for a in (*args, *kwargs.values())):
            _refuse_higher_order(fn)  # nested traces: grad of grad, hessian
        call = Call(fn, args, kwargs, _is_leaf, "to_autograd",
                    requires_grad=lambda x: isinstance(x, Box))

        # a fresh primitive per call: its VJP closes over this call's residuals
        @primitive
        def forward(*leaves: Any) -> tuple[Any, ...]:
            if any(isinstance(v, Box) for v in leaves):
                _refuse_higher_order(fn)
            result = call.forward(leaves)
            return tuple(getattr(result, f) for f in call.fields)

        def vjp_maker(argnums: tuple[int, ...], ans: Any, leaves: tuple[Any, ...],
                      kw: dict[str, Any]) -> Callable[[Any], tuple[Any, ...]]:
            def vjp(g: Any) -> tuple[Any, ...]:
                if any(isinstance(v, Box) for v in (*g, *leaves)):
                    # a second-order trace: the rule runs on plain arrays, so the gradient's
                    # own dependence on the inputs would be lost (a wrong Hessian)
                    _refuse_higher_order(fn)
                grads = call.backward(dict(zip(call.fields, g)))
                return tuple(grads[i] for i in argnums)

            return vjp

        defvjp_argnums(forward, vjp_maker)
        outs = forward(*call.leaves)
        return fn.output(call.result.replace(**{f: outs[i] for i, f in enumerate(call.fields)}))

    return adapted
