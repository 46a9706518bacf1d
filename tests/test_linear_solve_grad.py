"""Backward rule of diffsolve.linear.solve against central finite differences (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import diffsolve as ds
from tests.helpers import (
    LINEAR_GRAD_OPTIONS,
    central_difference,
    poisson_2d,
    spd_matrix,
    to_numpy,
)

solve = ds.linear.solve
OPTS = LINEAR_GRAD_OPTIONS
METHODS = list(OPTS)


def _problem(rng, kind, n_rhs):
    if kind == "dense":
        A = spd_matrix(rng, 10, cond=20.0)
    else:
        A = poisson_2d(4, shift=0.3)
        A.data = A.data * (1.0 + 0.1 * rng.random(A.nnz))  # keep SPD, break regularity
        A = ((A + A.T) * 0.5).tocsr()
        A.sort_indices()
    n = A.shape[0]
    b = rng.standard_normal(n if n_rhs is None else (n, n_rhs))
    w = rng.standard_normal(b.shape)  # loss weights: L = sum(w * x)
    return A, b, w


def _directional_fd(A, b, w, dA, db, method):
    def loss(t):
        At = A + t * dA
        return float(np.sum(w * solve(At, b + t * db, method=method, **OPTS[method]).x))

    return central_difference(loss, 0.0, 1.0, h=1e-6)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["dense", "sparse"])
@pytest.mark.parametrize("n_rhs", [None, 3])
def test_vjp_matches_finite_differences(rng, method, kind, n_rhs):
    A, b, w = _problem(rng, kind, n_rhs)
    _, f_vjp = ds.vjp(solve, A, b, method=method, **OPTS[method])
    A_bar, b_bar = f_vjp(x=w)
    db = rng.standard_normal(b.shape)
    if kind == "dense":
        dA = rng.standard_normal(A.shape)
        dA = dA + dA.T  # CG needs the perturbed matrix to stay symmetric
        predicted = np.sum(A_bar * dA) + np.sum(b_bar * db)
    else:
        assert sp.issparse(A_bar) and A_bar.nnz == A.nnz
        np.testing.assert_array_equal(A_bar.indices, A.indices)
        dA = A.copy()
        dA.data = rng.standard_normal(A.nnz)
        dA = ((dA + dA.T) * 0.5).tocsr()
        dA.sort_indices()
        predicted = np.sum(A_bar.data * dA.data) + np.sum(b_bar * db)
    fd = _directional_fd(A, b, w, dA, db, method)
    np.testing.assert_allclose(predicted, fd, rtol=1e-6, atol=1e-9)


def test_dense_gradient_is_minus_lambda_x_transpose(rng):
    A, b, w = _problem(rng, "dense", None)
    res, f_vjp = ds.vjp(solve, A, b)
    A_bar, b_bar = f_vjp(x=w)
    lam = np.linalg.solve(A.T, w)
    np.testing.assert_allclose(b_bar, lam, rtol=1e-10)
    np.testing.assert_allclose(A_bar, -np.outer(lam, res.x), rtol=1e-10)


def test_nonsymmetric_direct_uses_the_transpose(rng):
    A = rng.standard_normal((6, 6)) + 6 * np.eye(6)
    b = rng.standard_normal(6)
    w = rng.standard_normal(6)
    _, f_vjp = ds.vjp(solve, A, b)
    A_bar, b_bar = f_vjp(x=w)
    for i, j in [(0, 1), (3, 2), (5, 5)]:
        dA = np.zeros_like(A)
        dA[i, j] = 1.0
        fd = central_difference(lambda t, dA=dA: float(w @ np.linalg.solve(A + t * dA, b)),
                                0.0, 1.0)
        np.testing.assert_allclose(A_bar[i, j], fd, rtol=1e-6)
    S = sp.csr_matrix(A)
    _, f_sparse = ds.vjp(solve, S, b)
    A_bar_s, b_bar_s = f_sparse(x=w)
    np.testing.assert_allclose(A_bar_s.toarray(), A_bar, rtol=1e-9)
    np.testing.assert_allclose(b_bar_s, b_bar, rtol=1e-9)


def test_vjp_in_standard_namespace(xp, rng):
    """The dense rule is standard-only: array_api_strict gives the NumPy answer."""
    A, b, w = _problem(rng, "dense", 2)
    for method in METHODS:
        _, f_np = ds.vjp(solve, A, b, method=method, **OPTS[method])
        _, f_xp = ds.vjp(solve, xp.asarray(A), xp.asarray(b), method=method, **OPTS[method])
        for got, want in zip(f_xp(x=xp.asarray(w)), f_np(x=w)):
            np.testing.assert_allclose(to_numpy(got), want, rtol=1e-8, atol=1e-12)


def test_missing_cotangents_count_as_zero(rng):
    A, b, _ = _problem(rng, "sparse", None)
    _, f_vjp = ds.vjp(solve, A, b)
    A_bar, b_bar = f_vjp()
    assert A_bar.nnz == A.nnz and not np.any(A_bar.data) and not np.any(b_bar)


def test_vjp_can_be_called_repeatedly_and_keeps_dtype(rng):
    A, b, w = _problem(rng, "dense", None)
    A32, b32 = A.astype(np.float32), b.astype(np.float32)
    _, f_vjp = ds.vjp(solve, A32, b32)
    first = f_vjp(x=w.astype(np.float32))
    second = f_vjp(x=w.astype(np.float32))
    for g1, g2 in zip(first, second):
        assert g1.dtype == np.float32
        np.testing.assert_array_equal(g1, g2)


def test_csr_argument_gets_a_csr_cotangent(rng):
    A, b, w = _problem(rng, "sparse", None)
    C = ds.CSR.from_sparse(A)
    _, f_vjp = ds.vjp(solve, C, b)
    C_bar, _ = f_vjp(x=w)
    assert isinstance(C_bar, ds.CSR) and C_bar.indices is C.indices
    _, f_ref = ds.vjp(solve, A, b)
    np.testing.assert_allclose(C_bar.data, f_ref(x=w)[0].data, rtol=1e-12)


def test_linear_operator_gets_no_cotangent(rng):
    import scipy.sparse.linalg as spla

    A, b, w = _problem(rng, "sparse", None)
    _, f_vjp = ds.vjp(solve, spla.aslinearoperator(A), b, method="cg", rtol=1e-12)
    A_bar, b_bar = f_vjp(x=w)
    assert A_bar is None
    np.testing.assert_allclose(b_bar, spla.spsolve(A.T.tocsc(), w), rtol=1e-8)


def test_bad_cotangents_are_refused(rng):
    A, b, _ = _problem(rng, "dense", None)
    _, f_vjp = ds.vjp(solve, A, b)
    with pytest.raises(TypeError, match=r"no differentiable output named \['residual_norm'\]"):
        f_vjp(residual_norm=np.ones(1))
    with pytest.raises(ValueError, match=r"cotangent x= has shape \(3,\).*shape \(10,\)"):
        f_vjp(x=np.ones(3))
    with pytest.raises(TypeError, match="diffsolve.vjp: fn must be a diffsolve solver"):
        ds.vjp(np.linalg.solve, A, b)


def test_nonconverging_adjoint_warns(rng):
    """A forward solve that converged (b an eigenvector: one CG step), followed by an
    adjoint that needs many more than the same budget: the adjoint's failure is
    reported, not hidden."""
    A = np.diag(np.arange(1.0, 41.0))
    b = np.zeros(40)
    b[3] = 1.0
    res, f_vjp = ds.vjp(solve, A, b, method="cg", rtol=1e-10, maxiter=2)
    assert res.converged and res.n_iters == 1
    with pytest.warns(ds.ConvergenceWarning, match="the adjoint solve"):
        f_vjp(x=rng.standard_normal(40))
    _, f_vjp = ds.vjp(solve, A, b, method="cg", rtol=1e-10, maxiter=2, throw=True)
    with pytest.raises(ds.MaxIterationsError, match="the adjoint solve"):
        f_vjp(x=rng.standard_normal(40))


@pytest.mark.parametrize("method", ["cg", "pcg", "ssor-cg", "sor", "dcdm", "direct"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_cotangent_gives_nan_gradients(method, bad):
    """Reproduction (issue 11): a NaN or inf cotangent through the CG-family adjoint gave
    a gradient of exactly 0; it must give NaN."""
    A = poisson_2d(8, shift=0.1)
    kw = {"omega": 1.5} if method in ("sor", "ssor-cg") else {}
    _, f_vjp = ds.vjp(solve, A.toarray(), np.ones(64), method=method, **kw)
    x_bar = np.zeros(64)
    x_bar[0] = bad
    A_bar, b_bar = f_vjp(x=x_bar)
    assert np.isnan(b_bar).any() and np.isnan(A_bar).any()
    assert not np.any(b_bar == 0)


@pytest.mark.parametrize("method", ["cg", "pcg", "ssor-cg", "sor", "dcdm", "direct"])
def test_backward_rule_itself_gives_nan_for_nan_cotangent(method):
    """Not only the autodiff core: the adjoint solve itself returns NaN for a NaN
    right-hand side (implicit.root_vjp and bilevel call the solves directly)."""
    A = poisson_2d(8, shift=0.1)
    kw = {"omega": 1.5} if method in ("sor", "ssor-cg") else {}
    res, residuals = solve.fwd(A, np.ones(64), method=method, **kw)
    from diffsolve._autodiff import BackwardContext

    ctx = BackwardContext((A, np.ones(64)), {"method": method, **kw}, res, residuals)
    x_bar = np.full(64, np.nan)
    _, b_bar = solve.bwd(ctx, {"x": x_bar})  # the rule itself, not the core's NaN fill
    assert np.isnan(b_bar).all()
    # and with residuals=None (the forward ran elsewhere, e.g. JAX under jit)
    ctx = BackwardContext((A, np.ones(64)), {"method": method, **kw}, res, None)
    _, b_bar = solve.bwd(ctx, {"x": x_bar})
    assert np.isnan(b_bar).all()


@pytest.mark.gpu
@pytest.mark.parametrize("method", METHODS)
def test_gpu_sparse_vjp_matches_cpu(rng, method):
    """CPU/GPU twins: the CUDA sampled-outer kernel and cuSOLVER/CG adjoints."""
    cupy = pytest.importorskip("cupy")
    import cupyx.scipy.sparse as csp

    A, b, w = _problem(rng, "sparse", 2)
    res_c, f_cpu = ds.vjp(solve, A, b, method=method, **OPTS[method])
    res_g, f_gpu = ds.vjp(solve, csp.csr_matrix(A), cupy.asarray(b), method=method,
                          **OPTS[method])
    np.testing.assert_allclose(cupy.asnumpy(res_g.x), res_c.x, rtol=1e-9)
    (Ac, bc), (Ag, bg) = f_cpu(x=w), f_gpu(x=cupy.asarray(w))
    assert isinstance(Ag, csp.csr_matrix) and isinstance(bg, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(Ag.data), Ac.data, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(cupy.asnumpy(bg), bc, rtol=1e-8, atol=1e-12)


def test_sor_adjoint_on_a_nonsymmetric_matrix(rng):
    """SOR accepts non-symmetric (diagonally dominant) A; its adjoint relaxes on Aᵀ."""
    n = 12
    A = rng.standard_normal((n, n)) * 0.3 + np.diag(np.full(n, 4.0))
    b = rng.standard_normal(n)
    w = rng.standard_normal(n)
    for kind in ("dense", "sparse"):
        A_in = A if kind == "dense" else sp.csr_matrix(A)
        _, f_vjp = ds.vjp(solve, A_in, b, **{"method": "sor", **OPTS["sor"]})
        A_bar, b_bar = f_vjp(x=w)
        np.testing.assert_allclose(b_bar, np.linalg.solve(A.T, w), rtol=1e-9)
        lam = np.linalg.solve(A.T, w)
        dense_bar = A_bar if kind == "dense" else A_bar.toarray()
        np.testing.assert_allclose(dense_bar, -np.outer(lam, np.linalg.solve(A, b)), rtol=1e-8,
                                   atol=1e-12)
