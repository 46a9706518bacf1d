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
- The CG here is a short local loop rather than :func:`diffsolve.linear.solve`: a
  truncated Newton step wants the current iterate when CG stops (by tolerance, limit, or a
  non-positive curvature on the numerically singular part), not an error.
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

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import array_api_extra as xpx

from .. import _backend as B
from .._autodiff import custom_vjp
from .._status import ConvergenceWarning
from ._errors import ERROR_MEASURES, check_eps, check_ot_inputs
from ._implicit import entropic_potentials_vjp, normalise_gauge
from ._result import OTResult

__all__ = ["SNSResult", "sinkhorn_newton_sparse"]

WHERE = "diffsolve.ot.sinkhorn_newton_sparse"


@dataclass(frozen=True)
class SNSResult(OTResult):
    """Result of :func:`sinkhorn_newton_sparse`: an :class:`~diffsolve.ot.OTResult` plus
    how the work split between the two stages.

    ``n_iters`` counts **Newton** iterations (one sparse Newton system each). The extra
    fields, per problem (arrays of the batch shape for a batched call):

    Attributes
    ----------
    n_sinkhorn : int or array
        Sinkhorn iterations run: the warm-up plus any fallback iterations.
    n_cg : int or array
        CG iterations summed over all Newton steps.
    n_fallbacks : int or array
        Newton steps whose line search failed and were replaced by Sinkhorn iterations.
    history : tuple
        The error (in ``error_measure``) after the warm-up and after each Newton step, as
        Python floats (a tuple of such tuples for a batched call, problems in C order).
    """

    n_sinkhorn: Any = 0
    n_cg: Any = 0
    n_fallbacks: Any = 0
    history: Any = ()

    differentiable_fields: ClassVar[tuple[str, ...]] = ("plan", "f", "g", "cost")

    @property
    def message(self) -> str:
        conv = self.converged
        if getattr(conv, "ndim", 0) == 0:
            done = bool(conv)
        else:
            xp = B.array_namespace(conv)
            done = bool(xp.all(conv))
        if done:
            return "converged"
        return ("did not converge: increase max_iter or n_sinkhorn, raise density, or use "
                "a larger eps")


# ---------------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Options:
    tol: float
    max_iter: int
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


def _positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{WHERE}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _real_in(name, value, lo, hi, lo_open=True, hi_open=True, example=""):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) \
        and math.isfinite(value)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ValueError(f"{WHERE}: {name} must be a number in {lb}{lo}, {hi}{rb}, got "
                         f"{value!r}{example}")
    return float(value)


def _check_options(tol, max_iter, n_sinkhorn, sinkhorn_switch, density, max_density, drop_tol,
                   threshold, cg_rtol, cg_maxiter, ls_c1, ls_beta, ls_max_steps, n_fallback,
                   error_measure, callback):
    tol = _real_in("tol", tol, 0.0, math.inf, example=" (e.g. 1e-9)")
    if density is not None and threshold is not None:
        raise ValueError(f"{WHERE}: give density (a fraction of the plan's entries to keep) "
                         "or threshold (keep plan entries >= threshold), not both")
    if density is not None:
        density = _real_in("density", density, 0.0, 1.0, hi_open=False,
                           example=" (e.g. 10 / n: about ten entries per row)")
    if threshold is not None:
        threshold = _real_in("threshold", threshold, 0.0, math.inf, lo_open=False,
                             example=" (an absolute value on plan entries, e.g. 1e-3 / n)")
    if error_measure not in ERROR_MEASURES:
        raise ValueError(f"{WHERE}: error_measure={error_measure!r} is not known; choose one "
                         f"of {list(ERROR_MEASURES)}")
    if callback is not None and not callable(callback):
        raise TypeError(f"{WHERE}: callback must be callable or None, got "
                        f"{type(callback).__name__}")
    return _Options(
        tol=tol,
        max_iter=_positive_int("max_iter", max_iter),
        n_sinkhorn=_positive_int("n_sinkhorn", n_sinkhorn),
        sinkhorn_switch=_positive_int("sinkhorn_switch", sinkhorn_switch, minimum=0),
        density=density,
        max_density=_real_in("max_density", max_density, 0.0, 1.0, hi_open=False),
        drop_tol=_real_in("drop_tol", drop_tol, 0.0, 1.0, lo_open=False),
        threshold=threshold,
        cg_rtol=_real_in("cg_rtol", cg_rtol, 0.0, 1.0),
        cg_maxiter=None if cg_maxiter is None else _positive_int("cg_maxiter", cg_maxiter),
        ls_c1=_real_in("ls_c1", ls_c1, 0.0, 0.5),
        ls_beta=_real_in("ls_beta", ls_beta, 0.0, 1.0),
        ls_max_steps=_positive_int("ls_max_steps", ls_max_steps),
        n_fallback=_positive_int("n_fallback", n_fallback),
        error_measure=error_measure,
        callback=callback,
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

        dg, its = _pcg(schur, rhs, minv, rtol, maxiter, xp)
        df = rinv * (ef - self.matvec(dg))
        return df, dg, its


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


def _pcg(matvec, rhs, minv, rtol, maxiter, xp):
    """Truncated Jacobi-PCG from zero on the (PSD) Schur system; returns ``(x, iters)``."""
    x = xp.zeros_like(rhs)
    r = rhs
    z = minv * r
    p = z
    rz = float(xp.sum(r * z))
    target = rtol * float(xp.sqrt(xp.sum(rhs * rhs)))
    it = 0
    while it < maxiter:
        if float(xp.sqrt(xp.sum(r * r))) <= target or rz <= 0:
            break
        Ap = matvec(p)
        pAp = float(xp.sum(p * Ap))
        if not pAp > 0:
            break  # what is left lies in the (numerically) singular part: keep x
        alpha = rz / pAp
        x = x + alpha * p
        r = r - alpha * Ap
        z = minv * r
        rz_new = float(xp.sum(r * z))
        p = z + (rz_new / rz) * p
        rz = rz_new
        it += 1
    return x, it


def _sinkhorn_steps(a, b, C, eps, tol, max_iter, f0, g0, measure, trace=None):
    """Run the shared log-domain Sinkhorn; its own non-convergence warning is expected here
    (a warm-up is stopped early on purpose) and silenced. ``trace`` (a list) receives
    ``(iterations, error)`` at each of Sinkhorn's checks, iterations counted across calls."""
    from ._sinkhorn import sinkhorn

    callback = None
    if trace is not None:
        offset = trace[-1][0] if trace else 0

        def callback(it, _eps, err):
            trace.append((offset + int(it), float(max(float(e) for e in
                                                      _flat_floats(err)))))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = sinkhorn(a, b, C, eps, tol=tol, max_iter=max_iter, f0=f0, g0=g0,
                       error_measure=measure, callback=callback)
    return res.f, res.g, int(res.n_iters), bool(res.converged)


def _flat_floats(err):
    if getattr(err, "ndim", 0) == 0:
        return [err]
    xp = B.array_namespace(err)
    return [err] if err.ndim == 0 else list(xp.reshape(err, (-1,)))


def _predicted_sinkhorn_iters(trace, tol):
    """Iterations Sinkhorn still needs to reach ``tol`` at the linear rate of its last two
    checks (None if it is not contracting)."""
    if len(trace) < 2:
        return None
    (i1, e1), (i2, e2) = trace[-2], trace[-1]
    if e2 <= tol:
        return 0
    if not (i2 > i1 and 0 < e2 < e1):
        return None
    rate = math.log(e2 / e1) / (i2 - i1)
    return math.ceil(math.log(tol / e2) / rate)


def _solve_one(a, b, C, eps, opts: _Options, xp, problem_index=None):
    """SNS on one problem with positive weights; returns potentials and bookkeeping."""
    n, m = C.shape
    dt = C.dtype
    path = _path(xp, C, eps)
    trace = []
    f, g, n_sk, done = _sinkhorn_steps(a, b, C, eps, opts.tol, opts.n_sinkhorn, None, None,
                                       opts.error_measure, trace)
    # Sinkhorn-or-Newton: where Sinkhorn is contracting fast enough to reach tol within
    # `sinkhorn_switch` more iterations (a few Newton steps cost that much), let it finish;
    # the rate is re-measured after every chunk, so a Sinkhorn that slows down hands over
    budget = opts.sinkhorn_switch
    while not done and budget > 0:
        need = _predicted_sinkhorn_iters(trace, opts.tol)
        if need is None or need > budget:
            break
        # chunks of at most 100 iterations: Sinkhorn's rate often drops after its first
        # fast phase, and a re-measured rate then hands over to Newton early
        chunk = min(budget, 100, math.ceil(1.25 * need) + 10)
        f, g, its, done = _sinkhorn_steps(a, b, C, eps, opts.tol, chunk, f, g,
                                          opts.error_measure, trace)
        n_sk += its
        budget -= its
    state = path.evaluate(f, g)
    if state is None:
        raise FloatingPointError(f"{WHERE}: the Sinkhorn warm-up returned potentials whose "
                                 "plan overflows; check C and eps")
    path.accept()
    P, r, c, total = state
    err = _error(r, c, a, b, xp, opts.error_measure)
    history = [err]
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
    while err > opts.tol and n_newton < opts.max_iter:
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
            f, g, sk_its, _ = _sinkhorn_steps(a, b, C, eps, opts.tol, opts.n_fallback, f, g,
                                              opts.error_measure)
            n_sk += sk_its
            state = path.evaluate(f, g)
            path.accept()
            P, r, c, total = state
        prev, err = err, _error(r, c, a, b, xp, opts.error_measure)
        history.append(err)
        if adaptive and err > 0.5 * prev and k_keep < k_max:
            # a sparsified Hessian that misses the weak couplings between groups of
            # points makes Newton crawl (its curvature along those modes is far too
            # large): keep twice as many plan entries from now on
            k_keep = min(k_max, 2 * k_keep)
        if opts.callback is not None:
            opts.callback({"problem": problem_index, "iteration": n_newton, "error": err,
                           "step": t if accepted else 0.0, "nnz": block.nnz,
                           "cg_iters": its})
    return {"f": f, "g": g, "plan": P, "n_iters": n_newton, "n_sinkhorn": n_sk, "n_cg": n_cg,
            "n_fallbacks": n_fallbacks, "error": err, "converged": err <= opts.tol,
            "history": tuple(history)}


def _solve_support(a, b, C, eps, opts, xp, problem_index):
    """Solve on the support of (a, b); zero weights get potential -inf (a zero plan row)."""
    ma, mb = a > 0, b > 0
    if bool(xp.all(ma)) and bool(xp.all(mb)):
        return _solve_one(a, b, C, eps, opts, xp, problem_index)
    ia, = xp.nonzero(ma)
    jb, = xp.nonzero(mb)
    sub = xp.take(xp.take(C, ia, axis=0), jb, axis=1)
    out = _solve_one(xp.take(a, ia), xp.take(b, jb), sub, eps, opts, xp, problem_index)
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
    eps = check_eps(WHERE, ctx.args[3] if len(ctx.args) > 3 else ctx.kwargs["eps"])
    xp = B.array_namespace(a0, b0, C0, where=WHERE)
    a, b, C, _ = check_ot_inputs(WHERE, a0, b0, C0, xp)
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


@custom_vjp(_sns_bwd, result_type=SNSResult, public_name=WHERE)
def sinkhorn_newton_sparse(a, b, C, eps, *, tol=1e-9, max_iter=100, n_sinkhorn=50,
                           sinkhorn_switch=500, density=None, max_density=1.0, drop_tol=1e-3,
                           threshold=None, cg_rtol=1e-3, cg_maxiter=None, ls_c1=1e-4,
                           ls_beta=0.5, ls_max_steps=20, n_fallback=20, error_measure="l1",
                           callback=None, throw=False):
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
    tol : float
        Stop when the marginal error (``error_measure``) is ``<= tol``.
    max_iter : int
        Newton iterations at most.
    n_sinkhorn : int
        Sinkhorn warm-up iterations (stage 1; stops earlier if ``tol`` is reached).
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
        ``callback(info)`` after each Newton step with a dict: ``problem`` (batch index or
        None), ``iteration``, ``error``, ``step`` (0 for a Sinkhorn fallback), ``nnz`` (kept
        plan entries), ``cg_iters``.
    throw : bool
        Raise :class:`diffsolve.ConvergenceWarning` as an error instead of warning when a
        problem does not reach ``tol``.

    Returns
    -------
    SNSResult
        ``plan``, ``f``, ``g`` (potentials in the gauge ``sum(f) = sum(g)``, as
        :func:`~diffsolve.ot.sinkhorn`), ``cost`` (``<C, P> + eps Σ P (log P - 1)``) — all
        differentiable —; ``n_iters`` (**Newton** iterations), ``n_sinkhorn`` (warm-up and
        fallback Sinkhorn iterations), ``n_cg``, ``n_fallbacks``, ``converged``, ``error``,
        ``history`` (error after the warm-up and each Newton step).

    Notes
    -----
    Gradients (``diffsolve.vjp``, ``to_torch``, ``to_autograd``) use the implicit backward
    shared with :func:`~diffsolve.ot.sinkhorn` (the solution is the same entropic optimum):
    memory independent of the iteration count.

    Working precision is the input dtype: float32 reaches marginal errors of about 1e-6 at
    best, so give float32 problems a matching ``tol``.

    Examples
    --------
    >>> import numpy as np
    >>> from diffsolve.ot import sinkhorn_newton_sparse
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.normal(size=(60, 2)), rng.normal(size=(60, 2)) + 1
    >>> C = ((x[:, None] - y[None]) ** 2).sum(-1); C /= C.max()
    >>> a = b = np.full(60, 1 / 60)
    >>> res = sinkhorn_newton_sparse(a, b, C, 1e-3, tol=1e-10)
    >>> bool(res.converged), res.error <= 1e-10, res.n_iters < 30
    (True, True, True)
    """
    xp = B.array_namespace(a, b, C, where=WHERE)
    eps = check_eps(WHERE, eps)
    a, b, C, batch = check_ot_inputs(WHERE, a, b, C, xp)
    opts = _check_options(tol, max_iter, n_sinkhorn, sinkhorn_switch, density, max_density,
                          drop_tol, threshold, cg_rtol, cg_maxiter, ls_c1, ls_beta, ls_max_steps,
                          n_fallback, error_measure, callback)
    n, m = C.shape[-2:]
    nb = math.prod(batch)
    a2 = xp.reshape(a, (nb, n))
    b2 = xp.reshape(b, (nb, m))
    C2 = xp.reshape(C, (nb, n, m))
    outs = [_solve_support(a2[k, :], b2[k, :], C2[k, :, :], eps, opts, xp,
                           k if batch else None) for k in range(nb)]
    f = xp.reshape(xp.stack([o["f"] for o in outs]), (*batch, n))
    g = xp.reshape(xp.stack([o["g"] for o in outs]), (*batch, m))
    f, g = normalise_gauge(f, g, a, b, xp)
    # the plan of the last accepted point: the gauge shift (f + s, g - s) leaves it unchanged
    plan = outs[0]["plan"] if not batch else \
        xp.reshape(xp.stack([o["plan"] for o in outs]), (*batch, n, m))
    cost = _regularised_cost(a, b, eps, f, g, plan, xp)
    dev = B.device(C)

    def field(key, dtype):
        if not batch:
            return outs[0][key]
        return xp.reshape(xp.asarray([o[key] for o in outs], dtype=dtype, device=dev), batch)

    converged = [o["converged"] for o in outs]
    if not all(converged):
        worst = max(o["error"] for o in outs)
        bad = sum(1 for c in converged if not c)
        which = f"{bad} of {nb} problems" if batch else "the problem"
        msg = (f"{WHERE}: {which} did not reach tol={opts.tol:g} (worst error {worst:.3g} "
               f"after {max(o['n_iters'] for o in outs)} Newton iterations); increase "
               f"max_iter (now {opts.max_iter}) or n_sinkhorn (now {opts.n_sinkhorn}), raise "
               "density (a denser Hessian), or use a larger eps"
               + ("; float32 cannot go much below 1e-6: use float64 or a larger tol"
                  if C.dtype == xp.float32 and opts.tol < 1e-6 else ""))
        if throw:
            raise RuntimeError(msg)
        warnings.warn(msg, ConvergenceWarning, stacklevel=3)
    result = SNSResult(
        plan=plan, f=f, g=g, cost=cost,
        n_iters=field("n_iters", xp.int64), converged=field("converged", xp.bool),
        error=field("error", C.dtype), error_measure=opts.error_measure,
        n_sinkhorn=field("n_sinkhorn", xp.int64), n_cg=field("n_cg", xp.int64),
        n_fallbacks=field("n_fallbacks", xp.int64),
        history=tuple(o["history"] for o in outs) if batch else outs[0]["history"],
    )
    return result, None
