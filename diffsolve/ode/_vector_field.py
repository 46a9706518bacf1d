"""The user's vector field ``f(t, y, params)`` and its vector–Jacobian product.

Where the VJP comes from, in order: the ``vjp=`` callable if given; otherwise HIPS
autograd traces ``f`` (NumPy states, ``f`` written with ``autograd.numpy``). A Numba
``@njit`` ``f`` or a CuPy state needs ``vjp=``. :func:`from_torch` and :func:`from_jax`
turn a function written in PyTorch or JAX into an ``(f, vjp)`` pair.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .. import _backend as B
from .._typing import Array

#: ``f(t, y, params) -> dy/dt`` on NumPy/CuPy arrays
VectorField = Callable[[float, Array, Array], Array]
#: ``vjp(t, y, params, v) -> (vᵀ ∂f/∂y, vᵀ ∂f/∂params or None without params)``
VectorFieldVJP = Callable[[float, Array, Array, Array], tuple[Array, Array | None]]

__all__ = ["from_jax", "from_torch", "make_rhs", "make_vjp"]

WHERE = "diffsolve.ode.odeint"


def _describe(out) -> str:
    shape = getattr(out, "shape", None)
    if shape is None:
        return f"a {type(out).__name__}"
    return f"an array of shape {tuple(shape)}"


def make_rhs(f, params, shape, xp):
    """``rhs(t, y_flat) -> dy/dt flat``: calls ``f`` in the user's shape and checks it."""
    shape = tuple(shape)
    n = math.prod(shape)
    flat = shape != (n,)
    if flat:
        def rhs(t, y):
            out = f(t, xp.reshape(y, shape), params)
            if getattr(out, "shape", None) != shape:
                _bad_shape(out, t, shape)
            return xp.reshape(out, (n,))
    else:
        def rhs(t, y):
            out = f(t, y, params)
            if getattr(out, "shape", None) != shape:
                _bad_shape(out, t, shape)
            return out
        # the step loop may call f directly (and this rhs only to report a bad shape)
        rhs.direct, rhs.params, rhs.shape = f, params, shape  # type: ignore[attr-defined]
    # a from_jax field: the step loop evaluates a whole step's stages in one compiled call
    pair = getattr(f, "jax_pair", None)
    if isinstance(pair, _JaxPair) and B.is_numpy(xp):
        rhs.jax_stages = JaxStages(pair, params, shape)  # type: ignore[attr-defined]
    return rhs


class JaxStages:
    """The stages of one explicit Runge–Kutta step of a :func:`from_jax` field, in one
    jitted call: ``G_i = y + h Σ_j a_ij K_j`` (summed in the order of the other paths) and
    ``K_i = f(t + c_i h, G_i)``. The host loop would call the jitted field once per stage
    (≈ 11 µs of dispatch each on a CPU, six a dopri5 step); the values agree with it to
    rounding (XLA may fuse the combinations)."""

    def __init__(self, pair, params, shape):
        self.pair, self.params, self.shape = pair, params, tuple(shape)
        self.n = math.prod(self.shape)
        self._A: Any = None  # the tableau of the last call, and its compiled stages
        self._fn: Any = None
        self._p: Any = None  # params on JAX's device: moved once, not at every step

    def __call__(self, A, c, t, h, y, k0):
        """``(K, G)`` as ``(s, n)`` float64 NumPy arrays for the flat state ``y`` and the
        first slope ``k0``."""
        if A is not self._A:
            import jax

            self._fn = self.pair.forward_stages(A, c, self.params is not None, self.shape)
            self._A = A
            if self._p is None and self.params is not None:
                self._p = jax.device_put(self.params)
        K, G = self._fn(float(t), float(h), B.host_numpy(y).reshape(self.shape),
                        B.host_numpy(k0).reshape(self.shape), self._p)
        s = A.shape[0]
        return (B.host_numpy(K).reshape((s, self.n)), B.host_numpy(G).reshape((s, self.n)))


def _bad_shape(out, t, shape):
    raise ValueError(
        f"{WHERE}: f(t, y, params) returned {_describe(out)} at t={t!r}; it must return "
        f"dy/dt as an array of y's shape {shape} in y's array library"
    )


def make_vjp(f, vjp, params, shape, xp, jitted: bool):
    """``fvjp(t, y_flat, v_flat) -> (v_y flat, v_params or None)``."""
    shape = tuple(shape)
    n = math.prod(shape)
    flat = shape != (n,)

    # (the arrays' own reshape: NumPy / CuPy states, called per stage, where the namespace
    # wrapper's reshape costs a microsecond or two)
    def unflat(a):
        return a.reshape(shape) if flat else a

    def reflat(a):
        return a.reshape((n,)) if flat else a

    if vjp is not None:
        graph: TorchStepGraph | JaxStepGraph | None = None
        tpair = getattr(vjp, "torch_pair", None)
        if getattr(f, "torch_pair", None) is tpair and isinstance(tpair, _TorchPair):
            graph = TorchStepGraph(tpair, params, shape, xp)
        jpair = getattr(vjp, "jax_pair", None)
        if getattr(f, "jax_pair", None) is jpair and isinstance(jpair, _JaxPair) and \
                B.is_numpy(xp):
            graph = JaxStepGraph(jpair, params, shape, xp)

        def fvjp(t, y, v):
            out = vjp(t, unflat(y), params, unflat(v))
            if not isinstance(out, tuple) or len(out) != 2:
                raise TypeError(
                    f"{WHERE}: vjp(t, y, params, v) must return a tuple (v_y, v_params), "
                    f"got {type(out).__name__}"
                )
            vy, vp = out
            if getattr(vy, "shape", None) != shape:
                raise ValueError(f"{WHERE}: vjp returned v_y as {_describe(vy)} at t={t!r}; "
                                 f"expected y's shape {shape}")
            return reflat(vy), vp
        # f and vjp from one from_torch / from_jax call: the explicit discrete adjoint
        # reverses a whole step at once (the per-stage fvjp above stays for every other use)
        fvjp.step_graph = graph  # type: ignore[attr-defined]
        return fvjp
    if jitted:
        def fvjp(t, y, v):
            raise TypeError(
                f"{WHERE}: f is a Numba @njit function, which autograd cannot trace; pass "
                "vjp=vjp(t, y, params, v) -> (v_y, v_params) (it may be @njit too), or "
                "write f with autograd.numpy for the default VJP"
            )
        return fvjp
    if not B.is_numpy(xp):
        def fvjp(t, y, v):
            raise TypeError(
                f"{WHERE}: the default VJP uses HIPS autograd, which works on NumPy only; "
                f"for {xp.__name__} arrays pass vjp=vjp(t, y, params, v) -> (v_y, v_params)"
            )
        return fvjp
    from autograd import make_vjp as ag_make_vjp

    from .._user_function import traced_vjp

    # The first VJP of a solve is traced by traced_vjp, which raises NotTraceableError when
    # autograd cannot see how f depends on (y, params) (f written with plain NumPy would
    # otherwise give a silently zero gradient); the later ones, with the same f, use
    # autograd directly (its warnings are not silenced either way). traced_vjp records
    # warnings around each trace, which would be a per-stage cost.
    checked: list[bool] = []

    def trace(fun, args, argnums):
        if checked:
            return ag_make_vjp(fun, argnum=argnums)(*args)[0]
        fun.__name__ = getattr(f, "__name__", type(f).__name__)  # named in the error
        vjp_fun, _ = traced_vjp(fun, args, argnums, where=WHERE, what="the vector field f",
                                ways_out=_WAYS_OUT)
        checked.append(True)
        return vjp_fun

    if params is None:
        def fvjp(t, y, v):
            vjp_fun = trace(lambda yy: f(t, yy, None), (unflat(y),), 0)
            return reflat(vjp_fun(unflat(v))), None
    else:
        def fvjp(t, y, v):
            vjp_fun = trace(lambda yy, pp: f(t, yy, pp), (unflat(y), params), (0, 1))
            vy, vp = vjp_fun(unflat(v))
            return reflat(vy), vp
    return fvjp


_WAYS_OUT = ("pass vjp=vjp(t, y, params, v) -> (v_y, v_params) with the products written "
             "out (a Numba @njit f with an @njit vjp runs compiled), or write f in PyTorch "
             "or JAX and pass the pair from diffsolve.ode.from_torch(f) / from_jax(f)")


def from_torch(f: Callable[..., Any]) -> tuple[VectorField, VectorFieldVJP]:
    """Turn ``f(t, y, params)`` written with PyTorch into ``(f_np, vjp_np)`` for odeint.

    ``f_np`` takes and returns NumPy (or CuPy, via DLPack without a copy) arrays;
    ``vjp_np(t, y, params, v)`` runs ``torch.autograd.grad``. Use as
    ``odeint(f_np, y0, t, p, vjp=vjp_np)``.

    Parameters
    ----------
    f : callable
        ``f(t, y, params) -> dy/dt`` on torch tensors (``t`` a Python float; with
        ``odeint(..., batch_mode="vectorized")``, ``y`` is the (B, d) batch and ``t`` a
        (B, 1) tensor of the rows' times).

    Returns
    -------
    f_np : callable
        ``f_np(t, y, params)`` on NumPy or CuPy arrays.
    vjp_np : callable
        ``vjp_np(t, y, params, v) -> (v^T df/dy, v^T df/dparams)``.

    Notes
    -----
    Passed together to :func:`~diffsolve.ode.odeint` (``odeint(f_np, ..., vjp=vjp_np)``),
    the pair is recognised by the discrete adjoint of the explicit methods: each step is
    rebuilt in torch with its autograd graph and reversed in one backward pass, rather
    than one ``vjp_np`` call (a re-run of ``f`` and a start of torch's backward engine)
    per stage; the gradient is the same to rounding. Wrapping either function, or pairing
    ``f_np`` with the ``vjp_np`` of another call, keeps the per-stage route.

    See Also
    --------
    diffsolve.ode.from_jax : The same for JAX.
    diffsolve.ode.odeint : The solver that takes ``f_np`` and ``vjp=vjp_np``.

    Examples
    --------
    >>> import numpy as np
    >>> from diffsolve.ode import from_torch, odeint
    >>> f_np, vjp_np = from_torch(lambda t, y, p: -p * y)
    >>> res = odeint(f_np, np.array([1.0]), np.array([0.0, 1.0]), np.array([2.0]), vjp=vjp_np)
    >>> bool(abs(res.ys[-1, 0] - np.exp(-2.0)) < 1e-6)
    True
    """
    import torch

    ndarray = B.host_namespace().ndarray
    # params is the same array at every call of a solve: its tensor view is made once
    # (a view shares memory, so an in-place change of params is still seen)
    last: list = [None, None]

    def to_t(x):
        if x is None:
            return None
        if type(x) is ndarray and x.flags.writeable and x.flags.c_contiguous:
            return torch.from_numpy(x)  # the same zero-copy view as DLPack, cheaper per call
        return torch.from_dlpack(B.dlpack_exportable(x))

    def p_t(params):
        if params is None:
            return None
        if last[0] is not params:
            last[0], last[1] = params, to_t(params)
        return last[1]

    def back(t_):
        t_ = t_.detach()
        if t_.device.type == "cpu" and not t_.is_conj() and not t_.is_neg():
            return t_.contiguous().numpy()
        return B.from_dlpack(t_.contiguous(), on_cuda=t_.device.type == "cuda")

    def t_t(t):
        # a float for one trajectory; batch_mode="vectorized" passes each row's time as a
        # (B, 1) array, which the field receives as a tensor like y
        return t if isinstance(t, float) else to_t(t)

    def f_np(t, y, params):
        with torch.no_grad():
            return back(f(t_t(t), to_t(y), p_t(params)))

    # the pair, marked as one: odeint's discrete adjoint then rebuilds each explicit RK
    # step in torch and reverses it in one backward pass (TorchStepGraph)
    pair = _TorchPair(f, to_t, back)
    f_np.torch_pair = pair  # type: ignore[attr-defined]

    def vjp_np(t, y, params, v):
        yt = to_t(y).detach().requires_grad_(True)
        pt = None if params is None else p_t(params).detach().requires_grad_(True)
        with torch.enable_grad():
            out = f(t_t(t), yt, pt)
            inputs = (yt,) if pt is None else (yt, pt)
            grads = torch.autograd.grad(out, inputs, grad_outputs=to_t(v), allow_unused=True)
        vy = grads[0] if grads[0] is not None else torch.zeros_like(yt)
        if pt is None:
            return back(vy), None
        vp = grads[1] if grads[1] is not None else torch.zeros_like(pt)
        return back(vy), back(vp)

    vjp_np.torch_pair = pair  # type: ignore[attr-defined]
    return f_np, vjp_np


def explicit_stages(f, t, y, h, p, A, c, axpy, *, k0=None, last: bool = True,
                    slope=None):
    """Slopes ``K`` and states ``G`` (lists) of one explicit Runge–Kutta step in the
    field's own library: ``G_i = y + h Σ_j a_ij K_j`` with the sum taken in the order of
    the forward step (left to right, zero coefficients skipped) and ``K_i = f(t + c_i h,
    G_i, p)``. ``axpy(u, v, a)`` is ``u + a v`` in that library (one graph node in torch);
    ``k0`` is a known first slope; ``last=False`` leaves the last slope out (``None``);
    ``slope`` checks or converts each new slope."""
    s = A.shape[0]
    K = [f(t, y, p) if k0 is None else k0]
    G = [y]
    for i in range(1, s):
        acc = None
        for j in range(i):
            a = float(A[i, j])
            if a != 0.0:
                acc = K[j] * a if acc is None else axpy(acc, K[j], a)
        G.append(y if acc is None else axpy(y, acc, h))
        if last or i < s - 1:
            k = f(t + float(c[i]) * h, G[i], p)
            K.append(k if slope is None else slope(k))
        else:
            K.append(None)
    return K, G


def _jax_axpy(u, v, a):
    return u + v * a


class _TorchPair:
    """What :func:`from_torch` knows about its field: the torch function and the
    zero-copy conversions in both directions."""

    def __init__(self, f, to_t, back):
        self.f, self.to_t, self.back = f, to_t, back


class TorchStepGraph:
    """One explicit Runge–Kutta step rebuilt in torch, reversed in one backward pass.

    The per-stage route of the discrete adjoint calls the VJP once per stage: each call
    runs the field again with autograd on and starts torch's backward engine, about 140 µs
    for a small MLP field, seven times a dopri5 step. Here the step's stages are evaluated
    once with their graph (the same assignments as the forward step, ``G_i = y + h Σ_j
    a_ij K_j``, ``K_i = f(t + c_i h, G_i)``, summed in the same order), and the cotangents
    the step receives (on its new state, its outputs, its error and stiffness estimates)
    go through the whole graph in one ``torch.autograd.grad``: 40 % less time per step
    reversed, measured on the 2-50-2 MLP field. The gradient is the same quantity (the
    reverse of the same assignments).
    """

    def __init__(self, pair: _TorchPair, params, shape, xp):
        self.pair, self.params, self.shape, self.xp = pair, params, tuple(shape), xp
        self.n = math.prod(self.shape)

    def build(self, t, y, h, A, c, last: bool = True):
        """The step's stages with their graph: a :class:`_StepStages`; ``last=False``
        leaves the last slope out (its row of values is zero, and no cotangent may reach
        it)."""
        import torch

        to_t, f = self.pair.to_t, self.pair.f
        yl = to_t(y).detach().reshape(self.shape).requires_grad_(True)
        pl = None if self.params is None else to_t(self.params).detach().requires_grad_(True)
        with torch.enable_grad():
            # u + a v as one node (torch.add's alpha): fewer graph nodes to reverse
            K, G = explicit_stages(f, t, yl, h, pl, A, c,
                                   lambda u, v, a: torch.add(u, v, alpha=a), last=last)
        return _StepStages(self, yl, pl, K, G)


class _StepStages:
    """The stages of one step (values as ``(s, n)`` arrays of the solve's library, and
    their torch graph) and the pull-back of cotangents on them."""

    def __init__(self, owner: TorchStepGraph, yl, pl, K, G):
        self.owner, self.yl, self.pl, self.Kt, self.Gt = owner, yl, pl, K, G
        for k in K:
            if k is not None and tuple(k.shape) != owner.shape:
                raise ValueError(f"{WHERE}: f(t, y, params) returned a tensor of shape "
                                 f"{tuple(k.shape)}; it must return dy/dt of y's shape "
                                 f"{owner.shape}")
        self._KG: tuple | None = None

    def _values(self):
        # only the error and stiffness regularisers' cotangents read the stage values
        if self._KG is None:
            xp, back, n = self.owner.xp, self.owner.pair.back, self.owner.n
            rows = [xp.reshape(back(k.detach()), (n,)) for k in self.Kt if k is not None]
            if len(rows) < len(self.Kt):
                rows.append(xp.zeros_like(rows[0]))
            self._KG = (xp.stack(rows),
                        xp.stack([xp.reshape(back(g.detach()), (n,)) for g in self.Gt]))
        return self._KG

    @property
    def K(self):
        return self._values()[0]

    @property
    def G(self):
        return self._values()[1]

    def pullback(self, Kbar, Gbar):
        """``(ȳ, p̄)`` of the step's input state and of params, given the cotangents of
        the stage slopes ``Kbar[i]`` and stage states ``Gbar[i]`` (``None``: zero)."""
        import torch

        owner = self.owner
        to_t, back, shape = owner.pair.to_t, owner.pair.back, owner.shape
        direct = None
        outs, seeds = [], []
        for i, g in enumerate(Gbar):
            if g is None:
                continue
            if self.Gt[i] is self.yl:  # G_0 is y itself
                direct = g if direct is None else direct + g
                continue
            outs.append(self.Gt[i])
            seeds.append(to_t(g).reshape(shape))
        for i, k in enumerate(Kbar):
            if k is not None:
                if self.Kt[i] is None:
                    raise RuntimeError("a cotangent reached a slope left out of the step "
                                       "graph (diffsolve bug: report it)")
                outs.append(self.Kt[i])
                seeds.append(to_t(k).reshape(shape))
        if not outs:
            return direct, None
        inputs = (self.yl,) if self.pl is None else (self.yl, self.pl)
        grads = torch.autograd.grad(outs, inputs, seeds, allow_unused=True)
        gy = grads[0] if grads[0] is not None else torch.zeros_like(self.yl)
        ybar = owner.xp.reshape(back(gy), (owner.n,))
        if direct is not None:
            ybar = ybar + direct
        if self.pl is None:
            return ybar, None
        gp = grads[1] if grads[1] is not None else torch.zeros_like(self.pl)
        return ybar, back(gp)


def from_jax(f: Callable[..., Any]) -> tuple[VectorField, VectorFieldVJP]:
    """Turn ``f(t, y, params)`` written with JAX into ``(f_np, vjp_np)`` for odeint.

    Both are ``jax.jit``-compiled once; arrays cross as NumPy (host) arrays.

    Parameters
    ----------
    f : callable
        ``f(t, y, params) -> dy/dt`` written with ``jax.numpy``.

    Returns
    -------
    f_np : callable
        ``f_np(t, y, params)`` on NumPy arrays.
    vjp_np : callable
        ``vjp_np(t, y, params, v) -> (v^T df/dy, v^T df/dparams)``.

    See Also
    --------
    diffsolve.ode.from_torch : The same for PyTorch (zero-copy on the GPU).
    diffsolve.ode.odeint : The solver that takes ``f_np`` and ``vjp=vjp_np``.

    Examples
    --------
    >>> import numpy as np
    >>> from diffsolve.ode import from_jax, odeint
    >>> f_np, vjp_np = from_jax(lambda t, y, p: -p * y)
    >>> res = odeint(f_np, np.array([1.0]), np.array([0.0, 1.0]), np.array([2.0]), vjp=vjp_np)
    >>> bool(abs(res.ys[-1, 0] - np.exp(-2.0)) < 1e-6)
    True
    """
    import jax

    f_jit = jax.jit(f)

    @jax.jit
    def _vjp(t, y, params, v):
        _, pull = jax.vjp(lambda yy, pp: f(t, yy, pp), y, params)
        return pull(v)

    @jax.jit
    def _vjp_y(t, y, v):
        _, pull = jax.vjp(lambda yy: f(t, yy, None), y)
        return pull(v)[0]

    def f_np(t, y, params):
        return B.host_numpy(f_jit(t, y, params))

    def vjp_np(t, y, params, v):
        if params is None:
            return B.host_numpy(_vjp_y(t, y, v)), None
        vy, vp = _vjp(t, y, params, v)
        return B.host_numpy(vy), B.host_numpy(vp)

    # the pair, marked as one: odeint's discrete adjoint then reverses each explicit RK
    # step in one compiled call (JaxStepGraph)
    f_np.jax_pair = vjp_np.jax_pair = _JaxPair(f)  # type: ignore[attr-defined]
    return f_np, vjp_np


class _JaxPair:
    """What :func:`from_jax` knows about its field: the JAX function, and the compiled
    step functions built from it, one per tableau (and per params / no params)."""

    def __init__(self, f):
        self.f = f
        self.compiled: dict = {}

    def forward_stages(self, A, c, with_params: bool, shape: tuple):
        """Jitted ``(t, h, y, k0, p) -> (K, G)``: one step's stages from ``K_0 = k0``."""
        key = ("forward", A.tobytes(), tuple(float(v) for v in c), with_params, shape)
        hit = self.compiled.get(key)
        if hit is not None:
            return hit
        import jax
        import jax.numpy as jnp

        f = self.f

        def stages(t, h, y, k0, p):
            def slope(k):
                if tuple(k.shape) != shape:
                    raise ValueError(f"{WHERE}: f(t, y, params) returned an array of shape "
                                     f"{tuple(k.shape)}; it must return dy/dt of y's shape "
                                     f"{shape}")
                return k.astype(y.dtype)

            K, G = explicit_stages(f, t, y, h, p, A, c, _jax_axpy, k0=k0, slope=slope)
            return jnp.stack(K), jnp.stack(G)

        hit = self.compiled[key] = jax.jit(stages)
        return hit

    def _step_functions(self, A, c, with_params: bool, last: bool):
        """``(values, pullback)``, not compiled: the stages ``(K, G)`` of one step, and the
        pull-back of cotangents on them to ``(ȳ, p̄)``."""
        import jax
        import jax.numpy as jnp

        f = self.f

        def stages(t, y, h, p):
            K, G = explicit_stages(f, t, y, h, p, A, c, _jax_axpy, last=last)
            return jnp.stack([jnp.zeros_like(y) if k is None else k for k in K]), jnp.stack(G)

        if with_params:
            def pullback(t, y, h, p, Kbar, Gbar):
                return jax.vjp(lambda yy, pp: stages(t, yy, h, pp), y, p)[1]((Kbar, Gbar))
        else:
            def pullback(t, y, h, p, Kbar, Gbar):
                return jax.vjp(lambda yy: stages(t, yy, h, None), y)[1]((Kbar, Gbar))[0], None
        return stages, pullback

    def step_functions(self, A, c, with_params: bool, last: bool):
        """``(values, pullback)`` of :meth:`_step_functions`, jitted."""
        key = (A.tobytes(), tuple(float(v) for v in c), with_params, last)
        hit = self.compiled.get(key)
        if hit is None:
            import jax

            stages, pullback = self._step_functions(A, c, with_params, last)
            hit = self.compiled[key] = (jax.jit(stages), jax.jit(pullback))
        return hit

    def reverse_loop(self, A, c, with_params: bool, last: bool):
        """Jitted ``(N, ts, hs, ys, slots, K̄_out, ȳ_out, p) -> (a, p̄)``: the reverse sweep
        of the discrete adjoint over steps ``N − 1 … 0`` in one ``fori_loop``, step ``n``
        seeded with ``K̄_out[slots[n]]`` on its slopes (zero where ``slots[n] < 0``) and
        ``a`` (the carried cotangent of ``y_{n+1}``) on its last stage, then
        ``a ← ȳ_out[slots[n]] + ȳ_n``, ``p̄ += p̄_n`` (the per-step route's order). ``N``
        is traced, so arrays padded beyond it are never read and one compilation serves
        every step count up to their length."""
        key = ("reverse", A.tobytes(), tuple(float(v) for v in c), with_params, last)
        hit = self.compiled.get(key)
        if hit is not None:
            return hit
        import jax
        import jax.numpy as jnp

        _, pullback = self._step_functions(A, c, with_params, last)
        s = A.shape[0]

        def sweep(N, ts, hs, ys, slots, Kout, yout, p):
            def body(i, carry):
                a, pbar = carry
                n = N - 1 - i
                j = slots[n]
                seeded = j >= 0
                Kbar = jnp.where(seeded, Kout[jnp.maximum(j, 0)], 0.0)
                Gbar = jnp.zeros_like(Kbar).at[s - 1].set(a)
                gy, gp = pullback(ts[n], ys[n], hs[n], p, Kbar, Gbar)
                a = jnp.where(seeded, yout[jnp.maximum(j, 0)] + gy, gy)
                return a, (pbar if gp is None else pbar + gp)

            pbar0 = jnp.zeros_like(p) if with_params else jnp.zeros((), dtype=ys.dtype)
            return jax.lax.fori_loop(0, N, body, (jnp.zeros_like(ys[0]), pbar0))

        hit = self.compiled[key] = jax.jit(sweep)
        return hit


class JaxStepGraph:
    """One explicit Runge–Kutta step of a :func:`from_jax` field, reversed in one compiled
    call: the stages and their VJPs traced together (the per-stage route makes two host
    calls of compiled code per stage, the re-run of f and its VJP, ≈ 65 µs each on a CPU,
    fourteen per dopri5 step). The stage values themselves, which only the error and
    stiffness regularisers' cotangents need, are computed on demand (one more call)."""

    def __init__(self, pair: _JaxPair, params, shape, xp):
        self.pair, self.params, self.shape, self.xp = pair, params, tuple(shape), xp
        self.n = math.prod(self.shape)

    def build(self, t, y, h, A, c, last: bool = True):
        return _JaxStepStages(self, t, y, h, A, c, last)

    def reverse_steps(self, A, c, ts, hs, ys, slots, Kout, yout, last: bool):
        """The whole reverse sweep in one compiled call (:meth:`_JaxPair.reverse_loop`):
        ``(a, p̄)`` as host arrays (``a`` flat; ``p̄`` None without params) for the ``N``
        steps of ``ys`` (``(N, n)``, the states ``y_n``), ``ts``/``hs`` (their start times
        and lengths) and the output seeds: ``Kout`` (``(Q, s, n)``) and ``yout``
        (``(Q, n)``) for the steps with outputs, step ``n`` reading row ``slots[n]``
        (−1: none).

        The arrays go in padded to powers of two (at least 16 steps, 4 seeded ones), so
        that a training loop whose step count drifts compiles the sweep a few times, not
        at every count."""
        xp, N, Q = self.xp, ys.shape[0], Kout.shape[0]
        cap = max(16, 1 << (N - 1).bit_length())
        qcap = max(4, 1 << (Q - 1).bit_length())

        def pad(a, size):
            out = xp.zeros((size, *a.shape[1:]), dtype=a.dtype)
            out[:a.shape[0]] = a
            return out

        s = Kout.shape[1]
        fn = self.pair.reverse_loop(A, c, self.params is not None, last)
        a, pbar = fn(N, pad(ts, cap), pad(hs, cap), xp.reshape(pad(ys, cap), (cap, *self.shape)),
                     pad(slots, cap), xp.reshape(pad(Kout, qcap), (qcap, s, *self.shape)),
                     xp.reshape(pad(yout, qcap), (qcap, *self.shape)), self.params)
        a = xp.reshape(B.host_numpy(a), (self.n,))
        return a, (None if self.params is None else B.host_numpy(pbar))


class _JaxStepStages:
    def __init__(self, owner: JaxStepGraph, t, y, h, A, c, last):
        self.owner, self.t, self.h = owner, float(t), float(h)
        self.y = owner.xp.reshape(y, owner.shape)
        self.values, self.pull = owner.pair.step_functions(
            A, c, owner.params is not None, last)
        self._KG: tuple | None = None

    def _stages(self):
        if self._KG is None:
            o = self.owner
            K, G = self.values(self.t, self.y, self.h, o.params)
            self._KG = tuple(o.xp.reshape(B.host_numpy(a), (a.shape[0], o.n)) for a in (K, G))
        return self._KG

    @property
    def K(self):
        return self._stages()[0]

    @property
    def G(self):
        return self._stages()[1]

    def pullback(self, Kbar, Gbar):
        o = self.owner
        xp, s = o.xp, len(Kbar)
        dtype = self.y.dtype

        def seeds(lst):
            out = xp.zeros((s, o.n), dtype=dtype)
            for i, v in enumerate(lst):
                if v is not None:
                    out[i] = v
            return xp.reshape(out, (s, *o.shape))

        ybar, pbar = self.pull(self.t, self.y, self.h, o.params, seeds(Kbar), seeds(Gbar))
        ybar = xp.reshape(B.host_numpy(ybar), (o.n,))
        return ybar, (None if pbar is None else B.host_numpy(pbar))
