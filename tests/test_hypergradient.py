"""diffsolve.bilevel.hypergradient vs the closed-form ridge hypergradient and finite differences.

Reference problem with a closed form: ridge regression with one penalty per feature,
λ = exp(θ), H = XᵀX + diag(λ), w* = H⁻¹Xᵀy, L(θ) = ½||X_v w* − y_v||²,
∇_θ L = −λ ⊙ w* ⊙ H⁻¹X_vᵀ(X_v w* − y_v).
"""

from __future__ import annotations

import warnings

import autograd.numpy as anp
import numpy as np
import pytest

import diffsolve as ds
from diffsolve.bilevel import HypergradientInfo, hypergradient
from tests.helpers import central_difference, to_numpy


@pytest.fixture
def ridge(rng):
    n, n_val, p = 40, 30, 8
    X, Xv = rng.standard_normal((n, p)), rng.standard_normal((n_val, p))
    w_true = rng.standard_normal(p)
    y = X @ w_true + 0.3 * rng.standard_normal(n)
    yv = Xv @ w_true + 0.3 * rng.standard_normal(n_val)
    theta = rng.standard_normal(p) * 0.5

    def inner(t, w):
        return 0.5 * anp.sum((X @ w - y) ** 2) + 0.5 * anp.sum(anp.exp(t) * w ** 2)

    def outer(t, w):
        return 0.5 * anp.sum((Xv @ w - yv) ** 2)

    lam = np.exp(theta)
    H = X.T @ X + np.diag(lam)
    w_star = np.linalg.solve(H, X.T @ y)
    closed = -lam * w_star * np.linalg.solve(H, Xv.T @ (Xv @ w_star - yv))
    return {"inner": inner, "outer": outer, "theta": theta, "w_star": w_star,
            "closed": closed, "L": np.linalg.eigvalsh(H).max(),
            "fy": Xv.T @ (Xv @ w_star - yv)}


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("hvp", ["reverse-over-reverse", "forward-over-reverse"])
def test_implicit_cg_matches_closed_form(ridge, hvp):
    g, info = hypergradient(ridge["outer"], ridge["inner"], ridge["theta"], ridge["w_star"],
                            hvp=hvp, return_info=True)
    assert _rel(g, ridge["closed"]) < 1e-9
    assert isinstance(info, HypergradientInfo) and info.method == "implicit-cg"
    assert info.converged and info.n_iters <= 8 + 1  # CG on an 8x8 SPD system
    assert info.residual_norm < 1e-8 and info.inner_grad_norm < 1e-10


def test_neumann_converges_to_closed_form(ridge):
    # rtol=0: a fixed budget of exactly maxiter terms, no warning
    kwargs = {"method": "neumann", "stepsize": 1.0 / ridge["L"], "rtol": 0.0}
    errors = [_rel(hypergradient(ridge["outer"], ridge["inner"], ridge["theta"],
                                 ridge["w_star"], maxiter=k, **kwargs), ridge["closed"])
              for k in (10, 100, 2000)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-8
    # default stepsize: 1/(1.05 L̂) from power iteration
    g, info = hypergradient(ridge["outer"], ridge["inner"], ridge["theta"], ridge["w_star"],
                            method="neumann", maxiter=2000, return_info=True)
    assert _rel(g, ridge["closed"]) < 1e-8
    assert 0.9 / ridge["L"] < info.stepsize < 1.0 / ridge["L"] and info.converged
    # it stops as soon as its (exact, free) residual meets rtol, well before 2000 terms
    assert info.status is ds.Status.SUCCESS and info.n_iters < 2000
    assert info.residual_norm <= 1e-10 * np.linalg.norm(ridge["fy"])
    with pytest.warns(ds.ConvergenceWarning, match="Neumann series stopped at relative "
                                                   "residual .* after 10 terms"):
        _, info = hypergradient(ridge["outer"], ridge["inner"], ridge["theta"],
                                ridge["w_star"], method="neumann", maxiter=10,
                                return_info=True)
    assert info.status is ds.Status.MAX_ITERATIONS and not info.converged


def test_unrolled_approaches_closed_form_with_more_steps(ridge):
    y0 = np.zeros_like(ridge["w_star"])
    alpha = 1.0 / ridge["L"]
    errors = [_rel(hypergradient(ridge["outer"], ridge["inner"], ridge["theta"], y0,
                                 method="unrolled", maxiter=t, stepsize=alpha), ridge["closed"])
              for t in (10, 100, 1000)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-6
    _, info = hypergradient(ridge["outer"], ridge["inner"], ridge["theta"], y0,
                            method="unrolled", maxiter=1000, stepsize=alpha, return_info=True)
    assert info.converged and info.status is ds.Status.SUCCESS and info.n_iters == 1000
    assert info.inner_grad_norm < 1e-8
    # n_steps is the deprecated name of maxiter
    with pytest.warns(DeprecationWarning, match="n_steps= is deprecated.*use maxiter="):
        g = hypergradient(ridge["outer"], ridge["inner"], ridge["theta"], y0,
                          method="unrolled", n_steps=10, stepsize=alpha)
    np.testing.assert_array_equal(g, hypergradient(
        ridge["outer"], ridge["inner"], ridge["theta"], y0, method="unrolled", maxiter=10,
        stepsize=alpha))


def test_methods_agree_on_a_non_quadratic_inner_problem(rng):
    """Logistic-type inner problem: finite differences of Φ(x) with y*(x) by Newton."""
    A = rng.standard_normal((30, 5))
    s = np.sign(rng.standard_normal(30))
    c = rng.standard_normal(5)

    def inner(x, y):
        return anp.sum(anp.logaddexp(0.0, -s * (A @ y))) + 0.5 * anp.sum(anp.exp(x) * y ** 2)

    def outer(x, y):
        return anp.sum((y - c) ** 2) + 0.1 * anp.sum(x ** 2)

    def y_star(x):
        y = np.zeros(5)
        for _ in range(30):
            p = 1.0 / (1.0 + np.exp(s * (A @ y)))
            g = -A.T @ (s * p) + np.exp(x) * y
            H = A.T @ (A * (p * (1 - p))[:, None]) + np.diag(np.exp(x))
            y = y - np.linalg.solve(H, g)
        return y

    x = rng.standard_normal(5) * 0.3
    y = y_star(x)
    g_cg = hypergradient(outer, inner, x, y)
    g_ne = hypergradient(outer, inner, x, y, method="neumann", maxiter=3000)
    np.testing.assert_allclose(g_ne, g_cg, rtol=1e-7)
    d = rng.standard_normal(5)
    fd = central_difference(lambda x_: outer(x_, y_star(x_)), x, d)
    np.testing.assert_allclose(g_cg @ d, fd, rtol=1e-7)


def test_indefinite_hessian_is_refused_and_ridge_regularises():
    inner = lambda x, y: 0.5 * anp.sum(x * y ** 2)  # noqa: E731 - ∇²ᵧᵧ = diag(x)
    outer = lambda x, y: anp.sum(y)  # noqa: E731
    with pytest.raises(ValueError, match="not positive definite.*ridge"):
        hypergradient(outer, inner, np.array([1.0, -1.0]), np.zeros(2))
    # singular Hessian diag(1, 0): (H + r I) v = 1, ∇Φ = -y ⊙ v
    r = 1e-3
    g = hypergradient(outer, inner, np.array([1.0, 0.0]), np.ones(2), ridge=r)
    np.testing.assert_allclose(g, [-1 / (1 + r), -1 / r], rtol=1e-9)


def test_non_convergence_warns(ridge):
    with pytest.warns(ds.ConvergenceWarning, match="relative residual .* increase maxiter"):
        hypergradient(ridge["outer"], ridge["inner"], ridge["theta"], ridge["w_star"],
                      maxiter=2)
    with pytest.warns(ds.ConvergenceWarning, match="Neumann terms grew"):
        _, info = hypergradient(ridge["outer"], ridge["inner"], ridge["theta"],
                                ridge["w_star"], method="neumann", stepsize=3.0 / ridge["L"],
                                maxiter=50, return_info=True)
    assert info.status is ds.Status.DIVERGED
    with pytest.raises(ds.MaxIterationsError, match="relative residual") as err:
        hypergradient(ridge["outer"], ridge["inner"], ridge["theta"], ridge["w_star"],
                      maxiter=2, throw=True)
    assert isinstance(err.value.result, HypergradientInfo)
    with pytest.raises(ds.DivergedError, match="Neumann terms grew"):
        hypergradient(ridge["outer"], ridge["inner"], ridge["theta"], ridge["w_star"],
                      method="neumann", stepsize=3.0 / ridge["L"], maxiter=50, throw=True)
    # unrolled steps that diverge: caught by an untraced dry run before they overflow
    with pytest.raises(ds.DivergedError, match="unrolled inner steps diverged"):
        hypergradient(ridge["outer"], ridge["inner"], ridge["theta"],
                      np.ones_like(ridge["w_star"]), method="unrolled",
                      stepsize=3.0 / ridge["L"], maxiter=2000, throw=True)


@pytest.mark.parametrize("method", ["implicit-cg", "neumann"])
def test_rtol_zero_is_a_fixed_budget(ridge, method):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, info = hypergradient(ridge["outer"], ridge["inner"], ridge["theta"],
                                ridge["w_star"], method=method, rtol=0.0, maxiter=5,
                                return_info=True)
    assert info.n_iters == 5 and info.status is ds.Status.MAX_ITERATIONS


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"method": "bfgs"}, ValueError, "method must be one of 'implicit-cg', 'neumann', "
                                     "'unrolled'; got 'bfgs'"),
    ({"method": "neumann", "stepsize": 0.0}, ValueError, "stepsize must be > 0"),
    ({"method": "unrolled", "maxiter": 0}, ValueError, "maxiter must be >= 1"),
    ({"maxiter": -1}, ValueError, "maxiter must be >= 1"),
    ({"maxiter": True}, TypeError, "maxiter must be an integer >= 1 or None, got the bool"),
    ({"rtol": -1e-3}, ValueError, "rtol must be >= 0"),
    ({"ridge": -1.0}, ValueError, "ridge must be >= 0"),
    ({"hvp": "finite"}, ValueError, "hvp must be one of 'reverse-over-reverse'"),
    ({"throw": None}, TypeError, "throw must be True or False"),
    ({"n_step": 3}, TypeError, "unexpected keyword argument.*n_step"),
])
def test_bad_options(ridge, kwargs, error, match):
    with pytest.raises(error, match=match):
        hypergradient(ridge["outer"], ridge["inner"], ridge["theta"], ridge["w_star"], **kwargs)


def test_bad_functions_and_arrays(ridge):
    t, w = ridge["theta"], ridge["w_star"]
    with pytest.raises(TypeError, match="outer must be a callable"):
        hypergradient(None, ridge["inner"], t, w)
    with pytest.raises(ValueError, match=r"outer\(x, y\) must return a scalar"):
        hypergradient(lambda t_, w_: w_, ridge["inner"], t, w)
    with pytest.raises(TypeError, match="x must be an array"):
        hypergradient(ridge["outer"], ridge["inner"], [0.0], w)
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="hypergradient: y is a torch array but x is a numpy"):
        hypergradient(ridge["outer"], ridge["inner"], t, torch.tensor(w))
    with pytest.raises(TypeError, match="hypergradient: y has dtype float16"):
        hypergradient(ridge["outer"], ridge["inner"], t, w.astype(np.float16))
    with pytest.raises(ValueError, match="hypergradient: x contains NaN"):
        hypergradient(ridge["outer"], ridge["inner"], t * np.nan, w)
    with pytest.raises(ValueError, match="hypergradient: y has shape .0,. with no entries"):
        hypergradient(ridge["outer"], ridge["inner"], t, np.zeros(0))
    xps = pytest.importorskip("array_api_strict")
    with pytest.raises(TypeError, match="array_api_strict arrays.*outer_grad.*inner_hvp"):
        hypergradient(ridge["outer"], ridge["inner"], xps.asarray(t), xps.asarray(w))
    with pytest.raises(TypeError, match="method='unrolled'.*NumPy"):
        hypergradient(ridge["outer"], ridge["inner"], xps.asarray(t), xps.asarray(w),
                      method="unrolled")
    with pytest.raises(TypeError, match="inner_hvp must be a callable"):
        hypergradient(ridge["outer"], ridge["inner"], t, w, inner_hvp="hvp")
    with pytest.raises(ValueError, match=r"inner_hvp\(\.\.\.\)\[1\] returned \(2,\)"):
        hypergradient(ridge["outer"], ridge["inner"], t, w,
                      inner_hvp=lambda x, y, v: (x, v[:2]))


def _ridge_in(xp, rng):
    """The per-feature ridge problem in namespace xp, with its derivatives written out."""
    n, n_val, p = 30, 20, 5
    Xn, Xvn = rng.standard_normal((n, p)), rng.standard_normal((n_val, p))
    yn, yvn = rng.standard_normal(n), rng.standard_normal(n_val)
    thetan = rng.standard_normal(p) * 0.5
    lam = np.exp(thetan)
    H = Xn.T @ Xn + np.diag(lam)
    wn = np.linalg.solve(H, Xn.T @ yn)
    closed = -lam * wn * np.linalg.solve(H, Xvn.T @ (Xvn @ wn - yvn))
    X, Xv, y, yv = (xp.asarray(a) for a in (Xn, Xvn, yn, yvn))

    def inner(t, w):
        return 0.5 * xp.sum((X @ w - y) ** 2) + 0.5 * xp.sum(xp.exp(t) * w ** 2)

    def outer(t, w):
        return 0.5 * xp.sum((Xv @ w - yv) ** 2)

    derivatives = {
        "outer_grad": lambda t, w: (xp.zeros_like(t), Xv.T @ (Xv @ w - yv)),
        "inner_grad": lambda t, w: (0.5 * xp.exp(t) * w ** 2, X.T @ (X @ w - y) + xp.exp(t) * w),
        # ∇ᵧg = Xᵀ(Xw − y) + e^θ ⊙ w: ∂θ⟨∇ᵧg, v⟩ = e^θ ⊙ w ⊙ v, ∇²ᵧᵧg v = XᵀXv + e^θ ⊙ v
        "inner_hvp": lambda t, w, v: (xp.exp(t) * w * v, X.T @ (X @ v) + xp.exp(t) * v),
    }
    return inner, outer, derivatives, xp.asarray(thetan), xp.asarray(wn), closed


@pytest.mark.parametrize("method", ["implicit-cg", "neumann"])
def test_user_derivatives_any_namespace_match_closed_form(xp, rng, method):
    inner, outer, derivatives, theta, w, closed = _ridge_in(xp, rng)
    kw = {"maxiter": 3000} if method == "neumann" else {}
    g, info = hypergradient(outer, inner, theta, w, method=method, return_info=True,
                            **derivatives, **kw)
    assert type(g) is type(theta) and g.dtype == theta.dtype
    np.testing.assert_allclose(to_numpy(g), closed, rtol=1e-8)
    assert info.inner_grad_norm < 1e-9


def test_torch_and_jax_objectives_use_their_autodiff(rng):
    torch = pytest.importorskip("torch")
    # the same problem written with torch: derivatives from torch.autograd
    import array_api_compat.torch as xpt

    inner_t, outer_t, _, theta_t, w_t, closed_t = _ridge_in(xpt, np.random.default_rng(7))
    g = hypergradient(outer_t, inner_t, theta_t, w_t)
    assert isinstance(g, torch.Tensor)
    np.testing.assert_allclose(g.numpy(), closed_t, rtol=1e-8)
    jnp = pytest.importorskip("jax.numpy")
    inner_j, outer_j, _, theta_j, w_j, closed_j = _ridge_in(jnp, np.random.default_rng(7))
    g = hypergradient(outer_j, inner_j, theta_j, w_j)
    np.testing.assert_allclose(np.asarray(g), closed_j, rtol=1e-8)


# ---------------------------------------------------------------------------------------
# the solver contract: NaN "cotangents", untraceable objectives, array policy
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["implicit-cg", "neumann", "unrolled"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_outer_gradient_gives_nan(ridge, method, bad):
    """Old main, implicit-cg: CG stopped at once on the NaN right-hand side and returned
    ∇ₓf = 0 as the hypergradient (with a convergence warning)."""
    w = np.ones(8)
    w[3] = bad
    outer = lambda t, y: anp.sum(w * y)  # noqa: E731 - ∇ₓ outer = 0, ∇ᵧ outer has a NaN
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NaN in, NaN out: no warning, as in ds.vjp
        g, info = hypergradient(outer, ridge["inner"], ridge["theta"], ridge["w_star"],
                                method=method, return_info=True, maxiter=50,
                                stepsize=1.0 / ridge["L"])
    assert g.shape == ridge["theta"].shape and np.all(np.isnan(g))
    assert info.status is ds.Status.NONFINITE and not info.converged


def test_plain_numpy_inner_is_refused(ridge):
    """Old main: an inner written with np.array([...]) hid its dependence on x from
    autograd, whose warning was silenced: the hypergradient came out exactly 0."""
    rng = np.random.default_rng(0)
    A, b, c = rng.standard_normal((10, 3)), rng.standard_normal(10), rng.standard_normal(3)

    def inner(x, y):
        return 0.5 * np.sum((A @ y - b) ** 2) + 0.5 * np.sum(np.array([x[0]]) * y ** 2)

    def outer(x, y):
        return 0.5 * anp.sum((y - c) ** 2)

    x = np.array([0.5])
    y = np.linalg.solve(A.T @ A + 0.5 * np.eye(3), A.T @ b)
    for method in ("implicit-cg", "neumann"):
        with pytest.raises(ds.NotTraceableError, match=r"hypergradient: autograd cannot "
                                                       r"trace.*'inner'.*inner_hvp="):
            hypergradient(outer, inner, x, y, method=method)


def test_an_outer_independent_of_x_is_fine(ridge):
    """Joint tracing: an outer that ignores x (the usual validation loss) is no error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = hypergradient(ridge["outer"], ridge["inner"], ridge["theta"], ridge["w_star"])
    assert _rel(g, ridge["closed"]) < 1e-9


def test_integer_and_read_only_inputs(ridge):
    t = ridge["theta"].copy()
    t.setflags(write=False)
    g = hypergradient(ridge["outer"], ridge["inner"], t, ridge["w_star"])
    assert _rel(g, ridge["closed"]) < 1e-9
    x = np.array([1])
    y = np.zeros(8, dtype=np.int32)
    g = hypergradient(lambda a, b: anp.sum(b ** 2), lambda a, b: anp.sum((b - a) ** 2), x, y,
                      method="unrolled", maxiter=3, stepsize=0.25)
    assert g.dtype == np.float64


# ------------------------------------------------------------------------------------------
# atol: implicit-cg and neumann stop at ||residual|| <= max(rtol ||∇ᵧf||, atol);
# rtol = atol = 0 is the fixed budget
# ------------------------------------------------------------------------------------------
@pytest.fixture
def quadratic(rng):
    """inner = ½yᵀQy − x·y with a 40 × 40 SPD Q (cond ~ 60), outer = ½||y − c||²:
    y* = Q⁻¹x and ∇Φ = Q⁻¹(y* − c); CG needs tens of iterations."""
    A = rng.standard_normal((60, 40))
    Q = A.T @ A + 0.1 * np.eye(40)
    c = rng.standard_normal(40)
    x = rng.standard_normal(40)
    y = np.linalg.solve(Q, x)
    return {"inner": lambda x_, y_: 0.5 * y_ @ (Q @ y_) - x_ @ y_,
            "outer": lambda x_, y_: 0.5 * anp.sum((y_ - c) ** 2),
            "x": x, "y": y, "closed": np.linalg.solve(Q, y - c),
            "L": np.linalg.eigvalsh(Q).max()}


@pytest.mark.parametrize("method", ["implicit-cg", "neumann"])
def test_atol_alone_stops_the_hessian_solve(quadratic, method):
    q = quadratic
    kw = {"method": method, "rtol": 0.0, "return_info": True}
    if method == "neumann":
        kw.update(maxiter=5000, stepsize=1.0 / q["L"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g, info = hypergradient(q["outer"], q["inner"], q["x"], q["y"], atol=1e-6, **kw)
        g_tight, tight = hypergradient(q["outer"], q["inner"], q["x"], q["y"], atol=1e-12,
                                       **kw)
    assert info.status is ds.Status.SUCCESS and info.converged
    assert tight.status is ds.Status.SUCCESS and tight.converged
    assert info.residual_norm <= 1e-6 and tight.residual_norm <= 1e-12
    assert info.n_iters < tight.n_iters
    assert _rel(g_tight, q["closed"]) < 1e-9
    assert np.linalg.norm(g - q["closed"]) < 1e-4  # ||Q⁻¹|| · 1e-6
    if method == "neumann":  # the message states the test it met
        assert "max(rtol·||∇ᵧ outer||, atol) = 1e-06" in info.message
    # rtol alone (default 1e-10) does not stop within the budget atol=1e-6 needed
    with pytest.warns(ds.ConvergenceWarning, match="relative residual"):
        hypergradient(q["outer"], q["inner"], q["x"], q["y"],
                      **{**kw, "rtol": 1e-10, "maxiter": info.n_iters})


@pytest.mark.parametrize("method", ["implicit-cg", "neumann"])
def test_rtol_and_atol_zero_is_the_fixed_budget(quadratic, method):
    q = quadratic
    kw = {"method": method, "maxiter": 7, "return_info": True}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, info = hypergradient(q["outer"], q["inner"], q["x"], q["y"], rtol=0.0, atol=0.0,
                                **kw)
    assert info.status is ds.Status.MAX_ITERATIONS and not info.converged
    assert info.n_iters == 7 and "fixed budget" in info.message
    # without maxiter: the documented default budget (CG: 10 n, it used to be refused;
    # neumann: 100 terms)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, info = hypergradient(q["outer"], q["inner"], q["x"], q["y"], method=method,
                                rtol=0.0, atol=0.0, return_info=True)
    assert info.status is ds.Status.MAX_ITERATIONS
    assert info.n_iters == (400 if method == "implicit-cg" else 100)
    # rtol = 0 with atol > 0 is a tolerance: running out of maxiter is reported, and the
    # message states the test
    with pytest.warns(ds.ConvergenceWarning, match=r"relative residual .*atol=1e-14"):
        hypergradient(q["outer"], q["inner"], q["x"], q["y"], rtol=0.0, atol=1e-14, **kw)
    with pytest.raises(ds.MaxIterationsError, match=r"max\(rtol·\|\|∇ᵧ outer\|\|, atol\)"):
        hypergradient(q["outer"], q["inner"], q["x"], q["y"], rtol=0.0, atol=1e-14,
                      throw=True, **kw)


def test_implicit_hypergradient_takes_atol():
    """The core shared with bilevel.solve: atol reaches its CG and Neumann loops."""
    from diffsolve.bilevel._hypergradient import implicit_hypergradient

    A = np.diag(np.linspace(1.0, 100.0, 50))
    fy = np.ones(50)
    for method, extra in (("implicit-cg", {}), ("neumann", {"stepsize": 1e-2,
                                                             "maxiter": 10_000})):
        _, v, out = implicit_hypergradient(lambda v_: A @ v_, lambda v_: v_, np.zeros(50),
                                           fy, method=method, rtol=0.0, atol=1e-3, **extra)
        assert out.status is ds.Status.SUCCESS and out.residual_norm <= 1e-3
        assert np.linalg.norm(A @ v - fy) <= 1e-3
        _, _, strict = implicit_hypergradient(lambda v_: A @ v_, lambda v_: v_,
                                              np.zeros(50), fy, method=method, rtol=0.0,
                                              atol=1e-12, **extra)
        assert out.n_iters < strict.n_iters


@pytest.mark.parametrize(("atol", "error", "match"), [
    (-1e-6, ValueError, "atol must be >= 0"),
    (float("nan"), ValueError, "atol must be finite"),
    (True, TypeError, "atol must be a finite real number >= 0.0, got the bool True"),
])
@pytest.mark.parametrize("method", ["implicit-cg", "neumann", "unrolled"])
def test_bad_atol_names_the_function(ridge, method, atol, error, match):
    with pytest.raises(error, match=r"diffsolve\.bilevel\.hypergradient: " + match):
        hypergradient(ridge["outer"], ridge["inner"], ridge["theta"], ridge["w_star"],
                      method=method, atol=atol)


def test_bilevel_solve_forwards_cg_atol(ridge, monkeypatch):
    """bilevel.solve(method="implicit") passes options cg_atol to its Hessian solves."""
    from diffsolve.bilevel import _solve

    seen = []
    real = _solve.implicit_hypergradient

    def spy(*args, **kwargs):
        seen.append((kwargs["rtol"], kwargs["atol"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(_solve, "implicit_hypergradient", spy)
    ds.bilevel.solve(ridge["outer"], ridge["inner"], ridge["theta"], ridge["w_star"],
                     maxiter=3, atol=0.0, options={"cg_atol": 1e-7})  # fixed budget
    assert seen and all(t == (1e-8, 1e-7) for t in seen)
    seen.clear()
    ds.bilevel.solve(ridge["outer"], ridge["inner"], ridge["theta"], ridge["w_star"],
                     maxiter=2, atol=0.0)
    assert seen and all(t == (1e-8, 0.0) for t in seen)  # default: cg_rtol alone
    with pytest.raises(ValueError, match=r"bilevel\.solve: options\['cg_atol'\] must be >= 0"):
        ds.bilevel.solve(ridge["outer"], ridge["inner"], ridge["theta"], ridge["w_star"],
                         options={"cg_atol": -1.0})
