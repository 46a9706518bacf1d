"""from_torch pairs: the discrete adjoint reverses each explicit RK step in one torch
backward pass (TorchStepGraph). It must give the gradients of the per-stage route (one VJP
call per stage) to rounding, whatever the cotangents reach: outputs inside steps (one at a
time and many per step), the error and stiffness regularisers, checkpoint segments, no
params, a batched state, t_eval.
"""

from __future__ import annotations

import numpy as np
import pytest

import diffsolve as ds
from diffsolve.ode import _vector_field as VF
from diffsolve.ode import from_torch, odeint

torch = pytest.importorskip("torch")


def _field(t, y, p):
    W = p[:4].reshape((2, 2))
    return torch.tanh(y @ W.T + p[4:6]) * (1.0 + 0.1 * t) - 0.3 * y


def _field_no_params(t, y, p):
    return torch.sin(y[..., [1, 0]]) * (1.0 + 0.1 * t) - 0.3 * y


def _per_stage(vjp):
    """The same VJP without the pair mark: the per-stage route."""
    return lambda t, y, p, v: vjp(t, y, p, v)


@pytest.fixture
def built(monkeypatch):
    """How many steps the graph route rebuilt."""
    count = []
    real = VF.TorchStepGraph.build

    def spy(self, *args, **kwargs):
        count.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(VF.TorchStepGraph, "build", spy)
    return count


def _grads(field, y0, t, p, vjp_wrap=None, **kw):
    f_np, vjp_np = from_torch(field)
    vjp = vjp_np if vjp_wrap is None else vjp_wrap(vjp_np)
    res, pull = ds.vjp(odeint, f_np, y0, t, p, vjp=vjp, **kw)
    rng = np.random.default_rng(7)
    ys_bar = rng.standard_normal(res.ys.shape)
    cot = {"ys": ys_bar}
    if res.reg_error is not None:
        cot["reg_error"] = 0.7
    if res.reg_stiffness is not None:
        cot["reg_stiffness"] = -0.4
    return res, pull(**cot)


CASES = {
    "dopri5": dict(method="dopri5"),
    "tsit5": dict(method="tsit5"),
    "bs3": dict(method="bs3"),
    "regularisers": dict(method="dopri5", regularizers=("error", "stiffness")),
    "checkpoints": dict(method="tsit5", checkpoint_every=3),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("n_out", [6, 400])  # one output per step at most; many per step
def test_step_graph_matches_per_stage_vjps(case, n_out, built):
    kw = dict(CASES[case])
    rng = np.random.default_rng(3)
    p = rng.standard_normal(6)
    y0 = rng.standard_normal(2)
    t = np.linspace(0.0, 1.5, n_out)
    res, fast = _grads(_field, y0, t, p, rtol=1e-8, atol=1e-8, **kw)
    n_steps = len(built)
    assert n_steps > 5  # the graph route ran, once per step reversed
    built.clear()
    ref_res, slow = _grads(_field, y0, t, p, vjp_wrap=_per_stage, rtol=1e-8, atol=1e-8, **kw)
    assert not built  # and not for an unmarked vjp
    np.testing.assert_array_equal(res.ys, ref_res.ys)
    # the stiffness estimate divides by ||g_s - g_{s-1}|| = O(h): the two routes' sums of
    # the same terms in another order differ by rounding amplified by 1/h
    rtol = 1e-9 if case == "regularisers" else 1e-11
    for a, b in zip(fast, slow):
        if b is None:
            assert a is None
            continue
        scale = max(1.0, float(np.max(np.abs(b))))
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-13 * scale)
    assert np.linalg.norm(fast["params"]) > 0.0


def test_batched_state_and_no_params(built):
    rng = np.random.default_rng(5)
    y0 = rng.standard_normal((4, 2))
    t = np.linspace(0.0, 2.0, 9)
    for field, p in ((_field, rng.standard_normal(6)), (_field_no_params, None)):
        built.clear()
        _, fast = _grads(field, y0, t, p, batch_mode="shared", rtol=1e-7, atol=1e-9)
        assert built
        _, slow = _grads(field, y0, t, p, vjp_wrap=_per_stage, batch_mode="shared",
                         rtol=1e-7, atol=1e-9)
        for a, b in zip(fast, slow):
            if b is None:
                assert a is None
            else:
                np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)


def test_step_graph_gradient_against_finite_differences():
    """The gradient of a loss of the outputs w.r.t. params, by central differences."""
    rng = np.random.default_rng(11)
    p = rng.standard_normal(6)
    y0 = rng.standard_normal(2)
    t = np.linspace(0.0, 1.0, 5)
    f_np, vjp_np = from_torch(_field)
    W = rng.standard_normal((5, 2))
    # steps held fixed: the discrete adjoint differentiates the computed solution
    res = odeint(f_np, y0, t, p, rtol=1e-6, atol=1e-6)
    _, pull = ds.vjp(odeint, f_np, y0, t, p, vjp=vjp_np, rtol=1e-6, atol=1e-6)
    g = pull(ys=W)["params"]

    def loss(q):
        r = odeint(f_np, y0, t, q, rtol=1e-6, atol=1e-6, step_ts=res.ts)
        return float(np.sum(W * r.ys))

    eps = 1e-6
    for k in range(6):
        e = np.zeros(6)
        e[k] = eps
        fd = (loss(p + e) - loss(p - e)) / (2 * eps)
        assert abs(fd - g[k]) <= 1e-7 * max(1.0, abs(fd))


def test_mismatched_pair_takes_the_per_stage_route(built):
    """f from one from_torch call with the vjp of another: the step graph (built from the
    vjp's field) is not used, so each VJP stays the user's."""
    rng = np.random.default_rng(2)
    p = rng.standard_normal(6)
    f_np, _ = from_torch(_field)
    _, vjp_other = from_torch(_field)
    _, pull = ds.vjp(odeint, f_np, rng.standard_normal(2), np.linspace(0, 1, 4), p,
                     vjp=vjp_other)
    pull(ys=np.ones((4, 2)))
    assert not built
