"""diffsolve.bilevel.solve: each method on bilevel problems with a closed-form solution.

* Quadratic bilevel problem: inner ``g = ½yᵀAy − yᵀBx`` (``y*(x) = Mx``, ``M = A⁻¹B``),
  outer ``f = ½||y − c||² + (ρ/2)||x||²``, so ``x* = (MᵀM + ρI)⁻¹Mᵀc``, ``y* = Mx*``.
* Constrained lower level (LV-HBA's setting): ``y*(x) = argmin {½||y − x||² : y <= b} =
  min(x, b)``, outer ``½||y − c||² + ½||x − d||²``. With c = (2, 0), d = (1, 0.4),
  b = (0.5, 1): coordinate 1 has the constraint active (x* = d₁ = 1, y* = b₁ = 0.5),
  coordinate 2 inactive (x* = y* = (c₂ + d₂)/2 = 0.2).
* Sampled quadratic problem (mini-batches): inner = mean over samples of
  ``½(zᵢᵀy − wᵢᵀx)² + (μ/2)||y||²``.

The namespace tests run every method with hand-written derivatives on the ``xp`` fixture
(NumPy, array_api_strict, CuPy on a GPU), and the torch / JAX objectives with their own
autodiff.
"""

from __future__ import annotations

import warnings

import autograd.numpy as anp
import numpy as np
import pytest

import diffsolve as ds
from diffsolve._result import ConvergenceWarning
from diffsolve.bilevel import BilevelHistory, BilevelResult, BilevelState, solve
from tests.helpers import to_numpy

N_X, N_Y, RHO = 3, 4, 0.5


def _quadratic_data():
    rng = np.random.default_rng(0)
    Q = rng.standard_normal((N_Y, N_Y))
    A = Q @ Q.T / N_Y + np.eye(N_Y)
    B = rng.standard_normal((N_Y, N_X))
    c = rng.standard_normal(N_Y)
    M = np.linalg.solve(A, B)
    x_star = np.linalg.solve(M.T @ M + RHO * np.eye(N_X), M.T @ c)
    return A, B, c, x_star, M @ x_star


@pytest.fixture
def quadratic():
    A, B, c, x_star, y_star = _quadratic_data()

    def inner(x, y):
        return 0.5 * y @ A @ y - y @ (B @ x)

    def outer(x, y):
        return 0.5 * anp.sum((y - c) ** 2) + 0.5 * RHO * anp.sum(x ** 2)

    return {"inner": inner, "outer": outer, "x0": np.zeros(N_X), "y0": np.zeros(N_Y),
            "x_star": x_star, "y_star": y_star}


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


# fast settings per method (a larger x step for implicit, a faster λ for penalty)
FAST = {
    "implicit": {"maxiter": 200, "stepsize": 0.5},
    "penalty": {"maxiter": 300, "stepsize": 0.5, "options": {"lam_step": 100.0}},
    "bo-rep": {"maxiter": 1500},
}


@pytest.mark.parametrize("method", ["implicit", "penalty", "bo-rep"])
def test_methods_converge_to_the_closed_form(quadratic, method):
    res = _run(quadratic, method, atol=1e-5, **FAST[method])
    assert isinstance(res, BilevelResult) and res.converged and res.method == method
    # penalty: the penalised solution is O(1/λ) = O(1e-4) away
    np.testing.assert_allclose(res.x, quadratic["x_star"], atol=1e-4)
    np.testing.assert_allclose(res.y, quadratic["y_star"], atol=1e-4)
    h = res.history
    assert isinstance(h, BilevelHistory)
    assert h.outer.shape == h.grad_norm.shape == h.time.shape == (res.n_iters,)
    assert np.all(np.diff(h.time) >= 0)
    assert h.grad_norm[-1] < 1e-3 * h.grad_norm.max()


def _toy_distance(state):
    return float(np.hypot(np.linalg.norm(state.x - X_TOY), np.linalg.norm(state.y - Y_TOY)))


@pytest.mark.parametrize("projected", [True, False])
def test_lvhba_reaches_the_solution_of_the_constrained_toy(projected):
    # defaults: step = inner_step = 1/L̂, c_k = 3 (k + 1)^0.49. The iterate sits O(1/c_k)
    # from the solution (the penalised problem's bias), so atol=1e-6 is not reached: the
    # distance falls like a power of k (measured: 2e-3 after 600 iterations)
    dist = []
    kw = {"y_projection": ("box", -np.inf, B2)} if projected else {}
    with pytest.warns(ConvergenceWarning, match="lv-hba.*did not converge.*sublinearly"):
        res = solve(toy_outer, toy_inner, np.zeros(2), np.zeros(2), "lv-hba",
                    constraint=toy_constraint, maxiter=600,
                    callback=lambda s: dist.append(_toy_distance(s)), **kw)
    assert not res.converged and res.n_iters == 600
    assert dist[-1] < 5e-3 and dist[99] < 0.1 * dist[0]
    # the feasibility step (no projection given) keeps y feasible as the projection does
    assert np.all(res.y <= B2 + 1e-12)


def test_lvhba_feasibility_penalty_option():
    # the older alternative to the feasibility step: a penalty (ρ/2)||max(c, 0)||² in the
    # (x, y) step, which needs a step ~1/ρ and is far slower (measured 0.19 after 1 000)
    # iterations, 0.45 after 500)
    dist = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = solve(toy_outer, toy_inner, np.zeros(2), np.zeros(2), "lv-hba",
                    constraint=toy_constraint, maxiter=500, stepsize=0.02, inner_stepsize=0.5,
                    options={"c": 1.0, "rho": 100.0},
                    callback=lambda s: dist.append(_toy_distance(s)))
    assert dist[-1] < 0.6 < 1.0 < dist[0] and np.all(res.y <= B2 + 0.03)


def test_penalty_with_a_projected_lower_level_solves_the_constrained_toy():
    res = solve(toy_outer, toy_inner, np.zeros(2), np.zeros(2), "penalty",
                y_projection=("box", -np.inf, B2), maxiter=300, atol=1e-5, stepsize=0.5,
                options={"lam_step": 100.0})
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
                x_projection=("box", 0.0, 0.3), atol=1e-5, **FAST[method])
    assert res.converged
    np.testing.assert_allclose(res.x, [0.3], atol=1e-4)  # Φ convex: the clip of x* = 0.5


def test_simplex_and_ball_projections_are_respected(quadratic):
    res = _run(quadratic, "implicit", x_projection="simplex", maxiter=200, stepsize=0.5,
               atol=1e-6)
    assert res.converged and np.all(res.x >= 0) and abs(res.x.sum() - 1) < 1e-12
    res = _run(quadratic, "bo-rep", x_projection=("ball", 0.1), maxiter=300, atol=1e-5)
    assert np.linalg.norm(res.x) <= 0.1 + 1e-12
    with pytest.warns(ConvergenceWarning, match="λ must reach"):
        res = _run(quadratic, "penalty", y_projection="nonnegative", maxiter=20)
    assert np.all(res.y >= 0)


@pytest.mark.parametrize("method", ["implicit", "penalty", "lv-hba", "bo-rep"])
def test_runs_are_reproducible(quadratic, method):
    kw = {"maxiter": 10, "atol": 1e-12}
    if method == "lv-hba":
        kw["constraint"] = lambda x, y: anp.sum(y ** 2) - 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a, b = _run(quadratic, method, **kw), _run(quadratic, method, **kw)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.history.outer, b.history.outer)


def test_non_convergence_warns_with_advice(quadratic):
    with pytest.warns(ConvergenceWarning, match="did not converge in 3 iterations.*maxiter"):
        res = _run(quadratic, "implicit", maxiter=3)
    assert not res.converged and res.n_iters == 3 and "maxiter" in res.message


def test_non_finite_iterates_are_reported(quadratic):
    with pytest.warns(ConvergenceWarning, match="diverged.*reduce stepsize"):
        res = _run(quadratic, "implicit", maxiter=500, stepsize=1e3)
    assert not res.converged


def test_empty_constraint_set_is_reported():
    with pytest.warns(ConvergenceWarning, match="violated.*empty"):
        res = solve(toy_outer, toy_inner, np.zeros(2), np.zeros(2), "lv-hba",
                    constraint=lambda x, y: anp.concatenate([y + 1.0, 1.0 - y]),  # y<=-1, y>=1
                    maxiter=100)
    assert not res.converged


def test_callback_state_and_early_stop(quadratic):
    seen = []

    def callback(state):
        assert isinstance(state, BilevelState) and state.method == "penalty"
        assert np.isfinite(state.outer_value) and state.grad_norm >= 0
        seen.append(state.iteration)
        return state.iteration == 5

    res = _run(quadratic, "penalty", callback=callback, maxiter=100)
    assert seen == [1, 2, 3, 4, 5] and res.n_iters == 5 and not res.converged
    assert "callback" in res.message


def test_progress_bar_runs(quadratic, capsys):
    res = _run(quadratic, "implicit", atol=1e-5, progress=True, **FAST["implicit"])
    assert res.converged
    err = capsys.readouterr().err
    assert "bilevel implicit" in err and "grad=" in err


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "newton"}, "method must be one of 'implicit', 'penalty', 'lv-hba', 'bo-rep'"),
    ({"stepsize": 0.0}, "stepsize must be > 0"),
    ({"stepsize": -1.0}, "stepsize must be > 0"),
    ({"inner_stepsize": 0.0}, "inner_stepsize must be > 0"),
    ({"atol": -1e-6}, "atol must be >= 0"),
    ({"rtol": float("inf")}, "rtol must be finite"),
    ({"maxiter": 0}, "maxiter must be >= 1"),
    ({"maxiter": True}, "maxiter must be an integer >= 1, got the bool True"),
    ({"inner_iters": 1.5}, "inner_iters must be an integer >= 1"),
    ({"throw": "yes"}, "throw must be True or False"),
    ({"callback": 3}, "callback must be None or a callable"),
    ({"method": "penalty", "options": {"lam_step": 0.0}}, r"options\['lam_step'\] must be"),
    ({"method": "penalty", "options": {"lam0": 10.0, "lam_max": 1.0}}, "lam_max=1.0 < lam0"),
    ({"options": {"bogus": 1}}, "options.*bogus.*not known for method='implicit'"),
    ({"options": {"step_power": -0.5}}, r"options\['step_power'\] must be"),
    ({"method": "bo-rep", "options": {"beta": 1.0}}, r"options\['beta'\] must be in \[0, 1\)"),
    ({"x_projection": ("box", 1.0, 0.0)}, "x_projection cannot be applied.*empty"),
    ({"y_projection": ("ball", -1.0)}, "y_projection cannot be applied.*radius"),
    ({"x_projection": ("cube", 1.0)}, None),
    ({"x_projection": lambda v: v[:1]}, "x_projection returned shape"),
    ({"constraint": lambda x, y: y}, "constraint= is only used by method='lv-hba'"),
    ({"method": "lv-hba"}, "method='lv-hba' needs constraint="),
    ({"method": "lv-hba", "constraint": lambda x, y: anp.outer(y, y)}, "1-D array"),
    ({"outer_grad": lambda x, y: (x, y[:2])}, r"outer_grad\(\.\.\.\)\[1\] returned \(2,\)"),
    ({"inner_grad": lambda x, y: x}, "inner_grad must return a pair"),
])
def test_bad_input_is_refused(quadratic, kwargs, match):
    kwargs = {"method": "implicit", **kwargs}
    method = kwargs.pop("method")
    typed = ("must return a pair", "an integer", "True or False", "None or a callable")
    err = TypeError if match is None or any(t in match for t in typed) else ValueError
    with pytest.raises(err, match=match or "x_projection must be a callable"):
        _run(quadratic, method, **kwargs)


def test_bad_arrays_and_functions_are_refused(quadratic):
    q = quadratic
    with pytest.raises(TypeError, match="x0 must be an array"):
        solve(q["outer"], q["inner"], [0.0, 0.0, 0.0], q["y0"])
    for bad in (np.zeros(4, dtype=np.float16), np.zeros(4, dtype=complex)):
        with pytest.raises(TypeError, match="bilevel.solve: y0 has dtype"):
            solve(q["outer"], q["inner"], q["x0"], bad)
    with pytest.raises(ValueError, match="y0 contains NaN or inf"):
        solve(q["outer"], q["inner"], q["x0"], np.array([0.0, np.nan, 0.0, 0.0]))
    with pytest.raises(ValueError, match="x0 has shape .0,. with no entries"):
        solve(q["outer"], q["inner"], np.zeros(0), q["y0"])
    with pytest.raises(TypeError, match="x0 must be an array, got None"):
        solve(q["outer"], q["inner"], None, q["y0"])
    # integers are promoted to float64, read-only and non-contiguous arrays work, untouched
    x0 = np.zeros((N_X, 2))[:, 0]
    y0 = np.zeros(N_Y, dtype=np.int64)
    y0.setflags(write=False)
    res = solve(q["outer"], q["inner"], x0, y0, **FAST["implicit"])
    assert res.converged and res.y.dtype == np.float64 and not np.any(y0)
    with pytest.raises(TypeError, match="inner must be a callable"):
        solve(q["outer"], 3.0, q["x0"], q["y0"])
    with pytest.raises(TypeError, match="inner_hvp must be a callable"):
        solve(q["outer"], q["inner"], q["x0"], q["y0"], inner_hvp=3)
    with pytest.raises(ValueError, match=r"\(x0, y0\) failed.*y0 of shape \(5,\)"):
        solve(q["outer"], q["inner"], q["x0"], np.zeros(5))
    with pytest.raises(ValueError, match="outer.*must return a scalar"):
        solve(lambda x, y: y, q["inner"], q["x0"], q["y0"])


# ---------------------------------------------------------------------------------------
# the solver contract: names, status, throw, fixed budgets, untraceable objectives
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("old", "new", "value"), [
    ("max_iter", "maxiter", 200), ("tol", "atol", 1e-5), ("step", "stepsize", 0.5),
    ("inner_step", "inner_stepsize", 0.5)])
def test_old_option_names_still_work_with_a_deprecation_warning(quadratic, old, new, value):
    kw = {"maxiter": 200, "stepsize": 0.5, "atol": 1e-5}
    kw.pop(new, None)
    with pytest.warns(DeprecationWarning, match=f"{old}= is deprecated.*use {new}="):
        a = _run(quadratic, "implicit", **{old: value}, **kw)
    b = _run(quadratic, "implicit", **{new: value}, **kw)
    np.testing.assert_array_equal(a.x, b.x)
    with pytest.raises(TypeError, match=f"got both {old}= .deprecated. and {new}="), \
            pytest.warns(DeprecationWarning):
        _run(quadratic, "implicit", **{old: value, new: value})
    with pytest.raises(TypeError, match="unexpected keyword argument.*max_iters"):
        _run(quadratic, "implicit", max_iters=3)


def test_result_status_and_message(quadratic):
    res = _run(quadratic, "implicit", atol=1e-5, **FAST["implicit"])
    assert res.status is ds.Status.SUCCESS and res.converged and "converged" in res.message
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        res = _run(quadratic, "implicit", maxiter=3)
    assert res.status is ds.Status.MAX_ITERATIONS and not res.converged


@pytest.mark.parametrize("method", ["implicit", "penalty", "bo-rep"])
def test_rtol_atol_zero_runs_exactly_maxiter(quadratic, method):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fixed budget is what was asked: no warning
        res = _run(quadratic, method, maxiter=7, rtol=0.0, atol=0.0)
    assert res.n_iters == 7 and res.status is ds.Status.MAX_ITERATIONS and not res.converged
    assert res.history.outer.shape == (7,)


def test_rtol_is_relative_to_the_first_iteration(quadratic):
    a = _run(quadratic, "implicit", maxiter=500, stepsize=0.5, atol=0.0, rtol=1e-3)
    b = _run(quadratic, "implicit", maxiter=500, stepsize=0.5, atol=0.0, rtol=1e-8)
    assert a.converged and b.converged and a.n_iters < b.n_iters
    assert a.history.grad_norm[-1] <= 1e-3 * a.history.grad_norm[0]


def test_throw_raises_the_status_error(quadratic):
    with pytest.raises(ds.MaxIterationsError, match="did not converge in 3") as err:
        _run(quadratic, "implicit", maxiter=3, throw=True)
    assert isinstance(err.value.result, BilevelResult) and err.value.result.n_iters == 3
    with pytest.raises(ds.DivergedError, match="diverged.*reduce stepsize"):
        _run(quadratic, "implicit", maxiter=500, stepsize=1e3, throw=True)
    with pytest.raises(ds.InfeasibleError, match="violated.*empty"):
        solve(toy_outer, toy_inner, np.zeros(2), np.zeros(2), "lv-hba",
              constraint=lambda x, y: anp.concatenate([y + 1.0, 1.0 - y]), maxiter=50,
              throw=True)


def test_divergence_is_a_status_without_numpys_overflow_warnings(quadratic):
    """Old main silenced NumPy's RuntimeWarnings around every iteration; now a diverging
    run stops (DIVERGED) before it overflows, and nothing is silenced."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = _run(quadratic, "implicit", maxiter=500, stepsize=1e3)
    assert res.status is ds.Status.DIVERGED and not res.converged
    assert res.n_iters < 50 and np.all(np.isfinite(res.x))
    assert [w.category for w in caught] == [ConvergenceWarning]


def test_callback_stop_is_a_status(quadratic):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = _run(quadratic, "bo-rep", callback=lambda s: s.n_iters == 4, maxiter=100)
    assert res.status is ds.Status.STOPPED and res.n_iters == 4 and not res.converged


def test_plain_numpy_objectives_are_refused(quadratic):
    """Old main: ∇ₓ of an inner written with np.array([...]) was silently 0, so the
    implicit method stood still at x0 (or converged to a wrong point)."""
    inner = lambda x, y: 0.5 * np.sum((y - np.array([x[0]])) ** 2)  # noqa: E731
    outer = lambda x, y: 0.5 * anp.sum((y - 1.0) ** 2) + 0.5 * anp.sum(x ** 2)  # noqa: E731
    for method in ("implicit", "bo-rep"):
        with pytest.raises(ds.NotTraceableError, match=r"bilevel.solve: autograd cannot "
                                                       r"trace.*inner objective.*inner_hvp="):
            solve(outer, inner, np.zeros(1), np.zeros(1), method, maxiter=5)
    # a constraint written with plain NumPy: lv-hba's constraint VJP
    c = lambda x, y: np.array([y[0] - 0.5 * x[0]])  # noqa: E731
    with pytest.raises(ds.NotTraceableError, match="lower-level constraint"):
        solve(toy_outer, toy_inner, np.zeros(2), np.zeros(2), "lv-hba", constraint=c,
              maxiter=5)


def test_settings_are_exposed():
    from diffsolve.bilevel import BilevelSettings

    assert BilevelSettings.__dataclass_params__.frozen


def test_public_api():
    assert ds.bilevel.solve is solve
    assert {"solve", "BilevelResult"} <= set(ds.bilevel.__all__)


# ---------------------------------------------------------------------------------------
# any namespace: hand-written derivatives (NumPy, array_api_strict, CuPy); torch and JAX
# ---------------------------------------------------------------------------------------
def _quadratic_in(xp):
    A_, B_, c_, x_star, y_star = _quadratic_data()
    A, B, c = (xp.asarray(a) for a in (A_, B_, c_))

    def inner(x, y):
        return 0.5 * xp.vecdot(y, A @ y) - xp.vecdot(y, B @ x)

    def outer(x, y):
        return 0.5 * xp.sum((y - c) ** 2) + 0.5 * RHO * xp.sum(x ** 2)

    derivatives = {
        "outer_grad": lambda x, y: (RHO * x, y - c),
        "inner_grad": lambda x, y: (-(B.T @ y), A @ y - B @ x),
        "inner_hvp": lambda x, y, v: (-(B.T @ v), A @ v),
    }
    return inner, outer, derivatives, x_star, y_star


NAMESPACE_RUNS = {
    "implicit": {"maxiter": 100, "stepsize": 0.5, "atol": 1e-5},
    "penalty": {"maxiter": 200, "stepsize": 0.5, "atol": 1e-5, "options": {"lam_step": 100.0}},
    "bo-rep": {"maxiter": 600, "atol": 1e-5},
}


@pytest.mark.parametrize("method", ["implicit", "penalty", "bo-rep"])
def test_user_derivatives_in_any_namespace(xp, method):
    inner, outer, derivatives, x_star, y_star = _quadratic_in(xp)
    x0, y0 = xp.zeros(N_X, dtype=xp.float64), xp.zeros(N_Y, dtype=xp.float64)
    res = solve(outer, inner, x0, y0, method, **derivatives, **NAMESPACE_RUNS[method])
    assert res.converged
    assert type(res.x) is type(x0) and res.x.dtype == xp.float64
    np.testing.assert_allclose(to_numpy(res.x), x_star, atol=1e-4)
    np.testing.assert_allclose(to_numpy(res.y), y_star, atol=1e-4)


def test_lvhba_user_derivatives_in_any_namespace(xp):
    b = xp.asarray(B2)

    def constraint(x, y):
        return y - b

    derivatives = {
        "outer_grad": lambda x, y: (x - xp.asarray(D2), y - xp.asarray(C2)),
        "inner_grad": lambda x, y: (x - y, y - x),
        "constraint_vjp": lambda x, y, lam: (xp.zeros_like(x), lam),
    }

    def outer(x, y):
        return 0.5 * xp.sum((y - xp.asarray(C2)) ** 2) + 0.5 * xp.sum((x - xp.asarray(D2)) ** 2)

    def inner(x, y):
        return 0.5 * xp.sum((y - x) ** 2)

    z = xp.zeros(2, dtype=xp.float64)
    with pytest.warns(ConvergenceWarning, match="sublinearly"):
        res = solve(outer, inner, z, z, "lv-hba", constraint=constraint, maxiter=300,
                    **derivatives)
    assert type(res.x) is type(z)
    np.testing.assert_allclose(to_numpy(res.x), X_TOY, atol=1e-2)
    assert np.all(to_numpy(res.y) <= B2 + 1e-12)


def test_missing_derivatives_without_autodiff_are_named():
    xps = pytest.importorskip("array_api_strict")
    inner, outer, derivatives, _, _ = _quadratic_in(xps)
    z3, z4 = xps.zeros(N_X, dtype=xps.float64), xps.zeros(N_Y, dtype=xps.float64)
    with pytest.raises(TypeError, match="array_api_strict arrays.*inner_hvp"):
        solve(outer, inner, z3, z4, "implicit", outer_grad=derivatives["outer_grad"],
              inner_grad=derivatives["inner_grad"])
    with pytest.raises(TypeError, match="method='penalty' needs.*outer_grad"):
        solve(outer, inner, z3, z4, "penalty", inner_grad=derivatives["inner_grad"])
    # the step estimate falls back on central differences of inner_grad
    res = solve(outer, inner, z3, z4, "penalty", maxiter=200, stepsize=0.5, atol=1e-5,
                options={"lam_step": 100.0}, outer_grad=derivatives["outer_grad"],
                inner_grad=derivatives["inner_grad"])
    assert res.converged


def test_float32_keeps_dtype(quadratic):
    q = quadratic
    res = solve(q["outer"], q["inner"], q["x0"].astype(np.float32),
                q["y0"].astype(np.float32), "bo-rep", maxiter=300, atol=1e-3)
    assert res.x.dtype == np.float32 and res.y.dtype == np.float32
    np.testing.assert_allclose(res.x, q["x_star"], atol=1e-2)


def test_torch_objectives_use_torch_autograd():
    torch = pytest.importorskip("torch")
    A_, B_, c_, x_star, _ = _quadratic_data()
    A, B, c = (torch.tensor(a) for a in (A_, B_, c_))

    def inner(x, y):
        return 0.5 * y @ A @ y - y @ (B @ x)

    def outer(x, y):
        return 0.5 * torch.sum((y - c) ** 2) + 0.5 * RHO * torch.sum(x ** 2)

    z3, z4 = torch.zeros(N_X, dtype=torch.float64), torch.zeros(N_Y, dtype=torch.float64)
    res = solve(outer, inner, z3, z4, "implicit", **NAMESPACE_RUNS["implicit"])
    assert res.converged and isinstance(res.x, torch.Tensor)
    np.testing.assert_allclose(res.x.numpy(), x_star, atol=1e-4)


def test_jax_objectives_use_jax():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    A_, B_, c_, x_star, _ = _quadratic_data()
    A, B, c = (jnp.asarray(a) for a in (A_, B_, c_))

    def inner(x, y):
        return 0.5 * y @ A @ y - y @ (B @ x)

    def outer(x, y):
        return 0.5 * jnp.sum((y - c) ** 2) + 0.5 * RHO * jnp.sum(x ** 2)

    res = solve(outer, inner, jnp.zeros(N_X), jnp.zeros(N_Y), "implicit",
                **NAMESPACE_RUNS["implicit"])
    assert res.converged and isinstance(res.x, jax.Array)
    np.testing.assert_allclose(np.asarray(res.x), x_star, atol=1e-4)


# ---------------------------------------------------------------------------------------
# seeded mini-batches
# ---------------------------------------------------------------------------------------
N_SAMPLES = 100


@pytest.fixture
def sampled():
    """inner = mean over samples i of ½(zᵢᵀy − wᵢᵀx)² + (μ/2)||y||²: y*(x) = Mx."""
    rng = np.random.default_rng(1)
    mu = 0.5
    Z = rng.standard_normal((N_SAMPLES, N_Y))
    W = rng.standard_normal((N_SAMPLES, N_X))
    c = rng.standard_normal(N_Y)

    def inner(x, y, idx):
        return 0.5 * anp.mean((Z[idx] @ y - W[idx] @ x) ** 2) + 0.5 * mu * anp.sum(y ** 2)

    def outer(x, y, idx):
        return 0.5 * anp.sum((y - c) ** 2) + 0.5 * RHO * anp.sum(x ** 2)

    M = np.linalg.solve(Z.T @ Z / N_SAMPLES + mu * np.eye(N_Y), Z.T @ W / N_SAMPLES)
    x_star = np.linalg.solve(M.T @ M + RHO * np.eye(N_X), M.T @ c)
    return {"inner": inner, "outer": outer, "x0": np.zeros(N_X), "y0": np.zeros(N_Y),
            "x_star": x_star}


# decreasing steps for the stochastic variants, and how close 150 iterations with
# batches of 50 of 100 samples must land (|x*| = 0.65; measured with seed 3 / seed 4:
# implicit 0.11 / 0.21, penalty 0.10 / 0.04, lv-hba 0.13 / 0.15, bo-rep 0.05 / 0.12; the
# test runs seed 3); lv-hba has no decreasing step and is still 0.11 away after 150
# iterations with all the data (its O(1/c_k) bias)
STOCHASTIC = {
    "implicit": ({"stepsize": 0.3, "inner_iters": 3, "options": {"step_power": 0.5}}, 0.2),
    "penalty": ({"stepsize": 0.3, "inner_iters": 5,
                 "options": {"step_power": 0.5, "lam_max": 10.0, "lam_step": 1.0}}, 0.2),
    "lv-hba": ({"constraint": lambda x, y: anp.sum(y ** 2) - 100.0}, 0.25),
    "bo-rep": ({"inner_stepsize": 0.1, "options": {"anneal": 1.0, "eta_power": 0.5}}, 0.2),
}


@pytest.mark.parametrize("method", list(STOCHASTIC))
def test_mini_batches_are_seeded_and_land_near_the_solution(sampled, method):
    s = sampled
    kw, atol = STOCHASTIC[method]

    def run(seed, max_iter):
        with pytest.warns(ConvergenceWarning):  # a noise ball: no tolerance is reached
            return solve(s["outer"], s["inner"], s["x0"], s["y0"], method,
                         batch=(N_SAMPLES, 50), seed=seed, maxiter=max_iter, **kw)

    a, b, c = run(4, 10), run(4, 10), run(5, 10)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.history.outer, b.history.outer)
    assert not np.array_equal(a.x, c.x)
    assert np.linalg.norm(run(3, 150).x - s["x_star"]) < atol


def test_full_batch_is_the_deterministic_method(sampled):
    s = sampled
    res = solve(s["outer"], s["inner"], s["x0"], s["y0"], "implicit",
                batch=(N_SAMPLES, N_SAMPLES), maxiter=300, stepsize=0.5, inner_iters=5)
    assert res.converged
    np.testing.assert_allclose(res.x, s["x_star"], atol=1e-5)


def test_batch_indices_live_in_the_arrays_namespace(xp):
    """With hand-written derivatives the mini-batches index data of any library."""
    rng = np.random.default_rng(2)
    Zn, Wn = rng.standard_normal((40, 2)), rng.standard_normal((40, 2))
    Z, W = xp.asarray(Zn), xp.asarray(Wn)
    seen = []

    def rows(a, idx):
        seen.append(type(idx))
        return xp.take(a, idx, axis=0)

    def inner(x, y, idx):
        r = rows(Z, idx) @ y - rows(W, idx) @ x
        return 0.5 * xp.mean(r ** 2) + 0.5 * xp.sum(y ** 2)

    def inner_grad(x, y, idx):
        Zb, Wb = rows(Z, idx), rows(W, idx)
        r = Zb @ y - Wb @ x
        return -(Wb.T @ r) / r.shape[0], Zb.T @ r / r.shape[0] + y

    def outer(x, y, idx):
        return 0.5 * xp.sum((y - 1.0) ** 2)

    z = xp.zeros(2, dtype=xp.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = solve(outer, inner, z, z, "penalty", batch=(40, 10), seed=0, maxiter=5,
                  inner_grad=inner_grad, outer_grad=lambda x, y, idx: (0.0 * x, y - 1.0))
        b = solve(outer, inner, z, z, "penalty", batch=(40, 10), seed=0, maxiter=5,
                  inner_grad=inner_grad, outer_grad=lambda x, y, idx: (0.0 * x, y - 1.0))
    assert all(t is type(z) for t in seen)
    np.testing.assert_array_equal(to_numpy(a.x), to_numpy(b.x))


def test_bad_batches_are_refused(sampled):
    s = sampled
    for batch in ((100, 0), (10, 50), [100, 50]):
        with pytest.raises(ValueError, match="batch must be"):
            solve(s["outer"], s["inner"], s["x0"], s["y0"], "bo-rep", batch=batch)
    with pytest.raises(ValueError, match="seed must be"):
        solve(s["outer"], s["inner"], s["x0"], s["y0"], "bo-rep", batch=(100, 50), seed=-1)
