"""diffsolve.ot.sinkhorn_newton_sparse and its kernels: kernels vs naive references (CPU and
CUDA twins), the small-eps regime where Sinkhorn crawls, agreement with sinkhorn, namespaces,
dtypes, batches, zero weights, options, errors and warnings, and gradients (finite
differences, sinkhorn's gradients, diffsolve.vjp, the autograd and torch adapters)."""

from __future__ import annotations

import warnings

import array_api_compat.numpy as xnp
import numpy as np
import pytest

import diffsolve as ds
import diffsolve.ot
from diffsolve.kernels.cpu import ot_newton as cpu
from diffsolve.ot._errors import marginal_error
from tests.helpers import assert_close, central_difference, ot_clouds, ot_problem, to_numpy
from tests.naive_ot_newton import (
    naive_csr_transpose,
    naive_kth_largest,
    naive_newton_step,
    naive_plan_marginals,
    naive_threshold_csr,
)

SNS = ds.ot.sinkhorn_newton_sparse
TIGHT = {"rtol": 1e-12, "maxiter": 200}
SK_TIGHT = {"rtol": 1e-13, "maxiter": 100_000}




def _tol(dtype):
    return {"rtol": 1e-12, "atol": 1e-14} if dtype == np.float64 else {"rtol": 2e-5, "atol": 1e-7}


# ------------------------------------------------------------------------------------------
# kernels vs naive references
# ------------------------------------------------------------------------------------------
def _plan(rng, n, m, dtype, eps=0.05):
    C = rng.random((n, m)).astype(dtype)
    f = (0.02 * rng.standard_normal(n)).astype(dtype)
    g = (0.02 * rng.standard_normal(m)).astype(dtype)
    P, r, c = cpu.plan_marginals(f, g, C, 1 / eps, np.empty((n, m), dtype), np.empty(n, dtype),
                                 np.empty(m, dtype))
    return f, g, C, P, r, c


@pytest.mark.parametrize(("n", "m"), [(1, 1), (7, 5), (300, 257), (40, 700)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_plan_marginals_vs_naive(rng, n, m, dtype):
    f, g, C, P, r, c = _plan(rng, n, m, dtype)
    want = naive_plan_marginals(f.astype(np.float64), g.astype(np.float64),
                                C.astype(np.float64), 1 / 0.05)
    for got, w in zip((P, r, c), want, strict=True):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, w, **_tol(dtype))


@pytest.mark.parametrize(("n", "m"), [(7, 5), (300, 257), (40, 700)])
@pytest.mark.parametrize("per_row", [0.5, 1, 3, 16, 100])
def test_kth_largest_vs_naive(rng, n, m, per_row):
    # per_row > 64 takes the sampled-bound path, the others the row-top path
    _, _, _, P, _, _ = _plan(rng, n, m, np.float64)
    k = max(1, min(P.size, int(per_row * n)))
    assert cpu.kth_largest(P, k) == naive_kth_largest(P, k)
    assert cpu.kth_largest(P, 1) == P.max()
    assert cpu.kth_largest(P, P.size) == P.min()


def test_kth_largest_ties_and_errors():
    P = np.ones((6, 4))
    P[0, 0] = 2.0
    assert cpu.kth_largest(P, 1) == 2.0 and cpu.kth_largest(P, 5) == 1.0
    with pytest.raises(ValueError, match="k in"):
        cpu.kth_largest(P, 0)
    with pytest.raises(ValueError, match="k in"):
        cpu.kth_largest(P, 25)


@pytest.mark.parametrize(("n", "m"), [(1, 1), (7, 5), (300, 257)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_threshold_csr_and_transpose_vs_naive(rng, n, m, dtype):
    _, _, _, P, _, _ = _plan(rng, n, m, dtype)
    P[0, :] = 0.0  # an empty row, and zeros are never kept even with tau = 0
    for tau in (0.0, float(np.median(P)), float(P.max()), float(P.max()) * 2):
        got = cpu.threshold_csr(P, tau)
        want = naive_threshold_csr(P, dtype(tau))
        for x, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(x, w)
        gt = cpu.csr_transpose(*got, m)
        wt = naive_csr_transpose(*want, m)
        for x, w in zip(gt, wt, strict=True):
            np.testing.assert_array_equal(x, w)


@pytest.mark.parametrize(("n", "m", "keep"), [(9, 6, 0.3), (6, 9, 0.5), (20, 20, 1.0)])
def test_newton_step_vs_dense_solve(rng, n, m, keep):
    _, _, _, P, r, c = _plan(rng, n, m, np.float64, eps=0.2)
    tau = naive_kth_largest(P, max(1, int(keep * P.size)))
    csr = cpu.threshold_csr(P, tau)
    csr_t = cpu.csr_transpose(*csr, m)
    Pk = np.where(P >= tau, P, 0.0)
    gf, gg = rng.standard_normal(n) * 0.01, rng.standard_normal(m) * 0.01
    fixed = int(np.argmax(c))
    df, dg = np.empty(n), np.empty(m)
    its = cpu.newton_step(*csr, *csr_t, r, c, gf, gg, 0.2, fixed, 1e-14, 500, df, dg)
    want_f, want_g = naive_newton_step(Pk, r, c, gf, gg, 0.2, fixed)
    assert 0 < its <= m
    np.testing.assert_allclose(dg, want_g, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(df, want_f, rtol=1e-8, atol=1e-12)
    assert dg[fixed] == 0.0
    with pytest.raises(ValueError, match="fixed must lie"):
        cpu.newton_step(*csr, *csr_t, r, c, gf, gg, 0.2, m, 1e-14, 500, df, dg)


def test_dense_newton_step_is_krylov_cg_and_truncates(rng):
    # the array-API path (array_api_strict, or any namespace without the compiled kernels)
    # solves the Schur system with diffsolve.krylov.cg: the same step as the fused kernel,
    # and a CG cut short (by maxiter here) still gives its current iterate, an ascent
    # direction of the dual (truncated Newton-CG)
    from diffsolve.ot._newton import _DenseBlock

    n, m = 9, 6
    _, _, _, P, r, c = _plan(rng, n, m, np.float64, eps=0.2)
    Pk = np.where(P >= naive_kth_largest(P, P.size // 2), P, 0.0)
    gf, gg = rng.standard_normal(n) * 0.01, rng.standard_normal(m) * 0.01
    fixed = int(np.argmax(c))
    block = _DenseBlock(xnp, Pk)
    df, dg, its = block.newton_step(r, c, gf, gg, 0.2, fixed, 1e-14, 500)
    want_f, want_g = naive_newton_step(Pk, r, c, gf, gg, 0.2, fixed)
    assert 0 < its <= m
    np.testing.assert_allclose(dg, want_g, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(df, want_f, rtol=1e-8, atol=1e-12)
    assert dg[fixed] == 0.0
    df1, dg1, its1 = block.newton_step(r, c, gf, gg, 0.2, fixed, 1e-14, 1)
    assert its1 == 1 and np.all(np.isfinite(dg1)) and not np.allclose(dg1, dg)
    assert gf @ df1 + gg @ dg1 > 0


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cuda_twins_match_cpu(rng, dtype):
    cupy = pytest.importorskip("cupy")
    from diffsolve.kernels.cuda import ot_newton as gpu

    n, m = 300, 257
    f, g, C, P, r, c = _plan(rng, n, m, dtype)
    Pg, rg, cg = gpu.plan_marginals(cupy.asarray(f), cupy.asarray(g), cupy.asarray(C), 1 / 0.05,
                                    cupy.empty((n, m), dtype), cupy.empty(n, dtype),
                                    cupy.empty(m, dtype))
    tol = {"rtol": 1e-12, "atol": 1e-14} if dtype == np.float64 else {"rtol": 1e-4, "atol": 1e-6}
    for x, w in zip((Pg, rg, cg), (P, r, c), strict=True):
        np.testing.assert_allclose(cupy.asnumpy(x), w, **tol)
    Pg = cupy.asarray(P)  # same input from here on, so selections must agree exactly
    for per_row in (1, 10, 100):
        k = per_row * n
        assert gpu.kth_largest(Pg, k) == cpu.kth_largest(P, k)
    tau = cpu.kth_largest(P, 10 * n)
    got, want = gpu.threshold_csr(Pg, tau), cpu.threshold_csr(P, tau)
    for x, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(cupy.asnumpy(x), w)
    for x, w in zip(gpu.csr_transpose(*got, m), cpu.csr_transpose(*want, m), strict=True):
        np.testing.assert_array_equal(cupy.asnumpy(x), w)
    if dtype == np.float64:
        csr_t = cpu.csr_transpose(*want, m)
        gf, gg = rng.standard_normal(n) * 1e-3, rng.standard_normal(m) * 1e-3
        df, dg = np.empty(n), np.empty(m)
        cpu.newton_step(*want, *csr_t, r, c, gf, gg, 0.05, 3, 1e-12, 500, df, dg)
        dfg, dgg = cupy.empty(n), cupy.empty(m)
        gpu.newton_step(*got, *gpu.csr_transpose(*got, m), cupy.asarray(r), cupy.asarray(c),
                        cupy.asarray(gf), cupy.asarray(gg), 0.05, 3, 1e-12, 500, dfg, dgg)
        np.testing.assert_allclose(cupy.asnumpy(dgg), dg, rtol=1e-7, atol=1e-12)
        np.testing.assert_allclose(cupy.asnumpy(dfg), df, rtol=1e-7, atol=1e-12)


# ------------------------------------------------------------------------------------------
# forward
# ------------------------------------------------------------------------------------------
def test_small_eps_where_sinkhorn_crawls(rng):
    # Tang et al.'s random-assignment set-up: uniform random costs, eps = 1e-3. Sinkhorn
    # needs well over 100 000 iterations for 1e-10 here (bench/bench_ot_newton.py); SNS
    # needs about ten Newton steps after a 50-iteration warm-up.
    n = 200
    C = rng.random((n, n))
    a = b = np.full(n, 1.0 / n)
    history = []
    res = SNS(a, b, C, 1e-3, rtol=1e-10, callback=lambda s: history.append(s.error))
    assert res.converged and res.error <= 1e-10 and res.n_iters <= 25
    # Sinkhorn's early rate looked promising, one 100-iteration chunk showed otherwise
    assert 50 <= res.n_sinkhorn <= 150 and res.n_fallbacks == 0
    fixed = SNS(a, b, C, 1e-3, rtol=1e-10, sinkhorn_switch=0)  # Tang et al.'s fixed warm-up
    assert fixed.converged and fixed.n_sinkhorn == 50 and fixed.n_iters <= 25
    assert float(marginal_error(res.plan, a, b, xnp)) <= 1e-10
    assert np.all(np.isfinite(res.plan)) and np.isfinite(res.cost)
    with pytest.warns(ds.ConvergenceWarning):
        sk = ds.ot.sinkhorn(a, b, C, 1e-3, rtol=1e-10, maxiter=3000)
    assert sk.error > 1e3 * res.error  # 3000 Sinkhorn iterations are nowhere near
    # the callback saw every Newton step, the last one at the final error
    assert len(history) == res.n_iters and history[-1] == res.error


def test_easy_problem_finishes_with_sinkhorn(rng):
    # eps = 0.05: Sinkhorn contracts fast, so SNS lets it finish instead of paying for
    # Newton steps; sinkhorn_switch=0 forces the Newton stage
    a, b, C = ot_clouds(rng, 50)
    res = SNS(a, b, C, 0.05, rtol=1e-10)
    assert res.converged and res.n_iters == 0 and res.n_sinkhorn > 0
    newton = SNS(a, b, C, 0.05, rtol=1e-10, sinkhorn_switch=0, n_sinkhorn=5)
    assert newton.converged and newton.n_iters >= 1 and newton.n_sinkhorn == 5
    np.testing.assert_allclose(res.plan, newton.plan, rtol=1e-6, atol=1e-12)


def test_matches_sinkhorn_on_clouds(rng):
    a, b, C = ot_clouds(rng, 60, 45)
    res = SNS(a, b, C, 2e-3, **TIGHT)
    ref = ds.ot.sinkhorn(a, b, C, 2e-3, **SK_TIGHT)
    assert res.converged and res.error <= 1e-12
    np.testing.assert_allclose(res.plan, ref.plan, rtol=1e-8, atol=1e-13)
    np.testing.assert_allclose(res.f, ref.f, rtol=0, atol=1e-10)  # same gauge sum f = sum g
    np.testing.assert_allclose(res.g, ref.g, rtol=0, atol=1e-10)
    np.testing.assert_allclose(res.cost, ref.cost, rtol=1e-10)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_namespaces(xp, rng, dtype):
    a, b, C = ot_clouds(rng, 20, 15)
    ref = ds.ot.sinkhorn(a, b, C, 0.01, **SK_TIGHT)
    dt = getattr(xp, dtype)
    tol = 1e-11 if dtype == "float64" else 2e-5
    res = SNS(*(xp.asarray(x, dtype=dt) for x in (a, b, C)), 0.01, rtol=tol)
    assert res.converged and res.error <= tol
    assert res.plan.dtype == dt and res.f.dtype == dt and res.cost.dtype == dt
    rtol = 1e-7 if dtype == "float64" else 2e-3
    assert_close(res.plan, ref.plan, xp=xp, rtol=rtol, atol=rtol * 1e-3)
    assert_close(res.cost, ref.cost, xp=xp, rtol=rtol)


def test_batched_matches_loop_and_per_problem_convergence(rng):
    a, b, C = ot_problem(rng, 8, 6, batch=(3,))
    eps = np.float64(0.02)
    res = SNS(a, b, C, eps, **TIGHT)
    assert res.plan.shape == (3, 8, 6) and res.f.shape == (3, 8) and res.cost.shape == (3,)
    assert res.n_iters.shape == (3,) and res.converged.dtype == bool
    assert res.status.shape == (3,) and np.all(res.status == int(ds.Status.SUCCESS))
    assert res.message.startswith("diffsolve.ot.sinkhorn_newton_sparse: converged")
    for k in range(3):
        one = SNS(a[k], b[k], C[k], eps, **TIGHT)
        np.testing.assert_allclose(res.plan[k], one.plan, rtol=1e-12, atol=1e-15)
        assert res.n_iters[k] == one.n_iters and res.error[k] == one.error
    # broadcast marginals over a batch of costs
    res2 = SNS(a[0], b[0], C[:2], eps, **TIGHT)
    assert res2.plan.shape == (2, 8, 6)
    np.testing.assert_allclose(res2.plan[0], res.plan[0], rtol=1e-12, atol=1e-15)


def test_zero_weights(rng):
    a, b, C = ot_problem(rng, 7, 5)
    a[2] = 0.0
    b[4] = 0.0
    a /= a.sum()
    b /= b.sum()
    res = SNS(a, b, C, 0.05, **TIGHT)
    ref = ds.ot.sinkhorn(a, b, C, 0.05, **SK_TIGHT)
    assert res.converged
    assert np.all(res.plan[2] == 0) and np.all(res.plan[:, 4] == 0)
    assert res.f[2] == -np.inf and res.g[4] == -np.inf
    np.testing.assert_allclose(res.plan, ref.plan, rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(res.cost, ref.cost, rtol=1e-10)


@pytest.mark.parametrize("opts", [{"density": 0.25}, {"density": 1.0}, {"threshold": 1e-5},
                                  {"error_measure": "l2-pot"}, {"n_sinkhorn": 1},
                                  {"cg_rtol": 1e-8, "cg_maxiter": 5}])
def test_options(rng, opts):
    a, b, C = ot_clouds(rng, 40)
    seen = []
    res = SNS(a, b, C, 3e-3, rtol=1e-10, callback=seen.append, **opts)
    assert res.converged and res.error <= 1e-10
    assert res.error_measure == opts.get("error_measure", "l1")
    assert [d.n_iters for d in seen] == list(range(1, res.n_iters + 1))
    assert all(d.problem is None and d.nnz > 0 and d.eps == 3e-3 for d in seen)
    assert all(d.f.shape == (40,) and d.g.shape == (40,) for d in seen)
    if "density" in opts:
        assert all(d.nnz >= opts["density"] * 40 * 40 for d in seen)


def test_sinkhorn_fallback_when_line_search_fails(rng):
    # one trial per line search, from a 1-iteration warm-up at small eps: the full Newton
    # step overshoots at first, so Sinkhorn takes over until Newton is in its basin
    a, b, C = ot_clouds(rng, 40)
    res = SNS(a, b, C, 1e-3, rtol=1e-10, n_sinkhorn=1, ls_max_steps=1, maxiter=200)
    assert res.converged and res.n_fallbacks >= 1
    assert res.n_sinkhorn >= 1 + 20 * res.n_fallbacks - 20  # fallbacks ran Sinkhorn steps


def test_non_convergence_warns_and_throws(rng):
    a, b, C = ot_clouds(rng, 30)
    with pytest.warns(ds.ConvergenceWarning, match="increase maxiter.*density.*larger eps"):
        res = SNS(a, b, C, 1e-3, maxiter=1, n_sinkhorn=2)
    assert not res.converged and res.n_iters == 1 and res.error > 1e-9
    assert res.status == ds.Status.MAX_ITERATIONS and "MAX_ITERATIONS" in res.message
    assert "converged" in SNS(a, b, C, 1e-2, rtol=1e-8).message
    with pytest.raises(ds.MaxIterationsError, match="MAX_ITERATIONS") as info:
        SNS(a, b, C, 1e-3, maxiter=1, n_sinkhorn=2, throw=True)
    assert info.value.result.n_iters == 1
    with pytest.warns(ds.ConvergenceWarning, match="float32"):
        SNS(*(x.astype(np.float32) for x in (a, b, C)), 1e-2, maxiter=2, rtol=1e-9)


def test_fixed_budget_callback_stop_and_deprecated_names(rng):
    a, b, C = ot_clouds(rng, 30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = SNS(a, b, C, 1e-3, rtol=0, atol=0, maxiter=4, throw=True)
        assert res.n_iters == 4 and res.status == ds.Status.MAX_ITERATIONS
        assert res.n_sinkhorn == 50 and not res.converged
        stop = SNS(a, b, C, 1e-3, rtol=1e-12, callback=lambda s: s.n_iters >= 2, throw=True)
        assert stop.n_iters == 2 and stop.status == ds.Status.STOPPED
    new = SNS(a, b, C, 1e-2, atol=1e-8, rtol=0, maxiter=30)
    with pytest.warns(DeprecationWarning, match="tol= is deprecated.*atol="):
        old = SNS(a, b, C, 1e-2, tol=1e-8, maxiter=30)
    assert old.n_iters == new.n_iters and old.tolerance == new.tolerance == 1e-8
    with pytest.warns(DeprecationWarning, match="max_iter= is deprecated.*maxiter="):
        SNS(a, b, C, 1e-2, max_iter=30)


def test_inner_sinkhorn_is_not_silenced():
    # the warm-up calls Sinkhorn's private solve and reads its status: no warnings filter
    import inspect

    from diffsolve.ot import _newton

    src = inspect.getsource(_newton)
    assert "catch_warnings" not in src and "simplefilter" not in src


def test_to_jax_jit_and_grad(rng):
    # reproduction: the variable-length history made the SNS result unusable under to_jax
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    a, b, C = ot_problem(rng)
    Wp = rng.standard_normal(C.shape)
    _, ref = ds.vjp(SNS, a, b, C, 0.05, **TIGHT)
    want = ref(plan=Wp, cost=1.0)
    sj = ds.to_jax(SNS)

    def loss(a, b, C):
        r = sj(a, b, C, 0.05, **TIGHT)
        return jnp.sum(jnp.asarray(Wp) * r.plan) + r.cost

    got = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*(jnp.asarray(x) for x in (a, b, C)))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-9, atol=1e-12)
    out = jax.jit(lambda C: sj(jnp.asarray(a), jnp.asarray(b), C, 0.05, **TIGHT).n_iters)(
        jnp.asarray(C))
    assert int(out) == SNS(a, b, C, 0.05, **TIGHT).n_iters


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"a": -1}, "a has negative entries"),
    ({"b": 2.0}, "different total mass"),
    ({"C": np.inf}, "C contains NaN or infinite"),
    ({"eps": 0.0}, "eps must be a finite number > 0"),
    ({"opt": {"density": 0.0}}, r"density must be a number in \(0.0, 1.0\]"),
    ({"opt": {"density": 0.1, "threshold": 1e-3}}, "not both"),
    ({"opt": {"threshold": -1.0}}, "threshold must be"),
    ({"opt": {"maxiter": 0}}, "maxiter must be >= 1"),
    ({"opt": {"maxiter": True}}, "maxiter must be an integer >= 1, got the bool"),
    ({"opt": {"n_sinkhorn": 0}}, "n_sinkhorn must be >= 1"),
    ({"opt": {"sinkhorn_switch": -1}}, "sinkhorn_switch must be >= 0"),
    ({"opt": {"cg_rtol": 1.5}}, "cg_rtol must be"),
    ({"opt": {"ls_beta": 1.0}}, "ls_beta must be"),
    ({"opt": {"error_measure": "l3"}}, "error_measure='l3'"),
    ({"opt": {"rtol": -1.0}}, "rtol must be >= 0"),
    ({"opt": {"callback": 3}}, "callback must be None or a callable"),
])
def test_bad_input(rng, kwargs, match):
    a, b, C = ot_problem(rng)
    if "a" in kwargs:
        a = a.copy()
        a[0] = kwargs["a"]
    if "b" in kwargs:
        b = b * kwargs["b"]
    if "C" in kwargs:
        C = C.copy()
        C[1, 1] = kwargs["C"]
    with pytest.raises((ValueError, TypeError), match=match) as info:
        SNS(a, b, C, kwargs.get("eps", 0.1), **kwargs.get("opt", {}))
    assert "sinkhorn_newton_sparse" in str(info.value)


# ------------------------------------------------------------------------------------------
# gradients
# ------------------------------------------------------------------------------------------
def _loss_and_cots(rng, n, m, eps):
    Wp = rng.standard_normal((n, m))
    wf, wg, wc = rng.standard_normal(n), rng.standard_normal(m), 0.7

    def loss(a, b, C):
        r = SNS(a, b, C, eps, **TIGHT)
        return np.sum(Wp * r.plan) + wf @ r.f + wg @ r.g + wc * r.cost

    return loss, {"plan": Wp, "f": wf, "g": wg, "cost": np.float64(wc)}


@pytest.mark.parametrize(("n", "m", "eps"), [(6, 4, 0.1), (4, 6, 0.03)])
def test_gradient_vs_finite_differences(rng, n, m, eps):
    a, b, C = ot_problem(rng, n, m)
    loss, cots = _loss_and_cots(rng, n, m, eps)
    _, f_vjp = ds.vjp(SNS, a, b, C, eps, **TIGHT)
    a_bar, b_bar, C_bar = f_vjp(**cots)
    dC = rng.standard_normal(C.shape)
    fd = central_difference(lambda t: loss(a, b, C + t * dC), 0.0, 1.0, h=1e-6)
    np.testing.assert_allclose(np.sum(C_bar * dC), fd, rtol=1e-6, atol=1e-8)
    da = rng.standard_normal(n)
    da -= da.mean()
    db = rng.standard_normal(m)
    db -= db.mean()
    fd = central_difference(lambda t: loss(a + t * da, b + t * db, C), 0.0, 1.0, h=1e-6)
    np.testing.assert_allclose(a_bar @ da + b_bar @ db, fd, rtol=1e-6, atol=1e-8)


def test_gradients_match_sinkhorn(rng):
    a, b, C = ot_clouds(rng, 25, 20)
    eps = 0.01
    cots = {"plan": rng.standard_normal(C.shape), "f": rng.standard_normal(25),
            "g": rng.standard_normal(20), "cost": np.float64(1.3)}
    _, v_sns = ds.vjp(SNS, a, b, C, eps, **TIGHT)
    _, v_sk = ds.vjp(ds.ot.sinkhorn, a, b, C, eps, **SK_TIGHT)
    for got, want in zip(v_sns(**cots), v_sk(**cots), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8 * np.abs(want).max())


def test_vjp_namespaces(xp, rng):
    a, b, C = ot_problem(rng)
    Wp = rng.standard_normal(C.shape)
    _, ref = ds.vjp(SNS, a, b, C, 0.05, **TIGHT)
    want = ref(plan=Wp, cost=np.float64(0.5))
    _, f_vjp = ds.vjp(SNS, *(xp.asarray(x) for x in (a, b, C)), 0.05, **TIGHT)
    got = f_vjp(plan=xp.asarray(Wp), cost=xp.asarray(0.5, dtype=xp.float64))
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, xp=xp, rtol=1e-8, atol=1e-12)


def test_batched_gradient_shapes(rng):
    a, b, C = ot_problem(rng, 5, 4, batch=(2,))
    _, f_vjp = ds.vjp(SNS, a[0], b[0], C, 0.05, **TIGHT)
    a_bar, b_bar, C_bar = f_vjp(cost=np.ones(2))
    assert a_bar.shape == (5,) and b_bar.shape == (4,) and C_bar.shape == (2, 5, 4)
    res = SNS(a[0], b[0], C, 0.05, **TIGHT)
    np.testing.assert_allclose(C_bar, res.plan, rtol=1e-12)  # d cost / d C = plan


def test_adapters_autograd_torch(rng):
    a, b, C = ot_problem(rng)
    Wp = rng.standard_normal(C.shape)
    _, ref = ds.vjp(SNS, a, b, C, 0.05, **TIGHT)
    want = ref(plan=Wp, cost=np.float64(1.0))

    import autograd
    import autograd.numpy as anp

    sns = ds.to_autograd(SNS)

    def loss(a, b, C):
        r = sns(a, b, C, 0.05, **TIGHT)
        return anp.sum(Wp * r.plan) + r.cost

    got = autograd.grad(loss, argnum=(0, 1, 2))(a, b, C)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12)

    torch = pytest.importorskip("torch")
    ta, tb, tC = (torch.tensor(x, requires_grad=True) for x in (a, b, C))
    out = ds.to_torch(SNS)(ta, tb, tC, 0.05, **TIGHT)
    assert out.n_iters == SNS(a, b, C, 0.05, **TIGHT).n_iters
    ((torch.tensor(Wp) * out.plan).sum() + out.cost).backward()
    for t, w in zip((ta, tb, tC), want, strict=True):
        np.testing.assert_allclose(t.grad.numpy(), w, rtol=1e-9, atol=1e-12)


@pytest.mark.gpu
def test_cupy_solver_matches_numpy(rng):
    cupy = pytest.importorskip("cupy")
    a, b, C = ot_clouds(rng, 150)
    res = SNS(a, b, C, 2e-3, rtol=1e-10)
    got = SNS(*(cupy.asarray(x) for x in (a, b, C)), 2e-3, rtol=1e-10)
    assert got.converged and isinstance(got.plan, cupy.ndarray)
    np.testing.assert_allclose(to_numpy(got.plan), res.plan, rtol=1e-6, atol=1e-12)
    _, f_vjp = ds.vjp(SNS, *(cupy.asarray(x) for x in (a, b, C)), 2e-3, rtol=1e-10)
    C_bar = f_vjp(cost=cupy.asarray(1.0))[2]
    np.testing.assert_allclose(to_numpy(C_bar), res.plan, rtol=1e-6, atol=1e-12)
