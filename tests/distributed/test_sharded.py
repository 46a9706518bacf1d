"""The sharded point-cloud Sinkhorn on a LocalCluster equals ``ot.sinkhorn`` on the same
problem, and its gradients equal ``ot.sinkhorn``'s (chain rule through C) and central
finite differences."""

from __future__ import annotations

import autograd.numpy as anp
import pytest

pytest.importorskip("dask.array")
pytest.importorskip("dask.distributed")

import dask
import dask.array as da
import numpy as np

import diffsolve as ds
import diffsolve.distributed as dd
from diffsolve.kernels.cpu.ot_blocks import sqeuclidean_apply, sqeuclidean_lse


def _clouds(n=23, m=17, d=2, seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.random((n, d)), rng.random((m, d))
    a = rng.random(n) + 0.5
    b = rng.random(m) + 0.5
    return x, y, a / a.sum(), b / b.sum()


def _cost(x, y):
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


def _dask(x, y, a, b, kx=12, ky=9):
    return (da.from_array(x, chunks=(kx, x.shape[1])), da.from_array(y, chunks=(ky, y.shape[1])),
            da.from_array(a, chunks=kx), da.from_array(b, chunks=ky))


def user_cost(P, Q):
    return anp.sum((P[:, None, :] - Q[None, :, :]) ** 2, axis=-1)


def test_kernels_against_dense_reference():
    x, y, a, b = _clouds()
    eps = 0.07
    C = _cost(x, y)
    w = np.log(b)
    out = sqeuclidean_lse(x, y, w, eps, np.empty(len(x)))
    ref = eps * np.log(np.exp((w[None, :] - C) / eps).sum(1))
    np.testing.assert_allclose(out, ref, rtol=1e-13)
    u = np.log(a)
    r, PY = sqeuclidean_apply(x, y, u, w, eps, np.empty(len(x)), np.empty_like(x))
    K = np.exp((u[:, None] + w[None, :] - C) / eps)
    np.testing.assert_allclose(r, K.sum(1), rtol=1e-13)
    np.testing.assert_allclose(PY, K @ y, rtol=1e-13)
    with pytest.raises(ValueError, match="same d"):
        sqeuclidean_lse(x, y[:, :1].copy(), w, eps, np.empty(len(x)))


def _chain_rule(x, y, a, b, eps, w, **kw):
    """ot.sinkhorn's gradients of w * cost, carried to the points through
    C_ij = ||x_i - y_j||^2."""
    _, f_vjp = ds.vjp(ds.ot.sinkhorn, a, b, _cost(x, y), eps, **kw)
    a_bar, b_bar, C_bar = f_vjp(cost=w)
    return (2 * (C_bar.sum(1)[:, None] * x - C_bar @ y),
            2 * (C_bar.sum(0)[:, None] * y - C_bar.T @ x), a_bar, b_bar)


def _check_equal(res, ref, X, Y):
    assert res.converged and res.status is ds.Status.SUCCESS
    assert res.n_iters == ref.n_iters
    assert isinstance(res.f, da.Array) and res.f.chunks == X.chunks[:1]
    np.testing.assert_allclose(res.f.compute(), ref.f, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.g.compute(), ref.g, rtol=0, atol=1e-12)
    assert abs(res.cost - ref.cost) < 1e-12
    assert abs(res.error - ref.error) < 1e-12


def test_equals_ot_sinkhorn_with_gradients(client):
    x, y, a, b = _clouds()
    eps = 0.2
    ref = ds.ot.sinkhorn(a, b, _cost(x, y), eps, rtol=1e-11, kernel="lse", eps_scaling=3)
    # three row blocks of X with a fan-in of 2: the tree has two levels
    X, Y, A, B = _dask(x, y, a, b, kx=8)
    res = dd.sinkhorn_pointcloud(X, Y, eps, A, B, rtol=1e-11, eps_scaling=3, split_every=2)
    _check_equal(res, ref, X, Y)
    plan = res.plan
    assert plan.chunks == (X.chunks[0], Y.chunks[0])
    np.testing.assert_allclose(plan.compute(), ref.plan, atol=1e-14)
    g = res.gradients(1.5)
    assert all(isinstance(v, da.Array) for v in g)
    want = _chain_rule(x, y, a, b, eps, 1.5, rtol=1e-11, eps_scaling=3)
    for got, w in zip(g, want):
        np.testing.assert_allclose(got.compute(), w, rtol=0, atol=1e-10)


def test_equals_ot_sinkhorn_local_scheduler():
    x, y, a, b = _clouds(seed=5)
    ref = ds.ot.sinkhorn(a, b, _cost(x, y), 0.05, rtol=1e-11, kernel="lse")
    X, Y, A, B = _dask(x, y, a, b, kx=5, ky=4)
    with dask.config.set(scheduler="synchronous"):
        res = dd.sinkhorn_pointcloud(X, Y, 0.05, A, B, rtol=1e-11)
        _check_equal(res, ref, X, Y)


def test_user_cost_function(client):
    x, y, a, b = _clouds(seed=1)
    eps = 0.3
    ref = ds.ot.sinkhorn(a, b, _cost(x, y), eps, rtol=1e-11, kernel="lse")
    X, Y, A, B = _dask(x, y, a, b)
    res = dd.sinkhorn_pointcloud(X, Y, eps, A, B, cost=user_cost, rtol=1e-11)
    _check_equal(res, ref, X, Y)
    # gradients w.r.t. the points from autograd's VJP of the user cost, block pair by pair
    want = _chain_rule(x, y, a, b, eps, 1.0, rtol=1e-11)
    for got, w in zip(res.gradients(), want):
        np.testing.assert_allclose(got.compute(), w, rtol=0, atol=1e-10)


def test_gradients_against_finite_differences():
    # the maths, not the cluster: the local synchronous scheduler runs the same graphs
    with dask.config.set(scheduler="synchronous"):
        _finite_differences()


def _finite_differences():
    x, y, a, b = _clouds(n=9, m=8, seed=3)
    eps = 0.2
    _, _, A, B = _dask(x, y, a, b, 4, 3)

    def W(xx=x, yy=y, aa=A, bb=B):
        return dd.sinkhorn_pointcloud(da.from_array(xx, chunks=(4, 2)),
                                      da.from_array(yy, chunks=(3, 2)), eps, aa, bb,
                                      rtol=1e-14, maxiter=100_000).cost

    res = dd.sinkhorn_pointcloud(*_dask(x, y, a, b, 4, 3)[:2], eps, A, B, rtol=1e-14,
                                 maxiter=100_000)
    g = [v.compute() for v in res.gradients()]
    h = 1e-5
    for which, (i, k) in ((0, (2, 1)), (1, (5, 0))):
        base = (x, y)[which]
        p, m_ = base.copy(), base.copy()
        p[i, k] += h
        m_[i, k] -= h
        args = ({"xx": p}, {"xx": m_}) if which == 0 else ({"yy": p}, {"yy": m_})
        fd = (W(**args[0]) - W(**args[1])) / (2 * h)
        assert abs(fd - g[which][i, k]) < 1e-8
    # weights: a perturbation along a - mean keeps the total mass (the gradient is defined
    # up to a constant, the minimum-norm one is returned)
    v = np.zeros(9)
    v[[1, 6]] = [1.0, -1.0]
    fd = (W(aa=da.from_array(a + h * v, chunks=4)) -
          W(aa=da.from_array(a - h * v, chunks=4))) / (2 * h)
    assert abs(fd - g[2] @ v) < 1e-8


def test_status_and_warnings(client):
    x, y, a, b = _clouds(seed=4)
    X, Y, A, B = _dask(x, y, a, b)
    with pytest.warns(ds.ConvergenceWarning, match="MAX_ITERATIONS"):
        res = dd.sinkhorn_pointcloud(X, Y, 0.01, A, B, maxiter=6, check_every=3)
    assert res.status is ds.Status.MAX_ITERATIONS and not res.converged
    assert res.n_iters == 6
    with dask.config.set(scheduler="synchronous"):
        with pytest.raises(ds.MaxIterationsError):
            dd.sinkhorn_pointcloud(X, Y, 0.01, A, B, maxiter=2, throw=True)
        # fixed budget: exactly maxiter iterations, no warning
        res = dd.sinkhorn_pointcloud(X, Y, 0.05, A, B, rtol=0, atol=0, maxiter=3)
        assert res.n_iters == 3 and res.status is ds.Status.MAX_ITERATIONS
        seen = []
        res = dd.sinkhorn_pointcloud(
            X, Y, 0.05, A, B, check_every=2,
            callback=lambda s: seen.append(s.n_iters) or len(seen) == 2)
        assert res.status is ds.Status.STOPPED and seen == [2, 4]


def test_bad_input():
    x, y, a, b = _clouds()
    X, Y, A, B = _dask(x, y, a, b)
    with pytest.raises(ValueError, match="same number of columns"):
        dd.sinkhorn_pointcloud(X, Y[:, :1], 0.1)
    with pytest.raises(ValueError, match="same total mass"):
        dd.sinkhorn_pointcloud(X, Y, 0.1, A, B * 2)
    with pytest.raises(ValueError, match="positive weights"):
        dd.sinkhorn_pointcloud(X, Y, 0.1, A * 0, B * 0)
    with pytest.raises(TypeError, match="X must be a dask.array.Array"):
        dd.sinkhorn_pointcloud([[0.0, 1.0]], Y, 0.1)
    with pytest.raises(ValueError, match="eps"):
        dd.sinkhorn_pointcloud(X, Y, -1.0)
    with pytest.raises(ValueError, match="cost must be 'sqeuclidean'"):
        dd.sinkhorn_pointcloud(X, Y, 0.1, cost="euclidean")


@pytest.mark.gpu
def test_cupy_blocks():
    cupy = pytest.importorskip("cupy")
    x, y, a, b = _clouds(seed=6)
    ref = ds.ot.sinkhorn(a, b, _cost(x, y), 0.2, rtol=1e-11, kernel="lse")
    X = da.from_array(cupy.asarray(x), chunks=(12, 2))
    Y = da.from_array(cupy.asarray(y), chunks=(9, 2))
    A = da.from_array(cupy.asarray(a), chunks=12)
    B = da.from_array(cupy.asarray(b), chunks=9)
    with dask.config.set(scheduler="synchronous"):
        res = dd.sinkhorn_pointcloud(X, Y, 0.2, A, B, rtol=1e-11)
        f = res.f.compute()
    assert isinstance(f, cupy.ndarray)  # the blocks stayed on the device
    np.testing.assert_allclose(f.get(), ref.f, rtol=0, atol=1e-10)
    assert abs(res.cost - ref.cost) < 1e-10
