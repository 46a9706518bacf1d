"""Sparsity-constrained and quadratically regularised optimal transport, with implicit
gradients.

Liu, Puigcerver & Blondel, "Sparsity-Constrained Optimal Transport", ICLR 2023. The primal
problem is

    min_{T >= 0, T 1 = a, T^T 1 = b}  <T, C> + sum_j (gamma / 2) ||t_j||^2
    subject to  ||t_j||_0 <= k  for every column t_j,

so every column of the plan (every "expert", every target point) receives mass from at
most ``k`` rows. It is solved through one of two smooth concave maximisations:

* dual: ``max_{alpha, beta} alpha^T a + beta^T b - sum_j delta(alpha + beta_j - c_j)``,
  ``delta(z) = (1 / 2 gamma) sum_{i in top-k(z)} [z_i]_+^2``, plan column
  ``t_j = grad delta(z_j) = [z_j]_+ / gamma`` on the top-k entries of ``z_j``;
* semi-dual: ``max_alpha alpha^T a - sum_j b_j m_j(alpha - c_j)`` with
  ``m_j(x) = max_{y in simplex, ||y||_0 <= k} x^T y - (gamma b_j / 2) ||y||^2``, whose
  maximiser is the k-sparse simplex projection ``y* = P_k(x / (gamma b_j))`` (keep the
  top-k entries, project them onto the simplex); plan column ``t_j = b_j y*``.

Both are maximised with L-BFGS (SciPy's on NumPy, :mod:`diffsolve._lbfgs` elsewhere); once the
marginals hold to 1e-3, Newton steps on the plan's support finish the solve (the gradient
is piecewise linear, so the right support gives the optimum in one step), which L-BFGS's
function-value line search cannot do below ~1e-7. ``k >= n`` is quadratically
regularised OT (:func:`quadratic_ot`).

Gradients: implicit differentiation of the dual optimality conditions (``T 1 = a`` for the
semi-dual, ``T 1 = a, T^T 1 = b`` for the dual), with the Jacobian of the sparse simplex
projection on its support ``S`` (``diag(s) - s s^T / |S|``) and of ``[.]_+`` on the top-k
set (``diag(s)``). Its matrix is a (weighted) graph Laplacian of the plan's support,
singular along the shift of the potentials of every connected component of the support
graph. The components are labelled, the right-hand side's components along those shifts
are projected out (for the global shift it has none: the outputs are shift-invariant once
the gauge ``mean(f) = 0`` is fixed; the other component shifts are not determined by the
problem), and the consistent system is solved matrix-free by Jacobi-preconditioned MINRES
(:func:`diffsolve.krylov.minres`): the least-squares solution, whose status the backward
reads (a failed solve warns). The Newton polish solves the same systems.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import array_api_extra as xpx

from .. import _backend as B
from .. import _validate as V
from .. import krylov
from .._autodiff import custom_vjp
from .._lbfgs import FTOL, lbfgs, scipy_lbfgs
from .._status import ConvergenceWarning, Status, caller_stacklevel, report
from .._typing import Array, ArrayLike, Callback
from ._errors import check_arrays, check_ot_inputs
from ._options import legacy_options
from ._result import OTResult, OTState

__all__ = ["QuadraticOTResult", "SparseOTResult", "SparseOTSettings", "quadratic_ot", "sparse_ot"]

WHERE_SPARSE = "diffsolve.ot.sparse_ot"
WHERE_QUADRATIC = "diffsolve.ot.quadratic_ot"
FORMULATIONS = ("semi-dual", "dual")
_SWITCH = 1e-3  # relative marginal error at which L-BFGS hands over to the Newton polish
_POLISH_HALVINGS = 10  # a Newton step whose support changes may need a short step
_FTOL_FINE = 2.2e-15  # phase 2 (k does not bind): SciPy factr = 10, rounding level
_KINK_RESTARTS = 50  # k binds: L-BFGS restarts at the kink until the value stops improving
_KINK_FTOL = 1e-15  # ... by more than this (relative)
_KERNEL_MAX_K = 48  # = the insertion-selection limit of kernels/cpu/ot_sparse.py
SOLVERS = ("lbfgs", "lbfgs-scipy", "lbfgs-xp")


@dataclass(frozen=True)
class SparseOTResult(OTResult):
    """Result of :func:`sparse_ot` and :func:`quadratic_ot`.

    On top of :class:`~diffsolve.ot.OTResult` (``plan``, ``f``, ``g``, ``cost``,
    ``n_iters``, ``converged``, ``error``, ``status``, ``tolerance``, ``message``,
    ``error_measure="l1"``):

    Attributes
    ----------
    plan_indices : int array, shape (..., m, k)
        The plan in sparse form, column by column: ``plan_indices[j]`` are the rows of the
        (at most ``k``) entries of column ``j`` that may be nonzero, largest first.
    plan_values : array, shape (..., m, k)
        ``plan[plan_indices[j, r], j]`` (some may be exactly 0: the projection can keep
        fewer than ``k`` entries). Not differentiable: differentiate ``plan``.
    dual_value : array, shape (...)
        The maximised objective (the semi-dual or dual value) at the solution; equal to
        ``cost``, kept under its old name.
    primal_cost : array, shape (...)
        ``<T, C> + sum_j (gamma/2) ||t_j||^2`` of the returned plan (not differentiable).
        ``primal_cost - cost`` is the duality gap: 0 to the tolerance when the constraint
        does not bind; where it binds the plan misses the marginals slightly and the
        difference can have either sign.
    binding : bool or array of bool, shape (...)
        Whether the sparsity constraint binds (some column would have more than ``k``
        nonzeros without it). Then the (semi-)dual optimum is a kink: the plan is one
        top-k selection there, it misses the marginals by a violation that belongs to the
        relaxation (POT's plans show the same), and the status is ``INFEASIBLE`` unless
        the marginals hold to the tolerance anyway.
    formulation : str
        ``"semi-dual"`` or ``"dual"``.
    k : int
        The sparsity level used (``min(k, n)``).
    gamma : float
        The regularisation strength.

    See Also
    --------
    diffsolve.ot.sparse_ot : Returns this.
    diffsolve.ot.OTResult : The fields shared with Sinkhorn.

    Examples
    --------
    >>> import numpy as np
    >>> import diffsolve as ds
    >>> x = np.linspace(0, 1, 5)
    >>> C = (x[:, None] - x[None, :]) ** 2
    >>> a = b = np.full(5, 0.2)
    >>> res = ds.ot.sparse_ot(a, b, C, k=2, gamma=0.1)
    >>> res.plan_indices.shape, res.plan_values.shape
    ((5, 2), (5, 2))
    """

    plan_indices: Any = None
    plan_values: Any = None
    dual_value: Any = None
    primal_cost: Any = None
    binding: Any = False
    formulation: str = "semi-dual"
    k: int = 0
    gamma: float = 0.0

    differentiable_fields: ClassVar[tuple[str, ...]] = ("plan", "f", "g", "cost")
    solver_name: ClassVar[str] = WHERE_SPARSE
    advice: ClassVar[str] = ("increase maxiter, increase gamma (a smoother dual), loosen "
                             "rtol/atol, or try the other formulation")


@dataclass(frozen=True)
class QuadraticOTResult(SparseOTResult):
    """Result of :func:`quadratic_ot`: a :class:`SparseOTResult` with ``k = n``.

    Attributes
    ----------
    plan, f, g, cost, plan_indices, plan_values, dual_value
        As :class:`SparseOTResult` (every field of it, with ``k = n``).

    See Also
    --------
    diffsolve.ot.quadratic_ot : Returns this.
    diffsolve.ot.SparseOTResult : The fields.

    Examples
    --------
    >>> import numpy as np
    >>> import diffsolve as ds
    >>> x = np.linspace(0, 1, 5)
    >>> C = (x[:, None] - x[None, :]) ** 2
    >>> a = b = np.full(5, 0.2)
    >>> res = ds.ot.quadratic_ot(a, b, C, gamma=0.1)
    >>> type(res).__name__, res.status.name
    ('QuadraticOTResult', 'SUCCESS')
    """

    solver_name: ClassVar[str] = WHERE_QUADRATIC
    advice: ClassVar[str] = ("increase maxiter, increase gamma (a smoother dual), loosen "
                             "rtol/atol, or try the other formulation")


@dataclass(frozen=True)
class SparseOTSettings:
    """The options of one :func:`sparse_ot` / :func:`quadratic_ot` call, validated once.

    Attributes
    ----------
    k, gamma, formulation, rtol, atol, maxiter, solver, throw, callback
        The arguments of the same names of :func:`diffsolve.ot.sparse_ot`, validated (a frozen
        dataclass: read it, do not build it).

    See Also
    --------
    diffsolve.ot.sparse_ot : The function whose options these are.

    Examples
    --------
    >>> import dataclasses
    >>> import diffsolve as ds
    >>> "rtol" in {f.name for f in dataclasses.fields(ds.ot.SparseOTSettings)}
    True
    """

    k: int | None
    gamma: float
    formulation: str
    rtol: float | None
    atol: float
    maxiter: int
    solver: str
    throw: bool
    callback: Any

    @property
    def fixed_budget(self) -> bool:
        """``rtol = atol = 0``: no stop on the marginal error."""
        return self.rtol == 0 and self.atol == 0


# ---------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------
def _settings(where, fn, k, gamma, *, formulation, rtol, atol, maxiter, solver, throw,
              callback, deprecated, quiet=False) -> SparseOTSettings:
    o = legacy_options(where, fn, deprecated, {"rtol": rtol, "atol": atol,
                                               "maxiter": maxiter},
                       tol_is="rtol", quiet=quiet)
    if k is not None:
        k = V.positive_int(where, "k", k)
    try:
        gamma = V.positive_real(where, "gamma", gamma)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{err}; gamma is the weight of (gamma/2)||t_j||^2 in cost units, "
                        "e.g. gamma=0.1 * C.max()") from None
    return SparseOTSettings(
        k=k, gamma=gamma,
        formulation=V.choice(where, "formulation", formulation, FORMULATIONS),
        rtol=V.nonnegative_real(where, "rtol", o["rtol"], allow_none=True),
        atol=V.nonnegative_real(where, "atol", o["atol"]),
        maxiter=V.positive_int(where, "maxiter", o["maxiter"]),
        solver=V.choice(where, "solver", solver, SOLVERS),
        throw=V.boolean(where, "throw", throw),
        callback=V.callback(where, callback),
    )


# ---------------------------------------------------------------------------------------
# the objectives
# ---------------------------------------------------------------------------------------
def _simplex_threshold(Xs, xp):
    """Thresholds ``tau`` of the simplex projection of each row of ``Xs`` (m, k), whose
    rows are sorted in descending order: ``proj = [x - tau]_+`` (Held, Wolfe & Crowder
    1974; Duchi et al. 2008, Fig. 1)."""
    k = Xs.shape[1]
    cssv = xp.cumulative_sum(Xs, axis=1) - 1.0
    r = xp.arange(1, k + 1, dtype=Xs.dtype, device=B.device(Xs))
    cond = (Xs - cssv / r) > 0
    # cond is true for a prefix of each row (at least its first entry)
    rho = xp.sum(xp.astype(cond, xp.int64), axis=1)
    picked = xp.take_along_axis(cssv, xp.reshape(rho - 1, (-1, 1)), axis=1)[:, 0]
    return picked / xp.astype(rho, Xs.dtype)


def _top_k(Z, kth, k, axis, xp):
    """The mask of the ``k`` largest entries of every slice of ``Z`` along ``axis``, given
    the k-th largest value ``kth`` (broadcast along ``axis``): the entries above it, then
    the entries equal to it in index order until there are ``k``. Ties are broken by the
    smaller index, as in the top-k kernels; ``Z >= kth`` would keep every tied entry and
    give a column more than ``k`` nonzeros (and mass beyond its simplex).
    """
    above = Z > kth
    room = k - xp.sum(xp.astype(above, xp.int64), axis=axis, keepdims=True)
    tie = Z == kth
    rank = xp.cumulative_sum(xp.astype(tie, xp.int64), axis=axis)
    return above | (tie & (rank <= room))


class _Problem:
    """One OT problem (unbatched) in the working dtype, with its objective evaluations."""

    # compiled kernels when use_kernels, else None (the array-API fallbacks run instead)
    topk: Any
    scatter: Any

    def __init__(self, a, b, C, k, gamma, xp, use_kernels):
        self.a, self.b, self.C, self.k, self.gamma, self.xp = a, b, C, k, gamma, xp
        self.n, self.m = C.shape
        self.dev = B.device(C)
        self.mass = float(xp.sum(a))
        # the top-k kernels pay off for small k (a streaming selection, O(n) per column);
        # for large k a sort is needed anyway and the dense path's value-only sort is faster
        # than the kernel's argsort
        use_kernels = use_kernels and k <= _KERNEL_MAX_K
        self.topk = B.get_kernel(xp, "ot_sparse.topk_rows") if use_kernels else None
        self.scatter = B.get_kernel(xp, "ot_sparse.scatter_add_rows") if use_kernels else None
        # the quadratic dual (no top-k) in one fused pass over C
        self.relu = B.get_kernel(xp, "ot_sparse.relu_marginals") if (
            (B.is_numpy(xp) or B.is_cupy(xp)) and k >= self.n) else None
        if self.relu is not None:
            self.C = B.contiguous(xp, C)
        # the quadratic semi-dual: sort-free simplex projections, one pass set per column
        self.simplex = B.get_kernel(xp, "ot_sparse.simplex_rows") if (
            (B.is_numpy(xp) or B.is_cupy(xp)) and k >= self.n) else None
        # C^T, so that the columns of the plan are contiguous rows (one copy per problem)
        self.Ct = B.contiguous_copy(xp, xp.permute_dims(C, (1, 0))) if (
            B.is_numpy(xp) or B.is_cupy(xp)) else xp.permute_dims(C, (1, 0))
        positive = b > 0
        self.b_safe = xp.where(positive, b, xp.ones_like(b))
        self.inv_gb = xp.where(positive, 1.0 / (gamma * self.b_safe), xp.zeros_like(b))

    # -- top-k of z_j = alpha + shift_j - c_j, per column: (idx (m, k), val (m, k)) -----
    def _topk(self, alpha, shift):
        xp = self.xp
        idx = xp.empty((self.m, self.k), dtype=xp.int64, device=self.dev)
        val = xp.empty((self.m, self.k), dtype=self.C.dtype, device=self.dev)
        return self.topk(B.contiguous(xp, alpha), B.contiguous(xp, shift), self.Ct, self.k,
                         idx, val)

    def _rowsum(self, idx, w):
        xp = self.xp
        out = xp.empty((self.n,), dtype=w.dtype, device=self.dev)
        return self.scatter(idx, B.contiguous(xp, w), out)

    def _kth_mask(self, Z):
        """Dense top-k mask of the columns of Z (exactly k entries, see :func:`_top_k`)."""
        xp = self.xp
        if self.k >= self.n:
            return None
        kth = xp.sort(Z, axis=0, stable=False)[self.n - self.k, :]
        return _top_k(Z, kth[None, :], self.k, 0, xp)

    # -- semi-dual ------------------------------------------------------------------
    def semi_dual(self, alpha):
        """(objective F(alpha), grad F, T 1, T^T 1, sparse plan (idx, W) or dense T)."""
        xp = self.xp
        a, b, gamma = self.a, self.b, self.gamma
        plan: Any  # a kernel's ("simplex", ...) record, (idx, W) or the dense plan
        if self.simplex is not None:
            tau, zy, yy = (xp.empty((self.m,), dtype=self.C.dtype, device=self.dev)
                           for _ in range(3))
            row = xp.empty((self.n,), dtype=self.C.dtype, device=self.dev)
            self.simplex(B.contiguous(xp, alpha), self.Ct, self.inv_gb, b, tau, zy, yy, row)
            mj = zy - 0.5 * gamma * b * yy
            col = b * 1.0  # every column is b_j times a point of the simplex
            plan = ("simplex", alpha, tau)
        elif self.topk is not None:
            idx, Z = self._topk(alpha, xp.zeros_like(b))
            X = Z * self.inv_gb[:, None]
            tau = _simplex_threshold(X, xp)
            Y = xp.maximum(X - tau[:, None], 0.0)
            W = b[:, None] * Y
            mj = xp.sum(Z * Y, axis=1) - 0.5 * gamma * b * xp.sum(Y * Y, axis=1)
            row = self._rowsum(idx, W)
            col = xp.sum(W, axis=1)
            plan = (idx, W)
        else:
            # dense, transposed: row j of Zt is column j of the plan
            Zt = alpha[None, :] - self.Ct
            Xt = Zt * self.inv_gb[:, None]
            # ascending unstable sort, then reversed: array-api-compat's default (stable,
            # descending=True) costs ~10x on NumPy
            Xs = xp.flip(xp.sort(Xt, axis=1, stable=False), axis=1)[:, :self.k]
            tau = _simplex_threshold(Xs, xp)
            Yt = xp.maximum(Xt - tau[:, None], 0.0)
            if self.k < self.n:
                Yt = xp.where(_top_k(Xt, Xs[:, self.k - 1:self.k], self.k, 1, xp), Yt, 0.0)
            Tt = Yt * b[:, None]
            mj = xp.sum(Zt * Yt, axis=1) - 0.5 * gamma * b * xp.sum(Yt * Yt, axis=1)
            row = xp.sum(Tt, axis=0)
            col = xp.sum(Tt, axis=1)
            plan = xp.permute_dims(Tt, (1, 0))
        value = xp.sum(alpha * a) - xp.sum(b * mj)
        return value, a - row, row, col, plan, tau

    # -- dual -----------------------------------------------------------------------
    def dual(self, alpha, beta):
        xp = self.xp
        a, b, gamma = self.a, self.b, self.gamma
        plan: Any  # a kernel's ("relu", ...) record, (idx, W) or the dense plan
        if self.relu is not None:
            row = xp.empty((self.n,), dtype=self.C.dtype, device=self.dev)
            col = xp.empty((self.m,), dtype=self.C.dtype, device=self.dev)
            sumsq = self.relu(B.contiguous(xp, alpha), B.contiguous(xp, beta), self.C, row, col)
            row, col = row / gamma, col / gamma
            delta = sumsq / (2.0 * gamma)
            plan = ("relu", alpha, beta)
        elif self.topk is not None and self.k < self.n:
            idx, Z = self._topk(alpha, beta)
            P = xp.maximum(Z, 0.0)
            W = P / gamma
            delta = xp.sum(P * P) / (2.0 * gamma)
            row = self._rowsum(idx, W)
            col = xp.sum(W, axis=1)
            plan = (idx, W)
        else:
            Z = alpha[:, None] + beta[None, :] - self.C
            P = xp.maximum(Z, 0.0)
            mask = self._kth_mask(Z)
            if mask is not None:
                P = xp.where(mask, P, 0.0)
            delta = xp.sum(P * P) / (2.0 * gamma)
            T = P / gamma
            row = xp.sum(T, axis=1)
            col = xp.sum(T, axis=0)
            plan = T
        value = xp.sum(alpha * a) + xp.sum(beta * b) - delta
        return value, a - row, b - col, row, col, plan

    def binding(self, alpha, beta) -> bool:
        """Whether the l0 constraint cuts off mass: for some column, the (k+1)-th largest
        entry of ``z_j = alpha + beta_j - c_j`` is still positive (then ``[z_j]_+`` has
        more than ``k`` nonzeros and top-k truncates it)."""
        xp = self.xp
        if self.k >= self.n:
            return False
        if self.topk is not None:
            k1 = self.k + 1
            idx = xp.empty((self.m, k1), dtype=xp.int64, device=self.dev)
            val = xp.empty((self.m, k1), dtype=self.C.dtype, device=self.dev)
            val = self.topk(B.contiguous(xp, alpha), B.contiguous(xp, beta), self.Ct, k1,
                            idx, val)[1]
            z_next = val[:, self.k]
        else:
            Z = alpha[:, None] + beta[None, :] - self.C
            z_next = xp.sort(Z, axis=0, stable=False)[self.n - self.k - 1, :]
        # relative to the scale of the potentials, so that rounding is not "binding"
        scale = float(xp.max(xp.abs(self.C))) + 1.0
        return bool(xp.any((z_next > 1e-12 * scale) & (self.b > 0)))

    def error(self, row, col):
        xp = self.xp
        return xp.sum(xp.abs(row - self.a)) + xp.sum(xp.abs(col - self.b))

    # -- the plan in both forms ---------------------------------------------------------
    def finish(self, plan, dense_only=False):
        """(dense plan (n, m), indices (m, k), values (m, k)) from an evaluation's plan
        (indices and values None with ``dense_only``)."""
        xp = self.xp
        # fused-kernel evaluations hand back ("relu", alpha, beta) / ("simplex", alpha, tau)
        tag = plan[0] if isinstance(plan, tuple) and isinstance(plan[0], str) else None
        if tag == "relu":
            plan = xp.maximum(plan[1][:, None] + plan[2][None, :] - self.C, 0.0) / self.gamma
        elif tag == "simplex":
            Yt = xp.maximum((plan[1][None, :] - self.Ct) * self.inv_gb[:, None]
                            - plan[2][:, None], 0.0)
            plan = xp.permute_dims(Yt * self.b[:, None], (1, 0))
        if isinstance(plan, tuple):
            idx, W = plan
            T_t = xp.zeros((self.m, self.n), dtype=W.dtype, device=self.dev)
            cols = xp.reshape(xp.arange(self.m, device=self.dev), (-1, 1))
            T_t = xpx.at(T_t)[cols, idx].set(W)
            return xp.permute_dims(T_t, (1, 0)), idx, W
        if dense_only:
            return plan, None, None
        T_t = xp.permute_dims(plan, (1, 0))
        # the (at most k) positive entries of a column come first; ties among the zeros
        # are irrelevant, so the faster unstable sort will do
        idx = xp.argsort(-T_t, axis=1, stable=False)[:, :self.k]
        return plan, idx, xp.take_along_axis(T_t, idx, axis=1)


# ---------------------------------------------------------------------------------------
# one problem
# ---------------------------------------------------------------------------------------
def _evaluate(prob: _Problem, formulation, x):
    """The (semi-)dual at x: (value, ascent gradient, T 1, T^T 1, plan, tau or None)."""
    if formulation == "semi-dual":
        return prob.semi_dual(x)
    n = prob.n
    value, ga, gb, row, col, plan = prob.dual(x[:n], x[n:])
    return value, prob.xp.concat([ga, gb]), row, col, plan, None


def _polish(prob: _Problem, formulation, x, ev, target, max_steps=8, on_step=None):
    """Newton steps on the support of the plan after L-BFGS (see ``sparse_ot`` Notes).

    The gradient of the (semi-)dual is piecewise linear in the potentials, so once the
    support of the plan is identified one Newton step with the support Hessian (the same
    matrix as in the backward rule) lands on the optimum of that piece; L-BFGS alone stalls
    near 1e-7 because function values stop resolving the remaining ascent. A step is kept
    only if it lowers the marginal error (halved up to ``_POLISH_HALVINGS`` times).
    """
    xp = prob.xp
    err = float(prob.error(ev[2], ev[3]))
    steps = 0
    # inexact Newton: each step cuts the error by about rtol, a few steps reach any tol
    rtol = 1e-7 if prob.C.dtype == xp.float64 else 1e-5
    while err > target and steps < max_steps:
        T = prob.finish(ev[4], dense_only=True)[0]
        sol = _solve_support(T, prob.b, prob.gamma, formulation, ev[1], rtol,
                             4 * (prob.n + prob.m), xp)
        if sol.status is Status.NONFINITE:
            break
        # inexact Newton: a step from MINRES stopped short (MAX_ITERATIONS, BREAKDOWN) is
        # still tried; the test below keeps it only if it lowers the error
        d = sol.x
        t, improved = 1.0, False
        for _ in range(_POLISH_HALVINGS + 1):
            ev_new = _evaluate(prob, formulation, x + t * d)
            err_new = float(prob.error(ev_new[2], ev_new[3]))
            if err_new < err:
                x, ev, err, improved = x + t * d, ev_new, err_new, True
                break
            t *= 0.5
        if not improved:
            break
        steps += 1
        if on_step is not None and on_step(x, ev, err):
            return x, ev, steps, True
    return x, ev, steps, False


def _solve_one(prob: _Problem, formulation, target, max_iter, use_scipy, callback=None,
               problem_index=None):
    """One problem, stopping at an L1 marginal error ``target`` (absolute; 0 = run the
    budget). ``callback(state)`` (:class:`OTState`) after each L-BFGS iteration and
    Newton polish step."""
    xp = prob.xp
    n, m = prob.n, prob.m
    n_done = 0  # iterations of the phases before the current one, for the callback

    def run_lbfgs(x0, goal, iters, ftol):
        def fun(x):
            value, grad, row, col, _, _ = _evaluate(prob, formulation, x)
            err = float(prob.error(row, col))
            return -float(value), -grad, err <= goal

        cb = None
        if callback is not None:
            def cb(xk, it):
                xk = xp.asarray(xk, dtype=prob.C.dtype, device=prob.dev)
                ev = _evaluate(prob, formulation, xk)
                return on_step(xk, ev, float(prob.error(ev[2], ev[3])), n_done + it)

        out = scipy_lbfgs(fun, x0, max_iter=iters, ftol=ftol, callback=cb) if use_scipy \
            else lbfgs(fun, x0, xp, max_iter=iters, ftol=ftol, callback=cb)
        return xp.asarray(out.x, dtype=prob.C.dtype, device=prob.dev), out

    def on_step(x, ev, err, its):
        alpha, beta = potentials(x, ev)
        return bool(callback(OTState(n_iters=int(its), f=alpha, g=beta, error=err,
                                     problem=problem_index)))

    def potentials(x, ev):
        if formulation == "dual":
            return x[:n], x[n:]
        # beta recovered from the projection threshold: on the support of column j,
        # t_ij = (alpha_i + beta_j - c_ij) / gamma with t_ij = b_j (x_ij - tau_j) and
        # x_ij = (alpha_i - c_ij) / (gamma b_j), hence beta_j = -gamma b_j tau_j. A column
        # with b_j = 0 gets the largest beta_j with an empty support.
        beta = xp.where(prob.b > 0, -prob.gamma * prob.b * ev[5],
                        xp.min(prob.C - x[:, None], axis=0))
        return x, beta

    size = n if formulation == "semi-dual" else n + m
    x = xp.zeros((size,), dtype=prob.C.dtype, device=prob.dev)
    # Phase 1: L-BFGS until the marginals hold to _SWITCH (the support of the plan is then
    # usually identified) or the objective stops improving (relative FTOL: where k binds
    # the optimum is a kink and the marginal test can never hold); Newton steps on the
    # support finish the job (_polish). If they do not reach tol and k does not bind,
    # phase 2: L-BFGS from the polished point with the real target and a stall test at
    # rounding level, then the polish once more.
    n_iters, status = 0, "done"
    phases = [(max(target, _SWITCH * prob.mass), FTOL), (target, _FTOL_FINE)]
    for phase, (goal, ftol) in enumerate(phases):
        n_done = n_iters
        x, out = run_lbfgs(x, goal, max_iter - n_iters, ftol)
        n_iters += out.n_iters
        status = out.status
        ev = _evaluate(prob, formulation, x)
        if status in ("max_iter", "stopped") or n_iters >= max_iter:
            break
        step_cb = None
        if callback is not None:
            def step_cb(x, ev, err, base=n_iters):
                nonlocal polished  # type: ignore[misc]  # bound below, before any call
                polished += 1
                return on_step(x, ev, err, base + polished)
        polished = 0
        x, ev, steps, halted = _polish(prob, formulation, x, ev, target, on_step=step_cb)
        n_iters += steps
        if halted:
            status = "stopped"
            break
        if float(prob.error(ev[2], ev[3])) <= target:
            break
        if phase == 0 and prob.binding(*potentials(x, ev)):
            # k binds: the optimum is a kink of the (semi-)dual, where L-BFGS's curvature
            # pairs mislead it and it stalls short of the maximum (values 4e-4 apart
            # for C moved by 1e-9). Restarts from the stall point with a fresh memory make
            # progress again; the cost (the dual value) is then continuous in C.
            for _ in range(_KINK_RESTARTS):
                if n_iters >= max_iter:
                    break
                n_done = n_iters
                x_new, out = run_lbfgs(x, target, max_iter - n_iters, FTOL)
                n_iters += out.n_iters
                if out.status == "stopped":
                    x, status = x_new, "stopped"
                    break
                ev_new = _evaluate(prob, formulation, x_new)
                gain = float(ev_new[0]) - float(ev[0])
                if gain >= 0:
                    x, ev = x_new, ev_new
                status = out.status
                if gain <= _KINK_FTOL * max(abs(float(ev[0])), 1e-300):
                    break
            ev = _evaluate(prob, formulation, x)
            break
    value, _, row, col, plan, _ = ev
    alpha, beta = potentials(x, ev)
    T, idx, W = prob.finish(plan)
    err = prob.error(row, col)
    binding = prob.binding(alpha, beta)
    e = float(err)
    if not math.isfinite(e) or not math.isfinite(float(value)):
        code = Status.NONFINITE
    elif e <= target and target > 0:
        code = Status.SUCCESS
    elif status == "stopped":
        code = Status.STOPPED
    elif binding and status != "max_iter" and target > 0:
        # L-BFGS (and the Newton polish) stopped at a stationary point while the l0
        # constraint binds: the dual optimum is a kink, the plan is one top-k selection
        # there and its marginal violation belongs to the relaxation (no k-sparse plan of
        # this dual meets the marginals); the cost (the dual value) is optimal
        code = Status.INFEASIBLE
    else:
        code = Status.MAX_ITERATIONS
    # gauge: (alpha + c, beta - c) is as optimal as (alpha, beta); return mean(f) = 0
    shift = xp.mean(alpha)
    f, g = alpha - shift, beta + shift
    primal = xp.sum(T * prob.C) + 0.5 * prob.gamma * xp.sum(T * T)
    return dict(plan=T, f=f, g=g, cost=value, primal_cost=primal, idx=idx, W=W, err=err,
                n_iters=n_iters, status=code, binding=binding)


def _forward(where, a, b, C, st: SparseOTSettings):
    check_arrays(where, a=a, b=b, C=C)
    xp = B.array_namespace(a, b, C, where=where)
    a, b, C, batch_shape = check_ot_inputs(where, a, b, C, xp)
    n, m = C.shape[-2:]
    in_dtype = C.dtype
    kk = n if st.k is None else min(st.k, n)
    gamma, formulation, solver = st.gamma, st.formulation, st.solver
    rtol = st.rtol
    if rtol is None:
        rtol = 1e-6 if in_dtype == xp.float64 else 1e-5
    if kk < n:
        # every row with a_i > 0 must receive mass from some column, and a column feeds at
        # most k rows: with fewer than k m slots the problem is infeasible (the dual is
        # then unbounded and L-BFGS would run off)
        rows = int(xp.max(xp.sum(xp.astype(a > 0, xp.int64), axis=-1)))
        cols = int(xp.min(xp.sum(xp.astype(b > 0, xp.int64), axis=-1)))
        if kk * cols < rows:
            raise ValueError(
                f"{where}: k = {kk} nonzeros per column for {cols} columns with mass cannot "
                f"reach all {rows} rows with mass (k m < n): no plan exists; use k >= "
                f"{-(-rows // cols)}"
            )
    use_scipy = B.is_numpy(xp) and solver in ("lbfgs", "lbfgs-scipy")
    if solver == "lbfgs-scipy" and not B.is_numpy(xp):
        raise ValueError(f"{where}: solver='lbfgs-scipy' needs NumPy inputs (SciPy's L-BFGS-B "
                         "runs on the host); use solver='lbfgs' to keep the arrays on their "
                         "device")
    # SciPy's L-BFGS-B works in float64: a float32 NumPy problem is solved in float64 and
    # the results are cast back (cheap on the host, and more accurate)
    work = xp.float64 if use_scipy else in_dtype
    # compiled top-k kernels exist for NumPy (Numba) and CuPy; other namespaces get the
    # dense standard-only path (a sort per column)
    use_kernels = B.is_numpy(xp) or B.is_cupy(xp)
    count = math.prod(batch_shape)
    af = xp.reshape(xp.astype(a, work), (count, n))
    bf = xp.reshape(xp.astype(b, work), (count, m))
    Cf = xp.reshape(xp.astype(C, work), (count, n, m))
    outs = []
    for p in range(count):
        prob = _Problem(af[p, ...], bf[p, ...], Cf[p, ...], kk, gamma, xp, use_kernels)
        target = 0.0 if st.fixed_budget else st.atol + rtol * prob.mass
        out = _solve_one(prob, formulation, target, st.maxiter, use_scipy, st.callback,
                         p if batch_shape else None)
        outs.append({**out, "tol": target})

    def stack(key, dtype=in_dtype):
        arrs = [xp.astype(xp.asarray(o[key]), dtype) for o in outs]
        s = xp.stack(arrs) if arrs[0].ndim or count > 1 else arrs[0]
        return xp.reshape(s, batch_shape + tuple(arrs[0].shape))

    if batch_shape:
        dev = B.device(C)

        def scalars(key, dtype):
            return xp.reshape(xp.asarray([int(o[key]) if key == "status" else o[key]
                                          for o in outs], dtype=dtype, device=dev),
                              batch_shape)

        n_iters, status = scalars("n_iters", xp.int64), scalars("status", xp.int64)
        converged = status == int(Status.SUCCESS)
        error, tolerance = stack("err"), scalars("tol", in_dtype)
        binding = scalars("binding", xp.bool)
    else:
        o = outs[0]
        binding, n_iters, status = o["binding"], o["n_iters"], Status(o["status"])
        converged, error, tolerance = status == Status.SUCCESS, float(o["err"]), o["tol"]
    result_type = QuadraticOTResult if where == WHERE_QUADRATIC else SparseOTResult
    res = result_type(
        plan=stack("plan"), f=stack("f"), g=stack("g"), cost=stack("cost"),
        n_iters=n_iters, converged=converged, error=error, status=status,
        tolerance=tolerance, error_measure="l1",
        plan_indices=stack("idx", xp.int64), plan_values=stack("W"),
        dual_value=stack("cost"), primal_cost=stack("primal_cost"), binding=binding,
        formulation=formulation, k=kk, gamma=gamma)
    report(res, throw=st.throw, fixed_budget=st.fixed_budget)
    return res


# ---------------------------------------------------------------------------------------
# backward rule
# ---------------------------------------------------------------------------------------
#: tolerances of the backward's support solve (true residual, relative to the right-hand
#: side after the null-space projection)
_BWD_RTOL = 1e-12
_BWD_RTOL_F32 = 1e-6
def _components(on, xp):
    """Labels of the connected components of the plan's support graph.

    The graph is bipartite: rows ``0..n-1`` and columns ``n..n+m-1`` are its vertices, the
    entries with ``on[i, j]`` its edges. Every vertex gets the smallest vertex index of its
    component: minimum-label propagation across the edges, with pointer jumping
    (``label <- label[label]``, which stays in the component and never grows) so that long
    paths (near-tree supports of small ``gamma``) take O(log) rounds rather than O(length)
    (Shiloach & Vishkin, J. Algorithms 3 (1982)). Each round costs two masked passes over
    the ``n x m`` support, about one product with the support Hessian.
    """
    n, m = on.shape
    dev = B.device(on)
    labels = xp.arange(n + m, dtype=xp.int64, device=dev)
    none = xp.asarray(n + m, dtype=xp.int64, device=dev)
    while True:
        row, col = labels[:n], labels[n:]
        col = xp.minimum(col, xp.min(xp.where(on, row[:, None], none), axis=0))
        row = xp.minimum(row, xp.min(xp.where(on, col[None, :], none), axis=1))
        new = xp.concat([row, col])
        new = xp.take(new, new)
        if bool(xp.all(new == labels)):
            return labels
        labels = new


class _Gauge:
    """The null space of a support Hessian and the projection onto its range.

    The support Hessians (:func:`_support_system`) are singular along the shift of the
    potentials of every connected component of the support graph: ``(1, -1)`` on the rows
    and columns of a component for the dual ``K``, ``1`` on the rows of a component for the
    semi-dual ``H``. Removing those components from a right-hand side makes the system
    consistent (its solutions are the least-squares solutions of the original one), so
    :func:`diffsolve.krylov.minres` can solve it to its tolerance and report a status that
    means what it says. The null vectors of different components have disjoint supports,
    so the projection is one subtraction per component.
    """

    def __init__(self, T, formulation, xp):
        n = T.shape[0]
        self.xp = xp
        labels = _components(T > 0, xp)
        dt = T.dtype
        if formulation == "dual":
            self.labels = labels
            self.sign = xp.concat([xp.ones((n,), dtype=dt, device=B.device(T)),
                                   -xp.ones((T.shape[1],), dtype=dt, device=B.device(T))])
        else:
            self.labels = labels[:n]
            self.sign = xp.ones((n,), dtype=dt, device=B.device(T))
        self.ids = xp.unique_values(self.labels)
        # one-hot blocks of at most about n m entries (the plan's size), so that a support
        # split into many components (k = 1) costs no more memory than the plan
        size = int(self.labels.shape[0])
        self.chunk = max(1, (n * int(T.shape[1])) // max(size, 1))

    @property
    def n_components(self) -> int:
        return int(self.ids.shape[0])

    def project(self, v, weight=None):
        """``v`` minus its projection on the null space, orthogonal in the inner product
        ``<u, v> = sum(weight u v)`` (default: the Euclidean one)."""
        xp = self.xp
        w = self.sign * v if weight is None else self.sign * weight * v
        out = v
        count = self.n_components
        for start in range(0, count, self.chunk):
            ids = self.ids[start:min(start + self.chunk, count)]
            E = xp.astype(self.labels[:, None] == ids[None, :], v.dtype)
            norm2 = xp.sum(E, axis=0) if weight is None else weight @ E
            out = out - self.sign * (E @ ((w @ E) / norm2))
        return out


def _solve_support(T, b, gamma, formulation, rhs, rtol, maxiter, xp):
    """Solve ``A x = rhs`` with ``A`` the support Hessian at ``T`` in the least-squares
    sense: the components of ``rhs`` along the null space (:class:`_Gauge`) are removed,
    and the consistent system is solved by Jacobi-preconditioned MINRES
    (:func:`diffsolve.krylov.minres`) to ``||P rhs - A x|| <= rtol ||rhs||``, the true
    residual measured against the right-hand side before the projection (that of the
    least-squares problem: where ``rhs`` lies almost entirely in the null space, the
    rounding of the projection must not count as a residual to solve for; a projected
    ``rhs`` below the tolerance gives ``x = 0``).

    Of the solutions, the one ``D``-orthogonal to the null space is returned (``D`` the
    Jacobi diagonal; what MINRES from ``x0 = 0`` with the preconditioner ``D⁻¹`` gives in
    exact arithmetic). Returns the :class:`~diffsolve.krylov.KrylovResult`.
    """
    A, diag = _support_system(T, b, gamma, formulation, xp)
    # a vertex without support edges has a zero diagonal (and its own component, which
    # the projection empties): 1 keeps the preconditioner positive definite
    pos = diag > 0
    inv_d = xp.where(pos, 1.0 / xp.where(pos, diag, xp.ones_like(diag)),
                     xp.ones_like(diag))
    scale = float(xp.max(xp.abs(rhs)))
    if not math.isfinite(scale):
        scale = 0.0  # NaN/inf rhs: krylov reports it (NONFINITE, NaN x)
    elif scale > 0:
        scale *= float(xp.linalg.vector_norm(rhs / scale))
    gauge = _Gauge(T, formulation, xp)
    sol = krylov.minres(A, gauge.project(rhs), M=inv_d, rtol=rtol, atol=rtol * scale,
                        maxiter=maxiter)
    # MINRES from 0 keeps x D-orthogonal to the null space, restarts from a true residual
    # (whose rounding has null components) need not: fix that representative explicitly,
    # so the answer does not depend on the path of the solve
    return dataclasses.replace(sol, x=gauge.project(sol.x, weight=1.0 / inv_d))


def _support_system(T, b, gamma, formulation, xp):
    """(matvec, diagonal) of the support Hessian at the plan T (see the module docstring).

    semi-dual: ``H = (1/gamma) sum_j (diag(s_j) - s_j s_j^T / |s_j|)`` (n x n), the
    Jacobian of ``T 1`` in ``alpha``; dual: ``K = (1/gamma) [[diag(S 1), S], [S^T,
    diag(S^T 1)]]``, the Jacobian of ``(T 1, T^T 1)`` in ``(alpha, beta)``. Both are
    symmetric positive semidefinite; products cost O(n m).
    """
    n = T.shape[0]
    s = xp.astype(T > 0, T.dtype)
    if formulation == "dual":
        deg_r, deg_c = xp.sum(s, axis=1), xp.sum(s, axis=0)

        def K(v):
            u, w = v[:n], v[n:]
            return xp.concat([deg_r * u + s @ w, u @ s + deg_c * w]) / gamma

        return K, xp.concat([deg_r, deg_c]) / gamma
    kj = xp.maximum(xp.sum(s, axis=0), 1.0)
    deg = xp.sum(s, axis=1)
    s_k = s / kj[None, :]

    def H(v):
        return (deg * v - s @ (v @ s_k)) / gamma

    return H, xp.sum(s * (1.0 - 1.0 / kj[None, :]), axis=1) / gamma


def _bwd_one(a, b, C, T, f, g, Tbar, fbar, gbar, cbar, gamma, formulation, xp):
    """Cotangents ``(a_bar, b_bar, C_bar)`` for one problem (see the module docstring) and
    the :class:`~diffsolve.krylov.KrylovResult` of its support solve (``None`` without
    one)."""
    n, m = C.shape
    s = xp.astype(T > 0, T.dtype)
    rtol = _BWD_RTOL if T.dtype == xp.float64 else _BWD_RTOL_F32
    # the cost is the (semi-)dual value D(a, b, C) at its maximiser: by the envelope
    # theorem (Danskin) its gradient is (f, g, T) for (a, b, C) (for the semi-dual,
    # d/db_j of -b_j m_j(alpha - c_j) is -gamma b_j tau_j = beta_j); where k binds, T is
    # the supergradient of the top-k selection the solver returned. No linear solve.
    C_bar = cbar * T
    # the gauge: f = alpha - mean(alpha), g = beta + mean(alpha)
    abar = fbar - xp.mean(fbar) + xp.sum(gbar) / n
    bbar_beta = gbar
    if formulation == "dual":
        # T = s * (alpha + beta - C) / gamma on the support
        Zbar = s * Tbar / gamma
        abar = abar + xp.sum(Zbar, axis=1)
        bbar_beta = bbar_beta + xp.sum(Zbar, axis=0)
        C_bar = C_bar - Zbar
        sol = _solve_support(T, b, gamma, formulation, xp.concat([abar, bbar_beta]), rtol,
                             4 * (n + m), xp)
        mu, nu = sol.x[:n], sol.x[n:]
        C_bar = C_bar + s * (mu[:, None] + nu[None, :]) / gamma
        return (mu + cbar * f, nu + cbar * g, C_bar), sol
    # semi-dual: t_j = b_j y_j, y_j = P_k(x_j), x_j = (alpha - c_j) / (gamma b_j),
    # beta_j = -gamma b_j tau_j; on the support y = x - tau.
    positive = b > 0
    b_safe = xp.where(positive, b, 1.0)
    inv_gb = xp.where(positive, 1.0 / (gamma * b_safe), 0.0)
    kj = xp.maximum(xp.sum(s, axis=0), 1.0)
    Y = T / b_safe[None, :]
    tau = xp.where(positive, -g / (gamma * b_safe), 0.0)
    X = s * (Y + tau[None, :])

    def chain(Tb, beta_bar):
        """Cotangents of (alpha, b, C) through the plan and beta at fixed alpha."""
        Ybar = Tb * b[None, :]
        bb = xp.sum(Tb * Y, axis=0)
        taubar = -gamma * b * beta_bar
        bb = bb + xp.where(positive, g * beta_bar / b_safe, 0.0)
        mean_y = xp.sum(s * Ybar, axis=0) / kj
        Xbar = s * (Ybar - mean_y[None, :]) + s * (taubar / kj)[None, :]
        Xbar_s = Xbar * inv_gb[None, :]
        ab = xp.sum(Xbar_s, axis=1)
        Cb = -Xbar_s
        bb = bb - xp.where(positive, xp.sum(Xbar * X, axis=0) / b_safe, 0.0)
        return ab, bb, Cb

    ab1, bb1, Cb1 = chain(Tbar, bbar_beta)
    abar = abar + ab1
    sol = _solve_support(T, b, gamma, formulation, abar, rtol, 4 * n, xp)
    mu = sol.x
    _, bb2, Cb2 = chain(-(mu[:, None] * xp.ones_like(T)), xp.zeros_like(b))
    return (mu + cbar * f, bb1 + bb2 + cbar * g, C_bar + Cb1 + Cb2), sol


def _warn_unless_converged(where, solves, finite):
    """One warning (at the user's line) for the backward's support solves that missed
    their tolerance. A solve whose inputs were not finite (a NaN plan) is not counted:
    its NaN gradient is the answer."""
    failed = [(p, sol) for p, (sol, ok) in enumerate(zip(solves, finite, strict=True))
              if ok and sol.status is not Status.SUCCESS]
    if not failed:
        return
    which = "" if len(solves) == 1 else f" (problem {failed[0][0]}, {len(failed)} of {len(solves)})"
    warnings.warn(
        f"{where}: the implicit-differentiation MINRES solve on the plan's support did not "
        f"converge{which}, so the gradient is approximate: {failed[0][1].message}. The "
        "support graph is badly conditioned (long chains of few entries): a larger gamma "
        "(or k) spreads the plan over a better connected support; a tighter rtol of the "
        "forward solve pins the support down",
        ConvergenceWarning, stacklevel=caller_stacklevel())


def _make_bwd(public):
    def bwd(ctx, cot):
        a, b, C = ctx.args[:3]
        res = ctx.result
        xp = B.array_namespace(res.plan)
        # gamma and the formulation come from the settings (saved by the forward rule, or
        # re-read from the call: the JAX adapter rebuilds the result from arrays only)
        st = ctx.residuals if ctx.residuals is not None else _call_settings(public(), ctx)
        gamma, formulation = st.gamma, st.formulation
        n, m = res.plan.shape[-2:]
        batch = tuple(res.plan.shape[:-2])
        count = math.prod(batch)
        dtype = res.plan.dtype

        def flat(x, tail):
            return xp.reshape(xp.astype(x, dtype), (count, *tail))

        ab, bb, Cb = xp.broadcast_to(xp.astype(a, dtype), (*batch, n)), \
            xp.broadcast_to(xp.astype(b, dtype), (*batch, m)), \
            xp.broadcast_to(xp.astype(C, dtype), (*batch, n, m))
        A_, B_, C_ = flat(ab, (n,)), flat(bb, (m,)), flat(Cb, (n, m))
        T, F, G = flat(res.plan, (n, m)), flat(res.f, (n,)), flat(res.g, (m,))
        Tb, Fb, Gb = flat(cot["plan"], (n, m)), flat(cot["f"], (n,)), flat(cot["g"], (m,))
        cb = flat(cot["cost"], ())
        outs, solves, finite = [], [], []
        for p in range(count):
            out, sol = _bwd_one(A_[p, ...], B_[p, ...], C_[p, ...], T[p, ...], F[p, ...],
                                G[p, ...], Tb[p, ...], Fb[p, ...], Gb[p, ...], cb[p], gamma,
                                formulation, xp)
            outs.append(out)
            solves.append(sol)
            finite.append(all(bool(xp.all(xp.isfinite(v))) for v in
                              (T[p, ...], F[p, ...], G[p, ...])))
        _warn_unless_converged(public().public_name, solves, finite)
        grads = []
        for i, (arg, tail) in enumerate(((a, (n,)), (b, (m,)), (C, (n, m)))):
            g = xp.reshape(xp.stack([o[i] for o in outs]), batch + tail)
            # an argument broadcast over the batch gets the sum over the broadcast axes
            extra = len(batch) + len(tail) - arg.ndim
            if extra > 0:
                g = xp.sum(g, axis=tuple(range(extra)))
            for ax in range(arg.ndim - len(tail)):
                if arg.shape[ax] == 1 and g.shape[ax] != 1:
                    g = xp.sum(g, axis=ax, keepdims=True)
            grads.append(xp.astype(g, arg.dtype) if xp.isdtype(arg.dtype, "real floating")
                         else None)
        rest = len(ctx.args) - 3
        return tuple(grads) + (None,) * rest

    return bwd


def _call_settings(fn, ctx) -> SparseOTSettings:
    """The settings of a call, re-read quietly (its warnings were given by the forward)."""
    bound = fn.signature.bind(*ctx.args, **ctx.kwargs)
    bound.apply_defaults()
    kw = dict(bound.arguments)
    deprecated = kw.pop("deprecated", {})
    where = fn.public_name
    return _settings(where, fn.fwd, kw.get("k"), kw["gamma"],
                     **{k: kw[k] for k in ("formulation", "rtol", "atol", "maxiter",
                                           "solver", "throw", "callback")},
                     deprecated=deprecated, quiet=True)


def _make_shapes(k_arg: bool):
    def shapes(a, b, C, *args, **kwargs):
        batch = tuple(C.shape[:-2])
        for x, tail in ((a, 1), (b, 1)):
            lead = tuple(x.shape[:-tail])
            if len(lead) > len(batch):
                batch = lead[:len(lead) - len(batch)] + batch
        n, m = C.shape[-2:]
        k = args[0] if k_arg and args else kwargs.get("k", n)
        kk = n if not k_arg else min(int(k), n)
        dtype = B.promote_real_floating(a.dtype, b.dtype, C.dtype)
        scalar = batch
        return {
            "plan": ((*batch, n, m), dtype), "f": ((*batch, n), dtype),
            "g": ((*batch, m), dtype), "cost": (scalar, dtype),
            "n_iters": (scalar, "int64"), "converged": (scalar, "bool"),
            "error": (scalar, dtype), "plan_indices": ((*batch, m, kk), "int64"),
            "plan_values": ((*batch, m, kk), dtype), "dual_value": (scalar, dtype),
            "primal_cost": (scalar, dtype), "binding": (scalar, "bool"),
            "status": (scalar, "int64"), "tolerance": (scalar, dtype),
        }

    return shapes


# ---------------------------------------------------------------------------------------
# public functions
# ---------------------------------------------------------------------------------------
# the backward rule looks the solver up when it runs (the name is bound by then)
@custom_vjp(_make_bwd(lambda: sparse_ot),  # type: ignore[has-type]
            _make_shapes(True), SparseOTResult, public_name=WHERE_SPARSE)
def sparse_ot(a: Array, b: Array, C: Array, k: int, gamma: ArrayLike, *,
              formulation: str = "semi-dual", rtol: float | None = None, atol: float = 0.0,
              maxiter: int = 1000, solver: str = "lbfgs", throw: bool = False,
              callback: Callback[OTState] | None = None, **deprecated: Any,
              ) -> tuple[SparseOTResult, Any]:
    """Sparsity-constrained optimal transport: at most ``k`` nonzeros per plan column.

    Solves ``min <T, C> + sum_j (gamma/2) ||t_j||^2`` over plans ``T`` with marginals
    ``a``, ``b`` and at most ``k`` nonzero entries in every column ``t_j`` (Liu, Puigcerver
    & Blondel, ICLR 2023), through its smoothed dual or semi-dual maximised by L-BFGS.

    Parameters
    ----------
    a : array, shape (..., n)
        Source weights (rows), nonnegative.
    b : array, shape (..., m)
        Target weights (columns), nonnegative, same total mass as ``a``.
    C : array, shape (..., n, m)
        Finite costs. Leading batch dimensions of ``a``, ``b``, ``C`` broadcast; batched
        problems are solved one after the other (a Python loop), each with its own
        convergence.
    k : int >= 1
        The most nonzeros per column. ``k = 1`` sends each column's mass to one row
        (unregularised OT when that is feasible, e.g. a permutation); ``k >= n`` is
        :func:`quadratic_ot`.
    gamma : float > 0
        Weight of the quadratic regulariser, in cost units. Smaller is closer to
        unregularised OT (and harder for L-BFGS); larger spreads each column over more of
        its ``k`` slots.
    formulation : {"semi-dual", "dual"}
        ``"semi-dual"`` (default): maximise over ``alpha`` only; every column of the plan
        has exactly mass ``b_j`` and the row marginal converges. ``"dual"``: maximise over
        ``(alpha, beta)``; both marginals converge. The two relax the non-convex primal
        differently, so for ``k < n`` their plans can differ slightly.
    rtol, atol : float >= 0, optional
        Stop when the L1 marginal violation ``||T 1 - a||_1 + ||T^T 1 - b||_1`` is at most
        ``atol + rtol * sum(a)``. ``rtol`` default (None): 1e-6 in float64 (and for
        float32 NumPy input, which is
        solved in float64), 1e-5 for float32 elsewhere. Once L-BFGS has the marginals to
        1e-3, Newton steps on the plan's support usually drive the error to ~1e-14 in a
        few steps; where the optimum sits on a change of support (components of the
        support graph joined by entries exactly at zero, typical for small ``gamma``),
        L-BFGS alone must finish, and its function-value line search stalls near 1e-7:
        ask for less than that only on problems you have checked. ``rtol = atol = 0``: a
        fixed budget (no stop on the error; L-BFGS still stops when the objective stalls).
        Replaces ``tol=`` (deprecated: ``tol=x`` is ``rtol=x``).
    maxiter : int
        L-BFGS iteration limit. Replaces ``max_iter=`` (deprecated).
    solver : {"lbfgs", "lbfgs-scipy", "lbfgs-xp"}
        ``"lbfgs"``: SciPy's ``fmin_l_bfgs_b`` on NumPy, diffsolve's array-API L-BFGS
        (strong-Wolfe line search) on CuPy and other namespaces, so GPU arrays stay on the
        GPU. ``"lbfgs-xp"`` forces the array-API one, ``"lbfgs-scipy"`` SciPy's.
    throw : bool
        Raise the status's :class:`diffsolve.SolveError` subclass instead of warning when
        a problem fails (e.g. :class:`diffsolve.InfeasibleError` where k binds).
    callback : callable, optional
        ``callback(state) -> bool | None`` after each L-BFGS iteration and each Newton
        polish step, with a frozen :class:`~diffsolve.ot._result.OTState`: ``n_iters``,
        ``f``, ``g`` (the current dual variables ``alpha``, ``beta``; not yet in the
        gauge ``mean(f) = 0``), ``error`` (L1 marginal violation) and ``problem`` (batch
        index or None). Returning ``True`` stops that problem (``Status.STOPPED``).
    **deprecated
        The option names used before the solver contract, ``tol`` and ``max_iter``, still
        work with a ``DeprecationWarning`` (see ``rtol``, ``atol`` and ``maxiter`` above);
        any other keyword raises ``TypeError``.

    Returns
    -------
    SparseOTResult
        ``plan`` (dense, (..., n, m)); ``plan_indices`` / ``plan_values`` ((..., m, k): the
        same plan, column by column); ``f``, ``g``: the dual variables ``(alpha, beta)``
        normalised to ``mean(f) = 0`` (for the semi-dual, ``beta_j = -gamma b_j tau_j`` with
        ``tau_j`` the threshold of column ``j``'s simplex projection, i.e. the ``beta``
        for which ``t_j = [alpha + beta_j - c_j]_+ / gamma`` on its support); ``cost``: the
        maximised (semi-)dual objective, which equals the primal regularised objective
        ``<T, C> + sum_j (gamma/2) ||t_j||^2`` (``primal_cost``) at the optimum when ``k``
        does not bind, and is a continuous (concave) function of ``C`` where it binds,
        unlike the primal objective of the returned plan, which jumps when the top-k
        selection switches; ``n_iters``, ``converged``, ``error`` (L1 marginal
        violation), ``status``, ``tolerance``, ``message``. Where ``k`` binds the plan is
        one top-k selection at a kink of the dual (an element of its supergradient) and
        misses the marginals: ``status`` is then ``INFEASIBLE`` (a warning) unless the
        violation is within the tolerance.

    Raises
    ------
    ValueError, TypeError
        Bad input: a wrong shape or dtype, an unknown option value, an option out of range,
        arrays from two libraries. The message names the argument, what was received and
        what would work.
    diffsolve.SolveError
        Only with ``throw=True``: the subclass matching the result's ``status``
        (:class:`~diffsolve.MaxIterationsError`, :class:`~diffsolve.NonFiniteError`, ...),
        carrying the :class:`SparseOTResult` as ``result``.

    Warns
    -----
    diffsolve.ConvergenceWarning
        With ``throw=False`` (the default), when the solve stops without meeting its
        tolerance; the :class:`SparseOTResult` is returned and its ``message`` says what to
        try. A budget requested on purpose (``rtol = atol = 0``) does not warn.

    See Also
    --------
    diffsolve.ot.quadratic_ot : The same without the sparsity constraint.
    diffsolve.ot.sinkhorn : Entropic OT (dense plans).

    Notes
    -----
    Gradients (``diffsolve.vjp``, ``to_autograd``, ``to_torch``, ``to_jax``): the
    ``cost`` by the envelope theorem, ``(f, g, plan)`` for ``(a, b, C)`` (the gradient of
    the dual value; where ``k`` binds, the supergradient of the returned selection); those
    of ``plan``, ``f``, ``g`` w.r.t. ``a``, ``b`` and ``C`` come from implicit
    differentiation of the optimality conditions, with the Jacobian of the sparse simplex
    projection on its support, ``diag(s) - s s^T / |s|`` (semi-dual) or of ``[.]_+`` on the
    top-k set (dual), solved matrix-free by Jacobi-preconditioned MINRES on the support
    graph (each product costs O(n m)). They are exact where the support of the plan is
    locally constant (no ties in the top-k, no entry exactly at the threshold) and the
    constraint does not bind (``binding`` false). Where it binds, the plan is one element of
    the subdifferential at a kink of the dual and is not a differentiable function of the
    inputs; the rule then returns the derivative of the smooth piece the solver stopped
    on. Cotangents of ``a`` and ``b`` are defined up to a constant (the masses must stay
    equal): only directions with ``sum(da) = sum(db)`` are meaningful. When the support
    graph splits into several components (e.g. ``k = 1``) the shift of ``f`` within each
    component is not determined by the problem, and ``a_bar - f`` is constant per component
    rather than globally; the backward rule gives those directions zero weight.

    The feasibility check is necessary, not sufficient: ``k m >= n`` (every row must be
    reached) is enforced; other infeasible weight patterns show up as non-convergence.

    Examples
    --------
    >>> import numpy as np
    >>> import diffsolve as ds
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.normal(size=(6, 2)), rng.normal(size=(4, 2))
    >>> C = ((x[:, None] - y[None]) ** 2).sum(-1); C /= C.max()
    >>> res = ds.ot.sparse_ot(np.full(6, 1 / 6), np.full(4, 1 / 4), C, k=2, gamma=0.1)
    >>> res.status.name, int((res.plan > 0).sum(axis=0).max()) <= 2
    ('SUCCESS', True)
    >>> np.allclose(res.plan.sum(axis=1), 1 / 6), res.plan_indices.shape
    (True, (4, 2))
    """
    st = _settings(WHERE_SPARSE, sparse_ot.fwd, k, gamma, formulation=formulation, rtol=rtol,
                   atol=atol, maxiter=maxiter, solver=solver, throw=throw, callback=callback,
                   deprecated=deprecated)
    return _forward(WHERE_SPARSE, a, b, C, st), st


@custom_vjp(_make_bwd(lambda: quadratic_ot),  # type: ignore[has-type]
            _make_shapes(False), QuadraticOTResult, public_name=WHERE_QUADRATIC)
def quadratic_ot(a: Array, b: Array, C: Array, gamma: ArrayLike, *,
                 formulation: str = "dual", rtol: float | None = None, atol: float = 0.0,
                 maxiter: int = 1000, solver: str = "lbfgs", throw: bool = False,
                 callback: Callback[OTState] | None = None, **deprecated: Any,
                 ) -> tuple[QuadraticOTResult, Any]:
    """Quadratically regularised optimal transport (:func:`sparse_ot` with ``k = n``).

    Solves ``min <T, C> + (gamma/2) ||T||_F^2`` over plans with marginals ``a``, ``b``
    (Blondel, Seguy & Rolet, AISTATS 2018). The plan is sparse without any constraint:
    an entry is nonzero only where ``alpha_i + beta_j > c_ij``.

    Parameters
    ----------
    a, b, C, gamma, rtol, atol, maxiter, solver, throw, callback
        As for :func:`sparse_ot` (``tol=`` / ``max_iter=`` are deprecated as there).
    formulation : {"dual", "semi-dual"}
        Default ``"dual"``: with no top-k its objective needs no sorting, one pass over
        ``C`` per evaluation; ``"semi-dual"`` projects every column onto the simplex
        (a sort per column) but usually needs fewer iterations.
    **deprecated
        The option names used before the solver contract, ``tol`` and ``max_iter``, still
        work with a ``DeprecationWarning`` (see ``rtol``, ``atol`` and ``maxiter`` above);
        any other keyword raises ``TypeError``.

    Returns
    -------
    SparseOTResult
        As for :func:`sparse_ot`, with ``k = n`` (``plan_indices[j]`` lists all rows,
        largest entries first). ``cost`` (the dual value) equals ``primal_cost`` at
        convergence (no duality
        gap: the problem is convex).

    Raises
    ------
    ValueError, TypeError
        Bad input: a wrong shape or dtype, an unknown option value, an option out of range,
        arrays from two libraries. The message names the argument, what was received and
        what would work.
    diffsolve.SolveError
        Only with ``throw=True``: the subclass matching the result's ``status``
        (:class:`~diffsolve.MaxIterationsError`, :class:`~diffsolve.NonFiniteError`, ...),
        carrying the :class:`QuadraticOTResult` as ``result``.

    Warns
    -----
    diffsolve.ConvergenceWarning
        With ``throw=False`` (the default), when the solve stops without meeting its
        tolerance; the :class:`QuadraticOTResult` is returned and its ``message`` says what to
        try. A budget requested on purpose (``rtol = atol = 0``) does not warn.

    See Also
    --------
    diffsolve.ot.sparse_ot : With at most ``k`` nonzeros per column.
    diffsolve.ot.sinkhorn : Entropic OT (dense plans).

    Examples
    --------
    >>> import numpy as np
    >>> import diffsolve as ds
    >>> C = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    >>> res = ds.ot.quadratic_ot(np.full(3, 1 / 3), np.full(3, 1 / 3), C, gamma=0.1)
    >>> np.round(res.plan, 6)
    array([[0.333333, 0.      , 0.      ],
           [0.      , 0.333333, 0.      ],
           [0.      , 0.      , 0.333333]])
    >>> bool(abs(res.cost - res.primal_cost) < 1e-9)
    True
    """
    st = _settings(WHERE_QUADRATIC, quadratic_ot.fwd, None, gamma, formulation=formulation,
                   rtol=rtol, atol=atol, maxiter=maxiter, solver=solver, throw=throw,
                   callback=callback, deprecated=deprecated)
    return _forward(WHERE_QUADRATIC, a, b, C, st), st
