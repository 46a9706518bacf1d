"""The dtype-aware default ``rtol`` (``diffsolve._tolerance``) of every iterative family.

In float64 the default is the solver's historical value (1e-8, 1e-9 or 1e-10); in float32
it is ``64 eps`` (7.6e-6), which float32 can reach. A float32 solve at its default must
converge without a warning, with the reported error (and the true error, recomputed in
float64) within the reported tolerance; an explicit ``rtol`` is kept as given.
"""

from __future__ import annotations

import autograd.numpy as anp
import numpy as np
import pytest
import scipy.sparse as sp

import diffsolve as ds
from diffsolve._tolerance import EPS_FACTOR, default_rtol, resolve_rtol
from tests.helpers import poisson_2d

F32_RTOL = EPS_FACTOR * float(np.finfo(np.float32).eps)


def _true_rel_residual(A, x, b):
    A64 = A.toarray() if sp.issparse(A) else np.asarray(A)
    A64, x64, b64 = (np.asarray(v, dtype=np.float64) for v in (A64, x, b))
    return np.linalg.norm(b64 - A64 @ x64) / np.linalg.norm(b64)


def _spd(rng, n, cond):
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (Q * np.geomspace(1.0, cond, n)) @ Q.T


def test_rule_keeps_float64_defaults_and_explicit_values():
    import array_api_compat.numpy as xp
    for rtol64 in (1e-8, 1e-9, 1e-10):
        assert default_rtol(xp, xp.float64, rtol64) == rtol64
        assert default_rtol(xp, xp.float32, rtol64) == F32_RTOL
    assert default_rtol(xp, xp.float32, 1e-3) == 1e-3  # a loose default is never tightened
    assert resolve_rtol(xp, xp.float32, 1e-9, 1e-8) == 1e-9
    assert resolve_rtol(xp, xp.float32, 0.0, 1e-8) == 0.0  # a fixed budget stays one


def test_sinkhorn_uses_the_shared_rule():
    rng = np.random.default_rng(1)
    C = rng.random((30, 40)).astype(np.float32)
    a = np.full(30, 1 / 30, dtype=np.float32)
    b = np.full(40, 1 / 40, dtype=np.float32)
    res = ds.ot.sinkhorn(a, b, C, 0.1)
    assert res.converged and float(res.error) <= F32_RTOL * float(a.sum(dtype=np.float64))


PROBLEMS = [("poisson", m) for m in (8, 16, 32)] + [("spd", n) for n in (50, 200)]


def _problem(kind, size, dtype):
    rng = np.random.default_rng(size)
    A = poisson_2d(size) if kind == "poisson" else _spd(rng, size, 100.0)
    b = rng.standard_normal(A.shape[0])
    return A.astype(dtype), b.astype(dtype)


@pytest.mark.parametrize(("method", "kind", "size"), [
    (method, kind, size) for method in ("cg", "pcg", "ssor-cg", "sor")
    for kind, size in PROBLEMS if method != "sor" or kind == "poisson"])  # SOR: grid only
def test_linear_solve_float32_default_converges_within_its_tolerance(method, kind, size):
    A, b = _problem(kind, size, np.float32)
    res = ds.linear.solve(A, b, method=method)  # a warning fails the test
    assert res.converged and res.status is ds.Status.SUCCESS
    bound = F32_RTOL * np.linalg.norm(b.astype(np.float64))
    assert float(np.max(res.residual_norm)) <= bound
    assert _true_rel_residual(A, res.x, b) <= F32_RTOL
    assert res.n_iters < 10 * A.shape[0]  # stopped on the tolerance, not the budget


@pytest.mark.parametrize("method", ["cg", "ssor-cg"])
def test_linear_solve_float32_explicit_rtol_is_kept(method):
    A, b = _problem("poisson", 16, np.float32)
    with pytest.warns(ds.ConvergenceWarning):
        res = ds.linear.solve(A, b, method=method, rtol=1e-9)
    assert not res.converged


@pytest.mark.parametrize("method", ["cg", "ssor-cg", "direct"])
def test_linear_solve_float64_default_is_unchanged(method):
    A, b = _problem("poisson", 16, np.float64)
    x_default = ds.linear.solve(A, b, method=method).x
    x_old = ds.linear.solve(A, b, method=method, rtol=1e-8).x
    assert np.array_equal(x_default, x_old)


@pytest.mark.parametrize("name", ["cg", "minres", "gmres"])
@pytest.mark.parametrize(("kind", "size"), PROBLEMS[:2] + PROBLEMS[3:4])
def test_krylov_float32_default_converges_within_its_tolerance(name, kind, size):
    A, b = _problem(kind, size, np.float32)
    res = getattr(ds.krylov, name)(A, b)
    assert res.converged and res.status is ds.Status.SUCCESS
    assert _true_rel_residual(A, res.x, b) <= F32_RTOL
    res64 = getattr(ds.krylov, name)(A.astype(np.float64), b.astype(np.float64))
    old64 = getattr(ds.krylov, name)(A.astype(np.float64), b.astype(np.float64), rtol=1e-8)
    assert np.array_equal(res64.x, old64.x) and res64.n_iters == old64.n_iters


def test_krylov_float32_explicit_rtol_is_kept():
    A, b = _problem("spd", 50, np.float32)
    res = ds.krylov.cg(A, b, rtol=1e-9)
    assert not res.converged  # below the float32 floor: reported, not silently loosened


def _ot_problem(n, dtype, seed):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, 2)), rng.normal(size=(n, 2)) + 1
    C = ((x[:, None] - y[None]) ** 2).sum(-1)
    C /= C.max()
    a = np.full(n, 1 / n)
    return a.astype(dtype), a.astype(dtype), C.astype(dtype)


@pytest.mark.parametrize(("n", "eps"), [(60, 1e-2), (60, 1e-3), (200, 1e-3)])
def test_sinkhorn_newton_sparse_float32_default_converges(n, eps):
    a, b, C = _ot_problem(n, np.float32, n)
    res = ds.ot.sinkhorn_newton_sparse(a, b, C, eps)
    assert res.converged and float(res.error) <= F32_RTOL * float(a.sum(dtype=np.float64))


def test_sinkhorn_newton_sparse_float64_default_and_explicit_float32_rtol():
    a, b, C = _ot_problem(60, np.float64, 0)
    new = ds.ot.sinkhorn_newton_sparse(a, b, C, 1e-3)
    old = ds.ot.sinkhorn_newton_sparse(a, b, C, 1e-3, rtol=1e-9)
    assert np.array_equal(new.f, old.f) and new.n_iters == old.n_iters
    a32, b32, C32 = (v.astype(np.float32) for v in (a, b, C))
    with pytest.warns(ds.ConvergenceWarning):
        res = ds.ot.sinkhorn_newton_sparse(a32, b32, C32, 1e-3, rtol=1e-9, maxiter=30)
    assert not res.converged


def _ridge(dtype, **options):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((25, 6)).astype(dtype)
    y = rng.standard_normal(25).astype(dtype)
    lam = np.exp(rng.standard_normal(6) * 0.5).astype(dtype)

    def F(w, lam, X, y):
        return X.T @ (X @ w - y) + lam * w

    @ds.implicit.custom_root(F, solve="gmres", **options)
    def ridge(init, lam, X, y):
        return np.linalg.solve(X.T @ X + np.diag(lam), X.T @ y)

    w, f_vjp = ds.vjp(ridge, np.zeros(6, dtype=dtype), lam, X, y)
    H = (X.T @ X + np.diag(lam)).astype(np.float64)
    w_bar = np.ones(6, dtype=dtype)
    u = np.linalg.solve(H, w_bar.astype(np.float64))
    return f_vjp(w_bar)[1], -u * np.asarray(w, dtype=np.float64)


def test_implicit_float32_default_gradient_without_warning():
    lam_bar, closed = _ridge(np.float32)  # a warning (inexact gradient) fails the test
    assert lam_bar.dtype == np.float32
    np.testing.assert_allclose(lam_bar, closed, rtol=1e-3)


def test_implicit_float32_explicit_rtol_is_kept_and_float64_unchanged():
    with pytest.warns(ds.ConvergenceWarning, match="rtol=1e-10"):
        _ridge(np.float32, rtol=1e-10)
    new, _ = _ridge(np.float64)
    old, _ = _ridge(np.float64, rtol=1e-10)
    assert np.array_equal(new, old)


def _bilevel(dtype, **options):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((40, 8)).astype(dtype)
    Xv = rng.standard_normal((30, 8)).astype(dtype)
    y = rng.standard_normal(40).astype(dtype)
    yv = rng.standard_normal(30).astype(dtype)
    theta = (0.5 * rng.standard_normal(8)).astype(dtype)

    def inner(t, w):
        return 0.5 * anp.sum((X @ w - y) ** 2) + 0.5 * anp.sum(anp.exp(t) * w ** 2)

    def outer(t, w):
        return 0.5 * anp.sum((Xv @ w - yv) ** 2)

    H = X.T @ X + np.diag(np.exp(theta))
    w = np.linalg.solve(H, X.T @ y).astype(dtype)
    return ds.bilevel.hypergradient(outer, inner, theta, w, return_info=True, **options)


def test_hypergradient_float32_default_converges_within_its_tolerance():
    grad, info = _bilevel(np.float32)
    assert info.converged and info.status is ds.Status.SUCCESS
    assert info.residual_norm is not None
    assert np.all(np.isfinite(grad))


def test_hypergradient_float32_explicit_rtol_is_kept_and_float64_unchanged():
    with pytest.warns(ds.ConvergenceWarning):
        _, info = _bilevel(np.float32, rtol=1e-10)
    assert not info.converged
    new, _ = _bilevel(np.float64)
    old, _ = _bilevel(np.float64, rtol=1e-10)
    assert np.array_equal(new, old)
