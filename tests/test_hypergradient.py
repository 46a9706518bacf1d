"""diffsolve.bilevel.hypergradient vs the closed-form ridge hypergradient and finite differences.

Reference problem (ALGORITHMS.md §4): ridge regression with one penalty per feature,
λ = exp(θ), H = XᵀX + diag(λ), w* = H⁻¹Xᵀy, L(θ) = ½||X_v w* − y_v||²,
∇_θ L = −λ ⊙ w* ⊙ H⁻¹X_vᵀ(X_v w* − y_v).
"""

from __future__ import annotations

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
            "closed": closed, "L": np.linalg.eigvalsh(H).max()}


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
    kwargs = {"method": "neumann", "stepsize": 1.0 / ridge["L"]}
    errors = [_rel(hypergradient(ridge["outer"], ridge["inner"], ridge["theta"],
                                 ridge["w_star"], maxiter=k, **kwargs), ridge["closed"])
              for k in (10, 100, 2000)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-8
    # default stepsize: 1/(1.05 L̂) from power iteration
    g, info = hypergradient(ridge["outer"], ridge["inner"], ridge["theta"], ridge["w_star"],
                            method="neumann", maxiter=2000, return_info=True)
    assert _rel(g, ridge["closed"]) < 1e-8
    assert 0.9 / ridge["L"] < info.stepsize < 1.0 / ridge["L"] and info.converged


def test_unrolled_approaches_closed_form_with_more_steps(ridge):
    y0 = np.zeros_like(ridge["w_star"])
    alpha = 1.0 / ridge["L"]
    errors = [_rel(hypergradient(ridge["outer"], ridge["inner"], ridge["theta"], y0,
                                 method="unrolled", n_steps=t, stepsize=alpha), ridge["closed"])
              for t in (10, 100, 1000)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-6
    _, info = hypergradient(ridge["outer"], ridge["inner"], ridge["theta"], y0,
                            method="unrolled", n_steps=1000, stepsize=alpha, return_info=True)
    assert info.converged is None and info.n_iters == 1000 and info.inner_grad_norm < 1e-8


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
        hypergradient(ridge["outer"], ridge["inner"], ridge["theta"], ridge["w_star"],
                      method="neumann", stepsize=3.0 / ridge["L"], maxiter=50)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"method": "bfgs"}, ValueError, "method='bfgs' is not known"),
    ({"method": "neumann", "stepsize": 0.0}, ValueError, "stepsize must be a finite number > 0"),
    ({"method": "unrolled", "n_steps": 0}, ValueError, "n_steps must be a positive integer"),
    ({"maxiter": -1}, ValueError, "maxiter must be a positive integer or None"),
    ({"ridge": -1.0}, ValueError, "ridge must be a finite number >= 0"),
    ({"hvp": "finite"}, ValueError, "hvp='finite' is not known"),
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
