"""Conjugate gradients for symmetric positive definite systems, one or many right-hand sides.

Columns of a 2-D ``b`` are independent CG runs advanced together (one matrix product per
iteration for all of them); a column stops moving once it meets its tolerance. The vector
work of an iteration goes through :class:`VectorOps`: fused, in-place compiled kernels for
NumPy (Numba) and CuPy (CUDA), plain array-API expressions for any other namespace. On the
GPU the stopping and breakdown tests read one number from the device, so they run every
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


class VectorOps:
    """The vector operations of a CG iteration on ``(n, k)`` arrays.

    With compiled kernels (NumPy, CuPy) ``update`` and ``direction`` overwrite their first
    arguments; without (array_api_strict) they return new arrays. Callers always use the
    returned arrays, so the same algorithm serves both.
    """

    def __init__(self, xp, dtype, k, device):
        self.xp = xp
        self.device = device
        self.kernels = {name: B.get_kernel(xp, f"krylov.{name}") for name in
                        ("column_dots", "curvature_dots", "cg_update", "cg_direction",
                         "cg_step_size", "cg_next")}
        self.compiled = self.kernels["cg_update"] is not None
        self.dtype = dtype
        self.k = k

    def _out(self, shape, like):
        return self.xp.empty(shape, dtype=self.dtype, device=self.device)

    def copy(self, a):
        return B.contiguous_copy(self.xp, a)

    def column_dots(self, a, b):
        if self.compiled:
            return self.kernels["column_dots"](a, b, self._out((self.k,), a))
        return self.xp.sum(a * b, axis=0)

    def curvature(self, p, Ap):
        """Rows ``pᵀp``, ``pᵀAp``, ``||Ap||²`` per column, shape ``(3, k)``."""
        if self.compiled:
            return self.kernels["curvature_dots"](p, Ap, self._out((3, self.k), p))
        xp = self.xp
        return xp.stack([xp.sum(p * p, axis=0), xp.sum(p * Ap, axis=0),
                         xp.sum(Ap * Ap, axis=0)])

    def step_size(self, rz, curv, a_norm, active, bad, floor):
        """``(alpha, a_norm, bad)``: step lengths, ``||A||`` estimate, breakdown flags.

        ``a_norm`` grows to ``||Ap|| / ||p||``; an active column with
        ``pᵀAp <= floor·pᵀp·a_norm`` is flagged; ``alpha = rᵀz / pᵀAp`` where a column
        steps, 0 elsewhere.
        """
        if self.compiled:
            alpha = self.kernels["cg_step_size"](rz, curv, a_norm, active, bad, floor,
                                                 self._out((self.k,), rz))
            return alpha, a_norm, bad
        xp = self.xp
        pp, pAp, ApAp = curv[0, :], curv[1, :], curv[2, :]
        a_norm = xp.maximum(a_norm, xp.sqrt(ApAp / xp.where(pp > 0, pp, 1)))
        bad = bad | (active & (pAp <= floor * pp * a_norm))
        step = active & ~bad
        return xp.where(step, rz / xp.where(step, pAp, 1), 0), a_norm, bad

    def next(self, rz, rz_new, rr, tol, active, bad, column_iters):
        """``(beta, rz, active, column_iters)`` after an update (see ``cg_next``)."""
        if self.compiled:
            beta = self.kernels["cg_next"](rz, rz_new, rr, tol, active, bad, column_iters,
                                           self._out((self.k,), rz))
            return beta, rz, active, column_iters
        xp = self.xp
        step = active & ~bad
        beta = xp.where(step & (rz != 0), rz_new / xp.where(rz != 0, rz, 1), 0)
        rz = xp.where(step, rz_new, rz)
        column_iters = column_iters + xp.astype(step, xp.int64)
        active = step & (xp.sqrt(rr) > tol)
        return beta, rz, active, column_iters

    def update(self, x, r, p, Ap, alpha):
        """``x + alpha p``, ``r - alpha Ap`` and ``||r||²`` per column."""
        if self.compiled:
            rr = self.kernels["cg_update"](x, r, p, Ap, alpha, self._out((self.k,), r))
            return x, r, rr
        x = x + alpha * p
        r = r - alpha * Ap
        return x, r, self.xp.sum(r * r, axis=0)

    def direction(self, p, z, beta):
        """``z + beta p``."""
        if self.compiled:
            return self.kernels["cg_direction"](p, z, beta)
        return z + beta * p


def apply_preconditioner(M, r, vector: bool, xp):
    """``M r`` for a callable, a LinearOperator, a dense array or a sparse matrix.

    ``r`` is ``(n, k)``; when the user's right-hand side was a vector (``vector``), ``M``
    sees an ``(n,)`` vector as it would in SciPy. The result is C-contiguous ``(n, k)``,
    as the kernels need.
    """
    if M is None:
        return r
    rv = r[:, 0] if vector else r
    if B.is_linear_operator(M):
        z = M.matvec(rv) if vector else M.matmat(rv)
    elif callable(M):
        z = M(rv)
    else:
        z = M @ rv
    return B.contiguous(xp, z[:, None] if vector else z)


def conjugate_gradient(op, b, x0, tol, maxiter, M, callback, check_every, where):
    """Run CG on ``op x = b`` to ``||r|| <= tol`` (``tol`` per column); no validation here.

    ``b`` is ``(n,)`` or ``(n, k)``. Raises ``ValueError`` when a search direction has
    non-positive curvature ``pᵀAp <= n·eps·||p||²·||A||`` (``||A||`` estimated from the
    iterates), which happens for singular and indefinite matrices.
    """
    xp = op.xp
    vector = b.ndim == 1
    b2 = b[:, None] if vector else b
    tol = B.contiguous_copy(xp, xp.astype(xp.reshape(tol, (-1,)), b.dtype))
    dtype = b.dtype
    n, k = b2.shape
    device = B.device(b)
    ops = VectorOps(xp, dtype, k, device)
    eps = float(xp.finfo(dtype).eps)

    if x0 is None:
        x = xp.zeros((n, k), dtype=dtype, device=device)
        r = ops.copy(b2)
    else:
        x = ops.copy(xp.astype(xp.reshape(x0, (n, k)), dtype))
        r = ops.copy(b2 - op.matvec(x))
    z = apply_preconditioner(M, r, vector, xp)
    p = ops.copy(z)
    rz = ops.column_dots(r, z)
    rr = rz if M is None else ops.column_dots(r, r)
    active = xp.sqrt(rr) > tol
    column_iters = xp.zeros((k,), dtype=xp.int64, device=device)
    bad = xp.zeros((k,), dtype=xp.bool, device=device)
    a_norm = xp.zeros((k,), dtype=dtype, device=device)
    curvature_floor = op.n * eps
    it = 0
    while True:
        if it % check_every == 0 or it >= maxiter:
            if bool(xp.any(bad)):
                raise ValueError(
                    f"{where}: conjugate gradients met a direction with pᵀAp <= 0 at "
                    f"iteration {it}: A is singular or not positive definite. CG needs a "
                    "symmetric positive definite A; use method='direct' for other matrices"
                )
            if not bool(xp.any(active)) or it >= maxiter:
                break
        Ap = B.contiguous(xp, op.matvec(p))
        curv = ops.curvature(p, Ap)
        # the running estimate of ||A|| from ||Ap|| / ||p|| keeps the breakdown test
        # scale-free
        alpha, a_norm, bad = ops.step_size(rz, curv, a_norm, active, bad, curvature_floor)
        x, r, rr = ops.update(x, r, p, Ap, alpha)
        z = apply_preconditioner(M, r, vector, xp)
        rz_new = rr if M is None else ops.column_dots(r, z)
        beta, rz, active, column_iters = ops.next(rz, rz_new, rr, tol, active, bad,
                                                  column_iters)
        p = ops.direction(p, z, beta)
        it += 1
        if callback is not None:
            callback(x[:, 0] if vector else x)
    converged = not bool(xp.any(active))
    n_iters = int(xp.max(column_iters))
    return CGOutcome(x[:, 0] if vector else x, n_iters, converged, column_iters)
