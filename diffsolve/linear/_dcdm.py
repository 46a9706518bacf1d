"""The Deep Conjugate Direction Method (Kaneda et al., ICML 2023, Algorithm 1).

Each iteration recomputes the true residual ``r = b - A x``, asks the network for a direction
``q = N(r / ||r||)`` (an approximation of ``A⁻¹ r`` up to scale), A-orthogonalises it against
the last ``k`` directions, ``p = q - Σ_j (qᵀA p_j / p_jᵀA p_j) p_j`` (paper eq. 9, k = 2), and
takes the exact line-search step ``α = pᵀr / pᵀA p`` (which minimises the A-norm of the
error along p).

The network is not a symmetric positive definite preconditioner, so nothing guarantees
convergence. Fallback (diffsolve's addition, not the paper's): when the residual has not
improved on its best value by ``STALL_FACTOR`` for ``STALL_PATIENCE`` consecutive iterations,
or a direction is useless (``pᵀAp`` not positive or not finite, or ``p`` orthogonal to
``r``), the solve drops the network and restarts conjugate gradients from the current
iterate (``q = r``, the stored directions cleared); CG then converges for any symmetric
positive definite A. The switch is reported with a :class:`DirectionFallbackWarning` naming
the iteration.
"""

from __future__ import annotations

import math
import warnings
from collections import deque

from .. import _backend as B
from .._status import ConvergenceWarning
from ._direction_model import ConvDirectionModel, pretrained_direction_model
from ._iterative import IterativeOutcome, _check_symmetric

__all__ = ["DirectionFallbackWarning", "dcdm_solve"]

WHERE = "diffsolve.linear.solve"
#: iterations without a 1 % improvement of the best residual before falling back to CG. The
#: residual 2-norm of a conjugate-direction method need not fall every step (the A-norm of
#: the error does), so the window is generous: a slow start is not a stall.
STALL_PATIENCE = 10
STALL_FACTOR = 0.99

_PRETRAINED_CACHE: dict = {}


class DirectionFallbackWarning(RuntimeWarning):
    """``method="dcdm"`` left the network's directions for conjugate gradients.

    The solve still converges (CG from the current iterate); it only took the slower path.
    Train the model on matrices like this one, or use ``method="cg"``/``"pcg"``.
    """


def resolve_model(model, op, xp, device):
    """The model bound to the unknowns of ``op`` on the namespace/device of ``b``."""
    n = op.n
    if model is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(
                f"{WHERE}: method='dcdm' with model=None uses the shipped 2-D Poisson model on "
                f"a square grid, but n={n} is not a square; pass model=ConvDirectionModel(...)"
                ".on_grid(grid_shape) (see diffsolve.linear.train_direction_model)")
        key = (xp.__name__, str(device))
        if key not in _PRETRAINED_CACHE:
            like = xp.zeros((1,), device=device) if not B.is_cupy(xp) else xp.zeros((1,))
            _PRETRAINED_CACHE[key] = pretrained_direction_model("poisson2d-64", like=like)
        return _PRETRAINED_CACHE[key].on_grid((side, side))
    if not isinstance(model, ConvDirectionModel):
        raise TypeError(f"{WHERE}: model must be a diffsolve.linear.ConvDirectionModel or None "
                        f"(the shipped Poisson model), got a {type(model).__name__}")
    if model.grid_shape is None:
        side = round(n ** (1.0 / model.dim))
        shape = next((tuple([s] * model.dim) for s in (side - 1, side, side + 1)
                      if s > 0 and s ** model.dim == n), None)
        if shape is None:
            raise ValueError(f"{WHERE}: the model is not bound to a grid and n={n} is not a "
                             f"{'square' if model.dim == 2 else 'cube'}; bind it with "
                             "model.on_grid(grid_shape, mask)")
        model = model.on_grid(shape)
    if model.n_unknowns != n:
        raise ValueError(f"{WHERE}: the model's grid {model.grid_shape} has "
                         f"{model.n_unknowns} unknowns but A is {op.shape}")
    if not model.namespace_matches(xp, device):
        raise ValueError(f"{WHERE}: the model's weights live in {model.xp.__name__} but b in "
                         f"{xp.__name__} (device {device}); move them once with "
                         "model = model.to(b)")
    return model


def _norm(xp, v):
    return float(xp.sqrt(xp.sum(v * v)))


def _dcdm_column(op, b, x0, tol, maxiter, model, k, callback):
    """One right-hand side. Returns ``(x, n_iters, converged, fallback_iteration or None)``."""
    xp = op.xp
    x = xp.zeros_like(b) if x0 is None else xp.astype(x0, b.dtype, copy=True)
    r = b - op.matvec(x) if x0 is not None else b
    rn = _norm(xp, r)
    dirs = deque(maxlen=max(int(k), 1))
    fallback_at = None
    best, stall = rn, 0
    eps = float(xp.finfo(b.dtype).eps)
    it = 0
    while rn > tol and it < maxiter:
        q = r if fallback_at is not None else model(r / rn)
        p = q
        for pj, Apj, pApj in dirs:
            p = p - (float(xp.sum(q * Apj)) / pApj) * pj
        Ap = op.matvec(p)
        pAp = float(xp.sum(p * Ap))
        pr = float(xp.sum(p * r))
        pn = _norm(xp, p)
        useless = not (math.isfinite(pAp) and math.isfinite(pr) and pAp > 0
                       and abs(pr) > 10 * eps * pn * rn)
        if useless:
            if fallback_at is not None:
                raise ValueError(
                    f"{WHERE}: method='dcdm' met a conjugate-gradient direction with "
                    f"pᵀAp = {pAp:.3g} at iteration {it}: A is singular or not positive "
                    "definite; DCDM needs a symmetric positive definite A")
            fallback_at = it
            dirs.clear()
            continue
        alpha = pr / pAp
        x = x + alpha * p
        r = b - op.matvec(x)  # the true residual, as in the paper (no drift)
        rn = _norm(xp, r)
        dirs.append((p, Ap, pAp))
        it += 1
        if callback is not None:
            callback(x)
        if rn < STALL_FACTOR * best:
            best, stall = rn, 0
        else:
            stall += 1
            if stall >= STALL_PATIENCE and fallback_at is None:
                fallback_at = it
                dirs.clear()
                stall = 0
        if not math.isfinite(rn):
            break
    return x, it, rn <= tol, fallback_at


def dcdm_solve(op, b, *, model, k, x0, rtol, atol, maxiter, callback, what, prepared=None,
               check_symmetric=True):
    """DCDM on every column of ``b``; warns when it falls back or does not converge.

    ``prepared`` is a resolved model from an earlier solve with the same matrix (the
    adjoint reuses the forward's). Returns an :class:`IterativeOutcome` whose ``prepared``
    is the resolved model.
    """
    xp = op.xp
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"{WHERE}: k (directions kept for A-orthogonalisation) must be a "
                         f"positive integer, got {k!r}")
    if check_symmetric:
        _check_symmetric(op, xp, "dcdm")
    device = B.device(b)
    model = prepared if prepared is not None else resolve_model(model, op, xp, device)
    maxiter = 10 * op.n if maxiter is None else int(maxiter)
    cols = [b] if b.ndim == 1 else [b[:, j] for j in range(b.shape[1])]
    xs, iters, conv, falls = [], [], [], []
    for j, bj in enumerate(cols):
        tol = max(rtol * _norm(xp, bj), atol)
        x0j = None if x0 is None else (x0 if b.ndim == 1 else x0[:, j])
        x, it, ok, fb = _dcdm_column(op, bj, x0j, tol, maxiter, model, k, callback)
        xs.append(x)
        iters.append(it)
        conv.append(ok)
        falls.append(fb)
    x = xs[0] if b.ndim == 1 else xp.stack(xs, axis=1)
    fell = [(j, f) for j, f in enumerate(falls) if f is not None]
    if fell:
        where_ = ", ".join(f"column {j}: iteration {f}" for j, f in fell) if b.ndim == 2 \
            else f"iteration {fell[0][1]}"
        warnings.warn(
            f"{WHERE}(method='dcdm'): in {what} the network's directions stagnated or broke "
            f"down ({where_}); continued with conjugate gradients from the current iterate. "
            "The model does not fit this matrix: train one on it "
            "(diffsolve.linear.train_direction_model) or use method='cg'/'pcg'",
            DirectionFallbackWarning, stacklevel=4)
    converged = all(conv)
    if not converged:
        warnings.warn(
            f"{WHERE}(method='dcdm'): {what} did not reach rtol={rtol:g}, atol={atol:g} "
            f"within maxiter={maxiter} iterations; increase maxiter, loosen rtol, or use "
            "method='cg'/'direct'",
            ConvergenceWarning, stacklevel=4)
    return IterativeOutcome(x, max(iters), converged, model)
