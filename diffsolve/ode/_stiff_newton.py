"""Simplified Newton for the implicit stages of stiff methods, with Jacobian reuse.

Every implicit stage of an ESDIRK step solves ``g = ψ + hγ f(t_i, g)``. Simplified Newton
iterates ``g ← g − M⁻¹ (g − ψ − hγ f(t_i, g))`` with ONE matrix ``M = I − h_M γ J`` for
all stages and, while it keeps working, for many steps: ``J`` and the factorisation of
``M`` are what cost (``n`` evaluations of ``f`` or a handful of coloured ones for ``J``;
``O(n³)`` dense or a sparse LU for ``M``), and a stale ``M`` only slows the linear
convergence of the iteration, never changes the solution it converges to.

Reuse policy (Hairer & Wanner, Solving ODEs II, IV.8, in simplified form):

* the factor of ``M`` is rebuilt when the step size differs from the factor's ``h_M`` by
  more than :data:`REFACTOR_RATIO` (relative), or after ``J`` is recomputed;
* ``J`` is recomputed at the start of a step when the previous step's iteration converged
  slowly (a contraction rate above :data:`SLOW_RATE` or more than :data:`SLOW_ITERS`
  iterations in a stage), and when an iteration fails with a ``J`` that was not computed
  at the current step's start (the step is then retried with the fresh ``J``);
* an iteration that diverges (rate ≥ 1), does not converge in :data:`MAX_ITERS`
  iterations, or meets a singular ``M`` / non-finite values with a fresh ``J`` rejects the
  step, and the step size is divided by 4.

Convergence: with the update ``Δ_m`` in the error norm of the step control
(``rms(Δ / (atol + rtol |y|))``) and the rate ``θ_m = ‖Δ_m‖ / ‖Δ_{m−1}‖``, stop when
``θ_m / (1 − θ_m) ‖Δ_m‖ ≤ κ`` with :data:`KAPPA` ``= 0.01`` (Hairer–Wanner's
``η ‖Δ‖ ≤ κ tol``; the first iteration uses the previous stage's ``η`` raised to 0.8).

Linear solves: dense ``J`` is factorised by the LAPACK LU that ``diffsolve.linear.solve``
uses for ``method="direct"`` (:class:`diffsolve._backend.DenseLU`, rows equilibrated by
:class:`ShiftedLU`), sparse ``J`` by its sparse LU (SuperLU on the CPU, cuSOLVER on the
GPU); both report a singular matrix as a status, read here (a singular ``M`` fails the
iteration, which rejects the step). With ``linear_solver="gmres"`` each solve is a
preconditioned GMRES run (:class:`KrylovStageSolver`) whose status is read the same way.
"""

from __future__ import annotations

import math
from typing import Any

from .. import _backend as B
from ..krylov._gmres import solve_gmres

np = B.host_namespace()

__all__ = ["IterationMatrix", "KrylovStageSolver", "ShiftedLU", "newton_stage"]

#: GMRES stage solves (``linear_solver="gmres"``): relative residual, product budget and
#: restart length. 1e-3 leaves the Newton iteration's own contraction in charge: an
#: inexact Newton step with a relative residual η converges like one with a perturbed
#: matrix (Dembo, Eisenstat & Steihaug, "Inexact Newton methods", SIAM J. Numer. Anal. 19
#: (1982) 400–408), and the iteration stops on its own update norm
KRYLOV_RTOL = 1e-3
KRYLOV_MAXITER = 300
KRYLOV_RESTART = 30

REFACTOR_RATIO = 0.2
SLOW_RATE = 0.5
SLOW_ITERS = 4
MAX_ITERS = 10
KAPPA = 0.01


class ShiftedLU:
    """The LU factors of ``d I − c J`` (dense or sparse ``J``), for ``solve(b)`` and the
    transposed ``solve(b, trans=True)``.

    Dense rows are equilibrated by powers of two (exact in floating point) before the
    factorisation: in a fast transient the Newton matrix of a stiff field is badly
    row-scaled (Van der Pol with ε = 1e-12 has ``I − hγJ ≈ [[1, −3e-13], [−5e8, 1]]``),
    and the pivot-ratio test of the LU would call such a well-conditioned (after scaling)
    matrix singular, rejecting every step. Sparse factors report only exact singularity.
    """

    def __init__(self, J, d: float, c: float, xp):
        n = J.shape[0]
        self.xp = xp
        self.row_scale = None
        if B.is_sparse(J):
            eye = type(J)((xp.full((n,), d, dtype=J.dtype),
                           xp.arange(n, dtype=J.indices.dtype),
                           xp.arange(n + 1, dtype=J.indptr.dtype)), shape=(n, n))
            self._lu: Any = B.SparseLU((eye - J * c).tocsr(), xp)
        else:
            M = d * xp.eye(n, dtype=J.dtype, device=B.device(J)) - c * J
            big = xp.max(xp.abs(M), axis=1)
            ok = xp.isfinite(big) & (big > 0)
            # 2^-round(log2 max|row|): exact, so the factors of an already balanced
            # matrix are those of M itself
            scale = xp.where(ok, 2.0 ** (-xp.round(xp.log2(xp.where(ok, big, 1.0)))),
                             1.0)
            self.row_scale = scale
            self._lu = B.DenseLU(scale[:, None] * M, xp)
        self.singular = bool(self._lu.singular)

    def solve(self, b, trans: bool = False):
        """``M⁻¹ b`` (``M⁻ᵀ b`` with ``trans``)."""
        s = self.row_scale
        if s is None:
            return self._lu.solve(b, trans=trans)
        if trans:  # (S M)ᵀ y = b, x = S y
            return s * self._lu.solve(b, trans=True)
        return self._lu.solve(s * b)


class KrylovStageSolver:
    """``(I − cJ)⁻¹ r`` by preconditioned GMRES on products with ``J`` (``solve`` returns
    ``None`` when GMRES does not reach :data:`KRYLOV_RTOL`: the Newton iteration fails)."""

    def __init__(self, J, c: float, preconditioner, xp):
        self.J, self.c, self.xp = J, c, xp
        if preconditioner == "jacobi":
            diag = J.diagonal() if B.is_sparse(J) else xp.linalg.diagonal(J)
            d = 1.0 - c * diag
            ok = xp.isfinite(d) & (d != 0)
            self.M = xp.where(ok, 1.0 / xp.where(ok, d, 1.0), 1.0)
        else:
            self.M = preconditioner(J, c)
        self.singular = False
        self.failure = ""
        self.n_products = 0

    def _apply(self, v):
        return v - self.c * (self.J @ v)

    def solve(self, r, trans: bool = False):
        res = solve_gmres(self._apply, r, rtol=KRYLOV_RTOL, atol=0.0,
                          restart=KRYLOV_RESTART, maxiter=KRYLOV_MAXITER, M=self.M,
                          where="diffsolve.ode.odeint (linear_solver='gmres')")
        self.n_products += res.n_iters
        # the status is read, not warned: a failed stage solve fails the Newton iteration
        if res.converged:
            return res.x
        self.failure = (f"GMRES stopped with status {res.status.name} after {res.n_iters} "
                        f"products, relative residual above {KRYLOV_RTOL:g}")
        return None


class IterationMatrix:
    """``J`` (from a :class:`~diffsolve.ode._stiff_jacobian.Jacobian`) and the solver of
    ``(I − h γ J) x = r``, with the reuse policy of the module docstring."""

    def __init__(self, jacobian, gamma: float, linear_solver: str = "direct",
                 preconditioner=None):
        self.jacobian = jacobian
        self.linear_solver, self.preconditioner = linear_solver, preconditioner
        self.n_krylov_products = 0
        self.last_failure = ""  # why the last GMRES stage solve failed (for the message)
        self.xp, self.n = jacobian.xp, jacobian.n
        self.gamma = gamma
        self.J: Any = None
        self.J_at = None          # the (t, y-id) J was computed at
        self.fresh = False        # J computed at the current step's start
        self.stale = True         # recompute J at the next step start
        self.h_M: float | None = None
        self._lu: Any = None
        self.n_jac = self.n_lu = self.n_solves = 0
        self.singular = False

    def start_step(self, t: float, y):
        """At the start of an attempted step: recompute ``J`` if marked stale."""
        if self.stale or self.J is None:
            self.recompute(t, y)
        else:
            self.fresh = False

    def recompute(self, t: float, y):
        self.J = self.jacobian(t, y)
        self.n_jac += 1
        self.fresh = True
        self.stale = False
        self.h_M = None  # forces a new factor

    def prepare(self, h: float) -> bool:
        """Factorise ``I − hγJ`` unless the current factor's ``h_M`` is close to ``h``.
        Returns ``False`` when the factorisation is singular."""
        if self.h_M is not None and abs(h - self.h_M) <= REFACTOR_RATIO * abs(self.h_M):
            return not self.singular
        hg = h * self.gamma
        self.h_M = h
        self.n_lu += 1
        if self.linear_solver == "gmres":
            if isinstance(self._lu, KrylovStageSolver):
                self.n_krylov_products += self._lu.n_products
            self._lu = KrylovStageSolver(self.J, hg, self.preconditioner, self.xp)
        else:
            self._lu = ShiftedLU(self.J, 1.0, hg, self.xp)
        self.singular = bool(self._lu.singular)
        return not self.singular

    @property
    def krylov_products(self) -> int:
        """Products with ``J`` spent by GMRES so far (``linear_solver="gmres"``)."""
        now = self._lu.n_products if isinstance(self._lu, KrylovStageSolver) else 0
        return self.n_krylov_products + now

    def solve(self, r):
        """``M⁻¹ r``, or ``None`` when ``M`` is singular (or GMRES did not converge)."""
        self.n_solves += 1
        if self.singular:
            return None
        out = self._lu.solve(r)
        self.last_failure = "" if out is not None else self._lu.failure
        return out


def newton_stage(rhs, t_i: float, psi, g, hg: float, mat: IterationMatrix, scale, xp,
                 eta_prev: float):
    """Solve ``g = ψ + hγ f(t_i, g)`` from the guess ``g``.

    Returns ``(g, k, ok, n_iters, rate, eta)`` with ``k = (g − ψ)/(hγ)`` (so that the stage
    relation holds exactly; it equals ``f(t_i, g)`` to the iteration's tolerance), ``ok``
    whether it converged, ``rate`` the largest contraction rate seen.
    """
    norm_prev = None
    rate = 0.0
    roundoff = 4.0 * float(xp.finfo(g.dtype).eps)
    eta = max(eta_prev, 1e-16) ** 0.8
    for m in range(1, MAX_ITERS + 1):
        fg = rhs(t_i, g)
        r = psi + hg * fg - g
        dg = mat.solve(r)
        if dg is None:
            return g, None, False, m, math.inf, eta
        v = dg / scale
        norm = math.sqrt(float(v @ v) / v.shape[0]) if v.shape[0] else 0.0
        if not math.isfinite(norm):
            return g, None, False, m, math.inf, eta
        g_new = g + dg
        # updates at the rounding level of g: nothing left to gain (a tolerance tighter
        # than the dtype resolves must not read as divergence)
        if bool(xp.all(xp.abs(dg) <= roundoff * xp.abs(g_new))):
            return g_new, (g_new - psi) / hg, True, m, rate, eta
        g = g_new
        if norm_prev is not None:
            theta = norm / norm_prev if norm_prev > 0 else 0.0
            rate = max(rate, theta)
            if theta >= 1.0:
                return g, None, False, m, theta, eta
            eta = theta / (1.0 - theta)
        if eta * norm <= KAPPA or norm == 0.0:
            return g, (g - psi) / hg, True, m, rate, eta
        norm_prev = norm
    return g, None, False, MAX_ITERS, rate, eta
