"""``to_jax``: a diffsolve solver as a ``jax.custom_vjp`` around ``jax.pure_callback``."""

from __future__ import annotations

import functools
import importlib
import threading
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any, ParamSpec, TypeVar

from .. import _backend as B
from .._autodiff import DifferentiableFunction
from .._result import SolverResult
from ._call import Call

P = ParamSpec("P")
R = TypeVar("R")

VMAP_METHODS = ("sequential", "sequential_unrolled", "expand_dims", "broadcast_all")
_warned_device = False
_registered: set[type] = set()


def _register_result_type(jax: ModuleType, result_type: type[SolverResult]) -> None:
    """Results are returned from jitted functions, so JAX must see them as pytrees."""
    if result_type not in _registered:
        import dataclasses

        # string fields (``error_measure``) are static metadata, not arrays: as data they
        # would make the result unreturnable from jit/vmap
        meta = [f.name for f in dataclasses.fields(result_type)
                if f.type in ("str", str) or isinstance(f.default, str)]
        data = [n for n in result_type.field_names() if n not in meta]
        jax.tree_util.register_dataclass(result_type, data_fields=data, meta_fields=meta)
        _registered.add(result_type)


def _jax() -> ModuleType:
    try:
        return importlib.import_module("jax")
    except ImportError:  # pragma: no cover - exercised only without jax
        raise ImportError("diffsolve.to_jax needs JAX: pip install 'diffsolve[jax]'") from None


def _host(x: Any) -> Any:
    """Index arrays of a CSR must be concrete: they fix the sparsity pattern."""
    jax = _jax()
    if isinstance(x, jax.core.Tracer):
        raise TypeError(
            "diffsolve.to_jax: the indices/indptr of a diffsolve.CSR are traced; the pattern "
            "must be concrete (pass NumPy index arrays, or close over them outside jit)"
        )
    return B.host_numpy(x)


def to_jax(fn: DifferentiableFunction[P, R], *, vmap_method: str = "sequential",
           ) -> Callable[P, R]:
    """Make a diffsolve solver a JAX function with a custom VJP; works under ``jit``.

    The forward and backward rules run as ``jax.pure_callback`` on the host (NumPy); the
    result shapes come from the solver's declared shape rule, so the adapted solver traces
    under ``jax.jit`` and ``jax.grad``. Every field of the result comes back as a JAX array
    (iteration counts and flags too, since they are values computed inside the callback);
    a function that returns a bare array, such as a ``custom_root`` solver, returns that
    JAX array.
    JAX hands callback arguments to the host, so arrays on a GPU are copied to the host and
    back: for GPU solves use CuPy or PyTorch (``to_torch``) instead; a warning says so.

    Parameters
    ----------
    fn : DifferentiableFunction
        A diffsolve solver.
    vmap_method : str
        How ``jax.vmap`` runs the callback: ``"sequential"`` (default; one solve per batch
        element, always correct) or another ``jax.pure_callback`` method.

    Returns
    -------
    callable
        ``fn`` as a JAX function with a custom VJP (traceable by ``jax.jit``, ``jax.grad``
        and ``jax.vmap``): same arguments, same result type, JAX arrays in every field.

    See Also
    --------
    diffsolve.to_autograd : The same adapter for HIPS autograd.
    diffsolve.to_torch : The same adapter for PyTorch (zero-copy on the GPU).
    diffsolve.ode.from_jax : A JAX vector field for :func:`diffsolve.ode.odeint`.
    diffsolve.vjp : Reverse mode without any framework.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import diffsolve as ds
    >>> jax.config.update("jax_enable_x64", True)
    >>> solve = ds.to_jax(ds.linear.solve)
    >>> A = jnp.array([[4.0, 1.0], [1.0, 3.0]])
    >>> g = jax.jit(jax.grad(lambda b: solve(A, b).x.sum()))(jnp.array([1.0, 2.0]))
    >>> bool(jnp.allclose(g, jnp.linalg.solve(A.T, jnp.ones(2))))
    True
    """
    if vmap_method not in VMAP_METHODS:
        raise ValueError(f"diffsolve.to_jax: vmap_method must be one of {VMAP_METHODS}, "
                         f"got {vmap_method!r}")

    @functools.wraps(fn)
    def adapted(*args: Any, **kwargs: Any) -> Any:
        jax = _jax()
        import jax.numpy as jnp

        call = Call(fn, args, kwargs, lambda x: isinstance(x, jax.Array), "to_jax",
                    requires_grad=lambda x: isinstance(x, jax.core.Tracer))
        _warn_if_on_accelerator(call.leaves)
        if fn.result_shapes is None or fn.result_type is None:
            raise TypeError(f"diffsolve.to_jax: {fn.public_name} declares no result shapes/type")
        proxy_args = call.rebuild(call.leaves, convert=lambda x: x)
        shapes = fn.result_shapes(*proxy_args, **call.kwargs)
        names = tuple(shapes)
        spec = tuple(jax.ShapeDtypeStruct(shape, jax.dtypes.canonicalize_dtype(dtype))
                     for shape, dtype in shapes.values())
        result_type = fn.result_type
        _register_result_type(jax, result_type)
        diff = [names.index(f) for f in result_type.differentiable_fields]
        for kind, a in call.slots:  # fail before tracing, not inside the callback
            if kind == "csr":
                _host(a.indices), _host(a.indptr)
        convert = _host
        kept = _KeptResiduals()

        forward_lock = threading.Lock()

        def host_forward(*leaves: Any, keep: bool = False) -> tuple[Any, ...]:
            values = [B.host_numpy(v) for v in leaves]
            if keep:
                # the residuals live on the shared Call: read them before another thread's
                # forward replaces them, or they would be kept under the wrong inputs
                with forward_lock:
                    result = call.forward(values, convert=convert)
                    residuals = call.residuals
            else:
                result = call.forward(values, convert=convert)
            outs = tuple(B.host_numpy(getattr(result, n)).astype(s.dtype) for n, s in
                         zip(names, spec))
            if keep:  # a forward under differentiation: its backward will follow
                kept.add(values, outs, residuals)
            return outs

        def host_forward_kept(*leaves: Any) -> tuple[Any, ...]:
            return host_forward(*leaves, keep=True)

        def host_backward(*flat: Any) -> tuple[Any, ...]:
            n = len(call.leaves)
            leaves = [B.host_numpy(v) for v in flat[:n]]
            outs = [B.host_numpy(v) for v in flat[n:n + len(names)]]
            cots = [B.host_numpy(v) for v in flat[n + len(names):]]
            args_ = call.rebuild(leaves, convert=convert)
            result = result_type(**dict(zip(names, outs)))
            cot = {names[i]: g for i, g in zip(diff, cots)}
            # the forward's own residuals (an ODE's trajectory) when this is the backward
            # of a forward run here; otherwise the backward rule recomputes them
            grads = call.backward(cot, args=args_, result=result,
                                  residuals=kept.take(leaves, outs))
            return tuple(g.astype(leaf.dtype) for g, leaf in zip(grads, leaves))

        @jax.custom_vjp
        def solver(*leaves: Any) -> Any:
            return jax.pure_callback(host_forward, spec, *leaves, vmap_method=vmap_method)

        def solver_fwd(*leaves: Any) -> tuple[Any, Any]:
            outs = jax.pure_callback(host_forward_kept, spec, *leaves,
                                     vmap_method=vmap_method)
            return outs, (leaves, outs)

        def solver_bwd(res: Any, gs: Any) -> tuple[Any, ...]:
            leaves, outs = res
            leaf_spec = tuple(jax.ShapeDtypeStruct(v.shape, v.dtype) for v in leaves)
            cots = [gs[i] for i in diff]
            return tuple(jax.pure_callback(host_backward, leaf_spec, *leaves, *outs, *cots,
                                           vmap_method=vmap_method))

        solver.defvjp(solver_fwd, solver_bwd)
        outs = solver(*[jnp.asarray(v) for v in call.leaves])
        return fn.output(result_type(**dict(zip(names, outs))))

    return adapted


class _KeptResiduals:
    """The residuals of the last few host forwards, for the backward of the same call.

    A ``jax.custom_vjp`` residual must be a JAX value, so the host objects a backward rule
    can reuse (an ODE solve's accepted steps and states) cannot travel with it; without
    them the backward callback solves again (half of a neural-ODE training step). They are
    kept here instead, under the forward's inputs and outputs (copies), and handed to a
    backward whose inputs and outputs are bitwise the same: the forward is deterministic,
    so those residuals are the ones it would recompute. At most :attr:`SIZE` are kept
    (a vmapped batch beyond that recomputes); each is used once.
    """

    SIZE = 4

    def __init__(self) -> None:
        self._entries: list[tuple[list, list, Any]] = []
        self._lock = threading.Lock()

    def add(self, leaves: list, outs: tuple, residuals: Any) -> None:
        if residuals is None:
            return
        entry = ([B.host_numpy(v).copy() for v in leaves],
                 [B.host_numpy(v).copy() for v in outs], residuals)
        with self._lock:
            self._entries.append(entry)
            del self._entries[:-self.SIZE]

    def take(self, leaves: list, outs: list) -> Any:
        with self._lock:
            for k in range(len(self._entries) - 1, -1, -1):
                kl, ko, residuals = self._entries[k]
                if _same(kl, leaves) and _same(ko, outs):
                    del self._entries[k]
                    return residuals
        return None


def _same(a: list, b: list) -> bool:
    np = B.host_namespace()
    return len(a) == len(b) and all(
        x.shape == y.shape and x.dtype == y.dtype and bool(np.array_equal(
            x, y, equal_nan=x.dtype.kind in "fc")) for x, y in zip(a, b))


def _warn_if_on_accelerator(leaves: list[Any]) -> None:
    global _warned_device
    if _warned_device:
        return
    for leaf in leaves:
        devices = getattr(leaf, "devices", None)
        if devices is None:
            continue
        try:
            platforms = {d.platform for d in devices()}
        except Exception:  # a tracer has no concrete device
            continue
        if platforms - {"cpu"}:
            _warned_device = True
            warnings.warn(
                "diffsolve.to_jax: the inputs are on "
                f"{', '.join(sorted(platforms))}; jax.pure_callback runs diffsolve on the "
                "host, so they are copied to the host and back on every call. For GPU "
                "solves pass CuPy arrays, or use diffsolve.to_torch with CUDA tensors",
                stacklevel=3,
            )
            return
