"""``diffsolve.ot.sinkhorn_newton_sparse``: Sinkhorn–Newton–Sparse (Tang, Shavlovsky, Rahmanian,
Tardini, Thekumparampil, Xiao, Ying, "Accelerating Sinkhorn algorithm with sparse Newton
iterations", ICLR 2024).

The entropic problem has the concave dual ("Lyapunov potential", Tang et al. eq. (3), written
here in the log-domain potentials of :func:`~diffsolve.ot.sinkhorn`)

    F(f, g) = aᵀf + bᵀg - eps Σ_ij P_ij,    P_ij = exp((f_i + g_j - C_ij) / eps),

with gradient ``(a - P 1, b - Pᵀ 1)`` (the marginal violations) and Hessian

    ∇²F = -(1/eps) M,    M = [[diag(P 1), P], [Pᵀ, diag(Pᵀ 1)]].

Sinkhorn is block coordinate ascent on F and slows down badly for small eps; SNS runs a
short Sinkhorn warm-up and then Newton steps ``M Δ = eps ∇F`` with ``P`` in the off-diagonal
blocks replaced by its largest entries (Tang et al. Algorithm 1): near the optimum of a
small-eps problem the plan is nearly sparse, so the sparsified Newton matrix is close to
the true one and each step costs a few sparse products plus the dense passes that any
Sinkhorn iteration costs too. The diagonal blocks ``diag(P 1)``, ``diag(Pᵀ 1)`` are kept
exact, so the sparsified ``M`` stays positive semidefinite (diagonally dominant).

Implementation choices (why, beyond the paper):

- The Newton system is solved on the Schur complement of the ``f`` block,
  ``S = diag(Pᵀ1) - P̃ᵀ diag(P 1)⁻¹ P̃`` (size ``m``), by Jacobi-preconditioned CG
  (truncated at ``cg_rtol``, "inexact Newton"). ``M`` is singular along ``(1, -1)``
  (``F(f + t, g - t) = F(f, g)`` when the masses are equal): the step of the ``g`` entry
  with the largest weight is fixed to 0, which removes that direction.
- The CG is :func:`diffsolve.krylov.cg` (the compiled kernels fuse the same Jacobi-PCG
  into one call): a truncated Newton step takes the current iterate whatever CG's status
  (tolerance met, limit reached, or a non-positive curvature on the numerically singular
  part, which krylov reports as ``BREAKDOWN`` with the iterate it had): a truncated
  Newton-CG direction is still an ascent direction (Nocedal & Wright, *Numerical
  Optimization*, 2nd ed., section 7.1).
- Armijo backtracking on F, with the change of F computed as
  ``-eps (ΣP_new - ΣP) + t (aᵀΔf + bᵀΔg)`` (no cancellation of the large ``aᵀf`` terms)
  and a rounding allowance, since near the optimum the predicted increase is far below
  the rounding of F itself. A step that fails ``ls_max_steps`` halvings falls back to
  ``n_fallback`` Sinkhorn iterations.
- Sparsification and the plan passes are the compiled kernels ``ot_newton.*`` (Numba on
  NumPy, CUDA on CuPy); on other array-API namespaces (array_api_strict) a dense path
  keeps the thresholded plan dense and uses ``xp.sort`` for the threshold (small problems).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import array_api_extra as xpx

from .. import _backend as B
from .. import _validate as V
from .. import krylov
from .._autodiff import custom_vjp
from .._status import Status, report
from .._tolerance import default_rtol
from .._typing import Array, ArrayLike, Callback
from ._errors import _broadcast_shapes, check_arrays, check_eps, check_measure, check_ot_inputs
from ._implicit import entropic_potentials_vjp, normalise_gauge
from ._options import RTOL, legacy_options
from ._result import OTResult, OTState
from ._sinkhorn import SinkhornSettings
from ._sinkhorn import _solve as _sinkhorn_solve

__all__ = ["SNSResult", "SNSSettings", "SNSState", "sinkhorn_newton_sparse"]

WHERE = "diffsolve.ot.sinkhorn_newton_sparse"


@dataclass(frozen=True)
class SNSResult(OTResult):
    """Result of :func:`sinkhorn_newton_sparse`: an :class:`~diffsolve.ot.OTResult` plus
    how the work split between the two stages.

    ``n_iters`` counts **Newton** iterations (one sparse Newton system each). The extra
    fields, per problem (arrays of the batch shape for a batched call), have fixed shapes
    (so that the result is a JAX pytree under ``diffsolve.to_jax``; the error after each
    Newton step is what a ``callback`` sees):

    Attributes
    ----------
    n_sinkhorn : int or array
        Sinkhorn iterations run: the warm-up plus any fallback iterations.
    n_cg : int or array
        CG iterations summed over all Newton steps.
    n_fallbacks : int or array
        Newton steps whose line search failed and were replaced by Sinkhorn iterations.

    See Also
    --------
    diffsolve.ot.sinkhorn_newton_sparse : Returns this.
    diffsolve.ot.OTResult : The fields shared with Sinkhorn.

    Examples
    --------
    >>> import numpy as np
    >>> import diffsolve as ds
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.normal(size=(30, 2)), rng.normal(size=(30, 2)) + 1
    >>> C = ((x[:, None] - y[None]) ** 2).sum(-1); C /= C.max()
    >>> a = b = np.full(30, 1 / 30)
    >>> res = ds.ot.sinkhorn_newton_sparse(a, b, C, 1e-3)
    >>> bool(res.converged), int(res.n_sinkhorn) > 0, int(res.n_cg) > 0
    (True, True, True)
    """

    n_sinkhorn: Any = 0
    n_cg: Any = 0
    n_fallbacks: Any = 0

    differentiable_fields: ClassVar[tuple[str, ...]] = ("plan", "f", "g", "cost")
    solver_name: ClassVar[str] = WHERE
    advice: ClassVar[str] = ("increase maxiter or n_sinkhorn, raise density (a denser "
                             "Hessian), or use a larger eps")


@dataclass(frozen=True)
class SNSState(OTState):
    """What ``callback(state)`` of :func:`sinkhorn_newton_sparse` sees after each Newton
    step (frozen; returning ``True`` stops the solve with ``Status.STOPPED``).

    On top of :class:`~diffsolve.ot._result.OTState` (``n_iters`` = Newton steps so far,
    ``f``, ``g`` = the current potentials of the positive-weight entries, ``error``,
    ``eps``, ``problem``):

    Attributes
    ----------
    step : float
        The accepted step length (0 for a Sinkhorn fallback).
    nnz : int
        Plan entries kept in the sparsified Hessian.
    cg_iters : int
        CG iterations of this Newton step.
    n_sinkhorn : int
        Sinkhorn iterations so far (warm-up and fallbacks).

    See Also
    --------
    diffsolve.ot.sinkhorn_newton_sparse : Its ``callback`` receives this.
    diffsolve.ot.OTState : The fields shared with Sinkhorn.

    Examples
    --------
    >>> import numpy as np
    >>> import diffsolve as ds
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.normal(size=(30, 2)), rng.normal(size=(30, 2)) + 1
    >>> C = ((x[:, None] - y[None]) ** 2).sum(-1); C /= C.max()
    >>> a = b = np.full(30, 1 / 30)
    >>> seen = []
    >>> res = ds.ot.sinkhorn_newton_sparse(a, b, C, 1e-3, callback=seen.append)
    >>> len(seen) == res.n_iters, all(s.nnz > 0 for s in seen)
    (True, True)
    """

    step: float = 0.0
    nnz: int = 0
    cg_iters: int = 0
    n_sinkhorn: int = 0


# ---------------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SNSSettings:
    """The options of one :func:`sinkhorn_newton_sparse` call, validated once.

    Attributes
    ----------
    eps, rtol, atol, maxiter, n_sinkhorn, sinkhorn_switch, density, max_density,
    drop_tol, threshold, cg_rtol, cg_maxiter, ls_c1, ls_beta, ls_max_steps,
    n_fallback, error_measure, callback, throw
        The arguments of the same names of :func:`diffsolve.ot.sinkhorn_newton_sparse`, validated (a
        frozen dataclass: read it, do not build it).

    See Also
    --------
    diffsolve.ot.sinkhorn_newton_sparse : The function whose options these are.

    Examples
    --------
    >>> import dataclasses
    >>> import diffsolve as ds
    >>> "rtol" in {f.name for f in dataclasses.fields(ds.ot.SNSSettings)}
    True
    """

    eps: float
    rtol: float | None  # None: dtype-aware (_tolerance.default_rtol), set by the solve
    atol: float
    maxiter: int
    n_sinkhorn: int
    sinkhorn_switch: int
    density: float | None
    max_density: float
    drop_tol: float
    threshold: float | None
    cg_rtol: float
    cg_maxiter: int | None
    ls_c1: float
    ls_beta: float
    ls_max_steps: int
    n_fallback: int
    error_measure: str
    callback: Any
    throw: bool

    @property
    def fixed_budget(self) -> bool:
        """``rtol = atol = 0``: exactly ``maxiter`` Newton steps after the warm-up."""
        return self.rtol == 0 and self.atol == 0


def _settings(eps, *, rtol, atol, maxiter, n_sinkhorn, sinkhorn_switch, density, max_density,
              drop_tol, threshold, cg_rtol, cg_maxiter, ls_c1, ls_beta, ls_max_steps,
              n_fallback, error_measure, callback, throw, deprecated, quiet=False):
    o = legacy_options(WHERE, sinkhorn_newton_sparse.fwd, deprecated,
                       {"rtol": rtol, "atol": atol, "maxiter": maxiter}, tol_is="atol",
                       quiet=quiet)
    rtol = V.nonnegative_real(WHERE, "rtol", o["rtol"], allow_none=True)
    atol = V.nonnegative_real(WHERE, "atol", o["atol"])
    if density is not None and threshold is not None:
        raise ValueError(f"{WHERE}: give density (a fraction of the plan's entries to keep) "
                         "or threshold (keep plan entries >= threshold), not both")
    if density is not None:
        density = V.interval(WHERE, "density", density, 0.0, 1.0, hi_open=False,
                           example=" (e.g. 10 / n: about ten entries per row)")
    if threshold is not None:
        threshold = V.interval(WHERE, "threshold", threshold, 0.0, math.inf, lo_open=False,
                             example=" (an absolute value on plan entries, e.g. 1e-3 / n)")
    return SNSSettings(
        eps=check_eps(WHERE, eps), rtol=rtol, atol=atol,
        maxiter=V.positive_int(WHERE, "maxiter", o["maxiter"]),
        n_sinkhorn=V.positive_int(WHERE, "n_sinkhorn", n_sinkhorn),
        sinkhorn_switch=V.integer(WHERE, "sinkhorn_switch", sinkhorn_switch, minimum=0),
        density=density,
        max_density=V.interval(WHERE, "max_density", max_density, 0.0, 1.0, hi_open=False),
        drop_tol=V.interval(WHERE, "drop_tol", drop_tol, 0.0, 1.0, lo_open=False),
        threshold=threshold,
        cg_rtol=V.interval(WHERE, "cg_rtol", cg_rtol, 0.0, 1.0),
        cg_maxiter=V.positive_int(WHERE, "cg_maxiter", cg_maxiter, allow_none=True),
        ls_c1=V.interval(WHERE, "ls_c1", ls_c1, 0.0, 0.5),
        ls_beta=V.interval(WHERE, "ls_beta", ls_beta, 0.0, 1.0),
        ls_max_steps=V.positive_int(WHERE, "ls_max_steps", ls_max_steps),
        n_fallback=V.positive_int(WHERE, "n_fallback", n_fallback),
        error_measure=check_measure(WHERE, error_measure),
        callback=V.callback(WHERE, callback),
        throw=V.boolean(WHERE, "throw", throw),
    )


# ---------------------------------------------------------------------------------------
# the two array paths: compiled kernels (NumPy, CuPy) and dense standard array API
# ---------------------------------------------------------------------------------------
class _KernelPath:
    """Plan passes and the sparsified Hessian through the ``ot_newton`` kernels."""

    def __init__(self, xp, C, eps):
        self.xp = xp
        self.C = B.contiguous(xp, C)
        self.eps = eps
        n, m = C.shape
        dev = B.device(C)
        self.plan_marginals = B.get_kernel(xp, "ot_newton.plan_marginals")
        self.kth_largest = B.get_kernel(xp, "ot_newton.kth_largest")
        self.threshold_csr = B.get_kernel(xp, "ot_newton.threshold_csr")
        self.csr_transpose = B.get_kernel(xp, "ot_newton.csr_transpose")
        self.csr_matvec = B.get_kernel(xp, "sparse.csr_matvec")
        self.newton_step = B.get_kernel(xp, "ot_newton.newton_step")
        # two plan buffers: the accepted point and the line-search trial
        self._buffers = [xp.empty((n, m), dtype=C.dtype, device=dev) for _ in range(2)]
        self._next = 0

    def evaluate(self, f, g):
        """``(P, r, c, ΣP)`` at ``(f, g)``, or ``None`` when the plan overflows."""
        xp = self.xp
        P = self._buffers[self._next]
        r = xp.empty(f.shape, dtype=f.dtype, device=B.device(f))
        c = xp.empty(g.shape, dtype=g.dtype, device=B.device(g))
        self.plan_marginals(B.contiguous(xp, f), B.contiguous(xp, g), self.C,
                            1.0 / self.eps, P, r, c)
        total = float(xp.sum(r))
        if not math.isfinite(total):
            return None
        return P, r, c, total

    def accept(self):
        # the trial buffer becomes the current plan; the other one is free for the next trial
        self._next = 1 - self._next

    def sparsify(self, P, tau):
        indptr, indices, data = self.threshold_csr(P, tau)
        return _SparseBlock(self, indptr, indices, data, P.shape)

    def kth(self, P, k):
        return self.kth_largest(P, k)


class _SparseBlock:
    """The thresholded plan ``P̃`` in CSR, with its transpose, for the Schur products."""

    def __init__(self, path, indptr, indices, data, shape):
        self.path = path
        self.xp = path.xp
        self.shape = shape
        self.nnz = int(indices.shape[0])
        self.A = (indptr, indices, data)
        self.At = path.csr_transpose(indptr, indices, data, shape[1])

    def mass(self):
        return float(self.xp.sum(self.A[2]))

    def matvec(self, v):  # P̃ v
        xp = self.xp
        out = xp.empty((self.shape[0],), dtype=v.dtype, device=B.device(v))
        return self.path.csr_matvec(*self.A, B.contiguous(xp, v), out)

    def rmatvec(self, u):  # P̃ᵀ u
        xp = self.xp
        out = xp.empty((self.shape[1],), dtype=u.dtype, device=B.device(u))
        return self.path.csr_matvec(*self.At, B.contiguous(xp, u), out)

    def rmatvec_squared(self, u):  # (P̃ ∘ P̃)ᵀ u, for the Jacobi preconditioner
        xp = self.xp
        indptr, indices, data = self.At
        out = xp.empty((self.shape[1],), dtype=u.dtype, device=B.device(u))
        return self.path.csr_matvec(indptr, indices, data * data, B.contiguous(xp, u), out)

    def newton_step(self, r, c, grad_f, grad_g, eps, fixed, rtol, maxiter):
        # the Schur elimination, Jacobi-PCG and back-substitution in one compiled call
        # (Numba) or its CUDA twin
        xp = self.xp
        dev = B.device(r)
        df = xp.empty(r.shape, dtype=r.dtype, device=dev)
        dg = xp.empty(c.shape, dtype=c.dtype, device=dev)
        cont = [B.contiguous(xp, v) for v in (r, c, grad_f, grad_g)]
        its = self.path.newton_step(*self.A, *self.At, *cont, eps, fixed, rtol, maxiter, df, dg)
        return df, dg, its


class _DensePath:
    """Standard array-API path: dense plan, dense thresholded plan (small problems)."""

    def __init__(self, xp, C, eps):
        self.xp = xp
        self.C = C
        self.eps = eps
        n, m = C.shape
        # the largest exponent whose exp, summed over n m entries, stays finite
        self.max_logit = math.log(float(xp.finfo(C.dtype).max)) - math.log(n * m) - 1.0

    def evaluate(self, f, g):
        xp = self.xp
        logits = (f[:, None] + g[None, :] - self.C) / self.eps
        if not float(xp.max(logits)) < self.max_logit:
            return None  # would overflow: reject the point without a floating-point warning
        P = xp.exp(logits)
        r = xp.sum(P, axis=1)
        c = xp.sum(P, axis=0)
        return P, r, c, float(xp.sum(r))

    def accept(self):
        pass

    def kth(self, P, k):
        xp = self.xp
        flat = xp.sort(xp.reshape(P, (-1,)))
        return float(flat[flat.shape[0] - k])

    def sparsify(self, P, tau):
        xp = self.xp
        keep = (P >= tau) & (P > 0)
        return _DenseBlock(xp, xp.where(keep, P, xp.zeros_like(P)))


class _DenseBlock:
    def __init__(self, xp, Pk):
        self.xp = xp
        self.Pk = Pk
        self.shape = tuple(Pk.shape)
        self.nnz = int(xp.sum(xp.astype(Pk > 0, xp.int64)))

    def mass(self):
        return float(self.xp.sum(self.Pk))

    def matvec(self, v):
        return self.xp.matmul(self.Pk, v)

    def rmatvec(self, u):
        return self.xp.matmul(u, self.Pk)

    def rmatvec_squared(self, u):
        return self.xp.matmul(u, self.Pk * self.Pk)

    def newton_step(self, r, c, grad_f, grad_g, eps, fixed, rtol, maxiter):
        # the same elimination as the compiled kernel, in standard array-API operations
        xp = self.xp
        m = c.shape[0]
        dt = r.dtype
        tiny = float(xp.finfo(dt).smallest_normal)
        eps_mach = float(xp.finfo(dt).eps)
        free = xpx.at(xp.ones((m,), dtype=dt, device=B.device(c)))[fixed].set(0.0)
        pos = r > tiny
        rinv = xp.where(pos, 1.0 / xp.where(pos, r, xp.ones_like(r)), xp.zeros_like(r))
        diag = xp.maximum(c - self.rmatvec_squared(rinv), 64 * eps_mach * c + tiny)
        minv = free / diag
        ef = eps * grad_f
        rhs = free * (eps * grad_g - self.rmatvec(rinv * ef))

        def schur(v):
            return free * (c * v - self.rmatvec(rinv * self.matvec(v)))

        # truncated Newton-CG: whatever the status, krylov's x is the current iterate (on
        # non-positive curvature, BREAKDOWN, CG stops stepping and keeps it), and a
        # truncated CG direction is still an ascent direction; a NONFINITE status gives NaN,
        # which the line search rejects (a Sinkhorn fallback follows)
        sol = krylov.cg(schur, rhs, M=minv, rtol=rtol, atol=0.0, maxiter=maxiter)
        dg = sol.x
        df = rinv * (ef - self.matvec(dg))
        return df, dg, sol.n_iters


def _path(xp, C, eps):
    if B.get_kernel(xp, "sparse.csr_matvec") is not None:
        return _KernelPath(xp, C, eps)
    return _DensePath(xp, C, eps)


# ---------------------------------------------------------------------------------------
# one problem
# ---------------------------------------------------------------------------------------
def _error(r, c, a, b, xp, measure):
    if measure == "l2-pot":
        d = c - b
        return float(xp.sqrt(xp.sum(d * d)))
    return float(xp.sum(xp.abs(r - a)) + xp.sum(xp.abs(c - b)))


def _sinkhorn_steps(a, b, C, opts: SNSSettings, tol, maxiter, f0, g0, trace=None):
    """At most ``maxiter`` iterations of the shared log-domain Sinkhorn (its private
    solve: a warm-up stopped early is expected here, so nothing is reported; the caller
    reads the status). ``trace`` (a list) receives ``(iterations, error)`` at each of
    Sinkhorn's checks, iterations counted across calls. Returns ``(f, g, iterations,
    status)``."""
    callback = None
    if trace is not None:
        offset = trace[-1][0] if trace else 0

        def callback(state):
            trace.append((offset + state.n_iters, float(state.error)))

    settings = SinkhornSettings(
        eps=opts.eps, rtol=0.0, atol=tol, maxiter=maxiter, error_measure=opts.error_measure,
        check_every=10, eps_scaling=None, acceleration=None, gradient="implicit",
        kernel="auto", throw=False, callback=callback)
    xp = B.array_namespace(a, b, C)
    res = _sinkhorn_solve(xp, a, b, C, (), settings, f0, g0)
    return res.f, res.g, int(res.n_iters), res.status


def _predicted_sinkhorn_iters(trace, tol):
    """Iterations Sinkhorn still needs to reach ``tol`` at the linear rate of its last two
    checks (None if it is not contracting, or for a fixed budget, ``tol = 0``)."""
    if len(trace) < 2 or not tol > 0:
        return None
    (i1, e1), (i2, e2) = trace[-2], trace[-1]
    if e2 <= tol:
        return 0
    if not (i2 > i1 and 0 < e2 < e1):
        return None
    rate = math.log(e2 / e1) / (i2 - i1)
    return math.ceil(math.log(tol / e2) / rate)


def _solve_one(a, b, C, eps, opts: SNSSettings, xp, problem_index, tol):
    """SNS on one problem with positive weights, stopping at marginal error ``tol``;
    returns potentials and bookkeeping (``status`` a :class:`~diffsolve.Status`)."""
    n, m = C.shape
    dt = C.dtype
    path = _path(xp, C, eps)
    trace: list[tuple[int, float]] = []
    f, g, n_sk, sk_status = _sinkhorn_steps(a, b, C, opts, tol, opts.n_sinkhorn, None, None,
                                            trace)
    done = sk_status == Status.SUCCESS
    # Sinkhorn-or-Newton: where Sinkhorn is contracting fast enough to reach tol within
    # `sinkhorn_switch` more iterations (a few Newton steps cost that much), let it finish;
    # the rate is re-measured after every chunk, so a Sinkhorn that slows down hands over
    budget = opts.sinkhorn_switch
    while not done and budget > 0 and sk_status != Status.NONFINITE:
        need = _predicted_sinkhorn_iters(trace, tol)
        if need is None or need > budget:
            break
        # chunks of at most 100 iterations: Sinkhorn's rate often drops after its first
        # fast phase, and a re-measured rate then hands over to Newton early
        chunk = min(budget, 100, math.ceil(1.25 * need) + 10)
        f, g, its, sk_status = _sinkhorn_steps(a, b, C, opts, tol, chunk, f, g, trace)
        done = sk_status == Status.SUCCESS
        n_sk += its
        budget -= its
    state = path.evaluate(f, g) if sk_status != Status.NONFINITE else None
    if state is None:
        # the warm-up's potentials are not finite, or their plan overflows: report it
        # (status NONFINITE) with the warm-up's plan rather than raise a bare error
        P = xp.exp((f[:, None] + g[None, :] - C) / eps)
        return {"f": f, "g": g, "plan": P, "n_iters": 0, "n_sinkhorn": n_sk, "n_cg": 0,
                "n_fallbacks": 0, "error": math.inf, "status": Status.NONFINITE}
    path.accept()
    P, r, c, total = state
    err = _error(r, c, a, b, xp, opts.error_measure)
    adaptive = opts.density is None and opts.threshold is None
    if opts.density is not None:
        k_keep = max(1, min(n * m, math.ceil(opts.density * n * m)))
    else:
        k_keep = min(n * m, 10 * max(n, m))
    k_max = max(k_keep, min(n * m, math.ceil(opts.max_density * n * m)))
    cg_maxiter = opts.cg_maxiter if opts.cg_maxiter is not None else max(50, 2 * m)
    # the g entry fixed at 0 in every Newton step (removes the null direction (1, -1)):
    # the one with the largest weight, whose Schur row is best conditioned
    fixed = int(xp.argmax(b))
    eps_mach = float(xp.finfo(dt).eps)
    n_newton = n_cg = n_fallbacks = 0
    stopped = False
    # a fixed budget (rtol = atol = 0) runs maxiter Newton steps whatever the error
    while (opts.fixed_budget or err > tol) and math.isfinite(err) \
            and n_newton < opts.maxiter:
        n_newton += 1
        grad_f, grad_g = a - r, b - c
        tau = opts.threshold if opts.threshold is not None else path.kth(P, k_keep)
        block = path.sparsify(P, tau)
        while adaptive and k_keep < k_max and block.mass() < (1 - opts.drop_tol) * total:
            # the kept entries miss more than drop_tol of the plan's mass: the sparsified
            # Hessian would misjudge the weak couplings, so keep twice as many
            k_keep = min(k_max, 2 * k_keep)
            block = path.sparsify(P, path.kth(P, k_keep))
        df, dg, its = block.newton_step(r, c, grad_f, grad_g, eps, fixed, opts.cg_rtol,
                                        cg_maxiter)
        n_cg += its
        slope = float(xp.sum(grad_f * df) + xp.sum(grad_g * dg))
        lin = float(xp.sum(a * df) + xp.sum(b * dg))
        accepted = False
        t = 1.0
        if slope > 0 and math.isfinite(slope):
            for _ in range(opts.ls_max_steps):
                trial = path.evaluate(f + t * df, g + t * dg)
                if trial is not None:
                    gain = -eps * (trial[3] - total) + t * lin
                    allowance = 16 * eps_mach * eps * max(total, trial[3])
                    if gain >= opts.ls_c1 * t * slope - allowance:
                        accepted = True
                        break
                t *= opts.ls_beta
        if accepted:
            path.accept()
            f, g = f + t * df, g + t * dg
            P, r, c, total = trial
        else:
            # Newton made no progress (far from the optimum, or the sparsified Hessian is
            # too poor): fall back to Sinkhorn, which always increases F
            n_fallbacks += 1
            f, g, sk_its, sk_status = _sinkhorn_steps(a, b, C, opts, tol, opts.n_fallback,
                                                      f, g)
            n_sk += sk_its
            state = path.evaluate(f, g) if sk_status != Status.NONFINITE else None
            if state is None:
                err = math.inf
                break
            path.accept()
            P, r, c, total = state
        prev, err = err, _error(r, c, a, b, xp, opts.error_measure)
        if adaptive and err > 0.5 * prev and k_keep < k_max:
            # a sparsified Hessian that misses the weak couplings between groups of
            # points makes Newton crawl (its curvature along those modes is far too
            # large): keep twice as many plan entries from now on
            k_keep = min(k_max, 2 * k_keep)
        if opts.callback is not None and opts.callback(SNSState(
                n_iters=n_newton, f=f, g=g, error=err, eps=eps, problem=problem_index,
                step=t if accepted else 0.0, nnz=block.nnz, cg_iters=int(its),
                n_sinkhorn=n_sk)):
            stopped = True
            break
    ok = err <= tol and math.isfinite(err)
    if not math.isfinite(err):
        status = Status.NONFINITE
    elif ok and not opts.fixed_budget:
        status = Status.SUCCESS
    elif stopped:
        status = Status.STOPPED
    else:
        status = Status.MAX_ITERATIONS
    return {"f": f, "g": g, "plan": P, "n_iters": n_newton, "n_sinkhorn": n_sk, "n_cg": n_cg,
            "n_fallbacks": n_fallbacks, "error": err, "status": status}


def _solve_support(a, b, C, eps, opts, xp, problem_index, tol):
    """Solve on the support of (a, b); zero weights get potential -inf (a zero plan row)."""
    ma, mb = a > 0, b > 0
    if bool(xp.all(ma)) and bool(xp.all(mb)):
        return _solve_one(a, b, C, eps, opts, xp, problem_index, tol)
    ia, = xp.nonzero(ma)
    jb, = xp.nonzero(mb)
    sub = xp.take(xp.take(C, ia, axis=0), jb, axis=1)
    out = _solve_one(xp.take(a, ia), xp.take(b, jb), sub, eps, opts, xp, problem_index, tol)
    dev = B.device(C)
    f = xpx.at(xp.full(a.shape, -math.inf, dtype=a.dtype, device=dev))[ia].set(out["f"])
    g = xpx.at(xp.full(b.shape, -math.inf, dtype=b.dtype, device=dev))[jb].set(out["g"])
    rows = xp.zeros((ia.shape[0], C.shape[1]), dtype=C.dtype, device=dev)
    rows = xpx.at(rows)[:, jb].set(out["plan"])
    plan = xpx.at(xp.zeros(C.shape, dtype=C.dtype, device=dev))[ia, :].set(rows)
    return {**out, "f": f, "g": g, "plan": plan}


def _regularised_cost(a, b, eps, f, g, plan, xp):
    """``W = <C, P> + eps Σ P (log P - 1) = Σ_i f_i (P1)_i + Σ_j g_j (Pᵀ1)_j - eps ΣP``
    (as ``log P = (f_i + g_j - C_ij) / eps``), without another pass over ``C``; rows and
    columns of zero weight (potential -inf, plan 0) contribute 0."""
    r = xp.sum(plan, axis=-1)
    c = xp.sum(plan, axis=-2)
    fz = xp.where(a > 0, f, xp.zeros_like(f))
    gz = xp.where(b > 0, g, xp.zeros_like(g))
    return xp.sum(fz * r, axis=-1) + xp.sum(gz * c, axis=-1) - eps * xp.sum(r, axis=-1)


# ---------------------------------------------------------------------------------------
# public function
# ---------------------------------------------------------------------------------------
def _sns_bwd(ctx, cot):
    a0, b0, C0 = ctx.args[:3]
    xp = B.array_namespace(a0, b0, C0, where=WHERE)
    if ctx.residuals is not None:
        a, b, C, opts = ctx.residuals
    else:  # the JAX adapter keeps arrays only: re-read the call, without its warnings
        kw = dict(ctx.kwargs)
        eps = ctx.args[3] if len(ctx.args) > 3 else kw.pop("eps")
        defaults = {k: p.default for k, p in sinkhorn_newton_sparse.signature.parameters.items()
                    if p.default is not inspect.Parameter.empty}
        known = {k: kw.pop(k, v) for k, v in defaults.items()}
        opts = _settings(eps, **known, deprecated=kw, quiet=True)
        a, b, C, _ = check_ot_inputs(WHERE, a0, b0, C0, xp)
    eps = opts.eps
    res = ctx.result
    a_bar, b_bar, C_bar = entropic_potentials_vjp(
        a, b, C, eps, res.f, res.g, res.plan, cot["plan"], cot["f"], cot["g"],
        xp.astype(cot["cost"], res.plan.dtype), xp, where=WHERE)
    grads = []
    for orig, bar in ((a0, a_bar), (b0, b_bar), (C0, C_bar)):
        # undo the broadcasting of check_ot_inputs: sum over the added batch dimensions
        extra = bar.ndim - orig.ndim
        if extra:
            bar = xp.sum(bar, axis=tuple(range(extra)))
        axes = tuple(i for i, (s, t) in enumerate(zip(orig.shape, bar.shape)) if s == 1 != t)
        if axes:
            bar = xp.sum(bar, axis=axes, keepdims=True)
        if xp.isdtype(orig.dtype, "real floating"):
            bar = xp.astype(bar, orig.dtype)
        grads.append(bar)
    return (*grads, *(None for _ in ctx.args[3:]))


def _sns_shapes(a, b, C, eps, **kwargs):
    batch = _broadcast_shapes(tuple(a.shape)[:-1], tuple(b.shape)[:-1], tuple(C.shape)[:-2])
    n, m = int(a.shape[-1]), int(b.shape[-1])
    dtype = B.promote_real_floating(a.dtype, b.dtype, C.dtype)
    return {
        "plan": ((*batch, n, m), dtype), "f": ((*batch, n), dtype), "g": ((*batch, m), dtype),
        "cost": (batch, dtype), "n_iters": (batch, "int64"), "converged": (batch, "bool"),
        "error": (batch, dtype), "status": (batch, "int64"), "tolerance": (batch, dtype),
        "n_sinkhorn": (batch, "int64"), "n_cg": (batch, "int64"),
        "n_fallbacks": (batch, "int64"),
    }


@custom_vjp(_sns_bwd, _sns_shapes, SNSResult, public_name=WHERE)
def sinkhorn_newton_sparse(a: Array, b: Array, C: Array, eps: ArrayLike, *,
                           rtol: float | None = None, atol: float = 0.0, maxiter: int = 100,
                           n_sinkhorn: int = 50, sinkhorn_switch: int = 500,
                           density: float | None = None, max_density: float = 1.0,
                           drop_tol: float = 1e-3, threshold: float | None = None,
                           cg_rtol: float = 1e-3, cg_maxiter: int | None = None,
                           ls_c1: float = 1e-4, ls_beta: float = 0.5, ls_max_steps: int = 20,
                           n_fallback: int = 20, error_measure: str = "l1",
                           callback: Callback[SNSState] | None = None, throw: bool = False,
                           **deprecated: Any) -> tuple[SNSResult, Any]:
    """Entropic optimal transport by Sinkhorn–Newton–Sparse (Tang et al., ICLR 2024).

    Solves the same problem as :func:`diffsolve.ot.sinkhorn`,
    ``min_P <C, P> + eps Σ P_ij (log P_ij - 1)`` subject to ``P 1 = a``, ``Pᵀ 1 = b``:
    ``n_sinkhorn`` log-domain Sinkhorn iterations, then Newton steps on the dual with the
    plan in the Hessian replaced by its largest entries, each step solved by CG and
    damped by a backtracking line search. Where Sinkhorn converges linearly at a rate that
    degrades as eps shrinks (tens of thousands of iterations to 1e-10 at eps = 1e-3 on
    a normalised cost), the Newton stage converges in tens of steps.

    Parameters
    ----------
    a, b : arrays, shapes (..., n) and (..., m)
        Nonnegative marginals with equal total mass (zero weights are allowed: their
        potentials are ``-inf`` and their plan rows/columns 0).
    C : array, shape (..., n, m)
        Finite costs. Leading batch dimensions broadcast; the problems of a batch are solved
        one after the other (a loop), each with its own convergence.
    eps : float
        Entropic regularisation (> 0), in cost units.
    rtol, atol : float >= 0
        Stop when the marginal error (``error_measure``) is ``<= atol + rtol * sum(a)``.
        ``rtol=None`` (default) is ``1e-9`` in float64 (for unit mass an absolute 1e-9)
        and ``64 eps`` (7.6e-6) in float32, which float32 can reach. ``rtol = atol = 0``: a fixed
        budget of ``n_sinkhorn`` warm-up iterations and ``maxiter`` Newton steps. Replaces
        ``tol=`` (deprecated: ``tol=x`` is ``atol=x, rtol=0``).
    maxiter : int
        Newton iterations at most. Replaces ``max_iter=`` (deprecated).
    n_sinkhorn : int
        Sinkhorn warm-up iterations (stage 1; stops earlier if the tolerance is reached).
    sinkhorn_switch : int
        After the warm-up, Sinkhorn goes on (in chunks, its rate re-measured after each)
        while its observed linear rate predicts ``tol`` within this many further
        iterations — about what a few Newton steps cost — so that easy problems do not pay
        for Newton steps; 0 gives Tang et al.'s fixed warm-up.
    density : float in (0, 1], optional
        Fraction of the plan's ``n m`` entries kept in the Hessian: the ``ceil(density n m)``
        largest (ties kept), fixed. Tang et al. use ``2/n`` to ``15/n``. Default (None):
        adaptive, starting from ``10 max(n, m)`` entries and doubling, up to
        ``max_density``, while the kept entries hold less than ``1 - drop_tol`` of the
        plan's mass and whenever a Newton step fails to halve the error. A plan that is
        not sparse at this eps (point clouds with eps ~ 1e-3 of the cost range need
        hundreds of entries per row) needs the extra entries for fast convergence: a
        sparsified Hessian that misses the weak couplings between groups of points
        overestimates the curvature along them and Newton crawls.
    max_density : float in (0, 1]
        Cap of the adaptive density.
    drop_tol : float in [0, 1)
        Plan mass the adaptive sparsification may drop (fraction of the total).
    threshold : float, optional
        Instead of ``density``: keep the plan entries ``>= threshold`` (absolute).
    cg_rtol : float
        Relative residual at which CG stops on each Newton system (inexact Newton).
    cg_maxiter : int, optional
        CG iterations per Newton step (default ``max(50, 2 m)``).
    ls_c1, ls_beta, ls_max_steps : float, float, int
        Armijo constant, step shrink factor and number of trials of the line search.
    n_fallback : int
        Sinkhorn iterations run instead of a Newton step whose line search failed.
    error_measure : {"l1", "l2-pot"}
        ``"l1"``: ``||P1 - a||_1 + ||Pᵀ1 - b||_1``; ``"l2-pot"``: ``||Pᵀ1 - b||_2``
        (POT's measure).
    callback : callable, optional
        ``callback(state) -> bool | None`` after each Newton step, with a frozen
        :class:`SNSState`: ``n_iters`` (Newton steps so far), ``f``, ``g``, ``error``,
        ``eps``, ``problem`` (batch index or None), ``step`` (0 for a Sinkhorn fallback),
        ``nnz`` (kept plan entries), ``cg_iters``, ``n_sinkhorn``. Returning ``True``
        stops the solve of that problem (``Status.STOPPED``). Record ``state.error`` to
        follow the convergence history.
    throw : bool
        Raise the status's :class:`diffsolve.SolveError` subclass instead of warning when
        a problem does not reach its tolerance.
    **deprecated
        The option names used before the solver contract, ``tol`` and ``max_iter``, still
        work with a ``DeprecationWarning`` (see ``rtol``, ``atol`` and ``maxiter`` above);
        any other keyword raises ``TypeError``.

    Returns
    -------
    SNSResult
        ``plan``, ``f``, ``g`` (potentials in the gauge ``sum(f) = sum(g)``, as
        :func:`~diffsolve.ot.sinkhorn`), ``cost`` (``<C, P> + eps Σ P (log P - 1)``) — all
        differentiable —; ``n_iters`` (**Newton** iterations), ``n_sinkhorn`` (warm-up and
        fallback Sinkhorn iterations), ``n_cg``, ``n_fallbacks``, ``converged``, ``error``,
        ``status``, ``tolerance``, ``message``. All fields have fixed shapes, so the
        solver works under ``diffsolve.to_jax`` with ``jax.jit``.

    Raises
    ------
    ValueError, TypeError
        Bad input: a wrong shape or dtype, an unknown option value, an option out of range,
        arrays from two libraries. The message names the argument, what was received and
        what would work.
    diffsolve.SolveError
        Only with ``throw=True``: the subclass matching the result's ``status``
        (:class:`~diffsolve.MaxIterationsError`, :class:`~diffsolve.NonFiniteError`, ...),
        carrying the :class:`SNSResult` as ``result``.

    Warns
    -----
    diffsolve.ConvergenceWarning
        With ``throw=False`` (the default), when the solve stops without meeting its
        tolerance; the :class:`SNSResult` is returned and its ``message`` says what to
        try. A budget requested on purpose (``rtol = atol = 0``) does not warn.

    See Also
    --------
    diffsolve.ot.sinkhorn : Log-domain Sinkhorn alone.
    diffsolve.ot.SNSResult : The result, with the split of work between the two stages.

    Notes
    -----
    Gradients (``diffsolve.vjp``, ``to_torch``, ``to_autograd``) use the implicit backward
    shared with :func:`~diffsolve.ot.sinkhorn` (the solution is the same entropic optimum):
    memory independent of the iteration count.

    Working precision is the input dtype: float32 reaches marginal errors of about 1e-6 at
    best, hence its default ``rtol`` of 7.6e-6.

    Examples
    --------
    >>> import numpy as np
    >>> from diffsolve.ot import sinkhorn_newton_sparse
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.normal(size=(60, 2)), rng.normal(size=(60, 2)) + 1
    >>> C = ((x[:, None] - y[None]) ** 2).sum(-1); C /= C.max()
    >>> a = b = np.full(60, 1 / 60)
    >>> res = sinkhorn_newton_sparse(a, b, C, 1e-3, rtol=1e-10)
    >>> bool(res.converged), res.error <= 1e-10, res.n_iters < 30
    (True, True, True)
    """
    check_arrays(WHERE, a=a, b=b, C=C)
    xp = B.array_namespace(a, b, C, where=WHERE)
    opts = _settings(eps, rtol=rtol, atol=atol, maxiter=maxiter, n_sinkhorn=n_sinkhorn,
                     sinkhorn_switch=sinkhorn_switch, density=density, max_density=max_density,
                     drop_tol=drop_tol, threshold=threshold, cg_rtol=cg_rtol,
                     cg_maxiter=cg_maxiter, ls_c1=ls_c1, ls_beta=ls_beta,
                     ls_max_steps=ls_max_steps, n_fallback=n_fallback,
                     error_measure=error_measure, callback=callback, throw=throw,
                     deprecated=deprecated)
    a, b, C, batch = check_ot_inputs(WHERE, a, b, C, xp)
    eps = opts.eps
    n, m = C.shape[-2:]
    nb = math.prod(batch)
    a2 = xp.reshape(a, (nb, n))
    b2 = xp.reshape(b, (nb, m))
    C2 = xp.reshape(C, (nb, n, m))
    rtol = default_rtol(xp, C.dtype, RTOL) if opts.rtol is None else opts.rtol
    tols = [opts.atol + rtol * float(xp.sum(a2[k, :])) for k in range(nb)]
    outs = [_solve_support(a2[k, :], b2[k, :], C2[k, :, :], eps, opts, xp,
                           k if batch else None, tols[k]) for k in range(nb)]
    f = xp.reshape(xp.stack([o["f"] for o in outs]), (*batch, n))
    g = xp.reshape(xp.stack([o["g"] for o in outs]), (*batch, m))
    f, g = normalise_gauge(f, g, a, b, xp)
    # the plan of the last accepted point: the gauge shift (f + s, g - s) leaves it unchanged
    plan = outs[0]["plan"] if not batch else \
        xp.reshape(xp.stack([o["plan"] for o in outs]), (*batch, n, m))
    cost = _regularised_cost(a, b, eps, f, g, plan, xp)
    dev = B.device(C)
    for o, tol in zip(outs, tols):
        o["converged"] = o["status"] == Status.SUCCESS
        o["tolerance"] = tol

    def field(key, dtype):
        if not batch:
            v = outs[0][key]
            return Status(v) if key == "status" else v
        return xp.reshape(xp.asarray([int(o[key]) if key == "status" else o[key]
                                      for o in outs], dtype=dtype, device=dev), batch)

    result = SNSResult(
        plan=plan, f=f, g=g, cost=cost,
        n_iters=field("n_iters", xp.int64), converged=field("converged", xp.bool),
        error=field("error", C.dtype), status=field("status", xp.int64),
        tolerance=field("tolerance", C.dtype), error_measure=opts.error_measure,
        n_sinkhorn=field("n_sinkhorn", xp.int64), n_cg=field("n_cg", xp.int64),
        n_fallbacks=field("n_fallbacks", xp.int64),
    )
    report(result, throw=opts.throw, fixed_budget=opts.fixed_budget)
    return result, (a, b, C, opts)
