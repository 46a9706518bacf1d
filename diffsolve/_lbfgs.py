"""L-BFGS on any array-API namespace, and the same interface around SciPy's L-BFGS-B.

:class:`LBFGSMemory` is the inverse-Hessian approximation alone (correction pairs and the
two-loop recursion), for callers that drive their own iteration (the projected
quasi-Newton x steps of :func:`diffsolve.bilevel.solve`).

The sparse/quadratic OT solvers maximise a concave dual with L-BFGS. On NumPy they use
SciPy's ``fmin_l_bfgs_b`` (Fortran, well tested); on CuPy and on any other array-API
namespace they use :func:`lbfgs` below, so that the iterate, the gradient and the history
stay on the device and only scalars (function values, inner products) reach the host.

Both minimise ``fun(x) -> (value, grad, done)``: ``value`` a Python float, ``grad`` an
array like ``x``, ``done`` a bool the caller computes from its own stopping rule (for OT,
the marginal violation at ``x``). The search stops at the first evaluated point with
``done`` true, so the returned point always satisfies the caller's rule when
``converged`` is true.

Algorithm (Nocedal & Wright, *Numerical Optimization*, 2nd ed.): the two-loop recursion
(Alg. 7.4) with the scaling ``H0 = sᵀy / yᵀy`` (eq. 7.20), memory ``memory`` pairs, pairs
with ``sᵀy <= 0`` skipped; a line search satisfying the strong Wolfe conditions
(Alg. 3.5 with the zoom of Alg. 3.6, cubic interpolation safeguarded to the inner 80 % of
the bracket), ``c1 = 1e-4``, ``c2 = 0.9``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["FTOL", "LBFGSMemory", "LBFGSOutcome", "lbfgs", "scipy_lbfgs"]

#: Relative objective reduction below which an iteration counts as no progress: the
#: smooth case is finished by the caller (Newton steps), and where the caller's rule can
#: never hold (a kink of a non-smooth objective) this ends the search.
FTOL = 1e-12
_C1 = 1e-4
_C2 = 0.9
_MAX_LINE_SEARCH = 30


@dataclass
class LBFGSOutcome:
    """Where an L-BFGS run stopped.

    ``status``: ``"done"`` (the caller's rule held at ``x``), ``"max_iter"``,
    ``"line_search"`` (no step satisfying the Wolfe conditions: typically the objective
    is flat to working precision), ``"stalled"`` (SciPy stopped on its own tests),
    ``"stopped"`` (the callback returned True).
    """

    x: Any
    value: float
    grad: Any
    n_iters: int
    n_evals: int
    status: str

    @property
    def done(self) -> bool:
        return self.status == "done"


class _Stopped(Exception):
    def __init__(self, x):
        super().__init__()
        self.x = x


class _Done(Exception):
    def __init__(self, x, value, grad):
        super().__init__()
        self.x, self.value, self.grad = x, value, grad


def _dot(xp, u, v) -> float:
    return float(xp.sum(u * v))


class LBFGSMemory:
    """The L-BFGS inverse-Hessian approximation: ``memory`` correction pairs ``(s, y)``.

    :meth:`apply` is the two-loop recursion (Nocedal & Wright, Alg. 7.4) with the initial
    scaling ``H0 = γ I``, ``γ = sᵀy / yᵀy`` of the newest pair (eq. 7.20); :meth:`update`
    skips pairs with ``sᵀy <= 0``, which would make the approximation indefinite.
    """

    def __init__(self, xp, memory: int = 10):
        self.xp, self.memory = xp, memory
        self.pairs: list = []  # (s, y, 1/sᵀy), oldest first
        self.gamma = 1.0

    def clear(self) -> None:
        self.pairs.clear()
        self.gamma = 1.0

    def update(self, s, y) -> bool:
        """Add the pair ``(s, y)``; returns whether it was kept (``sᵀy > 0``)."""
        sy = _dot(self.xp, s, y)
        if not (sy > 0 and math.isfinite(sy)):
            return False
        self.pairs.append((s, y, 1.0 / sy))
        if len(self.pairs) > self.memory:
            self.pairs.pop(0)
        self.gamma = sy / _dot(self.xp, y, y)
        return True

    def apply(self, g):
        """``H g``: the approximate inverse Hessian times ``g`` (``γ g`` without pairs)."""
        q = g
        alphas = []
        for s, y, rho in reversed(self.pairs):
            a_i = rho * _dot(self.xp, s, q)
            alphas.append(a_i)
            q = q - a_i * y
        r = self.gamma * q
        for (s, y, rho), a_i in zip(self.pairs, reversed(alphas)):
            r = r + (a_i - rho * _dot(self.xp, y, r)) * s
        return r


def _cubic_min(a, fa, da, b, fb, db):
    """Minimiser of the cubic through (a, fa, da), (b, fb, db), or None (N&W eq. 3.59)."""
    d1 = da + db - 3.0 * (fa - fb) / (a - b)
    disc = d1 * d1 - da * db
    if disc < 0 or not math.isfinite(disc):
        return None
    d2 = math.copysign(math.sqrt(disc), b - a)
    denom = db - da + 2.0 * d2
    if denom == 0:
        return None
    return b - (b - a) * (db + d2 - d1) / denom


def _line_search(phi, f0, d0, step):
    """Strong-Wolfe line search on phi(t) -> (value, slope, payload) (N&W Alg. 3.5/3.6).

    Returns (t, value, payload) or None when no acceptable step was found.
    """
    t_prev, f_prev, d_prev = 0.0, f0, d0
    t = step
    for i in range(_MAX_LINE_SEARCH):
        ft, dt, payload = phi(t)
        if not math.isfinite(ft) or ft > f0 + _C1 * t * d0 or (i > 0 and ft >= f_prev):
            return _zoom(phi, f0, d0, t_prev, f_prev, d_prev, t, ft, dt)
        if abs(dt) <= -_C2 * d0:
            return t, ft, payload
        if dt >= 0:
            return _zoom(phi, f0, d0, t, ft, dt, t_prev, f_prev, d_prev)
        t_prev, f_prev, d_prev = t, ft, dt
        t = 2.0 * t
    return None


def _zoom(phi, f0, d0, lo, f_lo, d_lo, hi, f_hi, d_hi):
    for _ in range(_MAX_LINE_SEARCH):
        left, right = min(lo, hi), max(lo, hi)
        width = right - left
        if width <= 1e-14 * max(1.0, right):
            return None
        t = None
        if math.isfinite(f_hi) and math.isfinite(d_hi):
            t = _cubic_min(lo, f_lo, d_lo, hi, f_hi, d_hi)
        if t is None or not (left + 0.1 * width <= t <= right - 0.1 * width):
            t = 0.5 * (lo + hi)
        ft, dt, payload = phi(t)
        if not math.isfinite(ft) or ft > f0 + _C1 * t * d0 or ft >= f_lo:
            hi, f_hi, d_hi = t, ft, dt
        else:
            if abs(dt) <= -_C2 * d0:
                return t, ft, payload
            if dt * (hi - lo) >= 0:
                hi, f_hi, d_hi = lo, f_lo, d_lo
            lo, f_lo, d_lo = t, ft, dt
    return None


def lbfgs(fun, x0, xp, *, max_iter: int, memory: int = 10,
          ftol: float = FTOL, callback=None) -> LBFGSOutcome:
    """Minimise ``fun(x) -> (value, grad, done)`` from ``x0`` with L-BFGS in namespace ``xp``.

    Parameters
    ----------
    fun : callable
        Returns the objective (float), its gradient (array of ``x``'s shape, dtype and
        device) and whether the caller's stopping rule holds at ``x``.
    x0 : array
        Starting point (not modified).
    xp : namespace
        The array namespace of ``x0``.
    max_iter : int
        Iteration limit (each iteration is one line search).
    memory : int
        Number of correction pairs kept.
    ftol : float
        Stop (status ``"stalled"``) after an iteration with
        ``f_old - f_new <= ftol * max(|f_old|, |f_new|, 1)`` (SciPy's ``factr`` test).
    callback : callable, optional
        ``callback(x, n_iters) -> bool`` after each iteration; ``True`` stops (status
        ``"stopped"``).

    Returns
    -------
    LBFGSOutcome

    Examples
    --------
    >>> import array_api_strict as xp
    >>> target = xp.asarray([1.0, -2.0, 3.0])
    >>> def fun(x):
    ...     r = x - target
    ...     g = r * xp.asarray([1.0, 10.0, 100.0])
    ...     return float(xp.sum(r * g)) / 2, g, float(xp.max(xp.abs(g))) < 1e-10
    >>> out = lbfgs(fun, xp.zeros(3), xp, max_iter=100, ftol=0.0)
    >>> out.status, bool(xp.max(xp.abs(out.x - target)) < 1e-10)
    ('done', True)
    """
    x = x0
    value, g, done = fun(x)
    n_evals = 1
    if done:
        return LBFGSOutcome(x, value, g, 0, n_evals, "done")
    mem = LBFGSMemory(xp, memory)
    for it in range(1, max_iter + 1):
        d = -mem.apply(g)
        slope = _dot(xp, g, d)
        if not slope < 0:
            # not a descent direction (rounding in the history): restart from steepest descent
            mem.clear()
            d = -g
            slope = -_dot(xp, g, g)
        if mem.pairs:
            step = 1.0
        else:
            # first step (or a restart): a unit step along -g has the gradient's scale
            gnorm = math.sqrt(max(-slope, 0.0))
            step = 1.0 / gnorm if gnorm > 1.0 else 1.0

        def phi(t, x=x, d=d):
            nonlocal n_evals
            xt = x + t * d
            ft, gt, done_t = fun(xt)
            n_evals += 1
            if done_t:
                raise _Done(xt, ft, gt)
            return ft, _dot(xp, gt, d), (xt, gt)

        try:
            found = _line_search(phi, value, slope, step)
        except _Done as stop:
            return LBFGSOutcome(stop.x, stop.value, stop.grad, it, n_evals, "done")
        if found is None:
            return LBFGSOutcome(x, value, g, it, n_evals, "line_search")
        _, value_new, (x_new, g_new) = found
        mem.update(x_new - x, g_new - g)
        reduction = value - value_new
        x, value_old, value, g = x_new, value, value_new, g_new
        if callback is not None and callback(x, it):
            return LBFGSOutcome(x, value, g, it, n_evals, "stopped")
        if reduction <= ftol * max(abs(value_old), abs(value), 1.0):
            return LBFGSOutcome(x, value, g, it, n_evals, "stalled")
    return LBFGSOutcome(x, value, g, max_iter, n_evals, "max_iter")


def scipy_lbfgs(fun, x0, *, max_iter: int, memory: int = 10,
                ftol: float = FTOL, callback=None) -> LBFGSOutcome:
    """The same contract as :func:`lbfgs`, with SciPy's ``fmin_l_bfgs_b`` (NumPy float64).

    SciPy's gradient test is off (``pgtol=0``) and its relative-reduction test is set to
    ``ftol`` (``factr = ftol / eps``), so that the caller's rule decides unless the
    objective has stopped moving (status ``"stalled"``).

    Examples
    --------
    >>> import numpy as np
    >>> def fun(x):
    ...     g = x - 3.0
    ...     return float(g @ g) / 2, g, float(np.abs(g).max()) < 1e-12
    >>> out = scipy_lbfgs(fun, np.zeros(2), max_iter=50)
    >>> out.status, out.x.tolist()
    ('done', [3.0, 3.0])
    """
    from scipy.optimize import fmin_l_bfgs_b  # SciPy is only needed on this (NumPy) path

    n_evals = 0
    n_iters = 0

    def count(xk):
        nonlocal n_iters
        n_iters += 1
        if callback is not None and callback(xk, n_iters):
            raise _Stopped(xk.copy())

    def wrapped(x):
        nonlocal n_evals
        value, grad, done = fun(x)
        n_evals += 1
        if done:
            raise _Done(x.copy(), value, grad)
        return value, grad

    try:
        x, value, info = fmin_l_bfgs_b(wrapped, x0, m=memory, factr=ftol / 2.220446049250313e-16,
                                       pgtol=0.0,
                                       maxiter=max_iter, maxfun=20 * max_iter + 20,
                                       callback=count)
    except _Done as stop:
        # stopped inside an iteration's line search: that iteration counts
        return LBFGSOutcome(stop.x, stop.value, stop.grad, n_iters + (n_evals > 1), n_evals,
                            "done")
    except _Stopped as stop:
        value, grad, _ = fun(stop.x)
        return LBFGSOutcome(stop.x, value, grad, n_iters, n_evals + 1, "stopped")
    status = "max_iter" if info["warnflag"] == 1 else "stalled"
    return LBFGSOutcome(x, float(value), info["grad"], int(info["nit"]), n_evals, status)
