"""diffsolve.ot.sinkhorn: solutions (vs POT and a naive loop), batching, dtypes, small eps,
acceleration, warm starts, errors and warnings, and gradients (finite differences, unrolled
autograd, the envelope rule, diffsolve.vjp and the autograd / torch / JAX adapters)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import diffsolve as ds
import diffsolve.ot
from diffsolve.ot._errors import marginal_error
from tests.helpers import assert_close, central_difference, ot_clouds, ot_problem, to_numpy
from tests.naive_ot import naive_sinkhorn

TIGHT = {"rtol": 1e-13, "maxiter": 100_000}
_NAIVE: dict = {}




# ------------------------------------------------------------------------------------------
# forward
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", ["lse", "absorbed"])
@pytest.mark.parametrize("eps", [0.5, 0.05])
def test_namespaces_match_naive_loop(xp, rng, eps, kernel):
    a, b, C = ot_problem(rng)
    res = ds.ot.sinkhorn(xp.asarray(a), xp.asarray(b), xp.asarray(C), eps, kernel=kernel,
                         **TIGHT)
    key = (eps, C.tobytes())
    if key not in _NAIVE:  # the same problem for every namespace and kernel
        _NAIVE[key] = naive_sinkhorn(a, b, C, eps, 3000)
    plan, f, g = _NAIVE[key]
    assert res.converged and res.error <= 1e-13
    assert_close(res.plan, plan, xp=xp, dtype=xp.float64, rtol=1e-9, atol=1e-14)
    assert_close(res.f, f, xp=xp, rtol=1e-9, atol=1e-12)
    assert_close(res.g, g, xp=xp, rtol=1e-9, atol=1e-12)
    want_cost = np.sum(C * plan) + eps * np.sum(plan * (np.log(plan) - 1))
    np.testing.assert_allclose(float(res.cost), want_cost, rtol=1e-10)
    assert isinstance(res.n_iters, int) and isinstance(res.converged, bool)


@pytest.mark.parametrize("eps", [0.1, 0.01])
def test_plan_matches_pot(rng, eps):
    ot = pytest.importorskip("ot")
    a, b, C = ot_clouds(rng, 40, 30)
    res = ds.ot.sinkhorn(a, b, C, eps, rtol=1e-12)
    want = ot.sinkhorn(a, b, C, eps, method="sinkhorn_log", numItermax=100_000, stopThr=1e-14)
    np.testing.assert_allclose(res.plan, want, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("kernel", ["lse", "absorbed"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batched_matches_loop(xp, rng, dtype, kernel):
    a, b, C = ot_problem(rng, batch=(2, 3))
    C[0, 1] *= 5  # problems of very different difficulty: each stops on its own
    dt = getattr(xp, dtype)
    tol = 1e-5 if dtype == "float32" else 1e-11
    args = [xp.asarray(x, dtype=dt) for x in (a, b, C)]
    res = ds.ot.sinkhorn(*args, 0.05, rtol=tol, kernel=kernel)
    assert res.plan.shape == (2, 3, 7, 5) and res.plan.dtype == dt
    assert res.cost.shape == (2, 3) and res.n_iters.shape == (2, 3)
    iters = to_numpy(res.n_iters)
    assert len(set(iters.ravel().tolist())) > 1
    # the slow strict namespace checks two problems (the easy and the hard one)
    pairs = [(0, 0), (0, 1)] if "strict" in xp.__name__ else [(i, j) for i in range(2)
                                                                for j in range(3)]
    for i, j in pairs:
        one = ds.ot.sinkhorn(xp.asarray(a[i, j], dtype=dt), xp.asarray(b[i, j], dtype=dt),
                             xp.asarray(C[i, j], dtype=dt), 0.05, rtol=tol, kernel=kernel)
        assert one.n_iters == iters[i, j]
        rt = 1e-4 if dtype == "float32" else 1e-12
        np.testing.assert_allclose(to_numpy(res.plan)[i, j], to_numpy(one.plan),
                                   rtol=rt, atol=rt * 1e-2)
        np.testing.assert_allclose(to_numpy(res.cost)[i, j], float(one.cost), rtol=rt)
    assert bool(np.all(to_numpy(res.converged)))


def test_broadcast_batch_and_gradient_shapes(rng):
    a, b, C = ot_problem(rng, batch=(3,))
    res, f_vjp = ds.vjp(ds.ot.sinkhorn, a, b[0], C[0], 0.1, **TIGHT)  # b, C shared
    assert res.plan.shape == (3, 7, 5)
    for i in range(3):
        one = ds.ot.sinkhorn(a[i], b[0], C[0], 0.1, **TIGHT)
        np.testing.assert_allclose(res.plan[i], one.plan, rtol=1e-10, atol=1e-15)
    a_bar, b_bar, C_bar = f_vjp(cost=np.ones(3))
    assert a_bar.shape == (3, 7) and b_bar.shape == (5,) and C_bar.shape == (7, 5)
    np.testing.assert_allclose(C_bar, res.plan.sum(0), rtol=1e-12)


def test_float32_small_eps_no_nan(rng):
    a, b, C = ot_clouds(rng, 60)
    for dtype in (np.float32, np.float64):
        res = ds.ot.sinkhorn(a.astype(dtype), b.astype(dtype), C.astype(dtype), 1e-3,
                             rtol=1e-4 if dtype == np.float32 else 1e-9,
                             acceleration="momentum")
        assert res.plan.dtype == dtype and res.converged
        assert np.all(np.isfinite(res.plan)) and np.all(np.isfinite(res.f))
        assert np.isfinite(res.cost)


@pytest.mark.parametrize("eps", [1e-3, 5e-4])
def test_small_eps_all_variants(rng, eps):
    a, b, C = ot_clouds(rng, 30, 25)
    plain = ds.ot.sinkhorn(a, b, C, eps, maxiter=50_000, kernel="lse")
    assert plain.converged and plain.error <= 1e-9
    for kw in ({"kernel": "absorbed"}, {"acceleration": "momentum"},
               {"acceleration": "anderson", "kernel": "lse"},
               {"eps_scaling": 6}, {"eps_scaling": [0.1, 0.01], "acceleration": "momentum"}):
        res = ds.ot.sinkhorn(a, b, C, eps, maxiter=50_000, **kw)
        assert res.converged, kw
        assert np.all(np.isfinite(res.plan))
        np.testing.assert_allclose(res.plan, plain.plan, atol=1e-8)


def test_small_eps_namespaces(xp, rng):
    a, b, C = ot_clouds(rng, 30, 25)
    res = ds.ot.sinkhorn(*(xp.asarray(x) for x in (a, b, C)), 1e-3, acceleration="momentum")
    assert res.converged
    want = ds.ot.sinkhorn(a, b, C, 1e-3, maxiter=50_000)
    assert_close(res.plan, want.plan, xp=xp, rtol=0, atol=1e-8)


@pytest.mark.parametrize("kernel", ["lse", "absorbed"])
def test_tiny_eps_absorption(rng, kernel):
    # eps = 1e-4 on costs in [0, 1]: exp(-C/eps) underflows for almost every entry, so a
    # kernel-mode solver fails; the absorbed kernel must keep rebuilding (and fall back)
    a, b, C = ot_clouds(rng, 20, 15)
    res = ds.ot.sinkhorn(a, b, C, 1e-4, acceleration="momentum", maxiter=50_000,
                         kernel=kernel)
    assert res.converged and np.all(np.isfinite(res.plan)) and np.all(np.isfinite(res.f))
    if kernel == "absorbed":
        ref = ds.ot.sinkhorn(a, b, C, 1e-4, acceleration="momentum", maxiter=50_000,
                             kernel="lse")
        np.testing.assert_allclose(res.plan, ref.plan, atol=1e-8)


def test_acceleration_reduces_iterations(rng):
    a, b, C = ot_clouds(rng, 30, 25)
    plain = ds.ot.sinkhorn(a, b, C, 1e-3, maxiter=50_000)
    for acc in ("momentum", "anderson"):
        res = ds.ot.sinkhorn(a, b, C, 1e-3, acceleration=acc, maxiter=50_000)
        assert res.converged
        assert res.n_iters < 0.3 * plain.n_iters, (acc, res.n_iters, plain.n_iters)


def test_warm_start(rng):
    a, b, C = ot_problem(rng)
    res = ds.ot.sinkhorn(a, b, C, 0.05)
    again = ds.ot.sinkhorn(a, b, C, 0.05, f0=res.f, g0=res.g)
    assert again.n_iters == 0 and again.converged
    near = ds.ot.sinkhorn(a, b, C * 1.01, 0.05, f0=res.f)
    cold = ds.ot.sinkhorn(a, b, C * 1.01, 0.05)
    assert near.n_iters < cold.n_iters
    np.testing.assert_allclose(near.plan, cold.plan, atol=1e-9)


def test_error_measures_and_zero_weights(rng):
    a, b, C = ot_problem(rng)
    a[2] = 0.0
    a /= a.sum()
    res = ds.ot.sinkhorn(a, b, C, 0.05, error_measure="l2-pot", rtol=1e-10)
    assert res.error_measure == "l2-pot"
    import array_api_compat.numpy as xnp

    assert res.error == pytest.approx(float(marginal_error(res.plan, a, b, xnp, "l2-pot")))
    assert np.all(res.plan[2] == 0) and res.f[2] == -np.inf
    assert np.all(np.isfinite(res.plan)) and np.isfinite(res.cost)
    _, f_vjp = ds.vjp(ds.ot.sinkhorn, a, b, C, 0.05)
    grads = f_vjp(cost=np.float64(1.0), plan=np.ones_like(C))
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_non_convergence_warns_and_throws(rng):
    a, b, C = ot_clouds(rng, 30)
    with pytest.warns(ds.ConvergenceWarning, match="MAX_ITERATIONS.*maxiter.*larger eps.*"
                      "eps_scaling"):
        res = ds.ot.sinkhorn(a, b, C, 1e-3, maxiter=5)
    assert not res.converged and res.n_iters == 5 and res.error > 1e-9
    assert res.status == ds.Status.MAX_ITERATIONS and res.tolerance == pytest.approx(1e-9)
    with pytest.raises(ds.MaxIterationsError, match="MAX_ITERATIONS") as info:
        ds.ot.sinkhorn(a, b, C, 1e-3, maxiter=5, throw=True)
    assert info.value.result.n_iters == 5 and not info.value.result.converged
    # batched: an int array of statuses, the message counts the failures
    with pytest.warns(ds.ConvergenceWarning, match="1 of 2 problems"):
        both = ds.ot.sinkhorn(a, b, np.stack([C, C * 0.001]), 1e-3, maxiter=5)
    assert to_numpy(both.status).tolist() == [int(ds.Status.MAX_ITERATIONS),
                                              int(ds.Status.SUCCESS)]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"a": -1}, "a has negative entries"),
    ({"a": np.nan}, "a contains NaN"),
    ({"b": 2.0}, "different total mass"),
    ({"C": np.inf}, "C contains NaN or infinite"),
    ({"shape": True}, r"C must have shape \(\.\.\., 7, 5\)"),
    ({"eps": 0.0}, "eps must be a finite number > 0"),
    ({"eps": -1.0}, "eps must be a finite number > 0"),
    ({"opt": {"acceleration": "nesterov"}}, "acceleration must be one of None, 'momentum'"),
    ({"opt": {"error_measure": "l3"}}, "error_measure='l3'"),
    ({"opt": {"rtol": -1e-9}}, "rtol must be >= 0"),
    ({"opt": {"atol": np.nan}}, "atol must be finite"),
    ({"opt": {"maxiter": 0}}, "maxiter must be >= 1"),
    ({"opt": {"maxiter": True}}, "maxiter must be an integer >= 1, got the bool True"),
    ({"opt": {"check_every": 2.5}}, "check_every must be an integer"),
    ({"opt": {"eps_scaling": [0.1, 0.5]}}, "non-increasing"),
    ({"opt": {"gradient": "unrolled"}}, "gradient must be one of 'implicit', 'envelope'"),
    ({"opt": {"f0": np.zeros(3)}}, "f0 has shape"),
    ({"opt": {"kernel": "dense"}}, "kernel must be one of 'auto', 'lse', 'absorbed'"),
    ({"opt": {"callback": 3}}, "callback must be None or a callable"),
    ({"opt": {"throw": 1}}, "throw must be True or False"),
    ({"opt": {"max_iters": 3}}, "unexpected keyword argument.*max_iters.*maxiter"),
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
    if "shape" in kwargs:
        C = C.T
    with pytest.raises((ValueError, TypeError), match=match) as info:
        ds.ot.sinkhorn(a, b, C, kwargs.get("eps", 0.1), **kwargs.get("opt", {}))
    assert "diffsolve.ot.sinkhorn" in str(info.value)


def test_batch_mismatch_and_types(rng):
    a, b, C = ot_problem(rng, batch=(2,))
    with pytest.raises(ValueError, match="batch dimensions do not broadcast"):
        ds.ot.sinkhorn(a, b, np.stack([C[0]] * 3), 0.1)
    with pytest.raises(TypeError, match="diffsolve.ot.sinkhorn: a must be an array"):
        ds.ot.sinkhorn([0.5, 0.5], b[0], C[0], 0.1)


# ------------------------------------------------------------------------------------------
# gradients
# ------------------------------------------------------------------------------------------
def _loss_and_cots(rng, n, m, eps, **kw):
    Wp = rng.standard_normal((n, m))
    wf, wg, wc = rng.standard_normal(n), rng.standard_normal(m), 0.7

    def loss(a, b, C):
        r = ds.ot.sinkhorn(a, b, C, eps, **TIGHT, **kw)
        return np.sum(Wp * r.plan) + wf @ r.f + wg @ r.g + wc * r.cost

    return loss, {"plan": Wp, "f": wf, "g": wg, "cost": np.float64(wc)}


@pytest.mark.parametrize("eps", [0.2, 0.03])
@pytest.mark.parametrize(("n", "m"), [(6, 4), (4, 6)])  # both Schur complements
def test_implicit_gradient_vs_finite_differences(rng, eps, n, m):
    a, b, C = ot_problem(rng, n, m)
    loss, cots = _loss_and_cots(rng, n, m, eps)
    _, f_vjp = ds.vjp(ds.ot.sinkhorn, a, b, C, eps, **TIGHT)
    a_bar, b_bar, C_bar = f_vjp(**cots)
    dC = rng.standard_normal(C.shape)
    fd = central_difference(lambda t: loss(a, b, C + t * dC), 0.0, 1.0, h=1e-6)
    np.testing.assert_allclose(np.sum(C_bar * dC), fd, rtol=1e-6, atol=1e-8)
    # mass-preserving directions, including one that moves mass on both sides at once
    for shift in (0.0, 0.3):
        da = rng.standard_normal(n)
        da -= da.mean() - shift / n
        db = rng.standard_normal(m)
        db -= db.mean() - shift / m
        fd = central_difference(lambda t, da=da, db=db: loss(a + t * da, b + t * db, C),
                                0.0, 1.0, h=1e-6)
        np.testing.assert_allclose(a_bar @ da + b_bar @ db, fd, rtol=1e-6, atol=1e-8)
    # the minimum-norm representative: orthogonal to (1, -1)
    assert abs(a_bar.sum() - b_bar.sum()) < 1e-10


def test_envelope_matches_implicit_for_the_cost(rng):
    a, b, C = ot_problem(rng)
    _, vi = ds.vjp(ds.ot.sinkhorn, a, b, C, 0.05, **TIGHT)
    res, ve = ds.vjp(ds.ot.sinkhorn, a, b, C, 0.05, gradient="envelope", **TIGHT)
    for gi, ge in zip(vi(cost=np.float64(1.0)), ve(cost=np.float64(1.0)), strict=True):
        np.testing.assert_allclose(gi, ge, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ve(cost=np.float64(1.0))[2], res.plan, rtol=1e-14)
    with pytest.raises(ValueError, match="gradient='envelope' differentiates the cost only"):
        ve(plan=np.ones_like(C))


def test_implicit_matches_unrolled_autograd(rng):
    import autograd
    import autograd.numpy as anp
    from autograd.scipy.special import logsumexp

    a, b, C = ot_problem(rng, 6, 5)
    eps = 0.1
    Wp = rng.standard_normal(C.shape)

    def unrolled(C):
        # a plain log-domain loop, differentiated by autograd through every iteration
        f = anp.zeros(6)
        for _ in range(400):
            g = eps * anp.log(b) - eps * logsumexp((f[:, None] - C) / eps, axis=0)
            f = eps * anp.log(a) - eps * logsumexp((g[None, :] - C) / eps, axis=1)
        P = anp.exp((f[:, None] + g[None, :] - C) / eps)
        return anp.sum(Wp * P)

    want = autograd.grad(unrolled)(C)
    _, f_vjp = ds.vjp(ds.ot.sinkhorn, a, b, C, eps, **TIGHT)
    np.testing.assert_allclose(f_vjp(plan=Wp)[2], want, rtol=1e-8, atol=1e-11)


def test_vjp_namespaces(xp, rng):
    a, b, C = ot_problem(rng)
    Wp = rng.standard_normal(C.shape)
    _, ref = ds.vjp(ds.ot.sinkhorn, a, b, C, 0.05, **TIGHT)
    want = ref(plan=Wp, cost=np.float64(0.5))
    _, f_vjp = ds.vjp(ds.ot.sinkhorn, *(xp.asarray(x) for x in (a, b, C)), 0.05, **TIGHT)
    got = f_vjp(plan=xp.asarray(Wp), cost=xp.asarray(0.5, dtype=xp.float64))
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, xp=xp, rtol=1e-8, atol=1e-12)


def test_adapters_autograd_torch_jax(rng):
    a, b, C = ot_problem(rng)
    Wp = rng.standard_normal(C.shape)
    _, ref = ds.vjp(ds.ot.sinkhorn, a, b, C, 0.05, **TIGHT)
    want = ref(plan=Wp, cost=np.float64(1.0))

    import autograd
    import autograd.numpy as anp

    sk = ds.to_autograd(ds.ot.sinkhorn)
    got = autograd.grad(lambda a, b, C: anp.sum(Wp * sk(a, b, C, 0.05, **TIGHT).plan)
                        + sk(a, b, C, 0.05, **TIGHT).cost, argnum=(0, 1, 2))(a, b, C)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12)

    torch = pytest.importorskip("torch")
    ta, tb, tC = (torch.tensor(x, requires_grad=True) for x in (a, b, C))
    out = ds.to_torch(ds.ot.sinkhorn)(ta, tb, tC, 0.05, **TIGHT)
    ((torch.tensor(Wp) * out.plan).sum() + out.cost).backward()
    for t, w in zip((ta, tb, tC), want, strict=True):
        np.testing.assert_allclose(t.grad.numpy(), w, rtol=1e-9, atol=1e-12)

    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    sj = ds.to_jax(ds.ot.sinkhorn)

    def jloss(a, b, C):
        r = sj(a, b, C, 0.05, **TIGHT)
        return jnp.sum(jnp.asarray(Wp) * r.plan) + r.cost

    got = jax.grad(jloss, argnums=(0, 1, 2))(jnp.asarray(a), jnp.asarray(b), jnp.asarray(C))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-9, atol=1e-12)


def test_backward_warns_if_cg_stalls(rng):
    import array_api_compat.numpy as xnp

    from diffsolve.ot._implicit import entropic_potentials_vjp

    a, b, C = ot_clouds(rng, 40)
    res = ds.ot.sinkhorn(a, b, C, 0.01)
    # the backward reads the status of its krylov.cg solve and warns once, saying what to do
    with pytest.warns(ds.ConvergenceWarning, match="implicit-differentiation CG.*larger "
                      "eps.*gradient='envelope'") as seen:
        entropic_potentials_vjp(a, b, C, 0.01, res.f, res.g, res.plan,
                                rng.standard_normal(C.shape), None, None, None, xnp,
                                maxiter=1)
    assert len(seen) == 1 and seen[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        entropic_potentials_vjp(a, b, C, 0.01, res.f, res.g, res.plan,
                                rng.standard_normal(C.shape), None, None, None, xnp)


def test_backward_nan_cotangent_gives_nan_without_a_warning(rng):
    # reproduction: a NaN plan cotangent ran the private CG loop to its limit (NaN
    # curvature never stopped it) and warned that CG had not converged; krylov.cg reports
    # NONFINITE at once and the gradient is NaN, which is the answer, not a solver failure
    import array_api_compat.numpy as xnp

    from diffsolve.ot._implicit import entropic_potentials_vjp

    a, b, C = ot_clouds(rng, 12, 9)
    res = ds.ot.sinkhorn(a, b, C, 0.1)
    W = rng.standard_normal(C.shape)
    W[3, 4] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a_bar, b_bar, C_bar = entropic_potentials_vjp(
            a, b, C, 0.1, res.f, res.g, res.plan, W, None, None, None, xnp)
    assert np.all(np.isnan(a_bar)) and np.all(np.isnan(b_bar)) and np.isnan(C_bar).any()
    # a batch: only the problem with the NaN cotangent is NaN
    Wb = np.stack([W, rng.standard_normal(C.shape)])
    rb = ds.ot.sinkhorn(a, b, np.stack([C, C]), 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a_bar, _, C_bar = entropic_potentials_vjp(
            a, b, np.stack([C, C]), 0.1, rb.f, rb.g, rb.plan, Wb, None, None, None, xnp)
    assert np.all(np.isnan(a_bar[0])) and np.all(np.isfinite(a_bar[1]))
    assert np.all(np.isfinite(C_bar[1]))


def test_callback_and_schedule(rng):
    a, b, C = ot_clouds(rng, 20, 15)
    seen = []
    res = ds.ot.sinkhorn(a, b, C, 2e-3, eps_scaling=[0.1, 0.02], check_every=5,
                         callback=lambda s: seen.append((s.n_iters, s.eps, s.error)))
    assert res.converged
    its, epss, errs = zip(*seen, strict=True)
    assert list(its) == sorted(its) and all(i % 5 == 0 for i in its)
    assert [e for i, e in enumerate(epss) if i == 0 or e != epss[i - 1]] == [0.1, 0.02, 2e-3]
    assert errs[-1] <= 1e-9 and res.n_iters == its[-1]


@pytest.mark.parametrize("kw", [{"kernel": "absorbed"}, {"kernel": "lse"},
                                {"acceleration": "momentum"}, {"eps_scaling": 3}])
def test_callback_state_and_stop(rng, kw):
    a, b, C = ot_clouds(rng, 20, 15)
    states = []

    def callback(state):
        states.append(state)
        return state.n_iters >= 30

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stop that was asked for neither warns nor raises
        res = ds.ot.sinkhorn(a, b, C, 2e-3, callback=callback, throw=True, **kw)
    assert res.status == ds.Status.STOPPED and not res.converged
    assert 30 <= res.n_iters <= 40 and states[-1].n_iters == res.n_iters
    s = states[-1]
    assert s.f.shape == (20,) and s.g.shape == (15,) and isinstance(s.error, float)
    with pytest.raises(AttributeError):
        s.n_iters = 0  # frozen
    assert "STOPPED" in res.message and "callback" in res.message
    # batched: the state holds the batch; stopping marks the running problems only
    bat = ds.ot.sinkhorn(a, b, np.stack([C, C]), 2e-3,
                         callback=lambda s: s.error.shape == (2,) and s.n_iters >= 20)
    assert to_numpy(bat.status).tolist() == [int(ds.Status.STOPPED)] * 2


def test_fixed_budget_runs_exactly_maxiter(rng):
    a, b, C = ot_problem(rng)
    for kw in ({}, {"kernel": "lse"}, {"acceleration": "anderson"}):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # rtol = atol = 0 is a request: no warning
            res = ds.ot.sinkhorn(a, b, C, 0.05, rtol=0, atol=0, maxiter=37, throw=True, **kw)
        assert res.n_iters == 37 and res.status == ds.Status.MAX_ITERATIONS, kw
        assert not res.converged and res.tolerance == 0.0
        assert res.error < 1e-2  # it did iterate: the plan is a fair one


def test_rtol_is_relative_to_the_mass(rng):
    a, b, C = ot_problem(rng)
    ref = ds.ot.sinkhorn(a, b, C, 0.05, rtol=1e-7)
    big = ds.ot.sinkhorn(1e3 * a, 1e3 * b, C, 0.05, rtol=1e-7)
    assert big.tolerance == pytest.approx(1e-4) and big.n_iters == ref.n_iters
    np.testing.assert_allclose(big.plan, 1e3 * ref.plan, rtol=1e-9)
    # atol is absolute: the same atol on 1000x the mass needs more iterations
    assert ds.ot.sinkhorn(1e3 * a, 1e3 * b, C, 0.05, atol=1e-7, rtol=0).n_iters > ref.n_iters


def test_deprecated_names(rng):
    a, b, C = ot_problem(rng)
    new = ds.ot.sinkhorn(a, b, C, 0.05, atol=1e-7, rtol=0, maxiter=500)
    with pytest.warns(DeprecationWarning, match="tol= is deprecated.*use atol="):
        old = ds.ot.sinkhorn(a, b, C, 0.05, tol=1e-7, maxiter=500)
    assert old.n_iters == new.n_iters and old.tolerance == new.tolerance
    with pytest.warns(DeprecationWarning, match="max_iter= is deprecated.*use maxiter="):
        old = ds.ot.sinkhorn(a, b, C, 0.05, max_iter=3, rtol=0, atol=0)
    assert old.n_iters == 3
    with pytest.raises(TypeError, match="both tol= .deprecated. and atol="):
        ds.ot.sinkhorn(a, b, C, 0.05, tol=1e-7, atol=1e-8)
    with pytest.raises(TypeError, match="both max_iter= .deprecated. and maxiter="):
        ds.ot.sinkhorn(a, b, C, 0.05, max_iter=3, maxiter=4)


@pytest.mark.parametrize("kernel", ["lse", "absorbed"])
@pytest.mark.parametrize("acceleration", [None, "momentum", "anderson"])
def test_zero_weight_with_every_acceleration(rng, kernel, acceleration):
    # reproduction: acceleration="momentum" with a zero weight in b returned a NaN plan
    # (the over-relaxation computed -inf - -inf on the zero weight's potential)
    a, b, C = ot_problem(rng)
    b[1] = 0.0
    b /= b.sum()
    a[3] = 0.0
    a /= a.sum()
    ref = ds.ot.sinkhorn(a, b, C, 0.05, rtol=1e-12, kernel="lse")
    res = ds.ot.sinkhorn(a, b, C, 0.05, rtol=1e-12, kernel=kernel, acceleration=acceleration)
    assert res.converged and res.status == ds.Status.SUCCESS
    assert np.all(np.isfinite(res.plan)) and np.all(res.plan[:, 1] == 0)
    assert np.all(res.plan[3] == 0) and res.g[1] == -np.inf
    np.testing.assert_allclose(res.plan, ref.plan, atol=1e-11)


# ------------------------------------------------------------------------------------------
# the one input policy, for every OT solver
# ------------------------------------------------------------------------------------------
SOLVERS = {
    "sinkhorn": (lambda a, b, C, **kw: ds.ot.sinkhorn(a, b, C, 0.1, **kw)),
    "sinkhorn_newton_sparse": (lambda a, b, C, **kw: ds.ot.sinkhorn_newton_sparse(
        a, b, C, 0.1, **kw)),
    "sparse_ot": (lambda a, b, C, **kw: ds.ot.sparse_ot(a, b, C, 6, 0.5, **kw)),
    "quadratic_ot": (lambda a, b, C, **kw: ds.ot.quadratic_ot(a, b, C, 0.5, **kw)),
}


@pytest.mark.parametrize("name", list(SOLVERS))
@pytest.mark.parametrize(("case", "error", "match"), [
    ("float16", TypeError, r"C has dtype float16; .*float32 or float64.*astype"),
    ("bool", TypeError, r"a has dtype bool"),
    ("complex", TypeError, r"b has dtype complex128"),
    ("list", TypeError, r"a must be an array, got a builtins.list; pass np.asarray\(a\)"),
    ("size0", ValueError, r"a has shape \(0,\) with no entries|empty problem"),
    ("nan_C", ValueError, r"C contains NaN or infinite entries; costs must be finite"),
    ("nan_a", ValueError, r"a contains NaN or infinite entries"),
    ("inf_b", ValueError, r"b contains NaN or infinite entries"),
    ("overflow", ValueError, r"total mass of a or b overflows"),
    ("ndim", ValueError, r"C must have at least 2 dimension"),
])
def test_bad_input_policy(rng, name, case, error, match):
    # reproduction: float16 crashed inside Numba, size-0 inputs gave raw NumPy errors
    a, b, C = ot_problem(rng, 6, 5)
    if case == "float16":
        C = C.astype(np.float16)
    elif case == "bool":
        a = a > 0
    elif case == "complex":
        b = b.astype(np.complex128)
    elif case == "list":
        a = a.tolist()
    elif case == "size0":
        a, C = a[:0], C[:0]
    elif case == "nan_C":
        C[1, 2] = np.nan
    elif case == "nan_a":
        a[0] = np.nan
    elif case == "inf_b":
        b[0] = np.inf
    elif case == "overflow":
        a, b = a * 1e200, b * 1e200
    elif case == "ndim":
        C = C[0]
    with pytest.raises(error, match=match) as info:
        SOLVERS[name](a, b, C)
    assert f"diffsolve.ot.{name}" in str(info.value)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_int_read_only_and_strided_inputs(rng, name):
    a = np.array([2, 1, 1, 2])  # integer weights promote to float64
    b = np.array([3, 3])
    C = rng.random((2, 4)).T
    want = SOLVERS[name](a.astype(np.float64), b.astype(np.float64), np.ascontiguousarray(C))
    C_big = np.zeros((8, 4))
    C_big[::2, ::2] = C  # a non-contiguous view
    view = C_big[::2, ::2]
    copies = [x.copy() for x in (a, b, view)]
    for x in (a, b, C_big):
        x.setflags(write=False)
    got = SOLVERS[name](a, b, view)
    assert got.plan.dtype == np.float64
    np.testing.assert_allclose(got.plan, want.plan, rtol=1e-10, atol=1e-14)
    for x, c in zip((a, b, view), copies, strict=True):
        np.testing.assert_array_equal(x, c)  # inputs are never modified


@pytest.mark.parametrize("batch", [(), (2,)])
def test_absorbed_kernel_with_an_overflowed_entry_takes_the_exact_step(rng, monkeypatch,
                                                                       batch):
    """A rebuilt kernel with an inf entry (a potential pushed out of range, e.g. by a
    float32 product that lost subnormal terms) must not be multiplied (inf * 0 = NaN and
    NumPy's invalid-value warning): that half-step takes the exact log-sum-exp and the
    solve ends where an undisturbed one does."""
    import diffsolve.ot._sinkhorn as sk

    a, b, C = ot_problem(rng, batch=batch)
    want = ds.ot.sinkhorn(a, b, C, 0.05, rtol=1e-11, kernel="absorbed")
    plan = sk._plan
    calls = [0]

    def plan_with_an_inf(*args, **kwargs):
        K = plan(*args, **kwargs)
        calls[0] += 1
        if calls[0] == 1:  # the first absorption overflows in one entry (the final plan
            K[..., 0, 0] = np.inf  # is a later call)
        return K

    monkeypatch.setattr(sk, "_plan", plan_with_an_inf)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from inf * 0
        got = ds.ot.sinkhorn(a, b, C, 0.05, rtol=1e-11, kernel="absorbed")
    assert calls[0] >= 3, "the kernel was never rebuilt: the test did not exercise the guard"
    assert bool(np.all(got.converged))
    np.testing.assert_allclose(got.plan, want.plan, rtol=1e-9, atol=1e-14)
