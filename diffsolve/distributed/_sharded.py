"""``diffsolve.distributed.sinkhorn_pointcloud``: one entropic OT problem between two point
clouds, sharded by row blocks across a Dask cluster, its cost never formed.

The iteration is :func:`diffsolve.ot.sinkhorn`'s log-domain one (Peyré & Cuturi,
"Computational Optimal Transport", 2019, eqs. (4.43)-(4.44)) with the soft-minima split
over block pairs::

    g_J <- eps log b_J - eps LSE_I [ eps LSE_{i in I}((f_i - c(x_i, y_j)) / eps) ] / eps
    f_I <- eps log a_I - (the same with the roles of the clouds swapped)

Each inner term is one task on one block pair ``(X_I, Y_J)`` (the cost block is computed
on the fly by the task and dropped); the outer log-sum-exp over the row blocks is a Dask
tree reduction of the partials (an eps-scaled log-sum-exp is the (max, sum) pair folded
into one number: ``M + eps log s``). Online log-sum-exp over blocks of a cost computed on
the fly is the scheme of KeOps (Charlier et al., "Kernel operations on the GPU, with
autodiff, without memory overflows", JMLR 2021) and of OTT's online point clouds
(Cuturi et al., "Optimal Transport Tools", 2022); here the blocks are Dask tasks on
several machines.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from .. import _validate as V
from .._result import SolverResult
from .._status import Status, report
from ..ot._errors import check_eps, check_measure
from ..ot._result import OTState
from ..ot._sinkhorn import _STAGE_RTOL, _schedule
from . import _blocks
from ._dask import as_dask_array, dask_modules, meta_like

__all__ = ["PointCloudGradients", "PointCloudOTResult", "PointCloudSettings",
           "sinkhorn_pointcloud"]

WHERE = "diffsolve.distributed.sinkhorn_pointcloud"


@dataclass(frozen=True)
class PointCloudSettings:
    """The options of one :func:`sinkhorn_pointcloud` call, validated once.

    Attributes
    ----------
    eps, cost, rtol, atol, maxiter, error_measure, check_every, eps_scaling, split_every,
    throw, callback
        As the arguments of :func:`sinkhorn_pointcloud`.

    See Also
    --------
    sinkhorn_pointcloud : The solver that reads them.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> import diffsolve.distributed as dd
    >>> X = da.from_array(np.random.default_rng(0).random((8, 2)), chunks=(4, 2))
    >>> dd.sinkhorn_pointcloud(X, X, 0.5).settings.check_every
    10
    """

    eps: float
    cost: Any
    rtol: float
    atol: float
    maxiter: int
    error_measure: str
    check_every: int
    eps_scaling: Any
    split_every: int
    throw: bool
    callback: Any

    @property
    def fixed_budget(self) -> bool:
        """``rtol = atol = 0``: run exactly ``maxiter`` iterations."""
        return self.rtol == 0 and self.atol == 0


class PointCloudGradients(NamedTuple):
    """Cotangents of :func:`sinkhorn_pointcloud`'s cost (Dask arrays).

    Attributes
    ----------
    X, Y : dask arrays
        Cotangents of the points, shapes (n, d) and (m, d).
    a, b : dask arrays
        Cotangents of the weights, shapes (n,) and (m,).

    See Also
    --------
    PointCloudOTResult.gradients : What returns them.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> import diffsolve.distributed as dd
    >>> X = da.from_array(np.random.default_rng(0).random((8, 2)), chunks=(4, 2))
    >>> g = dd.sinkhorn_pointcloud(X, X + 0.1, 0.5).gradients()
    >>> g.X.shape, g.a.shape
    ((8, 2), (8,))
    """

    X: Any
    Y: Any
    a: Any
    b: Any


@dataclass(frozen=True)
class PointCloudOTResult(SolverResult):
    """Result of :func:`sinkhorn_pointcloud`.

    Attributes
    ----------
    f, g : dask arrays, shapes (n,) and (m,)
        The potentials, chunked like the rows of ``X`` and ``Y`` and held by the workers
        (persisted), in :func:`diffsolve.ot.sinkhorn`'s gauge ``sum(f) = sum(g)``.
    cost : float
        ``W = <C, P> + eps sum P (log P - 1)`` at the returned potentials.
    error : float
        The marginal error of the returned plan in ``error_measure``.
    tolerance : float
        ``atol + rtol * sum(a)``.
    n_iters : int
        Iterations (one column and one row half-step each), summed over ε stages.
    converged : bool
        ``error <= tolerance``.
    status : Status
        ``SUCCESS``, ``MAX_ITERATIONS``, ``NONFINITE`` or ``STOPPED`` (the callback).
    eps : float
    error_measure : str
    X, Y, a, b : dask arrays
        The problem (persisted; the plan and the gradients are built from them).
    settings : PointCloudSettings
    rows, cols : dask arrays, shapes (n, d + 1), (m, d + 1)
        The final pass: the plan's row (column) sums in column 0 and, for the squared
        Euclidean cost, its products with the other cloud's points (for a user cost, the
        cost cotangents) in the others; :meth:`gradients` reads them.

    The plan is available lazily by blocks as :attr:`plan`, and the gradients of the
    cost by :meth:`gradients`.

    See Also
    --------
    sinkhorn_pointcloud : The solver that returns it.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> import diffsolve.distributed as dd
    >>> X = da.from_array(np.random.default_rng(0).random((8, 2)), chunks=(4, 2))
    >>> res = dd.sinkhorn_pointcloud(X, X, 0.5)
    >>> res.status.name, res.plan.chunks
    ('SUCCESS', ((4, 4), (4, 4)))
    >>> bool(abs(res.plan.sum().compute() - 1.0) < 1e-8)
    True
    """

    f: Any
    g: Any
    cost: float
    error: float
    tolerance: float
    n_iters: int
    converged: bool
    status: Status
    eps: float
    error_measure: str
    # the problem, kept so that the plan and the gradients can be built lazily
    X: Any = None
    Y: Any = None
    a: Any = None
    b: Any = None
    settings: Any = None
    # row sums and plan-point products of the final pass (persisted; gradients reuse them)
    rows: Any = None
    cols: Any = None

    differentiable_fields: ClassVar[tuple[str, ...]] = ("cost",)

    @property
    def message(self) -> str:
        """Why the solve stopped and, if it failed, what to try."""
        head = (f"{WHERE}: marginal error {self.error:.3g} vs tolerance "
                f"{self.tolerance:.3g} ({self.error_measure}) after {self.n_iters} "
                "iterations")
        if self.status is Status.SUCCESS:
            return f"{WHERE}: converged: marginal error {self.error:.3g} <= tolerance " \
                   f"{self.tolerance:.3g} ({self.error_measure}) after {self.n_iters} iterations"
        extra = ""
        if self.status is Status.MAX_ITERATIONS:
            extra = "; try a larger maxiter, a larger eps or eps_scaling=8"
        return f"{head}: status {self.status.name}. {self.status.hint()}{extra}"

    @property
    def plan(self) -> Any:
        """The transport plan as a lazy Dask array (n, m), chunked by the row blocks of
        ``X`` and ``Y``: index or slice it and compute only the blocks you need (the
        whole plan is ``8 n m`` bytes)."""
        da, _ = dask_modules()
        s = self.settings
        return da.blockwise(_blocks.pair_plan, "ij", self.X, "ik", self.Y, "jk", self.f, "i",
                            self.g, "j", eps=s.eps, cost=s.cost, dtype=self.f.dtype,
                            concatenate=True, meta=meta_like(self.f, 2))

    def gradients(self, cost_cotangent: float = 1.0) -> PointCloudGradients:
        """The cotangents of ``X``, ``Y``, ``a``, ``b`` for a cotangent of the cost (Dask
        arrays chunked like the inputs).

        Envelope theorem (the potentials are optimal): ``dW/dx_i = sum_j P_ij
        dc(x_i, y_j)/dx_i`` (for the squared Euclidean cost ``2 (r_i x_i - (P Y)_i)``),
        likewise for ``y_j``, and ``dW/da = f``, ``dW/db = g`` in the gauge ``sum(f) =
        sum(g)``, which is the minimum-norm representative that
        :func:`diffsolve.ot.sinkhorn` returns. The row sums and the products come from the
        final pass of the solve (held by the workers), so no pass over the cost is
        repeated.
        """
        w = float(cost_cotangent)
        if self.settings.cost == _blocks.SQEUCLIDEAN:
            X_bar = 2.0 * w * (self.rows[:, :1] * self.X - self.rows[:, 1:])
            Y_bar = 2.0 * w * (self.cols[:, :1] * self.Y - self.cols[:, 1:])
        else:
            X_bar = w * self.rows[:, 1:]
            Y_bar = w * self.cols[:, 1:]
        return PointCloudGradients(X_bar, Y_bar, w * self.f, w * self.g)


def _settings(eps, cost, rtol, atol, maxiter, error_measure, check_every, eps_scaling,
              split_every, throw, callback) -> PointCloudSettings:
    rtol, atol = V.tolerances(WHERE, rtol, atol)
    if cost != _blocks.SQEUCLIDEAN and not callable(cost):
        raise ValueError(f"{WHERE}: cost must be 'sqeuclidean' or a callable cost(X_block, "
                         f"Y_block) -> (p, q) array, got {cost!r}")
    if eps_scaling is False:
        eps_scaling = None
    elif isinstance(eps_scaling, (list, tuple)):
        eps_scaling = tuple(eps_scaling)
    elif eps_scaling is not None:
        eps_scaling = V.positive_int(WHERE, "eps_scaling", eps_scaling)
    return PointCloudSettings(
        eps=check_eps(WHERE, eps), cost=cost, rtol=rtol, atol=atol,
        maxiter=V.positive_int(WHERE, "maxiter", maxiter),
        error_measure=check_measure(WHERE, error_measure),
        check_every=V.positive_int(WHERE, "check_every", check_every),
        eps_scaling=eps_scaling,
        split_every=V.integer(WHERE, "split_every", split_every, minimum=2),
        throw=V.boolean(WHERE, "throw", throw), callback=V.callback(WHERE, callback))


class _Problem:
    """The sharded problem: points, weights and the two half-steps as Dask graphs."""

    def __init__(self, X, Y, a, b, s: PointCloudSettings):
        self.da, dask = dask_modules()
        self.s = s
        # the points and weights go to the workers once (persisted): every half-step's
        # graph then refers to them instead of carrying them
        self.X, self.Y, self.a, self.b = dask.persist(X, Y, a, b)
        self.dtype = X.dtype
        self.meta = meta_like(X, 1)

    def persist_log_weights(self) -> None:
        """Persist and replicate log(a), log(b); called once the weights are known to be
        positive, so that a zero weight is refused by name instead of meeting log(0)."""
        self.loga, self.logb = self.da.log(self.a), self.da.log(self.b)
        _, dask = dask_modules()
        self.loga, self.logb = dask.persist(self.loga, self.logb)
        _replicate(self.X, self.Y, self.loga, self.logb)

    def _soft_min(self, P, Q, w, eps, swapped):
        """``eps LSE_q((w_q - c(P_p, Q_q)) / eps)`` for every point of ``P``: one task per
        block pair, then a tree reduction (fan-in ``split_every``) over ``Q``'s blocks.

        The graph is written out task by task (rather than by ``blockwise`` and
        ``reduction``, which add a pass-through task per block pair): a half-step is
        ``nP nQ`` pair tasks plus about ``nP nQ / (split_every - 1)`` combine tasks.
        """
        da = self.da
        from dask.base import tokenize
        from dask.highlevelgraph import HighLevelGraph

        name = "sinkhorn-softmin-" + tokenize(P.name, Q.name, w.name, eps, swapped,
                                              self.s.cost)
        fan = self.s.split_every
        dsk: dict = {}
        for j in range(P.numblocks[0]):
            level: list = []
            for i in range(Q.numblocks[0]):
                key = (name + "-pair", i, j)
                dsk[key] = (_blocks.pair_lse, (P.name, j, 0), (Q.name, i, 0), (w.name, i),
                            eps, self.s.cost, swapped)
                level.append(key)
            depth = 0
            while len(level) > fan:
                depth += 1
                groups = [level[k:k + fan] for k in range(0, len(level), fan)]
                level = []
                for g, group in enumerate(groups):
                    key = (f"{name}-combine{depth}", g, j)
                    dsk[key] = (_blocks.combine_partials, group, eps)
                    level.append(key)
            dsk[(name, j)] = (_blocks.combine_partials, level, eps)
        graph = HighLevelGraph.from_collections(name, dsk, dependencies=[P, Q, w])
        return da.Array(graph, name, chunks=(P.chunks[0],), dtype=self.dtype, meta=self.meta)

    def cols(self, f, eps):
        """``eps LSE_i((f_i - C_ij) / eps)`` (m,)."""
        return self._soft_min(self.Y, self.X, f, eps, swapped=True)

    def rows(self, g, eps):
        """``eps LSE_j((g_j - C_ij) / eps)`` (n,)."""
        return self._soft_min(self.X, self.Y, g, eps, swapped=False)

    def apply(self, P, Q, u, w, eps, swapped):
        """Row sums and plan-point products (or cost cotangents) for every point of ``P``,
        (len(P), d + 1), summed over ``Q``'s blocks by a tree reduction."""
        da = self.da
        d = P.shape[1]
        parts = da.blockwise(
            _blocks.pair_apply, "jiz", P, "ik", Q, "jk", u, "i", w, "j", eps=eps,
            cost=self.s.cost, swapped=swapped, adjust_chunks={"j": 1},
            new_axes={"z": d + 1}, dtype=self.dtype, concatenate=True,
            meta=meta_like(self.X, 3))
        return da.sum(parts, axis=0, split_every=self.s.split_every)

    def cost_range(self):
        """``max C - min C`` over all block pairs (one pass; for ε-scaling)."""
        da = self.da
        ext = da.blockwise(_blocks.pair_extremes, "ijz", self.X, "ik", self.Y, "jk",
                           cost=self.s.cost, adjust_chunks={"i": 1, "j": 1},
                           new_axes={"z": 2}, dtype=self.dtype, concatenate=True,
                           meta=meta_like(self.X, 3))
        lo = da.min(ext[..., 0], split_every=self.s.split_every)
        hi = da.max(ext[..., 1], split_every=self.s.split_every)
        return float((hi - lo).compute())


def sinkhorn_pointcloud(X: Any, Y: Any, eps: float, a: Any = None, b: Any = None, *,
                        cost: Any = "sqeuclidean", rtol: float = 1e-9, atol: float = 0.0,
                        maxiter: int = 10_000, error_measure: str = "l1",
                        check_every: int = 10, eps_scaling: Any = None,
                        split_every: int = 8, throw: bool = False,
                        callback: Callable | None = None) -> PointCloudOTResult:
    """Entropic OT between two point clouds sharded by rows over a Dask cluster.

    The same problem and iteration as :func:`diffsolve.ot.sinkhorn` with
    ``C_ij = c(x_i, y_j)``, but ``C`` never exists: every half-step runs one task per
    block pair ``(X_I, Y_J)``, which computes its cost block on the fly and returns a
    partial soft-minimum, and a Dask tree reduction combines the partials across row
    blocks. A worker holds at most one block pair's points and potentials (plus, for a
    user cost or CuPy blocks, that pair's cost block).

    Parameters
    ----------
    X, Y : dask arrays, shapes (n, d), (m, d)
        The points, chunked by rows (a chunking of the columns is merged). NumPy chunks
        run the Numba kernels of ``diffsolve.kernels.cpu.ot_blocks``; CuPy chunks run
        array-API code on the GPU of their worker. NumPy arrays are accepted and chunked
        into 8 row blocks.
    eps : float > 0
        Entropic regularisation, in cost units.
    a, b : dask arrays, shapes (n,), (m,), optional
        Positive weights of equal total mass (default uniform ``1/n``, ``1/m``), rechunked
        like the rows of ``X`` and ``Y``.
    cost : "sqeuclidean" or callable
        ``"sqeuclidean"``: ``c(x, y) = ||x - y||^2`` (no factor 1/2). A callable
        ``cost(X_block, Y_block) -> (p, q)`` array is applied to each block pair; its
        gradient (for :meth:`PointCloudOTResult.gradients`) comes from HIPS autograd, so
        write it with ``autograd.numpy``.
    rtol, atol, maxiter, error_measure, check_every, eps_scaling
        As :func:`diffsolve.ot.sinkhorn`. The marginal error is computed only every
        ``check_every`` iterations: that is the only point where the client waits for the
        cluster (the iterations in between are submitted as one graph). An integer
        ``eps_scaling`` starts at ``max C - min C`` (one extra pass over the block pairs).
    split_every : int >= 2
        Fan-in of the tree reductions over row blocks.
    throw : bool
        Raise the status's :class:`diffsolve.SolveError` instead of warning.
    callback : callable, optional
        ``callback(state) -> bool | None`` at every check with an
        :class:`~diffsolve.ot.OTState` (``f``, ``g`` are persisted Dask arrays).

    Returns
    -------
    PointCloudOTResult
        Potentials ``f``, ``g`` (persisted Dask arrays), ``cost``, ``error``, ``status``,
        ``converged``, ``message``, ``n_iters``; :attr:`~PointCloudOTResult.plan` (lazy
        Dask array) and :meth:`~PointCloudOTResult.gradients`.

    See Also
    --------
    diffsolve.ot.sinkhorn : The same iteration on a cost matrix held in memory.
    PointCloudOTResult.gradients : Gradients with respect to the points and weights.

    Notes
    -----
    Communication per half-step: every block pair task reads its two point blocks
    (``(p + q) d`` numbers, cached by the workers after the first iteration) and one
    potential block (``q`` numbers); the tree reduction moves ``(nblocks_X) m`` numbers
    for the column half-step (``(nblocks_Y) n`` for the row one).

    Examples
    --------
    >>> import numpy as np
    >>> import dask.array as da
    >>> import diffsolve as ds
    >>> import diffsolve.distributed as dd
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.random((40, 2)), rng.random((30, 2))
    >>> X, Y = da.from_array(x, chunks=(10, 2)), da.from_array(y, chunks=(15, 2))
    >>> res = dd.sinkhorn_pointcloud(X, Y, 0.1, rtol=1e-10)
    >>> res.converged
    True
    >>> C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    >>> ref = ds.ot.sinkhorn(np.full(40, 1 / 40), np.full(30, 1 / 30), C, 0.1, rtol=1e-10)
    >>> bool(abs(res.cost - ref.cost) < 1e-9)
    True
    """
    da, dask = dask_modules()
    s = _settings(eps, cost, rtol, atol, maxiter, error_measure, check_every, eps_scaling,
                  split_every, throw, callback)
    X = as_dask_array(WHERE, "X", X, ndim=2)
    Y = as_dask_array(WHERE, "Y", Y, ndim=2)
    if X.shape[1] != Y.shape[1]:
        raise ValueError(f"{WHERE}: X and Y must have the same number of columns (the "
                         f"dimension d of the points), got shapes {X.shape} and {Y.shape}")
    _check_dtype(X, "X")
    _check_dtype(Y, "Y")
    X = X.rechunk({1: -1})
    Y = Y.rechunk({1: -1})
    n, m = int(X.shape[0]), int(Y.shape[0])
    a = _weights(da, a, "a", X)
    b = _weights(da, b, "b", Y)
    prob = _Problem(X, Y, a, b, s)
    X, Y, a, b = prob.X, prob.Y, prob.a, prob.b
    mass_a, mass_b, min_a, min_b = dask.compute(da.sum(a), da.sum(b), da.min(a), da.min(b))
    mass_a, mass_b = float(mass_a), float(mass_b)
    if not (float(min_a) > 0 and float(min_b) > 0):
        raise ValueError(f"{WHERE}: a and b must be positive weights (min(a) = "
                         f"{float(min_a):.3g}, min(b) = {float(min_b):.3g}); drop the points "
                         "of zero weight instead")
    if abs(mass_a - mass_b) > 1e-6 * max(mass_a, mass_b):
        raise ValueError(f"{WHERE}: a and b must have the same total mass, got sum(a) = "
                         f"{mass_a!r} and sum(b) = {mass_b!r}; normalise both (e.g. a / "
                         "a.sum())")
    prob.persist_log_weights()
    tol = s.atol + s.rtol * mass_a
    if s.eps_scaling is None:
        schedule = [s.eps]
    else:
        scale = prob.cost_range() if isinstance(s.eps_scaling, int) else s.eps
        schedule = _schedule(s.eps_scaling, s.eps, scale)
    f, g, n_iters, stopped, bad = _iterate(prob, schedule, tol, mass_a, s)
    # the gauge of diffsolve.ot.sinkhorn: sum(f) = sum(g)
    c = (da.sum(g) - da.sum(f)) / (n + m)
    f, g = f + c, g - c
    eps = s.eps
    rows = prob.apply(X, Y, f, g, eps, swapped=False)
    cols = prob.apply(Y, X, g, f, eps, swapped=True)
    f, g, rows, cols = dask.persist(f, g, rows, cols)
    r, col = rows[:, 0], cols[:, 0]
    if s.error_measure == "l1":
        err = da.sum(da.abs(r - a)) + da.sum(da.abs(col - b))
    else:
        err = da.sqrt(da.sum((col - b) ** 2))
    W = da.sum(f * r) + da.sum(g * col) - eps * da.sum(r)
    fin = da.isfinite(f).all() & da.isfinite(g).all()
    err, W, fin = dask.compute(err, W, fin)
    err, W = float(err), float(W)
    if not math.isfinite(err):
        err = math.inf
    nonfinite = bad or not bool(fin) or not math.isfinite(err) or not math.isfinite(W)
    ok = (not nonfinite) and err <= tol and not s.fixed_budget
    if ok:
        status = Status.SUCCESS
    elif nonfinite:
        status = Status.NONFINITE
    elif stopped:
        status = Status.STOPPED
    else:
        status = Status.MAX_ITERATIONS
    out = PointCloudOTResult(f=f, g=g, cost=W, error=err, tolerance=tol, n_iters=n_iters,
                             converged=ok, status=status, eps=eps,
                             error_measure=s.error_measure, X=X, Y=Y, a=a, b=b, settings=s,
                             rows=rows, cols=cols)
    report(out, throw=s.throw, fixed_budget=s.fixed_budget)
    return out


def _iterate(prob: _Problem, schedule, tol, mass, s: PointCloudSettings):
    """:func:`diffsolve.ot.sinkhorn`'s loop (no acceleration, one problem), on Dask
    arrays. Returns ``f, g, n_iters, stopped, nonfinite``."""
    da, dask = dask_modules()
    X = prob.X
    f = da.zeros((X.shape[0],), dtype=prob.dtype, chunks=X.chunks[0], meta=prob.meta)
    g = None
    total = 0
    stopped = bad = False
    for stage, eps in enumerate(schedule):
        last = stage == len(schedule) - 1
        if last:
            stage_tol = -math.inf if s.fixed_budget else tol
        else:
            stage_tol = max(_STAGE_RTOL * mass, tol)
        it = 0
        while True:
            check = it % s.check_every == 0 and g is not None
            Lc = prob.cols(f, eps)
            if check:
                colsum = da.exp((g + Lc) / eps)
                if s.error_measure == "l1":
                    err = da.sum(da.abs(colsum - prob.b))
                else:
                    err = da.sqrt(da.sum((colsum - prob.b) ** 2))
                # the one wait per check: the iterations since the last one run as a graph
                f, g, Lc, err = dask.persist(f, g, Lc, err)
                # a copy of the state on every worker: a lost worker then costs at most the
                # iterations since this check (Dask recomputes lost keys from their graph)
                _replicate(f, g)
                err = float(err.compute())
                if not math.isfinite(err):
                    bad = True
                    break
                if s.callback is not None and s.callback(
                        OTState(n_iters=total, f=f, g=g, error=err, eps=eps)):
                    stopped = True
                    break
                if err <= stage_tol:
                    break
            if total >= s.maxiter:
                break
            g = eps * prob.logb - Lc
            f = eps * prob.loga - prob.rows(g, eps)
            it += 1
            total += 1
        if total >= s.maxiter or stopped or bad:
            break
    if g is None:  # maxiter reached before any g (cannot happen with maxiter >= 1)
        g = eps * prob.logb - prob.cols(f, eps)
    return f, g, total, stopped, bad


def _replicate(*arrays):
    """Copy the persisted point blocks and log-weights to every worker of the current
    ``dask.distributed`` client (``(n + m)(d + 1)`` numbers each, small next to the cost's
    ``n m``): the block-pair tasks of every half-step then find them locally, and only the
    potentials move. Without a distributed client (the local schedulers) nothing to do."""
    try:
        from distributed import default_client, futures_of
    except ImportError:  # pragma: no cover - dask without distributed
        return
    try:
        client = default_client()
    except ValueError:  # no client: the threaded or synchronous scheduler
        return
    futures = [f for x in arrays for f in futures_of(x)]
    if futures and len(client.scheduler_info(n_workers=-1)["workers"]) > 1:
        client.replicate(futures)


def _check_dtype(x, name):
    if str(x.dtype) not in ("float32", "float64"):
        raise TypeError(f"{WHERE}: {name} must be a float32 or float64 array, got dtype "
                        f"{x.dtype}; convert it with x.astype('float64')")


def _weights(da, w, name, pts):
    if w is None:
        n = int(pts.shape[0])
        return da.full((n,), 1.0 / n, dtype=pts.dtype, chunks=pts.chunks[0],
                       meta=meta_like(pts, 1))
    w = as_dask_array(WHERE, name, w, ndim=1)
    if w.shape[0] != pts.shape[0]:
        raise ValueError(f"{WHERE}: {name} has {w.shape[0]} weights for {pts.shape[0]} "
                         "points; pass one weight per row")
    return w.astype(pts.dtype).rechunk((pts.chunks[0],))
