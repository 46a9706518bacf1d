"""odeint dense output at many output times: the batched evaluation (all outputs of a
host-path solve at once, all outputs of an array-path step at once) agrees with the
per-output evaluation and with a direct evaluation of the continuous extension, in both
directions of time, on early stops, in other namespaces, and under differentiation."""

from __future__ import annotations

import autograd.numpy as anp
import numpy as np
import pytest

import diffsolve as ds
from diffsolve.ode import _adjoint, _integrate, odeint
from diffsolve.ode._tableaux import get_tableau
from tests.helpers import central_difference, to_numpy

P = np.array([1.5, 1.0, 3.0, 1.0])


def lv2(t, y, p):
    # one (2,) state or a stack (..., 2) of uncoupled systems
    out = np.empty_like(y)
    x, z = y[..., 0], y[..., 1]
    out[..., 0] = p[0] * x - p[1] * x * z
    out[..., 1] = -p[2] * z + p[3] * x * z
    return out


def lv(t, y, p):
    if y.shape[0] == 2:
        return lv2(t, y, p)
    # 16 components: 8 uncoupled systems as one state (the array loop, n > HOST_MAX_N)
    return lv2(t, y.reshape((8, 2)), p).reshape(16)


Y2 = np.array([1.0, 1.2])
Y16 = (np.ones((8, 2)) * (1.0 + 0.05 * np.arange(8))[:, None]).reshape(16)


def _per_output(monkeypatch):
    """Force the per-output evaluation on both loops and in the discrete adjoint."""
    monkeypatch.setattr(_integrate, "STEP_DENSE_BATCH", 10**9)
    monkeypatch.setattr(_adjoint, "STEP_DENSE_BATCH", 10**9)


def _solve(y0, t, **kw):
    kw = {"rtol": 1e-6, "atol": 1e-8, **kw}
    return odeint(lv, y0, t, P, **kw)


@pytest.mark.parametrize("y0", [Y2, Y16], ids=["host", "array"])
@pytest.mark.parametrize("method", ["tsit5", "dopri5", "bs3"])
@pytest.mark.parametrize("backward", [False, True])
def test_batched_outputs_equal_per_output(y0, method, backward, monkeypatch):
    t = np.linspace(0.0, 6.0, 12001)
    if backward:
        y0 = np.asarray(_solve(y0, t, method=method).ys[-1])
        t = t[::-1].copy()
    kw = dict(method=method, rtol=1e-4, atol=1e-6)
    fast = _solve(y0, t, **kw)
    assert fast.n_steps * 4 < t.shape[0]  # many outputs per step: the batched branch
    with monkeypatch.context() as m:
        _per_output(m)
        slow = _solve(y0, t, **kw)
    assert fast.n_steps == slow.n_steps
    np.testing.assert_allclose(fast.ys, slow.ys, rtol=1e-12, atol=1e-14)


def test_host_and_array_loops_agree_with_many_outputs(monkeypatch):
    t = np.linspace(0.0, 5.0, 2001)
    host = _solve(Y2, t)
    monkeypatch.setattr(_integrate, "HOST_MAX_N", 0)
    arr = _solve(Y2, t)
    assert host.n_steps == arr.n_steps
    np.testing.assert_allclose(host.ys, arr.ys, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["tsit5", "dopri5", "bs3"])
def test_polynomial_form_equals_the_weighted_combination(name, rng):
    # y + Σ_m θ^(m+1) Q_m with Q = h Pᵀ K, as the batched outputs evaluate it, against
    # y + h Σ_i b_i(θ) k_i with the per-output weights
    tab = get_tableau(name)
    n = 3
    K = rng.standard_normal((tab.n_stages, n))
    y = rng.standard_normal(n)
    h = -0.37
    theta = np.concatenate([[0.0, 1.0], rng.uniform(0.0, 1.0, 40)])
    powers = _integrate.theta_powers(theta, tab.P.shape[1])
    np.testing.assert_allclose(powers[:, -1], theta ** tab.P.shape[1], rtol=1e-14)
    out = y + powers @ (h * (tab.P.T @ K))
    np.testing.assert_array_equal(out[0], y)
    for q, th in enumerate(theta):
        ref = y + h * (np.asarray(tab.dense_weights(float(th))) @ K)
        np.testing.assert_allclose(out[q], ref, rtol=1e-12, atol=1e-14)


def test_outputs_equal_a_direct_evaluation_of_the_interpolant():
    # replay the accepted steps one by one and evaluate y_n + h Σ b_i(θ) k_i directly
    t = np.linspace(0.0, 4.0, 1201)
    res = _solve(Y2, t, method="dopri5")
    tab = get_tableau("dopri5")
    ts = np.asarray(res.ts)
    ys = np.asarray(res.ys)
    y = Y2.copy()
    checked = 0
    for k in range(ts.shape[0] - 1):
        t0, h = ts[k], ts[k + 1] - ts[k]
        K = np.zeros((tab.n_stages, 2))
        K[0] = lv(t0, y, P)
        for i in range(1, tab.n_stages):
            K[i] = lv(t0 + tab.c[i] * h, y + h * (tab.A[i, :i] @ K[:i]), P)
        inside = (t > t0) & (t <= ts[k + 1])
        for q in np.nonzero(inside)[0]:
            w = np.asarray(tab.dense_weights(float((t[q] - t0) / h)))
            np.testing.assert_allclose(ys[q], y + h * (w @ K), rtol=1e-12, atol=1e-14)
            checked += 1
        s = tab.n_stages  # FSAL: the last stage argument is the new state
        y = y + h * (tab.A[s - 1, :s - 1] @ K[:s - 1])
    assert checked == t.shape[0] - 1


@pytest.mark.parametrize("y0", [Y2, Y16], ids=["host", "array"])
def test_early_stop_outputs(y0, monkeypatch):
    # out of steps half way: the reached outputs equal the per-output ones, the rest NaN
    t = np.linspace(0.0, 10.0, 4001)
    with pytest.warns(ds.ConvergenceWarning, match="max_steps=40"):
        fast = _solve(y0, t, max_steps=40)
    with monkeypatch.context() as m, pytest.warns(ds.ConvergenceWarning):
        _per_output(m)
        slow = _solve(y0, t, max_steps=40)
    assert not fast.converged
    ys = to_numpy(fast.ys).reshape(t.shape[0], -1)
    reached = int(np.sum(~np.isnan(ys[:, 0])))
    assert 100 < reached < t.shape[0]
    assert np.all(np.isnan(ys[reached:]))
    np.testing.assert_allclose(fast.ys, slow.ys, rtol=1e-12, atol=1e-14, equal_nan=True)


def test_float32_array_path(monkeypatch):
    t = np.linspace(0.0, 3.0, 1001)
    y0 = Y16.astype(np.float32)
    fast = odeint(lv, y0, t, P.astype(np.float32), rtol=1e-4, atol=1e-6)
    with monkeypatch.context() as m:
        _per_output(m)
        slow = odeint(lv, y0, t, P.astype(np.float32), rtol=1e-4, atol=1e-6)
    assert fast.ys.dtype == np.float32
    # the combination runs in float64 either way: the float32 outputs round alike (at most
    # one float32 unit apart where a float64 value sits next to a float32 tie)
    np.testing.assert_allclose(fast.ys, slow.ys, rtol=2e-7, atol=0)


def test_namespace_outputs(xp, monkeypatch):
    def f(t, y, p):
        return xp.stack([p[0] * y[0] - p[1] * y[0] * y[1], -p[2] * y[1] + p[3] * y[0] * y[1]])

    y0 = xp.asarray([1.0, 1.2], dtype=xp.float64)
    p = xp.asarray(P, dtype=xp.float64)
    t = np.linspace(0.0, 3.0, 801)
    monkeypatch.setattr(_integrate, "HOST_MAX_N", 0)  # the array loop in every namespace
    fast = odeint(f, y0, t, p, rtol=1e-6, atol=1e-8)
    _per_output(monkeypatch)
    slow = odeint(f, y0, t, p, rtol=1e-6, atol=1e-8)
    ref = _solve(Y2, t)
    np.testing.assert_allclose(to_numpy(fast.ys), to_numpy(slow.ys), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(to_numpy(fast.ys), ref.ys, rtol=1e-12, atol=1e-14)


def lv_ag(t, y, p):
    # lv written with autograd.numpy, for the gradients
    y2 = anp.reshape(y, (-1, 2))
    x, z = y2[:, 0], y2[:, 1]
    out = anp.stack([p[0] * x - p[1] * x * z, -p[2] * z + p[3] * x * z], axis=1)
    return anp.reshape(out, y.shape)


@pytest.mark.parametrize("y0", [Y2, Y16], ids=["host", "array"])
def test_gradients_with_many_outputs_match_fd(y0, rng):
    t = np.linspace(0.0, 2.0, 401)
    kw = dict(method="dopri5", rtol=1e-10, atol=1e-12)
    res, v = ds.vjp(odeint, lv_ag, y0, t, P, **kw)
    W = rng.standard_normal(res.ys.shape)
    y0_bar, t_bar, p_bar = v(ys=W)

    def loss(y, p):  # steps frozen: the discrete adjoint is the gradient of this
        return float(np.sum(W * odeint(lv_ag, y, t, p, step_ts=res.ts, **kw).ys))

    d = rng.standard_normal(y0.shape)
    fd = central_difference(lambda y: loss(y, P), y0, d)
    assert np.sum(y0_bar * d) == pytest.approx(fd, rel=1e-6)
    d = rng.standard_normal(P.shape)
    assert np.sum(p_bar * d) == pytest.approx(central_difference(lambda p: loss(y0, p), P, d),
                                              rel=1e-6)
    for q in (1, 123, 400):
        e = np.zeros(t.shape[0])
        e[q] = 1.0
        fd = central_difference(
            lambda s: float(np.sum(W * odeint(lv_ag, y0, s, P, **kw).ys)), t, e, h=1e-6)
        assert t_bar[q] == pytest.approx(fd, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("y0", [Y2, Y16], ids=["host", "array"])
@pytest.mark.parametrize("kw", [{}, {"regularizers": ("error", "stiffness")},
                                {"max_steps": 30}, {"checkpoint_every": 3}],
                         ids=["plain", "regularizers", "early-stop", "checkpoints"])
def test_adjoint_injection_batched_equals_per_output(y0, kw, rng, monkeypatch):
    # the discrete adjoint's output cotangents, many per step at once vs one by one
    t = np.linspace(0.0, 8.0, 3001)
    opts = dict(method="tsit5", rtol=1e-5, atol=1e-7, **kw)
    W = rng.standard_normal((t.shape[0], y0.shape[0]))
    cot = dict(ys=W)
    if "regularizers" in kw:
        cot.update(reg_error=np.asarray(0.3), reg_stiffness=np.asarray(0.2))

    def grads():
        res, v = ds.vjp(odeint, lv_ag, y0, t, P, **opts)
        return res, v(**cot)

    if "max_steps" in kw:
        with pytest.warns(ds.ConvergenceWarning):
            res, fast = grads()
        with monkeypatch.context() as m, pytest.warns(ds.ConvergenceWarning):
            _per_output(m)
            _, slow = grads()
        # unreached outputs with non-zero cotangents: NaN gradients, the same either way
        assert np.all(np.isnan(fast[0]))
        W[np.isnan(to_numpy(res.ys)[:, 0])] = 0.0
        with pytest.warns(ds.ConvergenceWarning):
            _, fast = grads()
        with monkeypatch.context() as m, pytest.warns(ds.ConvergenceWarning):
            _per_output(m)
            _, slow = grads()
    else:
        res, fast = grads()
        with monkeypatch.context() as m:
            _per_output(m)
            _, slow = grads()
    assert res.n_steps * 4 < t.shape[0]
    assert np.all(np.isfinite(fast[0])) and np.all(np.isfinite(fast[2]))
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_t_eval_list_skips_its_cotangent(rng, monkeypatch):
    # t_eval given as a list has no cotangent slot: its T f calls are skipped, the other
    # gradients are those of the array call
    from diffsolve.ode import _odeint

    t = np.linspace(0.0, 3.0, 301)
    W = rng.standard_normal((t.shape[0], 2))
    ref = ds.vjp(odeint, lv_ag, Y2, t, P)[1](ys=W)
    calls = []
    inner = _odeint.t_eval_cotangent
    monkeypatch.setattr(_odeint, "t_eval_cotangent",
                        lambda *a, **k: calls.append(1) or inner(*a, **k))
    y0_bar, p_bar = ds.vjp(odeint, lv_ag, Y2, t.tolist(), P)[1](ys=W)
    assert not calls
    np.testing.assert_array_equal(y0_bar, ref[0])
    np.testing.assert_array_equal(p_bar, ref[2])
    assert ds.vjp(odeint, lv_ag, Y2, t, P)[1](ys=W)[1].shape == t.shape
    assert calls
