"""diffsolve.bilevel.solve without hand-tuning: divergence reports, scale-free default steps,
the penalty schedule that finishes, LV-HBA's update direction and equality constraints.

Problems with closed forms:

* the quadratic bilevel problem of ``tests/test_bilevel_solve.py`` (``y*(x) = A⁻¹Bx``);
* LV-HBA's constrained setting ``y*(x) = argmin {½||y − x||² : y <= b}``;
* an equality-constrained lower level ``y*(x) = argmin {½||y − x||² : Σy = 1}``, the
  projection of x onto the hyperplane, so that ``x* = (PᵀP + I)⁻¹(Pᵀ(c − 1/n) + d)`` with
  ``P = I − 11ᵀ/n``;
* per-feature ridge regression ``w*(x) = (XᵀX + diag(eˣ))⁻¹Xᵀt`` with a validation loss,
  whose optimum is found here by L-BFGS on the exact hypergradient.
"""

from __future__ import annotations

import autograd.numpy as anp
import numpy as np
import pytest
import scipy.optimize

import diffsolve as ds
from diffsolve._result import ConvergenceWarning
from diffsolve.bilevel import solve
from diffsolve.bilevel._derivatives import Oracle
from diffsolve.bilevel._solve import _LVHBA, OPTIONS, _Problem
from tests.test_bilevel_solve import (
    RHO,
    X_TOY,
    _quadratic_data,
    toy_constraint,
    toy_inner,
    toy_outer,
)

METHODS = ("implicit", "penalty", "bo-rep")


def _quadratic(scale=1.0):
    A, B, c, x_star, y_star = _quadratic_data()

    def inner(x, y):
        return 0.5 * y @ A @ y - y @ (B @ x)

    def outer(x, y):
        return scale * (0.5 * anp.sum((y - c) ** 2) + 0.5 * RHO * anp.sum(x ** 2))

    return outer, inner, x_star, y_star


def _solve(method, outer, inner, **kw):
    return solve(outer, inner, np.zeros(3), np.zeros(4), method, **kw)


# ---------------------------------------------------------------------------------------
# divergence
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_too_long_a_user_step_is_reported_as_diverged(method):
    outer, inner, *_ = _quadratic()
    with pytest.warns(ConvergenceWarning, match=r"diverged.*grew.*reduce stepsize.*"
                                                r"stepsize=None"):
        res = _solve(method, outer, inner, stepsize=1e4, maxiter=500)
    assert res.status is ds.Status.DIVERGED and not res.converged
    assert res.n_iters < 100  # caught early, long before overflow
    assert np.all(np.isfinite(res.x))


def test_lvhba_divergence_is_not_reported_as_infeasibility():
    with pytest.warns(ConvergenceWarning, match="diverged.*reduce stepsize") as rec:
        res = solve(toy_outer, toy_inner, np.zeros(2), np.zeros(2), "lv-hba",
                    constraint=toy_constraint, stepsize=1e3, maxiter=500)
    assert res.status is ds.Status.DIVERGED
    assert "constraint" not in str(rec[0].message)


@pytest.mark.parametrize("method", (*METHODS, "lv-hba"))
def test_non_finite_values_are_reported(method):
    # the outer objective is NaN beyond x₀ = 0.7 while the solution is at x = 1
    def inner(x, y):
        return 0.5 * anp.sum((y - x) ** 2)

    def outer(x, y):
        value = 0.5 * anp.sum((y - 2.0) ** 2) + 0.5 * anp.sum(x ** 2)
        return anp.where(x[0] > 0.7, np.nan, value)

    kw = {"constraint": lambda x, y: y - 10.0} if method == "lv-hba" else {}
    with pytest.warns(ConvergenceWarning, match="non-finite.*outer.*nan.*reduce"):
        res = solve(outer, inner, np.zeros(1), np.zeros(1), method, maxiter=2000, **kw)
    assert res.status is ds.Status.NONFINITE and not res.converged
    with pytest.raises(ds.NonFiniteError):
        solve(outer, inner, np.zeros(1), np.zeros(1), method, maxiter=2000, throw=True, **kw)


# ---------------------------------------------------------------------------------------
# scale-free defaults
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_default_steps_do_not_depend_on_the_objectives_scale(method):
    runs = {}
    for scale in (1.0, 1e3, 1e-3):
        outer, inner, x_star, _ = _quadratic(scale)
        # the quasi-Newton defaults of implicit and penalty are at x* long before 150
        # iterations; bo-rep's normalised steps take about 300
        runs[scale] = _solve(method, outer, inner, maxiter=300 if method == "bo-rep" else 150,
                             rtol=0.0, atol=0.0)
        assert runs[scale].status is ds.Status.MAX_ITERATIONS
    # the same iterates up to rounding (penalty's λ₀ comes from a finite-difference
    # estimate, whose rounding differs with the scale), and the same answer
    for scale in (1e3, 1e-3):
        np.testing.assert_allclose(runs[scale].x, runs[1.0].x, atol=1e-4)
    np.testing.assert_allclose(runs[1.0].x, x_star, atol=1e-3)


def test_lvhba_default_steps_do_not_depend_on_the_outer_scale():
    xs = []
    for scale in (1.0, 1e3, 1e-3):
        res = solve(lambda x, y, s=scale: s * toy_outer(x, y), toy_inner, np.zeros(2),
                    np.zeros(2), "lv-hba", constraint=toy_constraint, maxiter=300, rtol=0.0,
                    atol=0.0)
        xs.append(res.x)
    np.testing.assert_allclose(xs[1], xs[0], rtol=1e-6)
    np.testing.assert_allclose(xs[2], xs[0], rtol=1e-6)
    assert np.linalg.norm(xs[0] - X_TOY) < 2e-2


def test_user_steps_are_still_taken_as_given():
    outer, inner, _x_star, _ = _quadratic()
    seen = []
    res = _solve("implicit", outer, inner, stepsize=0.5, maxiter=2, rtol=0.0, atol=0.0,
                 callback=lambda s: seen.append(s.x.copy()))
    # the second x step is exactly 0.5 times the hypergradient at the first iterate
    assert res.n_iters == 2
    step = np.linalg.norm(seen[1] - seen[0])
    assert step > 0
    res_small = _solve("implicit", outer, inner, stepsize=0.05, maxiter=2, rtol=0.0,
                       atol=0.0)
    assert np.linalg.norm(res_small.x) < np.linalg.norm(res.x)


# ---------------------------------------------------------------------------------------
# the penalty schedule finishes
# ---------------------------------------------------------------------------------------
def test_penalty_defaults_converge_within_the_default_budget():
    outer, inner, x_star, y_star = _quadratic()
    res = _solve("penalty", outer, inner, atol=1e-5)
    assert res.converged and res.status is ds.Status.SUCCESS and res.n_iters < 1000
    np.testing.assert_allclose(res.x, x_star, atol=1e-3)
    np.testing.assert_allclose(res.y, y_star, atol=1e-3)


def test_penalty_convergence_needs_lower_level_optimality():
    # a huge tolerance on stationarity alone would pass at once; the lower-level gradient
    # of g at y (= −∇ᵧf / λ) keeps the run going until λ is large enough
    outer, inner, _x_star, _ = _quadratic()
    res = _solve("penalty", outer, inner, atol=1e-4)
    A, B, *_ = _quadratic_data()
    assert res.converged
    assert np.linalg.norm(A @ res.y - B @ res.x) <= 2e-4


# ---------------------------------------------------------------------------------------
# LV-HBA
# ---------------------------------------------------------------------------------------
def test_lvhba_direction_follows_the_authors_formula():
    rng = np.random.default_rng(3)
    M = rng.standard_normal((4, 3))
    a = rng.standard_normal(4)
    g1, g2, ck = 10.0, 10.0, 2.5

    def F(x, y):
        return 0.5 * anp.sum((y - a) ** 2) + 0.5 * anp.sum(x ** 2)

    def f(x, y):
        return 0.5 * anp.sum((y - M @ x) ** 2)

    def c(x, y):
        return anp.reshape(anp.sum(y) + anp.sum(x) - 1.0, (1,))

    oracle = Oracle(F, f, c, np, needs=("outer_grad", "inner_grad", "constraint_vjp"))
    pb = _Problem(oracle, c, None, None, np, "cpu")
    opts = dict(OPTIONS["lv-hba"], _inner_user=0.1, gamma1=g1, gamma2=g2)
    x, y, theta = rng.standard_normal(3), rng.standard_normal(4), rng.standard_normal(4)
    lam, z = np.array([0.7]), np.array([0.2])
    runner = _LVHBA(pb, x, y, 0.1, 0.1, 1, opts)
    _, dx, dy, dz = runner.directions(x, y, z, theta, lam, ck)
    # Yao et al. (2024), Algorithm 1, with the sign of d_z of the authors' code
    fx = lambda x_, y_: -M.T @ (y_ - M @ x_)  # noqa: E731
    np.testing.assert_allclose(dx, x / ck + fx(x, y) - fx(x, theta) - lam[0] * np.ones(3))
    np.testing.assert_allclose(dy, (y - a) / ck + (y - M @ x) - (y - theta) / g1)
    np.testing.assert_allclose(dz, (z - lam) / g2)
    # z ← z − β d_z moves z towards λ⁺
    assert abs((z - 1.0 * dz)[0] - lam[0]) < abs(z[0] - lam[0])


def test_lvhba_equality_constraints():
    n = 3
    c_ = np.array([1.0, -0.5, 2.0])
    d_ = np.array([0.3, 0.1, -0.2])
    P = np.eye(n) - np.ones((n, n)) / n
    x_star = np.linalg.solve(P.T @ P + np.eye(n), P.T @ (c_ - 1.0 / n) + d_)
    y_star = P @ x_star + 1.0 / n

    def outer(x, y):
        return 0.5 * anp.sum((y - c_) ** 2) + 0.5 * anp.sum((x - d_) ** 2)

    def inner(x, y):
        return 0.5 * anp.sum((y - x) ** 2)

    def constraint(x, y):
        return anp.reshape(anp.sum(y) - 1.0, (1,))

    with pytest.warns(ConvergenceWarning, match="did not converge"):
        res = solve(outer, inner, np.zeros(n), np.full(n, 1.0 / n), "lv-hba",
                    constraint=constraint, options={"equality": True}, maxiter=1000)
    assert res.status is ds.Status.MAX_ITERATIONS  # feasible: not INFEASIBLE
    assert abs(res.y.sum() - 1.0) < 1e-8
    assert np.linalg.norm(res.x - x_star) < 2e-2 and np.linalg.norm(res.y - y_star) < 2e-2


def test_lvhba_equality_violated_at_the_end_is_infeasible():
    # Σy = 1 and Σy = 2 cannot both hold
    def constraint(x, y):
        return anp.stack([anp.sum(y) - 1.0, anp.sum(y) - 2.0])

    with pytest.warns(ConvergenceWarning, match="constraints are violated"):
        res = solve(toy_outer, toy_inner, np.zeros(2), np.zeros(2), "lv-hba",
                    constraint=constraint, options={"equality": True}, maxiter=50)
    assert res.status is ds.Status.INFEASIBLE


# ---------------------------------------------------------------------------------------
# a small instance of the ridge benchmark: every method, defaults, to its reference
# ---------------------------------------------------------------------------------------
def _ridge():
    rng = np.random.default_rng(0)
    n, p = 40, 5
    X, Xv = rng.standard_normal((n, p)), rng.standard_normal((n, p))
    w_true = rng.standard_normal(p) * np.array([1.0, 1.0, 0.0, 0.0, 0.3])
    t, tv = X @ w_true + 0.5 * rng.standard_normal(n), Xv @ w_true + 0.5 * rng.standard_normal(n)

    def inner(x, w):
        return 0.5 * anp.sum((X @ w - t) ** 2) / n + 0.5 * anp.sum(anp.exp(x) * w ** 2)

    def outer(x, w):
        return 0.5 * anp.sum((Xv @ w - tv) ** 2) / n

    def wstar(x):
        return np.linalg.solve(X.T @ X / n + np.diag(np.exp(x)), X.T @ t / n)

    def phi(x):
        w = wstar(x)
        H = X.T @ X / n + np.diag(np.exp(x))
        r = Xv.T @ (Xv @ w - tv) / n
        return outer(x, w), -np.exp(x) * w * np.linalg.solve(H, r)

    box = (-6.0, 4.0)
    ref = scipy.optimize.minimize(phi, np.zeros(p), jac=True, method="L-BFGS-B",
                                  bounds=[box] * p, options={"gtol": 1e-12, "ftol": 1e-15})
    return outer, inner, phi, ref.fun, box, p


@pytest.mark.parametrize("method", METHODS)
def test_every_method_reaches_the_ridge_optimum_with_defaults(method):
    outer, inner, phi, fstar, box, p = _ridge()
    gaps = []
    # rtol = atol = 0: the fixed budget of the benchmark's target (500 iterations)
    def callback(state):
        gaps.append((phi(state.x)[0] - fstar) / fstar)
        return gaps[-1] <= 1e-2  # reached: stop (the rest of the budget is not the test)

    res = solve(outer, inner, np.zeros(p), np.zeros(p), method, maxiter=500, rtol=0.0,
                atol=0.0, x_projection=("box", *box), callback=callback)
    assert np.all(np.isfinite(res.x))
    assert res.status is ds.Status.STOPPED and gaps[-1] <= 1e-2, (method, gaps[-1])


def test_the_ridge_reference_hypergradient_is_exact():
    # the reference itself: its closed-form hypergradient against finite differences
    *_, phi, _fstar, _box, p = _ridge()
    x = np.linspace(-1.0, 1.0, p)
    fd = scipy.optimize.approx_fprime(x, lambda v: phi(v)[0], 1e-7)
    np.testing.assert_allclose(phi(x)[1], fd, rtol=1e-4, atol=1e-8)
