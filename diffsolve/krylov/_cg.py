"""Conjugate gradients for symmetric positive definite systems, one or many at once.

The systems of a batch (the columns of the working ``(N, k)`` layout, see
:mod:`._common`) advance together: one product with ``A`` per iteration for all of them,
a system stops moving once it meets its tolerance. The vector work of an iteration goes
through :class:`VectorOps`: fused, in-place compiled kernels for NumPy (Numba) and CuPy
(CUDA), plain array-API expressions for any other namespace. On the GPU the stopping and
breakdown tests read one number from the device, so they run every ``check_every``
iterations; masking keeps finished systems fixed in between. NumPy with a CSR ``A``, one
system, no callback and no (or a diagonal) preconditioner runs the whole iteration in one
compiled call (``kernels/cpu/krylov.py::cg_solve_csr``) behind the same stopping rule.

Stopping rule (SciPy's): ``||b - A x|| <= max(rtol ||b||, atol)``. The recursive residual
of CG drifts from the true one in finite precision (Greenbaum, *Iterative Methods for
Solving Linear Systems*, SIAM 1997, ch. 7), so when the recursion says "converged" the
true residual is recomputed; if it does not meet the tolerance, CG restarts from it while
the budget lasts, and a restart that does not halve the true residual means the tolerance
is below what the precision resolves (``Status.BREAKDOWN``, "stagnated"). A search
direction with ``pᵀAp <= N·eps·||A||·||p||²`` (``||A||`` estimated from ``||Ap|| / ||p||``)
means A (or M) is not positive definite: ``Status.BREAKDOWN``. A residual that reaches
exactly zero is the lucky breakdown: converged.

Reference: Hestenes & Stiefel (1952); Saad, *Iterative Methods for Sparse Linear Systems*,
2nd ed., Algorithm 9.1 (preconditioned CG).
"""

from __future__ import annotations

import math

from .. import _backend as B
from .._status import Status
from .._typing import Array, Callback, Matrix
from ._common import (
    Layout,
    LinearMap,
    Preconditioner,
    _message,
    _safe_norms,
    _scale_columns,
    check_common,
    compiled,
    finish,
    safe_norms,
    unscale_columns,
    wants_stop,
)
from ._result import KrylovResult, KrylovState

__all__ = ["CURVATURE", "STAGNATED", "VectorOps", "cg", "solve_cg"]

WHERE = "diffsolve.krylov.cg"
#: a restart from the true residual must at least halve it, else CG has stagnated
STAGNATION_FACTOR = 0.5
#: the message of a curvature breakdown starts with this (callers may test for it)
CURVATURE = "a search direction had non-positive curvature pᵀAp <= 0"
STAGNATED = ("the true residual stagnated above the tolerance when CG restarted from it: "
             "the tolerance is below what this precision resolves for this A (about "
             "eps·cond(A)·||b||); loosen rtol/atol or use float64")


def _column_dots(xp, a, b):
    return xp.sum(a * b, axis=0)


def _curvature(xp, p, Ap):
    return xp.stack([xp.sum(p * p, axis=0), xp.sum(p * Ap, axis=0), xp.sum(Ap * Ap, axis=0)])


def _step_size(xp, rz, curv, a_norm, active, bad, floor):
    pp, pAp, ApAp = curv[0, :], curv[1, :], curv[2, :]
    a_norm = xp.maximum(a_norm, xp.sqrt(ApAp / xp.where(pp > 0, pp, 1)))
    bad = bad | (active & (pAp <= floor * pp * a_norm))
    step = active & ~bad
    return xp.where(step, rz / xp.where(step, pAp, 1), 0), a_norm, bad


def _next(xp, rz, rz_new, rr, tol, active, bad, column_iters):
    step = active & ~bad
    beta = xp.where(step & (rz != 0), rz_new / xp.where(rz != 0, rz, 1), 0)
    rz = xp.where(step, rz_new, rz)
    column_iters = column_iters + xp.astype(step, xp.int64)
    active = step & (xp.sqrt(rr) > tol)
    return beta, rz, active, column_iters


def _update(xp, x, r, p, Ap, alpha):
    x = x + alpha * p
    r = r - alpha * Ap
    return x, r, xp.sum(r * r, axis=0)


def _direction(xp, p, z, beta):
    return z + beta * p


class VectorOps:
    """The vector operations of a CG iteration on ``(n, k)`` arrays.

    With compiled kernels (NumPy, CuPy) ``update`` and ``direction`` overwrite their first
    arguments; without, they return new arrays (the array-API functions above, compiled
    by ``jax.jit`` for JAX arrays: :func:`._common.compiled`). Callers always use the
    returned arrays, so the same algorithm serves both.
    """

    def __init__(self, xp, dtype, k, device):
        self.xp = xp
        self.device = device
        self.kernels = {name: B.get_kernel(xp, f"krylov.{name}") for name in
                        ("column_dots", "curvature_dots", "cg_update", "cg_direction",
                         "cg_step_size", "cg_next")}
        self.compiled = self.kernels["cg_update"] is not None
        # the array-API twins, only where no kernel serves
        self.generic = {} if self.compiled else {
            fn.__name__: compiled(xp, fn) for fn in
            (_column_dots, _curvature, _step_size, _next, _update, _direction)}
        self.dtype = dtype
        self.k = k

    def _out(self, shape):
        return self.xp.empty(shape, dtype=self.dtype, device=self.device)

    def copy(self, a):
        return B.contiguous_copy(self.xp, a)

    def column_dots(self, a, b):
        if self.compiled:
            return self.kernels["column_dots"](a, b, self._out((self.k,)))
        return self.generic["_column_dots"](a, b)

    def curvature(self, p, Ap):
        """Rows ``pᵀp``, ``pᵀAp``, ``||Ap||²`` per column, shape ``(3, k)``."""
        if self.compiled:
            return self.kernels["curvature_dots"](p, Ap, self._out((3, self.k)))
        return self.generic["_curvature"](p, Ap)

    def step_size(self, rz, curv, a_norm, active, bad, floor):
        """``(alpha, a_norm, bad)``: step lengths, ``||A||`` estimate, breakdown flags.

        ``a_norm`` grows to ``||Ap|| / ||p||``; an active column with
        ``pᵀAp <= floor·pᵀp·a_norm`` is flagged; ``alpha = rᵀz / pᵀAp`` where a column
        steps, 0 elsewhere.
        """
        if self.compiled:
            alpha = self.kernels["cg_step_size"](rz, curv, a_norm, active, bad, floor,
                                                 self._out((self.k,)))
            return alpha, a_norm, bad
        return self.generic["_step_size"](rz, curv, a_norm, active, bad, floor)

    def next(self, rz, rz_new, rr, tol, active, bad, column_iters):
        """``(beta, rz, active, column_iters)`` after an update (see ``cg_next``)."""
        if self.compiled:
            beta = self.kernels["cg_next"](rz, rz_new, rr, tol, active, bad, column_iters,
                                           self._out((self.k,)))
            return beta, rz, active, column_iters
        return self.generic["_next"](rz, rz_new, rr, tol, active, bad, column_iters)

    def update(self, x, r, p, Ap, alpha):
        """``x + alpha p``, ``r - alpha Ap`` and ``||r||²`` per column."""
        if self.compiled:
            rr = self.kernels["cg_update"](x, r, p, Ap, alpha, self._out((self.k,)))
            return x, r, rr
        return self.generic["_update"](x, r, p, Ap, alpha)

    def direction(self, p, z, beta):
        """``z + beta p``."""
        if self.compiled:
            return self.kernels["cg_direction"](p, z, beta)
        return self.generic["_direction"](p, z, beta)


def cg(A: Matrix, b: Array, *, x0: Array | None = None, rtol: float | None = None,
       atol: float = 0.0, maxiter: int | None = None, M: Matrix | None = None,
       callback: Callback[KrylovState] | None = None, check_every: int | None = None,
       batch_axis: int | None = None) -> KrylovResult:
    """Conjugate gradients on ``A x = b`` for symmetric positive definite ``A``.

    Signature (stable): ``cg(A, b, *, x0=None, rtol=None, atol=0.0, maxiter=None, M=None,
    callback=None, check_every=None, batch_axis=None) -> KrylovResult``.

    Parameters
    ----------
    A : callable, LinearOperator, dense 2-D array or sparse matrix
        A callable ``v -> A v`` on arrays of b's shape (a batch included), or a matrix
        (then ``b`` is ``(n,)``, or ``(n, k)`` with ``batch_axis=1``). Must be symmetric
        positive definite (not checked; a direction of non-positive curvature is reported
        as ``Status.BREAKDOWN``).
    b : array
        Right-hand side, any shape (float32 or float64; integers promote to float64).
    x0 : array, optional
        Initial guess of b's shape (default zero).
    rtol : float, optional
        Default ``1e-8`` in float64 and ``64 eps`` (7.6e-6) in float32, where rounding
        keeps the residual above ``1e-8`` (``diffsolve._tolerance``).
    atol : float
        With ``rtol``: stop when the true residual ``||b - A x|| <= max(rtol ||b||, atol)``
        (per system).
        ``rtol = atol = 0`` runs exactly ``maxiter`` iterations (``MAX_ITERATIONS``,
        unless the residual reaches exactly zero).
    maxiter : int, optional
        Iteration budget (default ``10 N``, ``N`` unknowns per system).
    M : callable, LinearOperator, sparse matrix or array, optional
        Symmetric positive definite preconditioner approximating ``A⁻¹``: a callable
        ``r -> M r`` on arrays of b's shape, or an array broadcastable to b's shape that
        multiplies elementwise (a diagonal preconditioner, e.g. ``1 / diag(A)``).
    callback : callable, optional
        ``callback(state)`` after every iteration with a :class:`KrylovState`
        ``(n_iters, x, residual_norm)``; returning ``True`` stops the solve with
        ``Status.STOPPED``.
    check_every : int, optional
        Iterations between convergence tests (each reads one number from the device);
        default 1, and 8 on CuPy.
    batch_axis : int, optional
        The axis of ``b`` that indexes independent systems sharing the product ``A``
        (e.g. ``1`` for the columns of an ``(n, k)`` right-hand side, ``0`` for the rows
        of a ``(B, n)`` batch of different systems). ``None``: ``b`` is one system.

    Returns
    -------
    KrylovResult
        ``x``, ``status``, ``converged`` (true residual), ``n_iters``, ``residual_norm``,
        ``message``. Failures are returned, never warned about or raised: the caller
        reads ``status`` (and reports it with ``diffsolve._status.report``).

    Raises
    ------
    ValueError, TypeError
        Bad input: a wrong shape or dtype, an unknown option value, an option out of range,
        arrays from two libraries. The message names the argument, what was received and
        what would work.

    See Also
    --------
    diffsolve.krylov.minres : Symmetric indefinite systems.
    diffsolve.krylov.gmres : Nonsymmetric systems.
    diffsolve.linear.solve : The differentiable front end (``method="cg"`` / ``"pcg"``).

    Notes
    -----
    Each system is solved for ``b / s``, ``s`` a power of two near ``max|b|``, so
    ``||b||²`` never overflows. NaN or inf in ``b`` or ``x0`` (or appearing in the
    iterates) gives ``Status.NONFINITE`` and NaN ``x``. A zero right-hand side returns
    ``x = 0`` in 0 iterations.

    Examples
    --------
    >>> import numpy as np
    >>> from diffsolve.krylov import cg
    >>> A = np.array([[4.0, 1.0], [1.0, 3.0]])
    >>> res = cg(A, np.array([1.0, 2.0]))
    >>> res.converged, np.allclose(A @ res.x, [1.0, 2.0]), res.status.name
    (True, True, 'SUCCESS')
    """
    return solve_cg(A, b, x0=x0, rtol=rtol, atol=atol, maxiter=maxiter, M=M,
                    callback=callback, check_every=check_every, batch_axis=batch_axis,
                    where=WHERE)


def solve_cg(A: Matrix, b: Array, *, x0: Array | None = None, rtol: float | None = None,
             atol: float = 0.0, maxiter: int | None = None, M: Matrix | None = None,
             callback: Callback[KrylovState] | None = None, check_every: int | None = None,
             batch_axis: int | None = None, where: str = WHERE) -> KrylovResult:
    """:func:`cg` with the caller's name in error messages (``where``)."""
    xp, b, x0, rtol, atol, maxiter, callback, check_every, batch_axis = check_common(
        where, b, x0, rtol, atol, maxiter, callback, check_every, batch_axis=batch_axis)
    plan = CGPlan(A, M, xp, b.shape, b.dtype, batch_axis, where)
    return plan.run(b, x0, rtol, atol, maxiter, callback, check_every)


class CGPlan:
    """The set-up of :func:`solve_cg` for one ``A`` and ``M`` and right-hand sides of one
    shape and dtype: the operator and preconditioner wrappers, the rescaling of extreme
    entries and the compiled loop's CSR form, made once and run for many ``b``
    (:func:`diffsolve.linear.prepare` keeps one per shape)."""

    def __init__(self, A, M, xp, shape, dtype, batch_axis, where: str):
        self.layout = Layout(xp, shape, batch_axis)
        self.op = LinearMap(A, xp, self.layout, where)
        self.prec = Preconditioner(M, xp, self.layout, dtype, where)
        self.a = self.op.rescale_extreme(dtype)
        self.prec.rescale(self.a)

    def run(self, b, x0, rtol, atol, maxiter, callback, check_every) -> KrylovResult:
        """CG on arguments :func:`check_common` has validated (``b`` of the plan's shape
        and dtype, ``x0`` in that dtype or None, ``check_every`` an int)."""
        maxiter = 10 * self.layout.N if maxiter is None else maxiter
        return _run(self.op, self.prec, self.layout, b, x0, rtol, atol, maxiter, callback,
                    check_every, self.a)


def _compiled_kernel(op, prec, layout, b, callback):
    """The one-call CSR CG kernel where it applies (NumPy, CSR A of b's dtype, one
    system, no callback, no or a diagonal preconditioner), else ``None``."""
    xp = layout.xp
    if not (B.is_numpy(xp) and op.kind == "sparse" and layout.k == 1 and callback is None
            and prec.map is None and op.csr.dtype == b.dtype):
        return None
    return B.get_kernel(xp, "krylov.cg_solve_csr")


def _host_norm(xp, v):
    """:func:`safe_norms` of one NumPy vector, as a scalar of its dtype (the same
    arithmetic, so the same rounding)."""
    m = abs(v).max()
    if not (math.isfinite(m) and m > 0):
        return m  # 0, inf or NaN, as safe_norms says
    w = v / m
    return xp.sqrt((w * w).sum()) * m


_LIMITS: dict = {}


def _limits(xp, dtype) -> tuple[float, float, float]:
    """``(eps, max, smallest_normal)`` of a floating dtype as Python floats (``finfo``
    costs microseconds a call; the small-system fast path below reads it every solve)."""
    out = _LIMITS.get(dtype)
    if out is None:
        info = xp.finfo(dtype)
        out = _LIMITS[dtype] = (float(info.eps), float(info.max), float(info.smallest_normal))
    return out


def _run_host_vector(op, prec, layout, b, rtol, atol, maxiter, kernel):
    """:func:`_run` for its most common call — a NumPy vector ``b``, a CSR ``A`` for the
    compiled loop, no ``x0``, ``a = 1`` — with scalars instead of one-column arrays.

    The same arithmetic (in ``b``'s dtype), restarts and verdict as the general path,
    whose ~40 small array operations cost as much as the compiled loop itself on a
    system of a few hundred unknowns. Returns the :class:`KrylovResult` of a converged
    solve, or ``None`` to hand every other outcome (non-finite or zero ``b``, no
    convergence, an ``x`` that over- or underflows when unscaled) to the general path,
    which reports it.
    """
    xp = layout.xp
    if not b.shape[0]:
        return None
    m = abs(b).max()
    if not (math.isfinite(m) and m > 0):
        return None
    dtype = b.dtype
    s = dtype.type(2.0 ** math.floor(math.log2(m)))
    bs = b / s
    tol = max(rtol * _host_norm(xp, bs), dtype.type(atol) / s)
    eps, largest, tiny = _limits(xp, dtype)
    floor = layout.N * eps
    inv_diag = None if prec.elementwise is None else B.contiguous(xp, prec.elementwise[:, 0])
    csr = op.csr
    y = bs * 0
    total, prev = 0, math.inf
    while True:
        its, code = kernel(csr.indptr, csr.indices, csr.data, bs, y, inv_diag, float(tol),
                           maxiter - total, floor)
        total += its
        # the verdict reads the true residual, never the recursive one
        true = _host_norm(xp, bs - op(y[:, None])[:, 0])
        if true <= tol:
            break
        if code == 2 or not math.isfinite(true) or total >= maxiter or \
                (not (rtol == 0 and atol == 0) and true > STAGNATION_FACTOR * prev):
            return None  # breakdown, non-finite, budget, stagnation: the general path
        prev = true
    ymax = float(abs(y).max())
    if ymax > 0 and (math.log2(ymax) + math.log2(s) >= math.log2(largest)
                     or bool(((y != 0) & (abs(y * s) < tiny)).any())):
        return None  # x overflows or loses bits as a subnormal when unscaled
    residual = float(true * s)
    message = _message("cg", Status.SUCCESS, [int(Status.SUCCESS)], total, [residual],
                       [float(tol * s)], rtol, atol, maxiter, layout, None)
    return KrylovResult(x=y * s, status=Status.SUCCESS, converged=True, n_iters=total,
                        residual_norm=residual, message=message)


def _run(op, prec, layout, b, x0, rtol, atol, maxiter, callback, check_every, a=1.0):
    """CG on ``(A / a) y = b / s`` (``a = 1`` unless A's entries are extreme), ``x = y s / a``:
    the residual of the scaled system is the original one divided by ``s``, so the
    tolerances and the verdict do not change with ``a``."""
    xp = layout.xp
    if x0 is None and a == 1.0 and len(layout.shape) == 1:
        kernel = _compiled_kernel(op, prec, layout, b, callback)
        if kernel is not None:
            out = _run_host_vector(op, prec, layout, b, rtol, atol, maxiter, kernel)
            if out is not None:
                return out
    dtype = b.dtype
    k = layout.k
    device = B.device(b)
    Bw = layout.to_work(b)
    W0 = None if x0 is None else layout.to_work(x0)
    (s, finite, Bs, Y, excluded, tol, column_iters, a_norm, bad, stagnated,
     prev_true) = compiled(xp, _start, static=("a",))(Bw, W0, rtol, atol, a=a)
    fixed_budget = rtol == 0 and atol == 0
    ops = VectorOps(xp, dtype, k, device)
    floor = layout.N * float(xp.finfo(dtype).eps)
    kernel = _compiled_kernel(op, prec, layout, b, callback)
    total = 0
    stopped = False
    R = Bs - op(Y) if x0 is not None else ops.copy(Bs)
    R = B.contiguous_copy(xp, R)
    while True:
        if kernel is not None:
            y = B.contiguous_copy(xp, Y[:, 0])
            inv_diag = None if prec.elementwise is None else \
                B.contiguous(xp, prec.elementwise[:, 0])
            its, code = kernel(op.csr.indptr, op.csr.indices, op.csr.data,
                               B.contiguous(xp, Bs[:, 0]), y, inv_diag, float(tol[0]),
                               maxiter - total, floor)
            Y = B.contiguous(xp, y[:, None])
            total += its
            column_iters = column_iters + its
            bad = bad | (code == 2)
        else:
            Y, column_iters, a_norm, bad, total, stopped = _iterate(
                op, prec, layout, ops, Bs, Y, R, tol, excluded | stagnated, bad, a_norm,
                column_iters, total, maxiter, floor, s, callback, check_every, a)
        # the verdict reads the true residual, never the recursive one
        R, true, ok, nonfinite, need = compiled(xp, _verdict)(
            Bs, op(Y), tol, bad, excluded, stagnated)
        R = B.contiguous(xp, R)
        if stopped or total >= maxiter or not bool(xp.any(need)):
            break
        if not fixed_budget:
            stagnated = stagnated | (need & (true > STAGNATION_FACTOR * prev_true))
            need = need & ~stagnated
            if not bool(xp.any(need)):
                break
        prev_true = xp.where(need, true, prev_true)
        # columns that met their tolerance stay put (their recursive residual is the
        # true one, below tol); the others restart from the true residual

    status = compiled(xp, _statuses, static=("stopped",))(ok, stagnated, bad, nonfinite,
                                                          finite, stopped=stopped)
    details = []
    if bool(xp.any(bad & ~ok)):
        details.append(CURVATURE + ", so A (or M) is singular, indefinite or not "
                       "symmetric; CG needs symmetric positive definite A and M")
    if bool(xp.any(stagnated & ~ok)):
        details.append(STAGNATED)
    n_iters = int(xp.max(column_iters)) if k else 0
    Bu = xp.where(finite[None, :], Bw, xp.zeros_like(Bw))
    return finish(xp, layout, method="cg", Y=Y, s=s, true_norm=true, tol=tol,
                  status=status, n_iters=n_iters, column_iters=column_iters, rtol=rtol,
                  atol=atol, maxiter=maxiter, detail="; ".join(details) or None,
                  residual_of=lambda X: safe_norms(xp, Bu - a * op(B.contiguous(xp, X))),
                  a_scale=a)


def _start(xp, Bw, W0, rtol, atol, a=1.0):
    """The scaled system of :func:`_run` and its iteration state before the first step:
    ``(s, finite, Bs, Y, excluded, tol, column_iters, a_norm, bad, stagnated,
    prev_true)``."""
    dtype = Bw.dtype
    s, finite = _scale_columns(xp, Bw)
    zero_b = finite & (xp.max(xp.abs(Bw), axis=0) == 0)
    Bs = B.contiguous_copy(xp, xp.where(finite[None, :], Bw / s[None, :],
                                        xp.zeros_like(Bw)))
    if W0 is not None:
        # x0 * a / s, in the order that keeps the intermediate within |x0| or the result
        X0 = (W0 * a) / s[None, :] if a < 1.0 else (W0 / s[None, :]) * a
        finite = finite & xp.all(xp.isfinite(X0), axis=0)
        Y = B.contiguous_copy(xp, xp.where((finite & ~zero_b)[None, :], X0,
                                           xp.zeros_like(X0)))
    else:
        Y = xp.zeros_like(Bw)
    excluded = ~finite | zero_b
    b_norm = _safe_norms(xp, Bs)
    tol = B.contiguous_copy(xp, xp.astype(xp.maximum(rtol * b_norm, atol / s), dtype))
    column_iters = xp.zeros(s.shape, dtype=xp.int64, device=B.device(s))
    a_norm = xp.zeros_like(s)
    # separate arrays: the compiled kernels update bad (and a_norm) in place
    bad = xp.zeros(s.shape, dtype=xp.bool, device=B.device(s))
    stagnated = xp.zeros(s.shape, dtype=xp.bool, device=B.device(s))
    return (s, finite, Bs, Y, excluded, tol, column_iters, a_norm, bad, stagnated,
            xp.full_like(s, math.inf))


def _verdict(xp, Bs, AY, tol, bad, excluded, stagnated):
    """``(R, ‖R‖, ok, nonfinite, need)`` for the true residual ``R = Bs − A Y``."""
    R = Bs - AY
    true = _safe_norms(xp, R)
    ok = true <= tol
    nonfinite = ~xp.isfinite(true)
    return R, true, ok, nonfinite, ~ok & ~nonfinite & ~bad & ~excluded & ~stagnated


def _statuses(xp, ok, stagnated, bad, nonfinite, finite, stopped=False):
    status = xp.full(ok.shape, int(Status.MAX_ITERATIONS), dtype=xp.int64,
                     device=B.device(ok))
    if stopped:
        status = xp.where(~ok, xp.full_like(status, int(Status.STOPPED)), status)
    status = xp.where(stagnated | bad, xp.full_like(status, int(Status.BREAKDOWN)), status)
    status = xp.where(ok, xp.full_like(status, int(Status.SUCCESS)), status)
    return xp.where(nonfinite | ~finite, xp.full_like(status, int(Status.NONFINITE)), status)


def _iterate(op, prec, layout, ops, Bs, Y, R, tol, excluded, bad, a_norm, column_iters,
             total, maxiter, floor, s, callback, check_every, a=1.0):
    """CG from ``(Y, R)`` (``R`` the true residual) until every column stops or the
    budget ends. Returns ``(Y, column_iters, a_norm, bad, total, stopped)``."""
    xp = layout.xp
    Z = B.contiguous(xp, prec(R))
    P = ops.copy(Z)
    rz = ops.column_dots(R, Z)
    rr = rz if prec.identity else ops.column_dots(R, R)
    active = (xp.sqrt(rr) > tol) & ~excluded & ~bad
    start = total
    while True:
        if (total - start) % check_every == 0 or total >= maxiter:
            if not bool(xp.any(active)) or total >= maxiter:
                break
        Ap = op(P)
        curv = ops.curvature(P, Ap)
        # the running estimate of ||A|| from ||Ap|| / ||p|| keeps the breakdown test
        # scale-free
        alpha, a_norm, bad = ops.step_size(rz, curv, a_norm, active, bad, floor)
        Y, R, rr = ops.update(Y, R, P, Ap, alpha)
        Z = B.contiguous(xp, prec(R))
        rz_new = rr if prec.identity else ops.column_dots(R, Z)
        beta, rz, active, column_iters = ops.next(rz, rz_new, rr, tol, active, bad,
                                                  column_iters)
        P = ops.direction(P, Z, beta)
        total += 1
        if callback is not None:
            x_now, _ = unscale_columns(xp, Y, s, a=a)
            state = KrylovState(n_iters=total, x=layout.to_user(x_now),
                                residual_norm=layout.per_system(xp.sqrt(rr) * s))
            if wants_stop(callback(state)):
                return Y, column_iters, a_norm, bad, total, True
    return Y, column_iters, a_norm, bad, total, False
