"""Implicit differentiation of entropic optimal transport (shared backward of the entropic
solvers :func:`~diffsolve.ot.sinkhorn` and :func:`~diffsolve.ot.sinkhorn_newton_sparse`).

The potentials ``(f, g)`` solve the optimality conditions

    F(f, g; a, b, C) = (P 1 - a, P^T 1 - b) = 0,    P_ij = exp((f_i + g_j - C_ij) / eps),

whose Jacobian in ``(f, g)`` is the symmetric positive semidefinite matrix

    J = (1/eps) [[diag(P 1), P], [P^T, diag(P^T 1)]],

singular along the gauge direction ``v = (1, -1)`` (``(f + c, g - c)`` gives the same plan).
The solvers return the potentials in the gauge ``sum(f) = sum(g)``, i.e. ``(f, g)`` orthogonal
to ``v``; the derivative of that choice is the minimum-norm solution
``dz = -J^+ (dF/dtheta) dtheta`` (implicit function theorem on the quotient by ``v``), so the
vector-Jacobian product is

    lambda = J^+ zbar,     theta_bar = -(dF/dtheta)^T lambda,

with ``zbar`` the total cotangent of the potentials (the plan's cotangent enters through
``dP = P (df_i + dg_j - dC_ij) / eps``). ``J^+ zbar`` is computed on the Schur complement of
the smaller side: with ``m <= n``, eliminate ``f``

    S y = eps q - P^T D_r^{-1} eps p,    S = D_c - P^T D_r^{-1} P,    x = D_r^{-1}(eps p - P y),

``S`` is PSD with null vector ``1``; CG (:func:`diffsolve.krylov.cg`, all problems of a
batch at once) from zero with the Jacobi preconditioner ``D_c^{-1}``
(which turns ``S`` into ``I - K K^T`` with ``K`` the doubly normalised plan, whose spectrum
``1 - sigma_k^2`` is what governs Sinkhorn's own rate, so CG needs about the square root of
Sinkhorn's iteration count). Memory: the plan and O(n + m) vectors, independent of how many
iterations the forward solve took. Formulas: Cuturi, Teboul, Vert, "Differentiable ranks and
sorting using optimal transport" (NeurIPS 2019) section 3; Eisenberger et al., "A unified
framework for implicit Sinkhorn differentiation" (CVPR 2022), eqs. (7)-(11).

The cost's cotangent uses the envelope theorem (exact at the optimum):
``dW/dC = P``, ``dW/da = f``, ``dW/db = g`` for ``W = <C, P> + eps sum P (log P - 1)``.

Cotangents of ``(a, b)`` are defined up to ``(c 1, -c 1)`` (moving mass on both sides at
once): the function returns the minimum-norm representative, orthogonal to ``(1, -1)``.
The derivative with respect to an exactly-zero weight is not finite (the entropy has an
infinite slope at 0); those entries are returned as 0.
"""

from __future__ import annotations

import math
import warnings

from .. import krylov
from .._status import ConvergenceWarning, Status, caller_stacklevel

__all__ = ["entropic_potentials_vjp", "normalise_gauge"]


def _safe_inv(x, xp):
    pos = x > 0
    return xp.where(pos, 1 / xp.where(pos, x, xp.ones_like(x)), xp.zeros_like(x))


def _mv(P, v, xp):
    """``P @ v`` for batched ``P`` (B, n, m) and ``v`` (B, m)."""
    if P.shape[0] == 1:  # one BLAS gemv (the stacked product may take a slower loop)
        return (P[0, ...] @ v[0, ...])[None, ...]
    return xp.matmul(P, v[..., None])[..., 0]


def _mvT(P, v, xp):
    """``P^T @ v`` for batched ``P`` (B, n, m) and ``v`` (B, n), without transposing P."""
    if P.shape[0] == 1:
        return (v[0, ...] @ P[0, ...])[None, ...]
    return xp.matmul(v[..., None, :], P)[..., 0, :]


def normalise_gauge(f, g, a, b, xp):
    """Shift ``(f + c, g - c)`` so that ``sum(f) = sum(g)`` over the support of ``a``, ``b``.

    The plan is unchanged; this is the gauge in which :func:`entropic_potentials_vjp`
    differentiates the potentials, so every entropic solver returns its potentials this way.
    Entries with zero weight (potential ``-inf``) are left alone.

    Examples
    --------
    >>> import array_api_compat.numpy as xp
    >>> f, g = normalise_gauge(xp.asarray([1.0, 3.0]), xp.asarray([0.0]),
    ...                        xp.asarray([0.5, 0.5]), xp.asarray([1.0]), xp)
    >>> bool(abs(xp.sum(f) - xp.sum(g)) < 1e-12), float(f[1] - f[0])  # a shift only
    (True, 2.0)
    """
    ma, mb = a > 0, b > 0
    zf, zg = xp.zeros_like(f), xp.zeros_like(g)
    sf = xp.sum(xp.where(ma, f, zf), axis=-1, keepdims=True)
    sg = xp.sum(xp.where(mb, g, zg), axis=-1, keepdims=True)
    na = xp.sum(xp.astype(ma, f.dtype), axis=-1, keepdims=True)
    nb = xp.sum(xp.astype(mb, g.dtype), axis=-1, keepdims=True)
    c = (sg - sf) / (na + nb)
    return f + c, g - c


def _project_gauge(p, q, ma, mb, xp):
    """Remove the component along ``v = (1_support, -1_support)`` from ``(p, q)``."""
    dt = p.dtype
    fa, fb = xp.astype(ma, dt), xp.astype(mb, dt)
    t = (xp.sum(p * fa, axis=-1, keepdims=True) - xp.sum(q * fb, axis=-1, keepdims=True)) / (
        xp.sum(fa, axis=-1, keepdims=True) + xp.sum(fb, axis=-1, keepdims=True))
    return (p - t) * fa, (q + t) * fb


def _schur_solve(S, rhs, minv, scale, xp, rtol, maxiter):
    """``S_k y_k = rhs_k`` for every row ``k`` of ``rhs`` by one batched Jacobi-PCG of
    :func:`diffsolve.krylov.cg` (``batch_axis=0``; each system stops on its own).

    The stopping test is ``||rhs_k - S_k y_k|| <= rtol max(||rhs_k||, scale_k)`` on the true
    residual: the Schur right-hand side can be tiny by cancellation (e.g. a plan cotangent
    of all ones, whose exact gradient is ~0), so the residual is measured against the size
    of the full system's right-hand side ``scale_k``. Solving for ``rhs_k / scale_k`` turns
    that per-system threshold into krylov's ``max(rtol ||b||, atol)`` with ``atol = rtol``.
    Returns the :class:`~diffsolve.krylov.KrylovResult` with ``x`` scaled back.
    """
    pos = scale > 0
    s = xp.where(pos, scale, xp.ones_like(scale))
    res = krylov.cg(S, rhs / s, M=minv, rtol=rtol, atol=rtol, maxiter=maxiter, batch_axis=0)
    return res, res.x * s


def entropic_potentials_vjp(a, b, C, eps, f, g, plan, cot_plan, cot_f, cot_g, cot_cost, xp, *,
                            rtol=None, maxiter=None, where="diffsolve.ot"):
    """Vector-Jacobian product of the entropic OT solution with respect to ``(a, b, C)``.

    Parameters
    ----------
    a, b : arrays, shapes (..., n), (..., m)
        The marginals (as validated by :func:`~diffsolve.ot._errors.check_ot_inputs`).
    C : array, shape (..., n, m)
    eps : float
        The entropic regularisation.
    f, g : arrays, shapes (..., n), (..., m)
        The optimal potentials, in the gauge ``sum(f) = sum(g)`` (see :func:`normalise_gauge`).
        Zero weights may carry ``-inf`` potentials.
    plan : array, shape (..., n, m)
        ``exp((f_i + g_j - C_ij) / eps)``.
    cot_plan, cot_f, cot_g, cot_cost : arrays or None
        Cotangents of the outputs (``None`` = zero); ``cot_cost`` has shape ``(...)``.
    xp : namespace
    rtol : float, optional
        Relative tolerance of the CG solve on its true residual, measured against the
        size of the full system's right-hand side (default 1e-10 in float64, 1e-5 in
        float32).
    maxiter : int, optional
        CG iteration limit (default ``max(100, 4 * min(n, m))``).
    where : str
        Name used in the warning if CG stops early.

    Returns
    -------
    a_bar, b_bar, C_bar : arrays
        Shapes of the (broadcast) ``a``, ``b``, ``C``. ``(a_bar, b_bar)`` is the
        minimum-norm representative (orthogonal to ``(1, -1)``); zero-weight entries are 0.

    Notes
    -----
    Cost is one batched PCG solve (:func:`diffsolve.krylov.cg` with ``batch_axis=0``) on
    an ``min(n, m)``-sized Schur complement, two plan products per CG iteration, plus a few
    elementwise passes over the plan; the memory is that of the plan. If CG does not reach
    ``rtol`` a :class:`diffsolve.ConvergenceWarning` is raised (the gradient is then
    approximate); a non-finite plan or cotangent gives NaN gradients.

    Examples
    --------
    >>> import array_api_compat.numpy as xp
    >>> import numpy as np
    >>> from diffsolve.ot import sinkhorn
    >>> C = np.array([[0.0, 1.0], [1.0, 0.0]]); a = b = np.array([0.5, 0.5])
    >>> r = sinkhorn(a, b, C, 0.5)
    >>> a_bar, b_bar, C_bar = entropic_potentials_vjp(
    ...     a, b, C, 0.5, r.f, r.g, r.plan, None, None, None, np.float64(1.0), xp)
    >>> np.allclose(C_bar, r.plan)  # d cost / d C = plan (envelope theorem)
    True
    """
    dt = plan.dtype
    batch = tuple(plan.shape[:-2])
    n, m = int(plan.shape[-2]), int(plan.shape[-1])
    nb = math.prod(batch)
    P = xp.reshape(plan, (nb, n, m))

    def flat(x, tail):
        if x is None:
            return None
        return xp.reshape(xp.broadcast_to(xp.astype(x, dt, copy=False), batch + tail),
                          (nb, *tail))

    a2, b2 = flat(a, (n,)), flat(b, (m,))
    f2, g2 = flat(f, (n,)), flat(g, (m,))
    ma, mb = a2 > 0, b2 > 0
    zn, zm = xp.zeros((nb, n), dtype=dt, device=_dev(plan)), xp.zeros((nb, m), dtype=dt,
                                                                       device=_dev(plan))
    # total cotangent of the potentials: direct + through the plan
    p = zn if cot_f is None else xp.where(ma, flat(cot_f, (n,)), zn)
    q = zm if cot_g is None else xp.where(mb, flat(cot_g, (m,)), zm)
    # C_bar = P * coef, with coef gathered from the plan, potential and cost cotangents
    coef = None
    if cot_plan is not None and bool(xp.any(cot_plan != 0)):
        Wp = flat(cot_plan, (n, m))
        W = Wp * P
        p = p + xp.where(ma, xp.sum(W, axis=-1), zn) / eps
        q = q + xp.where(mb, xp.sum(W, axis=-2), zm) / eps
        del W
        coef = -Wp / eps
    a_bar, b_bar = zn, zm
    if bool(xp.any(p != 0)) or bool(xp.any(q != 0)):
        p, q = _project_gauge(p, q, ma, mb, xp)
        r = xp.sum(P, axis=-1)
        c = xp.sum(P, axis=-2)
        rinv, cinv = _safe_inv(r, xp), _safe_inv(c, xp)
        if rtol is None:
            rtol = 1e-10 if dt == xp.float64 else 1e-5
        if maxiter is None:
            maxiter = max(100, 4 * min(n, m))
        # the Schur right-hand side can be tiny by cancellation (e.g. a plan cotangent of
        # all ones, whose exact gradient is ~0): measure the residual against the size of
        # the full system's right-hand side, not of the cancelled one
        scale = eps * xp.sqrt(xp.sum(p * p, axis=-1, keepdims=True)
                              + xp.sum(q * q, axis=-1, keepdims=True))
        if m <= n:
            rhs = eps * q - _mvT(P, rinv * (eps * p), xp)

            def S(y):
                return c * y - _mvT(P, rinv * _mv(P, y, xp), xp)

            sol, y = _schur_solve(S, rhs, cinv, scale, xp, rtol, maxiter)
            x = rinv * (eps * p - _mv(P, y, xp))
        else:
            rhs = eps * p - _mv(P, cinv * (eps * q), xp)

            def S(x):
                return r * x - _mv(P, cinv * _mvT(P, x, xp), xp)

            sol, x = _schur_solve(S, rhs, rinv, scale, xp, rtol, maxiter)
            y = cinv * (eps * q - _mvT(P, x, xp))
        _warn_unless_converged(sol, rhs, where, xp)
        lam_f, lam_g = _project_gauge(x, y, ma, mb, xp)
        a_bar, b_bar = lam_f, lam_g
        lam = (lam_f[:, :, None] + lam_g[:, None, :]) / eps
        coef = lam if coef is None else coef + lam
    if cot_cost is not None and bool(xp.any(cot_cost != 0)):
        w = flat(cot_cost, ())
        a_bar = a_bar + xp.where(ma, w[:, None] * xp.where(ma, f2, zn), zn)
        b_bar = b_bar + xp.where(mb, w[:, None] * xp.where(mb, g2, zm), zm)
        coef = w[:, None, None] if coef is None else coef + w[:, None, None]
    if coef is None:
        C_bar = xp.zeros((nb, n, m), dtype=dt, device=_dev(plan))
    else:
        C_bar = P * coef
    a_bar, b_bar = _project_gauge(a_bar, b_bar, ma, mb, xp)
    return (xp.reshape(a_bar, (*batch, n)), xp.reshape(b_bar, (*batch, m)),
            xp.reshape(C_bar, (*batch, n, m)))


def _warn_unless_converged(sol, rhs, where, xp):
    """Warn once (at the user's line) when the Schur solve did not meet its tolerance.

    A non-finite right-hand side (a NaN plan or cotangent) gives NaN gradients by itself
    (krylov returns NaN ``x``); that is the answer, not a solver failure to warn about.
    """
    if sol.converged:
        return
    status = xp.asarray(sol.status)
    failed = (status != int(Status.SUCCESS)) & xp.all(xp.isfinite(rhs), axis=-1)
    if not bool(xp.any(failed)):
        return
    warnings.warn(
        f"{where}: the implicit-differentiation CG solve did not converge, so the gradient "
        f"is approximate ({sol.message}). The forward problem is badly conditioned (small "
        "eps): use a larger eps, or gradient='envelope' if only the cost is differentiated",
        ConvergenceWarning, stacklevel=caller_stacklevel())


def _dev(x):
    from .._backend import device

    return device(x)
