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
from collections.abc import Callable
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
    ritz_values : array
        Ritz values of the Lanczos run the training data came from (ascending).
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


def train_direction_model(A: Matrix, grid_shape: tuple[int, ...], *, mask: Array | None = None,
                          model: ConvDirectionModel | None = None, channels: int = 16,
                          n_blocks: int = 1, n_steps: int = 1000, batch_size: int = 10,
                          lr: float | Callable[[int], float] = 1e-4, n_ritz: int | None = None,
                          low_fraction: float = 0.5, low_weight: float = 9.0, seed: int = 0,
                          progress: bool = True, dtype: str = "float32",
                          callback: Callable[[int, float, ConvDirectionModel], object] | None
                          = None, max_seconds: float | None = None,
                          levels: int | str = 1) -> DirectionTrainingResult:
    """Train a :class:`ConvDirectionModel` for ``A`` (symmetric positive definite) on a grid.

    Parameters
    ----------
    A : array, sparse matrix or LinearOperator, shape (n, n)
        The training matrix; ``n`` is the number of grid cells (or of True cells of
        ``mask``), in C order.
    grid_shape : tuple of int
        The grid (2 or 3 sizes): the model's ``dim``.
    mask : bool array of grid_shape, optional
        Fluid cells (the unknowns); gives the model a mask input channel.
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

    Returns
    -------
    DirectionTrainingResult
        ``model``, ``loss_history``, ``ritz_values``, ``seconds``.

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
    """
    start = time.perf_counter()
    op, xp = _operator(A)
    grid_shape = tuple(int(s) for s in grid_shape)
    n_cells = math.prod(grid_shape)
    n_expected = n_cells if mask is None else int(xp.sum(xp.astype(mask, xp.int64)))
    if op.n != n_expected:
        where_ = " (True cells of mask)" if mask is not None else ""
        raise ValueError(f"{WHERE}: A is {op.shape} but the grid {grid_shape} has "
                         f"{n_expected} unknowns{where_}")
    for name, value in (("n_steps", n_steps), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{WHERE}: {name} must be a positive integer, got {value!r}")
    schedule = lr if callable(lr) else (lambda step: lr)
    if not (0 < low_fraction <= 1) or low_weight <= 0 or schedule(0) <= 0:
        raise ValueError(f"{WHERE}: need 0 < low_fraction <= 1, low_weight > 0 and lr > 0; "
                         f"got {low_fraction!r}, {low_weight!r}, {lr!r}")
    dev = _device_of(op)
    like = xp.zeros((1,), device=dev) if dev is not None else xp.zeros((1,))
    if model is None:
        model = ConvDirectionModel(len(grid_shape), channels, n_blocks, seed=seed,
                                   mask_channel=mask is not None, dtype=dtype,
                                   # checked here so that a bad value names this function
                                   levels=_check_levels(levels, grid_shape, WHERE))
    model = model.to(like).on_grid(grid_shape, mask)
    work_dtype = model.dtype
    n_ritz = min(op.n, 400) if n_ritz is None else int(n_ritz)
    values, V = lanczos_ritz(op, n_ritz, seed=seed, dtype=op.dtype if op.kind != "operator"
                             else xp.float64)
    V = xp.astype(V, work_dtype)
    m = V.shape[1]
    weights = [low_weight if i < max(1, round(low_fraction * m)) else 1.0 for i in range(m)]
    weights = _from_host(xp, B.host_namespace().asarray(weights), work_dtype, dev)
    rng = B.host_rng(seed + 1)
    work_op = _cast_operator(op, work_dtype)
    adam = _Adam(model.params, schedule(0))
    history = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_steps, desc="train_direction_model", leave=False)
    try:
        for step in range(n_steps):
            coeff = _from_host(xp, rng.standard_normal((m, batch_size)), work_dtype, dev)
            b = V @ (coeff * weights[:, None])
            b = b / xp.sqrt(xp.sum(b * b, axis=0))
            adam.lr = schedule(step)
            loss, cache, g = direction_loss(work_op, model, b, keep=True)
            grads = model.backward(cache, xp.astype(g, work_dtype))
            model.params = adam.step(xp, model.params, grads)
            history.append(float(loss))
            if bar is not None:
                bar.update(1)
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{history[-1]:.4g}")
            if callback is not None:
                callback(step, history[-1], model)
            if max_seconds is not None and time.perf_counter() - start > max_seconds:
                break
    finally:
        if bar is not None:
            bar.close()
    model.metadata.update({"trained_on": f"{op.n} unknowns, grid {grid_shape}",
                           "n_steps": len(history), "batch_size": batch_size,
                           "lr": lr if not callable(lr) else "schedule",
                           "n_ritz": m, "final_loss": history[-1] if history else None})
    return DirectionTrainingResult(model=model, loss_history=history, ritz_values=values,
                                   seconds=time.perf_counter() - start)


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
