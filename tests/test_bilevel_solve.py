"""diffsolve.bilevel.solve: each method on bilevel problems with a closed-form solution.

* Quadratic bilevel problem: inner ``g = ½yᵀAy − yᵀBx`` (``y*(x) = Mx``, ``M = A⁻¹B``),
  outer ``f = ½||y − c||² + (ρ/2)||x||²``, so ``x* = (MᵀM + ρI)⁻¹Mᵀc``, ``y* = Mx*``.
* Constrained lower level (LV-HBA's setting): ``y*(x) = argmin {½||y − x||² : y <= b} =
  min(x, b)``, outer ``½||y − c||² + ½||x − d||²``. With c = (2, 0), d = (1, 0.4),
  b = (0.5, 1): coordinate 1 has the constraint active (x* = d₁ = 1, y* = b₁ = 0.5),
  coordinate 2 inactive (x* = y* = (c₂ + d₂)/2 = 0.2).
"""

from __future__ import annotations

import warnings

import autograd.numpy as anp
import numpy as np
import pytest

import diffsolve as ds
from diffsolve._result import ConvergenceWarning
from diffsolve.bilevel import BilevelHistory, BilevelResult, BilevelState, solve


@pytest.fixture
def quadratic():
    rng = np.random.default_rng(0)
    n, m = 3, 4
    Q = rng.standard_normal((m, m))
    A = Q @ Q.T / m + np.eye(m)
    B = rng.standard_normal((m, n))
    c = rng.standard_normal(m)
    rho = 0.5

    def inner(x, y):
        return 0.5 * y @ A @ y - y @ (B @ x)

    def outer(x, y):
        return 0.5 * anp.sum((y - c) ** 2) + 0.5 * rho * anp.sum(x ** 2)

    M = np.linalg.solve(A, B)
    x_star = np.linalg.solve(M.T @ M + rho * np.eye(n), M.T @ c)
    return {"inner": inner, "outer": outer, "x0": np.zeros(n), "y0": np.zeros(m),
            "x_star": x_star, "y_star": M @ x_star}


C2, D2, B2 = np.array([2.0, 0.0]), np.array([1.0, 0.4]), np.array([0.5, 1.0])
X_TOY, Y_TOY = np.array([1.0, 0.2]), np.array([0.5, 0.2])


def toy_outer(x, y):
    return 0.5 * anp.sum((y - C2) ** 2) + 0.5 * anp.sum((x - D2) ** 2)


def toy_inner(x, y):
    return 0.5 * anp.sum((y - x) ** 2)


def toy_constraint(x, y):
    return y - B2


def _run(q, method, **kw):
    return solve(q["outer"], q["inner"], q["x0"], q["y0"], method, **kw)


@pytest.mark.parametrize("method, max_iter, atol", [
    ("implicit", 500, 1e-4),
    ("penalty", 2000, 1e-4),  # the penalised solution is O(1/λ) = O(1e-4) away
    ("bo-rep", 1500, 1e-4),
])
def test_methods_converge_to_the_closed_form(quadratic, method, max_iter, atol):
    res = _run(quadratic, method, max_iter=max_iter, tol=1e-5)
    assert isinstance(res, BilevelResult) and res.converged and res.method == method
    assert res.n_iters < max_iter
    np.testing.assert_allclose(res.x, quadratic["x_star"], atol=atol)
    np.testing.assert_allclose(res.y, quadratic["y_star"], atol=atol)
    h = res.history
    assert isinstance(h, BilevelHistory)
    assert h.outer.shape == h.grad_norm.shape == h.time.shape == (res.n_iters,)
    assert np.all(np.diff(h.time) >= 0)
    assert h.grad_norm[-1] < 1e-3 * h.grad_norm.max()


def test_lvhba_reaches_the_solution_of_the_constrained_toy():
    dist = []
    with pytest.warns(ConvergenceWarning, match="lv-hba.*did not converge"):
        res = solve(toy_outer, toy_inner, np.zeros(2), np.zeros(2), "lv-hba",
                    constraint=toy_constraint, y_projection=("box", -np.inf, B2),
                    max_iter=3000, step=0.02, inner_step=0.5, options={"c": 1.0, "rho": 0.0},
                    callback=lambda s: dist.append(np.linalg.norm(s.x - X_TOY)))
    assert not res.converged and res.n_iters == 3000
    assert np.linalg.norm(res.x - X_TOY) < 0.02 and np.linalg.norm(res.y - Y_TOY) < 0.02
    assert dist[100] < 0.5 * dist[0] and dist[-1] < 0.1 * dist[100]
    assert np.all(res.y <= B2 + 1e-12)


def test_lvhba_without_a_projection_uses_the_feasibility_penalty():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = solve(toy_outer, toy_inner, np.zeros(2), np.zeros(2), "lv-hba",
                    constraint=toy_constraint, max_iter=2000, step=0.02, inner_step=0.5,
                    options={"c": 1.0})
    assert np.linalg.norm(res.x - X_TOY) < 0.05 and np.all(res.y <= B2 + 0.02)


def test_penalty_with_a_projected_lower_level_solves_the_constrained_toy():
    res = solve(toy_outer, toy_inner, np.zeros(2), np.zeros(2), "penalty",
                y_projection=("box", -np.inf, B2), max_iter=3000, tol=1e-5)
    assert res.converged
    np.testing.assert_allclose(res.x, X_TOY, atol=1e-3)
    np.testing.assert_allclose(res.y, Y_TOY, atol=1e-3)



def _scalar_problem():
    # y*(x) = x, Φ(x) = ½(x − 1)² + ½x², x* = 0.5
    def inner(x, y):
        return 0.5 * anp.sum((y - x) ** 2)

    def outer(x, y):
        return 0.5 * anp.sum((y - 1.0) ** 2) + 0.5 * anp.sum(x ** 2)

    return outer, inner


@pytest.mark.parametrize("method", ["implicit", "penalty", "bo-rep"])
def test_x_projection_is_respected(method):
    outer, inner = _scalar_problem()
    res = solve(outer, inner, np.array([0.1]), np.zeros(1), method,
                x_projection=("box", 0.0, 0.3), max_iter=2000, tol=1e-5)
    assert res.converged
    np.testing.assert_allclose(res.x, [0.3], atol=1e-4)  # Φ convex: the clip of x* = 0.5


def test_simplex_and_ball_projections_are_respected(quadratic):
    res = _run(quadratic, "implicit", x_projection="simplex", max_iter=500, tol=1e-6)
    assert res.converged and np.all(res.x >= 0) and abs(res.x.sum() - 1) < 1e-12
    res = _run(quadratic, "bo-rep", x_projection=("ball", 0.1), max_iter=500, tol=1e-5)
    assert np.linalg.norm(res.x) <= 0.1 + 1e-12
    with pytest.warns(ConvergenceWarning, match="λ must reach"):
        res = _run(quadratic, "penalty", y_projection="nonnegative", max_iter=100)
    assert np.all(res.y >= 0)


@pytest.mark.parametrize("method", ["implicit", "penalty", "lv-hba", "bo-rep"])
def test_runs_are_reproducible(quadratic, method):
    kw = {"max_iter": 30, "tol": 1e-12}
    if method == "lv-hba":
        kw["constraint"] = lambda x, y: anp.sum(y ** 2) - 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a, b = _run(quadratic, method, **kw), _run(quadratic, method, **kw)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.history.outer, b.history.outer)


def test_non_convergence_warns_with_advice(quadratic):
    with pytest.warns(ConvergenceWarning, match="did not converge in 3 iterations.*max_iter"):
        res = _run(quadratic, "implicit", max_iter=3)
    assert not res.converged and res.n_iters == 3 and "max_iter" in res.message


def test_empty_constraint_set_is_reported():
    with pytest.warns(ConvergenceWarning, match="violated.*empty"):
        res = solve(toy_outer, toy_inner, np.zeros(2), np.zeros(2), "lv-hba",
                    constraint=lambda x, y: anp.concatenate([y + 1.0, 1.0 - y]),  # y<=-1, y>=1
                    max_iter=200)
    assert not res.converged


def test_callback_state_and_early_stop(quadratic):
    seen = []

    def callback(state):
        assert isinstance(state, BilevelState) and state.method == "penalty"
        seen.append(state.iteration)
        return state.iteration == 5

    res = _run(quadratic, "penalty", callback=callback, max_iter=100)
    assert seen == [1, 2, 3, 4, 5] and res.n_iters == 5 and not res.converged
    assert "callback" in res.message


def test_progress_bar_runs(quadratic, capsys):
    res = _run(quadratic, "implicit", max_iter=500, tol=1e-5, progress=True)
    assert res.converged
    assert "bilevel implicit" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "newton"}, "method='newton' is not known"),
    ({"step": 0.0}, "step must be a finite number > 0"),
    ({"step": -1.0}, "step must be a finite number > 0"),
    ({"inner_step": 0.0}, "inner_step must be a finite number > 0"),
    ({"tol": 0.0}, "tol must be"),
    ({"max_iter": 0}, "max_iter must be a positive integer"),
    ({"inner_iters": 1.5}, "inner_iters must be a positive integer"),
    ({"method": "penalty", "options": {"lam_step": 0.0}}, r"options\['lam_step'\] must be"),
    ({"method": "penalty", "options": {"lam0": 10.0, "lam_max": 1.0}}, "lam_max=1.0 < lam0"),
    ({"options": {"bogus": 1}}, "options.*bogus.*not known for method='implicit'"),
    ({"method": "bo-rep", "options": {"beta": 1.0}}, r"options\['beta'\] must be in \[0, 1\)"),
    ({"x_projection": ("box", 1.0, 0.0)}, "x_projection cannot be applied.*empty"),
    ({"y_projection": ("ball", -1.0)}, "y_projection cannot be applied.*radius"),
    ({"x_projection": ("cube", 1.0)}, None),
    ({"x_projection": lambda v: v[:1]}, "x_projection returned shape"),
    ({"constraint": lambda x, y: y}, "constraint= is only used by method='lv-hba'"),
    ({"method": "lv-hba"}, "method='lv-hba' needs constraint="),
    ({"method": "lv-hba", "constraint": lambda x, y: anp.outer(y, y)}, "1-D array"),
])
def test_bad_input_is_refused(quadratic, kwargs, match):
    kwargs = {"method": "implicit", **kwargs}
    method = kwargs.pop("method")
    err = TypeError if match is None else ValueError
    with pytest.raises(err, match=match or "x_projection must be a callable"):
        _run(quadratic, method, **kwargs)


def test_bad_arrays_and_functions_are_refused(quadratic):
    q = quadratic
    with pytest.raises(TypeError, match="x0 must be an array"):
        solve(q["outer"], q["inner"], [0.0, 0.0, 0.0], q["y0"])
    with pytest.raises(TypeError, match="y0 has dtype"):
        solve(q["outer"], q["inner"], q["x0"], np.zeros(4, dtype=np.int64))
    with pytest.raises(TypeError, match="inner must be a callable"):
        solve(q["outer"], 3.0, q["x0"], q["y0"])
    with pytest.raises(ValueError, match=r"\(x0, y0\) failed.*y0 of shape \(5,\)"):
        solve(q["outer"], q["inner"], q["x0"], np.zeros(5))
    with pytest.raises(ValueError, match="outer.*must return a scalar"):
        solve(lambda x, y: y, q["inner"], q["x0"], q["y0"])


def test_public_api():
    assert ds.bilevel.solve is solve
    assert {"solve", "BilevelResult"} <= set(ds.bilevel.__all__)


@pytest.fixture
def sampled():
    """inner = mean over samples i of ½(zᵢᵀy − wᵢᵀx)² + (μ/2)||y||²: y*(x) = Mx."""
    rng = np.random.default_rng(1)
    N, m, n, mu, rho = 200, 4, 3, 0.5, 0.5
    Z, W, c = rng.standard_normal((N, m)), rng.standard_normal((N, n)), rng.standard_normal(m)

    def inner(x, y, idx):
        return 0.5 * anp.mean((Z[idx] @ y - W[idx] @ x) ** 2) + 0.5 * mu * anp.sum(y ** 2)

    def outer(x, y, idx):
        return 0.5 * anp.sum((y - c) ** 2) + 0.5 * rho * anp.sum(x ** 2)

    M = np.linalg.solve(Z.T @ Z / N + mu * np.eye(m), Z.T @ W / N)
    x_star = np.linalg.solve(M.T @ M + rho * np.eye(n), M.T @ c)
    return {"inner": inner, "outer": outer, "x0": np.zeros(n), "y0": np.zeros(m), "N": N,
            "x_star": x_star}


def test_full_batch_is_the_deterministic_method(sampled):
    s = sampled
    res = solve(s["outer"], s["inner"], s["x0"], s["y0"], "bo-rep", batch=(s["N"], s["N"]),
                max_iter=1000)
    assert res.converged
    np.testing.assert_allclose(res.x, s["x_star"], atol=1e-5)


def test_mini_batches_are_seeded_and_land_near_the_solution(sampled):
    s = sampled

    def run(seed):
        with pytest.warns(ConvergenceWarning):  # a noise ball: no tolerance is reached
            return solve(s["outer"], s["inner"], s["x0"], s["y0"], "bo-rep", batch=(s["N"], 50),
                         seed=seed, max_iter=200, inner_step=0.1,
                         options={"anneal": 1.0, "eta_power": 0.5})

    a, b, c = run(3), run(3), run(4)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.history.outer, b.history.outer)
    assert not np.array_equal(a.x, c.x)
    for r in (a, c):  # |x*| = 0.74; 200 steps of length 0.1/√k leave noise of ~0.1
        assert np.linalg.norm(r.x - s["x_star"]) < 0.15


def test_bad_batches_are_refused(sampled):
    s = sampled
    for batch, match in (((200, 0), "batch must be"), ((10, 50), "batch must be"),
                         ([200, 50], "batch must be")):
        with pytest.raises(ValueError, match=match):
            solve(s["outer"], s["inner"], s["x0"], s["y0"], "bo-rep", batch=batch)
    with pytest.raises(ValueError, match="available for method='bo-rep' only"):
        solve(s["outer"], s["inner"], s["x0"], s["y0"], "penalty", batch=(200, 50))
    with pytest.raises(ValueError, match="seed must be"):
        solve(s["outer"], s["inner"], s["x0"], s["y0"], "bo-rep", batch=(200, 50), seed=-1)
