"""bilevel.solve with default settings reaches the reference optimum of a small instance of
each problem of ``bench/bench_bilevel_reference.py`` (logistic regression at full size: see
its fixture) (issue 15's target: within 1 % of Φ*,
or 1e-3 relative distance on LV-HBA's toy, within 500 outer iterations, never non-finite).

The references are L-BFGS-B on the exact hypergradient (Newton lower level, dense Hessian
solve), as in the benchmark; the runs stop at the first iterate within the target (the
callback returns True), so the tests time the way there, not the rest of the budget.
"""

from __future__ import annotations

import warnings

import autograd.numpy as anp
import numpy as np
import pytest
import scipy.optimize

import diffsolve as ds
from bench.bench_bilevel_reference import (
    BOX,
    cleaning_problem,
    logreg_problem,
    toy_problem,
)

pytest.importorskip("sklearn")


def _reference(pb):
    r = scipy.optimize.minimize(pb["phi"], pb["x0"], jac=True, method="L-BFGS-B",
                                bounds=[BOX] * len(pb["x0"]),
                                options={"gtol": 1e-10, "ftol": 1e-15, "maxiter": 2000})
    return float(r.fun)


@pytest.fixture(scope="module")
def logreg():
    # the benchmark's own instance (30 hyperparameters, 284 training rows; its reference
    # takes ~4 s): Φ is not convex, and on smaller subsets of breast_cancer (8-12 features)
    # the methods and L-BFGS-B end in different local minima 2-10 % apart, which would test
    # the starting point rather than the solver
    pb = logreg_problem()
    return pb, _reference(pb)


@pytest.fixture(scope="module")
def cleaning():
    pb = cleaning_problem(n_train=40, n_val=60)
    return pb, _reference(pb)


def _run(pb, fstar, method, **kw):
    gaps = []

    def callback(state):
        gaps.append((pb["phi"](state.x)[0] - fstar) / fstar)
        return gaps[-1] <= 1e-2  # True stops the run: the target is reached

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a run that warns has failed; none may pass silently
        res = ds.bilevel.solve(pb["outer"], pb["inner"], pb["x0"], pb["y0"], method,
                               maxiter=500, rtol=0.0, atol=0.0, x_projection=("box", *BOX),
                               callback=callback, **kw)
    return res, gaps


@pytest.mark.parametrize("method", ["implicit", "penalty", "bo-rep"])
def test_logistic_regression_tuning_reaches_one_percent(logreg, method):
    pb, fstar = logreg
    res, gaps = _run(pb, fstar, method)
    assert res.status is ds.Status.STOPPED, (method, res.message, gaps[-1])
    assert np.all(np.isfinite(res.x)) and np.all(np.isfinite(res.y))
    assert gaps[0] > 0.05  # the start is far from the target: the test measures a way there


@pytest.mark.parametrize("method", ["implicit", "penalty", "bo-rep"])
def test_data_hyper_cleaning_reaches_one_percent(cleaning, method):
    pb, fstar = cleaning
    res, gaps = _run(pb, fstar, method)
    assert res.status is ds.Status.STOPPED, (method, res.message, gaps[-1])
    assert gaps[0] > 0.05


def test_the_quasi_newton_path_beats_the_gradient_path(logreg):
    # the same problem with x_update="gradient" (secant-length projected gradient steps):
    # the quasi-Newton default needs fewer iterations to reach 1 %
    pb, fstar = logreg
    res_qn, gaps_qn = _run(pb, fstar, "implicit")
    assert res_qn.status is ds.Status.STOPPED
    gaps = []
    ds.bilevel.solve(pb["outer"], pb["inner"], pb["x0"], pb["y0"], "implicit", maxiter=200,
                     rtol=0.0, atol=0.0, x_projection=("box", *BOX),
                     options={"x_update": "gradient"},
                     callback=lambda s: gaps.append((pb["phi"](s.x)[0] - fstar) / fstar))
    first = next((i for i, g in enumerate(gaps) if g <= 1e-2), len(gaps))
    assert len(gaps_qn) < first


def test_lvhba_reaches_the_toy_solution():
    pb = toy_problem()
    xs = pb["x_star"]
    dist = []

    def callback(state):
        dist.append(np.linalg.norm(state.x - xs) / np.linalg.norm(xs))
        return dist[-1] <= 1e-3

    res = ds.bilevel.solve(pb["outer"], pb["inner"], pb["x0"], pb["y0"], "lv-hba",
                           constraint=pb["constraint"], options={"equality": True},
                           maxiter=500, rtol=0.0, atol=0.0, callback=callback)
    assert res.status is ds.Status.STOPPED, (res.message, dist[-1])
    assert abs(float(pb["constraint"](res.x, res.y)[0])) < 1e-8


def test_x_update_is_validated():
    pb = toy_problem(n=3)
    with pytest.raises(ValueError, match=r"options\['x_update'\].*'quasi-newton'"):
        ds.bilevel.solve(pb["outer"], pb["inner"], np.zeros(3), np.zeros(6), "implicit",
                         options={"x_update": "newton"})


def test_a_numpy_bool_from_the_callback_stops_the_run():
    # a comparison of arrays returns numpy.bool_, not True: it must stop the run too
    pb = toy_problem(n=3)
    res = ds.bilevel.solve(pb["outer"], pb["inner"], pb["x0"], pb["y0"], "lv-hba",
                           constraint=pb["constraint"], options={"equality": True},
                           maxiter=50, callback=lambda s: np.float64(s.n_iters) >= 3)
    assert res.status is ds.Status.STOPPED and res.n_iters == 3


def test_lvhba_keeps_y_feasible_with_many_coupled_constraints():
    # the SVM problem's 20 margin constraints share w and b: one Gauss-Newton step per
    # iteration left y 0.4 outside {constraint <= 0} and the run ended INFEASIBLE
    from bench._bilevel_svm import svm_problem

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the problem module's kink warning at its reference
        pb = svm_problem(n_train=20, n_val=20)
    res = ds.bilevel.solve(pb["outer"], pb["inner"], pb["x0"], pb["y0"], "lv-hba",
                           constraint=pb["constraint"], maxiter=50, rtol=0.0, atol=0.0,
                           x_projection=("box", *pb["box"]))
    assert res.status is ds.Status.MAX_ITERATIONS, res.message
    assert float(np.max(pb["constraint"](res.x, res.y))) <= 1e-4


def test_an_early_non_finite_trial_does_not_taint_a_later_search():
    # the NONFINITE report of a stalled run reads the failing search's count only: a NaN
    # met (and backtracked from) by an earlier, successful search must not carry over
    from diffsolve.bilevel._steps import ProjectedQuasiNewton

    qn = ProjectedQuasiNewton(np)
    x, g = np.array([0.0]), np.array([-1.0])  # f(x) = (x - 1)²/2 at 0: f = 0.5, g = -1

    def merit(xt):
        v = float(xt[0])
        return (np.nan if v > 0.5 else 0.5 * (v - 1.0) ** 2), None

    qn.last_step = 4.0  # the first trial goes to x = 8: NaN, then back to 1, 0.5 (taken)
    found = qn.search(x, 0.5, g, -g, merit)
    assert found is not None and qn.nonfinite_trials > 0
    flat = qn.search(found[0], found[1], np.array([0.0]), np.array([1e-300]),
                     lambda xt: (found[1] + 1.0, None))  # nothing decreases: a failure
    assert flat is None and qn.nonfinite_trials == 0


def _bound_and_free():
    # y* = x; Φ(x) = 1000 x₀ + ½(x₁ − 3)²: x₀ ends on its bound −5, pushed against it by a
    # gradient 1000 times larger than x₁'s, and x₁ at 3, inside the box
    def outer(x, y):
        return 1000.0 * y[0] + 0.5 * (y[1] - 3.0) ** 2

    def inner(x, y):
        return 0.5 * anp.sum((y - x) ** 2)

    return outer, inner


@pytest.mark.parametrize("exact", [True, False])
def test_borep_moves_the_free_components_when_others_sit_on_a_bound(exact):
    # with the held component left in the normalised momentum, x₁ moved 1.7 (exact) and 0.03
    # (paper's path) of its 3 units in 100 iterations: the step's length went to x₀,
    # which the projection then undid
    outer, inner = _bound_and_free()
    res = ds.bilevel.solve(outer, inner, np.zeros(2), np.zeros(2), "bo-rep", maxiter=100,
                           rtol=0.0, atol=0.0, x_projection=("box", -5.0, 5.0),
                           options={"exact": exact})
    assert res.x[0] == -5.0
    assert abs(res.x[1] - 3.0) < (1e-3 if exact else 0.5), res.x


def test_borep_exact_step_grows_after_decreases_and_shrinks_after_a_rise():
    # on Φ = ½||x − 3||² from 0 the exact path's η (start 0.1) must grow to cross the
    # distance 5.2 (at 0.1 per step: 52 iterations), then shrink to settle
    def outer(x, y):
        return 0.5 * anp.sum((y - 3.0) ** 2)

    def inner(x, y):
        return 0.5 * anp.sum((y - x) ** 2)

    xs = []
    ds.bilevel.solve(outer, inner, np.zeros(3), np.zeros(3), "bo-rep", maxiter=60, rtol=0.0,
                     atol=0.0, callback=lambda s: xs.append(np.array(s.x)))
    steps = np.linalg.norm(np.diff(np.array(xs), axis=0), axis=1)
    dist = np.linalg.norm(np.array(xs) - 3.0, axis=1)
    assert np.argmax(dist <= 0.1) < 25  # crossed in fewer than 25 steps
    assert steps.max() > 0.5  # the step grew
    assert dist[-1] < 1e-3 and steps[-1] < 1e-2  # and shrank to settle


@pytest.mark.parametrize("option, value", [("grow", 0.5), ("anneal", 1.5), ("beta", 1.0),
                                           ("exact", "yes")])
def test_borep_step_options_are_validated(option, value):
    outer, inner = _bound_and_free()
    with pytest.raises((ValueError, TypeError), match=rf"options\['{option}'\]"):
        ds.bilevel.solve(outer, inner, np.zeros(2), np.zeros(2), "bo-rep",
                         options={option: value})
