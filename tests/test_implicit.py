"""custom_root / custom_fixed_point: gradients vs closed forms and finite differences.

Problems with closed forms: ridge regression (stationarity), a small QP through its KKT
conditions, an affine fixed-point map, a box-constrained quadratic (projected gradient)
and a separable lasso (proximal gradient). Every solve option, diffsolve.vjp and the three
adapters, NumPy and array_api_strict (with a user vjp=), bad input and non-convergence.
"""

from __future__ import annotations

import itertools
import warnings

import autograd
import autograd.numpy as anp
import numpy as np
import pytest

import diffsolve as ds
from diffsolve.implicit import (
    custom_fixed_point,
    custom_root,
    kkt_conditions,
    projected_gradient_fixed_point,
    projection_ball,
    projection_box,
    projection_nonnegative,
    projection_simplex,
    proximal_gradient_fixed_point,
    root_vjp,
    stationarity,
)
from tests.helpers import assert_close, central_difference, to_numpy

SOLVES = ["cg", "normal-cg", "gmres"]


# ------------------------------------------------------------------------------------------
# ridge regression: w*(lam) = (XᵀX + diag(lam))⁻¹ Xᵀy, F = ∇_w of the penalised loss
# ------------------------------------------------------------------------------------------
@pytest.fixture
def ridge_data(rng):
    X = rng.standard_normal((25, 6))
    y = rng.standard_normal(25)
    lam = np.exp(rng.standard_normal(6) * 0.5)
    return X, y, lam


def ridge_F(w, lam, X, y):
    return X.T @ (X @ w - y) + lam * w


def ridge_solver(solve="cg", **options):
    @custom_root(ridge_F, solve=solve, **options)
    def ridge(init, lam, X, y):
        return np.linalg.solve(X.T @ X + np.diag(lam), X.T @ y)

    return ridge


def ridge_closed_form(X, y, lam, w_bar):
    """Cotangents of (lam, X, y) for L = <w_bar, w*>."""
    H = X.T @ X + np.diag(lam)
    w = np.linalg.solve(H, X.T @ y)
    u = np.linalg.solve(H, w_bar)  # H symmetric
    r = X @ w - y
    return -u * w, -(np.outer(X @ u, w) + np.outer(r, u)), X @ u


@pytest.mark.parametrize("solve", [*SOLVES, "callable"])
def test_ridge_vjp_matches_closed_form(ridge_data, rng, solve):
    X, y, lam = ridge_data
    option = (lambda matvec, b: _dense_solve(matvec, b)) if solve == "callable" else solve
    ridge = ridge_solver(option)
    w, f_vjp = ds.vjp(ridge, np.zeros(6), lam, X, y)
    assert isinstance(w, np.ndarray) and w.shape == (6,)
    w_bar = rng.standard_normal(6)
    init_bar, lam_bar, X_bar, y_bar = f_vjp(w_bar)
    expected = ridge_closed_form(X, y, lam, w_bar)
    np.testing.assert_array_equal(init_bar, np.zeros(6))
    for got, want in zip((lam_bar, X_bar, y_bar), expected):
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-11)
    # the keyword form is the same cotangent
    np.testing.assert_allclose(f_vjp(value=w_bar)[1], lam_bar, rtol=1e-14)


def _dense_solve(matvec, b):
    """A user solve callable: materialise the matrix column by column, then LU."""
    n = b.shape[0]
    M = np.stack([matvec(e) for e in np.eye(n)], axis=1)
    return np.linalg.solve(M, b)


def test_ridge_matches_finite_differences(ridge_data, rng):
    X, y, lam = ridge_data
    ridge = ridge_solver("cg")
    w_bar = rng.standard_normal(6)
    _, f_vjp = ds.vjp(ridge, np.zeros(6), lam, X, y)
    _, lam_bar, X_bar, y_bar = f_vjp(w_bar)
    d_lam, d_X, d_y = rng.standard_normal(6), rng.standard_normal(X.shape), rng.standard_normal(25)

    def loss(t):
        return w_bar @ ridge(np.zeros(6), lam + t * d_lam, X + t * d_X, y + t * d_y)

    predicted = lam_bar @ d_lam + np.sum(X_bar * d_X) + y_bar @ d_y
    np.testing.assert_allclose(predicted, central_difference(loss, 0.0, 1.0), rtol=1e-7)


def test_one_linear_solve_serves_every_theta(ridge_data, monkeypatch):
    import diffsolve.implicit._custom_root as cr

    X, y, lam = ridge_data
    calls = []
    original = cr.solve_adjoint
    monkeypatch.setattr(cr, "solve_adjoint", lambda *a, **k: calls.append(1) or original(*a, **k))
    solver = ds.to_autograd(ridge_solver("cg"))
    autograd.grad(lambda lam_, X_, y_: anp.sum(solver(np.zeros(6), lam_, X_, y_) ** 2),
                  argnum=(0, 1, 2))(lam, X, y)
    assert len(calls) == 1


def test_ridge_float32_keeps_dtype(ridge_data):
    X, y, lam = (a.astype(np.float32) for a in ridge_data)
    ridge = ridge_solver("gmres", rtol=1e-5)
    _, f_vjp = ds.vjp(ridge, np.zeros(6, dtype=np.float32), lam, X, y)
    lam_bar = f_vjp(np.ones(6, dtype=np.float32))[1]
    assert lam_bar.dtype == np.float32
    want = ridge_closed_form(*(a.astype(np.float64) for a in (X, y, lam)), np.ones(6))[0]
    np.testing.assert_allclose(lam_bar, want, rtol=1e-3)


# ------------------------------------------------------------------------------------------
# adapters: autograd, torch, jax
# ------------------------------------------------------------------------------------------
def test_autograd_adapter_returns_boxes_and_gradients(ridge_data):
    X, y, lam = ridge_data
    solver = ds.to_autograd(ridge_solver("cg"))
    out = solver(np.zeros(6), lam, X, y)
    assert isinstance(out, np.ndarray)
    g = autograd.grad(lambda lam_: anp.sum(solver(np.zeros(6), lam_, X, y)))(lam)
    np.testing.assert_allclose(g, ridge_closed_form(X, y, lam, np.ones(6))[0], rtol=1e-8)


@pytest.mark.parametrize("solve", ["cg", "gmres"])
def test_torch_adapter(ridge_data, rng, solve):
    torch = pytest.importorskip("torch")
    X, y, lam = ridge_data
    solver = ds.to_torch(ridge_solver(solve))
    lt = torch.tensor(lam, requires_grad=True)
    Xt = torch.tensor(X, requires_grad=True)
    w = solver(torch.zeros(6, dtype=torch.float64), lt, Xt, torch.tensor(y))
    assert isinstance(w, torch.Tensor) and w.shape == (6,)
    w_bar = rng.standard_normal(6)
    (w * torch.tensor(w_bar)).sum().backward()
    lam_bar, X_bar, _ = ridge_closed_form(X, y, lam, w_bar)
    np.testing.assert_allclose(lt.grad.numpy(), lam_bar, rtol=1e-8)
    np.testing.assert_allclose(Xt.grad.numpy(), X_bar, rtol=1e-8, atol=1e-12)


def test_torch_gradcheck(ridge_data):
    torch = pytest.importorskip("torch")
    X, y, lam = ridge_data
    solver = ds.to_torch(ridge_solver("cg", rtol=1e-12))
    init = torch.zeros(6, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda lam_, y_: solver(init, lam_, torch.tensor(X), y_),
        (torch.tensor(lam, requires_grad=True), torch.tensor(y, requires_grad=True)),
        eps=1e-6, atol=1e-7, rtol=1e-5)


def test_jax_adapter_under_jit(ridge_data, rng):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    X, y, lam = ridge_data
    solver = ds.to_jax(ridge_solver("gmres"))
    w_bar = rng.standard_normal(6)

    @jax.jit
    def loss(lam_, y_):
        return jnp.sum(jnp.asarray(w_bar) * solver(jnp.zeros(6), lam_, jnp.asarray(X), y_))

    g_lam, g_y = jax.grad(loss, argnums=(0, 1))(jnp.asarray(lam), jnp.asarray(y))
    lam_bar, _, y_bar = ridge_closed_form(X, y, lam, w_bar)
    np.testing.assert_allclose(np.asarray(g_lam), lam_bar, rtol=1e-8)
    np.testing.assert_allclose(np.asarray(g_y), y_bar, rtol=1e-8)
    out = solver(jnp.zeros(6), jnp.asarray(lam), jnp.asarray(X), jnp.asarray(y))
    assert isinstance(out, jax.Array) and out.shape == (6,)


# ------------------------------------------------------------------------------------------
# array_api_strict (and NumPy) through the user vjp= path
# ------------------------------------------------------------------------------------------
def _strict_ridge(xp, X, y, solve):
    def F(w, lam):
        return X.T @ (X @ w - y) + lam * w

    def vjp(w, theta):
        (lam,) = theta
        # ∂F/∂w = XᵀX + diag(lam) (symmetric), ∂F/∂lam = diag(w)
        return F(w, lam), lambda u: (X.T @ (X @ u) + lam * u, u * w)

    def jvp(w, theta):
        (lam,) = theta
        return F(w, lam), lambda v: X.T @ (X @ v) + lam * v

    @custom_root(F, solve=solve, vjp=vjp, jvp=jvp)
    def ridge(init, lam):
        n = X.shape[1]
        H = X.T @ X + lam[:, None] * xp.eye(n, dtype=X.dtype)
        return xp.linalg.solve(H, X.T @ y)

    return ridge


@pytest.mark.parametrize("solve", SOLVES)
def test_user_vjp_any_namespace(xp, ridge_data, rng, solve):
    Xn, yn, lamn = ridge_data
    X, y, lam = (xp.asarray(a) for a in (Xn, yn, lamn))
    ridge = _strict_ridge(xp, X, y, solve)
    w_bar_n = rng.standard_normal(6)
    w, f_vjp = ds.vjp(ridge, xp.zeros(6, dtype=xp.float64), lam)
    assert_close(w, np.linalg.solve(Xn.T @ Xn + np.diag(lamn), Xn.T @ yn), xp=xp, rtol=1e-10)
    init_bar, lam_bar = f_vjp(xp.asarray(w_bar_n))
    assert_close(lam_bar, ridge_closed_form(Xn, yn, lamn, w_bar_n)[0], xp=xp, rtol=1e-8)
    assert_close(init_bar, np.zeros(6), xp=xp)


def test_default_vjp_refuses_non_numpy_with_advice(ridge_data):
    xps = pytest.importorskip("array_api_strict")
    X, y, lam = (xps.asarray(a) for a in ridge_data)

    @custom_root(lambda w, lam_: X.T @ (X @ w - y) + lam_ * w)
    def ridge(init, lam_):
        return xps.linalg.solve(X.T @ X + lam_[:, None] * xps.eye(6, dtype=X.dtype), X.T @ y)

    _, f_vjp = ds.vjp(ridge, xps.zeros(6, dtype=xps.float64), lam)
    with pytest.raises(TypeError, match="HIPS autograd.*pass vjp="):
        f_vjp(xps.ones(6, dtype=xps.float64))


# ------------------------------------------------------------------------------------------
# a small QP through its KKT conditions
# ------------------------------------------------------------------------------------------
def _qp_problem():
    Q = np.array([[3.0, 0.5, 0.0], [0.5, 2.0, 0.3], [0.0, 0.3, 1.5]])
    A = np.array([[1.0, 1.0, 1.0]])
    G = np.array([[-1.0, 0.0, 0.0], [0.0, 1.0, -1.0]])
    c = np.array([2.0, -1.0, 0.5])
    b = np.array([1.0])
    h = np.array([0.0, 1.0])
    return Q, A, G, c, b, h


def _qp_solve(Q, A, G, c, b, h):
    """Brute-force active-set QP (tiny m): the feasible KKT point with λ >= 0."""
    n, p, m = Q.shape[0], A.shape[0], G.shape[0]
    for k in range(m + 1):
        for active in itertools.combinations(range(m), k):
            Ga = G[list(active)]
            K = np.block([[Q, A.T, Ga.T], [A, np.zeros((p, p + k))],
                          [Ga, np.zeros((k, p + k))]])
            sol = np.linalg.solve(K, np.concatenate([-c, b, h[list(active)]]))
            x, nu, lam_a = sol[:n], sol[n:n + p], sol[n + p:]
            lam = np.zeros(m)
            lam[list(active)] = lam_a
            if np.all(G @ x <= h + 1e-12) and np.all(lam >= -1e-12):
                return x, nu, lam
    raise AssertionError("no KKT point")


def _qp_layer(solve):
    F = kkt_conditions(lambda x, Q, A, G, c, b, h: 0.5 * x @ Q @ x + c @ x, n=3,
                       eq=lambda x, Q, A, G, c, b, h: A @ x - b,
                       ineq=lambda x, Q, A, G, c, b, h: G @ x - h)

    @custom_root(F, solve=solve)
    def qp(init, Q, A, G, c, b, h):
        return np.concatenate(_qp_solve(Q, A, G, c, b, h))

    return qp


@pytest.mark.parametrize("solve", ["gmres", "normal-cg"])
def test_qp_kkt_gradient_matches_closed_form_and_fd(rng, solve):
    Q, A, G, c, b, h = _qp_problem()
    x, nu, lam = _qp_solve(Q, A, G, c, b, h)
    active = np.flatnonzero(lam > 1e-9)
    assert len(active) == 1  # one active inequality: a non-trivial KKT system
    qp = _qp_layer(solve)
    z, f_vjp = ds.vjp(qp, np.zeros(6), Q, A, G, c, b, h)
    np.testing.assert_allclose(z, np.concatenate([x, nu, lam]), atol=1e-12)
    x_bar = rng.standard_normal(3)
    grads = f_vjp(np.concatenate([x_bar, np.zeros(3)]))
    c_bar, b_bar, h_bar = grads[4], grads[5], grads[6]
    # closed form: x solves the KKT system of the active set, so d<x̄, x>/d(-c, b, h_a) is
    # the first block row of K⁻ᵀ applied to x̄
    Ga = G[active]
    K = np.block([[Q, A.T, Ga.T], [A, np.zeros((1, 1 + len(active)))],
                  [Ga, np.zeros((len(active), 1 + len(active)))]])
    s = np.linalg.solve(K.T, np.concatenate([x_bar, np.zeros(1 + len(active))]))
    np.testing.assert_allclose(c_bar, -s[:3], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(b_bar, s[3:4], rtol=1e-8, atol=1e-12)
    h_expected = np.zeros(2)
    h_expected[active] = s[4:]
    np.testing.assert_allclose(h_bar, h_expected, rtol=1e-8, atol=1e-12)
    Q_bar = grads[1]
    dQ = rng.standard_normal((3, 3))
    dQ = dQ + dQ.T

    def loss(t):
        return x_bar @ qp(np.zeros(6), Q + t * dQ, A, G, c, b, h)[:3]

    np.testing.assert_allclose(np.sum(Q_bar * dQ), central_difference(loss, 0.0, 1.0),
                               rtol=1e-6, atol=1e-10)


# ------------------------------------------------------------------------------------------
# fixed points
# ------------------------------------------------------------------------------------------
def _affine_map(rng, n=5, symmetric=False):
    M = rng.standard_normal((n, n))
    M = (M + M.T) / 2 if symmetric else M
    return 0.6 * M / np.linalg.norm(M, 2), rng.standard_normal(n)


@pytest.mark.parametrize("solve", ["gmres", "normal-cg", "cg"])
def test_fixed_point_of_affine_map(rng, solve):
    M, b = _affine_map(rng, symmetric=solve == "cg")
    T = lambda x, M_, b_: M_ @ x + b_  # noqa: E731

    @custom_fixed_point(T, solve=solve)
    def iterate(init, M_, b_):
        x = init
        for _ in range(200):
            x = T(x, M_, b_)
        return x

    x, f_vjp = ds.vjp(iterate, np.zeros(5), M, b)
    np.testing.assert_allclose(x, np.linalg.solve(np.eye(5) - M, b), rtol=1e-10)
    x_bar = rng.standard_normal(5)
    _, M_bar, b_bar = f_vjp(x_bar)
    u = np.linalg.solve((np.eye(5) - M).T, x_bar)  # x* = (I - M)⁻¹ b
    np.testing.assert_allclose(b_bar, u, rtol=1e-8)
    np.testing.assert_allclose(M_bar, np.outer(u, x), rtol=1e-8, atol=1e-12)


def test_fixed_point_user_vjp_matches_autograd(rng):
    M, b = _affine_map(rng)
    T = lambda x, M_, b_: M_ @ x + b_  # noqa: E731

    def T_vjp(x, theta):
        M_, b_ = theta
        return T(x, M_, b_), lambda u: (M_.T @ u, np.outer(u, x), u)

    def solver(init, M_, b_):
        return np.linalg.solve(np.eye(5) - M_, b_)

    x_bar = rng.standard_normal(5)
    auto = ds.vjp(custom_fixed_point(T)(solver), np.zeros(5), M, b)[1](x_bar)
    user = ds.vjp(custom_fixed_point(T, vjp=T_vjp)(solver), np.zeros(5), M, b)[1](x_bar)
    for a, u in zip(auto, user):
        np.testing.assert_allclose(a, u, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------------------------
# built-in optimality conditions
# ------------------------------------------------------------------------------------------
def test_stationarity_with_cg_matches_closed_form(rng):
    A = rng.standard_normal((8, 4))
    Q = A.T @ A + np.eye(4)
    c = rng.standard_normal(4)
    f = lambda x, c_: 0.5 * x @ Q @ x - c_ @ x + 0.1 * anp.sum(anp.cosh(x))  # noqa: E731

    @custom_root(stationarity(f), solve="cg")
    def minimise(init, c_):
        x = init
        for _ in range(50):  # Newton
            g = Q @ x - c_ + 0.1 * np.sinh(x)
            x = x - np.linalg.solve(Q + 0.1 * np.diag(np.cosh(x)), g)
        return x

    x, f_vjp = ds.vjp(minimise, np.zeros(4), c)
    x_bar = rng.standard_normal(4)
    H = Q + 0.1 * np.diag(np.cosh(x))
    np.testing.assert_allclose(f_vjp(x_bar)[1], np.linalg.solve(H, x_bar), rtol=1e-9)


def test_projected_gradient_box_quadratic(rng):
    d = np.array([1.0, 2.0, 0.5, 3.0])
    a = np.array([0.5, 2.0, -1.0, 0.7])  # x* = clip(a, 0, 1): active, active, active, free
    lo, hi = np.zeros(4), np.ones(4)
    F = projected_gradient_fixed_point(lambda x, a_, lo_, hi_: 0.5 * anp.sum(d * (x - a_) ** 2),
                                       lambda y, a_, lo_, hi_: projection_box(y, lo_, hi_),
                                       stepsize=0.25)

    @custom_root(F)
    def solve_box(init, a_, lo_, hi_):
        return np.clip(a_, lo_, hi_)  # separable: the minimiser is the clipped target

    x, f_vjp = ds.vjp(solve_box, np.zeros(4), a, lo, hi)
    np.testing.assert_allclose(F(x, a, lo, hi), 0.0, atol=1e-15)  # x* is a fixed point
    _, a_bar, lo_bar, hi_bar = f_vjp(np.ones(4))
    np.testing.assert_allclose(a_bar, [1.0, 0.0, 0.0, 1.0], atol=1e-10)
    np.testing.assert_allclose(lo_bar, [0.0, 0.0, 1.0, 0.0], atol=1e-10)
    np.testing.assert_allclose(hi_bar, [0.0, 1.0, 0.0, 0.0], atol=1e-10)


def test_proximal_gradient_lasso_matches_finite_differences(rng):
    A = rng.standard_normal((20, 5))
    b = rng.standard_normal(20)
    # prox(y, stepsize, *theta) receives every θ = (lam, b_); it uses lam only
    soft = lambda y, s, lam, *_: anp.sign(y) * anp.maximum(anp.abs(y) - s * lam, 0.0)  # noqa: E731
    L = np.linalg.norm(A, 2) ** 2
    F = proximal_gradient_fixed_point(lambda x, lam, b_: 0.5 * anp.sum((A @ x - b_) ** 2),
                                      soft, stepsize=1.0 / L)

    @custom_root(F)
    def lasso(init, lam, b_):
        x = init
        for _ in range(20000):  # ISTA
            x = soft(x - (A.T @ (A @ x - b_)) / L, 1.0 / L, lam)
        return x

    lam = np.array(3.0)
    x, f_vjp = ds.vjp(lasso, np.zeros(5), lam, b)
    assert 0 < np.count_nonzero(x) < 5  # some coordinates at zero: the prox is active
    x_bar = rng.standard_normal(5)
    _, lam_bar, b_bar = f_vjp(x_bar)
    db = rng.standard_normal(20)
    fd = central_difference(lambda t: x_bar @ lasso(x, lam, b + t * db), 0.0, 1.0, h=1e-5)
    np.testing.assert_allclose(b_bar @ db, fd, rtol=1e-6)
    fd_lam = central_difference(lambda t: x_bar @ lasso(x, lam + t, b), 0.0, 1.0, h=1e-5)
    np.testing.assert_allclose(lam_bar, fd_lam, rtol=1e-6)


# ------------------------------------------------------------------------------------------
# projections
# ------------------------------------------------------------------------------------------
def test_projections_values(xp, rng):
    xn = rng.standard_normal(7) * 2
    x = xp.asarray(xn)
    assert_close(projection_nonnegative(x), np.maximum(xn, 0), xp=xp)
    assert_close(projection_box(x, -0.5, 1.0), np.clip(xn, -0.5, 1.0), xp=xp)
    norm = np.linalg.norm(xn)
    assert_close(projection_ball(x, 1.5), xn * min(1.0, 1.5 / norm), xp=xp)
    assert_close(projection_ball(x * 0.0, 1.5), np.zeros(7), xp=xp)
    s = to_numpy(projection_simplex(x, 2.0))
    assert s.min() >= 0 and np.isclose(s.sum(), 2.0)
    # optimality: the projection minimises ||s - x|| over the simplex; compare with the
    # KKT characterisation s = max(x - tau, 0)
    tau = (xn[s > 0].sum() - 2.0) / np.count_nonzero(s)
    np.testing.assert_allclose(s, np.maximum(xn - tau, 0.0), atol=1e-12)


@pytest.mark.parametrize("name", ["box", "ball", "simplex", "nonnegative"])
def test_projection_jacobians_match_finite_differences(rng, name):
    proj = {
        "box": lambda v: projection_box(v, -0.5, 0.5),
        "ball": lambda v: projection_ball(v, 1.0),
        "simplex": lambda v: projection_simplex(v, 1.0),
        "nonnegative": projection_nonnegative,
    }[name]
    x = rng.standard_normal(6)
    w = rng.standard_normal(6)
    g = autograd.grad(lambda v: anp.sum(w * proj(v)))(x)
    d = rng.standard_normal(6)
    np.testing.assert_allclose(g @ d, central_difference(lambda v: w @ proj(v), x, d),
                               rtol=1e-6, atol=1e-9)


def test_projection_bad_sets():
    with pytest.raises(ValueError, match="projection_box: lower > upper"):
        projection_box(np.zeros(2), 1.0, 0.0)
    with pytest.raises(ValueError, match="projection_box: lower or upper contains NaN"):
        projection_box(np.zeros(2), np.nan, 1.0)
    with pytest.raises(ValueError, match="projection_ball: radius must be > 0"):
        projection_ball(np.zeros(2), -1.0)
    with pytest.raises(TypeError, match="projection_ball: radius must be a finite real"):
        projection_ball(np.zeros(2), True)
    with pytest.raises(ValueError, match="projection_simplex: value must be"):
        projection_simplex(np.zeros(2), 0.0)
    with pytest.raises(ValueError, match="projection_simplex: x has shape .0,. with no entries"):
        projection_simplex(np.zeros(0))


# ------------------------------------------------------------------------------------------
# projections: NaN propagates, the result stays on the set at any scale and dtype
# ------------------------------------------------------------------------------------------
def test_projection_simplex_propagates_nan():
    """Old main returned [0, 0, 0] (off the simplex, and the NaN lost)."""
    assert np.all(np.isnan(projection_simplex(np.array([np.nan, 0.2, 0.3]))))
    assert np.all(np.isnan(projection_simplex(np.array([np.inf, 0.2, 0.3]))))
    g = autograd.grad(lambda v: anp.sum(np.arange(3.0) * projection_simplex(v)))(
        np.array([np.nan, 0.2, 0.3]))
    assert np.all(np.isnan(g))


def test_projections_propagate_nan_entrywise():
    x = np.array([np.nan, -1.0, 2.0])
    np.testing.assert_array_equal(projection_nonnegative(x), [np.nan, 0.0, 2.0])
    np.testing.assert_array_equal(projection_box(x, 0.0, 1.0), [np.nan, 0.0, 1.0])
    assert np.all(np.isnan(projection_ball(x, 1.0)))  # the norm couples every entry


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1e-30, 1e-3, 1.0, 1e9, 1e30])
def test_projection_simplex_stays_on_the_simplex_at_any_scale(rng, dtype, scale):
    """Old main: projection_simplex(1e9 * rand(5) as float32) was all zeros."""
    x = (scale * rng.random(5)).astype(dtype)
    for value in (1.0, 3.0):
        p = projection_simplex(x, value)
        assert p.dtype == dtype and p.shape == x.shape
        assert np.all(p >= 0)
        np.testing.assert_allclose(p.sum(dtype=np.float64), value,
                                   rtol=4 * np.finfo(dtype).eps)
    if scale >= 1e9:  # entries far apart: all the mass on the largest one
        np.testing.assert_array_equal(projection_simplex(x), np.eye(5, dtype=dtype)[x.argmax()])


def _norm(v):
    """||v|| in float64 without overflow (np.linalg.norm squares)."""
    v = v.astype(np.float64)
    s = np.abs(v).max()
    return s * np.linalg.norm(v / s) if s else 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_projection_ball_at_any_scale(rng, dtype):
    big = 1e30 if dtype == np.float32 else 1e200  # ||x||² overflows: old main returned 0
    for scale in (1e-30, 1.0, big):
        x = (scale * rng.standard_normal(6)).astype(dtype)
        p = projection_ball(x, 2.0)
        assert p.dtype == dtype
        norm = _norm(p)
        if _norm(x) > 2.0:
            np.testing.assert_allclose(norm, 2.0, rtol=4 * np.finfo(dtype).eps)
            np.testing.assert_allclose(p / norm, x / _norm(x), rtol=8 * np.finfo(dtype).eps)
        else:
            np.testing.assert_array_equal(p, x)
    # its VJP does not overflow either: d/dx of <w, P(x)> at a huge x is O(1/||x||)
    x = np.array([1e200, 3e200])
    g = autograd.grad(lambda v: anp.sum(np.array([0.0, 1.0]) * projection_ball(v)))(x)
    assert np.all(np.isfinite(g)) and np.abs(g).max() < 1e-199


def test_projections_follow_the_array_policy():
    np.testing.assert_allclose(projection_simplex(np.array([1, 2, 3])), [0.0, 0.0, 1.0])
    for bad in (np.zeros(3, dtype=np.float16), np.zeros(3, dtype=complex)):
        with pytest.raises(TypeError, match="projection_nonnegative: x has dtype"):
            projection_nonnegative(bad)
    with pytest.raises(TypeError, match="projection_simplex: x must be an array"):
        projection_simplex([0.1, 0.2])
    ro = np.array([0.3, -0.2, 0.9])
    ro.setflags(write=False)
    before = ro.copy()
    for fn in (projection_nonnegative, projection_simplex, projection_ball,
               lambda v: projection_box(v, 0.0, 0.5)):
        fn(ro)
        fn(np.array([[0.3, 9.0], [-0.2, 1.0]])[:, 0])  # non-contiguous
    np.testing.assert_array_equal(ro, before)


# ------------------------------------------------------------------------------------------
# bad input and non-convergence
# ------------------------------------------------------------------------------------------
def test_optimality_output_shape_mismatch_is_named(ridge_data):
    X, y, lam = ridge_data

    @custom_root(lambda w, lam_: (X.T @ (X @ w - y) + lam_ * w)[:4])
    def ridge(init, lam_):
        return np.linalg.solve(X.T @ X + np.diag(lam_), X.T @ y)

    _, f_vjp = ds.vjp(ridge, np.zeros(6), lam)
    with pytest.raises(ValueError, match=r"F returned shape \(4,\), but the solution x has "
                                         r"shape \(6,\)"):
        f_vjp(np.ones(6))


def test_solver_output_shape_mismatch_is_named():
    @custom_root(lambda x, a: x - a)
    def bad(init, a):
        return a[:2]

    with pytest.raises(ValueError, match=r"custom_root\(bad\): the solver returned \(2,\), but "
                                         r"init has shape \(3,\)"):
        bad(np.zeros(3), np.ones(3))


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"solve": "lu"}, ValueError, "solve must be one of 'cg', 'normal-cg', 'gmres'; got 'lu'"),
    ({"ridge": -1.0}, ValueError, "ridge must be >= 0"),
    ({"rtol": -1e-3}, ValueError, "rtol must be >= 0"),
    ({"rtol": float("nan")}, ValueError, "rtol must be finite"),
    ({"maxiter": 0}, ValueError, "maxiter must be >= 1"),
    ({"maxiter": True}, TypeError, "maxiter must be an integer >= 1 or None, got the bool"),
    ({"restart": 2.5}, TypeError, "restart must be an integer"),
    ({"throw": 1}, TypeError, "throw must be True or False"),
    ({"vjp": 3}, TypeError, "vjp must be a callable"),
    ({"solve": "normal-cg", "vjp": lambda x, t: None}, ValueError, "also pass jvp="),
])
def test_bad_configuration(kwargs, error, match):
    with pytest.raises(error, match=match):
        custom_root(lambda x: x, **kwargs)


def test_bad_callables():
    with pytest.raises(TypeError, match="optimality function must be callable"):
        custom_root(np.zeros(2))
    with pytest.raises(TypeError, match="fixed-point map must be callable"):
        custom_fixed_point("T")
    with pytest.raises(ValueError, match="stepsize must be > 0"):
        projected_gradient_fixed_point(lambda x: 0.0, projection_nonnegative, stepsize=0.0)
    with pytest.raises(ValueError, match="n .the number of primal variables. must be >= 1"):
        kkt_conditions(lambda x: 0.0, n=0)
    with pytest.raises(TypeError, match="n .the number of primal variables. must be an int"):
        kkt_conditions(lambda x: 0.0, n=True)


def test_kkt_stacked_size_mismatch():
    F = kkt_conditions(lambda x: anp.sum(x ** 2), n=2, eq=lambda x: anp.array([x[0] - 1.0]))
    with pytest.raises(ValueError, match=r"z has 4 entries, but \[x, ν, λ\] has n \+ p \+ m"):
        F(np.zeros(4))


def test_cg_on_non_symmetric_jacobian_is_refused(rng):
    M, b = _affine_map(rng)

    @custom_fixed_point(lambda x, b_: M @ x + b_, solve="cg")
    def fp(init, b_):
        return np.linalg.solve(np.eye(5) - M, b_)

    _, f_vjp = ds.vjp(fp, np.zeros(5), b)
    with pytest.raises(ValueError, match="not symmetric.*use solve='gmres'"):
        f_vjp(np.ones(5))


def test_cg_on_indefinite_jacobian_is_refused():
    D = np.diag([1.0, -2.0, 3.0])

    @custom_root(lambda x, a: D @ x - a, solve="cg")
    def lin(init, a):
        return np.linalg.solve(D, a)

    _, f_vjp = ds.vjp(lin, np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="not positive definite.*ridge"):
        f_vjp(np.array([1.0, 1.0, 1.0]))


@pytest.mark.parametrize("solve", SOLVES)
def test_non_convergence_warns_with_residual_and_advice(rng, solve):
    A = rng.standard_normal((30, 12))
    Q = A.T @ A + 1e-3 * np.eye(12)

    @custom_root(lambda x, c: Q @ x - c, solve=solve, maxiter=2)
    def lin(init, c):
        return np.linalg.solve(Q, c)

    _, f_vjp = ds.vjp(lin, np.zeros(12), rng.standard_normal(12))
    with pytest.warns(ds.ConvergenceWarning, match=r"relative residual .* ridge"):
        f_vjp(rng.standard_normal(12))


def test_ridge_regularises_a_singular_system():
    D = np.diag([1.0, 0.0])  # F = D x - a: singular in x[1]

    @custom_root(lambda x, a: D @ x - a, solve="cg", ridge=1e-8)
    def lin(init, a):
        return np.array([a[0], 0.0])

    _, f_vjp = ds.vjp(lin, np.zeros(2), np.array([2.0, 0.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a_bar = f_vjp(np.array([1.0, 0.0]))[1]
    np.testing.assert_allclose(a_bar, [1.0, 0.0], rtol=1e-7)


def test_positional_cotangent_only_for_bare_array_outputs():
    A = np.array([[2.0, 0.0], [0.0, 3.0]])
    _, f_vjp = ds.vjp(ds.linear.solve, A, np.ones(2))
    with pytest.raises(TypeError, match=r"pass cotangents by output name, e.g. vjp_fn\(x=g\)"):
        f_vjp(np.ones(2))
    lin = custom_root(lambda x, a: x - a)(lambda init, a: a)
    _, f_vjp = ds.vjp(lin, np.zeros(2), np.ones(2))
    with pytest.raises(TypeError, match="no differentiable output named"):
        f_vjp(x=np.ones(2))


def test_root_vjp_building_block():
    a = np.array([4.0, 9.0])
    (a_bar,) = root_vjp(lambda x, a_: x ** 2 - a_, np.sqrt(a), (a,), np.ones(2), solve="cg")
    np.testing.assert_allclose(a_bar, 1 / (2 * np.sqrt(a)), rtol=1e-10)
    with pytest.raises(ValueError, match="x_bar has shape"):
        root_vjp(lambda x, a_: x - a_, a, (a,), np.ones(3))


# ------------------------------------------------------------------------------------------
# built-in optimality conditions in any namespace: the gradient (and its VJP) written out
# ------------------------------------------------------------------------------------------
def test_stationarity_with_grad_and_hvp_any_namespace(xp, rng):
    """Ridge: ∇f = Xᵀ(Xw − y) + lam ⊙ w; hvp gives (XᵀXu + lam ⊙ u, w ⊙ u)."""
    Xn, yn = rng.standard_normal((20, 4)), rng.standard_normal(20)
    lamn = np.exp(rng.standard_normal(4) * 0.3)
    X, y, lam = (xp.asarray(a) for a in (Xn, yn, lamn))
    F = stationarity(grad=lambda w, lam_: X.T @ (X @ w - y) + lam_ * w,
                     hvp=lambda w, theta, u: (X.T @ (X @ u) + theta[0] * u, w * u))

    @custom_root(F, solve="cg")  # picks up F.vjp: no autograd involved
    def ridge(init, lam_):
        return xp.linalg.solve(X.T @ X + lam_[:, None] * xp.eye(4, dtype=X.dtype), X.T @ y)

    w_bar = rng.standard_normal(4)
    w, f_vjp = ds.vjp(ridge, xp.zeros(4, dtype=xp.float64), lam)
    assert_close(w, np.linalg.solve(Xn.T @ Xn + np.diag(lamn), Xn.T @ yn), xp=xp, rtol=1e-10)
    _, lam_bar = f_vjp(xp.asarray(w_bar))
    assert_close(lam_bar, ridge_closed_form(Xn, yn, lamn, w_bar)[0], xp=xp, rtol=1e-8)


def test_projected_gradient_with_grad_any_namespace(xp):
    """F = x − box(x − η∇f) evaluated in the inputs' namespace (zero at x* = clip(a))."""
    a = xp.asarray([0.5, 2.0, -1.0])
    F = projected_gradient_fixed_point(None, lambda v, a_: projection_box(v, 0.0, 1.0),
                                       stepsize=0.5, grad=lambda x, a_: x - a_)
    x_star = xp.asarray([0.5, 1.0, 0.0])
    assert_close(F(x_star, a), np.zeros(3), xp=xp, atol=1e-15)
    assert_close(F(xp.zeros(3, dtype=xp.float64), a), [-0.25, -1.0, 0.0], xp=xp)
    soft = lambda v, s, lam: v - xp.clip(v, -s * lam, s * lam)  # noqa: E731
    G = proximal_gradient_fixed_point(None, soft, 1.0, grad=lambda x, lam: x - 3.0)
    assert_close(G(xp.asarray([2.0]), 1.0), [0.0], xp=xp, atol=1e-15)  # lasso x* = 2


def test_optimality_conditions_need_f_or_grad():
    with pytest.raises(TypeError, match="stationarity: pass either f.*not neither"):
        stationarity()
    with pytest.raises(TypeError, match="not both"):
        projected_gradient_fixed_point(lambda x: x @ x, projection_nonnegative,
                                       grad=lambda x: 2 * x)
    with pytest.raises(TypeError, match="hvp must be a callable"):
        stationarity(grad=lambda x: x, hvp=1.0)


def test_fixed_point_and_kkt_with_user_vjp_any_namespace(xp, rng):
    """The affine fixed point and an equality-constrained QP through its KKT conditions,
    with hand-written VJPs, in every namespace (closed forms as in the NumPy tests)."""
    Mn, bn = _affine_map(rng)
    M, b = xp.asarray(Mn), xp.asarray(bn)

    def T(x, M_, b_):
        return M_ @ x + b_

    def T_vjp(x, theta):
        M_, b_ = theta
        return T(x, M_, b_), (lambda u: (M_.T @ u, u[:, None] * x[None, :], u))

    @custom_fixed_point(T, vjp=T_vjp)
    def iterate(init, M_, b_):
        x = init
        for _ in range(200):
            x = T(x, M_, b_)
        return x

    x, f_vjp = ds.vjp(iterate, xp.zeros(5, dtype=xp.float64), M, b)
    xn = np.linalg.solve(np.eye(5) - Mn, bn)
    assert_close(x, xn, xp=xp, rtol=1e-10)
    x_bar = rng.standard_normal(5)
    _, M_bar, b_bar = f_vjp(xp.asarray(x_bar))
    u = np.linalg.solve((np.eye(5) - Mn).T, x_bar)
    assert_close(b_bar, u, xp=xp, rtol=1e-8)
    assert_close(M_bar, np.outer(u, xn), xp=xp, rtol=1e-8, atol=1e-12)

    # min ½xᵀQx − cᵀx s.t. Ax = d: F(z, c) = [Qx − c + Aᵀν, Ax − d], z = [x, ν]
    n, p = 4, 2
    G = rng.standard_normal((n, n))
    Qn, An = G @ G.T + np.eye(n), rng.standard_normal((p, n))
    cn, dn = rng.standard_normal(n), rng.standard_normal(p)
    Kn = np.block([[Qn, An.T], [An, np.zeros((p, p))]])
    Q, A, d = xp.asarray(Qn), xp.asarray(An), xp.asarray(dn)

    def F(z, c):
        return xp.concat([Q @ z[:n] - c + A.T @ z[n:], A @ z[:n] - d])

    def F_vjp(z, theta):  # ∂F/∂z = K (symmetric), ∂F/∂c = [−I; 0]
        return F(z, *theta), (lambda u: (xp.concat([Q @ u[:n] + A.T @ u[n:], A @ u[:n]]),
                                         -u[:n]))

    @custom_root(F, vjp=F_vjp)
    def qp(init, c):
        return xp.linalg.solve(xp.asarray(Kn), xp.concat([c, d]))

    z, f_vjp = ds.vjp(qp, xp.zeros(n + p, dtype=xp.float64), xp.asarray(cn))
    assert_close(z, np.linalg.solve(Kn, np.concatenate([cn, dn])), xp=xp, rtol=1e-10)
    z_bar = rng.standard_normal(n + p)
    _, c_bar = f_vjp(xp.asarray(z_bar))
    assert_close(c_bar, np.linalg.solve(Kn, z_bar)[:n], xp=xp, rtol=1e-8)  # z = K⁻¹[c; d]


def test_projected_gradient_vjp_any_namespace(xp):
    """Box-constrained separable quadratic: x* = clip(a, 0, 1), dx*/da = 1 where free."""
    dn = np.array([1.0, 2.0, 0.5, 3.0])
    d = xp.asarray(dn)
    F = projected_gradient_fixed_point(
        None, lambda v, a_: projection_box(v, 0.0, 1.0), stepsize=0.25,
        grad=lambda x, a_: d * (x - a_),
        hvp=lambda x, theta, w: (d * w, -d * w),
        projection_vjp=lambda z, u, a_: xp.where((z > 0.0) & (z < 1.0), u, xp.zeros_like(u)))

    @custom_root(F)  # gmres on F.vjp: ∂F/∂x is not symmetric where the box is active
    def solve_box(init, a_):
        return xp.clip(a_, 0.0, 1.0)

    a = xp.asarray([0.5, 2.0, -1.0, 0.7])
    x, f_vjp = ds.vjp(solve_box, xp.zeros(4, dtype=xp.float64), a)
    assert_close(F(x, a), np.zeros(4), xp=xp, atol=1e-15)
    _, a_bar = f_vjp(xp.asarray([1.0, 2.0, 3.0, 4.0]))
    assert_close(a_bar, [1.0, 0.0, 0.0, 4.0], xp=xp, atol=1e-10)
    with pytest.raises(TypeError, match="go together"):
        projected_gradient_fixed_point(None, projection_nonnegative, grad=lambda x: x,
                                       hvp=lambda x, t, w: (w,))


# ------------------------------------------------------------------------------------------
# the solver contract: untraceable F, NaN cotangents, statuses, throw, fixed budgets
# ------------------------------------------------------------------------------------------
def _np_dot_ridge(rng):
    """Ridge regression with F written with np.dot (plain NumPy), the natural way."""
    A = rng.standard_normal((20, 5))
    b = rng.standard_normal(20)

    def F(x, lam):
        return np.dot(A.T, np.dot(A, x) - b) + lam * x

    def solver(init, lam):
        return np.linalg.solve(A.T @ A + lam * np.eye(5), A.T @ b)

    return F, solver


@pytest.mark.parametrize("solve", SOLVES)
def test_plain_numpy_F_is_refused_not_a_wrong_gradient(rng, solve):
    """Old main: d sum(x)/d lam came out -0.35 (only lam * x was traced), not -0.10."""
    F, solver = _np_dot_ridge(rng)
    ridge = custom_root(F, solve=solve)(solver)
    _, f_vjp = ds.vjp(ridge, np.zeros(5), np.array(2.0))
    with pytest.raises(ds.NotTraceableError, match=r"custom_root\(solver\): autograd cannot "
                                                   r"trace the optimality function F \('F'\)"
                                                   r".*autograd\.numpy.*vjp="):
        f_vjp(np.ones(5))
    with pytest.raises(ds.NotTraceableError, match="root_vjp.*'F'"):
        root_vjp(F, solver(None, 2.0), (np.array(2.0),), np.ones(5), solve=solve)
    # the fixed-point form names the user's T
    T = lambda x, lam: x - F(x, lam)  # noqa: E731
    T.__name__ = "T"
    fp = custom_fixed_point(T)(solver)
    with pytest.raises(ds.NotTraceableError, match=r"'T'"):
        ds.vjp(fp, np.zeros(5), np.array(2.0))[1](np.ones(5))


def test_plain_numpy_F_through_the_autograd_adapter(rng):
    F, solver = _np_dot_ridge(rng)
    ridge = ds.to_autograd(custom_root(F)(solver))
    with pytest.raises(ds.NotTraceableError):
        autograd.grad(lambda lam: anp.sum(ridge(np.zeros(5), lam)))(np.array(2.0))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_root_vjp_nan_cotangent_gives_nan(bad):
    """Old main: a NaN cotangent stopped GMRES at once and gave a gradient of exactly 0."""
    a = np.array([4.0, 9.0])
    F = lambda x, a_, s: x ** 2 - a_ * s  # noqa: E731
    for solve in SOLVES:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning: NaN in, NaN out, as in ds.vjp
            grads, info = root_vjp(F, np.sqrt(a), (a, 1.0), np.array([bad, 1.0]), solve=solve,
                                   return_info=True)
        assert np.all(np.isnan(grads[0])) and grads[0].shape == (2,)
        assert grads[1] is None  # a Python float is not differentiated
        assert info.status is ds.Status.NONFINITE and not info.converged
    # through custom_root and ds.vjp too
    lin = custom_root(lambda x, a_: x ** 2 - a_)(lambda init, a_: np.sqrt(a_))
    _, f_vjp = ds.vjp(lin, np.zeros(2), a)
    assert np.all(np.isnan(f_vjp(np.array([bad, 0.0]))[1]))


def test_root_vjp_reports_its_status(ridge_data, rng):
    X, y, lam = ridge_data
    w = np.linalg.solve(X.T @ X + np.diag(lam), X.T @ y)
    grads, info = root_vjp(ridge_F, w, (lam, X, y), np.ones(6), solve="cg", return_info=True)
    assert isinstance(info, ds.implicit.ImplicitSolveInfo)
    assert info.status is ds.Status.SUCCESS and info.converged and info.n_iters <= 7
    np.testing.assert_allclose(grads[0], ridge_closed_form(X, y, lam, np.ones(6))[0],
                               rtol=1e-8)
    with pytest.raises(ds.MaxIterationsError, match="relative residual .* ridge") as err:
        root_vjp(ridge_F, w, (lam, X, y), rng.standard_normal(6), solve="cg", maxiter=1,
                 throw=True)
    assert err.value.result.status is ds.Status.MAX_ITERATIONS


@pytest.mark.parametrize("solve", SOLVES)
def test_custom_root_throw_raises_the_status_error(rng, solve):
    A = rng.standard_normal((30, 12))
    Q = A.T @ A + 1e-3 * np.eye(12)

    @custom_root(lambda x, c: Q @ x - c, solve=solve, maxiter=2, throw=True)
    def lin(init, c):
        return np.linalg.solve(Q, c)

    _, f_vjp = ds.vjp(lin, np.zeros(12), rng.standard_normal(12))
    with pytest.raises(ds.MaxIterationsError, match=r"relative residual .* ridge"):
        f_vjp(rng.standard_normal(12))


@pytest.mark.parametrize("solve", SOLVES)
def test_rtol_zero_is_a_fixed_budget(ridge_data, solve):
    """rtol = 0 used to be refused; now it runs maxiter iterations, without a warning."""
    X, y, lam = ridge_data
    ridge = ridge_solver(solve, rtol=0.0, maxiter=30)
    _, f_vjp = ds.vjp(ridge, np.zeros(6), lam, X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lam_bar = f_vjp(np.ones(6))[1]
    np.testing.assert_allclose(lam_bar, ridge_closed_form(X, y, lam, np.ones(6))[0],
                               rtol=1e-8)


def test_root_vjp_bad_input():
    F = lambda x, a: x - a  # noqa: E731
    a = np.ones(2)
    with pytest.raises(TypeError, match="root_vjp: x has dtype float16"):
        root_vjp(F, a.astype(np.float16), (a,), a)
    with pytest.raises(TypeError, match="root_vjp: x_bar must be an array"):
        root_vjp(F, a, (a,), [1.0, 1.0])
    with pytest.raises(ValueError, match="root_vjp: x contains NaN"):
        root_vjp(F, np.array([np.nan, 1.0]), (a,), a)
    with pytest.raises(ValueError, match="root_vjp: x has shape .0,. with no entries"):
        root_vjp(F, np.zeros(0), (a,), np.zeros(0))
    with pytest.raises(TypeError, match="theta must be the tuple"):
        root_vjp(F, a, a, a)
    (g,) = root_vjp(F, np.array([1, 2]), (a,), np.array([1, 1]))  # integers: float64
    assert g.dtype == np.float64
    np.testing.assert_allclose(g, [1.0, 1.0])


# ------------------------------------------------------------------------------------------
# atol: the implicit solve stops at ||r|| <= max(rtol ||b||, atol); rtol = atol = 0 is the
# fixed budget
# ------------------------------------------------------------------------------------------
@pytest.fixture
def spd_root(rng):
    """F(x, c) = Q x − c with a 40 × 40 SPD Q (cond ~ 60): tens of Krylov iterations."""
    A = rng.standard_normal((60, 40))
    Q = A.T @ A + 0.1 * np.eye(40)
    c = rng.standard_normal(40)
    return (lambda x, c_: Q @ x - c_), np.linalg.solve(Q, c), c, Q


@pytest.mark.parametrize("solve", SOLVES)
def test_atol_alone_stops_the_implicit_solve(spd_root, rng, solve):
    F, x, c, Q = spd_root
    x_bar = rng.standard_normal(40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loose, info = root_vjp(F, x, (c,), x_bar, solve=solve, rtol=0.0, atol=1e-6,
                               return_info=True)
        tight, tight_info = root_vjp(F, x, (c,), x_bar, solve=solve, rtol=0.0, atol=1e-12,
                                     return_info=True)
    assert info.status is ds.Status.SUCCESS and info.converged
    assert tight_info.status is ds.Status.SUCCESS and tight_info.converged
    assert info.residual_norm <= 1e-6 and tight_info.residual_norm <= 1e-12
    assert info.n_iters < tight_info.n_iters
    # c̄ = −(∂F/∂c)ᵀu = u with Q u = x̄ (Q symmetric); the loose solve meets its tolerance
    exact = np.linalg.solve(Q, x_bar)
    np.testing.assert_allclose(tight[0], exact, rtol=1e-9, atol=1e-10)
    assert np.linalg.norm(loose[0] - exact) < 1e-4


@pytest.mark.parametrize("solve", SOLVES)
@pytest.mark.parametrize("decorator", ["custom_root", "custom_fixed_point"])
def test_custom_root_and_fixed_point_take_atol(spd_root, rng, solve, decorator):
    F, x, c, Q = spd_root
    x_bar = rng.standard_normal(40)
    _, info = root_vjp(F, x, (c,), x_bar, solve=solve, rtol=0.0, atol=1e-6,
                       return_info=True)
    if decorator == "custom_root":
        make = custom_root(F, solve=solve, rtol=0.0, atol=1e-6, maxiter=info.n_iters)
    else:  # x = T(x) with T = x − F: the same system
        make = custom_fixed_point(lambda x_, c_: x_ - F(x_, c_), solve=solve, rtol=0.0,
                                  atol=1e-6, maxiter=info.n_iters)
    lin = make(lambda init, c_: np.linalg.solve(Q, c_))
    assert lin.settings.atol == 1e-6 and not lin.settings.fixed_budget
    _, f_vjp = ds.vjp(lin, np.zeros(40), c)
    with warnings.catch_warnings():  # atol met within those iterations: no warning
        warnings.simplefilter("error")
        c_bar = f_vjp(x_bar)[1]
    assert np.linalg.norm(Q @ c_bar - x_bar) <= 1e-6 * (1 + 1e-6)
    # rtol alone (the default 1e-10) does not stop within the iterations atol needed
    strict = custom_root(F, solve=solve, maxiter=info.n_iters)(
        lambda init, c_: np.linalg.solve(Q, c_))
    _, f_vjp = ds.vjp(strict, np.zeros(40), c)
    with pytest.warns(ds.ConvergenceWarning, match="relative residual"):
        f_vjp(x_bar)


@pytest.mark.parametrize("solve", SOLVES)
def test_rtol_and_atol_zero_is_the_fixed_budget(spd_root, rng, solve):
    F, x, c, _ = spd_root
    x_bar = rng.standard_normal(40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, info = root_vjp(F, x, (c,), x_bar, solve=solve, rtol=0.0, atol=0.0, maxiter=7,
                           return_info=True)
    assert info.status is ds.Status.MAX_ITERATIONS and not info.converged
    assert info.n_iters == 7 and "fixed budget" in info.message
    # without maxiter the budget is the documented default 10 n (CG used to refuse it)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, info = root_vjp(F, x, (c,), x_bar, solve=solve, rtol=0.0, atol=0.0,
                           return_info=True)
    assert info.status is ds.Status.MAX_ITERATIONS and info.n_iters == 400
    # rtol = 0 with atol > 0 is a tolerance, not a budget: running out of it is reported
    with pytest.warns(ds.ConvergenceWarning, match=r"relative residual .*atol=1e-14"):
        root_vjp(F, x, (c,), x_bar, solve=solve, rtol=0.0, atol=1e-14, maxiter=7)
    with pytest.raises(ds.MaxIterationsError, match=r"max\(rtol·\|\|b\|\|, atol\)"):
        root_vjp(F, x, (c,), x_bar, solve=solve, rtol=0.0, atol=1e-14, maxiter=7,
                 throw=True)


@pytest.mark.parametrize(("atol", "error", "match"), [
    (-1e-6, ValueError, "atol must be >= 0"),
    (float("nan"), ValueError, "atol must be finite"),
    (float("inf"), ValueError, "atol must be finite"),
    (True, TypeError, "atol must be a finite real number >= 0.0, got the bool True"),
    ("1e-6", TypeError, "atol must be a finite real number"),
])
def test_bad_atol_names_the_function(atol, error, match):
    F = lambda x, a: x - a  # noqa: E731
    a = np.ones(2)
    with pytest.raises(error, match=r"diffsolve\.implicit\.custom_root: " + match):
        custom_root(F, atol=atol)
    with pytest.raises(error, match=r"diffsolve\.implicit\.custom_fixed_point: " + match):
        custom_fixed_point(F, atol=atol)
    with pytest.raises(error, match=r"diffsolve\.implicit\.root_vjp: " + match):
        root_vjp(F, a, (a,), a, atol=atol)
