"""Derivatives of the bilevel objectives, from the autodiff system the arrays belong to.

The bilevel loops need, at a point ``(x, y)``:

* ``∇ₓf, ∇ᵧf`` of the outer objective ``f`` and ``∇ₓg, ∇ᵧg`` of the inner one ``g``;
* Hessian-vector products ``∇²ᵧᵧg·v`` and ``∇²ₓᵧg·v = ∂ₓ⟨∇ᵧg(x, y), v⟩`` (implicit,
  bo-rep, :func:`~diffsolve.bilevel.hypergradient`);
* ``(Jₓcᵀλ, Jᵧcᵀλ)`` of the lower-level constraints ``c`` (lv-hba).

Everything else in the loops is array-API code in the namespace of ``x`` and ``y``, so the
derivatives decide where a problem can run. :class:`Oracle` takes them from

* **the user**: ``outer_grad(x, y) -> (∇ₓf, ∇ᵧf)``, ``inner_grad(x, y) -> (∇ₓg, ∇ᵧg)``,
  ``inner_hvp(x, y, v) -> (∇²ₓᵧg·v, ∇²ᵧᵧg·v)``, ``constraint_vjp(x, y, lam) ->
  (Jₓcᵀλ, Jᵧcᵀλ)``, written for any array library (CuPy, array_api_strict, ...); with
  mini-batches the sample indices come last: ``outer_grad(x, y, idx)``,
  ``inner_hvp(x, y, v, idx)``;
* otherwise **the autodiff system of the arrays**: HIPS autograd for NumPy (objectives
  written with ``autograd.numpy``), ``torch.autograd`` for torch tensors, ``jax.vjp`` for
  JAX arrays (objectives written with torch / jax.numpy). CuPy and array_api_strict
  arrays have none: a missing derivative is a ``TypeError`` naming it.

The autograd path traces ``y ↦ ∇ᵧg(x, y)`` once per point and reuses the trace for every
Hessian-vector product (the Hessian is symmetric, so the VJP of that map is its product).
Every autograd trace is checked (:func:`diffsolve._user_function.traced_vjp`, with x and y
traced jointly): an objective written with plain NumPy whose dependence autograd cannot see
raises :class:`~diffsolve.NotTraceableError` instead of a zero derivative, and autograd's
own warnings are passed on, never silenced.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .. import _backend as B
from .. import _validate as V

__all__ = ["Oracle", "autodiff_backend", "check_array", "first_call", "same_library"]

# what a user can do when autograd cannot see through an objective
WAYS_OUT = ("or pass the derivatives yourself (outer_grad=, inner_grad=, inner_hvp=, "
            "constraint_vjp=), or write the objectives with torch / jax.numpy and pass torch "
            "/ JAX arrays (their own autodiff is then used)")
_WHAT = {"outer": "the outer objective", "inner": "the inner objective",
         "constraint": "the lower-level constraint", "grad_y inner": "∇ᵧ of the inner objective"}


def check_array(where: str, name: str, a, *, finite: bool = True):
    """diffsolve's array policy for x and y, torch / JAX arrays included: objectives written
    with torch / jax.numpy are differentiated by their own autodiff. ``finite=False`` leaves
    the NaN / inf check to the caller."""
    return V.float_array(where, name, a, allow_frameworks=True, finite=finite)


same_library = V.same_library


def first_call(where: str, fn, name: str, x, y, xname="x", yname="y"):
    """``fn(x, y)``, with the user function's shape errors turned into one that says which
    call failed, and its output checked to be a scalar."""
    try:
        value = fn(x, y)
    except (ValueError, TypeError, IndexError) as e:
        raise type(e)(f"{where}: {name}({xname}, {yname}) failed for {xname} of shape "
                      f"{tuple(x.shape)} and {yname} of shape {tuple(y.shape)}: {e}; check "
                      f"the shapes of {xname} and {yname}, and that {name} is written for "
                      f"{type(x).__module__.split('.')[0]} arrays") from e
    check_scalar(where, value, name)
    return value


def check_scalar(where: str, value, name: str):
    """``ValueError`` unless ``value`` (maybe an autograd box) holds one number."""
    from autograd.tracer import getval  # autograd boxes carry their value's shape

    shape = tuple(getattr(getval(value), "shape", ()))
    if math.prod(shape) != 1:
        raise ValueError(f"{where}: {name}(x, y) must return a scalar, got shape {shape}")


def autodiff_backend(xp) -> str | None:
    """``"autograd"``, ``"torch"``, ``"jax"``, or ``None`` for namespaces without autodiff."""
    if B.is_numpy(xp):
        return "autograd"
    name = getattr(xp, "__name__", "")
    if "torch" in name:
        return "torch"
    if "jax" in name:
        return "jax"
    return None


def _bind(fn, idx):
    """``fn`` with the mini-batch indices appended to its arguments (``idx=None``: as is)."""
    if fn is None or idx is None:
        return fn
    return lambda *args: fn(*args, idx)


# ---------------------------------------------------------------------------------------
# the three autodiff engines: (value, ∇ₓ, ∇ᵧ), ∇ᵧ, Hessian products, constraint VJPs
# ---------------------------------------------------------------------------------------
class _Autograd:
    def __init__(self, where="diffsolve.bilevel"):
        self.where = where

    def _vjp(self, fun, *args, argnum=0, what="outer", name=None):
        from ..implicit._user_vjp import autograd_vjp

        return autograd_vjp(fun, *args, argnum=argnum, where=self.where,
                            what=_WHAT.get(what, what), ways_out=WAYS_OUT, name=name)

    @staticmethod
    def _name(fn, default):
        return getattr(fn, "__name__", default)

    def value_and_grads(self, fn, x, y, what="outer"):
        import autograd.numpy as anp

        vjp, value = self._vjp(lambda a, b: fn(a, b), x, y, argnum=(0, 1), what=what,
                               name=self._name(fn, what))
        gx, gy = vjp(anp.ones_like(anp.asarray(value)))
        return value, gx, gy

    def grad_y(self, fn, x, y, what="inner"):
        import autograd.numpy as anp

        vjp, value = self._vjp(lambda y_: fn(x, y_), y, what=what, name=self._name(fn, what))
        return vjp(anp.ones_like(anp.asarray(value)))

    def hessian(self, fn, x, y):
        import autograd

        grad_y = autograd.grad(fn, 1)
        name = self._name(fn, "inner")
        # ∇²ᵧᵧg is symmetric: the VJP of y ↦ ∇ᵧg (one trace, reused) is its product
        hyy, gy = self._vjp(lambda y_: grad_y(x, y_), y, what="grad_y inner", name=name)
        state = {}

        def hxy(v):
            if "x" not in state:
                state["x"] = self._vjp(lambda x_: grad_y(x_, y), x, what="grad_y inner",
                                       name=name)[0]
            return state["x"](v)

        return gy, hyy, hxy

    def hvp_both(self, fn, x, y, v):
        import autograd

        grad_y = autograd.grad(fn, 1)
        return self._vjp(lambda a, b: grad_y(a, b), x, y, argnum=(0, 1),
                         what="grad_y inner", name=self._name(fn, "inner"))[0](v)

    def vjp_xy(self, fn, x, y, w):
        import autograd.numpy as anp

        vjp, value = self._vjp(lambda a, b: fn(a, b), x, y, argnum=(0, 1), what="constraint",
                               name=self._name(fn, "constraint"))
        gx, gy = vjp(anp.reshape(w, anp.shape(value)))
        return value, gx, gy


class _Torch:
    @staticmethod
    def _leaf(a):
        return a.detach().requires_grad_(True)

    @staticmethod
    def _grads(out, inputs, grad_outputs=None, create_graph=False, retain_graph=None):
        import torch

        gs = torch.autograd.grad(out, inputs, grad_outputs=grad_outputs,
                                 create_graph=create_graph, retain_graph=retain_graph,
                                 allow_unused=True)
        return tuple(torch.zeros_like(i) if g is None else g for g, i in zip(gs, inputs))

    def value_and_grads(self, fn, x, y, what=None):
        x_, y_ = self._leaf(x), self._leaf(y)
        value = fn(x_, y_)
        gx, gy = self._grads(value.sum(), (x_, y_))
        return value.detach(), gx.detach(), gy.detach()

    def grad_y(self, fn, x, y, what=None):
        y_ = self._leaf(y)
        (gy,) = self._grads(fn(x, y_).sum(), (y_,))
        return gy.detach()

    def hessian(self, fn, x, y):
        x_, y_ = self._leaf(x), self._leaf(y)
        (gy,) = self._grads(fn(x_, y_).sum(), (y_,), create_graph=True)

        def hyy(v):
            return self._grads(gy, (y_,), grad_outputs=v, retain_graph=True)[0].detach()

        def hxy(v):
            return self._grads(gy, (x_,), grad_outputs=v, retain_graph=True)[0].detach()

        return gy.detach(), hyy, hxy

    def hvp_both(self, fn, x, y, v):
        x_, y_ = self._leaf(x), self._leaf(y)
        (gy,) = self._grads(fn(x_, y_).sum(), (y_,), create_graph=True)
        hx, hy = self._grads(gy, (x_, y_), grad_outputs=v)
        return hx.detach(), hy.detach()

    def vjp_xy(self, fn, x, y, w):
        x_, y_ = self._leaf(x), self._leaf(y)
        value = fn(x_, y_)
        gx, gy = self._grads(value, (x_, y_), grad_outputs=w.reshape(value.shape))
        return value.detach(), gx.detach(), gy.detach()


# Jitted JAX derivatives outlive one call: a hypergradient or bilevel loop called again
# with the same functions reuses them instead of compiling again (jax.jit then keeps one
# executable per shape and dtype). Bounded, least recently used first out.
JIT_CACHE_SIZE = 64
_JIT_CACHE: OrderedDict = OrderedDict()
_JIT_LOCK = threading.Lock()  # callers may run hypergradients in threads


def _bound_objects(fn) -> tuple:
    """What a Python function reads besides its arguments: its closure's contents and the
    globals its code names. ``jax.jit`` bakes them in as constants, so a cached function
    is reused only while they are the same objects (rebinding ``A = ...`` misses)."""
    code = getattr(fn, "__code__", None)
    if code is None:  # functools.partial, callable objects: their identity alone
        return ()
    cells = tuple(c.cell_contents for c in (fn.__closure__ or ()) if _filled(c))
    glob = getattr(fn, "__globals__", {})
    return cells + tuple(glob[n] for n in code.co_names if n in glob)


def _content(obj):
    """The content key of a bound NumPy array (an exact checksum: an array mutated in place
    behind the same binding misses the cache, since ``jax.jit`` baked its old values in);
    ``None`` for anything else (JAX arrays are immutable; other objects go by identity)."""
    if B.is_numpy_array(obj) and obj.dtype.kind in "biufc":
        return (obj.shape, obj.dtype, B.content_checksum(obj))
    return None


def _filled(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018 (an empty cell raises)
    except ValueError:
        return False
    return True


def clear_jit_cache() -> None:
    """Forget every cached jitted JAX derivative (tests; freeing the closed-over arrays)."""
    with _JIT_LOCK:
        _JIT_CACHE.clear()
        _RECENT.clear()


# The last hit per (kind, function identities): a loop that calls again with the same
# function objects checks that they bind the same objects (and the same contents of bound
# NumPy arrays) and skips building and hashing the full key, which measured 20-35 µs of a
# 100-feature hypergradient's ~250 µs. Entries hold the functions and bound objects, so an
# identity in a key is never reused while its entry lives.
_RECENT: dict = {}


def _recent_hit(ids: tuple, fns: tuple, bound: tuple):
    entry = _RECENT.get(ids)
    if entry is None:
        return None
    r_fns, r_bound, arrays, compiled = entry
    for a, b in zip(r_fns, fns):
        if a is not b:
            return None
    for r, c in zip(r_bound, bound):
        if len(r) != len(c):
            return None
        for a, b in zip(r, c):
            if a is not b:
                return None
    for (i, j), content in arrays:
        if _content(bound[i][j]) != content:
            return None  # a bound NumPy array changed in place
    return compiled


def cached_jit(kind: str, fns: tuple, build: Callable) -> Callable:
    """``jax.jit(build(*fns))``, shared across calls for the same function objects.

    The key is ``kind`` and the identity of each function in ``fns`` together with the
    identity of the objects it binds (:func:`_bound_objects`); the entry holds those
    objects, so no identity is reused while it lives. A new function object (a fresh
    closure) or a rebound global misses, and so does a bound NumPy array mutated in place
    (its content is part of the key, by an exact checksum: ``jax.jit`` alone would keep
    the values it baked in).
    """
    bound = tuple(_bound_objects(f) for f in fns)
    ids = (kind, *map(id, fns))
    with _JIT_LOCK:
        hit = _recent_hit(ids, fns, bound)
    if hit is not None:
        return hit
    import jax

    contents = tuple(tuple(map(_content, b)) for b in bound)
    key = (kind, tuple(id(f) for f in fns), tuple(tuple(map(id, b)) for b in bound), contents)
    with _JIT_LOCK:
        entry = _JIT_CACHE.get(key)
        if entry is not None:
            _JIT_CACHE.move_to_end(key)
    if entry is None:
        new = jax.jit(build(*fns))  # lazy: nothing is traced until the first call
        with _JIT_LOCK:
            # a thread that got here first wins, so every caller shares one compile
            entry = _JIT_CACHE.setdefault(key, (new, fns, bound))
            _JIT_CACHE.move_to_end(key)
            while len(_JIT_CACHE) > JIT_CACHE_SIZE:
                _JIT_CACHE.popitem(last=False)
    compiled = entry[0]
    arrays = tuple(((i, j), c) for i, cs in enumerate(contents) for j, c in enumerate(cs)
                   if c is not None)
    with _JIT_LOCK:
        if len(_RECENT) >= JIT_CACHE_SIZE:
            _RECENT.clear()
        _RECENT[ids] = (fns, bound, arrays, compiled)
    return compiled


class _Jax:
    """JAX: each derivative is ``jax.jit``-compiled once per function and shared across
    calls (:func:`cached_jit`); mini-batch runs bind fresh closures on every draw, so
    those run eagerly."""

    def __init__(self):
        self.use_jit = True

    def _compiled(self, kind, fn, build):
        if not self.use_jit:
            return build(fn)
        return cached_jit(kind, (fn,), build)

    @staticmethod
    def _scalar(fn):
        import jax.numpy as jnp

        return lambda a, b: jnp.sum(fn(a, b))

    def value_and_grads(self, fn, x, y, what=None):
        import jax

        f = self._compiled("vg", fn, lambda f: jax.value_and_grad(self._scalar(f), (0, 1)))
        value, (gx, gy) = f(x, y)
        return value, gx, gy

    def grad_y(self, fn, x, y, what=None):
        import jax

        return self._compiled("gy", fn, lambda f: jax.grad(self._scalar(f), 1))(x, y)

    def penalised_grad_y(self, outer, inner, x, y, lam):
        """``∇ᵧ(outer + λ inner)``, compiled once for the pair with λ an argument."""
        import jax

        def build(f, g):
            return jax.grad(lambda a, b, t: self._scalar(f)(a, b) + t * self._scalar(g)(a, b),
                            1)

        if not self.use_jit:
            return build(outer, inner)(x, y, lam)
        return cached_jit("pen", (outer, inner), build)(x, y, lam)

    def hessian(self, fn, x, y):
        """``(None, hyy, hxy)``: ∇ᵧg itself is not needed by the callers, so not computed."""
        import jax

        def build_gy(f):
            return jax.grad(self._scalar(f), 1)

        def build_hyy(f):
            gy = build_gy(f)
            return lambda a, b, v: jax.vjp(lambda t: gy(a, t), b)[1](v)[0]

        def build_hxy(f):
            gy = build_gy(f)
            return lambda a, b, v: jax.vjp(lambda t: gy(t, b), a)[1](v)[0]

        hyy = self._compiled("hyy", fn, build_hyy)
        hxy = self._compiled("hxy", fn, build_hxy)
        return None, (lambda v: hyy(x, y, v)), (lambda v: hxy(x, y, v))

    def hvp_both(self, fn, x, y, v):
        import jax

        def build(f):
            gy = jax.grad(self._scalar(f), 1)
            return lambda a, b, w: jax.vjp(gy, a, b)[1](w)

        return self._compiled("hvp", fn, build)(x, y, v)

    def vjp_xy(self, fn, x, y, w):
        import jax

        def build(f):
            def run(a, b, w_):
                value, vjp = jax.vjp(f, a, b)
                gx, gy = vjp(jax.numpy.reshape(w_, jax.numpy.shape(value)))
                return value, gx, gy

            return run

        return self._compiled("vjp", fn, build)(x, y, w)


_ENGINES = {"autograd": _Autograd, "torch": _Torch, "jax": _Jax}

# what each user callable computes, for error messages
_SIGNATURES = {
    "outer_grad": "outer_grad(x, y) -> (∇ₓ outer, ∇ᵧ outer)",
    "inner_grad": "inner_grad(x, y) -> (∇ₓ inner, ∇ᵧ inner)",
    "inner_hvp": "inner_hvp(x, y, v) -> (∇²ₓᵧ inner · v, ∇²ᵧᵧ inner · v)",
    "constraint_vjp": "constraint_vjp(x, y, lam) -> (Jₓcᵀlam, Jᵧcᵀlam)",
}


def check_callables(where: str, **fns):
    """``TypeError`` for a derivative option that is neither ``None`` nor callable."""
    for name, fn in fns.items():
        if fn is not None and not callable(fn):
            raise TypeError(f"{where}: {name} must be a callable {_SIGNATURES[name]} or None, "
                            f"got {type(fn).__name__}")


class Oracle:
    """The derivatives of ``outer``, ``inner`` and ``constraint`` for one run.

    Parameters
    ----------
    outer, inner, constraint : callable
        The value functions, already bound to their mini-batch when there is one (see
        :meth:`bind`).
    xp
        The namespace of x and y.
    needs : iterable of str
        The user-callable names the caller will use (``outer_grad``, ``inner_grad``,
        ``inner_hvp``, ``constraint_vjp``); each must be given by the user or derivable
        by the arrays' autodiff system, else ``TypeError``.
    where, what : str
        Caller and purpose, for error messages.
    """

    # the arrays' autodiff engine; None only when every derivative the caller needs is a
    # user callable, and then the methods below never reach it
    engine: Any

    def __init__(self, outer, inner, constraint, xp, *, outer_grad=None, inner_grad=None,
                 inner_hvp=None, constraint_vjp=None, needs=(), where="diffsolve.bilevel",
                 what="this method"):
        self.raw = {"outer": outer, "inner": inner, "constraint": constraint,
                    "outer_grad": outer_grad, "inner_grad": inner_grad,
                    "inner_hvp": inner_hvp, "constraint_vjp": constraint_vjp}
        self.xp = xp
        self.where = where
        backend = autodiff_backend(xp)
        self.engine = None
        if backend == "autograd":
            self.engine = _Autograd(where)
        elif backend is not None:
            self.engine = _ENGINES[backend]()
        missing = [n for n in needs if self.raw[n] is None]
        if missing and self.engine is None:
            listed = "; ".join(_SIGNATURES[n] for n in missing)
            raise TypeError(
                f"{where}: x and y are {getattr(xp, '__name__', xp)} arrays, for which no "
                f"autodiff system is available, so {what} needs the derivatives of your "
                f"functions: pass {listed}. (NumPy arrays use HIPS autograd, torch tensors "
                "torch.autograd and JAX arrays jax.vjp by default.)"
            )
        self.bind(None, None)

    def bind(self, outer_idx, inner_idx):
        """Use the mini-batches ``outer_idx`` / ``inner_idx`` (``None``: the functions as given)."""
        r = self.raw
        if isinstance(self.engine, _Jax):
            self.engine.use_jit = outer_idx is None and inner_idx is None
        self.outer = _bind(r["outer"], outer_idx)
        self.outer_grad = _bind(r["outer_grad"], outer_idx)
        self.inner = _bind(r["inner"], inner_idx)
        self.inner_grad = _bind(r["inner_grad"], inner_idx)
        self.inner_hvp = _bind(r["inner_hvp"], inner_idx)

    # -----------------------------------------------------------------------------------
    def _check(self, g, like, name):
        if g is None:
            return self.xp.zeros_like(like)
        if not B.is_array(g) or tuple(g.shape) != tuple(like.shape):
            got = tuple(g.shape) if B.is_array(g) else type(g).__name__
            raise ValueError(f"{self.where}: {name} returned {got} where an array of shape "
                             f"{tuple(like.shape)} was expected")
        return g if g.dtype == like.dtype else self.xp.astype(g, like.dtype)

    def _pair(self, out, name, x, y):
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise TypeError(f"{self.where}: {name} must return a pair (for x, for y): "
                            f"{_SIGNATURES[name]}, got {type(out).__name__}")
        return self._check(out[0], x, f"{name}(...)[0]"), self._check(out[1], y,
                                                                     f"{name}(...)[1]")

    def outer_value(self, x, y) -> float:
        return float(self.outer(x, y))

    def outer_grads(self, x, y):
        """``(f(x, y) as float, ∇ₓf, ∇ᵧf)``."""
        if self.outer_grad is not None:
            gx, gy = self._pair(self.outer_grad(x, y), "outer_grad", x, y)
            return float(self.outer(x, y)), gx, gy
        value, gx, gy = self.engine.value_and_grads(self.outer, x, y, what="outer")
        return float(value), self._check(gx, x, "∇ₓ outer"), self._check(gy, y, "∇ᵧ outer")

    def inner_grads(self, x, y):
        """``(∇ₓg, ∇ᵧg)``."""
        if self.inner_grad is not None:
            return self._pair(self.inner_grad(x, y), "inner_grad", x, y)
        _, gx, gy = self.engine.value_and_grads(self.inner, x, y, what="inner")
        return self._check(gx, x, "∇ₓ inner"), self._check(gy, y, "∇ᵧ inner")

    def inner_grad_y(self, x, y):
        if self.inner_grad is not None:
            return self._pair(self.inner_grad(x, y), "inner_grad", x, y)[1]
        return self._check(self.engine.grad_y(self.inner, x, y), y, "∇ᵧ inner")

    def penalised_grad_y(self, x, y, lam):
        """``∇ᵧ(f + λg)`` (one reverse pass when both come from autodiff)."""
        if self.outer_grad is None and self.inner_grad is None:
            if isinstance(self.engine, _Jax):
                gy = self.engine.penalised_grad_y(self.outer, self.inner, x, y, lam)
                return self._check(gy, y, "∇ᵧ(outer + λ inner)")
            gy = self.engine.grad_y(lambda a, b: self.outer(a, b) + lam * self.inner(a, b),
                                    x, y, what="outer + λ inner")
            return self._check(gy, y, "∇ᵧ(outer + λ inner)")
        return self.outer_grads(x, y)[2] + lam * self.inner_grad_y(x, y)

    def hessian(self, x, y):
        """``(hyy, hxy)``: ``v ↦ ∇²ᵧᵧg·v`` and ``v ↦ ∇²ₓᵧg·v`` at (x, y)."""
        if self.inner_hvp is not None:
            hvp = self.inner_hvp

            def hyy(v):
                return self._pair(hvp(x, y, v), "inner_hvp", x, y)[1]

            def hxy(v):
                return self._pair(hvp(x, y, v), "inner_hvp", x, y)[0]

            return hyy, hxy
        _, hyy_raw, hxy_raw = self.engine.hessian(self.inner, x, y)

        # the other branch returned its own pair above
        def hyy(v):  # type: ignore[no-redef]
            return self._check(hyy_raw(v), y, "∇²ᵧᵧ inner · v")

        def hxy(v):  # type: ignore[no-redef]
            return self._check(hxy_raw(v), x, "∇²ₓᵧ inner · v")

        return hyy, hxy

    def outer_hessian_yy(self, x, y):
        """``v ↦ ∇²ᵧᵧf·v`` at (x, y) from the arrays' autodiff system, or None without one
        (the penalty method's Newton steps on f + λg need it; user derivative callables
        give no second derivatives of ``outer``)."""
        if self.engine is None or self.outer_grad is not None:
            return None
        _, hyy_raw, _ = self.engine.hessian(self.outer, x, y)

        def hyy(v):
            return self._check(hyy_raw(v), y, "∇²ᵧᵧ outer · v")

        return hyy

    def hvp_both(self, x, y, v):
        """``(∇²ₓᵧg·v, ∇²ᵧᵧg·v)`` in one go (one user call / one trace)."""
        if self.inner_hvp is not None:
            return self._pair(self.inner_hvp(x, y, v), "inner_hvp", x, y)
        hx, hy = self.engine.hvp_both(self.inner, x, y, v)
        return self._check(hx, x, "∇²ₓᵧ inner · v"), self._check(hy, y, "∇²ᵧᵧ inner · v")

    def curvature_probe(self, x, y) -> Callable:
        """``v ↦ ∇²ᵧᵧg·v`` for estimating the step size: exact when available, else central
        differences of ``∇ᵧg`` (the largest eigenvalue needs only a couple of digits)."""
        if self.inner_hvp is not None or self.engine is not None:
            return self.hessian(x, y)[0]
        xp = self.xp
        eps = float(xp.finfo(y.dtype).eps) ** (1.0 / 3.0)
        scale = max(1.0, float(xp.sqrt(xp.sum(y * y))))

        def fd(v):
            h = eps * scale
            return (self.inner_grad_y(x, y + h * v) - self.inner_grad_y(x, y - h * v)) / (2 * h)

        return fd

    def constraint_value_and_vjp(self, x, y, lam):
        """``(c(x, y), Jₓcᵀλ, Jᵧcᵀλ)``; ``lam`` has c's shape."""
        c = self.raw["constraint"]
        if self.raw["constraint_vjp"] is not None:
            value = c(x, y)
            gx, gy = self._pair(self.raw["constraint_vjp"](x, y, lam), "constraint_vjp", x, y)
            return value, gx, gy
        value, gx, gy = self.engine.vjp_xy(c, x, y, lam)
        return value, self._check(gx, x, "Jₓcᵀλ"), self._check(gy, y, "Jᵧcᵀλ")
