"""Batched solves over Dask arrays chunked along the leading batch dimension.

Each chunk is ONE call of the family solver on the worker that holds the chunk (a batched
call where the family batches: :func:`diffsolve.ot.sinkhorn` over ``(k, n, m)``,
:func:`diffsolve.linear.solve` with ``k`` right-hand sides, :func:`diffsolve.ode.odeint`
with ``k`` initial states; a loop over the chunk's problems where it does not: many
matrices, per-problem ODE parameters, hypergradients). The results are the family's
result types with Dask arrays in their fields; ``status`` and ``converged`` are per-problem
Dask arrays, so a chunk that fails is reported problem by problem and never dropped.

Warnings: the worker calls the solver as the user would (``throw=False``), so a failed
chunk warns :class:`diffsolve.ConvergenceWarning` in that worker's log; nothing is
silenced. The client learns of failures through the per-problem ``status`` arrays, and
:func:`compute` gathers a result and reports it like the single-machine call (one
``ConvergenceWarning`` naming the failed problems, or the status's
:class:`diffsolve.SolveError` with ``throw=True``).
"""

from __future__ import annotations

from typing import Any

from .. import _backend as B
from .._status import Status, error_class, worst_status
from . import _chunked as K
from ._dask import dask_modules, is_dask_array

__all__ = ["compute", "hypergradient", "linear_solve", "odeint", "persist", "sinkhorn",
           "vjp"]


# ---------------------------------------------------------------------------------------
# ot.sinkhorn
# ---------------------------------------------------------------------------------------
def _sinkhorn_spec(a, b, C, eps, options, want_vjp):
    from ..ot import OTResult
    from ..ot import sinkhorn as fn

    where = "diffsolve.distributed.sinkhorn"
    args = {"a": (a, 1), "b": (b, 1), "C": (C, 2)}
    batched, shared, order = _split(where, args)
    N = int(batched[0].shape[0])
    n, m = int(C.shape[-2]), int(C.shape[-1])
    dtype = B.promote_real_floating(a.dtype, b.dtype, C.dtype)
    opts = _no_throw(options)

    def run(blocks, shr, want):
        a_, b_, C_ = _assemble(order, blocks, shr)
        res, _, ctx = K.context(fn, (a_, b_, C_, eps), opts, want)
        names = ("plan", "f", "g", "cost", "n_iters", "converged", "error", "status",
                 "tolerance")
        return {k: getattr(res, k) for k in names}, K.ChunkContext(fn, [ctx])

    def back(cctx, cots):
        (ctx,) = cctx.contexts
        g = cctx.fn.backward(ctx, cots)
        return dict(zip(("a", "b", "C"), g[:3]))

    fields = {
        "plan": K.Field(0, lambda k: (k, n, m)), "f": K.Field(0, lambda k: (k, n)),
        "g": K.Field(0, lambda k: (k, m)), "cost": K.Field(0, lambda k: (k,)),
        "n_iters": K.Field(0, lambda k: (k,), "int"),
        "converged": K.Field(0, lambda k: (k,), "bool"),
        "error": K.Field(0, lambda k: (k,)), "status": K.Field(0, lambda k: (k,), "int"),
        "tolerance": K.Field(0, lambda k: (k,)),
    }
    grads = [K.Grad(name, kind == "batched", tuple(x.shape), dtype)
             for name, (x, _), kind in zip(args, args.values(), _kinds(order))]
    rtol, atol = options.get("rtol", 1e-9), options.get("atol", 0.0)
    spec = K.Spec(where, fn, OTResult, fields,
                  {"error_measure": options.get("error_measure", "l1")}, run, back, grads,
                  fixed_budget=rtol == 0 and atol == 0,
                  throw=bool(options.get("throw", False)), dtype=dtype,
                  meta=_meta_of(batched[0]))
    return spec, batched, shared, N


def sinkhorn(a: Any, b: Any, C: Any, eps: float, **options: Any) -> Any:
    """:func:`diffsolve.ot.sinkhorn` over a batch chunked along its leading dimension.

    Parameters
    ----------
    a, b : dask arrays
        Weights, shapes (N, n) and (N, m) chunked along N, or NumPy/CuPy arrays (n,) and
        (m,) shared by every problem.
    C : dask array
        Costs (N, n, m), or an array (n, m) shared by every problem. At least one of
        ``a``, ``b``, ``C`` is a Dask array with the batch dimension; the batched ones are
        rechunked to the first batched argument's chunks along it.
    eps : float
    **options
        Those of :func:`diffsolve.ot.sinkhorn`; ``throw=True`` is applied by
        :func:`compute` on the client.

    Returns
    -------
    OTResult
        Dask arrays in every field; ``n_iters``, ``converged``, ``error``, ``status`` and
        ``tolerance`` of shape (N,). Chunk ``i`` of every field is computed by one task,
        one batched :func:`diffsolve.ot.sinkhorn` call.

    See Also
    --------
    diffsolve.ot.sinkhorn : The single-machine solver each chunk calls.
    compute : Gather the result and report failed problems.
    vjp : Chunk-wise gradients.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> import diffsolve as ds, diffsolve.distributed as dd
    >>> rng = np.random.default_rng(0)
    >>> C = rng.random((6, 4, 3)); a = np.full((6, 4), 0.25); b = np.full((6, 3), 1 / 3)
    >>> res = dd.sinkhorn(da.from_array(a, chunks=(2, 4)), da.from_array(b, chunks=(2, 3)),
    ...                   da.from_array(C, chunks=(2, 4, 3)), 0.1)
    >>> out = dd.compute(res)
    >>> bool(np.allclose(out.cost, ds.ot.sinkhorn(a, b, C, 0.1).cost, rtol=0, atol=1e-12))
    True
    """
    spec, batched, shared, _ = _sinkhorn_spec(a, b, C, eps, options, False)
    return _lazy(spec, batched, shared)


# ---------------------------------------------------------------------------------------
# linear.solve
# ---------------------------------------------------------------------------------------
def _linear_spec(A, b, options):
    from ..linear import LinearSolveResult
    from ..linear import solve as fn
    from ..linear._solve import solve_unreported

    where = "diffsolve.distributed.linear_solve"
    if not is_dask_array(b) or b.ndim != 2:
        raise ValueError(f"{where}: b must be a Dask array (N, n) of N right-hand sides "
                         f"chunked along N, got {_describe(b)}")
    N, n = int(b.shape[0]), int(b.shape[1])
    many = is_dask_array(A) and A.ndim == 3
    if not many and (A.ndim != 2 or tuple(A.shape) != (n, n)):
        raise ValueError(f"{where}: A must be one matrix (n, n) = {(n, n)} shared by every "
                         f"right-hand side, or a Dask array (N, n, n) of matrices; got "
                         f"{_describe(A)}")
    dtype = B.promote_real_floating(A.dtype, b.dtype)
    opts = _no_throw(options)
    meta = _meta_of(b)

    if many:
        def run(blocks, shr, want):
            A_, b_ = blocks
            xp, dev = B.array_namespace(b_), B.device(b_)
            results, ctxs = [], []
            for i in range(b_.shape[0]):
                res, _, ctx = K.context(fn, (A_[i, ...], b_[i, ...]), opts, want)
                results.append(res)
                ctxs.append(ctx)
            return {
                "x": xp.stack([r.x for r in results]),
                "n_iters": K.worst(xp, [r.n_iters for r in results], dev),
                "converged": K.flags(xp, [r.converged for r in results], dev),
                "residual_norm": K.numbers(xp, [r.residual_norm for r in results],
                                           b_.dtype, dev),
                "status": K.worst(xp, [r.status for r in results], dev),
            }, K.ChunkContext(fn, ctxs)

        def back(cctx, cots):
            xs = cots.get("x")
            As, bs = [], []
            for i, ctx in enumerate(cctx.contexts):
                gA, gb = cctx.fn.backward(ctx, {"x": None if xs is None else xs[i, ...]})
                As.append(gA)
                bs.append(gb)
            xp = B.array_namespace(bs[0])
            return {"A": xp.stack(As), "b": xp.stack(bs)}

        batched, shared = [A, b], []
        grads = [K.Grad("A", True, (N, n, n), dtype), K.Grad("b", True, (N, n), dtype)]
    else:
        def run(blocks, shr, want):
            (b_,) = blocks
            (A_,) = shr
            xp, dev = B.array_namespace(b_), B.device(b_)
            res, _, ctx = K.context(fn, (A_, b_.T), opts, want)
            k = b_.shape[0]
            if int(res.status) == Status.SUCCESS:
                status = [Status.SUCCESS] * k
            else:
                # one failed status for the chunk: each right-hand side is solved alone (no
                # warning: its status is read) to say which problems failed and why
                status = [solve_unreported(A_, b_[j, ...], **opts)[0].status
                          for j in range(k)]
            rn = res.residual_norm
            return {
                "x": res.x.T,
                "n_iters": xp.full((k,), int(res.n_iters), dtype=xp.int64, device=dev),
                "converged": K.flags(xp, [s == Status.SUCCESS for s in status], dev),
                "residual_norm": xp.reshape(xp.asarray(rn, dtype=b_.dtype, device=dev),
                                            (k,)),
                "status": K.worst(xp, status, dev),
            }, K.ChunkContext(fn, [ctx])

        def back(cctx, cots):
            (ctx,) = cctx.contexts
            xs = cots.get("x")
            gA, gb = cctx.fn.backward(ctx, {"x": None if xs is None else xs.T})
            return {"A": gA, "b": gb.T}

        batched, shared = [b], [A]
        grads = [K.Grad("A", False, (n, n), dtype, dense=not B.is_sparse(A)),
                 K.Grad("b", True, (N, n), dtype)]
    fields = {
        "x": K.Field(0, lambda k: (k, n)), "n_iters": K.Field(0, lambda k: (k,), "int"),
        "converged": K.Field(0, lambda k: (k,), "bool"),
        "residual_norm": K.Field(0, lambda k: (k,)),
        "status": K.Field(0, lambda k: (k,), "int"),
    }
    rtol, atol = options.get("rtol", 1e-8), options.get("atol", 0.0)
    spec = K.Spec(where, fn, LinearSolveResult, fields, {}, run, back, grads,
                  fixed_budget=rtol == 0 and atol == 0,
                  throw=bool(options.get("throw", False)), dtype=dtype, meta=meta)
    return spec, batched, shared, N


def linear_solve(A: Any, b: Any, **options: Any) -> Any:
    """:func:`diffsolve.linear.solve` for many right-hand sides or many matrices.

    Parameters
    ----------
    A : array or dask array
        One matrix (n, n) shared by every right-hand side (dense or sparse; NumPy, CuPy or
        a Dask array), or a Dask array (N, n, n) of dense matrices chunked along N.
    b : dask array
        One right-hand side per row, shape (N, n), chunked along N.
    **options
        Those of :func:`diffsolve.linear.solve`.

    Returns
    -------
    LinearSolveResult
        ``x`` (N, n) and per-problem ``n_iters``, ``converged``, ``residual_norm``,
        ``status`` (N,), as Dask arrays. With a shared ``A`` each chunk is one call with
        ``k`` right-hand sides (one factorisation for ``method="direct"``); a chunk whose
        call does not succeed solves each of its right-hand sides alone to attribute the
        status (``x`` stays the chunk call's). With ``N`` matrices each chunk loops over
        its problems.

    See Also
    --------
    diffsolve.linear.solve : The single-machine solver each chunk calls.
    compute : Gather the result and report failed problems.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> import diffsolve.distributed as dd
    >>> A = np.array([[4.0, 1.0], [1.0, 3.0]]); b = np.arange(12.0).reshape(6, 2)
    >>> res = dd.linear_solve(A, da.from_array(b, chunks=(3, 2)))
    >>> bool(np.allclose(res.x.compute(), np.linalg.solve(A, b.T).T))
    True
    """
    spec, batched, shared, _ = _linear_spec(A, b, options)
    return _lazy(spec, batched, shared)


# ---------------------------------------------------------------------------------------
# ode.odeint
# ---------------------------------------------------------------------------------------
def _odeint_spec(f, y0, t_eval, params, options):
    from ..ode import ODEResult
    from ..ode import odeint as fn

    where = "diffsolve.distributed.odeint"
    if not is_dask_array(y0) or y0.ndim != 2:
        raise ValueError(f"{where}: y0 must be a Dask array (N, d) of initial states "
                         f"chunked along N, got {_describe(y0)}")
    if options.get("batch_mode", "per-trajectory") != "per-trajectory":
        raise ValueError(f"{where}: batch_mode={options['batch_mode']!r} couples the "
                         "trajectories of a batch (one step size for all), so chunking would "
                         "change the result; use batch_mode='per-trajectory' (the default)")
    N, d = int(y0.shape[0]), int(y0.shape[1])
    T = len(t_eval)
    dtype = B.promote_real_floating(y0.dtype, *([] if params is None else [params.dtype]))
    opts = _no_throw(options)
    per_params = is_dask_array(params) and params.ndim == 2
    t_is_array = B.is_array(t_eval) and B.array_namespace(t_eval).isdtype(
        t_eval.dtype, "real floating")
    fixed = options.get("rtol", 1e-6) == 0 and options.get("atol", 1e-9) == 0

    def statuses(res, fwd, k):
        trajs = getattr(fwd, "trajs", None)
        if trajs is not None and len(trajs) == k:
            st = [t.status for t in trajs]
        else:
            st = [res.status] * k
        if fixed:
            st = [Status.MAX_ITERATIONS if s == Status.SUCCESS else s for s in st]
        return st

    def pack(xp, dev, ys, results, st, dt):
        stats = {k_: sum(int(getattr(r, k_)) for r in results)
                 for k_ in ("n_steps", "n_accepted", "n_rejected", "nfe")}
        out = {k_: xp.asarray(v, dtype=xp.int64, device=dev) for k_, v in stats.items()}
        out.update(
            ys=ys,
            reg_error=xp.asarray(sum(float(r.reg_error) for r in results), dtype=dt,
                                 device=dev),
            reg_stiffness=xp.asarray(sum(float(r.reg_stiffness) for r in results), dtype=dt,
                                     device=dev),
            status=K.worst(xp, st, dev),
            converged=K.flags(xp, [s == Status.SUCCESS for s in st], dev),
        )
        return out

    if per_params:
        def run(blocks, shr, want):
            y_, p_ = blocks
            (t_,) = shr
            xp, dev = B.array_namespace(y_), B.device(y_)
            results, ctxs, st = [], [], []
            for i in range(y_.shape[0]):
                res, fwd, ctx = K.context(fn, (f, y_[i, ...], t_, p_[i, ...]), opts, want)
                results.append(res)
                ctxs.append(ctx)
                st.extend(statuses(res, fwd, 1))
            ys = xp.stack([r.ys for r in results], axis=1)
            return pack(xp, dev, ys, results, st, y_.dtype), K.ChunkContext(fn, ctxs)

        def back(cctx, cots):
            ys = cots.get("ys")
            parts = []
            for i, ctx in enumerate(cctx.contexts):
                c = dict(cots)
                if ys is not None:
                    c["ys"] = ys[:, i, ...]
                parts.append(cctx.fn.backward(ctx, c))
            xp = B.array_namespace(parts[0][1])
            out = {"y0": xp.stack([p[1] for p in parts]),
                   "params": xp.stack([p[3] for p in parts])}
            if t_is_array:
                out["t_eval"] = sum(p[2] for p in parts)
            return out

        batched, shared = [y0, params], [t_eval]
        grads = [K.Grad("y0", True, (N, d), dtype),
                 K.Grad("params", True, tuple(params.shape), dtype)]
    else:
        def run(blocks, shr, want):
            (y_,) = blocks
            t_, p_ = shr
            xp, dev = B.array_namespace(y_), B.device(y_)
            res, fwd, ctx = K.context(fn, (f, y_, t_, p_), opts, want)
            st = statuses(res, fwd, y_.shape[0])
            return pack(xp, dev, res.ys, [res], st, y_.dtype), K.ChunkContext(fn, [ctx])

        def back(cctx, cots):
            (ctx,) = cctx.contexts
            g = cctx.fn.backward(ctx, cots)
            out = {"y0": g[1]}
            if t_is_array:
                out["t_eval"] = g[2]
            if params is not None:
                out["params"] = g[3]
            return out

        batched, shared = [y0], [t_eval, params]
        grads = [K.Grad("y0", True, (N, d), dtype)]
        if params is not None:
            grads.append(K.Grad("params", False, tuple(params.shape), dtype))
    if t_is_array:
        grads.insert(1, K.Grad("t_eval", False, (T,), dtype))
    fields = {
        "ys": K.Field(1, lambda k: (T, k, d)),
        "reg_error": K.Field(None, lambda k: ()), "reg_stiffness": K.Field(None, lambda k: ()),
        "n_steps": K.Field(None, lambda k: (), "int"),
        "n_accepted": K.Field(None, lambda k: (), "int"),
        "n_rejected": K.Field(None, lambda k: (), "int"),
        "nfe": K.Field(None, lambda k: (), "int"),
        "status": K.Field(0, lambda k: (k,), "int"),
        "converged": K.Field(0, lambda k: (k,), "bool"),
    }
    spec = K.Spec(where, fn, ODEResult, fields, {"ts": None}, run, back, grads,
                  fixed_budget=fixed, throw=bool(options.get("throw", False)), dtype=dtype,
                  meta=_meta_of(y0))
    return spec, batched, shared, N


def odeint(f: Any, y0: Any, t_eval: Any, params: Any = None, **options: Any) -> Any:
    """:func:`diffsolve.ode.odeint` for an ensemble of initial states and/or parameters.

    Parameters
    ----------
    f : callable
        The vector field, as for :func:`diffsolve.ode.odeint`; it is pickled to the
        workers (define it in an importable module, or let cloudpickle take it by value).
    y0 : dask array
        Initial states (N, d), chunked along N.
    t_eval : array or sequence
        Output times (T,), shared by every problem.
    params : None, array or dask array
        Parameters (p,) shared by every problem, or a Dask array (N, p) of per-problem
        parameters.
    **options
        Those of :func:`diffsolve.ode.odeint` (``batch_mode`` must stay
        ``"per-trajectory"``).

    Returns
    -------
    ODEResult
        ``ys`` (T, N, d) chunked along N; ``reg_error``, ``reg_stiffness`` and the step
        counts summed over the batch (0-d Dask arrays, as the family sums them); ``status``
        and ``converged`` per trajectory (N,); ``ts`` is None (the step times stay on the
        workers). Shared parameters: one batched call per chunk; per-problem parameters:
        a loop over the chunk's problems.

    See Also
    --------
    diffsolve.ode.odeint : The single-machine solver each chunk calls.
    compute : Gather the result and report failed problems.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> import diffsolve.distributed as dd
    >>> def f(t, y, p):
    ...     return -p[0] * y
    >>> y0 = da.from_array(np.linspace(1.0, 2.0, 6)[:, None], chunks=(3, 1))
    >>> res = dd.odeint(f, y0, np.array([0.0, 1.0]), np.array([2.0]))
    >>> bool(np.allclose(res.ys[-1, :, 0].compute(), np.linspace(1, 2, 6) * np.exp(-2),
    ...                  rtol=1e-5))
    True
    """
    spec, batched, shared, _ = _odeint_spec(f, y0, t_eval, params, options)
    return _lazy(spec, batched, shared)


# ---------------------------------------------------------------------------------------
# bilevel.hypergradient
# ---------------------------------------------------------------------------------------
def hypergradient(outer: Any, inner: Any, x: Any, y: Any, method: str = "implicit-cg", *,
                  return_info: bool = False, **options: Any) -> Any:
    """:func:`diffsolve.bilevel.hypergradient` for a batch of bilevel problems.

    Parameters
    ----------
    outer, inner : callable
        As for :func:`diffsolve.bilevel.hypergradient` (pickled to the workers).
    x, y : dask arrays
        One upper-level point and one (approximate) inner solution per problem, shapes
        (N, ...), chunked along N (``y`` is rechunked to ``x``'s chunks).
    method : str
        As :func:`diffsolve.bilevel.hypergradient`.
    return_info : bool
        Also return the per-problem diagnostics.
    **options
        The other options of :func:`diffsolve.bilevel.hypergradient`.

    Returns
    -------
    grad : dask array (N, ...)
        The hypergradients, x's shape.
    info : HypergradientInfo
        With ``return_info=True``: ``n_iters``, ``converged``, ``residual_norm``,
        ``inner_grad_norm``, ``stepsize``, ``status`` as Dask arrays (N,), ``v`` (N, ...)
        for implicit-cg and neumann. Each chunk loops over its problems (the family
        solves one problem per call).

    See Also
    --------
    diffsolve.bilevel.hypergradient : The single-machine function each chunk calls.
    compute : Gather the result and report failed problems.

    Examples
    --------
    >>> import numpy as np, dask.array as da, autograd.numpy as anp
    >>> import diffsolve.distributed as dd
    >>> inner = lambda x, y: 0.5 * anp.sum((y - x) ** 2) + 0.5 * anp.sum(y ** 2)
    >>> outer = lambda x, y: anp.sum(y)
    >>> x = da.from_array(np.arange(8.0).reshape(4, 2), chunks=(2, 2))
    >>> y = x / 2  # y*(x) = x / 2
    >>> g = dd.hypergradient(outer, inner, x, y)
    >>> bool(np.allclose(g.compute(), 0.5))
    True
    """
    from ..bilevel import HypergradientInfo
    from ..bilevel import hypergradient as fn

    where = "diffsolve.distributed.hypergradient"
    for name, v in (("x", x), ("y", y)):
        if not is_dask_array(v) or v.ndim < 2:
            raise ValueError(f"{where}: {name} must be a Dask array (N, ...) chunked along "
                             f"the batch dimension N, got {_describe(v)}")
    N = int(x.shape[0])
    xs, ys_ = tuple(int(s) for s in x.shape[1:]), tuple(int(s) for s in y.shape[1:])
    dtype = B.promote_real_floating(x.dtype, y.dtype)
    opts = _no_throw(options)
    has_v = method in ("implicit-cg", "neumann")

    def run(blocks, shr, want):
        x_, y_ = blocks
        xp, dev = B.array_namespace(x_), B.device(x_)
        grads, infos = [], []
        for i in range(x_.shape[0]):
            g, info = fn(outer, inner, x_[i, ...], y_[i, ...], method, return_info=True,
                         **opts)
            grads.append(g)
            infos.append(info)
        out = {
            "grad": xp.stack(grads),
            "n_iters": K.worst(xp, [i.n_iters for i in infos], dev),
            "converged": K.flags(xp, [i.converged for i in infos], dev),
            "residual_norm": K.numbers(xp, [i.residual_norm for i in infos], x_.dtype, dev),
            "inner_grad_norm": K.numbers(xp, [i.inner_grad_norm for i in infos], x_.dtype,
                                         dev),
            "stepsize": K.numbers(xp, [i.stepsize for i in infos], x_.dtype, dev),
            "status": K.worst(xp, [i.status for i in infos], dev),
        }
        if has_v:
            out["v"] = xp.stack([i.v for i in infos])
        return out, None

    fields = {
        "grad": K.Field(0, lambda k: (k, *xs)), "n_iters": K.Field(0, lambda k: (k,), "int"),
        "converged": K.Field(0, lambda k: (k,), "bool"),
        "residual_norm": K.Field(0, lambda k: (k,)),
        "inner_grad_norm": K.Field(0, lambda k: (k,)),
        "stepsize": K.Field(0, lambda k: (k,)),
        "status": K.Field(0, lambda k: (k,), "int"),
    }
    if has_v:
        fields["v"] = K.Field(0, lambda k: (k, *ys_))
    fixed = options.get("rtol", 1e-10) == 0 and options.get("atol", 0.0) == 0

    class _Batch:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    spec = K.Spec(where, fn, _Batch, fields, {}, run, None, [], fixed_budget=fixed,
                  throw=bool(options.get("throw", False)), dtype=dtype, meta=_meta_of(x))
    chunks = K.batch_chunks(where, [x, y])
    lazy, _ = K.build(spec, [x, y], [], chunks, want_vjp=False, persist=False)
    grad = lazy.grad
    if not return_info:
        return grad
    info = HypergradientInfo(method=method, n_iters=lazy.n_iters, converged=lazy.converged,
                             residual_norm=lazy.residual_norm,
                             inner_grad_norm=lazy.inner_grad_norm, stepsize=lazy.stepsize,
                             v=lazy.v if has_v else None, status=lazy.status,
                             message=f"{where}: {N} problems; compute with "
                                     "diffsolve.distributed.compute(info) for the outcome")
    object.__setattr__(info, "_distributed", spec)
    return grad, info


# ---------------------------------------------------------------------------------------
# gradients, compute, persist
# ---------------------------------------------------------------------------------------
def vjp(fn: Any, *args: Any, persist: bool = True, **kwargs: Any) -> tuple[Any, Any]:
    """:func:`diffsolve.vjp` over Dask inputs: the lazy batched result and a function from
    output cotangents (Dask arrays) to input cotangents (Dask arrays), chunk-wise.

    Parameters
    ----------
    fn : diffsolve.ot.sinkhorn, diffsolve.linear.solve or diffsolve.ode.odeint
    *args, **kwargs
        As for :func:`sinkhorn`, :func:`linear_solve`, :func:`odeint`.
    persist : bool
        Run the chunks now and keep each chunk's ``(result, residuals)`` on the worker
        that computed it (Dask futures; nothing is gathered on the client), so the backward
        tasks reuse them. ``False``: keep them in the graph only: the forward and the
        backward then share the chunk tasks within one ``dask.compute`` call, and a later
        backward recomputes them. A persisted chunk lost with its worker is recomputed by
        Dask from its inputs.

    Returns
    -------
    result
        As the batched entry point returns.
    vjp_fn : callable
        ``vjp_fn(**cotangents)``: cotangents by differentiable output name (Dask or
        NumPy/CuPy arrays of the output's shape; fields not given are zero). Returns a
        tuple with one Dask array per array argument in the order of ``fn``'s signature,
        like :func:`diffsolve.vjp`: cotangents of batched arguments are chunked like them,
        those of shared arguments are summed over the chunks by a tree reduction (for a
        shared sparse matrix: a ``dask.delayed`` sparse matrix of its pattern).

    See Also
    --------
    diffsolve.vjp : The single-machine version.
    PointCloudOTResult.gradients : Gradients of the sharded Sinkhorn.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> import diffsolve as ds, diffsolve.distributed as dd
    >>> A = np.array([[4.0, 1.0], [1.0, 3.0]]); b = np.arange(8.0).reshape(4, 2)
    >>> res, f_vjp = dd.vjp(ds.linear.solve, A, da.from_array(b, chunks=(2, 2)))
    >>> A_bar, b_bar = f_vjp(x=da.ones((4, 2), chunks=(2, 2)))
    >>> bool(np.allclose(b_bar.compute(), np.linalg.solve(A.T, np.ones((2, 4))).T))
    True
    """
    from .. import linear, ode, ot

    if fn is ot.sinkhorn:
        a, b, C, eps = _positional(args, kwargs, ("a", "b", "C", "eps"))
        spec, batched, shared, _ = _sinkhorn_spec(a, b, C, eps, kwargs, True)
    elif fn is linear.solve:
        A, b = _positional(args, kwargs, ("A", "b"))
        spec, batched, shared, _ = _linear_spec(A, b, kwargs)
    elif fn is ode.odeint:
        names = ("f", "y0", "t_eval", "params")
        if len(args) < 4 and "params" not in kwargs:
            kwargs = {**kwargs, "params": None}
        f, y0, t_eval, params = _positional(args, kwargs, names)
        spec, batched, shared, _ = _odeint_spec(f, y0, t_eval, params, kwargs)
    else:
        raise TypeError("diffsolve.distributed.vjp: fn must be diffsolve.ot.sinkhorn, "
                        f"diffsolve.linear.solve or diffsolve.ode.odeint, got {fn!r}; "
                        "for the sharded point-cloud Sinkhorn use res.gradients()")
    chunks = K.batch_chunks(spec.where, batched)
    result, parts = K.build(spec, batched, shared, chunks, want_vjp=True, persist=persist)
    fields = spec.result_type.differentiable_fields

    def vjp_fn(**cotangents):
        unknown = sorted(set(cotangents) - set(fields))
        if unknown:
            raise TypeError(f"{spec.where} vjp: no differentiable output named {unknown}; "
                            f"the differentiable outputs are {list(fields)}")
        grads = K.backward(spec, parts, chunks, cotangents)
        return tuple(grads[g.name] for g in spec.grads)

    return result, vjp_fn


def compute(*results: Any) -> Any:
    """Gather lazy batched results (one ``dask.compute`` for all of them) and report them
    like the single-machine solvers do.

    Parameters
    ----------
    *results
        Results of :func:`sinkhorn`, :func:`linear_solve`, :func:`odeint`, the ``info`` of
        :func:`hypergradient`, or bare Dask arrays.

    Returns
    -------
    result or tuple
        The same result types with NumPy/CuPy arrays in their fields (one result, or a
        tuple for several). A batch with failed problems warns one
        :class:`diffsolve.ConvergenceWarning` naming how many problems failed with the worst
        status and the first of them, or raises that status's :class:`diffsolve.SolveError`
        (carrying the gathered result) when the call had ``throw=True``.

    See Also
    --------
    persist : Run on the cluster without gathering.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> import diffsolve.distributed as dd
    >>> A = np.eye(2); b = da.ones((4, 2), chunks=(2, 2))
    >>> out = dd.compute(dd.linear_solve(A, b))
    >>> out.status.tolist(), out.x.shape
    ([0, 0, 0, 0], (4, 2))
    """
    _, dask = dask_modules()
    names = [None if is_dask_array(r) else _array_fields(r) for r in results]
    values = dask.compute(*[r if ks is None else [getattr(r, k) for k in ks]
                            for r, ks in zip(results, names)])
    out = []
    for r, ks, vs in zip(results, names, values):
        if ks is None:  # a bare Dask array (a batch of hypergradients, say)
            out.append(vs)
            continue
        spec = r.__dict__.get("_distributed")
        changes = dict(zip(ks, vs))
        summary = _summary(spec, changes) if spec is not None else None
        if "message" in _fields_of(r):
            changes["message"] = summary
        concrete = r.replace(**changes)
        if spec is not None:
            object.__setattr__(concrete, "_distributed", spec)
            if "message" not in _fields_of(r):
                object.__setattr__(concrete, "_message", summary)
            _report(spec, concrete, changes)
        out.append(concrete)
    return out[0] if len(out) == 1 else tuple(out)


def persist(*results: Any) -> Any:
    """Run lazy batched results on the cluster and keep their fields there (Dask futures).

    Parameters
    ----------
    *results
        Results of the batched entry points.

    Returns
    -------
    result or tuple
        The same results with persisted Dask arrays. Nothing is gathered and nothing is
        reported: read ``status`` (or call :func:`compute`).

    See Also
    --------
    compute : Gather and report.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> import diffsolve.distributed as dd
    >>> res = dd.persist(dd.linear_solve(np.eye(2), da.ones((4, 2), chunks=(2, 2))))
    >>> res.status.compute().tolist()
    [0, 0, 0, 0]
    """
    _, dask = dask_modules()
    out = []
    for r in results:
        ks = _array_fields(r)
        vs = dask.persist(*[getattr(r, k) for k in ks])
        new = r.replace(**dict(zip(ks, vs)))
        spec = r.__dict__.get("_distributed")
        if spec is not None:
            object.__setattr__(new, "_distributed", spec)
        out.append(new)
    return out[0] if len(out) == 1 else tuple(out)


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def _lazy(spec, batched, shared):
    chunks = K.batch_chunks(spec.where, batched)
    result, _ = K.build(spec, batched, shared, chunks, want_vjp=False, persist=False)
    return result


_BATCHED_TYPES: dict = {}


def batched_type(cls):
    """``cls`` with a ``message`` that speaks for a whole batch: the family's own
    ``message`` reads one status, a batch has one per problem (Dask arrays until
    :func:`compute`)."""
    sub = _BATCHED_TYPES.get(cls)
    if sub is None:
        def message(self):
            text = self.__dict__.get("_message")
            if text is not None:
                return text
            spec = self.__dict__.get("_distributed")
            where = spec.where if spec is not None else "diffsolve.distributed"
            return (f"{where}: not computed yet; diffsolve.distributed.compute(result) "
                    "gathers the batch and reports its per-problem statuses")

        sub = _BATCHED_TYPES[cls] = type(cls.__name__, (cls,), {
            "message": property(message), "__doc__": cls.__doc__,
            "__module__": cls.__module__, "__qualname__": cls.__qualname__})
    return sub


def _split(where, args: dict):
    """Which arguments are batched (Dask, one more dimension than the base problem) and
    which shared; returns ``(batched, shared, order)``."""
    batched: list = []
    shared: list = []
    order: list = []
    for name, (x, base) in args.items():
        if is_dask_array(x) and x.ndim == base + 1:
            order.append(("batched", len(batched)))
            batched.append(x)
        elif x is not None and getattr(x, "ndim", None) == base:
            order.append(("shared", len(shared)))
            shared.append(x)
        else:
            raise ValueError(f"{where}: {name} must be a Dask array with a leading batch "
                             f"dimension ({base + 1}-D) or an array shared by every problem "
                             f"({base}-D), got {_describe(x)}")
    if not batched:
        raise ValueError(f"{where}: no argument is a Dask array with a leading batch "
                         "dimension; chunk at least one along the batch "
                         "(dask.array.from_array(x, chunks=(k, ...)))")
    return batched, shared, order


def _kinds(order):
    return [kind for kind, _ in order]


def _assemble(order, blocks, shared):
    return [blocks[i] if kind == "batched" else shared[i] for kind, i in order]


def _no_throw(options):
    return {**options, "throw": False}


def _meta_of(x):
    return x._meta if is_dask_array(x) else x


def _describe(x):
    if x is None:
        return "None"
    shape = getattr(x, "shape", None)
    kind = f"{type(x).__module__}.{type(x).__name__}"
    return f"a {kind} of shape {tuple(shape)}" if shape is not None else f"a {kind}"


def _positional(args, kwargs, names):
    vals = list(args) + [kwargs.pop(n) for n in names[len(args):] if n in kwargs]
    if len(vals) != len(names):
        raise TypeError(f"diffsolve.distributed.vjp: expected the arguments {list(names)}, "
                        f"got {len(vals)}")
    return vals


def _fields_of(r):
    import dataclasses

    return {f.name for f in dataclasses.fields(r)} if dataclasses.is_dataclass(r) else set()


def _array_fields(r):
    return [k for k in sorted(_fields_of(r)) if is_dask_array(getattr(r, k))]


def _summary(spec, values):
    st = [int(s) for s in B.host_numpy(values["status"]).ravel().tolist()]
    status = worst_status(st)
    if status is Status.SUCCESS:
        return f"{spec.where}: all {len(st)} problems succeeded"
    bad = [i for i, s in enumerate(st) if s == int(status)]
    return (f"{spec.where}: {len(bad)} of {len(st)} problems stopped with status "
            f"{status.name} (first: problem {bad[0]}). {status.hint()}")


def _report(spec, result, values):
    """The client-side report of a gathered batch (see the module docstring)."""
    import warnings

    from .._status import ConvergenceWarning

    st = [int(s) for s in B.host_numpy(values["status"]).ravel().tolist()]
    status = worst_status(st)
    if status is Status.SUCCESS or status is Status.STOPPED or (
            spec.fixed_budget and status is Status.MAX_ITERATIONS):
        return
    message = _summary(spec, values)
    if spec.throw:
        raise error_class(status)(message, status=status, result=result)
    warnings.warn(message, ConvergenceWarning, stacklevel=3)

