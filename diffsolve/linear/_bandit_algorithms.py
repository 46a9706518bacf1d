"""Online learners that pick one of K arms from observed losses: the algorithms behind
:class:`diffsolve.linear.OmegaBandit` and :class:`diffsolve.linear.ContextualOmegaBandit`.

Nothing here solves a linear system: every class sees only an arm index, (for the
contextual ones) a scalar context, and a loss that the caller has already scaled to about
[0, 1]. That keeps the algorithms testable on plain loss tables and lets a simulation
replay them on precomputed iteration counts.

* :class:`TsallisINF` -- the adversarial multi-armed bandit of Zimmert & Seldin (2021) with
  the 1/2-Tsallis entropy regulariser and the anytime learning rate ``η_t = 2/√t``.
* :class:`ChebCB` -- a SquareCB contextual bandit (Foster & Rakhlin, 2020) whose regression
  oracle is a per-arm Chebyshev polynomial of the context.
* :class:`BinnedTsallisINF` -- the simple contextual baseline: one Tsallis-INF per bin of
  the context range.

The designs follow the public MATLAB code of Khodak, Chow, Balcan & Talwalkar, "Learning to
relax" (ICLR 2024), github.com/mkhodak/learning-to-relax, files ``learners/TsallisINF.m``,
``learners/ChebCB.m`` and ``learners/TsallisINFCB.m``; where this code departs from it, a
comment says so and why.

Bookkeeping is tiny and lives on the host (``host_namespace()``, a seeded
``host_rng(seed)``), whatever array library the solves themselves use. Every class keeps
its configuration read-only and its state separate, and ``state_dict()`` /
``load_state_dict()`` capture the state -- random generator included -- as plain arrays and
scalars, so that a simulation can stop and resume bit for bit.
"""

from __future__ import annotations

import json
import math
import numbers

from .. import _validate as V
from .._backend import host_namespace, host_rng

__all__ = ["BinnedTsallisINF", "ChebCB", "TsallisINF", "tsallis_inf_probabilities"]

xp = host_namespace()


# ---------------------------------------------------------------------------------------
# argument checks shared by the three learners
# ---------------------------------------------------------------------------------------
def _check_n_arms(where, n_arms):
    if isinstance(n_arms, bool) or not isinstance(n_arms, numbers.Integral) or n_arms < 1:
        raise ValueError(f"{where}: n_arms must be a positive integer, got {n_arms!r}")
    return int(n_arms)


def _check_seed(where, seed):
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(
            f"{where}: seed must be a non-negative integer (or None for a fresh, "
            f"unreproducible stream), got {seed!r}"
        )
    return int(seed)


def _check_arm(where, arm, n_arms):
    if isinstance(arm, bool) or not isinstance(arm, numbers.Integral):
        raise TypeError(f"{where}: arm must be an integer index, got {type(arm).__name__} {arm!r}")
    # numbers.Integral: mypy does not model comparisons of the numbers ABCs
    if not 0 <= arm < n_arms:  # type: ignore[operator]
        raise ValueError(f"{where}: arm must be in [0, {n_arms - 1}], got {arm}")
    return int(arm)


def _check_loss(where, loss):
    if isinstance(loss, bool) or not isinstance(loss, numbers.Real):
        raise TypeError(f"{where}: loss must be a real number, got {type(loss).__name__}")
    loss = float(loss)
    if not math.isfinite(loss) or loss < 0:
        raise ValueError(
            f"{where}: loss must be finite and >= 0 (scale the cost to about [0, 1]), "
            f"got {loss!r}"
        )
    return loss


def _check_factor(where, factor):
    if isinstance(factor, bool) or not isinstance(factor, numbers.Real):
        raise TypeError(f"{where}: factor must be a real number, got {type(factor).__name__}")
    factor = float(factor)
    if not math.isfinite(factor) or factor <= 0:
        raise ValueError(f"{where}: factor must be finite and > 0, got {factor!r}")
    return factor


def _check_context_range(where, context_range):
    try:
        lo, hi = (float(v) for v in context_range)
    except (TypeError, ValueError):
        raise TypeError(
            f"{where}: context_range must be a pair of numbers (lo, hi), got {context_range!r}"
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(
            f"{where}: context_range must be finite with lo < hi, got ({lo!r}, {hi!r})"
        )
    return lo, hi


def _check_context(where, context, context_range):
    if isinstance(context, bool) or not isinstance(context, numbers.Real):
        # a 0-d array of the host namespace is accepted as well
        if getattr(context, "shape", None) == () and hasattr(context, "dtype"):
            context = float(context)
        else:
            raise TypeError(
                f"{where}: context must be a real number, got {type(context).__name__}"
            )
    context = float(context)
    lo, hi = context_range
    if not (math.isfinite(context) and lo <= context <= hi):
        raise ValueError(
            f"{where}: context {context!r} is outside the declared context_range "
            f"[{lo!r}, {hi!r}]; declare a range that covers every context you will pass"
        )
    return context


# ---------------------------------------------------------------------------------------
# random generator state as a plain scalar
# ---------------------------------------------------------------------------------------
def _rng_state(rng) -> str:
    # PCG64 keeps 128-bit integers, which no fixed-width array holds; JSON keeps them exact
    # and is a plain string that .npz files store without pickling
    return json.dumps(rng.bit_generator.state)


def _set_rng_state(rng, state) -> None:
    rng.bit_generator.state = json.loads(str(state))


def _draw(rng, p) -> int:
    """One index drawn from the probability vector ``p`` with one uniform variate."""
    cdf = xp.cumulative_sum(p)
    u = float(rng.random()) * float(cdf[-1])
    # side="right": an arm of probability 0 has an empty interval and is never drawn
    i = int(xp.searchsorted(cdf, xp.asarray(u, dtype=cdf.dtype), side="right"))
    return min(i, p.shape[0] - 1)


def _as_float_array(where, name, value, shape):
    arr = xp.asarray(value, dtype=xp.float64)
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(
            f"{where}: state entry {name!r} has shape {tuple(arr.shape)}, expected "
            f"{tuple(shape)}; the state comes from a learner of another configuration"
        )
    return xp.asarray(arr, copy=True)


def _require(where, state, keys):
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(
            f"{where}: state is missing {missing}; pass a dict made by state_dict() of the "
            "same class"
        )


# ---------------------------------------------------------------------------------------
# Tsallis-INF
# ---------------------------------------------------------------------------------------
def tsallis_inf_probabilities(loss_estimates, eta, *, atol=1e-12, maxiter=100, **deprecated):
    """Tsallis-INF sampling probabilities and their normaliser.

    Solves for ``x < min L̂`` such that ``Σ_i 4 / (η (L̂_i - x))² = 1`` and returns
    ``p_i = 4 / (η (L̂_i - x))²``.

    Parameters
    ----------
    loss_estimates : array, shape (K,)
        Cumulative importance-weighted loss estimates ``L̂``.
    eta : float
        Learning rate ``η > 0``.
    atol : float
        Stop when ``|Σ p - 1| <= atol``.
    maxiter : int
        Most Newton (or safeguarding bisection) steps.
    **deprecated
        ``tol`` (now ``atol``) and ``max_iter`` (now ``maxiter``), for one release.

    Returns
    -------
    p : array, shape (K,)
        Probabilities, positive, summing to 1.
    x : float
        The normaliser.

    Notes
    -----
    ``f(x) = Σ p_i(x) - 1`` is increasing and convex on ``x < min L̂``, with
    ``f'(x) = η Σ p_i^{3/2}``. The root is bracketed by ``[min L̂ - 2√K/η, min L̂ - 2/η]``
    (at the right end the best arm alone has ``p = 1``; at the left end every arm has at
    most ``1/K``). Newton's method started at the right end of the bracket approaches the
    root monotonically from the right, so it never crosses the pole at ``min L̂``; a step
    that leaves the bracket anyway (rounding) is replaced by bisection. The reference code
    instead starts at ``x = -1`` and takes 20 unguarded Newton steps, which can overshoot
    past ``min L̂`` when the estimates are far from 0.

    Examples
    --------
    >>> from diffsolve.linear._bandit_algorithms import tsallis_inf_probabilities
    >>> p, x = tsallis_inf_probabilities([0.0, 0.0], eta=2.0)
    >>> [round(float(v), 12) for v in p]
    [0.5, 0.5]
    """
    if deprecated:
        where = "tsallis_inf_probabilities"
        options = V.renamed_options(where, deprecated, {"tol": "atol", "max_iter": "maxiter"})
        atol = options.pop("atol", atol)
        maxiter = options.pop("maxiter", maxiter)
        V.unexpected_options(where, options, ("atol", "maxiter"))
    L = xp.asarray(loss_estimates, dtype=xp.float64)
    eta = float(eta)
    n = L.shape[0]
    m = float(xp.min(L))
    lo, hi = m - 2.0 * math.sqrt(n) / eta, m - 2.0 / eta
    x = hi
    for _ in range(maxiter):
        p = 4.0 / (eta * (L - x)) ** 2
        total = float(xp.sum(p))
        f = total - 1.0
        if abs(f) <= atol:
            break
        if f > 0:
            hi = x
        else:
            lo = x
        x_new = x - f / (eta * float(xp.sum(p**1.5)))
        x = x_new if lo <= x_new <= hi else 0.5 * (lo + hi)
    else:
        p = 4.0 / (eta * (L - x)) ** 2
        total = float(xp.sum(p))
    # the residual |Σp - 1| <= atol is left in; dividing it out makes the vector an exact
    # distribution for sampling
    return p / total, x


class TsallisINF:
    """Tsallis-INF: a multi-armed bandit that is near-optimal for adversarial and for
    stochastic losses.

    Round ``t = 1, 2, ...``: the learning rate is ``η_t = 2/√t``; arm ``i`` is drawn with
    probability ``p_i = 4 / (η_t (L̂_i - x))²``, where ``x`` normalises ``Σ p = 1`` (found
    by Newton steps, see :func:`tsallis_inf_probabilities`); after the loss ``ℓ_t`` of the
    drawn arm ``i_t`` is seen, the importance-weighted estimate is updated,
    ``L̂_{i_t} += ℓ_t / p_{i_t}``. The regret guarantee assumes losses in [0, 1]; the caller
    scales its costs (:class:`~diffsolve.linear.OmegaBandit` divides iteration counts by
    their running mean, as the reference code does).

    Parameters
    ----------
    n_arms : int
        Number of arms ``K``.
    seed : int or None
        Seed of the generator that draws the arms.

    Attributes
    ----------
    n_arms, seed : configuration (read-only).
    t : int
        Rounds observed so far.
    loss_estimates : array, shape (K,)
        The importance-weighted cumulative loss estimates ``L̂`` (a copy).
    probabilities : array, shape (K,)
        The distribution the next :meth:`sample` draws from (a copy).

    Examples
    --------
    >>> from diffsolve.linear._bandit_algorithms import TsallisINF
    >>> learner = TsallisINF(3, seed=0)
    >>> for _ in range(200):
    ...     arm = learner.sample()
    ...     learner.update(arm, [0.9, 0.1, 0.5][arm])
    >>> int(learner.probabilities.argmax())
    1
    """

    def __init__(self, n_arms, seed=0):
        where = "TsallisINF"
        self._n_arms = _check_n_arms(where, n_arms)
        self._seed = _check_seed(where, seed)
        self._rng = host_rng(self._seed)
        self._t = 0
        self._L = xp.zeros(self._n_arms, dtype=xp.float64)
        self._p = None  # cache of the current distribution; derived, not state

    def __repr__(self):
        return f"TsallisINF(n_arms={self._n_arms}, seed={self._seed}) after {self._t} rounds"

    @property
    def n_arms(self) -> int:
        return self._n_arms

    @property
    def seed(self):
        return self._seed

    @property
    def t(self) -> int:
        return self._t

    @property
    def learning_rate(self) -> float:
        """``η`` of the next round, ``2/√(t + 1)``."""
        return 2.0 / math.sqrt(self._t + 1)

    @property
    def loss_estimates(self):
        return xp.asarray(self._L, copy=True)

    @property
    def probabilities(self):
        return xp.asarray(self._probabilities(), copy=True)

    def _probabilities(self):
        if self._p is None:
            self._p, _ = tsallis_inf_probabilities(self._L, self.learning_rate)
        return self._p

    def _sample_with(self, rng) -> int:
        return _draw(rng, self._probabilities())

    def sample(self) -> int:
        """Draw the arm to play next (advances the generator only)."""
        return self._sample_with(self._rng)

    def update(self, arm, loss) -> None:
        """Record the loss (about [0, 1]) of ``arm``, the arm drawn by :meth:`sample`.

        The importance weight ``1/p_arm`` uses the distribution of this round, so ``arm``
        must have been drawn from it for the estimate to be unbiased.
        """
        where = "TsallisINF.update"
        arm = _check_arm(where, arm, self._n_arms)
        loss = _check_loss(where, loss)
        p = self._probabilities()
        L = xp.asarray(self._L, copy=True)
        L[arm] += loss / float(p[arm])
        self._L = L
        self._t += 1
        self._p = None

    def rescale_losses(self, factor) -> None:
        """Multiply every past loss by ``factor`` (> 0), as if it had been scaled so from
        the start; used when the caller's cost scale changes."""
        factor = _check_factor("TsallisINF.rescale_losses", factor)
        self._L = self._L * factor
        self._p = None

    def state_dict(self) -> dict:
        """The state as plain values: ``t``, ``loss_estimates``, ``rng_state`` (JSON)."""
        return {
            "n_arms": self._n_arms,
            "t": self._t,
            "loss_estimates": xp.asarray(self._L, copy=True),
            "rng_state": _rng_state(self._rng),
        }

    def load_state_dict(self, state) -> None:
        """Restore a state made by :meth:`state_dict` of a learner with as many arms."""
        where = "TsallisINF.load_state_dict"
        _require(where, state, ("n_arms", "t", "loss_estimates", "rng_state"))
        if int(state["n_arms"]) != self._n_arms:
            raise ValueError(
                f"{where}: the state has n_arms={int(state['n_arms'])}, this learner "
                f"{self._n_arms}; load it into TsallisINF({int(state['n_arms'])})"
            )
        L = _as_float_array(where, "loss_estimates", state["loss_estimates"], (self._n_arms,))
        self._t = int(state["t"])
        self._L = L
        _set_rng_state(self._rng, state["rng_state"])
        self._p = None


# ---------------------------------------------------------------------------------------
# Chebyshev features
# ---------------------------------------------------------------------------------------
def chebyshev_features(z, degree):
    """``[T_0(z), ..., T_degree(z)]`` by the three-term recurrence
    ``T_{k+1} = 2 z T_k - T_{k-1}`` (stable on [-1, 1], where ``|T_k| <= 1``)."""
    feats = [1.0, float(z)]
    for _ in range(1, degree):
        feats.append(2.0 * z * feats[-1] - feats[-2])
    return xp.asarray(feats[: degree + 1], dtype=xp.float64)


def _to_unit_interval(context, context_range):
    lo, hi = context_range
    # clip rounding at the end points so that |T_k| <= 1 holds exactly
    return min(1.0, max(-1.0, 2.0 * (context - lo) / (hi - lo) - 1.0))


# ---------------------------------------------------------------------------------------
# ChebCB
# ---------------------------------------------------------------------------------------
class ChebCB:
    """ChebCB: SquareCB with a per-arm Chebyshev regression on a scalar context.

    For each arm ``i`` the loss is modelled as ``ŷ_i(c) = θ_iᵀ φ(z)``, where ``z`` is the
    context ``c`` mapped linearly from ``context_range`` to [-1, 1] and
    ``φ(z) = (T_0(z), ..., T_d(z))`` are Chebyshev polynomials. ``θ_i`` is the
    ridge-regularised least-squares fit on that arm's past observations,
    ``θ_i = (Φ_iᵀΦ_i + λI)⁻¹ Φ_iᵀ y_i``, kept as running sums so that an update costs
    O(d²) whatever the number of rounds.

    Sampling (inverse-gap weighting, SquareCB): with ``b = argmin_i ŷ_i(c)``,
    ``p_i = 1 / (K + γ_t (ŷ_i - ŷ_b))`` for ``i ≠ b`` and ``p_b = 1 - Σ_{i≠b} p_i``.

    Exploration first: while some arm has fewer than ``n_explore`` observations,
    :meth:`sample` draws uniformly among the arms with the fewest observations (so every
    arm is tried ``n_explore`` times, in random order, before the regression decides);
    these draws ignore the context.

    ``γ_t`` (``gamma=None``, the schedule of the reference code ``learners/ChebCB.m``):
    after ``t`` rounds, ``γ = 2 t √(K t / (R_t + 2 α_t² t))``, where ``R_t`` is the online
    regression error ``Σ_s (ŷ_{i_s}(c_s) - ℓ_s)²`` (prediction made before the update) and
    ``α_t = (π + (2/π) log(2m + 1)) / (2(m + 1)) · (max ℓ - min ℓ)`` (``m = d + 1``
    coefficients) bounds the error of a degree-``d`` Chebyshev fit to a Lipschitz cost.
    With ``R_t`` growing linearly, ``γ_t`` grows linearly in ``t``. The whole rule is
    invariant under a common scaling of the losses. ``gamma=g`` (a number > 0) fixes
    ``γ_t = g·t`` instead.

    Differences from the reference: the reference fits by ``lsqminnorm`` with a box
    constraint on the coefficients (``lsqlin``) and subtracts that constrained fit's
    residual from ``R_t``; here a small ridge ``λ`` regularises the normal equations
    instead (solved by ``xp.linalg.solve``), and ``R_t`` is used as is. The reference also
    has no explicit exploration phase (an unobserved arm predicts 0 and is favoured).

    Parameters
    ----------
    n_arms : int
        Number of arms ``K``.
    context_range : (float, float)
        ``(lo, hi)``; a context outside raises ``ValueError``.
    degree : int
        Polynomial degree ``d`` (default 5, as the reference's 6 coefficients).
    seed : int or None
        Seed of the generator that draws the arms.
    gamma : None or float
        ``None``: the reference's adaptive schedule above; a number ``g > 0``: ``γ_t = g t``.
    ridge : float
        ``λ > 0`` of the ridge regression.
    n_explore : int
        Observations of every arm before the regression takes over (``>= 1``).

    Examples
    --------
    >>> from diffsolve.linear._bandit_algorithms import ChebCB
    >>> learner = ChebCB(2, context_range=(0.0, 1.0), seed=0)
    >>> for t in range(300):
    ...     c = (t % 10) / 9
    ...     arm = learner.sample(c)
    ...     # arm 0 is better for small contexts, arm 1 for large ones
    ...     learner.update(arm, c, abs(c - (0.0, 1.0)[arm]))
    >>> int(learner.predict(0.05).argmin()), int(learner.predict(0.95).argmin())
    (0, 1)
    """

    def __init__(self, n_arms, context_range, degree=5, seed=0, gamma=None, ridge=1e-3,
                 n_explore=2):
        where = "ChebCB"
        self._n_arms = _check_n_arms(where, n_arms)
        self._context_range = _check_context_range(where, context_range)
        if isinstance(degree, bool) or not isinstance(degree, numbers.Integral) or degree < 0:
            raise ValueError(f"{where}: degree must be an integer >= 0, got {degree!r}")
        self._degree = int(degree)
        self._seed = _check_seed(where, seed)
        if gamma is not None:
            if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
                raise TypeError(
                    f"{where}: gamma must be None (the reference's adaptive schedule) or a "
                    f"number > 0 (γ_t = gamma·t), got {type(gamma).__name__}"
                )
            if not (math.isfinite(gamma) and gamma > 0):  # type: ignore[operator]  # numbers.Real
                raise ValueError(f"{where}: gamma must be finite and > 0, got {gamma!r}")
            gamma = float(gamma)
        self._gamma = gamma
        if isinstance(ridge, bool) or not isinstance(ridge, numbers.Real) or not (
            math.isfinite(ridge) and ridge > 0  # type: ignore[operator]  # numbers.Real
        ):
            raise ValueError(f"{where}: ridge must be a finite number > 0, got {ridge!r}")
        self._ridge = float(ridge)
        if (isinstance(n_explore, bool) or not isinstance(n_explore, numbers.Integral)
                or n_explore < 1):
            raise ValueError(f"{where}: n_explore must be an integer >= 1, got {n_explore!r}")
        self._n_explore = int(n_explore)
        self._rng = host_rng(self._seed)
        m = self._degree + 1
        K = self._n_arms
        self._t = 0
        self._gram = xp.zeros((K, m, m), dtype=xp.float64)
        self._moment = xp.zeros((K, m), dtype=xp.float64)
        self._counts = xp.zeros(K, dtype=xp.int64)
        self._theta = xp.zeros((K, m), dtype=xp.float64)
        self._sq_error = 0.0
        self._loss_min = math.inf
        self._loss_max = -math.inf

    def __repr__(self):
        return (
            f"ChebCB(n_arms={self._n_arms}, context_range={self._context_range}, "
            f"degree={self._degree}, seed={self._seed}, gamma={self._gamma}) "
            f"after {self._t} rounds"
        )

    # configuration -----------------------------------------------------------------
    @property
    def n_arms(self) -> int:
        return self._n_arms

    @property
    def context_range(self) -> tuple:
        return self._context_range

    @property
    def degree(self) -> int:
        return self._degree

    @property
    def seed(self):
        return self._seed

    @property
    def ridge(self) -> float:
        return self._ridge

    @property
    def n_explore(self) -> int:
        return self._n_explore

    # state ------------------------------------------------------------------------
    @property
    def t(self) -> int:
        return self._t

    @property
    def counts(self):
        """Observations per arm (a copy)."""
        return xp.asarray(self._counts, copy=True)

    @property
    def coefficients(self):
        """Chebyshev coefficients ``θ``, shape (K, degree + 1) (a copy)."""
        return xp.asarray(self._theta, copy=True)

    @property
    def gamma(self) -> float:
        """``γ`` of the next round."""
        t = self._t
        if self._gamma is not None:
            return self._gamma * t
        if t == 0:
            return 0.0
        m = self._degree + 1
        spread = self._loss_max - self._loss_min
        alpha = (math.pi + 2.0 / math.pi * math.log(2 * m + 1)) / (2.0 * (m + 1)) * spread
        denom = self._sq_error + 2.0 * alpha * alpha * t
        # all losses equal so far: no gap to scale, any finite γ will do
        denom = max(denom, 1e-300)
        return 2.0 * t * math.sqrt(self._n_arms * t / denom)

    def _features(self, where, context):
        c = _check_context(where, context, self._context_range)
        return chebyshev_features(_to_unit_interval(c, self._context_range), self._degree)

    def predict(self, context):
        """Predicted loss of every arm at ``context``, shape (K,)."""
        return self._theta @ self._features("ChebCB.predict", context)

    def _distribution(self, phi):
        K = self._n_arms
        fewest = int(xp.min(self._counts))
        if fewest < self._n_explore:
            mask = xp.astype(self._counts == fewest, xp.float64)
            return mask / xp.sum(mask)
        yhat = self._theta @ phi
        best = int(xp.argmin(yhat))
        gap = yhat - yhat[best]
        p = 1.0 / (K + self.gamma * gap)
        p[best] = 0.0
        p[best] = 1.0 - xp.sum(p)
        return p

    def probabilities(self, context):
        """The distribution :meth:`sample` draws from at ``context``, shape (K,)."""
        return self._distribution(self._features("ChebCB.probabilities", context))

    def sample(self, context) -> int:
        """Draw the arm to play at ``context``."""
        return _draw(self._rng, self._distribution(self._features("ChebCB.sample", context)))

    def update(self, arm, context, loss) -> None:
        """Record the loss (about [0, 1]) of ``arm`` at ``context`` and refit that arm."""
        where = "ChebCB.update"
        arm = _check_arm(where, arm, self._n_arms)
        phi = self._features(where, context)
        loss = _check_loss(where, loss)
        # online regression error of the prediction made before seeing the loss
        self._sq_error += (float(self._theta[arm] @ phi) - loss) ** 2
        self._loss_min = min(self._loss_min, loss)
        self._loss_max = max(self._loss_max, loss)
        gram = xp.asarray(self._gram, copy=True)
        moment = xp.asarray(self._moment, copy=True)
        counts = xp.asarray(self._counts, copy=True)
        theta = xp.asarray(self._theta, copy=True)
        gram[arm] += phi[:, None] * phi[None, :]
        moment[arm] += loss * phi
        counts[arm] += 1
        m = self._degree + 1
        theta[arm] = xp.linalg.solve(
            gram[arm] + self._ridge * xp.eye(m, dtype=xp.float64), moment[arm]
        )
        self._gram, self._moment, self._counts, self._theta = gram, moment, counts, theta
        self._t += 1

    def rescale_losses(self, factor) -> None:
        """Multiply every past loss by ``factor`` (> 0), as if it had been scaled so from
        the start. The ridge fit is linear in the losses, so the coefficients scale too."""
        f = _check_factor("ChebCB.rescale_losses", factor)
        self._moment = self._moment * f
        self._theta = self._theta * f
        self._sq_error *= f * f
        if self._t:
            self._loss_min *= f
            self._loss_max *= f

    def state_dict(self) -> dict:
        """The state as plain values (arrays, numbers and the generator state as JSON)."""
        return {
            "n_arms": self._n_arms,
            "degree": self._degree,
            "t": self._t,
            "gram": xp.asarray(self._gram, copy=True),
            "moment": xp.asarray(self._moment, copy=True),
            "counts": xp.asarray(self._counts, copy=True),
            "coefficients": xp.asarray(self._theta, copy=True),
            "sq_error": self._sq_error,
            "loss_min": self._loss_min,
            "loss_max": self._loss_max,
            "rng_state": _rng_state(self._rng),
        }

    def load_state_dict(self, state) -> None:
        """Restore a state made by :meth:`state_dict` of a learner of the same shape."""
        where = "ChebCB.load_state_dict"
        keys = ("n_arms", "degree", "t", "gram", "moment", "counts", "coefficients",
                "sq_error", "loss_min", "loss_max", "rng_state")
        _require(where, state, keys)
        if int(state["n_arms"]) != self._n_arms or int(state["degree"]) != self._degree:
            raise ValueError(
                f"{where}: the state has n_arms={int(state['n_arms'])}, "
                f"degree={int(state['degree'])}; this learner has n_arms={self._n_arms}, "
                f"degree={self._degree}"
            )
        K, m = self._n_arms, self._degree + 1
        gram = _as_float_array(where, "gram", state["gram"], (K, m, m))
        moment = _as_float_array(where, "moment", state["moment"], (K, m))
        theta = _as_float_array(where, "coefficients", state["coefficients"], (K, m))
        counts = xp.asarray(xp.asarray(state["counts"]), dtype=xp.int64, copy=True)
        if tuple(counts.shape) != (K,):
            raise ValueError(f"{where}: state entry 'counts' has shape {tuple(counts.shape)}, "
                             f"expected ({K},)")
        self._t = int(state["t"])
        self._gram, self._moment, self._counts, self._theta = gram, moment, counts, theta
        self._sq_error = float(state["sq_error"])
        self._loss_min = float(state["loss_min"])
        self._loss_max = float(state["loss_max"])
        _set_rng_state(self._rng, state["rng_state"])


# ---------------------------------------------------------------------------------------
# Tsallis-INF per context bin
# ---------------------------------------------------------------------------------------
class BinnedTsallisINF:
    """One independent :class:`TsallisINF` per bin of the context range.

    The range ``[lo, hi]`` is cut into ``n_bins`` equal bins (the upper end belongs to the
    last bin); a context picks its bin and that bin's learner alone samples and learns, its
    round counter (and so its learning rate) counting that bin's rounds only, as in the
    reference ``learners/TsallisINFCB.m``. One generator draws for all bins.

    Parameters
    ----------
    n_arms : int
        Number of arms ``K``.
    context_range : (float, float)
        ``(lo, hi)``; a context outside raises ``ValueError``.
    n_bins : int
        Number of bins (default 6).
    seed : int or None
        Seed of the generator that draws the arms.

    Examples
    --------
    >>> from diffsolve.linear._bandit_algorithms import BinnedTsallisINF
    >>> learner = BinnedTsallisINF(2, context_range=(0.0, 1.0), n_bins=2, seed=0)
    >>> for t in range(400):
    ...     c = (t % 2) * 0.9
    ...     arm = learner.sample(c)
    ...     learner.update(arm, c, float(arm != (c > 0.5)))
    >>> int(learner.probabilities(0.1).argmax()), int(learner.probabilities(0.9).argmax())
    (0, 1)
    """

    def __init__(self, n_arms, context_range, n_bins=6, seed=0):
        where = "BinnedTsallisINF"
        self._n_arms = _check_n_arms(where, n_arms)
        self._context_range = _check_context_range(where, context_range)
        if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral) or n_bins < 1:
            raise ValueError(f"{where}: n_bins must be a positive integer, got {n_bins!r}")
        self._n_bins = int(n_bins)
        self._seed = _check_seed(where, seed)
        self._rng = host_rng(self._seed)
        # the per-bin learners never draw with their own generators
        self._bins = [TsallisINF(self._n_arms, seed=0) for _ in range(self._n_bins)]

    def __repr__(self):
        return (
            f"BinnedTsallisINF(n_arms={self._n_arms}, context_range={self._context_range}, "
            f"n_bins={self._n_bins}, seed={self._seed})"
        )

    @property
    def n_arms(self) -> int:
        return self._n_arms

    @property
    def context_range(self) -> tuple:
        return self._context_range

    @property
    def n_bins(self) -> int:
        return self._n_bins

    @property
    def seed(self):
        return self._seed

    @property
    def t(self) -> int:
        return sum(b.t for b in self._bins)

    @property
    def bins(self) -> tuple:
        """The per-bin learners (for inspection; sampling goes through this object)."""
        return tuple(self._bins)

    def bin_index(self, context) -> int:
        """The bin of ``context``."""
        c = _check_context("BinnedTsallisINF.bin_index", context, self._context_range)
        lo, hi = self._context_range
        return min(int((c - lo) / (hi - lo) * self._n_bins), self._n_bins - 1)

    def probabilities(self, context):
        """The distribution :meth:`sample` draws from at ``context`` (a copy)."""
        return self._bins[self.bin_index(context)].probabilities

    def sample(self, context) -> int:
        """Draw the arm to play at ``context``."""
        return self._bins[self.bin_index(context)]._sample_with(self._rng)

    def update(self, arm, context, loss) -> None:
        """Record the loss (about [0, 1]) of ``arm`` at ``context`` in that bin's learner."""
        self._bins[self.bin_index(context)].update(arm, loss)

    def rescale_losses(self, factor, bin=None) -> None:
        """Multiply the past losses of one bin (or of all, ``bin=None``) by ``factor``."""
        if bin is None:
            for b in self._bins:
                b.rescale_losses(factor)
            return
        _check_arm("BinnedTsallisINF.rescale_losses (bin)", bin, self._n_bins)
        self._bins[int(bin)].rescale_losses(factor)

    def state_dict(self) -> dict:
        """The state as plain values: per-bin ``t`` and ``loss_estimates`` stacked, and the
        generator state as JSON."""
        return {
            "n_arms": self._n_arms,
            "n_bins": self._n_bins,
            "t": xp.asarray([b.t for b in self._bins], dtype=xp.int64),
            "loss_estimates": xp.stack([b._L for b in self._bins]),
            "rng_state": _rng_state(self._rng),
        }

    def load_state_dict(self, state) -> None:
        """Restore a state made by :meth:`state_dict` of a learner of the same shape."""
        where = "BinnedTsallisINF.load_state_dict"
        _require(where, state, ("n_arms", "n_bins", "t", "loss_estimates", "rng_state"))
        if int(state["n_arms"]) != self._n_arms or int(state["n_bins"]) != self._n_bins:
            raise ValueError(
                f"{where}: the state has n_arms={int(state['n_arms'])}, "
                f"n_bins={int(state['n_bins'])}; this learner has n_arms={self._n_arms}, "
                f"n_bins={self._n_bins}"
            )
        L = _as_float_array(where, "loss_estimates", state["loss_estimates"],
                            (self._n_bins, self._n_arms))
        t = xp.asarray(state["t"])
        if tuple(t.shape) != (self._n_bins,):
            raise ValueError(f"{where}: state entry 't' has shape {tuple(t.shape)}, expected "
                             f"({self._n_bins},)")
        for i, b in enumerate(self._bins):
            b.load_state_dict({"n_arms": self._n_arms, "t": int(t[i]),
                               "loss_estimates": L[i], "rng_state": _rng_state(b._rng)})
        _set_rng_state(self._rng, state["rng_state"])
