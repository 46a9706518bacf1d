"""odeint forward: orders, SciPy's step sequence, dense output, batching, namespaces, the
compiled path and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numba import njit
from scipy.integrate import solve_ivp

import diffsolve as ds
from diffsolve.ode import TABLEAUX, ODEResult, ODESolveError, ODEStats, odeint
from tests import naive_ode as naive
from tests.helpers import assert_close, to_numpy

METHODS = ["tsit5", "dopri5", "bs3"]


def oscillator(t, y, p):
    # y'' = -y as a system; y(t) = (cos t, -sin t) from (1, 0)
    return np.array([y[1], -y[0]])


@njit(cache=True)
def lotka_volterra(t, y, p):
    out = np.empty(2)
    out[0] = p[0] * y[0] - p[1] * y[0] * y[1]
    out[1] = -p[2] * y[1] + p[3] * y[0] * y[1]
    return out


LV_P = np.array([1.5, 1.0, 3.0, 1.0])


def van_der_pol(t, y, p):
    return np.array([y[1], p[0] * (1 - y[0] ** 2) * y[1] - y[0]])


@pytest.mark.parametrize("method", METHODS)
def test_order_of_convergence(method):
    tab = TABLEAUX[method]
    y0 = np.array([1.0, 0.0])
    errs = []
    for n in (8, 16, 32):
        ts = np.linspace(0.0, 2.0, n + 1)
        res = odeint(oscillator, y0, [0.0, 2.0], method=method, step_ts=ts)
        # same grid, written from scratch
        np.testing.assert_allclose(res.ys[-1], naive.rk_fixed(
            lambda t, y: oscillator(t, y, None), y0, ts, tab), rtol=1e-13, atol=1e-14)
        errs.append(np.abs(res.ys[-1] - [math.cos(2.0), -math.sin(2.0)]).max())
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(np.abs(orders - tab.order) < 0.35), orders


@pytest.mark.parametrize("rtol", [1e-3, 1e-6, 1e-9])
@pytest.mark.parametrize("problem", ["lotka", "vdp"])
def test_dopri5_i_controller_takes_scipy_rk45_steps(problem, rtol):
    if problem == "lotka":
        f, p, y0, T = lotka_volterra.py_func, LV_P, np.array([1.0, 1.0]), 10.0
    else:
        f, p, y0, T = van_der_pol, np.array([1.0]), np.array([2.0, 0.0]), 10.0
    atol = rtol * 1e-3
    res = odeint(f, y0, np.array([0.0, T]), p, method="dopri5", controller="i", rtol=rtol,
                 atol=atol)
    ref = solve_ivp(lambda t, y: f(t, y, p), (0.0, T), y0, method="RK45", rtol=rtol,
                    atol=atol)
    assert res.ts.shape == ref.t.shape
    # same steps; times agree to the rounding of the error estimate, whose cancellation
    # (|h Σ e_i k_i| ~ rtol |y|) amplifies last-bit differences of the stages by ~1/rtol
    np.testing.assert_allclose(res.ts, ref.t, rtol=max(1e-12 / rtol, 1e-9), atol=1e-12)
    assert res.stats.nfe == ref.nfev
    np.testing.assert_allclose(res.ys[-1], ref.y[:, -1], rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_dense_output_accuracy(method):
    t = np.linspace(0.0, 6.0, 61)
    res = odeint(oscillator, np.array([1.0, 0.0]), t, method=method, rtol=1e-9, atol=1e-12)
    exact = np.stack([np.cos(t), -np.sin(t)], axis=1)
    assert np.abs(res.ys - exact).max() < (1e-7 if method != "bs3" else 1e-6)
    # outputs are interpolated, they do not shorten the steps
    loose = odeint(oscillator, np.array([1.0, 0.0]), t, method=method, rtol=1e-5, atol=1e-8)
    few = odeint(oscillator, np.array([1.0, 0.0]), t[[0, -1]], method=method, rtol=1e-5,
                 atol=1e-8)
    np.testing.assert_array_equal(loose.ts, few.ts)
    assert loose.stats.n_accepted < (60 if method != "bs3" else 400)
    assert np.abs(loose.ys - exact).max() < 1e-3


def test_dense_output_is_scipys_interpolant():
    t = np.linspace(0.0, 10.0, 37)
    f = lotka_volterra.py_func
    res = odeint(f, np.array([1.0, 1.0]), t, LV_P, method="dopri5", controller="i",
                 rtol=1e-6, atol=1e-9)
    ref = solve_ivp(lambda t_, y: f(t_, y, LV_P), (0, 10), [1.0, 1.0], method="RK45",
                    rtol=1e-6, atol=1e-9, t_eval=t)
    np.testing.assert_allclose(res.ys, ref.y.T, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_backwards_in_time(method):
    t = np.array([2.0, 1.0, 0.0])
    y2 = np.array([math.cos(2.0), -math.sin(2.0)])
    res = odeint(oscillator, y2, t, method=method, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res.ys[-1], [1.0, 0.0], atol=1e-7)
    assert np.all(np.diff(res.ts) < 0)


def test_result_type_and_stats():
    res = odeint(oscillator, np.array([1.0, 0.0]), [0.0, 1.0])
    assert isinstance(res, ODEResult) and isinstance(res.stats, ODEStats)
    s = res.stats
    assert s.n_steps == s.n_accepted + s.n_rejected
    assert s.nfe == 2 + 6 * s.n_steps  # f(t0), initial-step probe, 6 per step (FSAL)
    assert res.ts[0] == 0.0 and res.ts[-1] == 1.0 and len(res.ts) == s.n_accepted + 1
    assert float(res.reg_error) == 0.0 and float(res.reg_stiffness) == 0.0


def test_pi_controller_is_accurate_and_not_costlier():
    y0, t = np.array([2.0, 0.0]), np.array([0.0, 20.0])
    p = np.array([1.0])
    pi = odeint(van_der_pol, y0, t, p, method="dopri5", controller="pi", rtol=1e-8,
                atol=1e-10)
    i = odeint(van_der_pol, y0, t, p, method="dopri5", controller="i", rtol=1e-8,
               atol=1e-10)
    np.testing.assert_allclose(pi.ys[-1], i.ys[-1], rtol=1e-5, atol=1e-6)
    assert pi.stats.n_rejected <= i.stats.n_rejected


def _mlp(t, y, p):
    W = p[:4].reshape(2, 2)
    return np.tanh(y @ W) + p[4:6]


MLP_P = np.array([0.5, -1.0, 1.2, 0.3, 0.1, -0.2])


def test_batch_per_trajectory_equals_loop(rng):
    Y0 = rng.standard_normal((4, 2))
    t = np.linspace(0.0, 2.0, 5)
    res = odeint(_mlp, Y0, t, MLP_P, regularizers=("error", "stiffness"))
    assert res.ys.shape == (5, 4, 2) and len(res.ts) == 4
    loop = [odeint(_mlp, Y0[b], t, MLP_P, regularizers=("error", "stiffness"))
            for b in range(4)]
    np.testing.assert_array_equal(res.ys, np.stack([r.ys for r in loop], axis=1))
    assert float(res.reg_error) == pytest.approx(sum(float(r.reg_error) for r in loop))
    assert res.stats.nfe == sum(r.stats.nfe for r in loop)


def test_batch_shared_steps(rng):
    Y0 = rng.standard_normal((4, 2))
    t = np.linspace(0.0, 2.0, 5)
    calls = []

    def f(t_, y, p):
        calls.append(y.shape)
        return _mlp(t_, y, p)

    res = odeint(f, Y0, t, MLP_P, batch_mode="shared", rtol=1e-8, atol=1e-10)
    assert set(calls) == {(4, 2)} and res.ys.shape == (5, 4, 2)
    assert isinstance(res.ts, np.ndarray)
    loop = np.stack([odeint(_mlp, Y0[b], t, MLP_P, rtol=1e-8, atol=1e-10).ys
                     for b in range(4)], axis=1)
    np.testing.assert_allclose(res.ys, loop, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype_name", ["float64", "float32"])
def test_namespaces(xp, dtype_name):
    dtype = getattr(xp, dtype_name)
    y0 = xp.asarray([1.0, 2.0], dtype=dtype)
    p = xp.asarray([0.7], dtype=dtype)
    t = xp.asarray([0.0, 0.5, 1.0], dtype=dtype)

    def f(t_, y, p_):
        return -p_[0] * y

    res = odeint(f, y0, t, p, rtol=1e-6, atol=1e-8)
    want = np.exp(-0.7 * np.array([0.0, 0.5, 1.0]))[:, None] * np.array([1.0, 2.0])
    tol = 1e-6 if dtype_name == "float64" else 1e-4
    assert_close(res.ys, xp.asarray(want, dtype=dtype), xp=xp, dtype=dtype, rtol=tol)
    assert res.reg_error.dtype == dtype


@pytest.mark.parametrize("method", METHODS)
def test_compiled_path_equals_python_path(method, rng):
    y0 = np.array([1.0, 1.0])
    t = np.linspace(0.0, 5.0, 9)
    for kw in ({}, {"controller": "i"}, {"regularizers": ("error", "stiffness")}):
        a = odeint(lotka_volterra, y0, t, LV_P, method=method, **kw)
        b = odeint(lotka_volterra.py_func, y0, t, LV_P, method=method, **kw)
        np.testing.assert_allclose(a.ys, b.ys, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(a.ts, b.ts, rtol=1e-12)
        assert a.stats == b.stats
        assert float(a.reg_error) == pytest.approx(float(b.reg_error), rel=1e-9)
        assert float(a.reg_stiffness) == pytest.approx(float(b.reg_stiffness), rel=1e-9)
    Y0 = 1.0 + 0.1 * rng.random((3, 2))
    a = odeint(lotka_volterra, Y0, t, LV_P, method=method)
    b = odeint(lotka_volterra.py_func, Y0, t, LV_P, method=method)
    np.testing.assert_allclose(a.ys, b.ys, rtol=1e-12, atol=1e-13)


def test_compiled_path_without_params():
    @njit
    def decay(t, y, p):
        return -y * (p.shape[0] + 1.0)   # p arrives as an empty array

    res = odeint(decay, np.array([1.0]), [0.0, 1.0], rtol=1e-9, atol=1e-12)
    assert res.ys[-1, 0] == pytest.approx(math.exp(-1.0), rel=1e-7)


# ---------------------------------------------------------------------------------------
# bad input and failures
# ---------------------------------------------------------------------------------------
def test_wrong_shape_names_t():
    with pytest.raises(ValueError, match=r"returned an array of shape \(3,\) at t=0.0"):
        odeint(lambda t, y, p: np.zeros(3), np.ones(2), [0.0, 1.0])


def test_wrong_shape_compiled():
    @njit
    def bad(t, y, p):
        return np.zeros(3)

    with pytest.raises(ValueError, match="wrong shape at t=0.0"):
        odeint(bad, np.ones(2), [0.0, 1.0], np.ones(1))


def test_nonfinite_initial_slope():
    # f(t0, y0) not finite: status NONFINITE (a SolveError with throw=True), ys[0] = y0
    with pytest.raises(ds.NonFiniteError, match="NaN or infinite values at t=0.5"):
        odeint(lambda t, y, p: np.full(2, np.nan), np.ones(2), [0.5, 1.0], throw=True)
    with pytest.warns(ds.ConvergenceWarning, match="NaN or infinite values at t=0.5"):
        res = odeint(lambda t, y, p: np.full(2, np.nan), np.ones(2), [0.5, 0.7, 1.0])
    assert res.status is ds.Status.NONFINITE and not res.converged and res.t_stop == 0.5
    np.testing.assert_array_equal(res.ys[0], 1.0)
    assert np.isnan(res.ys[1:]).all()


def test_nonfinite_initial_slope_compiled():
    @njit
    def bad(t, y, p):
        return y * np.nan

    with pytest.raises(ds.NonFiniteError, match="NaN or infinite values at t=0.0"):
        odeint(bad, np.ones(2), [0.0, 1.0], np.ones(1), throw=True)


def test_nonfinite_later_is_underflow_naming_t():
    # y' = y² from y(0) = 1 blows up at t = 1
    with pytest.raises(ODESolveError, match=r"step size underflow at t=(0\.99|1\.0)") as err:
        odeint(lambda t, y, p: y * y, np.ones(1), [0.0, 2.0], throw=True)
    assert isinstance(err.value, (ds.StepUnderflowError, ds.NonFiniteError))
    assert err.value.result.status in (ds.Status.STEP_UNDERFLOW, ds.Status.NONFINITE)


def _nan_after(t_bad):
    def f(t, y, p):
        return -y if t < t_bad else y * np.nan
    return f


@pytest.mark.parametrize("compiled", [False, True])
def test_nonfinite_f_later_is_status_nonfinite(compiled):
    # f returns NaN from t = 0.5 on: the step size shrinks on non-finite error estimates
    # until it underflows, which is reported as NONFINITE (not a blow-up or stiffness)
    if compiled:
        @njit
        def f(t, y, p):
            return -y if t < 0.6 else y * np.nan
    else:
        f = _nan_after(0.6)
    with pytest.warns(ds.ConvergenceWarning, match=r"non-finite values near t=0\.(6|5999)"):
        res = odeint(f, np.ones(2), np.linspace(0.0, 1.0, 5))
    assert res.status is ds.Status.NONFINITE and not res.success and not res.converged
    assert res.t_stop == pytest.approx(0.6, abs=1e-12)
    np.testing.assert_allclose(res.ys[:3, 0], np.exp(-np.array([0.0, 0.25, 0.5])),
                               rtol=1e-5)
    assert np.isnan(res.ys[3:]).all()
    with pytest.raises(ds.NonFiniteError):
        odeint(f, np.ones(2), np.linspace(0.0, 1.0, 5), throw=True)


@pytest.mark.parametrize("compiled", [False, True])
def test_nonfinite_on_replayed_steps_stops(compiled):
    # step_ts gives no error control: non-finite stages stop the solve (NaN after t_stop)
    if compiled:
        @njit
        def f(t, y, p):
            return -y if t < 0.5 else y * np.nan
    else:
        f = _nan_after(0.5)
    steps = np.linspace(0.0, 1.0, 11)
    with pytest.warns(ds.ConvergenceWarning, match="NaN or infinite"):
        res = odeint(f, np.ones(2), np.linspace(0.0, 1.0, 3), step_ts=steps)
    assert res.status is ds.Status.NONFINITE
    assert res.t_stop == pytest.approx(0.4) or res.t_stop == pytest.approx(0.5)
    assert np.isfinite(res.ys[0]).all() and np.isnan(res.ys[2]).all()


def test_max_steps_names_t():
    with pytest.raises(ds.MaxIterationsError,
                       match=r"max_steps=5 steps reached at t=.* before t=10"):
        odeint(oscillator, np.array([1.0, 0.0]), [0.0, 10.0], max_steps=5, throw=True)
    # the old exception name still catches it
    with pytest.raises(ODESolveError):
        odeint(oscillator, np.array([1.0, 0.0]), [0.0, 10.0], max_steps=5, throw=True)


def test_throw_false_is_the_default_warns_and_marks_result():
    with pytest.warns(ds.ConvergenceWarning, match="max_steps"):
        res = odeint(oscillator, np.array([1.0, 0.0]), np.linspace(0.0, 10.0, 11),
                     max_steps=5)
    assert not res.success and np.isnan(res.ys[-1]).all() and not np.isnan(res.ys[0]).any()
    assert res.status is ds.Status.MAX_ITERATIONS and res.status == 1
    assert res.converged is False and res.n_iters == res.n_steps == 5
    assert "max_steps=5" in res.message and "raise max_steps" in res.message
    assert 0.0 < res.t_stop < 10.0


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "rk4"},
     "method must be one of 'dopri5', 'tsit5', 'bs3', 'kvaerno3', 'kvaerno5', 'rodas5', "
     "'auto'; "
     "got 'rk4'"),
    ({"atol": -1.0}, "atol must be >= 0"),
    ({"rtol": float("nan")}, "rtol must be finite"),
    ({"controller": "pid"}, "controller must be one of 'pi', 'i'; got 'pid'"),
    ({"adjoint": "magic"}, "adjoint must be one of 'discrete', 'backsolve'"),
    ({"regularizers": ("smooth",)}, r"regularizers \['smooth'\]"),
    ({"regularizers": ("error",), "adjoint": "backsolve"}, "only the discrete adjoint"),
    ({"local_regularization": "unbiased"}, "needs regularizers"),
    ({"batch_mode": "vmap"}, "batch_mode must be one of"),
    ({"max_steps": 0}, "max_steps must be >= 1, got 0"),
    ({"checkpoint_every": 0}, "checkpoint_every must be >= 1"),
    ({"first_step": -0.1}, "first_step must be > 0"),
    ({"rtol": 0.0, "atol": 0.0, "regularizers": ("error",)}, "regularizers"),
    ({"rtol": 0.0, "atol": 0.0, "adjoint": "backsolve"}, "backsolve"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        odeint(oscillator, np.array([1.0, 0.0]), [0.0, 1.0], **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"max_steps": True}, "max_steps must be an integer >= 1, got the bool True"),
    ({"max_steps": 10.0}, "max_steps must be an integer"),
    ({"checkpoint_every": True}, "checkpoint_every must be an integer"),
    ({"rtol": True}, "rtol must be a finite real number"),
    ({"throw": 1}, "throw must be True or False"),
    ({"callback": 3}, "callback must be None or a callable"),
    ({"vjp": "autograd"}, "vjp must be None or a callable"),
    ({"seed": 1.5}, "seed must be an integer"),
])
def test_bad_option_types(kwargs, match):
    with pytest.raises(TypeError, match=match):
        odeint(oscillator, np.array([1.0, 0.0]), [0.0, 1.0], **kwargs)


@pytest.mark.parametrize("t_eval, match", [
    ([0.0, 1.0, 0.5], r"strictly increasing or strictly decreasing; t_eval\[1\]=1.0"),
    ([0.0, 0.0, 1.0], "strictly increasing"),
    ([0.0], "at least 2 times"),
    ([0.0, float("nan")], "NaN"),
])
def test_bad_t_eval(t_eval, match):
    with pytest.raises(ValueError, match=match):
        odeint(oscillator, np.array([1.0, 0.0]), t_eval)


def test_bad_arrays():
    with pytest.raises(TypeError, match="f must be a callable"):
        odeint(None, np.ones(2), [0.0, 1.0])
    with pytest.raises(ValueError, match=r"y0 must have shape \(d,\) or \(B, d\)"):
        odeint(oscillator, np.ones((2, 2, 2)), [0.0, 1.0])
    with pytest.raises(ValueError, match="params must be ONE 1-D float array"):
        odeint(oscillator, np.ones(2), [0.0, 1.0], np.ones((2, 2)))
    with pytest.raises(ValueError, match="y0 contains NaN"):
        odeint(oscillator, np.array([np.nan, 1.0]), [0.0, 1.0])
    with pytest.raises(TypeError, match="odeint: y0 must be an array, got a builtins.list"):
        odeint(oscillator, [1.0, 0.0], [0.0, 1.0])


@pytest.mark.gpu
def test_cupy_solve_matches_numpy():
    cupy = pytest.importorskip("cupy")
    import array_api_compat.cupy as cxp

    def f(t, y, p):
        return cxp.tanh(y) * p[0] - y

    def f_np(t, y, p):
        return np.tanh(y) * p[0] - y

    y0 = np.linspace(-1.0, 1.0, 50)
    t = np.linspace(0.0, 1.0, 5)
    g = odeint(f, cupy.asarray(y0), t, cupy.asarray([0.5]))
    c = odeint(f_np, y0, t, np.array([0.5]))
    assert isinstance(g.ys, cupy.ndarray)
    np.testing.assert_allclose(to_numpy(g.ys), c.ys, rtol=1e-10, atol=1e-12)
    assert g.stats == c.stats


def test_jitted_field_with_float32_state():
    res = odeint(lotka_volterra, np.array([1.0, 1.0], dtype=np.float32), [0.0, 1.0],
                 LV_P.astype(np.float32), rtol=1e-4, atol=1e-6)
    ref = odeint(lotka_volterra, np.array([1.0, 1.0]), [0.0, 1.0], LV_P, rtol=1e-4,
                 atol=1e-6)
    assert res.ys.dtype == np.float32
    np.testing.assert_allclose(res.ys, ref.ys, rtol=1e-4)
