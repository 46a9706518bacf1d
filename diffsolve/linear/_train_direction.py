"""Training a :class:`ConvDirectionModel` on one matrix: Lanczos data, the DCDM loss, Adam.

Kaneda et al. (ICML 2023), section 3.2–3.4:

* Training right-hand sides are random combinations of Ritz vectors of ``A`` (from a Lanczos
  run), the low end of the spectrum weighted up (~9×), normalised to unit length. The
  residuals a conjugate-direction iteration meets are dominated by the smooth, low-eigenvalue
  modes once the rough ones are gone, so those are what the network must invert best.
* Loss for a right-hand side ``b`` and network output ``q = N(b)`` (scale invariant in q):
  ``x̂ = q (qᵀb) / (qᵀAq)``, ``L = ||b - A x̂||²``, averaged over a mini-batch.
* Adam (Kingma & Ba, 2015), learning rate 1e-4 and batch 10 in the paper.

The gradient of the loss with respect to ``q`` is written out here (symmetric ``A``); with
``u = Aq``, ``t = qᵀu``, ``α = qᵀb / t``, ``r = b - αu``:
``∂L/∂q = -2 (rᵀu)/t · (b - 2αu) - 2α A r``. The network's own backward pass
(:meth:`ConvDirectionModel.backward`) takes it from there; everything is array-API code,
so training runs on NumPy and CuPy alike.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .. import _backend as B
from .._typing import Array, Matrix
from ._direction_model import ConvDirectionModel, _check_levels
from ._operator import as_operator

__all__ = ["DirectionTrainingResult", "lanczos_ritz", "train_direction_model"]

WHERE = "diffsolve.linear.train_direction_model"


@dataclass
class DirectionTrainingResult:
    """What :func:`train_direction_model` returns.

    Attributes
    ----------
    model : ConvDirectionModel
        The trained model, bound to the training grid.
    loss_history : list of float
        Mini-batch loss of every step.
    ritz_values : array or list of arrays
        Ritz values of the Lanczos run the training data came from (ascending); one array
        per problem when a family was trained on.
    seconds : float
        Wall time of the Lanczos run plus the training loop.

    See Also
    --------
    diffsolve.linear.train_direction_model : Returns this.
    diffsolve.linear.ConvDirectionModel : The ``model`` field.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> from diffsolve.linear import train_direction_model
    >>> T = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(8, 8))
    >>> A = (sp.kron(sp.eye(8), T) + sp.kron(T, sp.eye(8))).tocsr()
    >>> out = train_direction_model(A, (8, 8), channels=4, n_steps=2, batch_size=2,
    ...                             n_ritz=16, progress=False)
    >>> len(out.loss_history), out.model.dim
    (2, 2)
    """

    model: ConvDirectionModel
    loss_history: list = field(default_factory=list)
    ritz_values: object = None
    seconds: float = 0.0


def lanczos_ritz(op, m, *, seed=0, dtype=None):
    """``(values, vectors)``: the ``m`` Ritz pairs of a Lanczos run of length ``m`` on ``op``.

    Full reorthogonalisation (two classical Gram–Schmidt passes) keeps the basis orthonormal,
    so the Ritz vectors are orthonormal too; cost ``O(n m²)``. Values ascending, vectors
    ``(n, m)``. Golub & Van Loan, *Matrix Computations*, section 10.1.
    """
    xp = op.xp
    n = op.n
    m = min(int(m), n)
    dtype = op.dtype if dtype is None else dtype
    rng = B.host_rng(seed)
    hxp = B.host_namespace()
    v0 = rng.standard_normal(n)
    dev = _device_of(op)
    v = _from_host(xp, hxp.asarray(v0), dtype, dev)
    v = v / xp.sqrt(xp.sum(v * v))
    Q = xp.zeros((n, m), dtype=dtype, device=dev)
    alphas, betas = [], []
    k_used = m
    for j in range(m):
        Q = _set_column(xp, Q, j, v)
        w = op.matvec(v)
        alphas.append(float(xp.sum(w * v)))
        basis = Q[:, :j + 1]
        for _ in range(2):
            w = w - basis @ (xp.matrix_transpose(basis) @ w)
        beta = float(xp.sqrt(xp.sum(w * w)))
        if j == m - 1:
            break
        if beta <= 1e-12 * abs(alphas[-1]) or not math.isfinite(beta):
            k_used = j + 1  # invariant subspace found: fewer Ritz pairs
            break
        betas.append(beta)
        v = w / beta
    T = hxp.zeros((k_used, k_used))
    for i in range(k_used):
        T[i, i] = alphas[i]
        if i + 1 < k_used:
            T[i, i + 1] = T[i + 1, i] = betas[i]
    vals, S = hxp.linalg.eigh(T)
    S_dev = _from_host(xp, S, dtype, dev)
    vectors = Q[:, :k_used] @ S_dev
    return _from_host(xp, vals, dtype, dev), vectors


def _device_of(op):
    if op.kind == "sparse":
        return B.device(op.A.data)
    if op.kind == "dense":
        return B.device(op.A)
    return None


def _from_host(xp, host, dtype, device):
    """Small host-side results (Lanczos tridiagonal eigenvectors) onto the data's device."""
    if B.is_cupy(xp):
        return xp.asarray(xp.asarray(host), dtype=dtype)
    return xp.asarray(host, dtype=dtype, device=device)


def _set_column(xp, Q, j, v):
    if B.is_numpy(xp) or B.is_cupy(xp):
        Q[:, j] = v
        return Q
    import array_api_extra as xpx

    return xpx.at(Q)[:, j].set(v)


class _Adam:
    """Adam (Kingma & Ba 2015, Algorithm 1) over a dict of parameter arrays."""

    def __init__(self, params, lr, beta1=0.9, beta2=0.999, eps=1e-8):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.m = {k: v * 0 for k, v in params.items()}
        self.v = {k: v * 0 for k, v in params.items()}
        self.t = 0

    def step(self, xp, params, grads):
        self.t += 1
        c1 = 1 - self.beta1 ** self.t
        c2 = 1 - self.beta2 ** self.t
        new = {}
        for k, p in params.items():
            g = grads[k]
            self.m[k] = self.beta1 * self.m[k] + (1 - self.beta1) * g
            self.v[k] = self.beta2 * self.v[k] + (1 - self.beta2) * g * g
            new[k] = p - (self.lr / c1) * self.m[k] / (xp.sqrt(self.v[k] / c2) + self.eps)
        return new


def direction_loss(op, model, b, *, keep=False):
    """Mean DCDM loss of ``model`` on the unit columns of ``b`` (n, B); with ``keep``, also
    ``(q, cache, dL/dq)`` for the backward pass."""
    xp = model.xp
    q, cache = model.forward(b, keep=True) if keep else (model.forward(b), None)
    q = xp.astype(q, b.dtype)
    u = op.matvec(q)
    t = xp.sum(q * u, axis=0)
    t = xp.where(t > 0, t, xp.ones_like(t) * xp.finfo(b.dtype).tiny)
    alpha = xp.sum(q * b, axis=0) / t
    r = b - alpha * u
    nb = b.shape[1]
    loss = xp.sum(r * r) / nb
    if not keep:
        return loss
    Ar = op.matvec(r)
    ru = xp.sum(r * u, axis=0)
    g = (-2.0 / nb) * ((ru / t) * (b - 2.0 * alpha * u) + alpha * Ar)
    return loss, cache, g


def train_direction_model(A: Matrix | Sequence[Matrix],
                          grid_shape: tuple[int, ...] | Sequence[tuple[int, ...]], *,
                          mask: Array | Sequence[Array | None] | None = None,
                          model: ConvDirectionModel | None = None, channels: int = 16,
                          n_blocks: int = 1, n_steps: int = 1000, batch_size: int = 10,
                          lr: float | Callable[[int], float] = 1e-4, n_ritz: int | None = None,
                          low_fraction: float = 0.5, low_weight: float = 9.0, seed: int = 0,
                          progress: bool = True, dtype: str = "float32",
                          callback: Callable[[int, float, ConvDirectionModel], object] | None
                          = None, max_seconds: float | None = None,
                          levels: int | str = 1,
                          shared_levels: bool = False,
                          coefficient_channel: bool = False) -> DirectionTrainingResult:
    """Train a :class:`ConvDirectionModel` for ``A`` (symmetric positive definite) on a grid,
    or for a family of such matrices.

    Parameters
    ----------
    A : array, sparse matrix or LinearOperator, shape (n, n), or a list of them
        The training matrix; ``n`` is the number of grid cells (or of True cells of
        ``mask``), in C order. A list trains one model on a family of problems (grids of
        several sizes, coefficient fields, boundary conditions, obstacle layouts): each
        gets its own Lanczos data and the steps visit them in turn.
    grid_shape : tuple of int, or a list of them
        The grid (2 or 3 sizes): the model's ``dim``; a list (one grid per matrix) with a
        list ``A``.
    mask : bool array of grid_shape, or a list of them, optional
        Fluid cells (the unknowns); gives the model a mask input channel. With a list ``A``,
        a list of masks (all or none given).
    model : ConvDirectionModel, optional
        Continue training this model (default: a new one with ``channels``, ``n_blocks``,
        ``seed``).
    n_steps, batch_size : int
        Adam steps, right-hand sides per step (paper: batch 10).
    lr : float or callable
        Adam learning rate (paper: 1e-4), or a schedule ``lr(step) -> float``.
    n_ritz : int, optional
        Lanczos steps = Ritz vectors (default ``min(n, 400)``).
    low_fraction, low_weight : float
        The lowest ``low_fraction`` of the Ritz vectors get coefficients ``low_weight``
        times larger (paper: ~9×).
    seed : int
        Seeds the initialisation, the Lanczos start vector and the data.
    progress : bool
        Show a tqdm progress bar with the running loss.
    dtype : {"float32", "float64"}
        Parameter dtype of a new model.
    callback : callable, optional
        ``callback(step, loss, model)`` after every step.
    max_seconds : float, optional
        Wall-time budget: training stops after the step that exceeds it (the history then
        has fewer than ``n_steps`` entries).
    channels, n_blocks : int
        Architecture of a new model (see :class:`ConvDirectionModel`); not used when
        ``model`` is given.
    levels : int or "auto"
        Pooling levels of a new model (see :class:`ConvDirectionModel`; ``"auto"`` is
        resolved on ``grid_shape``); not used when ``model`` is given.
    shared_levels : bool
        Whether the levels between the grid and the coarsest share their weights (see
        :class:`ConvDirectionModel`; with ``levels="auto"`` the trained model then adapts
        its depth to every grid it runs on); not used when ``model`` is given.
    coefficient_channel : bool
        Give a new model the matrix diagonal as an input channel and Jacobi scaling (see
        :class:`ConvDirectionModel`); each training matrix's own diagonal is bound. Not
        used when ``model`` is given (a given model's own setting applies).

    Returns
    -------
    DirectionTrainingResult
        ``model`` (bound to the first grid), ``loss_history``, ``ritz_values`` (a list, one
        array per problem, for a family), ``seconds``.

    See Also
    --------
    diffsolve.linear.ConvDirectionModel : The network being trained.
    diffsolve.linear.pretrained_direction_model : Models trained on 2-D Poisson.
    diffsolve.linear.solve : ``method="dcdm"`` solves with the trained model.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> from diffsolve.linear import train_direction_model
    >>> T = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(8, 8))
    >>> A = (sp.kron(sp.eye(8), T) + sp.kron(T, sp.eye(8))).tocsr()
    >>> out = train_direction_model(A, (8, 8), channels=4, n_steps=3, batch_size=2,
    ...                             n_ritz=16, progress=False)
    >>> len(out.loss_history)
    3

    A family: the same Laplacian on two grid sizes, visited in turn.

    >>> T4 = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(4, 4))
    >>> A4 = (sp.kron(sp.eye(4), T4) + sp.kron(T4, sp.eye(4))).tocsr()
    >>> out = train_direction_model([A, A4], [(8, 8), (4, 4)], channels=4, n_steps=4,
    ...                             batch_size=2, n_ritz=8, progress=False)
    >>> out.model.grid_shape, len(out.ritz_values)
    ((8, 8), 2)
    """
    start = time.perf_counter()
    family = isinstance(A, (list, tuple))
    matrices, grids, masks = _family(A, grid_shape, mask, family)
    for name, value in (("n_steps", n_steps), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{WHERE}: {name} must be a positive integer, got {value!r}")
    schedule = lr if callable(lr) else (lambda step: lr)
    if not (0 < low_fraction <= 1) or low_weight <= 0 or schedule(0) <= 0:
        raise ValueError(f"{WHERE}: need 0 < low_fraction <= 1, low_weight > 0 and lr > 0; "
                         f"got {low_fraction!r}, {low_weight!r}, {lr!r}")
    ops = []
    for k, (Ak, grid, mk) in enumerate(zip(matrices, grids, masks, strict=True)):
        op, xp = _operator(Ak)
        n_expected = math.prod(grid) if mk is None else int(xp.sum(xp.astype(mk, xp.int64)))
        if op.n != n_expected:
            where_ = " (True cells of mask)" if mk is not None else ""
            which = f"A[{k}]" if family else "A"
            raise ValueError(f"{WHERE}: {which} is {op.shape} but the grid {grid} has "
                             f"{n_expected} unknowns{where_}")
        ops.append(op)
    if len({op.xp.__name__ for op in ops}) != 1:
        raise ValueError(f"{WHERE}: the matrices of a family must live in one array library "
                         f"and device; got {sorted({op.xp.__name__ for op in ops})}")
    if len({len(g) for g in grids}) != 1 or len({mk is None for mk in masks}) != 1:
        raise ValueError(f"{WHERE}: the problems of a family must have grids of one dimension "
                         f"and either all or none a mask; got grids {grids}")
    xp = ops[0].xp
    dev = _device_of(ops[0])
    like = xp.zeros((1,), device=dev) if dev is not None else xp.zeros((1,))
    if model is None:
        model = ConvDirectionModel(len(grids[0]), channels, n_blocks, seed=seed,
                                   mask_channel=masks[0] is not None, dtype=dtype,
                                   # checked here so that a bad value names this function
                                   levels=_check_levels(levels, grids[0], WHERE,
                                                        shared_levels),
                                   shared_levels=shared_levels,
                                   coefficient_channel=coefficient_channel)
    model = model.to(like)
    work_dtype = model.dtype
    # per problem: the model bound to its grid (sharing the weights), its Ritz data and its
    # operator in the working dtype
    data = []
    all_values = []
    for k, (op, grid, mk) in enumerate(zip(ops, grids, masks, strict=True)):
        m_k = min(op.n, 400) if n_ritz is None else min(int(n_ritz), op.n)
        values, V = lanczos_ritz(op, m_k, seed=seed + 7919 * k, dtype=op.dtype
                                 if op.kind != "operator" else xp.float64)
        V = xp.astype(V, work_dtype)
        m = V.shape[1]
        weights = [low_weight if i < max(1, round(low_fraction * m)) else 1.0 for i in range(m)]
        weights = _from_host(xp, B.host_namespace().asarray(weights), work_dtype, dev)
        diagonal = op.diagonal() if model.coefficient_channel else None
        if model.coefficient_channel and diagonal is None:
            raise ValueError(f"{WHERE}: a model with a coefficient channel needs the matrix "
                             "diagonal, and a LinearOperator has none to read; pass the "
                             "matrix (dense or sparse)")
        data.append((model.on_grid(grid, mk, diagonal), V, weights,
                     _cast_operator(op, work_dtype)))
        all_values.append(values)
    rng = B.host_rng(seed + 1)
    adam = _Adam(model.params, schedule(0))
    history = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_steps, desc="train_direction_model", leave=False)
    try:
        for step in range(n_steps):
            # a family is visited in turn, so that every problem weighs the same
            bound, V, weights, work_op = data[step % len(data)]
            bound.params = model.params
            coeff = _from_host(xp, rng.standard_normal((V.shape[1], batch_size)), work_dtype,
                               dev)
            b = V @ (coeff * weights[:, None])
            b = b / xp.sqrt(xp.sum(b * b, axis=0))
            adam.lr = schedule(step)
            loss, cache, g = direction_loss(work_op, bound, b, keep=True)
            grads = bound.backward(cache, xp.astype(g, work_dtype))
            model.params = adam.step(xp, model.params, grads)
            history.append(float(loss))
            if bar is not None:
                bar.update(1)
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{history[-1]:.4g}")
            if callback is not None:
                callback(step, history[-1], _with_params(data[0][0], model.params))
            if max_seconds is not None and time.perf_counter() - start > max_seconds:
                break
    finally:
        if bar is not None:
            bar.close()
    model = _with_params(data[0][0], model.params)
    trained_on = [f"{op.n} unknowns, grid {grid}" for op, grid in zip(ops, grids, strict=True)]
    model.metadata.update({"trained_on": trained_on if family else trained_on[0],
                           "n_steps": len(history), "batch_size": batch_size,
                           "lr": lr if not callable(lr) else "schedule",
                           "n_ritz": [d[1].shape[1] for d in data] if family
                           else data[0][1].shape[1],
                           "final_loss": history[-1] if history else None})
    values = all_values if family else all_values[0]
    return DirectionTrainingResult(model=model, loss_history=history, ritz_values=values,
                                   seconds=time.perf_counter() - start)


def _with_params(bound, params):
    """A copy of the bound model ``bound`` carrying ``params`` (the weights being trained)."""
    new = bound._copy()
    new.params = params
    return new


def _family(A, grid_shape, mask, family):
    """``(matrices, grids, masks)`` lists for one problem or a family of them."""
    if not family:
        return [A], [tuple(int(s) for s in grid_shape)], [mask]
    if len(A) == 0:
        raise ValueError(f"{WHERE}: A is an empty list; give a matrix or a list of matrices")
    if (not isinstance(grid_shape, (list, tuple)) or len(grid_shape) != len(A)
            or not all(isinstance(g, (list, tuple)) for g in grid_shape)):
        raise ValueError(f"{WHERE}: with a list of {len(A)} matrices, grid_shape must be a list "
                         f"of {len(A)} grid shapes (one per matrix), got {grid_shape!r}")
    if mask is not None and (not isinstance(mask, (list, tuple)) or len(mask) != len(A)):
        raise ValueError(f"{WHERE}: with a list of {len(A)} matrices, mask must be None or a "
                         f"list of {len(A)} masks, got {type(mask).__name__}")
    masks = list(mask) if mask is not None else [None] * len(A)
    return list(A), [tuple(int(s) for s in g) for g in grid_shape], masks


def _operator(A):
    """``as_operator`` needs a right-hand side to learn the namespace; a probe of the right
    size and namespace is enough."""
    if B.is_linear_operator(A):
        hxp = B.host_namespace() if not B.is_cupy(B.array_namespace(A)) else \
            B.array_namespace(A)
        probe = hxp.zeros((A.shape[0],))
    else:
        xp0 = B.array_namespace(A, where=WHERE)
        values = A.data if B.is_sparse(A) else A
        probe = xp0.zeros((A.shape[0],), dtype=values.dtype, device=B.device(A))
    return as_operator(A, probe, WHERE)


class _CastOperator:
    """``op`` seen in another dtype (float32 training on a float64 matrix)."""

    def __init__(self, op, dtype):
        self.op = op
        self.dtype = dtype
        self.n = op.n
        self.xp = op.xp

    def matvec(self, x):
        return self.xp.astype(self.op.matvec(x), self.dtype)


def _cast_operator(op, dtype):
    if op.kind == "dense":
        from ._operator import MatrixOperator

        return MatrixOperator(op.xp.astype(op.A, dtype), "dense", op.xp)
    if op.kind == "sparse":
        from ._operator import MatrixOperator

        return MatrixOperator(op.A.astype(dtype), "sparse", op.xp)
    return _CastOperator(op, dtype)
