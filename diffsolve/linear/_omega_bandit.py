"""Online tuning of the relaxation parameter ω across a sequence of linear systems.

:class:`OmegaBandit` (Tsallis-INF) and :class:`ContextualOmegaBandit` (ChebCB, or
Tsallis-INF per context bin) choose ω for each solve of ``"sor"`` or ``"ssor-cg"``, see
only the iteration count it took, and learn which ω is cheapest -- the method of Khodak,
Chow, Balcan & Talwalkar, "Learning to relax" (ICLR 2024); reference MATLAB code
github.com/mkhodak/learning-to-relax. They add no matrix computation to the solves: the
only feedback is ``n_iters``.

The learners themselves (:mod:`diffsolve.linear._bandit_algorithms`) work on scaled losses;
this module turns iteration counts into those losses, drives
:func:`diffsolve.linear.solve`, and keeps the history and the resumable state.
"""

from __future__ import annotations

import inspect
import json
import math
import numbers
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

from .._autodiff import DifferentiableFunction
from .._backend import host_namespace
from .._status import report
from .._typing import Array, Matrix, Seed
from ._bandit_algorithms import (
    BinnedTsallisINF,
    ChebCB,
    TsallisINF,
    _check_context,
    _check_context_range,
    _check_seed,
)
from ._result import LinearSolveResult

_B = TypeVar("_B", bound="_OmegaBanditBase")

__all__ = ["BanditSolveResult", "ContextualOmegaBandit", "OmegaBandit", "OmegaBanditHistory"]

xp = host_namespace()

METHODS = ("sor", "ssor-cg")
ALGORITHMS = ("chebcb", "binned")
#: ω ∈ linspace(1, 1.95, 20), the arms of the reference code and of the paper
DEFAULT_OMEGAS = tuple(round(1.0 + 0.05 * i, 2) for i in range(20))


@dataclass(frozen=True)
class BanditSolveResult(LinearSolveResult):
    """A :class:`~diffsolve.linear.LinearSolveResult` that also says which ω the bandit chose.

    Attributes
    ----------
    x, n_iters, converged, residual_norm, info
        As :class:`~diffsolve.linear.LinearSolveResult` (``x`` is the differentiable field).
    omega : float
        The relaxation parameter used for this solve.
    arm : int
        Its index in the bandit's ``omegas``.

    See Also
    --------
    diffsolve.linear.OmegaBandit : Its ``solve`` returns this.
    diffsolve.linear.LinearSolveResult : The fields shared with a plain solve.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> import diffsolve as ds
    >>> A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(6, 6), format="csr")
    >>> bandit = ds.linear.OmegaBandit(seed=0)
    >>> res = bandit.solve(A, np.ones(6))
    >>> res.converged, bool(res.omega == bandit.omegas[res.arm])
    (True, True)
    """

    omega: float
    arm: int

    differentiable_fields: ClassVar[tuple[str, ...]] = ("x",)


@dataclass(frozen=True)
class OmegaBanditHistory:
    """What a bandit has seen, one entry per solve (read-only arrays).

    Attributes
    ----------
    omega : array of float
        The ω used.
    arm : array of int
        Its index in ``omegas``.
    n_iters : array of int
        The iteration count reported by the solve.
    converged : array of bool
        Whether the solve converged.
    cost : array of int
        The cost charged to the learner: ``n_iters``, or ``maxiter`` for a solve that did
        not converge (so that a failure costs the full budget, never less).
    context : array of float or None
        The context of each solve (:class:`ContextualOmegaBandit`); ``None`` otherwise.

    See Also
    --------
    diffsolve.linear.OmegaBandit : Its ``history`` is this.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> import diffsolve as ds
    >>> A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(6, 6), format="csr")
    >>> bandit = ds.linear.OmegaBandit(seed=0)
    >>> for _ in range(3):
    ...     res = bandit.solve(A, np.ones(6))
    >>> len(bandit.history), bandit.history.omega.shape, bool(bandit.history.converged.all())
    (3, (3,), True)
    """

    omega: Any
    arm: Any
    n_iters: Any
    converged: Any
    cost: Any
    context: Any = None

    def __len__(self) -> int:
        return int(self.arm.shape[0])


def _read_only(values, dtype):
    arr = xp.asarray(values, dtype=dtype)
    arr.flags.writeable = False  # host arrays are NumPy arrays (array_api_compat.numpy)
    return arr


def _check_omegas(where, omegas):
    if omegas is None:
        return DEFAULT_OMEGAS
    try:
        arr = xp.asarray(omegas, dtype=xp.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"{where}: omegas must be a 1-D sequence of numbers in (0, 2), got "
            f"{type(omegas).__name__}"
        ) from None
    if arr.ndim != 1 or arr.shape[0] < 1:
        raise ValueError(
            f"{where}: omegas must be a non-empty 1-D sequence of numbers in (0, 2), got "
            f"shape {tuple(arr.shape)}"
        )
    values = tuple(float(w) for w in arr)
    bad = [w for w in values if not (math.isfinite(w) and 0.0 < w < 2.0)]
    if bad:
        raise ValueError(
            f"{where}: every omega must lie in the open interval (0, 2), where SOR converges "
            f"for symmetric positive definite A; got {bad} (the default is "
            "linspace(1, 1.95, 20))"
        )
    return values


def _check_method(where, method):
    if method not in METHODS:
        raise ValueError(f"{where}: method={method!r} has no ω to tune; choose one of "
                         f"{list(METHODS)}")
    return method


def _check_cost_scale(where, cost_scale):
    if isinstance(cost_scale, str):
        if cost_scale != "running-mean":
            raise ValueError(f"{where}: cost_scale must be 'running-mean' or a number > 0, got "
                             f"{cost_scale!r}")
        return cost_scale
    if isinstance(cost_scale, bool) or not isinstance(cost_scale, numbers.Real):
        raise TypeError(f"{where}: cost_scale must be 'running-mean' or a number > 0, got "
                        f"{type(cost_scale).__name__}")
    # numbers.Real: mypy does not model comparisons of the numbers ABCs
    if not (math.isfinite(cost_scale) and cost_scale > 0):  # type: ignore[operator]
        raise ValueError(f"{where}: cost_scale must be finite and > 0, got {cost_scale!r}")
    return float(cost_scale)


def _check_count(where, name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{where}: {name} must be a non-negative integer, got {value!r}")
    return int(value)


class _OmegaBanditBase:
    """Shared machinery: cost scaling, the solve driver, history and state."""

    _where = "OmegaBandit"
    # supplied by OmegaBandit and ContextualOmegaBandit
    _contextual: ClassVar[bool]
    _make_algorithm: Callable[[], Any]  # each class drives its own algorithm's API
    _group: Callable[[Any], int]
    _sample: Callable[[Any], int]
    _update: Callable[[int, Any, float], None]
    _rescale: Callable[[float, int], None]

    def __init__(self, omegas, method, seed, cost_scale, n_groups):
        where = self._where
        self._omegas = _check_omegas(where, omegas)
        self._method = _check_method(where, method)
        self._cost_scale = _check_cost_scale(where, cost_scale)
        self._seed = seed
        self._n_groups = n_groups
        self._algorithm = self._make_algorithm()
        self._scale_sum = [0.0] * n_groups
        self._scale_count = [0] * n_groups
        self._h_arm, self._h_n_iters, self._h_converged = [], [], []
        self._h_cost, self._h_context = [], []

    # --- configuration ------------------------------------------------------------------
    @property
    def omegas(self) -> Array:
        """The arms, a read-only array."""
        return _read_only(self._omegas, xp.float64)

    @property
    def n_arms(self) -> int:
        return len(self._omegas)

    @property
    def method(self) -> str:
        return self._method

    @property
    def seed(self) -> Seed:
        return self._seed

    @property
    def cost_scale(self) -> float | str:
        return self._cost_scale

    @property
    def algorithm(self) -> TsallisINF | BinnedTsallisINF | ChebCB:
        """The underlying learner (inspect it; let the bandit drive it)."""
        return self._algorithm

    # --- history ------------------------------------------------------------------------
    @property
    def history(self) -> OmegaBanditHistory:
        """One entry per observation: ``omega``, ``arm``, ``n_iters``, ``converged``,
        ``cost`` (and ``context``), as read-only arrays."""
        omegas = self._omegas
        return OmegaBanditHistory(
            omega=_read_only([omegas[i] for i in self._h_arm], xp.float64),
            arm=_read_only(self._h_arm, xp.int64),
            n_iters=_read_only(self._h_n_iters, xp.int64),
            converged=_read_only(self._h_converged, xp.bool),
            cost=_read_only(self._h_cost, xp.int64),
            context=(_read_only(self._h_context, xp.float64) if self._contextual else None),
        )

    # --- cost scaling -------------------------------------------------------------------
    def _scale(self, group) -> float:
        if self._cost_scale != "running-mean":
            return self._cost_scale
        count = self._scale_count[group]
        if count == 0:
            return 1.0
        return max(self._scale_sum[group] / count, 1.0)

    def _learn(self, arm, cost, context):
        """Turn an iteration count into a loss and update the learner.

        The loss is ``(k - 1) / s``: every solve takes at least one iteration, so ``k - 1``
        is the part ω can change, and ``s`` is the running mean of ``k - 1`` over the
        observations so far, this one included (``learners/TsallisINF.m`` of the reference
        code divides its cumulative estimates by ``mean(losses) - 1`` when it samples).
        The new loss enters in the units the arm was drawn under (the learner's
        importance weight is the probability of that draw), and then every past loss is
        rescaled by ``s_old / s_new``, so that all of them are in the current units --
        exactly the reference's behaviour; losses stay around 1 on average. The binned
        learner keeps one running mean per bin, as the reference runs one independently
        scaled Tsallis-INF per bin. The scale is floored at one iteration so that a run of
        one-iteration solves does not divide by zero.
        """
        group = self._group(context)
        excess = max(float(cost) - 1.0, 0.0)
        old = self._scale(group)
        self._update(arm, context, excess / old)
        if self._cost_scale == "running-mean":
            self._scale_sum[group] += excess
            self._scale_count[group] += 1
            new = self._scale(group)
            if new != old:
                self._rescale(old / new, group)

    def _record(self, arm, n_iters, converged, cost, context):
        self._learn(arm, cost, context)
        self._h_arm.append(arm)
        self._h_n_iters.append(n_iters)
        self._h_converged.append(converged)
        self._h_cost.append(cost)
        if self._contextual:
            self._h_context.append(context)

    # --- public driving -----------------------------------------------------------------
    @property
    def solve(self) -> DifferentiableFunction[..., BanditSolveResult]:
        """Choose ω, solve ``A x = b`` with it, and learn from the iteration count.

        A differentiable solver (like :func:`diffsolve.linear.solve`, whose backward rule
        it uses with the ω drawn): ``ds.vjp(bandit.solve, A, b)``,
        ``ds.to_torch(bandit.solve)`` work. See ``_solve_entry`` of the class for the
        parameters (``help(bandit.solve)`` shows them).
        """
        fn = self.__dict__.get("_solve_fn")
        if fn is None:
            fn = self.__dict__["_solve_fn"] = _differentiable_solve(self)
        return fn

    def _solve(self, A, b, context, warn, solve_kwargs):
        where = f"{self._where}.solve"
        for name in ("omega", "method"):
            if name in solve_kwargs:
                raise TypeError(
                    f"{where}: {name}= is not accepted: the bandit chooses omega, and method "
                    f"was fixed when it was created ({self._method!r})"
                )
        if "context" in solve_kwargs:
            raise TypeError(f"{where}: context= is used by ContextualOmegaBandit only")
        from . import _solve  # looked up at call time (tests stand in for the solver)

        rng = self._algorithm._rng
        saved = rng.bit_generator.state
        arm = self._sample(context)
        omega = self._omegas[arm]
        try:
            # the solve's status is read here and reported below (not silenced): the
            # bandit learns from a failed solve too
            res, residuals = _solve.solve_unreported(A, b, method=self._method, omega=omega,
                                                     **solve_kwargs)
            settings = residuals[1]
        except BaseException:
            # a solve that raised (bad input) taught nothing: leave the bandit as it was,
            # generator included, so that a retry draws the same arm
            rng.bit_generator.state = saved
            raise
        maxiter = settings.maxiter
        n_iters = int(res.n_iters)
        converged = bool(res.converged)
        cost = n_iters
        if not converged and maxiter is not None:
            # a failed solve costs the whole budget even if it stopped early (breakdown)
            cost = max(n_iters, int(maxiter))
        self._record(arm, n_iters, converged, cost, context)
        base = {f.name: getattr(res, f.name) for f in fields(LinearSolveResult)}
        out = BanditSolveResult(**base, omega=float(omega), arm=arm)
        report(out, throw=settings.throw, warn=warn, fixed_budget=settings.fixed_budget)
        return out, residuals

    def _suggest(self, context) -> int:
        return self._sample(context)

    def _observe(self, omega_index, n_iters, converged, context):
        where = f"{self._where}.observe"
        if isinstance(omega_index, bool) or not isinstance(omega_index, numbers.Integral):
            raise TypeError(f"{where}: omega_index must be an integer index into omegas, got "
                            f"{type(omega_index).__name__} {omega_index!r}")
        # numbers.Integral: mypy does not model comparisons of the numbers ABCs
        if not 0 <= omega_index < self.n_arms:  # type: ignore[operator]
            raise ValueError(f"{where}: omega_index must be in [0, {self.n_arms - 1}], got "
                             f"{omega_index}")
        n_iters = _check_count(where, "n_iters", n_iters)
        if not (isinstance(converged, bool) or getattr(converged, "dtype", None) == xp.bool):
            raise TypeError(f"{where}: converged must be a bool, got "
                            f"{type(converged).__name__}")
        self._record(int(omega_index), n_iters, bool(converged), n_iters, context)

    # --- state --------------------------------------------------------------------------
    def _config(self) -> dict:
        return {"class": type(self).__name__, "omegas": list(self._omegas),
                "method": self._method, "seed": self._seed, "cost_scale": self._cost_scale}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, as plain arrays and scalars.

        Keys: ``config`` (a JSON string of the constructor arguments),
        ``algorithm.<name>`` (the learner's state, its random generator included),
        ``scale.sum`` / ``scale.count`` (the running cost scale), ``history.<field>``.
        """
        state = {"config": json.dumps(self._config())}
        for key, value in self._algorithm.state_dict().items():
            state[f"algorithm.{key}"] = value
        state["scale.sum"] = xp.asarray(self._scale_sum, dtype=xp.float64)
        state["scale.count"] = xp.asarray(self._scale_count, dtype=xp.int64)
        state["history.arm"] = xp.asarray(self._h_arm, dtype=xp.int64)
        state["history.n_iters"] = xp.asarray(self._h_n_iters, dtype=xp.int64)
        state["history.converged"] = xp.asarray(self._h_converged, dtype=xp.bool)
        state["history.cost"] = xp.asarray(self._h_cost, dtype=xp.int64)
        if self._contextual:
            state["history.context"] = xp.asarray(self._h_context, dtype=xp.float64)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state made by :meth:`state_dict` (or read by :meth:`load`) of a bandit
        with the same configuration."""
        where = f"{self._where}.load_state_dict"
        if "config" not in state:
            raise ValueError(f"{where}: state has no 'config' entry; pass a dict made by "
                             f"{self._where}.state_dict()")
        theirs = json.loads(str(state["config"]))
        ours = json.loads(json.dumps(self._config()))
        if theirs != ours:
            diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
            raise ValueError(
                f"{where}: the state was made by a bandit configured differently (in {diff}); "
                f"create the bandit with the same arguments, or use {self._where}.load(path), "
                "which builds it from the saved configuration"
            )
        algo = {k[len("algorithm."):]: v for k, v in state.items() if k.startswith("algorithm.")}
        self._algorithm.load_state_dict(algo)
        self._scale_sum = [float(v) for v in state["scale.sum"]]
        self._scale_count = [int(v) for v in state["scale.count"]]
        self._h_arm = [int(v) for v in state["history.arm"]]
        self._h_n_iters = [int(v) for v in state["history.n_iters"]]
        self._h_converged = [bool(v) for v in state["history.converged"]]
        self._h_cost = [int(v) for v in state["history.cost"]]
        self._h_context = ([float(v) for v in state["history.context"]]
                           if self._contextual else [])

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`state_dict` to an ``.npz`` file (plain arrays, no pickling)."""
        xp.savez(path, **self.state_dict())

    @classmethod
    def load(cls: type[_B], path: str | os.PathLike[str]) -> _B:
        """A bandit rebuilt from a file written by :meth:`save`, ready to continue."""
        where = f"{cls.__name__}.load"
        with xp.load(path, allow_pickle=False) as f:
            state = {k: f[k] for k in f.files}
        if "config" not in state:
            raise ValueError(f"{where}: {path!r} has no 'config' entry; it was not written by "
                             f"{cls.__name__}.save")
        config = json.loads(str(state["config"]))
        kind = config.pop("class", None)
        if kind != cls.__name__:
            raise ValueError(f"{where}: {path!r} holds a {kind}, not a {cls.__name__}; use "
                             f"{kind}.load")
        bandit = cls(**config)
        bandit.load_state_dict(state)
        return bandit


class OmegaBandit(_OmegaBanditBase):
    """Learn the relaxation parameter ω of SOR / SSOR-CG online with Tsallis-INF.

    Each :meth:`solve` draws ω from the current distribution over the arms ``omegas``,
    solves with it, and feeds the iteration count back; over a sequence of related
    systems the distribution concentrates on the ω that has been cheapest. No matrix
    computation is added to the solves.

    Parameters
    ----------
    omegas : sequence of float in (0, 2), optional
        The arms; default ``linspace(1, 1.95, 20)``.
    method : {"sor", "ssor-cg"}
        The solver whose ω is tuned (:func:`diffsolve.linear.solve`).
    seed : int or None
        Seed of the random draws (``None``: a fresh, unreproducible stream).
    cost_scale : "running-mean" or float
        How an iteration count ``k`` becomes a loss: ``(k - 1) / s``, where ``s`` is the
        running mean of ``k - 1`` (``"running-mean"``, the reference code's scaling; past
        losses are rescaled when ``s`` changes) or a fixed number (e.g. ``maxiter - 1`` for
        losses guaranteed in [0, 1], at the price of slower learning).

    Attributes
    ----------
    omegas, method, seed, cost_scale : configuration (read-only).
    history : OmegaBanditHistory
        Per solve: ``omega``, ``arm``, ``n_iters``, ``converged``, ``cost``.
    algorithm : TsallisINF
        The learner.

    See Also
    --------
    ContextualOmegaBandit : when each system comes with a scalar that predicts its best ω.

    Notes
    -----
    Tsallis-INF (Zimmert & Seldin, 2021) with ``η_t = 2/√t``: arm ``i`` has probability
    ``4 / (η_t (L̂_i - x))²`` with ``x`` normalising, and the drawn arm's loss estimate
    grows by ``loss / p``. Its regret against the best fixed ω grows like ``√(K T)``, so
    over many solves it pays little more than the best ω in hindsight (Khodak et al.,
    ICLR 2024).

    A solve that stops at ``maxiter`` is charged ``maxiter`` iterations (never dropped);
    its status is read and reported (a :class:`~diffsolve.ConvergenceWarning` unless
    ``warn=False``; a :class:`~diffsolve.SolveError` with ``throw=True``).

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> import diffsolve as ds
    >>> from diffsolve.linear import OmegaBandit
    >>> m = 8
    >>> T = sp.diags_array([-1.0, 2.0, -1.0], offsets=[-1, 0, 1], shape=(m, m))
    >>> A = (sp.kron(sp.eye_array(m), T) + sp.kron(T, sp.eye_array(m))).tocsr()
    >>> bandit = OmegaBandit(seed=0)
    >>> rng = np.random.default_rng(0)
    >>> for _ in range(5):
    ...     res = bandit.solve(A, rng.standard_normal(m * m), rtol=1e-8)
    >>> bool(res.converged), len(bandit.history)
    (True, 5)

    Solving yourself: draw the arm with :meth:`suggest`, report with :meth:`observe`.

    >>> i = bandit.suggest()
    >>> res = ds.linear.solve(A, np.ones(m * m), method="sor", omega=float(bandit.omegas[i]))
    >>> bandit.observe(i, res.n_iters, res.converged)
    >>> len(bandit.history)
    6
    """

    _where = "OmegaBandit"
    _contextual = False

    def __init__(self, omegas: Array | None = None, method: str = "sor", seed: Seed = 0,
                 cost_scale: float | str = "running-mean") -> None:
        seed = _check_seed(self._where, seed)
        super().__init__(omegas, method, seed, cost_scale, n_groups=1)

    def __repr__(self):
        return (f"OmegaBandit(n_arms={self.n_arms}, method={self._method!r}, seed={self._seed})"
                f" after {len(self._h_arm)} solves")

    def _make_algorithm(self):
        return TsallisINF(len(self._omegas), seed=self._seed)

    def _group(self, context):
        return 0

    def _sample(self, context):
        return self._algorithm.sample()

    def _update(self, arm, context, loss):
        self._algorithm.update(arm, loss)

    def _rescale(self, factor, group):
        self._algorithm.rescale_losses(factor)

    def probabilities(self) -> Array:
        """The current distribution over ``omegas`` (a copy)."""
        return self._algorithm.probabilities

    def _solve_entry(self, A: Matrix, b: Array, *, warn: bool = True,
                     **solve_kwargs: Any) -> BanditSolveResult:
        """Choose ω, solve ``A x = b`` with it, and learn from the iteration count.

        Parameters
        ----------
        A, b
            As :func:`diffsolve.linear.solve`.
        warn : bool
            ``False``: a failed solve does not warn (read the result's ``status``); the
            observation is recorded either way. ``throw=True`` (passed on) raises the
            :class:`~diffsolve.SolveError` instead, after recording.
        **solve_kwargs
            Passed on to :func:`diffsolve.linear.solve` (``x0``, ``rtol``, ``atol``,
            ``maxiter``, ...); not ``omega`` or ``method``.

        Returns
        -------
        BanditSolveResult
            The solve result plus ``omega`` and ``arm``.
        """
        return self._solve(A, b, None, warn, solve_kwargs)

    def suggest(self) -> int:
        """Draw the index of the ω to use next, for a solve you run yourself; report its
        outcome with :meth:`observe`."""
        return self._suggest(None)

    def observe(self, omega_index: int, n_iters: int, converged: bool,
                context: float | None = None) -> None:
        """Record a solve you ran yourself with ``omegas[omega_index]``.

        ``omega_index`` should come from :meth:`suggest` (the learner weights the
        observation by the probability of having drawn it). The cost charged is
        ``n_iters``: for a solve that stopped at ``maxiter``, pass ``maxiter`` (as
        :func:`~diffsolve.linear.solve` reports it).
        """
        if context is not None:
            raise TypeError("OmegaBandit.observe: context is used by ContextualOmegaBandit "
                            f"only; got context={context!r}")
        self._observe(omega_index, n_iters, converged, None)


class ContextualOmegaBandit(_OmegaBanditBase):
    """Learn ω as a function of a scalar context (ChebCB, or Tsallis-INF per context bin).

    When each system of the sequence comes with a number that moves its best ω -- the
    shift ``c`` of ``A + cI``, the diffusion coefficient of a time step -- the best ω per
    instance can be far cheaper than the best fixed ω. :meth:`solve` takes that number as
    ``context=``.

    Parameters
    ----------
    context_range : (float, float)
        ``(lo, hi)`` covering every context that will be passed; one outside raises
        ``ValueError``.
    omegas : sequence of float in (0, 2), optional
        The arms; default ``linspace(1, 1.95, 20)``.
    method : {"sor", "ssor-cg"}
        The solver whose ω is tuned.
    algorithm : {"chebcb", "binned"}
        ``"chebcb"``: a Chebyshev regression of the scaled cost on the context per arm,
        sampled by inverse-gap weighting (:class:`~._bandit_algorithms.ChebCB`).
        ``"binned"``: an independent Tsallis-INF per bin of the range.
    seed : int or None
        Seed of the random draws.
    cost_scale : "running-mean" or float
        As :class:`OmegaBandit` (with ``"binned"``, one running mean per bin).
    degree : int
        Chebyshev degree for ``"chebcb"`` (default 5).
    n_bins : int
        Number of bins for ``"binned"`` (default 6).
    gamma : None or float
        ``"chebcb"`` exploration schedule: ``None`` the reference's adaptive ``γ_t``, a
        number ``g`` for ``γ_t = g t``.

    See Also
    --------
    diffsolve.linear.OmegaBandit : Without a context.
    diffsolve.linear.solve : The solver whose ``omega`` is learned.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> from diffsolve.linear import ContextualOmegaBandit
    >>> m = 8
    >>> T = sp.diags_array([-1.0, 2.0, -1.0], offsets=[-1, 0, 1], shape=(m, m))
    >>> L = (sp.kron(sp.eye_array(m), T) + sp.kron(T, sp.eye_array(m))).tocsr()
    >>> bandit = ContextualOmegaBandit(context_range=(0.0, 1.0), seed=0)
    >>> rng = np.random.default_rng(0)
    >>> for c in rng.uniform(0.0, 1.0, size=5):
    ...     res = bandit.solve(L + c * sp.eye_array(m * m), np.ones(m * m), context=c)
    >>> len(bandit.history), bandit.history.context.shape
    (5, (5,))
    """

    _where = "ContextualOmegaBandit"
    _contextual = True
    # set before the base class's __init__ builds the algorithm from them
    _degree: int
    _n_bins: int
    _gamma: float | None

    def __init__(self, context_range: tuple[float, float], omegas: Array | None = None,
                 method: str = "sor", algorithm: str = "chebcb", seed: Seed = 0,
                 cost_scale: float | str = "running-mean", degree: int = 5, n_bins: int = 6,
                 gamma: float | None = None) -> None:
        where = self._where
        self._context_range = _check_context_range(where, context_range)
        if algorithm not in ALGORITHMS:
            raise ValueError(f"{where}: algorithm={algorithm!r} is not known; choose one of "
                             f"{list(ALGORITHMS)}")
        self._algorithm_name = algorithm
        if isinstance(degree, bool) or not isinstance(degree, numbers.Integral) or degree < 0:
            raise ValueError(f"{where}: degree must be an integer >= 0, got {degree!r}")
        if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral) or n_bins < 1:
            raise ValueError(f"{where}: n_bins must be a positive integer, got {n_bins!r}")
        self._degree = int(degree)
        self._n_bins = int(n_bins)
        if gamma is not None:
            if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
                raise TypeError(f"{where}: gamma must be None or a number > 0, got "
                                f"{type(gamma).__name__}")
            gamma = float(gamma)
        self._gamma = gamma  # range checked by ChebCB
        seed = _check_seed(where, seed)
        n_groups = self._n_bins if algorithm == "binned" else 1
        super().__init__(omegas, method, seed, cost_scale, n_groups=n_groups)

    def __repr__(self):
        return (f"ContextualOmegaBandit(context_range={self._context_range}, "
                f"n_arms={self.n_arms}, method={self._method!r}, "
                f"algorithm={self._algorithm_name!r}, seed={self._seed}) "
                f"after {len(self._h_arm)} solves")

    @property
    def context_range(self) -> tuple:
        return self._context_range

    @property
    def algorithm_name(self) -> str:
        return self._algorithm_name

    def _config(self) -> dict:
        config = super()._config()
        config.update(context_range=list(self._context_range), algorithm=self._algorithm_name,
                      degree=self._degree, n_bins=self._n_bins, gamma=self._gamma)
        return config

    def _make_algorithm(self):
        K = len(self._omegas)
        try:
            if self._algorithm_name == "chebcb":
                return ChebCB(K, self._context_range, degree=self._degree, seed=self._seed,
                              gamma=self._gamma)
            return BinnedTsallisINF(K, self._context_range, n_bins=self._n_bins,
                                    seed=self._seed)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{self._where}: {err}") from None

    def _group(self, context):
        if self._algorithm_name == "binned":
            return self._algorithm.bin_index(context)
        return 0

    def _sample(self, context):
        return self._algorithm.sample(context)

    def _update(self, arm, context, loss):
        self._algorithm.update(arm, context, loss)

    def _rescale(self, factor, group):
        if self._algorithm_name == "binned":
            self._algorithm.rescale_losses(factor, bin=group)
        else:
            self._algorithm.rescale_losses(factor)

    def _context(self, where, context):
        if context is None:
            raise TypeError(f"{where}: context= is required (a number in "
                            f"[{self._context_range[0]}, {self._context_range[1]}])")
        return _check_context(where, context, self._context_range)

    def probabilities(self, context: float) -> Array:
        """The current distribution over ``omegas`` at ``context``."""
        return self._algorithm.probabilities(
            self._context(f"{self._where}.probabilities", context))

    def _solve_entry(self, A: Matrix, b: Array, *, context: float, warn: bool = True,
                     **solve_kwargs: Any) -> BanditSolveResult:
        """Choose ω for ``context``, solve ``A x = b`` with it, and learn from the count.

        Parameters
        ----------
        A, b
            As :func:`diffsolve.linear.solve`.
        context : float
            The scalar that describes this system, inside ``context_range``.
        warn : bool
            ``False``: a failed solve does not warn (read the result's ``status``); the
            observation is recorded either way. ``throw=True`` (passed on) raises the
            :class:`~diffsolve.SolveError` instead, after recording.
        **solve_kwargs
            Passed on to :func:`diffsolve.linear.solve`; not ``omega`` or ``method``.

        Returns
        -------
        BanditSolveResult
        """
        context = self._context(f"{self._where}.solve", context)
        return self._solve(A, b, context, warn, solve_kwargs)

    def suggest(self, context: float) -> int:
        """Draw the index of the ω to use at ``context``, for a solve you run yourself;
        report it with :meth:`observe`."""
        return self._suggest(self._context(f"{self._where}.suggest", context))

    def observe(self, omega_index: int, n_iters: int, converged: bool,
                context: float | None = None) -> None:
        """Record a solve you ran yourself with ``omegas[omega_index]`` at ``context``
        (required). The cost charged is ``n_iters``; pass ``maxiter`` for a solve that
        did not converge."""
        context = self._context(f"{self._where}.observe", context)
        self._observe(omega_index, n_iters, converged, context)


def _differentiable_solve(bandit):
    """``bandit.solve`` as a :class:`~diffsolve._autodiff.DifferentiableFunction`: the
    bandit's forward (draw ω, solve, learn) with the linear solve's backward rule at the
    drawn ω (from the forward's residuals, or from ``result.omega`` when the forward ran
    elsewhere, as under JAX's ``jit``)."""
    from .._autodiff import BackwardContext, custom_vjp
    from ._solve import _solve_bwd, _solve_shapes

    entry = type(bandit)._solve_entry
    method = bandit._method

    def solve(A, b, **kwargs):
        return bandit._solve_entry(A, b, **kwargs)

    params = list(inspect.signature(entry).parameters.values())[1:]  # without self
    # what inspect.signature (and so diffsolve.vjp's argument binding) reads
    solve.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    solve.__doc__ = entry.__doc__
    solve.__module__ = __name__

    def shapes(A, b, **kwargs):
        out = _solve_shapes(A, b)
        out.update(omega=((), "float64"), arm=((), "int64"))
        return out

    def bwd(ctx, cotangents):
        kwargs = {k: v for k, v in ctx.kwargs.items() if k not in ("warn", "context")}
        if ctx.residuals is None:
            kwargs.update(method=method, omega=float(ctx.result.omega))
        linear_ctx = BackwardContext(ctx.args, kwargs, ctx.result, ctx.residuals)
        return _solve_bwd(linear_ctx, cotangents)

    return custom_vjp(bwd, shapes, BanditSolveResult,
                      public_name=f"diffsolve.linear.{type(bandit).__name__}.solve")(solve)
