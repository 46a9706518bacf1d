"""``solve``: bilevel optimisation ``min_x outer(x, y*(x))``, ``y*(x) ∈ argmin_y inner(x, y)``.

Four methods (each cites the paper its updates come from):

* ``"implicit"`` (AID): warm-started projected gradient descent on ``inner(x, ·)``, then
  the implicit hypergradient ``∇ₓf − ∇²ₓᵧg·v``, ``∇²ᵧᵧg·v = ∇ᵧf`` by CG
  (:func:`~diffsolve.bilevel.hypergradient`, ``method="implicit-cg"``), then a projected
  gradient step on x. Ji, Yang & Liang, "Bilevel Optimization: Convergence Analysis and
  Enhanced Design" (ICML 2021). Its mini-batch variant replaces CG (whose mini-batch
  Hessian inverse is biased) by a warm-started stochastic gradient iteration on the
  quadratic ``½vᵀ∇²ᵧᵧg v − vᵀ∇ᵧf``, as in Arbel & Mairal, "Amortized Implicit
  Differentiation for Stochastic Bilevel Optimization" (ICLR 2022).
* ``"penalty"``: the first-order value-function penalty method of Kwon, Kwon, Wright &
  Nowak, "On Penalty Methods for Nonconvex Bilevel Optimization and First-Order Stochastic
  Approximation" (ICLR 2024): ``y ≈ argmin f + λg``, ``z ≈ argmin g`` and
  ``x ← x − ξ(∇ₓf(x, y) + λ(∇ₓg(x, y) − ∇ₓg(x, z)))`` with λ growing (doubled on
  measured progress); gradients only.
* ``"lv-hba"``: Yao et al., "Constrained Bi-Level Optimization: Proximal Lagrangian Value
  function Approach and Hessian-free Algorithm" (ICLR 2024), Algorithm 1: a single loop for
  a lower level with constraints ``constraint(x, y) <= 0``, through the proximal Lagrangian
  value function; gradients only.
* ``"bo-rep"``: Hao, Gong & Liu, "Bilevel Optimization under Unbounded Smoothness: A New
  Algorithm and Convergence Analysis" (ICLR 2024): normalised momentum on x, a linear-system
  variable updated by one Hessian-vector step per iteration, the lower level refined once at
  the start and then updated every ``I`` iterations by ``N`` warm-started steps.

Without user step sizes every method sets its steps from the problem
(:mod:`._steps`: backtracking lower-level steps, secant-curvature x steps, power-iteration
constants), so rescaling an objective leaves the iterates unchanged; a run whose iterates
or objective grow a millionfold, or turn non-finite, stops with ``DIVERGED`` /
``NONFINITE`` (:mod:`._divergence`).

The loops are array-API code in the namespace of ``x0`` and ``y0``; the derivatives of the
user's functions come from :class:`~._derivatives.Oracle` (the user's callables, or the
autodiff system of the arrays: autograd, torch, JAX), so a problem runs where its arrays
live (NumPy, CuPy, torch, JAX, array_api_strict) without host copies. Only scalars (the
objective value, norms for the stopping test) are read back, once per iteration.
"""

from __future__ import annotations

import inspect
import math
import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

from tqdm.auto import tqdm

from .. import _backend as B
from .. import _validate as V
from .._result import SolverResult
from .._status import Status, report
from .._typing import Array, Callback, Seed
from ..implicit._implicit_solve import cg_solve
from ..implicit._projections import (
    projection_ball,
    projection_box,
    projection_nonnegative,
    projection_simplex,
)
from ..krylov._common import wants_stop
from ._derivatives import Oracle, check_array, check_callables, first_call, same_library
from ._divergence import DivergenceMonitor, advice
from ._hypergradient import _stepsize, implicit_hypergradient
from ._steps import (
    Backtracking,
    PowerIteration,
    ProjectedQuasiNewton,
    SecantStep,
    _slack,
    fd_lipschitz,
    norm,
)

#: a projection ``v -> P(v)`` or the name and parameters of a simple set:
#: ``("box", lower, upper)``, ``("ball", radius)``, ``"simplex"``, ``"nonnegative"``, ...
Projection = Callable[[Array], Array] | tuple[Any, ...] | str

__all__ = ["BilevelHistory", "BilevelResult", "BilevelSettings", "BilevelState", "solve"]

WHERE = "diffsolve.bilevel.solve"
METHODS = ("implicit", "penalty", "lv-hba", "bo-rep")

# lv-hba's c_k starts at C_RATIO times the ratio of the curvatures of outer and inner
C_RATIO = 3.0
#: lv-hba: Gauss–Newton steps towards {constraint <= 0} per iteration, at most
FEASIBILITY_STEPS = 20

# method -> (default outer step, default inner iterations per outer iteration); lv-hba's
# step None means "inner_step" (its (x, y) step acts on f − v_γ, whose curvature is g's)
DEFAULT_STEP = {"implicit": 0.1, "penalty": 0.1, "lv-hba": None, "bo-rep": 0.1}
DEFAULT_INNER_ITERS = {"implicit": 20, "penalty": 10, "lv-hba": 1, "bo-rep": 10}

# method-specific options and their defaults (see the docstring of solve)
OPTIONS: dict[str, dict[str, Any]] = {
    "implicit": {"cg_maxiter": None, "cg_rtol": 1e-8, "cg_atol": 0.0, "ridge": 0.0,
                 "step_power": 0.0, "x_update": "quasi-newton"},
    "penalty": {"lam0": None, "lam_step": None, "lam_max": None, "lam_patience": 20,
                "step_power": 0.0, "x_update": "quasi-newton"},
    # γ₁ = γ₂ = 10 as in Yao et al.'s toy; c_k = c (k + 1)^p with c = 3, p = 0.49 (the
    # paper's analysis takes p < 1/2) instead of its toy's c = 0.025, p = 0.3, which leave
    # the iterate 0.2 from the solution after 3 000 iterations on our constrained toy
    # (bench/bench_bilevel.py); λ lives in Z = [0, lam_max]
    "lv-hba": {"beta": 10.0, "gamma1": 10.0, "gamma2": 10.0, "c": None, "p": 0.49,
               "lam_max": 1e3, "feas_tol": 1e-4, "rho": None, "y_step": None,
               "step_power": 0.0, "equality": False},
    # BO-REP defaults (Hao, Gong & Liu, ICLR 2024): β 0.9, I = 2, N = inner_iters = 10;
    # beta, anneal and grow None: BOREP_DEFAULTS of the run's mode
    "bo-rep": {"beta": None, "period": 2, "refine_iters": 100, "eta_power": 0.0,
               "anneal": None, "grow": None, "exact": True},
}
#: bo-rep's (beta, anneal, grow) without user values. Stochastic runs (or a user inner
#: step, or a y-set): the paper's β, η annealed when the estimate turns against the
#: momentum, never grown. Exact runs: η adapts to measured values of Φ (grown by `grow`
#: after a decrease, cut by `anneal` after an increase: Vogl et al., Biol. Cybern. 1988;
#: Battiti, Complex Systems 1989). Its lighter momentum (β = 0.5) measured better there:
#: β = 0.9 carries x on after Φ turns up, and the cuts then stall it (hyper-cleaning:
#: 2.0 % above the optimum after 500 iterations with β = 0.9, 0.04 % with β = 0.5)
BOREP_DEFAULTS = {"stochastic": (0.9, 0.8, 1.0), "exact": (0.5, 0.5, 1.2)}
#: bo-rep's η grows to at most this many times its start
BOREP_ETA_RANGE = 100.0
_INT_OPTIONS = ("cg_maxiter", "period", "refine_iters", "lam_patience")
_NONNEG_OPTIONS = ("ridge", "eta_power", "p", "rho", "step_power", "cg_atol")

SETS = ("box", "ball", "simplex", "nonnegative")

# implicit / penalty x steps: projected L-BFGS with a search on the merit function (the
# lower level then solved by Newton to INNER_RTOL), or the secant-length gradient steps
X_UPDATES = ("quasi-newton", "gradient")
#: the lower-level solves of the quasi-Newton path stop at ||∇ᵧ|| <= INNER_RTOL times its
#: norm at (x0, y0): the merit function's error, ~||∇ᵧf|| ||∇ᵧg|| / μ, must stay below the
#: decreases the Armijo test compares
INNER_RTOL = 1e-10
#: Newton steps per lower-level solve on the quasi-Newton path when inner_iters is not
#: given (warm-started, they stop at their tolerance, usually after one to three)
QN_INNER_ITERS = 20
#: the penalty method's λ grows up to this many times its start on the quasi-Newton path
LAM_RANGE = 1e7

# old option names -> new (kept for one release, with a DeprecationWarning)
RENAMED = {"max_iter": "maxiter", "tol": "atol", "step": "stepsize",
           "inner_step": "inner_stepsize"}

# the stationarity measure growing this much over its first value means divergence: the
# run stops before the iterates overflow (NumPy would warn of overflow, and the numbers
# past that point say nothing)
DIVERGENCE_FACTOR = 1e12

# the user derivatives each method calls (the others are ignored)
NEEDS = {
    "implicit": ("outer_grad", "inner_grad", "inner_hvp"),
    "penalty": ("outer_grad", "inner_grad"),
    "lv-hba": ("outer_grad", "inner_grad", "constraint_vjp"),
    "bo-rep": ("outer_grad", "inner_grad", "inner_hvp"),
}


@dataclass(frozen=True)
class BilevelHistory:
    """Per-iteration record of :func:`solve` (host NumPy arrays of length ``n_iters``).

    Attributes
    ----------
    outer : array
        ``outer(x_k, y_k)`` at the iterate the k-th update started from (on the current
        mini-batch in the stochastic variant).
    grad_norm : array
        Norm of the method's hypergradient estimate at that iterate, as a projected-gradient
        mapping ``||x − P(x − s d)|| / s`` (the plain norm without ``x_projection``).
    time : array
        Wall-clock seconds since the start, at the end of iteration k.

    See Also
    --------
    diffsolve.bilevel.BilevelResult : Its ``history`` field.

    Examples
    --------
    >>> import numpy as np, autograd.numpy as anp
    >>> import diffsolve as ds
    >>> inner = lambda x, y: 0.5 * anp.sum((y - x) ** 2)
    >>> outer = lambda x, y: 0.5 * anp.sum((y - 1.0) ** 2) + 0.5 * anp.sum(x ** 2)
    >>> res = ds.bilevel.solve(outer, inner, np.zeros(1), np.zeros(1), stepsize=0.5)
    >>> len(res.history.outer) == res.n_iters
    True
    """

    outer: Any
    grad_norm: Any
    time: Any


@dataclass(frozen=True)
class BilevelState:
    """What ``callback(state)`` receives after every iteration of :func:`solve`.

    Attributes
    ----------
    n_iters : int
        Iterations done (1 after the first).
    x, y : array
        The current iterates.
    outer_value : float
        ``outer`` at the iterate this iteration started from.
    grad_norm : float
        The hypergradient-estimate norm of that iterate (see :class:`BilevelHistory`).
    method : str

    See Also
    --------
    diffsolve.bilevel.solve : Its ``callback`` receives this.

    Examples
    --------
    >>> import numpy as np, autograd.numpy as anp
    >>> import diffsolve as ds
    >>> inner = lambda x, y: 0.5 * anp.sum((y - x) ** 2)
    >>> outer = lambda x, y: 0.5 * anp.sum((y - 1.0) ** 2) + 0.5 * anp.sum(x ** 2)
    >>> seen = []
    >>> res = ds.bilevel.solve(outer, inner, np.zeros(1), np.zeros(1), stepsize=0.5,
    ...                        callback=seen.append)
    >>> [s.n_iters for s in seen] == list(range(1, res.n_iters + 1))
    True
    """

    n_iters: int
    x: Any
    y: Any
    outer_value: float
    grad_norm: float
    method: str

    @property
    def iteration(self) -> int:
        """``n_iters`` (the name before the solver contract)."""
        return self.n_iters


@dataclass(frozen=True)
class BilevelResult(SolverResult):
    """Result of :func:`solve`.

    Attributes
    ----------
    x, y : array
        The upper-level solution and its lower-level partner (the namespace, device and
        dtype of ``x0`` and ``y0``).
    n_iters : int
        Outer iterations done.
    converged : bool
        Whether the method's stopping test (see :func:`solve`, ``rtol`` / ``atol``)
        passed at the returned iterate (and, for lv-hba, the constraints hold to
        ``feas_tol``).
    history : BilevelHistory
        Outer objective, hypergradient norm and wall time per iteration.
    method : str
    message : str
        Why it stopped, and what to try when it did not converge.
    status : Status
        ``SUCCESS``; ``MAX_ITERATIONS`` (``maxiter`` reached; the request itself with
        ``rtol = atol = 0``); ``DIVERGED`` (``||x||``, ``||y||``, ``|outer|`` or the
        stationarity measure grew more than 1e6-fold over its first value: the run stops
        long before overflow); ``NONFINITE`` (one of them became NaN or inf);
        ``INFEASIBLE`` (lv-hba: the constraints are still violated at the end, and the
        run did not diverge); ``STOPPED`` (the callback returned ``True``). The message of
        a diverged run names the step to reduce (the one you gave) or says that the
        estimated steps were too long.

    See Also
    --------
    diffsolve.bilevel.solve : Returns this.
    diffsolve.bilevel.BilevelHistory : The ``history`` field.

    Examples
    --------
    >>> import numpy as np, autograd.numpy as anp
    >>> import diffsolve as ds
    >>> inner = lambda x, y: 0.5 * anp.sum((y - x) ** 2)
    >>> outer = lambda x, y: 0.5 * anp.sum((y - 1.0) ** 2) + 0.5 * anp.sum(x ** 2)
    >>> res = ds.bilevel.solve(outer, inner, np.zeros(1), np.zeros(1), stepsize=0.5)
    >>> res.converged, res.status.name, np.round(res.x, 6)
    (True, 'SUCCESS', array([0.5]))
    """

    x: Any
    y: Any
    n_iters: int
    converged: bool
    history: BilevelHistory
    method: str = "implicit"
    message: str = ""
    status: Status = Status.SUCCESS

    differentiable_fields: ClassVar[tuple[str, ...]] = ()


# ---------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------
def _options(method, options):
    opts = dict(OPTIONS[method])
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise TypeError(f"{WHERE}: options must be a dict, got {type(options).__name__}")
    unknown = sorted(set(options) - set(opts))
    if unknown:
        raise ValueError(f"{WHERE}: options {unknown} are not known for method={method!r}; "
                         f"its options are {sorted(opts)}")
    for key, value in options.items():
        name = f"options[{key!r}]"
        if key in ("y_step", "lam0", "lam_step", "c") or \
                (key == "lam_max" and method == "penalty"):
            opts[key] = V.positive_real(WHERE, name, value, allow_none=True)
        elif key in ("equality", "exact"):
            opts[key] = V.boolean(WHERE, name, value)
        elif key == "x_update":
            opts[key] = V.choice(WHERE, name, value, X_UPDATES)
        elif key == "rho" and value is None:
            opts[key] = None
        elif key in _INT_OPTIONS:
            opts[key] = V.positive_int(WHERE, name, value, allow_none=key == "cg_maxiter")
        elif key in _NONNEG_OPTIONS:
            opts[key] = V.nonnegative_real(WHERE, name, value)
        elif method == "bo-rep" and key in ("beta", "anneal", "grow") and value is None:
            opts[key] = None
        elif method == "bo-rep" and key == "grow":
            opts[key] = V.finite_real(WHERE, name, value, minimum=1.0)
        elif method == "bo-rep" and key in ("beta", "anneal"):
            v = V.finite_real(WHERE, name, value, minimum=0.0, strict=key == "anneal",
                              maximum=1.0)
            if key == "beta" and v == 1.0:
                raise ValueError(f"{WHERE}: {name} must be in [0, 1), got {v}")
            opts[key] = v
        else:
            opts[key] = V.positive_real(WHERE, name, value)
    if method == "penalty" and opts["lam_max"] is None:
        # the additive schedule keeps its old cap; the doubling one needs room to reach
        # the accuracy the tolerance asks for (the bias is O(1/λ))
        opts["lam_max"] = 1e4 if opts["lam_step"] is not None else 1e10
    if method == "penalty" and opts["lam0"] is not None and opts["lam_max"] < opts["lam0"]:
        raise ValueError(f"{WHERE}: options lam_max={opts['lam_max']!r} < lam0="
                         f"{opts['lam0']!r}; the penalty weight grows from lam0 to lam_max")
    return opts


def _projection(spec, name, v0):
    """A callable projection from ``spec``, checked on ``v0`` (empty sets raise here)."""
    if spec is None:
        return None
    fn: Any  # the user's projection, or a set's with its parameters bound
    if callable(spec):
        fn = spec
    else:
        kind, args = (spec, ()) if isinstance(spec, str) else \
            (spec[0], tuple(spec[1:])) if isinstance(spec, tuple) and spec else (None, ())
        if kind not in SETS:
            raise TypeError(
                f"{WHERE}: {name} must be a callable v -> P(v) or one of ('box', lower, upper), "
                f"('ball', radius), ('simplex', value), 'simplex', 'nonnegative'; got {spec!r}")
        n_args = {"box": (2,), "ball": (0, 1), "simplex": (0, 1), "nonnegative": (0,)}[kind]
        if len(args) not in n_args:
            raise ValueError(f"{WHERE}: {name}={spec!r}: the {kind!r} set takes "
                             f"{' or '.join(map(str, n_args))} parameters, got {len(args)}")
        fn = {"box": projection_box, "ball": projection_ball, "simplex": projection_simplex,
              "nonnegative": projection_nonnegative}[kind]
        fn = (lambda f, a: (lambda v: f(v, *a)))(fn, args)
    try:
        p = fn(v0)
    except ValueError as e:  # an empty box, a radius <= 0: the set is infeasible
        raise ValueError(f"{WHERE}: {name} cannot be applied: {e}") from e
    if not B.is_array(p) or tuple(p.shape) != tuple(v0.shape):
        shape = tuple(getattr(p, "shape", ()))
        raise ValueError(f"{WHERE}: {name} returned shape {shape} for an input of shape "
                         f"{tuple(v0.shape)}; a projection must keep the shape")
    return fn


def _shape(value):
    from autograd.tracer import getval  # autograd boxes carry their value's shape

    return tuple(getattr(getval(value), "shape", ()))


def _check_batch(batch):
    if batch is None:
        return None
    if not (isinstance(batch, tuple) and len(batch) == 2 and
            # numbers.Integral: mypy does not model comparisons of the numbers ABCs
            all(isinstance(b, numbers.Integral) and not isinstance(b, bool)
                and b >= 1  # type: ignore[operator]
                for b in batch) and batch[1] <= batch[0]):
        raise ValueError(f"{WHERE}: batch must be (n_samples, batch_size) with "
                         f"1 <= batch_size <= n_samples, got {batch!r}")
    return int(batch[0]), int(batch[1])


# ---------------------------------------------------------------------------------------
# the problem: derivatives, projections, mini-batches
# ---------------------------------------------------------------------------------------
class _Problem:
    rng: Any  # a seeded host generator with mini-batches (batch given), else None

    def __init__(self, oracle, constraint, px, py, xp, device, batch=None, seed=0):
        self.d = oracle
        self.constraint = constraint
        self.batch = batch
        self.rng = B.host_rng(seed) if batch is not None else None
        self.px = px if px is not None else (lambda v: v)
        self.py = py if py is not None else (lambda v: v)
        self.py_given = py
        self.xp = xp
        self.device = device
        self.outer_idx = self.inner_idx = None

    def _draw(self):
        n, size = self.batch
        # drawn on the host (NumPy's seeded generator: the same stream on every backend),
        # then handed to the objectives as an index array of x's namespace and device
        idx = self.rng.choice(n, size, replace=False)
        return self.xp.asarray(idx, device=self.device)

    def resample(self, outer=True):
        """Mini-batches: fresh sample indices for inner (and outer), without replacement."""
        if self.batch is None:
            return
        if outer:
            self.outer_idx = self._draw()
        self.inner_idx = self._draw()
        self.d.bind(self.outer_idx, self.inner_idx)

    def checkpoint(self):
        """The draw state (mini-batches only), for replaying the same batches."""
        if self.batch is None:
            return None
        return self.rng.bit_generator.state, self.inner_idx

    def restore(self, state):
        if state is None:
            return
        self.rng.bit_generator.state, self.inner_idx = state
        self.d.bind(self.outer_idx, self.inner_idx)

    def norm(self, v) -> float:
        return norm(self.xp, v)  # scaled: a diverging iterate is measured, not overflowed

    def descent(self, step: float | None, inner_step: float):
        """A lower-level step rule: Armijo backtracking from ``inner_step`` (deterministic
        runs without a user step), else the fixed ``step``."""
        fixed = step is not None or self.batch is not None
        return Backtracking(self.xp, inner_step if step is None else step, fixed=fixed,
                            proj=self.py)

    def inner_descent(self, x, y, step, n):
        """``n`` projected gradient steps on ``inner(x, ·)``; returns y and its mapping norm.

        ``step`` is a number (fixed steps; mini-batches: SGD with a fresh batch per step)
        or a :class:`Backtracking` rule (deterministic: Armijo on ``inner(x, ·)``).
        """
        if isinstance(step, Backtracking):
            if not step.fixed:
                y, _, res = step.run(lambda v: float(self.d.inner(x, v)),
                                     lambda v: self.d.inner_grad_y(x, v), y, n)
                return y, res
            step = step.step
        g = self.d.inner_grad_y(x, y)
        for _ in range(n):
            y = self.py(y - step * g)
            self.resample(outer=False)  # stochastic variant: SGD, a fresh batch per step
            g = self.d.inner_grad_y(x, y)
        return y, self.norm(y - self.py(y - step * g)) / step


    def newton_solve(self, value, grad, hessian, y, max_iter: int, tol: float):
        """Minimise a strongly convex function of y (no y-set) by Newton's method from the
        warm start ``y``, until ``||∇|| <= tol``: ``(y, ||∇||)``.

        ``value(v) -> float``, ``grad(v) -> array``, ``hessian(v) -> (u ↦ ∇²·u)``. Each step
        solves ``∇² p = −∇`` by CG on Hessian-vector products to the forcing tolerance
        ``min(0.1, ||∇|| / ||∇₀||)`` (quadratic convergence: Dembo, Eisenstat & Steihaug,
        SIAM J. Numer. Anal. 1982) and backtracks (Armijo); near the solution,
        where the function is flat to rounding, a step is also taken when it shrinks
        ``||∇||``. The quasi-Newton x steps compare values of f(x, y*(x)), which need y* to
        many digits: Newton gives them in a few steps where gradient steps or L-BFGS stall
        on an ill-conditioned lower level.
        """
        g = grad(y)
        gn = self.norm(g)
        # the norm the tolerance is relative to: the forcing terms are measured against it
        # (a warm start begins close to the solution, so its own first norm is no scale)
        g_ref = tol / INNER_RTOL if tol > 0 else gn
        f_y = None
        for _ in range(max_iter):
            if gn <= tol or not math.isfinite(gn):
                break
            # forcing ~ ||∇||/||∇₀||: quadratic convergence (Dembo, Eisenstat & Steihaug);
            # each Newton step costs a fresh trace, the CG iterations only products
            forcing = min(0.1, max(gn / g_ref, 0.1 * tol / gn)) if g_ref > 0 else 0.1
            out = cg_solve(hessian(y), -g, rtol=forcing, maxiter=None, where=WHERE,
                           what="a lower-level Newton system ∇²ᵧᵧ · p = −∇ᵧ",
                           advice="the lower level must be strongly convex in y for this "
                                  "method (or pass inner_stepsize for gradient steps)")
            p: Any = out.u
            slope = float(self.xp.sum(g * p))
            if not slope < 0:
                break
            f0 = value(y) if f_y is None else f_y  # the accepted trial's value is kept
            t, moved, flat = 1.0, False, False
            for _ in range(30):
                yt = y + t * p
                ft = value(yt)
                gt = grad(yt)
                gtn = self.norm(gt)
                if math.isfinite(ft) and ft <= f0 + 1e-4 * t * slope:
                    moved = True
                    break
                if math.isfinite(ft) and ft <= f0 + _slack(f0) and gtn < gn:
                    moved = flat = True  # no decrease beyond rounding, a smaller gradient
                    break
                t *= 0.5
            if not moved:
                break  # no decrease to rounding: y is as good as this precision allows
            # the rounding floor of the gradient is reached: a step the value cannot tell
            # from zero that barely shrinks it, or a full Newton step close to the solution
            # (quadratic convergence would divide it by far more than 2)
            floor = (flat and gtn > 0.9 * gn) or \
                (t == 1.0 and gtn > 0.5 * gn and gn < 1e-6 * g_ref)
            y, g, gn, f_y = yt, gt, gtn, ft
            if floor:
                break
        return y, gn

    def lower_solve(self, x, y, max_iter: int, tol: float):
        """y*(x) = argmin inner(x, ·) by :meth:`newton_solve`: ``(y, ||∇ᵧg||)``."""
        d = self.d
        return self.newton_solve(lambda v: float(d.inner(x, v)),
                                 lambda v: d.inner_grad_y(x, v),
                                 lambda v: d.hessian(x, v)[0], y, max_iter, tol)

    def penalised_solve(self, x, y, lam: float, max_iter: int, tol: float):
        """argmin (outer + λ inner)(x, ·) by :meth:`newton_solve`: ``(y, ||∇ᵧ(f + λg)||)``."""
        d = self.d

        def hessian(v):
            hf, hg = d.outer_hessian_yy(x, v), d.hessian(x, v)[0]
            return lambda u: hf(u) + lam * hg(u)

        return self.newton_solve(lambda v: d.outer_value(x, v) + lam * float(d.inner(x, v)),
                                 lambda v: d.penalised_grad_y(x, v, lam), hessian, y,
                                 max_iter, tol)


def _quasi_newton(pb, step, opts) -> bool:
    """Whether the x steps are projected L-BFGS on the merit function with accurate Newton
    lower-level solves: deterministic runs without user steps or a y-set (a y-set would
    make the lower level a constrained problem, which the gradient steps handle)."""
    return step is None and pb.batch is None and opts["_inner_user"] is None and \
        pb.py_given is None and opts["x_update"] == "quasi-newton"


def _decayed(step, power, k):
    """``step / (k + 1)^power``: the decreasing steps a stochastic variant needs."""
    return step / (k + 1) ** power if power else step


# ---------------------------------------------------------------------------------------
# the methods: each keeps its own state and does one outer iteration per iterate()
# ---------------------------------------------------------------------------------------
class _ExactAID:
    """What implicit and bo-rep share on their exact path: y*(x) by Newton's method and
    ∇Φ by CG on the implicit-function system, its status read.

    Subclasses set ``pb``, ``inner_iters``, ``inner_tol`` (None until the first solve),
    ``inner_failures`` and ``cg`` = ``(rtol, maxiter, ridge, atol)``.
    """

    pb: Any
    inner_iters: int
    inner_tol: float | None
    inner_failures: tuple[int, str]
    cg: tuple

    def _hypergradient(self, x, y):
        """``(outer(x, y), ∇Φ estimate, linear-system residual)`` at (x, y) by implicit-cg,
        its status read."""
        d = self.pb.d
        value, fx, fy = d.outer_grads(x, y)
        hyy, hxy = d.hessian(x, y)
        rtol, maxiter, ridge, atol = self.cg
        grad, _, out = implicit_hypergradient(hyy, hxy, fx, fy, rtol=rtol, maxiter=maxiter,
                                              ridge=ridge, where=WHERE, atol=atol)
        # the inner status is read, not warned about at every iteration: an inexact
        # solve enters the stopping test through its residual and the final message
        lin_res = 0.0
        if not out.converged:
            lin_res = math.inf if out.residual_norm is None else out.residual_norm
            self.inner_failures = (self.inner_failures[0] + 1, out.message)
        return value, grad, lin_res

    def _lower(self, x, y):
        """y*(x) by Newton's method from ``y``: ``(y, ||∇ᵧg||)``."""
        d = self.pb.d
        if self.inner_tol is None:
            self.inner_tol = INNER_RTOL * self.pb.norm(d.inner_grad_y(x, y))
        return self.pb.lower_solve(x, y, self.inner_iters, self.inner_tol)


class _Implicit(_ExactAID):
    """AID: warm-started inner descent + implicit hypergradient + projected step.

    Without a user ``stepsize`` (deterministic runs) the x step is ``1/L̂``, L̂ the
    curvature of the hypergradient measured along the x steps (:class:`._steps.SecantStep`),
    and the lower-level steps backtrack (:class:`._steps.Backtracking`). Multiplying
    ``outer`` by a constant scales the hypergradient and L̂ alike: the iterates do not
    change. (An Armijo search on ``outer(x⁺, y⁺)`` would need y⁺ far more accurate than
    warm-started steps give: its decrease test is swamped by the lower-level error.)
    """

    def __init__(self, pb, x, y, step, inner_step, inner_iters, opts):
        self.pb, self.x, self.y = pb, x, y
        self.search = step is None and pb.batch is None
        self.step = DEFAULT_STEP["implicit"] if step is None and not self.search else step
        self.inner_step, self.inner_iters, self.opts = inner_step, inner_iters, opts
        self.inner = pb.descent(opts["_inner_user"], inner_step)
        self.v = pb.xp.zeros_like(y)  # the stochastic variant's warm-started v
        self.inner_failures = (0, "")  # CG solves that stopped above tolerance, and the last
        self.secant = SecantStep(pb.xp, pb.px)
        self.qn = ProjectedQuasiNewton(pb.xp, pb.px) if _quasi_newton(pb, step, opts) \
            else None
        self.here: tuple | None = None  # quasi-Newton: (value, grad, inner and linear res)
        self.inner_tol: float | None = None  # quasi-Newton: set at the first lower solve
        self.cg = tuple(opts[k] for k in ("cg_rtol", "cg_maxiter", "ridge", "cg_atol"))

    def _iterate_qn(self, qn: ProjectedQuasiNewton):
        if self.here is None:
            self.y, inner_res = self._lower(self.x, self.y)
            self.here = (*self._hypergradient(self.x, self.y), inner_res)
        value, grad, lin_res, inner_res = self.here
        x = self.x

        def merit(xt):
            yt, res = self._lower(xt, self.y)
            return self.pb.d.outer_value(xt, yt), (yt, res)

        found = qn.step(x, value, grad, merit)
        if found is not None:
            x_new, _, (self.y, inner_res) = found
            value, grad_new, lin_res = self._hypergradient(x_new, self.y)
            qn.update(x_new - x, grad_new - grad)
            self.x, grad = x_new, grad_new
            self.here = (value, grad, lin_res, inner_res)
        # no decrease found: x stays, and its measures say how far from stationary it is
        gnorm = qn.mapping_norm(self.x, grad)
        value = math.nan if qn.nonfinite_stall else value  # reported as NONFINITE
        return value, gnorm, max(gnorm, inner_res, lin_res)

    def iterate(self, k):
        if self.qn is not None:
            return self._iterate_qn(self.qn)
        pb, d = self.pb, self.pb.d
        # stochastic variant: every step decays (the noise of y and v feeds straight into
        # the hypergradient); deterministic: step_power applies to x only
        nu = self.inner if pb.batch is None else \
            _decayed(self.inner_step, self.opts["step_power"], k)
        self.y, inner_res = pb.inner_descent(self.x, self.y, nu, self.inner_iters)
        x, y = self.x, self.y
        if pb.batch is None:
            value, grad, lin_res = self._hypergradient(x, y)
        else:
            value, fx, fy = d.outer_grads(x, y)
            # SGD on ½vᵀHv − vᵀ∇ᵧf, a fresh inner batch per step and v kept between
            # iterations (Arbel & Mairal 2022): unbiased products, so v tracks H⁻¹∇ᵧf
            v = self.v
            for _ in range(self.inner_iters):
                pb.resample(outer=False)
                _, Hv = d.hvp_both(x, y, v)
                v = v - nu * (Hv + self.opts["ridge"] * v - fy)
            pb.resample(outer=False)
            hxy_v, Hv = d.hvp_both(x, y, v)
            lin_res = pb.norm(Hv + self.opts["ridge"] * v - fy)
            self.v = v
            grad = fx - hxy_v
        if self.search:
            step = self.secant(x, grad)
        else:
            step = _decayed(self.step, self.opts["step_power"], k)
        x_new = pb.px(x - step * grad)
        gnorm = pb.norm(x_new - x) / step
        self.x = x_new
        return value, gnorm, max(gnorm, inner_res, lin_res)


class _Penalty:
    """Kwon et al. (ICLR 2024): value-function penalty f + λ(g − g*), λ growing.

    y tracks argmin (f + λg), z tracks argmin g, and
    ∇ψ = ∇ₓf(x, y) + λ(∇ₓg(x, y) − ∇ₓg(x, z)) (Kwon et al., ICLR 2024). With mini-batches
    both ∇ₓg terms use the same batch, so their sampling noise largely cancels in the
    difference that λ multiplies.

    Steps from the problem (no user step, deterministic runs): y and z by Armijo
    backtracking on f + λg and g (the step follows the curvature L_f + λL_g as λ grows);
    x by ``1/L̂``, L̂ the secant curvature of ∇ψ along the x steps
    (:class:`._steps.SecantStep`; finite differences of ∇ψ at fixed y, z for the first).
    With a user ``inner_stepsize`` y steps ``inner_stepsize / (1 + λ)``.

    λ schedule (``lam_step=None``, the default): λ₀ = ``lam0`` times the ratio of the
    curvatures of f and g in y (so a rescaled objective gets a rescaled λ), doubled once
    the penalised problem is solved to a tenth of the stationarity it started λ with, or
    after ``lam_patience`` iterations without that progress, up to ``lam_max``. A number
    ``lam_step`` restores the additive schedule ``λ ← λ + lam_step``.
    """

    def __init__(self, pb, x, y, step, inner_step, inner_iters, opts):
        self.pb, self.x, self.y, self.z = pb, x, y, y
        self.inner_step, self.inner_iters, self.opts = inner_step, inner_iters, opts
        self.search = step is None and pb.batch is None
        self.step = DEFAULT_STEP["penalty"] if step is None and not self.search else step
        user_inner = opts["_inner_user"]
        # the additive schedule (a user lam_step) keeps its fixed y and z steps, as before
        self.fixed_y = user_inner is not None or pb.batch is not None or \
            opts["lam_step"] is not None
        self.y_rule = Backtracking(pb.xp, inner_step, fixed=self.fixed_y, proj=pb.py)
        self.z_rule = Backtracking(pb.xp, inner_step, fixed=self.fixed_y, proj=pb.py)
        lam0 = opts["lam0"]
        if lam0 is None and opts["lam_step"] is not None:
            lam0 = 1.0  # the additive schedule's start, as before the doubling one
        if lam0 is None:
            lam0 = self._scaled_lam0(x, y, inner_step)
        self.lam = min(lam0, opts["lam_max"])
        self.lam_since, self.lam_start_res = 0, None
        self.secant = SecantStep(pb.xp, pb.px)
        self.qn = None
        self.lam_cap = opts["lam_max"]
        if _quasi_newton(pb, step, opts) and opts["lam_step"] is None and \
                pb.d.outer_hessian_yy(x, y) is not None:
            self.qn = ProjectedQuasiNewton(pb.xp, pb.px)
            # ∇ψ_λ multiplies z's error by λ while its bias shrinks like 1/λ: far beyond
            # λ₀ the rounding of z (not its tolerance) would win
            self.lam_cap = min(opts["lam_max"], LAM_RANGE * self.lam)
            if opts["_inner_iters_user"] is None:
                self.inner_iters = QN_INNER_ITERS
        self.lam_first = self.lam
        self.here: tuple | None = None  # quasi-Newton: (ψ, ∇ψ, y and z residuals)
        self.z_tol: float | None = None
        self.y_tol: float | None = None

    # -- quasi-Newton path: ψ_λ(x) = min_y (f + λg) − λ min_z g, both minima by Newton -----
    def _solves(self, x, y, z):
        """y and z at x by Newton from warm starts: ``(ψ_λ(x), y, z, y_res, z_res)``."""
        pb, d, lam = self.pb, self.pb.d, self.lam
        if self.y_tol is None:  # per λ phase: relative to where the phase starts
            self.y_tol = INNER_RTOL * pb.norm(d.penalised_grad_y(x, y, lam))
        if self.z_tol is None:
            self.z_tol = INNER_RTOL * pb.norm(d.inner_grad_y(x, z))
        y, y_res = pb.penalised_solve(x, y, lam, self.inner_iters, self.y_tol)
        # ∇ψ_λ multiplies z's error by λ (y's error is already divided by λ through the
        # curvature of f + λg): z's tolerance shrinks as λ grows past its start
        z, z_res = pb.lower_solve(x, z, self.inner_iters,
                                  self.z_tol * min(1.0, self.lam_first / lam))
        # ψ_λ = (f + λg)(x, y) − λ g(x, z), its λ-terms grouped as λ (g(y) − g(z))
        value = d.outer_value(x, y) + lam * (float(d.inner(x, y)) - float(d.inner(x, z)))
        return value, y, z, y_res / (1.0 + lam), z_res

    def _refresh(self) -> tuple:
        """ψ_λ, ∇ψ_λ and the residuals at the current x (a new λ: a new merit function)."""
        value, self.y, self.z, y_res, z_res = self._solves(self.x, self.y, self.z)
        return value, self._direction(self.x, self.y, self.z, self.lam)[1], y_res, z_res

    def _iterate_qn(self, qn: ProjectedQuasiNewton):
        pb, d = self.pb, self.pb.d
        if self.here is None:
            self.here = self._refresh()
        psi, grad, y_res, z_res = self.here
        x = self.x
        def merit(xt):
            psi_t, *solved = self._solves(xt, self.y, self.z)
            return psi_t, tuple(solved)

        found = qn.step(x, psi, grad, merit)
        if found is not None:
            x_new, psi, (self.y, self.z, y_res, z_res) = found
            grad_new = self._direction(x_new, self.y, self.z, self.lam)[1]
            qn.update(x_new - x, grad_new - grad)
            self.x, grad = x_new, grad_new
            self.here = (psi, grad, y_res, z_res)
        gnorm = qn.mapping_norm(self.x, grad)
        value = math.nan if qn.nonfinite_stall else d.outer_value(self.x, self.y)
        lower = pb.norm(d.inner_grad_y(self.x, self.y))
        lam_before = self.lam
        self._grow_lam(gnorm)
        if qn.stalled and self.lam == lam_before:
            # ψ_λ is minimised to rounding: the only progress left is a larger λ
            self.lam = min(2.0 * self.lam, self.lam_cap)
            self.lam_since, self.lam_start_res = 0, None
        if self.lam != lam_before:
            # a new penalised problem: fresh curvature pairs, y re-solved at the new λ
            qn.reset()
            self.y_tol = None
            self.here = None
        return value, gnorm, max(gnorm, y_res, z_res, lower)

    def _scaled_lam0(self, x, y, inner_step):
        pb, d = self.pb, self.pb.d
        if pb.batch is not None:
            return 1.0
        # λ weighs g against f: start it at their curvature ratio in y, so that scaling f
        # (or g) by a constant scales λ instead of changing the iterates
        lf = fd_lipschitz(lambda v: d.outer_grads(x, v)[2], y, pb.xp, iters=3)
        lg = 1.0 / (1.05 * inner_step)
        if not (math.isfinite(lf) and lf > 0):
            return 1.0
        return lf / lg

    def _direction(self, x, y, z, lam):
        value, fx, _ = self.pb.d.outer_grads(x, y)
        gx_y, _ = self.pb.d.inner_grads(x, y)
        gx_z, _ = self.pb.d.inner_grads(x, z)
        return value, fx + lam * (gx_y - gx_z)

    def iterate(self, k):
        if self.qn is not None:
            return self._iterate_qn(self.qn)
        pb, d, x, lam = self.pb, self.pb.d, self.x, self.lam
        replay = pb.checkpoint()
        if self.fixed_y:
            # the Lipschitz constant of ∇(f + λg) grows like 1 + λ
            self.y_rule.step = self.inner_step / (1.0 + lam)
            y, gy = self.y, d.penalised_grad_y(x, self.y, lam)
            for _ in range(self.inner_iters):
                y = pb.py(y - self.y_rule.step * gy)
                pb.resample(outer=False)
                gy = d.penalised_grad_y(x, y, lam)
            y_res = pb.norm(y - pb.py(y - self.y_rule.step * gy)) / self.y_rule.step
        else:
            y, gy, y_res = self.y_rule.run(
                lambda v: d.outer_value(x, v) + lam * float(d.inner(x, v)),
                lambda v: d.penalised_grad_y(x, v, lam), self.y, self.inner_iters)
        y_res /= 1.0 + lam
        # mini-batches: z steps on the same batches as y (common random numbers), so that
        # the noise of y − z, which λ multiplies below, is correlated rather than doubled
        pb.restore(replay)
        self.z, z_res = pb.inner_descent(x, self.z, self.z_rule, self.inner_iters)
        self.y = y
        value, direction = self._direction(x, y, self.z, lam)
        if self.search:
            step = self.secant(x, direction, lambda: fd_lipschitz(
                lambda v: self._direction(v, y, self.z, lam)[1], x, pb.xp, iters=3))
        else:
            step = _decayed(self.step, self.opts["step_power"], k)
        x_new = pb.px(x - step * direction)
        gnorm = pb.norm(x_new - x) / step
        self.x = x_new
        self._grow_lam(gnorm)
        # the penalised problem is only O(1/λ) from the bilevel one: converged needs the
        # lower-level optimality of y as well as stationarity
        t = self.z_rule.step
        lower = pb.norm(y - pb.py(y - t * d.inner_grad_y(x, y))) / t
        if self.opts["lam_step"] is not None:  # the additive schedule: λ at its cap
            lower = 0.0 if lam >= self.opts["lam_max"] else math.inf
        return value, gnorm, max(gnorm, y_res, z_res, lower)

    def _grow_lam(self, gnorm):
        o = self.opts
        if o["lam_step"] is not None:
            self.lam = min(self.lam + o["lam_step"], o["lam_max"])
            return
        if self.lam_start_res is None:
            self.lam_start_res = gnorm
        self.lam_since += 1
        if gnorm <= 0.1 * self.lam_start_res or self.lam_since >= o["lam_patience"]:
            self.lam = min(2.0 * self.lam, self.lam_cap)
            self.lam_since, self.lam_start_res = 0, None


class _LVHBA:
    """Yao et al. (ICLR 2024), Algorithm 1.

    θ (a copy of y) and λ run one projected gradient descent-ascent step on the proximal
    Lagrangian f(x, θ) + λᵀc(x, θ) + ||θ − y||²/(2γ₁) − ||λ − z||²/(2γ₂), λ's ascent
    taken at the new θ (alternating, where the paper's step is simultaneous: on the
    authors' equality-constrained toy the simultaneous step cycles at a distance ~300
    ||x*|| from the solution, the alternating one converges) (λ ≥ 0 for
    inequalities ``c <= 0``, λ free for equalities ``c = 0``, both in a box of half-width
    ``lam_max``); (x, y, z) then step on F/c_k + f(x, y) − v_γ(x, y, z). The z-direction is
    ∂(−v_γ)/∂z = (z − λ⁺)/γ₂, so that z follows λ⁺: the authors' code
    (SUSTech-Optimization/LV-HBA, Toy-example/LLC/LV-HBA.py) computes ``d3 = -(λ - z)/γ₂``
    and ``z ← z − β d3``. Written as d_z = (λ⁺ − z)/γ₂ with ``z ← z − β d_z``, the step
    would push z away from λ: the sign matters. The same code evaluates d_x at the updated
    θ⁺, λ⁺, as here (:meth:`directions`).

    Steps from the problem (``stepsize=None``): the paper asks α below the inverse
    Lipschitz constant of ∇(F/c_k + f − v_γ), about L_F/c_k + L_f + 1/γ₁ (f − v_γ is f
    minus an envelope of f in y); L_F and L_f (of ∇F and ∇f in (x, y) jointly) are
    estimated once by power iteration on finite differences (:func:`._steps.fd_lipschitz`),
    and α_k = 1/(L_F/c_k + L_f + 1/γ₁) lengthens as c_k grows. ``c=None`` (default) starts
    c_k at 3 L_F/L_f, so that F/c_k and f keep their balance whatever the scale of either
    (3: the fixed c of earlier versions, on problems with L_F = L_f). The θ, λ step η is
    ``1/(1.05 L̂ + 1/γ₁ + ||Jᵧc||)``, L̂ the curvature of f in y.

    The iterate solves the penalised problem, O(1/c_k) from the bilevel solution, with the
    paper's c_k = c (k + 1)^p.
    """

    def __init__(self, pb, x, y, step, inner_step, inner_iters, opts):
        self.pb, self.x, self.y, self.theta = pb, x, y, y
        o = opts
        self.eta, self.inner_iters, self.opts = inner_step, inner_iters, o
        xp = pb.xp
        c0 = pb.constraint(x, y)
        self.lam = xp.zeros(_shape(c0), dtype=x.dtype, device=B.device(x))
        self.z = self.lam
        self.lam_lo = -o["lam_max"] if o["equality"] else 0.0
        self.auto = step is None
        self.jnorm = 0.0
        self.c = o["c"]
        if o["_inner_user"] is None and pb.batch is None:
            # θ and λ run gradient descent-ascent on the proximal Lagrangian, whose
            # coupling ⟨λ, c(x, θ)⟩ has curvature ||Jᵧc||: the step must see it as well as
            # f's (a descent-ascent step beyond 1/||Jᵧc|| spirals out)
            self.jnorm = self._jacobian_norm(x, y, c0)
            self.eta = 1.0 / (1.05 / inner_step + 1.0 / o["gamma1"] + self.jnorm)
        if self.auto:
            self.LF, self.Lf = self._constants(x, y)
            if self.c is None:
                ratio = self.LF / self.Lf if self.Lf > 0 and self.LF > 0 else 1.0
                self.c = C_RATIO * ratio
            step = self._alpha(self.c)
        elif self.c is None:
            self.c = 3.0  # with user steps: the fixed value the earlier versions used
        self.step = step
        # one α for (x, y) in the paper; a separate y step helps when x and y are scaled
        # very differently (data hyper-cleaning: ∂/∂xᵢ is O(1/n))
        self.y_user = o["y_step"]
        self.y_step = step if o["y_step"] is None else o["y_step"]

    def _constants(self, x, y):
        xp, d = self.pb.xp, self.pb.d
        nx = math.prod(tuple(x.shape))
        shape_x, shape_y = tuple(x.shape), tuple(y.shape)

        def split(w):
            return xp.reshape(w[:nx], shape_x), xp.reshape(w[nx:], shape_y)

        def joint(gx, gy):
            return xp.concat([xp.reshape(gx, (-1,)), xp.reshape(gy, (-1,))])

        w0 = joint(x, y)
        lf_outer = fd_lipschitz(lambda w: joint(*d.outer_grads(*split(w))[1:]), w0, xp)
        lf_inner = fd_lipschitz(lambda w: joint(*d.inner_grads(*split(w))), w0, xp)
        return lf_outer, lf_inner

    def _jacobian_norm(self, x, y, c0) -> float:
        """||Jᵧc(x, y)||₂ by power iteration on JᵀJ (Jᵀ from the constraint's VJP, J from
        central differences of c)."""
        pb, xp = self.pb, self.pb.xp
        shape = tuple(self.lam.shape)
        lam = xp.ones(shape, dtype=x.dtype, device=B.device(x))
        eps = float(xp.finfo(y.dtype).eps) ** (1.0 / 3.0)
        h = eps * max(1.0, pb.norm(y))
        s = 0.0
        for _ in range(10):
            lam = lam / max(pb.norm(lam), 1e-300)
            _, _, jt = pb.d.constraint_value_and_vjp(x, y, lam)
            s = pb.norm(jt)
            if s == 0.0 or not math.isfinite(s):
                return 0.0
            v = jt / s
            lam = xp.reshape(xp.asarray(pb.constraint(x, y + h * v)) -
                             xp.asarray(pb.constraint(x, y - h * v)), shape) / (2.0 * h)
        return s

    def _alpha(self, ck):
        g1 = self.opts["gamma1"]
        # f − v_γ is f minus its Moreau-type envelope in y: its curvature is at most f's
        # and λ⁺, which d_x sees through Jₓcᵀλ⁺, moves by η ||Jc|| per unit of (x, y): the
        # loop x → c → λ → x has gain α η ||Jc||², kept below one
        return 1.0 / (self.LF / ck + self.Lf + 1.0 / g1 + self.eta * self.jnorm ** 2)

    def _violation(self, x, y):
        xp = self.pb.xp
        c = xp.reshape(xp.asarray(self.pb.constraint(x, y)), tuple(self.lam.shape))
        if self.opts["equality"]:
            return c
        return xp.where(c > 0, c, xp.zeros_like(c))

    def _feasibility_step(self, x, y):
        """Gauss–Newton steps on ½||max(c(x, y), 0)||² (equalities: ½||c||²), in place of
        Proj_C, until the violation is below ``feas_tol / 10`` (at most
        ``FEASIBILITY_STEPS``).

        Yao et al. project (x, y) onto C = {c(x, y) <= 0} after each step (Algorithm 1),
        which needs a cheap projection. Without one, the step ``t Jᵀc₊`` with the Polyak
        length ``t = ||c₊||² / ||Jᵀc₊||²`` lands on the linearised constraint: one step is
        the exact projection for one violated linear constraint (an equality such as the
        authors' toy's ``Σx + Σy = 0`` included), or for constraints with orthonormal
        gradients (``y <= b``). Several coupled constraints need several steps: with one,
        the SVM problem of the benchmark (60 margin constraints) kept y 0.4 outside C.
        """
        pb = self.pb
        for _ in range(FEASIBILITY_STEPS):
            viol = self._violation(x, y)
            v2 = float(pb.xp.sum(viol * viol))
            if v2 == 0.0 or float(pb.xp.max(pb.xp.abs(viol))) <= 0.1 * self.opts["feas_tol"]:
                break
            _, jx, jy = pb.d.constraint_value_and_vjp(x, y, viol)
            n2 = float(pb.xp.sum(jx * jx) + pb.xp.sum(jy * jy))
            if n2 == 0.0:
                break
            t = v2 / n2
            x, y = pb.px(x - t * jx), pb.py(y - t * jy)
        return x, y

    def directions(self, x, y, z, theta, lam, ck):
        """``(d_x, d_y, d_z)`` of Algorithm 1 at θ⁺ = ``theta``, λ⁺ = ``lam``.

        d_x = ∇ₓF/c_k + ∇ₓf(x, y) − ∇ₓf(x, θ⁺) − Jₓc(x, θ⁺)ᵀλ⁺,
        d_y = ∇ᵧF/c_k + ∇ᵧf(x, y) − (y − θ⁺)/γ₁, d_z = (z − λ⁺)/γ₂.
        """
        d, o = self.pb.d, self.opts
        value, Fx, Fy = d.outer_grads(x, y)
        fx_y, fy_y = d.inner_grads(x, y)
        fx_t, _ = d.inner_grads(x, theta)
        _, cx_t, _ = d.constraint_value_and_vjp(x, theta, lam)
        dx = Fx / ck + fx_y - fx_t - cx_t
        dy = Fy / ck + fy_y - (y - theta) / o["gamma1"]
        dz = (z - lam) / o["gamma2"]
        return value, dx, dy, dz

    def iterate(self, k):
        pb, d, o, xp = self.pb, self.pb.d, self.opts, self.pb.xp
        x, y = self.x, self.y
        decay = _decayed(1.0, o["step_power"], k)
        eta = decay * self.eta
        g1, g2, lam_max = o["gamma1"], o["gamma2"], o["lam_max"]
        theta, lam = self.theta, self.lam
        for _ in range(self.inner_iters):
            gth = d.inner_grad_y(x, theta)
            _, _, cth = d.constraint_value_and_vjp(x, theta, lam)
            theta = pb.py(theta - eta * (gth + cth + (theta - y) / g1))
            # λ ascends at the new θ (Gauss–Seidel): simultaneous descent-ascent on the
            # bilinear ⟨λ, c(x, θ)⟩ grows like (η||Jᵧc||)² per step, which the proximal
            # terms' 1/γ damping cannot hold once ||Jᵧc||² > 2/(γη) (the authors' toy:
            # ||Jᵧc||² = 2n); alternating updates stay bounded for η||Jᵧc|| < 2
            cval = xp.reshape(xp.asarray(pb.constraint(x, theta)), tuple(lam.shape))
            lam = xp.clip(lam + eta * (cval - (lam - self.z) / g2), self.lam_lo, lam_max)
            pb.resample(outer=False)
        ck = self.c * (k + 1) ** o["p"]
        if self.auto:
            self.step = self._alpha(ck)
            self.y_step = self.step if self.y_user is None else self.y_user
        value, dx, dy, dz = self.directions(x, y, self.z, theta, lam, ck)
        if o["rho"]:
            # the gradient of (ρ/2)||max(c(x, y), 0)||² pushes (x, y) towards C
            _, px_, py_ = d.constraint_value_and_vjp(x, y, self._violation(x, y))
            dx = dx + o["rho"] * px_
            dy = dy + o["rho"] * py_
        x_new = pb.px(x - decay * self.step * dx)
        y_new = pb.py(y - decay * self.y_step * dy)
        if o["rho"] is None:
            x_new, y_new = self._feasibility_step(x_new, y_new)
        self.z = xp.clip(self.z - o["beta"] * dz, self.lam_lo, lam_max)
        dxy = math.hypot(pb.norm(x_new - x) / self.step, pb.norm(y_new - y) / self.y_step)
        res = ck * dxy / decay + pb.norm(theta - self.theta) / eta
        self.x, self.y, self.theta, self.lam = x_new, y_new, theta, lam
        return value, ck * pb.norm(x_new - x) / (decay * self.step), res


class _BOREP(_ExactAID):
    """Hao, Gong & Liu (ICLR 2024): normalised momentum, refinement, periodic updates.

    Exact path (``options["exact"]``, deterministic runs without a user inner step or a
    y-set): y*(x) by Newton and ∇Φ by CG at every iteration, as implicit's quasi-Newton
    path computes them, so that Φ's measured values can set η. The paper's periodic
    lower-level steps and single-step linear-system updates keep the cost of a stochastic
    iteration flat; on a deterministic problem with an ill-conditioned lower level (the
    benchmark's logistic regression: weights exp(xᵢ) from e⁻⁸ to e⁸) ten gradient steps
    every other iteration leave y far from y*(x), and x follows a wrong hypergradient.
    """

    def __init__(self, pb, x, y, step, inner_step, inner_iters, opts):
        self.pb, self.x = pb, x
        if step is None:
            step = DEFAULT_STEP["bo-rep"] * max(1.0, pb.norm(x))
        self.step, self.nu, self.inner_iters, self.opts = step, inner_step, inner_iters, opts
        self.exact = opts["exact"] and pb.batch is None and opts["_inner_user"] is None \
            and pb.py_given is None
        mode = BOREP_DEFAULTS["exact" if self.exact else "stochastic"]
        self.beta, self.anneal, self.grow = (mode[i] if opts[k] is None else opts[k]
                                             for i, k in enumerate(("beta", "anneal", "grow")))
        self.eta, self.eta_max = step, BOREP_ETA_RANGE * step
        self.prev_value = math.inf
        self.m = pb.xp.zeros_like(x)
        self.inner_res = math.inf
        self.inner_failures = (0, "")
        if self.exact:
            if opts["_inner_iters_user"] is None:
                self.inner_iters = QN_INNER_ITERS
            self.inner_tol: float | None = None
            self.cg = tuple(OPTIONS["implicit"][k]
                            for k in ("cg_rtol", "cg_maxiter", "ridge", "cg_atol"))
            self.y = y
            return
        self.inner = pb.descent(opts["_inner_user"], inner_step)
        self.power = PowerIteration(pb.xp, y) if opts["_inner_user"] is None and \
            pb.batch is None else None
        # initialisation refinement: solve the lower level well once at x0
        self.y, _ = pb.inner_descent(x, y, self.inner, opts["refine_iters"])
        self.v = pb.xp.zeros_like(y)

    def _estimate(self, k):
        """``(outer value, hypergradient estimate, linear-system residual norm)``."""
        pb, d, o, x = self.pb, self.pb.d, self.opts, self.x
        if self.exact:
            self.y, self.inner_res = self._lower(x, self.y)
            return self._hypergradient(x, self.y)
        if k % o["period"] == 0:  # periodic lower-level update, warm-started
            self.y, self.inner_res = pb.inner_descent(x, self.y, self.inner, self.inner_iters)
            if self.power is not None:
                # v's step must stay below 2/L as ∇²ᵧᵧg changes with x (a weight exp(x)
                # raises it): a few warm-started power steps follow L
                L = self.power(lambda u: pb.d.hvp_both(x, self.y, u)[1])
                if L > 0 and math.isfinite(L):
                    self.nu = 1.0 / (1.05 * L)
        y, v = self.y, self.v
        value, fx, fy = d.outer_grads(x, y)
        hxy_v, hyy_v = d.hvp_both(x, y, v)  # ∇²ₓᵧg·v and ∇²ᵧᵧg·v
        lin_res = hyy_v - fy
        self.v = v - self.nu * lin_res
        return value, fx - hxy_v, pb.norm(lin_res)

    def iterate(self, k):
        pb, o, xp, x = self.pb, self.opts, self.pb.xp, self.x
        value, ghat, lin_res = self._estimate(k)
        # BO-REP's constant η leaves its normalised steps (length η whatever ||m||)
        # circling x* at a distance ~η, and a fixed η cannot both cross the distance to x*
        # and settle there. η adapts (ours, not the paper's): exact runs compare Φ's
        # values (a rise cuts η, a decrease grows it); stochastic ones, whose values are
        # mini-batch noise, cut η when the estimate turns against the momentum
        if k > 0:
            if self.exact:
                overshoot = not value <= self.prev_value
            else:
                overshoot = float(xp.sum(ghat * self.m)) < 0
            self.eta = self.eta * self.anneal if overshoot else \
                min(self.eta * self.grow, self.eta_max)
        self.prev_value = value
        eta_k = _decayed(self.eta, o["eta_power"], k)
        self.m = self.beta * self.m + (1.0 - self.beta) * ghat
        # momentum components pushing against an active bound of x's set do not move x;
        # left in, they would take most of the normalised step's length once x sits on a
        # face of a box, and the free components would crawl
        held = (pb.px(x - self.step * ghat) == x) & (ghat != 0)
        m_free = xp.where(held, xp.zeros_like(self.m), self.m)
        m_norm = pb.norm(m_free)
        if m_norm > 0:
            self.x = pb.px(x - eta_k * m_free / m_norm)
        # the hypergradient estimate as a projected-gradient mapping with the base step
        gnorm = pb.norm(x - pb.px(x - self.step * ghat)) / self.step
        return value, gnorm, max(gnorm, lin_res, self.inner_res)


_CLASSES = {"implicit": _Implicit, "penalty": _Penalty, "lv-hba": _LVHBA, "bo-rep": _BOREP}

_ADVICE = {
    "implicit": "increase maxiter or inner_iters, or try a larger stepsize",
    "penalty": "increase maxiter (λ doubles as the penalised problem gets solved, and the "
               "stopping test also asks y to be optimal for inner: ||∇ᵧ inner|| <= tol) or "
               "inner_iters; with options['lam_step'], λ must reach options['lam_max']",
    "lv-hba": "increase maxiter (LV-HBA converges sublinearly: its penalised problem is "
              "O(1/c_k) from the bilevel one, c_k = c (k + 1)^p), options['c'], or tune "
              "stepsize / inner_stepsize",
    "bo-rep": "increase maxiter or inner_iters, or tune stepsize and options['anneal'] / "
              "options['grow'] / options['eta_power']",
}


@dataclass(frozen=True)
class BilevelSettings:
    """The options of one :func:`solve` call, validated once (defaults: its signature).

    Attributes
    ----------
    method, maxiter, rtol, atol, stepsize, inner_stepsize, inner_iters, options,
    batch, seed, progress, callback, throw
        The arguments of the same names of :func:`diffsolve.bilevel.solve`, validated (a frozen
        dataclass: read it, do not build it).

    See Also
    --------
    diffsolve.bilevel.solve : The function whose options these are.

    Examples
    --------
    >>> import dataclasses
    >>> import diffsolve as ds
    >>> "rtol" in {f.name for f in dataclasses.fields(ds.bilevel.BilevelSettings)}
    True
    """

    method: str
    maxiter: int
    rtol: float
    atol: float
    stepsize: float | None
    inner_stepsize: float | None
    inner_iters: int
    options: MappingProxyType
    batch: tuple | None
    seed: int
    progress: bool
    callback: Callable | None
    throw: bool

    @property
    def fixed_budget(self) -> bool:
        """``rtol = atol = 0``: run exactly ``maxiter`` iterations."""
        return self.rtol == 0.0 and self.atol == 0.0


def solve(outer: Callable[..., Any], inner: Callable[..., Any], x0: Array, y0: Array,
          method: str = "implicit", *, constraint: Callable[..., Any] | None = None,
          x_projection: Projection | None = None, y_projection: Projection | None = None,
          maxiter: int = 1000, rtol: float = 0.0, atol: float = 1e-6,
          stepsize: float | None = None, inner_stepsize: float | None = None,
          inner_iters: int | None = None, options: dict | None = None,
          batch: tuple[int, int] | None = None, seed: Seed = 0,
          outer_grad: Callable | None = None,
          inner_grad: Callable | None = None, inner_hvp: Callable | None = None,
          constraint_vjp: Callable | None = None, progress: bool = False,
          callback: Callback[BilevelState] | None = None, throw: bool = False,
          **deprecated: Any) -> BilevelResult:
    """Solve ``min_x outer(x, y*(x))`` with ``y*(x) ∈ argmin_y inner(x, y)``.

    Parameters
    ----------
    outer, inner : callable
        ``outer(x, y) -> scalar`` (f, the upper level) and ``inner(x, y) -> scalar`` (g, the
        lower level), in the library of ``x0`` and ``y0``: ``autograd.numpy`` for NumPy
        arrays, torch for torch tensors, ``jax.numpy`` for JAX arrays (derivatives then
        come from that autodiff system), or any array-API library (CuPy,
        array_api_strict) together with the derivative callables below.
    x0, y0 : array
        Starting points (floating, one library and device); projected onto their sets
        first. The iterates stay in that namespace, on that device, in that dtype.
    method : {"implicit", "penalty", "lv-hba", "bo-rep"}
        * ``"implicit"``: AID: y*(x) from warm-started lower-level steps, the implicit-cg
          hypergradient, then an x step. Deterministic runs without user steps or a
          y-set (the default ``options["x_update"] = "quasi-newton"``): the lower level
          is solved by Newton-CG to ``1e-10`` of its gradient at the start (at most
          ``inner_iters`` = 20 steps), and x takes projected L-BFGS steps with an Armijo
          search on ``outer(x, y*(x))``; otherwise ``inner_iters`` gradient steps and a
          projected gradient step. Needs an inner problem strongly convex in y and
          Hessian-vector products.
        * ``"penalty"``: the value-function penalty ``ψ_λ(x) = min_y (f + λg) − λ min_z
          g`` with ``λ`` doubling as the measured progress allows (see ``options``); the
          answer is ``O(1/λ)`` from the bilevel one, so convergence also asks the
          lower-level optimality of y; tolerates several lower-level minimisers. On the
          quasi-Newton path (as for implicit, and when the arrays' autodiff system gives
          second derivatives of outer) y and z are Newton-CG solves, x takes projected
          L-BFGS steps on ψ_λ, and λ grows at most ``1e7`` times its start; otherwise
          (``x_update="gradient"``, user steps, mini-batches) it is first order, with
          gradient steps for y, z and x.
        * ``"lv-hba"``: first order, single loop, for a lower level with constraints
          ``constraint(x, y) <= 0`` (required; equalities with
          ``options={"equality": True}``). Sublinear: its iterate is ``O(1/c_k)`` from
          the solution, ``c_k = c (k + 1)^p``.
        * ``"bo-rep"``: normalised momentum on x, step length η (start ``step``, divided
          by ``(k + 1)^eta_power``; components pushing against an active bound of x's
          set left out). Deterministic runs without ``inner_stepsize`` or a y-set (the
          exact path, ``options["exact"]``): y*(x) by Newton and the hypergradient by CG
          at every iteration, η times ``grow`` after a decrease of Φ and times
          ``anneal`` after a rise. Otherwise (the paper's path): one Hessian-vector step
          per iteration for the linear system, the lower level refined at the start
          (``refine_iters``) and updated every ``period`` iterations, η times ``anneal``
          when the hypergradient estimate turns against the momentum.
    constraint : callable, optional
        ``constraint(x, y) -> array (m,)`` or scalar, the lower-level constraints
        ``<= 0`` (lv-hba only; simple sets for y go to ``y_projection``). Never batched.
    x_projection, y_projection : callable or tuple or str, optional
        The sets x and y live in: a projection ``v -> P(v)``, or ``("box", lower, upper)``,
        ``("ball", radius)``, ``"simplex"`` / ``("simplex", value)``, ``"nonnegative"``
        (the projections of :mod:`diffsolve.implicit`). For ``"implicit"`` and
        ``"bo-rep"`` a y-set must not be active at ``y*``: their hypergradient assumes an
        interior lower-level minimum.
    maxiter : int
        Outer iterations (``max_iter`` is its deprecated name).
    rtol, atol : float
        Stop when the method's stationarity measure is ``<= max(atol, rtol · g₀)``, g₀ the
        hypergradient-estimate norm of the first iteration: implicit, bo-rep: the
        projected hypergradient mapping and the inner (and linear-system) residuals;
        penalty: the same for x, y, z and the lower-level optimality of y,
        ``||∇ᵧ inner(x, y)||`` as a projected mapping (additive schedule: once
        ``λ = lam_max``); lv-hba: ``c_k`` times the
        (x, y) step over ``stepsize`` plus the θ step over ``inner_stepsize``, and the
        constraints satisfied to ``feas_tol`` at the end. ``rtol = atol = 0`` runs exactly
        ``maxiter`` iterations (a fixed budget: status ``MAX_ITERATIONS`` without a
        warning). ``tol`` is the deprecated name of ``atol``.
    stepsize : float, optional
        The x step (lv-hba: its α for (x, y); bo-rep: η, the length of the normalised
        step). ``step`` is its deprecated name. Default None: set from the problem, so
        that rescaling ``outer`` or ``inner`` does not change the iterates — implicit and
        penalty ``1/L̂``, L̂ the curvature of their x direction measured along the steps
        taken (secants, halved on a growing direction); lv-hba
        ``α_k = 1/(L_F/c_k + L_f + 1/γ₁ + η||Jᵧc||²)`` from power-iteration estimates of
        the constants (Yao et al.'s step condition); bo-rep ``0.1 max(1, ||x0||)``. With
        mini-batches the default is the fixed 0.1 (implicit, penalty). On the
        quasi-Newton path of implicit and penalty there is no step to set: the search
        tries the L-BFGS step first (the first one moves x by a tenth of its scale).
    inner_stepsize : float, optional
        Lower-level step (penalty: also z's; lv-hba: θ's and λ's, η; bo-rep and the
        stochastic implicit: also the linear-system variable's, ν; ``inner_step`` is its
        deprecated name). Default None: from ``1 / (1.05 L̂)``, L̂ the largest eigenvalue
        of ``∇²ᵧᵧ inner(x0, y0)`` by power iteration (on the whole data set; with
        ``inner_grad`` and no ``inner_hvp``, on central differences of ``inner_grad``),
        then adapted as x moves: the lower-level loops backtrack (the descent-lemma test
        ``g(y⁺) <= g(y) − ||y⁺ − y||²/(2t)``, a longer trial after each accepted step),
        bo-rep re-estimates L̂ at each lower-level update, lv-hba's η also accounts for
        the constraint Jacobian, ``1/(1.05 L̂ + 1/γ₁ + ||Jᵧc||)``. A given
        ``inner_stepsize`` is used as it is (mini-batches: always).
    inner_iters : int, optional
        Lower-level steps per outer iteration (implicit 20, penalty 10, lv-hba 1, bo-rep
        10 = N); for the stochastic implicit also the number of steps on v. On the
        quasi-Newton path (and bo-rep's exact path): the most Newton steps per lower-level
        solve (20), which stop earlier at their tolerance.
    options : dict, optional
        Method-specific settings: implicit ``cg_maxiter`` (None), ``cg_rtol`` (1e-8),
        ``cg_atol`` (0; CG on the Hessian system stops at
        ``max(cg_rtol ||∇ᵧf||, cg_atol)``), ``ridge`` (0); implicit and penalty
        ``x_update`` (``"quasi-newton"``, see ``method``, or ``"gradient"``: the
        secant-length projected gradient steps of earlier versions); penalty ``lam0`` (None: the
        ratio of the curvatures of outer and inner in y at the start), ``lam_step``
        (None: λ doubles once the penalised problem is solved to a tenth of the
        stationarity it had when λ last changed, or after ``lam_patience`` = 20
        iterations; a number: the additive ``λ ← λ + lam_step`` with fixed y and z
        steps, λ₀ = 1), ``lam_max`` (None: 1e10 for the doubling schedule, 1e4 for the
        additive one); lv-hba
        ``beta`` (10, z's step: ``β = γ₂`` moves z onto λ⁺ in one step), ``gamma1``,
        ``gamma2`` (10), ``c`` (None: ``3 L_F/L_f``, the curvature ratio of outer and
        inner; 3 with a user ``stepsize``), ``p`` (0.49) for ``c_k = c (k + 1)^p``,
        ``lam_max`` (1e3, the box of λ), ``equality`` (False; True: the constraints are
        equalities ``constraint(x, y) = 0``, λ is free in ``[−lam_max, lam_max]``),
        ``feas_tol`` (1e-4), ``rho``: how (x, y) is kept in
        ``{constraint <= 0}``, where the paper projects: None (default) Gauss–Newton
        steps on ``½||max(constraint, 0)||²`` (equalities: ``½||constraint||²``) after each
        update, until it is below feas_tol/10 (at most 20; one is exact for one linear
        constraint, or for ``y <= b``), a number ρ > 0 the
        gradient of ``(ρ/2)||max(constraint, 0)||²`` added to the (x, y) direction (needs
        steps ~1/ρ), 0 nothing (when ``y_projection`` already projects onto that set);
        ``y_step`` (None: ``stepsize``);
        bo-rep ``exact`` (True: the exact path where it applies), ``beta`` (momentum;
        0.5 on the exact path, 0.9 otherwise), ``anneal`` (η's cut; 0.5 exact, 0.8
        otherwise), ``grow`` (η's growth after a decrease, at most to 100 times its
        start; 1.2 exact, 1 otherwise), ``period`` (2 = I), ``refine_iters`` (100),
        ``eta_power`` (0); ``exact=False, anneal=1, eta_power=0`` is BO-REP's constant
        step.
        implicit, penalty and lv-hba: ``step_power`` (0): the x step (lv-hba: the (x, y)
        step) is ``stepsize / (k + 1)^step_power`` — use 0.5 with mini-batches.
    batch : (n_samples, batch_size), optional
        The seeded stochastic variant, for every method: ``outer`` and ``inner`` (and the
        derivative callables) then take the sample indices as their last argument,
        ``outer(x, y, idx)``, ``inner_hvp(x, y, v, idx)``; ``idx`` is an integer array of
        ``batch_size`` distinct indices in ``range(n_samples)``, in x's namespace and on its
        device (drawn on the host from ``seed``, so runs are reproducible on every
        backend; select rows with ``xp.take(data, idx, axis=0)``). Every iteration draws a
        fresh batch for each level, every lower-level step (and every step on the
        stochastic implicit's v) its own. implicit replaces CG by warm-started stochastic
        steps on v; use decreasing steps (``step_power`` 0.5; bo-rep ``eta_power`` 0.5 and
        ``anneal=1``). ``history.outer`` then holds mini-batch values, and the stopping
        test sees mini-batch quantities (use a ``callback`` to evaluate on all the data).
    seed : int
        Seed of the mini-batch draws (``batch`` only); equal seeds give equal runs.
    outer_grad, inner_grad : callable, optional
        ``outer_grad(x, y) -> (∇ₓ outer, ∇ᵧ outer)`` and likewise for inner, in x's library.
    inner_hvp : callable, optional
        ``inner_hvp(x, y, v) -> (∇²ₓᵧ inner · v, ∇²ᵧᵧ inner · v)``: the VJP of
        ``(x, y) ↦ ∇ᵧ inner`` at v (implicit and bo-rep).
    constraint_vjp : callable, optional
        ``constraint_vjp(x, y, lam) -> (Jₓcᵀlam, Jᵧcᵀlam)``, ``lam`` of the constraint's
        shape (lv-hba). The four callables replace the autodiff system of the arrays;
        without one (CuPy, array_api_strict) the ones the method needs are required.
    progress : bool
        Show a tqdm progress bar (outer objective and hypergradient norm as postfix).
    callback : callable, optional
        ``callback(state) -> bool | None`` with a frozen :class:`BilevelState` (``n_iters``,
        ``x``, ``y``, ``outer_value``, ``grad_norm``, ``method``) after every iteration;
        returning ``True`` stops the run (status ``STOPPED``, ``converged=False``, no
        warning).
    throw : bool
        Raise the :class:`~diffsolve.SolveError` of the status
        (:class:`~diffsolve.MaxIterationsError`, :class:`~diffsolve.DivergedError`,
        :class:`~diffsolve.InfeasibleError`, :class:`~diffsolve.NonFiniteError`) instead
        of warning.
    **deprecated
        The option names used before the solver contract still work with a
        ``DeprecationWarning`` (each option above names its old name); any other keyword
        raises ``TypeError``.

    Returns
    -------
    BilevelResult

    Raises
    ------
    ValueError
        Unknown method or option, step sizes ``<= 0``, negative tolerances, an empty set (a
        box with ``lower > upper``), a projection that changes the shape, non-scalar
        objectives, a ``constraint`` for a method other than lv-hba (or none for lv-hba),
        x0 / y0 of size 0 or with NaN/inf.
    TypeError
        Non-callable functions, x0 / y0 that are not float32/float64 arrays (integers are
        promoted to float64), ``bool`` budgets, or arrays without an autodiff system and
        without the derivative callables the method needs.
    NotTraceableError
        ``outer``, ``inner`` or ``constraint`` written with plain NumPy calls that hide
        their dependence from autograd: write them with ``autograd.numpy``, or pass the
        derivatives.
    SolveError
        With ``throw=True``, a run that did not converge (the subclass of its status).

    Warns
    -----
    ConvergenceWarning
        ``converged=False`` (``throw=False``): ``maxiter`` reached, the iterates diverged,
        or (lv-hba) the constraints are still violated (an empty constraint set, or too
        short a run).

    See Also
    --------
    diffsolve.bilevel.hypergradient : One hypergradient at a given point.
    diffsolve.bilevel.BilevelResult : The result and its history.

    Examples
    --------
    ``y*(x) = x`` and ``outer = ½(y − 1)² + ½x²``, so ``x* = y* = 0.5``:

    >>> import numpy as np, autograd.numpy as anp
    >>> import diffsolve as ds
    >>> inner = lambda x, y: 0.5 * anp.sum((y - x) ** 2)
    >>> outer = lambda x, y: 0.5 * anp.sum((y - 1.0) ** 2) + 0.5 * anp.sum(x ** 2)
    >>> res = ds.bilevel.solve(outer, inner, np.zeros(1), np.zeros(1), stepsize=0.5)
    >>> res.converged, res.status.name, np.round(res.x, 6), np.round(res.y, 6)
    (True, 'SUCCESS', array([0.5]), array([0.5]))

    The same problem with its derivatives written out runs in any array library:

    >>> res = ds.bilevel.solve(
    ...     outer, inner, np.zeros(1), np.zeros(1), "penalty", maxiter=3000,
    ...     outer_grad=lambda x, y: (x, y - 1.0), inner_grad=lambda x, y: (x - y, y - x))
    >>> res.converged, np.round(res.x, 3)
    (True, array([0.5]))
    """
    given = {"maxiter": maxiter, "atol": atol, "stepsize": stepsize,
             "inner_stepsize": inner_stepsize}
    for new, value in V.renamed_options(WHERE, deprecated, RENAMED).items():
        if new not in given:
            V.unexpected_options(WHERE, {new: value}, _PARAMETERS)
        if given[new] != _DEFAULTS[new]:
            old = next(o for o, n in RENAMED.items() if n == new)
            raise TypeError(f"{WHERE}: got both {old}= (deprecated) and {new}=; pass only "
                            f"{new}=")
        given[new] = value
    x0 = check_array(WHERE, "x0", x0)
    y0 = check_array(WHERE, "y0", y0)
    xp = same_library(WHERE, x0=x0, y0=y0)
    for name, fn in (("outer", outer), ("inner", inner)):
        if not callable(fn):
            raise TypeError(f"{WHERE}: {name} must be a callable {name}(x, y) -> scalar, got "
                            f"{type(fn).__name__}")
    check_callables(WHERE, outer_grad=outer_grad, inner_grad=inner_grad, inner_hvp=inner_hvp,
                    constraint_vjp=constraint_vjp)
    st = _settings(method, given, rtol, inner_iters, options, batch, seed, progress,
                   callback, throw)
    method = st.method
    if method == "lv-hba":
        if not callable(constraint):
            raise ValueError(f"{WHERE}: method='lv-hba' needs constraint=c with c(x, y) <= 0 "
                             f"the lower-level constraints, got {constraint!r}")
    elif constraint is not None:
        raise ValueError(f"{WHERE}: constraint= is only used by method='lv-hba', got method="
                         f"{method!r}; pass simple sets for y as y_projection, or use lv-hba")

    device = B.device(x0)
    px = _projection(x_projection, "x_projection", x0)
    py = _projection(y_projection, "y_projection", y0)
    x = px(x0) if px is not None else x0
    y = py(y0) if py is not None else y0
    oracle = Oracle(outer, inner, constraint, xp, outer_grad=outer_grad,
                    inner_grad=inner_grad, inner_hvp=inner_hvp, constraint_vjp=constraint_vjp,
                    needs=NEEDS[method], where=WHERE, what=f"method={method!r}")
    pb = _Problem(oracle, constraint, px, py, xp, device, st.batch, st.seed)
    if st.batch is not None:  # the first calls check shapes, and L̂ is estimated, on all data
        every = xp.arange(st.batch[0], device=device)
        oracle.bind(every, every)
    for name, fn in (("outer", oracle.outer), ("inner", oracle.inner)):
        first_call(WHERE, fn, name, x, y, "x0", "y0")
    if constraint is not None:
        try:
            c0 = constraint(x, y)
        except (ValueError, TypeError, IndexError) as e:
            raise ValueError(f"{WHERE}: constraint(x0, y0) failed for x0 of shape "
                             f"{tuple(x.shape)} and y0 of shape {tuple(y.shape)}: {e}") from e
        if (not B.is_array(c0) and not isinstance(c0, numbers.Real)) or len(_shape(c0)) > 1:
            raise ValueError(f"{WHERE}: constraint(x, y) must return a scalar or a 1-D array "
                             f"of constraint values, got {c0!r}")
    inner_step = st.inner_stepsize
    if inner_step is None:
        try:
            inner_step = _stepsize(oracle.curvature_probe(x, y), y, xp)
        except ValueError as e:
            raise ValueError(f"{WHERE}: inner_stepsize=None needs ∇²ᵧᵧ inner(x0, y0) ≠ 0 to "
                             "estimate 1/L; pass inner_stepsize=") from e
    pb.resample()
    opts = dict(st.options)
    opts["_inner_user"] = st.inner_stepsize  # None: the lower-level steps backtrack
    opts["_inner_iters_user"] = inner_iters  # None: the method's own default count
    # stepsize=None: each method sets its steps from the problem (see its class)
    runner = _CLASSES[method](pb, x, y, st.stepsize, inner_step, st.inner_iters, opts)
    result = _run(runner, pb, st, constraint, xp)
    return report(result, throw=st.throw, fixed_budget=st.fixed_budget)


def _settings(method, given, rtol, inner_iters, options, batch, seed, progress, callback,
              throw) -> BilevelSettings:
    method = V.choice(WHERE, "method", method, METHODS)
    rtol, atol = V.tolerances(WHERE, rtol, given["atol"])
    inner_iters = V.positive_int(WHERE, "inner_iters", inner_iters, allow_none=True)
    return BilevelSettings(
        method=method,
        maxiter=V.positive_int(WHERE, "maxiter", given["maxiter"]),
        rtol=rtol,
        atol=atol,
        stepsize=V.positive_real(WHERE, "stepsize", given["stepsize"], allow_none=True),
        inner_stepsize=V.positive_real(WHERE, "inner_stepsize", given["inner_stepsize"],
                                       allow_none=True),
        inner_iters=DEFAULT_INNER_ITERS[method] if inner_iters is None else inner_iters,
        options=MappingProxyType(_options(method, options)),
        batch=_check_batch(batch),
        seed=V.integer(WHERE, "seed", seed),
        progress=V.boolean(WHERE, "progress", progress),
        callback=V.callback(WHERE, callback),
        throw=V.boolean(WHERE, "throw", throw),
    )


def _run(runner, pb, st: BilevelSettings, constraint, xp) -> BilevelResult:
    """The outer loop: iterate, record, stop; then the status and its message."""
    method = st.method
    user_steps = {"stepsize": st.stepsize, "inner_stepsize": st.inner_stepsize}
    outer_hist, grad_hist, time_hist = [], [], []
    bar = tqdm(total=st.maxiter, desc=f"bilevel {method}") if st.progress else None
    status = None
    start = time.perf_counter()
    k = 0
    res = math.inf
    tol = None
    monitor = DivergenceMonitor()
    diverged = ""
    try:
        for k in range(st.maxiter):
            if k:
                pb.resample()
            value, gnorm, res = runner.iterate(k)
            outer_hist.append(value)
            grad_hist.append(gnorm)
            time_hist.append(time.perf_counter() - start)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(outer=f"{value:.4g}", grad=f"{gnorm:.2e}")
            found = monitor.check(**{"||x||": pb.norm(runner.x), "||y||": pb.norm(runner.y),
                                     "outer(x, y)": value, "the stationarity measure": gnorm})
            if found is not None:
                status, diverged = found
                break
            if tol is None:
                tol = max(st.atol, st.rtol * gnorm)
            # wants_stop: a NumPy bool (a comparison of arrays) stops too, not only True
            if st.callback is not None and wants_stop(st.callback(BilevelState(
                    k + 1, runner.x, runner.y, value, gnorm, method))):
                status = Status.STOPPED
                break
            # not (res > tol): a NaN measure is caught above; res <= 0 <= tol only when exact
            if not st.fixed_budget and res <= tol:
                status = Status.SUCCESS
                break
    finally:
        if bar is not None:
            bar.close()
    n_iters = k + 1
    if status is None:
        status = Status.MAX_ITERATIONS
    infeasible = None
    if method == "lv-hba" and status not in (Status.DIVERGED, Status.NONFINITE):
        cval = xp.reshape(xp.asarray(constraint(runner.x, runner.y)), (-1,))
        viol = float(xp.max(xp.abs(cval) if st.options["equality"] else cval))
        if viol > st.options["feas_tol"]:
            status, infeasible = Status.INFEASIBLE, viol
    label = f"{WHERE}(method={method!r})"
    if status is Status.SUCCESS:
        message = f"{label}: converged in {n_iters} iterations"
    elif status is Status.STOPPED:
        message = f"{label}: stopped by the callback after {n_iters} iterations"
    elif status in (Status.DIVERGED, Status.NONFINITE):
        what = "diverged" if status is Status.DIVERGED else "became non-finite"
        message = (f"{label}: the run {what} at iteration {n_iters} ({diverged}): "
                   f"{advice(method, user_steps)}")
    elif infeasible is not None:
        message = (f"{label}: the lower-level constraints are violated by {infeasible:.3g} > "
                   f"feas_tol={st.options['feas_tol']:g} at the end: either the set {{y : "
                   "constraint(x, y) <= 0} is empty (infeasible; check the constraints) "
                   "or the run is too short (increase maxiter or options['c'], or project y "
                   "onto the set with y_projection)")
    elif st.fixed_budget:
        message = f"{label}: ran the requested {n_iters} iterations (rtol = atol = 0)"
    else:
        message = (f"{label}: did not converge in {n_iters} iterations (last stationarity "
                   f"measure {res:.3g} > tol={tol:g}); {_ADVICE[method]}")
    failures = getattr(runner, "inner_failures", None)
    if failures and failures[0] and status is not Status.SUCCESS:
        message += (f". {failures[0]} of the hypergradient's linear solves stopped early; the "
                    f"last: {failures[1]}")
    hxp = B.host_namespace()
    history = BilevelHistory(hxp.asarray(outer_hist, dtype=hxp.float64),
                             hxp.asarray(grad_hist, dtype=hxp.float64),
                             hxp.asarray(time_hist, dtype=hxp.float64))
    return BilevelResult(runner.x, runner.y, n_iters, status is Status.SUCCESS, history,
                         method, message, status)


_DEFAULTS = {name: p.default for name, p in inspect.signature(solve).parameters.items()}
_PARAMETERS = tuple(n for n in _DEFAULTS if n not in ("deprecated",))
