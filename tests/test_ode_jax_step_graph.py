"""from_jax pairs: the discrete adjoint reverses each explicit RK step in one compiled call
(JaxStepGraph). The gradients must be the per-stage route's (one VJP call per stage) to
rounding, for every kind of cotangent a step receives."""

from __future__ import annotations

import numpy as np
import pytest

import diffsolve as ds
from diffsolve.ode import _adjoint as AD
from diffsolve.ode import _vector_field as VF
from diffsolve.ode import from_jax, odeint

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")


def _field(t, y, p):
    W = p[:4].reshape((2, 2))
    return jnp.tanh(y @ W.T + p[4:6]) * (1.0 + 0.1 * t) - 0.3 * y


def _field_no_params(t, y, p):
    return jnp.sin(y[..., ::-1]) * (1.0 + 0.1 * t) - 0.3 * y


@pytest.fixture(autouse=True)
def _x64():
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


@pytest.fixture
def built(monkeypatch):
    """Counts the steps reversed one host call each (JaxStepGraph.build) and, under the
    key "fused", the whole sweeps reversed in one compiled loop."""
    count = []
    real = VF.JaxStepGraph.build
    real_sweep = VF.JaxStepGraph.reverse_steps

    def spy(self, *args, **kwargs):
        count.append(1)
        return real(self, *args, **kwargs)

    def spy_sweep(self, *args, **kwargs):
        count.append("fused")
        return real_sweep(self, *args, **kwargs)

    monkeypatch.setattr(VF.JaxStepGraph, "build", spy)
    monkeypatch.setattr(VF.JaxStepGraph, "reverse_steps", spy_sweep)
    return count


@pytest.fixture(params=["fused", "per-step"])
def route(request, monkeypatch):
    """The reverse sweep in one compiled loop, or one compiled call per step."""
    monkeypatch.setattr(AD, "FUSED_REVERSE", request.param == "fused")
    return request.param


def _grads(field, y0, t, p, per_stage=False, **kw):
    f_np, vjp_np = from_jax(field)
    vjp = (lambda *a: vjp_np(*a)) if per_stage else vjp_np
    res, pull = ds.vjp(odeint, f_np, y0, t, p, vjp=vjp, **kw)
    cot = {"ys": np.random.default_rng(7).standard_normal(res.ys.shape)}
    if res.reg_error is not None:
        cot["reg_error"] = 0.7
    if res.reg_stiffness is not None:
        cot["reg_stiffness"] = -0.4
    return res, pull(**cot)


def _check_route(built, route, regularised, checkpoints=False):
    if route == "fused" and not regularised and not checkpoints:
        assert built == ["fused"]  # one sweep, no step reversed on its own
    else:
        assert "fused" not in built and len(built) > 5


@pytest.mark.parametrize("kw", [dict(method="dopri5"), dict(method="tsit5", checkpoint_every=3),
                                dict(method="bs3"),
                                dict(method="dopri5", regularizers=("error", "stiffness"))],
                         ids=["dopri5", "tsit5-checkpoints", "bs3", "regularisers"])
@pytest.mark.parametrize("n_out", [6, 400])
def test_step_graph_matches_per_stage_vjps(kw, n_out, built, route):
    rng = np.random.default_rng(3)
    p, y0, t = rng.standard_normal(6), rng.standard_normal(2), np.linspace(0.0, 1.5, n_out)
    res, fast = _grads(_field, y0, t, p, rtol=1e-8, atol=1e-8, **kw)
    _check_route(built, route, "regularizers" in kw, "checkpoint_every" in kw)
    built.clear()
    ref, slow = _grads(_field, y0, t, p, per_stage=True, rtol=1e-8, atol=1e-8, **kw)
    assert not built
    np.testing.assert_array_equal(res.ys, ref.ys)
    rtol = 1e-9 if "regularizers" in kw else 1e-11  # 1/h-amplified rounding in λ's gradient
    for a, b in zip(fast, slow):
        if b is None:
            assert a is None
        else:
            np.testing.assert_allclose(a, b, rtol=rtol,
                                       atol=1e-13 * max(1.0, float(np.max(np.abs(b)))))
    assert np.linalg.norm(fast["params"]) > 0.0


def test_batched_state_and_no_params(built, route):
    rng = np.random.default_rng(5)
    y0, t = rng.standard_normal((4, 2)), np.linspace(0.0, 2.0, 9)
    for field, p in ((_field, rng.standard_normal(6)), (_field_no_params, None)):
        built.clear()
        _, fast = _grads(field, y0, t, p, batch_mode="shared", rtol=1e-7, atol=1e-9)
        _check_route(built, route, False)
        _, slow = _grads(field, y0, t, p, per_stage=True, batch_mode="shared", rtol=1e-7,
                         atol=1e-9)
        for a, b in zip(fast, slow):
            if b is None:
                assert a is None
            else:
                np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)


def test_fused_sweep_outputs_at_the_start_and_unreached_steps(built):
    """Outputs at t_eval[0] (no step), several in one step, none in others, a single step
    solve, and step counts on both sides of a padding size: the fused sweep matches the
    per-step route."""
    rng = np.random.default_rng(9)
    p, y0 = rng.standard_normal(6), rng.standard_normal(2)
    cases = [np.array([0.0, 1e-3]),               # one short step
             np.array([0.0, 0.01, 0.011, 3.0]),   # clustered outputs, then a long stretch
             np.linspace(0.0, 6.0, 3)]
    for t in cases:
        for tol in (1e-4, 1e-9):  # few steps, then more than 16 (the padding's first size)
            built.clear()
            res, fast = _grads(_field, y0, t, p, rtol=tol, atol=tol)
            assert built == ["fused"]
            _, slow = _grads(_field, y0, t, p, per_stage=True, rtol=tol, atol=tol)
            for a, b in zip(fast, slow):
                np.testing.assert_allclose(a, b, rtol=1e-11,
                                           atol=1e-13 * max(1.0, float(np.max(np.abs(b)))))
    assert res.n_steps > 16


def test_fused_sweep_compiles_once_per_padding_size():
    """A training loop whose step count drifts compiles the sweep per power of two."""
    f_np, vjp_np = from_jax(_field)
    pair = f_np.jax_pair
    rng = np.random.default_rng(2)
    p, y0 = rng.standard_normal(6), rng.standard_normal(2)
    steps = []
    for tol in (1e-6, 9e-7, 8e-7, 7e-7, 6e-7, 1e-8):
        res, pull = ds.vjp(odeint, f_np, y0, np.linspace(0, 3, 4), p, vjp=vjp_np, rtol=tol,
                           atol=tol)
        pull(ys=np.ones(res.ys.shape))
        steps.append(res.n_steps)
    sizes = {max(16, 1 << (n - 1).bit_length()) for n in steps}
    sweep = [fn for key, fn in pair.compiled.items() if key[0] == "reverse"]
    assert len(sweep) == 1  # one tableau, with params, the same last-slope flag
    assert sweep[0]._cache_size() == len(sizes) < len(set(steps))


def test_to_jax_training_gradient_against_finite_differences():
    """Through to_jax under jax.jit, as a training loop runs it: d loss / d params."""
    rng = np.random.default_rng(11)
    p, y0, t = rng.standard_normal(6), rng.standard_normal(2), np.linspace(0.0, 1.0, 5)
    W = jnp.asarray(rng.standard_normal((5, 2)))
    f_np, vjp_np = from_jax(_field)
    ode = ds.to_jax(odeint)
    res = odeint(f_np, y0, t, p, rtol=1e-6, atol=1e-6)

    def loss(q, steps=None):
        return jnp.sum(W * ode(f_np, jnp.asarray(y0), jnp.asarray(t), q, vjp=vjp_np,
                               rtol=1e-6, atol=1e-6, step_ts=steps).ys)

    g = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(p)))
    eps = 1e-6
    for k in range(6):
        e = np.zeros(6)
        e[k] = eps
        fd = (float(loss(jnp.asarray(p + e), res.ts)) -
              float(loss(jnp.asarray(p - e), res.ts))) / (2 * eps)
        assert abs(fd - g[k]) <= 1e-7 * max(1.0, abs(fd))


def test_to_jax_backward_reuses_the_forward_trajectory(monkeypatch):
    """The backward callback gets the forward's residuals (no second solve) when its
    inputs and outputs are the forward's; otherwise it recomputes, with the same result."""
    from diffsolve.interop import jax as ijax

    hits = []
    real = ijax._KeptResiduals.take

    def spy(self, leaves, outs):
        r = real(self, leaves, outs)
        hits.append(r is not None)
        return r

    monkeypatch.setattr(ijax._KeptResiduals, "take", spy)
    rng = np.random.default_rng(4)
    p, y0, t = rng.standard_normal(6), rng.standard_normal(2), np.linspace(0.0, 1.0, 5)
    f_np, vjp_np = from_jax(_field)
    ode = ds.to_jax(odeint)

    def loss(q):
        return jnp.sum(ode(f_np, jnp.asarray(y0), jnp.asarray(t), q, vjp=vjp_np).ys ** 2)

    g = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(p)))
    assert hits == [True]
    # the same gradient when the residuals are not found (recomputed by the backward rule)
    monkeypatch.setattr(ijax._KeptResiduals, "take", lambda self, leaves, outs: None)
    g2 = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(p)))
    np.testing.assert_array_equal(g, g2)
    # a vmapped batch larger than what is kept: every element still correct
    monkeypatch.setattr(ijax._KeptResiduals, "take", spy)
    hits.clear()
    P = jnp.asarray(rng.standard_normal((6, 6)))
    G = np.asarray(jax.vmap(jax.grad(loss))(P))
    for k in range(6):
        np.testing.assert_allclose(G[k], np.asarray(jax.grad(loss)(P[k])), rtol=1e-12)
    assert len(hits) >= 6


def test_to_jax_forward_without_gradient_keeps_nothing():
    from diffsolve.interop import jax as ijax

    made = []
    real_init = ijax._KeptResiduals.__init__

    def init(self):
        real_init(self)
        made.append(self)

    import unittest.mock as um

    with um.patch.object(ijax._KeptResiduals, "__init__", init):
        f_np, vjp_np = from_jax(_field)
        ode = ds.to_jax(odeint)
        rng = np.random.default_rng(1)
        p = jnp.asarray(rng.standard_normal(6))
        ys = jax.jit(lambda q: ode(f_np, jnp.ones(2), jnp.linspace(0.0, 1.0, 3), q,
                                   vjp=vjp_np).ys)(p)
    assert np.all(np.isfinite(np.asarray(ys)))
    assert made and all(not k._entries for k in made)


@pytest.mark.parametrize("y0_shape", [(2,), (8, 2)])  # the host path (n <= 6), the array path
@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bs3"])
def test_forward_stages_in_one_call_match_the_per_stage_forward(y0_shape, method, monkeypatch):
    """A from_jax field's stages are evaluated in one jitted call per step; the solution
    and the step sequence are those of calling the field once per stage, to rounding."""
    calls = []
    real = VF.JaxStages.__call__

    def spy(self, *args):
        calls.append(1)
        return real(self, *args)

    monkeypatch.setattr(VF.JaxStages, "__call__", spy)
    rng = np.random.default_rng(8)
    p, y0, t = rng.standard_normal(6), rng.standard_normal(y0_shape), np.linspace(0, 2, 7)
    f_np, _ = from_jax(_field)
    kw = dict(method=method, rtol=1e-8, atol=1e-10)
    if len(y0_shape) == 2:
        kw["batch_mode"] = "shared"
    fast = odeint(f_np, y0, t, p, **kw)
    assert len(calls) >= fast.stats.n_steps
    slow = odeint(lambda t_, y_, p_: f_np(t_, y_, p_), y0, t, p, **kw)
    assert fast.stats == slow.stats
    np.testing.assert_allclose(fast.ys, slow.ys, rtol=1e-12, atol=1e-14)
    # a field returning the wrong shape: the error names it
    bad_np, _ = from_jax(lambda t_, y_, p_: jnp.concatenate([y_.ravel(), y_.ravel()]))
    with pytest.raises(ValueError, match="shape"):
        odeint(bad_np, y0, t, p, **kw)
