"""``to_torch``: a diffsolve solver as a ``torch.autograd.Function`` (zero copy via DLPack)."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from .. import _backend as B
from .._autodiff import DifferentiableFunction
from ._call import Call

P = ParamSpec("P")
R = TypeVar("R")

_FUNCTION: Any = None


def _torch() -> Any:  # the torch module, imported on first use
    try:
        return importlib.import_module("torch")
    except ImportError:  # pragma: no cover - exercised only without torch
        raise ImportError(
            "diffsolve.to_torch needs PyTorch: pip install 'diffsolve[torch]'"
        ) from None


def _to_backend(t: Any) -> Any:
    """A NumPy (CPU) or CuPy (CUDA) view of a tensor; no copy, no device move."""
    t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    return B.from_dlpack(t, on_cuda=t.device.type == "cuda")


def _to_torch(x: Any) -> Any:
    torch = _torch()
    return torch.from_dlpack(B.dlpack_exportable(x))


def _function_class() -> Any:
    """The autograd.Function, built on first use so that importing diffsolve needs no torch."""
    global _FUNCTION
    if _FUNCTION is not None:
        return _FUNCTION
    torch = _torch()

    # torch is a local (imported on first use), which mypy does not accept as a base class
    class DiffsolveFunction(torch.autograd.Function):  # type: ignore[name-defined]
        @staticmethod
        def forward(call: Call, *leaves: Any) -> tuple[Any, ...]:
            result = call.forward([_to_backend(t) for t in leaves], convert=_index_to_backend)
            return tuple(_to_torch(getattr(result, f)) for f in call.fields)

        @staticmethod
        def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
            ctx.call = inputs[0]

        @staticmethod
        def backward(ctx: Any, *grads: Any) -> tuple[Any, ...]:
            call = ctx.call
            if torch.is_grad_enabled():
                # create_graph=True: the rule runs on NumPy/CuPy and records no graph, so a
                # second derivative would treat the solution as a constant. once_differentiable
                # is not enough: torch.autograd.grad(..., inputs=) prunes its error node.
                raise RuntimeError(
                    f"diffsolve.to_torch({call.fn.public_name}): backward with "
                    "create_graph=True is not supported; the backward rule is first order "
                    "only, so higher derivatives (Hessians, gradient penalties through the "
                    "solver) would be silently wrong. Differentiate once, or take finite "
                    "differences of the gradient"
                )
            cot = {f: (None if g is None else _to_backend(g)) for f, g in zip(call.fields, grads)}
            leaf_grads = call.backward(cot)
            return (None, *(_to_torch(g) for g in leaf_grads))

    _FUNCTION = DiffsolveFunction
    return _FUNCTION


def _index_to_backend(x: Any) -> Any:
    torch = _torch()
    return _to_backend(x) if isinstance(x, torch.Tensor) else x


def to_torch(fn: DifferentiableFunction[P, R]) -> Callable[P, R]:
    """Make a diffsolve solver a PyTorch autograd layer.

    The adapted solver is called like ``fn`` (tensors where ``fn`` takes arrays) and returns
    the same result type with tensors in the differentiable fields (a function that
    returns a bare array, such as a ``custom_root`` solver, returns the tensor itself).
    Tensors cross into NumPy (CPU) or CuPy (CUDA) and back through DLPack without a copy,
    so a CUDA tensor is solved on the GPU. Differentiable arguments are tensors (passed
    positionally or by keyword) and the ``data`` of a :class:`diffsolve.CSR` built from
    tensors; the backward pass runs the solver's adjoint once for all of them. The backward
    rule is first order only: a backward pass through the solver with ``create_graph=True``
    raises instead of treating the solution as a constant in the second derivative.

    Parameters
    ----------
    fn : DifferentiableFunction
        A diffsolve solver (any function registered with :func:`~diffsolve.custom_vjp`).

    Returns
    -------
    callable
        ``fn`` as a function of tensors: same arguments, same result type, tensors in the
        differentiable fields.

    See Also
    --------
    diffsolve.to_autograd : The same adapter for HIPS autograd.
    diffsolve.to_jax : The same adapter for JAX.
    diffsolve.ode.from_torch : A PyTorch vector field for :func:`diffsolve.ode.odeint`.
    diffsolve.vjp : Reverse mode without any framework.

    Examples
    --------
    >>> import torch
    >>> import diffsolve as ds
    >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64, requires_grad=True)
    >>> b = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    >>> ds.to_torch(ds.linear.solve)(A, b).x.sum().backward()
    >>> torch.allclose(b.grad, torch.linalg.solve(A.T, torch.ones(2, dtype=torch.float64)))
    True
    """

    @functools.wraps(fn)
    def adapted(*args: Any, **kwargs: Any) -> Any:
        torch = _torch()
        call = Call(fn, args, kwargs, lambda x: isinstance(x, torch.Tensor), "to_torch",
                    requires_grad=lambda x: x.requires_grad)
        # tensors among the keyword-only options (x0, say) are not differentiated (Call
        # refuses one that requires a gradient); they only change library
        call.kwargs = {k: _to_backend(v) if isinstance(v, torch.Tensor) else v
                       for k, v in call.kwargs.items()}
        outs = _function_class().apply(call, *call.leaves)
        return fn.output(call.result.replace(**{f: outs[i] for i, f in enumerate(call.fields)}))

    return adapted
