"""SVM hyperparameter selection with a constrained lower level, for the bilevel benchmark.

The linear-SVM experiment of Yao et al. (ICLR 2024, "Constrained bi-level optimization:
proximal Lagrangian value function approach and Hessian-free algorithm", Sec. 5; the same
problem as Gao et al., ICML 2022, "Value function based difference-of-convex algorithm for
bilevel hyperparameter selection problems"), on scikit-learn's bundled breast_cancer data:

* lower level, y = (w, b, ξ), one hyperparameter cᵢ per training row::

      min_{w, b, ξ}  ½||w||² + ½ Σᵢ exp(cᵢ) ξᵢ²   s.t.  1 − ξᵢ − tᵢ (w·zᵢ + b) <= 0,

  a strictly convex QP in (w, ξ); b is fixed by the KKT system whenever one constraint is
  active (always, see :func:`lower_level`).
* upper level: the smooth part of the authors' validation loss. Their code
  (SUSTech-Optimization/LV-HBA, ``Hyperparameter optimization/Linear SVM/*/LV-HBA.py``,
  ``loss_upper``) sums ``LeakyReLU(2σ(−5 dᵢ) − 1)`` over the validation rows, with
  ``dᵢ = tᵢ (w·zᵢ + b)/||w||`` the signed distance to the hyperplane. The LeakyReLU puts a
  kink at dᵢ = 0 (Φ would not be differentiable there, and neither L-BFGS-B's reference nor
  a finite-difference check would mean much), and ``2σ − 1`` takes negative values (a
  relative gap ``(Φ − Φ*)/Φ*`` would not either); we keep the sigmoid and take the mean,
  ``F(w, b) = mean σ(−5 dᵢ)`` in (0, 1), a smooth surrogate of the validation error.

The lower-level solver (:func:`lower_level`) is a primal active-set method on the dual, exact
up to rounding; the hypergradient (:func:`hypergradient`) differentiates the KKT system on
the active set (implicit function theorem; valid under strict complementarity, which is
checked).
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import autograd
import autograd.numpy as anp
import numpy as np
import scipy.linalg
import scipy.optimize

BOX = (-8.0, 8.0)
SLOPE = 5.0  # the sigmoid's slope in the authors' loss_upper
#: a multiplier or a constraint slack below this (relative) marks a point where strict
#: complementarity fails and Φ has a kink
DEGENERATE_TOL = 1e-9


def svm_data(n_train: int = 60, n_val: int = 60, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Standardised breast_cancer rows, labels ±1, split by a fixed permutation.

    Parameters
    ----------
    n_train, n_val : int
        Training and validation rows (disjoint; at most 569 together).
    seed : int
        Seed of the permutation (``numpy.random.default_rng``).

    Returns
    -------
    Ztr, ttr, Zva, tva : ndarray
        Features (standardised on the whole data set, as the other benchmark problems
        are) and labels in {−1, +1}.
    """
    from sklearn.datasets import load_breast_cancer  # type: ignore[import-untyped]

    X, t = load_breast_cancer(return_X_y=True)
    if n_train < 2 or n_val < 1 or n_train + n_val > len(t):
        raise ValueError(f"svm_data: n_train={n_train}, n_val={n_val}; need n_train >= 2, "
                         f"n_val >= 1 and n_train + n_val <= {len(t)}")
    X = (X - X.mean(0)) / X.std(0)
    t = 2.0 * t - 1.0
    idx = np.random.default_rng(seed).permutation(len(t))
    tr, va = idx[:n_train], idx[n_train:n_train + n_val]
    if np.unique(t[tr]).size < 2:
        raise ValueError(f"svm_data: the {n_train} training rows of seed {seed} hold one "
                         "class only; take more rows or another seed")
    return X[tr], t[tr], X[va], t[va]


def lower_level(c: np.ndarray, Z: np.ndarray, t: np.ndarray,
                start: np.ndarray | None = None, maxiter: int | None = None
                ) -> dict[str, Any]:
    """Exact solution of the lower-level QP for hyperparameters ``c``.

    With ``aᵢ = exp(cᵢ)`` the KKT conditions give ``w = Σ λᵢ tᵢ zᵢ``, ``ξᵢ = λᵢ/aᵢ``,
    ``Σ λᵢ tᵢ = 0``, so the multipliers solve the L2-SVM dual (Cortes & Vapnik 1995 with
    squared slacks)::

        min_λ ½ λᵀ K λ − Σ λᵢ   s.t.  λ >= 0,  tᵀλ = 0,   K = (t tᵀ) ∘ (Z Zᵀ) + diag(1/a),

    whose equality multiplier is the bias b. K is positive definite, so a primal active-set
    method (Nocedal & Wright, Numerical Optimization, Alg. 16.3) ends after finitely many
    steps at the exact solution; each step solves the KKT system on the free set F,
    ``K_FF λ_F + t_F b = 1, t_Fᵀ λ_F = 0``.

    Parameters
    ----------
    c : ndarray (n,)
        Log-weights of the squared slacks.
    Z, t : ndarray
        Training features (n, p) and labels (n,) in {−1, +1} with both classes present.
    start : ndarray of bool (n,), optional
        A guess of the active set (e.g. the previous solution's); used when the KKT system
        on it gives λ_F >= 0, otherwise the method starts from λ = 0.
    maxiter : int, optional
        Active-set changes allowed (default 20 n).

    Returns
    -------
    dict
        ``w, b, xi, lam`` (the multipliers), ``active`` (bool mask of λ > 0),
        ``kkt`` (the KKT residual: stationarity, feasibility, complementarity, signs;
        max-norm), ``iterations``, ``y`` (= concatenate(w, [b], xi)).

    Raises
    ------
    RuntimeError
        When the active set keeps changing after ``maxiter`` steps (cycling).
    """
    n = len(t)
    c = np.asarray(c, dtype=float)
    if c.shape != (n,) or not np.all(np.isfinite(c)):
        raise ValueError(f"lower_level: c must be finite with shape ({n},), got shape "
                         f"{c.shape}")
    maxiter = 20 * n if maxiter is None else maxiter
    G = (t[:, None] * Z) @ (t[:, None] * Z).T
    K = G + np.diag(np.exp(-c))

    def solve_free(F):
        k = len(F)
        M = np.zeros((k + 1, k + 1))
        M[:k, :k] = K[np.ix_(F, F)]
        M[:k, k] = M[k, :k] = t[F]
        sol = np.linalg.solve(M, np.concatenate([np.ones(k), [0.0]]))
        return sol[:k], sol[k]

    lam = np.zeros(n)
    free = np.zeros(n, dtype=bool)
    if start is not None and np.any(start):
        F = np.flatnonzero(start)
        lf, _ = solve_free(F)
        if np.all(lf >= 0):
            lam[F] = lf
            free[F] = True
    if not np.any(free):
        # λ = 0 is feasible; one index in F makes the KKT matrix nonsingular (b = tᵢ)
        free[0] = True
    steps_taken = 0
    for _ in range(maxiter):
        steps_taken += 1
        F = np.flatnonzero(free)
        lf, b = solve_free(F)
        p = lf - lam[F]
        if np.max(np.abs(p), initial=0.0) <= 1e-14 * max(1.0, np.max(np.abs(lf))):
            mu = K @ lam - 1.0 + b * t  # bound multipliers: tᵢ(w·zᵢ + b) − 1 when λᵢ = 0
            mu[free] = 0.0
            j = int(np.argmin(mu))
            if mu[j] >= -1e-13:
                break
            free[j] = True
            continue
        neg = p < 0
        steps = np.where(neg, lam[F] / np.where(neg, -p, 1.0), np.inf)
        j = int(np.argmin(steps))
        if steps[j] >= 1.0:
            lam[F] = lf
        else:  # a bound blocks the step: move to it and fix that multiplier at 0
            lam[F] = lam[F] + steps[j] * p
            lam[F[j]] = 0.0
            free[F[j]] = False
    else:
        raise RuntimeError(f"lower_level: the active set still changed after {maxiter} "
                           "steps (cycling); report the c that caused it")
    lam = np.maximum(lam, 0.0)
    F = np.flatnonzero(free)
    lf, b = solve_free(F)  # the final, exact solve on the active set
    lam[:] = 0.0
    lam[F] = np.maximum(lf, 0.0)
    w = Z.T @ (lam * t)
    xi = lam * np.exp(-c)
    g = 1.0 - xi - t * (Z @ w + b)  # constraints, <= 0
    kkt = max(np.max(np.abs(xi * np.exp(c) - lam)),  # ∂/∂ξ (w's and b's hold by construction)
              abs(float(lam @ t)),
              float(np.max(np.maximum(g, 0.0))),
              float(np.max(np.abs(lam * g))),
              float(np.max(np.maximum(-lam, 0.0))))
    return {"w": w, "b": float(b), "xi": xi, "lam": lam, "active": lam > 0,
            "kkt": float(kkt), "iterations": steps_taken,
            "y": np.concatenate([w, [b], xi]), "constraints": g}


def svm_problem(n_train: int = 60, n_val: int = 60, seed: int = 0) -> dict[str, Any]:
    """The SVM bilevel problem in the form of ``bench_bilevel_reference``'s problems.

    Parameters
    ----------
    n_train, n_val, seed : int
        Passed to :func:`svm_data`.

    Returns
    -------
    dict
        ``outer(x, y)``, ``inner(x, y)``, ``constraint(x, y)`` (autograd.numpy; y =
        (w, b, ξ), length p + 1 + n_train; x = c, one per training row), ``x0`` = 0
        (``exp(c) = 1``, the unweighted L2-SVM), ``y0`` = the exact lower-level solution at
        x0 (the upper loss divides by ||w||, so y = 0 is no valid start), ``phi(x) ->
        (Φ(x), ∇Φ(x))``, ``solve_lower(x)`` (:func:`lower_level`'s dict, warm-started),
        ``box`` (−8, 8), ``data``, ``kind = "svm"``, and ``degenerate`` (a list of the x
        at which strict complementarity failed during calls to ``phi``).
    """
    Ztr, ttr, Zva, tva = svm_data(n_train, n_val, seed)
    n, p = Ztr.shape

    def split(y):
        return y[:p], y[p], y[p + 1:]

    def outer(x, y):
        w, b, _ = split(y)
        d = tva * (anp.dot(Zva, w) + b) / anp.sqrt(anp.sum(w ** 2))
        return anp.mean(0.5 - 0.5 * anp.tanh(0.5 * SLOPE * d))  # σ(−5d), no overflow

    def inner(x, y):
        w, _, xi = split(y)
        return 0.5 * anp.sum(w ** 2) + 0.5 * anp.sum(anp.exp(x) * xi ** 2)

    def constraint(x, y):
        w, b, xi = split(y)
        return 1.0 - xi - ttr * (anp.dot(Ztr, w) + b)

    outer_y = autograd.grad(outer, 1)
    cache: dict[str, Any] = {"active": None}
    degenerate: list[np.ndarray] = []

    def solve_lower(x):
        sol = lower_level(np.asarray(x, dtype=float), Ztr, ttr, start=cache["active"])
        cache["active"] = sol["active"]
        return sol

    def phi(x):
        x = np.asarray(x, dtype=float)
        sol = solve_lower(x)
        value, grad, info = hypergradient(x, sol, Ztr, ttr, outer, outer_y)
        if info["degenerate"]:
            # at the reference optimum this is the rule, not the exception (the minimiser
            # sits on a kink), so one warning per problem, the rest counted
            if not degenerate:
                warnings.warn(f"svm phi: strict complementarity fails (min active multiplier "
                              f"{info['min_multiplier']:.3g}, min inactive slack "
                              f"{info['min_slack']:.3g}): Φ has a kink here and the gradient "
                              "returned is the one of the current active set; further such "
                              "points are counted in problem['degenerate'], not warned",
                              RuntimeWarning, stacklevel=2)
            degenerate.append(x.copy())
        return value, grad

    x0 = np.zeros(n)
    y0 = lower_level(x0, Ztr, ttr)["y"]
    return {"outer": outer, "inner": inner, "constraint": constraint, "phi": phi,
            "solve_lower": solve_lower, "x0": x0, "y0": y0, "box": BOX,
            "data": (Ztr, ttr, Zva, tva), "kind": "svm", "degenerate": degenerate}


def hypergradient(c: np.ndarray, sol: dict[str, Any], Z: np.ndarray, t: np.ndarray,
                  outer: Any, outer_y: Any) -> tuple[float, np.ndarray, dict[str, Any]]:
    """Φ(c) and ∇Φ(c) by the implicit function theorem on the active set.

    On the active set A the solution solves ``M (λ_A, b) = (1, 0)`` with ``M = [[K_AA, t_A],
    [t_Aᵀ, 0]]`` and ``K_AA = G_AA + diag(exp(−c_A))``; the inactive λ are 0 and locally
    independent of c (strict complementarity). Differentiating, ``M ∂(λ_A, b)/∂c_A =
    [diag(exp(−c_A) λ_A); 0]``, and with ``w = Σ λᵢ tᵢ zᵢ`` the adjoint ``M v = (t_A ∘ Z_A
    ∂F/∂w, ∂F/∂b)`` gives ``∂Φ/∂c_A = exp(−c_A) λ_A v_A``, ``∂Φ/∂c_I = 0`` (the upper
    level does not depend on ξ).

    Parameters
    ----------
    c : ndarray (n,)
    sol : dict
        :func:`lower_level`'s answer at c.
    Z, t : ndarray
        Training rows and labels.
    outer, outer_y : callable
        The upper level ``outer(x, y)`` and its gradient in y.

    Returns
    -------
    value : float
    grad : ndarray (n,)
    info : dict
        ``degenerate`` (strict complementarity fails: an active multiplier or an inactive
        constraint's slack below ``DEGENERATE_TOL`` relative), ``min_multiplier``,
        ``min_slack``.
    """
    p = Z.shape[1]
    y = sol["y"]
    A = np.flatnonzero(sol["active"])
    k = len(A)
    G = (t[A, None] * Z[A]) @ (t[A, None] * Z[A]).T
    M = np.zeros((k + 1, k + 1))
    M[:k, :k] = G + np.diag(np.exp(-c[A]))
    M[:k, k] = M[k, :k] = t[A]
    gy = outer_y(c, y)
    rhs = np.concatenate([t[A] * (Z[A] @ gy[:p]), [gy[p]]])
    v = scipy.linalg.solve(M, rhs, assume_a="sym")
    grad = np.zeros_like(c)
    lam = sol["lam"]
    grad[A] = np.exp(-c[A]) * lam[A] * v[:k]
    inactive = ~sol["active"]
    min_mult = float(np.min(lam[A])) if k else np.inf
    min_slack = float(np.min(-sol["constraints"][inactive])) if np.any(inactive) else np.inf
    scale = max(1.0, float(np.max(lam)))
    info = {"degenerate": bool(min_mult <= DEGENERATE_TOL * scale or min_slack <= DEGENERATE_TOL),
            "min_multiplier": min_mult, "min_slack": min_slack}
    return float(outer(c, y)), grad, info


RADII = (0.3, 0.1, 0.03, 0.01, 1e-3)


def _sampled_descent(phi: Any, x: np.ndarray, f: float, box: tuple[float, float],
                     per_radius: int, rng: np.random.Generator) -> tuple[float, np.ndarray]:
    """The lowest Φ among ``per_radius`` random points at each distance of ``RADII`` from
    x (clipped to the box), or (f, x) when none is lower."""
    best = (f, x)
    for rad in RADII:
        for _ in range(per_radius):
            d = rng.standard_normal(len(x))
            q = np.clip(x + rad / np.linalg.norm(d) * d, *box)
            v = phi(q)[0]
            if v < best[0]:
                best = (v, q)
    return best


def svm_reference(pb: dict[str, Any], gtol: float = 1e-8, max_rounds: int = 40,
                  seed: int = 0) -> dict[str, Any]:
    """The reference optimum: L-BFGS-B on the exact hypergradient in ``pb["box"]`` (as
    ``reference()`` of ``bench_bilevel_reference``), restarted from sampled descent points.

    Φ is continuous and piecewise smooth: it has a kink wherever a training row enters or
    leaves the active set. L-BFGS-B alone stalls on such kinks ("relative reduction of F")
    at points where nearby random points still have a lower Φ (on the 60 + 60 instance its
    first stop is ~10 % above the answer below). So after each L-BFGS-B stop, 2 len(x)
    random points at each distance of ``RADII`` are evaluated and L-BFGS-B restarts from the
    lowest one, until none is lower than the stop or ``max_rounds`` rounds have run (a
    descent-only basin hopping, Wales & Doye, J. Phys. Chem. A 101, 1997). The answer is a
    local minimiser as far as that sampling can tell (Φ is not convex, the
    projected gradient at a kink is one-sided and need not be small).

    Parameters
    ----------
    pb : dict
        :func:`svm_problem`'s answer.
    gtol : float
        L-BFGS-B's projected-gradient tolerance.
    max_rounds : int
        L-BFGS-B runs at most.
    seed : int
        Seed of the sampling.

    Returns
    -------
    dict
        ``value, x, projected_grad`` (with the gradient of x's active set), ``iterations``
        (L-BFGS-B's, all runs), ``message`` (the last run's, and whether sampling still
        found descent), ``time_s``, ``rounds``, ``first_value`` (the first L-BFGS-B stop:
        what ``reference()`` alone would give) and ``degenerate_calls`` (evaluations at a
        kink).
    """
    box = pb["box"]
    phi = pb["phi"]
    before = len(pb["degenerate"])
    bounds = [box] * len(pb["x0"])
    opts = {"gtol": gtol, "ftol": 1e-15, "maxiter": 20000, "maxcor": 30}
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    x = np.asarray(pb["x0"], dtype=float)
    f, _ = phi(x)
    nit, first, descent, rounds = 0, None, True, 0
    for _ in range(max_rounds):
        rounds += 1
        r = scipy.optimize.minimize(phi, x, jac=True, method="L-BFGS-B", bounds=bounds,
                                    options=opts)
        nit += int(r.nit)
        first = float(r.fun) if first is None else first
        if r.fun < f:
            x, f = r.x, float(r.fun)
        fs, xs = _sampled_descent(phi, x, f, box, 2 * len(x), rng)
        descent = fs < f
        if not descent:
            break
        x, f = xs, fs
    elapsed = time.perf_counter() - t0
    value, g = phi(x)
    pg = np.linalg.norm(x - np.clip(x - g, *box))
    msg = f"{r.message}; " + ("sampling still finds descent after max_rounds" if descent
                              else "no sampled point lower")
    return {"value": float(value), "x": x.tolist(), "projected_grad": float(pg),
            "iterations": nit, "message": msg, "time_s": elapsed, "rounds": rounds,
            "first_value": first, "degenerate_calls": len(pb["degenerate"]) - before}
