"""The SVM bilevel benchmark problem (bench/_bilevel_svm.py): exact lower level, exact
hypergradient and reference optimum, on a 20 + 20-row instance."""

from __future__ import annotations

import warnings

import autograd
import numpy as np
import pytest
import scipy.optimize

from bench import _bilevel_svm as S

N = 20


@pytest.fixture(scope="module")
def pb():
    return S.svm_problem(N, N, seed=0)


@pytest.fixture(scope="module")
def reference():
    pb = S.svm_problem(N, N, seed=0)
    with warnings.catch_warnings():
        # the optimum lies on a kink of Φ; that warning is tested in test_kink_is_reported
        warnings.filterwarnings("ignore", message="svm phi: strict complementarity")
        return pb, S.svm_reference(pb)


def _kkt_residual(pb, c, y, lam):
    """KKT residual of the lower level computed from the problem's own autograd functions,
    independently of the solver's closed forms."""
    g = pb["constraint"](c, y)
    jac = autograd.jacobian(pb["constraint"], 1)(c, y)
    stat = autograd.grad(pb["inner"], 1)(c, y) + jac.T @ lam
    return max(np.max(np.abs(stat)), np.max(np.maximum(g, 0.0)), np.max(np.abs(lam * g)),
               np.max(np.maximum(-lam, 0.0)))


@pytest.mark.parametrize("scale", [0.0, 2.0, 8.0])
def test_lower_level_matches_scipy(pb, scale):
    Ztr, ttr, _, _ = pb["data"]
    c = np.random.default_rng(1).uniform(-scale, scale, N) if scale else np.zeros(N)
    sol = S.lower_level(c, Ztr, ttr)
    assert _kkt_residual(pb, c, sol["y"], sol["lam"]) <= 1e-10
    assert sol["kkt"] <= 1e-10
    fun = lambda y: pb["inner"](c, y)  # noqa: E731
    cons = {"type": "ineq", "fun": lambda y: -pb["constraint"](c, y),
            "jac": lambda y: -autograd.jacobian(pb["constraint"], 1)(c, y)}
    y_start = np.concatenate([np.zeros(Ztr.shape[1] + 1), np.ones(N)])  # feasible: ξ = 1
    grad = autograd.grad(pb["inner"], 1)
    r = scipy.optimize.minimize(fun, y_start, jac=lambda y: grad(c, y),
                                constraints=[cons], method="SLSQP",
                                options={"ftol": 1e-15, "maxiter": 1000})
    assert r.success, r.message
    f_exact = pb["inner"](c, sol["y"])
    assert abs(r.fun - f_exact) <= 1e-8 * max(1.0, abs(f_exact))
    assert r.fun >= f_exact - 1e-12  # nothing feasible is lower than the exact minimum
    np.testing.assert_allclose(r.x, sol["y"], atol=1e-5)


def test_warm_start_gives_the_same_solution(pb):
    Ztr, ttr, _, _ = pb["data"]
    rng = np.random.default_rng(2)
    c1 = rng.uniform(-4, 4, N)
    prev = S.lower_level(c1, Ztr, ttr)
    c2 = c1 + 0.3 * rng.standard_normal(N)
    cold, warm = S.lower_level(c2, Ztr, ttr), S.lower_level(c2, Ztr, ttr, start=prev["active"])
    np.testing.assert_allclose(warm["y"], cold["y"], rtol=1e-12, atol=1e-12)
    assert warm["kkt"] <= 1e-10


def test_start_is_the_lower_level_solution(pb):
    assert np.all(pb["x0"] == 0.0)
    y0 = pb["y0"]
    p = pb["data"][0].shape[1]
    assert y0.shape == (p + 1 + N,)
    assert np.linalg.norm(y0[:p]) > 0.1  # the upper loss divides by ||w||
    assert np.max(pb["constraint"](pb["x0"], y0)) <= 1e-12
    np.testing.assert_allclose(pb["solve_lower"](pb["x0"])["y"], y0, rtol=1e-12, atol=1e-14)
    assert np.isfinite(pb["outer"](pb["x0"], y0))


@pytest.mark.parametrize("seed", [3, 4])
def test_hypergradient_matches_finite_differences(seed):
    pb = S.svm_problem(N, N, seed=0)
    Ztr, ttr, _, _ = pb["data"]
    c = np.random.default_rng(seed).uniform(-3, 3, N)
    sol = pb["solve_lower"](c)
    assert not S.hypergradient(c, sol, Ztr, ttr, pb["outer"],
                               autograd.grad(pb["outer"], 1))[2]["degenerate"]
    value, grad = pb["phi"](c)
    assert value == pytest.approx(pb["outer"](c, sol["y"]), rel=1e-14)
    h = 1e-5
    fd = np.array([(pb["phi"](c + h * e)[0] - pb["phi"](c - h * e)[0]) / (2 * h)
                   for e in np.eye(N)])
    assert np.linalg.norm(grad) > 1e-4  # not a trivially flat point
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-7 * np.linalg.norm(grad))
    assert np.all(grad[~sol["active"]] == 0.0)  # inactive rows: Φ does not see their c
    assert not pb["degenerate"]


def test_reference_is_a_sampled_local_minimum(reference):
    pb, ref = reference
    x = np.asarray(ref["x"])
    lo, hi = pb["box"]
    assert np.all((x >= lo) & (x <= hi))
    assert "no sampled point lower" in ref["message"]
    assert ref["value"] <= ref["first_value"]
    assert ref["value"] == pytest.approx(pb["phi"](x)[0], rel=1e-13)
    # fresh samples (another seed) find nothing lower beyond rounding
    rng = np.random.default_rng(11)
    for rad in (1e-4, 1e-2, 0.1):
        d = rng.standard_normal((50, N))
        d *= rad / np.linalg.norm(d, axis=1, keepdims=True)
        vals = [pb["phi"](np.clip(x + di, lo, hi))[0] for di in d]
        assert min(vals) >= ref["value"] * (1 - 1e-6)
    assert ref["projected_grad"] < 1e-2  # one-sided at the kink it sits on: small, not 0


def test_kink_is_reported(reference):
    ref = reference[1]
    fresh = S.svm_problem(N, N, seed=0)
    with pytest.warns(RuntimeWarning, match="strict complementarity fails"):
        fresh["phi"](np.asarray(ref["x"]))
    assert len(fresh["degenerate"]) == 1


def test_bad_arguments_are_rejected(pb):
    Ztr, ttr, _, _ = pb["data"]
    with pytest.raises(ValueError, match="shape"):
        S.lower_level(np.zeros(N + 1), Ztr, ttr)
    with pytest.raises(ValueError, match="n_train"):
        S.svm_problem(1, 5)
