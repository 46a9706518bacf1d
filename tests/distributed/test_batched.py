"""Batched solves on a LocalCluster equal the single-machine calls, problem by problem,
their per-problem statuses reach the client, and their chunk-wise gradients equal
``diffsolve.vjp``'s."""

from __future__ import annotations

import autograd.numpy as anp
import pytest

pytest.importorskip("dask.array")
pytest.importorskip("dask.distributed")

import dask.array as da
import numpy as np

import diffsolve as ds
import diffsolve.distributed as dd

TOL = 1e-12


def _close(x, y, tol=TOL):
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == y.shape
    np.testing.assert_allclose(x, y, rtol=0, atol=tol * max(1.0, float(np.abs(y).max())))


def _ot_batch(N=7, n=5, m=4, seed=0):
    rng = np.random.default_rng(seed)
    C = rng.random((N, n, m))
    a = rng.random((N, n)) + 0.2
    a /= a.sum(1, keepdims=True)
    b = rng.random((N, m)) + 0.2
    b /= b.sum(1, keepdims=True)
    return a, b, C


def _chunked(x, k=3):
    return da.from_array(x, chunks=(k, *x.shape[1:]))


def decay(t, y, p):
    return -p[0] * y + p[1] * anp.sin(t)


def test_sinkhorn_batch_equals_single_machine(client):
    a, b, C = _ot_batch()
    ref = ds.ot.sinkhorn(a, b, C, 0.05)
    res = dd.sinkhorn(_chunked(a), _chunked(b), _chunked(C), 0.05)
    assert isinstance(res, ds.ot.OTResult)
    assert res.cost.chunks == ((3, 3, 1),)
    out = dd.compute(res)
    for name in ("plan", "f", "g", "cost", "error", "tolerance"):
        _close(getattr(out, name), getattr(ref, name))
    np.testing.assert_array_equal(out.n_iters, ref.n_iters)
    np.testing.assert_array_equal(out.status, ref.status)
    assert out.converged.all() and "all 7 problems succeeded" in out.message


def test_sinkhorn_shared_cost(client):
    a, b, C = _ot_batch()
    ref = ds.ot.sinkhorn(a, b, C[0], 0.05)
    out = dd.compute(dd.sinkhorn(_chunked(a), _chunked(b), C[0], 0.05))
    _close(out.cost, ref.cost)
    _close(out.plan, ref.plan)


def test_failed_problems_reported_per_problem(client):
    a, b, C = _ot_batch()
    # problems 1 and 5 get a cost 40 times larger (eps 40 times smaller in its units): they
    # need far more than 200 iterations, the others fewer
    scale = np.ones(7)
    scale[[1, 5]] = 40.0
    C = C * scale[:, None, None]
    with pytest.warns(ds.ConvergenceWarning):
        ref = ds.ot.sinkhorn(a, b, C, 0.05, maxiter=200)
    res = dd.sinkhorn(_chunked(a), _chunked(b), _chunked(C), 0.05, maxiter=200)
    assert isinstance(res.status, da.Array)
    with pytest.warns(ds.ConvergenceWarning, match=r"2 of 7 problems stopped with status "
                                                   r"MAX_ITERATIONS \(first: problem 1\)"):
        out = dd.compute(res)
    np.testing.assert_array_equal(out.status, ref.status)
    assert np.flatnonzero(out.status).tolist() == [1, 5]
    assert out.converged.tolist() == [True, False, True, True, True, False, True]
    _close(out.cost, ref.cost)  # nothing dropped: the failed problems keep their values
    res = dd.sinkhorn(_chunked(a), _chunked(b), _chunked(C), 0.05, maxiter=200, throw=True)
    with pytest.raises(ds.MaxIterationsError) as info:
        dd.compute(res)
    np.testing.assert_array_equal(info.value.result.status, ref.status)


def test_linear_many_right_hand_sides(client):
    rng = np.random.default_rng(1)
    n, N = 6, 10
    M = rng.standard_normal((n, n))
    A = M @ M.T + n * np.eye(n)
    b = rng.standard_normal((N, n))
    for method in ("direct", "cg"):
        ref = ds.linear.solve(A, b.T, method=method, rtol=1e-12)
        out = dd.compute(dd.linear_solve(A, _chunked(b, 4), method=method, rtol=1e-12))
        _close(out.x, ref.x.T)
        assert out.converged.all() and (out.status == 0).all()


def test_linear_many_matrices(client):
    rng = np.random.default_rng(2)
    N, n = 7, 4
    A = rng.standard_normal((N, n, n)) + 3 * np.eye(n)
    b = rng.standard_normal((N, n))
    out = dd.compute(dd.linear_solve(_chunked(A), _chunked(b)))
    for i in range(N):
        ref = ds.linear.solve(A[i], b[i])
        _close(out.x[i], ref.x)
        _close(out.residual_norm[i], ref.residual_norm)
    assert out.status.tolist() == [0] * N


def test_odeint_ensembles(client):
    rng = np.random.default_rng(3)
    y0 = rng.random((5, 2))
    t = np.linspace(0.0, 1.0, 4)
    p = np.array([0.7, 0.3])
    ref = ds.ode.odeint(decay, y0, t, p, regularizers=("error",))
    out = dd.compute(dd.odeint(decay, _chunked(y0, 2), t, p, regularizers=("error",)))
    _close(out.ys, ref.ys)
    _close(out.reg_error, ref.reg_error)
    assert int(out.n_steps) == ref.n_steps and int(out.nfe) == ref.nfe
    assert out.status.tolist() == [0] * 5 and out.converged.all()
    # per-problem parameters: each problem its own call
    P = rng.random((5, 2)) + 0.2
    out = dd.compute(dd.odeint(decay, _chunked(y0, 2), t, _chunked(P, 2)))
    for i in range(5):
        _close(out.ys[:, i], ds.ode.odeint(decay, y0[i], t, P[i]).ys)


def _ridge(x, y):
    return 0.5 * anp.sum((y - 1.0) ** 2) + 0.5 * x[0] * anp.sum(y ** 2)


def _val(x, y):
    return 0.5 * anp.sum((y - 0.3) ** 2)


def test_hypergradient_batch(client):
    X = np.linspace(0.5, 2.0, 6)[:, None]
    Y = np.ones((6, 3)) / (1 + X)  # the inner solutions y*(x) = 1 / (1 + x)
    g, info = dd.hypergradient(_val, _ridge, _chunked(X, 4), _chunked(Y, 4),
                               return_info=True)
    g_out, info_out = dd.compute(g, info)
    for i in range(6):
        _close(g_out[i], ds.bilevel.hypergradient(_val, _ridge, X[i], Y[i]))
    assert info_out.status.tolist() == [0] * 6 and info_out.converged.all()


def test_vjp_sinkhorn_equals_single_machine(client):
    a, b, C = _ot_batch(N=5)
    rng = np.random.default_rng(4)
    w = rng.standard_normal(5)
    gf = rng.standard_normal((5, 5))
    ref, f_vjp = ds.vjp(ds.ot.sinkhorn, a, b, C, 0.1)
    r_a, r_b, r_C = f_vjp(cost=w, f=gf)
    for persist in (True, False):
        res, d_vjp = dd.vjp(ds.ot.sinkhorn, _chunked(a, 2), _chunked(b, 2), _chunked(C, 2),
                            0.1, persist=persist)
        a_bar, b_bar, C_bar = d_vjp(cost=da.from_array(w, chunks=2), f=gf)
        assert isinstance(C_bar, da.Array) and C_bar.chunks[0] == (2, 2, 1)
        _close(a_bar.compute(), r_a, 1e-10)
        _close(b_bar.compute(), r_b, 1e-10)
        _close(C_bar.compute(), r_C, 1e-10)
        _close(res.cost.compute(), ref.cost)


def test_vjp_shared_arguments_sum_over_chunks(client):
    rng = np.random.default_rng(5)
    n, N = 4, 6
    A = rng.standard_normal((n, n)) + 4 * np.eye(n)
    b = rng.standard_normal((N, n))
    xb = rng.standard_normal((N, n))
    _, f_vjp = ds.vjp(ds.linear.solve, A, b.T)
    r_A, r_b = f_vjp(x=xb.T)
    _, d_vjp = dd.vjp(ds.linear.solve, A, _chunked(b, 4))
    A_bar, b_bar = d_vjp(x=_chunked(xb, 2))  # cotangent chunks differ from b's: rechunked
    _close(A_bar.compute(), r_A)
    _close(b_bar.compute(), r_b.T)
    # odeint: shared params and t_eval, batched y0
    y0 = rng.random((5, 2))
    t = np.linspace(0.0, 1.0, 3)
    p = np.array([0.7, 0.3])
    ys_bar = rng.standard_normal((3, 5, 2))
    _ref, f_vjp = ds.vjp(ds.ode.odeint, decay, y0, t, p)
    r = f_vjp(ys=ys_bar)
    _res, d_vjp = dd.vjp(ds.ode.odeint, decay, _chunked(y0, 2), t, p)
    got = d_vjp(ys=ys_bar)
    assert len(got) == len(r) == 3
    for g, gr in zip(got, r):
        _close(g.compute(), gr, 1e-10)


def test_vjp_against_finite_differences(client):
    a, b, C = _ot_batch(N=3, n=3, m=3, seed=6)
    _res, d_vjp = dd.vjp(ds.ot.sinkhorn, _chunked(a, 2), _chunked(b, 2), _chunked(C, 2), 0.2,
                        rtol=1e-13)
    _, _, C_bar = d_vjp(cost=np.ones(3))
    C_bar = C_bar.compute()
    h = 1e-6
    for idx in [(0, 1, 2), (2, 0, 0)]:
        Cp, Cm = C.copy(), C.copy()
        Cp[idx] += h
        Cm[idx] -= h
        fd = (ds.ot.sinkhorn(a, b, Cp, 0.2, rtol=1e-13).cost.sum()
              - ds.ot.sinkhorn(a, b, Cm, 0.2, rtol=1e-13).cost.sum()) / (2 * h)
        assert abs(fd - C_bar[idx]) < 1e-7


def test_bad_input_names_the_argument(client):
    a, b, C = _ot_batch()
    with pytest.raises(ValueError, match=r"distributed.sinkhorn: C must be a Dask array "
                                         r"with a leading batch dimension"):
        dd.sinkhorn(_chunked(a), _chunked(b), C[0, 0], 0.05)
    with pytest.raises(ValueError, match="no argument is a Dask array"):
        dd.sinkhorn(a[0], b[0], C[0], 0.05)
    with pytest.raises(ValueError, match="batch_mode"):
        dd.odeint(decay, _chunked(np.ones((4, 2))), [0.0, 1.0], np.ones(2),
                  batch_mode="shared")
    with pytest.raises(TypeError, match="fn must be diffsolve.ot.sinkhorn"):
        dd.vjp(ds.ot.sinkhorn_newton_sparse, a, b, C, 0.1)


@pytest.mark.gpu
def test_cupy_chunks_stay_on_the_device(client):
    cupy = pytest.importorskip("cupy")
    a, b, C = _ot_batch()
    ca, cb, cC = (da.from_array(cupy.asarray(x), chunks=(3, *x.shape[1:]))
                  for x in (a, b, C))
    out = dd.compute(dd.sinkhorn(ca, cb, cC, 0.05))
    assert isinstance(out.cost, cupy.ndarray)
    ref = ds.ot.sinkhorn(cupy.asarray(a), cupy.asarray(b), cupy.asarray(C), 0.05)
    _close(out.cost.get(), ref.cost.get())


def test_import_diffsolve_does_not_import_dask():
    import subprocess
    import sys

    code = ("import sys, diffsolve; import diffsolve.ot, diffsolve.ode; "
            "assert not any(m == 'dask' or m.startswith('dask.') for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_vjp_shared_sparse_matrix(client):
    sp = pytest.importorskip("scipy.sparse")
    n = 12
    A = sp.diags([-1.0, 2.5, -1.0], [-1, 0, 1], shape=(n, n), format="csr")
    b = np.random.default_rng(7).standard_normal((5, n))
    _, f_vjp = ds.vjp(ds.linear.solve, A, b.T, method="cg", rtol=1e-12)
    r_A, r_b = f_vjp(x=np.ones((n, 5)))
    _, d_vjp = dd.vjp(ds.linear.solve, A, _chunked(b, 2), method="cg", rtol=1e-12)
    A_bar, b_bar = d_vjp(x=np.ones((5, n)))
    A_bar = A_bar.compute()  # a dask.delayed sparse matrix with A's pattern
    assert sp.issparse(A_bar) and (A_bar.indices == A.indices).all()
    _close(A_bar.toarray(), r_A.toarray())
    _close(b_bar.compute(), r_b.T)


@pytest.mark.parametrize("call", ["sinkhorn", "solve", "odeint", "hypergradient", "vjp"])
def test_family_solvers_refuse_dask_arrays_by_name(call):
    """A Dask array given to a single-machine solver is refused with a pointer to
    diffsolve.distributed, never gathered into one process behind the user's back."""
    a = da.from_array(np.full((4, 5), 0.2), chunks=2)
    C = da.from_array(np.random.default_rng(0).random((4, 5, 5)), chunks=(2, 5, 5))
    calls = {
        "sinkhorn": lambda: ds.ot.sinkhorn(a, a, C, 0.1),
        "solve": lambda: ds.linear.solve(np.eye(5), da.ones(5)),
        "odeint": lambda: ds.ode.odeint(lambda t, y, p: -y, da.ones((3, 2), chunks=1),
                                        np.linspace(0.0, 1.0, 3)),
        "hypergradient": lambda: ds.bilevel.hypergradient(
            lambda x, y: (y ** 2).sum(), lambda x, y: ((y - x) ** 2).sum(),
            da.ones(3), da.ones(3)),
        "vjp": lambda: ds.vjp(ds.ot.sinkhorn, a, a, C, 0.1),
    }
    with pytest.raises(TypeError, match=r"dask\.array\.Array.*diffsolve\.distributed"):
        calls[call]()
