"""Step sizes taken from the problem, so that :func:`diffsolve.bilevel.solve` needs no tuning.

Three tools, each scale-free (multiplying an objective by any constant leaves the iterates
unchanged):

* :func:`fd_lipschitz` estimates the Lipschitz constant L of a gradient map by power
  iteration on finite differences of that map (no Hessians, so it serves the first-order
  methods as well);
* :class:`Backtracking` is gradient descent on a smooth function with the Armijo
  sufficient-decrease test and step growth after an accepted step (Armijo, "Minimization of
  functions having Lipschitz continuous first partial derivatives", Pacific J. Math. 1966;
  Nesterov, "Gradient methods for minimizing composite functions", Math. Program. 2013,
  for the grow-then-backtrack rule), for the lower-level loops;
* :func:`secant_lipschitz` is the local curvature ``||d_k − d_{k−1}|| / ||x_k − x_{k−1}||``
  of an update direction along the last step (Barzilai & Borwein, "Two-point step size
  gradient methods", IMA J. Numer. Anal. 1988), for the outer steps of the first-order
  methods, which cannot evaluate their own merit function.

Only scalars (norms, objective values) are read back to the host.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .. import _backend as B
from ..implicit._implicit_solve import _probe

# the overflow-safe norm every step rule measures with (also imported by _solve)
norm = B.scaled_norm

#: power iterations for a Lipschitz estimate: two significant digits are enough for a step
POWER_ITERATIONS = 10
#: an accepted step is tried this much longer next time (then backtracked if too long)
GROWTH = 2.0
#: the sufficient decrease asked of a step, ``f(y⁺) <= f(y) − ARMIJO ||y⁺ − y||² / t``: 1/2
#: is the descent lemma's test, met by every t <= 1/L; Armijo's usual 1e-4 would accept
#: steps up to ~2/L, which barely contract the top curvature direction
ARMIJO = 0.5
#: halvings before a backtracking step gives up and keeps the smallest trial
MAX_BACKTRACKS = 30


def fd_lipschitz(grad: Callable[[Any], Any], point, xp, *, g0=None,
                 iters: int = POWER_ITERATIONS) -> float:
    """Largest singular value of the Jacobian of ``grad`` at ``point``, by power iteration.

    Each product is the central difference ``(grad(p + h v) − grad(p − h v)) / 2h`` with
    ``h = eps^(1/3) max(1, ||p||)``: the estimate needs a couple of digits, not more.
    ``g0`` (``grad(point)``) is unused by central differences and accepted for symmetry.
    Returns ``0.0`` for a constant gradient and ``inf`` when the differences overflow.
    """
    n = math.prod(tuple(point.shape))
    v = xp.reshape(_probe(xp, n, point.dtype, B.device(point), 3.0), tuple(point.shape))
    v = v / norm(xp, v)
    eps = float(xp.finfo(point.dtype).eps) ** (1.0 / 3.0)
    h = eps * max(1.0, norm(xp, point))
    lam = 0.0
    for _ in range(iters):
        w = (grad(point + h * v) - grad(point - h * v)) / (2.0 * h)
        lam = norm(xp, w)
        if lam == 0.0 or not math.isfinite(lam):
            break
        v = w / lam
    return lam


def secant_lipschitz(xp, dx_new, dx_old, x_new, x_old) -> float | None:
    """``||d_new − d_old|| / ||x_new − x_old||``, or None when x did not move."""
    s = norm(xp, x_new - x_old)
    if s == 0.0 or not math.isfinite(s):
        return None
    return norm(xp, dx_new - dx_old) / s


class Backtracking:
    """Projected gradient descent on ``value`` with an Armijo step that adapts to the problem.

    ``step`` starts at the caller's estimate of ``1/L`` and is kept between calls. Every
    accepted step is followed by a trial ``GROWTH`` times longer, and every trial that
    fails ``value(y⁺) <= value(y) − ARMIJO ||y⁺ − y||² / step`` is halved, so the step
    follows the local curvature as x moves (a step that was safe at x₀ may not be later:
    a regularisation weight ``exp(x)`` raises the curvature with x). With ``fixed`` the
    step is the user's and is taken as given (no test, no growth).
    """

    def __init__(self, xp, step: float, *, fixed: bool = False, proj=None):
        self.xp, self.step, self.fixed = xp, float(step), fixed
        self.proj = proj if proj is not None else (lambda v: v)
        self.evaluations = 0

    def run(self, value: Callable, grad: Callable, y, n: int):
        """``n`` steps from ``y``; returns ``(y, ∇ at y, projected-gradient-mapping norm)``."""
        xp, P = self.xp, self.proj
        g = grad(y)
        fy = None if self.fixed else value(y)
        for _ in range(n):
            if self.fixed:
                y = P(y - self.step * g)
                g = grad(y)
                continue
            y, fy = self._armijo(value, y, g, fy)
            g = grad(y)
        mapping = norm(xp, y - P(y - self.step * g)) / self.step
        return y, g, mapping

    def _armijo(self, value, y, g, fy):
        if norm(self.xp, g) == 0.0:  # a stationary point: no step, and no growth either
            return y, fy
        step = self.step * GROWTH
        for _ in range(MAX_BACKTRACKS):
            y_new = self.proj(y - step * g)
            dn = norm(self.xp, y_new - y)
            f_new = value(y_new)
            self.evaluations += 1
            # f(y⁺) <= f(y) + <g, d> + |d|²/2t, the descent lemma, is ARMIJO = 1/2 below
            if math.isfinite(f_new) and f_new <= fy - ARMIJO * dn * (dn / step) + \
                    _slack(fy):
                self.step = step
                return y_new, f_new
            if dn == 0.0:  # the projection pins y: nothing to decrease
                return y, fy
            step *= 0.5
        self.step = step
        return y, fy


def _slack(f: float) -> float:
    # the values are equal to rounding near a minimum: a few ulps of |f| are no increase
    return 8.0 * 2.0 ** -52 * abs(f)


class SecantStep:
    """The x step ``1/L̂`` of an outer loop, L̂ the curvature of its direction measured along
    the steps taken.

    L̂ is the largest recent secant ``||d_k − d_{k−1}|| / ||x_k − x_{k−1}||`` (Barzilai &
    Borwein 1988), forgotten at ``DECAY`` per iteration so that the step can lengthen again
    in flatter regions. A secant never exceeds the Lipschitz constant L of the direction, and
    a step longer than 2/L makes the iterates oscillate along the top curvature direction,
    which the next secants then measure: the estimate corrects itself within a few
    iterations. A direction that grows by more than ``GUARD`` in one iteration, or by
    more than ``SLOW`` in each of ``PATIENCE`` iterations in a row, doubles L̂ (an
    oscillation of the coupled x–y dynamics that the secant along x does not see). The
    first step moves x by a tenth of its scale (``first`` can supply a better first
    estimate). With ``proj``, d is replaced by the gradient mapping. Rescaling the
    objective rescales d and L̂ alike, so the steps
    in x do not change.
    """

    DECAY = 0.9
    GUARD = 1.5
    SLOW = 1.1
    PATIENCE = 3

    def __init__(self, xp, proj=None):
        self.xp = xp
        self.proj = proj
        self.curv: float | None = None
        self.prev: tuple | None = None
        self.growing = 0

    def __call__(self, x, d, first: Callable[[], float] | None = None) -> float:
        if self.proj is not None and self.curv is not None:
            # on a constrained set, the components that push against an active bound do
            # not move x: the gradient mapping leaves them out of the secants and the guard
            t = 1.0 / self.curv
            d = (x - self.proj(x - t * d)) / t
        est = None
        if self.prev is not None:
            est = secant_lipschitz(self.xp, d, self.prev[1], x, self.prev[0])
        elif first is not None:
            est = first()
        if est is not None and math.isfinite(est) and est > 0:
            self.curv = est if self.curv is None else max(est, self.DECAY * self.curv)
        if self.prev is not None and self.curv is not None:
            growth = norm(self.xp, d) / max(norm(self.xp, self.prev[1]), 1e-300)
            self.growing = self.growing + 1 if growth > self.SLOW else 0
            if growth > self.GUARD or self.growing >= self.PATIENCE:
                # a direction that keeps growing is an oscillation the secant does not see
                # (the lower level lags behind x, so the direction's curvature is partly
                # that of y's tracking): the step halves until it stops
                self.curv *= 2.0
                self.growing = 0
        if self.curv is None:
            dn = norm(self.xp, d)
            self.curv = 10.0 * dn / max(1.0, norm(self.xp, x)) if dn > 0 else 1.0
        self.prev = (x, d)
        return 1.0 / self.curv


class PowerIteration:
    """The largest eigenvalue of a symmetric positive semi-definite operator, re-estimated
    cheaply as it changes: a few power steps, warm-started from the last eigenvector."""

    def __init__(self, xp, like, iters: int = 5):
        self.xp, self.iters = xp, iters
        n = math.prod(tuple(like.shape))
        v = xp.reshape(_probe(xp, n, like.dtype, B.device(like), 3.0), tuple(like.shape))
        self.v = v / norm(xp, v)

    def __call__(self, hvp: Callable) -> float:
        lam = 0.0
        for _ in range(self.iters):
            w = hvp(self.v)
            lam = norm(self.xp, w)
            if lam == 0.0 or not math.isfinite(lam):
                break
            self.v = w / lam
        return lam


#: a quasi-Newton trial step is at most this many times longer than the last accepted one
GROWTH_LIMIT = 10.0


class ProjectedQuasiNewton:
    """Projected L-BFGS x steps with an Armijo search along the projection arc, for outer
    loops that can evaluate their merit function (the hyperobjective Φ(x) = f(x, y*(x)),
    or the penalised ψ_λ) because their lower-level solves are accurate.

    The direction is ``−H g`` on the free components (:class:`diffsolve._lbfgs.LBFGSMemory`),
    where a component is held when the projected gradient step leaves it where it is (a
    bound that ``g`` pushes against); the trial points are ``x(t) = P(x + t d)`` with
    ``t = 1, 1/2, …`` and the test ``f(x(t)) <= f(x) + c₁ gᵀ(x(t) − x)`` (the projection
    arc of Bertsekas, "Projected Newton methods for optimization problems with simple
    constraints", SIAM J. Control Optim. 1982; the L-BFGS matrix of Nocedal & Wright,
    *Numerical Optimization*, Alg. 7.4). Without correction pairs the first trial moves x
    by a tenth of its scale or twice the last accepted step; with pairs a trial is at most
    ``GROWTH_LIMIT`` times the last step. Everything is scale-free: rescaling f rescales g
    and H⁻¹ alike.
    """

    C1 = 1e-4
    #: halvings before the search gives up (t = 2⁻¹²: the decrease then lies below the
    #: rounding of the merit function, or the gradient is wrong)
    MAX_HALVINGS = 12

    def __init__(self, xp, proj=None, memory: int = 10):
        from .._lbfgs import LBFGSMemory

        self.xp = xp
        self.proj = proj if proj is not None else (lambda v: v)
        self.mem = LBFGSMemory(xp, memory)
        #: trial points of the last search where the merit function was inf or NaN (the
        #: search backtracks from them; the caller reports them when it can go no further)
        self.nonfinite_trials = 0
        self.last_step: float | None = None  # ||x⁺ − x|| of the last accepted step

    #: no decrease along −Hg nor along the projected gradient at the current x: the merit
    #: function is flat to rounding there, and further searches from x are skipped
    stalled = False

    def reset(self) -> None:
        """Forget the curvature pairs and any stall (the merit function changed)."""
        self.mem.clear()
        self.stalled = False

    def step(self, x, value: float, g, merit: Callable):
        """One search along :meth:`direction` unless stalled: ``(x⁺, merit value,
        payload)`` or None. A failure with pairs clears them, so that the next call tries
        the projected gradient; a failure without pairs sets :attr:`stalled`."""
        if self.stalled:
            return None
        found = self.search(x, value, g, self.direction(x, g), merit)
        if found is None:
            had_pairs = bool(self.mem.pairs)
            self.mem.clear()
            self.stalled = not had_pairs
        return found

    @property
    def nonfinite_stall(self) -> bool:
        """Stalled after the failing search met inf/NaN merit values: the objectives are
        non-finite next to the iterate, which the run must report (status NONFINITE)
        rather than end as if x were merely not yet stationary."""
        return self.stalled and self.nonfinite_trials > 0

    def scale(self, x, g) -> float:
        """The scalar step of the gradient-mapping measure: the memory's ``sᵀy / yᵀy``, or a
        tenth of x's scale over ``||g||`` before the first pair."""
        if self.mem.pairs:
            return self.mem.gamma
        gn = norm(self.xp, g)
        return 0.1 * max(1.0, norm(self.xp, x)) / gn if gn > 0 else 1.0

    def mapping_norm(self, x, g) -> float:
        """``||x − P(x − t g)|| / t`` with ``t`` = :meth:`scale`: zero exactly at a
        stationary point of the constrained problem."""
        t = self.scale(x, g)
        return norm(self.xp, x - self.proj(x - t * g)) / t

    def direction(self, x, g):
        xp = self.xp
        t = self.scale(x, g)
        held = (self.proj(x - t * g) == x) & (g != 0)
        zero = xp.zeros_like(g)
        g_free = xp.where(held, zero, g)
        d = xp.where(held, zero, -self.mem.apply(g_free))
        if not float(xp.sum(g * d)) < 0:
            # rounding in the pairs turned H indefinite: steepest descent, fresh memory
            self.mem.clear()
            d = -self.scale(x, g) * g_free
        return d

    def search(self, x, value: float, g, d, merit: Callable):
        """The first ``x(t)`` passing the Armijo test: ``(x(t), merit(x(t)))`` with
        ``merit(x) -> (value, payload)``, or None when MAX_HALVINGS halvings (twice
        as many without pairs) found none. A trial
        with a non-finite value is backtracked from and counted in ``nonfinite_trials``."""
        self.nonfinite_trials = 0  # of this search: the one whose failure is reported
        t = 1.0
        dn = max(norm(self.xp, d), 1e-300)
        if not self.mem.pairs:
            # no curvature yet (or only negative curvature: a concave stretch keeps no
            # pairs): a tenth of x's scale, or twice the last accepted step, whichever is
            # longer (grow, then backtrack)
            t = 0.1 * max(1.0, norm(self.xp, x)) / dn
            if self.last_step is not None:
                t = max(t, 2.0 * self.last_step / dn)
        elif self.last_step is not None and dn > GROWTH_LIMIT * self.last_step:
            # the pairs' scaling sᵀy/yᵀy is the inverse curvature along the last step only:
            # along a nearly flat s it sends −Hg far beyond where the other directions'
            # curvature allows, and halving back takes longer than the search may
            t = GROWTH_LIMIT * self.last_step / dn
        # −Hg with pairs is usually right at t = 1; the first or steepest-descent guess is
        # a heuristic, which may be off by more (and a failure there ends the run)
        for _ in range(self.MAX_HALVINGS if self.mem.pairs else 2 * self.MAX_HALVINGS):
            xt = self.proj(x + t * d)
            ft, payload = merit(xt)
            bound = value + self.C1 * float(self.xp.sum(g * (xt - x))) + _slack(value)
            if not math.isfinite(ft):
                self.nonfinite_trials += 1
            elif ft <= bound:
                moved = norm(self.xp, xt - x)
                if moved > 0:  # a zero step (x stationary) says nothing about the length
                    self.last_step = moved
                return xt, ft, payload
            if norm(self.xp, xt - x) <= 1e-15 * max(1.0, norm(self.xp, x)):
                break  # x(t) = x to rounding: shorter trials are the same point
            t *= 0.5
        return None

    def update(self, s, y) -> None:
        self.mem.update(s, y)
