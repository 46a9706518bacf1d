"""odeint under the solver contract: settings, status / converged / message / n_iters,
throw and the SolveError classes, the callback, the fixed budget (rtol = atol = 0), the
input policy, a vector field autograd cannot trace, arguments by keyword, and the
cotangents of outputs an early stop did not reach."""

from __future__ import annotations

import dataclasses

import autograd.numpy as anp
import numpy as np
import pytest

import diffsolve as ds
from diffsolve.ode import odeint
from tests.helpers import central_difference
from tests.lotka_volterra import lv, lv_jit, lv_jit_vjp

P = np.array([1.5, 1.0, 3.0, 1.0])
Y0 = np.array([1.0, 1.2])
T = np.linspace(0.0, 3.0, 7)


# ---------------------------------------------------------------------------------------
# settings, result fields
# ---------------------------------------------------------------------------------------
def test_settings_are_validated_once_and_read_by_both_rules():
    _, fwd = odeint.fwd(lv, Y0, T, P, rtol=1e-7, max_steps=np.int64(500))
    s = fwd.settings
    assert isinstance(s, ds.ode.ODESettings)
    assert (s.rtol, s.atol, s.max_steps, s.throw) == (1e-7, 1e-9, 500, False)
    assert type(s.max_steps) is int
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.rtol = 1.0
    # the same options give the same object (validation is not repeated per call)
    assert odeint.fwd(lv, Y0, T, P, rtol=1e-7, max_steps=np.int64(500))[1].settings is s
    # a bool budget is never a cached integer budget
    with pytest.raises(TypeError, match="got the bool True"):
        odeint(lv, Y0, T, P, max_steps=True)


def test_success_fields():
    res = odeint(lv, Y0, T, P)
    assert res.status is ds.Status.SUCCESS and res.status == 0
    assert res.converged is True and res.success
    assert res.n_iters == res.n_steps == res.stats.n_steps > 0
    assert res.message == "The solver reached the end of the integration interval."
    assert np.isnan(res.t_stop)


def test_replayed_steps_report_their_error_control():
    # step_ts runs the given steps (SUCCESS), but converged says whether they met the
    # tolerance: coarse replayed steps do not
    fine = odeint(lv, Y0, T, P)
    assert odeint(lv, Y0, T, P, step_ts=fine.ts).converged
    coarse = odeint(lv, Y0, T, P, step_ts=np.linspace(0.0, 3.0, 4))
    assert coarse.status is ds.Status.SUCCESS and coarse.converged is False


# ---------------------------------------------------------------------------------------
# throw / status / message
# ---------------------------------------------------------------------------------------
def test_default_throw_false_warns_with_status():
    with pytest.warns(ds.ConvergenceWarning, match="max_steps=4 steps reached"):
        res = odeint(lv, Y0, T, P, max_steps=4)
    assert res.status is ds.Status.MAX_ITERATIONS and not res.converged
    assert res.n_iters == 4 and "raise max_steps" in res.message


@pytest.mark.parametrize("f", [lv, lv_jit], ids=["python", "compiled"])
def test_throw_true_raises_solve_error_subclasses(f):
    with pytest.raises(ds.MaxIterationsError) as err:
        odeint(f, Y0, T, P, max_steps=4, throw=True)
    e = err.value
    assert isinstance(e, ds.SolveError) and isinstance(e, ds.ode.ODESolveError)
    assert e.status is ds.Status.MAX_ITERATIONS
    assert e.result.status is ds.Status.MAX_ITERATIONS and np.isnan(e.result.ys[-1]).all()
    assert ds.ode.ODESolveError is ds.SolveError


def test_step_underflow_status():
    # y' = y² blows up at t = 1: the steps shrink on finite but huge errors
    with pytest.warns(ds.ConvergenceWarning, match="step size underflow"):
        res = odeint(lambda t, y, p: y * y, np.ones(1), [0.0, 0.5, 2.0])
    assert res.status in (ds.Status.STEP_UNDERFLOW, ds.Status.NONFINITE)
    assert 0.99 < res.t_stop < 1.001 and np.isnan(res.ys[-1]).all()
    assert res.ys[1, 0] == pytest.approx(2.0, rel=1e-5)


def test_batch_status_is_the_worst_trajectory():
    def f(t, y, p):  # NaN slopes once y[0] > 5: the second trajectory fails at once
        return anp.where(y[0] > 5.0, np.nan, 1.0) * -y

    Y = np.array([[1.0, 1.0], [10.0, 1.0]])
    with pytest.warns(ds.ConvergenceWarning, match="trajectory 1"):
        res = odeint(f, Y, T)
    assert res.status is ds.Status.NONFINITE and not res.converged
    assert np.isfinite(res.ys[:, 0]).all() and np.isnan(res.ys[1:, 1]).all()


# ---------------------------------------------------------------------------------------
# the callback
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("f", [lv, lv_jit], ids=["python", "compiled"])
def test_callback_sees_each_accepted_step_and_can_stop(f):
    seen = []

    def watch(state):
        assert isinstance(state, ds.ode.ODEState)
        seen.append(state)

    full = odeint(f, Y0, T, P)
    res = odeint(f, Y0, T, P, callback=watch)
    np.testing.assert_allclose(res.ys, full.ys, rtol=1e-13)  # same solve
    assert len(seen) == full.n_accepted
    assert [s.t for s in seen] == full.ts[1:].tolist()
    np.testing.assert_allclose(seen[-1].y, full.ys[-1], rtol=1e-13)
    assert seen[-1].n_steps == full.n_steps and seen[-1].n_accepted == full.n_accepted
    assert all(s.error <= 1.0 for s in seen) and seen[3].h == pytest.approx(
        full.ts[4] - full.ts[3])
    with pytest.raises(ValueError):
        seen[0].y[0] = 3.0  # read-only view

    def stop(state):
        return state.t >= 1.2

    res = odeint(f, Y0, T, P, callback=stop)  # no warning: stopping was asked for
    assert res.status is ds.Status.STOPPED and not res.converged and not res.success
    assert 1.2 <= res.t_stop < 1.8 and "callback returned True" in res.message
    np.testing.assert_allclose(res.ys[:3], full.ys[:3], rtol=1e-13)
    assert np.isnan(res.ys[4:]).all()
    # with throw=True a requested stop is not an error either
    assert odeint(f, Y0, T, P, callback=stop, throw=True).status is ds.Status.STOPPED


def test_callback_in_batches():
    Y = np.array([[1.0, 1.2], [0.8, 1.0]])
    got = []
    odeint(lv, Y, T, P, callback=lambda s: got.append((s.trajectory, s.y.shape)))
    assert {g for g in got} == {(0, (2,)), (1, (2,))}

    def lv_b(t, y, p):
        return anp.stack([p[0] * y[:, 0] - p[1] * y[:, 0] * y[:, 1],
                          -p[2] * y[:, 1] + p[3] * y[:, 0] * y[:, 1]], axis=1)

    got.clear()
    odeint(lv_b, Y, T, P, batch_mode="shared",
           callback=lambda s: got.append((s.trajectory, s.y.shape)))
    assert set(got) == {(None, (2, 2))}


def test_callback_on_array_path(xp):
    y0 = xp.asarray([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], dtype=xp.float64)  # > host path
    ts = []

    def cb(state):
        ts.append(state.t)
        assert state.y.shape == (7,)
        return state.t > 0.5

    res = odeint(lambda t, y, p: -y, y0, np.linspace(0.0, 1.0, 5), callback=cb)
    assert res.status is ds.Status.STOPPED and ts[-1] > 0.5 and ts[-2] <= 0.5


# ---------------------------------------------------------------------------------------
# rtol = atol = 0: the fixed budget
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("f", [lv, lv_jit], ids=["python", "compiled"])
def test_zero_tolerances_take_max_steps_equal_steps(f):
    res = odeint(f, Y0, T, P, rtol=0.0, atol=0.0, max_steps=60)  # no warning
    assert res.status is ds.Status.MAX_ITERATIONS and res.converged is False
    assert res.n_iters == res.n_accepted == 60 and res.n_rejected == 0
    np.testing.assert_allclose(np.diff(res.ts), 0.05, rtol=1e-12)
    ref = odeint(f, Y0, T, P, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res.ys, ref.ys, rtol=1e-5)
    assert "fixed budget of 60 equal steps" in res.message
    assert odeint(f, Y0, T, P, rtol=0.0, atol=0.0, max_steps=60, throw=True).n_iters == 60


def test_zero_tolerances_gradient_is_that_of_the_fixed_steps(rng):
    kw = dict(rtol=0.0, atol=0.0, max_steps=40)
    res, v = ds.vjp(odeint, lv, Y0, T, P, **kw)
    W = rng.standard_normal(res.ys.shape)
    y0_bar, _, p_bar = v(ys=W)
    e = rng.standard_normal(4)
    fd = central_difference(lambda p: float(np.sum(W * odeint(lv, Y0, T, p, **kw).ys)), P, e)
    assert y0_bar @ e[:2] == pytest.approx(central_difference(
        lambda y: float(np.sum(W * odeint(lv, y, T, P, **kw).ys)), Y0, e[:2]), rel=1e-7)
    assert p_bar @ e == pytest.approx(fd, rel=1e-7)


def test_one_zero_tolerance_is_adaptive():
    res = odeint(lv, Y0, T, P, rtol=1e-6, atol=0.0)
    assert res.status is ds.Status.SUCCESS and res.converged


# ---------------------------------------------------------------------------------------
# reproduction: a vector field autograd cannot trace
# ---------------------------------------------------------------------------------------
def f_plain(t, y, p):
    return np.array([y[1], -p[0] * y[0]])  # plain NumPy: autograd sees no dependence


def f_plain_no_params(t, y, p):
    return np.array([y[1], -y[0]])


@pytest.mark.parametrize("adjoint", ["discrete", "backsolve"])
def test_untraceable_vector_field_raises(adjoint):
    y0, t, p = np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([2.0])
    res, vjp_fn = ds.vjp(odeint, f_plain, y0, t, p, adjoint=adjoint)
    assert res.success  # the forward solve does not need autograd
    with pytest.raises(ds.NotTraceableError,
                       match=r"cannot trace the vector field f \('f_plain'\).*vjp=.*"
                             r"@njit.*from_torch"):
        vjp_fn(ys=np.ones((2, 2)))
    _, vjp_fn = ds.vjp(odeint, f_plain_no_params, y0, t, adjoint=adjoint)
    with pytest.raises(ds.NotTraceableError, match="f_plain_no_params"):
        vjp_fn(ys=np.ones((2, 2)))


def test_traceable_field_ignoring_params_is_fine():
    # joint tracing: a field that does not use params is not "untraceable"
    _, v = ds.vjp(odeint, lambda t, y, p: -y, np.array([1.0, 2.0]), np.array([0.0, 1.0]),
                  np.array([3.0]), rtol=1e-10, atol=1e-12)
    y0_bar, _, p_bar = v(ys=np.array([[0.0, 0.0], [1.0, 1.0]]))
    np.testing.assert_allclose(y0_bar, np.exp(-1.0), rtol=1e-8)
    np.testing.assert_array_equal(p_bar, 0.0)


# ---------------------------------------------------------------------------------------
# reproduction: params by keyword, scalar cotangents
# ---------------------------------------------------------------------------------------
def test_params_by_keyword_and_scalar_cotangents():
    kw = dict(regularizers=("error",))
    W = np.ones((len(T), 2))
    _, v_pos = ds.vjp(odeint, lv, Y0, T, P, **kw)
    _, v_kw = ds.vjp(odeint, lv, Y0, T, params=P, **kw)
    pos = v_pos(ys=W, reg_error=np.asarray(0.5))
    by_kw = v_kw(ys=W, reg_error=0.5)  # a Python float for the 0-d output
    assert len(by_kw) == 3
    np.testing.assert_allclose(by_kw["params"], pos[2], rtol=1e-13)
    np.testing.assert_allclose(by_kw["y0"], pos[0], rtol=1e-13)
    assert np.abs(by_kw["params"]).max() > 0
    only_reg = v_kw(reg_error=1.0)
    np.testing.assert_allclose(only_reg["params"], v_pos(reg_error=np.asarray(1.0))[2],
                               rtol=1e-13)


# ---------------------------------------------------------------------------------------
# reproduction: cotangents of outputs an early stop did not reach
# ---------------------------------------------------------------------------------------
CASES = [
    pytest.param(dict(f=lv), id="discrete"),
    pytest.param(dict(f=lv, adjoint="backsolve"), id="backsolve"),
    pytest.param(dict(f=lv_jit, vjp=lv_jit_vjp), id="compiled"),
    pytest.param(dict(f=lv, checkpoint_every=3), id="checkpointed"),
]


@pytest.mark.parametrize("case", CASES)
def test_unreached_outputs_give_nan_or_nothing(case, rng):
    case = dict(case)
    f = case.pop("f")
    t = np.linspace(0.0, 3.0, 13)
    full = odeint(f, Y0, t, P, **case)
    with pytest.warns(ds.ConvergenceWarning, match="max_steps"):
        res, v = ds.vjp(odeint, f, Y0, t, P, max_steps=full.n_steps // 2, **case)
    nr = int(np.isfinite(res.ys[:, 0]).sum())
    assert 1 < nr < len(t) and np.isnan(res.ys[nr:]).all()
    W = rng.standard_normal(res.ys.shape)
    W[nr:] = 0.0
    # a zero cotangent on the unreached outputs contributes nothing: the gradient is that
    # of the full solve (whose first steps are the same) with the same cotangent
    got = v(ys=W)
    want = ds.vjp(odeint, f, Y0, t, P, **case)[1](ys=W)
    for name in ("y0", "params"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got["t_eval"][:nr], want["t_eval"][:nr], rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(got["t_eval"][nr:], 0.0)
    # a non-zero cotangent there asks for an undefined derivative: NaN, never garbage
    W[-1] = 1.0
    for g in v(ys=W):
        assert np.isnan(g).all()


def test_unreached_outputs_in_a_batch_poison_only_their_trajectory():
    def f(t, y, p):
        return anp.where(y[0] > 5.0, np.nan, 1.0) * -p[0] * y

    Y = np.array([[1.0, 1.0], [10.0, 1.0]])
    p = np.array([0.5])
    with pytest.warns(ds.ConvergenceWarning):
        res, v = ds.vjp(odeint, f, Y, T, p)
    W = np.zeros(res.ys.shape)
    W[-1, 0] = 1.0
    y_bar, _, p_bar = v(ys=W)  # only the reached trajectory's output: finite
    np.testing.assert_allclose(y_bar[0], np.exp(-0.5 * 3.0), rtol=1e-5)
    np.testing.assert_array_equal(y_bar[1], 0.0)
    assert np.isfinite(p_bar).all()
    W[-1, 1] = 1.0
    y_bar, t_bar, p_bar = v(ys=W)
    assert np.isfinite(y_bar[0]).all() and np.isnan(y_bar[1]).all()
    assert np.isnan(p_bar).all() and np.isnan(t_bar).all()


def test_backsolve_adjoint_failure_is_reported():
    # the augmented backward solve needs more steps than the forward one was allowed
    n = odeint(lv, Y0, T[[0, -1]], P).n_steps
    _, v = ds.vjp(odeint, lv, Y0, T[[0, -1]], P, adjoint="backsolve", max_steps=n)
    with pytest.warns(ds.ConvergenceWarning, match="backsolve adjoint.*gradients are NaN"):
        grads = v(ys=np.ones((2, 2)))
    assert all(np.isnan(g).all() for g in grads)
    _, v = ds.vjp(odeint, lv, Y0, T[[0, -1]], P, adjoint="backsolve", max_steps=n,
                  throw=True)
    with pytest.raises(ds.MaxIterationsError, match="backsolve adjoint"):
        v(ys=np.ones((2, 2)))


# ---------------------------------------------------------------------------------------
# reproduction: the one input policy
# ---------------------------------------------------------------------------------------
def test_integer_inputs_are_promoted():
    res = odeint(lambda t, y, p: -p[0] * y, np.array([1, 2]), np.array([0, 1]),
                 np.array([1]), rtol=1e-10, atol=1e-12)
    assert res.ys.dtype == np.float64
    np.testing.assert_allclose(res.ys[-1], np.exp(-1.0) * np.array([1.0, 2.0]), rtol=1e-8)


@pytest.mark.parametrize("name, value, exc, match", [
    ("y0", np.ones(2, dtype=np.float16), TypeError, "y0 has dtype float16.*float32 or float64"),
    ("y0", np.ones(2, dtype=bool), TypeError, "y0 has dtype bool"),
    ("y0", np.ones(2, dtype=complex), TypeError, "y0 has dtype complex128"),
    ("y0", np.ones(0), ValueError, r"y0 has shape \(0,\) with no entries"),
    ("y0", np.ones((3, 0)), ValueError, "y0 has shape"),
    ("y0", np.array([np.nan, 1.0]), ValueError, "y0 contains NaN or inf"),
    ("y0", np.array([np.inf, 1.0], dtype=np.float32), ValueError, "y0 contains NaN or inf"),
    ("y0", [1.0, 2.0], TypeError, r"y0 must be an array.*np.asarray\(y0\)"),
    ("y0", None, TypeError, "y0 must be an array, got None"),
    ("y0", np.ones((1, 2, 2)), ValueError, r"y0 must have shape \(d,\) or \(B, d\)"),
    ("params", np.ones(1, dtype=np.float16), TypeError, "params has dtype float16"),
    ("params", np.array([np.nan]), ValueError, "params contains NaN or inf"),
    ("params", [1.0], TypeError, "params must be an array"),
    ("params", np.ones((1, 1)), ValueError, "params must be ONE 1-D float array"),
    ("t_eval", np.array([0.0, 1.0], dtype=np.float16), TypeError, "t_eval has dtype float16"),
    ("t_eval", np.array([0.0, np.inf]), ValueError, "t_eval contains NaN or infinite"),
    ("t_eval", np.zeros(0), ValueError, "t_eval needs at least 2 times"),
])
def test_bad_inputs(name, value, exc, match):
    args = dict(y0=np.array([1.0, 0.5]), t_eval=np.array([0.0, 1.0]), params=np.ones(1))
    args[name] = value
    with pytest.raises(exc, match="diffsolve.ode.odeint: " + match):
        odeint(lambda t, y, p: -y, args["y0"], args["t_eval"], args["params"])


def test_readonly_and_noncontiguous_inputs_are_used_unmodified():
    base = np.array([[1.0, 9.0], [1.2, 9.0]])
    y0 = base[:, 0]  # non-contiguous
    p = P.copy()
    p.flags.writeable = False
    t = T.copy()
    t.flags.writeable = False
    before = (base.copy(), p.copy(), t.copy())
    res, v = ds.vjp(odeint, lv, y0, t, p)
    grads = v(ys=np.ones(res.ys.shape))
    ref, vr = ds.vjp(odeint, lv, Y0, T, P)
    np.testing.assert_array_equal(res.ys, ref.ys)
    for a, b in zip(grads, vr(ys=np.ones(res.ys.shape))):
        np.testing.assert_array_equal(a, b)
    for a, b in zip((base, p, t), before):
        np.testing.assert_array_equal(a, b)


def test_empty_params_vector_is_no_parameters():
    res = odeint(lambda t, y, p: -y, np.array([1.0]), [0.0, 1.0], np.zeros(0))
    assert res.ys[-1, 0] == pytest.approx(np.exp(-1.0), rel=1e-5)


# ---------------------------------------------------------------------------------------
# non-finite cotangents, zero cotangents (core rules, through odeint's backward)
# ---------------------------------------------------------------------------------------
def test_nan_and_zero_cotangents():
    _, v = ds.vjp(odeint, lv, Y0, T, P)
    W = np.zeros((len(T), 2))
    for g in v(ys=W):
        np.testing.assert_array_equal(g, 0.0)
    W[2, 1] = np.nan
    for g in v(ys=W):
        assert np.isnan(g).all()


def test_framework_arrays_to_the_plain_function_say_which_adapter():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"y0 must be an array, got a torch.Tensor.*to_torch"):
        odeint(lambda t, y, p: -y, torch.ones(2, dtype=torch.float64), [0.0, 1.0])
    with pytest.raises(TypeError, match=r"params must be an array.*to_torch"):
        odeint(lambda t, y, p: -y, np.ones(2), [0.0, 1.0], torch.ones(1, dtype=torch.float64))


@pytest.mark.parametrize("method", ["dopri5", "kvaerno5", "rodas5", "auto"])
def test_callback_stops_on_true_only_in_every_method(method):
    """The contract's rule (the one linear.solve and bilevel.solve follow): True or a NumPy
    bool True stops; None, False and other values (1, a non-empty list) continue."""
    full = odeint(lv, Y0, T, P, method=method)
    for value in (None, False, 1, [0], np.bool_(False)):
        res = odeint(lv, Y0, T, P, method=method, callback=lambda s, v=value: v)
        assert res.status is ds.Status.SUCCESS, (value, res.message)
        assert res.n_steps == full.n_steps
    for value in (True, np.bool_(True), np.array(True)):
        res = odeint(lv, Y0, T, P, method=method, callback=lambda s, v=value: v)
        assert res.status is ds.Status.STOPPED and res.n_accepted == 1, value
