"""Conjugate gradients for symmetric positive definite systems, one or many right-hand sides.

Columns of a 2-D ``b`` are independent CG runs advanced together (one matrix product per
iteration for all of them); a column stops moving once it meets its tolerance. On the GPU
the stopping and breakdown tests read one number from the device, so they run every
``check_every`` iterations; masking keeps finished columns fixed in between.

Reference: Hestenes & Stiefel (1952); the stopping rule ``||r|| <= max(rtol ||b||, atol)``
is SciPy's (``scipy.sparse.linalg.cg``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import _backend as B


@dataclass
class CGOutcome:
    x: object
    n_iters: int
    converged: bool
    column_iters: object


def apply_preconditioner(M, r):
    """``M r`` for a callable, a LinearOperator, a dense array or a sparse matrix."""
    if M is None:
        return r
    if B.is_linear_operator(M):
        return M.matvec(r) if r.ndim == 1 else M.matmat(r)
    if callable(M):
        return M(r)
    return M @ r


def conjugate_gradient(op, b, x0, tol, maxiter, M, callback, check_every, where):
    """Run CG on ``op x = b`` to ``||r|| <= tol`` (``tol`` per column); no validation here.

    Raises ``ValueError`` when a search direction has non-positive curvature
    ``pᵀAp <= n·eps·||p||²·||A||`` (``||A||`` estimated from the iterates), which happens
    for singular and indefinite matrices.
    """
    xp = op.xp
    dtype = b.dtype
    eps = float(xp.finfo(dtype).eps)
    x = xp.zeros_like(b) if x0 is None else xp.asarray(x0, dtype=dtype, copy=True)
    r = b - op.matvec(x) if x0 is not None else b
    z = apply_preconditioner(M, r)
    p = z
    rz = xp.sum(r * z, axis=0)
    active = xp.sqrt(xp.sum(r * r, axis=0)) > tol
    column_iters = xp.zeros(active.shape, dtype=xp.int64, device=B.device(b))
    bad = xp.zeros(active.shape, dtype=xp.bool, device=B.device(b))
    a_norm = xp.zeros(active.shape, dtype=dtype, device=B.device(b))
    curvature_floor = op.n * eps
    k = 0
    while True:
        if k % check_every == 0 or k >= maxiter:
            if bool(xp.any(bad)):
                raise ValueError(
                    f"{where}: conjugate gradients met a direction with pᵀAp <= 0 at "
                    f"iteration {k}: A is singular or not positive definite. CG needs a "
                    "symmetric positive definite A; use method='direct' for other matrices"
                )
            if not bool(xp.any(active)) or k >= maxiter:
                break
        Ap = op.matvec(p)
        pp = xp.sum(p * p, axis=0)
        pAp = xp.sum(p * Ap, axis=0)
        # running estimate of ||A|| from ||Ap|| / ||p|| keeps the breakdown test scale-free
        a_norm = xp.maximum(a_norm, xp.sqrt(xp.sum(Ap * Ap, axis=0) / xp.where(pp > 0, pp, 1)))
        bad = bad | (active & (pAp <= curvature_floor * pp * a_norm))
        step = active & ~bad
        alpha = xp.where(step, rz / xp.where(step, pAp, 1), 0)
        x = x + alpha * p
        r = r - alpha * Ap
        z = apply_preconditioner(M, r)
        rz_new = xp.sum(r * z, axis=0)
        beta = xp.where(step, rz_new / xp.where(step, rz, 1), 0)
        p = z + beta * p
        rz = xp.where(step, rz_new, rz)
        column_iters = column_iters + xp.astype(step, xp.int64)
        active = step & (xp.sqrt(xp.sum(r * r, axis=0)) > tol)
        k += 1
        if callback is not None:
            callback(x)
    converged = not bool(xp.any(active))
    n_iters = int(xp.max(column_iters)) if column_iters.ndim else int(column_iters)
    return CGOutcome(x, n_iters, converged, column_iters)
