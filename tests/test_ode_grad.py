"""odeint gradients: discrete adjoint vs finite differences with the steps frozen,
backsolve vs discrete, regularisers, t_eval, checkpointing, the compiled path, adapters."""

from __future__ import annotations

import autograd
import autograd.numpy as anp
import numpy as np
import pytest

import diffsolve as ds
from diffsolve.ode import odeint
from tests.helpers import assert_close, central_difference, to_numpy
from tests.lotka_volterra import lv as lv_plain
from tests.lotka_volterra import lv_jit, lv_jit_vjp

METHODS = ["tsit5", "dopri5", "bs3"]


def lv(t, y, p):
    # Lotka–Volterra with a time-dependent factor, written with autograd.numpy
    rate = 1.0 + 0.1 * anp.sin(t)
    return anp.array([p[0] * y[0] - p[1] * y[0] * y[1],
                      -p[2] * y[1] + p[3] * y[0] * y[1]]) * rate


P = np.array([1.5, 1.0, 3.0, 1.0])
Y0 = np.array([1.0, 1.2])
T = np.linspace(0.0, 3.0, 7)


def _loss_and_grads(method, regs, rng, **kw):
    opts = dict(method=method, rtol=1e-6, atol=1e-8, regularizers=regs, **kw)
    res, vjp_fn = ds.vjp(odeint, lv, Y0, T, P, **opts)
    W = rng.standard_normal(res.ys.shape)
    wE, wS = 0.7, 0.3
    y0_bar, t_bar, p_bar = vjp_fn(ys=W, reg_error=np.asarray(wE),
                                  reg_stiffness=np.asarray(wS))

    def loss(y0, p):  # the same computation with the step sequence frozen
        r = odeint(lv, y0, T, p, step_ts=res.ts, **opts)
        return np.sum(W * r.ys) + wE * float(r.reg_error) + wS * float(r.reg_stiffness)

    return res, loss, y0_bar, t_bar, p_bar


@pytest.mark.parametrize("method", METHODS)
def test_discrete_adjoint_matches_frozen_step_fd(method, rng):
    _, loss, y0_bar, _, p_bar = _loss_and_grads(method, (), rng)
    v = rng.standard_normal(2)
    fd = central_difference(lambda y: loss(y, P), Y0, v)
    assert y0_bar @ v == pytest.approx(fd, rel=1e-7)
    v = rng.standard_normal(4)
    fd = central_difference(lambda p: loss(Y0, p), P, v)
    assert p_bar @ v == pytest.approx(fd, rel=1e-7)


@pytest.mark.parametrize("regs", [("error",), ("stiffness",), ("error", "stiffness")])
@pytest.mark.parametrize("method", METHODS)
def test_regularizer_gradients_match_fd(method, regs, rng):
    res, loss, y0_bar, t_bar, p_bar = _loss_and_grads(method, regs, rng)
    if "error" in regs:
        assert float(res.reg_error) > 0
    if "stiffness" in regs:
        assert float(res.reg_stiffness) > 0
    # the error estimate cancels to ~rtol |k|, so differences are noisier than for ys
    for x, g, fun in ((Y0, y0_bar, lambda y: loss(y, P)), (P, p_bar, lambda p: loss(Y0, p))):
        v = rng.standard_normal(x.shape)
        assert g @ v == pytest.approx(central_difference(fun, x, v), rel=2e-5)
    assert np.isnan(to_numpy(t_bar)[0])  # documented: t_eval[0] undefined for R_E/R_S


def test_checkpointing_gives_the_same_gradient(rng):
    a = _loss_and_grads("tsit5", ("error",), np.random.default_rng(3))
    b = _loss_and_grads("tsit5", ("error",), np.random.default_rng(3), checkpoint_every=4)
    for x, y in zip(a[2:], b[2:]):
        np.testing.assert_allclose(to_numpy(x), to_numpy(y), rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize("method, tol, rel", [("tsit5", 1e-9, 1e-6), ("dopri5", 1e-9, 1e-6),
                                              ("bs3", 1e-7, 1e-3)])
def test_backsolve_matches_discrete(method, tol, rel, rng):
    t = T[:4]  # [0, 1.5]: the augmented backward solve calls autograd at every stage
    W = rng.standard_normal((len(t), 2))
    kw = dict(method=method, rtol=tol, atol=tol)
    _, vb = ds.vjp(odeint, lv, Y0, t, P, adjoint="backsolve", **kw)
    _, vd = ds.vjp(odeint, lv, Y0, t, P, **kw)
    for b, d in zip(vb(ys=W), vd(ys=W)):
        np.testing.assert_allclose(b, d, rtol=rel, atol=rel * 1e-2)


def test_t_eval_gradient(rng):
    kw = dict(method="dopri5", rtol=1e-11, atol=1e-13)
    W = rng.standard_normal((len(T), 2))
    _, v = ds.vjp(odeint, lv, Y0, T, P, **kw)
    _, t_bar, _ = v(ys=W)
    for q in (0, 3, len(T) - 1):
        e = np.zeros(len(T))
        e[q] = 1.0
        fd = central_difference(
            lambda t: float(np.sum(W * odeint(lv, Y0, t, P, **kw).ys)), T, e, h=1e-5)
        assert t_bar[q] == pytest.approx(fd, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("mode", ["unbiased", "biased"])
def test_local_regularizer_gradient_is_one_step(mode):
    """The local regulariser differentiates one step from (t_r, u_r) with u_r, h_r fixed."""
    import array_api_compat.numpy as xp

    from diffsolve.ode._adjoint import one_step_adjoint
    from diffsolve.ode._integrate import Stepper
    from diffsolve.ode._tableaux import TABLEAUX
    from diffsolve.ode._vector_field import make_rhs, make_vjp

    kw = dict(regularizers=("error", "stiffness"), local_regularization=mode, seed=5)
    res, v = ds.vjp(odeint, lv, Y0, T, P, **kw)
    again = odeint(lv, Y0, T, P, **kw)
    assert float(again.reg_error) == float(res.reg_error) > 0  # seeded
    y0_bar, _, p_bar = v(reg_error=np.asarray(1.0), reg_stiffness=np.asarray(0.5))
    np.testing.assert_array_equal(y0_bar, 0.0)  # only the extra step's stages
    # the same step written out: E(t_r) |h_r| + 0.5 λ(t_r) |h_r| for fixed t_r, u_r, h_r
    _, fwd = odeint.fwd(lv, Y0, T, P, **kw)
    r = fwd.trajs[0].local
    st = Stepper(xp, TABLEAUX["tsit5"], np.float64, "cpu", 2, 1e-6, 1e-9)

    def R(p):
        rhs = make_rhs(lv, p, (2,), xp)
        st.K[0, :] = rhs(r["t"], r["y"])
        y_new = st.stages(rhs, r["t"], r["y"], r["h"])
        return (st.error_norm(r["y"], y_new, r["h"]) + 0.5 * st.stiffness()) * abs(r["h"])

    assert R(P) == pytest.approx(float(res.reg_error) + 0.5 * float(res.reg_stiffness),
                                 rel=1e-12)
    e = np.random.default_rng(1).standard_normal(4)
    assert p_bar @ e == pytest.approx(central_difference(R, P, e), rel=1e-5)
    pl = one_step_adjoint(st, make_rhs(lv, P, (2,), xp), make_vjp(lv, None, P, (2,), xp, False),
                          r["t"], r["y"], r["h"], 1.0, 0.5)
    np.testing.assert_allclose(pl, p_bar, rtol=1e-12)


def test_batched_gradients_equal_looped(rng):
    Y = 1.0 + 0.2 * rng.random((3, 2))
    W = rng.standard_normal((len(T), 3, 2))
    _, v = ds.vjp(odeint, lv, Y, T, P, regularizers=("error",))
    y_bar, _, p_bar = v(ys=W, reg_error=np.asarray(0.5))
    parts = [ds.vjp(odeint, lv, Y[b], T, P, regularizers=("error",))[1](
        ys=W[:, b], reg_error=np.asarray(0.5)) for b in range(3)]
    np.testing.assert_allclose(y_bar, np.stack([g[0] for g in parts]), rtol=1e-12)
    np.testing.assert_allclose(p_bar, sum(g[2] for g in parts), rtol=1e-12)


def lv_batch(t, y, p):
    x, z = y[:, 0], y[:, 1]
    return anp.stack([p[0] * x - p[1] * x * z, -p[2] * z + p[3] * x * z], axis=1)


def test_shared_batch_gradient_matches_fd(rng):
    Y = 1.0 + 0.2 * rng.random((3, 2))
    W = rng.standard_normal((len(T), 3, 2))
    res, v = ds.vjp(odeint, lv_batch, Y, T, P, batch_mode="shared", regularizers=("error",))
    _, _, p_bar = v(ys=W, reg_error=np.asarray(0.5))
    e = rng.standard_normal(4)

    def loss(p):
        r = odeint(lv_batch, Y, T, p, batch_mode="shared", step_ts=res.ts,
                   regularizers=("error",))
        return float(np.sum(W * r.ys)) + 0.5 * float(r.reg_error)

    fd = central_difference(loss, P, e)
    assert p_bar @ e == pytest.approx(fd, rel=1e-6)


def test_compiled_path_gradients_with_jitted_vjp(rng):
    W = rng.standard_normal((len(T), 2))
    _, va = ds.vjp(odeint, lv_jit, Y0, T, P, vjp=lv_jit_vjp, regularizers=("error",))
    _, vb = ds.vjp(odeint, lv_plain, Y0, T, P, regularizers=("error",))
    for a, b in zip(va(ys=W, reg_error=np.asarray(1.0)), vb(ys=W, reg_error=np.asarray(1.0))):
        np.testing.assert_allclose(a, b, rtol=1e-9, equal_nan=True)
    # compiled reverse (njit vjp) == the array-code reverse driving the same functions
    regs = ("error", "stiffness")
    cot = dict(ys=W, reg_error=np.asarray(0.7), reg_stiffness=np.asarray(0.3))
    _, vc = ds.vjp(odeint, lv_jit, Y0, T, P, vjp=lv_jit_vjp, regularizers=regs)
    _, vp = ds.vjp(odeint, lv_jit, Y0, T, P, vjp=lambda *a: lv_jit_vjp(*a), regularizers=regs,
                   checkpoint_every=2)
    for a, b in zip(vc(**cot), vp(**cot)):
        np.testing.assert_allclose(a, b, rtol=1e-11, equal_nan=True)
    _, vn = ds.vjp(odeint, lv_jit, Y0, T, P)
    with pytest.raises(TypeError, match="pass vjp="):
        vn(ys=W)


def test_namespace_gradients_with_vjp(xp):
    y0 = xp.asarray([1.0, 2.0], dtype=xp.float64)
    p = xp.asarray([0.7], dtype=xp.float64)

    def f(t, y, p_):
        return -p_[0] * y

    def vjp(t, y, p_, v):
        return -p_[0] * v, xp.reshape(-xp.sum(v * y), (1,))

    _, v = ds.vjp(odeint, f, y0, [0.0, 1.0], p, vjp=vjp, rtol=1e-10, atol=1e-12)
    # t_eval given as a list: no cotangent slot for it
    y0_bar, p_bar = v(ys=xp.asarray([[0.0, 0.0], [1.0, 1.0]], dtype=xp.float64))
    e = float(np.exp(-0.7))
    assert_close(y0_bar, xp.asarray([e, e], dtype=xp.float64), xp=xp, rtol=1e-8)
    assert_close(p_bar, xp.asarray([-3.0 * e], dtype=xp.float64), xp=xp, rtol=1e-8)


def _adapter_reference():
    res, v = ds.vjp(odeint, lv, Y0, T, P, regularizers=("error",))
    W = np.zeros(res.ys.shape)
    W[-1] = 2.0 * res.ys[-1]
    return v(ys=W, reg_error=np.asarray(0.1))


def test_to_autograd():
    ode = ds.to_autograd(odeint)

    def loss(y0, p):
        r = ode(lv, y0, T, p, regularizers=("error",))
        return anp.sum(r.ys[-1] ** 2) + 0.1 * r.reg_error

    gy, gp = autograd.grad(loss, argnum=(0, 1))(Y0, P)
    want = _adapter_reference()
    np.testing.assert_allclose(gy, want[0], rtol=1e-12)
    np.testing.assert_allclose(gp, want[2], rtol=1e-12)


def test_to_torch():
    torch = pytest.importorskip("torch")
    ode = ds.to_torch(odeint)
    y0 = torch.tensor(Y0, requires_grad=True)
    p = torch.tensor(P, requires_grad=True)
    r = ode(lv, y0, torch.tensor(T), p, regularizers=("error",))
    (torch.sum(r.ys[-1] ** 2) + 0.1 * r.reg_error).backward()
    want = _adapter_reference()
    np.testing.assert_allclose(y0.grad.numpy(), want[0], rtol=1e-12)
    np.testing.assert_allclose(p.grad.numpy(), want[2], rtol=1e-12)


def test_to_jax():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    ode = ds.to_jax(odeint)

    def loss(p):
        r = ode(lv, jnp.asarray(Y0), jnp.asarray(T), p, regularizers=("error",))
        return jnp.sum(r.ys[-1] ** 2) + 0.1 * r.reg_error

    g = jax.jit(jax.grad(loss))(jnp.asarray(P))
    np.testing.assert_allclose(np.asarray(g), _adapter_reference()[2], rtol=1e-12)
    # the whole result leaves jit (every field is an array or None)
    r = jax.jit(lambda p: ode(lv, jnp.asarray(Y0), jnp.asarray(T), p))(jnp.asarray(P))
    ref = odeint(lv, Y0, T, P)
    np.testing.assert_allclose(np.asarray(r.ys), ref.ys, rtol=1e-12)
    assert r.stats == ref.stats and r.success and r.ts is None


def test_from_torch_vector_field():
    torch = pytest.importorskip("torch")

    def f_t(t, y, p):
        return torch.tanh(p[:2] * y) - p[2] * y

    f_np, vjp_np = ds.ode.from_torch(f_t)

    def f_ag(t, y, p):
        return anp.tanh(p[:2] * y) - p[2] * y

    p = np.array([0.5, -0.3, 0.2])
    W = np.ones((len(T), 2))
    a = ds.vjp(odeint, f_np, Y0, T, p, vjp=vjp_np)[1](ys=W)
    b = ds.vjp(odeint, f_ag, Y0, T, p)[1](ys=W)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-10)


def test_from_jax_vector_field():
    pytest.importorskip("jax")
    import jax.numpy as jnp

    def f_j(t, y, p):
        return jnp.tanh(p[:2] * y) - p[2] * y

    f_np, vjp_np = ds.ode.from_jax(f_j)

    def f_ag(t, y, p):
        return anp.tanh(p[:2] * y) - p[2] * y

    p = np.array([0.5, -0.3, 0.2])
    W = np.ones((len(T), 2))
    a = ds.vjp(odeint, f_np, Y0, T, p, vjp=vjp_np)[1](ys=W)
    b = ds.vjp(odeint, f_ag, Y0, T, p)[1](ys=W)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-10)
